//! With the production subscriber (JSON lines, filter `info`, no OTLP export) no per-call span is
//! created, yet every line logged during a call carries the call's trace ids, taken from its
//! `CallContext`: lines of an RPC handler, the server layer's own line when the call fails, and
//! lines of a consumer's event handler.
//!
//! Installs a global log subscriber, so it lives in its own test binary.

mod common;

use common::logs::Captured;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use mesh_contracts::events::v1::{Envelope, ProductDeleted};
use mesh_contracts::product::v1::product_service_client::ProductServiceClient;
use mesh_contracts::product::v1::product_service_server::{ProductService, ProductServiceServer};
use mesh_contracts::product::v1::{GetProductRequest, GetProductResponse, Product};
use mesh_runtime::bus::DeliveryOptions;
use mesh_runtime::bus::memory::MemoryBus;
use mesh_runtime::config::{DatabaseTarget, LogConfig, LogFormat};
use mesh_runtime::consumer::{Consumer, EventHandler, HandlerError};
use mesh_runtime::outbox::{Event, Tx};
use mesh_runtime::relay::{Relay, RelayOptions};
use mesh_runtime::{CallContext, Database, Migrations, ServiceRoutes, TraceContext};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// Logs twice per call (once after an await), and fails with INTERNAL for id `boom`.
#[derive(Clone)]
struct Logging;

mesh_testkit::get_product_double! {
    impl ProductService for Logging {
        async fn get_product(
            &self,
            request: Request<GetProductRequest>,
        ) -> Result<Response<GetProductResponse>, Status> {
            let id = request.into_inner().id;
            tracing::info!(product = %id, "handler started");
            tokio::task::yield_now().await;
            tracing::warn!(product = %id, "handler after an await");
            if id == "boom" {
                return Err(Status::internal("it broke"));
            }
            Ok(Response::new(GetProductResponse {
                product: Some(Product {
                    id,
                    ..Default::default()
                }),
            }))
        }
    }
}

/// Logs each event it handles.
struct LoggingHandler {
    done: mpsc::UnboundedSender<String>,
}

impl EventHandler for LoggingHandler {
    fn handle<'a>(
        &'a self,
        event: &'a Envelope,
        _tx: &'a mut Tx,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            tracing::info!(event_id = %event.id, "event handler ran");
            let _ = self.done.send(event.id.clone());
            Ok(())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_of_a_call_or_event_carries_its_trace_ids_without_spans() {
    let captured = Captured::default();
    let writer = captured.clone();
    let production = LogConfig {
        filter: "info".into(),
        format: LogFormat::Json,
    };
    tracing::subscriber::set_global_default(mesh_runtime::telemetry::subscriber(
        &production,
        None,
        move || writer.clone(),
        false,
    ))
    .unwrap();

    // A server handler, called twice with a traceparent: one success, one INTERNAL.
    let (_stop, stopped) = oneshot::channel::<()>();
    let server = common::start(
        "product",
        ServiceRoutes::new().add_service(ProductServiceServer::new(Logging)),
        Duration::from_secs(5),
        async {
            let _ = stopped.await;
        },
    )
    .await;
    let mut client = ProductServiceClient::new(server.channel().await);
    let traces = [
        ("p-1", "4bf92f3577b34da6a3ce929d0e0e4736"),
        ("boom", "0af7651916cd43dd8448eb211c80319c"),
    ];
    for (id, trace) in traces {
        let mut request = Request::new(GetProductRequest { id: id.into() });
        request.metadata_mut().insert(
            "traceparent",
            format!("00-{trace}-00f067aa0ba902b7-01").parse().unwrap(),
        );
        let _ = client.get_product(request).await;
    }

    // A consumer's handler, for an event emitted during a call of known trace.
    let db = Database::connect(
        "svc",
        &DatabaseTarget::Sqlite {
            path: std::env::temp_dir()
                .join(format!("mesh-test-{}", uuid::Uuid::now_v7().simple()))
                .join("svc.db"),
        },
    )
    .await
    .unwrap();
    db.migrate(&Migrations::NONE).await.unwrap();
    let bus = Arc::new(MemoryBus::new(DeliveryOptions::default()));
    let stop = CancellationToken::new();
    tokio::spawn(Relay::new(db.clone(), bus.clone(), RelayOptions::default()).run(stop.clone()));
    let (done, mut handled) = mpsc::unbounded_channel();
    tokio::spawn(
        Consumer::new(db.clone(), bus, "logs")
            .on("product.deleted", LoggingHandler { done })
            .run(stop.clone()),
    );
    let producer = TraceContext::new_root();
    CallContext {
        trace: producer,
        deadline: None,
    }
    .scope(async {
        let mut tx = db.begin().await.unwrap();
        tx.emit(Event::new(
            "product.deleted",
            "p-9",
            "ProductDeleted",
            &ProductDeleted {
                product_id: "p-9".into(),
                sku: "SKU".into(),
            },
        ))
        .await
        .unwrap();
        tx.commit().await.unwrap();
    })
    .await;
    tokio::time::timeout(Duration::from_secs(10), handled.recv())
        .await
        .expect("the event is handled within 10 s")
        .unwrap();
    stop.cancel();

    let lines = captured.lines();
    let of = |pred: &dyn Fn(&serde_json::Value) -> bool| -> Vec<serde_json::Value> {
        lines.iter().filter(|l| pred(l)).cloned().collect()
    };
    for (id, trace) in traces {
        let call = of(&|l| l["product"] == id);
        assert_eq!(call.len(), 2, "two handler lines for {id}: {lines:#?}");
        let span_id = call[0]["span_id"].as_str().expect("a span id").to_string();
        assert_eq!(span_id.len(), 16);
        assert_ne!(
            span_id, "00f067aa0ba902b7",
            "the call's own span id, not the caller's"
        );
        for line in &call {
            assert_eq!(line["trace_id"], trace, "{line}");
            assert_eq!(line["span_id"], span_id, "one span id per call: {line}");
            assert!(line.get("span").is_none(), "no span was created: {line}");
        }
    }
    let failed = of(&|l| l["message"] == "rpc failed");
    assert_eq!(failed.len(), 1, "{lines:#?}");
    assert_eq!(failed[0]["trace_id"], traces[1].1, "{}", failed[0]);
    assert_eq!(failed[0]["code"], "INTERNAL");

    let event = of(&|l| l["message"] == "event handler ran");
    assert_eq!(event.len(), 1, "{lines:#?}");
    assert_eq!(
        event[0]["trace_id"],
        producer.trace_id_hex(),
        "{}",
        event[0]
    );
    assert_ne!(
        event[0]["span_id"],
        producer.span_id_hex(),
        "the event's own span id"
    );
    assert!(
        event[0].get("span").is_none(),
        "no event span: {}",
        event[0]
    );
}
