//! One discount rule applied to a cart's lines: which lines it matches, whether its conditions
//! hold, and how much it takes off each line. Pure integer arithmetic in minor units; every
//! split of an amount over lines is deterministic (proportional, floored, the rest to the
//! earliest lines).

use mesh_contracts::campaign::v1::DiscountRule;
use mesh_contracts::campaign::v1::discount_rule::Effect;

/// A cart line as the rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Product id.
    pub product_id: String,
    /// Category id (the request's, else the one campaign learned from product's events).
    pub category_id: String,
    /// Units (>= 1).
    pub quantity: i64,
    /// List unit price in minor units (>= 0).
    pub unit_price: i64,
}

impl Line {
    /// `unit_price * quantity` (validated not to overflow before pricing).
    pub fn subtotal(&self) -> i64 {
        self.unit_price.saturating_mul(self.quantity)
    }
}

/// Whether `rule` reaches `line` (an empty scope reaches every line).
pub fn in_scope(rule: &DiscountRule, line: &Line) -> bool {
    let Some(scope) = rule.scope.as_ref() else {
        return true;
    };
    if scope.product_ids.is_empty() && scope.category_ids.is_empty() {
        return true;
    }
    scope.product_ids.contains(&line.product_id)
        || (!line.category_id.is_empty() && scope.category_ids.contains(&line.category_id))
}

/// Whether `rule`'s scope names categories (pricing it needs the lines' categories).
pub fn scoped_by_category(rule: &DiscountRule) -> bool {
    rule.scope
        .as_ref()
        .is_some_and(|s| !s.category_ids.is_empty())
}

/// Splits `amount` over the lines `idx` in proportion to `weights` (same length), never more
/// than a line's `cap`; floored shares, the rest one unit at a time to the earliest lines with
/// room. Returns the amount per entry of `idx`.
fn split(amount: i64, weights: &[i64], caps: &[i64]) -> Vec<i64> {
    let total: i128 = weights.iter().map(|w| i128::from(*w)).sum();
    let cap_total: i64 = caps.iter().sum();
    let amount = amount.min(cap_total).max(0);
    let mut out: Vec<i64> = if total <= 0 {
        vec![0; weights.len()]
    } else {
        weights
            .iter()
            .zip(caps)
            .map(|(w, c)| {
                let share = i128::from(amount) * i128::from(*w) / total;
                i64::try_from(share).unwrap_or(i64::MAX).min(*c)
            })
            .collect()
    };
    let mut rest = amount - out.iter().sum::<i64>();
    while rest > 0 {
        let before = rest;
        for (o, c) in out.iter_mut().zip(caps) {
            if rest == 0 {
                break;
            }
            let room = (*c - *o).min(rest);
            if room > 0 {
                *o += room;
                rest -= room;
            }
        }
        if rest == before {
            break;
        }
    }
    out
}

