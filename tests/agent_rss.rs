//! Agent memory with 100 peers (performance issue: "agent RSS with 100 peers: at most 50 MB"). One real agent
//! with its TUN device in a network namespace, meshed with 100 simulated peers (`rolomesh::peersim`), using
//! the same binary as the other end-to-end tests. Needs root; the lab is torn down on drop.

use std::path::Path;

use rolomesh::bench_rss::{LIMIT_KIB, measure};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn agent_with_100_linked_peers_stays_within_50_mib() {
    if !is_root() {
        eprintln!("skipped: needs root (namespaces, TUN)");
        return;
    }
    let r = measure(Path::new(env!("CARGO_BIN_EXE_rolomesh")), 100).expect("all 100 links up");
    eprintln!("{}", r.summary());
    // Both directions of the data path work with 100 links up (the simulated peers answer pings).
    assert!(
        r.pings_received * 10 >= r.pings_sent * 9,
        "only {}/{} overlay pings answered",
        r.pings_received,
        r.pings_sent
    );
    assert!(
        r.peak_kib() <= LIMIT_KIB,
        "agent RSS peaked at {} KiB, over {LIMIT_KIB} KiB\n{}",
        r.peak_kib(),
        r.summary()
    );
}
