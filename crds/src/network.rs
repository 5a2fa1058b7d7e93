//! `MeshNetwork`: one overlay network, its rolodex, its secret and where its agents run.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Toleration;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "rolomesh.io",
    version = "v1alpha1",
    kind = "MeshNetwork",
    namespaced,
    status = "MeshNetworkStatus",
    shortname = "mnet",
    category = "rolomesh",
    printcolumn = r#"{"name":"Network","type":"string","jsonPath":".status.networkName"}"#,
    printcolumn = r#"{"name":"Members","type":"integer","jsonPath":".status.members"}"#,
    printcolumn = r#"{"name":"Connected","type":"integer","jsonPath":".status.connectedMembers"}"#,
    printcolumn = r#"{"name":"Links","type":"integer","jsonPath":".status.connectedLinks"}"#,
    printcolumn = r#"{"name":"Rolodex","type":"string","jsonPath":".status.rolodexEndpoint"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MeshNetworkSpec {
    /// Network name on the wire; defaults to the object's name. Clusters that share a mesh use the same name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9][a-z0-9.-]{0,62}$')").message("networkName must be 1-63 characters of a-z, 0-9, '-' and '.', starting with a letter or digit"))]
    pub network_name: Option<String>,
    pub overlay: OverlaySpec,
    pub rolodex: RolodexSpec,
    /// Secret holding the network secret under key `secret`; generated (as `<name>-secret`) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
    #[serde(default)]
    pub agent: AgentSpec,
    #[serde(default)]
    pub images: Images,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.cidrs.size() < 2 || cidr(self.cidrs[0]).ip().family() != cidr(self.cidrs[1]).ip().family()").message("overlay.cidrs takes at most one IPv4 and one IPv6 CIDR"))]
#[x_kube(validation = Rule::new("!has(self.allocateFrom) || self.allocateFrom.all(a, isCIDR(a) && self.cidrs.exists(c, isCIDR(c) && cidr(c).containsCIDR(a)))").message("every overlay.allocateFrom range must be a CIDR inside one of overlay.cidrs"))]
pub struct OverlaySpec {
    /// The whole overlay: one IPv4 and/or one IPv6 CIDR, e.g. 100.64.0.0/10.
    #[schemars(length(min = 1, max = 2), inner(length(max = 43)))]
    #[x_kube(validation = Rule::new("self.all(c, isCIDR(c))").message("overlay.cidrs entries must be CIDRs such as 100.64.0.0/10"))]
    pub cidrs: Vec<String>,
    /// The part of the overlay this cluster allocates member addresses from, so that several clusters share
    /// one mesh without collisions. Defaults to all of `cidrs`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8), inner(length(max = 43)))]
    pub allocate_from: Vec<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.managed) != has(self.external)").message("set exactly one of rolodex.managed and rolodex.external"))]
pub struct RolodexSpec {
    /// The operator runs the rolodex in this cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedRolodex>,
    /// Rolodexes run elsewhere (another cluster, a plain host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalRolodex>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ManagedRolodex {
    #[serde(default)]
    pub service_type: ServiceType,
    /// UDP port of the rolodex Service.
    #[serde(default = "default_rolodex_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

fn default_rolodex_port() -> i32 {
    6264
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ServiceType {
    #[default]
    LoadBalancer,
    NodePort,
    ClusterIP,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::LoadBalancer => "LoadBalancer",
            ServiceType::NodePort => "NodePort",
            ServiceType::ClusterIP => "ClusterIP",
        }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExternalRolodex {
    /// `host:port` of each rolodex; agents register with all of them.
    #[schemars(length(min = 1, max = 8), inner(length(max = 262)))]
    #[x_kube(validation = Rule::new("self.all(e, e.matches('^(\\\\[[0-9a-fA-F:.]+\\\\]|[A-Za-z0-9.-]+):[0-9]{1,5}$'))").message("rolodex.external.endpoints entries must be host:port or [ipv6]:port"))]
    pub endpoints: Vec<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AgentSpec {
    /// Nodes that run an agent (all nodes when empty).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// TUN MTU; automatic (underlay MTU minus tunnel overhead) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 576, max = 9000))]
    pub mtu: Option<i32>,
    /// Keepalive interval toward peers, e.g. 25s.
    #[serde(default = "default_keepalive")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+(ms|s|m|h)$')").message("agent.keepalive must be a duration such as 25s, 500ms or 2m"))]
    pub keepalive: String,
    /// UDP port of each agent's one socket (host network).
    #[serde(default = "default_agent_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub listen_port: i32,
    /// Advertise each node's pod CIDRs as routes of its member (spelled like Node's `podCIDRs`).
    #[serde(default = "yes", rename = "advertisePodCIDRs")]
    pub advertise_pod_cidrs: bool,
}

impl Default for AgentSpec {
    fn default() -> Self {
        Self {
            node_selector: BTreeMap::new(),
            tolerations: vec![],
            mtu: None,
            keepalive: default_keepalive(),
            listen_port: default_agent_port(),
            advertise_pod_cidrs: true,
        }
    }
}

fn default_keepalive() -> String {
    "25s".into()
}

fn default_agent_port() -> i32 {
    51820
}

fn yes() -> bool {
    true
}

/// Image overrides; the operator's own image is used when absent.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Images {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolodex: Option<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MeshNetworkStatus {
    /// Ready, RolodexReady, AgentsReady, Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The effective network name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_name: Option<String>,
    #[serde(default)]
    pub members: i32,
    /// Members whose links to every other member are up.
    #[serde(default)]
    pub connected_members: i32,
    /// Up links, counted once per pair.
    #[serde(default)]
    pub connected_links: i32,
    /// Where agents reach the rolodex: the Service's external address, or the first external endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolodex_endpoint: Option<String>,
}

impl MeshNetwork {
    /// The network name on the wire.
    pub fn network_name(&self) -> String {
        self.spec.network_name.clone().unwrap_or_else(|| self.metadata.name.clone().unwrap_or_default())
    }
}
