//! The `vm.v1.VendingMachineService` implementation.

use std::collections::HashSet;

use mesh_contracts::common::v1::payment_method::Method;
use mesh_contracts::inventory::v1::{AdjustStockRequest, AdjustmentReason};
use mesh_contracts::payment::v1::TokenizeCardRequest;
use mesh_contracts::shop::v1::GetMachineRequest;
use mesh_contracts::vm::v1::vending_machine_service_server::VendingMachineService;
use mesh_contracts::vm::v1::*;
use mesh_runtime::domain::ids::{self, Charset, IdFormat};
use mesh_runtime::domain::money::{self, Amount};
use mesh_runtime::domain::{page_token, time};
use mesh_runtime::{CallContext, Database};
use tonic::{Request, Response, Status};

use crate::error::{CommonErrors, VmError};
use crate::flow::{Flow, step};
use crate::peers::Peers;
use crate::store::{self, VendRow};

type Result<T> = std::result::Result<T, VmError>;

/// The vm service.
#[derive(Debug, Clone)]
pub struct VmApi {
    db: Database,
    peers: Peers,
    flow: Flow,
    /// Owns the vend drives that outlive their call; drained at shutdown.
    drives: mesh_runtime::tracker::Tracker,
}

/// Slot codes: 1 to 8 letters and digits.
const SLOT_CODE: IdFormat = IdFormat::new(8, Charset::Ascii(""));

fn machine_id(value: &str) -> Result<String> {
    Ok(ids::MACHINE_ID.check("machine_id", value)?)
}

fn slot_code(field: &str, value: &str) -> Result<String> {
    Ok(SLOT_CODE.check(field, value)?)
}

/// `request` carrying the caller's own `authorization` (a staff call forwarded as itself).
fn as_caller<T, U>(from: &Request<T>, message: U) -> Request<U> {
    let mut r = Request::new(message);
    if let Some(auth) = from.metadata().get("authorization") {
        r.metadata_mut().insert("authorization", auth.clone());
    }
    r
}

impl VmApi {
    /// The service over `db`; vend drives run on `drives` (a tracker from
    /// `ServiceContext::tracker`, drained at shutdown).
    pub fn new(
        db: Database,
        peers: Peers,
        flow: Flow,
        drives: mesh_runtime::tracker::Tracker,
    ) -> Self {
        Self {
            db,
            peers,
            flow,
            drives,
        }
    }

    async fn set_planogram(&self, req: SetPlanogramRequest) -> Result<Planogram> {
        let machine = machine_id(&req.machine_id)?;
        let planogram = req
            .planogram
            .ok_or_else(|| VmError::invalid("planogram", "required"))?;
        let registered = self
            .peers
            .shop
            .clone()
            .get_machine(GetMachineRequest {
                name: format!("stores/-/machines/{machine}"),
            })
            .await
            .map_err(|s| {
                if s.code() == tonic::Code::NotFound {
                    VmError::not_found("machine", &machine)
                } else {
                    VmError::peer("shop")(s)
                }
            })?
            .into_inner()
            .machine
            .unwrap_or_default();
        if planogram.slots.len() > registered.slot_count.max(0) as usize {
            return Err(VmError::invalid(
                "planogram.slots",
                format!("at most the machine's {} slots", registered.slot_count),
            ));
        }
        let mut codes = HashSet::new();
        for (i, s) in planogram.slots.iter().enumerate() {
            let f = |name: &str| format!("planogram.slots[{i}].{name}");
            slot_code(&f("code"), &s.code)?;
            if !codes.insert(s.code.clone()) {
                return Err(VmError::invalid(f("code"), "duplicate slot code"));
            }
            if s.capacity < 1 {
                return Err(VmError::invalid(f("capacity"), "required, at least 1"));
            }
            if s.quantity < 0 || s.quantity > s.capacity {
                return Err(VmError::invalid(f("quantity"), "between 0 and capacity"));
            }
            if !s.product_id.is_empty() {
                ids::uuid(&f("product_id"), &s.product_id)?;
                if s.price.is_none() {
                    return Err(VmError::invalid(
                        f("price"),
                        "required when product_id is set",
                    ));
                }
                money::money(&f("price"), s.price.as_ref(), Amount::Positive)?;
            }
        }
        let mut tx = self.db.begin().await?;
        store::replace_planogram(&mut tx, &machine, &registered.store_id, &planogram.slots).await?;
        tx.commit().await?;
        store::planogram(self.db.pool(), &machine).await
    }

