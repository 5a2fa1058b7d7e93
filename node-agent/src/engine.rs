//! The agent as a sans-IO state machine: rolodex sessions, peer links and routing.
//!
//! The driver feeds it datagrams from the one UDP socket ([`Engine::handle_datagram`]), packets read from
//! the TUN device ([`Engine::encrypt_outbound`]) and the time ([`Engine::handle_timeout`] at
//! [`Engine::poll_timeout`]), and sends what [`Engine::poll_transmit`] returns. The per-packet paths work
//! in the caller's buffer and allocate nothing.

mod link;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng, rngs::StdRng};
use rolodex::IpNet;
use rolodex::client::{Client, ClientConfig, Event};
use rolodex::keys::{self, KeyUse};

use crate::crypto::{self, header};
use crate::peer::Peer;
use crate::probe::{self, ProbeKey};
use crate::routes::{self, RouteTable};

/// Headroom the driver leaves before a TUN packet so the data header is written in place.
pub const HEADROOM: usize = header::LEN;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub network: String,
    pub name: String,
    pub secret: Vec<u8>,
    /// Our overlay addresses with the overlay prefix, e.g. 100.64.0.1/10.
    pub overlay: Vec<(IpAddr, u8)>,
    /// Extra prefixes we route for (e.g. this node's pod CIDR).
    pub routes: Vec<IpNet>,
    pub rolodexes: Vec<SocketAddr>,
    pub candidates: Vec<SocketAddr>,
    pub keepalive: Duration,
    pub heartbeat: Duration,
    pub punch_ttl: u32,
    pub freshness: Duration,
}

/// A control datagram to send; `ttl` asks for a one-off IP TTL (hop limit) on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub dst: SocketAddr,
    pub payload: Vec<u8>,
    pub ttl: Option<u32>,
}

/// What to do with an inbound datagram after [`Engine::handle_datagram`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// Write `buf[range]` to the TUN device.
    Deliver(Range<usize>),
    /// Consumed (control traffic) or dropped (counted).
    Done,
}

/// Why a packet was dropped; the label is a metric label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    UnknownDestination,
    NoLink,
    BadSource,
    Decrypt,
    Malformed,
    Unauthenticated,
    UnknownPeer,
}

