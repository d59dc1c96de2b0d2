//! A mesh of separate `mesh serve <service>` processes (the real binary) on a fresh Postgres
//! database and a Redis server of its own (AOF on, fsync always, in a temporary folder), with
//! SIGKILL and restart of any service or of Redis. Used by the fault tests (the saga's and the
//! refund path's).

#![allow(dead_code, unreachable_pub)]

use mesh_runtime::config::env_prefix;
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::Connection as _;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// The `mesh` binary under test.
pub const MESH: &str = env!("CARGO_BIN_EXE_mesh");

/// A free loopback port below the kernel's ephemeral range (bound and released; the process
/// binds it right after). Below that range because a killed service is restarted on the same
/// port: a port from the range (what binding port 0 gives) can meanwhile become the source port
/// of some outgoing connection, and the restart then fails with "address in use" (seen in CI:
/// notification's restart, after a kill, found its port taken).
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher as _, Hasher as _};
    // Linux's default ephemeral range starts at 32768; 20000..32000 is outside it.
    const LOW: u64 = 20_000;
    const SPAN: u64 = 12_000;
    for attempt in 0u64.. {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(attempt);
        hasher.write_u32(std::process::id());
        let port = (LOW + hasher.finish() % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
        assert!(attempt < 10_000, "no free port in 20000..32000");
    }
    unreachable!("the loop returns or panics")
}

/// A fresh Postgres database for one run, dropped at the end.
pub struct FreshDatabase {
    /// Its URL.
    pub url: String,
    admin_url: String,
    name: String,
}

impl FreshDatabase {
    /// Creates `mesh_<tag>_<uuid>` next to the database of `base_url`.
    pub async fn create(base_url: &str, tag: &str) -> Self {
        let name = format!("mesh_{tag}_{}", uuid::Uuid::now_v7().simple());
        let (prefix, _) = base_url
            .rsplit_once('/')
            .expect("a database URL such as postgres://user@host:5432/postgres");
        let mut conn = sqlx::PgConnection::connect(base_url)
            .await
            .expect("connect to MESH_TEST_DATABASE_URL");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create the test database");
        Self {
            url: format!("{prefix}/{name}"),
            admin_url: base_url.to_string(),
            name,
        }
    }

    /// Drops it (connections are terminated).
    pub async fn drop_now(&self) {
        if let Ok(mut conn) = sqlx::PgConnection::connect(&self.admin_url).await {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )))
            .execute(&mut conn)
            .await;
        }
    }
}

/// A Redis server of the test's own, persistent across its restarts.
pub struct Redis {
    /// Its port.
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Redis {
    /// Starts `redis-server` on a free port with AOF (`appendfsync always`) in `dir`.
    pub fn start(dir: &Path) -> Self {
        let mut r = Self {
            port: free_port(),
            dir: dir.to_path_buf(),
            child: None,
        };
        r.spawn();
        r
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.join("redis.log")).expect("redis log");
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--dir",
            ])
            .arg(&self.dir)
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts (is it installed?)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One `mesh serve <name>` process.
struct Proc {
    child: Option<Child>,
    starts: usize,
}

/// The mesh: one process per service.
pub struct Cluster {
    /// gRPC port of every service.
    pub ports: BTreeMap<&'static str, u16>,
    env: Vec<(String, String)>,
    procs: BTreeMap<&'static str, Proc>,
    logs: PathBuf,
}

