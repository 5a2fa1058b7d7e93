//! The rolodex as a sans-IO state machine.
//!
//! Feed it datagrams with [`Server::handle`] and the time with [`Server::handle_timeout`] at
//! [`Server::poll_timeout`]; send what [`Server::poll_transmit`] returns. It owns no socket and reads no clock.
//!
//! Traffic is O(N) per heartbeat interval: each member's heartbeat gets one fixed-size ack. The member list
//! goes to a member only when it joins or its view digest shows it missed something; a join, change or
//! departure goes to the other members once, as a delta.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::proto::{self, Ack, Body, FrameKey, Listing, Message, PeerEntry, Register};
use crate::replay::{SeqClock, SeqWindow};

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// How often members should heartbeat; told to them in every ack.
    pub heartbeat: Duration,
    /// A member that has not heartbeated for this long is removed.
    pub timeout: Duration,
    /// Allowed clock difference for replay protection.
    pub freshness: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(10),
            timeout: Duration::from_secs(30),
            freshness: Duration::from_secs(60),
        }
    }
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub dst: SocketAddr,
    pub payload: Vec<u8>,
}

/// Why a datagram was dropped; counted, never answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Drop {
    Malformed,
    UnknownNetwork,
    Auth,
    Replay,
    UnknownMember,
    Unexpected,
}

impl Drop {
    pub fn label(self) -> &'static str {
        match self {
            Drop::Malformed => "malformed",
            Drop::UnknownNetwork => "unknown_network",
            Drop::Auth => "auth",
            Drop::Replay => "replay",
            Drop::UnknownMember => "unknown_member",
            Drop::Unexpected => "unexpected",
        }
    }
}

struct Member {
    entry: PeerEntry,
    seqs: SeqWindow,
    last_seen: Instant,
}

struct Network {
    key: FrameKey,
    members: HashMap<String, Member>,
    /// XOR of every member's entry hash.
    digest: u64,
    /// Last accepted seq of departed members, so their old frames cannot re-register them.
    tombstones: HashMap<String, (u64, Instant)>,
}

pub struct Server {
    cfg: ServerConfig,
    networks: HashMap<String, Network>,
    boot_id: u64,
    seq: SeqClock,
    rng: StdRng,
    out: VecDeque<Transmit>,
    next_sweep: Instant,
    next_listing: u32,
}

fn hash_of(e: &PeerEntry) -> u64 {
    proto::entry_hash(&e.name, e.incarnation, e.reflexive)
}

impl Server {
    /// `networks`: (name, rolodex key). `seed` feeds nonces and the boot id; pass OS randomness in production.
    pub fn new(cfg: ServerConfig, networks: &[(String, [u8; 32])], now: Instant, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let networks = networks
            .iter()
            .map(|(name, key)| {
                let net = Network {
                    key: FrameKey::new(name, key),
                    members: HashMap::new(),
                    digest: 0,
                    tombstones: HashMap::new(),
                };
                (name.clone(), net)
            })
            .collect();
        Self {
            boot_id: rng.random(),
            next_sweep: now + sweep_every(&cfg),
            cfg,
            networks,
            seq: SeqClock::default(),
            rng,
            out: VecDeque::new(),
            next_listing: 1,
        }
    }

    pub fn member_count(&self, network: &str) -> usize {
        self.networks.get(network).map_or(0, |n| n.members.len())
    }

    pub fn networks(&self) -> impl Iterator<Item = (&str, usize)> {
        self.networks.iter().map(|(k, n)| (k.as_str(), n.members.len()))
    }

