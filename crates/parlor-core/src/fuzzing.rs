//! The session fuzz body. `fuzz/fuzz_targets/session.rs` is one call to
//! [`session`], and `tests/fuzz_bodies.rs` runs it over the seed corpus and
//! thousands of proptest inputs on stable Rust, so a regression is caught
//! without nightly.
//!
//! The body takes raw bytes, as libFuzzer hands them out, and gives them
//! structure itself: any byte string is a valid input, and a mutation
//! changes one decision rather than making the input unreadable.
//! [`SessionEvent`] builds such bytes for seeds and property tests. The body
//! panics, with the broken invariant in the message, on anything wrong; the
//! rules of the legacy client it checks are [`parlor_proto::rules`].
//!
//! [`cluster_session`] runs the same inputs against a hub that is one node
//! of a cluster ([`Hub::clustered`]), with a store in memory standing in
//! for the driver: names claimed and released, rooms entered, left and
//! renamed in, its records told back to the hub one event later (as a
//! watch would), and now and then no answer at all. In a secure room the
//! store also plays another node: a member there comes and goes, and the
//! room's keys pass to that node (which commits an epoch of its own) and
//! come back an event later, so keys made for members elsewhere, lost
//! ownership and takeovers are fuzzed as well; the room's files are
//! offered to that member too, which never answers.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

use crate::harness::{fake_wrap, Harness, TestIdentity};
use crate::{
    Action, ClaimOutcome, CloseReason, CommitOutcome, ConnId, EntryOutcome, EntryTerms,
    EpochCommit, Hub, KeyWrapJob, Limits, MemberRename, NameClaim, NameRequest, NodeId,
    PasswordJob, RoomEntry, RoomRecord,
};
use parlor_proto::rules::{self, Conversation, Delivery, Reader};
use parlor_proto::secure::{opcode as secure_opcode, SecureMessage, PLAIN_CHANNEL_BINDING};
use parlor_proto::transfer::is_transfer_news;
use parlor_proto::{ClientMessage, Frame, FrameCodec, HEADER_LEN, MAX_CLIENT_PAYLOAD};

/// One event of a `session` input: after `wait * wait` milliseconds (up to
/// 65 s) on the fake clock, something happens to one client's connection.
///
/// As bytes, an event is a byte holding the client (low three bits) and the
/// kind (next two bits), the `wait` byte, then: for a frame, the opcode, a
/// big-endian `u16` length and the payload; for raw bytes, a `u8` length and
/// the bytes; for the other kinds, nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionEvent {
    /// Which of [`SESSION_CLIENTS`] clients.
    pub client: u8,
    /// The pause before it: `wait * wait` milliseconds.
    pub wait: u8,
    /// What happens.
    pub what: EventKind,
}

/// What happens to a client's connection in a [`SessionEvent`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A whole frame arrives, framed correctly (its payload may still be
    /// nonsense). A client that is not connected connects first.
    Frame {
        /// The frame's opcode, any byte.
        opcode: u8,
        /// Its payload, any bytes.
        payload: Vec<u8>,
    },
    /// Raw bytes arrive: part of a frame, several frames, or garbage.
    Bytes(Vec<u8>),
    /// The client closes its connection.
    Close,
    /// The client's pending password job finishes.
    FinishHash,
}

/// Clients a session can have at once.
pub const SESSION_CLIENTS: u8 = 8;

impl SessionEvent {
    /// Encodes a sequence of events as a `session` input.
    pub fn encode(events: &[SessionEvent]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for event in events {
            assert!(
                event.client < SESSION_CLIENTS,
                "client {} out of range",
                event.client
            );
            let kind = match event.what {
                EventKind::Frame { .. } => 0,
                EventKind::Bytes(_) => 1,
                EventKind::Close => 2,
                EventKind::FinishHash => 3,
            };
            bytes.push(kind << 3 | event.client);
            bytes.push(event.wait);
            match &event.what {
                EventKind::Frame { opcode, payload } => {
                    bytes.push(*opcode);
                    let len = u16::try_from(payload.len()).expect("payload over 65,535 bytes");
                    bytes.put_u16(len);
                    bytes.extend_from_slice(payload);
                }
                EventKind::Bytes(raw) => {
                    bytes.push(u8::try_from(raw.len()).expect("over 255 raw bytes"));
                    bytes.extend_from_slice(raw);
                }
                EventKind::Close | EventKind::FinishHash => {}
            }
        }
        bytes
    }

