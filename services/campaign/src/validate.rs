//! Input checks of the campaign RPCs; each failure names its field (`campaign.end_time`,
//! `campaign.rules[1].percent_off.basis_points`, `lines[0].unit_price.currency_code`, ...).

use std::collections::BTreeSet;

use mesh_contracts::campaign::v1::discount_rule::Effect;
use mesh_contracts::campaign::v1::{Campaign, DiscountRule, PriceCartRequest};
use mesh_contracts::common::v1::Money;

use crate::error::CampaignError;
use crate::pricing::{Cart, EnteredCode};
use crate::rules::Line;
use mesh_runtime::domain::{money as kit_money, time};

type Result<T> = std::result::Result<T, CampaignError>;

/// Most rules in one campaign.
pub const MAX_RULES: usize = 50;
/// Most promo codes of one campaign, or entered in one cart.
pub const MAX_CODES: usize = 100;
/// Longest promo code.
pub const MAX_CODE: usize = 64;
/// Most lines in one cart.
pub const MAX_LINES: usize = 500;
/// Most units of one cart line.
pub const MAX_QUANTITY: i64 = 1_000_000;

/// A non-empty id of at most 128 characters without spaces.
pub fn id(field: &str, value: &str) -> Result<String> {
    let v = value.trim();
    if v.is_empty() {
        return Err(CampaignError::invalid(field, "required"));
    }
    optional_id(field, v)
}

/// Like [`id`], but empty is allowed.
pub fn optional_id(field: &str, value: &str) -> Result<String> {
    let v = value.trim();
    if v.chars().count() > 128 || v.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(CampaignError::invalid(
            field,
            "at most 128 characters, no spaces",
        ));
    }
    Ok(v.to_string())
}

/// A promo code, upper-cased: 1 to 64 letters, digits, `-` or `_` (no spaces); the reason
/// when it is not one.
pub fn code(value: &str) -> std::result::Result<String, String> {
    let v = value.trim();
    if v.is_empty() || v.chars().count() > MAX_CODE {
        return Err(format!("a promo code has 1 to {MAX_CODE} characters"));
    }
    if let Some(c) = v
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(format!(
            "a promo code has only letters, digits, `-` and `_` (found {c:?})"
        ));
    }
    Ok(v.to_ascii_uppercase())
}

/// An ISO 4217 currency code (the kit's list), upper-cased.
pub fn currency(field: &str, value: &str) -> Result<String> {
    Ok(kit_money::currency(field, value)?)
}

/// An amount of money in `field`: its currency checked, its amount at least `min`.
pub fn money(field: &str, m: Option<&Money>, min: i64) -> Result<Money> {
    let m = m.ok_or_else(|| CampaignError::invalid(field, "required"))?;
    let currency_code = currency(&format!("{field}.currency_code"), &m.currency_code)?;
    if m.amount_minor < min {
        return Err(CampaignError::invalid(
            format!("{field}.amount_minor"),
            format!("must be at least {min} (minor units)"),
        ));
    }
    Ok(Money {
        currency_code,
        amount_minor: m.amount_minor,
    })
}

fn ids(field: &str, values: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::with_capacity(values.len());
    for (j, v) in values.iter().enumerate() {
        let v = id(&format!("{field}[{j}]"), v)?;
        if out.contains(&v) {
            return Err(CampaignError::invalid(
                format!("{field}[{j}]"),
                "listed twice",
            ));
        }
        out.push(v);
    }
    Ok(out)
}

