//! Rooms, room messages and DMs for a hub that is one node of a cluster.
//!
//! A room of the cluster is one record in the cluster's shared store: its
//! password hash, its kind, its incarnation and its members, by node. The
//! hub keeps a copy of every record ([`Hub::remote_room`]) and judges a
//! JOIN against it exactly as it judges one against a room of its own: the
//! same password work, the same texts. What the copy cannot decide (is the
//! room still the one judged, is there room for one more, who creates a new
//! room first) the store decides: the hub asks the driver to enter the room
//! ([`Action::EnterRoom`]), under terms that say which room it judged, and
//! the reply waits for the answer ([`Hub::room_entered`]). When the room
//! changed meanwhile, the JOIN is judged again against the new record: two
//! nodes creating one room with two passwords, one wins and the other's
//! JOIN is answered as a JOIN with a wrong password.
//!
//! Leaving and renaming are carried out after every entry asked for before
//! ([`Action::LeaveRoom`], [`Action::RenameMember`]); the last member to
//! leave, on any node, deletes the record.
//!
//! A room message is queued for the members here and relayed once to each
//! other node that serves members of the room ([`Action::Relay`]), which
//! queues it for its own ([`Hub::relayed_room_message`]). A DM to a user
//! of another node is handed to that node, and the sender's reply waits
//! until it says whether the user was there ([`Action::RelayDirect`]).
//! A DM key for a user of another node is issued by that node
//! ([`Action::RelayDmKey`], [`Hub::relayed_dm_key_request`]).
//!
//! A secure room's keys are issued by one node, its owner, which the
//! record names ([`RoomRecord::owner`]): at first its creator's. The owner
//! wraps each key for the members of every node, from the introductions
//! the record keeps ([`RoomRecord::introductions`]), writes its epoch into
//! the record ([`Action::CommitEpoch`]) and only then delivers it, to the
//! members of other nodes through their node ([`Action::RelayToMembers`]).
//! Identities and ROOM_REKEYING are relayed like room messages. A node the
//! record names owner from one revision to the next takes the room over
//! (`secure.rs`, [`Hub::follow_room_record`]).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use rand::Rng;
use tracing::warn;
use zeroize::Zeroizing;

use crate::directory::RoomTerms;
use crate::secure::RoomKeyState;
use crate::{
    respond, respond_naming, Action, CloseReason, ConnId, Hub, Pending, PendingJoin, Rejection,
    Relayed,
};
use parlor_proto::legacy::OK_RESPONSE;
use parlor_proto::secure::Fingerprint;
use parlor_proto::text;
use parlor_proto::Status;

/// A node of the cluster, by its id.
pub type NodeId = Arc<str>;

/// A room as the cluster's store has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomRecord {
    /// The room's name.
    pub room: Bytes,
    /// The record's revision in the store: a copy keeps the latest.
    pub revision: u64,
    /// The argon2id PHC string of its password; `None` for none.
    pub password: Option<Arc<str>>,
    /// Whether it is a secure room.
    pub secure: bool,
    /// Drawn by the node that created it (never 0): a room deleted and
    /// created again is another room.
    pub incarnation: u64,
    /// How many members it has on every node, this one included.
    pub members: usize,
    /// Its members served by other nodes, by node; a node without members
    /// in it is not listed.
    pub elsewhere: Vec<(NodeId, Vec<Bytes>)>,
    /// For a secure room: the node that issues its keys, always one with
    /// members in it; `None` for a plaintext room.
    pub owner: Option<NodeId>,
    /// For a secure room: the newest epoch its owners have committed
    /// ([`EpochCommit`]); 0 before its first key.
    pub epoch: u32,
    /// How many arrivals and departures the record has seen (renames and
    /// epochs are not counted): the owner keys the room again whenever it
    /// moves past what its last key was made for.
    pub changes: u64,
    /// For a secure room: the introduction of each member served by
    /// another node, with its node. An introduction is the `81` PEER_KEY a
    /// joiner is sent for that member (its current name, `renamed_from`
    /// empty); its RSA key is what the owner wraps the member's keys under.
    pub introductions: Vec<(NodeId, Bytes)>,
}

