//! Outbound TLS of notification against local servers with a test CA generated per test:
//! email through an SMTP relay speaking STARTTLS or implicit TLS with AUTH PLAIN/LOGIN (the
//! handshake, the credentials and the encoded UTF-8 message checked on the relay), a relay with
//! an untrusted certificate or without STARTTLS getting nothing (no plaintext fallback), SMTP
//! replies sorted into permanent and transient failures, a rotated password file; webhooks over
//! https whose signature the receiver checks as docs/security.md describes, an untrusted
//! receiver refused, plain http refused unless allowed; and through the running service, the
//! delivery queue failing a permanent error at once and retrying a certificate failure.

#[path = "outbound_tls/pki.rs"]
mod pki;
#[path = "outbound_tls/receiver.rs"]
mod receiver;
#[path = "outbound_tls/relay.rs"]
mod relay;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use mesh_auth::AuthSettings;
use mesh_contracts::notification::v1::notification_service_client::NotificationServiceClient;
use mesh_contracts::notification::v1::{
    Channel, Delivery, DeliveryStatus, GetPreferencesRequest, ListDeliveriesRequest, Preferences,
    SendNotificationRequest, UpdatePreferencesRequest,
};
use mesh_notification::error::SendError;
use mesh_notification::secret::Secret;
use mesh_notification::settings::{NotificationSettings, SmtpSettings, SmtpTls};
use mesh_notification::smtp::{Mail, Mailer};
use mesh_notification::webhook::{Webhooks, derived_key};
use mesh_runtime::retry_policy::RetryPolicy;
use mesh_testkit::{self as testing, TestAuth, bearer, eventually};

use pki::Pki;
use receiver::Receiver;
use relay::{Config, Mode, Relay};

const USER: &str = "mesh-mailer";
const PASSWORD: &str = "correct horse battery staple";
const KEY: &str = "whsec-0123456789abcdef";

async fn relay(pki: &Pki, mode: Mode, mechanisms: &'static str) -> Relay {
    relay_with(pki, mode, mechanisms, None).await
}

async fn relay_with(
    pki: &Pki,
    mode: Mode,
    mechanisms: &'static str,
    rcpt_reply: Option<&'static str>,
) -> Relay {
    Relay::start(Config {
        mode,
        tls: pki.server.clone(),
        mechanisms,
        user: USER.into(),
        password: Arc::new(Mutex::new(PASSWORD.into())),
        rcpt_reply,
    })
    .await
}

fn smtp(relay: &Relay, tls: SmtpTls, ca_file: &Path, password: Secret) -> SmtpSettings {
    SmtpSettings {
        ca_file: Some(ca_file.to_path_buf()),
        credentials: Some((USER.into(), password)),
        ..SmtpSettings::new("127.0.0.1", relay.addr.port(), tls)
    }
}

fn mailer(settings: SmtpSettings) -> Mailer {
    Mailer::new(settings, "Shop <shop@example.com>", Duration::from_secs(5)).unwrap()
}

const SUBJECT: &str = "Ihre Bestellung ✓ – 42 € für Jörg";
const BODY: &str = "Grüße aus Köln!\n.a line starting with a dot\nПривет, 你好\n";

fn mail(message_id: &str) -> Mail<'_> {
    Mail {
        to: "alice@example.com",
        subject: SUBJECT,
        body: BODY,
        message_id,
    }
}

/// `=?charset?b|q?text?=` encoded words (RFC 2047) decoded; other text kept.
fn decode_words(value: &str) -> String {
    let mut out = Vec::new();
    let mut rest = value;
    while let Some(start) = rest.find("=?") {
        let before = &rest[..start];
        if !before.trim().is_empty() {
            out.extend_from_slice(before.as_bytes());
        }
        let word = &rest[start + 2..];
        let mut parts = word.splitn(3, '?');
        let (_charset, encoding, tail) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        let end = tail.find("?=").unwrap();
        let text = &tail[..end];
        match encoding {
            "b" | "B" => out.extend(BASE64.decode(text).unwrap()),
            _ => out.extend(quoted_printable(&text.replace('_', " "))),
        }
        rest = &tail[end + 2..];
    }
    out.extend_from_slice(rest.as_bytes());
    String::from_utf8(out).unwrap()
}

