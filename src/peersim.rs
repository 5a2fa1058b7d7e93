//! Simulated mesh peers: many sans-IO [`Engine`]s in one process, each with its own UDP socket in one
//! network namespace and no TUN device. They register with the rolodex, punch, handshake DTLS, answer probes
//! and keepalives like real agents, and answer ICMP echo requests sent to their overlay addresses, so a real
//! agent can be meshed with a hundred peers on a small machine.
//!
//! The simulated peers link only with the real agents: the rolodex frames they receive are opened and
//! everything about other members is removed before their engine sees it. Otherwise they would also build a
//! full mesh among themselves (N² handshakes) that a measurement of the real agents does not need.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agent::engine::{Engine, EngineConfig, HEADROOM, Inbound, Transmit};
use anyhow::{Context, Result};
use rolodex::keys::{self, KeyUse};
use rolodex::proto::{Body, FrameKey};
use tokio::sync::watch;

use crate::netns::Host;

const BUF_LEN: usize = 65536;
const DEFAULT_TTL: u32 = 64;

/// What every simulated peer shares.
pub struct SimConfig {
    pub network: String,
    pub secret: Vec<u8>,
    pub rolodex: SocketAddr,
    /// The real agents: the only members the simulated peers link with.
    pub members: Vec<String>,
    pub count: usize,
}

/// Running simulated peers; dropping this stops them.
pub struct PeerSim {
    names: Vec<String>,
    overlays: Vec<Ipv4Addr>,
    up: Arc<AtomicUsize>,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<Result<()>>>,
}

/// Peer `i`'s name. Names alternate around `member`'s, so that agent is the DTLS client towards half of
/// the peers and the server towards the other half (the role follows the name order).
pub fn peer_name(member: &str, i: usize) -> String {
    if i.is_multiple_of(2) { format!("{member}-sim{i:03}") } else { format!("0sim{i:03}") }
}

/// Peer `i`'s overlay address: 100.64.1.1 onward, clear of the lab members' 100.64.0.x.
pub fn peer_overlay(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(100, 64, 1 + (i / 250) as u8, (i % 250) as u8 + 1)
}

impl PeerSim {
    /// Binds one UDP socket per peer in `host`'s namespace and starts the peers on a thread of their own.
    pub fn start(host: &Host, cfg: SimConfig) -> Result<PeerSim> {
        if cfg.count > 250 * 60 {
            anyhow::bail!("at most {} simulated peers", 250 * 60);
        }
        let sockets = host
            .in_ns(|| {
                (0..cfg.count).map(|_| UdpSocket::bind("0.0.0.0:0")).collect::<std::io::Result<Vec<_>>>()
            })
            .with_context(|| format!("entering namespace {}", host.ns))?
            .context("binding the simulated peers' sockets")?;
        let first = cfg.members.first().context("the simulated peers need a real agent to link with")?;
        let names: Vec<String> = (0..cfg.count).map(|i| peer_name(first, i)).collect();
        let overlays: Vec<Ipv4Addr> = (0..cfg.count).map(peer_overlay).collect();
        let mut peers = Vec::with_capacity(cfg.count);
        for (i, s) in sockets.into_iter().enumerate() {
            s.set_nonblocking(true).context("making a simulated peer's socket non-blocking")?;
            let port = s.local_addr().context("reading a simulated peer's port")?.port();
            let engine = EngineConfig {
                network: cfg.network.clone(),
                name: names[i].clone(),
                secret: cfg.secret.clone(),
                overlay: vec![(IpAddr::V4(overlays[i]), 10)],
                routes: vec![],
                rolodexes: vec![cfg.rolodex],
                candidates: vec![SocketAddr::new(IpAddr::V4(host.lan_ip), port)],
                keepalive: Duration::from_secs(25),
                heartbeat: Duration::from_secs(10),
                punch_ttl: 2,
                freshness: Duration::from_secs(60),
            };
            peers.push((engine, s));
        }
        let up = Arc::new(AtomicUsize::new(0));
        let (stop, stop_rx) = watch::channel(false);
        let shared = Shared {
            key: FrameKey::new(&cfg.network, &keys::derive(&cfg.secret, &cfg.network, KeyUse::Rolodex)),
            rolodex: cfg.rolodex,
            members: cfg.members.clone(),
            up: up.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("peersim".into())
            .spawn(move || run_all(peers, shared, stop_rx))
            .context("starting the peer simulator thread")?;
        Ok(PeerSim { names, overlays, up, stop, thread: Some(thread) })
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn overlays(&self) -> &[Ipv4Addr] {
        &self.overlays
    }

    /// How many links between simulated peers and real agents are up, as the simulated peers see them.
    pub fn links_up(&self) -> usize {
        self.up.load(Ordering::Relaxed)
    }

    /// Whether the simulator thread is still running (it stops only on an error or when asked).
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops every peer and reports the simulator's error, if it had one.
    pub fn stop(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        let _ = self.stop.send(true);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => anyhow::bail!("the peer simulator panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for PeerSim {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            eprintln!("peersim: {e:#}");
        }
    }
}

struct Shared {
    key: FrameKey,
    rolodex: SocketAddr,
    members: Vec<String>,
    up: Arc<AtomicUsize>,
}

fn run_all(peers: Vec<(EngineConfig, UdpSocket)>, shared: Shared, stop: watch::Receiver<bool>) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the peer simulator's runtime")?;
    let shared = Arc::new(shared);
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let mut tasks = Vec::with_capacity(peers.len());
        for (cfg, socket) in peers {
            let socket = tokio::net::UdpSocket::from_std(socket).context("registering a peer's socket")?;
            let engine = Engine::new(cfg, Instant::now(), rand::random());
            tasks.push(tokio::task::spawn_local(run_peer(engine, socket, shared.clone(), stop.clone())));
        }
        for t in tasks {
            t.await.context("a simulated peer panicked")?;
        }
        Ok(())
    })
}

