//! Shared test harness: a payment service over real gRPC with a real auth service, on SQLite +
//! the in-process bus or Postgres (+ Redis), and helpers to publish saga events and look at the
//! outbox.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_contracts::events::v1::Envelope;
use mesh_contracts::payment::v1::payment_service_client::PaymentServiceClient;
use mesh_payment::provider::PaymentProvider;
use mesh_payment::{PaymentOptions, PaymentSettings};
use mesh_runtime::Database;
use mesh_runtime::bus::EventBus;
use mesh_runtime::config::DatabaseTarget;
use mesh_runtime::retry_policy::RetryPolicy;
use mesh_testkit::{self as testing, TestAuth};
use sqlx::Row as _;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub struct Mesh {
    pub auth: TestAuth,
    pub db: Database,
    pub bus: Arc<dyn EventBus>,
    pub service: String,
    pub admin: String,
    pub customer: String,
    pub instance: Instance,
}

pub struct Instance {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
}

/// Settings that keep tests fast.
pub fn settings() -> PaymentSettings {
    PaymentSettings {
        provider_timeout: Duration::from_millis(400),
        retry: RetryPolicy {
            max_attempts: 3,
            retry_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_secs(5),
            poll_interval: Duration::from_millis(50),
        },
        slow_card_delay: Duration::from_millis(150),
    }
}

pub async fn start_instance(
    auth: &TestAuth,
    db: &Database,
    bus: &Arc<dyn EventBus>,
    provider: Option<Arc<dyn PaymentProvider>>,
) -> Instance {
    let served = testing::start(
        "payment",
        BTreeMap::from([("auth", auth.uri())]),
        db,
        bus,
        |ctx| {
            mesh_payment::build_with(
                ctx,
                PaymentOptions {
                    settings: settings(),
                    provider,
                },
            )
        },
    )
    .await;
    Instance {
        addr: served.addr,
        shutdown: served.shutdown,
    }
}

/// The bus: in-process with SQLite; Redis (a fresh namespace) when `redis_url` is given.
pub fn bus(redis_url: Option<&str>) -> Arc<dyn EventBus> {
    testing::bus("mesh-pay", redis_url)
}

pub async fn start(target: DatabaseTarget, redis_url: Option<&str>) -> Mesh {
    start_with(target, redis_url, |_| None).await
}

/// Like [`start`], with the provider `provider` makes over the service's database.
pub async fn start_with(
    target: DatabaseTarget,
    redis_url: Option<&str>,
    provider: impl FnOnce(&Database) -> Option<Arc<dyn PaymentProvider>>,
) -> Mesh {
    let auth = TestAuth::start(
        &testing::sqlite(),
        testing::service_client("vm", "vm-secret"),
    )
    .await;
    let db = testing::database("payment", &target, &mesh_payment::MIGRATIONS).await;
    let bus = bus(redis_url);
    let instance = start_instance(&auth, &db, &bus, provider(&db)).await;
    let admin = auth.admin_token().await;
    let customer = auth.customer_token().await;
    let service = auth.service_token("vm", "vm-secret").await;
    Mesh {
        auth,
        db,
        bus,
        service,
        admin,
        customer,
        instance,
    }
}

impl Mesh {
    pub async fn client(&self) -> PaymentServiceClient<Channel> {
        PaymentServiceClient::new(testing::channel(self.instance.addr).await)
    }

    pub fn stop(&self) {
        self.instance.shutdown.cancel();
        self.auth.shutdown.cancel();
    }

    /// Publishes an event as its producer's relay would.
    pub async fn publish(
        &self,
        event_type: &str,
        subject: &str,
        name: &str,
        msg: &impl prost::Message,
    ) -> String {
        let id = uuid::Uuid::now_v7().to_string();
        self.publish_with_id(&id, event_type, subject, name, msg)
            .await;
        id
    }

    pub async fn publish_with_id(
        &self,
        id: &str,
        event_type: &str,
        subject: &str,
        name: &str,
        msg: &impl prost::Message,
    ) {
        testing::publish_with_id(self.bus.as_ref(), id, event_type, subject, name, msg).await;
    }

    /// The events payment emitted of `event_type` for order `order_id` (by correlation id).
    pub async fn emitted(&self, event_type: &str, order_id: &str) -> Vec<Envelope> {
        testing::outbox::envelopes(&self.db, event_type)
            .await
            .into_iter()
            .filter(|e| e.correlation_id == order_id)
            .collect()
    }

    /// Ledger rows of `order_id`: (kind, amount, status).
    pub async fn ledger(&self, order_id: &str) -> Vec<(String, i64, String)> {
        sqlx::query("SELECT kind, amount_minor, status FROM transactions WHERE order_id = $1 ORDER BY created_at, id")
            .bind(order_id)
            .fetch_all(self.db.pool())
            .await
            .expect("ledger")
            .iter()
            .map(|r| (r.get("kind"), r.get("amount_minor"), r.get("status")))
            .collect()
    }

    /// Captures the simulated processor made for `order_id` (its idempotency key).
    pub async fn processor_charges(&self, order_id: &str) -> i64 {
        sqlx::query("SELECT COUNT(*) AS n FROM sim_processor_ops WHERE idempotency_key = $1 AND kind = 'charge' AND outcome = 'done'")
            .bind(order_id)
            .fetch_one(self.db.pool())
            .await
            .expect("ops")
            .get("n")
    }

    /// The payment status of `order_id`, if it has one.
    pub async fn status(&self, order_id: &str) -> Option<String> {
        sqlx::query("SELECT status FROM payments WHERE order_id = $1")
            .bind(order_id)
            .fetch_optional(self.db.pool())
            .await
            .expect("payment")
            .map(|r| r.get("status"))
    }
}
