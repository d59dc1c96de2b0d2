//! `mesh bench`: the benchmark suite, in one process and with one client (`mesh load`'s):
//!
//! - (a) baseline: a bare tonic server (no layers) answering `product.v1.ProductService/GetProduct`
//!   from memory, called over gRPC;
//! - (a') the same service behind the runtime's `GrpcServer` (observe and protection layers,
//!   health, reflection): the runtime's overhead;
//! - (b) the real product service (started as `mesh serve product` would, see
//!   [`crate::bench_product`]) answering `GetProduct` for one product: a cache hit;
//! - (c0) the floor of a REST-to-gRPC hop ([`crate::bench_hop`]): a minimal hyper server calling
//!   (a') with a tonic client, no transcoding, routing or layers;
//! - (c) the same RPC through the edge over REST (`GET /v1/products/{id}`), the edge calling (a');
//! - (e) the edge's goodput as clients grow: successful answers per second of (c) at 16 and at
//!   256 concurrent REST clients (one connection each), with their error counts and the ratio
//!   (target >= 0.9x with no errors; `--no-goodput` skips it);
//! - (d) the order saga end to end on Postgres + Redis when `MESH_BENCH_DATABASE_URL` is set
//!   ([`crate::bench_saga`], its services in one child process): confirmed orders/s and
//!   PlaceOrder-to-confirmed latency;
//! - the idle RSS of `mesh serve all` (a child process of this binary).
//!
//! Every figure is printed with its ratio to the baseline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use mesh_contracts::product::v1::product_service_server::{ProductService, ProductServiceServer};
use mesh_contracts::product::v1::{self as pb, GetProductRequest, GetProductResponse, Product};
use mesh_edge::config::EdgeConfig;
use mesh_edge::upstream::{Upstream, Upstreams};
use mesh_runtime::client::ClientOptions;
use mesh_runtime::config::{LogConfig, LogFormat};
use mesh_runtime::{GrpcServer, Metrics, Readiness, RpcMetrics, ServiceRoutes};
use prost_reflect::DescriptorPool;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

use crate::load::{self, LoadSpec, Report, Target, us};

/// Settings of `mesh bench`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct BenchArgs {
    /// Measured time per scenario, e.g. `10s`.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Warm-up per scenario (not measured).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Concurrent requests.
    #[arg(short = 'c', long, default_value_t = 32)]
    concurrency: usize,
    /// gRPC connections (HTTP/2).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Skip the idle-RSS measurement of `mesh serve all`.
    #[arg(long)]
    no_rss: bool,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
    /// Skip (e), the edge's goodput at 16 and 256 concurrent REST clients.
    #[arg(long)]
    no_goodput: bool,
    /// Log filter of the subscriber installed for the run, as `mesh serve --log` (the default is
    /// `mesh serve`'s, so spans cost what they cost in production); logs go to stderr as JSON.
    #[arg(long, default_value = "info")]
    log: String,
}

/// The benchmark's product service: answers `GetProduct` for every id from memory, the one RPC
/// the scenarios measure; the others answer `UNIMPLEMENTED` naming themselves, so a scenario
/// that called one by mistake would fail instead of measuring made-up work.
#[derive(Debug, Default, Clone)]
struct MemoryProducts;

/// The answer of an RPC the benchmark's product service does not serve.
fn not_benchmarked(method: &str) -> Status {
    Status::unimplemented(format!(
        "{method} is not served by the benchmark's product service"
    ))
}

#[tonic::async_trait]
impl ProductService for MemoryProducts {
    async fn get_product(
        &self,
        request: Request<GetProductRequest>,
    ) -> Result<Response<GetProductResponse>, Status> {
        Ok(Response::new(GetProductResponse {
            product: Some(Product {
                id: request.into_inner().id,
                name: "Widget".into(),
                description: "A benchmark product".into(),
                active: true,
                ..Default::default()
            }),
        }))
    }

    async fn create_product(
        &self,
        _request: Request<pb::CreateProductRequest>,
    ) -> Result<Response<pb::CreateProductResponse>, Status> {
        Err(not_benchmarked("CreateProduct"))
    }

    async fn batch_get_products(
        &self,
        _request: Request<pb::BatchGetProductsRequest>,
    ) -> Result<Response<pb::BatchGetProductsResponse>, Status> {
        Err(not_benchmarked("BatchGetProducts"))
    }

