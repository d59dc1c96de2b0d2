//! JWT validation at the edge with real tokens: a real auth service (SQLite, in process) mints
//! them and serves its JWKS over gRPC; the edge verifies them on REST and gRPC passthrough.
//! Covered: no token, valid, expired (the edge's clock moved), forged signature, `alg: none`,
//! garbage, public routes, key rotation (refresh on an unknown `kid`) and the refresh budget
//! against a flood of forged `kid`s, and the auth service down (503 / UNAVAILABLE).

mod common;

use std::sync::Arc;

use common::*;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mesh_auth::AuthSettings;
use mesh_contracts::auth::v1::RotateSigningKeyRequest;
use mesh_contracts::product::v1::product_service_client::ProductServiceClient;
use mesh_contracts::product::v1::{CreateProductRequest, GetProductRequest, Product};
use mesh_edge::auth::{EdgeAuth, JWKS_REFRESH_LIMIT, PublicRoutes, RefreshLimitedKeys};
use mesh_edge::config::{DEFAULT_PUBLIC_ROUTES, EdgeConfig};
use mesh_runtime::auth::{Claims, Clock as _, JwksClient, ManualClock, VerifierSettings};
use mesh_runtime::client::{ClientOptions, connect};
use mesh_testkit::{self as testing, TestAuth, bearer};

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

fn forge(key: &SigningKey, kid: &str, claims: &Claims) -> String {
    let der = key.to_pkcs8_der().unwrap();
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(der.as_bytes())).unwrap()
}

fn public_defaults() -> PublicRoutes {
    let defaults: Vec<String> = DEFAULT_PUBLIC_ROUTES
        .iter()
        .map(|s| s.to_string())
        .collect();
    PublicRoutes::parse(&defaults).unwrap()
}

/// An edge in front of the test upstream, checking tokens with `auth`'s JWKS on `clock`.
async fn edge_with_auth(
    auth_uri: http::Uri,
    clock: &ManualClock,
) -> (EdgeHandle, Arc<RefreshLimitedKeys>) {
    let upstream = start_upstream().await;
    let keys = Arc::new(RefreshLimitedKeys::new(
        Arc::new(JwksClient::new(connect(auth_uri, ClientOptions::default()))),
        JWKS_REFRESH_LIMIT,
    ));
    let auth = EdgeAuth::new(
        keys.clone(),
        VerifierSettings::default(),
        Arc::new(clock.clone()),
        public_defaults(),
    );
    let edge = edge_for(EdgeConfig::default(), upstream).with_auth(auth);
    (serve_edge(edge).await, keys)
}

async fn rest(addr: std::net::SocketAddr, method: &str, path: &str, token: Option<&str>) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    let body = if method == "POST" {
        r#"{"name":"Widget","sku":"W-1"}"#
    } else {
        ""
    };
    send(addr, method, path, body.to_string(), &headers, false).await
}

fn assert_401(r: &Reply, challenge: &str, why: &str) {
    assert_eq!(r.status, 401, "{why}: {}", r.text());
    assert_eq!(r.json()["code"], 16, "{why}: UNAUTHENTICATED");
    assert!(r.json()["message"].is_string(), "{why}");
    assert_eq!(
        r.headers["www-authenticate"].to_str().unwrap(),
        challenge,
        "{why}"
    );
}

