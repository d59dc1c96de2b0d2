//! A simulated vending machine speaking the device protocol: it says Hello with its device
//! token and its last acknowledged seq, sends heartbeats at the interval the gateway asks for,
//! executes commands once each (a redelivered command id is answered with the remembered
//! result, not run again), and acknowledges them. Faults can be switched on at any time: hold
//! back acks, jam slots. `mesh sim devices` drives thousands of these; the tests use it too.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use mesh_contracts::iot::v1::command::Action;
use mesh_contracts::iot::v1::gateway_service_client::GatewayServiceClient;
use mesh_contracts::iot::v1::open_channel_request::Frame as Up;
use mesh_contracts::iot::v1::open_channel_response::Frame as Down;
use mesh_contracts::iot::v1::{
    Command, CommandAck, CommandResult, DeviceStatus, Heartbeat, Hello, OpenChannelRequest,
    OperationalState, Telemetry, Welcome,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::transport::Channel;

use crate::registry::timestamp;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Faults a simulated device can be told to show.
#[derive(Debug, Default)]
pub struct Faults {
    /// Execute commands but send no acks (the gateway sees them as unacknowledged).
    pub drop_acks: AtomicBool,
    /// Slots whose dispense jams (answered `JAMMED`, and reported as a fault).
    pub jammed: Mutex<HashSet<String>>,
    /// Do nothing (no heartbeats, commands neither run nor acknowledged) while staying
    /// connected: a hung controller or a silently broken network path, which only the gateway's
    /// heartbeat timeout detects.
    pub silent: AtomicBool,
}

impl Faults {
    /// Jams `slot`.
    pub fn jam(&self, slot: &str) {
        lock(&self.jammed).insert(slot.to_string());
    }
}

/// What a simulated device remembers across connections (its flash memory).
#[derive(Debug, Default)]
pub struct Memory {
    /// Highest seq acknowledged, sent in Hello.
    pub last_acked_seq: AtomicU64,
    /// Results of the commands executed, by command id (redeliveries are answered from here).
    executed: Mutex<HashMap<String, CommandAck>>,
    /// Every command frame received: (connection number, command id, seq).
    received: Mutex<Vec<(u64, String, u64)>>,
    /// Dispenses actually performed (motor runs), by slot.
    dispensed: Mutex<Vec<String>>,
    /// Connections made.
    pub connections: AtomicU64,
}

impl Memory {
    /// Command frames received so far: (connection number from 1, command id, seq).
    pub fn received(&self) -> Vec<(u64, String, u64)> {
        lock(&self.received).clone()
    }

    /// Slots dispensed so far (each command executed once, redeliveries not counted).
    pub fn dispensed(&self) -> Vec<String> {
        lock(&self.dispensed).clone()
    }

    /// How many distinct commands were executed.
    pub fn executed(&self) -> usize {
        lock(&self.executed).len()
    }
}

/// One simulated machine.
#[derive(Debug, Clone)]
pub struct SimDevice {
    /// Its device (machine) id.
    pub id: String,
    /// Its device access JWT (`auth.v1 ExchangeDeviceCredential`).
    pub token: String,
    /// Its memory.
    pub memory: Arc<Memory>,
    /// Its faults.
    pub faults: Arc<Faults>,
}

/// A live connection of a simulated device.
#[derive(Debug)]
pub struct Connection {
    /// The gateway's Welcome.
    pub welcome: Welcome,
    tx: mpsc::Sender<OpenChannelRequest>,
    stop: CancellationToken,
    task: JoinHandle<Result<(), Status>>,
}

impl Connection {
    /// Drops the connection abruptly (as a power cut would): no goodbye.
    pub fn cut(self) {
        self.stop.cancel();
        self.task.abort();
    }

    /// Waits for the gateway to end the session; its status (OK when it ended cleanly).
    pub async fn ended(self) -> Result<(), Status> {
        self.task
            .await
            .unwrap_or_else(|e| Err(Status::aborted(e.to_string())))
    }

    /// Sends a frame of the test's choosing (telemetry, status, a stray ack).
    pub async fn send(&self, frame: OpenChannelRequest) -> Result<(), Status> {
        self.tx
            .send(frame)
            .await
            .map_err(|_| Status::unavailable("the connection has ended"))
    }

    /// Whether the connection is still up.
    pub fn is_live(&self) -> bool {
        !self.task.is_finished()
    }
}

impl SimDevice {
    /// A device with a fresh memory and no faults.
    pub fn new(id: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            token: token.into(),
            memory: Arc::new(Memory::default()),
            faults: Arc::new(Faults::default()),
        }
    }

    /// Connects over `channel` (an HTTP/2 connection that may carry many devices' streams),
    /// says Hello, waits for Welcome, and keeps the session going in a task: heartbeats at the
    /// interval asked for, commands executed and acknowledged.
    pub async fn connect(&self, channel: Channel) -> Result<Connection, Status> {
        let (tx, rx) = mpsc::channel::<OpenChannelRequest>(8);
        let hello = OpenChannelRequest {
            frame: Some(Up::Hello(Hello {
                device_id: self.id.clone(),
                credential_token: self.token.clone(),
                last_acked_command_seq: self.memory.last_acked_seq.load(Ordering::Relaxed),
                firmware_version: "sim-1.0".into(),
                device_time: Some(timestamp(SystemTime::now())),
            })),
        };
        tx.send(hello)
            .await
            .map_err(|_| Status::internal("queue closed"))?;
        let mut client = GatewayServiceClient::new(channel);
        let mut down = client
            .open_channel(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let welcome = match down.message().await? {
            Some(m) => match m.frame {
                Some(Down::Welcome(w)) => w,
                _ => return Err(Status::internal("the first frame is not a Welcome")),
            },
            None => return Err(Status::unavailable("the gateway closed the stream")),
        };
        let connection = self.memory.connections.fetch_add(1, Ordering::Relaxed) + 1;
        let interval = welcome
            .heartbeat_interval
            .map(|d| Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32))
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_secs(10));
        let stop = CancellationToken::new();
        let device = self.clone();
        let sender = tx.clone();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut beat = tokio::time::interval(interval);
                beat.tick().await;
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return Ok(()),
                        _ = beat.tick() => {
                            if device.faults.silent.load(Ordering::Relaxed) {
                                continue;
                            }
                            let hb = Up::Heartbeat(Heartbeat { device_time: Some(timestamp(SystemTime::now())), ping_nonce: 0 });
                            if tx.send(OpenChannelRequest { frame: Some(hb) }).await.is_err() {
                                return Ok(());
                            }
                        }
                        m = down.message() => match m? {
                            None => return Ok(()),
                            Some(m) => if let Some(Down::Command(c)) = m.frame {
                                for frame in device.execute(connection, c) {
                                    if tx.send(frame).await.is_err() {
                                        return Ok(());
                                    }
                                }
                            },
                        },
                    }
                }
            }
        });
        Ok(Connection {
            welcome,
            tx: sender,
            stop,
            task,
        })
    }

    /// Runs command `c` (once per command id) and returns the frames to send back: its ack
    /// (unless acks are dropped), preceded by a status frame when a slot jammed.
    fn execute(&self, connection: u64, c: Command) -> Vec<OpenChannelRequest> {
        lock(&self.memory.received).push((connection, c.command_id.clone(), c.seq));
        if self.faults.silent.load(Ordering::Relaxed) {
            // A hung controller does nothing.
            return Vec::new();
        }
        let known = lock(&self.memory.executed).get(&c.command_id).cloned();
        let mut frames = Vec::new();
        let ack = match known {
            Some(ack) => ack,
            None => {
                let (result, detail) = match &c.action {
                    Some(Action::Dispense(d)) if lock(&self.faults.jammed).contains(&d.slot) => {
                        frames.push(OpenChannelRequest {
                            frame: Some(Up::Status(DeviceStatus {
                                state: OperationalState::InService as i32,
                                faults: vec![format!("SLOT_{}_JAMMED", d.slot)],
                                time: Some(timestamp(SystemTime::now())),
                            })),
                        });
                        (CommandResult::Jammed, format!("motor {} stalled", d.slot))
                    }
                    Some(Action::Dispense(d)) => {
                        lock(&self.memory.dispensed).push(d.slot.clone());
                        (CommandResult::Ok, String::new())
                    }
                    Some(_) => (CommandResult::Ok, String::new()),
                    None => (CommandResult::Unsupported, "no action".to_string()),
                };
                let ack = CommandAck {
                    command_id: c.command_id.clone(),
                    seq: c.seq,
                    result: result as i32,
                    detail,
                    complete_time: Some(timestamp(SystemTime::now())),
                };
                lock(&self.memory.executed).insert(c.command_id.clone(), ack.clone());
                ack
            }
        };
        if !self.faults.drop_acks.load(Ordering::Relaxed) {
            self.memory
                .last_acked_seq
                .fetch_max(ack.seq, Ordering::Relaxed);
            frames.push(OpenChannelRequest {
                frame: Some(Up::CommandAck(ack)),
            });
        }
        frames
    }

    /// A telemetry frame with `temperature` (for tests and the simulator's periodic readings).
    pub fn telemetry(temperature: f64) -> OpenChannelRequest {
        OpenChannelRequest {
            frame: Some(Up::Telemetry(Telemetry {
                time: Some(timestamp(SystemTime::now())),
                temperature_celsius: temperature,
                ..Default::default()
            })),
        }
    }
}

