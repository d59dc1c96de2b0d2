//! The Redis Streams bus: one stream per domain (`<ns>events:<domain>`), a consumer group per
//! consuming service, `XACK` after the handler's transaction commits, retries by `XCLAIM` after a
//! backoff, and a dead-letter stream per group (`<ns>dead:<group>`) holding the entry, the reason
//! and the delivery count. Every `XADD` trims its stream by age (`MINID ~`, the retention).
//!
//! Dead consumers: every subscription keeps a heartbeat key (`<ns>alive:<group>:<consumer>`,
//! expiring after `dead_after`, refreshed four times as often by a task of its own, so a consumer
//! busy with a long batch stays alive). Every `dead_after / 4` each consumer lists its group's
//! consumers (`XINFO CONSUMERS`); one with pending entries, idle longer than `dead_after` and no
//! heartbeat is dead, and its entries are claimed (`XPENDING` + `XCLAIM`, guarded by a minimum
//! idle time so two takers do not both get one) and handled at once; it is removed from the group
//! once it has nothing pending. Entries idle past the claim time whatever their consumer are
//! reclaimed by `XAUTOCLAIM` (a consumer alive but stuck).
//!
//! Durability: an event is safe once `XADD` returned, as far as Redis keeps it. Redis must run
//! with `appendonly yes` (and `appendfsync always` for no loss at all on a crash) so that streams
//! and consumer groups survive a restart; the relay marks outbox rows sent only after `XADD`.

use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Value};
use tokio::time::Instant;

use super::{
    BusError, DeadLetter, Delivery, DeliveryOptions, EventBus, GroupLag, OutgoingEvent,
    Subscription,
};

#[path = "redis_ops.rs"]
mod ops;

/// The Redis Streams bus. Cheap to clone.
#[derive(Clone)]
pub struct RedisBus {
    client: Client,
    conn: ConnectionManager,
    namespace: String,
    options: DeliveryOptions,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("namespace", &self.namespace)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl RedisBus {
    /// A bus on the Redis at `url`, its keys prefixed with `namespace` (e.g. `mesh:`). Connects
    /// lazily and reconnects on its own: a Redis that is down makes publishes fail (the relay
    /// retries) rather than this call. Call it inside a Tokio runtime (it spawns the connection
    /// task).
    pub fn connect(
        url: &str,
        namespace: impl Into<String>,
        options: DeliveryOptions,
    ) -> Result<Self, BusError> {
        let client = Client::open(url)?;
        let conn = ConnectionManager::new_lazy_with_config(
            client.clone(),
            config(Duration::from_secs(2)),
        )?;
        Ok(Self {
            client,
            conn,
            namespace: namespace.into(),
            options,
        })
    }

    fn stream_key(&self, domain: &str) -> String {
        format!("{}events:{domain}", self.namespace)
    }

    fn dead_key(&self, group: &str) -> String {
        format!("{}dead:{group}", self.namespace)
    }

    fn alive_key(&self, group: &str, consumer: &str) -> String {
        format!("{}alive:{group}:{consumer}", self.namespace)
    }

    fn min_id(&self) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let cutoff = now.saturating_sub(self.options.retention);
        cutoff.as_millis().to_string()
    }
}

/// Sets a consumer's heartbeat key, expiring after `ttl`.
async fn heartbeat(conn: &mut ConnectionManager, key: &str, ttl: Duration) -> Result<(), BusError> {
    let _: Value = redis::cmd("SET")
        .arg(key)
        .arg(1)
        .arg("PX")
        .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
        .query_async(conn)
        .await?;
    Ok(())
}

fn config(response_timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_response_timeout(Some(response_timeout))
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(1))
}

