//! The vm service: the planogram of every machine (which product in which slot, at what price,
//! how many), restocks, and the vend flow: check the machine is online, reserve one unit
//! (inventory), charge (payment), dispense (a command through the IoT gateway, acknowledged by
//! the machine), commit; on any failure the charge is refunded and the reservation released.
//! The outcome is `vend.completed` or `vend.failed`, through the outbox. See `docs/devices.md`.
//!
//! - [`flow`]: the vend state machine, its steps persisted before their side effects, and the
//!   recovery sweep; [`api`]: the RPCs; [`store`]: SQL; [`peers`]: clients of the services it
//!   calls; [`error`]: errors to statuses.

pub mod api;
pub mod error;
pub mod flow;
pub mod peers;
pub mod store;

use std::time::Duration;

use futures::future::BoxFuture;
use mesh_contracts::vm::v1::vending_machine_service_server::VendingMachineServiceServer;
use mesh_runtime::auth::{Policy, Role, guard};
use mesh_runtime::settings::{ModuleSettings, Setting, SettingErrors, Settings, process_env};
use mesh_runtime::{BuildError, Migrations, ServiceContext, ServiceRoutes};

pub use api::VmApi;

/// The vm's tables (portable SQL, the same on Postgres and SQLite).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
/// The module table's migrations for `vm`.
pub const MIGRATIONS: Migrations = Migrations::same(&MIGRATOR);

/// Who may call each RPC of `vm.v1.VendingMachineService`: any caller with a token buys and
/// reads planograms; staff set planograms and restock; vends are read by staff and services.
pub fn policy() -> Policy {
    Policy::new("vm.v1.VendingMachineService")
        .authenticated(&["Vend", "GetPlanogram"])
        .roles(&["SetPlanogram", "Restock"], &[Role::Staff])
        .roles(&["GetVend", "ListVends"], &[Role::Staff, Role::Service])
}

/// Settings of the vm service.
#[derive(Debug, Clone)]
pub struct VmOptions {
    /// How long a dispense waits for the machine's ack (the command expires then;
    /// `MESH_VM_DISPENSE_TIMEOUT`).
    pub dispense_timeout: Duration,
    /// How often the recovery sweep looks for vends left pending (`MESH_VM_RECOVERY_INTERVAL`).
    pub sweep_every: Duration,
    /// The service secret; `None` reads `MESH_VM_CLIENT_SECRET` or `MESH_SERVICE_CLIENT_SECRET`.
    pub client_secret: Option<String>,
}

impl Default for VmOptions {
    /// The declared defaults (as with nothing set; a test holds the two together).
    fn default() -> Self {
        Self {
            dispense_timeout: Duration::from_secs(10),
            sweep_every: Duration::from_secs(15),
            client_secret: None,
        }
    }
}

const DISPENSE_TIMEOUT: Setting = Setting::duration(
    "MESH_VM_DISPENSE_TIMEOUT",
    "10s",
    "How long a dispense waits for the machine's ack before the command expires and the vend is refunded.",
);
const RECOVERY_INTERVAL: Setting = Setting::duration(
    "MESH_VM_RECOVERY_INTERVAL",
    "15s",
    "How often the recovery sweep looks for vends left pending (a crash mid-vend, a lost answer).",
);

/// The vm module's settings, for its module row.
pub const SETTINGS: ModuleSettings = ModuleSettings {
    declared: &[DISPENSE_TIMEOUT, RECOVERY_INTERVAL],
    check: |env| VmOptions::from_lookup(env).map(drop),
};

impl VmOptions {
    /// The settings from the process environment.
    pub fn from_env() -> Result<Self, SettingErrors> {
        Self::from_lookup(process_env)
    }

    /// The settings from `env` (the environment, or a map in tests); every bad one named. The
    /// client secret stays `None`: the runtime reads it (`MESH_VM_CLIENT_SECRET`).
    pub fn from_lookup(env: impl Fn(&str) -> Option<String>) -> Result<Self, SettingErrors> {
        let mut s = Settings::new(env);
        let options = Self {
            dispense_timeout: s.duration(&DISPENSE_TIMEOUT),
            sweep_every: s.duration(&RECOVERY_INTERVAL),
            client_secret: None,
        };
        s.finish(options)
    }
}

/// Builds the service's routes from the environment's settings; the module table's constructor
/// for `vm`.
pub fn build(ctx: ServiceContext) -> BoxFuture<'static, Result<ServiceRoutes, BuildError>> {
    Box::pin(async move {
        let options = VmOptions::from_env()?;
        build_with(ctx, options).await
    })
}

/// Builds the service's routes with explicit `options`; starts the recovery sweep.
pub async fn build_with(
    ctx: ServiceContext,
    options: VmOptions,
) -> Result<ServiceRoutes, BuildError> {
    let db = ctx.database()?.clone();
    let peers = peers::Peers::new(&ctx, options.client_secret.as_deref())?;
    let flow = flow::Flow::new(db.clone(), peers.clone(), options.dispense_timeout);
    ctx.background_task(flow.clone().recovery_queue(options.sweep_every).task());
    let server =
        VendingMachineServiceServer::new(VmApi::new(db, peers, flow, ctx.tracker("vend-drives")))
            .max_decoding_message_size(ctx.max_message_bytes())
            .max_encoding_message_size(ctx.max_message_bytes());
    Ok(ServiceRoutes::new().add_service(guard(&ctx, policy(), server)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_runtime::settings::lookup_in;

    #[test]
    fn settings_default_as_declared_and_every_bad_one_is_named() {
        let (read, default) = (
            VmOptions::from_lookup(|_| None).unwrap(),
            VmOptions::default(),
        );
        assert_eq!(
            (read.dispense_timeout, read.sweep_every),
            (default.dispense_timeout, default.sweep_every)
        );
        let s = VmOptions::from_lookup(lookup_in(&[("MESH_VM_DISPENSE_TIMEOUT", "3s")])).unwrap();
        assert_eq!(s.dispense_timeout, Duration::from_secs(3));
        let e = VmOptions::from_lookup(lookup_in(&[
            ("MESH_VM_DISPENSE_TIMEOUT", "0s"),
            ("MESH_VM_RECOVERY_INTERVAL", "often"),
        ]))
        .unwrap_err();
        let named: Vec<_> = e.0.iter().map(|e| e.variable).collect();
        assert_eq!(
            named,
            ["MESH_VM_DISPENSE_TIMEOUT", "MESH_VM_RECOVERY_INTERVAL"]
        );
    }
}
