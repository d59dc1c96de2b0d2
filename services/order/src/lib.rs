//! The order service: orders, order lines and the order saga's state.
//!
//! Its domain logic is not built yet (it comes with the order saga issue): the generated
//! `order.v1.OrderService` server is registered, so health, reflection and routing are real, and every
//! RPC answers `UNIMPLEMENTED` with a message saying so. It never returns made-up data.

use futures::future::BoxFuture;
use mesh_contracts::order::v1::order_service_server::{OrderService, OrderServiceServer};
use mesh_runtime::{BuildError, NotBuilt, ServiceContext, ServiceRoutes};

/// The order service's gRPC implementation.
#[derive(Debug, Default, Clone, Copy)]
pub struct OrderApi;

// Every method keeps the generated default (UNIMPLEMENTED) until the domain logic lands.
impl OrderService for OrderApi {}

/// Builds the service's routes; the module table's constructor for `order`.
pub fn build(ctx: ServiceContext) -> BoxFuture<'static, Result<ServiceRoutes, BuildError>> {
    Box::pin(async move {
        let server = OrderServiceServer::new(OrderApi)
            .max_decoding_message_size(ctx.max_message_bytes())
            .max_encoding_message_size(ctx.max_message_bytes());
        Ok(ServiceRoutes::new().add_service(NotBuilt::new(server, "the order saga issue")))
    })
}
