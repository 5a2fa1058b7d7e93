//! Addresses from raw IP packets as read from the TUN device (no link-layer header).
//!
//! Packets come from local applications and, after decryption, from peers, so every length and
//! version is checked; a malformed packet yields `None`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const V4_HEADER: usize = 20;
const V6_HEADER: usize = 40;

/// Destination address of an IPv4 or IPv6 packet.
pub fn dst_of_packet(pkt: &[u8]) -> Option<IpAddr> {
    addr_at(pkt, 16, 24)
}

/// Source address of an IPv4 or IPv6 packet.
pub fn src_of_packet(pkt: &[u8]) -> Option<IpAddr> {
    addr_at(pkt, 12, 8)
}

/// Reads the address at `v4_off` (IPv4) or `v6_off` (IPv6) once the header is known to be whole.
fn addr_at(pkt: &[u8], v4_off: usize, v6_off: usize) -> Option<IpAddr> {
    let first = *pkt.first()?;
    match first >> 4 {
        4 => {
            let ihl = usize::from(first & 0x0f) * 4;
            if ihl < V4_HEADER || pkt.len() < ihl {
                return None;
            }
            let b: [u8; 4] = pkt.get(v4_off..v4_off + 4)?.try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(b)))
        }
        6 => {
            if pkt.len() < V6_HEADER {
                return None;
            }
            let b: [u8; 16] = pkt.get(v6_off..v6_off + 16)?.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}
