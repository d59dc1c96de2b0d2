//! The shop's SQL (portable: Postgres and SQLite): stores, machines and machine status.

use mesh_contracts::shop::v1::{Connectivity, Location, Machine, MachineStatus, Store};
use mesh_runtime::domain::time;
use mesh_runtime::outbox::Tx;
use sqlx::AnyPool;

use crate::error::ShopError;

type Result<T> = std::result::Result<T, ShopError>;

const MACHINE_COLUMNS: &str = "machine_id, store_id, model, slot_count, latitude, longitude, \
    location_description, firmware_version, connectivity, last_heartbeat_us, faults, \
    temperature_celsius, door_open, session_id, status_updated_us, created_us, updated_us";

const STORE_COLUMNS: &str = "store_id, display_name, address_lines, locality, region_code, \
    time_zone, created_us, updated_us";

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

/// A `stores` row.
#[derive(sqlx::FromRow)]
struct StoreRow {
    store_id: String,
    display_name: String,
    address_lines: String,
    locality: String,
    region_code: String,
    time_zone: String,
    created_us: i64,
    updated_us: i64,
}

impl From<StoreRow> for Store {
    fn from(r: StoreRow) -> Self {
        Store {
            name: format!("stores/{}", r.store_id),
            store_id: r.store_id,
            display_name: r.display_name,
            address_lines: if r.address_lines.is_empty() {
                Vec::new()
            } else {
                r.address_lines.split('\n').map(String::from).collect()
            },
            locality: r.locality,
            region_code: r.region_code,
            time_zone: r.time_zone,
            create_time: Some(time::to_timestamp(r.created_us)),
            update_time: Some(time::to_timestamp(r.updated_us)),
        }
    }
}

/// A `machines` row.
#[derive(sqlx::FromRow)]
struct MachineRow {
    machine_id: String,
    store_id: String,
    model: String,
    slot_count: i64,
    latitude: f64,
    longitude: f64,
    location_description: String,
    firmware_version: String,
    connectivity: String,
    last_heartbeat_us: i64,
    faults: String,
    temperature_celsius: f64,
    door_open: i64,
    session_id: String,
    status_updated_us: i64,
    created_us: i64,
    updated_us: i64,
}

impl From<MachineRow> for Machine {
    fn from(r: MachineRow) -> Self {
        Machine {
            name: format!("stores/{}/machines/{}", r.store_id, r.machine_id),
            machine_id: r.machine_id,
            store_id: r.store_id,
            model: r.model,
            slot_count: r.slot_count as i32,
            location: Some(Location {
                latitude: r.latitude,
                longitude: r.longitude,
                description: r.location_description,
            }),
            firmware_version: r.firmware_version,
            status: Some(MachineStatus {
                connectivity: connectivity_of(&r.connectivity) as i32,
                last_heartbeat_time: ts_micros(r.last_heartbeat_us),
                faults: split_faults(&r.faults),
                temperature_celsius: r.temperature_celsius,
                door_open: r.door_open != 0,
                session_id: r.session_id,
                update_time: ts_micros(r.status_updated_us),
            }),
            create_time: Some(time::to_timestamp(r.created_us)),
            update_time: Some(time::to_timestamp(r.updated_us)),
        }
    }
}

/// A status time; `None` for 0 (never).
fn ts_micros(us: i64) -> Option<prost_types::Timestamp> {
    (us > 0).then(|| time::to_timestamp(us))
}

/// Inserts a store; `false` when its id is taken.
pub async fn insert_store(tx: &mut Tx, s: &Store, now: i64) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO stores (store_id, display_name, address_lines, locality, region_code, time_zone, created_us, updated_us) \
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
    let sql = format!("SELECT {STORE_COLUMNS} FROM stores WHERE store_id = $1");
    let row: Option<StoreRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    Ok(row.map(Store::from))
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
    let sql = format!(
        "SELECT {STORE_COLUMNS} FROM stores WHERE ($1 = '' OR region_code = $1) AND store_id > $2 \
         ORDER BY store_id LIMIT $3"
    );
    let rows: Vec<StoreRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(region.unwrap_or(""))
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(Store::from).collect())
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
    let row: Option<MachineRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    Ok(row.map(Machine::from))
}

/// One machine, in `tx`, its row locked until the end of `tx` (on Postgres; SQLite's
/// `BEGIN IMMEDIATE` already serialises writers).
pub async fn machine_for_update(tx: &mut Tx, id: &str) -> Result<Option<Machine>> {
    let lock = match tx.database().backend() {
        mesh_runtime::storage::Backend::Postgres { .. } => " FOR UPDATE",
        mesh_runtime::storage::Backend::Sqlite => "",
    };
    let sql = format!("SELECT {MACHINE_COLUMNS} FROM machines WHERE machine_id = $1{lock}");
    let row: Option<MachineRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.map(Machine::from))
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
    let rows: Vec<MachineRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(f.store_id.clone().unwrap_or_default())
        .bind(f.connectivity.map(connectivity_name).unwrap_or(""))
        .bind(i64::from(f.only_faulted))
        .bind(f.after.clone().unwrap_or_default())
        .bind(limit)
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(Machine::from).collect())
}

/// Writes `status` (its heartbeat time as `heartbeat_us`, and the firmware version when not
/// empty) as the machine's, applied at `update_us`.
pub async fn write_status(
    tx: &mut Tx,
    machine_id: &str,
    status: &MachineStatus,
    firmware: &str,
    heartbeat_us: i64,
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
    .bind(heartbeat_us)
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
