//! The contracts' descriptor pool and the route table over every service of it, built once per
//! test binary (the property tests of the transcoding paths use both).

#![allow(dead_code, unreachable_pub)]

use std::sync::OnceLock;

use mesh_edge::routes::RouteTable;
use prost_reflect::DescriptorPool;

/// The contracts' descriptor pool (options intact, so `google.api.http` rules are there).
pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(mesh_contracts::FILE_DESCRIPTOR_SET).unwrap())
}

/// Every REST route of the contracts.
pub fn table() -> &'static RouteTable {
    static TABLE: OnceLock<RouteTable> = OnceLock::new();
    TABLE.get_or_init(|| RouteTable::build(pool(), |_| true).expect("our rules build"))
}
