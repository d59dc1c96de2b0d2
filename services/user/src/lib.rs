//! The user service: customer and staff profiles keyed by the auth account id (display name,
//! email from auth, phone, saved postal addresses with one default, marketing consent with its
//! time and source, locale), staff store assignments, and the right to erasure.
//!
//! A profile is created by the consumer of auth's `user.registered` ([`handlers`]); every change
//! emits `user.updated` with the profile's contact snapshot (notification keeps its contacts
//! from it, auth the staff member's stores for the `stores` token claim); `DeleteUser` erases
//! the profile and emits `user.deleted`, which every service holding personal data consumes
//! (`docs/events.md`, "Right to erasure").
//!
//! - [`api`]: the RPCs; [`caller`]: who may see which profile; [`edit`]: update masks;
//!   [`handlers`]: auth's events; [`profile`]: the domain type; [`store`]: SQL;
//!   [`validate`]. Errors are the runtime's `ServiceError`.

pub mod api;
pub mod caller;
pub mod edit;
pub mod handlers;
pub mod profile;
pub mod store;
pub mod validate;

use futures::future::BoxFuture;
use mesh_contracts::user::v1::user_service_server::UserServiceServer;
use mesh_runtime::auth::{Policy, Role, guard};
use mesh_runtime::{BuildError, Migrations, ServiceContext, ServiceRoutes};

pub use api::UserApi;

/// The user service's tables (portable SQL, the same on Postgres and SQLite).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
/// The module table's migrations for `user`.
pub const MIGRATIONS: Migrations = Migrations::same(&MIGRATOR);

/// Who may call each RPC of `user.v1.UserService`: any caller with a token reads, edits and
/// erases their own profile (staff and services any; checked in the handler, another customer's
/// profile is `NOT_FOUND`); staff create profiles and list them.
pub fn policy() -> Policy {
    Policy::new("user.v1.UserService")
        .authenticated(&["GetUser", "UpdateUser", "DeleteUser"])
        .roles(&["CreateUser", "ListUsers"], &[Role::Staff, Role::Service])
}

/// Builds the service's routes; the module table's constructor for `user`.
pub fn build(ctx: ServiceContext) -> BoxFuture<'static, Result<ServiceRoutes, BuildError>> {
    Box::pin(build_with(ctx))
}

/// Builds the gRPC server and the consumer of auth's events.
pub async fn build_with(ctx: ServiceContext) -> Result<ServiceRoutes, BuildError> {
    let db = ctx.database()?.clone();
    ctx.start_consumer(
        ctx.consumer()?
            .on("user.registered", handlers::OnRegistered)
            .on("auth.roles_changed", handlers::OnRolesChanged),
    );
    let server = UserServiceServer::new(UserApi::new(db))
        .max_decoding_message_size(ctx.max_message_bytes())
        .max_encoding_message_size(ctx.max_message_bytes());
    Ok(ServiceRoutes::new().add_service(guard(&ctx, policy(), server)?))
}
