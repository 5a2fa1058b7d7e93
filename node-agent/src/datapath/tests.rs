//! The batched packet path between two engines linked over the simulated internet: grouping into GSO
//! runs, opening GRO trains, rejection of tampered and replayed datagrams, and no allocation per packet.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::Ipv4Addr;

use super::*;
use crate::engine::tests::sim::{Sim, ipv4_packet, secs};
use crate::gro::tests::tcp;
use crate::gro::{Merge, next_merge};
use std::net::IpAddr;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

/// Counts allocations per thread, so tests running in parallel do not disturb each other.
struct Counting;

// SAFETY: forwards to the system allocator unchanged, only counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

const MTU: u32 = 1420;

/// Two public hosts with their link up.
fn linked() -> (Sim, usize, usize) {
    let mut s = Sim::new(7);
    let a = s.add_public_host("node-a", 51820);
    let b = s.add_public_host("node-b", 51820);
    s.run_until_cond(secs(10), |s| s.up(a, b) && s.up(b, a)).expect("link up");
    (s, a, b)
}

/// Puts `pkts` into the outbound buffers as a TUN read would, then seals them on host `h`.
fn read_and_seal(s: &mut Sim, h: usize, tx: &mut Outbound, pkts: &[Vec<u8>]) {
    let now = s.now;
    let (_, bufs, sizes) = tx.next_read();
    for ((buf, size), p) in bufs.iter_mut().zip(sizes.iter_mut()).zip(pkts) {
        buf[HEADROOM..HEADROOM + p.len()].copy_from_slice(p);
        *size = p.len();
    }
    tx.seal_read(s.engine_mut(h), now, pkts.len());
}

/// Every run of `tx`, as (datagram count, segment size, destination).
fn runs(tx: &Outbound) -> Vec<(usize, usize, SocketAddr)> {
    let mut out = vec![];
    let mut from = 0;
    while let Some((run, dst, seg)) = tx.next_run(from) {
        from = run.end;
        out.push((run.len(), seg, dst));
    }
    out
}

/// Delivers the sealed datagrams of `tx` to host `to` as GRO trains, one per run; returns what it opened.
fn deliver(s: &mut Sim, from: usize, to: usize, tx: &Outbound, rx: &mut Inbound) -> Vec<Vec<u8>> {
    let src = s.endpoint(to, from).expect("peer endpoint");
    rx.recv.reset();
    let mut at = 0;
    while let Some((run, _, seg)) = tx.next_run(at) {
        at = run.end;
        let mut slices: [&[u8]; MAX_SEGMENTS] = [&[]; MAX_SEGMENTS];
        let n = tx.datagrams(run, &mut slices);
        let train: Vec<u8> = slices[..n].concat();
        rx.recv.push(src, seg, &train);
    }
    let (now, wall) = (s.now, s.wall());
    rx.open(s.engine_mut(to), now, wall);
    (0..rx.len()).map(|i| rx.packet(i).to_vec()).collect()
}

fn packets(s: &Sim, a: usize, b: usize, count: usize, len: usize) -> Vec<Vec<u8>> {
    let (src, dst) = (s.hosts[a].overlay, s.hosts[b].overlay);
    (0..count).map(|i| ipv4_packet(src, dst, &vec![i as u8; len - 20])).collect()
}

#[test]
fn a_split_segment_leaves_as_gso_runs_and_arrives_intact() {
    let (mut s, a, b) = linked();
    let mut tx = Outbound::new(MTU);
    let mut rx = Inbound::new();
    // What a 64 KiB TSO read splits into: 46 full packets and a short tail.
    let mut pkts = packets(&s, a, b, 46, MTU as usize);
    pkts.extend(packets(&s, a, b, 1, 300));
    read_and_seal(&mut s, a, &mut tx, &pkts);
    let dst = s.endpoint(a, b).expect("endpoint");
    let seg = MTU as usize + OVERHEAD;
    // 45 datagrams of 1452 bytes fill a GSO send's 65507 bytes; the rest (one full, one short) is a second.
    assert_eq!(runs(&tx), vec![(45, seg, dst), (2, seg, dst)]);
    assert_eq!(deliver(&mut s, a, b, &tx, &mut rx), pkts, "all delivered, in order, unchanged");
}

#[test]
fn runs_break_at_destination_size_and_segment_limits() {
    let mut s = Sim::new(8);
    let a = s.add_public_host("node-a", 51820);
    let b = s.add_public_host("node-b", 51820);
    let c = s.add_public_host("node-c", 51820);
    s.run_until_cond(secs(10), |s| s.all_up(&[a, b, c])).expect("mesh up");
    let mut tx = Outbound::new(MTU);
    let mut pkts = packets(&s, a, b, 3, 100);
    pkts.extend(packets(&s, a, c, 2, 100)); // another peer
    pkts.extend(packets(&s, a, c, 1, 200)); // longer than the run's segments: a new run
    pkts.extend(packets(&s, a, c, 70, 64)); // the first may end the 200-byte run as its short last one

    read_and_seal(&mut s, a, &mut tx, &pkts);
    let (eb, ec) = (s.endpoint(a, b).expect("b"), s.endpoint(a, c).expect("c"));
    let o = OVERHEAD;
    let want = vec![(3, 100 + o, eb), (2, 100 + o, ec), (2, 200 + o, ec), (64, 64 + o, ec), (5, 64 + o, ec)];
    assert_eq!(runs(&tx), want, "at most 64 segments per send");
}

