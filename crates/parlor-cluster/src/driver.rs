//! The tokio side of the cluster: one queue of changes to names and rooms,
//! the lease loop, the three watches and the sweep. Every decision is made
//! in `lease.rs`, `liveness.rs` and `rooms.rs`, and the relay between nodes
//! lives in `relay.rs`; this file only talks to the key-value store.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{self, CreateErrorKind, Entry, Operation, Store};
use async_nats::jetstream::{self, stream::StorageType};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, error, info, warn};

use crate::keys::{
    name_key, name_of_key, room_key, room_of_key, Run, GUEST_COUNTER, NAME_PREFIX, ROOM_PREFIX,
};
use crate::lease::Lease;
use crate::liveness::Liveness;
use crate::relay::{self, Relay};
use crate::rooms::StoredRoom;
use crate::{
    lock, JoinError, Node, Settings, GUEST_BLOCK, NAMES_BUCKET, NODES_BUCKET, ROOMS_BUCKET,
};
use parlor_core::{
    ClaimOutcome, CommitOutcome, DirectOutcome, DmKeyAnswer, EntryOutcome, EntryTerms, EpochCommit,
    FileRelay, FileTarget, FileTargetAsk, MemberFrames, MemberRename, NameRequest, NodeId,
    RoomEntry, UserFrame,
};

/// How long a purge marker stays in the names bucket. Long enough for
/// every watcher to see it; after it, the bucket holds nothing of the name.
const MARKER_TTL: Duration = Duration::from_secs(60);
/// How often a lost compare-and-set (on the guest counter, or on a room's
/// record) is tried again before the change gives up.
const CAS_TRIES: u32 = 16;
/// The longest pause before a compare-and-set is tried again.
const MAX_CAS_PAUSE: Duration = Duration::from_millis(50);

/// Before attempt `attempt` of a compare-and-set, a pause drawn at random
/// from up to 1 ms × 2^(attempt − 1), [`MAX_CAS_PAUSE`] at most (none
/// before the first): nodes that keep losing to each other fall out of
/// step, and the one on the slowest core is not always the one that reads
/// last.
async fn pause_before(attempt: u32) {
    if attempt > 0 {
        let most = Duration::from_millis(1 << (attempt - 1).min(6)).min(MAX_CAS_PAUSE);
        tokio::time::sleep(most.mul_f64(rand::random::<f64>())).await;
    }
}
/// The longest wait between two attempts to watch a bucket again.
const MAX_WATCH_BACKOFF: Duration = Duration::from_secs(2);

/// This node's membership of the cluster. Made by [`Cluster::join`]; ended
/// by [`Cluster::leave`].
pub struct Cluster {
    ops: mpsc::UnboundedSender<Op>,
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
}

/// Counters for the metrics endpoint.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClusterStats {
    /// Lease renewals that failed or timed out.
    pub renewals_failed: u64,
    /// Times this node fenced itself.
    pub fences: u64,
    /// Names of runs that were over, freed by this node.
    pub names_swept: u64,
    /// Nodes whose records this node sees renewing, itself included.
    pub nodes: usize,
    /// How long the last lease renewal took to be acknowledged.
    pub nats_round_trip: Duration,
    /// Room messages and DMs handed to NATS for other nodes.
    pub relays_sent: u64,
    /// Relays dropped because the queue to NATS was full.
    pub relays_dropped: u64,
    /// Room messages sent again because another node missed them.
    pub relays_resent: u64,
    /// How often this node's connections stopped reading until the queue
    /// of relays to NATS drained.
    pub relay_backlogs: u64,
    /// Room messages and DMs received from other nodes.
    pub relays_received: u64,
    /// Gaps seen in the room messages relayed from another node.
    pub relay_gaps: u64,
}

struct Inner {
    settings: Settings,
    names: Store,
    nodes: Store,
    rooms: Store,
    relay: Relay,
    node: Arc<dyn Node>,
    state: Mutex<State>,
    renewals_failed: AtomicU64,
    fences: AtomicU64,
    names_swept: AtomicU64,
    /// The last renewal's round trip, in microseconds.
    round_trip_micros: AtomicU64,
    /// The rooms watch is being made again; the server is told once it has
    /// read up to the bucket's current values.
    rooms_resyncing: AtomicBool,
}

struct State {
    run: Run,
    lease: Lease,
    liveness: Liveness,
}

/// What the queue carries out, in order.
enum Op {
    Claim {
        request: NameRequest,
        reply: oneshot::Sender<ClaimOutcome>,
    },
    Release(Bytes),
    Enter {
        entry: RoomEntry,
        reply: oneshot::Sender<EntryOutcome>,
    },
    Leave {
        room: Bytes,
        member: Bytes,
    },
    Rename(MemberRename),
    /// Writes a room key's epoch; the hub is told how it went.
    Commit(EpochCommit),
    /// Answered once everything queued before it is done.
    Flush(oneshot::Sender<()>),
    /// The lease was lost and every connection closed: the names this run
    /// held are left to the sweep.
    Fenced,
}