impl Cluster {
    /// Starts `services` as separate processes with `env` (plus the ports and peer addresses).
    pub async fn start(services: &[&'static str], env: Vec<(String, String)>, logs: &Path) -> Self {
        let ports: BTreeMap<&'static str, u16> =
            services.iter().map(|s| (*s, free_port())).collect();
        let mut c = Self {
            ports,
            env,
            procs: BTreeMap::new(),
            logs: logs.to_path_buf(),
        };
        for s in services {
            c.spawn(s);
        }
        for s in services {
            c.wait_serving(s).await;
        }
        c
    }

    fn spawn(&mut self, name: &'static str) {
        self.spawn_with(name, &[]);
    }

    fn spawn_with(&mut self, name: &'static str, extra: &[(&str, &str)]) {
        let starts = self.procs.get(name).map_or(0, |p| p.starts) + 1;
        let log = std::fs::File::create(self.logs.join(format!("{name}.{starts}.log")))
            .expect("log file");
        let mut cmd = Command::new(MESH);
        cmd.args(["serve", name])
            .env("MESH_ADMIN_PORT", "0")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        for (peer, port) in &self.ports {
            cmd.env(
                format!("{}_ADDR", env_prefix(peer)),
                format!("http://127.0.0.1:{port}"),
            );
        }
        cmd.env(
            format!("{}_PORT", env_prefix(name)),
            self.ports[name].to_string(),
        );
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("mesh serve starts");
        self.procs.insert(
            name,
            Proc {
                child: Some(child),
                starts,
            },
        );
    }

    /// A channel to `name`.
    pub async fn channel(&self, name: &str) -> Channel {
        Channel::from_shared(format!("http://127.0.0.1:{}", self.ports[name]))
            .expect("uri")
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .connect_lazy()
    }

    /// Waits (bounded) until `name` answers its health check with SERVING.
    pub async fn wait_serving(&self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = async {
                let channel =
                    Channel::from_shared(format!("http://127.0.0.1:{}", self.ports[name]))
                        .ok()?
                        .connect()
                        .await
                        .ok()?;
                let status = HealthClient::new(channel)
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .ok()?
                    .into_inner()
                    .status;
                (status == 1).then_some(())
            }
            .await;
            if ok.is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} is not serving; see its log in {}",
                self.logs.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILLs `name`.
    pub fn kill(&mut self, name: &str) {
        if let Some(p) = self.procs.get_mut(name)
            && let Some(mut c) = p.child.take()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts `name` again (after [`kill`](Self::kill)) and waits until it serves.
    pub async fn restart(&mut self, name: &'static str) {
        self.kill(name);
        self.spawn(name);
        self.wait_serving(name).await;
    }

    /// Starts `name` again with `extra` environment for this start only (e.g. a fault switch)
    /// and waits until it serves.
    pub async fn restart_with(&mut self, name: &'static str, extra: &[(&str, &str)]) {
        self.kill(name);
        self.spawn_with(name, extra);
        self.wait_serving(name).await;
    }

    /// Waits up to `within` for `name` to exit on its own; whether it did.
    pub async fn wait_exit(&mut self, name: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if let Some(p) = self.procs.get_mut(name)
                && let Some(c) = p.child.as_mut()
                && let Ok(Some(_)) = c.try_wait()
            {
                p.child = None;
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether every process is still running (none exited on its own).
    pub fn all_running(&mut self) -> Vec<String> {
        let mut dead = Vec::new();
        for (name, p) in &mut self.procs {
            if let Some(c) = p.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                dead.push(format!("{name} exited: {status}"));
            }
        }
        dead
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in self.procs.values_mut() {
            if let Some(mut c) = p.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// The folders of one fault run: a fresh temporary folder, kept after the run (the caller
/// removes it after a pass) for the processes' logs, and its `logs` and `redis` folders, both
/// created: (work, logs, redis).
pub fn work_folders() -> (PathBuf, PathBuf, PathBuf) {
    let work = tempfile::tempdir().expect("temp dir").keep();
    let logs = work.join("logs");
    std::fs::create_dir_all(&logs).expect("logs dir");
    let redis_dir = work.join("redis");
    std::fs::create_dir_all(&redis_dir).expect("redis dir");
    (work, logs, redis_dir)
}

/// The settings every process of a fault run gets: its database and Redis, the service
/// clients' secret, `admin` as the bootstrap admin, 50 deliveries before a dead letter, and
/// warnings only in the logs.
pub fn fault_env(database_url: &str, redis_url: String, admin: &str) -> Vec<(String, String)> {
    vec![
        ("MESH_DATABASE_URL".to_string(), database_url.to_string()),
        ("MESH_REDIS_URL".into(), redis_url),
        ("MESH_SERVICE_CLIENT_SECRET".into(), "fault-secret".into()),
        ("MESH_AUTH_BOOTSTRAP_ADMIN_EMAIL".into(), admin.into()),
        ("MESH_EVENT_MAX_DELIVERIES".into(), "50".into()),
        ("MESH_LOG".into(), "warn".into()),
    ]
}

/// The services of the order saga and its refunds (campaign left out: order then prices at list
/// price).
pub const SAGA_SERVICES: &[&str] = &[
    "auth",
    "user",
    "product",
    "inventory",
    "payment",
    "notification",
    "order",
];

/// An order request without lines and key, shipped to a test address and paid with the raw
/// card `card` (fill in `idempotency_key` and `lines`).
pub fn order_request(card: &str) -> mesh_contracts::order::v1::PlaceOrderRequest {
    mesh_contracts::order::v1::PlaceOrderRequest {
        shipping_address: Some(mesh_contracts::common::v1::PostalAddress {
            recipient_name: "Fault Tester".into(),
            address_lines: vec!["1 Chaos Road".into()],
            region_code: "DE".into(),
            ..Default::default()
        }),
        payment_method: mesh_testkit::walkthrough::card(card, "Fault Tester"),
        ..Default::default()
    }
}

/// The password of the accounts [`sign_up`] makes.
pub const PASSWORD: &str = mesh_testkit::PASSWORD;

/// Signs `email` up at the cluster's auth: its access token and account id.
pub async fn sign_up(c: &Cluster, email: &str) -> (String, String) {
    let r = mesh_testkit::sign_up(c.channel("auth").await, email).await;
    let tokens = r.tokens.expect("tokens");
    let account = r.account.map(|a| a.id).unwrap_or_default();
    (tokens.access_token, account)
}

/// Whether a call that failed with `code` may succeed when made again (a process down or
/// restarting), as opposed to a refusal.
pub fn retryable(code: tonic::Code) -> bool {
    use tonic::Code;
    !matches!(
        code,
        Code::InvalidArgument
            | Code::NotFound
            | Code::FailedPrecondition
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::Unauthenticated
    )
}
