//! The `campaign.v1.CampaignService` implementation: who may do what, and each RPC over
//! [`crate::store`], [`crate::pricing`] and [`crate::redemption`].
//!
//! Staff create and end campaigns. Anyone with a token reads campaigns and prices carts;
//! customers see campaigns without their promo codes, price only for themselves and never
//! reserve. Reserving (order, while placing an order) is for staff and services.

use std::time::Duration;

use mesh_contracts::campaign::v1::campaign_service_server::CampaignService;
use mesh_contracts::campaign::v1::*;
use mesh_contracts::events::v1::{CampaignCreated, CampaignEnded};
use mesh_runtime::Database;
use mesh_runtime::auth::{Identity, Role};
use mesh_runtime::domain::{page_token, time};
use mesh_runtime::outbox::Event;
use tonic::{Request, Response, Status};

use crate::error::CampaignError;
use crate::pricing::{self, Cart, Exclusions};
use crate::store::{self, ListFilter};
use crate::{redemption, rules, validate};

type Result<T> = std::result::Result<T, CampaignError>;

/// Default page size of ListCampaigns.
pub const DEFAULT_PAGE: i64 = 50;
/// Largest page size of ListCampaigns.
pub const MAX_PAGE: i64 = 500;

/// Who is calling.
#[derive(Debug, Clone)]
struct Caller {
    subject: String,
    privileged: bool,
}

impl Caller {
    fn of<T>(request: &Request<T>) -> Result<Self> {
        let id = Identity::of(request).ok_or_else(|| {
            CampaignError::denied("authorization", "no caller identity on the request")
        })?;
        Ok(Self {
            subject: id.subject.clone(),
            privileged: id.has_any(&[Role::Staff, Role::Service]),
        })
    }

    /// The campaign as this caller may see it: customers do not see promo codes.
    fn view(&self, mut c: Campaign) -> Campaign {
        if !self.privileged {
            c.promo_codes.clear();
        }
        c
    }
}

/// The campaign service.
#[derive(Debug, Clone)]
pub struct CampaignApi {
    db: Database,
    hold_ttl: Duration,
}

impl CampaignApi {
    /// The service over `db`; holds live `hold_ttl`.
    pub fn new(db: Database, hold_ttl: Duration) -> Self {
        Self { db, hold_ttl }
    }

    async fn create(&self, req: CreateCampaignRequest) -> Result<Campaign> {
        let spec = validate::campaign(req.campaign.as_ref())?;
        let id = uuid::Uuid::now_v7().to_string();
        let now = time::now_us();
        let mut tx = self.db.begin().await?;
        let row = store::insert(&mut tx, &id, &spec, now).await?;
        let campaign = row.to_proto(now);
        tx.emit(Event::new(
            "campaign.created",
            &id,
            "CampaignCreated",
            &CampaignCreated {
                campaign: Some(campaign.clone()),
            },
        ))
        .await?;
        tx.commit().await?;
        Ok(campaign)
    }

    async fn get(&self, id: &str) -> Result<Campaign> {
        let id = validate::id("id", id)?;
        let mut conn = self.db.acquire().await?;
        let row = store::get(&mut conn, &id)
            .await?
            .ok_or_else(|| CampaignError::not_found(id))?;
        Ok(row.to_proto(time::now_us()))
    }

    async fn list(&self, req: ListCampaignsRequest) -> Result<ListCampaignsResponse> {
        let limit = page_token::page_size(req.page_size, DEFAULT_PAGE, MAX_PAGE)?;
        let state = match CampaignState::try_from(req.state) {
            Ok(CampaignState::Unspecified) => None,
            Ok(s) => Some(s),
            Err(_) => return Err(CampaignError::invalid("state", "not a CampaignState value")),
        };
        let listing = ("campaigns", req.state);
        let before: Option<(i64, String)> = page_token::decode(&req.page_token, &listing)?;
        let now = time::now_us();
        let filter = ListFilter {
            state,
            before,
            now_us: now,
        };
        let mut conn = self.db.acquire().await?;
        let mut rows = store::list(&mut conn, &filter, limit + 1).await?;
        let next_page_token =
            page_token::next_page(&mut rows, limit, &listing, |r| (r.created_us, r.id.clone()));
        Ok(ListCampaignsResponse {
            campaigns: rows.iter().map(|r| r.to_proto(now)).collect(),
            next_page_token,
        })
    }

    async fn end(&self, req: EndCampaignRequest) -> Result<Campaign> {
        let id = validate::id("id", &req.id)?;
        if req.reason.chars().count() > 500 {
            return Err(CampaignError::invalid("reason", "at most 500 characters"));
        }
        let now = time::now_us();
        let mut tx = self.db.begin().await?;
        let Some(row) = store::end(&mut tx, &id, now).await? else {
            drop(tx);
            // Already ended (or past its window), or unknown.
            return self.get(&id).await;
        };
        tx.emit(Event::new(
            "campaign.ended",
            &id,
            "CampaignEnded",
            &CampaignEnded {
                campaign_id: id.clone(),
                reason: req.reason.trim().to_string(),
                redemption_count: row.redemption_count,
            },
        ))
        .await?;
        tx.commit().await?;
        Ok(row.to_proto(now))
    }