/// Where a room's messages are relayed: the room, which the receiving node
/// looks its members up by, and the other nodes that serve members of it.
/// Made once per record of the room, so each relay shares it.
#[derive(Debug, PartialEq, Eq)]
pub struct RelayTarget {
    /// The room.
    pub room: Bytes,
    /// The nodes, never this one.
    pub nodes: Vec<NodeId>,
}

/// A member of a room renamed, for the room's record in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRename {
    /// The room.
    pub room: Bytes,
    /// The name it had.
    pub old: Bytes,
    /// The name it has now.
    pub new: Bytes,
    /// Its introduction under the new name, for a secure member.
    pub introduction: Option<Bytes>,
}

/// A room key's epoch to write into the room's record before the key is
/// delivered: the fence that keeps one owner's epochs from ever going back
/// behind another's. The store takes it only if the record is still the
/// room's incarnation, still names this node as the owner, and holds an
/// older epoch; the driver reports with [`Hub::epoch_committed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochCommit {
    /// Echoed back in [`Hub::epoch_committed`].
    pub ticket: u64,
    /// The room.
    pub room: Bytes,
    /// The incarnation the key is for.
    pub incarnation: u64,
    /// The epoch.
    pub epoch: u32,
}

/// The outcome of an [`EpochCommit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// The record holds the epoch now: the key may be delivered.
    Committed,
    /// The record names another owner, another incarnation or a later
    /// epoch (or the room is gone): the key is never delivered.
    Superseded,
    /// The store did not answer: nothing was written.
    Unavailable,
}

/// Frames for members of a room served by one other node, each for one
/// member by the fingerprint of its key: the keys a room's owner wrapped
/// for them. A fingerprint, unlike a name, stays the same through a
/// rename made while the key was on its way. That node queues each for
/// its member if it is still in the room ([`Hub::relayed_to_members`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberFrames {
    /// The node.
    pub node: NodeId,
    /// The room.
    pub room: Bytes,
    /// Each member's fingerprint and frame.
    pub frames: Vec<(Fingerprint, Bytes)>,
}

/// A room the hub needs a connection entered into in the cluster's store.
#[derive(Debug, Clone)]
pub struct RoomEntry {
    /// The connection that joins, whose reply waits for it.
    pub conn: ConnId,
    /// Echoed back in [`Hub::room_entered`].
    pub ticket: u64,
    /// The room.
    pub room: Bytes,
    /// The member's name.
    pub member: Bytes,
    /// What the hub judged.
    pub terms: EntryTerms,
    /// The most members the room may have, on all nodes together.
    pub max_members: usize,
    /// The member's introduction, for a secure member: kept in the record
    /// of a secure room (see [`RoomRecord::introductions`]).
    pub introduction: Option<Bytes>,
}

/// Under what terms a [`RoomEntry`] enters its room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryTerms {
    /// The room does not exist: create it, with this password hash, kind
    /// and incarnation.
    Create {
        /// The argon2id PHC string, `None` for no password.
        password: Option<Arc<str>>,
        /// Whether the room is secure.
        secure: bool,
        /// The new room's incarnation.
        incarnation: u64,
    },
    /// Join the room if it is still the incarnation judged.
    Join {
        /// The incarnation the hub judged.
        incarnation: u64,
    },
}

/// The outcome of a [`RoomEntry`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryOutcome {
    /// The member is in the room, whose record is now this.
    Entered {
        /// The record, with the member in it.
        record: RoomRecord,
        /// The member's name, as entered.
        member: Bytes,
    },
    /// The room has as many members as it may.
    Full,
    /// The room is not as judged: created, deleted or recreated since.
    /// `None` when there is no such room now.
    Changed(Option<RoomRecord>),
    /// The store did not answer; nothing was entered.
    Unavailable,
}

/// A DM for a user of another node.
#[derive(Debug, Clone)]
pub struct DirectRelay {
    /// The sender, whose reply waits for it.
    pub conn: ConnId,
    /// Echoed back in [`Hub::direct_relayed`].
    pub ticket: u64,
    /// The node serving the target, as the copy of the store says.
    pub node: NodeId,
    /// The target's name.
    pub target: Bytes,
    /// The DM frame, as the target is to get it.
    pub frame: Bytes,
}

