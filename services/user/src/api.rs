//! The `user.v1.UserService` implementation.

use mesh_contracts::events::v1::UserDeleted;
use mesh_contracts::user::v1::user_service_server::UserService;
use mesh_contracts::user::v1::*;
use mesh_runtime::Database;
use mesh_runtime::domain::page_token;
use mesh_runtime::outbox::{Event, Tx};
use tonic::{Request, Response, Status};

use crate::caller::Caller;
use crate::profile::{Consent, Profile};
use crate::store::{self, Filter};
use crate::{edit, validate};
use mesh_runtime::domain::ServiceError;
use mesh_runtime::domain::time::now_us;

type Result<T> = std::result::Result<T, ServiceError>;

/// The user service.
#[derive(Debug, Clone)]
pub struct UserApi {
    db: Database,
}

/// Emits `user.updated` with `p`'s snapshot in `tx`.
pub async fn emit_updated(tx: &mut Tx, p: &Profile, changed: Vec<String>) -> Result<()> {
    tx.emit(Event::new(
        "user.updated",
        &p.id,
        "UserUpdated",
        &p.snapshot(changed),
    ))
    .await?;
    Ok(())
}

impl UserApi {
    /// The service over `db`.
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// The profile `id` as `caller` may see it: unknown, erased and other customers' profiles
    /// are all `NOT_FOUND`.
    async fn visible(
        &self,
        c: &mut sqlx::AnyConnection,
        caller: &Caller,
        id: &str,
    ) -> Result<Profile> {
        caller.may_see(id)?;
        match store::profile(c, id).await? {
            Some(p) if p.erased_at_us.is_none() => Ok(p),
            _ => Err(ServiceError::not_found("user", id)),
        }
    }

    async fn create(&self, caller: &Caller, req: CreateUserRequest) -> Result<Profile> {
        let u = req
            .user
            .ok_or_else(|| ServiceError::invalid("user", "required"))?;
        let id = if u.id.is_empty() {
            uuid::Uuid::now_v7().to_string()
        } else {
            validate::id("user.id", &u.id)?
        };
        let kind = match UserKind::try_from(u.kind) {
            Ok(k @ (UserKind::Customer | UserKind::Staff)) => k,
            _ => {
                return Err(ServiceError::invalid(
                    "user.kind",
                    "required: USER_KIND_CUSTOMER or USER_KIND_STAFF",
                ));
            }
        };
        let now = now_us();
        let mut p = Profile {
            id: id.clone(),
            kind,
            email: validate::email("user.email", &u.email)?,
            version: 1,
            created_at_us: now,
            updated_at_us: now,
            consent: Consent {
                source: "staff".into(),
                at_us: now,
                ..Consent::default()
            },
            ..Profile::default()
        };
        let mut all = vec!["*".to_string()];
        if !u.store_ids.is_empty() {
            all.push("store_ids".into());
        }
        edit::apply(&mut p, &u, &all, caller, now)?;
        let mut tx = self.db.begin().await?;
        if !store::insert(&mut tx, &p).await? {
            return Err(ServiceError::AlreadyExists(format!(
                "user `{id}` already exists"
            )));
        }
        emit_updated(&mut tx, &p, vec!["created".into()]).await?;
        tx.commit().await?;
        Ok(p)
    }

    async fn update(&self, caller: &Caller, req: UpdateUserRequest) -> Result<Profile> {
        let u = req
            .user
            .ok_or_else(|| ServiceError::invalid("user", "required"))?;
        let id = validate::id("user.id", &u.id)?;
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let mut tx = self.db.begin().await?;
        let mut p = self.visible(&mut tx, caller, &id).await?;
        let now = now_us();
        let changed = edit::apply(&mut p, &u, &paths, caller, now)?;
        if changed.is_empty() {
            return Ok(p);
        }
        p.version += 1;
        p.updated_at_us = now;
        store::update(&mut tx, &p).await?;
        emit_updated(&mut tx, &p, changed).await?;
        tx.commit().await?;
        Ok(p)
    }

