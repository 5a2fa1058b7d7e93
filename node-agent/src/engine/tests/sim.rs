//! A simulated internet for the sans-IO engine: sites behind NAT routers, public hosts, the real rolodex
//! server, per-path latency, seeded loss and duplication, and a virtual clock that jumps from event to
//! event. Nothing here sleeps, opens a socket or needs root.
//!
//! Topology: every host sits at a site. A NAT site has a LAN (hosts talk to each other directly over it)
//! and a router with one public IP; a public site is one host with a public IP (so is the rolodex). A
//! packet crosses at most: host -> own router (LAN latency) -> core (per site pair latency) -> remote
//! router -> host (LAN latency). The NAT state changes when a packet passes the router, at that moment
//! of simulated time, so races between crossing packets play out as they would on the wire.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng, rngs::StdRng};
use rolodex::keys::{self, KeyUse};
use rolodex::server::{Server, ServerConfig};

use crate::crypto::header::TAG_LEN;
use crate::engine::{Engine, EngineConfig, HEADROOM, Inbound};
use crate::peer::{LinkState, Peer};

pub const NETWORK: &str = "testnet";
pub const SECRET: &[u8] = b"rolomesh-sim-test-secret-0123456789";
pub const ROLODEX: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)), 6264);
pub const WALL0: u64 = 1_800_000_000_000_000;
pub const KEEPALIVE: Duration = Duration::from_secs(25);
pub const HEARTBEAT: Duration = Duration::from_secs(10);

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

/// The engine configuration every test host starts from.
pub fn config(name: &str, overlay: Ipv4Addr, candidates: Vec<SocketAddr>) -> EngineConfig {
    EngineConfig {
        network: NETWORK.into(),
        name: name.into(),
        secret: SECRET.to_vec(),
        overlay: vec![(IpAddr::V4(overlay), 10)],
        routes: vec![],
        rolodexes: vec![ROLODEX],
        candidates,
        keepalive: KEEPALIVE,
        heartbeat: HEARTBEAT,
        punch_ttl: 2,
        freshness: secs(60),
    }
}

pub fn rolodex_key() -> [u8; 32] {
    keys::derive(SECRET, NETWORK, KeyUse::Rolodex)
}

/// A valid IPv4/UDP-protocol packet (20-byte header with checksum, then `payload`).
pub fn ipv4_packet(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let mut sum: u32 = p[..20].chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    p[20..].copy_from_slice(payload);
    p
}

// ---------------------------------------------------------------------------------------------------------
// NAT

/// One outbound flow (conntrack entry) from an inside host to one remote address.
#[derive(Debug, Clone, Copy)]
struct Flow {
    port: u16,
    last: Instant,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct NatStats {
    /// Outbound flows that got a different public port because of an earlier unsolicited inbound packet.
    pub race_hits: u64,
    pub inbound_dropped: u64,
    pub inbound_forwarded: u64,
}

/// A Linux-like NAT router: endpoint-independent mapping that keeps the inside source port when free,
/// address-and-port-dependent filtering (a stateful firewall), idle expiry, and optionally conntrack's
/// race: an unsolicited inbound packet from R to public port P leaves an entry (R <-> P) behind, so a later
/// outbound flow from the inside to R cannot use P and gets another port, while inbound R -> P stays
/// dropped (the entry is refreshed by every such packet and expires after `timeout` of silence).
pub struct Nat {
    pub race: bool,
    pub timeout: Option<Duration>,
    /// (inside address, remote address) -> flow.
    flows: HashMap<(SocketAddr, SocketAddr), Flow>,
    /// Endpoint-independent binding: the public port of each inside address.
    bindings: HashMap<SocketAddr, u16>,
    /// Port forced on an inside address' next binding (rebinding).
    prefer: HashMap<SocketAddr, u16>,
    /// (remote, public port) entries left by unsolicited inbound packets.
    blocked: HashMap<(SocketAddr, u16), Instant>,
    rng: StdRng,
    pub stats: NatStats,
}

impl Nat {
    pub fn new(race: bool, seed: u64) -> Self {
        Nat {
            race,
            timeout: Some(secs(30)),
            flows: HashMap::new(),
            bindings: HashMap::new(),
            prefer: HashMap::new(),
            blocked: HashMap::new(),
            rng: StdRng::seed_from_u64(seed),
            stats: NatStats::default(),
        }
    }

