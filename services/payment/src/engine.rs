//! Charges and refunds: the side effects outside the database, made crash-safe.
//!
//! A charge is a PENDING `payments` row first (committed, with the order id unique), then a
//! provider call with idempotency key = the order id, outside any transaction, then a
//! conditional finish (`WHERE status = 'PENDING'`) that appends the ledger entry and emits
//! `payment.succeeded` / `payment.failed` in one transaction. A crash at any point leaves the
//! row PENDING; the [`crate::worker`] takes it up again (after its lease) and calls the provider
//! with the same key, which answers the first result: at most one capture per order.
//!
//! Refunds follow the same pattern (PENDING `refunds` row holding the amount on the payment,
//! provider key = the refund id, conditional finish emitting `payment.refunded`).

use std::sync::Arc;
use std::time::Duration;

use mesh_contracts::events::v1::{
    PaymentFailed, PaymentRefundFailed, PaymentRefunded, PaymentSucceeded,
};
use mesh_contracts::payment::v1::{
    DeclineReason, PaymentStatus, TransactionKind, TransactionStatus,
};
use mesh_runtime::outbox::{Event, Tx};
use mesh_runtime::spans::TracedWork;
use mesh_runtime::sql_write::Write;
use mesh_runtime::storage::Backend;
use mesh_runtime::work_queue::{Leased, WorkHandle};
use mesh_runtime::{CallContext, Database};

use crate::error::{CommonErrors, PaymentError};
use crate::provider::{CardData, ChargeCall, Outcome, PaymentProvider, ProviderError, RefundCall};
use crate::settings::PaymentSettings;
use crate::store::{self, CardRow, PaymentRow, RefundRow, ReservedCharge, SagaOrder, now_micros};
use crate::work::Work;

type Result<T> = std::result::Result<T, PaymentError>;

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt<T> {
    /// Finished (or already finished by someone else).
    Final(T),
    /// Not finished: try again after the delay. `unknown` when the provider's answer was lost
    /// (timeout), so the operation may have happened.
    Again {
        /// The delay.
        after: Duration,
        /// Whether the outcome is unknown.
        unknown: bool,
    },
}

/// Charges and refunds over one database and provider.
#[derive(Debug, Clone)]
pub struct Engine {
    db: Database,
    provider: Arc<dyn PaymentProvider>,
    settings: PaymentSettings,
    work: WorkHandle<Work>,
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

fn current_traceparent() -> String {
    CallContext::current()
        .map(|c| c.trace.to_string())
        .unwrap_or_default()
}

/// What finishing a PENDING payment with a provider's outcome writes and emits.
struct Finished {
    status: PaymentStatus,
    reason: DeclineReason,
    message: String,
    reference: String,
    event: Event,
}

impl Finished {
    /// The finish of `p` with `outcome` (`retryable`: the provider kept failing).
    fn of(p: &PaymentRow, outcome: &Outcome, retryable: bool) -> Self {
        let (status, reason, message, reference) = match outcome {
            Outcome::Done { reference } => (
                PaymentStatus::Succeeded,
                DeclineReason::Unspecified,
                String::new(),
                reference.clone(),
            ),
            Outcome::Declined { reason, message } => (
                PaymentStatus::Failed,
                *reason,
                message.clone(),
                String::new(),
            ),
        };
        let amount = Some(mesh_contracts::common::v1::Money {
            currency_code: p.currency.clone(),
            amount_minor: p.amount_minor,
        });
        let event = if status == PaymentStatus::Succeeded {
            Event::new(
                "payment.succeeded",
                &p.id,
                "PaymentSucceeded",
                &PaymentSucceeded {
                    payment_id: p.id.clone(),
                    order_id: p.order_id.clone(),
                    customer_id: p.customer_id.clone(),
                    amount,
                    card_brand: p.card_brand.clone(),
                    card_last4: p.card_last4.clone(),
                },
            )
        } else {
            Event::new(
                "payment.failed",
                &p.id,
                "PaymentFailed",
                &PaymentFailed {
                    payment_id: p.id.clone(),
                    order_id: p.order_id.clone(),
                    customer_id: p.customer_id.clone(),
                    amount,
                    reason: reason as i32,
                    message: message.clone(),
                    retryable,
                },
            )
        };
        Self {
            status,
            reason,
            message,
            reference,
            event: event.correlation(p.order_id.clone()),
        }
    }

