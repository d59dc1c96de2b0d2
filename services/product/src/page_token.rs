//! Opaque page tokens: the sort key of the last row of a page, base64url-encoded JSON.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::error::ProductError;

/// Where the next page starts: after the row with this name and id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct After {
    /// The last row's name.
    pub name: String,
    /// The last row's id.
    pub id: String,
}

/// Encodes `after` as a token.
pub fn encode(after: &After) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(after).unwrap_or_default())
}

/// Decodes a token (empty: the first page).
pub fn decode(token: &str) -> Result<Option<After>, ProductError> {
    if token.is_empty() {
        return Ok(None);
    }
    URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .map(Some)
        .ok_or_else(|| {
            ProductError::invalid("page_token", "malformed; pass next_page_token unchanged")
        })
}

/// The page size of a request: `default` for 0, refused when negative or over `max`.
pub fn page_size(requested: i32, default: i64, max: i64) -> Result<i64, ProductError> {
    mesh_runtime::paging::page_size(requested, default, max)
        .map_err(|reason| ProductError::invalid("page_size", reason))
}
