//! A busy worker pauses for a moment before it waits for the next event.
//!
//! A worker reads every socket that is ready, hands the frames to the hub,
//! and writes each connection's queue on its next turn. When clients keep
//! the server busy without saturating it, the worker runs out of work after
//! a round of reads, waits in `epoll`, and is woken by the very next frame:
//! many thin rounds, each ending in small writes. The kernel's cost is
//! mostly per write, not per byte, so thin rounds spend CPU on syscalls
//! rather than on messages. Pausing a few tens of microseconds before
//! waiting lets the next round find more to read and write fuller batches
//! (BENCHMARKS.md, "Fifth sitting": in fan-out 10×10 the server delivered
//! more per second with less CPU, at the same latency).
//!
//! Only a round that read from at least `busy_pause_min_reads` sockets
//! pauses, so a lightly loaded server answers every frame at once; and a
//! saturated worker never runs out of work, so it never pauses at all.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::config::Config;

thread_local! {
    /// Socket reads on this worker since it last ran out of work.
    static READS_THIS_ROUND: Cell<u32> = const { Cell::new(0) };
}

/// Pauses taken by every worker since the process started, for the metrics
/// endpoint. One server runs per process, so a process-wide count is the
/// server's count.
static PAUSES: AtomicU64 = AtomicU64::new(0);

/// Notes that a connection read from its socket on this worker.
pub(crate) fn count_read() {
    READS_THIS_ROUND.with(|reads| reads.set(reads.get().saturating_add(1)));
}

/// Pauses taken so far.
pub(crate) fn pauses() -> u64 {
    PAUSES.load(Ordering::Relaxed)
}

/// What a worker does when it runs out of work, before it waits.
#[derive(Clone, Copy, Debug)]
pub struct BusyPause {
    pause: Duration,
    min_reads: u32,
}

impl BusyPause {
    /// The pause `config` asks for; `None` when it is off.
    pub fn from_config(config: &Config) -> Option<BusyPause> {
        (config.busy_pause_micros > 0).then(|| BusyPause {
            pause: Duration::from_micros(config.busy_pause_micros),
            min_reads: config.busy_pause_min_reads,
        })
    }

    /// Called by the runtime just before a worker parks: starts the next
    /// round's count, and pauses if the round that ended was busy.
    pub fn before_park(&self) {
        let reads = READS_THIS_ROUND.with(|reads| reads.replace(0));
        if reads >= self.min_reads {
            PAUSES.fetch_add(1, Ordering::Relaxed);
            // The worker has nothing to do, so sleeping blocks no task; the
            // kernel may add its timer slack (50 µs by default on Linux).
            std::thread::sleep(self.pause);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy_pause(min_reads: u32) -> BusyPause {
        BusyPause::from_config(&Config {
            busy_pause_micros: 1,
            busy_pause_min_reads: min_reads,
            ..Config::default()
        })
        .expect("on")
    }

    #[test]
    fn only_a_round_with_enough_reads_pauses_and_each_round_counts_afresh() {
        let pause = busy_pause(3);
        let before = pauses();
        count_read();
        count_read();
        pause.before_park();
        assert_eq!(pauses(), before, "two reads are a quiet round");
        count_read();
        pause.before_park();
        assert_eq!(pauses(), before, "the earlier reads were not carried over");
        for _ in 0..3 {
            count_read();
        }
        pause.before_park();
        assert_eq!(pauses(), before + 1);
        pause.before_park();
        assert_eq!(pauses(), before + 1, "an empty round does not pause");
    }

    #[test]
    fn zero_micros_turns_the_pause_off() {
        let config = Config {
            busy_pause_micros: 0,
            ..Config::default()
        };
        assert!(BusyPause::from_config(&config).is_none());
    }
}
