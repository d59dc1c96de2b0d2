//! Who is calling, and what they may see: customers act on their own profile only (another
//! profile is `NOT_FOUND`, so ids do not leak); staff, admins and services act on any.

use mesh_runtime::auth::{Identity, Role};

use mesh_runtime::domain::ServiceError;

/// The caller of an RPC as the user service tells them apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A customer (or any caller without a staff, admin or service role): their own profile only.
    Customer(String),
    /// Staff, admins and other services: any profile.
    Staff {
        /// The caller's id (the actor of changes).
        id: String,
        /// Admins may also change store assignments.
        admin: bool,
    },
}

impl Caller {
    /// The caller of a request the guard let through.
    pub fn of<T>(request: &tonic::Request<T>) -> Self {
        match Identity::of(request) {
            Some(i) if i.has_any(&[Role::Staff, Role::Service]) => Caller::Staff {
                id: i.subject.clone(),
                admin: i.has_role(Role::Admin),
            },
            Some(i) => Caller::Customer(i.subject.clone()),
            None => Caller::Customer(String::new()),
        }
    }

    /// The caller's id.
    pub fn id(&self) -> &str {
        match self {
            Caller::Customer(id) | Caller::Staff { id, .. } => id,
        }
    }

    /// Whether the caller may act on admins-only fields.
    pub fn is_admin(&self) -> bool {
        matches!(self, Caller::Staff { admin: true, .. })
    }

    /// `Ok` when the caller may see profile `id`; `NOT_FOUND` otherwise.
    pub fn may_see(&self, id: &str) -> Result<(), ServiceError> {
        match self {
            Caller::Customer(me) if me != id => Err(ServiceError::not_found("user", id)),
            _ => Ok(()),
        }
    }
}
