//! The notification service's settings, from `MESH_NOTIFICATION_*` variables, validated when the
//! service is built (an error names the variable): where webhooks and emails go, how they are
//! protected on the wire (TLS for both, a signature on webhook bodies, SMTP credentials), and
//! the delivery queue's pace.

use std::path::PathBuf;
use std::time::Duration;

use crate::secret::Secret;

/// How the SMTP connection is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// `starttls`: plain connect, then `STARTTLS` is required (the relay not offering it, or a
    /// certificate that does not verify, fails the send; never a plaintext fallback). Port 587
    /// by default.
    StartTls,
    /// `implicit`: TLS from the first byte (SMTPS). Port 465 by default.
    Implicit,
    /// `none`: no encryption at all (a local relay or sidecar only; mail and addresses cross
    /// the network in clear, credentials are refused). Port 25 by default.
    None,
}

impl SmtpTls {
    /// The relay's port when the URL names none.
    pub fn default_port(self) -> u16 {
        match self {
            Self::StartTls => 587,
            Self::Implicit => 465,
            Self::None => 25,
        }
    }
}

/// The mail relay of the EMAIL channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpSettings {
    /// Its host name (also the name its certificate must carry) or IP address.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// How the connection is encrypted.
    pub tls: SmtpTls,
    /// A PEM file of CA certificates trusted besides the system's (a private relay, tests).
    pub ca_file: Option<PathBuf>,
    /// The user name and password for `AUTH` (PLAIN or LOGIN, only over TLS); `None`: no AUTH.
    pub credentials: Option<(String, Secret)>,
}

impl SmtpSettings {
    /// The relay at `host:port` with `tls`, the system's CAs and no credentials.
    pub fn new(host: impl Into<String>, port: u16, tls: SmtpTls) -> Self {
        Self {
            host: host.into(),
            port,
            tls,
            ca_file: None,
            credentials: None,
        }
    }
}

/// Where and how notifications are sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationSettings {
    /// `MESH_NOTIFICATION_WEBHOOK_URL`: the webhook every event notification is posted to (on
    /// top of a user's own `webhook_url`). Unset: only users' own URLs.
    pub webhook_url: Option<String>,
    /// `MESH_NOTIFICATION_WEBHOOK_ALLOW_HTTP` (default false): whether `http://` webhooks are
    /// accepted and posted to (local development only); otherwise `https://` only.
    pub webhook_allow_http: bool,
    /// `MESH_NOTIFICATION_WEBHOOK_SECRET` or `MESH_NOTIFICATION_WEBHOOK_SECRET_FILE`: the keys
    /// webhook bodies are signed with (comma- or newline-separated: each one signs, so a key
    /// can be rotated). Unset: webhooks are not sent (their deliveries fail).
    pub webhook_secret: Option<Secret>,
    /// `MESH_NOTIFICATION_WEBHOOK_CA_FILE`: a PEM file of CA certificates trusted for webhook
    /// receivers besides the system's.
    pub webhook_ca_file: Option<PathBuf>,
    /// `MESH_NOTIFICATION_SMTP_*`: the mail relay for the EMAIL channel. Unset: no emails (the
    /// channel is skipped for events; SendNotification refuses it).
    pub smtp: Option<SmtpSettings>,
    /// `MESH_NOTIFICATION_SMTP_FROM` (default `mesh@localhost`): the sender address.
    pub smtp_from: String,
    /// `MESH_NOTIFICATION_MAX_ATTEMPTS` (default 5): attempts per delivery before it is FAILED;
    /// `MESH_NOTIFICATION_RETRY_BACKOFF` (default 500ms): first retry delay, doubling, at most
    /// 60s; `MESH_NOTIFICATION_POLL_INTERVAL` (default 500ms): the worker's poll for due
    /// deliveries besides being woken by new ones.
    pub retry: RetryPolicy,
    /// `MESH_NOTIFICATION_SEND_TIMEOUT` (default 5s): longest wait for one send.
    pub send_timeout: Duration,
}

impl Default for NotificationSettings {
    fn default() -> Self {
        Self {
            webhook_url: None,
            webhook_allow_http: false,
            webhook_secret: None,
            webhook_ca_file: None,
            smtp: None,
            smtp_from: "mesh@localhost".into(),
            retry: RETRY.defaults(),
            send_timeout: Duration::from_secs(5),
        }
    }
}

