//! The auth service: accounts with Argon2id password hashes, sessions with rotating refresh
//! tokens (reuse of a rotated token revokes the whole session), Ed25519-signed access JWTs, the
//! JWKS that every service verifies them with, key rotation, service tokens (client
//! credentials), device credentials and roles. See `docs/identity.md`.
//!
//! - [`settings`]: `MESH_JWT_PRIVATE_KEY_FILE`, `MESH_AUTH_*` and friends;
//! - [`keys`]: the signing keys; [`tokens`]: token material; [`password`]: hashing;
//! - [`store`]: SQL; [`validate`]: input checks; [`error`]: errors to statuses;
//! - [`api`]: the RPCs; [`policy`]: who may call which; [`jwks_http`]: the JWKS over HTTP;
//! - [`user_events`]: staff store assignments and erasure, from the user service's events.

pub mod api;
pub mod error;
pub mod jwks_http;
pub mod keys;
pub mod password;
pub mod settings;
pub mod store;
pub mod tokens;
pub mod user_events;
pub mod validate;

use std::sync::Arc;

use futures::future::BoxFuture;
use mesh_contracts::auth::v1::auth_service_server::AuthServiceServer;
use mesh_runtime::auth::{AuthRejections, Policy, Role, Verifier, guard_with};
use mesh_runtime::{BuildError, Migrations, ServiceContext, ServiceRoutes};

pub use api::AuthApi;
pub use settings::AuthSettings;

/// The auth service's tables (portable SQL, the same on Postgres and SQLite).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
/// The module table's migrations for `auth`.
pub const MIGRATIONS: Migrations = Migrations::same(&MIGRATOR);

/// Who may call each RPC of `auth.v1.AuthService`.
pub fn policy() -> Policy {
    Policy::new("auth.v1.AuthService")
        .public(&[
            "SignUp",
            "Login",
            "Refresh",
            "Logout",
            "GetJwks",
            "IssueServiceToken",
            "ExchangeDeviceCredential",
        ])
        .roles(&["IssueDeviceCredential"], &[Role::Staff])
        .roles(&["SetRoles", "RotateSigningKey"], &[Role::Admin])
}

/// Builds the service's routes from the environment's settings; the module table's constructor.
pub fn build(ctx: ServiceContext) -> BoxFuture<'static, Result<ServiceRoutes, BuildError>> {
    Box::pin(async move {
        let settings = AuthSettings::from_env()?;
        build_with(ctx, settings).await
    })
}

/// Builds the service's routes with explicit `settings` (tests inject a clock and a key).
pub async fn build_with(
    ctx: ServiceContext,
    settings: AuthSettings,
) -> Result<ServiceRoutes, BuildError> {
    let db = ctx.database()?.clone();
    let pem = match &settings.key_file {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
            format!(
                "MESH_JWT_PRIVATE_KEY_FILE={}: cannot read the signing key: {e}",
                path.display()
            )
        })?),
        None => None,
    };
    // Retired keys stay published for the longest token lifetime plus the verifiers' leeway.
    let retire_for = settings.access_ttl
        + std::time::Duration::from_secs(settings.verifier.leeway.max(0) as u64);
    let keys = keys::KeyRing::open(
        db.clone(),
        pem.as_deref(),
        settings.clock.clone(),
        retire_for,
    )
    .await?;
    // The auth service verifies tokens with its own keys, without calling itself.
    let verifier =
        Verifier::new(keys.clone(), settings.verifier.clone()).with_clock(settings.clock.clone());
    let jwks_http = jwks_http::router(keys.clone());
    ctx.start_consumer(
        ctx.consumer()?
            .on("user.updated", user_events::OnUserUpdated)
            .on(
                "user.deleted",
                user_events::OnUserDeleted {
                    clock: settings.clock.clone(),
                },
            ),
    );
    let api = AuthApi::new(db, keys, Arc::new(settings));
    let server = AuthServiceServer::new(api)
        .max_decoding_message_size(ctx.max_message_bytes())
        .max_encoding_message_size(ctx.max_message_bytes());
    Ok(ServiceRoutes::new()
        .add_service(
            guard_with(verifier.clone(), policy(), server)?
                .counted(AuthRejections::of(ctx.metrics(), ctx.name())),
        )
        .extension(verifier)
        .admin_routes(jwks_http))
}
