//! [`Edge`]: what every request needs (routes, upstreams, the descriptor pool, the settings, the
//! legacy upstream, the rate limiter and token checks), and how a call is admitted (rate limit,
//! then auth) before it goes upstream.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;
use http::{HeaderMap, Request};
use prost_reflect::DescriptorPool;

use crate::auth::EdgeAuth;
use crate::client_key;
use crate::config::EdgeConfig;
use crate::descriptors::SetupError;
use crate::error::EdgeError;
use crate::grpc_proxy;
use crate::http_rule;
use crate::legacy::Legacy;
use crate::limiter::Limiter;
use crate::openapi;
use crate::rate_limit::RateLimiter;
use crate::routes::RouteTable;
use crate::transcode::AnswerPlan;
use crate::upstream::{Upstream, Upstreams};
use crate::wire_json::WireJson;

/// Everything a request needs: routes, upstreams, the descriptor pool and the settings.
#[derive(Debug)]
pub struct Edge {
    pub(crate) routes: RouteTable,
    /// The upstream of each route, by [`Route::index`](crate::routes::Route::index): resolved
    /// once here instead of by service name per request.
    pub(crate) route_upstreams: Vec<Option<Arc<Upstream>>>,
    /// How each route's answers become JSON, by route index ([`AnswerPlan`]).
    pub(crate) answer_plans: Vec<AnswerPlan>,
    /// The compiled plans of the answers' types.
    pub(crate) wire_json: WireJson,
    pub(crate) upstreams: Upstreams,
    pub(crate) pool: DescriptorPool,
    pub(crate) config: EdgeConfig,
    pub(crate) legacy: Option<Legacy>,
    pub(crate) limiter: Option<Limiter>,
    pub(crate) auth: Option<EdgeAuth>,
    pub(crate) max_message_bytes: usize,
    pub(crate) openapi: Vec<u8>,
}

impl Edge {
    /// Builds the edge over `pool`, with `upstreams` for the services it fronts.
    pub fn new(
        pool: DescriptorPool,
        config: EdgeConfig,
        upstreams: Upstreams,
        max_message_bytes: usize,
    ) -> Result<Self, SetupError> {
        let routes = RouteTable::build(&pool, |s| upstreams.get(s).is_some())?;
        let extension = pool.get_extension_by_name(http_rule::HTTP_EXTENSION);
        for service in pool.services() {
            if upstreams.get(service.full_name()).is_none()
                && service.methods().any(|m| {
                    http_rule::bindings(&m, extension.as_ref()).is_ok_and(|b| !b.is_empty())
                })
            {
                return Err(SetupError::NoUpstream(service.full_name().to_string()));
            }
        }
        let mut route_upstreams = vec![None; routes.len()];
        let mut answer_plans = vec![AnswerPlan::General; routes.len()];
        let mut wire_json = WireJson::new();
        for route in routes.routes() {
            route_upstreams[route.index] = upstreams.shared(route.service());
            answer_plans[route.index] = AnswerPlan::compile(&mut wire_json, route);
        }
        let openapi = serde_json::to_vec_pretty(&openapi::document(&routes)).unwrap_or_default();
        Ok(Self {
            legacy: config.legacy_url.clone().map(Legacy::new),
            limiter: config
                .rate_limit
                .map(|l| Limiter::Memory(RateLimiter::new(l))),
            auth: None,
            routes,
            route_upstreams,
            answer_plans,
            wire_json,
            upstreams,
            pool,
            config,
            max_message_bytes,
            openapi,
        })
    }

    /// Verifies tokens with `auth` (without it, the edge checks none).
    pub fn with_auth(mut self, auth: EdgeAuth) -> Self {
        self.auth = Some(auth);
        self
    }

    /// Limits clients with `limiter` instead of the in-process bucket of the settings.
    pub fn with_limiter(mut self, limiter: Limiter) -> Self {
        self.limiter = Some(limiter);
        self
    }

    /// Auth and the rate limit for a call of `rpc` (`pkg.Service/Method`; `None` for a path no
    /// RPC owns, which is limited but not guarded).
    pub(crate) async fn admit(
        &self,
        rpc: Option<&str>,
        headers: &HeaderMap,
        peer: Option<SocketAddr>,
    ) -> Result<(), EdgeError> {
        let guarded = rpc.is_some_and(|r| self.auth.as_ref().is_some_and(|a| !a.is_public(r)));
        let token = match &self.auth {
            Some(auth) if guarded || self.limiter.is_some() => auth.identify(headers).await,
            _ => None,
        };
        if let Some(limiter) = &self.limiter {
            let subject = match &token {
                Some(Ok(identity)) => Some(identity.subject.as_str()),
                _ => None,
            };
            let ip = client_key::client_ip(peer, headers, &self.config.trusted_proxies);
            limiter
                .check(&client_key::key(subject, ip))
                .await
                .map_err(|retry_after_secs| EdgeError::RateLimited { retry_after_secs })?;
        }
        if let Some(auth) = &self.auth {
            auth.decide(rpc, token)?;
        }
        Ok(())
    }

    /// A native gRPC call: admitted, then proxied.
    pub(crate) async fn grpc(&self, req: Request<Body>, peer: Option<SocketAddr>) -> Response {
        let rpc = req.uri().path().trim_start_matches('/');
        if let Err(e) = self.admit(Some(rpc), req.headers(), peer).await {
            return e.into_status().into_http::<Body>();
        }
        grpc_proxy::proxy(&self.upstreams, req).await
    }

    /// The route table.
    pub fn routes(&self) -> &RouteTable {
        &self.routes
    }

    /// How the answers of the route at `index` become JSON (direct, or through a message).
    pub fn answer_plan(&self, index: usize) -> AnswerPlan {
        self.answer_plans
            .get(index)
            .copied()
            .unwrap_or(AnswerPlan::General)
    }

    /// The OpenAPI document, as served at `/openapi.json`.
    pub fn openapi_json(&self) -> &[u8] {
        &self.openapi
    }
}
