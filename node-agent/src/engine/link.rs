//! Peer link transitions: punching, path choice, the DTLS handshake, keepalive and dead-peer detection.
//!
//! Punching opens our own NAT mapping first with probes whose TTL lets them leave our NAT but expire
//! before the peer's: Linux conntrack gives a host a different public port when the peer's probe reaches
//! our router before our own outbound mapping exists. After the low-TTL probes each side tells the other,
//! through the rolodex, that its mapping exists (`Ready`); normal probes go out only once the peer is ready
//! (or has reached us directly), so they can never arrive before the mapping they need. Low-TTL probes and
//! Ready repeat until there is contact, so a lost introduction, probe or Ready only delays the link.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use rolodex::IpNet;
use rolodex::proto::PeerEntry;

use super::{DropReason, Engine, Transmit};
use crate::crypto::Session;
use crate::dtls::{self, Handshake, Role};
use crate::peer::{LinkState, Peer, PendingPing};
use crate::probe::Probe;

/// With no rolodex answering (so no Ready can come), normal probes start after this anyway.
const READY_FALLBACK: Duration = Duration::from_secs(3);
/// Repeat low-TTL probes and Ready this often until the peer is heard.
const READY_REPEAT: Duration = Duration::from_secs(1);
/// Low-TTL probes per candidate per round: a lost one must not leave the mapping unopened.
const LOW_TTL_COPIES: usize = 2;
/// Probe interval cap once the peer is ready: contact should follow within a few round trips.
const READY_PING_INTERVAL: Duration = Duration::from_millis(500);
/// Rounds of probes to a ready peer without any answer before concluding a NAT holds stale state.
const MAX_ROUNDS_WITHOUT_CONTACT: u32 = 8;
/// Silence that lets every stale NAT entry (Linux conntrack: 30 s for UDP) expire.
const QUIET: Duration = Duration::from_secs(35);
/// After our public address changed, how long a peer has to answer before the link counts as dead.
const SUSPECT: Duration = Duration::from_secs(3);
const FIRST_PING_INTERVAL: Duration = Duration::from_millis(200);
const MAX_PING_INTERVAL: Duration = Duration::from_secs(2);
const PUNCH_TIMEOUT: Duration = Duration::from_secs(15);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longer than conntrack's 30 s UDP timeout, so a failing pair eventually goes quiet long enough for stale NAT
/// entries to expire.
const MAX_CONNECT_BACKOFF: Duration = Duration::from_secs(35);

fn dead_after(e: &Engine) -> Duration {
    e.cfg.keepalive * 2 + Duration::from_secs(5)
}

/// Our PSK identity: `rm1;<name>;<incarnation>;<rx index>` (docs/design.md).
fn identity(e: &Engine, rx_index: u32) -> Vec<u8> {
    format!("rm1;{};{:016x};{:08x}", e.cfg.name, e.incarnation, rx_index).into_bytes()
}

/// Parses a peer's PSK identity into (name, incarnation, rx index).
pub fn parse_identity(id: &[u8]) -> Option<(&str, u64, u32)> {
    let s = std::str::from_utf8(id).ok()?;
    let mut it = s.split(';');
    if it.next()? != "rm1" {
        return None;
    }
    let name = it.next()?;
    let inc = u64::from_str_radix(it.next()?, 16).ok()?;
    let idx = u32::from_str_radix(it.next()?, 16).ok()?;
    it.next().is_none().then_some((name, inc, idx))
}

fn peer_mut(e: &mut Engine, slot: usize) -> Option<&mut Peer> {
    e.peers.get_mut(slot).and_then(Option::as_mut)
}

