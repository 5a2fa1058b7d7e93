//! The DTLS 1.2 PSK handshake (`agent::dtls::Handshake`, over rtc-dtls) on untrusted datagrams.
//!
//! Mode by first byte:
//! * lone server or lone client (which has queued its ClientHello) fed datagrams: raw bytes, or records and
//!   handshake messages framed by the harness with consistent lengths (so rtc-dtls's parsers get past
//!   framing), interleaved with timer steps;
//! * a client and a server talking through a fuzzer-controlled network that delivers, drops, duplicates,
//!   reorders, corrupts and injects datagrams, and moves time.
//!
//! Nothing may panic. An established pair must agree on keys and identities.

#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::dtls::{AcceptIdentity, Handshake, Role, is_client_hello, is_dtls};
use libfuzzer_sys::fuzz_target;
use rolomesh_fuzz::{Unstructured, take};

const PSK: [u8; 32] = [7; 32];
const CLIENT_ID: &[u8] = b"rm1;alpha;0000000000000001;00010001";
const SERVER_ID: &[u8] = b"rm1;bravo;0000000000000002;00020001";
const MAX_STEPS: usize = 128;

fn accept() -> AcceptIdentity {
    Arc::new(|id: &[u8]| id.starts_with(b"rm1;"))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let u = &mut Unstructured::new(rest);
    let _ = match mode % 3 {
        0 => lone(u, Role::Server),
        1 => lone(u, Role::Client),
        _ => pair(u),
    };
});

