//! `mesh serve <TARGETS>`: binds every target's gRPC port and the admin port, builds the services,
//! prints one `ready` line per listener, and serves until SIGTERM/SIGINT, then drains.
//!
//! [`start`] is the same mesh without the process concerns (telemetry, signals, printing): the
//! benchmarks run the real services in their own process through it.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use http::Uri;
use mesh_runtime::config::{DiscoveryMode, env_prefix};
use mesh_runtime::endpoint_slices::KubeClient;
use mesh_runtime::lifecycle::{Supervisor, Task};
use mesh_runtime::relay::{Relay, RelayOptions};
use mesh_runtime::settings::process_env;
use mesh_runtime::tls::{MeshTls, TlsSettings};
use mesh_runtime::{
    GrpcServer, MeshConfig, Metrics, Module, Readiness, RpcMetrics, RuntimeArgs, ServiceContext,
};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::modules::{MODULES, PUBLIC};
use crate::targets;

/// Runs the targets named by `targets` with the settings in `args`.
pub(crate) async fn run(targets_spec: &str, args: &RuntimeArgs) -> anyhow::Result<()> {
    let (config, targets) = targets::validate(targets_spec, args)?;
    let process_name = if targets.len() == MODULES.len() {
        "mesh".to_string()
    } else {
        targets.iter().map(|m| m.name).collect::<Vec<_>>().join(",")
    };
    let names: Vec<&str> = targets.iter().map(|m| m.name).collect();
    let _telemetry = mesh_runtime::telemetry::init(&config, &process_name, &names)?;
    let stop_signal = mesh_runtime::shutdown::signal().context("listening for SIGTERM/SIGINT")?;
    let mesh = start(Arc::new(config), &targets).await?;
    let tls = process_env(mesh_runtime::tls::settings::TLS_CERT.name).is_some();
    for (name, addr) in &mesh.grpc {
        let mtls = if tls && !PUBLIC.contains(name) {
            "  (mTLS)"
        } else {
            ""
        };
        println!("ready  {name:<13} grpc://{addr}{mtls}");
    }
    println!(
        "ready  {:<13} http://{}  (/metrics /healthz /readyz)",
        "admin", mesh.admin
    );
    tracing::info!(targets = %process_name, "mesh is serving");
    mesh.wait(stop_signal).await
}

