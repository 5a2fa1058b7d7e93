//! The rolodex as a sans-IO state machine.
//!
//! Feed it datagrams with [`Server::handle`] and the time with [`Server::handle_timeout`] at
//! [`Server::poll_timeout`]; send what [`Server::poll_transmit`] returns. It owns no socket and reads no clock.
//!
//! Traffic is O(N) per heartbeat interval: each member's heartbeat gets one fixed-size ack. The member list
//! goes to a member only when it joins or its view digest shows it missed something; a join, change or
//! departure goes to the other members once, as a delta.
//!
//! Joins arriving together (a mass restart: N members each to be told to N others) are coalesced: the
//! introductions queued by every [`Server::handle`] since the last drain go out packed into as few frames as
//! fit, each frame sealed once for everyone, when [`Server::poll_transmit`] runs dry. A driver that handles
//! a batch of datagrams before draining so sends O(N) frames per batch instead of per join. And a heartbeat
//! whose view matches the network as it was moments ago is only lagging (its delta is in flight), not stale:
//! it gets no listing, or every heartbeat during a join wave would cost an O(N) listing. A stale member gets
//! the list again at most every other interval, so members too slow to digest it cannot keep the rolodex
//! busy sending it.

use std::collections::{HashMap, HashSet, VecDeque};
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
    /// A newcomer while the send queue is long: it retries (the client backs off), members already in are
    /// still acked.
    Overloaded,
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
            Drop::Overloaded => "overloaded",
        }
    }
}

struct Member {
    entry: PeerEntry,
    seqs: SeqWindow,
    last_seen: Instant,
    /// When its stale view digest last earned it the member list.
    relisted: Option<Instant>,
}

struct Network {
    key: FrameKey,
    members: HashMap<String, Member>,
    /// XOR of every member's entry hash.
    digest: u64,
    /// Digests this network had until recently, and when each was superseded.
    recent: HashMap<u64, Instant>,
    /// Joins and changes not yet announced to the other members, in order, one per name.
    pending: Vec<PeerEntry>,
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
    /// The wall clock last passed in, for frames built in [`Server::poll_transmit`].
    last_wall_us: u64,
}

