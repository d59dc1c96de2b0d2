//! The `shop.v1.ShopService` implementation.

use mesh_contracts::events::v1::{MachineRegistered, MachineStatusChanged};
use mesh_contracts::shop::v1::shop_service_server::ShopService;
use mesh_contracts::shop::v1::*;
use mesh_runtime::Database;
use mesh_runtime::auth::Identity;
use mesh_runtime::domain::{page_token, time};
use mesh_runtime::outbox::Event;
use tonic::{Request, Response, Status};

use crate::error::ShopError;
use crate::store::{self, MachineFilter};
use crate::validate;

type Result<T> = std::result::Result<T, ShopError>;

/// Microseconds of a stored (hence valid) time; 0 when absent.
fn stored_us(t: Option<&prost_types::Timestamp>) -> i64 {
    t.and_then(|t| time::from_timestamp("", t).ok())
        .unwrap_or(0)
}

/// The shop service.
#[derive(Debug, Clone)]
pub struct ShopApi {
    db: Database,
}

impl ShopApi {
    /// The service over `db`.
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    async fn create_store(&self, req: CreateStoreRequest) -> Result<Store> {
        let s = req
            .store
            .ok_or_else(|| ShopError::invalid("store", "required"))?;
        let id = if s.store_id.is_empty() {
            uuid::Uuid::now_v7().to_string()
        } else {
            validate::store_id("store.store_id", &s.store_id)?
        };
        if s.address_lines.len() > 8 {
            return Err(ShopError::invalid("store.address_lines", "at most 8 lines"));
        }
        let mut lines = Vec::with_capacity(s.address_lines.len());
        for (i, l) in s.address_lines.iter().enumerate() {
            let l = validate::text(&format!("store.address_lines[{i}]"), l, false, 200)?;
            if l.contains('\n') {
                return Err(ShopError::invalid(
                    format!("store.address_lines[{i}]"),
                    "one line, no line breaks",
                ));
            }
            lines.push(l);
        }
        let store = Store {
            store_id: id.clone(),
            display_name: validate::text("store.display_name", &s.display_name, true, 200)?,
            address_lines: lines,
            locality: validate::text("store.locality", &s.locality, false, 100)?,
            region_code: validate::region_code("store.region_code", &s.region_code)?,
            time_zone: validate::text("store.time_zone", &s.time_zone, false, 64)?,
            ..Default::default()
        };
        let mut tx = self.db.begin().await?;
        if !store::insert_store(&mut tx, &store, time::now_us()).await? {
            return Err(ShopError::AlreadyExists(format!(
                "store `{id}` already exists"
            )));
        }
        tx.commit().await?;
        store::store(self.db.pool(), &id)
            .await?
            .ok_or_else(|| ShopError::not_found("store", &id))
    }

    async fn register_machine(
        &self,
        caller: Option<&Identity>,
        req: RegisterMachineRequest,
    ) -> Result<Machine> {
        let store_id = validate::store_name("parent", &req.parent)?;
        // Store staff register machines only at the stores they work at (their token's
        // `stores` claim); admins and services anywhere.
        if !caller.is_some_and(|i| i.may_act_at_store(&store_id)) {
            return Err(ShopError::PermissionDenied(format!(
                "parent: staff may register machines only at their own stores, not `stores/{store_id}`"
            )));
        }
        let m = req
            .machine
            .ok_or_else(|| ShopError::invalid("machine", "required"))?;
        let machine_id = validate::machine_id("machine.machine_id", &m.machine_id)?;
        if !(1..=200).contains(&m.slot_count) {
            return Err(ShopError::invalid(
                "machine.slot_count",
                "required, 1 to 200",
            ));
        }
        let location = m.location.unwrap_or_default();
        if !(-90.0..=90.0).contains(&location.latitude) {
            return Err(ShopError::invalid(
                "machine.location.latitude",
                "between -90 and 90",
            ));
        }
        if !(-180.0..=180.0).contains(&location.longitude) {
            return Err(ShopError::invalid(
                "machine.location.longitude",
                "between -180 and 180",
            ));
        }
        let machine = Machine {
            machine_id: machine_id.clone(),
            store_id: store_id.clone(),
            model: validate::text("machine.model", &m.model, false, 100)?,
            slot_count: m.slot_count,
            location: Some(Location {
                description: validate::text(
                    "machine.location.description",
                    &location.description,
                    false,
                    200,
                )?,
                ..location
            }),
            ..Default::default()
        };
        let mut tx = self.db.begin().await?;
        if !store::store_exists(&mut tx, &store_id).await? {
            return Err(ShopError::not_found("store", format!("stores/{store_id}")));
        }
        if !store::insert_machine(&mut tx, &machine, time::now_us()).await? {
            return Err(ShopError::AlreadyExists(format!(
                "machine `{machine_id}` already exists"
            )));
        }
        tx.emit(Event::new(
            "machine.registered",
            &machine_id,
            "MachineRegistered",
            &MachineRegistered {
                machine_id: machine_id.clone(),
                store_id: store_id.clone(),
                model: machine.model.clone(),
                slot_count: machine.slot_count,
                location: machine.location.clone(),
            },
        ))
        .await?;
        let stored = store::machine_for_update(&mut tx, &machine_id)
            .await?
            .ok_or_else(|| ShopError::not_found("machine", &machine_id))?;
        tx.commit().await?;
        Ok(stored)
    }

