//! Publish-to-handle latency and throughput of the event path: outbox write (one transaction
//! per event) -> direct publish after commit (the relay only sweeps) -> bus -> idempotent
//! consumer (a transaction per batch group, with an effect row per event). Runs SQLite +
//! in-process bus always, and Postgres + Redis Streams when `MESH_BENCH_DATABASE_URL` and
//! `MESH_BENCH_REDIS_URL` (or the `MESH_TEST_*` twins) are set.
//!
//! `cargo bench -p mesh-runtime --bench events` (`MESH_BENCH_RATE`, default 1000, and
//! `MESH_BENCH_SECONDS` change the offered load in events/s and the duration;
//! `MESH_BENCH_EVENTS_PER_TX`, default 1, makes each producer transaction emit that many
//! events; `MESH_BENCH_ROUNDS`, default 1, repeats the Postgres runs and prints medians;
//! `MESH_BENCH_SQLITE=0` leaves the SQLite runs out). Latency is from the producer's emit (the
//! envelope time, just before its commit) to the start of the handler, on one clock (one
//! process). Each Postgres run starts after a `CHECKPOINT`.
//!
//! The floor, measured in the same run on Postgres: `pgbench` (16 clients, 2 threads, prepared)
//! running the producer's own transaction (`BEGIN`, the outbox insert of `Tx::emit`, `COMMIT`)
//! on a scratch schema with the runtime's tables, right before and right after each unpaced
//! Postgres run; the bench prints the path's ceiling (that run's events handled per second) as
//! a ratio to the mean of the two.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use mesh_contracts::events::v1::{Envelope, ProductDeleted};
use mesh_runtime::bus::memory::MemoryBus;
use mesh_runtime::bus::redis::RedisBus;
use mesh_runtime::bus::{DeliveryOptions, EventBus};
use mesh_runtime::config::DatabaseTarget;
use mesh_runtime::consumer::{Consumer, ConsumerOptions, EventHandler, HandlerError};
use mesh_runtime::outbox::{Event, Tx};
use mesh_runtime::relay::{Relay, RelayOptions};
use mesh_runtime::{Database, Migrations};
use tokio_util::sync::CancellationToken;

#[derive(Clone, Default)]
struct Stats {
    latencies_us: Arc<Mutex<Vec<u64>>>,
}

impl EventHandler for Stats {
    fn handle<'a>(
        &'a self,
        event: &'a Envelope,
        tx: &'a mut Tx,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            let t = event.time.unwrap_or_default();
            let sent = Duration::new(t.seconds as u64, t.nanos as u32);
            self.latencies_us
                .lock()
                .unwrap()
                .push(now.saturating_sub(sent).as_micros() as u64);
            sqlx::query("INSERT INTO effects (event_id) VALUES ($1)")
                .bind(&event.id)
                .execute(&mut **tx)
                .await?;
            Ok(())
        })
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(format!("MESH_BENCH_{name}"))
        .or_else(|_| std::env::var(format!("MESH_TEST_{name}")))
        .ok()
        .filter(|v| !v.is_empty())
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

struct Report {
    offered: f64,
    produced: f64,
    handled: f64,
    p50: f64,
    p99: f64,
    max: f64,
}

