//! The IoT gateway: vending machines hold one long-lived bidirectional stream each
//! (`iot.v1.GatewayService/OpenChannel`), and the rest of the mesh sends them commands through
//! it (`SendCommand`, which waits for the device's ack) and learns their status from it.
//!
//! - [`channel`]: the handshake (a device access JWT, verified offline against the JWKS), one
//!   task per connection, heartbeat timeout, and the response stream;
//! - [`registry`]: per-device state in memory: session, the bounded queue of unacknowledged
//!   commands (redelivered on reconnect), last status and telemetry;
//! - [`reporter`]: coalesced status reports to shop; [`events`]: `device.*` events through the
//!   outbox, batched; [`codec`]: the small-buffer codec of the device stream;
//! - [`simulator`]: a simulated vending machine speaking the protocol (for `mesh sim devices`
//!   and tests); [`api`]: the RPCs; [`error`]: errors to statuses.
//!
//! Sessions live in this process's memory: one gateway replica per device fleet, or, with more
//! replicas, a routing layer as `docs/devices.md` describes.

pub mod api;
pub mod channel;
pub mod codec;
pub mod error;
pub mod events;
pub mod registry;
pub mod reporter;
pub mod simulator;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use mesh_contracts::iot::v1::gateway_service_server::GatewayServiceServer;
use mesh_contracts::shop::v1::shop_service_client::ShopServiceClient;
use mesh_runtime::auth::{
    Clock, JwksClient, Policy, Role, ServiceTokenChannel, ServiceTokens, Verifier,
    VerifierSettings, guard,
};
use mesh_runtime::tracker::Tracker;
use mesh_runtime::{BuildError, ServiceContext, ServiceRoutes};
use tokio_util::sync::CancellationToken;

pub use api::GatewayApi;

/// Who may call each RPC of `iot.v1.GatewayService`. `OpenChannel` is public at the guard: the
/// device authenticates in its Hello frame instead (checked by [`channel`]). Commands and
/// session reads are for services (vm) and staff.
pub fn policy() -> Policy {
    Policy::new("iot.v1.GatewayService")
        .public(&["OpenChannel"])
        .roles(
            &["SendCommand", "GetDeviceSession", "ListDeviceSessions"],
            &[Role::Service, Role::Staff],
        )
}

/// Settings of the gateway.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// How often devices must send a heartbeat (told in Welcome).
    pub heartbeat_interval: Duration,
    /// Heartbeats missed in a row before the device is marked offline.
    pub missed_heartbeats: u32,
    /// How long a new connection may take to send its Hello.
    pub hello_timeout: Duration,
    /// `SendCommand`'s wait for the ack when the request names none.
    pub ack_timeout: Duration,
    /// Unacknowledged commands one device may have queued.
    pub max_pending: usize,
    /// A device's heartbeats are reported to shop at most this often (connectivity, status and
    /// fault changes are reported at once).
    pub heartbeat_report_every: Duration,
    /// A device's telemetry is published as `device.telemetry` at most this often (door and
    /// power changes at once).
    pub telemetry_every: Duration,
    /// Status reports wait this long to coalesce a burst.
    pub report_coalesce: Duration,
    /// Device events queued for the outbox writer.
    pub event_queue: usize,
    /// This replica's name (`DeviceSession.gateway_instance`): `HOSTNAME` (the pod name).
    pub instance: String,
    /// The service secret to report to shop with; `None` reads `MESH_IOT_GATEWAY_CLIENT_SECRET`
    /// or `MESH_SERVICE_CLIENT_SECRET`.
    pub client_secret: Option<String>,
    /// The clock device tokens are checked against; `None` for the system clock.
    pub clock: Option<Arc<dyn Clock>>,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(10),
            missed_heartbeats: 3,
            hello_timeout: Duration::from_secs(10),
            ack_timeout: Duration::from_secs(10),
            max_pending: 64,
            heartbeat_report_every: Duration::from_secs(60),
            telemetry_every: Duration::from_secs(60),
            report_coalesce: Duration::from_millis(50),
            event_queue: 4096,
            instance: std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into()),
            client_secret: None,
            clock: None,
        }
    }
}