    async fn get_machine(&self, req: GetMachineRequest) -> Result<Machine> {
        let (store_id, machine_id) = validate::machine_name("name", &req.name)?;
        match store::machine(self.db.pool(), &machine_id).await? {
            Some(m) if store_id.as_ref().is_none_or(|s| *s == m.store_id) => Ok(m),
            _ => Err(ShopError::not_found("machine", &req.name)),
        }
    }

    async fn list_machines(&self, req: ListMachinesRequest) -> Result<ListMachinesResponse> {
        let store_id = validate::list_parent("parent", &req.parent)?;
        let limit = page_token::page_size(req.page_size, 50, 500)?;
        let connectivity = match Connectivity::try_from(req.connectivity) {
            Ok(Connectivity::Unspecified) => None,
            Ok(c) => Some(c),
            Err(_) => return Err(ShopError::invalid("connectivity", "unknown value")),
        };
        let query = (
            "machines",
            store_id.clone(),
            req.connectivity,
            req.only_faulted,
        );
        let filter = MachineFilter {
            store_id,
            connectivity,
            only_faulted: req.only_faulted,
            after: page_token::decode(&req.page_token, &query)?,
        };
        let mut machines = store::machines(self.db.pool(), &filter, limit + 1).await?;
        let next_page_token =
            page_token::next_page(&mut machines, limit, &query, |m| m.machine_id.clone());
        Ok(ListMachinesResponse {
            machines,
            next_page_token,
        })
    }

    async fn list_stores(&self, req: ListStoresRequest) -> Result<ListStoresResponse> {
        let limit = page_token::page_size(req.page_size, 50, 500)?;
        let region = validate::region_code("region_code", &req.region_code)?;
        let query = ("stores", &region);
        let after: Option<String> = page_token::decode(&req.page_token, &query)?;
        let mut stores = store::stores(
            self.db.pool(),
            (!region.is_empty()).then_some(region.as_str()),
            after.as_deref(),
            limit + 1,
        )
        .await?;
        let next_page_token =
            page_token::next_page(&mut stores, limit, &query, |s| s.store_id.clone());
        Ok(ListStoresResponse {
            stores,
            next_page_token,
        })
    }

