//! A running auth service with a bootstrap admin, for the tests of every service that needs
//! real tokens, and `authorization` metadata.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use mesh_auth::AuthSettings;
use mesh_contracts::auth::v1::auth_service_client::AuthServiceClient;
use mesh_contracts::auth::v1::{
    IssueServiceTokenRequest, LoginRequest, SetRolesRequest, SignUpRequest, SignUpResponse,
};
use mesh_runtime::Database;
use mesh_runtime::config::DatabaseTarget;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::backends::unique;
use crate::context::{context, database, memory_bus};
use crate::serve::{channel, serve};

/// A running auth service.
#[derive(Debug)]
pub struct TestAuth {
    /// Its address.
    pub addr: SocketAddr,
    /// Where its admin routes (the JWKS document) are served, as the admin port would.
    pub admin_addr: SocketAddr,
    /// Its database.
    pub db: Database,
    /// Stops it.
    pub shutdown: CancellationToken,
    /// Its metrics registry (what its admin port's `/metrics` would show).
    pub metrics: mesh_runtime::metrics::Metrics,
    /// The bus it consumes (`user.updated` assigns staff to stores).
    pub bus: std::sync::Arc<dyn mesh_runtime::bus::EventBus>,
}

/// Auth's default settings with one service client, `client` (a service name such as `order`)
/// with `secret`, for [`TestAuth::service_token`].
pub fn service_client(client: &str, secret: &str) -> AuthSettings {
    let mut settings = AuthSettings::default();
    settings
        .service_clients
        .insert(client.into(), secret.into());
    settings
}

/// Signs up `email` with [`PASSWORD`] at the auth service behind `channel` (a [`TestAuth`] or
/// a running mesh's).
pub async fn sign_up(channel: Channel, email: &str) -> SignUpResponse {
    AuthServiceClient::new(channel)
        .sign_up(SignUpRequest {
            email: email.into(),
            password: PASSWORD.into(),
            ..Default::default()
        })
        .await
        .expect("sign up")
        .into_inner()
}

/// An access token of `email` (password [`PASSWORD`]) from the auth service behind `channel`.
pub async fn login(channel: Channel, email: &str) -> String {
    AuthServiceClient::new(channel)
        .login(LoginRequest {
            email: email.into(),
            password: PASSWORD.into(),
        })
        .await
        .expect("login")
        .into_inner()
        .tokens
        .expect("tokens")
        .access_token
}

/// The email of the bootstrap admin of [`TestAuth`].
pub const ADMIN_EMAIL: &str = "admin@example.com";
/// The password of every account [`TestAuth`] creates.
pub const PASSWORD: &str = "correct horse battery";

impl TestAuth {
    /// Starts the auth service on `target` with `settings` (its bootstrap admin email set to
    /// [`ADMIN_EMAIL`]).
    pub async fn start(target: &DatabaseTarget, settings: AuthSettings) -> Self {
        Self::start_on(target, settings, memory_bus()).await
    }

    /// Like [`TestAuth::start`], on `bus`: the services under test see auth's events
    /// (`user.registered`, `auth.roles_changed`) and auth sees theirs (`user.updated`,
    /// `user.deleted`).
    pub async fn start_on(
        target: &DatabaseTarget,
        mut settings: AuthSettings,
        bus: std::sync::Arc<dyn mesh_runtime::bus::EventBus>,
    ) -> Self {
        settings.bootstrap_admin_email = Some(ADMIN_EMAIL.into());
        let db = database("auth", target, &mesh_auth::MIGRATIONS).await;
        let shutdown = CancellationToken::new();
        let ctx = context(
            "auth",
            BTreeMap::new(),
            db.clone(),
            bus.clone(),
            shutdown.clone(),
        );
        let metrics = ctx.metrics().clone();
        let mut routes = mesh_auth::build_with(ctx, settings)
            .await
            .expect("build auth");
        let admin = routes.take_admin_routes().expect("auth adds admin routes");
        let admin_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let admin_addr = admin_listener.local_addr().expect("addr");
        let stop = shutdown.clone().cancelled_owned();
        tokio::spawn(mesh_runtime::admin::run(admin_listener, admin, stop));
        let addr = serve("auth", routes, db.clone(), bus.clone(), shutdown.clone()).await;
        Self {
            addr,
            admin_addr,
            db,
            shutdown,
            metrics,
            bus,
        }
    }

    /// Its URI, for a peer map.
    pub fn uri(&self) -> http::Uri {
        format!("http://{}", self.addr).parse().expect("uri")
    }

