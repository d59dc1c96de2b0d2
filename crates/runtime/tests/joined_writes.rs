//! A service's writes joined to an event's outbox row (`Tx::write_and_emit`,
//! `Database::write_and_emit`), on SQLite and (when `MESH_TEST_DATABASE_URL` is set) Postgres:
//! the gate, gated and ungated writes, parameters of several writes in one statement, rollback,
//! the direct publisher, and a consumer's handled record joined to a gated emit.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use mesh_contracts::events::v1::{Envelope, ProductDeleted};
use mesh_runtime::bus::memory::MemoryBus;
use mesh_runtime::bus::{DeliveryOptions, EventBus};
use mesh_runtime::config::DatabaseTarget;
use mesh_runtime::consumer::{Consumer, ConsumerOptions, EventHandler, HandlerError};
use mesh_runtime::outbox::{Event, Tx};
use mesh_runtime::relay::{Relay, RelayOptions};
use mesh_runtime::sql_write::Write;
use mesh_runtime::{Database, DatabaseError, Migrations};
use sqlx::Row as _;
use tokio_util::sync::CancellationToken;

use mesh_testkit::unique;

async fn open(target: &DatabaseTarget) -> Database {
    let db = Database::connect("svc", target).await.expect("connect");
    db.migrate(&Migrations::NONE).await.expect("migrate");
    sqlx::query(
        "CREATE TABLE things (id TEXT PRIMARY KEY, state TEXT NOT NULL, n BIGINT NOT NULL)",
    )
    .execute(db.pool())
    .await
    .expect("things table");
    db
}

fn event(subject: &str) -> Event {
    Event::new(
        "product.deleted",
        subject,
        "ProductDeleted",
        &ProductDeleted {
            product_id: subject.into(),
            sku: "SKU".into(),
        },
    )
}

/// An event of a type the test's consumer does not handle (so it is acknowledged, not echoed).
fn echo(subject: &str) -> Event {
    Event {
        event_type: "product.created".into(),
        ..event(&format!("echo-{subject}"))
    }
}

fn insert(id: &str, n: i64) -> Write {
    Write::new("INSERT INTO things (id, state, n) VALUES ($1, $2, $3)")
        .text(id)
        .text("new")
        .int(n)
}

fn set_state(id: &str, from: &str, to: &str) -> Write {
    Write::new("UPDATE things SET state = $1 WHERE id = $2 AND state = $3")
        .text(to)
        .text(id)
        .text(from)
}

/// A gated write: bumps `n` of `id` (its SQL ends with its `WHERE` clause). Never of the row
/// the gate changes: on Postgres the writes are one statement, and a row changed twice in one
/// statement keeps one of the changes only.
fn bump(id: &str) -> Write {
    Write::new("UPDATE things SET n = n + 1 WHERE id = $1")
        .text(id)
        .gated()
}

async fn thing(db: &Database, id: &str) -> Option<(String, i64)> {
    sqlx::query("SELECT state, n FROM things WHERE id = $1")
        .bind(id)
        .fetch_optional(db.pool())
        .await
        .unwrap()
        .map(|r| (r.try_get("state").unwrap(), r.try_get("n").unwrap()))
}

async fn outbox(db: &Database, subject: &str) -> Vec<i64> {
    sqlx::query("SELECT sequence FROM mesh_outbox WHERE subject = $1 ORDER BY sequence")
        .bind(subject)
        .fetch_all(db.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| r.try_get("sequence").unwrap())
        .collect()
}

