//! The hub's part of the secure extension, version 2 (PROTOCOL.md §12):
//! registered identities and their proofs, signed renames, room key
//! rotation with its timers, and DM key requests, including those between
//! users of two nodes of a cluster (issued by the target's node).
//!
//! # Identities
//!
//! A connection becomes secure with REGISTER_KEY, which carries an identity
//! block ([`Identity`]: an Ed25519 signing key, an RSA key and two
//! signatures) and a proof of possession. The hub checks the keys'
//! parameters, then three Ed25519 signatures, all strictly
//! (`verify_strict`): the key binding (the signing key signed the RSA key),
//! the name proof (it chose the connection's current name) and possession
//! (it signed this connection's channel binding and name), so a client that
//! holds only someone else's public keys cannot register them. Peers get the
//! block exactly as registered and check it themselves; the hub keeps it,
//! refreshing the name proof at each SIGNED_NICK.
//!
//! # Room keys
//!
//! The hub never sees a symmetric key. It only decides *who* gets a fresh
//! key, and asks its driver to run a [`KeyWrapJob`] off the event loop, where
//! the key is generated, wrapped for each recipient under that recipient's
//! OAEP label and zeroized. The answer comes back through
//! [`Hub::keys_wrapped`], and only then are the wrapped keys sent, to the
//! recipients that are still members.
//!
//! Each secure room has a random **incarnation** and an **epoch** that goes
//! up by exactly 1 with each key delivered. Rotations are coalesced: a room
//! has at most one in flight, and a membership change meanwhile only marks
//! the room stale, so a burst of joins to a big room costs two rotations,
//! not one per join. On a departure the remaining members are told at once
//! (ROOM_REKEYING) to hold their sends until the next key. A rotation whose
//! wrap fails delivers nothing (the room fails closed: its members keep
//! holding) and is retried after [`Limits::rotation_retry`], under the same
//! epoch; a key older than [`Limits::room_key_lifetime`] is replaced even if
//! nobody came or went. Both timers live in one [`RoomTimers`], at most one
//! entry per room.
//!
//! [`Limits::rotation_retry`]: crate::Limits::rotation_retry
//! [`Limits::room_key_lifetime`]: crate::Limits::room_key_lifetime

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use ed25519_dalek::{Signature, VerifyingKey};
use rsa::pkcs8::der::Decode;
use rsa::pkcs8::SubjectPublicKeyInfoRef;
use rsa::traits::PublicKeyParts;
use rsa::BoxedUint;
use tracing::{error, info, warn};

use super::{
    respond, respond_naming, send, Action, CommitOutcome, ConnId, DmKeyAnswer, DmKeyRelay,
    EpochCommit, Hub, MemberFrames, NodeId, Pending, Room, RoomRecord, User,
};
use parlor_proto::frame::{FrameCodec, MAX_CLIENT_PAYLOAD};
use parlor_proto::legacy::OK_RESPONSE;
use parlor_proto::printable::Printable;
use parlor_proto::secure::{
    dm_key_label, key_binding_statement, name_proof_statement, possession_statement,
    room_key_label, Fingerprint, Identity, Registration, CHANNEL_BINDING_LEN, KEY_BITS,
    PLAIN_CHANNEL_BINDING, RSA_PUBLIC_EXPONENT, SIGNATURE_LEN,
};
use parlor_proto::text;
use parlor_proto::{SecureMessage, Status};

/// A connection's registered identity, its keys parsed once.
///
/// Parsing an RSA key costs 10–20 µs and a wrap 60–150 µs, so parsing again
/// for every wrap would add a sixth to each rotation. The block is kept as
/// its owner sent it, because that is what its peers receive.
pub(crate) struct RegisteredIdentity {
    /// What peers receive: as registered, the name proof refreshed by each
    /// SIGNED_NICK.
    block: Identity,
    fingerprint: Fingerprint,
    verifying: VerifyingKey,
    rsa: Arc<rsa::PublicKey>,
}

/// Why a REGISTER_KEY was refused, once its connection may register at all.
enum Refused {
    /// [`text::BAD_PUBLIC_KEY`].
    BadKeys,
    /// [`text::KEY_PROOF_FAILED`].
    BadProof,
}

impl RegisteredIdentity {
    /// Checks a registration made by a connection called `nick` whose
    /// channel binding is `binding`: the keys' parameters, then the three
    /// proofs.
    fn check(
        registration: &Registration,
        nick: &[u8],
        binding: &[u8; CHANNEL_BINDING_LEN],
    ) -> Result<RegisteredIdentity, Refused> {
        let verifying = VerifyingKey::from_bytes(&registration.signing_key)
            .ok()
            // A point of small order would let anyone sign for it.
            .filter(|key| !key.is_weak())
            .ok_or(Refused::BadKeys)?;
        let rsa = parse_rsa(&registration.rsa_der).ok_or(Refused::BadKeys)?;
        let identity = RegisteredIdentity {
            block: registration.identity(),
            fingerprint: registration.identity().fingerprint(),
            verifying,
            rsa: Arc::new(rsa),
        };
        let proofs = [
            (
                key_binding_statement(&registration.rsa_der),
                &registration.key_binding,
            ),
            (name_proof_statement(nick), &registration.name_proof),
            (
                possession_statement(binding, nick),
                &registration.possession,
            ),
        ];
        if proofs
            .iter()
            .all(|(statement, signature)| identity.verifies(statement, signature))
        {
            Ok(identity)
        } else {
            Err(Refused::BadProof)
        }
    }

    /// Whether `signature` is this identity's, over `statement`: strict
    /// Ed25519, which refuses malleable encodings.
    pub(crate) fn verifies(&self, statement: &[u8], signature: &[u8; SIGNATURE_LEN]) -> bool {
        self.verifying
            .verify_strict(statement, &Signature::from_bytes(signature))
            .is_ok()
    }

    /// Whether `proof` is this identity's name proof for `name`.
    pub(crate) fn proves_name(&self, name: &[u8], proof: &[u8; SIGNATURE_LEN]) -> bool {
        self.verifies(&name_proof_statement(name), proof)
    }

    /// Keeps the name proof of a rename: peers receive it with the block
    /// from now on.
    pub(crate) fn set_name_proof(&mut self, proof: &[u8; SIGNATURE_LEN]) {
        self.block.name_proof = *proof;
    }

