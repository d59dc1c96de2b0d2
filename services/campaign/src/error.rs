//! The campaign service's errors, turned into gRPC statuses in one place.

use mesh_runtime::DatabaseError;

/// What can go wrong in a campaign RPC.
#[derive(Debug, thiserror::Error)]
pub enum CampaignError {
    /// A request field is missing or malformed; the message names it (e.g.
    /// `campaign.rules[0].percent_off.basis_points`).
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The caller may not do this (a customer asking for another customer, or to reserve).
    #[error("{field}: {reason}")]
    PermissionDenied {
        /// The field.
        field: String,
        /// Why.
        reason: String,
    },
    /// No such campaign.
    #[error("id: campaign `{0}` not found")]
    NotFound(String),
    /// Stored data does not decode (a bug, never the caller's fault).
    #[error("internal: {0}")]
    Corrupt(String),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] DatabaseError),
}

impl CampaignError {
    /// A missing or malformed `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// `field` is not the caller's to set.
    pub fn denied(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::PermissionDenied {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<sqlx::Error> for CampaignError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(DatabaseError::from(e))
    }
}

impl From<CampaignError> for tonic::Status {
    fn from(e: CampaignError) -> Self {
        match e {
            CampaignError::InvalidArgument { .. } => tonic::Status::invalid_argument(e.to_string()),
            CampaignError::PermissionDenied { .. } => {
                tonic::Status::permission_denied(e.to_string())
            }
            CampaignError::NotFound(_) => tonic::Status::not_found(e.to_string()),
            CampaignError::Corrupt(_) => tonic::Status::internal(e.to_string()),
            CampaignError::Database(d) => d.into(),
        }
    }
}
