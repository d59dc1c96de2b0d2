//! The inventory service's errors: every failure of its RPCs is one of the runtime's common
//! ones (a bad field, not enough stock or a reservation in the wrong state, an unknown
//! reservation, the database), so the service uses the kit's [`ServiceError`] and its one
//! status mapping as they are.

pub use mesh_runtime::domain::ServiceError as InventoryError;