    /// The block peers receive.
    pub(crate) fn block(&self) -> &Identity {
        &self.block
    }

    /// Who this is.
    pub(crate) fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }
}

impl fmt::Debug for RegisteredIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let short: String = self.fingerprint[..4]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        write!(
            f,
            "Identity({short}…, RSA {} bits)",
            self.rsa.n().bit_width()
        )
    }
}

/// The RSA key of a registration: exactly one DER SubjectPublicKeyInfo (no
/// bytes after it) with the rsaEncryption algorithm (an RSASSA-PSS key must
/// not be used to encrypt, RFC 4055), [`KEY_BITS`] bits and the exponent
/// [`RSA_PUBLIC_EXPONENT`].
fn parse_rsa(der: &[u8]) -> Option<rsa::PublicKey> {
    let info = SubjectPublicKeyInfoRef::from_der(der).ok()?;
    if info.algorithm.oid != rsa::pkcs1::ALGORITHM_OID {
        return None;
    }
    let key = rsa::PublicKey::try_from(info).ok()?;
    let bits = key.n().bit_width() as usize;
    let exponent = BoxedUint::from(u64::from(RSA_PUBLIC_EXPONENT));
    (KEY_BITS.contains(&bits) && *key.e() == exponent).then_some(key)
}

/// One recipient of a wrapped key.
#[derive(Clone)]
pub struct KeyRecipient {
    /// The recipient's connection.
    pub conn: ConnId,
    /// Its registered RSA key, parsed once at registration.
    pub key: Arc<rsa::PublicKey>,
    /// The OAEP label to wrap with: [`room_key_label`] or
    /// [`dm_key_label`], naming this recipient, so that its wrap opens for
    /// this purpose only.
    pub label: Vec<u8>,
}

impl fmt::Debug for KeyRecipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} bits)", self.conn, self.key.n().bit_width())
    }
}

/// A fresh 32-byte key to generate, wrap for every recipient with
/// RSA-OAEP-SHA256 under the recipient's label, and forget, off the event
/// loop. The driver reports the result with [`Hub::keys_wrapped`].
#[derive(Debug)]
pub struct KeyWrapJob {
    /// Echoed back in [`Hub::keys_wrapped`], which looks the job up by it.
    pub ticket: u64,
    /// Who gets the key, each wrapped with its own public key and label.
    pub recipients: Vec<KeyRecipient>,
    /// The connection whose reply is owed until the job is done (a
    /// DM_KEY_REQUEST): the driver reads no further requests from it
    /// meanwhile. `None` for a room key rotation, which nobody waits for,
    /// and for a DM key asked for by another node, whose reply is owed
    /// there.
    pub requester: Option<ConnId>,
}

/// The result of a [`KeyWrapJob`].
#[derive(Debug)]
pub enum KeyWrapOutcome {
    /// The key wrapped for each recipient. A recipient whose wrap failed
    /// (which the worker logs) is missing, and the hub treats the job as
    /// failed: a rotation must reach every member or none.
    Wrapped(Vec<(ConnId, Bytes)>),
    /// The queue was full.
    Busy,
    /// The workers are gone (a bug); logged by the driver.
    Failed,
}

/// The key state of a secure room.
///
/// At any moment a secure room either has a rotation in flight or a
/// deadline in [`RoomTimers`] (its retry, or its key's end of life), never
/// both, and never neither while this node owns it: [`Hub::check_invariants`]
/// checks it.
#[derive(Debug)]
pub(crate) struct RoomKeyState {
    /// Which room of this name: random, never 0.
    incarnation: u64,
    /// The epoch of the newest key delivered; 0 before the first. The next
    /// rotation makes `epoch + 1`, and a failed one makes it again.
    epoch: u32,
    /// A rotation is in flight.
    rotating: bool,
    /// The membership changed while the rotation was in flight: another
    /// rotation follows it.
    stale: bool,
    /// When the room's entry in [`RoomTimers`] comes due.
    deadline: Option<Instant>,
    /// Whether this node issues the room's keys: always on one server; in
    /// a cluster, when the room's record names this node its owner.
    owned: bool,
    /// Cluster mode: the record's count of arrivals and departures
    /// ([`RoomRecord::changes`]) that the last rotation was made for.
    keyed_changes: u64,
}

impl RoomKeyState {
    /// The key state of a new room of one server.
    pub(crate) fn new(incarnation: u64) -> RoomKeyState {
        RoomKeyState {
            incarnation,
            epoch: 0,
            rotating: false,
            stale: false,
            deadline: None,
            owned: true,
            keyed_changes: 0,
        }
    }

    /// The key state of a cluster's room as its record says, on node `me`,
    /// when its first member here enters: its epoch so far, and whether
    /// `me` issues its keys from the start. That is so only for a room no
    /// key was committed for yet (one `me` creates); a room whose record
    /// names `me` with an epoch reached elsewhere is taken over, with its
    /// warning, once the member is in ([`Hub::follow_room_record`]).
    pub(crate) fn from_record(record: &RoomRecord, me: Option<&NodeId>) -> RoomKeyState {
        let owner_here = record.owner.is_some() && record.owner.as_ref() == me;
        RoomKeyState {
            epoch: record.epoch,
            owned: owner_here && record.epoch == 0,
            ..RoomKeyState::new(record.incarnation)
        }
    }

    pub(crate) fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The epoch of the key the next delivery carries. 2^32 rotations of
    /// one room would take decades of constant churn; saturating keeps
    /// "never goes back" even then.
    fn next_epoch(&self) -> u32 {
        self.epoch.saturating_add(1)
    }
}

/// The one deadline structure of room keys: every secure room that is not
/// rotating, by when it must rotate (a retry after a failed wrap, or its
/// key's end of life). At most one entry per room, removed when the room
/// rotates or is deleted, so it never holds more than there are rooms, and
/// [`Hub::poll_timeout`] reads its first entry without a scan.
#[derive(Debug, Default)]
pub(crate) struct RoomTimers {
    due: BTreeSet<(Instant, Bytes)>,
}

impl RoomTimers {
    /// Schedules `room`, whose state is `keys`, at `at`.
    fn set(&mut self, room: &Bytes, keys: &mut RoomKeyState, at: Instant) {
        self.clear(room, keys);
        keys.deadline = Some(at);
        self.due.insert((at, room.clone()));
    }

