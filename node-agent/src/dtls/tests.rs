//! Client and server driven in memory over a simulated, lossy network and clock.

use super::*;
use crate::crypto::Session;
use rand::{Rng, SeedableRng, rngs::StdRng};
use rtc_dtls::config::{ConfigBuilder, ExtendedMasterSecretType};

const PSK: [u8; 32] = [7; 32];
const CLIENT_ID: &[u8] = b"rm1;alpha;1;a";
const SERVER_ID: &[u8] = b"rm1;bravo;2;b";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    ToServer,
    ToClient,
}

fn accept_prefix() -> AcceptIdentity {
    Arc::new(|id: &[u8]| id.starts_with(b"rm1;"))
}

fn pair(now: Instant, client_psk: [u8; 32], server_accept: AcceptIdentity) -> (Handshake, Handshake) {
    let client =
        Handshake::new(Role::Client, now, CLIENT_ID.to_vec(), client_psk, accept_prefix()).expect("client");
    let server = Handshake::new(Role::Server, now, SERVER_ID.to_vec(), PSK, server_accept).expect("server");
    (client, server)
}

/// Decides how many copies of the `n`th datagram in `dir` arrive (0 = lost); `sender_done`
/// says whether its sender is established.
type Fault<'a> = &'a mut dyn FnMut(Dir, usize, bool) -> usize;

struct Run {
    /// Simulated time spent.
    elapsed: Duration,
    datagrams: usize,
}

/// Exchanges datagrams until nothing is in flight and no timer is pending (or 60 s pass).
/// `reverse` delivers each batch in reverse order.
fn drive(
    start: Instant,
    client: &mut Handshake,
    server: &mut Handshake,
    fault: Fault<'_>,
    reverse: bool,
) -> Run {
    let mut now = start;
    let mut sent = [0usize; 2];
    let mut datagrams = 0;
    while now < start + Duration::from_secs(60) {
        let mut moved = false;
        for dir in [Dir::ToServer, Dir::ToClient] {
            let (from, to) = match dir {
                Dir::ToServer => (&mut *client, &mut *server),
                Dir::ToClient => (&mut *server, &mut *client),
            };
            let mut batch = Vec::new();
            while let Some(d) = from.poll_transmit() {
                let n = &mut sent[dir as usize];
                for _ in 0..fault(dir, *n, from.is_established()) {
                    batch.push(d.clone());
                }
                *n += 1;
                moved = true;
            }
            if reverse {
                batch.reverse();
            }
            for d in batch {
                datagrams += 1;
                let _ = to.handle_datagram(now, &d);
            }
        }
        if moved {
            continue;
        }
        let next = [client.poll_timeout(), server.poll_timeout()].into_iter().flatten().min();
        let done = |h: &Handshake| h.is_established() || h.failed();
        if done(client) && done(server) {
            break;
        }
        let Some(next) = next else { break };
        now = now.max(next);
        let _ = client.handle_timeout(now);
        let _ = server.handle_timeout(now);
    }
    Run { elapsed: now - start, datagrams }
}

fn deliver_all(_: Dir, _: usize, _: bool) -> usize {
    1
}

fn assert_established(client: &Handshake, server: &Handshake) -> (Established, Established) {
    let c = client.established().unwrap_or_else(|| panic!("client: {:?}", client.failure()));
    let s = server.established().unwrap_or_else(|| panic!("server: {:?}", server.failure()));
    assert_eq!(c.keys.send, s.keys.recv);
    assert_eq!(c.keys.recv, s.keys.send);
    assert_ne!(c.keys.send, c.keys.recv);
    assert_eq!(c.peer_identity, SERVER_ID);
    assert_eq!(s.peer_identity, CLIENT_ID);
    assert_eq!((c.role, s.role), (Role::Client, Role::Server));
    (c, s)
}

