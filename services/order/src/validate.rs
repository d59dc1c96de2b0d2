//! Input checks of the order RPCs; each failure names its field. Checks that need a peer (the
//! products exist and are active, the card is valid) happen in [`crate::place`].

use std::collections::HashMap;

use mesh_contracts::common::v1::PostalAddress;
use mesh_contracts::order::v1::{LineItem, PlaceOrderRequest};

use mesh_runtime::domain::{ids, money};

use crate::error::OrderError;

/// Most lines in one order.
pub const MAX_LINES: usize = 100;
/// Most units of one line.
pub const MAX_QUANTITY: i64 = 1000;
/// Longest idempotency key.
pub const MAX_KEY: usize = 128;
/// Longest promo code.
pub const MAX_PROMO: usize = 64;

type Result<T> = std::result::Result<T, OrderError>;

/// A non-empty id of at most 128 characters without spaces (order ids, customer ids, keys):
/// the kit's reference format.
pub fn id(field: &str, value: &str) -> Result<String> {
    Ok(ids::REFERENCE.check(field, value)?)
}

/// A product id (UUID) in `field`, normalised.
pub fn product_id(field: &str, value: &str) -> Result<String> {
    Ok(ids::uuid(field, value)?)
}

/// A requested line, checked: product id and units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Product id (normalised UUID).
    pub product_id: String,
    /// Units, 1 to [`MAX_QUANTITY`].
    pub quantity: i64,
}

/// The lines: 1 to [`MAX_LINES`], each product once, quantities 1 to [`MAX_QUANTITY`].
pub fn lines(lines: &[LineItem]) -> Result<Vec<Line>> {
    if lines.is_empty() {
        return Err(OrderError::invalid("lines", "required, at least one line"));
    }
    if lines.len() > MAX_LINES {
        return Err(OrderError::invalid(
            "lines",
            format!("at most {MAX_LINES} lines, got {}", lines.len()),
        ));
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::with_capacity(lines.len());
    for (i, l) in lines.iter().enumerate() {
        let product_id = product_id(&format!("lines[{i}].product_id"), &l.product_id)?;
        if let Some(first) = seen.insert(product_id.clone(), i) {
            return Err(OrderError::invalid(
                format!("lines[{i}].product_id"),
                format!(
                    "product `{product_id}` is already in lines[{first}]; put all its units in one line"
                ),
            ));
        }
        if l.quantity < 1 || l.quantity > MAX_QUANTITY {
            return Err(OrderError::invalid(
                format!("lines[{i}].quantity"),
                format!("must be between 1 and {MAX_QUANTITY}, got {}", l.quantity),
            ));
        }
        out.push(Line {
            product_id,
            quantity: l.quantity,
        });
    }
    Ok(out)
}

/// The shipping address: recipient, at least one street line, a region code.
pub fn address(address: Option<&PostalAddress>) -> Result<PostalAddress> {
    let a = address.ok_or_else(|| OrderError::invalid("shipping_address", "required"))?;
    if a.recipient_name.trim().is_empty() {
        return Err(OrderError::invalid(
            "shipping_address.recipient_name",
            "required",
        ));
    }
    if a.recipient_name.chars().count() > 200 {
        return Err(OrderError::invalid(
            "shipping_address.recipient_name",
            "at most 200 characters",
        ));
    }
    if a.address_lines.iter().all(|l| l.trim().is_empty()) {
        return Err(OrderError::invalid(
            "shipping_address.address_lines",
            "at least one non-empty line",
        ));
    }
    if a.address_lines.len() > 5 || a.address_lines.iter().any(|l| l.chars().count() > 200) {
        return Err(OrderError::invalid(
            "shipping_address.address_lines",
            "at most 5 lines of at most 200 characters",
        ));
    }
    let region = a.region_code.trim();
    if region.len() != 2 || !region.chars().all(|c| c.is_ascii_alphabetic()) {
        return Err(OrderError::invalid(
            "shipping_address.region_code",
            "a two-letter CLDR region code such as `DE` or `US`",
        ));
    }
    let mut a = a.clone();
    a.region_code = region.to_ascii_uppercase();
    Ok(a)
}

/// An optional ISO 4217 code (any case, upper-cased: `eur` is `EUR`); `None` when empty.
pub fn currency(value: &str) -> Result<Option<String>> {
    Ok(money::optional_currency(
        "currency_code",
        &value.trim().to_ascii_uppercase(),
    )?)
}

/// The promo code: at most [`MAX_PROMO`] printable characters (it is recorded, not applied).
pub fn promo(value: &str) -> Result<String> {
    let v = value.trim();
    if v.chars().count() > MAX_PROMO || v.chars().any(char::is_control) {
        return Err(OrderError::invalid(
            "promo_code",
            format!("at most {MAX_PROMO} printable characters"),
        ));
    }
    Ok(v.to_string())
}

/// A store id in `field` (shop's format: lower case letters, digits and `-`, at most 63); empty
/// is the online channel.
pub fn store(field: &str, value: &str) -> Result<String> {
    let v = value.trim();
    if v.chars().count() > 63
        || !v
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(OrderError::invalid(
            field,
            "a store id: lower case letters, digits and `-`, at most 63 characters",
        ));
    }
    Ok(v.to_string())
}

