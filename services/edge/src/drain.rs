//! Answers that arrive on HTTP/1.1: when the edge answers a request without reading its body
//! (a refused token, an unknown route, a rate limit, an upstream that answered early), an
//! HTTP/1.1 connection cannot carry the next request until the rest of that body has been read.
//! Left alone, the server would close the connection under a client still sending it (a broken
//! pipe instead of the answer, and the next call on that connection failing too).
//!
//! So on HTTP/1.x the request body is [`share`]d: the handler reads it as usual through a
//! [`SharedBody`], and once the handler has answered and let go of it, [`settle`] reads and
//! discards what is left, at most [`DRAIN_LIMIT_BYTES`] within [`DRAIN_TIMEOUT`], before the
//! answer goes out. A body too long or too slow for that gets the answer with
//! `connection: close`, so the client learns the connection ends instead of finding out by a
//! broken pipe. HTTP/2 needs none of this (a stream is reset on its own) and is left untouched.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderValue, Request, Version, header};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt as _;

/// The most bytes of an unread request body discarded to keep a connection open.
pub const DRAIN_LIMIT_BYTES: usize = 4 << 20;

/// How long the edge waits for the rest of an unread request body.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The request body, owned jointly by the handler (reading) and [`settle`] (discarding the
/// rest once the handler is done with it).
type Slot = Arc<Mutex<Body>>;

/// A request body read through a [`Slot`] (see the module docs).
#[derive(Debug)]
pub struct SharedBody(Slot);

impl http_body::Body for SharedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let mut body = self.0.lock().unwrap_or_else(|e| e.into_inner());
        Pin::new(&mut *body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.lock().map(|b| b.is_end_stream()).unwrap_or_default()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.lock().map(|b| b.size_hint()).unwrap_or_default()
    }
}

/// The body of an HTTP/1.x request made shared (the request to hand on, and the slot for
/// [`settle`]); other versions pass unchanged, with no slot.
pub fn share(req: Request<Body>) -> (Request<Body>, Option<Slot>) {
    if req.version() > Version::HTTP_11 {
        return (req, None);
    }
    let (parts, body) = req.into_parts();
    if body.is_end_stream() {
        return (Request::from_parts(parts, body), None);
    }
    let slot: Slot = Arc::new(Mutex::new(body));
    let shared = Body::new(SharedBody(slot.clone()));
    (Request::from_parts(parts, shared), Some(slot))
}

/// Before `response` goes out: when the handler has let go of the request body without reading
/// all of it, reads and discards the rest (bounded); marks the response `connection: close` when
/// the rest could not be read. A body still being read (a streaming call in progress) is left to
/// its reader.
pub async fn settle(slot: Slot, response: &mut Response) {
    // Still held by the handler's reader (a call streaming its request upstream).
    let Ok(body) = Arc::try_unwrap(slot) else {
        return;
    };
    let body = body.into_inner().unwrap_or_else(|e| e.into_inner());
    if body.is_end_stream() {
        return;
    }
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, discard(body, DRAIN_LIMIT_BYTES)).await;
    if !matches!(drained, Ok(true)) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}

/// Reads `body` to its end, discarding it; `false` when it is longer than `limit` or fails.
async fn discard(mut body: Body, limit: usize) -> bool {
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { return false };
        if let Some(data) = frame.data_ref() {
            seen = seen.saturating_add(data.len());
            if seen > limit {
                return false;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unread_body_is_discarded_and_a_long_one_closes() {
        let req = Request::post("/x")
            .body(Body::from(vec![7u8; 100]))
            .expect("request");
        let (req, slot) = share(req);
        drop(req);
        let mut response = Response::new(Body::empty());
        settle(slot.expect("http/1.1 body is shared"), &mut response).await;
        assert!(response.headers().get(header::CONNECTION).is_none());

        let big = Body::from(vec![0u8; DRAIN_LIMIT_BYTES + 1]);
        let (req, slot) = share(Request::post("/x").body(big).expect("request"));
        drop(req);
        let mut response = Response::new(Body::empty());
        settle(slot.expect("shared"), &mut response).await;
        assert_eq!(response.headers()[header::CONNECTION], "close");
    }

    #[tokio::test]
    async fn a_body_the_handler_read_is_left_alone_and_h2_is_not_shared() {
        let (req, slot) = share(
            Request::post("/x")
                .body(Body::from("abc"))
                .expect("request"),
        );
        let bytes = axum::body::to_bytes(req.into_body(), 10)
            .await
            .expect("read");
        assert_eq!(&bytes[..], b"abc");
        let mut response = Response::new(Body::empty());
        settle(slot.expect("shared"), &mut response).await;
        assert!(response.headers().get(header::CONNECTION).is_none());

        let mut h2 = Request::post("/x")
            .body(Body::from("abc"))
            .expect("request");
        *h2.version_mut() = Version::HTTP_2;
        assert!(share(h2).1.is_none());
    }
}
