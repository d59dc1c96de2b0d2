//! The notification service over real gRPC with real tokens, a local webhook receiver (failing
//! first, then accepting) and a tiny SMTP listener: deliveries per channel for order.confirmed
//! and order.cancelled published on the bus, opt-outs respected (SUPPRESSED), webhook retries
//! with backoff, a webhook that always fails ending FAILED, redelivery (same id, same fact under a
//! new id) delivering once, templates, ad hoc sends, and bad input naming the field. SQLite +
//! in-process bus; Postgres + Redis when configured.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use mesh_auth::AuthSettings;
use mesh_contracts::common::v1::Money;
use mesh_contracts::events::v1::{OrderCancelled, OrderConfirmed};
use mesh_contracts::notification::v1::notification_service_client::NotificationServiceClient;
use mesh_contracts::notification::v1::*;
use mesh_notification::NotificationSettings;
use mesh_notification::secret::Secret;
use mesh_notification::settings::{SmtpSettings, SmtpTls};
use mesh_runtime::Database;
use mesh_runtime::bus::EventBus;
use mesh_runtime::config::DatabaseTarget;
use mesh_runtime::retry_policy::RetryPolicy;
use mesh_testkit::{self as testing, TestAuth, bearer, eventually};
use prost::Message as _;
use sqlx::Row as _;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel as GrpcChannel;

/// The key webhooks are signed with.
const WEBHOOK_KEY: &str = "notify-test-key-0123456789";

/// The webhook receiver: `/flaky/<name>` fails the first two posts per name, `/fail` always
/// fails, anything else accepts. Records accepted bodies per path.
#[derive(Clone, Default)]
struct Hooks {
    calls: Arc<Mutex<HashMap<String, usize>>>,
    accepted: Arc<Mutex<Vec<(String, serde_json::Value)>>>,
}

async fn hook(State(h): State<Hooks>, Path(path): Path<String>, body: String) -> StatusCode {
    let n = {
        let mut calls = h.calls.lock().unwrap();
        let n = calls.entry(path.clone()).or_default();
        *n += 1;
        *n
    };
    if path.starts_with("hang-once") && n == 1 {
        // Never answers the first post: the sender is cut off (crash) mid-send.
        futures_pending().await;
    }
    if path == "fail" || (path.starts_with("flaky") && n <= 2) {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    h.accepted
        .lock()
        .unwrap()
        .push((path, serde_json::from_str(&body).unwrap_or_default()));
    StatusCode::NO_CONTENT
}

async fn futures_pending() {
    tokio::time::sleep(Duration::from_secs(3600)).await;
}

async fn start_hooks() -> (SocketAddr, Hooks) {
    let hooks = Hooks::default();
    let app = axum::Router::new()
        .route("/{*path}", axum::routing::post(hook))
        .with_state(hooks.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, hooks)
}

/// A tiny SMTP server: accepts everything, records (recipient, data).
async fn start_smtp() -> (SocketAddr, Arc<Mutex<Vec<(String, String)>>>) {
    let mails = Arc::new(Mutex::new(Vec::new()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let store = mails.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let store = store.clone();
            tokio::spawn(async move {
                let _: Option<()> = async {
                    let (r, mut w) = stream.into_split();
                    let mut r = BufReader::new(r);
                    w.write_all(b"220 test smtp\r\n").await.ok()?;
                    let (mut to, mut data, mut in_data) = (String::new(), String::new(), false);
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).await.ok()? == 0 {
                            return None;
                        }
                        if in_data {
                            if line == ".\r\n" {
                                in_data = false;
                                store.lock().unwrap().push((to.clone(), data.clone()));
                                w.write_all(b"250 queued\r\n").await.ok()?;
                            } else {
                                data.push_str(&line);
                            }
                            continue;
                        }
                        let reply: &[u8] = match line.get(..4).unwrap_or_default() {
                            "EHLO" => b"250-test\r\n250 OK\r\n",
                            "RCPT" => {
                                to = line.trim_end()[9..].trim_matches(['<', '>']).to_string();
                                b"250 OK\r\n"
                            }
                            "DATA" => {
                                in_data = true;
                                b"354 go\r\n"
                            }
                            "QUIT" => {
                                w.write_all(b"221 bye\r\n").await.ok()?;
                                return None;
                            }
                            _ => b"250 OK\r\n",
                        };
                        w.write_all(reply).await.ok()?;
                    }
                }
                .await;
            });
        }
    });
    (addr, mails)
}

