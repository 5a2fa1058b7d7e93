//! Reading the agent's configuration from MeshNetwork `<mn>` and MeshMember `<mn>-<node>`, waiting (bounded,
//! with backoff) until the operator has created the member and allocated its address.

use std::net::IpAddr;
use std::time::Duration;

use ::kube::api::Api;
use ::kube::{Client, Config};
use anyhow::{Context, anyhow};
use crds::{Condition, MeshMember, MeshNetwork};

use crate::config::{AgentConfig, ConfigError, KubeSettings, KubeValues};
use crate::routes::IpNet;

/// How long to wait for the operator (member created, address allocated, rolodex endpoint known) or for a
/// reachable API server before giving up.
pub const MAX_WAIT: Duration = Duration::from_secs(300);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The agent only makes short requests (get, patch); none should take longer.
const READ_TIMEOUT: Duration = Duration::from_secs(20);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The API permissions the agent needs, for error messages.
pub const RBAC_HINT: &str = "the agent's ServiceAccount needs get on meshnetworks and meshmembers and \
                             patch on meshmembers/status (group rolomesh.io)";

/// In-cluster service account, or KUBECONFIG / ~/.kube/config.
pub async fn client() -> anyhow::Result<Client> {
    let mut cfg = Config::infer().await.map_err(|e| {
        anyhow!("cannot find Kubernetes API credentials (not in a pod with a service account, and no usable kubeconfig): {e}")
    })?;
    cfg.read_timeout = Some(READ_TIMEOUT);
    cfg.connect_timeout = Some(CONNECT_TIMEOUT);
    Client::try_from(cfg).context("creating the Kubernetes client")
}

/// Everything the agent takes from the API.
#[derive(Debug)]
pub struct Loaded {
    pub config: AgentConfig,
    /// `spec.routes`, host bits cleared.
    pub routes: Vec<IpNet>,
    pub member_name: String,
    pub generation: Option<i64>,
    /// The member's current status conditions, so that transition times survive a restart.
    pub conditions: Vec<Condition>,
}

/// Why a step did not produce the configuration.
#[derive(Debug)]
pub enum Step {
    /// Worth waiting for (the operator has not finished, the API is unreachable); the message says what.
    Wait(String),
    /// Retrying will not help.
    Fatal(anyhow::Error),
}

