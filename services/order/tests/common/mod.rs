//! A small mesh for order's tests: auth, product, inventory, campaign, notification (log
//! channel) and order over real gRPC on loopback, on one bus (in-process, or Redis) and one
//! database target per service (SQLite, or Postgres schemas). Payment is the real service or a
//! stand-in that only tokenizes cards; with the stand-in the tests play payment's part of the
//! saga by publishing `payment.succeeded` / `payment.failed` themselves.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_contracts::common::v1::{Money, PaymentMethod, PostalAddress, payment_method};
use mesh_contracts::events::v1::{PaymentFailed, PaymentSucceeded};
use mesh_contracts::inventory::v1::inventory_service_client::InventoryServiceClient;
use mesh_contracts::inventory::v1::{AdjustStockRequest, AdjustmentReason, GetStockRequest};
use mesh_contracts::order::v1::order_service_client::OrderServiceClient;
use mesh_contracts::order::v1::*;
use mesh_contracts::payment::v1::payment_service_server::{PaymentService, PaymentServiceServer};
use mesh_contracts::payment::v1::{TokenizeCardRequest, TokenizeCardResponse};
use mesh_contracts::product::v1::product_service_client::ProductServiceClient;
use mesh_contracts::product::v1::{CreateProductRequest, Product};
use mesh_order::OrderOptions;
use mesh_order::peers::Peers;
use mesh_runtime::Database;
use mesh_runtime::auth::{ServiceTokenChannel, ServiceTokens};
use mesh_runtime::bus::EventBus;
use mesh_runtime::client::{ClientOptions, connect};
use mesh_runtime::config::DatabaseTarget;
use mesh_runtime::{ServiceContext, ServiceRoutes};
use mesh_testkit::{self as testing, TestAuth, bearer};
use sqlx::Row as _;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// Where the mesh keeps its data.
#[derive(Debug, Clone)]
pub enum Backend {
    /// SQLite files and the in-process bus.
    Embedded,
    /// Postgres schemas (`url`) and Redis Streams (`redis`).
    Real {
        /// Postgres URL.
        url: String,
        /// Redis URL.
        redis: String,
    },
}

impl Backend {
    /// Postgres + Redis from the test environment, or `None` after a loud SKIPPED line (a
    /// failure when `MESH_TEST_REQUIRE_BACKENDS=1`).
    pub fn real(test: &str) -> Option<Self> {
        let url = testing::postgres_url(test);
        let redis = testing::redis(test);
        Some(Self::Real {
            url: url?,
            redis: redis?,
        })
    }

    fn target(&self) -> DatabaseTarget {
        match self {
            Self::Embedded => testing::sqlite(),
            Self::Real { url, .. } => DatabaseTarget::Postgres {
                url: url.clone(),
                schema: testing::unique("t"),
            },
        }
    }

    fn bus(&self) -> Arc<dyn EventBus> {
        match self {
            Self::Embedded => testing::memory_bus(),
            Self::Real { redis, .. } => testing::bus("order", Some(redis)),
        }
    }
}

/// Two tests of the scenario `$scenario(backend)`: `$sqlite` on SQLite + the in-process bus, and
/// `$real` on Postgres + Redis ([`Backend::real`] with `$label`: skipped when they are not set,
/// a failure when `MESH_TEST_REQUIRE_BACKENDS=1`).
#[macro_export]
macro_rules! on_both_backends {
    ($sqlite:ident, $real:ident, $label:literal, $scenario:ident) => {
        #[tokio::test]
        async fn $sqlite() {
            $scenario($crate::common::Backend::Embedded).await;
        }

        #[tokio::test]
        async fn $real() {
            if let Some(backend) = $crate::common::Backend::real($label) {
                $scenario(backend).await;
            }
        }
    };
}

/// The stand-in payment: tokenizes cards that are 16 digits (`tok_<last4>_<n>`), refuses the
/// rest with INVALID_ARGUMENT as payment would.
#[derive(Debug, Default, Clone)]
pub struct FakePayment;

