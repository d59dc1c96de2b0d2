//! A handler's typed read of an event's payload (`mesh_runtime::payload`), through a running
//! consumer: a payload that does not decode is dead-lettered on its first delivery with the
//! event named, and the events after it are still handled.

use std::time::Duration;

use futures::future::BoxFuture;
use mesh_contracts::events::v1::{Envelope, ProductDeleted};
use mesh_runtime::Migrations;
use mesh_runtime::consumer::{Consumer, ConsumerOptions, EventHandler, HandlerError};
use mesh_runtime::outbox::Tx;
use mesh_runtime::payload::DecodePayload as _;
use tokio_util::sync::CancellationToken;

use mesh_testkit::{envelope, eventually, publish, unique};

/// Records the product id of each `product.deleted` it decodes.
struct Seen;

impl EventHandler for Seen {
    fn handle<'a>(
        &'a self,
        event: &'a Envelope,
        tx: &'a mut Tx,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let deleted: ProductDeleted = event.decode_payload()?;
            sqlx::query("INSERT INTO seen (product_id) VALUES ($1)")
                .bind(&deleted.product_id)
                .execute(&mut **tx)
                .await?;
            Ok(())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_that_does_not_decode_is_dead_lettered_at_once_naming_the_event() {
    let db = mesh_testkit::database("svc", &mesh_testkit::sqlite(), &Migrations::NONE).await;
    sqlx::query("CREATE TABLE seen (product_id TEXT NOT NULL)")
        .execute(db.pool())
        .await
        .unwrap();
    let bus = mesh_testkit::memory_bus();
    let group = unique("g");
    let consumer = Consumer::new(db.clone(), bus.clone(), group.clone())
        .on("product.deleted", Seen)
        .options(ConsumerOptions {
            max_deliveries: 5,
            retry_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            ..ConsumerOptions::default()
        });
    // Join before anything is published, so nothing is missed.
    drop(consumer.subscribe("warm-up").await.unwrap());
    let stop = CancellationToken::new();
    tokio::spawn(consumer.run(stop.clone()));

    let mut bad = envelope(
        "product.deleted",
        "p-bad",
        "ProductDeleted",
        &ProductDeleted::default(),
    );
    bad.payload.as_mut().unwrap().value = b"\xff\xff not protobuf".to_vec();
    let good = envelope(
        "product.deleted",
        "p-good",
        "ProductDeleted",
        &ProductDeleted {
            product_id: "p-good".into(),
            sku: "SKU-1".into(),
        },
    );
    publish(&*bus, &bad).await;
    publish(&*bus, &good).await;

    let seen = || async {
        sqlx::query_scalar::<_, String>("SELECT product_id FROM seen")
            .fetch_all(db.pool())
            .await
            .unwrap()
    };
    eventually("the good event handled", || async {
        seen().await == ["p-good"]
    })
    .await;
    eventually("the bad event dead-lettered", || async {
        !bus.dead_letters(&group).await.unwrap().is_empty()
    })
    .await;
    let dead = bus.dead_letters(&group).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].deliveries, 1, "a bad payload is not retried");
    let reason = &dead[0].reason;
    for word in ["product.deleted", bad.id.as_str(), "ProductDeleted"] {
        assert!(reason.contains(word), "`{word}` not in {reason:?}");
    }
    assert_eq!(seen().await, ["p-good"], "the bad event had no effect");
    stop.cancel();
}

#[test]
fn a_missing_payload_reads_as_the_messages_defaults_and_a_good_one_as_itself() {
    let mut event = envelope(
        "product.deleted",
        "p-1",
        "ProductDeleted",
        &ProductDeleted {
            product_id: "p-1".into(),
            sku: "SKU-1".into(),
        },
    );
    let read: ProductDeleted = event.decode_payload().unwrap();
    assert_eq!(read.product_id, "p-1");
    assert_eq!(read.sku, "SKU-1");
    event.payload = None;
    let read: ProductDeleted = event.decode_payload().unwrap();
    assert_eq!(read, ProductDeleted::default());
}
