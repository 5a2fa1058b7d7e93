//! Leader election on the Lease `rolomesh-operator` (kube-lease-manager): only the holder runs the
//! controller, so two replicas never allocate addresses at the same time. Losing the lease stops the
//! controller at once (in-flight reconciles are dropped, not finished); the replica then waits to win it
//! again. On shutdown the lease is released so a standby takes over without waiting for it to expire.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::metrics::Metrics;

pub const LEASE_NAME: &str = "rolomesh-operator";
/// Seconds a lease stays valid after its last renewal; the holder renews `GRACE` seconds before that.
const DURATION: u64 = 15;
const GRACE: u64 = 5;

/// A unique identity for this process: the pod name (or host name) plus a random suffix, so two processes
/// on one host, or a restarted container, never mistake each other's lease for their own.
pub fn identity() -> String {
    let base = std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|s| s.trim().to_string()))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "rolomesh-operator".into());
    let mut suffix = [0u8; 4];
    if crate::network::random_bytes(&mut suffix).is_err() {
        suffix = std::process::id().to_be_bytes();
    }
    format!("{base}-{}", rolodex::keys::to_hex(&suffix))
}

pub struct Elector {
    manager: LeaseManager,
    identity: String,
    namespace: String,
}

impl Elector {
    /// Creates the Lease if it is missing.
    pub async fn new(client: kube::Client, namespace: &str, identity: &str) -> anyhow::Result<Self> {
        let manager = LeaseManagerBuilder::new(client, LEASE_NAME)
            .with_namespace(namespace)
            .with_identity(identity)
            .with_duration(DURATION)
            .with_grace(GRACE)
            .build()
            .await
            .with_context(|| format!("cannot use Lease {namespace}/{LEASE_NAME} for leader election"))?;
        Ok(Self { manager, identity: identity.into(), namespace: namespace.into() })
    }

    /// Runs `lead` whenever this process holds the lease, until `stop`. `lead` gets `stop` and must return
    /// soon after it fires (it is dropped outright when the lease is lost).
    pub async fn run<F, Fut>(
        self,
        stop: watch::Receiver<bool>,
        metrics: Arc<Metrics>,
        mut lead: F,
    ) -> anyhow::Result<()>
    where
        F: FnMut(watch::Receiver<bool>) -> Fut,
        Fut: Future<Output = ()>,
    {
        let (identity, namespace) = (self.identity, self.namespace);
        info!(%identity, lease = %format!("{namespace}/{LEASE_NAME}"), "waiting for the lease");
        let (mut leading, task) = self.manager.watch().await;
        let result = loop {
            tokio::select! {
                _ = crate::stopped(stop.clone()) => break Ok(()),
                r = leading.wait_for(|l| *l) => if r.is_err() {
                    break Err(anyhow::anyhow!("leader election stopped unexpectedly"));
                },
            }
            info!(%identity, "acquired the lease: reconciling");
            metrics.leader.set(1);
            let mut lost = leading.clone();
            tokio::select! {
                _ = lead(stop.clone()) => {
                    metrics.leader.set(0);
                    break Ok(());
                }
                _ = lost.wait_for(|l| !*l) => {
                    metrics.leader.set(0);
                    warn!(%identity, "lost the lease: stopped reconciling");
                }
            }
        };
        // Closing the channel makes the lease task release the lease and end.
        drop(leading);
        match tokio::time::timeout(Duration::from_secs(5), task).await {
            Ok(Ok(Ok(_))) => info!(%identity, "released the lease"),
            Ok(Ok(Err(e))) => warn!(%identity, error = %e, "releasing the lease"),
            Ok(Err(e)) => warn!(%identity, error = %e, "lease task failed"),
            Err(_) => warn!(%identity, "timed out releasing the lease; it expires in {DURATION}s"),
        }
        result
    }
}
