//! Every report RPC over real gRPC, on SQLite + the in-process bus and on Postgres + Redis: the
//! read models from published events (exact money, duplicates once, a poison event
//! dead-lettered), freshness, paging, access, input checks, and rebuilds (after the models were
//! deleted; a partial one; one while events keep arriving).

mod common;

use common::{Mesh, eur, usd};
use mesh_contracts::events::v1::*;
use mesh_contracts::product::v1::Product;
use mesh_contracts::report::v1::*;
use mesh_runtime::config::DatabaseTarget;
use mesh_testkit::{self as testing, bearer};
use tonic::Code;

const DAY1: i64 = 1_772_359_200_000_000; // 2026-03-01T10:00:00Z
const DAY2: i64 = DAY1 + 86_400_000_000; // 2026-03-02

fn now_us() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros(),
    )
    .unwrap()
}

fn line(product: &str, quantity: i64, unit: i64, discount: i64) -> OrderLineSnapshot {
    OrderLineSnapshot {
        product_id: product.into(),
        quantity,
        unit_price: eur(unit),
        discount: eur(discount),
        total: eur(unit * quantity - discount),
    }
}

fn stock_line(location: &str, product: &str, quantity: i64) -> ReservedLine {
    ReservedLine {
        product_id: product.into(),
        location_id: location.into(),
        quantity,
    }
}

fn product(id: &str, name: &str) -> Option<Product> {
    Some(Product {
        id: id.into(),
        name: name.into(),
        ..Default::default()
    })
}

fn vend(
    id: &str,
    store: &str,
    product: &str,
    price: Option<mesh_contracts::common::v1::Money>,
) -> VendCompleted {
    VendCompleted {
        vend_id: id.into(),
        machine_id: "m1".into(),
        store_id: store.into(),
        slot: "A1".into(),
        product_id: product.into(),
        price,
        ..Default::default()
    }
}

