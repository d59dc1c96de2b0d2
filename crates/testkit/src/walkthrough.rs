//! The README walkthrough's data, for the end-to-end tests that play it against a running mesh:
//! its product (`COLA-033`, 2.50 EUR), its first delivery of stock, its shipping address, and
//! the test cards every service's tests pay with.

use mesh_contracts::common::v1::{
    Money, PaymentCard, PaymentMethod, PostalAddress, payment_method,
};
use mesh_contracts::inventory::v1::inventory_service_client::InventoryServiceClient;
use mesh_contracts::inventory::v1::{AdjustStockRequest, AdjustmentReason};
use mesh_contracts::order::v1::{LineItem, PlaceOrderRequest};
use mesh_contracts::product::v1::product_service_client::ProductServiceClient;
use mesh_contracts::product::v1::{CreateProductRequest, Product};
use tonic::transport::Channel;

use crate::auth::bearer;

/// The test card that always pays.
pub const GOOD_CARD: &str = "4242424242424242";

/// The test card `number` (expiry 12/39, CVC 123) held by `holder`.
pub fn test_card(number: &str, holder: &str) -> PaymentCard {
    PaymentCard {
        number: number.into(),
        expiry: "12/39".into(),
        cvc: "123".into(),
        holder_name: holder.into(),
    }
}

/// Paying with the raw [`test_card`] `number` held by `holder`.
pub fn card(number: &str, holder: &str) -> Option<PaymentMethod> {
    Some(PaymentMethod {
        method: Some(payment_method::Method::Card(test_card(number, holder))),
    })
}

/// The README's shipping address: Ada, 1 Main St, Germany.
pub fn address() -> PostalAddress {
    PostalAddress {
        recipient_name: "Ada".into(),
        address_lines: vec!["1 Main St".into()],
        region_code: "DE".into(),
        ..Default::default()
    }
}

/// The README's order: `quantity` units of `product` under the idempotency key `key`, shipped
/// to [`address`] and paid with [`GOOD_CARD`].
pub fn order(key: &str, product: &str, quantity: i64) -> PlaceOrderRequest {
    PlaceOrderRequest {
        idempotency_key: key.into(),
        lines: vec![LineItem {
            product_id: product.into(),
            quantity,
        }],
        shipping_address: Some(address()),
        payment_method: card(GOOD_CARD, ""),
        ..Default::default()
    }
}

/// Creates the README's product (`COLA-033`, "Cola 0.33 l", 2.50 EUR, active) as `admin` at
/// the product service behind `channel`; its id.
pub async fn create_cola(channel: Channel, admin: &str) -> String {
    ProductServiceClient::new(channel)
        .create_product(bearer(
            admin,
            CreateProductRequest {
                product: Some(Product {
                    sku: "COLA-033".into(),
                    name: "Cola 0.33 l".into(),
                    price: Some(Money {
                        currency_code: "EUR".into(),
                        amount_minor: 250,
                    }),
                    active: true,
                    ..Default::default()
                }),
            },
        ))
        .await
        .expect("CreateProduct")
        .into_inner()
        .product
        .expect("product")
        .id
}

/// Adds `delta` units of `product` at the default location as `admin` at the inventory service
/// behind `channel` (a restock, noted "first delivery").
pub async fn restock(channel: Channel, admin: &str, product: &str, delta: i64) {
    InventoryServiceClient::new(channel)
        .adjust_stock(bearer(
            admin,
            AdjustStockRequest {
                location_id: "default".into(),
                product_id: product.into(),
                delta,
                reason: AdjustmentReason::Restock as i32,
                note: "first delivery".into(),
                ..Default::default()
            },
        ))
        .await
        .expect("AdjustStock");
}
