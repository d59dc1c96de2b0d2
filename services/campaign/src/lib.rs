//! The campaign service: promotions and discount rules, priced synchronously for orders.
//!
//! Its domain logic is not built yet (it comes with a later issue (none is filed yet)): the generated
//! `campaign.v1.CampaignService` server is registered, so health, reflection and routing are real, and every
//! RPC answers `UNIMPLEMENTED` with a message saying so. It never returns made-up data.

use futures::future::BoxFuture;
use mesh_contracts::campaign::v1::campaign_service_server::{
    CampaignService, CampaignServiceServer,
};
use mesh_runtime::{BuildError, NotBuilt, ServiceContext, ServiceRoutes};

/// The campaign service's gRPC implementation.
#[derive(Debug, Default, Clone, Copy)]
pub struct CampaignApi;

// Every method keeps the generated default (UNIMPLEMENTED) until the domain logic lands.
impl CampaignService for CampaignApi {}

/// Builds the service's routes; the module table's constructor for `campaign`.
pub fn build(ctx: ServiceContext) -> BoxFuture<'static, Result<ServiceRoutes, BuildError>> {
    Box::pin(async move {
        let server = CampaignServiceServer::new(CampaignApi)
            .max_decoding_message_size(ctx.max_message_bytes())
            .max_encoding_message_size(ctx.max_message_bytes());
        Ok(ServiceRoutes::new()
            .add_service(NotBuilt::new(server, "a later issue (none is filed yet)")))
    })
}
