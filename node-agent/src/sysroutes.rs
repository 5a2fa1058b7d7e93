//! Kernel routes for prefixes that peers advertise (e.g. their nodes' pod CIDRs), pointing into the TUN
//! device. Overlay addresses need none: the TUN address's own prefix route covers them.
//!
//! Talks rtnetlink directly: the agent's image has no `ip` binary, and two message types do not justify
//! a netlink crate.

use std::collections::BTreeSet;
use std::io;
use std::net::IpAddr;

use rolodex::IpNet;

const RT_TABLE_MAIN: u8 = 254;
/// Marks our routes so that an operator can tell them apart (`ip route show proto 44`).
pub const RTPROT_ROLOMESH: u8 = 44;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;

/// Keeps the kernel's routes via the TUN device equal to a desired set.
pub struct KernelRoutes {
    ifindex: u32,
    installed: BTreeSet<IpNet>,
}

impl KernelRoutes {
    pub fn new(tun_name: &str) -> io::Result<Self> {
        let name = std::ffi::CString::new(tun_name).map_err(|_| io::Error::other("bad interface name"))?;
        // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { ifindex, installed: BTreeSet::new() })
    }

    /// Adds what is missing and removes what is no longer wanted; returns how many changes failed.
    pub fn sync(&mut self, want: &BTreeSet<IpNet>) -> usize {
        let mut failed = 0;
        let stale: Vec<IpNet> = self.installed.difference(want).copied().collect();
        for net in stale {
            match route(self.ifindex, net, false) {
                Ok(()) => {
                    self.installed.remove(&net);
                }
                Err(e) => {
                    tracing::warn!(route = %net, error = %e, "cannot remove route");
                    failed += 1;
                }
            }
        }
        for net in want.difference(&self.installed.clone()) {
            match route(self.ifindex, *net, true) {
                Ok(()) => {
                    tracing::info!(route = %net, "route added");
                    self.installed.insert(*net);
                }
                Err(e) => {
                    tracing::warn!(route = %net, error = %e, "cannot add route");
                    failed += 1;
                }
            }
        }
        failed
    }

    pub fn installed(&self) -> &BTreeSet<IpNet> {
        &self.installed
    }
}

/// One RTM_NEWROUTE (replace) or RTM_DELROUTE for `net` via interface `ifindex`, waiting for the ack.
fn route(ifindex: u32, net: IpNet, add: bool) -> io::Result<()> {
    let msg = encode(ifindex, net.network(), add);
    // SAFETY: plain socket(2) call; the descriptor is closed by `Fd` below.
    let fd =
        unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = Fd(fd);
    // SAFETY: `msg` is a valid buffer of `msg.len()` bytes; the kernel address is the zeroed default.
    let sent = unsafe { libc::send(fd.0, msg.as_ptr().cast(), msg.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 1024];
    // SAFETY: `buf` is writable for its whole length.
    let n = unsafe { libc::recv(fd.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    parse_ack(&buf[..n as usize])
}

struct Fd(i32);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor.
        unsafe { libc::close(self.0) };
    }
}

fn encode(ifindex: u32, net: IpNet, add: bool) -> Vec<u8> {
    let (family, addr): (u8, Vec<u8>) = match net.addr() {
        IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
    };
    let mut body =
        vec![family, net.prefix_len(), 0, 0, RT_TABLE_MAIN, RTPROT_ROLOMESH, RT_SCOPE_LINK, RTN_UNICAST];
    body.extend_from_slice(&0u32.to_ne_bytes()); // rtm_flags
    attr(&mut body, RTA_DST, &addr);
    attr(&mut body, RTA_OIF, &ifindex.to_ne_bytes());
    let (kind, flags) = if add {
        (libc::RTM_NEWROUTE, libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_REPLACE)
    } else {
        (libc::RTM_DELROUTE, libc::NLM_F_REQUEST | libc::NLM_F_ACK)
    };
    let mut msg = Vec::with_capacity(16 + body.len());
    msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&(flags as u16).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel fills it
    msg.extend_from_slice(&body);
    msg
}

fn attr(buf: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = 4 + data.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(data);
    buf.resize(buf.len() + (4 - len % 4) % 4, 0);
}

/// The kernel answers with NLMSG_ERROR whose error code is 0 on success.
fn parse_ack(buf: &[u8]) -> io::Result<()> {
    let kind = buf.get(4..6).map(|b| u16::from_ne_bytes([b[0], b[1]]));
    let code = buf.get(16..20).map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    match (kind, code) {
        (Some(k), Some(0)) if k == libc::NLMSG_ERROR as u16 => Ok(()),
        (Some(k), Some(e)) if k == libc::NLMSG_ERROR as u16 => Err(io::Error::from_raw_os_error(-e)),
        _ => Err(io::Error::other("unexpected netlink reply")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn encodes_attributes_aligned() {
        let m = encode(7, "10.244.1.0/24".parse().unwrap(), true);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize, m.len());
        assert_eq!(m.len() % 4, 0);
        assert_eq!(m[16], libc::AF_INET as u8);
        assert_eq!(m[17], 24);
        assert!(parse_ack(&[1, 2, 3]).is_err(), "short reply must not panic");
    }

    /// In a scratch network namespace: routes appear via the device, are replaced idempotently and go away.
    #[test]
    fn installs_and_removes_kernel_routes() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let ns = format!("rmrt-{}", std::process::id());
        let ip = |args: &[&str]| Command::new("ip").args(args).output().expect("ip");
        assert!(ip(&["netns", "add", &ns]).status.success());
        let _cleanup = Cleanup(ns.clone());
        assert!(ip(&["-n", &ns, "link", "add", "d0", "type", "veth", "peer", "name", "d1"]).status.success());
        assert!(ip(&["-n", &ns, "link", "set", "d0", "up"]).status.success());
        assert!(ip(&["-n", &ns, "link", "set", "d1", "up"]).status.success());
        let path = format!("/run/netns/{ns}");
        let show =
            || String::from_utf8_lossy(&ip(&["-n", &ns, "route", "show", "proto", "44"]).stdout).into_owned();
        let result = std::thread::spawn(move || {
            let f = std::fs::File::open(&path).expect("netns file");
            use std::os::fd::AsRawFd;
            // SAFETY: setns on a valid namespace fd affects only this thread.
            assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
            let mut k = KernelRoutes::new("d0").expect("d0 exists");
            let want: BTreeSet<IpNet> =
                ["10.244.1.0/24", "10.244.2.0/24"].iter().map(|s| s.parse().unwrap()).collect();
            let a = k.sync(&want);
            let b = k.sync(&want);
            (a, b, k)
        })
        .join()
        .expect("thread");
        assert_eq!((result.0, result.1), (0, 0));
        let routes = show();
        assert!(
            routes.contains("10.244.1.0/24 dev d0") && routes.contains("10.244.2.0/24 dev d0"),
            "{routes}"
        );
        let mut k = result.2;
        let path = format!("/run/netns/{ns}");
        let left = std::thread::spawn(move || {
            let f = std::fs::File::open(&path).expect("netns file");
            use std::os::fd::AsRawFd;
            // SAFETY: as above.
            assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
            let want: BTreeSet<IpNet> = ["10.244.2.0/24"].iter().map(|s| s.parse().unwrap()).collect();
            k.sync(&want)
        })
        .join()
        .expect("thread");
        assert_eq!(left, 0);
        let routes = show();
        assert!(!routes.contains("10.244.1.0/24") && routes.contains("10.244.2.0/24"), "{routes}");
    }

    struct Cleanup(String);

    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
        }
    }
}
