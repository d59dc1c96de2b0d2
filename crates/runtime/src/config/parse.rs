//! The value parsers of the process configuration: ports, durations, URLs, peer addresses.

use std::time::Duration;

use http::Uri;

pub(super) fn parse_port(raw: &str) -> Result<u16, String> {
    raw.trim()
        .parse::<u16>()
        .map_err(|_| "expected a port number from 0 to 65535".to_string())
}

pub(super) fn parse_duration(raw: &str) -> Result<Duration, String> {
    humantime::parse_duration(raw.trim())
        .map_err(|e| format!("expected a duration such as `500ms`, `25s` or `1m` ({e})"))
}

pub(super) fn parse_postgres_url(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    match raw.split_once("://") {
        Some(("postgres" | "postgresql", rest)) if !rest.is_empty() => Ok(raw.to_string()),
        _ => Err(
            "expected a Postgres URL such as postgres://user:password@host:5432/mesh".to_string(),
        ),
    }
}

pub(super) fn parse_redis_url(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    match raw.split_once("://") {
        Some(("redis" | "rediss", rest)) if !rest.is_empty() => Ok(raw.to_string()),
        _ => Err("expected a Redis URL such as redis://host:6379".to_string()),
    }
}

pub(super) fn parse_url(raw: &str) -> Result<Uri, String> {
    let uri: Uri = raw
        .trim()
        .parse()
        .map_err(|e| format!("expected a URL such as http://host:port ({e})"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(_)) => Ok(uri),
        _ => Err("expected an http:// or https:// URL with a host, e.g. http://host:port".into()),
    }
}

/// A peer's address: a URL (`http://host:port`, `https://...`) or a bare `host:port`, which
/// means plain HTTP/2 (`http://host:port`).
pub(super) fn parse_peer_addr(raw: &str) -> Result<Uri, String> {
    let raw = raw.trim();
    if raw.contains("://") {
        return parse_url(raw);
    }
    match raw.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            parse_url(&format!("http://{raw}"))
        }
        _ => Err(
            "expected host:port (e.g. inventory:50054) or a URL such as http://host:port".into(),
        ),
    }
}