use mesh_runtime::retry_policy::{RetryPolicy, RetrySettings};
use mesh_runtime::settings::{ModuleSettings, Setting, Settings, process_env};
pub use mesh_runtime::settings::{SettingError, SettingErrors};

const WEBHOOK_URL: Setting = Setting::text(
    "MESH_NOTIFICATION_WEBHOOK_URL",
    "",
    "An https:// webhook every event notification is posted to, besides a user's own; unset: only users' own URLs. Needs a webhook secret.",
);
const WEBHOOK_ALLOW_HTTP: Setting = Setting::text(
    "MESH_NOTIFICATION_WEBHOOK_ALLOW_HTTP",
    "false",
    "`true` accepts plain http:// webhooks (local development only: bodies and signatures cross the network in clear); otherwise https:// only.",
);
const WEBHOOK_SECRET: Setting = Setting::secret(
    "MESH_NOTIFICATION_WEBHOOK_SECRET",
    "Keys (at least 16 characters each, comma-separated to rotate: each one signs) for the `X-Mesh-Signature` HMAC-SHA-256 of webhook bodies (docs/security.md); unset (and no _FILE): webhooks are not sent.",
);
const WEBHOOK_SECRET_FILE: Setting = Setting::text(
    "MESH_NOTIFICATION_WEBHOOK_SECRET_FILE",
    "",
    "A file holding the webhook keys instead (comma- or newline-separated), read at every send so a rotated mounted Secret applies without a restart.",
);
const WEBHOOK_CA_FILE: Setting = Setting::text(
    "MESH_NOTIFICATION_WEBHOOK_CA_FILE",
    "",
    "A PEM file of CA certificates trusted for webhook receivers besides the system's.",
);
const SMTP_URL: Setting = Setting::text(
    "MESH_NOTIFICATION_SMTP_URL",
    "",
    "The mail relay of the EMAIL channel, `smtp://host[:port]` (the port defaults by MESH_NOTIFICATION_SMTP_TLS: 587, 465 or 25); unset: no emails.",
);
const SMTP_TLS: Setting = Setting::text(
    "MESH_NOTIFICATION_SMTP_TLS",
    "starttls",
    "`starttls` (required, never a plaintext fallback), `implicit` (TLS from the first byte) or `none` (a local relay only: mail crosses the network in clear, credentials refused).",
);
const SMTP_CA_FILE: Setting = Setting::text(
    "MESH_NOTIFICATION_SMTP_CA_FILE",
    "",
    "A PEM file of CA certificates trusted for the mail relay besides the system's (a private relay).",
);
const SMTP_USER: Setting = Setting::text(
    "MESH_NOTIFICATION_SMTP_USER",
    "",
    "The user name for SMTP AUTH (PLAIN or LOGIN, over TLS only); unset: no AUTH.",
);
const SMTP_PASSWORD: Setting = Setting::secret(
    "MESH_NOTIFICATION_SMTP_PASSWORD",
    "The password for SMTP AUTH.",
);
const SMTP_PASSWORD_FILE: Setting = Setting::text(
    "MESH_NOTIFICATION_SMTP_PASSWORD_FILE",
    "",
    "A file holding the SMTP password instead, read at every connection so a rotated mounted Secret applies without a restart.",
);
const SMTP_FROM: Setting = Setting::text(
    "MESH_NOTIFICATION_SMTP_FROM",
    "mesh@localhost",
    "The sender address of emails (`addr` or `Name <addr>`).",
);
/// The deliverer's attempts at a delivery and its pace.
const RETRY: RetrySettings = mesh_runtime::retry_settings! {
    prefix: "MESH_NOTIFICATION",
    max_attempts: 5, "Attempts per delivery before it is FAILED.",
    retry_backoff: "500ms" doubling to 60 s, "First retry delay of a delivery",
    poll_interval: "500ms", "How often the worker looks for due deliveries besides being woken by new ones.",
};
const SEND_TIMEOUT: Setting = Setting::duration(
    "MESH_NOTIFICATION_SEND_TIMEOUT",
    "5s",
    "Longest wait for one send.",
);
/// The notification module's settings, for its module row.
pub const SETTINGS: ModuleSettings = ModuleSettings {
    declared: &[
        WEBHOOK_URL,
        WEBHOOK_ALLOW_HTTP,
        WEBHOOK_SECRET,
        WEBHOOK_SECRET_FILE,
        WEBHOOK_CA_FILE,
        SMTP_URL,
        SMTP_TLS,
        SMTP_CA_FILE,
        SMTP_USER,
        SMTP_PASSWORD,
        SMTP_PASSWORD_FILE,
        SMTP_FROM,
        RETRY.max_attempts,
        RETRY.retry_backoff,
        SEND_TIMEOUT,
        RETRY.poll_interval,
    ],
    check: |env| NotificationSettings::from_lookup(env).map(drop),
};

