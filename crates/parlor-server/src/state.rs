//! The hub plus each connection's outbound queue, behind one lock.
//!
//! A connection task takes the lock, feeds the hub, and applies the actions
//! it returns right there: frames go into recipients' [`Outbox`]es (a push
//! onto a queue, no await, no allocation per delivery beyond queue growth),
//! and the bytes queued per connection are counted so a slow reader is cut
//! off at `send_queue_bytes` instead of growing without bound.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use rustc_hash::FxHashMap;
use tracing::{error, warn};

use super::busy_pause;
use super::outbox::{Outbox, OutboxEvent, Overflow, Queued};
use super::Clock;
use crate::config::Config;
use crate::keywrap::KeyWrapPool;
use crate::password::PasswordPool;
use parlor_cluster::Cluster;
use parlor_core::{
    Action, ClaimOutcome, CloseReason, CommitOutcome, ConnId, DirectOutcome, DirectRelay,
    DmKeyAnswer, DmKeyRelay, EntryOutcome, FileRelay, FileTarget, FileTargetAsk, Hub, KeyWrapJob,
    KeyWrapOutcome, NameClaim, NameRequest, NodeId, PasswordJob, PasswordOutcome, RoomEntry,
    RoomRecord,
};
use parlor_proto::secure::{Fingerprint, CHANNEL_BINDING_LEN};
use parlor_proto::FrameCodec;
use tokio::sync::oneshot;

struct State {
    hub: Hub,
    /// Every connection's queue, from its registration until its task ends.
    /// Keyed by a fast hash: one lookup per delivery, and connection ids are
    /// counted by the server, never chosen by a client.
    outboxes: FxHashMap<ConnId, Outbox>,
    next_conn: u64,
    /// Cleared at shutdown, so a connection accepted just before is closed
    /// instead of being registered after everyone else was told to go.
    accepting: bool,
    /// Reused for every hub call, so feeding the hub allocates nothing.
    actions: Vec<Action>,
}

/// What a connection awaits before it reads again while the queue of
/// relays to NATS is short of room ([`Shared::relay_backlogged`]).
pub(crate) type Backlogged = Pin<Box<dyn Future<Output = ()> + Send>>;

pub(crate) struct Shared {
    state: Mutex<State>,
    passwords: PasswordPool,
    key_wraps: KeyWrapPool,
    config: Config,
    clock: Clock,
    /// Cluster mode: this node's membership, set once right after the
    /// state is made (the cluster reports to it).
    cluster: OnceLock<Cluster>,
}

/// What [`Shared::feed`] left the connection to do.
#[derive(Debug)]
pub(crate) enum Fed {
    /// Keep reading.
    More,
    /// Run this password job, then report with [`Shared::password_checked`].
    Password(PasswordJob),
    /// Run this DM key job, then report with [`Shared::keys_wrapped`].
    Keys(KeyWrapJob),
    /// Claim this name in the cluster ([`Shared::claim_name`]), then report
    /// with [`Shared::name_claimed`].
    Name(NameClaim),
    /// Enter this room in the cluster ([`Shared::enter_room`]), then report
    /// with [`Shared::room_entered`].
    Room(Box<RoomEntry>),
    /// Hand this DM to another node ([`Shared::relay_direct`]), then report
    /// with [`Shared::direct_relayed`].
    Direct(Box<DirectRelay>),
    /// Send this DM key request to another node ([`Shared::relay_dm_key`]),
    /// then report with [`Shared::dm_key_relayed`].
    DmKey(Box<DmKeyRelay>),
    /// Ask the node of this file's target whose key it holds
    /// ([`Shared::ask_file_target`]), then report with
    /// [`Shared::file_target_answered`].
    FileTarget(Box<FileTargetAsk>),
    /// Send this file request to the node its transfer runs on
    /// ([`Shared::relay_file_request`]), then report with
    /// [`Shared::file_request_relayed`].
    File(Box<FileRelay>),
}

