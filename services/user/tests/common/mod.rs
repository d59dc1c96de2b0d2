//! Shared test harness: the user service and the auth service over real gRPC on one bus (so
//! auth's `user.registered` creates profiles), on SQLite + the in-process bus or Postgres +
//! Redis.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use mesh_auth::AuthSettings;
use mesh_contracts::events::v1::Envelope;
use mesh_contracts::user::v1::user_service_client::UserServiceClient;
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
}

/// The bus: in-process with SQLite; Redis (a fresh namespace) when `redis_url` is given.
pub fn bus(redis_url: Option<&str>) -> Arc<dyn EventBus> {
    testing::bus("mesh-user", redis_url)
}

/// Auth on `auth_target` and user on `target` (each service its own database), one bus.
pub async fn start(
    auth_target: DatabaseTarget,
    target: DatabaseTarget,
    redis_url: Option<&str>,
) -> Mesh {
    let bus = bus(redis_url);
    let auth = TestAuth::start_on(&auth_target, AuthSettings::default(), bus.clone()).await;
    let db = testing::database("user", &target, &mesh_user::MIGRATIONS).await;
    let served = testing::start(
        "user",
        BTreeMap::from([("auth", auth.uri())]),
        &db,
        &bus,
        mesh_user::build_with,
    )
    .await;
    let admin = auth.admin_token().await;
    Mesh {
        auth,
        db,
        bus,
        addr: served.addr,
        shutdown: served.shutdown,
        admin,
    }
}

impl Mesh {
    pub async fn client(&self) -> UserServiceClient<Channel> {
        UserServiceClient::new(testing::channel(self.addr).await)
    }

    pub fn stop(&self) {
        self.shutdown.cancel();
        self.auth.shutdown.cancel();
    }

    /// Signs up `email`; returns (account id, access token).
    pub async fn sign_up(&self, email: &str) -> (String, String) {
        let r = self.auth.sign_up(email).await;
        (
            r.account.expect("account").id,
            r.tokens.expect("tokens").access_token,
        )
    }

    /// The envelopes of `event_type` user emitted for `subject`.
    pub async fn emitted(&self, event_type: &str, subject: &str) -> Vec<Envelope> {
        testing::outbox::envelopes(&self.db, event_type)
            .await
            .into_iter()
            .filter(|e| e.subject == subject)
            .collect()
    }

    /// Publishes `envelope` and waits until user's consumer handled it.
    pub async fn deliver(&self, envelope: &Envelope) {
        testing::deliver(self.bus.as_ref(), &self.db, "user", envelope).await;
    }
}
