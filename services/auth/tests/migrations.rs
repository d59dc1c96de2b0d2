//! The migration to microseconds converts the rows a running auth already has: rows written in
//! the old shape (Unix seconds) are served correctly through the API after the upgrade.

use mesh_auth::AuthSettings;
use mesh_auth::tokens::hash_secret;
use mesh_contracts::auth::v1::*;
use mesh_runtime::config::DatabaseTarget;
use mesh_testkit::{self as testing, TestAuth, bearer};

/// The version of `20261203000002_micros.sql`.
const MICROS: i64 = 20261203000002;
/// 2026-01-01T00:00:00Z and 2100-01-01T00:00:00Z, in seconds.
const CREATED: i64 = 1_767_225_600;
const EXPIRES: i64 = 4_102_444_800;
const ACCOUNT: &str = "01890a5d-ac96-774b-bcce-b302099a8057";

async fn upgrade(target: DatabaseTarget) {
    let db = testing::database_before("auth", &target, &mesh_auth::MIGRATIONS, MICROS).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO accounts (id, email, password_hash, display_name, roles, created_at) \
             VALUES ('{ACCOUNT}', 'old@example.com', '', 'Old', 'customer', {CREATED}); \
         INSERT INTO sessions (id, account_id, created_at, expires_at) \
             VALUES ('s-old', '{ACCOUNT}', {CREATED}, {EXPIRES}); \
         INSERT INTO refresh_tokens (token_hash, session_id, created_at, expires_at) \
             VALUES ('{refresh}', 's-old', {CREATED}, {EXPIRES}); \
         INSERT INTO device_credentials (device_id, token_hash, issued_at, expires_at) \
             VALUES ('vm-old', '{device}', {CREATED}, {EXPIRES}); \
         INSERT INTO signing_keys (kid, public_x, private_pem, created_at, retired_at, expires_at) \
             VALUES ('kid-old', 'eA', NULL, {CREATED}, {CREATED}, {EXPIRES});",
        refresh = hash_secret("refresh-old"),
        device = hash_secret("device-old"),
    )))
    .execute(db.pool())
    .await
    .expect("rows in seconds");
    db.close().await;

    // The service migrates the rest at start and serves the converted rows.
    let auth = TestAuth::start(&target, AuthSettings::default()).await;
    let mut client = auth.client().await;

    // The session's expiry was in seconds: read as microseconds it would have ended in 1970.
    let pair = client
        .refresh(RefreshRequest {
            refresh_token: "refresh-old".into(),
        })
        .await
        .expect("the old session refreshes")
        .into_inner()
        .tokens
        .expect("tokens");
    assert_eq!(pair.refresh_expire_time.expect("expiry").seconds, EXPIRES);

    client
        .exchange_device_credential(ExchangeDeviceCredentialRequest {
            device_id: "vm-old".into(),
            credential_token: "device-old".into(),
        })
        .await
        .expect("the old device credential is still valid");

    let jwks = client
        .get_jwks(GetJwksRequest::default())
        .await
        .expect("jwks")
        .into_inner();
    assert!(
        jwks.keys.iter().any(|k| k.kid == "kid-old"),
        "a retired key stays published until its converted expiry: {jwks:?}"
    );

    let admin = auth.admin_token().await;
    let account = client
        .set_roles(bearer(
            &admin,
            SetRolesRequest {
                account_id: ACCOUNT.into(),
                roles: vec![Role::Customer as i32, Role::Staff as i32],
            },
        ))
        .await
        .expect("set roles")
        .into_inner()
        .account
        .expect("account");
    assert_eq!(account.create_time.expect("create time").seconds, CREATED);
}

#[tokio::test]
async fn rows_in_seconds_are_served_after_the_upgrade_on_sqlite() {
    upgrade(testing::sqlite()).await;
}

#[tokio::test]
async fn rows_in_seconds_are_served_after_the_upgrade_on_postgres() {
    let Some(target) = testing::postgres("auth rows in seconds on postgres") else {
        return;
    };
    upgrade(target).await;
}