    /// Removes `room`'s entry, if it has one.
    pub(crate) fn clear(&mut self, room: &[u8], keys: &mut RoomKeyState) {
        if let Some(at) = keys.deadline.take() {
            self.due.remove(&(at, Bytes::copy_from_slice(room)));
        }
    }

    pub(crate) fn next(&self) -> Option<Instant> {
        self.due.first().map(|(at, _)| *at)
    }

    /// Removes and returns a room due at or before `now`.
    fn pop_due(&mut self, now: Instant) -> Option<Bytes> {
        let (at, _) = self.due.first()?;
        if *at > now {
            return None;
        }
        self.due.pop_first().map(|(_, room)| room)
    }

    fn len(&self) -> usize {
        self.due.len()
    }

    fn contains(&self, at: Instant, room: &Bytes) -> bool {
        self.due.contains(&(at, room.clone()))
    }
}

/// What an in-flight [`KeyWrapJob`] is for; looked up by its ticket.
#[derive(Debug)]
pub(super) enum WrapPurpose {
    Room {
        room: Bytes,
        incarnation: u64,
        epoch: u32,
        /// The members here it was made for, every one of whom must get a
        /// wrap.
        recipients: Vec<ConnId>,
        /// The members on other nodes it was made for, by node and
        /// fingerprint; the `i`th is [`member_elsewhere`]`(i)` among the
        /// recipients.
        elsewhere: Vec<(NodeId, Fingerprint)>,
    },
    Dm {
        requester: ConnId,
        target: ConnId,
        target_name: Bytes,
        key_id: u32,
    },
    /// A DM key asked for by a user of another node.
    RemoteDm(RemoteDmKey),
}

/// A DM key being made for a target here and a requester on another node,
/// whose answer the driver sends back as `ask`.
#[derive(Debug)]
pub(super) struct RemoteDmKey {
    ask: u64,
    target: ConnId,
    /// The `81` introducing the requester, sent to the target as it came.
    introduction: Bytes,
    requester_name: Bytes,
    requester_fingerprint: Fingerprint,
    key_id: u32,
}

/// Stands for a requester on another node among a [`KeyWrapJob`]'s
/// recipients. Connections are numbered up from 0 and never reach it.
const ANOTHER_NODE: ConnId = ConnId(u64::MAX);

/// Stands for the `index`th member on another node among a room key's
/// recipients, below [`ANOTHER_NODE`]: a room has far fewer members than
/// the gap between the connections' numbers and these.
fn member_elsewhere(index: usize) -> ConnId {
    ConnId(ANOTHER_NODE.0 - 1 - index as u64)
}

/// Which member elsewhere `conn` stands for, if it is one of `count`.
fn index_elsewhere(conn: ConnId, count: usize) -> Option<usize> {
    let index = usize::try_from(ANOTHER_NODE.0.checked_sub(conn.0)?.checked_sub(1)?).ok()?;
    (index < count).then_some(index)
}

/// A member of a secure room served by another node, as its introduction
/// in the room's record says.
#[derive(Debug, Clone)]
pub(crate) struct RemotePeer {
    pub(crate) node: NodeId,
    pub(crate) name: Bytes,
    pub(crate) fingerprint: Fingerprint,
    rsa: Arc<rsa::PublicKey>,
    /// The `81` a joiner of the room is sent for this member, as stored.
    pub(crate) introduction: Bytes,
}

impl RemotePeer {
    /// Reads an introduction of node `node`'s member; `None`, logged, if it
    /// is not one.
    pub(crate) fn read(node: &NodeId, introduction: &Bytes) -> Option<RemotePeer> {
        let Some((name, fingerprint, rsa)) = introduced(introduction) else {
            warn!(%node, "an introduction in a room's record that cannot be read; left out");
            return None;
        };
        Some(RemotePeer {
            node: node.clone(),
            name,
            fingerprint,
            rsa: Arc::new(rsa),
            introduction: introduction.clone(),
        })
    }
}

/// A room key wrapped for its recipients, to be delivered once its epoch
/// is committed (cluster mode) or at once (one server).
#[derive(Debug)]
pub(super) struct WrappedRoomKey {
    room: Bytes,
    incarnation: u64,
    epoch: u32,
    wrapped: Vec<(ConnId, Bytes)>,
    elsewhere: Vec<(NodeId, Fingerprint)>,
}

/// The requester's name, identity block and RSA key in an introduction
/// (an `81` PEER_KEY frame) sent by another node; `None` if it is not one.
fn introduced(introduction: &Bytes) -> Option<(Bytes, Fingerprint, rsa::PublicKey)> {
    let mut wire = BytesMut::from(&introduction[..]);
    let frame = FrameCodec::new(MAX_CLIENT_PAYLOAD)
        .decode(&mut wire)
        .ok()??;
    let SecureMessage::PeerKey { name, identity, .. } = SecureMessage::parse(&frame).ok()? else {
        return None;
    };
    let rsa = parse_rsa(&identity.rsa_der)?;
    Some((name, identity.fingerprint(), rsa))
}

/// Why a membership changed, for [`Hub::membership_changed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// Someone joined (or created the room).
    Arrival,
    /// Someone left: the remaining members hold their sends until the next
    /// key.
    Departure(ConnId),
}

/// The channel binding a secure connection's proofs are made over: its TLS
/// exporter value, or zeros for a plain connection the server lets be
/// secure.
pub(crate) fn binding_of(user: &User) -> [u8; CHANNEL_BINDING_LEN] {
    user.channel_binding.unwrap_or(PLAIN_CHANNEL_BINDING)
}

impl Hub {
    /// REGISTER_KEY: makes the connection secure, once.
    pub(super) fn register_key(
        &mut self,
        conn: ConnId,
        registration: &Registration,
        out: &mut Vec<Action>,
    ) {
        let user = self.users.get_mut(&conn).expect("caller checked");
        if user.channel_binding.is_none() && !self.limits.allow_secure_on_plain {
            let reply = text::secure_needs_tls(self.limits.tls_port);
            return respond(out, conn, Status::Error, reply);
        }
        if user.identity.is_some() {
            return respond(out, conn, Status::Error, text::KEY_ALREADY_REGISTERED);
        }
        let identity = match RegisteredIdentity::check(registration, &user.name, &binding_of(user))
        {
            Ok(identity) => identity,
            Err(Refused::BadKeys) => {
                return respond(out, conn, Status::Error, text::BAD_PUBLIC_KEY)
            }
            Err(Refused::BadProof) => {
                return respond(out, conn, Status::Error, text::KEY_PROOF_FAILED)
            }
        };
        info!(peer = %user.peer, nick = %Printable(&user.name), ?identity,
              tls = user.channel_binding.is_some(), "key registered");
        user.identity = Some(Box::new(identity));
        out.push(send(conn, OK_RESPONSE));
    }

