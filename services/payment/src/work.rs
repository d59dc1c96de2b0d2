//! What the payment worker is handed: a charge or refund by id, or a saga charge inserted
//! already claimed with its row. The engine creates work and the worker ([`crate::worker`])
//! carries it out; this type is what passes between them.

use std::fmt;

use mesh_runtime::work_queue::Leased;

use crate::store::PaymentRow;

/// A unit of the worker's work.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Work {
    /// The PENDING payment with this id.
    Charge(String),
    /// A PENDING payment inserted claimed by this process, with its card's provider reference
    /// (the saga's charge request): its first attempt claims nothing.
    Leased(Leased<(PaymentRow, String)>),
    /// The PENDING refund with this id.
    Refund(String),
}

impl fmt::Display for Work {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Charge(id) => write!(f, "charge {id}"),
            Self::Leased(leased) => write!(f, "charge {leased}"),
            Self::Refund(id) => write!(f, "refund {id}"),
        }
    }
}
