//! Input checks of the shop RPCs and resource names; each failure names its field.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::ShopError;

type Result<T> = std::result::Result<T, ShopError>;

/// Most active faults one report may carry.
pub const MAX_FAULTS: usize = 32;

/// A store id: 1 to 63 lower case letters, digits and `-`.
pub fn store_id(field: &str, value: &str) -> Result<String> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(value.to_string())
    } else if value.is_empty() {
        Err(ShopError::invalid(field, "required"))
    } else {
        Err(ShopError::invalid(
            field,
            "lower case letters, digits and '-', at most 63 characters",
        ))
    }
}

/// A machine (device) id: 1 to 64 ASCII letters, digits, `-`, `_` or `.`.
pub fn machine_id(field: &str, value: &str) -> Result<String> {
    if value.is_empty() {
        return Err(ShopError::invalid(field, "required"));
    }
    let ok = value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        return Err(ShopError::invalid(
            field,
            "letters, digits, '-', '_' and '.', at most 64 characters",
        ));
    }
    Ok(value.to_string())
}

/// Free text of at most `max` characters; required when `required`.
pub fn text(field: &str, value: &str, required: bool, max: usize) -> Result<String> {
    let v = value.trim();
    if required && v.is_empty() {
        return Err(ShopError::invalid(field, "required"));
    }
    if v.chars().count() > max {
        return Err(ShopError::invalid(
            field,
            format!("at most {max} characters"),
        ));
    }
    Ok(v.to_string())
}

/// An optional CLDR region code: two upper case letters.
pub fn region_code(field: &str, value: &str) -> Result<String> {
    if value.is_empty() || (value.len() == 2 && value.bytes().all(|b| b.is_ascii_uppercase())) {
        Ok(value.to_string())
    } else {
        Err(ShopError::invalid(field, "two upper case letters, e.g. DE"))
    }
}

/// `stores/{store_id}` -> the store id.
pub fn store_name(field: &str, name: &str) -> Result<String> {
    match name.strip_prefix("stores/") {
        Some(id) if !id.contains('/') => store_id(field, id),
        _ => Err(ShopError::invalid(field, "must be `stores/{store_id}`")),
    }
}

/// `stores/{store_id}/machines/{machine_id}` -> (store id or `None` for `-`, machine id).
pub fn machine_name(field: &str, name: &str) -> Result<(Option<String>, String)> {
    let parts: Vec<&str> = name.split('/').collect();
    match parts.as_slice() {
        ["stores", store, "machines", machine] => {
            let store = if *store == "-" {
                None
            } else {
                Some(store_id(field, store)?)
            };
            Ok((store, machine_id(field, machine)?))
        }
        _ => Err(ShopError::invalid(
            field,
            "must be `stores/{store_id}/machines/{machine_id}`",
        )),
    }
}

/// The parent of ListMachines: `None` for every store (empty or `stores/-`).
pub fn list_parent(field: &str, parent: &str) -> Result<Option<String>> {
    if parent.is_empty() || parent == "stores/-" {
        Ok(None)
    } else {
        store_name(field, parent).map(Some)
    }
}

/// Fault codes: at most [`MAX_FAULTS`] of 1 to 64 printable ASCII characters; sorted and
/// deduplicated.
pub fn faults(field: &str, faults: &[String]) -> Result<Vec<String>> {
    if faults.len() > MAX_FAULTS {
        return Err(ShopError::invalid(field, format!("at most {MAX_FAULTS}")));
    }
    let mut out = Vec::with_capacity(faults.len());
    for (i, f) in faults.iter().enumerate() {
        let ok =
            !f.is_empty() && f.len() <= 64 && f.bytes().all(|b| b.is_ascii_graphic() && b != b',');
        if !ok {
            return Err(ShopError::invalid(
                format!("{field}[{i}]"),
                "1 to 64 printable ASCII characters, no ','",
            ));
        }
        out.push(f.clone());
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The page size of a request: `default` for 0, refused when negative or over `max`.
pub fn page_size(requested: i32, default: i64, max: i64) -> Result<i64> {
    mesh_runtime::paging::page_size(requested, default, max)
        .map_err(|reason| ShopError::invalid("page_size", reason))
}

/// A page token: the last id of the previous page, base64url (opaque to callers).
pub fn encode_token(last_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(last_id.as_bytes())
}

/// Decodes a page token (empty: the first page).
pub fn decode_token(token: &str) -> Result<Option<String>> {
    if token.is_empty() {
        return Ok(None);
    }
    URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .filter(|s| !s.is_empty())
        .map(Some)
        .ok_or_else(|| {
            ShopError::invalid("page_token", "malformed; pass next_page_token unchanged")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse() {
        assert_eq!(
            store_name("name", "stores/berlin-hbf").unwrap(),
            "berlin-hbf"
        );
        assert!(store_name("name", "stores/Berlin").is_err());
        assert!(store_name("name", "shops/x").is_err());
        assert_eq!(
            machine_name("name", "stores/-/machines/vm-1").unwrap(),
            (None, "vm-1".to_string())
        );
        assert!(machine_name("name", "stores/a/machines/").is_err());
        assert_eq!(list_parent("parent", "stores/-").unwrap(), None);
    }

    #[test]
    fn faults_are_sorted_and_checked() {
        let f = faults("status.faults", &["b".into(), "a".into(), "b".into()]).unwrap();
        assert_eq!(f, vec!["a", "b"]);
        let e = faults("status.faults", &["".into()]).unwrap_err();
        assert!(e.to_string().starts_with("status.faults[0]"));
    }

    #[test]
    fn tokens_round_trip() {
        assert_eq!(
            decode_token(&encode_token("vm-9")).unwrap(),
            Some("vm-9".into())
        );
        assert!(decode_token("!!").is_err());
    }
}
