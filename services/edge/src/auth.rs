//! Bearer tokens at the edge: every RPC that is not declared public (`MESH_EDGE_PUBLIC_ROUTES`)
//! needs a valid access token, verified with the runtime's [`Verifier`] against the auth
//! service's JWKS. REST and gRPC passthrough are checked alike, by the RPC's full name.
//!
//! - Public RPCs run with or without a token (a token that verifies still names the client for
//!   rate limiting; a bad one is ignored, as the services' own guard does).
//! - The token always goes upstream as `authorization` metadata: each service checks roles
//!   itself (its policy table); the edge only turns away the unauthenticated early.
//! - Keys: fetched from auth's `GetJwks` on first use and again when a token names an unknown
//!   `kid` (a rotation). Refreshes for unknown `kid`s are rate limited across all `kid`s
//!   ([`RefreshLimitedKeys`]), so a flood of forged `kid`s cannot turn the edge into a JWKS
//!   hammer.
//! - A verified token is remembered until it expires ([`EdgeAuth`] keeps a bounded cache), so a
//!   client's every request does not pay for a signature check.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use http::HeaderMap;
use jsonwebtoken::DecodingKey;
use mesh_runtime::auth::{
    AuthError, AuthRejections, Clock, Identity, JwksClient, KeySource, SystemClock, Verifier,
    VerifierSettings,
};
use mesh_runtime::client::MeshChannel;

use crate::rate_limit::{RateLimit, RateLimiter};

/// The RPCs open without a token.
///
/// Patterns, each `pkg.Service/Method` (exact), `pkg.Service/Prefix*` (methods starting with
/// `Prefix`) or `pkg.Service/*` (the whole service).
#[derive(Debug, Clone, Default)]
pub struct PublicRoutes {
    exact: std::collections::HashSet<String>,
    prefixes: Vec<String>,
}

impl PublicRoutes {
    /// Parses `patterns`; the error names the bad pattern.
    pub fn parse(patterns: &[String]) -> Result<Self, String> {
        let mut routes = Self::default();
        for pattern in patterns {
            let pattern = pattern.trim().trim_start_matches('/');
            let valid = pattern.split_once('/').is_some_and(|(service, method)| {
                service.contains('.')
                    && !service.contains('*')
                    && !method.is_empty()
                    && !method.contains('/')
                    && !method.trim_end_matches('*').contains('*')
            });
            if !valid {
                return Err(format!(
                    "{pattern:?} is not an RPC pattern: expected pkg.Service/Method, pkg.Service/Prefix* or pkg.Service/*"
                ));
            }
            match pattern.strip_suffix('*') {
                Some(prefix) => routes.prefixes.push(prefix.to_string()),
                None => {
                    routes.exact.insert(pattern.to_string());
                }
            }
        }
        Ok(routes)
    }

    /// Whether the RPC `rpc` (`pkg.Service/Method`, without the leading `/`) is public.
    pub fn is_public(&self, rpc: &str) -> bool {
        self.exact.contains(rpc) || self.prefixes.iter().any(|p| rpc.starts_with(p.as_str()))
    }
}

/// How often unknown `kid`s may trigger a JWKS fetch, across all `kid`s: a burst of 3, then one
/// per 10 s.
pub const JWKS_REFRESH_LIMIT: RateLimit = RateLimit {
    per_second: 0.1,
    burst: 3,
};

/// How long a key found through the JWKS is used before asking the source again (which answers
/// from its own cache, refreshed at each rotation).
const KEY_TTL: Duration = Duration::from_secs(60);

/// The auth service's JWKS ([`JwksClient`]) with refreshes for unknown `kid`s rate limited
/// globally ([`JWKS_REFRESH_LIMIT`]); the client itself already makes them single-flight and
/// remembers a missing `kid` for 30 s.
#[derive(Debug)]
pub struct RefreshLimitedKeys {
    inner: Arc<dyn KeySource>,
    known: RwLock<HashMap<String, (Arc<DecodingKey>, Instant)>>,
    budget: RateLimiter,
    lookups: AtomicU64,
}

impl RefreshLimitedKeys {
    /// Keys from the auth service reached through `channel`.
    pub fn from_auth(channel: MeshChannel) -> Self {
        Self::new(Arc::new(JwksClient::new(channel)), JWKS_REFRESH_LIMIT)
    }

    /// Keys from `inner`, asking it about a `kid` not known yet at most as `limit` allows.
    pub fn new(inner: Arc<dyn KeySource>, limit: RateLimit) -> Self {
        Self {
            inner,
            known: RwLock::new(HashMap::new()),
            budget: RateLimiter::new(limit),
            lookups: AtomicU64::new(0),
        }
    }

    /// How many times an unknown `kid` was looked up in the source (each may be a fetch).
    pub fn source_lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }

    fn known(&self, kid: &str) -> Option<Arc<DecodingKey>> {
        let known = self.known.read().ok()?;
        let (key, at) = known.get(kid)?;
        (at.elapsed() < KEY_TTL).then(|| key.clone())
    }
}