mesh_testkit::test_double! {
    impl PaymentService for FakePayment {
        async fn tokenize_card(
            &self,
            r: Request<TokenizeCardRequest>,
        ) -> Result<Response<TokenizeCardResponse>, Status> {
            let card = r.into_inner().card.unwrap_or_default();
            let digits: String = card.number.chars().filter(char::is_ascii_digit).collect();
            if digits.len() != 16 {
                return Err(Status::invalid_argument(
                    "card.number: 12 to 19 digits, Luhn-valid",
                ));
            }
            Ok(Response::new(TokenizeCardResponse {
                card_token: format!("tok_{}_{}", &digits[12..], uuid::Uuid::now_v7().simple()),
                card_brand: "visa".into(),
                card_last4: digits[12..].to_string(),
            }))
        }
    }
    unused {
        charge(mesh_contracts::payment::v1::ChargeRequest) -> mesh_contracts::payment::v1::ChargeResponse;
        get_payment(mesh_contracts::payment::v1::GetPaymentRequest) -> mesh_contracts::payment::v1::GetPaymentResponse;
        list_transactions(mesh_contracts::payment::v1::ListTransactionsRequest) -> mesh_contracts::payment::v1::ListTransactionsResponse;
        refund(mesh_contracts::payment::v1::RefundRequest) -> mesh_contracts::payment::v1::RefundResponse;
    }
}

/// Which payment service the mesh runs.
#[derive(Debug, Clone)]
pub enum Payment {
    /// [`FakePayment`]: tokenizes only; the test publishes payment's events.
    Fake,
    /// The real payment service (simulated card processor) with these settings.
    Real(mesh_payment::PaymentSettings),
}

/// The stand-in for a slow campaign: PriceCart answers after 30 s.
#[derive(Debug, Default, Clone)]
pub struct SlowCampaign;

use mesh_contracts::campaign::v1 as campaign_pb;
use mesh_contracts::campaign::v1::campaign_service_server::CampaignService;

mesh_testkit::test_double! {
    impl CampaignService for SlowCampaign {
        async fn price_cart(
            &self,
            _: Request<mesh_contracts::campaign::v1::PriceCartRequest>,
        ) -> Result<Response<mesh_contracts::campaign::v1::PriceCartResponse>, Status> {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Err(Status::unavailable("too late"))
        }
    }
    unused {
        create_campaign(campaign_pb::CreateCampaignRequest) -> campaign_pb::CreateCampaignResponse;
        get_campaign(campaign_pb::GetCampaignRequest) -> campaign_pb::GetCampaignResponse;
        list_campaigns(campaign_pb::ListCampaignsRequest) -> campaign_pb::ListCampaignsResponse;
        end_campaign(campaign_pb::EndCampaignRequest) -> campaign_pb::EndCampaignResponse;
        release_holds(campaign_pb::ReleaseHoldsRequest) -> campaign_pb::ReleaseHoldsResponse;
    }
}

/// Which campaign order talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CampaignPeer {
    /// The real campaign service.
    Real,
    /// Nothing listens at its address.
    Down,
    /// [`SlowCampaign`].
    Slow,
}

