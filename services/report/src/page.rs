//! ListTopProducts' page token: the offset of the next page, bound to the query it came from
//! (a token used with another filter or ranking is refused, naming `page_token`).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::ReportError;

/// A fingerprint of the query a token belongs to (FNV-1a over its parts).
pub fn fingerprint(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The token of the page starting at `offset` of the query `query`.
pub fn encode(query: u64, offset: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("r1:{query:016x}:{offset}"))
}

/// The offset in `token` (0 for an empty token); refused unless it was made for `query`.
pub fn decode(token: &str, query: u64) -> Result<i64, ReportError> {
    if token.is_empty() {
        return Ok(0);
    }
    let bad = || ReportError::invalid("page_token", "not a token of this query");
    let text = URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(bad)?;
    let mut parts = text.split(':');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("r1"), Some(q), Some(offset), None) if q == format!("{query:016x}") => offset
            .parse::<i64>()
            .ok()
            .filter(|o| *o >= 0)
            .ok_or_else(bad),
        _ => Err(bad()),
    }
}
