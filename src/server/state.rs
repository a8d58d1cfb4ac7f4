//! The hub plus each connection's outbound queue, behind one lock.
//!
//! A connection task takes the lock, feeds the hub, and applies the actions
//! it returns right there: frames go into recipients' unbounded channels
//! (no await, no allocation per delivery beyond the channel slot), and the
//! bytes queued per connection are counted so a slow reader is cut off at
//! `send_queue_bytes` instead of growing without bound.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, Notify};
use tracing::warn;

use super::Clock;
use crate::config::Config;
use crate::hub::{Action, CloseReason, ConnId, Hub, PasswordJob, PasswordOutcome};
use crate::password::PasswordPool;
use crate::protocol::FrameCodec;

/// What a connection task and the rest of the server share about it.
#[derive(Debug, Default)]
pub struct Link {
    /// Bytes handed to the writer and not yet written to the socket.
    pub queued: AtomicUsize,
    /// Set once, when the server decides to end the connection.
    closing: OnceLock<CloseReason>,
    /// Wakes the connection task when `closing` is set.
    pub wake: Notify,
}

impl Link {
    fn close(&self, reason: CloseReason) {
        if self.closing.set(reason).is_ok() {
            self.wake.notify_one();
        }
    }

    pub fn closing(&self) -> Option<CloseReason> {
        self.closing.get().copied()
    }
}

struct Peer {
    outbox: mpsc::UnboundedSender<Bytes>,
    link: Arc<Link>,
}

struct State {
    hub: Hub,
    peers: HashMap<ConnId, Peer>,
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
    config: Config,
    clock: Clock,
}

/// What [`Shared::feed`] left the connection to do.
pub enum Fed {
    /// Keep reading.
    More,
    /// Run this password job, then report with [`Shared::password_checked`].
    Password(PasswordJob),
}

impl Shared {
    pub fn new(config: Config, passwords: PasswordPool, clock: Clock) -> Shared {
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

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug; the state is still the
        // best there is, so keep serving the other connections.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a new connection with the hub.
    pub fn register(
        &self,
        peer: SocketAddr,
        outbox: mpsc::UnboundedSender<Bytes>,
        link: Arc<Link>,
    ) -> ConnId {
        let mut state = self.lock();
        state.next_conn += 1;
        let conn = ConnId(state.next_conn);
        if !state.accepting {
            link.close(CloseReason::Shutdown);
            return conn;
        }
        state.peers.insert(conn, Peer { outbox, link });
        self.run_hub(&mut state, |hub, out| {
            hub.connect(conn, peer, self.clock.now(), out)
        });
        conn
    }

    /// Feeds the bytes in `buffer` to the hub (see [`Hub::receive`]).
    pub fn feed(&self, conn: ConnId, codec: &mut FrameCodec, buffer: &mut BytesMut) -> Fed {
        let now = self.clock.now();
        let mut state = self.lock();
        let job = self.run_hub(&mut state, |hub, out| {
            hub.receive(conn, codec, buffer, now, out)
        });
        job.map_or(Fed::More, Fed::Password)
    }

    /// Reports a finished password job to the hub.
    pub fn password_checked(&self, conn: ConnId, ticket: u64, outcome: PasswordOutcome) -> Fed {
        let mut state = self.lock();
        let job = self.run_hub(&mut state, |hub, out| {
            hub.password_checked(conn, ticket, outcome, out)
        });
        job.map_or(Fed::More, Fed::Password)
    }

    /// The connection ended on its side. Idempotent.
    pub fn disconnect(&self, conn: ConnId, reason: CloseReason) {
        let mut state = self.lock();
        state.peers.remove(&conn);
        state.hub.disconnect(conn, reason);
    }

    pub fn next_timeout(&self) -> Option<Instant> {
        self.lock().hub.poll_timeout()
    }

    pub fn handle_timeout(&self, now: Instant) {
        let mut state = self.lock();
        self.run_hub(&mut state, |hub, out| hub.handle_timeout(now, out));
    }

    /// Shutdown: every connection flushes what it has and closes.
    pub fn close_all(&self) {
        let mut state = self.lock();
        state.accepting = false;
        let peers = std::mem::take(&mut state.peers);
        for (conn, peer) in peers {
            state.hub.disconnect(conn, CloseReason::Shutdown);
            peer.link.close(CloseReason::Shutdown);
        }
    }

    /// Calls the hub and applies every action it returns. Returns the
    /// password job, if the call produced one (only the calling connection's
    /// requests produce them).
    fn run_hub(
        &self,
        state: &mut State,
        call: impl FnOnce(&mut Hub, &mut Vec<Action>),
    ) -> Option<PasswordJob> {
        let mut actions = std::mem::take(&mut state.actions);
        call(&mut state.hub, &mut actions);
        let mut job = None;
        for action in actions.drain(..) {
            match action {
                Action::Send { to, frame } => self.deliver(state, to, frame),
                Action::Close { conn, reason } => {
                    if let Some(peer) = state.peers.remove(&conn) {
                        peer.link.close(reason);
                    }
                }
                Action::Password(password_job) => job = Some(password_job),
            }
        }
        state.actions = actions;
        job
    }

    /// Queues a frame for a connection, cutting the connection off if its
    /// queue would exceed `send_queue_bytes`. A single frame larger than the
    /// limit still goes to an empty queue, so a big list reply is not fatal.
    fn deliver(&self, state: &mut State, to: ConnId, frame: Bytes) {
        let Some(peer) = state.peers.get(&to) else {
            return;
        };
        let queued = peer.link.queued.load(Ordering::Acquire);
        if queued > 0 && queued + frame.len() > self.config.send_queue_bytes {
            warn!(conn = %to, queued, limit = self.config.send_queue_bytes, "send queue overflow");
            let peer = state.peers.remove(&to).expect("just looked up");
            peer.link.close(CloseReason::SlowConsumer);
            state.hub.disconnect(to, CloseReason::SlowConsumer);
            return;
        }
        peer.link.queued.fetch_add(frame.len(), Ordering::AcqRel);
        // A send error means the connection task is already finishing.
        let _ = peer.outbox.send(frame);
    }
}
