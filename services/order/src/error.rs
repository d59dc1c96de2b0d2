//! The order service's errors, turned into gRPC statuses in one place: the kit's common
//! failures ([`ServiceError`], a refusal while the saga is behind among them:
//! [`ServiceError::Overloaded`]) and the order's own, a reused idempotency key. Every message
//! that is about a request field starts with the field's path (e.g. `lines[2].quantity: ...`).

use mesh_runtime::DatabaseError;
use mesh_runtime::domain::ServiceError;

/// What can go wrong in an order RPC.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    /// A bad field, an unknown order or product, a state that forbids the call, a caller who
    /// may not, a peer or the database down.
    #[error(transparent)]
    Common(#[from] ServiceError),
    /// The idempotency key was used before for a different request.
    #[error(
        "idempotency_key: `{0}` was already used by this customer for a different order request; use a new key for a new order"
    )]
    KeyReused(String),
}

impl OrderError {
    /// A missing or malformed `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ServiceError::invalid(field, reason).into()
    }

    /// `field` names a `what` (e.g. `product`) with this `id` that does not exist:
    /// "`field`: `what` `id` not found".
    pub fn not_found(field: &str, what: &str, id: &str) -> Self {
        ServiceError::not_found(format!("{field}: {what}"), id).into()
    }

    /// The state forbids what `field` asks.
    pub fn precondition(field: impl std::fmt::Display, reason: impl std::fmt::Display) -> Self {
        ServiceError::precondition(format!("{field}: {reason}")).into()
    }

    /// The caller may not use `field`'s value.
    pub fn denied(field: impl std::fmt::Display, reason: impl std::fmt::Display) -> Self {
        ServiceError::PermissionDenied(format!("{field}: {reason}")).into()
    }

    /// A peer (product, payment) or the order itself could not answer now; retrying may work.
    pub fn unavailable(message: impl Into<String>) -> Self {
        ServiceError::Unavailable(message.into()).into()
    }

    /// The database failure behind this error, if that is what it is.
    pub fn database(&self) -> Option<&DatabaseError> {
        match self {
            Self::Common(ServiceError::Database(d)) => Some(d),
            _ => None,
        }
    }
}

mesh_runtime::from_database_errors!(OrderError);

impl From<OrderError> for tonic::Status {
    fn from(e: OrderError) -> Self {
        match e {
            OrderError::Common(c) => c.into(),
            OrderError::KeyReused(_) => tonic::Status::already_exists(e.to_string()),
        }
    }
}
