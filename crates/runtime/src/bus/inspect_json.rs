//! What an operator reads of a bus, as JSON: the same documents whether `mesh events` asks Redis
//! itself or a process's admin port ([`crate::bus_admin`]). Envelopes are decoded with the
//! embedded contracts, so a payload is the proto3 JSON mapping of its real message.

use mesh_contracts::events::v1::Envelope;
use prost::Message as _;
use prost_reflect::DynamicMessage;
use serde_json::{Value, json};

use super::BusError;
use super::inspect::{BusInspect, Entry, StreamInfo};

/// An encoded envelope as JSON: its fields, and its payload decoded by type (or the type and
/// size when the contracts do not know it); `{"malformed": true}` when it is not an envelope.
pub fn envelope_json(bytes: &[u8]) -> Value {
    let Ok(e) = Envelope::decode(bytes) else {
        return json!({ "malformed": true, "bytes": bytes.len() });
    };
    let payload = e.payload.as_ref().map_or(Value::Null, |any| {
        let name = any.type_url.rsplit('/').next().unwrap_or_default();
        crate::descriptors::pool()
            .get_message_by_name(name)
            .and_then(|d| DynamicMessage::decode(d, any.value.as_slice()).ok())
            .and_then(|m| serde_json::to_value(&m).ok())
            .unwrap_or_else(
                || json!({ "type_url": any.type_url, "undecoded_bytes": any.value.len() }),
            )
    });
    let time = e.time.map(|t| {
        humantime::format_rfc3339_micros(
            std::time::UNIX_EPOCH
                + std::time::Duration::new(
                    u64::try_from(t.seconds).unwrap_or(0),
                    u32::try_from(t.nanos).unwrap_or(0),
                ),
        )
        .to_string()
    });
    json!({
        "id": e.id,
        "type": e.r#type,
        "source": e.source,
        "subject": e.subject,
        "sequence": e.sequence,
        "time": time,
        "correlation_id": e.correlation_id,
        "causation_id": e.causation_id,
        "traceparent": e.traceparent,
        "payload": payload,
    })
}

/// Every stream with its length and each group's lag, pending entries and oldest unhandled age.
pub fn streams_json(streams: &[StreamInfo]) -> Value {
    streams
        .iter()
        .map(|s| {
            let groups: Vec<Value> = s
                .groups
                .iter()
                .map(|g| {
                    json!({
                        "group": g.group,
                        "lag": g.behind(),
                        "undelivered": g.undelivered,
                        "pending": g.pending,
                        "oldest_unhandled_seconds": g.oldest_unhandled_age.map(|d| d.as_secs_f64()),
                    })
                })
                .collect();
            json!({ "stream": s.domain, "length": s.length, "groups": groups })
        })
        .collect()
}

/// The dead letters of `group`: each one's `dead_id`, stream, entry, reason, deliveries and event.
pub async fn dead_letters_json(bus: &dyn BusInspect, group: &str) -> Result<Value, BusError> {
    Ok(bus
        .dead_letter_entries(group)
        .await?
        .iter()
        .map(|(id, d)| {
            json!({
                "dead_id": id,
                "stream": d.domain,
                "entry": d.entry_id,
                "group": d.group,
                "reason": d.reason,
                "deliveries": d.deliveries,
                "event": envelope_json(&d.payload),
            })
        })
        .collect())
}

/// Which dead letters of a group to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplaySelection {
    /// The one with this `dead_id`.
    One(String),
    /// Those whose envelope has this event type, e.g. `order.created`.
    OfType(String),
    /// Every one.
    All,
}

/// Why a replay did nothing useful.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The bus failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// `--id` named a dead letter the group does not have.
    #[error(
        "group `{group}` has no dead letter `{id}` (list them with `mesh events dead --group {group}`)"
    )]
    NoSuchDeadLetter {
        /// The group.
        group: String,
        /// The id asked for.
        id: String,
    },
}

/// Replays the dead letters of `group` chosen by `selection`; `{"group", "replayed": [ids]}`.
pub async fn replay_json(
    bus: &dyn BusInspect,
    group: &str,
    selection: &ReplaySelection,
) -> Result<Value, ReplayError> {
    let mut replayed = Vec::new();
    for (dead_id, d) in bus.dead_letter_entries(group).await? {
        let chosen = match selection {
            ReplaySelection::One(one) => *one == dead_id,
            ReplaySelection::OfType(t) => {
                Envelope::decode(d.payload.as_ref()).is_ok_and(|e| e.r#type == *t)
            }
            ReplaySelection::All => true,
        };
        if chosen && bus.replay_dead_letter(group, &dead_id).await? {
            replayed.push(dead_id);
        }
    }
    if let ReplaySelection::One(one) = selection
        && replayed.is_empty()
    {
        return Err(ReplayError::NoSuchDeadLetter {
            group: group.to_string(),
            id: one.clone(),
        });
    }
    Ok(json!({ "group": group, "replayed": replayed }))
}

/// One entry of the stream of `domain` as a JSON line's document.
pub fn entry_json(domain: &str, (id, payload): &Entry) -> Value {
    json!({ "stream": domain, "entry": id, "event": envelope_json(payload) })
}