/// The rolodex told us about a peer (new, changed, or introduced again so that both punch now).
pub fn on_peer(
    e: &mut Engine,
    client: usize,
    entry: &PeerEntry,
    introduce: bool,
    now: Instant,
    _wall_us: u64,
) {
    if entry.name == e.cfg.name {
        return;
    }
    let bit = 1u64 << client.min(63);
    let slot = match e.by_name.get(&entry.name) {
        Some(&slot) => slot,
        None => {
            let slot = e.peers.iter().position(Option::is_none).unwrap_or(e.peers.len());
            if slot > 0xffff {
                tracing::error!(peer = %entry.name, "peer table full (65536)");
                return;
            }
            let mut peer = Peer::new(entry, &e.cfg.name, now);
            peer.ping_interval = FIRST_PING_INTERVAL;
            tracing::info!(peer = %entry.name, role = ?peer.role, candidates = ?peer.candidates, "new peer");
            if slot == e.peers.len() {
                e.peers.push(Some(peer));
            } else {
                e.peers[slot] = Some(peer);
            }
            e.by_name.insert(entry.name.clone(), slot);
            finish_update(e, slot);
            if let Some(p) = peer_mut(e, slot) {
                p.listed_by |= bit;
            }
            return;
        }
    };
    let Some(p) = peer_mut(e, slot) else { return };
    p.listed_by |= bit;
    let restarted = p.incarnation != entry.incarnation;
    p.update_entry(entry);
    if restarted {
        tracing::info!(peer = %p.name, "peer restarted; new handshake");
        p.incarnation = entry.incarnation;
        restart(e, slot, now);
    } else if introduce && p.state == LinkState::Down {
        restart(e, slot, now);
    } else if introduce && p.state == LinkState::Punching {
        // A new introduction gives the attempt its full time again; what it learnt so far stays.
        p.since = now;
    }
    finish_update(e, slot);
}

/// Re-indexes a peer's addresses and routes after its entry changed.
fn finish_update(e: &mut Engine, slot: usize) {
    let Some(p) = e.peers.get(slot).and_then(Option::as_ref) else { return };
    let nets: Vec<IpNet> = p.overlay.iter().chain(&p.routes).copied().collect();
    let addrs = p.candidates.clone();
    e.routes.retain(|_, v| v != slot);
    for n in nets {
        e.routes.insert(n, slot);
    }
    for a in addrs {
        e.by_addr.insert(a, slot);
    }
}

pub fn on_gone(e: &mut Engine, client: usize, name: &str, incarnation: u64) {
    let Some(&slot) = e.by_name.get(name) else { return };
    let Some(p) = peer_mut(e, slot) else { return };
    if p.incarnation != incarnation {
        return;
    }
    p.listed_by &= !(1u64 << client.min(63));
    if p.listed_by != 0 {
        return;
    }
    tracing::info!(peer = %name, "peer left the network");
    e.by_name.remove(name);
    e.by_addr.retain(|_, v| *v != slot);
    e.routes.retain(|_, v| v != slot);
    e.peers[slot] = None;
}

/// Starts a new connection attempt: punch again, then handshake.
pub fn restart(e: &mut Engine, slot: usize, now: Instant) {
    let Some(p) = peer_mut(e, slot) else { return };
    p.state = LinkState::Punching;
    p.since = now;
    p.attempt_started = now;
    p.handshake = None;
    p.handshake_random = None;
    p.session = None;
    p.low_ttl_sent = false;
    p.peer_ready = false;
    p.contact = false;
    p.next_ready = now;
    p.rounds_without_contact = 0;
    p.suspect = None;
    p.next_ping = now;
    p.ping_interval = FIRST_PING_INTERVAL;
}

/// Session keepalive (design.md: empty plaintext): only it proves to the peer that this session is alive
/// (pongs are signed with the network-wide probe key and may come from a peer that dropped the session),
/// and it lets the peer follow a NAT rebinding.
pub fn send_keepalive(e: &mut Engine, slot: usize) {
    let Some(p) = peer_mut(e, slot) else { return };
    let Some(ep) = p.endpoint else { return };
    let mut ka = [0u8; crate::crypto::OVERHEAD];
    let sealed = p.session.as_mut().and_then(|s| s.seal(&mut ka, 0, p.tx_index).ok());
    if let Some(n) = sealed {
        e.out.push_back(Transmit { dst: ep, payload: ka[..n].to_vec(), ttl: None });
    }
}

/// Our public address changed (NAT rebinding): tell every peer at once from the new address, and if one
/// does not answer within [`SUSPECT`], relink with it rather than waiting for the dead-peer timeout.
pub fn on_own_address_changed(e: &mut Engine, now: Instant) {
    for slot in 0..e.peers.len() {
        let Some(p) = peer_mut(e, slot) else { continue };
        if p.state == LinkState::Up {
            p.suspect = Some((now, now + SUSPECT));
            send_keepalive(e, slot);
        }
    }
}