    fn expire(&mut self, now: Instant) {
        let Some(t) = self.timeout else { return };
        self.flows.retain(|_, f| now.duration_since(f.last) < t);
        self.blocked.retain(|_, last| now.duration_since(*last) < t);
        let live: HashSet<SocketAddr> = self.flows.keys().map(|(l, _)| *l).collect();
        self.bindings.retain(|l, _| live.contains(l));
    }

    fn port_owner(&self, port: u16) -> Option<SocketAddr> {
        self.bindings
            .iter()
            .find(|(_, p)| **p == port)
            .map(|(l, _)| *l)
            .or_else(|| self.flows.iter().find(|(_, f)| f.port == port).map(|((l, _), _)| *l))
    }

    fn random_port(&mut self, remote: SocketAddr) -> u16 {
        loop {
            let p = self.rng.random_range(1024..=65535u16);
            if self.port_owner(p).is_none() && !self.blocked.contains_key(&(remote, p)) {
                return p;
            }
        }
    }

    /// An inside host at `inside` sends to `remote`: the public port the packet leaves with.
    pub fn outbound(&mut self, inside: SocketAddr, remote: SocketAddr, now: Instant) -> u16 {
        self.expire(now);
        if let Some(f) = self.flows.get_mut(&(inside, remote)) {
            f.last = now;
            return f.port;
        }
        let binding = match self.bindings.get(&inside) {
            Some(p) => *p,
            None => {
                let want = self.prefer.remove(&inside).unwrap_or(inside.port());
                let p = if self.port_owner(want).is_none_or(|o| o == inside) {
                    want
                } else {
                    self.random_port(remote)
                };
                self.bindings.insert(inside, p);
                p
            }
        };
        let port = if self.blocked.contains_key(&(remote, binding)) {
            // conntrack: the reply tuple (remote -> public:binding) is taken by the inbound entry.
            self.stats.race_hits += 1;
            self.random_port(remote)
        } else {
            binding
        };
        self.flows.insert((inside, remote), Flow { port, last: now });
        port
    }

    /// A packet from `remote` arrives at public port `port`: the inside address it goes to, if allowed.
    pub fn inbound(&mut self, remote: SocketAddr, port: u16, now: Instant) -> Option<SocketAddr> {
        self.expire(now);
        if let Some(last) = self.blocked.get_mut(&(remote, port)) {
            *last = now;
            self.stats.inbound_dropped += 1;
            return None;
        }
        let hit = self.flows.iter_mut().find(|((_, r), f)| *r == remote && f.port == port);
        if let Some(((inside, _), f)) = hit {
            f.last = now;
            self.stats.inbound_forwarded += 1;
            return Some(*inside);
        }
        if self.race {
            self.blocked.insert((remote, port), now);
        }
        self.stats.inbound_dropped += 1;
        None
    }

    /// The router forgets `inside`'s mappings and its next packets leave from a new public port.
    pub fn rebind(&mut self, inside: SocketAddr) -> u16 {
        let old = self.bindings.remove(&inside);
        self.flows.retain(|(l, _), _| *l != inside);
        let mut p = self.rng.random_range(1024..=65535u16);
        while Some(p) == old || self.port_owner(p).is_some() {
            p = self.rng.random_range(1024..=65535u16);
        }
        self.prefer.insert(inside, p);
        p
    }

