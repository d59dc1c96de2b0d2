//! Where verification keys come from.
//!
//! [`JwksClient`] fetches the auth service's JWK Set over gRPC (`GetJwks`, a public RPC), keeps
//! it, and fetches again when a token names a `kid` it does not know (a key rotated in since)
//! and when the set is older than [`JWKS_MAX_AGE`] (so a key rotated out of the JWKS stops
//! verifying here within that time; while auth cannot be reached the set fetched last is kept,
//! asked again every [`RETRY_AFTER_FAILURE`]). Fetches are single-flight (concurrent misses wait for one fetch), and a `kid` still unknown
//! after a fetch is remembered for [`NEGATIVE_TTL`], so forged `kid`s cannot make a service hammer
//! the auth service. [`StaticKeys`] is a local set, used by the auth service itself (it verifies
//! with its own keys, without calling itself) and by tests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use jsonwebtoken::DecodingKey;
use mesh_contracts::auth::v1::auth_service_client::AuthServiceClient;
use mesh_contracts::auth::v1::{GetJwksRequest, Jwk};
use tokio::time::Instant;

use crate::auth::clock::{Clock, SystemClock};
use crate::client::MeshChannel;

/// How long a `kid` still unknown after a fetch is not fetched for again.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(30);

/// How long a fetched JWK Set is used before it is fetched again, in seconds (the HTTP JWKS
/// document's `Cache-Control: max-age` says the same).
pub const JWKS_MAX_AGE: i64 = 60;

/// After a failed fetch of a stale set, how long (seconds) the old set is used before asking
/// again.
pub const RETRY_AFTER_FAILURE: i64 = 5;

/// `fetched_at` of a client that has never fetched.
const NEVER: i64 = i64::MIN;

/// A set of verification keys by `kid`.
pub trait KeySource: Send + Sync + std::fmt::Debug + 'static {
    /// The key named `kid`, fetching the current set first if it is unknown. `Err` when the
    /// keys cannot be obtained at all (the auth service is down).
    fn key<'a>(&'a self, kid: &'a str) -> BoxFuture<'a, Result<Option<Arc<DecodingKey>>, String>>;
}

/// Turns the `OKP`/`Ed25519` keys of a JWK Set into decoding keys; other key types are skipped.
pub fn decoding_keys(keys: &[Jwk]) -> HashMap<String, Arc<DecodingKey>> {
    keys.iter()
        .filter(|k| k.kty == "OKP" && k.crv == "Ed25519" && !k.kid.is_empty())
        .filter_map(|k| {
            DecodingKey::from_ed_components(&k.x)
                .ok()
                .map(|d| (k.kid.clone(), Arc::new(d)))
        })
        .collect()
}

/// A local key set that its owner replaces as keys rotate.
#[derive(Clone, Default)]
pub struct StaticKeys {
    keys: Arc<RwLock<HashMap<String, Arc<DecodingKey>>>>,
}

impl std::fmt::Debug for StaticKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<String> = self
            .keys
            .read()
            .map(|k| k.keys().cloned().collect())
            .unwrap_or_default();
        f.debug_struct("StaticKeys").field("kids", &kids).finish()
    }
}

impl StaticKeys {
    /// The keys of `jwks`.
    pub fn new(jwks: &[Jwk]) -> Self {
        let keys = Self::default();
        keys.replace(jwks);
        keys
    }

    /// Replaces the whole set with the keys of `jwks`.
    pub fn replace(&self, jwks: &[Jwk]) {
        let fresh = decoding_keys(jwks);
        if let Ok(mut keys) = self.keys.write() {
            *keys = fresh;
        }
    }

    fn get(&self, kid: &str) -> Option<Arc<DecodingKey>> {
        self.keys.read().ok().and_then(|k| k.get(kid).cloned())
    }
}

impl KeySource for StaticKeys {
    fn key<'a>(&'a self, kid: &'a str) -> BoxFuture<'a, Result<Option<Arc<DecodingKey>>, String>> {
        Box::pin(async move { Ok(self.get(kid)) })
    }
}

/// The auth service's JWK Set, fetched over gRPC and cached for [`JWKS_MAX_AGE`].
#[derive(Debug, Clone)]
pub struct JwksClient {
    client: AuthServiceClient<MeshChannel>,
    keys: StaticKeys,
    /// Held while fetching: concurrent misses wait here, then find the key.
    fetch: Arc<tokio::sync::Mutex<HashMap<String, Instant>>>,
    /// When the cached set was fetched ([`Clock`] seconds), [`NEVER`] before the first fetch.
    fetched_at: Arc<AtomicI64>,
    clock: Arc<dyn Clock>,
}

impl JwksClient {
    /// A cache over the auth service reached through `channel` (fetches lazily).
    pub fn new(channel: MeshChannel) -> Self {
        Self {
            client: AuthServiceClient::new(channel),
            keys: StaticKeys::default(),
            fetch: Arc::new(tokio::sync::Mutex::new(HashMap::new())),
            fetched_at: Arc::new(AtomicI64::new(NEVER)),
            clock: Arc::new(SystemClock),
        }
    }

    /// Ages the cached set on `clock` instead of the system clock (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Whether the cached set is due to be fetched again.
    fn stale(&self) -> bool {
        let at = self.fetched_at.load(Ordering::Acquire);
        at == NEVER || self.clock.now_unix().saturating_sub(at) >= JWKS_MAX_AGE
    }

    /// Fetches the JWK Set now and replaces the cached one.
    pub async fn refresh(&self) -> Result<usize, String> {
        let response = self
            .client
            .clone()
            .get_jwks(GetJwksRequest {})
            .await
            .map_err(|s| format!("fetching the JWKS from the auth service: {}", s.message()))?;
        let jwks = response.into_inner().keys;
        self.keys.replace(&jwks);
        self.fetched_at
            .store(self.clock.now_unix(), Ordering::Release);
        Ok(jwks.len())
    }
}

impl KeySource for JwksClient {
    fn key<'a>(&'a self, kid: &'a str) -> BoxFuture<'a, Result<Option<Arc<DecodingKey>>, String>> {
        Box::pin(async move {
            if !self.stale()
                && let Some(key) = self.keys.get(kid)
            {
                return Ok(Some(key));
            }
            let mut misses = self.fetch.lock().await;
            let now = Instant::now();
            // Another caller may have fetched while this one waited.
            if !self.stale() {
                if let Some(key) = self.keys.get(kid) {
                    return Ok(Some(key));
                }
                if misses
                    .get(kid)
                    .is_some_and(|at| now.duration_since(*at) < NEGATIVE_TTL)
                {
                    return Ok(None);
                }
            }
            if let Err(e) = self.refresh().await {
                // Auth unreachable: a set fetched before keeps verifying (its keys were valid a
                // minute ago; refusing every call would turn an auth outage into a mesh outage).
                let at = self.fetched_at.load(Ordering::Acquire);
                let stale_key = self.keys.get(kid);
                if at == NEVER || stale_key.is_none() {
                    return Err(e);
                }
                let retry_at = self.clock.now_unix() - JWKS_MAX_AGE + RETRY_AFTER_FAILURE;
                self.fetched_at.store(retry_at, Ordering::Release);
                tracing::warn!(error = %e, "JWKS refresh failed; verifying with the set fetched before");
                return Ok(stale_key);
            }
            let key = self.keys.get(kid);
            if key.is_none() {
                if misses.len() >= 1024 {
                    misses.retain(|_, at| now.duration_since(*at) < NEGATIVE_TTL);
                }
                misses.insert(kid.to_string(), now);
            }
            Ok(key)
        })
    }
}
