//! Pure builders for the objects the operator owns per MeshNetwork (docs/kubernetes.md, "Objects the
//! operator owns"). No I/O: each returns the full object to server-side apply.

use std::collections::BTreeMap;

use crds::{AgentSpec, ManagedRolodex, MeshMember, MeshMemberSpec, MeshNetwork, NetworkRef, ServiceType};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec, Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, HostPathVolumeSource,
    KeyToPath, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile,
    Secret, SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;

use crate::{Error, Result};

pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_NETWORK: &str = "rolomesh.io/network";
pub const LABEL_NODE: &str = "rolomesh.io/node";
/// Value of [`LABEL_MANAGED_BY`] on everything the operator writes.
pub const MANAGED_BY: &str = crate::MANAGER;

pub const ROLODEX_COMPONENT: &str = "rolomesh-rolodex";
pub const AGENT_COMPONENT: &str = "rolomesh-agent";

/// Where the agent finds the network secret, and the rolodex its key.
pub const SECRET_DIR: &str = "/etc/rolomesh/secret";
pub const SECRET_KEY: &str = "secret";
pub const ROLODEX_KEY_DIR: &str = "/etc/rolomesh/rolodex";
pub const ROLODEX_KEY_KEY: &str = "key";
pub const ROLODEX_METRICS_PORT: i32 = 9465;
/// User and group of the rolodex process.
const NON_ROOT: i64 = 65532;

pub fn network_secret_name(mn: &str) -> String {
    format!("{mn}-secret")
}
pub fn rolodex_key_name(mn: &str) -> String {
    format!("{mn}-rolodex-key")
}
pub fn rolodex_name(mn: &str) -> String {
    format!("{mn}-rolodex")
}
pub fn agent_name(mn: &str) -> String {
    format!("{mn}-agent")
}
pub fn member_name(mn: &str, node: &str) -> String {
    format!("{mn}-{node}")
}

/// The MeshNetwork as the owner of what is built for it.
#[derive(Clone, Debug)]
pub struct Owner {
    pub name: String,
    pub namespace: String,
    pub reference: OwnerReference,
}

impl Owner {
    pub fn of(mn: &MeshNetwork) -> Result<Self> {
        let name = mn.metadata.name.clone().ok_or_else(|| Error::InvalidSpec("object has no name".into()))?;
        let namespace = mn
            .metadata
            .namespace
            .clone()
            .ok_or_else(|| Error::InvalidSpec(format!("{name} has no namespace")))?;
        let reference = mn
            .controller_owner_ref(&())
            .ok_or_else(|| Error::InvalidSpec(format!("{namespace}/{name} has no uid yet")))?;
        Ok(Self { name, namespace, reference })
    }

    /// Labels on every object owned by this network.
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
            (LABEL_NETWORK.to_string(), self.name.clone()),
        ])
    }

    fn meta(&self, name: String, extra: &[(&str, &str)]) -> ObjectMeta {
        let mut labels = self.labels();
        labels.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels),
            owner_references: Some(vec![self.reference.clone()]),
            ..Default::default()
        }
    }

    /// Pod selector of one component of this network (also its pods' labels, with [`Owner::labels`]).
    pub fn selector(&self, component: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_NAME.to_string(), component.to_string()),
            (LABEL_NETWORK.to_string(), self.name.clone()),
        ])
    }

    fn pod_labels(&self, component: &str) -> BTreeMap<String, String> {
        let mut labels = self.labels();
        labels.extend(self.selector(component));
        labels
    }
}

/// `<mn>-secret`: the generated network secret, 64 hex characters with no newline (the exact bytes the
/// agent uses as the secret).
pub fn network_secret(owner: &Owner, secret_hex: &str) -> Secret {
    Secret {
        metadata: owner.meta(network_secret_name(&owner.name), &[]),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(SECRET_KEY.to_string(), ByteString(secret_hex.as_bytes().to_vec()))])),
        ..Default::default()
    }
}

/// `<mn>-rolodex-key`: the hex rolodex key, all the rolodex gets.
pub fn rolodex_key_secret(owner: &Owner, key: &[u8; 32]) -> Secret {
    let hex = rolodex::keys::to_hex(key);
    Secret {
        metadata: owner.meta(rolodex_key_name(&owner.name), &[]),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(ROLODEX_KEY_KEY.to_string(), ByteString(hex.into_bytes()))])),
        ..Default::default()
    }
}