    /// `94` (to a secure connection) and `9a 01 Nick not present`.
    pub(super) fn no_such_user(&self, conn: ConnId, name: &[u8], out: &mut Vec<Action>) {
        if self.is_secure(conn) {
            let notice = SecureMessage::NoSuchUser {
                name: Bytes::copy_from_slice(name),
            };
            out.push(send(conn, notice.encode()));
        }
        respond(out, conn, Status::Error, text::NICK_NOT_PRESENT);
    }

    /// Appends to a JOIN's reply what a secure joiner gets before its
    /// `9a 00`: the confirmation with the room's incarnation, then the
    /// identity of every other member if the room is secure. Nothing for a
    /// legacy joiner.
    pub(super) fn join_notices(
        &self,
        conn: ConnId,
        room: &Bytes,
        created: bool,
        dst: &mut BytesMut,
    ) {
        let Some(entry) = self.directory.room(room) else {
            return;
        };
        if !self.is_secure(conn) {
            return;
        }
        let secure = entry.is_secure();
        let incarnation = entry.keys().map_or(0, RoomKeyState::incarnation);
        let confirmation = if created {
            SecureMessage::RoomCreated {
                room: room.clone(),
                secure,
                incarnation,
            }
        } else {
            SecureMessage::RoomJoined {
                room: room.clone(),
                secure,
                incarnation,
            }
        };
        confirmation.encode_into(dst);
        if !secure {
            return;
        }
        for member in entry.members().iter().filter(|member| **member != conn) {
            let user = &self.users[member];
            if let Some(identity) = &user.identity {
                let notice = SecureMessage::PeerKey {
                    name: user.name.clone(),
                    renamed_from: Bytes::new(),
                    identity: identity.block.clone(),
                };
                notice.encode_into(dst);
            }
        }
        let shared = self.directory.record(room);
        for peer in shared.into_iter().flat_map(|shared| &shared.peers) {
            dst.extend_from_slice(&peer.introduction);
        }
    }

    /// The `81` PEER_KEY that introduces a secure user under its current
    /// name: what its peers get, and what a secure room's record keeps for
    /// it in cluster mode. `None` for a legacy connection.
    pub(crate) fn introduction(&self, conn: ConnId) -> Option<Bytes> {
        let user = self.users.get(&conn)?;
        let identity = user.identity.as_ref()?;
        let notice = SecureMessage::PeerKey {
            name: user.name.clone(),
            renamed_from: Bytes::new(),
            identity: identity.block.clone(),
        };
        Some(notice.encode())
    }

    /// Sends the user's identity, under its current name, to every other
    /// member of its room if that room is secure: after a join
    /// (`renamed_from` empty) and after a rename (the old name).
    pub(super) fn announce_identity(
        &self,
        conn: ConnId,
        renamed_from: Bytes,
        out: &mut Vec<Action>,
    ) {
        let user = &self.users[&conn];
        let (Some(identity), Some(room)) = (&user.identity, &user.room) else {
            return;
        };
        let Some(entry) = self.directory.room(room).filter(|room| room.is_secure()) else {
            return;
        };
        let notice = SecureMessage::PeerKey {
            name: user.name.clone(),
            renamed_from,
            identity: identity.block.clone(),
        }
        .encode();
        self.relay_to_room(room, &notice, out);
        out.push(Action::Broadcast {
            to: entry.members_now(),
            except: Some(conn),
            frame: notice,
        });
    }

    /// Cluster mode: relays a notice for every member of `room` to the
    /// other nodes serving members of it, as a room message is relayed.
    fn relay_to_room(&self, room: &[u8], frame: &Bytes, out: &mut Vec<Action>) {
        if let Some(to) = self.relay_target(room) {
            out.push(Action::Relay {
                to: Arc::clone(to),
                frame: frame.clone(),
            });
        }
    }

    /// The membership of `room` changed: rotate its key, or, if a rotation
    /// is already in flight, make sure another one follows it. On a
    /// departure the remaining members first hear ROOM_REKEYING, in this
    /// same event. Nothing for a plaintext room, one that was deleted with
    /// its last member, or one whose keys another node issues (that node
    /// sees the change in the room's record, [`Hub::follow_room_record`]).
    pub(super) fn membership_changed(
        &mut self,
        room: &Bytes,
        change: Change,
        out: &mut Vec<Action>,
    ) {
        let Some(keys) = self.directory.room(room).and_then(Room::keys) else {
            return;
        };
        if !keys.owned {
            return;
        }
        if let Change::Departure(left) = change {
            self.rekeying_notice(room, Some(left), out);
        }
        self.rekey(room, out);
    }

    /// Tells every member of `room` but `except`, here and on the other
    /// nodes, that a key is on its way (`95` ROOM_REKEYING): they hold
    /// their sends until it comes.
    fn rekeying_notice(&self, room: &Bytes, except: Option<ConnId>, out: &mut Vec<Action>) {
        let entry = self.directory.room(room).expect("caller checked");
        let keys = entry.keys().expect("caller checked");
        let notice = SecureMessage::RoomRekeying {
            room: room.clone(),
            incarnation: keys.incarnation,
            next_epoch: keys.next_epoch(),
        }
        .encode();
        self.relay_to_room(room, &notice, out);
        out.push(Action::Broadcast {
            to: entry.members_now(),
            except,
            frame: notice,
        });
    }

    /// Rotates the key of `room`, a secure room this node owns, or has the
    /// rotation in flight followed by another.
    fn rekey(&mut self, room: &Bytes, out: &mut Vec<Action>) {
        let keys = self
            .directory
            .room_mut(room)
            .and_then(Room::keys_mut)
            .expect("caller checked");
        if keys.rotating {
            keys.stale = true;
        } else {
            self.rotate(room, out);
        }
    }

