//! The edge's own settings, from `MESH_EDGE_*` environment variables, validated at start with
//! one error naming every bad setting (the runtime's [`ConfigError`]).
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `MESH_EDGE_LEGACY_URL` | unset | strangler-fig upstream (`http://host:port`) for paths no rule owns; unset: 404 |
//! | `MESH_EDGE_MAX_BODY_BYTES` | `1048576` | largest REST request body |
//! | `MESH_EDGE_CORS_ORIGINS` | unset (CORS off) | allowed origins, comma-separated, or `*` |
//! | `MESH_EDGE_RATE_LIMIT` | `off` | per-client token bucket: `RATE/s` or `RATE/s,burst=N` (also `/m`) |
//! | `MESH_EDGE_DESCRIPTOR_SETS` | unset | extra encoded descriptor sets (`buf build -o`), comma-separated paths |
//! | `MESH_EDGE_UPSTREAMS` | unset | `pkg.Service=http://host:port`, comma-separated: upstream per extra (or overridden) service |
//! | `MESH_EDGE_AUTH` | `jwt` | `jwt`: verify bearer tokens with auth's JWKS on every RPC not public; `off`: no checks at the edge |
//! | `MESH_EDGE_PUBLIC_ROUTES` | [`DEFAULT_PUBLIC_ROUTES`] | RPCs open without a token: `pkg.Service/Method`, `pkg.Service/Prefix*`, `pkg.Service/*`, comma-separated; `none` for none |
//! | `MESH_EDGE_TRUSTED_PROXIES` | unset | IPs or CIDRs whose `X-Forwarded-For` is believed when keying rate limits |
//! | `MESH_EDGE_RATE_LIMIT_REDIS_URL` | `MESH_REDIS_URL` | Redis shared by the edge replicas for rate limits; unset (both): in process |
//! | `MESH_EDGE_UPSTREAM_CONNECTIONS` | `4` | HTTP/2 connections per upstream (addressed by IP) for REST calls, 1 to 64 ([`crate::pool`]) |
//! | `MESH_EDGE_UPSTREAM_MAX_IN_FLIGHT` | `1024` | REST calls in flight per upstream pool above which the edge answers `429` with `Retry-After` itself ([`crate::pool`]) |

use std::net::IpAddr;
use std::path::PathBuf;

use http::Uri;
use ipnet::IpNet;
use mesh_runtime::config::{ConfigError, Problem};

use crate::auth::PublicRoutes;
use crate::rate_limit::{RateLimit, parse_rate_limit};

/// The validated edge settings.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeConfig {
    /// Where paths no rule owns go.
    pub legacy_url: Option<Uri>,
    /// Largest REST body, in bytes.
    pub max_body_bytes: usize,
    /// CORS origins (`*` for any); empty: no CORS headers.
    pub cors_origins: Vec<String>,
    /// Per-client limit; `None`: unlimited.
    pub rate_limit: Option<RateLimit>,
    /// Extra descriptor sets to load.
    pub descriptor_sets: Vec<PathBuf>,
    /// Upstreams by service, overriding the module table's.
    pub upstreams: Vec<(String, Uri)>,
    /// Whether the edge verifies bearer tokens (`MESH_EDGE_AUTH`).
    pub jwt: bool,
    /// RPCs open without a token (patterns, see [`crate::auth::PublicRoutes`]).
    pub public_routes: Vec<String>,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<IpNet>,
    /// Redis for rate limits shared by replicas (else `MESH_REDIS_URL`, else in process).
    pub rate_limit_redis_url: Option<String>,
    /// HTTP/2 connections per upstream for REST calls ([`crate::pool`]).
    pub upstream_connections: usize,
    /// REST calls in flight per upstream pool before the edge refuses more itself.
    pub upstream_max_in_flight: usize,
}

/// The RPCs open without a token when `MESH_EDGE_PUBLIC_ROUTES` is not set: sign-up, login,
/// token refresh and logout, the JWKS, client credentials, and catalog reads.
pub const DEFAULT_PUBLIC_ROUTES: &[&str] = &[
    "auth.v1.AuthService/SignUp",
    "auth.v1.AuthService/Login",
    "auth.v1.AuthService/Refresh",
    "auth.v1.AuthService/Logout",
    "auth.v1.AuthService/GetJwks",
    "auth.v1.AuthService/IssueServiceToken",
    "product.v1.ProductService/GetProduct",
    "product.v1.ProductService/BatchGetProducts",
    "product.v1.ProductService/ListProducts",
    "product.v1.ProductService/ListCategories",
];

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            legacy_url: None,
            max_body_bytes: 1 << 20,
            cors_origins: Vec::new(),
            rate_limit: None,
            descriptor_sets: Vec::new(),
            upstreams: Vec::new(),
            jwt: true,
            public_routes: DEFAULT_PUBLIC_ROUTES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            trusted_proxies: Vec::new(),
            rate_limit_redis_url: None,
            upstream_connections: crate::upstream::DEFAULT_POOL_SIZE,
            upstream_max_in_flight: crate::pool::DEFAULT_MAX_IN_FLIGHT,
        }
    }
}