#[tokio::test]
async fn the_first_write_gates_the_event_and_the_gated_writes() {
    for (name, target) in mesh_testkit::databases("joined writes gate") {
        let db = open(&target).await;
        // On its own (one statement on Postgres): two inserts whose parameters follow each
        // other, then the event.
        let emitted = db
            .write_and_emit(&[insert("a", 1), insert("b", 2)], event("a"))
            .await
            .unwrap()
            .expect("the insert changed a row");
        assert_eq!(emitted.sequence, 1, "{name}");
        assert_eq!(thing(&db, "a").await, Some(("new".into(), 1)), "{name}");
        assert_eq!(thing(&db, "b").await, Some(("new".into(), 2)), "{name}");
        assert_eq!(outbox(&db, "a").await, vec![1], "{name}");

        // The gate changes nothing: no event, no gated write; an ungated write runs anyway.
        let mut tx = db.begin().await.unwrap();
        let none = tx
            .write_and_emit(
                &[set_state("a", "gone", "x"), bump("b"), insert("c", 3)],
                event("a"),
            )
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert!(none.is_none(), "{name}: an event without its gate");
        assert_eq!(thing(&db, "a").await, Some(("new".into(), 1)), "{name}");
        assert_eq!(thing(&db, "b").await, Some(("new".into(), 2)), "{name}");
        assert_eq!(thing(&db, "c").await, Some(("new".into(), 3)), "{name}");
        assert_eq!(outbox(&db, "a").await, vec![1], "{name}");

        // The gate changes its row: the gated write and the event follow, the next sequence.
        let mut tx = db.begin().await.unwrap();
        let next = tx
            .write_and_emit(&[set_state("a", "new", "done"), bump("b")], event("a"))
            .await
            .unwrap()
            .expect("the gate changed a row");
        tx.commit().await.unwrap();
        assert_eq!(next.sequence, 2, "{name}");
        assert_eq!(thing(&db, "a").await, Some(("done".into(), 1)), "{name}");
        assert_eq!(thing(&db, "b").await, Some(("new".into(), 3)), "{name}");
        assert_eq!(outbox(&db, "a").await, vec![1, 2], "{name}");

        // Rolled back: neither the writes nor the event.
        let mut tx = db.begin().await.unwrap();
        tx.write_and_emit(&[insert("d", 4)], event("d"))
            .await
            .unwrap()
            .expect("inserted");
        tx.rollback().await.unwrap();
        assert_eq!(thing(&db, "d").await, None, "{name}");
        assert!(outbox(&db, "d").await.is_empty(), "{name}");

        // A write that fails (a duplicate key) fails the whole step.
        assert!(
            db.write_and_emit(&[insert("a", 9)], event("a"))
                .await
                .is_err(),
            "{name}"
        );
        assert_eq!(outbox(&db, "a").await, vec![1, 2], "{name}");
    }
}

/// On Postgres a gated write may read what the first write returned (`Write::returning`, read
/// from `w0`): the value the update assigned, not the row as the statement's snapshot saw it.
#[tokio::test]
async fn a_gated_write_reads_what_the_first_write_returned() {
    let Some(target) = mesh_testkit::postgres("joined writes returning") else {
        return;
    };
    let db = open(&target).await;
    db.write_and_emit(&[insert("r", 41)], event("r"))
        .await
        .unwrap()
        .expect("inserted");
    let advance = || {
        Write::new("UPDATE things SET n = n + 1 WHERE id = $1")
            .text("r")
            .returning("id, n")
    };
    let copy = || {
        Write::new(
            "INSERT INTO things (id, state, n) SELECT id || '-' || n, $1, n FROM w0 WHERE 1 = 1",
        )
        .text("copy")
        .gated()
    };
    let mut tx = db.begin().await.unwrap();
    tx.write_and_emit(&[advance(), copy()], event("r"))
        .await
        .unwrap()
        .expect("the update changed a row");
    tx.commit().await.unwrap();
    assert_eq!(thing(&db, "r").await, Some(("new".into(), 42)));
    assert_eq!(thing(&db, "r-42").await, Some(("copy".into(), 42)));
    // Alone too, and a gate that changes nothing writes no copy.
    db.write_and_emit(&[advance(), copy()], event("r"))
        .await
        .unwrap()
        .expect("the update changed a row");
    assert_eq!(thing(&db, "r-43").await, Some(("copy".into(), 43)));
    let missing = Write::new("UPDATE things SET n = n + 1 WHERE id = $1")
        .text("nobody")
        .returning("id, n");
    let none = db
        .write_and_emit(&[missing, copy()], event("r"))
        .await
        .unwrap();
    assert!(none.is_none());
    assert_eq!(outbox(&db, "r").await, vec![1, 2, 3]);
}