pub fn poll_timeout(p: &Peer) -> Instant {
    let hs = || p.handshake.as_ref().and_then(Handshake::poll_timeout);
    match p.state {
        LinkState::Punching => p.next_ping,
        LinkState::Handshaking => {
            let limit = p.since + HANDSHAKE_TIMEOUT;
            hs().map_or(limit, |t| t.min(limit)).min(p.next_ping)
        }
        LinkState::Up => {
            let mut t = p.next_keepalive.min(p.last_rx + p.dead_after);
            if let Some((_, dead)) = p.suspect {
                t = t.min(dead);
            }
            match &p.handshake {
                Some(h) if !h.is_established() => hs().map_or(t, |h| h.min(t)),
                _ => t,
            }
        }
        LinkState::Down => p.next_connect_request,
    }
}

fn send_ping(e: &mut Engine, slot: usize, dst: SocketAddr, now: Instant, ttl: Option<u32>) {
    let tx_id: u64 = e.rng.random();
    let payload =
        e.probe_key.encode(&Probe { pong: false, tx_id, incarnation: e.incarnation, sender: &e.cfg.name });
    if let Some(p) = peer_mut(e, slot) {
        let i = (tx_id % p.pings.len() as u64) as usize;
        p.pings[i] = Some(PendingPing { tx_id, sent: now, dst });
    }
    e.out.push_back(Transmit { dst, payload, ttl });
}

pub fn handle_timeout(e: &mut Engine, slot: usize, now: Instant, wall_us: u64) {
    let keepalive = e.cfg.keepalive;
    let Some(p) = peer_mut(e, slot) else { return };
    match p.state {
        LinkState::Punching if now.duration_since(p.since) >= PUNCH_TIMEOUT => {
            tracing::warn!(peer = %p.name, candidates = ?p.candidates, "no path found; will ask for a new introduction");
            p.state = LinkState::Down;
            p.next_connect_request = now + p.connect_backoff;
        }
        LinkState::Punching if now >= p.next_ping => punch(e, slot, now, wall_us),
        LinkState::Handshaking if now >= p.next_ping => {
            // Keep the chosen path's mappings fresh while the handshake runs.
            p.next_ping = now + p.ping_interval;
            p.ping_interval = (p.ping_interval * 2).min(MAX_PING_INTERVAL);
            if let Some(ep) = p.endpoint {
                send_ping(e, slot, ep, now, None);
            }
            handshake_timers(e, slot, now, wall_us);
        }
        LinkState::Handshaking => handshake_timers(e, slot, now, wall_us),
        LinkState::Up if now >= p.last_rx + p.dead_after => {
            tracing::warn!(peer = %p.name, silent_for = ?now.duration_since(p.last_rx), "peer dead");
            p.state = LinkState::Down;
            p.session = None;
            p.next_connect_request = now;
        }
        LinkState::Up if p.suspect.is_some_and(|(since, dead)| p.last_rx <= since && now >= dead) => {
            tracing::warn!(peer = %p.name, "no answer after our address changed; relinking");
            p.state = LinkState::Down;
            p.session = None;
            p.next_connect_request = now;
        }
        LinkState::Up => {
            if p.suspect.is_some_and(|(since, _)| p.last_rx > since) {
                p.suspect = None;
            }
            if now >= p.next_keepalive {
                p.next_keepalive = now + keepalive;
                if let Some(ep) = p.endpoint {
                    send_keepalive(e, slot);
                    send_ping(e, slot, ep, now, None);
                }
            }
            handshake_timers(e, slot, now, wall_us);
        }
        LinkState::Down if now >= p.next_connect_request => {
            p.connect_backoff = (p.connect_backoff * 2).min(MAX_CONNECT_BACKOFF);
            let name = p.name.clone();
            for c in &mut e.clients {
                if c.is_registered() {
                    c.request_connect(wall_us, &name);
                }
            }
            restart(e, slot, now);
        }
        _ => {}
    }
}

