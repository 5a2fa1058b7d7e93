//! The agent's I/O edge: one UDP socket, the TUN device and timers, driving the sans-IO [`Engine`].
//!
//! A single task owns the engine, so nothing on the packet path takes a lock; buffers are allocated once and
//! packets move in batches ([`crate::datapath`]): TSO/GRO on the TUN side, GSO/GRO on the socket.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::watch;

use crate::datapath::{Inbound, Outbound};
use crate::engine::{Engine, EngineConfig, HEADROOM, Transmit};
use crate::gro::{self, MAX_MERGE, Merge};
use crate::kube::Snapshot;
use crate::metrics::Metrics;
use crate::sysroutes::KernelRoutes;
use crate::tun::{Tun, TunConfig};
use crate::udp::{self, MAX_SEGMENTS, SendError};
use crate::{iface, routes};

pub struct RunConfig {
    pub engine: EngineConfig,
    pub listen_port: u16,
    pub tun: TunConfig,
    pub metrics: Option<SocketAddr>,
    /// Keep polling the socket and TUN this long after the last packet instead of sleeping in epoll: a
    /// waking thread costs tens of microseconds on a VM, so this cuts latency, at the price of CPU.
    pub busy_poll: Duration,
    /// `--kube`: the rest of the configuration comes from the API ([`crate::kube::run`]).
    pub kube: Option<crate::config::KubeSettings>,
}

pub fn wall_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// Socket buffers absorb bursts between our batches; more than the usual rmem_max, as wireguard-go does.
const SOCKET_BUFFER: usize = 7 << 20;
const DEFAULT_TTL: u32 = 64;
/// Batches handled per wake-up before the other direction and the timers get their turn.
const BUDGET: usize = 8;

/// Binds the one socket used for the rolodex and every peer, dual-stack when an IPv6 rolodex is configured.
fn bind(port: u16, v6: bool) -> anyhow::Result<UdpSocket> {
    let (domain, addr) = if v6 {
        (Domain::IPV6, SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port))
    } else {
        (Domain::IPV4, SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port))
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP)).context("creating UDP socket")?;
    if v6 {
        s.set_only_v6(false).context("enabling dual-stack UDP")?;
    }
    udp::set_buffers(s.as_raw_fd(), SOCKET_BUFFER);
    s.set_nonblocking(true)?;
    s.bind(&addr.into()).with_context(|| format!("cannot bind UDP port {port}"))?;
    UdpSocket::from_std(s.into()).context("registering UDP socket")
}

/// Maps addresses between the engine (plain IPv4) and a dual-stack socket (IPv4-mapped IPv6).
fn to_socket(dst: SocketAddr, v6: bool) -> SocketAddr {
    match (dst, v6) {
        (SocketAddr::V4(a), true) => SocketAddr::new(IpAddr::V6(a.ip().to_ipv6_mapped()), a.port()),
        _ => dst,
    }
}

async fn send_control(socket: &UdpSocket, v6: bool, t: &Transmit) {
    let sock = SockRef::from(socket);
    if let Some(ttl) = t.ttl {
        // A one-off TTL for punching: set, send, restore. Only this task uses the socket, so no other
        // datagram can go out with it.
        let _ = if t.dst.is_ipv4() { sock.set_ttl_v4(ttl) } else { sock.set_unicast_hops_v6(ttl) };
        if v6 && t.dst.is_ipv4() {
            let _ = sock.set_unicast_hops_v6(ttl);
        }
    }
    if let Err(e) = socket.send_to(&t.payload, to_socket(t.dst, v6)).await {
        tracing::debug!(dst = %t.dst, error = %e, "send failed");
    }
    if t.ttl.is_some() {
        let _ = sock.set_ttl_v4(DEFAULT_TTL);
        if v6 {
            let _ = sock.set_unicast_hops_v6(DEFAULT_TTL);
        }
    }
}

