//! The notification service: templates, channels, the delivery log and preferences.
//!
//! Its domain logic is not built yet (it comes with the order saga issue): the generated
//! `notification.v1.NotificationService` server is registered, so health, reflection and routing are real, and every
//! RPC answers `UNIMPLEMENTED` with a message saying so. It never returns made-up data.

use futures::future::BoxFuture;
use mesh_contracts::notification::v1::notification_service_server::{
    NotificationService, NotificationServiceServer,
};
use mesh_runtime::{BuildError, NotBuilt, ServiceContext, ServiceRoutes};

/// The notification service's gRPC implementation.
#[derive(Debug, Default, Clone, Copy)]
pub struct NotificationApi;

// Every method keeps the generated default (UNIMPLEMENTED) until the domain logic lands.
impl NotificationService for NotificationApi {}

/// Builds the service's routes; the module table's constructor for `notification`.
pub fn build(ctx: ServiceContext) -> BoxFuture<'static, Result<ServiceRoutes, BuildError>> {
    Box::pin(async move {
        let server = NotificationServiceServer::new(NotificationApi)
            .max_decoding_message_size(ctx.max_message_bytes())
            .max_encoding_message_size(ctx.max_message_bytes());
        Ok(ServiceRoutes::new().add_service(NotBuilt::new(server, "the order saga issue")))
    })
}
