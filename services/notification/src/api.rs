//! The `notification.v1.NotificationService` implementation.

use mesh_contracts::notification::v1::notification_service_server::NotificationService;
use mesh_contracts::notification::v1::*;
use mesh_runtime::auth::{Identity, Role};
use mesh_runtime::domain::page_token;
use mesh_runtime::{CallContext, Database};
use tonic::{Request, Response, Status};

use crate::deliver::Deliverer;
use crate::error::NotificationError;
use crate::store::{self, DeliveryFilter};
use crate::validate::{self, channel_name};
use crate::webhook::user_signing_key;

type Result<T> = std::result::Result<T, NotificationError>;

/// The notification service.
#[derive(Debug, Clone)]
pub struct NotificationApi {
    db: Database,
    deliverer: Deliverer,
}

/// Whether the caller may act for `user_id`: staff, services and admins for anyone, others only
/// for themselves.
fn may_act_for(identity: Option<&Identity>, user_id: &str) -> Result<()> {
    match identity {
        Some(i) if i.has_any(&[Role::Staff, Role::Service]) || i.subject == user_id => Ok(()),
        _ => Err(NotificationError::PermissionDenied(format!(
            "only staff, services or the user `{user_id}` may do this"
        ))),
    }
}

impl NotificationApi {
    /// The service over `db`, queueing sends for `deliverer`.
    pub fn new(db: Database, deliverer: Deliverer) -> Self {
        Self { db, deliverer }
    }

