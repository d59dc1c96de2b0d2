//! What a refund request comes to, before anything is written: which units of which lines, what
//! happens to their stock, and how much money goes back. Pure: the order's lines in, the plan
//! (or the first bad field) out.
//!
//! **Amounts.** A line's total (list price times units, minus its discount) is shared out over
//! its units by cumulative rounding down: refunding units `r+1 ..= r+q` of a line of `n` units
//! and total `t` returns `floor(t*(r+q)/n) - floor(t*r/n)`. However the units are split over
//! several refunds, refunding every unit of a line returns exactly its total, and the whole order
//! exactly what was charged.

use std::collections::HashMap;

use mesh_contracts::order::v1::{RefundLine, StockDisposition};

use crate::error::OrderError;
use crate::validate;

type Result<T> = std::result::Result<T, OrderError>;

/// An order line as a refund sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoughtLine {
    /// Position in the order.
    pub line_no: i64,
    /// Product id.
    pub product_id: String,
    /// Units bought.
    pub quantity: i64,
    /// Units refunded before.
    pub refunded: i64,
    /// The line's total (after its discount), minor units.
    pub total_minor: i64,
}

/// One line of a planned refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedLine {
    /// The order line it refunds.
    pub line_no: i64,
    /// Product id.
    pub product_id: String,
    /// Units.
    pub quantity: i64,
    /// Money back for them, minor units.
    pub amount_minor: i64,
    /// Restock or write off (never unspecified).
    pub disposition: StockDisposition,
}

/// A planned refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Its lines, in the order's line order.
    pub lines: Vec<PlannedLine>,
    /// The sum of the lines' amounts.
    pub amount_minor: i64,
    /// Every unit of the order is refunded once this one is.
    pub whole: bool,
}

/// The share of `total` for units `from+1 ..= to` of `n` (see the module's doc).
pub fn share(total: i64, n: i64, from: i64, to: i64) -> i64 {
    if n <= 0 {
        return 0;
    }
    let at = |k: i64| i128::from(total) * i128::from(k) / i128::from(n);
    i64::try_from(at(to) - at(from)).unwrap_or(0)
}

/// A disposition value from `field`: unspecified is `default`, an unknown number is refused.
fn disposition(field: &str, value: i32, default: StockDisposition) -> Result<StockDisposition> {
    match StockDisposition::try_from(value) {
        Ok(StockDisposition::Unspecified) => Ok(default),
        Ok(d) => Ok(d),
        Err(_) => Err(OrderError::invalid(field, "not a StockDisposition value")),
    }
}

