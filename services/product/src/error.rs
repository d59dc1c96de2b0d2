//! The product service's errors, turned into gRPC statuses in one place.

use mesh_runtime::DatabaseError;

/// What can go wrong in a product RPC.
#[derive(Debug, thiserror::Error)]
pub enum ProductError {
    /// A request field is missing or malformed; the message names it.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The field, e.g. `product.price.currency_code`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Another product has this SKU.
    #[error("product.sku: a product with sku `{0}` already exists")]
    SkuTaken(String),
    /// No such product.
    #[error("product `{0}` not found")]
    NotFound(String),
    /// The caller may not use this option.
    #[error("{0}")]
    PermissionDenied(String),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] DatabaseError),
}

impl ProductError {
    /// A missing or malformed `field`.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }
}

impl From<sqlx::Error> for ProductError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(DatabaseError::from(e))
    }
}

impl From<ProductError> for tonic::Status {
    fn from(e: ProductError) -> Self {
        match e {
            ProductError::InvalidArgument { .. } => tonic::Status::invalid_argument(e.to_string()),
            ProductError::SkuTaken(_) => tonic::Status::already_exists(e.to_string()),
            ProductError::NotFound(_) => tonic::Status::not_found(e.to_string()),
            ProductError::PermissionDenied(_) => tonic::Status::permission_denied(e.to_string()),
            ProductError::Database(d) => d.into(),
        }
    }
}
