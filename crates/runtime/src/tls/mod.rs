//! Mutual TLS on the mesh's gRPC ports and on the channels between services (`docs/security.md`).
//!
//! Off unless `MESH_TLS_CERT`, `MESH_TLS_KEY` and `MESH_TLS_CA` are set (all three or none):
//! then every server of the process presents the workload certificate and requires a client
//! certificate issued by the CA ([`incoming`]), and every channel to a peer presents the same
//! certificate and accepts the peer only if its certificate, issued by the CA, names the module
//! table's service: `<service>.<namespace>.svc` ([`ClientTls`], namespace `MESH_TLS_NAMESPACE`).
//! The files are read again every `MESH_TLS_RELOAD` ([`MeshTls`]); a change applies to new
//! connections, connections already open keep theirs. rustls with the *ring* provider.
//!
//! - [`settings`]: the variables, their check and [`TlsSettings`];
//! - [`material`]: the PEM files read and turned into rustls configurations;
//! - [`reload`]: [`MeshTls`], the current configurations and the task that re-reads the files;
//! - [`server`]: a listener's accepted connections after the TLS handshake;
//! - [`client`]: the connector channels use, and the handshake for callers with their own
//!   connections;
//! - [`dev_ca`]: a development CA and per-service certificates (`mesh certs`, tests).

pub mod client;
pub mod dev_ca;
pub mod material;
pub mod reload;
pub mod server;
pub mod settings;

pub use client::{ClientTls, TlsConnector};
pub use material::{Material, MaterialError};
pub use reload::MeshTls;
pub use server::{TlsConn, incoming};
pub use settings::{TlsSettings, service_identity};
