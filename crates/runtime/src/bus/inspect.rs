//! The operator's view of a bus, [`BusInspect`], implemented by both buses: the streams with
//! each consumer group's lag, a group's dead letters with their own ids, replaying one, and
//! reading a stream. `mesh events` uses it directly on Redis, and through the admin port
//! ([`crate::bus_admin`]) on any process, which is how the in-process bus of `mesh serve all` is
//! inspected.
//!
//! Replaying appends the dead letter's envelope to its stream again (a new entry, the same event
//! id) and deletes the dead letter. Every group of the stream gets the copy; groups that handled
//! the event already drop it by id (`mesh_handled_events`), so only the group that gave up on it
//! sees an effect.

use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;

use super::{BusError, DeadLetter, GroupLag};

/// One stream and its consumer groups' lag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// The domain.
    pub domain: String,
    /// Entries in the stream (after trimming).
    pub length: u64,
    /// Each consumer group's lag.
    pub groups: Vec<GroupLag>,
}

/// A stream entry: its id and the encoded envelope.
pub type Entry = (String, Bytes);

/// Where [`BusInspect::read_stream`] starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadFrom {
    /// The stream's first entry still kept.
    Start,
    /// Only entries added after the call.
    New,
    /// The entries after this entry id.
    After(String),
}

impl ReadFrom {
    /// `start`, `new` or an entry id, as the admin port's `from` parameter spells them.
    pub fn parse(text: &str) -> Self {
        match text {
            "" | "new" | "$" => Self::New,
            "start" | "0" => Self::Start,
            id => Self::After(id.to_string()),
        }
    }
}

/// The operator's view of a bus.
pub trait BusInspect: Send + Sync + std::fmt::Debug {
    /// Every stream, by domain, with its length and each consumer group's lag.
    fn streams(&self) -> BoxFuture<'_, Result<Vec<StreamInfo>, BusError>>;

    /// The dead letters of `group` with the id of each, oldest first.
    fn dead_letter_entries<'a>(
        &'a self,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, DeadLetter)>, BusError>>;

    /// Replays dead letter `dead_id` of `group` to its stream and deletes it; `false` when there
    /// is no such dead letter (already replayed, or a wrong id).
    fn replay_dead_letter<'a>(
        &'a self,
        group: &'a str,
        dead_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, BusError>>;

    /// Up to `count` entries of the stream of `domain` from `from`, waiting up to `wait` for the
    /// first when there are none yet (and then answering empty).
    fn read_stream<'a>(
        &'a self,
        domain: &'a str,
        from: &'a ReadFrom,
        count: usize,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Vec<Entry>, BusError>>;
}
