//! Applying a `UserUpdateRequest`'s mask to a profile: which fields a caller may write, each
//! value checked and named by its field path.

use mesh_contracts::user::v1::{User, UserKind};

use crate::caller::Caller;
use crate::profile::Profile;
use crate::validate;
use mesh_runtime::domain::ServiceError;

/// Fields a customer or staff member may write on a profile they may see.
const WRITABLE: [&str; 7] = [
    "display_name",
    "given_name",
    "family_name",
    "phone_number",
    "addresses",
    "marketing_consent",
    "locale",
];

/// Output-only or immutable fields: ignored by `*`, refused when named.
const READ_ONLY: [&str; 6] = [
    "id",
    "kind",
    "email",
    "email_verified",
    "create_time",
    "update_time",
];

/// Applies the fields of `new` named by `paths` to `p` (as `caller`) at `now_us`; returns the
/// names of the fields that changed. Checks every value; refuses unknown and read-only paths
/// naming `update_mask`, store assignments by non-admins with `PERMISSION_DENIED`.
pub fn apply(
    p: &mut Profile,
    new: &User,
    paths: &[String],
    caller: &Caller,
    now_us: i64,
) -> Result<Vec<String>, ServiceError> {
    if paths.is_empty() {
        return Err(ServiceError::invalid(
            "update_mask",
            "required: the fields to update, or *",
        ));
    }
    let mut fields: Vec<&str> = Vec::new();
    for path in paths {
        match path.as_str() {
            "*" => {
                fields.extend(WRITABLE);
                if caller.is_admin() && p.kind == UserKind::Staff {
                    fields.push("store_ids");
                }
            }
            f if WRITABLE.contains(&f) => fields.push(f),
            "store_ids" => fields.push("store_ids"),
            f if READ_ONLY.contains(&f) => {
                return Err(ServiceError::invalid(
                    "update_mask",
                    format!("`{f}` cannot be changed (output only, or owned by auth)"),
                ));
            }
            other => {
                return Err(ServiceError::invalid(
                    "update_mask",
                    format!(
                        "unknown field `{other}`; one of {}, store_ids",
                        WRITABLE.join(", ")
                    ),
                ));
            }
        }
    }
    fields.sort_unstable();
    fields.dedup();
    let mut changed = Vec::new();
    for f in fields {
        let did = match f {
            "display_name" => set(
                &mut p.display_name,
                validate::text("user.display_name", &new.display_name, 200)?,
            ),
            "given_name" => set(
                &mut p.given_name,
                validate::text("user.given_name", &new.given_name, 100)?,
            ),
            "family_name" => set(
                &mut p.family_name,
                validate::text("user.family_name", &new.family_name, 100)?,
            ),
            "phone_number" => set(
                &mut p.phone_number,
                validate::phone("user.phone_number", &new.phone_number)?,
            ),
            "locale" => set(&mut p.locale, validate::locale("user.locale", &new.locale)?),
            "addresses" => {
                let given = validate::addresses("user.addresses", &new.addresses)?;
                let did = given != p.addresses;
                p.addresses = given;
                did
            }
            "marketing_consent" => {
                let c = new.marketing_consent.clone().unwrap_or_default();
                let source = validate::consent_source(
                    "user.marketing_consent.source",
                    &c.source,
                    "profile",
                )?;
                let did =
                    (c.email, c.sms, c.push) != (p.consent.email, p.consent.sms, p.consent.push);
                if did {
                    p.consent.email = c.email;
                    p.consent.sms = c.sms;
                    p.consent.push = c.push;
                    p.consent.source = source;
                    p.consent.at_us = now_us;
                }
                did
            }
            "store_ids" => {
                if !caller.is_admin() {
                    return Err(ServiceError::PermissionDenied(
                        "only admins change store assignments".into(),
                    ));
                }
                let stores = validate::store_ids("user.store_ids", &new.store_ids)?;
                if p.kind != UserKind::Staff && !stores.is_empty() {
                    return Err(ServiceError::FailedPrecondition(format!(
                        "user `{}` is a customer; only staff work at stores",
                        p.id
                    )));
                }
                set(&mut p.store_ids, stores)
            }
            _ => false,
        };
        if did {
            changed.push(f.to_string());
        }
    }
    Ok(changed)
}

fn set<T: PartialEq>(slot: &mut T, value: T) -> bool {
    if *slot == value {
        false
    } else {
        *slot = value;
        true
    }
}
