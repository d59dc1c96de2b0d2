//! The product service over real gRPC sockets, with a real auth service issuing the tokens:
//! CRUD, categories, paging and filters, every bad-input status, RBAC, on SQLite and Postgres;
//! and, on Postgres + Redis, the cache-aside read cache shared by two instances (a hit after the
//! first read, invalidation by an update and by the service's own events).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_auth::AuthSettings;
use mesh_contracts::common::v1::Money;
use mesh_contracts::events::v1::ProductUpdated;
use mesh_contracts::product::v1::product_service_client::ProductServiceClient;
use mesh_contracts::product::v1::*;
use mesh_product::ProductOptions;
use mesh_runtime::Database;
use mesh_runtime::bus::EventBus;
use mesh_runtime::bus::redis::RedisBus;
use mesh_runtime::config::DatabaseTarget;
use mesh_runtime::outbox::Event;
use mesh_testkit::{self as testing, TestAuth, bearer, eventually};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;

struct Product {
    addr: SocketAddr,
    db: Database,
}

async fn start_product(
    auth: &TestAuth,
    target: &DatabaseTarget,
    bus: Arc<dyn EventBus>,
    options: Option<ProductOptions>,
    shutdown: &CancellationToken,
) -> Product {
    let db = testing::database("product", target, &mesh_product::MIGRATIONS).await;
    let options = options.unwrap_or(ProductOptions {
        redis_url: None,
        cache_prefix: String::new(),
        cache_ttl: Duration::from_secs(60),
        cache_timeout: Duration::from_millis(250),
        local_ttl: Duration::ZERO,
        local_entries: 0,
    });
    let peers = BTreeMap::from([("auth", auth.uri())]);
    let addr = testing::start_until("product", peers, &db, &bus, shutdown, |ctx| {
        mesh_product::build_with(ctx, options)
    })
    .await;
    Product { addr, db }
}

async fn client(addr: SocketAddr) -> ProductServiceClient<Channel> {
    ProductServiceClient::new(testing::channel(addr).await)
}

fn status<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> (Code, String) {
    let s = r.expect_err("expected an error status");
    (s.code(), s.message().to_string())
}

fn assert_invalid<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>, field: &str) {
    let (code, message) = status(r);
    assert_eq!(code, Code::InvalidArgument, "{message}");
    assert!(message.starts_with(field), "`{message}` names `{field}`");
}

fn product(
    sku: &str,
    name: &str,
    amount: i64,
    category: &str,
) -> mesh_contracts::product::v1::Product {
    mesh_contracts::product::v1::Product {
        sku: sku.into(),
        name: name.into(),
        description: format!("{name} description"),
        category_id: category.into(),
        price: Some(Money {
            currency_code: "EUR".into(),
            amount_minor: amount,
        }),
        active: true,
        ..Default::default()
    }
}

