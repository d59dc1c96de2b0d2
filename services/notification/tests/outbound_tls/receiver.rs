//! A webhook receiver for the tests, over https (hyper + tokio-rustls with a given certificate)
//! or plain http: it checks `X-Mesh-Signature` as docs/security.md tells receivers to (the
//! timestamp within five minutes, any `v1` equal to the HMAC-SHA-256 of `"<t>.<body>"` under its
//! key, compared in constant time), answers 204 or 401, and records every request.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hmac::{Hmac, Mac as _};
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// How far a signature's timestamp may be from the receiver's clock.
pub(crate) const REPLAY_WINDOW_SECS: u64 = 300;

/// One request received.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    /// The `X-Mesh-Signature` header.
    pub signature: String,
    /// The `Idempotency-Key` header.
    pub idempotency_key: String,
    /// The body.
    pub body: String,
    /// Whether the signature verified.
    pub verified: bool,
}

/// Whether `header` signs `body` under `key` within the replay window of `now`.
pub(crate) fn verify(header: &str, body: &[u8], key: &[u8], now: u64) -> bool {
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<u64>().ok(),
            Some(("v1", hex)) => candidates.push(hex.to_string()),
            _ => {}
        }
    }
    let Some(t) = timestamp else { return false };
    if now.abs_diff(t) > REPLAY_WINDOW_SECS {
        return false;
    }
    candidates.iter().any(|hex| {
        let Some(bytes) = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()
        else {
            return false;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
        mac.update(format!("{t}.").as_bytes());
        mac.update(body);
        mac.verify_slice(&bytes).is_ok()
    })
}

/// A running receiver.
pub(crate) struct Receiver {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it received.
    pub received: Arc<Mutex<Vec<Received>>>,
    /// TLS handshakes that failed.
    pub failed_handshakes: Arc<Mutex<usize>>,
    /// The key it verifies with (a test may set it once it learns it).
    pub key: Arc<Mutex<String>>,
}

impl Receiver {
    /// Starts a receiver verifying with `key`, over TLS with `tls` or plain http without.
    pub(crate) async fn start(key: &str, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let failed_handshakes = Arc::new(Mutex::new(0));
        let key = Arc::new(Mutex::new(key.to_string()));
        let (all, failed, shared_key) = (received.clone(), failed_handshakes.clone(), key.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (all, failed, key, tls) =
                    (all.clone(), failed.clone(), shared_key.clone(), tls.clone());
                tokio::spawn(async move {
                    let service =
                        service_fn(move |request: http::Request<hyper::body::Incoming>| {
                            let (all, key) = (all.clone(), key.clone());
                            async move {
                                let header = |name: &str| {
                                    request
                                        .headers()
                                        .get(name)
                                        .and_then(|v| v.to_str().ok())
                                        .unwrap_or_default()
                                        .to_string()
                                };
                                let (signature, idempotency_key) =
                                    (header("x-mesh-signature"), header("idempotency-key"));
                                let body = request.into_body().collect().await?.to_bytes();
                                let now = SystemTime::now()
                                    .duration_since(UNIX_EPOCH)
                                    .unwrap()
                                    .as_secs();
                                let key = key.lock().unwrap().clone();
                                let verified = verify(&signature, &body, key.as_bytes(), now);
                                all.lock().unwrap().push(Received {
                                    signature,
                                    idempotency_key,
                                    body: String::from_utf8_lossy(&body).into_owned(),
                                    verified,
                                });
                                let status = if verified { 204 } else { 401 };
                                Ok::<_, hyper::Error>(
                                    http::Response::builder()
                                        .status(status)
                                        .body(Full::new(Bytes::new()))
                                        .unwrap(),
                                )
                            }
                        });
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(tls) => match TlsAcceptor::from(tls).accept(tcp).await {
                            Ok(stream) => {
                                let _ = http.serve_connection(TokioIo::new(stream), service).await;
                            }
                            Err(_) => *failed.lock().unwrap() += 1,
                        },
                        None => {
                            let _ = http.serve_connection(TokioIo::new(tcp), service).await;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            received,
            failed_handshakes,
            key,
        }
    }

    /// What it received so far.
    pub(crate) fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}
