//! The inventory service: stock per product per location, and reservations.
//!
//! Its domain logic is not built yet (it comes with the identity and catalog issue): the generated
//! `inventory.v1.InventoryService` server is registered, so health, reflection and routing are real, and every
//! RPC answers `UNIMPLEMENTED` with a message saying so. It never returns made-up data.

use futures::future::BoxFuture;
use mesh_contracts::inventory::v1::inventory_service_server::{
    InventoryService, InventoryServiceServer,
};
use mesh_runtime::{BuildError, NotBuilt, ServiceContext, ServiceRoutes};

/// The inventory service's gRPC implementation.
#[derive(Debug, Default, Clone, Copy)]
pub struct InventoryApi;

// Every method keeps the generated default (UNIMPLEMENTED) until the domain logic lands.
impl InventoryService for InventoryApi {}

/// Builds the service's routes; the module table's constructor for `inventory`.
pub fn build(ctx: ServiceContext) -> BoxFuture<'static, Result<ServiceRoutes, BuildError>> {
    Box::pin(async move {
        let server = InventoryServiceServer::new(InventoryApi)
            .max_decoding_message_size(ctx.max_message_bytes())
            .max_encoding_message_size(ctx.max_message_bytes());
        Ok(ServiceRoutes::new()
            .add_service(NotBuilt::new(server, "the identity and catalog issue")))
    })
}
