//! Token material: access-token claims, opaque refresh tokens and their hashes.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mesh_runtime::auth::{Claims, Role, VerifierSettings};
use sha2::{Digest, Sha256};

/// The claims of an access token for `subject` with `roles`, valid `ttl` seconds from `now`.
pub fn access_claims(
    settings: &VerifierSettings,
    subject: &str,
    roles: &[Role],
    stores: &[String],
    now: i64,
    ttl: i64,
) -> Claims {
    Claims {
        iss: settings.issuer.clone(),
        sub: subject.to_string(),
        aud: settings.audience.clone(),
        exp: now + ttl,
        iat: now,
        nbf: now,
        jti: uuid::Uuid::now_v7().to_string(),
        roles: roles.iter().map(|r| r.as_str().to_string()).collect(),
        stores: stores.to_vec(),
    }
}

/// A new opaque secret (refresh token, device credential): 256 random bits, base64url.
pub fn new_secret() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// The stored form of a secret: hex SHA-256 (secrets are random, so no salt or slow hash is
/// needed; the database never holds a usable token).
pub fn hash_secret(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Constant-time equality of two secrets (compared by their hashes).
pub fn secrets_equal(a: &str, b: &str) -> bool {
    let (a, b) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}
