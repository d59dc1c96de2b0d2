//! `mesh events` on both buses, with the same JSON: against a real Redis (`--redis-url`), and
//! against an in-process bus through the admin port's `/bus` routes (`--admin`, as for `mesh
//! serve all`). A poisoned event is dead-lettered, `list` shows its stream and group, `dead`
//! shows it with its reason and payload as JSON, `replay` after the fix hands it back, and it is
//! handled once; `tail` prints the stream as JSON lines. The admin port refuses callers without
//! a token or of other roles.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::future::BoxFuture;
use mesh_contracts::events::v1::{Envelope, OrderCreated};
use mesh_runtime::Migrations;
use mesh_runtime::auth::{JwksClient, Role, Verifier, VerifierSettings};
use mesh_runtime::bus::memory::MemoryBus;
use mesh_runtime::bus::redis::RedisBus;
use mesh_runtime::bus::{DeliveryOptions, EventBus};
use mesh_runtime::client::{ClientOptions, connect};
use mesh_runtime::consumer::{Consumer, ConsumerOptions, EventHandler, HandlerError};
use mesh_runtime::outbox::Tx;
use mesh_testkit::{self as testing, TestAuth, unique};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const MESH: &str = env!("CARGO_BIN_EXE_mesh");

/// Refuses every event until fixed; then records its id.
struct Billing {
    fixed: Arc<AtomicBool>,
}

impl EventHandler for Billing {
    fn handle<'a>(
        &'a self,
        event: &'a Envelope,
        tx: &'a mut Tx,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            if !self.fixed.load(Ordering::SeqCst) {
                return Err(HandlerError::permanent("price list missing for EUR"));
            }
            sqlx::query("INSERT INTO billed (event_id) VALUES ($1)")
                .bind(&event.id)
                .execute(&mut **tx)
                .await?;
            Ok(())
        })
    }
}

