//! The notification service's errors: every failure of its RPCs is one of the runtime's common
//! ones (a bad field, a caller acting for another user, a missing address, the database), so
//! the service uses the kit's [`ServiceError`] and its one status mapping as they are.

pub use mesh_runtime::domain::ServiceError as NotificationError;
