//! Receive coalescing (GRO) for the TUN device, without copying payloads.
//!
//! The datagrams of one UDP GRO train are usually consecutive segments of one TCP flow (the sender split
//! one TSO segment). [`next_merge`] finds the longest run of opened packets that the kernel would have
//! merged itself — same flow, consecutive sequence numbers, equal headers and options, equal segment sizes
//! but a shorter last one — and builds the super-packet's headers and virtio header, so the run goes to the
//! kernel as one `writev` of those headers and the packets' payloads where they lie. The kernel finishes the
//! TCP checksum (`NEEDS_CSUM`); the payloads were authenticated by the AEAD, which is a stronger check than
//! the segments' own checksums. Rules follow Linux's `tcp_gro_receive` (and wireguard-go's
//! `tun/offload_linux.go`).

#[cfg(test)]
pub(crate) mod tests;

use crate::tun::VNET_HDR_LEN;

/// IPv6 header plus the largest TCP header, or the largest IPv4 and TCP headers.
pub const MAX_HEAD: usize = 120;
/// Segments per super-packet; Linux's GRO stops at 64 as well.
pub const MAX_MERGE: usize = 64;
const MAX_IP_LEN: usize = 65535;

const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const GSO_UDP_L4: u8 = 5;
const F_NEEDS_CSUM: u8 = 1;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;

/// A run of packets `start..end` and what to write before their payloads.
pub struct Merge {
    pub start: usize,
    pub end: usize,
    pub vnet: [u8; VNET_HDR_LEN],
    /// For a run of more than one: the super-packet's IP and TCP headers; the payloads follow.
    pub head: [u8; MAX_HEAD],
    pub head_len: usize,
}

impl Default for Merge {
    fn default() -> Self {
        Self { start: 0, end: 0, vnet: [0; VNET_HDR_LEN], head: [0; MAX_HEAD], head_len: 0 }
    }
}

impl Merge {
    /// Whether the run is one packet, written whole behind an all-zero virtio header.
    pub fn is_single(&self) -> bool {
        self.end - self.start == 1
    }
}

/// Where the TCP header and payload of a packet are, if it may be merged at all.
#[derive(Clone, Copy)]
struct Tcp {
    v6: bool,
    ip_len: usize,
    tcp_len: usize,
    payload: usize,
    seq: u32,
    flags: u8,
}

