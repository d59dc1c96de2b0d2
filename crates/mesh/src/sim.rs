//! `mesh sim devices`: connects N simulated vending machines to the IoT gateway (or to the edge,
//! which proxies the same gRPC), answers their commands, injects faults into a share of them,
//! sends dispense commands at a fixed rate and measures their round trip (SendCommand until the
//! device's ack), printing a progress line every second and a summary at the end. With
//! `--gateway-pid` it also reports the gateway process's RSS before and after connecting, and
//! the memory per connected device (docs/BENCHMARKS.md).
//!
//! Device streams are multiplexed: `--streams-per-connection` devices (default 100) share one
//! HTTP/2 connection, each its own bidirectional stream. 10,000 devices then need 100 sockets
//! (no `ulimit -n` change), and the gateway's per-device cost measured is the stream's, which is
//! what grows with the fleet (a fleet of real machines adds one TCP connection each, a few KiB
//! of kernel and HTTP/2 connection state on top).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand, ValueEnum};
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use mesh_contracts::auth::v1::auth_service_client::AuthServiceClient;
use mesh_contracts::auth::v1::{LoginRequest, SignUpRequest};
use mesh_contracts::iot::v1::command::Action;
use mesh_contracts::iot::v1::gateway_service_client::GatewayServiceClient;
use mesh_contracts::iot::v1::{Command, CommandResult, Dispense, SendCommandRequest};
use mesh_contracts::shop::v1::shop_service_client::ShopServiceClient;
use mesh_contracts::shop::v1::{CreateStoreRequest, Machine, RegisterMachineRequest, Store};
use mesh_iot_gateway::simulator::{Connection, SimDevice, device_tokens};
use tokio::sync::Mutex;
use tonic::transport::{Channel, Endpoint};

/// `mesh sim ...`.
#[derive(Debug, Args)]
pub(crate) struct SimArgs {
    #[command(subcommand)]
    what: SimCommand,
}

#[derive(Debug, Subcommand)]
enum SimCommand {
    /// Simulated vending machines on the IoT gateway.
    Devices(DevicesArgs),
}

/// A fault injected into a share of the devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Fault {
    /// Run commands but never acknowledge them (SendCommand times out).
    DropAcks,
    /// Drop the connection every few seconds and reconnect (resume redelivers un-acked
    /// commands).
    Offline,
    /// Every dispense from slot A1 jams.
    JamSlot,
}

#[derive(Debug, Args)]
struct DevicesArgs {
    /// Devices to connect.
    #[arg(long, default_value_t = 100)]
    count: usize,
    /// How long to run after every device connected.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// The gateway (or the edge), host:port or URL.
    #[arg(long, default_value = "127.0.0.1:50061")]
    target: String,
    /// The auth service, for device credentials.
    #[arg(long, default_value = "127.0.0.1:50051")]
    auth: String,
    /// The shop service, with --register.
    #[arg(long, default_value = "127.0.0.1:50057")]
    shop: String,
    /// A staff or admin access token (issues device credentials, sends commands).
    #[arg(long, env = "MESH_SIM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Or log in as this staff or admin account (signed up when it does not exist: the
    /// bootstrap admin of a fresh mesh).
    #[arg(long, env = "MESH_SIM_EMAIL")]
    email: Option<String>,
    /// Its password.
    #[arg(long, env = "MESH_SIM_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Register the devices in shop first (store `sim`), so shop records their status.
    #[arg(long)]
    register: bool,
    /// Device ids are this prefix and a number.
    #[arg(long, default_value = "sim-")]
    prefix: String,
    /// Faults to inject (repeatable).
    #[arg(long, value_enum)]
    fault: Vec<Fault>,
    /// Share of the devices that show the faults (0 to 1).
    #[arg(long, default_value_t = 0.1)]
    fault_share: f64,
    /// Dispense commands per second, spread over the devices (0: none).
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Commands in flight at most (the gateway's load shedder refuses calls beyond 32 in flight
    /// until it has measured its capacity).
    #[arg(long, default_value_t = 24)]
    concurrency: usize,
    /// Each command's ack timeout.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    ack_timeout: Duration,
    /// Devices sharing one HTTP/2 connection.
    #[arg(long, default_value_t = 100)]
    streams_per_connection: usize,
    /// The gateway's process id, to report its memory per connected device.
    #[arg(long)]
    gateway_pid: Option<u32>,
}

/// Runs a `mesh sim` command.
pub(crate) async fn run(args: SimArgs) -> anyhow::Result<()> {
    match args.what {
        SimCommand::Devices(a) => devices(a).await,
    }
}

fn url(target: &str) -> String {
    if target.contains("://") {
        target.to_string()
    } else {
        format!("http://{target}")
    }
}

async fn channel(target: &str) -> anyhow::Result<Channel> {
    Endpoint::from_shared(url(target))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connecting to {target}"))
}

/// The RSS of process `pid` in bytes (Linux `/proc`).
fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn bearer<T>(token: &str, message: T) -> anyhow::Result<tonic::Request<T>> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(r)
}

