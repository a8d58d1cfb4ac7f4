//! How a room is written in the rooms bucket, and the changes made to it.
//!
//! One key per room (`r.<name in hex>`), whose value is the whole room: its
//! password hash, kind and incarnation, and its members by node, each
//! node's list tagged with the run that wrote it. A secure room also keeps
//! its owner (the node that issues its keys), the newest epoch committed,
//! and each member's introduction. Every change is a compare-and-set on the
//! revision read, so a change made on another node meanwhile is never
//! overwritten: the writer reads again and redoes its change. The last
//! member to leave, on any node, deletes the key; an owner whose last
//! member leaves hands the room to the first node left in it.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;
use parlor_core::{NodeId, RoomRecord};
use serde::{Deserialize, Serialize};

use crate::keys::{from_hex, to_hex, Run};

/// A room as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredRoom {
    password: Option<String>,
    secure: bool,
    incarnation: u64,
    /// By node id.
    members: BTreeMap<String, NodeMembers>,
    /// A secure room's owner: the node id that issues its keys, always one
    /// with members in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
    /// A secure room's newest epoch committed by an owner.
    #[serde(default)]
    epoch: u32,
    /// Arrivals and departures so far (see `RoomRecord::changes`).
    #[serde(default)]
    changes: u64,
}

/// One node's members of a room.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct NodeMembers {
    /// The run of the node that they belong to; members of an earlier run
    /// are gone (and swept).
    run: u64,
    /// Their names, in hex, in order of joining.
    names: Vec<String>,
    /// In a secure room, each member's introduction (its `81`, in base64),
    /// by its name in hex. Base64, not hex: a record must fit one NATS
    /// message (1 MiB by default), and at 1,000 members with 4096-bit
    /// keys it is 1.00 MB in base64 (1.45 MB in hex).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    introductions: BTreeMap<String, String>,
}

impl StoredRoom {
    /// A new room whose one member is `member`, of `run`, introduced by
    /// `introduction` (kept for a secure room). A secure room is owned by
    /// its creator's node.
    pub(crate) fn new(
        password: Option<Arc<str>>,
        secure: bool,
        incarnation: u64,
        run: &Run,
        member: &[u8],
        introduction: Option<&[u8]>,
    ) -> StoredRoom {
        let mut room = StoredRoom {
            password: password.map(|phc| phc.to_string()),
            secure,
            incarnation,
            members: BTreeMap::new(),
            owner: secure.then(|| run.node.clone()),
            epoch: 0,
            changes: 0,
        };
        room.add(run, member, introduction);
        room
    }

