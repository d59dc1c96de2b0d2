//! PriceCart's engine: which campaigns apply to a cart, in which order, and what each takes off
//! each line. Pure and deterministic: the same cart, time and campaigns give the same answer.
//!
//! 1. A campaign is considered when it is automatic (no promo code) or an entered code unlocks
//!    it. It is rejected, with the reason, when the price time is outside its window, its
//!    total or per-customer limit is reached, it was excluded by the caller (a hold that failed),
//!    or no rule applies to the cart.
//! 2. Stackable campaigns apply together, by priority (higher first, then id), each on what
//!    the earlier ones left. Each exclusive (non-stackable) campaign is priced alone.
//! 3. The option with the largest discount wins: the stack, or one exclusive campaign (ties: the
//!    higher priority, then the smaller id). The losers are rejected as not combinable.
//! 4. A campaign whose budget cannot cover its discount in the winning option is rejected.

use std::collections::BTreeMap;

use mesh_contracts::campaign::v1::{
    AppliedDiscount, DiscountRule, LineDiscount, PriceCartResponse, PricedLine, RejectedCampaign,
    RejectedPromoCode, RejectionReason,
};
use mesh_contracts::common::v1::Money;

use crate::rules::{self, Line};

/// A campaign as pricing needs it (loaded for one cart).
#[derive(Debug, Clone, Default)]
pub struct Candidate {
    /// Campaign id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Window start (µs since the epoch).
    pub start_us: i64,
    /// Window end (exclusive; 0 = open).
    pub end_us: i64,
    /// When it was ended (0 = not ended).
    pub ended_us: i64,
    /// Higher first.
    pub priority: i32,
    /// Combines with other stackable campaigns.
    pub stackable: bool,
    /// Its promo codes, upper case; empty = automatic.
    pub codes: Vec<String>,
    /// Its rules, in order.
    pub rules: Vec<DiscountRule>,
    /// Total redemptions allowed (0 = unlimited).
    pub max_redemptions: i64,
    /// Redemptions held or consumed.
    pub redemption_count: i64,
    /// Redemptions per customer (0 = unlimited).
    pub max_per_customer: i64,
    /// This cart's customer's redemptions held or consumed.
    pub customer_count: i64,
    /// Budget in minor units (0 = unlimited) and its currency.
    pub budget: i64,
    /// Currency of the budget.
    pub budget_currency: String,
    /// Discount granted so far.
    pub budget_used: i64,
}

/// A code the customer entered.
#[derive(Debug, Clone)]
pub struct EnteredCode {
    /// As entered.
    pub raw: String,
    /// Upper case, trimmed; `Err` when it is not a well-formed code.
    pub normalized: Result<String, String>,
}

/// A cart to price, checked.
#[derive(Debug, Clone, Default)]
pub struct Cart {
    /// The lines' currency.
    pub currency: String,
    /// The lines, in request order.
    pub lines: Vec<Line>,
    /// Entered codes.
    pub codes: Vec<EnteredCode>,
    /// Whether a customer was named (per-customer limits are checked only then).
    pub has_customer: bool,
    /// Price time (µs since the epoch).
    pub at_us: i64,
}

/// A campaign that applied, with its total discount (for holds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Campaign id.
    pub campaign_id: String,
    /// Total discount it gave on this cart.
    pub discount: i64,
}

/// The priced cart.
#[derive(Debug, Clone, Default)]
pub struct Priced {
    /// The answer.
    pub response: PriceCartResponse,
    /// The campaigns that applied, in order.
    pub applied: Vec<Applied>,
}

/// Why the caller excluded a campaign (a hold that failed).
pub type Exclusions = BTreeMap<String, (RejectionReason, String)>;

/// A campaign's discount: per rule, per line.
#[derive(Debug, Clone)]
struct Grant {
    per_rule: Vec<(i32, Vec<i64>)>,
    total: i64,
}

