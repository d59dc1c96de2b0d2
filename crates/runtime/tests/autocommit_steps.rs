//! A consumer's steps that run without a transaction, on SQLite and (when
//! `MESH_TEST_DATABASE_URL` is set) Postgres.
//!
//! One-statement steps (`Step::OneStatement`): alone in its group on Postgres the step runs
//! without a transaction, its statement carrying the handled record; delivered again it has its
//! effect once; a step whose statement completes nothing, a group of several events and a
//! redelivery run in a transaction (a failure after the step's second write leaves nothing).
//!
//! A one-statement step whose statement is a `Tx::write_and_emit` (reads before it): alone on
//! Postgres its writes, its event and its record commit together in autocommit, or, when its
//! first write changes nothing, none of them, and the step runs in a transaction.
//!
//! Repeatable steps (`Step::Repeatable`): alone in its group on Postgres the step runs without a
//! transaction and without a handled record, as often as it is delivered; a step that asks for a
//! transaction (`Tx::need_transaction`), or emits, runs again in one, with the record, and counts
//! once. SQLite always runs the transaction.
//!
//! Whether a step ran in a transaction is read from Postgres: the last statement its connection
//! ran (`pg_stat_activity`) is the step's own, or `COMMIT`.

use std::sync::Arc;

use mesh_contracts::events::v1::{Envelope, ProductDeleted};
use mesh_runtime::Database;
use mesh_runtime::Migrations;
use mesh_runtime::bus::memory::MemoryBus;
use mesh_runtime::bus::{Delivery, DeliveryOptions, EventBus};
use mesh_runtime::config::DatabaseTarget;
use mesh_runtime::consumer::{Consumer, HandlerError, Outcome, Step};
use mesh_runtime::outbox::{Event, Tx};
use mesh_runtime::sql_write::Write;
use mesh_runtime::typed_handler::{Handled, TypedHandler, Undecoded};
use mesh_testkit::unique;
use sqlx::Row as _;

async fn open(target: &DatabaseTarget) -> Database {
    let db = Database::connect("svc", target).await.expect("connect");
    db.migrate(&Migrations::NONE).await.expect("migrate");
    sqlx::query(
        "CREATE TABLE steps (id TEXT PRIMARY KEY, state TEXT NOT NULL, n BIGINT NOT NULL DEFAULT 0, \
         late BIGINT NOT NULL DEFAULT 0, pid BIGINT NOT NULL DEFAULT -1)",
    )
    .execute(db.pool())
    .await
    .expect("steps table");
    db
}

/// The server process of the statement's connection (Postgres), 0 on SQLite.
fn pid(tx: &Tx) -> &'static str {
    if tx.backend_name() == "PostgreSQL" {
        "pg_backend_pid()"
    } else {
        "0"
    }
}

/// Closes the open step row named by the event's subject: one conditional statement. When the
/// row is not open the step takes a second write (`late`), and fails after it for a subject
/// starting with `poison`.
struct Close;

impl TypedHandler for Close {
    type Event = Undecoded;
    const STEP: Step = Step::OneStatement;

    async fn handle(&self, _: Undecoded, event: &Envelope, tx: &mut Tx) -> Handled {
        let pid = pid(tx);
        let close = Write::new(format!(
            "UPDATE steps SET state = 'closed', n = n + 1, pid = {pid} WHERE id = $1 AND state = 'open' RETURNING n"
        ))
        .text(&event.subject);
        if !tx.fetch_recording(&close).await?.is_empty() {
            return Ok(());
        }
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE steps SET late = late + 1, pid = {pid} WHERE id = $1"
        )))
        .bind(&event.subject)
        .execute(&mut **tx)
        .await?;
        if event.subject.starts_with("poison") {
            return Err(HandlerError::retry("poisoned after its second write"));
        }
        Ok(())
    }
}

fn consumer(db: &Database) -> Consumer {
    let bus: Arc<dyn EventBus> = Arc::new(MemoryBus::new(DeliveryOptions::default()));
    Consumer::new(db.clone(), bus, unique("g")).on("product.deleted", Close)
}

