//! The payment service's settings, from `MESH_PAYMENT_*` variables, validated when the service is
//! built (an error names the variable).

use std::time::Duration;

/// How payment talks to its provider and retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentSettings {
    /// `MESH_PAYMENT_PROVIDER_TIMEOUT` (default 10s): longest wait for one provider call; a call
    /// that times out is retried later with the same idempotency key, never given up as failed.
    pub provider_timeout: Duration,
    /// `MESH_PAYMENT_MAX_ATTEMPTS` (default 3): attempts at a charge the provider refuses with a
    /// retryable error (processor error) before it is FAILED with `DECLINE_REASON_PROVIDER_ERROR`.
    pub max_attempts: u32,
    /// `MESH_PAYMENT_RETRY_BACKOFF` (default 200ms): first delay between attempts, doubling, at
    /// most 5s.
    pub retry_backoff: Duration,
    /// `MESH_PAYMENT_POLL_INTERVAL` (default 500ms): how often the worker looks for due charges
    /// and refunds besides being woken by new ones (retries, other replicas' rows, restarts).
    pub poll_interval: Duration,
    /// `MESH_PAYMENT_SLOW_CARD_DELAY` (default 2s): how late the simulated processor answers for
    /// the slow test card.
    pub slow_card_delay: Duration,
}

impl Default for PaymentSettings {
    fn default() -> Self {
        Self {
            provider_timeout: Duration::from_secs(10),
            max_attempts: 3,
            retry_backoff: Duration::from_millis(200),
            poll_interval: Duration::from_millis(500),
            slow_card_delay: Duration::from_secs(2),
        }
    }
}

pub use mesh_runtime::settings::SettingError;
use mesh_runtime::settings::{Settings, process_env};

impl PaymentSettings {
    /// The settings from the process environment.
    pub fn from_env() -> Result<Self, SettingError> {
        Self::from_lookup(process_env)
    }

    /// The settings from `env` (the environment, or a map in tests).
    pub fn from_lookup(env: impl Fn(&str) -> Option<String>) -> Result<Self, SettingError> {
        let d = Self::default();
        let s = Settings::new(env);
        Ok(Self {
            provider_timeout: s.duration(
                "MESH_PAYMENT_PROVIDER_TIMEOUT",
                d.provider_timeout,
                false,
            )?,
            max_attempts: s.number("MESH_PAYMENT_MAX_ATTEMPTS", d.max_attempts, 1, 100)?,
            retry_backoff: s.duration("MESH_PAYMENT_RETRY_BACKOFF", d.retry_backoff, false)?,
            poll_interval: s.duration("MESH_PAYMENT_POLL_INTERVAL", d.poll_interval, false)?,
            slow_card_delay: s.duration("MESH_PAYMENT_SLOW_CARD_DELAY", d.slow_card_delay, true)?,
        })
    }

    /// The delay before attempt `attempt + 1` (attempt counted from 1).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
        (self.retry_backoff * factor).min(Duration::from_secs(5))
    }

    /// How long a worker owns a claimed charge or refund before another may take it over: one
    /// provider call's timeout plus as much again (at least a second) for the database.
    pub fn lease(&self) -> Duration {
        self.provider_timeout + self.provider_timeout.max(Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_runtime::settings::lookup_in;

    #[test]
    fn settings_are_read_and_bad_ones_named() {
        assert_eq!(
            PaymentSettings::from_lookup(|_| None).unwrap(),
            PaymentSettings::default()
        );
        let s = PaymentSettings::from_lookup(lookup_in(&[
            ("MESH_PAYMENT_SLOW_CARD_DELAY", "0s"),
            ("MESH_PAYMENT_MAX_ATTEMPTS", "5"),
        ]))
        .unwrap();
        assert_eq!((s.slow_card_delay, s.max_attempts), (Duration::ZERO, 5));
        let e =
            PaymentSettings::from_lookup(lookup_in(&[("MESH_PAYMENT_PROVIDER_TIMEOUT", "soon")]))
                .unwrap_err();
        assert_eq!(e.variable, "MESH_PAYMENT_PROVIDER_TIMEOUT");
        let e = PaymentSettings::from_lookup(lookup_in(&[("MESH_PAYMENT_MAX_ATTEMPTS", "0")]))
            .unwrap_err();
        assert_eq!(e.variable, "MESH_PAYMENT_MAX_ATTEMPTS");
    }
}
