//! Readiness follows the database: a service whose Postgres cannot be reached is reported not
//! ready (with the cause) by the supervisor's periodic check, and ready again when it returns.
//! The outage is a TCP proxy in front of the shared Postgres that this test cuts and restores
//! (never the shared server itself).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_runtime::Readiness;
use mesh_runtime::config::DatabaseTarget;
use mesh_runtime::lifecycle::{Supervisor, SupervisorOptions};
use mesh_runtime::storage::Database;
use mesh_testkit::eventually_within;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

/// A TCP proxy to `upstream` that can be cut (open connections dropped, new ones refused).
struct Proxy {
    addr: std::net::SocketAddr,
    down: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl Proxy {
    async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(Vec::<AbortHandle>::new()));
        let accept = {
            let (down, connections) = (down.clone(), connections.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((mut client, _)) = listener.accept().await else {
                        continue;
                    };
                    if down.load(Ordering::SeqCst) {
                        continue;
                    }
                    let upstream = upstream.clone();
                    let task = tokio::spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(&upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    connections.lock().unwrap().push(task.abort_handle());
                }
            })
            .abort_handle()
        };
        Self {
            addr,
            down,
            connections,
            accept,
        }
    }

    fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        for c in self.connections.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

#[tokio::test]
async fn readiness_is_off_while_the_database_is_unreachable() {
    let Some(url) = mesh_testkit::postgres_url("database readiness") else {
        return;
    };
    // postgres://user@host:port/db -> the same through the proxy.
    let (scheme_user, rest) = url.split_once('@').expect("url with a user");
    let (upstream, db) = rest.split_once('/').expect("url with a database");
    let proxy = Proxy::start(upstream.to_string()).await;
    let proxied = format!("{scheme_user}@{}/{db}", proxy.addr);
    let schema = format!("readiness_{}", uuid::Uuid::now_v7().simple());
    let database = Database::connect(
        "svc",
        &DatabaseTarget::Postgres {
            url: proxied,
            schema,
        },
    )
    .await
    .expect("connects through the proxy");

    let readiness = Readiness::new();
    readiness.set("svc", true);
    let shutdown = CancellationToken::new();
    let supervisor = Supervisor::with_options(
        readiness.clone(),
        shutdown.clone(),
        SupervisorOptions {
            database_check_every: Duration::from_millis(100),
            database_check_timeout: Duration::from_millis(500),
            ..SupervisorOptions::default()
        },
    );
    supervisor.watch_database("svc", database.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(readiness.is_ready(), "{:?}", readiness.problems());

    proxy.cut();
    eventually_within(
        Duration::from_secs(5),
        "not ready during the outage",
        || {
            let ok = readiness.service_ok("svc");
            async move { !ok }
        },
    )
    .await;
    let cause = readiness.problems()["svc"]["database"].clone();
    assert!(cause.contains("database"), "{cause}");

    proxy.restore();
    eventually_within(Duration::from_secs(10), "ready once it returns", || {
        let ready = readiness.is_ready();
        async move { ready }
    })
    .await;

    shutdown.cancel();
    supervisor.drain(Duration::from_secs(2)).await;
}