impl Shared {
    pub(crate) fn new(
        config: Config,
        passwords: PasswordPool,
        key_wraps: KeyWrapPool,
        clock: Clock,
    ) -> Shared {
        let hub = match &config.cluster {
            Some(cluster) => Hub::clustered(
                config.hub_limits(),
                rand::random(),
                cluster.node_id.as_str().into(),
            ),
            None => Hub::new(config.hub_limits(), rand::random()),
        };
        let state = State {
            hub,
            outboxes: FxHashMap::default(),
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
            cluster: OnceLock::new(),
        }
    }

    /// Makes this server a node of `cluster`; once, before serving.
    pub(crate) fn set_cluster(&self, cluster: Cluster) {
        if self.cluster.set(cluster).is_err() {
            error!("joined a cluster twice; keeping the first");
        }
    }

    pub(crate) fn cluster(&self) -> Option<&Cluster> {
        self.cluster.get()
    }

    /// Starts a name claim in the cluster; `None` without one (a hub made
    /// for one node never asks).
    pub(crate) fn claim_name(
        &self,
        request: NameRequest,
    ) -> Option<oneshot::Receiver<ClaimOutcome>> {
        Some(self.cluster.get()?.claim(request))
    }

    /// Reports a finished name claim to the hub.
    pub(crate) fn name_claimed(&self, conn: ConnId, ticket: u64, outcome: ClaimOutcome) -> Fed {
        let now = self.clock.now();
        let mut state = self.lock();
        self.run_hub(&mut state, |hub, out| {
            hub.name_claimed(conn, ticket, outcome, now, out)
        })
    }

    /// Starts a room entry in the cluster; `None` without one.
    pub(crate) fn enter_room(&self, entry: RoomEntry) -> Option<oneshot::Receiver<EntryOutcome>> {
        Some(self.cluster.get()?.enter(entry))
    }

    /// Reports a finished room entry to the hub.
    pub(crate) fn room_entered(&self, conn: ConnId, ticket: u64, outcome: EntryOutcome) -> Fed {
        let now = self.clock.now();
        let mut state = self.lock();
        self.run_hub(&mut state, |hub, out| {
            hub.room_entered(conn, ticket, outcome, now, out)
        })
    }

    /// `None` unless this node's queue of relays to NATS is short of room;
    /// else what a connection awaits before it reads again.
    pub(crate) fn relay_backlogged(&self) -> Option<Backlogged> {
        self.cluster.get()?.relay_backlogged()
    }

    /// Hands a DM to another node; `None` without a cluster.
    pub(crate) fn relay_direct(
        &self,
        relay: &DirectRelay,
    ) -> Option<oneshot::Receiver<DirectOutcome>> {
        let cluster = self.cluster.get()?;
        Some(cluster.relay_direct(&relay.node, &relay.target, &relay.frame))
    }

    /// Reports a DM handed to another node to the hub.
    pub(crate) fn direct_relayed(
        &self,
        conn: ConnId,
        ticket: u64,
        target: &[u8],
        outcome: DirectOutcome,
    ) -> Fed {
        let mut state = self.lock();
        self.run_hub(&mut state, |hub, out| {
            hub.direct_relayed(conn, ticket, target, outcome, out)
        })
    }

    /// Sends a DM key request to another node; `None` without a cluster.
    pub(crate) fn relay_dm_key(
        &self,
        relay: &DmKeyRelay,
    ) -> Option<oneshot::Receiver<DmKeyAnswer>> {
        let cluster = self.cluster.get()?;
        Some(cluster.relay_dm_key(&relay.node, &relay.target, &relay.introduction))
    }

    /// Reports another node's answer to a DM key request to the hub.
    pub(crate) fn dm_key_relayed(
        &self,
        conn: ConnId,
        ticket: u64,
        target: &[u8],
        answer: DmKeyAnswer,
    ) -> Fed {
        let mut state = self.lock();
        self.run_hub(&mut state, |hub, out| {
            hub.dm_key_relayed(conn, ticket, target, answer, out)
        })
    }

    /// Sends a file request to the node its transfer runs on; `None`
    /// without a cluster, or for one nobody answers.
    pub(crate) fn relay_file_request(
        &self,
        relay: &FileRelay,
    ) -> Option<oneshot::Receiver<Option<Bytes>>> {
        self.cluster.get()?.relay_file_request(relay)
    }