#[test]
fn completes_and_keys_match() {
    let start = Instant::now();
    let wall = std::time::Instant::now();
    let (mut client, mut server) = pair(start, PSK, accept_prefix());
    let run = drive(start, &mut client, &mut server, &mut deliver_all, false);
    let took = wall.elapsed();
    eprintln!("in-memory handshake: {took:?} wall, {} datagrams", run.datagrams);
    assert_eq!(run.elapsed, Duration::ZERO, "no retransmission needed");
    let (c, s) = assert_established(&client, &server);

    // The exported keys work as a data session in both directions.
    let (mut cs, mut ss) = (Session::new(&c.keys).unwrap(), Session::new(&s.keys).unwrap());
    let mut buf = [0u8; 64];
    buf[16..21].copy_from_slice(b"hello");
    let n = cs.seal(&mut buf, 5, 9).unwrap();
    let r = ss.open(&mut buf[..n]).unwrap();
    assert_eq!(&buf[r], b"hello");
    let n = ss.seal(&mut buf, 0, 9).unwrap();
    assert!(cs.open(&mut buf[..n]).unwrap().is_empty());
}

#[test]
fn wrong_psk_fails_without_keys() {
    let start = Instant::now();
    let (mut client, mut server) = pair(start, [8; 32], accept_prefix());
    let run = drive(start, &mut client, &mut server, &mut deliver_all, false);
    assert_eq!(run.elapsed, Duration::ZERO, "the alert ends both sides at once");
    assert!(client.established().is_none() && server.established().is_none());
    assert!(server.failed(), "server notices the bad Finished");
    assert!(client.failed(), "client gets the alert");
    eprintln!("wrong PSK: {:?}", server.failure());
}

#[test]
fn server_refuses_identity() {
    let start = Instant::now();
    let refuse: AcceptIdentity = Arc::new(|id: &[u8]| id != CLIENT_ID);
    let (mut client, mut server) = pair(start, PSK, refuse);
    let run = drive(start, &mut client, &mut server, &mut deliver_all, false);
    assert_eq!(run.elapsed, Duration::ZERO, "the alert ends both sides at once");
    assert!(server.failed() && client.failed());
    assert!(client.established().is_none() && server.established().is_none());
}

#[test]
fn client_refuses_identity() {
    let start = Instant::now();
    let refuse: AcceptIdentity = Arc::new(|id: &[u8]| id != SERVER_ID);
    let mut client = Handshake::new(Role::Client, start, CLIENT_ID.to_vec(), PSK, refuse).unwrap();
    let mut server = Handshake::new(Role::Server, start, SERVER_ID.to_vec(), PSK, accept_prefix()).unwrap();
    let run = drive(start, &mut client, &mut server, &mut deliver_all, false);
    assert_eq!(run.elapsed, Duration::ZERO, "the alert ends both sides at once");
    assert!(client.failed() && server.failed());
    assert!(client.established().is_none() && server.established().is_none());
}

#[test]
fn recovers_from_dropping_the_first_datagrams() {
    // The crate retransmits a flight 7 times, so 7 losses in a row are survivable.
    for lost in 1..=7 {
        let start = Instant::now();
        let (mut client, mut server) = pair(start, PSK, accept_prefix());
        let mut seen = 0;
        let mut drop_first = |_: Dir, _: usize, _: bool| {
            seen += 1;
            usize::from(seen > lost)
        };
        let run = drive(start, &mut client, &mut server, &mut drop_first, false);
        assert_established(&client, &server);
        assert!(run.elapsed >= FLIGHT_INTERVAL, "recovered by retransmission");
    }
}

#[test]
fn gives_up_after_eight_lost_client_hellos() {
    let start = Instant::now();
    let (mut client, mut server) = pair(start, PSK, accept_prefix());
    let mut lose_all = |_: Dir, _: usize, _: bool| 0;
    let run = drive(start, &mut client, &mut server, &mut lose_all, false);
    assert!(client.failed() && server.failed());
    assert_eq!(run.elapsed, HANDSHAKE_TIMEOUT, "the server only gives up at the deadline");
    let reason = client.failure().unwrap_or_default();
    assert!(reason.contains("gave up"), "{reason}");
}

#[test]
fn server_repeats_final_flight_after_completing() {
    let start = Instant::now();
    let (mut client, mut server) = pair(start, PSK, accept_prefix());
    let mut dropped = false;
    // Lose the server's final flight, sent once it is established.
    let mut lose_final = |dir: Dir, _: usize, sender_done: bool| {
        if dir == Dir::ToClient && sender_done && !dropped {
            dropped = true;
            return 0;
        }
        1
    };
    let run = drive(start, &mut client, &mut server, &mut lose_final, false);
    assert!(dropped);
    assert_established(&client, &server);
    assert!(run.elapsed >= FLIGHT_INTERVAL);
}