fn rule(f: &str, r: &DiscountRule) -> Result<DiscountRule> {
    let mut r = r.clone();
    let mut scope = r.scope.clone().unwrap_or_default();
    scope.product_ids = ids(&format!("{f}.scope.product_ids"), &scope.product_ids)?;
    scope.category_ids = ids(&format!("{f}.scope.category_ids"), &scope.category_ids)?;
    match r.effect.as_mut() {
        None => {
            return Err(CampaignError::invalid(
                format!("{f}.effect"),
                "required: percent_off, amount_off, buy_x_get_y or bundle_price",
            ));
        }
        Some(Effect::PercentOff(p)) => {
            if !(1..=10_000).contains(&p.basis_points) {
                return Err(CampaignError::invalid(
                    format!("{f}.percent_off.basis_points"),
                    "1 to 10000 (basis points: 1500 = 15 %)",
                ));
            }
        }
        Some(Effect::AmountOff(a)) => {
            a.amount = Some(money(
                &format!("{f}.amount_off.amount"),
                a.amount.as_ref(),
                1,
            )?);
        }
        Some(Effect::BuyXGetY(b)) => {
            if !(1..=1000).contains(&b.buy_quantity) {
                return Err(CampaignError::invalid(
                    format!("{f}.buy_x_get_y.buy_quantity"),
                    "1 to 1000",
                ));
            }
            if !(1..=1000).contains(&b.get_quantity) {
                return Err(CampaignError::invalid(
                    format!("{f}.buy_x_get_y.get_quantity"),
                    "1 to 1000",
                ));
            }
        }
        Some(Effect::BundlePrice(b)) => {
            b.price = Some(money(
                &format!("{f}.bundle_price.price"),
                b.price.as_ref(),
                0,
            )?);
            if scope.product_ids.len() < 2 || !scope.category_ids.is_empty() {
                return Err(CampaignError::invalid(
                    format!("{f}.scope.product_ids"),
                    "a bundle names at least two products and no category",
                ));
            }
        }
    }
    if let Some(min) = r.min_order_total.as_ref() {
        r.min_order_total = Some(money(&format!("{f}.min_order_total"), Some(min), 0)?);
    }
    if r.min_quantity < 0 {
        return Err(CampaignError::invalid(
            format!("{f}.min_quantity"),
            "must not be negative",
        ));
    }
    r.scope = Some(scope);
    Ok(r)
}

/// A campaign to create, checked and normalised (codes upper case, output fields cleared).
pub fn campaign(c: Option<&Campaign>) -> Result<Campaign> {
    let c = c.ok_or_else(|| CampaignError::invalid("campaign", "required"))?;
    let name = c.name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(CampaignError::invalid(
            "campaign.name",
            "required, at most 200 characters",
        ));
    }
    if c.description.chars().count() > 2000 {
        return Err(CampaignError::invalid(
            "campaign.description",
            "at most 2000 characters",
        ));
    }
    let start = c
        .start_time
        .as_ref()
        .ok_or_else(|| CampaignError::invalid("campaign.start_time", "required"))?;
    let start_us = time::from_timestamp("campaign.start_time", start)?;
    if let Some(end) = c.end_time.as_ref()
        && time::from_timestamp("campaign.end_time", end)? <= start_us
    {
        return Err(CampaignError::invalid(
            "campaign.end_time",
            "must be after start_time",
        ));
    }
    if c.promo_codes.len() > MAX_CODES {
        return Err(CampaignError::invalid(
            "campaign.promo_codes",
            format!("at most {MAX_CODES}"),
        ));
    }
    let mut codes = BTreeSet::new();
    for (i, raw) in c.promo_codes.iter().enumerate() {
        let field = format!("campaign.promo_codes[{i}]");
        let code = code(raw).map_err(|why| CampaignError::invalid(&field, why))?;
        if !codes.insert(code) {
            return Err(CampaignError::invalid(
                field,
                "listed twice (codes are case-insensitive)",
            ));
        }
    }
    if c.rules.is_empty() || c.rules.len() > MAX_RULES {
        return Err(CampaignError::invalid(
            "campaign.rules",
            format!("required: 1 to {MAX_RULES} rules"),
        ));
    }
    let rules = c
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| rule(&format!("campaign.rules[{i}]"), r))
        .collect::<Result<Vec<_>>>()?;
    if c.max_redemptions < 0 {
        return Err(CampaignError::invalid(
            "campaign.max_redemptions",
            "must not be negative (0 = unlimited)",
        ));
    }
    if c.max_redemptions_per_customer < 0 {
        return Err(CampaignError::invalid(
            "campaign.max_redemptions_per_customer",
            "must not be negative (0 = unlimited)",
        ));
    }
    let budget = match c.budget.as_ref() {
        Some(b) if !(b.amount_minor == 0 && b.currency_code.is_empty()) => {
            Some(money("campaign.budget", Some(b), 1)?)
        }
        _ => None,
    };
    Ok(Campaign {
        name: name.to_string(),
        description: c.description.trim().to_string(),
        start_time: c.start_time,
        end_time: c.end_time,
        promo_codes: codes.into_iter().collect(),
        rules,
        priority: c.priority,
        stackable: c.stackable,
        max_redemptions: c.max_redemptions,
        max_redemptions_per_customer: c.max_redemptions_per_customer,
        budget,
        ..Default::default()
    })
}

