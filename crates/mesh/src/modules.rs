//! The module table: every target the binary can serve, with its default gRPC port, the services
//! it calls, its constructor, its migrations and its own settings. `mesh serve` and `mesh modules` read it; the Helm chart's
//! `services:` values mirror it (a test compares the two).

use mesh_runtime::{Migrations, Module, ModuleSettings};

/// Targets whose port is public (browsers, apps, the ingress): they serve plaintext even when
/// mTLS is on (`MESH_TLS_*`), public TLS being the ingress's job; their own calls to upstreams
/// still use mTLS (docs/security.md).
pub(crate) const PUBLIC: &[&str] = &["edge"];

/// Every service, in start order (dependencies first is not required: clients connect lazily).
pub(crate) const MODULES: &[Module] = &[
    Module {
        name: "auth",
        default_port: 50051,
        dependencies: &[],
        constructor: mesh_auth::build,
        migrations: mesh_auth::MIGRATIONS,
        settings: mesh_auth::settings::SETTINGS,
    },
    Module {
        name: "user",
        default_port: 50052,
        dependencies: &["auth"],
        constructor: mesh_user::build,
        migrations: mesh_user::MIGRATIONS,
        settings: ModuleSettings::NONE,
    },
    Module {
        name: "product",
        default_port: 50053,
        dependencies: &["auth"],
        constructor: mesh_product::build,
        migrations: mesh_product::MIGRATIONS,
        settings: mesh_product::SETTINGS,
    },
    Module {
        name: "inventory",
        default_port: 50054,
        dependencies: &["auth"],
        constructor: mesh_inventory::build,
        migrations: mesh_inventory::MIGRATIONS,
        settings: mesh_inventory::SETTINGS,
    },
    Module {
        name: "order",
        default_port: 50055,
        dependencies: &["auth", "product", "inventory", "campaign", "payment"],
        constructor: mesh_order::build,
        migrations: mesh_order::MIGRATIONS,
        settings: mesh_order::SETTINGS,
    },
    Module {
        name: "payment",
        default_port: 50056,
        dependencies: &["auth"],
        constructor: mesh_payment::build,
        migrations: mesh_payment::MIGRATIONS,
        settings: mesh_payment::settings::SETTINGS,
    },
    Module {
        name: "shop",
        default_port: 50057,
        dependencies: &["auth"],
        constructor: mesh_shop::build,
        migrations: mesh_shop::MIGRATIONS,
        settings: ModuleSettings::NONE,
    },
    Module {
        name: "notification",
        default_port: 50058,
        dependencies: &["auth", "user"],
        constructor: mesh_notification::build,
        migrations: mesh_notification::MIGRATIONS,
        settings: mesh_notification::settings::SETTINGS,
    },
    Module {
        name: "campaign",
        default_port: 50059,
        dependencies: &["auth", "product"],
        constructor: mesh_campaign::build,
        migrations: mesh_campaign::MIGRATIONS,
        settings: mesh_campaign::settings::SETTINGS,
    },
    Module {
        name: "report",
        default_port: 50060,
        dependencies: &["auth"],
        constructor: mesh_report::build,
        migrations: mesh_report::MIGRATIONS,
        settings: ModuleSettings::NONE,
    },
    Module {
        name: "iot-gateway",
        default_port: 50061,
        dependencies: &["auth", "shop"],
        constructor: mesh_iot_gateway::build,
        migrations: Migrations::NONE,
        settings: ModuleSettings::NONE,
    },
    Module {
        name: "vm",
        default_port: 50062,
        dependencies: &["auth", "shop", "iot-gateway", "inventory", "payment"],
        constructor: mesh_vm::build,
        migrations: mesh_vm::MIGRATIONS,
        settings: mesh_vm::SETTINGS,
    },
    Module {
        name: "edge",
        default_port: 8080,
        // The public entry point: REST and gRPC for every service.
        dependencies: &[
            "auth",
            "user",
            "product",
            "inventory",
            "order",
            "payment",
            "shop",
            "notification",
            "campaign",
            "report",
            "iot-gateway",
            "vm",
        ],
        constructor: mesh_edge::build,
        migrations: Migrations::NONE,
        settings: mesh_edge::config::SETTINGS,
    },
];

/// The module named `name`.
pub(crate) fn find(name: &str) -> Option<&'static Module> {
    MODULES.iter().find(|m| m.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_and_ports_are_unique_and_dependencies_exist() {
        let names: HashSet<_> = MODULES.iter().map(|m| m.name).collect();
        let ports: HashSet<_> = MODULES.iter().map(|m| m.default_port).collect();
        assert_eq!(names.len(), MODULES.len());
        assert_eq!(ports.len(), MODULES.len());
        for m in MODULES {
            for dep in m.dependencies {
                assert!(names.contains(dep), "{} depends on unknown {dep}", m.name);
                assert_ne!(*dep, m.name, "{} depends on itself", m.name);
            }
        }
    }
}
