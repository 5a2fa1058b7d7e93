//! End-to-end checks of the network-namespace test topology (`rolomesh::netns`).
//!
//! They need root (network namespaces, veths, iptables); run as another user they print why and return.
//! Traffic only goes between namespaces created here. Tests never sleep-and-hope: they wait for a condition
//! with a deadline ([`wait_until`]) and fail with a message saying what did not happen.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::{Command, Stdio};
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rolomesh::netns::{
    Host, Spec, Topology, WanInput, list_namespaces, namespace_exists, unsupported_reason, wait_until,
};

const POLL: Duration = Duration::from_millis(20);

fn can_run() -> bool {
    match unsupported_reason() {
        Some(why) => {
            eprintln!("skipping netns test: {why}");
            false
        }
        None => true,
    }
}

fn build(spec: Spec) -> Topology {
    Topology::build(spec).expect("build topology")
}

fn udp(host: &Host, port: u16) -> UdpSocket {
    let s = host
        .in_ns(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)))
        .expect("enter namespace")
        .unwrap_or_else(|e| panic!("{}: bind udp {port}: {e}", host.name));
    s.set_read_timeout(Some(POLL)).unwrap();
    s
}

fn v4(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

/// Sends `msg` from `from` to `to` (re-sending every poll) until `server` receives it; returns the source
/// address the server saw.
fn udp_source_seen(from: &UdpSocket, to: SocketAddr, server: &UdpSocket, msg: &[u8]) -> Option<SocketAddr> {
    let mut seen = None;
    let mut buf = [0u8; 256];
    wait_until(Duration::from_secs(5), Duration::ZERO, || {
        from.send_to(msg, to).expect("send");
        while let Ok((n, src)) = server.recv_from(&mut buf) {
            if &buf[..n] == msg {
                seen = Some(src);
                return true;
            }
        }
        false
    });
    seen
}

/// Process gone or a zombie (an orphan's zombie is reaped by whoever is pid 1, which may be slow here).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit(')').next().map(|rest| rest.trim_start().starts_with('Z')).unwrap_or(true),
    }
}

fn root_links() -> String {
    let out = Command::new("ip").args(["-o", "link", "show"]).output().expect("ip link");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn hosts_reach_pub_and_appear_as_their_nat() {
    if !can_run() {
        return;
    }
    let topo = build(Spec::default());
    println!("{}", topo.describe());
    let pub_ip = topo.public_ip();

    for (h, site) in [("a1", "a"), ("a2", "a"), ("b1", "b")] {
        let host = topo.host(h);
        assert!(
            wait_until(Duration::from_secs(5), POLL, || host.ping_once(pub_ip)),
            "{h} cannot ping the pub host {pub_ip}"
        );
        assert!(host.lan_ip.octets()[0] == 10, "{h} should have a private address, has {}", host.lan_ip);
        let _ = site;
    }

    // UDP: the pub server sees each site's NAT address, not 10.x
    let server = udp(topo.pub_host(), 7000);
    for (h, site) in [("a1", "a"), ("b1", "b")] {
        let client = udp(topo.host(h), 40000);
        let src = udp_source_seen(&client, v4(pub_ip, 7000), &server, format!("udp from {h}").as_bytes())
            .unwrap_or_else(|| panic!("pub never received UDP from {h}"));
        assert_eq!(src.ip(), topo.site_public_ip(site), "{h}'s UDP should come from its NAT");
        assert_eq!(src.port(), 40000, "{h}: MASQUERADE should keep a free source port");
    }
    // a2 uses the same local port towards the same server as a1: the NAT must pick another public port.
    let a2 = udp(topo.host("a2"), 40000);
    let src = udp_source_seen(&a2, v4(pub_ip, 7000), &server, b"udp from a2")
        .expect("pub never received UDP from a2");
    assert_eq!(src.ip(), topo.site_public_ip("a"));
    assert_ne!(src.port(), 40000, "a1 already holds public port 40000 towards this server");
    println!("a2 (local port 40000) appears as {src}: MASQUERADE chose another port");

    // TCP: same for a connection
    let listener =
        topo.pub_host().in_ns(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, 7001))).unwrap().unwrap();
    listener.set_nonblocking(true).unwrap();
    for (h, site) in [("a1", "a"), ("b1", "b")] {
        let stream = topo
            .host(h)
            .in_ns(|| TcpStream::connect_timeout(&v4(pub_ip, 7001), Duration::from_secs(3)))
            .unwrap()
            .unwrap_or_else(|e| panic!("{h}: TCP connect to pub failed: {e}"));
        let mut peer = None;
        assert!(
            wait_until(Duration::from_secs(3), POLL, || {
                if let Ok((_, addr)) = listener.accept() {
                    peer = Some(addr);
                }
                peer.is_some()
            }),
            "pub never accepted the TCP connection from {h}"
        );
        assert_eq!(peer.unwrap().ip(), topo.site_public_ip(site), "{h}'s TCP should come from its NAT");
        drop(stream);
    }
}

