//! The edge built from the process context (the module table's constructor): settings, descriptor
//! sets, one upstream per module, token checks and the rate limiter.

use std::sync::Arc;

use futures::future::BoxFuture;
use mesh_runtime::client::ClientOptions;
use mesh_runtime::settings::{SettingError, process_env};
use mesh_runtime::{BuildError, ServiceContext, ServiceRoutes};

use crate::auth::{EdgeAuth, PublicRoutes};
use crate::config::EdgeConfig;
use crate::descriptors::{SetupError, load_pool};
use crate::edge::Edge;
use crate::limiter::Limiter;
use crate::redis_limit;
use crate::upstream::{Upstream, Upstreams};

/// Builds the edge from the process context: the module table's constructor for `edge`.
///
/// Settings come from `MESH_EDGE_*` ([`config`]) and `mesh serve`'s `--descriptor-set` /
/// `--upstream` flags ([`config::set_flags`]); our services' upstreams from the context
/// (`MESH_<SERVICE>_ADDR`), others' from `MESH_EDGE_UPSTREAMS` and `--upstream`.
pub fn build(ctx: ServiceContext) -> BoxFuture<'static, Result<ServiceRoutes, BuildError>> {
    Box::pin(async move {
        let config = EdgeConfig::from_env(process_env)?.with_flags();
        let edge = from_context(&ctx, config)?;
        Ok(Arc::new(edge).service_routes())
    })
}

/// The edge for `ctx` with `config`.
pub fn from_context(ctx: &ServiceContext, config: EdgeConfig) -> Result<Edge, BuildError> {
    let mut extra = Vec::new();
    for path in &config.descriptor_sets {
        let bytes = std::fs::read(path).map_err(|e| SetupError::DescriptorSet {
            source_name: path.display().to_string(),
            reason: format!("reading it (MESH_EDGE_DESCRIPTOR_SETS): {e}"),
        })?;
        extra.push((path.display().to_string(), bytes));
    }
    let pool = load_pool(&extra)?;
    let modules: Vec<&str> = ctx
        .config()
        .services
        .keys()
        .copied()
        .filter(|m| *m != ctx.name())
        .collect();
    let mut upstreams = Upstreams::new();
    let mut by_module = std::collections::HashMap::new();
    for (service, module) in Upstreams::owned_services(&pool, &modules) {
        // `audit.v1.AuditService` is served by every service, so no one module owns it.
        if service.starts_with("audit.") {
            continue;
        }
        // One upstream (channel and pool) per module, shared by the services it owns.
        let upstream = match by_module.get(&module) {
            Some(upstream) => Upstream::clone(upstream),
            None => {
                let (uri, options) = ctx.peer(&module)?;
                let upstream = Upstream::connect_limited(
                    &module,
                    uri,
                    options,
                    config.upstream_connections,
                    config.upstream_max_in_flight,
                );
                by_module.insert(module, upstream.clone());
                upstream
            }
        };
        upstreams.insert(service, upstream);
    }
    let options = || ClientOptions {
        default_deadline: ctx.config().default_deadline,
        ..ClientOptions::default()
    };
    for (service, uri) in &config.upstreams {
        upstreams.insert(
            service.clone(),
            Upstream::connect_limited(
                uri.to_string(),
                uri.clone(),
                options(),
                config.upstream_connections,
                config.upstream_max_in_flight,
            ),
        );
    }
    let public = PublicRoutes::parse(&config.public_routes).map_err(|reason| {
        SettingError::new(
            "MESH_EDGE_PUBLIC_ROUTES",
            config.public_routes.join(","),
            reason,
        )
    })?;
    let redis_url = config
        .rate_limit_redis_url
        .clone()
        .or_else(|| ctx.config().events.redis_url.clone());
    let limiter = match (config.rate_limit, redis_url) {
        (Some(limit), Some(url)) => Some(Limiter::Redis(
            redis_limit::RedisLimiter::connect(&url, redis_limit::DEFAULT_PREFIX, limit)
                .map_err(|e| format!("rate limit store {url} (MESH_EDGE_RATE_LIMIT_REDIS_URL or MESH_REDIS_URL): {e}"))?,
        )),
        _ => None,
    };
    let jwt = config.jwt;
    let mut edge = Edge::new(pool, config, upstreams, ctx.max_message_bytes())?;
    if jwt {
        let rejections = mesh_runtime::auth::AuthRejections::of(ctx.metrics(), ctx.name());
        edge =
            edge.with_auth(EdgeAuth::from_auth(ctx.channel("auth")?, public).counted(rejections));
    }
    if let Some(limiter) = limiter {
        edge = edge.with_limiter(limiter);
    }
    Ok(edge)
}
