//! Password hashing with Argon2id (PHC strings), off the async runtime's threads.

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

use crate::error::AuthServiceError;

/// A PHC-encoded Argon2id hash of `password` with a fresh salt.
pub async fn hash(password: String) -> Result<String, AuthServiceError> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| AuthServiceError::Internal(format!("hashing a password: {e}")))
    })
    .await
    .map_err(|e| AuthServiceError::Internal(e.to_string()))?
}

/// Whether `password` matches the PHC string `hash` (constant time).
pub async fn verify(password: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

/// A hash to verify against when the account does not exist, so a login for an unknown email
/// takes as long as one with a wrong password.
pub async fn dummy_hash() -> String {
    static DUMMY: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    DUMMY
        .get_or_init(|| async { hash("not a real password".into()).await.unwrap_or_default() })
        .await
        .clone()
}
