//! The `report.v1.ReportService` implementation: validated requests, the read models' answers
//! with their freshness, and the rebuild.

use mesh_contracts::common::v1::Money;
use mesh_contracts::report::v1::report_service_server::ReportService;
use mesh_contracts::report::v1::*;
use mesh_runtime::Database;
use mesh_runtime::audit_access::AuditScope;
use mesh_runtime::auth::Identity;
use mesh_runtime::domain::{money::to_money, page_token, time};
use tonic::{Request, Response, Status};

use crate::dates;
use crate::error::ReportError;
use crate::freshness::{self, LagSource};
use crate::queries::{self, TopFilter};
use crate::rebuild;
use crate::timeline;
use crate::validate;

type Result<T> = std::result::Result<T, ReportError>;

/// Default low-stock threshold.
const DEFAULT_LOW_STOCK: i64 = 5;
/// Default days of the days-of-cover window.
const DEFAULT_COVER_WINDOW: i64 = 28;
/// Default and largest `max_events` of a timeline.
const DEFAULT_TIMELINE: i64 = 1000;
const MAX_TIMELINE: i64 = 5000;

/// The report service.
#[derive(Debug, Clone)]
pub struct ReportApi {
    db: Database,
    lag: LagSource,
}

fn money(currency: &str, amount_minor: i64) -> Option<Money> {
    Some(to_money(currency, amount_minor))
}

impl ReportApi {
    /// The service over its database, asking `lag` how far its consumer is behind.
    pub fn new(db: Database, lag: LagSource) -> Self {
        Self { db, lag }
    }

    async fn sales(&self, req: GetSalesByShopDayRequest) -> Result<GetSalesByShopDayResponse> {
        let (start, end) = validate::range(&req.start_date, &req.end_date)?;
        let store = validate::optional_id("store_id", &req.store_id)?;
        let rows = queries::sales(&self.db, &store, &start, &end).await?;
        let fresh = freshness::freshness(&self.db, &self.lag).await?;
        let days = rows
            .into_iter()
            .map(|r| {
                let net = r.gross.saturating_sub(r.discount).saturating_sub(r.refund);
                SalesDay {
                    store_id: r.store_id,
                    date: r.day,
                    order_count: r.orders,
                    vend_count: r.vends,
                    units_sold: r.units,
                    gross_sales: money(&r.currency, r.gross),
                    discounts: money(&r.currency, r.discount),
                    refunds: money(&r.currency, r.refund),
                    net_sales: money(&r.currency, net),
                }
            })
            .collect();
        Ok(GetSalesByShopDayResponse {
            days,
            as_of_time: fresh.newest_event_time,
            freshness: Some(fresh),
        })
    }

    async fn top(&self, req: ListTopProductsRequest) -> Result<ListTopProductsResponse> {
        let (start, end) = validate::range(&req.start_date, &req.end_date)?;
        let store = validate::optional_id("store_id", &req.store_id)?;
        let by_revenue = match TopProductsOrder::try_from(req.order_by) {
            Ok(TopProductsOrder::Unspecified | TopProductsOrder::Units) => false,
            Ok(TopProductsOrder::Revenue) => true,
            Err(_) => return Err(ReportError::invalid("order_by", "unknown value")),
        };
        let size = page_token::page_size(req.page_size, 10, 100)?;
        // The cursor is the offset of the next page (a ranking has no stable keyset).
        let query = ("top_products", &start, &end, &store, by_revenue);
        let offset: i64 = page_token::decode(&req.page_token, &query)?.unwrap_or(0);
        if offset < 0 {
            return Err(ReportError::invalid(
                "page_token",
                "not a token of this query",
            ));
        }
        let filter = TopFilter {
            start: &start,
            end: &end,
            store: &store,
            by_revenue,
        };
        let mut rows = queries::top(&self.db, &filter, size + 1, offset).await?;
        let more = i64::try_from(rows.len()).unwrap_or(i64::MAX) > size;
        rows.truncate(usize::try_from(size).unwrap_or(0));
        let fresh = freshness::freshness(&self.db, &self.lag).await?;
        let products = rows
            .into_iter()
            .zip(offset..)
            .map(|(r, i)| ProductSales {
                product_id: r.product_id,
                name: r.name,
                units_sold: r.units,
                revenue: money(&r.currency, r.revenue),
                rank: i32::try_from(i + 1).unwrap_or(i32::MAX),
            })
            .collect();
        Ok(ListTopProductsResponse {
            products,
            next_page_token: if more {
                page_token::encode(&(offset + size), &query)
            } else {
                String::new()
            },
            as_of_time: fresh.newest_event_time,
            freshness: Some(fresh),
        })
    }

