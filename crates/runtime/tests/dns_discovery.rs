//! Discovery through DNS, as in Kubernetes with a headless Service: a DNS server in the test
//! answers for `product.mesh.svc.cluster.local` with several loopback addresses where real service
//! instances listen. Calls spread across them; stopping one (and dropping it from DNS, as
//! Kubernetes does for a terminating pod) moves traffic to the others with no call failing beyond
//! its first retry; a new address joins after re-resolution.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::instances::{call, start_instance};
use mesh_runtime::balance::BalanceOptions;
use mesh_runtime::client::{ClientOptions, connect};
use mesh_runtime::dns::DnsResolver;
use tokio::net::{TcpListener, UdpSocket};

const NAME: &str = "product.mesh.svc.cluster.local";

/// A minimal authoritative DNS server: A records from a shared table, TTL 0, NXDOMAIN otherwise.
#[derive(Clone, Default)]
struct TestDns {
    records: Arc<Mutex<HashMap<String, Vec<Ipv4Addr>>>>,
}

impl TestDns {
    fn set(&self, name: &str, ips: &[Ipv4Addr]) {
        self.records
            .lock()
            .unwrap()
            .insert(name.to_string(), ips.to_vec());
    }

    async fn serve(self) -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                if let Some(reply) = self.answer(&buf[..n]) {
                    let _ = socket.send_to(&reply, from).await;
                }
            }
        });
        addr
    }

    fn answer(&self, query: &[u8]) -> Option<Vec<u8>> {
        if query.len() < 12 {
            return None;
        }
        // Question: labels up to the zero byte, then type and class.
        let mut i = 12;
        let mut labels = Vec::new();
        while *query.get(i)? != 0 {
            let len = query[i] as usize;
            labels.push(String::from_utf8_lossy(query.get(i + 1..i + 1 + len)?).to_lowercase());
            i += 1 + len;
        }
        let question_end = i + 5;
        let qtype = u16::from_be_bytes([*query.get(i + 1)?, *query.get(i + 2)?]);
        let name = labels.join(".");
        let records = self.records.lock().unwrap().get(&name).cloned();
        let answers: Vec<Ipv4Addr> = match (&records, qtype) {
            (Some(ips), 1) => ips.clone(),
            _ => Vec::new(),
        };
        let mut reply = Vec::with_capacity(512);
        reply.extend_from_slice(&query[..2]); // id
        let rcode = if records.is_none() { 3 } else { 0 };
        reply.extend_from_slice(&[0x85, 0x80 | rcode]); // QR AA RD RA
        reply.extend_from_slice(&1u16.to_be_bytes()); // one question
        reply.extend_from_slice(&(answers.len() as u16).to_be_bytes());
        reply.extend_from_slice(&[0, 0, 0, 0]); // no authority, no additional
        reply.extend_from_slice(query.get(12..question_end)?);
        for ip in answers {
            reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4]);
            reply.extend_from_slice(&ip.octets());
        }
        Some(reply)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_spread_fail_over_and_follow_dns_changes() {
    // Three instances on one port at three loopback addresses.
    let first = TcpListener::bind("127.0.0.2:0")
        .await
        .expect("127.0.0.2 is loopback on Linux");
    let port = first.local_addr().unwrap().port();
    let second = TcpListener::bind(("127.0.0.3", port)).await.unwrap();
    let third = TcpListener::bind(("127.0.0.4", port)).await.unwrap();
    let a = start_instance(first).await;
    let b = start_instance(second).await;
    let _c = start_instance(third).await;

    let dns = TestDns::default();
    let (ip2, ip3, ip4) = (
        Ipv4Addr::new(127, 0, 0, 2),
        Ipv4Addr::new(127, 0, 0, 3),
        Ipv4Addr::new(127, 0, 0, 4),
    );
    dns.set(NAME, &[ip2, ip3]);
    let dns_addr = dns.clone().serve().await;

    let refresh = Duration::from_millis(50);
    let channel = connect(
        format!("http://{NAME}:{port}").parse().unwrap(),
        ClientOptions {
            resolver: Some(DnsResolver::with_server(dns_addr, refresh).unwrap()),
            balance: BalanceOptions {
                refresh,
                ..BalanceOptions::default()
            },
            ..ClientOptions::default()
        },
    );

    // Spread across both addresses DNS gives.
    let mut served: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..40 {
        let (who, tries) = call(&channel).await;
        assert_eq!(tries, 1, "no failures while every instance is up");
        *served.entry(who).or_default() += 1;
    }
    assert_eq!(
        served.keys().collect::<Vec<_>>(),
        ["127.0.0.2", "127.0.0.3"],
        "{served:?}"
    );
    assert!(served.values().all(|n| *n >= 10), "balanced: {served:?}");

    // Stop one instance and drop it from DNS, as Kubernetes does for a terminating pod.
    dns.set(NAME, &[ip3]);
    a.stop.send(()).unwrap();
    a.task.await.unwrap().unwrap();
    let mut retried = 0;
    for _ in 0..40 {
        let (who, tries) = call(&channel).await;
        assert_eq!(who, "127.0.0.3", "only the live instance answers");
        retried += (tries - 1) as usize;
    }
    assert!(
        retried <= 2,
        "at most the calls already headed to the stopped instance retry: {retried}"
    );

    // A new address joins after re-resolution.
    dns.set(NAME, &[ip3, ip4]);
    let joined = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if call(&channel).await.0 == "127.0.0.4" {
                return;
            }
        }
    })
    .await;
    assert!(
        joined.is_ok(),
        "127.0.0.4 never received a call after joining DNS"
    );
    drop(b);
}