    async fn restock(&self, request: &Request<RestockRequest>) -> Result<Planogram> {
        let req = request.get_ref();
        let machine = machine_id(&req.machine_id)?;
        if req.refills.is_empty() {
            return Err(VmError::invalid("refills", "at least one"));
        }
        let key = if req.idempotency_key.is_empty() {
            uuid::Uuid::now_v7().to_string()
        } else if req.idempotency_key.len() > 128 {
            return Err(VmError::invalid(
                "idempotency_key",
                "at most 128 characters",
            ));
        } else {
            req.idempotency_key.clone()
        };
        let current = store::planogram(self.db.pool(), &machine).await?;
        let mut refills = Vec::new();
        for (i, r) in req.refills.iter().enumerate() {
            let code = slot_code(&format!("refills[{i}].slot"), &r.slot)?;
            if r.added < 1 {
                return Err(VmError::invalid(
                    format!("refills[{i}].added"),
                    "at least 1",
                ));
            }
            let slot = current
                .slots
                .iter()
                .find(|s| s.code == code)
                .ok_or_else(|| VmError::not_found(format!("machine `{machine}` slot"), &code))?;
            if slot.product_id.is_empty() {
                return Err(VmError::precondition(format!(
                    "slot `{code}` has no product; set the planogram first"
                )));
            }
            refills.push((slot.clone(), r.added));
        }
        // Inventory first (idempotent per request id), then the slots: a retry after a failure
        // in between adjusts inventory once and fills the slots once.
        let mut tx = self.db.begin().await?;
        if !store::claim_restock(&mut tx, &machine, &key).await? {
            drop(tx);
            return store::planogram(self.db.pool(), &machine).await;
        }
        drop(tx);
        for (slot, added) in &refills {
            self.peers
                .inventory
                .clone()
                .adjust_stock(as_caller(
                    request,
                    AdjustStockRequest {
                        location_id: machine.clone(),
                        product_id: slot.product_id.clone(),
                        delta: i64::from(*added),
                        reason: AdjustmentReason::Restock as i32,
                        note: format!("restock of slot {}", slot.code),
                        request_id: format!("restock:{machine}:{key}:{}", slot.code),
                    },
                ))
                .await
                .map_err(VmError::peer("inventory"))?;
        }
        let mut tx = self.db.begin().await?;
        if !store::claim_restock(&mut tx, &machine, &key).await? {
            return store::planogram(self.db.pool(), &machine).await;
        }
        for (slot, added) in &refills {
            if !store::add_units(&mut tx, &machine, &slot.code, i64::from(*added)).await? {
                return Err(VmError::precondition(format!(
                    "slot `{}` holds at most {} units",
                    slot.code, slot.capacity
                )));
            }
        }
        tx.commit().await?;
        store::planogram(self.db.pool(), &machine).await
    }

    async fn vend(&self, req: VendRequest) -> Result<Vend> {
        let machine = machine_id(&req.machine_id)?;
        let code = slot_code("slot", &req.slot)?;
        if req.idempotency_key.is_empty() || req.idempotency_key.len() > 128 {
            return Err(VmError::invalid(
                "idempotency_key",
                "required, at most 128 characters",
            ));
        }
        if req.customer_id.len() > 64 {
            return Err(VmError::invalid("customer_id", "at most 64 characters"));
        }
        let deadline = CallContext::current().and_then(|c| c.deadline);
        if let Some(v) = store::vend_by_key(self.db.pool(), &machine, &req.idempotency_key).await? {
            return self.finish_within(v.vend.id, deadline).await;
        }
        let card_token = match req.payment_method.and_then(|m| m.method) {
            Some(Method::CardToken(t)) if !t.is_empty() => t,
            Some(Method::Card(card)) => {
                self.peers
                    .payment
                    .clone()
                    .tokenize_card(TokenizeCardRequest { card: Some(card) })
                    .await
                    .map_err(|s| VmError::invalid("payment_method.card", s.message().to_string()))?
                    .into_inner()
                    .card_token
            }
            _ => {
                return Err(VmError::invalid(
                    "payment_method",
                    "required: a card or a card token",
                ));
            }
        };
        let mut tx = self.db.begin().await?;
        let slot = store::slot(&mut tx, &machine, &code)
            .await?
            .ok_or_else(|| VmError::not_found(format!("machine `{machine}` slot"), &code))?;
        let store_id = store::store_of(&mut tx, &machine)
            .await?
            .unwrap_or_default();
        if slot.product_id.is_empty() {
            return Err(VmError::precondition(format!(
                "slot `{code}` sells nothing"
            )));
        }
        let row = VendRow {
            vend: Vend {
                id: uuid::Uuid::now_v7().to_string(),
                machine_id: machine.clone(),
                slot: code.clone(),
                product_id: slot.product_id.clone(),
                price: slot.price.clone(),
                idempotency_key: req.idempotency_key.clone(),
                customer_id: req.customer_id.clone(),
                ..Default::default()
            },
            store_id,
            card_token,
            step: step::RESERVE.into(),
            final_status: String::new(),
        };
        if !store::insert_vend(&mut tx, &row).await? {
            // A concurrent Vend with the same key won.
            drop(tx);
            let v = store::vend_by_key(self.db.pool(), &machine, &req.idempotency_key)
                .await?
                .ok_or_else(|| {
                    VmError::not_found("vend of idempotency_key", &req.idempotency_key)
                })?;
            return self.finish_within(v.vend.id, deadline).await;
        }
        tx.commit().await?;
        if slot.quantity == 0 {
            let mut empty = row.clone();
            empty.vend.failure_reason = format!("slot `{code}` is empty");
            self.flow.fail(&empty, VendStatus::Failed).await?;
            return self.load(&row.vend.id).await;
        }
        self.finish_within(row.vend.id, deadline).await
    }

