//! Replay protection for rolodex frames.
//!
//! Each sender stamps frames with a strictly increasing sequence number taken from its wall clock in
//! microseconds. A receiver accepts a frame only if its number is above the last one it accepted from that
//! sender and within a freshness window of its own clock. So a captured frame cannot be replayed while the
//! receiver remembers the sender, nor later once it is stale. Senders and receivers need clocks within the
//! window of each other (NTP); the window is configurable.

use std::time::Duration;

/// Generates a sender's sequence numbers.
#[derive(Debug, Default)]
pub struct SeqClock {
    last: u64,
}

impl SeqClock {
    pub fn next(&mut self, wall_us: u64) -> u64 {
        self.last = wall_us.max(self.last + 1);
        self.last
    }
}

/// Whether `seq` is fresh at `wall_us` and newer than `last`.
pub fn acceptable(seq: u64, last: u64, wall_us: u64, window: Duration) -> bool {
    let w = window.as_micros() as u64;
    seq > last && seq.saturating_add(w) >= wall_us && seq <= wall_us.saturating_add(w)
}

/// How many recent sequence numbers a receiver remembers, so that frames reordered in flight are still
/// accepted once (an ack overtaken by a later introduction must not be dropped as a replay).
const RECENT: usize = 16;

/// The sequence numbers accepted from one sender.
#[derive(Debug, Clone, Default)]
pub struct SeqWindow {
    recent: [u64; RECENT],
    next: usize,
}

impl SeqWindow {
    /// The highest accepted sequence number (0 if none).
    pub fn last(&self) -> u64 {
        self.recent.iter().copied().max().unwrap_or(0)
    }

    fn oldest(&self) -> u64 {
        self.recent.iter().copied().min().unwrap_or(0)
    }

    /// Accepts `seq` if it is fresh, was not seen before and is newer than the oldest remembered one.
    pub fn accept(&mut self, seq: u64, wall_us: u64, window: Duration) -> bool {
        if !acceptable(seq, self.oldest(), wall_us, window) || self.recent.contains(&seq) {
            return false;
        }
        self.recent[self.next] = seq;
        self.next = (self.next + 1) % RECENT;
        true
    }

    /// A window that has accepted just `seq`.
    pub fn starting_at(seq: u64) -> Self {
        let mut recent = [0; RECENT];
        recent[0] = seq;
        Self { recent, next: 1 }
    }

    /// A window that accepts only sequence numbers above `seq` (for a departed member's tombstone).
    pub fn after(seq: u64) -> Self {
        Self { recent: [seq; RECENT], next: 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_is_strictly_increasing_even_when_wall_clock_stalls_or_steps_back() {
        let mut c = SeqClock::default();
        let a = c.next(1000);
        let b = c.next(1000);
        let d = c.next(500);
        assert!(a < b && b < d);
    }

    #[test]
    fn reordered_frames_are_accepted_once() {
        let w = Duration::from_secs(60);
        let now = 1_000_000_000_000;
        let mut win = SeqWindow::default();
        assert!(win.accept(now + 2, now, w));
        assert!(win.accept(now + 1, now, w), "older but unseen: reordered, accepted");
        assert!(!win.accept(now + 1, now, w), "replay");
        assert!(!win.accept(now + 2, now, w), "replay");
        for i in 0..RECENT as u64 {
            assert!(win.accept(now + 10 + i, now, w));
        }
        assert!(!win.accept(now + 3, now, w), "older than everything remembered");
        assert_eq!(win.last(), now + 10 + RECENT as u64 - 1);
        let mut t = SeqWindow::after(now + 50);
        assert!(!t.accept(now + 40, now, w));
        assert!(t.accept(now + 51, now, w));
    }

    #[test]
    fn window_and_order() {
        let w = Duration::from_secs(60);
        let now = 1_000_000_000_000;
        assert!(acceptable(now, 0, now, w));
        assert!(!acceptable(now, now, now, w), "replay of the same seq");
        assert!(!acceptable(now - 1, now, now, w), "older than last accepted");
        assert!(!acceptable(now - 61_000_000, 0, now, w), "stale");
        assert!(!acceptable(now + 61_000_000, 0, now, w), "from the future");
        assert!(acceptable(now - 59_000_000, 0, now, w));
    }
}