/// Everything of a PlaceOrder request that needs no peer, checked in field order.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The idempotency key.
    pub key: String,
    /// The lines.
    pub lines: Vec<Line>,
    /// The shipping address.
    pub address: PostalAddress,
    /// The requested currency, if any.
    pub currency: Option<String>,
    /// The promo code (may be empty).
    pub promo: String,
    /// The store (empty: online).
    pub store: String,
}

/// Checks `req` (the customer and the payment method are checked by the caller).
pub fn place(req: &PlaceOrderRequest) -> Result<Checked> {
    Ok(Checked {
        key: id("idempotency_key", &req.idempotency_key)?,
        lines: lines(&req.lines)?,
        address: address(req.shipping_address.as_ref())?,
        currency: currency(&req.currency_code)?,
        promo: promo(&req.promo_code)?,
        store: store("store_id", &req.store_id)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(p: &str, q: i64) -> LineItem {
        LineItem {
            product_id: p.into(),
            quantity: q,
        }
    }

    fn field(e: OrderError) -> String {
        e.to_string()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_string()
    }

    #[test]
    fn lines_name_the_field_at_fault() {
        let a = uuid::Uuid::now_v7().to_string();
        let b = uuid::Uuid::now_v7().to_string();
        assert_eq!(field(lines(&[]).unwrap_err()), "lines");
        assert_eq!(
            field(lines(&[item(&a, 1), item(&b, 0)]).unwrap_err()),
            "lines[1].quantity"
        );
        assert_eq!(
            field(lines(&[item(&a, 1001)]).unwrap_err()),
            "lines[0].quantity"
        );
        assert_eq!(
            field(lines(&[item(&a, 1), item(&a, 2)]).unwrap_err()),
            "lines[1].product_id"
        );
        assert_eq!(
            field(lines(&[item("nope", 1)]).unwrap_err()),
            "lines[0].product_id"
        );
        let many: Vec<_> = (0..101)
            .map(|_| item(&uuid::Uuid::now_v7().to_string(), 1))
            .collect();
        assert_eq!(field(lines(&many).unwrap_err()), "lines");
        assert_eq!(lines(&[item(&a, 3)]).unwrap()[0].quantity, 3);
    }

    #[test]
    fn address_currency_and_promo() {
        assert_eq!(field(address(None).unwrap_err()), "shipping_address");
        let mut a = PostalAddress {
            recipient_name: "Ada".into(),
            address_lines: vec!["1 Main St".into()],
            region_code: "de".into(),
            ..Default::default()
        };
        assert_eq!(address(Some(&a)).unwrap().region_code, "DE");
        a.region_code = "Germany".into();
        assert_eq!(
            field(address(Some(&a)).unwrap_err()),
            "shipping_address.region_code"
        );
        assert_eq!(currency("eur").unwrap().as_deref(), Some("EUR"));
        assert_eq!(currency("").unwrap(), None);
        assert_eq!(field(currency("EURO").unwrap_err()), "currency_code");
        assert_eq!(field(promo(&"x".repeat(65)).unwrap_err()), "promo_code");
        assert_eq!(
            field(id("idempotency_key", " ").unwrap_err()),
            "idempotency_key"
        );
    }
}