    /// Drives the vend in a task of its own, owned by the service's tracker (it may outlive this
    /// call, never the service: shutdown waits for it), and returns the vend when final, or as
    /// PENDING when the call's deadline comes first.
    async fn finish_within(
        &self,
        id: String,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Vend> {
        let flow = self.flow.clone();
        let vend_id = id.clone();
        let task = self.drives.spawn(async move { flow.drive(&vend_id).await });
        let outcome = match deadline {
            // Leave a little of the deadline for the answer.
            Some(d) => {
                let until = d
                    .checked_sub(std::time::Duration::from_millis(50))
                    .unwrap_or(d);
                tokio::time::timeout_at(until, task).await.ok()
            }
            None => Some(task.await),
        };
        match outcome {
            Some(Ok(Ok(v))) => Ok(v.vend),
            Some(Ok(Err(e))) => {
                tracing::warn!(vend = %id, error = %e, "vend left pending; the recovery sweep retries it");
                self.load(&id).await
            }
            _ => self.load(&id).await,
        }
    }

    async fn load(&self, id: &str) -> Result<Vend> {
        store::vend(self.db.pool(), id)
            .await?
            .map(|v| v.vend)
            .ok_or_else(|| VmError::not_found("vend", id))
    }

    async fn list(&self, req: ListVendsRequest) -> Result<ListVendsResponse> {
        let machine = if req.machine_id.is_empty() {
            None
        } else {
            Some(machine_id(&req.machine_id)?)
        };
        let limit = page_token::page_size(req.page_size, 50, 500)?;
        let status = match VendStatus::try_from(req.status) {
            Ok(VendStatus::Unspecified) => None,
            Ok(s) => Some(s),
            Err(_) => return Err(VmError::invalid("status", "unknown value")),
        };
        let listing = ("vends", &machine, req.status);
        let after = page_token::decode(&req.page_token, &listing)?;
        let mut vends =
            store::vends(self.db.pool(), machine.as_deref(), status, after, limit + 1).await?;
        let next_page_token = page_token::next_page(&mut vends, limit, &listing, |v| {
            let created = v.create_time.as_ref();
            let us = created.map_or(0, |t| time::from_timestamp("", t).unwrap_or(0));
            (us, v.id.clone())
        });
        Ok(ListVendsResponse {
            vends,
            next_page_token,
        })
    }
}

#[tonic::async_trait]
impl VendingMachineService for VmApi {
    async fn set_planogram(
        &self,
        r: Request<SetPlanogramRequest>,
    ) -> std::result::Result<Response<SetPlanogramResponse>, Status> {
        let planogram = VmApi::set_planogram(self, r.into_inner()).await?;
        Ok(Response::new(SetPlanogramResponse {
            planogram: Some(planogram),
        }))
    }

    async fn get_planogram(
        &self,
        r: Request<GetPlanogramRequest>,
    ) -> std::result::Result<Response<GetPlanogramResponse>, Status> {
        let machine = machine_id(&r.get_ref().machine_id)?;
        let planogram = store::planogram(self.db.pool(), &machine).await?;
        Ok(Response::new(GetPlanogramResponse {
            planogram: Some(planogram),
        }))
    }

    async fn restock(
        &self,
        r: Request<RestockRequest>,
    ) -> std::result::Result<Response<RestockResponse>, Status> {
        let planogram = VmApi::restock(self, &r).await?;
        Ok(Response::new(RestockResponse {
            planogram: Some(planogram),
        }))
    }

    async fn vend(
        &self,
        r: Request<VendRequest>,
    ) -> std::result::Result<Response<VendResponse>, Status> {
        let vend = VmApi::vend(self, r.into_inner()).await?;
        Ok(Response::new(VendResponse { vend: Some(vend) }))
    }

    async fn get_vend(
        &self,
        r: Request<GetVendRequest>,
    ) -> std::result::Result<Response<GetVendResponse>, Status> {
        let id = &r.get_ref().id;
        if id.is_empty() {
            return Err(VmError::invalid("id", "required").into());
        }
        Ok(Response::new(GetVendResponse {
            vend: Some(self.load(id).await?),
        }))
    }

    async fn list_vends(
        &self,
        r: Request<ListVendsRequest>,
    ) -> std::result::Result<Response<ListVendsResponse>, Status> {
        Ok(Response::new(self.list(r.into_inner()).await?))
    }
}
