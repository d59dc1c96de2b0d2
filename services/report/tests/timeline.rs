//! `GetAggregateTimeline` over real gRPC with real tokens, on SQLite + the in-process bus and on
//! Postgres + Redis: an order's events and its related aggregates' (found by correlation id,
//! then by subject) merged in time order whatever the arrival order, `max_events`, the audit
//! trail's access rules, and input checks naming the field.

mod common;

use common::Mesh;
use mesh_contracts::events::v1::*;
use mesh_contracts::report::v1::*;
use mesh_runtime::auth::Role;
use mesh_runtime::config::DatabaseTarget;
use mesh_testkit::{self as testing, bearer};
use tonic::Code;

const T0: i64 = 1_780_000_000_000_000;

/// Publishes `msg` as `event_type` on `subject` with `correlation` at `T0 + offset` seconds.
async fn publish(
    m: &Mesh,
    offset: i64,
    (event_type, subject, correlation): (&str, &str, &str),
    name: &str,
    msg: &impl prost::Message,
) {
    let mut envelope = testing::envelope(event_type, subject, name, msg);
    let time_us = T0 + offset * 1_000_000;
    envelope.time = Some(prost_types::Timestamp {
        seconds: time_us / 1_000_000,
        nanos: 0,
    });
    envelope.correlation_id = correlation.to_string();
    m.publish_envelope(&envelope).await;
}

fn request(id: &str, max_events: i32) -> GetAggregateTimelineRequest {
    GetAggregateTimelineRequest {
        aggregate_id: id.into(),
        max_events,
    }
}

async fn timeline(
    m: &Mesh,
    token: Option<&str>,
    req: GetAggregateTimelineRequest,
) -> Result<GetAggregateTimelineResponse, tonic::Status> {
    let request = match token {
        Some(t) => bearer(t, req),
        None => tonic::Request::new(req),
    };
    m.client()
        .await
        .get_aggregate_timeline(request)
        .await
        .map(tonic::Response::into_inner)
}

