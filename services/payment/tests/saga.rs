//! Payment's part of the order saga, driven by publishing the producers' events onto the bus:
//! both arrival orders of order.created and inventory.reserved charge once; a cancel before the
//! reservation never charges; a cancel after the charge refunds once; redelivery of an event and
//! of the same fact under a new event id has no second effect; a crash-like restart (the service
//! dropped and rebuilt on the same database) at either side of the provider call converges on one
//! capture. SQLite + the in-process bus, and Postgres + Redis when both are configured.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{Mesh, start, start_instance, start_with};
use futures::future::BoxFuture;
use mesh_contracts::common::v1::Money;
use mesh_contracts::events::v1::{InventoryReserved, OrderCancelled, OrderCreated, PaymentFailed};
use mesh_contracts::payment::v1::{DeclineReason, TokenizeCardRequest};
use mesh_payment::provider::{
    CardData, ChargeCall, Outcome, PaymentProvider, ProviderCard, ProviderError, RefundCall,
};
use mesh_payment::simulated::SimulatedProcessor;
use mesh_runtime::config::DatabaseTarget;
use mesh_testkit::eventually;
use mesh_testkit::{self as testing, bearer};
use prost::Message as _;

async fn token(m: &Mesh, number: &str) -> String {
    m.client()
        .await
        .tokenize_card(bearer(
            &m.customer,
            TokenizeCardRequest {
                card: Some(mesh_testkit::walkthrough::test_card(number, "")),
            },
        ))
        .await
        .expect("tokenize")
        .into_inner()
        .card_token
}

fn created(order: &str, token: &str, amount: i64) -> OrderCreated {
    OrderCreated {
        order_id: order.into(),
        customer_id: "cust-9".into(),
        total: Some(Money {
            currency_code: "EUR".into(),
            amount_minor: amount,
        }),
        card_token: token.into(),
        location_id: "default".into(),
        ..Default::default()
    }
}

fn reserved(order: &str) -> InventoryReserved {
    InventoryReserved {
        reservation_id: format!("res-{order}"),
        reference_id: order.into(),
        ..Default::default()
    }
}

fn cancelled(order: &str) -> OrderCancelled {
    OrderCancelled {
        order_id: order.into(),
        customer_id: "cust-9".into(),
        reason: 1,
        ..Default::default()
    }
}

async fn publish_created(m: &Mesh, order: &str, token: &str, amount: i64) -> String {
    m.publish(
        "order.created",
        order,
        "OrderCreated",
        &created(order, token, amount),
    )
    .await
}

async fn publish_reserved(m: &Mesh, order: &str) -> String {
    m.publish(
        "inventory.reserved",
        &format!("res-{order}"),
        "InventoryReserved",
        &reserved(order),
    )
    .await
}

async fn publish_cancelled(m: &Mesh, order: &str) -> String {
    m.publish(
        "order.cancelled",
        order,
        "OrderCancelled",
        &cancelled(order),
    )
    .await
}

async fn wait_status(m: &Mesh, order: &str, status: &str) {
    eventually(&format!("{order} {status}"), || async {
        m.status(order).await.as_deref() == Some(status)
    })
    .await;
}

/// Waits until payment's consumer has handled `n` events in all.
async fn wait_handled(m: &Mesh, n: i64) {
    eventually(&format!("{n} events handled"), || async {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM mesh_handled_events")
            .fetch_one(m.db.pool())
            .await
            .expect("handled");
        count >= n
    })
    .await;
}

