//! One keyset page token for every list RPC: opaque, versioned, tamper-evident and bound to the
//! query it came from.
//!
//! A token holds the keyset cursor of the last row of a page (any `serde` value: `(i64,
//! String)` for `(created_us, id)`, a `String` id, ...) as JSON, behind a header:
//!
//! ```text
//! base64url( version:1 | query tag:8 | mac:16 | cursor JSON )
//! ```
//!
//! - the query tag is the first 8 bytes of SHA-256 over the query (the list's name and its
//!   filters, any `serde` value), so a token used with other filters is refused;
//! - the MAC is HMAC-SHA-256 (truncated to 16 bytes) over version, tag and cursor, keyed by
//!   the process's page-token key ([`super::page_token_key`]: `MESH_PAGE_TOKEN_KEY`, checked
//!   with the configuration and installed by the binary; give every replica the same value),
//!   else a built-in public key: the cursor is then only checksummed, not secret. A cursor holds no
//!   authorisation: services check who may see each row whatever the token says.
//!
//! Every refusal is `INVALID_ARGUMENT` naming `page_token`. Empty means the first page.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac as _};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest as _, Sha256};

use super::ServiceError;

/// The format version this build writes and reads.
pub const VERSION: u8 = 1;

const TAG_LEN: usize = 8;
const MAC_LEN: usize = 16;
const HEADER_LEN: usize = 1 + TAG_LEN + MAC_LEN;
const FIELD: &str = "page_token";

fn query_tag(query: &impl Serialize) -> [u8; TAG_LEN] {
    let json = serde_json::to_vec(query).unwrap_or_default();
    let digest = Sha256::new()
        .chain_update(b"mesh.page_token.query\0")
        .chain_update(&json)
        .finalize();
    let mut tag = [0; TAG_LEN];
    tag.copy_from_slice(&digest[..TAG_LEN]);
    tag
}

fn mac(version: u8, tag: &[u8], cursor: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(super::page_token_key::current().bytes())
        .expect("HMAC accepts any key length");
    mac.update(&[version]);
    mac.update(tag);
    mac.update(cursor);
    mac
}

/// The token of a page that ends at `cursor`, for `query` (the list's name and filters, e.g.
/// `("orders", &customer_id, status)`; the same value must be passed to [`decode`]).
pub fn encode<C: Serialize, Q: Serialize + ?Sized>(cursor: &C, query: &Q) -> String {
    let payload = serde_json::to_vec(cursor).unwrap_or_default();
    let tag = query_tag(&query);
    let code = mac(VERSION, &tag, &payload).finalize().into_bytes();
    let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
    bytes.push(VERSION);
    bytes.extend_from_slice(&tag);
    bytes.extend_from_slice(&code[..MAC_LEN]);
    bytes.extend_from_slice(&payload);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The cursor of `token` (`None` for an empty token: the first page), refused with
/// `INVALID_ARGUMENT` naming `page_token` when it is malformed, of another version, altered, or
/// issued for a different `query`.
pub fn decode<C: DeserializeOwned, Q: Serialize + ?Sized>(
    token: &str,
    query: &Q,
) -> Result<Option<C>, ServiceError> {
    if token.is_empty() {
        return Ok(None);
    }
    let malformed = || ServiceError::invalid(FIELD, "malformed; pass next_page_token unchanged");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| malformed())?;
    if bytes.len() < HEADER_LEN {
        return Err(malformed());
    }
    let (version, rest) = (bytes[0], &bytes[1..]);
    if version != VERSION {
        return Err(ServiceError::invalid(
            FIELD,
            format!("version {version} is not supported; start again without a page token"),
        ));
    }
    let (tag, rest) = rest.split_at(TAG_LEN);
    let (code, payload) = rest.split_at(MAC_LEN);
    if mac(version, tag, payload)
        .verify_truncated_left(code)
        .is_err()
    {
        return Err(ServiceError::invalid(
            FIELD,
            "altered or not issued by this service; pass next_page_token unchanged",
        ));
    }
    if tag != query_tag(&query) {
        return Err(ServiceError::invalid(
            FIELD,
            "issued for a different query; repeat the first page's filters or start again without a page token",
        ));
    }
    serde_json::from_slice(payload)
        .map(Some)
        .map_err(|_| malformed())
}

