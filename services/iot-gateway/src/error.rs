//! The gateway's errors, turned into gRPC statuses in one place.

use std::time::Duration;

use mesh_runtime::domain::ServiceError;

/// What can go wrong in a gateway RPC or device channel.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A bad field, an unknown machine, the database (the outbox): the kit's common failures.
    #[error(transparent)]
    Common(#[from] ServiceError),
    /// The device did not authenticate (bad, expired or foreign credential).
    #[error("device `{device}`: {reason}")]
    Unauthenticated {
        /// The device id of the Hello.
        device: String,
        /// Why.
        reason: String,
    },
    /// The machine has no live session.
    #[error("machine `{0}` is offline (no live gateway session)")]
    Offline(String),
    /// The machine's queue of unacknowledged commands is full.
    #[error(
        "machine `{machine}` has {pending} unacknowledged commands, the most allowed; retry later"
    )]
    QueueFull {
        /// The machine.
        machine: String,
        /// Commands waiting for an ack.
        pending: usize,
    },
    /// No ack arrived in time.
    #[error("machine `{machine}` did not acknowledge command `{command_id}` within {waited:?}")]
    AckTimeout {
        /// The machine.
        machine: String,
        /// The command.
        command_id: String,
        /// How long the call waited.
        waited: Duration,
    },
    /// The command expired (or was dropped) before the device acknowledged it.
    #[error("command `{command_id}` for machine `{machine}` expired unacknowledged")]
    Expired {
        /// The machine.
        machine: String,
        /// The command.
        command_id: String,
    },
}

impl GatewayError {
    /// A missing or malformed `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ServiceError::invalid(field, reason).into()
    }
}

mesh_runtime::from_database_errors!(GatewayError);

impl From<GatewayError> for tonic::Status {
    fn from(e: GatewayError) -> Self {
        use GatewayError as E;
        match e {
            E::Common(c) => c.into(),
            E::Unauthenticated { .. } => tonic::Status::unauthenticated(e.to_string()),
            E::Offline(_) | E::Expired { .. } => tonic::Status::unavailable(e.to_string()),
            E::QueueFull { .. } => tonic::Status::resource_exhausted(e.to_string()),
            E::AckTimeout { .. } => tonic::Status::deadline_exceeded(e.to_string()),
        }
    }
}