impl DropReason {
    pub const ALL: [DropReason; 7] = [
        DropReason::UnknownDestination,
        DropReason::NoLink,
        DropReason::BadSource,
        DropReason::Decrypt,
        DropReason::Malformed,
        DropReason::Unauthenticated,
        DropReason::UnknownPeer,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DropReason::UnknownDestination => "unknown_destination",
            DropReason::NoLink => "no_link",
            DropReason::BadSource => "bad_source",
            DropReason::Decrypt => "decrypt",
            DropReason::Malformed => "malformed",
            DropReason::Unauthenticated => "unauthenticated",
            DropReason::UnknownPeer => "unknown_peer",
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub drops: [u64; DropReason::ALL.len()],
    pub rolodex_frames: u64,
}

pub struct Engine {
    cfg: EngineConfig,
    incarnation: u64,
    psk: [u8; 32],
    probe_key: ProbeKey,
    clients: Vec<Client>,
    reflexive: Option<SocketAddr>,
    /// Our address as each rolodex last saw it: a change means our NAT rebound.
    client_reflexive: Vec<Option<SocketAddr>>,
    peers: Vec<Option<Peer>>,
    by_name: HashMap<String, usize>,
    /// Addresses a peer's datagrams arrive from: candidates, endpoints, sources of authentic probes.
    by_addr: HashMap<SocketAddr, usize>,
    routes: RouteTable<usize>,
    out: VecDeque<Transmit>,
    rng: StdRng,
    generation: u16,
    stats: Stats,
    /// Fallback deadline base when there is nothing to wait for (the engine reads no clock).
    created: Instant,
}

impl Engine {
    pub fn new(cfg: EngineConfig, now: Instant, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let incarnation = rng.random();
        let rolodex_key = keys::derive(&cfg.secret, &cfg.network, KeyUse::Rolodex);
        let overlay: Vec<IpNet> = cfg.overlay.iter().map(|(a, _)| IpNet::host(*a)).collect();
        let clients = cfg
            .rolodexes
            .iter()
            .map(|server| {
                let c = ClientConfig {
                    name: cfg.name.clone(),
                    incarnation,
                    overlay: overlay.clone(),
                    routes: cfg.routes.clone(),
                    candidates: cfg.candidates.clone(),
                    heartbeat: cfg.heartbeat,
                    freshness: cfg.freshness,
                };
                Client::new(c, *server, &cfg.network, &rolodex_key, now, rng.random())
            })
            .collect();
        Self {
            psk: keys::derive(&cfg.secret, &cfg.network, KeyUse::DtlsPsk),
            probe_key: ProbeKey::new(&keys::derive(&cfg.secret, &cfg.network, KeyUse::Probe)),
            incarnation,
            clients,
            reflexive: None,
            client_reflexive: vec![None; cfg.rolodexes.len()],
            peers: Vec::new(),
            by_name: HashMap::new(),
            by_addr: HashMap::new(),
            routes: RouteTable::default(),
            out: VecDeque::new(),
            generation: rng.random(),
            rng,
            stats: Stats::default(),
            created: now,
            cfg,
        }
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    pub fn reflexive(&self) -> Option<SocketAddr> {
        self.reflexive
    }

    /// The prefixes this member itself routes for (advertised to peers).
    pub fn own_routes(&self) -> Vec<IpNet> {
        self.cfg.routes.iter().map(IpNet::network).collect()
    }

    pub fn candidates(&self) -> &[SocketAddr] {
        &self.cfg.candidates
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn rolodexes(&self) -> impl Iterator<Item = (SocketAddr, bool)> + '_ {
        self.clients.iter().map(|c| (c.server(), c.is_registered()))
    }

    pub fn peers(&self) -> impl Iterator<Item = &Peer> {
        self.peers.iter().flatten()
    }

    fn drop(&mut self, why: DropReason) {
        self.stats.drops[why as usize] += 1;
    }

    /// Our local interface addresses changed.
    pub fn set_candidates(&mut self, now: Instant, candidates: Vec<SocketAddr>) {
        for c in &mut self.clients {
            c.set_candidates(now, candidates.clone());
        }
        self.cfg.candidates = candidates;
    }

    /// Encrypts the IP packet at `buf[HEADROOM..HEADROOM + len]` in place for the peer that routes its
    /// destination. Returns where to send `buf[..n]`, or `None` if dropped (counted).
    pub fn encrypt_outbound(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        len: usize,
    ) -> Option<(SocketAddr, usize)> {
        let Some(dst) = buf.get(HEADROOM..HEADROOM + len).and_then(routes::dst_of_packet) else {
            self.drop(DropReason::Malformed);
            return None;
        };
        let Some(slot) = self.routes.lookup(dst) else {
            self.drop(DropReason::UnknownDestination);
            return None;
        };
        let Some(peer) = self.peers.get_mut(slot).and_then(Option::as_mut) else {
            self.drop(DropReason::UnknownDestination);
            return None;
        };
        let up = peer.is_up();
        let (Some(session), Some(endpoint), true) = (peer.session.as_mut(), peer.endpoint, up) else {
            self.drop(DropReason::NoLink);
            return None;
        };
        match session.seal(buf, len, peer.tx_index) {
            Ok(n) => {
                peer.last_tx = now;
                peer.stats.tx_packets += 1;
                peer.stats.tx_bytes += len as u64;
                Some((endpoint, n))
            }
            Err(crypto::CryptoError::CounterExhausted { .. }) => {
                // A new handshake replaces the session.
                link::restart(self, slot, now);
                self.drop(DropReason::NoLink);
                None
            }
            Err(_) => {
                self.drop(DropReason::Malformed);
                None
            }
        }
    }

    /// Processes one datagram from the UDP socket; decrypted data is left in `buf`.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        wall_us: u64,
        src: SocketAddr,
        buf: &mut [u8],
    ) -> Inbound {
        match buf.first().copied() {
            Some(header::TYPE_DATA) => self.handle_data(now, src, buf),
            Some(probe::PING | probe::PONG) => {
                link::handle_probe(self, now, src, buf);
                Inbound::Done
            }
            Some(20..=25) => {
                link::handle_dtls(self, now, wall_us, src, buf);
                Inbound::Done
            }
            Some(rolodex::proto::MAGIC) => {
                self.handle_rolodex(now, wall_us, src, buf);
                Inbound::Done
            }
            _ => {
                self.drop(DropReason::Malformed);
                Inbound::Done
            }
        }
    }

