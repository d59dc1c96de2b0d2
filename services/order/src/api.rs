//! The `order.v1.OrderService` implementation: who may act for which customer, and the read
//! and cancel paths (placing is [`crate::place`]).
//!
//! Customers act only for themselves: their `customer_id` is taken from the token (or must
//! match it), and another customer's order answers `NOT_FOUND` naming `id`, exactly like a
//! missing one, so order ids cannot be probed. Admins and services act on every order. Staff act
//! for any customer, but only on the orders of their stores (`Identity::store_scope`, the token's
//! `stores` claim) and on online orders (no store, served by no store in particular): reading,
//! listing, cancelling and refunding another store's order is `PERMISSION_DENIED` naming `id`
//! (staff are employees, so the order's store is named), placing an order at or listing
//! another store names `store_id`, and a ListOrders without a store lists only their stores' and online orders,
//! filtered in SQL so pages stay full and page tokens stay exact (`docs/identity.md`).

use mesh_contracts::events::v1::CancelReason;
use mesh_contracts::order::v1::order_service_server::OrderService;
use mesh_contracts::order::v1::*;
use mesh_runtime::Database;
use mesh_runtime::auth::{Identity, Role};
use mesh_runtime::domain::page_token;
use tonic::{Request, Response, Status};

use crate::error::OrderError;
use crate::place::Placer;
use crate::store::{self, ListFilter, OPEN};
use crate::{refund, transitions, validate};

type Result<T> = std::result::Result<T, OrderError>;

/// Default page size of ListOrders.
pub const DEFAULT_PAGE: i64 = 20;
/// Largest page size of ListOrders.
pub const MAX_PAGE: i64 = 200;

/// Who is calling, as far as orders care.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's subject (account id, or a service's client id).
    pub subject: String,
    /// Staff, admin or a service: may act for any customer.
    pub privileged: bool,
    /// The caller's identity (roles, the staff `stores` claim).
    pub identity: Identity,
    /// The stores whose orders a privileged caller may act on besides online ones: `None` for
    /// admins and services (every store), the `stores` claim for staff.
    pub stores: Option<Vec<String>>,
}

impl Caller {
    /// The caller of `request` (the guard put its identity there).
    pub fn of<T>(request: &Request<T>) -> Result<Self> {
        let id = Identity::of(request).ok_or_else(|| {
            OrderError::denied("authorization", "no caller identity on the request")
        })?;
        Ok(Self {
            subject: id.subject.clone(),
            privileged: id.has_any(&[Role::Staff, Role::Service]),
            identity: id.clone(),
            stores: id.store_scope().map(<[String]>::to_vec),
        })
    }

    /// The customer the caller acts for, given the request's `customer_id` (`field`).
    pub fn customer(&self, field: &str, requested: &str) -> Result<Option<String>> {
        let requested = requested.trim();
        if self.privileged {
            return if requested.is_empty() {
                Ok(None)
            } else {
                Ok(Some(validate::id(field, requested)?))
            };
        }
        if requested.is_empty() || requested == self.subject {
            return Ok(Some(self.subject.clone()));
        }
        Err(OrderError::denied(
            field,
            "a customer may only act on their own orders",
        ))
    }

    /// Whether the caller may see and act on `order` (its id in `field`): customers their own
    /// (another's is `NOT_FOUND`, like a missing one); admins and services every order; staff
    /// online orders and those of their stores (another store's is `PERMISSION_DENIED`).
    pub fn may_see(&self, field: &str, order: &Order) -> Result<()> {
        if !self.privileged {
            return if order.customer_id == self.subject {
                Ok(())
            } else {
                Err(OrderError::not_found(field, "order", &order.id))
            };
        }
        if order.store_id.is_empty() || self.may_use_store(&order.store_id) {
            return Ok(());
        }
        Err(OrderError::denied(
            field,
            format!(
                "order `{}` was placed at store `{}`, which the caller's token does not name",
                order.id, order.store_id
            ),
        ))
    }

    /// Whether a privileged caller's scope takes in store `store_id`.
    fn may_use_store(&self, store_id: &str) -> bool {
        self.stores
            .as_ref()
            .is_none_or(|stores| stores.iter().any(|s| s == store_id))
    }

    /// Whether the caller may refund `order`: staff, admins and services, as [`Caller::may_see`]
    /// scopes them. `PERMISSION_DENIED` naming `field`.
    pub fn may_refund(&self, field: &str, order: &Order) -> Result<()> {
        if !self.privileged {
            return Err(OrderError::denied(field, "only staff may refund an order"));
        }
        self.may_see(field, order)
    }

    /// `Ok` when the caller may act at store `store_id` (the value of `field`): customers (who
    /// order and list their own orders anywhere), admins and services; staff at their stores.
    /// Else `PERMISSION_DENIED` naming `field`.
    pub fn may_act_at(&self, field: &str, store_id: &str) -> Result<()> {
        if !self.privileged || self.may_use_store(store_id) {
            return Ok(());
        }
        Err(OrderError::denied(
            field,
            format!("store `{store_id}` is not one of the caller's stores"),
        ))
    }

