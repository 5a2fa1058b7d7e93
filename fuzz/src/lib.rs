//! Helpers shared by the fuzz targets: turning fuzzer bytes into protocol values that the real encoders
//! accept, so the targets reach the code behind the AEADs and MACs instead of stopping at them.
//!
//! Everything here is deterministic in the input bytes. When the input runs out, `Unstructured` yields
//! zeros/defaults, so every helper still terminates.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub use arbitrary::{Result, Unstructured};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use rolodex::IpNet;
use rolodex::proto::{
    self, Ack, Body, Listing, MAX_CANDIDATES, MAX_NAME, MAX_OVERLAY, MAX_ROUTES, Message, PeerEntry, Register,
};

/// A plausible wall clock (2027) in microseconds since the Unix epoch.
pub const WALL0: u64 = 1_800_000_000_000_000;

/// Names the targets use for their actors; the fuzzer picks them often so that messages hit known state.
pub const NAMES: [&str; 4] = ["node-a", "node-b", "node-c", "x"];

pub fn ip(u: &mut Unstructured<'_>) -> Result<IpAddr> {
    Ok(if u.arbitrary::<bool>()? {
        IpAddr::V6(Ipv6Addr::from(u.arbitrary::<u128>()?))
    } else {
        IpAddr::V4(Ipv4Addr::from(u.arbitrary::<u32>()?))
    })
}

pub fn socket_addr(u: &mut Unstructured<'_>) -> Result<SocketAddr> {
    Ok(SocketAddr::new(ip(u)?, u.arbitrary()?))
}

/// One of `known`, or (one time in four) any address.
pub fn pick_addr(u: &mut Unstructured<'_>, known: &[SocketAddr]) -> Result<SocketAddr> {
    let i = u.int_in_range(0..=known.len() * 4 / 3)?;
    match known.get(i) {
        Some(a) => Ok(*a),
        None => socket_addr(u),
    }
}

/// A valid prefix (length within the family's bound).
pub fn ipnet(u: &mut Unstructured<'_>) -> Result<IpNet> {
    let addr = ip(u)?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = u.int_in_range(0..=max)?;
    Ok(IpNet::new(addr, len).unwrap_or_else(|_| IpNet::host(addr)))
}

/// A UTF-8 string of `min..=max` bytes: usually one of [`NAMES`], otherwise fuzzer text cut at a char
/// boundary.
pub fn name(u: &mut Unstructured<'_>, min: usize, max: usize) -> Result<String> {
    let pick = u.int_in_range(0..=NAMES.len() + 1)?;
    let mut s = match NAMES.get(pick) {
        Some(n) => (*n).to_string(),
        None => <&str as arbitrary::Arbitrary>::arbitrary(u)?.to_string(),
    };
    while s.len() > max {
        s.pop();
    }
    if s.len() < min {
        s = "n".repeat(min);
    }
    Ok(s)
}

fn list<T>(
    u: &mut Unstructured<'_>,
    max: usize,
    mut f: impl FnMut(&mut Unstructured<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    let n = u.int_in_range(0..=max)?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        if u.is_empty() {
            break;
        }
        v.push(f(u)?);
    }
    Ok(v)
}

pub fn peer_entry(u: &mut Unstructured<'_>) -> Result<PeerEntry> {
    Ok(PeerEntry {
        name: name(u, 1, MAX_NAME)?,
        incarnation: u.arbitrary()?,
        overlay: list(u, MAX_OVERLAY, ipnet)?,
        routes: list(u, MAX_ROUTES, ipnet)?,
        reflexive: socket_addr(u)?,
        candidates: list(u, MAX_CANDIDATES, socket_addr)?,
    })
}

pub fn register(u: &mut Unstructured<'_>) -> Result<Register> {
    Ok(Register {
        incarnation: u.arbitrary()?,
        overlay: list(u, MAX_OVERLAY, ipnet)?,
        routes: list(u, MAX_ROUTES, ipnet)?,
        candidates: list(u, MAX_CANDIDATES, socket_addr)?,
        view_digest: u.arbitrary()?,
    })
}

