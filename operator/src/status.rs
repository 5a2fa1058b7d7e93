//! MeshNetwork status: conditions (metav1.Condition shape) and aggregation from the MeshMembers that the
//! agents report into. Pure: the caller supplies the clock and the observed objects.

use crds::{Condition, LinkState, MeshMember, MeshNetworkStatus};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

pub const READY: &str = "Ready";
pub const ROLODEX_READY: &str = "RolodexReady";
pub const AGENTS_READY: &str = "AgentsReady";
pub const DEGRADED: &str = "Degraded";

/// Longest condition message written (the API allows 32 KiB).
const MAX_MESSAGE: usize = 1024;

/// The wanted state of one condition; [`merge`] adds the timestamps.
#[derive(Clone, Debug, PartialEq)]
pub struct Wanted {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

fn wanted(type_: &'static str, status: bool, reason: &'static str, message: impl Into<String>) -> Wanted {
    Wanted { type_, status, reason, message: message.into() }
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// Builds `wanted` as conditions. `lastTransitionTime` is kept from `previous` when the status of that
/// type did not change, and is `now` otherwise; `observedGeneration` is `generation`.
pub fn merge(
    previous: &[Condition],
    wanted: Vec<Wanted>,
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    wanted
        .into_iter()
        .map(|w| {
            let status = if w.status { "True" } else { "False" }.to_string();
            let last_transition_time = previous
                .iter()
                .find(|c| c.type_ == w.type_ && c.status == status)
                .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
            Condition {
                type_: w.type_.into(),
                status,
                reason: w.reason.into(),
                message: truncate(w.message),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// Counts over a network's members.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub members: i32,
    /// Ready=True: the agent runs and is registered with a rolodex.
    pub ready: i32,
    /// Connected=True: links to every peer are up.
    pub connected: i32,
    /// Connected links, once per pair.
    pub links: i32,
}

fn condition_true(m: &MeshMember, type_: &str) -> bool {
    m.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == type_ && c.status == "True"))
}

/// The member's Connected links: its `connectedPeers`, or (from an agent that does not write it) the
/// Connected entries of `links`.
pub fn connected_links(m: &MeshMember) -> usize {
    let Some(s) = m.status.as_ref() else { return 0 };
    match s.connected_peers {
        Some(n) => usize::try_from(n).unwrap_or(0),
        None => s.links.iter().filter(|l| l.state == LinkState::Connected).count(),
    }
}

pub fn count(members: &[MeshMember]) -> Counts {
    let n = |it: usize| i32::try_from(it).unwrap_or(i32::MAX);
    let link_ends: usize = members.iter().map(connected_links).sum();
    Counts {
        members: n(members.len()),
        ready: n(members.iter().filter(|m| condition_true(m, "Ready")).count()),
        connected: n(members.iter().filter(|m| condition_true(m, "Connected")).count()),
        links: n(link_ends / 2),
    }
}

/// How the rolodex is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rolodex {
    /// Run elsewhere; nothing to check here.
    External,
    /// Run by the operator; `available` when its Deployment has an available replica.
    Managed { available: bool },
}

/// What one successful reconcile observed.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    pub counts: Counts,
    pub rolodex: Rolodex,
    pub endpoint: Option<String>,
    /// Why some members could not be written (exhausted pool, ...).
    pub member_failures: Vec<String>,
}

/// `host:port`, with brackets around IPv6 hosts.
pub fn host_port(host: &str, port: i32) -> String {
    if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}

/// Where agents reach a managed rolodex: the LoadBalancer ingress, else the ClusterIP.
pub fn service_endpoint(svc: &Service, port: i32) -> Option<String> {
    let ingress =
        svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_ref());
    let lb = ingress.into_iter().flatten().find_map(|i| {
        i.ip.clone().filter(|s| !s.is_empty()).or_else(|| i.hostname.clone().filter(|s| !s.is_empty()))
    });
    let cluster_ip =
        svc.spec.as_ref().and_then(|s| s.cluster_ip.clone()).filter(|ip| !ip.is_empty() && ip != "None");
    lb.or(cluster_ip).map(|host| host_port(&host, port))
}