/// One punching step: open our mapping (low TTL) and say so, then probe normally once the peer is ready.
fn punch(e: &mut Engine, slot: usize, now: Instant, wall_us: u64) {
    let rolodex_up = e.clients.iter().any(|c| c.is_registered());
    let punch_ttl = e.cfg.punch_ttl;
    let Some(p) = peer_mut(e, slot) else { return };
    let candidates = p.candidates.clone();
    let name = p.name.clone();
    let open = !p.low_ttl_sent || (!p.contact && now >= p.next_ready);
    if open {
        p.low_ttl_sent = true;
        p.next_ready = now + READY_REPEAT;
        for c in &candidates {
            for _ in 0..LOW_TTL_COPIES {
                send_ping(e, slot, *c, now, Some(punch_ttl));
            }
        }
        // To every rolodex, registered or not: the introduction came from one of them.
        for c in &mut e.clients {
            c.send_ready(wall_us, &name);
        }
    }
    let Some(p) = peer_mut(e, slot) else { return };
    // While a rolodex answers, wait for the peer's Ready however long it takes (it repeats; a peer that
    // never got our introduction asks for a new one when our Ready reaches it). Probing early would let a
    // probe reach the peer's NAT before its mapping exists, which spoils that mapping for 30 s.
    let go = p.peer_ready || p.contact || (!rolodex_up && now >= p.since + READY_FALLBACK);
    if go {
        if p.peer_ready && !p.contact {
            p.rounds_without_contact += 1;
            if p.rounds_without_contact > MAX_ROUNDS_WITHOUT_CONTACT {
                // Both NATs are open toward each other, yet nothing passes: a NAT holds a stale entry
                // (a probe that arrived before its mapping existed). Go quiet until it expires.
                tracing::warn!(peer = %p.name, quiet = ?QUIET, "probes do not get through; waiting for stale NAT state to expire");
                p.state = LinkState::Down;
                p.next_connect_request = now + QUIET;
                return;
            }
        }
        let cap = if p.peer_ready { READY_PING_INTERVAL } else { MAX_PING_INTERVAL };
        p.next_ping = (now + p.ping_interval).min(p.next_ready.max(now + Duration::from_millis(1)));
        p.ping_interval = (p.ping_interval * 2).min(cap);
        for c in candidates {
            send_ping(e, slot, c, now, None);
        }
    } else {
        let fallback = if rolodex_up { p.next_ready } else { p.since + READY_FALLBACK };
        p.next_ping = p.next_ready.min(fallback).max(now + Duration::from_millis(1));
    }
}

/// The peer opened its mapping toward us; if we do not know it yet, our introduction was lost: ask again.
pub fn on_peer_ready(e: &mut Engine, name: &str, now: Instant, wall_us: u64) {
    match e.by_name.get(name).copied() {
        Some(slot) => {
            // A peer that punches toward us while our link is up has lost the link (its address changed
            // or its session died): start over together. A Ready older than the link itself is ignored.
            let relink = peer_mut(e, slot)
                .is_some_and(|p| p.state == LinkState::Up && now >= p.since + Duration::from_secs(2));
            if relink {
                tracing::info!(peer = name, "peer is punching toward us; relinking");
                restart(e, slot, now);
            }
            if let Some(p) = peer_mut(e, slot)
                && p.state == LinkState::Punching
            {
                p.peer_ready = true;
                if p.low_ttl_sent {
                    p.next_ping = now;
                }
            }
        }
        None => {
            for c in &mut e.clients {
                if c.is_registered() {
                    c.request_connect(wall_us, name);
                }
            }
        }
    }
}

fn handshake_timers(e: &mut Engine, slot: usize, now: Instant, wall_us: u64) {
    let Some(p) = peer_mut(e, slot) else { return };
    if p.state == LinkState::Handshaking && now >= p.since + HANDSHAKE_TIMEOUT {
        tracing::warn!(peer = %p.name, "handshake timed out; punching again");
        restart(e, slot, now);
        return;
    }
    if let Some(h) = p.handshake.as_mut()
        && h.poll_timeout().is_some_and(|t| t <= now)
    {
        let _ = h.handle_timeout(now);
    }
    after_handshake_step(e, slot, now, wall_us);
}

