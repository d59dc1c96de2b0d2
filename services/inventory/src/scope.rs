//! Whose stock a caller may read and change (`docs/identity.md`, "Store staff"). Store staff
//! (the `staff` role, not admins) act only at their stores' locations: a store's own location
//! (location id = store id), the machines registered at it ([`crate::locations`]), and the online
//! channel's `default` location, which belongs to no store and which any staff member serves (as
//! any staff member serves online orders). Another location is `PERMISSION_DENIED` naming the
//! request's field; a listing without a location lists only the scope, filtered in SQL.
//! Admins and services act everywhere. Callers without the staff role (customers) keep reading
//! availability everywhere, as a shop front shows it; they change no stock (the policy).

use mesh_runtime::auth::{Identity, Role};
use sqlx::AnyPool;

use crate::error::InventoryError;
use crate::locations;
use crate::validate::DEFAULT_LOCATION;

/// The locations a caller may act at.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// `None`: everywhere; `Some(stores)`: the locations of these stores and `default`.
    stores: Option<Vec<String>>,
}

impl Scope {
    /// The scope of `caller` (the guard's identity of the request).
    pub fn of(caller: Option<&Identity>) -> Self {
        let stores = caller
            .filter(|i| i.has_role(Role::Staff))
            .and_then(Identity::store_scope)
            .map(<[String]>::to_vec);
        Self { stores }
    }

    /// The stores a listing is confined to (`None`: every location).
    pub fn stores(&self) -> Option<&[String]> {
        self.stores.as_deref()
    }

    /// `Ok` when `location` (the value of request field `field`) is in the scope, else
    /// `PERMISSION_DENIED` naming `field`. Looks up the location's store only for staff asking
    /// outside their stores' own locations.
    pub async fn check(
        &self,
        pool: &AnyPool,
        field: &str,
        location: &str,
    ) -> Result<(), InventoryError> {
        let Some(stores) = &self.stores else {
            return Ok(());
        };
        let mine = |store: &str| stores.iter().any(|s| s == store);
        if location == DEFAULT_LOCATION || mine(location) {
            return Ok(());
        }
        if locations::store_of(pool, location)
            .await?
            .is_some_and(|store| mine(&store))
        {
            return Ok(());
        }
        Err(InventoryError::PermissionDenied(format!(
            "{field}: location `{location}` belongs to none of the caller's stores"
        )))
    }
}