impl KeySource for RefreshLimitedKeys {
    fn key<'a>(&'a self, kid: &'a str) -> BoxFuture<'a, Result<Option<Arc<DecodingKey>>, String>> {
        Box::pin(async move {
            if let Some(key) = self.known(kid) {
                return Ok(Some(key));
            }
            let refreshed_recently = self
                .known
                .read()
                .map(|k| k.contains_key(kid))
                .unwrap_or(false);
            // A key seen before (its entry merely aged) is asked for again without spending
            // the budget: the source answers from its cache unless the key was rotated out.
            if !refreshed_recently && self.budget.check("jwks").is_err() {
                return Ok(None);
            }
            self.lookups.fetch_add(1, Ordering::Relaxed);
            let key = self.inner.key(kid).await?;
            if let Ok(mut known) = self.known.write() {
                match &key {
                    Some(key) => {
                        if known.len() >= 64 {
                            known.retain(|_, (_, at)| at.elapsed() < KEY_TTL);
                        }
                        known.insert(kid.to_string(), (key.clone(), Instant::now()));
                    }
                    None => {
                        known.remove(kid);
                    }
                }
            }
            Ok(key)
        })
    }
}

/// The largest number of verified tokens remembered.
const MAX_CACHED_TOKENS: usize = 10_000;

/// Token checks at the edge.
#[derive(Debug)]
pub struct EdgeAuth {
    verifier: Verifier,
    clock: Arc<dyn Clock>,
    public: PublicRoutes,
    verified: Mutex<HashMap<String, Identity>>,
    rejections: Option<AuthRejections>,
}

impl EdgeAuth {
    /// Checks tokens with keys from the auth service behind `channel` (issuer and audience from
    /// `MESH_JWT_ISSUER` / `MESH_JWT_AUDIENCE`), with `public` RPCs open.
    pub fn from_auth(channel: MeshChannel, public: PublicRoutes) -> Self {
        let keys = Arc::new(RefreshLimitedKeys::from_auth(channel));
        Self::new(
            keys,
            VerifierSettings::from_env(),
            Arc::new(SystemClock),
            public,
        )
    }

    /// Checks tokens with `keys` and `settings` against `clock`.
    pub fn new(
        keys: Arc<dyn KeySource>,
        settings: VerifierSettings,
        clock: Arc<dyn Clock>,
        public: PublicRoutes,
    ) -> Self {
        Self {
            verifier: Verifier::new(keys, settings).with_clock(clock.clone()),
            clock,
            public,
            verified: Mutex::new(HashMap::new()),
            rejections: None,
        }
    }

    /// Counts the calls refused for their token in `rejections`.
    pub fn counted(mut self, rejections: AuthRejections) -> Self {
        self.rejections = Some(rejections);
        self
    }

    /// Whether `rpc` (`pkg.Service/Method`) is open without a token.
    pub fn is_public(&self, rpc: &str) -> bool {
        self.public.is_public(rpc)
    }

    /// The caller named by the bearer token of `headers`: `None` without a token.
    pub async fn identify(&self, headers: &HeaderMap) -> Option<Result<Identity, AuthError>> {
        let value = headers.get(http::header::AUTHORIZATION)?;
        let Some(token) = value.to_str().ok().and_then(bearer) else {
            return Some(Err(AuthError::NotAJwt(
                "the authorization header is not `Bearer <jwt>`".into(),
            )));
        };
        let now = self.clock.now_unix();
        let leeway = self.verifier.settings().leeway;
        if let Some(identity) = self
            .verified
            .lock()
            .ok()
            .and_then(|c| c.get(token).cloned())
            && now < identity.expires_at + leeway
        {
            return Some(Ok(identity));
        }
        let result = self.verifier.verify(token).await;
        if let Ok(identity) = &result
            && let Ok(mut cache) = self.verified.lock()
        {
            if cache.len() >= MAX_CACHED_TOKENS {
                cache.retain(|_, i| now < i.expires_at + leeway);
                if cache.len() >= MAX_CACHED_TOKENS {
                    cache.clear();
                }
            }
            cache.insert(token.to_string(), identity.clone());
        }
        Some(result)
    }

    /// Decides a call of `rpc` (`None`: a path no RPC owns, which the edge does not guard)
    /// given what [`identify`](Self::identify) found; a refusal is counted.
    pub fn decide(
        &self,
        rpc: Option<&str>,
        token: Option<Result<Identity, AuthError>>,
    ) -> Result<(), AuthError> {
        let refusal = match (rpc, token) {
            (None, _) | (_, Some(Ok(_))) => return Ok(()),
            (Some(rpc), _) if self.is_public(rpc) => return Ok(()),
            (Some(_), None) => AuthError::Missing,
            (Some(_), Some(Err(e))) => e,
        };
        if let Some(rejections) = &self.rejections {
            rejections.record(&refusal);
        }
        Err(refusal)
    }
}

/// The token of an `authorization` value `Bearer <token>` (scheme case-insensitive).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_patterns() {
        let p = PublicRoutes::parse(&[
            "a.v1.A/Get".into(),
            "b.v1.B/List*".into(),
            "/c.v1.C/*".into(),
        ])
        .unwrap();
        assert!(p.is_public("a.v1.A/Get"));
        assert!(!p.is_public("a.v1.A/GetMore"));
        assert!(p.is_public("b.v1.B/ListThings"));
        assert!(!p.is_public("b.v1.B/Delete"));
        assert!(p.is_public("c.v1.C/Anything"));
        for bad in ["nodot/Get", "a.v1.A", "a.v1.A/", "a.v1.A/G*t", "a.v1.*/Get"] {
            assert!(PublicRoutes::parse(&[bad.into()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn bearer_values() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }
}
