//! The hub's part of the secure extension (PROTOCOL.md §12): registered
//! keys, room key rotation and DM key requests.
//!
//! The hub never sees a symmetric key. It only decides *who* gets a fresh
//! key, and asks its driver to run a [`KeyWrapJob`] off the event loop, where
//! the key is generated, wrapped for each recipient and zeroized. The answer
//! comes back through [`Hub::keys_wrapped`], and only then are the wrapped
//! keys sent, to the recipients that are still entitled to them.
//!
//! Rotations are coalesced: a room has at most one rotation in flight, and a
//! membership change meanwhile only marks the room stale, so a burst of joins
//! to a big room costs two rotations, not one per join.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;
use tracing::{error, info};

use super::{respond, respond_naming, send, Action, ConnId, Hub, Pending, Room};
use parlor_proto::legacy::OK_RESPONSE;
use parlor_proto::printable::Printable;
use parlor_proto::secure::{DM_KEY_OAEP_LABEL, KEY_BITS, ROOM_KEY_OAEP_LABEL};
use parlor_proto::text;
use parlor_proto::{SecureMessage, Status};

/// A connection's registered RSA public key.
///
/// Parsed once, at registration: parsing costs 10–20 µs and a wrap 60–150
/// µs, so parsing again for every wrap would add a sixth to each rotation.
/// The DER is kept exactly as its owner sent it, because that is what its
/// peers receive in PEER_KEY.
#[derive(Clone)]
pub(crate) struct RegisteredKey {
    der: Bytes,
    public: Arc<rsa::PublicKey>,
}

impl RegisteredKey {
    /// Parses a DER SubjectPublicKeyInfo; `None` unless it holds an RSA key
    /// whose modulus has [`KEY_BITS`] bits.
    pub(crate) fn parse(der: &[u8]) -> Option<RegisteredKey> {
        let public = rsa::PublicKey::from_public_key_der(der).ok()?;
        KEY_BITS
            .contains(&(public.n().bit_width() as usize))
            .then(|| RegisteredKey {
                der: Bytes::copy_from_slice(der),
                public: Arc::new(public),
            })
    }

    /// The key exactly as its owner registered it.
    pub(crate) fn der(&self) -> Bytes {
        self.der.clone()
    }

    pub(crate) fn bits(&self) -> u32 {
        self.public.n().bit_width()
    }
}

impl fmt::Debug for RegisteredKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RegisteredKey({} bits)", self.bits())
    }
}

/// What a key is for. Each use has its own OAEP label, so a wrapped room
/// key can never be passed off as a DM key or the other way round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyUse {
    /// A room key, for every member of a secure room.
    Room,
    /// A DM key, for two users.
    Dm,
}

impl KeyUse {
    /// The OAEP label wraps of this use are made and opened with.
    pub fn oaep_label(self) -> &'static [u8] {
        match self {
            KeyUse::Room => ROOM_KEY_OAEP_LABEL,
            KeyUse::Dm => DM_KEY_OAEP_LABEL,
        }
    }
}

/// One recipient of a wrapped key.
#[derive(Clone)]
pub struct KeyRecipient {
    /// The recipient's connection.
    pub conn: ConnId,
    /// Its registered key, parsed once at registration.
    pub key: Arc<rsa::PublicKey>,
}

impl KeyRecipient {
    fn of(conn: ConnId, key: &RegisteredKey) -> KeyRecipient {
        KeyRecipient {
            conn,
            key: Arc::clone(&key.public),
        }
    }
}

impl fmt::Debug for KeyRecipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} bits)", self.conn, self.key.n().bit_width())
    }
}

/// A fresh 32-byte key to generate, wrap for every recipient with
/// RSA-OAEP-SHA256 and forget, off the event loop. The driver reports the
/// result with [`Hub::keys_wrapped`].
#[derive(Debug)]
pub struct KeyWrapJob {
    /// Echoed back in [`Hub::keys_wrapped`], which looks the job up by it.
    pub ticket: u64,
    /// A room key or a DM key.
    pub key_use: KeyUse,
    /// Who gets the key, each wrapped with its own public key.
    pub recipients: Vec<KeyRecipient>,
    /// The connection whose reply is owed until the job is done (a
    /// DM_KEY_REQUEST): the driver reads no further requests from it
    /// meanwhile. `None` for a room key rotation, which nobody waits for.
    pub requester: Option<ConnId>,
}

/// The result of a [`KeyWrapJob`].
#[derive(Debug)]
pub enum KeyWrapOutcome {
    /// The key wrapped for each recipient. A recipient whose wrap failed
    /// (which the worker logs) is missing.
    Wrapped(Vec<(ConnId, Bytes)>),
    /// The queue was full. Only DM key requests are ever refused: a room
    /// has at most one rotation in flight, so rotations are bounded by the
    /// number of rooms and always queued.
    Busy,
    /// The workers are gone (a bug); logged by the driver.
    Failed,
}

