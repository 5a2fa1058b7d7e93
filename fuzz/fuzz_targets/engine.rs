//! The agent engine (`agent::engine::Engine`) under arbitrary datagrams, TUN packets and time.
//!
//! A small world: the real rolodex server and two engines (`node-a` 100.64.0.1/10, `node-b`
//! 100.64.0.2/10) on public addresses, joined by a network the fuzzer controls. Each step is one of:
//! deliver, drop, duplicate or corrupt a datagram in flight; inject a datagram whose first byte is
//! steered among the dispatch values (0x01 data, 0x02/0x03 probes, 20..=25 DTLS, 0x52 rolodex); inject an
//! authentic rolodex frame or probe (the harness knows the network secret, as an insider would); push a
//! TUN packet through `encrypt_outbound` (with `HEADROOM` headroom); move time and run due timers; rebind
//! or restart `node-b`; step the wall clock. Honest traffic alone takes the pair through registration,
//! punching, the DTLS handshake and data, so mutations land in every state.
//!
//! Checks: nothing panics; due timers always move forward (no busy loop); a delivered range lies inside
//! the buffer; an `Up` peer has a session and an endpoint.

#![no_main]

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use agent::crypto::header::TAG_LEN;
use agent::engine::{Engine, EngineConfig, HEADROOM, Inbound};
use agent::probe::{Probe, ProbeKey};
use libfuzzer_sys::fuzz_target;
use rolodex::IpNet;
use rolodex::keys::{self, KeyUse};
use rolodex::proto::{Body, FrameKey, MAX_NAME, Message, PeerEntry};
use rolodex::server::{Server, ServerConfig};
use rolomesh_fuzz::{
    Unstructured, WALL0, body, ip, ip_packet, ipnet, name, pick_addr, seq_near, steered_datagram, take,
};

const NETWORK: &str = "fuzznet";
const SECRET: &[u8] = b"rolomesh-fuzz-test-secret-0123456789";
const MAX_STEPS: usize = 400;
const MAX_IN_FLIGHT: usize = 512;

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

const ROLODEX: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)), 6264);

struct Node {
    engine: Engine,
    addr: SocketAddr,
    overlay: IpAddr,
}

struct World {
    start: Instant,
    now: Instant,
    skew: i64,
    server: Server,
    nodes: [Node; 2],
    net: VecDeque<(SocketAddr, SocketAddr, Vec<u8>)>,
    rolodex_key: FrameKey,
    probe_key: ProbeKey,
    nonce: u64,
    restarts: u64,
}

fn config(name: &str, overlay: IpAddr, addr: SocketAddr, routes: Vec<IpNet>) -> EngineConfig {
    EngineConfig {
        network: NETWORK.into(),
        name: name.into(),
        secret: SECRET.to_vec(),
        overlay: vec![(overlay, 10)],
        routes,
        rolodexes: vec![ROLODEX],
        candidates: vec![addr],
        keepalive: Duration::from_secs(25),
        heartbeat: Duration::from_secs(10),
        punch_ttl: 2,
        freshness: Duration::from_secs(60),
    }
}

fn a_routes() -> Vec<IpNet> {
    vec!["10.1.0.0/16".parse().expect("cidr"), "fd00:1::/64".parse().expect("cidr")]
}

impl World {
    fn new() -> Self {
        let now = Instant::now();
        let addr_a = SocketAddr::new(v4(203, 0, 113, 10), 51820);
        let addr_b = SocketAddr::new(v4(203, 0, 113, 20), 51820);
        let (ov_a, ov_b) = (v4(100, 64, 0, 1), v4(100, 64, 0, 2));
        let rolodex_key = keys::derive(SECRET, NETWORK, KeyUse::Rolodex);
        let server = Server::new(ServerConfig::default(), &[(NETWORK.to_string(), rolodex_key)], now, 1);
        let a = Engine::new(config("node-a", ov_a, addr_a, a_routes()), now, 11);
        let b = Engine::new(config("node-b", ov_b, addr_b, vec![]), now, 22);
        Self {
            start: now,
            now,
            skew: 0,
            server,
            nodes: [
                Node { engine: a, addr: addr_a, overlay: ov_a },
                Node { engine: b, addr: addr_b, overlay: ov_b },
            ],
            net: VecDeque::new(),
            rolodex_key: FrameKey::new(NETWORK, &rolodex_key),
            probe_key: ProbeKey::new(&keys::derive(SECRET, NETWORK, KeyUse::Probe)),
            nonce: 0,
            restarts: 0,
        }
    }