/// Publishes the scenario: 22 distinct events (and one redelivered copy, one poison event).
async fn publish_scenario(m: &Mesh) -> u32 {
    let mut n = 0;
    for (id, name) in [("p1", "Cola"), ("p2", "Chips"), ("p3", "Water")] {
        m.publish_at(
            DAY1 - 1000,
            "product.created",
            id,
            "ProductCreated",
            &ProductCreated {
                product: product(id, name),
            },
        )
        .await;
        n += 1;
    }
    m.publish_at(
        DAY1 - 500,
        "product.updated",
        "p1",
        "ProductUpdated",
        &ProductUpdated {
            product: product("p1", "Cola Zero"),
            changed_fields: vec!["name".into()],
        },
    )
    .await;
    m.publish_at(
        DAY1,
        "order.created",
        "o1",
        "OrderCreated",
        &OrderCreated {
            order_id: "o1".into(),
            total: eur(1070),
            ..Default::default()
        },
    )
    .await;
    m.publish_at(
        DAY1 + 1,
        "order.confirmed",
        "o1",
        "OrderConfirmed",
        &OrderConfirmed {
            order_id: "o1".into(),
            total: eur(1070),
            lines: vec![line("p1", 2, 450, 30), line("p2", 1, 200, 0)],
            discount_total: eur(30),
            ..Default::default()
        },
    )
    .await;
    let mut o2 = testing::envelope(
        "order.confirmed",
        "o2",
        "OrderConfirmed",
        &OrderConfirmed {
            order_id: "o2".into(),
            total: eur(600),
            lines: vec![line("p2", 3, 200, 0)],
            discount_total: eur(0),
            ..Default::default()
        },
    );
    o2.time = Some(prost_types::Timestamp {
        seconds: DAY1 / 1_000_000 + 60,
        nanos: 0,
    });
    m.publish_envelope(&o2).await;
    m.publish_envelope(&o2).await; // redelivered: counted once
    m.publish_at(
        DAY1 + 2,
        "vend.completed",
        "v1",
        "VendCompleted",
        &vend("v1", "s1", "p3", eur(120)),
    )
    .await;
    m.publish_at(
        DAY2,
        "vend.completed",
        "v2",
        "VendCompleted",
        &vend("v2", "s1", "p1", eur(150)),
    )
    .await;
    m.publish_at(
        DAY2 + 1,
        "vend.completed",
        "v3",
        "VendCompleted",
        &vend("v3", "s1", "p3", usd(100)),
    )
    .await;
    m.publish_at(
        DAY2 + 2,
        "payment.refunded",
        "pay1",
        "PaymentRefunded",
        &PaymentRefunded {
            payment_id: "pay1".into(),
            order_id: "o1".into(),
            amount: eur(100),
            ..Default::default()
        },
    )
    .await;
    m.publish_at(
        DAY2 + 3,
        "payment.refunded",
        "pay2",
        "PaymentRefunded",
        &PaymentRefunded {
            payment_id: "pay2".into(),
            order_id: "v1".into(),
            amount: eur(120),
            ..Default::default()
        },
    )
    .await;
    n += 1 + 1 + 2 + 3 + 2;
    // A poison event: no currency anywhere. Dead-lettered, never applied.
    m.publish_at(
        DAY1,
        "order.confirmed",
        "o-bad",
        "OrderConfirmed",
        &OrderConfirmed {
            order_id: "o-bad".into(),
            lines: vec![OrderLineSnapshot {
                product_id: "p1".into(),
                quantity: 1,
                ..Default::default()
            }],
            ..Default::default()
        },
    )
    .await;
    let now = now_us();
    let adjusted = |loc: &str, p: &str, on_hand: i64| InventoryAdjusted {
        location_id: loc.into(),
        product_id: p.into(),
        delta: on_hand,
        on_hand,
        available: on_hand,
        ..Default::default()
    };
    m.publish_at(
        now - 10_000,
        "inventory.adjusted",
        "p1",
        "InventoryAdjusted",
        &adjusted("L1", "p1", 10),
    )
    .await;
    m.publish_at(
        now - 9_000,
        "inventory.adjusted",
        "p1",
        "InventoryAdjusted",
        &adjusted("L2", "p1", 3),
    )
    .await;
    m.publish_at(
        now - 8_000,
        "inventory.adjusted",
        "p2",
        "InventoryAdjusted",
        &adjusted("L1", "p2", 4),
    )
    .await;
    let r1 = vec![stock_line("L1", "p1", 2), stock_line("L1", "p2", 1)];
    m.publish_at(
        now - 7_000,
        "inventory.reserved",
        "r1",
        "InventoryReserved",
        &InventoryReserved {
            reservation_id: "r1".into(),
            lines: r1.clone(),
            ..Default::default()
        },
    )
    .await;
    m.publish_at(
        now - 6_000,
        "inventory.committed",
        "r1",
        "InventoryCommitted",
        &InventoryCommitted {
            reservation_id: "r1".into(),
            lines: r1,
            ..Default::default()
        },
    )
    .await;
    m.publish_at(
        now - 5_000,
        "inventory.reserved",
        "r2",
        "InventoryReserved",
        &InventoryReserved {
            reservation_id: "r2".into(),
            lines: vec![stock_line("L2", "p1", 1)],
            ..Default::default()
        },
    )
    .await;
    m.publish_at(
        now - 4_000,
        "inventory.released",
        "r2",
        "InventoryReleased",
        &InventoryReleased {
            reservation_id: "r2".into(),
            lines: vec![stock_line("L2", "p1", 1)],
            ..Default::default()
        },
    )
    .await;
    m.publish_at(
        now - 3_000,
        "inventory.reserved",
        "r3",
        "InventoryReserved",
        &InventoryReserved {
            reservation_id: "r3".into(),
            lines: vec![stock_line("L1", "p2", 2)],
            ..Default::default()
        },
    )
    .await;
    m.publish_at(
        now - 2_000,
        "inventory.reserved",
        "r4",
        "InventoryReserved",
        &InventoryReserved {
            reservation_id: "r4".into(),
            lines: vec![stock_line("L2", "p1", 1)],
            ..Default::default()
        },
    )
    .await;
    m.publish_at(
        now - 1_000,
        "inventory.reservation_expired",
        "r4",
        "InventoryReservationExpired",
        &InventoryReservationExpired {
            reservation_id: "r4".into(),
            lines: vec![stock_line("L2", "p1", 1)],
            ..Default::default()
        },
    )
    .await;
    n + 10
}

