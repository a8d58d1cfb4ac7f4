//! The bench's clock and its latency histogram.
//!
//! Senders and receivers live in one process, so one monotonic clock serves
//! both ends: a sender writes `clock.now_ns()` into the message, the
//! receiver subtracts it from its own `clock.now_ns()`. No clock sync, no
//! wall-clock jumps.
//!
//! Latencies go into one HDR histogram (microsecond resolution, three
//! significant digits, up to an hour), shared by every connection behind a
//! lock that a receiver takes once per read batch, not per delivery.

use std::sync::Mutex;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Nanoseconds since the run started, on a monotonic clock.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BenchClock {
    origin: Instant,
}

impl BenchClock {
    pub(crate) fn start() -> BenchClock {
        BenchClock {
            origin: Instant::now(),
        }
    }

    pub(crate) fn now_ns(&self) -> u64 {
        self.ns_at(Instant::now())
    }

    pub(crate) fn ns_at(&self, instant: Instant) -> u64 {
        u64::try_from(instant.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// The largest latency the histogram tells apart: one hour, in µs.
const MAX_TRACKED_US: u64 = 3_600_000_000;

/// Every connection's latencies, merged.
pub(crate) struct LatencyHistogram {
    histogram: Mutex<Histogram<u64>>,
}

impl LatencyHistogram {
    pub(crate) fn new() -> LatencyHistogram {
        let histogram =
            Histogram::new_with_bounds(1, MAX_TRACKED_US, 3).expect("constant bounds are valid");
        LatencyHistogram {
            histogram: Mutex::new(histogram),
        }
    }

    /// Records a batch of latencies given in nanoseconds, and empties it.
    pub(crate) fn record_batch(&self, latencies_ns: &mut Vec<u64>) {
        if latencies_ns.is_empty() {
            return;
        }
        let mut histogram = self.histogram.lock().expect("histogram lock");
        for &ns in latencies_ns.iter() {
            // Sub-microsecond latencies count as 1 µs, the lowest bucket.
            histogram.saturating_record((ns / 1000).max(1));
        }
        latencies_ns.clear();
    }

    pub(crate) fn summary(&self) -> Option<LatencySummary> {
        let histogram = self.histogram.lock().expect("histogram lock");
        if histogram.is_empty() {
            return None;
        }
        let ms = |us: u64| round3(us as f64 / 1000.0);
        Some(LatencySummary {
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
            mean: round3(histogram.mean() / 1000.0),
            count: histogram.len(),
        })
    }
}

/// Latency percentiles in milliseconds (chatload's `latency_ms` object).
#[derive(Clone, Debug, Serialize)]
pub struct LatencySummary {
    /// The median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile: the tail a busy room's members feel.
    pub p999: f64,
    /// The slowest delivery.
    pub max: f64,
    /// The mean, which the tail pulls up: compare it with `p50`.
    pub mean: f64,
    /// Deliveries measured.
    pub count: u64,
}

pub(crate) fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

pub(crate) fn round1(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_nanoseconds_and_reports_milliseconds() {
        let histogram = LatencyHistogram::new();
        assert!(histogram.summary().is_none());
        let mut batch: Vec<u64> = (1..=100).map(|ms| ms * 1_000_000).collect();
        batch.push(10); // below a microsecond
        histogram.record_batch(&mut batch);
        assert!(batch.is_empty());
        let summary = histogram.summary().unwrap();
        assert_eq!(summary.count, 101);
        assert!((summary.p50 - 50.0).abs() < 0.1, "{summary:?}");
        assert!((summary.max - 100.0).abs() < 0.1, "{summary:?}");
    }
}