impl Cluster {
    /// Connects to NATS, opens (or creates) the buckets, writes this node's
    /// first lease record and starts the tasks that keep it.
    pub async fn join(settings: Settings, node: Arc<dyn Node>) -> Result<Cluster, JoinError> {
        let lease = Lease::new(settings.lease);
        let client = connect(&settings, lease.renew_every()).await?;
        let context = jetstream::ContextBuilder::new()
            .timeout(lease.renew_every())
            .build(client.clone());
        let names = open_bucket(&context, NAMES_BUCKET, &settings, None).await?;
        let nodes =
            open_bucket(&context, NODES_BUCKET, &settings, Some(lease.record_ttl())).await?;
        let rooms = open_bucket(&context, ROOMS_BUCKET, &settings, None).await?;
        let run = Run::fresh(settings.node_id.clone());
        // Subscribed before anything is claimed: no node relays to this
        // one before it sees a member here.
        let (relay, relay_tasks) = Relay::start(
            client.clone(),
            &run.node,
            run.incarnation,
            lease.renew_every(),
            Arc::clone(&node),
        )
        .await
        .map_err(|err| JoinError::Relay(err.to_string()))?;
        client
            .flush()
            .await
            .map_err(|err| JoinError::Relay(err.to_string()))?;
        let sent = first_lease(&nodes, &run).await?;
        let mut lease = lease;
        lease.renewed(sent);
        info!(node = %run.node, incarnation = %format_args!("{:016x}", run.incarnation),
              "joined the cluster");
        let liveness = Liveness::new(run.clone(), lease.record_ttl());
        let inner = Arc::new(Inner {
            settings,
            names,
            nodes,
            rooms,
            relay,
            node,
            state: Mutex::new(State {
                run,
                lease,
                liveness,
            }),
            renewals_failed: AtomicU64::new(0),
            fences: AtomicU64::new(0),
            names_swept: AtomicU64::new(0),
            round_trip_micros: AtomicU64::new(0),
            rooms_resyncing: AtomicBool::new(false),
        });
        let (ops, queue) = mpsc::unbounded_channel();
        let tasks = vec![
            tokio::spawn(Arc::clone(&inner).run_queue(queue)),
            tokio::spawn(Arc::clone(&inner).keep_lease(ops.clone())),
            tokio::spawn(Arc::clone(&inner).tick_relay()),
            tokio::spawn(Arc::clone(&inner).watch_names()),
            tokio::spawn(Arc::clone(&inner).watch_nodes()),
            tokio::spawn(Arc::clone(&inner).watch_rooms()),
            tokio::spawn(Arc::clone(&inner).sweep()),
            tokio::spawn(relay_tasks.publish),
            tokio::spawn(relay_tasks.receive),
            tokio::spawn(relay_tasks.replies),
            tokio::spawn(relay_tasks.expire),
        ];
        Ok(Cluster { ops, inner, tasks })
    }

    /// Claims a name (see [`NameRequest`]); the outcome comes on the
    /// receiver. If the receiver is dropped first, a name won is released.
    ///
    /// The queue is unbounded, but what is in it is bounded all the same:
    /// each connection has at most one claim in flight (its reply waits
    /// for it) and holds one name, so releases come one per rename or
    /// departure.
    pub fn claim(&self, request: NameRequest) -> oneshot::Receiver<ClaimOutcome> {
        let (reply, outcome) = oneshot::channel();
        // Fails only once the queue has stopped, at shutdown: the dropped
        // reply then reads as unavailable.
        let _ = self.ops.send(Op::Claim { request, reply });
        outcome
    }

    /// Releases a name this node held, after every claim queued before.
    pub fn release(&self, name: Bytes) {
        let _ = self.ops.send(Op::Release(name));
    }

    /// Enters a room (see [`RoomEntry`]); the outcome comes on the
    /// receiver. If the receiver is dropped first, an entry made is undone.
    /// Bounded as claims are: one entry in flight per connection.
    pub fn enter(&self, entry: RoomEntry) -> oneshot::Receiver<EntryOutcome> {
        let (reply, outcome) = oneshot::channel();
        let _ = self.ops.send(Op::Enter { entry, reply });
        outcome
    }

    /// Takes a member of this node out of a room, after every entry queued
    /// before.
    pub fn leave_room(&self, room: Bytes, member: Bytes) {
        let _ = self.ops.send(Op::Leave { room, member });
    }

    /// Renames a member of this node in a room's record.
    pub fn rename_member(&self, rename: MemberRename) {
        let _ = self.ops.send(Op::Rename(rename));
    }

    /// Writes a room key's epoch into the room's record, after every entry
    /// queued before; the outcome goes to [`Node::epoch_committed`].
    pub fn commit_epoch(&self, commit: EpochCommit) {
        let _ = self.ops.send(Op::Commit(commit));
    }

    /// Relays a room message to the members of `room` on `nodes`.
    pub fn relay(&self, nodes: &[NodeId], room: &[u8], frame: &[u8]) {
        self.inner.relay.room(nodes, room, frame);
    }

