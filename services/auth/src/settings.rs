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

pub use mesh_runtime::settings::SettingError;
use mesh_runtime::settings::{Settings, process_env};

impl AuthSettings {
    /// The settings from the process environment.
    pub fn from_env() -> Result<Self, SettingError> {
        Self::from_lookup(process_env)
    }

    /// The settings from `env` (the environment, or a map in tests).
    pub fn from_lookup(env: impl Fn(&str) -> Option<String>) -> Result<Self, SettingError> {
        let mut s = Self {
            verifier: VerifierSettings::from_env(),
            ..Self::default()
        };
        s.key_file = env("MESH_JWT_PRIVATE_KEY_FILE").map(PathBuf::from);
        let settings = Settings::new(&env);
        s.access_ttl = settings.duration("MESH_AUTH_ACCESS_TTL", s.access_ttl, false)?;
        s.refresh_ttl = settings.duration("MESH_AUTH_REFRESH_TTL", s.refresh_ttl, false)?;
        s.bootstrap_admin_email = env("MESH_AUTH_BOOTSTRAP_ADMIN_EMAIL").map(|e| e.to_lowercase());
        if let Some(value) = env("MESH_AUTH_SERVICE_CLIENTS") {
            for pair in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                match pair.split_once('=') {
                    Some((id, secret)) if !id.is_empty() && !secret.is_empty() => {
                        s.service_clients.insert(id.to_string(), secret.to_string());
                    }
                    _ => {
                        return Err(SettingError {
                            variable: "MESH_AUTH_SERVICE_CLIENTS",
                            value: "<redacted>".into(),
                            reason: format!(
                                "expected comma-separated client_id=secret pairs, got an entry without `=` near `{}`",
                                pair.split('=').next().unwrap_or_default()
                            ),
                        });
                    }
                }
            }
        }
        s.shared_service_secret = env("MESH_SERVICE_CLIENT_SECRET");
        Ok(s)
    }
}
