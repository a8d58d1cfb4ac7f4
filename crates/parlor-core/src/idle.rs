//! Idle deadlines for many connections, without touching a heap per frame.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use super::ConnId;

/// A min-heap of `(check time, connection)`, at most one entry per
/// connection.
///
/// Receiving a frame only updates the connection's `last_heard` time; the
/// heap is not touched. When an entry comes due, the owner looks at
/// `last_heard`: either the connection really is idle, or the entry is pushed
/// again for `last_heard + timeout`. So a busy connection costs one heap
/// operation per timeout period instead of one per frame.
#[derive(Debug, Default)]
pub(crate) struct IdleTimers {
    due: BinaryHeap<Reverse<(Instant, ConnId)>>,
}

impl IdleTimers {
    pub(crate) fn schedule(&mut self, conn: ConnId, at: Instant) {
        self.due.push(Reverse((at, conn)));
    }

    /// The earliest time an entry comes due.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.due.peek().map(|Reverse((at, _))| *at)
    }

    /// Removes and returns an entry due at or before `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<ConnId> {
        match self.due.peek() {
            Some(Reverse((at, _))) if *at <= now => self.due.pop().map(|Reverse((_, conn))| conn),
            _ => None,
        }
    }
}