fn wall_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// One peer: the agent driver's loop without the TUN device (see `agent::driver`).
async fn run_peer(
    mut engine: Engine,
    socket: tokio::net::UdpSocket,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut rx = vec![0u8; BUF_LEN];
    let mut tx = vec![0u8; BUF_LEN];
    let mut was_up = 0;
    loop {
        let deadline = tokio::time::Instant::from_std(engine.poll_timeout());
        tokio::select! {
            _ = stop.changed() => break,
            r = socket.recv_from(&mut rx) => {
                let Ok((n, src)) = r else { continue };
                if src == shared.rolodex {
                    if let Some(mut frame) = only_members(&shared, &rx[..n]) {
                        engine.handle_datagram(Instant::now(), wall_us(), src, &mut frame);
                    }
                } else if let Inbound::Deliver(range) =
                    engine.handle_datagram(Instant::now(), wall_us(), src, &mut rx[..n])
                    && let Some(len) = echo_reply(&rx[range], &mut tx[HEADROOM..])
                    && let Some((dst, len)) = engine.encrypt_outbound(Instant::now(), &mut tx, len)
                {
                    let _ = socket.send_to(&tx[..len], dst).await;
                }
            }
            _ = tokio::time::sleep_until(deadline) => engine.handle_timeout(Instant::now(), wall_us()),
        }
        while let Some(t) = engine.poll_transmit() {
            send(&socket, &t).await;
        }
        let up = engine.peers().filter(|p| p.is_up() && shared.members.contains(&p.name)).count();
        if up != was_up {
            shared.up.fetch_add(up, Ordering::Relaxed);
            shared.up.fetch_sub(was_up, Ordering::Relaxed);
            was_up = up;
        }
    }
    shared.up.fetch_sub(was_up, Ordering::Relaxed);
}

/// Sends a control datagram, with its one-off TTL if it asks for one (low-TTL punching probes).
async fn send(socket: &tokio::net::UdpSocket, t: &Transmit) {
    if let Some(ttl) = t.ttl {
        let _ = socket.set_ttl(ttl);
    }
    let _ = socket.send_to(&t.payload, t.dst).await;
    if t.ttl.is_some() {
        let _ = socket.set_ttl(DEFAULT_TTL);
    }
}

/// The rolodex frame with everything about members other than the real agents removed, re-sealed; `None`
/// to drop it. Frames that do not open are passed on unchanged (the engine counts them).
fn only_members(shared: &Shared, frame: &[u8]) -> Option<Vec<u8>> {
    let Ok(mut msg) = shared.key.open(frame) else { return Some(frame.to_vec()) };
    match &mut msg.body {
        Body::Peers { entries, .. } => entries.retain(|e| shared.members.contains(&e.name)),
        Body::Gone { peers } => peers.retain(|(name, _)| shared.members.contains(name)),
        Body::Ready { peer } if !shared.members.contains(peer) => return None,
        _ => return Some(frame.to_vec()),
    }
    shared.key.seal(&msg, rand::random()).ok()
}

/// Writes the reply to an IPv4 ICMP echo request into `out`; its length, or `None` for anything else.
fn echo_reply(pkt: &[u8], out: &mut [u8]) -> Option<usize> {
    let ihl = usize::from(*pkt.first()? & 0x0f) * 4;
    let is_echo = pkt[0] >> 4 == 4 && pkt.get(9) == Some(&1) && pkt.get(ihl) == Some(&8) && ihl >= 20;
    if !is_echo || pkt.len() < ihl + 8 || out.len() < pkt.len() {
        return None;
    }
    let out = &mut out[..pkt.len()];
    out.copy_from_slice(pkt);
    // Swapping the addresses keeps the IPv4 header checksum valid.
    out[12..16].copy_from_slice(&pkt[16..20]);
    out[16..20].copy_from_slice(&pkt[12..16]);
    out[ihl] = 0;
    out[ihl + 2..ihl + 4].fill(0);
    let sum = checksum(&out[ihl..]);
    out[ihl + 2..ihl + 4].copy_from_slice(&sum.to_be_bytes());
    Some(out.len())
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 =
        data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_icmp_echo_with_valid_checksum() {
        // 20-byte IPv4 header (proto 1) + echo request id 1 seq 1 + 4 bytes of data
        let mut req = vec![0x45, 0, 0, 32, 0, 0, 0, 0, 64, 1, 0, 0, 100, 64, 0, 1, 100, 64, 1, 1];
        req.extend_from_slice(&[8, 0, 0, 0, 0, 1, 0, 1, 1, 2, 3, 4]);
        let sum = checksum(&req[20..]);
        req[22..24].copy_from_slice(&sum.to_be_bytes());
        let mut out = [0u8; 64];
        let n = echo_reply(&req, &mut out).expect("an echo request gets a reply");
        assert_eq!(&out[12..16], &[100, 64, 1, 1]);
        assert_eq!(&out[16..20], &[100, 64, 0, 1]);
        assert_eq!(out[20], 0, "echo reply type");
        assert_eq!(checksum(&out[20..n]), 0, "a valid checksum sums to zero");
        assert_eq!(echo_reply(&req[..10], &mut out), None);
    }

    #[test]
    fn names_sort_on_both_sides_of_the_agent() {
        assert!(peer_name("agent", 0).as_str() > "agent");
        assert!(peer_name("agent", 1).as_str() < "agent");
        assert_eq!(peer_overlay(0), Ipv4Addr::new(100, 64, 1, 1));
        assert_eq!(peer_overlay(250), Ipv4Addr::new(100, 64, 2, 1));
    }
}