pub fn handle_probe(e: &mut Engine, now: Instant, src: SocketAddr, buf: &[u8]) {
    let Some(probe) = e.probe_key.decode(buf) else {
        e.drop(DropReason::Unauthenticated);
        return;
    };
    if probe.sender == e.cfg.name {
        return;
    }
    let slot = e.by_name.get(probe.sender).copied();
    if !probe.pong {
        // Answer every authentic ping, even from a peer the rolodex has not told us about yet: it lets the
        // other side confirm the path, and our own introduction follows.
        let pong = Probe { pong: true, tx_id: probe.tx_id, incarnation: e.incarnation, sender: &e.cfg.name };
        e.out.push_back(Transmit { dst: src, payload: e.probe_key.encode(&pong), ttl: None });
        if let Some(slot) = slot {
            remember_addr(e, slot, src);
            let punching = match peer_mut(e, slot) {
                Some(p) if p.state == LinkState::Punching => {
                    p.contact = true;
                    p.low_ttl_sent
                }
                _ => false,
            };
            if punching {
                // The peer reached us: probe back at once on that path.
                send_ping(e, slot, src, now, None);
            }
        }
        return;
    }
    let Some(slot) = slot else { return };
    let Some(p) = peer_mut(e, slot) else { return };
    let Some(i) = p.pings.iter().position(|x| x.is_some_and(|x| x.tx_id == probe.tx_id)) else { return };
    let Some(ping) = p.pings[i].take() else { return };
    p.stats.rtt = Some(now.duration_since(ping.sent));
    if probe.incarnation != p.incarnation && p.state == LinkState::Up {
        tracing::info!(peer = %p.name, "peer restarted (seen in probe); new handshake");
        p.incarnation = probe.incarnation;
        restart(e, slot, now);
        return;
    }
    // Otherwise the pong only measured the RTT: liveness comes from session traffic (the keepalive in
    // `handle_timeout`), since any member can answer a ping.
    if p.state == LinkState::Punching {
        tracing::info!(peer = %p.name, path = %src, rtt = ?p.stats.rtt, "path confirmed");
        p.endpoint = Some(src);
        p.state = LinkState::Handshaking;
        p.since = now;
        let client = p.role == Role::Client;
        remember_addr(e, slot, src);
        if client {
            start_client_handshake(e, slot, now);
        }
    }
}

fn accept_name(expected: String) -> dtls::AcceptIdentity {
    Arc::new(move |id: &[u8]| parse_identity(id).is_some_and(|(name, _, _)| name == expected))
}

fn start_client_handshake(e: &mut Engine, slot: usize, now: Instant) {
    let rx_index = e.new_rx_index(slot);
    let id = identity(e, rx_index);
    let psk = e.psk;
    let Some(p) = peer_mut(e, slot) else { return };
    match Handshake::new(Role::Client, now, id, psk, accept_name(p.name.clone())) {
        Ok(h) => {
            p.handshake = Some(h);
            p.handshake_installed = false;
            p.pending_rx_index = rx_index;
            p.stats.handshakes += 1;
        }
        Err(err) => tracing::error!(peer = %p.name, error = %err, "cannot start handshake"),
    }
    flush_handshake(e, slot);
}

pub fn handle_dtls(e: &mut Engine, now: Instant, wall_us: u64, src: SocketAddr, buf: &[u8]) {
    let Some(&slot) = e.by_addr.get(&src) else {
        e.drop(DropReason::UnknownPeer);
        return;
    };
    let random = client_hello_random(buf);
    let new_server_handshake = match (peer_mut(e, slot), random) {
        (Some(p), Some(r)) if p.role == Role::Server => p.handshake_random != Some(r),
        _ => false,
    };
    if new_server_handshake {
        let rx_index = e.new_rx_index(slot);
        let id = identity(e, rx_index);
        let psk = e.psk;
        let Some(p) = peer_mut(e, slot) else { return };
        match Handshake::new(Role::Server, now, id, psk, accept_name(p.name.clone())) {
            Ok(h) => {
                p.handshake = Some(h);
                p.handshake_installed = false;
                p.handshake_random = random;
                p.pending_rx_index = rx_index;
                p.stats.handshakes += 1;
                if p.state != LinkState::Up {
                    p.state = LinkState::Handshaking;
                    p.since = now;
                }
                // The client's hello proves the path; answer where it came from.
                p.endpoint.get_or_insert(src);
                if !p.is_up() {
                    p.endpoint = Some(src);
                }
            }
            Err(err) => {
                tracing::error!(peer = %p.name, error = %err, "cannot start handshake");
                return;
            }
        }
    }
    let Some(p) = peer_mut(e, slot) else { return };
    let Some(h) = p.handshake.as_mut() else {
        e.drop(DropReason::NoLink);
        return;
    };
    if let Err(err) = h.handle_datagram(now, buf) {
        tracing::debug!(peer = %p.name, error = %err, "handshake record rejected");
    }
    after_handshake_step(e, slot, now, wall_us);
    // A server's handshake reply goes to where the client spoke from.
    if let Some(p) = peer_mut(e, slot)
        && p.role == Role::Server
        && !p.is_up()
    {
        p.endpoint = Some(src);
    }
}