    /// Cluster mode: the record of `room` has changed (its members
    /// elsewhere were those of `before`, by fingerprint). A node that
    /// becomes the room's owner takes it over: it tells every member a key
    /// is coming, since its predecessor may have committed an epoch it
    /// never delivered, then rotates, at the epoch after the last
    /// committed. An owner whose room gained or lost members elsewhere
    /// rotates, telling the members first if somebody left. A node that is
    /// no longer the owner stops timing the room's keys.
    pub(crate) fn follow_room_record(
        &mut self,
        room: &Bytes,
        before: &[Fingerprint],
        out: &mut Vec<Action>,
    ) {
        let me = self.node.clone();
        let Some(shared) = self.directory.record(room) else {
            return;
        };
        let record = &shared.record;
        let owner_here = record.owner.is_some() && record.owner == me;
        let (incarnation, epoch, changes) = (record.incarnation, record.epoch, record.changes);
        let now_there: HashSet<&Fingerprint> =
            shared.peers.iter().map(|peer| &peer.fingerprint).collect();
        let departed = before.iter().any(|gone| !now_there.contains(gone));
        let Some(keys) = self.directory.room_mut(room).and_then(Room::keys_mut) else {
            return;
        };
        if keys.incarnation != incarnation {
            return;
        }
        keys.epoch = keys.epoch.max(epoch);
        match (keys.owned, owner_here) {
            (true, false) => {
                keys.owned = false;
                keys.stale = false;
                self.room_timers.clear(room, keys);
            }
            (false, true) => {
                keys.owned = true;
                info!(room = %Printable(room), epoch = keys.epoch, "took over a secure room's keys");
                self.rekeying_notice(room, None, out);
                self.rekey(room, out);
            }
            (true, true) if changes != keys.keyed_changes => {
                if departed {
                    self.rekeying_notice(room, None, out);
                }
                self.rekey(room, out);
            }
            _ => {}
        }
    }

    /// Starts a rotation: the next epoch, for the members of this moment
    /// on every node, each with the label that names the room, its
    /// incarnation, the epoch and the member.
    fn rotate(&mut self, room: &Bytes, out: &mut Vec<Action>) {
        let shared = self.directory.record(room);
        let changes = shared.map_or(0, |shared| shared.record.changes);
        let peers: Vec<RemotePeer> = shared.map_or_else(Vec::new, |shared| shared.peers.clone());
        let entry = self.directory.room_mut(room).expect("caller checked");
        let members = entry.members_now();
        let keys = entry.keys_mut().expect("caller checked");
        self.room_timers.clear(room, keys);
        keys.rotating = true;
        keys.stale = false;
        keys.keyed_changes = changes;
        let (incarnation, epoch) = (keys.incarnation, keys.next_epoch());
        let here = members.iter().map(|member| {
            let identity = self.users[member]
                .identity
                .as_ref()
                .expect("members of a secure room are secure");
            KeyRecipient {
                conn: *member,
                key: Arc::clone(&identity.rsa),
                label: room_key_label(room, incarnation, epoch, &identity.fingerprint),
            }
        });
        let elsewhere = peers.iter().enumerate().map(|(index, peer)| KeyRecipient {
            conn: member_elsewhere(index),
            key: Arc::clone(&peer.rsa),
            label: room_key_label(room, incarnation, epoch, &peer.fingerprint),
        });
        let recipients: Vec<KeyRecipient> = here.chain(elsewhere).collect();
        let ticket = self.new_ticket();
        let purpose = WrapPurpose::Room {
            room: room.clone(),
            incarnation,
            epoch,
            recipients: members.to_vec(),
            elsewhere: peers
                .into_iter()
                .map(|peer| (peer.node, peer.fingerprint))
                .collect(),
        };
        self.wraps.insert(ticket, purpose);
        out.push(Action::WrapKeys(KeyWrapJob {
            ticket,
            recipients,
            requester: None,
        }));
    }

    /// Starts the rotations whose time has come: retries of failed wraps,
    /// and keys at the end of their lifetime.
    pub(super) fn rotate_due_rooms(&mut self, now: Instant, out: &mut Vec<Action>) {
        while let Some(room) = self.room_timers.pop_due(now) {
            let keys = self
                .directory
                .room_mut(&room)
                .and_then(Room::keys_mut)
                .expect("a room's timer goes with the room");
            keys.deadline = None;
            self.rotate(&room, out);
        }
    }

    /// The room `name` was deleted with its last member: its timer goes too.
    pub(super) fn room_deleted(&mut self, name: &[u8], room: Room) {
        if let Some(mut keys) = room.into_keys() {
            self.room_timers.clear(name, &mut keys);
        }
    }

    /// DM_KEY_REQUEST: checks both ends, then has a DM key made for them,
    /// each half wrapped under a label naming both fingerprints.
    pub(super) fn dm_key_request(
        &mut self,
        conn: ConnId,
        target: &[u8],
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if !self.admit_message(conn, now, out) {
            return;
        }
        let Some(own) = &self.users[&conn].identity else {
            return respond(out, conn, Status::Error, text::REGISTER_KEY_FIRST);
        };
        let Some(peer) = self.directory.find_user(target) else {
            if let Some(node) = self.directory.remote_node_of(target).cloned() {
                return self.relay_dm_key_request(conn, node, target, out);
            }
            return self.no_such_user(conn, target, out);
        };
        if peer == conn {
            return respond(out, conn, Status::Error, text::DM_KEY_WITH_YOURSELF);
        }
        let Some(theirs) = &self.users[&peer].identity else {
            return respond_naming(out, conn, Status::Error, text::has_no_key(target));
        };
        let key_id = self.last_key_id.checked_add(1).unwrap_or(1);
        let recipients = vec![
            KeyRecipient {
                conn,
                key: Arc::clone(&own.rsa),
                label: dm_key_label(key_id, &own.fingerprint, &theirs.fingerprint),
            },
            KeyRecipient {
                conn: peer,
                key: Arc::clone(&theirs.rsa),
                label: dm_key_label(key_id, &theirs.fingerprint, &own.fingerprint),
            },
        ];
        // Each key issued costs its target a private-key operation: nobody
        // may have keys pushed onto a user without end.
        let peer_user = self.users.get_mut(&peer).expect("found by name");
        let rate = self.limits.dm_keys_per_target;
        if !peer_user.rates().dm_keys.try_acquire(now, rate) {
            let reply = text::dm_keys_for_target(target);
            return respond_naming(out, conn, Status::TryLater, reply);
        }
        // Key ids count up from 1 and are never 0.
        self.last_key_id = key_id;
        let ticket = self.new_ticket();
        let purpose = WrapPurpose::Dm {
            requester: conn,
            target: peer,
            target_name: Bytes::copy_from_slice(target),
            key_id,
        };
        self.wraps.insert(ticket, purpose);
        self.users.get_mut(&conn).expect("caller checked").pending = Some(Box::new(Pending::DmKey));
        out.push(Action::WrapKeys(KeyWrapJob {
            ticket,
            recipients,
            requester: Some(conn),
        }));
    }

