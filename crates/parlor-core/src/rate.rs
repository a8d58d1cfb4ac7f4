//! A sliding-window rate limit: at most `limit` events in any `window`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How many events a rate limit admits, and over how long.
#[derive(Clone, Copy, Debug)]
pub struct Rate {
    /// Events admitted per window.
    pub limit: usize,
    /// How far back the window reaches.
    pub window: Duration,
}

/// Remembers the times of the last `limit` accepted events.
///
/// A sliding window (rather than fixed buckets) means a burst cannot double
/// up across a bucket boundary. Refused events are not remembered, so a
/// client that slows down to the limit is served again at once. The
/// [`Rate`] is passed in rather than stored, because every user has several
/// windows and they all share the server's settings.
#[derive(Debug, Default)]
pub(crate) struct SlidingWindow {
    accepted: VecDeque<Instant>,
}

impl SlidingWindow {
    /// Records an event at `now` if the window has room for it.
    pub(crate) fn try_acquire(&mut self, now: Instant, rate: Rate) -> bool {
        while let Some(&oldest) = self.accepted.front() {
            if now.saturating_duration_since(oldest) >= rate.window {
                self.accepted.pop_front();
            } else {
                break;
            }
        }
        if self.accepted.len() >= rate.limit {
            return false;
        }
        self.accepted.push_back(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_limit_events_per_window_then_slides() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let rate = Rate {
            limit: 5,
            window: Duration::from_secs(5),
        };
        let mut window = SlidingWindow::default();
        for ms in [0, 100, 200, 300, 400] {
            assert!(window.try_acquire(at(ms), rate));
        }
        assert!(!window.try_acquire(at(4_999), rate), "sixth within 5 s");
        assert!(
            window.try_acquire(at(5_000), rate),
            "the first has slid out"
        );
        assert!(!window.try_acquire(at(5_050), rate));
        assert!(window.try_acquire(at(5_100), rate));
    }
}
