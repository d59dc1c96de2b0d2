//! The report service: CQRS read models built only from events: sales by shop and day, top products, stock.
//!
//! Its domain logic is not built yet (it comes with a later issue (none is filed yet)): the generated
//! `report.v1.ReportService` server is registered, so health, reflection and routing are real, and every
//! RPC answers `UNIMPLEMENTED` with a message saying so. It never returns made-up data.

use futures::future::BoxFuture;
use mesh_contracts::report::v1::report_service_server::{ReportService, ReportServiceServer};
use mesh_runtime::{BuildError, NotBuilt, ServiceContext, ServiceRoutes};

/// The report service's gRPC implementation.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReportApi;

// Every method keeps the generated default (UNIMPLEMENTED) until the domain logic lands.
impl ReportService for ReportApi {}

/// Builds the service's routes; the module table's constructor for `report`.
pub fn build(ctx: ServiceContext) -> BoxFuture<'static, Result<ServiceRoutes, BuildError>> {
    Box::pin(async move {
        let server = ReportServiceServer::new(ReportApi)
            .max_decoding_message_size(ctx.max_message_bytes())
            .max_encoding_message_size(ctx.max_message_bytes());
        Ok(ServiceRoutes::new()
            .add_service(NotBuilt::new(server, "a later issue (none is filed yet)")))
    })
}
