//! The hub plus each connection's outbound queue, behind one lock.
//!
//! A connection task takes the lock, feeds the hub, and applies the actions
//! it returns right there: frames go into recipients' [`Link`]s (a push onto
//! a queue, no await, no allocation per delivery beyond queue growth), and
//! the bytes queued per connection are counted so a slow reader is cut off
//! at `send_queue_bytes` instead of growing without bound.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tracing::warn;

use super::Clock;
use crate::config::Config;
use crate::hub::{
    Action, CloseReason, ConnId, Hub, KeyWrapJob, KeyWrapOutcome, PasswordJob, PasswordOutcome,
};
use crate::keywrap::KeyWrapPool;
use crate::password::PasswordPool;
use crate::protocol::FrameCodec;

/// What the server and a connection's task share: the frames queued for the
/// connection and whether the server has decided to end it.
///
/// It is one small allocation with no channel behind it, because an idle
/// connection should cost as little memory as possible: an empty queue
/// holds no buffer, and the task is woken through a stored [`Waker`] rather
/// than a waiter node it would have to keep in its own state.
#[derive(Debug, Default)]
pub struct Link {
    outbox: Mutex<Outbox>,
}

#[derive(Debug, Default)]
struct Outbox {
    frames: VecDeque<Bytes>,
    /// Bytes of `frames[0]` already written.
    offset: usize,
    /// Bytes queued and not yet written to the socket.
    bytes: usize,
    /// Set once, when the server decides to end the connection.
    closing: Option<CloseReason>,
    /// The connection task, while it waits for something to do.
    waker: Option<Waker>,
}

/// The queue would grow past `send_queue_bytes`; it holds `queued` bytes.
/// The frame that did not fit comes back.
struct Overflow {
    queued: usize,
    frame: Bytes,
}

