//! Checking an access token: EdDSA signature by a key of the JWKS, issuer, audience, expiry and
//! not-before (against an injectable [`Clock`]).

use std::collections::HashSet;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, Validation};

use crate::auth::claims::{Claims, DEFAULT_AUDIENCE, DEFAULT_ISSUER};
use crate::auth::clock::{Clock, SystemClock};
use crate::auth::identity::{Identity, Role};
use crate::auth::jwks::KeySource;

/// Why a token was refused. Every variant but [`AuthError::KeysUnavailable`] is
/// `UNAUTHENTICATED`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `authorization: Bearer` metadata.
    #[error("missing access token: send `authorization: Bearer <jwt>`")]
    Missing,
    /// The header is not a JWT, or its algorithm is not EdDSA (`none`, HMAC, ...).
    #[error("malformed access token or unsupported algorithm (only EdDSA is accepted): {0}")]
    Malformed(String),
    /// No key of the JWKS has the token's `kid`.
    #[error("access token signed by an unknown key `{0}`")]
    UnknownKey(String),
    /// Bad signature, issuer, audience or missing claims.
    #[error("invalid access token: {0}")]
    Invalid(String),
    /// `exp` has passed.
    #[error("access token expired")]
    Expired,
    /// `nbf` is still in the future.
    #[error("access token not valid yet")]
    NotYetValid,
    /// The verification keys could not be fetched.
    #[error("cannot verify access tokens right now: {0}")]
    KeysUnavailable(String),
}

impl From<AuthError> for tonic::Status {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::KeysUnavailable(_) => tonic::Status::unavailable(e.to_string()),
            _ => tonic::Status::unauthenticated(e.to_string()),
        }
    }
}

/// What tokens must say about who issued them and for whom.
#[derive(Debug, Clone)]
pub struct VerifierSettings {
    /// Expected `iss`.
    pub issuer: String,
    /// Expected `aud`.
    pub audience: String,
    /// Allowed clock skew in seconds for `exp` and `nbf`.
    pub leeway: i64,
}

impl Default for VerifierSettings {
    fn default() -> Self {
        Self {
            issuer: DEFAULT_ISSUER.to_string(),
            audience: DEFAULT_AUDIENCE.to_string(),
            leeway: 30,
        }
    }
}

impl VerifierSettings {
    /// The defaults, with `MESH_JWT_ISSUER` / `MESH_JWT_AUDIENCE` when set.
    pub fn from_env() -> Self {
        let mut settings = Self::default();
        if let Ok(v) = std::env::var("MESH_JWT_ISSUER")
            && !v.is_empty()
        {
            settings.issuer = v;
        }
        if let Ok(v) = std::env::var("MESH_JWT_AUDIENCE")
            && !v.is_empty()
        {
            settings.audience = v;
        }
        settings
    }
}

/// Checks access tokens against a key source.
#[derive(Debug, Clone)]
pub struct Verifier {
    keys: Arc<dyn KeySource>,
    settings: VerifierSettings,
    clock: Arc<dyn Clock>,
}

impl Verifier {
    /// A verifier of tokens signed by `keys`, on the system clock.
    pub fn new(keys: Arc<dyn KeySource>, settings: VerifierSettings) -> Self {
        Self {
            keys,
            settings,
            clock: Arc::new(SystemClock),
        }
    }

    /// Checks times against `clock` instead.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The settings.
    pub fn settings(&self) -> &VerifierSettings {
        &self.settings
    }

    /// Verifies `token` and returns its caller.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        if header.alg != Algorithm::EdDSA {
            return Err(AuthError::Malformed(format!("{:?}", header.alg)));
        }
        let kid = header
            .kid
            .ok_or_else(|| AuthError::Malformed("no `kid` in the header".into()))?;
        let key = self
            .keys
            .key(&kid)
            .await
            .map_err(AuthError::KeysUnavailable)?
            .ok_or_else(|| AuthError::UnknownKey(kid.clone()))?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        validation.required_spec_claims = ["exp", "nbf", "iss", "aud", "sub"]
            .into_iter()
            .map(String::from)
            .collect::<HashSet<_>>();
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let claims = data.claims;
        let now = self.clock.now_unix();
        if now >= claims.exp + self.settings.leeway {
            return Err(AuthError::Expired);
        }
        if claims.nbf > now + self.settings.leeway {
            return Err(AuthError::NotYetValid);
        }
        Ok(Identity {
            subject: claims.sub,
            roles: claims.roles.iter().filter_map(|r| Role::parse(r)).collect(),
            token_id: claims.jti,
            expires_at: claims.exp,
            store_ids: claims.stores,
        })
    }
}
