//! Test constructors shared by the unit tests.

use crds::{
    AgentSpec, ManagedRolodex, MeshMember, MeshMemberSpec, MeshNetwork, MeshNetworkSpec, NetworkRef,
    OverlaySpec, RolodexSpec, ServiceType,
};
use k8s_openapi::api::core::v1::{Node, NodeSpec, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::resources::Owner;

/// MeshNetwork `name` in namespace `mesh`, overlay 100.64.0.0/10, managed LoadBalancer rolodex.
pub fn network(name: &str) -> MeshNetwork {
    let mut mn = MeshNetwork::new(
        name,
        MeshNetworkSpec {
            network_name: None,
            overlay: OverlaySpec { cidrs: vec!["100.64.0.0/10".into()], ..Default::default() },
            rolodex: RolodexSpec {
                managed: Some(ManagedRolodex { service_type: ServiceType::LoadBalancer, port: 6264 }),
                external: None,
            },
            secret_ref: None,
            agent: AgentSpec::default(),
            images: Default::default(),
        },
    );
    mn.metadata.namespace = Some("mesh".into());
    mn.metadata.uid = Some("uid-1".into());
    mn.metadata.generation = Some(3);
    mn
}

pub fn owner() -> Owner {
    Owner::of(&network("prod")).expect("fixture network has name, namespace and uid")
}

pub fn overlay(cidrs: &[&str], allocate_from: &[&str]) -> OverlaySpec {
    OverlaySpec {
        cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
        allocate_from: allocate_from.iter().map(|s| s.to_string()).collect(),
    }
}

/// A member of network `prod` that the operator created for `node`.
pub fn node_member(node: &str, addresses: &[&str]) -> MeshMember {
    let o = owner();
    crate::resources::mesh_member(
        &o,
        &format!("prod-{node}"),
        Some(node),
        &addresses.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        &[],
    )
}

/// A member of network `prod` made by hand for a host outside the cluster.
pub fn host_member(name: &str, addresses: &[&str]) -> MeshMember {
    let mut m = MeshMember::new(
        name,
        MeshMemberSpec {
            network_ref: NetworkRef { name: "prod".into() },
            node_name: None,
            overlay_addresses: addresses.iter().map(|s| s.to_string()).collect(),
            routes: vec![],
        },
    );
    m.metadata.namespace = Some("mesh".into());
    m
}

pub fn node(name: &str, labels: &[(&str, &str)], pod_cidrs: &[&str], taints: &[(&str, &str)]) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidrs: (!pod_cidrs.is_empty()).then(|| pod_cidrs.iter().map(|s| s.to_string()).collect()),
            taints: (!taints.is_empty()).then(|| {
                taints
                    .iter()
                    .map(|(k, e)| Taint { key: k.to_string(), effect: e.to_string(), ..Default::default() })
                    .collect()
            }),
            ..Default::default()
        }),
        status: None,
    }
}
