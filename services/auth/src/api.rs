//! The `auth.v1.AuthService` implementation.

use std::sync::Arc;

use mesh_contracts::auth::v1::auth_service_server::AuthService;
use mesh_contracts::auth::v1::*;
use mesh_contracts::events::v1::{
    DeviceCredentialIssued, RolesChanged, SessionRevoked, UserRegistered,
};
use mesh_runtime::Database;
use mesh_runtime::auth::{Identity, Role};
use mesh_runtime::domain::time;
use mesh_runtime::outbox::Event;
use tonic::{Request, Response, Status};

use crate::error::AuthServiceError;
use crate::keys::KeyRing;
use crate::settings::AuthSettings;
use crate::store::{self, AccountRow};
use crate::tokens::{access_claims, hash_secret, new_secret, secrets_equal};
use crate::{password, user_events, validate};

/// The auth service.
#[derive(Debug, Clone)]
pub struct AuthApi {
    db: Database,
    keys: Arc<KeyRing>,
    settings: Arc<AuthSettings>,
}

type Result<T> = std::result::Result<T, AuthServiceError>;

fn seconds(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 4)
}

fn account_message(a: &AccountRow) -> Account {
    Account {
        id: a.id.clone(),
        email: a.email.clone(),
        roles: a.roles.iter().map(|r| r.to_proto() as i32).collect(),
        create_time: Some(time::to_timestamp(a.created_us)),
    }
}

impl AuthApi {
    /// The service over `db`, signing with `keys`.
    pub fn new(db: Database, keys: Arc<KeyRing>, settings: Arc<AuthSettings>) -> Self {
        Self { db, keys, settings }
    }

    /// Now in Unix seconds, for token claims.
    fn now(&self) -> i64 {
        self.settings.clock.now_unix()
    }

    /// Now in microseconds, for stored times.
    fn now_us(&self) -> i64 {
        self.settings.clock.now_us()
    }

    async fn access_token(
        &self,
        subject: &str,
        roles: &[Role],
        stores: &[String],
    ) -> Result<String> {
        let claims = access_claims(
            &self.settings.verifier,
            subject,
            roles,
            stores,
            self.now(),
            seconds(self.settings.access_ttl),
        );
        self.keys.sign(&claims).await
    }

    /// Issues a refresh token of `session_id` in `tx` and an access token: the pair to return.
    async fn token_pair(
        &self,
        tx: &mut mesh_runtime::outbox::Tx,
        session_id: &str,
        account: &AccountRow,
        session_expires: i64,
    ) -> Result<TokenPair> {
        // Staff tokens carry the stores the user service assigned them (`docs/identity.md`).
        let stores = if account.roles.contains(&Role::Staff) {
            user_events::stores_of(tx, &account.id).await?
        } else {
            Vec::new()
        };
        let refresh = new_secret();
        store::insert_refresh(
            tx,
            &hash_secret(&refresh),
            session_id,
            self.now_us(),
            session_expires,
        )
        .await?;
        Ok(TokenPair {
            access_token: self
                .access_token(&account.id, &account.roles, &stores)
                .await?,
            token_type: "Bearer".into(),
            expires_in: Some(prost_types::Duration {
                seconds: seconds(self.settings.access_ttl),
                nanos: 0,
            }),
            refresh_token: refresh,
            refresh_expire_time: Some(time::to_timestamp(session_expires)),
        })
    }

    /// Starts a session for `account` in `tx`.
    async fn new_session(
        &self,
        tx: &mut mesh_runtime::outbox::Tx,
        account: &AccountRow,
    ) -> Result<TokenPair> {
        let session = uuid::Uuid::now_v7().to_string();
        let now = self.now_us();
        let expires = now.saturating_add(time::duration_us(self.settings.refresh_ttl));
        store::insert_session(tx, &session, &account.id, now, expires).await?;
        self.token_pair(tx, &session, account, expires).await
    }

