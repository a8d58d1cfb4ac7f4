//! This node's lease, and when it must fence itself: decided without I/O.
//!
//! The lease setting is the promise to users: a node killed outright has
//! its names free everywhere within it. Its parts:
//!
//! - the node record lives in a bucket whose entries expire a *record TTL*
//!   (three fifths of the lease) after they were written;
//! - the node rewrites it every quarter TTL;
//! - others suspect a node not heard of for a TTL, read its record to be
//!   sure, and sweep its names once the store has let it expire; they look
//!   every eighth of a TTL. The store expires entries a little late
//!   (a few hundred milliseconds), which the fifths left of the lease
//!   cover: in `tests/cluster.rs`, a killed node's names were free 1.5 s
//!   after the kill, for a lease of 2 s;
//! - a node that has not renewed for three quarters of a TTL fences itself
//!   (closes every connection, claims nothing) until a renewal succeeds
//!   again, before its record can expire. The time that counts is when a
//!   renewal was *sent*: the server stored it no earlier, so the record
//!   expires no earlier than a TTL after the send.

use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct Lease {
    /// The record TTL.
    length: Duration,
    /// When the last renewal that succeeded was sent.
    renewed: Option<Instant>,
    fenced: bool,
}

impl Lease {
    pub(crate) fn new(lease: Duration) -> Lease {
        Lease {
            length: lease * 3 / 5,
            renewed: None,
            fenced: false,
        }
    }

    /// How long the node record outlives its last write.
    pub(crate) fn record_ttl(&self) -> Duration {
        self.length
    }

    /// How often to renew.
    pub(crate) fn renew_every(&self) -> Duration {
        self.length / 4
    }

    /// How often to look for runs that are over.
    pub(crate) fn sweep_every(&self) -> Duration {
        self.length / 8
    }

    /// A renewal sent at `sent` succeeded.
    pub(crate) fn renewed(&mut self, sent: Instant) {
        self.renewed = Some(self.renewed.map_or(sent, |last| last.max(sent)));
    }

    /// Whether names may be claimed at `now`: the lease holds, with a
    /// margin for the claim itself.
    pub(crate) fn holds(&self, now: Instant) -> bool {
        !self.fenced
            && self
                .renewed
                .is_some_and(|at| now < at + self.length * 3 / 4)
    }

    /// Whether the node must fence itself at `now`; it then is fenced
    /// until [`Lease::unfence`].
    pub(crate) fn must_fence(&mut self, now: Instant) -> bool {
        if self.fenced || self.holds(now) || self.renewed.is_none() {
            return false;
        }
        self.fenced = true;
        true
    }

    pub(crate) fn is_fenced(&self) -> bool {
        self.fenced
    }

    /// The node starts a new run after a fence: renewals count again.
    pub(crate) fn unfence(&mut self) {
        self.fenced = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record TTL of 6 s: fenced 4.5 s after the last renewal.
    const LEASE: Duration = Duration::from_secs(10);

    #[test]
    fn a_node_fences_itself_before_its_record_can_expire() {
        let start = Instant::now();
        let mut lease = Lease::new(LEASE);
        assert!(
            !lease.holds(start) && !lease.must_fence(start),
            "not started"
        );
        lease.renewed(start);
        assert!(lease.holds(start + Duration::from_secs(4)));
        assert!(!lease.must_fence(start + Duration::from_secs(4)));
        let late = start + Duration::from_secs(5);
        assert!(!lease.holds(late));
        assert!(lease.must_fence(late), "at three quarters of the lease");
        assert!(!lease.must_fence(late), "once");
        lease.renewed(late);
        assert!(!lease.holds(late), "fenced until unfenced");
        lease.unfence();
        assert!(lease.holds(late));
    }

    #[test]
    fn a_late_answer_to_an_older_renewal_does_not_move_the_lease_back() {
        let start = Instant::now();
        let mut lease = Lease::new(LEASE);
        lease.renewed(start + Duration::from_secs(4));
        lease.renewed(start);
        assert!(lease.holds(start + Duration::from_secs(8)));
    }
}