/// The running mesh.
pub struct Mesh {
    pub campaign_db: Database,
    pub campaigns:
        mesh_contracts::campaign::v1::campaign_service_client::CampaignServiceClient<Channel>,
    /// Order's metrics registry.
    pub order_metrics: mesh_runtime::Metrics,
    pub payment_db: Database,
    /// Notification's database (its delivery log).
    pub notification_db: Database,
    pub auth: TestAuth,
    pub bus: Arc<dyn EventBus>,
    pub order_db: Database,
    pub inventory_db: Database,
    pub order_addr: SocketAddr,
    pub admin: String,
    pub shutdown: CancellationToken,
    pub products: ProductServiceClient<Channel>,
    pub inventory: InventoryServiceClient<Channel>,
    pub orders: OrderServiceClient<Channel>,
    /// Payment (the real one or the fake, as started).
    pub payments:
        mesh_contracts::payment::v1::payment_service_client::PaymentServiceClient<Channel>,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn uri(addr: SocketAddr) -> http::Uri {
    format!("http://{addr}").parse().expect("uri")
}

fn context(
    name: &'static str,
    auth: &TestAuth,
    db: &Database,
    bus: &Arc<dyn EventBus>,
    shutdown: &CancellationToken,
) -> ServiceContext {
    testing::context(
        name,
        BTreeMap::from([("auth", auth.uri())]),
        db.clone(),
        bus.clone(),
        shutdown.clone(),
    )
}

async fn serve(
    name: &str,
    routes: ServiceRoutes,
    db: &Database,
    bus: &Arc<dyn EventBus>,
    shutdown: &CancellationToken,
) -> SocketAddr {
    testing::serve(name, routes, db.clone(), bus.clone(), shutdown.clone()).await
}

/// Starts the mesh on `backend` with the saga timeout `timeout` and the fake payment.
pub async fn start(backend: &Backend, timeout: Duration) -> Mesh {
    start_with(backend, timeout, Payment::Fake).await
}

/// Starts the mesh on `backend` with the saga timeout `timeout` and `payment`.
pub async fn start_with(backend: &Backend, timeout: Duration, payment: Payment) -> Mesh {
    start_full(backend, timeout, payment, CampaignPeer::Real).await
}

/// Starts the mesh on `backend` with the saga timeout `timeout`, `payment` and `campaign`
/// (order waits 500 ms for campaign's price).
pub async fn start_full(
    backend: &Backend,
    timeout: Duration,
    payment: Payment,
    campaign: CampaignPeer,
) -> Mesh {
    start_campaign_timeout(
        backend,
        timeout,
        payment,
        campaign,
        Duration::from_millis(500),
    )
    .await
}

/// Like [`start_full`], order waiting at most `campaign_timeout` for campaign's price.
pub async fn start_campaign_timeout(
    backend: &Backend,
    timeout: Duration,
    payment: Payment,
    campaign: CampaignPeer,
    campaign_timeout: Duration,
) -> Mesh {
    let mut options = OrderOptions::with_timeout(timeout);
    options.campaign_timeout = campaign_timeout;
    // Tests of the timeout keep orders open on purpose: no refusals from admission (a third of
    // a 1-2 s timeout) in them; `admission` in tests/orders.rs tests it.
    options.max_saga_backlog = Duration::ZERO;
    start_options(backend, options, payment, campaign).await
}

/// Starts the mesh on `backend` with order's `options`, `payment` and `campaign`.
pub async fn start_options(
    backend: &Backend,
    order_options: OrderOptions,
    payment: Payment,
    campaign: CampaignPeer,
) -> Mesh {
    let auth = TestAuth::start(
        &backend.target(),
        testing::service_client("order", "order-secret"),
    )
    .await;
    let bus = backend.bus();
    let shutdown = CancellationToken::new();

    let product_db =
        testing::database("product", &backend.target(), &mesh_product::MIGRATIONS).await;
    let ctx = context("product", &auth, &product_db, &bus, &shutdown);
    let options =
        mesh_product::ProductOptions::from_context(&ctx, |_| None).expect("product options");
    let routes = mesh_product::build_with(ctx, options)
        .await
        .expect("build product");
    let product_addr = serve("product", routes, &product_db, &bus, &shutdown).await;

    let inventory_db =
        testing::database("inventory", &backend.target(), &mesh_inventory::MIGRATIONS).await;
    let ctx = context("inventory", &auth, &inventory_db, &bus, &shutdown);
    let routes = mesh_inventory::build_with(ctx, mesh_inventory::InventoryOptions::default())
        .await
        .expect("build inventory");
    let inventory_addr = serve("inventory", routes, &inventory_db, &bus, &shutdown).await;

    let payment_addr;
    let payment_db;
    match payment {
        Payment::Fake => {
            payment_db = testing::database(
                "payment",
                &testing::sqlite(),
                &mesh_runtime::Migrations::NONE,
            )
            .await;
            let routes = ServiceRoutes::new().add_service(PaymentServiceServer::new(FakePayment));
            payment_addr = serve(
                "payment",
                routes,
                &payment_db,
                &testing::memory_bus(),
                &shutdown,
            )
            .await;
        }
        Payment::Real(settings) => {
            payment_db =
                testing::database("payment", &backend.target(), &mesh_payment::MIGRATIONS).await;
            let ctx = context("payment", &auth, &payment_db, &bus, &shutdown);
            let routes = mesh_payment::build_with(
                ctx,
                mesh_payment::PaymentOptions {
                    settings,
                    provider: None,
                },
            )
            .await
            .expect("build payment");
            payment_addr = serve("payment", routes, &payment_db, &bus, &shutdown).await;
        }
    }

    let campaign_db =
        testing::database("campaign", &backend.target(), &mesh_campaign::MIGRATIONS).await;
    let campaign_addr = match campaign {
        CampaignPeer::Real => {
            let ctx = context("campaign", &auth, &campaign_db, &bus, &shutdown);
            let routes = mesh_campaign::build_with(ctx, mesh_campaign::CampaignSettings::default())
                .await
                .expect("build campaign");
            serve("campaign", routes, &campaign_db, &bus, &shutdown).await
        }
        CampaignPeer::Slow => {
            let routes = ServiceRoutes::new().add_service(
                mesh_contracts::campaign::v1::campaign_service_server::CampaignServiceServer::new(
                    SlowCampaign,
                ),
            );
            serve(
                "campaign",
                routes,
                &campaign_db,
                &testing::memory_bus(),
                &shutdown,
            )
            .await
        }
        CampaignPeer::Down => {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr")
        }
    };

    let notification_db = testing::database(
        "notification",
        &backend.target(),
        &mesh_notification::MIGRATIONS,
    )
    .await;
    let ctx = context("notification", &auth, &notification_db, &bus, &shutdown);
    let routes = mesh_notification::build_with(ctx, Default::default())
        .await
        .expect("build notification");
    serve("notification", routes, &notification_db, &bus, &shutdown).await;

    let order_db = testing::database("order", &backend.target(), &mesh_order::MIGRATIONS).await;
    let ctx = context("order", &auth, &order_db, &bus, &shutdown);
    let order_metrics = ctx.metrics().clone();
    let tokens = ServiceTokens::new(
        connect(auth.uri(), ClientOptions::default()),
        "order",
        "order-secret",
    );
    let channel = |addr| {
        ServiceTokenChannel::new(
            connect(uri(addr), ClientOptions::default()),
            Some(tokens.clone()),
        )
    };
    let peers = Peers::new(
        channel(product_addr),
        channel(payment_addr),
        channel(campaign_addr),
    );
    let routes = mesh_order::build_with(ctx, order_options, peers)
        .await
        .expect("build order");
    let order_addr = serve("order", routes, &order_db, &bus, &shutdown).await;

    let admin = auth.admin_token().await;
    Mesh {
        campaign_db,
        campaigns:
            mesh_contracts::campaign::v1::campaign_service_client::CampaignServiceClient::new(
                // Lazy: nothing listens when the campaign is down.
                tonic::transport::Endpoint::from_shared(format!("http://{campaign_addr}"))
                    .expect("uri")
                    .connect_lazy(),
            ),
        order_metrics,
        payment_db,
        notification_db,
        bus,
        order_db,
        inventory_db,
        order_addr,
        admin,
        shutdown,
        products: ProductServiceClient::new(testing::channel(product_addr).await),
        inventory: InventoryServiceClient::new(testing::channel(inventory_addr).await),
        orders: OrderServiceClient::new(testing::channel(order_addr).await),
        payments: mesh_contracts::payment::v1::payment_service_client::PaymentServiceClient::new(
            testing::channel(payment_addr).await,
        ),
        auth,
    }
}

impl Mesh {
    /// Creates an active product priced `minor` in `currency` and stocks `units` of it.
    pub async fn product(&self, minor: i64, currency: &str, units: i64) -> Product {
        let sku = format!("SKU-{}", uuid::Uuid::now_v7().simple());
        let product = self
            .products
            .clone()
            .create_product(bearer(
                &self.admin,
                CreateProductRequest {
                    product: Some(Product {
                        sku: sku.clone(),
                        name: format!("Product {sku}"),
                        price: Some(Money {
                            currency_code: currency.into(),
                            amount_minor: minor,
                        }),
                        active: true,
                        ..Default::default()
                    }),
                },
            ))
            .await
            .expect("create product")
            .into_inner()
            .product
            .expect("product");
        if units > 0 {
            self.restock(&product.id, units).await;
        }
        product
    }

