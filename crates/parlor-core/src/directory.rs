//! Who is called what, and who is in which room.
//!
//! This is the seam for running parlor on more than one machine: every name
//! claim and every room fan-out goes through [`Directory`], and nothing else
//! in the hub keeps a copy of that state. A cluster mode would replace this
//! struct with one that also claims names and publishes room messages through
//! a message bus (NATS or Redis), leaving the rest of the hub unchanged.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;

use super::secure::RoomKeyState;
use super::ConnId;

/// A chat room: its members, in order of joining, its password, and for a
/// secure room the state of its key.
#[derive(Debug)]
pub(crate) struct Room {
    members: Arc<Vec<ConnId>>,
    /// The argon2id PHC string of the room's password; `None` for a room
    /// created with an empty password.
    password: Option<Arc<str>>,
    /// Distinguishes this room from an earlier room of the same name, so a
    /// password check that finishes after the room was deleted and
    /// recreated is not applied to the new one.
    generation: u64,
    /// `Some` for a secure room (created by a secure connection), `None` for
    /// a plaintext one. The kind never changes while the room exists.
    keys: Option<RoomKeyState>,
}

impl Room {
    pub(crate) fn members(&self) -> &[ConnId] {
        &self.members
    }

    /// The member list as it is now, shared: a room message's recipients.
    pub(crate) fn members_now(&self) -> Arc<Vec<ConnId>> {
        Arc::clone(&self.members)
    }

    pub(crate) fn password_hash(&self) -> Option<&Arc<str>> {
        self.password.as_ref()
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    pub(crate) fn is_secure(&self) -> bool {
        self.keys.is_some()
    }

    pub(crate) fn keys(&self) -> Option<&RoomKeyState> {
        self.keys.as_ref()
    }

    pub(crate) fn keys_mut(&mut self) -> Option<&mut RoomKeyState> {
        self.keys.as_mut()
    }

    /// What is left of a deleted room that matters: its key state.
    pub(crate) fn into_keys(self) -> Option<RoomKeyState> {
        self.keys
    }
}

#[derive(Debug, Default)]
pub(crate) struct Directory {
    names: HashMap<Bytes, ConnId>,
    rooms: HashMap<Bytes, Room>,
    next_generation: u64,
    /// Cluster mode: names held by users of other nodes, as the driver's
    /// copy of the cluster's store last said.
    remote_names: HashSet<Bytes>,
}

impl Directory {
    /// Gives `name` to `conn` unless somebody else holds it. Returns whether
    /// `conn` now holds it.
    pub(crate) fn claim_name(&mut self, name: &Bytes, conn: ConnId) -> bool {
        *self.names.entry(name.clone()).or_insert(conn) == conn
    }

    pub(crate) fn release_name(&mut self, name: &[u8]) {
        self.names.remove(name);
    }

    pub(crate) fn find_user(&self, name: &[u8]) -> Option<ConnId> {
        self.names.get(name).copied()
    }

    pub(crate) fn user_names(&self) -> impl Iterator<Item = (&Bytes, ConnId)> + '_ {
        self.names.iter().map(|(name, conn)| (name, *conn))
    }

    /// Every name held on every node: this node's and the remote ones. A
    /// name can show up in both for a moment (the copy of the store lags),
    /// so a caller that lists them removes duplicates.
    pub(crate) fn all_names(&self) -> impl Iterator<Item = &Bytes> + '_ {
        self.names.keys().chain(&self.remote_names)
    }

    pub(crate) fn add_remote_name(&mut self, name: Bytes) {
        self.remote_names.insert(name);
    }

    pub(crate) fn remove_remote_name(&mut self, name: &[u8]) {
        self.remote_names.remove(name);
    }

    pub(crate) fn clear_remote_names(&mut self) {
        self.remote_names.clear();
    }

    pub(crate) fn room(&self, name: &[u8]) -> Option<&Room> {
        self.rooms.get(name)
    }

    pub(crate) fn room_mut(&mut self, name: &[u8]) -> Option<&mut Room> {
        self.rooms.get_mut(name)
    }

    pub(crate) fn room_names(&self) -> impl Iterator<Item = &Bytes> + '_ {
        self.rooms.keys()
    }

    pub(crate) fn rooms(&self) -> impl Iterator<Item = (&Bytes, &Room)> + '_ {
        self.rooms.iter()
    }

    pub(crate) fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Creates an empty room, secure when it has `keys`; the caller adds
    /// its creator right away.
    pub(crate) fn create_room(
        &mut self,
        name: Bytes,
        password: Option<Arc<str>>,
        keys: Option<RoomKeyState>,
    ) {
        self.next_generation += 1;
        let room = Room {
            members: Arc::default(),
            password,
            generation: self.next_generation,
            keys,
        };
        self.rooms.insert(name, room);
    }

    pub(crate) fn add_member(&mut self, room: &[u8], conn: ConnId) {
        if let Some(room) = self.rooms.get_mut(room) {
            Arc::make_mut(&mut room.members).push(conn);
        }
    }

    /// Takes `conn` out of `room`, deleting the room when it empties.
    /// Returns the room if it was deleted.
    pub(crate) fn remove_member(&mut self, room: &[u8], conn: ConnId) -> Option<Room> {
        let entry = self.rooms.get_mut(room)?;
        Arc::make_mut(&mut entry.members).retain(|member| *member != conn);
        if entry.members.is_empty() {
            return self.rooms.remove(room);
        }
        None
    }
}
