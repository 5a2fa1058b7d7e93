//! The status writer task: turns the driver's snapshots into MeshMember status and writes it with
//! server-side apply to `/status`, as rarely as [`status::decide`] allows. API errors are logged and retried
//! with a doubling gap ([`status::backoff`]); nothing here can stop the data plane.

use std::time::{Duration, Instant};

use ::kube::api::{Api, Patch, PatchParams};
use crds::{Condition, MeshMember, MeshMemberStatus};
use k8s_openapi::jiff::Timestamp;
use rand::Rng;
use tokio::sync::watch;

use super::snapshot::Snapshot;
use super::status::{self, LastWrite, Reason};

/// Field manager of everything the agent writes.
pub const FIELD_MANAGER: &str = "rolomesh-agent";
/// A write that takes longer than this is abandoned (and retried at the next interval).
const WRITE_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Writer {
    api: Api<MeshMember>,
    name: String,
    interval: Duration,
    generation: Option<i64>,
    /// Conditions as last observed (updated every snapshot), so transition times are accurate to a second.
    observed: Vec<Condition>,
    last: Option<LastWrite<MeshMemberStatus>>,
    /// The jittered least time until the next write.
    gap: Duration,
    /// Consecutive failed writes, for the backoff.
    failed_in_row: u32,
    pub writes: u64,
    pub failures: u64,
}

impl Writer {
    /// `conditions`: the member's current ones, whose transition times are kept while statuses hold.
    pub fn new(
        api: Api<MeshMember>,
        name: String,
        interval: Duration,
        generation: Option<i64>,
        conditions: Vec<Condition>,
    ) -> Self {
        let gap = status::jittered(interval, rand::rng().random());
        Self {
            api,
            name,
            interval,
            generation,
            observed: conditions,
            last: None,
            gap,
            failed_in_row: 0,
            writes: 0,
            failures: 0,
        }
    }

    /// Runs until the driver drops its sender (shutdown), then hands itself back for the final write.
    pub async fn run(mut self, mut snapshots: watch::Receiver<Snapshot>) -> Self {
        // Agents started together (a DaemonSet rollout) spread their first writes over one interval.
        let first = self.interval.mul_f64(rand::rng().random());
        tokio::time::sleep(first).await;
        while snapshots.changed().await.is_ok() {
            let snap = snapshots.borrow_and_update().clone();
            let now = Timestamp::now();
            self.observed = status::conditions(&snap, &self.observed, now, self.generation);
            let doc = status::build(&snap, self.observed.clone(), now);
            let content = status::significant(&doc);
            let at = Instant::now();
            if let Some(reason) =
                status::decide(self.last.as_ref(), &content, at, self.gap, status::HEARTBEAT)
            {
                let ok = self.write(&doc, reason).await;
                self.last = Some(LastWrite { at, content: ok.then_some(content) });
                self.failed_in_row = if ok { 0 } else { self.failed_in_row.saturating_add(1) };
                let interval = status::interval_for(self.interval, snap.peers.len());
                let least = status::backoff(interval, self.failed_in_row);
                self.gap = status::jittered(least, rand::rng().random());
            }
        }
        self
    }

    /// The stopped status (not ready, no links; `message` says why), best effort.
    pub async fn write_stopped(&mut self, message: &str) {
        let doc = status::stopped(&self.observed, message, Timestamp::now(), self.generation);
        self.write(&doc, Reason::Changed).await;
    }

    async fn write(&mut self, doc: &MeshMemberStatus, reason: Reason) -> bool {
        let body = serde_json::json!({
            "apiVersion": format!("{}/{}", crds::GROUP, crds::VERSION),
            "kind": "MeshMember",
            "status": doc,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let res = tokio::time::timeout(
            WRITE_TIMEOUT,
            self.api.patch_status(&self.name, &params, &Patch::Apply(&body)),
        )
        .await;
        match res {
            Ok(Ok(_)) => {
                self.writes += 1;
                tracing::debug!(member = %self.name, reason = reason.as_str(), writes = self.writes, "MeshMember status written");
                true
            }
            Ok(Err(e)) => {
                self.failures += 1;
                let hint = match &e {
                    ::kube::Error::Api(s) if s.code == 403 => format!("; {}", super::bootstrap::RBAC_HINT),
                    _ => String::new(),
                };
                tracing::warn!(member = %self.name, error = %super::bootstrap::chain(&e), "cannot write MeshMember status{hint}; retrying later");
                false
            }
            Err(_) => {
                self.failures += 1;
                tracing::warn!(member = %self.name, timeout = ?WRITE_TIMEOUT, "MeshMember status write timed out; retrying later");
                false
            }
        }
    }
}
