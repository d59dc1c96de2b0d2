//! `mesh envoy-config`: writes the Envoy alternative to the edge (see `mesh_edge::envoy`), with
//! one cluster per module of the module table at its Kubernetes DNS name (or on loopback with
//! `--local`, next to `mesh serve all`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context as _;
use mesh_edge::envoy::{Cluster, EnvoyOptions, bootstrap_yaml, transcoded_services};
use mesh_edge::upstream::Upstreams;

use crate::modules::MODULES;

/// The flags of `mesh envoy-config`.
#[derive(Debug, clap::Args)]
pub(crate) struct EnvoyArgs {
    /// Write the YAML to this file instead of standard output.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Namespace of the services (clusters resolve `<module>.<namespace>.svc.<domain>`).
    #[arg(long, default_value = "mesh")]
    namespace: String,
    /// Cluster DNS domain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Point the clusters at 127.0.0.1 and the default ports (for `mesh serve all`).
    #[arg(long)]
    local: bool,
    /// Port of Envoy's public listener.
    #[arg(long, default_value_t = 8080)]
    listen_port: u16,
    /// Write the descriptor set to this file and reference it, instead of embedding it in the
    /// YAML (base64).
    #[arg(long, value_name = "FILE")]
    descriptor_file: Option<PathBuf>,
}

/// Writes the bootstrap.
pub(crate) fn run(args: &EnvoyArgs) -> anyhow::Result<()> {
    let pool = mesh_edge::load_pool(&[]).context("loading the embedded descriptor set")?;
    let modules: Vec<&str> = MODULES
        .iter()
        .map(|m| m.name)
        .filter(|m| *m != "edge")
        .collect();
    let transcoded = transcoded_services(&pool);
    let services: BTreeMap<String, String> = Upstreams::owned_services(&pool, &modules)
        .into_iter()
        .filter(|(service, _)| transcoded.contains(service))
        .collect();
    let clusters: Vec<Cluster> = MODULES
        .iter()
        .filter(|m| services.values().any(|owner| owner == m.name))
        .map(|m| Cluster {
            module: m.name.to_string(),
            host: if args.local {
                "127.0.0.1".into()
            } else {
                format!("{}.{}.svc.{}", m.name, args.namespace, args.cluster_domain)
            },
            port: m.default_port,
        })
        .collect();
    let options = EnvoyOptions {
        listen_port: args.listen_port,
        descriptor_path: args
            .descriptor_file
            .as_ref()
            .map(|p| p.display().to_string()),
        ..EnvoyOptions::default()
    };
    if let Some(path) = &args.descriptor_file {
        std::fs::write(path, mesh_contracts::FILE_DESCRIPTOR_SET)
            .with_context(|| format!("writing the descriptor set to {}", path.display()))?;
    }
    let yaml = bootstrap_yaml(
        &services,
        &clusters,
        mesh_contracts::FILE_DESCRIPTOR_SET,
        &options,
    );
    match &args.out {
        Some(path) => std::fs::write(path, yaml)
            .with_context(|| format!("writing the Envoy config to {}", path.display())),
        None => {
            print!("{yaml}");
            Ok(())
        }
    }
}