async fn staff_token(a: &DevicesArgs) -> anyhow::Result<String> {
    if let Some(t) = &a.token {
        return Ok(t.clone());
    }
    let (Some(email), Some(password)) = (&a.email, &a.password) else {
        bail!(
            "a staff or admin token is needed: --token (MESH_SIM_TOKEN) or --email and --password"
        );
    };
    let mut auth = AuthServiceClient::new(channel(&a.auth).await?);
    let login = auth
        .login(LoginRequest {
            email: email.clone(),
            password: password.clone(),
        })
        .await;
    let tokens = match login {
        Ok(r) => r.into_inner().tokens,
        // A fresh mesh: sign the account up (it becomes admin when it is the bootstrap admin,
        // MESH_AUTH_BOOTSTRAP_ADMIN_EMAIL).
        Err(s) if s.code() == tonic::Code::Unauthenticated => {
            auth.sign_up(SignUpRequest {
                email: email.clone(),
                password: password.clone(),
                ..Default::default()
            })
            .await
            .context("logging in failed, and signing up too")?
            .into_inner()
            .tokens
        }
        Err(s) => return Err(s).context("logging in"),
    };
    Ok(tokens.context("no tokens")?.access_token)
}

async fn register(a: &DevicesArgs, token: &str, ids: &[String]) -> anyhow::Result<()> {
    let shop = ShopServiceClient::new(channel(&a.shop).await?);
    let store = Store {
        store_id: "sim".into(),
        display_name: "Simulated devices".into(),
        ..Default::default()
    };
    match shop
        .clone()
        .create_store(bearer(token, CreateStoreRequest { store: Some(store) })?)
        .await
    {
        Ok(_) => {}
        Err(s) if s.code() == tonic::Code::AlreadyExists => {}
        Err(s) => bail!("creating store `sim`: {s}"),
    }
    let results: Vec<Result<(), tonic::Status>> = futures::stream::iter(ids.iter().cloned())
        .map(|id| {
            let mut shop = shop.clone();
            let request = bearer(
                token,
                RegisterMachineRequest {
                    parent: "stores/sim".into(),
                    machine: Some(Machine {
                        machine_id: id,
                        model: "simulator".into(),
                        slot_count: 10,
                        ..Default::default()
                    }),
                },
            );
            async move {
                match shop
                    .register_machine(request.map_err(|e| tonic::Status::internal(e.to_string()))?)
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
                    Err(s) => Err(s),
                }
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
        bail!("registering machines in shop: {e}");
    }
    Ok(())
}

/// Counters and the latency histogram of the command stream.
struct Stats {
    sent: AtomicU64,
    ok: AtomicU64,
    jammed: AtomicU64,
    timeouts: AtomicU64,
    unavailable: AtomicU64,
    other: AtomicU64,
    latency: std::sync::Mutex<Histogram<u64>>,
}

impl Stats {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            sent: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            jammed: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            unavailable: AtomicU64::new(0),
            other: AtomicU64::new(0),
            latency: std::sync::Mutex::new(Histogram::new_with_bounds(1, 120_000_000, 3)?),
        })
    }

    fn quantile_ms(&self, q: f64) -> f64 {
        let h = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        if h.is_empty() {
            0.0
        } else {
            h.value_at_quantile(q) as f64 / 1000.0
        }
    }
}