/// A delivery (attempt `attempt`) of event `id` about step row `subject`.
fn delivery(id: &str, subject: &str, attempt: u32) -> Delivery {
    let envelope = Envelope {
        id: id.into(),
        ..mesh_testkit::envelope(
            "product.deleted",
            subject,
            "ProductDeleted",
            &ProductDeleted::default(),
        )
    };
    mesh_testkit::delivery(&envelope, &format!("1-{id}"), attempt)
}

async fn add(db: &Database, id: &str, state: &str) {
    sqlx::query("INSERT INTO steps (id, state) VALUES ($1, $2)")
        .bind(id)
        .bind(state)
        .execute(db.pool())
        .await
        .unwrap();
}

/// `(state, n, late)` of step row `id`.
async fn step(db: &Database, id: &str) -> (String, i64, i64) {
    let r = sqlx::query("SELECT state, n, late FROM steps WHERE id = $1")
        .bind(id)
        .fetch_one(db.pool())
        .await
        .unwrap();
    (
        r.try_get("state").unwrap(),
        r.try_get("n").unwrap(),
        r.try_get("late").unwrap(),
    )
}

/// Whether the last write to step row `id` ran in a transaction: on Postgres its connection's
/// last statement is `COMMIT`; `None` on SQLite, which always runs one. Read over a connection
/// of its own, before the test uses the pool again (which would run another statement on it).
async fn in_transaction(target: &DatabaseTarget, id: &str) -> Option<bool> {
    let DatabaseTarget::Postgres { url, schema } = target else {
        return None;
    };
    let mut own = <sqlx::AnyConnection as sqlx::Connection>::connect(url)
        .await
        .unwrap();
    let sql = format!(
        "SELECT query FROM pg_stat_activity WHERE pid = (SELECT CAST(pid AS INTEGER) FROM \"{schema}\".steps WHERE id = $1)"
    );
    let last: String = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_one(&mut own)
        .await
        .unwrap()
        .try_get("query")
        .unwrap();
    Some(last.trim().eq_ignore_ascii_case("COMMIT"))
}

/// Asserts that the last write to step row `id` ran in a transaction (on Postgres; SQLite always
/// runs one).
async fn assert_in_transaction(name: &str, target: &DatabaseTarget, id: &str) {
    assert_ne!(
        in_transaction(target, id).await,
        Some(false),
        "{name}: {id} in a transaction"
    );
}

#[tokio::test]
async fn a_one_statement_step_alone_runs_without_a_transaction_and_takes_effect_once() {
    for (name, target) in mesh_testkit::databases("one-statement step alone") {
        let db = open(&target).await;
        let c = consumer(&db);
        add(&db, "a", "open").await;
        let first = c.handle(&delivery("e-a", "a", 1)).await;
        assert!(matches!(first, Outcome::Handled), "{name}: {first:?}");
        assert_eq!(
            in_transaction(&target, "a").await,
            (name == "postgres").then_some(false),
            "{name}: without a transaction on Postgres"
        );
        assert_eq!(step(&db, "a").await, ("closed".into(), 1, 0), "{name}");
        // Published twice (a first delivery again), then redelivered: one effect.
        for attempt in [1, 2] {
            let again = c.handle(&delivery("e-a", "a", attempt)).await;
            assert!(matches!(again, Outcome::Duplicate), "{name}: {again:?}");
        }
        assert_eq!(step(&db, "a").await, ("closed".into(), 1, 0), "{name}");
    }
}

