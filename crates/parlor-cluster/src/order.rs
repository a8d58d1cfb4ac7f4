//! The order of the room messages relayed from other nodes: which to hand
//! on now, which to hold, which to ask for again, and when to give up;
//! decided without I/O, from the numbers `relay.rs` puts on them and the
//! time passed in.
//!
//! Core NATS delivers at most once. A message is lost when a subscriber's
//! channel is full, when the server cuts a slow connection, or when a node
//! has just moved to another NATS server and its subscription has not yet
//! reached the others (which happens each time one of them dies). Each
//! node numbers what it relays to each other node, from 1 in each
//! [`Numbering`], and keeps the last of them for a while; a receiver that
//! sees a number skipped holds what comes after it, asks the sender for the
//! missing ones ([`Steps::ask`]), and hands on everything in order once
//! they come. Only a gap that stays open for [`GIVE_UP`], or one that
//! would hold more than [`HOLD`] messages, is a loss: then every member
//! who may have missed a message is disconnected, as a slow consumer,
//! rather than left believing it has them all ([`Steps::lost`]).
//!
//! A numbering is meant for the receiver's own run when the sender had
//! seen that run renew its lease; then its first number must be 1, and a
//! lost first message is a gap like any other. Before that (a moment after
//! a node starts), the first number heard sets where the count starts.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Which count a relayed room message's number belongs to: one per run of
/// the sender and run of the receiver, each counting from 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Numbering {
    /// The sender's run.
    pub(crate) from_run: u64,
    /// The receiver's run as the sender last saw it renew, or
    /// [`UNSEEN_RUN`].
    pub(crate) to_run: u64,
}

/// The receiver's run, in a [`Numbering`] made before the sender saw the
/// receiver's lease record: runs are never 0.
pub(crate) const UNSEEN_RUN: u64 = 0;

/// How many messages from one node may be held while earlier ones are
/// asked for again.
const HOLD: usize = 4096;

/// How often missing messages are asked for again while they do not come.
pub(crate) const ASK_AGAIN: Duration = Duration::from_millis(100);

/// How long a gap may stay open before what it misses counts as lost. A
/// NATS server that dies takes its clients about a second to leave
/// (`tests/cluster.rs`); the sender keeps far more than two seconds of
/// relays at the rates one node serves.
pub(crate) const GIVE_UP: Duration = Duration::from_secs(2);

/// What a numbered relay carries for the members of a room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Relayed {
    /// A frame for every member: a room message, or a notice.
    Room { room: Bytes, frame: Bytes },
    /// Frames for some members, by fingerprint, as the relay carries them
    /// (`relay.rs`): the room's keys.
    Members { room: Bytes, frames: Bytes },
    /// A frame of a file transfer for one user.
    User { name: Bytes, frame: Bytes },
    /// A user's file request that nobody answers (an acknowledgement).
    FileRequest { name: Bytes, frame: Bytes },
}

/// What the receiver does after taking something in, in this order.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Steps {
    /// Messages were lost for good: disconnect those who may have missed
    /// them.
    pub(crate) lost: bool,
    /// Hand these on, in this order.
    pub(crate) deliver: Vec<Relayed>,
    /// Ask the sender for these numbers again: the numbering, the first
    /// and the last.
    pub(crate) ask: Option<(Numbering, u64, u64)>,
}

/// What came from one node.
#[derive(Debug)]
struct FromNode {
    numbering: Numbering,
    /// The last number handed on in order.
    delivered: u64,
    /// Messages past a missing one, waiting for it.
    held: BTreeMap<u64, Relayed>,
    /// The highest number known to be sent, by a message or a tick.
    known: u64,
    /// An open gap: when it opened, and when it was last asked for.
    gap: Option<(Instant, Instant)>,
}

impl FromNode {
    fn new(numbering: Numbering, delivered: u64) -> FromNode {
        FromNode {
            numbering,
            delivered,
            held: BTreeMap::new(),
            known: delivered,
            gap: None,
        }
    }

    /// Gives the gap up: everything held goes on, what is missing is lost.
    fn give_up(&mut self, steps: &mut Steps) {
        steps.lost = true;
        steps
            .deliver
            .extend(std::mem::take(&mut self.held).into_values());
        self.delivered = self.known;
        self.gap = None;
    }

    /// Opens or closes the gap after a change; asks at once when it opens.
    fn check_gap(&mut self, now: Instant, steps: &mut Steps) {
        if self.delivered >= self.known {
            self.gap = None;
        } else if self.gap.is_none() {
            self.gap = Some((now, now));
            steps.ask = Some(self.missing());
        }
    }

    fn missing(&self) -> (Numbering, u64, u64) {
        (self.numbering, self.delivered + 1, self.known)
    }
}

/// The receiving side's order of every other node's relays.
#[derive(Debug, Default)]
pub(crate) struct Order {
    nodes: HashMap<Bytes, FromNode>,
    /// What [`Order::room`] and [`Order::sync`] decide, for the caller to
    /// carry out and empty: kept, so that a message in order allocates
    /// nothing.
    steps: Steps,
}