impl Link {
    fn outbox(&self) -> MutexGuard<'_, Outbox> {
        self.outbox
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a frame unless that takes the queue over `limit` bytes. A
    /// frame larger than the limit still goes to an empty queue, so a big
    /// list reply is not fatal.
    fn push(&self, frame: Bytes, limit: usize) -> Result<(), Overflow> {
        let mut outbox = self.outbox();
        if outbox.bytes > 0 && outbox.bytes + frame.len() > limit {
            return Err(Overflow {
                queued: outbox.bytes,
                frame,
            });
        }
        if outbox.frames.capacity() == 0 {
            // Most connections are sent one frame at a time: start with room
            // for one instead of the usual four.
            outbox.frames.reserve_exact(1);
        }
        outbox.bytes += frame.len();
        outbox.frames.push_back(frame);
        let waker = outbox.waker.take();
        drop(outbox);
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    fn close(&self, reason: CloseReason) {
        let mut outbox = self.outbox();
        if outbox.closing.is_some() {
            return;
        }
        outbox.closing = Some(reason);
        let waker = outbox.waker.take();
        drop(outbox);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Moves up to `batch.len()` frames from the front of the queue into
    /// `batch`, for writing without holding the lock. Returns how many, and
    /// how many bytes of the first were already written.
    pub fn take_batch(&self, batch: &mut [Bytes]) -> (usize, usize) {
        let mut outbox = self.outbox();
        let count = outbox.frames.len().min(batch.len());
        for (slot, frame) in batch.iter_mut().zip(outbox.frames.drain(..count)) {
            *slot = frame;
        }
        if outbox.frames.is_empty() && outbox.frames.capacity() > batch.len() {
            // A burst grew the queue; give the memory back.
            outbox.frames = VecDeque::new();
        }
        (count, outbox.offset)
    }

    /// After a write of `written` bytes: returns the frames of a batch that
    /// were not completely written to the front of the queue, the first with
    /// `offset` bytes written.
    pub fn put_back(&self, unwritten: &mut [Bytes], offset: usize, written: usize) {
        let mut outbox = self.outbox();
        outbox.bytes -= written;
        outbox.offset = offset;
        for frame in unwritten.iter_mut().rev() {
            outbox.frames.push_front(std::mem::take(frame));
        }
    }

    /// Ready when the server closes the connection or has frames queued.
    /// Unless closing, it also remembers the task's waker, so that a frame
    /// or a close arriving later wakes the task whatever else it waits for.
    pub fn poll_wake(&self, cx: &mut Context<'_>) -> Poll<LinkEvent> {
        let mut outbox = self.outbox();
        if let Some(reason) = outbox.closing {
            return Poll::Ready(LinkEvent::Closing(reason));
        }
        match &mut outbox.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        if outbox.frames.is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(LinkEvent::Output)
        }
    }
}

/// Why [`Link::poll_wake`] woke the task.
pub enum LinkEvent {
    Closing(CloseReason),
    Output,
}

struct State {
    hub: Hub,
    peers: HashMap<ConnId, Arc<Link>>,
    next_conn: u64,
    /// Cleared at shutdown, so a connection accepted just before is closed
    /// instead of being registered after everyone else was told to go.
    accepting: bool,
    /// Reused for every hub call, so feeding the hub allocates nothing.
    actions: Vec<Action>,
}

pub struct Shared {
    state: Mutex<State>,
    passwords: PasswordPool,
    key_wraps: KeyWrapPool,
    config: Config,
    clock: Clock,
}

/// What [`Shared::feed`] left the connection to do.
pub enum Fed {
    /// Keep reading.
    More,
    /// Run this password job, then report with [`Shared::password_checked`].
    Password(PasswordJob),
    /// Run this DM key job, then report with [`Shared::keys_wrapped`].
    Keys(KeyWrapJob),
}

impl Shared {
    pub fn new(
        config: Config,
        passwords: PasswordPool,
        key_wraps: KeyWrapPool,
        clock: Clock,
    ) -> Shared {
        let state = State {
            hub: Hub::new(&config),
            peers: HashMap::new(),
            next_conn: 0,
            accepting: true,
            actions: Vec::new(),
        };
        Shared {
            state: Mutex::new(state),
            passwords,
            key_wraps,
            config,
            clock,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn clock(&self) -> Clock {
        self.clock
    }

    pub fn passwords(&self) -> &PasswordPool {
        &self.passwords
    }

    pub fn key_wraps(&self) -> &KeyWrapPool {
        &self.key_wraps
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug; the state is still the
        // best there is, so keep serving the other connections.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a new connection with the hub.
    pub fn register(&self, peer: SocketAddr, link: Arc<Link>) -> ConnId {
        let mut state = self.lock();
        state.next_conn += 1;
        let conn = ConnId(state.next_conn);
        if !state.accepting {
            link.close(CloseReason::Shutdown);
            return conn;
        }
        state.peers.insert(conn, link);
        self.run_hub(&mut state, |hub, out| {
            hub.connect(conn, peer, self.clock.now(), out)
        });
        conn
    }

    /// Feeds the bytes in `buffer` to the hub (see [`Hub::receive`]).
    pub fn feed(&self, conn: ConnId, buffer: &mut BytesMut) -> Fed {
        // The codec keeps no state between calls, so it is made here rather
        // than stored in every connection.
        let mut codec = FrameCodec::new(self.config.max_frame_bytes);
        let now = self.clock.now();
        let mut state = self.lock();
        self.run_hub(&mut state, |hub, out| {
            hub.receive(conn, &mut codec, buffer, now, out)
        })
    }

    /// The server's counters in the Prometheus text format.
    pub fn render_metrics(&self) -> String {
        let metrics = {
            let state = self.lock();
            let metrics = state.hub.metrics().clone();
            metrics.set_population(
                state.hub.user_count(),
                state.hub.room_count(),
                state.hub.transfer_count(),
            );
            metrics
        };
        metrics.render()
    }

    /// Reports a finished password job to the hub.
    pub fn password_checked(&self, conn: ConnId, ticket: u64, outcome: PasswordOutcome) -> Fed {
        let mut state = self.lock();
        self.run_hub(&mut state, |hub, out| {
            hub.password_checked(conn, ticket, outcome, out)
        })
    }

    /// Reports a finished key wrap job (a DM key or a rotation) to the hub.
    pub fn keys_wrapped(&self, ticket: u64, outcome: KeyWrapOutcome) -> Fed {
        let mut state = self.lock();
        self.run_hub(&mut state, |hub, out| {
            hub.keys_wrapped(ticket, outcome, out)
        })
    }

    /// The connection ended on its side. Idempotent.
    pub fn disconnect(&self, conn: ConnId, reason: CloseReason) {
        let mut state = self.lock();
        state.peers.remove(&conn);
        let now = self.clock.now();
        self.run_hub(&mut state, |hub, out| {
            hub.disconnect(conn, reason, now, out)
        });
    }

    pub fn next_timeout(&self) -> Option<Instant> {
        self.lock().hub.poll_timeout()
    }

    pub fn handle_timeout(&self, now: Instant) {
        let mut state = self.lock();
        self.run_hub(&mut state, |hub, out| hub.handle_timeout(now, out));
    }

    /// Shutdown: every connection flushes what it has and closes. Key
    /// rotations that the departures would start are dropped: everyone is
    /// leaving, so they would have nobody to go to.
    pub fn close_all(&self) {
        let mut state = self.lock();
        state.accepting = false;
        let peers = std::mem::take(&mut state.peers);
        let now = self.clock.now();
        let mut dropped = Vec::new();
        for (conn, link) in peers {
            state
                .hub
                .disconnect(conn, CloseReason::Shutdown, now, &mut dropped);
            link.close(CloseReason::Shutdown);
        }
    }

    /// Calls the hub and applies every action it returns: frames are queued,
    /// rotations go to the key-wrapping pool. Returns the job that the
    /// calling connection's reply waits for, if the call produced one (only
    /// the calling connection's own requests produce them).
    fn run_hub(&self, state: &mut State, call: impl FnOnce(&mut Hub, &mut Vec<Action>)) -> Fed {
        let mut actions = std::mem::take(&mut state.actions);
        call(&mut state.hub, &mut actions);
        let mut fed = Fed::More;
        let mut too_slow = Vec::new();
        loop {
            for action in actions.drain(..) {
                match action {
                    Action::Send { to, frame } => {
                        if !self.deliver(state, to, frame) {
                            too_slow.push(to);
                        }
                    }
                    Action::Close { conn, reason } => {
                        if let Some(link) = state.peers.remove(&conn) {
                            link.close(reason);
                        }
                    }
                    Action::Password(job) => fed = Fed::Password(job),
                    Action::WrapKeys(job) if job.requester.is_some() => fed = Fed::Keys(job),
                    Action::WrapKeys(job) => self.key_wraps.rotate(job),
                }
            }
            if too_slow.is_empty() {
                break;
            }
            // Told only now, so that this batch stays in order: a slow
            // consumer's departure may start a rotation of its room's key.
            let now = self.clock.now();
            for conn in too_slow.drain(..) {
                state
                    .hub
                    .disconnect(conn, CloseReason::SlowConsumer, now, &mut actions);
            }
        }
        state.actions = actions;
        fed
    }

    /// Queues a frame for a connection, cutting the connection off if its
    /// queue would exceed `send_queue_bytes` (plus, for a file's recipient,
    /// a window of chunks); returns `false` when it did.
    fn deliver(&self, state: &mut State, to: ConnId, frame: Bytes) -> bool {
        let Some(link) = state.peers.get(&to) else {
            return true;
        };
        let limit = self.config.send_queue_bytes;
        let Err(Overflow { queued, frame }) = link.push(frame, limit) else {
            return true;
        };
        // Only on overflow, so chat pays nothing: a file's recipient may
        // also hold a window of chunks.
        let allowance = state.hub.queue_allowance(to);
        let queued = match allowance {
            0 => queued,
            _ => match link.push(frame, limit + allowance) {
                Ok(()) => return true,
                Err(Overflow { queued, .. }) => queued,
            },
        };
        warn!(conn = %to, queued, limit = limit + allowance, "send queue overflow");
        let link = state.peers.remove(&to).expect("just looked up");
        link.close(CloseReason::SlowConsumer);
        false
    }
}