fn be16(b: &[u8], at: usize) -> usize {
    usize::from(u16::from_be_bytes([b[at], b[at + 1]]))
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A plain TCP segment with data: no IP options or fragments, no IPv6 extension headers, only ACK (and
/// PSH) set. Anything else is written as it is.
fn parse(p: &[u8]) -> Option<Tcp> {
    let (v6, ip_len) = match p.first()? >> 4 {
        4 if p.len() >= 20 && p[0] & 0x0f == 5 && p[9] == 6 && be16(p, 2) == p.len() => {
            let frag = be16(p, 6);
            if frag & 0x3fff != 0 {
                return None; // MF set or an offset: a fragment
            }
            (false, 20)
        }
        6 if p.len() >= 40 && p[6] == 6 && be16(p, 4) + 40 == p.len() => (true, 40),
        _ => return None,
    };
    let tcp = p.get(ip_len..ip_len + 20)?;
    let tcp_len = usize::from(tcp[12] >> 4) * 4;
    let flags = tcp[13];
    if tcp_len < 20 || ip_len + tcp_len >= p.len() || tcp[12] & 0x0f != 0 {
        return None;
    }
    if flags & !(TCP_ACK | TCP_PSH) != 0 || flags & TCP_ACK == 0 {
        return None;
    }
    Some(Tcp { v6, ip_len, tcp_len, payload: p.len() - ip_len - tcp_len, seq: be32(tcp, 4), flags })
}

/// The IP header fields that must match for a merge. IPv6: version, traffic class, flow label, hop limit,
/// addresses. IPv4: TOS, DF, TTL, addresses (not total length, id or checksum).
fn same_ip_header(first: &[u8], q: &[u8], v6: bool) -> bool {
    if v6 {
        first[..4] == q[..4] && first[7] == q[7] && first[8..40] == q[8..40]
    } else {
        first[1] == q[1] && first[6] == q[6] && first[8] == q[8] && first[12..20] == q[12..20]
    }
}

/// Whether `q` continues the run that `first` started and `prev` last extended.
fn continues(first: &[u8], f: &Tcp, prev: &Tcp, q: &[u8], t: &Tcp, total: usize) -> bool {
    let hl = f.ip_len + f.tcp_len;
    if t.v6 != f.v6 || t.tcp_len != f.tcp_len || t.payload > f.payload || total + t.payload > MAX_IP_LEN {
        return false;
    }
    if prev.payload != f.payload || prev.flags & TCP_PSH != 0 {
        return false; // a short or pushed segment ends the run
    }
    if t.seq != prev.seq.wrapping_add(prev.payload as u32) {
        return false;
    }
    let same_ip = same_ip_header(first, q, f.v6);
    // Ports; then ack number, data offset, flags but PSH, window; then options. Not seq or checksum.
    let (a, b) = (&first[f.ip_len..hl], &q[t.ip_len..t.ip_len + t.tcp_len]);
    same_ip
        && a[..4] == b[..4]
        && a[8..13] == b[8..13]
        && (a[13] | TCP_PSH) == (b[13] | TCP_PSH)
        && a[14..16] == b[14..16]
        && a[20..] == b[20..]
}

/// Finds the run starting at `start` among `count` packets (`packet(i)` returns packet `i`) and fills `m`.
/// `udp`: the device takes UDP segmentation offload (USO, Linux 6.2+), so UDP datagrams of one flow are
/// merged too (the kernel splits them again before any socket sees them).
pub fn next_merge<'a>(
    packet: impl Fn(usize) -> &'a [u8],
    count: usize,
    start: usize,
    udp: bool,
    m: &mut Merge,
) {
    m.start = start;
    m.end = start + 1;
    m.vnet = [0; VNET_HDR_LEN];
    m.head_len = 0;
    let first = packet(start);
    if udp && let Some(u) = parse_udp(first) {
        return merge_udp(packet, count, first, u, m);
    }
    let Some(f) = parse(first) else { return };
    let hl = f.ip_len + f.tcp_len;
    let mut prev = f;
    let mut total = first.len();
    let mut pushed = f.flags & TCP_PSH;
    while m.end < count && m.end - start < MAX_MERGE {
        let q = packet(m.end);
        let Some(t) = parse(q) else { break };
        if !continues(first, &f, &prev, q, &t, total) {
            break;
        }
        total += t.payload;
        pushed |= t.flags & TCP_PSH;
        prev = t;
        m.end += 1;
    }
    if m.is_single() {
        return;
    }
    // The super-packet's headers: the first's, with the total length, PSH if any segment had it, the IPv4
    // header checksum, and the TCP checksum field holding the pseudo-header sum for the kernel to finish.
    let head = &mut m.head[..hl];
    head.copy_from_slice(&first[..hl]);
    let tcp_total = total - f.ip_len;
    set_ip_length(head, f.v6, total, tcp_total);
    head[f.ip_len + 13] |= pushed;
    let addrs = if f.v6 { &head[8..40] } else { &head[12..20] };
    let pseudo = fold(sum(addrs, 6 + tcp_total as u64));
    head[f.ip_len + 16..f.ip_len + 18].copy_from_slice(&pseudo.to_be_bytes());
    m.head_len = hl;
    set_vnet(&mut m.vnet, if f.v6 { GSO_TCPV6 } else { GSO_TCPV4 }, hl, f.payload, f.ip_len, 16);
}

/// A UDP datagram with data: no IP options, fragments or IPv6 extension headers.
#[derive(Clone, Copy)]
struct Udp {
    v6: bool,
    ip_len: usize,
    payload: usize,
}

fn parse_udp(p: &[u8]) -> Option<Udp> {
    let (v6, ip_len) = match p.first()? >> 4 {
        4 if p.len() >= 28 && p[0] & 0x0f == 5 && p[9] == 17 && be16(p, 2) == p.len() => {
            if be16(p, 6) & 0x3fff != 0 {
                return None;
            }
            (false, 20)
        }
        6 if p.len() >= 48 && p[6] == 17 && be16(p, 4) + 40 == p.len() => (true, 40),
        _ => return None,
    };
    let payload = p.len() - ip_len - 8;
    (be16(p, ip_len + 4) == p.len() - ip_len && payload > 0).then_some(Udp { v6, ip_len, payload })
}

fn merge_udp<'a>(packet: impl Fn(usize) -> &'a [u8], count: usize, first: &[u8], f: Udp, m: &mut Merge) {
    let hl = f.ip_len + 8;
    let mut total = first.len();
    let mut last = f.payload;
    while m.end < count && m.end - m.start < MAX_MERGE && last == f.payload {
        let q = packet(m.end);
        let Some(u) = parse_udp(q) else { break };
        // Family first: the header comparison indexes by it.
        if u.v6 != f.v6
            || !same_ip_header(first, q, f.v6)
            || first[f.ip_len..f.ip_len + 4] != q[u.ip_len..u.ip_len + 4]
            || u.payload > f.payload
            || total + u.payload > MAX_IP_LEN
        {
            break;
        }
        total += u.payload;
        last = u.payload;
        m.end += 1;
    }
    if m.is_single() {
        return;
    }
    let head = &mut m.head[..hl];
    head.copy_from_slice(&first[..hl]);
    let udp_total = total - f.ip_len;
    set_ip_length(head, f.v6, total, udp_total);
    head[f.ip_len + 4..f.ip_len + 6].copy_from_slice(&(udp_total as u16).to_be_bytes());
    let addrs = if f.v6 { &head[8..40] } else { &head[12..20] };
    let pseudo = fold(sum(addrs, 17 + udp_total as u64));
    head[f.ip_len + 6..f.ip_len + 8].copy_from_slice(&pseudo.to_be_bytes());
    m.head_len = hl;
    set_vnet(&mut m.vnet, GSO_UDP_L4, hl, f.payload, f.ip_len, 6);
}

