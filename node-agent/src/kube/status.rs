//! MeshMember status from engine snapshots, and when it is worth writing.
//!
//! Everything here is pure (time is passed in), so the rules are unit-tested without an API server; the
//! writer task in `kube::writer` only feeds it and performs the writes.

use std::time::{Duration, Instant};

use crds::{Condition, Link, LinkState, MAX_STATUS_LINKS, MeshMemberStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::snapshot::{PeerSnapshot, Snapshot};
use crate::peer;

pub const READY: &str = "Ready";
pub const CONNECTED: &str = "Connected";
/// `lastHeartbeat` is refreshed this often even when nothing else changed.
pub const HEARTBEAT: Duration = Duration::from_secs(60);
/// How many not-connected peers a Connected=False message names.
const NAMED_PEERS: usize = 5;

/// The API stores times with one-second precision; keeping them so in memory makes what we wrote and
/// what we read back compare equal.
pub fn whole_seconds(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

pub fn link_state(s: peer::LinkState) -> LinkState {
    match s {
        peer::LinkState::Up => LinkState::Connected,
        peer::LinkState::Punching => LinkState::Punching,
        peer::LinkState::Handshaking => LinkState::Handshaking,
        peer::LinkState::Down => LinkState::Down,
    }
}

/// One condition; `lastTransitionTime` is kept from `previous` when the status did not change.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    now: Timestamp,
    generation: Option<i64>,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| Time(whole_seconds(now)), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message,
        last_transition_time: since,
        observed_generation: generation,
    }
}

/// Ready (registered with at least one rolodex) and Connected (every known peer's link up; no peers counts
/// as connected, reason NoPeers).
pub fn conditions(
    snap: &Snapshot,
    previous: &[Condition],
    now: Timestamp,
    generation: Option<i64>,
) -> Vec<Condition> {
    let (registered, total) = (snap.registered(), snap.rolodexes.len());
    let ready = if registered > 0 {
        condition(
            previous,
            READY,
            true,
            "Registered",
            format!("registered with {registered} of {total} rolodexes"),
            now,
            generation,
        )
    } else {
        condition(
            previous,
            READY,
            false,
            "NotRegistered",
            format!("not registered with any of {total} rolodexes"),
            now,
            generation,
        )
    };
    let peers = snap.peers.len();
    let waiting: Vec<_> = snap.peers.iter().filter(|p| p.state != peer::LinkState::Up).collect();
    let connected = if peers == 0 {
        condition(previous, CONNECTED, true, "NoPeers", "no other members".into(), now, generation)
    } else if waiting.is_empty() {
        let msg = format!("{peers} of {peers} peer links up");
        condition(previous, CONNECTED, true, "AllPeersConnected", msg, now, generation)
    } else {
        let mut names: Vec<String> =
            waiting.iter().take(NAMED_PEERS).map(|p| format!("{} ({})", p.name, p.state.as_str())).collect();
        if waiting.len() > NAMED_PEERS {
            names.push(format!("{} more", waiting.len() - NAMED_PEERS));
        }
        let msg = format!("{} of {peers} peer links up; not up: {}", peers - waiting.len(), names.join(", "));
        condition(previous, CONNECTED, false, "PeersNotConnected", msg, now, generation)
    };
    vec![ready, connected]
}

