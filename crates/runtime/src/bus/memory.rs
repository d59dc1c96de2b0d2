//! The in-process bus, the embedded default: the same delivery semantics as Redis Streams
//! (consumer groups, at-least-once, reclaim of unacknowledged events after the claim time,
//! retries, dead-letter streams) between the services of one process. It keeps nothing across
//! restarts; the outbox does (unpublished rows are published again by the relay).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{
    BusError, DeadLetter, Delivery, DeliveryOptions, EventBus, GroupLag, OutgoingEvent,
    Subscription,
};

#[path = "memory_ops.rs"]
mod ops;

/// The in-process bus. Cheap to clone; clones share the streams.
#[derive(Debug, Clone, Default)]
pub struct MemoryBus {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    published: Notify,
    options: DeliveryOptions,
}

#[derive(Debug, Default)]
struct State {
    streams: HashMap<String, Stream>,
    /// Each group's dead letters with their ids (numbered across groups), oldest first.
    dead: HashMap<String, Vec<(u64, DeadLetter)>>,
    next_dead_id: u64,
}

#[derive(Debug, Default)]
struct Stream {
    /// Entries by id, oldest first.
    entries: VecDeque<(u64, bytes::Bytes, Instant)>,
    next_id: u64,
    groups: HashMap<String, Group>,
}

#[derive(Debug, Default)]
struct Group {
    /// The next entry id never delivered to this group.
    cursor: u64,
    pending: BTreeMap<u64, Pending>,
}

#[derive(Debug)]
struct Pending {
    consumer: String,
    delivered_at: Instant,
    deliveries: u32,
    /// Set by `retry`: redeliver to the same consumer at this time.
    retry_at: Option<Instant>,
}

impl MemoryBus {
    /// An empty bus with `options`.
    pub fn new(options: DeliveryOptions) -> Self {
        Self {
            shared: Arc::new(Shared {
                options,
                ..Shared::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl EventBus for MemoryBus {
    fn publish<'a>(&'a self, events: &'a [OutgoingEvent]) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let now = Instant::now();
            {
                let mut state = self.lock();
                for event in events {
                    let stream = state.streams.entry(event.domain.clone()).or_default();
                    append(
                        stream,
                        event.payload.clone(),
                        now,
                        self.shared.options.retention,
                    );
                }
            }
            self.shared.published.notify_waiters();
            Ok(())
        })
    }

    fn subscribe<'a>(
        &'a self,
        group: &'a str,
        consumer: &'a str,
        domains: &'a [String],
    ) -> BoxFuture<'a, Result<Box<dyn Subscription>, BusError>> {
        Box::pin(async move {
            let mut state = self.lock();
            for domain in domains {
                let stream = state.streams.entry(domain.clone()).or_default();
                let first = stream.entries.front().map_or(stream.next_id, |e| e.0);
                stream
                    .groups
                    .entry(group.to_string())
                    .or_insert_with(|| Group {
                        cursor: first,
                        pending: BTreeMap::new(),
                    });
            }
            Ok(Box::new(MemorySubscription {
                bus: self.clone(),
                group: group.to_string(),
                consumer: consumer.to_string(),
                domains: domains.to_vec(),
            }) as Box<dyn Subscription>)
        })
    }

    fn dead_letters<'a>(
        &'a self,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Vec<DeadLetter>, BusError>> {
        Box::pin(async move {
            Ok(self
                .lock()
                .dead
                .get(group)
                .map(|letters| letters.iter().map(|(_, d)| d.clone()).collect())
                .unwrap_or_default())
        })
    }

    fn group_lag<'a>(
        &'a self,
        group: &'a str,
        domains: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<GroupLag>, BusError>> {
        Box::pin(async move {
            let now = Instant::now();
            let state = self.lock();
            Ok(domains
                .iter()
                .map(|domain| lag(state.streams.get(domain), domain, group, now))
                .collect())
        })
    }
}

/// How far `group` is behind on `stream` (of `domain`; `None`: no such stream yet).
fn lag(stream: Option<&Stream>, domain: &str, group: &str, now: Instant) -> GroupLag {
    let g = stream.and_then(|s| s.groups.get(group));
    let (undelivered, pending, oldest) = match (stream, g) {
        (Some(s), Some(g)) => {
            let undelivered = s.next_id.saturating_sub(g.cursor);
            let oldest_id = g
                .pending
                .keys()
                .next()
                .copied()
                .or((undelivered > 0).then_some(g.cursor));
            let oldest = oldest_id.and_then(|id| {
                s.entries
                    .binary_search_by_key(&id, |e| e.0)
                    .ok()
                    .map(|i| now.duration_since(s.entries[i].2))
            });
            (undelivered, g.pending.len() as u64, oldest)
        }
        // A group not created yet will start at the stream's first entry.
        (Some(s), None) => (
            s.entries.len() as u64,
            0,
            s.entries.front().map(|e| now.duration_since(e.2)),
        ),
        _ => (0, 0, None),
    };
    GroupLag {
        domain: domain.to_string(),
        group: group.to_string(),
        undelivered,
        pending,
        oldest_unhandled_age: oldest,
    }
}

