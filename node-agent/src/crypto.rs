//! Data-plane encryption (design.md "Data packet"): AES-128-GCM with keys exported from the DTLS
//! handshake, a per-direction counter nonce and a 2048-packet replay window.
//!
//! Everything works in place on the caller's buffer: no allocation per packet.

pub mod header;
mod replay;
#[cfg(test)]
mod tests;

use std::ops::Range;

use ring::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

use crate::dtls::Role;
pub use replay::{ReplayWindow, WINDOW as REPLAY_WINDOW};

/// Length of the RFC 5705 export: client key 16 ‖ server key 16 ‖ client salt 4 ‖ server salt 4.
pub const EXPORT_LEN: usize = 40;
/// Sealing stops here so the caller rekeys; far below where GCM with counter nonces weakens.
pub const DEFAULT_SEND_LIMIT: u64 = 1 << 60;
/// Bytes a datagram carries besides the plaintext.
pub const OVERHEAD: usize = header::LEN + header::TAG_LEN;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("data packet of {len} bytes is shorter than header and tag ({OVERHEAD})")]
    TooShort { len: usize },
    #[error("not a data packet: type byte {kind:#04x}")]
    NotData { kind: u8 },
    #[error("data packet has non-zero reserved bytes")]
    Reserved,
    #[error("counter {counter} was already received or is older than the replay window")]
    Replay { counter: u64 },
    #[error("data packet with counter {counter} failed authentication")]
    Auth { counter: u64 },
    #[error("buffer of {have} bytes cannot hold a sealed {payload}-byte payload ({need} needed)")]
    BufferTooSmall { payload: usize, need: usize, have: usize },
    #[error("send counter reached its limit of {limit}: rekey before sending more")]
    CounterExhausted { limit: u64 },
    #[error("building the AES-128-GCM key")]
    Key,
}

/// Key and nonce salt for one direction.
#[derive(Clone, PartialEq, Eq)]
pub struct DirectionKey {
    pub key: [u8; 16],
    pub salt: [u8; 4],
}

impl std::fmt::Debug for DirectionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DirectionKey(..)")
    }
}

/// The data keys of one session, oriented for our side of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionKeys {
    pub send: DirectionKey,
    pub recv: DirectionKey,
}

impl SessionKeys {
    /// Splits the exported keying material; the DTLS client sends with the client key.
    pub fn from_exported(material: &[u8; EXPORT_LEN], role: Role) -> Self {
        let part = |range: Range<usize>| &material[range];
        let mut client = DirectionKey { key: [0; 16], salt: [0; 4] };
        let mut server = client.clone();
        client.key.copy_from_slice(part(0..16));
        server.key.copy_from_slice(part(16..32));
        client.salt.copy_from_slice(part(32..36));
        server.salt.copy_from_slice(part(36..40));
        match role {
            Role::Client => Self { send: client, recv: server },
            Role::Server => Self { send: server, recv: client },
        }
    }
}

fn aead_key(key: &[u8; 16]) -> Result<LessSafeKey, CryptoError> {
    let unbound = UnboundKey::new(&AES_128_GCM, key).map_err(|_| CryptoError::Key)?;
    Ok(LessSafeKey::new(unbound))
}

