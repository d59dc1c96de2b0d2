//! The `inventory.v1.InventoryService` implementation. Store staff read and change only the
//! stock of their stores' locations ([`crate::scope`]).

use std::sync::Arc;
use std::time::Duration;

use mesh_contracts::inventory::v1::inventory_service_server::InventoryService;
use mesh_contracts::inventory::v1::*;
use mesh_runtime::auth::{Clock, Identity};
use mesh_runtime::domain::page_token;
use mesh_runtime::domain::time::duration_us;
use mesh_runtime::{Database, DatabaseError};
use tonic::{Request, Response, Status};

use crate::error::InventoryError;
use crate::events;
use crate::reservations;
use crate::scope::Scope;
use crate::store::{self, StockFilter};
use crate::validate;

type Result<T> = std::result::Result<T, InventoryError>;

/// Reservation lifetime when the request names none.
pub const DEFAULT_TTL: Duration = Duration::from_secs(15 * 60);
/// Longest reservation lifetime.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// The inventory service.
#[derive(Debug, Clone)]
pub struct InventoryApi {
    db: Database,
    clock: Arc<dyn Clock>,
}

impl InventoryApi {
    /// The service over `db`, on `clock`.
    pub fn new(db: Database, clock: Arc<dyn Clock>) -> Self {
        Self { db, clock }
    }

    async fn check(&self, scope: &Scope, req: CheckStockRequest) -> Result<CheckStockResponse> {
        let lines = validate::lines(&req.lines)?;
        for (i, l) in lines.iter().enumerate() {
            let field = format!("lines[{i}].location_id");
            scope.check(self.db.pool(), &field, &l.location_id).await?;
        }
        let mut results = Vec::with_capacity(lines.len());
        for l in &lines {
            let level = store::stock(self.db.pool(), &l.product_id, &l.location_id).await?;
            results.push(StockCheckResult {
                product_id: l.product_id.clone(),
                location_id: l.location_id.clone(),
                requested: l.quantity,
                available: level.available,
                sufficient: level.available >= l.quantity,
            });
        }
        Ok(CheckStockResponse {
            all_available: results.iter().all(|r| r.sufficient),
            results,
        })
    }

    async fn reserve(&self, req: ReserveRequest) -> Result<Reservation> {
        let reference = validate::reference("reference_id", &req.reference_id)?;
        let lines = validate::lines(&req.lines)?;
        let ttl = match req.ttl {
            None => DEFAULT_TTL,
            Some(d) if d.seconds > 0 && d.seconds as u64 <= MAX_TTL.as_secs() => {
                Duration::from_secs(d.seconds as u64)
            }
            Some(_) => {
                return Err(InventoryError::invalid(
                    "ttl",
                    "between 1 second and 24 hours",
                ));
            }
        };
        let id = if req.reservation_id.is_empty() {
            uuid::Uuid::now_v7().to_string()
        } else {
            validate::reference("reservation_id", &req.reservation_id)?
        };
        let now = self.clock.now_us();
        let mut tx = self.db.begin().await?;
        if let Some(existing) = store::reservation(&mut tx, &reference, true).await? {
            return Ok(existing);
        }
        let mut short = Vec::new();
        for line in validate::merged(&lines) {
            if !store::hold(&mut tx, &line, now).await? {
                let level = store::stock_in(&mut tx, &line.product_id, &line.location_id).await?;
                short.push(format!(
                    "product {} at {}: requested {}, available {}",
                    line.product_id, line.location_id, line.quantity, level.available
                ));
            }
        }
        if !short.is_empty() {
            return Err(InventoryError::FailedPrecondition(format!(
                "insufficient stock: {}",
                short.join("; ")
            )));
        }
        let expires = now.saturating_add(duration_us(ttl));
        match store::insert_reservation(&mut tx, &id, &reference, &lines, now, expires).await {
            // A concurrent Reserve for the same reference (or id) won: answer with its reservation.
            Err(InventoryError::Database(DatabaseError::Conflict(_))) => {
                drop(tx);
                let mut tx = self.db.begin().await?;
                return store::reservation(&mut tx, &reference, true)
                    .await?
                    .ok_or_else(|| {
                        InventoryError::invalid(
                            "reservation_id",
                            format!("`{id}` is already used by another reference"),
                        )
                    });
            }
            other => other?,
        }
        tx.emit(events::reserved(&id, &reference, &lines, expires))
            .await?;
        let reservation = store::reservation(&mut tx, &id, false)
            .await?
            .ok_or_else(|| InventoryError::not_found("reservation", &id))?;
        tx.commit().await?;
        Ok(reservation)
    }