    /// Decodes a `session` input; a cut-short last event is shortened or
    /// dropped, never refused.
    pub fn decode(mut data: &[u8]) -> Vec<SessionEvent> {
        fn take(count: usize, data: &mut &[u8]) -> Vec<u8> {
            let (taken, rest) = data.split_at(count.min(data.len()));
            *data = rest;
            taken.to_vec()
        }
        let mut events = Vec::new();
        while let [header, wait, rest @ ..] = data {
            let (client, kind, wait) = (header & 7, (header >> 3) & 3, *wait);
            data = rest;
            let what = match kind {
                0 => {
                    let [opcode, high, low] = take(3, &mut data)[..] else {
                        break;
                    };
                    let len = usize::from(u16::from_be_bytes([high, low]));
                    let payload = take(len, &mut data);
                    EventKind::Frame { opcode, payload }
                }
                1 => {
                    let [len] = take(1, &mut data)[..] else {
                        break;
                    };
                    EventKind::Bytes(take(usize::from(len), &mut data))
                }
                2 => EventKind::Close,
                _ => EventKind::FinishHash,
            };
            events.push(SessionEvent { client, wait, what });
        }
        events
    }
}

/// The limits sessions run with: the defaults, with limits small enough
/// for a short input to reach them (a full server, the rate limit, a room
/// key's lifetime), and the secure extension allowed on the fuzzer's plain
/// connections (whose channel binding is then all zeros).
pub fn session_limits() -> Limits {
    let defaults = Limits::default();
    Limits {
        max_connections: 6,
        message_rate: crate::Rate {
            limit: 3,
            ..defaults.message_rate
        },
        allow_secure_on_plain: true,
        room_key_lifetime: Duration::from_secs(120),
        ..defaults
    }
}

/// Feeds an arbitrary sequence of events from up to eight clients into the
/// hub on a fake clock, through the same [`Hub::receive`] path as the
/// server, with password jobs finishing when the input says.
///
/// Invariants, after every event: no panic; every request is answered
/// exactly once (and only requests are: no unsolicited `9a`, no reply to a
/// heartbeat); no zero-length or unparsable frame goes out; a relayed room
/// message reaches only members of that room, and never its sender;
/// nothing is sent to a closed connection; and the hub's state is
/// consistent (every room member exists, no room is empty, names are
/// unique).
///
/// [`Hub::receive`]: crate::Hub::receive
pub fn session(data: &[u8]) {
    let mut session = SessionDriver::new(None);
    for event in SessionEvent::decode(data) {
        session.step(event);
    }
}

/// [`session`] against one node of a cluster, the cluster's store kept in
/// memory; the same invariants hold.
pub fn cluster_session(data: &[u8]) {
    let mut session = SessionDriver::new(Some(FakeStore::default()));
    for event in SessionEvent::decode(data) {
        session.step(event);
    }
}

/// A room as the fake store keeps it. In a secure room, a member of
/// another node (the ghost) comes and goes, and the room's keys pass to
/// that node and back (see [`FakeStore::changed`]), so that rotations for
/// members elsewhere and takeovers are fuzzed too.
struct StoredRoom {
    revision: u64,
    secure: bool,
    incarnation: u64,
    password: Option<Arc<str>>,
    members: Vec<Bytes>,
    epoch: u32,
    changes: u64,
    /// The ghost is in the room.
    ghost: bool,
    /// The keys are issued by the other node.
    owned_elsewhere: bool,
}

/// The fuzzed node's id, and the other node's.
const NODE: &str = "fuzzed";
const OTHER_NODE: &str = "other";
/// The ghost's name on the other node, and the seed of its identity (no
/// client's).
const GHOST: &[u8] = b"ghost";
const GHOST_IDENTITY: u8 = 0xee;

/// The ghost's introduction, signed once: signing at every record would
/// slow each fuzzed input down threefold.
fn ghost_introduction() -> Bytes {
    static INTRODUCTION: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    let introduce = || {
        SecureMessage::PeerKey {
            name: Bytes::from_static(GHOST),
            renamed_from: Bytes::new(),
            identity: TestIdentity::new(GHOST_IDENTITY).block(GHOST),
        }
        .encode()
    };
    INTRODUCTION.get_or_init(introduce).clone()
}

/// The cluster's store, as far as one node's hub can tell: the names held
/// and the rooms' records, every member on this one node. Every
/// [`FakeStore::SILENT_EVERY`]th claim or entry gets no answer, as when
/// NATS does not answer in time.
#[derive(Default)]
struct FakeStore {
    names: HashSet<Bytes>,
    rooms: HashMap<Bytes, StoredRoom>,
    revision: u64,
    operations: u64,
    next_guest: u64,
    /// Records changed, to be told to the hub at the next event: the room
    /// and its record, `None` when it was deleted.
    watched: Vec<(Bytes, Option<RoomRecord>)>,
    /// Changes made to secure rooms, which decide the ghost's moves.
    twists: u64,
}

impl FakeStore {
    const SILENT_EVERY: u64 = 13;

