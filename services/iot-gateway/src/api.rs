//! The `iot.v1.GatewayService` implementation.

use std::sync::Arc;

use mesh_contracts::iot::v1::gateway_service_server::GatewayService;
use mesh_contracts::iot::v1::*;
use mesh_runtime::CallContext;
use mesh_runtime::domain::money::{self, Amount};
use mesh_runtime::domain::{ServiceError, page_token};
use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};

use crate::Gateway;
use crate::channel::{self, ack_wait};
use crate::error::GatewayError;
use crate::registry::Enqueued;

type Result<T> = std::result::Result<T, GatewayError>;

/// The gateway service: a handle on the shared [`Gateway`].
#[derive(Debug, Clone)]
pub struct GatewayApi {
    gateway: Arc<Gateway>,
}

impl GatewayApi {
    /// The shared gateway.
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// The service over `gateway`.
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }

    async fn send(&self, req: SendCommandRequest) -> Result<SendCommandResponse> {
        let machine = channel::device_id(&req.machine_id)
            .map_err(|_| GatewayError::invalid("machine_id", "required: a machine id"))?;
        let mut command = req
            .command
            .ok_or_else(|| GatewayError::invalid("command", "required"))?;
        validate_action(&command)?;
        if command.command_id.len() > 64 {
            return Err(GatewayError::invalid(
                "command.command_id",
                "at most 64 characters",
            ));
        }
        if let Some(t) = command.expire_time
            && (t.seconds, t.nanos) <= {
                let now = crate::registry::timestamp(std::time::SystemTime::now());
                (now.seconds, now.nanos)
            }
        {
            return Err(GatewayError::invalid(
                "command.expire_time",
                "must be in the future",
            ));
        }
        command.seq = 0;
        command.issue_time = None;
        let deadline = CallContext::current().and_then(|c| c.deadline);
        let wait = ack_wait(req.ack_timeout, self.gateway.options.ack_timeout, deadline)?;
        let started = Instant::now();
        let enqueued = self
            .gateway
            .registry
            .enqueue(&machine, command, started + wait)?;
        let (command, rx) = match enqueued {
            Enqueued::Done(command, ack) => {
                return Ok(SendCommandResponse {
                    command: Some(command),
                    ack: Some(ack),
                });
            }
            Enqueued::Waiting(command, rx) => (command, rx),
        };
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(ack)) => Ok(SendCommandResponse {
                command: Some(command),
                ack: Some(ack),
            }),
            Ok(Err(_)) if started.elapsed() < wait => Err(GatewayError::Expired {
                machine,
                command_id: command.command_id,
            }),
            _ => Err(GatewayError::AckTimeout {
                machine,
                command_id: command.command_id,
                waited: wait,
            }),
        }
    }

    fn list(&self, req: &ListDeviceSessionsRequest) -> Result<ListDeviceSessionsResponse> {
        let limit = page_token::page_size(req.page_size, 100, 1000)?;
        let state = match SessionState::try_from(req.state) {
            Ok(SessionState::Unspecified) => None,
            Ok(s) => Some(s),
            Err(_) => return Err(GatewayError::invalid("state", "unknown value")),
        };
        let listing = ("device_sessions", req.state);
        let after: Option<String> = page_token::decode(&req.page_token, &listing)?;
        let mut sessions = self.gateway.registry.sessions(
            after.as_deref(),
            usize::try_from(limit).unwrap_or(0) + 1,
            state,
        );
        let next_page_token =
            page_token::next_page(&mut sessions, limit, &listing, |s| s.machine_id.clone());
        Ok(ListDeviceSessionsResponse {
            sessions,
            next_page_token,
        })
    }
}

/// Exactly one action, with its required fields.
fn validate_action(c: &Command) -> Result<()> {
    use command::Action;
    match &c.action {
        None => Err(GatewayError::invalid(
            "command.action",
            "required: one of dispense, reboot, set_price_display",
        )),
        Some(Action::Dispense(d)) if d.slot.is_empty() || d.slot.len() > 8 => Err(
            GatewayError::invalid("command.dispense.slot", "required, at most 8 characters"),
        ),
        Some(Action::SetPriceDisplay(p)) if p.slot.is_empty() || p.slot.len() > 8 => {
            Err(GatewayError::invalid(
                "command.set_price_display.slot",
                "required, at most 8 characters",
            ))
        }
        Some(Action::SetPriceDisplay(p)) => {
            money::money(
                "command.set_price_display.price",
                p.price.as_ref(),
                Amount::NonNegative,
            )?;
            Ok(())
        }
        Some(_) => Ok(()),
    }
}

#[tonic::async_trait]
impl GatewayService for GatewayApi {
    type OpenChannelStream =
        futures::stream::BoxStream<'static, std::result::Result<OpenChannelResponse, Status>>;

    async fn open_channel(
        &self,
        request: Request<Streaming<OpenChannelRequest>>,
    ) -> std::result::Result<Response<Self::OpenChannelStream>, Status> {
        Ok(Response::new(Box::pin(channel::open(
            self.gateway.clone(),
            request,
        ))))
    }

    async fn send_command(
        &self,
        request: Request<SendCommandRequest>,
    ) -> std::result::Result<Response<SendCommandResponse>, Status> {
        Ok(Response::new(self.send(request.into_inner()).await?))
    }

    async fn get_device_session(
        &self,
        request: Request<GetDeviceSessionRequest>,
    ) -> std::result::Result<Response<GetDeviceSessionResponse>, Status> {
        let id = &request.get_ref().machine_id;
        if id.is_empty() {
            return Err(GatewayError::invalid("machine_id", "required").into());
        }
        let device = self
            .gateway
            .registry
            .get(id)
            .ok_or_else(|| ServiceError::not_found("session of machine", id))
            .map_err(GatewayError::from)?;
        Ok(Response::new(GetDeviceSessionResponse {
            session: Some(self.gateway.registry.session(&device)),
        }))
    }

    async fn list_device_sessions(
        &self,
        request: Request<ListDeviceSessionsRequest>,
    ) -> std::result::Result<Response<ListDeviceSessionsResponse>, Status> {
        Ok(Response::new(self.list(request.get_ref())?))
    }
}
