//! The vend flow end to end over real gRPC: auth, shop, the IoT gateway with a simulated
//! machine, inventory, payment and vm, each its own server. A vend succeeds (stock committed,
//! charge captured, item dispensed once); a jammed slot and an unresponsive machine refund the
//! charge and release the reservation; a disconnected machine fails without a charge; a declined
//! card releases; a repeated key returns the same vend; a vend interrupted by a crash is finished
//! by the recovery sweep of a restarted instance. Planogram and restock checks.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mesh_auth::AuthSettings;
use mesh_contracts::common::v1::{Money, PaymentMethod};
use mesh_contracts::inventory::v1::GetStockRequest;
use mesh_contracts::inventory::v1::inventory_service_client::InventoryServiceClient;
use mesh_contracts::payment::v1::payment_service_client::PaymentServiceClient;
use mesh_contracts::payment::v1::{GetPaymentRequest, PaymentStatus};
use mesh_contracts::shop::v1::shop_service_client::ShopServiceClient;
use mesh_contracts::shop::v1::{CreateStoreRequest, Machine, RegisterMachineRequest, Store};
use mesh_contracts::vm::v1::vending_machine_service_client::VendingMachineServiceClient;
use mesh_contracts::vm::v1::*;
use mesh_iot_gateway::GatewayOptions;
use mesh_iot_gateway::simulator::{SimDevice, device_tokens};
use mesh_runtime::config::DatabaseTarget;
use mesh_runtime::{Database, Migrations, ServiceContext};
use mesh_testkit::{self as testing, TestAuth, bearer};
use mesh_vm::VmOptions;
use sqlx::Row as _;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;

const SECRET: &str = "shared-secret";

fn context(
    name: &'static str,
    dependencies: &'static [&'static str],
    peers: &BTreeMap<&'static str, http::Uri>,
    db: Database,
    shutdown: CancellationToken,
) -> ServiceContext {
    testing::context_with(
        name,
        dependencies,
        testing::config(),
        peers.clone(),
        db,
        testing::memory_bus(),
        shutdown,
    )
}

fn uri(addr: SocketAddr) -> http::Uri {
    format!("http://{addr}").parse().expect("uri")
}

struct Mesh {
    auth: TestAuth,
    peers: BTreeMap<&'static str, http::Uri>,
    vm: SocketAddr,
    vm_db: Database,
    admin: String,
    customer: String,
    shutdown: CancellationToken,
}

const VM_DEPS: &[&str] = &["auth", "shop", "iot-gateway", "inventory", "payment"];

async fn start_vm(
    peers: &BTreeMap<&'static str, http::Uri>,
    db: Database,
    shutdown: CancellationToken,
) -> SocketAddr {
    let ctx = context("vm", VM_DEPS, peers, db.clone(), shutdown.clone());
    let routes = mesh_vm::build_with(
        ctx,
        VmOptions {
            dispense_timeout: Duration::from_secs(1),
            sweep_every: Duration::from_millis(200),
            client_secret: Some(SECRET.into()),
        },
    )
    .await
    .expect("build vm");
    testing::serve("vm", routes, db, testing::memory_bus(), shutdown).await
}

impl Mesh {
    async fn start(target: DatabaseTarget) -> Self {
        let settings = AuthSettings {
            shared_service_secret: Some(SECRET.into()),
            ..AuthSettings::default()
        };
        let auth = TestAuth::start(&testing::sqlite(), settings).await;
        let shutdown = CancellationToken::new();
        let mut peers = BTreeMap::from([("auth", auth.uri())]);
        let sqlite = testing::sqlite;
        // shop
        let db = testing::database("shop", &sqlite(), &mesh_shop::MIGRATIONS).await;
        let routes = mesh_shop::build(context(
            "shop",
            &["auth"],
            &peers,
            db.clone(),
            shutdown.clone(),
        ))
        .await
        .expect("shop");
        let shop =
            testing::serve("shop", routes, db, testing::memory_bus(), shutdown.clone()).await;
        peers.insert("shop", uri(shop));
        // inventory
        let db = testing::database("inventory", &sqlite(), &mesh_inventory::MIGRATIONS).await;
        let routes = mesh_inventory::build(context(
            "inventory",
            &["auth"],
            &peers,
            db.clone(),
            shutdown.clone(),
        ))
        .await
        .expect("inventory");
        let inventory = testing::serve(
            "inventory",
            routes,
            db,
            testing::memory_bus(),
            shutdown.clone(),
        )
        .await;
        peers.insert("inventory", uri(inventory));
        // payment
        let db = testing::database("payment", &sqlite(), &mesh_payment::MIGRATIONS).await;
        let routes = mesh_payment::build_with(
            context("payment", &["auth"], &peers, db.clone(), shutdown.clone()),
            mesh_payment::PaymentOptions::default(),
        )
        .await
        .expect("payment");
        let payment = testing::serve(
            "payment",
            routes,
            db,
            testing::memory_bus(),
            shutdown.clone(),
        )
        .await;
        peers.insert("payment", uri(payment));
        // gateway
        let db = testing::database("iot-gateway", &sqlite(), &Migrations::NONE).await;
        let (routes, _) = mesh_iot_gateway::build_with(
            context(
                "iot-gateway",
                &["auth", "shop"],
                &peers,
                db.clone(),
                shutdown.clone(),
            ),
            GatewayOptions {
                client_secret: Some(SECRET.into()),
                ..GatewayOptions::default()
            },
        )
        .await
        .expect("gateway");
        let gateway = testing::serve(
            "iot-gateway",
            routes,
            db,
            testing::memory_bus(),
            shutdown.clone(),
        )
        .await;
        peers.insert("iot-gateway", uri(gateway));
        // vm, on the target under test
        let vm_db = testing::database("vm", &target, &mesh_vm::MIGRATIONS).await;
        let vm = start_vm(&peers, vm_db.clone(), shutdown.clone()).await;
        let admin = auth.admin_token().await;
        let customer = auth.customer_token().await;
        Self {
            auth,
            peers,
            vm,
            vm_db,
            admin,
            customer,
            shutdown,
        }
    }