    /// Whether this operation goes unanswered.
    fn silent(&mut self) -> bool {
        self.operations += 1;
        self.operations.is_multiple_of(FakeStore::SILENT_EVERY)
    }

    fn claim(&mut self, claim: &NameClaim) -> ClaimOutcome {
        if self.silent() {
            return ClaimOutcome::Unavailable;
        }
        let name = match &claim.name {
            NameRequest::Guest => loop {
                let name = Bytes::from(format!("rand{}", self.next_guest));
                self.next_guest += 1;
                if !self.names.contains(&name) {
                    break name;
                }
            },
            NameRequest::Exactly(name) if self.names.contains(name) => return ClaimOutcome::Taken,
            NameRequest::Exactly(name) => name.clone(),
        };
        self.names.insert(name.clone());
        ClaimOutcome::Claimed(name)
    }

    fn record(&self, room: &Bytes) -> Option<RoomRecord> {
        let stored = self.rooms.get(room)?;
        let other = NodeId::from(OTHER_NODE);
        let owner = match stored.owned_elsewhere {
            false => NodeId::from(NODE),
            true => other.clone(),
        };
        let (elsewhere, introductions) = match stored.ghost {
            true => (
                vec![(other.clone(), vec![Bytes::from_static(GHOST)])],
                vec![(other, ghost_introduction())],
            ),
            false => (Vec::new(), Vec::new()),
        };
        Some(RoomRecord {
            room: room.clone(),
            revision: stored.revision,
            password: stored.password.clone(),
            secure: stored.secure,
            incarnation: stored.incarnation,
            members: stored.members.len() + usize::from(stored.ghost),
            elsewhere,
            owner: stored.secure.then_some(owner),
            epoch: stored.epoch,
            changes: stored.changes,
            introductions,
        })
    }

    /// Writes a room key's epoch, as the cluster's store would.
    fn commit(&mut self, commit: &EpochCommit) -> CommitOutcome {
        if self.silent() {
            return CommitOutcome::Unavailable;
        }
        match self.rooms.get_mut(&commit.room) {
            Some(stored)
                if stored.incarnation == commit.incarnation
                    && !stored.owned_elsewhere
                    && stored.epoch < commit.epoch =>
            {
                stored.epoch = commit.epoch;
            }
            _ => return CommitOutcome::Superseded,
        }
        self.changed(&commit.room);
        CommitOutcome::Committed
    }

    /// The room changed: a new revision, and the watch to tell of it. A
    /// secure room's every third change brings the ghost in or takes it
    /// out, and every fifth hands the keys to the other node (which
    /// commits an epoch it never delivers) or back.
    fn changed(&mut self, room: &Bytes) {
        self.revision += 1;
        if let Some(stored) = self.rooms.get_mut(room) {
            stored.revision = self.revision;
            if stored.secure {
                self.twists += 1;
                if self.twists.is_multiple_of(3) {
                    stored.ghost = !stored.ghost;
                    stored.changes += 1;
                }
                if self.twists.is_multiple_of(5) {
                    stored.owned_elsewhere = !stored.owned_elsewhere;
                    if stored.owned_elsewhere {
                        stored.epoch += 1;
                    }
                }
            }
        }
        let record = self.record(room);
        self.watched.push((room.clone(), record));
    }

    fn enter(&mut self, entry: &RoomEntry) -> EntryOutcome {
        if self.silent() {
            return EntryOutcome::Unavailable;
        }
        let room = &entry.room;
        match (&entry.terms, self.rooms.get_mut(room)) {
            (EntryTerms::Create { .. }, Some(_)) => {
                return EntryOutcome::Changed(self.record(room))
            }
            (
                EntryTerms::Create {
                    password,
                    secure,
                    incarnation,
                },
                None,
            ) => {
                let stored = StoredRoom {
                    revision: 0,
                    secure: *secure,
                    incarnation: *incarnation,
                    password: password.clone(),
                    members: vec![entry.member.clone()],
                    epoch: 0,
                    changes: 1,
                    ghost: false,
                    owned_elsewhere: false,
                };
                self.rooms.insert(room.clone(), stored);
            }
            (EntryTerms::Join { .. }, None) => return EntryOutcome::Changed(None),
            (EntryTerms::Join { incarnation }, Some(stored))
                if stored.incarnation != *incarnation =>
            {
                return EntryOutcome::Changed(self.record(room))
            }
            (EntryTerms::Join { .. }, Some(stored))
                if stored.members.len() >= entry.max_members =>
            {
                return EntryOutcome::Full
            }
            (EntryTerms::Join { .. }, Some(stored)) => {
                stored.members.push(entry.member.clone());
                stored.changes += 1;
            }
        }
        self.changed(room);
        EntryOutcome::Entered {
            record: self.record(room).expect("just entered"),
            member: entry.member.clone(),
        }
    }

