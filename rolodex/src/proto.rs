//! The rolodex wire protocol: binary, versioned, authenticated and encrypted.
//!
//! Frame (one UDP datagram):
//! ```text
//! 0x52 'R' | version 1 | name len L | network name (L bytes) | nonce (12) | AES-256-GCM(body) | tag (16)
//! ```
//! The header is the AEAD's associated data, so the network name is authenticated but readable: the
//! rolodex needs it to pick the key. The body starts with `kind | seq (u64) | sender name`; `seq` is the
//! sender's clock in microseconds since the Unix epoch, made strictly increasing, which gives replay
//! protection (a receiver accepts only increasing values within a freshness window) without a handshake.

use std::net::SocketAddr;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

use crate::codec::{DecodeError, Reader, Writer};
use crate::net::IpNet;

pub const MAGIC: u8 = 0x52;
pub const VERSION: u8 = 1;
pub const DEFAULT_PORT: u16 = 6264;
/// Frames are kept below this so they pass any path without IP fragmentation.
pub const MAX_FRAME: usize = 1200;
pub const MAX_NAME: usize = 63;
pub const MAX_OVERLAY: usize = 4;
pub const MAX_ROUTES: usize = 32;
pub const MAX_CANDIDATES: usize = 8;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// What a member knows about a peer, as relayed by the rolodex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerEntry {
    pub name: String,
    /// Random per agent start: a new value means the peer restarted.
    pub incarnation: u64,
    pub overlay: Vec<IpNet>,
    pub routes: Vec<IpNet>,
    /// The peer's address as the rolodex saw it (its outermost NAT mapping).
    pub reflexive: SocketAddr,
    /// The peer's own interface addresses, for peers on the same LAN.
    pub candidates: Vec<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Register {
    pub incarnation: u64,
    pub overlay: Vec<IpNet>,
    pub routes: Vec<IpNet>,
    pub candidates: Vec<SocketAddr>,
    /// Digest of the member's view of the network (see [`digest`]); a mismatch triggers a full sync.
    pub view_digest: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub reflexive: SocketAddr,
    /// Random per rolodex start, so members notice a restart and resend what it forgot.
    pub boot_id: u64,
    pub heartbeat_ms: u32,
    pub timeout_ms: u32,
    pub members: u32,
    /// Digest of the network as this member should see it (all members except itself).
    pub view_digest: u64,
}

/// Page `page` of `pages` of complete member list number `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listing {
    pub id: u32,
    pub page: u16,
    pub pages: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// Member -> rolodex; doubles as the heartbeat.
    Register(Register),
    /// Rolodex -> member, answering every Register.
    Ack(Ack),
    /// Rolodex -> member. `introduce` asks both sides to punch now. `listing` marks one page of a complete
    /// member list, after which the receiver drops peers the list lacks; without it the entries are a delta.
    Peers { introduce: bool, listing: Option<Listing>, entries: Vec<PeerEntry> },
    /// Rolodex -> member: these peers (name, incarnation) left or timed out.
    Gone { peers: Vec<(String, u64)> },
    /// Member -> rolodex: send me the full member list.
    Sync,
    /// Member -> rolodex: introduce me and `peer` to each other again (both punch).
    Connect { peer: String },
    /// Member -> rolodex: "my NAT now has a mapping toward `peer`" (low-TTL probes sent); forwarded to `peer`
    /// with `peer` set to the sender. Its normal probes can then no longer race ahead of our mapping.
    Ready { peer: String },
}