struct Mesh {
    auth: TestAuth,
    db: Database,
    bus: Arc<dyn EventBus>,
    addr: SocketAddr,
    admin: String,
    customer: String,
    hooks: Hooks,
    hooks_addr: SocketAddr,
    mails: Arc<Mutex<Vec<(String, String)>>>,
    shutdown: CancellationToken,
}

/// Builds and serves one notification instance over `db` and `bus`.
async fn start_instance(
    auth: &TestAuth,
    db: &Database,
    bus: &Arc<dyn EventBus>,
    settings: NotificationSettings,
) -> (SocketAddr, CancellationToken) {
    let served = testing::start(
        "notification",
        BTreeMap::from([("auth", auth.uri())]),
        db,
        bus,
        |ctx| mesh_notification::build_with(ctx, settings),
    )
    .await;
    (served.addr, served.shutdown)
}

async fn start(target: DatabaseTarget, redis: Option<&str>) -> Mesh {
    start_with(target, redis, Duration::from_secs(2)).await
}

async fn start_with(target: DatabaseTarget, redis: Option<&str>, send_timeout: Duration) -> Mesh {
    let auth = TestAuth::start(&testing::sqlite(), AuthSettings::default()).await;
    let db = testing::database("notification", &target, &mesh_notification::MIGRATIONS).await;
    let bus = testing::bus("mesh-notif", redis);
    let (hooks_addr, hooks) = start_hooks().await;
    let (smtp_addr, mails) = start_smtp().await;
    let settings = NotificationSettings {
        webhook_url: Some(format!("http://{hooks_addr}/global")),
        // The local receivers speak plain http and SMTP (outbound_tls.rs covers TLS).
        webhook_allow_http: true,
        webhook_secret: Some(Secret::Value(WEBHOOK_KEY.into())),
        webhook_ca_file: None,
        smtp: Some(SmtpSettings::new(
            "127.0.0.1",
            smtp_addr.port(),
            SmtpTls::None,
        )),
        smtp_from: "shop@example.com".into(),
        retry: RetryPolicy {
            max_attempts: 4,
            retry_backoff: Duration::from_millis(20),
            poll_interval: Duration::from_millis(50),
            ..NotificationSettings::default().retry
        },
        send_timeout,
    };
    let (addr, shutdown) = start_instance(&auth, &db, &bus, settings).await;
    let admin = auth.admin_token().await;
    let customer = auth.customer_token().await;
    Mesh {
        auth,
        db,
        bus,
        addr,
        admin,
        customer,
        hooks,
        hooks_addr,
        mails,
        shutdown,
    }
}

impl Mesh {
    async fn client(&self) -> NotificationServiceClient<GrpcChannel> {
        NotificationServiceClient::new(testing::channel(self.addr).await)
    }

    async fn publish(
        &self,
        id: &str,
        event_type: &str,
        subject: &str,
        name: &str,
        msg: &impl prost::Message,
    ) {
        testing::publish_with_id(self.bus.as_ref(), id, event_type, subject, name, msg).await;
    }

    async fn deliveries(&self, event_type: &str) -> Vec<Delivery> {
        self.client()
            .await
            .list_deliveries(bearer(
                &self.admin,
                ListDeliveriesRequest {
                    event_type: event_type.into(),
                    page_size: 500,
                    ..Default::default()
                },
            ))
            .await
            .expect("list deliveries")
            .into_inner()
            .deliveries
    }

    async fn emitted(&self, event_type: &str) -> usize {
        sqlx::query("SELECT COUNT(*) AS n FROM mesh_outbox WHERE event_type = $1")
            .bind(event_type)
            .fetch_one(self.db.pool())
            .await
            .expect("outbox")
            .get::<i64, _>("n") as usize
    }

    async fn handled(&self) -> i64 {
        sqlx::query("SELECT COUNT(*) AS n FROM mesh_handled_events")
            .fetch_one(self.db.pool())
            .await
            .expect("handled")
            .get("n")
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

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    })
}

fn by_channel(ds: &[Delivery], order: &str) -> BTreeMap<i32, Delivery> {
    ds.iter()
        .filter(|d| d.body.contains(order))
        .map(|d| (d.channel, d.clone()))
        .collect()
}