    fn handle_data(&mut self, now: Instant, src: SocketAddr, buf: &mut [u8]) -> Inbound {
        let Some(idx) = header::peek_rx_index(buf) else {
            self.drop(DropReason::Malformed);
            return Inbound::Done;
        };
        let slot = (idx & 0xffff) as usize;
        let Some(peer) = self.peers.get_mut(slot).and_then(Option::as_mut).filter(|p| p.rx_index == idx)
        else {
            self.drop(DropReason::UnknownPeer);
            return Inbound::Done;
        };
        let Some(session) = peer.session.as_mut() else {
            self.drop(DropReason::NoLink);
            return Inbound::Done;
        };
        let range = match session.open(buf) {
            Ok(r) => r,
            Err(_) => {
                self.drop(DropReason::Decrypt);
                return Inbound::Done;
            }
        };
        // Authentic: the peer is alive, and if it moved (NAT rebinding) we follow it.
        peer.last_rx = now;
        if peer.endpoint != Some(src) {
            tracing::info!(peer = %peer.name, from = ?peer.endpoint, to = %src, "peer roamed");
            peer.endpoint = Some(src);
            // As in `link::remember_addr`: forget this peer's stale addresses (the endpoint is now `src`).
            let (candidates, endpoint) = (&peer.candidates, peer.endpoint);
            self.by_addr.retain(|a, s| *s != slot || candidates.contains(a) || endpoint == Some(*a));
            self.by_addr.insert(src, slot);
            // Answer at once, so a peer checking its new address hears back without waiting a keepalive.
            let mut ka = [0u8; crypto::OVERHEAD];
            let tx_index = peer.tx_index;
            if let Some(n) = peer.session.as_mut().and_then(|s| s.seal(&mut ka, 0, tx_index).ok()) {
                self.out.push_back(Transmit { dst: src, payload: ka[..n].to_vec(), ttl: None });
            }
        }
        if range.is_empty() {
            return Inbound::Done;
        }
        let allowed = routes::src_of_packet(&buf[range.clone()]).is_some_and(|s| peer.allows_source(s));
        if !allowed {
            self.drop(DropReason::BadSource);
            return Inbound::Done;
        }
        peer.stats.rx_packets += 1;
        peer.stats.rx_bytes += range.len() as u64;
        Inbound::Deliver(range)
    }

    fn handle_rolodex(&mut self, now: Instant, wall_us: u64, src: SocketAddr, buf: &[u8]) {
        let Some(i) = self.clients.iter().position(|c| c.server() == src) else {
            self.drop(DropReason::Unauthenticated);
            return;
        };
        if let Err(e) = self.clients[i].handle(now, wall_us, buf) {
            tracing::debug!(rolodex = %src, error = %e, "dropped rolodex frame");
            self.drop(DropReason::Unauthenticated);
            return;
        }
        self.stats.rolodex_frames += 1;
        self.drain_client(i, now, wall_us);
    }

    fn drain_client(&mut self, i: usize, now: Instant, wall_us: u64) {
        while let Some(ev) = self.clients[i].poll_event() {
            match ev {
                Event::Registered { reflexive } => {
                    let before = self.client_reflexive[i].replace(reflexive);
                    if before.is_some_and(|b| b != reflexive) {
                        tracing::warn!(rolodex = %self.clients[i].server(), from = ?before, to = %reflexive, "our public address changed");
                        link::on_own_address_changed(self, now);
                    }
                    if self.reflexive != Some(reflexive) {
                        tracing::info!(rolodex = %self.clients[i].server(), %reflexive, "registered");
                        self.reflexive = Some(reflexive);
                    }
                }
                Event::RolodexRestarted => {
                    tracing::info!(rolodex = %self.clients[i].server(), "rolodex restarted")
                }
                Event::Unreachable => {
                    tracing::warn!(rolodex = %self.clients[i].server(), "rolodex unreachable")
                }
                Event::Peer { entry, introduce } => link::on_peer(self, i, &entry, introduce, now, wall_us),
                Event::Gone { name, incarnation } => link::on_gone(self, i, &name, incarnation),
                Event::PeerReady { name } => link::on_peer_ready(self, &name, now, wall_us),
            }
        }
    }

    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    #[must_use]
    pub fn poll_timeout(&self) -> Instant {
        let clients = self.clients.iter().map(Client::poll_timeout);
        let peers = self.peers.iter().flatten().map(link::poll_timeout);
        clients.chain(peers).min().unwrap_or(self.created + Duration::from_secs(3600))
    }

    pub fn handle_timeout(&mut self, now: Instant, wall_us: u64) {
        for i in 0..self.clients.len() {
            self.clients[i].handle_timeout(now, wall_us);
            while let Some(payload) = self.clients[i].poll_transmit() {
                self.out.push_back(Transmit { dst: self.clients[i].server(), payload, ttl: None });
            }
            self.drain_client(i, now, wall_us);
        }
        for slot in 0..self.peers.len() {
            if self.peers[slot].as_ref().is_some_and(|p| link::poll_timeout(p) <= now) {
                link::handle_timeout(self, slot, now, wall_us);
            }
        }
        self.flush_clients();
    }

    fn flush_clients(&mut self) {
        for c in &mut self.clients {
            while let Some(payload) = c.poll_transmit() {
                self.out.push_back(Transmit { dst: c.server(), payload, ttl: None });
            }
        }
    }

    /// A fresh receive index for `slot`: the slot in the low bits, a rolling generation above, so that
    /// packets for a replaced session never match the new one.
    fn new_rx_index(&mut self, slot: usize) -> u32 {
        self.generation = self.generation.wrapping_add(1);
        (u32::from(self.generation) << 16) | (slot as u32 & 0xffff)
    }

    /// Checks our own wire format invariants at compile time.
    const _HEADROOM_IS_HEADER: () = assert!(HEADROOM == crypto::OVERHEAD - header::TAG_LEN);
}
