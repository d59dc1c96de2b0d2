//! Input checks of the product RPCs; each failure names its field.

use mesh_contracts::common::v1::Money;

use mesh_runtime::domain::ids;
use mesh_runtime::domain::money::{self, Amount};

use crate::error::ProductError;

/// A UUID-shaped id in `field`.
pub fn id(field: &'static str, value: &str) -> Result<String, ProductError> {
    Ok(ids::uuid(field, value)?)
}

/// An optional UUID-shaped id in `field` (empty is `None`).
pub fn optional_id(field: &'static str, value: &str) -> Result<Option<String>, ProductError> {
    Ok(ids::optional_uuid(field, value)?)
}

/// A SKU: 1 to 64 letters, digits, `-`, `_` or `.`.
pub fn sku(value: &str) -> Result<String, ProductError> {
    let v = value.trim();
    if v.is_empty() {
        return Err(ProductError::invalid("product.sku", "required"));
    }
    if v.len() > 64
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(ProductError::invalid(
            "product.sku",
            "1 to 64 letters, digits, '-', '_' or '.'",
        ));
    }
    Ok(v.to_string())
}

/// A display name of 1 to 200 characters.
pub fn name(field: &'static str, value: &str) -> Result<String, ProductError> {
    let v = value.trim();
    if v.is_empty() {
        return Err(ProductError::invalid(field, "required"));
    }
    if v.chars().count() > 200 {
        return Err(ProductError::invalid(field, "at most 200 characters"));
    }
    Ok(v.to_string())
}

/// A price: a known ISO 4217 code and a non-negative amount in minor units.
pub fn price(value: Option<&Money>) -> Result<(String, i64), ProductError> {
    Ok(money::money("product.price", value, Amount::NonNegative)?)
}

/// A description of at most 10 000 characters.
pub fn description(value: &str) -> Result<String, ProductError> {
    if value.chars().count() > 10_000 {
        return Err(ProductError::invalid(
            "product.description",
            "at most 10000 characters",
        ));
    }
    Ok(value.to_string())
}

/// An empty or absolute http(s) URL.
pub fn image_url(value: &str) -> Result<String, ProductError> {
    let v = value.trim();
    if v.is_empty() || ((v.starts_with("https://") || v.starts_with("http://")) && v.len() <= 2048)
    {
        Ok(v.to_string())
    } else {
        Err(ProductError::invalid(
            "product.image_url",
            "must be an absolute http(s) URL",
        ))
    }
}