    async fn sign_up(&self, req: SignUpRequest) -> Result<SignUpResponse> {
        let email = validate::email(&req.email)?;
        validate::new_password(&req.password)?;
        if req.display_name.chars().count() > 200 {
            return Err(AuthServiceError::invalid(
                "display_name",
                "at most 200 characters",
            ));
        }
        if store::account_by_email(self.db.pool(), &email)
            .await?
            .is_some()
        {
            return Err(AuthServiceError::email_taken());
        }
        let hash = password::hash(req.password).await?;
        let mut tx = self.db.begin().await?;
        let mut roles = vec![Role::Customer];
        if self.settings.bootstrap_admin_email.as_deref() == Some(email.as_str())
            && !store::any_admin(&mut tx).await?
        {
            tracing::warn!(email = %email, "granting admin to the bootstrap admin account (MESH_AUTH_BOOTSTRAP_ADMIN_EMAIL)");
            roles.push(Role::Admin);
        }
        let account = AccountRow {
            id: uuid::Uuid::now_v7().to_string(),
            email,
            password_hash: hash,
            roles,
            created_us: self.now_us(),
        };
        match store::insert_account(&mut tx, &account, req.display_name.trim()).await {
            Err(e) if e.is_conflict() => return Err(AuthServiceError::email_taken()),
            other => other?,
        }
        let tokens = self.new_session(&mut tx, &account).await?;
        tx.emit(Event::new(
            "user.registered",
            &account.id,
            "UserRegistered",
            &UserRegistered {
                user_id: account.id.clone(),
                email: account.email.clone(),
                display_name: req.display_name.trim().to_string(),
                roles: account.roles.iter().map(|r| r.to_proto() as i32).collect(),
                marketing_consent: req.marketing_consent,
            },
        ))
        .await?;
        tx.commit().await?;
        Ok(SignUpResponse {
            account: Some(account_message(&account)),
            tokens: Some(tokens),
        })
    }

    async fn login(&self, req: LoginRequest) -> Result<LoginResponse> {
        let email = validate::required("email", &req.email)?.to_lowercase();
        validate::required("password", &req.password)?;
        let account = store::account_by_email(self.db.pool(), &email).await?;
        let hash = match &account {
            Some(a) => a.password_hash.clone(),
            None => password::dummy_hash().await,
        };
        let ok = password::verify(req.password, hash).await;
        let Some(account) = account.filter(|_| ok) else {
            return Err(AuthServiceError::BadCredentials);
        };
        let mut tx = self.db.begin().await?;
        let tokens = self.new_session(&mut tx, &account).await?;
        tx.commit().await?;
        Ok(LoginResponse {
            account: Some(account_message(&account)),
            tokens: Some(tokens),
        })
    }

    async fn refresh(&self, req: RefreshRequest) -> Result<RefreshResponse> {
        let token = validate::required("refresh_token", &req.refresh_token)?;
        let hash = hash_secret(token);
        let now = self.now_us();
        let mut tx = self.db.begin().await?;
        let row = store::refresh_by_hash(&mut tx, &hash)
            .await?
            .ok_or(AuthServiceError::BadRefreshToken("unknown token"))?;
        if row.revoked_us.is_some() {
            return Err(AuthServiceError::BadRefreshToken("the session has ended"));
        }
        if row.used_us.is_some() || !store::consume_refresh(&mut tx, &hash, now).await? {
            // Reuse of a rotated token: someone holds a copy. End the whole family.
            store::revoke_session(&mut tx, &row.session_id, now, "refresh token reuse").await?;
            tx.emit(Event::new(
                "auth.session_revoked",
                &row.account_id,
                "SessionRevoked",
                &SessionRevoked {
                    account_id: row.account_id.clone(),
                    session_id: row.session_id.clone(),
                    reuse_detected: true,
                },
            ))
            .await?;
            tx.commit().await?;
            tracing::warn!(session = %row.session_id, "refresh token reuse detected; session revoked");
            return Err(AuthServiceError::RefreshReuse);
        }
        if row.expires_us <= now {
            return Err(AuthServiceError::BadRefreshToken("expired"));
        }
        let account = store::account_by_id(&mut tx, &row.account_id)
            .await?
            .ok_or(AuthServiceError::BadRefreshToken(
                "the account no longer exists",
            ))?;
        let tokens = self
            .token_pair(&mut tx, &row.session_id, &account, row.expires_us)
            .await?;
        tx.commit().await?;
        Ok(RefreshResponse {
            tokens: Some(tokens),
        })
    }

