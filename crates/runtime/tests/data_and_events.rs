//! Data and events end to end, on every backend available: SQLite + in-process bus always;
//! Postgres when `MESH_TEST_DATABASE_URL` is set; Redis Streams when `MESH_TEST_REDIS_URL` is
//! set (`.ci/run` sets both). Each test uses its own schema, file and stream names, so tests run
//! in parallel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use mesh_contracts::audit::v1::ListEventsRequest;
use mesh_contracts::events::v1::{Envelope, ProductDeleted};
use mesh_runtime::audit::AuditApi;
use mesh_runtime::bus::memory::MemoryBus;
use mesh_runtime::bus::redis::RedisBus;
use mesh_runtime::bus::{BusError, Delivery, DeliveryOptions, EventBus, OutgoingEvent};
use mesh_runtime::config::DatabaseTarget;
use mesh_runtime::consumer::{Consumer, ConsumerOptions, EventHandler, HandlerError, Outcome};
use mesh_runtime::outbox::{Event, Tx};
use mesh_runtime::relay::{Relay, RelayOptions};
use mesh_runtime::{CallContext, Database, Migrations, TraceContext};
use prost::Message as _;
use sqlx::Row as _;
use tokio_util::sync::CancellationToken;

use mesh_testkit::unique;

fn sqlite_target() -> DatabaseTarget {
    mesh_testkit::sqlite()
}

fn postgres_target(test: &str) -> Option<DatabaseTarget> {
    mesh_testkit::postgres(test)
}

fn redis_url(test: &str) -> Option<String> {
    mesh_testkit::redis(test)
}

/// Every (database, bus) combination available here, named for messages.
fn combinations(
    test: &str,
    options: DeliveryOptions,
) -> Vec<(String, DatabaseTarget, Arc<dyn EventBus>)> {
    let mut out: Vec<(String, DatabaseTarget, Arc<dyn EventBus>)> = vec![(
        "sqlite+memory".into(),
        sqlite_target(),
        Arc::new(MemoryBus::new(options)),
    )];
    let pg = postgres_target(test);
    let redis = redis_url(test);
    if let Some(pg) = &pg {
        out.push((
            "postgres+memory".into(),
            pg.clone(),
            Arc::new(MemoryBus::new(options)),
        ));
    }
    if let Some(url) = &redis {
        let bus = RedisBus::connect(url, format!("{}:", unique("test")), options).unwrap();
        let target = match &pg {
            Some(DatabaseTarget::Postgres { url, .. }) => DatabaseTarget::Postgres {
                url: url.clone(),
                schema: unique("t"),
            },
            _ => sqlite_target(),
        };
        let name = if pg.is_some() {
            "postgres+redis"
        } else {
            "sqlite+redis"
        };
        out.push((name.into(), target, Arc::new(bus)));
    }
    out
}

async fn open(target: &DatabaseTarget) -> Database {
    let db = Database::connect("svc", target).await.expect("connect");
    db.migrate(&Migrations::NONE).await.expect("migrate");
    sqlx::query(
        "CREATE TABLE effects (event_id TEXT NOT NULL, subject TEXT NOT NULL, seq BIGINT NOT NULL, trace TEXT NOT NULL)",
    )
    .execute(db.pool())
    .await
    .expect("effects table");
    db
}

fn event(subject: &str) -> Event {
    Event::new(
        "product.deleted",
        subject,
        "ProductDeleted",
        &ProductDeleted {
            product_id: subject.into(),
            sku: "SKU".into(),
        },
    )
}

/// Emits `n` events for each of `subjects`, one transaction per event.
async fn produce(db: &Database, subjects: &[String], n: usize) {
    for _ in 0..n {
        for s in subjects {
            let mut tx = db.begin().await.unwrap();
            tx.emit(event(s)).await.unwrap();
            tx.commit().await.unwrap();
        }
    }
}

/// Records each event's effect, checks per-subject order, and fails on demand.
#[derive(Clone, Default)]
struct Recorder {
    last: Arc<Mutex<HashMap<String, i64>>>,
    out_of_order: Arc<Mutex<u32>>,
    fail_always: bool,
}

impl EventHandler for Recorder {
    fn handle<'a>(
        &'a self,
        event: &'a Envelope,
        tx: &'a mut Tx,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            if self.fail_always {
                return Err(HandlerError::retry("the handler always fails"));
            }
            {
                let mut last = self.last.lock().unwrap();
                let prev = last
                    .insert(event.subject.clone(), event.sequence)
                    .unwrap_or(0);
                if event.sequence <= prev {
                    *self.out_of_order.lock().unwrap() += 1;
                }
            }
            let trace = CallContext::current()
                .map(|c| c.trace.trace_id_hex())
                .unwrap_or_default();
            sqlx::query(
                "INSERT INTO effects (event_id, subject, seq, trace) VALUES ($1, $2, $3, $4)",
            )
            .bind(&event.id)
            .bind(&event.subject)
            .bind(event.sequence)
            .bind(trace)
            .execute(&mut **tx)
            .await?;
            Ok(())
        })
    }
}