/// Quoted-printable (RFC 2045) decoded.
fn quoted_printable(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'=' if bytes.get(i + 1..i + 3) == Some(b"\r\n") => i += 3,
            b'=' if bytes.get(i + 1) == Some(&b'\n') => i += 2,
            b'=' => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// The message's headers (unfolded, by lower-case name) and its decoded body.
fn parse_message(data: &str) -> (BTreeMap<String, String>, String) {
    let (head, body) = data.split_once("\r\n\r\n").expect("headers and body");
    let mut headers = BTreeMap::new();
    let mut last = String::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            headers
                .entry(last.clone())
                .and_modify(|v: &mut String| v.push_str(line));
        } else if let Some((name, value)) = line.split_once(':') {
            last = name.to_ascii_lowercase();
            headers.insert(last.clone(), value.trim().to_string());
        }
    }
    let body = match headers
        .get("content-transfer-encoding")
        .map(|e| e.to_ascii_lowercase())
        .as_deref()
    {
        Some("base64") => BASE64.decode(body.replace("\r\n", "")).unwrap(),
        Some("quoted-printable") => quoted_printable(body),
        _ => body.as_bytes().to_vec(),
    };
    (
        headers,
        String::from_utf8(body).unwrap().replace("\r\n", "\n"),
    )
}

fn assert_certificate_refused(e: &SendError) {
    assert!(!e.permanent, "a certificate problem is retried: {e:?}");
    assert!(
        e.message.to_lowercase().contains("certificate"),
        "the error says why: {}",
        e.message
    );
}

#[tokio::test]
async fn starttls_with_auth_plain_delivers_an_encoded_utf8_message() {
    let pki = Pki::new("mesh test CA");
    let relay = relay(&pki, Mode::StartTls(true), "PLAIN LOGIN").await;
    let ca = pki.ca_file();
    let m = mailer(smtp(
        &relay,
        SmtpTls::StartTls,
        &ca,
        Secret::Value(PASSWORD.into()),
    ));
    m.send(&mail("d-1")).await.expect("sent");

    let sessions = relay.sessions();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let s = &sessions[0];
    assert!(s.tls, "the TLS handshake happened");
    assert_eq!(
        s.commands[..2],
        ["EHLO", "STARTTLS"],
        "nothing but EHLO before STARTTLS"
    );
    assert_eq!(
        s.auth,
        [("PLAIN".to_string(), USER.to_string(), PASSWORD.to_string())]
    );
    assert_eq!(s.from, ["shop@example.com"]);
    assert_eq!(s.to, ["alice@example.com"]);
    assert_eq!(s.messages.len(), 1);
    let data = &s.messages[0];
    assert!(data.is_ascii(), "the message is 7-bit clean:\n{data}");
    let (headers, body) = parse_message(data);
    assert_eq!(decode_words(&headers["subject"]), SUBJECT, "{data}");
    assert_eq!(body, BODY, "{data}");
    assert_eq!(headers["message-id"], "<d-1@mesh>");
    assert_eq!(
        headers["content-type"].to_ascii_lowercase(),
        "text/plain; charset=utf-8"
    );
    assert!(headers["from"].contains("shop@example.com"), "{data}");
    assert_eq!(headers["to"], "alice@example.com");
    assert!(headers.contains_key("date"), "{data}");
}

#[tokio::test]
async fn implicit_tls_with_auth_login_delivers() {
    let pki = Pki::new("mesh test CA");
    let relay = relay(&pki, Mode::Implicit, "LOGIN").await;
    let ca = pki.ca_file();
    let m = mailer(smtp(
        &relay,
        SmtpTls::Implicit,
        &ca,
        Secret::Value(PASSWORD.into()),
    ));
    m.send(&mail("d-2")).await.expect("sent");
    let s = &relay.sessions()[0];
    assert!(s.tls);
    assert_eq!(
        s.commands[0], "EHLO",
        "TLS from the first byte: no STARTTLS"
    );
    assert!(!s.commands.contains(&"STARTTLS".to_string()));
    assert_eq!(
        s.auth,
        [("LOGIN".to_string(), USER.to_string(), PASSWORD.to_string())]
    );
    assert_eq!(s.messages.len(), 1);
}

