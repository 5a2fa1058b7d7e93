use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use socket2::SockAddr;

use super::*;

fn pair() -> (UdpSocket, UdpSocket) {
    let a = UdpSocket::bind("127.0.0.1:0").expect("bind a");
    let b = UdpSocket::bind("127.0.0.1:0").expect("bind b");
    b.set_nonblocking(true).expect("nonblocking");
    (a, b)
}

/// Datagram `i` is `len` bytes of `i`, so boundaries and order are visible.
fn datagrams(count: usize, seg: usize, last: usize) -> Vec<Vec<u8>> {
    (0..count).map(|i| vec![i as u8; if i + 1 == count { last } else { seg }]).collect()
}

/// Everything `b` receives within a second, split into datagrams by the reported stride.
fn receive_all(b: &UdpSocket, want: usize) -> (Vec<Vec<u8>>, usize, SocketAddr) {
    let mut batch = RecvBatch::new();
    let mut got = Vec::new();
    let mut messages = 0;
    let mut from = None;
    let deadline = Instant::now() + Duration::from_secs(2);
    while got.len() < want && Instant::now() < deadline {
        match batch.recv(b.as_raw_fd()) {
            Ok(n) => {
                messages += n;
                for i in 0..n {
                    let (meta, bytes) = batch.message(i);
                    from = Some(meta.src);
                    got.extend(bytes.chunks(meta.stride).map(<[u8]>::to_vec));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => panic!("recvmmsg: {e}"),
        }
    }
    (got, messages, from.expect("received something"))
}

fn send(a: &UdpSocket, b: &UdpSocket, d: &[Vec<u8>], seg: usize, gso: bool) {
    let dst = SockAddr::from(b.local_addr().expect("addr"));
    let slices: Vec<&[u8]> = d.iter().map(Vec::as_slice).collect();
    send_segments(a.as_raw_fd(), &dst, &slices, seg, gso).expect("send");
}

#[test]
fn gso_send_arrives_as_separate_datagrams_without_gro() {
    let (a, b) = pair();
    if !gso_available(a.as_raw_fd()) {
        eprintln!("skipped: kernel without UDP_SEGMENT");
        return;
    }
    let d = datagrams(40, 1200, 700);
    send(&a, &b, &d, 1200, true);
    let (got, messages, from) = receive_all(&b, d.len());
    assert_eq!(got, d, "every datagram intact, in order, boundaries kept");
    assert_eq!(messages, d.len(), "without GRO each datagram is its own message");
    assert_eq!(from, a.local_addr().expect("addr"));
}

#[test]
fn gro_receive_coalesces_a_gso_train_and_reports_its_stride() {
    let (a, b) = pair();
    if !gso_available(a.as_raw_fd()) || !enable_gro(b.as_raw_fd()) {
        eprintln!("skipped: kernel without UDP GSO/GRO");
        return;
    }
    let d = datagrams(MAX_SEGMENTS, 1000, 1000);
    send(&a, &b, &d, 1000, true);
    let (got, messages, _) = receive_all(&b, d.len());
    assert_eq!(got, d);
    assert!(messages < d.len(), "GRO delivered {messages} messages for {} datagrams", d.len());
}

#[test]
fn plain_sendmmsg_delivers_each_datagram() {
    let (a, b) = pair();
    enable_gro(b.as_raw_fd());
    // Different sizes cannot share a GSO send; the fallback sends them as they are.
    let d: Vec<Vec<u8>> = (0..20).map(|i| vec![i as u8; 100 + i * 10]).collect();
    send(&a, &b, &d, 0, false);
    let (got, _, _) = receive_all(&b, d.len());
    assert_eq!(got, d);
}

#[test]
fn recvmmsg_returns_several_messages_in_one_call() {
    let (a, b) = pair();
    for i in 0..5u8 {
        a.send_to(&[i; 64], b.local_addr().expect("addr")).expect("send");
    }
    let mut batch = RecvBatch::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    let n = loop {
        match batch.recv(b.as_raw_fd()) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!("recvmmsg: {e}"),
        }
    };
    assert_eq!(n, 5, "all five queued datagrams in one call");
    for i in 0..n {
        let (meta, bytes) = batch.message(i);
        assert_eq!((meta.len, meta.stride), (64, 64));
        assert_eq!(bytes, &[i as u8; 64]);
    }
}

#[test]
fn dual_stack_socket_reports_ipv4_senders_as_ipv4() {
    let s = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::DGRAM, None).expect("socket");
    s.set_only_v6(false).expect("dual-stack");
    s.bind(&SocketAddr::from(([0u16; 8], 0)).into()).expect("bind");
    s.set_nonblocking(true).expect("nonblocking");
    let b: UdpSocket = s.into();
    let port = b.local_addr().expect("addr").port();
    let a = UdpSocket::bind("127.0.0.1:0").expect("bind");
    a.send_to(b"hi", ("127.0.0.1", port)).expect("send");
    let (_, _, from) = receive_all(&b, 1);
    assert_eq!(from, a.local_addr().expect("addr"), "IPv4-mapped sender mapped back to IPv4");
}