    async fn logout(&self, req: LogoutRequest) -> Result<LogoutResponse> {
        let token = validate::required("refresh_token", &req.refresh_token)?;
        let mut tx = self.db.begin().await?;
        let Some(row) = store::refresh_by_hash(&mut tx, &hash_secret(token)).await? else {
            return Err(AuthServiceError::BadRefreshToken("unknown token"));
        };
        if store::revoke_session(&mut tx, &row.session_id, self.now_us(), "logout").await? {
            tx.emit(Event::new(
                "auth.session_revoked",
                &row.account_id,
                "SessionRevoked",
                &SessionRevoked {
                    account_id: row.account_id.clone(),
                    session_id: row.session_id.clone(),
                    reuse_detected: false,
                },
            ))
            .await?;
        }
        tx.commit().await?;
        Ok(LogoutResponse {})
    }

    async fn issue_service_token(
        &self,
        req: IssueServiceTokenRequest,
    ) -> Result<IssueServiceTokenResponse> {
        let client_id = validate::required("client_id", &req.client_id)?;
        let secret = validate::required("client_secret", &req.client_secret)?;
        if !req.audience.is_empty() && req.audience != self.settings.verifier.audience {
            return Err(AuthServiceError::invalid(
                "audience",
                format!("only `{}` is issued", self.settings.verifier.audience),
            ));
        }
        if !req.scopes.is_empty() {
            return Err(AuthServiceError::invalid(
                "scopes",
                "no scopes are granted; the SERVICE role is the grant",
            ));
        }
        let known = match self.settings.service_clients.get(client_id) {
            Some(expected) => secrets_equal(secret, expected),
            None => self
                .settings
                .shared_service_secret
                .as_deref()
                .is_some_and(|expected| secrets_equal(secret, expected)),
        };
        if !known {
            return Err(AuthServiceError::BadClient);
        }
        Ok(IssueServiceTokenResponse {
            access_token: self.access_token(client_id, &[Role::Service], &[]).await?,
            token_type: "Bearer".into(),
            expires_in: Some(prost_types::Duration {
                seconds: seconds(self.settings.access_ttl),
                nanos: 0,
            }),
            scopes: Vec::new(),
        })
    }

    async fn issue_device_credential(
        &self,
        actor: &str,
        req: IssueDeviceCredentialRequest,
    ) -> Result<IssueDeviceCredentialResponse> {
        let device_id = validate::required("device_id", &req.device_id)?.to_string();
        let ttl = match req.ttl {
            None => 365 * 24 * 3600,
            Some(d) if d.seconds > 0 && d.seconds <= 5 * 365 * 24 * 3600 => d.seconds,
            Some(_) => {
                return Err(AuthServiceError::invalid(
                    "ttl",
                    "must be between 1s and 5 years",
                ));
            }
        };
        let credential = new_secret();
        let now = self.now_us();
        let expires = now.saturating_add(ttl.saturating_mul(1_000_000));
        let mut tx = self.db.begin().await?;
        store::upsert_device_credential(
            &mut tx,
            &device_id,
            &hash_secret(&credential),
            now,
            expires,
        )
        .await?;
        tx.emit(Event::new(
            "auth.device_credential_issued",
            &device_id,
            "DeviceCredentialIssued",
            &DeviceCredentialIssued {
                device_id: device_id.clone(),
                actor_id: actor.to_string(),
            },
        ))
        .await?;
        tx.commit().await?;
        Ok(IssueDeviceCredentialResponse {
            device_id,
            credential_token: credential,
            expire_time: Some(time::to_timestamp(expires)),
        })
    }

    async fn exchange_device_credential(
        &self,
        req: ExchangeDeviceCredentialRequest,
    ) -> Result<ExchangeDeviceCredentialResponse> {
        let device_id = validate::required("device_id", &req.device_id)?;
        let token = validate::required("credential_token", &req.credential_token)?;
        let stored = store::device_credential(self.db.pool(), device_id).await?;
        // Compare hashes in constant time; an unknown device compares against a dummy.
        let (hash, expires_at) = stored.unwrap_or_else(|| (String::new(), 0));
        let matches = secrets_equal(&hash_secret(token), &hash);
        if !matches || expires_at <= self.now_us() {
            return Err(AuthServiceError::BadDeviceCredential);
        }
        Ok(ExchangeDeviceCredentialResponse {
            access_token: self.access_token(device_id, &[Role::Device], &[]).await?,
            expires_in: Some(prost_types::Duration {
                seconds: seconds(self.settings.access_ttl),
                nanos: 0,
            }),
        })
    }

