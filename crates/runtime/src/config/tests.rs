//! Tests of the process configuration: defaults, every bad setting named, per-service
//! variables, data and event settings, discovery.

use std::path::PathBuf;

use super::*;
use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: RuntimeArgs,
}

const SERVICES: &[ServiceSpec] = &[
    ServiceSpec {
        name: "product",
        default_port: 50053,
    },
    ServiceSpec {
        name: "iot-gateway",
        default_port: 50061,
    },
];

fn parse(argv: &[&str], env: &[(&str, &str)]) -> Result<MeshConfig, ConfigError> {
    let cli = Cli::try_parse_from(std::iter::once("mesh").chain(argv.iter().copied()))
        .expect("flags parse as text");
    let env: BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    MeshConfig::from_args(&cli.args, SERVICES, |k| env.get(k).cloned())
}

#[test]
fn defaults_are_valid() {
    let config = parse(&[], &[]).expect("defaults validate");
    assert_eq!(config.admin_port, 9090);
    assert_eq!(config.services["iot-gateway"].port, 50061);
    assert_eq!(config.shutdown_grace, Duration::from_secs(25));
    assert_eq!(config.database_pool_size, 10);
}

#[test]
fn the_pool_size_is_bounded_and_client_settings_join_the_one_error() {
    let config = parse(&["--database-pool-size", "4"], &[]).expect("valid");
    assert_eq!(config.database_pool_size, 4);
    let err = parse(
        &["--database-pool-size", "0"],
        &[("MESH_PRODUCT_CLIENT_BREAKER_K", "0")],
    )
    .expect_err("invalid");
    let text = err.to_string();
    assert!(text.contains("MESH_DATABASE_POOL_SIZE"), "{text}");
    assert!(text.contains("MESH_PRODUCT_CLIENT_BREAKER_K"), "{text}");
}

#[test]
fn per_service_variables_use_upper_snake_names() {
    let config = parse(
        &[],
        &[
            ("MESH_IOT_GATEWAY_PORT", "6001"),
            (
                "MESH_PRODUCT_ADDR",
                "http://product.mesh.svc.cluster.local:50053",
            ),
        ],
    )
    .expect("valid");
    assert_eq!(config.services["iot-gateway"].port, 6001);
    assert_eq!(
        config.services["product"].addr.as_ref().unwrap().host(),
        Some("product.mesh.svc.cluster.local")
    );
}

#[test]
fn a_peer_address_is_a_url_or_a_bare_host_and_port() {
    let config = parse(
        &[],
        &[
            ("MESH_PRODUCT_ADDR", "product.mesh:50053"),
            ("MESH_IOT_GATEWAY_ADDR", "https://gw.example.com"),
        ],
    )
    .expect("valid");
    assert_eq!(
        config.services["product"]
            .addr
            .as_ref()
            .unwrap()
            .to_string(),
        "http://product.mesh:50053/"
    );
    assert_eq!(
        config.services["iot-gateway"]
            .addr
            .as_ref()
            .unwrap()
            .scheme_str(),
        Some("https")
    );
    for bad in ["product", "product:http", ":50053", "ftp://x:1"] {
        let err = parse(&[], &[("MESH_PRODUCT_ADDR", bad)]).expect_err(bad);
        assert_eq!(err.problems[0].setting, "MESH_PRODUCT_ADDR", "{bad}");
    }
}

#[test]
fn the_admin_port_defaults_to_9090_and_a_served_service_moves_it() {
    assert_eq!(parse(&[], &[]).unwrap().admin_port, DEFAULT_ADMIN_PORT);
    assert_eq!(admin_port_following(50053), 51053);
    assert_eq!(admin_port_following(8080), 9080);
    assert_eq!(admin_port_following(0), 0);
    assert_eq!(admin_port_following(65000), 0);
}

