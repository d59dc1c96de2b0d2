//! `audit.v1.AuditService/ListEvents` behind its guard, with real tokens from a running auth
//! service over gRPC: auditors, admins and services read any aggregate, customers only their
//! own, staff nothing, and a call without a token is `UNAUTHENTICATED`. SQLite always, Postgres
//! when `MESH_TEST_DATABASE_URL` is set.

use std::collections::BTreeMap;

use mesh_contracts::audit::v1::ListEventsRequest;
use mesh_contracts::audit::v1::audit_service_client::AuditServiceClient;
use mesh_contracts::events::v1::{OrderConfirmed, OrderCreated};
use mesh_runtime::ServiceRoutes;
use mesh_runtime::auth::Role;
use mesh_runtime::config::DatabaseTarget;
use mesh_runtime::outbox::Event;
use mesh_runtime::{Database, Migrations};
use mesh_testkit::{TestAuth, bearer, unique};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;

/// Two orders in the outbox of a service named `order`: each `order.created` names its customer,
/// `order.confirmed` does not.
async fn two_orders(db: &Database, mine: &str, theirs: &str) -> (String, String) {
    let (a, b) = (unique("order-a"), unique("order-b"));
    let mut tx = db.begin().await.expect("begin");
    for (order, customer) in [(&a, mine), (&b, theirs)] {
        tx.emit(Event::new(
            "order.created",
            order.as_str(),
            "OrderCreated",
            &OrderCreated {
                order_id: order.clone(),
                customer_id: customer.into(),
                ..Default::default()
            },
        ))
        .await
        .expect("emit");
        tx.emit(Event::new(
            "order.confirmed",
            order.as_str(),
            "OrderConfirmed",
            &OrderConfirmed {
                order_id: order.clone(),
                ..Default::default()
            },
        ))
        .await
        .expect("emit");
    }
    tx.commit().await.expect("commit");
    (a, b)
}

async fn list(
    client: &mut AuditServiceClient<Channel>,
    token: Option<&str>,
    subject: &str,
) -> Result<Vec<String>, Code> {
    let message = ListEventsRequest {
        subject: subject.into(),
        ..Default::default()
    };
    let request = match token {
        Some(token) => bearer(token, message),
        None => tonic::Request::new(message),
    };
    client
        .list_events(request)
        .await
        .map(|r| {
            r.into_inner()
                .events
                .into_iter()
                .map(|e| e.r#type)
                .collect()
        })
        .map_err(|s| s.code())
}

async fn guarded_audit(target: DatabaseTarget) {
    let auth = TestAuth::start(
        &mesh_testkit::sqlite(),
        mesh_testkit::service_client("report", "report-secret"),
    )
    .await;
    let db = mesh_testkit::database("order", &target, &Migrations::NONE).await;
    let bus = mesh_testkit::memory_bus();
    let shutdown = CancellationToken::new();
    let ctx = mesh_testkit::context(
        "order",
        BTreeMap::from([("auth", auth.uri())]),
        db.clone(),
        bus.clone(),
        shutdown.clone(),
    );
    let routes = ServiceRoutes::new()
        .add_service(mesh_runtime::audit::guarded(&ctx, db.clone(), None).expect("guard"));
    let addr = mesh_testkit::serve("order", routes, db.clone(), bus, shutdown.clone()).await;
    let mut client = AuditServiceClient::new(mesh_testkit::channel(addr).await);

    let customer = auth.sign_up(&format!("{}@example.com", unique("c"))).await;
    let customer_id = customer.account.expect("account").id;
    let customer_token = customer.tokens.expect("tokens").access_token;
    let (mine, theirs) = two_orders(&db, &customer_id, "someone-else").await;
    let both = vec!["order.created".to_string(), "order.confirmed".to_string()];

    // No token: refused before anything is read.
    assert_eq!(
        list(&mut client, None, &mine).await,
        Err(Code::Unauthenticated)
    );
    assert_eq!(
        list(&mut client, Some("not-a-jwt"), &mine).await,
        Err(Code::Unauthenticated)
    );

    // Auditors, admins and other services read every aggregate.
    let (_, auditor) = auth.token_with_roles(&[Role::Auditor]).await;
    let admin = auth.admin_token().await;
    let service = auth.service_token("report", "report-secret").await;
    for token in [&auditor, &admin, &service] {
        assert_eq!(
            list(&mut client, Some(token), &mine).await,
            Ok(both.clone())
        );
        assert_eq!(
            list(&mut client, Some(token), &theirs).await,
            Ok(both.clone())
        );
    }

    // A customer reads their own order (all its events, also those that do not name them) and
    // nothing of another customer's, nor of an aggregate that does not exist.
    assert_eq!(
        list(&mut client, Some(&customer_token), &mine).await,
        Ok(both.clone())
    );
    assert_eq!(
        list(&mut client, Some(&customer_token), &theirs).await,
        Err(Code::PermissionDenied)
    );
    assert_eq!(
        list(&mut client, Some(&customer_token), "no-such-order").await,
        Err(Code::PermissionDenied)
    );

    // Staff are not auditors.
    let (_, staff) = auth.token_with_roles(&[Role::Staff]).await;
    assert_eq!(
        list(&mut client, Some(&staff), &mine).await,
        Err(Code::PermissionDenied)
    );
    shutdown.cancel();
    auth.shutdown.cancel();
}

#[tokio::test]
async fn the_audit_trail_answers_only_callers_allowed_to_read_it() {
    guarded_audit(mesh_testkit::sqlite()).await;
    if let Some(target) = mesh_testkit::postgres("audit guard") {
        guarded_audit(target).await;
    }
}