/// A DTLS record: content type 20..=25, DTLS 1.2 (or fuzzer) version, epoch, sequence, body.
fn record(u: &mut Unstructured<'_>, content: u8, body: &[u8]) -> arbitrary::Result<Vec<u8>> {
    let version: [u8; 2] = if u.arbitrary()? { [0xfe, 0xfd] } else { u.arbitrary()? };
    let epoch: u16 = if u.arbitrary()? { 0 } else { u.int_in_range(0..=2)? };
    let seq: u64 = u.int_in_range(0..=16)?;
    let mut r = vec![content];
    r.extend_from_slice(&version);
    r.extend_from_slice(&epoch.to_be_bytes());
    r.extend_from_slice(&seq.to_be_bytes()[2..]);
    r.extend_from_slice(&(body.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
    r.extend_from_slice(body);
    Ok(r)
}

/// A handshake message (type, length, message_seq, fragment offset/length, body), usually unfragmented.
fn handshake_msg(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<u8>> {
    // hello_request, client_hello, server_hello, hello_verify_request, certificate, server_key_exchange,
    // certificate_request, server_hello_done, certificate_verify, client_key_exchange, finished.
    const TYPES: [u8; 11] = [0, 1, 2, 3, 11, 12, 13, 14, 15, 16, 20];
    let ty = *u.choose(&TYPES)?;
    let body = take(u, 0, 300)?;
    let len = body.len() as u32;
    let msg_seq: u16 = u.int_in_range(0..=6)?;
    let (off, frag) = if u.ratio(1u8, 4)? {
        let off = u.int_in_range(0..=len)?;
        (off, len - off)
    } else {
        (0, len)
    };
    let mut m = vec![ty];
    m.extend_from_slice(&len.to_be_bytes()[1..]);
    m.extend_from_slice(&msg_seq.to_be_bytes());
    m.extend_from_slice(&off.to_be_bytes()[1..]);
    m.extend_from_slice(&frag.to_be_bytes()[1..]);
    m.extend_from_slice(&body[off as usize..]);
    Ok(m)
}

/// One datagram: raw bytes, or one to three harness-framed records.
fn datagram(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<u8>> {
    if u.ratio(1u8, 5)? {
        return take(u, 0, 400);
    }
    let mut d = Vec::new();
    for _ in 0..u.int_in_range(1..=3u8)? {
        let content = u.int_in_range(20..=25u8)?;
        let body = match content {
            22 if u.ratio(3u8, 4)? => handshake_msg(u)?,
            // change_cipher_spec is one byte 1; alerts are level and description.
            20 if u.arbitrary()? => vec![1],
            21 if u.arbitrary()? => vec![u.int_in_range(1..=2)?, u.arbitrary()?],
            _ => take(u, 0, 200)?,
        };
        d.extend(record(u, content, &body)?);
    }
    Ok(d)
}

fn step_time(u: &mut Unstructured<'_>, now: &mut Instant) -> arbitrary::Result<()> {
    let ms: u32 = u.int_in_range(0..=25_000)?;
    *now += Duration::from_millis(ms.into());
    Ok(())
}

fn timers(h: &mut Handshake, now: Instant) {
    if h.poll_timeout().is_some_and(|t| t <= now) {
        let _ = h.handle_timeout(now);
    }
}

fn lone(u: &mut Unstructured<'_>, role: Role) -> arbitrary::Result<()> {
    let mut now = Instant::now();
    let id = if role == Role::Server { SERVER_ID } else { CLIENT_ID };
    let mut h = Handshake::new(role, now, id.to_vec(), PSK, accept()).expect("handshake");
    let mut sent = Vec::new();
    while let Some(d) = h.poll_transmit() {
        sent.push(d.to_vec());
    }
    for _ in 0..MAX_STEPS {
        if u.is_empty() {
            break;
        }
        if u.ratio(1u8, 6)? {
            step_time(u, &mut now)?;
            timers(&mut h, now);
        } else {
            let d = datagram(u)?;
            let _ = is_dtls(&d);
            let _ = is_client_hello(&d);
            let _ = h.handle_datagram(now, &d);
        }
        while let Some(d) = h.poll_transmit() {
            assert!(is_dtls(&d), "sent a non-DTLS datagram");
            if sent.len() < 32 {
                sent.push(d.to_vec());
            }
        }
        let _ = (h.failed(), h.failure(), h.is_established(), h.poll_timeout());
    }
    // Our own output fed back to us (reflection) must not break anything either.
    for d in sent {
        let _ = h.handle_datagram(now, &d);
    }
    Ok(())
}

fn pair(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let mut now = Instant::now();
    let mut client = Handshake::new(Role::Client, now, CLIENT_ID.to_vec(), PSK, accept()).expect("client");
    let mut server = Handshake::new(Role::Server, now, SERVER_ID.to_vec(), PSK, accept()).expect("server");
    // In flight: (to_server, datagram).
    let mut net: Vec<(bool, Vec<u8>)> = Vec::new();
    for _ in 0..MAX_STEPS {
        while let Some(d) = client.poll_transmit() {
            net.push((true, d.to_vec()));
        }
        while let Some(d) = server.poll_transmit() {
            net.push((false, d.to_vec()));
        }
        net.truncate(256);
        if u.is_empty() {
            break;
        }
        match u.int_in_range(0..=7u8)? {
            // Deliver the oldest (most often) or any datagram in flight.
            0..=2 if !net.is_empty() => {
                let i = if u.arbitrary()? { 0 } else { u.choose_index(net.len())? };
                let (to_server, d) = net.remove(i);
                let h = if to_server { &mut server } else { &mut client };
                let _ = h.handle_datagram(now, &d);
            }
            // Drop one.
            3 if !net.is_empty() => {
                let i = u.choose_index(net.len())?;
                net.remove(i);
            }
            // Corrupt one (byte flips or truncation), then deliver it.
            4 if !net.is_empty() => {
                let i = u.choose_index(net.len())?;
                let (to_server, mut d) = net.remove(i);
                if u.arbitrary()? {
                    for _ in 0..u.int_in_range(1..=4u8)? {
                        let j = u.choose_index(d.len())?;
                        d[j] ^= u.int_in_range(1..=255u8)?;
                    }
                } else {
                    d.truncate(u.choose_index(d.len())?);
                }
                let h = if to_server { &mut server } else { &mut client };
                let _ = h.handle_datagram(now, &d);
            }
            // Duplicate one.
            5 if !net.is_empty() => {
                let i = u.choose_index(net.len())?;
                let copy = net[i].clone();
                net.push(copy);
            }
            // Inject a crafted datagram.
            6 => {
                let d = datagram(u)?;
                let h = if u.arbitrary()? { &mut server } else { &mut client };
                let _ = h.handle_datagram(now, &d);
            }
            _ => {
                step_time(u, &mut now)?;
                timers(&mut client, now);
                timers(&mut server, now);
            }
        }
    }
    if std::env::var_os("ROLOMESH_FUZZ_DEBUG").is_some() {
        eprintln!("pair: client established {} failed {}", client.is_established(), client.failed());
        eprintln!("pair: server established {} failed {}", server.is_established(), server.failed());
    }
    if let (Some(c), Some(s)) = (client.established(), server.established()) {
        assert_eq!(c.keys.send, s.keys.recv, "client and server disagree on keys");
        assert_eq!(c.keys.recv, s.keys.send, "client and server disagree on keys");
        assert_eq!(c.peer_identity, SERVER_ID);
        assert_eq!(s.peer_identity, CLIENT_ID);
    }
    Ok(())
}