#[tokio::test]
async fn rest_and_grpc_need_valid_tokens_except_on_public_routes() {
    let auth = TestAuth::start(&testing::sqlite(), AuthSettings::default()).await;
    let clock = ManualClock::new();
    let (e, _) = edge_with_auth(auth.uri(), &clock).await;
    let token = auth.customer_token().await;
    let missing = r#"Bearer realm="mesh""#;
    let invalid = r#"Bearer realm="mesh", error="invalid_token""#;

    // CreateProduct is not public: no token is 401, a valid one goes through.
    let r = rest(e.addr, "POST", "/v1/products", None).await;
    assert_401(&r, missing, "no token");
    let r = rest(e.addr, "POST", "/v1/products", Some(&token)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["product"]["id"], "p-new");

    // GetProduct is public: no token, and a bad token, still go through; the token is
    // forwarded upstream either way (services check roles themselves).
    let r = rest(e.addr, "GET", "/v1/products/p1", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = rest(e.addr, "GET", "/v1/products/p1", Some("garbage")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = rest(e.addr, "GET", "/v1/products/p1", Some(&token)).await;
    let seen = r.json()["description"].as_str().unwrap().to_string();
    assert!(seen.contains(&format!("auth=Bearer {token}")), "{seen}");

    // Forged signature, alg none, garbage, another scheme.
    let kid = kid_of(&token);
    let now = clock.now_unix();
    let claims = Claims {
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
    let other = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    let none = format!(
        "{}.{}.",
        b64(&serde_json::json!({"alg": "none", "typ": "JWT", "kid": kid}).to_string()),
        b64(&serde_json::to_string(&claims).unwrap())
    );
    for (why, bad) in [
        ("forged signature", forge(&other, &kid, &claims)),
        ("alg none", none),
        ("garbage", "not.a.jwt".to_string()),
    ] {
        let r = rest(e.addr, "POST", "/v1/products", Some(&bad)).await;
        assert_401(&r, invalid, why);
    }
    let r = send(
        e.addr,
        "POST",
        "/v1/products",
        "{}",
        &[
            ("authorization", "Basic YTpi"),
            ("content-type", "application/json"),
        ],
        false,
    )
    .await;
    assert_401(&r, invalid, "basic auth");

    // gRPC passthrough: the same decisions, as gRPC statuses.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", e.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = ProductServiceClient::new(channel);
    let create = || CreateProductRequest {
        product: Some(Product {
            name: "Widget".into(),
            ..Default::default()
        }),
    };
    let status = grpc.create_product(create()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    let status = grpc
        .create_product(bearer(&forge(&other, &kid, &claims), create()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    let ok = grpc.create_product(bearer(&token, create())).await.unwrap();
    assert_eq!(ok.into_inner().product.unwrap().id, "p-new");
    grpc.get_product(GetProductRequest { id: "p1".into() })
        .await
        .expect("public over gRPC without a token");
    // gRPC-Web goes the same way: an empty CreateProductRequest frame, no token.
    let r = send(
        e.addr,
        "POST",
        "/product.v1.ProductService/CreateProduct",
        vec![0u8, 0, 0, 0, 0],
        &[("content-type", "application/grpc-web+proto")],
        false,
    )
    .await;
    assert_eq!(r.headers["grpc-status"], "16", "{:?}", r.headers);

    // Expired: the edge's clock moves past the token's 15 minutes (and the 30 s leeway); the
    // cached verification does not outlive the token.
    clock.advance(16 * 60);
    let r = rest(e.addr, "POST", "/v1/products", Some(&token)).await;
    assert_401(&r, invalid, "expired");
    assert!(r.text().contains("expired"), "{}", r.text());
    let status = grpc
        .create_product(bearer(&token, create()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    auth.shutdown.cancel();
}

#[tokio::test]
async fn rotated_keys_are_fetched_and_forged_kids_cannot_hammer_auth() {
    let auth = TestAuth::start(&testing::sqlite(), AuthSettings::default()).await;
    let clock = ManualClock::new();
    let (e, keys) = edge_with_auth(auth.uri(), &clock).await;
    let admin = auth.admin_token().await;
    let r = rest(e.addr, "POST", "/v1/products", Some(&admin)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(keys.source_lookups(), 1, "the first token fetches the JWKS");

    // Rotate: tokens minted now carry a new kid, which the edge has never seen.
    let mut client = auth.client().await;
    let rotated = client
        .rotate_signing_key(bearer(&admin, RotateSigningKeyRequest {}))
        .await
        .unwrap()
        .into_inner();
    let fresh = auth.customer_token().await;
    assert_eq!(kid_of(&fresh), rotated.kid);
    assert_ne!(kid_of(&fresh), kid_of(&admin));
    let r = rest(e.addr, "POST", "/v1/products", Some(&fresh)).await;
    assert_eq!(r.status, 200, "a rotated-in key is fetched: {}", r.text());
    let r = rest(e.addr, "POST", "/v1/products", Some(&admin)).await;
    assert_eq!(r.status, 200, "the retired key is still published");
    assert_eq!(keys.source_lookups(), 2);

    // A flood of made-up kids: at most the rest of the burst reaches the key source.
    let other = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    let now = clock.now_unix();
    for i in 0..20 {
        let claims = Claims {
            iss: "mesh-auth".into(),
            sub: "intruder".into(),
            aud: "mesh".into(),
            exp: now + 600,
            iat: now,
            nbf: now,
            jti: format!("j{i}"),
            roles: vec![],
            stores: vec![],
        };
        let r = rest(
            e.addr,
            "POST",
            "/v1/products",
            Some(&forge(&other, &format!("made-up-{i}"), &claims)),
        )
        .await;
        assert_eq!(r.status, 401);
    }
    assert!(
        keys.source_lookups() <= u64::from(JWKS_REFRESH_LIMIT.burst),
        "{} lookups for 20 unknown kids",
        keys.source_lookups()
    );
    auth.shutdown.cancel();
}

#[tokio::test]
async fn auth_down_is_unavailable_not_unauthenticated() {
    // Nothing listens on the JWKS address.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let uri: http::Uri = format!("http://{}", dead.local_addr().unwrap())
        .parse()
        .unwrap();
    drop(dead);
    let clock = ManualClock::new();
    let (e, _) = edge_with_auth(uri, &clock).await;
    let now = clock.now_unix();
    let claims = Claims {
        iss: "mesh-auth".into(),
        sub: "u".into(),
        aud: "mesh".into(),
        exp: now + 600,
        iat: now,
        nbf: now,
        jti: "j".into(),
        roles: vec![],
        stores: vec![],
    };
    let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    let r = rest(
        e.addr,
        "POST",
        "/v1/products",
        Some(&forge(&key, "k1", &claims)),
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["code"], 14);
}
