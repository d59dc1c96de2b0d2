//! Inventory's test harness: the service over real gRPC sockets on loopback, with a real auth
//! service issuing the tokens (a service token for reservations, the admin for adjustments).

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_contracts::inventory::v1::inventory_service_client::InventoryServiceClient;
use mesh_inventory::InventoryOptions;
use mesh_runtime::Database;
use mesh_runtime::auth::ManualClock;
use mesh_runtime::config::DatabaseTarget;
use mesh_testkit::{self as testing, TestAuth};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// Inventory serving on loopback with a real auth service and the tokens its callers use.
pub struct Mesh {
    /// The auth service issuing the tokens.
    pub auth: TestAuth,
    /// Inventory's gRPC address.
    pub addr: SocketAddr,
    /// Inventory's database.
    pub db: Database,
    /// The clock reservations expire by (moved by the test).
    pub clock: ManualClock,
    /// An admin token.
    pub admin: String,
    /// A service token of `order` (reservations).
    pub service: String,
    /// A customer token.
    pub customer: String,
    /// Inventory's bus (tests publish other services' events on it).
    pub bus: Arc<dyn mesh_runtime::bus::EventBus>,
    /// Stops inventory.
    pub shutdown: CancellationToken,
}

/// Inventory on `target` (migrated to the newest schema at start), its sweeper every 20 ms on a
/// manual clock.
pub async fn start(target: DatabaseTarget) -> Mesh {
    let auth = TestAuth::start(
        &testing::sqlite(),
        testing::service_client("order", "order-secret"),
    )
    .await;
    let db = testing::database("inventory", &target, &mesh_inventory::MIGRATIONS).await;
    let bus = testing::memory_bus();
    let clock = ManualClock::new();
    let options = InventoryOptions {
        clock: Arc::new(clock.clone()),
        sweep_every: Duration::from_millis(20),
        ..InventoryOptions::default()
    };
    let testing::Served { addr, shutdown } = testing::start(
        "inventory",
        BTreeMap::from([("auth", auth.uri())]),
        &db,
        &bus,
        |ctx| mesh_inventory::build_with(ctx, options),
    )
    .await;
    let admin = auth.admin_token().await;
    let customer = auth.customer_token().await;
    let service = auth.service_token("order", "order-secret").await;
    Mesh {
        auth,
        addr,
        db,
        clock,
        admin,
        service,
        customer,
        bus,
        shutdown,
    }
}

/// A client of inventory at `addr`.
pub async fn client(addr: SocketAddr) -> InventoryServiceClient<Channel> {
    InventoryServiceClient::new(testing::channel(addr).await)
}
