//! The context of the incoming call a task is serving: its trace position and its deadline.
//!
//! The server layer ([`crate::observe`]) sets it for the duration of each RPC handler; the client
//! layer ([`crate::client`]) reads it so that a downstream call carries the same trace and never
//! outlives the caller's deadline. It is a tokio task-local: work moved to a spawned task must
//! take it along explicitly with [`CallContext::scope`].

use std::future::Future;

use tokio::task::futures::TaskLocalFuture;
use tokio::time::Instant;

use crate::trace_context::TraceContext;

tokio::task_local! {
    static CURRENT: CallContext;
}

/// What a handler inherits from the call it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallContext {
    /// The server span of this call; downstream calls are its children.
    pub trace: TraceContext,
    /// When the caller stops waiting, from its `grpc-timeout`; `None` if it sent none.
    pub deadline: Option<Instant>,
}

impl CallContext {
    /// The context of the call this task is serving, if any.
    pub fn current() -> Option<Self> {
        CURRENT.try_with(|c| *c).ok()
    }

    /// Runs `f` with `self` as the current call context (for lines logged outside the call's
    /// task scope, e.g. when its response ends).
    pub fn in_scope<R>(self, f: impl FnOnce() -> R) -> R {
        CURRENT.sync_scope(self, f)
    }

    /// Runs `fut` with `self` as the current call context.
    pub fn scope<F: Future>(self, fut: F) -> TaskLocalFuture<CallContext, F> {
        CURRENT.scope(self, fut)
    }
}
