//! PlaceOrder: check the request, return the existing order for a repeated idempotency key,
//! price the lines at product, discount them at campaign, tokenize a raw card at payment, then
//! store the order as PENDING and emit `order.created` in one transaction.
//!
//! Nothing is written before every check passed, so a refused order leaves no trace. Campaign
//! is asked with `reserve`, so the redemptions of the campaigns it applies are held for this
//! order (`docs/campaign.md`); a PlaceOrder that fails after that (a refused card, a database
//! failure, a concurrent call with its key that won) asks campaign to release them at once
//! (`ReleaseHolds`), their expiry staying the fallback. Campaign never fails an order: when it
//! is down, slow (past `MESH_ORDER_CAMPAIGN_TIMEOUT`), refused by the client's breaker or
//! answers nonsense, the order goes at list price with `discounts_unavailable` set and
//! `order_campaign_fallbacks_total` counts it. A promo code that does not apply does not fail
//! the order either, as the proto specifies.
//!
//! Before any of that, a valid request is refused (`RESOURCE_EXHAUSTED`) while the saga is further
//! behind than `MESH_ORDER_MAX_SAGA_BACKLOG` ([`crate::admission`]); a retry of an order
//! already placed is refused too, and answered with its order once the saga caught up.

use std::sync::Arc;
use std::time::Duration;

use mesh_contracts::campaign::v1::{CartLine, PriceCartRequest, PriceCartResponse};
use mesh_contracts::common::v1::Money;

use mesh_contracts::common::v1::PaymentCard;
use mesh_contracts::common::v1::payment_method::Method;
use mesh_contracts::order::v1::{Order, PlaceOrderRequest};
use mesh_runtime::{Database, DatabaseError};
use prost::Message as _;
use sha2::{Digest as _, Sha256};

use crate::admission::Admission;
use crate::error::OrderError;
use crate::peers::{Card, Peers};
use crate::store::{self, NewLine, NewOrder};
use crate::{transitions, validate};

type Result<T> = std::result::Result<T, OrderError>;

/// How the order is paid, checked.
enum Payment<'a> {
    Card(&'a PaymentCard),
    Token(String),
}

fn payment(req: &PlaceOrderRequest) -> Result<Payment<'_>> {
    match req.payment_method.as_ref().and_then(|m| m.method.as_ref()) {
        None => Err(OrderError::invalid(
            "payment_method",
            "required: a card or a card_token",
        )),
        Some(Method::Card(card)) => {
            if card.number.trim().is_empty() {
                return Err(OrderError::invalid(
                    "payment_method.card.number",
                    "required",
                ));
            }
            Ok(Payment::Card(card))
        }
        Some(Method::CardToken(t)) => Ok(Payment::Token(validate::id(
            "payment_method.card_token",
            t,
        )?)),
    }
}

fn last4(number: &str) -> String {
    let digits: Vec<char> = number.chars().filter(char::is_ascii_digit).collect();
    digits[digits.len().saturating_sub(4)..].iter().collect()
}

/// The fingerprint of a request under its idempotency key: a SHA-256 of the customer and the
/// request with the card number cut to its last 4 digits and the CVC dropped (a card number is
/// never stored, not even hashed).
pub fn fingerprint(customer: &str, req: &PlaceOrderRequest) -> String {
    let mut canonical = req.clone();
    canonical.customer_id = customer.to_string();
    if let Some(Method::Card(card)) = canonical
        .payment_method
        .as_mut()
        .and_then(|m| m.method.as_mut())
    {
        card.number = last4(&card.number);
        card.cvc = String::new();
    }
    let digest = Sha256::digest(canonical.encode_to_vec());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// What campaign took off the lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discounts {
    /// Per line, in line order (minor units).
    pub per_line: Vec<i64>,
    /// The campaigns that gave them.
    pub applied: Vec<String>,
    /// Campaign could not price the order (all zero).
    pub unavailable: bool,
}

/// Campaign's answer for `lines`, checked: one line per line, same products, discounts in the
/// order's currency between 0 and the line's subtotal.
pub fn discounts_of(
    r: &PriceCartResponse,
    lines: &[NewLine],
    currency: &str,
) -> std::result::Result<Discounts, String> {
    if r.lines.len() != lines.len() {
        return Err(format!(
            "answered {} lines for {}",
            r.lines.len(),
            lines.len()
        ));
    }
    let mut per_line = Vec::with_capacity(lines.len());
    for (i, (priced, line)) in r.lines.iter().zip(lines).enumerate() {
        let d = priced.discount.clone().unwrap_or_default();
        let subtotal = line.unit_price_minor.saturating_mul(line.quantity);
        if priced.product_id != line.product_id
            || (d.amount_minor != 0 && d.currency_code != currency)
            || !(0..=subtotal).contains(&d.amount_minor)
        {
            return Err(format!("line {i}'s discount does not fit the line"));
        }
        per_line.push(d.amount_minor);
    }
    Ok(Discounts {
        per_line,
        applied: r.applied_campaign_ids.clone(),
        unavailable: false,
    })
}

