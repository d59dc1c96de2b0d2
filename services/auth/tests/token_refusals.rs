//! Every way an attacker's or a confused client's token is refused, on real gRPC calls to a
//! guarded RPC (auth's admin-only `SetRoles`): `alg: none`, HS256 keyed with the public key,
//! expired, another audience, claims that are not UTF-8, a device credential or a refresh token sent as an access token,
//! and a token of a key rotated out after its grace period, also at a remote verifier that had
//! cached that key. Each answer is `UNAUTHENTICATED` with its own message, and each refusal is
//! counted in `mesh_auth_rejected_total{service, reason}`. Time moves on an injected clock.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mesh_auth::AuthSettings;
use mesh_contracts::auth::v1::*;
use mesh_runtime::auth::{Claims, Clock as _, JwksClient, ManualClock, Verifier, VerifierSettings};
use mesh_runtime::client::{ClientOptions, connect};
use mesh_runtime::config::DatabaseTarget;
use mesh_testkit::{self as testing, TestAuth, bearer};
use tonic::Code;

/// Writes `key` as the PKCS#8 PEM file the chart's Secret would mount.
fn key_file(dir: &Path, name: &str, key: &SigningKey) -> PathBuf {
    let file = dir.join(name);
    std::fs::write(
        &file,
        key.to_pkcs8_pem(LineEnding::LF).expect("pem").as_bytes(),
    )
    .expect("write key");
    file
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: &str, claims: &Claims) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, key).expect("sign")
}

fn eddsa(key: &SigningKey) -> EncodingKey {
    EncodingKey::from_ed_der(key.to_pkcs8_der().expect("der").as_bytes())
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token)
        .expect("header")
        .kid
        .expect("kid")
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The value of the series `name{labels}` in the exposition `text` (0 when absent).
fn series(text: &str, name_and_labels: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0)
}

fn rejected(auth: &TestAuth, reason: &str) -> u64 {
    series(
        &auth.metrics.encode(),
        &format!("mesh_auth_rejected_total{{service=\"auth\",reason=\"{reason}\"}}"),
    )
}

