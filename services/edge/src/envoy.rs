//! The Envoy alternative (`mesh envoy-config`): an Envoy bootstrap that does what the edge does
//! for REST, with Envoy's `grpc_json_transcoder` reading the same descriptor set, for teams that
//! standardise on Envoy.
//!
//! One listener; the transcoder turns REST calls into gRPC by the `google.api.http` rules; routes
//! then match the gRPC path (`/<package>.<Service>/`) and send each service's calls to its own
//! cluster; one cluster per service module, HTTP/2, resolved by DNS (`STRICT_DNS`, so every pod of
//! a headless Service is balanced), health-checked with `grpc.health.v1`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use base64::Engine as _;
use prost_reflect::DescriptorPool;
use serde_json::{Value, json};

/// Where one module is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// The module name, used as the cluster name (e.g. `product`).
    pub module: String,
    /// Its DNS name or IP (e.g. `product.mesh.svc.cluster.local`).
    pub host: String,
    /// Its gRPC port.
    pub port: u16,
}

/// Settings of the generated bootstrap.
#[derive(Debug, Clone)]
pub struct EnvoyOptions {
    /// Port of the public listener.
    pub listen_port: u16,
    /// Port of Envoy's own admin interface (on 127.0.0.1).
    pub admin_port: u16,
    /// Where the descriptor set is: `None` embeds it (`proto_descriptor_bin`), `Some(path)`
    /// refers to a file the caller writes there (`proto_descriptor`).
    pub descriptor_path: Option<String>,
}

impl Default for EnvoyOptions {
    fn default() -> Self {
        Self {
            listen_port: 8080,
            admin_port: 9901,
            descriptor_path: None,
        }
    }
}

/// The Envoy bootstrap as YAML. `services` maps each fully qualified gRPC service with REST
/// rules to the module (cluster) that owns it; `descriptor_set` is the encoded descriptor set.
pub fn bootstrap_yaml(
    services: &BTreeMap<String, String>,
    clusters: &[Cluster],
    descriptor_set: &[u8],
    options: &EnvoyOptions,
) -> String {
    to_yaml(&bootstrap(services, clusters, descriptor_set, options))
}

/// Every service of `pool` that has at least one `google.api.http` rule.
pub fn transcoded_services(pool: &DescriptorPool) -> Vec<String> {
    let Some(http) = pool.get_extension_by_name("google.api.http") else {
        return Vec::new();
    };
    pool.services()
        .filter(|s| s.methods().any(|m| m.options().has_extension(&http)))
        .map(|s| s.full_name().to_string())
        .collect()
}

fn bootstrap(
    services: &BTreeMap<String, String>,
    clusters: &[Cluster],
    descriptor_set: &[u8],
    options: &EnvoyOptions,
) -> Value {
    let mut transcoder = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
        "services": services.keys().collect::<Vec<_>>(),
        "print_options": {
            "add_whitespace": false,
            "always_print_primitive_fields": true,
            "always_print_enums_as_ints": false,
            "preserve_proto_field_names": false,
        },
        "convert_grpc_status": true,
        "request_validation_options": {
            "reject_unknown_method": false,
            "reject_unknown_query_parameters": true,
        },
    });
    match &options.descriptor_path {
        Some(path) => transcoder["proto_descriptor"] = json!(path),
        None => {
            transcoder["proto_descriptor_bin"] =
                json!(base64::engine::general_purpose::STANDARD.encode(descriptor_set))
        }
    }
    let routes: Vec<Value> = services
        .iter()
        .map(|(service, module)| {
            json!({
                "match": {"prefix": format!("/{service}/")},
                "route": {"cluster": module, "timeout": "30s"},
            })
        })
        .collect();
    let clusters: Vec<Value> = clusters
        .iter()
        .map(|c| {
            json!({
                "name": c.module,
                "type": "STRICT_DNS",
                "dns_lookup_family": "V4_PREFERRED",
                "lb_policy": "ROUND_ROBIN",
                "connect_timeout": "2s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}},
                    },
                },
                "health_checks": [{
                    "timeout": "1s",
                    "interval": "5s",
                    "unhealthy_threshold": 2,
                    "healthy_threshold": 1,
                    "grpc_health_check": {},
                }],
                "load_assignment": {
                    "cluster_name": c.module,
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                        "socket_address": {"address": c.host, "port_value": c.port},
                    }}}]}],
                },
            })
        })
        .collect();
    json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": options.admin_port}}},
        "static_resources": {
            "listeners": [{
                "name": "mesh_edge",
                "address": {"socket_address": {"address": "0.0.0.0", "port_value": options.listen_port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "mesh_edge",
                        "codec_type": "AUTO",
                        "route_config": {
                            "name": "mesh",
                            "virtual_hosts": [{"name": "mesh", "domains": ["*"], "routes": routes}],
                        },
                        "http_filters": [
                            {
                                "name": "envoy.filters.http.grpc_json_transcoder",
                                "typed_config": transcoder,
                            },
                            {
                                "name": "envoy.filters.http.router",
                                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                            },
                        ],
                    },
                }]}],
            }],
            "clusters": clusters,
        },
    })
}

/// Renders a JSON value as block-style YAML. Strings are always double-quoted (JSON escapes
/// are valid YAML), so no value is misread as a number, boolean or null; `null` fields are
/// omitted.
fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    emit(value, 0, &mut out);
    out
}

