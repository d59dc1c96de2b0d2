//! The shared test harness of the mesh, used by every service's tests and by the binary's
//! end-to-end tests (never by production code):
//!
//! - [`backends`]: a database per test (SQLite always; Postgres and Redis from
//!   `MESH_TEST_DATABASE_URL` / `MESH_TEST_REDIS_URL`). A test that needs one that is not set
//!   skips with a loud `SKIPPED:` line, or FAILS when `MESH_TEST_REQUIRE_BACKENDS=1` (CI);
//! - [`context`]: the default configuration, a migrated database, a service context, a bus;
//! - [`serve`]: a service on `127.0.0.1:0` with its outbox relayed, and channels to it;
//! - [`auth`]: a running auth service with a bootstrap admin, and tokens;
//! - [`double`]: [`test_double!`], a generated server's trait for a test double that serves
//!   only the RPCs its test calls;
//! - [`poll`]: [`eventually`] and [`until_value`], which replace sleeps;
//! - [`paging`]: [`every_page`], a paged listing read to its end, its pages checked full;
//! - [`events`]: publishing an event envelope as its producer's relay would, and waiting until
//!   it is handled; [`outbox`]: what a service emitted;
//! - [`process`]: the real `mesh` binary as a child process, and plain HTTP to its admin port;
//! - [`redis_server`]: a redis-server of a test's own, to kill and restart;
//! - [`walkthrough`]: the README walkthrough's product, stock, address, card and order.

pub mod auth;
pub mod backends;
pub mod context;
pub mod double;
pub mod events;
pub mod outbox;
pub mod paging;
pub mod poll;
pub mod process;
pub mod redis_server;
pub mod serve;
pub mod walkthrough;

pub use auth::{ADMIN_EMAIL, PASSWORD, TestAuth, bearer, login, service_client, sign_up};
pub use backends::{
    backends_for, databases, postgres, postgres_url, redis, require_backends, sqlite, unique,
};
pub use context::{bus, config, context, context_with, database, database_before, memory_bus};
pub use events::{deliver, delivery, envelope, publish, publish_with_id};
pub use paging::every_page;
pub use poll::{eventually, eventually_within, until_value};
pub use redis_server::OwnRedis;
pub use serve::{Served, channel, serve, start, start_until};
