//! Test support for this service's tests and those of services that need real tokens: a
//! database per test (SQLite always; Postgres when `MESH_TEST_DATABASE_URL` is set), a service
//! context, a service on a real socket, and a running auth service with a bootstrap admin.
//!
//! Not used by the binary.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use clap::Parser;
use mesh_contracts::auth::v1::auth_service_client::AuthServiceClient;
use mesh_contracts::auth::v1::{LoginRequest, SignUpRequest, SignUpResponse};
use mesh_runtime::bus::EventBus;
use mesh_runtime::bus::memory::MemoryBus;
use mesh_runtime::config::DatabaseTarget;
use mesh_runtime::relay::{Relay, RelayOptions};
use mesh_runtime::{
    Database, GrpcServer, MeshConfig, Metrics, Migrations, Module, RpcMetrics, RuntimeArgs,
    ServiceContext, ServiceRoutes, ServiceSpec,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::AuthSettings;

/// A name unique to this test run, e.g. for a schema or key prefix.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// A fresh SQLite file under the temporary directory.
pub fn sqlite() -> DatabaseTarget {
    DatabaseTarget::Sqlite {
        path: std::env::temp_dir()
            .join(unique("mesh-test"))
            .join("svc.db"),
    }
}

/// A fresh Postgres schema, or `None` (after a loud `SKIPPED:` line) without
/// `MESH_TEST_DATABASE_URL`.
pub fn postgres(test: &str) -> Option<DatabaseTarget> {
    match std::env::var("MESH_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(DatabaseTarget::Postgres {
            url,
            schema: unique("t"),
        }),
        _ => {
            eprintln!(
                "SKIPPED: {test} on Postgres: set MESH_TEST_DATABASE_URL (e.g. postgres://postgres@127.0.0.1:5432/postgres)"
            );
            None
        }
    }
}

/// The Redis URL for tests, or `None` (after a loud `SKIPPED:` line) without
/// `MESH_TEST_REDIS_URL`.
pub fn redis(test: &str) -> Option<String> {
    match std::env::var("MESH_TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!(
                "SKIPPED: {test} on Redis: set MESH_TEST_REDIS_URL (e.g. redis://127.0.0.1:6379)"
            );
            None
        }
    }
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: RuntimeArgs,
}

/// The default process configuration (as with no flags and no environment).
pub fn config() -> MeshConfig {
    let cli = Cli::parse_from(["mesh"]);
    let specs: Vec<ServiceSpec> = Vec::new();
    MeshConfig::from_args(&cli.args, &specs, |_| None).expect("default config is valid")
}

/// A service's database at `target`, migrated.
pub async fn database(name: &str, target: &DatabaseTarget, migrations: &Migrations) -> Database {
    let db = Database::connect(name, target).await.expect("connect");
    db.migrate(migrations).await.expect("migrate");
    db
}

/// A context for service `name` (depending on `auth`), with `peers` and its data.
pub fn context(
    name: &'static str,
    peers: BTreeMap<&'static str, http::Uri>,
    db: Database,
    bus: Arc<dyn EventBus>,
    shutdown: CancellationToken,
) -> ServiceContext {
    fn never(
        _: ServiceContext,
    ) -> futures::future::BoxFuture<'static, Result<ServiceRoutes, mesh_runtime::BuildError>> {
        Box::pin(async { Err("not used".into()) })
    }
    let module = Module {
        name,
        default_port: 0,
        dependencies: &["auth"],
        constructor: never,
        migrations: Migrations::NONE,
    };
    ServiceContext::new(
        &module,
        Arc::new(config()),
        Arc::new(peers),
        Metrics::new(),
        shutdown,
    )
    .with_data(db, bus)
}

/// A bus for one test.
pub fn memory_bus() -> Arc<dyn EventBus> {
    Arc::new(MemoryBus::new(Default::default()))
}

