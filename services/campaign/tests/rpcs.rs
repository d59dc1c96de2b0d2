//! Every campaign RPC over real gRPC with real tokens, on SQLite + the in-process bus and on
//! Postgres + Redis: creating (and bad input naming the field), reading, listing with pages and
//! a state filter, ending, pricing with stacking and explanations, categories learned from
//! product's events, and redemptions: holds under concurrency (150 against a limit of 100),
//! per-customer limits, budgets, and the saga's events reserving, consuming and releasing them.

mod common;

use std::time::Duration;

use common::{Mesh, backends, settings, start};
use mesh_campaign::CampaignSettings;
use mesh_contracts::campaign::v1::campaign_service_client::CampaignServiceClient;
use mesh_contracts::campaign::v1::discount_rule::Effect;
use mesh_contracts::campaign::v1::*;
use mesh_contracts::common::v1::Money;
use mesh_contracts::events::v1::{OrderCancelled, OrderConfirmed, OrderCreated, ProductUpdated};
use mesh_contracts::product::v1::Product;
use mesh_testkit::{self as testing, bearer};
use prost_types::Timestamp;
use tonic::Code;
use tonic::transport::Channel;

type Client = CampaignServiceClient<Channel>;

fn eur(amount_minor: i64) -> Option<Money> {
    Some(Money {
        currency_code: "EUR".into(),
        amount_minor,
    })
}

fn at(seconds: i64) -> Option<Timestamp> {
    Some(Timestamp { seconds, nanos: 0 })
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn percent(bp: i32, categories: &[&str]) -> DiscountRule {
    DiscountRule {
        effect: Some(Effect::PercentOff(PercentOff { basis_points: bp })),
        scope: Some(Scope {
            product_ids: vec![],
            category_ids: categories.iter().map(|c| c.to_string()).collect(),
        }),
        ..Default::default()
    }
}

fn amount(minor: i64) -> DiscountRule {
    DiscountRule {
        effect: Some(Effect::AmountOff(AmountOff { amount: eur(minor) })),
        ..Default::default()
    }
}

fn campaign(name: &str, rules: Vec<DiscountRule>) -> Campaign {
    Campaign {
        name: name.into(),
        start_time: at(now_s() - 3600),
        rules,
        stackable: true,
        ..Default::default()
    }
}

fn line(product: &str, category: &str, quantity: i64, price: i64) -> CartLine {
    CartLine {
        product_id: product.into(),
        category_id: category.into(),
        quantity,
        unit_price: eur(price),
    }
}

async fn create(c: &mut Client, token: &str, campaign: Campaign) -> Campaign {
    c.create_campaign(bearer(
        token,
        CreateCampaignRequest {
            campaign: Some(campaign),
        },
    ))
    .await
    .expect("create")
    .into_inner()
    .campaign
    .unwrap()
}

async fn get(c: &mut Client, token: &str, id: &str) -> Campaign {
    c.get_campaign(bearer(token, GetCampaignRequest { id: id.into() }))
        .await
        .expect("get")
        .into_inner()
        .campaign
        .unwrap()
}

/// PriceCart; a call the server sheds (RESOURCE_EXHAUSTED under 150 concurrent calls) is sent
/// again after a pause, as a client following `retry-after` would.
async fn price(c: &mut Client, token: &str, req: PriceCartRequest) -> PriceCartResponse {
    loop {
        match c.price_cart(bearer(token, req.clone())).await {
            Ok(r) => return r.into_inner(),
            Err(s) if s.code() == Code::ResourceExhausted => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) => panic!("price: {s:?}"),
        }
    }
}

fn reserve(order: &str, customer: &str, lines: Vec<CartLine>, codes: &[&str]) -> PriceCartRequest {
    PriceCartRequest {
        lines,
        promo_codes: codes.iter().map(|c| c.to_string()).collect(),
        customer_id: customer.into(),
        order_id: order.into(),
        reserve: true,
        ..Default::default()
    }
}

