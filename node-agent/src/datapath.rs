//! The packet path in batches, between the TUN device and the UDP socket, with no allocation per packet.
//!
//! Outbound: one TUN read may return a 64 KiB TCP segment (TSO), split into MTU-sized packets in
//! [`Outbound::bufs`]; each is sealed in place and runs of equal-size datagrams to one peer leave as one GSO
//! send. Inbound: one `recvmmsg` returns GRO trains of datagrams; each is opened into its own buffer in
//! [`Inbound`], and the batch is written to TUN where TCP segments are coalesced again (GRO) before the
//! kernel sees them. The engine stays sans-IO: this module only arranges its per-packet calls.

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::ops::Range;
use std::time::Instant;

use crate::crypto::OVERHEAD;
use crate::engine::{Engine, HEADROOM, Inbound as Verdict};
use crate::tun::{GroTable, IDEAL_BATCH_SIZE, SCRATCH_LEN};
use crate::udp::{MAX_GSO_BYTES, MAX_SEGMENTS, RecvBatch};

/// Capacity of each inbound buffer: room to coalesce a 64 KiB segment behind the headroom.
const INBOUND_CAPACITY: usize = 2 * HEADROOM + 65536;

/// Sealed packets waiting to be sent, read from TUN in one or more batches.
pub struct Outbound {
    pub scratch: Vec<u8>,
    pub bufs: Vec<Vec<u8>>,
    pub sizes: Vec<usize>,
    /// Where sealed packet `i` goes and its datagram length; `None` when the engine dropped it.
    sealed: Vec<Option<(SocketAddr, usize)>>,
    len: usize,
    /// Packets one TUN read can split into: a read only starts with this much room left.
    max_split: usize,
}

impl Outbound {
    /// Buffers for packets of up to `mtu` bytes.
    pub fn new(mtu: u32) -> Self {
        let mtu = mtu as usize;
        // The smallest segment a 64 KiB TSO packet splits into is the MSS (MTU less 60 header bytes at worst).
        let max_split = 65535 / mtu.saturating_sub(60).max(64) + 1;
        let count = IDEAL_BATCH_SIZE.max(2 * max_split);
        Self {
            scratch: vec![0; SCRATCH_LEN],
            bufs: vec![vec![0; HEADROOM + mtu + OVERHEAD]; count],
            sizes: vec![0; count],
            sealed: vec![None; count],
            len: 0,
            max_split,
        }
    }

    /// Whether another TUN read fits.
    pub fn has_room(&self) -> bool {
        self.bufs.len() - self.len >= self.max_split
    }

    /// Where the next read goes: `(scratch, bufs, sizes)` for [`crate::tun::Tun::try_recv_batch`] with
    /// offset [`HEADROOM`].
    pub fn next_read(&mut self) -> (&mut [u8], &mut [Vec<u8>], &mut [usize]) {
        (&mut self.scratch, &mut self.bufs[self.len..], &mut self.sizes[self.len..])
    }

    /// Seals the `count` packets the last read produced.
    pub fn seal_read(&mut self, engine: &mut Engine, now: Instant, count: usize) {
        let end = (self.len + count).min(self.bufs.len());
        for i in self.len..end {
            self.sealed[i] = engine.encrypt_outbound(now, &mut self.bufs[i], self.sizes[i]);
        }
        self.len = end;
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The next run of sealed datagrams starting at or after `from` that can leave as one GSO send: same
    /// destination, equal lengths except a shorter last one, within the kernel's limits. Returns the run's
    /// index range, destination and segment size.
    pub fn next_run(&self, from: usize) -> Option<(Range<usize>, SocketAddr, usize)> {
        let start = (from..self.len).find(|&i| self.sealed[i].is_some())?;
        let (dst, seg) = self.sealed[start]?;
        let mut total = seg;
        let mut end = start + 1;
        while end < self.len && end - start < MAX_SEGMENTS {
            let Some((d, n)) = self.sealed[end] else { break };
            if d != dst || n > seg || total + n > MAX_GSO_BYTES {
                break;
            }
            total += n;
            end += 1;
            if n < seg {
                break; // only the last segment may be short
            }
        }
        Some((start..end, dst, seg))
    }

    /// The datagrams of a run, for [`crate::udp::send_segments`].
    pub fn datagrams<'a>(&'a self, run: Range<usize>, out: &mut [&'a [u8]; MAX_SEGMENTS]) -> usize {
        let mut n = 0;
        for (slot, i) in out.iter_mut().zip(run) {
            let Some((_, len)) = self.sealed[i] else { continue };
            *slot = &self.bufs[i][..len];
            n += 1;
        }
        n
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }
}

/// Received datagrams and the opened packets waiting for a TUN write.
pub struct Inbound {
    pub recv: RecvBatch,
    /// Opened packets at `[HEADROOM..]`; each keeps 64 KiB of capacity so GRO can coalesce into it.
    pub bufs: Vec<Vec<u8>>,
    pub gro: GroTable,
    ready: usize,
    /// Resume point in the received batch: message, byte offset.
    cursor: (usize, usize),
}

impl Default for Inbound {
    fn default() -> Self {
        Self::new()
    }
}

impl Inbound {
    pub fn new() -> Self {
        Self {
            recv: RecvBatch::new(),
            bufs: (0..IDEAL_BATCH_SIZE).map(|_| Vec::with_capacity(INBOUND_CAPACITY)).collect(),
            gro: GroTable::default(),
            ready: 0,
            cursor: (0, 0),
        }
    }

    /// Call after each successful [`RecvBatch::recv`].
    pub fn received(&mut self) {
        self.cursor = (0, 0);
    }

    /// Hands the received datagrams to the engine until all are done (returns `false`) or the packet
    /// buffers are full (returns `true`: write [`Inbound::ready`] to TUN, [`Inbound::clear`], call again).
    pub fn open(&mut self, engine: &mut Engine, now: Instant, wall_us: u64) -> bool {
        let (mut msg, mut off) = self.cursor;
        while msg < self.recv.count() {
            let (meta, bytes) = self.recv.message(msg);
            while off < meta.len {
                if self.ready == self.bufs.len() {
                    self.cursor = (msg, off);
                    return true;
                }
                let end = (off + meta.stride).min(meta.len);
                let buf = &mut self.bufs[self.ready];
                buf.clear();
                buf.extend_from_slice(&bytes[off..end]);
                off = end;
                if let Verdict::Deliver(range) = engine.handle_datagram(now, wall_us, meta.src, buf) {
                    if range.start != HEADROOM {
                        buf.copy_within(range.clone(), HEADROOM);
                    }
                    buf.truncate(HEADROOM + range.len());
                    self.ready += 1;
                }
            }
            msg += 1;
            off = 0;
        }
        self.cursor = (msg, 0);
        false
    }

    /// Opened packets for [`crate::tun::Tun::send_batch`] with offset [`HEADROOM`].
    pub fn ready(&mut self) -> (&mut GroTable, &mut [Vec<u8>]) {
        (&mut self.gro, &mut self.bufs[..self.ready])
    }

    pub fn has_ready(&self) -> bool {
        self.ready > 0
    }

    pub fn clear(&mut self) {
        self.ready = 0;
    }
}
