//! The gateway over real gRPC with real auth and shop services: 1,000 simulated devices on one
//! gateway, commands acknowledged, reconnect with resume (un-acked commands redelivered once,
//! executed once), heartbeat timeout on tokio's paused clock marking the device offline in shop,
//! authentication and protocol errors, bounded queues, superseded connections.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt as _;
use mesh_contracts::iot::v1::command::Action;
use mesh_contracts::iot::v1::gateway_service_client::GatewayServiceClient;
use mesh_contracts::iot::v1::open_channel_request::Frame as Up;
use mesh_contracts::iot::v1::*;
use mesh_contracts::shop::v1::shop_service_client::ShopServiceClient;
use mesh_contracts::shop::v1::{
    Connectivity, CreateStoreRequest, GetMachineRequest, Machine, RegisterMachineRequest, Store,
};
use mesh_iot_gateway::GatewayOptions;
use mesh_iot_gateway::simulator::{SimDevice, device_tokens};
use mesh_runtime::config::DatabaseTarget;
use mesh_runtime::lifecycle::Supervisor;
use mesh_runtime::{Database, Migrations, Readiness, ServiceContext};
use mesh_testkit::{self as testing, TestAuth, bearer};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;

const SECRET: &str = "gw-secret";

fn context(
    name: &'static str,
    dependencies: &'static [&'static str],
    peers: BTreeMap<&'static str, http::Uri>,
    db: Database,
    shutdown: CancellationToken,
) -> ServiceContext {
    testing::context_with(
        name,
        dependencies,
        testing::config(),
        peers,
        db,
        testing::memory_bus(),
        shutdown,
    )
}

struct Mesh {
    auth: TestAuth,
    gateway: SocketAddr,
    shop: SocketAddr,
    gateway_db: Database,
    admin: String,
    service: String,
    customer: String,
    shutdown: CancellationToken,
    /// The gateway's supervisor (its background tasks and connection tasks), to drain.
    supervisor: Supervisor,
}

impl Mesh {
    async fn start(target: DatabaseTarget, options: GatewayOptions) -> Self {
        let auth = TestAuth::start(
            &testing::sqlite(),
            testing::service_client("iot-gateway", SECRET),
        )
        .await;
        let shutdown = CancellationToken::new();
        let shop_db = testing::database("shop", &testing::sqlite(), &mesh_shop::MIGRATIONS).await;
        let bus = testing::memory_bus();
        let shop_ctx = context(
            "shop",
            &["auth"],
            BTreeMap::from([("auth", auth.uri())]),
            shop_db.clone(),
            shutdown.clone(),
        );
        let shop_routes = mesh_shop::build(shop_ctx).await.expect("build shop");
        let shop =
            testing::serve("shop", shop_routes, shop_db, bus.clone(), shutdown.clone()).await;
        let gateway_db = testing::database("iot-gateway", &target, &Migrations::NONE).await;
        let supervisor = Supervisor::new(Readiness::new(), shutdown.clone());
        let ctx = context(
            "iot-gateway",
            &["auth", "shop"],
            BTreeMap::from([
                ("auth", auth.uri()),
                ("shop", format!("http://{shop}").parse().expect("uri")),
            ]),
            gateway_db.clone(),
            shutdown.clone(),
        )
        .with_supervisor(supervisor.clone());
        let options = GatewayOptions {
            client_secret: Some(SECRET.into()),
            ..options
        };
        let (routes, _) = mesh_iot_gateway::build_with(ctx, options)
            .await
            .expect("build gateway");
        let gateway = testing::serve(
            "iot-gateway",
            routes,
            gateway_db.clone(),
            bus,
            shutdown.clone(),
        )
        .await;
        let admin = auth.admin_token().await;
        let customer = auth.customer_token().await;
        let service = auth.service_token("iot-gateway", SECRET).await;
        Self {
            auth,
            gateway,
            shop,
            gateway_db,
            admin,
            service,
            customer,
            shutdown,
            supervisor,
        }
    }