fn types(answer: &GetAggregateTimelineResponse) -> Vec<&str> {
    answer.events.iter().map(|e| e.r#type.as_str()).collect()
}

async fn order_timeline(target: DatabaseTarget, redis: Option<&str>) {
    let m = common::start(target, redis).await;
    let owner = m
        .auth
        .sign_up(&format!("{}@example.com", testing::unique("owner")))
        .await;
    let owner_id = owner.account.expect("account").id;
    let owner_token = owner.tokens.expect("tokens").access_token;
    let (order, reservation, payment, delivery) = (
        testing::unique("o"),
        testing::unique("r"),
        testing::unique("p"),
        testing::unique("d"),
    );
    let other_order = testing::unique("o");
    // Published out of time order, on different streams: the timeline orders by event time.
    publish(
        &m,
        30,
        ("payment.succeeded", &payment, &order),
        "PaymentSucceeded",
        &PaymentSucceeded {
            payment_id: payment.clone(),
            order_id: order.clone(),
            customer_id: owner_id.clone(),
            ..Default::default()
        },
    )
    .await;
    publish(
        &m,
        10,
        ("order.created", &order, &order),
        "OrderCreated",
        &OrderCreated {
            order_id: order.clone(),
            customer_id: owner_id.clone(),
            ..Default::default()
        },
    )
    .await;
    publish(
        &m,
        15,
        ("order.created", &other_order, &other_order),
        "OrderCreated",
        &OrderCreated {
            order_id: other_order.clone(),
            customer_id: "someone-else".into(),
            ..Default::default()
        },
    )
    .await;
    publish(
        &m,
        40,
        ("notification.sent", &delivery, &order),
        "NotificationSent",
        &NotificationSent::default(),
    )
    .await;
    publish(
        &m,
        20,
        ("inventory.reserved", &reservation, &order),
        "InventoryReserved",
        &InventoryReserved {
            reservation_id: reservation.clone(),
            reference_id: order.clone(),
            ..Default::default()
        },
    )
    .await;
    // The reservation's later event carries no correlation id: it is found through its subject.
    publish(
        &m,
        50,
        ("inventory.reservation_expired", &reservation, ""),
        "InventoryReservationExpired",
        &InventoryReservationExpired {
            reservation_id: reservation.clone(),
            reference_id: order.clone(),
            ..Default::default()
        },
    )
    .await;

    let expected = [
        "order.created",
        "inventory.reserved",
        "payment.succeeded",
        "notification.sent",
        "inventory.reservation_expired",
    ];
    testing::eventually("the order's five events reach report", || async {
        timeline(&m, Some(&m.admin), request(&order, 0))
            .await
            .is_ok_and(|a| a.events.len() == expected.len())
    })
    .await;
    let full = timeline(&m, Some(&m.admin), request(&order, 0))
        .await
        .expect("admin");
    assert_eq!(types(&full), expected);
    assert_eq!(
        full.subjects,
        vec![order.clone(), reservation.clone(), payment, delivery]
    );
    assert!(!full.truncated);
    assert!(full.freshness.is_some_and(|f| f.events_applied >= 6));

    // Cut short by max_events, oldest first.
    let cut = timeline(&m, Some(&m.admin), request(&order, 2))
        .await
        .expect("cut");
    assert_eq!(types(&cut), expected[..2]);
    assert!(cut.truncated);

    // A related aggregate's own timeline holds its own events only: they correlate to the
    // order, not the other way round.
    let reserved = timeline(&m, Some(&m.admin), request(&reservation, 0))
        .await
        .expect("reservation");
    assert_eq!(
        types(&reserved),
        ["inventory.reserved", "inventory.reservation_expired"]
    );

    // Access: like the audit trail.
    let (_, auditor) = m.auth.token_with_roles(&[Role::Auditor]).await;
    let (_, staff) = m.auth.token_with_roles(&[Role::Staff]).await;
    for token in [&auditor, &m.service, &owner_token] {
        let answer = timeline(&m, Some(token), request(&order, 0))
            .await
            .expect("allowed");
        assert_eq!(types(&answer), expected);
    }
    for (token, code) in [
        (Some(m.customer.as_str()), Code::PermissionDenied),
        (Some(staff.as_str()), Code::PermissionDenied),
        (None, Code::Unauthenticated),
    ] {
        let refused = timeline(&m, token, request(&order, 0))
            .await
            .expect_err("refused");
        assert_eq!(refused.code(), code, "{refused:?}");
    }
    // The owner cannot read another customer's order, nor an id that does not exist.
    for id in [other_order.as_str(), "no-such-order"] {
        let refused = timeline(&m, Some(&owner_token), request(id, 0))
            .await
            .expect_err("not theirs");
        assert_eq!(refused.code(), Code::PermissionDenied);
    }
    let nothing = timeline(&m, Some(&m.admin), request("no-such-order", 0))
        .await
        .expect("unknown id");
    assert!(nothing.events.is_empty());
    assert_eq!(nothing.subjects, vec!["no-such-order".to_string()]);

    // Input checks name the field.
    for (req, field) in [
        (request("", 0), "aggregate_id"),
        (request("has space", 0), "aggregate_id"),
        (request(&order, -1), "max_events"),
        (request(&order, 5001), "max_events"),
    ] {
        let refused = timeline(&m, Some(&m.admin), req)
            .await
            .expect_err("invalid");
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert!(refused.message().starts_with(field), "{refused:?}");
    }
    m.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orders_timeline_on_sqlite() {
    order_timeline(testing::sqlite(), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orders_timeline_on_postgres_and_redis() {
    let (Some(target), Some(redis)) = (
        testing::postgres("report timeline"),
        testing::redis("report timeline"),
    ) else {
        return;
    };
    order_timeline(target, Some(&redis)).await;
}