fn nonce(salt: &[u8; 4], counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(salt);
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Sending half: owns the counter, so a nonce is never reused.
pub struct SendKey {
    key: LessSafeKey,
    salt: [u8; 4],
    counter: u64,
    limit: u64,
}

impl SendKey {
    pub fn new(dir: &DirectionKey, limit: u64) -> Result<Self, CryptoError> {
        Ok(Self { key: aead_key(&dir.key)?, salt: dir.salt, counter: 0, limit })
    }

    /// Packets sealed so far (the next counter).
    pub fn counter(&self) -> u64 {
        self.counter
    }

    /// Seals `buf[16..16 + payload_len]` in place for the peer's `rx_index`: writes the header at
    /// `buf[..16]` and the tag after the ciphertext. Returns the datagram length.
    pub fn seal(&mut self, buf: &mut [u8], payload_len: usize, rx_index: u32) -> Result<usize, CryptoError> {
        let need = payload_len.saturating_add(OVERHEAD);
        if buf.len() < need {
            return Err(CryptoError::BufferTooSmall { payload: payload_len, need, have: buf.len() });
        }
        if self.counter >= self.limit {
            return Err(CryptoError::CounterExhausted { limit: self.limit });
        }
        let mut hdr = [0u8; header::LEN];
        header::write(&mut hdr, rx_index, self.counter);
        let (head, rest) = buf.split_at_mut(header::LEN);
        head.copy_from_slice(&hdr);
        let (body, tail) = rest.split_at_mut(payload_len);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(&self.salt, self.counter), Aad::from(hdr), body)
            .map_err(|_| CryptoError::Key)?;
        tail[..header::TAG_LEN].copy_from_slice(tag.as_ref());
        self.counter += 1;
        Ok(need)
    }
}

/// Receiving half: owns the replay window.
pub struct RecvKey {
    key: LessSafeKey,
    salt: [u8; 4],
    window: ReplayWindow,
}

impl RecvKey {
    pub fn new(dir: &DirectionKey) -> Result<Self, CryptoError> {
        Ok(Self { key: aead_key(&dir.key)?, salt: dir.salt, window: ReplayWindow::new() })
    }

    /// Authenticates and decrypts `datagram` in place; returns the plaintext's range in it
    /// (empty = keepalive). The counter only enters the replay window once authenticated, so
    /// forgeries cannot move it.
    pub fn open(&mut self, datagram: &mut [u8]) -> Result<Range<usize>, CryptoError> {
        let len = datagram.len();
        if len < OVERHEAD {
            return Err(CryptoError::TooShort { len });
        }
        let (head, rest) = datagram.split_at_mut(header::LEN);
        if head[0] != header::TYPE_DATA {
            return Err(CryptoError::NotData { kind: head[0] });
        }
        if head[1..4] != [0, 0, 0] {
            return Err(CryptoError::Reserved);
        }
        let mut counter_bytes = [0u8; 8];
        counter_bytes.copy_from_slice(&head[8..16]);
        let counter = u64::from_be_bytes(counter_bytes);
        if !self.window.check(counter) {
            return Err(CryptoError::Replay { counter });
        }
        let plain_len = self
            .key
            .open_in_place(nonce(&self.salt, counter), Aad::from(&*head), rest)
            .map_err(|_| CryptoError::Auth { counter })?
            .len();
        if !self.window.accept(counter) {
            return Err(CryptoError::Replay { counter });
        }
        Ok(header::LEN..header::LEN + plain_len)
    }
}

/// Both directions of one data session.
pub struct Session {
    pub send: SendKey,
    pub recv: RecvKey,
}

impl Session {
    pub fn new(keys: &SessionKeys) -> Result<Self, CryptoError> {
        Self::with_send_limit(keys, DEFAULT_SEND_LIMIT)
    }

    /// Like [`Session::new`] with a custom rekey limit (tests, or a more cautious policy).
    pub fn with_send_limit(keys: &SessionKeys, limit: u64) -> Result<Self, CryptoError> {
        Ok(Self { send: SendKey::new(&keys.send, limit)?, recv: RecvKey::new(&keys.recv)? })
    }

    /// See [`SendKey::seal`].
    pub fn seal(&mut self, buf: &mut [u8], payload_len: usize, rx_index: u32) -> Result<usize, CryptoError> {
        self.send.seal(buf, payload_len, rx_index)
    }

    /// See [`RecvKey::open`].
    pub fn open(&mut self, datagram: &mut [u8]) -> Result<Range<usize>, CryptoError> {
        self.recv.open(datagram)
    }
}
