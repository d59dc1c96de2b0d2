//! The vm service's errors, turned into gRPC statuses in one place.

use mesh_runtime::DatabaseError;

/// What can go wrong in a vm RPC.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A request field is missing or malformed; the message names it.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No such machine, slot or vend; the message names it.
    #[error("{0} not found")]
    NotFound(String),
    /// The request does not fit the current state (e.g. more units than capacity).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A peer service failed.
    #[error("{service}: {status}")]
    Peer {
        /// The peer.
        service: &'static str,
        /// Its answer.
        status: tonic::Status,
    },
    /// The database failed.
    #[error(transparent)]
    Database(#[from] DatabaseError),
}

impl VmError {
    /// A missing or malformed `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// A failed call to `service`.
    pub fn peer(service: &'static str) -> impl FnOnce(tonic::Status) -> Self {
        move |status| Self::Peer { service, status }
    }
}

impl From<sqlx::Error> for VmError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(DatabaseError::from(e))
    }
}

impl From<VmError> for tonic::Status {
    fn from(e: VmError) -> Self {
        match e {
            VmError::InvalidArgument { .. } => tonic::Status::invalid_argument(e.to_string()),
            VmError::NotFound(_) => tonic::Status::not_found(e.to_string()),
            VmError::FailedPrecondition(_) => tonic::Status::failed_precondition(e.to_string()),
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
            VmError::Database(d) => d.into(),
        }
    }
}
