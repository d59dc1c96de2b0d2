//! The device channel (`OpenChannel`): the Hello handshake, one task per connection reading the
//! device's frames, and the response stream that pulls Welcome and commands from the device's
//! state in the [`Registry`].
//!
//! Backpressure: the response stream holds no queue of its own. It is polled by the HTTP/2
//! connection only when the device's flow-control window has room, and then takes the next
//! unsent command from the device's queue of unacknowledged commands (bounded by
//! `max_pending`). A slow or stalled device therefore fills only its own queue; `SendCommand`
//! to it fails with `RESOURCE_EXHAUSTED` when full, and nobody else waits.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use mesh_contracts::events::v1::{DeviceConnected, DeviceDisconnected, DeviceTelemetry};
use mesh_contracts::iot::v1::open_channel_request::Frame as Up;
use mesh_contracts::iot::v1::{OpenChannelRequest, OpenChannelResponse, PowerSource};
use mesh_runtime::auth::Role;
use mesh_runtime::outbox::Event;
use tokio::time::Instant;
use tonic::{Status, Streaming};

use crate::Gateway;
use crate::error::GatewayError;
use crate::registry::{AckOutcome, Attached, Device, HelloInfo};

type Handshake = futures::future::BoxFuture<'static, Result<(Arc<Device>, u64), Status>>;

/// The response stream of one connection: first the handshake (reading and checking the
/// Hello), then the frames of the live session.
///
/// The handshake runs inside the stream, after the call has been answered with its headers, so
/// the call itself completes at once: a storm of reconnecting devices does not pile up as
/// calls in flight (which the server's load shedder would refuse).
pub struct Outbound {
    gateway: Arc<Gateway>,
    handshake: Option<Handshake>,
    device: Option<Arc<Device>>,
    generation: u64,
    done: bool,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("device", &self.device.as_ref().map(|d| d.id.clone()))
            .field("generation", &self.generation)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Stream for Outbound {
    type Item = Result<OpenChannelResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(handshake) = self.handshake.as_mut() {
            match handshake.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(status)) => {
                    self.handshake = None;
                    self.done = true;
                    return Poll::Ready(Some(Err(status)));
                }
                Poll::Ready(Ok((device, generation))) => {
                    self.handshake = None;
                    self.device = Some(device);
                    self.generation = generation;
                }
            }
        }
        let Some(device) = self.device.clone() else {
            self.done = true;
            return Poll::Ready(None);
        };
        match self
            .gateway
            .registry
            .poll_frame(&device, self.generation, cx)
        {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(frame)) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(Err(reason)) => {
                self.done = true;
                if reason == CLOSED_BY_DEVICE {
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Err(Status::unavailable(format!(
                        "device session ended: {reason}"
                    )))))
                }
            }
        }
    }
}

/// Why a session ended when the device closed its side (ends the response with OK).
const CLOSED_BY_DEVICE: &str = "stream closed by the device";

/// Checks the device id of a Hello (the kit's machine id format).
pub fn device_id(value: &str) -> Result<String, GatewayError> {
    Ok(mesh_runtime::domain::ids::MACHINE_ID.check("hello.device_id", value)?)
}

/// Accepts a connection: returns its response stream at once; the stream first runs
/// [`handshake`].
pub fn open(
    gateway: Arc<Gateway>,
    request: tonic::Request<Streaming<OpenChannelRequest>>,
) -> Outbound {
    let remote = request
        .remote_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let inbound = request.into_inner();
    Outbound {
        gateway: gateway.clone(),
        handshake: Some(Box::pin(handshake(gateway, inbound, remote))),
        device: None,
        generation: 0,
        done: false,
    }
}

/// Reads and checks the Hello (within `hello_timeout`), makes the connection the device's live
/// one, and starts its task on the gateway's tracker ([`Gateway::connections`]).
async fn handshake(
    gateway: Arc<Gateway>,
    mut inbound: Streaming<OpenChannelRequest>,
    remote: String,
) -> Result<(Arc<Device>, u64), Status> {
    let first = tokio::time::timeout(gateway.options.hello_timeout, inbound.message())
        .await
        .map_err(|_| {
            Status::deadline_exceeded(format!(
                "hello: no Hello frame within {:?}",
                gateway.options.hello_timeout
            ))
        })??;
    let Some(OpenChannelRequest {
        frame: Some(Up::Hello(hello)),
    }) = first
    else {
        return Err(GatewayError::invalid("frame", "the first frame must be hello").into());
    };
    let id = device_id(&hello.device_id)?;
    if hello.credential_token.is_empty() {
        return Err(GatewayError::invalid("hello.credential_token", "required").into());
    }
    let identity = gateway
        .verifier
        .verify(&hello.credential_token)
        .await
        .map_err(|e| GatewayError::Unauthenticated {
            device: id.clone(),
            reason: format!("credential not accepted: {e}"),
        })?;
    if !identity.has_role(Role::Device) || identity.subject != id {
        return Err(GatewayError::Unauthenticated {
            device: id,
            reason: "the credential is not a device credential of this device".into(),
        }
        .into());
    }
    let attached = gateway.registry.attach(
        &id,
        HelloInfo {
            last_acked_seq: hello.last_acked_command_seq,
            firmware_version: hello.firmware_version.clone(),
            remote_address: remote,
        },
    );
    tracing::debug!(machine = %id, session = %attached.session_id, superseded = attached.superseded, "device connected");
    gateway
        .events
        .send(Event::new(
            "device.connected",
            &id,
            "DeviceConnected",
            &DeviceConnected {
                machine_id: id.clone(),
                session_id: attached.session_id.clone(),
                firmware_version: hello.firmware_version,
                gateway_instance: gateway.registry.instance().to_string(),
            },
        ))
        .await;
    gateway.dirty.mark(&attached.device.id);
    let live = (attached.device.clone(), attached.generation);
    let connections = gateway.connections.clone();
    connections.spawn(serve(gateway, attached, inbound));
    Ok(live)
}

