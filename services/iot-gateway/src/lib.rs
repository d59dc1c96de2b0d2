//! The iot-gateway service: device sessions over bidirectional streaming channels.
//!
//! Its domain logic is not built yet (it comes with the devices issue): the generated
//! `iot.v1.GatewayService` server is registered, so health, reflection and routing are real, and every
//! RPC answers `UNIMPLEMENTED` with a message saying so. It never returns made-up data.

use futures::future::BoxFuture;
use mesh_contracts::iot::v1::gateway_service_server::{GatewayService, GatewayServiceServer};
use mesh_runtime::{BuildError, NotBuilt, ServiceContext, ServiceRoutes};

/// The iot-gateway service's gRPC implementation.
#[derive(Debug, Default, Clone, Copy)]
pub struct IotGatewayApi;

// Every method keeps the generated default (UNIMPLEMENTED) until the domain logic lands.
impl GatewayService for IotGatewayApi {}

/// Builds the service's routes; the module table's constructor for `iot-gateway`.
pub fn build(ctx: ServiceContext) -> BoxFuture<'static, Result<ServiceRoutes, BuildError>> {
    Box::pin(async move {
        let server = GatewayServiceServer::new(IotGatewayApi)
            .max_decoding_message_size(ctx.max_message_bytes())
            .max_encoding_message_size(ctx.max_message_bytes());
        Ok(ServiceRoutes::new().add_service(NotBuilt::new(server, "the devices issue")))
    })
}
