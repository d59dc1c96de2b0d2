//! REST through the edge over real sockets: every rule form, the spec's mapping examples, JSON
//! edge cases, status mapping, limits, request ids, CORS and the legacy fallback.

mod common;

use common::*;
use mesh_edge::config::EdgeConfig;
use mesh_edge::rate_limit::RateLimit;
use serde_json::json;

async fn setup(config: EdgeConfig) -> EdgeHandle {
    let upstream = start_upstream().await;
    start_edge(config, upstream).await
}

#[tokio::test]
async fn spec_mapping_examples() {
    let e = setup(EdgeConfig::default()).await;
    // HTTP: GET /v1/messages/123456 -> GetMessage(message_id: "123456")
    let r = http(e.addr, "GET", "/v1/messages/123456", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"messageId": "123456"}));
    // Query parameters, nested and repeated: ?revision=2&sub.subfield=foo
    let r = http(
        e.addr,
        "GET",
        "/v1/messages/123456?revision=2&sub.subfield=foo&sub.labels=a&sub.labels=b&numbers=1&numbers=2&colors=COLOR_RED&colors=2&flag=true&ratio=0.5&big=18446744073709551615&when=2024-01-02T03:04:05Z&wait=1.5s&mask=a.b,c&maybe=7",
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({
            "messageId": "123456", "revision": "2",
            "sub": {"subfield": "foo", "labels": ["a", "b"]},
            "numbers": [1, 2], "colors": ["COLOR_RED", "COLOR_BLUE"], "flag": true, "ratio": 0.5,
            "big": "18446744073709551615", "when": "2024-01-02T03:04:05Z", "wait": "1.500s",
            "mask": "a.b,c", "maybe": "7"
        })
    );
    // additional_bindings: GET /v1/users/me/messages/123456
    let r = http(e.addr, "GET", "/v1/users/me/messages/123456", "").await;
    assert_eq!(r.json(), json!({"messageId": "123456", "userId": "me"}));
    // body: "sub" -> PATCH /v1/messages/123456 { "subfield": "foo" }
    let r = http(
        e.addr,
        "PATCH",
        "/v1/messages/123456",
        r#"{"subfield":"foo"}"#,
    )
    .await;
    assert_eq!(
        r.json(),
        json!({"messageId": "123456", "sub": {"subfield": "foo"}})
    );
    // body: "*" -> PATCH /v2/messages/123456 { "sub": {...}, "revision": "7" }
    let r = http(
        e.addr,
        "PATCH",
        "/v2/messages/123456",
        r#"{"sub":{"subfield":"x"},"revision":7}"#,
    )
    .await;
    assert_eq!(
        r.json(),
        json!({"messageId": "123456", "revision": "7", "sub": {"subfield": "x"}})
    );
}