/// The connection's task: reads frames until the device closes, fails, misses its heartbeats,
/// is superseded by a newer connection, or the gateway shuts down.
async fn serve(
    gateway: Arc<Gateway>,
    attached: Attached,
    mut inbound: Streaming<OpenChannelRequest>,
) {
    let Attached {
        device,
        generation,
        session_id,
        cancel,
        ..
    } = attached;
    let o = &gateway.options;
    let silence = o.heartbeat_interval * o.missed_heartbeats;
    let timeout = tokio::time::sleep(silence);
    tokio::pin!(timeout);
    let reason: &'static str = loop {
        tokio::select! {
            () = cancel.cancelled() => break "superseded by a newer connection of the device",
            () = gateway.shutdown.cancelled() => break "gateway shutting down",
            () = &mut timeout => break "heartbeat timeout",
            frame = inbound.message() => match frame {
                Ok(Some(frame)) => {
                    timeout.as_mut().reset(Instant::now() + silence);
                    if let Err(why) = handle(&gateway, &device, &session_id, frame) {
                        break why;
                    }
                }
                Ok(None) => break CLOSED_BY_DEVICE,
                Err(_) => break "stream error",
            },
        }
    };
    drop(inbound);
    if let Some(pending) = gateway.registry.detach(&device, generation, reason) {
        tracing::debug!(machine = %device.id, %reason, pending, "device disconnected");
        gateway
            .events
            .send(Event::new(
                "device.disconnected",
                &*device.id,
                "DeviceDisconnected",
                &DeviceDisconnected {
                    machine_id: device.id.to_string(),
                    session_id,
                    reason: reason.to_string(),
                    pending_command_count: pending as i32,
                },
            ))
            .await;
        gateway.dirty.mark(&device.id);
    }
}

/// Handles one frame; `Err` ends the session (protocol violation).
fn handle(
    gateway: &Gateway,
    device: &Arc<Device>,
    session_id: &str,
    frame: OpenChannelRequest,
) -> Result<(), &'static str> {
    let registry = &gateway.registry;
    let o = &gateway.options;
    match frame.frame {
        Some(Up::Heartbeat(_)) => {
            if registry.heartbeat(device, o.heartbeat_report_every) {
                gateway.dirty.mark(&device.id);
            }
        }
        Some(Up::CommandAck(ack)) => {
            registry.touch(device);
            if registry.ack(device, ack) == AckOutcome::Ignored {
                tracing::debug!(machine = %device.id, "ack of an unknown or already acknowledged command ignored");
            }
        }
        Some(Up::Status(status)) => {
            if registry.status(device, status) {
                gateway.dirty.mark(&device.id);
            }
        }
        Some(Up::Telemetry(t)) => {
            let event = DeviceTelemetry {
                machine_id: device.id.to_string(),
                session_id: session_id.to_string(),
                time: t.time,
                temperature_celsius: t.temperature_celsius,
                door_open: t.door_open,
                on_battery: t.power_source == PowerSource::Battery as i32,
                readings: t.readings.clone(),
            };
            if registry.telemetry(device, t, o.telemetry_every) {
                gateway.events.offer(Event::new(
                    "device.telemetry",
                    &*device.id,
                    "DeviceTelemetry",
                    &event,
                ));
                gateway.dirty.mark(&device.id);
            }
        }
        Some(Up::Hello(_)) => return Err("protocol error: a second hello"),
        None => return Err("protocol error: a frame with nothing set"),
    }
    Ok(())
}

/// How long to wait for an ack: `ack_timeout` (default `default`), capped by the remaining call
/// deadline.
pub fn ack_wait(
    ack_timeout: Option<prost_types::Duration>,
    default: Duration,
    deadline: Option<Instant>,
) -> Result<Duration, GatewayError> {
    let wait = match ack_timeout {
        None => default,
        Some(d) if d.seconds >= 0 && d.nanos >= 0 && (d.seconds > 0 || d.nanos > 0) => {
            Duration::new(d.seconds as u64, d.nanos as u32).min(Duration::from_secs(3600))
        }
        Some(_) => return Err(GatewayError::invalid("ack_timeout", "must be positive")),
    };
    Ok(match deadline {
        Some(d) => wait.min(d.saturating_duration_since(Instant::now())),
        None => wait,
    })
}