#[test]
fn unsolicited_inbound_is_dropped_by_the_nat() {
    if !can_run() {
        return;
    }
    let topo = build(Spec::default());
    let a_pub = topo.site_public_ip("a");
    let a1 = udp(topo.host("a1"), 7100);
    let b1 = udp(topo.host("b1"), 7100);
    let pubs = udp(topo.pub_host(), 7101);

    let before = topo.unsolicited_dropped("a").unwrap();
    for i in 0..20 {
        b1.send_to(format!("from b1 {i}").as_bytes(), v4(a_pub, 7100)).unwrap();
        pubs.send_to(format!("from pub {i}").as_bytes(), v4(a_pub, 7100)).unwrap();
    }
    // The NAT's drop counter proves every one of the 40 packets reached it and was dropped there.
    let mut dropped = before;
    assert!(
        wait_until(Duration::from_secs(5), POLL, || {
            dropped = topo.unsolicited_dropped("a").unwrap();
            dropped >= before + 40
        }),
        "nata dropped only {} of 40 unsolicited packets",
        dropped - before
    );
    a1.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    if let Ok((n, src)) = a1.recv_from(&mut buf) {
        panic!("a1 received an unsolicited datagram from {src}: {:?}", String::from_utf8_lossy(&buf[..n]));
    }
    a1.set_nonblocking(false).unwrap();

    // Unsolicited TCP is dropped too (silently: the connect times out rather than being refused).
    let tcp = topo
        .pub_host()
        .in_ns(|| TcpStream::connect_timeout(&v4(a_pub, 7100), Duration::from_millis(500)))
        .unwrap();
    assert!(tcp.is_err(), "an unsolicited TCP connection to site A's public address succeeded");
    assert!(!topo.pub_host().ping_once(a_pub), "nata answers pings from the WAN");

    // Control: once a1 has sent to pub, pub's replies to that public address/port get through.
    let src =
        udp_source_seen(&a1, v4(topo.public_ip(), 7101), &pubs, b"solicit").expect("pub never heard a1");
    let mut got = false;
    assert!(
        wait_until(Duration::from_secs(5), Duration::ZERO, || {
            pubs.send_to(b"reply", src).unwrap();
            while let Ok((n, _)) = a1.recv_from(&mut buf) {
                got |= &buf[..n] == b"reply";
            }
            got
        }),
        "a1 never got pub's reply to its own flow"
    );
}

// ------------------------------------------------------------------------------------------------
// Hole punching

const PUNCH_WINDOW: Duration = Duration::from_secs(2);
const TRIALS: usize = 8;

struct Side<'a> {
    sock: &'a UdpSocket,
    peer: SocketAddr,
    got: &'a AtomicBool,
    peer_got: &'a AtomicBool,
}