async fn effect_counts(db: &Database) -> (i64, i64) {
    let row = sqlx::query("SELECT COUNT(*) AS n, COUNT(DISTINCT event_id) AS d FROM effects")
        .fetch_one(db.pool())
        .await
        .unwrap();
    (row.try_get("n").unwrap(), row.try_get("d").unwrap())
}

async fn wait_for_effects(db: &Database, want: i64, within: Duration, what: &str) {
    let start = std::time::Instant::now();
    loop {
        let (n, distinct) = effect_counts(db).await;
        assert_eq!(n, distinct, "{what}: an event had two effects");
        if distinct >= want {
            assert_eq!(distinct, want, "{what}: more effects than events");
            return;
        }
        assert!(
            start.elapsed() < within,
            "{what}: {distinct} of {want} effects after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A consumer that records `product.deleted` and always fails on `product.created` (the poison).
fn recorder_with_poison(db: &Database, bus: Arc<dyn EventBus>, group: String) -> Consumer {
    Consumer::new(db.clone(), bus, group)
        .on("product.deleted", Recorder::default())
        .on(
            "product.created",
            Recorder {
                fail_always: true,
                ..Recorder::default()
            },
        )
        .options(fast())
}

fn fast() -> ConsumerOptions {
    ConsumerOptions {
        max_deliveries: 3,
        retry_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        batch: 64,
        concurrency: 4,
    }
}

/// Relay options whose sweep takes every unsent row at once (tests that call `relay_once`
/// without the direct publisher running).
fn sweep_all() -> RelayOptions {
    RelayOptions {
        sweep_after: Duration::ZERO,
        ..RelayOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_to_bus_to_consumer_round_trip_keeps_order_trace_and_audit() {
    for (name, target, bus) in combinations("round trip", DeliveryOptions::default()) {
        let db = open(&target).await;
        let stop = CancellationToken::new();
        // Two relays at once: on Postgres they split the partitions with SKIP LOCKED.
        for _ in 0..2 {
            tokio::spawn(
                Relay::new(db.clone(), bus.clone(), RelayOptions::default()).run(stop.clone()),
            );
        }
        let recorder = Recorder::default();
        let consumer = Consumer::new(db.clone(), bus.clone(), unique("g"))
            .on("product.deleted", recorder.clone())
            .options(fast());
        tokio::spawn(consumer.run(stop.clone()));

        let subjects: Vec<String> = (0..5).map(|i| format!("p-{i}")).collect();
        let trace = TraceContext::new_root();
        CallContext {
            trace,
            deadline: None,
        }
        .scope(produce(&db, &subjects, 20))
        .await;
        wait_for_effects(&db, 100, Duration::from_secs(30), &name).await;
        assert_eq!(
            *recorder.out_of_order.lock().unwrap(),
            0,
            "{name}: order per subject"
        );

        // One saga, one trace: the consumer's span continues the producer's trace.
        let traces: Vec<String> = sqlx::query("SELECT DISTINCT trace FROM effects")
            .fetch_all(db.pool())
            .await
            .unwrap()
            .iter()
            .map(|r| r.try_get("trace").unwrap())
            .collect();
        assert_eq!(traces, [trace.trace_id_hex()], "{name}");

        // The audit trail: every event of one aggregate, in sequence, paged.
        let audit = AuditApi::new(db.clone());
        let mut request = ListEventsRequest {
            subject: "p-3".into(),
            page_size: 15,
            ..Default::default()
        };
        let first = audit.list(&request).await.unwrap();
        assert_eq!(first.events.len(), 15, "{name}");
        request.page_token = first.next_page_token.clone();
        // The token belongs to this aggregate's listing: another subject refuses it.
        let mut other = request.clone();
        other.subject = "p-4".into();
        let refused = audit.list(&other).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{name}");
        assert!(refused.message().starts_with("page_token: "), "{name}");
        let second = audit.list(&request).await.unwrap();
        assert_eq!(second.events.len(), 5, "{name}");
        assert!(second.next_page_token.is_empty());
        let seqs: Vec<i64> = first
            .events
            .iter()
            .chain(&second.events)
            .map(|e| e.sequence)
            .collect();
        assert_eq!(seqs, (1..=20).collect::<Vec<_>>(), "{name}");
        assert!(
            first
                .events
                .iter()
                .all(|e| e.source == "svc" && e.r#type == "product.deleted")
        );
        let bad = audit.list(&ListEventsRequest::default()).await.unwrap_err();
        assert_eq!(bad.code(), tonic::Code::InvalidArgument);
        stop.cancel();
        eprintln!("ok: round trip on {name}");
    }
}

/// A relay whose sweep never runs within a test: only the direct publisher can deliver.
fn direct_only() -> RelayOptions {
    RelayOptions {
        sweep_after: Duration::from_secs(3600),
        poll: Duration::from_secs(3600),
        ..RelayOptions::default()
    }
}

async fn unsent(db: &Database) -> i64 {
    sqlx::query("SELECT COUNT(*) AS n FROM mesh_outbox WHERE sent_at_us IS NULL")
        .fetch_one(db.pool())
        .await
        .unwrap()
        .try_get("n")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_events_are_published_at_once_in_order_and_rolled_back_ones_never() {
    for (name, target, bus) in combinations("direct publish", DeliveryOptions::default()) {
        let db = open(&target).await;
        let stop = CancellationToken::new();
        tokio::spawn(Relay::new(db.clone(), bus.clone(), direct_only()).run(stop.clone()));
        let recorder = Recorder::default();
        let consumer = Consumer::new(db.clone(), bus.clone(), unique("g"))
            .on("product.deleted", recorder.clone())
            .options(fast());
        tokio::spawn(consumer.run(stop.clone()));
        // Let the publishing loop start (rows committed before it runs are the sweep's).
        tokio::time::sleep(Duration::from_millis(100)).await;

        // Rolled back, dropped, or undone by a savepoint: never published.
        let mut tx = db.begin().await.unwrap();
        tx.emit(event("gone")).await.unwrap();
        tx.rollback().await.unwrap();
        let mut tx = db.begin().await.unwrap();
        tx.emit(event("gone")).await.unwrap();
        drop(tx);

        // Eight producers, four subjects shared between them: each subject's events are
        // written by several tasks, in sequence order, and must arrive in that order.
        let subjects: Vec<String> = (0..4).map(|i| format!("d-{i}")).collect();
        let mut producers = Vec::new();
        for p in 0..8 {
            let db = db.clone();
            let subjects = subjects.clone();
            producers.push(tokio::spawn(async move {
                let mut written = 0;
                while written < 25 {
                    let subject = &subjects[(p + written) % subjects.len()];
                    let mut tx = db.begin().await.unwrap();
                    // Two writers of one subject race for its next sequence: the loser's
                    // insert fails (unique) and it tries again, as a service would.
                    if tx.emit(event(subject)).await.is_err() {
                        continue;
                    }
                    if tx.commit().await.is_ok() {
                        written += 1;
                    }
                }
            }));
        }
        for p in producers {
            p.await.unwrap();
        }
        wait_for_effects(&db, 200, Duration::from_secs(30), &name).await;
        assert_eq!(
            *recorder.out_of_order.lock().unwrap(),
            0,
            "{name}: order per subject"
        );
        let gone: i64 = sqlx::query("SELECT COUNT(*) AS n FROM effects WHERE subject = 'gone'")
            .fetch_one(db.pool())
            .await
            .unwrap()
            .try_get("n")
            .unwrap();
        assert_eq!(gone, 0, "{name}: a rolled-back event was published");
        // The direct path marks what it published, in batches, soon after.
        let start = std::time::Instant::now();
        while unsent(&db).await > 0 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{name}: published rows not marked sent"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.cancel();
        eprintln!("ok: direct publish on {name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_publish_never_happened_is_swept_after_the_bound_in_order() {
    for (name, target, bus) in combinations("sweep", DeliveryOptions::default()) {
        let db = open(&target).await;
        // No relay runs: these commits are those of a process killed right after its commits.
        let subjects: Vec<String> = (0..3).map(|i| format!("s-{i}")).collect();
        produce(&db, &subjects, 5).await;
        let stop = CancellationToken::new();
        let options = RelayOptions {
            sweep_after: Duration::from_millis(300),
            poll: Duration::from_millis(50),
            ..RelayOptions::default()
        };
        // The restarted process: its relay sweeps the old rows; a new commit of an old subject
        // waits for them (its predecessor is not on the bus), so order per subject holds.
        tokio::spawn(Relay::new(db.clone(), bus.clone(), options).run(stop.clone()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        produce(&db, &subjects, 1).await;
        let recorder = Recorder::default();
        let consumer = Consumer::new(db.clone(), bus.clone(), unique("g"))
            .on("product.deleted", recorder.clone())
            .options(fast());
        tokio::spawn(consumer.run(stop.clone()));
        wait_for_effects(&db, 18, Duration::from_secs(30), &name).await;
        assert_eq!(
            *recorder.out_of_order.lock().unwrap(),
            0,
            "{name}: order per subject"
        );
        stop.cancel();
        eprintln!("ok: sweep on {name}");
    }
}

/// A bus that stores only the first `n` events of the next batch and then fails, as a relay
/// killed mid-batch would leave things: some events published, none marked sent.
#[derive(Debug)]
struct DiesMidBatch {
    inner: Arc<dyn EventBus>,
    armed: Mutex<Option<usize>>,
}

impl EventBus for DiesMidBatch {
    fn publish<'a>(&'a self, events: &'a [OutgoingEvent]) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let armed = self.armed.lock().unwrap().take();
            match armed {
                Some(n) => {
                    self.inner.publish(&events[..n.min(events.len())]).await?;
                    Err(BusError::Reply {
                        command: "XADD",
                        detail: "relay killed mid-batch".into(),
                    })
                }
                None => self.inner.publish(events).await,
            }
        })
    }
    fn subscribe<'a>(
        &'a self,
        group: &'a str,
        consumer: &'a str,
        domains: &'a [String],
    ) -> BoxFuture<'a, Result<Box<dyn mesh_runtime::bus::Subscription>, BusError>> {
        self.inner.subscribe(group, consumer, domains)
    }
    fn dead_letters<'a>(
        &'a self,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Vec<mesh_runtime::bus::DeadLetter>, BusError>> {
        self.inner.dead_letters(group)
    }
    fn group_lag<'a>(
        &'a self,
        group: &'a str,
        domains: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<mesh_runtime::bus::GroupLag>, BusError>> {
        self.inner.group_lag(group, domains)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_killed_mid_batch_and_restarted_delivers_everything_with_effects_once() {
    for (name, target, bus) in combinations("relay killed mid-batch", DeliveryOptions::default()) {
        let db = open(&target).await;
        let subjects: Vec<String> = (0..4).map(|i| format!("k-{i}")).collect();
        produce(&db, &subjects, 10).await;
        let dying = Arc::new(DiesMidBatch {
            inner: bus.clone(),
            armed: Mutex::new(Some(17)),
        });
        let relay = Relay::new(db.clone(), dying.clone(), sweep_all());
        assert!(
            relay.relay_once().await.is_err(),
            "{name}: the first relay dies mid-batch"
        );
        // A new relay (the restarted process) publishes everything not marked sent.
        let restarted = Relay::new(db.clone(), bus.clone(), sweep_all());
        while restarted.relay_once().await.unwrap() > 0 {}
        let unsent: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM mesh_outbox WHERE sent_at_us IS NULL")
                .fetch_one(db.pool())
                .await
                .unwrap()
                .try_get("n")
                .unwrap();
        assert_eq!(unsent, 0, "{name}");

        let stop = CancellationToken::new();
        let consumer = Consumer::new(db.clone(), bus.clone(), unique("g"))
            .on("product.deleted", Recorder::default())
            .options(fast());
        tokio::spawn(consumer.run(stop.clone()));
        wait_for_effects(&db, 40, Duration::from_secs(30), &name).await;
        stop.cancel();
        eprintln!("ok: relay killed mid-batch on {name}");
    }
}

#[test]
fn a_killed_consumers_events_are_taken_over_by_its_heartbeat_long_before_the_claim_time() {
    let Some(url) = redis_url("dead consumer") else {
        return;
    };
    let options = DeliveryOptions {
        claim_idle: Duration::from_secs(60),
        dead_after: Duration::from_millis(400),
        ..DeliveryOptions::default()
    };
    let namespace = format!("{}:", unique("dead"));
    let group = unique("g");
    let domains = vec!["product".to_string()];
    // The doomed consumer lives in a runtime of its own: shutting that runtime down stops its
    // heartbeat without a goodbye, as SIGKILL would.
    let doomed = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bus = doomed.block_on(async {
        let bus = RedisBus::connect(&url, namespace.clone(), options).unwrap();
        let mut first = bus.subscribe(&group, "first", &domains).await.unwrap();
        let event = OutgoingEvent {
            domain: "product".into(),
            event_id: "1".into(),
            payload: Bytes::from_static(b"x"),
        };
        bus.publish(&[event]).await.unwrap();
        let got = first.next_batch(10, Duration::from_secs(2)).await.unwrap();
        assert_eq!(got.len(), 1);
        std::mem::forget(first); // killed: never acknowledges, never says goodbye
        bus
    });
    drop(bus);
    doomed.shutdown_background();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let bus = RedisBus::connect(&url, namespace.clone(), options).unwrap();
        let mut second = bus.subscribe(&group, "second", &domains).await.unwrap();
        let start = std::time::Instant::now();
        let mut taken = Vec::new();
        while taken.is_empty() && start.elapsed() < Duration::from_secs(10) {
            taken = second
                .next_batch(10, Duration::from_millis(100))
                .await
                .unwrap();
        }
        assert_eq!(taken.len(), 1, "taken over");
        assert_eq!(taken[0].attempt, 2);
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "taken over after {:?}, not about the heartbeat's 400 ms",
            start.elapsed()
        );
        second.ack(&taken[0]).await.unwrap();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_crash_before_ack_is_redelivered_to_another_consumer_with_one_effect() {
    let options = DeliveryOptions {
        claim_idle: Duration::from_millis(300),
        ..DeliveryOptions::default()
    };
    for (name, target, bus) in combinations("consumer crash before ack", options) {
        let db = open(&target).await;
        produce(&db, &["c-1".to_string()], 3).await;
        let relay = Relay::new(db.clone(), bus.clone(), sweep_all());
        while relay.relay_once().await.unwrap() > 0 {}

        let consumer = Consumer::new(db.clone(), bus.clone(), unique("g"))
            .on("product.deleted", Recorder::default())
            .options(fast());
        let mut first = consumer.subscribe("first").await.unwrap();
        let got = first.next_batch(10, Duration::from_secs(2)).await.unwrap();
        assert_eq!(got.len(), 3, "{name}");
        for d in &got {
            assert_eq!(consumer.handle(d).await, Outcome::Handled, "{name}");
        }
        drop(first); // crashed after committing the effects, before acknowledging

        let mut second = consumer.subscribe("second").await.unwrap();
        let mut redelivered = Vec::new();
        let start = std::time::Instant::now();
        while redelivered.len() < 3 && start.elapsed() < Duration::from_secs(10) {
            redelivered.extend(
                second
                    .next_batch(10, Duration::from_millis(200))
                    .await
                    .unwrap(),
            );
        }
        assert_eq!(
            redelivered.len(),
            3,
            "{name}: reclaimed by the second consumer"
        );
        for d in &redelivered {
            assert!(d.attempt >= 2, "{name}: attempt {}", d.attempt);
            let outcome = consumer.handle(d).await;
            assert_eq!(outcome, Outcome::Duplicate, "{name}");
            consumer.settle(second.as_mut(), d, outcome).await.unwrap();
        }
        assert_eq!(effect_counts(&db).await, (3, 3), "{name}: one effect each");
        assert!(
            second
                .next_batch(10, Duration::from_millis(700))
                .await
                .unwrap()
                .is_empty(),
            "{name}: acknowledged events are not delivered again"
        );
        eprintln!("ok: consumer crash before ack on {name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_malformed_and_unknown_events_are_dead_lettered_and_the_consumer_keeps_going() {
    for (name, target, bus) in combinations("poison event", DeliveryOptions::default()) {
        let db = open(&target).await;
        let group = unique("g");
        let stop = CancellationToken::new();
        let consumer = recorder_with_poison(&db, bus.clone(), group.clone());
        // Join before anything is published, so nothing is missed on either bus.
        drop(consumer.subscribe("warm-up").await.unwrap());
        tokio::spawn(consumer.run(stop.clone()));

        let unknown = Envelope {
            id: "u-1".into(),
            r#type: "product.teleported".into(),
            payload: Some(prost_types::Any {
                type_url: "type.googleapis.com/events.v1.Teleported".into(),
                value: vec![],
            }),
            ..Default::default()
        };
        bus.publish(&[
            OutgoingEvent {
                domain: "product".into(),
                event_id: "x".into(),
                payload: Bytes::from_static(b"\xff\xff not protobuf"),
            },
            OutgoingEvent {
                domain: "product".into(),
                event_id: "u".into(),
                payload: Bytes::from(unknown.encode_to_vec()),
            },
        ])
        .await
        .unwrap();
        let mut tx = db.begin().await.unwrap();
        tx.emit(Event::new(
            "product.created",
            "poison",
            "ProductDeleted",
            &ProductDeleted::default(),
        ))
        .await
        .unwrap();
        tx.emit(event("after-poison")).await.unwrap();
        tx.commit().await.unwrap();
        let relay = Relay::new(db.clone(), bus.clone(), sweep_all());
        while relay.relay_once().await.unwrap() > 0 {}

        wait_for_effects(&db, 1, Duration::from_secs(20), &name).await;
        let start = std::time::Instant::now();
        let dead = loop {
            let dead = bus.dead_letters(&group).await.unwrap();
            if dead.len() >= 3 || start.elapsed() > Duration::from_secs(20) {
                break dead;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let reasons: Vec<&str> = dead.iter().map(|d| d.reason.as_str()).collect();
        assert_eq!(dead.len(), 3, "{name}: {reasons:?}");
        assert!(
            reasons.iter().any(|r| r.starts_with("malformed envelope")),
            "{name}: {reasons:?}"
        );
        assert!(
            reasons
                .iter()
                .any(|r| r.contains("unknown event type `product.teleported`")),
            "{name}: {reasons:?}"
        );
        let poison = dead
            .iter()
            .find(|d| d.reason.contains("failed 3 times"))
            .expect("poison");
        assert_eq!(poison.deliveries, 3, "{name}");
        assert!(poison.reason.contains("the handler always fails"));
        assert_eq!(
            effect_counts(&db).await,
            (1, 1),
            "{name}: the poison had no effect"
        );
        stop.cancel();
        eprintln!("ok: poison on {name}");
    }
}

/// A delivery of an envelope of `event_type` with id `id` about `subject`, as a bus hands it out.
fn delivery(entry: &str, id: &str, event_type: &str, subject: &str) -> Delivery {
    let envelope = Envelope {
        id: id.into(),
        ..mesh_testkit::envelope(
            event_type,
            subject,
            "ProductDeleted",
            &ProductDeleted::default(),
        )
    };
    mesh_testkit::delivery(&envelope, entry, 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_handler_in_a_batch_is_retried_alone_and_the_rest_take_effect_once() {
    for (name, target, bus) in
        combinations("failing handler in a batch", DeliveryOptions::default())
    {
        let db = open(&target).await;
        // One transaction for the whole batch: the failure happens after effects of the same
        // transaction were written, and they must survive the fallback exactly once.
        let consumer = recorder_with_poison(&db, bus, unique("g")).concurrency(1);
        let batch = vec![
            delivery("1-0", "e-a", "product.deleted", "a"),
            delivery("1-1", "e-b", "product.deleted", "b"),
            delivery("1-2", "e-poison", "product.created", "p"),
            delivery("1-3", "e-c", "product.deleted", "c"),
            // The relay published `e-a` twice: the copy is a duplicate, in the same batch.
            delivery("1-4", "e-a", "product.deleted", "a"),
        ];
        let outcomes: HashMap<String, Outcome> = consumer
            .handle_batch(batch)
            .await
            .into_iter()
            .map(|(d, o)| (d.entry_id, o))
            .collect();
        assert_eq!(outcomes["1-0"], Outcome::Handled, "{name}");
        assert_eq!(outcomes["1-1"], Outcome::Handled, "{name}");
        assert_eq!(outcomes["1-3"], Outcome::Handled, "{name}");
        assert_eq!(outcomes["1-4"], Outcome::Duplicate, "{name}");
        assert!(
            matches!(&outcomes["1-2"], Outcome::Retry { reason, .. } if reason.contains("always fails")),
            "{name}: {:?}",
            outcomes["1-2"]
        );
        assert_eq!(effect_counts(&db).await, (3, 3), "{name}");

        // A later batch: redeliveries are duplicates, a new event is handled, all in one
        // transaction without the fallback.
        let again: Vec<Outcome> = consumer
            .handle_batch(vec![
                delivery("2-0", "e-b", "product.deleted", "b"),
                delivery("2-1", "e-d", "product.deleted", "d"),
                delivery("2-2", "e-c", "product.deleted", "c"),
            ])
            .await
            .into_iter()
            .map(|(_, o)| o)
            .collect();
        assert_eq!(
            again,
            vec![Outcome::Duplicate, Outcome::Handled, Outcome::Duplicate],
            "{name}"
        );
        assert_eq!(effect_counts(&db).await, (4, 4), "{name}");
        eprintln!("ok: failing handler in a batch on {name}");
    }
}

/// An envelope id with a NUL character cannot be recorded as handled in Postgres (`TEXT`
/// refuses it), so before the consumer checked ids such an event failed its transaction on every
/// delivery until it was dead-lettered. The `event_envelope` fuzz target asserts the same: an
/// envelope the consumer accepts has an id it can record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_id_holding_a_nul_is_dead_lettered_at_once_and_its_batch_takes_effect() {
    for (name, target, bus) in combinations("nul event id", DeliveryOptions::default()) {
        let db = open(&target).await;
        let consumer = recorder_with_poison(&db, bus, unique("g"));
        let outcomes: HashMap<String, Outcome> = consumer
            .handle_batch(vec![
                delivery("1-0", "e-\0nul", "product.deleted", "a"),
                delivery("1-1", "e-ok", "product.deleted", "b"),
            ])
            .await
            .into_iter()
            .map(|(d, o)| (d.entry_id, o))
            .collect();
        assert!(
            matches!(&outcomes["1-0"], Outcome::DeadLetter { reason } if reason.contains("NUL")),
            "{name}: {:?}",
            outcomes["1-0"]
        );
        assert_eq!(outcomes["1-1"], Outcome::Handled, "{name}");
        assert_eq!(effect_counts(&db).await, (1, 1), "{name}");
    }
}

#[tokio::test]
async fn a_database_that_is_down_answers_unavailable() {
    let db = open(&sqlite_target()).await;
    db.close().await;
    let status = AuditApi::new(db)
        .list(&ListEventsRequest {
            subject: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("database is unavailable"));

    if let Some(DatabaseTarget::Postgres { url, .. }) = postgres_target("database down") {
        let (head, _) = url.rsplit_once('@').unwrap_or(("postgres://postgres", ""));
        let down = DatabaseTarget::Postgres {
            url: format!("{head}@127.0.0.1:1/postgres"),
            schema: "x".into(),
        };
        let err = Database::connect("svc", &down).await.unwrap_err();
        assert!(err.is_unavailable(), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_commits_go_on_and_a_restart_during_ten_thousand_events_loses_none() {
    if redis_url("redis restart").is_none() {
        return;
    }
    let Some(mut redis) = mesh_testkit::OwnRedis::start_durable() else {
        eprintln!("SKIPPED: redis restart: cannot start a redis-server of its own");
        return;
    };
    let target = postgres_target("redis restart").unwrap_or_else(sqlite_target);
    let db = open(&target).await;
    let url = redis.url();
    let options = DeliveryOptions {
        claim_idle: Duration::from_secs(2),
        ..DeliveryOptions::default()
    };
    let bus: Arc<dyn EventBus> = Arc::new(RedisBus::connect(&url, "mesh:", options).unwrap());
    let stop = CancellationToken::new();
    tokio::spawn(
        Relay::new(
            db.clone(),
            bus.clone(),
            RelayOptions {
                poll: Duration::from_millis(50),
                ..RelayOptions::default()
            },
        )
        .run(stop.clone()),
    );
    let consumer = Consumer::new(db.clone(), bus.clone(), "restart")
        .on("product.deleted", Recorder::default())
        .options(fast());
    tokio::spawn(consumer.run(stop.clone()));

    const TOTAL: usize = 10_000;
    let producer = {
        let db = db.clone();
        tokio::spawn(async move {
            for batch in 0..(TOTAL / 50) {
                let mut tx = db.begin().await.unwrap();
                for i in 0..50 {
                    tx.emit(event(&format!("r-{}", (batch * 50 + i) % 97)))
                        .await
                        .unwrap();
                }
                tx.commit().await.unwrap();
                if batch % 20 == 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        })
    };
    // Wait until the stream is flowing, then kill Redis and bring it back.
    let start = std::time::Instant::now();
    while effect_counts(&db).await.1 < 1000 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "events never flowed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    redis.kill();
    // Redis is down: commits go on, their events wait in the outbox.
    let down = std::time::Instant::now();
    let mut tx = db.begin().await.unwrap();
    for i in 0..50 {
        tx.emit(event(&format!("down-{i}"))).await.unwrap();
    }
    tx.commit().await.unwrap();
    assert!(
        down.elapsed() < Duration::from_secs(2),
        "a commit waited for the bus: {:?}",
        down.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        unsent(&db).await >= 50,
        "the events committed while Redis was down wait in the outbox"
    );
    redis.spawn().expect("redis restarts");
    producer.await.unwrap();
    wait_for_effects(
        &db,
        TOTAL as i64 + 50,
        Duration::from_secs(120),
        "redis restart",
    )
    .await;
    stop.cancel();
}

#[tokio::test]
async fn housekeeping_prunes_old_handled_records_and_sent_rows_only() {
    for (name, target, bus) in combinations("housekeeping", DeliveryOptions::default()) {
        let db = open(&target).await;
        let now = i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_micros(),
        )
        .unwrap();
        let day = 24 * 3600 * 1_000_000_i64;
        for (id, age_days) in [("old", 9), ("recent", 1)] {
            sqlx::query(
                "INSERT INTO mesh_handled_events (consumer, event_id, handled_at_us) VALUES ('g', $1, $2)",
            )
            .bind(id)
            .bind(now - age_days * day)
            .execute(db.pool())
            .await
            .unwrap();
        }
        produce(&db, &["h-1".to_string()], 2).await;
        let relay = Relay::new(
            db.clone(),
            bus.clone(),
            RelayOptions {
                retention: Some(Duration::from_secs(3600)),
                handled_retention: Duration::from_secs(8 * 24 * 3600),
                ..sweep_all()
            },
        );
        while relay.relay_once().await.unwrap() > 0 {}
        // Age one sent row past the outbox retention; the other stays recent.
        sqlx::query(
            "UPDATE mesh_outbox SET sent_at_us = $1 WHERE seq = (SELECT MIN(seq) FROM mesh_outbox)",
        )
        .bind(now - day)
        .execute(db.pool())
        .await
        .unwrap();
        assert_eq!(relay.clean_up().await.unwrap(), 2, "{name}");
        let ids: Vec<String> = sqlx::query("SELECT event_id FROM mesh_handled_events")
            .fetch_all(db.pool())
            .await
            .unwrap()
            .iter()
            .map(|r| r.try_get("event_id").unwrap())
            .collect();
        assert_eq!(ids, ["recent"], "{name}");
        let left: i64 = sqlx::query("SELECT COUNT(*) AS n FROM mesh_outbox")
            .fetch_one(db.pool())
            .await
            .unwrap()
            .try_get("n")
            .unwrap();
        assert_eq!(left, 1, "{name}: the recent sent row is kept");
        eprintln!("ok: housekeeping on {name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_lag_counts_undelivered_and_pending_entries_and_dates_the_oldest() {
    let mut buses: Vec<(&str, Arc<dyn EventBus>)> =
        vec![("memory", Arc::new(MemoryBus::default()))];
    if let Some(url) = redis_url("group lag") {
        buses.push((
            "redis",
            Arc::new(
                RedisBus::connect(
                    &url,
                    format!("{}:", unique("lag")),
                    DeliveryOptions::default(),
                )
                .unwrap(),
            ),
        ));
    }
    let domains = vec!["lagged".to_string()];
    for (name, bus) in buses {
        let lag = |bus: Arc<dyn EventBus>| {
            let domains = domains.clone();
            async move {
                let l = bus.group_lag("g", &domains).await.unwrap().remove(0);
                (l.undelivered, l.pending, l.oldest_unhandled_age.is_some())
            }
        };
        assert_eq!(
            lag(bus.clone()).await,
            (0, 0, false),
            "{name}: no stream yet"
        );
        let events: Vec<OutgoingEvent> = (0..3u8)
            .map(|i| OutgoingEvent {
                domain: "lagged".into(),
                event_id: i.to_string(),
                payload: Bytes::from(vec![i]),
            })
            .collect();
        bus.publish(&events).await.unwrap();
        assert_eq!(lag(bus.clone()).await, (3, 0, true), "{name}: no group yet");
        let mut sub = bus.subscribe("g", "c1", &domains).await.unwrap();
        let got = sub.next_batch(2, Duration::from_secs(1)).await.unwrap();
        assert_eq!(got.len(), 2, "{name}");
        assert_eq!(
            lag(bus.clone()).await,
            (1, 2, true),
            "{name}: two pending, one undelivered"
        );
        sub.ack_all(&got).await.unwrap();
        assert_eq!(
            lag(bus.clone()).await,
            (1, 0, true),
            "{name}: one undelivered"
        );
        let rest = sub.next_batch(10, Duration::from_secs(1)).await.unwrap();
        sub.ack_all(&rest).await.unwrap();
        let l = bus.group_lag("g", &domains).await.unwrap().remove(0);
        assert_eq!(
            (l.behind(), l.oldest_unhandled_age),
            (0, None),
            "{name}: caught up"
        );
    }
}

/// Records the effect like [`Recorder`] and emits an event for it, so on Postgres the handled
/// ids are recorded by the emit's own statement (joined to the effect).
#[derive(Clone, Default)]
struct Forwarder;

impl EventHandler for Forwarder {
    fn handle<'a>(
        &'a self,
        event: &'a Envelope,
        tx: &'a mut Tx,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO effects (event_id, subject, seq, trace) VALUES ($1, $2, $3, '')",
            )
            .bind(&event.id)
            .bind(&event.subject)
            .bind(event.sequence)
            .execute(&mut **tx)
            .await?;
            tx.emit(Event::new(
                "product.forwarded",
                format!("fwd-{}", event.subject),
                "ProductDeleted",
                &ProductDeleted {
                    product_id: event.subject.clone(),
                    sku: event.id.clone(),
                },
            ))
            .await?;
            Ok(())
        })
    }
}

async fn outbox_rows(db: &Database) -> i64 {
    sqlx::query("SELECT COUNT(*) AS n FROM mesh_outbox")
        .fetch_one(db.pool())
        .await
        .unwrap()
        .try_get("n")
        .unwrap()
}

/// The handled record joined to the effect (Postgres: written by the first emit's statement, or
/// after the handlers when none emitted) keeps consumers idempotent: a redelivered event in a
/// later batch, beside new ones, before or after them, emitting or not, has no second effect
/// and no second event, and the new events of its batch take effect once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeliveries_beside_new_events_have_no_second_effect_whether_handlers_emit_or_not() {
    for (name, target, bus) in combinations("joined handled record", DeliveryOptions::default()) {
        let db = open(&target).await;
        let consumer = Consumer::new(db.clone(), bus, unique("g"))
            .on("product.deleted", Forwarder)
            .on("product.created", Recorder::default())
            .options(fast());
        let outcomes = |batch: Vec<Delivery>| {
            let consumer = consumer.clone();
            async move {
                // In the batch's order (results come per subject).
                let mut by_entry: Vec<(String, Outcome)> = consumer
                    .handle_batch(batch)
                    .await
                    .into_iter()
                    .map(|(d, o)| (d.entry_id, o))
                    .collect();
                by_entry.sort_by(|a, b| a.0.cmp(&b.0));
                by_entry.into_iter().map(|(_, o)| o).collect::<Vec<_>>()
            }
        };
        // Emitting handlers; a copy of an id in the same batch.
        let first = outcomes(vec![
            delivery("1-0", "e-a", "product.deleted", "a"),
            delivery("1-1", "e-b", "product.deleted", "b"),
            delivery("1-2", "e-a", "product.deleted", "a"),
        ])
        .await;
        assert_eq!(
            first,
            vec![Outcome::Handled, Outcome::Handled, Outcome::Duplicate],
            "{name}"
        );
        assert_eq!(effect_counts(&db).await, (2, 2), "{name}");
        assert_eq!(outbox_rows(&db).await, 2, "{name}");
        // A redelivery after a new event (its id is recorded by the new event's emit, which
        // finds it taken) and before one.
        let second = outcomes(vec![
            delivery("2-0", "e-c", "product.deleted", "c"),
            delivery("2-1", "e-b", "product.deleted", "b"),
            delivery("2-2", "e-d", "product.deleted", "d"),
        ])
        .await;
        assert_eq!(
            second,
            vec![Outcome::Handled, Outcome::Duplicate, Outcome::Handled],
            "{name}"
        );
        assert_eq!(effect_counts(&db).await, (4, 4), "{name}");
        assert_eq!(outbox_rows(&db).await, 4, "{name}");
        // Handlers that emit nothing: the record is one statement after them.
        let third = outcomes(vec![
            delivery("3-0", "e-x", "product.created", "x"),
            delivery("3-1", "e-y", "product.created", "y"),
        ])
        .await;
        assert_eq!(third, vec![Outcome::Handled, Outcome::Handled], "{name}");
        let fourth = outcomes(vec![
            delivery("4-0", "e-z", "product.created", "z"),
            delivery("4-1", "e-x", "product.created", "x"),
            delivery("4-2", "e-a", "product.deleted", "a"),
        ])
        .await;
        assert_eq!(
            fourth,
            vec![Outcome::Handled, Outcome::Duplicate, Outcome::Duplicate],
            "{name}"
        );
        assert_eq!(effect_counts(&db).await, (7, 7), "{name}");
        assert_eq!(outbox_rows(&db).await, 4, "{name}");
        let handled: i64 = sqlx::query("SELECT COUNT(*) AS n FROM mesh_handled_events")
            .fetch_one(db.pool())
            .await
            .unwrap()
            .try_get("n")
            .unwrap();
        assert_eq!(handled, 7, "{name}: one record per distinct event");
        eprintln!("ok: joined handled record on {name}");
    }
}