    fn leave(&mut self, room: &Bytes, member: &Bytes) {
        let Some(stored) = self.rooms.get_mut(room) else {
            return;
        };
        stored.members.retain(|name| name != member);
        stored.changes += 1;
        if stored.members.is_empty() {
            self.rooms.remove(room);
        }
        self.changed(room);
    }

    fn rename(&mut self, room: &Bytes, old: &Bytes, new: &Bytes) {
        let Some(stored) = self.rooms.get_mut(room) else {
            return;
        };
        for name in stored.members.iter_mut().filter(|name| *name == old) {
            *name = new.clone();
        }
        self.changed(room);
    }

    /// Tells the hub what changed in the records since the last call; a
    /// record may start a rotation, whose actions are returned. The other
    /// node hands back the keys of a room it took, one event later.
    fn tell(&mut self, hub: &mut Hub, now: Instant) -> Vec<Action> {
        let taken: Vec<Bytes> = self
            .rooms
            .iter()
            .filter(|(_, stored)| stored.owned_elsewhere)
            .map(|(room, _)| room.clone())
            .collect();
        for room in taken {
            if let Some(stored) = self.rooms.get_mut(&room) {
                stored.owned_elsewhere = false;
            }
            self.changed(&room);
        }
        let mut out = Vec::new();
        for (room, record) in self.watched.drain(..) {
            match record {
                Some(record) => hub.remote_room(record, now, &mut out),
                None => hub.remote_room_deleted(&room, u64::MAX, now, &mut out),
            }
        }
        out
    }
}

/// A client's connection, and what the driver knows about it.
struct FuzzedConnection {
    id: ConnId,
    codec: FrameCodec,
    /// Bytes received and not yet decoded by the hub.
    buffer: BytesMut,
    /// A password job the hub asked for, not finished yet; until it is, the
    /// server reads nothing more from this connection.
    job: Option<PasswordJob>,
    /// Everything the client sent, and how much of it the hub has taken.
    sent: Vec<u8>,
    taken: usize,
    /// An independent count of the requests in what the hub has taken.
    oracle: FrameCodec,
    oracle_buffer: BytesMut,
    oracle_dead: bool,
    requests: usize,
    answered: usize,
    /// The requests not answered yet, so that each `9a` is matched to the
    /// request it answers.
    conversation: Conversation,
    /// A REGISTER_KEY was answered `9a 00`: from then on the connection is
    /// secure and may get frames of the secure extension.
    secure: bool,
}

struct SessionDriver {
    harness: Harness,
    /// Each client's connection, if it has one now.
    slots: [Option<FuzzedConnection>; SESSION_CLIENTS as usize],
    next_conn: u64,
    /// The cluster's store, for a clustered hub.
    store: Option<FakeStore>,
}

impl SessionDriver {
    fn new(store: Option<FakeStore>) -> SessionDriver {
        let mut harness = Harness::new(session_limits());
        if store.is_some() {
            harness.hub = Hub::clustered(session_limits(), [0x5e; 32], NodeId::from(NODE));
        }
        SessionDriver {
            harness,
            slots: Default::default(),
            next_conn: 0,
            store,
        }
    }

    fn step(&mut self, event: SessionEvent) {
        if let Some(store) = &mut self.store {
            let told = store.tell(&mut self.harness.hub, self.harness.now);
            self.apply(None, told);
        }
        let waited = u64::from(event.wait);
        let timers = self.harness.advance(Duration::from_millis(waited * waited));
        // News is what may reach anyone at any time: a transfer's, and a
        // secure room's ROOM_REKEYING when a member is cut off.
        let news = |frame: &Bytes| {
            let opcode = frame[HEADER_LEN - 1];
            is_transfer_news(opcode) || opcode == secure_opcode::ROOM_REKEYING
        };
        let only_cutoffs_and_news = timers.iter().all(|action| match action {
            Action::Close { reason, .. } => matches!(
                reason,
                CloseReason::IdleTimeout | CloseReason::HandshakeTimeout
            ),
            Action::Send { frame, .. } | Action::Broadcast { frame, .. } => {
                split_frames(frame).iter().all(news)
            }
            // What a cut-off connection held, given back to the store, and
            // the news for the ghost's node: a ROOM_REKEYING, a file's end.
            Action::ReleaseName(_) | Action::LeaveRoom { .. } => self.store.is_some(),
            Action::Relay { frame, .. } => self.store.is_some() && news(frame),
            Action::RelayToUser(relay) => self.store.is_some() && news(&relay.frame),
            _ => false,
        });
        assert!(
            only_cutoffs_and_news,
            "timers did more than cut idle or silent connections, end file transfers and \
             start key rotations: {timers:?}"
        );
        self.apply(None, timers);
        // The rotations the timers started (retries, keys at the end of
        // their life, rooms someone was cut off from) finish now.
        let rotations = std::mem::take(&mut self.harness.rotations);
        self.finish_wraps(rotations);
        let slot = usize::from(event.client % SESSION_CLIENTS);
        match event.what {
            EventKind::Frame { opcode, payload } => {
                let wire = Frame::new(opcode, Bytes::from(payload)).to_bytes();
                self.arrive(slot, &wire);
            }
            EventKind::Bytes(bytes) => self.arrive(slot, &bytes),
            EventKind::Close => self.close(slot),
            EventKind::FinishHash => self.finish_hash(slot),
        }
        if let Err(problem) = self.harness.hub.check_invariants() {
            panic!("inconsistent hub state: {problem}");
        }
    }

