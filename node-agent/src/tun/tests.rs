use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use super::*;
use crate::routes::{dst_of_packet, src_of_packet};

fn net(s: &str) -> IpNet {
    s.parse().unwrap_or_else(|e| panic!("{e}"))
}

fn cfg(name: &str) -> TunConfig {
    TunConfig { name: name.into(), ipv4: Some(net("198.18.0.1/24")), ipv6: None, mtu: 1400, offload: false }
}

#[test]
fn auto_mtu_formula() {
    assert_eq!(auto_mtu(1500, false), 1500 - 20 - 8 - 16 - 16);
    assert_eq!(auto_mtu(1500, true), 1500 - 40 - 8 - 16 - 16);
    assert_eq!(auto_mtu(9001, false), 8941);
    assert_eq!(auto_mtu(10, true), 0);
}

#[test]
fn default_route_from_proc() {
    let v4 = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n\
        eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
        wlan0\t00000000\t010200C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n\
        eth1\t00000000\t010200C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n";
    assert_eq!(default_route_interface(v4, "").as_deref(), Some("eth1"));
    let v6 = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 \
        00000000000000000000000000000000 ffffffff 00000001 00000000 00200200 lo\n\
        00000000000000000000000000000000 00 00000000000000000000000000000000 00 \
        fd000000000000000000000000000001 00000400 00000002 00000000 00000003 ens5\n";
    assert_eq!(default_route_interface("", v6).as_deref(), Some("ens5"));
    assert_eq!(default_route_interface("garbage\nx y z\n", "1 2\n"), None);
    let m = underlay_mtu();
    assert!((68..=65536).contains(&m), "{m}");
}

#[test]
fn names_are_checked() {
    for ok in ["rm0", "rolomesh-overla", "a"] {
        assert!(validate_name(ok).is_ok(), "{ok}");
    }
    for bad in ["", "rolomesh-overlay0", "rm/0", "rm 0", "rm%d", "eth0:1", ".."] {
        let e = validate_name(bad).err().map(|e| e.to_string());
        assert!(e.as_deref().is_some_and(|e| e.starts_with("invalid TUN device name")), "{bad}: {e:?}");
    }
}

#[test]
fn config_is_checked_before_touching_the_kernel() {
    let err = |c: TunConfig| Tun::create(&c).err().map(|e| e.to_string()).unwrap_or_default();
    assert_eq!(
        err(TunConfig { name: "rolomesh-overlay0".into(), ..cfg("x") }),
        r#"invalid TUN device name "rolomesh-overlay0": longer than 15 bytes"#
    );
    assert_eq!(
        err(TunConfig { mtu: 100, ..cfg("rmx") }),
        "invalid MTU 100 for TUN device rmx: must be 576..=65535"
    );
    let v6 = TunConfig { ipv6: Some(net("fd52::1/64")), mtu: 1200, ..cfg("rmx") };
    assert_eq!(err(v6), "invalid MTU 1200 for TUN device rmx: IPv6 needs at least 1280");
    let swapped = TunConfig { ipv4: Some(net("fd52::1/64")), ..cfg("rmx") };
    assert!(err(swapped).contains("wrong address family"));
    assert_eq!(err(cfg("rmx")), "creating TUN device rmx needs a tokio runtime");
}

#[tokio::test]
async fn existing_interface_name_is_refused() {
    let e = Tun::create(&cfg("lo")).err().map(|e| e.to_string());
    assert_eq!(e.as_deref(), Some("cannot create TUN device lo: an interface with that name already exists"));
}