/// Appends `payload` to `stream` as its next entry, then trims it.
fn append(stream: &mut Stream, payload: bytes::Bytes, now: Instant, retention: Duration) {
    let id = stream.next_id;
    stream.next_id += 1;
    stream.entries.push_back((id, payload, now));
    trim(stream, now, retention);
}

/// Drops entries older than the retention that no group still needs.
fn trim(stream: &mut Stream, now: Instant, retention: Duration) {
    while let Some((id, _, at)) = stream.entries.front() {
        let needed = stream
            .groups
            .values()
            .any(|g| g.cursor <= *id || g.pending.contains_key(id));
        if needed || now.duration_since(*at) < retention {
            break;
        }
        stream.entries.pop_front();
    }
}

/// The dead letters of every group and the id the next one gets.
struct DeadLetters<'a> {
    by_group: &'a mut HashMap<String, Vec<(u64, DeadLetter)>>,
    next_id: &'a mut u64,
}

/// One consumer of the in-process bus.
#[derive(Debug)]
pub struct MemorySubscription {
    bus: MemoryBus,
    group: String,
    consumer: String,
    domains: Vec<String>,
}

impl MemorySubscription {
    /// Collects what is deliverable now, and the earliest time something else becomes so.
    fn collect(&self, max: usize) -> (Vec<Delivery>, Option<Instant>) {
        let now = Instant::now();
        let claim_idle = self.bus.shared.options.claim_idle;
        let mut out = Vec::new();
        let mut wake: Option<Instant> = None;
        let mut state = self.bus.lock();
        for domain in &self.domains {
            let Some(stream) = state.streams.get_mut(domain) else {
                continue;
            };
            let Stream {
                entries, groups, ..
            } = stream;
            let Some(group) = groups.get_mut(&self.group) else {
                continue;
            };
            let payload_of = |id: u64| {
                entries
                    .binary_search_by_key(&id, |e| e.0)
                    .ok()
                    .map(|i| entries[i].1.clone())
            };
            // Due retries of this consumer, and events idle past the claim time (any consumer).
            for (id, p) in &mut group.pending {
                if out.len() >= max {
                    break;
                }
                let due = match p.retry_at {
                    Some(at) if p.consumer == self.consumer => at,
                    Some(at) => at.max(p.delivered_at + claim_idle),
                    None => p.delivered_at + claim_idle,
                };
                if due > now {
                    wake = Some(wake.map_or(due, |w| w.min(due)));
                    continue;
                }
                let Some(payload) = payload_of(*id) else {
                    continue;
                };
                p.consumer.clone_from(&self.consumer);
                p.delivered_at = now;
                p.deliveries += 1;
                p.retry_at = None;
                out.push(Delivery {
                    domain: domain.clone(),
                    entry_id: id.to_string(),
                    payload,
                    attempt: p.deliveries,
                });
            }
            // New events.
            while out.len() < max {
                let id = group.cursor;
                let Some(payload) = payload_of(id) else {
                    break;
                };
                group.cursor += 1;
                group.pending.insert(
                    id,
                    Pending {
                        consumer: self.consumer.clone(),
                        delivered_at: now,
                        deliveries: 1,
                        retry_at: None,
                    },
                );
                out.push(Delivery {
                    domain: domain.clone(),
                    entry_id: id.to_string(),
                    payload,
                    attempt: 1,
                });
            }
        }
        (out, wake)
    }

