//! Sliding replay window, as in WireGuard (RFC 6479 style): a ring of 64-bit words, cleared a
//! whole word at a time as the window advances, so the cost per packet is O(1).

/// Packets this far behind the highest accepted counter are still accepted (once).
pub const WINDOW: u64 = 2048;
/// One spare word beyond the window: advancing clears whole words, and the word holding the
/// oldest in-window counter must survive that.
const WORDS: usize = (WINDOW / 64) as usize + 1;

/// Which counters of one receive direction have been accepted.
#[derive(Clone)]
pub struct ReplayWindow {
    /// Highest accepted counter + 1; 0 means nothing accepted yet, so counter 0 is usable.
    next: u64,
    bitmap: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    pub const fn new() -> Self {
        Self { next: 0, bitmap: [0; WORDS] }
    }

    /// Whether `counter` would be accepted. Does not record it: call before authenticating, so
    /// obvious replays skip the AEAD, then [`Self::accept`] after.
    pub fn check(&self, counter: u64) -> bool {
        if counter >= self.next {
            return counter != u64::MAX;
        }
        if self.next - 1 - counter >= WINDOW {
            return false;
        }
        let (word, bit) = Self::slot(counter);
        self.bitmap[word] & bit == 0
    }

    /// Records `counter`; false if it was a replay or too old (nothing changes then).
    pub fn accept(&mut self, counter: u64) -> bool {
        if !self.check(counter) {
            return false;
        }
        if counter >= self.next {
            // Clear the words the window slides over; a jump of a whole window or more clears all.
            let current = self.next.saturating_sub(1) / 64;
            let target = counter / 64;
            let clear = if self.next == 0 { 0 } else { (target - current).min(WORDS as u64) };
            for i in 1..=clear {
                self.bitmap[((current + i) % WORDS as u64) as usize] = 0;
            }
            self.next = counter + 1;
        }
        let (word, bit) = Self::slot(counter);
        self.bitmap[word] |= bit;
        true
    }

    fn slot(counter: u64) -> (usize, u64) {
        (((counter / 64) % WORDS as u64) as usize, 1 << (counter % 64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_edges() {
        let mut w = ReplayWindow::new();
        assert!(w.accept(0));
        assert!(!w.accept(0));
        assert!(w.accept(5000));
        assert!(!w.check(5000 - WINDOW), "exactly one window behind is too old");
        assert!(w.accept(5000 - WINDOW + 1), "oldest in-window counter");
        assert!(!w.accept(5000 - WINDOW + 1));
        assert!(w.accept(4999));
        assert!(!w.accept(u64::MAX), "never let the counter wrap");
    }

    #[test]
    fn matches_naive_model() {
        use rand::{Rng, SeedableRng, rngs::StdRng};
        use std::collections::BTreeSet;
        let mut rng = StdRng::seed_from_u64(7);
        let mut w = ReplayWindow::new();
        let mut seen = BTreeSet::new();
        let mut top = 0u64;
        for _ in 0..200_000 {
            // Mostly near the top, sometimes far ahead or far behind.
            let c = match rng.random_range(0..10) {
                0 => top + rng.random_range(0..5000),
                1 => top.saturating_sub(rng.random_range(0..5000)),
                _ => (top + 8).saturating_sub(rng.random_range(0..2200)),
            };
            let highest = seen.last().copied();
            let fresh = !seen.contains(&c);
            let in_window = highest.is_none_or(|h| c > h || h - c < WINDOW);
            let expected = fresh && in_window;
            assert_eq!(w.accept(c), expected, "counter {c}, highest {highest:?}");
            if expected {
                seen.insert(c);
                top = top.max(c);
            }
        }
    }
}
