//! The rolodex server state machine (one network, fixed key) under arbitrary traffic and time.
//!
//! Each step is one of: a raw datagram from some source; an authentic frame (sealed with the network key,
//! so it reaches registration, sync, connect and ready handling) with a fresh, stale or replayed sequence
//! number; or the clock moving (monotonic time and a wall clock that may jump). After every step, all
//! output must be a frame of at most `MAX_FRAME` bytes that opens under the key and comes from the
//! rolodex (empty sender). Nothing may panic.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use rolodex::proto::{Body, FrameKey, MAX_FRAME, Message};
use rolodex::server::{Server, ServerConfig};
use rolomesh_fuzz::{Unstructured, WALL0, body, name, pick_addr, register, seq_near, steered_datagram};

const NETWORK: &str = "fuzznet";
const KEY: [u8; 32] = [0x42; 32];
const MAX_STEPS: usize = 256;

fn sources() -> [SocketAddr; 5] {
    [
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1)), 51820),
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 2)), 51820),
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 2)), 40000),
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 9)), 6264),
        SocketAddr::new(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)), 51820),
    ]
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});

fn run(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let start = Instant::now();
    let cfg = ServerConfig {
        heartbeat: Duration::from_secs(10),
        timeout: Duration::from_secs(30),
        freshness: Duration::from_secs(60),
    };
    let mut server = Server::new(cfg, &[(NETWORK.to_string(), KEY)], start, 7);
    let key = FrameKey::new(NETWORK, &KEY);
    let srcs = sources();
    let mut now = start;
    let mut wall = WALL0;
    let mut sent: Vec<Vec<u8>> = Vec::new();
    let mut nonce = 0u64;

    for _ in 0..MAX_STEPS {
        if u.is_empty() {
            break;
        }
        match u.int_in_range(0..=9u8)? {
            // Garbage (mostly steered to look like a rolodex frame) from anywhere.
            0 => {
                let src = pick_addr(u, &srcs)?;
                let mut d = steered_datagram(u)?;
                if u.arbitrary()? && d.len() > 2 {
                    // Our magic and version, so the network-name parsing and lookup run.
                    d[0] = 0x52;
                    d[1] = 1;
                }
                let _ = server.handle(now, wall, src, &d);
            }
            // Replay something we sent before (or a tampered copy).
            1 if !sent.is_empty() => {
                let i = u.choose_index(sent.len())?;
                let mut d = sent[i].clone();
                if u.arbitrary()? {
                    let j = u.choose_index(d.len())?;
                    d[j] ^= u.int_in_range(1..=255u8)?;
                }
                let src = pick_addr(u, &srcs)?;
                let _ = server.handle(now, wall, src, &d);
            }
            // Time passes; sweeps run when due.
            2 => {
                let ms: u32 = u.int_in_range(0..=120_000)?;
                let d = Duration::from_millis(ms.into());
                now += d;
                wall = wall.saturating_add(d.as_micros() as u64);
                server.handle_timeout(now, wall);
            }
            // The wall clock jumps (NTP step) without monotonic time moving.
            3 => {
                let delta: i32 = u.arbitrary()?;
                wall = wall.saturating_add_signed(i64::from(delta) * 1000);
            }
            // Authentic frames: mostly registrations, also everything else a member could send.
            k => {
                let sender = name(u, 0, 63)?;
                let seq = seq_near(u, wall)?;
                let b = match k {
                    4..=6 => Body::Register(register(u)?),
                    7 => Body::Sync,
                    _ => body(u)?,
                };
                let msg = Message { seq, sender, body: b };
                nonce += 1;
                let mut n = [0u8; 12];
                n[4..].copy_from_slice(&nonce.to_be_bytes());
                if let Ok(frame) = key.seal(&msg, n) {
                    let src = pick_addr(u, &srcs)?;
                    let _ = server.handle(now, wall, src, &frame);
                    if sent.len() < 64 {
                        sent.push(frame);
                    }
                }
            }
        }
        drain(&mut server, &key);
        let _ = server.poll_timeout();
        assert!(server.member_count(NETWORK) <= MAX_STEPS);
    }
    Ok(())
}

fn drain(server: &mut Server, key: &FrameKey) {
    while let Some(t) = server.poll_transmit() {
        assert!(t.payload.len() <= MAX_FRAME, "{} byte frame to {}", t.payload.len(), t.dst);
        let msg = key.open(&t.payload).unwrap_or_else(|e| panic!("server sent an unopenable frame: {e}"));
        assert!(msg.sender.is_empty(), "server frame with sender {:?}", msg.sender);
        assert!(
            matches!(msg.body, Body::Ack(_) | Body::Peers { .. } | Body::Gone { .. } | Body::Ready { .. }),
            "server sent {:?}",
            msg.body
        );
    }
}
