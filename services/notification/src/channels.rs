//! Sending one delivery on its channel: LOG (a `tracing` line), WEBHOOK (a signed https POST,
//! [`crate::webhook`]), EMAIL (SMTP over TLS, [`crate::smtp`]). A send either succeeds or
//! returns a [`SendError`] saying whether a retry can help; retries are the [`crate::deliver`]
//! queue's job.

use mesh_contracts::notification::v1::{Channel, Delivery};

use crate::error::SendError;
use crate::settings::NotificationSettings;
use crate::smtp::{Mail, Mailer};
use crate::webhook::Webhooks;

/// Sends deliveries.
#[derive(Debug, Clone)]
pub struct Sender {
    settings: NotificationSettings,
    webhooks: Webhooks,
    mailer: Option<Mailer>,
}

impl Sender {
    /// A sender with `settings` (SMTP relay, webhook trust and keys, timeouts). Fails when a CA
    /// file cannot be read or the sender address is not a mailbox.
    pub fn new(settings: NotificationSettings) -> Result<Self, String> {
        let mailer = match &settings.smtp {
            Some(smtp) => Some(Mailer::new(
                smtp.clone(),
                &settings.smtp_from,
                settings.send_timeout,
            )?),
            None => None,
        };
        Ok(Self {
            webhooks: Webhooks::new(&settings)?,
            mailer,
            settings,
        })
    }

    /// Sends `d` once.
    pub async fn send(&self, d: &Delivery) -> Result<(), SendError> {
        let send = async {
            match Channel::try_from(d.channel).unwrap_or_default() {
                Channel::Log => {
                    tracing::info!(target: "notification", delivery = %d.id, user = %d.user_id, event_type = %d.event_type, subject = %d.subject, body = %d.body, "notification");
                    Ok(())
                }
                Channel::Webhook => self.webhooks.post(d).await,
                Channel::Email => match &self.mailer {
                    Some(mailer) => {
                        mailer
                            .send(&Mail {
                                to: &d.recipient,
                                subject: &d.subject,
                                body: &d.body,
                                message_id: &d.id,
                            })
                            .await
                    }
                    None => Err(SendError::permanent(
                        "email is not configured (MESH_NOTIFICATION_SMTP_URL)",
                    )),
                },
                Channel::Unspecified => Err(SendError::permanent("no channel")),
            }
        };
        tokio::time::timeout(self.settings.send_timeout, send)
            .await
            .unwrap_or_else(|_| {
                Err(SendError::transient(format!(
                    "no answer within {:?}",
                    self.settings.send_timeout
                )))
            })
    }
}
