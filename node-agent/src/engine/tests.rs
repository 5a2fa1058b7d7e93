//! The engine over a simulated internet (see `tests/sim.rs`): NATs, loss, restarts and attacks, on a
//! virtual clock. Every test is deterministic (seeded) and runs in simulated time.

mod sim;

use std::net::{IpAddr, SocketAddr};

use sim::*;

use crate::peer::LinkState;

/// Two sites behind Linux-like NATs (with the conntrack race), one host each.
fn two_nat_sites(seed: u64) -> (Sim, usize, usize) {
    let mut s = Sim::new(seed);
    let sa = s.add_nat_site([192, 168, 1], true);
    let sb = s.add_nat_site([192, 168, 1], true);
    let a = s.add_host(sa, "node-a", 51820);
    let b = s.add_host(sb, "node-b", 51820);
    (s, a, b)
}

fn public_of(s: &Sim, h: usize) -> IpAddr {
    IpAddr::V4(s.sites[s.hosts[h].site].public_ip)
}

#[test]
fn two_hosts_behind_different_nats_link_up_directly() {
    let (mut s, a, b) = two_nat_sites(1);
    let t = s.run_until_cond(secs(10), |s| s.up(a, b)).unwrap_or_else(|| panic!("no link\n{}", s.describe()));
    eprintln!("connected after {t:?} (a: {:?}, b: {:?})", s.peer(a, b).unwrap().stats.connect_time, s.peer(b, a).unwrap().stats.connect_time);
    s.data_flows(&[a, b]).unwrap();
    // Direct path: each uses the other's NAT public address, never the rolodex's.
    for (x, y) in [(a, b), (b, a)] {
        let ep = s.endpoint(x, y).unwrap();
        assert_eq!(ep.ip(), public_of(&s, y), "{}", s.describe());
        assert_ne!(ep, ROLODEX);
        let mapped: SocketAddr = s.mapping(y, s.endpoint(y, x).unwrap()).unwrap();
        assert_eq!(ep, mapped, "endpoint is the peer's live NAT mapping");
    }
    assert_eq!(s.state(a, b), Some(LinkState::Up));
}
