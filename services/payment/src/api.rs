//! The `payment.v1.PaymentService` implementation.

use mesh_contracts::common::v1::payment_method::Method;
use mesh_contracts::payment::v1::payment_service_server::PaymentService;
use mesh_contracts::payment::v1::*;
use mesh_runtime::DatabaseError;
use mesh_runtime::domain::{page_token, time};
use tonic::{Request, Response, Status};

use crate::engine::Engine;
use crate::error::{CommonErrors, PaymentError};
use crate::store::{self, TransactionFilter};
use crate::validate;

type Result<T> = std::result::Result<T, PaymentError>;

/// The payment service.
#[derive(Debug, Clone)]
pub struct PaymentApi {
    engine: Engine,
}

fn today() -> (u32, u32) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
    validate::year_month(now)
}

impl PaymentApi {
    /// The service over `engine`.
    pub fn new(engine: Engine) -> Self {
        Self { engine }
    }

    async fn charge(&self, req: ChargeRequest) -> Result<Payment> {
        let order_id = validate::id("order_id", &req.order_id)?;
        let (currency, amount) = validate::positive_money("amount", req.amount.as_ref())?;
        let customer_id = validate::optional_id("customer_id", &req.customer_id)?;
        let description = validate::text("description", &req.description, 200)?;
        let method = req.payment_method.and_then(|m| m.method).ok_or_else(|| {
            PaymentError::invalid("payment_method", "a card or a card_token is required")
        })?;
        let card_data = match &method {
            Method::Card(card) => Some(validate::card("payment_method.card", card, today())?),
            Method::CardToken(token) => {
                validate::id("payment_method.card_token", token)?;
                None
            }
        };
        let mut c = self.engine.db().acquire().await?;
        let existing = store::payment_of_order(&mut c, &order_id).await?;
        drop(c);
        if let Some(p) = existing {
            return self.settle(p).await;
        }
        let card = match (&method, card_data) {
            (_, Some(data)) => Some(self.engine.tokenize(&data).await?),
            (Method::CardToken(token), None) => {
                let mut c = self.engine.db().acquire().await?;
                store::card(&mut c, token).await?
            }
            (Method::Card(_), None) => None,
        };
        let token = match (&method, &card) {
            (_, Some(c)) => c.token.clone(),
            (Method::CardToken(t), None) => t.clone(),
            (Method::Card(_), None) => String::new(),
        };
        let mut tx = self.engine.db().begin().await?;
        let (p, _) = self
            .engine
            .create_charge(
                &mut tx,
                &order_id,
                &customer_id,
                &currency,
                amount,
                card.as_ref(),
                &token,
                &description,
                false,
            )
            .await?;
        tx.commit().await?;
        self.settle(p).await
    }

    /// A payment as the caller should see it: a PENDING one is driven to its end first.
    async fn settle(&self, p: store::PaymentRow) -> Result<Payment> {
        if p.status == PaymentStatus::Pending {
            return Ok(self.engine.drive_charge(&p.id).await?.to_proto());
        }
        Ok(p.to_proto())
    }

    async fn refund(&self, req: RefundRequest) -> Result<RefundResponse> {
        let payment_id = validate::id("payment_id", &req.payment_id)?;
        let key = validate::id("idempotency_key", &req.idempotency_key)?;
        if req.reason.trim().is_empty() {
            return Err(PaymentError::invalid("reason", "required"));
        }
        let reason = validate::text("reason", &req.reason, 500)?;
        let requested = match &req.amount {
            None => None,
            Some(m) => Some(validate::positive_money("amount", Some(m))?),
        };
        for round in 0..2 {
            let mut tx = self.engine.db().begin().await?;
            if let Some(r) = store::refund_by_key(&mut tx, &payment_id, &key).await? {
                drop(tx);
                return self.refund_response(r).await;
            }
            let p = store::payment(&mut tx, &payment_id)
                .await?
                .ok_or_else(|| PaymentError::not_found("payment", &payment_id))?;
            if !matches!(
                p.status,
                PaymentStatus::Succeeded | PaymentStatus::PartiallyRefunded
            ) {
                return Err(PaymentError::precondition(format!(
                    "payment `{payment_id}` is {}; only a captured payment can be refunded",
                    store::payment_status_name(p.status)
                )));
            }
            let amount = match &requested {
                Some((currency, _)) if *currency != p.currency => {
                    return Err(PaymentError::invalid(
                        "amount.currency_code",
                        format!("must be the payment's currency {}", p.currency),
                    ));
                }
                Some((_, a)) => *a,
                None if p.refundable() == 0 => {
                    return Err(PaymentError::precondition(format!(
                        "payment `{payment_id}` has nothing left to refund"
                    )));
                }
                None => p.refundable(),
            };
            let created = self
                .engine
                .create_refund(&mut tx, &p, amount, &reason, &key, false)
                .await;
            let refund = match created {
                // The same key raced us: answer with its refund.
                Err(e)
                    if round == 0 && matches!(e.database(), Some(DatabaseError::Conflict(_))) =>
                {
                    continue;
                }
                other => other?,
            };
            match tx.commit().await {
                Err(DatabaseError::Conflict(_)) if round == 0 => continue,
                other => other?,
            }
            return self.refund_response(refund).await;
        }
        Err(PaymentError::precondition(format!(
            "idempotency_key `{key}` is being used concurrently; retry"
        )))
    }

