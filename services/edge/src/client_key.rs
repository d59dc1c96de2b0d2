//! Who a request comes from, for rate limiting: the subject of its verified token, else its IP.
//!
//! The IP is the TCP peer's, unless the peer is a trusted proxy (`MESH_EDGE_TRUSTED_PROXIES`):
//! then `X-Forwarded-For` is read from the right (the entry the nearest proxy appended) and the
//! first address that is not itself a trusted proxy is the client. A client cannot spoof its
//! key by sending its own `X-Forwarded-For`: entries left of the first untrusted one are
//! ignored, and a direct client's header is not read at all.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;

/// The client IP of a request from `peer` with `headers`, trusting `proxies`.
pub fn client_ip(
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    proxies: &[IpNet],
) -> Option<IpAddr> {
    let peer = peer.map(|p| canonical(p.ip()));
    let trusted = |ip: IpAddr| proxies.iter().any(|net| net.contains(&ip));
    match peer {
        Some(ip) if trusted(ip) => {}
        other => return other,
    }
    let mut last = peer;
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    for entry in entries.iter().rev() {
        let Some(ip) = parse_entry(entry) else {
            // Garbage from an untrusted hop: stop at the last address known good.
            return last;
        };
        if !trusted(ip) {
            return Some(ip);
        }
        last = Some(ip);
    }
    last
}

/// The rate-limit key: `sub:<subject>` for a verified caller, else `ip:<address>`.
pub fn key(subject: Option<&str>, ip: Option<IpAddr>) -> String {
    match (subject, ip) {
        (Some(sub), _) => format!("sub:{sub}"),
        (None, Some(ip)) => format!("ip:{ip}"),
        (None, None) => "ip:unknown".to_string(),
    }
}

/// An `X-Forwarded-For` entry: `1.2.3.4`, `1.2.3.4:567`, `2001:db8::1`, `[2001:db8::1]:567`.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    entry.parse::<SocketAddr>().ok().map(|s| canonical(s.ip()))
}

/// IPv4-mapped IPv6 addresses as IPv4, so `::ffff:10.0.0.1` matches `10.0.0.0/8`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_net;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let proxies = vec![
            parse_net("10.0.0.0/8").unwrap(),
            parse_net("192.168.1.1").unwrap(),
        ];
        let peer = |s: &str| Some(s.parse::<SocketAddr>().unwrap());
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        // A direct client: its header is ignored.
        assert_eq!(
            client_ip(peer("203.0.113.9:5000"), &headers(&["1.1.1.1"]), &proxies),
            ip("203.0.113.9")
        );
        // Through one trusted proxy.
        assert_eq!(
            client_ip(peer("10.1.2.3:5000"), &headers(&["198.51.100.7"]), &proxies),
            ip("198.51.100.7")
        );
        // A spoofed left part is ignored: the rightmost untrusted entry wins.
        assert_eq!(
            client_ip(
                peer("10.1.2.3:5000"),
                &headers(&["6.6.6.6, 198.51.100.7", "192.168.1.1"]),
                &proxies
            ),
            ip("198.51.100.7")
        );
        // Ports and brackets.
        assert_eq!(
            client_ip(
                peer("10.1.2.3:5000"),
                &headers(&["[2001:db8::1]:443"]),
                &proxies
            ),
            ip("2001:db8::1")
        );
        // Garbage stops at the last good hop; no header means the proxy itself.
        assert_eq!(
            client_ip(peer("10.1.2.3:5000"), &headers(&["nonsense"]), &proxies),
            ip("10.1.2.3")
        );
        assert_eq!(
            client_ip(peer("10.1.2.3:5000"), &HeaderMap::new(), &proxies),
            ip("10.1.2.3")
        );
        assert_eq!(key(Some("u1"), ip("1.2.3.4")), "sub:u1");
        assert_eq!(key(None, ip("1.2.3.4")), "ip:1.2.3.4");
    }
}
