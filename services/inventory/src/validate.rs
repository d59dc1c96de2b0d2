//! Input checks of the inventory RPCs; each failure names its field.

use std::collections::BTreeMap;

use mesh_contracts::inventory::v1::StockLine;

use crate::error::InventoryError;

/// The location of web orders when a line names none.
pub const DEFAULT_LOCATION: &str = "default";
/// Most lines in one request.
pub const MAX_LINES: usize = 100;

/// A product id (UUID) in `field`.
pub fn product_id(field: &str, value: &str) -> Result<String, InventoryError> {
    let v = value.trim();
    if v.is_empty() {
        return Err(InventoryError::invalid(field, "required"));
    }
    uuid::Uuid::parse_str(v)
        .map(|u| u.to_string())
        .map_err(|_| InventoryError::invalid(field, "not a valid product id (UUID)"))
}

/// A location id: 1 to 64 letters, digits, `-`, `_`, `.` or `:`; `default_empty` turns empty
/// into [`DEFAULT_LOCATION`].
pub fn location_id(
    field: &str,
    value: &str,
    default_empty: bool,
) -> Result<String, InventoryError> {
    let v = value.trim();
    if v.is_empty() {
        return if default_empty {
            Ok(DEFAULT_LOCATION.into())
        } else {
            Err(InventoryError::invalid(field, "required"))
        };
    }
    if v.len() > 64
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
    {
        return Err(InventoryError::invalid(
            field,
            "1 to 64 letters, digits, '-', '_', '.' or ':'",
        ));
    }
    Ok(v.to_string())
}

/// A non-empty identifier of at most 128 characters (reference ids, reservation ids).
pub fn reference(field: &str, value: &str) -> Result<String, InventoryError> {
    let v = value.trim();
    if v.is_empty() {
        return Err(InventoryError::invalid(field, "required"));
    }
    if v.len() > 128 || v.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(InventoryError::invalid(
            field,
            "at most 128 characters, no spaces",
        ));
    }
    Ok(v.to_string())
}

/// A checked line: product, location, quantity.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Line {
    /// Product id.
    pub product_id: String,
    /// Location id.
    pub location_id: String,
    /// Units, > 0.
    pub quantity: i64,
}

/// The request's lines, checked, in request order.
pub fn lines(lines: &[StockLine]) -> Result<Vec<Line>, InventoryError> {
    if lines.is_empty() {
        return Err(InventoryError::invalid(
            "lines",
            "required, at least one line",
        ));
    }
    if lines.len() > MAX_LINES {
        return Err(InventoryError::invalid(
            "lines",
            format!("at most {MAX_LINES} lines"),
        ));
    }
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let quantity = l.quantity;
            if quantity <= 0 {
                return Err(InventoryError::invalid(
                    format!("lines[{i}].quantity"),
                    "must be greater than zero",
                ));
            }
            Ok(Line {
                product_id: product_id(&format!("lines[{i}].product_id"), &l.product_id)?,
                location_id: location_id(&format!("lines[{i}].location_id"), &l.location_id, true)?,
                quantity,
            })
        })
        .collect()
}

/// Lines merged per (product, location) and sorted, so concurrent reservations lock stock rows
/// in one order (no deadlocks).
pub fn merged(lines: &[Line]) -> Vec<Line> {
    let mut by_key: BTreeMap<(String, String), i64> = BTreeMap::new();
    for l in lines {
        *by_key
            .entry((l.product_id.clone(), l.location_id.clone()))
            .or_default() += l.quantity;
    }
    by_key
        .into_iter()
        .map(|((product_id, location_id), quantity)| Line {
            product_id,
            location_id,
            quantity,
        })
        .collect()
}