/// The host and port (if any) of an `smtp://host[:port]` URL.
pub fn parse_smtp(url: &str) -> Option<(String, Option<u16>)> {
    let rest = url.strip_prefix("smtp://")?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, Some(p.parse().ok()?)),
        None => (rest, None),
    };
    (!host.is_empty() && !host.contains(['/', '@'])).then(|| (host.to_string(), port))
}

fn parse_tls(value: &str) -> Result<SmtpTls, String> {
    match value.trim() {
        "starttls" => Ok(SmtpTls::StartTls),
        "implicit" => Ok(SmtpTls::Implicit),
        "none" => Ok(SmtpTls::None),
        _ => Err("expected starttls, implicit or none".into()),
    }
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

/// The keys in a webhook secret's text: comma- or newline-separated, each at least 16
/// characters.
pub fn webhook_keys(text: &str) -> Result<Vec<String>, String> {
    let keys: Vec<String> = text
        .split([',', '\n'])
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_string)
        .collect();
    if keys.is_empty() {
        return Err("no key".into());
    }
    if keys.iter().any(|k| k.len() < 16) {
        return Err("every key needs at least 16 characters".into());
    }
    Ok(keys)
}

/// A secret from `value` or `file` (not both); a file must be readable now.
fn secret<F: Fn(&str) -> Option<String>>(
    s: &mut Settings<F>,
    value: &Setting,
    file: &Setting,
    check: impl Fn(&str) -> Result<(), String>,
) -> Option<Secret> {
    let from_value = s.parse(value, |v| check(v).map(|()| Secret::Value(v.to_string())));
    let from_file = s.parse(file, |path| {
        let secret = Secret::File(PathBuf::from(path));
        check(&secret.read()?)?;
        Ok(secret)
    });
    match (from_value, from_file) {
        (Some(_), Some(_)) => {
            s.refuse(
                file,
                "",
                format!("set either {} or this, not both", value.name),
            );
            None
        }
        (v, f) => v.or(f),
    }
}

/// A CA file that holds at least one PEM certificate.
fn ca_file(value: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(value);
    crate::tls::read_certificates(&path)?;
    Ok(path)
}

impl NotificationSettings {
    /// The settings from the process environment.
    pub fn from_env() -> Result<Self, SettingErrors> {
        Self::from_lookup(process_env)
    }

