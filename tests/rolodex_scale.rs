//! The rolodex benchmark's smoke run (performance issue: "Rolodex: 10,000 simulated members"), CI-sized: a
//! real rolodex process and 150, then 300 simulated members over UDP on 127.0.0.1 (no root needed). Asserts
//! what must hold at any size; `bench/rolodex-scale.sh` measures.

use std::path::PathBuf;

use rolomesh::bench_rolodex::{Args, measure_all};

#[test]
fn everyone_registers_learns_new_pairs_and_steady_traffic_is_one_ack_per_heartbeat() {
    let pairs = 3;
    let args = Args {
        members: vec![150, 300],
        intervals: 2,
        heartbeat: 1.0,
        pairs,
        ramp: None,
        timeout: 60.0,
        json: None,
        rolodex_bin: Some(PathBuf::from(env!("CARGO_BIN_EXE_rolomesh"))),
    };
    let rows = measure_all(&args).expect("benchmark ran");
    for r in &rows {
        let n = r.members;
        assert_eq!((r.registered, r.complete), (n, n), "{n}: every member registered and knows everyone");
        assert_eq!(r.anomalies, 0, "{n}: bad frames or entries");
        assert_eq!(r.intro_ms.len(), pairs, "{n}: each pair learnt of each other");
        assert_eq!(r.pairs_known_by_all(), pairs, "{n}: every member learnt of every new pair");
        assert_eq!(r.steady_listing_pages, 0, "{n}: member lists resent in steady state");
        let per_member = r.frames_per_member();
        assert!((0.8..=1.2).contains(&per_member), "{n}: {per_member:.2} datagrams per member-heartbeat");
    }
    // Linear: twice the members, about twice the bytes (the per-member cost stays put).
    let (a, b) = (rows[0].bytes_per_member(), rows[1].bytes_per_member());
    assert!(b <= a * 1.25 && b >= a * 0.8, "bytes per member per interval: {a:.1} at 150, {b:.1} at 300");
}
