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