    /// Applies a gateway report: the full observed status replaces the stored one unless an
    /// equally new or newer report was applied already (reports may arrive out of order).
    /// `machine.status_changed` is emitted when connectivity or the set of faults changed.
    async fn report(&self, req: ReportMachineStatusRequest) -> Result<bool> {
        let machine_id = validate::machine_id("machine_id", &req.machine_id)?;
        let mut status = req
            .status
            .ok_or_else(|| ShopError::invalid("status", "required"))?;
        let connectivity = Connectivity::try_from(status.connectivity)
            .ok()
            .filter(|c| *c != Connectivity::Unspecified)
            .ok_or_else(|| ShopError::invalid("status.connectivity", "required"))?;
        let update_us =
            time::from_optional_timestamp("status.update_time", status.update_time.as_ref())?
                .filter(|us| *us > 0)
                .ok_or_else(|| ShopError::invalid("status.update_time", "required"))?;
        let mut heartbeat_us = time::from_optional_timestamp(
            "status.last_heartbeat_time",
            status.last_heartbeat_time.as_ref(),
        )?
        .unwrap_or(0);
        if !status.temperature_celsius.is_finite() {
            return Err(ShopError::invalid(
                "status.temperature_celsius",
                "must be a finite number",
            ));
        }
        status.faults = validate::faults("status.faults", &status.faults)?;
        let firmware = validate::text("firmware_version", &req.firmware_version, false, 64)?;
        let session = validate::text("status.session_id", &status.session_id, false, 64)?;
        status.session_id = if connectivity == Connectivity::Online {
            session
        } else {
            String::new()
        };
        let mut tx = self.db.begin().await?;
        let Some(machine) = store::machine_for_update(&mut tx, &machine_id).await? else {
            return Err(ShopError::not_found("machine", &machine_id));
        };
        let previous = machine.status.unwrap_or_default();
        if update_us <= stored_us(previous.update_time.as_ref()) {
            return Ok(false);
        }
        // A heartbeat time never moves backwards.
        let previous_beat = stored_us(previous.last_heartbeat_time.as_ref());
        if previous_beat > heartbeat_us {
            status.last_heartbeat_time = previous.last_heartbeat_time;
            heartbeat_us = previous_beat;
        }
        store::write_status(
            &mut tx,
            &machine_id,
            &status,
            &firmware,
            heartbeat_us,
            update_us,
        )
        .await?;
        let changed =
            previous.connectivity != status.connectivity || previous.faults != status.faults;
        if changed {
            let raised = status
                .faults
                .iter()
                .filter(|f| !previous.faults.contains(f))
                .cloned()
                .collect();
            let cleared = previous
                .faults
                .iter()
                .filter(|f| !status.faults.contains(f))
                .cloned()
                .collect();
            tx.emit(Event::new(
                "machine.status_changed",
                &machine_id,
                "MachineStatusChanged",
                &MachineStatusChanged {
                    machine_id: machine_id.clone(),
                    store_id: machine.store_id.clone(),
                    previous_status: Some(previous),
                    status: Some(status),
                    raised_faults: raised,
                    cleared_faults: cleared,
                },
            ))
            .await?;
        }
        tx.commit().await?;
        Ok(changed)
    }
}

#[tonic::async_trait]
impl ShopService for ShopApi {
    async fn create_store(
        &self,
        r: Request<CreateStoreRequest>,
    ) -> std::result::Result<Response<CreateStoreResponse>, Status> {
        let store = ShopApi::create_store(self, r.into_inner()).await?;
        Ok(Response::new(CreateStoreResponse { store: Some(store) }))
    }

    async fn get_store(
        &self,
        r: Request<GetStoreRequest>,
    ) -> std::result::Result<Response<GetStoreResponse>, Status> {
        let id = validate::store_name("name", &r.get_ref().name)?;
        let store = store::store(self.db.pool(), &id)
            .await?
            .ok_or_else(|| ShopError::not_found("store", format!("stores/{id}")))?;
        Ok(Response::new(GetStoreResponse { store: Some(store) }))
    }

    async fn list_stores(
        &self,
        r: Request<ListStoresRequest>,
    ) -> std::result::Result<Response<ListStoresResponse>, Status> {
        Ok(Response::new(
            ShopApi::list_stores(self, r.into_inner()).await?,
        ))
    }

    async fn register_machine(
        &self,
        r: Request<RegisterMachineRequest>,
    ) -> std::result::Result<Response<RegisterMachineResponse>, Status> {
        let caller = Identity::of(&r).cloned();
        let machine = ShopApi::register_machine(self, caller.as_ref(), r.into_inner()).await?;
        Ok(Response::new(RegisterMachineResponse {
            machine: Some(machine),
        }))
    }

    async fn get_machine(
        &self,
        r: Request<GetMachineRequest>,
    ) -> std::result::Result<Response<GetMachineResponse>, Status> {
        let machine = ShopApi::get_machine(self, r.into_inner()).await?;
        Ok(Response::new(GetMachineResponse {
            machine: Some(machine),
        }))
    }

    async fn list_machines(
        &self,
        r: Request<ListMachinesRequest>,
    ) -> std::result::Result<Response<ListMachinesResponse>, Status> {
        Ok(Response::new(
            ShopApi::list_machines(self, r.into_inner()).await?,
        ))
    }

    async fn report_machine_status(
        &self,
        r: Request<ReportMachineStatusRequest>,
    ) -> std::result::Result<Response<ReportMachineStatusResponse>, Status> {
        let changed = self.report(r.into_inner()).await?;
        Ok(Response::new(ReportMachineStatusResponse { changed }))
    }
}
