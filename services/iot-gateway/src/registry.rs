//! The gateway's in-memory device table: per device its session, its queue of unacknowledged
//! commands (the only outbound queue: the channel's response stream pulls from it, so a slow
//! device's commands wait here and never in a buffer shared with others), its last status and
//! telemetry.
//!
//! Per device the state is one small struct behind its own mutex (a few hundred bytes when
//! idle: empty queues allocate nothing), held briefly and never across an `.await`. The table
//! is a `BTreeMap` by machine id, so sessions list in order without sorting.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use mesh_contracts::iot::v1::open_channel_response::Frame as Down;
use mesh_contracts::iot::v1::{
    Command, CommandAck, DeviceSession, DeviceStatus, OpenChannelResponse, SessionState, Telemetry,
    Welcome,
};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::GatewayError;

/// Acknowledged commands remembered per device, so a repeated `SendCommand` with the same
/// command id answers with the first ack instead of running the command again.
const RECENT_ACKS: usize = 8;

/// A protobuf timestamp of `t`.
pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn lock(m: &Mutex<DeviceState>) -> MutexGuard<'_, DeviceState> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One command waiting for its ack.
#[derive(Debug)]
struct Pending {
    command: Command,
    expire_at: Instant,
    waiters: Vec<oneshot::Sender<CommandAck>>,
}

/// Everything the gateway knows of one device.
#[derive(Debug, Default)]
struct DeviceState {
    /// Generation of the live connection; 0 when none.
    generation: u64,
    /// Cancelled when the live connection is superseded.
    cancel: Option<CancellationToken>,
    session_id: String,
    remote_address: String,
    firmware_version: String,
    connect_time: Option<prost_types::Timestamp>,
    last_seen: Option<prost_types::Timestamp>,
    disconnect_time: Option<prost_types::Timestamp>,
    /// Why the connection of generation `ended.0` ended.
    ended: (u64, &'static str),
    /// The Welcome still to send on the live connection.
    welcome: Option<Welcome>,
    /// Highest seq written to the live connection.
    sent_upto: u64,
    /// The live connection's response stream, waiting for a frame.
    waker: Option<Waker>,
    /// Last seq assigned.
    last_seq: u64,
    last_acked_seq: u64,
    pending: VecDeque<Pending>,
    recent: VecDeque<(Command, CommandAck)>,
    last_status: Option<DeviceStatus>,
    last_telemetry: Option<Telemetry>,
    /// When telemetry was last published as an event.
    telemetry_event_at: Option<Instant>,
    /// When a heartbeat was last reported to shop.
    beat_reported_at: Option<Instant>,
    /// Shop answered NOT_FOUND: not reported again until the device reconnects.
    unknown_to_shop: bool,
}

impl DeviceState {
    fn prune(&mut self, now: Instant) {
        self.pending.retain(|p| p.expire_at > now);
    }

    fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

/// A device the gateway has seen.
#[derive(Debug)]
pub struct Device {
    /// The machine (device) id.
    pub id: Arc<str>,
    state: Mutex<DeviceState>,
}

/// A connection accepted for a device.
#[derive(Debug)]
pub struct Attached {
    /// The device.
    pub device: Arc<Device>,
    /// The connection's generation (stale connections compare it).
    pub generation: u64,
    /// Its session id.
    pub session_id: String,
    /// Cancelled when a newer connection of the device supersedes this one.
    pub cancel: CancellationToken,
    /// Whether an older connection was live (and is now superseded).
    pub superseded: bool,
}

/// What the device's `Hello` said.
#[derive(Debug, Clone, Default)]
pub struct HelloInfo {
    /// `Hello.last_acked_command_seq`.
    pub last_acked_seq: u64,
    /// `Hello.firmware_version`.
    pub firmware_version: String,
    /// The peer address.
    pub remote_address: String,
}

/// What an ack did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// It acknowledged a pending command.
    Applied,
    /// Unknown, expired or already acknowledged command: ignored.
    Ignored,
}

/// A command accepted by [`Registry::enqueue`].
#[derive(Debug)]
pub enum Enqueued {
    /// Queued (or already queued under its id): wait for the ack.
    Waiting(Command, oneshot::Receiver<CommandAck>),
    /// Acknowledged already (a repeated command id).
    Done(Command, CommandAck),
}

/// The device table and per-instance counters.
#[derive(Debug)]
pub struct Registry {
    devices: Mutex<BTreeMap<Arc<str>, Arc<Device>>>,
    generations: AtomicU64,
    connected: AtomicUsize,
    max_pending: usize,
    instance: Arc<str>,
    heartbeat_interval: Duration,
}

impl Registry {
    /// An empty table; each device holds at most `max_pending` unacknowledged commands.
    pub fn new(instance: &str, max_pending: usize, heartbeat_interval: Duration) -> Self {
        Self {
            devices: Mutex::new(BTreeMap::new()),
            generations: AtomicU64::new(0),
            connected: AtomicUsize::new(0),
            max_pending,
            instance: instance.into(),
            heartbeat_interval,
        }
    }

