//! Rolomesh operator: reconciles `MeshNetwork` objects into a running mesh.
//!
//! Per network it writes the secrets, the rolodex Deployment and Service, the agent DaemonSet and one
//! `MeshMember` per selected Node (with an allocated overlay address), and aggregates the members' status
//! into the network's status. The contracts are in `docs/kubernetes.md`.
//!
//! Modules, by what they hold:
//! - [`controller`]: the kube-runtime Controller, its `Context`, the thin `reconcile` and the `error_policy`;
//! - [`network`]: the work for one `MeshNetwork` (reconcile and cleanup);
//! - [`members`]: `MeshMember` per Node, and address allocation;
//! - [`resources`]: pure builders of the owned objects;
//! - [`status`]: conditions and status aggregation;
//! - [`triggers`]: which Node and MeshMember changes reconcile, and how often;
//! - [`metrics`], [`leader`], [`http`]: the process around the controller.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use tracing::info;

pub mod controller;
#[cfg(test)]
mod fixtures;
pub mod http;
pub mod leader;
pub mod members;
pub mod metrics;
pub mod network;
pub mod resources;
pub mod status;
pub mod triggers;

/// Field manager for every server-side apply, and the Events' reporting controller.
pub const MANAGER: &str = "rolomesh-operator";
/// Finalizer on every MeshNetwork the operator has seen.
pub const FINALIZER: &str = "rolomesh.io/cleanup";

/// Everything a reconcile can fail with.
#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[source] kube::Error),

    /// Adding or removing the finalizer failed (apply and cleanup errors are unwrapped).
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),

    /// The MeshNetwork's spec cannot be acted on; fixed only by editing it.
    #[error("invalid MeshNetwork {0}")]
    InvalidSpec(String),

    /// The network secret is missing or unusable.
    #[error("network secret: {0}")]
    Secret(String),

    /// Neither `--image` nor the network's `spec.images` names an image.
    #[error("no image for {0}: set --image (or ROLOMESH_IMAGE) or spec.images.{0}")]
    NoImage(&'static str),

    /// The Node cache did not fill in time; acting on a partial Node list could delete members.
    #[error("the Node cache is not synced yet")]
    NodesNotSynced,

    #[error("reading /dev/urandom: {0}")]
    Random(#[source] std::io::Error),
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Error::Kube(e)
    }
}

impl Error {
    /// A bounded label for metrics and the Event/condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubeError",
            Error::Finalizer(_) => "FinalizerError",
            Error::InvalidSpec(_) => "InvalidSpec",
            Error::Secret(_) => "SecretError",
            Error::NoImage(_) => "NoImage",
            Error::NodesNotSynced => "NodesNotSynced",
            Error::Random(_) => "RandomError",
        }
    }

    /// Errors that retrying will not fix until someone edits an object.
    pub fn needs_user_action(&self) -> bool {
        matches!(self, Error::InvalidSpec(_) | Error::Secret(_) | Error::NoImage(_))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `rolomesh operator` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Watch MeshNetworks in this namespace only (default: all namespaces)
    #[arg(long)]
    pub namespace: Option<String>,
    /// ServiceAccount of the agent pods
    #[arg(long, default_value = "rolomesh-agent")]
    pub agent_service_account: String,
    /// Default image for rolodex and agent pods (spec.images overrides it per network)
    #[arg(long, env = "ROLOMESH_IMAGE")]
    pub image: Option<String>,
    /// Serve /metrics, /healthz and /readyz on ADDR:PORT
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub metrics_listen: SocketAddr,
    /// Reconcile only while holding the Lease `rolomesh-operator` (--leader-election=false to disable)
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub leader_election: bool,
    /// Namespace of the leader-election Lease
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Log format: text or json
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

/// Runs the operator until SIGTERM or SIGINT.
pub async fn run(args: Args) -> anyhow::Result<()> {
    run_until(args, shutdown_signal()).await
}

/// Runs the operator until `shutdown` completes: HTTP endpoints, leader election, then the controller
/// while this process holds the lease.
pub async fn run_until(
    args: Args,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let config =
        kube::Config::infer().await.context("no Kubernetes configuration (in-cluster or KUBECONFIG)")?;
    let client = kube::Client::try_from(config).context("building the Kubernetes client")?;
    let version = client.apiserver_version().await.context("cannot reach the Kubernetes API server")?;
    info!(server = %version.git_version, namespace = args.namespace.as_deref().unwrap_or("*"), "connected");

    let metrics = Arc::new(metrics::Metrics::new().context("registering metrics")?);
    let ready = Arc::new(AtomicBool::new(false));
    let server = http::serve(args.metrics_listen, metrics.clone(), ready.clone()).await?;
    let server = tokio::spawn(server);
    info!(listen = %args.metrics_listen, "serving /metrics, /healthz, /readyz");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        info!("shutting down");
        let _ = stop_tx.send(true);
    });

    let identity = leader::identity();
    let settings = controller::Settings {
        namespace: args.namespace.clone(),
        image: args.image.clone(),
        agent_service_account: args.agent_service_account.clone(),
        identity: identity.clone(),
    };
    let lead = |stop| controller::run(client.clone(), settings.clone(), metrics.clone(), stop);
    let result = if args.leader_election {
        let elector = leader::Elector::new(client.clone(), &args.lease_namespace, &identity).await?;
        ready.store(true, Ordering::Relaxed);
        elector.run(stop_rx, metrics.clone(), lead).await
    } else {
        ready.store(true, Ordering::Relaxed);
        metrics.leader.set(1);
        lead(stop_rx).await;
        Ok(())
    };
    server.abort();
    info!("stopped");
    result
}

/// Completes on SIGTERM or SIGINT.
pub use rolodex::service::shutdown_signal;

/// Completes once `stop` says so (or its sender is gone).
pub(crate) async fn stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