    /// The settings from `env` (the environment, or a map in tests); every bad one named.
    pub fn from_lookup(env: impl Fn(&str) -> Option<String>) -> Result<Self, SettingErrors> {
        let mut s = Settings::new(env);
        let webhook_allow_http = s.parse(&WEBHOOK_ALLOW_HTTP, parse_bool).unwrap_or(false);
        let webhook_url = s.parse(&WEBHOOK_URL, |v| {
            crate::validate::webhook_url(v, webhook_allow_http)
        });
        let webhook_secret = secret(&mut s, &WEBHOOK_SECRET, &WEBHOOK_SECRET_FILE, |text| {
            webhook_keys(text).map(drop)
        });
        if let (Some(url), None) = (&webhook_url, &webhook_secret) {
            s.refuse(
                &WEBHOOK_URL,
                url,
                "a webhook needs MESH_NOTIFICATION_WEBHOOK_SECRET or MESH_NOTIFICATION_WEBHOOK_SECRET_FILE to sign its bodies with",
            );
        }
        let webhook_ca_file = s.parse(&WEBHOOK_CA_FILE, ca_file);
        let smtp = s.parse(&SMTP_URL, |v| {
            parse_smtp(v).ok_or_else(|| "expected smtp://host[:port]".into())
        });
        let tls = s.parse(&SMTP_TLS, parse_tls).unwrap_or(SmtpTls::StartTls);
        let smtp_ca_file = s.parse(&SMTP_CA_FILE, ca_file);
        let user = s.text(&SMTP_USER);
        let password = secret(&mut s, &SMTP_PASSWORD, &SMTP_PASSWORD_FILE, |_| Ok(()));
        let credentials = match (user, password) {
            (Some(user), Some(password)) => Some((user, password)),
            (Some(user), None) => {
                s.refuse(
                    &SMTP_USER,
                    &user,
                    "needs MESH_NOTIFICATION_SMTP_PASSWORD or MESH_NOTIFICATION_SMTP_PASSWORD_FILE",
                );
                None
            }
            (None, Some(_)) => {
                s.refuse(&SMTP_PASSWORD, "", "needs MESH_NOTIFICATION_SMTP_USER");
                None
            }
            (None, None) => None,
        };
        if tls == SmtpTls::None && credentials.is_some() {
            s.refuse(
                &SMTP_TLS,
                "none",
                "SMTP credentials are only sent over TLS; use starttls or implicit",
            );
        }
        let smtp = smtp.map(|(host, port)| SmtpSettings {
            host,
            port: port.unwrap_or(tls.default_port()),
            tls,
            ca_file: smtp_ca_file,
            credentials,
        });
        let smtp_from = s.text(&SMTP_FROM).unwrap_or_default();
        if let Err(e) = smtp_from.parse::<lettre::message::Mailbox>() {
            s.refuse(
                &SMTP_FROM,
                &smtp_from.clone(),
                format!("not a mailbox: {e}"),
            );
        }
        let settings = Self {
            webhook_url,
            webhook_allow_http,
            webhook_secret,
            webhook_ca_file,
            smtp,
            smtp_from,
            retry: RETRY.read(&mut s),
            send_timeout: s.duration(&SEND_TIMEOUT),
        };
        s.finish(settings)
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

    fn refused(pairs: &[(&str, &str)]) -> Vec<&'static str> {
        NotificationSettings::from_lookup(lookup_in(pairs))
            .unwrap_err()
            .0
            .iter()
            .map(|e| e.variable)
            .collect()
    }

    #[test]
    fn settings_are_read_and_bad_ones_named() {
        assert_eq!(
            NotificationSettings::from_lookup(|_| None).unwrap(),
            NotificationSettings::default()
        );
        let s = NotificationSettings::from_lookup(lookup_in(&[
            ("MESH_NOTIFICATION_SMTP_URL", "smtp://mail.local:2525"),
            ("MESH_NOTIFICATION_WEBHOOK_URL", "https://hooks.local/x"),
            ("MESH_NOTIFICATION_WEBHOOK_SECRET", "0123456789abcdef"),
        ]))
        .unwrap();
        let smtp = s.smtp.unwrap();
        assert_eq!(
            (smtp.host.as_str(), smtp.port, smtp.tls),
            ("mail.local", 2525, SmtpTls::StartTls),
            "STARTTLS unless said otherwise"
        );
        assert_eq!(s.webhook_url.as_deref(), Some("https://hooks.local/x"));
        assert_eq!(
            s.webhook_secret,
            Some(Secret::Value("0123456789abcdef".into()))
        );
        for (var, value) in [
            ("MESH_NOTIFICATION_SMTP_URL", "mail.local"),
            ("MESH_NOTIFICATION_WEBHOOK_URL", "ftp://x"),
            ("MESH_NOTIFICATION_MAX_ATTEMPTS", "0"),
            ("MESH_NOTIFICATION_SEND_TIMEOUT", "soon"),
            ("MESH_NOTIFICATION_SMTP_TLS", "maybe"),
            ("MESH_NOTIFICATION_SMTP_FROM", "not an address"),
            ("MESH_NOTIFICATION_SMTP_CA_FILE", "/nonexistent/ca.pem"),
            ("MESH_NOTIFICATION_WEBHOOK_CA_FILE", "/nonexistent/ca.pem"),
            ("MESH_NOTIFICATION_WEBHOOK_ALLOW_HTTP", "yes"),
            ("MESH_NOTIFICATION_WEBHOOK_SECRET", "short"),
            (
                "MESH_NOTIFICATION_SMTP_PASSWORD_FILE",
                "/nonexistent/password",
            ),
        ] {
            let e = NotificationSettings::from_lookup(|k| (k == var).then(|| value.to_string()))
                .unwrap_err();
            assert_eq!(e.0.len(), 1, "{var}: {e}");
            assert_eq!(e.0[0].variable, var);
        }
        let e = NotificationSettings::from_lookup(lookup_in(&[
            (
                "MESH_NOTIFICATION_WEBHOOK_SECRET",
                "a-secret-nobody-should-see",
            ),
            ("MESH_NOTIFICATION_WEBHOOK_SECRET_FILE", "/nonexistent"),
        ]))
        .unwrap_err();
        assert!(!e.to_string().contains("nobody-should-see"), "{e}");
    }

