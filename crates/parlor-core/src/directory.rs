//! Who is called what, and who is in which room.
//!
//! Every name and every room the hub knows goes through [`Directory`], and
//! nothing else in the hub keeps a copy of that state. A hub on its own
//! knows everything here; a clustered hub also keeps its copy of what the
//! other nodes hold (their names, and every room's record), which the
//! driver feeds it from the cluster's store (`nodes.rs`).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::secure::{RemotePeer, RoomKeyState};
use super::{ConnId, NodeId, RelayTarget, RoomRecord};

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
    /// Cluster mode: names held by users of other nodes, with the node
    /// serving each, as the driver's copy of the cluster's store last said.
    remote_names: HashMap<Bytes, NodeId>,
    /// Cluster mode: every room of the cluster, this node's included, as
    /// its record in the store last said.
    records: HashMap<Bytes, SharedRoom>,
    /// Cluster mode: the driver is reading the records again; those it
    /// has not given again by the time it has caught up are gone.
    resyncing: bool,
}

/// A room's record in the cluster's store, and where its messages are
/// relayed.
#[derive(Debug)]
pub(crate) struct SharedRoom {
    pub(crate) record: RoomRecord,
    /// Made once per record, so a relay shares it instead of copying.
    pub(crate) relay: Arc<RelayTarget>,
    /// Given (again) since the driver began reading the records anew.
    current: bool,
    /// A secure room's members elsewhere, their introductions read once:
    /// an RSA key takes 10–20 µs to parse, and a record changes at every
    /// join.
    pub(crate) peers: Vec<RemotePeer>,
}

/// What a JOIN is judged against: the room's password, kind and size,
/// wherever the room is kept.
#[derive(Debug)]
pub(crate) struct RoomTerms {
    pub(crate) password: Option<Arc<str>>,
    pub(crate) secure: bool,
    /// Changes when the room is deleted and created again, so a password
    /// checked against one room is not taken for the next.
    pub(crate) version: u64,
    pub(crate) members: usize,
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
        self.names.keys().chain(self.remote_names.keys())
    }

    pub(crate) fn add_remote_name(&mut self, name: Bytes, node: NodeId) {
        self.remote_names.insert(name, node);
    }

    /// The node serving the user of another node called `name`.
    pub(crate) fn remote_node_of(&self, name: &[u8]) -> Option<&NodeId> {
        self.remote_names.get(name)
    }

    pub(crate) fn remove_remote_name(&mut self, name: &[u8]) {
        self.remote_names.remove(name);
    }

    pub(crate) fn clear_remote_names(&mut self) {
        self.remote_names.clear();
    }

    /// Takes in a room's record, unless the copy has it or a later one.
    /// Returns whether it took it.
    pub(crate) fn record_room(&mut self, record: RoomRecord) -> bool {
        if let Some(known) = self.records.get_mut(&record.room) {
            if known.record.revision >= record.revision {
                known.current = true;
                return false;
            }
        }
        let known = self.records.get(&record.room);
        // By node and introduction: a room of 1,000 would otherwise compare
        // a million introductions at every join.
        let known_peers: HashMap<(&NodeId, &Bytes), &RemotePeer> = known
            .into_iter()
            .flat_map(|known| &known.peers)
            .map(|peer| ((&peer.node, &peer.introduction), peer))
            .collect();
        let peers = record
            .introductions
            .iter()
            .filter_map(
                |(node, introduction)| match known_peers.get(&(node, introduction)) {
                    Some(again) => Some((*again).clone()),
                    None => RemotePeer::read(node, introduction),
                },
            )
            .collect();
        let relay = Arc::new(RelayTarget {
            room: record.room.clone(),
            nodes: record
                .elsewhere
                .iter()
                .map(|(node, _)| node.clone())
                .collect(),
        });
        let shared = SharedRoom {
            record,
            relay,
            peers,
            current: true,
        };
        self.records.insert(shared.record.room.clone(), shared);
        true
    }

    /// The room's record was deleted at `revision`.
    pub(crate) fn forget_record(&mut self, room: &[u8], revision: u64) {
        if self
            .records
            .get(room)
            .is_some_and(|known| known.record.revision < revision)
        {
            self.records.remove(room);
        }
    }

    /// The driver lost track of the store and is reading every record
    /// again. The copy is kept meanwhile: until the records come again, a
    /// room message is relayed, and a key made, for the members the copy
    /// knew, rather than for nobody elsewhere.
    pub(crate) fn resync_records(&mut self) {
        self.resyncing = true;
        for shared in self.records.values_mut() {
            shared.current = false;
        }
    }

    /// The driver has caught up with the store: a record it did not give
    /// again since [`Directory::resync_records`] was deleted meanwhile.
    pub(crate) fn records_resynced(&mut self) {
        if std::mem::take(&mut self.resyncing) {
            self.records.retain(|_, shared| shared.current);
        }
    }

    pub(crate) fn record(&self, room: &[u8]) -> Option<&SharedRoom> {
        self.records.get(room)
    }

    pub(crate) fn records(&self) -> impl Iterator<Item = &SharedRoom> + '_ {
        self.records.values()
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