fn sales_req(store: &str) -> GetSalesByShopDayRequest {
    GetSalesByShopDayRequest {
        store_id: store.into(),
        start_date: "2026-03-01".into(),
        end_date: "2026-03-02".into(),
    }
}

fn top_req(order_by: TopProductsOrder, page_size: i32, page_token: &str) -> ListTopProductsRequest {
    ListTopProductsRequest {
        start_date: "2026-03-01".into(),
        end_date: "2026-03-02".into(),
        store_id: String::new(),
        order_by: order_by.into(),
        page_size,
        page_token: page_token.into(),
    }
}

/// (store, date, orders, vends, units, currency, gross, discounts, refunds, net)
type SalesLine = (String, String, i64, i64, i64, String, i64, i64, i64, i64);

fn sales_lines(r: &GetSalesByShopDayResponse) -> Vec<SalesLine> {
    r.days
        .iter()
        .map(|d| {
            let g = d.gross_sales.clone().unwrap();
            let cur = g.currency_code.clone();
            for m in [&d.discounts, &d.refunds, &d.net_sales] {
                assert_eq!(
                    m.as_ref().unwrap().currency_code,
                    cur,
                    "one currency per row"
                );
            }
            (
                d.store_id.clone(),
                d.date.clone(),
                d.order_count,
                d.vend_count,
                d.units_sold,
                cur,
                g.amount_minor,
                d.discounts.clone().unwrap().amount_minor,
                d.refunds.clone().unwrap().amount_minor,
                d.net_sales.clone().unwrap().amount_minor,
            )
        })
        .collect()
}

fn top_lines(r: &ListTopProductsResponse) -> Vec<(i32, String, String, i64, String, i64)> {
    r.products
        .iter()
        .map(|p| {
            let rev = p.revenue.clone().unwrap();
            (
                p.rank,
                p.product_id.clone(),
                p.name.clone(),
                p.units_sold,
                rev.currency_code,
                rev.amount_minor,
            )
        })
        .collect()
}