    /// A client.
    pub async fn client(&self) -> AuthServiceClient<Channel> {
        AuthServiceClient::new(channel(self.addr).await)
    }

    /// Signs up `email` with [`PASSWORD`].
    pub async fn sign_up(&self, email: &str) -> SignUpResponse {
        sign_up(channel(self.addr).await, email).await
    }

    /// An access token of the bootstrap admin (signed up on first use, logged in after).
    pub async fn admin_token(&self) -> String {
        let mut client = self.client().await;
        let login = client
            .login(LoginRequest {
                email: ADMIN_EMAIL.into(),
                password: PASSWORD.into(),
            })
            .await;
        let tokens = match login {
            Ok(r) => r.into_inner().tokens,
            Err(_) => self.sign_up(ADMIN_EMAIL).await.tokens,
        };
        tokens.expect("tokens").access_token
    }

    /// A service token of the client `client_id` (registered in the settings' `service_clients`
    /// with `secret`).
    pub async fn service_token(&self, client_id: &str, secret: &str) -> String {
        self.client()
            .await
            .issue_service_token(IssueServiceTokenRequest {
                client_id: client_id.into(),
                client_secret: secret.into(),
                ..Default::default()
            })
            .await
            .expect("service token")
            .into_inner()
            .access_token
    }

    /// A fresh account given `roles` by the bootstrap admin (`SetRoles`), logged in again so
    /// its token carries them: its account id and access token.
    pub async fn token_with_roles(&self, roles: &[mesh_runtime::auth::Role]) -> (String, String) {
        let email = format!("{}@example.com", unique("r"));
        let id = self.account_with_roles(&email, roles).await;
        (id, self.login(&email).await)
    }

    /// Signs up `email` and gives it `roles` (the bootstrap admin's `SetRoles`): its account id.
    async fn account_with_roles(&self, email: &str, roles: &[mesh_runtime::auth::Role]) -> String {
        let id = self.sign_up(email).await.account.expect("account").id;
        let admin = self.admin_token().await;
        let mut client = self.client().await;
        client
            .set_roles(bearer(
                &admin,
                SetRolesRequest {
                    account_id: id.clone(),
                    roles: roles.iter().map(|r| r.to_proto() as i32).collect(),
                },
            ))
            .await
            .expect("set roles");
        id
    }

    /// An access token of `email` (password [`PASSWORD`]).
    pub async fn login(&self, email: &str) -> String {
        login(channel(self.addr).await, email).await
    }

    /// A fresh staff account working at `stores`, assigned as the user service does (its
    /// `user.updated` snapshot on [`TestAuth::bus`]) and logged in once auth has taken the
    /// assignment: its account id and an access token whose `stores` claim names `stores`.
    pub async fn store_staff_token(&self, stores: &[&str]) -> (String, String) {
        let email = format!("{}@example.com", unique("staff"));
        let id = self
            .account_with_roles(&email, &[mesh_runtime::auth::Role::Staff])
            .await;
        if !stores.is_empty() {
            self.assign_stores(&id, stores).await;
        }
        let token = self.login(&email).await;
        (id, token)
    }

    /// Publishes the `user.updated` snapshot that assigns account `id` to `stores` and waits
    /// until auth has stored it.
    async fn assign_stores(&self, id: &str, stores: &[&str]) {
        use mesh_contracts::events::v1::UserUpdated;
        let snapshot = UserUpdated {
            user_id: id.into(),
            changed_fields: vec!["store_ids".into()],
            store_ids: stores.iter().map(|s| s.to_string()).collect(),
            version: 2,
            ..Default::default()
        };
        crate::publish(
            self.bus.as_ref(),
            &crate::envelope("user.updated", id, "UserUpdated", &snapshot),
        )
        .await;
        let joined = stores.join(",");
        crate::eventually("auth takes the staff member's stores", || {
            let (pool, id, joined) = (self.db.pool().clone(), id.to_string(), joined.clone());
            async move {
                let row: Option<(String,)> =
                    sqlx::query_as("SELECT store_ids FROM account_stores WHERE account_id = $1")
                        .bind(id)
                        .fetch_optional(&pool)
                        .await
                        .expect("account_stores");
                row.is_some_and(|(stored,)| stored == joined)
            }
        })
        .await;
    }

    /// An access token of a fresh customer.
    pub async fn customer_token(&self) -> String {
        let email = format!("{}@example.com", unique("c"));
        self.sign_up(&email)
            .await
            .tokens
            .expect("tokens")
            .access_token
    }
}

/// `request` with `authorization: Bearer <token>`.
pub fn bearer<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii token"),
    );
    request
}