/// A started mesh: its servers, and its services' supervised background tasks (relays,
/// consumers, work queues, database checks), running until [`Running::wait`]'s stop future
/// completes.
pub(crate) struct Running {
    /// Every target's gRPC address, in module-table order.
    pub(crate) grpc: Vec<(&'static str, SocketAddr)>,
    /// The admin port's address (`/metrics`, `/healthz`, `/readyz`).
    pub(crate) admin: SocketAddr,
    shutdown: CancellationToken,
    tasks: JoinSet<anyhow::Result<()>>,
    supervisor: Supervisor,
    grace: Duration,
}

/// Binds, migrates, builds and starts `targets` with `config`; returns once every server is
/// listening (answering calls; `/readyz` turns ready as each server starts).
pub(crate) async fn start(
    config: Arc<MeshConfig>,
    targets: &[&'static Module],
) -> anyhow::Result<Running> {
    // Bind everything first, so a taken port fails before anything starts, and so port 0
    // (any free port, for tests) is known before peers' addresses are computed.
    let mut listeners = Vec::new();
    for module in targets {
        let port = config.services[module.name].port;
        let addr = SocketAddr::new(config.host, port);
        let listener = TcpListener::bind(addr).await.with_context(|| {
            format!(
                "binding {}'s gRPC port {addr} (set by {}_PORT)",
                module.name,
                env_prefix(module.name)
            )
        })?;
        listeners.push((*module, listener));
    }
    let admin_addr = SocketAddr::new(config.host, config.admin_port);
    let admin_listener = TcpListener::bind(admin_addr).await.with_context(|| {
        format!("binding the admin port {admin_addr} (--admin-port / MESH_ADMIN_PORT)")
    })?;

    let bound: BTreeMap<&str, u16> = listeners
        .iter()
        .map(|(m, l)| Ok((m.name, l.local_addr()?.port())))
        .collect::<std::io::Result<_>>()?;
    let peers = Arc::new(peer_addresses(&config, &bound)?);
    let kube = match config.discovery.mode {
        DiscoveryMode::Dns => None,
        DiscoveryMode::Endpoints => Some(KubeClient::from_environment().await.context(
            "MESH_DISCOVERY=endpoints needs the Kubernetes API (in-cluster ServiceAccount or kubeconfig)",
        )?),
    };

    // Page tokens are keyed once per process, before any service hands one out.
    match &config.page_token_key {
        Some(key) => key
            .clone()
            .install()
            .context("installing MESH_PAGE_TOKEN_KEY")?,
        None => tracing::warn!(
            "MESH_PAGE_TOKEN_KEY is unset: page tokens use the built-in public key (checksummed, not secret); set the same random key on every replica"
        ),
    }
    let metrics = Metrics::new();
    let rpc_metrics = RpcMetrics::register(&metrics);
    let readiness = Readiness::new();
    let shutdown = CancellationToken::new();
    let tls = tls_material()?;
    let supervisor = Supervisor::new(readiness.clone(), shutdown.clone()).with_metrics(&metrics);
    // The runtime's helper tasks (DNS refresh, EndpointSlice watch, Redis probe and heartbeat)
    // count their restarts here and turn readiness off under `mesh` while one keeps failing.
    mesh_runtime::helper_task::report_to(readiness.clone(), &metrics);
    if let Some(tls) = &tls {
        // The process's certificate reload, supervised like a service's task (restarted after
        // a panic, `/readyz` naming it if it keeps failing) under the process's name.
        let tls = tls.clone();
        supervisor.start(
            "mesh",
            Task::new("tls-reload", move |stop| {
                let tls = tls.clone();
                async move {
                    tls.watch(stop).await;
                    Ok(())
                }
            }),
        );
    }

    // One bus per process; each service its own database, migrated, its outbox relayed.
    let (bus, bus_view) = crate::migrate::bus(&config)?;
    // The first service's token checker guards the admin port's `/bus` routes (auth's own keys
    // when auth is served here, else auth's JWKS).
    let mut bus_verifier: Option<mesh_runtime::auth::Verifier> = None;
    let mut admin_router = mesh_runtime::admin::router(metrics.clone(), readiness.clone());
    let mut servers = Vec::new();
    for (module, listener) in listeners {
        let db = crate::migrate::open_and_migrate(&config, module).await?;
        let ctx = ServiceContext::new(
            module,
            config.clone(),
            peers.clone(),
            metrics.clone(),
            shutdown.clone(),
        )
        .with_data(db.clone(), bus.clone())
        .with_supervisor(supervisor.clone());
        let ctx = match &kube {
            Some(kube) => ctx.with_kube(kube.clone()),
            None => ctx,
        };
        let ctx = match &tls {
            Some(tls) => ctx.with_tls(tls.clone()),
            None => ctx,
        };
        let mut routes = (module.constructor)(ctx.clone())
            .await
            .map_err(|e| anyhow::anyhow!("building the {} service: {e}", module.name))?;
        // Every service answers for its audit trail, from its own outbox, to callers allowed
        // to read it (`mesh_runtime::audit_access`); auth with its own keys.
        let verifier = routes.take_extension::<mesh_runtime::auth::Verifier>();
        if bus_verifier.is_none() || verifier.is_some() {
            bus_verifier = Some(match &verifier {
                Some(v) => v.clone(),
                None => mesh_runtime::auth::Verifier::new(
                    Arc::new(mesh_runtime::auth::JwksClient::new(
                        ctx.auth_channel().map_err(|e| {
                            anyhow::anyhow!("the admin port's bus routes need auth: {e}")
                        })?,
                    )),
                    mesh_runtime::auth::VerifierSettings::from_env(),
                ),
            });
        }
        let audit = mesh_runtime::audit::guarded(&ctx, db.clone(), verifier)
            .map_err(|e| anyhow::anyhow!("building the {} audit trail: {e}", module.name))?;
        let mut routes = routes.add_service(audit);
        if let Some(extra) = routes.take_admin_routes() {
            admin_router = admin_router.merge(extra);
        }
        let relay = Relay::new(
            db.clone(),
            bus.clone(),
            RelayOptions {
                retention: config.events.outbox_retention,
                sweep_after: config.events.outbox_sweep_after,
                // Redelivery ends with the stream's retention; a day's margin beyond it.
                handled_retention: config.events.retention + Duration::from_secs(24 * 3600),
                ..RelayOptions::default()
            },
        )
        .with_metrics(&metrics);
        supervisor.start(
            module.name,
            Task::new("outbox-relay", move |stop| {
                let relay = relay.clone();
                async move {
                    relay.run(stop).await;
                    Ok(())
                }
            }),
        );
        supervisor.watch_database(module.name, db.clone());
        readiness.set(module.name, false);
        servers.push((module, listener, routes));
    }
    if let Some(verifier) = bus_verifier {
        admin_router = admin_router.merge(mesh_runtime::bus_admin::router(bus_view, verifier));
    }

    let mut tasks = JoinSet::new();
    let mut grpc = Vec::new();
    for (module, listener, routes) in servers {
        grpc.push((module.name, listener.local_addr()?));
        let server = GrpcServer::new(module.name, routes, rpc_metrics.clone())
            .readiness(readiness.clone())
            .grace(config.shutdown_grace);
        let server = match &tls {
            Some(tls) if !PUBLIC.contains(&module.name) => server.tls(tls.clone()),
            _ => server,
        };
        let stop = shutdown.clone().cancelled_owned();
        tasks.spawn(async move {
            server
                .run(listener, stop)
                .await
                .map_err(anyhow::Error::from)
        });
    }
    let admin = admin_listener.local_addr()?;
    {
        let stop = shutdown.clone().cancelled_owned();
        tasks.spawn(async move {
            mesh_runtime::admin::run(admin_listener, admin_router, stop)
                .await
                .context("admin server")
        });
    }
    Ok(Running {
        grpc,
        admin,
        shutdown,
        tasks,
        supervisor,
        grace: config.shutdown_grace,
    })
}

/// The process's mTLS material when `MESH_TLS_*` turn it on (checked before, by
/// [`targets::validate`]); its files are re-read every `MESH_TLS_RELOAD` while the mesh runs.
fn tls_material() -> anyhow::Result<Option<MeshTls>> {
    match TlsSettings::from_env(process_env) {
        Ok(None) => Ok(None),
        Ok(Some(settings)) => Ok(Some(MeshTls::load(settings)?)),
        Err(problems) => bail!(
            "{}",
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }
}

impl Running {
    /// Serves until `stop` completes (or a server fails), then drains every server and the
    /// background tasks (within the grace period); the first failure is the error.
    pub(crate) async fn wait(mut self, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
        let mut failure = None;
        tokio::select! {
            () = stop => {}
            Some(joined) = self.tasks.join_next() => {
                failure = Some(match joined {
                    Ok(Ok(())) => anyhow::anyhow!("a server stopped on its own"),
                    Ok(Err(e)) => e,
                    Err(e) => anyhow::anyhow!("a server task panicked: {e}"),
                });
            }
        }
        self.shutdown.cancel();
        // Servers and background tasks drain together, each within the grace period.
        let servers = async {
            while let Some(joined) = self.tasks.join_next().await {
                match joined {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::error!(error = %format!("{e:#}"), "server stopped with an error");
                        failure.get_or_insert(e);
                    }
                    Err(e) => {
                        failure.get_or_insert(anyhow::anyhow!("a server task panicked: {e}"));
                    }
                }
            }
        };
        // What ignores shutdown is aborted (and logged by name) after the grace period, so
        // it cannot keep the process alive.
        tokio::join!(servers, self.supervisor.drain(self.grace));
        match failure {
            Some(e) => Err(e),
            None => {
                tracing::info!("all servers stopped");
                Ok(())
            }
        }
    }

    /// The gRPC address of `target`, if this mesh runs it.
    pub(crate) fn addr(&self, target: &str) -> Option<SocketAddr> {
        self.grpc
            .iter()
            .find(|(n, _)| *n == target)
            .map(|(_, a)| *a)
    }
}

/// The address every service is reached at: its `MESH_<SERVICE>_ADDR` when set; otherwise this
/// host at the port it is bound to here, or its configured port when another process runs it.
fn peer_addresses(
    config: &MeshConfig,
    bound: &BTreeMap<&str, u16>,
) -> anyhow::Result<BTreeMap<&'static str, Uri>> {
    let host = match config.host {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let mut peers = BTreeMap::new();
    for (name, endpoint) in &config.services {
        let uri = match &endpoint.addr {
            Some(addr) => addr.clone(),
            None => {
                let port = bound.get(name).copied().unwrap_or(endpoint.port);
                if port == 0 {
                    bail!(
                        "{name} is not served by this process and has port 0; set {}_ADDR",
                        env_prefix(name)
                    );
                }
                format!("http://{}", SocketAddr::new(host, port)).parse()?
            }
        };
        peers.insert(*name, uri);
    }
    Ok(peers)
}

/// The module names, for `--help`.
pub(crate) fn target_names() -> String {
    MODULES
        .iter()
        .map(|m: &Module| m.name)
        .collect::<Vec<_>>()
        .join(", ")
}
