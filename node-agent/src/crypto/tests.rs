use super::*;
use rand::{Rng, SeedableRng, rngs::StdRng};

fn keys() -> (SessionKeys, SessionKeys) {
    let mut material = [0u8; EXPORT_LEN];
    for (i, b) in material.iter_mut().enumerate() {
        *b = i as u8;
    }
    (SessionKeys::from_exported(&material, Role::Client), SessionKeys::from_exported(&material, Role::Server))
}

fn pair() -> (Session, Session) {
    let (c, s) = keys();
    (Session::new(&c).unwrap(), Session::new(&s).unwrap())
}

/// Seals `payload` into a fresh datagram.
fn seal(tx: &mut Session, payload: &[u8], rx_index: u32) -> Vec<u8> {
    let mut buf = vec![0u8; payload.len() + OVERHEAD];
    buf[header::LEN..header::LEN + payload.len()].copy_from_slice(payload);
    let n = tx.seal(&mut buf, payload.len(), rx_index).unwrap();
    assert_eq!(n, buf.len());
    buf
}

#[test]
fn key_split_follows_design() {
    let (c, s) = keys();
    assert_eq!(c.send.key[0], 0, "client key first");
    assert_eq!(c.recv.key[0], 16, "then server key");
    assert_eq!(c.send.salt, [32, 33, 34, 35]);
    assert_eq!(c.recv.salt, [36, 37, 38, 39]);
    assert_eq!((c.send.clone(), c.recv.clone()), (s.recv, s.send));
    assert!(!format!("{c:?}").contains("16"), "keys are not printed");
}

#[test]
fn round_trip_both_ways() {
    let (mut c, mut s) = pair();
    let mut d = seal(&mut c, b"ping", 0xdead_beef);
    assert_eq!(d[0], header::TYPE_DATA);
    assert_eq!(header::peek_rx_index(&d), Some(0xdead_beef));
    assert_eq!(header::peek_counter(&d), Some(0));
    assert_ne!(&d[16..20], b"ping", "encrypted");
    let r = s.open(&mut d).unwrap();
    assert_eq!(&d[r], b"ping");

    let mut d = seal(&mut s, b"pong", 1);
    let r = c.open(&mut d).unwrap();
    assert_eq!(&d[r], b"pong");

    // Keepalive: empty plaintext.
    let mut d = seal(&mut c, b"", 1);
    assert_eq!(d.len(), OVERHEAD);
    assert!(s.open(&mut d).unwrap().is_empty());
    assert_eq!(c.send.counter(), 2);
}

#[test]
fn seal_checks_buffer_and_limit() {
    let (c, _) = keys();
    let mut tx = Session::with_send_limit(&c, 2).unwrap();
    let mut buf = [0u8; 40];
    assert!(matches!(tx.seal(&mut buf, 9, 0), Err(CryptoError::BufferTooSmall { need: 41, .. })));
    assert!(matches!(tx.seal(&mut buf, usize::MAX, 0), Err(CryptoError::BufferTooSmall { .. })));
    tx.seal(&mut buf, 8, 0).unwrap();
    tx.seal(&mut buf, 8, 0).unwrap();
    assert!(matches!(tx.seal(&mut buf, 8, 0), Err(CryptoError::CounterExhausted { limit: 2 })));
}

#[test]
fn any_tampered_byte_is_rejected() {
    let (mut c, mut s) = pair();
    let d = seal(&mut c, b"some payload", 3);
    for i in 0..d.len() {
        for flip in [0x01, 0x80] {
            let mut t = d.clone();
            t[i] ^= flip;
            assert!(s.open(&mut t).is_err(), "byte {i} flipped by {flip:#x}");
        }
    }
    // Untouched, it still opens: failures did not advance the window.
    let mut t = d.clone();
    s.open(&mut t).unwrap();
}

#[test]
fn replays_and_old_packets_are_rejected() {
    let (mut c, mut s) = pair();
    let packets: Vec<Vec<u8>> = (0..3000).map(|i| seal(&mut c, &[i as u8], 0)).collect();
    // Newest first, then everything older: only the last 2048 counters are still acceptable.
    let mut d = packets[2999].clone();
    s.open(&mut d).unwrap();
    assert!(matches!(s.open(&mut packets[2999].clone()), Err(CryptoError::Replay { counter: 2999 })));
    for (i, p) in packets.iter().enumerate().rev().skip(1) {
        let accepted = s.open(&mut p.clone()).is_ok();
        assert_eq!(accepted, 2999 - i < REPLAY_WINDOW as usize, "counter {i}");
        // Out-of-order packets are accepted exactly once.
        assert!(s.open(&mut p.clone()).is_err());
    }
}

#[test]
fn header_checks() {
    let (mut c, mut s) = pair();
    let d = seal(&mut c, b"x", 0);
    let mut t = d.clone();
    t[0] = 0x02;
    assert!(matches!(s.open(&mut t), Err(CryptoError::NotData { kind: 2 })));
    let mut t = d.clone();
    t[2] = 1;
    assert!(matches!(s.open(&mut t), Err(CryptoError::Reserved)));
    assert!(matches!(s.open(&mut d.clone()[..OVERHEAD - 1]), Err(CryptoError::TooShort { len: 31 })));
    assert_eq!(header::peek_rx_index(&d[..OVERHEAD - 1]), None);
    assert_eq!(header::peek_rx_index(&[0x02; 40]), None);
}

#[test]
fn garbage_of_every_length_is_an_error() {
    let (_, mut s) = pair();
    let mut rng = StdRng::seed_from_u64(3);
    for len in 0..100 {
        for _ in 0..20 {
            let mut junk = vec![0u8; len];
            rng.fill(&mut junk[..]);
            // Half of them look like data packets, to get past the cheap checks.
            if rng.random_bool(0.5) && len >= 4 {
                junk[..4].copy_from_slice(&[header::TYPE_DATA, 0, 0, 0]);
            }
            assert!(s.open(&mut junk).is_err());
            let _ = header::peek_rx_index(&junk);
        }
    }
}

#[test]
fn random_mutations_never_open() {
    let (mut c, mut s) = pair();
    let mut rng = StdRng::seed_from_u64(42);
    for round in 0..10_000u32 {
        let len = rng.random_range(0..200);
        let payload: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        let d = seal(&mut c, &payload, round);
        let mut t = d.clone();
        match rng.random_range(0..4) {
            0 => {
                let i = rng.random_range(0..t.len());
                t[i] ^= rng.random_range(1..=255u8);
            }
            1 => t.truncate(rng.random_range(0..t.len())),
            2 => t.push(rng.random()),
            _ => {
                for _ in 0..rng.random_range(1..8) {
                    let i = rng.random_range(0..t.len());
                    t[i] = rng.random();
                }
                if t == d {
                    t[0] ^= 1;
                }
            }
        }
        assert!(s.open(&mut t).is_err(), "round {round}");
        // The genuine packet still opens, once.
        let mut ok = d.clone();
        let r = s.open(&mut ok).unwrap();
        assert_eq!(&ok[r], &payload[..]);
        assert!(s.open(&mut d.clone()).is_err());
    }
}