    async fn list(&self, req: ListUsersRequest) -> Result<ListUsersResponse> {
        let limit = page_token::page_size(req.page_size, 50, 500)?;
        let kind = match UserKind::try_from(req.kind) {
            Ok(UserKind::Unspecified) => None,
            Ok(k) => Some(k),
            Err(_) => return Err(ServiceError::invalid("kind", "unknown kind")),
        };
        let store_id = if req.store_id.is_empty() {
            None
        } else {
            Some(validate::id("store_id", &req.store_id)?)
        };
        let query = validate::text("query", &req.query, 200)?.to_lowercase();
        let mut filter = Filter {
            kind,
            store_id,
            query: (!query.is_empty()).then_some(query),
            before: None,
        };
        // The token is bound to the list and every filter.
        let bound = (
            "users",
            req.kind,
            filter.store_id.clone(),
            filter.query.clone(),
        );
        filter.before = page_token::decode::<(i64, String), _>(&req.page_token, &bound)?;
        let mut c = self.db.acquire().await?;
        let mut rows = store::list(&mut c, &filter, limit + 1).await?;
        let next_page_token = page_token::next_page(&mut rows, limit, &bound, |p| {
            (p.created_at_us, p.id.clone())
        });
        Ok(ListUsersResponse {
            users: rows.iter().map(Profile::to_proto).collect(),
            next_page_token,
        })
    }

    /// Erases profile `id`: every personal field emptied, addresses and store assignments
    /// deleted, the outbox's earlier events of the profile redacted, and `user.deleted` emitted,
    /// all in one transaction. A profile erased already answers OK with no second effect.
    async fn delete(&self, caller: &Caller, id: &str) -> Result<()> {
        let id = validate::id("id", id)?;
        caller.may_see(&id)?;
        let mut tx = self.db.begin().await?;
        let p = store::profile(&mut tx, &id)
            .await?
            .ok_or_else(|| ServiceError::not_found("user", id.clone()))?;
        if p.erased_at_us.is_some() {
            return Ok(());
        }
        let now = now_us();
        let erased = Profile {
            id: p.id.clone(),
            kind: p.kind,
            version: p.version + 1,
            erased_at_us: Some(now),
            created_at_us: p.created_at_us,
            updated_at_us: now,
            consent: Consent {
                at_us: now,
                ..Consent::default()
            },
            ..Profile::default()
        };
        store::update(&mut tx, &erased).await?;
        mesh_runtime::redact::redact_subject(&mut tx, &id).await?;
        tx.emit(Event::new(
            "user.deleted",
            &id,
            "UserDeleted",
            &UserDeleted {
                user_id: id.clone(),
                actor_id: caller.id().to_string(),
            },
        ))
        .await?;
        tx.commit().await?;
        tracing::info!(user = %id, actor = %caller.id(), "profile erased");
        Ok(())
    }
}

#[tonic::async_trait]
impl UserService for UserApi {
    async fn create_user(
        &self,
        r: Request<CreateUserRequest>,
    ) -> std::result::Result<Response<CreateUserResponse>, Status> {
        let caller = Caller::of(&r);
        let p = self.create(&caller, r.into_inner()).await?;
        Ok(Response::new(CreateUserResponse {
            user: Some(p.to_proto()),
        }))
    }

    async fn get_user(
        &self,
        r: Request<GetUserRequest>,
    ) -> std::result::Result<Response<GetUserResponse>, Status> {
        let caller = Caller::of(&r);
        let id = validate::id("id", &r.get_ref().id)?;
        let mut c = self.db.acquire().await.map_err(ServiceError::from)?;
        let p = self.visible(&mut c, &caller, &id).await?;
        Ok(Response::new(GetUserResponse {
            user: Some(p.to_proto()),
        }))
    }

    async fn update_user(
        &self,
        r: Request<UpdateUserRequest>,
    ) -> std::result::Result<Response<UpdateUserResponse>, Status> {
        let caller = Caller::of(&r);
        let p = self.update(&caller, r.into_inner()).await?;
        Ok(Response::new(UpdateUserResponse {
            user: Some(p.to_proto()),
        }))
    }

    async fn list_users(
        &self,
        r: Request<ListUsersRequest>,
    ) -> std::result::Result<Response<ListUsersResponse>, Status> {
        Ok(Response::new(self.list(r.into_inner()).await?))
    }

    async fn delete_user(
        &self,
        r: Request<DeleteUserRequest>,
    ) -> std::result::Result<Response<DeleteUserResponse>, Status> {
        let caller = Caller::of(&r);
        self.delete(&caller, &r.get_ref().id).await?;
        Ok(Response::new(DeleteUserResponse {}))
    }
}