/// A DM_KEY_REQUEST for a user of another node. That node issues the key:
/// it holds the target's keys and the bound on keys issued for it.
#[derive(Debug, Clone)]
pub struct DmKeyRelay {
    /// The requester, whose reply waits for it.
    pub conn: ConnId,
    /// Echoed back in [`Hub::dm_key_relayed`].
    pub ticket: u64,
    /// The node serving the target, as the copy of the store says.
    pub node: NodeId,
    /// The target's name.
    pub target: Bytes,
    /// The `81` PEER_KEY frame that introduces the requester to the
    /// target: its name and identity block, whose RSA key the other node
    /// wraps the requester's half under.
    pub introduction: Bytes,
}

/// How the node of a DM key's target answered a [`DmKeyRelay`]: what
/// the requester is told. The checks are those of a DM_KEY_REQUEST made
/// on one node (PROTOCOL.md §12.3), in the same order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DmKeyAnswer {
    /// The key was issued: the `89` DM_KEY_ISSUED frame for the requester.
    /// The target has been sent its `81` and `80`.
    Issued(Bytes),
    /// Nobody of that name is there.
    Absent,
    /// The target has registered no key.
    HasNoKey,
    /// Too many keys were issued for the target lately.
    TooMany,
    /// The key-wrapping queue was full.
    Busy,
    /// The wrap failed, or the request could not be read.
    Failed,
    /// The node did not answer in time (given by the driver, never sent).
    Unavailable,
}

/// The outcome of a [`DirectRelay`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectOutcome {
    /// The node queued it for the target.
    Delivered,
    /// Nobody of that name was there.
    Absent,
    /// The node did not answer.
    Unavailable,
}

impl Hub {
    /// What a JOIN of `room` is judged against: for a clustered hub the
    /// room's record, otherwise the room itself.
    pub(crate) fn room_terms(&self, room: &[u8]) -> Option<RoomTerms> {
        if self.in_cluster() {
            let shared = &self.directory.record(room)?.record;
            return Some(RoomTerms {
                password: shared.password.clone(),
                secure: shared.secure,
                version: shared.incarnation,
                members: shared.members,
            });
        }
        let local = self.directory.room(room)?;
        Some(RoomTerms {
            password: local.password_hash().cloned(),
            secure: local.is_secure(),
            version: local.generation(),
            members: local.members().len(),
        })
    }

    /// How many rooms there are, on every node.
    pub(crate) fn rooms_everywhere(&self) -> usize {
        if self.in_cluster() {
            self.directory.records().count()
        } else {
            self.directory.room_count()
        }
    }

    /// Joins `room`, which exists as `version` and admits the user: at once
    /// on its own, through the cluster's store in cluster mode.
    pub(crate) fn enter_room(
        &mut self,
        conn: ConnId,
        room: Bytes,
        password: Zeroizing<Vec<u8>>,
        version: u64,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if !self.in_cluster() {
            return self.admit(conn, room, false, now, out);
        }
        let terms = EntryTerms::Join {
            incarnation: version,
        };
        self.ask_entry(conn, room, password, terms, out);
    }

    /// Creates `room` with the password hash `phc` and admits its creator.
    pub(crate) fn found_room(
        &mut self,
        conn: ConnId,
        room: Bytes,
        password: Zeroizing<Vec<u8>>,
        phc: Option<Arc<str>>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let secure = self.is_secure(conn);
        let incarnation = self.new_incarnation();
        if !self.in_cluster() {
            self.create_room(conn, room.clone(), phc, incarnation);
            return self.admit(conn, room, true, now, out);
        }
        let terms = EntryTerms::Create {
            password: phc,
            secure,
            incarnation,
        };
        self.ask_entry(conn, room, password, terms, out);
    }

    /// A random incarnation for a new room, never 0.
    pub(crate) fn new_incarnation(&mut self) -> u64 {
        std::iter::repeat_with(|| self.rng.next_u64())
            .find(|incarnation| *incarnation != 0)
            .expect("an endless stream")
    }

    fn ask_entry(
        &mut self,
        conn: ConnId,
        room: Bytes,
        password: Zeroizing<Vec<u8>>,
        terms: EntryTerms,
        out: &mut Vec<Action>,
    ) {
        let ticket = self.new_ticket();
        let introduction = self.introduction(conn);
        let user = self.users.get_mut(&conn).expect("caller checked");
        let room_generation = match terms {
            EntryTerms::Create { .. } => None,
            EntryTerms::Join { incarnation } => Some(incarnation),
        };
        out.push(Action::EnterRoom(Box::new(RoomEntry {
            conn,
            ticket,
            room: room.clone(),
            member: user.name.clone(),
            terms,
            max_members: self.limits.max_room_members,
            introduction,
        })));
        user.pending = Some(Box::new(Pending::Entry(PendingJoin {
            ticket,
            room,
            password,
            room_generation,
        })));
    }

