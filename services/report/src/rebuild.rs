//! `RebuildReadModels`: the read models rebuilt from report's own history of every event it
//! handled (`report_event_log`), into the next generation of their tables (the shadow) while the
//! active generation keeps answering, then swapped in.
//!
//! 1. Claim a new generation: `building_gen` = one above the active and any earlier rebuild's
//!    (a newer rebuild supersedes an older or crashed one; the older one fails its next step
//!    with `ABORTED`). Rows of abandoned generations are deleted.
//! 2. Replay the history in its order (`seq`), a chunk per transaction. Each chunk first takes
//!    the `report_state` row lock the consumer takes to record an event, so while it runs no
//!    event is being recorded, and every position up to `log_seq` is committed.
//! 3. The chunk that reaches `log_seq` is the swap: under the same lock the models not being
//!    rebuilt are copied into the new generation, and `active_gen` becomes the new one. Queries
//!    read `active_gen` in the statement that reads rows, so each sees one generation whole.
//! 4. The old generation's rows are deleted (rows a superseded rebuild left behind are deleted
//!    by the next rebuild's step 1).

use mesh_contracts::events::v1::Envelope;
use mesh_runtime::Database;
use prost::Message;
use sqlx::Row as _;

use crate::apply::{self, ApplyError, Gens};
use crate::error::ReportError;
use crate::models::Model;

/// Events replayed per transaction (and per hold of the lock the consumer waits for).
const CHUNK: i64 = 200;

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebuilt {
    /// Events replayed from the history.
    pub events_replayed: i64,
    /// The generation now active.
    pub generation: i64,
}

fn gens_for(models: &[Model], gen_: i64) -> Gens {
    let has = |m| models.contains(&m).then_some(gen_);
    Gens {
        sales: has(Model::SalesByShopDay),
        top: has(Model::TopProducts),
        stock: has(Model::StockSummary),
    }
}

/// Deletes rows of the model tables matching `condition` (on `gen`, formatted from integers).
async fn delete_generations(db: &Database, condition: &str) -> Result<(), ReportError> {
    for model in Model::ALL {
        for (table, _) in model.tables() {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE {condition}"
            )))
            .execute(db.pool())
            .await?;
        }
    }
    Ok(())
}

/// Rebuilds `models` from the history; see the module documentation.
pub async fn rebuild(db: &Database, models: &[Model]) -> Result<Rebuilt, ReportError> {
    let mut tx = db.begin().await?;
    let row = sqlx::query(
        "UPDATE report_state SET building_gen = CASE WHEN building_gen IS NOT NULL \
         AND building_gen > active_gen THEN building_gen ELSE active_gen END + 1 \
         WHERE id = 1 RETURNING building_gen, active_gen",
    )
    .fetch_one(&mut *tx)
    .await?;
    let (new_gen, active): (i64, i64) = (row.get(0), row.get(1));
    tx.commit().await?;
    // Rows of rebuilds that crashed or were superseded (always below the new generation).
    delete_generations(db, &format!("gen <> {active} AND gen < {new_gen}")).await?;
    let gens = gens_for(models, new_gen);
    let mut cursor = 0i64;
    let mut replayed = 0i64;
    loop {
        let mut tx = db.begin().await?;
        let state = sqlx::query(
            "UPDATE report_state SET building_gen = building_gen WHERE id = 1 \
             RETURNING active_gen, building_gen, log_seq",
        )
        .fetch_one(&mut *tx)
        .await?;
        let (active, building, head): (i64, Option<i64>, i64) =
            (state.get(0), state.get(1), state.get(2));
        if building != Some(new_gen) {
            return Err(ReportError::Superseded(format!(
                "another rebuild took over (generation {building:?}); this one ({new_gen}) stopped"
            )));
        }
        let rows = sqlx::query(
            "SELECT seq, event_type, event_time_us, envelope FROM report_event_log \
             WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(cursor)
        .bind(CHUNK)
        .fetch_all(&mut *tx)
        .await?;
        for row in &rows {
            let (seq, event_type, time_us, bytes): (i64, String, i64, Vec<u8>) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            cursor = seq;
            replayed += 1;
            let envelope = match Envelope::decode(bytes.as_slice()) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(seq, error = %e, "history entry does not decode; skipped");
                    continue;
                }
            };
            match apply::apply(&mut tx, gens, &envelope, time_us).await {
                Ok(()) => {}
                Err(ApplyError::Permanent(reason)) => {
                    tracing::warn!(seq, %event_type, %reason, "history entry no longer applies; skipped");
                }
                Err(ApplyError::Database(e)) => return Err(e.into()),
            }
        }
        if cursor >= head || rows.is_empty() {
            for model in Model::ALL.into_iter().filter(|m| !models.contains(m)) {
                for (table, columns) in model.tables() {
                    // Table and column names come from `Model::tables`, never from input.
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "INSERT INTO {table} (gen, {columns}) SELECT $1, {columns} FROM {table} \
                         WHERE gen = $2"
                    )))
                    .bind(new_gen)
                    .bind(active)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            sqlx::query(
                "UPDATE report_state SET active_gen = $1, building_gen = NULL WHERE id = 1",
            )
            .bind(new_gen)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            delete_generations(db, &format!("gen = {active}")).await?;
            tracing::info!(
                generation = new_gen,
                events = replayed,
                "read models rebuilt"
            );
            return Ok(Rebuilt {
                events_replayed: replayed,
                generation: new_gen,
            });
        }
        tx.commit().await?;
    }
}