    /// Its writes: the finish of `p` (with `saga_open`, only while the order's saga row says
    /// it is not cancelled: [`store::finish_payment`]), then the charge's ledger entry, gated
    /// on the finish.
    fn writes(&self, p: &PaymentRow, saga_open: bool, now: i64) -> [Write; 2] {
        let status = if self.status == PaymentStatus::Succeeded {
            TransactionStatus::Succeeded
        } else {
            TransactionStatus::Failed
        };
        [
            store::finish_payment(
                p,
                saga_open,
                self.status,
                self.reason,
                &self.message,
                &self.reference,
                now,
            ),
            store::transaction_write(
                &new_id(),
                p,
                TransactionKind::Charge,
                p.amount_minor,
                status,
                &self.message,
                &self.reference,
                now,
            ),
        ]
    }
}

impl Engine {
    /// An engine over `db` and `provider`, handing the work it creates to the worker's queue
    /// through `work`.
    pub fn new(
        db: Database,
        provider: Arc<dyn PaymentProvider>,
        settings: PaymentSettings,
        work: WorkHandle<Work>,
    ) -> Self {
        Self {
            db,
            provider,
            settings,
            work,
        }
    }

    /// The database.
    pub fn db(&self) -> &Database {
        &self.db
    }

    /// The settings.
    pub fn settings(&self) -> &PaymentSettings {
        &self.settings
    }

    /// The worker's queue, to which new work is handed once committed.
    pub fn work(&self) -> &WorkHandle<Work> {
        &self.work
    }

    /// Registers a card with the provider and stores its token.
    pub async fn tokenize(&self, card: &CardData) -> Result<CardRow> {
        let provided =
            tokio::time::timeout(self.settings.provider_timeout, self.provider.tokenize(card))
                .await
                .map_err(|_| ProviderError::Timeout)??;
        let row = CardRow {
            token: format!("tok_{}", uuid::Uuid::now_v7().simple()),
            provider_ref: provided.reference,
            brand: provided.brand,
            last4: provided.last4,
        };
        let mut c = self.db.acquire().await?;
        store::insert_card(&mut c, &row, card.exp_month, card.exp_year).await?;
        Ok(row)
    }

    /// The saga's charge request for order `o` (known, reserved, not cancelled) in `tx`: the
    /// PENDING payment, inserted already claimed by this process's worker (its first attempt
    /// counted, leased) by one statement that copies the card's brand and last 4 digits from its
    /// token and does nothing when the order has a payment already; the row goes to the worker
    /// after the commit, which starts from it without claiming it.
    /// When that inserts nothing (the order has a payment, or the token is unknown) or the amount
    /// is zero, [`Engine::create_charge`] decides as for a `Charge` call. Returns the order's
    /// payment and whether this call created it.
    pub async fn request_saga_charge(
        &self,
        tx: &mut Tx,
        o: &SagaOrder,
    ) -> Result<(PaymentRow, bool)> {
        if o.amount_minor > 0 {
            let now = now_micros();
            let p = PaymentRow {
                id: new_id(),
                order_id: o.order_id.clone(),
                customer_id: o.customer_id.clone(),
                currency: o.currency.clone(),
                amount_minor: o.amount_minor,
                refund_held_minor: 0,
                refunded_minor: 0,
                status: PaymentStatus::Pending,
                decline_reason: DeclineReason::Unspecified,
                decline_message: String::new(),
                card_token: o.card_token.clone(),
                card_brand: String::new(),
                card_last4: String::new(),
                provider_reference: String::new(),
                description: String::new(),
                traceparent: current_traceparent(),
                attempts: 0,
                created_at: now,
                updated_at: now,
            };
            let lease_until = now + micros(self.settings.lease());
            if let Some(claimed) = store::insert_leased_payment(tx, &p, now, lease_until).await? {
                return Ok((self.hand_over(tx, claimed), true));
            }
        }
        let card = store::card(tx, &o.card_token).await?;
        self.create_charge(
            tx,
            &o.order_id,
            &o.customer_id,
            &o.currency,
            o.amount_minor,
            card.as_ref(),
            &o.card_token,
            "",
            true,
        )
        .await
    }