    /// Devices with a live connection.
    pub fn connected(&self) -> usize {
        self.connected.load(Ordering::Relaxed)
    }

    /// This gateway instance's name.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    fn table(&self) -> MutexGuard<'_, BTreeMap<Arc<str>, Arc<Device>>> {
        self.devices.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The device `id`, if seen.
    pub fn get(&self, id: &str) -> Option<Arc<Device>> {
        self.table().get(id).cloned()
    }

    /// Makes a new connection the device's live one (superseding any older one), and queues
    /// its Welcome. Every unacknowledged command will be sent again on it, in seq order.
    pub fn attach(&self, id: &str, hello: HelloInfo) -> Attached {
        let device = {
            let mut table = self.table();
            match table.get(id) {
                Some(d) => d.clone(),
                None => {
                    let d = Arc::new(Device {
                        id: id.into(),
                        state: Mutex::new(DeviceState::default()),
                    });
                    table.insert(d.id.clone(), d.clone());
                    d
                }
            }
        };
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let session_id = uuid::Uuid::now_v7().to_string();
        let cancel = CancellationToken::new();
        let now = SystemTime::now();
        let mut st = lock(&device.state);
        let superseded = st.generation != 0;
        if let Some(old) = st.cancel.replace(cancel.clone()) {
            old.cancel();
        }
        if superseded {
            st.ended = (
                st.generation,
                "superseded by a newer connection of the device",
            );
            st.wake();
        } else {
            self.connected.fetch_add(1, Ordering::Relaxed);
        }
        st.generation = generation;
        st.unknown_to_shop = false;
        st.session_id.clone_from(&session_id);
        st.remote_address = hello.remote_address;
        st.firmware_version = hello.firmware_version;
        st.connect_time = Some(timestamp(now));
        st.last_seen = Some(timestamp(now));
        st.disconnect_time = None;
        // A gateway that lost its state (restart) continues the device's numbering.
        st.last_seq = st.last_seq.max(hello.last_acked_seq);
        st.last_acked_seq = st.last_acked_seq.max(hello.last_acked_seq);
        st.prune(Instant::now());
        st.sent_upto = 0;
        let resume_after = st
            .pending
            .front()
            .map_or(st.last_seq, |p| p.command.seq - 1);
        st.welcome = Some(Welcome {
            session_id: session_id.clone(),
            heartbeat_interval: Some(prost_types::Duration {
                seconds: self.heartbeat_interval.as_secs() as i64,
                nanos: self.heartbeat_interval.subsec_nanos() as i32,
            }),
            server_time: Some(timestamp(now)),
            resume_after_seq: resume_after,
        });
        drop(st);
        Attached {
            device,
            generation,
            session_id,
            cancel,
            superseded,
        }
    }

    /// Ends connection `generation` of `device` (if it is still the live one) for `reason`;
    /// returns the number of unacknowledged commands, or `None` when it was not live.
    pub fn detach(&self, device: &Device, generation: u64, reason: &'static str) -> Option<usize> {
        let mut st = lock(&device.state);
        if st.generation != generation {
            return None;
        }
        st.generation = 0;
        st.cancel = None;
        st.ended = (generation, reason);
        st.disconnect_time = Some(timestamp(SystemTime::now()));
        st.welcome = None;
        st.wake();
        self.connected.fetch_sub(1, Ordering::Relaxed);
        Some(st.pending.len())
    }

