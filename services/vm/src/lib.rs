//! The vm service: vending machine slots and the vend flow.
//!
//! Its domain logic is not built yet (it comes with the devices issue): the generated
//! `vm.v1.VendingMachineService` server is registered, so health, reflection and routing are real, and every
//! RPC answers `UNIMPLEMENTED` with a message saying so. It never returns made-up data.

use futures::future::BoxFuture;
use mesh_contracts::vm::v1::vending_machine_service_server::{
    VendingMachineService, VendingMachineServiceServer,
};
use mesh_runtime::{BuildError, NotBuilt, ServiceContext, ServiceRoutes};

/// The vm service's gRPC implementation.
#[derive(Debug, Default, Clone, Copy)]
pub struct VmApi;

// Every method keeps the generated default (UNIMPLEMENTED) until the domain logic lands.
impl VendingMachineService for VmApi {}

/// Builds the service's routes; the module table's constructor for `vm`.
pub fn build(ctx: ServiceContext) -> BoxFuture<'static, Result<ServiceRoutes, BuildError>> {
    Box::pin(async move {
        let server = VendingMachineServiceServer::new(VmApi)
            .max_decoding_message_size(ctx.max_message_bytes())
            .max_encoding_message_size(ctx.max_message_bytes());
        Ok(ServiceRoutes::new().add_service(NotBuilt::new(server, "the devices issue")))
    })
}