fn evaluate(c: &Candidate, cart: &Cart, remaining: &[i64], subtotal: i64) -> Result<Grant, String> {
    let mut rem = remaining.to_vec();
    let mut per_rule = Vec::new();
    let mut first_reason = None;
    for (i, rule) in c.rules.iter().enumerate() {
        match rules::apply(rule, &cart.lines, &rem, subtotal, &cart.currency) {
            Ok(d) => {
                for (r, x) in rem.iter_mut().zip(&d) {
                    *r -= x;
                }
                per_rule.push((i32::try_from(i).unwrap_or(i32::MAX), d));
            }
            Err(why) => {
                first_reason.get_or_insert(format!("rules[{i}]: {why}"));
            }
        }
    }
    let total: i64 = per_rule.iter().flat_map(|(_, d)| d.iter()).sum();
    if total == 0 {
        return Err(first_reason.unwrap_or_else(|| "no rule gives a discount".into()));
    }
    Ok(Grant { per_rule, total })
}

/// The first reason `c` cannot apply at all, before its rules are looked at.
fn gate(c: &Candidate, cart: &Cart, excluded: &Exclusions) -> Option<(RejectionReason, String)> {
    if cart.at_us < c.start_us {
        return Some((
            RejectionReason::NotStarted,
            "the campaign has not started".into(),
        ));
    }
    if c.ended_us > 0 && c.ended_us <= cart.at_us {
        return Some((RejectionReason::Expired, "the campaign was ended".into()));
    }
    if c.end_us > 0 && c.end_us <= cart.at_us {
        return Some((RejectionReason::Expired, "the campaign is over".into()));
    }
    if let Some(why) = excluded.get(&c.id) {
        return Some(why.clone());
    }
    if c.max_redemptions > 0 && c.redemption_count >= c.max_redemptions {
        return Some((
            RejectionReason::LimitReached,
            format!("all {} redemptions are used", c.max_redemptions),
        ));
    }
    if cart.has_customer && c.max_per_customer > 0 && c.customer_count >= c.max_per_customer {
        return Some((
            RejectionReason::CustomerLimitReached,
            format!("at most {} redemptions per customer", c.max_per_customer),
        ));
    }
    if c.budget > 0 && c.budget_currency != cart.currency {
        return Some((
            RejectionReason::NotEligible,
            format!(
                "the budget is in {}, the cart in {}",
                c.budget_currency, cart.currency
            ),
        ));
    }
    None
}

fn money(currency: &str, amount_minor: i64) -> Option<Money> {
    Some(Money {
        currency_code: currency.to_string(),
        amount_minor,
    })
}

/// The code of `cart` that unlocks `c`: `Some("")` for an automatic campaign, `None` when no
/// entered code unlocks it.
fn unlocked_by(c: &Candidate, cart: &Cart) -> Option<String> {
    if c.codes.is_empty() {
        return Some(String::new());
    }
    cart.codes.iter().find_map(|e| match &e.normalized {
        Ok(n) if c.codes.contains(n) => Some(n.clone()),
        _ => None,
    })
}

