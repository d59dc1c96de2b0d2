//! `mesh events timeline ID`: what happened to an aggregate (an order, with its reservation,
//! payment and notifications), asked of report's `GetAggregateTimeline` over gRPC and printed as
//! JSON, each envelope with its payload decoded like the other `mesh events` commands.

use anyhow::Context as _;
use clap::Args;
use mesh_contracts::report::v1::GetAggregateTimelineRequest;
use mesh_contracts::report::v1::report_service_client::ReportServiceClient;
use mesh_runtime::bus::inspect_json::envelope_json;
use prost::Message as _;
use serde_json::json;

/// `mesh events timeline` arguments.
#[derive(Debug, Args)]
pub(crate) struct TimelineArgs {
    /// The aggregate id, e.g. an order id.
    aggregate_id: String,
    /// The report service (`host:port` or a URL).
    #[arg(
        long,
        env = "MESH_REPORT_ADDR",
        default_value = "127.0.0.1:50060",
        value_name = "ADDR"
    )]
    report: String,
    /// At most this many events (report's default 1000 when 0).
    #[arg(long, default_value_t = 0)]
    max_events: i32,
}

/// Asks report for the timeline, as the caller of `token`, and prints it.
pub(crate) async fn run(args: TimelineArgs, token: String) -> anyhow::Result<()> {
    let url = if args.report.contains("://") {
        args.report.clone()
    } else {
        format!("http://{}", args.report)
    };
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .with_context(|| format!("--report {url}"))?
        .connect()
        .await
        .with_context(|| format!("connecting to report at {url}"))?;
    let mut request = tonic::Request::new(GetAggregateTimelineRequest {
        aggregate_id: args.aggregate_id.clone(),
        max_events: args.max_events,
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .context("--token is not a valid header value")?,
    );
    let answer = ReportServiceClient::new(channel)
        .get_aggregate_timeline(request)
        .await
        .map_err(|s| anyhow::anyhow!("report answered {:?}: {}", s.code(), s.message()))?
        .into_inner();
    let events: Vec<serde_json::Value> = answer
        .events
        .iter()
        .map(|e| envelope_json(&e.encode_to_vec()))
        .collect();
    let freshness = answer.freshness.unwrap_or_default();
    let out = json!({
        "aggregate_id": args.aggregate_id,
        "subjects": answer.subjects,
        "truncated": answer.truncated,
        "events_behind": freshness.events_behind,
        "events": events,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
