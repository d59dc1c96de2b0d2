//! The auth service: credentials, sessions, refresh tokens and roles; issues JWTs and serves the JWKS.
//!
//! Its domain logic is not built yet (it comes with the identity and catalog issue): the generated
//! `auth.v1.AuthService` server is registered, so health, reflection and routing are real, and every
//! RPC answers `UNIMPLEMENTED` with a message saying so. It never returns made-up data.

use futures::future::BoxFuture;
use mesh_contracts::auth::v1::auth_service_server::{AuthService, AuthServiceServer};
use mesh_runtime::{BuildError, NotBuilt, ServiceContext, ServiceRoutes};

/// The auth service's gRPC implementation.
#[derive(Debug, Default, Clone, Copy)]
pub struct AuthApi;

// Every method keeps the generated default (UNIMPLEMENTED) until the domain logic lands.
impl AuthService for AuthApi {}

/// Builds the service's routes; the module table's constructor for `auth`.
pub fn build(ctx: ServiceContext) -> BoxFuture<'static, Result<ServiceRoutes, BuildError>> {
    Box::pin(async move {
        let server = AuthServiceServer::new(AuthApi)
            .max_decoding_message_size(ctx.max_message_bytes())
            .max_encoding_message_size(ctx.max_message_bytes());
        Ok(ServiceRoutes::new()
            .add_service(NotBuilt::new(server, "the identity and catalog issue")))
    })
}