    /// The public port `inside` currently uses towards `remote`, if any.
    pub fn mapping(&self, inside: SocketAddr, remote: SocketAddr) -> Option<u16> {
        self.flows.get(&(inside, remote)).map(|f| f.port)
    }
}

// ---------------------------------------------------------------------------------------------------------
// Sites, hosts and packets in flight

pub struct Site {
    /// The router's public address, or the public host's own address.
    pub public_ip: Ipv4Addr,
    /// First three octets of the LAN /24 (NAT sites only).
    pub lan: Option<[u8; 3]>,
    pub nat: Option<Nat>,
    /// One-way latency between a host and its router.
    pub lan_latency: Duration,
    next_host: u8,
}

pub struct Host {
    pub name: String,
    pub site: usize,
    /// The host's own socket address (LAN address behind a NAT).
    pub local: SocketAddr,
    pub overlay: Ipv4Addr,
    pub cfg: EngineConfig,
    pub engine: Option<Engine>,
    /// Packets the engine handed to the TUN device.
    pub inbox: Vec<Vec<u8>>,
    /// Unplugged: nothing from or to it is delivered.
    pub unplugged: bool,
}

#[derive(Debug, Clone, Copy)]
enum Hop {
    /// Arrives at the router of this site from its LAN.
    NatOut(usize),
    /// Arrives from the core at the router (or public host, or rolodex) that owns the destination IP.
    Edge,
    /// Arrives at a host's socket at this site.
    Host(usize),
}

#[derive(Clone)]
struct Flight {
    src: SocketAddr,
    dst: SocketAddr,
    ttl: u32,
    payload: Vec<u8>,
    hop: Hop,
}

/// Where a dropped packet died; counted per reason to explain failures.
#[derive(Debug, Default, Clone)]
pub struct NetStats {
    pub sent: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub ttl_expired: u64,
    pub hairpin: u64,
    pub unroutable: u64,
    pub filtered: u64,
    pub cut: u64,
    pub delivered: u64,
}

pub struct Sim {
    pub start: Instant,
    pub now: Instant,
    rng: StdRng,
    pub sites: Vec<Site>,
    /// One-way core latency between sites (symmetric).
    core: Vec<Vec<Duration>>,
    pub hosts: Vec<Host>,
    pub server: Option<Server>,
    pub server_cfg: ServerConfig,
    queue: BTreeMap<(Instant, u64), Flight>,
    seq: u64,
    app_seq: u64,
    /// Per-hop loss and duplication probabilities.
    pub loss: f64,
    pub dup: f64,
    /// Extra random one-way delay per hop, up to this much (lets packets reorder).
    pub jitter: Duration,
    /// Core latency range for new sites.
    pub latency: (Duration, Duration),
    /// Site pairs whose core path is cut.
    pub cuts: HashSet<(usize, usize)>,
    pub stats: NetStats,
    /// Datagrams the rolodex server rejected.
    pub server_drops: u64,
    /// Print every hop to stderr (debugging a failing test).
    pub trace: bool,
}

pub const ROLODEX_SITE: usize = 0;

impl Sim {
    pub fn new(seed: u64) -> Self {
        let now = Instant::now();
        let mut sim = Sim {
            start: now,
            now,
            rng: StdRng::seed_from_u64(seed),
            sites: vec![],
            core: vec![],
            hosts: vec![],
            server: None,
            server_cfg: ServerConfig::default(),
            queue: BTreeMap::new(),
            seq: 0,
            app_seq: 0,
            loss: 0.0,
            dup: 0.0,
            jitter: Duration::ZERO,
            latency: (ms(1), ms(20)),
            cuts: HashSet::new(),
            stats: NetStats::default(),
            server_drops: 0,
            trace: std::env::var_os("SIM_TRACE").is_some(),
        };
        let IpAddr::V4(ip) = ROLODEX.ip() else { unreachable!() };
        sim.push_site(ip, None, None);
        sim.start_server();
        sim
    }

    pub fn wall(&self) -> u64 {
        WALL0 + self.now.duration_since(self.start).as_micros() as u64
    }

    pub fn elapsed(&self) -> Duration {
        self.now.duration_since(self.start)
    }

