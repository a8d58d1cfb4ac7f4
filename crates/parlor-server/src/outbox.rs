//! A connection's outbound queue: the frames the hub has sent it that its
//! task has not yet written, and whether the server has decided to end it.
//!
//! Every outbox lives in the shared state, next to the hub, behind the one
//! lock a hub call already holds. Queueing a room message for a hundred
//! members is then a hundred pushes onto plain queues, with no lock per
//! member, and room messages in a row share one entry ([`Queued::Run`]);
//! the connection's task takes the lock only to take a batch of frames
//! out, and writes them without it.
//!
//! An idle connection's outbox holds no buffer: its queue allocates on the
//! first frame and gives the memory back after a burst.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

use parlor_core::CloseReason;

/// Entries an emptied queue may keep room for; a burst that grew it past
/// this gives the memory back, so a connection that goes quiet is small.
const KEPT_CAPACITY: usize = 64;

/// An entry in an outbox: one frame, or several room messages in a row that
/// every member of the room gets, shared by all their outboxes. Sharing the
/// run takes one reference count per member for the whole run instead of
/// one per frame, which is most of what queueing a room message costs.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Queued {
    Frame(Bytes),
    Run { frames: Arc<[Bytes]>, len: usize },
}

impl Queued {
    /// A run of frames for several recipients; one frame stays a frame.
    pub(crate) fn run(mut frames: Vec<Bytes>) -> Queued {
        if frames.len() == 1 {
            return Queued::Frame(frames.pop().expect("one frame"));
        }
        let len = frames.iter().map(Bytes::len).sum();
        Queued::Run {
            frames: frames.into(),
            len,
        }
    }

    /// Bytes on the wire.
    pub(crate) fn len(&self) -> usize {
        match self {
            Queued::Frame(frame) => frame.len(),
            Queued::Run { len, .. } => *len,
        }
    }