    /// Adds `units` of `product` at the default location.
    pub async fn restock(&self, product: &str, units: i64) {
        self.restock_at("default", product, units).await;
    }

    /// Adds `units` of `product` at `location`.
    pub async fn restock_at(&self, location: &str, product: &str, units: i64) {
        self.inventory
            .clone()
            .adjust_stock(bearer(
                &self.admin,
                AdjustStockRequest {
                    location_id: location.into(),
                    product_id: product.into(),
                    delta: units,
                    reason: AdjustmentReason::Restock as i32,
                    ..Default::default()
                },
            ))
            .await
            .expect("restock");
    }

    /// (on hand, reserved) of `product` at the default location.
    pub async fn stock(&self, product: &str) -> (i64, i64) {
        self.stock_at("default", product).await
    }

    /// (on hand, reserved) of `product` at `location`.
    pub async fn stock_at(&self, location: &str, product: &str) -> (i64, i64) {
        let s = self
            .inventory
            .clone()
            .get_stock(bearer(
                &self.admin,
                GetStockRequest {
                    location_id: location.into(),
                    product_id: product.into(),
                },
            ))
            .await
            .expect("stock")
            .into_inner()
            .stock
            .expect("stock");
        (s.on_hand, s.reserved)
    }

    /// Polls order `id` (as `token`) until it has `status` (bounded).
    pub async fn until(&self, token: &str, id: &str, status: OrderStatus) -> Order {
        self.until_order(token, id, &format!("to become {status:?}"), |order| {
            order.status == status as i32
        })
        .await
    }