/// Sends what the handshake queued and installs the session once it completes.
fn after_handshake_step(e: &mut Engine, slot: usize, now: Instant, wall_us: u64) {
    flush_handshake(e, slot);
    let keepalive = e.cfg.keepalive;
    let dead = dead_after(e);
    let Some(p) = peer_mut(e, slot) else { return };
    let Some(h) = p.handshake.as_mut() else { return };
    if h.failed() {
        tracing::warn!(peer = %p.name, reason = h.failure().unwrap_or("?"), "handshake failed");
        p.handshake = None;
        p.handshake_random = None;
        if p.state == LinkState::Handshaking {
            p.state = LinkState::Down;
            p.next_connect_request = now + p.connect_backoff;
        }
        return;
    }
    if p.handshake_installed {
        return;
    }
    let Some(est) = h.established() else { return };
    p.handshake_installed = true;
    let Some((name, inc, tx_index)) = parse_identity(&est.peer_identity) else { return };
    if name != p.name {
        return;
    }
    match Session::new(&est.keys) {
        Ok(s) => p.session = Some(s),
        Err(err) => {
            tracing::error!(peer = %p.name, error = %err, "cannot install session keys");
            return;
        }
    }
    p.incarnation = inc;
    p.rx_index = p.pending_rx_index;
    p.tx_index = tx_index;
    p.state = LinkState::Up;
    p.since = now;
    p.last_rx = now;
    p.dead_after = dead;
    p.next_keepalive = now + keepalive;
    p.connect_backoff = Duration::from_secs(2);
    p.stats.last_handshake_us = wall_us;
    p.stats.connect_time = Some(now.duration_since(p.attempt_started));
    tracing::info!(peer = %p.name, endpoint = ?p.endpoint, connect_time = ?p.stats.connect_time, "link up");
}

fn flush_handshake(e: &mut Engine, slot: usize) {
    let Some(p) = e.peers.get_mut(slot).and_then(Option::as_mut) else { return };
    let (Some(h), Some(dst)) = (p.handshake.as_mut(), p.endpoint) else { return };
    while let Some(d) = h.poll_transmit() {
        e.out.push_back(Transmit { dst, payload: d.to_vec(), ttl: None });
    }
}

/// The client random of a DTLS ClientHello (epoch 0, first fragment), which stays the same across the
/// cookie exchange and retransmits but is fresh for every new handshake.
pub fn client_hello_random(buf: &[u8]) -> Option<[u8; 32]> {
    // record header (13): type 22, version, epoch 0, seq, len; handshake header (12): type 1, len,
    // message_seq, fragment offset 0, fragment len; then client_version (2) and the random (32).
    let is_hello =
        buf.len() >= 59 && buf[0] == 22 && buf[3..5] == [0, 0] && buf[13] == 1 && buf[19..22] == [0, 0, 0];
    is_hello.then(|| buf[27..59].try_into().ok()).flatten()
}

/// Maps `src` to the peer in `slot`, forgetting that peer's other addresses that are neither candidates
/// nor its endpoint, so probes from ever-new sources (or NAT rebinding) cannot grow the map without bound.
pub fn remember_addr(e: &mut Engine, slot: usize, src: SocketAddr) {
    if e.by_addr.get(&src) == Some(&slot) {
        return;
    }
    if let Some(p) = e.peers.get(slot).and_then(Option::as_ref) {
        let (candidates, endpoint) = (&p.candidates, p.endpoint);
        e.by_addr.retain(|a, s| *s != slot || candidates.contains(a) || endpoint == Some(*a));
    }
    e.by_addr.insert(src, slot);
}
