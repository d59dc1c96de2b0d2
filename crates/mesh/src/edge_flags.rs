//! The edge's flags of `mesh serve`: extra descriptor sets and their upstreams, so the edge can
//! front any gRPC service (`mesh serve edge --descriptor-set api.binpb --upstream
//! shop.v1.Legacy=legacy:9000`). They add to `MESH_EDGE_DESCRIPTOR_SETS` / `MESH_EDGE_UPSTREAMS`.

use std::path::PathBuf;

use anyhow::bail;
use http::Uri;

/// Flags for the `edge` target.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct EdgeArgs {
    /// (edge) An extra encoded descriptor set (`buf build -o FILE`, or `protoc
    /// --include_imports --descriptor_set_out`) whose services the edge fronts. Repeatable.
    #[arg(long = "descriptor-set", value_name = "FILE")]
    descriptor_sets: Vec<PathBuf>,
    /// (edge) The upstream of a service of an extra set, `pkg.Service=host:port` (or
    /// `=http://host:port`). Repeatable.
    #[arg(long = "upstream", value_name = "pkg.Service=host:port", value_parser = parse_upstream)]
    upstreams: Vec<(String, Uri)>,
}

fn parse_upstream(raw: &str) -> Result<(String, Uri), String> {
    mesh_edge::config::parse_upstream(raw)
}

impl EdgeArgs {
    /// Hands the flags to the edge target; an error when they are given without it, or name a
    /// file that cannot be read.
    pub(crate) fn install(self, targets_spec: &str) -> anyhow::Result<()> {
        if self.descriptor_sets.is_empty() && self.upstreams.is_empty() {
            return Ok(());
        }
        let with_edge = targets_spec
            .split(',')
            .any(|t| matches!(t.trim(), "edge" | "all"));
        if !with_edge {
            bail!(
                "--descriptor-set and --upstream are settings of the edge target, which {targets_spec:?} does not run"
            );
        }
        for file in &self.descriptor_sets {
            if !file.is_file() {
                bail!("--descriptor-set {}: not a readable file", file.display());
            }
        }
        mesh_edge::config::set_flags(mesh_edge::config::EdgeFlags {
            descriptor_sets: self.descriptor_sets,
            upstreams: self.upstreams,
        });
        Ok(())
    }
}