/// Frames queued at most before newcomers are turned away (about 20 MB).
const MAX_BACKLOG: usize = 16384;
/// Introductions queued at most before newcomers are turned away: their announcement costs every member a
/// frame per ~25 of them, and each member's copy is a frame in memory until sent.
const MAX_PENDING: usize = 64;

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
                    recent: HashMap::new(),
                    pending: Vec::new(),
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
            last_wall_us: 0,
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
        self.last_wall_us = wall_us;
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
            Body::Register(reg) => self.register(&network, now, wall_us, src, msg.sender, msg.seq, reg),
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
    ) -> Result<(), Drop> {
        let Some(net) = self.networks.get_mut(network) else { return Err(Drop::UnknownNetwork) };
        // Each newcomer costs a member list (O(N) frames): admit none while the queue is long, so a join
        // wave cannot grow it without bound, nor starve the acks that keep members alive.
        let backlogged = self.out.len() >= MAX_BACKLOG || net.pending.len() >= MAX_PENDING;
        if backlogged && !net.members.contains_key(&sender) {
            return Err(Drop::Overloaded);
        }
        let entry = PeerEntry {
            name: sender.clone(),
            incarnation: reg.incarnation,
            overlay: reg.overlay,
            routes: reg.routes,
            reflexive: src,
            candidates: reg.candidates,
        };
        net.tombstones.remove(&sender);
        let old_digest = net.digest;
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
                    Member {
                        entry: entry.clone(),
                        seqs: SeqWindow::starting_at(seq),
                        last_seen: now,
                        relisted: None,
                    },
                );
                true
            }
        };
        if changed {
            net.recent.insert(old_digest, now);
            net.pending.retain(|e| e.name != sender);
            net.pending.push(entry.clone());
        }
        let own_view = net.digest ^ hash_of(&entry);
        // The network this member's view describes (its view is everyone but itself).
        let seen = reg.view_digest ^ hash_of(&entry);
        let lag = self.cfg.heartbeat / 2;
        let lagging = net.recent.get(&seen).is_some_and(|t| now.duration_since(*t) < lag);
        // A member too slow to take in a list before its next heartbeat gets one every other interval at
        // most, not one per heartbeat.
        let mut relist = false;
        if !changed
            && !backlogged
            && reg.view_digest != own_view
            && !lagging
            && let Some(m) = net.members.get_mut(&sender)
            && m.relisted.is_none_or(|t| now.duration_since(t) >= self.cfg.heartbeat * 2)
        {
            m.relisted = Some(now);
            relist = true;
        }
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
            // A join or a change: the newcomer gets everyone now, everyone gets the newcomer when this batch
            // is drained, so both ends of every new pair punch together.
            self.send_listing(network, wall_us, &sender, true);
        } else if relist {
            self.send_listing(network, wall_us, &sender, false);
        }
        Ok(())
    }

    /// Announces queued joins and changes: each member not among them gets all of them, in frames sealed
    /// once for everyone; one among them gets those queued after it (its listing had the earlier ones).
    fn flush_introductions(&mut self, wall_us: u64) {
        for (name, net) in &mut self.networks {
            if net.pending.is_empty() {
                continue;
            }
            // Skip members that left (or changed again) since: their news went out otherwise.
            let pending: Vec<PeerEntry> = std::mem::take(&mut net.pending)
                .into_iter()
                .filter(|e| net.members.get(&e.name).is_some_and(|m| m.entry == *e))
                .collect();
            let budget = proto::peers_budget(name, 0);
            let mut frames = Vec::new();
            for page in pack(&pending, budget) {
                let body = Body::Peers { introduce: true, listing: None, entries: page };
                frames.extend(seal(&net.key, &mut self.seq, &mut self.rng, wall_us, body));
            }
            let queued: HashSet<&str> = pending.iter().map(|e| e.name.as_str()).collect();
            for m in net.members.values() {
                if !queued.contains(m.entry.name.as_str()) {
                    for f in &frames {
                        self.out.push_back(Transmit { dst: m.entry.reflexive, payload: f.clone() });
                    }
                }
            }
            for (k, e) in pending.iter().enumerate() {
                for page in pack(&pending[k + 1..], budget) {
                    let body = Body::Peers { introduce: true, listing: None, entries: page };
                    if let Some(f) = seal(&net.key, &mut self.seq, &mut self.rng, wall_us, body) {
                        self.out.push_back(Transmit { dst: e.reflexive, payload: f });
                    }
                }
            }
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
        let entries: Vec<PeerEntry> =
            net.members.values().filter(|m| m.entry.name != to).map(|m| m.entry.clone()).collect();
        let mut pages = pack(&entries, proto::peers_budget(network, 0));
        if pages.is_empty() {
            // An empty listing still tells a member it is alone.
            pages.push(Vec::new());
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
        if let Some(payload) = seal(&net.key, &mut self.seq, &mut self.rng, wall_us, body) {
            self.out.push_back(Transmit { dst, payload });
        }
    }

    /// The next datagram to send. Introductions queued by [`Server::handle`] are packed when the queue
    /// runs dry, so handling several datagrams before draining coalesces them.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if self.out.is_empty() {
            self.flush_introductions(self.last_wall_us);
        }
        self.out.pop_front()
    }

    #[must_use]
    pub fn poll_timeout(&self) -> Instant {
        self.next_sweep
    }

    /// Expires silent members and tells the rest they are gone.
    pub fn handle_timeout(&mut self, now: Instant, wall_us: u64) {
        self.last_wall_us = wall_us;
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + sweep_every(&self.cfg);
        let timeout = self.cfg.timeout;
        let keep_tombstone = self.cfg.freshness * 2;
        let lag = self.cfg.heartbeat / 2;
        for (network, net) in &mut self.networks {
            net.tombstones.retain(|_, (_, at)| now.duration_since(*at) < keep_tombstone);
            net.recent.retain(|_, at| now.duration_since(*at) < lag);
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
                    net.recent.insert(net.digest, now);
                    net.digest ^= hash_of(&m.entry);
                    net.tombstones.insert(name.clone(), (m.seqs.last(), now));
                    gone.push((name, m.entry.incarnation));
                }
            }
            tracing::info!(network, gone = ?gone, "members timed out");
            for chunk in gone.chunks(12) {
                let body = Body::Gone { peers: chunk.to_vec() };
                let Some(frame) = seal(&net.key, &mut self.seq, &mut self.rng, wall_us, body) else {
                    continue;
                };
                for m in net.members.values() {
                    self.out.push_back(Transmit { dst: m.entry.reflexive, payload: frame.clone() });
                }
            }
        }
    }
}

/// Splits `entries` into pages that each fit one `Peers` frame of `budget` bytes.
fn pack(entries: &[PeerEntry], budget: usize) -> Vec<Vec<PeerEntry>> {
    let mut pages: Vec<Vec<PeerEntry>> = Vec::new();
    let mut used = budget;
    for e in entries {
        let len = proto::entry_len(e);
        if used + len > budget || pages.last().is_some_and(|p| p.len() == 255) {
            pages.push(Vec::new());
            used = 0;
        }
        used += len;
        if let Some(p) = pages.last_mut() {
            p.push(e.clone());
        }
    }
    pages
}

/// Seals a frame from the rolodex. One frame may go to many members: each accepts its sequence number once.
fn seal(key: &FrameKey, seq: &mut SeqClock, rng: &mut StdRng, wall_us: u64, body: Body) -> Option<Vec<u8>> {
    let msg = Message { seq: seq.next(wall_us), sender: String::new(), body };
    match key.seal(&msg, rng.random()) {
        Ok(payload) => Some(payload),
        // Unreachable by construction (pages are sized to fit); logged rather than trusted.
        Err(e) => {
            tracing::error!(network = key.network(), error = %e, "dropping oversized rolodex frame");
            None
        }
    }
}

fn sweep_every(cfg: &ServerConfig) -> Duration {
    (cfg.timeout / 10).max(Duration::from_millis(100))
}

#[cfg(test)]
mod tests;