#[tokio::test]
async fn a_step_its_statement_does_not_complete_runs_in_a_transaction() {
    for (name, target) in mesh_testkit::databases("one-statement step incomplete") {
        let db = open(&target).await;
        let c = consumer(&db);
        // Not open: the statement changes nothing, the step takes its second write, in a
        // transaction with the record.
        add(&db, "held", "held").await;
        let first = c.handle(&delivery("e-held", "held", 1)).await;
        assert!(matches!(first, Outcome::Handled), "{name}: {first:?}");
        assert_in_transaction(name, &target, "held").await;
        assert_eq!(step(&db, "held").await, ("held".into(), 0, 1), "{name}");
        let again = c.handle(&delivery("e-held", "held", 1)).await;
        assert!(matches!(again, Outcome::Duplicate), "{name}: {again:?}");
        assert_eq!(
            step(&db, "held").await.2,
            1,
            "{name}: its second write once"
        );

        // The second write fails the step after it ran: the transaction leaves nothing, and
        // no record, so the event is retried.
        add(&db, "poison", "held").await;
        let failed = c.handle(&delivery("e-poison", "poison", 1)).await;
        assert!(
            matches!(failed, Outcome::Retry { .. }),
            "{name}: {failed:?}"
        );
        assert_eq!(step(&db, "poison").await, ("held".into(), 0, 0), "{name}");
    }
}

#[tokio::test]
async fn a_group_of_several_events_and_a_redelivery_keep_the_transaction() {
    for (name, target) in mesh_testkit::databases("one-statement step in a group") {
        let db = open(&target).await;
        let c = consumer(&db);
        add(&db, "b", "open").await;
        add(&db, "c", "open").await;
        let handled = c
            .handle_batch(vec![delivery("e-b", "b", 1), delivery("e-c", "c", 1)])
            .await;
        assert!(
            handled.iter().all(|(_, o)| matches!(o, Outcome::Handled)),
            "{name}: {handled:?}"
        );
        for id in ["b", "c"] {
            assert_in_transaction(name, &target, id).await;
        }
        for id in ["b", "c"] {
            assert_eq!(step(&db, id).await, ("closed".into(), 1, 0), "{name}");
        }

        // A redelivery of an event not handled yet (its consumer died first): a transaction.
        add(&db, "d", "open").await;
        let redelivered = c.handle(&delivery("e-d", "d", 2)).await;
        assert!(
            matches!(redelivered, Outcome::Handled),
            "{name}: {redelivered:?}"
        );
        assert_in_transaction(name, &target, "d").await;
        assert_eq!(step(&db, "d").await, ("closed".into(), 1, 0), "{name}");
    }
}

/// A repeatable step on step row `subject`: reads it; an `open` row is closed by a conditional
/// update (repeatable); a `count` row has its `n` counted once, which asks for the transaction
/// first; for an `emit` row the step emits an event without asking, before any write (refused
/// in autocommit, so it too runs again in a transaction), then closes the row.
struct Settle;

impl TypedHandler for Settle {
    type Event = Undecoded;
    const STEP: Step = Step::Repeatable;

    async fn handle(&self, _: Undecoded, event: &Envelope, tx: &mut Tx) -> Handled {
        let pid = pid(tx);
        let state: String = sqlx::query("SELECT state FROM steps WHERE id = $1")
            .bind(&event.subject)
            .fetch_one(&mut **tx)
            .await?
            .try_get("state")?;
        let update = match state.as_str() {
            "open" => "state = 'closed'",
            "count" => {
                tx.need_transaction()?;
                "n = n + 1, state = 'counted'"
            }
            "emit" => {
                tx.emit(Event::new(
                    "product.deleted",
                    &event.subject,
                    "ProductDeleted",
                    &ProductDeleted::default(),
                ))
                .await?;
                "state = 'closed'"
            }
            _ => return Ok(()),
        };
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE steps SET {update}, pid = {pid} WHERE id = $1 AND state = $2"
        )))
        .bind(&event.subject)
        .bind(&state)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

/// A consumer of repeatable steps, and its group's name.
fn repeatable_consumer(db: &Database) -> (Consumer, String) {
    let bus: Arc<dyn EventBus> = Arc::new(MemoryBus::new(DeliveryOptions::default()));
    let group = unique("r");
    (
        Consumer::new(db.clone(), bus, group.clone()).on("product.deleted", Settle),
        group,
    )
}