    /// Polls order `id` (as `token`) until `done` holds for it (bounded); `what` says what is
    /// waited for.
    pub async fn until_order(
        &self,
        token: &str,
        id: &str,
        what: &str,
        done: impl Fn(&Order) -> bool,
    ) -> Order {
        testing::until_value(
            Duration::from_secs(30),
            &format!("order {id} {what}"),
            || async {
                self.orders
                    .clone()
                    .get_order(bearer(token, GetOrderRequest { id: id.into() }))
                    .await
                    .expect("get order")
                    .into_inner()
                    .order
                    .expect("order")
            },
            done,
        )
        .await
    }

    /// Payment's record of `order`: (status, amount, refunded), if it has one.
    pub async fn payment_of(&self, order: &str) -> Option<(String, i64, i64)> {
        sqlx::query("SELECT status, amount_minor, refunded_minor FROM payments WHERE order_id = $1")
            .bind(order)
            .fetch_optional(self.payment_db.pool())
            .await
            .expect("payments")
            .map(|r| {
                (
                    r.get::<String, _>("status"),
                    r.get::<i64, _>("amount_minor"),
                    r.get::<i64, _>("refunded_minor"),
                )
            })
    }

    /// Polls payment's record of `order` until `done` holds for it (bounded): (status, amount,
    /// refunded).
    pub async fn until_payment(
        &self,
        order: &str,
        done: impl Fn(&(String, i64, i64)) -> bool,
    ) -> (String, i64, i64) {
        testing::until_value(
            Duration::from_secs(30),
            &format!("payment of {order}"),
            || self.payment_of(order),
            |got| got.as_ref().is_some_and(&done),
        )
        .await
        .expect("a payment record")
    }