    /// A [`RoomEntry`] finished at `now`.
    pub fn room_entered(
        &mut self,
        conn: ConnId,
        ticket: u64,
        outcome: EntryOutcome,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(Pending::Entry(pending)) = self.take_pending(conn, ticket) else {
            // Nobody waits for this entry any more: undo it.
            if let EntryOutcome::Entered { record, member } = outcome {
                let room = record.room.clone();
                self.directory.record_room(record);
                out.push(Action::LeaveRoom { room, member });
            }
            return;
        };
        let creating = pending.room_generation.is_none();
        match outcome {
            EntryOutcome::Entered { record, .. } => {
                let room = pending.room;
                if self.directory.room(&room).is_none() {
                    let me = self.node.as_ref();
                    let keys = record
                        .secure
                        .then(|| RoomKeyState::from_record(&record, me));
                    self.directory
                        .create_room(room.clone(), record.password.clone(), keys);
                }
                let before = self.peer_fingerprints(&room);
                let taken = self.directory.record_room(record);
                self.admit(conn, room.clone(), creating, now, out);
                if taken {
                    self.follow_room_record(&room, &before, out);
                }
            }
            EntryOutcome::Full => {
                self.stats.reject(Rejection::RoomLimit);
                respond_naming(
                    out,
                    conn,
                    Status::TryLater,
                    text::room_is_full(&pending.room),
                );
            }
            EntryOutcome::Changed(record) => {
                match record {
                    Some(record) => {
                        self.directory.record_room(record);
                    }
                    None => self.directory.forget_record(&pending.room, u64::MAX),
                }
                self.attempt_join(conn, pending.room, pending.password, now, false, out);
            }
            EntryOutcome::Unavailable => {
                respond(out, conn, Status::TryLater, text::CLUSTER_UNAVAILABLE)
            }
        }
    }

    /// The room's record in the cluster's store is now `record`. For a
    /// secure room with members here, what the record says of its owner
    /// and its members elsewhere may start a rotation
    /// (`secure.rs`, `follow_room_record`).
    pub fn remote_room(&mut self, record: RoomRecord, now: Instant, out: &mut Vec<Action>) {
        let room = record.room.clone();
        let before = self.peer_fingerprints(&room);
        if self.directory.record_room(record) {
            self.follow_room_record(&room, &before, out);
            self.stand_ins_follow_room(&room, now, out);
        }
    }

    /// Who the members elsewhere of a secure room are, by fingerprint, as
    /// the copy of its record says.
    fn peer_fingerprints(&self, room: &[u8]) -> Vec<Fingerprint> {
        let shared = self.directory.record(room);
        let peers = shared.into_iter().flat_map(|shared| &shared.peers);
        peers.map(|peer| peer.fingerprint).collect()
    }

    /// The room's record was deleted at `revision`: the room is gone.
    pub fn remote_room_deleted(
        &mut self,
        room: &[u8],
        revision: u64,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        self.directory.forget_record(room, revision);
        self.stand_ins_follow_room(room, now, out);
    }

    /// The driver lost track of the rooms in the store and is reading
    /// them again. The copy is kept until [`Hub::remote_rooms_resynced`],
    /// so that room messages and keys still reach the other nodes' members
    /// it knows of.
    pub fn remote_rooms_resyncing(&mut self) {
        self.directory.resync_records();
    }

    /// The driver has read every record again since
    /// [`Hub::remote_rooms_resyncing`]: rooms it did not give again are
    /// gone.
    pub fn remote_rooms_resynced(&mut self) {
        self.directory.records_resynced();
    }

    /// Where messages of `room` are relayed, if other nodes serve members
    /// of it.
    pub(crate) fn relay_target(&self, room: &[u8]) -> Option<&Arc<RelayTarget>> {
        let shared = self.directory.record(room)?;
        (!shared.relay.nodes.is_empty()).then_some(&shared.relay)
    }

