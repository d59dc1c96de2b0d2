//! The user service's SQL (portable: Postgres and SQLite). A profile is one `profiles` row plus
//! its `addresses` and `store_assignments` rows, always written together in the caller's
//! transaction.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use mesh_contracts::common::v1::PostalAddress;
use mesh_contracts::user::v1::{Address, UserKind};
use prost::Message as _;
use sqlx::{AnyConnection, AssertSqlSafe};

use crate::profile::{Consent, Profile, kind_name, kind_of};

type Result<T> = std::result::Result<T, sqlx::Error>;

const COLUMNS: &str = "id, kind, display_name, given_name, family_name, email, email_verified, \
    phone_number, locale, consent_email, consent_sms, consent_push, consent_source, consent_at_us, \
    version, erased_at_us, created_at_us, updated_at_us";

/// A `profiles` row as stored.
#[derive(Debug, sqlx::FromRow)]
struct ProfileRow {
    id: String,
    kind: String,
    display_name: String,
    given_name: String,
    family_name: String,
    email: String,
    email_verified: i64,
    phone_number: String,
    locale: String,
    consent_email: i64,
    consent_sms: i64,
    consent_push: i64,
    consent_source: String,
    consent_at_us: i64,
    version: i64,
    erased_at_us: Option<i64>,
    created_at_us: i64,
    updated_at_us: i64,
}

impl From<ProfileRow> for Profile {
    fn from(r: ProfileRow) -> Self {
        Profile {
            id: r.id,
            kind: kind_of(&r.kind),
            display_name: r.display_name,
            given_name: r.given_name,
            family_name: r.family_name,
            email: r.email,
            email_verified: r.email_verified != 0,
            phone_number: r.phone_number,
            locale: r.locale,
            consent: Consent {
                email: r.consent_email != 0,
                sms: r.consent_sms != 0,
                push: r.consent_push != 0,
                source: r.consent_source,
                at_us: r.consent_at_us,
            },
            addresses: Vec::new(),
            store_ids: Vec::new(),
            version: r.version,
            erased_at_us: r.erased_at_us,
            created_at_us: r.created_at_us,
            updated_at_us: r.updated_at_us,
        }
    }
}

/// An `addresses` row as stored.
#[derive(Debug, sqlx::FromRow)]
struct AddressRow {
    user_id: String,
    id: String,
    label: String,
    postal_address: String,
    is_default: i64,
}

/// Inserts `p` with its addresses and stores; `false` (and nothing written) when its id exists.
pub async fn insert(c: &mut AnyConnection, p: &Profile) -> Result<bool> {
    // Dynamic SQL built from constants only (the column list); values are bound.
    let done = sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO profiles ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, \
         $12, $13, $14, $15, $16, $17, $18) ON CONFLICT (id) DO NOTHING"
    )))
    .bind(&p.id)
    .bind(kind_name(p.kind))
    .bind(&p.display_name)
    .bind(&p.given_name)
    .bind(&p.family_name)
    .bind(&p.email)
    .bind(i64::from(p.email_verified))
    .bind(&p.phone_number)
    .bind(&p.locale)
    .bind(i64::from(p.consent.email))
    .bind(i64::from(p.consent.sms))
    .bind(i64::from(p.consent.push))
    .bind(&p.consent.source)
    .bind(p.consent.at_us)
    .bind(p.version)
    .bind(p.erased_at_us)
    .bind(p.created_at_us)
    .bind(p.updated_at_us)
    .execute(&mut *c)
    .await?;
    if done.rows_affected() == 0 {
        return Ok(false);
    }
    replace_addresses(c, &p.id, &p.addresses).await?;
    replace_stores(c, &p.id, &p.store_ids).await?;
    Ok(true)
}

/// Writes every field of `p` (an existing profile) with its addresses and stores.
pub async fn update(c: &mut AnyConnection, p: &Profile) -> Result<()> {
    sqlx::query(
        "UPDATE profiles SET kind = $2, display_name = $3, given_name = $4, family_name = $5, \
         email = $6, email_verified = $7, phone_number = $8, locale = $9, consent_email = $10, \
         consent_sms = $11, consent_push = $12, consent_source = $13, consent_at_us = $14, \
         version = $15, erased_at_us = $16, updated_at_us = $17 WHERE id = $1",
    )
    .bind(&p.id)
    .bind(kind_name(p.kind))
    .bind(&p.display_name)
    .bind(&p.given_name)
    .bind(&p.family_name)
    .bind(&p.email)
    .bind(i64::from(p.email_verified))
    .bind(&p.phone_number)
    .bind(&p.locale)
    .bind(i64::from(p.consent.email))
    .bind(i64::from(p.consent.sms))
    .bind(i64::from(p.consent.push))
    .bind(&p.consent.source)
    .bind(p.consent.at_us)
    .bind(p.version)
    .bind(p.erased_at_us)
    .bind(p.updated_at_us)
    .execute(&mut *c)
    .await?;
    replace_addresses(c, &p.id, &p.addresses).await?;
    replace_stores(c, &p.id, &p.store_ids).await
}

