//! The shop's SQL (portable: Postgres and SQLite): stores, machines and machine status.

use mesh_contracts::shop::v1::{Connectivity, Location, Machine, MachineStatus, Store};
use mesh_runtime::outbox::Tx;
use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row as _};

use crate::error::ShopError;

type Result<T> = std::result::Result<T, ShopError>;

const MACHINE_COLUMNS: &str = "machine_id, store_id, model, slot_count, latitude, longitude, \
    location_description, firmware_version, connectivity, last_heartbeat_us, faults, \
    temperature_celsius, door_open, session_id, status_updated_us, created_at, updated_at";

fn ts_secs(unix: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: unix,
        nanos: 0,
    }
}

/// A timestamp from Unix microseconds; `None` for 0 (never).
pub fn ts_micros(us: i64) -> Option<prost_types::Timestamp> {
    (us > 0).then(|| prost_types::Timestamp {
        seconds: us.div_euclid(1_000_000),
        nanos: (us.rem_euclid(1_000_000) * 1000) as i32,
    })
}

/// Unix microseconds of a timestamp.
pub fn micros(ts: &prost_types::Timestamp) -> i64 {
    ts.seconds
        .saturating_mul(1_000_000)
        .saturating_add(i64::from(ts.nanos) / 1000)
}

/// The stored name of a connectivity.
pub fn connectivity_name(c: Connectivity) -> &'static str {
    match c {
        Connectivity::Online => "ONLINE",
        Connectivity::Offline => "OFFLINE",
        Connectivity::Unspecified => "UNSPECIFIED",
    }
}

fn connectivity_of(name: &str) -> Connectivity {
    match name {
        "ONLINE" => Connectivity::Online,
        "OFFLINE" => Connectivity::Offline,
        _ => Connectivity::Unspecified,
    }
}

/// Faults as stored (sorted, joined by `,`).
pub fn join_faults(faults: &[String]) -> String {
    faults.join(",")
}

fn split_faults(s: &str) -> Vec<String> {
    if s.is_empty() {
        Vec::new()
    } else {
        s.split(',').map(String::from).collect()
    }
}

fn store_of(row: &AnyRow) -> std::result::Result<Store, sqlx::Error> {
    let id: String = row.try_get("store_id")?;
    let lines: String = row.try_get("address_lines")?;
    Ok(Store {
        name: format!("stores/{id}"),
        store_id: id,
        display_name: row.try_get("display_name")?,
        address_lines: if lines.is_empty() {
            Vec::new()
        } else {
            lines.split('\n').map(String::from).collect()
        },
        locality: row.try_get("locality")?,
        region_code: row.try_get("region_code")?,
        time_zone: row.try_get("time_zone")?,
        create_time: Some(ts_secs(row.try_get("created_at")?)),
        update_time: Some(ts_secs(row.try_get("updated_at")?)),
    })
}

fn machine_of(row: &AnyRow) -> std::result::Result<Machine, sqlx::Error> {
    let id: String = row.try_get("machine_id")?;
    let store: String = row.try_get("store_id")?;
    let connectivity: String = row.try_get("connectivity")?;
    let faults: String = row.try_get("faults")?;
    let door: i64 = row.try_get("door_open")?;
    let slot_count: i64 = row.try_get("slot_count")?;
    Ok(Machine {
        name: format!("stores/{store}/machines/{id}"),
        machine_id: id,
        store_id: store,
        model: row.try_get("model")?,
        slot_count: slot_count as i32,
        location: Some(Location {
            latitude: row.try_get("latitude")?,
            longitude: row.try_get("longitude")?,
            description: row.try_get("location_description")?,
        }),
        firmware_version: row.try_get("firmware_version")?,
        status: Some(MachineStatus {
            connectivity: connectivity_of(&connectivity) as i32,
            last_heartbeat_time: ts_micros(row.try_get("last_heartbeat_us")?),
            faults: split_faults(&faults),
            temperature_celsius: row.try_get("temperature_celsius")?,
            door_open: door != 0,
            session_id: row.try_get("session_id")?,
            update_time: ts_micros(row.try_get("status_updated_us")?),
        }),
        create_time: Some(ts_secs(row.try_get("created_at")?)),
        update_time: Some(ts_secs(row.try_get("updated_at")?)),
    })
}

/// Inserts a store; `false` when its id is taken.
pub async fn insert_store(tx: &mut Tx, s: &Store, now: i64) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO stores (store_id, display_name, address_lines, locality, region_code, time_zone, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7) ON CONFLICT (store_id) DO NOTHING",
    )
    .bind(&s.store_id)
    .bind(&s.display_name)
    .bind(s.address_lines.join("\n"))
    .bind(&s.locality)
    .bind(&s.region_code)
    .bind(&s.time_zone)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// One store.