/// The status after a successful reconcile.
pub fn healthy(
    previous: Option<&MeshNetworkStatus>,
    generation: Option<i64>,
    network_name: String,
    observed: &Observed,
    now: &Time,
) -> MeshNetworkStatus {
    let c = observed.counts;
    let rolodex = match observed.rolodex {
        Rolodex::External => wanted(ROLODEX_READY, true, "External", "rolodexes run outside this cluster"),
        Rolodex::Managed { available: true } => {
            wanted(ROLODEX_READY, true, "Available", "rolodex is available")
        }
        Rolodex::Managed { available: false } => {
            wanted(ROLODEX_READY, false, "Unavailable", "the rolodex Deployment has no available replica")
        }
    };
    let agents = if c.members == 0 {
        wanted(AGENTS_READY, false, "NoMembers", "no node is selected for this network")
    } else if c.ready == c.members {
        wanted(AGENTS_READY, true, "AllReady", format!("{}/{} members ready", c.ready, c.members))
    } else {
        wanted(AGENTS_READY, false, "MembersNotReady", format!("{}/{} members ready", c.ready, c.members))
    };
    let ready = if !rolodex.status {
        wanted(READY, false, "RolodexNotReady", rolodex.message.clone())
    } else if !agents.status {
        wanted(READY, false, "AgentsNotReady", agents.message.clone())
    } else {
        wanted(READY, true, "Ready", format!("{} members, {} connected", c.members, c.connected))
    };
    let degraded = if !observed.member_failures.is_empty() {
        wanted(DEGRADED, true, "MembersNotAllocated", observed.member_failures.join("; "))
    } else if c.ready > 0 && c.connected < c.ready {
        let msg = format!("{} of {} ready members lack links to some peers", c.ready - c.connected, c.ready);
        wanted(DEGRADED, true, "LinksDown", msg)
    } else {
        wanted(DEGRADED, false, "AsExpected", "")
    };
    let prev = previous.map(|s| s.conditions.as_slice()).unwrap_or(&[]);
    MeshNetworkStatus {
        conditions: merge(prev, vec![ready, rolodex, agents, degraded], generation, now),
        observed_generation: generation,
        network_name: Some(network_name),
        members: c.members,
        connected_members: c.connected,
        connected_links: c.links,
        rolodex_endpoint: observed.endpoint.clone(),
    }
}

/// The status after a failed reconcile: Ready=False and Degraded=True with the error; counts and the other
/// conditions stay as last observed.
pub fn failed(
    previous: Option<&MeshNetworkStatus>,
    generation: Option<i64>,
    network_name: String,
    reason: &'static str,
    message: String,
    now: &Time,
) -> MeshNetworkStatus {
    let prev = previous.cloned().unwrap_or_default();
    let wanted_list = vec![
        wanted(READY, false, "ReconcileFailed", message.clone()),
        wanted(DEGRADED, true, reason, message),
    ];
    let mut conditions = merge(&prev.conditions, wanted_list, generation, now);
    for type_ in [ROLODEX_READY, AGENTS_READY] {
        if let Some(c) = prev.conditions.iter().find(|c| c.type_ == type_) {
            conditions.push(c.clone());
        }
    }
    conditions.sort_by_key(|c| order(&c.type_));
    MeshNetworkStatus {
        conditions,
        observed_generation: generation,
        network_name: Some(network_name),
        ..prev
    }
}

