//! The saga's charge inserted already claimed (`store::insert_leased_payment`), on SQLite and
//! (when `MESH_TEST_DATABASE_URL` is set) Postgres: it comes back as a claim returns it, no scan
//! takes it while leased, and once the lease ran out (its worker died) a scan finds and claims
//! it, counting the second attempt.

use mesh_contracts::payment::v1::{DeclineReason, PaymentStatus};
use mesh_payment::store::{self, CardRow, PaymentRow};
use mesh_runtime::Database;

fn pending(order: &str, token: &str, now: i64) -> PaymentRow {
    PaymentRow {
        id: mesh_testkit::unique("pay"),
        order_id: order.into(),
        customer_id: "c-1".into(),
        currency: "EUR".into(),
        amount_minor: 4200,
        refund_held_minor: 0,
        refunded_minor: 0,
        status: PaymentStatus::Pending,
        decline_reason: DeclineReason::Unspecified,
        decline_message: String::new(),
        card_token: token.into(),
        card_brand: String::new(),
        card_last4: String::new(),
        provider_reference: String::new(),
        description: String::new(),
        traceparent: String::new(),
        attempts: 0,
        created_at: now,
        updated_at: now,
    }
}

#[tokio::test]
async fn a_leased_charge_whose_worker_died_is_scanned_after_the_lease() {
    for (name, target) in mesh_testkit::databases("leased charge") {
        let db = Database::connect("payment", &target)
            .await
            .expect("connect");
        db.migrate(&mesh_payment::MIGRATIONS)
            .await
            .expect("migrate");
        let card = CardRow {
            token: "tok_1".into(),
            provider_ref: "card_ref_1".into(),
            brand: "visa".into(),
            last4: "4242".into(),
        };
        let mut c = db.acquire().await.unwrap();
        store::insert_card(&mut c, &card, 12, 2040).await.unwrap();
        drop(c);

        let now = store::now_micros();
        let lease_until = now + 20_000_000;
        let p = pending("o-1", &card.token, now);
        let mut tx = db.begin().await.unwrap();
        let (row, card_ref) = store::insert_leased_payment(&mut tx, &p, now, lease_until)
            .await
            .unwrap()
            .expect("inserted");
        // The order has its payment: a second request inserts nothing.
        let again = pending("o-1", &card.token, now);
        assert!(
            store::insert_leased_payment(&mut tx, &again, now, lease_until)
                .await
                .unwrap()
                .is_none(),
            "{name}"
        );
        tx.commit().await.unwrap();
        // What a claim returns: the first attempt counted, the card's brand and reference.
        assert_eq!(row.id, p.id, "{name}");
        assert_eq!(row.attempts, 1, "{name}");
        assert_eq!(row.status, PaymentStatus::Pending, "{name}");
        assert_eq!(
            (row.card_brand.as_str(), row.card_last4.as_str()),
            ("visa", "4242")
        );
        assert_eq!(card_ref, "card_ref_1", "{name}");

        let mut c = db.acquire().await.unwrap();
        // Leased: no scan (of any replica) takes it, and a worker's claim refuses it; once the
        // lease ran out (its worker died) the scan finds it and claims it again.
        let refused = store::claim_payment(&mut c, &p.id, now, now + 20_000_000, true).await;
        assert!(refused.unwrap().is_none(), "{name}: claimed while leased");
        let later = lease_until + 1;
        for (at, due) in [(now, vec![]), (later, vec![p.id.clone()])] {
            assert_eq!(
                store::due_payments(&mut c, at, 10).await.unwrap(),
                due,
                "{name}"
            );
        }
        let (claimed, _) = store::claim_payment(&mut c, &p.id, later, later + 20_000_000, true)
            .await
            .unwrap()
            .expect("claimed after the lease");
        assert_eq!(claimed.attempts, 2, "{name}: the second attempt");
        // An attempt was counted: a cancellation cannot void it (the provider may be called).
        assert!(
            !store::void_unattempted(&mut c, &p.id).await.unwrap(),
            "{name}"
        );
    }
}