    async fn channel(&self, peer: &str) -> Channel {
        Channel::from_shared(self.peers[peer].to_string())
            .expect("uri")
            .connect()
            .await
            .expect("connect")
    }

    async fn vm(&self) -> VendingMachineServiceClient<Channel> {
        VendingMachineServiceClient::new(testing::channel(self.vm).await)
    }

    async fn stock(&self, machine: &str, product: &str) -> (i64, i64) {
        let s = InventoryServiceClient::new(self.channel("inventory").await)
            .get_stock(bearer(
                &self.admin,
                GetStockRequest {
                    location_id: machine.into(),
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

    async fn payment(&self, id: &str) -> PaymentStatus {
        let p = PaymentServiceClient::new(self.channel("payment").await)
            .get_payment(bearer(&self.admin, GetPaymentRequest { id: id.into() }))
            .await
            .expect("payment")
            .into_inner()
            .payment
            .expect("payment");
        PaymentStatus::try_from(p.status).expect("status")
    }

    async fn events(&self, subject: &str) -> Vec<String> {
        testing::outbox::types_about(&self.vm_db, subject).await
    }
}

fn card(number: &str) -> Option<PaymentMethod> {
    testing::walkthrough::card(number, "Vera Vend")
}

fn vend(machine: &str, slot: &str, key: &str, number: &str) -> VendRequest {
    VendRequest {
        machine_id: machine.into(),
        slot: slot.into(),
        payment_method: card(number),
        idempotency_key: key.into(),
        customer_id: String::new(),
    }
}

fn slot(code: &str, product: &str, quantity: i32) -> Slot {
    Slot {
        code: code.into(),
        product_id: product.into(),
        price: (!product.is_empty()).then(|| Money {
            currency_code: "EUR".into(),
            amount_minor: 250,
        }),
        quantity,
        capacity: 10,
    }
}

async fn vend_flow(target: DatabaseTarget) {
    let m = Mesh::start(target).await;
    let machine = "vm-0042";
    let product = uuid::Uuid::now_v7().to_string();
    let mut shop = ShopServiceClient::new(m.channel("shop").await);
    shop.create_store(bearer(
        &m.admin,
        CreateStoreRequest {
            store: Some(Store {
                store_id: "hbf".into(),
                display_name: "Hauptbahnhof".into(),
                ..Default::default()
            }),
        },
    ))
    .await
    .expect("store");
    let mut vm = m.vm().await;
    let planogram = |slots: Vec<Slot>| SetPlanogramRequest {
        machine_id: machine.into(),
        planogram: Some(Planogram {
            slots,
            ..Default::default()
        }),
    };
    let e = vm
        .set_planogram(bearer(&m.admin, planogram(vec![slot("A1", &product, 0)])))
        .await
        .expect_err("not registered");
    assert_eq!(e.code(), Code::NotFound, "{e}");
    shop.register_machine(bearer(
        &m.admin,
        RegisterMachineRequest {
            parent: "stores/hbf".into(),
            machine: Some(Machine {
                machine_id: machine.into(),
                slot_count: 4,
                ..Default::default()
            }),
        },
    ))
    .await
    .expect("register");
    let e = vm
        .set_planogram(bearer(&m.customer, planogram(vec![])))
        .await
        .expect_err("customer");
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = vm
        .set_planogram(bearer(
            &m.admin,
            planogram(vec![slot("A1", &product, 0), slot("A1", &product, 0)]),
        ))
        .await
        .expect_err("duplicate");
    assert!(e.message().starts_with("planogram.slots[1].code"), "{e}");
    let e = vm
        .set_planogram(bearer(&m.admin, planogram(vec![slot("A1", "nope", 0)])))
        .await
        .expect_err("bad product");
    assert!(
        e.message().starts_with("planogram.slots[0].product_id"),
        "{e}"
    );
    let set = vm
        .set_planogram(bearer(
            &m.admin,
            planogram(vec![
                slot("A1", &product, 0),
                slot("A2", &product, 0),
                slot("B1", "", 0),
            ]),
        ))
        .await
        .expect("planogram")
        .into_inner()
        .planogram
        .expect("planogram");
    assert_eq!(set.version, 1);
    let restock = |refills: Vec<(&str, i32)>, key: &str| RestockRequest {
        machine_id: machine.into(),
        refills: refills
            .into_iter()
            .map(|(s, n)| SlotRefill {
                slot: s.into(),
                added: n,
            })
            .collect(),
        idempotency_key: key.into(),
    };
    let after = vm
        .restock(bearer(&m.admin, restock(vec![("A1", 3), ("A2", 2)], "r-1")))
        .await
        .expect("restock")
        .into_inner()
        .planogram
        .expect("planogram");
    assert_eq!(
        after.slots.iter().map(|s| s.quantity).collect::<Vec<_>>(),
        vec![3, 2, 0]
    );
    // The same key again changes nothing.
    vm.restock(bearer(&m.admin, restock(vec![("A1", 3), ("A2", 2)], "r-1")))
        .await
        .expect("restock again");
    assert_eq!(m.stock(machine, &product).await, (5, 0));
    let e = vm
        .restock(bearer(&m.admin, restock(vec![("B1", 1)], "r-2")))
        .await
        .expect_err("empty slot");
    assert_eq!(e.code(), Code::FailedPrecondition);

    // The machine comes online.
    let ids = vec![machine.to_string()];
    let token = device_tokens(testing::channel(m.auth.addr).await, &m.admin, &ids, 1)
        .await
        .expect("token")
        .remove(0);
    let device = SimDevice::new(machine, token);
    let conn = device
        .connect(m.channel("iot-gateway").await)
        .await
        .expect("connect");

    // A vend that succeeds.
    let ok = vm
        .vend(bearer(
            &m.customer,
            vend(machine, "A1", "k-1", "4242424242424242"),
        ))
        .await
        .expect("vend")
        .into_inner()
        .vend
        .expect("vend");
    assert_eq!(ok.status, VendStatus::Dispensed as i32, "{ok:?}");
    assert_eq!(device.memory.dispensed(), vec!["A1"]);
    assert_eq!(
        m.stock(machine, &product).await,
        (4, 0),
        "reservation committed"
    );
    assert_eq!(m.payment(&ok.payment_id).await, PaymentStatus::Succeeded);
    assert_eq!(m.events(&ok.id).await, vec!["vend.completed"]);
    let again = vm
        .vend(bearer(
            &m.customer,
            vend(machine, "A1", "k-1", "4242424242424242"),
        ))
        .await
        .expect("same key")
        .into_inner()
        .vend
        .expect("vend");
    assert_eq!(again.id, ok.id, "the same key is the same vend");
    assert_eq!(
        device.memory.dispensed(),
        vec!["A1"],
        "and dispenses nothing more"
    );
    let a1 = vm
        .get_planogram(bearer(
            &m.customer,
            GetPlanogramRequest {
                machine_id: machine.into(),
            },
        ))
        .await
        .expect("planogram")
        .into_inner()
        .planogram
        .expect("planogram")
        .slots[0]
        .quantity;
    assert_eq!(a1, 2);

    // A jammed slot: refunded and released.
    device.faults.jam("A2");
    let jam = vm
        .vend(bearer(
            &m.customer,
            vend(machine, "A2", "k-2", "4242424242424242"),
        ))
        .await
        .expect("vend")
        .into_inner()
        .vend
        .expect("vend");
    assert_eq!(jam.status, VendStatus::FailedRefunded as i32, "{jam:?}");
    assert!(
        jam.failure_reason.starts_with("JAMMED"),
        "{}",
        jam.failure_reason
    );
    assert_eq!(m.payment(&jam.payment_id).await, PaymentStatus::Refunded);
    assert_eq!(
        m.stock(machine, &product).await,
        (4, 0),
        "reservation released"
    );
    assert_eq!(m.events(&jam.id).await, vec!["vend.failed"]);

    // A declined card: nothing dispensed, reservation released.
    let declined = vm
        .vend(bearer(
            &m.customer,
            vend(machine, "A1", "k-3", "4000000000000002"),
        ))
        .await
        .expect("vend")
        .into_inner()
        .vend
        .expect("vend");
    assert_eq!(
        declined.status,
        VendStatus::PaymentDeclined as i32,
        "{declined:?}"
    );
    assert_eq!(m.stock(machine, &product).await, (4, 0));

    // A machine that stops answering: the dispense times out, refunded and released.
    device.faults.silent.store(true, Ordering::Relaxed);
    let hung = vm
        .vend(bearer(
            &m.customer,
            vend(machine, "A1", "k-4", "4242424242424242"),
        ))
        .await
        .expect("vend")
        .into_inner()
        .vend
        .expect("vend");
    assert_eq!(hung.status, VendStatus::FailedRefunded as i32, "{hung:?}");
    assert_eq!(m.payment(&hung.payment_id).await, PaymentStatus::Refunded);
    assert_eq!(m.stock(machine, &product).await, (4, 0));

    // A disconnected machine: failed before anything is charged.
    conn.cut();
    let mut offline = None;
    for i in 0..100 {
        let v = vm
            .vend(bearer(
                &m.customer,
                vend(machine, "A1", &format!("k-5-{i}"), "4242424242424242"),
            ))
            .await
            .expect("vend")
            .into_inner()
            .vend
            .expect("vend");
        if v.failure_reason == "machine offline" {
            offline = Some(v);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let offline = offline.expect("the gateway notices the cut");
    assert_eq!(offline.status, VendStatus::Failed as i32);
    assert!(offline.payment_id.is_empty(), "nothing charged");
    assert_eq!(m.stock(machine, &product).await, (4, 0));

    let listed = vm
        .list_vends(bearer(
            &m.admin,
            ListVendsRequest {
                machine_id: machine.into(),
                page_size: 2,
                ..Default::default()
            },
        ))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.vends.len(), 2);
    assert!(!listed.next_page_token.is_empty());
    let e = vm
        .vend(bearer(
            &m.customer,
            vend(machine, "Z9", "k-6", "4242424242424242"),
        ))
        .await
        .expect_err("no such slot");
    assert_eq!(e.code(), Code::NotFound);
    let e = vm
        .vend(bearer(
            &m.customer,
            vend(machine, "A1", "", "4242424242424242"),
        ))
        .await
        .expect_err("no key");
    assert!(e.message().starts_with("idempotency_key"), "{e}");

    // A crash right after a vend was recorded: a restarted instance finishes it.
    device.faults.silent.store(false, Ordering::Relaxed);
    let conn = device
        .connect(m.channel("iot-gateway").await)
        .await
        .expect("reconnect");
    let interrupted = uuid::Uuid::now_v7().to_string();
    let token: String = sqlx::query("SELECT card_token FROM vends WHERE id = $1")
        .bind(&ok.id)
        .fetch_one(m.vm_db.pool())
        .await
        .expect("token")
        .get("card_token");
    sqlx::query(
        "INSERT INTO vends (id, machine_id, store_id, slot, product_id, currency, price_minor, idempotency_key, \
         customer_id, card_token, status, step, failure_reason, final_status, reservation_id, payment_id, command_id, created_us, updated_us) \
         VALUES ($1, $2, 'hbf', 'A1', $3, 'EUR', 250, 'k-crash', '', $4, 'PENDING', 'RESERVE', '', '', '', '', '', 1, 1)",
    )
    .bind(&interrupted)
    .bind(machine)
    .bind(&product)
    .bind(&token)
    .execute(m.vm_db.pool())
    .await
    .expect("insert");
    let restarted = CancellationToken::new();
    start_vm(&m.peers, m.vm_db.clone(), restarted.clone()).await;
    let mut finished = None;
    for _ in 0..200 {
        let v = mesh_vm::store::vend(m.vm_db.pool(), &interrupted)
            .await
            .expect("vend")
            .expect("vend");
        if v.vend.status != VendStatus::Pending as i32 {
            finished = Some(v.vend);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let finished = finished.expect("the recovery sweep finishes the vend");
    assert_eq!(
        finished.status,
        VendStatus::Dispensed as i32,
        "{finished:?}"
    );
    assert_eq!(device.memory.dispensed(), vec!["A1", "A1"]);
    assert_eq!(m.stock(machine, &product).await, (3, 0));
    drop(conn);
    restarted.cancel();
    m.shutdown.cancel();
}

testing::on_sqlite_and_postgres!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    vend_flow_on_sqlite,
    vend_flow_on_postgres,
    "vm vend flow",
    vend_flow
);
