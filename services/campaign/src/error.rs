//! The campaign service's errors: the runtime's shared [`ServiceError`] (bad fields, unknown
//! ids, the database) plus what is campaign's own, turned into gRPC statuses in one place.

use mesh_runtime::domain::ServiceError;

/// What can go wrong in a campaign RPC.
#[derive(Debug, thiserror::Error)]
pub enum CampaignError {
    /// A failure every service can have (`INVALID_ARGUMENT` naming the field, `NOT_FOUND`,
    /// `PERMISSION_DENIED`, the database).
    #[error(transparent)]
    Common(#[from] ServiceError),
    /// Stored data does not decode (a bug, never the caller's fault).
    #[error("internal: {0}")]
    Corrupt(String),
}

impl CampaignError {
    /// A missing or malformed `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ServiceError::invalid(field, reason).into()
    }

    /// `field` is not the caller's to set.
    pub fn denied(field: impl std::fmt::Display, reason: impl std::fmt::Display) -> Self {
        ServiceError::PermissionDenied(format!("{field}: {reason}")).into()
    }

    /// No campaign `id` (the message names the `id` field).
    pub fn not_found(id: impl Into<String>) -> Self {
        ServiceError::not_found("id: campaign", id).into()
    }
}

mesh_runtime::from_database_errors!(CampaignError);

impl From<CampaignError> for tonic::Status {
    fn from(e: CampaignError) -> Self {
        match e {
            CampaignError::Common(c) => c.into(),
            CampaignError::Corrupt(_) => tonic::Status::internal(e.to_string()),
        }
    }
}