    /// Asks the node of a file's target whose key the target holds; `None`
    /// without a cluster.
    pub(crate) fn ask_file_target(
        &self,
        ask: &FileTargetAsk,
    ) -> Option<oneshot::Receiver<FileTarget>> {
        Some(self.cluster.get()?.ask_file_target(ask))
    }

    /// Reports whose key a file's target holds to the hub.
    pub(crate) fn file_target_answered(
        &self,
        conn: ConnId,
        ticket: u64,
        answer: FileTarget,
    ) -> Fed {
        let now = self.clock.now();
        let mut state = self.lock();
        self.run_hub(&mut state, |hub, out| {
            hub.file_target_answered(conn, ticket, answer, now, out)
        })
    }

    /// Reports another node's answer to a file request to the hub.
    pub(crate) fn file_request_relayed(
        &self,
        conn: ConnId,
        ticket: u64,
        answer: Option<Bytes>,
    ) -> Fed {
        let mut state = self.lock();
        self.run_hub(&mut state, |hub, out| {
            hub.file_request_relayed(conn, ticket, answer, out)
        })
    }

    /// Carries out an action that is the cluster's work and owes no reply.
    fn cluster_work(&self, action: Action) {
        let Some(cluster) = self.cluster.get() else {
            return error!(
                ?action,
                "the hub asked for a cluster's work, but this server is in no cluster"
            );
        };
        match action {
            Action::ReleaseName(name) => cluster.release(name),
            Action::LeaveRoom { room, member } => cluster.leave_room(room, member),
            Action::RenameMember(rename) => cluster.rename_member(*rename),
            Action::CommitEpoch(commit) => cluster.commit_epoch(*commit),
            Action::Relay { to, frame } => cluster.relay(&to.nodes, &to.room, &frame),
            Action::RelayToMembers(frames) => cluster.relay_to_members(&frames),
            Action::RelayToUser(frame) => cluster.relay_to_user(&frame),
            Action::RelayFileRequest(relay) => {
                cluster.relay_file_request(&relay);
            }
            Action::AnswerFileRequest { ask, frames } => cluster.answer_file_request(ask, frames),
            Action::AnswerDmKey { ask, answer } => cluster.answer_dm_key(ask, answer),
            other => error!(action = ?other, "not the cluster's work"),
        }
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    pub(crate) fn clock(&self) -> Clock {
        self.clock
    }

    pub(crate) fn passwords(&self) -> &PasswordPool {
        &self.passwords
    }

    pub(crate) fn key_wraps(&self) -> &KeyWrapPool {
        &self.key_wraps
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug; the state is still the
        // best there is, so keep serving the other connections.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a new connection with the hub. Its task must call
    /// [`Shared::forget`] when it ends, and first carry out what is returned
    /// (in cluster mode, the claim of its guest name).
    pub(crate) fn register(&self, peer: SocketAddr) -> (ConnId, Fed) {
        let mut state = self.lock();
        state.next_conn += 1;
        let conn = ConnId(state.next_conn);
        let accepting = state.accepting;
        let outbox = state.outboxes.entry(conn).or_default();
        if !accepting {
            let _ = outbox.close(CloseReason::Shutdown);
            return (conn, Fed::More);
        }
        let fed = self.run_hub(&mut state, |hub, out| {
            hub.connect(conn, peer, self.clock.now(), out)
        });
        (conn, fed)
    }

    /// Tells the hub that the connection runs over TLS, with this channel
    /// binding (see [`Hub::channel_bound`]).
    pub(crate) fn channel_bound(&self, conn: ConnId, binding: [u8; CHANNEL_BINDING_LEN]) {
        self.lock().hub.channel_bound(conn, binding);
    }

    /// What the hub holds as the connection's channel binding.
    #[cfg(test)]
    pub(crate) fn channel_binding(&self, conn: ConnId) -> Option<[u8; CHANNEL_BINDING_LEN]> {
        self.lock().hub.channel_binding(conn).copied()
    }

    /// Feeds the bytes in `buffer` to the hub (see [`Hub::receive`]).
    pub(crate) fn feed(&self, conn: ConnId, buffer: &mut BytesMut) -> Fed {
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
    pub(crate) fn render_metrics(&self) -> String {
        let stats = self.lock().hub.stats();
        let cluster = self.cluster().map(Cluster::stats);
        crate::metrics::render(&stats, busy_pause::pauses(), cluster.as_ref())
    }

    /// Reports a finished password job to the hub.
    pub(crate) fn password_checked(
        &self,
        conn: ConnId,
        ticket: u64,
        outcome: PasswordOutcome,
    ) -> Fed {
        let now = self.clock.now();
        let mut state = self.lock();
        self.run_hub(&mut state, |hub, out| {
            hub.password_checked(conn, ticket, outcome, now, out)
        })
    }

    /// Reports a finished key wrap job (a DM key or a rotation) to the hub.
    pub(crate) fn keys_wrapped(&self, ticket: u64, outcome: KeyWrapOutcome) -> Fed {
        let now = self.clock.now();
        let mut state = self.lock();
        self.run_hub(&mut state, |hub, out| {
            hub.keys_wrapped(ticket, outcome, now, out)
        })
    }

    /// Ready when the server closes the connection or has frames queued
    /// for it (see [`Outbox::poll_wake`]).
    pub(crate) fn poll_wake(&self, conn: ConnId, cx: &mut Context<'_>) -> Poll<OutboxEvent> {
        match self.lock().outboxes.get_mut(&conn) {
            Some(outbox) => outbox.poll_wake(cx),
            None => Poll::Ready(OutboxEvent::Closing(CloseReason::Shutdown)),
        }
    }

    /// Takes frames queued for the connection to write (see
    /// [`Outbox::take_batch`]).
    pub(crate) fn take_batch(&self, conn: ConnId, batch: &mut Vec<Queued>, max: usize) -> usize {
        self.lock()
            .outboxes
            .get_mut(&conn)
            .map_or(0, |outbox| outbox.take_batch(batch, max))
    }

    /// Returns what a write left over (see [`Outbox::put_back`]).
    pub(crate) fn put_back(
        &self,
        conn: ConnId,
        unwritten: &mut Vec<Queued>,
        offset: usize,
        written: usize,
    ) {
        if let Some(outbox) = self.lock().outboxes.get_mut(&conn) {
            outbox.put_back(unwritten, offset, written);
        }
    }

    /// The connection ended on its side: the hub forgets the user, and
    /// nothing more is queued for it. What is queued stays, to be flushed.
    /// Idempotent.
    pub(crate) fn disconnect(&self, conn: ConnId, reason: CloseReason) {
        let mut state = self.lock();
        if let Some(outbox) = state.outboxes.get_mut(&conn) {
            // The task calling this is awake: nothing to wake.
            let _ = outbox.close(reason);
        }
        let now = self.clock.now();
        self.run_hub(&mut state, |hub, out| {
            hub.disconnect(conn, reason, now, out)
        });
    }

    /// The connection's task has ended: drops its queue.
    pub(crate) fn forget(&self, conn: ConnId) {
        self.lock().outboxes.remove(&conn);
    }

    pub(crate) fn next_timeout(&self) -> Option<Instant> {
        self.lock().hub.poll_timeout()
    }

    pub(crate) fn handle_timeout(&self, now: Instant) {
        let mut state = self.lock();
        self.run_hub(&mut state, |hub, out| hub.handle_timeout(now, out));
    }

    /// Shutdown: every connection flushes what it has and closes, and no
    /// new one is served.
    pub(crate) fn close_all(&self) {
        self.lock().accepting = false;
        self.close_everyone(CloseReason::Shutdown);
    }

    /// Every connection flushes what it has and closes. Key rotations that
    /// the departures would start are dropped, and so are the frames they
    /// would send: everyone is leaving, so they would have nobody to go to.
    /// The names they held are released.
    pub(crate) fn close_everyone(&self, reason: CloseReason) {
        let mut state = self.lock();
        let now = self.clock.now();
        let mut departures = Vec::new();
        let State { hub, outboxes, .. } = &mut *state;
        for (conn, outbox) in outboxes.iter_mut() {
            hub.disconnect(*conn, reason, now, &mut departures);
            wake(outbox.close(reason));
        }
        for action in departures {
            if let Action::ReleaseName(_) | Action::LeaveRoom { .. } = action {
                self.cluster_work(action);
            }
        }
    }

    /// Calls the hub and applies every action it returns (see
    /// [`Shared::apply`]).
    fn run_hub(&self, state: &mut State, call: impl FnOnce(&mut Hub, &mut Vec<Action>)) -> Fed {
        let mut actions = std::mem::take(&mut state.actions);
        call(&mut state.hub, &mut actions);
        let fed = self.apply(state, &mut actions);
        state.actions = actions;
        fed
    }

    /// Applies one hub call's actions, in order: frames are queued,
    /// rotations go to the key-wrapping pool, and connections that overflow
    /// their queue are reported to the hub, whose answer is applied in turn.
    /// Returns the job that the calling connection's reply waits for, if
    /// the call produced one.
    ///
    /// Two rules keep every order the hub gave: consecutive broadcasts to
    /// the same members are queued as one run, and any other frame but the
    /// sender's own reply first queues the pending run.
    fn apply(&self, state: &mut State, actions: &mut Vec<Action>) -> Fed {
        let mut fed = Fed::More;
        let mut too_slow = Vec::new();
        let mut run: Option<BroadcastRun> = None;
        loop {
            for action in actions.drain(..) {
                match action {
                    Action::Broadcast { to, except, frame } => match &mut run {
                        Some(run) if run.continues(&to, except) => run.frames.push(frame),
                        _ => {
                            let next = BroadcastRun {
                                to,
                                except,
                                frames: vec![frame],
                            };
                            self.deliver_run(state, run.replace(next), &mut too_slow);
                        }
                    },
                    Action::Send { to, frame } => {
                        // The sender's own replies may pass its messages'
                        // run, which is not for it; any other frame waits
                        // until the run is queued, so every order holds.
                        if run.as_ref().is_some_and(|run| run.except != Some(to)) {
                            self.deliver_run(state, run.take(), &mut too_slow);
                        }
                        if !self.deliver(state, to, Queued::Frame(frame)) {
                            too_slow.push(to);
                        }
                    }
                    Action::Close { conn, reason } => {
                        // What was sent before the close is queued before it.
                        self.deliver_run(state, run.take(), &mut too_slow);
                        let outbox = state.outboxes.get_mut(&conn);
                        wake(outbox.and_then(|outbox| outbox.close(reason)));
                    }
                    Action::Password(job) => {
                        self.owe(state, &mut fed, job.conn, Fed::Password(job))
                    }
                    Action::WrapKeys(job) => match job.requester {
                        Some(conn) => self.owe(state, &mut fed, conn, Fed::Keys(job)),
                        None => self.key_wraps.rotate(job),
                    },
                    Action::ClaimName(claim) => {
                        self.owe(state, &mut fed, claim.conn, Fed::Name(claim))
                    }
                    Action::EnterRoom(entry) => {
                        self.owe(state, &mut fed, entry.conn, Fed::Room(entry))
                    }
                    Action::RelayDirect(relay) => {
                        self.owe(state, &mut fed, relay.conn, Fed::Direct(relay))
                    }
                    Action::RelayDmKey(relay) => {
                        self.owe(state, &mut fed, relay.conn, Fed::DmKey(relay))
                    }
                    Action::AskFileTarget(ask) => {
                        self.owe(state, &mut fed, ask.conn, Fed::FileTarget(ask))
                    }
                    Action::RelayFileRequest(relay) if relay.ticket.is_some() => {
                        self.owe(state, &mut fed, relay.conn, Fed::File(relay))
                    }
                    Action::Relay { .. }
                    | Action::RelayToMembers(_)
                    | Action::RelayToUser(_)
                    | Action::RelayFileRequest(_) => {
                        // Queued for the members here first, as the hub
                        // ordered; the relay keeps the order per node.
                        self.deliver_run(state, run.take(), &mut too_slow);
                        self.cluster_work(action);
                    }
                    work @ (Action::ReleaseName(_)
                    | Action::LeaveRoom { .. }
                    | Action::RenameMember(_)
                    | Action::CommitEpoch(_)
                    | Action::AnswerFileRequest { .. }
                    | Action::AnswerDmKey { .. }) => self.cluster_work(work),
                }
            }
            self.deliver_run(state, run.take(), &mut too_slow);
            if too_slow.is_empty() {
                break;
            }
            // Told only now, so that this batch stays in order: a slow
            // consumer's departure may start a rotation of its room's key.
            let now = self.clock.now();
            for conn in too_slow.drain(..) {
                state
                    .hub
                    .disconnect(conn, CloseReason::SlowConsumer, now, actions);
            }
        }
        fed
    }

    /// Records the job `conn`'s reply waits for. The hub owes at most one
    /// per call (its driver contract): a second is a bug in the hub.
    /// Keeping either job would leave the other request unanswered without
    /// a word, so the connection is closed instead, with an error logged.
    fn owe(&self, state: &mut State, fed: &mut Fed, conn: ConnId, job: Fed) {
        let Fed::More = fed else {
            error!(%conn, first = ?fed, second = ?job, "the hub owed two jobs in one call");
            let outbox = state.outboxes.get_mut(&conn);
            wake(outbox.and_then(|outbox| outbox.close(CloseReason::Internal)));
            *fed = Fed::More;
            return;
        };
        *fed = job;
    }

    /// Queues a run of room messages for each of its recipients.
    fn deliver_run(
        &self,
        state: &mut State,
        run: Option<BroadcastRun>,
        too_slow: &mut Vec<ConnId>,
    ) {
        let Some(BroadcastRun { to, except, frames }) = run else {
            return;
        };
        let run = Queued::run(frames);
        for &member in to.iter().filter(|member| Some(**member) != except) {
            if !self.deliver(state, member, run.clone()) {
                too_slow.push(member);
            }
        }
    }

    /// Queues a frame for a connection, cutting the connection off if its
    /// queue would exceed `send_queue_bytes` (plus, for a file's recipient,
    /// a window of chunks); returns `false` when it did.
    fn deliver(&self, state: &mut State, to: ConnId, frame: Queued) -> bool {
        let State { hub, outboxes, .. } = state;
        let Some(outbox) = outboxes.get_mut(&to) else {
            return true;
        };
        let limit = self.config.send_queue_bytes;
        let overflow = match outbox.push(frame, limit) {
            Ok(waker) => {
                wake(waker);
                return true;
            }
            Err(overflow) => overflow,
        };
        // Looked up only on overflow, so chat pays nothing for it.
        let limit = limit + hub.queue_allowance(to);
        let queued = match outbox.push(overflow.frame, limit) {
            Ok(waker) => {
                wake(waker);
                return true;
            }
            Err(Overflow { queued, .. }) => queued,
        };
        warn!(conn = %to, queued, limit, "send queue overflow");
        wake(outbox.close(CloseReason::SlowConsumer));
        false
    }
}

/// Room messages in a row from one sender to one room's members, gathered
/// while a hub call's actions are applied, to be queued as one shared run.
struct BroadcastRun {
    to: Arc<Vec<ConnId>>,
    except: Option<ConnId>,
    frames: Vec<Bytes>,
}

impl BroadcastRun {
    /// Whether a broadcast to `to` except `except` goes to exactly the same
    /// recipients (the member list unchanged since), so it may join the run.
    fn continues(&self, to: &Arc<Vec<ConnId>>, except: Option<ConnId>) -> bool {
        Arc::ptr_eq(&self.to, to) && self.except == except
    }
}

/// Wakes a connection's task, if it was waiting.
fn wake(waker: Option<Waker>) {
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// What the cluster tells the server, passed on to the hub. Holds the
/// shared state weakly: the cluster lives inside it.
pub(crate) struct ServerNode(pub(crate) Weak<Shared>);

impl ServerNode {
    /// Calls the hub, if the server is still there, and applies what it
    /// asks for.
    fn with_hub<T: Default>(&self, call: impl FnOnce(&mut Hub, &mut Vec<Action>) -> T) -> T {
        self.with_hub_at(|hub, _, out| call(hub, out))
    }

    /// [`ServerNode::with_hub`] for a call that takes the time.
    fn with_hub_at<T: Default>(
        &self,
        call: impl FnOnce(&mut Hub, Instant, &mut Vec<Action>) -> T,
    ) -> T {
        let Some(shared) = self.0.upgrade() else {
            return T::default();
        };
        let now = shared.clock.now();
        let mut state = shared.lock();
        let mut answer = T::default();
        let fed = shared.run_hub(&mut state, |hub, out| answer = call(hub, now, out));
        if !matches!(fed, Fed::More) {
            error!(?fed, "the hub owed a reply to the cluster");
        }
        answer
    }
}

impl parlor_cluster::Node for ServerNode {
    fn remote_name_held(&self, name: Bytes, node: NodeId) {
        self.with_hub(|hub, _| hub.remote_name_held(name, node));
    }

    fn remote_room(&self, record: RoomRecord) {
        self.with_hub_at(|hub, now, out| hub.remote_room(record, now, out));
    }

    fn remote_room_deleted(&self, room: &[u8], revision: u64) {
        self.with_hub_at(|hub, now, out| hub.remote_room_deleted(room, revision, now, out));
    }

    fn remote_rooms_resyncing(&self) {
        self.with_hub(|hub, _| hub.remote_rooms_resyncing());
    }

    fn remote_rooms_resynced(&self) {
        self.with_hub(|hub, _| hub.remote_rooms_resynced());
    }

    fn relayed_room_message(&self, room: &[u8], frame: Bytes) {
        self.with_hub(|hub, out| hub.relayed_room_message(room, frame, out));
    }

    fn relayed_to_user(&self, node: &str, name: &[u8], fingerprint: &Fingerprint, frame: Bytes) {
        let node = NodeId::from(node);
        self.with_hub(|hub, out| hub.relayed_to_user(&node, name, fingerprint, frame, out));
    }

    fn relayed_file_target(&self, target: &[u8]) -> FileTarget {
        let Some(shared) = self.0.upgrade() else {
            return FileTarget::Unavailable;
        };
        let state = shared.lock();
        state.hub.relayed_file_target(target)
    }

    fn relayed_file_request(&self, ask: Option<u64>, node: &str, name: &[u8], frame: Bytes) {
        let node = NodeId::from(node);
        self.with_hub_at(|hub, now, out| {
            hub.relayed_file_request(ask, &node, name, frame, now, out)
        });
    }

    fn relayed_to_members(&self, room: &[u8], frames: Vec<(Fingerprint, Bytes)>) {
        self.with_hub(|hub, out| hub.relayed_to_members(room, frames, out));
    }

    fn epoch_committed(&self, ticket: u64, outcome: CommitOutcome) {
        self.with_hub_at(|hub, now, out| hub.epoch_committed(ticket, outcome, now, out));
    }

    fn relayed_direct_message(&self, target: &[u8], frame: Bytes) -> bool {
        self.with_hub(|hub, out| hub.relayed_direct_message(target, frame, out))
    }

    fn relayed_dm_key_request(&self, ask: u64, target: &[u8], introduction: Bytes) {
        self.with_hub_at(|hub, now, out| {
            hub.relayed_dm_key_request(ask, target, introduction, now, out)
        });
    }

    fn relay_lost(&self, node: &str) {
        self.with_hub_at(|hub, now, out| hub.relay_lost(node, now, out));
    }

    fn remote_name_released(&self, name: &[u8]) {
        self.with_hub_at(|hub, now, out| hub.remote_name_released(name, now, out));
    }

    fn remote_names_cleared(&self) {
        self.with_hub(|hub, _| hub.remote_names_cleared());
    }

    fn fence(&self) {
        if let Some(shared) = self.0.upgrade() {
            shared.close_everyone(CloseReason::ClusterUnavailable);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::task::Waker;

    use parlor_core::{PasswordJob, PasswordTask};
    use zeroize::Zeroizing;

    use super::*;
    use crate::config::Config;

    /// A shell with real (one-thread) pools and three registered
    /// connections.
    fn shell() -> (Shared, [ConnId; 3]) {
        let cheap = argon2::Params::new(8, 1, 1, None).unwrap();
        let passwords = PasswordPool::start(cheap, 1, 1).unwrap();
        let (key_wraps, _rotations) = KeyWrapPool::start(1, 1).unwrap();
        let shared = Shared::new(Config::default(), passwords, key_wraps, Clock::real());
        let peer = SocketAddr::from((Ipv4Addr::LOCALHOST, 40_000));
        let conns = [(); 3].map(|()| shared.register(peer).0);
        (shared, conns)
    }

    fn frame(text: &'static str) -> Bytes {
        Bytes::from_static(text.as_bytes())
    }

    /// What is queued for `conn`, entry by entry.
    fn queued(state: &mut State, conn: ConnId) -> Vec<Queued> {
        let mut batch = Vec::new();
        state
            .outboxes
            .get_mut(&conn)
            .unwrap()
            .take_batch(&mut batch, 64);
        batch
    }

    fn closing(state: &mut State, conn: ConnId) -> Option<CloseReason> {
        let mut cx = Context::from_waker(Waker::noop());
        match state.outboxes.get_mut(&conn).unwrap().poll_wake(&mut cx) {
            Poll::Ready(OutboxEvent::Closing(reason)) => Some(reason),
            _ => None,
        }
    }

    fn password_job(conn: ConnId, ticket: u64) -> Action {
        Action::Password(PasswordJob {
            conn,
            ticket,
            task: PasswordTask::Hash {
                password: Zeroizing::new(b"pw".to_vec()),
            },
        })
    }

    #[test]
    fn broadcasts_in_a_row_share_a_run_and_other_frames_keep_their_place() {
        let (shared, [alice, bob, carol]) = shell();
        let room = Arc::new(vec![alice, bob, carol]);
        let broadcast = |text| Action::Broadcast {
            to: Arc::clone(&room),
            except: Some(alice),
            frame: frame(text),
        };
        let mut actions = vec![
            broadcast("one"),
            broadcast("two"),
            // The sender's own reply may pass its messages' run...
            Action::Send {
                to: alice,
                frame: frame("ok"),
            },
            // ...anything else for a member waits until the run is queued.
            Action::Send {
                to: bob,
                frame: frame("dm"),
            },
            broadcast("three"),
        ];
        let mut state = shared.lock();
        assert!(matches!(shared.apply(&mut state, &mut actions), Fed::More));
        let run = Queued::run(vec![frame("one"), frame("two")]);
        let three = Queued::Frame(frame("three"));
        assert_eq!(queued(&mut state, alice), [Queued::Frame(frame("ok"))]);
        assert_eq!(
            queued(&mut state, bob),
            [run.clone(), Queued::Frame(frame("dm")), three.clone()]
        );
        assert_eq!(queued(&mut state, carol), [run, three]);
    }

    #[test]
    fn a_close_comes_after_what_was_sent_before_it() {
        let (shared, [alice, bob, _]) = shell();
        let mut actions = vec![
            Action::Broadcast {
                to: Arc::new(vec![alice, bob]),
                except: Some(alice),
                frame: frame("bye"),
            },
            Action::Close {
                conn: bob,
                reason: CloseReason::IdleTimeout,
            },
        ];
        let mut state = shared.lock();
        shared.apply(&mut state, &mut actions);
        assert_eq!(queued(&mut state, bob), [Queued::Frame(frame("bye"))]);
        assert_eq!(closing(&mut state, bob), Some(CloseReason::IdleTimeout));
    }

    #[test]
    fn the_one_job_owed_is_handed_to_the_connection() {
        let (shared, [alice, ..]) = shell();
        let mut state = shared.lock();
        let fed = shared.apply(&mut state, &mut vec![password_job(alice, 1)]);
        assert!(matches!(fed, Fed::Password(job) if job.conn == alice && job.ticket == 1));
        assert_eq!(closing(&mut state, alice), None);
    }

    #[test]
    fn a_second_job_owed_by_one_call_closes_the_connection_instead_of_dropping_one() {
        let (shared, [alice, ..]) = shell();
        let mut state = shared.lock();
        let mut actions = vec![password_job(alice, 1), password_job(alice, 2)];
        let fed = shared.apply(&mut state, &mut actions);
        assert!(matches!(fed, Fed::More), "{fed:?}");
        assert_eq!(closing(&mut state, alice), Some(CloseReason::Internal));
    }
}