    /// Hands the payment `claimed` (inserted leased to this process, with its card's provider
    /// reference) to the worker once `tx` commits; returns the payment.
    fn hand_over(&self, tx: &mut Tx, claimed: (PaymentRow, String)) -> PaymentRow {
        let p = claimed.0.clone();
        let work = Work::Leased(Leased::new(p.id.clone(), claimed));
        self.work.push_after_commit(tx, work);
        p
    }

    /// Payment's `inventory.reserved` for order `order_id` on Postgres as one statement
    /// ([`store::reserved_and_charge`]): the `reserved` flag, and the charge inserted leased
    /// (handed to the worker after the commit) when the order can be charged. `false` when the
    /// step needs the general path (the flag upsert and [`Engine::request_saga_charge`]).
    pub async fn reserved_and_charge(&self, tx: &mut Tx, order_id: &str) -> Result<bool> {
        let now = now_micros();
        let lease_until = now + micros(self.settings.lease());
        let id = new_id();
        let traceparent = current_traceparent();
        match store::reserved_and_charge(tx, order_id, &id, &traceparent, now, lease_until).await? {
            ReservedCharge::General => Ok(false),
            ReservedCharge::Done(None) => Ok(true),
            ReservedCharge::Done(Some(claimed)) => {
                let p = self.hand_over(tx, *claimed);
                tracing::info!(order = %order_id, payment = %p.id, status = ?p.status, "charge requested");
                Ok(true)
            }
        }
    }

    /// Creates the payment of `order_id` in `tx` unless it has one: PENDING (due at once when
    /// `due_now`, else leased to the caller who will drive it) when the card is known, FAILED
    /// with `INVALID_TOKEN` (and `payment.failed`) when not; an amount of zero succeeds without
    /// a provider call. Returns the order's payment and whether this call created it.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_charge(
        &self,
        tx: &mut Tx,
        order_id: &str,
        customer_id: &str,
        currency: &str,
        amount_minor: i64,
        card: Option<&CardRow>,
        card_token: &str,
        description: &str,
        due_now: bool,
    ) -> Result<(PaymentRow, bool)> {
        if let Some(existing) = store::payment_of_order(tx, order_id).await? {
            return Ok((existing, false));
        }
        let now = now_micros();
        let mut p = PaymentRow {
            id: new_id(),
            order_id: order_id.into(),
            customer_id: customer_id.into(),
            currency: currency.into(),
            amount_minor,
            refund_held_minor: 0,
            refunded_minor: 0,
            status: PaymentStatus::Pending,
            decline_reason: DeclineReason::Unspecified,
            decline_message: String::new(),
            card_token: card_token.into(),
            card_brand: card.map(|c| c.brand.clone()).unwrap_or_default(),
            card_last4: card.map(|c| c.last4.clone()).unwrap_or_default(),
            provider_reference: String::new(),
            description: description.into(),
            traceparent: current_traceparent(),
            attempts: 0,
            created_at: now,
            updated_at: now,
        };
        let next = if due_now {
            now
        } else {
            now + micros(self.settings.lease())
        };
        if !store::insert_payment(tx, &p, next).await? {
            // Created concurrently (same order id): answer with that one.
            let existing = store::payment_of_order(tx, order_id)
                .await?
                .ok_or_else(|| PaymentError::not_found("payment of order", order_id))?;
            return Ok((existing, false));
        }
        if card.is_none() {
            let message = format!("card token `{card_token}` is unknown");
            p.status = PaymentStatus::Failed;
            p.decline_reason = DeclineReason::InvalidToken;
            p.decline_message = message.clone();
            self.finish_in(
                tx,
                &p,
                &Outcome::Declined {
                    reason: DeclineReason::InvalidToken,
                    message,
                },
                false,
                now,
            )
            .await?;
        } else if amount_minor == 0 {
            p.status = PaymentStatus::Succeeded;
            self.finish_in(
                tx,
                &p,
                &Outcome::Done {
                    reference: String::new(),
                },
                false,
                now,
            )
            .await?;
        } else if due_now {
            self.work.push_after_commit(tx, Work::Charge(p.id.clone()));
        }
        Ok((p, true))
    }