/// One side of a punching attempt. Both sides start at the barrier. With the TTL trick a side first sends
/// packets with TTL 2 (they leave its own NAT, opening the mapping, and expire at the core router), waits
/// 100 ms, then sends normally. Returns when both sides have heard each other or the window is over.
fn punch_side(side: Side<'_>, ttl_trick: bool, start: &Barrier) -> Duration {
    start.wait();
    let t0 = Instant::now();
    if ttl_trick {
        side.sock.set_ttl(2).unwrap();
        for _ in 0..3 {
            side.sock.send_to(b"open", side.peer).unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
        side.sock.set_ttl(64).unwrap();
    }
    let ttl_done = t0.elapsed();
    let mut buf = [0u8; 64];
    let deadline = Instant::now() + PUNCH_WINDOW;
    while Instant::now() < deadline
        && !(side.got.load(Ordering::SeqCst) && side.peer_got.load(Ordering::SeqCst))
    {
        let _ = side.sock.send_to(b"hello", side.peer);
        if let Ok((n, from)) = side.sock.recv_from(&mut buf)
            && &buf[..n] == b"hello"
            && from == side.peer
        {
            side.got.store(true, Ordering::SeqCst);
        }
    }
    ttl_done
}

/// a1 and b1 bind the same fixed port and send to each other's NAT address at that port (which is where the
/// peer will appear, since MASQUERADE keeps free ports) at the same moment. Returns (a1 heard b1, b1 heard a1).
fn punch_trial(topo: &Topology, port: u16, ttl_trick: bool) -> (bool, bool) {
    topo.flush_conntrack().expect("flush conntrack");
    let sa = udp(topo.host("a1"), port);
    let sb = udp(topo.host("b1"), port);
    let pa = v4(topo.site_public_ip("a"), port);
    let pb = v4(topo.site_public_ip("b"), port);
    let (got_a, got_b) = (AtomicBool::new(false), AtomicBool::new(false));
    let start = Barrier::new(2);
    let (ta, tb) = std::thread::scope(|s| {
        let a = s.spawn(|| {
            punch_side(Side { sock: &sa, peer: pb, got: &got_a, peer_got: &got_b }, ttl_trick, &start)
        });
        let b = s.spawn(|| {
            punch_side(Side { sock: &sb, peer: pa, got: &got_b, peer_got: &got_a }, ttl_trick, &start)
        });
        (a.join().unwrap(), b.join().unwrap())
    });
    let r = (got_a.load(Ordering::SeqCst), got_b.load(Ordering::SeqCst));
    if !(r.0 && r.1) {
        println!(
            "  failed trial (ttl phase a1 {ta:?}, b1 {tb:?}); conntrack nata:\n{}  conntrack natb:\n{}",
            topo.conntrack_dump("nata").unwrap_or_default(),
            topo.conntrack_dump("natb").unwrap_or_default()
        );
    }
    r
}

fn punch_series(topo: &Topology, ttl_trick: bool) -> usize {
    (0..TRIALS).filter(|_| matches!(punch_trial(topo, 45000, ttl_trick), (true, true))).count()
}

#[test]
fn hole_punching_race_and_ttl_fix() {
    if !can_run() {
        return;
    }
    let mut report = Vec::new();
    for wan_input in [WanInput::Drop, WanInput::Accept] {
        let topo = build(Spec::default().wan_input(wan_input));
        let plain = punch_series(&topo, false);
        let ttl = punch_series(&topo, true);
        report.push(format!(
            "NAT WAN input {wan_input:?}: simultaneous send {plain}/{TRIALS} succeeded, TTL-2 first {ttl}/{TRIALS} succeeded"
        ));
        println!("{}", report.last().unwrap());
        assert_eq!(ttl, TRIALS, "punching with TTL-2 opening packets must always work ({wan_input:?})");
    }
    println!("hole punching summary:\n  {}", report.join("\n  "));
}

// ------------------------------------------------------------------------------------------------
// Loss injection

#[test]
fn loss_injection_drops_forwarded_packets() {
    if !can_run() {
        return;
    }
    let topo = build(Spec::default());
    let pub_ip = topo.public_ip();
    let server = udp(topo.pub_host(), 7200);
    server.set_nonblocking(true).unwrap();
    let client = udp(topo.host("a1"), 7200);
    // make sure the path works (ARP etc.) before counting
    udp_source_seen(&client, v4(pub_ip, 7200), &server, b"warmup").expect("no path a1 -> pub");
    let mut buf = [0u8; 64];

    // n packets through nata with the given loss; returns how many nata's loss rule dropped, once every
    // packet is accounted for (received by pub or counted as dropped).
    let mut run = |percent: f64, n: u64| -> u64 {
        topo.set_loss("nata", percent).unwrap();
        let dropped_before = topo.loss_dropped("nata").unwrap();
        for i in 0..n {
            client.send_to(format!("p{i}").as_bytes(), v4(pub_ip, 7200)).unwrap();
        }
        let (mut received, mut dropped) = (0u64, 0u64);
        assert!(
            wait_until(Duration::from_secs(5), POLL, || {
                while let Ok((len, _)) = server.recv_from(&mut buf) {
                    received += u64::from(buf[..len].starts_with(b"p"));
                }
                dropped = topo.loss_dropped("nata").unwrap() - dropped_before;
                received + dropped == n
            }),
            "{percent}% loss: {received} received + {dropped} dropped != {n} sent"
        );
        dropped
    };
    assert_eq!(run(100.0, 50), 50);
    let half = run(50.0, 400);
    println!("50% loss dropped {half} of 400");
    assert!((120..=280).contains(&half), "50% loss dropped {half} of 400");
    assert_eq!(run(0.0, 50), 0);
    topo.set_loss("core", 100.0).unwrap();
    assert!(!topo.host("b1").ping_once(pub_ip), "100% loss on core still lets pings through");
    topo.set_loss("core", 0.0).unwrap();
    assert!(wait_until(Duration::from_secs(5), POLL, || topo.host("b1").ping_once(pub_ip)));
    assert!(topo.set_loss("pub", 10.0).is_err(), "pub is not a router");
    assert!(topo.set_loss("nata", 101.0).is_err());
}

// ------------------------------------------------------------------------------------------------
// Processes and cleanup

#[test]
fn spawned_processes_are_stopped() {
    if !can_run() {
        return;
    }
    let topo = build(Spec::default());
    let a1 = topo.host("a1");

    // output is collected; dropping the handle stops the process
    let child = a1
        .spawn(
            "sh",
            &["-c", "echo hello $GREETING; ip -o -4 addr show dev eth0; exec sleep 300"],
            &[("GREETING", "world")],
        )
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(5), POLL, || child.stdout().contains("10.1.0.11")),
        "no output from child: {:?} / {:?}",
        child.stdout(),
        child.stderr()
    );
    assert!(child.stdout().contains("hello world"));
    assert!(child.is_running());
    let pid = child.pid();
    drop(child);
    assert!(process_gone(pid), "dropping NsChild left pid {pid} running");

    // a process ignoring SIGTERM is SIGKILLed after the grace period, together with its process group
    let stubborn = a1.spawn("sh", &["-c", "trap '' TERM; echo ready; sleep 300 & wait"], &[]).unwrap();
    assert!(wait_until(Duration::from_secs(5), POLL, || stubborn.stdout().contains("ready")));
    let t = Instant::now();
    let status = stubborn.stop().expect("exit status");
    println!("stubborn child: {status} after {:?}", t.elapsed());
    assert!(t.elapsed() >= Duration::from_millis(1900), "SIGTERM should have been ignored");
    assert!(t.elapsed() < Duration::from_secs(5));

    // a child exiting by itself
    let quick = a1.spawn("true", &[], &[]).unwrap();
    assert!(quick.wait_timeout(Duration::from_secs(5)).unwrap().expect("true did not exit").success());

    // leaked handle and an escaped daemon (own session, so not in any spawned group): the topology
    // kills both on drop
    let leaked = a1.spawn("sleep", &["300"], &[]).unwrap();
    let leaked_pid = leaked.pid();
    std::mem::forget(leaked);
    let out = a1.run("sh", &["-c", "setsid sleep 300 </dev/null >/dev/null 2>&1 & echo $!"]).unwrap();
    let daemon_pid: u32 = out.trim().parse().unwrap();
    assert!(!process_gone(daemon_pid));
    drop(topo);
    assert!(
        wait_until(Duration::from_secs(5), POLL, || process_gone(leaked_pid) && process_gone(daemon_pid)),
        "topology drop left processes running: leaked {leaked_pid}, daemon {daemon_pid}"
    );
}

