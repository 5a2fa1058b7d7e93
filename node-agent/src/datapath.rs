//! The packet path in batches, between the TUN device and the UDP socket, with no allocation per packet.
//!
//! Outbound: one TUN read may return a 64 KiB TCP segment (TSO), split into MTU-sized packets in
//! [`Outbound::bufs`]; each is sealed in place and runs of equal-size datagrams to one peer leave as one GSO
//! send. Inbound: one `recvmmsg` returns GRO trains of datagrams; each is opened in place in [`Inbound`],
//! and runs of TCP segments go to TUN coalesced again ([`crate::gro`]) as one `writev` of new headers and
//! the payloads where they lie. The engine stays sans-IO: this module only arranges its per-packet calls.

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::ops::Range;
use std::time::Instant;

use crate::crypto::OVERHEAD;
use crate::engine::{Engine, HEADROOM, Inbound as Verdict};
use crate::tun::{IDEAL_BATCH_SIZE, SCRATCH_LEN};
use crate::udp::{MAX_GSO_BYTES, MAX_SEGMENTS, RECV_SLOTS, RecvBatch};

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

/// Received datagrams, opened in place: the packets stay in the receive buffers until written to TUN.
pub struct Inbound {
    pub recv: RecvBatch,
    /// Opened packets as ranges of the receive buffer.
    opened: Vec<Range<usize>>,
}

impl Default for Inbound {
    fn default() -> Self {
        Self::new()
    }
}

impl Inbound {
    pub fn new() -> Self {
        Self { recv: RecvBatch::new(), opened: Vec::with_capacity(RECV_SLOTS * MAX_SEGMENTS) }
    }

    /// Hands every datagram of the last receive to the engine; packets to deliver are then
    /// [`Inbound::packet`] `0..`[`Inbound::len`].
    pub fn open(&mut self, engine: &mut Engine, now: Instant, wall_us: u64) {
        self.opened.clear();
        for msg in 0..self.recv.count() {
            let (meta, bytes) = self.recv.message(msg);
            let base = meta.offset();
            let mut off = 0;
            while off < meta.len {
                let end = (off + meta.stride).min(meta.len);
                if let Verdict::Deliver(r) =
                    engine.handle_datagram(now, wall_us, meta.src, &mut bytes[off..end])
                {
                    self.opened.push(base + off + r.start..base + off + r.end);
                }
                off = end;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.opened.len()
    }

    pub fn is_empty(&self) -> bool {
        self.opened.is_empty()
    }

    /// Opened packet `i`.
    pub fn packet(&self, i: usize) -> &[u8] {
        self.recv.bytes(self.opened[i].clone())
    }
}
