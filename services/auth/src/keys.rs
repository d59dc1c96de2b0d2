//! The signing keys: Ed25519, one active key that signs, and retired keys that stay published in
//! the JWKS until every token they signed has expired.
//!
//! The active key comes from `MESH_JWT_PRIVATE_KEY_FILE` (PKCS#8 PEM; only its public half is
//! recorded in the database) or, in the embedded default, is generated on first start and kept in
//! the service's database (`signing_keys`), so it survives restarts and is shared by replicas on
//! Postgres. Key ids are RFC 7638 thumbprints.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mesh_contracts::auth::v1::Jwk;
use mesh_runtime::Database;
use mesh_runtime::auth::{Claims, Clock, KeySource, StaticKeys};
use sha2::{Digest, Sha256};

use crate::error::AuthServiceError;

/// How often a replica re-reads the active key (another replica may have rotated it).
const RELOAD_EVERY: Duration = Duration::from_secs(30);

/// The signing key in use.
struct Active {
    kid: String,
    key: EncodingKey,
    loaded: Instant,
}

/// The service's keys.
pub struct KeyRing {
    db: Database,
    from_file: bool,
    active: RwLock<Arc<Active>>,
    published: StaticKeys,
    /// The earliest end of publication among the published retired keys ([`i64::MAX`]: none):
    /// past it, the published set is read again, so a key leaves verification here when it
    /// leaves the JWKS.
    next_expiry: AtomicI64,
    clock: Arc<dyn Clock>,
    /// How long a retired key stays published: the longest token lifetime plus clock leeway.
    retire_for: i64,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("from_file", &self.from_file)
            .field("published", &self.published)
            .finish_non_exhaustive()
    }
}

/// The public `x` (base64url) and RFC 7638 thumbprint of `key`.
fn public_parts(key: &SigningKey) -> (String, String) {
    let x = URL_SAFE_NO_PAD.encode(key.verifying_key().to_bytes());
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()));
    (x, kid)
}

fn encoding_key(key: &SigningKey) -> Result<EncodingKey, AuthServiceError> {
    let der = key
        .to_pkcs8_der()
        .map_err(|e| AuthServiceError::Internal(format!("encoding the signing key: {e}")))?;
    Ok(EncodingKey::from_ed_der(der.as_bytes()))
}

fn internal(e: impl std::fmt::Display) -> AuthServiceError {
    AuthServiceError::Internal(e.to_string())
}

/// A published key's row.
#[derive(sqlx::FromRow)]
struct PublishedKey {
    kid: String,
    public_x: String,
    expires_us: Option<i64>,
}