async fn flow(target: DatabaseTarget, redis: Option<&str>) {
    let m = start(target, redis).await;
    let ok = token(&m, "4242424242424242").await;
    let declined = token(&m, "4000000000000002").await;
    let unique = |p: &str| testing::unique(p);
    let mut handled = 0;

    // created, then reserved: one charge, one payment.succeeded.
    let a = unique("a");
    publish_created(&m, &a, &ok, 1200).await;
    publish_reserved(&m, &a).await;
    handled += 2;
    wait_status(&m, &a, "SUCCEEDED").await;

    // reserved, then created: the same.
    let b = unique("b");
    publish_reserved(&m, &b).await;
    handled += 1;
    wait_handled(&m, handled).await;
    assert_eq!(
        m.status(&b).await,
        None,
        "no charge before the amount is known"
    );
    publish_created(&m, &b, &ok, 800).await;
    handled += 1;
    wait_status(&m, &b, "SUCCEEDED").await;

    // cancelled before reserved: never charged. (Streams of different domains are not ordered
    // relative to each other, so "before" means handled before: wait for it.)
    let c = unique("c");
    publish_created(&m, &c, &ok, 500).await;
    publish_cancelled(&m, &c).await;
    handled += 2;
    wait_handled(&m, handled).await;
    publish_reserved(&m, &c).await;
    handled += 1;

    // A declining card: payment.failed with the reason.
    let d = unique("d");
    publish_created(&m, &d, &declined, 300).await;
    publish_reserved(&m, &d).await;
    handled += 2;
    wait_status(&m, &d, "FAILED").await;
    let failed = m.emitted("payment.failed", &d).await;
    assert_eq!(failed.len(), 1);
    let payload = PaymentFailed::decode(
        failed[0]
            .payload
            .as_ref()
            .expect("payload")
            .value
            .as_slice(),
    )
    .expect("PaymentFailed");
    assert_eq!(payload.reason, DeclineReason::CardDeclined as i32);
    assert_eq!(payload.order_id, d);

    // An unknown token: payment.failed (INVALID_TOKEN), no provider call.
    let u = unique("u");
    publish_created(&m, &u, "tok_nope", 300).await;
    publish_reserved(&m, &u).await;
    handled += 2;
    wait_status(&m, &u, "FAILED").await;

    // Nothing to pay: succeeded without a provider call (the general path on Postgres too).
    let z = unique("z");
    publish_created(&m, &z, &ok, 0).await;
    publish_reserved(&m, &z).await;
    handled += 2;
    wait_status(&m, &z, "SUCCEEDED").await;

    // Cancelled after the charge: refunded once, even when the cancel comes twice.
    let e = unique("e");
    publish_created(&m, &e, &ok, 2500).await;
    publish_reserved(&m, &e).await;
    handled += 2;
    wait_status(&m, &e, "SUCCEEDED").await;
    let cancel_id = publish_cancelled(&m, &e).await;
    handled += 1;
    wait_status(&m, &e, "REFUNDED").await;
    m.publish_with_id(
        &cancel_id,
        "order.cancelled",
        &e,
        "OrderCancelled",
        &cancelled(&e),
    )
    .await;
    publish_cancelled(&m, &e).await;
    handled += 1; // the redelivered id is not recorded again

    // Redelivery: the same events again (same ids) and the same facts under new ids.
    let f = unique("f");
    let created_id = publish_created(&m, &f, &ok, 999).await;
    let reserved_id = publish_reserved(&m, &f).await;
    handled += 2;
    wait_status(&m, &f, "SUCCEEDED").await;
    m.publish_with_id(
        &created_id,
        "order.created",
        &f,
        "OrderCreated",
        &created(&f, &ok, 999),
    )
    .await;
    m.publish_with_id(
        &reserved_id,
        "inventory.reserved",
        &format!("res-{f}"),
        "InventoryReserved",
        &reserved(&f),
    )
    .await;
    publish_created(&m, &f, &ok, 999).await;
    publish_reserved(&m, &f).await;
    handled += 2;
    wait_handled(&m, handled).await;
    // Let the worker run a few passes over anything it might (wrongly) have been given.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    for (order, amount) in [(&a, 1200), (&b, 800), (&f, 999)] {
        assert_eq!(m.processor_charges(order).await, 1, "{order}: one capture");
        assert_eq!(
            m.ledger(order).await,
            vec![("CHARGE".into(), amount, "SUCCEEDED".into())]
        );
        assert_eq!(
            m.emitted("payment.succeeded", order).await.len(),
            1,
            "{order}"
        );
        assert!(m.emitted("payment.failed", order).await.is_empty());
    }
    assert_eq!(
        m.status(&c).await,
        None,
        "a cancelled order is never charged"
    );
    assert_eq!(m.processor_charges(&c).await, 0);
    assert_eq!(m.processor_charges(&d).await, 0);
    assert_eq!(m.processor_charges(&z).await, 0, "nothing to capture");
    assert_eq!(m.emitted("payment.succeeded", &z).await.len(), 1);
    assert_eq!(m.processor_charges(&e).await, 1);
    assert_eq!(
        m.ledger(&e).await,
        vec![
            ("CHARGE".into(), 2500, "SUCCEEDED".into()),
            ("REFUND".into(), -2500, "SUCCEEDED".into())
        ]
    );
    assert_eq!(
        m.emitted("payment.refunded", &e).await.len(),
        1,
        "refunded once"
    );
    assert_eq!(m.emitted("payment.succeeded", &e).await.len(), 1);
    m.stop();
}

