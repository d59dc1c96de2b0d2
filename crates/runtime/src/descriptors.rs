//! Lookups in the embedded descriptor set (`mesh_contracts::FILE_DESCRIPTOR_SET`).

use std::sync::OnceLock;

use prost::Message;
use prost_types::FileDescriptorSet;

/// The contracts as a reflection pool (options intact), decoded once per process: for decoding
/// payloads by type name.
pub fn pool() -> &'static prost_reflect::DescriptorPool {
    static POOL: OnceLock<prost_reflect::DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        prost_reflect::DescriptorPool::decode(mesh_contracts::FILE_DESCRIPTOR_SET)
            .expect("the descriptor set embedded by build.rs decodes")
    })
}

fn descriptor_set() -> &'static FileDescriptorSet {
    static SET: OnceLock<FileDescriptorSet> = OnceLock::new();
    SET.get_or_init(|| {
        FileDescriptorSet::decode(mesh_contracts::FILE_DESCRIPTOR_SET)
            .expect("the descriptor set embedded by build.rs decodes")
    })
}

/// The request paths (`/product.v1.ProductService/GetProduct`) of every method of the fully
/// qualified `service`; empty when the contracts have no such service.
pub fn method_paths(service: &str) -> Vec<String> {
    let mut paths = Vec::new();
    for file in &descriptor_set().file {
        let package = file.package();
        for svc in &file.service {
            let full = if package.is_empty() {
                svc.name().to_string()
            } else {
                format!("{package}.{}", svc.name())
            };
            if full == service {
                paths.extend(svc.method.iter().map(|m| format!("/{full}/{}", m.name())));
            }
        }
    }
    paths
}

/// Every fully qualified service name in the contracts.
pub fn service_names() -> Vec<String> {
    descriptor_set()
        .file
        .iter()
        .flat_map(|f| {
            f.service
                .iter()
                .map(move |s| format!("{}.{}", f.package(), s.name()))
        })
        .collect()
}

/// Whether the contracts define the fully qualified message `name`, e.g. `events.v1.OrderCreated`.
pub fn message_exists(name: &str) -> bool {
    let Some((package, message)) = name.rsplit_once('.') else {
        return false;
    };
    descriptor_set()
        .file
        .iter()
        .filter(|f| f.package() == package)
        .any(|f| f.message_type.iter().any(|m| m.name() == message))
}

/// The request paths of every unary method whose proto sets `idempotency_level` to
/// `IDEMPOTENT` or `NO_SIDE_EFFECTS`.
pub fn idempotent_method_paths() -> std::collections::HashSet<String> {
    use prost_types::method_options::IdempotencyLevel;
    let mut paths = std::collections::HashSet::new();
    for file in &descriptor_set().file {
        for svc in &file.service {
            for m in &svc.method {
                let level = m
                    .options
                    .as_ref()
                    .map_or(IdempotencyLevel::IdempotencyUnknown, |o| {
                        o.idempotency_level()
                    });
                if !m.client_streaming()
                    && !m.server_streaming()
                    && level != IdempotencyLevel::IdempotencyUnknown
                {
                    paths.insert(format!("/{}.{}/{}", file.package(), svc.name(), m.name()));
                }
            }
        }
    }
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_declared_without_side_effects_are_the_retried_methods() {
        let paths = idempotent_method_paths();
        for read in [
            "/product.v1.ProductService/GetProduct",
            "/inventory.v1.InventoryService/CheckStock",
            "/order.v1.OrderService/ListOrders",
            "/audit.v1.AuditService/ListEvents",
        ] {
            assert!(paths.contains(read), "{read} is retried");
        }
        for write in [
            "/product.v1.ProductService/CreateProduct",
            "/payment.v1.PaymentService/Charge",
            "/inventory.v1.InventoryService/Reserve",
        ] {
            assert!(!paths.contains(write), "{write} is never retried");
        }
        assert!(
            !paths.iter().any(|p| p.ends_with("/OpenChannel")),
            "streams are never retried"
        );
    }
}
