use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

fn net(s: &str) -> IpNet {
    s.parse().unwrap_or_else(|e| panic!("{e}"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

#[test]
fn ipnet_parse_display_and_errors() {
    assert_eq!(net("10.0.0.0/8").to_string(), "10.0.0.0/8");
    assert_eq!(net("fd52::1/64").to_string(), "fd52::1/64");
    assert_eq!(net("100.64.0.1/10").network().to_string(), "100.64.0.0/10");
    assert_eq!(net("fd52::1:2/112").network().to_string(), "fd52::1:0/112");
    assert_eq!(net("1.2.3.4/0").network().to_string(), "0.0.0.0/0");
    assert!(net("10.0.0.1/32").is_host());

    let err = |s: &str| s.parse::<IpNet>().map(|n| n.to_string()).unwrap_err().to_string();
    assert_eq!(err("10.0.0.0/33"), r#"invalid CIDR "10.0.0.0/33": prefix length 33 exceeds 32"#);
    assert_eq!(err("::/129"), r#"invalid CIDR "::/129": prefix length 129 exceeds 128"#);
    assert!(err("10.0.0.0").contains("missing /prefix length"));
    assert!(err("10.0.0/8").contains("not an IP address"));
    for bad in ["10.0.0.0/", "10.0.0.0/+8", "10.0.0.0/-1", "10.0.0.0/ 8", "1.2.3.4/99999"] {
        assert!(err(bad).starts_with("invalid CIDR"), "{bad}");
    }
    assert!(IpNet::new(ip("1.2.3.4"), 33).is_err());
    assert!(IpNet::new(ip("::1"), 128).is_ok());
}

#[test]
fn ipnet_contains() {
    let n = net("10.244.1.7/24");
    assert!(n.contains(&ip("10.244.1.0")));
    assert!(n.contains(&ip("10.244.1.255")));
    assert!(!n.contains(&ip("10.244.2.0")));
    assert!(!n.contains(&ip("::ffff:10.244.1.1")));
    assert!(net("0.0.0.0/0").contains(&ip("255.255.255.255")));
    assert!(!net("0.0.0.0/0").contains(&ip("::")));
    assert!(net("fd52::/16").contains(&ip("fd52:ffff::1")));
    assert!(!net("fd52::/16").contains(&ip("fd53::1")));
}

#[test]
fn table_basics() {
    let mut t = RouteTable::new();
    assert_eq!(t.insert(net("10.0.0.0/8"), 1), None);
    assert_eq!(t.insert(net("10.244.1.9/24"), 2), None); // host bits dropped
    assert_eq!(t.insert(net("10.244.1.5/32"), 3), None);
    assert_eq!(t.insert(net("fd52::/64"), 4), None);
    assert_eq!(t.insert(net("fd52::1/128"), 5), None);
    assert_eq!(t.insert(net("10.244.1.0/24"), 6), Some(2));
    assert_eq!(t.len(), 5);

    assert_eq!(t.lookup(ip("10.244.1.5")), Some(3));
    assert_eq!(t.lookup(ip("10.244.1.6")), Some(6));
    assert_eq!(t.lookup(ip("10.9.9.9")), Some(1));
    assert_eq!(t.lookup(ip("11.0.0.1")), None);
    assert_eq!(t.lookup(ip("fd52::1")), Some(5));
    assert_eq!(t.lookup(ip("fd52::2")), Some(4));
    assert_eq!(t.lookup(ip("fd53::1")), None);
    assert_eq!(t.lookup_v4(u32::from(Ipv4Addr::new(10, 244, 1, 5))), Some(3));
    assert_eq!(t.get(net("10.244.1.0/24")), Some(6));
    assert_eq!(t.get(net("10.244.0.0/16")), None);

    assert_eq!(t.remove(net("10.244.1.5/32")), Some(3));
    assert_eq!(t.remove(net("10.244.1.5/32")), None);
    assert_eq!(t.lookup(ip("10.244.1.5")), Some(6));

    t.insert(net("0.0.0.0/0"), 7);
    assert_eq!(t.lookup(ip("192.0.2.1")), Some(7));
    assert_eq!(t.remove_value(|v| v == 7 || v == 4), 2);
    assert_eq!(t.lookup(ip("192.0.2.1")), None);
    assert_eq!(t.lookup(ip("fd52::2")), None);

    t.retain(|n, _| n.is_ipv4());
    assert_eq!(t.lookup(ip("fd52::1")), None);
    let mut all: Vec<_> = t.iter().map(|(n, v)| (n.to_string(), v)).collect();
    all.sort();
    assert_eq!(all, [("10.0.0.0/8".into(), 1), ("10.244.1.0/24".into(), 6)]);
    t.clear();
    assert!(t.is_empty());
    assert_eq!(t.lookup(ip("10.0.0.1")), None);
}

/// Reference implementation: scan everything, keep the longest match.
fn naive(routes: &[(IpNet, u32)], dst: IpAddr) -> Option<u32> {
    routes.iter().filter(|(n, _)| n.contains(&dst)).max_by_key(|(n, _)| n.prefix_len()).map(|(_, v)| *v)
}

#[test]
fn lpm_matches_naive_scan() {
    let mut rng = StdRng::seed_from_u64(0x5eed_2026);
    for round in 0..20 {
        let mut table = RouteTable::new();
        let mut routes: Vec<(IpNet, u32)> = Vec::new();
        // Addresses are drawn from small ranges so prefixes nest and overlap a lot.
        for i in 0..300u32 {
            let (addr, len) = if rng.random_bool(0.5) {
                let a = 0x0a00_0000 | rng.random_range(0..0x1_0000u32);
                (IpAddr::V4(Ipv4Addr::from(a)), rng.random_range(0..=32u8))
            } else {
                let a = (0xfd52u128 << 112) | rng.random_range(0..0x1_0000u128);
                (IpAddr::V6(Ipv6Addr::from(a)), rng.random_range(96..=128u8))
            };
            let n = IpNet::new(addr, len).unwrap_or_else(|e| panic!("{e}"));
            table.insert(n, i);
            routes.retain(|(r, _)| r.network() != n.network());
            routes.push((n, i));
            if rng.random_bool(0.1) {
                let idx = rng.random_range(0..routes.len());
                let (gone, _) = routes.swap_remove(idx);
                assert!(table.remove(gone).is_some(), "round {round}: remove {gone}");
            }
        }
        assert_eq!(table.len(), routes.len());
        for _ in 0..2000 {
            let dst = if rng.random_bool(0.5) {
                IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | rng.random_range(0..0x1_0000u32)))
            } else {
                IpAddr::V6(Ipv6Addr::from((0xfd52u128 << 112) | rng.random_range(0..0x1_0000u128)))
            };
            assert_eq!(table.lookup(dst), naive(&routes, dst), "round {round}: {dst}");
        }
    }
}

#[test]
fn lookup_speed_with_1000_routes() {
    let mut t = RouteTable::new();
    for i in 0..1000u32 {
        t.insert(IpNet::host(IpAddr::V4(Ipv4Addr::from(0x6440_0000 + i))), i);
    }
    for i in 0..16u32 {
        t.insert(net(&format!("10.244.{i}.0/24")), 5000 + i);
    }
    t.insert(net("100.64.0.0/10"), 9999);
    let n = 200_000u32;
    let start = Instant::now();
    let mut hits = 0u64;
    for i in 0..n {
        let dst = 0x6440_0000 + (i.wrapping_mul(7919) % 2048);
        hits += u64::from(t.lookup_v4(std::hint::black_box(dst)).is_some());
    }
    let per = start.elapsed() / n;
    println!("RouteTable lookup: {per:?} per lookup (1017 routes, 3 prefix lengths)");
    assert_eq!(hits, u64::from(n));
    // Generous so unoptimised builds on slow CI pass; catches accidental linear scans.
    assert!(per.as_micros() < 20, "lookup too slow: {per:?}");
}

#[test]
fn packet_addresses() {
    let mut v4 = [0u8; 20];
    v4[0] = 0x45;
    v4[12..16].copy_from_slice(&[100, 64, 0, 1]);
    v4[16..20].copy_from_slice(&[100, 64, 0, 2]);
    assert_eq!(src_of_packet(&v4), Some(ip("100.64.0.1")));
    assert_eq!(dst_of_packet(&v4), Some(ip("100.64.0.2")));

    let mut v6 = [0u8; 40];
    v6[0] = 0x60;
    v6[8..24].copy_from_slice(&ip6("fd52::1").octets());
    v6[24..40].copy_from_slice(&ip6("fd52::2").octets());
    assert_eq!(src_of_packet(&v6), Some(ip("fd52::1")));
    assert_eq!(dst_of_packet(&v6), Some(ip("fd52::2")));
}

fn ip6(s: &str) -> Ipv6Addr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

#[test]
fn bad_packets() {
    let mut v4 = [0u8; 24];
    v4[0] = 0x45;
    assert!(dst_of_packet(&v4[..19]).is_none());
    v4[0] = 0x44; // IHL below 5
    assert!(dst_of_packet(&v4).is_none());
    v4[0] = 0x46; // IHL 24 bytes: fits
    assert!(dst_of_packet(&v4).is_some());
    v4[0] = 0x4f; // IHL 60 bytes: longer than the packet
    assert!(dst_of_packet(&v4).is_none());
    let v6 = [0x60u8; 39];
    assert!(dst_of_packet(&v6).is_none());
    assert!(src_of_packet(&v6).is_none());
    assert!(dst_of_packet(&[]).is_none());
    assert!(dst_of_packet(&[0x50; 60]).is_none()); // version 5
    assert!(dst_of_packet(&[0x00; 60]).is_none());
    // Every prefix of a random buffer: never panics.
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..2000 {
        let len = rng.random_range(0..64);
        let buf: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        let _ = (dst_of_packet(&buf), src_of_packet(&buf));
    }
}
