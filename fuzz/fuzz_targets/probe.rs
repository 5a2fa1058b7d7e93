//! Probe ping/pong decoding (`ProbeKey::decode`) on untrusted bytes.
//!
//! Raw bytes must never decode (they cannot carry a valid MAC). A probe encoded from fuzzer values must
//! decode to itself when it is representable (sender of 1..=63 bytes), and every single-byte change,
//! truncation or extension of it must be rejected.

#![no_main]

use agent::probe::{Probe, ProbeKey};
use libfuzzer_sys::fuzz_target;
use rolomesh_fuzz::{Unstructured, name};

const KEY: [u8; 32] = [3; 32];

fuzz_target!(|data: &[u8]| {
    let key = ProbeKey::new(&KEY);
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode & 1 == 0 {
        assert_eq!(key.decode(rest), None, "forged probe accepted");
        // Raw bytes shaped like a probe: right type, reserved bytes and length, so the MAC check runs.
        if rest.len() > 21 {
            let mut b = rest.to_vec();
            b[0] = if mode & 2 == 0 { agent::probe::PING } else { agent::probe::PONG };
            b[1..4].fill(0);
            b[20] = (b.len().saturating_sub(21 + 16)).min(255) as u8;
            assert_eq!(key.decode(&b), None, "forged probe accepted");
        }
        return;
    }
    let _ = structured(&key, &mut Unstructured::new(rest));
});

fn structured(key: &ProbeKey, u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let sender = name(u, 0, 80)?;
    let p =
        Probe { pong: u.arbitrary()?, tx_id: u.arbitrary()?, incarnation: u.arbitrary()?, sender: &sender };
    let wire = key.encode(&p);
    let decoded = key.decode(&wire);
    if (1..=63).contains(&sender.len()) {
        assert_eq!(decoded.as_ref(), Some(&p), "round trip");
    } else if let Some(d) = &decoded {
        // Over-long names are cut at 63 bytes; what decodes is that prefix.
        assert!(sender.starts_with(d.sender) && d.sender.len() == 63, "{d:?} from {sender:?}");
    }
    let mut bad = wire.clone();
    let i = u.choose_index(bad.len())?;
    bad[i] ^= u.int_in_range(1..=255u8)?;
    assert_eq!(key.decode(&bad), None, "tampered byte {i} accepted");
    let cut = u.choose_index(wire.len())?;
    assert_eq!(key.decode(&wire[..cut]), None, "truncated probe accepted");
    let mut longer = wire.clone();
    longer.push(u.arbitrary()?);
    assert_eq!(key.decode(&longer), None, "extended probe accepted");
    assert_eq!(ProbeKey::new(&[4; 32]).decode(&wire), None, "other network's key accepted");
    Ok(())
}
