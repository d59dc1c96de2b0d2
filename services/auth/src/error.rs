//! The auth service's errors, turned into gRPC statuses in one place.

use mesh_runtime::DatabaseError;
use mesh_runtime::auth::AuthError;

/// What can go wrong in an auth RPC.
#[derive(Debug, thiserror::Error)]
pub enum AuthServiceError {
    /// A request field is missing or malformed; the message names it.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The field, e.g. `email`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The email is taken.
    #[error("email: an account with this email already exists")]
    EmailTaken,
    /// Wrong email or password (never says which).
    #[error("wrong email or password")]
    BadCredentials,
    /// Wrong client id or secret.
    #[error("unknown service client or wrong secret")]
    BadClient,
    /// The device credential is unknown, replaced or expired (never says which).
    #[error("device credential is not valid")]
    BadDeviceCredential,
    /// The refresh token is unknown, expired or its session ended.
    #[error("refresh token is not valid: {0}")]
    BadRefreshToken(&'static str),
    /// A consumed refresh token was presented again: its session was revoked.
    #[error("refresh token was already used; the session is revoked (possible token theft)")]
    RefreshReuse,
    /// No account with this id.
    #[error("account `{0}` not found")]
    AccountNotFound(String),
    /// The operation does not apply in this configuration.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A token failed verification.
    #[error(transparent)]
    Token(#[from] AuthError),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] DatabaseError),
    /// Signing or hashing failed.
    #[error("internal error: {0}")]
    Internal(String),
}

impl AuthServiceError {
    /// A missing or malformed `field`.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }
}

impl From<sqlx::Error> for AuthServiceError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(DatabaseError::from(e))
    }
}

impl From<AuthServiceError> for tonic::Status {
    fn from(e: AuthServiceError) -> Self {
        use AuthServiceError as E;
        match e {
            E::InvalidArgument { .. } => tonic::Status::invalid_argument(e.to_string()),
            E::EmailTaken => tonic::Status::already_exists(e.to_string()),
            E::BadCredentials
            | E::BadClient
            | E::BadDeviceCredential
            | E::BadRefreshToken(_)
            | E::RefreshReuse => tonic::Status::unauthenticated(e.to_string()),
            E::AccountNotFound(_) => tonic::Status::not_found(e.to_string()),
            E::FailedPrecondition(_) => tonic::Status::failed_precondition(e.to_string()),
            E::Token(t) => t.into(),
            E::Database(d) => d.into(),
            E::Internal(m) => {
                tracing::error!(error = %m, "auth internal error");
                tonic::Status::internal("internal error")
            }
        }
    }
}