/// How many events `group` recorded as handled.
async fn recorded(db: &Database, group: &str) -> i64 {
    rows(db, "mesh_handled_events", "consumer", group).await
}

/// Outbox rows about step row `subject`.
async fn emitted(db: &Database, subject: &str) -> i64 {
    rows(db, "mesh_outbox", "subject", subject).await
}

/// Rows of `table` whose `column` is `value`.
async fn rows(db: &Database, table: &str, column: &str, value: &str) -> i64 {
    let sql = format!("SELECT CAST(COUNT(*) AS BIGINT) AS n FROM {table} WHERE {column} = $1");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(value)
        .fetch_one(db.pool())
        .await
        .unwrap()
        .try_get("n")
        .unwrap()
}

#[tokio::test]
async fn a_repeatable_step_alone_runs_without_a_transaction_or_a_record() {
    for (name, target) in mesh_testkit::databases("repeatable step alone") {
        let db = open(&target).await;
        let (c, group) = repeatable_consumer(&db);
        let postgres = name == "postgres";
        add(&db, "r-open", "open").await;
        let first = c.handle(&delivery("e-open", "r-open", 1)).await;
        assert!(matches!(first, Outcome::Handled), "{name}: {first:?}");
        assert_eq!(
            in_transaction(&target, "r-open").await,
            postgres.then_some(false),
            "{name}: without a transaction on Postgres"
        );
        assert_eq!(step(&db, "r-open").await, ("closed".into(), 0, 0), "{name}");
        assert_eq!(
            recorded(&db, &group).await,
            if postgres { 0 } else { 1 },
            "{name}: no handled record on Postgres"
        );
        // Delivered again: run again on Postgres (nothing recorded), harmlessly; a duplicate
        // where the transaction recorded it.
        let again = c.handle(&delivery("e-open", "r-open", 2)).await;
        let expected = if postgres {
            matches!(again, Outcome::Handled)
        } else {
            matches!(again, Outcome::Duplicate)
        };
        assert!(expected, "{name}: {again:?}");
        assert_eq!(step(&db, "r-open").await, ("closed".into(), 0, 0), "{name}");
    }
}

#[tokio::test]
async fn a_repeatable_step_that_asks_for_a_transaction_counts_once() {
    for (name, target) in mesh_testkit::databases("repeatable step asks") {
        let db = open(&target).await;
        let (c, group) = repeatable_consumer(&db);
        add(&db, "r-count", "count").await;
        let first = c.handle(&delivery("e-count", "r-count", 1)).await;
        assert!(matches!(first, Outcome::Handled), "{name}: {first:?}");
        assert_in_transaction(name, &target, "r-count").await;
        assert_eq!(
            step(&db, "r-count").await,
            ("counted".into(), 1, 0),
            "{name}"
        );
        assert_eq!(
            recorded(&db, &group).await,
            1,
            "{name}: recorded with its effect"
        );
        // Delivered again: a duplicate by its record (SQLite), or on Postgres a run in
        // autocommit that finds the row counted and has nothing to do; counted once either way.
        for attempt in [1, 2] {
            let again = c.handle(&delivery("e-count", "r-count", attempt)).await;
            assert!(
                matches!(again, Outcome::Duplicate | Outcome::Handled),
                "{name}: {again:?}"
            );
        }
        assert_eq!(
            step(&db, "r-count").await,
            ("counted".into(), 1, 0),
            "{name}: once"
        );

        // An emit without asking: refused in autocommit, the step runs again in a
        // transaction and its event is written once.
        add(&db, "r-emit", "emit").await;
        let emitting = c.handle(&delivery("e-emit", "r-emit", 1)).await;
        assert!(matches!(emitting, Outcome::Handled), "{name}: {emitting:?}");
        assert_in_transaction(name, &target, "r-emit").await;
        assert_eq!(step(&db, "r-emit").await.0, "closed", "{name}");
        assert_eq!(emitted(&db, "r-emit").await, 1, "{name}: one event");
    }
}

