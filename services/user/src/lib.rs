//! The user service: customer and staff profiles.
//!
//! Its domain logic is not built yet (it comes with a later issue (none is filed yet)): the generated
//! `user.v1.UserService` server is registered, so health, reflection and routing are real, and every
//! RPC answers `UNIMPLEMENTED` with a message saying so. It never returns made-up data.

use futures::future::BoxFuture;
use mesh_contracts::user::v1::user_service_server::{UserService, UserServiceServer};
use mesh_runtime::{BuildError, NotBuilt, ServiceContext, ServiceRoutes};

/// The user service's gRPC implementation.
#[derive(Debug, Default, Clone, Copy)]
pub struct UserApi;

// Every method keeps the generated default (UNIMPLEMENTED) until the domain logic lands.
impl UserService for UserApi {}

/// Builds the service's routes; the module table's constructor for `user`.
pub fn build(ctx: ServiceContext) -> BoxFuture<'static, Result<ServiceRoutes, BuildError>> {
    Box::pin(async move {
        let server = UserServiceServer::new(UserApi)
            .max_decoding_message_size(ctx.max_message_bytes())
            .max_encoding_message_size(ctx.max_message_bytes());
        Ok(ServiceRoutes::new()
            .add_service(NotBuilt::new(server, "a later issue (none is filed yet)")))
    })
}
