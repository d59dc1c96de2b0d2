//! The payment service: charges, refunds and the transaction ledger.
//!
//! Its domain logic is not built yet (it comes with the order saga issue): the generated
//! `payment.v1.PaymentService` server is registered, so health, reflection and routing are real, and every
//! RPC answers `UNIMPLEMENTED` with a message saying so. It never returns made-up data.

use futures::future::BoxFuture;
use mesh_contracts::payment::v1::payment_service_server::{PaymentService, PaymentServiceServer};
use mesh_runtime::{BuildError, NotBuilt, ServiceContext, ServiceRoutes};

/// The payment service's gRPC implementation.
#[derive(Debug, Default, Clone, Copy)]
pub struct PaymentApi;

// Every method keeps the generated default (UNIMPLEMENTED) until the domain logic lands.
impl PaymentService for PaymentApi {}

/// Builds the service's routes; the module table's constructor for `payment`.
pub fn build(ctx: ServiceContext) -> BoxFuture<'static, Result<ServiceRoutes, BuildError>> {
    Box::pin(async move {
        let server = PaymentServiceServer::new(PaymentApi)
            .max_decoding_message_size(ctx.max_message_bytes())
            .max_encoding_message_size(ctx.max_message_bytes());
        Ok(ServiceRoutes::new().add_service(NotBuilt::new(server, "the order saga issue")))
    })
}
