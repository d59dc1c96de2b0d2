//! Discovery by watching EndpointSlices, against a fake Kubernetes API server that lists one
//! slice and then streams watch events: calls go only to ready endpoints, follow readiness
//! changes as they are streamed, and stop when the slice is deleted.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::response::IntoResponse;
use axum::routing::get;
use common::instances::start_instance;
use futures::StreamExt;
use mesh_contracts::product::v1::GetProductRequest;
use mesh_contracts::product::v1::product_service_client::ProductServiceClient;
use mesh_runtime::balance::{BalanceOptions, Balanced};
use mesh_runtime::client::{MeshChannel, PeerChannel, Propagate};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

const SLICES: &str = "/apis/discovery.k8s.io/v1/namespaces/mesh/endpointslices";

/// The fake API server's state: the list it returns, and the watch stream the test feeds.
#[derive(Clone)]
struct FakeApi {
    list: Arc<Mutex<Vec<Value>>>,
    watch: Arc<Mutex<Option<mpsc::UnboundedReceiver<Value>>>>,
    selectors: Arc<Mutex<Vec<String>>>,
}

async fn endpointslices(
    State(api): State<FakeApi>,
    Query(query): Query<Vec<(String, String)>>,
) -> axum::response::Response {
    let get = |k: &str| query.iter().find(|(q, _)| q == k).map(|(_, v)| v.clone());
    if let Some(selector) = get("labelSelector") {
        api.selectors.lock().unwrap().push(selector);
    }
    if get("watch").as_deref() == Some("true") || get("watch").as_deref() == Some("1") {
        let events = api.watch.lock().unwrap().take();
        let body = match events {
            Some(rx) => Body::from_stream(
                UnboundedReceiverStream::new(rx)
                    .map(|event| Ok::<_, std::io::Error>(format!("{event}\n"))),
            ),
            // A re-watch after the stream ended: hold it open with nothing to say.
            None => Body::from_stream(futures::stream::pending::<Result<String, std::io::Error>>()),
        };
        return axum::response::Response::builder()
            .header("content-type", "application/json")
            .body(body)
            .unwrap();
    }
    let items = api.list.lock().unwrap().clone();
    axum::Json(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSliceList",
        "metadata": {"resourceVersion": "1"},
        "items": items,
    }))
    .into_response()
}

fn slice(name: &str, port: u16, endpoints: &[(&str, bool)], version: u32) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "mesh",
            "resourceVersion": version.to_string(),
            "labels": {"kubernetes.io/service-name": "product"},
        },
        "addressType": "IPv4",
        "endpoints": endpoints.iter().map(|(ip, ready)| json!({
            "addresses": [ip],
            "conditions": {"ready": ready},
        })).collect::<Vec<_>>(),
        "ports": [{"name": "grpc", "port": port, "protocol": "TCP"}],
    })
}

/// Which instances answer over `rounds` calls (failures are counted as `failed`).
async fn answered(channel: &MeshChannel, rounds: usize) -> BTreeSet<String> {
    let mut client = ProductServiceClient::new(channel.clone());
    let mut who = BTreeSet::new();
    for _ in 0..rounds {
        match client
            .get_product(GetProductRequest { id: "p".into() })
            .await
        {
            Ok(r) => who.insert(r.into_inner().product.unwrap().name),
            Err(status) => who.insert(format!("failed: {:?}", status.code())),
        };
    }
    who
}

async fn eventually(channel: &MeshChannel, want: &[&str]) {
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    let reached = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if answered(channel, 12).await == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        reached.is_ok(),
        "calls never settled on {want:?}; last: {:?}",
        answered(channel, 12).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_ready_endpoints_from_the_watch_stream() {
    let first = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let port = first.local_addr().unwrap().port();
    let _a = start_instance(first).await;
    let _b = start_instance(TcpListener::bind(("127.0.0.3", port)).await.unwrap()).await;
    let _c = start_instance(TcpListener::bind(("127.0.0.4", port)).await.unwrap()).await;

    let (events, rx) = mpsc::unbounded_channel();
    let api = FakeApi {
        list: Arc::new(Mutex::new(vec![slice(
            "product-abc",
            port,
            &[
                ("127.0.0.2", true),
                ("127.0.0.3", true),
                ("127.0.0.4", false),
            ],
            1,
        )])),
        watch: Arc::new(Mutex::new(Some(rx))),
        selectors: Arc::default(),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_addr: SocketAddr = listener.local_addr().unwrap();
    let app = Router::new()
        .route(SLICES, get(endpointslices))
        .with_state(api.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let client = kube::Client::try_from(kube::Config::new(
        format!("http://{api_addr}").parse().unwrap(),
    ))
    .unwrap();
    let balanced = Balanced::endpoint_slices(
        format!("http://product.mesh.svc.cluster.local:{port}")
            .parse()
            .unwrap(),
        client,
        "product",
        "mesh",
        port,
        BalanceOptions::default(),
    );
    let channel = Propagate::new(
        PeerChannel::Balanced(balanced.clone()),
        Duration::from_secs(5),
    );

    // Only the ready endpoints of the listed slice get calls.
    eventually(&channel, &["127.0.0.2", "127.0.0.3"]).await;
    assert_eq!(
        api.selectors.lock().unwrap().first().map(String::as_str),
        Some("kubernetes.io/service-name=product")
    );

    // A pod turns ready and another goes away: streamed, not re-listed.
    events
        .send(json!({"type": "MODIFIED", "object": slice("product-abc", port, &[("127.0.0.3", true), ("127.0.0.4", true)], 2)}))
        .unwrap();
    eventually(&channel, &["127.0.0.3", "127.0.0.4"]).await;

    // The slice is deleted: no address is left, and calls say so.
    events
        .send(json!({"type": "DELETED", "object": slice("product-abc", port, &[], 3)}))
        .unwrap();
    eventually(&channel, &["failed: Unavailable"]).await;
    assert!(balanced.addresses().is_empty());
}
