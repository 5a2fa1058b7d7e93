//! End-to-end: real agents and a real rolodex in network namespaces, two NATed sites and a routed core.
//! Needs root; every test builds its own topology and tears it down on drop, also when it fails.

use std::net::UdpSocket;
use std::path::Path;
use std::time::{Duration, Instant};

use rolomesh::lab::Lab;
use rolomesh::netns::{Spec, WanInput, wait_until};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: end-to-end tests need root (namespaces, TUN, iptables)");
            return;
        }
    };
}

fn lab(spec: Spec) -> Lab {
    Lab::new(Path::new(env!("CARGO_BIN_EXE_rolomesh")), spec).expect("building topology")
}

/// Standard lab with everything started and the full mesh up.
fn running(spec: Spec) -> Lab {
    let mut l = lab(spec);
    l.start_all().expect("starting processes");
    assert!(l.wait_full_mesh(Duration::from_secs(20)), "mesh did not come up\n{}", l.logs());
    l
}

fn hosts(l: &Lab) -> Vec<String> {
    l.members.iter().map(|m| m.host.clone()).collect()
}

#[test]
fn every_pair_pings_both_ways_and_links_are_direct() {
    require_root!();
    // Accept on the NAT's WAN input is the race-prone conntrack setup: punching must still work.
    let l = running(Spec::default().wan_input(WanInput::Accept));
    let hs = hosts(&l);
    for a in &hs {
        for b in hs.iter().filter(|b| *b != a) {
            assert!(l.overlay_ping(a, b).unwrap(), "{a} -> {b} overlay ping failed\n{}", l.logs());
        }
    }
    // The IPv6 overlay works across the same links.
    for (a, b) in [("a1", "b1"), ("b1", "a2"), ("a2", "a1")] {
        assert!(l.overlay_ping6(a, b).unwrap(), "{a} -> {b} IPv6 overlay ping failed\n{}", l.logs());
    }
    // Across sites the endpoint is the other site's NAT (direct), never the rolodex host.
    let rolodex_ip = l.topo.public_ip().to_string();
    for (a, b, site) in [("a1", "b1", "b"), ("b1", "a1", "a"), ("a2", "b1", "b")] {
        let link = l.link(a, b).unwrap();
        let ep = link["endpoint"].as_str().unwrap().to_string();
        assert!(ep.starts_with(&format!("{}:", l.topo.site_public_ip(site))), "{a}->{b} via {ep}");
        assert!(!ep.starts_with(&rolodex_ip), "{a}->{b} goes through the rolodex host");
        assert_eq!(link["via_relay"], false);
    }
    // Same-site peers use the LAN path.
    assert!(l.link("a1", "a2").unwrap()["endpoint"].as_str().unwrap().starts_with("10.1.0.12:"));
}

#[test]
fn a_large_tcp_transfer_arrives_intact() {
    require_root!();
    let l = running(Spec::default());
    let dir = &l.dir;
    let src = dir.join("blob");
    let dst = dir.join("blob.out");
    // 128 MiB of pseudo-random data with a known checksum.
    let mk = format!("head -c 134217728 /dev/urandom > {}", src.display());
    assert!(std::process::Command::new("sh").args(["-c", &mk]).status().unwrap().success());
    let sum = |p: &Path| {
        let o = std::process::Command::new("sha256sum").arg(p).output().unwrap();
        String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap_or("").to_string()
    };
    let b1_overlay = l.member("b1").unwrap().overlay.to_string();
    let recv_script = format!(
        "import socket\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         s.bind(('{b1_overlay}',5001));s.listen(1);c,_=s.accept()\nf=open('{}','wb')\n\
         while True:\n  d=c.recv(1<<20)\n  if not d: break\n  f.write(d)\nf.close()\n",
        dst.display()
    );
    let receiver = l.host("b1").spawn("python3", &["-c", &recv_script], &[]).unwrap();
    let send_script = format!(
        "import socket,time\nfor i in range(100):\n  try:\n    s=socket.create_connection(('{b1_overlay}',5001));break\n  \
         except OSError: time.sleep(0.1)\nf=open('{}','rb')\nwhile True:\n  d=f.read(1<<20)\n  if not d: break\n  \
         s.sendall(d)\ns.close()\n",
        src.display()
    );
    let start = Instant::now();
    let out = l.host("a1").exec("python3", &["-c", &send_script]).unwrap();
    assert!(out.status.success(), "sender failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(receiver.wait_timeout(Duration::from_secs(120)).unwrap().is_some(), "receiver did not finish");
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "128 MiB a1 -> b1 over the overlay in {secs:.2} s ({:.0} Mbit/s)",
        134217728.0 * 8.0 / secs / 1e6
    );
    assert_eq!(sum(&dst), sum(&src), "checksum mismatch");
}

#[test]
fn a_restarted_agent_is_reachable_again_within_10_s() {
    require_root!();
    let mut l = running(Spec::default());
    l.stop_agent("b1");
    let tun = l.host("b1").exec("ip", &["link", "show", "rm0"]).unwrap();
    assert!(!tun.status.success(), "the TUN device outlived the stopped agent");
    l.start_agent("b1").unwrap();
    let t = Instant::now();
    let back = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        l.overlay_ping("a1", "b1").unwrap_or(false) && l.overlay_ping("b1", "a2").unwrap_or(false)
    });
    assert!(back, "b1 not reachable within 10 s of restart\n{}", l.logs());
    eprintln!("restarted agent reachable after {:?}", t.elapsed());
}