    async fn commit(&self, req: CommitReservationRequest) -> Result<Reservation> {
        let id = validate::reference("reservation_id", &req.reservation_id)?;
        let r = reservations::finish(&self.db, &self.clock, &id, ReservationStatus::Committed, "")
            .await?;
        if r.status != ReservationStatus::Committed as i32 {
            return Err(InventoryError::FailedPrecondition(format!(
                "reservation `{id}` is {}; only an active reservation can be committed",
                store::status_name(ReservationStatus::try_from(r.status).unwrap_or_default())
            )));
        }
        Ok(r)
    }

    async fn release(&self, req: ReleaseReservationRequest) -> Result<Reservation> {
        let id = validate::reference("reservation_id", &req.reservation_id)?;
        if req.reason.chars().count() > 500 {
            return Err(InventoryError::invalid("reason", "at most 500 characters"));
        }
        let r = reservations::finish(
            &self.db,
            &self.clock,
            &id,
            ReservationStatus::Released,
            &req.reason,
        )
        .await?;
        if r.status == ReservationStatus::Committed as i32 {
            return Err(InventoryError::FailedPrecondition(format!(
                "reservation `{id}` is committed; it cannot be released"
            )));
        }
        Ok(r)
    }

    async fn adjust(
        &self,
        actor: &str,
        scope: &Scope,
        req: AdjustStockRequest,
    ) -> Result<StockLevel> {
        let location = validate::location_id("location_id", &req.location_id, false)?;
        let product = validate::product_id("product_id", &req.product_id)?;
        scope
            .check(self.db.pool(), "location_id", &location)
            .await?;
        let reason =
            AdjustmentReason::try_from(req.reason).unwrap_or(AdjustmentReason::Unspecified);
        if reason == AdjustmentReason::Unspecified {
            return Err(InventoryError::invalid("reason", "required"));
        }
        if req.delta == 0 {
            return Err(InventoryError::invalid("delta", "must not be zero"));
        }
        let sign_ok = match reason {
            AdjustmentReason::Restock | AdjustmentReason::Return => req.delta > 0,
            AdjustmentReason::Shrinkage | AdjustmentReason::Damage | AdjustmentReason::Expired => {
                req.delta < 0
            }
            _ => true,
        };
        if !sign_ok {
            return Err(InventoryError::invalid(
                "delta",
                format!("has the wrong sign for reason {}", reason.as_str_name()),
            ));
        }
        if req.note.chars().count() > 500 {
            return Err(InventoryError::invalid("note", "at most 500 characters"));
        }
        let request_id = if req.request_id.is_empty() {
            None
        } else {
            Some(validate::reference("request_id", &req.request_id)?)
        };
        let now = self.clock.now_us();
        let mut tx = self.db.begin().await?;
        if let Some(rid) = &request_id
            && let Some((p, l, on_hand, reserved)) =
                store::adjustment_by_request(&mut tx, rid).await?
        {
            return Ok(StockLevel {
                product_id: p,
                location_id: l,
                on_hand,
                reserved,
                available: on_hand - reserved,
                update_time: None,
            });
        }
        if !store::adjust(&mut tx, &product, &location, req.delta, now).await? {
            let level = store::stock_in(&mut tx, &product, &location).await?;
            return Err(InventoryError::FailedPrecondition(format!(
                "delta: on_hand {} {:+} would drop below the {} units reserved",
                level.on_hand, req.delta, level.reserved
            )));
        }
        let level = store::stock_in(&mut tx, &product, &location).await?;
        store::insert_adjustment(
            &mut tx,
            request_id.as_deref(),
            &level,
            req.delta,
            req.reason,
            &req.note,
            actor,
            now,
        )
        .await?;
        tx.emit(events::adjusted(
            &level,
            req.delta,
            req.reason,
            actor,
            req.note.clone(),
        ))
        .await?;
        tx.commit().await?;
        Ok(level)
    }