    /// Polls until the stock of `product` is (on hand, reserved) = `want` (bounded).
    pub async fn until_stock(&self, product: &str, want: (i64, i64)) {
        self.until_stock_at("default", product, want).await;
    }

    /// Polls until the stock of `product` at `location` is (on hand, reserved) = `want`
    /// (bounded).
    pub async fn until_stock_at(&self, location: &str, product: &str, want: (i64, i64)) {
        testing::until_value(
            Duration::from_secs(30),
            &format!("stock of {product} at {location} to become {want:?}"),
            || self.stock_at(location, product),
            |now| *now == want,
        )
        .await;
    }

    /// Places `req` as `token`; the order placed.
    pub async fn place(&self, token: &str, req: PlaceOrderRequest) -> Order {
        self.orders
            .clone()
            .place_order(bearer(token, req))
            .await
            .expect("place order")
            .into_inner()
            .order
            .expect("order")
    }

    /// Publishes a payment event about `order` as payment would.
    pub async fn payment_event(&self, order: &Order, succeeded: bool) {
        let payment_id = uuid::Uuid::now_v7().to_string();
        let mut envelope = if succeeded {
            testing::envelope(
                "payment.succeeded",
                &payment_id,
                "PaymentSucceeded",
                &PaymentSucceeded {
                    payment_id: payment_id.clone(),
                    order_id: order.id.clone(),
                    customer_id: order.customer_id.clone(),
                    amount: order.total.clone(),
                    ..Default::default()
                },
            )
        } else {
            testing::envelope(
                "payment.failed",
                &payment_id,
                "PaymentFailed",
                &PaymentFailed {
                    payment_id: payment_id.clone(),
                    order_id: order.id.clone(),
                    customer_id: order.customer_id.clone(),
                    amount: order.total.clone(),
                    message: "card declined".into(),
                    ..Default::default()
                },
            )
        };
        envelope.correlation_id = order.id.clone();
        testing::publish(self.bus.as_ref(), &envelope).await;
    }
}

/// A valid shipping address.
pub fn address() -> PostalAddress {
    PostalAddress {
        recipient_name: "Ada Lovelace".into(),
        address_lines: vec!["1 Analytical Way".into()],
        locality: "London".into(),
        postal_code: "N1 9GU".into(),
        region_code: "GB".into(),
        ..Default::default()
    }
}

/// Paying with a token.
pub fn token(t: &str) -> Option<PaymentMethod> {
    Some(PaymentMethod {
        method: Some(payment_method::Method::CardToken(t.into())),
    })
}

/// Paying with a raw card.
pub fn card(number: &str) -> Option<PaymentMethod> {
    testing::walkthrough::card(number, "Ada Lovelace")
}

/// A request for `lines` (product id, units) under a fresh key, paid with a token.
pub fn request(lines: &[(&str, i64)]) -> PlaceOrderRequest {
    PlaceOrderRequest {
        idempotency_key: uuid::Uuid::now_v7().to_string(),
        customer_id: String::new(),
        lines: lines
            .iter()
            .map(|(p, q)| LineItem {
                product_id: (*p).into(),
                quantity: *q,
            })
            .collect(),
        shipping_address: Some(address()),
        payment_method: token("tok_test"),
        promo_code: String::new(),
        currency_code: String::new(),
        store_id: String::new(),
    }
}
