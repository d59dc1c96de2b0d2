//! Input checks; every error names the field at fault.

use mesh_contracts::common::v1::PostalAddress;
use mesh_contracts::user::v1::Address;

use mesh_runtime::domain::{ServiceError, ids};

type Result<T> = std::result::Result<T, ServiceError>;

/// Most saved addresses per profile.
pub const MAX_ADDRESSES: usize = 20;
/// Most store assignments per staff member.
pub const MAX_STORES: usize = 100;

/// An id (the kit's `KEY` format: 1..=128 characters of `A-Z a-z 0-9 - _ . : /`).
pub fn id(field: &str, value: &str) -> Result<String> {
    ids::KEY.check(field, value)
}

/// Free text of at most `max` characters, trimmed.
pub fn text(field: &str, value: &str, max: usize) -> Result<String> {
    ids::text(field, value.trim(), max, false)
}

/// An email address (a light check: one `@`, something on both sides, a dot in the domain, no
/// spaces), lower-cased.
pub fn email(field: &str, value: &str) -> Result<String> {
    let v = value.trim().to_lowercase();
    if v.is_empty() {
        return Err(ServiceError::invalid(field, "required"));
    }
    let ok = v.len() <= 254
        && !v.chars().any(|c| c.is_whitespace() || c.is_control())
        && v.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.contains('@')
        });
    if !ok {
        return Err(ServiceError::invalid(field, "not an email address"));
    }
    Ok(v)
}

/// A phone number in E.164 form (`+` and 7 to 15 digits); empty is allowed.
pub fn phone(field: &str, value: &str) -> Result<String> {
    let v = value.trim();
    if v.is_empty() {
        return Ok(String::new());
    }
    let digits = v.strip_prefix('+').unwrap_or("");
    if !(7..=15).contains(&digits.len())
        || !digits.chars().all(|c| c.is_ascii_digit())
        || digits.starts_with('0')
    {
        return Err(ServiceError::invalid(
            field,
            "an E.164 number: + and 7 to 15 digits, e.g. +4930123456",
        ));
    }
    Ok(v.to_string())
}

/// A BCP 47 language tag (a light check: a 2-3 letter language, then `-`-separated
/// alphanumeric subtags of 1 to 8 characters); empty is allowed.
pub fn locale(field: &str, value: &str) -> Result<String> {
    let v = value.trim();
    if v.is_empty() {
        return Ok(String::new());
    }
    let mut parts = v.split('-');
    let language = parts.next().unwrap_or("");
    let ok = v.len() <= 35
        && (2..=3).contains(&language.len())
        && language.chars().all(|c| c.is_ascii_alphabetic())
        && parts
            .all(|p| (1..=8).contains(&p.len()) && p.chars().all(|c| c.is_ascii_alphanumeric()));
    if !ok {
        return Err(ServiceError::invalid(
            field,
            "a BCP 47 language tag, e.g. en-GB",
        ));
    }
    Ok(v.to_string())
}

/// Where consent was given: 1..=40 characters of `a-z 0-9 _ -`; empty means `default`.
pub fn consent_source(field: &str, value: &str, default: &str) -> Result<String> {
    let v = value.trim();
    if v.is_empty() {
        return Ok(default.to_string());
    }
    if v.len() > 40
        || !v
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'))
    {
        return Err(ServiceError::invalid(
            field,
            "at most 40 characters of a-z 0-9 _ -, e.g. profile",
        ));
    }
    Ok(v.to_string())
}

/// A postal address: a country (`region_code`, ISO 3166-1 alpha-2) and at least one line or a
/// locality; lines and names of bounded length.
pub fn postal_address(field: &str, a: Option<&PostalAddress>) -> Result<PostalAddress> {
    let a = a.ok_or_else(|| ServiceError::invalid(field, "required"))?;
    let region = a.region_code.trim().to_uppercase();
    if region.is_empty() {
        return Err(ServiceError::invalid(
            format!("{field}.region_code"),
            "required: the country (ISO 3166-1 alpha-2, e.g. DE)",
        ));
    }
    if region.len() != 2 || !region.chars().all(|c| c.is_ascii_uppercase()) {
        return Err(ServiceError::invalid(
            format!("{field}.region_code"),
            "an ISO 3166-1 alpha-2 country code, e.g. DE",
        ));
    }
    if a.address_lines.len() > 5 {
        return Err(ServiceError::invalid(
            format!("{field}.address_lines"),
            "at most 5 lines",
        ));
    }
    let mut lines = Vec::new();
    for (i, l) in a.address_lines.iter().enumerate() {
        lines.push(text(&format!("{field}.address_lines[{i}]"), l, 200)?);
    }
    let locality = text(&format!("{field}.locality"), &a.locality, 100)?;
    if lines.iter().all(String::is_empty) && locality.is_empty() {
        return Err(ServiceError::invalid(
            format!("{field}.address_lines"),
            "an address line or a locality is required",
        ));
    }
    Ok(PostalAddress {
        recipient_name: text(&format!("{field}.recipient_name"), &a.recipient_name, 200)?,
        address_lines: lines,
        locality,
        administrative_area: text(
            &format!("{field}.administrative_area"),
            &a.administrative_area,
            100,
        )?,
        postal_code: text(&format!("{field}.postal_code"), &a.postal_code, 20)?,
        region_code: region,
        phone_number: phone(&format!("{field}.phone_number"), &a.phone_number)?,
    })
}