/// Any body the wire format can carry, within every protocol limit (so encoding is lossless).
pub fn body(u: &mut Unstructured<'_>) -> Result<Body> {
    Ok(match u.int_in_range(0..=6u8)? {
        0 => Body::Register(register(u)?),
        1 => Body::Ack(Ack {
            reflexive: socket_addr(u)?,
            boot_id: u.arbitrary()?,
            heartbeat_ms: u.arbitrary()?,
            timeout_ms: u.arbitrary()?,
            members: u.arbitrary()?,
            view_digest: u.arbitrary()?,
        }),
        2 => {
            let introduce = u.arbitrary()?;
            let listing = if u.arbitrary()? {
                let pages = u.int_in_range(1..=u16::MAX)?;
                Some(Listing { id: u.arbitrary()?, page: u.int_in_range(0..=pages - 1)?, pages })
            } else {
                None
            };
            Body::Peers { introduce, listing, entries: list(u, 24, peer_entry)? }
        }
        3 => Body::Gone { peers: list(u, 40, |u| Ok((name(u, 0, MAX_NAME)?, u.arbitrary()?)))? },
        4 => Body::Sync,
        5 => Body::Connect { peer: name(u, 0, MAX_NAME)? },
        _ => Body::Ready { peer: name(u, 0, MAX_NAME)? },
    })
}

pub fn message(u: &mut Unstructured<'_>, seq: u64) -> Result<Message> {
    Ok(Message { seq, sender: name(u, 0, MAX_NAME)?, body: body(u)? })
}

/// A sequence number near `wall_us` (usually fresh), or any value.
pub fn seq_near(u: &mut Unstructured<'_>, wall_us: u64) -> Result<u64> {
    Ok(match u.int_in_range(0..=7u8)? {
        0 => u.arbitrary()?,
        1 => wall_us.saturating_sub(u.arbitrary::<u32>()?.into()),
        _ => wall_us.saturating_add(u.arbitrary::<u16>()?.into()),
    })
}

/// Builds a rolodex frame around arbitrary plaintext, exactly as `FrameKey::seal` lays it out
/// (`0x52 | 1 | len | network | nonce | AES-256-GCM(plain) | tag`), so the body decoder sees any bytes.
pub fn seal_raw_frame(network: &str, key: &[u8; 32], nonce: [u8; 12], plain: &[u8]) -> Vec<u8> {
    let mut frame = vec![proto::MAGIC, proto::VERSION, network.len() as u8];
    frame.extend_from_slice(network.as_bytes());
    let header_len = frame.len();
    frame.extend_from_slice(&nonce);
    let mut body = plain.to_vec();
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("32-byte key"));
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&frame[..header_len]),
            &mut body,
        )
        .expect("seal");
    frame.extend_from_slice(&body);
    frame.extend_from_slice(tag.as_ref());
    frame
}

/// An IP packet with a sane header: version 4 or 6, the given addresses, protocol UDP, `payload` after.
pub fn ip_packet(src: IpAddr, dst: IpAddr, payload: &[u8]) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = (20 + payload.len()).min(usize::from(u16::MAX)) as u16;
            let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
            p[2..4].copy_from_slice(&total.to_be_bytes());
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(payload);
            p
        }
        _ => {
            let to6 = |a: IpAddr| match a {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            let plen = payload.len().min(usize::from(u16::MAX)) as u16;
            let mut p = vec![0x60, 0, 0, 0];
            p.extend_from_slice(&plen.to_be_bytes());
            p.extend_from_slice(&[17, 64]);
            p.extend_from_slice(&to6(src).octets());
            p.extend_from_slice(&to6(dst).octets());
            p.extend_from_slice(payload);
            p
        }
    }
}

/// A datagram whose first byte is steered among the values the agent dispatches on (data, ping, pong,
/// DTLS content types, rolodex magic), followed by fuzzer bytes.
pub fn steered_datagram(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    const FIRST: [u8; 10] = [0x01, 0x02, 0x03, 20, 21, 22, 23, 24, 25, proto::MAGIC];
    let first = *u.choose(&FIRST)?;
    let mut d = vec![first];
    d.extend(take(u, 0, 1400)?);
    Ok(d)
}

/// `min..=max` fuzzer bytes (fewer if the input runs out).
pub fn take(u: &mut Unstructured<'_>, min: usize, max: usize) -> Result<Vec<u8>> {
    let n = u.int_in_range(min..=max)?.min(u.len());
    Ok(u.bytes(n)?.to_vec())
}