    async fn conn(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Any>> {
        Ok(self.db.acquire().await?)
    }

    async fn upsert(&self, req: UpsertTemplateRequest) -> Result<UpsertTemplateResponse> {
        let t = req
            .template
            .ok_or_else(|| NotificationError::invalid("template", "required"))?;
        let template = Template {
            id: String::new(),
            event_type: validate::event_type("template.event_type", &t.event_type)?,
            channel: validate::channel("template.channel", t.channel)? as i32,
            locale: {
                let ok = t.locale.len() <= 35
                    && t.locale
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-');
                if !ok {
                    return Err(NotificationError::invalid(
                        "template.locale",
                        "a BCP 47 tag such as en or pt-BR",
                    ));
                }
                t.locale
            },
            subject: validate::text("template.subject", &t.subject, 200, false)?,
            body: validate::text("template.body", &t.body, 10_000, true)?,
            enabled: t.enabled,
            update_time: None,
        };
        let mut c = self.conn().await?;
        let (template, replaced) = store::upsert_template(&mut c, &template).await?;
        Ok(UpsertTemplateResponse {
            template: Some(template),
            replaced,
        })
    }

    async fn templates(&self, req: ListTemplatesRequest) -> Result<ListTemplatesResponse> {
        let limit = page_token::page_size(req.page_size, 100, 1000)?;
        let event_type = if req.event_type.is_empty() {
            None
        } else {
            Some(validate::event_type("event_type", &req.event_type)?)
        };
        let channel = if req.channel == 0 {
            None
        } else {
            Some(validate::channel("channel", req.channel)?)
        };
        let listing = ("templates", &event_type, req.channel);
        let after: String = page_token::decode(&req.page_token, &listing)?.unwrap_or_default();
        let mut c = self.conn().await?;
        let mut templates =
            store::list_templates(&mut c, event_type.as_deref(), channel, &after, limit + 1)
                .await?;
        let next_page_token =
            page_token::next_page(&mut templates, limit, &listing, |t| t.id.clone());
        Ok(ListTemplatesResponse {
            templates,
            next_page_token,
        })
    }

    async fn deliveries(
        &self,
        identity: Option<&Identity>,
        req: ListDeliveriesRequest,
    ) -> Result<ListDeliveriesResponse> {
        let limit = page_token::page_size(req.page_size, 50, 500)?;
        if !identity.is_some_and(|i| i.has_any(&[Role::Staff, Role::Service])) {
            if req.user_id.is_empty() {
                return Err(NotificationError::invalid(
                    "user_id",
                    "required unless you are staff or a service (your own user id)",
                ));
            }
            may_act_for(identity, &req.user_id)?;
        }
        let status = match DeliveryStatus::try_from(req.status) {
            Ok(DeliveryStatus::Unspecified) => String::new(),
            Ok(s) => store::status_name(s).to_string(),
            Err(_) => return Err(NotificationError::invalid("status", "unknown status")),
        };
        let channel = if req.channel == 0 {
            String::new()
        } else {
            channel_name(validate::channel("channel", req.channel)?).to_string()
        };
        let mut filter = DeliveryFilter {
            user_id: req.user_id,
            status,
            event_type: req.event_type,
            event_id: req.event_id,
            channel,
            before: None,
        };
        let listing = (
            "deliveries",
            &filter.user_id,
            &filter.status,
            &filter.event_type,
            &filter.event_id,
            &filter.channel,
        );
        filter.before = page_token::decode(&req.page_token, &listing)?;
        let mut c = self.conn().await?;
        let mut rows = store::list_deliveries(&mut c, &filter, limit + 1).await?;
        let next_page_token =
            page_token::next_page(&mut rows, limit, &listing, |(at, d)| (*at, d.id.clone()));
        Ok(ListDeliveriesResponse {
            deliveries: rows.into_iter().map(|(_, d)| d).collect(),
            next_page_token,
        })
    }

    async fn update(
        &self,
        identity: Option<&Identity>,
        req: UpdatePreferencesRequest,
    ) -> Result<Preferences> {
        let new = req
            .preferences
            .ok_or_else(|| NotificationError::invalid("preferences", "required"))?;
        let user_id = validate::id("preferences.user_id", &new.user_id)?;
        may_act_for(identity, &user_id)?;
        let paths = req
            .update_mask
            .map(|m| m.paths)
            .filter(|p| !p.is_empty())
            .ok_or_else(|| {
                NotificationError::invalid("update_mask", "required: the fields to update")
            })?;
        let mut c = self.conn().await?;
        let mut prefs = store::preferences(&mut c, &user_id).await?;
        for path in &paths {
            match path.as_str() {
                "opted_out_channels" => {
                    let mut channels = Vec::new();
                    for (i, ch) in new.opted_out_channels.iter().enumerate() {
                        let ch = validate::channel(
                            &format!("preferences.opted_out_channels[{i}]"),
                            *ch,
                        )? as i32;
                        if !channels.contains(&ch) {
                            channels.push(ch);
                        }
                    }
                    prefs.opted_out_channels = channels;
                }
                "muted_event_types" => {
                    let mut types = Vec::new();
                    for (i, t) in new.muted_event_types.iter().enumerate() {
                        let field = format!("preferences.muted_event_types[{i}]");
                        let t = validate::event_type(&field, t)?;
                        if t.starts_with("order.") {
                            return Err(NotificationError::invalid(
                                field,
                                "transactional notifications (order.*) cannot be muted; opt out of a channel instead",
                            ));
                        }
                        if !types.contains(&t) {
                            types.push(t);
                        }
                    }
                    prefs.muted_event_types = types;
                }
                "webhook_signing_key" => {
                    return Err(NotificationError::invalid(
                        "preferences.webhook_signing_key",
                        "output only: derived from the service's signing key and webhook_url",
                    ));
                }
                "email" => {
                    return Err(NotificationError::invalid(
                        "preferences.email",
                        "output only: the email is the user service's (from auth); notification follows user.updated",
                    ));
                }
                "webhook_url" => {
                    prefs.webhook_url = if new.webhook_url.is_empty() {
                        String::new()
                    } else {
                        validate::webhook_url(
                            &new.webhook_url,
                            self.deliverer.settings().webhook_allow_http,
                        )
                        .map_err(|r| NotificationError::invalid("preferences.webhook_url", r))?
                    };
                }
                other => {
                    return Err(NotificationError::invalid(
                        "update_mask",
                        format!(
                            "unknown field `{other}`; one of opted_out_channels, muted_event_types, webhook_url"
                        ),
                    ));
                }
            }
        }
        store::save_preferences(&mut c, &prefs).await?;
        Ok(store::preferences(&mut c, &user_id).await?)
    }

    async fn send(&self, req: SendNotificationRequest) -> Result<Delivery> {
        let channel = validate::channel("channel", req.channel)?;
        let body = validate::text("body", &req.body, 10_000, true)?;
        let subject = validate::text("subject", &req.subject, 200, false)?;
        let user_id = if req.user_id.is_empty() {
            String::new()
        } else {
            validate::id("user_id", &req.user_id)?
        };
        if user_id.is_empty() && req.recipient.is_empty() {
            return Err(NotificationError::invalid(
                "recipient",
                "a recipient or a user_id is required",
            ));
        }
        let key = if req.idempotency_key.is_empty() {
            None
        } else {
            Some(format!(
                "send:{}:{}",
                validate::id("idempotency_key", &req.idempotency_key)?,
                channel_name(channel)
            ))
        };
        if channel == Channel::Email && self.deliverer.settings().smtp.is_none() {
            return Err(NotificationError::FailedPrecondition(
                "channel: CHANNEL_EMAIL is not configured (set MESH_NOTIFICATION_SMTP_URL)".into(),
            ));
        }
        if channel == Channel::Webhook && self.deliverer.settings().webhook_secret.is_none() {
            return Err(NotificationError::FailedPrecondition(
                "channel: CHANNEL_WEBHOOK is not configured (set MESH_NOTIFICATION_WEBHOOK_SECRET to sign with)".into(),
            ));
        }
        let mut tx = self.db.begin().await?;
        if let Some(k) = &key
            && let Some(existing) = store::delivery_by_key(&mut tx, k).await?
        {
            return Ok(existing.delivery);
        }
        let prefs = store::preferences(&mut tx, &user_id).await?;
        let recipient = if !req.recipient.is_empty() {
            match channel {
                Channel::Webhook => validate::webhook_url(
                    &req.recipient,
                    self.deliverer.settings().webhook_allow_http,
                )
                .map_err(|r| NotificationError::invalid("recipient", r))?,
                Channel::Email => validate::email("recipient", &req.recipient)?,
                _ => validate::text("recipient", &req.recipient, 200, true)?,
            }
        } else {
            let found = match channel {
                Channel::Log => "log".to_string(),
                Channel::Webhook if !prefs.webhook_url.is_empty() => prefs.webhook_url.clone(),
                Channel::Webhook => self
                    .deliverer
                    .settings()
                    .webhook_url
                    .clone()
                    .unwrap_or_default(),
                _ => prefs.email.clone(),
            };
            if found.is_empty() {
                return Err(NotificationError::FailedPrecondition(format!(
                    "recipient: user `{user_id}` has no address for {}; pass a recipient",
                    channel.as_str_name()
                )));
            }
            found
        };
        // An explicit recipient bypasses preferences; a user's own address honours opt-outs.
        let suppressed =
            req.recipient.is_empty() && prefs.opted_out_channels.contains(&(channel as i32));
        let status = if suppressed {
            DeliveryStatus::Suppressed
        } else {
            DeliveryStatus::Queued
        };
        let delivery = Delivery {
            id: uuid::Uuid::now_v7().to_string(),
            user_id,
            channel: channel as i32,
            recipient,
            subject,
            body,
            status: status as i32,
            ..Default::default()
        };
        let traceparent = CallContext::current()
            .map(|c| c.trace.to_string())
            .unwrap_or_default();
        let lease_until = self.deliverer.lease_until();
        let inserted = store::insert_delivery(
            &mut tx,
            &delivery,
            key.as_deref(),
            &traceparent,
            lease_until,
        )
        .await?;
        let Some(inserted) = inserted else {
            // The same key raced us.
            drop(tx);
            let mut c = self.conn().await?;
            if let Some(k) = &key
                && let Some(existing) = store::delivery_by_key(&mut c, k).await?
            {
                return Ok(existing.delivery);
            }
            return Err(NotificationError::FailedPrecondition(
                "idempotency_key: used concurrently; retry".into(),
            ));
        };
        if !suppressed {
            self.deliverer.send_after_commit(&mut tx, inserted);
        }
        tx.commit().await?;
        let mut c = self.conn().await?;
        Ok(store::delivery(&mut c, &delivery.id)
            .await?
            .map_or(delivery, |r| r.delivery))
    }
}

#[tonic::async_trait]
impl NotificationService for NotificationApi {
    async fn upsert_template(
        &self,
        r: Request<UpsertTemplateRequest>,
    ) -> std::result::Result<Response<UpsertTemplateResponse>, Status> {
        Ok(Response::new(self.upsert(r.into_inner()).await?))
    }