    /// Bytes from the client in `slot`, connecting it first if needed.
    fn arrive(&mut self, slot: usize, bytes: &[u8]) {
        if self.slots[slot].is_none() && !self.open(slot) {
            return;
        }
        let conn = self.slots[slot].as_mut().expect("just opened");
        conn.sent.extend_from_slice(bytes);
        conn.buffer.extend_from_slice(bytes);
        if conn.job.is_none() {
            self.receive(slot);
        }
    }

    /// Connects the slot's client; false if the server refused it.
    fn open(&mut self, slot: usize) -> bool {
        self.next_conn += 1;
        let id = ConnId(self.next_conn);
        let mut out = self.harness.connect(id);
        // A clustered hub names the connection through the store first.
        if let [Action::ClaimName(claim)] = out.as_slice() {
            let claim = claim.clone();
            assert_eq!(claim.conn, id, "a claim for another connection");
            let outcome = self.store().claim(&claim);
            out.clear();
            let now = self.harness.now;
            let hub = &mut self.harness.hub;
            hub.name_claimed(id, claim.ticket, outcome, now, &mut out);
        }
        match out.as_slice() {
            [] => {}
            [Action::Send { to, frame }, Action::Close {
                conn,
                reason: CloseReason::ServerFull | CloseReason::ClusterUnavailable,
            }] if *to == id && *conn == id => {
                let refusal = check_frame(frame, Reader::Legacy);
                assert!(
                    matches!(refusal, Delivery::Response { status: 0x02 }),
                    "refused without 9a 02"
                );
                return false;
            }
            other => panic!("a connect did something but refuse: {other:?}"),
        }
        self.slots[slot] = Some(FuzzedConnection {
            id,
            codec: FrameCodec::new(MAX_CLIENT_PAYLOAD),
            buffer: BytesMut::new(),
            job: None,
            sent: Vec::new(),
            taken: 0,
            oracle: FrameCodec::new(MAX_CLIENT_PAYLOAD),
            oracle_buffer: BytesMut::new(),
            oracle_dead: false,
            conversation: Conversation::default(),
            secure: false,
            requests: 0,
            answered: 0,
        });
        true
    }

    /// Lets the hub take what it can from the slot's buffer.
    fn receive(&mut self, slot: usize) {
        let Some(conn) = self.slots[slot].as_mut() else {
            return;
        };
        let mut out = Vec::new();
        let hub = &mut self.harness.hub;
        hub.receive(
            conn.id,
            &mut conn.codec,
            &mut conn.buffer,
            self.harness.now,
            &mut out,
        );
        conn.count_requests();
        self.apply(Some(slot), out);
    }

    /// Finishes the slot's pending password job, then lets the hub read on.
    fn finish_hash(&mut self, slot: usize) {
        let Some(job) = self.slots[slot].as_mut().and_then(|conn| conn.job.take()) else {
            return;
        };
        let mut out = Vec::new();
        self.harness.run_password_job(job, &mut out);
        self.apply(Some(slot), out);
        if self.slots[slot]
            .as_ref()
            .is_some_and(|conn| conn.job.is_none())
        {
            self.receive(slot);
        }
    }

    /// The client closes. The server notices only when it reads again, so a
    /// pending password job finishes first and what was buffered is handled.
    fn close(&mut self, slot: usize) {
        while self.slots[slot]
            .as_ref()
            .is_some_and(|conn| conn.job.is_some())
        {
            self.finish_hash(slot);
        }
        let Some(conn) = self.slots[slot].take() else {
            return;
        };
        conn.check_counts("closed by the client");
        let mut out = Vec::new();
        let now = self.harness.now;
        self.harness
            .hub
            .disconnect(conn.id, CloseReason::ClientClosed, now, &mut out);
        self.apply(None, out);
    }

