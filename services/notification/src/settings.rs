//! The notification service's settings, from `MESH_NOTIFICATION_*` variables, validated when the
//! service is built (an error names the variable).

use std::time::Duration;

/// Where and how notifications are sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationSettings {
    /// `MESH_NOTIFICATION_WEBHOOK_URL`: the webhook every event notification is posted to (on
    /// top of a user's own `webhook_url`). Unset: only users' own URLs. `http://` only.
    pub webhook_url: Option<String>,
    /// `MESH_NOTIFICATION_SMTP_URL` (`smtp://host:port`): the mail relay for the EMAIL channel.
    /// Unset: no emails (the channel is skipped for events; SendNotification refuses it).
    pub smtp: Option<(String, u16)>,
    /// `MESH_NOTIFICATION_SMTP_FROM` (default `mesh@localhost`): the sender address.
    pub smtp_from: String,
    /// `MESH_NOTIFICATION_MAX_ATTEMPTS` (default 5): attempts per delivery before it is FAILED.
    pub max_attempts: u32,
    /// `MESH_NOTIFICATION_RETRY_BACKOFF` (default 500ms): first retry delay, doubling, at most 60s.
    pub retry_backoff: Duration,
    /// `MESH_NOTIFICATION_SEND_TIMEOUT` (default 5s): longest wait for one send.
    pub send_timeout: Duration,
    /// `MESH_NOTIFICATION_POLL_INTERVAL` (default 500ms): the worker's poll for due deliveries
    /// besides being woken by new ones.
    pub poll_interval: Duration,
}

impl Default for NotificationSettings {
    fn default() -> Self {
        Self {
            webhook_url: None,
            smtp: None,
            smtp_from: "mesh@localhost".into(),
            max_attempts: 5,
            retry_backoff: Duration::from_millis(500),
            send_timeout: Duration::from_secs(5),
            poll_interval: Duration::from_millis(500),
        }
    }
}

use mesh_runtime::settings::{Kind, ModuleSettings, Setting, Settings, process_env};
pub use mesh_runtime::settings::{SettingError, SettingErrors};

const WEBHOOK_URL: Setting = Setting {
    name: "MESH_NOTIFICATION_WEBHOOK_URL",
    kind: Kind::Text,
    default: "",
    doc: "An http:// webhook every event notification is posted to, besides a user's own; unset: only users' own URLs.",
};
const SMTP_URL: Setting = Setting {
    name: "MESH_NOTIFICATION_SMTP_URL",
    kind: Kind::Text,
    default: "",
    doc: "The mail relay of the EMAIL channel, `smtp://host[:port]` (no TLS, no authentication); unset: no emails.",
};
const SMTP_FROM: Setting = Setting {
    name: "MESH_NOTIFICATION_SMTP_FROM",
    kind: Kind::Text,
    default: "mesh@localhost",
    doc: "The sender address of emails.",
};
const MAX_ATTEMPTS: Setting = Setting {
    name: "MESH_NOTIFICATION_MAX_ATTEMPTS",
    kind: Kind::Number { min: 1, max: 100 },
    default: "5",
    doc: "Attempts per delivery before it is FAILED.",
};
const RETRY_BACKOFF: Setting = Setting {
    name: "MESH_NOTIFICATION_RETRY_BACKOFF",
    kind: Kind::Duration,
    default: "500ms",
    doc: "First retry delay of a delivery, doubling, at most 60s.",
};
const SEND_TIMEOUT: Setting = Setting {
    name: "MESH_NOTIFICATION_SEND_TIMEOUT",
    kind: Kind::Duration,
    default: "5s",
    doc: "Longest wait for one send.",
};
const POLL_INTERVAL: Setting = Setting {
    name: "MESH_NOTIFICATION_POLL_INTERVAL",
    kind: Kind::Duration,
    default: "500ms",
    doc: "How often the worker looks for due deliveries besides being woken by new ones.",
};

/// The notification module's settings, for its module row.
pub const SETTINGS: ModuleSettings = ModuleSettings {
    declared: &[
        WEBHOOK_URL,
        SMTP_URL,
        SMTP_FROM,
        MAX_ATTEMPTS,
        RETRY_BACKOFF,
        SEND_TIMEOUT,
        POLL_INTERVAL,
    ],
    check: |env| NotificationSettings::from_lookup(env).map(drop),
};

/// `host:port` of an `smtp://host:port` URL (port 25 when absent).
pub fn parse_smtp(url: &str) -> Option<(String, u16)> {
    let rest = url.strip_prefix("smtp://")?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (rest, 25),
    };
    (!host.is_empty() && !host.contains('/')).then(|| (host.to_string(), port))
}

impl NotificationSettings {
    /// The settings from the process environment.
    pub fn from_env() -> Result<Self, SettingErrors> {
        Self::from_lookup(process_env)
    }

    /// The settings from `env` (the environment, or a map in tests); every bad one named.
    pub fn from_lookup(env: impl Fn(&str) -> Option<String>) -> Result<Self, SettingErrors> {
        let mut s = Settings::new(env);
        let settings = Self {
            webhook_url: s.parse(&WEBHOOK_URL, crate::validate::webhook_url),
            smtp: s.parse(&SMTP_URL, |v| {
                parse_smtp(v)
                    .ok_or_else(|| "expected smtp://host[:port] (no TLS, no authentication)".into())
            }),
            smtp_from: s.text(&SMTP_FROM).unwrap_or_default(),
            max_attempts: s.number(&MAX_ATTEMPTS),
            retry_backoff: s.duration(&RETRY_BACKOFF),
            send_timeout: s.duration(&SEND_TIMEOUT),
            poll_interval: s.duration(&POLL_INTERVAL),
        };
        s.finish(settings)
    }

    /// The delay before attempt `attempt + 1`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
        (self.retry_backoff * factor).min(Duration::from_secs(60))
    }

    /// How long a claimed delivery belongs to the worker that claimed it.
    pub fn lease(&self) -> Duration {
        self.send_timeout * 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_runtime::settings::lookup_in;

    #[test]
    fn settings_are_read_and_bad_ones_named() {
        assert_eq!(
            NotificationSettings::from_lookup(|_| None).unwrap(),
            NotificationSettings::default()
        );
        let s = NotificationSettings::from_lookup(lookup_in(&[
            ("MESH_NOTIFICATION_SMTP_URL", "smtp://mail.local:2525"),
            ("MESH_NOTIFICATION_WEBHOOK_URL", "http://hooks.local/x"),
        ]))
        .unwrap();
        assert_eq!(s.smtp, Some(("mail.local".into(), 2525)));
        assert_eq!(s.webhook_url.as_deref(), Some("http://hooks.local/x"));
        for (var, value) in [
            ("MESH_NOTIFICATION_SMTP_URL", "mail.local"),
            ("MESH_NOTIFICATION_WEBHOOK_URL", "ftp://x"),
            ("MESH_NOTIFICATION_MAX_ATTEMPTS", "0"),
            ("MESH_NOTIFICATION_SEND_TIMEOUT", "soon"),
        ] {
            let e = NotificationSettings::from_lookup(|k| (k == var).then(|| value.to_string()))
                .unwrap_err();
            assert_eq!(e.0.len(), 1);
            assert_eq!(e.0[0].variable, var);
        }
    }
}
