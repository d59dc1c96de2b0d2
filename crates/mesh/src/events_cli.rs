//! `mesh events`: the operator's tools for the Redis bus. `list` shows every stream and each
//! consumer group's lag and pending entries; `dead --group G` prints the group's dead letters
//! (reason, deliveries, the envelope with its payload decoded) as JSON; `replay --group G`
//! replays one dead letter (`--id`), those of one event type (`--type`) or all (`--all`) to
//! their stream; `tail --stream D` prints a stream's entries as JSON lines. `timeline ID` asks
//! report instead of Redis (`crate::events_timeline`).
//!
//! Envelopes and payloads are decoded with the embedded descriptor set, so the JSON is the
//! proto3 JSON mapping of the real messages.

use anyhow::Context as _;
use clap::{Args, Subcommand};
use mesh_contracts::events::v1::Envelope;
use mesh_runtime::bus::DeliveryOptions;
use mesh_runtime::bus::redis::RedisBus;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::{Value, json};

/// `mesh events` arguments.
#[derive(Debug, Args)]
pub(crate) struct EventsArgs {
    /// The Redis of the bus (every command but `timeline`).
    #[arg(long, env = "MESH_REDIS_URL", value_name = "URL")]
    redis_url: Option<String>,
    /// The bus's key prefix.
    #[arg(long, default_value = crate::migrate::REDIS_NAMESPACE)]
    namespace: String,
    #[command(subcommand)]
    command: EventsCommand,
}

#[derive(Debug, Subcommand)]
enum EventsCommand {
    /// Every stream with its length, and each consumer group's lag (undelivered + pending),
    /// pending entries and the age of its oldest unhandled entry, as JSON.
    List,
    /// The dead letters of a consumer group as JSON: reason, deliveries, the envelope.
    Dead {
        /// The consumer group (the consuming service).
        #[arg(long)]
        group: String,
    },
    /// Replays dead letters of a group to their streams (other groups drop the copy by id).
    Replay {
        /// The consumer group.
        #[arg(long)]
        group: String,
        /// Only this dead letter (its `dead_id` in `mesh events dead`).
        #[arg(long, conflicts_with_all = ["event_type", "all"])]
        id: Option<String>,
        /// Only dead letters of this event type, e.g. `order.created`.
        #[arg(long = "type", conflicts_with = "all")]
        event_type: Option<String>,
        /// Every dead letter of the group.
        #[arg(long)]
        all: bool,
    },
    /// Prints a stream's entries as JSON lines, then follows it.
    Tail {
        /// The domain stream, e.g. `order`.
        #[arg(long)]
        stream: String,
        /// Start from the stream's first entry instead of only new ones.
        #[arg(long)]
        from_start: bool,
        /// Stop after this many entries.
        #[arg(long)]
        count: Option<usize>,
    },
    /// What happened to an aggregate, e.g. an order: report's merged timeline of every
    /// service's events for it and its related aggregates, as JSON.
    Timeline(crate::events_timeline::TimelineArgs),
}

/// An envelope as JSON: its fields and its payload decoded by type (or its size if unknown).
pub(crate) fn envelope_json(pool: &DescriptorPool, bytes: &[u8]) -> Value {
    let Ok(e) = Envelope::decode(bytes) else {
        return json!({ "malformed": true, "bytes": bytes.len() });
    };
    let payload = e.payload.as_ref().map_or(Value::Null, |any| {
        let name = any.type_url.rsplit('/').next().unwrap_or_default();
        pool.get_message_by_name(name)
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

fn event_type(bytes: &[u8]) -> String {
    Envelope::decode(bytes)
        .map(|e| e.r#type)
        .unwrap_or_default()
}

/// Runs `mesh events`.
pub(crate) async fn run(args: EventsArgs) -> anyhow::Result<()> {
    let (redis_url, namespace) = (args.redis_url, args.namespace);
    let connect = || -> anyhow::Result<RedisBus> {
        let url = redis_url
            .as_deref()
            .context("--redis-url (or MESH_REDIS_URL) is required: the bus's Redis")?;
        RedisBus::connect(url, &namespace, DeliveryOptions::default()).context("--redis-url")
    };
    let pool = DescriptorPool::decode(mesh_contracts::FILE_DESCRIPTOR_SET)?;
    match args.command {
        EventsCommand::List => {
            let bus = connect()?;
            let streams = bus.streams().await?;
            let out: Vec<Value> = streams
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
                .collect();
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        EventsCommand::Dead { group } => {
            let bus = connect()?;
            let dead = bus.dead_letter_entries(&group).await?;
            let out: Vec<Value> = dead
                .iter()
                .map(|(id, d)| {
                    json!({
                        "dead_id": id,
                        "stream": d.domain,
                        "entry": d.entry_id,
                        "group": d.group,
                        "reason": d.reason,
                        "deliveries": d.deliveries,
                        "event": envelope_json(&pool, &d.payload),
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        EventsCommand::Replay {
            group,
            id,
            event_type: wanted,
            all,
        } => {
            if id.is_none() && wanted.is_none() && !all {
                anyhow::bail!("replay: say which dead letters: --id, --type or --all");
            }
            let bus = connect()?;
            let mut replayed = Vec::new();
            for (dead_id, d) in bus.dead_letter_entries(&group).await? {
                let chosen = match (&id, &wanted) {
                    (Some(one), _) => *one == dead_id,
                    (None, Some(t)) => event_type(&d.payload) == *t,
                    (None, None) => true,
                };
                if chosen && bus.replay_dead_letter(&group, &dead_id).await? {
                    replayed.push(dead_id);
                }
            }
            if let Some(one) = &id
                && replayed.is_empty()
            {
                anyhow::bail!("replay: group `{group}` has no dead letter `{one}`");
            }
            println!("{}", json!({ "group": group, "replayed": replayed }));
        }
        EventsCommand::Timeline(timeline) => crate::events_timeline::run(timeline).await?,
        EventsCommand::Tail {
            stream,
            from_start,
            count,
        } => {
            let bus = connect()?;
            let mut after = if from_start {
                "0".to_string()
            } else {
                "$".to_string()
            };
            let mut printed = 0usize;
            loop {
                for (id, payload) in bus.read_stream(&stream, &after, 100, 1000).await? {
                    println!(
                        "{}",
                        json!({ "stream": stream, "entry": id, "event": envelope_json(&pool, &payload) })
                    );
                    after = id;
                    printed += 1;
                    if count.is_some_and(|c| printed >= c) {
                        return Ok(());
                    }
                }
            }
        }
    }
    Ok(())
}
