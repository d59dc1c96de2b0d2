//! The built-in provider: a simulated card processor whose outcome is chosen by the card number
//! (see [`crate::cards`]). It stands for an external system, so it keeps its own records (table
//! `sim_processor_ops` of payment's database, written outside payment's transactions, as a real
//! processor's would be): one row per idempotency key, so a repeated call, even after a restart,
//! answers the first result and never captures twice.

use std::time::Duration;

use futures::future::BoxFuture;
use mesh_contracts::payment::v1::DeclineReason;
use mesh_runtime::Database;

use crate::cards::{self, CardClass};
use crate::provider::{
    CardData, ChargeCall, Outcome, PaymentProvider, ProviderCard, ProviderError, RefundCall,
};
use crate::store::now_micros;

/// The simulated processor.
#[derive(Debug, Clone)]
pub struct SimulatedProcessor {
    db: Database,
    slow_delay: Duration,
}

impl SimulatedProcessor {
    /// A processor keeping its records in `db`; the slow test card answers after `slow_delay`.
    pub fn new(db: Database, slow_delay: Duration) -> Self {
        Self { db, slow_delay }
    }

    /// The recorded answer for `key`, if any.
    async fn recorded(&self, key: &str) -> Result<Option<Outcome>, ProviderError> {
        let row: Option<(String, String)> = sqlx::query_as(
            "SELECT outcome, reference FROM sim_processor_ops WHERE idempotency_key = $1",
        )
        .bind(key)
        .fetch_optional(self.db.pool())
        .await
        .map_err(unavailable)?;
        let Some((outcome, reference)) = row else {
            return Ok(None);
        };
        Ok(Some(decode(&outcome, reference)))
    }

    /// Records `outcome` for `key` unless an answer is already recorded; returns the recorded
    /// answer (so concurrent calls with one key agree) and whether this call recorded it.
    #[allow(clippy::too_many_arguments)]
    async fn record(
        &self,
        key: &str,
        kind: &str,
        charge_ref: &str,
        outcome: &Outcome,
        currency: &str,
        amount_minor: i64,
    ) -> Result<(Outcome, bool), ProviderError> {
        let (name, reference) = encode(outcome);
        let inserted = sqlx::query(
            "INSERT INTO sim_processor_ops (idempotency_key, kind, charge_ref, outcome, reference, currency, amount_minor, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (idempotency_key) DO NOTHING RETURNING idempotency_key",
        )
        .bind(key)
        .bind(kind)
        .bind(charge_ref)
        .bind(name)
        .bind(reference)
        .bind(currency)
        .bind(amount_minor)
        .bind(now_micros())
        .fetch_optional(self.db.pool())
        .await
        .map_err(unavailable)?
        .is_some();
        if inserted {
            return Ok((outcome.clone(), true));
        }
        let first = self
            .recorded(key)
            .await?
            .ok_or_else(|| ProviderError::Unavailable("record vanished".into()))?;
        Ok((first, false))
    }
}

fn unavailable(e: sqlx::Error) -> ProviderError {
    ProviderError::Unavailable(format!("simulated processor storage: {e}"))
}

fn encode(outcome: &Outcome) -> (String, String) {
    match outcome {
        Outcome::Done { reference } => ("done".into(), reference.clone()),
        Outcome::Declined { reason, message } => {
            (format!("declined:{}", *reason as i32), message.clone())
        }
    }
}

fn decode(outcome: &str, reference: String) -> Outcome {
    match outcome.strip_prefix("declined:") {
        Some(code) => Outcome::Declined {
            reason: code
                .parse::<i32>()
                .ok()
                .and_then(|c| DeclineReason::try_from(c).ok())
                .unwrap_or(DeclineReason::CardDeclined),
            message: reference,
        },
        None => Outcome::Done { reference },
    }
}

fn class_of(card: &str) -> Option<CardClass> {
    card.strip_prefix("sim:").and_then(CardClass::parse)
}

