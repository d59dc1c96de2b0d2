//! The notification service's SQL (portable: Postgres and SQLite) and the mapping of rows to
//! `notification.v1` messages. Deliveries change state only by conditional updates
//! (`WHERE status = 'QUEUED'`), so a delivery is finished once whoever races.

use mesh_contracts::notification::v1::{Channel, Delivery, DeliveryStatus, Preferences, Template};
use mesh_runtime::domain::time;
use mesh_runtime::outbox::Tx;
use mesh_runtime::sql_write::Write;
use sqlx::{AnyConnection, FromRow as _, Row as _};

use crate::validate::{channel_name, channel_of};

type Result<T> = std::result::Result<T, sqlx::Error>;

/// Microseconds since the Unix epoch (the kit's time unit).
pub fn now_micros() -> i64 {
    time::now_us()
}

/// A timestamp of Unix microseconds (`None` for 0: never).
pub fn ts(micros: i64) -> Option<prost_types::Timestamp> {
    time::to_optional_timestamp(micros)
}

/// A `templates` row ([`TEMPLATE_COLUMNS`]).
#[derive(sqlx::FromRow)]
struct TemplateRow {
    id: String,
    event_type: String,
    channel: String,
    locale: String,
    subject: String,
    body: String,
    enabled: i64,
    updated_at: i64,
}

impl From<TemplateRow> for Template {
    fn from(r: TemplateRow) -> Self {
        Template {
            id: r.id,
            event_type: r.event_type,
            channel: channel_of(&r.channel) as i32,
            locale: r.locale,
            subject: r.subject,
            body: r.body,
            enabled: r.enabled != 0,
            update_time: ts(r.updated_at),
        }
    }
}

const TEMPLATE_COLUMNS: &str =
    "id, event_type, channel, locale, subject, body, enabled, updated_at";