#[test]
fn kernel_errors_become_one_clear_line() {
    let map = |errno| create_error("rm0", io::Error::from_raw_os_error(errno)).to_string();
    assert_eq!(
        map(libc::ENOENT),
        "/dev/net/tun not found: load the tun module or mount the device into the container"
    );
    assert_eq!(map(libc::ENODEV), map(libc::ENOENT));
    assert_eq!(map(libc::EPERM), "creating TUN device rm0 needs CAP_NET_ADMIN");
    assert_eq!(map(libc::EACCES), map(libc::EPERM));
    assert!(map(libc::EBUSY).contains("already exists"));
    assert!(map(libc::EIO).starts_with("creating TUN device rm0: "));
    assert!(!map(libc::EIO).contains('\n'));
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn ip_cmd(args: &[&str]) -> (bool, String) {
    match Command::new("ip").args(args).output() {
        Ok(o) => (o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned()),
        Err(e) => panic!("running ip {args:?}: {e}"),
    }
}

/// Reads packets until one satisfies `want`, skipping the kernel's own chatter (IPv6 router
/// solicitations, MLD reports).
async fn recv_until(tun: &Tun, want: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut scratch = vec![0u8; SCRATCH_LEN];
    let mut bufs = vec![vec![0u8; 2048]; 64];
    let mut sizes = vec![0usize; 64];
    let wait = async {
        loop {
            let n = tun.recv_batch(&mut scratch, &mut bufs, &mut sizes, 0).await;
            let n = n.unwrap_or_else(|e| panic!("recv: {e}"));
            if let Some(i) = (0..n).find(|&i| want(&bufs[i][..sizes[i]])) {
                return bufs[i][..sizes[i]].to_vec();
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), wait)
        .await
        .unwrap_or_else(|_| panic!("no matching packet from {} within 5s", tun.name()))
}

#[test]
fn create_configure_exchange_and_remove() {
    if !is_root() {
        eprintln!("skipping create_configure_exchange_and_remove: creating a TUN device needs root");
        return;
    }
    // A private network namespace for this thread: no clash with the host's addresses or other
    // tests, and nothing can leak even if an assertion fails.
    let run = std::thread::spawn(|| {
        // SAFETY: unshare affects only the calling (fresh) thread.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            panic!("unshare(CLONE_NEWNET): {}", io::Error::last_os_error());
        }
        assert!(ip_cmd(&["link", "set", "lo", "up"]).0, "ip link set lo up");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"));
        // Both kinds of device: plain packets, and virtio headers with offloads.
        rt.block_on(exchange_in_namespace(false));
        rt.block_on(exchange_in_namespace(true));
    });
    if let Err(panic) = run.join() {
        std::panic::resume_unwind(panic);
    }
}

async fn exchange_in_namespace(offload: bool) {
    let pid = std::process::id();
    let name = format!("rmtest{}", pid % 1000);
    let third = (pid % 250) as u8;
    let v4 = net(&format!("198.18.{third}.1/24"));
    let v6 = net(&format!("fd52:7e57:{third:x}::1/64"));
    let tun =
        Tun::create(&TunConfig { name: name.clone(), ipv4: Some(v4), ipv6: Some(v6), mtu: 1400, offload })
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tun.name(), name);
    assert_eq!(tun.offload(), offload, "this kernel supports TUN offloads");

    let (ok, out) = ip_cmd(&["addr", "show", "dev", &name]);
    assert!(ok, "ip addr show dev {name} failed");
    println!("{out}");
    assert!(out.contains(&format!("inet {v4}")), "{out}");
    assert!(out.contains(&format!("inet6 {v6}")), "{out}");
    assert!(out.contains("mtu 1400"), "{out}");
    assert!(out.contains(",UP") || out.contains("<UP"), "{out}");

    // A second device with the same name is refused while the first lives.
    let again = Tun::create(&TunConfig { name: name.clone(), ipv4: None, ipv6: None, mtu: 1400, offload });
    assert!(matches!(again, Err(TunError::NameInUse { .. })), "{again:?}");

    // Kernel -> TUN: UDP to an overlay peer address is routed into the device.
    let peer4 = Ipv4Addr::new(198, 18, third, 2);
    let sock = UdpSocket::bind("0.0.0.0:0").unwrap_or_else(|e| panic!("bind: {e}"));
    sock.send_to(b"hello", (peer4, 9)).unwrap_or_else(|e| panic!("send_to: {e}"));
    let pkt = recv_until(&tun, |p| dst_of_packet(p) == Some(IpAddr::V4(peer4))).await;
    assert_eq!(src_of_packet(&pkt), Some(v4.addr()));
    assert!(pkt.ends_with(b"hello"));

    let peer6: IpAddr = format!("fd52:7e57:{third:x}::2").parse().unwrap_or_else(|e| panic!("{e}"));
    let sock6 = UdpSocket::bind("[::]:0").unwrap_or_else(|e| panic!("bind v6: {e}"));
    sock6.send_to(b"hello6", (peer6, 9)).unwrap_or_else(|e| panic!("send_to v6: {e}"));
    let pkt = recv_until(&tun, |p| dst_of_packet(p) == Some(peer6)).await;
    assert!(pkt.ends_with(b"hello6"));

    // TUN -> kernel: an echo request "from the peer" is answered back into the device.
    let IpAddr::V4(me) = v4.addr() else { unreachable!("v4 is IPv4") };
    let req = icmp_echo_request(peer4, me);
    let mut out = vec![0u8; VNET_HDR_LEN + 6];
    out.extend_from_slice(&req);
    let sent = tun.send_batch(&mut GroTable::default(), &mut [out], VNET_HDR_LEN + 6).await;
    sent.unwrap_or_else(|e| panic!("send: {e}"));
    let reply = recv_until(&tun, |p| {
        dst_of_packet(p) == Some(IpAddr::V4(peer4)) && p.get(9) == Some(&1) && p.get(20) == Some(&0)
    })
    .await;
    assert_eq!(src_of_packet(&reply), Some(v4.addr()));

    drop(tun);
    let (still_there, out) = ip_cmd(&["link", "show", &name]);
    assert!(!still_there, "{name} survived drop: {out}");
}

/// IPv4 + ICMP echo request with correct checksums.
fn icmp_echo_request(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0u8; 28];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&28u16.to_be_bytes());
    p[8] = 64; // TTL
    p[9] = 1; // ICMP
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20] = 8; // echo request
    p[24..28].copy_from_slice(&[0x12, 0x34, 0, 1]); // id, sequence
    let c = checksum(&p[20..]);
    p[22..24].copy_from_slice(&c.to_be_bytes());
    p
}

fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 =
        b.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