    async fn list_templates(
        &self,
        r: Request<ListTemplatesRequest>,
    ) -> std::result::Result<Response<ListTemplatesResponse>, Status> {
        Ok(Response::new(self.templates(r.into_inner()).await?))
    }

    async fn list_deliveries(
        &self,
        r: Request<ListDeliveriesRequest>,
    ) -> std::result::Result<Response<ListDeliveriesResponse>, Status> {
        let identity = Identity::of(&r).cloned();
        Ok(Response::new(
            self.deliveries(identity.as_ref(), r.into_inner()).await?,
        ))
    }

    async fn get_preferences(
        &self,
        r: Request<GetPreferencesRequest>,
    ) -> std::result::Result<Response<GetPreferencesResponse>, Status> {
        let user_id = validate::id("user_id", &r.get_ref().user_id)?;
        may_act_for(Identity::of(&r), &user_id)?;
        let mut c = self.conn().await?;
        let mut preferences = store::preferences(&mut c, &user_id)
            .await
            .map_err(NotificationError::from)?;
        preferences.webhook_signing_key =
            user_signing_key(self.deliverer.settings(), &preferences.webhook_url);
        Ok(Response::new(GetPreferencesResponse {
            preferences: Some(preferences),
        }))
    }

    async fn update_preferences(
        &self,
        r: Request<UpdatePreferencesRequest>,
    ) -> std::result::Result<Response<UpdatePreferencesResponse>, Status> {
        let identity = Identity::of(&r).cloned();
        let mut preferences = self.update(identity.as_ref(), r.into_inner()).await?;
        preferences.webhook_signing_key =
            user_signing_key(self.deliverer.settings(), &preferences.webhook_url);
        Ok(Response::new(UpdatePreferencesResponse {
            preferences: Some(preferences),
        }))
    }

    async fn send_notification(
        &self,
        r: Request<SendNotificationRequest>,
    ) -> std::result::Result<Response<SendNotificationResponse>, Status> {
        let delivery = self.send(r.into_inner()).await?;
        Ok(Response::new(SendNotificationResponse {
            delivery: Some(delivery),
        }))
    }
}