/// Runs the agent until `shutdown` completes; the TUN device is removed when this returns. With `--kube`
/// the configuration is read from the API first and status is written back ([`crate::kube::run`]).
pub async fn run(mut cfg: RunConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    match cfg.kube.take() {
        Some(k) => crate::kube::run(k, shutdown).await,
        None => run_with_status(cfg, None, shutdown).await,
    }
}

/// [`run`] with a fixed configuration; when `snapshots` is given, a [`Snapshot`] of the engine is published
/// to it once a second (off the packet path).
pub async fn run_with_status(
    mut cfg: RunConfig,
    snapshots: Option<watch::Sender<Snapshot>>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let v6 = cfg.engine.rolodexes.iter().any(SocketAddr::is_ipv6);
    let socket = bind(cfg.listen_port, v6)?;
    let port = socket.local_addr()?.port();
    let tun = Tun::create(&cfg.tun)?;
    let overlay: Vec<routes::IpNet> = [cfg.tun.ipv4, cfg.tun.ipv6].into_iter().flatten().collect();
    let mut kernel_routes = match KernelRoutes::new(tun.name()) {
        Ok(k) => Some(k),
        Err(e) => {
            tracing::warn!(error = %e, "cannot manage kernel routes; peers' advertised routes will not be reachable");
            None
        }
    };
    let find_candidates = || match iface::local_candidates(tun.name(), &overlay, port) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list local addresses; only the reflexive address will be offered");
            vec![]
        }
    };
    cfg.engine.candidates = find_candidates();
    let mut engine = Engine::new(cfg.engine, Instant::now(), rand::random());
    tracing::info!(
        name = engine.name(), port, tun = tun.name(), mtu = tun.mtu(), candidates = ?engine_candidates(&engine),
        "agent started"
    );
    let status = Arc::new(Mutex::new(String::from("{}")));
    let mut metrics = Metrics::new().context("creating metrics")?;
    if let Some(addr) = cfg.metrics {
        tokio::spawn(crate::metrics::serve(addr, metrics.registry.clone(), status.clone()).await?);
    }

    let fd = socket.as_raw_fd();
    let mut net = BatchIo { gso: udp::gso_available(fd), v6 };
    let gro = udp::enable_gro(fd);
    tracing::info!(gso = net.gso, gro, tun_offload = tun.offload(), "data path");
    let mut outbound = Outbound::new(tun.mtu());
    let mut inbound = Inbound::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut refresh = tokio::time::interval(Duration::from_secs(30));
    let busy_poll = cfg.busy_poll;
    let mut last_packet = Instant::now();
    tokio::pin!(shutdown);
    loop {
        let deadline = tokio::time::Instant::from_std(engine.poll_timeout());
        let spinning = last_packet.elapsed() < busy_poll;
        tokio::select! {
            _ = &mut shutdown => break,
            r = socket.readable() => {
                r.context("waiting on the UDP socket")?;
                if from_network(&socket, &tun, &mut engine, &mut inbound, &mut net, false).await {
                    last_packet = Instant::now();
                }
            }
            r = tun.readable() => {
                r.context("waiting on the TUN device")?;
                if to_network(&socket, &tun, &mut engine, &mut outbound, &mut net, false).await? {
                    last_packet = Instant::now();
                }
            }
            // Busy polling: yield to the runtime (timers, signals) and ask the kernel directly.
            _ = tokio::task::yield_now(), if spinning => {
                let rx = from_network(&socket, &tun, &mut engine, &mut inbound, &mut net, true).await;
                let tx = to_network(&socket, &tun, &mut engine, &mut outbound, &mut net, true).await?;
                if rx || tx {
                    last_packet = Instant::now();
                }
            }
            _ = tokio::time::sleep_until(deadline) => engine.handle_timeout(Instant::now(), wall_us()),
            _ = tick.tick() => {
                metrics.update(&engine);
                if let Ok(mut s) = status.lock() {
                    *s = crate::metrics::status_json(&engine, tun.name(), port);
                }
                if let Some(tx) = &snapshots {
                    tx.send_replace(Snapshot::of(&engine));
                }
                if let Some(k) = kernel_routes.as_mut() {
                    k.sync(&peer_routes(&engine, &overlay));
                }
            }
            _ = refresh.tick() => engine.set_candidates(Instant::now(), find_candidates()),
        }
        while let Some(t) = engine.poll_transmit() {
            send_control(&socket, v6, &t).await;
        }
    }
    tracing::info!(tun = tun.name(), "shutting down; removing TUN device");
    drop(tun);
    Ok(())
}

