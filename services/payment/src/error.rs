//! The payment service's errors, turned into gRPC statuses in one place: the kit's common
//! failures ([`ServiceError`]) and the payment's own, a provider that cannot be reached.

use mesh_runtime::DatabaseError;
/// The common constructors (`invalid`, `not_found`, `precondition`) on this error.
pub use mesh_runtime::domain::CommonErrors;
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
