//! Input checks of the shop RPCs and resource names; each failure names its field.

use mesh_runtime::domain::ids::{self, Charset, IdFormat};

use crate::error::ShopError;

type Result<T> = std::result::Result<T, ShopError>;

/// Most active faults one report may carry.
pub const MAX_FAULTS: usize = 32;

/// Store ids: 1 to 63 lower case letters, digits and `-`.
pub const STORE_ID: IdFormat = IdFormat::new(63, Charset::LowerAscii("-"));

/// A store id in `field`.
pub fn store_id(field: &str, value: &str) -> Result<String> {
    STORE_ID.check(field, value)
}

/// A machine (device) id in `field`.
pub fn machine_id(field: &str, value: &str) -> Result<String> {
    ids::MACHINE_ID.check(field, value)
}

/// Free text of at most `max` characters, trimmed; required when `required`.
pub fn text(field: &str, value: &str, required: bool, max: usize) -> Result<String> {
    ids::text(field, value.trim(), max, required)
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
}