#[tokio::test]
async fn a_relay_with_an_untrusted_certificate_gets_nothing() {
    let trusted = Pki::new("mesh test CA");
    let other = Pki::new("someone else's CA");
    let ca = trusted.ca_file();
    for (mode, tls) in [
        (Mode::StartTls(true), SmtpTls::StartTls),
        (Mode::Implicit, SmtpTls::Implicit),
    ] {
        let relay = relay(&other, mode, "PLAIN LOGIN").await;
        let m = mailer(smtp(&relay, tls, &ca, Secret::Value(PASSWORD.into())));
        let e = m.send(&mail("d-3")).await.expect_err("refused");
        assert_certificate_refused(&e);
        for s in relay.sessions() {
            assert!(!s.tls, "{mode:?}: no handshake completed");
            assert!(
                s.auth.is_empty() && s.from.is_empty() && s.messages.is_empty(),
                "{mode:?}: no credentials or mail in clear: {s:?}"
            );
            assert!(
                s.commands.iter().all(|c| c == "EHLO" || c == "STARTTLS"),
                "{mode:?}: no plaintext fallback: {:?}",
                s.commands
            );
        }
    }
}

#[tokio::test]
async fn a_relay_without_starttls_gets_nothing() {
    let pki = Pki::new("mesh test CA");
    let relay = relay(&pki, Mode::StartTls(false), "PLAIN LOGIN").await;
    let ca = pki.ca_file();
    let m = mailer(smtp(
        &relay,
        SmtpTls::StartTls,
        &ca,
        Secret::Value(PASSWORD.into()),
    ));
    let e = m.send(&mail("d-4")).await.expect_err("refused");
    assert!(!e.permanent, "{e:?}");
    let sessions = relay.sessions();
    assert!(!sessions.is_empty());
    for s in sessions {
        assert!(
            s.auth.is_empty() && s.from.is_empty() && s.messages.is_empty(),
            "STARTTLS is required, not optional: {s:?}"
        );
    }
}

#[tokio::test]
async fn smtp_replies_are_permanent_or_transient_failures() {
    let pki = Pki::new("mesh test CA");
    let ca = pki.ca_file();
    let relay_ok = relay(&pki, Mode::StartTls(true), "PLAIN").await;
    let wrong = mailer(smtp(
        &relay_ok,
        SmtpTls::StartTls,
        &ca,
        Secret::Value("wrong".into()),
    ));
    let e = wrong.send(&mail("d-5")).await.expect_err("535");
    assert!(e.permanent && e.message.contains("535"), "{e:?}");
    for (reply, permanent) in [
        ("451 4.3.0 try again later", false),
        ("550 5.1.1 no such user", true),
    ] {
        let relay = relay_with(&pki, Mode::StartTls(true), "PLAIN", Some(reply)).await;
        let m = mailer(smtp(
            &relay,
            SmtpTls::StartTls,
            &ca,
            Secret::Value(PASSWORD.into()),
        ));
        let e = m.send(&mail("d-6")).await.expect_err(reply);
        assert_eq!(e.permanent, permanent, "{reply}: {e:?}");
        assert!(e.message.contains(&reply[..3]), "{e:?}");
    }
    // A bad recipient never reaches the relay.
    let m = mailer(smtp(
        &relay_ok,
        SmtpTls::StartTls,
        &ca,
        Secret::Value(PASSWORD.into()),
    ));
    let e = m
        .send(&Mail {
            to: "not an address",
            ..mail("d-7")
        })
        .await
        .expect_err("bad address");
    assert!(e.permanent, "{e:?}");
}

