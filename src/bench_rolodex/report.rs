//! The rolodex benchmark's results: one row per member count, as markdown and JSON.

use std::fmt::Write;

use serde_json::{Value, json};

use super::Args;

/// What one member count measured. Rolodex figures come from its /proc entry and its metrics.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub members: usize,
    /// Seconds over which the members started.
    pub ramp_s: f64,
    pub registered: usize,
    /// Members that knew every other member when registration ended.
    pub complete: usize,
    /// Seconds from the first member's start until all were acked / all views were complete.
    pub register_s: Option<f64>,
    pub converge_s: Option<f64>,
    /// What the rolodex sent and spent while everyone joined.
    pub join_frames: u64,
    pub join_bytes: u64,
    pub join_cpu_s: f64,
    pub loadgen_join_cpu_s: f64,
    /// Steady state, per heartbeat interval.
    pub cpu_ms_per_interval: f64,
    pub frames_per_interval: f64,
    pub bytes_per_interval: f64,
    pub received_per_interval: f64,
    /// Listing pages the members received in steady state (each a sign of a view the rolodex found stale).
    pub steady_listing_pages: u64,
    pub rss_mib: f64,
    pub hwm_mib: f64,
    /// Per pair: until both real clients had learnt the other.
    pub intro_ms: Vec<f64>,
    /// Per pair: until every simulated member knew both (None: not within the timeout).
    pub all_knew_ms: Vec<Option<f64>>,
    pub listing_pages: u64,
    pub dropped: u64,
    pub anomalies: u64,
    pub udp_rcvbuf_errors: Option<u64>,
}

impl Row {
    pub fn us_per_member_heartbeat(&self) -> f64 {
        self.cpu_ms_per_interval * 1000.0 / self.members as f64
    }

    pub fn bytes_per_member(&self) -> f64 {
        self.bytes_per_interval / self.members as f64
    }

    pub fn frames_per_member(&self) -> f64 {
        self.frames_per_interval / self.members as f64
    }

    /// Pairs that every simulated member learnt of.
    pub fn pairs_known_by_all(&self) -> usize {
        self.all_knew_ms.iter().flatten().count()
    }
}

/// (p50, max) of `v`, or None when empty.
fn p50_max(v: &[f64]) -> Option<(f64, f64)> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    Some((*s.get(s.len() / 2)?, *s.last()?))
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.digits$}"))
}

fn pair(v: Option<(f64, f64)>) -> String {
    v.map_or("-".into(), |(a, b)| format!("{a:.0} / {b:.0}"))
}

fn all_knew(r: &Row) -> Vec<f64> {
    r.all_knew_ms.iter().flatten().copied().collect()
}

/// One line per member count for the progress log.
pub fn summary(r: &Row) -> String {
    format!(
        "   registered {}/{} in {} s, complete in {} s; steady {:.1} ms CPU, {:.0} datagrams, {:.0} B per \
         interval; introduce p50/max {} ms",
        r.registered,
        r.members,
        opt(r.register_s, 1),
        opt(r.converge_s, 1),
        r.cpu_ms_per_interval,
        r.frames_per_interval,
        r.bytes_per_interval,
        pair(p50_max(&r.intro_ms)),
    )
}

pub fn markdown(a: &Args, rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### Rolodex scale: simulated members on 127.0.0.1, heartbeat {} s, {} steady intervals, {} pairs\n",
        a.heartbeat, a.intervals, a.pairs
    );
    s.push_str(
        "Steady state, per heartbeat interval (rolodex process):\n\n\
         | members | CPU ms | µs / member-heartbeat | datagrams sent | per member | bytes sent | bytes / member \
         | listing pages | RSS MiB (peak) |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {:.1} | {:.2} | {:.0} | {:.2} | {:.0} | {:.1} | {} | {:.1} ({:.1}) |",
            r.members,
            r.cpu_ms_per_interval,
            r.us_per_member_heartbeat(),
            r.frames_per_interval,
            r.frames_per_member(),
            r.bytes_per_interval,
            r.bytes_per_member(),
            r.steady_listing_pages,
            r.rss_mib,
            r.hwm_mib,
        );
    }
    s.push_str(
        "\nJoining: members start evenly over the ramp, then pairs of real clients join together (latency \
         from their first register):\n\n\
         | members | ramp s | all registered s | all views complete s | datagrams sent | MB sent | rolodex CPU s \
         | load generator CPU s | pair learns each other p50 / max ms | all members know the pair p50 / max ms |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {} | {} |",
            r.members,
            r.ramp_s,
            opt(r.register_s, 2),
            opt(r.converge_s, 2),
            r.join_frames,
            r.join_bytes as f64 / 1e6,
            r.join_cpu_s,
            r.loadgen_join_cpu_s,
            pair(p50_max(&r.intro_ms)),
            pair(p50_max(&all_knew(r))),
        );
    }
    let problems: Vec<String> = rows
        .iter()
        .filter(|r| {
            r.registered < r.members
                || r.complete < r.members
                || r.anomalies > 0
                || r.pairs_known_by_all() < r.all_knew_ms.len()
        })
        .map(|r| {
            format!(
                "{} members: {} registered, {} complete, {} anomalies, {}/{} pairs known by all",
                r.members,
                r.registered,
                r.complete,
                r.anomalies,
                r.pairs_known_by_all(),
                r.all_knew_ms.len()
            )
        })
        .collect();
    if !problems.is_empty() {
        let _ = writeln!(s, "\nIncomplete: {}", problems.join("; "));
    }
    s
}

pub fn json(a: &Args, rows: &[Row]) -> Value {
    let rows: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "members": r.members,
                "ramp_s": r.ramp_s,
                "registered": r.registered,
                "complete": r.complete,
                "register_s": r.register_s,
                "converge_s": r.converge_s,
                "join": {
                    "datagrams_sent": r.join_frames,
                    "bytes_sent": r.join_bytes,
                    "rolodex_cpu_s": r.join_cpu_s,
                    "loadgen_cpu_s": r.loadgen_join_cpu_s,
                },
                "steady": {
                    "cpu_ms_per_interval": r.cpu_ms_per_interval,
                    "us_per_member_heartbeat": r.us_per_member_heartbeat(),
                    "datagrams_per_interval": r.frames_per_interval,
                    "datagrams_per_member": r.frames_per_member(),
                    "bytes_per_interval": r.bytes_per_interval,
                    "bytes_per_member": r.bytes_per_member(),
                    "received_per_interval": r.received_per_interval,
                    "listing_pages": r.steady_listing_pages,
                },
                "rss_mib": r.rss_mib,
                "peak_rss_mib": r.hwm_mib,
                "introduce_ms": r.intro_ms,
                "all_members_knew_ms": r.all_knew_ms,
                "pairs_known_by_all": r.pairs_known_by_all(),
                "listing_pages_total": r.listing_pages,
                "rolodex_dropped": r.dropped,
                "anomalies": r.anomalies,
                "udp_rcvbuf_errors_machine_wide": r.udp_rcvbuf_errors,
            })
        })
        .collect();
    json!({
        "benchmark": "rolodex-scale",
        "heartbeat_s": a.heartbeat,
        "intervals": a.intervals,
        "pairs": a.pairs,
        "rows": rows,
    })
}