fn emit(value: &Value, indent: usize, out: &mut String) {
    let pad = "  ".repeat(indent);
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter().filter(|(_, v)| !v.is_null()) {
                let key = yaml_key(key);
                match v {
                    Value::Object(m) if !m.is_empty() => {
                        let _ = writeln!(out, "{pad}{key}:");
                        emit(v, indent + 1, out);
                    }
                    Value::Array(a) if !a.is_empty() => {
                        let _ = writeln!(out, "{pad}{key}:");
                        emit(v, indent + 1, out);
                    }
                    _ => {
                        let _ = writeln!(out, "{pad}{key}: {}", scalar(v));
                    }
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                match item {
                    Value::Object(m) if !m.is_empty() => {
                        let mut nested = String::new();
                        emit(item, indent + 1, &mut nested);
                        // The first line of the mapping goes after the dash.
                        let body = nested.trim_start();
                        let _ = write!(out, "{pad}- {body}");
                    }
                    Value::Array(a) if !a.is_empty() => {
                        let _ = writeln!(out, "{pad}-");
                        emit(item, indent + 1, out);
                    }
                    _ => {
                        let _ = writeln!(out, "{pad}- {}", scalar(item));
                    }
                }
            }
        }
        other => {
            let _ = writeln!(out, "{pad}{}", scalar(other));
        }
    }
}

/// A mapping key: bare when it is a plain identifier, double-quoted otherwise (e.g. `@type`).
fn yaml_key(key: &str) -> String {
    let plain = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if plain {
        key.to_string()
    } else {
        Value::String(key.to_string()).to_string()
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::Object(m) if m.is_empty() => "{}".into(),
        Value::Array(a) if a.is_empty() => "[]".into(),
        // serde_json's string form is a valid YAML double-quoted scalar.
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> (Value, BTreeMap<String, String>) {
        let pool = DescriptorPool::decode(mesh_contracts::FILE_DESCRIPTOR_SET).unwrap();
        let services: BTreeMap<String, String> = transcoded_services(&pool)
            .into_iter()
            .map(|s| {
                let module = s.split('.').next().unwrap().to_string();
                (s, module)
            })
            .collect();
        let clusters: Vec<Cluster> = services
            .values()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|m| Cluster {
                module: m.clone(),
                host: format!("{m}.mesh.svc.cluster.local"),
                port: 50051,
            })
            .collect();
        let yaml = bootstrap_yaml(
            &services,
            &clusters,
            mesh_contracts::FILE_DESCRIPTOR_SET,
            &EnvoyOptions::default(),
        );
        let parsed: Value = serde_norway::from_str(&yaml).expect("the output is valid YAML");
        (parsed, services)
    }

    #[test]
    fn yaml_round_trips_to_the_same_document() {
        let pool = DescriptorPool::decode(mesh_contracts::FILE_DESCRIPTOR_SET).unwrap();
        let services: BTreeMap<String, String> = [(
            "product.v1.ProductService".to_string(),
            "product".to_string(),
        )]
        .into();
        let clusters = [Cluster {
            module: "product".into(),
            host: "product.mesh.svc.cluster.local".into(),
            port: 50053,
        }];
        let options = EnvoyOptions {
            descriptor_path: Some("/etc/envoy/mesh.pb".into()),
            ..EnvoyOptions::default()
        };
        let value = bootstrap(&services, &clusters, &[], &options);
        let parsed: Value = serde_norway::from_str(&to_yaml(&value)).unwrap();
        assert_eq!(parsed, strip_nulls(value));
        assert!(!transcoded_services(&pool).is_empty());
    }

    fn strip_nulls(v: Value) -> Value {
        match v {
            Value::Object(m) => Value::Object(
                m.into_iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k, strip_nulls(v)))
                    .collect(),
            ),
            Value::Array(a) => Value::Array(a.into_iter().map(strip_nulls).collect()),
            other => other,
        }
    }

    #[test]
    fn one_cluster_and_route_per_service_and_the_transcoder_knows_them_all() {
        let (config, services) = config();
        let resources = &config["static_resources"];
        let clusters: Vec<&str> = resources["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        for module in services.values() {
            assert!(clusters.contains(&module.as_str()), "cluster {module}");
        }
        let hcm = &resources["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
        let routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
            .as_array()
            .unwrap();
        assert_eq!(routes.len(), services.len());
        for (service, module) in &services {
            assert!(
                routes
                    .iter()
                    .any(|r| r["match"]["prefix"] == format!("/{service}/")
                        && r["route"]["cluster"] == module.as_str()),
                "route for {service}"
            );
        }
        let filters = hcm["http_filters"].as_array().unwrap();
        assert_eq!(
            filters[0]["name"],
            "envoy.filters.http.grpc_json_transcoder"
        );
        assert_eq!(filters.last().unwrap()["name"], "envoy.filters.http.router");
        let listed: Vec<&str> = filters[0]["typed_config"]["services"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        assert_eq!(listed.len(), services.len());
        let embedded = filters[0]["typed_config"]["proto_descriptor_bin"]
            .as_str()
            .unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(embedded)
            .unwrap();
        assert_eq!(
            decoded,
            mesh_contracts::FILE_DESCRIPTOR_SET,
            "the same descriptor set"
        );
        assert!(services.contains_key("product.v1.ProductService"));
        assert!(
            !services.contains_key("audit.v1.AuditService"),
            "audit has no REST rules"
        );
    }
}