impl Order {
    /// Message number `seq` of `numbering` came from node `from`, this node
    /// being run `mine`: what to do, for the caller to carry out and leave
    /// empty.
    pub(crate) fn room(
        &mut self,
        from: &Bytes,
        numbering: Numbering,
        seq: u64,
        message: Relayed,
        mine: u64,
        now: Instant,
    ) -> &mut Steps {
        let Order { nodes, steps } = self;
        let node = count(nodes, from, numbering, seq.saturating_sub(1), mine, steps);
        node.known = node.known.max(seq);
        if seq <= node.delivered || node.held.contains_key(&seq) {
            // A copy: asked for again, and the first came after all.
            return steps;
        }
        if seq == node.delivered + 1 {
            steps.deliver.push(message);
            node.delivered = seq;
            while let Some(next) = node.held.remove(&(node.delivered + 1)) {
                steps.deliver.push(next);
                node.delivered += 1;
            }
        } else if node.held.len() >= HOLD {
            node.held.insert(seq, message);
            node.give_up(steps);
            return steps;
        } else {
            node.held.insert(seq, message);
        }
        node.check_gap(now, steps);
        steps
    }

    /// Node `from` says it relayed `seq` numbers of `numbering` here; as
    /// [`Order::room`].
    pub(crate) fn sync(
        &mut self,
        from: &Bytes,
        numbering: Numbering,
        seq: u64,
        mine: u64,
        now: Instant,
    ) -> &mut Steps {
        let Order { nodes, steps } = self;
        let node = count(nodes, from, numbering, seq, mine, steps);
        node.known = node.known.max(seq);
        node.check_gap(now, steps);
        steps
    }

    /// Whether some node's relays have a gap open, which [`Order::poll`]
    /// must be called for until it closes.
    pub(crate) fn gaps_open(&self) -> bool {
        self.nodes.values().any(|node| node.gap.is_some())
    }

    /// What is due at `now`: gaps to ask for again, and gaps given up.
    pub(crate) fn poll(&mut self, now: Instant) -> Vec<(Bytes, Steps)> {
        let mut due = Vec::new();
        for (from, node) in &mut self.nodes {
            let Some((opened, asked)) = node.gap else {
                continue;
            };
            let mut steps = Steps::default();
            if now.saturating_duration_since(opened) >= GIVE_UP {
                node.give_up(&mut steps);
            } else if now.saturating_duration_since(asked) >= ASK_AGAIN {
                node.gap = Some((opened, now));
                steps.ask = Some(node.missing());
            } else {
                continue;
            }
            due.push((from.clone(), steps));
        }
        due
    }
}