#[tokio::test]
async fn saga_events_charge_once_and_refund_cancelled_orders_on_sqlite() {
    flow(testing::sqlite(), None).await;
}

#[tokio::test]
async fn saga_events_charge_once_and_refund_cancelled_orders_on_postgres_and_redis() {
    let (Some(target), Some(redis)) = (
        testing::postgres("payment saga"),
        testing::redis("payment saga"),
    ) else {
        return;
    };
    flow(target, Some(&redis)).await;
}

/// A provider that "crashes" around the real one: it never answers charges, either before
/// calling the simulated processor or after it captured. Counts its calls.
#[derive(Debug)]
struct Crashing {
    inner: SimulatedProcessor,
    after_capture: bool,
    calls: AtomicUsize,
}

impl PaymentProvider for Crashing {
    fn tokenize<'a>(
        &'a self,
        card: &'a CardData,
    ) -> BoxFuture<'a, Result<ProviderCard, ProviderError>> {
        self.inner.tokenize(card)
    }

    fn charge<'a>(&'a self, call: &'a ChargeCall) -> BoxFuture<'a, Result<Outcome, ProviderError>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.after_capture {
                let _ = self.inner.charge(call).await;
            }
            futures::future::pending().await
        })
    }

    fn refund<'a>(&'a self, call: &'a RefundCall) -> BoxFuture<'a, Result<Outcome, ProviderError>> {
        self.inner.refund(call)
    }
}

async fn crash(target: DatabaseTarget, after_capture: bool, cancel_in_flight: bool) {
    // The first instance's provider never answers charges.
    let mut crashing = None;
    let mut m = start_with(target, None, |db| {
        let p = Arc::new(Crashing {
            inner: SimulatedProcessor::new(db.clone(), std::time::Duration::ZERO),
            after_capture,
            calls: AtomicUsize::new(0),
        });
        crashing = Some(p.clone());
        Some(p as Arc<dyn PaymentProvider>)
    })
    .await;
    let crashing = crashing.expect("provider made");
    let ok = token(&m, "4242424242424242").await;
    let order = testing::unique("crash");
    publish_created(&m, &order, &ok, 4200).await;
    publish_reserved(&m, &order).await;
    eventually("the provider called", || async {
        crashing.calls.load(Ordering::SeqCst) > 0
    })
    .await;
    if after_capture {
        eventually("the capture recorded", || async {
            m.processor_charges(&order).await == 1
        })
        .await;
    }
    assert_eq!(m.status(&order).await.as_deref(), Some("PENDING"));
    if cancel_in_flight {
        // The order is cancelled (e.g. saga timeout) while the charge is in flight: it cannot be
        // voided any more, so the late success must be refunded.
        publish_cancelled(&m, &order).await;
        wait_handled(&m, 3).await;
        assert_eq!(m.status(&order).await.as_deref(), Some("PENDING"));
    }
    // Crash: drop the instance mid-call; rebuild it on the same database.
    m.instance.shutdown.cancel();
    m.instance = start_instance(&m.auth, &m.db, &m.bus, None).await;
    let end = if cancel_in_flight {
        "REFUNDED"
    } else {
        "SUCCEEDED"
    };
    wait_status(&m, &order, end).await;
    assert_eq!(
        m.processor_charges(&order).await,
        1,
        "one capture across the crash"
    );
    let mut ledger = vec![("CHARGE".into(), 4200, "SUCCEEDED".into())];
    if cancel_in_flight {
        ledger.push(("REFUND".into(), -4200, "SUCCEEDED".into()));
    }
    assert_eq!(m.ledger(&order).await, ledger);
    assert_eq!(m.emitted("payment.succeeded", &order).await.len(), 1);
    assert_eq!(
        m.emitted("payment.refunded", &order).await.len(),
        usize::from(cancel_in_flight)
    );
    m.stop();
}

