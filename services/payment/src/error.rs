//! The payment service's errors, turned into gRPC statuses in one place: the kit's common
//! failures ([`ServiceError`]) and the payment's own, a provider that cannot be reached.

use mesh_runtime::DatabaseError;
use mesh_runtime::domain::ServiceError;

use crate::provider::ProviderError;

/// What can go wrong in a payment RPC.
#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    /// A bad field, an unknown payment or refund, a state that forbids it, the database.
    #[error(transparent)]
    Common(#[from] ServiceError),
    /// The provider could not be reached.
    #[error(transparent)]
    Provider(#[from] ProviderError),
}

impl PaymentError {
    /// A missing or malformed `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ServiceError::invalid(field, reason).into()
    }

    /// No `what` with this `id`.
    pub fn not_found(what: impl Into<String>, id: impl Into<String>) -> Self {
        ServiceError::not_found(what, id).into()
    }

    /// The payment's state forbids the call; `message` says why.
    pub fn precondition(message: impl Into<String>) -> Self {
        ServiceError::precondition(message).into()
    }

    /// The database failure behind this error, if that is what it is.
    pub fn database(&self) -> Option<&DatabaseError> {
        match self {
            Self::Common(ServiceError::Database(d)) => Some(d),
            _ => None,
        }
    }
}

mesh_runtime::from_database_errors!(PaymentError);

impl From<PaymentError> for tonic::Status {
    fn from(e: PaymentError) -> Self {
        match e {
            PaymentError::Common(c) => c.into(),
            PaymentError::Provider(p) => tonic::Status::unavailable(format!(
                "{p}; retry later with the same order id (charges are idempotent per order)"
            )),
        }
    }
}