    /// A DM_KEY_REQUEST for a user of another node, which issues the key
    /// (it holds the target's keys and the bound on keys issued for it).
    /// The request carries the requester's introduction, the `81` the
    /// target is to get.
    fn relay_dm_key_request(
        &mut self,
        conn: ConnId,
        node: NodeId,
        target: &[u8],
        out: &mut Vec<Action>,
    ) {
        let ticket = self.new_ticket();
        let introduction = self.introduction(conn).expect("caller checked");
        let user = self.users.get_mut(&conn).expect("caller checked");
        user.pending = Some(Box::new(Pending::Direct { ticket }));
        out.push(Action::RelayDmKey(Box::new(DmKeyRelay {
            conn,
            ticket,
            node,
            target: Bytes::copy_from_slice(target),
            introduction,
        })));
    }

    /// A [`DmKeyRelay`] was answered by the target's node (or not at all):
    /// the requester gets what a DM_KEY_REQUEST on one node would have.
    pub fn dm_key_relayed(
        &mut self,
        conn: ConnId,
        ticket: u64,
        target: &[u8],
        answer: DmKeyAnswer,
        out: &mut Vec<Action>,
    ) {
        if !self.take_direct(conn, ticket) {
            return;
        }
        match answer {
            DmKeyAnswer::Issued(issued) => {
                out.push(send(conn, issued));
                out.push(send(conn, OK_RESPONSE));
            }
            DmKeyAnswer::Absent => self.no_such_user(conn, target, out),
            DmKeyAnswer::HasNoKey => {
                respond_naming(out, conn, Status::Error, text::has_no_key(target))
            }
            DmKeyAnswer::TooMany => {
                let reply = text::dm_keys_for_target(target);
                respond_naming(out, conn, Status::TryLater, reply)
            }
            DmKeyAnswer::Busy => respond(out, conn, Status::TryLater, text::KEYS_BUSY),
            DmKeyAnswer::Failed => respond(out, conn, Status::Error, text::KEY_WRAP_FAILED),
            DmKeyAnswer::Unavailable => {
                respond(out, conn, Status::TryLater, text::CLUSTER_UNAVAILABLE)
            }
        }
    }

    /// A DM_KEY_REQUEST that another node sent as `ask`, for `target`, by
    /// the user its `introduction` names. The requester's node has checked
    /// the requester; this one checks the target, as a request made here
    /// would be, and issues the key. The answer goes back as
    /// [`Action::AnswerDmKey`], once the key is wrapped.
    pub fn relayed_dm_key_request(
        &mut self,
        ask: u64,
        target: &[u8],
        introduction: Bytes,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let mut answer = |answer| out.push(Action::AnswerDmKey { ask, answer });
        let Some((requester_name, requester_fingerprint, requester_rsa)) =
            introduced(&introduction)
        else {
            warn!(target = %Printable(target), "a DM key request from another node that cannot be read");
            return answer(DmKeyAnswer::Failed);
        };
        let Some(peer) = self.directory.find_user(target) else {
            return answer(DmKeyAnswer::Absent);
        };
        let peer_user = self.users.get_mut(&peer).expect("found by name");
        let Some(theirs) = &peer_user.identity else {
            return answer(DmKeyAnswer::HasNoKey);
        };
        let key_id = self.last_key_id.checked_add(1).unwrap_or(1);
        let recipients = vec![
            KeyRecipient {
                conn: peer,
                key: Arc::clone(&theirs.rsa),
                label: dm_key_label(key_id, &theirs.fingerprint, &requester_fingerprint),
            },
            KeyRecipient {
                conn: ANOTHER_NODE,
                key: Arc::new(requester_rsa),
                label: dm_key_label(key_id, &requester_fingerprint, &theirs.fingerprint),
            },
        ];
        if !peer_user
            .rates()
            .dm_keys
            .try_acquire(now, self.limits.dm_keys_per_target)
        {
            return answer(DmKeyAnswer::TooMany);
        }
        self.last_key_id = key_id;
        let ticket = self.new_ticket();
        let purpose = RemoteDmKey {
            ask,
            target: peer,
            introduction,
            requester_name,
            requester_fingerprint,
            key_id,
        };
        self.wraps.insert(ticket, WrapPurpose::RemoteDm(purpose));
        // Nobody here waits for it, so it goes with the room rotations;
        // what is in flight stays bounded by the per-target bound above.
        out.push(Action::WrapKeys(KeyWrapJob {
            ticket,
            recipients,
            requester: None,
        }));
    }

    /// A key asked for by another node is wrapped: the target gets `81`
    /// and `80` here, and the requester's node the `89` for its requester.
    fn remote_dm_key_wrapped(
        &mut self,
        purpose: RemoteDmKey,
        outcome: KeyWrapOutcome,
        out: &mut Vec<Action>,
    ) {
        let RemoteDmKey {
            ask,
            target,
            introduction,
            requester_name,
            requester_fingerprint,
            key_id,
        } = purpose;
        let answer = match (outcome, self.users.get(&target)) {
            (_, None) => DmKeyAnswer::Absent,
            (KeyWrapOutcome::Busy, _) => DmKeyAnswer::Busy,
            (KeyWrapOutcome::Failed, _) => DmKeyAnswer::Failed,
            (KeyWrapOutcome::Wrapped(wrapped), Some(peer)) => {
                let wrapped_for = |conn: ConnId| {
                    wrapped
                        .iter()
                        .find(|(recipient, _)| *recipient == conn)
                        .map(|(_, wrapped)| wrapped.clone())
                };
                match (wrapped_for(ANOTHER_NODE), wrapped_for(target)) {
                    (Some(for_requester), Some(for_target)) => {
                        let theirs = peer.identity.as_ref().expect("never removed");
                        let issued = SecureMessage::DmKeyIssued {
                            target: peer.name.clone(),
                            identity: theirs.block.clone(),
                            key_id,
                            wrapped: for_requester,
                        };
                        out.push(send(target, introduction));
                        let dm_key = SecureMessage::DmKey {
                            peer: requester_name,
                            peer_fingerprint: requester_fingerprint,
                            key_id,
                            wrapped: for_target,
                        };
                        out.push(send(target, dm_key.encode()));
                        DmKeyAnswer::Issued(issued.encode())
                    }
                    _ => DmKeyAnswer::Failed,
                }
            }
        };
        out.push(Action::AnswerDmKey { ask, answer });
    }