    /// The stores a listing is confined to, given its requested `store_id` (`field`, already
    /// validated; `None` = no store asked): `None` lists every store (or, for customers, their
    /// own orders anywhere); `Some(stores)` only online orders and those of `stores`. A store
    /// outside a staff member's scope is `PERMISSION_DENIED` naming `field`.
    pub fn listing_scope(
        &self,
        field: &str,
        requested: Option<&str>,
    ) -> Result<Option<Vec<String>>> {
        if !self.privileged {
            return Ok(None);
        }
        match requested {
            Some(store) => self.may_act_at(field, store).map(|()| None),
            None => Ok(self.stores.clone()),
        }
    }
}

/// The order service.
#[derive(Debug, Clone)]
pub struct OrderApi {
    db: Database,
    placer: Placer,
}

fn not_found(id: &str) -> OrderError {
    OrderError::not_found("id", "order", id)
}

impl OrderApi {
    /// The service over `db`, placing orders with `placer`.
    pub fn new(db: Database, placer: Placer) -> Self {
        Self { db, placer }
    }

    async fn place(&self, caller: &Caller, req: PlaceOrderRequest) -> Result<Order> {
        let customer = caller
            .customer("customer_id", &req.customer_id)?
            .ok_or_else(|| {
                OrderError::invalid(
                    "customer_id",
                    "required when staff or a service places an order",
                )
            })?;
        if !req.store_id.trim().is_empty() {
            let store = validate::store("store_id", &req.store_id)?;
            caller.may_act_at("store_id", &store)?;
        }
        self.placer.place(&customer, &req).await
    }

    async fn get(&self, caller: &Caller, id: &str) -> Result<Order> {
        let id = validate::id("id", id)?;
        let mut conn = self.db.acquire().await?;
        let order = store::get(&mut conn, &id)
            .await?
            .ok_or_else(|| not_found(&id))?;
        caller.may_see("id", &order)?;
        Ok(order)
    }

    async fn list(&self, caller: &Caller, req: ListOrdersRequest) -> Result<ListOrdersResponse> {
        let customer_id = caller.customer("customer_id", &req.customer_id)?;
        let limit = page_token::page_size(req.page_size, DEFAULT_PAGE, MAX_PAGE)?;
        let status = match OrderStatus::try_from(req.status) {
            Ok(OrderStatus::Unspecified) => None,
            Ok(s) => Some(s),
            Err(_) => return Err(OrderError::invalid("status", "not an OrderStatus value")),
        };
        let store_id = if req.store_id.trim().is_empty() {
            None
        } else {
            Some(validate::store("store_id", &req.store_id)?)
        };
        let stores = caller.listing_scope("store_id", store_id.as_deref())?;
        let listing = (
            "orders",
            customer_id.clone(),
            req.status,
            store_id.clone(),
            stores.clone(),
        );
        let before = page_token::decode(&req.page_token, &listing)?;
        let filter = ListFilter {
            customer_id,
            status,
            store_id,
            stores,
            before,
        };
        let mut conn = self.db.acquire().await?;
        let mut orders = store::list(&mut conn, &filter, limit + 1).await?;
        let next_page_token = page_token::next_page(&mut orders, limit, &listing, |o| {
            (store::created_us(o), o.id.clone())
        });
        Ok(ListOrdersResponse {
            orders,
            next_page_token,
        })
    }

    async fn cancel(&self, caller: &Caller, req: CancelOrderRequest) -> Result<Order> {
        let id = validate::id("id", &req.id)?;
        if req.reason.chars().count() > 500 {
            return Err(OrderError::invalid("reason", "at most 500 characters"));
        }
        let mut tx = self.db.begin().await?;
        let order = store::get(&mut tx, &id)
            .await?
            .ok_or_else(|| not_found(&id))?;
        caller.may_see("id", &order)?;
        let status = OrderStatus::try_from(order.status).unwrap_or_default();
        if status == OrderStatus::Cancelled {
            return Ok(order);
        }
        if caller.privileged && matches!(status, OrderStatus::Confirmed | OrderStatus::Refunded) {
            // Staff cancel a confirmed order by refunding it whole, stock restocked.
            drop(tx);
            if status == OrderStatus::Refunded {
                caller.may_refund("id", &order)?;
                return Ok(order);
            }
            let detail = if req.reason.trim().is_empty() {
                "cancelled by staff".to_string()
            } else {
                req.reason.trim().to_string()
            };
            let refund = RefundOrderRequest {
                id: id.clone(),
                idempotency_key: refund::CANCEL_KEY.into(),
                lines: Vec::new(),
                disposition: StockDisposition::Restock as i32,
                reason: detail,
            };
            return Ok(self.refund(caller, refund, true).await?.0);
        }
        if !OPEN.contains(&status) {
            return Err(OrderError::precondition(
                "id",
                format!(
                    "order `{id}` is {}; only an order whose payment has not succeeded can be cancelled",
                    status.as_str_name()
                ),
            ));
        }
        let reason = if caller.privileged {
            CancelReason::StaffRequest
        } else {
            CancelReason::CustomerRequest
        };
        let detail = if req.reason.trim().is_empty() {
            "cancelled on request".to_string()
        } else {
            req.reason.trim().to_string()
        };
        match transitions::cancel(&mut tx, &id, reason, &detail, "").await? {
            Some(updated) => {
                tx.commit().await?;
                // The order read above, with what the cancellation wrote (no second read).
                let mut order = order;
                order.status_history.push(StatusChange {
                    status: updated.status,
                    time: updated.update_time,
                    reason: updated.cancel_reason.clone(),
                    event_id: String::new(),
                });
                order.status = updated.status;
                order.cancel_reason = updated.cancel_reason;
                order.reservation_id = updated.reservation_id;
                order.payment_id = updated.payment_id;
                order.update_time = updated.update_time;
                Ok(order)
            }
            None => {
                // The saga finished it between the read and the update: report what it is now.
                drop(tx);
                let now = self.get(caller, &id).await?;
                if now.status == OrderStatus::Cancelled as i32 {
                    Ok(now)
                } else {
                    Err(OrderError::precondition(
                        "id",
                        format!(
                            "order `{id}` was confirmed meanwhile; it can no longer be cancelled"
                        ),
                    ))
                }
            }
        }
    }
}

