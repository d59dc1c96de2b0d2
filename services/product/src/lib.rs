//! The product service: the catalog: products, categories and prices.
//!
//! Its domain logic is not built yet (it comes with the identity and catalog issue): the generated
//! `product.v1.ProductService` server is registered, so health, reflection and routing are real, and every
//! RPC answers `UNIMPLEMENTED` with a message saying so. It never returns made-up data.

use futures::future::BoxFuture;
use mesh_contracts::product::v1::product_service_server::{ProductService, ProductServiceServer};
use mesh_runtime::{BuildError, NotBuilt, ServiceContext, ServiceRoutes};

/// The product service's gRPC implementation.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProductApi;

// Every method keeps the generated default (UNIMPLEMENTED) until the domain logic lands.
impl ProductService for ProductApi {}

/// Builds the service's routes; the module table's constructor for `product`.
pub fn build(ctx: ServiceContext) -> BoxFuture<'static, Result<ServiceRoutes, BuildError>> {
    Box::pin(async move {
        let server = ProductServiceServer::new(ProductApi)
            .max_decoding_message_size(ctx.max_message_bytes())
            .max_encoding_message_size(ctx.max_message_bytes());
        Ok(ServiceRoutes::new()
            .add_service(NotBuilt::new(server, "the identity and catalog issue")))
    })
}