/// The peers whose links the status lists: all of them up to [`MAX_STATUS_LINKS`], else those not up
/// first; in name order either way (`peers` is sorted by name).
fn listed(peers: &[PeerSnapshot]) -> Vec<&PeerSnapshot> {
    if peers.len() <= MAX_STATUS_LINKS {
        return peers.iter().collect();
    }
    let (mut out, up): (Vec<_>, Vec<_>) = peers.iter().partition(|p| p.state != peer::LinkState::Up);
    out.truncate(MAX_STATUS_LINKS);
    out.extend(up.into_iter().take(MAX_STATUS_LINKS - out.len()));
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The status document for one snapshot; `conditions` from [`conditions`].
pub fn build(snap: &Snapshot, conditions: Vec<Condition>, now: Timestamp) -> MeshMemberStatus {
    let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    let up = snap.peers.iter().filter(|p| p.state == peer::LinkState::Up).count();
    let links = listed(&snap.peers)
        .into_iter()
        .map(|p| Link {
            peer: p.name.clone(),
            state: link_state(p.state),
            endpoint: p.endpoint.map(|e| e.to_string()),
            // Hundredths of a millisecond: enough for an overlay RTT, and short in YAML.
            rtt_millis: p.rtt.map(|d| (d.as_secs_f64() * 100_000.0).round() / 100.0),
            last_handshake: (p.last_handshake_us > 0)
                .then(|| i64::try_from(p.last_handshake_us).ok())
                .flatten()
                .and_then(|us| Timestamp::from_microsecond(us).ok())
                .map(|t| Time(whole_seconds(t))),
            rx_bytes: i64::try_from(p.rx_bytes).unwrap_or(i64::MAX),
            tx_bytes: i64::try_from(p.tx_bytes).unwrap_or(i64::MAX),
            via_relay: false,
        })
        .collect();
    MeshMemberStatus {
        public_endpoint: snap.reflexive.map(|a| a.to_string()),
        peers: Some(count(snap.peers.len())),
        connected_peers: Some(count(up)),
        links,
        conditions,
        last_heartbeat: Some(Time(whole_seconds(now))),
    }
}

/// What the agent writes when it stops (`message` says why): not ready, no links.
pub fn stopped(
    previous: &[Condition],
    message: &str,
    now: Timestamp,
    generation: Option<i64>,
) -> MeshMemberStatus {
    let msg = || message.to_string();
    MeshMemberStatus {
        public_endpoint: None,
        peers: None,
        connected_peers: None,
        links: vec![],
        conditions: vec![
            condition(previous, READY, false, "AgentStopped", msg(), now, generation),
            condition(previous, CONNECTED, false, "AgentStopped", msg(), now, generation),
        ],
        last_heartbeat: Some(Time(whole_seconds(now))),
    }
}

/// The part of a status whose change is worth a write: everything except `lastHeartbeat`, the byte
/// counters and the RTT, which move all the time; every write refreshes them anyway.
pub fn significant(s: &MeshMemberStatus) -> MeshMemberStatus {
    let mut s = s.clone();
    s.last_heartbeat = None;
    for l in &mut s.links {
        (l.rx_bytes, l.tx_bytes, l.rtt_millis) = (0, 0, None);
    }
    s
}

/// The last write attempt: when, and what it wrote (`None`: it failed, so the API's content is unknown).
#[derive(Clone, Debug, PartialEq)]
pub struct LastWrite<C> {
    pub at: Instant,
    pub content: Option<C>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Nothing written yet.
    First,
    /// The significant content changed.
    Changed,
    /// The last attempt failed.
    Retry,
    /// Nothing changed, but `lastHeartbeat` is due.
    Heartbeat,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::First => "first",
            Reason::Changed => "changed",
            Reason::Retry => "retry",
            Reason::Heartbeat => "heartbeat",
        }
    }
}

/// Whether to write now. Never sooner than `min_gap` after the last attempt (successful or not); then
/// when the content differs from what was last written, or when `heartbeat` has passed since.
pub fn decide<C: PartialEq>(
    last: Option<&LastWrite<C>>,
    content: &C,
    now: Instant,
    min_gap: Duration,
    heartbeat: Duration,
) -> Option<Reason> {
    let Some(last) = last else { return Some(Reason::First) };
    let elapsed = now.saturating_duration_since(last.at);
    if elapsed < min_gap {
        return None;
    }
    match &last.content {
        None => Some(Reason::Retry),
        Some(c) if c != content => Some(Reason::Changed),
        Some(_) if elapsed >= heartbeat => Some(Reason::Heartbeat),
        Some(_) => None,
    }
}

/// Each peer adds this much to the least time between writes (see [`interval_for`]).
pub const PER_PEER: Duration = Duration::from_millis(30);

/// The least time between writes of a member with `peers` peers: `configured`, or [`PER_PEER`] per peer
/// when that is longer. Any link flap anywhere changes every member's status, so with a fixed interval the
/// mesh's writes would grow with its size; this way all members together write at most about
/// 1 / (0.8 × 30 ms) ≈ 42 statuses a second, however big the mesh (10 s from 334 peers, 30 s at 1,000).
pub fn interval_for(configured: Duration, peers: usize) -> Duration {
    configured.max(PER_PEER.saturating_mul(u32::try_from(peers).unwrap_or(u32::MAX)))
}

/// The longest wait between attempts while writes keep failing.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The least time between attempts after `failed_in_row` consecutive failed writes: `interval`, doubled per
/// failure up to [`MAX_BACKOFF`] (never below `interval`). An API server too busy to answer is not kept so
/// by a thousand agents retrying every interval.
pub fn backoff(interval: Duration, failed_in_row: u32) -> Duration {
    interval.saturating_mul(1u32 << failed_in_row.min(16)).min(MAX_BACKOFF.max(interval))
}

/// `interval` scaled by a factor in [0.8, 1.2) taken from `unit` in [0, 1), so that agents started together
/// drift apart.
pub fn jittered(interval: Duration, unit: f64) -> Duration {
    interval.mul_f64(0.8 + 0.4 * unit.clamp(0.0, 1.0))
}