    fn with_pending<R>(
        &self,
        delivery: &Delivery,
        f: impl FnOnce(&mut Group, u64, &mut DeadLetters<'_>) -> R,
    ) -> Option<R> {
        let id: u64 = delivery.entry_id.parse().ok()?;
        let mut state = self.bus.lock();
        let State {
            streams,
            dead,
            next_dead_id,
        } = &mut *state;
        let group = streams
            .get_mut(&delivery.domain)?
            .groups
            .get_mut(&self.group)?;
        Some(f(
            group,
            id,
            &mut DeadLetters {
                by_group: dead,
                next_id: next_dead_id,
            },
        ))
    }
}

impl Drop for MemorySubscription {
    /// A consumer that goes away (its task ended or was restarted) leaves its unacknowledged
    /// events to the rest of the group at once, as a dead consumer does on Redis.
    fn drop(&mut self) {
        let claim_idle = self.bus.shared.options.claim_idle;
        let Some(released) = Instant::now().checked_sub(claim_idle) else {
            return;
        };
        let mut state = self.bus.lock();
        for domain in &self.domains {
            if let Some(group) = state
                .streams
                .get_mut(domain)
                .and_then(|s| s.groups.get_mut(&self.group))
            {
                for p in group.pending.values_mut() {
                    if p.consumer == self.consumer {
                        p.delivered_at = released;
                        p.retry_at = None;
                    }
                }
            }
        }
        drop(state);
        self.bus.shared.published.notify_waiters();
    }
}

impl Subscription for MemorySubscription {
    fn next_batch(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<Delivery>, BusError>> {
        Box::pin(async move {
            let deadline = Instant::now() + wait;
            loop {
                // Register interest before looking, so a publish in between is not missed.
                let published = self.bus.shared.published.notified();
                tokio::pin!(published);
                published.as_mut().enable();
                let (batch, wake) = self.collect(max.max(1));
                if !batch.is_empty() {
                    return Ok(batch);
                }
                let until = wake.map_or(deadline, |w| w.min(deadline));
                if Instant::now() >= deadline {
                    return Ok(Vec::new());
                }
                tokio::select! {
                    () = &mut published => {}
                    () = tokio::time::sleep_until(until) => {}
                }
            }
        })
    }

    fn ack<'a>(&'a mut self, delivery: &'a Delivery) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            self.with_pending(delivery, |group, id, _| group.pending.remove(&id));
            Ok(())
        })
    }

    fn retry<'a>(
        &'a mut self,
        delivery: &'a Delivery,
        after: Duration,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let consumer = self.consumer.clone();
            self.with_pending(delivery, |group, id, _| {
                if let Some(p) = group.pending.get_mut(&id) {
                    p.consumer = consumer;
                    p.retry_at = Some(Instant::now() + after);
                }
            });
            Ok(())
        })
    }

    fn dead_letter<'a>(
        &'a mut self,
        delivery: &'a Delivery,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let group_name = self.group.clone();
            self.with_pending(delivery, |group, id, dead| {
                group.pending.remove(&id);
                let dead_id = *dead.next_id;
                *dead.next_id += 1;
                dead.by_group.entry(group_name.clone()).or_default().push((
                    dead_id,
                    DeadLetter {
                        domain: delivery.domain.clone(),
                        entry_id: delivery.entry_id.clone(),
                        group: group_name,
                        reason: reason.to_string(),
                        deliveries: delivery.attempt,
                        payload: delivery.payload.clone(),
                    },
                ));
            });
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(domain: &str, n: u8) -> OutgoingEvent {
        OutgoingEvent {
            domain: domain.into(),
            event_id: n.to_string(),
            payload: bytes::Bytes::from(vec![n]),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn unacked_events_are_reclaimed_by_another_consumer_after_the_claim_time() {
        let bus = MemoryBus::new(DeliveryOptions {
            claim_idle: Duration::from_secs(30),
            ..DeliveryOptions::default()
        });
        let domains = vec!["order".to_string()];
        bus.publish(&[event("order", 1), event("order", 2)])
            .await
            .unwrap();
        let mut a = bus.subscribe("g", "a", &domains).await.unwrap();
        let got = a.next_batch(10, Duration::ZERO).await.unwrap();
        assert_eq!(got.len(), 2);
        a.ack(&got[0]).await.unwrap();
        std::mem::forget(a); // stuck (alive, never acknowledging the second)
        let mut b = bus.subscribe("g", "b", &domains).await.unwrap();
        assert!(
            b.next_batch(10, Duration::from_secs(10))
                .await
                .unwrap()
                .is_empty()
        );
        let again = b.next_batch(10, Duration::from_secs(60)).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].payload[0], 2);
        assert_eq!(again[0].attempt, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_consumers_events_are_taken_over_at_once() {
        let bus = MemoryBus::new(DeliveryOptions {
            claim_idle: Duration::from_secs(30),
            ..DeliveryOptions::default()
        });
        let domains = vec!["order".to_string()];
        bus.publish(&[event("order", 1)]).await.unwrap();
        let mut a = bus.subscribe("g", "a", &domains).await.unwrap();
        assert_eq!(a.next_batch(10, Duration::ZERO).await.unwrap().len(), 1);
        let mut b = bus.subscribe("g", "b", &domains).await.unwrap();
        drop(a); // its task ended without acknowledging
        let start = Instant::now();
        let again = b.next_batch(10, Duration::from_secs(60)).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].attempt, 2);
        assert_eq!(start.elapsed(), Duration::ZERO, "not after the claim time");
    }

    #[tokio::test(start_paused = true)]
    async fn groups_each_get_every_event_and_retries_wait_for_their_delay() {
        let bus = MemoryBus::default();
        let domains = vec!["order".to_string()];
        let mut a = bus.subscribe("inventory", "i1", &domains).await.unwrap();
        let mut b = bus.subscribe("payment", "p1", &domains).await.unwrap();
        bus.publish(&[event("order", 7)]).await.unwrap();
        let da = a.next_batch(10, Duration::from_secs(1)).await.unwrap();
        let db = b.next_batch(10, Duration::from_secs(1)).await.unwrap();
        assert_eq!((da.len(), db.len()), (1, 1));
        a.retry(&da[0], Duration::from_secs(5)).await.unwrap();
        let start = Instant::now();
        let again = a.next_batch(10, Duration::from_secs(60)).await.unwrap();
        assert_eq!(again[0].attempt, 2);
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        a.dead_letter(&again[0], "poison").await.unwrap();
        let dead = bus.dead_letters("inventory").await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].reason, "poison");
    }
}
