//! Shared test harness: a report service over real gRPC with a real auth service, on SQLite +
//! the in-process bus or Postgres + Redis, and helpers to publish the events it reads.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use mesh_contracts::common::v1::Money;
use mesh_contracts::report::v1::report_service_client::ReportServiceClient;
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
    pub admin: String,
    pub service: String,
    pub customer: String,
}

/// The bus: in-process with SQLite; Redis (a fresh namespace) when `redis_url` is given.
pub fn bus(redis_url: Option<&str>) -> Arc<dyn EventBus> {
    testing::bus("mesh-report", redis_url)
}

pub async fn start(target: DatabaseTarget, redis_url: Option<&str>) -> Mesh {
    let auth = TestAuth::start(
        &testing::sqlite(),
        testing::service_client("order", "order-secret"),
    )
    .await;
    let db = testing::database("report", &target, &mesh_report::MIGRATIONS).await;
    let bus = bus(redis_url);
    let served = testing::start(
        "report",
        BTreeMap::from([("auth", auth.uri())]),
        &db,
        &bus,
        mesh_report::build_with,
    )
    .await;
    let admin = auth.admin_token().await;
    let service = auth.service_token("order", "order-secret").await;
    let customer = auth.customer_token().await;
    Mesh {
        auth,
        db,
        bus,
        addr: served.addr,
        shutdown: served.shutdown,
        admin,
        service,
        customer,
    }
}

impl Mesh {
    pub async fn client(&self) -> ReportServiceClient<Channel> {
        ReportServiceClient::new(testing::channel(self.addr).await)
    }

    pub fn stop(&self) {
        self.shutdown.cancel();
        self.auth.shutdown.cancel();
    }

    /// Publishes an event at `time_us` (microseconds since the epoch); returns its id.
    pub async fn publish_at(
        &self,
        time_us: i64,
        event_type: &str,
        subject: &str,
        name: &str,
        msg: &impl prost::Message,
    ) -> String {
        let mut envelope = testing::envelope(event_type, subject, name, msg);
        envelope.time = Some(prost_types::Timestamp {
            seconds: time_us.div_euclid(1_000_000),
            nanos: i32::try_from(time_us.rem_euclid(1_000_000) * 1000).unwrap(),
        });
        testing::publish(self.bus.as_ref(), &envelope).await;
        envelope.id
    }

    /// Publishes the same envelope (same id) again, as a redelivery would.
    pub async fn publish_envelope(&self, envelope: &mesh_contracts::events::v1::Envelope) {
        testing::publish(self.bus.as_ref(), envelope).await;
    }
}

pub fn eur(amount_minor: i64) -> Option<Money> {
    Some(Money {
        currency_code: "EUR".into(),
        amount_minor,
    })
}

pub fn usd(amount_minor: i64) -> Option<Money> {
    Some(Money {
        currency_code: "USD".into(),
        amount_minor,
    })
}
