//! The background worker: finishes every PENDING charge and refund that is due (new saga
//! charges, retries after provider errors, work left by a crash or by a caller that gave up
//! waiting). Woken after each commit that creates work, and every poll interval. Every replica
//! may run one: a row is claimed with a conditional update (its lease), and finishing is
//! conditional too, so each is finished once.
//!
//! Each attempt runs in a task of its own (at most [`CONCURRENCY`] at once), so a slow provider
//! answer does not hold up the charges behind it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::engine::Engine;
use crate::error::PaymentError;
use crate::store::{self, now_micros};

/// How many charges and refunds are in flight at once.
pub const CONCURRENCY: usize = 64;

/// Ids with an attempt in flight in this process (so a pass does not start a second one).
pub type InFlight = Arc<Mutex<HashSet<String>>>;

/// Starts an attempt at every due charge and refund not already in flight; returns how many
/// were started.
pub async fn run_once(
    engine: &Engine,
    slots: &Arc<Semaphore>,
    inflight: &InFlight,
    shutdown: &CancellationToken,
) -> Result<usize, PaymentError> {
    let (charges, refunds) = {
        let mut c = engine.db().acquire().await?;
        let now = now_micros();
        (
            store::due_payments(&mut c, now, 256).await?,
            store::due_refunds(&mut c, now, 256).await?,
        )
    };
    let mut n = 0;
    let work = charges
        .into_iter()
        .map(|id| (true, id))
        .chain(refunds.into_iter().map(|id| (false, id)));
    for (charge, id) in work {
        if !inflight
            .lock()
            .map(|mut s| s.insert(id.clone()))
            .unwrap_or(false)
        {
            continue;
        }
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        n += 1;
        let (engine, shutdown, inflight) = (engine.clone(), shutdown.clone(), inflight.clone());
        tokio::spawn(async move {
            let attempt = async {
                if charge {
                    engine.attempt_charge(&id, true).await.map(|_| ())
                } else {
                    engine.attempt_refund(&id, true).await.map(|_| ())
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => {}
                r = attempt => if let Err(e) = r {
                    tracing::warn!(id = %id, charge, error = %e, "payment work failed; will retry");
                },
            }
            if let Ok(mut s) = inflight.lock() {
                s.remove(&id);
            }
            drop(permit);
        });
    }
    Ok(n)
}

/// Runs passes until `shutdown`: at once (work left by a previous run), whenever woken, and
/// every poll interval.
pub async fn run(engine: Engine, shutdown: CancellationToken) {
    let wake = engine.wake().clone();
    let slots = Arc::new(Semaphore::new(CONCURRENCY));
    let inflight = InFlight::default();
    let mut failing = false;
    loop {
        let pass = tokio::select! {
            () = shutdown.cancelled() => return,
            r = run_once(&engine, &slots, &inflight, &shutdown) => r,
        };
        match pass {
            Ok(_) if failing => {
                failing = false;
                tracing::info!("payment worker recovered");
            }
            Ok(_) => {}
            Err(e) => {
                if !failing {
                    failing = true;
                    tracing::warn!(error = %e, "payment worker failing; retrying");
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = wake.notified() => {}
            () = tokio::time::sleep(engine.settings().poll_interval) => {}
        }
    }
}