    /// Queues `command` for machine `id` (which must be live), or joins the wait for a command
    /// already queued or acknowledged under the same id. The command gets the next seq and
    /// expires at `expire_at` unless it names its own expiry.
    pub fn enqueue(
        &self,
        id: &str,
        mut command: Command,
        expire_at: Instant,
    ) -> Result<Enqueued, GatewayError> {
        let device = self
            .get(id)
            .ok_or_else(|| GatewayError::Offline(id.to_string()))?;
        let mut st = lock(&device.state);
        st.prune(Instant::now());
        if !command.command_id.is_empty() {
            if let Some((c, ack)) = st
                .recent
                .iter()
                .find(|(c, _)| c.command_id == command.command_id)
            {
                return Ok(Enqueued::Done(c.clone(), ack.clone()));
            }
            if let Some(p) = st
                .pending
                .iter_mut()
                .find(|p| p.command.command_id == command.command_id)
            {
                let (tx, rx) = oneshot::channel();
                p.waiters.push(tx);
                return Ok(Enqueued::Waiting(p.command.clone(), rx));
            }
        }
        if st.generation == 0 {
            return Err(GatewayError::Offline(id.to_string()));
        }
        if st.pending.len() >= self.max_pending {
            return Err(GatewayError::QueueFull {
                machine: id.to_string(),
                pending: st.pending.len(),
            });
        }
        if command.command_id.is_empty() {
            command.command_id = uuid::Uuid::now_v7().to_string();
        }
        st.last_seq += 1;
        command.seq = st.last_seq;
        let now = SystemTime::now();
        command.issue_time = Some(timestamp(now));
        let expire_at = match command.expire_time {
            Some(t) => {
                let at = SystemTime::UNIX_EPOCH
                    + Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32);
                Instant::now() + at.duration_since(now).unwrap_or_default()
            }
            None => {
                command.expire_time = Some(timestamp(
                    now + expire_at.saturating_duration_since(Instant::now()),
                ));
                expire_at
            }
        };
        let (tx, rx) = oneshot::channel();
        st.pending.push_back(Pending {
            command: command.clone(),
            expire_at,
            waiters: vec![tx],
        });
        st.wake();
        Ok(Enqueued::Waiting(command, rx))
    }

    /// Applies an ack from connection `generation`: completes the pending command with the
    /// same id and seq. Unknown, expired or repeated acks are ignored.
    pub fn ack(&self, device: &Device, ack: CommandAck) -> AckOutcome {
        let mut st = lock(&device.state);
        let Some(i) = st
            .pending
            .iter()
            .position(|p| p.command.command_id == ack.command_id && p.command.seq == ack.seq)
        else {
            return AckOutcome::Ignored;
        };
        let Some(p) = st.pending.remove(i) else {
            return AckOutcome::Ignored;
        };
        st.last_acked_seq = st.last_acked_seq.max(ack.seq);
        if st.recent.len() >= RECENT_ACKS {
            st.recent.pop_front();
        }
        st.recent.push_back((p.command, ack.clone()));
        drop(st);
        for w in p.waiters {
            let _ = w.send(ack.clone());
        }
        AckOutcome::Applied
    }

    /// Records a frame from the device.
    pub fn touch(&self, device: &Device) {
        lock(&device.state).last_seen = Some(timestamp(SystemTime::now()));
    }

    /// Records a heartbeat; `true` when it is due to be reported to shop (none reported in
    /// `every`).
    pub fn heartbeat(&self, device: &Device, every: Duration) -> bool {
        let mut st = lock(&device.state);
        st.last_seen = Some(timestamp(SystemTime::now()));
        let now = Instant::now();
        let due = st
            .beat_reported_at
            .is_none_or(|t| now.duration_since(t) >= every);
        if due {
            st.beat_reported_at = Some(now);
        }
        due
    }

    /// Records a status frame; `true` when the state or the set of faults changed.
    pub fn status(&self, device: &Device, status: DeviceStatus) -> bool {
        let mut st = lock(&device.state);
        st.last_seen = Some(timestamp(SystemTime::now()));
        let changed = st
            .last_status
            .as_ref()
            .is_none_or(|s| s.state != status.state || s.faults != status.faults);
        st.last_status = Some(status);
        changed
    }

    /// Records telemetry; `true` when it is due to be published (none in `every`, or the door
    /// or power source changed).
    pub fn telemetry(&self, device: &Device, t: Telemetry, every: Duration) -> bool {
        let mut st = lock(&device.state);
        st.last_seen = Some(timestamp(SystemTime::now()));
        let now = Instant::now();
        let changed = st
            .last_telemetry
            .as_ref()
            .is_none_or(|o| o.door_open != t.door_open || o.power_source != t.power_source);
        let due = changed
            || st
                .telemetry_event_at
                .is_none_or(|at| now.duration_since(at) >= every);
        if due {
            st.telemetry_event_at = Some(now);
        }
        st.last_telemetry = Some(t);
        due
    }

