//! PlaceOrder prices through campaign: a promo code's discount lands on the lines, the totals,
//! the stored order and `order.created`; the campaign's limit holds across orders and the saga's
//! events reserve and release its redemptions; 150 concurrent PlaceOrder calls against a usage
//! limit of 100 get exactly 100 discounts; a PlaceOrder that fails after pricing releases its
//! hold at once; a campaign that is down or slow never fails an
//! order: it goes at list price with `discounts_unavailable` and the fallback metric counts it
//! (SQLite, and Postgres + Redis).

mod common;

use std::time::Duration;

use common::{Backend, CampaignPeer, Mesh, Payment, request, start_campaign_timeout, start_full};
use mesh_contracts::campaign::v1::discount_rule::Effect;
use mesh_contracts::campaign::v1::*;
use mesh_contracts::common::v1::Money;
use mesh_contracts::order::v1::*;
use mesh_testkit::{self as testing, bearer};

fn eur(amount_minor: i64) -> Option<Money> {
    Some(Money {
        currency_code: "EUR".into(),
        amount_minor,
    })
}

async fn campaign(m: &Mesh, c: Campaign) -> Campaign {
    m.campaigns
        .clone()
        .create_campaign(bearer(
            &m.admin,
            CreateCampaignRequest { campaign: Some(c) },
        ))
        .await
        .expect("create campaign")
        .into_inner()
        .campaign
        .unwrap()
}

async fn redemptions(m: &Mesh, id: &str) -> i64 {
    m.campaigns
        .clone()
        .get_campaign(bearer(&m.admin, GetCampaignRequest { id: id.into() }))
        .await
        .expect("get campaign")
        .into_inner()
        .campaign
        .unwrap()
        .redemption_count
}

