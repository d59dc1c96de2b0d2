//! The inventory service over real gRPC sockets, with a real auth service issuing the tokens
//! (a service token for reservations, the admin for adjustments): stock, CheckStock,
//! reserve/commit/release/adjust with every bad-input status, reservation expiry on an injected
//! clock, and the last unit reserved once by 24 concurrent callers (SQLite and Postgres).
//! Store staff (real tokens with a `stores` claim) read and change only the stock of their
//! stores' locations: the store's own, its machines' (shop's `machine.registered`) and `default`.

mod common;

use std::time::Duration;

use common::{client, start};
use mesh_contracts::inventory::v1::inventory_service_client::InventoryServiceClient;
use mesh_contracts::inventory::v1::*;
use mesh_runtime::auth::{ServiceTokenChannel, ServiceTokens};
use mesh_runtime::client::{ClientOptions, connect};
use mesh_runtime::config::DatabaseTarget;
use mesh_testkit::{self as testing, bearer};
use tonic::Code;
use tonic::transport::Channel;

fn status<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> (Code, String) {
    let s = r.expect_err("expected an error status");
    (s.code(), s.message().to_string())
}

fn assert_invalid<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>, field: &str) {
    let (code, message) = status(r);
    assert_eq!(code, Code::InvalidArgument, "{message}");
    assert!(message.starts_with(field), "`{message}` names `{field}`");
}

fn line(product: &str, qty: i64) -> StockLine {
    StockLine {
        product_id: product.into(),
        location_id: String::new(),
        quantity: qty,
    }
}

fn reserve(reference: &str, lines: Vec<StockLine>, ttl: i64) -> ReserveRequest {
    ReserveRequest {
        reference_id: reference.into(),
        lines,
        ttl: Some(prost_types::Duration {
            seconds: ttl,
            nanos: 0,
        }),
        reservation_id: String::new(),
    }
}

async fn restock(
    c: &mut InventoryServiceClient<Channel>,
    admin: &str,
    product: &str,
    delta: i64,
) -> StockLevel {
    restock_at(c, admin, "default", product, delta).await
}

async fn restock_at(
    c: &mut InventoryServiceClient<Channel>,
    token: &str,
    location: &str,
    product: &str,
    delta: i64,
) -> StockLevel {
    c.adjust_stock(bearer(
        token,
        AdjustStockRequest {
            location_id: location.into(),
            product_id: product.into(),
            delta,
            reason: AdjustmentReason::Restock as i32,
            note: "delivery 42".into(),
            request_id: String::new(),
        },
    ))
    .await
    .expect("adjust")
    .into_inner()
    .stock
    .expect("stock")
}