    /// The next frame for connection `generation`: its Welcome, then every unacknowledged
    /// command not yet written to it; `Ready(None)` once the connection ended (with the reason
    /// in `ended`).
    pub fn poll_frame(
        &self,
        device: &Device,
        generation: u64,
        cx: &mut Context<'_>,
    ) -> Poll<Result<OpenChannelResponse, &'static str>> {
        let mut st = lock(&device.state);
        if st.generation != generation {
            return Poll::Ready(Err(if st.ended.0 == generation {
                st.ended.1
            } else {
                "superseded by a newer connection of the device"
            }));
        }
        if let Some(w) = st.welcome.take() {
            return Poll::Ready(Ok(OpenChannelResponse {
                frame: Some(Down::Welcome(w)),
            }));
        }
        st.prune(Instant::now());
        let after = st.sent_upto;
        if let Some(p) = st.pending.iter().find(|p| p.command.seq > after) {
            let command = p.command.clone();
            st.sent_upto = command.seq;
            return Poll::Ready(Ok(OpenChannelResponse {
                frame: Some(Down::Command(command)),
            }));
        }
        st.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// A snapshot of the device's session.
    pub fn session(&self, device: &Device) -> DeviceSession {
        let st = lock(&device.state);
        DeviceSession {
            session_id: st.session_id.clone(),
            machine_id: device.id.to_string(),
            state: if st.generation != 0 {
                SessionState::Connected
            } else {
                SessionState::Disconnected
            } as i32,
            gateway_instance: self.instance.to_string(),
            remote_address: st.remote_address.clone(),
            firmware_version: st.firmware_version.clone(),
            connect_time: st.connect_time,
            last_seen_time: st.last_seen,
            disconnect_time: st.disconnect_time,
            last_sent_seq: st.last_seq,
            last_acked_seq: st.last_acked_seq,
            pending_command_count: st.pending.len() as i32,
            last_status: st.last_status.clone(),
            last_telemetry: st.last_telemetry.clone(),
        }
    }

    /// Up to `limit` sessions after machine id `after`, in id order, optionally only those in
    /// `state`.
    pub fn sessions(
        &self,
        after: Option<&str>,
        limit: usize,
        state: Option<SessionState>,
    ) -> Vec<DeviceSession> {
        let devices: Vec<Arc<Device>> = {
            let table = self.table();
            let range = match after {
                Some(a) => table
                    .range::<str, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
                None => table.range::<str, _>(..),
            };
            match state {
                // Without a filter the page is the next `limit` devices.
                None => range.take(limit).map(|(_, d)| d.clone()).collect(),
                Some(_) => range.map(|(_, d)| d.clone()).collect(),
            }
        };
        devices
            .iter()
            .map(|d| self.session(d))
            .filter(|s| state.is_none_or(|want| s.state == want as i32))
            .take(limit)
            .collect()
    }

    /// What shop should know of the device now: connectivity, last frame, faults, temperature,
    /// door and session, plus the firmware version.
    pub fn report(&self, device: &Device) -> mesh_contracts::shop::v1::ReportMachineStatusRequest {
        use mesh_contracts::shop::v1::{Connectivity, MachineStatus, ReportMachineStatusRequest};
        let st = lock(&device.state);
        let online = st.generation != 0;
        ReportMachineStatusRequest {
            machine_id: device.id.to_string(),
            status: Some(MachineStatus {
                connectivity: if online {
                    Connectivity::Online
                } else {
                    Connectivity::Offline
                } as i32,
                last_heartbeat_time: st.last_seen,
                faults: st
                    .last_status
                    .as_ref()
                    .map(|s| s.faults.clone())
                    .unwrap_or_default(),
                temperature_celsius: st
                    .last_telemetry
                    .as_ref()
                    .map_or(0.0, |t| t.temperature_celsius),
                door_open: st.last_telemetry.as_ref().is_some_and(|t| t.door_open),
                session_id: if online {
                    st.session_id.clone()
                } else {
                    String::new()
                },
                update_time: Some(timestamp(SystemTime::now())),
            }),
            firmware_version: st.firmware_version.clone(),
        }
    }

    /// Remembers that shop does not know the machine (until it reconnects).
    pub fn set_unknown_to_shop(&self, device: &Device) {
        lock(&device.state).unknown_to_shop = true;
    }

    /// Whether shop said it does not know the machine since it last connected.
    pub fn unknown_to_shop(&self, device: &Device) -> bool {
        lock(&device.state).unknown_to_shop
    }

    /// The device's current (or last) session id.
    pub fn session_id(&self, device: &Device) -> String {
        lock(&device.state).session_id.clone()
    }
}
