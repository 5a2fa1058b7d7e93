//! The rolodex UDP service: drives [`Server`] from a socket and a timer, and exports metrics.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};
use tokio::net::UdpSocket;

use crate::http::{self, Response};
use crate::server::{Server, ServerConfig};

pub struct ServiceConfig {
    pub listen: SocketAddr,
    /// (network name, rolodex key)
    pub networks: Vec<(String, [u8; 32])>,
    pub server: ServerConfig,
    pub metrics: Option<SocketAddr>,
}

pub fn wall_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

struct Metrics {
    registry: Registry,
    received: IntCounter,
    dropped: IntCounterVec,
    sent: IntCounter,
    sent_bytes: IntCounter,
    members: IntGaugeVec,
}

impl Metrics {
    fn new() -> anyhow::Result<Self> {
        let registry = Registry::new_custom(Some("rolomesh_rolodex".into()), None)?;
        let m = Self {
            received: IntCounter::new("frames_received_total", "Datagrams received")?,
            dropped: IntCounterVec::new(
                Opts::new("frames_dropped_total", "Datagrams dropped, by reason"),
                &["reason"],
            )?,
            sent: IntCounter::new("frames_sent_total", "Datagrams sent")?,
            sent_bytes: IntCounter::new("bytes_sent_total", "Bytes sent")?,
            members: IntGaugeVec::new(Opts::new("members", "Registered members per network"), &["network"])?,
            registry,
        };
        m.registry.register(Box::new(m.received.clone()))?;
        m.registry.register(Box::new(m.dropped.clone()))?;
        m.registry.register(Box::new(m.sent.clone()))?;
        m.registry.register(Box::new(m.sent_bytes.clone()))?;
        m.registry.register(Box::new(m.members.clone()))?;
        Ok(m)
    }
}

/// Datagrams handled at most in one go, before sending what they caused.
const BATCH: usize = 256;
/// While a long send queue drains (a join wave), whatever arrived is handled every this many sends, so
/// heartbeats are not dropped by a full receive buffer and their members timed out.
const SENDS_PER_RECEIVE: usize = 64;
/// Room for a burst of registrations (a rolodex restart: every member within one heartbeat interval).
/// Capped by net.core.rmem_max.
const RECV_BUFFER: usize = 8 << 20;

/// Runs until `shutdown` completes.
pub async fn run(cfg: ServiceConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let socket = UdpSocket::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot bind rolodex UDP {}", cfg.listen))?;
    if let Err(e) = socket2::SockRef::from(&socket).set_recv_buffer_size(RECV_BUFFER) {
        tracing::warn!(error = %e, "cannot enlarge the receive buffer");
    }
    let metrics = Metrics::new().context("creating metrics")?;
    if let Some(addr) = cfg.metrics {
        let registry = metrics.registry.clone();
        let server = http::serve(addr, move |path| {
            let registry = registry.clone();
            async move {
                match path.as_str() {
                    "/metrics" => http::render(&registry),
                    "/healthz" | "/readyz" => Response::text(200, "ok\n"),
                    _ => Response::text(404, "not found\n"),
                }
            }
        })
        .await?;
        tokio::spawn(server);
    }
    let seed = rand::random();
    let mut server = Server::new(cfg.server, &cfg.networks, Instant::now(), seed);
    let names: Vec<&str> = cfg.networks.iter().map(|(n, _)| n.as_str()).collect();
    tracing::info!(listen = %socket.local_addr()?, networks = ?names, "rolodex listening");
    tokio::pin!(shutdown);
    let mut buf = vec![0u8; 65536];
    loop {
        let deadline = tokio::time::Instant::from_std(server.poll_timeout());
        tokio::select! {
            _ = &mut shutdown => break,
            r = socket.recv_from(&mut buf) => {
                handle(&mut server, &metrics, r, &buf);
                // Handle what else is already queued before sending: the server coalesces the introductions
                // of joins handled together (see `server.rs`).
                receive_queued(&socket, &mut server, &metrics, &mut buf, BATCH - 1);
            }
            _ = tokio::time::sleep_until(deadline) => {
                server.handle_timeout(Instant::now(), wall_us());
                for (net, n) in server.networks() {
                    metrics.members.with_label_values(&[net]).set(n as i64);
                }
            }
        }
        let mut sends = 0;
        while let Some(t) = server.poll_transmit() {
            match socket.send_to(&t.payload, t.dst).await {
                Ok(n) => {
                    metrics.sent.inc();
                    metrics.sent_bytes.inc_by(n as u64);
                }
                Err(e) => tracing::debug!(dst = %t.dst, error = %e, "send failed"),
            }
            sends += 1;
            if sends % SENDS_PER_RECEIVE == 0 {
                receive_queued(&socket, &mut server, &metrics, &mut buf, BATCH);
            }
        }
    }
    tracing::info!("rolodex stopped");
    Ok(())
}

fn handle(server: &mut Server, metrics: &Metrics, r: std::io::Result<(usize, SocketAddr)>, buf: &[u8]) {
    match r {
        Ok((n, src)) => {
            metrics.received.inc();
            if let Err(reason) = server.handle(Instant::now(), wall_us(), src, &buf[..n]) {
                metrics.dropped.with_label_values(&[reason.label()]).inc();
                tracing::debug!(%src, reason = reason.label(), "dropped datagram");
            }
        }
        // ICMP errors from earlier sends surface here on Linux; they are not fatal.
        Err(e) => tracing::debug!(error = %e, "recv"),
    }
}

/// Handles up to `limit` datagrams that have already arrived, without waiting.
fn receive_queued(socket: &UdpSocket, server: &mut Server, metrics: &Metrics, buf: &mut [u8], limit: usize) {
    for _ in 0..limit {
        match socket.try_recv_from(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            r => handle(server, metrics, r, buf),
        }
    }
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        }
        _ => std::future::pending().await,
    }
}
