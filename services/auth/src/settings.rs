//! The auth service's settings, from `MESH_*` variables, validated when the service is built
//! (an error names the variable).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mesh_runtime::auth::{Clock, SystemClock, VerifierSettings};

/// How the auth service signs, what lifetimes it gives, and who it trusts.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// `MESH_JWT_PRIVATE_KEY_FILE`: an Ed25519 PKCS#8 PEM private key. Unset: a key is generated
    /// on first start and kept in the service's database.
    pub key_file: Option<PathBuf>,
    /// `MESH_AUTH_ACCESS_TTL` (default 15m): lifetime of access and service tokens.
    pub access_ttl: Duration,
    /// `MESH_AUTH_REFRESH_TTL` (default 30d): lifetime of a session's refresh tokens.
    pub refresh_ttl: Duration,
    /// `MESH_AUTH_BOOTSTRAP_ADMIN_EMAIL`: the account signing up with this email gets the admin
    /// role, as long as no admin exists yet.
    pub bootstrap_admin_email: Option<String>,
    /// `MESH_AUTH_SERVICE_CLIENTS` (`order=secret,vm=secret`): client credentials of services.
    pub service_clients: BTreeMap<String, String>,
    /// `MESH_SERVICE_CLIENT_SECRET`: a secret shared by every service of the mesh (any client id);
    /// convenient for `mesh serve all`, prefer per-service secrets in production.
    pub shared_service_secret: Option<String>,
    /// Issuer and audience of the tokens (`MESH_JWT_ISSUER`, `MESH_JWT_AUDIENCE`).
    pub verifier: VerifierSettings,
    /// The clock tokens are issued and checked by.
    pub clock: Arc<dyn Clock>,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            key_file: None,
            access_ttl: Duration::from_secs(15 * 60),
            refresh_ttl: Duration::from_secs(30 * 24 * 3600),
            bootstrap_admin_email: None,
            service_clients: BTreeMap::new(),
            shared_service_secret: None,
            verifier: VerifierSettings::default(),
            clock: Arc::new(SystemClock),
        }
    }
}

use mesh_runtime::auth::SERVICE_CLIENT_SECRET;
use mesh_runtime::settings::{ModuleSettings, Setting, Settings, process_env};
pub use mesh_runtime::settings::{SettingError, SettingErrors};

const PRIVATE_KEY_FILE: Setting = Setting::text(
    "MESH_JWT_PRIVATE_KEY_FILE",
    "",
    "An Ed25519 PKCS#8 PEM private key file to sign with (read when the service is built); unset: a key is generated on first start and kept in the database.",
);
const ACCESS_TTL: Setting = Setting::duration(
    "MESH_AUTH_ACCESS_TTL",
    "15m",
    "Lifetime of access and service tokens.",
);
const REFRESH_TTL: Setting = Setting::duration(
    "MESH_AUTH_REFRESH_TTL",
    "30d",
    "Lifetime of a session's refresh tokens.",
);
const BOOTSTRAP_ADMIN_EMAIL: Setting = Setting::text(
    "MESH_AUTH_BOOTSTRAP_ADMIN_EMAIL",
    "",
    "The account signing up with this email gets the admin role, as long as no admin exists yet.",
);
const SERVICE_CLIENTS: Setting = Setting::secret(
    "MESH_AUTH_SERVICE_CLIENTS",
    "Client credentials of services, `order=secret,vm=secret`.",
);

/// The auth module's settings, for its module row.
pub const SETTINGS: ModuleSettings = ModuleSettings {
    declared: &[
        PRIVATE_KEY_FILE,
        ACCESS_TTL,
        REFRESH_TTL,
        BOOTSTRAP_ADMIN_EMAIL,
        SERVICE_CLIENTS,
    ],
    check: |env| AuthSettings::from_lookup(env).map(drop),
};

impl AuthSettings {
    /// The settings from the process environment.
    pub fn from_env() -> Result<Self, SettingErrors> {
        Self::from_lookup(process_env)
    }

    /// The settings from `env` (the environment, or a map in tests); every bad one named.
    pub fn from_lookup(env: impl Fn(&str) -> Option<String>) -> Result<Self, SettingErrors> {
        let mut s = Settings::new(&env);
        let mut settings = Self {
            verifier: VerifierSettings::from_lookup(&env),
            key_file: s.text(&PRIVATE_KEY_FILE).map(PathBuf::from),
            access_ttl: s.duration(&ACCESS_TTL),
            refresh_ttl: s.duration(&REFRESH_TTL),
            bootstrap_admin_email: s.text(&BOOTSTRAP_ADMIN_EMAIL).map(|e| e.to_lowercase()),
            shared_service_secret: s.text(&SERVICE_CLIENT_SECRET),
            ..Self::default()
        };
        if let Some(clients) = s.parse(&SERVICE_CLIENTS, parse_service_clients) {
            settings.service_clients = clients;
        }
        s.finish(settings)
    }
}

/// `order=secret,vm=secret` as client ids and secrets; the error names the entry, not a secret.
fn parse_service_clients(value: &str) -> Result<BTreeMap<String, String>, String> {
    let mut clients = BTreeMap::new();
    for pair in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((id, secret)) if !id.is_empty() && !secret.is_empty() => {
                clients.insert(id.to_string(), secret.to_string());
            }
            _ => {
                return Err(format!(
                    "expected comma-separated client_id=secret pairs, got an entry without `=` near `{}`",
                    pair.split('=').next().unwrap_or_default()
                ));
            }
        }
    }
    Ok(clients)
}