/// The saved addresses of `field`: each valid, at most one default (the first becomes the
/// default when none is), ids kept when given (unique) and made otherwise.
pub fn addresses(field: &str, given: &[Address]) -> Result<Vec<Address>> {
    if given.len() > MAX_ADDRESSES {
        return Err(ServiceError::invalid(
            field,
            format!("at most {MAX_ADDRESSES} addresses"),
        ));
    }
    if given.iter().filter(|a| a.is_default).count() > 1 {
        return Err(ServiceError::invalid(
            field,
            "at most one address is the default",
        ));
    }
    let mut out: Vec<Address> = Vec::with_capacity(given.len());
    for (i, a) in given.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let id = if a.id.is_empty() {
            uuid::Uuid::now_v7().to_string()
        } else {
            id(&format!("{f}.id"), &a.id)?
        };
        if out.iter().any(|o| o.id == id) {
            return Err(ServiceError::invalid(format!("{f}.id"), "used twice"));
        }
        out.push(Address {
            id,
            label: text(&format!("{f}.label"), &a.label, 100)?,
            postal_address: Some(postal_address(
                &format!("{f}.postal_address"),
                a.postal_address.as_ref(),
            )?),
            is_default: a.is_default,
        });
    }
    if let Some(first) = out.first_mut()
        && !given.iter().any(|a| a.is_default)
    {
        first.is_default = true;
    }
    Ok(out)
}

/// Store ids (unique, sorted).
pub fn store_ids(field: &str, given: &[String]) -> Result<Vec<String>> {
    if given.len() > MAX_STORES {
        return Err(ServiceError::invalid(
            field,
            format!("at most {MAX_STORES} stores"),
        ));
    }
    let mut out = Vec::with_capacity(given.len());
    for (i, s) in given.iter().enumerate() {
        out.push(id(&format!("{field}[{i}]"), s)?);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(e: ServiceError) -> String {
        match e {
            ServiceError::InvalidArgument { field, .. } => field,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn values_are_checked_and_fields_named() {
        assert_eq!(email("e", " Ada@Example.COM ").unwrap(), "ada@example.com");
        assert_eq!(field_of(email("e", "ada@").unwrap_err()), "e");
        assert_eq!(field_of(email("e", "a b@x.io").unwrap_err()), "e");
        assert_eq!(phone("p", "+4930123456").unwrap(), "+4930123456");
        assert!(phone("p", "030123456").is_err());
        assert!(phone("p", "+49 30").is_err());
        assert_eq!(locale("l", "en-GB").unwrap(), "en-GB");
        assert!(locale("l", "english!").is_err());
        assert!(consent_source("s", "Sign Up", "x").is_err());
        assert_eq!(consent_source("s", "", "profile").unwrap(), "profile");
    }

    #[test]
    fn an_address_needs_a_country_and_one_default() {
        let home = |region: &str, default: bool| Address {
            label: "Home".into(),
            postal_address: Some(PostalAddress {
                address_lines: vec!["1 Main St".into()],
                locality: "Berlin".into(),
                region_code: region.into(),
                ..Default::default()
            }),
            is_default: default,
            ..Default::default()
        };
        assert_eq!(
            field_of(addresses("a", &[home("DE", false), home("", false)]).unwrap_err()),
            "a[1].postal_address.region_code"
        );
        assert_eq!(
            field_of(addresses("a", &[home("DE", true), home("FR", true)]).unwrap_err()),
            "a"
        );
        let ok = addresses("a", &[home("de", false), home("FR", false)]).unwrap();
        assert!(ok[0].is_default && !ok[1].is_default);
        assert_eq!(ok[0].postal_address.as_ref().unwrap().region_code, "DE");
        assert_ne!(ok[0].id, ok[1].id);
        assert_eq!(
            store_ids("s", &["b".into(), "a".into(), "b".into()]).unwrap(),
            vec!["a", "b"]
        );
    }
}