impl EdgeConfig {
    /// Reads and validates the settings through `env` (the process environment in production).
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let mut config = Self::default();
        let mut problem = |setting: &str, value: &str, reason: String| {
            problems.push(Problem {
                setting: setting.into(),
                value: value.into(),
                reason,
            });
        };
        if let Some(raw) = env("MESH_EDGE_LEGACY_URL").filter(|s| !s.trim().is_empty()) {
            match parse_http_url(&raw) {
                Ok(uri) => config.legacy_url = Some(uri),
                Err(e) => problem("MESH_EDGE_LEGACY_URL", &raw, e),
            }
        }
        if let Some(raw) = env("MESH_EDGE_MAX_BODY_BYTES") {
            match raw.trim().parse::<usize>() {
                Ok(n) if n >= 1 => config.max_body_bytes = n,
                _ => problem(
                    "MESH_EDGE_MAX_BODY_BYTES",
                    &raw,
                    "expected a whole number of bytes, at least 1".into(),
                ),
            }
        }
        if let Some(raw) = env("MESH_EDGE_CORS_ORIGINS") {
            config.cors_origins = split(&raw).map(str::to_string).collect();
            if let Some(bad) = config
                .cors_origins
                .iter()
                .find(|o| *o != "*" && !(o.starts_with("http://") || o.starts_with("https://")))
            {
                problem(
                    "MESH_EDGE_CORS_ORIGINS",
                    &raw,
                    format!("origin {bad:?} must be `*` or start with http:// or https://"),
                );
            }
        }
        if let Some(raw) = env("MESH_EDGE_RATE_LIMIT") {
            match parse_rate_limit(&raw) {
                Ok(limit) => config.rate_limit = limit,
                Err(e) => problem("MESH_EDGE_RATE_LIMIT", &raw, e),
            }
        }
        if let Some(raw) = env("MESH_EDGE_DESCRIPTOR_SETS") {
            for path in split(&raw) {
                let path = PathBuf::from(path);
                if !path.is_file() {
                    problem(
                        "MESH_EDGE_DESCRIPTOR_SETS",
                        &raw,
                        format!("{} is not a readable file", path.display()),
                    );
                }
                config.descriptor_sets.push(path);
            }
        }
        if let Some(raw) = env("MESH_EDGE_UPSTREAMS") {
            for item in split(&raw) {
                match parse_upstream(item) {
                    Ok(upstream) => config.upstreams.push(upstream),
                    Err(e) => problem("MESH_EDGE_UPSTREAMS", &raw, e),
                }
            }
        }
        if let Some(raw) = env("MESH_EDGE_AUTH") {
            match raw.trim() {
                "jwt" | "" => config.jwt = true,
                "off" => config.jwt = false,
                _ => problem("MESH_EDGE_AUTH", &raw, "expected `jwt` or `off`".into()),
            }
        }
        if let Some(raw) = env("MESH_EDGE_PUBLIC_ROUTES") {
            config.public_routes = if raw.trim() == "none" {
                Vec::new()
            } else {
                split(&raw).map(str::to_string).collect()
            };
            if let Err(e) = PublicRoutes::parse(&config.public_routes) {
                problem("MESH_EDGE_PUBLIC_ROUTES", &raw, e);
            }
        }
        if let Some(raw) = env("MESH_EDGE_TRUSTED_PROXIES") {
            for item in split(&raw) {
                match parse_net(item) {
                    Some(net) => config.trusted_proxies.push(net),
                    None => problem(
                        "MESH_EDGE_TRUSTED_PROXIES",
                        &raw,
                        format!("{item:?} is not an IP address or CIDR (10.0.0.0/8)"),
                    ),
                }
            }
        }
        if let Some(raw) = env("MESH_EDGE_UPSTREAM_CONNECTIONS") {
            match raw.trim().parse::<usize>() {
                Ok(n @ 1..=64) => config.upstream_connections = n,
                _ => problem(
                    "MESH_EDGE_UPSTREAM_CONNECTIONS",
                    &raw,
                    "expected a whole number from 1 to 64".into(),
                ),
            }
        }
        if let Some(raw) = env("MESH_EDGE_UPSTREAM_MAX_IN_FLIGHT") {
            match raw.trim().parse::<usize>() {
                Ok(n @ 1..=1_000_000) => config.upstream_max_in_flight = n,
                _ => problem(
                    "MESH_EDGE_UPSTREAM_MAX_IN_FLIGHT",
                    &raw,
                    "expected a whole number from 1 to 1000000".into(),
                ),
            }
        }
        if let Some(raw) = env("MESH_EDGE_RATE_LIMIT_REDIS_URL").filter(|s| !s.trim().is_empty()) {
            if raw.starts_with("redis://") || raw.starts_with("rediss://") {
                config.rate_limit_redis_url = Some(raw.trim().to_string());
            } else {
                problem(
                    "MESH_EDGE_RATE_LIMIT_REDIS_URL",
                    &raw,
                    "expected redis://host:port".into(),
                );
            }
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError { problems })
        }
    }
}