    fn wall(&self) -> u64 {
        let us = self.now.duration_since(self.start).as_micros() as u64;
        WALL0.saturating_add(us).saturating_add_signed(self.skew)
    }

    fn known_addrs(&self) -> [SocketAddr; 4] {
        let other_port = SocketAddr::new(self.nodes[1].addr.ip(), 40000);
        [self.nodes[0].addr, self.nodes[1].addr, ROLODEX, other_port]
    }

    fn push(&mut self, src: SocketAddr, dst: SocketAddr, payload: Vec<u8>) {
        if self.net.len() < MAX_IN_FLIGHT {
            self.net.push_back((src, dst, payload));
        }
    }

    fn drain(&mut self) {
        while let Some(t) = self.server.poll_transmit() {
            self.push(ROLODEX, t.dst, t.payload);
        }
        for i in 0..2 {
            let src = self.nodes[i].addr;
            while let Some(t) = self.nodes[i].engine.poll_transmit() {
                // Low-TTL punching probes expire before reaching the other side.
                if t.ttl.is_none() {
                    self.push(src, t.dst, t.payload);
                }
            }
        }
    }

    fn deliver(&mut self, src: SocketAddr, dst: SocketAddr, mut payload: Vec<u8>) {
        let (now, wall) = (self.now, self.wall());
        if dst == ROLODEX {
            let _ = self.server.handle(now, wall, src, &payload);
        } else if let Some(n) = self.nodes.iter_mut().find(|n| n.addr == dst) {
            let len = payload.len();
            if let Inbound::Deliver(r) = n.engine.handle_datagram(now, wall, src, &mut payload) {
                assert!(r.start <= r.end && r.end <= len, "delivered range {r:?} of a {len}-byte datagram");
                assert!(!r.is_empty(), "delivered an empty packet");
            }
        }
        self.drain();
    }

    fn deliver_at(&mut self, i: usize) {
        if let Some((src, dst, payload)) = self.net.remove(i) {
            self.deliver(src, dst, payload);
        }
    }

