//! Group commit (`Database::write_and_emit` on Postgres, when `MESH_TEST_DATABASE_URL` is set):
//! calls made while earlier ones are written share one statement, and each call still gets its
//! own answer: its event when its first write changed a row, `None` when not, its own error when
//! a required count failed (the rest of its group then written alone); calls of one subject keep
//! their order and sequence numbers.
//!
//! The test holds the statements in flight on a row lock of its own, queues calls behind them,
//! and lets them go.

use std::time::Duration;

use futures::future::join_all;
use mesh_contracts::events::v1::ProductDeleted;
use mesh_runtime::group_commit::FLUSHERS;
use mesh_runtime::outbox::Event;
use mesh_runtime::sql_write::Write;
use mesh_runtime::{Database, DatabaseError, Migrations};
use sqlx::Row as _;

async fn open() -> Option<Database> {
    let target = mesh_testkit::postgres("group commit")?;
    let db = Database::connect("svc", &target).await.expect("connect");
    db.migrate(&Migrations::NONE).await.expect("migrate");
    sqlx::query("CREATE TABLE things (id TEXT PRIMARY KEY, n BIGINT NOT NULL)")
        .execute(db.pool())
        .await
        .expect("things table");
    Some(db)
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

fn insert(id: &str, n: i64) -> Write {
    Write::new("INSERT INTO things (id, n) VALUES ($1, $2)")
        .text(id)
        .int(n)
}

/// An insert that runs only if the first write of its call changed a row.
fn gated_insert(id: &str) -> Write {
    Write::new("INSERT INTO things (id, n) SELECT $1, 0 WHERE 1 = 1")
        .text(id)
        .gated()
}

fn bump(id: &str) -> Write {
    Write::new("UPDATE things SET n = n + 1 WHERE id = $1").text(id)
}

async fn n_of(db: &Database, id: &str) -> Option<i64> {
    sqlx::query("SELECT n FROM things WHERE id = $1")
        .bind(id)
        .fetch_optional(db.pool())
        .await
        .unwrap()
        .map(|r| r.try_get("n").unwrap())
}

async fn sequences(db: &Database, subject: &str) -> Vec<i64> {
    sqlx::query("SELECT sequence FROM mesh_outbox WHERE subject = $1 ORDER BY seq")
        .bind(subject)
        .fetch_all(db.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| r.try_get("sequence").unwrap())
        .collect()
}

/// Starts one call per flusher, each bumping a row that an open transaction holds locked, and
/// waits until Postgres shows them waiting: calls made after it queue. Returns the
/// transaction's connection (commit it to let them go) and the held calls.
async fn hold_the_flushers(
    db: &Database,
    round: &str,
) -> (
    sqlx::pool::PoolConnection<sqlx::Any>,
    Vec<
        tokio::task::JoinHandle<
            Result<Option<mesh_contracts::events::v1::Envelope>, DatabaseError>,
        >,
    >,
) {
    let mut lock = db.pool().acquire().await.unwrap();
    let (holder,): (i32,) = sqlx::query_as("SELECT pg_backend_pid()")
        .fetch_one(&mut *lock)
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut *lock).await.unwrap();
    let mut held = Vec::new();
    for k in 0..FLUSHERS {
        let id = format!("{round}-lock-{k}");
        sqlx::query("INSERT INTO things (id, n) VALUES ($1, 0)")
            .bind(&id)
            .execute(db.pool())
            .await
            .unwrap();
        sqlx::query("UPDATE things SET n = n WHERE id = $1")
            .bind(&id)
            .execute(&mut *lock)
            .await
            .unwrap();
        let db = db.clone();
        held.push(tokio::spawn(async move {
            db.write_and_emit(&[bump(&id)], event(&id)).await
        }));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (waiting,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
        )
        .bind(holder)
        .fetch_one(db.pool())
        .await
        .unwrap();
        if usize::try_from(waiting).unwrap() >= FLUSHERS {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the held statements never waited on the lock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (lock, held)
}

#[tokio::test]
async fn calls_made_meanwhile_share_a_statement_and_keep_their_own_answers() {
    let Some(db) = open().await else { return };
    sqlx::query("INSERT INTO things (id, n) VALUES ('existing', 5)")
        .execute(db.pool())
        .await
        .unwrap();
    let before = db.group_commit_stats();
    let (mut lock, held) = hold_the_flushers(&db, "a").await;

    // Queued behind the held statements, in this order: new rows of their own subjects, a
    // call whose first write changes nothing, and three calls of one subject.
    let calls: Vec<(Vec<Write>, &str)> = vec![
        (vec![insert("r1", 1)], "s1"),
        (vec![insert("r2", 2), bump("existing")], "s2"),
        (vec![bump("missing"), gated_insert("never")], "s3"),
        (vec![insert("d1", 1)], "dup"),
        (vec![insert("r4", 4)], "s4"),
        (vec![insert("d2", 2)], "dup"),
        (vec![insert("d3", 3)], "dup"),
    ];
    let queued = join_all(
        calls
            .iter()
            .map(|(writes, subject)| db.write_and_emit(writes, event(subject))),
    );
    let release = async {
        sqlx::query("COMMIT").execute(&mut *lock).await.unwrap();
    };
    let (answers, ()) = futures::join!(queued, release);

    for h in held {
        assert!(h.await.unwrap().unwrap().is_some(), "a held call was lost");
    }
    let answers: Vec<Option<i64>> = answers
        .into_iter()
        .map(|a| a.expect("no call fails").map(|e| e.sequence))
        .collect();
    assert_eq!(
        answers,
        vec![Some(1), Some(1), None, Some(1), Some(1), Some(2), Some(3)]
    );
    assert_eq!(n_of(&db, "r1").await, Some(1));
    assert_eq!(n_of(&db, "r2").await, Some(2));
    assert_eq!(n_of(&db, "existing").await, Some(6));
    assert_eq!(
        n_of(&db, "never").await,
        None,
        "a gated write ran without its gate"
    );
    assert_eq!(sequences(&db, "s3").await, Vec::<i64>::new());
    assert_eq!(sequences(&db, "dup").await, vec![1, 2, 3]);
    let stats = db.group_commit_stats();
    let calls = stats.calls - before.calls;
    let statements = stats.statements - before.statements;
    assert_eq!(calls, 7 + FLUSHERS as u64);
    assert!(
        statements < calls,
        "{statements} statements for {calls} calls: nothing was grouped"
    );
    assert_eq!(stats.regrouped, before.regrouped);
}

#[tokio::test]
async fn a_call_that_fails_its_required_count_fails_alone() {
    let Some(db) = open().await else { return };
    sqlx::query("INSERT INTO things (id, n) VALUES ('full', 10), ('room', 0)")
        .execute(db.pool())
        .await
        .unwrap();
    let before = db.group_commit_stats();
    let (mut lock, held) = hold_the_flushers(&db, "b").await;

    // Both rows below 10, required: `full` is not, so that call writes nothing.
    let both_below_ten = Write::new("UPDATE things SET n = n + 1 WHERE id IN ($1, $2) AND n < 10")
        .text("full")
        .text("room")
        .gated()
        .required(2);
    let calls: Vec<(Vec<Write>, &str)> = vec![
        (vec![insert("ok1", 1)], "t1"),
        (vec![insert("short", 0), both_below_ten], "t2"),
        (vec![insert("ok2", 2)], "t3"),
    ];
    let queued = join_all(
        calls
            .iter()
            .map(|(writes, subject)| db.write_and_emit(writes, event(subject))),
    );
    let release = async {
        sqlx::query("COMMIT").execute(&mut *lock).await.unwrap();
    };
    let (answers, ()) = futures::join!(queued, release);
    for h in held {
        h.await.unwrap().unwrap();
    }

    let mut answers = answers.into_iter();
    assert_eq!(answers.next().unwrap().unwrap().unwrap().sequence, 1);
    match answers.next().unwrap() {
        Err(DatabaseError::Unmet(_)) => {}
        other => panic!("the short call: {other:?}"),
    }
    assert_eq!(answers.next().unwrap().unwrap().unwrap().sequence, 1);
    assert_eq!(n_of(&db, "ok1").await, Some(1));
    assert_eq!(n_of(&db, "ok2").await, Some(2));
    assert_eq!(
        n_of(&db, "short").await,
        None,
        "the short call wrote its insert"
    );
    assert_eq!(
        n_of(&db, "room").await,
        Some(0),
        "the short call bumped a row"
    );
    assert_eq!(sequences(&db, "t2").await, Vec::<i64>::new());

    let stats = db.group_commit_stats();
    assert_eq!(stats.regrouped - before.regrouped, 1, "{stats:?}");
}