/// Everything the models answer, for before/after comparisons.
async fn answers(
    m: &Mesh,
) -> (
    Vec<SalesLine>,
    Vec<(i32, String, String, i64, String, i64)>,
    Vec<StockSummaryRow>,
    Vec<StockSummaryRow>,
) {
    let mut c = m.client().await;
    let sales = c
        .get_sales_by_shop_day(bearer(&m.admin, sales_req("")))
        .await
        .unwrap()
        .into_inner();
    let top = c
        .list_top_products(bearer(
            &m.admin,
            top_req(TopProductsOrder::Revenue, 100, ""),
        ))
        .await
        .unwrap()
        .into_inner();
    let stock = c
        .get_stock_summary(bearer(&m.admin, GetStockSummaryRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let l2 = c
        .get_stock_summary(bearer(
            &m.admin,
            GetStockSummaryRequest {
                location_id: "L2".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    (sales_lines(&sales), top_lines(&top), stock.rows, l2.rows)
}

async fn wait_applied(m: &Mesh, n: i64) {
    testing::eventually(&format!("{n} events applied and none behind"), || async {
        let mut c = m.client().await;
        let r = c
            .get_sales_by_shop_day(bearer(&m.admin, sales_req("")))
            .await
            .unwrap()
            .into_inner();
        let f = r.freshness.unwrap();
        f.events_applied == n && f.events_behind == 0
    })
    .await;
}

fn s(v: &str) -> String {
    v.to_string()
}

async fn rpcs(target: DatabaseTarget, redis: Option<&str>) {
    let m = common::start(target, redis).await;
    let mut c = m.client().await;
    let n = publish_scenario(&m).await;
    wait_applied(&m, i64::from(n)).await;

    // The poison event went to the dead letters with the field at fault.
    let dead = m.bus.dead_letters("report").await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0].reason.contains("currency_code"),
        "{}",
        dead[0].reason
    );

    // Sales by shop and day: exact minor units, one row per store, day and currency.
    let r = c
        .get_sales_by_shop_day(bearer(&m.admin, sales_req("")))
        .await
        .unwrap()
        .into_inner();
    let eur_ = s("EUR");
    assert_eq!(
        sales_lines(&r),
        vec![
            (
                s("online"),
                s("2026-03-01"),
                2,
                0,
                6,
                eur_.clone(),
                1700,
                30,
                0,
                1670
            ),
            (
                s("s1"),
                s("2026-03-01"),
                0,
                1,
                1,
                eur_.clone(),
                120,
                0,
                0,
                120
            ),
            (
                s("online"),
                s("2026-03-02"),
                0,
                0,
                0,
                eur_.clone(),
                0,
                0,
                100,
                -100
            ),
            (
                s("s1"),
                s("2026-03-02"),
                0,
                1,
                1,
                eur_.clone(),
                150,
                0,
                120,
                30
            ),
            (s("s1"), s("2026-03-02"), 0, 1, 1, s("USD"), 100, 0, 0, 100),
        ]
    );
    let f = r.freshness.unwrap();
    assert_eq!(f.events_behind, 0);
    assert!(f.oldest_unhandled_age.is_none());
    assert!(f.newest_event_time.is_some());
    assert_eq!(r.as_of_time, f.newest_event_time);
    let s1 = c
        .get_sales_by_shop_day(bearer(
            &m.service,
            GetSalesByShopDayRequest {
                start_date: "2026-03-02".into(),
                ..sales_req("s1")
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sales_lines(&s1).len(), 2);
    assert!(
        s1.days
            .iter()
            .all(|d| d.store_id == "s1" && d.date == "2026-03-02")
    );

    // Top products, by units and by revenue, with names as last seen.
    let by_units = c
        .list_top_products(bearer(
            &m.admin,
            top_req(TopProductsOrder::Unspecified, 0, ""),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        top_lines(&by_units),
        vec![
            (1, s("p2"), s("Chips"), 4, eur_.clone(), 800),
            (2, s("p1"), s("Cola Zero"), 3, eur_.clone(), 1020),
            (3, s("p3"), s("Water"), 1, eur_.clone(), 120),
            (4, s("p3"), s("Water"), 1, s("USD"), 100),
        ]
    );
    assert!(by_units.next_page_token.is_empty());
    let by_revenue = c
        .list_top_products(bearer(&m.admin, top_req(TopProductsOrder::Revenue, 0, "")))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = by_revenue
        .products
        .iter()
        .map(|p| p.product_id.as_str())
        .collect();
    assert_eq!(ids, ["p1", "p2", "p3", "p3"]);
    let store = c
        .list_top_products(bearer(
            &m.admin,
            ListTopProductsRequest {
                store_id: "s1".into(),
                ..top_req(TopProductsOrder::Units, 0, "")
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        top_lines(&store),
        vec![
            (1, s("p1"), s("Cola Zero"), 1, eur_.clone(), 150),
            (2, s("p3"), s("Water"), 1, eur_.clone(), 120),
            (3, s("p3"), s("Water"), 1, s("USD"), 100),
        ]
    );
    // Paging one product at a time gives the same ranking; a token is bound to its query.
    let (mut token, mut paged) = (String::new(), Vec::new());
    loop {
        let page = c
            .list_top_products(bearer(
                &m.admin,
                top_req(TopProductsOrder::Units, 1, &token),
            ))
            .await
            .unwrap()
            .into_inner();
        paged.extend(top_lines(&page));
        if page.next_page_token.is_empty() {
            break;
        }
        if paged.len() == 1 {
            let other = c
                .list_top_products(bearer(
                    &m.admin,
                    top_req(TopProductsOrder::Revenue, 1, &page.next_page_token),
                ))
                .await
                .unwrap_err();
            assert_eq!(other.code(), Code::InvalidArgument);
            assert!(
                other.message().contains("page_token"),
                "{}",
                other.message()
            );
        }
        token = page.next_page_token;
    }
    assert_eq!(paged, top_lines(&by_units));

    // Stock: every location, one location, low stock only.
    let all = c
        .get_stock_summary(bearer(&m.admin, GetStockSummaryRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let view: Vec<_> = all
        .rows
        .iter()
        .map(|r| {
            (
                r.product_id.as_str(),
                r.name.as_str(),
                r.on_hand,
                r.reserved,
                r.available,
                r.location_count,
                r.low_stock,
                r.units_out_in_window,
                r.days_of_cover,
            )
        })
        .collect();
    assert_eq!(
        view,
        vec![
            ("p2", "Chips", 3, 2, 1, 1, true, 1, Some(28.0)),
            ("p1", "Cola Zero", 11, 0, 11, 2, false, 2, Some(154.0)),
        ]
    );
    assert_eq!((all.total_on_hand, all.total_reserved), (14, 2));
    let l2 = c
        .get_stock_summary(bearer(
            &m.admin,
            GetStockSummaryRequest {
                location_id: "L2".into(),
                cover_window_days: 7,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let view: Vec<_> = l2
        .rows
        .iter()
        .map(|r| {
            (
                r.product_id.as_str(),
                r.on_hand,
                r.reserved,
                r.low_stock,
                r.days_of_cover,
            )
        })
        .collect();
    assert_eq!(view, vec![("p1", 3, 0, true, None)]);
    let low = c
        .get_stock_summary(bearer(
            &m.admin,
            GetStockSummaryRequest {
                only_low_stock: true,
                low_stock_threshold: 1,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        low.rows
            .iter()
            .map(|r| r.product_id.as_str())
            .collect::<Vec<_>>(),
        ["p2"]
    );
    assert_eq!((low.total_on_hand, low.total_reserved), (3, 2));

    // Access: customers and anonymous callers get nothing; only admins rebuild.
    let denied = c
        .get_sales_by_shop_day(bearer(&m.customer, sales_req("")))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let anonymous = c
        .get_stock_summary(GetStockSummaryRequest::default())
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    let not_admin = c
        .rebuild_read_models(bearer(&m.service, RebuildReadModelsRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(not_admin.code(), Code::PermissionDenied);

    // Bad input names the field.
    let bad = [
        (
            c.get_sales_by_shop_day(bearer(
                &m.admin,
                GetSalesByShopDayRequest {
                    start_date: "2026-02-30".into(),
                    ..sales_req("")
                },
            ))
            .await
            .map(|_| ()),
            "start_date",
        ),
        (
            c.get_sales_by_shop_day(bearer(
                &m.admin,
                GetSalesByShopDayRequest {
                    end_date: "2026-02-01".into(),
                    ..sales_req("")
                },
            ))
            .await
            .map(|_| ()),
            "end_date",
        ),
        (
            c.get_sales_by_shop_day(bearer(
                &m.admin,
                GetSalesByShopDayRequest {
                    end_date: "2027-06-01".into(),
                    ..sales_req("")
                },
            ))
            .await
            .map(|_| ()),
            "end_date",
        ),
        (
            c.get_sales_by_shop_day(bearer(
                &m.admin,
                GetSalesByShopDayRequest {
                    end_date: String::new(),
                    ..sales_req("")
                },
            ))
            .await
            .map(|_| ()),
            "end_date",
        ),
        (
            c.get_sales_by_shop_day(bearer(&m.admin, sales_req("s 1")))
                .await
                .map(|_| ()),
            "store_id",
        ),
        (
            c.list_top_products(bearer(&m.admin, top_req(TopProductsOrder::Units, 101, "")))
                .await
                .map(|_| ()),
            "page_size",
        ),
        (
            c.list_top_products(bearer(
                &m.admin,
                ListTopProductsRequest {
                    order_by: 9,
                    ..top_req(TopProductsOrder::Units, 0, "")
                },
            ))
            .await
            .map(|_| ()),
            "order_by",
        ),
        (
            c.list_top_products(bearer(
                &m.admin,
                top_req(TopProductsOrder::Units, 0, "bm90IGEgdG9rZW4"),
            ))
            .await
            .map(|_| ()),
            "page_token",
        ),
        (
            c.get_stock_summary(bearer(
                &m.admin,
                GetStockSummaryRequest {
                    low_stock_threshold: -1,
                    ..Default::default()
                },
            ))
            .await
            .map(|_| ()),
            "low_stock_threshold",
        ),
        (
            c.get_stock_summary(bearer(
                &m.admin,
                GetStockSummaryRequest {
                    cover_window_days: 400,
                    ..Default::default()
                },
            ))
            .await
            .map(|_| ()),
            "cover_window_days",
        ),
        (
            c.rebuild_read_models(bearer(
                &m.admin,
                RebuildReadModelsRequest {
                    read_models: vec!["sales".into()],
                },
            ))
            .await
            .map(|_| ()),
            "read_models[0]",
        ),
    ];
    for (result, field) in bad {
        let e = result.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{field}: {e:?}");
        assert!(e.message().starts_with(field), "{field}: {}", e.message());
    }

    // Delete the read models: the answers are gone; a rebuild from report's history gives the
    // same answers as before.
    let before = answers(&m).await;
    for table in [
        "report_sales_day",
        "report_sale_ref",
        "report_product_day",
        "report_product_name",
        "report_stock",
        "report_stock_out_day",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table}")))
            .execute(m.db.pool())
            .await
            .unwrap();
    }
    let emptied = answers(&m).await;
    assert!(emptied.0.is_empty() && emptied.1.is_empty() && emptied.2.is_empty());
    let rebuilt = c
        .rebuild_read_models(bearer(&m.admin, RebuildReadModelsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rebuilt.events_replayed, i64::from(n));
    assert_eq!(
        rebuilt.read_models,
        ["sales_by_shop_day", "top_products", "stock_summary"]
    );
    assert!(rebuilt.end_time.unwrap().seconds >= rebuilt.start_time.unwrap().seconds);
    assert_eq!(answers(&m).await, before);
    // A partial rebuild carries the other models over unchanged.
    let partial = c
        .rebuild_read_models(bearer(
            &m.admin,
            RebuildReadModelsRequest {
                read_models: vec!["stock_summary".into()],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(partial.read_models, ["stock_summary"]);
    assert_eq!(answers(&m).await, before);

    // A rebuild while events keep arriving: none is lost or counted twice across the swap.
    let vends = 30;
    let publisher = async {
        for i in 0..vends {
            m.publish_at(
                DAY1 + 10 + i,
                "vend.completed",
                &format!("w{i}"),
                "VendCompleted",
                &vend(&format!("w{i}"), "s2", "p2", eur(99)),
            )
            .await;
            tokio::task::yield_now().await;
        }
    };
    let mut c2 = m.client().await;
    let (during, ()) = tokio::join!(
        c2.rebuild_read_models(bearer(&m.admin, RebuildReadModelsRequest::default())),
        publisher
    );
    during.unwrap();
    wait_applied(&m, i64::from(n) + vends).await;
    let r = c
        .get_sales_by_shop_day(bearer(&m.admin, sales_req("s2")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        sales_lines(&r),
        vec![(
            s("s2"),
            s("2026-03-01"),
            0,
            vends,
            vends,
            eur_.clone(),
            99 * vends,
            0,
            0,
            99 * vends
        )]
    );
    let generations: i64 = sqlx::query_scalar("SELECT COUNT(DISTINCT gen) FROM report_sales_day")
        .fetch_one(m.db.pool())
        .await
        .unwrap();
    assert_eq!(
        generations, 1,
        "the old generation's rows are deleted after the swap"
    );
    m.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_and_a_rebuild_on_sqlite() {
    rpcs(testing::sqlite(), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_and_a_rebuild_on_postgres_and_redis() {
    let (Some(target), Some(redis)) = (
        testing::postgres("report rpcs"),
        testing::redis("report rpcs"),
    ) else {
        return;
    };
    rpcs(target, Some(&redis)).await;
}