    /// Relays a frame of a file transfer that runs here to its recipient
    /// on another node.
    pub fn relay_to_user(&self, frame: &UserFrame) {
        let relay = &self.inner.relay;
        relay.to_user(&frame.node, &frame.name, &frame.fingerprint, &frame.frame);
    }

    /// Sends a user's file request to the node its transfer runs on; for
    /// one whose reply the user waits for, the answer (the frames for the
    /// user, `None` for none in time) comes on the receiver.
    pub fn relay_file_request(
        &self,
        relay: &FileRelay,
    ) -> Option<oneshot::Receiver<Option<Bytes>>> {
        let answered = relay.ticket.is_some();
        self.inner
            .relay
            .file_request(&relay.node, &relay.name, &relay.frame, answered)
    }

    /// Asks the node of a file's target whose key the target holds; the
    /// answer comes on the receiver.
    pub fn ask_file_target(&self, ask: &FileTargetAsk) -> oneshot::Receiver<FileTarget> {
        self.inner.relay.file_target(&ask.node, &ask.target)
    }

    /// Answers the file request `ask` of another node with `frames`.
    pub fn answer_file_request(&self, ask: u64, frames: Bytes) {
        self.inner.relay.answer_file_request(ask, frames);
    }

    /// Relays frames for members of a room on one other node, in order
    /// with the room messages relayed to it.
    pub fn relay_to_members(&self, frames: &MemberFrames) {
        self.inner.relay.members(frames);
    }

    /// `None` while the queue of relays to NATS has room; else what a
    /// connection must await before it reads again, so that a burst of
    /// room messages slows its senders instead of overflowing the queue.
    pub fn relay_backlogged(&self) -> Option<BoxFuture<'static, ()>> {
        self.inner.relay.backlogged()
    }

    /// Sends a DM for `target` to `node`; the outcome comes on the receiver.
    pub fn relay_direct(
        &self,
        node: &str,
        target: &[u8],
        frame: &[u8],
    ) -> oneshot::Receiver<DirectOutcome> {
        self.inner.relay.direct(node, target, frame)
    }

    /// Sends a DM key request for `target` to `node`, which issues the
    /// key; the answer comes on the receiver.
    pub fn relay_dm_key(
        &self,
        node: &str,
        target: &[u8],
        introduction: &[u8],
    ) -> oneshot::Receiver<DmKeyAnswer> {
        self.inner.relay.dm_key(node, target, introduction)
    }

    /// Answers the DM key request `ask` of another node.
    pub fn answer_dm_key(&self, ask: u64, answer: DmKeyAnswer) {
        self.inner.relay.answer_dm_key(ask, answer);
    }

    /// What the cluster has counted.
    pub fn stats(&self) -> ClusterStats {
        let nodes = self.inner.state().liveness.nodes_heard(Instant::now());
        ClusterStats {
            renewals_failed: self.inner.renewals_failed.load(Ordering::Relaxed),
            fences: self.inner.fences.load(Ordering::Relaxed),
            names_swept: self.inner.names_swept.load(Ordering::Relaxed),
            nodes,
            nats_round_trip: Duration::from_micros(
                self.inner.round_trip_micros.load(Ordering::Relaxed),
            ),
            relays_sent: self.inner.relay.sent.load(Ordering::Relaxed),
            relays_dropped: self.inner.relay.dropped.load(Ordering::Relaxed),
            relays_resent: self.inner.relay.resent.load(Ordering::Relaxed),
            relay_backlogs: self.inner.relay.backlogs.load(Ordering::Relaxed),
            relays_received: self.inner.relay.received.load(Ordering::Relaxed),
            relay_gaps: self.inner.relay.gaps.load(Ordering::Relaxed),
        }
    }

    /// Leaves the cluster after a drain: waits (at most `within`) until
    /// every release queued so far is done, then deletes this node's record
    /// and stops.
    pub async fn leave(&self, within: Duration) {
        let (done, flushed) = oneshot::channel();
        let _ = self.ops.send(Op::Flush(done));
        if tokio::time::timeout(within, flushed).await.is_err() {
            warn!("names still being released at shutdown; the sweep will free them");
        }
        for task in &self.tasks {
            task.abort();
        }
        let node = &self.inner.settings.node_id;
        match self.inner.nodes.delete(node).await {
            Ok(()) => info!(%node, "left the cluster"),
            Err(err) => warn!(%node, %err, "cannot delete this node's record"),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn connect(settings: &Settings, timeout: Duration) -> Result<async_nats::Client, JoinError> {
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("parlor {}", settings.node_id))
        .connection_timeout(timeout.max(Duration::from_secs(1)))
        // A dead connection must be noticed well within the lease; the
        // lease itself is what fences the node, this only speeds up the
        // reconnect.
        .ping_interval(timeout.max(Duration::from_secs(1)))
        .max_reconnects(None);
    if let Some(path) = &settings.credentials_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(|source| JoinError::File {
                path: path.display().to_string(),
                source,
            })?;
    }
    if let Some(path) = &settings.tls_ca_file {
        options = options.add_root_certificates(path.clone());
    }
    options
        .connect(&settings.servers)
        .await
        .map_err(|source| JoinError::Connect {
            servers: settings.servers.join(","),
            source,
        })
}

