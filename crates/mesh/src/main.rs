//! `mesh`: one binary, many targets. `mesh serve all` runs every service of the mesh in one
//! process (each on its own gRPC port, calling each other over real gRPC on loopback);
//! `mesh serve order` runs one, as each Kubernetes Deployment does.

mod admin_client;
mod bench;
mod bench_hop;
mod bench_product;
mod bench_saga;
mod bench_saga_pg;
mod certs;
mod edge_flags;
mod envoy_config;
mod events_cli;
mod events_timeline;
mod load;
mod migrate;
mod modules;
mod proc_cpu;
mod serve;
mod settings_doc;
mod sim;
mod targets;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mesh_runtime::RuntimeArgs;

const ENV_HELP: &str = "\
Per-service settings (environment only; SERVICE is the target in upper snake case, e.g. IOT_GATEWAY):
  MESH_<SERVICE>_PORT   gRPC port the service listens on (default: the module table's port; 0 = any)
  MESH_<SERVICE>_ADDR   how other services reach it: host:port or a URL such as
                        http://inventory.mesh.svc.cluster.local:50054 (default: this host and its port)
  MESH_<SERVICE>_DATABASE_URL  Postgres URL of that service's own database (overrides --database-url)
Each service's own settings (MESH_PAYMENT_*, MESH_EDGE_*, ...): `mesh modules --settings`.
--check-config checks every setting the targets would read and exits (0: valid, 1: every problem
named), without binding a port or opening a database.

One service per process on one host (each admin port follows its service: gRPC port + 1000; a
process calls the services it does not serve at their default ports on this host, or at
MESH_<SERVICE>_ADDR; the services share Postgres and Redis, since the in-process defaults only
connect services of one process):
  export MESH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres MESH_REDIS_URL=redis://127.0.0.1:6379
  mesh serve auth &        # gRPC 50051, admin 51051
  mesh serve product &     # gRPC 50053, admin 51053
  mesh serve inventory &   # gRPC 50054, admin 51054";

/// The Retail ERP service mesh: every service of the mesh in one binary.
#[derive(Debug, Parser)]
#[command(name = "mesh", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve one or more services: `all`, one target, or a comma-separated list.
    #[command(after_help = ENV_HELP)]
    Serve {
        /// `all`, or targets separated by commas.
        #[arg(value_name = "TARGETS", long_help = format!("`all`, or targets separated by commas, from: {}", serve::target_names()))]
        targets: String,
        #[command(flatten)]
        runtime: RuntimeArgs,
        #[command(flatten)]
        edge: edge_flags::EdgeArgs,
        /// Check every setting the targets would read (flags, MESH_* variables, each service's
        /// own) and exit: 0 when valid, 1 naming every problem. Binds nothing, opens no database.
        #[arg(long)]
        check_config: bool,
    },
    /// Apply the database migrations of `all` or the listed targets, then exit (the Helm chart's
    /// migration Job). `mesh serve` applies them at start too.
    #[command(after_help = ENV_HELP)]
    Migrate {
        /// `all`, or targets separated by commas.
        #[arg(value_name = "TARGETS")]
        targets: String,
        #[command(flatten)]
        runtime: RuntimeArgs,
        /// Check the settings as `mesh serve --check-config` does, and exit.
        #[arg(long)]
        check_config: bool,
    },
    /// Write the OpenAPI 3 document of the edge's REST routes (from the embedded contracts).
    Openapi {
        /// Write to this file instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<std::path::PathBuf>,
    },
    /// Write an Envoy bootstrap equivalent to the edge's REST transcoding (grpc_json_transcoder
    /// with the same descriptor set, one cluster per service), for teams that run Envoy.
    EnvoyConfig(envoy_config::EnvoyArgs),
    /// Generate gRPC or REST load against a server and report throughput, latency percentiles
    /// (HDR histogram) and status counts.
    Load(load::LoadArgs),
    /// Run the benchmark suite in this process (bare tonic baseline, runtime server, the edge over
    /// REST) and print every figure with its ratio to the baseline (docs/BENCHMARKS.md).
    Bench(bench::BenchArgs),
    /// Simulators: `mesh sim devices --count N` connects N simulated vending machines to the
    /// IoT gateway, answers commands, injects faults and measures command round trips.
    Sim(sim::SimArgs),
    /// Benchmark the order saga on Postgres + Redis: confirmed orders/s and PlaceOrder-to-confirmed
    /// latency, all services in one process and each in its own (docs/BENCHMARKS.md).
    BenchSaga(bench_saga::BenchSagaArgs),
    /// Operate the Redis bus: list streams and consumer groups with their lag, show a group's
    /// dead letters, replay them, tail a stream (docs/events.md).
    Events(events_cli::EventsArgs),
    /// Write a development CA and a certificate per service (and one naming every service, for
    /// `mesh serve all`) for mTLS on one machine; reuses the CA already in the folder
    /// (docs/security.md).
    Certs(certs::CertsArgs),
    /// Print the module table: each target, its default gRPC port and the services it calls.
    Modules {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Print every setting instead, by the process that needs it (each service's own, and
        /// those every service reads).
        #[arg(long)]
        settings: bool,
        /// With --settings: Markdown (docs/settings.md).
        #[arg(long, requires = "settings")]
        markdown: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            targets,
            runtime,
            edge,
            check_config,
        } => edge.install(&targets).and_then(|()| {
            if check_config {
                return check_only(&targets, &runtime);
            }
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(serve::run(&targets, &runtime)))
        }),
        Command::Migrate {
            targets,
            runtime,
            check_config: true,
        } => check_only(&targets, &runtime),
        Command::Migrate {
            targets,
            runtime,
            check_config: false,
        } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(migrate::run(&targets, &runtime))),
        Command::Openapi { out } => mesh_edge::openapi::contracts_document()
            .map_err(anyhow::Error::from)
            .and_then(|doc| match out {
                Some(path) => std::fs::write(&path, doc)
                    .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display())),
                None => {
                    println!("{doc}");
                    Ok(())
                }
            }),
        Command::EnvoyConfig(args) => envoy_config::run(&args),
        Command::Certs(args) => certs::run(&args),
        Command::Load(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(load::cli(args))),
        Command::Bench(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(bench::run(&args))),
        Command::Sim(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(sim::run(args))),
        Command::BenchSaga(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(bench_saga::run(&args))),
        Command::Events(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(events_cli::run(args))),
        Command::Modules {
            settings: true,
            markdown,
            ..
        } => {
            if markdown {
                print!("{}", settings_doc::markdown());
            } else {
                print!("{}", settings_doc::text());
            }
            Ok(())
        }
        Command::Modules { json, .. } => {
            print_modules(json);
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--check-config`: validates as `serve`/`migrate` would before binding and says so; the error
/// names every problem.
fn check_only(targets_spec: &str, runtime: &RuntimeArgs) -> anyhow::Result<()> {
    let (config, targets) = targets::validate(targets_spec, runtime)?;
    let names: Vec<&str> = targets.iter().map(|m| m.name).collect();
    println!(
        "configuration is valid for {} (admin port {})",
        names.join(", "),
        config.admin_port
    );
    Ok(())
}

fn print_modules(json: bool) {
    if json {
        let rows: Vec<_> = modules::MODULES
            .iter()
            .map(|m| {
                serde_json::json!({
                    "name": m.name,
                    "port": m.default_port,
                    "dependencies": m.dependencies,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
    } else {
        println!("{:<13} {:>5}  calls", "target", "port");
        for m in modules::MODULES {
            println!(
                "{:<13} {:>5}  {}",
                m.name,
                m.default_port,
                m.dependencies.join(", ")
            );
        }
    }
}