async fn refusals(target: DatabaseTarget) {
    let clock = ManualClock::new();
    let dir = std::env::temp_dir().join(testing::unique("mesh-keys"));
    std::fs::create_dir_all(&dir).expect("dir");
    let old_key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    let settings = |file: PathBuf| AuthSettings {
        key_file: Some(file),
        clock: Arc::new(clock.clone()),
        ..AuthSettings::default()
    };

    // The first deployment signs with the old key; a staff member issues a device credential.
    let first = TestAuth::start(&target, settings(key_file(&dir, "old.pem", &old_key))).await;
    let admin = first.admin_token().await;
    let old_kid = kid_of(&admin);
    let device = first
        .client()
        .await
        .issue_device_credential(bearer(
            &admin,
            IssueDeviceCredentialRequest {
                device_id: "vm-7".into(),
                ttl: None,
            },
        ))
        .await
        .expect("device credential")
        .into_inner()
        .credential_token;
    first.shutdown.cancel();

    // The key is rotated: the Secret holds a new key and the Deployment rolls. The old key is
    // retired, still published for the access TTL plus the leeway.
    let new_key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    let auth = TestAuth::start(&target, settings(key_file(&dir, "new.pem", &new_key))).await;
    let mut c = auth.client().await;
    let admin = auth.admin_token().await;
    let new_kid = kid_of(&admin);
    assert_ne!(new_kid, old_kid);
    let refresh_token = auth
        .sign_up("eve@example.com")
        .await
        .tokens
        .expect("tokens")
        .refresh_token;

    let now = clock.now_unix();
    let claims = Claims {
        iss: "mesh-auth".into(),
        sub: "intruder".into(),
        aud: "mesh".into(),
        exp: now + 24 * 3600,
        iat: now,
        nbf: now,
        jti: "j".into(),
        roles: vec!["admin".into()],
        stores: Vec::new(),
    };
    // A leaked old key: during the grace period its tokens still verify, everywhere.
    let leaked = sign(Algorithm::EdDSA, &eddsa(&old_key), &old_kid, &claims);
    let remote = Verifier::new(
        Arc::new(
            JwksClient::new(connect(auth.uri(), ClientOptions::default()))
                .with_clock(Arc::new(clock.clone())),
        ),
        VerifierSettings::default(),
    )
    .with_clock(Arc::new(clock.clone()));
    remote
        .verify(&leaked)
        .await
        .expect("a retired key verifies during its grace period");

    let set_roles = |token: &str| {
        bearer(
            token,
            SetRolesRequest {
                account_id: uuid::Uuid::now_v7().to_string(),
                roles: vec![Role::Staff as i32],
            },
        )
    };
    let public = new_key.verifying_key();
    let public_pem = public
        .to_public_key_pem(LineEnding::LF)
        .expect("public pem");
    let none = format!(
        "{}.{}.",
        b64(
            serde_json::json!({"alg": "none", "typ": "JWT", "kid": new_kid})
                .to_string()
                .as_bytes()
        ),
        b64(serde_json::to_string(&claims).expect("json").as_bytes())
    );
    let signed = |c: Claims| sign(Algorithm::EdDSA, &eddsa(&new_key), &new_kid, &c);
    // Signed by the live key, valid in every claim the verifier reads, but with bytes that are
    // not UTF-8 in a member it does not read (the `jwt` fuzz target found it accepted).
    let not_utf8 = {
        use ed25519_dalek::Signer as _;
        let header = serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": new_kid}).to_string();
        let mut body = serde_json::to_string(&claims).expect("json").into_bytes();
        body.pop();
        body.extend_from_slice(b",\"note\":\"\xa4\xa4\"}");
        let input = format!("{}.{}", b64(header.as_bytes()), b64(&body));
        let signature = new_key.sign(input.as_bytes()).to_bytes();
        format!("{input}.{}", b64(&signature))
    };
    let cases = [
        (
            "claims that are not UTF-8",
            not_utf8,
            "malformed",
            "the claims set is not UTF-8 JSON",
        ),
        ("alg none", none, "algorithm", "algorithm `none` is refused"),
        (
            "HS256 keyed with the raw public key",
            sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(public.as_bytes()),
                &new_kid,
                &claims,
            ),
            "algorithm",
            "algorithm `HS256` is refused",
        ),
        (
            "HS256 keyed with the public key's PEM",
            sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(public_pem.as_bytes()),
                &new_kid,
                &claims,
            ),
            "algorithm",
            "only EdDSA is accepted",
        ),
        (
            "expired",
            signed(Claims {
                exp: now - 3600,
                ..claims.clone()
            }),
            "expired",
            "expired",
        ),
        (
            "another audience",
            signed(Claims {
                aud: "billing".into(),
                ..claims.clone()
            }),
            "audience",
            "audience `billing`, expected `mesh`",
        ),
        (
            "a device credential as a user token",
            device.clone(),
            "not_a_jwt",
            "device credentials",
        ),
        (
            "a refresh token as an access token",
            refresh_token,
            "not_a_jwt",
            "must first be exchanged",
        ),
    ];
    for (case, token, reason, message) in cases {
        let before = rejected(&auth, reason);
        let status = c.set_roles(set_roles(&token)).await.expect_err(case);
        assert_eq!(status.code(), Code::Unauthenticated, "{case}: {status:?}");
        assert!(
            status.message().contains(message),
            "{case}: {:?} should say {message:?}",
            status.message()
        );
        assert!(
            !status.message().contains(&token),
            "{case}: the token is not echoed"
        );
        assert_eq!(rejected(&auth, reason), before + 1, "{case}: counted");
    }

    // The same claims, properly signed, pass: the refusals were for the stated reasons. The
    // account does not exist, which only a verified admin can learn.
    let status = c
        .set_roles(set_roles(&signed(claims.clone())))
        .await
        .expect_err("no such account");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    // Past the grace period the old key leaves the JWKS: its leaked tokens (not expired) are
    // refused by auth and by the remote verifier that had cached the key, once its cached set
    // ages out and is fetched again.
    clock.advance(15 * 60 + 31);
    let status = c
        .set_roles(set_roles(&leaked))
        .await
        .expect_err("rotated out");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status
            .message()
            .contains(&format!("unknown key `{old_kid}`"))
            && status.message().contains("rotated out"),
        "{status:?}"
    );
    assert_eq!(rejected(&auth, "unknown_key"), 1);
    let e = remote
        .verify(&leaked)
        .await
        .expect_err("rotated out remotely");
    assert_eq!(
        e,
        mesh_runtime::auth::AuthError::UnknownKey(old_kid.clone())
    );
    let fresh = signed(Claims {
        exp: clock.now_unix() + 600,
        ..claims.clone()
    });
    remote
        .verify(&fresh)
        .await
        .expect("the new key still verifies");

    // A device's own JWT is a valid token with the device role: it authenticates, and the
    // policy refuses it for a staff RPC (permission, not authentication).
    let device_jwt = c
        .exchange_device_credential(ExchangeDeviceCredentialRequest {
            device_id: "vm-7".into(),
            credential_token: device,
        })
        .await
        .expect("exchange")
        .into_inner()
        .access_token;
    let status = c.set_roles(set_roles(&device_jwt)).await.expect_err("role");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    auth.shutdown.cancel();
}

testing::on_sqlite_and_postgres!(
    #[tokio::test]
    every_refused_token_is_unauthenticated_and_counted_on_sqlite,
    every_refused_token_is_unauthenticated_and_counted_on_postgres,
    "auth token refusals",
    refusals
);
