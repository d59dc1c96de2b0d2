//! The user service over real gRPC with real tokens, its profiles made by auth's events: every
//! RPC, who may see which profile, addresses and consent, store assignments, roles turning a
//! profile into staff, listing and paging, erasure (idempotent, outbox redacted, no
//! resurrection), and bad input naming the field. SQLite with the in-process bus always;
//! Postgres + Redis when `MESH_TEST_DATABASE_URL` / `MESH_TEST_REDIS_URL` are set.

mod common;

use common::{Mesh, start};
use mesh_contracts::auth::v1::{Role as AuthRole, SetRolesRequest};
use mesh_contracts::common::v1::PostalAddress;
use mesh_contracts::events::v1::{UserDeleted, UserRegistered, UserUpdated};
use mesh_contracts::user::v1::user_service_client::UserServiceClient;
use mesh_contracts::user::v1::*;
use mesh_runtime::config::DatabaseTarget;
use mesh_testkit::{self as testing, bearer};
use prost::Message as _;
use sqlx::Row as _;
use tonic::Code;
use tonic::transport::Channel;

fn assert_invalid<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>, field: &str) {
    let s = r.expect_err("expected INVALID_ARGUMENT");
    assert_eq!(s.code(), Code::InvalidArgument, "{}", s.message());
    assert!(
        s.message().starts_with(&format!("{field}:")),
        "`{}` names `{field}`",
        s.message()
    );
}

fn code<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    r.expect_err("expected an error").code()
}

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    })
}

fn address(label: &str, region: &str, default: bool) -> Address {
    Address {
        label: label.into(),
        postal_address: Some(PostalAddress {
            recipient_name: "Ada Lovelace".into(),
            address_lines: vec!["1 Main Street".into()],
            locality: "Berlin".into(),
            postal_code: "10115".into(),
            region_code: region.into(),
            ..Default::default()
        }),
        is_default: default,
        ..Default::default()
    }
}

async fn get(
    c: &mut UserServiceClient<Channel>,
    token: &str,
    id: &str,
) -> Result<tonic::Response<GetUserResponse>, tonic::Status> {
    c.get_user(bearer(token, GetUserRequest { id: id.into() }))
        .await
}

/// The profile of a fresh sign-up, once auth's event made it.
async fn profile_of(m: &Mesh, id: &str, token: &str) -> User {
    let mut c = m.client().await;
    testing::eventually("the profile is created from user.registered", || {
        let mut c = c.clone();
        async move { get(&mut c, token, id).await.is_ok() }
    })
    .await;
    get(&mut c, token, id)
        .await
        .expect("get")
        .into_inner()
        .user
        .expect("user")
}

async fn update(
    c: &mut UserServiceClient<Channel>,
    token: &str,
    user: User,
    paths: &[&str],
) -> Result<tonic::Response<UpdateUserResponse>, tonic::Status> {
    c.update_user(bearer(
        token,
        UpdateUserRequest {
            user: Some(user),
            update_mask: mask(paths),
        },
    ))
    .await
}