    pub(crate) fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("plain fields serialize"))
    }

    pub(crate) fn decode(value: &[u8]) -> Option<StoredRoom> {
        serde_json::from_slice(value).ok()
    }

    pub(crate) fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// How many members it has, on every node.
    pub(crate) fn member_count(&self) -> usize {
        self.members.values().map(|node| node.names.len()).sum()
    }

    /// The runs that have members in it.
    pub(crate) fn runs(&self) -> impl Iterator<Item = Run> + '_ {
        self.members.iter().map(|(node, members)| Run {
            node: node.clone(),
            incarnation: members.run,
        })
    }

    /// Adds `member` of `run`, with its introduction in a secure room;
    /// members its node listed under an earlier run are dropped on the
    /// way.
    pub(crate) fn add(&mut self, run: &Run, member: &[u8], introduction: Option<&[u8]>) {
        let fresh = || NodeMembers {
            run: run.incarnation,
            names: Vec::new(),
            introductions: BTreeMap::new(),
        };
        let entry = self.members.entry(run.node.clone()).or_insert_with(fresh);
        if entry.run != run.incarnation {
            *entry = fresh();
        }
        let name = to_hex(member);
        if let (true, Some(introduction)) = (self.secure, introduction) {
            entry
                .introductions
                .insert(name.clone(), BASE64.encode(introduction));
        }
        entry.names.push(name);
        self.changes += 1;
    }

    /// Takes `member` of `run` out. Returns whether it was there.
    pub(crate) fn remove(&mut self, run: &Run, member: &[u8]) -> bool {
        let Some(entry) = self.members_of(run) else {
            return false;
        };
        let hex = to_hex(member);
        let Some(at) = entry.names.iter().position(|name| *name == hex) else {
            return false;
        };
        entry.names.remove(at);
        entry.introductions.remove(&hex);
        if entry.names.is_empty() {
            self.members.remove(&run.node);
        }
        self.changed();
        true
    }

    /// Renames a member of `run`, with its introduction under the new
    /// name. Returns whether it was there.
    pub(crate) fn rename(
        &mut self,
        run: &Run,
        old: &[u8],
        new: &[u8],
        introduction: Option<&[u8]>,
    ) -> bool {
        let secure = self.secure;
        let Some(entry) = self.members_of(run) else {
            return false;
        };
        let hex = to_hex(old);
        let Some(name) = entry.names.iter_mut().find(|name| **name == hex) else {
            return false;
        };
        *name = to_hex(new);
        entry.introductions.remove(&hex);
        if let (true, Some(introduction)) = (secure, introduction) {
            entry
                .introductions
                .insert(to_hex(new), BASE64.encode(introduction));
        }
        true
    }

    /// Takes out every member of `run`, whose run is over. Returns whether
    /// there were any.
    pub(crate) fn drop_run(&mut self, run: &Run) -> bool {
        if self.members_of(run).is_none() {
            return false;
        }
        self.members.remove(&run.node);
        self.changed();
        true
    }

    /// Counts a departure, and hands a secure room whose owner has no
    /// members left in it to the first node that has: that node keys it
    /// from the next epoch on.
    fn changed(&mut self) {
        self.changes += 1;
        let orphaned = self
            .owner
            .as_ref()
            .is_some_and(|owner| !self.members.contains_key(owner));
        if orphaned {
            self.owner = self.members.keys().next().cloned();
        }
    }

    /// Writes `epoch` as the room's newest if it is for this incarnation,
    /// `node` owns the room, and it is newer. Returns whether it did.
    pub(crate) fn commit(&mut self, node: &str, incarnation: u64, epoch: u32) -> bool {
        let fits = self.incarnation == incarnation
            && self.owner.as_deref() == Some(node)
            && epoch > self.epoch;
        if fits {
            self.epoch = epoch;
        }
        fits
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    fn members_of(&mut self, run: &Run) -> Option<&mut NodeMembers> {
        self.members
            .get_mut(&run.node)
            .filter(|entry| entry.run == run.incarnation)
    }

    /// The record a hub of node `me` is given: the members of the other
    /// nodes by node (with their introductions), and the count of all.
    pub(crate) fn to_record(&self, room: Bytes, revision: u64, me: &str) -> RoomRecord {
        let others = || self.members.iter().filter(|(node, _)| *node != me);
        let elsewhere = others()
            .map(|(node, members)| {
                let names = members.names.iter().filter_map(|hex| from_hex(hex));
                (NodeId::from(node.as_str()), names.collect())
            })
            .collect();
        let introductions = others()
            .flat_map(|(node, members)| {
                let node = NodeId::from(node.as_str());
                let of = |hex: &String| members.introductions.get(hex);
                let decoded = |text: &String| BASE64.decode(text).ok().map(Bytes::from);
                members
                    .names
                    .iter()
                    .filter_map(move |hex| Some((node.clone(), decoded(of(hex)?)?)))
            })
            .collect();
        RoomRecord {
            room,
            revision,
            password: self.password.as_deref().map(Arc::from),
            secure: self.secure,
            incarnation: self.incarnation,
            members: self.member_count(),
            elsewhere,
            owner: self.owner.as_deref().map(NodeId::from),
            epoch: self.epoch,
            changes: self.changes,
            introductions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(node: &str, incarnation: u64) -> Run {
        Run {
            node: node.into(),
            incarnation,
        }
    }

    #[test]
    fn a_room_reads_back_and_is_given_to_each_node_without_its_own_members() {
        let (a, b) = (run("a", 1), run("b", 2));
        let mut room = StoredRoom::new(Some("$argon2id$x".into()), false, 9, &a, b"alice", None);
        room.add(&b, b"bob", Some(b"ignored in a plaintext room"));
        room.add(&b, b"\xff x", None);
        let room = StoredRoom::decode(&room.encode()).unwrap();
        let record = room.to_record(Bytes::from_static(b"lobby"), 4, "a");
        assert_eq!(record.members, 3);
        assert_eq!(record.password.as_deref(), Some("$argon2id$x"));
        assert_eq!(
            record.elsewhere,
            [(
                NodeId::from("b"),
                vec![Bytes::from_static(b"bob"), Bytes::from_static(b"\xff x")]
            )]
        );
        assert_eq!((record.owner, record.changes), (None, 3));
        assert!(record.introductions.is_empty());
        assert_eq!(room.to_record(Bytes::new(), 4, "b").elsewhere.len(), 1);
        assert_eq!(StoredRoom::decode(b"{}"), None);
    }

    #[test]
    fn members_leave_and_are_renamed_only_as_the_run_that_added_them() {
        let (a, old_a) = (run("a", 2), run("a", 1));
        let mut room = StoredRoom::new(None, false, 9, &old_a, b"ghost", None);
        room.add(&a, b"alice", None);
        assert_eq!(room.member_count(), 1, "the earlier run's members go");
        assert!(!room.remove(&old_a, b"alice"));
        assert!(!room.rename(&a, b"nobody", b"x", None));
        assert!(room.rename(&a, b"alice", b"alicia", None));
        assert!(!room.remove(&a, b"alice"));
        assert!(room.remove(&a, b"alicia"));
        assert!(room.is_empty());
    }

    #[test]
    fn a_run_that_is_over_is_dropped_whole() {
        let (a, b) = (run("a", 1), run("b", 2));
        let mut room = StoredRoom::new(None, true, 9, &a, b"alice", None);
        room.add(&b, b"bob", None);
        assert!(!room.drop_run(&run("b", 3)));
        assert!(room.drop_run(&b));
        assert_eq!(room.runs().collect::<Vec<_>>(), [a]);
    }

    #[test]
    fn a_secure_room_keeps_introductions_and_an_owner_with_members() {
        let (a, b, c) = (run("a", 1), run("b", 2), run("c", 3));
        let mut room = StoredRoom::new(None, true, 9, &a, b"alice", Some(b"81 alice"));
        room.add(&b, b"bob", Some(b"81 bob"));
        room.add(&c, b"carol", Some(b"81 carol"));
        assert!(room.rename(&b, b"bob", b"robert", Some(b"81 robert")));
        let room = StoredRoom::decode(&room.encode()).unwrap();
        let record = room.to_record(Bytes::from_static(b"vault"), 5, "a");
        let introduction =
            |node: &str, text: &'static [u8]| (NodeId::from(node), Bytes::from(text));
        assert_eq!(
            record.introductions,
            [
                introduction("b", b"81 robert"),
                introduction("c", b"81 carol")
            ]
        );
        assert_eq!(
            (record.owner.as_deref(), record.epoch, record.changes),
            (Some("a"), 0, 3)
        );

        // Only the owner commits, only a newer epoch, only of this room.
        let mut room = room;
        assert!(!room.commit("b", 9, 1));
        assert!(!room.commit("a", 8, 1));
        assert!(room.commit("a", 9, 2));
        assert!(!room.commit("a", 9, 2), "never the same epoch twice");
        // The owner's last member leaves: the first node left owns it, at
        // the epoch reached.
        assert!(room.remove(&a, b"alice"));
        let record = room.to_record(Bytes::new(), 6, "c");
        assert_eq!((record.owner.as_deref(), record.epoch), (Some("b"), 2));
        assert!(room.drop_run(&b));
        let record = room.to_record(Bytes::new(), 7, "c");
        assert_eq!((record.owner.as_deref(), record.changes), (Some("c"), 5));
        assert!(
            record.introductions.is_empty(),
            "c's own are not given to c"
        );
    }

    /// The size of the record of a secure room as full as the default
    /// limit lets it be, with introductions the size of a 2048-bit key's
    /// (469 bytes) and of a 4096-bit key's (725): the record must fit one
    /// NATS message, 1 MiB unless the NATS server's `max_payload` is
    /// raised. (661 KB and 1.00 MB: README, "Cluster", says so.)
    #[test]
    fn a_full_secure_room_fits_one_nats_message() {
        let members = parlor_core::Limits::default().max_room_members;
        let size = |introduction_len: usize| {
            let runs = [run("node-a", 1), run("node-b", 2), run("node-c", 3)];
            let introduction = vec![0xa5; introduction_len];
            let mut room = StoredRoom::new(None, true, 9, &runs[0], b"u00000", Some(&introduction));
            for member in 1..members {
                let name = format!("u{member:05}");
                room.add(&runs[member % 3], name.as_bytes(), Some(&introduction));
            }
            room.encode().len()
        };
        let (rsa_2048, rsa_4096) = (size(469), size(725));
        println!(
            "a secure room of {members}: {rsa_2048} bytes (2048-bit keys), {rsa_4096} (4096-bit)"
        );
        assert!(
            rsa_2048.max(rsa_4096) < 1024 * 1024,
            "{rsa_2048}, {rsa_4096}"
        );
    }
}
