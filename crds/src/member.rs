//! `MeshMember`: one machine in a network (a node, or a host outside the cluster) and its links.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "rolomesh.io",
    version = "v1alpha1",
    kind = "MeshMember",
    namespaced,
    status = "MeshMemberStatus",
    shortname = "mmem",
    category = "rolomesh",
    printcolumn = r#"{"name":"Network","type":"string","jsonPath":".spec.networkRef.name"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.nodeName"}"#,
    printcolumn = r#"{"name":"Address","type":"string","jsonPath":".spec.overlayAddresses[0]"}"#,
    printcolumn = r#"{"name":"Endpoint","type":"string","jsonPath":".status.publicEndpoint"}"#,
    printcolumn = r#"{"name":"Connected","type":"string","jsonPath":".status.conditions[?(@.type==\"Connected\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MeshMemberSpec {
    pub network_ref: NetworkRef,
    /// The Node this member runs on; empty for a host outside the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Overlay addresses (one IPv4 and/or one IPv6); allocated by the operator when empty, then kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2), inner(length(max = 39)))]
    #[x_kube(validation = Rule::new("self.all(a, isIP(a))").message("overlayAddresses entries must be IP addresses such as 100.64.0.7"))]
    pub overlay_addresses: Vec<String>,
    /// Prefixes this member routes for, e.g. its node's pod CIDR.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(max = 43)))]
    #[x_kube(validation = Rule::new("self.all(r, isCIDR(r))").message("routes entries must be CIDRs such as 10.244.1.0/24"))]
    pub routes: Vec<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkRef {
    /// Name of the MeshNetwork in the same namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// The most links a member's status lists (see [`MeshMemberStatus::links`]).
pub const MAX_STATUS_LINKS: usize = 32;

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MeshMemberStatus {
    /// The member's address as the rolodex sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_endpoint: Option<String>,
    /// How many peers this member knows of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers: Option<i32>,
    /// How many of its links are Connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected_peers: Option<i32>,
    /// Every link when there are at most 32 peers; in a bigger mesh 32 of them, those not Connected first
    /// (sorted by peer name either way): one entry per peer would make each member's status grow with the
    /// mesh, and the whole mesh's status grow with its square.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<Link>,
    /// Ready (agent running and registered), Connected (links to every peer up).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<Time>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Link {
    pub peer: String,
    pub state: LinkState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_millis: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handshake: Option<Time>,
    #[serde(default)]
    pub rx_bytes: i64,
    #[serde(default)]
    pub tx_bytes: i64,
    #[serde(default)]
    pub via_relay: bool,
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    Punching,
    Handshaking,
    Connected,
    Down,
}