struct BatchIo {
    /// UDP GSO works; cleared for good the first time the kernel refuses it.
    gso: bool,
    v6: bool,
}

/// Drains the socket: received datagrams go through the engine, opened packets to TUN in batches.
/// `direct` asks the kernel even if the reactor saw no readiness. Returns whether anything arrived.
async fn from_network(
    socket: &UdpSocket,
    tun: &Tun,
    engine: &mut Engine,
    rx: &mut Inbound,
    net: &mut BatchIo,
    direct: bool,
) -> bool {
    let fd = socket.as_raw_fd();
    let mut got = false;
    for _ in 0..BUDGET {
        let r =
            if direct { rx.recv.recv(fd) } else { socket.try_io(Interest::READABLE, || rx.recv.recv(fd)) };
        match r {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return got,
            // ICMP errors from earlier sends (port unreachable while punching) surface here.
            Err(e) => {
                tracing::trace!(error = %e, "UDP receive error");
                return got;
            }
        }
        got = true;
        rx.open(engine, Instant::now(), wall_us());
        deliver(tun, rx).await;
        // Handshake and probe answers go out before the next batch.
        while let Some(t) = engine.poll_transmit() {
            send_control(socket, net.v6, &t).await;
        }
    }
    got
}

/// Writes the opened packets to TUN: runs of TCP segments coalesced into one super-packet each when the
/// device has offloads, otherwise one write per packet.
async fn deliver(tun: &Tun, rx: &Inbound) {
    let mut m = Merge::default();
    let mut i = 0;
    while i < rx.len() {
        let mut parts = [io::IoSlice::new(&[]); MAX_MERGE + 2];
        let mut n = 0;
        if tun.offload() {
            gro::next_merge(|k| rx.packet(k), rx.len(), i, tun.udp_offload(), &mut m);
            parts[0] = io::IoSlice::new(&m.vnet);
            n = 1;
        } else {
            (m.start, m.end) = (i, i + 1);
        }
        if m.is_single() {
            parts[n] = io::IoSlice::new(rx.packet(i));
            n += 1;
        } else {
            parts[n] = io::IoSlice::new(&m.head[..m.head_len]);
            n += 1;
            for k in m.start..m.end {
                parts[n] = io::IoSlice::new(gro::payload(rx.packet(k), m.head_len));
                n += 1;
            }
        }
        if let Err(e) = tun.send_vectored(&parts[..n]).await {
            tracing::debug!(error = %e, "TUN write failed");
        }
        i = m.end;
    }
}