async fn discounts(backend: Backend) {
    let m = start_full(
        &backend,
        Duration::from_secs(60),
        Payment::Fake,
        CampaignPeer::Real,
    )
    .await;
    let tea = m.product(1000, "EUR", 10).await;
    let cake = m.product(250, "EUR", 10).await;
    let ten = campaign(
        &m,
        Campaign {
            name: "Ten off tea".into(),
            start_time: Some(prost_types::Timestamp {
                seconds: 1,
                nanos: 0,
            }),
            promo_codes: vec!["TENOFF".into()],
            max_redemptions: 1,
            stackable: true,
            rules: vec![DiscountRule {
                effect: Some(Effect::PercentOff(PercentOff { basis_points: 1000 })),
                scope: Some(Scope {
                    product_ids: vec![tea.id.clone()],
                    category_ids: vec![],
                }),
                ..Default::default()
            }],
            ..Default::default()
        },
    )
    .await;
    let ada = m.auth.customer_token().await;
    let bob = m.auth.customer_token().await;

    // A PlaceOrder that fails after pricing (payment refuses the card) gives its hold back at
    // once, not at the hold's expiry: the limit of 1 is free for the next order.
    let mut refused = request(&[(&tea.id, 1)]);
    refused.promo_code = "TENOFF".into();
    refused.payment_method = common::card("4242");
    let status = m
        .orders
        .clone()
        .place_order(bearer(&ada, refused))
        .await
        .expect_err("the card is refused");
    assert_eq!(
        status.code(),
        tonic::Code::InvalidArgument,
        "{}",
        status.message()
    );
    assert_eq!(
        redemptions(&m, &ten.id).await,
        0,
        "the failed order's hold is released"
    );

    // 2 teas and a cake: 10 % off the teas only.
    let mut req = request(&[(&tea.id, 2), (&cake.id, 1)]);
    req.promo_code = "tenoff".into();
    let order = m.place(&ada, req).await;
    assert!(!order.discounts_unavailable);
    assert_eq!(order.subtotal, eur(2250));
    assert_eq!(order.discount_total, eur(200));
    assert_eq!(order.total, eur(2050));
    assert_eq!(order.applied_campaign_ids, vec![ten.id.clone()]);
    assert_eq!(order.lines[0].discount, eur(200));
    assert_eq!(order.lines[0].total, eur(1800));
    assert_eq!(order.lines[1].discount, eur(0));
    // Stored as placed.
    let stored = m
        .orders
        .clone()
        .get_order(bearer(
            &ada,
            GetOrderRequest {
                id: order.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(
        (
            stored.discount_total.clone(),
            stored.total.clone(),
            stored.applied_campaign_ids.clone()
        ),
        (eur(200), eur(2050), vec![ten.id.clone()])
    );
    assert_eq!(stored.lines[0].discount, eur(200));
    assert_eq!(redemptions(&m, &ten.id).await, 1);

    // The limit (1) is used: Bob's order goes at list price, placed all the same.
    let mut req = request(&[(&tea.id, 1)]);
    req.promo_code = "TENOFF".into();
    let second = m.place(&bob, req).await;
    assert!(
        !second.discounts_unavailable,
        "campaign answered: no discount, not a fallback"
    );
    assert_eq!(
        (second.discount_total.clone(), second.total.clone()),
        (eur(0), eur(1000))
    );
    assert!(second.applied_campaign_ids.is_empty());

    // order.created reserves Ada's redemption; cancelling her order releases it.
    let db = m.campaign_db.clone();
    let (cid, oid) = (ten.id.clone(), order.id.clone());
    testing::eventually("the redemption is reserved by order.created", || {
        let (db, cid, oid) = (db.clone(), cid.clone(), oid.clone());
        async move {
            let mut conn = db.acquire().await.unwrap();
            mesh_campaign::redemption::status(&mut conn, &cid, &oid)
                .await
                .unwrap()
                .as_deref()
                == Some("RESERVED")
        }
    })
    .await;
    m.orders
        .clone()
        .cancel_order(bearer(
            &ada,
            CancelOrderRequest {
                id: order.id.clone(),
                reason: "changed my mind".into(),
            },
        ))
        .await
        .expect("cancel");
    testing::eventually("the redemption is released by order.cancelled", || {
        let m = &m;
        let id = ten.id.clone();
        async move { redemptions(m, &id).await == 0 }
    })
    .await;
    // Now Bob gets it.
    let mut req = request(&[(&tea.id, 1)]);
    req.promo_code = "TENOFF".into();
    let third = m.place(&bob, req).await;
    assert_eq!(third.discount_total, eur(100));
    assert!(
        !m.order_metrics
            .encode()
            .contains("order_campaign_fallbacks_total 1")
    );
}

on_both_backends!(
    discounts_on_sqlite,
    discounts_on_postgres_and_redis,
    "order discounts",
    discounts
);

/// 150 customers place an order with the code of a campaign limited to 100 redemptions, all at
/// once: of their orders campaign priced, exactly 100 carry the discount and the other 50 go at
/// list price (refused by the limit), and the campaign counts 100. (Under this load campaign
/// sheds some calls; those orders go at list price marked `discounts_unavailable`, hold nothing,
/// and their customer orders again.)
async fn limit_under_concurrent_orders(backend: Backend) {
    // Campaign is given all the time it needs: an order that timed out waiting could leave a
    // hold behind until its order.created released it.
    let m = start_campaign_timeout(
        &backend,
        Duration::from_secs(300),
        Payment::Fake,
        CampaignPeer::Real,
        Duration::from_secs(60),
    )
    .await;
    // Stock for every order, those placed again included: a rejected (cancelled) order would
    // give its redemption back.
    let tea = m.product(1000, "EUR", 1000).await;
    let limited = campaign(
        &m,
        Campaign {
            name: "First hundred".into(),
            start_time: Some(prost_types::Timestamp {
                seconds: 1,
                nanos: 0,
            }),
            promo_codes: vec!["HUNDRED".into()],
            max_redemptions: 100,
            rules: vec![DiscountRule {
                effect: Some(Effect::AmountOff(AmountOff { amount: eur(100) })),
                ..Default::default()
            }],
            ..Default::default()
        },
    )
    .await;
    let mut calls = Vec::new();
    for i in 0..150 {
        let mut req = request(&[(&tea.id, 1)]);
        req.customer_id = format!("cust-{i}");
        req.promo_code = "HUNDRED".into();
        let (orders, admin) = (m.orders.clone(), m.admin.clone());
        calls.push(tokio::spawn(async move {
            // A call the server sheds or cannot serve now is sent again (the same key: never a
            // second order). An
            // order campaign could not price (it shed the call under this load: nothing was
            // held) is placed again under a new key, until campaign answers.
            for _ in 0..200 {
                match orders
                    .clone()
                    .place_order(bearer(&admin, req.clone()))
                    .await
                {
                    Ok(r) => {
                        let order = r.into_inner().order.expect("order");
                        if !order.discounts_unavailable {
                            return order;
                        }
                        req.idempotency_key = uuid::Uuid::now_v7().to_string();
                    }
                    // Shed, or the order's database busy under this load: the same key again.
                    Err(s)
                        if matches!(
                            s.code(),
                            tonic::Code::ResourceExhausted | tonic::Code::Unavailable
                        ) => {}
                    Err(s) => panic!("place order: {s:?}"),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("campaign never priced the order of {}", req.customer_id);
        }));
    }
    let (mut discounted, mut full_price) = (0, 0);
    for call in calls {
        let order = call.await.expect("task");
        if order.applied_campaign_ids == vec![limited.id.clone()] {
            assert_eq!(order.total, eur(900));
            discounted += 1;
        } else {
            assert!(order.applied_campaign_ids.is_empty(), "{order:?}");
            assert_eq!(order.total, eur(1000));
            full_price += 1;
        }
    }
    assert_eq!((discounted, full_price), (100, 50));
    assert_eq!(redemptions(&m, &limited.id).await, 100);
}

on_both_backends!(
    limit_holds_under_150_concurrent_orders_on_sqlite,
    limit_holds_under_150_concurrent_orders_on_postgres_and_redis,
    "order campaign limit under concurrency",
    limit_under_concurrent_orders
);

async fn list_price_when(backend: Backend, peer: CampaignPeer) {
    let m = start_full(&backend, Duration::from_secs(60), Payment::Fake, peer).await;
    let tea = m.product(1000, "EUR", 10).await;
    let ada = m.auth.customer_token().await;
    for n in 1..=2 {
        let mut req = request(&[(&tea.id, 3)]);
        req.promo_code = "TENOFF".into();
        let order = m.place(&ada, req).await;
        assert!(order.discounts_unavailable, "{peer:?}");
        assert_eq!(
            (order.discount_total.clone(), order.total.clone()),
            (eur(0), eur(3000))
        );
        assert_eq!(order.promo_code, "TENOFF");
        let stored = m
            .orders
            .clone()
            .get_order(bearer(
                &ada,
                GetOrderRequest {
                    id: order.id.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .order
            .unwrap();
        assert!(stored.discounts_unavailable);
        let metrics = m.order_metrics.encode();
        assert!(
            metrics.contains(&format!("order_campaign_fallbacks_total {n}")),
            "{metrics}"
        );
    }
}

#[tokio::test]
async fn campaign_down_means_list_price_on_sqlite() {
    list_price_when(Backend::Embedded, CampaignPeer::Down).await;
}

#[tokio::test]
async fn campaign_slow_means_list_price_on_sqlite() {
    list_price_when(Backend::Embedded, CampaignPeer::Slow).await;
}

#[tokio::test]
async fn campaign_down_means_list_price_on_postgres_and_redis() {
    if let Some(backend) = Backend::real("order campaign down") {
        list_price_when(backend, CampaignPeer::Down).await;
    }
}