#[tokio::test]
async fn every_rule_form() {
    let e = setup(EdgeConfig::default()).await;
    let cases = [
        (
            "GET",
            "/v1/nested/deep%20value",
            "",
            json!({"sub": {"subfield": "deep value"}}),
        ),
        (
            "GET",
            "/v1/shops/s1/machines/m2",
            "",
            json!({"name": "shops/s1/machines/m2"}),
        ),
        (
            "GET",
            "/v1/files/a/b/c.txt",
            "",
            json!({"name": "a/b/c.txt"}),
        ),
        (
            "POST",
            "/v1/messages/9:archive",
            r#"{"name":"n"}"#,
            json!({"messageId": "9", "name": "n"}),
        ),
        ("SEARCH", "/v1/messages?name=q", "", json!({"name": "q"})),
        ("DELETE", "/v1/messages/5", "", json!({"messageId": "5"})),
        (
            "PUT",
            "/v1/messages/5/tags",
            r#"["x","y"]"#,
            json!({"messageId": "5", "tags": ["x", "y"]}),
        ),
        // response_body: only the `sub` field comes back.
        (
            "GET",
            "/v1/messages/5/sub?sub.subfield=z&sub.count=3",
            "",
            json!({"subfield": "z", "count": "3"}),
        ),
    ];
    for (method, path, body, want) in cases {
        let r = http(e.addr, method, path, body).await;
        assert_eq!(r.status, 200, "{method} {path}: {}", r.text());
        assert_eq!(r.json(), want, "{method} {path}");
    }
    // Our own contracts: nested path field + body field, verbs, multi-segment names.
    let r = http(
        e.addr,
        "POST",
        "/v1/products",
        r#"{"name":"Tea","price":{"currencyCode":"EUR","amountMinor":3}}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["product"]["id"], "p-new");
    assert_eq!(
        r.json()["product"]["price"]["amountMinor"],
        "3",
        "int64 comes back as a string"
    );
    let r = http(e.addr, "GET", "/v1/products:batchGet?ids=a&ids=b", "").await;
    assert_eq!(r.json(), json!({"products": [{"id": "a"}, {"id": "b"}]}));
    let r = http(e.addr, "GET", "/v1/products/p1", "").await;
    assert_eq!(r.json()["id"], "p1", "response_body: product");
    assert_eq!(r.json()["name"], "Widget");
}

#[tokio::test]
async fn json_edge_cases_are_clear_errors() {
    let e = setup(EdgeConfig::default()).await;
    let bad = [
        ("PATCH", "/v2/messages/1", r#"{"nope":1}"#, "nope"),
        (
            "PATCH",
            "/v2/messages/1",
            r#"{"revision":"abc"}"#,
            "revision",
        ),
        (
            "PATCH",
            "/v2/messages/1",
            r#"{"color":"COLOR_GREEN"}"#,
            "color",
        ),
        (
            "PATCH",
            "/v2/messages/1",
            r#"{"sub":{"count":true}}"#,
            "sub.count",
        ),
        ("PATCH", "/v2/messages/1", r#"{"numbers":"x"}"#, "numbers"),
        ("PATCH", "/v2/messages/1", r#"[1,2]"#, "JSON object"),
        ("PATCH", "/v2/messages/1", r#"{"sub":"#, "not valid JSON"),
        ("GET", "/v1/messages/1?flag=yes", "", "flag"),
        ("GET", "/v1/messages/1?nope=1", "", "nope"),
        (
            "GET",
            "/v1/messages/1?revision=1&revision=2",
            "",
            "revision",
        ),
        (
            "GET",
            "/v1/messages/1?message_id=2",
            "",
            "bound by the path",
        ),
        ("GET", "/v1/messages/1?sub=x", "", "sub"),
        ("GET", "/v1/messages/1?extra.a=1", "", "extra"),
        ("GET", "/v1/messages/1?when=yesterday", "", "when"),
        ("PATCH", "/v2/messages/1?revision=1", "{}", "revision"),
        (
            "DELETE",
            "/v1/messages/1",
            r#"{"a":1}"#,
            "takes no request body",
        ),
    ];
    for (method, path, body, needle) in bad {
        let r = http(e.addr, method, path, body).await;
        assert_eq!(r.status, 400, "{method} {path} {body}: {}", r.text());
        let j = r.json();
        assert_eq!(j["code"], 3, "{j}");
        assert!(j["details"].is_array());
        let msg = j["message"].as_str().unwrap();
        assert!(
            msg.contains(needle),
            "{method} {path} {body}: {msg:?} should name {needle:?}"
        );
    }
    // Bad UTF-8 in the body.
    let r = send(
        e.addr,
        "PATCH",
        "/v2/messages/1",
        &b"{\"name\":\"\xff\"}"[..],
        &[],
        false,
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.json()["message"].as_str().unwrap().contains("UTF-8"));
    // An empty body is an empty message.
    let r = http(e.addr, "PATCH", "/v2/messages/1", "").await;
    assert_eq!(r.json(), json!({"messageId": "1"}));
    // Wrong content type.
    let r = send(
        e.addr,
        "PATCH",
        "/v2/messages/1",
        "x",
        &[("content-type", "text/plain")],
        false,
    )
    .await;
    assert_eq!(r.status, 415);
    // Proto field names are accepted as well as JSON names.
    let r = http(e.addr, "PATCH", "/v2/messages/1", r#"{"user_id":"u"}"#).await;
    assert_eq!(r.json(), json!({"messageId": "1", "userId": "u"}));
}

#[tokio::test]
async fn status_mapping_and_upstream_down() {
    let e = setup(EdgeConfig::default()).await;
    for (id, http_status, code) in [
        ("missing", 404, 5),
        ("conflict", 409, 6),
        ("denied", 403, 7),
        ("busy", 503, 14),
    ] {
        let r = http(e.addr, "GET", &format!("/v1/products/{id}"), "").await;
        assert_eq!(r.status, http_status, "{id}: {}", r.text());
        assert_eq!(r.json()["code"], code);
        assert!(r.json()["message"].is_string());
    }
    // The test upstream does not implement UserService: 501 UNIMPLEMENTED.
    let r = http(e.addr, "GET", "/v1/users/u1", "").await;
    assert_eq!(r.status, 501, "{}", r.text());
    assert_eq!(r.json()["code"], 12);
    // The client's deadline (grpc-timeout) is honoured: 504.
    let r = send(
        e.addr,
        "GET",
        "/v1/products/slow",
        "",
        &[("grpc-timeout", "200m")],
        false,
    )
    .await;
    assert_eq!(r.status, 504, "{}", r.text());

    // An upstream that is down: 503 naming it.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let e = start_edge(EdgeConfig::default(), dead).await;
    let r = http(e.addr, "GET", "/v1/products/p1", "").await;
    assert_eq!(r.status, 503, "{}", r.text());
    let msg = r.json()["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("product.v1.ProductService") && msg.contains("unavailable"),
        "{msg}"
    );
}

#[tokio::test]
async fn headers_request_ids_and_h2c() {
    let e = setup(EdgeConfig::default()).await;
    let r = send(
        e.addr,
        "GET",
        "/v1/products/p1",
        "",
        &[
            ("authorization", "Bearer abc"),
            ("x-request-id", "req-42"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
        ],
        false,
    )
    .await;
    assert_eq!(r.headers["x-request-id"], "req-42");
    let seen = r.json()["description"].as_str().unwrap().to_string();
    assert!(seen.contains("auth=Bearer abc"), "{seen}");
    assert!(seen.contains("rid=req-42"), "{seen}");
    assert!(
        seen.contains("tp=00-0af7651916cd43dd8448eb211c80319c-"),
        "same trace: {seen}"
    );
    assert!(
        !seen.contains("timeout=;"),
        "a deadline is always sent: {seen}"
    );
    // A generated id when the client sends none; REST over h2c on the same port.
    let r = send(e.addr, "GET", "/v1/products/p1", "", &[], true).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["x-request-id"].len(), 32);
    assert!(
        r.headers["x-request-id"]
            .as_bytes()
            .iter()
            .all(u8::is_ascii_hexdigit),
        "{:?}",
        r.headers["x-request-id"]
    );
}

#[tokio::test]
async fn limits_cors_and_not_found() {
    let config = EdgeConfig {
        max_body_bytes: 64,
        cors_origins: vec!["https://shop.example".into()],
        rate_limit: Some(RateLimit {
            per_second: 0.5,
            burst: 3,
        }),
        ..EdgeConfig::default()
    };
    let e = setup(config).await;
    let big = format!(r#"{{"name":"{}"}}"#, "x".repeat(100));
    let r = http(e.addr, "PATCH", "/v2/messages/1", &big).await;
    assert_eq!(r.status, 413, "{}", r.text());
    let r = send(
        e.addr,
        "OPTIONS",
        "/v1/products",
        "",
        &[
            ("origin", "https://shop.example"),
            ("access-control-request-method", "POST"),
        ],
        false,
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://shop.example"
    );
    let mut r = http(e.addr, "GET", "/nowhere", "").await;
    for _ in 0..3 {
        let origin = [("origin", "https://evil.example")];
        r = send(e.addr, "GET", "/nowhere", "", &origin, false).await;
    }
    assert_eq!(r.status, 429, "the bucket of 3 is spent");
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(r.json()["code"], 8);
    assert!(!r.headers.contains_key("access-control-allow-origin"));

    let e = setup(EdgeConfig::default()).await;
    let r = http(e.addr, "GET", "/nowhere", "").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["code"], 5);
    let r = http(e.addr, "PUT", "/v1/products/p1", "").await;
    assert_eq!(r.status, 405, "{}", r.text());
    assert!(r.headers["allow"].to_str().unwrap().contains("GET"));
}

#[tokio::test]
async fn legacy_fallback_gets_unowned_paths() {
    // A tiny legacy monolith.
    let legacy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let legacy_addr = legacy.local_addr().unwrap();
    let app = axum::Router::new().fallback(|req: http::Request<axum::body::Body>| async move {
        format!(
            "legacy {} {} rid={}",
            req.method(),
            req.uri(),
            req.headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        )
    });
    tokio::spawn(async move { axum::serve(legacy, app).await.unwrap() });
    let config = EdgeConfig {
        legacy_url: Some(format!("http://{legacy_addr}").parse().unwrap()),
        ..EdgeConfig::default()
    };
    let e = setup(config).await;
    let r = send(
        e.addr,
        "POST",
        "/cart/add?item=3",
        "x",
        &[("x-request-id", "r1")],
        false,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "legacy POST /cart/add?item=3 rid=r1");
    // Owned routes still go to the services.
    let r = http(e.addr, "GET", "/v1/products/p1", "").await;
    assert_eq!(r.json()["id"], "p1");
}

#[tokio::test]
async fn openapi_is_served() {
    let e = setup(EdgeConfig::default()).await;
    let r = http(e.addr, "GET", "/openapi.json", "").await;
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert_eq!(doc["openapi"], "3.0.3");
    assert!(doc["paths"]["/v1/products/{id}"]["get"].is_object());
    assert!(
        doc["paths"]["/v1/{name}"]["get"].is_object(),
        "{{name=stores/*}}"
    );
    assert!(doc["paths"]["/v1/orders/{id}:cancel"]["post"].is_object());
}
