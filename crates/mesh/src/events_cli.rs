//! `mesh events`: the operator's tools for the bus. `list` shows every stream and each consumer
//! group's lag and pending entries; `dead --group G` prints the group's dead letters (reason,
//! deliveries, the envelope with its payload decoded) as JSON; `replay --group G` replays one
//! dead letter (`--id`), those of one event type (`--type`) or all (`--all`) to their stream;
//! `tail --stream D` prints a stream's entries as JSON lines. `timeline ID` asks report instead
//! (`crate::events_timeline`).
//!
//! Two ways to reach the bus, with the same JSON: `--redis-url` reads Redis itself, and
//! `--admin URL` asks a process's admin port (`mesh_runtime::bus_admin`, with `--token` of an
//! auditor, admin or service), which is the only way into the in-process bus of `mesh serve all`.

use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use mesh_runtime::bus::DeliveryOptions;
use mesh_runtime::bus::inspect::{BusInspect, ReadFrom};
use mesh_runtime::bus::inspect_json::{self, ReplaySelection};
use mesh_runtime::bus::redis::RedisBus;
use serde_json::{Value, json};

use crate::admin_client::AdminClient;

/// `mesh events` arguments.
#[derive(Debug, Args)]
pub(crate) struct EventsArgs {
    /// The Redis of the bus.
    #[arg(
        long,
        env = "MESH_REDIS_URL",
        value_name = "URL",
        conflicts_with = "admin"
    )]
    redis_url: Option<String>,
    /// Ask this admin port instead of Redis (e.g. `http://127.0.0.1:9090` of `mesh serve all`,
    /// whose bus is in-process); needs `--token`.
    #[arg(long, env = "MESH_ADMIN_URL", value_name = "URL")]
    admin: Option<String>,
    /// An access token of an auditor, an admin or a service: for `--admin` and `timeline` (a
    /// customer's shows only their own aggregates in `timeline`).
    #[arg(long, global = true, env = "MESH_EVENTS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The bus's key prefix (Redis).
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

/// Where the bus is.
enum Source {
    /// Redis, read directly.
    Redis(RedisBus),
    /// A process's admin port.
    Admin(AdminClient),
}

/// Runs `mesh events`.
pub(crate) async fn run(args: EventsArgs) -> anyhow::Result<()> {
    let (redis_url, admin, token) = (args.redis_url, args.admin, args.token);
    let connect = || -> anyhow::Result<Source> {
        match (&redis_url, &admin) {
            (_, Some(admin)) => {
                let token = token.clone().context(
                    "--admin needs --token (or MESH_EVENTS_TOKEN): an auditor's, admin's or service's",
                )?;
                Ok(Source::Admin(AdminClient::new(admin, token)?))
            }
            (Some(url), None) => Ok(Source::Redis(
                RedisBus::connect(url, &args.namespace, DeliveryOptions::default())
                    .context("--redis-url")?,
            )),
            (None, None) => anyhow::bail!(
                "say where the bus is: --redis-url (or MESH_REDIS_URL) for Redis, or --admin URL \
                 for a process's admin port (the in-process bus of `mesh serve all`)"
            ),
        }
    };
    match args.command {
        EventsCommand::Timeline(timeline) => {
            let token = token.context("timeline: --token (or MESH_EVENTS_TOKEN) is required")?;
            crate::events_timeline::run(timeline, token).await?;
        }
        EventsCommand::List => {
            let out = match &connect()? {
                Source::Redis(bus) => inspect_json::streams_json(&bus.streams().await?),
                Source::Admin(admin) => admin.get("/bus/streams").await?,
            };
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        EventsCommand::Dead { group } => {
            let out = match &connect()? {
                Source::Redis(bus) => inspect_json::dead_letters_json(bus, &group).await?,
                Source::Admin(admin) => admin.get(&format!("/bus/groups/{group}/dead")).await?,
            };
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        EventsCommand::Replay {
            group,
            id,
            event_type,
            all,
        } => {
            let selection = match (id, event_type, all) {
                (Some(id), _, _) => ReplaySelection::One(id),
                (None, Some(t), _) => ReplaySelection::OfType(t),
                (None, None, true) => ReplaySelection::All,
                (None, None, false) => {
                    anyhow::bail!("replay: say which dead letters: --id, --type or --all")
                }
            };
            let out = match &connect()? {
                Source::Redis(bus) => inspect_json::replay_json(bus, &group, &selection)
                    .await
                    .context("replay")?,
                Source::Admin(admin) => {
                    let body = match &selection {
                        ReplaySelection::One(id) => json!({ "id": id }),
                        ReplaySelection::OfType(t) => json!({ "type": t }),
                        ReplaySelection::All => json!({ "all": true }),
                    };
                    admin
                        .post(&format!("/bus/groups/{group}/replay"), &body)
                        .await
                        .context("replay")?
                }
            };
            println!("{out}");
        }
        EventsCommand::Tail {
            stream,
            from_start,
            count,
        } => tail(&connect()?, &stream, from_start, count).await?,
    }
    Ok(())
}

/// Prints the entries of `stream` as JSON lines, following it until `count` are printed.
async fn tail(
    source: &Source,
    stream: &str,
    from_start: bool,
    count: Option<usize>,
) -> anyhow::Result<()> {
    let mut from = if from_start {
        ReadFrom::Start
    } else {
        ReadFrom::New
    };
    let mut printed = 0usize;
    loop {
        let entries: Vec<Value> = match source {
            Source::Redis(bus) => bus
                .read_stream(stream, &from, 100, Duration::from_secs(1))
                .await?
                .iter()
                .map(|e| inspect_json::entry_json(stream, e))
                .collect(),
            Source::Admin(admin) => {
                let from = match &from {
                    ReadFrom::Start => "start".to_string(),
                    ReadFrom::New => "new".to_string(),
                    ReadFrom::After(id) => id.clone(),
                };
                let answer = admin
                    .get(&format!(
                        "/bus/streams/{stream}/entries?from={from}&count=100&wait_ms=1000"
                    ))
                    .await?;
                answer["entries"].as_array().cloned().unwrap_or_default()
            }
        };
        for entry in entries {
            println!("{entry}");
            if let Some(id) = entry["entry"].as_str() {
                from = ReadFrom::After(id.to_string());
            }
            printed += 1;
            if count.is_some_and(|c| printed >= c) {
                return Ok(());
            }
        }
    }
}
