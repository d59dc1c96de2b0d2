//! The edge's own settings, from `MESH_EDGE_*` environment variables, validated before anything
//! binds with one error naming every bad setting.
//!
//! Each setting is declared once below (variable, kind, default, what it does); `mesh modules
//! --settings` and `docs/settings.md` list them.

use std::net::IpAddr;
use std::path::PathBuf;

use http::Uri;
use ipnet::IpNet;
use mesh_runtime::settings::{ModuleSettings, Setting, SettingErrors, Settings};

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

const LEGACY_URL: Setting = Setting::text(
    "MESH_EDGE_LEGACY_URL",
    "",
    "Strangler-fig upstream (`http://host:port`) for paths no rule owns; unset: 404.",
);
const MAX_BODY_BYTES: Setting = Setting::number(
    "MESH_EDGE_MAX_BODY_BYTES",
    1..=1 << 30,
    "1048576",
    "Largest REST request body, in bytes.",
);
const CORS_ORIGINS: Setting = Setting::text(
    "MESH_EDGE_CORS_ORIGINS",
    "",
    "Allowed CORS origins, comma-separated (`http(s)://...`), or `*`; unset: CORS off.",
);
const RATE_LIMIT: Setting = Setting::text(
    "MESH_EDGE_RATE_LIMIT",
    "off",
    "Per-client token bucket: `off`, `RATE/s` or `RATE/s,burst=N` (also `/m`).",
);
const DESCRIPTOR_SETS: Setting = Setting::text(
    "MESH_EDGE_DESCRIPTOR_SETS",
    "",
    "Extra encoded descriptor sets (`buf build -o`), comma-separated readable files, whose services the edge fronts too.",
);
const UPSTREAMS: Setting = Setting::text(
    "MESH_EDGE_UPSTREAMS",
    "",
    "`pkg.Service=http://host:port`, comma-separated: the upstream of each extra (or overridden) service.",
);
const AUTH: Setting = Setting::text(
    "MESH_EDGE_AUTH",
    "jwt",
    "`jwt`: verify bearer tokens with auth's JWKS on every RPC not public; `off`: no checks at the edge.",
);
const PUBLIC_ROUTES: Setting = Setting::text(
    "MESH_EDGE_PUBLIC_ROUTES",
    "",
    "RPCs open without a token, comma-separated `pkg.Service/Method`, `pkg.Service/Prefix*` or `pkg.Service/*`; `none` for none; unset: sign-up, login, refresh, logout, JWKS, service tokens and catalog reads.",
);
const TRUSTED_PROXIES: Setting = Setting::text(
    "MESH_EDGE_TRUSTED_PROXIES",
    "",
    "IPs or CIDRs, comma-separated, whose `X-Forwarded-For` is believed when keying rate limits.",
);
const RATE_LIMIT_REDIS_URL: Setting = Setting::text(
    "MESH_EDGE_RATE_LIMIT_REDIS_URL",
    "",
    "Redis shared by the edge replicas for rate limits (`redis://host:port`); unset: MESH_REDIS_URL, else in process.",
);
const UPSTREAM_CONNECTIONS: Setting = Setting::number(
    "MESH_EDGE_UPSTREAM_CONNECTIONS",
    1..=64,
    "4",
    "HTTP/2 connections per upstream (addressed by IP) for REST calls.",
);
const UPSTREAM_MAX_IN_FLIGHT: Setting = Setting::number(
    "MESH_EDGE_UPSTREAM_MAX_IN_FLIGHT",
    1..=1_000_000,
    "1024",
    "REST calls in flight per upstream pool above which the edge answers 429 with Retry-After itself.",
);

/// The edge module's settings, for its module row.
pub const SETTINGS: ModuleSettings = ModuleSettings {
    declared: &[
        LEGACY_URL,
        MAX_BODY_BYTES,
        CORS_ORIGINS,
        RATE_LIMIT,
        DESCRIPTOR_SETS,
        UPSTREAMS,
        AUTH,
        PUBLIC_ROUTES,
        TRUSTED_PROXIES,
        RATE_LIMIT_REDIS_URL,
        UPSTREAM_CONNECTIONS,
        UPSTREAM_MAX_IN_FLIGHT,
    ],
    check: |env| EdgeConfig::from_env(env).map(drop),
};

impl EdgeConfig {
    /// Reads and validates the settings through `env` (the process environment in production);
    /// every bad one named.
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Self, SettingErrors> {
        let mut s = Settings::new(env);
        let mut config = Self {
            legacy_url: s
                .parse(&LEGACY_URL, |raw| {
                    if raw.trim().is_empty() {
                        Ok(None)
                    } else {
                        parse_http_url(raw).map(Some)
                    }
                })
                .flatten(),
            max_body_bytes: s.number(&MAX_BODY_BYTES),
            cors_origins: s
                .parse(&CORS_ORIGINS, |raw| {
                    let origins: Vec<String> = split(raw).map(str::to_string).collect();
                    match origins.iter().find(|o| {
                        *o != "*" && !(o.starts_with("http://") || o.starts_with("https://"))
                    }) {
                        Some(bad) => Err(format!(
                            "origin {bad:?} must be `*` or start with http:// or https://"
                        )),
                        None => Ok(origins),
                    }
                })
                .unwrap_or_default(),
            rate_limit: s.parse(&RATE_LIMIT, parse_rate_limit).flatten(),
            descriptor_sets: s
                .parse(&DESCRIPTOR_SETS, |raw| {
                    let paths: Vec<PathBuf> = split(raw).map(PathBuf::from).collect();
                    match paths.iter().find(|p| !p.is_file()) {
                        Some(bad) => Err(format!("{} is not a readable file", bad.display())),
                        None => Ok(paths),
                    }
                })
                .unwrap_or_default(),
            upstreams: s
                .parse(&UPSTREAMS, |raw| split(raw).map(parse_upstream).collect())
                .unwrap_or_default(),
            jwt: s
                .parse(&AUTH, |raw| match raw.trim() {
                    "jwt" | "" => Ok(true),
                    "off" => Ok(false),
                    _ => Err("expected `jwt` or `off`".to_string()),
                })
                .unwrap_or(true),
            trusted_proxies: s
                .parse(&TRUSTED_PROXIES, |raw| {
                    split(raw)
                        .map(|item| {
                            parse_net(item).ok_or_else(|| {
                                format!("{item:?} is not an IP address or CIDR (10.0.0.0/8)")
                            })
                        })
                        .collect()
                })
                .unwrap_or_default(),
            rate_limit_redis_url: s
                .parse(&RATE_LIMIT_REDIS_URL, |raw| {
                    let raw = raw.trim();
                    if raw.is_empty() {
                        Ok(None)
                    } else if raw.starts_with("redis://") || raw.starts_with("rediss://") {
                        Ok(Some(raw.to_string()))
                    } else {
                        Err("expected redis://host:port".to_string())
                    }
                })
                .flatten(),
            upstream_connections: s.number(&UPSTREAM_CONNECTIONS),
            upstream_max_in_flight: s.number(&UPSTREAM_MAX_IN_FLIGHT),
            ..Self::default()
        };
        if let Some(routes) = s.parse(&PUBLIC_ROUTES, |raw| {
            let routes: Vec<String> = if raw.trim() == "none" {
                Vec::new()
            } else {
                split(raw).map(str::to_string).collect()
            };
            PublicRoutes::parse(&routes).map(|_| routes)
        }) {
            config.public_routes = routes;
        }
        s.finish(config)
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
