//! The product service's errors, turned into gRPC statuses in one place: the kit's common
//! failures ([`ServiceError`]) and the one of the catalog's own, a taken SKU.

use mesh_runtime::domain::ServiceError;

/// What can go wrong in a product RPC.
#[derive(Debug, thiserror::Error)]
pub enum ProductError {
    /// A bad field, an unknown product, an option the caller may not use, the database.
    #[error(transparent)]
    Common(#[from] ServiceError),
    /// Another product has this SKU.
    #[error("product.sku: a product with sku `{0}` already exists")]
    SkuTaken(String),
}

impl ProductError {
    /// A missing or malformed `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ServiceError::invalid(field, reason).into()
    }

    /// No product `id`.
    pub fn not_found(id: impl Into<String>) -> Self {
        ServiceError::not_found("product", id).into()
    }
}

mesh_runtime::from_database_errors!(ProductError);

impl From<ProductError> for tonic::Status {
    fn from(e: ProductError) -> Self {
        match e {
            ProductError::Common(c) => c.into(),
            ProductError::SkuTaken(_) => tonic::Status::already_exists(e.to_string()),
        }
    }
}
