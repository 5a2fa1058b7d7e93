use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::*;

const A4: IpAddr = IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1));
const B4: IpAddr = IpAddr::V4(Ipv4Addr::new(100, 64, 0, 2));
const A6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd52, 0, 0, 0, 0, 0, 0, 1));
const B6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd52, 0, 0, 0, 0, 0, 0, 2));
/// A timestamp option (NOP NOP TS), as Linux sends: options must match for a merge.
const OPTIONS: [u8; 12] = [1, 1, 8, 10, 0, 0, 0, 7, 0, 0, 0, 9];

fn checksum(b: &[u8], initial: u64) -> u16 {
    !fold(sum(b, initial))
}

/// A TCP segment with correct IP and TCP checksums.
pub(crate) fn tcp(src: IpAddr, dst: IpAddr, sport: u16, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let tcp_len = 20 + OPTIONS.len() + payload.len();
    let mut t = vec![0u8; 20];
    t[..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&5201u16.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&77u32.to_be_bytes());
    t[12] = (((20 + OPTIONS.len()) / 4) << 4) as u8;
    t[13] = flags;
    t[14..16].copy_from_slice(&512u16.to_be_bytes());
    t.extend_from_slice(&OPTIONS);
    t.extend_from_slice(payload);
    let mut p = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut h = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0];
            h[2..4].copy_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            let c = checksum(&h, 0);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            h
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut h = vec![0x60, 0, 0, 0, 0, 0, 6, 64];
            h[4..6].copy_from_slice(&(tcp_len as u16).to_be_bytes());
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            h
        }
        _ => panic!("mixed families"),
    };
    let ip_len = p.len();
    let addrs = if ip_len == 40 { p[8..40].to_vec() } else { p[12..20].to_vec() };
    let c = checksum(&t, sum(&addrs, 6 + tcp_len as u64));
    t[16..18].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(&t);
    p
}