    /// Runs every due timer until none is due; they must make progress.
    fn timers(&mut self) {
        let (now, wall) = (self.now, self.wall());
        for round in 0.. {
            let mut due = false;
            for n in &mut self.nodes {
                if n.engine.poll_timeout() <= now {
                    n.engine.handle_timeout(now, wall);
                    due = true;
                }
            }
            if self.server.poll_timeout() <= now {
                self.server.handle_timeout(now, wall);
                due = true;
            }
            self.drain();
            if !due {
                break;
            }
            assert!(round < 64, "busy loop: a timer does not move past now");
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.timers();
    }

    fn next_timeout(&self) -> Instant {
        let engines = self.nodes.iter().map(|n| n.engine.poll_timeout());
        engines.chain([self.server.poll_timeout()]).min().unwrap_or(self.now)
    }

    fn check(&self) {
        for n in &self.nodes {
            for p in n.engine.peers() {
                if p.is_up() {
                    assert!(p.session.is_some(), "{} sees {} up without a session", n.engine.name(), p.name);
                    assert!(
                        p.endpoint.is_some(),
                        "{} sees {} up without an endpoint",
                        n.engine.name(),
                        p.name
                    );
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});

fn entry(u: &mut Unstructured<'_>, w: &World) -> arbitrary::Result<PeerEntry> {
    let known = w.known_addrs();
    let overlays = [w.nodes[0].overlay, w.nodes[1].overlay, v4(100, 64, 0, 3)];
    let mut overlay = Vec::new();
    for _ in 0..u.int_in_range(0..=2u8)? {
        overlay.push(if u.arbitrary()? { IpNet::host(*u.choose(&overlays)?) } else { ipnet(u)? });
    }
    let mut routes = Vec::new();
    for _ in 0..u.int_in_range(0..=3u8)? {
        routes.push(ipnet(u)?);
    }
    let mut candidates = Vec::new();
    for _ in 0..u.int_in_range(0..=3u8)? {
        candidates.push(pick_addr(u, &known)?);
    }
    Ok(PeerEntry {
        name: name(u, 1, MAX_NAME)?,
        incarnation: if u.arbitrary()? { w.nodes[1].engine.incarnation() } else { u.arbitrary()? },
        overlay,
        routes,
        reflexive: pick_addr(u, &known)?,
        candidates,
    })
}

/// An authentic frame from the rolodex, as a compromised rolodex key holder could send.
fn rolodex_frame(u: &mut Unstructured<'_>, w: &mut World) -> arbitrary::Result<Vec<u8>> {
    let seq = seq_near(u, w.wall())?;
    let b = match u.int_in_range(0..=3u8)? {
        0 | 1 => {
            let mut entries = Vec::new();
            for _ in 0..u.int_in_range(0..=3u8)? {
                entries.push(entry(u, w)?);
            }
            let listing = if u.arbitrary()? {
                let pages = u.int_in_range(1..=3u16)?;
                Some(rolodex::proto::Listing {
                    id: u.int_in_range(0..=3)?,
                    page: u.int_in_range(0..=pages - 1)?,
                    pages,
                })
            } else {
                None
            };
            Body::Peers { introduce: u.arbitrary()?, listing, entries }
        }
        _ => body(u)?,
    };
    let sender = if u.ratio(1u8, 8)? { name(u, 0, MAX_NAME)? } else { String::new() };
    w.nonce += 1;
    let mut n = [0xaa; 12];
    n[4..].copy_from_slice(&w.nonce.to_be_bytes());
    Ok(w.rolodex_key.seal(&Message { seq, sender, body: b }, n).unwrap_or_default())
}

fn tun_packet(u: &mut Unstructured<'_>, w: &World, from: usize) -> arbitrary::Result<Vec<u8>> {
    if u.ratio(1u8, 6)? {
        return take(u, 0, 80);
    }
    let own = w.nodes[from].overlay;
    let dsts = [
        w.nodes[1 - from].overlay,
        v4(10, 1, 2, 3),
        IpAddr::V6(Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 5)),
        own,
        v4(100, 64, 0, 3),
    ];
    let src = if u.ratio(7u8, 8)? { own } else { ip(u)? };
    let dst = if u.ratio(7u8, 8)? { *u.choose(&dsts)? } else { ip(u)? };
    let payload = take(u, 0, 64)?;
    Ok(ip_packet(src, dst, &payload))
}

fn run(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let mut w = World::new();
    w.timers();
    for _ in 0..MAX_STEPS {
        if u.is_empty() {
            break;
        }
        match u.int_in_range(0..=19u8)? {
            // Deliver the oldest datagram in flight, or everything in flight (bounded).
            0..=3 => w.deliver_at(0),
            4 | 5 => {
                for _ in 0..64 {
                    if w.net.is_empty() {
                        break;
                    }
                    w.deliver_at(0);
                }
            }
            // Jump to the next timer, or move time by an arbitrary amount.
            6 | 7 => {
                let t = w.next_timeout().min(w.now + Duration::from_secs(3600));
                w.advance(t.saturating_duration_since(w.now));
            }
            8 => {
                let ms: u32 = u.int_in_range(0..=90_000)?;
                w.advance(Duration::from_millis(ms.into()));
            }
            // Network misbehaviour: drop, reorder, duplicate, corrupt.
            9 if !w.net.is_empty() => {
                let i = u.choose_index(w.net.len())?;
                if u.arbitrary()? {
                    w.net.remove(i);
                } else {
                    w.deliver_at(i);
                }
            }
            10 if !w.net.is_empty() => {
                let i = u.choose_index(w.net.len())?;
                let copy = w.net[i].clone();
                w.push(copy.0, copy.1, copy.2);
            }
            11 if !w.net.is_empty() => {
                let i = u.choose_index(w.net.len())?;
                if let Some((src, dst, mut d)) = w.net.remove(i) {
                    if !d.is_empty() {
                        for _ in 0..u.int_in_range(1..=3u8)? {
                            let j = u.choose_index(d.len())?;
                            d[j] ^= u.int_in_range(1..=255u8)?;
                        }
                        if u.ratio(1u8, 4)? {
                            d.truncate(u.choose_index(d.len())?);
                        }
                    }
                    w.deliver(src, dst, d);
                }
            }
            // Attacker datagrams with steered type bytes.
            12 => {
                let to = w.nodes[usize::from(u.arbitrary::<bool>()?)].addr;
                let src = pick_addr(u, &w.known_addrs())?;
                let d = steered_datagram(u)?;
                w.deliver(src, to, d);
            }
            // Insider traffic: authentic rolodex frames and probes.
            13 => {
                let to = w.nodes[usize::from(u.arbitrary::<bool>()?)].addr;
                let f = rolodex_frame(u, &mut w)?;
                w.deliver(ROLODEX, to, f);
            }
            14 => {
                let to = usize::from(u.arbitrary::<bool>()?);
                let sender = name(u, 1, MAX_NAME)?;
                let inc = if u.arbitrary()? { w.nodes[1 - to].engine.incarnation() } else { u.arbitrary()? };
                let p =
                    Probe { pong: u.arbitrary()?, tx_id: u.arbitrary()?, incarnation: inc, sender: &sender };
                let d = w.probe_key.encode(&p);
                let src = pick_addr(u, &w.known_addrs())?;
                let dst = w.nodes[to].addr;
                w.deliver(src, dst, d);
            }
            // The application sends a packet into the tunnel.
            15 | 16 => {
                let from = usize::from(u.arbitrary::<bool>()?);
                let pkt = tun_packet(u, &w, from)?;
                let slack = u.int_in_range(0..=8usize)?;
                let mut buf = vec![0u8; HEADROOM + pkt.len() + TAG_LEN + slack];
                buf[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(&pkt);
                let now = w.now;
                let node = &mut w.nodes[from];
                if let Some((dst, n)) = node.engine.encrypt_outbound(now, &mut buf, pkt.len()) {
                    assert!(n <= buf.len(), "sealed length {n} beyond the {}-byte buffer", buf.len());
                    let src = node.addr;
                    buf.truncate(n);
                    w.push(src, dst, buf);
                }
                w.drain();
            }
            // node-b's NAT rebinds (new public port), or node-b restarts.
            17 => {
                let b = &mut w.nodes[1];
                b.addr.set_port(b.addr.port().wrapping_add(1).max(1));
            }
            18 => {
                w.restarts += 1;
                let now = w.now;
                let b = &mut w.nodes[1];
                b.engine = Engine::new(config("node-b", b.overlay, b.addr, vec![]), now, 22 + w.restarts);
                w.timers();
            }
            // The wall clock steps (NTP), monotonic time does not.
            _ => {
                let s: i16 = u.arbitrary()?;
                w.skew = w.skew.saturating_add(i64::from(s) * 1_000_000);
            }
        }
        w.check();
    }
    if std::env::var_os("ROLOMESH_FUZZ_DEBUG").is_some() {
        eprintln!("after {:?}: {} in flight", w.now.duration_since(w.start), w.net.len());
        for n in &w.nodes {
            let peers: Vec<_> = n
                .engine
                .peers()
                .map(|p| (p.name.clone(), p.state, p.stats.tx_packets, p.stats.rx_packets))
                .collect();
            eprintln!("  {}: peers {peers:?}, stats {:?}", n.engine.name(), n.engine.stats());
        }
    }
    Ok(())
}