impl PaymentProvider for SimulatedProcessor {
    fn tokenize<'a>(
        &'a self,
        card: &'a CardData,
    ) -> BoxFuture<'a, Result<ProviderCard, ProviderError>> {
        Box::pin(async move {
            Ok(ProviderCard {
                reference: format!("sim:{}", CardClass::of(&card.number).name()),
                brand: cards::brand(&card.number).into(),
                last4: card.number[card.number.len().saturating_sub(4)..].into(),
            })
        })
    }

    fn charge<'a>(&'a self, call: &'a ChargeCall) -> BoxFuture<'a, Result<Outcome, ProviderError>> {
        Box::pin(async move {
            let class = class_of(&call.card);
            if class == Some(CardClass::ProcessorError)
                && let Some(first) = self.recorded(&call.idempotency_key).await?
            {
                return Ok(first);
            }
            let decided = match class {
                None => Outcome::Declined {
                    reason: DeclineReason::InvalidToken,
                    message: "the processor does not know this card".into(),
                },
                Some(CardClass::ProcessorError) => {
                    return Err(ProviderError::Unavailable(
                        "processor error (test card 4000000000000119)".into(),
                    ));
                }
                Some(CardClass::Decline) => Outcome::Declined {
                    reason: DeclineReason::CardDeclined,
                    message: "Your card was declined.".into(),
                },
                Some(CardClass::InsufficientFunds) => Outcome::Declined {
                    reason: DeclineReason::InsufficientFunds,
                    message: "Your card has insufficient funds.".into(),
                },
                Some(CardClass::Succeed | CardClass::Slow) => Outcome::Done {
                    reference: format!("sim_ch_{}", uuid::Uuid::now_v7().simple()),
                },
            };
            let (recorded, first) = self
                .record(
                    &call.idempotency_key,
                    "charge",
                    "",
                    &decided,
                    &call.currency,
                    call.amount_minor,
                )
                .await?;
            // The slow card is captured at once and answers late: a caller that times out
            // retries the same key and gets the recorded capture at once.
            if first && class == Some(CardClass::Slow) {
                tokio::time::sleep(self.slow_delay).await;
            }
            Ok(recorded)
        })
    }

    fn refund<'a>(&'a self, call: &'a RefundCall) -> BoxFuture<'a, Result<Outcome, ProviderError>> {
        Box::pin(async move {
            if let Some(first) = self.recorded(&call.idempotency_key).await? {
                return Ok(first);
            }
            let charged: Option<i64> = sqlx::query_as::<_, (i64,)>(
                "SELECT amount_minor FROM sim_processor_ops WHERE kind = 'charge' AND reference = $1",
            )
            .bind(&call.charge_reference)
            .fetch_optional(self.db.pool())
            .await
            .map_err(unavailable)?
            .map(|(amount,)| amount);
            let (refunded,): (i64,) = sqlx::query_as(
                "SELECT CAST(COALESCE(SUM(amount_minor), 0) AS BIGINT) AS total FROM sim_processor_ops WHERE kind = 'refund' AND charge_ref = $1 AND outcome = 'done'",
            )
            .bind(&call.charge_reference)
            .fetch_one(self.db.pool())
            .await
            .map_err(unavailable)?;
            let decided = match charged {
                None => Outcome::Declined {
                    reason: DeclineReason::Unsupported,
                    message: format!("no capture `{}` to refund", call.charge_reference),
                },
                Some(c) if refunded + call.amount_minor > c => Outcome::Declined {
                    reason: DeclineReason::Unsupported,
                    message: "refunds would exceed the captured amount".into(),
                },
                Some(_) => Outcome::Done {
                    reference: format!("sim_re_{}", uuid::Uuid::now_v7().simple()),
                },
            };
            self.record(
                &call.idempotency_key,
                "refund",
                &call.charge_reference,
                &decided,
                &call.currency,
                call.amount_minor,
            )
            .await
            .map(|(outcome, _)| outcome)
        })
    }
}
