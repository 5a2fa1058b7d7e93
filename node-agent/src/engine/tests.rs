//! The engine over a simulated internet (see `tests/sim.rs`): NATs with conntrack's race, loss, restarts
//! and attacks, on a virtual clock. Every test is deterministic (seeded), runs in simulated time, and
//! asserts something a user of the mesh would notice.

pub(crate) mod sim;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use rand::Rng;
use rolodex::proto::{Body, FrameKey, Message, PeerEntry};

use super::DropReason;
use crate::peer::LinkState;
use sim::*;

/// Two sites behind Linux-like NATs (with the conntrack race) that both use 192.168.1.0/24, one host
/// each, both on the default port: the LAN candidates of one look like the other's own address.
fn two_nat_sites(seed: u64) -> (Sim, usize, usize) {
    let mut s = Sim::new(seed);
    let sa = s.add_nat_site([192, 168, 1], true);
    let sb = s.add_nat_site([192, 168, 1], true);
    let a = s.add_host(sa, "node-a", 51820);
    let b = s.add_host(sb, "node-b", 51820);
    (s, a, b)
}

fn public_ip(s: &Sim, h: usize) -> IpAddr {
    IpAddr::V4(s.sites[s.hosts[h].site].public_ip)
}

/// Runs until every pair of `hosts` is Up; the simulated time it took.
fn connect(s: &mut Sim, hosts: &[usize], limit: Duration) -> Duration {
    let hosts = hosts.to_vec();
    s.run_until_cond(limit, |s| s.all_up(&hosts))
        .unwrap_or_else(|| panic!("not all up within {limit:?}\n{}", s.describe()))
}

fn drops(s: &Sim, h: usize, why: DropReason) -> u64 {
    s.engine(h).stats().drops[why as usize]
}

/// Runs for `d` and fails as soon as `invariant` breaks.
fn run_checking(s: &mut Sim, d: Duration, what: &str, invariant: impl Fn(&Sim) -> bool) {
    let broke = s.run_until_cond(d, |s| !invariant(s));
    if let Some(t) = broke {
        panic!("{what} broke after {t:?}\n{}", s.describe());
    }
}

// -------------------------------------------------------------------------------------------------------------
// 1. The basic case

#[test]
fn two_hosts_behind_different_nats_link_up_directly() {
    let (mut s, a, b) = two_nat_sites(1);
    let t = connect(&mut s, &[a, b], secs(10));
    eprintln!(
        "two NATs: both up after {t:?} of simulated time (engine connect_time a: {:?}, b: {:?})",
        s.peer(a, b).unwrap().stats.connect_time,
        s.peer(b, a).unwrap().stats.connect_time
    );
    assert!(t < secs(2), "connecting took {t:?}");
    s.data_flows(&[a, b]).unwrap();
    // Direct path: each side talks to the other's NAT public address (its live mapping), not the rolodex.
    for (x, y) in [(a, b), (b, a)] {
        let ep = s.endpoint(x, y).unwrap();
        assert_eq!(ep.ip(), public_ip(&s, y), "{}", s.describe());
        assert_ne!(ep, ROLODEX);
        let back = s.endpoint(y, x).unwrap();
        assert_eq!(Some(ep), s.mapping(y, back), "endpoint is the peer's NAT mapping towards us");
    }
    // The rolodex saw only rolodex frames: nothing of the data path went through it.
    assert_eq!(s.server_drops, 0);
    // Still up and carrying data a few keepalive periods later (NAT mappings stay open).
    s.run_for(secs(120));
    assert!(s.up(a, b), "{}", s.describe());
    s.data_flows(&[a, b]).unwrap();
}

// -------------------------------------------------------------------------------------------------------------
// 2. Conntrack's race and the low-TTL probes that avoid it

/// One trial: two hosts behind racing NATs with `seed`'s latencies. Time to link up (if within 5 s), and
/// how often a NAT gave a flow a different port because a peer's probe arrived first.
fn race_trial(seed: u64, punch_ttl: u32) -> (Option<Duration>, u64) {
    let mut s = Sim::new(seed);
    s.latency = (ms(1), ms(40));
    s.jitter = Duration::from_micros(500);
    let sa = s.add_nat_site([10, 1, 0], true);
    let sb = s.add_nat_site([10, 2, 0], true);
    let a = s.add_host_with(sa, "node-a", 51820, |c| c.punch_ttl = punch_ttl);
    let b = s.add_host_with(sb, "node-b", 51820, |c| c.punch_ttl = punch_ttl);
    let t = s.run_until_cond(secs(5), |s| s.up(a, b));
    let races =
        s.sites[sa].nat.as_ref().unwrap().stats.race_hits + s.sites[sb].nat.as_ref().unwrap().stats.race_hits;
    if t.is_some() {
        s.data_flows(&[a, b]).unwrap();
    }
    (t, races)
}