/// What every connection task and RPC of one gateway shares.
#[derive(Debug)]
pub struct Gateway {
    /// Settings.
    pub options: GatewayOptions,
    /// The device table.
    pub registry: Arc<registry::Registry>,
    /// Devices whose status shop should hear about.
    pub dirty: Arc<reporter::Dirty>,
    /// Device events for the outbox.
    pub events: events::EventSink,
    /// Checks device tokens.
    pub verifier: Verifier,
    /// Stops connection tasks.
    pub shutdown: CancellationToken,
    /// The connection tasks (one per connected device), drained at shutdown.
    pub connections: Tracker,
}

/// Builds the service's routes; the module table's constructor for `iot-gateway`.
pub fn build(ctx: ServiceContext) -> BoxFuture<'static, Result<ServiceRoutes, BuildError>> {
    Box::pin(async move {
        build_with(ctx, GatewayOptions::default())
            .await
            .map(|(r, _)| r)
    })
}

/// Builds the service's routes with explicit `options`; also returns the shared [`Gateway`]
/// (tests and benchmarks read its registry).
pub async fn build_with(
    ctx: ServiceContext,
    options: GatewayOptions,
) -> Result<(ServiceRoutes, Arc<Gateway>), BuildError> {
    let db = ctx.database()?.clone();
    let mut verifier = Verifier::new(
        Arc::new(JwksClient::new(ctx.channel("auth")?)),
        VerifierSettings::from_env(),
    );
    if let Some(clock) = &options.clock {
        verifier = verifier.with_clock(clock.clone());
    }
    // One task per device connection, owned by the service: at shutdown each ends (its
    // `shutdown` fires), and the drain waits for them within the grace period.
    let connections = ctx.tracker("device-connections");
    let (events, writer) = events::EventSink::new(db, options.event_queue);
    let writer = Arc::new(tokio::sync::Mutex::new(writer));
    {
        let connections = connections.clone();
        ctx.background("event-writer", move |stop| {
            let (writer, connections) = (writer.clone(), connections.clone());
            async move {
                writer.lock().await.run(stop, connections).await;
                Ok(())
            }
        });
    }
    let registry = Arc::new(registry::Registry::new(
        &options.instance,
        options.max_pending,
        options.heartbeat_interval,
    ));
    let dirty = Arc::new(reporter::Dirty::default());
    let tokens = match &options.client_secret {
        Some(secret) => Some(ServiceTokens::new(ctx.channel("auth")?, ctx.name(), secret)),
        None => ServiceTokens::from_context(&ctx)?,
    };
    let shop = ShopServiceClient::new(ServiceTokenChannel::new(ctx.channel("shop")?, tokens));
    {
        let (dirty, registry, coalesce) =
            (dirty.clone(), registry.clone(), options.report_coalesce);
        ctx.background("status-reporter", move |stop| {
            let run = reporter::run(
                dirty.clone(),
                registry.clone(),
                shop.clone(),
                coalesce,
                stop,
            );
            async move {
                run.await;
                Ok(())
            }
        });
    }
    let gateway = Arc::new(Gateway {
        options,
        registry,
        dirty,
        events,
        verifier,
        shutdown: ctx.shutdown().clone(),
        connections,
    });
    let server = GatewayServiceServer::new(GatewayApi::new(gateway.clone()))
        .max_decoding_message_size(ctx.max_message_bytes())
        .max_encoding_message_size(ctx.max_message_bytes());
    let server = codec::SmallBuffers::new(
        server,
        GatewayApi::new(gateway.clone()),
        ctx.max_message_bytes(),
    );
    Ok((
        ServiceRoutes::new().add_service(guard(&ctx, policy(), server)?),
        gateway,
    ))
}