#[test]
fn recovers_when_flight_4_is_lost_twice() {
    // The server's first two answers to the cookie ClientHello are lost. The client's repeats
    // of that ClientHello would disarm the crate's server timer; they are dropped as stale, so
    // the server's own timer retransmits flight 4.
    let start = Instant::now();
    let (mut client, mut server) = pair(start, PSK, accept_prefix());
    let mut lose = |dir: Dir, n: usize, _: bool| usize::from(!(dir == Dir::ToClient && n < 3 && n > 0));
    let run = drive(start, &mut client, &mut server, &mut lose, false);
    assert_established(&client, &server);
    assert!(run.elapsed <= 2 * FLIGHT_INTERVAL, "took {:?}", run.elapsed);
}

#[test]
fn survives_duplication_and_reordering() {
    for reverse in [false, true] {
        let start = Instant::now();
        let (mut client, mut server) = pair(start, PSK, accept_prefix());
        let mut twice = |_: Dir, _: usize, _: bool| 2;
        drive(start, &mut client, &mut server, &mut twice, reverse);
        assert_established(&client, &server);
    }
}

#[test]
fn survives_random_loss() {
    // 20% loss each way, every other run also reordered. Deterministic per seed; at this loss
    // rate about 1 seed in 2000 legitimately exhausts the crate's 7 retransmissions.
    for seed in 0..200 {
        let mut rng = StdRng::seed_from_u64(seed);
        let start = Instant::now();
        let (mut client, mut server) = pair(start, PSK, accept_prefix());
        let mut lossy = |_: Dir, _: usize, _: bool| usize::from(rng.random_bool(0.8));
        drive(start, &mut client, &mut server, &mut lossy, seed % 2 == 0);
        assert_established(&client, &server);
    }
}

#[test]
fn times_out_without_a_peer() {
    let start = Instant::now();
    let mut server = Handshake::new(Role::Server, start, SERVER_ID.to_vec(), PSK, accept_prefix()).unwrap();
    assert_eq!(server.poll_timeout(), Some(start + HANDSHAKE_TIMEOUT));
    server.handle_timeout(start + HANDSHAKE_TIMEOUT).unwrap_err();
    assert!(server.failed() && server.poll_timeout().is_none());

    let mut client = Handshake::new(Role::Client, start, CLIENT_ID.to_vec(), PSK, accept_prefix()).unwrap();
    let mut now = start;
    while let Some(t) = client.poll_timeout() {
        now = t;
        let _ = client.handle_timeout(now);
        while client.poll_transmit().is_some() {}
    }
    assert!(client.failed());
    assert!(now <= start + HANDSHAKE_TIMEOUT);
    eprintln!("client gave up after {:?}: {:?}", now - start, client.failure());
}

#[test]
fn restarted_peer_gets_a_new_handshake() {
    let start = Instant::now();
    let (mut client, mut server) = pair(start, PSK, accept_prefix());
    drive(start, &mut client, &mut server, &mut deliver_all, false);
    let (old, _) = assert_established(&client, &server);

    // The client restarts: its fresh ClientHello is ignored by the established server...
    let mut client = Handshake::new(Role::Client, start, CLIENT_ID.to_vec(), PSK, accept_prefix()).unwrap();
    let hello = client.poll_transmit().unwrap();
    assert!(is_dtls(&hello) && is_client_hello(&hello));
    server.handle_datagram(start, &hello).unwrap();
    assert!(server.poll_transmit().is_none() && server.is_established());

    // ...so the caller starts a new server handshake for it.
    let mut server = Handshake::new(Role::Server, start, SERVER_ID.to_vec(), PSK, accept_prefix()).unwrap();
    server.handle_datagram(start, &hello).unwrap();
    drive(start, &mut client, &mut server, &mut deliver_all, false);
    let (new, _) = assert_established(&client, &server);
    assert_ne!(old.keys, new.keys);
}

