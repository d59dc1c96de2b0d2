//! The shop service over real gRPC with a real auth service: stores, machine registration
//! (`machine.registered`), listing by store and connectivity with paging, status reports from
//! the gateway (`machine.status_changed` only on connectivity or fault changes, stale reports
//! ignored), bad input naming the field, and RBAC (SQLite and Postgres).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use mesh_contracts::shop::v1::shop_service_client::ShopServiceClient;
use mesh_contracts::shop::v1::*;
use mesh_runtime::Database;
use mesh_runtime::config::DatabaseTarget;
use mesh_testkit::{self as testing, TestAuth, bearer};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;

struct Shop {
    auth: TestAuth,
    bus: std::sync::Arc<dyn mesh_runtime::bus::EventBus>,
    addr: SocketAddr,
    db: Database,
    admin: String,
    service: String,
    customer: String,
    shutdown: CancellationToken,
}

async fn start(target: DatabaseTarget) -> Shop {
    let settings = testing::service_client("iot-gateway", "gw-secret");
    // One bus for auth and shop, so a test can feed auth the user service's events.
    let bus = testing::memory_bus();
    let auth = TestAuth::start_on(&testing::sqlite(), settings, bus.clone()).await;
    let shutdown = CancellationToken::new();
    let db = testing::database("shop", &target, &mesh_shop::MIGRATIONS).await;
    let addr = testing::start_until(
        "shop",
        BTreeMap::from([("auth", auth.uri())]),
        &db,
        &bus,
        &shutdown,
        mesh_shop::build,
    )
    .await;
    let admin = auth.admin_token().await;
    let customer = auth.customer_token().await;
    let service = auth.service_token("iot-gateway", "gw-secret").await;
    Shop {
        auth,
        bus,
        addr,
        db,
        admin,
        service,
        customer,
        shutdown,
    }
}

async fn client(addr: SocketAddr) -> ShopServiceClient<Channel> {
    ShopServiceClient::new(testing::channel(addr).await)
}

fn code<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> (Code, String) {
    let s = r.expect_err("expected an error status");
    (s.code(), s.message().to_string())
}

fn assert_invalid<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>, field: &str) {
    let (c, message) = code(r);
    assert_eq!(c, Code::InvalidArgument, "{message}");
    assert!(message.starts_with(field), "`{message}` names `{field}`");
}

fn ts(us: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: us / 1_000_000,
        nanos: ((us % 1_000_000) * 1000) as i32,
    })
}

fn report(machine: &str, online: bool, faults: &[&str], at_us: i64) -> ReportMachineStatusRequest {
    ReportMachineStatusRequest {
        machine_id: machine.into(),
        status: Some(MachineStatus {
            connectivity: if online {
                Connectivity::Online
            } else {
                Connectivity::Offline
            } as i32,
            last_heartbeat_time: ts(at_us),
            faults: faults.iter().map(|f| f.to_string()).collect(),
            temperature_celsius: 4.5,
            door_open: false,
            session_id: "s-1".into(),
            update_time: ts(at_us),
        }),
        firmware_version: "2.4.1".into(),
    }
}

async fn events(db: &Database, subject: &str) -> Vec<String> {
    testing::outbox::types_about(db, subject).await
}

async fn register(
    c: &mut ShopServiceClient<Channel>,
    admin: &str,
    store: &str,
    id: &str,
) -> Machine {
    c.register_machine(bearer(
        admin,
        RegisterMachineRequest {
            parent: format!("stores/{store}"),
            machine: Some(Machine {
                machine_id: id.into(),
                model: "Necta Snakky".into(),
                slot_count: 30,
                location: Some(Location {
                    latitude: 52.525,
                    longitude: 13.369,
                    description: "Entrance hall".into(),
                }),
                ..Default::default()
            }),
        },
    ))
    .await
    .expect("register")
    .into_inner()
    .machine
    .expect("machine")
}