#[test]
fn every_bad_setting_is_named_in_one_error() {
    let err = parse(
        &[
            "--admin-port",
            "http",
            "--log-format",
            "xml",
            "--shutdown-grace",
            "soon",
        ],
        &[
            ("MESH_PRODUCT_PORT", "70000"),
            ("MESH_IOT_GATEWAY_ADDR", "gateway"),
        ],
    )
    .expect_err("invalid");
    let text = err.to_string();
    for name in [
        "MESH_ADMIN_PORT",
        "MESH_LOG_FORMAT",
        "MESH_SHUTDOWN_GRACE",
        "MESH_PRODUCT_PORT",
        "MESH_IOT_GATEWAY_ADDR",
    ] {
        assert!(text.contains(name), "{name} missing from: {text}");
    }
    assert_eq!(err.problems.len(), 5, "{text}");
    assert!(text.starts_with("invalid configuration (5 problems)"));
}

#[test]
fn a_claim_time_too_close_to_the_saga_timeout_is_refused_naming_both() {
    // The defaults are consistent with the order saga's default timeout (30s).
    let config = parse(&[], &[("MESH_ORDER_SAGA_TIMEOUT", "30s")]).expect("valid");
    assert!(config.events.claim_idle * 2 <= Duration::from_secs(30));
    assert!(config.events.dead_after < config.events.claim_idle);
    let err = parse(
        &["--event-claim-idle", "30s"],
        &[("MESH_ORDER_SAGA_TIMEOUT", "30s")],
    )
    .expect_err("inconsistent");
    let text = err.to_string();
    assert!(
        text.contains("MESH_EVENT_CLAIM_IDLE") && text.contains("MESH_ORDER_SAGA_TIMEOUT"),
        "{text}"
    );
    let err = parse(&["--event-dead-after", "20s"], &[]).expect_err("inconsistent");
    let text = err.to_string();
    assert!(
        text.contains("MESH_EVENT_DEAD_AFTER") && text.contains("MESH_EVENT_CLAIM_IDLE"),
        "{text}"
    );
}

#[test]
fn data_defaults_to_sqlite_files_and_the_in_process_bus() {
    let config = parse(&["--data-dir", "/tmp/d"], &[]).expect("valid");
    assert_eq!(
        config.databases["iot-gateway"],
        DatabaseTarget::Sqlite {
            path: PathBuf::from("/tmp/d/iot-gateway.db")
        }
    );
    assert_eq!(config.events.redis_url, None);
    assert_eq!(config.events.max_deliveries, 5);
    assert_eq!(config.events.outbox_retention, None);
}

#[test]
fn shared_postgres_url_gives_a_schema_per_service_and_per_service_urls_override() {
    let config = parse(
        &[
            "--database-url",
            "postgres://mesh@db/mesh",
            "--redis-url",
            "redis://r:6379",
            "--event-max-deliveries",
            "3",
            "--outbox-retention",
            "90d",
        ],
        &[("MESH_PRODUCT_DATABASE_URL", "postgresql://p@other/catalog")],
    )
    .expect("valid");
    assert_eq!(
        config.databases["iot-gateway"],
        DatabaseTarget::Postgres {
            url: "postgres://mesh@db/mesh".into(),
            schema: "iot_gateway".into()
        }
    );
    assert_eq!(
        config.databases["product"],
        DatabaseTarget::Postgres {
            url: "postgresql://p@other/catalog".into(),
            schema: "product".into()
        }
    );
    assert_eq!(config.events.redis_url.as_deref(), Some("redis://r:6379"));
    assert_eq!(config.events.max_deliveries, 3);
    assert_eq!(
        config.events.outbox_retention,
        Some(Duration::from_secs(90 * 24 * 3600))
    );
}