    /// (Re)starts the rolodex at its address with fresh state.
    pub fn start_server(&mut self) {
        let seed = self.rng.random();
        let nets = [(NETWORK.to_string(), rolodex_key())];
        self.server = Some(Server::new(self.server_cfg.clone(), &nets, self.now, seed));
    }

    fn push_site(&mut self, public_ip: Ipv4Addr, lan: Option<[u8; 3]>, nat: Option<Nat>) -> usize {
        let i = self.sites.len();
        let lan_latency = if lan.is_some() {
            Duration::from_micros(self.rng.random_range(200..=1000))
        } else {
            Duration::ZERO
        };
        self.sites.push(Site { public_ip, lan, nat, lan_latency, next_host: 10 });
        let (lo, hi) = (self.latency.0.as_micros() as u64, self.latency.1.as_micros() as u64);
        let row: Vec<Duration> =
            (0..=i).map(|_| Duration::from_micros(self.rng.random_range(lo..=hi.max(lo)))).collect();
        for (j, d) in row.iter().enumerate().take(i) {
            self.core[j].push(*d);
        }
        self.core.push(row);
        i
    }

    /// A site behind a NAT router with public IP 203.0.113.<n> and LAN `lan`.0/24.
    pub fn add_nat_site(&mut self, lan: [u8; 3], race: bool) -> usize {
        let ip = Ipv4Addr::new(203, 0, 113, self.sites.len() as u8);
        let seed = self.rng.random();
        self.push_site(ip, Some(lan), Some(Nat::new(race, seed)))
    }

    /// A host with a public address of its own (no NAT, no firewall).
    pub fn add_public_host(&mut self, name: &str, port: u16) -> usize {
        let ip = Ipv4Addr::new(192, 0, 2, self.sites.len() as u8);
        let site = self.push_site(ip, None, None);
        self.add_host_at(site, name, SocketAddr::new(IpAddr::V4(ip), port), |_| {})
    }

    /// A host on a NAT site's LAN, with its LAN address as its candidate.
    pub fn add_host(&mut self, site: usize, name: &str, port: u16) -> usize {
        self.add_host_with(site, name, port, |_| {})
    }

    pub fn add_host_with(
        &mut self,
        site: usize,
        name: &str,
        port: u16,
        f: impl FnOnce(&mut EngineConfig),
    ) -> usize {
        let s = &mut self.sites[site];
        let lan = s.lan.expect("hosts behind a NAT need a NAT site");
        let ip = Ipv4Addr::new(lan[0], lan[1], lan[2], s.next_host);
        s.next_host += 1;
        self.add_host_at(site, name, SocketAddr::new(IpAddr::V4(ip), port), f)
    }

    fn add_host_at(
        &mut self,
        site: usize,
        name: &str,
        local: SocketAddr,
        f: impl FnOnce(&mut EngineConfig),
    ) -> usize {
        let i = self.hosts.len();
        let overlay = Ipv4Addr::new(100, 64, 0, i as u8 + 1);
        let mut cfg = config(name, overlay, vec![local]);
        f(&mut cfg);
        let engine = Engine::new(cfg.clone(), self.now, self.rng.random());
        self.hosts.push(Host {
            name: name.into(),
            site,
            local,
            overlay,
            cfg,
            engine: Some(engine),
            inbox: vec![],
            unplugged: false,
        });
        i
    }

    /// The agent on host `h` restarts (new incarnation), optionally on a new local port.
    pub fn restart_host(&mut self, h: usize, new_port: Option<u16>) {
        let seed = self.rng.random();
        let host = &mut self.hosts[h];
        if let Some(p) = new_port {
            host.local.set_port(p);
            host.cfg.candidates = vec![host.local];
        }
        host.engine = Some(Engine::new(host.cfg.clone(), self.now, seed));
    }

    pub fn engine(&self, h: usize) -> &Engine {
        self.hosts[h].engine.as_ref().expect("host has an engine")
    }

    pub fn engine_mut(&mut self, h: usize) -> &mut Engine {
        self.hosts[h].engine.as_mut().expect("host has an engine")
    }

