//! `mesh load`: a gRPC and REST load generator (in the spirit of ghz and k6) built on the embedded
//! descriptor set: requests are JSON (proto3 JSON mapping) with templated fields, sent over `-c`
//! workers sharing `--connections` HTTP/2 connections (gRPC) or keep-alive HTTP/1.1 connections
//! (REST), for `-n` requests or a `--duration`, closed-model (as fast as answers come) or
//! open-model at a fixed `--rate` (latency then counts from the scheduled start, so a slow server
//! cannot hide its queueing: no coordinated omission). Latencies go to an HDR histogram.
//!
//! Templates: `{{counter}}` (0, 1, 2, ... across workers), `{{uuid}}` (a UUIDv7),
//! `{{random A B}}` (an integer in A..=B).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::{Buf as _, BufMut as _, Bytes};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use serde::Serialize;
use tokio::time::Instant;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

/// What `mesh load` calls.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// A unary gRPC method: `http://host:port`, `/pkg.Service/Method`, its request type.
    Grpc {
        /// Server URL.
        url: String,
        /// Request path.
        path: http::uri::PathAndQuery,
        /// The request message type.
        input: MessageDescriptor,
    },
    /// A REST route: method and full URL (templated).
    Rest {
        /// HTTP method.
        method: http::Method,
        /// URL, may hold templates.
        url: String,
    },
}

