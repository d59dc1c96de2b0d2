//! Service-to-service calls: a service authenticates as itself with the OAuth 2.0
//! client-credentials grant (`auth.v1.AuthService/IssueServiceToken`), and
//! [`ServiceTokenChannel`] adds the token to every outgoing call that carries no token of its
//! own.
//!
//! The client id is the service's module name; its secret is `MESH_<SERVICE>_CLIENT_SECRET`, or
//! `MESH_SERVICE_CLIENT_SECRET` for every service of the process. The token is cached and
//! fetched again one minute before it expires. Without a secret, calls go out without a token
//! (public RPCs still work; protected ones answer `UNAUTHENTICATED`).

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use http::HeaderValue;
use mesh_contracts::auth::v1::IssueServiceTokenRequest;
use mesh_contracts::auth::v1::auth_service_client::AuthServiceClient;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tower_service::Service;

use crate::client::MeshChannel;
use crate::module::{ClientError, ServiceContext};
use crate::settings::Setting;
use crate::settings::env_prefix;

/// `MESH_SERVICE_CLIENT_SECRET`: the client secret of every service of the process that has no
/// `MESH_<SERVICE>_CLIENT_SECRET` of its own (and, at auth, accepted for any client id).
pub const SERVICE_CLIENT_SECRET: Setting = Setting::secret(
    "MESH_SERVICE_CLIENT_SECRET",
    "Client secret shared by every service of the mesh for service tokens (auth accepts it for any client id); unset: calls go without a service token.",
);

/// How long before expiry a cached service token is replaced.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// A service's client credentials and its cached token.
#[derive(Debug, Clone)]
pub struct ServiceTokens {
    client: AuthServiceClient<MeshChannel>,
    client_id: String,
    secret: String,
    cached: Arc<Mutex<Option<(String, Instant)>>>,
}

impl ServiceTokens {
    /// Credentials of `client_id` with `secret`, exchanged at the auth service behind `auth`.
    pub fn new(auth: MeshChannel, client_id: impl Into<String>, secret: impl Into<String>) -> Self {
        Self {
            client: AuthServiceClient::new(auth),
            client_id: client_id.into(),
            secret: secret.into(),
            cached: Arc::new(Mutex::new(None)),
        }
    }

    /// The credentials of the service of `ctx` from the environment, if a secret is set.
    pub fn from_context(ctx: &ServiceContext) -> Result<Option<Self>, ClientError> {
        let own = format!("{}_CLIENT_SECRET", env_prefix(ctx.name()));
        let secret = std::env::var(own)
            .ok()
            .or_else(|| std::env::var("MESH_SERVICE_CLIENT_SECRET").ok())
            .filter(|s| !s.is_empty());
        match secret {
            Some(secret) => Ok(Some(Self::new(ctx.channel("auth")?, ctx.name(), secret))),
            None => Ok(None),
        }
    }

    /// A valid token, from the cache or freshly issued.
    pub async fn token(&self) -> Result<String, tonic::Status> {
        let mut cached = self.cached.lock().await;
        if let Some((token, refresh_at)) = cached.as_ref()
            && Instant::now() < *refresh_at
        {
            return Ok(token.clone());
        }
        let response = self
            .client
            .clone()
            .issue_service_token(IssueServiceTokenRequest {
                client_id: self.client_id.clone(),
                client_secret: self.secret.clone(),
                audience: String::new(),
                scopes: Vec::new(),
            })
            .await?
            .into_inner();
        let lifetime = response.expires_in.map_or(Duration::ZERO, |d| {
            Duration::from_secs(d.seconds.max(0) as u64)
        });
        let refresh_at = Instant::now() + lifetime.saturating_sub(REFRESH_MARGIN);
        *cached = Some((response.access_token.clone(), refresh_at));
        Ok(response.access_token)
    }
}

/// A channel that adds the service's token to calls sent without an `authorization` header.
#[derive(Debug, Clone)]
pub struct ServiceTokenChannel<S> {
    inner: S,
    tokens: Option<ServiceTokens>,
}

impl<S> ServiceTokenChannel<S> {
    /// Wraps `inner`; with `tokens` `None` calls pass through unchanged.
    pub fn new(inner: S, tokens: Option<ServiceTokens>) -> Self {
        Self { inner, tokens }
    }
}

impl ServiceTokenChannel<MeshChannel> {
    /// A channel to `peer` (a declared dependency) that authenticates as the service of `ctx`.
    pub fn connect(ctx: &ServiceContext, peer: &str) -> Result<Self, ClientError> {
        Ok(Self::new(
            ctx.channel(peer)?,
            ServiceTokens::from_context(ctx)?,
        ))
    }
}

impl<S> Service<http::Request<tonic::body::Body>> for ServiceTokenChannel<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        // Take the readied service and leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let tokens = self.tokens.clone();
        Box::pin(async move {
            if let Some(tokens) = tokens
                && !req.headers().contains_key(http::header::AUTHORIZATION)
            {
                match tokens.token().await {
                    Ok(token) => {
                        if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) {
                            req.headers_mut().insert(http::header::AUTHORIZATION, v);
                        }
                    }
                    Err(status) => {
                        tracing::warn!(error = %status.message(), "no service token; calling without one");
                    }
                }
            }
            inner.call(req).await
        })
    }
}