/// Settings given as flags of `mesh serve` (`--descriptor-set FILE`, `--upstream
/// pkg.Service=host:port`), added to the environment's by [`crate::build`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EdgeFlags {
    /// Extra descriptor sets.
    pub descriptor_sets: Vec<PathBuf>,
    /// Upstreams by service.
    pub upstreams: Vec<(String, Uri)>,
}

static FLAGS: std::sync::OnceLock<EdgeFlags> = std::sync::OnceLock::new();

/// Records the flags of this process's `mesh serve` for the edge target (once; later calls are
/// ignored).
pub fn set_flags(flags: EdgeFlags) {
    let _ = FLAGS.set(flags);
}

impl EdgeConfig {
    /// These settings with the process's flags ([`set_flags`]) added: flag descriptor sets after
    /// the environment's, flag upstreams overriding the environment's for the same service.
    pub fn with_flags(mut self) -> Self {
        if let Some(flags) = FLAGS.get() {
            self.descriptor_sets
                .extend(flags.descriptor_sets.iter().cloned());
            for (service, uri) in &flags.upstreams {
                self.upstreams.retain(|(s, _)| s != service);
                self.upstreams.push((service.clone(), uri.clone()));
            }
        }
        self
    }
}

/// `pkg.Service=http://host:port` (or `pkg.Service=host:port`, plain HTTP/2 assumed).
pub fn parse_upstream(item: &str) -> Result<(String, Uri), String> {
    match item.split_once('=') {
        Some((service, url)) if service.trim().contains('.') => {
            let url = url.trim();
            let url = if url.contains("://") {
                url.to_string()
            } else {
                format!("http://{url}")
            };
            parse_http_url(&url)
                .map(|uri| (service.trim().to_string(), uri))
                .map_err(|e| format!("{item}: {e}"))
        }
        _ => Err(format!(
            "{item:?}: expected pkg.Service=host:port or pkg.Service=http://host:port"
        )),
    }
}

/// An IP (a one-address network) or a CIDR.
pub fn parse_net(raw: &str) -> Option<IpNet> {
    let raw = raw.trim();
    raw.parse::<IpNet>()
        .ok()
        .or_else(|| raw.parse::<IpAddr>().ok().map(IpNet::from))
}

fn split(raw: &str) -> impl Iterator<Item = &str> {
    raw.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn parse_http_url(raw: &str) -> Result<Uri, String> {
    let uri: Uri = raw
        .trim()
        .parse()
        .map_err(|e| format!("not a URL ({e}); expected http://host:port"))?;
    if uri.scheme_str() != Some("http") && uri.scheme_str() != Some("https") || uri.host().is_none()
    {
        return Err("expected an http:// or https:// URL with a host".into());
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_names_bad_settings() {
        let env = |k: &str| match k {
            "MESH_EDGE_LEGACY_URL" => Some("ftp://x".to_string()),
            "MESH_EDGE_RATE_LIMIT" => Some("fast".to_string()),
            "MESH_EDGE_UPSTREAMS" => Some("nodot=http://a:1".to_string()),
            "MESH_EDGE_UPSTREAM_CONNECTIONS" => Some("0".to_string()),
            "MESH_EDGE_UPSTREAM_MAX_IN_FLIGHT" => Some("none".to_string()),
            _ => None,
        };
        let err = EdgeConfig::from_env(env).unwrap_err().to_string();
        for s in [
            "MESH_EDGE_LEGACY_URL",
            "MESH_EDGE_RATE_LIMIT",
            "MESH_EDGE_UPSTREAMS",
            "MESH_EDGE_UPSTREAM_CONNECTIONS",
            "MESH_EDGE_UPSTREAM_MAX_IN_FLIGHT",
        ] {
            assert!(err.contains(s), "{err}");
        }
        let ok = EdgeConfig::from_env(|k| match k {
            "MESH_EDGE_RATE_LIMIT" => Some("10/s,burst=3".into()),
            "MESH_EDGE_UPSTREAMS" => Some("x.v1.X=http://127.0.0.1:9".into()),
            "MESH_EDGE_UPSTREAM_CONNECTIONS" => Some("8".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(ok.upstream_connections, 8);
        assert_eq!(EdgeConfig::default().upstream_connections, 4);
        assert_eq!(
            ok.rate_limit,
            Some(RateLimit {
                per_second: 10.0,
                burst: 3
            })
        );
        assert_eq!(ok.upstreams.len(), 1);
        assert_eq!(parse_rate_limit("off").unwrap(), None);
    }
}