async fn rpcs(auth: DatabaseTarget, target: DatabaseTarget, redis: Option<&str>) {
    let m = start(auth, target, redis).await;
    let mut c = m.client().await;
    let email = format!("{}@example.com", testing::unique("ada"));
    let (ada, ada_token) = m.sign_up(&email).await;
    let (bob, bob_token) = m
        .sign_up(&format!("{}@example.com", testing::unique("bob")))
        .await;

    // Profiles come from auth's event, with the login email.
    let p = profile_of(&m, &ada, &ada_token).await;
    assert_eq!(p.kind, UserKind::Customer as i32);
    assert_eq!(p.email, email);
    assert_eq!(p.marketing_consent.as_ref().unwrap().source, "signup");
    profile_of(&m, &bob, &bob_token).await;
    let created = m.emitted("user.updated", &ada).await;
    assert_eq!(created.len(), 1);
    let snap = UserUpdated::decode(created[0].payload.as_ref().unwrap().value.as_slice()).unwrap();
    assert_eq!((snap.email.as_str(), snap.version), (email.as_str(), 1));
    assert_eq!(snap.changed_fields, vec!["created"]);

    // The same registration again (a new event id) changes nothing.
    let again = UserRegistered {
        user_id: ada.clone(),
        email: "other@example.com".into(),
        ..Default::default()
    };
    m.deliver(&testing::envelope(
        "user.registered",
        &ada,
        "UserRegistered",
        &again,
    ))
    .await;
    assert_eq!(m.emitted("user.updated", &ada).await.len(), 1);

    // Who sees what: no token is UNAUTHENTICATED, another customer's profile NOT_FOUND (like an
    // unknown id), staff see anyone; customers may not list or create.
    assert_eq!(
        code(c.get_user(GetUserRequest { id: ada.clone() }).await),
        Code::Unauthenticated
    );
    assert_eq!(code(get(&mut c, &bob_token, &ada).await), Code::NotFound);
    assert_eq!(
        code(get(&mut c, &m.admin, "no-such-user").await),
        Code::NotFound
    );
    assert_eq!(
        get(&mut c, &m.admin, &ada)
            .await
            .unwrap()
            .into_inner()
            .user
            .unwrap()
            .email,
        email
    );
    assert_eq!(
        code(
            c.list_users(bearer(&ada_token, ListUsersRequest::default()))
                .await
        ),
        Code::PermissionDenied
    );
    assert_eq!(
        code(
            c.create_user(bearer(&ada_token, CreateUserRequest::default()))
                .await
        ),
        Code::PermissionDenied
    );
    assert_eq!(
        code(
            update(
                &mut c,
                &bob_token,
                User {
                    id: ada.clone(),
                    display_name: "x".into(),
                    ..Default::default()
                },
                &["display_name"]
            )
            .await
        ),
        Code::NotFound
    );

    // A customer edits their own profile: names, phone, addresses (one default), consent.
    let edited = update(
        &mut c,
        &ada_token,
        User {
            id: ada.clone(),
            display_name: "Ada".into(),
            given_name: "Ada".into(),
            family_name: "Lovelace".into(),
            phone_number: "+4930123456".into(),
            locale: "en-GB".into(),
            addresses: vec![address("Home", "de", false), address("Office", "GB", true)],
            marketing_consent: Some(MarketingConsent {
                email: true,
                sms: true,
                source: "profile".into(),
                ..Default::default()
            }),
            ..Default::default()
        },
        &["*"],
    )
    .await
    .expect("update")
    .into_inner()
    .user
    .unwrap();
    assert_eq!(edited.display_name, "Ada");
    assert_eq!(edited.addresses.len(), 2);
    assert!(!edited.addresses[0].is_default && edited.addresses[1].is_default);
    assert_eq!(
        edited.addresses[0]
            .postal_address
            .as_ref()
            .unwrap()
            .region_code,
        "DE"
    );
    let consent = edited.marketing_consent.clone().unwrap();
    assert!(consent.email && consent.sms && !consent.push);
    assert_eq!(consent.source, "profile");
    assert_ne!(
        consent.update_time,
        p.marketing_consent.unwrap().update_time
    );
    assert_eq!(edited.email, email, "email stays auth's");
    let read = get(&mut c, &ada_token, &ada)
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(read.addresses, edited.addresses);
    assert_eq!(read.phone_number, "+4930123456");
    let snaps = m.emitted("user.updated", &ada).await;
    let last = UserUpdated::decode(
        snaps
            .last()
            .unwrap()
            .payload
            .as_ref()
            .unwrap()
            .value
            .as_slice(),
    )
    .unwrap();
    assert_eq!(last.version, 2);
    assert!(last.marketing_email && last.marketing_sms);
    assert!(last.changed_fields.contains(&"addresses".to_string()));

    // Bad input names the field.
    let mut no_country = edited.clone();
    no_country.addresses.push(address("Away", "", false));
    assert_invalid(
        update(&mut c, &ada_token, no_country, &["addresses"]).await,
        "user.addresses[2].postal_address.region_code",
    );
    let mut two_defaults = edited.clone();
    two_defaults.addresses[0].is_default = true;
    assert_invalid(
        update(&mut c, &ada_token, two_defaults, &["addresses"]).await,
        "user.addresses",
    );
    let with = |f: fn(&mut User)| {
        let mut u = User {
            id: ada.clone(),
            ..Default::default()
        };
        f(&mut u);
        u
    };
    assert_invalid(
        update(
            &mut c,
            &ada_token,
            with(|u| u.phone_number = "030 1234".into()),
            &["phone_number"],
        )
        .await,
        "user.phone_number",
    );
    assert_invalid(
        update(
            &mut c,
            &ada_token,
            with(|u| u.locale = "not a locale".into()),
            &["locale"],
        )
        .await,
        "user.locale",
    );
    assert_invalid(
        update(
            &mut c,
            &ada_token,
            with(|u| u.display_name = "x".repeat(201)),
            &["display_name"],
        )
        .await,
        "user.display_name",
    );
    assert_invalid(
        update(&mut c, &ada_token, with(|_| {}), &["shoe_size"]).await,
        "update_mask",
    );
    assert_invalid(
        update(&mut c, &ada_token, with(|_| {}), &["email"]).await,
        "update_mask",
    );
    assert_invalid(
        update(&mut c, &ada_token, with(|_| {}), &[]).await,
        "update_mask",
    );
    assert_invalid(
        update(
            &mut c,
            &ada_token,
            with(|u| u.id = "bad id".into()),
            &["locale"],
        )
        .await,
        "user.id",
    );
    assert_invalid(
        c.update_user(bearer(&ada_token, UpdateUserRequest::default()))
            .await,
        "user",
    );
    assert_invalid(get(&mut c, &ada_token, "").await, "id");
    assert_invalid(
        c.delete_user(bearer(&ada_token, DeleteUserRequest { id: String::new() }))
            .await,
        "id",
    );
    // Store assignments are the admins' to change, and only staff work at stores.
    assert_eq!(
        code(
            update(
                &mut c,
                &ada_token,
                with(|u| u.store_ids = vec!["s1".into()]),
                &["store_ids"]
            )
            .await
        ),
        Code::PermissionDenied
    );
    assert_eq!(
        code(
            update(
                &mut c,
                &m.admin,
                with(|u| u.store_ids = vec!["s1".into()]),
                &["store_ids"]
            )
            .await
        ),
        Code::FailedPrecondition
    );

    // Staff create staff profiles (for an account id they supply).
    let staff_id = testing::unique("staff");
    let staff_user = |id: &str| User {
        id: id.into(),
        kind: UserKind::Staff as i32,
        email: "Clerk@Example.com".into(),
        display_name: "Clerk".into(),
        store_ids: vec!["store-b".into(), "store-a".into()],
        addresses: vec![address("Home", "FR", false)],
        ..Default::default()
    };
    let made = c
        .create_user(bearer(
            &m.admin,
            CreateUserRequest {
                user: Some(staff_user(&staff_id)),
            },
        ))
        .await
        .expect("create")
        .into_inner()
        .user
        .unwrap();
    assert_eq!(made.email, "clerk@example.com");
    assert_eq!(made.store_ids, vec!["store-a", "store-b"]);
    assert!(made.addresses[0].is_default);
    assert_eq!(
        code(
            c.create_user(bearer(
                &m.admin,
                CreateUserRequest {
                    user: Some(staff_user(&staff_id))
                }
            ))
            .await
        ),
        Code::AlreadyExists
    );
    let mut no_kind = staff_user("x1");
    no_kind.kind = 0;
    assert_invalid(
        c.create_user(bearer(
            &m.admin,
            CreateUserRequest {
                user: Some(no_kind),
            },
        ))
        .await,
        "user.kind",
    );
    let mut no_email = staff_user("x2");
    no_email.email = "clerk".into();
    assert_invalid(
        c.create_user(bearer(
            &m.admin,
            CreateUserRequest {
                user: Some(no_email),
            },
        ))
        .await,
        "user.email",
    );
    let mut bad_store = staff_user("x3");
    bad_store.store_ids = vec!["a store".into()];
    assert_invalid(
        c.create_user(bearer(
            &m.admin,
            CreateUserRequest {
                user: Some(bad_store),
            },
        ))
        .await,
        "user.store_ids[0]",
    );
    assert_invalid(
        c.create_user(bearer(&m.admin, CreateUserRequest { user: None }))
            .await,
        "user",
    );
    let moved = update(
        &mut c,
        &m.admin,
        User {
            id: staff_id.clone(),
            store_ids: vec!["store-c".into()],
            ..Default::default()
        },
        &["store_ids"],
    )
    .await
    .expect("assign")
    .into_inner()
    .user
    .unwrap();
    assert_eq!(moved.store_ids, vec!["store-c"]);
    let snaps = m.emitted("user.updated", &staff_id).await;
    let last = UserUpdated::decode(
        snaps
            .last()
            .unwrap()
            .payload
            .as_ref()
            .unwrap()
            .value
            .as_slice(),
    )
    .unwrap();
    assert_eq!(last.store_ids, vec!["store-c"]);

    // Roles from auth make a profile staff.
    m.auth
        .client()
        .await
        .set_roles(bearer(
            &m.admin,
            SetRolesRequest {
                account_id: bob.clone(),
                roles: vec![AuthRole::Staff as i32],
            },
        ))
        .await
        .expect("set roles");
    testing::eventually("auth.roles_changed makes bob staff", || {
        let mut c = c.clone();
        let (admin, bob) = (m.admin.clone(), bob.clone());
        async move {
            get(&mut c, &admin, &bob)
                .await
                .unwrap()
                .into_inner()
                .user
                .unwrap()
                .kind
                == UserKind::Staff as i32
        }
    })
    .await;

    // Listing: filters and keyset paging (newest first).
    let lister = c.clone();
    let list = |req: ListUsersRequest| {
        let mut c = lister.clone();
        let admin = m.admin.clone();
        async move { c.list_users(bearer(&admin, req)).await }
    };
    let staff = list(ListUsersRequest {
        kind: UserKind::Staff as i32,
        page_size: 500,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .users;
    assert!(staff.iter().any(|u| u.id == staff_id) && staff.iter().any(|u| u.id == bob));
    assert!(staff.iter().all(|u| u.kind == UserKind::Staff as i32));
    let at_c = list(ListUsersRequest {
        store_id: "store-c".into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .users;
    assert_eq!(
        at_c.iter().map(|u| u.id.as_str()).collect::<Vec<_>>(),
        vec![staff_id.as_str()]
    );
    let found = list(ListUsersRequest {
        query: "LOVELACE".into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .users;
    assert_eq!(
        found.iter().map(|u| u.id.as_str()).collect::<Vec<_>>(),
        vec![ada.as_str()]
    );
    let by_mail = list(ListUsersRequest {
        query: email[..8].to_string(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .users;
    assert!(by_mail.iter().any(|u| u.id == ada));
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = list(ListUsersRequest {
            page_size: 1,
            page_token: token.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
        assert!(page.users.len() <= 1);
        seen.extend(page.users.into_iter().map(|u| u.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let everyone = list(ListUsersRequest {
        page_size: 500,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .users;
    assert_eq!(
        seen,
        everyone.iter().map(|u| u.id.clone()).collect::<Vec<_>>()
    );
    assert!(seen.len() >= 4, "admin, ada, bob, the clerk: {seen:?}");
    assert_invalid(
        list(ListUsersRequest {
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await,
        "page_token",
    );
    assert_invalid(
        list(ListUsersRequest {
            page_size: -1,
            ..Default::default()
        })
        .await,
        "page_size",
    );
    assert_invalid(
        list(ListUsersRequest {
            page_size: 501,
            ..Default::default()
        })
        .await,
        "page_size",
    );
    assert_invalid(
        list(ListUsersRequest {
            kind: 9,
            ..Default::default()
        })
        .await,
        "kind",
    );
    assert_invalid(
        list(ListUsersRequest {
            store_id: "a b".into(),
            ..Default::default()
        })
        .await,
        "store_id",
    );

    // Erasure: another customer cannot (NOT_FOUND); the customer can, once; the profile is
    // gone from reads and lists, its personal data from the table and from the outbox.
    assert_eq!(
        code(
            c.delete_user(bearer(&bob_token, DeleteUserRequest { id: ada.clone() }))
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            c.delete_user(bearer(
                &m.admin,
                DeleteUserRequest {
                    id: "nobody".into()
                }
            ))
            .await
        ),
        Code::NotFound
    );
    for _ in 0..2 {
        c.delete_user(bearer(&ada_token, DeleteUserRequest { id: ada.clone() }))
            .await
            .expect("delete is idempotent");
    }
    assert_eq!(code(get(&mut c, &ada_token, &ada).await), Code::NotFound);
    assert_eq!(code(get(&mut c, &m.admin, &ada).await), Code::NotFound);
    let deleted = m.emitted("user.deleted", &ada).await;
    assert_eq!(deleted.len(), 1, "one erasure, one event");
    let d = UserDeleted::decode(deleted[0].payload.as_ref().unwrap().value.as_slice()).unwrap();
    assert_eq!(
        (d.user_id.as_str(), d.actor_id.as_str()),
        (ada.as_str(), ada.as_str())
    );
    // The audit trail keeps that the events happened, not what they carried.
    let trail: Vec<String> = m
        .emitted("user.updated", &ada)
        .await
        .iter()
        .map(|e| e.r#type.clone())
        .collect();
    assert_eq!(trail.len(), 2);
    for e in m.emitted("user.updated", &ada).await {
        assert!(e.payload.unwrap().value.is_empty(), "redacted");
    }
    // A late registration event does not bring the profile back.
    m.deliver(&testing::envelope(
        "user.registered",
        &ada,
        "UserRegistered",
        &UserRegistered {
            user_id: ada.clone(),
            email: email.clone(),
            ..Default::default()
        },
    ))
    .await;
    let everyone = list(ListUsersRequest {
        page_size: 500,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .users;
    assert!(everyone.iter().all(|u| u.id != ada));
    let rows = sqlx::query("SELECT email, display_name, given_name, family_name, phone_number, locale FROM profiles WHERE id = $1")
        .bind(&ada)
        .fetch_one(m.db.pool())
        .await
        .unwrap();
    for col in [
        "email",
        "display_name",
        "given_name",
        "family_name",
        "phone_number",
        "locale",
    ] {
        assert_eq!(rows.get::<String, _>(col), "", "{col} erased");
    }
    let left: i64 = sqlx::query("SELECT COUNT(*) AS n FROM addresses WHERE user_id = $1")
        .bind(&ada)
        .fetch_one(m.db.pool())
        .await
        .unwrap()
        .get("n");
    assert_eq!(left, 0);
    let outbox = sqlx::query("SELECT envelope FROM mesh_outbox")
        .fetch_all(m.db.pool())
        .await
        .unwrap();
    assert!(
        outbox
            .iter()
            .all(|r| !contains(&r.get::<Vec<u8>, _>("envelope"), email.as_bytes()))
    );
    // Staff erase anyone.
    c.delete_user(bearer(
        &m.admin,
        DeleteUserRequest {
            id: staff_id.clone(),
        },
    ))
    .await
    .expect("staff erase");
    m.stop();
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_on_sqlite() {
    rpcs(testing::sqlite(), testing::sqlite(), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_on_postgres_and_redis() {
    let (Some(auth), Some(target), Some(redis)) = (
        testing::postgres("user_rpcs"),
        testing::postgres("user_rpcs"),
        testing::redis("user_rpcs"),
    ) else {
        return;
    };
    rpcs(auth, target, Some(&redis)).await;
}
