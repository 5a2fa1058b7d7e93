//! Probe ping/pong: hole punching, path selection, keepalive and RTT.
//!
//! ```text
//! type (0x02 ping | 0x03 pong) | 0 0 0 | tx id (u64) | incarnation (u64) | name len | name | MAC (16)
//! ```
//! The MAC is HMAC-SHA256 under the network's probe key, truncated to 16 bytes, so only members can make a
//! peer answer or believe a path works. A pong echoes the ping's tx id, which the pinger matches against
//! the ones it has outstanding; a replayed ping only makes a member answer once more to where it came from.

use ring::hmac;

pub const PING: u8 = 0x02;
pub const PONG: u8 = 0x03;
const MAC_LEN: usize = 16;
const MAX_NAME: usize = 63;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe<'a> {
    pub pong: bool,
    pub tx_id: u64,
    pub incarnation: u64,
    pub sender: &'a str,
}

pub struct ProbeKey(hmac::Key);

impl ProbeKey {
    pub fn new(key: &[u8; 32]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, key))
    }

    pub fn encode(&self, p: &Probe<'_>) -> Vec<u8> {
        // Cut at a character boundary so the peer can still decode the name as UTF-8.
        let mut end = p.sender.len().min(MAX_NAME);
        while !p.sender.is_char_boundary(end) {
            end -= 1;
        }
        let name = &p.sender.as_bytes()[..end];
        let mut out = Vec::with_capacity(21 + name.len() + MAC_LEN);
        out.extend_from_slice(&[if p.pong { PONG } else { PING }, 0, 0, 0]);
        out.extend_from_slice(&p.tx_id.to_be_bytes());
        out.extend_from_slice(&p.incarnation.to_be_bytes());
        out.push(name.len() as u8);
        out.extend_from_slice(name);
        let tag = hmac::sign(&self.0, &out);
        out.extend_from_slice(&tag.as_ref()[..MAC_LEN]);
        out
    }

    /// Verifies and decodes; `None` for anything malformed or not authentic.
    pub fn decode<'a>(&self, buf: &'a [u8]) -> Option<Probe<'a>> {
        if buf.len() < 21 + MAC_LEN || !matches!(buf[0], PING | PONG) || buf[1..4] != [0, 0, 0] {
            return None;
        }
        let name_len = usize::from(buf[20]);
        if name_len == 0 || name_len > MAX_NAME || buf.len() != 21 + name_len + MAC_LEN {
            return None;
        }
        let (body, mac) = buf.split_at(21 + name_len);
        // The tag is truncated, so ring's verify cannot be used; compare in constant time by hand.
        let want = hmac::sign(&self.0, body);
        let diff = want.as_ref()[..MAC_LEN].iter().zip(mac).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return None;
        }
        Some(Probe {
            pong: buf[0] == PONG,
            tx_id: u64::from_be_bytes(buf[4..12].try_into().ok()?),
            incarnation: u64::from_be_bytes(buf[12..20].try_into().ok()?),
            sender: std::str::from_utf8(&buf[21..21 + name_len]).ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let k = ProbeKey::new(&[3; 32]);
        let p = Probe { pong: false, tx_id: 42, incarnation: 7, sender: "node-a" };
        let b = k.encode(&p);
        assert_eq!(k.decode(&b), Some(p.clone()));
        for i in 0..b.len() {
            let mut t = b.clone();
            t[i] ^= 0x10;
            assert_eq!(k.decode(&t), None, "tampered byte {i} accepted");
        }
        assert_eq!(ProbeKey::new(&[4; 32]).decode(&b), None, "other network's key");
        let pong = Probe { pong: true, ..p };
        assert!(k.decode(&k.encode(&pong)).unwrap().pong);
    }

    #[test]
    fn garbage_is_rejected() {
        let k = ProbeKey::new(&[3; 32]);
        for len in 0..80 {
            let mut b = vec![PING; len];
            if len > 20 {
                b[1..4].fill(0);
                b[20] = (len.saturating_sub(21 + MAC_LEN)) as u8;
            }
            assert_eq!(k.decode(&b), None);
        }
    }
}
