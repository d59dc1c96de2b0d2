//! The auth service's errors, turned into gRPC statuses in one place: the kit's common failures
//! ([`ServiceError`]: a bad field, an unknown account, a taken email, a state that forbids the
//! call, the database) and auth's own, the credentials it refuses (`UNAUTHENTICATED`).

use mesh_runtime::DatabaseError;
use mesh_runtime::auth::AuthError;
use mesh_runtime::domain::ServiceError;

/// What can go wrong in an auth RPC.
#[derive(Debug, thiserror::Error)]
pub enum AuthServiceError {
    /// A bad field, an unknown account, a taken email, a precondition, the database.
    #[error(transparent)]
    Common(#[from] ServiceError),
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
    /// A token failed verification.
    #[error(transparent)]
    Token(#[from] AuthError),
    /// Signing or hashing failed.
    #[error("internal error: {0}")]
    Internal(String),
}

impl AuthServiceError {
    /// A missing or malformed `field`.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        ServiceError::invalid(field, reason).into()
    }

    /// The email is taken.
    pub fn email_taken() -> Self {
        ServiceError::AlreadyExists("email: an account with this email already exists".into())
            .into()
    }

    /// No account with this id.
    pub fn account_not_found(id: impl Into<String>) -> Self {
        ServiceError::not_found("account", id).into()
    }

    /// The operation does not apply in this configuration; `message` says why.
    pub fn precondition(message: impl Into<String>) -> Self {
        ServiceError::precondition(message).into()
    }

    /// Whether this is a unique-constraint conflict in the database.
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            Self::Common(ServiceError::Database(DatabaseError::Conflict(_)))
        )
    }
}

mesh_runtime::from_database_errors!(AuthServiceError);

impl From<AuthServiceError> for tonic::Status {
    fn from(e: AuthServiceError) -> Self {
        use AuthServiceError as E;
        match e {
            E::Common(c) => c.into(),
            E::BadCredentials
            | E::BadClient
            | E::BadDeviceCredential
            | E::BadRefreshToken(_)
            | E::RefreshReuse => tonic::Status::unauthenticated(e.to_string()),
            E::Token(t) => t.into(),
            E::Internal(m) => {
                tracing::error!(error = %m, "auth internal error");
                tonic::Status::internal("internal error")
            }
        }
    }
}