async fn lifecycle(target: DatabaseTarget) {
    let m = start(target).await;
    let mut c = client(m.addr).await;
    let apple = uuid::Uuid::now_v7().to_string();
    let pear = uuid::Uuid::now_v7().to_string();

    // Tokens and roles.
    let (code, _) = status(
        c.get_stock(GetStockRequest {
            location_id: "default".into(),
            product_id: apple.clone(),
        })
        .await,
    );
    assert_eq!(code, Code::Unauthenticated);
    let (code, _) = status(
        c.reserve(bearer(
            &m.customer,
            reserve("o-1", vec![line(&apple, 1)], 60),
        ))
        .await,
    );
    assert_eq!(code, Code::PermissionDenied);
    let adjust = |delta, reason: AdjustmentReason, request_id: &str| AdjustStockRequest {
        location_id: "default".into(),
        product_id: apple.clone(),
        delta,
        reason: reason as i32,
        note: String::new(),
        request_id: request_id.into(),
    };
    let (code, _) = status(
        c.adjust_stock(bearer(&m.service, adjust(5, AdjustmentReason::Restock, "")))
            .await,
    );
    assert_eq!(code, Code::PermissionDenied);

    // Bad input names the field.
    assert_invalid(
        c.adjust_stock(bearer(&m.admin, adjust(0, AdjustmentReason::Restock, "")))
            .await,
        "delta",
    );
    assert_invalid(
        c.adjust_stock(bearer(&m.admin, adjust(-1, AdjustmentReason::Restock, "")))
            .await,
        "delta",
    );
    assert_invalid(
        c.adjust_stock(bearer(
            &m.admin,
            adjust(5, AdjustmentReason::Unspecified, ""),
        ))
        .await,
        "reason",
    );
    assert_invalid(
        c.adjust_stock(bearer(
            &m.admin,
            AdjustStockRequest {
                product_id: "x".into(),
                ..adjust(5, AdjustmentReason::Restock, "")
            },
        ))
        .await,
        "product_id",
    );
    assert_invalid(
        c.adjust_stock(bearer(
            &m.admin,
            AdjustStockRequest {
                location_id: String::new(),
                ..adjust(5, AdjustmentReason::Restock, "")
            },
        ))
        .await,
        "location_id",
    );
    assert_invalid(
        c.reserve(bearer(&m.service, reserve("", vec![line(&apple, 1)], 60)))
            .await,
        "reference_id",
    );
    assert_invalid(
        c.reserve(bearer(&m.service, reserve("o-1", vec![], 60)))
            .await,
        "lines",
    );
    assert_invalid(
        c.reserve(bearer(
            &m.service,
            reserve("o-1", vec![line(&apple, 1), line(&apple, 0)], 60),
        ))
        .await,
        "lines[1].quantity",
    );
    assert_invalid(
        c.reserve(bearer(
            &m.service,
            reserve("o-1", vec![line("bad-id", 1)], 60),
        ))
        .await,
        "lines[0].product_id",
    );
    assert_invalid(
        c.reserve(bearer(&m.service, reserve("o-1", vec![line(&apple, 1)], 0)))
            .await,
        "ttl",
    );
    assert_invalid(
        c.check_stock(bearer(
            &m.customer,
            CheckStockRequest {
                lines: vec![line(&apple, -2)],
            },
        ))
        .await,
        "lines[0].quantity",
    );
    assert_invalid(
        c.list_stock(bearer(
            &m.customer,
            ListStockRequest {
                page_size: 1001,
                ..Default::default()
            },
        ))
        .await,
        "page_size",
    );
    assert_invalid(
        c.list_stock(bearer(
            &m.customer,
            ListStockRequest {
                page_token: "???".into(),
                ..Default::default()
            },
        ))
        .await,
        "page_token",
    );

    // Restock (idempotent by request id), shrinkage, and the floor.
    let level = restock(&mut c, &m.admin, &apple, 10).await;
    assert_eq!(
        (level.on_hand, level.reserved, level.available),
        (10, 0, 10)
    );
    let once = c
        .adjust_stock(bearer(
            &m.admin,
            adjust(3, AdjustmentReason::Restock, "delivery-7"),
        ))
        .await
        .expect("adjust")
        .into_inner()
        .stock
        .expect("stock");
    let twice = c
        .adjust_stock(bearer(
            &m.admin,
            adjust(3, AdjustmentReason::Restock, "delivery-7"),
        ))
        .await
        .expect("adjust")
        .into_inner()
        .stock
        .expect("stock");
    assert_eq!(
        (once.on_hand, twice.on_hand),
        (13, 13),
        "a repeated request id is applied once"
    );
    let level = c
        .adjust_stock(bearer(
            &m.admin,
            adjust(-3, AdjustmentReason::Shrinkage, ""),
        ))
        .await
        .expect("adjust")
        .into_inner()
        .stock
        .expect("stock");
    assert_eq!(level.on_hand, 10);
    restock(&mut c, &m.admin, &pear, 1).await;

    // CheckStock holds nothing.
    let check = c
        .check_stock(bearer(
            &m.customer,
            CheckStockRequest {
                lines: vec![line(&apple, 4), line(&pear, 2)],
            },
        ))
        .await
        .expect("check")
        .into_inner();
    assert!(!check.all_available);
    assert_eq!(
        check
            .results
            .iter()
            .map(|r| (r.available, r.sufficient, r.location_id.as_str()))
            .collect::<Vec<_>>(),
        [(10, true, "default"), (1, false, "default")]
    );

    // Reserve is all or nothing, and idempotent per reference.
    let (code, message) = status(
        c.reserve(bearer(
            &m.service,
            reserve("o-1", vec![line(&apple, 4), line(&pear, 2)], 60),
        ))
        .await,
    );
    assert_eq!(code, Code::FailedPrecondition);
    assert!(message.contains(&pear), "{message}");
    let apple_level = |c: &mut InventoryServiceClient<Channel>| {
        let mut c = c.clone();
        let (token, id) = (m.customer.clone(), apple.clone());
        async move {
            c.get_stock(bearer(
                &token,
                GetStockRequest {
                    location_id: "default".into(),
                    product_id: id,
                },
            ))
            .await
            .expect("stock")
            .into_inner()
            .stock
            .expect("stock")
        }
    };
    assert_eq!(
        apple_level(&mut c).await.reserved,
        0,
        "nothing half-reserved"
    );
    let r1 = c
        .reserve(bearer(
            &m.service,
            reserve("o-1", vec![line(&apple, 4)], 60),
        ))
        .await
        .expect("reserve")
        .into_inner()
        .reservation
        .expect("r");
    let again = c
        .reserve(bearer(
            &m.service,
            reserve("o-1", vec![line(&apple, 4)], 60),
        ))
        .await
        .expect("reserve")
        .into_inner()
        .reservation
        .expect("r");
    assert_eq!(r1.id, again.id);
    assert_eq!(r1.status, ReservationStatus::Active as i32);
    let level = apple_level(&mut c).await;
    assert_eq!((level.on_hand, level.reserved, level.available), (10, 4, 6));

    // Shrinkage can't eat reserved stock.
    let (code, _) = status(
        c.adjust_stock(bearer(&m.admin, adjust(-7, AdjustmentReason::Damage, "")))
            .await,
    );
    assert_eq!(code, Code::FailedPrecondition);

    // Commit takes the units; it is idempotent; a committed reservation can't be released.
    let committed = c
        .commit_reservation(bearer(
            &m.service,
            CommitReservationRequest {
                reservation_id: r1.id.clone(),
            },
        ))
        .await
        .expect("commit")
        .into_inner()
        .reservation
        .expect("r");
    assert_eq!(committed.status, ReservationStatus::Committed as i32);
    c.commit_reservation(bearer(
        &m.service,
        CommitReservationRequest {
            reservation_id: r1.id.clone(),
        },
    ))
    .await
    .expect("commit again");
    let (code, _) = status(
        c.release_reservation(bearer(
            &m.service,
            ReleaseReservationRequest {
                reservation_id: r1.id.clone(),
                reason: String::new(),
            },
        ))
        .await,
    );
    assert_eq!(code, Code::FailedPrecondition);
    let level = apple_level(&mut c).await;
    assert_eq!((level.on_hand, level.reserved, level.available), (6, 0, 6));

    // Release returns the units; it is idempotent; a released reservation can't be committed.
    let r2 = c
        .reserve(bearer(
            &m.service,
            reserve("o-2", vec![line(&apple, 2)], 60),
        ))
        .await
        .expect("reserve")
        .into_inner()
        .reservation
        .expect("r");
    let released = c
        .release_reservation(bearer(
            &m.service,
            ReleaseReservationRequest {
                reservation_id: r2.id.clone(),
                reason: "payment failed".into(),
            },
        ))
        .await
        .expect("release")
        .into_inner()
        .reservation
        .expect("r");
    assert_eq!(released.status, ReservationStatus::Released as i32);
    c.release_reservation(bearer(
        &m.service,
        ReleaseReservationRequest {
            reservation_id: r2.id.clone(),
            reason: String::new(),
        },
    ))
    .await
    .expect("release again");
    let (code, _) = status(
        c.commit_reservation(bearer(
            &m.service,
            CommitReservationRequest {
                reservation_id: r2.id.clone(),
            },
        ))
        .await,
    );
    assert_eq!(code, Code::FailedPrecondition);
    assert_eq!(apple_level(&mut c).await.available, 6);
    let (code, _) = status(
        c.get_reservation(bearer(
            &m.service,
            GetReservationRequest {
                id: "unknown".into(),
            },
        ))
        .await,
    );
    assert_eq!(code, Code::NotFound);
    let (code, _) = status(
        c.commit_reservation(bearer(
            &m.service,
            CommitReservationRequest {
                reservation_id: "unknown".into(),
            },
        ))
        .await,
    );
    assert_eq!(code, Code::NotFound);

    // Expiry: on the injected clock, the sweeper returns the stock and emits the event.
    let r3 = c
        .reserve(bearer(
            &m.service,
            reserve("o-3", vec![line(&apple, 5)], 60),
        ))
        .await
        .expect("reserve")
        .into_inner()
        .reservation
        .expect("r");
    assert_eq!(apple_level(&mut c).await.available, 1);
    m.clock.advance(59);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let get = |id: &str| GetReservationRequest { id: id.into() };
    assert_eq!(
        c.get_reservation(bearer(&m.service, get(&r3.id)))
            .await
            .expect("get")
            .into_inner()
            .reservation
            .expect("r")
            .status,
        ReservationStatus::Active as i32,
        "not yet"
    );
    m.clock.advance(2);
    let (code, _) = status(
        c.commit_reservation(bearer(
            &m.service,
            CommitReservationRequest {
                reservation_id: r3.id.clone(),
            },
        ))
        .await,
    );
    assert_eq!(
        code,
        Code::FailedPrecondition,
        "an expired reservation can't be committed"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = c
            .get_reservation(bearer(&m.service, get(&r3.id)))
            .await
            .expect("get")
            .into_inner()
            .reservation
            .expect("r");
        if r.status == ReservationStatus::Expired as i32 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sweeper did not expire the reservation"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(apple_level(&mut c).await.available, 6);

    // Listing with paging and the low-stock filter.
    let all = c
        .list_stock(bearer(
            &m.customer,
            ListStockRequest {
                page_size: 1,
                ..Default::default()
            },
        ))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(all.stock.len(), 1);
    let rest = c
        .list_stock(bearer(
            &m.customer,
            ListStockRequest {
                page_size: 1,
                page_token: all.next_page_token,
                ..Default::default()
            },
        ))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(rest.stock.len(), 1);
    assert_ne!(all.stock[0].product_id, rest.stock[0].product_id);
    let low = c
        .list_stock(bearer(
            &m.customer,
            ListStockRequest {
                max_available: 1,
                only_low_stock: true,
                ..Default::default()
            },
        ))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        low.stock
            .iter()
            .map(|s| s.product_id.clone())
            .collect::<Vec<_>>(),
        vec![pear.clone()]
    );

    // A peer calling with client credentials: the channel fetches and adds the service token.
    let tokens = ServiceTokens::new(
        connect(m.auth.uri(), ClientOptions::default()),
        "order",
        "order-secret",
    );
    let mut as_order = InventoryServiceClient::new(ServiceTokenChannel::new(
        testing::channel(m.addr).await,
        Some(tokens),
    ));
    let r4 = as_order
        .reserve(reserve("o-4", vec![line(&apple, 1)], 60))
        .await
        .expect("reserve with a service token")
        .into_inner()
        .reservation
        .expect("r");
    as_order
        .release_reservation(ReleaseReservationRequest {
            reservation_id: r4.id,
            reason: String::new(),
        })
        .await
        .expect("release");
    let mut anonymous = InventoryServiceClient::new(ServiceTokenChannel::new(
        testing::channel(m.addr).await,
        None,
    ));
    let (code, _) = status(
        anonymous
            .reserve(reserve("o-5", vec![line(&apple, 1)], 60))
            .await,
    );
    assert_eq!(code, Code::Unauthenticated);

    // Every change emitted its event through the outbox.
    let types = testing::outbox::types(&m.db).await;
    for t in [
        "inventory.adjusted",
        "inventory.reserved",
        "inventory.committed",
        "inventory.released",
        "inventory.reservation_expired",
    ] {
        assert!(types.iter().any(|x| x == t), "{t} in {types:?}");
    }
    assert_eq!(
        types.iter().filter(|t| *t == "inventory.adjusted").count(),
        4,
        "the repeated request id emitted once"
    );
    m.shutdown.cancel();
    m.auth.shutdown.cancel();
}