    /// Finishes the PENDING payment `p` with `outcome` after the provider answered: on Postgres
    /// first one statement without a transaction, the finish (done only while the order's saga
    /// row, locked by it, says not cancelled: [`store::finish_payment`]) with its ledger
    /// entry and its event; when that changes nothing (the order was cancelled meanwhile, the
    /// payment is a `Charge` call's or finished already) and elsewhere, [`Engine::finish_in`] in
    /// a transaction. `false` if it was not PENDING.
    async fn finish(
        &self,
        p: &PaymentRow,
        outcome: &Outcome,
        retryable: bool,
        now: i64,
    ) -> Result<bool> {
        if matches!(self.db.backend(), Backend::Postgres { .. }) {
            let finish = Finished::of(p, outcome, retryable);
            let writes = finish.writes(p, true, now);
            if self
                .db
                .write_and_emit(&writes, finish.event)
                .await?
                .is_some()
            {
                return Ok(true);
            }
        }
        let mut tx = self.db.begin().await?;
        let finished = self.finish_in(&mut tx, p, outcome, retryable, now).await?;
        tx.commit().await?;
        Ok(finished)
    }

    /// Finishes the PENDING payment `p` with `outcome` in `tx`: status, ledger entry, event; a
    /// capture of an order already cancelled is refunded at once. `false` if it was not PENDING.
    async fn finish_in(
        &self,
        tx: &mut Tx,
        p: &PaymentRow,
        outcome: &Outcome,
        retryable: bool,
        now: i64,
    ) -> Result<bool> {
        // Saga row first, then the payment: the same lock order as the saga handlers.
        let saga = store::lock_saga_order(tx, &p.order_id).await?;
        let finish = Finished::of(p, outcome, retryable);
        // The finish gates the ledger entry and the event: on Postgres one statement.
        let writes = finish.writes(p, false, now);
        let (status, reference) = (finish.status, finish.reference.clone());
        if tx.write_and_emit(&writes, finish.event).await?.is_none() {
            return Ok(false);
        }
        if status == PaymentStatus::Succeeded
            && p.amount_minor > 0
            && saga.is_some_and(|o| o.cancelled)
        {
            let mut captured = p.clone();
            captured.status = PaymentStatus::Succeeded;
            captured.provider_reference = reference;
            self.refund_cancelled(tx, &captured).await?;
        }
        Ok(true)
    }

    /// In `tx`: refunds what is left of `p` because its order was cancelled (key
    /// `cancel:<order id>`, so it happens once); nothing if nothing is left.
    pub async fn refund_cancelled(&self, tx: &mut Tx, p: &PaymentRow) -> Result<Option<RefundRow>> {
        let key = format!("cancel:{}", p.order_id);
        if let Some(existing) = store::refund_by_key(tx, &p.id, &key).await? {
            return Ok(Some(existing));
        }
        let amount = p.refundable();
        if amount == 0 {
            return Ok(None);
        }
        let refund = self
            .create_refund(tx, p, amount, "order cancelled", &key, true)
            .await?;
        Ok(Some(refund))
    }

    /// In `tx`: holds `amount` of `p` and records a PENDING refund (due at once when `due_now`,
    /// else leased to the caller). FAILED_PRECONDITION if less than `amount` is refundable.
    pub async fn create_refund(
        &self,
        tx: &mut Tx,
        p: &PaymentRow,
        amount: i64,
        reason: &str,
        key: &str,
        due_now: bool,
    ) -> Result<RefundRow> {
        let now = now_micros();
        if !store::hold_refund(tx, &p.id, amount, now).await? {
            return Err(PaymentError::precondition(format!(
                "amount: {amount} exceeds the {} {} left to refund on payment `{}`",
                p.refundable(),
                p.currency,
                p.id
            )));
        }
        let refund = RefundRow {
            id: new_id(),
            payment_id: p.id.clone(),
            idempotency_key: key.into(),
            currency: p.currency.clone(),
            amount_minor: amount,
            reason: reason.into(),
            status: TransactionStatus::Pending,
            provider_reference: String::new(),
            traceparent: current_traceparent(),
            created_at: now,
        };
        let next = if due_now {
            now
        } else {
            now + micros(self.settings.lease())
        };
        store::insert_refund(tx, &refund, next).await?;
        if due_now {
            self.work
                .push_after_commit(tx, Work::Refund(refund.id.clone()));
        }
        Ok(refund)
    }