    /// Host `a`'s view of host `b`.
    pub fn peer(&self, a: usize, b: usize) -> Option<&Peer> {
        let name = &self.hosts[b].name;
        self.hosts[a].engine.as_ref()?.peers().find(|p| &p.name == name)
    }

    pub fn state(&self, a: usize, b: usize) -> Option<LinkState> {
        self.peer(a, b).map(|p| p.state)
    }

    pub fn endpoint(&self, a: usize, b: usize) -> Option<SocketAddr> {
        self.peer(a, b).and_then(|p| p.endpoint)
    }

    pub fn up(&self, a: usize, b: usize) -> bool {
        self.state(a, b) == Some(LinkState::Up) && self.state(b, a) == Some(LinkState::Up)
    }

    pub fn all_up(&self, hosts: &[usize]) -> bool {
        hosts.iter().all(|&a| hosts.iter().all(|&b| a == b || self.state(a, b) == Some(LinkState::Up)))
    }

    /// Public address of a site's NAT mapping for host `h` towards `remote`.
    pub fn mapping(&self, h: usize, remote: SocketAddr) -> Option<SocketAddr> {
        let host = &self.hosts[h];
        let site = &self.sites[host.site];
        match &site.nat {
            Some(nat) => {
                nat.mapping(host.local, remote).map(|p| SocketAddr::new(IpAddr::V4(site.public_ip), p))
            }
            None => Some(host.local),
        }
    }

    pub fn nat_mut(&mut self, site: usize) -> &mut Nat {
        self.sites[site].nat.as_mut().expect("NAT site")
    }

    /// A one-line description of every link, for assertion messages.
    pub fn describe(&self) -> String {
        let mut s = format!("t={:?}", self.elapsed());
        for (i, h) in self.hosts.iter().enumerate() {
            let Some(e) = &h.engine else {
                s += &format!("\n  [{i}] {}: no engine", h.name);
                continue;
            };
            s += &format!(
                "\n  [{i}] {} local={} reflexive={:?} drops={:?}",
                h.name,
                h.local,
                e.reflexive(),
                e.stats().drops
            );
            for p in e.peers() {
                s += &format!(
                    "\n      -> {} {:?} endpoint={:?} candidates={:?} handshakes={}",
                    p.name, p.state, p.endpoint, p.candidates, p.stats.handshakes
                );
            }
        }
        s + &format!("\n  net={:?}", self.stats)
    }

    // -----------------------------------------------------------------------------------------------------
    // Packet movement

    fn log(&self, what: std::fmt::Arguments<'_>) {
        if self.trace {
            eprintln!("{:>12.3?} {what}", self.elapsed());
        }
    }

    fn site_of_ip(&self, ip: IpAddr) -> Option<usize> {
        let IpAddr::V4(ip) = ip else { return None };
        self.sites.iter().position(|s| s.public_ip == ip)
    }

    fn on_lan(&self, site: usize, ip: IpAddr) -> bool {
        match (self.sites[site].lan, ip) {
            (Some(lan), IpAddr::V4(ip)) => ip.octets()[..3] == lan,
            _ => false,
        }
    }

    /// Schedules one hop `delay` from now, applying loss, duplication and jitter.
    fn schedule(&mut self, delay: Duration, f: Flight) {
        if self.loss > 0.0 && self.rng.random_bool(self.loss) {
            self.stats.lost += 1;
            self.log(format_args!("  lost {} -> {} {:?}", f.src, f.dst, f.hop));
            return;
        }
        if self.dup > 0.0 && self.rng.random_bool(self.dup) {
            self.stats.duplicated += 1;
            let extra = self.jitter() + Duration::from_micros(300);
            self.enqueue(delay + extra, f.clone());
        }
        let extra = self.jitter();
        self.enqueue(delay + extra, f);
    }

