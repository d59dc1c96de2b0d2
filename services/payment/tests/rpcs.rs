//! The payment service over real gRPC with real tokens: every RPC, every test card, charge
//! idempotency per order, refund limits and idempotency, the ledger and its paging, and bad
//! input naming the field (SQLite; Postgres when `MESH_TEST_DATABASE_URL` is set).

mod common;

use std::time::{Duration, Instant};

use common::{Mesh, start};
use mesh_contracts::common::v1::{Money, PaymentCard, PaymentMethod, payment_method::Method};
use mesh_contracts::payment::v1::payment_service_client::PaymentServiceClient;
use mesh_contracts::payment::v1::*;
use mesh_runtime::config::DatabaseTarget;
use mesh_testkit::{self as testing, bearer};
use tonic::Code;
use tonic::transport::Channel;

fn eur(amount_minor: i64) -> Option<Money> {
    Some(Money {
        currency_code: "EUR".into(),
        amount_minor,
    })
}

fn card(number: &str) -> PaymentCard {
    mesh_testkit::walkthrough::test_card(number, "Ada Lovelace")
}

fn charge_req(order: &str, amount: i64, method: Method) -> ChargeRequest {
    ChargeRequest {
        order_id: order.into(),
        amount: eur(amount),
        payment_method: Some(PaymentMethod {
            method: Some(method),
        }),
        customer_id: "cust-1".into(),
        description: "test".into(),
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

fn code<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    r.expect_err("expected an error").code()
}

async fn tokenize(c: &mut PaymentServiceClient<Channel>, token: &str, number: &str) -> String {
    let r = c
        .tokenize_card(bearer(
            token,
            TokenizeCardRequest {
                card: Some(card(number)),
            },
        ))
        .await
        .expect("tokenize")
        .into_inner();
    assert_eq!(r.card_brand, "visa");
    assert_eq!(r.card_last4, number[number.len() - 4..]);
    assert!(r.card_token.starts_with("tok_"));
    r.card_token
}

async fn charge(
    m: &Mesh,
    c: &mut PaymentServiceClient<Channel>,
    order: &str,
    amount: i64,
    method: Method,
) -> Payment {
    c.charge(bearer(&m.service, charge_req(order, amount, method)))
        .await
        .expect("charge")
        .into_inner()
        .payment
        .expect("payment")
}

fn unique(p: &str) -> String {
    testing::unique(p)
}

async fn rpcs(target: DatabaseTarget) {
    let m = start(target, None).await;
    let mut c = m.client().await;

    // Tokens and roles.
    assert_eq!(
        code(
            c.tokenize_card(TokenizeCardRequest {
                card: Some(card("4242424242424242"))
            })
            .await
        ),
        Code::Unauthenticated
    );
    let ok = tokenize(&mut c, &m.customer, "4242 4242 4242 4242").await;
    assert_eq!(
        code(
            c.charge(bearer(
                &m.customer,
                charge_req("o", 100, Method::CardToken(ok.clone()))
            ))
            .await
        ),
        Code::PermissionDenied
    );
    assert_eq!(
        code(
            c.list_transactions(bearer(&m.customer, ListTransactionsRequest::default()))
                .await
        ),
        Code::PermissionDenied
    );

    // Bad input names the field.
    let bad_card = |f: fn(&mut PaymentCard)| {
        let mut k = card("4242424242424242");
        f(&mut k);
        TokenizeCardRequest { card: Some(k) }
    };
    assert_invalid(
        c.tokenize_card(bearer(&m.customer, TokenizeCardRequest { card: None }))
            .await,
        "card",
    );
    assert_invalid(
        c.tokenize_card(bearer(
            &m.customer,
            bad_card(|k| k.number = "4242424242424241".into()),
        ))
        .await,
        "card.number",
    );
    assert_invalid(
        c.tokenize_card(bearer(&m.customer, bad_card(|k| k.number = "42".into())))
            .await,
        "card.number",
    );
    assert_invalid(
        c.tokenize_card(bearer(&m.customer, bad_card(|k| k.expiry = "01/20".into())))
            .await,
        "card.expiry",
    );
    assert_invalid(
        c.tokenize_card(bearer(
            &m.customer,
            bad_card(|k| k.expiry = "2039-12".into()),
        ))
        .await,
        "card.expiry",
    );
    assert_invalid(
        c.tokenize_card(bearer(&m.customer, bad_card(|k| k.cvc = "1".into())))
            .await,
        "card.cvc",
    );
    let tok = || Method::CardToken(ok.clone());
    assert_invalid(
        c.charge(bearer(&m.service, charge_req("", 100, tok())))
            .await,
        "order_id",
    );
    assert_invalid(
        c.charge(bearer(&m.service, charge_req("bad id!", 100, tok())))
            .await,
        "order_id",
    );
    assert_invalid(
        c.charge(bearer(&m.service, charge_req("o-1", 0, tok())))
            .await,
        "amount.amount_minor",
    );
    let mut r = charge_req("o-1", 100, tok());
    r.amount = Some(Money {
        currency_code: "eur".into(),
        amount_minor: 100,
    });
    assert_invalid(
        c.charge(bearer(&m.service, r)).await,
        "amount.currency_code",
    );
    let mut r = charge_req("o-1", 100, tok());
    r.amount = None;
    assert_invalid(c.charge(bearer(&m.service, r)).await, "amount");
    let mut r = charge_req("o-1", 100, tok());
    r.payment_method = None;
    assert_invalid(c.charge(bearer(&m.service, r)).await, "payment_method");
    assert_invalid(
        c.charge(bearer(
            &m.service,
            charge_req("o-1", 100, Method::Card(card("1234"))),
        ))
        .await,
        "payment_method.card.number",
    );
    assert_invalid(
        c.get_payment(bearer(&m.service, GetPaymentRequest { id: String::new() }))
            .await,
        "id",
    );
    assert_eq!(
        code(
            c.get_payment(bearer(&m.service, GetPaymentRequest { id: "nope".into() }))
                .await
        ),
        Code::NotFound
    );

    // Every test card.
    let succeed = charge(
        &m,
        &mut c,
        &unique("ok"),
        1000,
        Method::CardToken(ok.clone()),
    )
    .await;
    assert_eq!(succeed.status, PaymentStatus::Succeeded as i32);
    assert!(succeed.provider_reference.starts_with("sim_ch_"));
    assert_eq!(
        (succeed.card_brand.as_str(), succeed.card_last4.as_str()),
        ("visa", "4242")
    );
    let cases = [
        ("4000000000000002", DeclineReason::CardDeclined),
        ("4000000000009995", DeclineReason::InsufficientFunds),
        ("4000000000000119", DeclineReason::ProviderError),
    ];
    for (number, reason) in cases {
        let token = tokenize(&mut c, &m.customer, number).await;
        let order = unique("card");
        let p = charge(&m, &mut c, &order, 500, Method::CardToken(token)).await;
        assert_eq!(p.status, PaymentStatus::Failed as i32, "{number}");
        assert_eq!(
            p.decline_reason, reason as i32,
            "{number}: {}",
            p.decline_message
        );
        assert_eq!(
            m.processor_charges(&order).await,
            0,
            "{number}: nothing captured"
        );
        assert_eq!(
            m.ledger(&order).await,
            vec![("CHARGE".to_string(), 500, "FAILED".to_string())]
        );
        let failed = m.emitted("payment.failed", &order).await;
        assert_eq!(failed.len(), 1, "{number}: one payment.failed");
    }
    let attempts: i64 =
        sqlx::query_scalar("SELECT attempts FROM payments WHERE decline_reason = $1")
            .bind(DeclineReason::ProviderError as i32 as i64)
            .fetch_one(m.db.pool())
            .await
            .expect("attempts");
    assert_eq!(
        attempts, 3,
        "the processor error was retried up to MESH_PAYMENT_MAX_ATTEMPTS"
    );
    let slow = tokenize(&mut c, &m.customer, "4000000000000259").await;
    let started = Instant::now();
    let p = charge(&m, &mut c, &unique("slow"), 700, Method::CardToken(slow)).await;
    assert_eq!(p.status, PaymentStatus::Succeeded as i32);
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "the slow card answers late"
    );
    // A raw card is tokenized on the way; an unknown token fails the payment, not the call.
    let raw = charge(
        &m,
        &mut c,
        &unique("raw"),
        300,
        Method::Card(card("5555555555554444")),
    )
    .await;
    assert_eq!(raw.status, PaymentStatus::Succeeded as i32);
    assert_eq!(
        (raw.card_brand.as_str(), raw.card_last4.as_str()),
        ("mastercard", "4444")
    );
    assert!(raw.card_token.starts_with("tok_"));
    let unknown = charge(
        &m,
        &mut c,
        &unique("unk"),
        300,
        Method::CardToken("tok_unknown".into()),
    )
    .await;
    assert_eq!(unknown.status, PaymentStatus::Failed as i32);
    assert_eq!(unknown.decline_reason, DeclineReason::InvalidToken as i32);

    // Idempotent per order: the second charge (even with another amount) returns the first.
    let order = unique("idem");
    let first = charge(&m, &mut c, &order, 1000, Method::CardToken(ok.clone())).await;
    let second = charge(
        &m,
        &mut c,
        &order,
        999,
        Method::Card(card("4000000000000002")),
    )
    .await;
    assert_eq!(first, second);
    assert_eq!(m.processor_charges(&order).await, 1);
    assert_eq!(m.emitted("payment.succeeded", &order).await.len(), 1);
    let got = c
        .get_payment(bearer(
            &m.admin,
            GetPaymentRequest {
                id: first.id.clone(),
            },
        ))
        .await
        .expect("get")
        .into_inner()
        .payment
        .expect("payment");
    assert_eq!(got, first);

    // Refunds: partial, idempotent per key, never more than charged.
    let refund = |amount: Option<i64>, key: &str, reason: &str| RefundRequest {
        payment_id: first.id.clone(),
        amount: amount.and_then(eur),
        reason: reason.into(),
        idempotency_key: key.into(),
    };
    assert_invalid(
        c.refund(bearer(&m.service, refund(Some(100), "k", "")))
            .await,
        "reason",
    );
    assert_invalid(
        c.refund(bearer(&m.service, refund(Some(100), "", "r")))
            .await,
        "idempotency_key",
    );
    assert_invalid(
        c.refund(bearer(&m.service, refund(Some(0), "k", "r")))
            .await,
        "amount.amount_minor",
    );
    let mut usd = refund(Some(100), "k", "r");
    usd.amount = Some(Money {
        currency_code: "USD".into(),
        amount_minor: 100,
    });
    assert_invalid(
        c.refund(bearer(&m.service, usd)).await,
        "amount.currency_code",
    );
    let r1 = c
        .refund(bearer(&m.service, refund(Some(300), "r-1", "damaged")))
        .await
        .expect("refund")
        .into_inner();
    let refund1 = r1.refund.expect("refund");
    assert_eq!(refund1.status, TransactionStatus::Succeeded as i32);
    assert_eq!(
        r1.payment.as_ref().map(|p| p.status),
        Some(PaymentStatus::PartiallyRefunded as i32)
    );
    assert_eq!(r1.payment.and_then(|p| p.refunded_amount), eur(300));
    let again = c
        .refund(bearer(&m.service, refund(Some(300), "r-1", "damaged")))
        .await
        .expect("refund")
        .into_inner();
    assert_eq!(again.refund, Some(refund1.clone()), "same key, same refund");
    assert_eq!(
        code(
            c.refund(bearer(&m.service, refund(Some(701), "r-2", "too much")))
                .await
        ),
        Code::FailedPrecondition
    );
    let rest = c
        .refund(bearer(&m.admin, refund(None, "r-3", "the rest")))
        .await
        .expect("refund")
        .into_inner();
    assert_eq!(rest.refund.and_then(|r| r.amount), eur(700));
    let after = rest.payment.expect("payment");
    assert_eq!(after.status, PaymentStatus::Refunded as i32);
    assert_eq!(after.refunded_amount, eur(1000));
    assert_eq!(
        code(
            c.refund(bearer(&m.service, refund(Some(1), "r-4", "more")))
                .await
        ),
        Code::FailedPrecondition
    );
    assert_eq!(m.emitted("payment.refunded", &order).await.len(), 2);
    let mut on_failed = refund(Some(1), "r-5", "no");
    on_failed.payment_id = unknown.id.clone();
    assert_eq!(
        code(c.refund(bearer(&m.service, on_failed)).await),
        Code::FailedPrecondition
    );
    let mut on_missing = refund(Some(1), "r-6", "no");
    on_missing.payment_id = "missing".into();
    assert_eq!(
        code(c.refund(bearer(&m.service, on_missing)).await),
        Code::NotFound
    );

    // The ledger: one charge and two refunds for the order, newest first, paged.
    let list = |page_token: String| ListTransactionsRequest {
        page_size: 1,
        page_token,
        order_id: order.clone(),
        ..Default::default()
    };
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_transactions(bearer(&m.admin, list(token)))
            .await
            .expect("list")
            .into_inner();
        seen.extend(page.transactions);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let kinds: Vec<_> = seen
        .iter()
        .map(|t| (t.kind, t.amount.as_ref().map(|a| a.amount_minor)))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (TransactionKind::Refund as i32, Some(-700)),
            (TransactionKind::Refund as i32, Some(-300)),
            (TransactionKind::Charge as i32, Some(1000)),
        ]
    );
    assert!(
        seen.iter()
            .all(|t| t.payment_id == first.id && t.status == TransactionStatus::Succeeded as i32)
    );
    let by_payment = c
        .list_transactions(bearer(
            &m.service,
            ListTransactionsRequest {
                payment_id: first.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(by_payment.transactions.len(), 3);
    let all = c
        .list_transactions(bearer(
            &m.service,
            ListTransactionsRequest {
                customer_id: "cust-1".into(),
                page_size: 500,
                ..Default::default()
            },
        ))
        .await
        .expect("list")
        .into_inner();
    assert!(all.transactions.len() >= 10);
    assert_invalid(
        c.list_transactions(bearer(
            &m.admin,
            ListTransactionsRequest {
                page_token: "zzz".into(),
                ..Default::default()
            },
        ))
        .await,
        "page_token",
    );
    assert_invalid(
        c.list_transactions(bearer(
            &m.admin,
            ListTransactionsRequest {
                page_size: 501,
                ..Default::default()
            },
        ))
        .await,
        "page_size",
    );
    m.stop();
}

testing::on_sqlite_and_postgres!(
    #[tokio::test]
    every_rpc_and_test_card_on_sqlite,
    every_rpc_and_test_card_on_postgres,
    "payment rpcs",
    rpcs
);

async fn concurrent_charges(target: DatabaseTarget) {
    let m = start(target, None).await;
    let mut c = m.client().await;
    let token = tokenize(&mut c, &m.customer, "4242424242424242").await;
    let order = unique("race");
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let addr = m.instance.addr;
        let (auth, token, order) = (m.service.clone(), token.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = PaymentServiceClient::new(testing::channel(addr).await);
            c.charge(bearer(
                &auth,
                charge_req(&order, 800, Method::CardToken(token)),
            ))
            .await
            .map(|r| r.into_inner().payment.expect("payment"))
        }));
    }
    let mut ids = std::collections::BTreeSet::new();
    for t in tasks {
        match t.await.expect("task") {
            Ok(p) => {
                assert_eq!(p.status, PaymentStatus::Succeeded as i32);
                ids.insert(p.id);
            }
            Err(s) => assert!(
                matches!(s.code(), Code::Aborted | Code::Unavailable),
                "{s:?}"
            ),
        }
    }
    assert_eq!(ids.len(), 1, "one payment per order");
    assert_eq!(m.processor_charges(&order).await, 1, "one capture");
    assert_eq!(m.ledger(&order).await.len(), 1);
    assert_eq!(m.emitted("payment.succeeded", &order).await.len(), 1);
    m.stop();
}

testing::on_sqlite_and_postgres!(
    #[tokio::test]
    concurrent_charges_of_one_order_capture_once_on_sqlite,
    concurrent_charges_of_one_order_capture_once_on_postgres,
    "payment concurrent charges",
    concurrent_charges
);
