//! The k8s-scale results: JSON (serde) and a Markdown summary.

use std::fmt::Write as _;

use serde::Serialize;

use super::Options;

#[derive(Debug, Serialize)]
pub struct Report {
    pub nodes: usize,
    pub allocation: Allocation,
    pub writes: Option<Writes>,
    /// `nproc` and the load average at the end: the machine may be shared.
    pub cpus: usize,
    pub load_average: String,
}

/// Phase 1: one MeshMember per Node.
#[derive(Debug, Serialize)]
pub struct Allocation {
    pub members: usize,
    /// MeshNetwork applied → every Node's member exists with an address.
    pub members_secs: f64,
    /// MeshNetwork applied → its status counts every member.
    pub status_secs: f64,
    pub distinct_addresses: usize,
    pub outside_pool: usize,
    pub nodes_without_member: usize,
    pub nodes_with_several: usize,
    /// Server-side applies of MeshMembers and Events the API server received meanwhile.
    pub member_applies: u64,
    pub events: u64,
    pub operator_reconciles: u64,
    pub operator_cpu_secs: f64,
}

/// Phase 2: MeshMember status writes.
#[derive(Debug, Serialize)]
pub struct Writes {
    pub writers: usize,
    pub status_interval_secs: f64,
    /// What the writers use with this many peers: the interval, or 30 ms per peer when longer.
    pub effective_interval_secs: f64,
    pub heartbeat_secs: f64,
    pub flaps: usize,
    pub phases: Vec<Phase>,
    /// As the writers counted them (the API server's counts are in the phases).
    pub writer_writes: u64,
    pub writer_failures: u64,
    /// Status writes by the HTTP code the API server answered with, over the whole run.
    pub status_codes: std::collections::BTreeMap<String, u64>,
    /// CPU seconds of this process (the simulated mesh and every writer).
    pub bench_cpu_secs: f64,
    /// One member's JSON once all its links are up, and all members' together.
    pub member_bytes: usize,
    pub members_list_bytes: usize,
    /// Writers started → the MeshNetwork status says every member is Connected.
    pub network_connected_secs: Option<f64>,
    /// The simulated links were all up by then.
    pub links_up_by_secs: f64,
    /// A Node created during the churn → its member has an address (`None`: not within 120 s).
    pub new_node_member_secs: Option<f64>,
    /// The highest rate over 5 s: one member change can reach every member at once (a node restarting).
    pub peak_writes_per_sec: f64,
    /// (seconds since the writers started, status writes in the preceding sample interval).
    pub series: Vec<(f64, u64)>,
}

#[derive(Debug, Serialize)]
pub struct Phase {
    pub name: String,
    pub secs: f64,
    /// Status writes (APPLY/PATCH on meshmembers/status) the API server received.
    pub writes: u64,
    pub writes_per_sec: f64,
    /// The most the writers' design allows in this window.
    pub bound: u64,
    pub bound_per_sec: f64,
    pub failed_writes: u64,
    pub apiserver_cpu_secs: f64,
    pub operator_cpu_secs: f64,
    pub operator_reconciles: u64,
}

impl Phase {
    pub fn new(name: &str, secs: f64, writes: u64, bound: u64) -> Phase {
        let rate = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        Phase {
            name: name.into(),
            secs,
            writes,
            writes_per_sec: rate(writes),
            bound,
            bound_per_sec: rate(bound),
            failed_writes: 0,
            apiserver_cpu_secs: 0.0,
            operator_cpu_secs: 0.0,
            operator_reconciles: 0,
        }
    }
    pub fn with_failures(self, failed_writes: u64) -> Phase {
        Phase { failed_writes, ..self }
    }
    pub fn with_cpu(self, apiserver_cpu_secs: f64, operator_cpu_secs: f64) -> Phase {
        Phase { apiserver_cpu_secs, operator_cpu_secs, ..self }
    }
    pub fn with_reconciles(self, operator_reconciles: u64) -> Phase {
        Phase { operator_reconciles, ..self }
    }
}