    async fn stock(&self, req: GetStockSummaryRequest) -> Result<GetStockSummaryResponse> {
        let location = validate::optional_id("location_id", &req.location_id)?;
        let threshold = validate::bounded(
            "low_stock_threshold",
            req.low_stock_threshold,
            DEFAULT_LOW_STOCK,
            i64::MAX,
        )?;
        let window = validate::bounded(
            "cover_window_days",
            i64::from(req.cover_window_days),
            DEFAULT_COVER_WINDOW,
            validate::MAX_RANGE_DAYS,
        )?;
        let today = dates::day_number(time::now_us());
        let since = dates::format_day(today - window + 1);
        let mut rows: Vec<StockSummaryRow> = queries::stock(&self.db, &location, &since)
            .await?
            .into_iter()
            .map(|r| {
                let available = r.on_hand - r.reserved;
                #[allow(clippy::cast_precision_loss)]
                let days_of_cover = (r.out_in_window > 0).then(|| {
                    (available.max(0) as f64) * (window as f64) / (r.out_in_window as f64)
                });
                StockSummaryRow {
                    product_id: r.product_id,
                    name: r.name,
                    on_hand: r.on_hand,
                    reserved: r.reserved,
                    available,
                    location_count: i32::try_from(r.locations).unwrap_or(i32::MAX),
                    low_stock: available <= threshold,
                    units_out_in_window: r.out_in_window,
                    days_of_cover,
                }
            })
            .filter(|r| !req.only_low_stock || r.low_stock)
            .collect();
        rows.sort_by(|a, b| {
            a.available
                .cmp(&b.available)
                .then_with(|| a.product_id.cmp(&b.product_id))
        });
        let fresh = freshness::freshness(&self.db, &self.lag).await?;
        Ok(GetStockSummaryResponse {
            total_on_hand: rows.iter().map(|r| r.on_hand).sum(),
            total_reserved: rows.iter().map(|r| r.reserved).sum(),
            rows,
            as_of_time: fresh.newest_event_time,
            freshness: Some(fresh),
        })
    }

    async fn rebuild(&self, req: RebuildReadModelsRequest) -> Result<RebuildReadModelsResponse> {
        let models = validate::models(&req.read_models)?;
        let start = time::now_us();
        let done = rebuild::rebuild(&self.db, &models).await?;
        Ok(RebuildReadModelsResponse {
            read_models: models.iter().map(|m| m.name().to_string()).collect(),
            events_replayed: done.events_replayed,
            start_time: Some(time::to_timestamp(start)),
            end_time: Some(time::to_timestamp(time::now_us())),
        })
    }
}

impl ReportApi {
    /// The timeline of `req.aggregate_id` for a caller of `scope` (a customer's only when the
    /// aggregate is theirs).
    pub async fn timeline(
        &self,
        scope: &AuditScope,
        req: GetAggregateTimelineRequest,
    ) -> std::result::Result<GetAggregateTimelineResponse, Status> {
        let id = validate::required_id("aggregate_id", &req.aggregate_id)?;
        let max = validate::bounded(
            "max_events",
            i64::from(req.max_events),
            DEFAULT_TIMELINE,
            MAX_TIMELINE,
        )?;
        let found =
            timeline::timeline(&self.db, &id, usize::try_from(max).unwrap_or(usize::MAX)).await?;
        scope.check(&id, &found.events)?;
        let fresh = freshness::freshness(&self.db, &self.lag).await?;
        Ok(GetAggregateTimelineResponse {
            events: found.events,
            subjects: found.subjects,
            truncated: found.truncated,
            freshness: Some(fresh),
        })
    }
}

#[tonic::async_trait]
impl ReportService for ReportApi {
    async fn get_aggregate_timeline(
        &self,
        request: Request<GetAggregateTimelineRequest>,
    ) -> std::result::Result<Response<GetAggregateTimelineResponse>, Status> {
        let scope = AuditScope::of(Identity::of(&request))?;
        Ok(Response::new(
            self.timeline(&scope, request.into_inner()).await?,
        ))
    }

    async fn get_sales_by_shop_day(
        &self,
        request: Request<GetSalesByShopDayRequest>,
    ) -> std::result::Result<Response<GetSalesByShopDayResponse>, Status> {
        Ok(Response::new(self.sales(request.into_inner()).await?))
    }

    async fn list_top_products(
        &self,
        request: Request<ListTopProductsRequest>,
    ) -> std::result::Result<Response<ListTopProductsResponse>, Status> {
        Ok(Response::new(self.top(request.into_inner()).await?))
    }

    async fn get_stock_summary(
        &self,
        request: Request<GetStockSummaryRequest>,
    ) -> std::result::Result<Response<GetStockSummaryResponse>, Status> {
        Ok(Response::new(self.stock(request.into_inner()).await?))
    }

    async fn rebuild_read_models(
        &self,
        request: Request<RebuildReadModelsRequest>,
    ) -> std::result::Result<Response<RebuildReadModelsResponse>, Status> {
        Ok(Response::new(self.rebuild(request.into_inner()).await?))
    }
}
