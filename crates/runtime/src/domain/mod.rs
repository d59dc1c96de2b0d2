//! The domain kit: the rules every service's RPCs share, written once (see
//! `/ARCHITECTURE.md`, "How to write a service"):
//!
//! - [`error`]: [`ServiceError`], the common failures (bad field, unknown id, state, duplicate,
//!   peer or database down) and their gRPC statuses; a service's error enum wraps it;
//! - [`page_token`]: the keyset page token of every list RPC (opaque, versioned, tamper-evident,
//!   bound to its query) and page sizes; [`page_token_key`]: its key (`MESH_PAGE_TOKEN_KEY`),
//!   checked with the configuration and installed once per process;
//! - [`time`]: the timestamp unit (microseconds since the epoch, `i64`) and its protobuf
//!   conversions;
//! - [`ids`]: UUIDs, id formats and free text;
//! - [`money`]: ISO 4217 currencies and amounts in minor units.

pub mod error;
pub mod ids;
pub mod money;
pub mod page_token;
pub mod page_token_key;
pub mod time;

pub use error::{CommonErrors, ServiceError};

#[cfg(test)]
mod tests {
    /// The row mapping every service uses: `#[derive(sqlx::FromRow)]` through the `Any`
    /// driver, with the kit's column types (`i64` microseconds and minor units, `String` ids,
    /// nullable columns as `Option`).
    #[derive(Debug, PartialEq, sqlx::FromRow)]
    struct Row {
        id: String,
        amount_minor: i64,
        created_us: i64,
        note: Option<String>,
    }

    #[tokio::test]
    async fn rows_map_by_the_derive_through_the_any_driver() {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect("sqlite::memory:").await.unwrap();
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT 'a' AS id, 250 AS amount_minor, 1767225600123456 AS created_us, NULL AS note \
             UNION ALL SELECT 'b', 0, -1, 'x'",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        assert_eq!(
            rows,
            [
                Row {
                    id: "a".into(),
                    amount_minor: 250,
                    created_us: 1_767_225_600_123_456,
                    note: None
                },
                Row {
                    id: "b".into(),
                    amount_minor: 0,
                    created_us: -1,
                    note: Some("x".into())
                },
            ]
        );
    }
}
