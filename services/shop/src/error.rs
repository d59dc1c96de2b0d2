//! The shop service's errors: every failure of its RPCs is one of the runtime's common ones
//! (a bad field, an unknown store or machine, an id taken, the database), so the shop uses
//! the kit's [`ServiceError`] and its one status mapping as they are.

pub use mesh_runtime::domain::ServiceError as ShopError;
