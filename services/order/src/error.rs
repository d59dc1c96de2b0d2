//! The order service's errors, turned into gRPC statuses in one place. Every message that is
//! about a request field starts with the field's path (e.g. `lines[2].quantity: ...`).

use mesh_runtime::DatabaseError;

/// What can go wrong in an order RPC.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    /// A request field is missing or malformed.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Something the request names does not exist (or is not the caller's to see).
    #[error("{field}: {reason}")]
    NotFound {
        /// The field naming it.
        field: String,
        /// What was not found.
        reason: String,
    },
    /// The request is valid but the state forbids it (a confirmed order, an inactive product).
    #[error("{field}: {reason}")]
    FailedPrecondition {
        /// The field at fault.
        field: String,
        /// Why.
        reason: String,
    },
    /// The idempotency key was used before for a different request.
    #[error(
        "idempotency_key: `{0}` was already used by this customer for a different order request; use a new key for a new order"
    )]
    KeyReused(String),
    /// The caller may not act for this customer.
    #[error("{field}: {reason}")]
    PermissionDenied {
        /// The field at fault.
        field: String,
        /// Why.
        reason: String,
    },
    /// A peer (product, payment) could not answer.
    #[error("{0}")]
    Unavailable(String),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] DatabaseError),
}

impl OrderError {
    /// A missing or malformed `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// `field` names something that does not exist.
    pub fn not_found(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::NotFound {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The state forbids what `field` asks.
    pub fn precondition(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::FailedPrecondition {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The caller may not use `field`'s value.
    pub fn denied(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::PermissionDenied {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<sqlx::Error> for OrderError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(DatabaseError::from(e))
    }
}

impl From<OrderError> for tonic::Status {
    fn from(e: OrderError) -> Self {
        let message = e.to_string();
        match e {
            OrderError::InvalidArgument { .. } => tonic::Status::invalid_argument(message),
            OrderError::NotFound { .. } => tonic::Status::not_found(message),
            OrderError::FailedPrecondition { .. } => tonic::Status::failed_precondition(message),
            OrderError::KeyReused(_) => tonic::Status::already_exists(message),
            OrderError::PermissionDenied { .. } => tonic::Status::permission_denied(message),
            OrderError::Unavailable(_) => tonic::Status::unavailable(message),
            OrderError::Database(d) => d.into(),
        }
    }
}
