//! End-to-end right to erasure on the embedded default (`mesh serve all`: SQLite files, the
//! in-process bus): a customer signs up (auth), gets a profile (user, from `user.registered`),
//! saves an address, orders with a shipping address, and is told by email (notification, with
//! the email it took from user's `user.updated`). Then `DeleteUser`: afterwards no table of ANY
//! service's database holds the email in any text or blob column (outboxes included), the
//! customer's login is gone, the order keeps no shipping address, and user's audit trail says
//! the erasure happened.

use std::process::Command;
use std::time::Duration;

use mesh_contracts::audit::v1::ListEventsRequest;
use mesh_contracts::audit::v1::audit_service_client::AuditServiceClient;
use mesh_contracts::auth::v1::auth_service_client::AuthServiceClient;
use mesh_contracts::auth::v1::{LoginRequest, SignUpRequest};
use mesh_contracts::common::v1::PostalAddress;
use mesh_contracts::notification::v1::notification_service_client::NotificationServiceClient;
use mesh_contracts::notification::v1::{Channel as NotifyChannel, ListDeliveriesRequest};
use mesh_contracts::order::v1::order_service_client::OrderServiceClient;
use mesh_contracts::order::v1::{GetOrderRequest, OrderStatus, PlaceOrderRequest};
use mesh_contracts::user::v1::user_service_client::UserServiceClient;
use mesh_contracts::user::v1::{
    Address, DeleteUserRequest, GetUserRequest, UpdateUserRequest, User,
};
use mesh_runtime::Database;
use mesh_runtime::config::{DatabaseTarget, env_prefix};
use mesh_testkit::process::MeshProcess;
use mesh_testkit::{bearer, eventually_within, walkthrough};
use sqlx::Row as _;
use tonic::transport::Channel;

const MESH: &str = env!("CARGO_BIN_EXE_mesh");
const ADMIN: &str = "erasure-admin@example.com";
const PASSWORD: &str = "correct horse battery";

fn module_names() -> Vec<String> {
    let out = Command::new(MESH)
        .args(["modules", "--json"])
        .output()
        .unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect()
}

async fn channel(mesh: &MeshProcess, name: &str) -> Channel {
    Channel::from_shared(format!("http://{}", mesh.addr(name)))
        .unwrap()
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect {name}: {e}"))
}

/// Every `(database file, table, column)` whose text or bytes contain `needle`.
async fn copies(data: &std::path::Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(data).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("db") {
            continue;
        }
        let db = Database::connect("scan", &DatabaseTarget::Sqlite { path: path.clone() })
            .await
            .expect("open");
        let tables: Vec<String> = sqlx::query(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
        )
        .fetch_all(db.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| r.get("name"))
        .collect();
        for table in tables {
            let columns: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(format!(
                "PRAGMA table_info(\"{table}\")"
            )))
            .fetch_all(db.pool())
            .await
            .unwrap()
            .iter()
            .map(|r| r.get("name"))
            .collect();
            for column in columns {
                // Every value as its bytes: text, blobs (encoded envelopes) and numbers alike.
                let values = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT CAST(\"{column}\" AS BLOB) AS v FROM \"{table}\""
                )))
                .fetch_all(db.pool())
                .await
                .unwrap();
                if values.iter().any(|r| {
                    r.try_get::<Option<Vec<u8>>, _>("v")
                        .ok()
                        .flatten()
                        .is_some_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
                }) {
                    found.push(format!(
                        "{} {table}.{column}",
                        path.file_name().unwrap().to_string_lossy()
                    ));
                }
            }
        }
        db.close().await;
    }
    found
}

