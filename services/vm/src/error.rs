//! The vm service's errors, turned into gRPC statuses in one place: the kit's common failures
//! ([`ServiceError`]) and the vm's own, a failed call to a peer.

/// The common constructors (`invalid`, `not_found`, `precondition`) on this error.
pub use mesh_runtime::domain::CommonErrors;
use mesh_runtime::domain::ServiceError;

/// What can go wrong in a vm RPC.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A bad field, an unknown machine, slot or vend, a state that forbids it, the database.
    #[error(transparent)]
    Common(#[from] ServiceError),
    /// A peer service failed.
    #[error("{service}: {status}")]
    Peer {
        /// The peer.
        service: &'static str,
        /// Its answer.
        status: tonic::Status,
    },
}

impl VmError {
    /// A failed call to `service`.
    pub fn peer(service: &'static str) -> impl FnOnce(tonic::Status) -> Self {
        move |status| Self::Peer { service, status }
    }
}

mesh_runtime::from_database_errors!(VmError);

impl From<VmError> for tonic::Status {
    fn from(e: VmError) -> Self {
        match e {
            VmError::Common(c) => c.into(),
            VmError::Peer { service, status } => match status.code() {
                tonic::Code::InvalidArgument
                | tonic::Code::NotFound
                | tonic::Code::FailedPrecondition
                | tonic::Code::PermissionDenied
                | tonic::Code::Unauthenticated => {
                    tonic::Status::new(status.code(), format!("{service}: {}", status.message()))
                }
                _ => tonic::Status::unavailable(format!("{service}: {}", status.message())),
            },
        }
    }
}