/// A UDP datagram with correct IP and UDP checksums.
fn udp(src: IpAddr, dst: IpAddr, sport: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = tcp(src, dst, 1, 0, TCP_ACK, &[0]); // borrow the IP header, then rewrite it as UDP
    let ip_len = if src.is_ipv6() { 40 } else { 20 };
    p.truncate(ip_len);
    let udp_len = 8 + payload.len();
    let mut u = vec![0u8; 8];
    u[..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&5201u16.to_be_bytes());
    u[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    u.extend_from_slice(payload);
    if ip_len == 40 {
        p[6] = 17;
        p[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    } else {
        p[9] = 17;
        p[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
        p[10..12].copy_from_slice(&[0, 0]);
        let c = checksum(&p, 0);
        p[10..12].copy_from_slice(&c.to_be_bytes());
    }
    let addrs = if ip_len == 40 { p[8..40].to_vec() } else { p[12..20].to_vec() };
    let c = checksum(&u, sum(&addrs, 17 + udp_len as u64));
    u[6..8].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(&u);
    p
}

/// `data` cut into segments of `mss` bytes, as a TSO split would.
fn split(src: IpAddr, dst: IpAddr, seq: u32, data: &[u8], mss: usize) -> Vec<Vec<u8>> {
    data.chunks(mss)
        .enumerate()
        .map(|(i, c)| tcp(src, dst, 40000, seq.wrapping_add((i * mss) as u32), TCP_ACK, c))
        .collect()
}

fn merges(pkts: &[Vec<u8>]) -> Vec<(usize, usize)> {
    merges_with(pkts, true)
}

fn merges_with(pkts: &[Vec<u8>], udp: bool) -> Vec<(usize, usize)> {
    let mut m = Merge::default();
    let mut out = vec![];
    let mut i = 0;
    while i < pkts.len() {
        next_merge(|k| &pkts[k], pkts.len(), i, udp, &mut m);
        out.push((m.start, m.end));
        i = m.end;
    }
    out
}

/// The packet the kernel gets for the run, with the checksum finished as it would finish it.
fn super_packet(pkts: &[Vec<u8>], m: &Merge) -> Vec<u8> {
    let mut p = m.head[..m.head_len].to_vec();
    for pkt in &pkts[m.start..m.end] {
        p.extend_from_slice(payload(pkt, m.head_len));
    }
    let start = usize::from(u16::from_ne_bytes([m.vnet[6], m.vnet[7]]));
    let off = usize::from(u16::from_ne_bytes([m.vnet[8], m.vnet[9]]));
    let partial = u16::from_be_bytes([p[start + off], p[start + off + 1]]);
    p[start + off..start + off + 2].copy_from_slice(&[0, 0]);
    let c = checksum(&p[start..], u64::from(partial));
    p[start + off..start + off + 2].copy_from_slice(&c.to_be_bytes());
    p
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

#[test]
fn a_split_segment_is_rebuilt_exactly_for_both_families() {
    for (src, dst) in [(A4, B4), (A6, B6)] {
        let bytes = data(45 * 1000 + 333);
        let pkts = split(src, dst, 0xffff_f000, &bytes, 1000); // the sequence number wraps inside
        let mut m = Merge::default();
        next_merge(|k| &pkts[k], pkts.len(), 0, true, &mut m);
        assert_eq!((m.start, m.end), (0, 46), "one super-packet");
        let whole = tcp(src, dst, 40000, 0xffff_f000, TCP_ACK, &bytes);
        assert_eq!(super_packet(&pkts, &m), whole, "headers, lengths and checksums as if sent whole");
        let v6 = src.is_ipv6();
        let ip_len: u16 = if v6 { 40 } else { 20 };
        assert_eq!(m.vnet[0], F_NEEDS_CSUM);
        assert_eq!(m.vnet[1], if v6 { GSO_TCPV6 } else { GSO_TCPV4 });
        let field = |i: usize| u16::from_ne_bytes([m.vnet[i], m.vnet[i + 1]]);
        assert_eq!((field(2), field(4), field(6), field(8)), (ip_len + 32, 1000, ip_len, 16));
    }
}

#[test]
fn runs_end_where_linux_would_stop_merging() {
    let seg = |seq: u32, flags: u8, len: usize| tcp(A4, B4, 40000, seq, flags, &data(len));
    let other_flow = tcp(A4, B4, 40001, 2000, TCP_ACK, &data(1000));
    let pkts = vec![
        seg(0, TCP_ACK, 1000),
        seg(1000, TCP_ACK | TCP_PSH, 1000), // PSH: included, then the run ends
        seg(2000, TCP_ACK, 1000),
        other_flow, // another flow
        seg(3000, TCP_ACK, 1000),
        seg(5000, TCP_ACK, 1000), // a gap in the sequence
        seg(6000, TCP_ACK, 500),  // short: the run's last
        seg(6500, TCP_ACK, 500),
        seg(7000, 0x02 | TCP_ACK, 1000),        // SYN
        seg(8000, 0x01 | TCP_ACK, 1000),        // FIN
        tcp(A4, B4, 40000, 9000, TCP_ACK, &[]), // a pure ACK
    ];
    assert_eq!(
        merges(&pkts),
        vec![(0, 2), (2, 3), (3, 4), (4, 5), (5, 7), (7, 8), (8, 9), (9, 10), (10, 11)]
    );
}

#[test]
fn a_longer_segment_or_different_headers_are_not_merged() {
    let a = tcp(A4, B4, 40000, 0, TCP_ACK, &data(500));
    let longer = tcp(A4, B4, 40000, 500, TCP_ACK, &data(600));
    assert_eq!(merges(&[a.clone(), longer]), vec![(0, 1), (1, 2)]);
    let mut ttl = tcp(A4, B4, 40000, 500, TCP_ACK, &data(500));
    ttl[8] = 3;
    assert_eq!(merges(&[a.clone(), ttl]), vec![(0, 1), (1, 2)]);
    let mut window = tcp(A4, B4, 40000, 500, TCP_ACK, &data(500));
    window[20 + 15] ^= 1;
    assert_eq!(merges(&[a.clone(), window]), vec![(0, 1), (1, 2)]);
    let mut fragment = tcp(A4, B4, 40000, 500, TCP_ACK, &data(500));
    fragment[6] |= 0x20; // more fragments
    assert_eq!(merges(&[a, fragment]), vec![(0, 1), (1, 2)]);
}

#[test]
fn merges_stop_at_64_segments_and_64_kib() {
    let pkts = split(A4, B4, 1, &data(100 * 100), 100);
    assert_eq!(merges(&pkts), vec![(0, 64), (64, 100)]);
    let pkts = split(A6, B6, 1, &data(50 * 1400), 1400);
    let runs = merges(&pkts);
    let first = runs[0].1 - runs[0].0;
    assert!(52 + first * 1400 <= 65535 && 52 + (first + 1) * 1400 > 65535, "{runs:?}");
}

#[test]
fn non_tcp_and_malformed_packets_are_written_alone() {
    let mut udp = tcp(A4, B4, 40000, 0, TCP_ACK, &data(100));
    udp[9] = 17;
    let truncated = tcp(A4, B4, 40000, 100, TCP_ACK, &data(100))[..30].to_vec();
    let pkts = vec![udp.clone(), udp, truncated, vec![], vec![0x45]];
    assert_eq!(merges(&pkts), vec![(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]);
    let mut m = Merge::default();
    next_merge(|k| &pkts[k], pkts.len(), 0, true, &mut m);
    assert_eq!(m.vnet, [0; VNET_HDR_LEN], "a single packet goes with an empty virtio header");
}

#[test]
fn udp_datagrams_of_one_flow_merge_only_with_uso() {
    for (src, dst) in [(A4, B4), (A6, B6)] {
        let mut pkts: Vec<Vec<u8>> = (0..10).map(|i| udp(src, dst, 40000, &[i; 64])).collect();
        pkts.push(udp(src, dst, 40000, &[99; 30])); // a shorter last one
        pkts.push(udp(src, dst, 40000, &[1; 64])); // after a short one: a new run
        pkts.push(udp(src, dst, 40001, &[1; 64])); // another flow
        assert_eq!(merges_with(&pkts, false), (0..13).map(|i| (i, i + 1)).collect::<Vec<_>>(), "no USO");
        assert_eq!(merges(&pkts), vec![(0, 11), (11, 12), (12, 13)]);
        let mut m = Merge::default();
        next_merge(|k| &pkts[k], pkts.len(), 0, true, &mut m);
        // The kernel splits it by gso_size again; what it sees is one datagram of all payloads.
        let all: Vec<u8> = pkts[..11].iter().flat_map(|p| payload(p, m.head_len).to_vec()).collect();
        assert_eq!(super_packet(&pkts, &m), udp(src, dst, 40000, &all), "headers and checksums as if whole");
        assert_eq!((m.vnet[0], m.vnet[1]), (F_NEEDS_CSUM, GSO_UDP_L4));
        let field = |i: usize| u16::from_ne_bytes([m.vnet[i], m.vnet[i + 1]]);
        let ip_len: u16 = if src.is_ipv6() { 40 } else { 20 };
        assert_eq!((field(2), field(4), field(6), field(8)), (ip_len + 8, 64, ip_len, 6));
    }
}

#[test]
fn a_short_ipv4_datagram_after_an_ipv6_one_is_not_compared_as_ipv6() {
    let pkts =
        vec![udp(A6, B6, 40000, &[1; 64]), udp(A4, B4, 40000, &[1; 1]), tcp(A4, B4, 1, 0, TCP_ACK, &[1])];
    assert_eq!(merges(&pkts), vec![(0, 1), (1, 2), (2, 3)]);
    let pkts = vec![tcp(A6, B6, 1, 0, TCP_ACK, &[1; 64]), tcp(A4, B4, 1, 64, TCP_ACK, &[1])];
    assert_eq!(merges(&pkts), vec![(0, 1), (1, 2)]);
}