#[tokio::test]
async fn crash_before_the_provider_answers_converges_to_one_charge_on_sqlite() {
    crash(testing::sqlite(), false, false).await;
}

#[tokio::test]
async fn crash_after_the_capture_before_commit_converges_to_one_charge_on_sqlite() {
    crash(testing::sqlite(), true, false).await;
}

#[tokio::test]
async fn crash_after_the_capture_before_commit_converges_to_one_charge_on_postgres() {
    if let Some(target) = testing::postgres("payment crash") {
        crash(target, true, false).await;
    }
}

#[tokio::test]
async fn a_charge_in_flight_when_the_order_is_cancelled_is_refunded_after_the_crash_on_sqlite() {
    crash(testing::sqlite(), true, true).await;
}

#[tokio::test]
async fn a_charge_in_flight_when_the_order_is_cancelled_is_refunded_after_the_crash_on_postgres() {
    if let Some(target) = testing::postgres("payment cancel in flight") {
        crash(target, true, true).await;
    }
}

/// Throughput of payment's saga path alone (not a correctness test; run with
/// `cargo nextest run -p mesh-payment --run-ignored only saga_throughput`): publishes
/// `order.created` + `inventory.reserved` for N orders and measures until every one is charged.
async fn throughput(target: DatabaseTarget, redis: Option<&str>, label: &str) {
    let m = start(target, redis).await;
    let ok = token(&m, "4242424242424242").await;
    let n = 500;
    let prefix = testing::unique("tp");
    let started = std::time::Instant::now();
    for i in 0..n {
        let order = format!("{prefix}-{i}");
        publish_created(&m, &order, &ok, 100).await;
        publish_reserved(&m, &order).await;
    }
    let published = started.elapsed();
    let like = format!("{prefix}-%");
    let done = || async {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM payments WHERE status = 'SUCCEEDED' AND order_id LIKE $1",
        )
        .bind(&like)
        .fetch_one(m.db.pool())
        .await
        .expect("count");
        count == n
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !done().await {
        assert!(
            std::time::Instant::now() < deadline,
            "not all charged in time"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let total = started.elapsed();
    println!(
        "payment saga throughput ({label}): {n} orders charged in {total:?} ({:.0} orders/s; publishing took {published:?})",
        f64::from(n as u32) / total.as_secs_f64()
    );
    m.stop();
}

#[tokio::test]
#[ignore = "a measurement, not a correctness test"]
async fn saga_throughput_on_sqlite() {
    throughput(testing::sqlite(), None, "SQLite + in-process bus").await;
}

#[tokio::test]
#[ignore = "a measurement, not a correctness test"]
async fn saga_throughput_on_postgres_and_redis() {
    let (Some(target), Some(redis)) = (
        testing::postgres("payment throughput"),
        testing::redis("payment throughput"),
    ) else {
        return;
    };
    throughput(target, Some(&redis), "Postgres + Redis").await;
}
