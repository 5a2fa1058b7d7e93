use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crds::{LinkState, MeshMember, MeshMemberSpec, MeshNetwork, MeshNetworkSpec, MeshNetworkStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::bootstrap::{Step, values};
use super::snapshot::{PeerSnapshot, Snapshot};
use super::status::{self, LastWrite, Reason, decide, jittered};
use crate::peer;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn ts(secs: i64) -> Timestamp {
    Timestamp::from_second(secs).unwrap_or_else(|e| panic!("{e}"))
}

fn peer(name: &str, state: peer::LinkState) -> PeerSnapshot {
    PeerSnapshot {
        name: name.into(),
        state,
        endpoint: Some(addr("198.51.100.7:51820")),
        rtt: Some(Duration::from_micros(1234)),
        last_handshake_us: 1_700_000_000_250_000,
        rx_bytes: 1000,
        tx_bytes: 2000,
    }
}

/// Registered with one of two rolodexes; one peer up, one punching, one handshaking.
fn snapshot() -> Snapshot {
    Snapshot {
        reflexive: Some(addr("203.0.113.5:40000")),
        rolodexes: vec![(addr("192.0.2.1:6264"), true), (addr("192.0.2.2:6264"), false)],
        peers: vec![
            peer("a", peer::LinkState::Up),
            PeerSnapshot {
                endpoint: None,
                rtt: None,
                last_handshake_us: 0,
                ..peer("b", peer::LinkState::Punching)
            },
            peer("c", peer::LinkState::Handshaking),
        ],
    }
}

fn cond<'a>(s: &'a crds::MeshMemberStatus, t: &str) -> &'a crds::Condition {
    s.conditions.iter().find(|c| c.type_ == t).unwrap_or_else(|| panic!("no {t} condition"))
}

#[test]
fn status_from_a_snapshot() {
    let now = ts(1_700_000_100);
    let snap = snapshot();
    let s = status::build(&snap, status::conditions(&snap, &[], now, Some(3)), now);
    assert_eq!(s.public_endpoint.as_deref(), Some("203.0.113.5:40000"));
    assert_eq!(s.last_heartbeat, Some(Time(now)));
    let states: Vec<_> = s.links.iter().map(|l| (l.peer.as_str(), l.state)).collect();
    assert_eq!(
        states,
        [("a", LinkState::Connected), ("b", LinkState::Punching), ("c", LinkState::Handshaking)]
    );
    let a = &s.links[0];
    assert_eq!(a.endpoint.as_deref(), Some("198.51.100.7:51820"));
    assert_eq!(a.rtt_millis, Some(1.23));
    assert_eq!(a.last_handshake, Some(Time(ts(1_700_000_000))), "whole seconds, as the API keeps them");
    assert_eq!((a.rx_bytes, a.tx_bytes, a.via_relay), (1000, 2000, false));
    let b = &s.links[1];
    assert_eq!((b.endpoint.as_deref(), b.rtt_millis, b.last_handshake.as_ref()), (None, None, None));

    let ready = cond(&s, status::READY);
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("True", "Registered"));
    assert_eq!(ready.message, "registered with 1 of 2 rolodexes");
    assert_eq!((ready.last_transition_time.clone(), ready.observed_generation), (Time(now), Some(3)));
    let conn = cond(&s, status::CONNECTED);
    assert_eq!((conn.status.as_str(), conn.reason.as_str()), ("False", "PeersNotConnected"));
    assert_eq!(conn.message, "1 of 3 peer links up; not up: b (punching), c (handshaking)");

    // The API shape: camelCase, enum values as in the CRD.
    let j = serde_json::to_value(&s).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(j["links"][0]["state"], "Connected");
    assert_eq!(j["links"][0]["rttMillis"], 1.23);
    assert_eq!(j["publicEndpoint"], "203.0.113.5:40000");
    assert_eq!(j["lastHeartbeat"], "2023-11-14T22:15:00Z");
    assert_eq!(j["conditions"][1]["lastTransitionTime"], "2023-11-14T22:15:00Z");
}

#[test]
fn a_big_mesh_lists_a_bounded_number_of_links_the_broken_ones_first() {
    let now = ts(1_000);
    let mut snap = snapshot();
    snap.peers = (0..999).map(|i| peer(&format!("n{i:03}"), peer::LinkState::Up)).collect();
    for i in [5, 500, 998] {
        snap.peers[i].state = peer::LinkState::Down;
    }
    let s = status::build(&snap, status::conditions(&snap, &[], now, None), now);
    assert_eq!((s.peers, s.connected_peers), (Some(999), Some(996)));
    assert_eq!(s.links.len(), crds::MAX_STATUS_LINKS);
    let names: Vec<_> = s.links.iter().map(|l| l.peer.as_str()).collect();
    for broken in ["n005", "n500", "n998"] {
        assert!(names.contains(&broken), "{broken} missing from {names:?}");
    }
    assert!(names.windows(2).all(|w| w[0] < w[1]), "not sorted: {names:?}");
    let json = serde_json::to_vec(&s).unwrap_or_else(|e| panic!("{e}"));
    assert!(json.len() < 10_000, "{} bytes for 999 peers", json.len());

    // A small mesh lists every link, in name order.
    let small = snapshot();
    let s = status::build(&small, status::conditions(&small, &[], now, None), now);
    assert_eq!((s.links.len(), s.peers, s.connected_peers), (3, Some(3), Some(1)));
}