/// Runs `mesh events <bus> <args>`: its stdout, or its stderr as the error.
fn run_events(bus: &[String], args: &[&str]) -> Result<String, String> {
    let out = Command::new(MESH)
        .arg("events")
        .args(bus)
        .args(args)
        .env_remove("MESH_REDIS_URL")
        .env_remove("MESH_EVENTS_TOKEN")
        .output()
        .expect("mesh events runs");
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `mesh events <bus> <args>`, which must succeed.
fn events(bus: &[String], args: &[&str]) -> String {
    run_events(bus, args).unwrap_or_else(|e| panic!("mesh events {args:?}: {e}"))
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_event_is_dead_lettered_shown_replayed_after_a_fix_and_handled_once() {
    let Some(url) = testing::redis("mesh events") else {
        return;
    };
    let ns = format!("{}:", unique("cli"));
    let bus: Arc<dyn EventBus> =
        Arc::new(RedisBus::connect(&url, ns.clone(), DeliveryOptions::default()).unwrap());
    poisoned_event_round_trip(bus, &strings(&["--redis-url", &url, "--namespace", &ns])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_process_bus_is_inspected_and_replayed_through_the_admin_port() {
    let auth = TestAuth::start(&testing::sqlite(), mesh_auth::AuthSettings::default()).await;
    let verifier = Verifier::new(
        Arc::new(JwksClient::new(connect(
            auth.uri(),
            ClientOptions::default(),
        ))),
        VerifierSettings::default(),
    );
    let memory = MemoryBus::new(DeliveryOptions::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    tokio::spawn(mesh_runtime::admin::run(
        listener,
        mesh_runtime::bus_admin::router(Arc::new(memory.clone()), verifier),
        stop.clone().cancelled_owned(),
    ));

    // Refused: no token, a customer's, a bad one.
    let err = run_events(&strings(&["--admin", &admin]), &["list"]).unwrap_err();
    assert!(err.contains("--admin needs --token"), "{err}");
    let customer = auth.customer_token().await;
    let err = run_events(
        &strings(&["--admin", &admin, "--token", &customer]),
        &["list"],
    )
    .unwrap_err();
    assert!(err.contains("403"), "{err}");
    let err = run_events(
        &strings(&["--admin", &admin, "--token", "not-a-jwt"]),
        &["list"],
    )
    .unwrap_err();
    assert!(err.contains("401"), "{err}");

    let (_, auditor) = auth.token_with_roles(&[Role::Auditor]).await;
    poisoned_event_round_trip(
        Arc::new(memory),
        &strings(&["--admin", &admin, "--token", &auditor]),
    )
    .await;
    stop.cancel();
    auth.shutdown.cancel();
}

/// The operator's round trip on `bus`, with `mesh events` told where it is by `cli`.
async fn poisoned_event_round_trip(bus: Arc<dyn EventBus>, cli: &[String]) {
    let db = testing::database("billing", &testing::sqlite(), &Migrations::NONE).await;
    sqlx::query("CREATE TABLE billed (event_id TEXT NOT NULL)")
        .execute(db.pool())
        .await
        .unwrap();
    let fixed = Arc::new(AtomicBool::new(false));
    let stop = CancellationToken::new();
    let consumer = Consumer::new(db.clone(), bus.clone(), "billing")
        .options(ConsumerOptions {
            max_deliveries: 2,
            retry_backoff: std::time::Duration::from_millis(10),
            ..ConsumerOptions::default()
        })
        .on(
            "order.created",
            Billing {
                fixed: fixed.clone(),
            },
        );
    tokio::spawn(consumer.run(stop.clone()));
    let envelope = testing::envelope(
        "order.created",
        "o-1",
        "OrderCreated",
        &OrderCreated {
            order_id: "o-1".into(),
            customer_id: "c-9".into(),
            ..Default::default()
        },
    );
    testing::publish(bus.as_ref(), &envelope).await;
    testing::eventually("the poisoned event is dead-lettered", || async {
        bus.dead_letters("billing").await.unwrap().len() == 1
    })
    .await;

    let list: Value = serde_json::from_str(&events(cli, &["list"])).unwrap();
    let order = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stream"] == "order")
        .expect("the order stream is listed");
    assert_eq!(order["length"], 1);
    assert_eq!(order["groups"][0]["group"], "billing");
    assert_eq!(order["groups"][0]["lag"], 0, "dead-lettered = acknowledged");

    let dead: Value = serde_json::from_str(&events(cli, &["dead", "--group", "billing"])).unwrap();
    let letter = &dead[0];
    let reason = letter["reason"].as_str().unwrap();
    assert!(reason.contains("price list missing for EUR"), "{reason}");
    assert_eq!(letter["event"]["id"], envelope.id.as_str());
    assert_eq!(letter["event"]["type"], "order.created");
    assert_eq!(letter["event"]["payload"]["orderId"], "o-1");
    assert_eq!(letter["event"]["payload"]["customerId"], "c-9");
    let dead_id = letter["dead_id"].as_str().unwrap().to_string();

    // A wrong id is an error; after the fix the dead letter is replayed and handled once.
    let err = run_events(cli, &["replay", "--group", "billing", "--id", "1-1"]).unwrap_err();
    assert!(err.contains("no dead letter `1-1`"), "{err}");
    fixed.store(true, Ordering::SeqCst);
    let replayed: Value = serde_json::from_str(&events(
        cli,
        &["replay", "--group", "billing", "--id", &dead_id],
    ))
    .unwrap();
    assert_eq!(replayed["replayed"][0], dead_id.as_str());
    let billed = || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM billed WHERE event_id = $1")
            .bind(&envelope.id)
            .fetch_one(db.pool())
            .await
            .unwrap()
    };
    testing::eventually("the replayed event is handled", || async {
        billed().await == 1
    })
    .await;
    testing::eventually("the group is caught up", || async {
        let lag = bus
            .group_lag("billing", &["order".to_string()])
            .await
            .unwrap();
        lag[0].behind() == 0
    })
    .await;
    assert_eq!(billed().await, 1, "handled once");
    assert!(bus.dead_letters("billing").await.unwrap().is_empty());
    let again: Value =
        serde_json::from_str(&events(cli, &["replay", "--group", "billing", "--all"])).unwrap();
    assert_eq!(again["replayed"].as_array().unwrap().len(), 0);

    // The stream holds the original and the replayed copy, same event id.
    let tail = events(
        cli,
        &["tail", "--stream", "order", "--from-start", "--count", "2"],
    );
    let lines: Vec<Value> = tail
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert!(
        lines
            .iter()
            .all(|l| l["event"]["id"] == envelope.id.as_str())
    );
    stop.cancel();
}