/// Places orders.
#[derive(Debug, Clone)]
pub struct Placer {
    db: Database,
    peers: Peers,
    campaign_timeout: Duration,
    fallbacks: prometheus_client::metrics::counter::Counter,
    admission: Arc<Admission>,
}

impl Placer {
    /// A placer over `db`, calling `peers`, waiting for campaign at most the default 1s.
    pub fn new(db: Database, peers: Peers) -> Self {
        Self {
            db,
            peers,
            campaign_timeout: crate::DEFAULT_CAMPAIGN_TIMEOUT,
            fallbacks: Default::default(),
            admission: Arc::new(Admission::open()),
        }
    }

    /// Refuses new orders while `admission` says the saga is too far behind.
    pub fn with_admission(mut self, admission: Arc<Admission>) -> Self {
        self.admission = admission;
        self
    }

    /// Waits for campaign at most `timeout`; counts list-price fallbacks in `fallbacks`.
    pub fn with_campaign(
        mut self,
        timeout: Duration,
        fallbacks: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        self.campaign_timeout = timeout;
        self.fallbacks = fallbacks;
        self
    }

    /// The discounts of `lines` at campaign, holding its redemptions for `order_id`; zero
    /// discounts (and `unavailable`) when campaign cannot say.
    async fn discounts(
        &self,
        order_id: &str,
        customer: &str,
        currency: &str,
        lines: &[NewLine],
        categories: &[String],
        promo: &str,
    ) -> Discounts {
        let req = PriceCartRequest {
            lines: lines
                .iter()
                .zip(categories)
                .map(|(l, category)| CartLine {
                    product_id: l.product_id.clone(),
                    category_id: category.clone(),
                    quantity: l.quantity,
                    unit_price: Some(Money {
                        currency_code: currency.to_string(),
                        amount_minor: l.unit_price_minor,
                    }),
                })
                .collect(),
            promo_codes: if promo.is_empty() {
                Vec::new()
            } else {
                vec![promo.to_string()]
            },
            customer_id: customer.to_string(),
            order_id: order_id.to_string(),
            price_time: None,
            reserve: true,
        };
        let answer = match self.peers.price(req, self.campaign_timeout).await {
            Ok(r) => discounts_of(&r, lines, currency),
            Err(s) => Err(format!("{:?}: {}", s.code(), s.message())),
        };
        answer.unwrap_or_else(|why| {
            self.fallbacks.inc();
            tracing::warn!(order = order_id, reason = %why, "campaign could not price the order: placed at list price");
            Discounts {
                per_line: vec![0; lines.len()],
                applied: Vec::new(),
                unavailable: true,
            }
        })
    }

    async fn existing(&self, customer: &str, key: &str, hash: &str) -> Result<Option<Order>> {
        let mut conn = self.db.acquire().await?;
        let Some((id, stored)) = store::by_key(&mut conn, customer, key).await? else {
            return Ok(None);
        };
        if stored != hash {
            return Err(OrderError::KeyReused(key.to_string()));
        }
        store::get(&mut conn, &id)
            .await?
            .map(Some)
            .ok_or_else(|| OrderError::unavailable(format!("id: order `{id}` vanished; retry")))
    }

