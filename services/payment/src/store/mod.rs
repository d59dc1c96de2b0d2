//! The payment service's SQL (portable: Postgres and SQLite) and the mapping of rows to
//! `payment.v1` messages, one module per table: [`cards`], [`payments`], [`refunds`], the
//! [`ledger`] of transactions and the [`saga`] rows. Every state change of a payment or refund
//! is a conditional `UPDATE` (`WHERE status = 'PENDING'`, `refund_held + amount <= amount`), so
//! concurrent workers, RPCs and replicas finish each one once and never refund more than was
//! charged. Rows are read with sqlx's `FromRow`; times are the kit's microseconds.

mod cards;
mod ledger;
mod payments;
mod refunds;
mod saga;

pub use cards::*;
pub use ledger::*;
pub use payments::*;
pub use refunds::*;
pub use saga::*;

use mesh_contracts::common::v1::Money;
use mesh_contracts::payment::v1::{PaymentStatus, TransactionStatus};
use mesh_runtime::domain::time;

type Result<T> = std::result::Result<T, sqlx::Error>;

/// Microseconds since the Unix epoch (the kit's time unit).
pub fn now_micros() -> i64 {
    time::now_us()
}

/// A protobuf timestamp of Unix microseconds.
pub fn ts(micros: i64) -> prost_types::Timestamp {
    time::to_timestamp(micros)
}

pub(crate) fn money(currency: &str, amount_minor: i64) -> Money {
    mesh_runtime::domain::money::to_money(currency, amount_minor)
}

/// The stored name of a payment status.
pub fn payment_status_name(s: PaymentStatus) -> &'static str {
    match s {
        PaymentStatus::Pending => "PENDING",
        PaymentStatus::Succeeded => "SUCCEEDED",
        PaymentStatus::Failed => "FAILED",
        PaymentStatus::PartiallyRefunded => "PARTIALLY_REFUNDED",
        PaymentStatus::Refunded => "REFUNDED",
        PaymentStatus::Unspecified => "UNSPECIFIED",
    }
}

pub(crate) fn payment_status_of(name: &str) -> PaymentStatus {
    match name {
        "PENDING" => PaymentStatus::Pending,
        "SUCCEEDED" => PaymentStatus::Succeeded,
        "FAILED" => PaymentStatus::Failed,
        "PARTIALLY_REFUNDED" => PaymentStatus::PartiallyRefunded,
        "REFUNDED" => PaymentStatus::Refunded,
        _ => PaymentStatus::Unspecified,
    }
}

/// The stored name of a transaction (or refund) status.
pub fn tx_status_name(s: TransactionStatus) -> &'static str {
    match s {
        TransactionStatus::Pending => "PENDING",
        TransactionStatus::Succeeded => "SUCCEEDED",
        TransactionStatus::Failed => "FAILED",
        TransactionStatus::Unspecified => "UNSPECIFIED",
    }
}

pub(crate) fn tx_status_of(name: &str) -> TransactionStatus {
    match name {
        "PENDING" => TransactionStatus::Pending,
        "SUCCEEDED" => TransactionStatus::Succeeded,
        "FAILED" => TransactionStatus::Failed,
        _ => TransactionStatus::Unspecified,
    }
}
