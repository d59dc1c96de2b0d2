//! Notification's part of the order saga: `order.confirmed`, `order.cancelled` and
//! `order.refunded` become one delivery per channel for the order's customer, rendered from the
//! event type's templates and respecting the customer's preferences. The deliveries are written
//! with the event's handled record under the key `<event type>:<order id>:<channel>` (an order has
//! several refunds: `order.refunded:<order id>:<refund id>:<channel>`), so the same fact
//! delivered again (same or new event id) makes no second delivery; sending is the
//! [`crate::deliver::Deliverer`]'s job.
//!
//! The step is a read (preferences, email, templates) and one insert of every delivery that
//! also records the event: a one-statement step ([`Step::OneStatement`]), run without a
//! transaction when its event is alone in its batch. An insert that writes nothing (every key
//! taken: the fact was delivered before) runs again in a transaction.

use mesh_contracts::events::v1::Envelope;
use mesh_contracts::notification::v1::{Channel, Delivery, DeliveryStatus};
use mesh_runtime::CallContext;
use mesh_runtime::consumer::{HandlerError, Step};
use mesh_runtime::outbox::Tx;
use mesh_runtime::typed_handler::{Handled, TypedHandler, Undecoded};

use crate::deliver::Deliverer;
use crate::render;
use crate::store;
use crate::validate::channel_name;

/// Sends the customer a notification for the event it handles.
#[derive(Debug, Clone)]
pub struct NotifyCustomer(pub Deliverer);

impl TypedHandler for NotifyCustomer {
    type Event = Undecoded;
    const STEP: Step = Step::OneStatement;

    async fn handle(&self, _: Undecoded, event: &Envelope, tx: &mut Tx) -> Handled {
        let payload = event
            .payload
            .as_ref()
            .ok_or_else(|| HandlerError::permanent(format!("{}: no payload", event.r#type)))?;
        let fields = render::fields(payload);
        let order_id = fields
            .get("orderId")
            .cloned()
            .filter(|o| !o.is_empty())
            .unwrap_or_else(|| event.subject.clone());
        // The fact a delivery is about: the order, or one of its refunds.
        let fact = match fields.get("refundId").filter(|r| !r.is_empty()) {
            Some(refund) => format!("{order_id}:{refund}"),
            None => order_id,
        };
        let user_id = fields.get("customerId").cloned().unwrap_or_default();
        // One statement reads the preferences, the email and the templates; one inserts
        // every channel's delivery.
        let Some(plan) = store::notify_plan(tx, &event.r#type, &user_id).await? else {
            return Ok(());
        };
        let prefs = &plan.preferences;
        if prefs.muted_event_types.contains(&event.r#type) {
            return Ok(());
        }
        let traceparent = CallContext::current()
            .map(|c| c.trace.to_string())
            .unwrap_or_default();
        let mut deliveries = Vec::new();
        for channel in [Channel::Log, Channel::Webhook, Channel::Email] {
            let recipient = match channel {
                Channel::Log => "log".to_string(),
                Channel::Webhook => {
                    if prefs.webhook_url.is_empty() {
                        self.0.settings().webhook_url.clone().unwrap_or_default()
                    } else {
                        prefs.webhook_url.clone()
                    }
                }
                Channel::Email if self.0.settings().smtp.is_some() => prefs.email.clone(),
                _ => String::new(),
            };
            if recipient.is_empty() {
                continue;
            }
            let Some((_, template)) = plan.templates.iter().find(|(c, _)| *c == channel) else {
                continue;
            };
            let opted_out = prefs.opted_out_channels.contains(&(channel as i32));
            let status = if opted_out {
                DeliveryStatus::Suppressed
            } else {
                DeliveryStatus::Queued
            };
            let delivery = Delivery {
                id: uuid::Uuid::now_v7().to_string(),
                user_id: user_id.clone(),
                channel: channel as i32,
                recipient,
                event_id: event.id.clone(),
                event_type: event.r#type.clone(),
                template_id: template.id.clone(),
                subject: render::render(&template.subject, &fields),
                body: render::render(&template.body, &fields),
                status: status as i32,
                ..Default::default()
            };
            let key = format!("{}:{fact}:{}", event.r#type, channel_name(channel));
            deliveries.push((delivery, Some(key)));
        }
        let rows: Vec<(&Delivery, Option<String>)> =
            deliveries.iter().map(|(d, k)| (d, k.clone())).collect();
        let lease_until = self.0.lease_until();
        let inserted = store::insert_deliveries(tx, &rows, &traceparent, lease_until).await?;
        for row in inserted {
            if row.delivery.status == DeliveryStatus::Queued as i32 {
                self.0.send_after_commit(tx, row);
            }
        }
        Ok(())
    }
}
