//! Operator's view of the Redis bus (`mesh events`): the streams under the namespace with each
//! group's lag, the dead letters with their own entry ids, replaying one, and reading a stream.
//!
//! Replaying appends the dead letter's envelope to its stream again (a new entry, the same event
//! id) and deletes the dead letter. Every group of the stream gets the copy; groups that handled
//! the event already drop it by id (`mesh_handled_events`), so only the group that gave up on it
//! sees an effect.

use bytes::Bytes;
use redis::Value;

use super::{RedisBus, entries, field, fields_of, text};
use crate::bus::{BusError, DeadLetter, GroupLag};

/// One stream and its consumer groups' lag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// The domain.
    pub domain: String,
    /// Entries in the stream (after trimming).
    pub length: u64,
    /// Each consumer group's lag.
    pub groups: Vec<GroupLag>,
}

/// A stream entry: its id and the encoded envelope.
pub type Entry = (String, Bytes);

impl RedisBus {
    /// The streams under the namespace, by domain, with their groups.
    pub async fn streams(&self) -> Result<Vec<StreamInfo>, BusError> {
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

    /// The dead letters of `group` with the id of each in the dead-letter stream, oldest first.
    pub async fn dead_letter_entries(
        &self,
        group: &str,
    ) -> Result<Vec<(String, DeadLetter)>, BusError> {
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

    /// Replays dead letter `dead_id` of `group` to its stream and deletes it; `false` when there
    /// is no such dead letter (already replayed).
    pub async fn replay_dead_letter(&self, group: &str, dead_id: &str) -> Result<bool, BusError> {
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

    /// Up to `count` entries of the stream of `domain` after entry `after` (`0` for the start,
    /// `$` for only new ones), waiting up to `block_ms` for the first.
    pub async fn read_stream(
        &self,
        domain: &str,
        after: &str,
        count: usize,
        block_ms: u64,
    ) -> Result<Vec<Entry>, BusError> {
        let mut conn = self.conn.clone();
        let reply: Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(count.max(1))
            .arg("BLOCK")
            .arg(block_ms)
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
