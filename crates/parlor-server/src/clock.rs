//! The shell's source of "now" for the hub.
//!
//! The hub reads no clock: the shell passes it the time with every event.
//! Normally that is the real time. A replay of a capture can ask for a
//! clock that runs faster instead, so that every hub timer (the idle cutoff,
//! the rate-limit window) fires that many times sooner while the settings,
//! and every text derived from them, stay exactly as configured.

use std::time::{Duration, Instant};

/// Where the hub's time comes from: real time, or a replay's faster clock.
/// Copied into every task that feeds the hub, so all of them agree.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    origin: Instant,
    speed: f64,
}

impl Clock {
    /// Real time.
    pub fn real() -> Clock {
        Clock::accelerated(1.0)
    }

    /// A clock that runs `speed` times as fast as real time (a positive,
    /// finite number).
    pub fn accelerated(speed: f64) -> Clock {
        assert!(
            speed.is_finite() && speed > 0.0,
            "clock speed must be positive"
        );
        Clock {
            origin: Instant::now(),
            speed,
        }
    }

    /// What this clock reads now: the instant passed to the hub.
    pub fn now(&self) -> Instant {
        if self.speed == 1.0 {
            return Instant::now();
        }
        self.origin + self.origin.elapsed().mul_f64(self.speed)
    }

    /// The real instant at which this clock reads `at`.
    pub fn real_instant(&self, at: Instant) -> Instant {
        if self.speed == 1.0 {
            return at;
        }
        // Rounded up, so a timer never wakes just before its deadline.
        let elapsed = at.saturating_duration_since(self.origin);
        self.origin + elapsed.div_f64(self.speed) + Duration::from_micros(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_accelerated_clock_runs_faster_and_maps_back() {
        let clock = Clock::accelerated(100.0);
        let start = clock.now();
        std::thread::sleep(Duration::from_millis(20));
        let shown = clock.now() - start;
        assert!(shown >= Duration::from_secs(2), "{shown:?}");
        let deadline = start + Duration::from_secs(30);
        let wake = clock.real_instant(deadline);
        let real_wait = wake.saturating_duration_since(Instant::now());
        assert!(real_wait <= Duration::from_millis(300), "{real_wait:?}");
        let real = Clock::real();
        assert_eq!(real.real_instant(deadline), deadline);
    }
}