    async fn refund_response(&self, r: store::RefundRow) -> Result<RefundResponse> {
        let r = if r.status == TransactionStatus::Pending {
            self.engine.drive_refund(&r.id).await?
        } else {
            r
        };
        let p = self.engine.payment(&r.payment_id).await?;
        Ok(RefundResponse {
            refund: Some(r.to_proto()),
            payment: Some(p.to_proto()),
        })
    }

    async fn list(&self, req: ListTransactionsRequest) -> Result<ListTransactionsResponse> {
        let limit = page_token::page_size(req.page_size, 50, 500)?;
        let opt = |field: &str, v: &str| -> Result<Option<String>> {
            Ok(if v.is_empty() {
                None
            } else {
                Some(validate::id(field, v)?)
            })
        };
        let mut filter = TransactionFilter {
            payment_id: opt("payment_id", &req.payment_id)?,
            order_id: opt("order_id", &req.order_id)?,
            customer_id: opt("customer_id", &req.customer_id)?,
            start: time::from_optional_timestamp("start_time", req.start_time.as_ref())?,
            end: time::from_optional_timestamp("end_time", req.end_time.as_ref())?,
            before: None,
        };
        let listing = (
            "transactions",
            &filter.payment_id,
            &filter.order_id,
            &filter.customer_id,
            filter.start,
            filter.end,
        );
        filter.before = page_token::decode(&req.page_token, &listing)?;
        if let (Some(s), Some(e)) = (filter.start, filter.end)
            && e <= s
        {
            return Err(PaymentError::invalid(
                "end_time",
                "must be after start_time",
            ));
        }
        let mut c = self.engine.db().acquire().await?;
        let mut rows = store::transactions(&mut c, &filter, limit + 1).await?;
        let next_page_token = page_token::next_page(&mut rows, limit, &listing, |(created, t)| {
            (*created, t.id.clone())
        });
        Ok(ListTransactionsResponse {
            transactions: rows.into_iter().map(|(_, t)| t).collect(),
            next_page_token,
        })
    }
}

#[tonic::async_trait]
impl PaymentService for PaymentApi {
    async fn charge(
        &self,
        r: Request<ChargeRequest>,
    ) -> std::result::Result<Response<ChargeResponse>, Status> {
        let payment = PaymentApi::charge(self, r.into_inner()).await?;
        Ok(Response::new(ChargeResponse {
            payment: Some(payment),
        }))
    }

    async fn get_payment(
        &self,
        r: Request<GetPaymentRequest>,
    ) -> std::result::Result<Response<GetPaymentResponse>, Status> {
        let id = validate::id("id", &r.get_ref().id)?;
        let p = self.engine.payment(&id).await?;
        Ok(Response::new(GetPaymentResponse {
            payment: Some(p.to_proto()),
        }))
    }

    async fn list_transactions(
        &self,
        r: Request<ListTransactionsRequest>,
    ) -> std::result::Result<Response<ListTransactionsResponse>, Status> {
        Ok(Response::new(self.list(r.into_inner()).await?))
    }

    async fn refund(
        &self,
        r: Request<RefundRequest>,
    ) -> std::result::Result<Response<RefundResponse>, Status> {
        Ok(Response::new(
            PaymentApi::refund(self, r.into_inner()).await?,
        ))
    }

    async fn tokenize_card(
        &self,
        r: Request<TokenizeCardRequest>,
    ) -> std::result::Result<Response<TokenizeCardResponse>, Status> {
        let card = r
            .into_inner()
            .card
            .ok_or_else(|| PaymentError::invalid("card", "required"))?;
        let data = validate::card("card", &card, today())?;
        let row = self.engine.tokenize(&data).await?;
        Ok(Response::new(TokenizeCardResponse {
            card_token: row.token,
            card_brand: row.brand,
            card_last4: row.last4,
        }))
    }
}