#[tokio::test]
async fn a_rotated_password_file_is_used_for_the_next_send() {
    let pki = Pki::new("mesh test CA");
    let ca = pki.ca_file();
    let relay_password = Arc::new(Mutex::new(PASSWORD.to_string()));
    let relay = Relay::start(Config {
        mode: Mode::StartTls(true),
        tls: pki.server.clone(),
        mechanisms: "PLAIN",
        user: USER.into(),
        password: relay_password.clone(),
        rcpt_reply: None,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("password");
    std::fs::write(&file, format!("{PASSWORD}\n")).unwrap();
    let m = mailer(smtp(
        &relay,
        SmtpTls::StartTls,
        &ca,
        Secret::File(file.clone()),
    ));
    m.send(&mail("d-8")).await.expect("first password");
    // The operator rotates: the relay takes the new password, the mounted file changes.
    let rotated = "a new password after rotation";
    *relay_password.lock().unwrap() = rotated.into();
    std::fs::write(&file, rotated).unwrap();
    m.send(&mail("d-9"))
        .await
        .expect("the new password, no restart");
    let auths: Vec<String> = relay
        .sessions()
        .iter()
        .flat_map(|s| s.auth.iter().map(|a| a.2.clone()))
        .collect();
    assert_eq!(auths, [PASSWORD, rotated]);
    assert_eq!(
        relay
            .sessions()
            .iter()
            .map(|s| s.messages.len())
            .sum::<usize>(),
        2
    );
}

fn delivery(id: &str, recipient: String) -> Delivery {
    Delivery {
        id: id.into(),
        user_id: "alice".into(),
        channel: Channel::Webhook as i32,
        recipient,
        event_id: "e-1".into(),
        event_type: "order.confirmed".into(),
        subject: "Grüße".into(),
        body: "Your order is confirmed".into(),
        ..Default::default()
    }
}

fn webhooks(ca: &Path, secret: &str, allow_http: bool) -> Webhooks {
    Webhooks::new(&NotificationSettings {
        webhook_ca_file: Some(ca.to_path_buf()),
        webhook_secret: Some(Secret::Value(secret.into())),
        webhook_allow_http: allow_http,
        ..NotificationSettings::default()
    })
    .unwrap()
}

#[tokio::test]
async fn webhooks_go_over_verified_https_signed_for_the_receiver() {
    let pki = Pki::new("mesh test CA");
    let ca = pki.ca_file();
    let receiver = Receiver::start(KEY, Some(pki.server.clone())).await;
    let url = format!("https://127.0.0.1:{}/hooks/orders", receiver.addr.port());
    // Not the operator's webhook: signed with the key derived for this URL.
    let key = derived_key(KEY, &url);
    *receiver.key.lock().unwrap() = key.clone();
    webhooks(&ca, KEY, false)
        .post(&delivery("w-1", url.clone()))
        .await
        .expect("posted");
    // During a rotation both keys sign: a receiver that knows only one of them accepts.
    webhooks(&ca, &format!("old-key-0123456789abcdef,{KEY}"), false)
        .post(&delivery("w-2", url.clone()))
        .await
        .expect("posted with two keys");
    let got = receiver.received();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|r| r.verified), "{got:?}");
    assert_eq!(got[0].idempotency_key, "w-1");
    let body: serde_json::Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(body["delivery_id"], "w-1");
    assert_eq!(body["subject"], "Grüße");
    assert_eq!(got[1].signature.matches("v1=").count(), 2);
    // A signature is bound to its body and its time.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(!receiver::verify(
        &got[0].signature,
        b"{}",
        KEY.as_bytes(),
        now
    ));
    assert!(!receiver::verify(
        &got[0].signature,
        got[0].body.as_bytes(),
        KEY.as_bytes(),
        now + receiver::REPLAY_WINDOW_SECS + 60
    ));
    // A receiver that does not know the key refuses: retried, as during a rotation.
    let e = webhooks(&ca, "another-key-0123456789", false)
        .post(&delivery("w-3", url))
        .await
        .expect_err("401");
    assert!(!e.permanent && e.message.contains("401"), "{e:?}");
}

#[tokio::test]
async fn a_webhook_receiver_with_an_untrusted_certificate_is_refused() {
    let trusted = Pki::new("mesh test CA");
    let other = Pki::new("someone else's CA");
    let ca = trusted.ca_file();
    let receiver = Receiver::start(KEY, Some(other.server.clone())).await;
    let url = format!("https://127.0.0.1:{}/hook", receiver.addr.port());
    let e = webhooks(&ca, KEY, false)
        .post(&delivery("w-4", url))
        .await
        .expect_err("untrusted");
    assert_certificate_refused(&e);
    assert!(receiver.received().is_empty(), "nothing was posted");
    eventually("the receiver saw the handshake fail", || async {
        *receiver.failed_handshakes.lock().unwrap() >= 1
    })
    .await;
}