fn assert_invalid<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>, field: &str) {
    let s = r.expect_err("expected INVALID_ARGUMENT");
    assert_eq!(s.code(), Code::InvalidArgument, "{}", s.message());
    assert!(
        s.message().starts_with(field),
        "`{}` names `{field}`",
        s.message()
    );
}

fn rejection(r: &PriceCartResponse, id: &str) -> Option<RejectionReason> {
    r.rejected_campaigns
        .iter()
        .find(|x| x.campaign_id == id)
        .map(|x| RejectionReason::try_from(x.reason).unwrap())
}

async fn bad_input(m: &Mesh, c: &mut Client) {
    let mut neg = campaign("neg", vec![percent(-5, &[])]);
    let r = c
        .create_campaign(bearer(
            &m.staff,
            CreateCampaignRequest {
                campaign: Some(neg.clone()),
            },
        ))
        .await;
    assert_invalid(r, "campaign.rules[0].percent_off.basis_points");
    neg.rules = vec![amount(100)];
    neg.end_time = at(now_s() - 7200);
    let r = c
        .create_campaign(bearer(
            &m.staff,
            CreateCampaignRequest {
                campaign: Some(neg.clone()),
            },
        ))
        .await;
    assert_invalid(r, "campaign.end_time");
    neg.end_time = None;
    neg.promo_codes = vec!["OK".into(), "TWO WORDS".into()];
    let r = c
        .create_campaign(bearer(
            &m.staff,
            CreateCampaignRequest {
                campaign: Some(neg.clone()),
            },
        ))
        .await;
    assert_invalid(r, "campaign.promo_codes[1]");
    neg.promo_codes = vec![];
    neg.rules = vec![DiscountRule::default()];
    let r = c
        .create_campaign(bearer(
            &m.staff,
            CreateCampaignRequest {
                campaign: Some(neg.clone()),
            },
        ))
        .await;
    assert_invalid(r, "campaign.rules[0].effect");
    neg.rules = vec![amount(-1)];
    let r = c
        .create_campaign(bearer(
            &m.staff,
            CreateCampaignRequest {
                campaign: Some(neg.clone()),
            },
        ))
        .await;
    assert_invalid(r, "campaign.rules[0].amount_off.amount.amount_minor");
    neg.rules = vec![amount(1)];
    neg.start_time = None;
    let r = c
        .create_campaign(bearer(
            &m.staff,
            CreateCampaignRequest {
                campaign: Some(neg.clone()),
            },
        ))
        .await;
    assert_invalid(r, "campaign.start_time");
    // Customers do not create campaigns.
    let r = c
        .create_campaign(bearer(
            &m.customer,
            CreateCampaignRequest {
                campaign: Some(campaign("c", vec![amount(1)])),
            },
        ))
        .await;
    assert_eq!(r.unwrap_err().code(), Code::PermissionDenied);
    // Carts.
    let mut cart = PriceCartRequest {
        lines: vec![line("p", "", 0, 100)],
        ..Default::default()
    };
    assert_invalid(
        c.price_cart(bearer(&m.staff, cart.clone())).await,
        "lines[0].quantity",
    );
    cart.lines = vec![
        line("p", "", 1, 100),
        CartLine {
            unit_price: Some(Money {
                currency_code: "USD".into(),
                amount_minor: 1,
            }),
            ..line("q", "", 1, 1)
        },
    ];
    assert_invalid(
        c.price_cart(bearer(&m.staff, cart.clone())).await,
        "lines[1].unit_price.currency_code",
    );
    cart.lines = vec![];
    assert_invalid(c.price_cart(bearer(&m.staff, cart.clone())).await, "lines");
    let r = c
        .price_cart(bearer(
            &m.staff,
            PriceCartRequest {
                reserve: true,
                ..reserve("", "c", vec![line("p", "", 1, 1)], &[])
            },
        ))
        .await;
    assert_invalid(r, "order_id");
    // A customer neither reserves nor prices for someone else.
    let r = c
        .price_cart(bearer(
            &m.customer,
            reserve("o", "", vec![line("p", "", 1, 1)], &[]),
        ))
        .await;
    assert_eq!(r.unwrap_err().code(), Code::PermissionDenied);
    let r = c
        .price_cart(bearer(
            &m.customer,
            PriceCartRequest {
                customer_id: "someone-else".into(),
                lines: vec![line("p", "", 1, 1)],
                ..Default::default()
            },
        ))
        .await;
    assert_eq!(r.unwrap_err().code(), Code::PermissionDenied);
    let r = c
        .get_campaign(bearer(&m.staff, GetCampaignRequest { id: "nope".into() }))
        .await;
    assert_eq!(r.unwrap_err().code(), Code::NotFound);
    let r = c
        .end_campaign(bearer(
            &m.staff,
            EndCampaignRequest {
                id: "nope".into(),
                reason: String::new(),
            },
        ))
        .await;
    assert_eq!(r.unwrap_err().code(), Code::NotFound);
}