    async fn price(&self, caller: &Caller, req: PriceCartRequest) -> Result<PriceCartResponse> {
        let now = time::now_us();
        let mut cart = validate::cart(&req, now)?;
        let customer = req.customer_id.trim().to_string();
        let customer = if caller.privileged {
            customer
        } else if customer.is_empty() || customer == caller.subject {
            caller.subject.clone()
        } else {
            return Err(CampaignError::denied(
                "customer_id",
                "a customer prices carts only for themselves",
            ));
        };
        cart.has_customer = !customer.is_empty();
        let order_id = req.order_id.trim().to_string();
        if req.reserve {
            if !caller.privileged {
                return Err(CampaignError::denied(
                    "reserve",
                    "only staff and services reserve redemptions",
                ));
            }
            if order_id.is_empty() {
                return Err(CampaignError::invalid("order_id", "required with reserve"));
            }
        }
        let codes: Vec<String> = cart
            .codes
            .iter()
            .filter_map(|c| c.normalized.clone().ok())
            .collect();
        let mut excluded = Exclusions::new();
        // Lines without a category get the one product's events told campaign, read only when
        // a candidate's rule is scoped by category (most carts price with none).
        let mut categories_filled = false;
        // Each refused hold excludes one campaign and prices again: at most one round per
        // candidate, plus the last.
        loop {
            let candidates = {
                let mut conn = self.db.acquire().await?;
                let mut candidates =
                    store::candidates(&mut conn, cart.at_us, &codes, &customer).await?;
                if !categories_filled
                    && candidates
                        .iter()
                        .any(|c| c.rules.iter().any(rules::scoped_by_category))
                {
                    fill_categories(&mut conn, &mut cart).await?;
                    categories_filled = true;
                }
                if req.reserve && !candidates.is_empty() {
                    // What this order holds already does not count against it (a retry).
                    let held = redemption::held_by_order(&mut conn, &order_id).await?;
                    for c in &mut candidates {
                        if let Some((_, discount)) = held.iter().find(|(id, _)| *id == c.id) {
                            c.redemption_count -= 1;
                            c.customer_count = (c.customer_count - 1).max(0);
                            c.budget_used -= discount;
                        }
                    }
                }
                candidates
            };
            let priced = pricing::price(&cart, &candidates, &excluded);
            if !req.reserve || priced.applied.is_empty() {
                return Ok(priced.response);
            }
            let expires =
                now.saturating_add(i64::try_from(self.hold_ttl.as_micros()).unwrap_or(i64::MAX));
            let mut tx = self.db.begin().await?;
            let mut refused = None;
            for a in &priced.applied {
                if let Some(why) =
                    redemption::hold(&mut tx, a, &order_id, &customer, now, expires).await?
                {
                    refused = Some((a.campaign_id.clone(), why));
                    break;
                }
            }
            match refused {
                None => {
                    tx.commit().await?;
                    return Ok(priced.response);
                }
                Some((id, why)) => {
                    drop(tx);
                    if excluded.insert(id, why).is_some() || excluded.len() > candidates.len() {
                        return Err(CampaignError::Corrupt(
                            "a refused hold was refused twice".into(),
                        ));
                    }
                }
            }
        }
    }
}

/// Gives `cart`'s lines without a category the one campaign knows for their product (from
/// product's events), if any.
async fn fill_categories(conn: &mut sqlx::AnyConnection, cart: &mut Cart) -> Result<()> {
    let missing: Vec<String> = cart
        .lines
        .iter()
        .filter(|l| l.category_id.is_empty())
        .map(|l| l.product_id.clone())
        .collect();
    let known = store::categories(conn, &missing).await?;
    for l in &mut cart.lines {
        if l.category_id.is_empty() {
            l.category_id = known.get(&l.product_id).cloned().unwrap_or_default();
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl CampaignService for CampaignApi {
    async fn create_campaign(
        &self,
        r: Request<CreateCampaignRequest>,
    ) -> std::result::Result<Response<CreateCampaignResponse>, Status> {
        let campaign = self.create(r.into_inner()).await?;
        Ok(Response::new(CreateCampaignResponse {
            campaign: Some(campaign),
        }))
    }

    async fn get_campaign(
        &self,
        r: Request<GetCampaignRequest>,
    ) -> std::result::Result<Response<GetCampaignResponse>, Status> {
        let caller = Caller::of(&r)?;
        let campaign = caller.view(self.get(&r.get_ref().id).await?);
        Ok(Response::new(GetCampaignResponse {
            campaign: Some(campaign),
        }))
    }

    async fn list_campaigns(
        &self,
        r: Request<ListCampaignsRequest>,
    ) -> std::result::Result<Response<ListCampaignsResponse>, Status> {
        let caller = Caller::of(&r)?;
        let mut page = self.list(r.into_inner()).await?;
        page.campaigns = page.campaigns.into_iter().map(|c| caller.view(c)).collect();
        Ok(Response::new(page))
    }

    async fn end_campaign(
        &self,
        r: Request<EndCampaignRequest>,
    ) -> std::result::Result<Response<EndCampaignResponse>, Status> {
        let campaign = self.end(r.into_inner()).await?;
        Ok(Response::new(EndCampaignResponse {
            campaign: Some(campaign),
        }))
    }

    async fn price_cart(
        &self,
        r: Request<PriceCartRequest>,
    ) -> std::result::Result<Response<PriceCartResponse>, Status> {
        let caller = Caller::of(&r)?;
        Ok(Response::new(self.price(&caller, r.into_inner()).await?))
    }

    async fn release_holds(
        &self,
        r: Request<ReleaseHoldsRequest>,
    ) -> std::result::Result<Response<ReleaseHoldsResponse>, Status> {
        let order_id = validate::id("order_id", &r.get_ref().order_id)?;
        let mut tx = self.db.begin().await.map_err(CampaignError::from)?;
        let released = redemption::release_holds(&mut tx, &order_id, time::now_us()).await?;
        tx.commit().await.map_err(CampaignError::from)?;
        Ok(Response::new(ReleaseHoldsResponse {
            released: released as i32,
        }))
    }
}