#[test]
fn connected_and_ready_edge_cases() {
    let now = ts(1_000);
    let lonely = Snapshot { rolodexes: vec![(addr("192.0.2.1:6264"), true)], ..Snapshot::default() };
    let c = status::conditions(&lonely, &[], now, None);
    assert_eq!((c[1].status.as_str(), c[1].reason.as_str()), ("True", "NoPeers"));

    let mut all_up = snapshot();
    for p in &mut all_up.peers {
        p.state = peer::LinkState::Up;
    }
    let c = status::conditions(&all_up, &[], now, None);
    assert_eq!((c[1].status.as_str(), c[1].reason.as_str()), ("True", "AllPeersConnected"));
    assert_eq!(c[1].message, "3 of 3 peer links up");

    let unregistered = Snapshot { rolodexes: vec![(addr("192.0.2.1:6264"), false)], ..snapshot() };
    let c = status::conditions(&unregistered, &[], now, None);
    assert_eq!((c[0].status.as_str(), c[0].reason.as_str()), ("False", "NotRegistered"));

    // Many peers down: the message names a few and counts the rest.
    let many = Snapshot {
        peers: (0..9).map(|i| peer(&format!("p{i}"), peer::LinkState::Down)).collect(),
        ..snapshot()
    };
    let c = status::conditions(&many, &[], now, None);
    assert!(c[1].message.ends_with("p4 (down), 4 more"), "{}", c[1].message);
}

#[test]
fn transition_time_holds_while_status_holds() {
    let snap = snapshot();
    let first = status::conditions(&snap, &[], ts(100), None);
    // Same statuses later, even with another message: times kept.
    let mut later_snap = snap.clone();
    later_snap.peers.pop();
    let later = status::conditions(&later_snap, &first, ts(200), None);
    assert_eq!(later[1].message, "1 of 2 peer links up; not up: b (punching)");
    for (a, b) in first.iter().zip(&later) {
        assert_eq!(a.last_transition_time, b.last_transition_time, "{}", a.type_);
    }
    // Connected flips: its time moves, Ready's does not.
    let mut up = snap.clone();
    for p in &mut up.peers {
        p.state = peer::LinkState::Up;
    }
    let flipped = status::conditions(&up, &later, ts(300), None);
    assert_eq!(flipped[0].last_transition_time, Time(ts(100)));
    assert_eq!(flipped[1].last_transition_time, Time(ts(300)));
    // Times read back from the API (whole seconds) are kept as they are.
    let again = status::conditions(&up, &flipped, ts(400), None);
    assert_eq!(again, flipped);
}

#[test]
fn significant_content_ignores_counters_rtt_and_heartbeat() {
    let snap = snapshot();
    let c = status::conditions(&snap, &[], ts(100), None);
    let base = status::significant(&status::build(&snap, c.clone(), ts(100)));
    let mut busy = snap.clone();
    for p in &mut busy.peers {
        p.rx_bytes *= 7;
        p.tx_bytes += 1;
        p.rtt = Some(Duration::from_millis(9));
    }
    assert_eq!(status::significant(&status::build(&busy, c.clone(), ts(160))), base);
    // A state, endpoint or address change is significant.
    let mut moved = snap.clone();
    moved.peers[0].endpoint = Some(addr("198.51.100.8:1"));
    assert_ne!(status::significant(&status::build(&moved, c.clone(), ts(100))), base);
    let mut rebound = snap.clone();
    rebound.reflexive = Some(addr("203.0.113.5:40001"));
    assert_ne!(status::significant(&status::build(&rebound, c.clone(), ts(100))), base);
    let mut down = snap;
    down.peers[0].state = peer::LinkState::Down;
    assert_ne!(status::significant(&status::build(&down, c, ts(100))), base);
}

