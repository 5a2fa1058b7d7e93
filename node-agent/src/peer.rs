//! What the agent knows and holds per peer: identity from the rolodex, the chosen path, the handshake in
//! progress, the data session and counters. The transitions live in `engine::link`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rolodex::IpNet;
use rolodex::proto::PeerEntry;

use crate::crypto::Session;
use crate::dtls::{Handshake, Role};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Sending probes to every candidate address until one answers.
    Punching,
    /// A path answered; the DTLS handshake runs over it.
    Handshaking,
    /// Session keys in place; data flows.
    Up,
    /// Punching gave up or the peer went silent; waiting to ask the rolodex for a new introduction.
    Down,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Punching => "punching",
            LinkState::Handshaking => "handshaking",
            LinkState::Up => "up",
            LinkState::Down => "down",
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct PeerStats {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub handshakes: u64,
    /// Wall-clock microseconds of the last completed handshake.
    pub last_handshake_us: u64,
    pub rtt: Option<Duration>,
    /// Time from introduction to an established session, for the last link.
    pub connect_time: Option<Duration>,
}

/// An outstanding probe, matched by tx id when its pong returns.
#[derive(Debug, Clone, Copy)]
pub struct PendingPing {
    pub tx_id: u64,
    pub sent: Instant,
    pub dst: SocketAddr,
}

pub struct Peer {
    pub name: String,
    pub incarnation: u64,
    pub overlay: Vec<IpNet>,
    pub routes: Vec<IpNet>,
    /// Rolodexes (bit per configured rolodex) that currently list this peer.
    pub listed_by: u64,
    /// Reflexive address first, then the peer's LAN addresses.
    pub candidates: Vec<SocketAddr>,
    pub endpoint: Option<SocketAddr>,
    pub state: LinkState,
    pub role: Role,
    pub since: Instant,
    /// When the current connection attempt began (introduction), for connect-time stats.
    pub attempt_started: Instant,
    pub next_ping: Instant,
    pub ping_interval: Duration,
    pub low_ttl_sent: bool,
    /// The peer said (via the rolodex) that its NAT has a mapping toward us.
    pub peer_ready: bool,
    /// An authentic probe from the peer arrived during this attempt.
    pub contact: bool,
    /// When to repeat our low-TTL probes and Ready while there is no contact.
    pub next_ready: Instant,
    /// Normal probe rounds sent since the peer said it was ready, without contact.
    pub rounds_without_contact: u32,
    /// Our public address changed: unless the peer is heard from after `.0`, the link is dead at `.1`.
    pub suspect: Option<(Instant, Instant)>,
    pub pings: [Option<PendingPing>; 8],
    pub handshake: Option<Handshake>,
    /// Whether `handshake`'s result has been installed as `session`.
    pub handshake_installed: bool,
    /// The ClientHello random of the server-side handshake, to tell retransmits from a new handshake.
    pub handshake_random: Option<[u8; 32]>,
    /// Our receive index for the handshake in progress.
    pub pending_rx_index: u32,
    pub session: Option<Session>,
    /// Our receive index for `session`; the peer puts it in every data packet to us.
    pub rx_index: u32,
    /// The peer's receive index, which we put in every data packet to it.
    pub tx_index: u32,
    pub last_rx: Instant,
    pub last_tx: Instant,
    pub next_keepalive: Instant,
    pub dead_after: Duration,
    pub next_connect_request: Instant,
    pub connect_backoff: Duration,
    pub stats: PeerStats,
}

impl Peer {
    pub fn new(entry: &PeerEntry, our_name: &str, now: Instant) -> Self {
        // Deterministic roles: both ends agree without talking, so simultaneous opens cannot collide.
        let role = if our_name < entry.name.as_str() { Role::Client } else { Role::Server };
        let mut p = Self {
            name: entry.name.clone(),
            incarnation: entry.incarnation,
            overlay: vec![],
            routes: vec![],
            listed_by: 0,
            candidates: vec![],
            endpoint: None,
            state: LinkState::Punching,
            role,
            since: now,
            attempt_started: now,
            next_ping: now,
            ping_interval: Duration::ZERO,
            low_ttl_sent: false,
            peer_ready: false,
            contact: false,
            next_ready: now,
            rounds_without_contact: 0,
            suspect: None,
            pings: [None; 8],
            handshake: None,
            handshake_installed: false,
            handshake_random: None,
            pending_rx_index: 0,
            session: None,
            rx_index: 0,
            tx_index: 0,
            last_rx: now,
            last_tx: now,
            next_keepalive: now,
            dead_after: Duration::from_secs(60),
            next_connect_request: now,
            connect_backoff: Duration::from_secs(2),
            stats: PeerStats::default(),
        };
        p.update_entry(entry);
        p
    }

    /// Takes the rolodex's latest view of the peer.
    pub fn update_entry(&mut self, entry: &PeerEntry) {
        self.overlay = entry.overlay.clone();
        self.routes = entry.routes.clone();
        let mut c = vec![entry.reflexive];
        for a in &entry.candidates {
            if !c.contains(a) && a.port() != 0 {
                c.push(*a);
            }
        }
        self.candidates = c;
    }

    /// Whether the peer may send packets from `src` (WireGuard's allowed-ips).
    pub fn allows_source(&self, src: std::net::IpAddr) -> bool {
        self.overlay.iter().chain(&self.routes).any(|n| n.contains(&src))
    }

    pub fn is_up(&self) -> bool {
        self.state == LinkState::Up
    }
}
