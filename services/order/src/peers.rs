//! Order's synchronous peers, called over gRPC with the service's own token
//! (`ServiceTokenChannel`): product prices the lines, campaign discounts them, payment
//! tokenizes raw cards. Product's and payment's failures become statuses naming the request
//! field they concern; campaign's never fail an order (see [`crate::place`]).

use std::time::Duration;

use mesh_contracts::campaign::v1::campaign_service_client::CampaignServiceClient;
use mesh_contracts::campaign::v1::{PriceCartRequest, PriceCartResponse, ReleaseHoldsRequest};
use mesh_contracts::common::v1::PaymentCard;
use mesh_contracts::payment::v1::TokenizeCardRequest;
use mesh_contracts::payment::v1::payment_service_client::PaymentServiceClient;
use mesh_contracts::product::v1::product_service_client::ProductServiceClient;
use mesh_contracts::product::v1::{BatchGetProductsRequest, GetProductRequest, Product};
use mesh_runtime::ServiceContext;
use mesh_runtime::auth::ServiceTokenChannel;
use mesh_runtime::client::MeshChannel;
use tonic::Code;

use crate::error::OrderError;
use crate::validate::Line;

/// Campaign's answer to `call`, or `DEADLINE_EXCEEDED` when it takes longer than `within`.
async fn campaign_within<T>(
    within: Duration,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, tonic::Status> {
    match tokio::time::timeout(within, call).await {
        Ok(answer) => answer.map(tonic::Response::into_inner),
        Err(_) => Err(tonic::Status::deadline_exceeded(format!(
            "campaign did not answer within {within:?}"
        ))),
    }
}

/// A channel that authenticates as the order service.
pub type PeerChannel = ServiceTokenChannel<MeshChannel>;

/// Clients of product, payment and campaign.
#[derive(Debug, Clone)]
pub struct Peers {
    product: ProductServiceClient<PeerChannel>,
    payment: PaymentServiceClient<PeerChannel>,
    campaign: CampaignServiceClient<PeerChannel>,
}

/// A tokenized card.
#[derive(Debug, Clone, Default)]
pub struct Card {
    /// The token.
    pub token: String,
    /// Last 4 digits, when known.
    pub last4: String,
}

impl Peers {
    /// Clients over the module table's channels to `product`, `payment` and `campaign`.
    pub fn connect(ctx: &ServiceContext) -> Result<Self, mesh_runtime::ClientError> {
        Ok(Self::new(
            ServiceTokenChannel::connect(ctx, "product")?,
            ServiceTokenChannel::connect(ctx, "payment")?,
            ServiceTokenChannel::connect(ctx, "campaign")?,
        ))
    }

    /// Clients over the given channels.
    pub fn new(product: PeerChannel, payment: PeerChannel, campaign: PeerChannel) -> Self {
        Self {
            product: ProductServiceClient::new(product),
            payment: PaymentServiceClient::new(payment),
            campaign: CampaignServiceClient::new(campaign),
        }
    }

    /// Prices `req` at campaign (holding its redemptions), within `within` at most (the client
    /// stack's deadline and breaker apply as to every call; this bound keeps a slow campaign
    /// from slowing PlaceOrder down).
    pub async fn price(
        &self,
        req: PriceCartRequest,
        within: Duration,
    ) -> Result<PriceCartResponse, tonic::Status> {
        let mut request = tonic::Request::new(req);
        request.set_timeout(within);
        campaign_within(within, self.campaign.clone().price_cart(request)).await
    }

    /// Releases the redemptions campaign holds for `order_id` (a PlaceOrder that failed after
    /// pricing), within `within` at most: how many it released.
    pub async fn release_holds(
        &self,
        order_id: &str,
        within: Duration,
    ) -> Result<i32, tonic::Status> {
        let mut request = tonic::Request::new(ReleaseHoldsRequest {
            order_id: order_id.to_string(),
        });
        request.set_timeout(within);
        campaign_within(within, self.campaign.clone().release_holds(request))
            .await
            .map(|r| r.released)
    }

    /// The products of `lines`, in line order. An unknown product is `NOT_FOUND` naming
    /// `lines[i].product_id`.
    pub async fn products(&self, lines: &[Line]) -> Result<Vec<Product>, OrderError> {
        let ids: Vec<String> = lines.iter().map(|l| l.product_id.clone()).collect();
        match self
            .product
            .clone()
            .batch_get_products(BatchGetProductsRequest { ids: ids.clone() })
            .await
        {
            Ok(r) => {
                let products = r.into_inner().products;
                if products.len() != ids.len() {
                    return Err(OrderError::unavailable(format!(
                        "lines: the product service answered {} products for {} lines",
                        products.len(),
                        ids.len()
                    )));
                }
                Ok(products)
            }
            Err(s) if s.code() == Code::NotFound => Err(self.which_is_missing(&ids).await),
            Err(s) => Err(unavailable("lines", "product", "price the order", &s)),
        }
    }

    /// Finds the first unknown product (only on the error path: one call per line).
    async fn which_is_missing(&self, ids: &[String]) -> OrderError {
        for (i, id) in ids.iter().enumerate() {
            match self
                .product
                .clone()
                .get_product(GetProductRequest { id: id.clone() })
                .await
            {
                Ok(_) => {}
                Err(s) if s.code() == Code::NotFound => {
                    return OrderError::not_found(&format!("lines[{i}].product_id"), "product", id);
                }
                Err(s) => return unavailable("lines", "product", "price the order", &s),
            }
        }
        OrderError::unavailable("lines: a product went missing while the order was priced; retry")
    }

    /// Exchanges `card` for a token at payment.
    pub async fn tokenize(&self, card: &PaymentCard) -> Result<Card, OrderError> {
        match self
            .payment
            .clone()
            .tokenize_card(TokenizeCardRequest {
                card: Some(card.clone()),
            })
            .await
        {
            Ok(r) => {
                let r = r.into_inner();
                Ok(Card {
                    token: r.card_token,
                    last4: r.card_last4,
                })
            }
            Err(s) if s.code() == Code::InvalidArgument => Err(OrderError::invalid(
                "payment_method.card",
                s.message().to_string(),
            )),
            Err(s) => Err(unavailable(
                "payment_method",
                "payment",
                "tokenize the card",
                &s,
            )),
        }
    }
}

fn unavailable(field: &str, peer: &str, what: &str, s: &tonic::Status) -> OrderError {
    OrderError::unavailable(format!(
        "{field}: the {peer} service could not {what} ({:?}: {}); retry with the same idempotency_key",
        s.code(),
        s.message()
    ))
}
