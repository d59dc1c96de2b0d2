//! A consumer's one-statement steps (`Step::OneStatement`), on SQLite and (when
//! `MESH_TEST_DATABASE_URL` is set) Postgres: alone in its group on Postgres the step runs
//! without a transaction, its statement carrying the handled record; delivered again it has its
//! effect once; a step whose statement completes nothing, a group of several events and a
//! redelivery run in a transaction (a failure after the step's second write leaves nothing).
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
use mesh_runtime::outbox::Tx;
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