async fn devices(a: DevicesArgs) -> anyhow::Result<()> {
    if a.count == 0 {
        bail!("--count must be at least 1");
    }
    if !(0.0..=1.0).contains(&a.fault_share) {
        bail!("--fault-share must be between 0 and 1");
    }
    let token = staff_token(&a).await?;
    let ids: Vec<String> = (0..a.count)
        .map(|i| format!("{}{i:05}", a.prefix))
        .collect();
    let started = Instant::now();
    eprintln!("issuing {} device credentials ...", a.count);
    let tokens = device_tokens(channel(&a.auth).await?, &token, &ids, 16)
        .await
        .context("issuing device credentials")?;
    if a.register {
        eprintln!("registering {} machines in shop ...", a.count);
        register(&a, &token, &ids).await?;
    }
    let faulty = (a.count as f64 * a.fault_share).round() as usize;
    let devices: Vec<SimDevice> = ids
        .iter()
        .zip(tokens)
        .enumerate()
        .map(|(i, (id, t))| {
            let d = SimDevice::new(id.clone(), t);
            if i < faulty {
                if a.fault.contains(&Fault::DropAcks) {
                    d.faults.drop_acks.store(true, Ordering::Relaxed);
                }
                if a.fault.contains(&Fault::JamSlot) {
                    d.faults.jam("A1");
                }
            }
            d
        })
        .collect();
    let rss_before = a.gateway_pid.and_then(rss);
    let per = a.streams_per_connection.max(1);
    let mut channels = Vec::new();
    for _ in 0..a.count.div_ceil(per) {
        channels.push(channel(&a.target).await?);
    }
    eprintln!(
        "connecting {} devices over {} HTTP/2 connections ...",
        a.count,
        channels.len()
    );
    let connections: Vec<Arc<Mutex<Option<Connection>>>> =
        (0..a.count).map(|_| Arc::new(Mutex::new(None))).collect();
    let connect_started = Instant::now();
    let failures: Vec<String> = futures::stream::iter(0..a.count)
        .map(|i| {
            let d = devices[i].clone();
            let ch = channels[i / per].clone();
            let slot = connections[i].clone();
            async move {
                match d.connect(ch).await {
                    Ok(c) => {
                        *slot.lock().await = Some(c);
                        None
                    }
                    Err(e) => Some(format!("{}: {e}", d.id)),
                }
            }
        })
        .buffer_unordered(256)
        .filter_map(|r| async move { r })
        .collect()
        .await;
    if let Some(first) = failures.first() {
        bail!("{} devices failed to connect, e.g. {first}", failures.len());
    }
    let connect_time = connect_started.elapsed();
    // Let the gateway settle (reports to shop, events) before reading its memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_connected = a.gateway_pid.and_then(rss);
    eprintln!(
        "{} devices connected in {:.1?} (setup {:.1?})",
        a.count,
        connect_time,
        started.elapsed()
    );

    // The offline fault: the faulty share drops and reconnects every 5 s.
    let stop = tokio_util::sync::CancellationToken::new();
    if a.fault.contains(&Fault::Offline) && faulty > 0 {
        let connections = connections.clone();
        let devices = devices.clone();
        let channels = channels.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = stop.cancelled() => return,
                }
                for i in 0..faulty {
                    let mut slot = connections[i].lock().await;
                    match slot.take() {
                        Some(c) => c.cut(),
                        None => {
                            if let Ok(c) = devices[i].connect(channels[i / per].clone()).await {
                                *slot = Some(c);
                            }
                        }
                    }
                }
            }
        });
    }

    let stats = Arc::new(Stats::new()?);
    let commands = GatewayServiceClient::new(channel(&a.target).await?);
    let run_until = Instant::now() + a.duration;
    let limiter = Arc::new(tokio::sync::Semaphore::new(a.concurrency.max(1)));
    let sender = {
        let stats = stats.clone();
        let ids = ids.clone();
        let token = token.clone();
        let ack_timeout = a.ack_timeout;
        let rate = a.rate;
        tokio::spawn(async move {
            if rate <= 0.0 {
                return;
            }
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut n: u64 = 0;
            while Instant::now() < run_until {
                tick.tick().await;
                let Ok(permit) = limiter.clone().acquire_owned().await else {
                    return;
                };
                n += 1;
                let id = ids[(n.wrapping_mul(7919) % ids.len() as u64) as usize].clone();
                let mut client = commands.clone();
                let stats = stats.clone();
                let request = bearer(
                    &token,
                    SendCommandRequest {
                        machine_id: id,
                        command: Some(Command {
                            action: Some(Action::Dispense(Dispense {
                                slot: "A1".into(),
                                vend_id: format!("sim-{n}"),
                            })),
                            ..Default::default()
                        }),
                        ack_timeout: Some(prost_types_duration(ack_timeout)),
                    },
                );
                tokio::spawn(async move {
                    let _permit = permit;
                    let Ok(request) = request else { return };
                    stats.sent.fetch_add(1, Ordering::Relaxed);
                    let t = Instant::now();
                    let outcome = client.send_command(request).await;
                    let us = t.elapsed().as_micros() as u64;
                    match outcome {
                        Ok(r) => {
                            let result = r.into_inner().ack.map(|a| a.result).unwrap_or_default();
                            if result == CommandResult::Ok as i32 {
                                stats.ok.fetch_add(1, Ordering::Relaxed);
                            } else {
                                stats.jammed.fetch_add(1, Ordering::Relaxed);
                            }
                            let _ = stats
                                .latency
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .record(us.max(1));
                        }
                        Err(s) if s.code() == tonic::Code::DeadlineExceeded => {
                            stats.timeouts.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(s) if s.code() == tonic::Code::Unavailable => {
                            stats.unavailable.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            stats.other.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        })
    };

    let mut progress = tokio::time::interval(Duration::from_secs(1));
    progress.tick().await;
    while Instant::now() < run_until {
        progress.tick().await;
        let mut live = 0;
        for c in &connections {
            if c.lock().await.as_ref().is_some_and(Connection::is_live) {
                live += 1;
            }
        }
        let gw = a
            .gateway_pid
            .and_then(rss)
            .map(|b| format!("  gateway rss {:.0} MiB", mib(b)))
            .unwrap_or_default();
        eprint!(
            "\rconnected {live}/{}  commands {} ok {} jammed {} timeout {} unavailable {}  p50 {:.2} ms  p99 {:.2} ms{gw}   ",
            a.count,
            stats.sent.load(Ordering::Relaxed),
            stats.ok.load(Ordering::Relaxed),
            stats.jammed.load(Ordering::Relaxed),
            stats.timeouts.load(Ordering::Relaxed),
            stats.unavailable.load(Ordering::Relaxed),
            stats.quantile_ms(0.5),
            stats.quantile_ms(0.99),
        );
    }
    eprintln!();
    stop.cancel();
    let _ = sender.await;
    // Let the commands in flight finish.
    let _ = tokio::time::timeout(a.ack_timeout + Duration::from_secs(1), async {
        stats_limiter_drain(&stats).await;
    })
    .await;
    let mut live = 0;
    for c in &connections {
        if c.lock().await.as_ref().is_some_and(Connection::is_live) {
            live += 1;
        }
    }
    println!(
        "devices            {} connected of {} at the end",
        live, a.count
    );
    println!("connect time       {:.2?} for all devices", connect_time);
    println!(
        "commands           {} sent, {} ok, {} jammed, {} timed out, {} unavailable, {} other",
        stats.sent.load(Ordering::Relaxed),
        stats.ok.load(Ordering::Relaxed),
        stats.jammed.load(Ordering::Relaxed),
        stats.timeouts.load(Ordering::Relaxed),
        stats.unavailable.load(Ordering::Relaxed),
        stats.other.load(Ordering::Relaxed),
    );
    println!(
        "round trip (acked) p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        stats.quantile_ms(0.5),
        stats.quantile_ms(0.9),
        stats.quantile_ms(0.99),
        stats.quantile_ms(1.0),
    );
    if let (Some(before), Some(after)) = (rss_before, rss_connected) {
        let delta = after.saturating_sub(before);
        println!(
            "gateway memory     rss {:.1} MiB before, {:.1} MiB with {} devices: {:.1} KiB per device",
            mib(before),
            mib(after),
            a.count,
            delta as f64 / 1024.0 / a.count as f64
        );
    }
    for c in &connections {
        if let Some(c) = c.lock().await.take() {
            c.cut();
        }
    }
    Ok(())
}

/// Waits until every command sent has its answer.
async fn stats_limiter_drain(stats: &Stats) {
    loop {
        let done = stats.ok.load(Ordering::Relaxed)
            + stats.jammed.load(Ordering::Relaxed)
            + stats.timeouts.load(Ordering::Relaxed)
            + stats.unavailable.load(Ordering::Relaxed)
            + stats.other.load(Ordering::Relaxed);
        if done >= stats.sent.load(Ordering::Relaxed) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn prost_types_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}