#[test]
fn garbage_never_panics() {
    let mut rng = StdRng::seed_from_u64(1);
    let start = Instant::now();
    for len in 0..100 {
        let (mut client, mut server) = pair(start, PSK, accept_prefix());
        let mut junk = vec![0u8; len];
        rng.fill(&mut junk[..]);
        let result = server.handle_datagram(start, &junk);
        if !record::well_framed(&junk) {
            assert!(matches!(result, Err(DtlsError::Malformed { .. })));
            assert!(!server.failed());
        }
        if len > 0 {
            junk[0] = 22; // handshake content type
        }
        let _ = server.handle_datagram(start, &junk);
        let _ = client.handle_datagram(start, &junk);
    }

    // Well-framed junk records must not break an established session either.
    let (mut client, mut server) = pair(start, PSK, accept_prefix());
    drive(start, &mut client, &mut server, &mut deliver_all, false);
    for _ in 0..1000 {
        let body = rng.random_range(1..60);
        let mut rec = vec![0u8; record::RECORD_HEADER_LEN + body];
        rng.fill(&mut rec[..]);
        rec[0] = rng.random_range(20..=25);
        rec[11..13].copy_from_slice(&(body as u16).to_be_bytes());
        let _ = server.handle_datagram(start, &rec);
        let _ = client.handle_datagram(start, &rec);
        while server.poll_transmit().is_some() {}
        while client.poll_transmit().is_some() {}
    }
    assert!(client.is_established() && server.is_established());
}

/// A plain `rtc-dtls` client with our PSK but a chosen suite and EMS policy.
fn raw_client_against_our_server(suite: CipherSuiteId, ems: ExtendedMasterSecretType) -> Handshake {
    let start = Instant::now();
    let config = ConfigBuilder::default()
        .with_crypto_provider(rtc_dtls::crypto_provider::default_provider().unwrap())
        .with_cipher_suites(vec![suite])
        .with_extended_master_secret(ems)
        .with_psk(Some(Arc::new(|_: &[u8]| Ok(PSK.to_vec()))))
        .with_psk_identity_hint(Some(CLIENT_ID.to_vec()))
        .with_server_name("x".into())
        .with_insecure_skip_verify(true)
        .build(true, Some(PEER))
        .unwrap();
    let mut raw = Endpoint::new(LOCAL, Default::default(), None);
    raw.connect(start, PEER, Arc::new(config), None).unwrap();
    let mut server = Handshake::new(Role::Server, start, SERVER_ID.to_vec(), PSK, accept_prefix()).unwrap();
    for _ in 0..10 {
        while let Some(t) = raw.poll_transmit() {
            let _ = server.handle_datagram(start, &t.message);
        }
        while let Some(d) = server.poll_transmit() {
            let _ = raw.read(start, PEER, None, d);
        }
    }
    server
}

#[test]
fn only_our_suite_with_extended_master_secret() {
    use ExtendedMasterSecretType::{Disable, Require};
    let ok = raw_client_against_our_server(SUITE, Require);
    assert!(ok.is_established(), "{:?}", ok.failure());
    let no_ems = raw_client_against_our_server(SUITE, Disable);
    assert!(no_ems.failed() && !no_ems.is_established());
    let other = raw_client_against_our_server(CipherSuiteId::Tls_Psk_With_Aes_128_Ccm, Require);
    assert!(other.failed() && !other.is_established());
}

#[test]
fn resends_when_a_late_hello_verify_request_stops_the_crate_timer() {
    // A slow path: the client repeats its first ClientHello, the server answers both with a
    // HelloVerifyRequest, and the client's cookie ClientHello is lost. The second
    // HelloVerifyRequest disarms the client's timer, and a server never retransmits a
    // HelloVerifyRequest; only the verbatim resend keeps the handshake going.
    let start = Instant::now();
    let (mut client, mut server) = pair(start, PSK, accept_prefix());
    let hello = client.poll_transmit().unwrap();
    let t1 = client.poll_timeout().unwrap();
    client.handle_timeout(t1).unwrap();
    let hello_again = client.poll_transmit().unwrap();
    server.handle_datagram(t1, &hello).unwrap();
    let verify = server.poll_transmit().unwrap();
    server.handle_datagram(t1, &hello_again).unwrap();
    let verify_again = server.poll_transmit().unwrap();
    client.handle_datagram(t1, &verify).unwrap();
    let lost = client.poll_transmit().unwrap();
    assert!(is_client_hello(&lost));
    client.handle_datagram(t1, &verify_again).unwrap();
    let run = drive(t1, &mut client, &mut server, &mut deliver_all, false);
    assert_established(&client, &server);
    assert!(run.elapsed < FLIGHT_INTERVAL, "answered at once, took {:?}", run.elapsed);
}
