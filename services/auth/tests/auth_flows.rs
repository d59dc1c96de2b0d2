//! The auth service over a real gRPC socket, on SQLite and (with `MESH_TEST_DATABASE_URL`) on
//! Postgres: sign-up, login, rotating refresh tokens with reuse detection, logout, roles, the
//! JWKS, key rotation, service tokens, and every way a token is refused. Time moves on an
//! injected clock, never by sleeping.

use std::sync::Arc;

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mesh_auth::AuthSettings;
use mesh_contracts::auth::v1::*;
use mesh_runtime::auth::{Claims, JwksClient, ManualClock, Verifier, VerifierSettings};
use mesh_runtime::client::{ClientOptions, connect};
use mesh_runtime::config::DatabaseTarget;
use mesh_testkit::{self as testing, PASSWORD, TestAuth, bearer};
use tonic::Code;

fn settings(clock: &ManualClock) -> AuthSettings {
    AuthSettings {
        clock: Arc::new(clock.clone()),
        ..AuthSettings::default()
    }
}

fn code<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> (Code, String) {
    let s = r.expect_err("expected an error status");
    (s.code(), s.message().to_string())
}

async fn flows(target: DatabaseTarget) {
    let clock = ManualClock::new();
    let auth = TestAuth::start(&target, settings(&clock)).await;
    let mut c = auth.client().await;

    // Bad input names the field.
    let (k, m) = code(
        c.sign_up(SignUpRequest {
            password: PASSWORD.into(),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(
        (k, m.starts_with("email")),
        (Code::InvalidArgument, true),
        "{m}"
    );
    let (k, m) = code(
        c.sign_up(SignUpRequest {
            email: "not-an-email".into(),
            password: PASSWORD.into(),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(
        (k, m.starts_with("email")),
        (Code::InvalidArgument, true),
        "{m}"
    );
    let (k, m) = code(
        c.sign_up(SignUpRequest {
            email: "a@example.com".into(),
            password: "short".into(),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(
        (k, m.starts_with("password")),
        (Code::InvalidArgument, true),
        "{m}"
    );

    let signed = auth.sign_up("Ann@Example.com").await;
    let account = signed.account.expect("account");
    assert_eq!(account.email, "ann@example.com");
    assert_eq!(account.roles, vec![Role::Customer as i32]);
    let (k, _) = code(
        c.sign_up(SignUpRequest {
            email: "ann@example.com".into(),
            password: PASSWORD.into(),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(k, Code::AlreadyExists);

    // Login never says which of email and password was wrong.
    let (k, m1) = code(
        c.login(LoginRequest {
            email: "ann@example.com".into(),
            password: "wrong password!".into(),
        })
        .await,
    );
    let (k2, m2) = code(
        c.login(LoginRequest {
            email: "nobody@example.com".into(),
            password: PASSWORD.into(),
        })
        .await,
    );
    assert_eq!((k, k2), (Code::Unauthenticated, Code::Unauthenticated));
    assert_eq!(m1, m2);
    let login = c
        .login(LoginRequest {
            email: "ANN@example.com".into(),
            password: PASSWORD.into(),
        })
        .await
        .expect("login")
        .into_inner();
    let first = login.tokens.expect("tokens");
    assert_eq!(first.token_type, "Bearer");

    // Refresh rotates; presenting the consumed token again revokes the whole family.
    let second = c
        .refresh(RefreshRequest {
            refresh_token: first.refresh_token.clone(),
        })
        .await
        .expect("refresh")
        .into_inner()
        .tokens
        .expect("tokens");
    assert_ne!(second.refresh_token, first.refresh_token);
    let (k, m) = code(
        c.refresh(RefreshRequest {
            refresh_token: first.refresh_token.clone(),
        })
        .await,
    );
    assert_eq!(k, Code::Unauthenticated);
    assert!(m.contains("already used"), "{m}");
    let (k, _) = code(
        c.refresh(RefreshRequest {
            refresh_token: second.refresh_token.clone(),
        })
        .await,
    );
    assert_eq!(
        k,
        Code::Unauthenticated,
        "the rotated-to token died with its family"
    );

    // Logout ends the session; logging out again succeeds.
    let third = c
        .login(LoginRequest {
            email: "ann@example.com".into(),
            password: PASSWORD.into(),
        })
        .await
        .expect("login")
        .into_inner()
        .tokens
        .expect("tokens");
    c.logout(LogoutRequest {
        refresh_token: third.refresh_token.clone(),
    })
    .await
    .expect("logout");
    c.logout(LogoutRequest {
        refresh_token: third.refresh_token.clone(),
    })
    .await
    .expect("logout is idempotent");
    let (k, _) = code(
        c.refresh(RefreshRequest {
            refresh_token: third.refresh_token.clone(),
        })
        .await,
    );
    assert_eq!(k, Code::Unauthenticated);
    let (k, m) = code(c.refresh(RefreshRequest::default()).await);
    assert_eq!(
        (k, m.starts_with("refresh_token")),
        (Code::InvalidArgument, true)
    );

    // Refresh tokens expire with their session.
    let fourth = c
        .login(LoginRequest {
            email: "ann@example.com".into(),
            password: PASSWORD.into(),
        })
        .await
        .expect("login")
        .into_inner()
        .tokens
        .expect("tokens");
    clock.advance(31 * 24 * 3600);
    let (k, m) = code(
        c.refresh(RefreshRequest {
            refresh_token: fourth.refresh_token,
        })
        .await,
    );
    assert_eq!(k, Code::Unauthenticated);
    assert!(m.contains("expired"), "{m}");
    auth.shutdown.cancel();
}

testing::on_sqlite_and_postgres!(
    #[tokio::test]
    sign_up_login_refresh_reuse_and_logout_on_sqlite,
    sign_up_login_refresh_reuse_and_logout_on_postgres,
    "auth flows",
    flows
);

/// Signs `claims` with `key` under `kid`.
fn forge(key: &SigningKey, kid: &str, claims: &Claims) -> String {
    let der = key.to_pkcs8_der().expect("der");
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(der.as_bytes())).expect("sign")
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token)
        .expect("header")
        .kid
        .expect("kid")
}

async fn roles_and_refusals(target: DatabaseTarget) {
    let clock = ManualClock::new();
    // The service signs with a key from a file, as with the Helm chart's Secret.
    let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    let dir = std::env::temp_dir().join(testing::unique("mesh-key"));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("jwt.pem");
    std::fs::write(
        &file,
        key.to_pkcs8_pem(LineEnding::LF).expect("pem").as_bytes(),
    )
    .expect("write");
    let auth = TestAuth::start(
        &target,
        AuthSettings {
            key_file: Some(file),
            ..settings(&clock)
        },
    )
    .await;
    let mut c = auth.client().await;

    let admin = auth.admin_token().await;
    let customer = auth.sign_up("bob@example.com").await;
    let bob = customer.account.expect("account").id;
    let bob_token = customer.tokens.expect("tokens").access_token;
    let kid = kid_of(&admin);
    let set = |roles: Vec<i32>| SetRolesRequest {
        account_id: bob.clone(),
        roles,
    };

    // Wrong role, no token.
    let (k, m) = code(
        c.set_roles(bearer(&bob_token, set(vec![Role::Staff as i32])))
            .await,
    );
    assert_eq!(k, Code::PermissionDenied, "{m}");
    let (k, _) = code(
        c.set_roles(tonic::Request::new(set(vec![Role::Staff as i32])))
            .await,
    );
    assert_eq!(k, Code::Unauthenticated);
    let (k, _) = code(
        c.set_roles(bearer("not.a.jwt", set(vec![Role::Staff as i32])))
            .await,
    );
    assert_eq!(k, Code::Unauthenticated);

    // alg none, another key under the real kid, wrong issuer and audience, not yet valid.
    let now = clock_now(&clock);
    let good = Claims {
        iss: "mesh-auth".into(),
        sub: "intruder".into(),
        aud: "mesh".into(),
        exp: now + 600,
        iat: now,
        nbf: now,
        jti: "j".into(),
        roles: vec!["admin".into()],
        stores: vec![],
    };
    let none = format!(
        "{}.{}.",
        b64(&serde_json::json!({"alg": "none", "typ": "JWT", "kid": kid}).to_string()),
        b64(&serde_json::to_string(&good).expect("json"))
    );
    let other = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    let cases = [
        ("alg none", none),
        ("forged signature", forge(&other, &kid, &good)),
        ("unknown kid", forge(&key, "no-such-kid", &good)),
        (
            "wrong issuer",
            forge(
                &key,
                &kid,
                &Claims {
                    iss: "evil".into(),
                    ..good.clone()
                },
            ),
        ),
        (
            "wrong audience",
            forge(
                &key,
                &kid,
                &Claims {
                    aud: "elsewhere".into(),
                    ..good.clone()
                },
            ),
        ),
        (
            "not yet valid",
            forge(
                &key,
                &kid,
                &Claims {
                    nbf: now + 3600,
                    ..good.clone()
                },
            ),
        ),
        (
            "expired",
            forge(
                &key,
                &kid,
                &Claims {
                    exp: now - 3600,
                    ..good.clone()
                },
            ),
        ),
    ];
    for (case, token) in cases {
        let (k, m) = code(
            c.set_roles(bearer(&token, set(vec![Role::Staff as i32])))
                .await,
        );
        assert_eq!(k, Code::Unauthenticated, "{case}: {m}");
    }
    // The same claims signed properly pass: the refusals above were for the stated reasons.
    c.set_roles(bearer(
        &forge(&key, &kid, &good),
        set(vec![Role::Customer as i32]),
    ))
    .await
    .expect("a well-formed admin token passes");

    // Admin sets roles; bad input names the field; unknown account is NOT_FOUND.
    let account = c
        .set_roles(bearer(
            &admin,
            set(vec![Role::Staff as i32, Role::Customer as i32]),
        ))
        .await
        .expect("set roles")
        .into_inner()
        .account
        .expect("account");
    assert_eq!(
        account.roles,
        vec![Role::Staff as i32, Role::Customer as i32]
    );
    let (k, m) = code(
        c.set_roles(bearer(
            &admin,
            SetRolesRequest {
                account_id: "nope".into(),
                roles: vec![1],
            },
        ))
        .await,
    );
    assert_eq!(
        (k, m.starts_with("account_id")),
        (Code::InvalidArgument, true),
        "{m}"
    );
    let (k, m) = code(c.set_roles(bearer(&admin, set(vec![]))).await);
    assert_eq!(
        (k, m.starts_with("roles")),
        (Code::InvalidArgument, true),
        "{m}"
    );
    let (k, _) = code(
        c.set_roles(bearer(
            &admin,
            SetRolesRequest {
                account_id: uuid::Uuid::now_v7().to_string(),
                roles: vec![1],
            },
        ))
        .await,
    );
    assert_eq!(k, Code::NotFound);

    // Device credentials: staff or admin; issuing again rotates.
    let device = |id: &str| IssueDeviceCredentialRequest {
        device_id: id.into(),
        ttl: None,
    };
    let (k, _) = code(
        c.issue_device_credential(bearer(&bob_token, device("vm-1")))
            .await,
    );
    assert_eq!(k, Code::PermissionDenied);
    let (k, m) = code(c.issue_device_credential(bearer(&admin, device(""))).await);
    assert_eq!(
        (k, m.starts_with("device_id")),
        (Code::InvalidArgument, true),
        "{m}"
    );
    let first = c
        .issue_device_credential(bearer(&admin, device("vm-1")))
        .await
        .expect("issue")
        .into_inner();
    let second = c
        .issue_device_credential(bearer(&admin, device("vm-1")))
        .await
        .expect("reissue")
        .into_inner();
    assert_eq!(first.device_id, "vm-1");
    assert_ne!(first.credential_token, second.credential_token);
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT token_hash FROM device_credentials WHERE device_id = 'vm-1'")
            .fetch_all(auth.db.pool())
            .await
            .expect("rows");
    assert_eq!(
        stored,
        vec![mesh_auth::tokens::hash_secret(&second.credential_token)],
        "only the hash of the latest"
    );

    // A device exchanges its (latest) credential for a DEVICE access token; the replaced one,
    // another device's id, or garbage are refused alike.
    let exchange = |id: &str, token: &str| ExchangeDeviceCredentialRequest {
        device_id: id.into(),
        credential_token: token.into(),
    };
    let device_token = c
        .exchange_device_credential(exchange("vm-1", &second.credential_token))
        .await
        .expect("exchange")
        .into_inner();
    assert!(
        device_token
            .expires_in
            .is_some_and(|d| d.seconds == 15 * 60)
    );
    let claims = jsonwebtoken::dangerous::insecure_decode::<Claims>(&device_token.access_token)
        .expect("claims")
        .claims;
    assert_eq!(
        (claims.sub.as_str(), claims.roles),
        ("vm-1", vec!["device".to_string()])
    );
    for (id, token) in [
        ("vm-1", first.credential_token.as_str()),
        ("vm-2", second.credential_token.as_str()),
        ("vm-1", "garbage"),
    ] {
        let (k, _) = code(c.exchange_device_credential(exchange(id, token)).await);
        assert_eq!(k, Code::Unauthenticated, "{id} {token}");
    }
    let (k, m) = code(c.exchange_device_credential(exchange("vm-1", "")).await);
    assert_eq!(
        (k, m.starts_with("credential_token")),
        (Code::InvalidArgument, true),
        "{m}"
    );

    // A file key is rotated by replacing the file, not by the RPC.
    let (k, _) = code(
        c.rotate_signing_key(bearer(&admin, RotateSigningKeyRequest {}))
            .await,
    );
    assert_eq!(k, Code::FailedPrecondition);

    // Access tokens expire (15 minutes + 30 s leeway).
    clock.advance(15 * 60 + 31);
    let (k, m) = code(
        c.set_roles(bearer(&admin, set(vec![Role::Staff as i32])))
            .await,
    );
    assert_eq!(k, Code::Unauthenticated);
    assert!(m.contains("expired"), "{m}");
    auth.shutdown.cancel();
}

fn clock_now(clock: &ManualClock) -> i64 {
    use mesh_runtime::auth::Clock as _;
    clock.now_unix()
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

testing::on_sqlite_and_postgres!(
    #[tokio::test]
    roles_and_every_refused_token_on_sqlite,
    roles_and_every_refused_token_on_postgres,
    "auth roles and refusals",
    roles_and_refusals
);

async fn rotation(target: DatabaseTarget) {
    let clock = ManualClock::new();
    let auth = TestAuth::start(&target, settings(&clock)).await;
    let mut c = auth.client().await;
    let old = auth.admin_token().await;
    let old_kid = kid_of(&old);

    // A remote verifier (as every other service has) caches the JWKS.
    let jwks = JwksClient::new(connect(auth.uri(), ClientOptions::default()));
    let verifier = Verifier::new(Arc::new(jwks), VerifierSettings::default())
        .with_clock(Arc::new(clock.clone()));
    verifier.verify(&old).await.expect("old token verifies");

    let rotated = c
        .rotate_signing_key(bearer(&old, RotateSigningKeyRequest {}))
        .await
        .expect("rotate")
        .into_inner();
    assert_ne!(rotated.kid, old_kid);
    assert_eq!(rotated.retired_kids, vec![old_kid.clone()]);
    let new = auth.admin_token().await;
    assert_eq!(kid_of(&new), rotated.kid);

    // Both keys are published; the old token still works until it expires.
    let keys = c
        .get_jwks(GetJwksRequest {})
        .await
        .expect("jwks")
        .into_inner()
        .keys;
    let kids: Vec<_> = keys.iter().map(|k| k.kid.clone()).collect();
    assert!(
        kids.contains(&old_kid) && kids.contains(&rotated.kid),
        "{kids:?}"
    );
    assert!(
        keys.iter()
            .all(|k| k.kty == "OKP" && k.crv == "Ed25519" && k.alg == "EdDSA" && k.r#use == "sig")
    );
    verifier
        .verify(&old)
        .await
        .expect("old token still verifies");
    // The remote verifier learns the new kid by refetching.
    verifier
        .verify(&new)
        .await
        .expect("new kid found after a refresh");
    c.rotate_signing_key(bearer(&old, RotateSigningKeyRequest {}))
        .await
        .expect("old token still accepted by auth");

    // Once its tokens have expired, the retired key leaves the JWKS.
    clock.advance(15 * 60 + 31);
    let kids: Vec<_> = c
        .get_jwks(GetJwksRequest {})
        .await
        .expect("jwks")
        .into_inner()
        .keys
        .into_iter()
        .map(|k| k.kid)
        .collect();
    assert!(!kids.contains(&old_kid), "{kids:?}");

    // The key survives a restart (embedded default: kept in the database).
    let latest = kids[0].clone();
    auth.shutdown.cancel();
    let again = TestAuth::start(&target, settings(&clock)).await;
    let token = again.admin_token().await;
    assert_eq!(kid_of(&token), latest);
    again.shutdown.cancel();
}

testing::on_sqlite_and_postgres!(
    #[tokio::test]
    key_rotation_keeps_old_tokens_until_expiry_on_sqlite,
    key_rotation_keeps_old_tokens_until_expiry_on_postgres,
    "auth key rotation",
    rotation
);

#[tokio::test]
async fn service_tokens_by_client_credentials() {
    let clock = ManualClock::new();
    let mut s = settings(&clock);
    s.service_clients
        .insert("order".into(), "order-secret".into());
    let auth = TestAuth::start(&testing::sqlite(), s).await;
    let mut c = auth.client().await;
    let req = |secret: &str| IssueServiceTokenRequest {
        client_id: "order".into(),
        client_secret: secret.into(),
        ..Default::default()
    };
    let (k, _) = code(c.issue_service_token(req("wrong")).await);
    assert_eq!(k, Code::Unauthenticated);
    let (k, m) = code(
        c.issue_service_token(IssueServiceTokenRequest {
            client_id: "order".into(),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(
        (k, m.starts_with("client_secret")),
        (Code::InvalidArgument, true)
    );
    let token = c
        .issue_service_token(req("order-secret"))
        .await
        .expect("issued")
        .into_inner();
    let verifier = Verifier::new(
        Arc::new(JwksClient::new(connect(
            auth.uri(),
            ClientOptions::default(),
        ))),
        VerifierSettings::default(),
    )
    .with_clock(Arc::new(clock.clone()));
    let who = verifier
        .verify(&token.access_token)
        .await
        .expect("verifies");
    assert_eq!(who.subject, "order");
    assert_eq!(who.roles, vec![mesh_runtime::auth::Role::Service]);

    // The service token can't do admin things.
    let (k, _) = code(
        c.rotate_signing_key(bearer(&token.access_token, RotateSigningKeyRequest {}))
            .await,
    );
    assert_eq!(k, Code::PermissionDenied);
    auth.shutdown.cancel();
}

/// `GET path` over HTTP/1.1 on `addr`: (status line, body).
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let (head, body) = out.split_once("\r\n\r\n").expect("response");
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

#[tokio::test]
async fn jwks_document_over_http_on_the_admin_port() {
    let auth = TestAuth::start(&testing::sqlite(), AuthSettings::default()).await;
    let token = auth.admin_token().await;
    let (status, body) = http_get(auth.admin_addr, "/.well-known/jwks.json").await;
    assert!(status.contains("200"), "{status}");
    let doc: serde_json::Value = serde_json::from_str(&body).expect("json");
    let keys = doc["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["kid"], kid_of(&token));
    assert_eq!(
        (keys[0]["kty"].as_str(), keys[0]["crv"].as_str()),
        (Some("OKP"), Some("Ed25519"))
    );
    // The same keys decode with jsonwebtoken's own JWK type.
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&body).expect("a valid JWK Set");
    assert!(set.find(&kid_of(&token)).is_some());
    auth.shutdown.cancel();
}