#[test]
fn decide_rate_limits_and_heartbeats() {
    let t0 = Instant::now();
    let s = Duration::from_secs;
    let gap = s(10);
    let hb = status::HEARTBEAT;
    let wrote = |at, c: u32| LastWrite { at, content: Some(c) };
    assert_eq!(decide(None, &1, t0, gap, hb), Some(Reason::First));
    // Within the gap: nothing, changed or not.
    assert_eq!(decide(Some(&wrote(t0, 1)), &2, t0 + s(9), gap, hb), None);
    assert_eq!(decide(Some(&wrote(t0, 1)), &1, t0 + s(9), gap, hb), None);
    // After it: a change is written, an unchanged status is not...
    assert_eq!(decide(Some(&wrote(t0, 1)), &2, t0 + s(10), gap, hb), Some(Reason::Changed));
    assert_eq!(decide(Some(&wrote(t0, 1)), &1, t0 + s(59), gap, hb), None);
    // ...until the heartbeat is due.
    assert_eq!(decide(Some(&wrote(t0, 1)), &1, t0 + s(60), gap, hb), Some(Reason::Heartbeat));
    // A failed attempt is retried after the gap, not before, even if the content is the same.
    let failed = LastWrite { at: t0, content: None };
    assert_eq!(decide(Some(&failed), &1, t0 + s(5), gap, hb), None);
    assert_eq!(decide(Some(&failed), &1, t0 + s(10), gap, hb), Some(Reason::Retry));
    // The gap wins over the heartbeat when it is the longer one.
    assert_eq!(decide(Some(&wrote(t0, 1)), &1, t0 + s(90), s(120), hb), None);
    assert_eq!(decide(Some(&wrote(t0, 1)), &1, t0 + s(120), s(120), hb), Some(Reason::Heartbeat));
    // A clock that seems to go backwards does not panic and counts as no time passed.
    assert_eq!(decide(Some(&wrote(t0 + s(5), 1)), &2, t0, gap, hb), None);
}

#[test]
fn big_meshes_write_less_often() {
    let s = Duration::from_secs;
    assert_eq!(status::interval_for(s(10), 3), s(10));
    assert_eq!(status::interval_for(s(10), 999), Duration::from_millis(29_970));
    assert_eq!(status::interval_for(s(60), 999), s(60), "a longer configured interval wins");
    // The whole mesh's rate (members / least gap) stays under 1 / (0.8 * 30 ms) as it grows.
    for members in [10usize, 100, 1000, 10_000] {
        let gap = status::jittered(status::interval_for(s(10), members - 1), 0.0);
        assert!(members as f64 / gap.as_secs_f64() < 42.0, "{members} members");
    }
}

#[test]
fn failed_writes_back_off_up_to_five_minutes() {
    let s = Duration::from_secs;
    let steps: Vec<u64> = (0..7).map(|n| status::backoff(s(10), n).as_secs()).collect();
    assert_eq!(steps, [10, 20, 40, 80, 160, 300, 300]);
    assert_eq!(status::backoff(s(10), u32::MAX), status::MAX_BACKOFF);
    assert_eq!(status::backoff(s(3600), 3), s(3600), "never below the interval");
}

#[test]
fn jitter_stays_within_twenty_percent() {
    let i = Duration::from_secs(10);
    assert_eq!(jittered(i, 0.0), Duration::from_secs(8));
    assert_eq!(jittered(i, 0.5), i);
    assert!(jittered(i, 0.999_999) < Duration::from_secs(12));
    assert_eq!(jittered(i, 7.0), Duration::from_secs(12), "clamped");
}

/// An hour of one-second snapshots through `decide`, as the writer does: a busy but stable link writes only
/// heartbeats; a link flapping every second still writes at most once per gap.
#[test]
fn write_rate_over_an_hour() {
    let t0 = Instant::now();
    let run = |content_at: &dyn Fn(u64) -> u64| {
        let mut last: Option<LastWrite<u64>> = None;
        let mut writes = Vec::new();
        let mut unit = 0.0_f64;
        let mut gap = jittered(Duration::from_secs(10), unit);
        for sec in 0..3600u64 {
            let now = t0 + Duration::from_secs(sec);
            let c = content_at(sec);
            if decide(last.as_ref(), &c, now, gap, status::HEARTBEAT).is_some() {
                writes.push(sec);
                last = Some(LastWrite { at: now, content: Some(c) });
                unit = (unit + 0.37) % 1.0;
                gap = jittered(Duration::from_secs(10), unit);
            }
        }
        writes
    };
    let steady = run(&|_| 7);
    assert_eq!(steady.len(), 60, "one first write, then a heartbeat a minute: {steady:?}");
    let flapping = run(&|sec| sec % 2);
    assert!(flapping.windows(2).all(|w| w[1] - w[0] >= 8), "{flapping:?}");
    assert!((300..=450).contains(&flapping.len()), "{}", flapping.len());
}