    /// Checks one frame the hub sent `to`, as the actor's reply or as news.
    fn check_frame_to(&mut self, actor_id: Option<ConnId>, to: ConnId, frame: &Bytes) {
        // A closed connection has left its slot already.
        let slot = self
            .slot_of(to)
            .unwrap_or_else(|| panic!("a frame for {to}, which is closed"));
        // One buffer may hold several frames (a secure JOIN's
        // reply); each must stand on its own.
        let reader = match self.slots[slot].as_ref().expect("slot found").secure {
            true => Reader::Secure,
            false => Reader::Legacy,
        };
        for frame in split_frames(frame) {
            match check_frame(&frame, reader) {
                Delivery::Response { status } => {
                    assert_eq!(Some(to), actor_id, "a 9a to {to}, who asked nothing now");
                    let conn = self.slots[slot].as_mut().expect("slot found");
                    conn.answered += 1;
                    let request = conn
                        .conversation
                        .answered(status)
                        .unwrap_or_else(|broken| panic!("to {to}: {broken}"));
                    if request == Some(secure_opcode::REGISTER_KEY) && status == 0 {
                        conn.secure = true;
                    }
                    assert!(
                        conn.answered <= conn.requests,
                        "{to} got more answers than it made requests"
                    );
                }
                Delivery::RoomMessage { room } => {
                    assert_ne!(Some(to), actor_id, "a room message echoed to its sender");
                    let member = self.harness.hub.room_of(to);
                    assert_eq!(member, Some(&room[..]), "a room message to a non-member");
                }
                // Only a secure reader takes these: checked above.
                Delivery::DirectMessage | Delivery::Secure => {}
            }
        }
    }

    /// Checks what the hub asked for, and carries it out. `actor` is the
    /// slot whose event this is, if any.
    fn apply(&mut self, actor: Option<usize>, out: Vec<Action>) {
        let actor_id = actor.and_then(|slot| self.slots[slot].as_ref().map(|conn| conn.id));
        let mut wraps = Vec::new();
        let mut commits = Vec::new();
        let mut answered = Vec::new();
        for action in out {
            match action {
                Action::Send { .. } | Action::Broadcast { .. } => {
                    for (to, frame) in action.frames() {
                        self.check_frame_to(actor_id, to, frame);
                    }
                }
                Action::Close { conn, .. } => {
                    let slot = self
                        .slot_of(conn)
                        .expect("a close for an unknown connection");
                    let gone = self.slots[slot].take().expect("slot found");
                    gone.check_counts("closed by the server");
                }
                Action::Password(job) => {
                    let slot = self
                        .slot_of(job.conn)
                        .expect("a job for an unknown connection");
                    assert_eq!(
                        Some(slot),
                        actor,
                        "a job for a connection that is not reading"
                    );
                    let conn = self.slots[slot].as_mut().expect("slot found");
                    assert!(conn.job.is_none(), "two password jobs at once");
                    conn.job = Some(job);
                }
                // Key wraps (for connections that registered a valid key)
                // finish once this batch is applied, with stand-in keys.
                Action::WrapKeys(job) => wraps.push(job),
                // The store answers at once; what the hub does then is
                // applied once this batch is.
                Action::ClaimName(claim) => {
                    let outcome = self.store().claim(&claim);
                    let (now, mut more) = (self.harness.now, Vec::new());
                    let hub = &mut self.harness.hub;
                    hub.name_claimed(claim.conn, claim.ticket, outcome, now, &mut more);
                    answered.push((claim.conn, more));
                }
                Action::EnterRoom(entry) => {
                    let outcome = self.store().enter(&entry);
                    let (now, mut more) = (self.harness.now, Vec::new());
                    let hub = &mut self.harness.hub;
                    hub.room_entered(entry.conn, entry.ticket, outcome, now, &mut more);
                    answered.push((entry.conn, more));
                }
                Action::ReleaseName(name) => {
                    self.store().names.remove(&name);
                }
                Action::LeaveRoom { room, member } => self.store().leave(&room, &member),
                Action::RenameMember(rename) => {
                    let MemberRename { room, old, new, .. } = *rename;
                    self.store().rename(&room, &old, &new)
                }
                Action::CommitEpoch(commit) => commits.push(*commit),
                // With no other node, there is nobody to relay to.
                Action::Relay { .. } => {
                    self.store();
                }
                // Keys for the ghost, which only the other node can take.
                Action::RelayToMembers(frames) => {
                    self.store();
                    assert_eq!(&*frames.node, OTHER_NODE, "keys for a node nobody runs");
                    let ghost = TestIdentity::new(GHOST_IDENTITY).fingerprint();
                    assert!(frames.frames.iter().all(|(to, _)| *to == ghost));
                }
                // A file's frames for the ghost, a recipient of the room's
                // files who never answers.
                Action::RelayToUser(frame) => {
                    self.store();
                    let to = (&*frame.node, &frame.name[..]);
                    assert_eq!(
                        to,
                        (OTHER_NODE, GHOST),
                        "a file's frame for a user nobody has"
                    );
                }
                Action::RelayDirect(_)
                | Action::RelayDmKey(_)
                | Action::AnswerDmKey { .. }
                | Action::RelayFileRequest(_)
                | Action::AskFileTarget(_)
                | Action::AnswerFileRequest { .. } => {
                    panic!("work for another node, which no hub here knows of: {action:?}")
                }
            }
        }
        self.finish_wraps(wraps);
        for commit in commits {
            let outcome = self.store().commit(&commit);
            let (now, mut more) = (self.harness.now, Vec::new());
            let hub = &mut self.harness.hub;
            hub.epoch_committed(commit.ticket, outcome, now, &mut more);
            self.apply(None, more);
        }
        // As the server does once an owed reply is out: read on.
        for (conn, more) in answered {
            let slot = self.slot_of(conn);
            self.apply(slot, more);
            if let Some(slot) = slot.filter(|slot| self.slots[*slot].is_some()) {
                self.receive(slot);
            }
        }
        for conn in self.slots.iter().filter_map(Option::as_ref) {
            conn.check_counts("open");
        }
    }

