//! The client side: [`ClientTls`] (the process's material and the identity a peer must prove)
//! and [`TlsConnector`], the connector a tonic channel to that peer opens its connections with.
//! The handshake checks that the peer's certificate was issued by the CA and names
//! `<service>.<namespace>.svc`, and presents the workload certificate; the material is taken at
//! each connect, so a reload applies to the next connection.

use std::io;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tower_service::Service;

use super::reload::MeshTls;

/// mTLS toward one peer: the material, and the identity the peer's certificate must carry.
#[derive(Debug, Clone)]
pub struct ClientTls {
    tls: MeshTls,
    identity: ServerName<'static>,
}

impl ClientTls {
    /// Toward the module `service` (its identity `<service>.<namespace>.svc`).
    pub fn for_service(tls: MeshTls, service: &str) -> Result<Self, io::Error> {
        let identity = tls.settings().identity(service);
        Self::for_identity(tls, identity)
    }

    /// Toward a peer whose certificate must name `identity` (a DNS name).
    pub fn for_identity(tls: MeshTls, identity: String) -> Result<Self, io::Error> {
        let identity = ServerName::try_from(identity)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(Self { tls, identity })
    }

    /// The identity the peer must prove.
    pub fn identity(&self) -> &ServerName<'static> {
        &self.identity
    }

    /// The TLS handshake on a connected `tcp` stream.
    pub async fn handshake(&self, tcp: TcpStream) -> io::Result<TlsStream<TcpStream>> {
        tokio_rustls::TlsConnector::from(self.tls.current().client_config())
            .connect(self.identity.clone(), tcp)
            .await
    }

    /// The connector for a tonic `Endpoint` (`connect_with_connector_lazy`).
    pub fn connector(&self) -> TlsConnector {
        TlsConnector { tls: self.clone() }
    }
}

/// Opens a TCP connection to a URI's host and port and runs the TLS handshake on it.
#[derive(Debug, Clone)]
pub struct TlsConnector {
    tls: ClientTls,
}

impl Service<Uri> for TlsConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = BoxFuture<'static, io::Result<Self::Response>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, format!("{uri} names no host"))
                })?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let stream = tls.handshake(tcp).await.map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "TLS handshake with {host}:{port} (expecting {:?}): {e}",
                        tls.identity
                    ),
                )
            })?;
            Ok(TokioIo::new(stream))
        })
    }
}