fn network(spec: serde_json::Value, status: Option<MeshNetworkStatus>) -> MeshNetwork {
    let spec: MeshNetworkSpec = serde_json::from_value(spec).unwrap_or_else(|e| panic!("{e}"));
    let mut n = MeshNetwork::new("mesh", spec);
    n.status = status;
    n
}

fn member(addresses: &[&str], routes: &[&str]) -> MeshMember {
    MeshMember::new(
        "mesh-node-1",
        MeshMemberSpec {
            network_ref: crds::NetworkRef { name: "mesh".into() },
            node_name: Some("node-1".into()),
            overlay_addresses: addresses.iter().map(|s| s.to_string()).collect(),
            routes: routes.iter().map(|s| s.to_string()).collect(),
        },
    )
}

fn wait_reason(r: Result<(crate::config::KubeValues, Vec<crate::routes::IpNet>), Step>) -> String {
    match r {
        Err(Step::Wait(w)) => w,
        Err(Step::Fatal(e)) => panic!("fatal: {e:#}"),
        Ok(v) => panic!("accepted: {v:?}"),
    }
}

fn fatal(r: Result<(crate::config::KubeValues, Vec<crate::routes::IpNet>), Step>) -> String {
    match r {
        Err(Step::Fatal(e)) => format!("{e:#}"),
        Err(Step::Wait(w)) => panic!("waits: {w}"),
        Ok(v) => panic!("accepted: {v:?}"),
    }
}

#[test]
fn values_from_the_objects() {
    let external = serde_json::json!({
        "overlay": {"cidrs": ["100.64.0.0/10", "fd52::/64"]},
        "rolodex": {"external": {"endpoints": ["rolodex.example:6264", "[fd00::1]:7000"]}},
        "agent": {"keepalive": "15s", "mtu": 1380, "listenPort": 41641}
    });
    let n = network(external.clone(), None);
    let m = member(&["100.64.3.7", "fd52::7"], &["10.244.1.5/24"]);
    let (v, routes) = values(&n, &m, "node-1").unwrap_or_else(|_| panic!("rejected"));
    assert_eq!(v.network, "mesh", "the object's name when spec and status say nothing");
    assert_eq!(v.addresses, ["100.64.3.7/10", "fd52::7/64"]);
    assert_eq!(v.rolodex, ["rolodex.example:6264", "[fd00::1]:7000"]);
    assert_eq!(
        (v.keepalive.as_deref(), v.mtu.as_deref(), v.listen_port.as_deref()),
        (Some("15s"), Some("1380"), Some("41641"))
    );
    assert_eq!(routes.iter().map(ToString::to_string).collect::<Vec<_>>(), ["10.244.1.0/24"]);

    // Network name: status, then spec, then the object name.
    let mut with_name = external.clone();
    with_name["networkName"] = "prod".into();
    assert_eq!(
        values(&network(with_name.clone(), None), &m, "node-1").ok().map(|v| v.0.network),
        Some("prod".into())
    );
    let st = MeshNetworkStatus { network_name: Some("shared".into()), ..Default::default() };
    assert_eq!(
        values(&network(with_name, Some(st)), &m, "node-1").ok().map(|v| v.0.network),
        Some("shared".into())
    );

    // Managed rolodex: the endpoint comes from the status, and is waited for.
    let managed = serde_json::json!({"overlay": {"cidrs": ["100.64.0.0/10"]}, "rolodex": {"managed": {}}});
    let w = wait_reason(values(&network(managed.clone(), None), &member(&["100.64.3.7"], &[]), "node-1"));
    assert!(w.contains("no rolodex endpoint yet"), "{w}");
    let st = MeshNetworkStatus { rolodex_endpoint: Some("203.0.113.9:6264".into()), ..Default::default() };
    let (v, _) = values(&network(managed, Some(st)), &member(&["100.64.3.7"], &[]), "node-1")
        .unwrap_or_else(|_| panic!("rejected"));
    assert_eq!(v.rolodex, ["203.0.113.9:6264"]);
    assert_eq!((v.keepalive.as_deref(), v.mtu, v.listen_port.as_deref()), (Some("25s"), None, Some("51820")));

    // No address yet: wait for the operator.
    let w = wait_reason(values(&n, &member(&[], &[]), "node-1"));
    assert!(w.contains("mesh-node-1 has no overlayAddresses yet"), "{w}");

    // Inconsistent objects are fatal, with the reason.
    assert!(
        fatal(values(&n, &member(&["10.1.2.3"], &[]), "node-1")).contains("inside none of the overlay CIDRs")
    );
    assert!(fatal(values(&n, &m, "node-2")).contains("is for node \"node-1\", but this is node \"node-2\""));
    let mut other = m.clone();
    other.spec.network_ref.name = "other".into();
    assert!(fatal(values(&n, &other, "node-1")).contains("belongs to MeshNetwork \"other\""));
}
