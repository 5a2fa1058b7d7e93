//! Rolodex frames: `peek_network` and `FrameKey::open` on untrusted bytes.
//!
//! The first input byte picks a mode:
//! * raw: the bytes as a datagram, opened with our network's key and with a key for whatever network
//!   the header names (header parsing, length checks, AEAD rejection);
//! * plaintext: the bytes as the *decrypted* body, wrapped in a valid frame under a fixed key, so the body
//!   decoder sees arbitrary input; whatever decodes must re-encode to the very same frame (canonical form);
//! * message: a valid message built from the bytes is sealed; it must open to itself, and any single-byte
//!   change, truncation or extension of the frame must be rejected.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rolodex::proto::{self, FrameKey, MAX_FRAME};
use rolomesh_fuzz::{Unstructured, message, seal_raw_frame, take};

const NETWORK: &str = "fuzznet";
const KEY: [u8; 32] = [0x42; 32];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let key = FrameKey::new(NETWORK, &KEY);
    match mode % 3 {
        0 => raw(&key, rest),
        1 => plaintext(&key, rest),
        _ => {
            let _ = structured(&key, &mut Unstructured::new(rest));
        }
    }
});

fn raw(key: &FrameKey, data: &[u8]) {
    if let Ok(name) = proto::peek_network(data) {
        assert!(name.len() <= proto::MAX_NAME);
        // A key for the named network gets past the name check to the AEAD.
        let other = FrameKey::new(name, &KEY);
        assert!(other.open(data).is_err(), "forged frame accepted for network {name:?}");
    }
    assert!(key.open(data).is_err(), "forged frame accepted");
}

fn plaintext(key: &FrameKey, data: &[u8]) {
    let (nonce, plain) = data.split_at(data.len().min(12));
    let mut n = [0u8; 12];
    n[..nonce.len()].copy_from_slice(nonce);
    let frame = seal_raw_frame(NETWORK, &KEY, n, plain);
    let Ok(msg) = key.open(&frame) else { return };
    // Decoding is strict (no trailing bytes, bounded lists, valid enums), so encoding what was decoded
    // reproduces the input exactly, unless the frame was too large to have been sent by us.
    match key.seal(&msg, n) {
        Ok(again) => assert_eq!(again, frame, "decode/encode is not canonical for {msg:?}"),
        Err(proto::FrameError::TooLarge) => assert!(frame.len() > MAX_FRAME, "{msg:?}"),
        Err(e) => panic!("re-sealing a decoded message failed: {e}"),
    }
}

fn structured(key: &FrameKey, u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let seq = u.arbitrary()?;
    let msg = message(u, seq)?;
    let nonce: [u8; 12] = u.arbitrary()?;
    let frame = match key.seal(&msg, nonce) {
        Ok(f) => f,
        Err(proto::FrameError::TooLarge) => return Ok(()),
        Err(e) => panic!("sealing a valid message failed: {e}"),
    };
    assert!(frame.len() <= MAX_FRAME);
    assert_eq!(proto::peek_network(&frame), Ok(NETWORK));
    assert_eq!(key.open(&frame).as_ref(), Ok(&msg), "round trip");

    // Tampering anywhere, by any amount, must be caught.
    let mut bad = frame.clone();
    let i = u.choose_index(bad.len())?;
    let x: u8 = u.int_in_range(1..=255)?;
    bad[i] ^= x;
    assert!(key.open(&bad).is_err(), "byte {i} ^ {x:#x} of {} accepted", frame.len());
    let cut = u.choose_index(frame.len())?;
    assert!(key.open(&frame[..cut]).is_err(), "truncated to {cut} accepted");
    let mut longer = frame.clone();
    longer.extend_from_slice(&take(u, 1, 16)?);
    if longer.len() > frame.len() {
        assert!(key.open(&longer).is_err(), "extended frame accepted");
    }
    Ok(())
}