impl EventBus for RedisBus {
    fn publish<'a>(&'a self, events: &'a [OutgoingEvent]) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            if events.is_empty() {
                return Ok(());
            }
            let min_id = self.min_id();
            let mut pipe = redis::pipe();
            for event in events {
                pipe.cmd("XADD")
                    .arg(self.stream_key(&event.domain))
                    .arg("MINID")
                    .arg("~")
                    .arg(&min_id)
                    .arg("*")
                    .arg("e")
                    .arg(event.payload.as_ref());
            }
            let mut conn = self.conn.clone();
            let ids: Vec<Value> = pipe.query_async(&mut conn).await?;
            if ids.len() != events.len() {
                return Err(BusError::Reply {
                    command: "XADD",
                    detail: format!("{} replies to {} entries", ids.len(), events.len()),
                });
            }
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
            // Its own connection: XREADGROUP BLOCK would hold up other commands on a shared one.
            let conn = ConnectionManager::new_lazy_with_config(
                self.client.clone(),
                config(Duration::from_secs(5)),
            )?;
            let alive = self.alive_key(group, consumer);
            let mut beat = self.conn.clone();
            heartbeat(&mut beat, &alive, self.options.dead_after).await?;
            let every = (self.options.dead_after / 4).max(Duration::from_millis(10));
            let dead_after = self.options.dead_after;
            let key = alive.clone();
            let heartbeat_task = crate::helper_task::spawn("redis-bus-heartbeat", move || {
                let (mut beat, key) = (beat.clone(), key.clone());
                async move {
                    loop {
                        tokio::time::sleep(every).await;
                        // A failed beat is retried on the next tick; if Redis is away that
                        // long, the others may take this consumer's entries over (handled
                        // twice at worst, with one effect).
                        let _ = heartbeat(&mut beat, &key, dead_after).await;
                    }
                }
            });
            let sub = RedisSubscription {
                bus: self.clone(),
                conn,
                group: group.to_string(),
                consumer: consumer.to_string(),
                domains: domains.to_vec(),
                retries: Vec::new(),
                last_claim: None,
                last_takeover: None,
                alive,
                heartbeat: heartbeat_task,
            };
            sub.create_groups().await?;
            Ok(Box::new(sub) as Box<dyn Subscription>)
        })
    }

    fn dead_letters<'a>(
        &'a self,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Vec<DeadLetter>, BusError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let reply: Value = redis::cmd("XRANGE")
                .arg(self.dead_key(group))
                .arg("-")
                .arg("+")
                .query_async(&mut conn)
                .await?;
            Ok(entries(&reply)
                .into_iter()
                .map(|(_, fields)| ops::dead_letter(&fields))
                .collect())
        })
    }

    fn group_lag<'a>(
        &'a self,
        group: &'a str,
        domains: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<GroupLag>, BusError>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(domains.len());
            for domain in domains {
                out.push(self.lag_of(group, domain).await?);
            }
            Ok(out)
        })
    }
}

impl RedisBus {
    /// `group`'s lag on the stream of `domain`: `XINFO GROUPS` (pending, lag, last delivered id),
    /// then the id of the oldest unhandled entry (`XPENDING` summary, or the first entry after
    /// the last delivered one), whose millisecond part dates it.
    async fn lag_of(&self, group: &str, domain: &str) -> Result<GroupLag, BusError> {
        let key = self.stream_key(domain);
        let mut conn = self.conn.clone();
        let mut lag = GroupLag {
            domain: domain.to_string(),
            group: group.to_string(),
            undelivered: 0,
            pending: 0,
            oldest_unhandled_age: None,
        };
        let groups: Value = match redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&key)
            .query_async(&mut conn)
            .await
        {
            Ok(v) => v,
            // No stream yet: nothing to be behind on.
            Err(e) if e.to_string().contains("no such key") => return Ok(lag),
            Err(e) => return Err(e.into()),
        };
        let info = fields_of(&groups)
            .into_iter()
            .find(|g| g.get("name").and_then(|v| text(v)).as_deref() == Some(group));
        let oldest_id = match info {
            None => {
                // Not created yet: the group will start at the stream's first entry.
                lag.undelivered = u64::try_from(
                    redis::cmd("XLEN")
                        .arg(&key)
                        .query_async::<i64>(&mut conn)
                        .await?,
                )
                .unwrap_or(0);
                first_id(&mut conn, &key, "-").await?
            }
            Some(info) => {
                let get = |k: &str| info.get(k).and_then(|v| int(v));
                lag.pending = u64::try_from(get("pending").unwrap_or(0)).unwrap_or(0);
                lag.undelivered = u64::try_from(get("lag").unwrap_or(0)).unwrap_or(0);
                let last = info.get("last-delivered-id").and_then(|v| text(v));
                if lag.pending > 0 {
                    let summary: Value = redis::cmd("XPENDING")
                        .arg(&key)
                        .arg(group)
                        .query_async(&mut conn)
                        .await?;
                    match summary {
                        Value::Array(items) => items.get(1).and_then(text),
                        _ => None,
                    }
                } else if lag.undelivered > 0 {
                    let after = format!("({}", last.unwrap_or_else(|| "0-0".into()));
                    first_id(&mut conn, &key, &after).await?
                } else {
                    None
                }
            }
        };
        lag.oldest_unhandled_age = oldest_id.and_then(|id| age_of_entry(&id));
        Ok(lag)
    }
}