async fn run(
    target: &DatabaseTarget,
    bus: Arc<dyn EventBus>,
    rate: Option<u64>,
    seconds: u64,
    per_tx: u64,
) -> Report {
    let db = Database::connect("bench", target).await.expect("connect");
    db.migrate(&Migrations::NONE).await.expect("migrate");
    sqlx::query("CREATE TABLE effects (event_id TEXT NOT NULL)")
        .execute(db.pool())
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let relay_options = RelayOptions {
        batch: 512,
        ..RelayOptions::default()
    };
    tokio::spawn(Relay::new(db.clone(), bus.clone(), relay_options).run(stop.clone()));
    let stats = Stats::default();
    let consumer = Consumer::new(db.clone(), bus.clone(), "bench")
        .on("product.deleted", stats.clone())
        .options(ConsumerOptions {
            batch: 256,
            concurrency: 8,
            ..ConsumerOptions::default()
        });
    drop(consumer.subscribe("warm-up").await.unwrap());
    tokio::spawn(consumer.run(stop.clone()));

    let producers = 16u64;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..producers {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            // Producers are staggered so that the offered load is even (not 16 at once).
            let mut tick = rate.map(|r| {
                let mut i = tokio::time::interval_at(
                    tokio::time::Instant::from_std(start)
                        + Duration::from_secs_f64(p as f64 / r as f64),
                    Duration::from_secs_f64((producers * per_tx) as f64 / r as f64),
                );
                i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                i
            });
            while start.elapsed() < Duration::from_secs(seconds) {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                let mut tx = db.begin().await.unwrap();
                for _ in 0..per_tx {
                    let subject = format!("p-{p}-{}", n % 64);
                    tx.emit(Event::new(
                        "product.deleted",
                        subject.clone(),
                        "ProductDeleted",
                        &ProductDeleted {
                            product_id: subject,
                            sku: "SKU-1".into(),
                        },
                    ))
                    .await
                    .unwrap();
                    n += 1;
                }
                tx.commit().await.unwrap();
            }
            n
        }));
    }
    let mut produced = 0;
    for t in tasks {
        produced += t.await.unwrap();
    }
    let produce_secs = start.elapsed().as_secs_f64();
    loop {
        let handled = stats.latencies_us.lock().unwrap().len() as u64;
        if handled >= produced || start.elapsed() > Duration::from_secs(seconds + 60) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let all_secs = start.elapsed().as_secs_f64();
    stop.cancel();
    let mut lat = stats.latencies_us.lock().unwrap().clone();
    let handled = lat.len() as f64;
    // Skip the first second (connections warming up).
    let skip = (lat.len() as f64 / seconds as f64) as usize;
    lat.drain(..skip.min(lat.len()));
    lat.sort_unstable();
    // Leave nothing behind: this run's schema (Postgres) or file (SQLite).
    match target {
        DatabaseTarget::Postgres { schema, .. } => {
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                .execute(db.pool())
                .await
                .expect("drop the bench schema");
        }
        DatabaseTarget::Sqlite { path } => {
            if let Some(dir) = path.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
    db.close().await;
    Report {
        offered: rate.map_or(f64::NAN, |r| r as f64),
        produced: produced as f64 / produce_secs,
        handled: handled / all_secs,
        p50: percentile(&lat, 0.50),
        p99: percentile(&lat, 0.99),
        max: percentile(&lat, 1.0),
    }
}

/// The floor: `pgbench` runs the producer's transaction (what `Database::begin`, `Tx::emit` and
/// `Tx::commit` send) on a scratch schema with the runtime's tables, 16 clients, for `seconds`;
/// returns its tx/s. Each client writes its own subjects, as the bench's producers do.
async fn pgbench_floor(url: &str, seconds: u64) -> Result<f64, String> {
    let schema = format!("bench_floor_{}", uuid::Uuid::now_v7().simple());
    let target = DatabaseTarget::Postgres {
        url: url.to_string(),
        schema: schema.clone(),
    };
    let db = Database::connect("bench", &target)
        .await
        .map_err(|e| e.to_string())?;
    db.migrate(&Migrations::NONE)
        .await
        .map_err(|e| e.to_string())?;
    let script = std::env::temp_dir().join(format!("{schema}.sql"));
    std::fs::write(
        &script,
        "\\set s random(1, 64)\n\
         BEGIN;\n\
         INSERT INTO mesh_outbox (event_id, event_type, subject, sequence, part, occurred_at_us, envelope) \
         SELECT md5(random()::text), 'product.deleted', 'p-' || :client_id || '-' || :s, COALESCE(MAX(sequence), 0) + 1, 3, 1, '\\x0a0b'::bytea \
         FROM mesh_outbox WHERE subject = 'p-' || :client_id || '-' || :s \
         RETURNING seq, sequence, (SELECT p.sent_at_us FROM mesh_outbox p WHERE p.subject = mesh_outbox.subject AND p.sequence = mesh_outbox.sequence - 1);\n\
         COMMIT;\n",
    )
    .map_err(|e| e.to_string())?;
    let out = tokio::process::Command::new("pgbench")
        .args(["-n", "-c", "16", "-j", "2", "-M", "prepared", "-T"])
        .arg(seconds.to_string())
        .arg("-f")
        .arg(&script)
        .arg(url)
        .env("PGOPTIONS", format!("-c search_path={schema}"))
        .output()
        .await
        .map_err(|e| format!("running pgbench: {e}"))?;
    let _ = std::fs::remove_file(&script);
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(db.pool())
        .await;
    db.close().await;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix("tps = ")?;
            rest.split_whitespace().next()?.parse::<f64>().ok()
        })
        .ok_or_else(|| {
            format!(
                "no tps in pgbench's output: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// Runs the pgbench floor for `seconds` (after a checkpoint): its tx/s, or `None`, said on
/// stderr, when it cannot run.
fn floor(rt: &tokio::runtime::Runtime, url: &str, seconds: u64) -> Option<f64> {
    rt.block_on(checkpoint(url));
    rt.block_on(pgbench_floor(url, seconds))
        .map_err(|e| eprintln!("SKIPPED: the pgbench floor: {e}"))
        .ok()
}

/// `CHECKPOINT`, so that a run does not pay for the writes of the one before.
async fn checkpoint(url: &str) {
    if let Ok(mut conn) = <sqlx::PgConnection as sqlx::Connection>::connect(url).await {
        let _ = sqlx::query("CHECKPOINT").execute(&mut conn).await;
    }
}

/// The median of `values` (sorted in place).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Makes a fresh database target and bus for one run.
type Scenario = Box<dyn Fn() -> (DatabaseTarget, Arc<dyn EventBus>)>;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let rate: u64 = env("RATE").and_then(|r| r.parse().ok()).unwrap_or(1000);
    let seconds: u64 = env("SECONDS").and_then(|r| r.parse().ok()).unwrap_or(10);
    let rounds: u32 = env("ROUNDS")
        .and_then(|r| r.parse().ok())
        .unwrap_or(1)
        .max(1);
    let per_tx: u64 = env("EVENTS_PER_TX")
        .and_then(|r| r.parse().ok())
        .unwrap_or(1)
        .max(1);
    println!("{per_tx} event(s) per producer transaction, 16 producers\n");
    let id = uuid::Uuid::now_v7().simple().to_string();
    println!(
        "| path | offered/s | produced/s | handled/s | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|---|---|"
    );
    let mut scenarios: Vec<(String, Scenario)> = Vec::new();
    if env("SQLITE").as_deref() != Some("0") {
        let id = id.clone();
        scenarios.push((
            "SQLite outbox + in-process bus".into(),
            Box::new(move || {
                let path = std::env::temp_dir()
                    .join(format!("mesh-bench-{id}-{}", uuid::Uuid::now_v7().simple()))
                    .join("bench.db");
                (
                    DatabaseTarget::Sqlite { path },
                    Arc::new(MemoryBus::new(DeliveryOptions::default())) as Arc<dyn EventBus>,
                )
            }),
        ));
    }
    let bench_id = id.clone();
    let redis_url = env("REDIS_URL");
    match (env("DATABASE_URL"), redis_url.clone()) {
        (Some(pg), Some(redis)) => scenarios.push((
            "Postgres outbox + Redis Streams".into(),
            Box::new(move || {
                let n = uuid::Uuid::now_v7().simple().to_string();
                (
                    DatabaseTarget::Postgres {
                        url: pg.clone(),
                        schema: format!("bench_{n}"),
                    },
                    Arc::new(
                        RedisBus::connect(
                            &redis,
                            format!("bench:{id}:{n}:"),
                            DeliveryOptions::default(),
                        )
                        .unwrap(),
                    ) as Arc<dyn EventBus>,
                )
            }),
        )),
        _ => eprintln!(
            "SKIPPED: Postgres + Redis: set MESH_BENCH_DATABASE_URL and MESH_BENCH_REDIS_URL (or MESH_TEST_*)"
        ),
    }
    let pg = env("DATABASE_URL");
    let mut floors = Vec::new();
    let mut ratios = Vec::new();
    let mut paced_p99 = Vec::new();
    for round in 1..=rounds {
        for (name, make) in &scenarios {
            let postgres = name.starts_with("Postgres");
            if !postgres && round > 1 {
                continue;
            }
            for offered in [Some(rate), None] {
                let _runtime = rt.enter();
                // Unpaced on Postgres: the producer's floor right before and right after, so
                // the ratio compares runs minutes apart at most, on the same machine state.
                let floor_before = match (&pg, postgres && offered.is_none()) {
                    (Some(url), true) => floor(&rt, url, seconds),
                    _ => None,
                };
                if let (Some(url), true) = (&pg, postgres) {
                    rt.block_on(checkpoint(url));
                }
                let (target, bus) = make();
                let r = rt.block_on(run(&target, bus, offered, seconds, per_tx));
                let offered_text = if r.offered.is_nan() {
                    "max".to_string()
                } else {
                    format!("{:.0}", r.offered)
                };
                println!(
                    "| {name} | {offered_text} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} |",
                    r.produced, r.handled, r.p50, r.p99, r.max
                );
                if postgres && offered.is_some() {
                    paced_p99.push(r.p99);
                }
                let floor_after = match (&pg, postgres && offered.is_none()) {
                    (Some(url), true) => floor(&rt, url, seconds),
                    _ => None,
                };
                if let (Some(a), Some(b)) = (floor_before, floor_after) {
                    // The path's ceiling: what was produced and handled, unpaced.
                    let ceiling = r.produced.min(r.handled);
                    let f = (a + b) / 2.0;
                    floors.push(f);
                    ratios.push(ceiling / per_tx as f64 / f);
                    println!(
                        "|   floor: pgbench before {a:.0} tx/s, after {b:.0} tx/s; ceiling {ceiling:.0} events/s = {:.2}x their mean |",
                        ceiling / per_tx as f64 / f
                    );
                }
            }
        }
    }
    if !floors.is_empty() {
        println!(
            "\nfloor: pgbench -c 16 -j 2 -M prepared, the producer's transaction (BEGIN; emit's outbox INSERT; COMMIT), right before and after each unpaced Postgres run: median {:.0} tx/s",
            median(&mut floors)
        );
        println!(
            "path ceiling (Postgres + Redis, unpaced) / floor, median of {} round(s): {:.2}x ({per_tx} events per transaction)",
            ratios.len(),
            median(&mut ratios)
        );
    }
    if !paced_p99.is_empty() {
        println!(
            "publish-to-handle p99 at {rate}/s (Postgres + Redis), median of {} round(s): {:.2} ms",
            paced_p99.len(),
            median(&mut paced_p99)
        );
    }
    // This run's streams and groups.
    if let Some(url) = redis_url {
        let mut conn = redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection())
            .expect("redis");
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("bench:{bench_id}:*"))
            .query(&mut conn)
            .expect("redis KEYS");
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL")
                .arg(&keys)
                .query(&mut conn)
                .expect("redis DEL");
        }
    }
}