/// The user service's REST routes, derived by the edge from `google.api.http`, are in the
/// OpenAPI document. UpdateUser's `/v1/users/{user.id}` has the shape of GetUser's path, so it is
/// listed under `/v1/users/{id}` (OpenAPI forbids two paths differing only in names).
#[test]
fn user_routes_are_in_the_openapi_document() {
    let out = Command::new(MESH).arg("openapi").output().unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (path, method) in [
        ("/v1/users", "post"),
        ("/v1/users", "get"),
        ("/v1/users/{id}", "get"),
        ("/v1/users/{id}", "patch"),
        ("/v1/users/{id}", "delete"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} in `mesh openapi`"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_user_leaves_no_copy_of_the_email_in_any_service() {
    let data = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(MESH);
    cmd.args(["serve", "all"])
        .env("MESH_ADMIN_PORT", "0")
        .env("MESH_DATA_DIR", data.path())
        .env("MESH_LOG", "warn")
        .env("MESH_SERVICE_CLIENT_SECRET", "erasure-secret")
        .env("MESH_AUTH_BOOTSTRAP_ADMIN_EMAIL", ADMIN)
        // Emails are queued for the customer (the relay refuses: they stay in the log).
        .env("MESH_NOTIFICATION_SMTP_URL", "smtp://127.0.0.1:9")
        .env_remove("MESH_DATABASE_URL")
        .env_remove("MESH_REDIS_URL");
    for name in module_names() {
        cmd.env(format!("{}_PORT", env_prefix(&name)), "0");
    }
    let mesh = MeshProcess::start(cmd);
    let mut auth = AuthServiceClient::new(channel(&mesh, "auth").await);
    let sign_up = |email: &str| {
        let mut auth = auth.clone();
        let email = email.to_string();
        async move {
            auth.sign_up(SignUpRequest {
                email,
                password: PASSWORD.into(),
                marketing_consent: true,
                ..Default::default()
            })
            .await
            .expect("sign up")
            .into_inner()
        }
    };
    let admin = sign_up(ADMIN).await.tokens.unwrap().access_token;
    let product = walkthrough::create_cola(channel(&mesh, "product").await, &admin).await;
    walkthrough::restock(channel(&mesh, "inventory").await, &admin, &product, 10).await;

    let email = "erase.me.please@example.com";
    let signed = sign_up(email).await;
    let customer = signed.tokens.unwrap().access_token;
    let id = signed.account.unwrap().id;
    let users = UserServiceClient::new(channel(&mesh, "user").await);
    eventually_within(Duration::from_secs(20), "the profile is made", || {
        let (mut users, customer, id) = (users.clone(), customer.clone(), id.clone());
        async move {
            users
                .get_user(bearer(&customer, GetUserRequest { id }))
                .await
                .is_ok()
        }
    })
    .await;
    let home = PostalAddress {
        recipient_name: "Erin Erasure".into(),
        address_lines: vec!["1 Main St".into()],
        locality: "Berlin".into(),
        region_code: "DE".into(),
        ..Default::default()
    };
    users
        .clone()
        .update_user(bearer(
            &customer,
            UpdateUserRequest {
                user: Some(User {
                    id: id.clone(),
                    phone_number: "+4930123456".into(),
                    addresses: vec![Address {
                        label: "Home".into(),
                        postal_address: Some(home.clone()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                update_mask: Some(prost_types_mask(&["phone_number", "addresses"])),
            },
        ))
        .await
        .expect("UpdateUser");

    let mut orders = OrderServiceClient::new(channel(&mesh, "order").await);
    let order = orders
        .place_order(bearer(
            &customer,
            PlaceOrderRequest {
                shipping_address: Some(home),
                ..walkthrough::order("erasure-1", &product, 1)
            },
        ))
        .await
        .expect("PlaceOrder")
        .into_inner()
        .order
        .unwrap()
        .id;
    let notifications = NotificationServiceClient::new(channel(&mesh, "notification").await);
    // The confirmation email goes to the address notification took from the user service.
    eventually_within(
        Duration::from_secs(30),
        "the customer's email delivery",
        || {
            let (mut n, admin, id) = (notifications.clone(), admin.clone(), id.clone());
            async move {
                n.list_deliveries(bearer(
                    &admin,
                    ListDeliveriesRequest {
                        user_id: id,
                        ..Default::default()
                    },
                ))
                .await
                .is_ok_and(|r| {
                    r.into_inner()
                        .deliveries
                        .iter()
                        .any(|d| d.channel == NotifyChannel::Email as i32 && d.recipient == email)
                })
            }
        },
    )
    .await;
    let got = orders
        .get_order(bearer(&customer, GetOrderRequest { id: order.clone() }))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(got.status, OrderStatus::Confirmed as i32);
    let before = copies(data.path(), email).await;
    eprintln!("copies of the email before the erasure: {before:?}");
    assert!(!before.is_empty(), "the scan finds copies before");

    // Erasure.
    users
        .clone()
        .delete_user(bearer(&customer, DeleteUserRequest { id: id.clone() }))
        .await
        .expect("DeleteUser");
    eventually_within(
        Duration::from_secs(30),
        "no copy of the email is left",
        || async {
            let left = copies(data.path(), email).await;
            if !left.is_empty() {
                eprintln!("copies of the email left (yet): {left:?}");
            }
            left.is_empty()
        },
    )
    .await;

    // The account is disabled: no login with the old email or the password.
    let login = auth
        .login(LoginRequest {
            email: email.into(),
            password: PASSWORD.into(),
        })
        .await;
    assert_eq!(login.unwrap_err().code(), tonic::Code::Unauthenticated);
    // The order stays, without its shipping address.
    let got = orders
        .get_order(bearer(&admin, GetOrderRequest { id: order }))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(
        got.shipping_address.unwrap_or_default(),
        PostalAddress::default()
    );
    // The audit trail keeps that it happened.
    let trail = AuditServiceClient::new(channel(&mesh, "user").await)
        .list_events(bearer(
            &admin,
            ListEventsRequest {
                subject: id.clone(),
                ..Default::default()
            },
        ))
        .await
        .expect("audit")
        .into_inner()
        .events;
    assert!(
        trail.iter().any(|e| e.r#type == "user.deleted"),
        "{trail:?}"
    );
}

fn prost_types_mask(paths: &[&str]) -> prost_types::FieldMask {
    prost_types::FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    }
}