/// The id of the first entry of stream `key` from `start` (`-`, or `(id` for after `id`).
async fn first_id(
    conn: &mut ConnectionManager,
    key: &str,
    start: &str,
) -> Result<Option<String>, BusError> {
    let reply: Value = redis::cmd("XRANGE")
        .arg(key)
        .arg(start)
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    Ok(entries(&reply).into_iter().next().map(|(id, _)| id))
}

/// How long ago the entry `id` (`<unix ms>-<n>`) was added.
fn age_of_entry(id: &str) -> Option<Duration> {
    let ms: u64 = id.split('-').next()?.parse().ok()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    Some(now.saturating_sub(Duration::from_millis(ms)))
}

/// The maps of a reply that is a list of maps (RESP3) or of flat key-value lists (RESP2).
fn fields_of(reply: &Value) -> Vec<std::collections::HashMap<String, &Value>> {
    let Value::Array(items) = reply else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| match item {
            Value::Array(kv) => Some(
                kv.chunks(2)
                    .filter_map(|c| Some((text(c.first()?)?, c.get(1)?)))
                    .collect(),
            ),
            Value::Map(kv) => Some(kv.iter().filter_map(|(k, v)| Some((text(k)?, v))).collect()),
            _ => None,
        })
        .collect()
}

/// One consumer of a Redis consumer group.
pub struct RedisSubscription {
    bus: RedisBus,
    conn: ConnectionManager,
    group: String,
    consumer: String,
    domains: Vec<String>,
    /// Retries due later: (when, domain, entry id, attempt so far).
    retries: Vec<(Instant, String, String, u32)>,
    last_claim: Option<Instant>,
    last_takeover: Option<Instant>,
    /// This consumer's heartbeat key, and the task that keeps it fresh.
    alive: String,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl Drop for RedisSubscription {
    fn drop(&mut self) {
        self.heartbeat.abort();
        // Gone for good (shutdown, or the consumer is restarted under a new name): say so, so
        // the group takes this consumer's pending entries over at once.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let mut conn = self.bus.conn.clone();
            let key = std::mem::take(&mut self.alive);
            handle.spawn(async move {
                let _: Result<Value, _> = redis::cmd("DEL").arg(key).query_async(&mut conn).await;
            });
        }
    }
}

impl std::fmt::Debug for RedisSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSubscription")
            .field("group", &self.group)
            .field("consumer", &self.consumer)
            .field("domains", &self.domains)
            .finish_non_exhaustive()
    }
}