#[test]
fn packets_without_a_route_are_dropped_and_skipped_by_runs() {
    let (mut s, a, b) = linked();
    let mut tx = Outbound::new(MTU);
    let mut pkts = packets(&s, a, b, 2, 500);
    pkts.insert(1, ipv4_packet(s.hosts[a].overlay, Ipv4Addr::new(100, 64, 9, 9), &[0; 480]));
    read_and_seal(&mut s, a, &mut tx, &pkts);
    let dst = s.endpoint(a, b).expect("endpoint");
    assert_eq!(runs(&tx), vec![(1, 500 + OVERHEAD, dst), (1, 500 + OVERHEAD, dst)]);
}

#[test]
fn tampered_and_replayed_datagrams_in_a_train_are_never_delivered() {
    let (mut s, a, b) = linked();
    let mut tx = Outbound::new(MTU);
    let mut rx = Inbound::new();
    let pkts = packets(&s, a, b, 10, 1000);
    read_and_seal(&mut s, a, &mut tx, &pkts);
    tx.bufs[3][HEADROOM + 40] ^= 1; // a flipped ciphertext bit in the fourth datagram
    let got = deliver(&mut s, a, b, &tx, &mut rx);
    let mut want = pkts.clone();
    want.remove(3);
    assert_eq!(got, want, "only the tampered datagram is lost");
    assert!(deliver(&mut s, a, b, &tx, &mut rx).is_empty(), "a replayed train delivers nothing");
}

#[test]
fn a_full_receive_batch_opens_every_train() {
    let (mut s, a, b) = linked();
    let mut rx = Inbound::new();
    let mut want = vec![];
    let src = s.endpoint(b, a).expect("endpoint");
    rx.recv.reset();
    for _ in 0..crate::udp::RECV_SLOTS {
        let mut tx = Outbound::new(MTU);
        let pkts = packets(&s, a, b, 64, 200);
        read_and_seal(&mut s, a, &mut tx, &pkts);
        let (run, _, seg) = tx.next_run(0).expect("a run");
        let mut slices: [&[u8]; MAX_SEGMENTS] = [&[]; MAX_SEGMENTS];
        let n = tx.datagrams(run, &mut slices);
        rx.recv.push(src, seg, &slices[..n].concat());
        want.extend(pkts);
    }
    let (now, wall) = (s.now, s.wall());
    rx.open(s.engine_mut(b), now, wall);
    let got: Vec<Vec<u8>> = (0..rx.len()).map(|i| rx.packet(i).to_vec()).collect();
    assert_eq!(got.len(), 16 * 64);
    assert_eq!(got, want);
}

#[test]
fn steady_state_batches_do_not_allocate() {
    let (mut s, a, b) = linked();
    let mut tx = Outbound::new(MTU);
    let mut rx = Inbound::new();
    // TCP segments of one flow, so the TUN writer's coalescing runs too.
    let (from, to) = (IpAddr::V4(s.hosts[a].overlay), IpAddr::V4(s.hosts[b].overlay));
    let mss = MTU as usize - 52;
    let pkts: Vec<Vec<u8>> =
        (0..45).map(|i| tcp(from, to, 40000, (i * mss) as u32, 0x10, &vec![i as u8; mss])).collect();
    let src = s.endpoint(b, a).expect("endpoint");
    let (now, wall) = (s.now, s.wall());
    let mut train = vec![0u8; 45 * (MTU as usize + OVERHEAD)];
    let mut round = |tx: &mut Outbound, rx: &mut Inbound, s: &mut Sim| -> usize {
        tx.clear();
        let (_, bufs, sizes) = tx.next_read();
        for ((buf, size), p) in bufs.iter_mut().zip(sizes.iter_mut()).zip(&pkts) {
            buf[HEADROOM..HEADROOM + p.len()].copy_from_slice(p);
            *size = p.len();
        }
        tx.seal_read(s.engine_mut(a), now, pkts.len());
        let (run, _, seg) = tx.next_run(0).expect("run");
        let mut slices: [&[u8]; MAX_SEGMENTS] = [&[]; MAX_SEGMENTS];
        let n = tx.datagrams(run, &mut slices);
        let mut len = 0;
        for d in &slices[..n] {
            train[len..len + d.len()].copy_from_slice(d);
            len += d.len();
        }
        rx.recv.reset();
        rx.recv.push(src, seg, &train[..len]);
        rx.open(s.engine_mut(b), now, wall);
        // What the TUN writer does: plan the coalesced writes.
        let mut m = Merge::default();
        next_merge(|k| rx.packet(k), rx.len(), 0, true, &mut m);
        assert_eq!((m.start, m.end), (0, 45), "one coalesced write");
        rx.len()
    };
    // Warm up: lazily initialised state (CPU feature detection, first packet counters) may allocate once.
    for _ in 0..3 {
        assert_eq!(round(&mut tx, &mut rx, &mut s), 45);
    }
    let probe = allocations();
    drop(std::hint::black_box(vec![0u8; 8]));
    assert!(allocations() > probe, "the counter works");
    let before = allocations();
    let mut delivered = 0;
    for _ in 0..200 {
        delivered += round(&mut tx, &mut rx, &mut s);
    }
    assert_eq!(delivered, 200 * 45);
    assert_eq!(allocations() - before, 0, "allocations while sealing, grouping and opening 9000 packets");
}