async fn every_rpc(postgres: bool) {
    let Some((target, redis)) = backends(postgres, "campaign rpcs") else {
        return;
    };
    let m = start(target, redis.as_deref(), settings()).await;
    let mut c = m.client().await;
    bad_input(&m, &mut c).await;

    // An automatic 10 % on drinks, a coded 5.00 off, an exclusive 50 % for staff's test code,
    // a bundle, and one that has not started.
    let drinks = create(
        &mut c,
        &m.staff,
        Campaign {
            priority: 10,
            ..campaign("Drinks -10%", vec![percent(1000, &["drinks"])])
        },
    )
    .await;
    assert_eq!(drinks.state, CampaignState::Active as i32);
    let summer = create(
        &mut c,
        &m.staff,
        Campaign {
            promo_codes: vec!["summer-5".into()],
            ..campaign("Summer 5 off", vec![amount(500)])
        },
    )
    .await;
    assert_eq!(summer.promo_codes, vec!["SUMMER-5"]);
    let half = create(
        &mut c,
        &m.staff,
        Campaign {
            promo_codes: vec!["HALF".into()],
            stackable: false,
            ..campaign("Half price", vec![percent(5000, &[])])
        },
    )
    .await;
    let later = create(
        &mut c,
        &m.staff,
        Campaign {
            promo_codes: vec!["LATER".into()],
            start_time: at(now_s() + 86_400),
            ..campaign("Later", vec![amount(100)])
        },
    )
    .await;
    assert_eq!(later.state, CampaignState::Scheduled as i32);
    let bundle = create(
        &mut c,
        &m.staff,
        Campaign {
            promo_codes: vec!["BUNDLE".into()],
            ..campaign(
                "Snack bundle",
                vec![DiscountRule {
                    effect: Some(Effect::BundlePrice(BundlePrice { price: eur(250) })),
                    scope: Some(Scope {
                        product_ids: vec!["chips".into(), "cola".into()],
                        category_ids: vec![],
                    }),
                    ..Default::default()
                }],
            )
        },
    )
    .await;

    // GetCampaign: staff see codes, customers do not.
    assert_eq!(
        get(&mut c, &m.staff, &summer.id).await.promo_codes,
        vec!["SUMMER-5"]
    );
    let seen = get(&mut c, &m.customer, &summer.id).await;
    assert!(seen.promo_codes.is_empty());
    assert_eq!(seen.name, "Summer 5 off");

    // PriceCart: drinks 10 % (priority 10) first, then 5.00 off what is left.
    let cart = vec![
        line("cola", "drinks", 2, 150),
        line("chips", "snacks", 1, 200),
    ];
    let r = price(
        &mut c,
        &m.customer,
        PriceCartRequest {
            lines: cart.clone(),
            promo_codes: vec!["Summer-5".into(), "bogus".into(), "LATER".into()],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r.subtotal, eur(500));
    assert_eq!(
        r.applied_campaign_ids,
        vec![drinks.id.clone(), summer.id.clone()]
    );
    // 10 % of 300 = 30; then 500 off the 470 left: everything.
    assert_eq!(r.discount_total, eur(500));
    assert_eq!(r.total, eur(0));
    assert_eq!(r.lines[0].discounts.len(), 2);
    assert_eq!(r.lines[0].discounts[0].campaign_id, drinks.id);
    assert_eq!(r.lines[0].discounts[0].amount, eur(30));
    let codes: Vec<(String, i32)> = r
        .rejected_promo_codes
        .iter()
        .map(|x| (x.promo_code.clone(), x.reason_code))
        .collect();
    assert_eq!(
        codes,
        vec![
            ("bogus".into(), RejectionReason::CodeUnknown as i32),
            ("LATER".into(), RejectionReason::NotStarted as i32)
        ]
    );
    assert_eq!(rejection(&r, &later.id), Some(RejectionReason::NotStarted));
    // Deterministic.
    let again = price(
        &mut c,
        &m.customer,
        PriceCartRequest {
            lines: cart.clone(),
            promo_codes: vec!["Summer-5".into(), "bogus".into(), "LATER".into()],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(again, r);

    // The exclusive half price beats the stack and applies alone.
    let r = price(
        &mut c,
        &m.staff,
        PriceCartRequest {
            lines: vec![line("cola", "drinks", 10, 150)],
            promo_codes: vec!["HALF".into(), "SUMMER-5".into()],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r.applied_campaign_ids, vec![half.id.clone()]);
    assert_eq!(r.discount_total, eur(750));
    assert_eq!(
        rejection(&r, &drinks.id),
        Some(RejectionReason::NotCombinable)
    );
    assert_eq!(
        rejection(&r, &summer.id),
        Some(RejectionReason::NotCombinable)
    );

    // The bundle: 2 x (200 + 150) = 700 for 2 x 250: 200 off (drinks adds its 10 % of cola).
    let r = price(
        &mut c,
        &m.staff,
        PriceCartRequest {
            lines: vec![line("chips", "", 2, 200), line("cola", "", 2, 150)],
            promo_codes: vec!["BUNDLE".into()],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r.applied_campaign_ids, vec![bundle.id.clone()], "{r:?}");
    assert_eq!(r.discount_total, eur(200));
    assert_eq!(
        rejection(&r, &drinks.id),
        Some(RejectionReason::NotEligible)
    );

    // Product's events: cola is a drink; a line without a category now gets the drinks rule.
    m.publish(
        "product.updated",
        "cola",
        "ProductUpdated",
        &ProductUpdated {
            product: Some(Product {
                id: "cola".into(),
                category_id: "drinks".into(),
                ..Default::default()
            }),
            changed_fields: vec!["category_id".into()],
        },
    )
    .await;
    testing::eventually("cola's category learned", || {
        let mut c = c.clone();
        let token = m.staff.clone();
        let drinks = drinks.id.clone();
        async move {
            let r = price(
                &mut c,
                &token,
                PriceCartRequest {
                    lines: vec![line("cola", "", 1, 150)],
                    ..Default::default()
                },
            )
            .await;
            r.applied_campaign_ids == vec![drinks]
        }
    })
    .await;

    // ListCampaigns: newest first, pages, a state filter, tokens bound to the filter.
    let page1 = c
        .list_campaigns(bearer(
            &m.staff,
            ListCampaignsRequest {
                page_size: 2,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        page1
            .campaigns
            .iter()
            .map(|x| x.id.clone())
            .collect::<Vec<_>>(),
        vec![bundle.id.clone(), later.id.clone()]
    );
    let page2 = c
        .list_campaigns(bearer(
            &m.staff,
            ListCampaignsRequest {
                page_size: 2,
                page_token: page1.next_page_token.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        page2
            .campaigns
            .iter()
            .map(|x| x.id.clone())
            .collect::<Vec<_>>(),
        vec![half.id.clone(), summer.id.clone()]
    );
    let page3 = c
        .list_campaigns(bearer(
            &m.customer,
            ListCampaignsRequest {
                page_size: 2,
                page_token: page2.next_page_token.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page3.campaigns.len(), 1);
    assert!(page3.next_page_token.is_empty());
    let scheduled = c
        .list_campaigns(bearer(
            &m.staff,
            ListCampaignsRequest {
                state: CampaignState::Scheduled as i32,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        scheduled
            .campaigns
            .iter()
            .map(|x| x.id.clone())
            .collect::<Vec<_>>(),
        vec![later.id.clone()]
    );
    let r = c
        .list_campaigns(bearer(
            &m.staff,
            ListCampaignsRequest {
                page_size: 2,
                page_token: page1.next_page_token.clone(),
                state: CampaignState::Active as i32,
            },
        ))
        .await;
    assert_invalid(r, "page_token");
    assert_invalid(
        c.list_campaigns(bearer(
            &m.staff,
            ListCampaignsRequest {
                page_size: -1,
                ..Default::default()
            },
        ))
        .await,
        "page_size",
    );

    // EndCampaign: ended once (one event), then unchanged; its code now says expired.
    let ended = c
        .end_campaign(bearer(
            &m.staff,
            EndCampaignRequest {
                id: summer.id.clone(),
                reason: "sold out".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .campaign
        .unwrap();
    assert_eq!(ended.state, CampaignState::Ended as i32);
    assert!(ended.ended_time.is_some());
    let twice = c
        .end_campaign(bearer(
            &m.staff,
            EndCampaignRequest {
                id: summer.id.clone(),
                reason: "again".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .campaign
        .unwrap();
    assert_eq!(twice.ended_time, ended.ended_time);
    let r = c
        .end_campaign(bearer(
            &m.customer,
            EndCampaignRequest {
                id: half.id.clone(),
                reason: String::new(),
            },
        ))
        .await;
    assert_eq!(r.unwrap_err().code(), Code::PermissionDenied);
    let r = price(
        &mut c,
        &m.staff,
        PriceCartRequest {
            lines: cart.clone(),
            promo_codes: vec!["SUMMER-5".into()],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(rejection(&r, &summer.id), Some(RejectionReason::Expired));
    let events = m.emitted().await;
    assert_eq!(
        events.iter().filter(|e| *e == "campaign.created").count(),
        5
    );
    assert_eq!(events.iter().filter(|e| *e == "campaign.ended").count(), 1);

    redemptions(&m, &mut c).await;
    m.stop();
}

/// Holds, limits and the saga's events.
async fn redemptions(m: &Mesh, c: &mut Client) {
    let limited = create(
        c,
        &m.staff,
        Campaign {
            promo_codes: vec!["HUNDRED".into()],
            max_redemptions: 100,
            ..campaign("First hundred", vec![amount(100)])
        },
    )
    .await;
    // 150 concurrent reservations for 150 orders against a limit of 100.
    let mut calls = Vec::new();
    for i in 0..150 {
        let mut c = c.clone();
        let token = m.service.clone();
        calls.push(tokio::spawn(async move {
            let r = price(
                &mut c,
                &token,
                reserve(
                    &format!("order-{i}"),
                    &format!("cust-{i}"),
                    vec![line("tea", "", 1, 1000)],
                    &["HUNDRED"],
                ),
            )
            .await;
            (i, r)
        }));
    }
    let mut got = Vec::new();
    let mut refused = 0;
    for call in calls {
        let (i, r) = call.await.unwrap();
        if r.applied_campaign_ids.is_empty() {
            assert_eq!(
                r.rejected_promo_codes[0].reason_code,
                RejectionReason::LimitReached as i32,
                "{r:?}"
            );
            assert_eq!(r.discount_total, eur(0));
            refused += 1;
        } else {
            assert_eq!(r.discount_total, eur(100));
            got.push(i);
        }
    }
    assert_eq!((got.len(), refused), (100, 50));
    assert_eq!(get(c, &m.staff, &limited.id).await.redemption_count, 100);
    // A repeated call for an order that holds one is idempotent.
    let first = got[0];
    let r = price(
        c,
        &m.service,
        reserve(
            &format!("order-{first}"),
            &format!("cust-{first}"),
            vec![line("tea", "", 1, 1000)],
            &["HUNDRED"],
        ),
    )
    .await;
    assert_eq!(r.applied_campaign_ids, vec![limited.id.clone()]);
    assert_eq!(get(c, &m.staff, &limited.id).await.redemption_count, 100);

    // The saga: created -> reserved, confirmed -> consumed, cancelled -> released (once, even
    // when the event comes twice).
    let (a, b) = (format!("order-{}", got[1]), format!("order-{}", got[2]));
    for o in [&a, &b] {
        m.publish(
            "order.created",
            o,
            "OrderCreated",
            &OrderCreated {
                order_id: o.clone(),
                applied_campaign_ids: vec![limited.id.clone()],
                ..Default::default()
            },
        )
        .await;
    }
    m.publish(
        "order.confirmed",
        &a,
        "OrderConfirmed",
        &OrderConfirmed {
            order_id: a.clone(),
            ..Default::default()
        },
    )
    .await;
    for _ in 0..2 {
        m.publish(
            "order.cancelled",
            &b,
            "OrderCancelled",
            &OrderCancelled {
                order_id: b.clone(),
                ..Default::default()
            },
        )
        .await;
    }
    eventually_status(m, &limited.id, &a, "CONSUMED").await;
    eventually_status(m, &limited.id, &b, "RELEASED").await;
    assert_eq!(get(c, &m.staff, &limited.id).await.redemption_count, 99);
    // The freed redemption goes to the next order.
    let r = price(
        c,
        &m.service,
        reserve(
            "order-late",
            "cust-late",
            vec![line("tea", "", 1, 1000)],
            &["HUNDRED"],
        ),
    )
    .await;
    assert_eq!(r.applied_campaign_ids, vec![limited.id.clone()]);
    assert_eq!(get(c, &m.staff, &limited.id).await.redemption_count, 100);

    // Per customer: once each.
    let once = create(
        c,
        &m.staff,
        Campaign {
            promo_codes: vec!["ONCE".into()],
            max_redemptions_per_customer: 1,
            ..campaign("Once each", vec![amount(50)])
        },
    )
    .await;
    let tea = || vec![line("tea", "", 1, 1000)];
    assert_eq!(
        price(c, &m.service, reserve("o-1", "ada", tea(), &["ONCE"]))
            .await
            .applied_campaign_ids,
        vec![once.id.clone()]
    );
    let r = price(c, &m.service, reserve("o-2", "ada", tea(), &["ONCE"])).await;
    assert_eq!(
        rejection(&r, &once.id),
        Some(RejectionReason::CustomerLimitReached)
    );
    let r = price(
        c,
        &m.customer,
        PriceCartRequest {
            lines: tea(),
            promo_codes: vec!["ONCE".into()],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        r.applied_campaign_ids,
        vec![once.id.clone()],
        "another customer may"
    );

    // Budget: 10 % of 10.00 = 1.00 per order from a budget of 2.50: two orders, not three.
    let budget = create(
        c,
        &m.staff,
        Campaign {
            promo_codes: vec!["BUDGET".into()],
            budget: eur(250),
            ..campaign("Budget", vec![percent(1000, &[])])
        },
    )
    .await;
    for (o, ok) in [("b-1", true), ("b-2", true), ("b-3", false)] {
        let r = price(c, &m.service, reserve(o, o, tea(), &["BUDGET"])).await;
        assert_eq!(
            r.applied_campaign_ids.contains(&budget.id),
            ok,
            "{o}: {r:?}"
        );
        if !ok {
            assert_eq!(
                rejection(&r, &budget.id),
                Some(RejectionReason::BudgetExhausted)
            );
        }
    }
    assert_eq!(get(c, &m.staff, &budget.id).await.budget_used, eur(200));
}

#[tokio::test]
async fn every_rpc_on_sqlite() {
    every_rpc(false).await;
}

#[tokio::test]
async fn every_rpc_on_postgres_and_redis() {
    every_rpc(true).await;
}

/// A hold no order.created follows is released when it expires.
async fn holds_expire(postgres: bool) {
    let Some((target, redis)) = backends(postgres, "campaign hold expiry") else {
        return;
    };
    let m = start(
        target,
        redis.as_deref(),
        CampaignSettings {
            hold_ttl: Duration::from_millis(300),
            sweep_every: Duration::from_millis(50),
        },
    )
    .await;
    let mut c = m.client().await;
    let one = create(
        &mut c,
        &m.staff,
        Campaign {
            promo_codes: vec!["ONE".into()],
            max_redemptions: 1,
            ..campaign("Only one", vec![amount(10)])
        },
    )
    .await;
    let r = price(
        &mut c,
        &m.service,
        reserve("lost-order", "x", vec![line("tea", "", 1, 100)], &["ONE"]),
    )
    .await;
    assert_eq!(r.applied_campaign_ids, vec![one.id.clone()]);
    let r = price(
        &mut c,
        &m.service,
        reserve("next-order", "y", vec![line("tea", "", 1, 100)], &["ONE"]),
    )
    .await;
    assert_eq!(rejection(&r, &one.id), Some(RejectionReason::LimitReached));
    testing::eventually("the lost order's hold expires", || {
        let mut c = c.clone();
        let (token, id) = (m.staff.clone(), one.id.clone());
        async move { get(&mut c, &token, &id).await.redemption_count == 0 }
    })
    .await;
    let r = price(
        &mut c,
        &m.service,
        reserve("next-order", "y", vec![line("tea", "", 1, 100)], &["ONE"]),
    )
    .await;
    assert_eq!(r.applied_campaign_ids, vec![one.id.clone()]);

    // The lost order's order.created arrives after all: its expired hold is taken again, past
    // the full limit, because the order carries the discount (a step that counts, so on
    // Postgres it asks for the transaction).
    m.publish(
        "order.created",
        "lost-order",
        "OrderCreated",
        &OrderCreated {
            order_id: "lost-order".into(),
            applied_campaign_ids: vec![one.id.clone()],
            ..Default::default()
        },
    )
    .await;
    eventually_status(&m, &one.id, "lost-order", "RESERVED").await;
    // The next order's hold expires too (nothing reserves it): what stays counted is the
    // lost order's retaken redemption.
    eventually_status(&m, &one.id, "next-order", "RELEASED").await;
    assert_eq!(get(&mut c, &m.staff, &one.id).await.redemption_count, 1);

    // An order that kept none of its holds: its order.created releases them and gives the
    // count back.
    let open = create(
        &mut c,
        &m.staff,
        Campaign {
            promo_codes: vec!["OPEN".into()],
            ..campaign("Open", vec![amount(10)])
        },
    )
    .await;
    let r = price(
        &mut c,
        &m.service,
        reserve(
            "dropped-order",
            "z",
            vec![line("tea", "", 1, 100)],
            &["OPEN"],
        ),
    )
    .await;
    assert_eq!(r.applied_campaign_ids, vec![open.id.clone()]);
    m.publish(
        "order.created",
        "dropped-order",
        "OrderCreated",
        &OrderCreated {
            order_id: "dropped-order".into(),
            ..Default::default()
        },
    )
    .await;
    eventually_status(&m, &open.id, "dropped-order", "RELEASED").await;
    assert_eq!(get(&mut c, &m.staff, &open.id).await.redemption_count, 0);
    m.stop();
}

/// Waits until `order`'s redemption of `campaign` has `status`.
async fn eventually_status(m: &Mesh, campaign: &str, order: &str, status: &'static str) {
    let (db, campaign, order) = (m.db.clone(), campaign.to_string(), order.to_string());
    testing::eventually(status, || {
        let (db, campaign, order) = (db.clone(), campaign.clone(), order.clone());
        async move {
            let mut conn = db.acquire().await.unwrap();
            mesh_campaign::redemption::status(&mut conn, &campaign, &order)
                .await
                .unwrap()
                .as_deref()
                == Some(status)
        }
    })
    .await;
}

#[tokio::test]
async fn holds_expire_on_sqlite() {
    holds_expire(false).await;
}

#[tokio::test]
async fn holds_expire_on_postgres_and_redis() {
    holds_expire(true).await;
}
