//! Deliveries inserted already claimed (`store::insert_deliveries`), on SQLite and (when
//! `MESH_TEST_DATABASE_URL` is set) Postgres: a QUEUED one comes back as a claim returns it and
//! no scan takes it while leased; once the lease ran out (its worker died) a scan finds it and
//! a claim counts the second attempt. A SUPPRESSED one is neither leased nor ever due.

use mesh_contracts::notification::v1::{Channel, Delivery, DeliveryStatus};
use mesh_notification::store;
use mesh_runtime::Database;

fn delivery(channel: Channel, status: DeliveryStatus) -> Delivery {
    Delivery {
        id: mesh_testkit::unique("d"),
        user_id: "u-1".into(),
        channel: channel as i32,
        recipient: "log".into(),
        event_id: "e-1".into(),
        event_type: "order.confirmed".into(),
        template_id: "t-1".into(),
        subject: "s".into(),
        body: "b".into(),
        status: status as i32,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_leased_delivery_whose_worker_died_is_scanned_after_the_lease() {
    for (name, target) in mesh_testkit::databases("leased delivery") {
        let db = Database::connect("notification", &target)
            .await
            .expect("connect");
        db.migrate(&mesh_notification::MIGRATIONS)
            .await
            .expect("migrate");
        let queued = delivery(Channel::Log, DeliveryStatus::Queued);
        let suppressed = delivery(Channel::Webhook, DeliveryStatus::Suppressed);
        let now = store::now_micros();
        let lease_until = now + 20_000_000;
        let mut tx = db.begin().await.unwrap();
        let rows = store::insert_deliveries(
            &mut tx,
            &[
                (&queued, Some("k:log".into())),
                (&suppressed, Some("k:webhook".into())),
            ],
            "",
            lease_until,
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        let by_id = |id: &str| {
            rows.iter()
                .find(|r| r.delivery.id == id)
                .unwrap_or_else(|| panic!("{name}: {id} not returned"))
        };
        assert_eq!(rows.len(), 2, "{name}");
        assert_eq!(by_id(&queued.id).delivery.attempts, 1, "{name}: claimed");
        assert_eq!(by_id(&suppressed.id).delivery.attempts, 0, "{name}");

        let mut c = db.acquire().await.unwrap();
        // Leased: no scan takes it; once the lease ran out (its worker died) a scan does, and
        // never the suppressed one.
        let later = lease_until + 1;
        for (at, due) in [(now, vec![]), (later, vec![queued.id.clone()])] {
            assert_eq!(store::due(&mut c, at, 10).await.unwrap(), due, "{name}");
        }
        let claimed = store::claim(&mut c, &queued.id, later, later + 20_000_000, false)
            .await
            .unwrap()
            .expect("claimed after the lease");
        assert_eq!(claimed.delivery.attempts, 2, "{name}: the second attempt");
    }
}