    /// Processes one datagram from `src`. `wall_us` is the wall clock in microseconds since the Unix epoch.
    pub fn handle(&mut self, now: Instant, wall_us: u64, src: SocketAddr, data: &[u8]) -> Result<(), Drop> {
        let name = proto::peek_network(data).map_err(|_| Drop::Malformed)?;
        let net = self.networks.get_mut(name).ok_or(Drop::UnknownNetwork)?;
        let msg = net.key.open(data).map_err(|e| match e {
            proto::FrameError::Auth => Drop::Auth,
            _ => Drop::Malformed,
        })?;
        if msg.sender.is_empty() {
            return Err(Drop::Unexpected);
        }
        let fresh = match (net.members.get_mut(&msg.sender), net.tombstones.get(&msg.sender)) {
            (Some(m), _) => m.seqs.accept(msg.seq, wall_us, self.cfg.freshness),
            (None, Some((seq, _))) => SeqWindow::after(*seq).accept(msg.seq, wall_us, self.cfg.freshness),
            (None, None) => SeqWindow::default().accept(msg.seq, wall_us, self.cfg.freshness),
        };
        if !fresh {
            return Err(Drop::Replay);
        }
        let network = name.to_string();
        match msg.body {
            Body::Register(reg) => {
                self.register(&network, now, wall_us, src, msg.sender, msg.seq, reg);
                Ok(())
            }
            Body::Sync | Body::Connect { .. } | Body::Ready { .. } => {
                let net = self.networks.get_mut(&network).ok_or(Drop::UnknownNetwork)?;
                if !net.members.contains_key(&msg.sender) {
                    return Err(Drop::UnknownMember);
                }
                match msg.body {
                    Body::Connect { peer } => self.connect(&network, wall_us, &msg.sender, &peer),
                    Body::Ready { peer } => self.forward_ready(&network, wall_us, &msg.sender, &peer),
                    _ => self.send_listing(&network, wall_us, &msg.sender, false),
                }
                Ok(())
            }
            _ => Err(Drop::Unexpected),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn register(
        &mut self,
        network: &str,
        now: Instant,
        wall_us: u64,
        src: SocketAddr,
        sender: String,
        seq: u64,
        reg: Register,
    ) {
        let Some(net) = self.networks.get_mut(network) else { return };
        let entry = PeerEntry {
            name: sender.clone(),
            incarnation: reg.incarnation,
            overlay: reg.overlay,
            routes: reg.routes,
            reflexive: src,
            candidates: reg.candidates,
        };
        net.tombstones.remove(&sender);
        let changed = match net.members.get_mut(&sender) {
            Some(m) => {
                m.last_seen = now;
                if m.entry == entry {
                    false
                } else {
                    net.digest ^= hash_of(&m.entry) ^ hash_of(&entry);
                    m.entry = entry.clone();
                    true
                }
            }
            None => {
                net.digest ^= hash_of(&entry);
                net.members.insert(
                    sender.clone(),
                    Member { entry: entry.clone(), seqs: SeqWindow::starting_at(seq), last_seen: now },
                );
                true
            }
        };
        let own_view = net.digest ^ hash_of(&entry);
        let ack = Body::Ack(Ack {
            reflexive: src,
            boot_id: self.boot_id,
            heartbeat_ms: self.cfg.heartbeat.as_millis() as u32,
            timeout_ms: self.cfg.timeout.as_millis() as u32,
            members: net.members.len() as u32,
            view_digest: own_view,
        });
        self.send(network, wall_us, src, ack);
        if changed {
            // A join or a change: the newcomer gets everyone, everyone gets the newcomer, at the same moment,
            // so both ends of every new pair punch together.
            let others: Vec<SocketAddr> = self.networks[network]
                .members
                .values()
                .filter(|m| m.entry.name != sender)
                .map(|m| m.entry.reflexive)
                .collect();
            for dst in others {
                let body = Body::Peers { introduce: true, listing: None, entries: vec![entry.clone()] };
                self.send(network, wall_us, dst, body);
            }
            self.send_listing(network, wall_us, &sender, true);
        } else if reg.view_digest != own_view {
            self.send_listing(network, wall_us, &sender, false);
        }
    }

    fn connect(&mut self, network: &str, wall_us: u64, from: &str, to: &str) {
        let Some(net) = self.networks.get(network) else { return };
        let (Some(a), Some(b)) = (net.members.get(from), net.members.get(to)) else { return };
        if from == to {
            return;
        }
        let (ea, eb) = (a.entry.clone(), b.entry.clone());
        self.send(
            network,
            wall_us,
            ea.reflexive,
            Body::Peers { introduce: true, listing: None, entries: vec![eb.clone()] },
        );
        self.send(
            network,
            wall_us,
            eb.reflexive,
            Body::Peers { introduce: true, listing: None, entries: vec![ea] },
        );
    }

    fn forward_ready(&mut self, network: &str, wall_us: u64, from: &str, to: &str) {
        let Some(dst) = self.networks.get(network).and_then(|n| n.members.get(to)).map(|m| m.entry.reflexive)
        else {
            return;
        };
        if from != to {
            self.send(network, wall_us, dst, Body::Ready { peer: from.to_string() });
        }
    }

    /// Sends `to` every other member, in pages that each fit one frame.
    fn send_listing(&mut self, network: &str, wall_us: u64, to: &str, introduce: bool) {
        let Some(net) = self.networks.get(network) else { return };
        let Some(dst) = net.members.get(to).map(|m| m.entry.reflexive) else { return };
        let budget = proto::peers_budget(network, 0);
        let mut pages: Vec<Vec<PeerEntry>> = vec![Vec::new()];
        let mut used = 0;
        for m in net.members.values().filter(|m| m.entry.name != to) {
            let len = proto::entry_len(&m.entry);
            if used + len > budget {
                pages.push(Vec::new());
                used = 0;
            }
            used += len;
            if let Some(p) = pages.last_mut() {
                p.push(m.entry.clone());
            }
        }
        let id = self.next_listing;
        self.next_listing = self.next_listing.wrapping_add(1);
        let n = pages.len().min(usize::from(u16::MAX)) as u16;
        for (i, entries) in pages.into_iter().take(n.into()).enumerate() {
            let listing = Some(Listing { id, page: i as u16, pages: n });
            self.send(network, wall_us, dst, Body::Peers { introduce, listing, entries });
        }
    }

    fn send(&mut self, network: &str, wall_us: u64, dst: SocketAddr, body: Body) {
        let Some(net) = self.networks.get(network) else { return };
        let msg = Message { seq: self.seq.next(wall_us), sender: String::new(), body };
        match net.key.seal(&msg, self.rng.random()) {
            Ok(payload) => self.out.push_back(Transmit { dst, payload }),
            // Unreachable by construction (pages are sized to fit); logged rather than trusted.
            Err(e) => tracing::error!(network, error = %e, "dropping oversized rolodex frame"),
        }
    }

    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    #[must_use]
    pub fn poll_timeout(&self) -> Instant {
        self.next_sweep
    }

    /// Expires silent members and tells the rest they are gone.
    pub fn handle_timeout(&mut self, now: Instant, wall_us: u64) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + sweep_every(&self.cfg);
        let timeout = self.cfg.timeout;
        let keep_tombstone = self.cfg.freshness * 2;
        let names: Vec<String> = self.networks.keys().cloned().collect();
        for network in names {
            let Some(net) = self.networks.get_mut(&network) else { continue };
            net.tombstones.retain(|_, (_, at)| now.duration_since(*at) < keep_tombstone);
            let dead: Vec<String> = net
                .members
                .iter()
                .filter(|(_, m)| now.duration_since(m.last_seen) >= timeout)
                .map(|(k, _)| k.clone())
                .collect();
            if dead.is_empty() {
                continue;
            }
            let mut gone = Vec::with_capacity(dead.len());
            for name in dead {
                if let Some(m) = net.members.remove(&name) {
                    net.digest ^= hash_of(&m.entry);
                    net.tombstones.insert(name.clone(), (m.seqs.last(), now));
                    gone.push((name, m.entry.incarnation));
                }
            }
            tracing::info!(network, gone = ?gone, "members timed out");
            let dsts: Vec<SocketAddr> = net.members.values().map(|m| m.entry.reflexive).collect();
            for chunk in gone.chunks(12) {
                for dst in &dsts {
                    self.send(&network, wall_us, *dst, Body::Gone { peers: chunk.to_vec() });
                }
            }
        }
    }
}

fn sweep_every(cfg: &ServerConfig) -> Duration {
    (cfg.timeout / 10).max(Duration::from_millis(100))
}

#[cfg(test)]
mod tests;