/// Serves `routes` on a fresh loopback port until `shutdown`, and relays `db`'s outbox to `bus`.
pub async fn serve(
    name: &str,
    routes: ServiceRoutes,
    db: Database,
    bus: Arc<dyn EventBus>,
    shutdown: CancellationToken,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = GrpcServer::new(name, routes, RpcMetrics::register(&Metrics::new()));
    let stop = shutdown.clone().cancelled_owned();
    tokio::spawn(async move {
        let _ = server.run(listener, stop).await;
    });
    tokio::spawn(Relay::new(db, bus, RelayOptions::default()).run(shutdown));
    addr
}

/// A gRPC channel to `addr`.
pub async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect")
}

/// A running auth service.
#[derive(Debug)]
pub struct TestAuth {
    /// Its address.
    pub addr: SocketAddr,
    /// Where its admin routes (the JWKS document) are served, as the admin port would.
    pub admin_addr: SocketAddr,
    /// Its database.
    pub db: Database,
    /// Stops it.
    pub shutdown: CancellationToken,
}

/// The email of the bootstrap admin of [`TestAuth`].
pub const ADMIN_EMAIL: &str = "admin@example.com";
/// The password of every account [`TestAuth`] creates.
pub const PASSWORD: &str = "correct horse battery";

impl TestAuth {
    /// Starts the auth service on `target` with `settings` (its bootstrap admin email set to
    /// [`ADMIN_EMAIL`]).
    pub async fn start(target: &DatabaseTarget, mut settings: AuthSettings) -> Self {
        settings.bootstrap_admin_email = Some(ADMIN_EMAIL.into());
        let db = database("auth", target, &crate::MIGRATIONS).await;
        let bus = memory_bus();
        let shutdown = CancellationToken::new();
        let ctx = context(
            "auth",
            BTreeMap::new(),
            db.clone(),
            bus.clone(),
            shutdown.clone(),
        );
        let mut routes = crate::build_with(ctx, settings).await.expect("build auth");
        let admin = routes.take_admin_routes().expect("auth adds admin routes");
        let admin_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let admin_addr = admin_listener.local_addr().expect("addr");
        let stop = shutdown.clone().cancelled_owned();
        tokio::spawn(mesh_runtime::admin::run(admin_listener, admin, stop));
        let addr = serve("auth", routes, db.clone(), bus, shutdown.clone()).await;
        Self {
            addr,
            admin_addr,
            db,
            shutdown,
        }
    }

    /// Its URI, for a peer map.
    pub fn uri(&self) -> http::Uri {
        format!("http://{}", self.addr).parse().expect("uri")
    }

    /// A client.
    pub async fn client(&self) -> AuthServiceClient<Channel> {
        AuthServiceClient::new(channel(self.addr).await)
    }

    /// Signs up `email` with [`PASSWORD`].
    pub async fn sign_up(&self, email: &str) -> SignUpResponse {
        self.client()
            .await
            .sign_up(SignUpRequest {
                email: email.into(),
                password: PASSWORD.into(),
                ..Default::default()
            })
            .await
            .expect("sign up")
            .into_inner()
    }

    /// An access token of the bootstrap admin (signed up on first use, logged in after).
    pub async fn admin_token(&self) -> String {
        let mut client = self.client().await;
        let login = client
            .login(LoginRequest {
                email: ADMIN_EMAIL.into(),
                password: PASSWORD.into(),
            })
            .await;
        let tokens = match login {
            Ok(r) => r.into_inner().tokens,
            Err(_) => self.sign_up(ADMIN_EMAIL).await.tokens,
        };
        tokens.expect("tokens").access_token
    }

    /// An access token of a fresh customer.
    pub async fn customer_token(&self) -> String {
        let email = format!("{}@example.com", unique("c"));
        self.sign_up(&email)
            .await
            .tokens
            .expect("tokens")
            .access_token
    }
}

/// `request` with `authorization: Bearer <token>`.
pub fn bearer<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii token"),
    );
    request
}
