//! The retry policy and pace of a service's [`WorkQueue`](crate::work_queue::WorkQueue) whose
//! items fail in ways the service itself retries later (a provider's retryable refusal, a
//! delivery that did not go out): how many attempts an item gets, the delay between them
//! (doubling, capped) and how often the queue scans for due items.
//!
//! The three settings are declared once per module with [`retry_settings!`](crate::retry_settings)
//! (`<PREFIX>_MAX_ATTEMPTS`, `<PREFIX>_RETRY_BACKOFF`, `<PREFIX>_POLL_INTERVAL`), listed in the
//! module's [`ModuleSettings`](crate::ModuleSettings) and read into a [`RetryPolicy`] with
//! [`RetrySettings::read`].

use std::time::Duration;

use crate::settings::{Setting, Settings};

/// The declared settings of a work queue's retries and pace; build it with
/// [`retry_settings!`](crate::retry_settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrySettings {
    /// `<PREFIX>_MAX_ATTEMPTS`: attempts at an item before it fails for good.
    pub max_attempts: Setting,
    /// `<PREFIX>_RETRY_BACKOFF`: the first delay between attempts.
    pub retry_backoff: Setting,
    /// `<PREFIX>_POLL_INTERVAL`: how often the queue scans for due items.
    pub poll_interval: Setting,
    /// The longest delay between attempts (the doubling stops there); part of the declaration,
    /// not a setting.
    pub max_backoff: Duration,
}

impl RetrySettings {
    /// The policy from `s` (a refused setting reads as its default and is kept in `s`).
    pub fn read<F: Fn(&str) -> Option<String>>(&self, s: &mut Settings<F>) -> RetryPolicy {
        RetryPolicy {
            max_attempts: s.number(&self.max_attempts),
            retry_backoff: s.duration(&self.retry_backoff),
            max_backoff: self.max_backoff,
            poll_interval: s.duration(&self.poll_interval),
        }
    }

    /// The policy with nothing set: the declared defaults.
    pub fn defaults(&self) -> RetryPolicy {
        self.read(&mut Settings::new(|_: &str| None))
    }
}

/// A work queue's retries and pace, as read from its [`RetrySettings`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts at an item before it fails for good.
    pub max_attempts: u32,
    /// The delay after the first attempt; doubles per attempt.
    pub retry_backoff: Duration,
    /// The longest delay between attempts.
    pub max_backoff: Duration,
    /// How often the queue scans for due items besides being woken by new ones.
    pub poll_interval: Duration,
}

impl RetryPolicy {
    /// The delay before attempt `attempt + 1` (attempts counted from 1): the retry backoff,
    /// doubling per attempt, at most the max backoff.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
        self.retry_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// Declares a module's [`RetrySettings`] under `prefix`: `<prefix>_MAX_ATTEMPTS` (a number from
/// 1 to 100), `<prefix>_RETRY_BACKOFF` and `<prefix>_POLL_INTERVAL` (durations), each with its
/// default and doc; the backoff's doc ends with ", doubling, at most <cap>s.", from the cap
/// given in seconds.
///
/// ```
/// use mesh_runtime::retry_policy::RetrySettings;
///
/// const RETRY: RetrySettings = mesh_runtime::retry_settings! {
///     prefix: "MESH_EXAMPLE",
///     max_attempts: 3, "Attempts per item before it is FAILED.",
///     retry_backoff: "200ms" doubling to 5 s, "First delay between attempts",
///     poll_interval: "500ms", "How often the worker looks for due items.",
/// };
/// assert_eq!(RETRY.retry_backoff.name, "MESH_EXAMPLE_RETRY_BACKOFF");
/// assert_eq!(RETRY.retry_backoff.doc, "First delay between attempts, doubling, at most 5s.");
/// assert_eq!(RETRY.defaults().max_attempts, 3);
/// ```
#[macro_export]
macro_rules! retry_settings {
    {
        prefix: $prefix:literal,
        max_attempts: $attempts:literal, $attempts_doc:literal,
        retry_backoff: $backoff:literal doubling to $cap_secs:literal s, $backoff_doc:literal,
        poll_interval: $poll:literal, $poll_doc:literal $(,)?
    } => {
        $crate::retry_policy::RetrySettings {
            max_attempts: $crate::settings::Setting::number(
                concat!($prefix, "_MAX_ATTEMPTS"),
                1..=100,
                stringify!($attempts),
                $attempts_doc,
            ),
            retry_backoff: $crate::settings::Setting::duration(
                concat!($prefix, "_RETRY_BACKOFF"),
                $backoff,
                concat!($backoff_doc, ", doubling, at most ", $cap_secs, "s."),
            ),
            poll_interval: $crate::settings::Setting::duration(
                concat!($prefix, "_POLL_INTERVAL"),
                $poll,
                $poll_doc,
            ),
            max_backoff: ::std::time::Duration::from_secs($cap_secs),
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{Kind, lookup_in};

    const RETRY: RetrySettings = crate::retry_settings! {
        prefix: "MESH_T",
        max_attempts: 4, "Attempts.",
        retry_backoff: "100ms" doubling to 2 s, "First delay",
        poll_interval: "1s", "Scans.",
    };

    #[test]
    fn the_declaration_names_its_settings_after_the_prefix() {
        assert_eq!(RETRY.max_attempts.name, "MESH_T_MAX_ATTEMPTS");
        assert_eq!(RETRY.max_attempts.kind, Kind::Number { min: 1, max: 100 });
        assert_eq!(RETRY.max_attempts.default, "4");
        assert_eq!(
            RETRY.retry_backoff.doc,
            "First delay, doubling, at most 2s."
        );
        assert_eq!(RETRY.poll_interval.name, "MESH_T_POLL_INTERVAL");
        assert_eq!(RETRY.max_backoff, Duration::from_secs(2));
    }

    #[test]
    fn the_policy_is_read_with_every_refusal_kept() {
        assert_eq!(
            RETRY.defaults(),
            RetryPolicy {
                max_attempts: 4,
                retry_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                poll_interval: Duration::from_secs(1),
            }
        );
        let mut s = Settings::new(lookup_in(&[
            ("MESH_T_MAX_ATTEMPTS", "0"),
            ("MESH_T_POLL_INTERVAL", "250ms"),
        ]));
        let policy = RETRY.read(&mut s);
        assert_eq!(policy.poll_interval, Duration::from_millis(250));
        let refused: Vec<_> = s
            .finish(())
            .unwrap_err()
            .0
            .iter()
            .map(|e| e.variable)
            .collect();
        assert_eq!(refused, ["MESH_T_MAX_ATTEMPTS"]);
    }

    #[test]
    fn the_backoff_doubles_up_to_its_cap() {
        let p = RETRY.defaults();
        let delays: Vec<_> = (1..=7).map(|a| p.backoff(a).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(p.backoff(0), Duration::from_millis(100));
        assert_eq!(p.backoff(u32::MAX), Duration::from_secs(2));
    }
}