/// Creates or replaces the template of `(event_type, channel, locale)`; `true` if it replaced one.
pub async fn upsert_template(c: &mut AnyConnection, t: &Template) -> Result<(Template, bool)> {
    let channel = channel_name(Channel::try_from(t.channel).unwrap_or_default());
    let now = now_micros();
    let existing: Option<String> = sqlx::query_as::<_, (String,)>(
        "SELECT id FROM templates WHERE event_type = $1 AND channel = $2 AND locale = $3",
    )
    .bind(&t.event_type)
    .bind(channel)
    .bind(&t.locale)
    .fetch_optional(&mut *c)
    .await?
    .map(|(id,)| id);
    let id = match &existing {
        Some(id) => {
            sqlx::query("UPDATE templates SET subject = $1, body = $2, enabled = $3, updated_at = $4 WHERE id = $5")
                .bind(&t.subject)
                .bind(&t.body)
                .bind(i64::from(t.enabled))
                .bind(now)
                .bind(id)
                .execute(&mut *c)
                .await?;
            id.clone()
        }
        None => {
            let id = uuid::Uuid::now_v7().to_string();
            sqlx::query("INSERT INTO templates (id, event_type, channel, locale, subject, body, enabled, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
                .bind(&id)
                .bind(&t.event_type)
                .bind(channel)
                .bind(&t.locale)
                .bind(&t.subject)
                .bind(&t.body)
                .bind(i64::from(t.enabled))
                .bind(now)
                .execute(&mut *c)
                .await?;
            id
        }
    };
    let sql = format!("SELECT {TEMPLATE_COLUMNS} FROM templates WHERE id = $1");
    let row: TemplateRow = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(&id)
        .fetch_one(&mut *c)
        .await?;
    Ok((row.into(), existing.is_some()))
}

/// Up to `limit` templates after id `after`, by id.
pub async fn list_templates(
    c: &mut AnyConnection,
    event_type: Option<&str>,
    channel: Option<Channel>,
    after: &str,
    limit: i64,
) -> Result<Vec<Template>> {
    let sql = format!(
        "SELECT {TEMPLATE_COLUMNS} FROM templates WHERE id > $1 AND ($2 = '' OR event_type = $2) AND ($3 = '' OR channel = $3) ORDER BY id LIMIT $4"
    );
    let rows: Vec<TemplateRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(after)
        .bind(event_type.unwrap_or_default())
        .bind(channel.map(channel_name).unwrap_or_default())
        .bind(limit)
        .fetch_all(c)
        .await?;
    Ok(rows.into_iter().map(Template::from).collect())
}

/// What notifying a user of one event type needs: the user's preferences (with the email the
/// user service holds for them) and the enabled fallback-locale template of each channel.
#[derive(Debug, Clone, Default)]
pub struct NotifyPlan {
    /// The user's preferences (defaults when they set none); `update_time` is not read.
    pub preferences: Preferences,
    /// The templates of the event type, by channel.
    pub templates: Vec<(Channel, Template)>,
}

/// The [`NotifyPlan`] of `user_id` for `event_type`, in one statement: the templates joined
/// with the preferences and the contact's email. No template: nothing to send, and `None`.
pub async fn notify_plan(
    c: &mut AnyConnection,
    event_type: &str,
    user_id: &str,
) -> Result<Option<NotifyPlan>> {
    let rows = sqlx::query(
        "SELECT t.id, t.channel, t.subject, t.body, p.opted_out_channels, p.muted_event_types, \
         p.webhook_url, (SELECT k.email FROM contacts k WHERE k.user_id = $2) AS email \
         FROM templates t LEFT JOIN preferences p ON p.user_id = $2 \
         WHERE t.event_type = $1 AND t.locale = '' AND t.enabled = 1",
    )
    .bind(event_type)
    .bind(user_id)
    .fetch_all(c)
    .await?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let text = |row: &sqlx::any::AnyRow, column: &str| -> Result<String> {
        Ok(row
            .try_get::<Option<String>, _>(column)?
            .unwrap_or_default())
    };
    let preferences = Preferences {
        user_id: user_id.into(),
        opted_out_channels: split(&text(first, "opted_out_channels")?)
            .iter()
            .map(|c| channel_of(c) as i32)
            .collect(),
        muted_event_types: split(&text(first, "muted_event_types")?),
        email: text(first, "email")?,
        webhook_url: text(first, "webhook_url")?,
        ..Default::default()
    };
    let mut templates = Vec::with_capacity(rows.len());
    for row in &rows {
        let channel = channel_of(&text(row, "channel")?);
        templates.push((
            channel,
            Template {
                id: text(row, "id")?,
                event_type: event_type.into(),
                channel: channel as i32,
                subject: text(row, "subject")?,
                body: text(row, "body")?,
                enabled: true,
                ..Default::default()
            },
        ));
    }
    Ok(Some(NotifyPlan {
        preferences,
        templates,
    }))
}

fn split(list: &str) -> Vec<String> {
    list.split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// The preferences of `user_id` (defaults: nothing opted out, no addresses), with the email the
/// user service holds for them ([`crate::contacts`]).
pub async fn preferences(c: &mut AnyConnection, user_id: &str) -> Result<Preferences> {
    let email = crate::contacts::email_of(c, user_id).await?;
    let row: Option<(String, String, String, i64)> = sqlx::query_as("SELECT opted_out_channels, muted_event_types, webhook_url, updated_at FROM preferences WHERE user_id = $1")
        .bind(user_id)
        .fetch_optional(c)
        .await?;
    let Some((channels, muted, webhook_url, updated_at)) = row else {
        return Ok(Preferences {
            user_id: user_id.into(),
            email,
            ..Default::default()
        });
    };
    Ok(Preferences {
        user_id: user_id.into(),
        opted_out_channels: split(&channels)
            .iter()
            .map(|c| channel_of(c) as i32)
            .collect(),
        muted_event_types: split(&muted),
        email,
        webhook_url,
        update_time: ts(updated_at),
        ..Default::default()
    })
}

/// Stores `p` (all fields but the email, which is the user service's) for its user.
pub async fn save_preferences(c: &mut AnyConnection, p: &Preferences) -> Result<()> {
    let channels: Vec<&str> = p
        .opted_out_channels
        .iter()
        .map(|c| channel_name(Channel::try_from(*c).unwrap_or_default()))
        .collect();
    sqlx::query(
        "INSERT INTO preferences (user_id, opted_out_channels, muted_event_types, webhook_url, updated_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (user_id) DO UPDATE SET opted_out_channels = $2, muted_event_types = $3, webhook_url = $4, updated_at = $5",
    )
    .bind(&p.user_id)
    .bind(channels.join(","))
    .bind(p.muted_event_types.join(","))
    .bind(&p.webhook_url)
    .bind(now_micros())
    .execute(c)
    .await?;
    Ok(())
}

/// The stored name of a delivery status.
pub fn status_name(s: DeliveryStatus) -> &'static str {
    match s {
        DeliveryStatus::Queued => "QUEUED",
        DeliveryStatus::Sent => "SENT",
        DeliveryStatus::Failed => "FAILED",
        DeliveryStatus::Suppressed => "SUPPRESSED",
        DeliveryStatus::Unspecified => "UNSPECIFIED",
    }
}

fn status_of(name: &str) -> DeliveryStatus {
    match name {
        "QUEUED" => DeliveryStatus::Queued,
        "SENT" => DeliveryStatus::Sent,
        "FAILED" => DeliveryStatus::Failed,
        "SUPPRESSED" => DeliveryStatus::Suppressed,
        _ => DeliveryStatus::Unspecified,
    }
}

const DELIVERY_COLUMNS: &str = "id, user_id, channel, recipient, event_id, event_type, template_id, subject, body, status, attempts, last_error, traceparent, created_at, last_attempt_at, sent_at";

/// A delivery and its trace position.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryRow {
    /// The delivery.
    pub delivery: Delivery,
    /// Trace position of what caused it.
    pub traceparent: String,
}

