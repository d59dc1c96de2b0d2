//! Webhook posts: a JSON body over https (rustls, verified against the system's CAs plus an
//! optional CA file; plain http only when `MESH_NOTIFICATION_WEBHOOK_ALLOW_HTTP` allows it),
//! carrying `Idempotency-Key: <delivery id>` so receivers can drop a retried post and
//! `X-Mesh-Signature: t=<unix seconds>,v1=<hex HMAC-SHA-256 of "<t>.<body>">` (one `v1` per
//! configured key, so a key can be rotated) so receivers can tell the body is ours and recent
//! (docs/security.md shows how to check it). The operator's webhook is signed with the
//! configured keys; any other (a user's own) with keys derived from them and its URL
//! ([`derived_key`]), which the user reads from GetPreferences.
//!
//! Every failure to reach the receiver or an answer other than 2xx is transient (retried with
//! backoff: a receiver that refuses a signature during a key rotation gets the post again); a
//! URL this sender may not post to, or no signing key, is permanent.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hmac::{Hmac, Mac as _};
use http_body_util::{BodyExt as _, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mesh_contracts::notification::v1::Delivery;
use sha2::Sha256;

use crate::error::SendError;
use crate::secret::Secret;
use crate::settings::{NotificationSettings, webhook_keys};

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "x-mesh-signature";

/// The lower-case hex HMAC-SHA-256 of `parts` (concatenated) under `key`.
fn hmac_hex(key: &[u8], parts: &[&[u8]]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    for part in parts {
        mac.update(part);
    }
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `t=<timestamp>,v1=<hex>[,v1=<hex>...]`: the HMAC-SHA-256 of `"<timestamp>.<body>"` under each
/// of `keys`.
pub fn signature(keys: &[String], timestamp: u64, body: &[u8]) -> String {
    let mut header = format!("t={timestamp}");
    for key in keys {
        let t = timestamp.to_string();
        header.push_str(",v1=");
        header.push_str(&hmac_hex(key.as_bytes(), &[t.as_bytes(), b".", body]));
    }
    header
}

/// The key posts to `url` are signed with when `key` is the service's: the hex HMAC-SHA-256 of
/// `"mesh webhook key v1:" + url` under `key`. A user's receiver is given this one (through
/// GetPreferences), never the service's key, so it can neither learn that key nor sign for
/// another URL.
pub fn derived_key(key: &str, url: &str) -> String {
    hmac_hex(key.as_bytes(), &[b"mesh webhook key v1:", url.as_bytes()])
}

/// The keys a post to `url` is signed with: the service's own `keys` for the operator's webhook
/// (`global`, `MESH_NOTIFICATION_WEBHOOK_URL`), for any other URL the keys derived from them.
pub fn keys_for(keys: Vec<String>, url: &str, global: Option<&str>) -> Vec<String> {
    if global == Some(url) {
        keys
    } else {
        keys.iter().map(|k| derived_key(k, url)).collect()
    }
}

/// What GetPreferences shows a user for their webhook `url`: the key derived from the newest
/// (last) configured key; empty without a URL or a key, and for the operator's own webhook.
pub fn user_signing_key(settings: &NotificationSettings, url: &str) -> String {
    let Some(secret) = &settings.webhook_secret else {
        return String::new();
    };
    if url.is_empty() || settings.webhook_url.as_deref() == Some(url) {
        return String::new();
    }
    match secret.read().and_then(|text| webhook_keys(&text)) {
        Ok(keys) => keys.last().map(|k| derived_key(k, url)).unwrap_or_default(),
        Err(e) => {
            tracing::warn!(error = %e, "webhook secret unreadable; no signing key shown");
            String::new()
        }
    }
}

/// Posts deliveries to webhooks.
#[derive(Debug, Clone)]
pub struct Webhooks {
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    allow_http: bool,
    secret: Option<Secret>,
    global: Option<String>,
}

impl Webhooks {
    /// A client for `settings` (trust, http allowed or not, the signing keys). Fails when the CA
    /// file cannot be read.
    pub fn new(settings: &NotificationSettings) -> Result<Self, String> {
        let tls = crate::tls::client_config(settings.webhook_ca_file.as_deref())?;
        let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
        let connector = if settings.webhook_allow_http {
            builder.https_or_http().enable_http1().build()
        } else {
            builder.https_only().enable_http1().build()
        };
        Ok(Self {
            http: Client::builder(TokioExecutor::new()).build(connector),
            allow_http: settings.webhook_allow_http,
            secret: settings.webhook_secret.clone(),
            global: settings.webhook_url.clone(),
        })
    }

    /// Posts `d` to its recipient once.
    pub async fn post(&self, d: &Delivery) -> Result<(), SendError> {
        crate::validate::webhook_url(&d.recipient, self.allow_http)
            .map_err(|e| SendError::permanent(format!("webhook {}: {e}", d.recipient)))?;
        let keys = match &self.secret {
            Some(secret) => secret
                .read()
                .and_then(|text| webhook_keys(&text))
                .map(|keys| keys_for(keys, &d.recipient, self.global.as_deref()))
                .map_err(|e| SendError::transient(format!("webhook secret: {e}")))?,
            None => {
                return Err(SendError::permanent(
                    "webhooks are not signed without a key: set MESH_NOTIFICATION_WEBHOOK_SECRET or _FILE",
                ));
            }
        };
        let body = serde_json::json!({
            "delivery_id": d.id,
            "user_id": d.user_id,
            "event_id": d.event_id,
            "event_type": d.event_type,
            "subject": d.subject,
            "body": d.body,
        })
        .to_string();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let request = http::Request::post(&d.recipient)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", &d.id)
            .header(SIGNATURE_HEADER, signature(&keys, now, body.as_bytes()))
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| SendError::permanent(format!("webhook request: {e}")))?;
        let response = self.http.request(request).await.map_err(|e| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            SendError::transient(format!("webhook POST {}: {text}", d.recipient))
        })?;
        let status = response.status();
        // Drain the body so the connection can be reused.
        let _ = response.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(SendError::transient(format!(
                "webhook POST {} answered HTTP {status}",
                d.recipient
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_hmac_of_timestamp_dot_body_under_each_key() {
        // The HMAC itself against a published value: HMAC-SHA-256("key", "The quick brown fox
        // jumps over the lazy dog").
        let mut mac = Hmac::<Sha256>::new_from_slice(b"key").unwrap();
        mac.update(b"The quick brown fox jumps over the lazy dog");
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
        let keys = vec![
            "k1-0123456789abcdef".to_string(),
            "k2-0123456789abcdef".to_string(),
        ];
        let header = signature(&keys, 1_700_000_000, b"{\"a\":1}");
        let parts: Vec<&str> = header.split(',').collect();
        assert_eq!(parts[0], "t=1700000000");
        assert_eq!(parts.len(), 3, "one v1 per key: {header}");
        for (key, part) in keys.iter().zip(&parts[1..]) {
            let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
            mac.update(b"1700000000.{\"a\":1}");
            let hex = part.strip_prefix("v1=").unwrap();
            let bytes: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            mac.verify_slice(&bytes).expect("verifies");
        }
        let derived = derived_key(&keys[0], "https://a.example/h");
        assert_eq!(derived.len(), 64);
        assert_eq!(derived, derived_key(&keys[0], "https://a.example/h"));
        assert_ne!(derived, derived_key(&keys[0], "https://b.example/h"));
        assert_ne!(derived, derived_key(&keys[1], "https://a.example/h"));
        assert_eq!(
            keys_for(
                keys.clone(),
                "https://ops.example",
                Some("https://ops.example")
            ),
            keys,
            "the operator's webhook: the keys themselves"
        );
        assert_eq!(
            keys_for(
                keys.clone(),
                "https://a.example/h",
                Some("https://ops.example")
            ),
            [derived, derived_key(&keys[1], "https://a.example/h")]
        );
        assert_ne!(
            signature(&keys[..1], 1_700_000_001, b"{\"a\":1}"),
            signature(&keys[..1], 1_700_000_000, b"{\"a\":1}"),
            "the timestamp is signed"
        );
    }
}
