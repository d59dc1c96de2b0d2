//! [`BusInspect`] on Redis: the streams under the namespace (`SCAN`) with each group's lag, the
//! dead-letter streams, replaying one (`XADD` and `XDEL` in one transaction), and `XREAD`.

use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use redis::Value;

use super::{RedisBus, entries, field, fields_of, text};
use crate::bus::inspect::{BusInspect, Entry, ReadFrom, StreamInfo};
use crate::bus::{BusError, DeadLetter};

impl BusInspect for RedisBus {
    fn streams(&self) -> BoxFuture<'_, Result<Vec<StreamInfo>, BusError>> {
        Box::pin(self.all_streams())
    }

    fn dead_letter_entries<'a>(
        &'a self,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, DeadLetter)>, BusError>> {
        Box::pin(self.dead_of(group))
    }

    fn replay_dead_letter<'a>(
        &'a self,
        group: &'a str,
        dead_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, BusError>> {
        Box::pin(self.replay(group, dead_id))
    }

    fn read_stream<'a>(
        &'a self,
        domain: &'a str,
        from: &'a ReadFrom,
        count: usize,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Vec<Entry>, BusError>> {
        Box::pin(self.xread(domain, from, count, wait))
    }
}

impl RedisBus {
    async fn all_streams(&self) -> Result<Vec<StreamInfo>, BusError> {
        let mut conn = self.conn.clone();
        let prefix = self.stream_key("");
        let mut keys: Vec<String> = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(500)
                .query_async(&mut conn)
                .await?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        let mut out = Vec::new();
        for key in keys {
            let domain = key.strip_prefix(&prefix).unwrap_or(&key).to_string();
            let length: u64 = redis::cmd("XLEN").arg(&key).query_async(&mut conn).await?;
            let groups: Value = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(&key)
                .query_async(&mut conn)
                .await?;
            let mut lags = Vec::new();
            for g in fields_of(&groups) {
                if let Some(name) = g.get("name").and_then(|v| text(v)) {
                    lags.push(self.lag_of(&name, &domain).await?);
                }
            }
            out.push(StreamInfo {
                domain,
                length,
                groups: lags,
            });
        }
        Ok(out)
    }

    async fn dead_of(&self, group: &str) -> Result<Vec<(String, DeadLetter)>, BusError> {
        let mut conn = self.conn.clone();
        let reply: Value = redis::cmd("XRANGE")
            .arg(self.dead_key(group))
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await?;
        Ok(entries(&reply)
            .into_iter()
            .map(|(id, fields)| (id, dead_letter(&fields)))
            .collect())
    }

    async fn replay(&self, group: &str, dead_id: &str) -> Result<bool, BusError> {
        let mut conn = self.conn.clone();
        let reply: Value = redis::cmd("XRANGE")
            .arg(self.dead_key(group))
            .arg(dead_id)
            .arg(dead_id)
            .query_async(&mut conn)
            .await?;
        let Some((_, fields)) = entries(&reply).into_iter().next() else {
            return Ok(false);
        };
        let dead = dead_letter(&fields);
        let _: Value = redis::pipe()
            .atomic()
            .cmd("XADD")
            .arg(self.stream_key(&dead.domain))
            .arg("*")
            .arg("e")
            .arg(dead.payload.as_ref())
            .cmd("XDEL")
            .arg(self.dead_key(group))
            .arg(dead_id)
            .query_async(&mut conn)
            .await?;
        Ok(true)
    }

    async fn xread(
        &self,
        domain: &str,
        from: &ReadFrom,
        count: usize,
        wait: Duration,
    ) -> Result<Vec<Entry>, BusError> {
        let mut conn = self.conn.clone();
        let after = match from {
            ReadFrom::Start => "0",
            ReadFrom::New => "$",
            ReadFrom::After(id) => id.as_str(),
        };
        let mut xread = redis::cmd("XREAD");
        xread.arg("COUNT").arg(count.max(1));
        // `BLOCK 0` would wait forever: no wait is no `BLOCK`.
        let block_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        if block_ms > 0 {
            xread.arg("BLOCK").arg(block_ms);
        }
        let reply: Value = xread
            .arg("STREAMS")
            .arg(self.stream_key(domain))
            .arg(after)
            .query_async(&mut conn)
            .await?;
        // [[key, [[id, [field, value]], ...]]] (RESP2) or {key: [...]} (RESP3).
        let streams: Vec<&Value> = match &reply {
            Value::Array(items) => items
                .iter()
                .filter_map(|s| match s {
                    Value::Array(pair) => pair.get(1),
                    _ => None,
                })
                .collect(),
            Value::Map(kv) => kv.iter().map(|(_, v)| v).collect(),
            _ => Vec::new(),
        };
        Ok(streams
            .into_iter()
            .flat_map(entries)
            .map(|(id, fields)| {
                let payload = Bytes::copy_from_slice(field(&fields, "e").unwrap_or_default());
                (id, payload)
            })
            .collect())
    }
}

/// A dead-letter entry's fields as a [`DeadLetter`].
pub(super) fn dead_letter(fields: &[(String, Vec<u8>)]) -> DeadLetter {
    let text = |k: &str| String::from_utf8_lossy(field(fields, k).unwrap_or_default()).into_owned();
    DeadLetter {
        domain: text("domain"),
        entry_id: text("entry"),
        group: text("group"),
        reason: text("reason"),
        deliveries: text("deliveries").parse().unwrap_or(0),
        payload: Bytes::copy_from_slice(field(fields, "e").unwrap_or_default()),
    }
}
