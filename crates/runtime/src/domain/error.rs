//! The error shape every service shares: the failures most RPCs can have (a bad field, an
//! unknown id, a state that forbids the call, a duplicate, a peer or the database down), each
//! mapped to its gRPC status once, here. A service's own `thiserror` enum wraps it
//! (`#[error(transparent)] Common(#[from] ServiceError)`) and adds only what is its own.

use crate::DatabaseError;

/// sqlx's error, for [`from_database_errors!`](crate::from_database_errors) in crates that do
/// not depend on sqlx themselves.
#[doc(hidden)]
pub use sqlx::Error as SqlxError;

/// A failure of an RPC that every service can have; [`tonic::Status`] from it in one place.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A request field is missing or malformed: `INVALID_ARGUMENT`, "`field`: `reason`".
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The field's path, e.g. `lines[2].quantity` or `page_token`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Something the request names does not exist (or is not the caller's to see, so ids do
    /// not leak): `NOT_FOUND`, "`what` `id` not found".
    #[error("{what} `{id}` not found")]
    NotFound {
        /// What kind of thing, e.g. `product`.
        what: String,
        /// The id asked for.
        id: String,
    },
    /// The request is valid but the current state forbids it: `FAILED_PRECONDITION`.
    #[error("{0}")]
    FailedPrecondition(String),
    /// What the request creates exists already: `ALREADY_EXISTS`.
    #[error("{0}")]
    AlreadyExists(String),
    /// The caller may not do this: `PERMISSION_DENIED`.
    #[error("{0}")]
    PermissionDenied(String),
    /// A peer or dependency cannot answer now; retrying later may work: `UNAVAILABLE`.
    #[error("{0}")]
    Unavailable(String),
    /// Refused for load: more is asked than the service can take now (a saga too far behind),
    /// so the caller should come back later: `RESOURCE_EXHAUSTED` with `retry-after: 1`, as the
    /// runtime's load shedder ([`crate::shed`]) refuses; 429 with `Retry-After` through the edge.
    #[error("{0}")]
    Overloaded(String),
    /// The database failed (`UNAVAILABLE`, `ABORTED` or `INTERNAL`, see [`DatabaseError`]).
    #[error(transparent)]
    Database(#[from] DatabaseError),
}

impl ServiceError {
    /// A missing or malformed `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// No `what` with this `id` (or not one the caller may see).
    pub fn not_found(what: impl Into<String>, id: impl Into<String>) -> Self {
        Self::NotFound {
            what: what.into(),
            id: id.into(),
        }
    }

    /// The state forbids the call; `message` says why (and names the field when there is one).
    pub fn precondition(message: impl Into<String>) -> Self {
        Self::FailedPrecondition(message.into())
    }

    /// The gRPC code this error answers with.
    pub fn code(&self) -> tonic::Code {
        match self {
            Self::InvalidArgument { .. } => tonic::Code::InvalidArgument,
            Self::NotFound { .. } => tonic::Code::NotFound,
            Self::FailedPrecondition(_) => tonic::Code::FailedPrecondition,
            Self::AlreadyExists(_) => tonic::Code::AlreadyExists,
            Self::PermissionDenied(_) => tonic::Code::PermissionDenied,
            Self::Unavailable(_) => tonic::Code::Unavailable,
            Self::Overloaded(_) => tonic::Code::ResourceExhausted,
            Self::Database(DatabaseError::Unavailable(_)) => tonic::Code::Unavailable,
            Self::Database(DatabaseError::Conflict(_)) => tonic::Code::Aborted,
            Self::Database(_) => tonic::Code::Internal,
        }
    }
}

/// The common constructors of [`ServiceError`] on a service's own error enum (any type that is
/// `From<ServiceError>`), so that `PaymentError::invalid("amount", "must be positive")` reads as
/// the service's error without each service writing the same three delegating functions. A
/// service whose constructors take other arguments (an order's `not_found` names the field)
/// writes its own inherent ones, which take precedence.
pub trait CommonErrors: From<ServiceError> {
    /// A missing or malformed `field`: see [`ServiceError::invalid`].
    fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ServiceError::invalid(field, reason).into()
    }

    /// No `what` with this `id`: see [`ServiceError::not_found`].
    fn not_found(what: impl Into<String>, id: impl Into<String>) -> Self {
        ServiceError::not_found(what, id).into()
    }

    /// The state forbids the call; `message` says why: see [`ServiceError::precondition`].
    fn precondition(message: impl Into<String>) -> Self {
        ServiceError::precondition(message).into()
    }
}

