//! Data-plane packets: `Session::open` on untrusted bytes, and the replay window against a naive model.
//!
//! Keys come from a fixed 40-byte export (`SessionKeys::from_exported`). The harness also seals packets
//! itself (AES-128-GCM, salt ‖ counter nonce, header as associated data) with counters of its choosing, so
//! authentic packets arrive in any order, repeated, far ahead, far behind or at `u64::MAX`; each must be
//! accepted exactly when a set-based model of the 2048-packet window says so. Raw and tampered packets
//! must always be rejected and must not move the window.

#![no_main]

use std::collections::BTreeSet;

use agent::crypto::{OVERHEAD, REPLAY_WINDOW, ReplayWindow, Session, SessionKeys, header};
use agent::dtls::Role;
use libfuzzer_sys::fuzz_target;
use ring::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use rolomesh_fuzz::{Unstructured, take};

const MATERIAL: [u8; 40] = {
    let mut m = [0u8; 40];
    let mut i = 0;
    while i < 40 {
        m[i] = (i as u8).wrapping_mul(37).wrapping_add(11);
        i += 1;
    }
    m
};
const RX_INDEX: u32 = 0x0001_0002;
const MAX_STEPS: usize = 512;

/// The model: counters accepted so far.
#[derive(Default)]
struct Model {
    seen: BTreeSet<u64>,
}

impl Model {
    fn accept(&mut self, c: u64) -> bool {
        let fresh = !self.seen.contains(&c);
        let in_window = self.seen.last().is_none_or(|&h| c > h || h - c < REPLAY_WINDOW);
        let ok = c != u64::MAX && fresh && in_window;
        if ok {
            self.seen.insert(c);
        }
        ok
    }
}

/// Seals like the peer's `SendKey::seal`, but with any counter.
struct Forger {
    key: LessSafeKey,
    salt: [u8; 4],
}

impl Forger {
    fn seal(&self, counter: u64, payload: &[u8]) -> Vec<u8> {
        let mut pkt = vec![header::TYPE_DATA, 0, 0, 0];
        pkt.extend_from_slice(&RX_INDEX.to_be_bytes());
        pkt.extend_from_slice(&counter.to_be_bytes());
        let mut body = payload.to_vec();
        let mut n = [0u8; 12];
        n[..4].copy_from_slice(&self.salt);
        n[4..].copy_from_slice(&counter.to_be_bytes());
        let tag = self
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(n), Aad::from(&pkt[..16]), &mut body)
            .expect("seal");
        pkt.extend_from_slice(&body);
        pkt.extend_from_slice(tag.as_ref());
        pkt
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});

fn counter(u: &mut Unstructured<'_>, model: &Model) -> arbitrary::Result<u64> {
    let top = model.seen.last().copied().unwrap_or(0);
    Ok(match u.int_in_range(0..=5u8)? {
        0 => u.arbitrary()?,
        1 => u64::MAX - u64::from(u.arbitrary::<u8>()?),
        2 => top.saturating_add(u.int_in_range(0..=5000)?),
        _ => top.saturating_sub(u.int_in_range(0..=2200)?),
    })
}

fn open_expect(ours: &mut Session, pkt: &[u8], payload: &[u8], expected: bool, what: &str) {
    let mut buf = pkt.to_vec();
    match ours.open(&mut buf) {
        Ok(range) => {
            assert!(expected, "{what}: accepted, model says replay/too old");
            assert_eq!(range, header::LEN..header::LEN + payload.len());
            assert_eq!(&buf[range], payload, "{what}: plaintext");
        }
        Err(e) => assert!(!expected, "{what}: rejected ({e}), model says fresh"),
    }
}

fn run(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let ours_keys = SessionKeys::from_exported(&MATERIAL, Role::Server);
    let theirs_keys = SessionKeys::from_exported(&MATERIAL, Role::Client);
    assert_eq!(ours_keys.recv, theirs_keys.send);
    assert_eq!(ours_keys.send, theirs_keys.recv);
    let mut ours = Session::new(&ours_keys).expect("session");
    let mut theirs = Session::new(&theirs_keys).expect("session");
    let forger = Forger {
        key: LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &theirs_keys.send.key).expect("key")),
        salt: theirs_keys.send.salt,
    };
    let mut model = Model::default();
    let mut window = ReplayWindow::new();
    let mut window_model = Model::default();
    let mut delivered: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();

    for _ in 0..MAX_STEPS {
        if u.is_empty() {
            break;
        }
        match u.int_in_range(0..=6u8)? {
            // Raw bytes (often shaped like a data header): never authentic.
            0 => {
                let mut d = take(u, 0, 200)?;
                if u.arbitrary()? && d.len() >= 4 {
                    d[0] = header::TYPE_DATA;
                    d[1..4].fill(0);
                }
                let rx = header::peek_rx_index(&d);
                let ctr = header::peek_counter(&d);
                assert_eq!(rx.is_some(), ctr.is_some());
                assert_eq!(rx.is_some(), d.len() >= OVERHEAD && d[0] == header::TYPE_DATA);
                assert!(ours.open(&mut d).is_err(), "forged data packet accepted");
            }
            // Authentic packet with a chosen counter.
            1 | 2 => {
                let c = counter(u, &model)?;
                let payload = take(u, 0, 64)?;
                let pkt = forger.seal(c, &payload);
                assert_eq!(header::peek_rx_index(&pkt), Some(RX_INDEX));
                assert_eq!(header::peek_counter(&pkt), Some(c));
                let expected = model.accept(c);
                open_expect(&mut ours, &pkt, &payload, expected, "forged-counter packet");
                if delivered.len() < 64 {
                    delivered.push((pkt, payload));
                }
            }
            // Tampered authentic packet: rejected, and the window must not move.
            3 => {
                let c = counter(u, &model)?;
                let payload = take(u, 0, 64)?;
                let mut pkt = forger.seal(c, &payload);
                let i = u.choose_index(pkt.len())?;
                pkt[i] ^= u.int_in_range(1..=255u8)?;
                assert!(ours.open(&mut pkt).is_err(), "tampered byte {i} accepted");
            }
            // Replay of something already delivered.
            4 if !delivered.is_empty() => {
                let i = u.choose_index(delivered.len())?;
                let (pkt, payload) = delivered[i].clone();
                let c = header::peek_counter(&pkt).expect("data packet");
                let expected = model.accept(c);
                open_expect(&mut ours, &pkt, &payload, expected, "replayed packet");
            }
            // The real sender, in order.
            5 => {
                let payload = take(u, 0, 64)?;
                let mut buf =
                    vec![0u8; header::LEN + payload.len() + header::TAG_LEN + u.int_in_range(0..=8usize)?];
                buf[header::LEN..header::LEN + payload.len()].copy_from_slice(&payload);
                let c = theirs.send.counter();
                let n = theirs.seal(&mut buf, payload.len(), RX_INDEX).expect("seal");
                assert_eq!(n, payload.len() + OVERHEAD);
                let expected = model.accept(c);
                open_expect(&mut ours, &buf[..n], &payload, expected, "sealed packet");
            }
            // The window on its own.
            _ => {
                let c = counter(u, &window_model)?;
                let check = window.check(c);
                let expected = window_model.accept(c);
                assert_eq!(check, expected, "check({c})");
                assert_eq!(window.accept(c), expected, "accept({c})");
            }
        }
    }
    Ok(())
}
