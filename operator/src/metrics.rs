//! Prometheus metrics of the operator. Label values are `&'static str` only, so their number is bounded.

use std::time::Instant;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::Error;

pub struct Metrics {
    pub registry: Registry,
    pub reconciliations: IntCounter,
    pub failures: IntCounterVec,
    pub duration: Histogram,
    pub members_allocated: IntCounter,
    pub members_deleted: IntCounter,
    /// 1 while this process holds the lease and reconciles.
    pub leader: IntGauge,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let reconciliations = IntCounter::new(
            "rolomesh_operator_reconciliations_total",
            "MeshNetwork reconciliations started",
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "rolomesh_operator_reconcile_failures_total",
                "MeshNetwork reconciliations that failed",
            ),
            &["reason"],
        )?;
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "rolomesh_operator_reconcile_duration_seconds",
                "MeshNetwork reconcile duration",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
        )?;
        let members_allocated =
            IntCounter::new("rolomesh_operator_addresses_allocated_total", "Overlay addresses allocated")?;
        let members_deleted =
            IntCounter::new("rolomesh_operator_members_deleted_total", "MeshMembers deleted for gone nodes")?;
        let leader = IntGauge::new("rolomesh_operator_leader", "1 while this replica holds the lease")?;
        registry.register(Box::new(reconciliations.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(members_allocated.clone()))?;
        registry.register(Box::new(members_deleted.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        Ok(Self { registry, reconciliations, failures, duration, members_allocated, members_deleted, leader })
    }

    /// Counts a reconciliation and returns a guard that records its duration when dropped.
    pub fn count_and_measure(&self) -> ReconcileTimer {
        self.reconciliations.inc();
        ReconcileTimer { start: Instant::now(), histogram: self.duration.clone() }
    }

    pub fn failure(&self, err: &Error) {
        self.failures.with_label_values(&[err.reason()]).inc();
    }
}

/// Records the time from its creation to its drop, however the reconcile ends.
pub struct ReconcileTimer {
    start: Instant,
    histogram: Histogram,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_records_on_drop_and_failures_use_reasons() {
        let m = Metrics::new().unwrap();
        {
            let _t = m.count_and_measure();
        }
        assert_eq!(m.reconciliations.get(), 1);
        assert_eq!(m.duration.get_sample_count(), 1);
        m.failure(&Error::NodesNotSynced);
        m.failure(&Error::InvalidSpec("x".into()));
        m.failure(&Error::InvalidSpec("y".into()));
        assert_eq!(m.failures.with_label_values(&["InvalidSpec"]).get(), 2);
        let text = rolodex::http::render(&m.registry).body;
        assert!(
            text.contains("rolomesh_operator_reconcile_failures_total{reason=\"NodesNotSynced\"} 1"),
            "{text}"
        );
        assert!(text.contains("rolomesh_operator_reconcile_duration_seconds_count 1"));
    }
}
