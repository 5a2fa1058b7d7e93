use super::*;
use crate::fixtures::{host_member, node, node_member, overlay, owner};

fn pool(cidrs: &[&str], from: &[&str]) -> Vec<Pool> {
    pools(&overlay(cidrs, from)).unwrap()
}

fn ips(list: &[&str]) -> HashSet<IpAddr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn wanted(nodes: &[&str]) -> Vec<Wanted> {
    nodes.iter().map(|n| Wanted { node: n.to_string(), routes: vec![] }).collect()
}

#[test]
fn fnv1a_matches_reference_vectors() {
    assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(fnv1a("foobar"), 0x8594_4171_f739_67e8);
}

#[test]
fn cidrs_parse_and_clear_host_bits() {
    let c: Cidr = "100.64.7.9/10".parse().unwrap();
    assert_eq!((c.bounds().0, c.prefix), (u128::from(u32::from(std::net::Ipv4Addr::new(100, 64, 0, 0))), 10));
    assert!("10.0.0.0/33".parse::<Cidr>().unwrap_err().contains("exceeds 32"));
    assert!("10.0.0.0".parse::<Cidr>().is_err());
    assert!("nope/8".parse::<Cidr>().is_err());
    let v6: Cidr = "fd00::1/64".parse().unwrap();
    assert!(v6.v6 && v6.contains("fd00::/80".parse().unwrap()));
    assert!(!v6.contains("fd01::/80".parse().unwrap()));
    let all: Cidr = "::/0".parse().unwrap();
    assert_eq!(all.bounds(), (0, u128::MAX));
}

