//! The payment service's errors, turned into gRPC statuses in one place.

use mesh_runtime::DatabaseError;

use crate::provider::ProviderError;

/// What can go wrong in a payment RPC.
#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    /// A request field is missing or malformed; the message names it (e.g. `amount.currency_code`).
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The payment is in the wrong state, or a refund exceeds what is left.
    #[error("{0}")]
    FailedPrecondition(String),
    /// No such payment.
    #[error("{0}")]
    NotFound(String),
    /// The provider could not be reached.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] DatabaseError),
}

impl PaymentError {
    /// A missing or malformed `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<sqlx::Error> for PaymentError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(DatabaseError::from(e))
    }
}

impl From<PaymentError> for tonic::Status {
    fn from(e: PaymentError) -> Self {
        match e {
            PaymentError::InvalidArgument { .. } => tonic::Status::invalid_argument(e.to_string()),
            PaymentError::FailedPrecondition(_) => {
                tonic::Status::failed_precondition(e.to_string())
            }
            PaymentError::NotFound(_) => tonic::Status::not_found(e.to_string()),
            PaymentError::Provider(p) => tonic::Status::unavailable(format!(
                "{p}; retry later with the same order id (charges are idempotent per order)"
            )),
            PaymentError::Database(d) => d.into(),
        }
    }
}