    async fn list_products(
        &self,
        _request: Request<pb::ListProductsRequest>,
    ) -> Result<Response<pb::ListProductsResponse>, Status> {
        Err(not_benchmarked("ListProducts"))
    }

    async fn update_product(
        &self,
        _request: Request<pb::UpdateProductRequest>,
    ) -> Result<Response<pb::UpdateProductResponse>, Status> {
        Err(not_benchmarked("UpdateProduct"))
    }

    async fn delete_product(
        &self,
        _request: Request<pb::DeleteProductRequest>,
    ) -> Result<Response<pb::DeleteProductResponse>, Status> {
        Err(not_benchmarked("DeleteProduct"))
    }

    async fn create_category(
        &self,
        _request: Request<pb::CreateCategoryRequest>,
    ) -> Result<Response<pb::CreateCategoryResponse>, Status> {
        Err(not_benchmarked("CreateCategory"))
    }

    async fn list_categories(
        &self,
        _request: Request<pb::ListCategoriesRequest>,
    ) -> Result<Response<pb::ListCategoriesResponse>, Status> {
        Err(not_benchmarked("ListCategories"))
    }
}

async fn bare_server() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ProductServiceServer::new(MemoryProducts))
            .serve_with_incoming(incoming),
    );
    Ok(addr)
}

async fn runtime_server() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let routes = ServiceRoutes::new().add_service(ProductServiceServer::new(MemoryProducts));
    let server = GrpcServer::new("product", routes, RpcMetrics::register(&Metrics::new()))
        .readiness(Readiness::new());
    tokio::spawn(server.run(listener, std::future::pending()));
    Ok(addr)
}

/// The edge calling `upstream` over `connections` pooled HTTP/2 connections for REST calls.
async fn edge_server(upstream: SocketAddr, connections: usize) -> anyhow::Result<SocketAddr> {
    let pool = mesh_edge::load_pool(&[])?;
    let modules: Vec<&str> = crate::modules::MODULES.iter().map(|m| m.name).collect();
    let uri: http::Uri = format!("http://{upstream}").parse()?;
    // As `mesh serve edge` builds it: a channel and a pool of REST connections.
    let upstream = Upstream::connect(
        "product",
        uri,
        ClientOptions {
            name: Some("product".into()),
            ..ClientOptions::default()
        },
        connections,
    );
    let mut upstreams = Upstreams::new();
    for (service, _) in Upstreams::owned_services(&pool, &modules) {
        upstreams.insert(service, upstream.clone());
    }
    let edge = Arc::new(mesh_edge::Edge::new(
        pool,
        EdgeConfig::default(),
        upstreams,
        4 << 20,
    )?);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = GrpcServer::new(
        "edge",
        edge.service_routes(),
        RpcMetrics::register(&Metrics::new()),
    )
    .readiness(Readiness::new());
    tokio::spawn(server.run(listener, std::future::pending()));
    Ok(addr)
}

/// The client counts of scenario (e), the edge's goodput as clients grow.
const GOODPUT_CLIENTS: [usize; 2] = [16, 256];

/// One scenario's result, or why it could not be measured.
#[derive(Debug, serde::Serialize)]
struct Scenario {
    name: &'static str,
    report: Option<Report>,
    not_measured: Option<&'static str>,
}