    fn jitter(&mut self) -> Duration {
        let j = self.jitter.as_micros() as u64;
        if j == 0 { Duration::ZERO } else { Duration::from_micros(self.rng.random_range(0..=j)) }
    }

    fn enqueue(&mut self, delay: Duration, f: Flight) {
        self.seq += 1;
        self.queue.insert((self.now + delay, self.seq), f);
    }

    /// Host `h` sends a datagram from its socket.
    pub fn send_from(&mut self, h: usize, dst: SocketAddr, payload: Vec<u8>, ttl: Option<u32>) {
        let host = &self.hosts[h];
        if host.unplugged {
            return;
        }
        self.stats.sent += 1;
        let (site, src) = (host.site, host.local);
        self.log(format_args!("{} {src} -> {dst} ttl={ttl:?} {}", host.name, kind(&payload)));
        let ttl = ttl.unwrap_or(64);
        if dst == src {
            // Loopback.
            self.schedule(Duration::ZERO, Flight { src, dst, ttl, payload, hop: Hop::Host(site) });
            return;
        }
        let lan_latency = self.sites[site].lan_latency;
        if self.sites[site].nat.is_some() {
            if self.on_lan(site, dst.ip()) {
                self.schedule(lan_latency * 2, Flight { src, dst, ttl, payload, hop: Hop::Host(site) });
            } else {
                self.schedule(lan_latency, Flight { src, dst, ttl, payload, hop: Hop::NatOut(site) });
            }
        } else {
            self.forward(site, src, dst, ttl, payload);
        }
    }

    /// A packet leaves `site` for the core with public source `src`.
    fn forward(&mut self, site: usize, src: SocketAddr, dst: SocketAddr, ttl: u32, payload: Vec<u8>) {
        if ttl < 3 {
            self.stats.ttl_expired += 1;
            return;
        }
        let Some(to) = self.site_of_ip(dst.ip()) else {
            self.stats.unroutable += 1;
            return;
        };
        if self.cuts.contains(&(site.min(to), site.max(to))) {
            self.stats.cut += 1;
            return;
        }
        let d = self.core[site][to];
        self.schedule(d, Flight { src, dst, ttl, payload, hop: Hop::Edge });
    }

    fn process(&mut self, f: Flight) {
        match f.hop {
            Hop::NatOut(site) => {
                if f.ttl < 2 {
                    self.stats.ttl_expired += 1;
                    return;
                }
                let s = &mut self.sites[site];
                if dst_is(f.dst, s.public_ip) {
                    // No hairpinning.
                    self.stats.hairpin += 1;
                    return;
                }
                let nat = s.nat.as_mut().expect("NAT site");
                let port = nat.outbound(f.src, f.dst, self.now);
                let src = SocketAddr::new(IpAddr::V4(s.public_ip), port);
                if port != f.src.port() {
                    self.log(format_args!("  NAT{site} {} -> {src} (to {})", f.src, f.dst));
                }
                self.forward(site, src, f.dst, f.ttl, f.payload);
            }
            Hop::Edge => {
                let Some(site) = self.site_of_ip(f.dst.ip()) else { return };
                if site == ROLODEX_SITE {
                    self.deliver_server(f.src, f.dst, &f.payload);
                    return;
                }
                let s = &mut self.sites[site];
                match s.nat.as_mut() {
                    Some(nat) => match nat.inbound(f.src, f.dst.port(), self.now) {
                        Some(inside) => {
                            let d = s.lan_latency;
                            self.schedule(d, Flight { dst: inside, hop: Hop::Host(site), ..f });
                        }
                        None => {
                            self.stats.filtered += 1;
                            self.log(format_args!(
                                "  NAT{site} filtered {} -> {} {}",
                                f.src,
                                f.dst,
                                kind(&f.payload)
                            ));
                        }
                    },
                    None => self.deliver_host(site, f.src, f.dst, f.payload),
                }
            }
            Hop::Host(site) => self.deliver_host(site, f.src, f.dst, f.payload),
        }
    }

