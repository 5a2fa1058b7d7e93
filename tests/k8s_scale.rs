//! Many Nodes and agents against a real kube-apiserver, checking correctness only (the measured version is
//! `rolomesh bench k8s-scale`): every Node gets exactly one MeshMember, with a distinct address inside the
//! pool; the agents' status writes stay within the writer's design bound and their objects stay small.

use std::path::Path;
use std::time::Duration;

use rolomesh::bench_k8s::{self, Options};

#[test]
fn two_hundred_nodes_get_one_member_each_and_status_writes_stay_bounded() {
    let o = Options {
        nodes: 200,
        writers: 200,
        status_interval: Duration::from_secs(2),
        ramp: Duration::from_secs(8),
        steady: Duration::from_secs(10),
        churn: Duration::from_secs(15),
        flap_every: Duration::from_secs(1),
    };
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let r = bench_k8s::run(repo, Path::new(env!("CARGO_BIN_EXE_rolomesh")), &o).expect("k8s-scale run");
    eprintln!("{}", r.markdown());

    let a = &r.allocation;
    assert_eq!(a.members, 200, "one member per Node");
    assert_eq!((a.nodes_without_member, a.nodes_with_several), (0, 0));
    assert_eq!(a.distinct_addresses, 200, "duplicate addresses");
    assert_eq!(a.outside_pool, 0, "addresses outside allocateFrom 100.64.0.0/16");

    let w = r.writes.as_ref().expect("write phase ran");
    assert_eq!(w.writer_failures, 0, "status writes failed: {:?}", w.status_codes);
    assert!(w.writer_writes >= 200, "some writer never wrote: {} writes", w.writer_writes);
    for p in &w.phases {
        assert!(p.writes <= p.bound, "{}: {} writes, design bound {}", p.name, p.writes, p.bound);
        assert_eq!(p.failed_writes, 0, "{}", p.name);
    }
    // 199 peers: a per-link list would be ~40 kB per member; the status lists at most 32 links.
    assert!(w.member_bytes > 0 && w.member_bytes < 12_000, "member object of {} bytes", w.member_bytes);
    assert!(
        w.network_connected_secs.is_some(),
        "the MeshNetwork status never counted every member Connected"
    );
    assert!(w.new_node_member_secs.is_some(), "a Node added while agents write status got no member");
}
