//! The claims of an access token, as the auth service signs them.

use serde::{Deserialize, Serialize};

/// The issuer (`iss`) of tokens unless `MESH_JWT_ISSUER` says otherwise.
pub const DEFAULT_ISSUER: &str = "mesh-auth";
/// The audience (`aud`) of tokens unless `MESH_JWT_AUDIENCE` says otherwise.
pub const DEFAULT_AUDIENCE: &str = "mesh";

/// The claims of a mesh access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Subject: the account id or the service's client id.
    pub sub: String,
    /// Audience.
    pub aud: String,
    /// Expiry (Unix seconds).
    pub exp: i64,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Not before (Unix seconds).
    pub nbf: i64,
    /// Token id.
    pub jti: String,
    /// Role names, e.g. `["customer"]`.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Staff: the shop store ids the account works at (from the user service's store
    /// assignments; `docs/identity.md`). Left out of the token when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stores: Vec<String>,
}