testing::on_sqlite_and_postgres!(
    #[tokio::test]
    stock_reservations_adjustments_and_expiry_on_sqlite,
    stock_reservations_adjustments_and_expiry_on_postgres,
    "inventory lifecycle",
    lifecycle
);

async fn last_unit(target: DatabaseTarget) {
    let m = start(target).await;
    let mut c = client(m.addr).await;
    let product = uuid::Uuid::now_v7().to_string();
    restock(&mut c, &m.admin, &product, 1).await;
    let callers = 24;
    let mut tasks = Vec::new();
    for i in 0..callers {
        // One connection each, so the calls really race on the database.
        let addr = m.addr;
        let (token, product) = (m.service.clone(), product.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = client(addr).await;
            c.reserve(bearer(
                &token,
                reserve(&format!("race-{i}"), vec![line(&product, 1)], 60),
            ))
            .await
            .map(|_| ())
            .map_err(|s| s.code())
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(()) => won += 1,
            Err(code) => assert!(
                matches!(
                    code,
                    Code::FailedPrecondition | Code::Aborted | Code::Unavailable
                ),
                "{code:?}"
            ),
        }
    }
    assert_eq!(won, 1, "the last unit is reserved exactly once");
    let level = c
        .get_stock(bearer(
            &m.customer,
            GetStockRequest {
                location_id: "default".into(),
                product_id: product,
            },
        ))
        .await
        .expect("stock")
        .into_inner()
        .stock
        .expect("stock");
    assert_eq!((level.on_hand, level.reserved, level.available), (1, 1, 0));
    m.shutdown.cancel();
    m.auth.shutdown.cancel();
}