/// Prices `cart` with `candidates` (the automatic campaigns active at its time and the ones its
/// codes name), leaving out `excluded`.
pub fn price(cart: &Cart, candidates: &[Candidate], excluded: &Exclusions) -> Priced {
    let subtotals: Vec<i64> = cart.lines.iter().map(Line::subtotal).collect();
    let subtotal: i64 = subtotals.iter().sum();
    let mut order: Vec<&Candidate> = candidates.iter().collect();
    order.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.id.cmp(&b.id)));
    order.dedup_by(|a, b| a.id == b.id);

    let mut rejected: Vec<(RejectedCampaign, String)> = Vec::new();
    let reject =
        |c: &Candidate, code: &str, reason: RejectionReason, detail: String| RejectedCampaign {
            campaign_id: c.id.clone(),
            campaign_name: c.name.clone(),
            reason: reason as i32,
            detail,
            promo_code: code.to_string(),
        };
    // Eligible campaigns with the code that unlocked them.
    let mut eligible: Vec<(&Candidate, String)> = Vec::new();
    for c in order {
        let Some(code) = unlocked_by(c, cart) else {
            continue;
        };
        if let Some((reason, detail)) = gate(c, cart, excluded) {
            rejected.push((reject(c, &code, reason, detail), code));
            continue;
        }
        match evaluate(c, cart, &subtotals, subtotal) {
            Ok(_) => eligible.push((c, code)),
            Err(why) => rejected.push((reject(c, &code, RejectionReason::NotEligible, why), code)),
        }
    }

    // The stack: stackable campaigns in order, each on what the earlier ones left.
    let mut stack: Vec<(&Candidate, String, Grant)> = Vec::new();
    let mut rem = subtotals.clone();
    for (c, code) in eligible.iter().filter(|(c, _)| c.stackable) {
        match evaluate(c, cart, &rem, subtotal) {
            Ok(g) => {
                for (_, d) in &g.per_rule {
                    for (r, x) in rem.iter_mut().zip(d) {
                        *r -= x;
                    }
                }
                stack.push((c, code.clone(), g));
            }
            Err(why) => rejected.push((
                reject(
                    c,
                    code,
                    RejectionReason::NotEligible,
                    format!("after the campaigns before it: {why}"),
                ),
                code.clone(),
            )),
        }
    }
    let stack_total: i64 = stack.iter().map(|(_, _, g)| g.total).sum();
    // The best exclusive campaign, priced alone.
    let mut best_exclusive: Option<(&Candidate, String, Grant)> = None;
    for (c, code) in eligible.iter().filter(|(c, _)| !c.stackable) {
        let Ok(g) = evaluate(c, cart, &subtotals, subtotal) else {
            continue;
        };
        let better = match &best_exclusive {
            None => true,
            Some((b, _, bg)) => (g.total, c.priority) > (bg.total, b.priority),
        };
        if better {
            best_exclusive = Some((c, code.clone(), g));
        }
    }
    let exclusive_wins = match (&best_exclusive, stack.first()) {
        (Some(_), None) => true,
        (Some((e, _, g)), Some((s, _, _))) => (g.total, e.priority) > (stack_total, s.priority),
        (None, _) => false,
    };
    let winners: Vec<(&Candidate, String, Grant)> = if exclusive_wins {
        let (e, code, g) = best_exclusive.clone().expect("exclusive_wins implies one");
        for (c, ccode, _) in &stack {
            rejected.push((
                reject(
                    c,
                    ccode,
                    RejectionReason::NotCombinable,
                    format!(
                        "campaign `{}` applies alone and gives a larger discount",
                        e.id
                    ),
                ),
                ccode.clone(),
            ));
        }
        vec![(e, code, g)]
    } else {
        stack
    };
    let winner_ids: Vec<&str> = winners.iter().map(|(c, _, _)| c.id.as_str()).collect();
    for (c, code) in eligible.iter().filter(|(c, _)| !c.stackable) {
        if !winner_ids.contains(&c.id.as_str()) {
            let detail = if exclusive_wins {
                format!("campaign `{}` gives a larger discount", winner_ids.join(""))
            } else {
                "the combined campaigns give a larger discount".to_string()
            };
            rejected.push((
                reject(c, code, RejectionReason::NotCombinable, detail),
                code.clone(),
            ));
        }
    }

    // Budgets, then the answer.
    let mut lines: Vec<PricedLine> = cart
        .lines
        .iter()
        .zip(&subtotals)
        .map(|(l, s)| PricedLine {
            product_id: l.product_id.clone(),
            quantity: l.quantity,
            unit_price: money(&cart.currency, l.unit_price),
            subtotal: money(&cart.currency, *s),
            ..Default::default()
        })
        .collect();
    let mut discounts = Vec::new();
    let mut applied = Vec::new();
    let mut line_discounts = vec![0i64; lines.len()];
    for (c, code, g) in winners {
        if c.budget > 0 && c.budget_used.saturating_add(g.total) > c.budget {
            rejected.push((
                reject(
                    c,
                    &code,
                    RejectionReason::BudgetExhausted,
                    format!(
                        "{} of its budget of {} {} is left, the discount would be {}",
                        (c.budget - c.budget_used).max(0),
                        c.budget,
                        c.budget_currency,
                        g.total
                    ),
                ),
                code,
            ));
            continue;
        }
        for (rule_index, per_line) in &g.per_rule {
            let amount: i64 = per_line.iter().sum();
            if amount == 0 {
                continue;
            }
            for (i, d) in per_line.iter().enumerate().filter(|(_, d)| **d > 0) {
                line_discounts[i] += d;
                lines[i].discounts.push(LineDiscount {
                    campaign_id: c.id.clone(),
                    rule_index: *rule_index,
                    amount: money(&cart.currency, *d),
                });
            }
            discounts.push(AppliedDiscount {
                campaign_id: c.id.clone(),
                campaign_name: c.name.clone(),
                rule_index: *rule_index,
                promo_code: code.clone(),
                amount: money(&cart.currency, amount),
            });
        }
        applied.push(Applied {
            campaign_id: c.id.clone(),
            discount: g.total,
        });
    }
    for ((line, d), s) in lines.iter_mut().zip(&line_discounts).zip(&subtotals) {
        line.discount = money(&cart.currency, *d);
        line.total = money(&cart.currency, s - d);
    }
    let discount_total: i64 = line_discounts.iter().sum();

    // Entered codes that unlocked nothing that applied.
    let mut rejected_codes = Vec::new();
    let mut seen = Vec::new();
    for e in &cart.codes {
        let normalized = match &e.normalized {
            Err(why) => {
                rejected_codes.push(RejectedPromoCode {
                    promo_code: e.raw.clone(),
                    reason: why.clone(),
                    reason_code: RejectionReason::CodeUnknown as i32,
                });
                continue;
            }
            Ok(n) => n,
        };
        if seen.contains(normalized) {
            continue;
        }
        seen.push(normalized.clone());
        if applied_code(&discounts, normalized) {
            continue;
        }
        let (reason_code, reason) = match rejected.iter().find(|(_, code)| code == normalized) {
            Some((r, _)) => (r.reason, r.detail.clone()),
            None => (
                RejectionReason::CodeUnknown as i32,
                "unknown code".to_string(),
            ),
        };
        rejected_codes.push(RejectedPromoCode {
            promo_code: e.raw.clone(),
            reason,
            reason_code,
        });
    }

    Priced {
        response: PriceCartResponse {
            lines,
            applied_campaign_ids: applied.iter().map(|a| a.campaign_id.clone()).collect(),
            discounts,
            subtotal: money(&cart.currency, subtotal),
            discount_total: money(&cart.currency, discount_total),
            total: money(&cart.currency, subtotal - discount_total),
            rejected_promo_codes: rejected_codes,
            rejected_campaigns: rejected.into_iter().map(|(r, _)| r).collect(),
        },
        applied,
    }
}