#[test]
fn panic_inside_a_test_still_cleans_up() {
    if !can_run() {
        return;
    }
    let mut namespaces = Vec::new();
    let mut pid = 0;
    let result = catch_unwind(AssertUnwindSafe(|| {
        let topo = build(Spec::default());
        namespaces = topo.namespaces();
        let child = topo.host("b1").spawn("sleep", &["300"], &[]).unwrap();
        pid = child.pid();
        std::mem::forget(child); // only the topology's drop can stop it now
        assert!(namespaces.iter().all(|ns| namespace_exists(ns)));
        panic!("deliberate panic with a live topology");
    }));
    assert!(result.is_err(), "the closure should have panicked");
    assert_eq!(namespaces.len(), 7, "core, pub, nata, a1, a2, natb, b1");
    let left: Vec<&String> = namespaces.iter().filter(|ns| namespace_exists(ns)).collect();
    assert!(left.is_empty(), "namespaces left after a panic: {left:?}");
    assert!(wait_until(Duration::from_secs(5), POLL, || process_gone(pid)), "child {pid} survived the panic");
}

#[test]
fn build_and_drop_twice_leaves_nothing() {
    if !can_run() {
        return;
    }
    let mut prefixes = Vec::new();
    for _ in 0..2 {
        let topo = build(Spec::default());
        let namespaces = topo.namespaces();
        assert!(namespaces.iter().all(|ns| namespace_exists(ns) && ns.starts_with(topo.prefix())));
        assert!(wait_until(Duration::from_secs(5), POLL, || topo.host("a1").ping_once(topo.public_ip())));
        prefixes.push(topo.prefix().to_string());
        drop(topo);
        let left: Vec<String> = list_namespaces()
            .into_iter()
            .filter(|ns| ns.starts_with(&format!("{}-", prefixes.last().unwrap())))
            .collect();
        assert!(left.is_empty(), "namespaces left after drop: {left:?}");
    }
    assert_ne!(prefixes[0], prefixes[1], "each topology needs its own prefix");
    // veths were created directly inside the namespaces: nothing of ours in the root namespace
    let links = root_links();
    for name in ["to-pub", "to-a:", "to-b:", "h-a1", "h-b1"] {
        assert!(!links.contains(&format!(" {name}")), "{name} leaked into the root namespace:\n{links}");
    }
    // explicit close reports success
    build(Spec::default().site("c", &["c1"])).close().unwrap();
}