impl RedisSubscription {
    /// Creates the group on every stream (from its start), tolerating groups that exist.
    async fn create_groups(&self) -> Result<(), BusError> {
        let mut conn = self.conn.clone();
        for domain in &self.domains {
            let created: Result<Value, _> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(self.bus.stream_key(domain))
                .arg(&self.group)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut conn)
                .await;
            match created {
                Ok(_) => {}
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    async fn due_retries(&mut self, max: usize) -> Result<Vec<Delivery>, BusError> {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut keep = Vec::new();
        for (due, domain, id, attempt) in std::mem::take(&mut self.retries) {
            if due > now || out.len() >= max {
                keep.push((due, domain, id, attempt));
                continue;
            }
            let reply: Value = redis::cmd("XCLAIM")
                .arg(self.bus.stream_key(&domain))
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(0)
                .arg(&id)
                .query_async(&mut self.conn)
                .await?;
            for (entry_id, fields) in entries(&reply) {
                out.push(Delivery {
                    domain: domain.clone(),
                    entry_id,
                    payload: Bytes::copy_from_slice(field(&fields, "e").unwrap_or_default()),
                    attempt: attempt + 1,
                });
            }
        }
        self.retries = keep;
        Ok(out)
    }

    /// Takes over the pending entries of the group's dead consumers (see the module docs).
    async fn take_over(&mut self, max: usize) -> Result<Vec<Delivery>, BusError> {
        let dead_after = self.bus.options.dead_after;
        let interval = (dead_after / 4).max(Duration::from_millis(10));
        if self.last_takeover.is_some_and(|t| t.elapsed() < interval) {
            return Ok(Vec::new());
        }
        self.last_takeover = Some(Instant::now());
        let dead_ms = u64::try_from(dead_after.as_millis()).unwrap_or(u64::MAX);
        let mut out = Vec::new();
        for domain in self.domains.clone() {
            let key = self.bus.stream_key(&domain);
            let info: Value = match redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(&key)
                .arg(&self.group)
                .query_async(&mut self.conn)
                .await
            {
                Ok(v) => v,
                // No stream or group yet (or Redis lost them): nothing to take over.
                Err(e) if matches!(e.code(), Some("NOGROUP" | "ERR")) => continue,
                Err(e) => return Err(e.into()),
            };
            let suspects: Vec<(String, i64)> = consumers(&info)
                .into_iter()
                .filter(|(name, _, idle)| {
                    *name != self.consumer && *idle >= i64::try_from(dead_ms).unwrap_or(i64::MAX)
                })
                .map(|(name, pending, _)| (name, pending))
                .collect();
            if suspects.is_empty() {
                continue;
            }
            let mut pipe = redis::pipe();
            for (name, _) in &suspects {
                pipe.cmd("EXISTS")
                    .arg(self.bus.alive_key(&self.group, name));
            }
            let alive: Vec<i64> = pipe.query_async(&mut self.conn).await?;
            for ((name, pending), alive) in suspects.into_iter().zip(alive) {
                if alive != 0 {
                    continue;
                }
                if pending == 0 {
                    // Dead and done: drop it from the group's list.
                    let _: Value = redis::cmd("XGROUP")
                        .arg("DELCONSUMER")
                        .arg(&key)
                        .arg(&self.group)
                        .arg(&name)
                        .query_async(&mut self.conn)
                        .await?;
                    continue;
                }
                if out.len() >= max {
                    continue;
                }
                let rows: Value = redis::cmd("XPENDING")
                    .arg(&key)
                    .arg(&self.group)
                    .arg("-")
                    .arg("+")
                    .arg(max - out.len())
                    .arg(&name)
                    .query_async(&mut self.conn)
                    .await?;
                let Value::Array(rows) = rows else { continue };
                let mut deliveries: Vec<(String, i64)> = Vec::new();
                for row in rows {
                    if let Value::Array(f) = row
                        && let (Some(id), Some(n)) =
                            (f.first().and_then(text), f.get(3).and_then(int))
                    {
                        deliveries.push((id, n));
                    }
                }
                if deliveries.is_empty() {
                    continue;
                }
                // The minimum idle time makes a second taker's claim a no-op.
                let mut claim = redis::cmd("XCLAIM");
                claim
                    .arg(&key)
                    .arg(&self.group)
                    .arg(&self.consumer)
                    .arg((dead_ms / 2).max(1));
                for (id, _) in &deliveries {
                    claim.arg(id);
                }
                let claimed: Value = claim.query_async(&mut self.conn).await?;
                let got = entries(&claimed);
                if !got.is_empty() {
                    tracing::warn!(group = %self.group, dead = %name, taken = got.len(), "took over the pending events of a dead consumer");
                }
                for (entry_id, fields) in got {
                    let before = deliveries
                        .iter()
                        .find(|(id, _)| *id == entry_id)
                        .map_or(1, |(_, n)| *n);
                    out.push(Delivery {
                        domain: domain.clone(),
                        entry_id,
                        payload: Bytes::copy_from_slice(field(&fields, "e").unwrap_or_default()),
                        attempt: u32::try_from(before + 1).unwrap_or(u32::MAX),
                    });
                }
            }
        }
        Ok(out)
    }

    async fn reclaim(&mut self, max: usize) -> Result<Vec<Delivery>, BusError> {
        let claim_idle = self.bus.options.claim_idle;
        let interval = (claim_idle / 4).max(Duration::from_millis(50));
        if self.last_claim.is_some_and(|t| t.elapsed() < interval) {
            return Ok(Vec::new());
        }
        self.last_claim = Some(Instant::now());
        let mut out = Vec::new();
        for domain in self.domains.clone() {
            if out.len() >= max {
                break;
            }
            let key = self.bus.stream_key(&domain);
            let reply: Value = redis::cmd("XAUTOCLAIM")
                .arg(&key)
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(u64::try_from(claim_idle.as_millis()).unwrap_or(u64::MAX))
                .arg("0-0")
                .arg("COUNT")
                .arg(max - out.len())
                .query_async(&mut self.conn)
                .await?;
            let Value::Array(parts) = reply else {
                continue;
            };
            let Some(claimed) = parts.get(1) else {
                continue;
            };
            for (entry_id, fields) in entries(claimed) {
                // The delivery count, which XAUTOCLAIM just raised, says which attempt this is.
                let pending: Value = redis::cmd("XPENDING")
                    .arg(&key)
                    .arg(&self.group)
                    .arg(&entry_id)
                    .arg(&entry_id)
                    .arg(1)
                    .query_async(&mut self.conn)
                    .await?;
                let attempt = match &pending {
                    Value::Array(rows) => match rows.first() {
                        Some(Value::Array(row)) => row.get(3).and_then(int).unwrap_or(2),
                        _ => 2,
                    },
                    _ => 2,
                };
                out.push(Delivery {
                    domain: domain.clone(),
                    entry_id,
                    payload: Bytes::copy_from_slice(field(&fields, "e").unwrap_or_default()),
                    attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
                });
            }
        }
        Ok(out)
    }

    async fn read_new(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(max)
            .arg("BLOCK")
            .arg(u64::try_from(wait.as_millis()).unwrap_or(1000).max(1))
            .arg("STREAMS");
        for domain in &self.domains {
            cmd.arg(self.bus.stream_key(domain));
        }
        for _ in &self.domains {
            cmd.arg(">");
        }
        let reply: Value = match cmd.query_async(&mut self.conn).await {
            Ok(v) => v,
            Err(e) if e.code() == Some("NOGROUP") => {
                // Redis lost the streams (restarted without persistence): join again.
                tracing::warn!(group = %self.group, "consumer group missing on redis; re-creating it");
                self.create_groups().await?;
                return Ok(Vec::new());
            }
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        let Value::Array(streams) = reply else {
            return Ok(out);
        };
        for stream in streams {
            let Value::Array(parts) = stream else {
                continue;
            };
            let (Some(key), Some(items)) = (parts.first(), parts.get(1)) else {
                continue;
            };
            let key = text(key).unwrap_or_default();
            let prefix = self.bus.stream_key("");
            let domain = key.strip_prefix(&prefix).unwrap_or(&key).to_string();
            for (entry_id, fields) in entries(items) {
                out.push(Delivery {
                    domain: domain.clone(),
                    entry_id,
                    payload: Bytes::copy_from_slice(field(&fields, "e").unwrap_or_default()),
                    attempt: 1,
                });
            }
        }
        Ok(out)
    }
}

impl Subscription for RedisSubscription {
    fn next_batch(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<Delivery>, BusError>> {
        Box::pin(async move {
            let max = max.max(1);
            let mut out = self.due_retries(max).await?;
            if out.len() < max {
                let taken = self.take_over(max - out.len()).await?;
                out.extend(taken);
            }
            if out.len() < max {
                let reclaimed = self.reclaim(max - out.len()).await?;
                out.extend(reclaimed);
            }
            if out.len() < max {
                // Do not block past the next due retry or reclaim pass.
                let mut wait = if out.is_empty() { wait } else { Duration::ZERO };
                if let Some(next) = self.retries.iter().map(|r| r.0).min() {
                    wait = wait.min(next.saturating_duration_since(Instant::now()));
                }
                wait = wait
                    .min(self.bus.options.claim_idle / 4)
                    .min(self.bus.options.dead_after / 4);
                if wait.is_zero() && !out.is_empty() {
                    return Ok(out);
                }
                let new = self.read_new(max - out.len(), wait).await?;
                out.extend(new);
            }
            Ok(out)
        })
    }

    fn ack<'a>(&'a mut self, delivery: &'a Delivery) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let _: Value = redis::cmd("XACK")
                .arg(self.bus.stream_key(&delivery.domain))
                .arg(&self.group)
                .arg(&delivery.entry_id)
                .query_async(&mut self.conn)
                .await?;
            Ok(())
        })
    }

    fn ack_all<'a>(
        &'a mut self,
        deliveries: &'a [Delivery],
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            // One XACK per stream with every id of the batch, all in one pipeline.
            let mut by_domain: Vec<(&str, Vec<&str>)> = Vec::new();
            for d in deliveries {
                match by_domain.iter_mut().find(|(domain, _)| *domain == d.domain) {
                    Some((_, ids)) => ids.push(&d.entry_id),
                    None => by_domain.push((&d.domain, vec![&d.entry_id])),
                }
            }
            if by_domain.is_empty() {
                return Ok(());
            }
            let mut pipe = redis::pipe();
            for (domain, ids) in &by_domain {
                pipe.cmd("XACK")
                    .arg(self.bus.stream_key(domain))
                    .arg(&self.group)
                    .arg(ids)
                    .ignore();
            }
            let () = pipe.query_async(&mut self.conn).await?;
            Ok(())
        })
    }

    fn retry<'a>(
        &'a mut self,
        delivery: &'a Delivery,
        after: Duration,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            // Keep the retry below the claim time, or another consumer would take it meanwhile.
            let after = after.min(self.bus.options.claim_idle / 2);
            self.retries.push((
                Instant::now() + after,
                delivery.domain.clone(),
                delivery.entry_id.clone(),
                delivery.attempt,
            ));
            Ok(())
        })
    }

    fn dead_letter<'a>(
        &'a mut self,
        delivery: &'a Delivery,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let min_id = self.bus.min_id();
            let _: Value = redis::pipe()
                .atomic()
                .cmd("XADD")
                .arg(self.bus.dead_key(&self.group))
                .arg("MINID")
                .arg("~")
                .arg(&min_id)
                .arg("*")
                .arg("domain")
                .arg(&delivery.domain)
                .arg("entry")
                .arg(&delivery.entry_id)
                .arg("group")
                .arg(&self.group)
                .arg("reason")
                .arg(reason)
                .arg("deliveries")
                .arg(delivery.attempt)
                .arg("e")
                .arg(delivery.payload.as_ref())
                .cmd("XACK")
                .arg(self.bus.stream_key(&delivery.domain))
                .arg(&self.group)
                .arg(&delivery.entry_id)
                .query_async(&mut self.conn)
                .await?;
            Ok(())
        })
    }
}

