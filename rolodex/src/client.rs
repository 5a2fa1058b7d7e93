//! A member's session with one rolodex, as a sans-IO state machine.
//!
//! It registers (and so heartbeats) on a timer, learns the member's reflexive address, keeps this rolodex's
//! view of the peers, and reports changes as [`Event`]s. An agent runs one per configured rolodex and merges
//! their events. Call order: `handle` for each datagram from the rolodex, `handle_timeout` at
//! `poll_timeout`, then drain `poll_transmit` and `poll_event`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::net::IpNet;
use crate::proto::{self, Body, FrameError, FrameKey, Listing, Message, PeerEntry, Register};
use crate::replay::{SeqClock, SeqWindow};

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub name: String,
    pub incarnation: u64,
    pub overlay: Vec<IpNet>,
    pub routes: Vec<IpNet>,
    pub candidates: Vec<SocketAddr>,
    /// Used until the rolodex's first ack says otherwise.
    pub heartbeat: Duration,
    pub freshness: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The rolodex answered; `reflexive` is our address as it sees it.
    Registered { reflexive: SocketAddr },
    /// The rolodex restarted (new boot id); it has re-learnt us from our register.
    RolodexRestarted,
    /// A peer joined or changed. `introduce`: the peer was told about us now, so punch now.
    Peer { entry: PeerEntry, introduce: bool },
    /// A peer left or timed out.
    Gone { name: String, incarnation: u64 },
    /// No answer for three heartbeat intervals.
    Unreachable,
    /// `name` has opened its NAT mapping toward us: our normal probes may go now.
    PeerReady { name: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    #[error("replayed or stale frame")]
    Replay,
    #[error("unexpected message from rolodex")]
    Unexpected,
}

pub struct Client {
    cfg: ClientConfig,
    server: SocketAddr,
    key: FrameKey,
    seq: SeqClock,
    rx_seqs: SeqWindow,
    rng: StdRng,
    heartbeat: Duration,
    next_register: Instant,
    retry: Duration,
    last_ack: Option<Instant>,
    unreachable: bool,
    boot_id: Option<u64>,
    /// After a rolodex restart its listings are incomplete until everyone re-registers: absence from a
    /// listing does not mean gone until this passes.
    grace_until: Option<Instant>,
    reflexive: Option<SocketAddr>,
    view: HashMap<String, PeerEntry>,
    /// Sequence number of the frame that last added, changed or removed each peer: frames reordered in
    /// flight must not undo newer news.
    news: HashMap<String, u64>,
    digest: u64,
    /// Names seen so far per complete listing in progress, and which pages arrived.
    listings: HashMap<u32, (HashSet<String>, HashSet<u16>, u64)>,
    out: VecDeque<Vec<u8>>,
    events: VecDeque<Event>,
}

const FIRST_RETRY: Duration = Duration::from_millis(500);