    /// The names of the members of `room` served by other nodes.
    pub(crate) fn members_elsewhere(&self, room: &[u8]) -> impl Iterator<Item = &Bytes> + '_ {
        let shared = self.directory.record(room);
        let by_node = shared
            .into_iter()
            .flat_map(|shared| &shared.record.elsewhere);
        by_node.flat_map(|(_, names)| names)
    }

    /// Hands a DM for `target`, a user of another node, to that node.
    pub(crate) fn relay_direct(
        &mut self,
        conn: ConnId,
        target: &[u8],
        frame: Bytes,
        out: &mut Vec<Action>,
    ) -> bool {
        let Some(node) = self.directory.remote_node_of(target).cloned() else {
            return false;
        };
        let ticket = self.new_ticket();
        let user = self.users.get_mut(&conn).expect("caller checked");
        user.pending = Some(Box::new(Pending::Direct { ticket }));
        out.push(Action::RelayDirect(Box::new(DirectRelay {
            conn,
            ticket,
            node,
            target: Bytes::copy_from_slice(target),
            frame,
        })));
        true
    }

    /// A [`DirectRelay`] finished.
    pub fn direct_relayed(
        &mut self,
        conn: ConnId,
        ticket: u64,
        target: &[u8],
        outcome: DirectOutcome,
        out: &mut Vec<Action>,
    ) {
        if !self.take_direct(conn, ticket) {
            return;
        }
        match outcome {
            DirectOutcome::Delivered => {
                out.push(crate::send(conn, OK_RESPONSE));
                self.stats.relayed(Relayed::Direct, 1);
            }
            DirectOutcome::Absent => self.no_such_user(conn, target, out),
            DirectOutcome::Unavailable => {
                respond(out, conn, Status::TryLater, text::CLUSTER_UNAVAILABLE)
            }
        }
    }

    /// A room message relayed from another node: queued for the members
    /// of `room` here.
    pub fn relayed_room_message(&mut self, room: &[u8], frame: Bytes, out: &mut Vec<Action>) {
        let Some(local) = self.directory.room(room) else {
            return;
        };
        self.stats.relayed(Relayed::Room, local.members().len());
        out.push(Action::Broadcast {
            to: local.members_now(),
            except: None,
            frame,
        });
    }

    /// A DM relayed from another node for `target`: queued if the user is
    /// here. Returns whether it was.
    pub fn relayed_direct_message(
        &mut self,
        target: &[u8],
        frame: Bytes,
        out: &mut Vec<Action>,
    ) -> bool {
        let Some(recipient) = self.directory.find_user(target) else {
            return false;
        };
        out.push(crate::send(recipient, frame));
        true
    }

    /// Room messages relayed from `node` were lost on the way (the driver
    /// saw a gap in their sequence): every member here of a room that node
    /// serves members of may have missed one, and is disconnected as a
    /// slow consumer rather than left to believe it has them all.
    pub fn relay_lost(&mut self, node: &str, now: Instant, out: &mut Vec<Action>) {
        let missed: Vec<ConnId> = self
            .directory
            .rooms()
            .filter(|(name, _)| {
                self.directory
                    .record(name)
                    .is_some_and(|shared| shared.relay.nodes.iter().any(|other| &**other == node))
            })
            .flat_map(|(_, room)| room.members().iter().copied())
            .collect();
        if !missed.is_empty() {
            warn!(%node, members = missed.len(), "room messages from a node were lost; disconnecting those who missed them");
        }
        for conn in missed {
            self.close(conn, CloseReason::SlowConsumer, now, out);
        }
    }

    /// Cluster mode: the member's room in the store follows a change here.
    pub(crate) fn left_shared_room(&self, room: &Bytes, member: &Bytes, out: &mut Vec<Action>) {
        if self.in_cluster() {
            out.push(Action::LeaveRoom {
                room: room.clone(),
                member: member.clone(),
            });
        }
    }

    /// Cluster mode: a member of `room` was renamed.
    pub(crate) fn renamed_in_shared_room(&self, conn: ConnId, old: &Bytes, out: &mut Vec<Action>) {
        let Some(user) = self.users.get(&conn) else {
            return;
        };
        if let (true, Some(room)) = (self.in_cluster(), &user.room) {
            out.push(Action::RenameMember(Box::new(MemberRename {
                room: room.clone(),
                old: old.clone(),
                new: user.name.clone(),
                introduction: self.introduction(conn),
            })));
        }
    }
}
