//! Checking an access token: EdDSA signature by a key of the JWKS, issuer, audience, expiry and
//! not-before (against an injectable [`Clock`]).

use std::collections::HashSet;
use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};

use crate::auth::claims::{Claims, DEFAULT_AUDIENCE, DEFAULT_ISSUER};
use crate::auth::clock::{Clock, SystemClock};
use crate::auth::identity::{Identity, Role};
use crate::auth::jwks::KeySource;
use crate::settings::{Setting, Settings, process_env};

/// Why a token was refused. Every variant but [`AuthError::KeysUnavailable`] is
/// `UNAUTHENTICATED`; each message says what was wrong without echoing the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `authorization: Bearer` metadata.
    #[error("missing access token: send `authorization: Bearer <jwt>`")]
    Missing,
    /// The bearer value is not a JWT at all: typically an opaque credential (a refresh token or a
    /// device credential) sent where an access token belongs.
    #[error(
        "access token is not a JWT ({0}); opaque credentials (refresh tokens, device credentials) \
         must first be exchanged for an access token"
    )]
    NotAJwt(String),
    /// The header names an algorithm other than EdDSA (`none`, HMAC such as HS256 keyed with
    /// the public key, RSA, ...).
    #[error("access token algorithm `{0}` is refused: only EdDSA is accepted")]
    UnsupportedAlgorithm(String),
    /// A JWT whose header or claims cannot be used (no `kid`, a missing or mistyped claim).
    #[error("malformed access token: {0}")]
    Malformed(String),
    /// No key of the JWKS has the token's `kid`.
    #[error(
        "access token signed by an unknown key `{0}` (never issued, or rotated out after its grace period)"
    )]
    UnknownKey(String),
    /// The signature does not verify with the key the `kid` names.
    #[error("access token signature does not verify with key `{0}`")]
    BadSignature(String),
    /// `iss` is not the expected issuer.
    #[error("access token issued by `{found}`, expected `{expected}`")]
    WrongIssuer {
        /// The token's `iss`.
        found: String,
        /// The expected issuer.
        expected: String,
    },
    /// `aud` is not this mesh's audience (a token minted for another system).
    #[error("access token is for the audience `{found}`, expected `{expected}`")]
    WrongAudience {
        /// The token's `aud`.
        found: String,
        /// The expected audience.
        expected: String,
    },
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

impl AuthError {
    /// A short, fixed name of the refusal: the `reason` label of
    /// [`crate::auth::AuthRejections`].
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::NotAJwt(_) => "not_a_jwt",
            AuthError::UnsupportedAlgorithm(_) => "algorithm",
            AuthError::Malformed(_) => "malformed",
            AuthError::UnknownKey(_) => "unknown_key",
            AuthError::BadSignature(_) => "bad_signature",
            AuthError::WrongIssuer { .. } => "issuer",
            AuthError::WrongAudience { .. } => "audience",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::KeysUnavailable(_) => "keys_unavailable",
        }
    }
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

/// `MESH_JWT_ISSUER`: the `iss` every token must carry (every service that checks tokens).
pub const JWT_ISSUER: Setting = Setting::text(
    "MESH_JWT_ISSUER",
    DEFAULT_ISSUER,
    "The `iss` auth writes into tokens and every service expects.",
);

/// `MESH_JWT_AUDIENCE`: the `aud` every token must carry.
pub const JWT_AUDIENCE: Setting = Setting::text(
    "MESH_JWT_AUDIENCE",
    DEFAULT_AUDIENCE,
    "The `aud` auth writes into tokens and every service expects.",
);

impl VerifierSettings {
    /// The defaults, with `MESH_JWT_ISSUER` / `MESH_JWT_AUDIENCE` when set.
    pub fn from_env() -> Self {
        Self::from_lookup(process_env)
    }

    /// The defaults, with [`JWT_ISSUER`] / [`JWT_AUDIENCE`] when `env` sets them.
    pub fn from_lookup(env: impl Fn(&str) -> Option<String>) -> Self {
        let s = Settings::new(env);
        let mut settings = Self::default();
        if let Some(v) = s.text(&JWT_ISSUER) {
            settings.issuer = v;
        }
        if let Some(v) = s.text(&JWT_AUDIENCE) {
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
            jsonwebtoken::decode_header(token).map_err(|e| unreadable_header(token, &e))?;
        if header.alg != Algorithm::EdDSA {
            return Err(AuthError::UnsupportedAlgorithm(format!("{:?}", header.alg)));
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
        // The library checks the signature and that the claims are present; issuer, audience
        // and times are checked below, so each refusal can say what it found.
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        validation.required_spec_claims = ["exp", "nbf", "iss", "aud", "sub"]
            .into_iter()
            .map(String::from)
            .collect::<HashSet<_>>();
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|e| match e
            .kind()
        {
            ErrorKind::InvalidSignature => AuthError::BadSignature(kid.clone()),
            _ => AuthError::Malformed(e.to_string()),
        })?;
        utf8_segments(token)?;
        let claims = data.claims;
        if claims.iss != self.settings.issuer {
            return Err(AuthError::WrongIssuer {
                found: printable(&claims.iss),
                expected: self.settings.issuer.clone(),
            });
        }
        if claims.aud != self.settings.audience {
            return Err(AuthError::WrongAudience {
                found: printable(&claims.aud),
                expected: self.settings.audience.clone(),
            });
        }
        let now = self.clock.now_unix();
        if now >= claims.exp.saturating_add(self.settings.leeway) {
            return Err(AuthError::Expired);
        }
        if claims.nbf > now.saturating_add(self.settings.leeway) {
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

/// Refuses a token whose header or claims are not UTF-8 (RFC 7515 and 7519: both are UTF-8
/// JSON). The library reads only the members it knows and skips the others without checking
/// their bytes, so a signed token with a non-UTF-8 string in an unknown member would otherwise
/// pass (found by the `jwt` fuzz target, `docs/fuzzing.md`).
fn utf8_segments(token: &str) -> Result<(), AuthError> {
    use base64::Engine as _;
    for (name, segment) in ["header", "claims set"].into_iter().zip(token.split('.')) {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(segment.trim_end_matches('='))
            .map_err(|e| AuthError::Malformed(format!("the {name} is not base64url: {e}")))?;
        std::str::from_utf8(&bytes)
            .map_err(|e| AuthError::Malformed(format!("the {name} is not UTF-8 JSON: {e}")))?;
    }
    Ok(())
}

/// The refusal of a token whose header the library cannot read: an algorithm it does not know
/// (`none`) is named as such; anything else is not a JWT (an opaque credential, say).
fn unreadable_header(token: &str, e: &jsonwebtoken::errors::Error) -> AuthError {
    use base64::Engine as _;
    let Some((header, _)) = token.split_once('.') else {
        return AuthError::NotAJwt("no `.`-separated header, claims and signature".into());
    };
    let alg = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|json| json.get("alg")?.as_str().map(printable));
    match alg {
        Some(alg) if alg != "EdDSA" => AuthError::UnsupportedAlgorithm(alg),
        _ => AuthError::NotAJwt(e.to_string()),
    }
}

/// A claim value quoted in a message: at most 64 characters, control characters dropped.
fn printable(value: &str) -> String {
    value.chars().filter(|c| !c.is_control()).take(64).collect()
}
