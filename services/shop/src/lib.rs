//! The shop service: stores, the vending machine registry and device status.
//!
//! Its domain logic is not built yet (it comes with the devices issue): the generated
//! `shop.v1.ShopService` server is registered, so health, reflection and routing are real, and every
//! RPC answers `UNIMPLEMENTED` with a message saying so. It never returns made-up data.

use futures::future::BoxFuture;
use mesh_contracts::shop::v1::shop_service_server::{ShopService, ShopServiceServer};
use mesh_runtime::{BuildError, NotBuilt, ServiceContext, ServiceRoutes};

/// The shop service's gRPC implementation.
#[derive(Debug, Default, Clone, Copy)]
pub struct ShopApi;

// Every method keeps the generated default (UNIMPLEMENTED) until the domain logic lands.
impl ShopService for ShopApi {}

/// Builds the service's routes; the module table's constructor for `shop`.
pub fn build(ctx: ServiceContext) -> BoxFuture<'static, Result<ServiceRoutes, BuildError>> {
    Box::pin(async move {
        let server = ShopServiceServer::new(ShopApi)
            .max_decoding_message_size(ctx.max_message_bytes())
            .max_encoding_message_size(ctx.max_message_bytes());
        Ok(ServiceRoutes::new().add_service(NotBuilt::new(server, "the devices issue")))
    })
}
