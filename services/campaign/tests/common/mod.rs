//! Shared test harness: the campaign service over real gRPC with a real auth service, on SQLite
//! + the in-process bus or Postgres + Redis, tokens of each kind and event publishing.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_campaign::CampaignSettings;
use mesh_contracts::campaign::v1::campaign_service_client::CampaignServiceClient;
use mesh_runtime::Database;
use mesh_runtime::bus::EventBus;
use mesh_runtime::config::DatabaseTarget;
use mesh_testkit::{self as testing, TestAuth};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub struct Mesh {
    pub auth: TestAuth,
    pub db: Database,
    pub bus: Arc<dyn EventBus>,
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    /// Admin (passes the staff checks).
    pub staff: String,
    pub customer: String,
    /// The `order` service's token.
    pub service: String,
}

/// The bus: in-process with SQLite; Redis (a fresh namespace) when `redis_url` is given.
pub fn bus(redis_url: Option<&str>) -> Arc<dyn EventBus> {
    testing::bus("mesh-campaign", redis_url)
}

/// The backends of a test: SQLite + in-process bus, or Postgres + Redis.
pub fn backends(postgres: bool, test: &str) -> Option<(DatabaseTarget, Option<String>)> {
    testing::backends_for(postgres, test)
}

pub async fn start(
    target: DatabaseTarget,
    redis_url: Option<&str>,
    settings: CampaignSettings,
) -> Mesh {
    let auth = TestAuth::start(
        &testing::sqlite(),
        testing::service_client("order", "order-secret"),
    )
    .await;
    let db = testing::database("campaign", &target, &mesh_campaign::MIGRATIONS).await;
    let bus = bus(redis_url);
    let served = testing::start(
        "campaign",
        BTreeMap::from([("auth", auth.uri())]),
        &db,
        &bus,
        |ctx| mesh_campaign::build_with(ctx, settings),
    )
    .await;
    let staff = auth.admin_token().await;
    let customer = auth.customer_token().await;
    let service = auth.service_token("order", "order-secret").await;
    Mesh {
        auth,
        db,
        bus,
        addr: served.addr,
        shutdown: served.shutdown,
        staff,
        customer,
        service,
    }
}

/// Holds that live long and are swept often.
pub fn settings() -> CampaignSettings {
    CampaignSettings {
        hold_ttl: Duration::from_secs(600),
        sweep_every: Duration::from_millis(50),
    }
}

impl Mesh {
    pub async fn client(&self) -> CampaignServiceClient<Channel> {
        CampaignServiceClient::new(testing::channel(self.addr).await)
    }

    pub fn stop(&self) {
        self.shutdown.cancel();
        self.auth.shutdown.cancel();
    }

    /// Publishes an event as its producer's relay would.
    pub async fn publish(
        &self,
        event_type: &str,
        subject: &str,
        name: &str,
        msg: &impl prost::Message,
    ) {
        testing::publish(
            self.bus.as_ref(),
            &testing::envelope(event_type, subject, name, msg),
        )
        .await;
    }

    /// The types of the events the service emitted, in order.
    pub async fn emitted(&self) -> Vec<String> {
        testing::outbox::types(&self.db).await
    }
}