    async fn channel(&self) -> Channel {
        testing::channel(self.gateway).await
    }

    async fn client(&self) -> GatewayServiceClient<Channel> {
        GatewayServiceClient::new(self.channel().await)
    }

    async fn devices(&self, ids: &[String]) -> Vec<SimDevice> {
        let tokens = device_tokens(testing::channel(self.auth.addr).await, &self.admin, ids, 16)
            .await
            .expect("device tokens");
        ids.iter()
            .zip(tokens)
            .map(|(id, token)| SimDevice::new(id.clone(), token))
            .collect()
    }

    async fn register(&self, ids: &[&str]) {
        let mut shop = ShopServiceClient::new(testing::channel(self.shop).await);
        let _ = shop
            .create_store(bearer(
                &self.admin,
                CreateStoreRequest {
                    store: Some(Store {
                        store_id: "sim".into(),
                        display_name: "Simulated".into(),
                        ..Default::default()
                    }),
                },
            ))
            .await;
        for id in ids {
            shop.register_machine(bearer(
                &self.admin,
                RegisterMachineRequest {
                    parent: "stores/sim".into(),
                    machine: Some(Machine {
                        machine_id: id.to_string(),
                        slot_count: 10,
                        ..Default::default()
                    }),
                },
            ))
            .await
            .expect("register");
        }
    }