/// A `deliveries` row as stored ([`DELIVERY_COLUMNS`]).
#[derive(sqlx::FromRow)]
struct StoredDelivery {
    id: String,
    user_id: String,
    channel: String,
    recipient: String,
    event_id: String,
    event_type: String,
    template_id: String,
    subject: String,
    body: String,
    status: String,
    attempts: i64,
    last_error: String,
    traceparent: String,
    created_at: i64,
    last_attempt_at: i64,
    sent_at: i64,
}

impl From<StoredDelivery> for DeliveryRow {
    fn from(r: StoredDelivery) -> Self {
        DeliveryRow {
            delivery: Delivery {
                id: r.id,
                user_id: r.user_id,
                channel: channel_of(&r.channel) as i32,
                recipient: r.recipient,
                event_id: r.event_id,
                event_type: r.event_type,
                template_id: r.template_id,
                subject: r.subject,
                body: r.body,
                status: status_of(&r.status) as i32,
                attempts: i32::try_from(r.attempts).unwrap_or(i32::MAX),
                last_error: r.last_error,
                create_time: ts(r.created_at),
                last_attempt_time: ts(r.last_attempt_at),
                sent_time: ts(r.sent_at),
            },
            traceparent: r.traceparent,
        }
    }
}

/// Inserts `d` (QUEUED or SUPPRESSED) unless `dedupe_key` is taken; returns it as inserted
/// (see [`insert_deliveries`]), or `None` when the key was taken.
pub async fn insert_delivery(
    tx: &mut Tx,
    d: &Delivery,
    dedupe_key: Option<&str>,
    traceparent: &str,
    lease_until: i64,
) -> Result<Option<DeliveryRow>> {
    let key = dedupe_key.map(str::to_string);
    Ok(insert_deliveries(tx, &[(d, key)], traceparent, lease_until)
        .await?
        .pop())
}