    /// The payment `id`.
    pub async fn payment(&self, id: &str) -> Result<PaymentRow> {
        let mut c = self.db.acquire().await?;
        store::payment(&mut c, id)
            .await?
            .ok_or_else(|| PaymentError::not_found("payment", id))
    }

    /// One attempt at the PENDING payment `id`: claim it (with `due_only`, only if due: a
    /// worker), call the provider, finish it ([`Engine::charge_claimed`]).
    pub async fn attempt_charge(&self, id: &str, due_only: bool) -> Result<Attempt<PaymentRow>> {
        let now = now_micros();
        let lease_until = now + micros(self.settings.lease());
        let claimed = {
            let mut c = self.db.acquire().await?;
            store::claim_payment(&mut c, id, now, lease_until, due_only).await?
        };
        let Some((p, card_ref)) = claimed else {
            if due_only {
                // A worker lost the race for it (another replica has it, or it is finished).
                return Ok(Attempt::Again {
                    after: self.settings.retry.poll_interval,
                    unknown: true,
                });
            }
            let p = self.payment(id).await?;
            return Ok(if p.status == PaymentStatus::Pending {
                // Leased by another worker or caller: look again later.
                Attempt::Again {
                    after: self.settings.retry.poll_interval,
                    unknown: true,
                }
            } else {
                Attempt::Final(p)
            });
        };
        self.charge_claimed(p, card_ref, due_only).await
    }

    /// The rest of an attempt at the payment `p`, claimed by this process (by
    /// [`Engine::attempt_charge`], or inserted so by the saga's charge request) with its card's
    /// provider reference `card_ref`: call the provider, finish it (or defer it: with `due_only`
    /// by the retry backoff, as a worker does, else by the lease, as a caller driving it does).
    pub async fn charge_claimed(
        &self,
        p: PaymentRow,
        card_ref: String,
        due_only: bool,
    ) -> Result<Attempt<PaymentRow>> {
        let id = p.id.clone();
        let id = id.as_str();
        let attempt = p.attempts;
        let call = ChargeCall {
            idempotency_key: p.order_id.clone(),
            card: card_ref,
            currency: p.currency.clone(),
            amount_minor: p.amount_minor,
        };
        // One `charge` span for the provider call and the transaction recording its outcome.
        let work = TracedWork::continuing(self.db.service(), "charge", &p.traceparent);
        let answer = work
            .run(async {
                tokio::time::timeout(self.settings.provider_timeout, self.provider.charge(&call))
                    .await
                    .unwrap_or(Err(ProviderError::Timeout))
            })
            .await;
        let attempt = u32::try_from(attempt).unwrap_or(u32::MAX);
        let (outcome, retryable) = match answer {
            Ok(outcome) => (outcome, false),
            Err(ProviderError::Unavailable(message))
                if attempt >= self.settings.retry.max_attempts =>
            {
                (
                    Outcome::Declined {
                        reason: DeclineReason::ProviderError,
                        message: format!("gave up after {attempt} attempts: {message}"),
                    },
                    true,
                )
            }
            Err(e) => {
                let unknown = e == ProviderError::Timeout;
                tracing::warn!(payment = %p.id, order = %p.order_id, attempt, error = %e, "charge not finished; will retry with the same idempotency key");
                let after = self.settings.retry.backoff(attempt);
                // A caller driving it keeps its lease; the worker makes it due after the backoff.
                let hold = if due_only {
                    after
                } else {
                    self.settings.lease()
                };
                let mut c = self.db.acquire().await?;
                store::defer_payment(&mut c, id, now_micros() + micros(hold)).await?;
                return Ok(Attempt::Again { after, unknown });
            }
        };
        let finished_at = now_micros();
        let finished = work
            .run(self.finish(&p, &outcome, retryable, finished_at))
            .await?;
        if !finished {
            // Someone else finished it first: theirs is the answer.
            return Ok(Attempt::Final(self.payment(id).await?));
        }
        let mut done = p;
        done.updated_at = finished_at;
        match outcome {
            Outcome::Done { reference } => {
                done.status = PaymentStatus::Succeeded;
                done.provider_reference = reference;
            }
            Outcome::Declined { reason, message } => {
                done.status = PaymentStatus::Failed;
                done.decline_reason = reason;
                done.decline_message = message;
            }
        }
        Ok(Attempt::Final(done))
    }