impl KeyRing {
    /// Loads (or creates) the keys. `pem` is the content of `MESH_JWT_PRIVATE_KEY_FILE`, if set.
    pub async fn open(
        db: Database,
        pem: Option<&str>,
        clock: Arc<dyn Clock>,
        retire_for: Duration,
    ) -> Result<Arc<Self>, AuthServiceError> {
        let retire_for = mesh_runtime::domain::time::duration_us(retire_for);
        let now = clock.now_us();
        let (kid, key) = match pem {
            Some(pem) => {
                let key = SigningKey::from_pkcs8_pem(pem).map_err(|e| {
                    AuthServiceError::Internal(format!(
                        "MESH_JWT_PRIVATE_KEY_FILE is not an Ed25519 PKCS#8 PEM private key: {e}"
                    ))
                })?;
                let (x, kid) = public_parts(&key);
                let mut tx = db.begin().await?;
                let known = sqlx::query("SELECT kid FROM signing_keys WHERE kid = $1")
                    .bind(&kid)
                    .fetch_optional(&mut *tx)
                    .await?;
                if known.is_none() {
                    retire_others(&mut tx, &kid, now, retire_for).await?;
                    sqlx::query(
                        "INSERT INTO signing_keys (kid, public_x, private_pem, created_us) VALUES ($1, $2, NULL, $3)",
                    )
                    .bind(&kid)
                    .bind(&x)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                (kid, encoding_key(&key)?)
            }
            None => match load_active(&db).await? {
                Some(active) => active,
                None => generate(&db, now, retire_for).await?,
            },
        };
        let ring = Arc::new(Self {
            db,
            from_file: pem.is_some(),
            active: RwLock::new(Arc::new(Active {
                kid,
                key,
                loaded: Instant::now(),
            })),
            published: StaticKeys::default(),
            next_expiry: AtomicI64::new(i64::MAX),
            clock,
            retire_for,
        });
        ring.jwks().await?;
        Ok(ring)
    }

    /// Signs `claims` with the active key.
    pub async fn sign(&self, claims: &Claims) -> Result<String, AuthServiceError> {
        let mut active = self.active.read().map_err(internal)?.clone();
        if !self.from_file
            && active.loaded.elapsed() > RELOAD_EVERY
            && let Some((kid, key)) = load_active(&self.db).await?
        {
            active = Arc::new(Active {
                kid,
                key,
                loaded: Instant::now(),
            });
            *self.active.write().map_err(internal)? = active.clone();
        }
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(active.kid.clone());
        jsonwebtoken::encode(&header, claims, &active.key).map_err(internal)
    }

    /// The published keys: the active one and retired ones whose tokens may still be valid.
    pub async fn jwks(&self) -> Result<Vec<Jwk>, AuthServiceError> {
        let now = self.clock.now_us();
        let rows: Vec<PublishedKey> = sqlx::query_as(
            "SELECT kid, public_x, expires_us FROM signing_keys WHERE retired_us IS NULL OR expires_us > $1 ORDER BY created_us DESC, kid",
        )
        .bind(now)
        .fetch_all(self.db.pool())
        .await?;
        let next_expiry = rows
            .iter()
            .filter_map(|r| r.expires_us)
            .min()
            .unwrap_or(i64::MAX);
        let keys: Vec<Jwk> = rows
            .into_iter()
            .map(|r| Jwk {
                kty: "OKP".into(),
                kid: r.kid,
                alg: "EdDSA".into(),
                r#use: "sig".into(),
                crv: "Ed25519".into(),
                x: r.public_x,
                ..Jwk::default()
            })
            .collect();
        self.published.replace(&keys);
        self.next_expiry.store(next_expiry, Ordering::Release);
        Ok(keys)
    }

    /// Generates a new active key and retires the current one (published for `retire_for`).
    pub async fn rotate(&self) -> Result<(String, Vec<String>), AuthServiceError> {
        if self.from_file {
            return Err(AuthServiceError::precondition(
                "the signing key comes from MESH_JWT_PRIVATE_KEY_FILE; rotate by replacing the file (the Secret) and restarting",
            ));
        }
        let now = self.clock.now_us();
        let (kid, key) = generate(&self.db, now, self.retire_for).await?;
        *self.active.write().map_err(internal)? = Arc::new(Active {
            kid: kid.clone(),
            key,
            loaded: Instant::now(),
        });
        let retired = self
            .jwks()
            .await?
            .into_iter()
            .map(|k| k.kid)
            .filter(|k| *k != kid)
            .collect();
        Ok((kid, retired))
    }
}

impl KeySource for KeyRing {
    fn key<'a>(
        &'a self,
        kid: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Option<Arc<jsonwebtoken::DecodingKey>>, String>>
    {
        Box::pin(async move {
            // A retired key whose publication has ended no longer verifies.
            if self.clock.now_us() >= self.next_expiry.load(Ordering::Acquire) {
                self.jwks().await.map_err(|e| e.to_string())?;
            }
            if let Some(key) = self.published.key(kid).await? {
                return Ok(Some(key));
            }
            // Rotated by another replica since: read the published set again.
            self.jwks().await.map_err(|e| e.to_string())?;
            self.published.key(kid).await
        })
    }
}

/// The newest active key stored with its private half.
async fn load_active(db: &Database) -> Result<Option<(String, EncodingKey)>, AuthServiceError> {
    let row: Option<(String, String)> = sqlx::query_as(
        "SELECT kid, private_pem FROM signing_keys WHERE retired_us IS NULL AND private_pem IS NOT NULL ORDER BY created_us DESC, kid LIMIT 1",
    )
    .fetch_optional(db.pool())
    .await?;
    let Some((kid, pem)) = row else {
        return Ok(None);
    };
    let key = SigningKey::from_pkcs8_pem(&pem).map_err(internal)?;
    Ok(Some((kid, encoding_key(&key)?)))
}

/// Stores a fresh key as the active one, retiring the others.
async fn generate(
    db: &Database,
    now: i64,
    retire_for: i64,
) -> Result<(String, EncodingKey), AuthServiceError> {
    let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    let (x, kid) = public_parts(&key);
    let pem = key.to_pkcs8_pem(LineEnding::LF).map_err(internal)?;
    let mut tx = db.begin().await?;
    retire_others(&mut tx, &kid, now, retire_for).await?;
    sqlx::query(
        "INSERT INTO signing_keys (kid, public_x, private_pem, created_us) VALUES ($1, $2, $3, $4)",
    )
    .bind(&kid)
    .bind(&x)
    .bind(pem.as_str())
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(kid = %kid, "generated a new signing key");
    Ok((kid, encoding_key(&key)?))
}

/// Retires every active key but `kid`: drops its private half and keeps it published until
/// `now + retire_for`.
async fn retire_others(
    tx: &mut mesh_runtime::outbox::Tx,
    kid: &str,
    now: i64,
    retire_for: i64,
) -> Result<(), AuthServiceError> {
    sqlx::query(
        "UPDATE signing_keys SET retired_us = $1, expires_us = $2, private_pem = NULL WHERE retired_us IS NULL AND kid <> $3",
    )
    .bind(now)
    .bind(now.saturating_add(retire_for))
    .bind(kid)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
