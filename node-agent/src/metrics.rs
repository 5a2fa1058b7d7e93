//! Prometheus metrics and the JSON status page, refreshed from the engine once a second.
//!
//! The packet path only bumps plain integers inside the engine; they are copied into the registry here,
//! off the hot path, so no packet touches an atomic or a label lookup.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use prometheus::{GaugeVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use rolodex::http::{self, Response};
use serde_json::json;

use crate::engine::{DropReason, Engine};

pub struct Metrics {
    pub registry: Registry,
    peers: IntGauge,
    peer_up: IntGaugeVec,
    rtt: GaugeVec,
    rx_bytes: IntCounterVec,
    tx_bytes: IntCounterVec,
    rx_packets: IntCounterVec,
    tx_packets: IntCounterVec,
    handshakes: IntCounterVec,
    dropped: IntCounterVec,
    rolodex_up: IntGaugeVec,
    /// Last exported value of each counter, to turn engine totals into increments.
    last: HashMap<(usize, String), u64>,
}

fn counter(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntCounterVec> {
    IntCounterVec::new(Opts::new(name, help), labels)
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new_custom(Some("rolomesh".into()), None)?;
        let m = Self {
            peers: IntGauge::new("peers", "Peers known from the rolodex")?,
            peer_up: IntGaugeVec::new(Opts::new("peer_up", "1 when the link to the peer is up"), &["peer"])?,
            rtt: GaugeVec::new(Opts::new("peer_rtt_seconds", "Last probe round-trip time"), &["peer"])?,
            rx_bytes: counter("peer_rx_bytes_total", "Inner bytes received from the peer", &["peer"])?,
            tx_bytes: counter("peer_tx_bytes_total", "Inner bytes sent to the peer", &["peer"])?,
            rx_packets: counter("peer_rx_packets_total", "Packets received from the peer", &["peer"])?,
            tx_packets: counter("peer_tx_packets_total", "Packets sent to the peer", &["peer"])?,
            handshakes: counter("peer_handshakes_total", "DTLS handshakes started with the peer", &["peer"])?,
            dropped: counter("packets_dropped_total", "Packets dropped, by reason", &["reason"])?,
            rolodex_up: IntGaugeVec::new(
                Opts::new("rolodex_registered", "1 while the rolodex answers heartbeats"),
                &["rolodex"],
            )?,
            registry,
            last: HashMap::new(),
        };
        m.registry.register(Box::new(m.peers.clone()))?;
        m.registry.register(Box::new(m.peer_up.clone()))?;
        m.registry.register(Box::new(m.rtt.clone()))?;
        for c in [&m.rx_bytes, &m.tx_bytes, &m.rx_packets, &m.tx_packets, &m.handshakes, &m.dropped] {
            m.registry.register(Box::new(c.clone()))?;
        }
        m.registry.register(Box::new(m.rolodex_up.clone()))?;
        Ok(m)
    }

    fn bump(&mut self, which: usize, counter: &IntCounterVec, label: &str, total: u64) {
        let last = self.last.entry((which, label.to_string())).or_insert(0);
        // A peer that restarted and was re-added starts from zero again.
        let delta = if total >= *last { total - *last } else { total };
        *last = total;
        counter.with_label_values(&[label]).inc_by(delta);
    }

    pub fn update(&mut self, engine: &Engine) {
        self.peers.set(engine.peers().count() as i64);
        let counters = [
            self.rx_bytes.clone(),
            self.tx_bytes.clone(),
            self.rx_packets.clone(),
            self.tx_packets.clone(),
            self.handshakes.clone(),
        ];
        let mut live = Vec::new();
        for p in engine.peers() {
            live.push(p.name.clone());
            self.peer_up.with_label_values(&[&p.name]).set(i64::from(p.is_up()));
            if let Some(rtt) = p.stats.rtt {
                self.rtt.with_label_values(&[&p.name]).set(rtt.as_secs_f64());
            }
            let s = p.stats;
            let totals = [s.rx_bytes, s.tx_bytes, s.rx_packets, s.tx_packets, s.handshakes];
            for (i, (c, total)) in counters.iter().zip(totals).enumerate() {
                self.bump(i, c, &p.name, total);
            }
        }
        // Departed peers' series go away rather than lingering at their last value.
        let gone: Vec<String> =
            self.last.keys().filter(|(i, n)| *i == 0 && !live.contains(n)).map(|(_, n)| n.clone()).collect();
        for name in gone {
            let _ = self.peer_up.remove_label_values(&[&name]);
            let _ = self.rtt.remove_label_values(&[&name]);
            for (i, c) in counters.iter().enumerate() {
                let _ = c.remove_label_values(&[&name]);
                self.last.remove(&(i, name.clone()));
            }
        }
        let dropped = self.dropped.clone();
        for r in DropReason::ALL {
            self.bump(100, &dropped, r.label(), engine.stats().drops[r as usize]);
        }
        for (addr, up) in engine.rolodexes() {
            self.rolodex_up.with_label_values(&[&addr.to_string()]).set(i64::from(up));
        }
    }
}

/// The `/status` document: what `rolomesh status` prints and what tests and the operator read.
pub fn status_json(engine: &Engine, tun: &str, port: u16) -> String {
    let peers: Vec<_> = engine
        .peers()
        .map(|p| {
            json!({
                "name": p.name,
                "state": p.state.as_str(),
                "role": format!("{:?}", p.role).to_lowercase(),
                "endpoint": p.endpoint.map(|e| e.to_string()),
                "overlay": p.overlay.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "routes": p.routes.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "rtt_ms": p.stats.rtt.map(|d| d.as_secs_f64() * 1000.0),
                "connect_ms": p.stats.connect_time.map(|d| d.as_secs_f64() * 1000.0),
                "last_handshake_us": p.stats.last_handshake_us,
                "handshakes": p.stats.handshakes,
                "rx_bytes": p.stats.rx_bytes,
                "tx_bytes": p.stats.tx_bytes,
                "via_relay": false,
            })
        })
        .collect();
    let drops: serde_json::Map<String, serde_json::Value> = DropReason::ALL
        .iter()
        .map(|r| (r.label().to_string(), json!(engine.stats().drops[*r as usize])))
        .collect();
    let rolodexes: Vec<_> =
        engine.rolodexes().map(|(a, up)| json!({"address": a.to_string(), "registered": up})).collect();
    json!({
        "name": engine.name(),
        "tun": tun,
        "port": port,
        "reflexive": engine.reflexive().map(|a| a.to_string()),
        "rolodexes": rolodexes,
        "peers": peers,
        "dropped": drops,
    })
    .to_string()
}

/// Serves /metrics, /status, /healthz and /readyz.
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    status: Arc<Mutex<String>>,
) -> anyhow::Result<impl Future<Output = ()>> {
    http::serve(addr, move |path| {
        let registry = registry.clone();
        let status = status.clone();
        async move {
            match path.as_str() {
                "/metrics" => http::render(&registry),
                "/status" => Response::json(status.lock().map(|s| s.clone()).unwrap_or_default()),
                "/healthz" | "/readyz" => Response::text(200, "ok\n"),
                _ => Response::text(404, "not found\n"),
            }
        }
    })
    .await
}
