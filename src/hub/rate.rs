//! A sliding-window rate limit: at most `limit` events in any `window`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Remembers the times of the last `limit` accepted events.
///
/// A sliding window (rather than fixed buckets) means a burst cannot double
/// up across a bucket boundary. Refused events are not remembered, so a
/// client that slows down to the limit is served again at once.
#[derive(Debug)]
pub struct SlidingWindow {
    limit: usize,
    window: Duration,
    accepted: VecDeque<Instant>,
}

impl SlidingWindow {
    pub fn new(limit: usize, window: Duration) -> SlidingWindow {
        SlidingWindow {
            limit,
            window,
            accepted: VecDeque::new(),
        }
    }

    /// Records an event at `now` if the window has room for it.
    pub fn try_acquire(&mut self, now: Instant) -> bool {
        while let Some(&oldest) = self.accepted.front() {
            if now.saturating_duration_since(oldest) >= self.window {
                self.accepted.pop_front();
            } else {
                break;
            }
        }
        if self.accepted.len() >= self.limit {
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
        let mut window = SlidingWindow::new(5, Duration::from_secs(5));
        for ms in [0, 100, 200, 300, 400] {
            assert!(window.try_acquire(at(ms)));
        }
        assert!(!window.try_acquire(at(4_999)), "sixth within 5 s");
        assert!(window.try_acquire(at(5_000)), "the first has slid out");
        assert!(!window.try_acquire(at(5_050)));
        assert!(window.try_acquire(at(5_100)));
    }
}