/// Plans refunding `requested` (empty: every unit left) of an order with `bought` lines, with
/// `default` (the request's `disposition`) for lines that name none.
pub fn plan(bought: &[BoughtLine], requested: &[RefundLine], default: i32) -> Result<Plan> {
    let default = disposition("disposition", default, StockDisposition::Restock)?;
    let mut lines = Vec::new();
    if requested.is_empty() {
        for b in bought.iter().filter(|b| b.refunded < b.quantity) {
            lines.push(PlannedLine {
                line_no: b.line_no,
                product_id: b.product_id.clone(),
                quantity: b.quantity - b.refunded,
                amount_minor: share(b.total_minor, b.quantity, b.refunded, b.quantity),
                disposition: default,
            });
        }
        if lines.is_empty() {
            return Err(OrderError::precondition(
                "lines",
                "every unit of the order is refunded already",
            ));
        }
    } else {
        if requested.len() > validate::MAX_LINES {
            return Err(OrderError::invalid(
                "lines",
                format!("at most {} lines", validate::MAX_LINES),
            ));
        }
        let by_product: HashMap<&str, &BoughtLine> =
            bought.iter().map(|b| (b.product_id.as_str(), b)).collect();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, r) in requested.iter().enumerate() {
            let field = format!("lines[{i}].product_id");
            let product = validate::product_id(&field, &r.product_id)?;
            if let Some(first) = seen.insert(product.clone(), i) {
                return Err(OrderError::invalid(
                    field,
                    format!("product `{product}` is already refunded by lines[{first}]"),
                ));
            }
            let Some(b) = by_product.get(product.as_str()) else {
                return Err(OrderError::invalid(
                    field,
                    format!("product `{product}` is not a line of the order"),
                ));
            };
            let quantity_field = format!("lines[{i}].quantity");
            if r.quantity < 1 {
                return Err(OrderError::invalid(quantity_field, "at least 1"));
            }
            if r.quantity > b.quantity {
                return Err(OrderError::invalid(
                    quantity_field,
                    format!(
                        "{} units asked, but only {} were bought",
                        r.quantity, b.quantity
                    ),
                ));
            }
            let left = b.quantity - b.refunded;
            if r.quantity > left {
                return Err(OrderError::precondition(
                    quantity_field,
                    format!(
                        "{} units asked, but {} of the {} bought are refunded already ({left} left)",
                        r.quantity, b.refunded, b.quantity
                    ),
                ));
            }
            lines.push(PlannedLine {
                line_no: b.line_no,
                product_id: product,
                quantity: r.quantity,
                amount_minor: share(
                    b.total_minor,
                    b.quantity,
                    b.refunded,
                    b.refunded + r.quantity,
                ),
                disposition: disposition(
                    &format!("lines[{i}].disposition"),
                    r.disposition,
                    default,
                )?,
            });
        }
        lines.sort_by_key(|l| l.line_no);
    }
    let refunding: HashMap<i64, i64> = lines.iter().map(|l| (l.line_no, l.quantity)).collect();
    let whole = bought
        .iter()
        .all(|b| b.refunded + refunding.get(&b.line_no).copied().unwrap_or(0) >= b.quantity);
    Ok(Plan {
        amount_minor: lines.iter().map(|l| l.amount_minor).sum(),
        lines,
        whole,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bought(no: i64, q: i64, refunded: i64, total: i64) -> BoughtLine {
        BoughtLine {
            line_no: no,
            product_id: format!("0190a0b0-0000-7000-8000-00000000000{no}"),
            quantity: q,
            refunded,
            total_minor: total,
        }
    }

    fn ask(b: &BoughtLine, q: i64) -> RefundLine {
        RefundLine {
            product_id: b.product_id.clone(),
            quantity: q,
            ..Default::default()
        }
    }

    fn field(e: OrderError) -> String {
        e.to_string().split(':').next().unwrap().to_string()
    }

    #[test]
    fn shares_add_up_to_the_line_total_however_split() {
        // 3 units for 100 (a discount made it uneven): 33 + 33 + 34.
        assert_eq!(share(100, 3, 0, 1), 33);
        assert_eq!(share(100, 3, 1, 2), 33);
        assert_eq!(share(100, 3, 2, 3), 34);
        assert_eq!(share(100, 3, 0, 3), 100);
        assert_eq!(share(100, 3, 1, 3) + share(100, 3, 0, 1), 100);
    }

    #[test]
    fn the_whole_order_refunds_what_is_left_with_the_default_disposition() {
        let lines = [bought(0, 2, 1, 500), bought(1, 1, 0, 99)];
        let p = plan(&lines, &[], StockDisposition::WriteOff as i32).unwrap();
        assert!(p.whole);
        assert_eq!(p.amount_minor, 250 + 99);
        assert_eq!(p.lines.len(), 2);
        assert_eq!(p.lines[0].quantity, 1);
        assert!(
            p.lines
                .iter()
                .all(|l| l.disposition == StockDisposition::WriteOff)
        );
        let done = [bought(0, 2, 2, 500)];
        assert_eq!(field(plan(&done, &[], 0).unwrap_err()), "lines");
    }

    #[test]
    fn a_partial_refund_names_each_bad_field() {
        let lines = [bought(0, 2, 1, 500), bought(1, 1, 0, 99)];
        let mut one = ask(&lines[1], 1);
        one.disposition = StockDisposition::WriteOff as i32;
        let p = plan(&lines, &[one], 0).unwrap();
        assert!(!p.whole);
        assert_eq!(p.amount_minor, 99);
        assert_eq!(p.lines[0].disposition, StockDisposition::WriteOff);
        let p = plan(&lines, &[ask(&lines[1], 1), ask(&lines[0], 1)], 0).unwrap();
        assert!(p.whole, "the last units of every line");
        assert_eq!(p.lines[0].line_no, 0, "in line order");
        assert_eq!(p.lines[0].disposition, StockDisposition::Restock);

        let bad = |r: &[RefundLine], d: i32| field(plan(&lines, r, d).unwrap_err());
        assert_eq!(bad(&[ask(&lines[0], 3)], 0), "lines[0].quantity");
        assert_eq!(bad(&[ask(&lines[0], 2)], 0), "lines[0].quantity");
        assert_eq!(bad(&[ask(&lines[0], 0)], 0), "lines[0].quantity");
        assert_eq!(
            bad(&[ask(&lines[1], 1), ask(&lines[1], 1)], 0),
            "lines[1].product_id"
        );
        let mut stranger = ask(&lines[0], 1);
        stranger.product_id = "0190a0b0-0000-7000-8000-0000000000ff".into();
        assert_eq!(bad(&[stranger], 0), "lines[0].product_id");
        assert_eq!(bad(&[ask(&lines[1], 1)], 7), "disposition");
        let mut odd = ask(&lines[1], 1);
        odd.disposition = 9;
        assert_eq!(bad(&[odd], 0), "lines[0].disposition");
        // Over the bought units: INVALID_ARGUMENT; over what is left: FAILED_PRECONDITION.
        let status = |r: &[RefundLine]| tonic::Status::from(plan(&lines, r, 0).unwrap_err()).code();
        assert_eq!(status(&[ask(&lines[0], 3)]), tonic::Code::InvalidArgument);
        assert_eq!(
            status(&[ask(&lines[0], 2)]),
            tonic::Code::FailedPrecondition
        );
    }
}
