//! Group commit of one-statement writes ([`crate::Database::write_and_emit`] on Postgres): the
//! background workers' finishes (payment's charge, notification's delivery) are each a
//! statement of their own outside any transaction, so under load each order paid a commit for
//! each of them. Calls that arrive while earlier ones are being written wait and are then
//! written together, as **one statement** (one commit) that still gives every call its own
//! answer:
//!
//! - each call's writes and outbox row are `WITH` parts of their own (`g<j>w<i>`, `g<j>o`),
//!   the row gated on the call's own first write, exactly as the call alone would be joined;
//! - the statement returns one row per outbox row written, tagged with its call's index, so a
//!   call whose first write changed nothing gets `None` as alone;
//! - a call's [`crate::sql_write::Write::required`] counts are checked as alone; when any fails
//!   (or the statement fails for any other reason: it then wrote nothing), every call of the
//!   group is written again alone, in order, and gets its own answer or error.
//!
//! At most [`FLUSHERS`] statements are in flight per database; a call that finds fewer starts
//! one at once, so a lone call (every call at low load) is written at once, as the same
//! statement as before grouping. A group holds at most [`MAX_GROUP`] calls and never two of one
//! subject (the outbox insert computes the subject's next sequence from the snapshot the
//! statement started with, so two would collide), and no statement in flight writes a subject
//! another one writes: a later call of a subject being written waits for the statement writing
//! it to return, then goes in the next group, so the calls of a subject are written in the
//! order they were made. A call whose writes have `WITH`
//! parts of their own or return columns ([`crate::sql_write::Write::returning`]: its gated
//! writes name `w0`) is written alone.
//!
//! The statement runs in a task of its own, so a caller that stops waiting (its future dropped)
//! does not cancel the others' writes; its own write completes or fails unseen, as a statement
//! whose answer was lost would. Each written row goes to the direct publisher once the
//! statement returned (committed), before the callers are answered.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use mesh_contracts::events::v1::Envelope;
use sqlx::Row as _;
use tokio::sync::oneshot;

use crate::outbox::{
    InsertedRow, bind_envelope, insert_joined, outbox_insert, register, required_check,
    required_conditions, write_ctes,
};
use crate::sql_write::Write;
use crate::storage::{Database, DatabaseError};

/// Most statements of one database's grouped writes in flight at once.
pub const FLUSHERS: usize = 2;

/// Most calls written by one statement.
pub const MAX_GROUP: usize = 32;

/// What a call is answered: its envelope with its sequence set, or `None` when its first write
/// changed nothing.
type Answer = Result<Option<Envelope>, DatabaseError>;

/// A call waiting to be written.
struct Waiting {
    writes: Vec<Write>,
    envelope: Envelope,
    reply: oneshot::Sender<Answer>,
}

impl Waiting {
    /// Whether it can share a statement: none of its writes has `WITH` parts of its own or
    /// returns columns (which later writes read by the name `w0`).
    fn groupable(&self) -> bool {
        self.writes.iter().all(Write::is_self_contained)
    }
}

#[derive(Default)]
struct State {
    waiting: VecDeque<Waiting>,
    /// Flushers running.
    flushing: usize,
    /// Subjects of the calls being written.
    writing: HashSet<String>,
}

/// How many statements wrote how many calls, since the database was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupCommitStats {
    /// Statements run (a group's, or a call's alone: a lone call, or one written again alone
    /// after its group failed).
    pub statements: u64,
    /// Calls answered.
    pub calls: u64,
    /// Groups that failed and were written again call by call.
    pub regrouped: u64,
}

