//! A service's declarative access table: for each RPC of its gRPC service, who may call it.
//!
//! ```ignore
//! Policy::new("product.v1.ProductService")
//!     .public(&["GetProduct", "ListProducts"])
//!     .roles(&["CreateProduct", "UpdateProduct"], &[Role::Staff])
//! ```
//!
//! Admins pass every role check. A method the table does not name is denied
//! (`PERMISSION_DENIED`), and [`Policy::check_complete`] (run by [`crate::auth::guard`] at build
//! time) refuses a table that leaves a method of the service out or names one it does not have,
//! so the table cannot drift from the proto.

use std::collections::BTreeMap;

use crate::auth::identity::Role;

/// Who may call one RPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without a token.
    Public,
    /// Any caller with a valid token.
    Authenticated,
    /// A caller holding one of these roles (or admin).
    Roles(Vec<Role>),
}

/// The access table of one gRPC service.
#[derive(Debug, Clone)]
pub struct Policy {
    service: &'static str,
    rules: BTreeMap<String, Access>,
}

impl Policy {
    /// An empty table for `service`, its fully qualified name (e.g. `product.v1.ProductService`).
    pub fn new(service: &'static str) -> Self {
        Self {
            service,
            rules: BTreeMap::new(),
        }
    }

    /// Sets `access` for each method in `methods` (names, e.g. `GetProduct`).
    pub fn rule(mut self, methods: &[&str], access: Access) -> Self {
        for m in methods {
            self.rules.insert((*m).to_string(), access.clone());
        }
        self
    }

    /// `methods` need no token.
    pub fn public(self, methods: &[&str]) -> Self {
        self.rule(methods, Access::Public)
    }

    /// `methods` need any valid token.
    pub fn authenticated(self, methods: &[&str]) -> Self {
        self.rule(methods, Access::Authenticated)
    }

    /// `methods` need one of `roles` (or admin).
    pub fn roles(self, methods: &[&str], roles: &[Role]) -> Self {
        self.rule(methods, Access::Roles(roles.to_vec()))
    }

    /// The service this table is for.
    pub fn service(&self) -> &'static str {
        self.service
    }

    /// The access of the RPC at `path` (`/pkg.Service/Method`); `None` when the table does not
    /// name it (denied).
    pub fn access(&self, path: &str) -> Option<&Access> {
        let (service, method) = path.trim_start_matches('/').split_once('/')?;
        if service != self.service {
            return None;
        }
        self.rules.get(method)
    }

    /// Checks the table names exactly the methods of its service in the embedded descriptors.
    pub fn check_complete(&self) -> Result<(), String> {
        let prefix = format!("/{}/", self.service);
        let methods: Vec<String> = crate::descriptors::method_paths(self.service)
            .into_iter()
            .filter_map(|p| p.strip_prefix(&prefix).map(String::from))
            .collect();
        if methods.is_empty() {
            return Err(format!(
                "access policy for unknown service `{}`",
                self.service
            ));
        }
        let missing: Vec<&String> = methods
            .iter()
            .filter(|m| !self.rules.contains_key(*m))
            .collect();
        let unknown: Vec<&String> = self.rules.keys().filter(|m| !methods.contains(m)).collect();
        if missing.is_empty() && unknown.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "access policy of {} is out of date: methods without a rule {missing:?}, rules for unknown methods {unknown:?}",
                self.service
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product() -> Policy {
        Policy::new("product.v1.ProductService")
            .public(&[
                "GetProduct",
                "BatchGetProducts",
                "ListProducts",
                "ListCategories",
            ])
            .roles(
                &["CreateProduct", "UpdateProduct", "DeleteProduct"],
                &[Role::Staff],
            )
    }

    #[test]
    fn a_table_must_cover_exactly_the_service_methods() {
        let err = product()
            .check_complete()
            .expect_err("CreateCategory is missing");
        assert!(err.contains("CreateCategory"), "{err}");
        let complete = product().roles(&["CreateCategory"], &[Role::Staff]);
        complete.check_complete().expect("complete");
        let err = complete
            .authenticated(&["NoSuchMethod"])
            .check_complete()
            .expect_err("unknown");
        assert!(err.contains("NoSuchMethod"), "{err}");
        assert!(Policy::new("nope.v1.Nope").check_complete().is_err());
    }

    #[test]
    fn access_is_looked_up_by_path_and_unknown_paths_are_denied() {
        let p = product();
        assert_eq!(
            p.access("/product.v1.ProductService/GetProduct"),
            Some(&Access::Public)
        );
        assert_eq!(
            p.access("/product.v1.ProductService/CreateProduct"),
            Some(&Access::Roles(vec![Role::Staff]))
        );
        assert_eq!(p.access("/product.v1.ProductService/CreateCategory"), None);
        assert_eq!(p.access("/order.v1.OrderService/GetProduct"), None);
        assert_eq!(p.access("garbage"), None);
    }
}