async fn catalog(auth_target: DatabaseTarget, target: DatabaseTarget) {
    let shutdown = CancellationToken::new();
    let auth = TestAuth::start(&auth_target, AuthSettings::default()).await;
    let svc = start_product(&auth, &target, testing::memory_bus(), None, &shutdown).await;
    let mut c = client(svc.addr).await;
    let admin = auth.admin_token().await;
    let customer = auth.customer_token().await;

    // Tokens and roles.
    let create = |p| CreateProductRequest { product: Some(p) };
    let (code, _) = status(
        c.create_product(create(product("A-1", "Apple", 100, "")))
            .await,
    );
    assert_eq!(code, Code::Unauthenticated);
    let (code, _) = status(
        c.create_product(bearer(&customer, create(product("A-1", "Apple", 100, ""))))
            .await,
    );
    assert_eq!(code, Code::PermissionDenied);
    let (code, _) = status(
        c.create_product(bearer(
            "forged.token.here",
            create(product("A-1", "Apple", 100, "")),
        ))
        .await,
    );
    assert_eq!(code, Code::Unauthenticated);

    let drinks = c
        .create_category(bearer(
            &admin,
            CreateCategoryRequest {
                category: Some(Category {
                    name: "Drinks".into(),
                    ..Default::default()
                }),
            },
        ))
        .await
        .expect("category")
        .into_inner()
        .category
        .expect("category");
    let cola_cat = c
        .create_category(bearer(
            &admin,
            CreateCategoryRequest {
                category: Some(Category {
                    name: "Colas".into(),
                    parent_id: drinks.id.clone(),
                    ..Default::default()
                }),
            },
        ))
        .await
        .expect("category")
        .into_inner()
        .category
        .expect("category");
    assert_invalid(
        c.create_category(bearer(
            &admin,
            CreateCategoryRequest {
                category: Some(Category::default()),
            },
        ))
        .await,
        "category.name",
    );

    // Bad input names the field; nothing is written.
    assert_invalid(
        c.create_product(bearer(&admin, CreateProductRequest { product: None }))
            .await,
        "product",
    );
    assert_invalid(
        c.create_product(bearer(&admin, create(product("", "Apple", 100, ""))))
            .await,
        "product.sku",
    );
    assert_invalid(
        c.create_product(bearer(&admin, create(product("A 1", "Apple", 100, ""))))
            .await,
        "product.sku",
    );
    assert_invalid(
        c.create_product(bearer(&admin, create(product("A-1", "", 100, ""))))
            .await,
        "product.name",
    );
    assert_invalid(
        c.create_product(bearer(&admin, create(product("A-1", "Apple", -1, ""))))
            .await,
        "product.price.amount_minor",
    );
    let mut no_price = product("A-1", "Apple", 1, "");
    no_price.price = None;
    assert_invalid(
        c.create_product(bearer(&admin, create(no_price))).await,
        "product.price",
    );
    let mut bad_currency = product("A-1", "Apple", 1, "");
    bad_currency.price = Some(Money {
        currency_code: "ABC".into(),
        amount_minor: 1,
    });
    assert_invalid(
        c.create_product(bearer(&admin, create(bad_currency))).await,
        "product.price.currency_code",
    );
    assert_invalid(
        c.create_product(bearer(
            &admin,
            create(product("A-1", "Apple", 1, "not-a-uuid")),
        ))
        .await,
        "product.category_id",
    );
    let unknown = uuid::Uuid::now_v7().to_string();
    assert_invalid(
        c.create_product(bearer(&admin, create(product("A-1", "Apple", 1, &unknown))))
            .await,
        "product.category_id",
    );

    // Create five; the sku is unique.
    let mut ids = Vec::new();
    for (sku, name, cat) in [
        ("COLA-033", "Cola", &cola_cat.id),
        ("COLA-050", "cola large", &cola_cat.id),
        ("WAT-050", "Water", &drinks.id),
        ("APP-1", "Apple", &String::new()),
        ("BAN-1", "Banana", &String::new()),
    ] {
        let p = c
            .create_product(bearer(&admin, create(product(sku, name, 150, cat))))
            .await
            .expect("create")
            .into_inner()
            .product
            .expect("product");
        assert_eq!(p.sku, sku);
        assert!(p.create_time.is_some());
        ids.push(p.id);
    }
    let (code, message) = status(
        c.create_product(bearer(&admin, create(product("COLA-033", "Other", 1, ""))))
            .await,
    );
    assert_eq!(code, Code::AlreadyExists);
    assert!(message.starts_with("product.sku"), "{message}");

    // Reads are public. Malformed and unknown ids.
    let got = c
        .get_product(GetProductRequest { id: ids[0].clone() })
        .await
        .expect("get")
        .into_inner()
        .product
        .expect("product");
    assert_eq!(
        (
            got.name.as_str(),
            got.price.as_ref().map(|m| m.amount_minor)
        ),
        ("Cola", Some(150))
    );
    assert_invalid(
        c.get_product(GetProductRequest { id: "nope".into() }).await,
        "id",
    );
    assert_invalid(
        c.get_product(GetProductRequest { id: String::new() }).await,
        "id",
    );
    let (code, _) = status(
        c.get_product(GetProductRequest {
            id: unknown.clone(),
        })
        .await,
    );
    assert_eq!(code, Code::NotFound);
    let batch = c
        .batch_get_products(BatchGetProductsRequest {
            ids: vec![ids[1].clone(), ids[0].clone()],
        })
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(
        batch
            .products
            .iter()
            .map(|p| p.sku.as_str())
            .collect::<Vec<_>>(),
        ["COLA-050", "COLA-033"]
    );
    let (code, _) = status(
        c.batch_get_products(BatchGetProductsRequest {
            ids: vec![ids[0].clone(), unknown.clone()],
        })
        .await,
    );
    assert_eq!(code, Code::NotFound);
    assert_invalid(
        c.batch_get_products(BatchGetProductsRequest { ids: vec![] })
            .await,
        "ids",
    );

    // Paging by name, with opaque tokens; filters.
    let mut names = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_products(ListProductsRequest {
                page_size: 2,
                page_token: token,
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        assert!(page.products.len() <= 2);
        names.extend(page.products.into_iter().map(|p| p.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names.len(), 5);
    assert_eq!(names, sorted);
    assert_invalid(
        c.list_products(ListProductsRequest {
            page_size: 501,
            ..Default::default()
        })
        .await,
        "page_size",
    );
    assert_invalid(
        c.list_products(ListProductsRequest {
            page_size: -1,
            ..Default::default()
        })
        .await,
        "page_size",
    );
    assert_invalid(
        c.list_products(ListProductsRequest {
            page_token: "garbage!".into(),
            ..Default::default()
        })
        .await,
        "page_token",
    );
    let colas = c
        .list_products(ListProductsRequest {
            category_id: cola_cat.id.clone(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(colas.products.len(), 2);
    let found = c
        .list_products(ListProductsRequest {
            query: "COLA".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(found.products.len(), 2, "case-insensitive in name and sku");
    let found = c
        .list_products(ListProductsRequest {
            query: "50_".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert!(
        found.products.is_empty(),
        "LIKE wildcards in the query are literal"
    );
    let cats = c
        .list_categories(ListCategoriesRequest {
            parent_id: drinks.id.clone(),
            ..Default::default()
        })
        .await
        .expect("categories")
        .into_inner();
    assert_eq!(
        cats.categories
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["Colas"]
    );

    // Updates by mask; inactive products are listed for staff only.
    let mut change = product("", "", 0, "");
    change.id = ids[4].clone();
    change.price = Some(Money {
        currency_code: "USD".into(),
        amount_minor: 99,
    });
    change.active = false;
    let mask = |paths: &[&str]| {
        Some(prost_types::FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        })
    };
    let updated = c
        .update_product(bearer(
            &admin,
            UpdateProductRequest {
                product: Some(change.clone()),
                update_mask: mask(&["price", "active"]),
            },
        ))
        .await
        .expect("update")
        .into_inner()
        .product
        .expect("product");
    assert_eq!(
        (
            updated.name.as_str(),
            updated.price.as_ref().map(|m| m.currency_code.as_str()),
            updated.active
        ),
        ("Banana", Some("USD"), false)
    );
    assert_invalid(
        c.update_product(bearer(
            &admin,
            UpdateProductRequest {
                product: Some(change.clone()),
                update_mask: mask(&["id"]),
            },
        ))
        .await,
        "update_mask",
    );
    assert_invalid(
        c.update_product(bearer(
            &admin,
            UpdateProductRequest {
                product: Some(change.clone()),
                update_mask: None,
            },
        ))
        .await,
        "update_mask",
    );
    assert_invalid(
        c.update_product(bearer(
            &admin,
            UpdateProductRequest {
                product: Some(change.clone()),
                update_mask: mask(&["name"]),
            },
        ))
        .await,
        "product.name",
    );
    let mut dup = change.clone();
    dup.sku = "COLA-033".into();
    let (code, _) = status(
        c.update_product(bearer(
            &admin,
            UpdateProductRequest {
                product: Some(dup),
                update_mask: mask(&["sku"]),
            },
        ))
        .await,
    );
    assert_eq!(code, Code::AlreadyExists);
    let listed = c
        .list_products(ListProductsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.products.len(), 4, "inactive hidden");
    let (code, _) = status(
        c.list_products(ListProductsRequest {
            include_inactive: true,
            ..Default::default()
        })
        .await,
    );
    assert_eq!(code, Code::PermissionDenied);
    let listed = c
        .list_products(bearer(
            &admin,
            ListProductsRequest {
                include_inactive: true,
                ..Default::default()
            },
        ))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.products.len(), 5);

    // Delete.
    c.delete_product(bearer(&admin, DeleteProductRequest { id: ids[3].clone() }))
        .await
        .expect("delete");
    let (code, _) = status(
        c.get_product(GetProductRequest { id: ids[3].clone() })
            .await,
    );
    assert_eq!(code, Code::NotFound);
    let (code, _) = status(
        c.delete_product(bearer(&admin, DeleteProductRequest { id: ids[3].clone() }))
            .await,
    );
    assert_eq!(code, Code::NotFound);

    // Every change emitted its event through the outbox.
    let types = testing::outbox::types(&svc.db).await;
    assert_eq!(types.iter().filter(|t| *t == "product.created").count(), 5);
    assert_eq!(types.iter().filter(|t| *t == "product.updated").count(), 1);
    assert_eq!(types.iter().filter(|t| *t == "product.deleted").count(), 1);
    shutdown.cancel();
    auth.shutdown.cancel();
}

#[tokio::test]
async fn catalog_crud_paging_rbac_and_bad_input_on_sqlite() {
    catalog(testing::sqlite(), testing::sqlite()).await;
}

#[tokio::test]
async fn catalog_crud_paging_rbac_and_bad_input_on_postgres() {
    let (Some(a), Some(p)) = (
        testing::postgres("product catalog (auth)"),
        testing::postgres("product catalog"),
    ) else {
        return;
    };
    catalog(a, p).await;
}

#[tokio::test]
async fn cache_hit_and_invalidation_seen_by_a_second_instance_on_postgres_and_redis() {
    let (Some(target), Some(redis_url)) = (
        testing::postgres("product cache"),
        testing::redis("product cache"),
    ) else {
        return;
    };
    let shutdown = CancellationToken::new();
    let auth = TestAuth::start(&testing::sqlite(), AuthSettings::default()).await;
    let admin = auth.admin_token().await;
    let namespace = format!("{}:", testing::unique("mesh-test"));
    let bus: Arc<dyn EventBus> = Arc::new(
        RedisBus::connect(&redis_url, namespace.clone(), Default::default()).expect("bus"),
    );
    let options = ProductOptions {
        redis_url: Some(redis_url.clone()),
        cache_prefix: format!("{namespace}cache:"),
        cache_ttl: Duration::from_secs(60),
        cache_timeout: Duration::from_millis(250),
        local_ttl: Duration::ZERO,
        local_entries: 0,
    };
    // Two instances of the service on one schema and one Redis, as two replicas.
    let a = start_product(
        &auth,
        &target,
        bus.clone(),
        Some(options.clone()),
        &shutdown,
    )
    .await;
    let b = start_product(
        &auth,
        &target,
        bus.clone(),
        Some(options.clone()),
        &shutdown,
    )
    .await;
    let (mut ca, mut cb) = (client(a.addr).await, client(b.addr).await);

    let p = ca
        .create_product(bearer(
            &admin,
            CreateProductRequest {
                product: Some(product("CACHE-1", "Cached", 100, "")),
            },
        ))
        .await
        .expect("create")
        .into_inner()
        .product
        .expect("product");
    let key = format!("{}product:{}", options.cache_prefix, p.id);
    let redis = redis::Client::open(redis_url.as_str()).expect("redis");
    let mut conn = redis
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let exists = |conn: &mut redis::aio::MultiplexedConnection| {
        let mut conn = conn.clone();
        let key = key.clone();
        async move {
            redis::cmd("EXISTS")
                .arg(&key)
                .query_async::<i64>(&mut conn)
                .await
                .expect("exists")
                == 1
        }
    };
    assert!(!exists(&mut conn).await);

    // First read fills the cache; a change behind the service's back is not seen: a cache hit.
    let get = |c: &mut ProductServiceClient<Channel>| {
        let mut c = c.clone();
        let id = p.id.clone();
        async move {
            c.get_product(GetProductRequest { id })
                .await
                .map(|r| r.into_inner().product.expect("product"))
        }
    };
    assert_eq!(get(&mut cb).await.expect("read").name, "Cached");
    assert!(exists(&mut conn).await, "the first read filled the cache");
    sqlx::query("UPDATE products SET name = 'Changed behind its back' WHERE id = $1")
        .bind(&p.id)
        .execute(b.db.pool())
        .await
        .expect("sql");
    assert_eq!(
        get(&mut cb).await.expect("read").name,
        "Cached",
        "second read served from the cache"
    );

    // An update through instance A is seen by instance B.
    let mut change = product("", "", 0, "");
    change.id = p.id.clone();
    change.price = Some(Money {
        currency_code: "EUR".into(),
        amount_minor: 250,
    });
    ca.update_product(bearer(
        &admin,
        UpdateProductRequest {
            product: Some(change),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["price".into()],
            }),
        },
    ))
    .await
    .expect("update");
    let fresh = get(&mut cb).await.expect("read");
    assert_eq!(fresh.price.as_ref().map(|m| m.amount_minor), Some(250));

    // The product's own event alone drops the entry: change the row behind the service's back,
    // emit product.updated through the outbox, and instance B's answer follows once consumed.
    // First let the update's own event land (it drops the entry once more, asynchronously), so
    // the entry read back now stays cached.
    eventually(
        "the update's event to be handled and a read to fill the cache",
        || {
            let read = get(&mut cb);
            let mut conn = conn.clone();
            let exists = exists(&mut conn);
            async move {
                read.await
                    .is_ok_and(|p| p.price.is_some_and(|m| m.amount_minor == 250))
                    && exists.await
            }
        },
    )
    .await;
    let mut tx = a.db.begin().await.expect("tx");
    sqlx::query("UPDATE products SET amount_minor = 999 WHERE id = $1")
        .bind(&p.id)
        .execute(&mut *tx)
        .await
        .expect("sql");
    tx.emit(Event::new(
        "product.updated",
        &p.id,
        "ProductUpdated",
        &ProductUpdated {
            product: None,
            changed_fields: vec!["price".into()],
        },
    ))
    .await
    .expect("emit");
    tx.commit().await.expect("commit");
    eventually("the event to invalidate the cache", || {
        let read = get(&mut cb);
        async move {
            read.await
                .is_ok_and(|p| p.price.is_some_and(|m| m.amount_minor == 999))
        }
    })
    .await;

    // Delete through A: B answers NOT_FOUND.
    ca.delete_product(bearer(&admin, DeleteProductRequest { id: p.id.clone() }))
        .await
        .expect("delete");
    let (code, _) = status(cb.get_product(GetProductRequest { id: p.id.clone() }).await);
    assert_eq!(code, Code::NotFound);
    shutdown.cancel();
    auth.shutdown.cancel();
}

#[tokio::test]
async fn in_process_cache_tier_hits_and_is_invalidated_by_writes_and_events_on_sqlite() {
    let shutdown = CancellationToken::new();
    let auth = TestAuth::start(&testing::sqlite(), AuthSettings::default()).await;
    let admin = auth.admin_token().await;
    let options = ProductOptions {
        local_ttl: Duration::from_secs(600),
        ..ProductOptions::default()
    };
    let s = start_product(
        &auth,
        &testing::sqlite(),
        testing::memory_bus(),
        Some(options),
        &shutdown,
    )
    .await;
    let mut c = client(s.addr).await;
    let p = c
        .create_product(bearer(
            &admin,
            CreateProductRequest {
                product: Some(product("LOCAL-1", "Near", 100, "")),
            },
        ))
        .await
        .expect("create")
        .into_inner()
        .product
        .expect("product");
    let get = |c: &mut ProductServiceClient<Channel>| {
        let mut c = c.clone();
        let id = p.id.clone();
        async move {
            c.get_product(GetProductRequest { id })
                .await
                .map(|r| r.into_inner().product.expect("product"))
        }
    };

    // The first read fills the tier; a change behind the service's back is not seen.
    assert_eq!(get(&mut c).await.expect("read").name, "Near");
    sqlx::query("UPDATE products SET name = 'Changed behind its back' WHERE id = $1")
        .bind(&p.id)
        .execute(s.db.pool())
        .await
        .expect("sql");
    assert_eq!(get(&mut c).await.expect("read").name, "Near", "a hit");

    // A write through the service drops the entry at once.
    let mut change = product("", "", 0, "");
    change.id = p.id.clone();
    change.price = Some(Money {
        currency_code: "EUR".into(),
        amount_minor: 250,
    });
    c.update_product(bearer(
        &admin,
        UpdateProductRequest {
            product: Some(change),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["price".into()],
            }),
        },
    ))
    .await
    .expect("update");
    let fresh = get(&mut c).await.expect("read");
    assert_eq!(fresh.price.map(|m| m.amount_minor), Some(250));
    assert_eq!(
        fresh.name, "Changed behind its back",
        "read from the database"
    );

    // The product's own event drops it too.
    let mut tx = s.db.begin().await.expect("tx");
    sqlx::query("UPDATE products SET amount_minor = 999 WHERE id = $1")
        .bind(&p.id)
        .execute(&mut *tx)
        .await
        .expect("sql");
    tx.emit(Event::new(
        "product.updated",
        &p.id,
        "ProductUpdated",
        &ProductUpdated {
            product: None,
            changed_fields: vec!["price".into()],
        },
    ))
    .await
    .expect("emit");
    tx.commit().await.expect("commit");
    eventually("the event to invalidate the in-process tier", || {
        let read = get(&mut c);
        async move {
            read.await
                .is_ok_and(|p| p.price.is_some_and(|m| m.amount_minor == 999))
        }
    })
    .await;

    // A delete is seen at once.
    c.delete_product(bearer(&admin, DeleteProductRequest { id: p.id.clone() }))
        .await
        .expect("delete");
    let (code, _) = status(get(&mut c).await.map(tonic::Response::new));
    assert_eq!(code, Code::NotFound);
    shutdown.cancel();
}