/// A PriceCart request's cart, checked. Malformed entered codes are not errors: they come back
/// as rejected codes (a customer typed them).
pub fn cart(r: &PriceCartRequest, now_us: i64) -> Result<Cart> {
    if r.lines.is_empty() || r.lines.len() > MAX_LINES {
        return Err(CampaignError::invalid(
            "lines",
            format!("required: 1 to {MAX_LINES} lines"),
        ));
    }
    let mut currency: Option<String> = None;
    let mut lines = Vec::with_capacity(r.lines.len());
    for (i, l) in r.lines.iter().enumerate() {
        let product_id = id(&format!("lines[{i}].product_id"), &l.product_id)?;
        let category_id = optional_id(&format!("lines[{i}].category_id"), &l.category_id)?;
        if !(1..=MAX_QUANTITY).contains(&l.quantity) {
            return Err(CampaignError::invalid(
                format!("lines[{i}].quantity"),
                format!("1 to {MAX_QUANTITY}"),
            ));
        }
        let price = money(&format!("lines[{i}].unit_price"), l.unit_price.as_ref(), 0)?;
        match &currency {
            None => currency = Some(price.currency_code.clone()),
            Some(c) if *c != price.currency_code => {
                return Err(CampaignError::invalid(
                    format!("lines[{i}].unit_price.currency_code"),
                    format!(
                        "is {}, the cart's earlier lines are in {c}; one cart has one currency",
                        price.currency_code
                    ),
                ));
            }
            Some(_) => {}
        }
        if price.amount_minor.checked_mul(l.quantity).is_none() {
            return Err(CampaignError::invalid(
                format!("lines[{i}].quantity"),
                "the line total overflows",
            ));
        }
        lines.push(Line {
            product_id,
            category_id,
            quantity: l.quantity,
            unit_price: price.amount_minor,
        });
    }
    if lines
        .iter()
        .map(Line::subtotal)
        .try_fold(0i64, i64::checked_add)
        .is_none()
    {
        return Err(CampaignError::invalid("lines", "the cart total overflows"));
    }
    if r.promo_codes.len() > 20 {
        return Err(CampaignError::invalid("promo_codes", "at most 20 codes"));
    }
    let codes = r
        .promo_codes
        .iter()
        .filter(|c| !c.trim().is_empty())
        .map(|raw| EnteredCode {
            raw: raw.clone(),
            normalized: code(raw),
        })
        .collect();
    let customer = optional_id("customer_id", &r.customer_id)?;
    optional_id("order_id", &r.order_id)?;
    let at_us = match r.price_time.as_ref() {
        Some(t) => time::from_timestamp("price_time", t)?,
        None => now_us,
    };
    Ok(Cart {
        currency: currency.unwrap_or_default(),
        lines,
        codes,
        has_customer: !customer.is_empty(),
        at_us,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_case_insensitive_and_have_no_spaces() {
        assert_eq!(code(" summer-20 "), Ok("SUMMER-20".into()));
        assert!(code("SUMMER 20").unwrap_err().contains("' '"));
        assert!(code("").is_err());
        assert!(code(&"x".repeat(65)).is_err());
    }
}