/// Polls until [`load`] succeeds, logging each wait, or fails after [`MAX_WAIT`].
pub async fn wait_for_config(client: &Client, ns: &str, k: &KubeSettings) -> anyhow::Result<Loaded> {
    let start = tokio::time::Instant::now();
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1u32.. {
        match load(client, ns, k).await {
            Ok(l) => return Ok(l),
            Err(Step::Fatal(e)) => return Err(e),
            Err(Step::Wait(why)) => {
                if start.elapsed() + backoff > MAX_WAIT {
                    return Err(anyhow!("{why}; gave up after {}s", start.elapsed().as_secs()));
                }
                tracing::info!(attempt, retry_in = ?backoff, "waiting: {why}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    unreachable!("the attempt counter does not run out")
}

/// An API error as a [`Step`]: missing objects and permission problems are named, server trouble waits.
fn api_error(e: ::kube::Error, what: &str, missing: impl FnOnce() -> Step) -> Step {
    match &e {
        ::kube::Error::Api(s) if s.code == 404 => missing(),
        ::kube::Error::Api(s) if s.code == 403 => {
            Step::Fatal(anyhow!("forbidden to read {what}: {}; {RBAC_HINT}", s.message))
        }
        ::kube::Error::Api(s) if s.code == 401 => {
            Step::Fatal(anyhow!("unauthorized reading {what}: {} (check the credentials)", s.message))
        }
        ::kube::Error::Api(s) if (400..500).contains(&s.code) && s.code != 429 => {
            Step::Fatal(anyhow!("cannot read {what}: {} (HTTP {})", s.message, s.code))
        }
        ::kube::Error::Auth(_) => Step::Fatal(anyhow!("cannot authenticate to the Kubernetes API: {e}")),
        _ => Step::Wait(format!("cannot read {what}: {}", chain(&e))),
    }
}

/// An error with its causes, on one line ("client error (Connect): Connection refused (os error 111)").
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cur = s.source();
    }
    out
}

/// One attempt: both objects read and turned into the agent's configuration.
pub async fn load(client: &Client, ns: &str, k: &KubeSettings) -> Result<Loaded, Step> {
    let mn = &k.mesh_network;
    let member_name = format!("{mn}-{}", k.node_name);
    let what_net = format!("MeshNetwork {ns}/{mn}");
    let what_mem = format!("MeshMember {ns}/{member_name}");
    let network = Api::<MeshNetwork>::namespaced(client.clone(), ns).get(mn).await.map_err(|e| {
        api_error(e, &what_net, || {
            Step::Fatal(anyhow!("{what_net} not found (--mesh-network {mn}, namespace {ns})"))
        })
    })?;
    let member = Api::<MeshMember>::namespaced(client.clone(), ns).get(&member_name).await.map_err(|e| {
        api_error(e, &what_mem, || {
            Step::Wait(format!(
                "{what_mem} does not exist yet; the operator creates it for node {}",
                k.node_name
            ))
        })
    })?;
    let (values, routes) = values(&network, &member, &k.node_name).map_err(|s| match s {
        Step::Wait(w) => Step::Wait(w),
        Step::Fatal(e) => Step::Fatal(e.context(format!("{what_net}, {what_mem}"))),
    })?;
    // Completing resolves the rolodex names (blocking DNS) and reads the secret file.
    let k2 = k.clone();
    let config = tokio::task::spawn_blocking(move || k2.complete(values))
        .await
        .map_err(|e| Step::Fatal(anyhow!("configuration task failed: {e}")))?
        .map_err(|e| match e {
            // A managed rolodex's Service name may not resolve yet.
            ConfigError::Resolve { .. } => Step::Wait(e.to_string()),
            e => Step::Fatal(anyhow!("{what_net}, {what_mem}: {e}")),
        })?;
    Ok(Loaded {
        config,
        routes,
        member_name,
        generation: member.metadata.generation,
        conditions: member.status.map(|s| s.conditions).unwrap_or_default(),
    })
}

/// The configuration the two objects describe (pure, so it is unit-tested).
pub fn values(
    network: &MeshNetwork,
    member: &MeshMember,
    node: &str,
) -> Result<(KubeValues, Vec<IpNet>), Step> {
    let mn = network.metadata.name.as_deref().unwrap_or_default();
    let fatal = |msg: String| Step::Fatal(anyhow!(msg));
    if member.spec.network_ref.name != mn {
        return Err(fatal(format!(
            "the MeshMember belongs to MeshNetwork {:?}, not {mn:?}",
            member.spec.network_ref.name
        )));
    }
    if let Some(n) = member.spec.node_name.as_deref().filter(|n| *n != node) {
        return Err(fatal(format!("the MeshMember is for node {n:?}, but this is node {node:?}")));
    }
    if member.spec.overlay_addresses.is_empty() {
        return Err(Step::Wait(format!(
            "MeshMember {} has no overlayAddresses yet; the operator allocates them",
            member.metadata.name.as_deref().unwrap_or_default()
        )));
    }
    let cidrs = network
        .spec
        .overlay
        .cidrs
        .iter()
        .map(|c| c.parse::<IpNet>().map_err(|e| fatal(format!("spec.overlay.cidrs: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let mut addresses = Vec::new();
    for a in &member.spec.overlay_addresses {
        let ip: IpAddr =
            a.parse().map_err(|_| fatal(format!("overlayAddresses entry {a:?} is not an IP address")))?;
        let cidr = cidrs.iter().find(|c| c.contains(&ip)).ok_or_else(|| {
            fatal(format!(
                "overlay address {ip} is inside none of the overlay CIDRs {:?}",
                network.spec.overlay.cidrs
            ))
        })?;
        addresses.push(format!("{ip}/{}", cidr.prefix_len()));
    }
    let routes = member
        .spec
        .routes
        .iter()
        .map(|r| r.parse::<IpNet>().map(|n| n.network()).map_err(|e| fatal(format!("spec.routes: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let rolodex = match &network.spec.rolodex.external {
        Some(ext) if !ext.endpoints.is_empty() => ext.endpoints.clone(),
        _ => match network.status.as_ref().and_then(|s| s.rolodex_endpoint.clone()) {
            Some(e) if !e.is_empty() => vec![e],
            _ => {
                return Err(Step::Wait(format!(
                    "MeshNetwork {mn} has no rolodex endpoint yet (status.rolodexEndpoint is empty); the \
                     operator sets it once the rolodex Service has an address"
                )));
            }
        },
    };
    let agent = &network.spec.agent;
    let name = network.status.as_ref().and_then(|s| s.network_name.clone()).filter(|n| !n.is_empty());
    let values = KubeValues {
        network: name.unwrap_or_else(|| network.network_name()),
        addresses,
        rolodex,
        keepalive: Some(agent.keepalive.clone()),
        mtu: agent.mtu.map(|m| m.to_string()),
        listen_port: Some(agent.listen_port.to_string()),
    };
    Ok((values, routes))
}
