//! Which request headers a browser may send across origins: the CORS preflight's
//! `access-control-allow-headers`.
//!
//! The preflight echoes the headers the browser asks for (`access-control-request-headers`) that
//! policy allows: the edge's own (`authorization`, `content-type`, `x-request-id`,
//! `grpc-timeout`, the gRPC-Web ones), trace context (`traceparent`, `tracestate`) and custom
//! metadata, i.e. any other well-formed name, except headers that carry transport or identity
//! meaning a page must not set: hop-by-hop and framing headers, cookies, `host`, proxy and
//! client-address headers (`forwarded`, `x-forwarded-*`, `x-real-ip`: the rate limit trusts
//! them from trusted proxies), `sec-*`, and gRPC's reserved `grpc-*` (except `grpc-timeout`).

use http::{HeaderMap, HeaderValue, header};

/// The headers allowed whatever the browser asks, listed when it asks for none.
pub const ALWAYS_ALLOWED: &str = "authorization, content-type, x-request-id, grpc-timeout, x-grpc-web, x-user-agent, traceparent, tracestate";

/// At most this many requested names are considered (longer lists are cut).
const MAX_REQUESTED: usize = 64;

/// Exact names a cross-origin page may never send.
const DENIED: &[&str] = &[
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "cookie",
    "cookie2",
    "expect",
    "forwarded",
    "x-real-ip",
    "via",
];

/// Prefixes of names a cross-origin page may never send.
const DENIED_PREFIXES: &[&str] = &["proxy-", "sec-", "x-forwarded-", "grpc-"];

/// Whether a cross-origin request may carry the header `name` (lower case).
pub fn allowed(name: &str) -> bool {
    if name == "grpc-timeout" {
        return true;
    }
    let well_formed = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    well_formed && !DENIED.contains(&name) && !DENIED_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The preflight's `access-control-allow-headers`: [`ALWAYS_ALLOWED`] plus each requested name
/// that [`allowed`] admits.
pub fn allow_headers(request: &HeaderMap) -> HeaderValue {
    let mut value = String::from(ALWAYS_ALLOWED);
    let requested = request
        .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .take(MAX_REQUESTED);
    for name in requested {
        let listed = value.split(", ").any(|n| n == name);
        if !listed && allowed(&name) {
            value.push_str(", ");
            value.push_str(&name);
        }
    }
    HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static(ALWAYS_ALLOWED))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preflight(requested: &str) -> String {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            HeaderValue::from_str(requested).unwrap(),
        );
        allow_headers(&headers).to_str().unwrap().to_string()
    }

    #[test]
    fn echoes_what_policy_allows() {
        let allowed = preflight(
            "Traceparent, x-tenant, X-Forwarded-For, cookie, grpc-status, bad name, x-tenant",
        );
        let names: Vec<&str> = allowed.split(", ").collect();
        assert!(names.contains(&"traceparent"), "{allowed}");
        assert_eq!(
            names.iter().filter(|n| **n == "x-tenant").count(),
            1,
            "{allowed}"
        );
        for refused in ["x-forwarded-for", "cookie", "grpc-status", "bad name"] {
            assert!(!names.contains(&refused), "{refused} in {allowed}");
        }
        assert_eq!(
            allow_headers(&HeaderMap::new()).to_str().unwrap(),
            ALWAYS_ALLOWED
        );
    }
}