    /// Waits (bounded) until shop shows `id` with `connectivity`; returns its faults.
    async fn shop_shows(&self, id: &str, connectivity: Connectivity) -> Vec<String> {
        let mut shop = ShopServiceClient::new(testing::channel(self.shop).await);
        for _ in 0..200 {
            let m = shop
                .get_machine(bearer(
                    &self.customer,
                    GetMachineRequest {
                        name: format!("stores/-/machines/{id}"),
                    },
                ))
                .await
                .expect("get machine")
                .into_inner()
                .machine
                .expect("machine");
            let status = m.status.expect("status");
            if status.connectivity == connectivity as i32 {
                return status.faults;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("shop never showed {id} as {connectivity:?}");
    }

    /// The types of the events in the gateway's outbox about `subject`, in order, now.
    async fn outbox(&self, subject: &str) -> Vec<String> {
        testing::outbox::types_about(&self.gateway_db, subject).await
    }

    /// [`Mesh::outbox`] once it holds anything (waiting up to 2 s).
    async fn events(&self, subject: &str) -> Vec<String> {
        for _ in 0..100 {
            let events = self.outbox(subject).await;
            if !events.is_empty() {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Vec::new()
    }
}

fn dispense(slot: &str, ack_timeout_ms: u64) -> SendCommandRequest {
    SendCommandRequest {
        machine_id: String::new(),
        command: Some(Command {
            action: Some(Action::Dispense(Dispense {
                slot: slot.into(),
                vend_id: "v-1".into(),
            })),
            ..Default::default()
        }),
        ack_timeout: Some(prost_types::Duration {
            seconds: (ack_timeout_ms / 1000) as i64,
            nanos: ((ack_timeout_ms % 1000) * 1_000_000) as i32,
        }),
    }
}

fn to(machine: &str, mut r: SendCommandRequest) -> SendCommandRequest {
    r.machine_id = machine.into();
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_devices_on_one_gateway() {
    let m = Mesh::start(testing::sqlite(), GatewayOptions::default()).await;
    let ids: Vec<String> = (0..1000).map(|i| format!("vm-{i:04}")).collect();
    m.register(&["vm-0000", "vm-0999"]).await;
    let started = std::time::Instant::now();
    let devices = m.devices(&ids).await;
    eprintln!("1,000 device tokens in {:?}", started.elapsed());
    // 100 device streams per HTTP/2 connection.
    let mut channels = Vec::new();
    for _ in 0..10 {
        channels.push(m.channel().await);
    }
    let connections: Vec<_> = futures::stream::iter(devices.iter().enumerate())
        .map(|(i, d)| {
            let ch = channels[i % channels.len()].clone();
            async move { d.connect(ch).await.expect("connect") }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    assert_eq!(connections.len(), 1000);
    eprintln!("1,000 devices connected in {:?}", started.elapsed());
    let mut gw = m.client().await;
    let mut connected = Vec::new();
    let mut token = String::new();
    loop {
        let page = gw
            .list_device_sessions(bearer(
                &m.service,
                ListDeviceSessionsRequest {
                    page_size: 300,
                    page_token: token,
                    state: SessionState::Connected as i32,
                },
            ))
            .await
            .expect("list")
            .into_inner();
        connected.extend(page.sessions.into_iter().map(|s| s.machine_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(connected, ids, "every device connected, listed in id order");
    // A command to every tenth device, 25 at a time (below the shedder's floor of 32 calls in
    // flight on a cold server): each acked by its device.
    let acks: Vec<_> = futures::stream::iter(ids.iter().step_by(10))
        .map(|id| {
            let mut gw = gw.clone();
            let service = m.service.clone();
            async move {
                gw.send_command(bearer(&service, to(id, dispense("A1", 5000))))
                    .await
                    .expect("send")
                    .into_inner()
            }
        })
        .buffer_unordered(25)
        .collect()
        .await;
    assert_eq!(acks.len(), 100);
    assert!(
        acks.iter()
            .all(|r| r.ack.as_ref().unwrap().result == CommandResult::Ok as i32)
    );
    assert_eq!(devices[10].memory.dispensed(), vec!["A1"]);
    assert!(devices[11].memory.dispensed().is_empty());
    // Shop heard about the registered ones.
    m.shop_shows("vm-0999", Connectivity::Online).await;
    assert_eq!(m.events("vm-0500").await, vec!["device.connected"]);
    for c in connections {
        c.cut();
    }
    m.shop_shows("vm-0000", Connectivity::Offline).await;
    m.shutdown.cancel();
}

async fn reconnect_with_resume(target: DatabaseTarget) {
    let m = Mesh::start(target, GatewayOptions::default()).await;
    let id = "vm-resume".to_string();
    m.register(&[&id]).await;
    let device = m.devices(std::slice::from_ref(&id)).await.remove(0);
    device.faults.drop_acks.store(true, Ordering::Relaxed);
    let first = device.connect(m.channel().await).await.expect("connect");
    assert_eq!(first.welcome.resume_after_seq, 0);
    m.shop_shows(&id, Connectivity::Online).await;

    // A command the device runs but whose ack is lost with the connection.
    let mut gw = m.client().await;
    let service = m.service.clone();
    let send = tokio::spawn({
        let mut gw = gw.clone();
        let id = id.clone();
        async move {
            gw.send_command(bearer(&service, to(&id, dispense("B2", 20_000))))
                .await
        }
    });
    for _ in 0..200 {
        if !device.memory.received().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let received = device.memory.received();
    assert_eq!(received.len(), 1, "delivered once on the first connection");
    let (_, command_id, seq) = received[0].clone();
    assert_eq!(seq, 1);
    first.cut();

    // Reconnect: the un-acked command comes again, once, and is acked (not run) this time.
    device.faults.drop_acks.store(false, Ordering::Relaxed);
    let second = device.connect(m.channel().await).await.expect("reconnect");
    assert_eq!(
        second.welcome.resume_after_seq, 0,
        "resumes after the last acked seq"
    );
    let reply = send
        .await
        .expect("join")
        .expect("acked after resume")
        .into_inner();
    assert_eq!(reply.command.as_ref().unwrap().command_id, command_id);
    assert_eq!(reply.ack.as_ref().unwrap().result, CommandResult::Ok as i32);
    let received = device.memory.received();
    assert_eq!(
        received,
        vec![(1, command_id.clone(), 1), (2, command_id.clone(), 1)],
        "redelivered exactly once on the new connection"
    );
    assert_eq!(device.memory.dispensed(), vec!["B2"], "executed once");

    // A duplicate ack, and an ack of a command that never existed, are harmless.
    second
        .send(OpenChannelRequest {
            frame: Some(Up::CommandAck(reply.ack.clone().unwrap())),
        })
        .await
        .expect("send");
    second
        .send(OpenChannelRequest {
            frame: Some(Up::CommandAck(CommandAck {
                command_id: "nope".into(),
                seq: 99,
                result: 1,
                ..Default::default()
            })),
        })
        .await
        .expect("send");
    // The same command id again answers with the first ack, without sending it again.
    let mut again = to(&id, dispense("B2", 1000));
    again.command.as_mut().unwrap().command_id = command_id.clone();
    let replay = gw
        .send_command(bearer(&m.service, again))
        .await
        .expect("replay")
        .into_inner();
    assert_eq!(replay.ack, reply.ack);
    let next = gw
        .send_command(bearer(&m.service, to(&id, dispense("C3", 5000))))
        .await
        .expect("next")
        .into_inner();
    assert_eq!(next.command.as_ref().unwrap().seq, 2);
    let session = gw
        .get_device_session(bearer(
            &m.service,
            GetDeviceSessionRequest {
                machine_id: id.clone(),
            },
        ))
        .await
        .expect("session")
        .into_inner()
        .session
        .expect("session");
    assert_eq!(session.state, SessionState::Connected as i32);
    assert_eq!(
        (
            session.last_sent_seq,
            session.last_acked_seq,
            session.pending_command_count
        ),
        (2, 2, 0)
    );
    assert_eq!(session.session_id, second.welcome.session_id);
    assert!(second.is_live(), "stray acks did not end the session");
    assert_eq!(device.memory.dispensed(), vec!["B2", "C3"]);
    let events = m.events(&id).await;
    assert!(
        events.starts_with(&["device.connected".into()]),
        "{events:?}"
    );
    m.shutdown.cancel();
}

testing::on_sqlite_and_postgres!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    reconnect_redelivers_unacked_commands_once_on_sqlite,
    reconnect_redelivers_unacked_commands_once_on_postgres,
    "gateway reconnect",
    reconnect_with_resume
);

/// Shutdown ends every device connection at once and waits for the connection tasks: the
/// drain returns well within the grace period, and each device's last event
/// (`device.disconnected`, "gateway shutting down") is already in the outbox when it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_device_connections_and_waits_for_their_last_events() {
    let m = Mesh::start(testing::sqlite(), GatewayOptions::default()).await;
    let ids: Vec<String> = (0..5).map(|i| format!("vm-down-{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    m.register(&refs).await;
    let mut connections = Vec::new();
    for device in m.devices(&ids).await {
        connections.push(device.connect(m.channel().await).await.expect("connect"));
    }
    for id in &ids {
        assert_eq!(m.events(id).await, ["device.connected"], "{id}");
    }

    m.shutdown.cancel();
    tokio::time::timeout(
        Duration::from_secs(10),
        m.supervisor.drain(Duration::from_secs(60)),
    )
    .await
    .expect("the connections end at once, well within the grace period");
    for id in &ids {
        assert_eq!(
            m.outbox(id).await,
            ["device.connected", "device.disconnected"],
            "{id}: the disconnect was written before the drain returned"
        );
    }
    for conn in connections {
        let ended = conn
            .ended()
            .await
            .expect_err("the gateway ended the session");
        assert_eq!(ended.code(), Code::Unavailable);
        assert!(ended.message().contains("gateway shutting down"), "{ended}");
    }
}

#[tokio::test]
async fn heartbeat_timeout_marks_the_device_offline() {
    let m = Mesh::start(testing::sqlite(), GatewayOptions::default()).await;
    let id = "vm-hb".to_string();
    m.register(&[&id]).await;
    let device = m.devices(std::slice::from_ref(&id)).await.remove(0);
    let conn = device.connect(m.channel().await).await.expect("connect");
    let interval = conn.welcome.heartbeat_interval.expect("interval");
    assert_eq!(interval.seconds, 10);
    conn.send(SimDevice::telemetry(6.5))
        .await
        .expect("telemetry");
    m.shop_shows(&id, Connectivity::Online).await;

    // The device hangs: the connection stays open but nothing arrives. On the paused clock
    // 27 s pass without the gateway noticing, then the third missed heartbeat ends it. (The
    // clock is paused only after shop shows the device online, which takes real time after the
    // last telemetry: 27 s, not 29, leaves that wait up to 3 s before the 30 s timeout.)
    device.faults.silent.store(true, Ordering::Relaxed);
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(27)).await;
    let mut gw = m.client().await;
    let session = |gw: &mut GatewayServiceClient<Channel>| {
        let mut gw = gw.clone();
        let token = m.service.clone();
        let id = id.clone();
        async move {
            gw.get_device_session(bearer(&token, GetDeviceSessionRequest { machine_id: id }))
                .await
                .expect("session")
                .into_inner()
                .session
                .expect("session")
        }
    };
    assert_eq!(session(&mut gw).await.state, SessionState::Connected as i32);
    tokio::time::advance(Duration::from_secs(4)).await;
    let ended = conn
        .ended()
        .await
        .expect_err("the gateway ended the session");
    tokio::time::resume();
    assert_eq!(ended.code(), Code::Unavailable);
    assert!(ended.message().contains("heartbeat timeout"), "{ended}");
    let s = session(&mut gw).await;
    assert_eq!(s.state, SessionState::Disconnected as i32);
    assert_eq!(
        s.last_telemetry.expect("telemetry").temperature_celsius,
        6.5
    );
    let refused = gw
        .send_command(bearer(&m.service, to(&id, dispense("A1", 1000))))
        .await
        .expect_err("offline");
    assert_eq!(refused.code(), Code::Unavailable);
    assert!(refused.message().contains("vm-hb"), "{refused}");
    m.shop_shows(&id, Connectivity::Offline).await;
    let events = m.events(&id).await;
    assert!(
        events.contains(&"device.telemetry".to_string()),
        "{events:?}"
    );
    for _ in 0..100 {
        if m.events(&id)
            .await
            .contains(&"device.disconnected".to_string())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        m.events(&id)
            .await
            .contains(&"device.disconnected".to_string())
    );
    m.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_devices_bad_commands_timeouts_and_jams() {
    let options = GatewayOptions {
        max_pending: 2,
        ..GatewayOptions::default()
    };
    let m = Mesh::start(testing::sqlite(), options).await;
    let ids = vec!["vm-a".to_string(), "vm-b".to_string()];
    m.register(&["vm-a"]).await;
    let devices = m.devices(&ids).await;
    let (a, b) = (&devices[0], &devices[1]);

    // Credentials: none, garbage, another device's, a customer's.
    for (token, what) in [
        (String::new(), "none"),
        ("garbage".to_string(), "garbage"),
        (b.token.clone(), "another device's"),
        (m.customer.clone(), "a customer's"),
    ] {
        let impostor = SimDevice::new("vm-a", token);
        let e = impostor
            .connect(m.channel().await)
            .await
            .expect_err("refused");
        let expected = if what == "none" {
            Code::InvalidArgument
        } else {
            Code::Unauthenticated
        };
        assert_eq!(e.code(), expected, "{what}: {e}");
        assert!(e.message().contains("vm-a") || what == "none", "{e}");
    }

    // RBAC and input checks of SendCommand.
    let mut gw = m.client().await;
    let e = gw
        .send_command(bearer(&m.customer, to("vm-a", dispense("A1", 100))))
        .await
        .expect_err("customer");
    assert_eq!(e.code(), Code::PermissionDenied);
    let mut no_action = to("vm-a", dispense("A1", 100));
    no_action.command.as_mut().unwrap().action = None;
    let e = gw
        .send_command(bearer(&m.service, no_action))
        .await
        .expect_err("no action");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("command.action"), "{e}");
    let e = gw
        .send_command(bearer(&m.service, to("vm-a", dispense("", 100))))
        .await
        .expect_err("no slot");
    assert!(e.message().starts_with("command.dispense.slot"), "{e}");
    let e = gw
        .send_command(bearer(&m.service, to("vm-zzz", dispense("A1", 100))))
        .await
        .expect_err("unknown");
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains("vm-zzz"), "{e}");
    let e = gw
        .get_device_session(bearer(
            &m.service,
            GetDeviceSessionRequest {
                machine_id: "vm-zzz".into(),
            },
        ))
        .await
        .expect_err("unknown");
    assert_eq!(e.code(), Code::NotFound);
    let e = gw
        .list_device_sessions(bearer(
            &m.service,
            ListDeviceSessionsRequest {
                page_token: "!".into(),
                ..Default::default()
            },
        ))
        .await
        .expect_err("bad token");
    assert!(e.message().starts_with("page_token"), "{e}");

    // A jammed slot: the ack says so, and the fault reaches shop.
    let conn_a = a.connect(m.channel().await).await.expect("connect a");
    a.faults.jam("A3");
    let jam = gw
        .send_command(bearer(&m.service, to("vm-a", dispense("A3", 5000))))
        .await
        .expect("jam acked")
        .into_inner();
    assert_eq!(jam.ack.unwrap().result, CommandResult::Jammed as i32);
    let mut faults = Vec::new();
    for _ in 0..200 {
        faults = m.shop_shows("vm-a", Connectivity::Online).await;
        if !faults.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(faults, vec!["SLOT_A3_JAMMED"]);

    // No ack in time: DEADLINE_EXCEEDED naming the machine; the queue is bounded.
    a.faults.drop_acks.store(true, Ordering::Relaxed);
    let e = gw
        .send_command(bearer(&m.service, to("vm-a", dispense("A1", 200))))
        .await
        .expect_err("no ack");
    assert_eq!(e.code(), Code::DeadlineExceeded);
    assert!(e.message().contains("vm-a"), "{e}");
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let mut gw = gw.clone();
            let token = m.service.clone();
            tokio::spawn(async move {
                gw.send_command(bearer(&token, to("vm-a", dispense("A1", 3000))))
                    .await
            })
        })
        .collect();
    for _ in 0..200 {
        let pending = gw
            .get_device_session(bearer(
                &m.service,
                GetDeviceSessionRequest {
                    machine_id: "vm-a".into(),
                },
            ))
            .await
            .expect("session")
            .into_inner()
            .session
            .expect("session")
            .pending_command_count;
        if pending == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let full = gw
        .send_command(bearer(&m.service, to("vm-a", dispense("A1", 3000))))
        .await
        .expect_err("the third pending command is refused");
    assert_eq!(full.code(), Code::ResourceExhausted, "{full}");
    assert!(full.message().contains("vm-a"), "{full}");
    for w in waiting {
        assert_eq!(
            w.await.expect("join").expect_err("no ack").code(),
            Code::DeadlineExceeded
        );
    }

    // A second connection of the same device supersedes the first.
    a.faults.drop_acks.store(false, Ordering::Relaxed);
    let conn_a2 = a.connect(m.channel().await).await.expect("reconnect a");
    let ended = conn_a.ended().await.expect_err("superseded");
    assert!(ended.message().contains("superseded"), "{ended}");
    assert!(conn_a2.is_live());
    let ok = gw
        .send_command(bearer(&m.service, to("vm-a", dispense("A2", 5000))))
        .await
        .expect("works on the new connection")
        .into_inner();
    assert_eq!(ok.ack.unwrap().result, CommandResult::Ok as i32);

    // A device closing its side ends the session cleanly.
    let conn_b = b.connect(m.channel().await).await.expect("connect b");
    conn_b.cut();
    m.shutdown.cancel();
}