async fn replace_addresses(c: &mut AnyConnection, id: &str, addresses: &[Address]) -> Result<()> {
    sqlx::query("DELETE FROM addresses WHERE user_id = $1")
        .bind(id)
        .execute(&mut *c)
        .await?;
    for (i, a) in addresses.iter().enumerate() {
        let encoded = STANDARD.encode(a.postal_address.clone().unwrap_or_default().encode_to_vec());
        sqlx::query(
            "INSERT INTO addresses (user_id, position, id, label, postal_address, is_default) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(i64::try_from(i).unwrap_or(i64::MAX))
        .bind(&a.id)
        .bind(&a.label)
        .bind(encoded)
        .bind(i64::from(a.is_default))
        .execute(&mut *c)
        .await?;
    }
    Ok(())
}

async fn replace_stores(c: &mut AnyConnection, id: &str, stores: &[String]) -> Result<()> {
    sqlx::query("DELETE FROM store_assignments WHERE user_id = $1")
        .bind(id)
        .execute(&mut *c)
        .await?;
    for s in stores {
        sqlx::query("INSERT INTO store_assignments (user_id, store_id) VALUES ($1, $2)")
            .bind(id)
            .bind(s)
            .execute(&mut *c)
            .await?;
    }
    Ok(())
}

/// Fills in the addresses and stores of `profiles` (two statements for the whole page).
async fn attach(c: &mut AnyConnection, profiles: &mut [Profile]) -> Result<()> {
    if profiles.is_empty() {
        return Ok(());
    }
    let marks = (1..=profiles.len())
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let addresses = {
        let sql = format!(
            "SELECT user_id, id, label, postal_address, is_default FROM addresses \
             WHERE user_id IN ({marks}) ORDER BY user_id, position"
        );
        let mut q = sqlx::query_as::<_, AddressRow>(AssertSqlSafe(sql));
        for p in profiles.iter() {
            q = q.bind(&p.id);
        }
        q.fetch_all(&mut *c).await?
    };
    for r in addresses {
        let postal = STANDARD
            .decode(r.postal_address)
            .ok()
            .and_then(|b| PostalAddress::decode(b.as_slice()).ok())
            .unwrap_or_default();
        if let Some(p) = profiles.iter_mut().find(|p| p.id == r.user_id) {
            p.addresses.push(Address {
                id: r.id,
                label: r.label,
                postal_address: Some(postal),
                is_default: r.is_default != 0,
            });
        }
    }
    let sql = format!(
        "SELECT user_id, store_id FROM store_assignments WHERE user_id IN ({marks}) \
         ORDER BY user_id, store_id"
    );
    let mut q = sqlx::query_as::<_, (String, String)>(AssertSqlSafe(sql));
    for p in profiles.iter() {
        q = q.bind(&p.id);
    }
    for (user, store) in q.fetch_all(&mut *c).await? {
        if let Some(p) = profiles.iter_mut().find(|p| p.id == user) {
            p.store_ids.push(store);
        }
    }
    Ok(())
}

/// The profile `id` (erased ones too), with its addresses and stores.
pub async fn profile(c: &mut AnyConnection, id: &str) -> Result<Option<Profile>> {
    let row = sqlx::query_as::<_, ProfileRow>(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM profiles WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&mut *c)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let mut one = [Profile::from(row)];
    attach(c, &mut one).await?;
    let [p] = one;
    Ok(Some(p))
}

/// What `ListUsers` filters by.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this kind.
    pub kind: Option<UserKind>,
    /// Only staff assigned to this store.
    pub store_id: Option<String>,
    /// Lower-case substring of a name or the email.
    pub query: Option<String>,
    /// Keyset: profiles strictly older than this (created_at_us, id).
    pub before: Option<(i64, String)>,
}

/// Up to `limit` profiles (not erased) matching `f`, newest first.
pub async fn list(c: &mut AnyConnection, f: &Filter, limit: i64) -> Result<Vec<Profile>> {
    let mut sql = format!("SELECT {COLUMNS} FROM profiles p WHERE erased_at_us IS NULL");
    let mut n = 0;
    let mut next = || {
        n += 1;
        format!("${n}")
    };
    if f.kind.is_some() {
        sql += &format!(" AND kind = {}", next());
    }
    if f.store_id.is_some() {
        sql += &format!(
            " AND EXISTS (SELECT 1 FROM store_assignments s WHERE s.user_id = p.id AND s.store_id = {})",
            next()
        );
    }
    if f.query.is_some() {
        let m = next();
        sql += &format!(
            " AND (LOWER(display_name) LIKE {m} ESCAPE '\\' OR LOWER(given_name) LIKE {m} ESCAPE '\\' \
             OR LOWER(family_name) LIKE {m} ESCAPE '\\' OR email LIKE {m} ESCAPE '\\')"
        );
    }
    if f.before.is_some() {
        let (t, i) = (next(), next());
        sql += &format!(" AND (created_at_us < {t} OR (created_at_us = {t} AND id < {i}))");
    }
    sql += &format!(" ORDER BY created_at_us DESC, id DESC LIMIT {}", next());
    let mut q = sqlx::query_as::<_, ProfileRow>(AssertSqlSafe(sql));
    if let Some(k) = f.kind {
        q = q.bind(kind_name(k));
    }
    if let Some(s) = &f.store_id {
        q = q.bind(s.clone());
    }
    if let Some(text) = &f.query {
        let escaped = text
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        q = q.bind(format!("%{escaped}%"));
    }
    if let Some((t, i)) = &f.before {
        q = q.bind(*t).bind(i.clone());
    }
    let rows = q.bind(limit).fetch_all(&mut *c).await?;
    let mut out: Vec<Profile> = rows.into_iter().map(Profile::from).collect();
    attach(c, &mut out).await?;
    Ok(out)
}