/// Opens a bucket, creating it (or updating its settings) as needed. Every
/// node asks for the same settings, so whichever comes first makes it.
async fn open_bucket(
    context: &jetstream::Context,
    bucket: &'static str,
    settings: &Settings,
    max_age: Option<Duration>,
) -> Result<Store, JoinError> {
    let config = kv::Config {
        bucket: bucket.to_owned(),
        history: 1,
        max_age: max_age.unwrap_or_default(),
        storage: StorageType::File,
        num_replicas: settings.replicas,
        // Allows a TTL per entry: the purge markers of released names.
        limit_markers: Some(MARKER_TTL),
        ..kv::Config::default()
    };
    context
        .create_or_update_key_value(config)
        .await
        .map_err(|err| JoinError::Bucket {
            bucket,
            reason: err.to_string(),
        })
}

/// How long a node that starts waits for its first lease record to be
/// taken. A bucket just made on a cluster of NATS servers refuses writes
/// ("no stream found") until its stream has elected a leader, which takes
/// a moment, longer on a loaded machine.
const FIRST_LEASE_PATIENCE: Duration = Duration::from_secs(5);

/// Writes this run's first lease record, again while the bucket is not
/// ready yet; returns when the write that was taken was sent.
async fn first_lease(nodes: &Store, run: &Run) -> Result<Instant, JoinError> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(50);
    loop {
        let sent = Instant::now();
        match nodes.put(&run.node, run.encode()).await {
            Ok(_) => return Ok(sent),
            Err(err) if start.elapsed() < FIRST_LEASE_PATIENCE => {
                debug!(%err, "the nodes bucket takes no write yet; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
            Err(err) => return Err(JoinError::Lease(err.to_string())),
        }
    }
}

/// How many pieces of the store's work run at once.
const IN_FLIGHT: usize = 64;

/// Which work must be done in the order it was asked for: work on one name
/// (a release, then a claim of it again), on one room (an entry, then a
/// leave), or on the guest counter.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Lane {
    Name(Bytes),
    Room(Bytes),
    Guests,
}

impl Lane {
    /// The lane of `op`; `None` for work that waits for everything asked
    /// before it.
    fn of(op: &Op) -> Option<Lane> {
        match op {
            Op::Claim {
                request: NameRequest::Guest,
                ..
            } => Some(Lane::Guests),
            Op::Claim {
                request: NameRequest::Exactly(name),
                ..
            }
            | Op::Release(name) => Some(Lane::Name(name.clone())),
            Op::Enter { entry, .. } => Some(Lane::Room(entry.room.clone())),
            Op::Leave { room, .. }
            | Op::Rename(MemberRename { room, .. })
            | Op::Commit(EpochCommit { room, .. }) => Some(Lane::Room(room.clone())),
            Op::Flush(_) | Op::Fenced => None,
        }
    }
}

/// What the store's queue keeps of this run.
#[derive(Default)]
struct Mine {
    /// The names this run holds, with the revision each was won at.
    held: Mutex<HashMap<Bytes, u64>>,
    /// The guest numbers left in this node's block.
    guests: Mutex<Range<u64>>,
}

/// Why a claim failed.
enum Refused {
    Taken,
    Unavailable,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Carries out the store's work in the order it was asked for, per
    /// lane: one name, one room, or the guest counter. Work in different
    /// lanes runs side by side, [`IN_FLIGHT`] at most, so a crowd of
    /// connections claiming names and entering rooms waits for the store's
    /// round trips together rather than one after another. A flush, or the
    /// end of the lease, waits for everything asked before it.
    async fn run_queue(self: Arc<Self>, mut queue: mpsc::UnboundedReceiver<Op>) {
        let mine = Arc::new(Mine::default());
        // The lanes with work running, and what waits behind it.
        let mut lanes: HashMap<Lane, VecDeque<Op>> = HashMap::new();
        let mut running: JoinSet<Lane> = JoinSet::new();
        let start = |running: &mut JoinSet<Lane>, lane: Lane, op: Op| {
            let (inner, mine) = (Arc::clone(&self), Arc::clone(&mine));
            running.spawn(async move {
                inner.carry_out(op, &mine).await;
                lane
            });
        };
        let finished = |lanes: &mut HashMap<Lane, VecDeque<Op>>,
                        running: &mut JoinSet<Lane>,
                        done: Result<Lane, tokio::task::JoinError>| {
            let Ok(lane) = done else {
                return error!("a task of the store's queue failed");
            };
            match lanes.get_mut(&lane).and_then(VecDeque::pop_front) {
                Some(next) => start(running, lane, next),
                None => {
                    lanes.remove(&lane);
                }
            }
        };
        loop {
            let op = tokio::select! {
                op = queue.recv(), if running.len() < IN_FLIGHT => match op {
                    Some(op) => op,
                    None => return,
                },
                Some(done) = running.join_next() => {
                    finished(&mut lanes, &mut running, done);
                    continue;
                }
            };
            match Lane::of(&op) {
                Some(lane) => match lanes.get_mut(&lane) {
                    Some(waiting) => waiting.push_back(op),
                    None => {
                        lanes.insert(lane.clone(), VecDeque::new());
                        start(&mut running, lane, op);
                    }
                },
                None => {
                    while let Some(done) = running.join_next().await {
                        finished(&mut lanes, &mut running, done);
                    }
                    self.carry_out(op, &mine).await;
                }
            }
        }
    }

