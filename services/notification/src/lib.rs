//! The notification service: templates per event type, channels (log, signed https webhook,
//! SMTP email over TLS), a delivery log that is also the send queue, and user preferences; it
//! tells customers about the order saga's outcomes (`order.confirmed`, `order.cancelled`).
//!
//! A customer's email and marketing consent are the user service's: [`contacts`] follows its
//! `user.updated` events, and erases what notification holds of a user on `user.deleted`.
//!
//! - [`api`]: the RPCs; [`handlers`]: event handlers; [`contacts`]: the user service's events; [`deliver`]: the queue and its worker;
//!   [`channels`]: sending; [`smtp`]: email over TLS; [`webhook`]: signed https posts; [`tls`]:
//!   outbound trust; [`secret`]: secrets from values or files; [`render`]: templates;
//!   [`store`]: SQL; [`validate`], [`error`], [`settings`].

pub mod api;
pub mod channels;
pub mod contacts;
pub mod deliver;
pub mod error;
pub mod handlers;
pub mod render;
pub mod secret;
pub mod settings;
pub mod smtp;
pub mod store;
pub mod tls;
pub mod validate;
pub mod webhook;

use futures::future::BoxFuture;
use mesh_contracts::notification::v1::notification_service_server::NotificationServiceServer;
use mesh_runtime::auth::{Policy, Role, guard};
use mesh_runtime::{BuildError, Migrations, ServiceContext, ServiceRoutes};

pub use api::NotificationApi;
pub use settings::NotificationSettings;

/// Notification's tables and default templates (portable SQL, the same on Postgres and SQLite).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
/// The module table's migrations for `notification`.
pub const MIGRATIONS: Migrations = Migrations::same(&MIGRATOR);

/// Who may call each RPC of `notification.v1.NotificationService`: staff manage templates and
/// send ad hoc; staff and services read the logs; any caller with a token reads and changes
/// their own preferences and deliveries (staff and services anyone's; checked in the handler).
pub fn policy() -> Policy {
    Policy::new("notification.v1.NotificationService")
        .roles(&["UpsertTemplate", "SendNotification"], &[Role::Staff])
        .roles(&["ListTemplates"], &[Role::Staff, Role::Service])
        .authenticated(&["ListDeliveries", "GetPreferences", "UpdatePreferences"])
}

/// Builds the service's routes; the module table's constructor for `notification`. Settings
/// come from `MESH_NOTIFICATION_*` (see [`NotificationSettings`]).
pub fn build(ctx: ServiceContext) -> BoxFuture<'static, Result<ServiceRoutes, BuildError>> {
    Box::pin(async move {
        let settings = NotificationSettings::from_env()?;
        build_with(ctx, settings).await
    })
}

/// Builds the service with explicit `settings`: the gRPC server, the consumer and the worker.
pub async fn build_with(
    ctx: ServiceContext,
    settings: NotificationSettings,
) -> Result<ServiceRoutes, BuildError> {
    let db = ctx.database()?.clone();
    let deliverer = deliver::Deliverer::new(db.clone(), settings)?;
    ctx.start_consumer(
        ctx.consumer()?
            .on(
                "order.confirmed",
                handlers::NotifyCustomer(deliverer.clone()),
            )
            .on(
                "order.cancelled",
                handlers::NotifyCustomer(deliverer.clone()),
            )
            .on(
                "order.refunded",
                handlers::NotifyCustomer(deliverer.clone()),
            )
            .on("user.updated", contacts::OnUserUpdated)
            .on("user.deleted", contacts::OnUserDeleted),
    );
    ctx.background_task(deliverer.queue().task());
    let server = NotificationServiceServer::new(NotificationApi::new(db, deliverer))
        .max_decoding_message_size(ctx.max_message_bytes())
        .max_encoding_message_size(ctx.max_message_bytes());
    Ok(ServiceRoutes::new().add_service(guard(&ctx, policy(), server)?))
}