/// One database's grouped writes (held by its [`Database`]).
#[derive(Default)]
pub(crate) struct GroupCommit {
    state: Mutex<State>,
    statements: AtomicU64,
    calls: AtomicU64,
    regrouped: AtomicU64,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl GroupCommit {
    /// Its counts so far.
    pub(crate) fn stats(&self) -> GroupCommitStats {
        GroupCommitStats {
            statements: self.statements.load(Ordering::Relaxed),
            calls: self.calls.load(Ordering::Relaxed),
            regrouped: self.regrouped.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes `writes` and `envelope`'s outbox row on `db` (Postgres), alone or with the calls
    /// waiting beside it, and registers the row with the direct publisher once committed.
    pub(crate) async fn write_and_emit(
        db: &Database,
        writes: &[Write],
        envelope: Envelope,
    ) -> Answer {
        let group = db.group_commit().clone();
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut state = group.lock();
            state.waiting.push_back(Waiting {
                writes: writes.to_vec(),
                envelope,
                reply,
            });
            let start = state.flushing < FLUSHERS;
            if start {
                state.flushing += 1;
            }
            start
        };
        if start {
            tokio::spawn(drain(group, db.clone()));
        }
        // The flusher is gone without answering only if its task was torn down (the runtime
        // shutting down): the write's fate is unknown, as when a connection is lost.
        answer
            .await
            .unwrap_or(Err(DatabaseError::Unavailable(sqlx::Error::WorkerCrashed)))
    }

    /// The next group from the front of the queue: calls in order, up to [`MAX_GROUP`], none
    /// of a subject in it or being written (such a call ends the group and waits for the
    /// flusher writing its subject, which keeps the calls of a subject in order); a call that
    /// cannot share a statement goes alone. Its subjects are marked as being written.
    fn next_group(state: &mut State) -> Vec<Waiting> {
        let mut group = Vec::new();
        while let Some(next) = state.waiting.front() {
            if state.writing.contains(&next.envelope.subject) {
                break;
            }
            let shares = group.len() < MAX_GROUP && next.groupable();
            if !group.is_empty() && !shares {
                break;
            }
            let Some(next) = state.waiting.pop_front() else {
                break;
            };
            state.writing.insert(next.envelope.subject.clone());
            let alone = !next.groupable();
            group.push(next);
            if alone {
                break;
            }
        }
        group
    }
}

/// Writes groups until none it may take is waiting; the count of flushers goes down under the
/// same lock that found none, so a call queued meanwhile starts a flusher of its own.
async fn drain(group: Arc<GroupCommit>, db: Database) {
    /// The flusher's place in the state: the subjects it is writing, released before it takes
    /// the next group; released with its count by `drop` if its task is torn down mid-way.
    struct Flushing {
        group: Arc<GroupCommit>,
        subjects: Vec<String>,
        counted: bool,
    }
    impl Flushing {
        fn release(&mut self, state: &mut State) {
            for subject in self.subjects.drain(..) {
                state.writing.remove(&subject);
            }
        }
    }
    impl Drop for Flushing {
        fn drop(&mut self) {
            if self.counted {
                let group = self.group.clone();
                let mut state = group.lock();
                self.release(&mut state);
                state.flushing -= 1;
            }
        }
    }
    let mut flushing = Flushing {
        group: group.clone(),
        subjects: Vec::new(),
        counted: true,
    };
    loop {
        let calls = {
            let mut state = group.lock();
            flushing.release(&mut state);
            let calls = GroupCommit::next_group(&mut state);
            if calls.is_empty() {
                state.flushing -= 1;
                flushing.counted = false;
                return;
            }
            calls
        };
        flushing.subjects = calls.iter().map(|c| c.envelope.subject.clone()).collect();
        flush(&group, &db, calls).await;
    }
}

/// Writes `calls` (one statement when more than one, each alone after it failed), publishes
/// what they wrote and answers them.
async fn flush(group: &GroupCommit, db: &Database, calls: Vec<Waiting>) {
    let rows = if calls.len() == 1 {
        group.statements.fetch_add(1, Ordering::Relaxed);
        vec![alone(db, &calls[0]).await]
    } else {
        group.statements.fetch_add(1, Ordering::Relaxed);
        match together(db, &calls).await {
            Ok(rows) => rows.into_iter().map(Ok).collect(),
            Err(e) => {
                // It wrote nothing: each call alone, for its own answer.
                tracing::debug!(calls = calls.len(), error = %e, "a group of writes failed; writing each alone");
                group.regrouped.fetch_add(1, Ordering::Relaxed);
                let mut rows = Vec::with_capacity(calls.len());
                for call in &calls {
                    group.statements.fetch_add(1, Ordering::Relaxed);
                    rows.push(alone(db, call).await);
                }
                rows
            }
        }
    };
    group.calls.fetch_add(calls.len() as u64, Ordering::Relaxed);
    let mut tickets = Vec::new();
    let mut answers = Vec::with_capacity(calls.len());
    for (call, row) in calls.into_iter().zip(rows) {
        let answer = match row {
            Ok(Some(row)) => {
                let mut envelope = call.envelope;
                envelope.sequence = row.sequence;
                tickets.extend(register(db, &envelope, &row));
                Ok(Some(envelope))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        };
        answers.push((call.reply, answer));
    }
    // The statements committed when they returned.
    if !tickets.is_empty() {
        crate::publisher::abort_after_commit_if_armed(db.service());
        db.publisher().committed(&tickets);
    }
    for (reply, answer) in answers {
        // A caller that stopped waiting is not told.
        let _ = reply.send(answer);
    }
}

/// `call` as the one statement it is alone.
async fn alone(db: &Database, call: &Waiting) -> Result<Option<InsertedRow>, DatabaseError> {
    let mut conn = db.acquire().await?;
    insert_joined(&mut conn, &call.envelope, &call.writes).await
}

/// `calls` as one statement: each call's writes and outbox row are `WITH` parts named after
/// its index, the final `SELECT` returns each written outbox row with its call's index (and
/// fails, having written nothing, when a required count is not met).
async fn together(
    db: &Database,
    calls: &[Waiting],
) -> Result<Vec<Option<InsertedRow>>, DatabaseError> {
    let mut n = 0;
    let mut ctes = Vec::new();
    let mut conditions = Vec::new();
    let mut rows = Vec::with_capacity(calls.len());
    for (j, call) in calls.iter().enumerate() {
        let prefix = format!("g{j}");
        ctes.extend(write_ctes(&call.writes, &prefix, &mut n));
        conditions.extend(required_conditions(&call.writes, &prefix));
        ctes.push(format!(
            "{prefix}o AS ({})",
            outbox_insert(n, Some(&format!("{prefix}w0")))
        ));
        n += 6;
        rows.push(format!(
            "SELECT CAST({j} AS BIGINT) AS call, seq, sequence, prev_sent_at_us FROM {prefix}o"
        ));
    }
    let sql = format!(
        "WITH {} SELECT r.call, r.seq, r.sequence, r.prev_sent_at_us{} \
         FROM (SELECT 1) AS one LEFT JOIN ({}) AS r ON TRUE",
        ctes.join(", "),
        required_check(&conditions),
        rows.join(" UNION ALL "),
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for call in calls {
        for w in &call.writes {
            query = w.bind_to(query);
        }
        query = bind_envelope(query, &call.envelope);
    }
    let mut conn = db.acquire().await?;
    let returned = query.fetch_all(&mut *conn).await?;
    let mut written: Vec<Option<InsertedRow>> = calls.iter().map(|_| None).collect();
    for row in returned {
        let Some(call) = row.try_get::<Option<i64>, _>("call")? else {
            continue;
        };
        let slot = usize::try_from(call)
            .ok()
            .and_then(|j| written.get_mut(j))
            .ok_or_else(|| {
                DatabaseError::Query(sqlx::Error::Decode(
                    format!("a group of writes returned call {call}").into(),
                ))
            })?;
        *slot = Some(InsertedRow {
            seq: row.try_get("seq")?,
            sequence: row.try_get("sequence")?,
            prev_sent: row.try_get::<Option<i64>, _>("prev_sent_at_us")?.is_some(),
        });
    }
    Ok(written)
}