    /// Places `req` for `customer` (already resolved from the caller's token).
    pub async fn place(&self, customer: &str, req: &PlaceOrderRequest) -> Result<Order> {
        let checked = validate::place(req)?;
        let pay = payment(req)?;
        self.admission.admit(store::now_us())?;
        let hash = fingerprint(customer, req);
        if let Some(order) = self.existing(customer, &checked.key, &hash).await? {
            return Ok(order);
        }

        let products = self.peers.products(&checked.lines).await?;
        let id = uuid::Uuid::now_v7().to_string();
        let mut currency = checked.currency.clone();
        let mut lines = Vec::with_capacity(checked.lines.len());
        let mut subtotal: i64 = 0;
        for (i, (line, product)) in checked.lines.iter().zip(&products).enumerate() {
            let field = format!("lines[{i}].product_id");
            if !product.active {
                return Err(OrderError::precondition(
                    field,
                    format!("product `{}` is not active", line.product_id),
                ));
            }
            let price = product.price.as_ref().ok_or_else(|| {
                OrderError::precondition(
                    &field,
                    format!("product `{}` has no price", line.product_id),
                )
            })?;
            match &currency {
                None => currency = Some(price.currency_code.clone()),
                Some(c) if *c != price.currency_code => {
                    let (f, why) = if checked.currency.is_some() {
                        (
                            "currency_code".to_string(),
                            format!(
                                "is {c}, but product `{}` (lines[{i}]) is priced in {}; orders are not converted between currencies",
                                line.product_id, price.currency_code
                            ),
                        )
                    } else {
                        (
                            field.clone(),
                            format!(
                                "product `{}` is priced in {}, the order's earlier lines in {c}; one order has one currency",
                                line.product_id, price.currency_code
                            ),
                        )
                    };
                    return Err(OrderError::precondition(f, why));
                }
                Some(_) => {}
            }
            let line_total = price
                .amount_minor
                .checked_mul(line.quantity)
                .filter(|v| *v >= 0)
                .ok_or_else(|| {
                    OrderError::invalid(format!("lines[{i}].quantity"), "the line total overflows")
                })?;
            subtotal = subtotal
                .checked_add(line_total)
                .ok_or_else(|| OrderError::invalid("lines", "the order total overflows"))?;
            lines.push(NewLine {
                product_id: line.product_id.clone(),
                sku: product.sku.clone(),
                name: product.name.clone(),
                quantity: line.quantity,
                unit_price_minor: price.amount_minor,
                discount_minor: 0,
            });
        }
        let currency = currency.unwrap_or_default();
        let categories: Vec<String> = products.iter().map(|p| p.category_id.clone()).collect();
        let discounts = self
            .discounts(
                &id,
                customer,
                &currency,
                &lines,
                &categories,
                &checked.promo,
            )
            .await;
        for (line, d) in lines.iter_mut().zip(&discounts.per_line) {
            line.discount_minor = *d;
        }
        let discount: i64 = discounts.per_line.iter().sum();

        let card = match pay {
            Payment::Card(card) => match self.peers.tokenize(card).await {
                Ok(card) => card,
                Err(e) => return Err(self.abandon(&id, &discounts.applied, e).await),
            },
            Payment::Token(token) => Card {
                token,
                last4: String::new(),
            },
        };
        let held = discounts.applied.clone();
        let new = NewOrder {
            id,
            customer_id: customer.to_string(),
            idempotency_key: checked.key.clone(),
            request_hash: hash.clone(),
            currency_code: currency,
            lines,
            subtotal_minor: subtotal,
            discount_minor: discount,
            applied_campaign_ids: discounts.applied,
            discounts_unavailable: discounts.unavailable,
            store_id: checked.store.clone(),
            total_minor: subtotal - discount,
            shipping_address: checked.address,
            promo_code: checked.promo,
            card_token: card.token,
            card_last4: card.last4,
            now_us: store::now_us(),
        };
        let order = match self.write(&new).await {
            Ok(written) => written,
            Err(e) if matches!(e.database(), Some(DatabaseError::Conflict(_))) => {
                // A concurrent call with the same key won: answer with its order (this call's
                // holds, made for an order id that will never exist, go back).
                self.abandon(&new.id, &held, e).await;
                return self
                    .existing(customer, &checked.key, &hash)
                    .await?
                    .ok_or_else(|| OrderError::unavailable("idempotency_key: a concurrent request with this key did not finish; retry"));
            }
            Err(e) => return Err(self.abandon(&new.id, &held, e).await),
        };
        Ok(order)
    }

    /// Writes `new` as PENDING with `order.created` and commits: on Postgres one statement on
    /// its own (the order, its lines, its first history entry and the outbox row), elsewhere a
    /// transaction. A failure whose answer was lost may still have committed: the holds are
    /// then left to order.created or, when nothing was written, to their expiry.
    async fn write(&self, new: &NewOrder) -> Result<Order> {
        let order = new.written();
        self.db
            .write_and_emit(&store::insert_writes(new), transitions::created(&order))
            .await?;
        Ok(order)
    }

    /// A PlaceOrder that priced order `order_id` failed with `error` before the order was
    /// written: campaign releases the redemptions it held for the `applied` campaigns now,
    /// rather than at the hold's expiry (`docs/campaign.md`). Best effort, within the campaign
    /// timeout: when campaign cannot answer, the expiry still releases them. Returns `error`.
    async fn abandon(&self, order_id: &str, applied: &[String], error: OrderError) -> OrderError {
        if applied.is_empty() {
            return error;
        }
        match self
            .peers
            .release_holds(order_id, self.campaign_timeout)
            .await
        {
            Ok(released) => {
                tracing::info!(order = order_id, released, %error, "placing failed after pricing: campaign's holds released");
            }
            Err(s) => {
                tracing::warn!(order = order_id, code = ?s.code(), message = s.message(), "placing failed after pricing and campaign could not release its holds: they lapse at their expiry");
            }
        }
        error
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_contracts::common::v1::PaymentMethod;

    fn with_card(number: &str, cvc: &str) -> PlaceOrderRequest {
        PlaceOrderRequest {
            idempotency_key: "k".into(),
            payment_method: Some(PaymentMethod {
                method: Some(Method::Card(PaymentCard {
                    number: number.into(),
                    expiry: "12/30".into(),
                    cvc: cvc.into(),
                    holder_name: String::new(),
                })),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn fingerprints_ignore_the_cvc_and_hide_the_card_number() {
        let a = fingerprint("c1", &with_card("4242 4242 4242 4242", "123"));
        assert_eq!(a, fingerprint("c1", &with_card("4242424242424242", "999")));
        assert_ne!(a, fingerprint("c2", &with_card("4242424242424242", "123")));
        assert_ne!(a, fingerprint("c1", &with_card("4000000000000002", "123")));
        assert_eq!(last4("4242 4242 4242 4241"), "4241");
        assert_eq!(a.len(), 64);
    }
}