impl OrderApi {
    /// RefundOrder (`from_cancel`: a staff CancelOrder, the only caller of the key "cancel").
    async fn refund(
        &self,
        caller: &Caller,
        req: RefundOrderRequest,
        from_cancel: bool,
    ) -> Result<(Order, OrderRefund)> {
        let id = validate::id("id", &req.id)?;
        let key = validate::id("idempotency_key", &req.idempotency_key)?;
        if key == refund::CANCEL_KEY && !from_cancel {
            return Err(OrderError::invalid(
                "idempotency_key",
                "`cancel` is the key of CancelOrder's refund; choose another",
            ));
        }
        let reason = req.reason.trim();
        if reason.is_empty() {
            return Err(OrderError::invalid("reason", "required"));
        }
        if reason.chars().count() > 500 {
            return Err(OrderError::invalid("reason", "at most 500 characters"));
        }
        if !caller.privileged {
            return Err(OrderError::denied("id", "only staff may refund an order"));
        }
        let hash = refund::fingerprint(&id, &req);
        let mut tx = self.db.begin().await?;
        let order = match store::lock(&mut tx, &id).await? {
            Some(o) => o,
            None => return Err(not_found(&id)),
        };
        caller.may_refund("id", &order)?;
        let ask = refund::Ask {
            key: &key,
            request_hash: &hash,
            request: &req,
            reason,
        };
        let refund_id = refund::request(&mut tx, &order, &ask).await?;
        tx.commit().await?;
        let order = self.get(caller, &id).await?;
        let refund = order
            .refunds
            .iter()
            .find(|r| r.id == refund_id)
            .cloned()
            .ok_or_else(|| OrderError::not_found("id", "refund", &refund_id))?;
        Ok((order, refund))
    }
}

#[tonic::async_trait]
impl OrderService for OrderApi {
    async fn place_order(
        &self,
        r: Request<PlaceOrderRequest>,
    ) -> std::result::Result<Response<PlaceOrderResponse>, Status> {
        let caller = Caller::of(&r)?;
        let order = self.place(&caller, r.into_inner()).await?;
        Ok(Response::new(PlaceOrderResponse { order: Some(order) }))
    }

    async fn get_order(
        &self,
        r: Request<GetOrderRequest>,
    ) -> std::result::Result<Response<GetOrderResponse>, Status> {
        let caller = Caller::of(&r)?;
        let order = self.get(&caller, &r.get_ref().id).await?;
        Ok(Response::new(GetOrderResponse { order: Some(order) }))
    }

    async fn list_orders(
        &self,
        r: Request<ListOrdersRequest>,
    ) -> std::result::Result<Response<ListOrdersResponse>, Status> {
        let caller = Caller::of(&r)?;
        Ok(Response::new(self.list(&caller, r.into_inner()).await?))
    }

    async fn cancel_order(
        &self,
        r: Request<CancelOrderRequest>,
    ) -> std::result::Result<Response<CancelOrderResponse>, Status> {
        let caller = Caller::of(&r)?;
        let order = self.cancel(&caller, r.into_inner()).await?;
        Ok(Response::new(CancelOrderResponse { order: Some(order) }))
    }

    async fn refund_order(
        &self,
        r: Request<RefundOrderRequest>,
    ) -> std::result::Result<Response<RefundOrderResponse>, Status> {
        let caller = Caller::of(&r)?;
        let (order, refund) = self.refund(&caller, r.into_inner(), false).await?;
        Ok(Response::new(RefundOrderResponse {
            order: Some(order),
            refund: Some(refund),
        }))
    }
}