#[tokio::test]
async fn plain_http_webhooks_are_refused_unless_allowed() {
    let pki = Pki::new("mesh test CA");
    let ca = pki.ca_file();
    let receiver = Receiver::start(KEY, None).await;
    let url = format!("http://127.0.0.1:{}/hook", receiver.addr.port());
    *receiver.key.lock().unwrap() = derived_key(KEY, &url);
    let e = webhooks(&ca, KEY, false)
        .post(&delivery("w-5", url.clone()))
        .await
        .expect_err("http refused");
    assert!(e.permanent && e.message.contains("http"), "{e:?}");
    assert!(receiver.received().is_empty());
    webhooks(&ca, KEY, true)
        .post(&delivery("w-6", url))
        .await
        .expect("allowed for local development");
    assert!(receiver.received()[0].verified);
    // Without a key nothing is sent.
    let unsigned = Webhooks::new(&NotificationSettings {
        webhook_allow_http: true,
        ..NotificationSettings::default()
    })
    .unwrap();
    let e = unsigned
        .post(&delivery("w-7", format!("http://{}/hook", receiver.addr)))
        .await
        .expect_err("no key");
    assert!(e.permanent, "{e:?}");
    assert_eq!(receiver.received().len(), 1);
}

/// Notification built with `settings` and served, with its auth: (address, auth, shutdown).
async fn start_service(
    settings: NotificationSettings,
) -> (
    std::net::SocketAddr,
    TestAuth,
    tokio_util::sync::CancellationToken,
) {
    let auth = TestAuth::start(&testing::sqlite(), AuthSettings::default()).await;
    let target = testing::sqlite();
    let db = testing::database("notification", &target, &mesh_notification::MIGRATIONS).await;
    let bus = testing::memory_bus();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let addr = testing::start_until(
        "notification",
        BTreeMap::from([("auth", auth.uri())]),
        &db,
        &bus,
        &shutdown,
        |ctx| mesh_notification::build_with(ctx, settings),
    )
    .await;
    (addr, auth, shutdown)
}

/// Through the running service: a wrong SMTP password (535) fails the email at its first
/// attempt, while an untrusted webhook certificate is retried up to the attempt limit; both end
/// FAILED with the reason recorded.
#[tokio::test]
async fn the_queue_fails_permanent_errors_at_once_and_retries_certificate_failures() {
    let pki = Pki::new("mesh test CA");
    let other = Pki::new("someone else's CA");
    let ca = pki.ca_file();
    let relay = relay(&pki, Mode::StartTls(true), "PLAIN").await;
    let receiver = Receiver::start(KEY, Some(other.server.clone())).await;

    let settings = NotificationSettings {
        smtp: Some(smtp(
            &relay,
            SmtpTls::StartTls,
            &ca,
            Secret::Value("not the password".into()),
        )),
        smtp_from: "shop@example.com".into(),
        webhook_secret: Some(Secret::Value(KEY.into())),
        webhook_ca_file: Some(ca.to_path_buf()),
        retry: RetryPolicy {
            max_attempts: 3,
            retry_backoff: Duration::from_millis(20),
            poll_interval: Duration::from_millis(50),
            ..NotificationSettings::default().retry
        },
        send_timeout: Duration::from_secs(5),
        ..NotificationSettings::default()
    };
    let (addr, auth, shutdown) = start_service(settings).await;
    let admin = auth.admin_token().await;
    let mut c = NotificationServiceClient::new(testing::channel(addr).await);
    let send = |channel: Channel, recipient: String| SendNotificationRequest {
        recipient,
        channel: channel as i32,
        subject: "hello".into(),
        body: "tls".into(),
        ..Default::default()
    };
    let email = c
        .send_notification(bearer(
            &admin,
            send(Channel::Email, "alice@example.com".into()),
        ))
        .await
        .expect("queued")
        .into_inner()
        .delivery
        .expect("delivery");
    let hook = c
        .send_notification(bearer(
            &admin,
            send(
                Channel::Webhook,
                format!("https://127.0.0.1:{}/hook", receiver.addr.port()),
            ),
        ))
        .await
        .expect("queued")
        .into_inner()
        .delivery
        .expect("delivery");
    let finished = || async {
        let list = NotificationServiceClient::new(testing::channel(addr).await)
            .list_deliveries(bearer(
                &admin,
                ListDeliveriesRequest {
                    page_size: 10,
                    ..Default::default()
                },
            ))
            .await
            .expect("list")
            .into_inner()
            .deliveries;
        let by_id: BTreeMap<String, Delivery> =
            list.into_iter().map(|d| (d.id.clone(), d)).collect();
        let failed = |id: &str| {
            by_id
                .get(id)
                .filter(|d| d.status == DeliveryStatus::Failed as i32)
                .cloned()
        };
        failed(&email.id).zip(failed(&hook.id))
    };
    eventually("both deliveries failed", || async {
        finished().await.is_some()
    })
    .await;
    let (email, hook) = finished().await.unwrap();
    assert_eq!(email.attempts, 1, "535 is permanent: {email:?}");
    assert!(email.last_error.contains("535"), "{}", email.last_error);
    assert_eq!(
        hook.attempts, 3,
        "a certificate failure is retried: {hook:?}"
    );
    assert!(
        hook.last_error.to_lowercase().contains("certificate"),
        "{}",
        hook.last_error
    );
    assert!(receiver.received().is_empty());
    assert!(relay.sessions().iter().all(|s| s.messages.is_empty()));
    shutdown.cancel();
    auth.shutdown.cancel();
}