    /// A [`KeyWrapJob`] finished at `now`. An answer for an unknown ticket,
    /// or for a room or requester that is gone, is dropped.
    pub fn keys_wrapped(
        &mut self,
        ticket: u64,
        outcome: KeyWrapOutcome,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        match self.wraps.remove(&ticket) {
            None => {}
            Some(WrapPurpose::Room {
                room,
                incarnation,
                epoch,
                recipients,
                elsewhere,
            }) => match outcome {
                KeyWrapOutcome::Wrapped(wrapped)
                    if wrapped.len() == recipients.len() + elsewhere.len() =>
                {
                    let key = WrappedRoomKey {
                        room,
                        incarnation,
                        epoch,
                        wrapped,
                        elsewhere,
                    };
                    self.room_key_wrapped(key, now, out)
                }
                _ => self.rotation_failed(&room, incarnation, epoch, now, out),
            },
            Some(WrapPurpose::Dm {
                requester,
                target,
                target_name,
                key_id,
            }) => self.dm_key_wrapped(requester, target, &target_name, key_id, outcome, out),
            Some(WrapPurpose::RemoteDm(purpose)) => {
                self.remote_dm_key_wrapped(purpose, outcome, out)
            }
        }
    }

    /// A rotation's keys are wrapped. One server delivers them at once; a
    /// node of a cluster first commits their epoch to the room's record,
    /// which only the room's owner can ([`EpochCommit`]).
    fn room_key_wrapped(&mut self, key: WrappedRoomKey, now: Instant, out: &mut Vec<Action>) {
        let Some(keys) = self.room_keys_mut(&key.room, key.incarnation) else {
            return;
        };
        if !keys.owned {
            // Another node took the room over meanwhile, and keys it.
            return self.finish_rotation(&key.room, now, out);
        }
        if !self.in_cluster() {
            return self.deliver_room_key(key, now, out);
        }
        let ticket = self.new_ticket();
        out.push(Action::CommitEpoch(Box::new(EpochCommit {
            ticket,
            room: key.room.clone(),
            incarnation: key.incarnation,
            epoch: key.epoch,
        })));
        self.commits.insert(ticket, key);
    }

    /// An [`EpochCommit`] finished at `now`: the key it was for is
    /// delivered if its epoch is the room's now, and never otherwise.
    pub fn epoch_committed(
        &mut self,
        ticket: u64,
        outcome: CommitOutcome,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(key) = self.commits.remove(&ticket) else {
            return;
        };
        match outcome {
            CommitOutcome::Committed => self.deliver_room_key(key, now, out),
            // Another node owns the room now (this one hears of it from the
            // record), or has passed this epoch: the retry, if this node is
            // still the owner by then, takes the next.
            CommitOutcome::Superseded => {
                info!(room = %Printable(&key.room), epoch = key.epoch,
                      "a room key's epoch was not the room's to take; not delivered");
                if self.room_keys_mut(&key.room, key.incarnation).is_some() {
                    let retry = now + self.limits.rotation_retry;
                    self.finish_rotation(&key.room, retry, out);
                }
            }
            CommitOutcome::Unavailable => {
                self.rotation_failed(&key.room, key.incarnation, key.epoch, now, out)
            }
        }
    }

    /// A rotation delivered nothing: its wrap failed, its epoch could not
    /// be committed, or another owner's epoch passed it. The room fails
    /// closed (its members keep holding) and is tried again after the
    /// retry, or at once if its membership changed meanwhile.
    fn rotation_failed(
        &mut self,
        room: &Bytes,
        incarnation: u64,
        epoch: u32,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if self.room_keys_mut(room, incarnation).is_none() {
            return;
        }
        error!(room = %Printable(room), epoch, retry = ?self.limits.rotation_retry,
               "room key rotation failed; its members hold their sends until the retry");
        self.finish_rotation(room, now + self.limits.rotation_retry, out);
    }

    /// The key state of `room` if it is still the incarnation
    /// `incarnation`: a room deleted (and perhaps recreated) meanwhile has
    /// nobody, or other people, to give a key of the old one to.
    fn room_keys_mut(&mut self, room: &[u8], incarnation: u64) -> Option<&mut RoomKeyState> {
        self.directory
            .room_mut(room)
            .and_then(Room::keys_mut)
            .filter(|keys| keys.incarnation == incarnation)
    }

    /// Hands a rotation's keys to the recipients that are still members:
    /// here directly, on other nodes through their node, which checks the
    /// same. Then schedules the key's end of life.
    fn deliver_room_key(&mut self, key: WrappedRoomKey, now: Instant, out: &mut Vec<Action>) {
        let WrappedRoomKey {
            room,
            incarnation,
            epoch,
            wrapped,
            elsewhere,
        } = key;
        let Some(entry) = self.directory.room_mut(&room) else {
            return;
        };
        let members: HashSet<ConnId> = entry.members().iter().copied().collect();
        let Some(keys) = entry
            .keys_mut()
            .filter(|keys| keys.incarnation == incarnation)
        else {
            return;
        };
        keys.epoch = epoch;
        let mut by_node: Vec<MemberFrames> = Vec::new();
        for (conn, wrapped) in wrapped {
            let message = SecureMessage::RoomKey {
                room: room.clone(),
                incarnation,
                epoch,
                wrapped,
            };
            if members.contains(&conn) {
                out.push(send(conn, message.encode()));
            } else if let Some(index) = index_elsewhere(conn, elsewhere.len()) {
                let (node, fingerprint) = &elsewhere[index];
                let frame = (*fingerprint, message.encode());
                match by_node.iter_mut().find(|frames| frames.node == *node) {
                    Some(frames) => frames.frames.push(frame),
                    None => by_node.push(MemberFrames {
                        node: node.clone(),
                        room: room.clone(),
                        frames: vec![frame],
                    }),
                }
            }
        }
        out.extend(
            by_node
                .into_iter()
                .map(|frames| Action::RelayToMembers(Box::new(frames))),
        );
        self.finish_rotation(&room, now + self.limits.room_key_lifetime, out);
    }