async fn registry_and_status(target: DatabaseTarget) {
    let s = start(target).await;
    let mut c = client(s.addr).await;
    let store = |id: &str| CreateStoreRequest {
        store: Some(Store {
            store_id: id.into(),
            display_name: format!("Store {id}"),
            address_lines: vec!["Europaplatz 1".into()],
            locality: "Berlin".into(),
            region_code: "DE".into(),
            time_zone: "Europe/Berlin".into(),
            ..Default::default()
        }),
    };

    // RBAC.
    let (c0, _) = code(c.create_store(store("nope")).await);
    assert_eq!(c0, Code::Unauthenticated);
    let (c0, _) = code(c.create_store(bearer(&s.customer, store("nope"))).await);
    assert_eq!(c0, Code::PermissionDenied);
    // Admins pass every role check: the unknown machine is reported as such.
    let (c0, _) = code(
        c.report_machine_status(bearer(&s.admin, report("x", true, &[], 1)))
            .await,
    );
    assert_eq!(c0, Code::NotFound);
    let (c0, _) = code(
        c.report_machine_status(bearer(&s.customer, report("x", true, &[], 1)))
            .await,
    );
    assert_eq!(c0, Code::PermissionDenied);

    // Stores.
    let berlin = c
        .create_store(bearer(&s.admin, store("berlin-hbf")))
        .await
        .expect("create")
        .into_inner()
        .store
        .expect("store");
    assert_eq!(berlin.name, "stores/berlin-hbf");
    assert_eq!(berlin.address_lines, vec!["Europaplatz 1"]);
    c.create_store(bearer(&s.admin, store("munich")))
        .await
        .expect("create");
    let (c0, m) = code(c.create_store(bearer(&s.admin, store("munich"))).await);
    assert_eq!(c0, Code::AlreadyExists, "{m}");
    assert_invalid(
        c.create_store(bearer(&s.admin, store("Bad Id"))).await,
        "store.store_id",
    );
    let mut bad = store("x1");
    bad.store.as_mut().unwrap().display_name.clear();
    assert_invalid(
        c.create_store(bearer(&s.admin, bad)).await,
        "store.display_name",
    );
    let mut bad = store("x2");
    bad.store.as_mut().unwrap().region_code = "germany".into();
    assert_invalid(
        c.create_store(bearer(&s.admin, bad)).await,
        "store.region_code",
    );
    let got = c
        .get_store(bearer(
            &s.customer,
            GetStoreRequest {
                name: "stores/berlin-hbf".into(),
            },
        ))
        .await
        .expect("get store")
        .into_inner()
        .store
        .expect("store");
    assert_eq!(got.display_name, "Store berlin-hbf");
    let (c0, _) = code(
        c.get_store(bearer(
            &s.customer,
            GetStoreRequest {
                name: "stores/nowhere".into(),
            },
        ))
        .await,
    );
    assert_eq!(c0, Code::NotFound);
    let page = c
        .list_stores(bearer(
            &s.customer,
            ListStoresRequest {
                page_size: 1,
                ..Default::default()
            },
        ))
        .await
        .expect("list stores")
        .into_inner();
    assert_eq!(page.stores.len(), 1);
    assert_eq!(page.stores[0].store_id, "berlin-hbf");
    // A token belongs to the query it came from: other filters refuse it.
    assert_invalid(
        c.list_stores(bearer(
            &s.customer,
            ListStoresRequest {
                page_size: 1,
                page_token: page.next_page_token.clone(),
                region_code: "DE".into(),
            },
        ))
        .await,
        "page_token",
    );
    let page2 = c
        .list_stores(bearer(
            &s.customer,
            ListStoresRequest {
                page_size: 1,
                page_token: page.next_page_token,
                ..Default::default()
            },
        ))
        .await
        .expect("list stores")
        .into_inner();
    assert_eq!(page2.stores[0].store_id, "munich");

    // Machines.
    let m = register(&mut c, &s.admin, "berlin-hbf", "vm-0001").await;
    assert_eq!(m.name, "stores/berlin-hbf/machines/vm-0001");
    assert_eq!(
        m.status.as_ref().unwrap().connectivity,
        Connectivity::Unspecified as i32
    );
    for i in 2..=5 {
        register(&mut c, &s.admin, "berlin-hbf", &format!("vm-000{i}")).await;
    }
    register(&mut c, &s.admin, "munich", "vm-0100").await;
    assert_eq!(events(&s.db, "vm-0001").await, vec!["machine.registered"]);
    let dup = c
        .register_machine(bearer(
            &s.admin,
            RegisterMachineRequest {
                parent: "stores/munich".into(),
                machine: Some(Machine {
                    machine_id: "vm-0001".into(),
                    slot_count: 1,
                    ..Default::default()
                }),
            },
        ))
        .await;
    assert_eq!(code(dup).0, Code::AlreadyExists);
    let no_store = c
        .register_machine(bearer(
            &s.admin,
            RegisterMachineRequest {
                parent: "stores/nowhere".into(),
                machine: Some(Machine {
                    machine_id: "vm-9".into(),
                    slot_count: 1,
                    ..Default::default()
                }),
            },
        ))
        .await;
    assert_eq!(code(no_store).0, Code::NotFound);
    assert_invalid(
        c.register_machine(bearer(
            &s.admin,
            RegisterMachineRequest {
                parent: "stores/munich".into(),
                machine: Some(Machine {
                    machine_id: "vm-9".into(),
                    slot_count: 0,
                    ..Default::default()
                }),
            },
        ))
        .await,
        "machine.slot_count",
    );
    assert_invalid(
        c.register_machine(bearer(
            &s.admin,
            RegisterMachineRequest {
                parent: "munich".into(),
                machine: None,
            },
        ))
        .await,
        "parent",
    );

    // Status reports.
    let mut gw = client(s.addr).await;
    let t0 = 1_800_000_000_000_000i64;
    let changed = gw
        .report_machine_status(bearer(&s.service, report("vm-0001", true, &[], t0)))
        .await
        .expect("report")
        .into_inner()
        .changed;
    assert!(changed, "first connect changes connectivity");
    let changed = gw
        .report_machine_status(bearer(&s.service, report("vm-0001", true, &[], t0 + 10)))
        .await
        .expect("report")
        .into_inner()
        .changed;
    assert!(!changed, "a heartbeat changes nothing that is evented");
    let changed = gw
        .report_machine_status(bearer(
            &s.service,
            report("vm-0001", true, &["SLOT_A3_JAMMED", "COOLING"], t0 + 20),
        ))
        .await
        .expect("report")
        .into_inner()
        .changed;
    assert!(changed);
    // A stale report (older than the last applied) is ignored.
    let changed = gw
        .report_machine_status(bearer(&s.service, report("vm-0001", false, &[], t0 + 5)))
        .await
        .expect("report")
        .into_inner()
        .changed;
    assert!(!changed);
    gw.report_machine_status(bearer(&s.service, report("vm-0002", true, &[], t0)))
        .await
        .expect("report");
    gw.report_machine_status(bearer(&s.service, report("vm-0003", true, &[], t0)))
        .await
        .expect("report");
    gw.report_machine_status(bearer(&s.service, report("vm-0003", false, &[], t0 + 1)))
        .await
        .expect("report");
    assert_eq!(
        events(&s.db, "vm-0001").await,
        vec![
            "machine.registered",
            "machine.status_changed",
            "machine.status_changed"
        ]
    );
    let m1 = c
        .get_machine(bearer(
            &s.customer,
            GetMachineRequest {
                name: "stores/-/machines/vm-0001".into(),
            },
        ))
        .await
        .expect("get")
        .into_inner()
        .machine
        .expect("machine");
    let st = m1.status.expect("status");
    assert_eq!(st.connectivity, Connectivity::Online as i32);
    assert_eq!(st.faults, vec!["COOLING", "SLOT_A3_JAMMED"]);
    assert_eq!(st.session_id, "s-1");
    assert_eq!(m1.firmware_version, "2.4.1");
    let (c0, _) = code(
        c.get_machine(bearer(
            &s.customer,
            GetMachineRequest {
                name: "stores/munich/machines/vm-0001".into(),
            },
        ))
        .await,
    );
    assert_eq!(c0, Code::NotFound, "the machine is in another store");
    let (c0, _) = code(
        gw.report_machine_status(bearer(&s.service, report("vm-404", true, &[], t0)))
            .await,
    );
    assert_eq!(c0, Code::NotFound);
    let mut bad = report("vm-0001", true, &[], t0 + 100);
    bad.status.as_mut().unwrap().connectivity = 0;
    assert_invalid(
        gw.report_machine_status(bearer(&s.service, bad)).await,
        "status.connectivity",
    );
    let mut bad = report("vm-0001", true, &[], t0 + 100);
    bad.status.as_mut().unwrap().update_time = None;
    assert_invalid(
        gw.report_machine_status(bearer(&s.service, bad)).await,
        "status.update_time",
    );
    assert_invalid(
        gw.report_machine_status(bearer(&s.service, report("vm-0001", true, &[""], t0 + 100)))
            .await,
        "status.faults[0]",
    );

    // Listing by store and status, paged.
    let list = |parent: &str, connectivity: Connectivity, faulted: bool, token: String| {
        bearer(
            &s.customer,
            ListMachinesRequest {
                parent: parent.into(),
                page_size: 2,
                page_token: token,
                connectivity: connectivity as i32,
                only_faulted: faulted,
            },
        )
    };
    let mut ids = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_machines(list(
                "stores/berlin-hbf",
                Connectivity::Unspecified,
                false,
                token,
            ))
            .await
            .expect("list")
            .into_inner();
        assert!(page.machines.len() <= 2);
        ids.extend(page.machines.into_iter().map(|m| m.machine_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(ids, ["vm-0001", "vm-0002", "vm-0003", "vm-0004", "vm-0005"]);
    let online: Vec<String> = c
        .list_machines(list("stores/-", Connectivity::Online, false, String::new()))
        .await
        .expect("list")
        .into_inner()
        .machines
        .into_iter()
        .map(|m| m.machine_id)
        .collect();
    assert_eq!(online, ["vm-0001", "vm-0002"]);
    let offline = c
        .list_machines(list("", Connectivity::Offline, false, String::new()))
        .await
        .expect("list")
        .into_inner()
        .machines;
    assert_eq!(offline.len(), 1);
    assert_eq!(offline[0].machine_id, "vm-0003");
    assert_eq!(offline[0].status.as_ref().unwrap().session_id, "");
    let faulted = c
        .list_machines(list(
            "stores/-",
            Connectivity::Unspecified,
            true,
            String::new(),
        ))
        .await
        .expect("list")
        .into_inner()
        .machines;
    assert_eq!(faulted.len(), 1);
    assert_invalid(
        c.list_machines(bearer(
            &s.customer,
            ListMachinesRequest {
                page_token: "!!".into(),
                ..Default::default()
            },
        ))
        .await,
        "page_token",
    );
    assert_invalid(
        c.list_machines(bearer(
            &s.customer,
            ListMachinesRequest {
                page_size: 501,
                ..Default::default()
            },
        ))
        .await,
        "page_size",
    );
    s.shutdown.cancel();
}

testing::on_sqlite_and_postgres!(
    #[tokio::test]
    registry_and_status_on_sqlite,
    registry_and_status_on_postgres,
    "shop registry and status",
    registry_and_status
);

/// Store staff register machines only at the stores the user service assigned them: auth keeps
/// the assignments from `user.updated` and puts them into the staff token's `stores` claim;
/// shop checks the claim (admins anywhere).
async fn store_staff_act_only_at_their_stores(target: DatabaseTarget) {
    use mesh_contracts::auth::v1::{Role as AuthRole, SetRolesRequest};
    use mesh_contracts::events::v1::UserUpdated;

    let s = start(target).await;
    let mut c = client(s.addr).await;
    for id in ["north", "south"] {
        c.create_store(bearer(
            &s.admin,
            CreateStoreRequest {
                store: Some(Store {
                    store_id: id.into(),
                    display_name: id.into(),
                    ..Default::default()
                }),
            },
        ))
        .await
        .expect("create store");
    }
    let auth = s.auth.client().await;
    let staff = |email: String| {
        let (mut auth, admin) = (auth.clone(), s.admin.clone());
        let tester = &s.auth;
        async move {
            let id = tester.sign_up(&email).await.account.expect("account").id;
            auth.set_roles(bearer(
                &admin,
                SetRolesRequest {
                    account_id: id.clone(),
                    roles: vec![AuthRole::Staff as i32],
                },
            ))
            .await
            .expect("staff");
            id
        }
    };
    let clerk_email = format!("{}@example.com", testing::unique("clerk"));
    let clerk = staff(clerk_email.clone()).await;
    let other_email = format!("{}@example.com", testing::unique("other"));
    staff(other_email.clone()).await;
    // The user service assigns the clerk to `north` (its user.updated snapshot).
    testing::publish(
        s.bus.as_ref(),
        &testing::envelope(
            "user.updated",
            &clerk,
            "UserUpdated",
            &UserUpdated {
                user_id: clerk.clone(),
                changed_fields: vec!["store_ids".into()],
                store_ids: vec!["north".into()],
                version: 2,
                ..Default::default()
            },
        ),
    )
    .await;
    let staff_auth = &s.auth;
    let login = move |email: String| async move { staff_auth.login(&email).await };
    let machine = |store: &str, id: &str| RegisterMachineRequest {
        parent: format!("stores/{store}"),
        machine: Some(Machine {
            machine_id: id.into(),
            slot_count: 10,
            ..Default::default()
        }),
    };
    testing::eventually("the clerk registers a machine at their store", || {
        let (c, login, email) = (c.clone(), &login, clerk_email.clone());
        async move {
            let token = login(email).await;
            c.clone()
                .register_machine(bearer(&token, machine("north", "vm-n1")))
                .await
                .is_ok()
        }
    })
    .await;
    let token = login(clerk_email).await;
    let (code_, message) = code(
        c.register_machine(bearer(&token, machine("south", "vm-s1")))
            .await,
    );
    assert_eq!(code_, Code::PermissionDenied, "{message}");
    assert!(message.starts_with("parent"), "{message}");
    // Staff without assignments register nowhere; admins anywhere.
    let other = login(other_email).await;
    let (code_, _) = code(
        c.register_machine(bearer(&other, machine("north", "vm-n2")))
            .await,
    );
    assert_eq!(code_, Code::PermissionDenied);
    c.register_machine(bearer(&s.admin, machine("south", "vm-s2")))
        .await
        .expect("admins register anywhere");
    s.shutdown.cancel();
}

testing::on_sqlite_and_postgres!(
    #[tokio::test]
    store_staff_on_sqlite,
    store_staff_on_postgres,
    "shop store staff",
    store_staff_act_only_at_their_stores
);
