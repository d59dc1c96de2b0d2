//! The notification service's errors: every failure of its RPCs is one of the runtime's common
//! ones (a bad field, a caller acting for another user, a missing address, the database), so
//! the service uses the kit's [`ServiceError`] and its one status mapping as they are. A send's
//! failure is a [`SendError`]: permanent (never retried) or transient (retried with backoff).

pub use mesh_runtime::domain::ServiceError as NotificationError;

/// Why one send of a delivery failed, and whether trying again can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SendError {
    /// `true`: the same send would fail again (a 5xx SMTP reply, a bad address, a webhook
    /// scheme that is not allowed), so the delivery fails at once; `false`: retried.
    pub permanent: bool,
    /// What happened, recorded as the delivery's error.
    pub message: String,
}

impl SendError {
    /// A failure that no retry can fix.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            permanent: true,
            message: message.into(),
        }
    }

    /// A failure worth retrying (a refused or dropped connection, a timeout, a 4xx reply).
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            permanent: false,
            message: message.into(),
        }
    }
}