impl Report {
    pub fn new(o: &Options, allocation: Allocation, writes: Option<Writes>) -> Report {
        Report {
            nodes: o.nodes,
            allocation,
            writes,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            load_average: std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_string(),
        }
    }

    pub fn markdown(&self) -> String {
        let a = &self.allocation;
        let mut s = String::new();
        let _ = writeln!(s, "# k8s-scale: {} Nodes\n", self.nodes);
        let _ = writeln!(
            s,
            "Machine: {} CPUs, load average at the end {}. Shared machine: timings are noisy.\n",
            self.cpus, self.load_average
        );
        let _ = writeln!(s, "## Allocation (operator)\n");
        let _ = writeln!(s, "| measure | value |\n|---|---|");
        let _ = writeln!(
            s,
            "| MeshNetwork applied → {} members with addresses | {:.1} s |",
            a.members, a.members_secs
        );
        let _ = writeln!(s, "| MeshNetwork applied → status counts them | {:.1} s |", a.status_secs);
        let _ = writeln!(
            s,
            "| distinct addresses / outside the pool | {} / {} |",
            a.distinct_addresses, a.outside_pool
        );
        let _ = writeln!(
            s,
            "| Nodes without a member / with several | {} / {} |",
            a.nodes_without_member, a.nodes_with_several
        );
        let _ = writeln!(s, "| member applies / Events written | {} / {} |", a.member_applies, a.events);
        let _ = writeln!(
            s,
            "| operator reconciles / CPU | {} / {:.1} s |\n",
            a.operator_reconciles, a.operator_cpu_secs
        );
        let Some(w) = &self.writes else { return s };
        let _ = writeln!(
            s,
            "## Status writes: {} writers, --status-interval {} s (with {} peers: {:.1} s), heartbeat {} s, {} node \
             restarts\n",
            w.writers,
            w.status_interval_secs,
            w.writers.saturating_sub(1),
            w.effective_interval_secs,
            w.heartbeat_secs,
            w.flaps
        );
        let _ = writeln!(
            s,
            "| phase | secs | writes | writes/s | design bound | bound/s | failed | apiserver CPU s | operator CPU s | reconciles |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
        for p in &w.phases {
            let _ = writeln!(
                s,
                "| {} | {:.0} | {} | {:.1} | {} | {:.1} | {} | {:.1} | {:.1} | {} |",
                p.name,
                p.secs,
                p.writes,
                p.writes_per_sec,
                p.bound,
                p.bound_per_sec,
                p.failed_writes,
                p.apiserver_cpu_secs,
                p.operator_cpu_secs,
                p.operator_reconciles
            );
        }
        let _ = writeln!(
            s,
            "\nWriters counted {} writes, {} failures (API server codes: {:?}); the writers and the simulated \
             mesh used {:.0} CPU s. One member object: {} bytes; all members: {} bytes.",
            w.writer_writes,
            w.writer_failures,
            w.status_codes,
            w.bench_cpu_secs,
            w.member_bytes,
            w.members_list_bytes
        );
        let connected = w.network_connected_secs.map_or("never".to_string(), |t| format!("after {t:.0} s"));
        let _ = writeln!(
            s,
            "Links all up by {:.0} s; the MeshNetwork status counted every member Connected {connected}.",
            w.links_up_by_secs
        );
        let _ = writeln!(
            s,
            "Design bound over any {:.0} s: one write per member (so {:.1} writes/s on average); busiest 5 s: \
             {:.1} writes/s.",
            0.8 * w.effective_interval_secs,
            w.writers as f64 / (0.8 * w.effective_interval_secs),
            w.peak_writes_per_sec
        );
        let joined = w.new_node_member_secs.map_or("not within 120 s".to_string(), |t| format!("{t:.1} s"));
        let _ = writeln!(s, "A Node created during the churn got its member after {joined}.");
        s
    }
}
