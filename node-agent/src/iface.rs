//! Local candidate addresses for hole punching.
//!
//! Peers on the same LAN (or VPC) can talk directly over private addresses, so the agent tells the
//! rolodex its interface addresses besides the public one the rolodex observes. Container, CNI and
//! VPN interfaces are left out: their addresses are either unreachable from other hosts or,
//! worse, reachable only through our own overlay.

use std::ffi::CStr;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::routes::IpNet;

/// Interface name prefixes of virtual devices (Docker, CNI plugins, libvirt, other VPNs).
/// Names only: a veth moved into a namespace and renamed `eth0` is that host's real NIC.
const VIRTUAL_PREFIXES: &[&str] = &[
    "veth",
    "cni",
    "docker",
    "br-",
    "flannel",
    "cali",
    "vxlan",
    "kube-",
    "tun",
    "tap",
    "wg",
    "lxc",
    "virbr",
    "cilium",
    "weave",
    "tailscale",
    "genev",
];

/// One address of one interface, as listed by the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfAddr {
    pub name: String,
    pub addr: IpAddr,
    /// IFF_UP and IFF_RUNNING (administratively up and with carrier).
    pub up: bool,
    pub loopback: bool,
}

/// Carries the OS error in its message (not as `source()`, which would print it twice).
#[derive(Debug, thiserror::Error)]
#[error("listing network interface addresses (getifaddrs): {0}")]
pub struct IfaceError(io::Error);

/// Candidate `addr:port` pairs of this host for peers to try, in interface order, deduplicated.
pub fn local_candidates(tun_name: &str, overlay: &[IpNet], port: u16) -> Result<Vec<SocketAddr>, IfaceError> {
    Ok(filter_candidates(&interface_addrs()?, tun_name, overlay, port))
}

/// The pure part of [`local_candidates`]: drops loopback, link-local, down and virtual
/// interfaces, our own TUN, and anything inside the overlay prefixes.
pub fn filter_candidates(addrs: &[IfAddr], tun_name: &str, overlay: &[IpNet], port: u16) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for a in addrs {
        let keep = a.up
            && !a.loopback
            && a.name != tun_name
            && !is_virtual_name(&a.name)
            && is_usable_addr(&a.addr)
            && !overlay.iter().any(|n| n.contains(&a.addr));
        let sa = SocketAddr::new(a.addr, port);
        if keep && !out.contains(&sa) {
            out.push(sa);
        }
    }
    out
}

/// Whether `name` looks like a container, CNI or VPN interface.
pub fn is_virtual_name(name: &str) -> bool {
    VIRTUAL_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Unicast, not loopback, not link-local (those need a scope and never cross a router).
fn is_usable_addr(addr: &IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => {
            !(a.is_loopback()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_multicast()
                || a.is_broadcast())
        }
        IpAddr::V6(a) => {
            !(a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || a.is_unicast_link_local()
                || a.to_ipv4_mapped().is_some())
        }
    }
}

/// Every IPv4/IPv6 address of every interface, via getifaddrs(3).
pub fn interface_addrs() -> Result<Vec<IfAddr>, IfaceError> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head we own until freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(IfaceError(io::Error::last_os_error()));
    }
    let _free = FreeOnDrop(head);
    let mut out = Vec::new();
    let mut cur = head;
    // SAFETY: we walk the list getifaddrs returned, checking every pointer before reading it;
    // sockaddr casts follow sa_family, as getifaddrs guarantees the matching layout.
    unsafe {
        while let Some(ifa) = cur.as_ref() {
            cur = ifa.ifa_next;
            if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
                continue;
            }
            let addr = match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
                }
                libc::AF_INET6 => {
                    let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr))
                }
                _ => continue,
            };
            let flags = ifa.ifa_flags;
            let up_running = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_uint;
            out.push(IfAddr {
                name: CStr::from_ptr(ifa.ifa_name).to_string_lossy().into_owned(),
                addr,
                up: flags & up_running == up_running,
                loopback: flags & libc::IFF_LOOPBACK as libc::c_uint != 0,
            });
        }
    }
    Ok(out)
}

struct FreeOnDrop(*mut libc::ifaddrs);

impl Drop for FreeOnDrop {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the pointer came from a successful getifaddrs and is freed once.
            unsafe { libc::freeifaddrs(self.0) };
        }
    }
}

#[cfg(test)]
mod tests;