#[tokio::test]
async fn concurrent_reservations_of_the_last_unit_on_postgres() {
    if let Some(target) = testing::postgres("inventory last unit") {
        last_unit(target).await;
    }
}

#[tokio::test]
async fn concurrent_reservations_of_the_last_unit_on_sqlite() {
    last_unit(testing::sqlite()).await;
}

fn assert_denied<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>, field: &str) {
    let (code, message) = status(r);
    assert_eq!(code, Code::PermissionDenied, "{message}");
    assert!(message.starts_with(field), "`{message}` names `{field}`");
}

fn get(location: &str, product: &str) -> GetStockRequest {
    GetStockRequest {
        location_id: location.into(),
        product_id: product.into(),
    }
}

/// Every location `token` lists of `product`, two levels a page.
async fn listed(c: &InventoryServiceClient<Channel>, token: &str, product: &str) -> Vec<String> {
    testing::every_page(2, |page_token| {
        let mut c = c.clone();
        async move {
            let page = c
                .list_stock(bearer(
                    token,
                    ListStockRequest {
                        page_size: 2,
                        page_token,
                        product_id: product.into(),
                        ..Default::default()
                    },
                ))
                .await
                .expect("list stock")
                .into_inner();
            let locations = page.stock.into_iter().map(|l| l.location_id).collect();
            (locations, page.next_page_token)
        }
    })
    .await
}

