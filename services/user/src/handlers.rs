//! Events from auth that shape profiles: `user.registered` creates the account's profile
//! (idempotent: a profile that exists, erased ones included, is left alone), and
//! `auth.roles_changed` makes the profile staff or customer to match the account's roles.

use mesh_contracts::auth::v1::Role;
use mesh_contracts::events::v1::{Envelope, RolesChanged, UserRegistered};
use mesh_contracts::user::v1::UserKind;
use mesh_runtime::consumer::HandlerError;
use mesh_runtime::outbox::Tx;
use mesh_runtime::typed_handler::{Handled, TypedHandler};

use crate::api::emit_updated;
use crate::profile::{Consent, Profile};
use crate::{store, validate};
use mesh_runtime::domain::ServiceError;
use mesh_runtime::domain::time::now_us;

fn failed(e: ServiceError) -> HandlerError {
    match e {
        ServiceError::Database(d) => HandlerError::retry(d),
        other => HandlerError::permanent(other),
    }
}

/// The profile kind of an account with `roles`.
fn kind_of_roles(roles: &[i32]) -> UserKind {
    if roles
        .iter()
        .any(|r| *r == Role::Staff as i32 || *r == Role::Admin as i32)
    {
        UserKind::Staff
    } else {
        UserKind::Customer
    }
}

/// `user.registered`: creates the account's profile with its email, display name and sign-up
/// consent, and emits `user.updated` (`changed_fields: ["created"]`).
#[derive(Debug, Clone, Copy)]
pub struct OnRegistered;

impl TypedHandler for OnRegistered {
    type Event = UserRegistered;

    async fn handle(&self, e: UserRegistered, _: &Envelope, tx: &mut Tx) -> Handled {
        if e.user_id.is_empty() {
            // A redacted event (the account was erased before its profile was made).
            return Ok(());
        }
        let id = validate::id("user_id", &e.user_id).map_err(failed)?;
        let now = now_us();
        let p = Profile {
            id,
            kind: kind_of_roles(&e.roles),
            display_name: validate::text("display_name", &e.display_name, 200).unwrap_or_default(),
            email: validate::email("email", &e.email).map_err(failed)?,
            consent: Consent {
                email: e.marketing_consent,
                sms: false,
                push: false,
                source: "signup".into(),
                at_us: now,
            },
            version: 1,
            created_at_us: now,
            updated_at_us: now,
            ..Profile::default()
        };
        if store::insert(tx, &p).await.map_err(HandlerError::retry)? {
            emit_updated(tx, &p, vec!["created".into()])
                .await
                .map_err(failed)?;
        }
        Ok(())
    }
}

/// `auth.roles_changed`: the profile becomes staff when the account holds the staff or admin
/// role, a customer otherwise (its store assignments are dropped then).
#[derive(Debug, Clone, Copy)]
pub struct OnRolesChanged;

impl TypedHandler for OnRolesChanged {
    type Event = RolesChanged;

    async fn handle(&self, e: RolesChanged, _: &Envelope, tx: &mut Tx) -> Handled {
        if e.account_id.is_empty() {
            return Ok(());
        }
        let Some(mut p) = store::profile(tx, &e.account_id)
            .await
            .map_err(HandlerError::retry)?
        else {
            // No profile (yet): user.registered creates it with the roles of its time;
            // a later change of roles arrives after it (same subject, in order).
            return Ok(());
        };
        let kind = kind_of_roles(&e.roles);
        if p.erased_at_us.is_some() || p.kind == kind {
            return Ok(());
        }
        p.kind = kind;
        let mut changed = vec!["kind".to_string()];
        if kind == UserKind::Customer && !p.store_ids.is_empty() {
            p.store_ids.clear();
            changed.push("store_ids".into());
        }
        p.version += 1;
        p.updated_at_us = now_us();
        store::update(tx, &p).await.map_err(HandlerError::retry)?;
        emit_updated(tx, &p, changed).await.map_err(failed)
    }
}
