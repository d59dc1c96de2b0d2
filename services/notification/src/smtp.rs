//! Email through an SMTP relay with lettre: STARTTLS (required, never a plaintext fallback) or
//! implicit TLS verified against the system's CAs plus an optional CA file, AUTH PLAIN/LOGIN
//! when credentials are set, and a properly encoded message (UTF-8 subject as an encoded word,
//! the body quoted-printable or base64 as needed). Connections are pooled; a password read from
//! a file is read again for every send, and a changed one replaces the pool. A 5xx reply is a
//! permanent failure, anything else (connect, TLS, timeout, 4xx) a transient one.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Message};
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport as _, Tokio1Executor};

use crate::error::SendError;
use crate::settings::{SmtpSettings, SmtpTls};

/// One message.
#[derive(Debug, Clone)]
pub struct Mail<'a> {
    /// Recipient address.
    pub to: &'a str,
    /// Subject line (any UTF-8).
    pub subject: &'a str,
    /// Plain-text body (any UTF-8).
    pub body: &'a str,
    /// Message-ID's local part (the delivery id, so a retried send can be recognised).
    pub message_id: &'a str,
}

type Transport = AsyncSmtpTransport<Tokio1Executor>;

/// A pooled transport and the password it was built with.
type Built = Option<(Option<String>, Transport)>;

/// Sends mail through one relay.
#[derive(Clone)]
pub struct Mailer {
    settings: SmtpSettings,
    from: Mailbox,
    timeout: Duration,
    tls: Option<TlsParameters>,
    /// The transport in use.
    transport: Arc<Mutex<Built>>,
}

impl fmt::Debug for Mailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailer")
            .field(
                "relay",
                &format_args!("{}:{}", self.settings.host, self.settings.port),
            )
            .field("tls", &self.settings.tls)
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

impl Mailer {
    /// A mailer for `settings`, sending as `from`, each send given at most `timeout` per step.
    /// Fails when `from` is not a mailbox or the CA file cannot be read.
    pub fn new(settings: SmtpSettings, from: &str, timeout: Duration) -> Result<Self, String> {
        let from: Mailbox = from
            .parse()
            .map_err(|e| format!("sender {from:?} is not a mailbox: {e}"))?;
        let tls = match settings.tls {
            SmtpTls::None => None,
            SmtpTls::StartTls | SmtpTls::Implicit => {
                let mut params = TlsParameters::builder(settings.host.clone());
                if let Some(path) = &settings.ca_file {
                    let pem = std::fs::read(path)
                        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                    let cert = Certificate::from_pem(&pem)
                        .map_err(|e| format!("{}: {}", path.display(), chain(&e)))?;
                    params = params.add_root_certificate(cert);
                }
                Some(
                    params
                        .build_rustls()
                        .map_err(|e| format!("SMTP TLS: {}", chain(&e)))?,
                )
            }
        };
        Ok(Self {
            settings,
            from,
            timeout,
            tls,
            transport: Arc::new(Mutex::new(None)),
        })
    }

    fn build(&self, password: Option<&str>) -> Transport {
        let s = &self.settings;
        let tls = match (&self.tls, s.tls) {
            (Some(p), SmtpTls::StartTls) => Tls::Required(p.clone()),
            (Some(p), SmtpTls::Implicit) => Tls::Wrapper(p.clone()),
            _ => Tls::None,
        };
        let mut builder = Transport::builder_dangerous(&s.host)
            .port(s.port)
            .tls(tls)
            .timeout(Some(self.timeout))
            .pool_config(PoolConfig::new());
        if let (Some((user, _)), Some(password)) = (&s.credentials, password) {
            builder = builder
                .credentials(Credentials::new(user.clone(), password.to_string()))
                .authentication(vec![Mechanism::Plain, Mechanism::Login]);
        }
        builder.build()
    }

    /// The transport for the current password (rebuilt when it changed).
    fn transport(&self) -> Result<Transport, SendError> {
        let password = match &self.settings.credentials {
            Some((_, secret)) => Some(
                secret
                    .read()
                    .map_err(|e| SendError::transient(format!("smtp password: {e}")))?,
            ),
            None => None,
        };
        let mut cached = self
            .transport
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((built_with, transport)) = cached.as_ref()
            && *built_with == password
        {
            return Ok(transport.clone());
        }
        let transport = self.build(password.as_deref());
        *cached = Some((password, transport.clone()));
        Ok(transport)
    }

    /// The message for `mail`: a bad recipient is a permanent failure.
    pub fn message(&self, mail: &Mail<'_>) -> Result<Message, SendError> {
        let to: Mailbox = mail
            .to
            .parse()
            .map_err(|e| SendError::permanent(format!("recipient {:?}: {e}", mail.to)))?;
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(mail.subject)
            .message_id(Some(format!("<{}@mesh>", mail.message_id)))
            .header(ContentType::TEXT_PLAIN)
            .body(mail.body.to_string())
            .map_err(|e| SendError::permanent(format!("message: {e}")))
    }

    /// Sends `mail` once.
    pub async fn send(&self, mail: &Mail<'_>) -> Result<(), SendError> {
        let message = self.message(mail)?;
        let transport = self.transport()?;
        let relay = format!("smtp {}:{}", self.settings.host, self.settings.port);
        match transport.send(message).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_permanent() => {
                Err(SendError::permanent(format!("{relay}: {}", chain(&e))))
            }
            Err(e) => Err(SendError::transient(format!("{relay}: {}", chain(&e)))),
        }
    }
}
