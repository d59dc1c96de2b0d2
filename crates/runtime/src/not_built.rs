//! A wrapper for a service whose domain logic has not been built yet.
//!
//! Its generated server is registered (so reflection, health and routing are real), every method
//! answers `UNIMPLEMENTED` from the generated default, and this wrapper replaces tonic's generic
//! "Not yet implemented" with a message naming the method and where its logic will come from.
//! It never returns data.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use http::HeaderValue;
use tonic::server::NamedService;
use tower_service::Service;

/// Wraps a generated server `S` whose trait methods are all defaults.
#[derive(Debug, Clone)]
pub struct NotBuilt<S> {
    inner: S,
    known: Arc<Vec<String>>,
    note: &'static str,
}

impl<S: NamedService> NotBuilt<S> {
    /// Wraps `inner`; `note` says what will build it, e.g. `"the order saga issue"`.
    pub fn new(inner: S, note: &'static str) -> Self {
        Self {
            inner,
            known: Arc::new(crate::descriptors::method_paths(S::NAME)),
            note,
        }
    }
}

impl<S: NamedService> NamedService for NotBuilt<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for NotBuilt<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_string();
        let known = self.known.contains(&path);
        let note = self.note;
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut response = fut.await?;
            let unimplemented = response
                .headers()
                .get("grpc-status")
                .is_some_and(|v| v.as_bytes() == b"12");
            if known && unimplemented {
                let message = format!(
                    "{path} is not built yet: this service's domain logic comes with {note}"
                );
                if let Ok(v) = HeaderValue::from_str(&percent_encode(&message)) {
                    response.headers_mut().insert("grpc-message", v);
                }
            }
            Ok(response)
        })
    }
}

/// Percent-encodes a `grpc-message` value as the gRPC spec asks (bytes outside 0x20..=0x7E, and
/// `%` itself).
fn percent_encode(message: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}
