//! The authenticated caller of an RPC and the roles of the RBAC model.

use std::fmt;

/// A coarse RBAC role, carried by name in a token's `roles` claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A shopper.
    Customer,
    /// Store staff.
    Staff,
    /// An administrator: allowed every RPC that names any role.
    Admin,
    /// A vending machine.
    Device,
    /// Another service of the mesh (client-credentials tokens).
    Service,
    /// An auditor: reads the audit trail of every aggregate, nothing else.
    Auditor,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 6] = [
        Role::Customer,
        Role::Staff,
        Role::Admin,
        Role::Device,
        Role::Service,
        Role::Auditor,
    ];

    /// The claim value, e.g. `staff`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Customer => "customer",
            Role::Staff => "staff",
            Role::Admin => "admin",
            Role::Device => "device",
            Role::Service => "service",
            Role::Auditor => "auditor",
        }
    }

    /// The role named `name` in a claim.
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// The `auth.v1.Role` value of this role.
    pub fn to_proto(self) -> mesh_contracts::auth::v1::Role {
        use mesh_contracts::auth::v1::Role as P;
        match self {
            Role::Customer => P::Customer,
            Role::Staff => P::Staff,
            Role::Admin => P::Admin,
            Role::Device => P::Device,
            Role::Service => P::Service,
            Role::Auditor => P::Auditor,
        }
    }

    /// The role of an `auth.v1.Role` value; `None` for `ROLE_UNSPECIFIED` or unknown numbers.
    pub fn from_proto(value: i32) -> Option<Role> {
        use mesh_contracts::auth::v1::Role as P;
        match P::try_from(value).ok()? {
            P::Unspecified => None,
            P::Customer => Some(Role::Customer),
            P::Staff => Some(Role::Staff),
            P::Admin => Some(Role::Admin),
            P::Device => Some(Role::Device),
            P::Service => Some(Role::Service),
            P::Auditor => Some(Role::Auditor),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is calling: put in the request extensions by [`crate::auth::Guarded`] for every RPC that
/// is not public. Handlers read it with `request.extensions().get::<Identity>()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The `sub` claim: an account id, or a service's client id.
    pub subject: String,
    /// The granted roles (unknown role names in the token are ignored).
    pub roles: Vec<Role>,
    /// The token's `jti`.
    pub token_id: String,
    /// When the token expires (Unix seconds).
    pub expires_at: i64,
    /// The `stores` claim: the stores a staff member works at.
    pub store_ids: Vec<String>,
}

impl Identity {
    /// Whether the caller holds `role`.
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Whether the caller holds any of `roles`, or is an admin.
    pub fn has_any(&self, roles: &[Role]) -> bool {
        self.has_role(Role::Admin) || roles.iter().any(|r| self.has_role(*r))
    }

    /// The stores the caller may act at: `None` for admins and services (every store), the
    /// `stores` claim for staff, no store for anyone else. Services filter listings by it (a
    /// staff member's orders or stock of their stores only) and check single rows with
    /// [`Identity::may_act_at_store`].
    pub fn store_scope(&self) -> Option<&[String]> {
        if self.has_role(Role::Admin) || self.has_role(Role::Service) {
            None
        } else if self.has_role(Role::Staff) {
            Some(&self.store_ids)
        } else {
            Some(&[])
        }
    }

    /// Whether the caller may act on store `store_id`'s machines, stock and orders: admins and
    /// services anywhere, staff only at the stores of their `stores` claim, nobody else.
    pub fn may_act_at_store(&self, store_id: &str) -> bool {
        self.store_scope()
            .is_none_or(|stores| stores.iter().any(|s| s == store_id))
    }

    /// The identity of a request, if the guard put one there.
    pub fn of<T>(request: &tonic::Request<T>) -> Option<&Identity> {
        request.extensions().get::<Identity>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(roles: &[Role], stores: &[&str]) -> Identity {
        Identity {
            subject: "s".into(),
            roles: roles.to_vec(),
            token_id: "t".into(),
            expires_at: 0,
            store_ids: stores.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn store_scope_follows_roles_and_the_stores_claim() {
        let clerk = caller(&[Role::Customer, Role::Staff], &["north"]);
        assert_eq!(clerk.store_scope(), Some(&["north".to_string()][..]));
        assert!(clerk.may_act_at_store("north"));
        assert!(!clerk.may_act_at_store("south"));
        for unbound in [caller(&[Role::Admin], &[]), caller(&[Role::Service], &[])] {
            assert_eq!(unbound.store_scope(), None);
            assert!(unbound.may_act_at_store("south"));
        }
        // A claim on a token without the staff role grants nothing.
        let customer = caller(&[Role::Customer], &["north"]);
        assert_eq!(customer.store_scope(), Some(&[][..]));
        assert!(!customer.may_act_at_store("north"));
    }
}