    /// A rotation of `room` is over: the next starts at once if the
    /// membership changed meanwhile, else the room waits for `next` (its
    /// key's end of life, or a retry), as long as this node owns it.
    fn finish_rotation(&mut self, room: &Bytes, next: Instant, out: &mut Vec<Action>) {
        let Some(keys) = self.directory.room_mut(room).and_then(Room::keys_mut) else {
            return;
        };
        keys.rotating = false;
        let again = std::mem::take(&mut keys.stale);
        if !keys.owned {
            return;
        }
        if again {
            self.rotate(room, out);
        } else {
            self.room_timers.set(room, keys, next);
        }
    }

    /// Frames another node relayed for members of `room` here, by
    /// fingerprint ([`MemberFrames`]): each is queued for a member of the
    /// room with that key, one frame per member (a user may be in the room
    /// twice, with one key).
    pub fn relayed_to_members(
        &mut self,
        room: &[u8],
        frames: Vec<(Fingerprint, Bytes)>,
        out: &mut Vec<Action>,
    ) {
        let Some(entry) = self.directory.room(room) else {
            return;
        };
        let mut holders: HashMap<&Fingerprint, Vec<ConnId>> = HashMap::new();
        for member in entry.members() {
            if let Some(identity) = &self.users[member].identity {
                holders
                    .entry(&identity.fingerprint)
                    .or_default()
                    .push(*member);
            }
        }
        for (fingerprint, frame) in frames {
            if let Some(holder) = holders.get_mut(&fingerprint).and_then(Vec::pop) {
                out.push(send(holder, frame));
            }
        }
    }

    /// Answers a DM_KEY_REQUEST: `89` and `9a 00` to the requester, then
    /// `81` and `80` to the target.
    fn dm_key_wrapped(
        &mut self,
        requester: ConnId,
        target: ConnId,
        target_name: &[u8],
        key_id: u32,
        outcome: KeyWrapOutcome,
        out: &mut Vec<Action>,
    ) {
        let Some(user) = self.users.get_mut(&requester) else {
            return;
        };
        user.pending = None;
        let wrapped = match outcome {
            KeyWrapOutcome::Wrapped(wrapped) => wrapped,
            KeyWrapOutcome::Busy => {
                return respond(out, requester, Status::TryLater, text::KEYS_BUSY);
            }
            KeyWrapOutcome::Failed => {
                return respond(out, requester, Status::Error, text::KEY_WRAP_FAILED);
            }
        };
        let Some(peer) = self.users.get(&target) else {
            // The target left while its key was being wrapped.
            return self.no_such_user(requester, target_name, out);
        };
        let wrapped_for = |conn: ConnId| {
            wrapped
                .iter()
                .find(|(recipient, _)| *recipient == conn)
                .map(|(_, wrapped)| wrapped.clone())
        };
        let (Some(for_requester), Some(for_target)) = (wrapped_for(requester), wrapped_for(target))
        else {
            return respond(out, requester, Status::Error, text::KEY_WRAP_FAILED);
        };
        let user = &self.users[&requester];
        let (Some(own), Some(theirs)) = (&user.identity, &peer.identity) else {
            unreachable!("a registered identity is never removed");
        };
        let issued = SecureMessage::DmKeyIssued {
            target: peer.name.clone(),
            identity: theirs.block.clone(),
            key_id,
            wrapped: for_requester,
        };
        out.push(send(requester, issued.encode()));
        out.push(send(requester, OK_RESPONSE));
        let introduction = SecureMessage::PeerKey {
            name: user.name.clone(),
            renamed_from: Bytes::new(),
            identity: own.block.clone(),
        };
        out.push(send(target, introduction.encode()));
        let dm_key = SecureMessage::DmKey {
            peer: user.name.clone(),
            peer_fingerprint: own.fingerprint,
            key_id,
            wrapped: for_target,
        };
        out.push(send(target, dm_key.encode()));
    }

    /// The secure extension's share of [`Hub::check_invariants`].
    pub(super) fn check_secure_invariants(&self) -> Result<(), String> {
        let mut timed = 0;
        for (name, room) in self.directory.rooms() {
            let Some(keys) = room.keys() else {
                continue;
            };
            if keys.incarnation == 0 {
                return Err(format!("secure room {} has incarnation 0", Printable(name)));
            }
            if let Some(member) = room.members().iter().find(|m| !self.is_secure(**m)) {
                return Err(format!(
                    "legacy {member} in secure room {}",
                    Printable(name)
                ));
            }
            let wrapping = self.wraps.values().filter(|purpose| {
                matches!(purpose, WrapPurpose::Room { room: r, incarnation, .. }
                    if r == name && *incarnation == keys.incarnation)
            });
            let committing = self
                .commits
                .values()
                .filter(|key| key.room == name && key.incarnation == keys.incarnation);
            let count = wrapping.count() + committing.count();
            if count != usize::from(keys.rotating) {
                return Err(format!(
                    "room {} (rotating: {}) has {count} rotations in flight",
                    Printable(name),
                    keys.rotating
                ));
            }
            match (keys.rotating, keys.deadline) {
                (true, None) => {}
                // A room another node owns waits for nothing here.
                (false, None) if !keys.owned => {}
                (false, Some(at)) if keys.owned && self.room_timers.contains(at, name) => {
                    timed += 1
                }
                state => {
                    return Err(format!(
                    "room {} has (rotating, deadline) {state:?}, or a deadline not in the timers",
                    Printable(name)
                ))
                }
            }
        }
        if timed != self.room_timers.len() {
            return Err(format!(
                "{} room timers for {timed} rooms waiting on one",
                self.room_timers.len()
            ));
        }
        for (conn, user) in &self.users {
            let waiting = self.wraps.values().filter(
                |purpose| matches!(purpose, WrapPurpose::Dm { requester, .. } if requester == conn),
            );
            if waiting.count()
                != usize::from(matches!(user.pending.as_deref(), Some(Pending::DmKey)))
            {
                return Err(format!("{conn} does not match its DM key jobs"));
            }
        }
        Ok(())
    }
}