    fn deliver_server(&mut self, src: SocketAddr, dst: SocketAddr, payload: &[u8]) {
        if dst != ROLODEX {
            self.stats.unroutable += 1;
            return;
        }
        let (now, wall) = (self.now, self.wall());
        let Some(server) = self.server.as_mut() else { return };
        self.stats.delivered += 1;
        if server.handle(now, wall, src, payload).is_err() {
            self.server_drops += 1;
        }
        self.drain_server();
    }

    fn drain_server(&mut self) {
        let Some(server) = self.server.as_mut() else { return };
        let mut out = vec![];
        while let Some(t) = server.poll_transmit() {
            out.push(t);
        }
        for t in out {
            self.stats.sent += 1;
            self.forward(ROLODEX_SITE, ROLODEX, t.dst, 64, t.payload);
        }
    }

    fn deliver_host(&mut self, site: usize, src: SocketAddr, dst: SocketAddr, mut payload: Vec<u8>) {
        let Some(h) = self.hosts.iter().position(|h| h.site == site && h.local == dst) else {
            self.stats.unroutable += 1;
            return;
        };
        let (now, wall) = (self.now, self.wall());
        let host = &mut self.hosts[h];
        let Some(engine) = host.engine.as_mut() else { return };
        if host.unplugged {
            return;
        }
        self.stats.delivered += 1;
        if let Inbound::Deliver(r) = engine.handle_datagram(now, wall, src, &mut payload) {
            host.inbox.push(payload[r].to_vec());
        }
        self.drain(h);
    }

    /// Sends what host `h`'s engine queued.
    pub fn drain(&mut self, h: usize) {
        let mut out = vec![];
        if let Some(e) = self.hosts[h].engine.as_mut() {
            while let Some(t) = e.poll_transmit() {
                out.push(t);
            }
        }
        for t in out {
            self.send_from(h, t.dst, t.payload, t.ttl);
        }
    }

    // -----------------------------------------------------------------------------------------------------
    // Time

    fn next_event(&self) -> Instant {
        let q = self.queue.keys().next().map(|(t, _)| *t);
        let engines = self.hosts.iter().filter_map(|h| h.engine.as_ref()).map(Engine::poll_timeout);
        let server = self.server.as_ref().map(Server::poll_timeout);
        q.into_iter().chain(engines).chain(server).min().expect("there is always a rolodex or a host")
    }

    /// Advances to the next event (not beyond `limit`) and handles everything due then. False if the
    /// next event lies beyond `limit` (the clock then stands at `limit`).
    pub fn step(&mut self, limit: Instant) -> bool {
        let next = self.next_event();
        if next > limit {
            self.now = self.now.max(limit);
            return false;
        }
        self.now = self.now.max(next);
        let now = self.now;
        // Bound the work at one instant: an engine whose timer never moves past `now` is a busy loop.
        for _ in 0..100_000 {
            let mut moved = false;
            while let Some(entry) = self.queue.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                let f = entry.remove();
                self.process(f);
                moved = true;
            }
            let wall = self.wall();
            for h in 0..self.hosts.len() {
                if let Some(e) = self.hosts[h].engine.as_mut()
                    && e.poll_timeout() <= now
                {
                    e.handle_timeout(now, wall);
                    self.drain(h);
                    moved = true;
                }
            }
            if let Some(s) = self.server.as_mut()
                && s.poll_timeout() <= now
            {
                s.handle_timeout(now, wall);
                self.drain_server();
                moved = true;
            }
            if !moved {
                return true;
            }
        }
        panic!("busy loop at {:?}: a timer does not move past now\n{}", self.elapsed(), self.describe());
    }

    pub fn run_until(&mut self, t: Instant) {
        while self.step(t) {}
    }

    pub fn run_for(&mut self, d: Duration) {
        let t = self.now + d;
        self.run_until(t);
    }