/// Applies `rule` to `lines` whose remaining (not yet discounted) amounts are `remaining`.
/// `cart_subtotal` is the cart's total before any discount, in `currency`. Returns the
/// discount per line (same length as `lines`), or why the rule does not apply.
pub fn apply(
    rule: &DiscountRule,
    lines: &[Line],
    remaining: &[i64],
    cart_subtotal: i64,
    currency: &str,
) -> Result<Vec<i64>, String> {
    let matching: Vec<usize> = (0..lines.len())
        .filter(|i| in_scope(rule, &lines[*i]))
        .collect();
    if matching.is_empty() {
        return Err("no line of the cart is in the rule's scope".into());
    }
    if let Some(min) = rule.min_order_total.as_ref().filter(|m| m.amount_minor > 0) {
        if min.currency_code != currency {
            return Err(format!(
                "the minimum order total is in {}, the cart in {currency}",
                min.currency_code
            ));
        }
        if cart_subtotal < min.amount_minor {
            return Err(format!(
                "minimum order total {} {} not reached",
                min.amount_minor, min.currency_code
            ));
        }
    }
    let units: i64 = matching.iter().map(|i| lines[*i].quantity).sum();
    if rule.min_quantity > 0 && units < rule.min_quantity {
        return Err(format!(
            "at least {} matching units needed, the cart has {units}",
            rule.min_quantity
        ));
    }
    let mut out = vec![0i64; lines.len()];
    match rule.effect.as_ref() {
        None => return Err("the rule has no effect".into()),
        Some(Effect::PercentOff(p)) => {
            for i in &matching {
                let d = i128::from(remaining[*i]) * i128::from(p.basis_points) / 10_000;
                out[*i] = i64::try_from(d).unwrap_or(0).clamp(0, remaining[*i]);
            }
        }
        Some(Effect::AmountOff(a)) => {
            let amount = a.amount.clone().unwrap_or_default();
            if amount.currency_code != currency {
                return Err(format!(
                    "the amount off is in {}, the cart in {currency}",
                    amount.currency_code
                ));
            }
            let weights: Vec<i64> = matching.iter().map(|i| remaining[*i]).collect();
            for (i, d) in matching
                .iter()
                .zip(split(amount.amount_minor, &weights, &weights))
            {
                out[*i] = d;
            }
        }
        Some(Effect::BuyXGetY(b)) => {
            let group = i64::from(b.buy_quantity) + i64::from(b.get_quantity);
            let mut free = (units / group.max(1)) * i64::from(b.get_quantity);
            if free == 0 {
                return Err(format!(
                    "buy {} get {}: {units} matching units are not enough",
                    b.buy_quantity, b.get_quantity
                ));
            }
            // The cheapest units are the free ones (ties: the earlier line).
            let mut by_price = matching.clone();
            by_price.sort_by_key(|i| (lines[*i].unit_price, *i));
            for i in by_price {
                let n = lines[i].quantity.min(free);
                free -= n;
                out[i] = lines[i].unit_price.saturating_mul(n).min(remaining[i]);
                if free == 0 {
                    break;
                }
            }
        }
        Some(Effect::BundlePrice(b)) => {
            let price = b.price.clone().unwrap_or_default();
            if price.currency_code != currency {
                return Err(format!(
                    "the bundle price is in {}, the cart in {currency}",
                    price.currency_code
                ));
            }
            let products = rule
                .scope
                .as_ref()
                .map(|s| s.product_ids.clone())
                .unwrap_or_default();
            // One line per bundle product (the first line of that product).
            let mut members = Vec::with_capacity(products.len());
            for p in &products {
                match lines.iter().position(|l| l.product_id == *p) {
                    Some(i) => members.push(i),
                    None => return Err(format!("the bundle's product `{p}` is not in the cart")),
                }
            }
            let sets = members
                .iter()
                .map(|i| lines[*i].quantity)
                .min()
                .unwrap_or(0);
            let set_list: i64 = members.iter().map(|i| lines[*i].unit_price).sum();
            let per_set = set_list - price.amount_minor;
            if sets == 0 || per_set <= 0 {
                return Err("the bundle price is not below the bundle's list price".into());
            }
            let weights: Vec<i64> = members
                .iter()
                .map(|i| lines[*i].unit_price.saturating_mul(sets))
                .collect();
            let caps: Vec<i64> = members.iter().map(|i| remaining[*i]).collect();
            for (i, d) in members
                .iter()
                .zip(split(per_set.saturating_mul(sets), &weights, &caps))
            {
                out[*i] = d;
            }
        }
    }
    if out.iter().all(|d| *d == 0) {
        return Err("nothing left to discount on the matching lines".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_contracts::campaign::v1::*;
    use mesh_contracts::common::v1::Money;

    fn line(p: &str, c: &str, q: i64, price: i64) -> Line {
        Line {
            product_id: p.into(),
            category_id: c.into(),
            quantity: q,
            unit_price: price,
        }
    }

    fn eur(a: i64) -> Option<Money> {
        Some(Money {
            currency_code: "EUR".into(),
            amount_minor: a,
        })
    }

    fn rule(effect: discount_rule::Effect, products: &[&str], categories: &[&str]) -> DiscountRule {
        DiscountRule {
            effect: Some(effect),
            scope: Some(Scope {
                product_ids: products.iter().map(|s| s.to_string()).collect(),
                category_ids: categories.iter().map(|s| s.to_string()).collect(),
            }),
            ..Default::default()
        }
    }

    fn run(r: &DiscountRule, lines: &[Line]) -> Result<Vec<i64>, String> {
        let rem: Vec<i64> = lines.iter().map(Line::subtotal).collect();
        apply(r, lines, &rem, rem.iter().sum(), "EUR")
    }

    #[test]
    fn percent_off_floors_per_line_and_respects_scope() {
        let lines = [line("a", "drinks", 3, 333), line("b", "food", 1, 1000)];
        let r = rule(
            discount_rule::Effect::PercentOff(PercentOff { basis_points: 1500 }),
            &[],
            &["drinks"],
        );
        // 999 * 15% = 149.85 -> 149; the food line is out of scope.
        assert_eq!(run(&r, &lines), Ok(vec![149, 0]));
    }

    #[test]
    fn amount_off_splits_proportionally_and_never_exceeds_the_lines() {
        let lines = [line("a", "", 1, 100), line("b", "", 1, 200)];
        let r = rule(
            discount_rule::Effect::AmountOff(AmountOff { amount: eur(100) }),
            &[],
            &[],
        );
        assert_eq!(run(&r, &lines), Ok(vec![34, 66]));
        let big = rule(
            discount_rule::Effect::AmountOff(AmountOff {
                amount: eur(10_000),
            }),
            &[],
            &[],
        );
        assert_eq!(run(&big, &lines), Ok(vec![100, 200]));
        let usd = rule(
            discount_rule::Effect::AmountOff(AmountOff {
                amount: Some(Money {
                    currency_code: "USD".into(),
                    amount_minor: 5,
                }),
            }),
            &[],
            &[],
        );
        assert!(run(&usd, &lines).unwrap_err().contains("USD"));
    }

    #[test]
    fn buy_two_get_one_frees_the_cheapest_units() {
        let lines = [
            line("a", "x", 2, 500),
            line("b", "x", 1, 300),
            line("c", "y", 1, 100),
        ];
        let r = rule(
            discount_rule::Effect::BuyXGetY(BuyXGetY {
                buy_quantity: 2,
                get_quantity: 1,
            }),
            &[],
            &["x"],
        );
        assert_eq!(run(&r, &lines), Ok(vec![0, 300, 0]));
        let short = [line("a", "x", 2, 500)];
        assert!(run(&r, &short).unwrap_err().contains("not enough"));
    }

    #[test]
    fn bundle_price_counts_complete_sets() {
        let lines = [line("a", "", 2, 300), line("b", "", 3, 200)];
        let r = rule(
            discount_rule::Effect::BundlePrice(BundlePrice { price: eur(400) }),
            &["a", "b"],
            &[],
        );
        // Two sets of 500 for 400: 200 off, split 3:2.
        assert_eq!(run(&r, &lines), Ok(vec![120, 80]));
        let missing = [line("a", "", 2, 300)];
        assert!(run(&r, &missing).unwrap_err().contains("`b`"));
    }

    #[test]
    fn conditions_say_why_they_fail() {
        let lines = [line("a", "", 1, 100)];
        let mut r = rule(
            discount_rule::Effect::PercentOff(PercentOff { basis_points: 1000 }),
            &[],
            &[],
        );
        r.min_order_total = eur(1000);
        assert!(run(&r, &lines).unwrap_err().contains("minimum order total"));
        r.min_order_total = None;
        r.min_quantity = 2;
        assert!(run(&r, &lines).unwrap_err().contains("at least 2"));
    }

    #[test]
    fn split_gives_the_rest_to_the_earliest_lines() {
        assert_eq!(split(10, &[1, 1, 1], &[100, 100, 100]), vec![4, 3, 3]);
        assert_eq!(split(10, &[1, 1], &[2, 100]), vec![2, 8]);
        assert_eq!(split(0, &[0, 0], &[0, 0]), vec![0, 0]);
    }
}