#[test]
fn bad_data_and_event_settings_are_named() {
    let err = parse(
        &[
            "--database-url",
            "mysql://x",
            "--redis-url",
            "localhost:6379",
            "--event-max-deliveries",
            "0",
            "--event-claim-idle",
            "0s",
            "--outbox-retention",
            "never",
        ],
        &[("MESH_IOT_GATEWAY_DATABASE_URL", "sqlite://x.db")],
    )
    .expect_err("invalid");
    let settings: Vec<_> = err.problems.iter().map(|p| p.setting.as_str()).collect();
    assert_eq!(
        settings,
        [
            "--database-url / MESH_DATABASE_URL",
            "--redis-url / MESH_REDIS_URL",
            "--event-max-deliveries / MESH_EVENT_MAX_DELIVERIES",
            "--event-claim-idle / MESH_EVENT_CLAIM_IDLE",
            "--outbox-retention / MESH_OUTBOX_RETENTION",
            "MESH_IOT_GATEWAY_DATABASE_URL",
        ]
    );
}

#[test]
fn discovery_settings_are_validated() {
    let config = parse(&["--discovery", "endpoints", "--dns-refresh", "1s"], &[]).unwrap();
    assert_eq!(config.discovery.mode, DiscoveryMode::Endpoints);
    assert_eq!(config.discovery.dns_refresh, Duration::from_secs(1));
    let err = parse(&["--discovery", "consul", "--dns-refresh", "1ms"], &[]).unwrap_err();
    let settings: Vec<_> = err.problems.iter().map(|p| p.setting.as_str()).collect();
    assert_eq!(
        settings,
        [
            "--discovery / MESH_DISCOVERY",
            "--dns-refresh / MESH_DNS_REFRESH"
        ]
    );
}

#[test]
fn zero_deadline_and_bad_host_are_rejected() {
    let err =
        parse(&["--default-deadline", "0s", "--host", "localhost"], &[]).expect_err("invalid");
    let settings: Vec<_> = err.problems.iter().map(|p| p.setting.as_str()).collect();
    assert_eq!(
        settings,
        [
            "--host / MESH_HOST",
            "--default-deadline / MESH_DEFAULT_DEADLINE"
        ]
    );
}

#[test]
fn the_trace_sampler_is_read_and_a_bad_one_named_in_the_one_error() {
    assert_eq!(
        parse(&[], &[]).expect("valid").trace_sampler,
        crate::sampler::TraceSampler::default()
    );
    let config = parse(
        &[],
        &[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.1"),
        ],
    )
    .expect("valid");
    assert_eq!(
        config.trace_sampler.root,
        crate::sampler::RootSampling::Ratio(0.1)
    );
    assert!(!config.trace_sampler.parent_based);
    let err = parse(
        &["--database-pool-size", "0"],
        &[("OTEL_TRACES_SAMPLER", "parentbased_sometimes")],
    )
    .expect_err("invalid");
    let text = err.to_string();
    assert!(
        text.contains("OTEL_TRACES_SAMPLER = \"parentbased_sometimes\""),
        "{text}"
    );
    assert!(text.contains("MESH_DATABASE_POOL_SIZE"), "{text}");
}

#[test]
fn the_page_token_key_is_checked_with_the_rest_and_never_printed() {
    assert_eq!(parse(&[], &[]).expect("valid").page_token_key, None);
    let key = "a-random-page-token-key-of-40-characters";
    let config = parse(&[], &[("MESH_PAGE_TOKEN_KEY", key)]).expect("valid");
    assert_eq!(
        config.page_token_key,
        Some(crate::domain::page_token_key::PageTokenKey::from_text(key).unwrap())
    );
    let err = parse(
        &["--database-pool-size", "0"],
        &[("MESH_PAGE_TOKEN_KEY", "hunter2")],
    )
    .expect_err("invalid");
    let text = err.to_string();
    assert!(
        text.contains("MESH_PAGE_TOKEN_KEY = \"<redacted>\": too short"),
        "{text}"
    );
    assert!(text.contains("MESH_DATABASE_POOL_SIZE"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}