#[test]
fn simultaneous_punching_survives_the_conntrack_race() {
    let mut low = vec![];
    for seed in 0..20 {
        let (t, races) = race_trial(1000 + seed, 2);
        let t = t.unwrap_or_else(|| panic!("trial {seed} with punch_ttl 2 did not connect within 5 s"));
        low.push((t, races));
    }
    let mut high = vec![];
    for seed in 0..20 {
        high.push(race_trial(1000 + seed, 64));
    }
    let fmt = |v: &[(Option<Duration>, u64)]| {
        v.iter()
            .map(|(t, r)| {
                format!(
                    "{}{}",
                    t.map_or("FAIL".into(), |t| format!("{}ms", t.as_millis())),
                    "*".repeat(*r as usize)
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let low_opt: Vec<_> = low.iter().map(|(t, r)| (Some(*t), *r)).collect();
    eprintln!("punch_ttl 2  (time to up; * = NAT race hit): {}", fmt(&low_opt));
    eprintln!("punch_ttl 64 (time to up; * = NAT race hit): {}", fmt(&high));
    let max_low = low.iter().map(|(t, _)| *t).max().unwrap();
    let failed_high = high.iter().filter(|(t, _)| t.is_none()).count();
    let slower_high =
        high.iter().zip(&low).filter(|((h, _), (l, _))| h.is_some_and(|h| h > *l + ms(500))).count();
    eprintln!(
        "punch_ttl 2: 20/20 up, slowest {max_low:?}; punch_ttl 64: {failed_high} failed, {slower_high} slower by >0.5 s"
    );
    assert_eq!(low.iter().map(|(_, r)| r).sum::<u64>(), 0, "low-TTL probes should keep the NATs from racing");
    assert!(failed_high + slower_high > 0, "the ablation never hit the race: the NAT model lost its teeth");
}

// -------------------------------------------------------------------------------------------------------------
// 3. Same LAN

#[test]
fn hosts_on_the_same_lan_connect_over_the_lan() {
    let mut s = Sim::new(3);
    let site = s.add_nat_site([192, 168, 7], true);
    let a = s.add_host(site, "node-a", 51820);
    let b = s.add_host(site, "node-b", 51820);
    let t = connect(&mut s, &[a, b], secs(10));
    eprintln!("same LAN: up after {t:?}");
    // The NAT cannot hairpin, so the only working path is the LAN one.
    assert_eq!(s.endpoint(a, b), Some(s.hosts[b].local), "{}", s.describe());
    assert_eq!(s.endpoint(b, a), Some(s.hosts[a].local), "{}", s.describe());
    s.data_flows(&[a, b]).unwrap();
    assert!(s.stats.hairpin > 0, "the public path was tried (and refused by the router)");
}

// -------------------------------------------------------------------------------------------------------------
// 4. Three hosts, restarts

#[test]
fn three_host_mesh_recovers_from_agent_restarts() {
    let mut s = Sim::new(4);
    let s1 = s.add_nat_site([192, 168, 1], true);
    let s2 = s.add_nat_site([10, 0, 0], true);
    let a = s.add_host(s1, "node-a", 51820);
    let c = s.add_host(s1, "node-c", 51820);
    let b = s.add_host(s2, "node-b", 51820);
    let all = [a, b, c];
    let t = connect(&mut s, &all, secs(10));
    eprintln!("mesh of 3: all up after {t:?}");
    s.data_flows(&all).unwrap();
    s.run_for(secs(30));

    // node-c restarts on another port (a new NAT mapping), node-b later on the same one.
    for (h, port) in [(c, Some(40000)), (b, None)] {
        let old = s.engine(h).incarnation();
        s.restart_host(h, port);
        assert_ne!(s.engine(h).incarnation(), old);
        let t = s
            .run_until_cond(secs(10), |s| {
                s.all_up(&all)
                    && all
                        .iter()
                        .all(|&x| x == h || s.peer(x, h).unwrap().incarnation == s.engine(h).incarnation())
            })
            .unwrap_or_else(|| {
                panic!("{} restarted: mesh not up again within 10 s\n{}", s.hosts[h].name, s.describe())
            });
        eprintln!("{} restarted: mesh up again after {t:?}", s.hosts[h].name);
        s.data_flows(&all).unwrap();
        s.run_for(secs(40));
        assert!(s.all_up(&all), "{}", s.describe());
    }
}

/// Two sites with the same private address plan (10.0.0.0/24, same host addresses, same port): a peer's
/// LAN candidate may be another host's address on our own LAN, or our own.
#[test]
fn overlapping_private_address_plans_at_two_sites() {
    let mut s = Sim::new(73);
    let s1 = s.add_nat_site([10, 0, 0], true);
    let s2 = s.add_nat_site([10, 0, 0], true);
    let a = s.add_host(s1, "node-a", 51820);
    let c = s.add_host(s1, "node-c", 51820);
    let b = s.add_host(s2, "node-b", 51820);
    let d = s.add_host(s2, "node-d", 51820);
    let all = [a, b, c, d];
    let t = connect(&mut s, &all, secs(10));
    eprintln!("overlapping LANs: mesh of 4 up after {t:?}");
    // Same-site pairs use the LAN, cross-site pairs the NATs.
    assert_eq!(s.endpoint(a, c), Some(s.hosts[c].local));
    assert_eq!(s.endpoint(b, d), Some(s.hosts[d].local));
    for (x, y) in [(a, b), (a, d), (c, b), (c, d)] {
        assert_eq!(s.endpoint(x, y).unwrap().ip(), public_ip(&s, y), "{}", s.describe());
    }
    s.data_flows(&all).unwrap();
    s.run_for(secs(20));
    // A rollout restarts three of them at once.
    for h in [b, c, d] {
        s.restart_host(h, None);
    }
    let t = s
        .run_until_cond(secs(10), |s| {
            s.all_up(&all)
                && all.iter().all(|&x| {
                    all.iter()
                        .all(|&y| x == y || s.peer(x, y).unwrap().incarnation == s.engine(y).incarnation())
                })
        })
        .unwrap_or_else(|| panic!("mesh not back within 10 s\n{}", s.describe()));
    eprintln!("overlapping LANs: back up {t:?} after three restarts");
    s.data_flows(&all).unwrap();
}

// -------------------------------------------------------------------------------------------------------------
// 5. Vanished peers and broken paths

#[test]
fn a_vanished_peer_is_detected_and_dropped() {
    let mut s = Sim::new(5);
    let s1 = s.add_nat_site([192, 168, 1], true);
    let s2 = s.add_nat_site([192, 168, 2], true);
    let a = s.add_host(s1, "node-a", 51820);
    let b = s.add_host(s2, "node-b", 51820);
    let c = s.add_host(s2, "node-c", 51821);
    connect(&mut s, &[a, b, c], secs(10));
    s.run_for(secs(17));
    s.data_flows(&[a, b, c]).unwrap();

    // node-b's machine dies: no more packets, no engine.
    s.hosts[b].unplugged = true;
    s.hosts[b].engine = None;
    let gone = s.now;
    s.run_for(secs(15));
    assert!(s.peer(a, b).is_some() && s.peer(c, b).is_some(), "dropped before the rolodex timeout");

    let keepalive_limit = KEEPALIVE * 2 + secs(5) + secs(3);
    let left_up = s
        .run_until_cond(keepalive_limit - secs(15), |s| {
            [a, c].iter().all(|&x| s.state(x, b) != Some(LinkState::Up))
        })
        .map(|t| t + secs(15));
    eprintln!("vanished peer: link left Up after {left_up:?}");
    assert!(left_up.is_some(), "still Up {keepalive_limit:?} after the peer vanished\n{}", s.describe());

    // The rolodex times it out (30 s after its last heartbeat, so at most heartbeat + 30 s + a sweep) and
    // the others forget it.
    let limit = HEARTBEAT + secs(30) + secs(3) + secs(2);
    let removed = s.run_until_cond(limit.saturating_sub(s.now.duration_since(gone)), |s| {
        s.peer(a, b).is_none() && s.peer(c, b).is_none()
    });
    assert!(removed.is_some(), "peer still listed {limit:?} after it vanished\n{}", s.describe());
    eprintln!("vanished peer: forgotten by all {:?} after it vanished", s.now.duration_since(gone));
    assert_eq!(s.server.as_ref().unwrap().member_count(NETWORK), 2);
    // The survivors are unaffected.
    assert!(s.up(a, c), "{}", s.describe());
    s.data_flows(&[a, c]).unwrap();
    // And no ghost comes back.
    s.run_for(secs(60));
    assert!(s.peer(a, b).is_none() && s.peer(c, b).is_none(), "{}", s.describe());
}

#[test]
fn a_broken_path_is_detected_by_keepalives_and_relinked_when_it_heals() {
    let mut s = Sim::new(55);
    let s1 = s.add_nat_site([192, 168, 1], true);
    let s2 = s.add_nat_site([192, 168, 2], true);
    let a = s.add_host(s1, "node-a", 51820);
    let b = s.add_host(s2, "node-b", 51820);
    connect(&mut s, &[a, b], secs(10));
    s.run_for(secs(3));
    // The path between the sites breaks; both still reach the rolodex, which keeps listing both.
    s.cuts.insert((s1, s2));
    let t = s
        .run_until_cond(secs(120), |s| {
            s.state(a, b) != Some(LinkState::Up) && s.state(b, a) != Some(LinkState::Up)
        })
        .unwrap_or_else(|| panic!("never noticed the dead path\n{}", s.describe()));
    eprintln!("broken path: both sides left Up after {t:?}");
    assert!(t <= KEEPALIVE * 2 + secs(5) + secs(1), "dead path noticed only after {t:?}");
    assert!(s.peer(a, b).is_some(), "the rolodex still lists the peer, so it stays known");
    let (ab, ba) = s.exchange(a, b, secs(1));
    assert!(!ab && !ba, "no data over a dead link");
    assert!(drops(&s, a, DropReason::NoLink) > 0, "refused packets are counted");

    // The path heals: the link comes back by itself.
    s.run_for(secs(20));
    s.cuts.clear();
    let healed = s.now;
    let t = s.run_until_cond(secs(300), |s| s.up(a, b));
    eprintln!("broken path: relinked {t:?} after it healed");
    assert!(
        t.is_some(),
        "not relinked {:?} after the path healed\n{}",
        s.now.duration_since(healed),
        s.describe()
    );
    assert!(t.unwrap() < secs(40), "relinking took {t:?}");
    s.data_flows(&[a, b]).unwrap();
}

// -------------------------------------------------------------------------------------------------------------
// 6. Rolodex restart

#[test]
fn a_rolodex_restart_does_not_take_links_down() {
    let mut s = Sim::new(6);
    let s1 = s.add_nat_site([192, 168, 1], true);
    let s2 = s.add_nat_site([192, 168, 2], true);
    let a = s.add_host(s1, "node-a", 51820);
    let c = s.add_host(s1, "node-c", 51820);
    let b = s.add_host(s2, "node-b", 51820);
    let all = [a, b, c];
    connect(&mut s, &all, secs(10));
    s.run_for(secs(12));
    // The rolodex process dies, stays away for a few seconds, and comes back empty.
    s.server = None;
    run_checking(&mut s, secs(5), "every link Up while the rolodex is down", |s| s.all_up(&all));
    s.data_flows(&all).unwrap();
    s.start_server();
    let t = s
        .run_until_cond(HEARTBEAT + HEARTBEAT / 10 + secs(1), |s| {
            s.server.as_ref().unwrap().member_count(NETWORK) == 3
        })
        .unwrap_or_else(|| panic!("members did not re-register within a heartbeat\n{}", s.describe()));
    eprintln!("rolodex restart: all members re-registered {t:?} after it came back");
    run_checking(&mut s, secs(60), "every link Up after the rolodex restart", |s| s.all_up(&all));
    s.data_flows(&all).unwrap();
    for &x in &all {
        for &y in &all {
            if x != y {
                assert_eq!(
                    s.peer(x, y).unwrap().stats.handshakes,
                    1,
                    "no link was re-made\n{}",
                    s.describe()
                );
            }
        }
    }
}

// -------------------------------------------------------------------------------------------------------------
// 7. NAT rebinding

#[test]
fn nat_rebinding_is_followed_by_the_peer() {
    let mut s = Sim::new(7);
    let sa = s.add_nat_site([192, 168, 1], true);
    let a = s.add_host(sa, "node-a", 51820);
    let b = s.add_public_host("node-b", 51820);
    connect(&mut s, &[a, b], secs(10));
    s.data_flows(&[a, b]).unwrap();
    let before = s.endpoint(b, a).unwrap();
    s.run_for(secs(5));

    // The router forgets node-a's mappings: its next packets leave from another port.
    let inside = s.hosts[a].local;
    let new_port = s.nat_mut(sa).rebind(inside);
    let pkt = s.app_packet(a, b);
    assert!(s.send_packet(a, &pkt));
    let t = s
        .run_until_cond(secs(3), |s| s.endpoint(b, a).is_some_and(|e| e.port() == new_port))
        .unwrap_or_else(|| panic!("peer did not follow the new port {new_port}\n{}", s.describe()));
    eprintln!("NAT rebinding: {before} -> port {new_port}, peer followed after {t:?}");
    assert!(s.hosts[b].inbox.contains(&pkt), "the packet from the new port was delivered");
    s.data_flows(&[a, b]).unwrap();
    assert!(s.up(a, b));
}

/// Only the peer talks (a one-way stream towards the host whose NAT rebinds): the host's keepalive must
/// carry it to its new port. Before the session keepalive the peer kept sending to the dead port, declared
/// the host dead, and the link stayed half-open for good (the host, still Up, ignored every attempt).
#[test]
fn nat_rebinding_with_one_way_traffic_recovers_within_a_keepalive() {
    let mut s = Sim::new(71);
    let sa = s.add_nat_site([192, 168, 1], true);
    let a = s.add_host(sa, "node-a", 51820);
    let b = s.add_public_host("node-b", 51820);
    connect(&mut s, &[a, b], secs(10));
    s.run_for(secs(5));
    let inside = s.hosts[a].local;
    let new_port = s.nat_mut(sa).rebind(inside);
    let t0 = s.now;
    let mut recovered = None;
    for _ in 0..90 {
        let p = s.app_packet(b, a);
        assert!(s.send_packet(b, &p), "node-b refused to send\n{}", s.describe());
        s.run_for(secs(1));
        if s.hosts[a].inbox.contains(&p) {
            recovered = Some(s.now.duration_since(t0));
            break;
        }
    }
    eprintln!("NAT rebinding, one-way traffic: data reaches the host again after {recovered:?}");
    let t = recovered.unwrap_or_else(|| panic!("node-b -> node-a never recovered\n{}", s.describe()));
    assert!(t <= KEEPALIVE + secs(2), "took {t:?}");
    assert_eq!(s.endpoint(b, a).map(|e| e.port()), Some(new_port));
    run_checking(&mut s, secs(120), "link Up after the rebinding", |s| s.up(a, b));
    s.data_flows(&[a, b]).unwrap();
}

/// One side drops the session (as its dead-peer check does when only its direction fails) while the other
/// still hears the agent: the link must not stay half-open.
#[test]
fn a_half_open_link_heals() {
    let (mut s, a, b) = two_nat_sites(12);
    connect(&mut s, &[a, b], secs(10));
    s.run_for(secs(3));
    // node-b is the DTLS server (it waits for node-a's ClientHello): the harder side to lose.
    assert_eq!(s.peer(b, a).unwrap().role, crate::dtls::Role::Server);
    let now = s.now;
    let e = s.engine_mut(b);
    let slot = e.by_name["node-a"];
    let p = e.peers[slot].as_mut().unwrap();
    p.state = LinkState::Down;
    p.session = None;
    p.next_connect_request = now;
    let limit = KEEPALIVE * 2 + secs(5) + secs(20);
    let t = s
        .run_until_cond(limit, |s| s.up(a, b) && s.peer(b, a).unwrap().session.is_some())
        .unwrap_or_else(|| panic!("still half-open after {limit:?}\n{}", s.describe()));
    eprintln!("half-open link healed after {t:?}");
    s.data_flows(&[a, b]).unwrap();
}

/// KNOWN ISSUE (fails today): the same conntrack pinning as in the lossy racing-NAT test. When one of two
/// racing NATs rebinds, the host's packets from its new port hit the peer's router before the peer ever
/// sent there (pinned), and the peer's packets to the old port are dropped; the link is re-made only after
/// both sides happen to stay quiet for 30 s (seen: ~170 s).
#[test]
fn nat_rebinding_between_two_racing_nats_recovers_within_a_minute() {
    let (mut s, a, b) = two_nat_sites(72);
    connect(&mut s, &[a, b], secs(10));
    s.run_for(secs(5));
    let inside = s.hosts[a].local;
    let sa = s.hosts[a].site;
    s.nat_mut(sa).rebind(inside);
    let t = s.run_until_cond(secs(600), |s| s.up(a, b) && s.peer(a, b).unwrap().stats.handshakes > 1);
    eprintln!("double NAT rebinding: relinked after {t:?}");
    assert!(t.is_some_and(|t| t < secs(60)), "relinked after {t:?}");
}

// -------------------------------------------------------------------------------------------------------------
// 8. Wrong secret

/// A rolodex frame sealed with `key`, as from the rolodex.
fn rolodex_frame(key: &[u8; 32], wall: u64, body: Body) -> Vec<u8> {
    let msg = Message { seq: wall, sender: String::new(), body };
    FrameKey::new(NETWORK, key).seal(&msg, [7; 12]).unwrap()
}

#[test]
fn an_engine_with_the_wrong_secret_gets_nowhere() {
    let mut s = Sim::new(8);
    let sa = s.add_nat_site([192, 168, 1], true);
    let a = s.add_host(sa, "node-a", 51820);
    let b = s.add_public_host("node-b", 51820);
    // Sorts first, so it would be the DTLS client towards both.
    let evil_secret = b"not-the-network-secret-at-all!!".to_vec();
    let e = s.add_public_host("node-0", 51820);
    s.hosts[e].cfg.secret = evil_secret.clone();
    s.restart_host(e, None);
    connect(&mut s, &[a, b], secs(10));

    // Suppose it learnt the members' addresses anyway (a rolodex of its own tells it): it punches them.
    let evil_key = rolodex::keys::derive(&evil_secret, NETWORK, rolodex::keys::KeyUse::Rolodex);
    let entries: Vec<PeerEntry> = [a, b]
        .iter()
        .map(|&h| PeerEntry {
            name: s.hosts[h].name.clone(),
            incarnation: s.engine(h).incarnation(),
            overlay: vec![rolodex::IpNet::host(IpAddr::V4(s.hosts[h].overlay))],
            routes: vec![],
            reflexive: s.engine(h).reflexive().unwrap(),
            candidates: vec![s.hosts[h].local],
        })
        .collect();
    let frame = rolodex_frame(&evil_key, s.wall(), Body::Peers { introduce: true, listing: None, entries });
    let (now, wall) = (s.now, s.wall());
    let mut f = frame.clone();
    s.engine_mut(e).handle_datagram(now, wall, ROLODEX, &mut f);
    s.drain(e);
    assert_eq!(s.engine(e).peers().count(), 2, "the forged introduction took");

    let never_up = |s: &Sim| s.engine(e).peers().all(|p| p.state != LinkState::Up);
    run_checking(&mut s, secs(120), "the impostor never links up", never_up);
    let unauth = drops(&s, b, DropReason::Unauthenticated);
    assert!(unauth > 0, "its probes reached node-b and were refused");
    assert!(s.hosts[e].inbox.is_empty(), "delivered something");
    for &h in &[a, b] {
        assert!(s.peer(h, e).is_none(), "the rolodex listed the impostor to {}", s.hosts[h].name);
    }
    assert_eq!(s.server.as_ref().unwrap().member_count(NETWORK), 2);
    assert!(s.server_drops > 0, "its registrations were refused");
    // It cannot send: no link.
    let pkt = ipv4_packet(s.hosts[e].overlay, s.hosts[b].overlay, b"let me in");
    assert!(!s.send_packet(e, &pkt));
    assert!(s.hosts[b].inbox.iter().all(|p| p != &pkt));
    // The members are fine.
    assert!(s.up(a, b));
    s.data_flows(&[a, b]).unwrap();
}

// -------------------------------------------------------------------------------------------------------------
// 9. The data path's defences

#[test]
fn data_path_rejects_replays_tampering_spoofed_sources_and_unknown_destinations() {
    let (mut s, a, b) = two_nat_sites(9);
    connect(&mut s, &[a, b], secs(10));
    let from_a = s.endpoint(b, a).unwrap();
    let (now, wall) = (s.now, s.wall());
    let deliver = |s: &mut Sim, d: &[u8]| {
        let mut buf = d.to_vec();
        match s.engine_mut(b).handle_datagram(now, wall, from_a, &mut buf) {
            super::Inbound::Deliver(r) => Some(buf[r].to_vec()),
            super::Inbound::Done => None,
        }
    };

    // Tampering: every byte of a genuine datagram, flipped, is refused.
    let pkt = s.app_packet(a, b);
    let (dst, datagram) = s.seal(a, &pkt, now).unwrap();
    assert_eq!(dst, s.endpoint(a, b).unwrap());
    for i in 0..datagram.len() {
        for flip in [0x01, 0x80, 0xff] {
            let mut d = datagram.clone();
            d[i] ^= flip;
            assert_eq!(deliver(&mut s, &d), None, "byte {i} ^ {flip:#x} accepted");
        }
    }
    // Forgeries did not burn the counter: the genuine datagram still goes through, once.
    let decrypt_before = drops(&s, b, DropReason::Decrypt);
    assert_eq!(deliver(&mut s, &datagram), Some(pkt.clone()));
    assert_eq!(deliver(&mut s, &datagram), None, "replay delivered");
    assert_eq!(drops(&s, b, DropReason::Decrypt), decrypt_before + 1, "replay counted");
    // An old datagram replayed after newer ones is refused too.
    let older_pkt = s.app_packet(a, b);
    let older = s.seal(a, &older_pkt, now).unwrap().1;
    let newer_pkt = s.app_packet(a, b);
    let newer = s.seal(a, &newer_pkt, now).unwrap().1;
    assert_eq!(deliver(&mut s, &newer), Some(newer_pkt));
    assert!(deliver(&mut s, &older).is_some(), "out of order within the window is fine");
    assert_eq!(deliver(&mut s, &older), None);

    // A peer may only send from its own overlay addresses.
    let before = drops(&s, b, DropReason::BadSource);
    let spoofed = ipv4_packet(Ipv4Addr::new(100, 64, 0, 99), s.hosts[b].overlay, b"spoofed");
    let d = s.seal(a, &spoofed, now).unwrap().1;
    assert_eq!(deliver(&mut s, &d), None, "spoofed source delivered");
    assert_eq!(drops(&s, b, DropReason::BadSource), before + 1);
    let outside = ipv4_packet(Ipv4Addr::new(8, 8, 8, 8), s.hosts[b].overlay, b"spoofed");
    let d = s.seal(a, &outside, now).unwrap().1;
    assert_eq!(deliver(&mut s, &d), None);
    assert_eq!(drops(&s, b, DropReason::BadSource), before + 2);

    // Unknown destinations are refused at the sender and counted.
    let before = drops(&s, a, DropReason::UnknownDestination);
    for dst in [Ipv4Addr::new(100, 64, 0, 200), Ipv4Addr::new(8, 8, 8, 8)] {
        let p = ipv4_packet(s.hosts[a].overlay, dst, b"nobody");
        assert!(!s.send_packet(a, &p), "sent to {dst}");
    }
    assert_eq!(drops(&s, a, DropReason::UnknownDestination), before + 2);
    let before = drops(&s, a, DropReason::Malformed);
    assert!(!s.send_packet(a, &[0x45, 0, 0]), "a truncated packet was sent");
    assert_eq!(drops(&s, a, DropReason::Malformed), before + 1);

    // None of it hurt the link.
    s.data_flows(&[a, b]).unwrap();
}

// -------------------------------------------------------------------------------------------------------------
// 10. Loss

/// Two hosts behind NATs with 10% loss on every hop (host-router, core, router-host: ~27% per datagram
/// between the sites) and 2% duplication: time to link up, or None within `limit`.
fn lossy_trial(seed: u64, race: bool, limit: Duration) -> (Sim, usize, usize, Option<Duration>) {
    let mut s = Sim::new(seed);
    s.loss = 0.10;
    s.dup = 0.02;
    let sa = s.add_nat_site([192, 168, 1], race);
    let sb = s.add_nat_site([192, 168, 2], race);
    let a = s.add_host(sa, "node-a", 51820);
    let b = s.add_host(sb, "node-b", 51820);
    let t = s.run_until_cond(limit, |s| s.up(a, b));
    (s, a, b, t)
}

/// Port-restricted NATs without conntrack's race (see the ignored test below for the racing kind).
#[test]
fn ten_percent_loss_on_every_link_still_connects() {
    let mut times = vec![];
    for seed in 0..10 {
        let (mut s, a, b, t) = lossy_trial(10_000 + seed, false, secs(30));
        assert!(t.is_some(), "seed {seed}: not up within 30 s at 10% loss\n{}", s.describe());
        times.push(t.unwrap());
        // Data gets through too (a few tries: each packet crosses three lossy hops).
        let ok = (0..10).any(|_| s.exchange(a, b, secs(1)) == (true, true));
        assert!(ok, "seed {seed}: no data\n{}", s.describe());
        // At ~27% loss per datagram a link may flap (two keepalives in a row lost), but it never stays down:
        // the side that gave up re-punches, and the other notices within its dead-peer time.
        let back = KEEPALIVE * 2 + secs(5) + secs(15);
        for _ in 0..4 {
            s.run_for(secs(30));
            assert!(
                s.run_until_cond(back, |s| s.up(a, b)).is_some(),
                "seed {seed}: stuck down\n{}",
                s.describe()
            );
        }
    }
    eprintln!("10% loss per hop, 2% duplication: connect times {times:?}");
}

/// KNOWN ISSUE (fails today): with conntrack-race NATs, a lost introduction (or a lost low-TTL probe) means
/// one side's normal probes reach the other's router before that side opened its own mapping; the
/// router then pins (prober -> port) for 30 s and every further probe refreshes it, while the late side's
/// flow leaves from another port the prober never learns. Punch rounds and backoffs of the two sides are
/// not synchronised, so the 30 s of silence needed to clear it come only after minutes (seen: 16 of 40
/// seeds took 150-400 s). The other tests avoid the combination; this one keeps it reproducible.
#[test]
fn ten_percent_loss_with_racing_nats_connects_within_30s() {
    let mut times = vec![];
    for seed in 0..20 {
        let (_, _, _, t) = lossy_trial(10_000 + seed, true, secs(30));
        times.push(t);
    }
    eprintln!("racing NATs, 10% loss per hop: {times:?}");
    assert!(
        times.iter().all(Option::is_some),
        "{} of 20 not up within 30 s",
        times.iter().filter(|t| t.is_none()).count()
    );
}

// -------------------------------------------------------------------------------------------------------------
// 11. Garbage

#[test]
fn random_garbage_never_panics_and_never_hurts_the_link() {
    let (mut s, a, b) = two_nat_sites(11);
    connect(&mut s, &[a, b], secs(10));
    s.data_flows(&[a, b]).unwrap();
    let peer_ep = [s.endpoint(b, a).unwrap(), s.endpoint(a, b).unwrap()];
    let rx_index = [s.peer(b, a).unwrap().rx_index, s.peer(a, b).unwrap().rx_index];
    let firsts: Vec<u8> = [0x01, 0x02, 0x03, 0x52].into_iter().chain(20..=25).collect();
    let inboxes = [s.hosts[b].inbox.len(), s.hosts[a].inbox.len()];
    for i in 0..100_000u32 {
        let (target, k) = if i % 2 == 0 { (b, 0) } else { (a, 1) };
        let rng = s.rng();
        let len = rng.random_range(0..1500);
        let mut d: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        if let Some(x) = d.first_mut() {
            *x = if rng.random_bool(0.9) { firsts[rng.random_range(0..firsts.len())] } else { rng.random() };
        }
        let structured = rng.random_bool(0.5);
        if structured && d.len() >= 16 {
            match d[0] {
                // A data header with the real receive index.
                0x01 => {
                    d[1..4].fill(0);
                    d[4..8].copy_from_slice(&rx_index[k].to_be_bytes());
                }
                // A well-framed DTLS record (sometimes a ClientHello-looking one).
                20..=25 if d.len() >= 13 => {
                    d[1..3].copy_from_slice(&[0xfe, 0xfd]);
                    if rng.random_bool(0.5) {
                        d[3..5].fill(0);
                    }
                    let n = (d.len() - 13) as u16;
                    d[11..13].copy_from_slice(&n.to_be_bytes());
                    if d.len() > 25 && rng.random_bool(0.3) {
                        d[0] = 22;
                        d[13] = 1;
                        d[19..22].fill(0);
                    }
                }
                _ => {}
            }
        }
        let src = match rng.random_range(0..4) {
            0 => peer_ep[k],
            1 => ROLODEX,
            _ => SocketAddr::new(IpAddr::V4(Ipv4Addr::from(rng.random::<u32>())), rng.random()),
        };
        let (now, wall) = (s.now, s.wall());
        let out = s.engine_mut(target).handle_datagram(now, wall, src, &mut d);
        assert_eq!(out, super::Inbound::Done, "garbage #{i} was delivered");
        // Whatever the engine answers goes out on the (simulated) wire.
        s.drain(target);
        if i % 1000 == 999 {
            s.run_for(ms(20));
            assert!(s.up(a, b), "link down during garbage #{i}\n{}", s.describe());
        }
    }
    assert_eq!([s.hosts[b].inbox.len(), s.hosts[a].inbox.len()], inboxes, "garbage reached the TUN device");
    let total: u64 = [a, b].iter().map(|&h| s.engine(h).stats().drops.iter().sum::<u64>()).sum();
    eprintln!("garbage: drops a={:?} b={:?}", s.engine(a).stats().drops, s.engine(b).stats().drops);
    assert!(total > 50_000, "garbage is counted as dropped");
    run_checking(&mut s, secs(90), "link Up after the garbage", |s| s.up(a, b));
    s.data_flows(&[a, b]).unwrap();
}