impl<E: From<ServiceError>> CommonErrors for E {}

impl From<sqlx::Error> for ServiceError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(DatabaseError::from(e))
    }
}

/// Makes a service's error enum, one that wraps [`ServiceError`] (`Common(#[from]
/// ServiceError)`), convertible from the database's errors through [`ServiceError`]: `?` on a
/// sqlx call (`sqlx::Error`) or a storage call ([`DatabaseError`]) then gives the service's
/// error, mapped to its status as [`ServiceError::Database`] is.
///
/// ```ignore
/// mesh_runtime::from_database_errors!(PaymentError);
/// ```
#[macro_export]
macro_rules! from_database_errors {
    ($error:ty) => {
        impl ::core::convert::From<$crate::domain::error::SqlxError> for $error {
            fn from(e: $crate::domain::error::SqlxError) -> Self {
                $crate::domain::ServiceError::from(e).into()
            }
        }

        impl ::core::convert::From<$crate::storage::DatabaseError> for $error {
            fn from(e: $crate::storage::DatabaseError) -> Self {
                $crate::domain::ServiceError::from(e).into()
            }
        }
    };
}

impl From<ServiceError> for tonic::Status {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Database(d) => d.into(),
            ServiceError::Overloaded(message) => {
                let mut status = tonic::Status::resource_exhausted(message);
                status.metadata_mut().insert(
                    "retry-after",
                    tonic::metadata::MetadataValue::from_static("1"),
                );
                status
            }
            other => tonic::Status::new(other.code(), other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_variant_answers_with_its_code_and_message() {
        let cases = [
            (
                ServiceError::invalid("lines[1].quantity", "must be positive"),
                tonic::Code::InvalidArgument,
                "lines[1].quantity: must be positive",
            ),
            (
                ServiceError::not_found("product", "p-1"),
                tonic::Code::NotFound,
                "product `p-1` not found",
            ),
            (
                ServiceError::precondition("order `o` is CONFIRMED"),
                tonic::Code::FailedPrecondition,
                "order `o` is CONFIRMED",
            ),
            (
                ServiceError::AlreadyExists("store `s` already exists".into()),
                tonic::Code::AlreadyExists,
                "store `s` already exists",
            ),
            (
                ServiceError::PermissionDenied("customer_id: not yours".into()),
                tonic::Code::PermissionDenied,
                "customer_id: not yours",
            ),
            (
                ServiceError::Unavailable("product: unreachable".into()),
                tonic::Code::Unavailable,
                "product: unreachable",
            ),
            (
                ServiceError::Overloaded("the saga is behind".into()),
                tonic::Code::ResourceExhausted,
                "the saga is behind",
            ),
        ];
        for (error, code, message) in cases {
            assert_eq!(error.code(), code);
            let status = tonic::Status::from(error);
            assert_eq!(status.code(), code);
            assert_eq!(status.message(), message);
            // Only a refusal for load tells the caller when to come back.
            let retry_after = status
                .metadata()
                .get("retry-after")
                .map(|v| v.to_str().unwrap());
            assert_eq!(
                retry_after,
                (code == tonic::Code::ResourceExhausted).then_some("1")
            );
        }
    }

    /// A service's error the way every service writes one.
    #[derive(Debug, thiserror::Error)]
    enum Wrapping {
        #[error(transparent)]
        Common(#[from] ServiceError),
    }

    crate::from_database_errors!(Wrapping);

    #[test]
    fn a_wrapping_error_takes_database_errors_through_the_common_shape() {
        let from_sqlx = Wrapping::from(sqlx::Error::PoolTimedOut);
        assert!(matches!(
            from_sqlx,
            Wrapping::Common(ServiceError::Database(DatabaseError::Unavailable(_)))
        ));
        let from_storage = Wrapping::from(DatabaseError::from(sqlx::Error::RowNotFound));
        let Wrapping::Common(common) = from_storage;
        assert_eq!(common.code(), tonic::Code::Internal);
    }

    #[test]
    fn database_errors_keep_the_storage_mapping() {
        let e = ServiceError::from(sqlx::Error::PoolTimedOut);
        assert_eq!(e.code(), tonic::Code::Unavailable);
        assert_eq!(tonic::Status::from(e).code(), tonic::Code::Unavailable);
        let e = ServiceError::from(sqlx::Error::RowNotFound);
        assert_eq!(tonic::Status::from(e).code(), tonic::Code::Internal);
    }
}