    /// Runs until `cond` holds (checked after every event) or `d` has passed; the time it took.
    pub fn run_until_cond(&mut self, d: Duration, mut cond: impl FnMut(&Sim) -> bool) -> Option<Duration> {
        let t0 = self.now;
        let limit = t0 + d;
        loop {
            if cond(self) {
                return Some(self.now.duration_since(t0));
            }
            if !self.step(limit) {
                return cond(self).then(|| self.now.duration_since(t0));
            }
        }
    }

    // -----------------------------------------------------------------------------------------------------
    // The application: IP packets in and out of the TUN device

    /// Host `h`'s application sends `pkt` (a whole IP packet) into the tunnel; false if the engine refused.
    pub fn send_packet(&mut self, h: usize, pkt: &[u8]) -> bool {
        let now = self.now;
        match self.seal(h, pkt, now) {
            Some((dst, datagram)) => {
                self.send_from(h, dst, datagram, None);
                true
            }
            None => false,
        }
    }

    /// Encrypts `pkt` on host `h` and returns the datagram without sending it.
    pub fn seal(&mut self, h: usize, pkt: &[u8], now: Instant) -> Option<(SocketAddr, Vec<u8>)> {
        let mut buf = vec![0u8; HEADROOM + pkt.len() + TAG_LEN];
        buf[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(pkt);
        let (dst, n) = self.engine_mut(h).encrypt_outbound(now, &mut buf, pkt.len())?;
        buf.truncate(n);
        Some((dst, buf))
    }

    /// A fresh, unique UDP-protocol packet from `a`'s overlay address to `b`'s.
    pub fn app_packet(&mut self, a: usize, b: usize) -> Vec<u8> {
        let n = self.rng.random_range(0..200);
        let mut payload: Vec<u8> = (0..n).map(|_| self.rng.random()).collect();
        payload.extend_from_slice(
            format!("{}->{} #{}", self.hosts[a].name, self.hosts[b].name, self.app_seq).as_bytes(),
        );
        self.app_seq += 1;
        ipv4_packet(self.hosts[a].overlay, self.hosts[b].overlay, &payload)
    }

    /// Sends one packet each way between `a` and `b` and waits up to `patience` for both to arrive intact
    /// and exactly once. Returns which directions worked.
    pub fn exchange(&mut self, a: usize, b: usize, patience: Duration) -> (bool, bool) {
        let ab = self.app_packet(a, b);
        let ba = self.app_packet(b, a);
        let sent_ab = self.send_packet(a, &ab);
        let sent_ba = self.send_packet(b, &ba);
        self.run_until_cond(patience, |s| {
            (!sent_ab || s.hosts[b].inbox.contains(&ab)) && (!sent_ba || s.hosts[a].inbox.contains(&ba))
        });
        // Let duplicates (if any) land before counting.
        self.run_for(ms(100));
        let once = |inbox: &Vec<Vec<u8>>, p: &Vec<u8>| inbox.iter().filter(|x| *x == p).count() == 1;
        (sent_ab && once(&self.hosts[b].inbox, &ab), sent_ba && once(&self.hosts[a].inbox, &ba))
    }

    /// Both directions between every pair of `hosts` carry data.
    pub fn data_flows(&mut self, hosts: &[usize]) -> Result<(), String> {
        for (i, &a) in hosts.iter().enumerate() {
            for &b in &hosts[i + 1..] {
                let (ab, ba) = self.exchange(a, b, secs(2));
                if !(ab && ba) {
                    return Err(format!(
                        "data {}->{}: {ab}, {}->{}: {ba}\n{}",
                        self.hosts[a].name,
                        self.hosts[b].name,
                        self.hosts[b].name,
                        self.hosts[a].name,
                        self.describe()
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }
}

fn kind(p: &[u8]) -> &'static str {
    match p.first() {
        Some(0x01) => "data",
        Some(0x02) => "ping",
        Some(0x03) => "pong",
        Some(20..=25) => "dtls",
        Some(0x52) => "rolodex",
        _ => "?",
    }
}

fn dst_is(dst: SocketAddr, ip: Ipv4Addr) -> bool {
    dst.ip() == IpAddr::V4(ip)
}