    /// Does one piece of the store's work.
    async fn carry_out(&self, op: Op, mine: &Mine) {
        match op {
            Op::Claim { request, reply } => {
                let (value, holds) = {
                    let state = self.state();
                    (state.run.encode(), state.lease.holds(Instant::now()))
                };
                let won = if !holds {
                    Err(Refused::Unavailable)
                } else {
                    match request {
                        NameRequest::Guest => {
                            // The guest lane runs one claim at a time.
                            let mut guests = std::mem::take(&mut *lock(&mine.guests));
                            let won = self.claim_guest(&mut guests, &value).await;
                            *lock(&mine.guests) = guests;
                            won
                        }
                        NameRequest::Exactly(name) => self
                            .claim(&name, &value)
                            .await
                            .map(|revision| (name, revision)),
                    }
                };
                let outcome = match won {
                    Ok((name, revision)) => {
                        lock(&mine.held).insert(name.clone(), revision);
                        ClaimOutcome::Claimed(name)
                    }
                    Err(Refused::Taken) => ClaimOutcome::Taken,
                    Err(Refused::Unavailable) => ClaimOutcome::Unavailable,
                };
                // The connection went while its claim ran.
                if let Err(ClaimOutcome::Claimed(name)) = reply.send(outcome) {
                    self.release(&name, mine).await;
                }
            }
            Op::Release(name) => self.release(&name, mine).await,
            Op::Enter { entry, reply } => {
                let outcome = self.enter(&entry).await;
                // The connection went while its entry ran: undo it.
                if let Err(EntryOutcome::Entered { member, .. }) = reply.send(outcome) {
                    self.leave(&entry.room, &member).await;
                }
            }
            // A fenced run's places in rooms are swept by the nodes
            // that hold their leases; writing them here would only
            // wait for a store that does not answer.
            Op::Leave { .. } | Op::Rename(_) if self.state().lease.is_fenced() => {}
            Op::Leave { room, member } => self.leave(&room, &member).await,
            Op::Rename(MemberRename {
                room,
                old,
                new,
                introduction,
            }) => {
                let run = self.state().run.clone();
                let introduction = introduction.as_deref();
                self.change_room(&room, |stored| {
                    stored.rename(&run, &old, &new, introduction)
                })
                .await;
            }
            Op::Commit(commit) => {
                let outcome = self.commit(&commit).await;
                self.node.epoch_committed(commit.ticket, outcome);
            }
            Op::Flush(done) => {
                let _ = done.send(());
            }
            Op::Fenced => lock(&mine.held).clear(),
        }
    }

    /// Gives a name this run holds back to the store.
    async fn release(&self, name: &[u8], mine: &Mine) {
        let revision = lock(&mine.held).remove(name);
        if let Some(revision) = revision {
            self.purge(name, revision).await;
        }
    }

    /// Creates the name's key: only the first node to do so wins it.
    async fn claim(&self, name: &[u8], value: &Bytes) -> Result<u64, Refused> {
        match self.names.create(name_key(name), value.clone()).await {
            Ok(revision) => Ok(revision),
            // Also what a create that races a delete can report: the name
            // was held a moment ago, and the legacy text says no more.
            Err(err) if err.kind() == CreateErrorKind::AlreadyExists => Err(Refused::Taken),
            Err(err) => {
                warn!(%err, "cannot claim a name");
                Err(Refused::Unavailable)
            }
        }
    }

    /// Claims `randN` for the next number of this node's block that nobody
    /// holds, taking a new block when it runs out.
    async fn claim_guest(
        &self,
        guests: &mut Range<u64>,
        value: &Bytes,
    ) -> Result<(Bytes, u64), Refused> {
        loop {
            let number = match guests.next() {
                Some(number) => number,
                None => {
                    *guests = self.take_guest_block().await?;
                    continue;
                }
            };
            let name = Bytes::from(format!("rand{number}"));
            match self.claim(&name, value).await {
                Ok(revision) => return Ok((name, revision)),
                Err(Refused::Taken) => continue,
                Err(refused) => return Err(refused),
            }
        }
    }