    /// Drives the payment `id` from a caller's request: attempts until it is final, giving up
    /// (leaving it PENDING for the worker) when the provider's answer is lost.
    pub async fn drive_charge(&self, id: &str) -> Result<PaymentRow> {
        loop {
            match self.attempt_charge(id, false).await? {
                Attempt::Final(p) => return Ok(p),
                Attempt::Again { unknown: true, .. } => return self.payment(id).await,
                Attempt::Again { after, .. } => tokio::time::sleep(after).await,
            }
        }
    }

    /// The refund `id`.
    pub async fn refund(&self, id: &str) -> Result<RefundRow> {
        let mut c = self.db.acquire().await?;
        store::refund(&mut c, id)
            .await?
            .ok_or_else(|| PaymentError::not_found("refund", id))
    }

    /// One attempt at the PENDING refund `id` (see [`Engine::attempt_charge`]).
    pub async fn attempt_refund(&self, id: &str, due_only: bool) -> Result<Attempt<RefundRow>> {
        let now = now_micros();
        let lease_until = now + micros(self.settings.lease());
        let attempt = {
            let mut c = self.db.acquire().await?;
            store::claim_refund(&mut c, id, now, lease_until, due_only).await?
        };
        let r = self.refund(id).await?;
        let Some(attempt) = attempt else {
            return Ok(if r.status == TransactionStatus::Pending {
                Attempt::Again {
                    after: self.settings.retry.poll_interval,
                    unknown: true,
                }
            } else {
                Attempt::Final(r)
            });
        };
        let p = self.payment(&r.payment_id).await?;
        let call = RefundCall {
            idempotency_key: r.id.clone(),
            charge_reference: p.provider_reference.clone(),
            currency: r.currency.clone(),
            amount_minor: r.amount_minor,
        };
        let work = TracedWork::continuing(self.db.service(), "refund", &r.traceparent);
        let answer = work
            .run(async {
                tokio::time::timeout(self.settings.provider_timeout, self.provider.refund(&call))
                    .await
                    .unwrap_or(Err(ProviderError::Timeout))
            })
            .await;
        let outcome = match answer {
            Ok(o) => o,
            Err(e) => {
                // Money owed to the customer: never given up on.
                let attempt = u32::try_from(attempt).unwrap_or(u32::MAX);
                tracing::warn!(refund = %r.id, payment = %p.id, attempt, error = %e, "refund not finished; will retry with the same idempotency key");
                let after = self.settings.retry.backoff(attempt);
                // A caller driving it keeps its lease; the worker makes it due after the backoff.
                let hold = if due_only {
                    after
                } else {
                    self.settings.lease()
                };
                let mut c = self.db.acquire().await?;
                store::defer_refund(&mut c, id, now_micros() + micros(hold)).await?;
                return Ok(Attempt::Again {
                    after,
                    unknown: e == ProviderError::Timeout,
                });
            }
        };
        let mut tx = self.db.begin().await?;
        work.run(self.finish_refund_in(&mut tx, &r, &p, &outcome))
            .await?;
        tx.commit().await?;
        Ok(Attempt::Final(self.refund(id).await?))
    }