/// A user's own webhook is signed with a key of its own, derived from the service's key and the
/// URL, which GetPreferences shows the user; the operator's webhook is signed with the service's
/// key itself. Neither receiver could verify with the other's key.
#[tokio::test]
async fn a_users_webhook_is_signed_with_the_key_their_preferences_show() {
    let pki = Pki::new("mesh test CA");
    let ca = pki.ca_file();
    let users = Receiver::start("not known yet", Some(pki.server.clone())).await;
    let operators = Receiver::start(KEY, Some(pki.server.clone())).await;
    let global = format!("https://127.0.0.1:{}/ops", operators.addr.port());
    let settings = NotificationSettings {
        webhook_url: Some(global.clone()),
        webhook_secret: Some(Secret::Value(format!("old-key-0123456789abcdef,{KEY}"))),
        webhook_ca_file: Some(ca.to_path_buf()),
        retry: RetryPolicy {
            retry_backoff: Duration::from_millis(20),
            poll_interval: Duration::from_millis(50),
            ..NotificationSettings::default().retry
        },
        ..NotificationSettings::default()
    };
    let (addr, auth, shutdown) = start_service(settings).await;
    let admin = auth.admin_token().await;
    let mut c = NotificationServiceClient::new(testing::channel(addr).await);
    let user = testing::unique("carol");
    let url = format!("https://127.0.0.1:{}/{user}", users.addr.port());
    let prefs = c
        .update_preferences(bearer(
            &admin,
            UpdatePreferencesRequest {
                preferences: Some(Preferences {
                    user_id: user.clone(),
                    webhook_url: url.clone(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["webhook_url".into()],
                }),
            },
        ))
        .await
        .expect("preferences")
        .into_inner()
        .preferences
        .unwrap();
    let key = prefs.webhook_signing_key;
    assert_eq!(key.len(), 64, "a hex HMAC-SHA-256: {key}");
    assert!(!key.contains(KEY));
    let shown = c
        .get_preferences(bearer(
            &admin,
            GetPreferencesRequest {
                user_id: user.clone(),
            },
        ))
        .await
        .expect("get")
        .into_inner()
        .preferences
        .unwrap()
        .webhook_signing_key;
    assert_eq!(shown, key);
    *users.key.lock().unwrap() = key.clone();

    let send = |user_id: &str| SendNotificationRequest {
        user_id: user_id.into(),
        channel: Channel::Webhook as i32,
        subject: "hello".into(),
        body: "signed".into(),
        ..Default::default()
    };
    c.send_notification(bearer(&admin, send(&user)))
        .await
        .expect("to the user's webhook");
    c.send_notification(bearer(&admin, send(&testing::unique("dave"))))
        .await
        .expect("to the operator's webhook");
    eventually("both posts accepted", || async {
        users.received().iter().any(|r| r.verified)
            && operators.received().iter().any(|r| r.verified)
    })
    .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let to_user = &users.received()[0];
    assert!(!receiver::verify(
        &to_user.signature,
        to_user.body.as_bytes(),
        KEY.as_bytes(),
        now
    ));
    let to_ops = &operators.received()[0];
    assert!(!receiver::verify(
        &to_ops.signature,
        to_ops.body.as_bytes(),
        key.as_bytes(),
        now
    ));
    shutdown.cancel();
    auth.shutdown.cancel();
}