/// The key state of a secure room.
#[derive(Debug, Default)]
pub(crate) struct RoomKeyState {
    /// The epoch of the newest key made for the room; 0 before the first.
    epoch: u32,
    /// A rotation is in flight.
    rotating: bool,
    /// The membership changed while the rotation was in flight: another
    /// rotation follows it.
    stale: bool,
}

/// What an in-flight [`KeyWrapJob`] is for; looked up by its ticket.
#[derive(Debug)]
pub(super) enum WrapPurpose {
    Room {
        room: Bytes,
        generation: u64,
        epoch: u32,
    },
    Dm {
        requester: ConnId,
        target: ConnId,
        target_name: Bytes,
        key_id: u32,
    },
}

impl Hub {
    /// REGISTER_KEY: makes the connection secure, once.
    pub(super) fn register_key(&mut self, conn: ConnId, der: &[u8], out: &mut Vec<Action>) {
        let user = self.users.get_mut(&conn).expect("caller checked");
        if user.key.is_some() {
            return respond(out, conn, Status::Error, text::KEY_ALREADY_REGISTERED);
        }
        let Some(key) = RegisteredKey::parse(der) else {
            return respond(out, conn, Status::Error, text::BAD_PUBLIC_KEY);
        };
        info!(peer = %user.peer, nick = %Printable(&user.name), bits = key.bits(), "key registered");
        user.key = Some(Box::new(key));
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
    /// `9a 00`: the confirmation, then the key of every other member if the
    /// room is secure. Nothing for a legacy joiner.
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
        let (room, secure) = (room.clone(), entry.is_secure());
        let confirmation = if created {
            SecureMessage::RoomCreated { room, secure }
        } else {
            SecureMessage::RoomJoined { room, secure }
        };
        confirmation.encode_into(dst);
        if !secure {
            return;
        }
        for member in entry.members().iter().filter(|member| **member != conn) {
            let user = &self.users[member];
            if let Some(key) = &user.key {
                let notice = SecureMessage::PeerKey {
                    name: user.name.clone(),
                    key: key.der.clone(),
                };
                notice.encode_into(dst);
            }
        }
    }

    /// Sends the user's key, under its current name, to every other member
    /// of its room if that room is secure: after a join and after a rename.
    pub(super) fn announce_key(&self, conn: ConnId, out: &mut Vec<Action>) {
        let user = &self.users[&conn];
        let (Some(key), Some(room)) = (&user.key, &user.room) else {
            return;
        };
        let Some(entry) = self.directory.room(room).filter(|room| room.is_secure()) else {
            return;
        };
        let notice = SecureMessage::PeerKey {
            name: user.name.clone(),
            key: key.der.clone(),
        }
        .encode();
        out.push(Action::Broadcast {
            to: entry.members_now(),
            except: conn,
            frame: notice,
        });
    }

    /// The membership of `room` changed: rotate its key, or, if a rotation
    /// is already in flight, make sure another one follows it. Nothing for a
    /// plaintext room or one that was deleted with its last member.
    pub(super) fn membership_changed(&mut self, room: &Bytes, out: &mut Vec<Action>) {
        let Some(keys) = self.directory.room_mut(room).and_then(Room::keys_mut) else {
            return;
        };
        if keys.rotating {
            keys.stale = true;
        } else {
            self.rotate(room, out);
        }
    }

    /// Starts a rotation: the next epoch, for the members of this moment.
    fn rotate(&mut self, room: &Bytes, out: &mut Vec<Action>) {
        let entry = self.directory.room_mut(room).expect("caller checked");
        let generation = entry.generation();
        let recipients: Vec<KeyRecipient> = entry
            .members()
            .iter()
            .filter_map(|member| {
                let key = self.users.get(member)?.key.as_ref()?;
                Some(KeyRecipient::of(*member, key))
            })
            .collect();
        let keys = entry.keys_mut().expect("caller checked");
        // 2^32 rotations of one room would take decades of constant churn;
        // saturating keeps "never goes back" even then.
        keys.epoch = keys.epoch.saturating_add(1);
        keys.rotating = true;
        keys.stale = false;
        let epoch = keys.epoch;
        let ticket = self.new_ticket();
        let purpose = WrapPurpose::Room {
            room: room.clone(),
            generation,
            epoch,
        };
        self.wraps.insert(ticket, purpose);
        out.push(Action::WrapKeys(KeyWrapJob {
            ticket,
            key_use: KeyUse::Room,
            recipients,
            requester: None,
        }));
    }