pub async fn store(pool: &AnyPool, id: &str) -> Result<Option<Store>> {
    let row = sqlx::query("SELECT * FROM stores WHERE store_id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?;
    Ok(row.as_ref().map(store_of).transpose()?)
}

/// Whether a store exists, in `tx`.
pub async fn store_exists(tx: &mut Tx, id: &str) -> Result<bool> {
    let row = sqlx::query("SELECT store_id FROM stores WHERE store_id = $1")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.is_some())
}

/// Up to `limit` stores after `after`, optionally of one region, by id.
pub async fn stores(
    pool: &AnyPool,
    region: Option<&str>,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<Store>> {
    let rows = sqlx::query(
        "SELECT * FROM stores WHERE ($1 = '' OR region_code = $1) AND store_id > $2 ORDER BY store_id LIMIT $3",
    )
    .bind(region.unwrap_or(""))
    .bind(after.unwrap_or(""))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(store_of)
        .collect::<std::result::Result<_, _>>()?)
}

/// Inserts a machine (status never seen); `false` when its id is taken.
pub async fn insert_machine(tx: &mut Tx, m: &Machine, now: i64) -> Result<bool> {
    let loc = m.location.clone().unwrap_or_default();
    let sql = format!(
        "INSERT INTO machines ({MACHINE_COLUMNS}) VALUES \
         ($1, $2, $3, $4, $5, $6, $7, '', 'UNSPECIFIED', 0, '', 0, 0, '', 0, $8, $8) \
         ON CONFLICT (machine_id) DO NOTHING"
    );
    let done = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&m.machine_id)
        .bind(&m.store_id)
        .bind(&m.model)
        .bind(i64::from(m.slot_count))
        .bind(loc.latitude)
        .bind(loc.longitude)
        .bind(&loc.description)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// One machine.
pub async fn machine(pool: &AnyPool, id: &str) -> Result<Option<Machine>> {
    let sql = format!("SELECT {MACHINE_COLUMNS} FROM machines WHERE machine_id = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    Ok(row.as_ref().map(machine_of).transpose()?)
}

/// One machine, in `tx`, its row locked until the end of `tx` (on Postgres; SQLite's
/// `BEGIN IMMEDIATE` already serialises writers).
pub async fn machine_for_update(tx: &mut Tx, id: &str) -> Result<Option<Machine>> {
    let lock = match tx.database().backend() {
        mesh_runtime::storage::Backend::Postgres { .. } => " FOR UPDATE",
        mesh_runtime::storage::Backend::Sqlite => "",
    };
    let sql = format!("SELECT {MACHINE_COLUMNS} FROM machines WHERE machine_id = $1{lock}");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.as_ref().map(machine_of).transpose()?)
}

/// Filters and position of a machine listing.
#[derive(Debug, Default)]
pub struct MachineFilter {
    /// Only this store.
    pub store_id: Option<String>,
    /// Only this connectivity.
    pub connectivity: Option<Connectivity>,
    /// Only machines with a fault.
    pub only_faulted: bool,
    /// After this machine id.
    pub after: Option<String>,
}

/// Up to `limit` machines, by id.
pub async fn machines(pool: &AnyPool, f: &MachineFilter, limit: i64) -> Result<Vec<Machine>> {
    let sql = format!(
        "SELECT {MACHINE_COLUMNS} FROM machines WHERE ($1 = '' OR store_id = $1) \
         AND ($2 = '' OR connectivity = $2) AND ($3 = 0 OR faults <> '') AND machine_id > $4 \
         ORDER BY machine_id LIMIT $5"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(f.store_id.clone().unwrap_or_default())
        .bind(f.connectivity.map(connectivity_name).unwrap_or(""))
        .bind(i64::from(f.only_faulted))
        .bind(f.after.clone().unwrap_or_default())
        .bind(limit)
        .fetch_all(pool)
        .await?;
    Ok(rows
        .iter()
        .map(machine_of)
        .collect::<std::result::Result<_, _>>()?)
}

/// Writes `status` (and the firmware version when not empty) as the machine's, applied at
/// `update_us`.
pub async fn write_status(
    tx: &mut Tx,
    machine_id: &str,
    status: &MachineStatus,
    firmware: &str,
    update_us: i64,
) -> Result<()> {
    let connectivity =
        connectivity_name(Connectivity::try_from(status.connectivity).unwrap_or_default());
    sqlx::query(
        "UPDATE machines SET connectivity = $1, last_heartbeat_us = $2, faults = $3, \
         temperature_celsius = $4, door_open = $5, session_id = $6, status_updated_us = $7, \
         firmware_version = CASE WHEN $8 = '' THEN firmware_version ELSE $8 END \
         WHERE machine_id = $9",
    )
    .bind(connectivity)
    .bind(
        status
            .last_heartbeat_time
            .as_ref()
            .map(micros)
            .unwrap_or_default(),
    )
    .bind(join_faults(&status.faults))
    .bind(status.temperature_celsius)
    .bind(i64::from(status.door_open))
    .bind(&status.session_id)
    .bind(update_us)
    .bind(firmware)
    .bind(machine_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
