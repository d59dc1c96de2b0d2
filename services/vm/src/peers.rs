//! The vm's clients of its peers, each authenticating with the vm's service token.

use mesh_contracts::inventory::v1::inventory_service_client::InventoryServiceClient;
use mesh_contracts::iot::v1::gateway_service_client::GatewayServiceClient;
use mesh_contracts::payment::v1::payment_service_client::PaymentServiceClient;
use mesh_contracts::shop::v1::shop_service_client::ShopServiceClient;
use mesh_runtime::ServiceContext;
use mesh_runtime::auth::{ServiceTokenChannel, ServiceTokens};
use mesh_runtime::client::MeshChannel;

/// A channel that adds the vm's service token to calls sent without a token.
pub type Channel = ServiceTokenChannel<MeshChannel>;

/// Clients of inventory, payment, the gateway and shop.
#[derive(Debug, Clone)]
pub struct Peers {
    /// Reservations and restocks.
    pub inventory: InventoryServiceClient<Channel>,
    /// Charges and refunds.
    pub payment: PaymentServiceClient<Channel>,
    /// Dispense commands and device sessions.
    pub gateway: GatewayServiceClient<Channel>,
    /// The machine registry.
    pub shop: ShopServiceClient<Channel>,
}

impl Peers {
    /// Clients from `ctx`; with `secret` `None` the service secret comes from the environment.
    pub fn new(
        ctx: &ServiceContext,
        secret: Option<&str>,
    ) -> Result<Self, mesh_runtime::BuildError> {
        let tokens = match secret {
            Some(s) => Some(ServiceTokens::new(ctx.channel("auth")?, ctx.name(), s)),
            None => ServiceTokens::from_context(ctx)?,
        };
        let channel = |peer: &str| -> Result<Channel, mesh_runtime::BuildError> {
            Ok(ServiceTokenChannel::new(ctx.channel(peer)?, tokens.clone()))
        };
        Ok(Self {
            inventory: InventoryServiceClient::new(channel("inventory")?),
            payment: PaymentServiceClient::new(channel("payment")?),
            gateway: GatewayServiceClient::new(channel("iot-gateway")?),
            shop: ShopServiceClient::new(channel("shop")?),
        })
    }
}