pub(crate) async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    // The same subscriber as `mesh serve`: without one, tracing falls back to `log` on every span
    // enter and exit, a cost no production process has.
    let _telemetry = mesh_runtime::telemetry::init_with(
        &LogConfig {
            filter: args.log.clone(),
            format: LogFormat::Json,
        },
        None,
        "bench",
    )
    .context("--log")?;
    let pool = DescriptorPool::decode(mesh_contracts::FILE_DESCRIPTOR_SET)?;
    let (path, input) = load::find_method(&pool, "product.v1.ProductService/GetProduct")?;
    let spec = |target| LoadSpec {
        target,
        data: r#"{"id": "p-{{counter}}"}"#.into(),
        connections: args.connections,
        concurrency: args.concurrency,
        requests: None,
        duration: Some(args.duration),
        rate: None,
        warmup: args.warmup,
        timeout: Duration::from_secs(5),
        progress: false,
    };
    let grpc = |addr: SocketAddr| Target::Grpc {
        url: format!("http://{addr}"),
        path: path.clone(),
        input: input.clone(),
    };
    let bare = bare_server().await?;
    let runtime = runtime_server().await?;
    // The pool's size from `MESH_EDGE_UPSTREAM_CONNECTIONS`, as `mesh serve edge` reads it; the
    // bare hop (c0) gets as many connections.
    let upstream_connections =
        EdgeConfig::from_env(mesh_runtime::settings::process_env)?.upstream_connections;
    let edge = edge_server(runtime, upstream_connections).await?;

    let mut scenarios = Vec::new();
    eprintln!("(a) bare tonic GetProduct over gRPC ...");
    scenarios.push(Scenario {
        name: "(a) baseline: bare tonic server, GetProduct over gRPC",
        report: Some(load::run(spec(grpc(bare))).await?),
        not_measured: None,
    });
    eprintln!("(a') runtime GrpcServer GetProduct over gRPC ...");
    scenarios.push(Scenario {
        name: "(a') runtime GrpcServer (observe + shedding layers), GetProduct over gRPC",
        report: Some(load::run(spec(grpc(runtime))).await?),
        not_measured: None,
    });
    let product = crate::bench_product::start().await?;
    eprintln!(
        "(b) product service GetProduct, cache hit ({}) ...",
        product.setup
    );
    let product_report = load::run(LoadSpec {
        data: serde_json::json!({ "id": product.product_id }).to_string(),
        ..spec(grpc(product.addr))
    })
    .await?;
    let product_setup = product.setup.clone();
    product.stop().await?;
    scenarios.push(Scenario {
        name: "(b) product service GetProduct on a cache hit",
        report: Some(product_report),
        not_measured: None,
    });
    let rest = |addr: SocketAddr| {
        spec(Target::Rest {
            method: http::Method::GET,
            url: format!("http://{addr}/v1/products/p-{{{{counter}}}}"),
        })
    };
    eprintln!("(c0) bare REST-to-gRPC hop -> (a') ...");
    let hop = crate::bench_hop::start(runtime, upstream_connections).await?;
    scenarios.push(Scenario {
        name: "(c0) floor: bare hyper REST -> tonic hop (no edge code) -> (a')",
        report: Some(
            load::run(LoadSpec {
                data: String::new(),
                ..rest(hop)
            })
            .await?,
        ),
        not_measured: None,
    });
    eprintln!("(c) edge REST GET /v1/products/{{id}} -> (a') ...");
    scenarios.push(Scenario {
        name: "(c) edge: GET /v1/products/{id} over REST (HTTP/1.1) -> (a')",
        report: Some(
            load::run(LoadSpec {
                // GET: the id is in the path, no body.
                data: String::new(),
                ..rest(edge)
            })
            .await?,
        ),
        not_measured: None,
    });
    let goodput = if args.no_goodput {
        None
    } else {
        let mut at = Vec::new();
        for clients in GOODPUT_CLIENTS {
            eprintln!("(e) edge goodput, {clients} concurrent REST clients ...");
            at.push(
                load::run(LoadSpec {
                    data: String::new(),
                    concurrency: clients,
                    ..rest(edge)
                })
                .await?,
            );
        }
        Some(at)
    };
    let saga = match std::env::var("MESH_BENCH_DATABASE_URL")
        .ok()
        .filter(|v| !v.is_empty())
    {
        Some(url) => {
            eprintln!("(d) order saga on Postgres + Redis, services in one child process ...");
            Some(
                crate::bench_saga::one_process(&url, args.duration, args.concurrency)
                    .await
                    .context("(d) the order saga")?,
            )
        }
        None => None,
    };
    let rss = if args.no_rss {
        None
    } else {
        eprintln!("idle RSS of `mesh serve all` ...");
        Some(idle_rss().await?)
    };

    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "settings": {
                    "duration_s": args.duration.as_secs_f64(),
                    "warmup_s": args.warmup.as_secs_f64(),
                    "concurrency": args.concurrency,
                    "connections": args.connections,
                },
                "scenarios": scenarios,
                "edge_goodput": goodput.as_ref().map(|at| serde_json::json!({
                    "clients": GOODPUT_CLIENTS,
                    "reports": at,
                    "ratio": at[1].throughput_rps / at[0].throughput_rps,
                })),
                "product_setup": product_setup,
                "saga": saga,
                "idle_rss_mib": rss,
            }))?
        );
        return Ok(());
    }
    let base = scenarios[0].report.clone().context("baseline ran")?;
    println!(
        "mesh bench: {} measured after {} warm-up per scenario, {} concurrent requests, {} gRPC connections, one process, one client\n",
        humantime::format_duration(args.duration),
        humantime::format_duration(args.warmup),
        args.concurrency,
        args.connections
    );
    println!(
        "{:<74} {:>10} {:>7} {:>9} {:>9} {:>9} {:>9}",
        "scenario", "req/s", "x base", "p50", "p99", "p99.9", "max"
    );
    for s in &scenarios {
        match &s.report {
            Some(r) => {
                println!(
                    "{:<74} {:>10.0} {:>7.2} {:>9} {:>9} {:>9} {:>9}",
                    s.name,
                    r.throughput_rps,
                    r.throughput_rps / base.throughput_rps,
                    us(r.latency_us.p50),
                    us(r.latency_us.p99),
                    us(r.latency_us.p999),
                    us(r.latency_us.max),
                );
                let bad: u64 = r.requests - r.ok;
                if bad > 0 {
                    println!("    {} failed: {:?}", bad, r.status);
                }
            }
            None => println!("{:<74} {}", s.name, s.not_measured.unwrap_or_default()),
        }
    }
    let find = |prefix: &str| {
        scenarios
            .iter()
            .find(|s| s.name.starts_with(prefix))
            .and_then(|s| s.report.clone())
    };
    if let (Some(rt), Some(edge)) = (find("(a')"), find("(c)")) {
        println!();
        println!(
            "runtime overhead vs bare tonic: p50 {:+} us, throughput {:.2}x",
            rt.latency_us.p50 as i64 - base.latency_us.p50 as i64,
            rt.throughput_rps / base.throughput_rps
        );
        println!(
            "edge (REST) vs direct gRPC to the same server (a'): p50 {:+} us, p99 {:+} us, throughput {:.2}x",
            edge.latency_us.p50 as i64 - rt.latency_us.p50 as i64,
            edge.latency_us.p99 as i64 - rt.latency_us.p99 as i64,
            edge.throughput_rps / rt.throughput_rps
        );
        if let Some(hop) = find("(c0)") {
            println!(
                "bare hop (c0) vs direct gRPC (a'): p50 {:+} us, throughput {:.2}x; edge (c) vs bare hop (c0): p50 {:+} us, throughput {:.2}x",
                hop.latency_us.p50 as i64 - rt.latency_us.p50 as i64,
                hop.throughput_rps / rt.throughput_rps,
                edge.latency_us.p50 as i64 - hop.latency_us.p50 as i64,
                edge.throughput_rps / hop.throughput_rps
            );
        }
    }
    if let Some(at) = &goodput {
        let [low, high] = GOODPUT_CLIENTS;
        println!(
            "(e) edge goodput (successful answers/s): {low} clients {:.0}/s ({} errors), {high} clients {:.0}/s ({} errors); {high}/{low}: {:.2}x (target >= 0.90x, 0 errors)",
            at[0].throughput_rps,
            at[0].errors,
            at[1].throughput_rps,
            at[1].errors,
            at[1].throughput_rps / at[0].throughput_rps
        );
        for (clients, r) in GOODPUT_CLIENTS.iter().zip(at) {
            if r.errors > 0 {
                println!("    {clients} clients, answers: {:?}", r.status);
            }
        }
    }
    if let Some(rss) = rss {
        println!("idle RSS of `mesh serve all` (13 targets + admin, one process): {rss:.1} MiB");
    }
    println!("(b) ran on: {product_setup}");
    match &saga {
        Some(f) => println!(
            "(d) order saga, one process on Postgres + Redis: {:.1} confirmed orders/s, PlaceOrder-to-confirmed p50 {:.1} ms, p99 {:.1} ms",
            f.confirmed_per_s, f.latency_ms_p50, f.latency_ms_p99
        ),
        None => println!(
            "(d) order saga: not measured; set MESH_BENCH_DATABASE_URL to a Postgres server (mesh bench-saga has both layouts)"
        ),
    }
    Ok(())
}