/// A load run.
#[derive(Debug, Clone)]
pub(crate) struct LoadSpec {
    pub(crate) target: Target,
    /// Request data: JSON for gRPC, the body for REST (empty: none). May hold templates.
    pub(crate) data: String,
    pub(crate) connections: usize,
    pub(crate) concurrency: usize,
    pub(crate) requests: Option<u64>,
    pub(crate) duration: Option<Duration>,
    pub(crate) rate: Option<f64>,
    pub(crate) warmup: Duration,
    pub(crate) timeout: Duration,
    pub(crate) progress: bool,
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub(crate) requests: u64,
    pub(crate) ok: u64,
    /// Answers that were not a success (error statuses, timeouts, connection errors).
    pub(crate) errors: u64,
    pub(crate) seconds: f64,
    /// Successful answers per second (goodput): errors are not throughput.
    pub(crate) throughput_rps: f64,
    pub(crate) latency_us: Latency,
    /// gRPC status names, or HTTP status codes for REST.
    pub(crate) status: BTreeMap<String, u64>,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Latency {
    pub(crate) p50: u64,
    pub(crate) p90: u64,
    pub(crate) p99: u64,
    pub(crate) p999: u64,
    pub(crate) max: u64,
    pub(crate) mean: f64,
}

impl Report {
    pub(crate) fn text(&self) -> String {
        let l = &self.latency_us;
        let mut s = format!(
            "requests {}  ok {}  errors {}  in {:.2}s  throughput {:.0} successful req/s\nlatency  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {:.0} us)\nstatus  ",
            self.requests,
            self.ok,
            self.errors,
            self.seconds,
            self.throughput_rps,
            us(l.p50),
            us(l.p90),
            us(l.p99),
            us(l.p999),
            us(l.max),
            l.mean
        );
        let codes: Vec<_> = self
            .status
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        s.push_str(&codes.join("  "));
        s
    }
}

/// `1234` us as `1.23ms`, `56` as `56us`.
pub(crate) fn us(v: u64) -> String {
    if v >= 1000 {
        format!("{:.2}ms", v as f64 / 1000.0)
    } else {
        format!("{v}us")
    }
}

/// The unary method `method` (`pkg.Service/Method`, `pkg.Service.Method` or `/pkg.Service/Method`)
/// of `pool`: its path and request type.
pub(crate) fn find_method(
    pool: &DescriptorPool,
    method: &str,
) -> anyhow::Result<(http::uri::PathAndQuery, MessageDescriptor)> {
    let m = method.trim_start_matches('/');
    let (service, name) = m
        .rsplit_once('/')
        .or_else(|| m.rsplit_once('.'))
        .with_context(|| format!("method `{method}`: expected pkg.Service/Method"))?;
    let svc = pool
        .get_service_by_name(service)
        .with_context(|| format!("no service `{service}` in the descriptor set"))?;
    let desc = svc
        .methods()
        .find(|x| x.name() == name)
        .with_context(|| format!("service `{service}` has no method `{name}`"))?;
    if desc.is_client_streaming() || desc.is_server_streaming() {
        bail!("`{method}` is a streaming method; mesh load calls unary methods");
    }
    Ok((format!("/{service}/{name}").parse()?, desc.input()))
}

/// Fills the templates of `text`.
fn render(text: &str, counter: &AtomicU64) -> String {
    if !text.contains("{{") {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find("}}") else {
            break;
        };
        let inner = rest[start + 2..start + end].trim();
        let mut words = inner.split_whitespace();
        match words.next() {
            Some("counter") => out.push_str(&counter.fetch_add(1, Ordering::Relaxed).to_string()),
            Some("uuid") => out.push_str(&uuid::Uuid::now_v7().to_string()),
            Some("random") => {
                let a: i64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
                let b: i64 = words
                    .next()
                    .and_then(|w| w.parse().ok())
                    .unwrap_or(i64::MAX);
                out.push_str(&rand::random_range(a..=b.max(a)).to_string());
            }
            _ => out.push_str(&rest[start..start + end + 2]),
        }
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    out
}

fn encode_json(input: &MessageDescriptor, json: &str) -> anyhow::Result<Bytes> {
    let mut de = serde_json::Deserializer::from_str(json);
    let msg = DynamicMessage::deserialize(input.clone(), &mut de)
        .with_context(|| format!("request data is not a valid {} in JSON", input.full_name()))?;
    Ok(Bytes::from(msg.encode_to_vec()))
}

/// A codec that sends and receives already-encoded messages.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RawCodec;

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RawEncoder;
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Self::Error> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

enum Conn {
    Grpc(tonic::client::Grpc<Channel>),
    Rest(Client<HttpConnector, Full<Bytes>>),
}

struct Shared {
    spec: LoadSpec,
    counter: AtomicU64,
    issued: AtomicU64,
    done: AtomicU64,
    stop: AtomicBool,
    fixed_body: Option<Bytes>,
}

struct Tally {
    hist: Histogram<u64>,
    status: BTreeMap<String, u64>,
    ok: u64,
}

impl Tally {
    fn new() -> Self {
        Self {
            hist: Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds"),
            status: BTreeMap::new(),
            ok: 0,
        }
    }
}

/// Runs `spec`: the warm-up (not recorded), then the measured run.
pub(crate) async fn run(spec: LoadSpec) -> anyhow::Result<Report> {
    let fixed_body = match &spec.target {
        Target::Grpc { input, .. } if !spec.data.contains("{{") => Some(encode_json(
            input,
            if spec.data.is_empty() {
                "{}"
            } else {
                &spec.data
            },
        )?),
        Target::Grpc { input, .. } => {
            // Check the template once, with placeholder values.
            encode_json(input, &render(&spec.data, &AtomicU64::new(0)))?;
            None
        }
        Target::Rest { .. } => None,
    };
    let mut conns = Vec::new();
    for _ in 0..spec.connections.max(1) {
        conns.push(Arc::new(match &spec.target {
            Target::Grpc { url, .. } => {
                let channel = Channel::from_shared(url.clone())?
                    .tcp_nodelay(true)
                    .connect()
                    .await
                    .with_context(|| format!("connecting to {url}"))?;
                Conn::Grpc(tonic::client::Grpc::new(channel))
            }
            Target::Rest { .. } => Conn::Rest(
                Client::builder(TokioExecutor::new())
                    .pool_max_idle_per_host(spec.concurrency.max(1))
                    .build({
                        let mut c = HttpConnector::new();
                        c.set_nodelay(true);
                        c
                    }),
            ),
        }));
    }
    if !spec.warmup.is_zero() {
        let warm = LoadSpec {
            requests: None,
            duration: Some(spec.warmup),
            progress: false,
            ..spec.clone()
        };
        phase(warm, &conns, fixed_body.clone()).await?;
    }
    phase(spec, &conns, fixed_body).await
}

async fn phase(
    spec: LoadSpec,
    conns: &[Arc<Conn>],
    fixed_body: Option<Bytes>,
) -> anyhow::Result<Report> {
    let shared = Arc::new(Shared {
        spec,
        counter: AtomicU64::new(0),
        issued: AtomicU64::new(0),
        done: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        fixed_body,
    });
    let start = Instant::now();
    let mut workers = Vec::new();
    for i in 0..shared.spec.concurrency.max(1) {
        let conn = conns[i % conns.len()].clone();
        let shared = shared.clone();
        workers.push(tokio::spawn(worker(shared, conn, start)));
    }
    let progress = shared.spec.progress.then(|| {
        let shared = shared.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let done = shared.done.load(Ordering::Relaxed);
                let secs = start.elapsed().as_secs_f64();
                let frac = match (shared.spec.requests, shared.spec.duration) {
                    (Some(n), _) => done as f64 / n as f64,
                    (None, Some(d)) => secs / d.as_secs_f64(),
                    _ => 0.0,
                }
                .min(1.0);
                let bar = (frac * 30.0) as usize;
                eprint!(
                    "\r[{}{}] {:>3.0}%  {done} done  {:.0} req/s  ",
                    "#".repeat(bar),
                    ".".repeat(30 - bar),
                    frac * 100.0,
                    done as f64 / secs.max(1e-9)
                );
            }
        })
    });
    let mut total = Tally::new();
    for w in workers {
        let t = w.await??;
        total.hist.add(&t.hist)?;
        total.ok += t.ok;
        for (k, v) in t.status {
            *total.status.entry(k).or_default() += v;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    if let Some(p) = progress {
        p.abort();
        eprintln!();
    }
    let h = &total.hist;
    let requests = h.len();
    Ok(Report {
        requests,
        ok: total.ok,
        errors: requests - total.ok,
        seconds,
        throughput_rps: total.ok as f64 / seconds,
        latency_us: Latency {
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        },
        status: total.status,
    })
}

async fn worker(shared: Arc<Shared>, conn: Arc<Conn>, start: Instant) -> anyhow::Result<Tally> {
    let spec = &shared.spec;
    let end = spec.duration.map(|d| start + d);
    let mut tally = Tally::new();
    let mut grpc = match &*conn {
        Conn::Grpc(g) => Some(g.clone()),
        Conn::Rest(_) => None,
    };
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        let k = shared.issued.fetch_add(1, Ordering::Relaxed);
        if spec.requests.is_some_and(|n| k >= n) {
            break;
        }
        // Open model: request k is due at start + k / rate; its latency counts from then.
        let began = match spec.rate {
            Some(rate) => {
                let due = start + Duration::from_secs_f64(k as f64 / rate);
                tokio::time::sleep_until(due).await;
                due
            }
            None => Instant::now(),
        };
        if end.is_some_and(|e| began >= e) {
            shared.stop.store(true, Ordering::Relaxed);
            break;
        }
        let code = match (&spec.target, grpc.as_mut(), &*conn) {
            (Target::Grpc { path, input, .. }, Some(g), _) => {
                let body = match &shared.fixed_body {
                    Some(b) => b.clone(),
                    None => encode_json(input, &render(&spec.data, &shared.counter))?,
                };
                let mut req = tonic::Request::new(body);
                req.set_timeout(spec.timeout);
                let result = match g.ready().await {
                    Ok(()) => g.unary(req, path.clone(), RawCodec).await.map(|_| ()),
                    Err(e) => Err(tonic::Status::unavailable(e.to_string())),
                };
                match result {
                    Ok(()) => "OK".to_string(),
                    Err(s) => mesh_runtime::metrics::code_name(s.code()).to_string(),
                }
            }
            (Target::Rest { method, url }, _, Conn::Rest(client)) => {
                let body = render(&spec.data, &shared.counter);
                let mut req = http::Request::builder()
                    .method(method.clone())
                    .uri(render(url, &shared.counter));
                if !body.is_empty() {
                    req = req.header("content-type", "application/json");
                }
                let req = req.body(Full::new(Bytes::from(body)))?;
                match tokio::time::timeout(spec.timeout, async {
                    let r = client.request(req).await?;
                    let status = r.status();
                    r.into_body().collect().await?;
                    anyhow::Ok(status)
                })
                .await
                {
                    Ok(Ok(status)) => status.as_u16().to_string(),
                    Ok(Err(_)) => "connection error".to_string(),
                    Err(_) => "timeout".to_string(),
                }
            }
            _ => unreachable!("connections match the target"),
        };
        let micros = began.elapsed().as_micros() as u64;
        tally.hist.saturating_record(micros.max(1));
        if code == "OK" || code.starts_with('2') {
            tally.ok += 1;
        }
        *tally.status.entry(code).or_default() += 1;
        shared.done.fetch_add(1, Ordering::Relaxed);
    }
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_templates_fill_counter_uuid_and_random() {
        let c = AtomicU64::new(0);
        assert_eq!(render(r#"{"id":"p-{{counter}}"}"#, &c), r#"{"id":"p-0"}"#);
        assert_eq!(render(r#"{"id":"p-{{ counter }}"}"#, &c), r#"{"id":"p-1"}"#);
        let r = render("{{random 5 7}}", &c);
        assert!(["5", "6", "7"].contains(&r.as_str()), "{r}");
        assert_eq!(render("{{uuid}}", &c).len(), 36);
        assert_eq!(render("{{other}} x", &c), "{{other}} x");
    }

    #[test]
    fn load_finds_unary_methods_in_the_contracts() {
        let pool = DescriptorPool::decode(mesh_contracts::FILE_DESCRIPTOR_SET).unwrap();
        let (path, input) = find_method(&pool, "product.v1.ProductService/GetProduct").unwrap();
        assert_eq!(path.as_str(), "/product.v1.ProductService/GetProduct");
        assert_eq!(input.full_name(), "product.v1.GetProductRequest");
        assert!(find_method(&pool, "product.v1.ProductService.GetProduct").is_ok());
        assert!(
            find_method(&pool, "iot.v1.GatewayService/OpenChannel")
                .unwrap_err()
                .to_string()
                .contains("streaming")
        );
        let bytes = encode_json(&input, r#"{"id":"p-1"}"#).unwrap();
        assert_eq!(&bytes[..], b"\x0a\x03p-1");
        assert!(encode_json(&input, r#"{"nope":1}"#).is_err());
    }
}

/// `mesh load` flags.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct LoadArgs {
    /// Server address, e.g. `127.0.0.1:50053` or `http://127.0.0.1:8080`.
    target: String,
    /// gRPC method to call, e.g. `product.v1.ProductService/GetProduct`.
    #[arg(long, conflicts_with = "rest")]
    call: Option<String>,
    /// REST route instead: `METHOD /path` (templated), e.g. `GET /v1/products/p-{{counter}}`.
    #[arg(long)]
    rest: Option<String>,
    /// Request data: JSON (templated: {{counter}}, {{uuid}}, {{random A B}}); `@file` reads a file.
    #[arg(short = 'd', long, default_value = "")]
    data: String,
    /// An encoded FileDescriptorSet (`buf build -o x.binpb`) for methods outside the contracts.
    #[arg(long, value_name = "FILE")]
    descriptor_set: Option<std::path::PathBuf>,
    /// Connections (HTTP/2 for gRPC; REST uses keep-alive HTTP/1.1, one per concurrent request).
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Concurrent requests (workers).
    #[arg(short = 'c', long, default_value_t = 16)]
    concurrency: usize,
    /// Total requests (default 1000 unless --duration is given).
    #[arg(short = 'n', long)]
    requests: Option<u64>,
    /// Run for this long instead, e.g. `30s`.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Fixed rate in requests/s (open model); unset: as fast as answers come (closed model).
    #[arg(long)]
    rate: Option<f64>,
    /// Warm-up before measuring, e.g. `2s` (not recorded).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Deadline of each request.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `mesh load`.
pub(crate) async fn cli(args: LoadArgs) -> anyhow::Result<()> {
    let base = if args.target.contains("://") {
        args.target.trim_end_matches('/').to_string()
    } else {
        format!("http://{}", args.target)
    };
    let data = match args.data.strip_prefix('@') {
        Some(file) => std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?,
        None => args.data.clone(),
    };
    let target = match (&args.call, &args.rest) {
        (Some(call), None) => {
            let mut pool = DescriptorPool::decode(mesh_contracts::FILE_DESCRIPTOR_SET)?;
            if let Some(file) = &args.descriptor_set {
                let bytes =
                    std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
                pool.decode_file_descriptor_set(&bytes[..])
                    .with_context(|| format!("decoding {}", file.display()))?;
            }
            let (path, input) = find_method(&pool, call)?;
            Target::Grpc {
                url: base,
                path,
                input,
            }
        }
        (None, Some(rest)) => {
            let (method, path) = rest
                .split_once(' ')
                .context("--rest: expected `METHOD /path`, e.g. `GET /v1/products/p-1`")?;
            Target::Rest {
                method: method.parse().context("--rest: bad HTTP method")?,
                url: format!("{base}{}", path.trim()),
            }
        }
        _ => bail!("give --call <pkg.Service/Method> or --rest '<METHOD> <path>'"),
    };
    let requests = match (args.requests, args.duration) {
        (None, None) => Some(1000),
        (n, _) => n,
    };
    let report = run(LoadSpec {
        target,
        data,
        connections: args.connections,
        concurrency: args.concurrency,
        requests,
        duration: args.duration,
        rate: args.rate,
        warmup: args.warmup,
        timeout: args.timeout,
        progress: !args.json,
    })
    .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", report.text());
    }
    Ok(())
}
