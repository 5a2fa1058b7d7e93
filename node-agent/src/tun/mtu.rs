//! Choosing the TUN MTU so that an encrypted overlay packet still fits one underlay packet.

use std::fs;

/// Bytes a data packet adds around the inner IP packet: 16-byte header + 16-byte AEAD tag.
pub const DATA_OVERHEAD: u32 = 16 + 16;
const UDP_HEADER: u32 = 8;
const FALLBACK_MTU: u32 = 1500;

/// The largest inner packet that fits an underlay MTU of `underlay_mtu`.
pub fn auto_mtu(underlay_mtu: u32, ipv6_underlay: bool) -> u32 {
    let ip_header = if ipv6_underlay { 40 } else { 20 };
    underlay_mtu.saturating_sub(ip_header + UDP_HEADER + DATA_OVERHEAD)
}

/// MTU of the interface carrying the default route (IPv4 first, then IPv6); 1500 if unknown,
/// e.g. in a namespace with no default route.
pub fn underlay_mtu() -> u32 {
    let v4 = fs::read_to_string("/proc/net/route").ok();
    let v6 = fs::read_to_string("/proc/net/ipv6_route").ok();
    default_route_interface(v4.as_deref().unwrap_or(""), v6.as_deref().unwrap_or(""))
        .and_then(|ifname| interface_mtu(&ifname))
        .unwrap_or(FALLBACK_MTU)
}

/// The interface of the best (lowest-metric) default route, from the texts of `/proc/net/route`
/// and `/proc/net/ipv6_route`.
pub fn default_route_interface(proc_net_route: &str, proc_net_ipv6_route: &str) -> Option<String> {
    default_v4(proc_net_route).or_else(|| default_v6(proc_net_ipv6_route))
}

const RTF_UP: u32 = 0x1;
const RTF_REJECT: u32 = 0x200;

/// Columns: Iface Destination Gateway Flags RefCnt Use Metric Mask ...
fn default_v4(text: &str) -> Option<String> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (iface, dst, flags, metric, mask) = (f.first()?, f.get(1)?, f.get(3)?, f.get(6)?, f.get(7)?);
            let flags = u32::from_str_radix(flags, 16).ok()?;
            let usable = *dst == "00000000" && *mask == "00000000" && flags & RTF_UP != 0;
            if !usable {
                return None;
            }
            Some((metric.parse::<u32>().ok()?, iface.to_string()))
        })
        .min()
        .map(|(_, iface)| iface)
}

/// Columns: dst dst_len src src_len next_hop metric refcnt use flags iface.
fn default_v6(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (dst, len, metric, flags, iface) = (f.first()?, f.get(1)?, f.get(5)?, f.get(8)?, f.get(9)?);
            let flags = u32::from_str_radix(flags, 16).ok()?;
            let usable = dst.bytes().all(|b| b == b'0')
                && *len == "00"
                && flags & RTF_UP != 0
                && flags & RTF_REJECT == 0
                && *iface != "lo";
            if !usable {
                return None;
            }
            Some((u32::from_str_radix(metric, 16).ok()?, iface.to_string()))
        })
        .min()
        .map(|(_, iface)| iface)
}

fn interface_mtu(ifname: &str) -> Option<u32> {
    // The name comes from /proc, but never let it walk out of /sys/class/net.
    if ifname.is_empty() || ifname.contains('/') || ifname.starts_with('.') {
        return None;
    }
    let text = fs::read_to_string(format!("/sys/class/net/{ifname}/mtu")).ok()?;
    text.trim().parse().ok().filter(|m| *m > 0)
}