impl Client {
    pub fn new(
        cfg: ClientConfig,
        server: SocketAddr,
        network: &str,
        key: &[u8; 32],
        now: Instant,
        seed: u64,
    ) -> Self {
        Self {
            heartbeat: cfg.heartbeat,
            cfg,
            server,
            key: FrameKey::new(network, key),
            seq: SeqClock::default(),
            rx_seqs: SeqWindow::default(),
            rng: StdRng::seed_from_u64(seed),
            next_register: now,
            retry: FIRST_RETRY,
            last_ack: None,
            unreachable: false,
            boot_id: None,
            grace_until: None,
            reflexive: None,
            view: HashMap::new(),
            news: HashMap::new(),
            digest: 0,
            listings: HashMap::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    pub fn server(&self) -> SocketAddr {
        self.server
    }

    pub fn reflexive(&self) -> Option<SocketAddr> {
        self.reflexive
    }

    pub fn is_registered(&self) -> bool {
        self.last_ack.is_some() && !self.unreachable
    }

    pub fn peers(&self) -> impl Iterator<Item = &PeerEntry> {
        self.view.values()
    }

    /// Our interface addresses changed: tell the rolodex at once.
    pub fn set_candidates(&mut self, now: Instant, candidates: Vec<SocketAddr>) {
        if candidates != self.cfg.candidates {
            self.cfg.candidates = candidates;
            self.next_register = now;
        }
    }

    /// Asks the rolodex to introduce us and `peer` again, so both punch.
    pub fn request_connect(&mut self, wall_us: u64, peer: &str) {
        self.send(wall_us, Body::Connect { peer: peer.to_string() });
    }

    /// Tells `peer` (through the rolodex) that our NAT now has a mapping toward it.
    pub fn send_ready(&mut self, wall_us: u64, peer: &str) {
        self.send(wall_us, Body::Ready { peer: peer.to_string() });
    }

    pub fn handle(&mut self, now: Instant, wall_us: u64, data: &[u8]) -> Result<(), ClientError> {
        let msg = self.key.open(data)?;
        if !msg.sender.is_empty() || !self.rx_seqs.accept(msg.seq, wall_us, self.cfg.freshness) {
            return Err(ClientError::Replay);
        }
        match msg.body {
            Body::Ack(ack) => {
                self.last_ack = Some(now);
                self.unreachable = false;
                self.retry = FIRST_RETRY;
                self.heartbeat = Duration::from_millis(ack.heartbeat_ms.into())
                    .clamp(Duration::from_secs(1), Duration::from_secs(300));
                self.next_register = now + self.heartbeat;
                if self.boot_id.is_some_and(|b| b != ack.boot_id) {
                    self.grace_until =
                        Some(now + Duration::from_millis(ack.timeout_ms.into()) + self.heartbeat);
                    self.events.push_back(Event::RolodexRestarted);
                }
                self.boot_id = Some(ack.boot_id);
                if self.reflexive != Some(ack.reflexive) {
                    self.reflexive = Some(ack.reflexive);
                }
                self.events.push_back(Event::Registered { reflexive: ack.reflexive });
            }
            Body::Peers { introduce, listing, entries } => {
                for e in &entries {
                    if self.newer(&e.name, msg.seq) {
                        self.upsert(e.clone(), introduce);
                    }
                }
                if let Some(l) = listing {
                    self.listing_page(now, msg.seq, l, entries.iter().map(|e| e.name.clone()));
                }
            }
            Body::Gone { peers } => {
                for (name, inc) in peers {
                    if self.view.get(&name).is_some_and(|e| e.incarnation == inc)
                        && self.newer(&name, msg.seq)
                    {
                        self.remove(&name);
                    }
                }
            }
            Body::Ready { peer } => self.events.push_back(Event::PeerReady { name: peer }),
            _ => return Err(ClientError::Unexpected),
        }
        Ok(())
    }

    /// Records that a frame numbered `seq` speaks about `name`; false if newer news already arrived.
    fn newer(&mut self, name: &str, seq: u64) -> bool {
        let last = self.news.entry(name.to_string()).or_insert(0);
        if seq < *last {
            return false;
        }
        *last = seq;
        true
    }

    fn upsert(&mut self, entry: PeerEntry, introduce: bool) {
        if entry.name == self.cfg.name {
            return;
        }
        let h = proto::entry_hash(&entry.name, entry.incarnation, entry.reflexive);
        match self.view.insert(entry.name.clone(), entry.clone()) {
            Some(old) if old == entry && !introduce => return,
            Some(old) => self.digest ^= proto::entry_hash(&old.name, old.incarnation, old.reflexive) ^ h,
            None => self.digest ^= h,
        }
        self.events.push_back(Event::Peer { entry, introduce });
    }

    fn remove(&mut self, name: &str) {
        if let Some(old) = self.view.remove(name) {
            self.digest ^= proto::entry_hash(&old.name, old.incarnation, old.reflexive);
            self.events.push_back(Event::Gone { name: old.name, incarnation: old.incarnation });
        }
    }

    /// Once every page of a complete listing has arrived, peers it lacks are gone.
    fn listing_page(&mut self, now: Instant, seq: u64, l: Listing, names: impl Iterator<Item = String>) {
        // Bound memory if pages of many listings are lost.
        if self.listings.len() > 8 {
            self.listings.clear();
        }
        let (seen, pages, first_seq) =
            self.listings.entry(l.id).or_insert_with(|| (HashSet::new(), HashSet::new(), seq));
        seen.extend(names);
        pages.insert(l.page);
        *first_seq = (*first_seq).min(seq);
        if pages.len() < usize::from(l.pages) {
            return;
        }
        let Some((seen, _, first_seq)) = self.listings.remove(&l.id) else { return };
        if self.grace_until.is_some_and(|t| now < t) {
            return;
        }
        // A peer the listing lacks is gone, unless we heard of it after the listing was made.
        let stale: Vec<String> = self
            .view
            .keys()
            .filter(|k| !seen.contains(*k) && self.news.get(*k).is_none_or(|s| *s < first_seq))
            .cloned()
            .collect();
        for name in stale {
            self.remove(&name);
        }
    }

    #[must_use]
    pub fn poll_timeout(&self) -> Instant {
        self.next_register
    }

    pub fn handle_timeout(&mut self, now: Instant, wall_us: u64) {
        if now < self.next_register {
            return;
        }
        let silent_for = self.last_ack.map(|t| now.duration_since(t));
        if silent_for.is_some_and(|d| d >= self.heartbeat * 3) && !self.unreachable {
            self.unreachable = true;
            self.events.push_back(Event::Unreachable);
        }
        let reg = Register {
            incarnation: self.cfg.incarnation,
            overlay: self.cfg.overlay.clone(),
            routes: self.cfg.routes.clone(),
            candidates: self.cfg.candidates.clone(),
            view_digest: self.digest,
        };
        self.send(wall_us, Body::Register(reg));
        // Until answered, retry quickly (with jitter and backoff) instead of waiting a whole interval.
        let wait = if self.last_ack.is_none() || self.unreachable {
            let w = self.retry;
            self.retry = (self.retry * 2).min(self.heartbeat);
            w
        } else {
            self.heartbeat
        };
        let jitter = self.rng.random_range(0..=wait.as_millis() as u64 / 10);
        self.next_register = now + wait + Duration::from_millis(jitter);
    }

    fn send(&mut self, wall_us: u64, body: Body) {
        let msg = Message { seq: self.seq.next(wall_us), sender: self.cfg.name.clone(), body };
        match self.key.seal(&msg, self.rng.random()) {
            Ok(frame) => self.out.push_back(frame),
            Err(e) => tracing::error!(error = %e, "cannot encode rolodex message"),
        }
    }

    /// The next datagram for [`Client::server`].
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}