/// Device access tokens for `ids`: for each, a credential issued with `staff_token`
/// (`IssueDeviceCredential`) and exchanged for a device JWT (`ExchangeDeviceCredential`),
/// `concurrency` devices at a time.
pub async fn device_tokens(
    auth: Channel,
    staff_token: &str,
    ids: &[String],
    concurrency: usize,
) -> Result<Vec<String>, Status> {
    use futures::StreamExt as _;
    use mesh_contracts::auth::v1::auth_service_client::AuthServiceClient;
    use mesh_contracts::auth::v1::{ExchangeDeviceCredentialRequest, IssueDeviceCredentialRequest};
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {staff_token}")
        .parse()
        .map_err(|_| Status::invalid_argument("staff token: not ASCII"))?;
    futures::stream::iter(ids.iter().cloned())
        .map(|id| {
            let mut client = AuthServiceClient::new(auth.clone());
            let bearer = bearer.clone();
            async move {
                let mut issue = tonic::Request::new(IssueDeviceCredentialRequest {
                    device_id: id.clone(),
                    ttl: None,
                });
                issue.metadata_mut().insert("authorization", bearer);
                let credential = client.issue_device_credential(issue).await?.into_inner();
                let token = client
                    .exchange_device_credential(ExchangeDeviceCredentialRequest {
                        device_id: id,
                        credential_token: credential.credential_token,
                    })
                    .await?
                    .into_inner();
                Ok(token.access_token)
            }
        })
        .buffered(concurrency.max(1))
        .collect::<Vec<Result<String, Status>>>()
        .await
        .into_iter()
        .collect()
}