fn applied_code(discounts: &[AppliedDiscount], code: &str) -> bool {
    discounts.iter().any(|d| d.promo_code == code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_contracts::campaign::v1::discount_rule::Effect;
    use mesh_contracts::campaign::v1::{AmountOff, PercentOff};

    fn percent(bp: i32) -> DiscountRule {
        DiscountRule {
            effect: Some(Effect::PercentOff(PercentOff { basis_points: bp })),
            ..Default::default()
        }
    }

    fn amount(minor: i64) -> DiscountRule {
        DiscountRule {
            effect: Some(Effect::AmountOff(AmountOff {
                amount: money("EUR", minor),
            })),
            ..Default::default()
        }
    }

    fn campaign(id: &str, priority: i32, stackable: bool, rule: DiscountRule) -> Candidate {
        Candidate {
            id: id.into(),
            name: id.to_uppercase(),
            priority,
            stackable,
            rules: vec![rule],
            ..Default::default()
        }
    }

    fn cart(codes: &[&str]) -> Cart {
        Cart {
            currency: "EUR".into(),
            lines: vec![Line {
                product_id: "p1".into(),
                category_id: String::new(),
                quantity: 2,
                unit_price: 1000,
            }],
            codes: codes
                .iter()
                .map(|c| EnteredCode {
                    raw: c.to_string(),
                    normalized: Ok(c.to_uppercase()),
                })
                .collect(),
            has_customer: true,
            at_us: 100,
        }
    }

    fn reasons(p: &Priced) -> Vec<(String, i32)> {
        p.response
            .rejected_campaigns
            .iter()
            .map(|r| (r.campaign_id.clone(), r.reason))
            .collect()
    }

    #[test]
    fn stackables_apply_in_priority_order_on_what_is_left() {
        let p = price(
            &cart(&[]),
            &[
                campaign("b", 1, true, percent(1000)),
                campaign("a", 5, true, amount(500)),
            ],
            &Exclusions::new(),
        );
        // a (priority 5) first: 2000 - 500 = 1500; then b: 10% of 1500 = 150.
        assert_eq!(p.response.applied_campaign_ids, vec!["a", "b"]);
        assert_eq!(p.response.discount_total.unwrap().amount_minor, 650);
        assert_eq!(p.response.total.unwrap().amount_minor, 1350);
        assert_eq!(p.response.lines[0].discounts.len(), 2);
    }

    #[test]
    fn the_larger_of_the_stack_and_the_best_exclusive_wins() {
        let cands = [
            campaign("s1", 0, true, percent(1000)),
            campaign("x1", 0, false, percent(2500)),
            campaign("x2", 0, false, percent(2000)),
        ];
        let p = price(&cart(&[]), &cands, &Exclusions::new());
        assert_eq!(p.response.applied_campaign_ids, vec!["x1"]);
        let r = reasons(&p);
        assert!(r.contains(&("s1".into(), RejectionReason::NotCombinable as i32)));
        assert!(r.contains(&("x2".into(), RejectionReason::NotCombinable as i32)));
        // Deterministic: the same input gives the same answer.
        assert_eq!(
            price(&cart(&[]), &cands, &Exclusions::new()).response,
            p.response
        );
    }

    #[test]
    fn codes_unlock_and_explain() {
        let mut coded = campaign("c", 0, true, percent(1000));
        coded.codes = vec!["SUMMER".into()];
        let mut ended = campaign("e", 0, true, percent(1000));
        ended.codes = vec!["OLD".into()];
        ended.end_us = 50;
        let none = price(
            &cart(&[]),
            &[coded.clone(), ended.clone()],
            &Exclusions::new(),
        );
        assert!(none.applied.is_empty(), "a coded campaign needs its code");
        assert!(none.response.rejected_campaigns.is_empty());
        let p = price(
            &cart(&["summer", "old", "nope"]),
            &[coded, ended],
            &Exclusions::new(),
        );
        assert_eq!(p.response.applied_campaign_ids, vec!["c"]);
        assert_eq!(p.response.discounts[0].promo_code, "SUMMER");
        let codes: Vec<(String, i32)> = p
            .response
            .rejected_promo_codes
            .iter()
            .map(|r| (r.promo_code.clone(), r.reason_code))
            .collect();
        assert_eq!(
            codes,
            vec![
                ("old".into(), RejectionReason::Expired as i32),
                ("nope".into(), RejectionReason::CodeUnknown as i32)
            ]
        );
    }

    #[test]
    fn limits_budgets_and_exclusions_reject_with_their_reason() {
        let mut full = campaign("full", 0, true, percent(1000));
        full.max_redemptions = 3;
        full.redemption_count = 3;
        let mut mine = campaign("mine", 0, true, percent(1000));
        mine.max_per_customer = 1;
        mine.customer_count = 1;
        let mut poor = campaign("poor", 0, true, percent(1000));
        poor.budget = 1000;
        poor.budget_currency = "EUR".into();
        poor.budget_used = 900;
        let held = campaign("held", 0, true, percent(1000));
        let mut ex = Exclusions::new();
        ex.insert(
            "held".into(),
            (RejectionReason::LimitReached, "taken".into()),
        );
        let p = price(&cart(&[]), &[full, mine, poor, held], &ex);
        assert!(p.applied.is_empty());
        let mut r = reasons(&p);
        r.sort();
        assert_eq!(
            r,
            vec![
                ("full".into(), RejectionReason::LimitReached as i32),
                ("held".into(), RejectionReason::LimitReached as i32),
                ("mine".into(), RejectionReason::CustomerLimitReached as i32),
                ("poor".into(), RejectionReason::BudgetExhausted as i32),
            ]
        );
    }
}
