//! How a room is written in the rooms bucket, and the changes made to it.
//!
//! One key per room (`r.<name in hex>`), whose value is the whole room: its
//! password hash, kind and incarnation, and its members by node, each
//! node's list tagged with the run that wrote it. Every change is a
//! compare-and-set on the revision read, so a change made on another node
//! meanwhile is never overwritten: the writer reads again and redoes its
//! change. The last member to leave, on any node, deletes the key.

use std::collections::BTreeMap;
use std::sync::Arc;

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
}

/// One node's members of a room.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct NodeMembers {
    /// The run of the node that they belong to; members of an earlier run
    /// are gone (and swept).
    run: u64,
    /// Their names, in hex, in order of joining.
    names: Vec<String>,
}

impl StoredRoom {
    /// A new room whose one member is `member`, of `run`.
    pub(crate) fn new(
        password: Option<Arc<str>>,
        secure: bool,
        incarnation: u64,
        run: &Run,
        member: &[u8],
    ) -> StoredRoom {
        let mut room = StoredRoom {
            password: password.map(|phc| phc.to_string()),
            secure,
            incarnation,
            members: BTreeMap::new(),
        };
        room.add(run, member);
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

    pub(crate) fn is_secure(&self) -> bool {
        self.secure
    }

    /// How many members it has, on every node.
    pub(crate) fn member_count(&self) -> usize {
        self.members.values().map(|node| node.names.len()).sum()
    }

    /// Whether a node other than `node` has members in it.
    pub(crate) fn has_members_besides(&self, node: &str) -> bool {
        self.members.keys().any(|other| other != node)
    }

    /// The runs that have members in it.
    pub(crate) fn runs(&self) -> impl Iterator<Item = Run> + '_ {
        self.members.iter().map(|(node, members)| Run {
            node: node.clone(),
            incarnation: members.run,
        })
    }

    /// Adds `member` of `run`; members its node listed under an earlier
    /// run are dropped on the way.
    pub(crate) fn add(&mut self, run: &Run, member: &[u8]) {
        let entry = self
            .members
            .entry(run.node.clone())
            .or_insert_with(|| NodeMembers {
                run: run.incarnation,
                names: Vec::new(),
            });
        if entry.run != run.incarnation {
            *entry = NodeMembers {
                run: run.incarnation,
                names: Vec::new(),
            };
        }
        entry.names.push(to_hex(member));
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
        if entry.names.is_empty() {
            self.members.remove(&run.node);
        }
        true
    }

    /// Renames a member of `run`. Returns whether it was there.
    pub(crate) fn rename(&mut self, run: &Run, old: &[u8], new: &[u8]) -> bool {
        let Some(entry) = self.members_of(run) else {
            return false;
        };
        let hex = to_hex(old);
        let Some(name) = entry.names.iter_mut().find(|name| **name == hex) else {
            return false;
        };
        *name = to_hex(new);
        true
    }

    /// Takes out every member of `run`, whose run is over. Returns whether
    /// there were any.
    pub(crate) fn drop_run(&mut self, run: &Run) -> bool {
        if self.members_of(run).is_none() {
            return false;
        }
        self.members.remove(&run.node);
        true
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
    /// nodes by node, and the count of all.
    pub(crate) fn to_record(&self, room: Bytes, revision: u64, me: &str) -> RoomRecord {
        let elsewhere = self
            .members
            .iter()
            .filter(|(node, _)| *node != me)
            .map(|(node, members)| {
                let names = members.names.iter().filter_map(|hex| from_hex(hex));
                (NodeId::from(node.as_str()), names.collect())
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
        let mut room = StoredRoom::new(Some("$argon2id$x".into()), false, 9, &a, b"alice");
        room.add(&b, b"bob");
        room.add(&b, b"\xff x");
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
        assert_eq!(room.to_record(Bytes::new(), 4, "b").elsewhere.len(), 1);
        assert_eq!(StoredRoom::decode(b"{}"), None);
    }

    #[test]
    fn members_leave_and_are_renamed_only_as_the_run_that_added_them() {
        let (a, old_a) = (run("a", 2), run("a", 1));
        let mut room = StoredRoom::new(None, false, 9, &old_a, b"ghost");
        room.add(&a, b"alice");
        assert_eq!(room.member_count(), 1, "the earlier run's members go");
        assert!(!room.remove(&old_a, b"alice"));
        assert!(!room.rename(&a, b"nobody", b"x"));
        assert!(room.rename(&a, b"alice", b"alicia"));
        assert!(!room.remove(&a, b"alice"));
        assert!(room.remove(&a, b"alicia"));
        assert!(room.is_empty());
    }

    #[test]
    fn a_run_that_is_over_is_dropped_whole() {
        let (a, b) = (run("a", 1), run("b", 2));
        let mut room = StoredRoom::new(None, true, 9, &a, b"alice");
        room.add(&b, b"bob");
        assert!(room.has_members_besides("a"));
        assert!(!room.drop_run(&run("b", 3)));
        assert!(room.drop_run(&b));
        assert!(!room.has_members_besides("a"));
        assert_eq!(room.runs().collect::<Vec<_>>(), [a]);
    }
}
