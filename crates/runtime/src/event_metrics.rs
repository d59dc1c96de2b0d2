//! Metrics of the event machinery, on the admin port's `/metrics` with the RPC metrics:
//!
//! | series | labels | what |
//! |---|---|---|
//! | `mesh_consumer_lag_events` | `group`, `stream` | entries the group has not handled (undelivered + pending), sampled every 5 s |
//! | `mesh_consumer_oldest_unhandled_seconds` | `group`, `stream` | age of the oldest of them (0 when caught up) |
//! | `mesh_consumer_events_total` | `group`, `outcome` | deliveries by outcome: `handled`, `duplicate`, `skipped`, `retry`, `dead_letter` |
//! | `mesh_consumer_dead_letters_total` | `group` | events moved to the group's dead-letter stream |
//! | `mesh_consumer_batch_seconds` | `group` | time to handle one batch (its transactions included) |
//! | `mesh_outbox_backlog_rows` | `service` | outbox rows not marked sent, sampled every 5 s by the relay |
//! | `mesh_outbox_oldest_unpublished_seconds` | `service` | age of the oldest of them (0 when none) |
//! | `mesh_relay_publish_seconds` | `service`, `path` | one publish to the bus: `direct` (after commit) or `sweep` |
//!
//! The hot paths never look a series up: a consumer and a relay fetch their handles once
//! ([`EventMetrics::consumer`], [`EventMetrics::relay`]) and then only update atomics.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use crate::Metrics;

/// What became of one delivery to a consumer (defined here, below the consumer, because the
/// metrics count it; `consumer::Outcome` is the same type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The handler's effect committed.
    Handled,
    /// Already handled before (a redelivery): no second effect.
    Duplicate,
    /// A known type this consumer has no handler for.
    Skipped,
    /// Failed; deliver again after the delay.
    Retry {
        /// Why it failed.
        reason: String,
        /// The backoff.
        after: Duration,
    },
    /// Give up: move to the dead-letter stream.
    DeadLetter {
        /// Why.
        reason: String,
    },
}

/// Labels of per-group, per-stream series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    /// The consumer group (the consuming service).
    pub group: String,
    /// The domain stream.
    pub stream: String,
}

/// Labels of the outcome counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// The consumer group.
    pub group: String,
    /// `handled`, `duplicate`, `skipped`, `retry` or `dead_letter`.
    pub outcome: String,
}

/// Labels of per-group series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    /// The consumer group.
    pub group: String,
}

/// Labels of per-service series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// The producing service.
    pub service: String,
}

/// Labels of the publish latency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PublishLabels {
    /// The producing service.
    pub service: String,
    /// `direct` or `sweep`.
    pub path: String,
}

type Seconds = Gauge<f64, AtomicU64>;
type Latency = Family<PublishLabels, Histogram, fn() -> Histogram>;
type BatchLatency = Family<GroupLabels, Histogram, fn() -> Histogram>;