    #[test]
    fn tls_modes_choose_the_default_port_and_plaintext_is_explicit() {
        let smtp = |pairs: &[(&str, &str)]| {
            NotificationSettings::from_lookup(lookup_in(pairs))
                .unwrap()
                .smtp
                .unwrap()
        };
        let url = ("MESH_NOTIFICATION_SMTP_URL", "smtp://mail.local");
        assert_eq!(smtp(&[url]).port, 587);
        let implicit = smtp(&[url, ("MESH_NOTIFICATION_SMTP_TLS", "implicit")]);
        assert_eq!((implicit.tls, implicit.port), (SmtpTls::Implicit, 465));
        let none = smtp(&[url, ("MESH_NOTIFICATION_SMTP_TLS", "none")]);
        assert_eq!((none.tls, none.port), (SmtpTls::None, 25));
        let authed = smtp(&[
            url,
            ("MESH_NOTIFICATION_SMTP_USER", "mesh"),
            ("MESH_NOTIFICATION_SMTP_PASSWORD", "pw"),
        ]);
        assert_eq!(
            authed.credentials,
            Some(("mesh".into(), Secret::Value("pw".into())))
        );
        // Credentials never go out in clear; a user needs a password and the other way round.
        assert_eq!(
            refused(&[
                url,
                ("MESH_NOTIFICATION_SMTP_TLS", "none"),
                ("MESH_NOTIFICATION_SMTP_USER", "mesh"),
                ("MESH_NOTIFICATION_SMTP_PASSWORD", "pw"),
            ]),
            ["MESH_NOTIFICATION_SMTP_TLS"]
        );
        assert_eq!(
            refused(&[url, ("MESH_NOTIFICATION_SMTP_USER", "mesh")]),
            ["MESH_NOTIFICATION_SMTP_USER"]
        );
        assert_eq!(
            refused(&[url, ("MESH_NOTIFICATION_SMTP_PASSWORD", "pw")]),
            ["MESH_NOTIFICATION_SMTP_PASSWORD"]
        );
    }

    #[test]
    fn webhooks_are_https_and_signed_unless_told_otherwise() {
        let key = ("MESH_NOTIFICATION_WEBHOOK_SECRET", "0123456789abcdef");
        assert_eq!(
            refused(&[
                ("MESH_NOTIFICATION_WEBHOOK_URL", "http://hooks.local/x"),
                key
            ]),
            ["MESH_NOTIFICATION_WEBHOOK_URL"],
            "http refused by default"
        );
        assert_eq!(
            refused(&[("MESH_NOTIFICATION_WEBHOOK_URL", "https://hooks.local/x")]),
            ["MESH_NOTIFICATION_WEBHOOK_URL"],
            "a webhook without a signing key"
        );
        let dev = NotificationSettings::from_lookup(lookup_in(&[
            ("MESH_NOTIFICATION_WEBHOOK_URL", "http://hooks.local/x"),
            ("MESH_NOTIFICATION_WEBHOOK_ALLOW_HTTP", "true"),
            key,
        ]))
        .unwrap();
        assert!(dev.webhook_allow_http);
        assert_eq!(
            webhook_keys("0123456789abcdef, fedcba9876543210\n").unwrap(),
            ["0123456789abcdef", "fedcba9876543210"]
        );
        assert!(webhook_keys(" , ").is_err());
    }
}
