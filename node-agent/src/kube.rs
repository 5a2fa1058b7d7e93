//! `rolomesh agent --kube --mesh-network <mn>`: the agent as a Kubernetes node's member
//! (docs/kubernetes.md, "Agent in the cluster" and "Status").
//!
//! Before the data plane starts, the configuration is read from MeshNetwork `<mn>` and MeshMember
//! `<mn>-<node>` ([`bootstrap`]), waiting for the operator to allocate the address. While it runs, the driver
//! publishes an engine [`Snapshot`] once a second to a watch channel, and a separate task turns it into the
//! MeshMember's status and writes it with server-side apply ([`writer`]), rate-limited by the pure rules in
//! [`status`]. The packet path never waits on the API: the driver only replaces the channel's value.

pub mod bootstrap;
pub mod snapshot;
pub mod status;
#[cfg(test)]
mod tests;
pub mod writer;

use std::future::Future;
use std::time::Duration;

use ::kube::api::Api;
use tokio::sync::watch;

use crate::config::KubeSettings;
use crate::driver::{self, RunConfig};

pub use snapshot::{PeerSnapshot, Snapshot};

/// How long shutdown waits for the status writer and the final "stopped" status.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads the configuration from the API, then runs the data plane with the status writer beside it until
/// `shutdown` completes.
pub async fn run(k: KubeSettings, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    let client = bootstrap::client().await?;
    let ns = k.namespace.clone().unwrap_or_else(|| client.default_namespace().to_string());
    tracing::info!(
        mesh_network = %k.mesh_network, node = %k.node_name, namespace = %ns,
        "reading the configuration from the Kubernetes API"
    );
    let loaded = tokio::select! {
        l = bootstrap::wait_for_config(&client, &ns, &k) => l?,
        _ = &mut shutdown => {
            tracing::info!("stopped while waiting for the configuration");
            return Ok(());
        }
    };
    let c = &loaded.config;
    tracing::info!(
        network = %c.network,
        name = %c.name,
        addresses = ?[c.overlay_v4, c.overlay_v6].into_iter().flatten().map(|a| a.to_string()).collect::<Vec<_>>(),
        routes = ?loaded.routes.iter().map(ToString::to_string).collect::<Vec<_>>(),
        rolodex = ?c.rolodex.iter().map(|r| r.spec.as_str()).collect::<Vec<_>>(),
        listen_port = c.listen_port,
        keepalive = ?c.keepalive,
        "configuration from MeshNetwork {} and MeshMember {}", k.mesh_network, loaded.member_name
    );
    let mut run = RunConfig::from_agent_config(c);
    run.kube = None;
    run.engine.routes = loaded.routes.clone();

    let (tx, rx) = watch::channel(Snapshot::default());
    let writer = writer::Writer::new(
        Api::namespaced(client, &ns),
        loaded.member_name.clone(),
        k.status_interval,
        loaded.generation,
        loaded.conditions,
    );
    let task = tokio::spawn(writer.run(rx));
    let result = driver::run_with_status(run, Some(tx), shutdown).await;

    // The driver dropped the sender, so the writer finishes its current write and returns.
    let message = match &result {
        Ok(()) => "the agent stopped".to_string(),
        Err(e) => format!("the agent failed: {e:#}"),
    };
    let stop = async {
        match task.await {
            Ok(mut w) => {
                w.write_stopped(&message).await;
                tracing::info!(writes = w.writes, failures = w.failures, "status writer stopped");
            }
            Err(e) => tracing::warn!(error = %e, "status writer failed"),
        }
    };
    if tokio::time::timeout(STOP_TIMEOUT, stop).await.is_err() {
        tracing::warn!("gave up writing the final MeshMember status");
    }
    result
}
