//! Lost, duplicated and reordered deliveries, counted per (sender, receiver)
//! pair from the sequence numbers the messages carry.
//!
//! Each receiver keeps one [`SequenceTracker`] per sender it expects. TCP
//! keeps one connection's bytes in order and the server relays a sender's
//! messages in the order it got them, so a correct server delivers 0, 1, 2,
//! … to every receiver. Anything else is the server's fault:
//!
//! - a sequence number seen before is a **duplicate**;
//! - one lower than a number already seen (and new) is **reordered**;
//! - one never seen is **lost**, which only the total can tell: `lost =
//!   expected − distinct`, computed once sending and draining are over.
//!
//! A tracker remembers every number below `next` (all seen) plus a 128-bit
//! window of the numbers above it, so its size does not grow with the run.
//! When a gap (a loss) falls more than 128 numbers behind the newest, the
//! window moves past it; a delivery that then arrives for the gap is too
//! late to tell from a duplicate and is counted as one.
//!
//! Messages that cannot carry their own sequence number, only their
//! position in a repeating cycle, get it back from [`seq_from_position`].

/// How far above the oldest gap the tracker remembers individual numbers.
const WINDOW: u64 = u128::BITS as u64;

/// How one delivery relates to the ones before it from the same sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// New, and higher than everything seen so far.
    InOrder,
    /// New, but lower than a number already seen.
    Reordered,
    /// Seen before (or too late to tell, see the module documentation).
    Duplicate,
}

/// The arrivals from one sender at one receiver.
#[derive(Clone, Debug, Default)]
pub(crate) struct SequenceTracker {
    /// Every number below this has arrived.
    next: u64,
    /// Bit `i` set: `next + i` has arrived. Bit 0 is always clear, since
    /// `next` moves past every number that has arrived.
    ahead: u128,
    /// One more than the highest number seen.
    seen_end: u64,
}

impl SequenceTracker {
    pub(crate) fn record(&mut self, seq: u64) -> Arrival {
        if seq < self.next {
            return Arrival::Duplicate;
        }
        if seq - self.next >= WINDOW {
            // Give up on the oldest gaps: they are lost as far as this
            // tracker can tell.
            let by = seq - self.next - (WINDOW - 1);
            self.next += by;
            self.ahead = shift_down(self.ahead, by);
            self.skip_arrived();
        }
        let bit = 1u128 << (seq - self.next);
        if self.ahead & bit != 0 {
            return Arrival::Duplicate;
        }
        self.ahead |= bit;
        self.skip_arrived();
        if seq < self.seen_end {
            Arrival::Reordered
        } else {
            self.seen_end = seq + 1;
            Arrival::InOrder
        }
    }

    /// Moves `next` past the numbers at the front of the window that have
    /// arrived.
    fn skip_arrived(&mut self) {
        let arrived = self.ahead.trailing_ones();
        self.next += u64::from(arrived);
        self.ahead = shift_down(self.ahead, u64::from(arrived));
    }
}

/// The sequence number of a message that carries only its position in a
/// cycle of `cycle` messages (`position = seq % cycle`), for a receiver that
/// expects `next` from that sender: one more than the highest sequence
/// number seen so far.
///
/// Messages whose content is fixed in advance, such as envelopes signed
/// before the run and sent again and again, cannot carry their own
/// sequence number. But a correct server delivers each sender's messages in
/// order, so a position names `next` itself; and a faulty one is still
/// caught as long as it strays less than a cycle. The answer is the
/// candidate nearest `next`, leaning forward: up to three quarters of a
/// cycle ahead (the messages in between were lost), or up to a quarter
/// behind (a duplicate, or a late, reordered message). Beyond that the
/// server is counted at fault all the same, only under another name.
///
/// When no sender sends more than `cycle` messages, every message is
/// distinct and its position is its sequence number: callers need not ask.
pub(crate) fn seq_from_position(position: u64, cycle: u64, next: u64) -> u64 {
    debug_assert!(position < cycle, "position {position} of a {cycle} cycle");
    let ahead = (position + cycle - next % cycle) % cycle;
    let behind = cycle - ahead;
    if ahead > 0 && behind <= cycle / 4 && behind <= next {
        next - behind
    } else {
        next + ahead
    }
}

fn shift_down(bits: u128, by: u64) -> u128 {
    u32::try_from(by)
        .ok()
        .and_then(|by| bits.checked_shr(by))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Arrival::*;

    fn arrivals(seqs: impl IntoIterator<Item = u64>) -> Vec<Arrival> {
        let mut tracker = SequenceTracker::default();
        seqs.into_iter().map(|seq| tracker.record(seq)).collect()
    }

    #[test]
    fn in_order_with_gaps_is_in_order() {
        assert_eq!(arrivals([0, 1, 2, 4, 7]), [InOrder; 5]);
    }

    #[test]
    fn a_swap_is_one_reordered_delivery() {
        assert_eq!(
            arrivals([0, 2, 1, 3]),
            [InOrder, InOrder, Reordered, InOrder]
        );
    }

    #[test]
    fn repeats_are_duplicates_wherever_they_fall() {
        assert_eq!(
            arrivals([0, 0, 1, 3, 3, 2, 2, 1, 4]),
            [
                InOrder, Duplicate, InOrder, InOrder, Duplicate, Reordered, Duplicate, Duplicate,
                InOrder
            ]
        );
    }

    #[test]
    fn the_window_slides_past_a_loss_and_keeps_counting() {
        // 0 is lost; 1..=300 arrive in order, then one of them again, then
        // a reordered pair well after the slide.
        let mut seqs: Vec<u64> = (1..=300).collect();
        seqs.extend([250, 302, 301]);
        let got = arrivals(seqs);
        assert!(got[..300].iter().all(|a| *a == InOrder));
        assert_eq!(&got[300..], [Duplicate, InOrder, Reordered]);
    }

    #[test]
    fn positions_in_a_cycle_become_sequence_numbers() {
        let seq = |position, next| seq_from_position(position, 64, next);
        // In order, across the end of the cycle and on.
        assert_eq!(seq(0, 0), 0);
        assert_eq!(seq(63, 63), 63);
        assert_eq!(seq(0, 64), 64);
        assert_eq!(seq(5, 645), 645);
        // Lost messages: up to three quarters of a cycle ahead.
        assert_eq!(seq(10, 5), 10);
        assert_eq!(seq(52, 5), 52);
        assert_eq!(seq(3, 130), 131);
        // Duplicates and late messages: up to a quarter behind.
        assert_eq!(seq(5, 6), 5);
        assert_eq!(seq(63, 64), 63);
        assert_eq!(seq(50, 66), 50);
        // Nothing lies before the first message.
        assert_eq!(seq(63, 0), 63);
        assert_eq!(seq(60, 2), 60);
    }

    #[test]
    fn a_jump_far_ahead_then_the_numbers_in_between() {
        assert_eq!(arrivals([1000, 999, 5]), [InOrder, Reordered, Duplicate]);
    }
}