    /// Moves the shared guest counter on by a block, and returns the block.
    async fn take_guest_block(&self) -> Result<Range<u64>, Refused> {
        for attempt in 0..CAS_TRIES {
            pause_before(attempt).await;
            let entry = self.names.entry(GUEST_COUNTER).await.map_err(|err| {
                warn!(%err, "cannot read the guest counter");
                Refused::Unavailable
            })?;
            let (start, revision) = match entry {
                Some(entry) if entry.operation == Operation::Put => {
                    let start = std::str::from_utf8(&entry.value)
                        .ok()
                        .and_then(|text| text.parse::<u64>().ok());
                    let Some(start) = start else {
                        error!("the guest counter holds no number");
                        return Err(Refused::Unavailable);
                    };
                    (start, Some(entry.revision))
                }
                _ => (0, None),
            };
            let end = start.saturating_add(GUEST_BLOCK);
            let value = Bytes::from(end.to_string());
            let written = match revision {
                Some(revision) => self
                    .names
                    .update(GUEST_COUNTER, value, revision)
                    .await
                    .map_err(|err| err.kind() == kv::UpdateErrorKind::WrongLastRevision),
                None => self
                    .names
                    .create(GUEST_COUNTER, value)
                    .await
                    .map_err(|err| err.kind() == CreateErrorKind::AlreadyExists),
            };
            match written {
                Ok(_) => return Ok(start..end),
                // Another node took a block first: read again.
                Err(true) => continue,
                Err(false) => {
                    warn!("cannot move the guest counter on");
                    return Err(Refused::Unavailable);
                }
            }
        }
        warn!("the guest counter is too contended");
        Err(Refused::Unavailable)
    }

    /// Frees a name, on the condition that it still has `revision`; leaves
    /// a marker that expires.
    async fn purge(&self, name: &[u8], revision: u64) -> bool {
        let key = name_key(name);
        match self
            .names
            .purge_expect_revision_with_ttl(&key, revision, MARKER_TTL)
            .await
        {
            Ok(()) => true,
            Err(err) => {
                debug!(%key, %err, "name not purged (changed since, or unavailable)");
                false
            }
        }
    }