/// The consumers of an `XINFO CONSUMERS` reply: (name, pending entries, idle ms).
fn consumers(reply: &Value) -> Vec<(String, i64, i64)> {
    let Value::Array(items) = reply else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let pairs: Vec<(String, &Value)> = match item {
                Value::Array(kv) => kv
                    .chunks(2)
                    .filter_map(|c| Some((text(c.first()?)?, c.get(1)?)))
                    .collect(),
                Value::Map(kv) => kv.iter().filter_map(|(k, v)| Some((text(k)?, v))).collect(),
                _ => return None,
            };
            let get = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
            Some((
                text(get("name")?)?,
                get("pending").and_then(int).unwrap_or(0),
                get("idle").and_then(int).unwrap_or(0),
            ))
        })
        .collect()
}

/// The fields of a stream entry, by name.
type Fields = Vec<(String, Vec<u8>)>;

/// Stream entries `[[id, [field, value, ...]], ...]` as (id, fields); skips deleted entries.
fn entries(reply: &Value) -> Vec<(String, Fields)> {
    let Value::Array(items) = reply else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let Value::Array(pair) = item else {
                return None;
            };
            let id = text(pair.first()?)?;
            let fields = match pair.get(1) {
                Some(Value::Array(kv)) => kv
                    .chunks(2)
                    .filter_map(|c| Some((text(c.first()?)?, bytes(c.get(1)?)?)))
                    .collect(),
                _ => Vec::new(),
            };
            Some((id, fields))
        })
        .collect()
}

fn field<'a>(fields: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_slice())
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => text(other)?.parse().ok(),
    }
}