#[test]
fn stale_namespaces_of_dead_processes_are_removed() {
    if !can_run() {
        return;
    }
    // a pid that is surely dead: a child we have reaped
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let me = std::process::id();
    // a family of our own, so a concurrent run of this test cannot remove our fake stale namespaces first
    let family = &format!("rmst{me}");
    let stale = [format!("{family}-{dead}-0-core"), format!("{family}-{dead}-0-a1")];
    let alive = format!("{family}-{me}-999-core");
    for ns in stale.iter().chain([&alive]) {
        let st = Command::new("ip").args(["netns", "add", ns]).status().unwrap();
        assert!(st.success(), "ip netns add {ns}");
    }
    // a process left running inside a stale namespace (wait until it is in there: `ready` is printed after
    // `ip netns exec` has switched namespace)
    let orphan = Command::new("ip")
        .args(["netns", "exec", &stale[1], "sh", "-c", "echo ready; exec sleep 300"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // on every failure path too: kill the process and remove the namespaces
    struct Guard(std::process::Child, Vec<String>);
    impl Drop for Guard {
        fn drop(&mut self) {
            if let Ok(None) = self.0.try_wait() {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
            for ns in &self.1 {
                if namespace_exists(ns) {
                    let _ = Command::new("ip").args(["netns", "del", ns]).status();
                }
            }
        }
    }
    let mut guard = Guard(orphan, vec![stale[0].clone(), stale[1].clone(), alive.clone()]);
    let mut line = String::new();
    BufReader::new(guard.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");

    let removed = Topology::cleanup_stale(family).unwrap();
    assert!(namespace_exists(&alive), "namespace of a live process was removed");
    for ns in &stale {
        assert!(removed.contains(ns), "{ns} not reported as removed: {removed:?}");
        assert!(!namespace_exists(ns), "{ns} still exists");
    }
    assert!(
        wait_until(Duration::from_secs(5), POLL, || guard.0.try_wait().unwrap().is_some()),
        "process inside a stale namespace was not killed"
    );
}