    /// Enters a room under the terms the hub judged (see [`EntryTerms`]).
    async fn enter(&self, entry: &RoomEntry) -> EntryOutcome {
        let (run, holds) = {
            let state = self.state();
            (state.run.clone(), state.lease.holds(Instant::now()))
        };
        if !holds {
            return EntryOutcome::Unavailable;
        }
        let key = room_key(&entry.room);
        for attempt in 0..CAS_TRIES {
            pause_before(attempt).await;
            let current = match self.read_room(&key).await {
                Ok(current) => current,
                Err(()) => return EntryOutcome::Unavailable,
            };
            let written = match (current, &entry.terms) {
                (
                    None,
                    EntryTerms::Create {
                        password,
                        secure,
                        incarnation,
                    },
                ) => {
                    let stored = StoredRoom::new(
                        password.clone(),
                        *secure,
                        *incarnation,
                        &run,
                        &entry.member,
                        entry.introduction.as_deref(),
                    );
                    match self.rooms.create(&key, stored.encode()).await {
                        Ok(revision) => (stored, revision),
                        // Created on another node first: judged again.
                        Err(err) if err.kind() == CreateErrorKind::AlreadyExists => continue,
                        Err(err) => {
                            warn!(%err, "cannot create a room");
                            return EntryOutcome::Unavailable;
                        }
                    }
                }
                (None, EntryTerms::Join { .. }) => return EntryOutcome::Changed(None),
                (Some((mut stored, revision)), terms) => {
                    let as_judged = *terms
                        == EntryTerms::Join {
                            incarnation: stored.incarnation(),
                        };
                    if !as_judged {
                        let record = stored.to_record(entry.room.clone(), revision, &run.node);
                        return EntryOutcome::Changed(Some(record));
                    }
                    if stored.member_count() >= entry.max_members {
                        return EntryOutcome::Full;
                    }
                    stored.add(&run, &entry.member, entry.introduction.as_deref());
                    match self.rooms.update(&key, stored.encode(), revision).await {
                        Ok(revision) => (stored, revision),
                        Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                            continue
                        }
                        Err(err) => {
                            warn!(%err, "cannot join a room");
                            return EntryOutcome::Unavailable;
                        }
                    }
                }
            };
            let (stored, revision) = written;
            return EntryOutcome::Entered {
                record: stored.to_record(entry.room.clone(), revision, &run.node),
                member: entry.member.clone(),
            };
        }
        warn!(key, "a room is too contended to enter");
        EntryOutcome::Unavailable
    }

    /// The room stored under `key` and its revision; `None` if there is
    /// none.
    async fn read_room(&self, key: &str) -> Result<Option<(StoredRoom, u64)>, ()> {
        let entry = match self.rooms.entry(key).await {
            Ok(Some(entry)) if entry.operation == Operation::Put => entry,
            Ok(_) => return Ok(None),
            Err(err) => {
                warn!(%err, key, "cannot read a room");
                return Err(());
            }
        };
        match StoredRoom::decode(&entry.value) {
            Some(stored) => Ok(Some((stored, entry.revision))),
            None => {
                error!(key, "a room's record that no node wrote");
                Err(())
            }
        }
    }

    /// Writes a room key's epoch into its room's record (see
    /// [`EpochCommit`]), while this node holds its lease.
    async fn commit(&self, commit: &EpochCommit) -> CommitOutcome {
        let (node, holds) = {
            let state = self.state();
            (state.run.node.clone(), state.lease.holds(Instant::now()))
        };
        if !holds {
            return CommitOutcome::Unavailable;
        }
        let key = room_key(&commit.room);
        for attempt in 0..CAS_TRIES {
            pause_before(attempt).await;
            let Ok(current) = self.read_room(&key).await else {
                return CommitOutcome::Unavailable;
            };
            let Some((mut stored, revision)) = current else {
                return CommitOutcome::Superseded;
            };
            if !stored.commit(&node, commit.incarnation, commit.epoch) {
                return CommitOutcome::Superseded;
            }
            match self.rooms.update(&key, stored.encode(), revision).await {
                Ok(_) => return CommitOutcome::Committed,
                Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(err) => {
                    warn!(%err, key, "cannot commit a room key's epoch");
                    return CommitOutcome::Unavailable;
                }
            }
        }
        warn!(key, "a room is too contended to commit a key's epoch");
        CommitOutcome::Unavailable
    }

    /// Takes a member of this run out of a room.
    async fn leave(&self, room: &[u8], member: &[u8]) {
        let run = self.state().run.clone();
        self.change_room(room, |stored| stored.remove(&run, member))
            .await;
    }

    /// Reads the room, makes `change` to it and writes it back by
    /// compare-and-set, again while another node wrote it meanwhile; a
    /// room left with no member is deleted. A change that finds nothing to
    /// change writes nothing.
    async fn change_room(&self, room: &[u8], change: impl Fn(&mut StoredRoom) -> bool) {
        let key = room_key(room);
        for attempt in 0..CAS_TRIES {
            pause_before(attempt).await;
            let Ok(Some((mut stored, revision))) = self.read_room(&key).await else {
                return;
            };
            if !change(&mut stored) {
                return;
            }
            let written = if stored.is_empty() {
                self.rooms
                    .purge_expect_revision_with_ttl(&key, revision, MARKER_TTL)
                    .await
            } else {
                let value = stored.encode();
                self.rooms.update(&key, value, revision).await.map(drop)
            };
            match written {
                Ok(()) => return,
                Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(err) => {
                    warn!(%err, key, "cannot change a room; the sweep will");
                    return;
                }
            }
        }
        warn!(key, "a room is too contended to change; the sweep will");
    }

    /// Tells the other nodes, every [`relay::TICK`], the last number
    /// relayed to each since the last tick (see `relay.rs`).
    async fn tick_relay(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(relay::TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.relay.tick();
        }
    }

    /// Renews the lease every quarter TTL; fences the node when it cannot,
    /// and starts a new run once it can again.
    async fn keep_lease(self: Arc<Self>, ops: mpsc::UnboundedSender<Op>) {
        let every = self.state().lease.renew_every();
        let mut next = Instant::now() + every;
        loop {
            tokio::time::sleep_until(next.into()).await;
            let sent = Instant::now();
            next = sent + every;
            let run = {
                let state = self.state();
                if state.lease.is_fenced() {
                    Run::fresh(state.run.node.clone())
                } else {
                    state.run.clone()
                }
            };
            let put = tokio::time::timeout(every, self.nodes.put(&run.node, run.encode())).await;
            let mut state = self.state();
            match put {
                Ok(Ok(_)) => {
                    let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                    self.round_trip_micros.store(micros, Ordering::Relaxed);
                    if state.lease.is_fenced() {
                        info!(node = %run.node, incarnation = %format_args!("{:016x}", run.incarnation),
                              "the lease is back: rejoined the cluster as a new run");
                        state.liveness.restarted(run.clone());
                        self.relay.restarted(run.incarnation);
                        state.run = run;
                        state.lease.unfence();
                    }
                    state.lease.renewed(sent);
                }
                Ok(Err(err)) => {
                    self.renewals_failed.fetch_add(1, Ordering::Relaxed);
                    warn!(%err, "lease renewal failed");
                }
                Err(_) => {
                    self.renewals_failed.fetch_add(1, Ordering::Relaxed);
                    warn!("lease renewal timed out");
                }
            }
            if state.lease.must_fence(Instant::now()) {
                drop(state);
                self.fences.fetch_add(1, Ordering::Relaxed);
                error!("lease lost: closing every connection until NATS answers again");
                self.node.fence();
                let _ = ops.send(Op::Fenced);
            }
        }
    }

    /// Keeps the copy of the names bucket, and tells the server about
    /// remote names.
    async fn watch_names(self: Arc<Self>) {
        let subjects = format!("{NAME_PREFIX}>");
        let saw = |inner: &Self, entry| inner.saw_name(entry);
        let lost = |inner: &Self| inner.node.remote_names_cleared();
        self.watch(&self.names, &subjects, saw, lost).await;
    }

    fn saw_name(&self, entry: Entry) {
        let Some(name) = name_of_key(&entry.key) else {
            return;
        };
        let now = Instant::now();
        if entry.operation != Operation::Put {
            self.state().liveness.name_released(&name);
            self.node.remote_name_released(&name);
            return;
        }
        let Some(owner) = Run::decode(&entry.value) else {
            warn!(key = %entry.key, "a name held by no node's run; left alone");
            return;
        };
        let node = NodeId::from(owner.node.as_str());
        let mine = {
            let mut state = self.state();
            let mine = owner == state.run;
            state
                .liveness
                .name_held(name.clone(), owner, entry.revision, now);
            mine
        };
        if !mine {
            self.node.remote_name_held(name, node);
        }
    }

    /// Keeps the copy of the rooms bucket, and tells the server.
    async fn watch_rooms(self: Arc<Self>) {
        let subjects = format!("{ROOM_PREFIX}>");
        let saw = |inner: &Self, entry| inner.saw_room(entry);
        let lost = |inner: &Self| {
            inner.rooms_resyncing.store(true, Ordering::Relaxed);
            inner.node.remote_rooms_resyncing();
        };
        self.watch(&self.rooms, &subjects, saw, lost).await;
    }

    fn saw_room(&self, entry: Entry) {
        // The last of the values read again: the server's copy is whole.
        let caught_up = entry.seen_current && self.rooms_resyncing.swap(false, Ordering::Relaxed);
        self.take_room(entry);
        if caught_up {
            self.node.remote_rooms_resynced();
        }
    }

    fn take_room(&self, entry: Entry) {
        let Some(room) = room_of_key(&entry.key) else {
            return;
        };
        if entry.operation != Operation::Put {
            self.state().liveness.room_deleted(&room);
            self.node.remote_room_deleted(&room, entry.revision);
            return;
        }
        let Some(stored) = StoredRoom::decode(&entry.value) else {
            warn!(key = %entry.key, "a room's record that no node wrote; left alone");
            return;
        };
        let me = {
            let mut state = self.state();
            state
                .liveness
                .room_members(room.clone(), stored.runs(), Instant::now());
            state.run.node.clone()
        };
        self.node
            .remote_room(stored.to_record(room, entry.revision, &me));
    }

    /// Keeps the copy of the nodes bucket: when each run was last renewed.
    async fn watch_nodes(self: Arc<Self>) {
        let saw = |inner: &Self, entry: Entry| {
            if entry.operation != Operation::Put {
                return;
            }
            if let Some(run) = Run::decode(&entry.value) {
                inner.relay.node_renewed(&run.node, run.incarnation);
                inner
                    .state()
                    .liveness
                    .node_renewed(&run.node, run.incarnation, Instant::now());
            }
        };
        // Renewals come again within a quarter TTL: nothing to forget.
        self.watch(&self.nodes, ">", saw, |_| {}).await;
    }

    /// Watches `subjects` of `store` from its current values on, for ever:
    /// after an error, `lost` is called, and the watch is made again, with
    /// backoff, reading the current values again (what happened meanwhile
    /// was not delivered).
    async fn watch(
        &self,
        store: &Store,
        subjects: &str,
        saw: impl Fn(&Self, Entry),
        lost: impl Fn(&Self),
    ) {
        let mut backoff = Duration::from_millis(50);
        loop {
            match store.watch_with_history(subjects).await {
                Ok(mut watch) => {
                    backoff = Duration::from_millis(50);
                    while let Some(entry) = watch.next().await {
                        match entry {
                            Ok(entry) => saw(self, entry),
                            Err(err) => {
                                warn!(bucket = %store.name, %err, "watch failed");
                                break;
                            }
                        }
                    }
                }
                Err(err) => warn!(bucket = %store.name, %err, "cannot watch"),
            }
            lost(self);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_WATCH_BACKOFF);
        }
    }

    /// Frees the names, and the places in rooms, of runs that are over.
    async fn sweep(self: Arc<Self>) {
        let every = self.state().lease.sweep_every();
        loop {
            tokio::time::sleep(every).await;
            let sweep = {
                let state = self.state();
                // A fenced node's copy may be stale: it judges nobody.
                if !state.lease.holds(Instant::now()) {
                    continue;
                }
                state.liveness.sweep(Instant::now())
            };
            let (mut names, mut rooms) = (sweep.names, sweep.rooms);
            for run in sweep.suspects {
                match self.nodes.entry(&run.node).await {
                    // Still there: not expired yet, or renewed, which the
                    // watch will say.
                    Ok(Some(entry))
                        if entry.operation == Operation::Put
                            && Run::decode(&entry.value).as_ref() == Some(&run) => {}
                    Ok(_) => {
                        let over = self.state().liveness.run_over(&run);
                        info!(node = %run.node, names = over.names.len(), rooms = over.rooms.len(),
                              "a node's lease expired: freeing its names and rooms");
                        names.extend(over.names);
                        rooms.extend(over.rooms.into_iter().map(|room| (room, run.clone())));
                    }
                    Err(err) => warn!(node = %run.node, %err, "cannot read a node's record"),
                }
            }
            for (name, revision) in names {
                if self.purge(&name, revision).await {
                    self.names_swept.fetch_add(1, Ordering::Relaxed);
                }
            }
            for (room, run) in rooms {
                self.change_room(&room, |stored| stored.drop_run(&run))
                    .await;
            }
        }
    }
}