fn set_ip_length(head: &mut [u8], v6: bool, total: usize, l4_total: usize) {
    if v6 {
        head[4..6].copy_from_slice(&(l4_total as u16).to_be_bytes());
    } else {
        head[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        head[10..12].copy_from_slice(&[0, 0]);
        let c = !fold(sum(&head[..20], 0));
        head[10..12].copy_from_slice(&c.to_be_bytes());
    }
}

/// virtio_net_hdr in native byte order: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset.
fn set_vnet(
    v: &mut [u8; VNET_HDR_LEN],
    gso_type: u8,
    hdr_len: usize,
    gso_size: usize,
    start: usize,
    off: u16,
) {
    v[0] = F_NEEDS_CSUM;
    v[1] = gso_type;
    v[2..4].copy_from_slice(&(hdr_len as u16).to_ne_bytes());
    v[4..6].copy_from_slice(&(gso_size as u16).to_ne_bytes());
    v[6..8].copy_from_slice(&(start as u16).to_ne_bytes());
    v[8..10].copy_from_slice(&off.to_ne_bytes());
}

/// The payload of packet `p` in a run whose headers are `head_len` bytes (all equal, checked by the merge).
pub fn payload(p: &[u8], head_len: usize) -> &[u8] {
    &p[head_len.min(p.len())..]
}

fn sum(b: &[u8], initial: u64) -> u64 {
    let mut s = initial;
    let mut chunks = b.chunks_exact(2);
    for c in &mut chunks {
        s += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        s += u64::from(*last) << 8;
    }
    s
}

fn fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}