    /// Finishes the PENDING refund `r` of `p` with `outcome`: books it, appends the ledger entry,
    /// emits `payment.refunded` when money moved.
    async fn finish_refund_in(
        &self,
        tx: &mut Tx,
        r: &RefundRow,
        p: &PaymentRow,
        outcome: &Outcome,
    ) -> Result<()> {
        let now = now_micros();
        let (status, reference, reason) = match outcome {
            Outcome::Done { reference } => (
                TransactionStatus::Succeeded,
                reference.clone(),
                r.reason.clone(),
            ),
            Outcome::Declined { message, .. } => (
                TransactionStatus::Failed,
                String::new(),
                format!("{}: refused: {message}", r.reason),
            ),
        };
        if !store::finish_refund(tx, &r.id, status, &reference, now).await? {
            return Ok(());
        }
        let succeeded = status == TransactionStatus::Succeeded;
        store::book_refund(tx, &p.id, r.amount_minor, succeeded, now).await?;
        store::append_transaction(
            tx,
            &r.id,
            p,
            TransactionKind::Refund,
            -r.amount_minor,
            status,
            &reason,
            &reference,
            now,
        )
        .await?;
        if succeeded {
            let after = store::payment(tx, &p.id)
                .await?
                .ok_or_else(|| PaymentError::not_found("payment", &p.id))?;
            let money = |amount_minor| {
                Some(mesh_contracts::common::v1::Money {
                    currency_code: p.currency.clone(),
                    amount_minor,
                })
            };
            tx.emit(
                Event::new(
                    "payment.refunded",
                    &p.id,
                    "PaymentRefunded",
                    &PaymentRefunded {
                        payment_id: p.id.clone(),
                        refund_id: r.id.clone(),
                        order_id: p.order_id.clone(),
                        customer_id: p.customer_id.clone(),
                        amount: money(r.amount_minor),
                        refunded_total: money(after.refunded_minor),
                        reason: r.reason.clone(),
                        idempotency_key: r.idempotency_key.clone(),
                    },
                )
                .correlation(p.order_id.clone()),
            )
            .await?;
        } else {
            tracing::error!(refund = %r.id, payment = %p.id, %reason, "the provider refused a refund");
            let message = match outcome {
                Outcome::Declined { message, .. } => message.clone(),
                Outcome::Done { .. } => String::new(),
            };
            self.refund_failed(tx, p, &r.id, r.amount_minor, &message, &r.idempotency_key)
                .await?;
        }
        Ok(())
    }

    /// Emits `payment.refund_failed` for refund `refund_id` of `p` (made with `key`): nothing
    /// moved.
    async fn refund_failed(
        &self,
        tx: &mut Tx,
        p: &PaymentRow,
        refund_id: &str,
        amount_minor: i64,
        message: &str,
        key: &str,
    ) -> Result<()> {
        tx.emit(
            Event::new(
                "payment.refund_failed",
                &p.id,
                "PaymentRefundFailed",
                &PaymentRefundFailed {
                    payment_id: p.id.clone(),
                    refund_id: refund_id.into(),
                    order_id: p.order_id.clone(),
                    customer_id: p.customer_id.clone(),
                    amount: Some(mesh_contracts::common::v1::Money {
                        currency_code: p.currency.clone(),
                        amount_minor,
                    }),
                    message: message.into(),
                    idempotency_key: key.into(),
                },
            )
            .correlation(p.order_id.clone()),
        )
        .await?;
        Ok(())
    }

    /// In `tx`: refunds `amount` of `p` for order refund `refund_id` (order's
    /// `order.refund_requested`), key `order-refund:<refund id>`, so it happens once; the worker
    /// pays it back after the commit (and after a crash, from its scan). When less than `amount`
    /// is left to refund, nothing is held and `payment.refund_failed` tells order.
    pub async fn refund_order(
        &self,
        tx: &mut Tx,
        p: &PaymentRow,
        refund_id: &str,
        amount: i64,
        reason: &str,
    ) -> Result<Option<RefundRow>> {
        let key = format!("order-refund:{refund_id}");
        if let Some(existing) = store::refund_by_key(tx, &p.id, &key).await? {
            return Ok(Some(existing));
        }
        if amount > p.refundable() {
            let message = format!(
                "{amount} {} asked, {} left to refund on payment `{}`",
                p.currency,
                p.refundable(),
                p.id
            );
            tracing::error!(payment = %p.id, order = %p.order_id, refund = %refund_id, %message, "order refund refused");
            self.refund_failed(tx, p, "", amount, &message, &key)
                .await?;
            return Ok(None);
        }
        let refund = self
            .create_refund(tx, p, amount, reason, &key, true)
            .await?;
        Ok(Some(refund))
    }

    /// Drives the refund `id` from a caller's request (see [`Engine::drive_charge`]).
    pub async fn drive_refund(&self, id: &str) -> Result<RefundRow> {
        loop {
            match self.attempt_refund(id, false).await? {
                Attempt::Final(r) => return Ok(r),
                Attempt::Again { unknown: true, .. } => return self.refund(id).await,
                Attempt::Again { after, .. } => {
                    if after >= Duration::from_secs(1) {
                        return self.refund(id).await;
                    }
                    tokio::time::sleep(after).await;
                }
            }
        }
    }
}