/// Drains TUN: packets are sealed in place and leave in GSO runs. Only a dead device is an error; a packet
/// the offload code cannot parse is dropped. `direct` as for [`from_network`]; returns whether anything
/// was read.
async fn to_network(
    socket: &UdpSocket,
    tun: &Tun,
    engine: &mut Engine,
    tx: &mut Outbound,
    net: &mut BatchIo,
    direct: bool,
) -> anyhow::Result<bool> {
    let mut got = false;
    for _ in 0..BUDGET {
        let mut drained = false;
        let now = Instant::now();
        while tx.has_room() {
            let (scratch, bufs, sizes) = tx.next_read();
            let r = if direct {
                tun.poll_recv_batch(scratch, bufs, sizes, HEADROOM)
            } else {
                tun.try_recv_batch(scratch, bufs, sizes, HEADROOM)
            };
            match r {
                Ok(n) => {
                    got = true;
                    tx.seal_read(engine, now, n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    drained = true;
                    break;
                }
                Err(e) if e.raw_os_error().is_some() => return Err(e).context("reading from the TUN device"),
                Err(e) => tracing::debug!(error = %e, "dropped a packet from TUN"),
            }
        }
        send_runs(socket, tx, net).await;
        tx.clear();
        if drained {
            break;
        }
    }
    Ok(got)
}

async fn send_runs(socket: &UdpSocket, tx: &Outbound, net: &mut BatchIo) {
    let fd = socket.as_raw_fd();
    let mut from = 0;
    while let Some((run, dst, seg)) = tx.next_run(from) {
        from = run.end;
        let mut slices: [&[u8]; MAX_SEGMENTS] = [&[]; MAX_SEGMENTS];
        let n = tx.datagrams(run, &mut slices);
        let addr = socket2::SockAddr::from(to_socket(dst, net.v6));
        loop {
            let gso = net.gso;
            let r = socket
                .async_io(Interest::WRITABLE, || {
                    match udp::send_segments(fd, &addr, &slices[..n], seg, gso) {
                        Ok(()) => Ok(true),
                        Err(SendError::GsoRefused) => Ok(false),
                        Err(SendError::Io(e)) => Err(e),
                    }
                })
                .await;
            match r {
                Ok(true) => break,
                Ok(false) => {
                    tracing::warn!("UDP GSO refused by the kernel or device; sending datagrams one by one");
                    net.gso = false;
                }
                Err(e) => {
                    tracing::trace!(%dst, error = %e, "UDP send failed");
                    break;
                }
            }
        }
    }
}

fn engine_candidates(e: &Engine) -> Vec<SocketAddr> {
    e.candidates().to_vec()
}

impl RunConfig {
    /// Maps the validated user configuration onto the engine and device settings.
    pub fn from_agent_config(c: &crate::config::AgentConfig) -> Self {
        // One address per configured rolodex: registering twice with the same server would double traffic.
        let rolodexes: Vec<SocketAddr> = c.rolodex.iter().filter_map(|r| r.addrs.first().copied()).collect();
        let v6 = rolodexes.iter().any(SocketAddr::is_ipv6);
        let overlay =
            [c.overlay_v4, c.overlay_v6].into_iter().flatten().map(|n| (n.addr(), n.prefix_len())).collect();
        Self {
            engine: EngineConfig {
                network: c.network.clone(),
                name: c.name.clone(),
                secret: c.secret.as_bytes().to_vec(),
                overlay,
                routes: vec![],
                rolodexes,
                candidates: vec![],
                keepalive: c.keepalive,
                heartbeat: c.heartbeat,
                punch_ttl: u32::from(c.punch_ttl),
                freshness: Duration::from_secs(60),
            },
            listen_port: c.listen_port,
            tun: c.tun_config(v6),
            metrics: c.metrics_listen,
            busy_poll: c.busy_poll,
            kube: c.kube.clone(),
        }
    }
}

/// Prefixes peers advertise that the kernel must send into the TUN device. Skipped: anything inside our
/// overlay (the TUN's prefix route covers it), our own routes, default routes, and any prefix that would
/// capture the underlay path to a rolodex or a peer (routing the tunnel into itself).
fn peer_routes(engine: &Engine, overlay: &[routes::IpNet]) -> std::collections::BTreeSet<routes::IpNet> {
    let own = engine.own_routes();
    let underlay: Vec<IpAddr> = engine
        .rolodexes()
        .map(|(a, _)| a.ip())
        .chain(
            engine
                .peers()
                .flat_map(|p| p.candidates.iter().map(|c| c.ip()).chain(p.endpoint.map(|e| e.ip()))),
        )
        .collect();
    let mut out = std::collections::BTreeSet::new();
    for p in engine.peers() {
        for r in &p.routes {
            let net = r.network();
            let inside_overlay = overlay
                .iter()
                .any(|o| o.network().contains(&net.addr()) && o.prefix_len() <= net.prefix_len());
            let captures_underlay = underlay.iter().any(|u| net.contains(u));
            if net.prefix_len() == 0 || inside_overlay || own.contains(&net) || captures_underlay {
                continue;
            }
            out.insert(net);
        }
    }
    out
}