    async fn set_roles(&self, actor: &str, req: SetRolesRequest) -> Result<SetRolesResponse> {
        let id = validate::uuid("account_id", &req.account_id)?;
        if req.roles.is_empty() {
            return Err(AuthServiceError::invalid(
                "roles",
                "required, at least one role",
            ));
        }
        let mut roles = Vec::new();
        for r in &req.roles {
            let role = Role::from_proto(*r).ok_or_else(|| {
                AuthServiceError::invalid("roles", format!("unknown or unspecified role {r}"))
            })?;
            if !roles.contains(&role) {
                roles.push(role);
            }
        }
        let mut tx = self.db.begin().await?;
        let mut account = store::account_by_id(&mut tx, &id)
            .await?
            .ok_or_else(|| AuthServiceError::account_not_found(id.clone()))?;
        let previous = std::mem::replace(&mut account.roles, roles);
        store::set_roles(&mut tx, &id, &account.roles).await?;
        tx.emit(Event::new(
            "auth.roles_changed",
            &id,
            "RolesChanged",
            &RolesChanged {
                account_id: id.clone(),
                previous_roles: previous.iter().map(|r| r.to_proto() as i32).collect(),
                roles: account.roles.iter().map(|r| r.to_proto() as i32).collect(),
                actor_id: actor.to_string(),
            },
        ))
        .await?;
        tx.commit().await?;
        Ok(SetRolesResponse {
            account: Some(account_message(&account)),
        })
    }
}

fn actor<T>(req: &Request<T>) -> String {
    Identity::of(req)
        .map(|i| i.subject.clone())
        .unwrap_or_default()
}

#[tonic::async_trait]
impl AuthService for AuthApi {
    async fn sign_up(
        &self,
        r: Request<SignUpRequest>,
    ) -> std::result::Result<Response<SignUpResponse>, Status> {
        Ok(Response::new(AuthApi::sign_up(self, r.into_inner()).await?))
    }

    async fn login(
        &self,
        r: Request<LoginRequest>,
    ) -> std::result::Result<Response<LoginResponse>, Status> {
        Ok(Response::new(AuthApi::login(self, r.into_inner()).await?))
    }

    async fn refresh(
        &self,
        r: Request<RefreshRequest>,
    ) -> std::result::Result<Response<RefreshResponse>, Status> {
        Ok(Response::new(AuthApi::refresh(self, r.into_inner()).await?))
    }

    async fn logout(
        &self,
        r: Request<LogoutRequest>,
    ) -> std::result::Result<Response<LogoutResponse>, Status> {
        Ok(Response::new(AuthApi::logout(self, r.into_inner()).await?))
    }

    async fn get_jwks(
        &self,
        _r: Request<GetJwksRequest>,
    ) -> std::result::Result<Response<GetJwksResponse>, Status> {
        let keys = self.keys.jwks().await?;
        Ok(Response::new(GetJwksResponse { keys }))
    }

    async fn issue_service_token(
        &self,
        r: Request<IssueServiceTokenRequest>,
    ) -> std::result::Result<Response<IssueServiceTokenResponse>, Status> {
        Ok(Response::new(
            AuthApi::issue_service_token(self, r.into_inner()).await?,
        ))
    }

    async fn issue_device_credential(
        &self,
        r: Request<IssueDeviceCredentialRequest>,
    ) -> std::result::Result<Response<IssueDeviceCredentialResponse>, Status> {
        let actor = actor(&r);
        Ok(Response::new(
            AuthApi::issue_device_credential(self, &actor, r.into_inner()).await?,
        ))
    }

    async fn exchange_device_credential(
        &self,
        r: Request<ExchangeDeviceCredentialRequest>,
    ) -> std::result::Result<Response<ExchangeDeviceCredentialResponse>, Status> {
        Ok(Response::new(
            AuthApi::exchange_device_credential(self, r.into_inner()).await?,
        ))
    }

    async fn set_roles(
        &self,
        r: Request<SetRolesRequest>,
    ) -> std::result::Result<Response<SetRolesResponse>, Status> {
        let actor = actor(&r);
        Ok(Response::new(
            AuthApi::set_roles(self, &actor, r.into_inner()).await?,
        ))
    }

    async fn rotate_signing_key(
        &self,
        _r: Request<RotateSigningKeyRequest>,
    ) -> std::result::Result<Response<RotateSigningKeyResponse>, Status> {
        let (kid, retired_kids) = self.keys.rotate().await?;
        Ok(Response::new(RotateSigningKeyResponse {
            kid,
            retired_kids,
        }))
    }
}