#[test]
fn rolodex_restart_keeps_links_and_members_reregister() {
    require_root!();
    let mut l = running(Spec::default());
    let before = l.link("a1", "b1").unwrap()["handshakes"].as_u64().unwrap();
    l.stop_rolodex();
    // Links keep carrying traffic with the rolodex down.
    assert!(l.overlay_ping("a1", "b1").unwrap(), "link broke when the rolodex stopped");
    l.start_rolodex().unwrap();
    let rereg = wait_until(Duration::from_secs(15), Duration::from_millis(200), || {
        let metrics = l.host("pub").run("python3", &["-c", METRICS_GET]).unwrap_or_default();
        metrics.lines().any(|x| x.starts_with("rolomesh_rolodex_members{network=\"lab\"} 3"))
    });
    assert!(rereg, "members did not re-register\n{}", l.logs());
    assert!(l.overlay_ping("a1", "b1").unwrap() && l.overlay_ping("b1", "a2").unwrap());
    let after = l.link("a1", "b1").unwrap()["handshakes"].as_u64().unwrap();
    assert_eq!(before, after, "the link was torn down and re-handshaken");
}

const METRICS_GET: &str =
    "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:9465/metrics').read().decode())";

#[test]
fn a_member_with_the_wrong_secret_gets_no_link_and_delivers_nothing() {
    require_root!();
    let mut l = lab(Spec::default());
    l.write_secret("wrong", "this-is-not-the-network-secret-0123456789").unwrap();
    l.start_rolodex().unwrap();
    l.start_agent("a1").unwrap();
    l.start_agent("a2").unwrap();
    l.start_agent_with("b1", "wrong", &[]).unwrap();
    assert!(wait_until(Duration::from_secs(15), Duration::from_millis(100), || l.link_up("a1", "a2")));
    // Give the impostor several heartbeat and punch rounds.
    let impostor_seen = wait_until(Duration::from_secs(5), Duration::from_millis(200), || {
        l.link("a1", "b1").is_some() || l.link("b1", "a1").is_some() || l.link_up("b1", "a2")
    });
    assert!(!impostor_seen, "a member with the wrong secret was admitted\n{}", l.logs());
    assert!(!l.overlay_ping("b1", "a1").unwrap());
    assert!(!l.overlay_ping("a1", "b1").unwrap());
    let rolodex_drops = l.host("pub").run("python3", &["-c", METRICS_GET]).unwrap();
    assert!(
        rolodex_drops
            .lines()
            .any(|x| x.starts_with("rolomesh_rolodex_frames_dropped_total{reason=\"auth\"}")),
        "the rolodex did not count the impostor's frames as auth failures"
    );
}

#[test]
fn garbage_to_rolodex_and_agent_ports_changes_nothing() {
    require_root!();
    let l = running(Spec::default());
    let b1_port: u16 = l.status("b1").unwrap()["port"].as_u64().unwrap() as u16;
    let targets = [format!("{}:6264", l.topo.public_ip()), format!("10.2.0.11:{b1_port}")];
    // From inside site b (so the agent's port is reachable) and from the public host.
    for (host, target) in [("b1", &targets[0]), ("natb", &targets[1]), ("pub", &targets[0])] {
        let target = target.clone();
        l.host(host)
            .in_ns(move || {
                let s = UdpSocket::bind("0.0.0.0:0").unwrap();
                let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
                for i in 0..5000usize {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let len = (x % 1400) as usize;
                    let mut buf: Vec<u8> = (0..len).map(|j| (x >> (j % 56)) as u8).collect();
                    if let Some(first) = buf.first_mut() {
                        *first = [0x01, 0x02, 0x03, 0x16, 0x17, 0x52, x as u8][i % 7];
                    }
                    let _ = s.send_to(&buf, &target);
                }
            })
            .unwrap();
    }
    assert!(l.rolodex.as_ref().unwrap().is_running(), "rolodex died");
    for (h, a) in &l.agents {
        assert!(a.is_running(), "agent {h} died");
    }
    for a in hosts(&l) {
        for b in hosts(&l).iter().filter(|b| **b != a) {
            assert!(l.overlay_ping(&a, b).unwrap(), "{a} -> {b} broken after garbage");
            assert!(l.link_up(&a, b));
        }
    }
    // Status refreshes once a second.
    let counted = wait_until(Duration::from_secs(3), Duration::from_millis(100), || {
        let s = l.status("b1").unwrap();
        s["dropped"].as_object().unwrap().values().filter_map(|v| v.as_u64()).sum::<u64>() >= 5000
    });
    assert!(counted, "agent did not count the garbage it dropped: {}", l.status("b1").unwrap()["dropped"]);
}

#[test]
fn links_survive_packet_loss() {
    require_root!();
    let mut l = lab(Spec::default());
    l.topo.set_loss("nata", 10.0).unwrap();
    l.topo.set_loss("natb", 10.0).unwrap();
    l.start_all().unwrap();
    assert!(l.wait_full_mesh(Duration::from_secs(40)), "no mesh with 10% loss per NAT\n{}", l.logs());
}

#[test]
fn with_two_rolodexes_losing_one_changes_nothing() {
    require_root!();
    let mut l = lab(Spec::default());
    l.standby_enabled = true;
    l.start_all().unwrap();
    assert!(l.wait_full_mesh(Duration::from_secs(20)), "mesh did not come up\n{}", l.logs());
    let regs = l.status("a1").unwrap()["rolodexes"].clone();
    assert_eq!(regs.as_array().map(Vec::len), Some(2), "{regs}");
    l.stop_rolodex();
    // A member that restarts now can only find the others through the standby.
    l.stop_agent("b1");
    l.start_agent("b1").unwrap();
    let back = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        l.overlay_ping("a1", "b1").unwrap_or(false) && l.overlay_ping("b1", "a2").unwrap_or(false)
    });
    assert!(back, "b1 not reachable through the standby rolodex\n{}", l.logs());
}
