//! The descriptor pool the edge serves (the embedded contracts plus any extra encoded sets), and
//! why setting the edge up can fail ([`SetupError`]).

use prost_reflect::DescriptorPool;

use crate::routes;

/// Why the edge cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A descriptor set does not decode or clashes with the contracts.
    #[error("descriptor set {source_name}: {reason}")]
    DescriptorSet {
        /// Which set (`embedded` or a path).
        source_name: String,
        /// What is wrong.
        reason: String,
    },
    /// The edge settings are invalid.
    #[error(transparent)]
    Config(#[from] mesh_runtime::settings::SettingErrors),
    /// The `google.api.http` rules are invalid.
    #[error(transparent)]
    Routes(#[from] routes::RoutesError),
    /// A service with REST rules has no upstream.
    #[error(
        "service {0} has google.api.http rules but no upstream; add `{0}=http://host:port` to MESH_EDGE_UPSTREAMS or `--upstream {0}=host:port`"
    )]
    NoUpstream(String),
}

/// Loads the embedded contracts plus the encoded descriptor sets in `extra`; files already
/// loaded (e.g. `google/api/http.proto` in a `buf build` image) are skipped.
pub fn load_pool(extra: &[(String, Vec<u8>)]) -> Result<DescriptorPool, SetupError> {
    let mut pool = DescriptorPool::decode(mesh_contracts::FILE_DESCRIPTOR_SET).map_err(|e| {
        SetupError::DescriptorSet {
            source_name: "embedded".into(),
            reason: e.to_string(),
        }
    })?;
    for (name, bytes) in extra {
        let err = |reason: String| SetupError::DescriptorSet {
            source_name: name.clone(),
            reason,
        };
        let set = DescriptorPool::decode(bytes.as_slice()).map_err(|e| err(e.to_string()))?;
        for file in set.files() {
            if pool.get_file_by_name(file.name()).is_some() {
                continue;
            }
            pool.decode_file_descriptor_proto(file.encode_to_vec().as_slice())
                .map_err(|e| err(format!("{}: {e}", file.name())))?;
        }
    }
    Ok(pool)
}