/// Cuts `rows` (fetched with `limit + 1`) to `limit` and returns the next page's token: empty
/// when there is no further row, else the token of the last kept row's `cursor`.
pub fn next_page<T, C: Serialize, Q: Serialize + ?Sized>(
    rows: &mut Vec<T>,
    limit: i64,
    query: &Q,
    cursor: impl FnOnce(&T) -> C,
) -> String {
    let limit = usize::try_from(limit).unwrap_or(0);
    if rows.len() <= limit {
        return String::new();
    }
    rows.truncate(limit);
    rows.last()
        .map(|row| encode(&cursor(row), query))
        .unwrap_or_default()
}

/// The page size of a request (see [`crate::paging::page_size`]), refused naming `page_size`.
pub fn page_size(requested: i32, default: i64, max: i64) -> Result<i64, ServiceError> {
    crate::paging::page_size(requested, default, max)
        .map_err(|reason| ServiceError::invalid("page_size", reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(e: ServiceError) -> String {
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let message = e.to_string();
        assert!(message.starts_with("page_token: "), "{message}");
        message
    }

    #[test]
    fn round_trips_any_cursor_for_the_same_query() {
        let query = ("orders", "customer-1", 3);
        let token = encode(&(1_767_225_600_123_456_i64, "o-9".to_string()), &query);
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        let back: Option<(i64, String)> = decode(&token, &query).unwrap();
        assert_eq!(back, Some((1_767_225_600_123_456, "o-9".to_string())));
        let id_token = encode(&"vm-9", &("machines",));
        assert_eq!(
            decode::<String, _>(&id_token, &("machines",)).unwrap(),
            Some("vm-9".to_string())
        );
        assert_eq!(decode::<String, _>("", &("machines",)).unwrap(), None);
    }

    #[test]
    fn a_different_query_is_refused() {
        let token = encode(&"a", &("stores", "EU"));
        let message = reason(decode::<String, _>(&token, &("stores", "US")).unwrap_err());
        assert!(message.contains("different query"), "{message}");
        // Another list's token, even with the same filter values.
        assert!(decode::<String, _>(&token, &("machines", "EU")).is_err());
    }

    #[test]
    fn every_altered_byte_is_refused() {
        let query = ("list",);
        let token = encode(&(5_i64, "id".to_string()), &query);
        let bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        for i in 0..bytes.len() {
            let mut altered = bytes.clone();
            altered[i] ^= 0x01;
            let altered = URL_SAFE_NO_PAD.encode(&altered);
            assert!(
                decode::<(i64, String), _>(&altered, &query).is_err(),
                "byte {i} altered was accepted"
            );
        }
        // A forged cursor under a copied header fails the MAC.
        let mut forged = bytes[..HEADER_LEN].to_vec();
        forged.extend_from_slice(br#"[0,"id"]"#);
        let message = reason(
            decode::<(i64, String), _>(&URL_SAFE_NO_PAD.encode(&forged), &query).unwrap_err(),
        );
        assert!(message.contains("altered"), "{message}");
    }

    #[test]
    fn malformed_and_foreign_versions_are_refused() {
        for token in ["!!", "abc", "dGVzdA"] {
            let message = reason(decode::<String, _>(token, &("x",)).unwrap_err());
            assert!(message.contains("malformed"), "{message}");
        }
        let mut bytes = URL_SAFE_NO_PAD.decode(encode(&1, &("x",))).unwrap();
        bytes[0] = 9;
        let message =
            reason(decode::<i64, _>(&URL_SAFE_NO_PAD.encode(&bytes), &("x",)).unwrap_err());
        assert!(message.contains("version 9"), "{message}");
        // A valid token whose cursor is of another type.
        let token = encode(&"text", &("x",));
        assert!(reason(decode::<i64, _>(&token, &("x",)).unwrap_err()).contains("malformed"));
    }

    #[test]
    fn next_page_cuts_and_points_after_the_last_row() {
        let query = ("n",);
        let mut rows = vec![1, 2, 3];
        let token = next_page(&mut rows, 2, &query, |r| *r);
        assert_eq!(rows, [1, 2]);
        assert_eq!(decode::<i32, _>(&token, &query).unwrap(), Some(2));
        let mut rows = vec![1, 2];
        assert_eq!(next_page(&mut rows, 2, &query, |r| *r), "");
        assert_eq!(rows, [1, 2]);
    }

    #[test]
    fn page_sizes_name_the_field() {
        assert_eq!(page_size(0, 50, 500).unwrap(), 50);
        assert_eq!(
            page_size(501, 50, 500).unwrap_err().to_string(),
            "page_size: at most 500"
        );
    }
}