/// A one-statement step whose statement emits: reads its step row, then ships an `open` row
/// (the gate), counts it in its counter row `<id>.n` (a gated write: Postgres changes a row
/// once per statement, so the counter is another row) and emits an event, with the record, in
/// one `write_and_emit`. A row not open gets a `late` write instead (in a transaction).
struct Ship;

impl TypedHandler for Ship {
    type Event = Undecoded;
    const STEP: Step = Step::OneStatement;

    async fn handle(&self, _: Undecoded, event: &Envelope, tx: &mut Tx) -> Handled {
        let pid = pid(tx);
        sqlx::query("SELECT state FROM steps WHERE id = $1")
            .bind(&event.subject)
            .fetch_one(&mut **tx)
            .await?;
        let writes = [
            Write::new(format!(
                "UPDATE steps SET state = 'shipped', pid = {pid} WHERE id = $1 AND state = 'open'"
            ))
            .text(&event.subject),
            Write::new("UPDATE steps SET n = n + 1 WHERE id = $1")
                .text(format!("{}.n", event.subject))
                .gated(),
        ];
        let shipped = Event::new(
            "product.deleted",
            format!("shipped-{}", event.subject),
            "ProductDeleted",
            &ProductDeleted::default(),
        );
        if tx.write_and_emit(&writes, shipped).await?.is_some() {
            return Ok(());
        }
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE steps SET late = late + 1, pid = {pid} WHERE id = $1"
        )))
        .bind(&event.subject)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

#[tokio::test]
async fn a_one_statement_step_that_emits_commits_its_writes_event_and_record_together() {
    for (name, target) in mesh_testkit::databases("one-statement step that emits") {
        let db = open(&target).await;
        let bus: Arc<dyn EventBus> = Arc::new(MemoryBus::new(DeliveryOptions::default()));
        let group = unique("s");
        let c = Consumer::new(db.clone(), bus, group.clone()).on("product.deleted", Ship);
        add(&db, "s-open", "open").await;
        add(&db, "s-open.n", "counter").await;
        let first = c.handle(&delivery("e-ship", "s-open", 1)).await;
        assert!(matches!(first, Outcome::Handled), "{name}: {first:?}");
        assert_eq!(
            in_transaction(&target, "s-open").await,
            (name == "postgres").then_some(false),
            "{name}: without a transaction on Postgres"
        );
        assert_eq!(step(&db, "s-open").await.0, "shipped", "{name}");
        assert_eq!(step(&db, "s-open.n").await.1, 1, "{name}: the gated write");
        assert_eq!(emitted(&db, "shipped-s-open").await, 1, "{name}");
        assert_eq!(
            recorded(&db, &group).await,
            1,
            "{name}: recorded with the event"
        );
        // Published twice, then redelivered: one effect, one event.
        for attempt in [1, 2] {
            let again = c.handle(&delivery("e-ship", "s-open", attempt)).await;
            assert!(matches!(again, Outcome::Duplicate), "{name}: {again:?}");
        }
        assert_eq!(step(&db, "s-open.n").await.1, 1, "{name}: once");
        assert_eq!(emitted(&db, "shipped-s-open").await, 1, "{name}");

        // Not open: the gate writes nothing (no event, no record), and the step runs again in
        // a transaction that takes its other write.
        add(&db, "s-held", "held").await;
        add(&db, "s-held.n", "counter").await;
        let held = c.handle(&delivery("e-held", "s-held", 1)).await;
        assert!(matches!(held, Outcome::Handled), "{name}: {held:?}");
        assert_in_transaction(name, &target, "s-held").await;
        assert_eq!(step(&db, "s-held").await, ("held".into(), 0, 1), "{name}");
        assert_eq!(
            step(&db, "s-held.n").await.1,
            0,
            "{name}: the gated write did not run"
        );
        assert_eq!(emitted(&db, "shipped-s-held").await, 0, "{name}");
        assert_eq!(recorded(&db, &group).await, 2, "{name}");
    }
}