fn http_probe(path: &str, port: i32, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(port),
            ..Default::default()
        }),
        period_seconds: Some(period),
        ..Default::default()
    }
}

/// `<mn>-rolodex`: one replica (rolodexes share no state), unprivileged, key Secret mounted read-only.
pub fn rolodex_deployment(
    owner: &Owner,
    network_name: &str,
    image: &str,
    managed: &ManagedRolodex,
) -> Deployment {
    let args = vec![
        "rolodex".to_string(),
        "--listen".into(),
        format!("0.0.0.0:{}", managed.port),
        "--network".into(),
        format!("{network_name}={ROLODEX_KEY_DIR}/{ROLODEX_KEY_KEY}"),
        "--metrics-listen".into(),
        format!("0.0.0.0:{ROLODEX_METRICS_PORT}"),
    ];
    let container = Container {
        name: "rolodex".into(),
        image: Some(image.into()),
        args: Some(args),
        ports: Some(vec![
            ContainerPort {
                name: Some("rolodex".into()),
                container_port: managed.port,
                protocol: Some("UDP".into()),
                ..Default::default()
            },
            ContainerPort {
                name: Some("metrics".into()),
                container_port: ROLODEX_METRICS_PORT,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        ]),
        volume_mounts: Some(vec![VolumeMount {
            name: "rolodex-key".into(),
            mount_path: ROLODEX_KEY_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        }]),
        readiness_probe: Some(http_probe("/readyz", ROLODEX_METRICS_PORT, 10)),
        liveness_probe: Some(http_probe("/healthz", ROLODEX_METRICS_PORT, 20)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    };
    Deployment {
        metadata: owner.meta(rolodex_name(&owner.name), &[(LABEL_NAME, ROLODEX_COMPONENT)]),
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(owner.selector(ROLODEX_COMPONENT)),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(owner.pod_labels(ROLODEX_COMPONENT)),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    automount_service_account_token: Some(false),
                    // fsGroup makes the 0440 key file readable by the non-root user.
                    security_context: Some(PodSecurityContext {
                        run_as_user: Some(NON_ROOT),
                        run_as_group: Some(NON_ROOT),
                        fs_group: Some(NON_ROOT),
                        run_as_non_root: Some(true),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    volumes: Some(vec![Volume {
                        name: "rolodex-key".into(),
                        secret: Some(SecretVolumeSource {
                            secret_name: Some(rolodex_key_name(&owner.name)),
                            items: Some(vec![KeyToPath {
                                key: ROLODEX_KEY_KEY.into(),
                                path: ROLODEX_KEY_KEY.into(),
                                ..Default::default()
                            }]),
                            default_mode: Some(0o440),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `<mn>-rolodex`: the UDP Service in front of the rolodex. External traffic keeps its source address
/// (`externalTrafficPolicy: Local`): the rolodex reports each member's reflexive address, which SNAT would
/// replace with a node's.
pub fn rolodex_service(owner: &Owner, managed: &ManagedRolodex) -> Service {
    let external = matches!(managed.service_type, ServiceType::LoadBalancer | ServiceType::NodePort);
    Service {
        metadata: owner.meta(rolodex_name(&owner.name), &[(LABEL_NAME, ROLODEX_COMPONENT)]),
        spec: Some(ServiceSpec {
            type_: Some(managed.service_type.as_str().into()),
            selector: Some(owner.selector(ROLODEX_COMPONENT)),
            ports: Some(vec![ServicePort {
                name: Some("rolodex".into()),
                port: managed.port,
                target_port: Some(IntOrString::Int(managed.port)),
                protocol: Some("UDP".into()),
                ..Default::default()
            }]),
            external_traffic_policy: external.then(|| "Local".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: path.into(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `<mn>-agent`: one agent per selected node, on the host network, with NET_ADMIN (not privileged) and
/// the host's `/dev/net/tun`.
pub fn agent_daemonset(
    owner: &Owner,
    image: &str,
    service_account: &str,
    secret_name: &str,
    agent: &AgentSpec,
) -> DaemonSet {
    let container = Container {
        name: "agent".into(),
        image: Some(image.into()),
        args: Some(vec![
            "agent".into(),
            "--kube".into(),
            "--mesh-network".into(),
            owner.name.clone(),
            "--secret-file".into(),
            format!("{SECRET_DIR}/{SECRET_KEY}"),
        ]),
        env: Some(vec![
            field_env("NODE_NAME", "spec.nodeName"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
        ]),
        // Root, whatever the image's USER: Kubernetes grants no ambient capabilities, so NET_ADMIN only takes
        // effect for uid 0 (and the 0400 secret file is root's).
        security_context: Some(SecurityContext {
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            capabilities: Some(Capabilities { add: Some(vec!["NET_ADMIN".into()]), ..Default::default() }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount { name: "tun".into(), mount_path: "/dev/net/tun".into(), ..Default::default() },
            VolumeMount {
                name: "secret".into(),
                mount_path: SECRET_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
        ]),
        ..Default::default()
    };
    let volumes = vec![
        Volume {
            name: "tun".into(),
            host_path: Some(HostPathVolumeSource {
                path: "/dev/net/tun".into(),
                type_: Some("CharDevice".into()),
            }),
            ..Default::default()
        },
        Volume {
            name: "secret".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret_name.into()),
                items: Some(vec![KeyToPath {
                    key: SECRET_KEY.into(),
                    path: SECRET_KEY.into(),
                    ..Default::default()
                }]),
                default_mode: Some(0o400),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    DaemonSet {
        metadata: owner.meta(agent_name(&owner.name), &[(LABEL_NAME, AGENT_COMPONENT)]),
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(owner.selector(AGENT_COMPONENT)),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(owner.pod_labels(AGENT_COMPONENT)),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    host_network: Some(true),
                    dns_policy: Some("ClusterFirstWithHostNet".into()),
                    service_account_name: Some(service_account.into()),
                    node_selector: (!agent.node_selector.is_empty()).then(|| agent.node_selector.clone()),
                    tolerations: (!agent.tolerations.is_empty()).then(|| agent.tolerations.clone()),
                    volumes: Some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `<mn>-<node>`: the member for one Node; `node` is `None` for a member the operator did not create
/// (a host outside the cluster), whose labels are then left alone.
pub fn mesh_member(
    owner: &Owner,
    name: &str,
    node: Option<&str>,
    addresses: &[String],
    routes: &[String],
) -> MeshMember {
    let mut member = MeshMember::new(
        name,
        MeshMemberSpec {
            network_ref: NetworkRef { name: owner.name.clone() },
            node_name: node.map(str::to_string),
            overlay_addresses: addresses.to_vec(),
            routes: routes.to_vec(),
        },
    );
    member.metadata.namespace = Some(owner.namespace.clone());
    if let Some(node) = node {
        let mut labels = owner.labels();
        if is_label_value(node) {
            labels.insert(LABEL_NODE.into(), node.into());
        }
        member.metadata.labels = Some(labels);
        member.metadata.owner_references = Some(vec![owner.reference.clone()]);
    }
    member
}

/// A valid label value: at most 63 characters of `[A-Za-z0-9._-]`, starting and ending alphanumeric.
pub fn is_label_value(v: &str) -> bool {
    let b = v.as_bytes();
    v.len() <= 63
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        && b.first().is_none_or(|c| c.is_ascii_alphanumeric())
        && b.last().is_none_or(|c| c.is_ascii_alphanumeric())
}

/// A valid DNS-1035 label (Service names): at most 63 of `[a-z0-9-]`, starting with a letter.
pub fn is_dns1035_label(v: &str) -> bool {
    let b = v.as_bytes();
    !v.is_empty()
        && v.len() <= 63
        && b[0].is_ascii_lowercase()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[b.len() - 1] != b'-'
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{network, owner};
    use k8s_openapi::api::core::v1::Toleration;

    fn assert_owned(meta: &ObjectMeta, name: &str) {
        assert_eq!(meta.name.as_deref(), Some(name));
        assert_eq!(meta.namespace.as_deref(), Some("mesh"));
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels[LABEL_MANAGED_BY], "rolomesh-operator");
        assert_eq!(labels[LABEL_NETWORK], "prod");
        let refs = meta.owner_references.as_ref().unwrap();
        assert_eq!(refs.len(), 1);
        assert_eq!(
            (refs[0].kind.as_str(), refs[0].name.as_str(), refs[0].uid.as_str()),
            ("MeshNetwork", "prod", "uid-1")
        );
        assert_eq!(refs[0].api_version, "rolomesh.io/v1alpha1");
        assert_eq!(refs[0].controller, Some(true));
    }

    #[test]
    fn owner_needs_name_namespace_and_uid() {
        let mut mn = network("prod");
        mn.metadata.uid = None;
        assert!(matches!(Owner::of(&mn), Err(Error::InvalidSpec(_))));
        let mut mn = network("prod");
        mn.metadata.namespace = None;
        assert!(Owner::of(&mn).is_err());
    }

    #[test]
    fn secrets_hold_exact_bytes() {
        let hex = "ab".repeat(32);
        let s = network_secret(&owner(), &hex);
        assert_owned(&s.metadata, "prod-secret");
        assert_eq!(s.data.as_ref().unwrap()["secret"].0, hex.as_bytes(), "no trailing newline");
        let key = [7u8; 32];
        let k = rolodex_key_secret(&owner(), &key);
        assert_owned(&k.metadata, "prod-rolodex-key");
        assert_eq!(k.data.as_ref().unwrap()["key"].0, "07".repeat(32).as_bytes());
    }

    #[test]
    fn rolodex_deployment_matches_the_contract() {
        let managed = ManagedRolodex { service_type: ServiceType::ClusterIP, port: 7000 };
        let d = rolodex_deployment(&owner(), "wire", "img:1", &managed);
        assert_owned(&d.metadata, "prod-rolodex");
        let spec = d.spec.unwrap();
        assert_eq!(spec.replicas, Some(1));
        let pod = spec.template.spec.unwrap();
        let tpl_labels = spec.template.metadata.unwrap().labels.unwrap();
        for (k, v) in spec.selector.match_labels.unwrap() {
            assert_eq!(tpl_labels[&k], v, "selector matches the pod labels");
        }
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("img:1"));
        assert_eq!(
            c.args.as_ref().unwrap().join(" "),
            "rolodex --listen 0.0.0.0:7000 --network wire=/etc/rolomesh/rolodex/key --metrics-listen 0.0.0.0:9465"
        );
        assert_eq!(c.volume_mounts.as_ref().unwrap()[0].mount_path, "/etc/rolomesh/rolodex");
        let vol = &pod.volumes.as_ref().unwrap()[0];
        assert_eq!(vol.secret.as_ref().unwrap().secret_name.as_deref(), Some("prod-rolodex-key"));
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!((sc.privileged, sc.read_only_root_filesystem), (Some(false), Some(true)));
        let psc = pod.security_context.as_ref().unwrap();
        assert_eq!((psc.run_as_non_root, psc.run_as_user), (Some(true), Some(65532)));
        assert_eq!(psc.fs_group, psc.run_as_group, "the key file (0440) is readable by the group");
        assert_eq!(vol.secret.as_ref().unwrap().default_mode, Some(0o440));
        assert_eq!(pod.host_network, None, "the rolodex is not on the host network");
    }

    #[test]
    fn rolodex_service_keeps_source_addresses() {
        let lb = ManagedRolodex { service_type: ServiceType::LoadBalancer, port: 6264 };
        let s = rolodex_service(&owner(), &lb);
        assert_owned(&s.metadata, "prod-rolodex");
        let spec = s.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
        let p = &spec.ports.unwrap()[0];
        assert_eq!((p.port, p.protocol.as_deref()), (6264, Some("UDP")));
        assert_eq!(spec.selector.unwrap(), owner().selector(ROLODEX_COMPONENT));
        let cip =
            rolodex_service(&owner(), &ManagedRolodex { service_type: ServiceType::ClusterIP, port: 1 });
        assert_eq!(cip.spec.unwrap().external_traffic_policy, None, "not allowed on ClusterIP");
    }

    #[test]
    fn agent_daemonset_matches_the_contract() {
        let agent = AgentSpec {
            node_selector: BTreeMap::from([("mesh".into(), "yes".into())]),
            tolerations: vec![Toleration { operator: Some("Exists".into()), ..Default::default() }],
            ..Default::default()
        };
        let ds = agent_daemonset(&owner(), "img:2", "rolomesh-agent", "my-secret", &agent);
        assert_owned(&ds.metadata, "prod-agent");
        let spec = ds.spec.unwrap();
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.host_network, Some(true));
        assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
        assert_eq!(pod.service_account_name.as_deref(), Some("rolomesh-agent"));
        assert_eq!(pod.node_selector.unwrap()["mesh"], "yes");
        assert_eq!(pod.tolerations.unwrap().len(), 1);
        let c = &pod.containers[0];
        assert_eq!(
            c.args.as_ref().unwrap().join(" "),
            "agent --kube --mesh-network prod --secret-file /etc/rolomesh/secret/secret"
        );
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.privileged, Some(false), "NET_ADMIN, not privileged");
        assert_eq!(sc.run_as_user, Some(0), "the image's USER is 65532; NET_ADMIN needs uid 0");
        assert_eq!(sc.capabilities.as_ref().unwrap().add.as_deref(), Some(&["NET_ADMIN".to_string()][..]));
        let env = c.env.as_ref().unwrap();
        let field = |n: &str| {
            env.iter()
                .find(|e| e.name == n)
                .and_then(|e| e.value_from.as_ref()?.field_ref.as_ref())
                .map(|f| f.field_path.clone())
        };
        assert_eq!(field("NODE_NAME").as_deref(), Some("spec.nodeName"));
        assert_eq!(field("POD_NAMESPACE").as_deref(), Some("metadata.namespace"));
        let vols = pod.volumes.unwrap();
        let tun = vols.iter().find_map(|v| v.host_path.as_ref()).unwrap();
        assert_eq!((tun.path.as_str(), tun.type_.as_deref()), ("/dev/net/tun", Some("CharDevice")));
        let secret = vols.iter().find_map(|v| v.secret.as_ref()).unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("my-secret"));
        let mounts = c.volume_mounts.as_ref().unwrap();
        assert!(mounts.iter().any(|m| m.mount_path == "/dev/net/tun"));
        assert!(mounts.iter().any(|m| m.mount_path == "/etc/rolomesh/secret" && m.read_only == Some(true)));
        let selector = spec.selector.match_labels.unwrap();
        let tpl = spec.template.metadata.unwrap().labels.unwrap();
        assert!(selector.iter().all(|(k, v)| tpl.get(k) == Some(v)));
        assert_ne!(selector, owner().selector(ROLODEX_COMPONENT), "agent and rolodex pods are told apart");
    }

    #[test]
    fn empty_agent_selector_and_tolerations_are_left_out() {
        let ds = agent_daemonset(&owner(), "i", "sa", "s", &AgentSpec::default());
        let pod = ds.spec.unwrap().template.spec.unwrap();
        assert_eq!((pod.node_selector, pod.tolerations), (None, None));
    }

    #[test]
    fn member_for_a_node_is_owned_and_labelled() {
        let m =
            mesh_member(&owner(), "prod-n1", Some("n1"), &["100.64.0.9".into()], &["10.244.1.0/24".into()]);
        assert_owned(&m.metadata, "prod-n1");
        assert_eq!(m.metadata.labels.as_ref().unwrap()[LABEL_NODE], "n1");
        assert_eq!(m.spec.network_ref.name, "prod");
        assert_eq!(m.spec.node_name.as_deref(), Some("n1"));
        assert_eq!(m.spec.overlay_addresses, ["100.64.0.9"]);
        assert_eq!(m.spec.routes, ["10.244.1.0/24"]);
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["apiVersion"], "rolomesh.io/v1alpha1");
        assert_eq!(v["kind"], "MeshMember");
        assert!(v.get("status").is_none(), "the agent owns status");
        let host = mesh_member(&owner(), "laptop", None, &["100.64.0.2".into()], &[]);
        assert_eq!((host.metadata.labels, host.metadata.owner_references), (None, None));
    }

    #[test]
    fn label_and_dns_checks() {
        assert!(is_label_value("node-1.example"));
        assert!(!is_label_value(&"a".repeat(64)));
        assert!(!is_label_value("-a"));
        assert!(is_dns1035_label("prod-rolodex"));
        assert!(!is_dns1035_label("1prod-rolodex"));
        assert!(!is_dns1035_label("prod.eu-rolodex"));
        assert!(!is_dns1035_label(&format!("{}-rolodex", "a".repeat(60))));
    }
}
