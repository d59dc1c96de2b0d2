//! A profile as the service holds it, its `user.v1.User` form and its `user.updated` snapshot.

use mesh_contracts::events::v1::UserUpdated;
use mesh_contracts::user::v1::{Address, MarketingConsent, User, UserKind};
use mesh_runtime::domain::time::to_timestamp;

/// Marketing consent per medium, when it last changed and where.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Consent {
    /// Marketing email.
    pub email: bool,
    /// Marketing SMS.
    pub sms: bool,
    /// Push messages.
    pub push: bool,
    /// Where it was last given or withdrawn (`signup`, `profile`, ...).
    pub source: String,
    /// When it last changed (Unix microseconds).
    pub at_us: i64,
}

/// A customer or staff profile.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profile {
    /// The auth account id.
    pub id: String,
    /// Customer or staff.
    pub kind: UserKind,
    /// Name shown in the UI and in notifications.
    pub display_name: String,
    /// Given name.
    pub given_name: String,
    /// Family name.
    pub family_name: String,
    /// Email (from auth), lower case.
    pub email: String,
    /// Whether the email was confirmed.
    pub email_verified: bool,
    /// E.164 phone number or empty.
    pub phone_number: String,
    /// BCP 47 locale or empty.
    pub locale: String,
    /// Marketing consent.
    pub consent: Consent,
    /// Saved addresses, in order; at most one default.
    pub addresses: Vec<Address>,
    /// Staff: the stores they work at (sorted).
    pub store_ids: Vec<String>,
    /// 1 at creation, one more per change.
    pub version: i64,
    /// When the profile was erased, if it was.
    pub erased_at_us: Option<i64>,
    /// Created (Unix microseconds).
    pub created_at_us: i64,
    /// Last change (Unix microseconds).
    pub updated_at_us: i64,
}

impl Profile {
    /// The `user.v1.User` of this profile.
    pub fn to_proto(&self) -> User {
        User {
            id: self.id.clone(),
            kind: self.kind as i32,
            display_name: self.display_name.clone(),
            given_name: self.given_name.clone(),
            family_name: self.family_name.clone(),
            email: self.email.clone(),
            email_verified: self.email_verified,
            phone_number: self.phone_number.clone(),
            addresses: self.addresses.clone(),
            marketing_consent: Some(MarketingConsent {
                email: self.consent.email,
                sms: self.consent.sms,
                push: self.consent.push,
                update_time: Some(to_timestamp(self.consent.at_us)),
                source: self.consent.source.clone(),
            }),
            store_ids: self.store_ids.clone(),
            locale: self.locale.clone(),
            create_time: Some(to_timestamp(self.created_at_us)),
            update_time: Some(to_timestamp(self.updated_at_us)),
        }
    }

    /// The `user.updated` payload: the profile's current contact snapshot and what changed.
    pub fn snapshot(&self, changed_fields: Vec<String>) -> UserUpdated {
        UserUpdated {
            user_id: self.id.clone(),
            changed_fields,
            email: self.email.clone(),
            marketing_email: self.consent.email,
            marketing_sms: self.consent.sms,
            marketing_push: self.consent.push,
            locale: self.locale.clone(),
            store_ids: self.store_ids.clone(),
            version: self.version,
            display_name: self.display_name.clone(),
        }
    }
}

/// The stored name of a kind.
pub fn kind_name(kind: UserKind) -> &'static str {
    match kind {
        UserKind::Staff => "STAFF",
        UserKind::Customer | UserKind::Unspecified => "CUSTOMER",
    }
}

/// The kind of a stored name.
pub fn kind_of(name: &str) -> UserKind {
    match name {
        "STAFF" => UserKind::Staff,
        _ => UserKind::Customer,
    }
}