/// A write required to change a number of rows (`Write::required`) makes the list all or
/// nothing: when it changes another number, nothing is written, the first write and the event
/// included (joined on Postgres, alone or in a transaction; on SQLite the call fails in the
/// transaction, which the caller rolls back), and the error says so.
#[tokio::test]
async fn a_required_write_that_falls_short_writes_nothing() {
    for (name, target) in mesh_testkit::databases("joined writes required") {
        let db = open(&target).await;
        db.write_and_emit(&[insert("q1", 8), insert("q2", 9)], event("q"))
            .await
            .unwrap()
            .expect("inserted");
        // Both rows below 10: bumped, with the first write and the event.
        let both = || {
            Write::new("UPDATE things SET n = n + 1 WHERE id IN ($1, $2) AND n < 10")
                .text("q1")
                .text("q2")
                .gated()
                .required(2)
        };
        db.write_and_emit(&[insert("q3", 0), both()], event("q"))
            .await
            .unwrap()
            .expect("every required row changed");
        assert_eq!(thing(&db, "q1").await, Some(("new".into(), 9)), "{name}");
        assert_eq!(thing(&db, "q2").await, Some(("new".into(), 10)), "{name}");
        assert_eq!(thing(&db, "q3").await, Some(("new".into(), 0)), "{name}");
        assert_eq!(outbox(&db, "q").await, vec![1, 2], "{name}");

        // q2 is at 10 now: one row of two, so nothing at all.
        let short = db
            .write_and_emit(&[insert("q4", 0), both()], event("q"))
            .await;
        match &short {
            Err(DatabaseError::Unmet(_)) => {}
            other => panic!("{name}: {other:?}"),
        }
        let mut tx = db.begin().await.unwrap();
        let short = tx
            .write_and_emit(&[insert("q5", 0), both()], event("q"))
            .await;
        assert!(
            matches!(short, Err(DatabaseError::Unmet(_))),
            "{name}: {short:?}"
        );
        tx.rollback().await.unwrap();
        for id in ["q4", "q5"] {
            assert_eq!(thing(&db, id).await, None, "{name}: {id}");
        }
        assert_eq!(thing(&db, "q1").await, Some(("new".into(), 9)), "{name}");
        assert_eq!(outbox(&db, "q").await, vec![1, 2], "{name}: no event");

        // Gated off (the first write changed nothing): no row changed, so it fails too.
        let gated_off = db
            .write_and_emit(&[set_state("q1", "gone", "x"), both()], event("q"))
            .await;
        assert!(
            matches!(gated_off, Err(DatabaseError::Unmet(_))),
            "{name}: {gated_off:?}"
        );
        assert_eq!(outbox(&db, "q").await, vec![1, 2], "{name}");
    }
}

/// Records each event it handles by a write joined to an event that its gate lets through only
/// for the first event of a subject.
#[derive(Clone)]
struct FirstOnly;

impl EventHandler for FirstOnly {
    fn handle<'a>(
        &'a self,
        event: &'a Envelope,
        tx: &'a mut Tx,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let id = format!("seen-{}", event.subject);
            let gate = Write::new(
                "INSERT INTO things (id, state, n) VALUES ($1, 'seen', 1) ON CONFLICT (id) DO NOTHING",
            )
            .text(&id);
            tx.write_and_emit(
                &[
                    gate,
                    Write::new("UPDATE things SET n = n + 1 WHERE state = 'count'"),
                ],
                echo(&event.subject),
            )
            .await?;
            Ok(())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joined_events_are_published_and_a_consumer_records_its_events_once() {
    for (name, target) in mesh_testkit::databases("joined writes publish") {
        let db = open(&target).await;
        let bus: Arc<dyn EventBus> = Arc::new(MemoryBus::new(DeliveryOptions::default()));
        let stop = CancellationToken::new();
        let direct_only = RelayOptions {
            sweep_after: Duration::from_secs(3600),
            poll: Duration::from_secs(3600),
            ..RelayOptions::default()
        };
        tokio::spawn(Relay::new(db.clone(), bus.clone(), direct_only).run(stop.clone()));
        sqlx::query("INSERT INTO things (id, state, n) VALUES ('counter', 'count', 0)")
            .execute(db.pool())
            .await
            .unwrap();
        let consumer = Consumer::new(db.clone(), bus.clone(), unique("g"))
            .on("product.deleted", FirstOnly)
            .options(ConsumerOptions {
                retry_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(50),
                ..ConsumerOptions::default()
            });
        tokio::spawn(consumer.run(stop.clone()));
        tokio::time::sleep(Duration::from_millis(100)).await;

        // Three events of subject s-0 and one of s-1, each from a statement of its own.
        for (i, subject) in ["s-0", "s-0", "s-1", "s-0"].iter().enumerate() {
            let n = i64::try_from(i).unwrap();
            db.write_and_emit(&[insert(&format!("p-{i}"), n)], event(subject))
                .await
                .unwrap()
                .expect("inserted");
        }
        // Every event handled once (the ungated counter counts handler runs that committed),
        // the gate let one echo per subject through.
        let start = std::time::Instant::now();
        loop {
            let counted = thing(&db, "counter").await.map_or(0, |(_, n)| n);
            if counted >= 4 {
                assert_eq!(counted, 4, "{name}: an event took effect twice");
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{name}: {counted} of 4 events handled"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(outbox(&db, "echo-s-0").await, vec![1], "{name}");
        assert_eq!(outbox(&db, "echo-s-1").await, vec![1], "{name}");
        assert_eq!(outbox(&db, "s-0").await, vec![1, 2, 3], "{name}");
        // The direct publisher sent (and marked) every row, the echoes included.
        let start = std::time::Instant::now();
        loop {
            let unsent: i64 =
                sqlx::query("SELECT COUNT(*) AS n FROM mesh_outbox WHERE sent_at_us IS NULL")
                    .fetch_one(db.pool())
                    .await
                    .unwrap()
                    .try_get("n")
                    .unwrap();
            if unsent == 0 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{name}: {unsent} rows never published"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.cancel();
    }
}