fn latency_buckets() -> Histogram {
    // 100 us .. ~6.5 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

/// The event metrics of one registry (registered on first use).
#[derive(Clone, Debug)]
pub struct EventMetrics {
    lag: Family<StreamLabels, Gauge>,
    oldest: Family<StreamLabels, Seconds>,
    outcomes: Family<OutcomeLabels, Counter>,
    dead_letters: Family<GroupLabels, Counter>,
    batch: BatchLatency,
    backlog: Family<ServiceLabels, Gauge>,
    oldest_unpublished: Family<ServiceLabels, Seconds>,
    publish: Latency,
}

/// The outcome names, in [`outcome_index`] order.
const OUTCOMES: [&str; 5] = ["handled", "duplicate", "skipped", "retry", "dead_letter"];

fn outcome_index(outcome: &Outcome) -> usize {
    match outcome {
        Outcome::Handled => 0,
        Outcome::Duplicate => 1,
        Outcome::Skipped => 2,
        Outcome::Retry { .. } => 3,
        Outcome::DeadLetter { .. } => 4,
    }
}

impl EventMetrics {
    /// The event metrics of `metrics`' registry.
    pub fn of(metrics: &Metrics) -> Self {
        metrics.once(|metrics| {
            let m = Self {
                lag: Family::default(),
                oldest: Family::default(),
                outcomes: Family::default(),
                dead_letters: Family::default(),
                batch: Family::new_with_constructor(latency_buckets),
                backlog: Family::default(),
                oldest_unpublished: Family::default(),
                publish: Family::new_with_constructor(latency_buckets),
            };
            metrics.register(
                "mesh_consumer_lag_events",
                "Entries of the stream the consumer group has not handled (undelivered + pending)",
                m.lag.clone(),
            );
            metrics.register(
                "mesh_consumer_oldest_unhandled_seconds",
                "Age of the oldest entry the consumer group has not handled (0 when caught up)",
                m.oldest.clone(),
            );
            metrics.register(
                "mesh_consumer_events",
                "Deliveries handled by the consumer group, by outcome",
                m.outcomes.clone(),
            );
            metrics.register(
                "mesh_consumer_dead_letters",
                "Events the consumer group moved to its dead-letter stream",
                m.dead_letters.clone(),
            );
            metrics.register(
                "mesh_consumer_batch_seconds",
                "Time to handle one batch of deliveries, transactions included",
                m.batch.clone(),
            );
            metrics.register(
                "mesh_outbox_backlog_rows",
                "Outbox rows of the service not marked sent yet",
                m.backlog.clone(),
            );
            metrics.register(
                "mesh_outbox_oldest_unpublished_seconds",
                "Age of the service's oldest outbox row not marked sent (0 when none)",
                m.oldest_unpublished.clone(),
            );
            metrics.register(
                "mesh_relay_publish_seconds",
                "One publish of outbox rows to the bus, by path (direct after commit, or sweep)",
                m.publish.clone(),
            );
            m
        })
    }

    /// The handles of consumer group `group` reading `streams`.
    pub fn consumer(&self, group: &str, streams: &[String]) -> ConsumerSeries {
        let labels = |outcome: &str| OutcomeLabels {
            group: group.to_string(),
            outcome: outcome.to_string(),
        };
        let g = GroupLabels {
            group: group.to_string(),
        };
        // One lookup per statement (see `relay`).
        let outcomes: [Counter; 5] =
            std::array::from_fn(|i| self.outcomes.get_or_create(&labels(OUTCOMES[i])).clone());
        let dead_letters = self.dead_letters.get_or_create(&g).clone();
        let batch = self.batch.get_or_create(&g).clone();
        let mut per_stream = Vec::with_capacity(streams.len());
        for s in streams {
            let l = StreamLabels {
                group: group.to_string(),
                stream: s.clone(),
            };
            let lag = self.lag.get_or_create(&l).clone();
            let oldest = self.oldest.get_or_create(&l).clone();
            per_stream.push((s.clone(), lag, oldest));
        }
        ConsumerSeries {
            outcomes,
            dead_letters,
            batch,
            streams: per_stream,
        }
    }

    /// The handles of `service`'s outbox and relay.
    pub fn relay(&self, service: &str) -> RelaySeries {
        let s = ServiceLabels {
            service: service.to_string(),
        };
        let path = |p: &str| PublishLabels {
            service: service.to_string(),
            path: p.to_string(),
        };
        // One lookup per statement: a family's read guard lives to the end of the statement, and
        // a second lookup in the same family would wait for it to insert (a deadlock).
        let backlog = self.backlog.get_or_create(&s).clone();
        let oldest_unpublished = self.oldest_unpublished.get_or_create(&s).clone();
        let direct = self.publish.get_or_create(&path("direct")).clone();
        let sweep = self.publish.get_or_create(&path("sweep")).clone();
        RelaySeries {
            backlog,
            oldest_unpublished,
            direct,
            sweep,
        }
    }
}

/// One consumer group's series, fetched once.
#[derive(Clone, Debug)]
pub struct ConsumerSeries {
    outcomes: [Counter; 5],
    dead_letters: Counter,
    batch: Histogram,
    /// (stream, lag, oldest unhandled age) per stream read.
    streams: Vec<(String, Gauge, Seconds)>,
}

impl ConsumerSeries {
    /// Counts one delivery's outcome.
    pub fn outcome(&self, outcome: &Outcome) {
        self.outcomes[outcome_index(outcome)].inc();
        if matches!(outcome, Outcome::DeadLetter { .. }) {
            self.dead_letters.inc();
        }
    }

    /// Records one batch's handling time.
    pub fn batch(&self, seconds: f64) {
        self.batch.observe(seconds);
    }

    /// Records the group's lag as the bus reported it.
    pub fn lag(&self, lags: &[crate::bus::GroupLag]) {
        for lag in lags {
            if let Some((_, behind, oldest)) = self.streams.iter().find(|(s, ..)| *s == lag.domain)
            {
                behind.set(i64::try_from(lag.behind()).unwrap_or(i64::MAX));
                oldest.set(lag.oldest_unhandled_age.map_or(0.0, |d| d.as_secs_f64()));
            }
        }
    }
}

/// One service's outbox and relay series, fetched once.
#[derive(Clone, Debug)]
pub struct RelaySeries {
    backlog: Gauge,
    oldest_unpublished: Seconds,
    /// Latency of direct publishes (after commit).
    pub direct: Histogram,
    /// Latency of the sweep's publishes.
    pub sweep: Histogram,
}

impl RelaySeries {
    /// Records the outbox's unsent rows and the age of the oldest.
    pub fn backlog(&self, rows: i64, oldest_age_seconds: f64) {
        self.backlog.set(rows);
        self.oldest_unpublished.set(oldest_age_seconds);
    }
}
