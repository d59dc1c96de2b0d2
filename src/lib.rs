//! The mesh's protobuf contracts: tonic servers and clients for every service, the event
//! envelope and payloads, and the encoded descriptor set they were generated from.
//!
//! Packages follow `proto/`: `product.v1` is [`product::v1`], `events.v1` is [`events::v1`], and
//! so on. Every service depends on this crate (and the runtime), never on another service's crate.

include!(concat!(env!("OUT_DIR"), "/packages.rs"));

/// The encoded `google.protobuf.FileDescriptorSet` of every file under `proto/` (imports
/// included), with extension options such as `google.api.http` kept. Server reflection, the REST
/// edge and OpenAPI generation read this one source of truth.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/descriptor_set.bin"));

#[cfg(test)]
mod tests {
    use prost_reflect::{DescriptorPool, Value};

    /// Every service of the design, by its fully qualified name.
    const SERVICES: &[&str] = &[
        "auth.v1.AuthService",
        "user.v1.UserService",
        "product.v1.ProductService",
        "inventory.v1.InventoryService",
        "order.v1.OrderService",
        "payment.v1.PaymentService",
        "shop.v1.ShopService",
        "notification.v1.NotificationService",
        "campaign.v1.CampaignService",
        "report.v1.ReportService",
        "iot.v1.GatewayService",
        "vm.v1.VendingMachineService",
        "audit.v1.AuditService",
    ];

    fn pool() -> DescriptorPool {
        DescriptorPool::decode(super::FILE_DESCRIPTOR_SET).expect("descriptor set decodes")
    }

    #[test]
    fn descriptor_set_holds_every_service() {
        let pool = pool();
        for name in SERVICES {
            let service = pool
                .get_service_by_name(name)
                .unwrap_or_else(|| panic!("{name} missing from the descriptor set"));
            assert!(service.methods().len() > 0, "{name} has no methods");
        }
        assert!(pool.get_message_by_name("events.v1.Envelope").is_some());
    }

    #[test]
    fn http_rules_survive_in_the_encoded_set() {
        // protox's prost-types view drops extension options; the embedded set must keep them.
        let pool = pool();
        let http = pool
            .get_extension_by_name("google.api.http")
            .expect("google.api.http extension is defined");
        assert_eq!(http.number(), 72295728);
        let method = pool
            .get_service_by_name("product.v1.ProductService")
            .and_then(|s| s.methods().find(|m| m.name() == "GetProduct"))
            .expect("GetProduct exists");
        let options = method.options();
        let rule = options.get_extension(&http);
        let Value::Message(rule) = rule.as_ref() else {
            panic!("google.api.http is not a message: {rule:?}");
        };
        let get = rule.get_field_by_name("get").expect("HttpRule has `get`");
        assert_eq!(get.as_str(), Some("/v1/products/{id}"));
    }

    #[test]
    fn every_public_service_has_http_rules() {
        let pool = pool();
        let http = pool.get_extension_by_name("google.api.http").unwrap();
        for name in SERVICES {
            let service = pool.get_service_by_name(name).unwrap();
            let routed = service
                .methods()
                .filter(|m| m.options().has_extension(&http))
                .count();
            if *name != "audit.v1.AuditService" {
                assert!(routed > 0, "{name} exposes no REST route");
            }
        }
    }

    #[test]
    fn generated_servers_and_clients_exist() {
        use crate::product::v1::product_service_client::ProductServiceClient;
        use crate::product::v1::product_service_server::ProductServiceServer;
        use tonic::server::NamedService;
        assert_eq!(
            <ProductServiceServer<()> as NamedService>::NAME,
            "product.v1.ProductService"
        );
        let _ = std::any::type_name::<ProductServiceClient<tonic::transport::Channel>>();
    }
}