impl Body {
    fn kind(&self) -> u8 {
        match self {
            Body::Register(_) => 1,
            Body::Ack(_) => 2,
            Body::Peers { .. } => 3,
            Body::Gone { .. } => 4,
            Body::Sync => 5,
            Body::Connect { .. } => 6,
            Body::Ready { .. } => 7,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub seq: u64,
    /// The member's name, or empty for the rolodex.
    pub sender: String,
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("not a rolodex frame")]
    NotRolodex,
    #[error("unsupported protocol version {0}")]
    Version(u8),
    #[error("malformed frame: {0}")]
    Decode(#[from] DecodeError),
    #[error("authentication failed")]
    Auth,
    #[error("frame would exceed {MAX_FRAME} bytes")]
    TooLarge,
}

/// The network name from a frame's header, to find the key before authenticating the rest.
pub fn peek_network(frame: &[u8]) -> Result<&str, FrameError> {
    let mut r = Reader::new(frame);
    if r.u8()? != MAGIC {
        return Err(FrameError::NotRolodex);
    }
    let v = r.u8()?;
    if v != VERSION {
        return Err(FrameError::Version(v));
    }
    Ok(r.str(MAX_NAME, "network name")?)
}

/// A network's rolodex key, ready to seal and open frames.
pub struct FrameKey {
    network: String,
    key: LessSafeKey,
}

impl FrameKey {
    pub fn new(network: &str, key: &[u8; 32]) -> Self {
        // Infallible for a 32-byte key, which the type guarantees.
        let unbound = UnboundKey::new(&AES_256_GCM, key).unwrap_or_else(|_| unreachable!());
        Self { network: network.to_string(), key: LessSafeKey::new(unbound) }
    }

    pub fn network(&self) -> &str {
        &self.network
    }

    /// Encodes and encrypts `msg`. `nonce` must be unique per key: callers draw it from a CSPRNG
    /// (96 random bits; control traffic is far below the birthday bound).
    pub fn seal(&self, msg: &Message, nonce: [u8; NONCE_LEN]) -> Result<Vec<u8>, FrameError> {
        let mut w = Writer::default();
        w.u8(MAGIC);
        w.u8(VERSION);
        w.str(&self.network);
        let header_len = w.buf.len();
        w.bytes(&nonce);
        let body_at = w.buf.len();
        encode_body(&mut w, msg);
        if w.buf.len() + TAG_LEN > MAX_FRAME {
            return Err(FrameError::TooLarge);
        }
        let mut buf = w.buf;
        let (head, body) = buf.split_at_mut(body_at);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&head[..header_len]),
                body,
            )
            .map_err(|_| FrameError::Auth)?;
        buf.extend_from_slice(tag.as_ref());
        Ok(buf)
    }

    /// Authenticates, decrypts and decodes a frame for this key's network.
    pub fn open(&self, frame: &[u8]) -> Result<Message, FrameError> {
        if peek_network(frame)? != self.network {
            return Err(FrameError::Auth);
        }
        let header_len = 3 + self.network.len();
        let rest = &frame[header_len..];
        if rest.len() < NONCE_LEN + TAG_LEN {
            return Err(DecodeError::Truncated.into());
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&rest[..NONCE_LEN]);
        let mut body = rest[NONCE_LEN..].to_vec();
        let plain = self
            .key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(&frame[..header_len]), &mut body)
            .map_err(|_| FrameError::Auth)?;
        Ok(decode_body(plain)?)
    }
}

fn encode_body(w: &mut Writer, msg: &Message) {
    w.u8(msg.body.kind());
    w.u64(msg.seq);
    w.str(&msg.sender);
    match &msg.body {
        Body::Register(r) => {
            w.u64(r.incarnation);
            w.list(&r.overlay, MAX_OVERLAY, |w, n| w.ipnet(*n));
            w.list(&r.routes, MAX_ROUTES, |w, n| w.ipnet(*n));
            w.list(&r.candidates, MAX_CANDIDATES, |w, a| w.socket_addr(*a));
            w.u64(r.view_digest);
        }
        Body::Ack(a) => {
            w.socket_addr(a.reflexive);
            w.u64(a.boot_id);
            w.u32(a.heartbeat_ms);
            w.u32(a.timeout_ms);
            w.u32(a.members);
            w.u64(a.view_digest);
        }
        Body::Peers { introduce, listing, entries } => {
            w.u8(u8::from(*introduce) | (u8::from(listing.is_some()) << 1));
            if let Some(l) = listing {
                w.u32(l.id);
                w.u16(l.page);
                w.u16(l.pages);
            }
            w.list(entries, 255, encode_entry);
        }
        Body::Gone { peers } => w.list(peers, 255, |w, (n, inc)| {
            w.str(n);
            w.u64(*inc);
        }),
        Body::Sync => {}
        Body::Connect { peer } | Body::Ready { peer } => w.str(peer),
    }
}

fn encode_entry(w: &mut Writer, e: &PeerEntry) {
    w.str(&e.name);
    w.u64(e.incarnation);
    w.list(&e.overlay, MAX_OVERLAY, |w, n| w.ipnet(*n));
    w.list(&e.routes, MAX_ROUTES, |w, n| w.ipnet(*n));
    w.socket_addr(e.reflexive);
    w.list(&e.candidates, MAX_CANDIDATES, |w, a| w.socket_addr(*a));
}

