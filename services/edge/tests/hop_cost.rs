//! The cost of one REST call through the edge, for A/B comparisons of the edge's code under
//! `valgrind --tool=callgrind` (instruction counts do not move with the machine's load, wall
//! times do). Ignored by default; see `docs/BENCHMARKS.md`, "Edge speed (session 3)":
//!
//! ```sh
//! cargo test --release -p mesh-edge --test hop_cost --no-run   # prints the test binary
//! MESH_HOP_REQUESTS=1000 valgrind --tool=callgrind <binary> --ignored --test-threads 1
//! MESH_HOP_REQUESTS=3000 valgrind --tool=callgrind <binary> --ignored --test-threads 1
//! ```
//!
//! The difference of the two totals over 2,000 is the instructions per call (the test upstream,
//! the edge and this client, all in the process), start-up cancelled out.

mod common;

use std::time::Instant;

use common::*;
use mesh_edge::config::EdgeConfig;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// One keep-alive HTTP/1.1 GET; returns the status code.
async fn get(stream: &mut TcpStream, buf: &mut Vec<u8>, path: &str) -> u16 {
    let request = format!("GET {path} HTTP/1.1\r\nhost: edge\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    buf.clear();
    loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the edge closed the connection");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(buf);
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .expect("a content-length");
            if buf.len() >= end + 4 + length {
                return text[9..12].parse().unwrap();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand (see the module docs)"]
async fn rest_call_cost() {
    let requests: usize = std::env::var("MESH_HOP_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let upstream = start_upstream().await;
    let edge = start_edge(EdgeConfig::default(), upstream).await;
    let mut stream = TcpStream::connect(edge.addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let mut buf = Vec::with_capacity(4096);
    let start = Instant::now();
    for i in 0..requests {
        assert_eq!(
            get(&mut stream, &mut buf, &format!("/v1/products/p{i}")).await,
            200
        );
    }
    let elapsed = start.elapsed();
    println!(
        "{requests} REST calls through the edge, one at a time: {:.1} us each",
        elapsed.as_secs_f64() * 1e6 / requests as f64
    );
}