/// Starts `mesh serve all` on free ports with a scratch data folder, waits until every server
/// is ready and 3 s more, reads its resident set size, and stops it.
async fn idle_rss() -> anyhow::Result<f64> {
    let exe = std::env::current_exe()?;
    let dir = std::env::temp_dir().join(format!("mesh-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(["serve", "all", "--admin-port", "0", "--log", "warn"])
        .env("MESH_DATA_DIR", &dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    for m in crate::modules::MODULES {
        cmd.env(
            format!("{}_PORT", mesh_runtime::config::env_prefix(m.name)),
            "0",
        );
    }
    let mut child = cmd.spawn()?;
    let stdout = child.stdout.take().context("child stdout")?;
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await? {
            if line.starts_with("ready  admin") {
                return anyhow::Ok(());
            }
        }
        anyhow::bail!("`mesh serve all` exited before it was ready")
    })
    .await
    .context("`mesh serve all` not ready in 60 s")?;
    ready?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = child.id().context("child pid")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS in /proc/<pid>/status")?;
    child.kill().await.ok();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn load_drives_grpc_and_rest_through_the_bench_servers() {
        let pool = DescriptorPool::decode(mesh_contracts::FILE_DESCRIPTOR_SET).unwrap();
        let (path, input) =
            load::find_method(&pool, "product.v1.ProductService/GetProduct").unwrap();
        let runtime = runtime_server().await.unwrap();
        let edge = edge_server(runtime, EdgeConfig::default().upstream_connections)
            .await
            .unwrap();
        let spec = |target| LoadSpec {
            target,
            data: r#"{"id": "p-{{counter}}"}"#.into(),
            connections: 2,
            concurrency: 4,
            requests: Some(200),
            duration: None,
            rate: None,
            warmup: Duration::from_millis(50),
            timeout: Duration::from_secs(5),
            progress: false,
        };
        let grpc = load::run(spec(Target::Grpc {
            url: format!("http://{runtime}"),
            path: path.clone(),
            input: input.clone(),
        }))
        .await
        .unwrap();
        assert_eq!((grpc.requests, grpc.ok), (200, 200), "{grpc:?}");
        assert_eq!(grpc.status["OK"], 200);
        assert!(grpc.latency_us.p50 <= grpc.latency_us.p99);
        assert!(grpc.latency_us.p99 <= grpc.latency_us.max);

        let rest = load::run(LoadSpec {
            data: String::new(),
            ..spec(Target::Rest {
                method: http::Method::GET,
                url: format!("http://{edge}/v1/products/p-{{{{counter}}}}"),
            })
        })
        .await
        .unwrap();
        assert_eq!(rest.status["200"], 200, "{rest:?}");

        // The bare hop (c0) answers the same route, and 404 off it.
        let hop = crate::bench_hop::start(runtime, 2).await.unwrap();
        let through_hop = load::run(LoadSpec {
            data: String::new(),
            ..spec(Target::Rest {
                method: http::Method::GET,
                url: format!("http://{hop}/v1/products/p-{{{{counter}}}}"),
            })
        })
        .await
        .unwrap();
        assert_eq!(through_hop.status["200"], 200, "{through_hop:?}");
        let off_route = load::run(spec(Target::Rest {
            method: http::Method::GET,
            url: format!("http://{hop}/v2/other"),
        }))
        .await
        .unwrap();
        assert_eq!(off_route.status["404"], 200, "{off_route:?}");

        // Open model: 200 requests at 1,000/s take about 0.2 s.
        let paced = load::run(LoadSpec {
            rate: Some(1000.0),
            warmup: Duration::ZERO,
            ..spec(Target::Grpc {
                url: format!("http://{runtime}"),
                path,
                input,
            })
        })
        .await
        .unwrap();
        assert_eq!(paced.ok, 200);
        assert!(paced.seconds >= 0.19, "{}", paced.seconds);

        // An error status is counted by name.
        let missing = load::run(spec(Target::Rest {
            method: http::Method::GET,
            url: format!("http://{edge}/v1/nothing-here"),
        }))
        .await
        .unwrap();
        assert_eq!(missing.status["404"], 200);
        assert_eq!(missing.ok, 0);
    }
}
