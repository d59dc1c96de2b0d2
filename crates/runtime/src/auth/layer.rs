//! [`Guarded`]: a generated tonic server behind its service's [`Policy`].
//!
//! For each call: the policy names the method's access (an unnamed method is denied); a public
//! method runs anonymously, or as the caller of a valid token it carries; otherwise the `authorization: Bearer <jwt>` metadata is verified
//! (`UNAUTHENTICATED` when missing, malformed, forged, expired, not yet valid, or for another
//! issuer or audience), the roles are checked (`PERMISSION_DENIED`), and the caller's
//! [`Identity`] is put in the request extensions for the handler. Refusals for the token are
//! counted ([`AuthRejections`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::server::NamedService;
use tower_service::Service;

use crate::auth::identity::Identity;
use crate::auth::jwks::JwksClient;
use crate::auth::policy::{Access, Policy};
use crate::auth::rejections::AuthRejections;
use crate::auth::verify::{AuthError, Verifier, VerifierSettings};
use crate::module::{BuildError, ServiceContext};
use crate::route::{self, GrpcRoute};

/// Wraps `server` in `policy`, verifying tokens against the auth service's JWKS (fetched through
/// the context's `auth` channel, cached, refreshed on an unknown `kid`). Fails when the policy
/// does not cover exactly the service's methods.
/// Refusals are counted in [`AuthRejections`] under the context's module name.
pub fn guard<S>(ctx: &ServiceContext, policy: Policy, server: S) -> Result<Guarded<S>, BuildError> {
    let keys = JwksClient::new(ctx.channel("auth")?);
    let verifier = Verifier::new(Arc::new(keys), VerifierSettings::from_env());
    Ok(
        guard_with(verifier, policy, server)?
            .counted(AuthRejections::of(ctx.metrics(), ctx.name())),
    )
}

/// Wraps `server` in `policy` with a verifier of your own (the auth service's own keys, an
/// injected clock in tests).
pub fn guard_with<S>(
    verifier: Verifier,
    policy: Policy,
    server: S,
) -> Result<Guarded<S>, BuildError> {
    policy.check_complete()?;
    Ok(Guarded {
        inner: server,
        policy: Arc::new(policy),
        verifier: Arc::new(verifier),
        rejections: None,
    })
}

/// A tonic server whose calls pass the policy first. Keeps the server's name, so it registers
/// with `ServiceRoutes::add_service` like the server itself.
#[derive(Debug, Clone)]
pub struct Guarded<S> {
    inner: S,
    policy: Arc<Policy>,
    verifier: Arc<Verifier>,
    rejections: Option<AuthRejections>,
}

impl<S> Guarded<S> {
    /// Counts the calls this guard refuses for their token in `rejections`.
    pub fn counted(mut self, rejections: AuthRejections) -> Self {
        self.rejections = Some(rejections);
        self
    }
}

impl<S: NamedService> NamedService for Guarded<S> {
    const NAME: &'static str = S::NAME;
}

/// The bearer token of `headers` (`authorization: Bearer <token>`), if any.
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Decides a call: `Ok(Some(identity))` to run it as that caller, `Ok(None)` to run a public one.
/// A call refused for its token is counted in `rejections`.
pub async fn authorize(
    policy: &Policy,
    verifier: &Verifier,
    rejections: Option<&AuthRejections>,
    path: &str,
    headers: &http::HeaderMap,
) -> Result<Option<Identity>, tonic::Status> {
    let refuse = |e: AuthError| {
        if let Some(r) = rejections {
            r.record(&e);
        }
        tonic::Status::from(e)
    };
    let Some(access) = policy.access(path) else {
        return Err(tonic::Status::permission_denied(format!(
            "{path} is not open to any caller (no access rule)"
        )));
    };
    let token = match (access, bearer(headers)) {
        // A public call runs anonymously; with a valid token it runs as that caller, so the
        // handler can see who it is (e.g. staff-only filters of a public list). A bad token on a
        // public call is ignored rather than refused: a client refreshing an expired session
        // may still send its expired access token.
        (Access::Public, None) => return Ok(None),
        (Access::Public, Some(token)) => return Ok(verifier.verify(token).await.ok()),
        (_, Some(token)) => token,
        (_, None) => return Err(refuse(AuthError::Missing)),
    };
    let identity = verifier.verify(token).await.map_err(refuse)?;
    if let Access::Roles(roles) = access
        && !identity.has_any(roles)
    {
        let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        return Err(tonic::Status::permission_denied(format!(
            "{path} requires one of the roles {names:?}"
        )));
    }
    Ok(Some(identity))
}

impl<S: GrpcRoute> Service<route::Request> for Guarded<S> {
    type Response = route::Response;
    type Error = Infallible;
    type Future = route::ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: route::Request) -> Self::Future {
        let mut inner = self.inner.clone();
        let policy = self.policy.clone();
        let verifier = self.verifier.clone();
        let rejections = self.rejections.clone();
        Box::pin(async move {
            let path = req.uri().path().to_string();
            match authorize(
                &policy,
                &verifier,
                rejections.as_ref(),
                &path,
                req.headers(),
            )
            .await
            {
                Ok(identity) => {
                    if let Some(identity) = identity {
                        req.extensions_mut().insert(identity);
                    }
                    futures::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
                    inner.call(req).await
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}
