use super::*;

fn ifa(name: &str, addr: &str, up: bool) -> IfAddr {
    IfAddr {
        name: name.into(),
        addr: addr.parse().unwrap_or_else(|e| panic!("{addr}: {e}")),
        up,
        loopback: name == "lo",
    }
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn keeps_real_nics_and_drops_the_rest() {
    let fixture = [
        ifa("lo", "127.0.0.1", true),
        ifa("lo", "::1", true),
        ifa("eth0", "192.168.1.10", true),
        ifa("eth0", "fe80::1", true),
        ifa("eth0", "2001:db8::10", true),
        ifa("eth0", "192.168.1.10", true), // duplicate
        ifa("eth1", "169.254.3.4", true),
        ifa("eth2", "10.1.0.5", false), // down
        ifa("ens5", "172.31.4.7", true),
        ifa("enp0s3", "fd00::5", true),
        ifa("veth1a2b", "10.0.0.1", true),
        ifa("cni0", "10.244.0.1", true),
        ifa("docker0", "172.17.0.1", true),
        ifa("br-5f3e", "172.18.0.1", true),
        ifa("flannel.1", "10.244.0.0", true),
        ifa("cali12345", "10.9.0.1", true),
        ifa("vxlan.calico", "10.9.0.2", true),
        ifa("kube-ipvs0", "10.96.0.1", true),
        ifa("tun0", "10.8.0.1", true),
        ifa("tap0", "10.8.1.1", true),
        ifa("wg0", "10.7.0.1", true),
        ifa("lxcbr0", "10.0.3.1", true),
        ifa("virbr0", "192.168.122.1", true),
        ifa("rm0", "100.64.0.1", true),   // our TUN, by name
        ifa("myvpn", "100.64.0.9", true), // inside the overlay
        ifa("eth3", "fd52::7", true),     // inside the IPv6 overlay
        ifa("eth4", "0.0.0.0", true),
        ifa("eth5", "::ffff:1.2.3.4", true),
    ];
    let overlay = [net("100.64.0.1/10"), net("fd52::1/64")];
    let got = filter_candidates(&fixture, "rm0", &overlay, 41641);
    assert_eq!(
        got,
        [sa("192.168.1.10:41641"), sa("[2001:db8::10]:41641"), sa("172.31.4.7:41641"), sa("[fd00::5]:41641"),]
    );
}

#[test]
fn own_tun_name_is_excluded_even_without_a_virtual_prefix() {
    let fixture = [ifa("mesh7", "192.0.2.1", true), ifa("eth0", "192.0.2.2", true)];
    assert_eq!(filter_candidates(&fixture, "mesh7", &[], 1), [sa("192.0.2.2:1")]);
}

#[test]
fn eth0_is_not_a_veth() {
    assert!(!is_virtual_name("eth0"));
    assert!(!is_virtual_name("ens3"));
    assert!(!is_virtual_name("bond0"));
    assert!(is_virtual_name("veth0"));
    assert!(is_virtual_name("br-abc"));
    assert!(!is_virtual_name("br0")); // a host bridge carrying the real NIC stays
}

#[test]
fn lists_this_hosts_interfaces() {
    let addrs = interface_addrs().unwrap_or_else(|e| panic!("{e}"));
    assert!(addrs.iter().any(|a| a.loopback && a.addr.is_loopback()), "{addrs:?}");
    let cands = local_candidates("rm0", &[], 6264).unwrap_or_else(|e| panic!("{e}"));
    assert!(cands.iter().all(|c| !c.ip().is_loopback() && c.port() == 6264));
    println!("candidates here: {cands:?}");
}

/// Multi-host tests give each host a veth end renamed `eth0` inside a namespace; its address
/// must be offered, while the other end (still `veth…`) must not.
#[test]
fn veth_named_eth0_in_a_namespace_is_kept() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping veth_named_eth0_in_a_namespace_is_kept: needs root for unshare(CLONE_NEWNET)");
        return;
    }
    // A private namespace for this thread only; it and its links vanish when the thread ends.
    let result = std::thread::spawn(|| {
        // SAFETY: unshare affects only the calling (fresh) thread.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(format!("unshare: {}", io::Error::last_os_error()));
        }
        // Child processes inherit this thread's namespace.
        for cmd in [
            "link add eth0 type veth peer name veth9",
            "addr add 192.0.2.10/24 dev eth0",
            "addr add 192.0.2.11/24 dev veth9",
            "link set eth0 up",
            "link set veth9 up",
        ] {
            let out = std::process::Command::new("ip")
                .args(cmd.split(' '))
                .output()
                .map_err(|e| format!("ip {cmd}: {e}"))?;
            if !out.status.success() {
                return Err(format!("ip {cmd}: {}", String::from_utf8_lossy(&out.stderr)));
            }
        }
        local_candidates("rm0", &[], 7).map_err(|e| e.to_string())
    })
    .join()
    .unwrap_or_else(|_| Err("namespace thread panicked".into()));
    assert_eq!(result, Ok(vec![sa("192.0.2.10:7")]));
}