/// Encoded size of a peer entry, for packing entries into frames.
pub fn entry_len(e: &PeerEntry) -> usize {
    let mut w = Writer::default();
    encode_entry(&mut w, e);
    w.buf.len()
}

/// Room for entries in one `Peers` frame of `network` with a sender name of `sender_len` bytes.
pub fn peers_budget(network: &str, sender_len: usize) -> usize {
    // header + nonce + kind + seq + sender + flags + listing + count + tag
    MAX_FRAME - (3 + network.len() + NONCE_LEN + 1 + 8 + 1 + sender_len + 1 + 8 + 1 + TAG_LEN)
}

fn decode_name(r: &mut Reader<'_>) -> Result<String, DecodeError> {
    let s = r.str(MAX_NAME, "member name")?;
    Ok(s.to_string())
}

fn decode_entry(r: &mut Reader<'_>) -> Result<PeerEntry, DecodeError> {
    let name = decode_name(r)?;
    if name.is_empty() {
        return Err(DecodeError::Invalid("member name"));
    }
    Ok(PeerEntry {
        name,
        incarnation: r.u64()?,
        overlay: r.list(MAX_OVERLAY, "overlay count", Reader::ipnet)?,
        routes: r.list(MAX_ROUTES, "route count", Reader::ipnet)?,
        reflexive: r.socket_addr()?,
        candidates: r.list(MAX_CANDIDATES, "candidate count", Reader::socket_addr)?,
    })
}

fn decode_body(buf: &[u8]) -> Result<Message, DecodeError> {
    let mut r = Reader::new(buf);
    let kind = r.u8()?;
    let seq = r.u64()?;
    let sender = decode_name(&mut r)?;
    let body = match kind {
        1 => Body::Register(Register {
            incarnation: r.u64()?,
            overlay: r.list(MAX_OVERLAY, "overlay count", Reader::ipnet)?,
            routes: r.list(MAX_ROUTES, "route count", Reader::ipnet)?,
            candidates: r.list(MAX_CANDIDATES, "candidate count", Reader::socket_addr)?,
            view_digest: r.u64()?,
        }),
        2 => Body::Ack(Ack {
            reflexive: r.socket_addr()?,
            boot_id: r.u64()?,
            heartbeat_ms: r.u32()?,
            timeout_ms: r.u32()?,
            members: r.u32()?,
            view_digest: r.u64()?,
        }),
        3 => {
            let flags = r.u8()?;
            if flags & !3 != 0 {
                return Err(DecodeError::Invalid("peers flags"));
            }
            let listing = if flags & 2 != 0 {
                let l = Listing { id: r.u32()?, page: r.u16()?, pages: r.u16()? };
                if l.page >= l.pages {
                    return Err(DecodeError::Invalid("listing page"));
                }
                Some(l)
            } else {
                None
            };
            let entries = r.list(255, "entry count", decode_entry)?;
            Body::Peers { introduce: flags & 1 != 0, listing, entries }
        }
        4 => Body::Gone { peers: r.list(255, "peer count", |r| Ok((decode_name(r)?, r.u64()?)))? },
        5 => Body::Sync,
        6 => Body::Connect { peer: decode_name(&mut r)? },
        7 => Body::Ready { peer: decode_name(&mut r)? },
        _ => return Err(DecodeError::Invalid("message kind")),
    };
    r.finish()?;
    Ok(Message { seq, sender, body })
}

/// Order-independent digest of a set of peers: XOR of a hash per (name, incarnation, reflexive address).
/// XOR lets the rolodex derive each member's view digest (everyone but itself) in O(1).
pub fn entry_hash(name: &str, incarnation: u64, reflexive: SocketAddr) -> u64 {
    // FNV-1a: stable across builds and platforms, which std's hashers are not promised to be.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    name.bytes().for_each(&mut eat);
    eat(0);
    incarnation.to_be_bytes().into_iter().for_each(&mut eat);
    let mut w = Writer::default();
    w.socket_addr(reflexive);
    w.buf.into_iter().for_each(&mut eat);
    h
}

#[cfg(test)]
mod tests;
