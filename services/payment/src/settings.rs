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
    /// retryable error (processor error) before it is FAILED with `DECLINE_REASON_PROVIDER_ERROR`;
    /// `MESH_PAYMENT_RETRY_BACKOFF` (default 200ms): first delay between attempts, doubling, at
    /// most 5s; `MESH_PAYMENT_POLL_INTERVAL` (default 500ms): how often the worker looks for due
    /// charges and refunds besides being woken by new ones (retries, other replicas' rows,
    /// restarts).
    pub retry: RetryPolicy,
    /// `MESH_PAYMENT_SLOW_CARD_DELAY` (default 2s): how late the simulated processor answers for
    /// the slow test card.
    pub slow_card_delay: Duration,
}

impl Default for PaymentSettings {
    /// The declared defaults (as with nothing set; a test holds the two together).
    fn default() -> Self {
        Self {
            provider_timeout: Duration::from_secs(10),
            retry: RETRY.defaults(),
            slow_card_delay: Duration::from_secs(2),
        }
    }
}

use mesh_runtime::retry_policy::{RetryPolicy, RetrySettings};
use mesh_runtime::settings::{ModuleSettings, Setting, Settings, process_env};
pub use mesh_runtime::settings::{SettingError, SettingErrors};

const PROVIDER_TIMEOUT: Setting = Setting::duration(
    "MESH_PAYMENT_PROVIDER_TIMEOUT",
    "10s",
    "Longest wait for one provider call; a call that times out is retried later with the same idempotency key.",
);
/// The worker's attempts at a charge or refund and its pace.
const RETRY: RetrySettings = mesh_runtime::retry_settings! {
    prefix: "MESH_PAYMENT",
    max_attempts: 3, "Attempts at a charge the provider refuses with a retryable error before it is FAILED.",
    retry_backoff: "200ms" doubling to 5 s, "First delay between attempts",
    poll_interval: "500ms", "How often the worker looks for due charges and refunds besides being woken by new ones.",
};
const SLOW_CARD_DELAY: Setting = Setting::duration_or_off(
    "MESH_PAYMENT_SLOW_CARD_DELAY",
    "2s",
    "How late the simulated processor answers for the slow test card.",
);

/// The payment module's settings, for its module row.
pub const SETTINGS: ModuleSettings = ModuleSettings {
    declared: &[
        PROVIDER_TIMEOUT,
        RETRY.max_attempts,
        RETRY.retry_backoff,
        RETRY.poll_interval,
        SLOW_CARD_DELAY,
    ],
    check: |env| PaymentSettings::from_lookup(env).map(drop),
};

impl PaymentSettings {
    /// The settings from the process environment.
    pub fn from_env() -> Result<Self, SettingErrors> {
        Self::from_lookup(process_env)
    }

    /// The settings from `env` (the environment, or a map in tests); every bad one named.
    pub fn from_lookup(env: impl Fn(&str) -> Option<String>) -> Result<Self, SettingErrors> {
        let mut s = Settings::new(env);
        let settings = Self {
            provider_timeout: s.duration(&PROVIDER_TIMEOUT),
            retry: RETRY.read(&mut s),
            slow_card_delay: s.duration(&SLOW_CARD_DELAY),
        };
        s.finish(settings)
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
        assert_eq!(
            (s.slow_card_delay, s.retry.max_attempts),
            (Duration::ZERO, 5)
        );
        let e = PaymentSettings::from_lookup(lookup_in(&[
            ("MESH_PAYMENT_PROVIDER_TIMEOUT", "soon"),
            ("MESH_PAYMENT_MAX_ATTEMPTS", "0"),
        ]))
        .unwrap_err();
        let named: Vec<_> = e.0.iter().map(|e| e.variable).collect();
        assert_eq!(
            named,
            ["MESH_PAYMENT_PROVIDER_TIMEOUT", "MESH_PAYMENT_MAX_ATTEMPTS"]
        );
    }
}