async fn store_staff(target: DatabaseTarget) {
    use mesh_contracts::events::v1::MachineRegistered;
    let m = start(target).await;
    let mut c = client(m.addr).await;
    let cola = uuid::Uuid::now_v7().to_string();
    for location in ["berlin", "munich", "vm-b1", "vm-m1", "default", "wh-1"] {
        restock_at(&mut c, &m.admin, location, &cola, 5).await;
    }
    // Shop registered one machine in each store.
    for (machine, store) in [("vm-b1", "berlin"), ("vm-m1", "munich")] {
        let registered = MachineRegistered {
            machine_id: machine.into(),
            store_id: store.into(),
            ..Default::default()
        };
        testing::publish(
            m.bus.as_ref(),
            &testing::envelope(
                "machine.registered",
                machine,
                "MachineRegistered",
                &registered,
            ),
        )
        .await;
    }
    let (_, clerk) = m.auth.store_staff_token(&["berlin"]).await;
    testing::eventually("inventory learns the machines' stores", || {
        let (mut c, clerk, cola) = (c.clone(), clerk.clone(), cola.clone());
        async move {
            c.get_stock(bearer(&clerk, get("vm-b1", &cola)))
                .await
                .is_ok()
        }
    })
    .await;

    // Reads: the store, its machine and the online stock; elsewhere refused naming the field.
    for location in ["berlin", "vm-b1", "default"] {
        c.get_stock(bearer(&clerk, get(location, &cola)))
            .await
            .expect("a location of the clerk's");
    }
    for location in ["munich", "vm-m1", "wh-1"] {
        assert_denied(
            c.get_stock(bearer(&clerk, get(location, &cola))).await,
            "location_id",
        );
    }
    assert_eq!(
        listed(&c, &clerk, &cola).await,
        ["berlin", "default", "vm-b1"],
        "filtered in SQL: full pages of the clerk's locations only"
    );
    assert_eq!(listed(&c, &m.admin, &cola).await.len(), 6);
    assert_denied(
        c.list_stock(bearer(
            &clerk,
            ListStockRequest {
                location_id: "munich".into(),
                ..Default::default()
            },
        ))
        .await,
        "location_id",
    );
    let at = |location: &str| StockLine {
        location_id: location.into(),
        ..line(&cola, 1)
    };
    assert_denied(
        c.check_stock(bearer(
            &clerk,
            CheckStockRequest {
                lines: vec![at("berlin"), at("vm-m1")],
            },
        ))
        .await,
        "lines[1].location_id",
    );
    // Customers still see availability anywhere, as a shop front does.
    c.get_stock(bearer(&m.customer, get("munich", &cola)))
        .await
        .expect("customers read availability");

    // Writes: their machine yes, another store's no (and nothing changes there).
    let level = restock_at(&mut c, &clerk, "vm-b1", &cola, 2).await;
    assert_eq!(level.on_hand, 7);
    let other = bearer(
        &clerk,
        AdjustStockRequest {
            location_id: "vm-m1".into(),
            product_id: cola.clone(),
            delta: 2,
            reason: AdjustmentReason::Restock as i32,
            note: String::new(),
            request_id: String::new(),
        },
    );
    assert_denied(c.adjust_stock(other).await, "location_id");
    let munich_machine = c
        .get_stock(bearer(&m.admin, get("vm-m1", &cola)))
        .await
        .expect("stock")
        .into_inner()
        .stock
        .expect("stock");
    assert_eq!(munich_machine.on_hand, 5, "untouched");

    // Reservations: only those wholly at the clerk's locations.
    let reservation = c
        .reserve(bearer(
            &m.service,
            reserve("o-munich", vec![at("munich")], 60),
        ))
        .await
        .expect("reserve")
        .into_inner()
        .reservation
        .expect("reservation");
    let ask = || GetReservationRequest {
        id: reservation.id.clone(),
    };
    assert_denied(c.get_reservation(bearer(&clerk, ask())).await, "id");
    c.get_reservation(bearer(&m.admin, ask()))
        .await
        .expect("admins read every reservation");
    m.shutdown.cancel();
    m.auth.shutdown.cancel();
}

testing::on_sqlite_and_postgres!(
    #[tokio::test]
    store_staff_act_on_their_stores_stock_on_sqlite,
    store_staff_act_on_their_stores_stock_on_postgres,
    "inventory store staff",
    store_staff
);