fn order(type_: &str) -> usize {
    [READY, ROLODEX_READY, AGENTS_READY, DEGRADED].iter().position(|t| *t == type_).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crds::{Link, MeshMemberStatus};
    use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, ServiceSpec, ServiceStatus};
    use k8s_openapi::jiff::Timestamp;

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn cond(type_: &str, status: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: "R".into(),
            message: String::new(),
            observed_generation: Some(1),
            last_transition_time: t(100),
        }
    }

    fn member(ready: bool, connected: bool, links: usize) -> MeshMember {
        let mut m = crate::fixtures::node_member("n", &[]);
        let c = |ty: &str, on: bool| cond(ty, if on { "True" } else { "False" });
        m.status = Some(MeshMemberStatus {
            conditions: vec![c("Ready", ready), c("Connected", connected)],
            links: (0..links)
                .map(|i| Link {
                    peer: format!("p{i}"),
                    state: if i == 0 { LinkState::Connected } else { LinkState::Punching },
                    endpoint: None,
                    rtt_millis: None,
                    last_handshake: None,
                    rx_bytes: 0,
                    tx_bytes: 0,
                    via_relay: false,
                })
                .collect(),
            ..Default::default()
        });
        m
    }

    #[test]
    fn transition_time_changes_only_with_the_status() {
        let prev = vec![cond(READY, "True"), cond(DEGRADED, "False")];
        let out = merge(
            &prev,
            vec![wanted(READY, true, "Ready", "new message"), wanted(DEGRADED, true, "LinksDown", "x")],
            Some(7),
            &t(200),
        );
        assert_eq!(out[0].last_transition_time, t(100), "same status: time kept");
        assert_eq!((out[0].reason.as_str(), out[0].message.as_str()), ("Ready", "new message"));
        assert_eq!(out[1].last_transition_time, t(200), "status flipped: now");
        assert!(out.iter().all(|c| c.observed_generation == Some(7)));
        let fresh = merge(&[], vec![wanted(READY, false, "X", "")], None, &t(5));
        assert_eq!((fresh[0].status.as_str(), fresh[0].last_transition_time.clone()), ("False", t(5)));
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let out = merge(&[], vec![wanted(READY, false, "X", "é".repeat(1000))], None, &t(1));
        assert!(out[0].message.len() <= MAX_MESSAGE && out[0].message.chars().all(|c| c == 'é'));
    }

    #[test]
    fn counts_come_from_member_status() {
        let c = count(&[
            member(true, true, 2),
            member(true, false, 2),
            member(false, false, 0),
            crate::fixtures::node_member("x", &[]),
        ]);
        assert_eq!(c, Counts { members: 4, ready: 2, connected: 1, links: 1 });
        // A big mesh's member lists only some links; its connectedPeers count is what counts.
        let mut big = member(true, true, 2);
        big.status.as_mut().unwrap().connected_peers = Some(999);
        let c = count(&[big, member(true, true, 2)]);
        assert_eq!(c.links, 500);
    }

    #[test]
    fn healthy_network_is_ready() {
        let obs = Observed {
            counts: Counts { members: 3, ready: 3, connected: 3, links: 3 },
            rolodex: Rolodex::External,
            endpoint: Some("r.example:6264".into()),
            member_failures: vec![],
        };
        let s = healthy(None, Some(2), "prod".into(), &obs, &t(10));
        let get = |ty: &str| s.conditions.iter().find(|c| c.type_ == ty).unwrap().status.clone();
        assert_eq!(
            (get(READY), get(ROLODEX_READY), get(AGENTS_READY), get(DEGRADED)),
            ("True".into(), "True".into(), "True".into(), "False".into())
        );
        assert_eq!((s.members, s.connected_members, s.connected_links), (3, 3, 3));
        assert_eq!((s.observed_generation, s.network_name.as_deref()), (Some(2), Some("prod")));
        assert_eq!(s.rolodex_endpoint.as_deref(), Some("r.example:6264"));
        // Same facts later: byte-identical status (so server-side apply writes nothing).
        assert_eq!(healthy(Some(&s), Some(2), "prod".into(), &obs, &t(99)), s);
    }

    #[test]
    fn not_ready_reasons() {
        let mut obs = Observed {
            counts: Counts::default(),
            rolodex: Rolodex::Managed { available: false },
            endpoint: None,
            member_failures: vec![],
        };
        let s = healthy(None, None, "n".into(), &obs, &t(1));
        assert_eq!(s.conditions[0].reason, "RolodexNotReady");
        assert_eq!(s.conditions[2].reason, "NoMembers");
        obs.rolodex = Rolodex::Managed { available: true };
        obs.counts = Counts { members: 3, ready: 2, connected: 1, links: 1 };
        let s = healthy(None, None, "n".into(), &obs, &t(1));
        assert_eq!(
            (s.conditions[0].reason.as_str(), s.conditions[2].message.as_str()),
            ("AgentsNotReady", "2/3 members ready")
        );
        assert_eq!((s.conditions[3].status.as_str(), s.conditions[3].reason.as_str()), ("True", "LinksDown"));
        obs.member_failures = vec!["n4: all 2 IPv4 addresses of the pool are in use".into()];
        let s = healthy(None, None, "n".into(), &obs, &t(1));
        assert_eq!(s.conditions[3].reason, "MembersNotAllocated");
    }

    #[test]
    fn failure_keeps_counts_and_other_conditions() {
        let obs = Observed {
            counts: Counts { members: 2, ready: 2, connected: 2, links: 1 },
            rolodex: Rolodex::External,
            endpoint: Some("e:1".into()),
            member_failures: vec![],
        };
        let ok = healthy(None, Some(1), "n".into(), &obs, &t(1));
        let bad = failed(Some(&ok), Some(2), "n".into(), "SecretError", "secret x has no key".into(), &t(50));
        assert_eq!((bad.members, bad.connected_links, bad.rolodex_endpoint.as_deref()), (2, 1, Some("e:1")));
        let types: Vec<_> = bad.conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, [READY, ROLODEX_READY, AGENTS_READY, DEGRADED]);
        assert_eq!(
            (bad.conditions[0].status.as_str(), bad.conditions[0].last_transition_time.clone()),
            ("False", t(50))
        );
        assert_eq!(
            (bad.conditions[3].reason.as_str(), bad.conditions[3].message.as_str()),
            ("SecretError", "secret x has no key")
        );
        assert_eq!(bad.conditions[1], ok.conditions[1], "untouched");
        assert_eq!(bad.observed_generation, Some(2));
    }

    #[test]
    fn endpoints() {
        let svc = |ingress: Option<LoadBalancerIngress>, cip: &str| Service {
            spec: Some(ServiceSpec { cluster_ip: Some(cip.into()), ..Default::default() }),
            status: Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus { ingress: ingress.map(|i| vec![i]) }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let ip = LoadBalancerIngress { ip: Some("203.0.113.5".into()), ..Default::default() };
        assert_eq!(service_endpoint(&svc(Some(ip), "10.96.0.9"), 6264).as_deref(), Some("203.0.113.5:6264"));
        let host = LoadBalancerIngress { hostname: Some("lb.example".into()), ..Default::default() };
        assert_eq!(service_endpoint(&svc(Some(host), "10.96.0.9"), 1).as_deref(), Some("lb.example:1"));
        assert_eq!(service_endpoint(&svc(None, "10.96.0.9"), 6264).as_deref(), Some("10.96.0.9:6264"));
        assert_eq!(service_endpoint(&svc(None, "fd00::9"), 6264).as_deref(), Some("[fd00::9]:6264"));
        assert_eq!(service_endpoint(&svc(None, "None"), 6264), None);
        assert_eq!(service_endpoint(&Service::default(), 6264), None);
    }
}