/// Inserts `deliveries` (QUEUED or SUPPRESSED, each with its dedupe key) in one statement,
/// skipping those whose key is taken; returns the rows inserted. A QUEUED one is inserted
/// already claimed, as [`claim`] would leave it (its first attempt counted, leased until
/// `lease_until`), for this process's deliverer to send without claiming it; a scan finds it
/// once the lease ran out. Inside a consumer the statement also records the handled event
/// ([`mesh_runtime::outbox::Tx::fetch_recording`]).
pub async fn insert_deliveries(
    tx: &mut Tx,
    deliveries: &[(&Delivery, Option<String>)],
    traceparent: &str,
    lease_until: i64,
) -> Result<Vec<DeliveryRow>> {
    if deliveries.is_empty() {
        return Ok(Vec::new());
    }
    const COLUMNS: usize = 12;
    let values = (0..deliveries.len())
        .map(|i| {
            let p = |k: usize| format!("${}", 3 + i * COLUMNS + k);
            let queued = format!("{} = 'QUEUED'", p(10));
            format!(
                "({}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, \
                 CASE WHEN {queued} THEN 1 ELSE 0 END, CASE WHEN {queued} THEN $1 ELSE 0 END, \
                 CASE WHEN {queued} THEN $2 ELSE $1 END, $1)",
                p(0),
                p(1),
                p(2),
                p(3),
                p(4),
                p(5),
                p(6),
                p(7),
                p(8),
                p(9),
                p(10),
                p(11)
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "INSERT INTO deliveries (id, dedupe_key, user_id, channel, recipient, event_id, event_type, template_id, subject, body, status, traceparent, attempts, last_attempt_at, next_attempt_at, created_at) \
         VALUES {values} ON CONFLICT (dedupe_key) DO NOTHING RETURNING {DELIVERY_COLUMNS}"
    );
    let mut insert = Write::new(sql).int(now_micros()).int(lease_until);
    for (d, key) in deliveries {
        insert = insert
            .text(&d.id)
            .opt_text(key.clone())
            .text(&d.user_id)
            .text(channel_name(
                Channel::try_from(d.channel).unwrap_or_default(),
            ))
            .text(&d.recipient)
            .text(&d.event_id)
            .text(&d.event_type)
            .text(&d.template_id)
            .text(&d.subject)
            .text(&d.body)
            .text(status_name(
                DeliveryStatus::try_from(d.status).unwrap_or_default(),
            ))
            .text(traceparent);
    }
    tx.fetch_recording(&insert)
        .await?
        .iter()
        .map(|r| Ok(StoredDelivery::from_row(r)?.into()))
        .collect()
}

/// The delivery with `dedupe_key`.
pub async fn delivery_by_key(c: &mut AnyConnection, key: &str) -> Result<Option<DeliveryRow>> {
    let sql = format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE dedupe_key = $1");
    let row: Option<StoredDelivery> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(key)
        .fetch_optional(c)
        .await?;
    Ok(row.map(DeliveryRow::from))
}

/// The delivery `id`.
pub async fn delivery(c: &mut AnyConnection, id: &str) -> Result<Option<DeliveryRow>> {
    let sql = format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = $1");
    let row: Option<StoredDelivery> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(c)
        .await?;
    Ok(row.map(DeliveryRow::from))
}

/// Claims the QUEUED delivery `id` until `lease_until`, counting an attempt, and returns it
/// (its `attempts` is this attempt's number); `None` if it is not QUEUED, or not due and not
/// `own_lease`. With `own_lease`, whether due or not: the retry of an attempt that failed on a
/// transient error takes back the lease that attempt may hold.
pub async fn claim(
    c: &mut AnyConnection,
    id: &str,
    now: i64,
    lease_until: i64,
    own_lease: bool,
) -> Result<Option<DeliveryRow>> {
    let sql = format!(
        "UPDATE deliveries SET attempts = attempts + 1, last_attempt_at = $1, next_attempt_at = $2 \
         WHERE id = $3 AND status = 'QUEUED' AND ($4 = 1 OR next_attempt_at <= $1) RETURNING {DELIVERY_COLUMNS}"
    );
    let row: Option<StoredDelivery> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(now)
        .bind(lease_until)
        .bind(id)
        .bind(i64::from(own_lease))
        .fetch_optional(c)
        .await?;
    Ok(row.map(DeliveryRow::from))
}

/// The write that finishes the QUEUED delivery `id` as SENT or FAILED (it changes no row if the
/// delivery is not QUEUED), to be joined to its event ([`mesh_runtime::Database::write_and_emit`]).
pub fn finish(id: &str, status: DeliveryStatus, error: &str, now: i64) -> Write {
    Write::new(
        "UPDATE deliveries SET status = $1, last_error = $2, sent_at = $3 WHERE id = $4 AND status = 'QUEUED'",
    )
    .text(status_name(status))
    .text(error)
    .int(if status == DeliveryStatus::Sent { now } else { 0 })
    .text(id)
}

/// Schedules the next attempt of the QUEUED delivery `id` at `at`, recording `error`.
pub async fn defer(c: &mut AnyConnection, id: &str, at: i64, error: &str) -> Result<()> {
    sqlx::query("UPDATE deliveries SET next_attempt_at = $1, last_error = $2 WHERE id = $3 AND status = 'QUEUED'")
        .bind(at)
        .bind(error)
        .bind(id)
        .execute(c)
        .await?;
    Ok(())
}

/// Ids of up to `limit` QUEUED deliveries due at `now`.
pub async fn due(c: &mut AnyConnection, now: i64, limit: i64) -> Result<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as("SELECT id FROM deliveries WHERE status = 'QUEUED' AND next_attempt_at <= $1 ORDER BY next_attempt_at LIMIT $2")
        .bind(now)
        .bind(limit)
        .fetch_all(c)
        .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// Filters and position of a delivery listing.
#[derive(Debug, Default, Clone)]
pub struct DeliveryFilter {
    /// Only this user.
    pub user_id: String,
    /// Only this status (stored name), or empty.
    pub status: String,
    /// Only this event type.
    pub event_type: String,
    /// Only this event id.
    pub event_id: String,
    /// Only this channel (stored name), or empty.
    pub channel: String,
    /// Before this (created_at, id), newest first.
    pub before: Option<(i64, String)>,
}

/// Up to `limit` deliveries, newest first, with their creation time.
pub async fn list_deliveries(
    c: &mut AnyConnection,
    f: &DeliveryFilter,
    limit: i64,
) -> Result<Vec<(i64, Delivery)>> {
    let (before_at, before_id) = f.before.clone().unwrap_or((i64::MAX, String::new()));
    let sql = format!(
        "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE ($1 = '' OR user_id = $1) AND ($2 = '' OR status = $2) AND ($3 = '' OR event_type = $3) \
         AND ($4 = '' OR event_id = $4) AND ($5 = '' OR channel = $5) AND (created_at < $6 OR (created_at = $6 AND id < $7)) \
         ORDER BY created_at DESC, id DESC LIMIT $8"
    );
    let rows: Vec<StoredDelivery> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(&f.user_id)
        .bind(&f.status)
        .bind(&f.event_type)
        .bind(&f.event_id)
        .bind(&f.channel)
        .bind(before_at)
        .bind(if f.before.is_some() {
            before_id
        } else {
            "\u{10FFFF}".to_string()
        })
        .bind(limit)
        .fetch_all(c)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.created_at, DeliveryRow::from(r).delivery))
        .collect())
}
