//! How fresh an answer is: the newest event time applied and the number of events recorded
//! (from `report_state`), and the consumer group's lag as the bus reports it (bounded by a short
//! timeout: a bus that does not answer makes the lag unknown, never the answer late).

use std::sync::Arc;
use std::time::Duration;

use mesh_contracts::report::v1::Freshness;
use mesh_runtime::Database;
use mesh_runtime::bus::EventBus;
use mesh_runtime::domain::time;

use crate::error::ReportError;
use crate::queries;

/// How long an answer waits for the bus's lag figures.
const LAG_TIMEOUT: Duration = Duration::from_millis(500);

/// The consumer group and the streams it reads, and where to ask about its lag.
#[derive(Debug, Clone)]
pub struct LagSource {
    /// The bus.
    pub bus: Arc<dyn EventBus>,
    /// Report's consumer group.
    pub group: String,
    /// The streams it reads.
    pub domains: Vec<String>,
}

/// The freshness of the read models now.
pub async fn freshness(db: &Database, lag: &LagSource) -> Result<Freshness, ReportError> {
    let (newest, applied) = queries::progress(db).await?;
    let mut out = Freshness {
        newest_event_time: newest.map(time::to_timestamp),
        events_behind: -1,
        oldest_unhandled_age: None,
        events_applied: applied,
    };
    match tokio::time::timeout(LAG_TIMEOUT, lag.bus.group_lag(&lag.group, &lag.domains)).await {
        Ok(Ok(streams)) => {
            let behind: u64 = streams.iter().map(|s| s.behind()).sum();
            out.events_behind = i64::try_from(behind).unwrap_or(i64::MAX);
            out.oldest_unhandled_age = streams
                .iter()
                .filter_map(|s| s.oldest_unhandled_age)
                .max()
                .and_then(|d| prost_types::Duration::try_from(d).ok());
        }
        Ok(Err(e)) => tracing::debug!(error = %e, "consumer lag unavailable"),
        Err(_) => tracing::debug!("consumer lag: the bus did not answer in time"),
    }
    Ok(out)
}