    /// DM_KEY_REQUEST: checks both ends, then has a DM key made for them.
    pub(super) fn dm_key_request(
        &mut self,
        conn: ConnId,
        target: &[u8],
        now: std::time::Instant,
        out: &mut Vec<Action>,
    ) {
        if !self.admit_message(conn, now, out) {
            return;
        }
        let Some(own_key) = &self.users[&conn].key else {
            return respond(out, conn, Status::Error, text::REGISTER_KEY_FIRST);
        };
        let Some(peer) = self.directory.find_user(target) else {
            return self.no_such_user(conn, target, out);
        };
        if peer == conn {
            return respond(out, conn, Status::Error, text::DM_KEY_WITH_YOURSELF);
        }
        let Some(peer_key) = &self.users[&peer].key else {
            return respond_naming(out, conn, Status::Error, text::has_no_key(target));
        };
        let recipients = vec![
            KeyRecipient::of(conn, own_key),
            KeyRecipient::of(peer, peer_key),
        ];
        // Key ids count up from 1 and are never 0.
        self.last_key_id = self.last_key_id.checked_add(1).unwrap_or(1);
        let ticket = self.new_ticket();
        let purpose = WrapPurpose::Dm {
            requester: conn,
            target: peer,
            target_name: Bytes::copy_from_slice(target),
            key_id: self.last_key_id,
        };
        self.wraps.insert(ticket, purpose);
        self.users.get_mut(&conn).expect("caller checked").pending = Some(Box::new(Pending::DmKey));
        out.push(Action::WrapKeys(KeyWrapJob {
            ticket,
            key_use: KeyUse::Dm,
            recipients,
            requester: Some(conn),
        }));
    }

    /// A [`KeyWrapJob`] finished. An answer for an unknown ticket, or for
    /// a room or requester that is gone, is dropped.
    pub fn keys_wrapped(&mut self, ticket: u64, outcome: KeyWrapOutcome, out: &mut Vec<Action>) {
        match self.wraps.remove(&ticket) {
            None => {}
            Some(WrapPurpose::Room {
                room,
                generation,
                epoch,
            }) => self.room_key_wrapped(room, generation, epoch, outcome, out),
            Some(WrapPurpose::Dm {
                requester,
                target,
                target_name,
                key_id,
            }) => self.dm_key_wrapped(requester, target, &target_name, key_id, outcome, out),
        }
    }

    /// Hands a rotation's keys to the recipients that are still members, and
    /// starts the next rotation if the membership changed meanwhile.
    fn room_key_wrapped(
        &mut self,
        room: Bytes,
        generation: u64,
        epoch: u32,
        outcome: KeyWrapOutcome,
        out: &mut Vec<Action>,
    ) {
        // A room deleted (and perhaps recreated) meanwhile has nobody, or
        // other people, to give this key to.
        let Some(entry) = self
            .directory
            .room_mut(&room)
            .filter(|entry| entry.generation() == generation)
        else {
            return;
        };
        let members: HashSet<ConnId> = entry.members().iter().copied().collect();
        let keys = entry.keys_mut().expect("a secure room stays secure");
        keys.rotating = false;
        let again = std::mem::take(&mut keys.stale);
        match outcome {
            KeyWrapOutcome::Wrapped(wrapped) => {
                out.extend(
                    wrapped
                        .into_iter()
                        .filter(|(conn, _)| members.contains(conn))
                        .map(|(conn, wrapped)| {
                            let message = SecureMessage::RoomKey {
                                room: room.clone(),
                                epoch,
                                wrapped,
                            };
                            send(conn, message.encode())
                        }),
                );
            }
            KeyWrapOutcome::Busy | KeyWrapOutcome::Failed => {
                error!(room = %Printable(&room), epoch, "room key rotation failed; the room keeps its previous key until its membership changes");
            }
        }
        if again {
            self.rotate(&room, out);
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
        let (Some(own_key), Some(peer_key)) = (&user.key, &peer.key) else {
            unreachable!("a registered key is never removed");
        };
        let issued = SecureMessage::DmKeyIssued {
            target: peer.name.clone(),
            key: peer_key.der.clone(),
            key_id,
            wrapped: for_requester,
        };
        out.push(send(requester, issued.encode()));
        out.push(send(requester, OK_RESPONSE));
        let introduction = SecureMessage::PeerKey {
            name: user.name.clone(),
            key: own_key.der.clone(),
        };
        out.push(send(target, introduction.encode()));
        let dm_key = SecureMessage::DmKey {
            peer: user.name.clone(),
            key_id,
            wrapped: for_target,
        };
        out.push(send(target, dm_key.encode()));
    }

    /// The secure extension's share of [`Hub::check_invariants`].
    pub(super) fn check_secure_invariants(&self) -> Result<(), String> {
        for (name, room) in self.directory.rooms() {
            let Some(keys) = room.keys() else {
                continue;
            };
            if let Some(member) = room.members().iter().find(|m| !self.is_secure(**m)) {
                return Err(format!(
                    "legacy {member} in secure room {}",
                    Printable(name)
                ));
            }
            let in_flight = self.wraps.values().filter(|purpose| {
                matches!(purpose, WrapPurpose::Room { room: r, generation, .. }
                    if r == name && *generation == room.generation())
            });
            let count = in_flight.count();
            if count != usize::from(keys.rotating) {
                return Err(format!(
                    "room {} (rotating: {}) has {count} rotations in flight",
                    Printable(name),
                    keys.rotating
                ));
            }
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