    /// Finishes key wraps with stand-in keys; a rotation's wrap fails when
    /// its ticket is odd, so that failed rotations and their retries are
    /// fuzzed too.
    fn finish_wraps(&mut self, wraps: Vec<KeyWrapJob>) {
        for job in wraps {
            let mut more = Vec::new();
            let outcome = match job.requester {
                None if job.ticket % 2 == 1 => crate::KeyWrapOutcome::Failed,
                _ => fake_wrap(&job),
            };
            let now = self.harness.now;
            self.harness
                .hub
                .keys_wrapped(job.ticket, outcome, now, &mut more);
            let requester = job.requester.and_then(|conn| self.slot_of(conn));
            self.apply(requester, more);
            // As the server does once an owed reply is out: read on.
            if let Some(slot) = requester {
                self.receive(slot);
            }
        }
    }

    /// The store, which only a clustered hub asks for.
    fn store(&mut self) -> &mut FakeStore {
        self.store
            .as_mut()
            .expect("a hub made with Hub::new asked for the cluster's work")
    }

    fn slot_of(&self, id: ConnId) -> Option<usize> {
        self.slots
            .iter()
            .position(|conn| conn.as_ref().is_some_and(|conn| conn.id == id))
    }
}

impl FuzzedConnection {
    /// Counts the requests in the bytes the hub took since the last call,
    /// with a codec of its own: every frame but a heartbeat, a file chunk
    /// and an ack is one, and so are bytes that are not frames (parlor
    /// answers them before closing).
    fn count_requests(&mut self) {
        // The hub admits large chunk frames from a file's sender alone; the
        // oracle follows the limit the hub set.
        self.oracle.allow_chunks(self.codec.max_chunk_payload());
        let taken = self.sent.len() - self.buffer.len();
        self.oracle_buffer
            .extend_from_slice(&self.sent[self.taken..taken]);
        self.taken = taken;
        while !self.oracle_dead {
            match self.oracle.decode(&mut self.oracle_buffer) {
                Ok(Some(frame)) if !rules::is_request(&frame) => {}
                Ok(Some(frame)) => {
                    self.requests += 1;
                    self.conversation.asked(Some(frame.opcode));
                }
                Ok(None) => break,
                Err(_) => {
                    self.requests += 1;
                    self.conversation.asked(None);
                    self.oracle_dead = true;
                }
            }
        }
    }

    /// Every request taken is answered, but for one awaiting its password.
    fn check_counts(&self, state: &str) {
        let owed = usize::from(self.job.is_some());
        assert_eq!(
            self.answered + owed,
            self.requests,
            "{state} connection {}: {} requests, {} answered, {owed} awaiting a password",
            self.id,
            self.requests,
            self.answered
        );
    }
}

/// Cuts a buffer handed to a connection into its frames.
fn split_frames(buffer: &Bytes) -> Vec<Bytes> {
    assert!(!buffer.is_empty(), "an empty buffer sent");
    rules::split_frames(buffer).unwrap_or_else(|broken| panic!("{broken}"))
}

/// Checks a frame against everything the legacy client requires of it.
fn check_frame(wire: &Bytes, reader: Reader) -> Delivery {
    rules::check(wire, reader).unwrap_or_else(|broken| panic!("{broken}"))
}

/// What client `client` of a seed sends to take the name `name` and become
/// secure: a legacy NICK, then REGISTER_KEY by [`TestIdentity`] `client`
/// with its proofs over that name and a plain connection's binding.
fn become_secure(client: u8, name: &str) -> [(u8, ClientMessage); 2] {
    let nick = ClientMessage::Nick {
        name: Bytes::copy_from_slice(name.as_bytes()),
    };
    let identity = TestIdentity::new(client);
    let register = identity.register(name.as_bytes(), &PLAIN_CHANNEL_BINDING);
    [(client, nick), (client, register)]
}