    pub(crate) fn frames(&self) -> &[Bytes] {
        match self {
            Queued::Frame(frame) => std::slice::from_ref(frame),
            Queued::Run { frames, .. } => frames,
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Outbox {
    frames: VecDeque<Queued>,
    /// Bytes of `frames[0]` already written.
    offset: usize,
    /// Bytes queued and not yet written to the socket.
    bytes: usize,
    /// Set once, when the server decides to end the connection.
    closing: Option<CloseReason>,
    /// The connection task, while it waits for something to do.
    waker: Option<Waker>,
}

/// The queue would grow past its limit; it holds `queued` bytes. The frame
/// that did not fit comes back.
#[derive(Debug)]
pub(crate) struct Overflow {
    pub queued: usize,
    pub frame: Queued,
}

/// Why [`Outbox::poll_wake`] woke the task.
pub(crate) enum OutboxEvent {
    Closing(CloseReason),
    Output,
}

impl Outbox {
    /// Queues a frame unless that takes the queue over `limit` bytes, and
    /// returns the task to wake, if it waits. A frame larger than the limit
    /// still goes to an empty queue, so a big list reply is not fatal.
    /// Frames for a closing connection are dropped: it is no longer a user.
    pub(crate) fn push(&mut self, frame: Queued, limit: usize) -> Result<Option<Waker>, Overflow> {
        if self.closing.is_some() {
            return Ok(None);
        }
        if self.bytes > 0 && self.bytes + frame.len() > limit {
            return Err(Overflow {
                queued: self.bytes,
                frame,
            });
        }
        if self.frames.capacity() == 0 {
            // Most connections are sent one frame at a time: start with room
            // for one instead of the usual four.
            self.frames.reserve_exact(1);
        }
        self.bytes += frame.len();
        self.frames.push_back(frame);
        Ok(self.waker.take())
    }

    /// Marks the connection as ending, for `reason`, unless it already is,
    /// and returns the task to wake. Frames already queued stay, to be
    /// flushed, unless the client is too slow to take them.
    pub(crate) fn close(&mut self, reason: CloseReason) -> Option<Waker> {
        if self.closing.is_some() {
            return None;
        }
        self.closing = Some(reason);
        if reason == CloseReason::SlowConsumer {
            *self = Outbox {
                closing: self.closing,
                waker: self.waker.take(),
                ..Outbox::default()
            };
        }
        self.waker.take()
    }

    /// Moves entries holding up to `max` frames (at least one entry) from
    /// the front of the queue to the end of `batch`, for writing without
    /// holding the lock. Returns how many bytes of the first were already
    /// written.
    pub(crate) fn take_batch(&mut self, batch: &mut Vec<Queued>, max: usize) -> usize {
        let (mut count, mut frames) = (0, 0);
        for entry in &self.frames {
            frames += entry.frames().len();
            if count > 0 && frames > max {
                break;
            }
            count += 1;
        }
        batch.extend(self.frames.drain(..count));
        if self.frames.is_empty() && self.frames.capacity() > KEPT_CAPACITY {
            // A burst grew the queue; give the memory back.
            self.frames = VecDeque::new();
        }
        self.offset
    }

    /// After a write of `written` bytes: moves the entries of a batch that
    /// were not completely written back to the front of the queue, the
    /// first with `offset` bytes written.
    pub(crate) fn put_back(&mut self, unwritten: &mut Vec<Queued>, offset: usize, written: usize) {
        self.bytes -= written;
        self.offset = offset;
        for frame in unwritten.drain(..).rev() {
            self.frames.push_front(frame);
        }
    }

    /// Ready when the server closes the connection or has frames queued.
    /// Unless closing, it also remembers the task's waker, so that a frame
    /// or a close arriving later wakes the task whatever else it waits for.
    pub(crate) fn poll_wake(&mut self, cx: &mut Context<'_>) -> Poll<OutboxEvent> {
        if let Some(reason) = self.closing {
            return Poll::Ready(OutboxEvent::Closing(reason));
        }
        match &mut self.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        if self.frames.is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(OutboxEvent::Output)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: usize) -> Queued {
        Queued::Frame(Bytes::from(vec![7; len]))
    }

    fn run(lens: &[usize]) -> Queued {
        Queued::run(lens.iter().map(|len| Bytes::from(vec![7; *len])).collect())
    }

    #[test]
    fn an_emptied_queue_gives_back_what_a_burst_grew_it_to() {
        let mut outbox = Outbox::default();
        let mut batch = Vec::new();
        for _ in 0..KEPT_CAPACITY {
            outbox.push(frame(1), 1 << 20).unwrap();
        }
        outbox.take_batch(&mut batch, 1024);
        assert!(
            outbox.frames.capacity() >= KEPT_CAPACITY,
            "a small queue keeps its room"
        );
        for _ in 0..300 {
            outbox.push(frame(1), 1 << 20).unwrap();
        }
        outbox.take_batch(&mut batch, 1024);
        assert_eq!(outbox.frames.capacity(), 0, "a burst's room is given back");
    }

    #[test]
    fn a_batch_counts_the_frames_of_runs_and_takes_at_least_one_entry() {
        let mut outbox = Outbox::default();
        for entry in [run(&[1, 2, 3]), frame(4), run(&[5, 6])] {
            outbox.push(entry, 1000).unwrap();
        }
        assert_eq!(outbox.bytes, 21);
        let mut batch = Vec::new();
        outbox.take_batch(&mut batch, 2);
        assert_eq!(batch, [run(&[1, 2, 3])], "one entry even over the limit");
        batch.clear();
        outbox.take_batch(&mut batch, 3);
        assert_eq!(batch, [frame(4), run(&[5, 6])]);
        assert_eq!(run(&[9]), Queued::Frame(Bytes::from(vec![7; 9])));
    }

    #[test]
    fn a_queue_over_its_limit_refuses_the_frame_unless_it_is_empty() {
        let mut outbox = Outbox::default();
        assert!(
            outbox.push(frame(300), 100).is_ok(),
            "an empty queue takes any frame"
        );
        let Err(Overflow {
            queued,
            frame: refused,
        }) = outbox.push(frame(1), 100)
        else {
            panic!("a full queue took a frame");
        };
        assert_eq!((queued, refused.len()), (300, 1));
        assert!(
            outbox.push(frame(1), 400).is_ok(),
            "a higher limit admits it"
        );
    }

    #[test]
    fn a_closing_connection_keeps_what_was_queued_and_takes_nothing_more() {
        let mut outbox = Outbox::default();
        outbox.push(frame(10), 100).unwrap();
        assert!(outbox.close(CloseReason::Shutdown).is_none());
        outbox.push(frame(20), 100).unwrap();
        let mut batch = Vec::new();
        assert_eq!(outbox.take_batch(&mut batch, 4), 0);
        assert_eq!(batch, [frame(10)]);
    }

    #[test]
    fn a_slow_consumer_loses_its_queue_at_once() {
        let mut outbox = Outbox::default();
        outbox.push(frame(10), 100).unwrap();
        outbox.close(CloseReason::SlowConsumer);
        let mut batch = Vec::new();
        outbox.take_batch(&mut batch, 4);
        assert!(batch.is_empty());
        assert!(matches!(
            outbox.poll_wake(&mut Context::from_waker(Waker::noop())),
            Poll::Ready(OutboxEvent::Closing(CloseReason::SlowConsumer))
        ));
    }

    #[test]
    fn a_partial_write_puts_the_rest_back_with_its_offset() {
        let mut outbox = Outbox::default();
        for len in [10, 20, 30] {
            outbox.push(frame(len), 1000).unwrap();
        }
        let mut batch = Vec::new();
        assert_eq!(outbox.take_batch(&mut batch, 2), 0);
        assert_eq!(batch, [frame(10), frame(20)]);
        // 15 bytes written: the first frame and 5 bytes of the second.
        batch.remove(0);
        outbox.put_back(&mut batch, 5, 15);
        assert!(batch.is_empty());
        assert_eq!(outbox.bytes, 45);
        assert_eq!(outbox.take_batch(&mut batch, 2), 5);
        assert_eq!(batch, [frame(20), frame(30)]);
    }

    #[test]
    fn a_waiting_task_is_handed_back_to_be_woken_by_the_next_frame() {
        let mut outbox = Outbox::default();
        let mut cx = Context::from_waker(Waker::noop());
        assert!(outbox.poll_wake(&mut cx).is_pending());
        let waker = outbox.push(frame(1), 100).unwrap();
        assert!(waker.is_some(), "the first frame wakes the task");
        assert!(outbox.push(frame(1), 100).unwrap().is_none(), "once");
        assert!(matches!(
            outbox.poll_wake(&mut cx),
            Poll::Ready(OutboxEvent::Output)
        ));
    }
}