#[test]
fn pools_skip_network_and_broadcast() {
    let p = &pool(&["10.0.0.0/29"], &[])[0];
    assert_eq!(p.size(), 6);
    let mut got = HashSet::new();
    for i in 0..6 {
        got.insert(allocate(p, &format!("n{i}"), &got).unwrap());
    }
    assert_eq!(got, ips(&["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]));
    assert!(allocate(p, "n6", &got).unwrap_err().contains("all 6 IPv4 addresses"));
}

#[test]
fn tiny_ranges_keep_their_addresses_but_not_the_overlay_edges() {
    assert_eq!(pool(&["10.0.0.0/31"], &[])[0].size(), 2, "a /31 overlay has no broadcast (RFC 3021)");
    assert_eq!(pool(&["10.0.0.9/32"], &[])[0].size(), 1);
    let p = &pool(&["10.0.0.0/24"], &["10.0.0.0/31"])[0];
    assert_eq!(p.size(), 1, "10.0.0.0 is the overlay's network address");
    assert_eq!(allocate(p, "x", &HashSet::new()).unwrap().to_string(), "10.0.0.1");
}

#[test]
fn allocate_from_limits_the_pool_and_merges_nested_ranges() {
    let p = &pool(&["100.64.0.0/10"], &["100.64.1.0/24"])[0];
    assert_eq!(p.size(), 254);
    let a = allocate(p, "node-a", &HashSet::new()).unwrap();
    assert!(a.to_string().starts_with("100.64.1."), "{a}");
    let p = &pool(&["100.64.0.0/10"], &["100.64.1.0/24", "100.64.0.0/16", "100.65.0.0/30"])[0];
    assert_eq!(p.size(), 65534 + 2);
    let err = pools(&overlay(&["100.64.0.0/10"], &["10.0.0.0/24"])).unwrap_err();
    assert!(err.contains("outside the overlay"), "{err}");
    assert!(pools(&overlay(&[], &[])).is_err());
}

#[test]
fn allocation_is_deterministic_and_starts_at_the_hash() {
    let p = &pool(&["100.64.0.0/10"], &[])[0];
    let a = allocate(p, "worker-1", &HashSet::new()).unwrap();
    assert_eq!(a, allocate(p, "worker-1", &HashSet::new()).unwrap());
    let expected = u128::from(fnv1a("worker-1")) % p.size();
    assert_eq!(Some(a), p.nth(expected));
    assert_ne!(a, allocate(p, "worker-2", &HashSet::new()).unwrap());
}

#[test]
fn allocation_probes_upward_and_wraps() {
    let p = &pool(&["10.0.0.0/29"], &[])[0];
    let seed = "s";
    let first = allocate(p, seed, &HashSet::new()).unwrap();
    let second = allocate(p, seed, &HashSet::from([first])).unwrap();
    let step = |a: IpAddr| {
        let IpAddr::V4(v) = a else { panic!() };
        let n = u32::from(v);
        if n == u32::from(std::net::Ipv4Addr::new(10, 0, 0, 6)) {
            "10.0.0.1".parse().unwrap()
        } else {
            IpAddr::V4((n + 1).into())
        }
    };
    assert_eq!(second, step(first), "next address up, wrapping past the last usable one");
    // Only one free address left: found wherever the start is.
    let all = ips(&["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]);
    for free in &all {
        let mut used = all.clone();
        used.remove(free);
        for seed in ["a", "b", "c", "d", "e", "f", "g"] {
            assert_eq!(allocate(p, seed, &used).unwrap(), *free);
        }
    }
}

#[test]
fn ipv6_and_dual_stack() {
    let ps = pool(&["100.64.0.0/10", "fd7a:115c::/64"], &[]);
    assert_eq!(ps.len(), 2);
    assert_eq!(ps[1].size(), (1u128 << 64) - 2);
    let a = allocate(&ps[1], "n1", &HashSet::new()).unwrap();
    assert!(a.is_ipv6() && a.to_string().starts_with("fd7a:115c::"), "{a}");
    assert_ne!(a.to_string(), "fd7a:115c::");
    let small = &pool(&["fd00::/126"], &[])[0];
    assert_eq!(small.size(), 2);
    let mut used = HashSet::new();
    used.insert(allocate(small, "a", &used).unwrap());
    used.insert(allocate(small, "b", &used).unwrap());
    assert_eq!(used, ips(&["fd00::1", "fd00::2"]));
    assert!(allocate(small, "c", &used).unwrap_err().contains("IPv6"));
    // A family with a CIDR but no allocateFrom range gets no pool.
    let only_v4 = pool(&["100.64.0.0/10", "fd00::/64"], &["100.64.2.0/24"]);
    assert_eq!((only_v4.len(), only_v4[0].v6), (1, false));
}

#[test]
fn plan_creates_one_member_per_node_with_distinct_addresses() {
    let ps = pool(&["10.0.0.0/29"], &[]);
    let p = plan(&owner(), &ps, &wanted(&["n3", "n1", "n2"]), &[]);
    assert_eq!(
        p.writes.iter().map(|w| w.name.as_str()).collect::<Vec<_>>(),
        ["prod-n1", "prod-n2", "prod-n3"]
    );
    let addrs: HashSet<&String> = p.writes.iter().flat_map(|w| &w.addresses).collect();
    assert_eq!(addrs.len(), 3);
    assert!(p.writes.iter().all(|w| w.created && w.allocated == w.addresses));
    assert!(p.deletes.is_empty() && p.failures.is_empty());
}

#[test]
fn plan_never_changes_existing_addresses() {
    let ps = pool(&["10.0.0.0/29"], &[]);
    // Address outside the (changed) pool: kept anyway; nothing to write.
    let existing = vec![node_member("n1", &["192.168.9.9"])];
    let p = plan(&owner(), &ps, &wanted(&["n1"]), &existing);
    assert_eq!(p, Plan::default());
    // Routes changed: written again with the same address.
    let w = vec![Wanted { node: "n1".into(), routes: vec!["10.244.1.0/24".into()] }];
    let p = plan(&owner(), &ps, &w, &existing);
    assert_eq!(p.writes.len(), 1);
    assert_eq!(
        (p.writes[0].addresses.clone(), p.writes[0].created),
        (vec!["192.168.9.9".to_string()], false)
    );
    assert!(p.writes[0].allocated.is_empty());
}

#[test]
fn plan_adds_a_missing_family_only() {
    let ps = pool(&["10.0.0.0/24", "fd00::/64"], &[]);
    let existing = vec![node_member("n1", &["10.0.0.5"])];
    let p = plan(&owner(), &ps, &wanted(&["n1"]), &existing);
    let w = &p.writes[0];
    assert_eq!(w.addresses[0], "10.0.0.5");
    assert!(w.addresses[1].parse::<IpAddr>().unwrap().is_ipv6());
    assert_eq!(w.allocated, w.addresses[1..]);
}

#[test]
fn plan_skips_addresses_in_use_and_reports_exhaustion() {
    let ps = pool(&["10.0.0.0/30"], &[]);
    let existing = vec![node_member("n1", &["10.0.0.1"]), host_member("laptop", &["10.0.0.2"])];
    let p = plan(&owner(), &ps, &wanted(&["n1", "n2"]), &existing);
    assert!(p.writes.is_empty());
    assert_eq!(p.failures.len(), 1);
    assert_eq!(p.failures[0].member, "prod-n2");
    assert_eq!(p.failures[0].message, "member prod-n2: all 2 IPv4 addresses of the pool are in use");
    assert!(p.deletes.is_empty(), "the failed node's member is not deleted, the host's never");
}

#[test]
fn plan_deletes_members_of_gone_nodes_it_created() {
    let ps = pool(&["10.0.0.0/24"], &[]);
    let mut foreign = node_member("n9", &["10.0.0.9"]);
    foreign.metadata.labels = None;
    let existing = vec![node_member("n1", &["10.0.0.1"]), node_member("n2", &["10.0.0.2"]), foreign];
    let p = plan(&owner(), &ps, &wanted(&["n1"]), &existing);
    assert_eq!(p.deletes, ["prod-n2"], "not the member someone else made for n9");
    assert!(p.writes.is_empty());
}

#[test]
fn plan_fills_in_addresses_of_outside_hosts() {
    let ps = pool(&["10.0.0.0/24"], &[]);
    let existing = vec![host_member("laptop", &[]), host_member("server", &["10.0.0.77"])];
    let p = plan(&owner(), &ps, &[], &existing);
    assert_eq!(p.writes.len(), 1);
    let w = &p.writes[0];
    assert_eq!((w.name.as_str(), w.node.as_deref(), w.created), ("laptop", None, false));
    assert_eq!(w.addresses, w.allocated);
    assert!(p.deletes.is_empty());
}

#[test]
fn plan_rewrites_members_missing_labels_or_owner() {
    let ps = pool(&["10.0.0.0/24"], &[]);
    let mut m = node_member("n1", &["10.0.0.1"]);
    m.metadata.owner_references = None;
    let p = plan(&owner(), &ps, &wanted(&["n1"]), &[m]);
    assert_eq!(p.writes.len(), 1);
    assert_eq!(p.writes[0].addresses, ["10.0.0.1"]);
}

#[test]
fn node_selection_follows_selector_taints_and_tolerations() {
    let mut agent = AgentSpec::default();
    assert!(selects(&agent, &node("a", &[], &[], &[])));
    let cp = node("cp", &[], &[], &[("node-role.kubernetes.io/control-plane", "NoSchedule")]);
    assert!(!selects(&agent, &cp));
    let soft = node("s", &[], &[], &[("x", "PreferNoSchedule")]);
    assert!(selects(&agent, &soft));
    for key in
        ["node.kubernetes.io/unschedulable", "node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"]
    {
        for effect in ["NoSchedule", "NoExecute"] {
            let sick = node("c", &[], &[], &[(key, effect)]);
            assert!(selects(&agent, &sick), "{key}:{effect} comes and goes; the member stays");
        }
    }

    agent.tolerations = vec![Toleration {
        key: Some("node-role.kubernetes.io/control-plane".into()),
        operator: Some("Exists".into()),
        effect: Some("NoSchedule".into()),
        ..Default::default()
    }];
    assert!(selects(&agent, &cp));
    agent.tolerations = vec![Toleration { operator: Some("Exists".into()), ..Default::default() }];
    assert!(selects(&agent, &cp), "an empty key with Exists tolerates everything");
    agent.tolerations =
        vec![Toleration { key: Some("dedicated".into()), value: Some("mesh".into()), ..Default::default() }];
    let mut dedicated = node("d", &[], &[], &[("dedicated", "NoExecute")]);
    assert!(!selects(&agent, &dedicated), "value differs");
    dedicated.spec.as_mut().unwrap().taints.as_mut().unwrap()[0].value = Some("mesh".into());
    assert!(selects(&agent, &dedicated));

    agent.node_selector = BTreeMap::from([("mesh".into(), "yes".into())]);
    assert!(!selects(&agent, &node("a", &[], &[], &[])));
    assert!(selects(&agent, &node("a", &[("mesh", "yes")], &[], &[])));

    let mut gone = node("g", &[("mesh", "yes")], &[], &[]);
    gone.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
    assert!(!selects(&agent, &gone));
}

#[test]
fn pod_cidrs_prefer_the_list() {
    assert_eq!(
        pod_cidrs(&node("a", &[], &["10.244.1.0/24", "fd00:1::/64"], &[])),
        ["10.244.1.0/24", "fd00:1::/64"]
    );
    let mut n = node("b", &[], &[], &[]);
    n.spec.as_mut().unwrap().pod_cidr = Some("10.244.2.0/24".into());
    assert_eq!(pod_cidrs(&n), ["10.244.2.0/24"]);
    assert!(pod_cidrs(&node("c", &[], &[], &[])).is_empty());
}