/// A `session` seed that reaches the secure extension, which random bytes
/// never do (they would have to be signed registrations): two clients
/// register and share a secure room, a legacy client is refused from it, a
/// DM key is asked for, a member renames with SIGNED_NICK, and members
/// leave, which rotates the room key.
pub fn secure_session_seed() -> Vec<u8> {
    let text = |text: &str| Bytes::copy_from_slice(text.as_bytes());
    let join = || ClientMessage::Join {
        room: text("vault"),
        password: Bytes::new(),
    };
    let mut script = Vec::new();
    script.extend(become_secure(0, "alice"));
    script.push((0, join()));
    script.extend(become_secure(1, "bob"));
    script.extend([
        (1, join()),
        (2, join()),
        (
            0,
            ClientMessage::RoomMessage {
                room: text("vault"),
                text: text("sealed elsewhere"),
            },
        ),
        (
            0,
            ClientMessage::DmKeyRequest {
                target: text("bob"),
            },
        ),
        (1, TestIdentity::new(1).signed_nick(b"robert")),
        (1, ClientMessage::Leave),
    ]);
    let mut events = scripted_events(script);
    // Pauses past the rotation retry, so that rotations that failed are
    // made again (in cluster mode, with the other node's member, and
    // across the keys' passing to that node and back).
    for _ in 0..4 {
        let heartbeat = ClientMessage::Heartbeat {
            payload: Bytes::new(),
        }
        .to_frame();
        events.insert(
            events.len() - 1,
            SessionEvent {
                client: 0,
                wait: 33,
                what: EventKind::Frame {
                    opcode: heartbeat.opcode,
                    payload: heartbeat.payload.to_vec(),
                },
            },
        );
    }
    SessionEvent::encode(&events)
}

/// A `session` seed in which a file moves: three clients register and
/// share a secure room; alice offers a three-chunk file with a window of
/// two, bob accepts, carol declines, and the chunks, acknowledgements and
/// FILE_DONE follow, until bob has the whole file.
pub fn file_session_seed() -> Vec<u8> {
    use parlor_proto::transfer::{FileMeta, FileRequest, FILE_FLAG_ENCRYPTED};
    let text = |text: &str| Bytes::copy_from_slice(text.as_bytes());
    let file = |request| ClientMessage::File(request);
    let chunk = |index| {
        file(FileRequest::Chunk {
            id: 1,
            index,
            data: Bytes::from(vec![index as u8; 100]),
        })
    };
    let ack = |index| file(FileRequest::Ack { id: 1, index });
    let mut script = Vec::new();
    for (client, name) in [(0, "alice"), (1, "bob"), (2, "carol")] {
        script.extend(become_secure(client, name));
        let join = ClientMessage::Join {
            room: text("vault"),
            password: Bytes::new(),
        };
        script.push((client, join));
    }
    let meta = FileMeta {
        name: text("notes.txt"),
        size: 250,
        chunk_size: 100,
        chunk_count: 3,
        flags: FILE_FLAG_ENCRYPTED,
        key_id: 3,
        nonce: [1; 16],
        manifest: Bytes::from(vec![2; 96]),
        counter: 1,
        signature: [3; 64],
    };
    let offer = FileRequest::Offer {
        target: Bytes::new(),
        meta,
        window: 2,
    };
    script.extend([
        (0, file(offer)),
        (
            1,
            file(FileRequest::Decision {
                id: 1,
                accept: true,
            }),
        ),
        (
            2,
            file(FileRequest::Decision {
                id: 1,
                accept: false,
            }),
        ),
        (0, chunk(0)),
        (0, chunk(1)),
        (1, ack(0)),
        (0, chunk(2)),
        (1, ack(1)),
        (0, file(FileRequest::Done { id: 1 })),
        (1, ack(2)),
    ]);
    scripted_seed(script)
}

/// The events of a script of (client, message), ending with client 0
/// closing its connection.
fn scripted_seed(script: impl IntoIterator<Item = (u8, ClientMessage)>) -> Vec<u8> {
    SessionEvent::encode(&scripted_events(script))
}

/// The events of [`scripted_seed`].
fn scripted_events(script: impl IntoIterator<Item = (u8, ClientMessage)>) -> Vec<SessionEvent> {
    let mut events: Vec<SessionEvent> = script
        .into_iter()
        .map(|(client, message)| {
            let frame = message.to_frame();
            SessionEvent {
                client,
                wait: 0,
                what: EventKind::Frame {
                    opcode: frame.opcode,
                    payload: frame.payload.to_vec(),
                },
            }
        })
        .collect();
    events.push(SessionEvent {
        client: 0,
        wait: 0,
        what: EventKind::Close,
    });
    events
}
