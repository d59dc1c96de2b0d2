//! Who may read the audit trail, shared by `audit.v1.AuditService/ListEvents` (every port) and
//! report's aggregate timeline.
//!
//! - `admin`, `auditor` and `service` callers read every aggregate's events;
//! - a `customer` reads an aggregate only when it is theirs: its subject is their own account
//!   id, or one of its events carries a top-level `customer_id` field (order, payment and vend
//!   payloads do) equal to their account id. Anything else, including an aggregate that does not
//!   exist, is the same `PERMISSION_DENIED`, so a refusal tells nothing about other customers;
//! - every other caller (staff, devices) is refused; a call without a token never gets here (the
//!   guard answers `UNAUTHENTICATED`), and without an identity the answer is the same.
//!
//! An aggregate whose payloads were redacted by an erasure no longer names its customer, so it is
//! no longer shown to them.

use mesh_contracts::events::v1::Envelope;
use prost_reflect::{DynamicMessage, Value};
use tonic::Status;

use crate::auth::{Identity, Role};

/// What a caller may read of the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditScope {
    /// Every aggregate (admins, auditors, services).
    Everything,
    /// Only aggregates of the customer with this account id.
    OwnAggregates {
        /// The customer's account id (the token's `sub`).
        customer_id: String,
    },
}

impl AuditScope {
    /// The scope of `identity`: refused without one (`UNAUTHENTICATED`) or when it holds none
    /// of the roles that read the trail (`PERMISSION_DENIED`).
    pub fn of(identity: Option<&Identity>) -> Result<Self, Status> {
        let Some(identity) = identity else {
            return Err(Status::unauthenticated(
                "the audit trail needs an access token (authorization: Bearer <jwt>)",
            ));
        };
        if identity.has_any(&[Role::Auditor, Role::Service]) {
            return Ok(AuditScope::Everything);
        }
        if identity.has_role(Role::Customer) {
            return Ok(AuditScope::OwnAggregates {
                customer_id: identity.subject.clone(),
            });
        }
        Err(Status::permission_denied(
            "the audit trail is for the auditor, admin and service roles; customers see their own aggregates",
        ))
    }

    /// Checks the caller may read the aggregate `subject` whose events (all of them, or enough
    /// to include the one naming its customer) are `events`.
    pub fn check<'a>(
        &self,
        subject: &str,
        events: impl IntoIterator<Item = &'a Envelope>,
    ) -> Result<(), Status> {
        match self {
            AuditScope::Everything => Ok(()),
            AuditScope::OwnAggregates { customer_id } => {
                if subject == customer_id
                    || events
                        .into_iter()
                        .any(|e| customer_of(e).as_deref() == Some(customer_id.as_str()))
                {
                    Ok(())
                } else {
                    Err(Status::permission_denied(format!(
                        "subject: {subject} is not an aggregate of the calling customer"
                    )))
                }
            }
        }
    }
}

/// The top-level `customer_id` of `event`'s payload, when its type has that field and it is set;
/// `None` for payloads without it, of unknown types, or that do not decode.
pub fn customer_of(event: &Envelope) -> Option<String> {
    let payload = event.payload.as_ref()?;
    let name = payload.type_url.rsplit('/').next()?;
    let descriptor = crate::descriptors::pool().get_message_by_name(name)?;
    let field = descriptor.get_field_by_name("customer_id")?;
    let message = DynamicMessage::decode(descriptor, payload.value.as_slice()).ok()?;
    match message.get_field(&field).as_ref() {
        Value::String(id) if !id.is_empty() => Some(id.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use mesh_contracts::events::v1::{OrderCreated, ProductDeleted};
    use prost::Message;

    use super::*;

    fn envelope(name: &str, payload: &impl Message) -> Envelope {
        Envelope {
            subject: "o-1".into(),
            payload: Some(prost_types::Any {
                type_url: format!("type.googleapis.com/events.v1.{name}"),
                value: payload.encode_to_vec(),
            }),
            ..Default::default()
        }
    }

    fn identity(roles: &[Role]) -> Identity {
        Identity {
            subject: "c-1".into(),
            roles: roles.to_vec(),
            token_id: "t".into(),
            expires_at: 0,
            store_ids: Vec::new(),
        }
    }

    #[test]
    fn the_customer_id_is_read_from_any_payload_that_has_one() {
        let created = envelope(
            "OrderCreated",
            &OrderCreated {
                customer_id: "c-1".into(),
                ..Default::default()
            },
        );
        assert_eq!(customer_of(&created).as_deref(), Some("c-1"));
        let deleted = envelope("ProductDeleted", &ProductDeleted::default());
        assert_eq!(customer_of(&deleted), None);
        let unknown = envelope("NoSuchEvent", &ProductDeleted::default());
        assert_eq!(customer_of(&unknown), None);
        assert_eq!(customer_of(&Envelope::default()), None);
    }

    #[test]
    fn roles_decide_the_scope_and_customers_see_only_their_aggregates() {
        for roles in [&[Role::Auditor][..], &[Role::Admin], &[Role::Service]] {
            assert_eq!(
                AuditScope::of(Some(&identity(roles))).unwrap(),
                AuditScope::Everything
            );
        }
        assert_eq!(
            AuditScope::of(None).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        for roles in [&[Role::Staff][..], &[Role::Device], &[]] {
            assert_eq!(
                AuditScope::of(Some(&identity(roles))).unwrap_err().code(),
                tonic::Code::PermissionDenied
            );
        }
        let customer = AuditScope::of(Some(&identity(&[Role::Customer]))).unwrap();
        let mine = envelope(
            "OrderCreated",
            &OrderCreated {
                customer_id: "c-1".into(),
                ..Default::default()
            },
        );
        let theirs = envelope(
            "OrderCreated",
            &OrderCreated {
                customer_id: "c-2".into(),
                ..Default::default()
            },
        );
        customer.check("o-1", [&mine]).expect("own order");
        customer.check("c-1", []).expect("own account");
        let refused = customer.check("o-1", [&theirs]).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(refused.message().starts_with("subject: "), "{refused:?}");
        assert!(customer.check("o-9", []).is_err());
    }
}