    async fn list(&self, scope: &Scope, req: ListStockRequest) -> Result<ListStockResponse> {
        let limit = page_token::page_size(req.page_size, 100, 1000)?;
        let mut filter = StockFilter {
            location_id: if req.location_id.is_empty() {
                None
            } else {
                Some(validate::location_id(
                    "location_id",
                    &req.location_id,
                    false,
                )?)
            },
            product_id: if req.product_id.is_empty() {
                None
            } else {
                Some(validate::product_id("product_id", &req.product_id)?)
            },
            max_available: (req.only_low_stock || req.max_available != 0)
                .then_some(req.max_available),
            stores: None,
            after: None,
        };
        match &filter.location_id {
            Some(location) => scope.check(self.db.pool(), "location_id", location).await?,
            None => filter.stores = scope.stores().map(<[String]>::to_vec),
        }
        let listing = (
            "stock",
            &filter.location_id,
            &filter.product_id,
            filter.max_available,
            &filter.stores,
        );
        filter.after = page_token::decode(&req.page_token, &listing)?;
        let mut stock = store::list(self.db.pool(), &filter, limit + 1).await?;
        let next_page_token = page_token::next_page(&mut stock, limit, &listing, |s| {
            (s.location_id.clone(), s.product_id.clone())
        });
        Ok(ListStockResponse {
            stock,
            next_page_token,
        })
    }
}

#[tonic::async_trait]
impl InventoryService for InventoryApi {
    async fn check_stock(
        &self,
        r: Request<CheckStockRequest>,
    ) -> std::result::Result<Response<CheckStockResponse>, Status> {
        let scope = Scope::of(Identity::of(&r));
        Ok(Response::new(self.check(&scope, r.into_inner()).await?))
    }

    async fn get_stock(
        &self,
        r: Request<GetStockRequest>,
    ) -> std::result::Result<Response<GetStockResponse>, Status> {
        let scope = Scope::of(Identity::of(&r));
        let req = r.into_inner();
        let location = validate::location_id("location_id", &req.location_id, false)?;
        let product = validate::product_id("product_id", &req.product_id)?;
        scope
            .check(self.db.pool(), "location_id", &location)
            .await?;
        let stock = store::stock(self.db.pool(), &product, &location).await?;
        Ok(Response::new(GetStockResponse { stock: Some(stock) }))
    }

    async fn list_stock(
        &self,
        r: Request<ListStockRequest>,
    ) -> std::result::Result<Response<ListStockResponse>, Status> {
        let scope = Scope::of(Identity::of(&r));
        Ok(Response::new(self.list(&scope, r.into_inner()).await?))
    }

    async fn reserve(
        &self,
        r: Request<ReserveRequest>,
    ) -> std::result::Result<Response<ReserveResponse>, Status> {
        let reservation = InventoryApi::reserve(self, r.into_inner()).await?;
        Ok(Response::new(ReserveResponse {
            reservation: Some(reservation),
        }))
    }

    async fn commit_reservation(
        &self,
        r: Request<CommitReservationRequest>,
    ) -> std::result::Result<Response<CommitReservationResponse>, Status> {
        let reservation = self.commit(r.into_inner()).await?;
        Ok(Response::new(CommitReservationResponse {
            reservation: Some(reservation),
        }))
    }

    async fn release_reservation(
        &self,
        r: Request<ReleaseReservationRequest>,
    ) -> std::result::Result<Response<ReleaseReservationResponse>, Status> {
        let reservation = self.release(r.into_inner()).await?;
        Ok(Response::new(ReleaseReservationResponse {
            reservation: Some(reservation),
        }))
    }

    async fn adjust_stock(
        &self,
        r: Request<AdjustStockRequest>,
    ) -> std::result::Result<Response<AdjustStockResponse>, Status> {
        let actor = Identity::of(&r)
            .map(|i| i.subject.clone())
            .unwrap_or_default();
        let scope = Scope::of(Identity::of(&r));
        let stock = self.adjust(&actor, &scope, r.into_inner()).await?;
        Ok(Response::new(AdjustStockResponse { stock: Some(stock) }))
    }

    async fn get_reservation(
        &self,
        r: Request<GetReservationRequest>,
    ) -> std::result::Result<Response<GetReservationResponse>, Status> {
        let scope = Scope::of(Identity::of(&r));
        let id = validate::reference("id", &r.get_ref().id)?;
        let mut tx = self.db.begin().await.map_err(InventoryError::from)?;
        let reservation = store::reservation(&mut tx, &id, false)
            .await?
            .ok_or_else(|| InventoryError::not_found("reservation", &id))?;
        drop(tx);
        // Staff see a reservation only when every line is at a location of theirs.
        for line in &reservation.lines {
            scope.check(self.db.pool(), "id", &line.location_id).await?;
        }
        Ok(Response::new(GetReservationResponse {
            reservation: Some(reservation),
        }))
    }
}