async fn notifications(target: DatabaseTarget, redis: Option<&str>) {
    let m = start(target, redis).await;
    let mut c = m.client().await;
    let (alice, bob) = (testing::unique("alice"), testing::unique("bob"));

    // Emails are the user service's: its user.updated snapshots (an older version never
    // overwrites a newer one).
    for (user, email, version) in [
        (&alice, "alice@example.com", 2),
        (&alice, "stale@example.com", 1),
        (&bob, "bob@example.com", 1),
    ] {
        let before = m.handled().await;
        m.publish(
            &uuid::Uuid::now_v7().to_string(),
            "user.updated",
            user,
            "UserUpdated",
            &mesh_contracts::events::v1::UserUpdated {
                user_id: user.clone(),
                email: email.into(),
                version,
                ..Default::default()
            },
        )
        .await;
        eventually("user.updated handled", || async {
            m.handled().await > before
        })
        .await;
    }
    // Preferences: alice has her own (flaky) webhook; bob opts out of webhook and email. Users
    // manage their own only.
    let prefs = |user: &str, email: &str, hook: &str, out: Vec<i32>| UpdatePreferencesRequest {
        preferences: Some(Preferences {
            user_id: user.into(),
            opted_out_channels: out,
            email: email.into(),
            webhook_url: hook.into(),
            ..Default::default()
        }),
        update_mask: mask(&["webhook_url", "opted_out_channels"]),
    };
    let flaky = format!("http://{}/flaky-{alice}", m.hooks_addr);
    c.update_preferences(bearer(
        &m.admin,
        prefs(&alice, "alice@example.com", &flaky, vec![]),
    ))
    .await
    .expect("alice prefs");
    let b = c
        .update_preferences(bearer(
            &m.admin,
            prefs(
                &bob,
                "bob@example.com",
                "",
                vec![Channel::Webhook as i32, Channel::Email as i32],
            ),
        ))
        .await
        .expect("bob prefs")
        .into_inner()
        .preferences
        .expect("prefs");
    assert_eq!(
        b.opted_out_channels,
        vec![Channel::Webhook as i32, Channel::Email as i32]
    );
    let got = c
        .get_preferences(bearer(
            &m.admin,
            GetPreferencesRequest {
                user_id: bob.clone(),
            },
        ))
        .await
        .expect("get")
        .into_inner()
        .preferences
        .expect("prefs");
    assert_eq!(got.email, "bob@example.com");
    assert_eq!(
        c.get_preferences(bearer(
            &m.customer,
            GetPreferencesRequest {
                user_id: bob.clone()
            }
        ))
        .await
        .expect_err("not hers")
        .code(),
        Code::PermissionDenied
    );

    // order.confirmed for alice: LOG, WEBHOOK (after two failures) and EMAIL, each once.
    let o1 = testing::unique("o1");
    let confirmed = OrderConfirmed {
        order_id: o1.clone(),
        customer_id: alice.clone(),
        payment_id: "pay-1".into(),
        total: Some(Money {
            currency_code: "EUR".into(),
            amount_minor: 4200,
        }),
        ..Default::default()
    };
    let first_id = uuid::Uuid::now_v7().to_string();
    m.publish(
        &first_id,
        "order.confirmed",
        &o1,
        "OrderConfirmed",
        &confirmed,
    )
    .await;
    eventually("alice's three deliveries sent", || async {
        let ds = by_channel(&m.deliveries("order.confirmed").await, &o1);
        ds.len() == 3 && ds.values().all(|d| d.status == DeliveryStatus::Sent as i32)
    })
    .await;
    let ds = by_channel(&m.deliveries("order.confirmed").await, &o1);
    let webhook = &ds[&(Channel::Webhook as i32)];
    assert_eq!(webhook.attempts, 3, "two failures, then accepted");
    assert_eq!(webhook.recipient, flaky);
    assert_eq!(ds[&(Channel::Log as i32)].attempts, 1);
    let email = &ds[&(Channel::Email as i32)];
    assert_eq!(email.recipient, "alice@example.com");
    assert!(email.body.contains("4200 EUR"), "{}", email.body);
    assert!(email.sent_time.is_some() && email.event_id == first_id);
    {
        let mails = m.mails.lock().unwrap();
        assert_eq!(mails.len(), 1);
        assert_eq!(mails[0].0, "alice@example.com");
        assert!(
            mails[0]
                .1
                .contains(&format!("Subject: Your order {o1} is confirmed")),
            "{}",
            mails[0].1
        );
    }
    let accepted: Vec<_> = m
        .hooks
        .accepted
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, _)| p.contains(&alice))
        .cloned()
        .collect();
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0].1["delivery_id"], webhook.id.as_str());

    // Redelivery: the same event id, and the same fact under a new id: no second delivery.
    let before = m.handled().await;
    m.publish(
        &first_id,
        "order.confirmed",
        &o1,
        "OrderConfirmed",
        &confirmed,
    )
    .await;
    m.publish(
        &uuid::Uuid::now_v7().to_string(),
        "order.confirmed",
        &o1,
        "OrderConfirmed",
        &confirmed,
    )
    .await;
    eventually("the new id handled", || async {
        m.handled().await > before
    })
    .await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        by_channel(&m.deliveries("order.confirmed").await, &o1).len(),
        3
    );
    assert_eq!(m.deliveries("order.confirmed").await.len(), 3);
    assert_eq!(m.mails.lock().unwrap().len(), 1, "one email");
    assert_eq!(m.emitted("notification.sent").await, 3);

    // order.cancelled for bob: LOG sent; WEBHOOK (the global one) and EMAIL suppressed.
    let o2 = testing::unique("o2");
    let cancelled = OrderCancelled {
        order_id: o2.clone(),
        customer_id: bob.clone(),
        reason: 4,
        detail: "Your card was declined.".into(),
        ..Default::default()
    };
    m.publish(
        &uuid::Uuid::now_v7().to_string(),
        "order.cancelled",
        &o2,
        "OrderCancelled",
        &cancelled,
    )
    .await;
    eventually("bob's log delivery sent", || async {
        let ds = by_channel(&m.deliveries("order.cancelled").await, &o2);
        ds.get(&(Channel::Log as i32))
            .is_some_and(|d| d.status == DeliveryStatus::Sent as i32)
    })
    .await;
    let ds = by_channel(&m.deliveries("order.cancelled").await, &o2);
    assert_eq!(ds.len(), 3);
    assert!(
        ds[&(Channel::Log as i32)]
            .body
            .contains("CANCEL_REASON_PAYMENT_FAILED"),
        "{}",
        ds[&(Channel::Log as i32)].body
    );
    for ch in [Channel::Webhook, Channel::Email] {
        assert_eq!(
            ds[&(ch as i32)].status,
            DeliveryStatus::Suppressed as i32,
            "{ch:?}"
        );
        assert_eq!(ds[&(ch as i32)].attempts, 0);
    }
    assert!(
        m.hooks
            .accepted
            .lock()
            .unwrap()
            .iter()
            .all(|(p, _)| p != "global"),
        "nothing posted for bob"
    );
    // Users see their own deliveries only; staff see all.
    assert_eq!(
        c.list_deliveries(bearer(
            &m.customer,
            ListDeliveriesRequest {
                user_id: bob.clone(),
                ..Default::default()
            }
        ))
        .await
        .expect_err("not hers")
        .code(),
        Code::PermissionDenied
    );
    let bobs = c
        .list_deliveries(bearer(
            &m.admin,
            ListDeliveriesRequest {
                user_id: bob.clone(),
                page_size: 1,
                ..Default::default()
            },
        ))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(bobs.deliveries.len(), 1);
    let rest = c
        .list_deliveries(bearer(
            &m.admin,
            ListDeliveriesRequest {
                user_id: bob.clone(),
                page_token: bobs.next_page_token,
                ..Default::default()
            },
        ))
        .await
        .expect("page 2")
        .into_inner();
    assert_eq!(rest.deliveries.len(), 2);

    // A webhook that always fails: FAILED after MESH_NOTIFICATION_MAX_ATTEMPTS, notification.failed.
    let send = |channel: Channel, recipient: &str, body: &str, key: &str| SendNotificationRequest {
        user_id: String::new(),
        recipient: recipient.into(),
        channel: channel as i32,
        subject: "hello".into(),
        body: body.into(),
        idempotency_key: key.into(),
    };
    let failing = c
        .send_notification(bearer(
            &m.admin,
            send(
                Channel::Webhook,
                &format!("http://{}/fail", m.hooks_addr),
                "doomed",
                "",
            ),
        ))
        .await
        .expect("send")
        .into_inner()
        .delivery
        .expect("delivery");
    assert_eq!(failing.status, DeliveryStatus::Queued as i32);
    eventually("the failing webhook given up", || async {
        m.emitted("notification.failed").await == 1
    })
    .await;
    let failed = c
        .list_deliveries(bearer(
            &m.admin,
            ListDeliveriesRequest {
                status: DeliveryStatus::Failed as i32,
                ..Default::default()
            },
        ))
        .await
        .expect("list")
        .into_inner()
        .deliveries;
    assert_eq!(failed.len(), 1);
    assert_eq!(
        (failed[0].id.as_str(), failed[0].attempts),
        (failing.id.as_str(), 4)
    );
    assert!(
        failed[0].last_error.contains("500"),
        "{}",
        failed[0].last_error
    );

    // Ad hoc sends: idempotent per key; a user's opt-out applies to their own address.
    let once = c
        .send_notification(bearer(&m.admin, send(Channel::Log, "ops", "hi", "k-1")))
        .await
        .expect("send")
        .into_inner()
        .delivery
        .expect("d");
    let twice = c
        .send_notification(bearer(&m.admin, send(Channel::Log, "ops", "hi", "k-1")))
        .await
        .expect("send")
        .into_inner()
        .delivery
        .expect("d");
    assert_eq!(once.id, twice.id);
    let mut to_bob = send(Channel::Email, "", "promo", "");
    to_bob.user_id = bob.clone();
    let suppressed = c
        .send_notification(bearer(&m.admin, to_bob))
        .await
        .expect("send")
        .into_inner()
        .delivery
        .expect("d");
    assert_eq!(suppressed.status, DeliveryStatus::Suppressed as i32);
    assert_eq!(
        c.send_notification(bearer(&m.customer, send(Channel::Log, "ops", "hi", "")))
            .await
            .expect_err("staff only")
            .code(),
        Code::PermissionDenied
    );

    // Templates: the defaults, replacing one, paging.
    let list = c
        .list_templates(bearer(
            &m.admin,
            ListTemplatesRequest {
                event_type: "order.confirmed".into(),
                ..Default::default()
            },
        ))
        .await
        .expect("templates")
        .into_inner();
    assert_eq!(list.templates.len(), 3);
    let upsert = |event_type: &str, channel: i32, body: &str| UpsertTemplateRequest {
        template: Some(Template {
            event_type: event_type.into(),
            channel,
            body: body.into(),
            subject: "S".into(),
            enabled: true,
            ..Default::default()
        }),
    };
    let r = c
        .upsert_template(bearer(
            &m.admin,
            upsert("order.confirmed", Channel::Log as i32, "Done: {{order_id}}"),
        ))
        .await
        .expect("upsert")
        .into_inner();
    assert!(r.replaced);
    let r = c
        .upsert_template(bearer(
            &m.admin,
            upsert(
                "payment.refunded",
                Channel::Log as i32,
                "Refunded {{amount.amount_minor}}",
            ),
        ))
        .await
        .expect("upsert")
        .into_inner();
    assert!(!r.replaced);
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_templates(bearer(
                &m.admin,
                ListTemplatesRequest {
                    page_size: 2,
                    page_token: token,
                    ..Default::default()
                },
            ))
            .await
            .expect("page")
            .into_inner();
        all.extend(page.templates);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    // The 9 built-in ones (order.confirmed, order.cancelled, order.refunded on 3 channels) and
    // the new one.
    assert_eq!(all.len(), 10);

    // Bad input names the field.
    assert_invalid(
        c.upsert_template(bearer(&m.admin, upsert("order.confirmed", 0, "x")))
            .await,
        "template.channel",
    );
    assert_invalid(
        c.upsert_template(bearer(&m.admin, upsert("order.confirmed", 99, "x")))
            .await,
        "template.channel",
    );
    assert_invalid(
        c.upsert_template(bearer(&m.admin, upsert("order.confirmed", 1, "  ")))
            .await,
        "template.body",
    );
    assert_invalid(
        c.upsert_template(bearer(&m.admin, upsert("Order", 1, "x")))
            .await,
        "template.event_type",
    );
    assert_invalid(
        c.upsert_template(bearer(&m.admin, UpsertTemplateRequest { template: None }))
            .await,
        "template",
    );
    assert_invalid(
        c.send_notification(bearer(
            &m.admin,
            send(Channel::Unspecified, "ops", "hi", ""),
        ))
        .await,
        "channel",
    );
    let mut unknown = send(Channel::Log, "ops", "hi", "");
    unknown.channel = 42;
    assert_invalid(
        c.send_notification(bearer(&m.admin, unknown)).await,
        "channel",
    );
    assert_invalid(
        c.send_notification(bearer(&m.admin, send(Channel::Log, "ops", "", "")))
            .await,
        "body",
    );
    assert_invalid(
        c.send_notification(bearer(&m.admin, send(Channel::Log, "", "hi", "")))
            .await,
        "recipient",
    );
    assert_invalid(
        c.send_notification(bearer(
            &m.admin,
            send(Channel::Webhook, "ftp://x.example/h", "hi", ""),
        ))
        .await,
        "recipient",
    );
    assert_invalid(
        c.send_notification(bearer(
            &m.admin,
            send(Channel::Email, "not-an-email", "hi", ""),
        ))
        .await,
        "recipient",
    );
    let mut bad = prefs(&alice, "", "", vec![]);
    bad.update_mask = mask(&["colour"]);
    assert_invalid(
        c.update_preferences(bearer(&m.admin, bad)).await,
        "update_mask",
    );
    let mut bad = prefs(&alice, "", "", vec![]);
    bad.update_mask = None;
    assert_invalid(
        c.update_preferences(bearer(&m.admin, bad)).await,
        "update_mask",
    );
    let mut bad = prefs(&alice, "", "", vec![]);
    if let Some(p) = bad.preferences.as_mut() {
        p.muted_event_types = vec!["order.confirmed".into()];
    }
    bad.update_mask = mask(&["muted_event_types"]);
    assert_invalid(
        c.update_preferences(bearer(&m.admin, bad)).await,
        "preferences.muted_event_types[0]",
    );
    // The email is output only: the user service's.
    let mut own_email = prefs(&alice, "alice@elsewhere.example", "", vec![]);
    own_email.update_mask = mask(&["email"]);
    assert_invalid(
        c.update_preferences(bearer(&m.admin, own_email)).await,
        "preferences.email",
    );
    assert_invalid(
        c.update_preferences(bearer(&m.admin, prefs(&alice, "", "", vec![7])))
            .await,
        "preferences.opted_out_channels[0]",
    );
    assert_invalid(
        c.get_preferences(bearer(
            &m.admin,
            GetPreferencesRequest {
                user_id: String::new(),
            },
        ))
        .await,
        "user_id",
    );
    assert_invalid(
        c.list_deliveries(bearer(
            &m.admin,
            ListDeliveriesRequest {
                page_token: "!!".into(),
                ..Default::default()
            },
        ))
        .await,
        "page_token",
    );

    // Erasure: user.deleted leaves no trace of alice's email or webhook in notification, and
    // a late snapshot does not bring the email back.
    for (event_type, name, payload) in [
        (
            "user.deleted",
            "UserDeleted",
            mesh_contracts::events::v1::UserDeleted {
                user_id: alice.clone(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "user.updated",
            "UserUpdated",
            mesh_contracts::events::v1::UserUpdated {
                user_id: alice.clone(),
                email: "alice@example.com".into(),
                version: 9,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
    ] {
        let before = m.handled().await;
        let mut envelope = testing::envelope(event_type, &alice, name, &());
        envelope.payload.as_mut().expect("payload").value = payload;
        testing::publish(m.bus.as_ref(), &envelope).await;
        eventually("handled", || async { m.handled().await > before }).await;
    }
    for table in ["contacts", "preferences", "deliveries", "mesh_outbox"] {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT * FROM {table}")))
            .fetch_all(m.db.pool())
            .await
            .expect("rows");
        for row in rows {
            for i in 0..row.len() {
                let text = row
                    .try_get::<String, _>(i)
                    .map(String::into_bytes)
                    .or_else(|_| row.try_get::<Vec<u8>, _>(i))
                    .unwrap_or_default();
                let needle: &[&[u8]] = &[b"alice@example.com", flaky.as_bytes()];
                for n in needle {
                    assert!(
                        !text.windows(n.len()).any(|w| w == *n),
                        "{table} column {i} still holds {}",
                        String::from_utf8_lossy(n)
                    );
                }
            }
        }
    }
    let got = c
        .get_preferences(bearer(
            &m.admin,
            GetPreferencesRequest {
                user_id: alice.clone(),
            },
        ))
        .await
        .expect("get")
        .into_inner()
        .preferences
        .expect("prefs");
    assert_eq!((got.email.as_str(), got.webhook_url.as_str()), ("", ""));

    m.shutdown.cancel();
    m.auth.shutdown.cancel();
}

#[tokio::test]
async fn deliveries_per_channel_opt_outs_retries_and_redelivery_on_sqlite() {
    notifications(testing::sqlite(), None).await;
}

#[tokio::test]
async fn deliveries_per_channel_opt_outs_retries_and_redelivery_on_postgres_and_redis() {
    let (Some(target), Some(redis)) = (
        testing::postgres("notification"),
        testing::redis("notification"),
    ) else {
        return;
    };
    notifications(target, Some(&redis)).await;
}

/// A crash mid-send (the instance dropped while its webhook post hangs, then rebuilt on the same
/// database) neither loses nor duplicates the delivery record: after the lease the new instance
/// sends it again (at-least-once on the wire) and finishes it once.
async fn crash_mid_send(target: DatabaseTarget) {
    let mut m = start_with(target, None, Duration::from_millis(300)).await;
    let user = testing::unique("carol");
    let hook = format!("http://{}/hang-once-{user}", m.hooks_addr);
    let order = testing::unique("o3");
    let confirmed = OrderConfirmed {
        order_id: order.clone(),
        customer_id: user.clone(),
        ..Default::default()
    };
    m.client()
        .await
        .update_preferences(bearer(
            &m.admin,
            UpdatePreferencesRequest {
                preferences: Some(Preferences {
                    user_id: user.clone(),
                    webhook_url: hook,
                    ..Default::default()
                }),
                update_mask: mask(&["webhook_url"]),
            },
        ))
        .await
        .expect("prefs");
    m.publish(
        &uuid::Uuid::now_v7().to_string(),
        "order.confirmed",
        &order,
        "OrderConfirmed",
        &confirmed,
    )
    .await;
    eventually("the hanging post started", || async {
        m.hooks
            .calls
            .lock()
            .unwrap()
            .keys()
            .any(|k| k.contains(&user))
    })
    .await;
    // Crash and restart on the same database and bus.
    m.shutdown.cancel();
    let settings = NotificationSettings {
        webhook_url: None,
        webhook_allow_http: true,
        webhook_secret: Some(Secret::Value(WEBHOOK_KEY.into())),
        send_timeout: Duration::from_millis(300),
        retry: RetryPolicy {
            retry_backoff: Duration::from_millis(20),
            poll_interval: Duration::from_millis(50),
            ..NotificationSettings::default().retry
        },
        ..NotificationSettings::default()
    };
    let (addr, shutdown) = start_instance(&m.auth, &m.db, &m.bus, settings).await;
    (m.addr, m.shutdown) = (addr, shutdown);
    eventually("the webhook delivery sent after the restart", || async {
        by_channel(&m.deliveries("order.confirmed").await, &order)
            .get(&(Channel::Webhook as i32))
            .is_some_and(|d| d.status == DeliveryStatus::Sent as i32)
    })
    .await;
    let ds = by_channel(&m.deliveries("order.confirmed").await, &order);
    assert_eq!(ds.len(), 2, "log and webhook, one record each");
    assert_eq!(
        ds[&(Channel::Webhook as i32)].attempts,
        2,
        "the cut-off attempt and the resend"
    );
    let accepted = m
        .hooks
        .accepted
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, _)| p.contains(&user))
        .count();
    assert_eq!(accepted, 1);
    assert_eq!(m.emitted("notification.sent").await, 2);
    m.shutdown.cancel();
    m.auth.shutdown.cancel();
}

testing::on_sqlite_and_postgres!(
    #[tokio::test]
    a_crash_mid_send_keeps_one_delivery_record_on_sqlite,
    a_crash_mid_send_keeps_one_delivery_record_on_postgres,
    "notification crash",
    crash_mid_send
);
