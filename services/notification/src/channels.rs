//! Sending one delivery on its channel: LOG (a `tracing` line), WEBHOOK (HTTP POST of a JSON
//! body, `Idempotency-Key: <delivery id>` so receivers can drop a retried post), EMAIL (SMTP via
//! [`crate::smtp`]). A send either succeeds or returns the error to record; retries are the
//! [`crate::deliver`] queue's job.

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mesh_contracts::notification::v1::{Channel, Delivery};

use crate::settings::NotificationSettings;
use crate::smtp;

/// Sends deliveries.
#[derive(Debug, Clone)]
pub struct Sender {
    settings: NotificationSettings,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl Sender {
    /// A sender with `settings` (SMTP relay, timeouts).
    pub fn new(settings: NotificationSettings) -> Self {
        Self {
            settings,
            http: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Sends `d` once.
    pub async fn send(&self, d: &Delivery) -> Result<(), String> {
        let send = async {
            match Channel::try_from(d.channel).unwrap_or_default() {
                Channel::Log => {
                    tracing::info!(target: "notification", delivery = %d.id, user = %d.user_id, event_type = %d.event_type, subject = %d.subject, body = %d.body, "notification");
                    Ok(())
                }
                Channel::Webhook => self.post(d).await,
                Channel::Email => match &self.settings.smtp {
                    Some((host, port)) => {
                        smtp::send(
                            host,
                            *port,
                            &smtp::Mail {
                                from: &self.settings.smtp_from,
                                to: &d.recipient,
                                subject: &d.subject,
                                body: &d.body,
                                message_id: &d.id,
                            },
                        )
                        .await
                    }
                    None => Err("email is not configured (MESH_NOTIFICATION_SMTP_URL)".into()),
                },
                Channel::Unspecified => Err("no channel".into()),
            }
        };
        tokio::time::timeout(self.settings.send_timeout, send)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {:?}", self.settings.send_timeout)))
    }

    async fn post(&self, d: &Delivery) -> Result<(), String> {
        crate::validate::webhook_url(&d.recipient)?;
        let body = serde_json::json!({
            "delivery_id": d.id,
            "user_id": d.user_id,
            "event_id": d.event_id,
            "event_type": d.event_type,
            "subject": d.subject,
            "body": d.body,
        });
        let request = http::Request::post(&d.recipient)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", &d.id)
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| format!("webhook request: {e}"))?;
        let response = self
            .http
            .request(request)
            .await
            .map_err(|e| format!("webhook POST {}: {e}", d.recipient))?;
        let status = response.status();
        // Drain the body so the connection can be reused.
        let _ = response.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!(
                "webhook POST {} answered HTTP {status}",
                d.recipient
            ))
        }
    }
}