/// The count of `numbering` from `from` among `nodes`, started afresh when
/// it is a new one: at 0 when it is meant for this run, `mine`, else at
/// `heard_before` (the first number heard sets the start). What an older
/// count still held is given up into `steps`.
fn count<'a>(
    nodes: &'a mut HashMap<Bytes, FromNode>,
    from: &Bytes,
    numbering: Numbering,
    heard_before: u64,
    mine: u64,
    steps: &mut Steps,
) -> &'a mut FromNode {
    let start = if numbering.to_run == mine {
        0
    } else {
        heard_before
    };
    if !nodes.contains_key(from) {
        nodes.insert(from.clone(), FromNode::new(numbering, start));
    }
    let node = nodes.get_mut(from).expect("just made");
    if node.numbering != numbering {
        if node.gap.is_some() {
            node.give_up(steps);
        }
        *node = FromNode::new(numbering, start);
    }
    node
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINE: u64 = 4;

    fn numbering(from_run: u64, to_run: u64) -> Numbering {
        Numbering { from_run, to_run }
    }

    fn message(n: u64) -> Relayed {
        Relayed::Room {
            room: Bytes::from_static(b"lobby"),
            frame: Bytes::from(format!("m{n}")),
        }
    }

    fn delivered(steps: &Steps) -> Vec<u64> {
        let number = |relayed: &Relayed| match relayed {
            Relayed::Room { frame, .. } => std::str::from_utf8(&frame[1..]).unwrap().parse(),
            _ => panic!("only room messages here"),
        };
        steps
            .deliver
            .iter()
            .map(|relayed| number(relayed).unwrap())
            .collect()
    }

    struct Receiver {
        order: Order,
        from: Bytes,
        now: Instant,
    }

    impl Receiver {
        fn new() -> Receiver {
            Receiver {
                order: Order::default(),
                from: Bytes::from_static(b"b"),
                now: Instant::now(),
            }
        }

        fn room(&mut self, numbering: Numbering, seq: u64) -> Steps {
            let from = self.from.clone();
            let steps = (self.order).room(&from, numbering, seq, message(seq), MINE, self.now);
            std::mem::take(steps)
        }

        fn sync(&mut self, numbering: Numbering, seq: u64) -> Steps {
            let from = self.from.clone();
            std::mem::take(self.order.sync(&from, numbering, seq, MINE, self.now))
        }

        fn wait(&mut self, time: Duration) -> Vec<Steps> {
            self.now += time;
            let due = self.order.poll(self.now);
            due.into_iter().map(|(_, steps)| steps).collect()
        }
    }

    #[test]
    fn numbers_in_order_go_on_at_once_and_copies_are_dropped() {
        let ours = numbering(1, MINE);
        let mut r = Receiver::new();
        for seq in 1..=3 {
            let steps = r.room(ours, seq);
            assert_eq!(delivered(&steps), [seq]);
            assert_eq!((steps.lost, steps.ask), (false, None));
        }
        assert_eq!(r.room(ours, 2), Steps::default(), "a copy");
        assert!(r.wait(GIVE_UP).is_empty(), "no gap, nothing due");
    }

    #[test]
    fn a_skipped_number_is_asked_for_and_what_follows_waits_for_it() {
        let ours = numbering(1, MINE);
        let mut r = Receiver::new();
        r.room(ours, 1);
        let steps = r.room(ours, 3);
        assert!(steps.deliver.is_empty(), "3 waits for 2");
        assert_eq!(steps.ask, Some((ours, 2, 3)));
        assert_eq!(r.room(ours, 4).ask, None, "asked once");
        let again = r.wait(ASK_AGAIN);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].ask, Some((ours, 2, 4)), "asked again, up to 4");
        assert!(!again[0].lost);
        let steps = r.room(ours, 2);
        assert_eq!(delivered(&steps), [2, 3, 4], "in the sender's order");
        assert!(!steps.lost);
        assert_eq!(r.room(ours, 3), Steps::default(), "the copy asked for");
        assert!(r.wait(GIVE_UP).is_empty(), "the gap is closed");
    }

    #[test]
    fn a_gap_open_too_long_is_a_loss_and_what_was_held_goes_on() {
        let ours = numbering(1, MINE);
        let mut r = Receiver::new();
        r.room(ours, 1);
        r.room(ours, 3);
        let due = r.wait(GIVE_UP);
        assert_eq!(due.len(), 1);
        assert!(due[0].lost);
        assert_eq!(delivered(&due[0]), [3]);
        assert_eq!(delivered(&r.room(ours, 4)), [4], "counting goes on");
        assert!(r.room(ours, 2).deliver.is_empty(), "too late: dropped");
    }

    #[test]
    fn a_lost_first_message_is_a_gap_when_the_numbering_is_this_runs() {
        let mut r = Receiver::new();
        let steps = r.room(numbering(1, MINE), 3);
        assert!(steps.deliver.is_empty());
        assert_eq!(steps.ask, Some((numbering(1, MINE), 1, 3)));
        // Before the sender saw this run, or for a run before it, the
        // first number heard is where the count starts.
        for unknown in [UNSEEN_RUN, MINE - 1] {
            let mut r = Receiver::new();
            assert_eq!(delivered(&r.room(numbering(1, unknown), 3)), [3]);
            assert_eq!(delivered(&r.room(numbering(1, unknown), 4)), [4]);
        }
    }

    #[test]
    fn a_tick_past_the_last_number_heard_opens_a_gap() {
        let ours = numbering(1, MINE);
        let mut r = Receiver::new();
        r.room(ours, 1);
        assert_eq!(r.sync(ours, 1), Steps::default(), "all heard");
        assert_eq!(r.sync(ours, 2).ask, Some((ours, 2, 2)));
        assert_eq!(delivered(&r.room(ours, 2)), [2]);
        // Everything of a numbering for this run lost: the tick tells.
        let mut r = Receiver::new();
        assert_eq!(r.sync(ours, 2).ask, Some((ours, 1, 2)));
        let mut r = Receiver::new();
        assert_eq!(r.sync(numbering(1, UNSEEN_RUN), 2), Steps::default());
    }

    #[test]
    fn a_new_numbering_gives_up_the_old_ones_gap() {
        let old = numbering(1, MINE);
        let mut r = Receiver::new();
        r.room(old, 1);
        r.room(old, 3);
        let steps = r.room(numbering(2, MINE), 1);
        assert!(steps.lost);
        assert_eq!(
            delivered(&steps),
            [3, 1],
            "the old run's, then the new one's"
        );
    }

    #[test]
    fn holding_more_than_the_bound_is_a_loss() {
        let ours = numbering(1, MINE);
        let mut r = Receiver::new();
        r.room(ours, 1);
        let held = HOLD as u64;
        for seq in 3..3 + held {
            assert!(!r.room(ours, seq).lost);
        }
        let steps = r.room(ours, 3 + held);
        assert!(steps.lost);
        assert_eq!(steps.deliver.len(), HOLD + 1);
        assert!(r.wait(GIVE_UP).is_empty());
    }
}
