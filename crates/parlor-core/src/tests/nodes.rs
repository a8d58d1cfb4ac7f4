//! A clustered hub's rooms, room messages and DMs. The test plays the
//! driver: the cluster's store (entries and records) and the other nodes
//! (relays).

use super::claims::{clustered, clustered_as};
use super::secure::{rekeyings, room_keys};
use super::*;
use crate::{
    CommitOutcome, DirectOutcome, DmKeyAnswer, DmKeyRelay, EntryOutcome, EntryTerms, EpochCommit,
    MemberFrames, MemberRename, NodeId, RoomEntry, RoomRecord,
};
use parlor_proto::legacy::{encode_direct_message, encode_room_message};
use parlor_proto::secure::{dm_key_label, room_key_label, SecureMessage};

/// A record of `room` with no password whose members elsewhere are
/// `elsewhere`, and `here` more on this node.
fn record(room: &str, revision: u64, here: usize, elsewhere: &[(&str, &[&str])]) -> RoomRecord {
    let elsewhere: Vec<(NodeId, Vec<Bytes>)> = elsewhere
        .iter()
        .map(|(node, names)| {
            (
                NodeId::from(*node),
                names.iter().map(|name| bytes(name)).collect(),
            )
        })
        .collect();
    RoomRecord {
        room: bytes(room),
        revision,
        password: None,
        secure: false,
        incarnation: 77,
        members: here
            + elsewhere
                .iter()
                .map(|(_, names)| names.len())
                .sum::<usize>(),
        elsewhere,
        owner: None,
        epoch: 0,
        changes: 0,
        introductions: Vec::new(),
    }
}

/// The one room entry among `out`, with the reply waiting for it.
fn entry(out: &[Action]) -> RoomEntry {
    the_one(out, "entry", |action| match action {
        Action::EnterRoom(entry) => Some((**entry).clone()),
        _ => None,
    })
}

/// The cluster's work among `out` that owes no reply, in order, as text.
fn work(out: &[Action]) -> Vec<String> {
    let text = |b: &Bytes| String::from_utf8_lossy(b).into_owned();
    out.iter()
        .filter_map(|action| match action {
            Action::LeaveRoom { room, member } => {
                Some(format!("leave {} {}", text(room), text(member)))
            }
            Action::RenameMember(rename) => {
                let MemberRename { room, old, new, .. } = &**rename;
                Some(format!("rename {} {} {}", text(room), text(old), text(new)))
            }
            Action::ReleaseName(name) => Some(format!("release {}", text(name))),
            Action::Relay { to, .. } => Some(format!("relay {} to {:?}", text(&to.room), to.nodes)),
            _ => None,
        })
        .collect()
}

impl Harness {
    /// Reports the outcome of `entry`, as the driver does.
    fn entered(&mut self, entry: &RoomEntry, outcome: EntryOutcome) -> Vec<Action> {
        let mut out = Vec::new();
        self.hub
            .room_entered(entry.conn, entry.ticket, outcome, self.now, &mut out);
        self.settle(&mut out);
        self.hub.check_invariants().unwrap();
        out
    }

    /// Enters `conn` into `room` (no password) as the store would.
    fn in_room(&mut self, conn: ConnId, room: &str, stored: RoomRecord) {
        let asked = entry(&self.join(conn, room, ""));
        let member = asked.member.clone();
        let out = self.entered(
            &asked,
            EntryOutcome::Entered {
                record: stored,
                member,
            },
        );
        assert_eq!(sent(&out), [(conn, ok())]);
    }
}

#[test]
fn a_join_creates_the_room_in_the_store_and_is_answered_once_it_is_there() {
    let mut h = clustered();
    let alice = h.guest(1, "alice");
    let out = h.join(alice, "lobby", "");
    assert!(sent(&out).is_empty(), "the reply waits for the store");
    let asked = entry(&out);
    assert!(
        matches!(asked.terms, EntryTerms::Create { password: None, secure: false, incarnation } if incarnation != 0),
        "{asked:?}"
    );
    assert_eq!(
        (asked.member.clone(), asked.max_members),
        (bytes("alice"), 1_000)
    );
    let stored = record("lobby", 1, 1, &[]);
    let out = h.entered(
        &asked,
        EntryOutcome::Entered {
            record: stored,
            member: bytes("alice"),
        },
    );
    assert_eq!(sent(&out), [(alice, ok())]);
    assert_eq!(h.hub.room_of(alice), Some(&b"lobby"[..]));
}

#[test]
fn a_room_created_first_on_another_node_is_judged_again_with_its_password() {
    let mut h = clustered();
    let alice = h.guest(1, "alice");
    // Hashed for a new room...
    let asked = entry(&h.join(alice, "den", "mine"));
    assert!(matches!(
        asked.terms,
        EntryTerms::Create {
            password: Some(_),
            ..
        }
    ));
    // ...but another node created it first, with another password.
    let theirs = fake_password_check(PasswordTask::Hash {
        password: Zeroizing::new(b"theirs".to_vec()),
    });
    let PasswordOutcome::Hashed(phc) = theirs else {
        panic!("{theirs:?}")
    };
    let stored = RoomRecord {
        password: Some(phc),
        ..record("den", 3, 0, &[("b", &["bob"])])
    };
    let out = h.entered(&asked, EntryOutcome::Changed(Some(stored)));
    assert_eq!(sent(&out), [(alice, response(1, text::WRONG_PASSWORD))]);
    assert_eq!(h.hub.room_of(alice), None);
    // With the right one it joins that room, as judged.
    let asked = entry(&h.join(alice, "den", "theirs"));
    assert_eq!(asked.terms, EntryTerms::Join { incarnation: 77 });
}

#[test]
fn a_full_room_and_an_unavailable_store_are_answered_with_their_texts() {
    let mut h = clustered();
    let alice = h.guest(1, "alice");
    h.hub.remote_room(
        record("full", 1, 0, &[("b", &["bob"])]),
        h.now,
        &mut Vec::new(),
    );
    let asked = entry(&h.join(alice, "full", ""));
    let out = h.entered(&asked, EntryOutcome::Full);
    let full = response(2, "Room 'full' is full, try again later.");
    assert_eq!(sent(&out), [(alice, full)]);
    let asked = entry(&h.join(alice, "full", ""));
    let out = h.entered(&asked, EntryOutcome::Unavailable);
    assert_eq!(
        sent(&out),
        [(alice, response(2, text::CLUSTER_UNAVAILABLE))]
    );
}

#[test]
fn lists_cover_the_rooms_and_members_of_every_node() {
    let mut h = clustered();
    let alice = h.guest(1, "alice");
    h.hub.remote_room(
        record("zoo", 4, 0, &[("b", &["zed"])]),
        h.now,
        &mut Vec::new(),
    );
    h.in_room(
        alice,
        "lobby",
        record("lobby", 2, 1, &[("b", &["bob"]), ("c", &["carol"])]),
    );
    let rooms = [&[0, 0, 0, 11, 4, 0x17, 0x9a, 0][..], b"\x05lobby\x03zoo"].concat();
    assert_eq!(
        sent(&h.send(alice, ClientMessage::ListRooms)),
        [(alice, rooms)]
    );
    let members = [
        &[0, 0, 0, 17, 4, 0x17, 0x9a, 0][..],
        b"\x05alice\x03bob\x05carol",
    ]
    .concat();
    assert_eq!(
        sent(&h.send(alice, ClientMessage::ListUsers)),
        [(alice, members)]
    );
    // An older record than the one known changes nothing; a deletion does.
    h.hub
        .remote_room(record("lobby", 1, 1, &[]), h.now, &mut Vec::new());
    h.hub.remote_room_deleted(b"zoo", 5, h.now, &mut Vec::new());
    let rooms = [&[0, 0, 0, 7, 4, 0x17, 0x9a, 0][..], b"\x05lobby"].concat();
    assert_eq!(
        sent(&h.send(alice, ClientMessage::ListRooms)),
        [(alice, rooms)]
    );
    let members = h.send(alice, ClientMessage::ListUsers);
    assert_eq!(
        sent(&members)[0].1.len(),
        8 + 16,
        "bob and carol still listed"
    );
}

#[test]
fn a_room_message_is_relayed_once_per_other_node_and_relays_reach_members_here() {
    let mut h = clustered();
    let (alice, carol) = (h.guest(1, "alice"), h.guest(2, "carol"));
    let stored = record("lobby", 2, 1, &[("b", &["bob", "bea"]), ("c", &["cy"])]);
    h.in_room(alice, "lobby", stored.clone());
    let out = h.join(carol, "lobby", "");
    let asked = entry(&out);
    h.entered(
        &asked,
        EntryOutcome::Entered {
            record: RoomRecord {
                revision: 3,
                members: 5,
                ..stored
            },
            member: bytes("carol"),
        },
    );
    let out = h.say(alice, "lobby", "hi");
    assert_eq!(work(&out), [r#"relay lobby to ["b", "c"]"#]);
    let frame = encode_room_message(b"lobby", b"alice", b"hi");
    assert_eq!(sent(&out), [(alice, ok()), (carol, frame.to_vec())]);
    // From another node: every member here gets it, none is skipped.
    let relayed = encode_room_message(b"lobby", b"bob", b"yo");
    let mut out = Vec::new();
    h.hub
        .relayed_room_message(b"lobby", relayed.clone(), &mut out);
    assert_eq!(
        sent(&out),
        [(alice, relayed.to_vec()), (carol, relayed.to_vec())]
    );
    // A room with nobody elsewhere relays nothing.
    h.hub
        .remote_room(record("lobby", 9, 2, &[]), h.now, &mut Vec::new());
    assert!(work(&h.say(alice, "lobby", "alone")).is_empty());
}

#[test]
fn a_dm_for_a_user_of_another_node_is_answered_when_that_node_says() {
    let mut h = clustered();
    let alice = h.guest(1, "alice");
    h.hub.remote_name_held(bytes("bob"), "b".into());
    let out = h.send(
        alice,
        ClientMessage::DirectMessage {
            target: bytes("bob"),
            text: bytes("psst"),
        },
    );
    assert!(sent(&out).is_empty(), "the reply waits for bob's node");
    let [Action::RelayDirect(relay)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!((&*relay.node, &relay.target[..]), ("b", &b"bob"[..]));
    assert_eq!(relay.frame, encode_direct_message(b"alice", b"psst"));
    let mut out = Vec::new();
    h.hub.direct_relayed(
        alice,
        relay.ticket,
        b"bob",
        DirectOutcome::Delivered,
        &mut out,
    );
    assert_eq!(sent(&out), [(alice, ok())]);
    let [Action::RelayDirect(relay)] = &h.send(
        alice,
        ClientMessage::DirectMessage {
            target: bytes("bob"),
            text: bytes("again"),
        },
    )[..] else {
        panic!()
    };
    let mut out = Vec::new();
    h.hub
        .direct_relayed(alice, relay.ticket, b"bob", DirectOutcome::Absent, &mut out);
    assert_eq!(sent(&out), [(alice, response(1, text::NICK_NOT_PRESENT))]);
    // A DM from another node for a user here.
    let mut out = Vec::new();
    let dm = encode_direct_message(b"bob", b"back");
    assert!(h.hub.relayed_direct_message(b"alice", dm.clone(), &mut out));
    assert_eq!(sent(&out), [(alice, dm.to_vec())]);
    assert!(!h.hub.relayed_direct_message(b"nobody", dm, &mut out));
}

#[test]
fn leaving_moving_renaming_and_going_are_told_to_the_store_in_order() {
    let mut h = clustered();
    let alice = h.guest(1, "alice");
    h.in_room(alice, "one", record("one", 1, 1, &[]));
    let asked = entry(&h.join(alice, "two", ""));
    let out = h.entered(
        &asked,
        EntryOutcome::Entered {
            record: record("two", 2, 1, &[]),
            member: bytes("alice"),
        },
    );
    assert_eq!(
        work(&out),
        ["leave one alice"],
        "moving leaves the first room"
    );
    let out = h.nick(alice, "alicia");
    let [Action::ClaimName(claim)] = &out[..] else {
        panic!("{out:?}")
    };
    let mut out = Vec::new();
    h.hub.name_claimed(
        alice,
        claim.ticket,
        crate::ClaimOutcome::Claimed(bytes("alicia")),
        h.now,
        &mut out,
    );
    assert_eq!(work(&out), ["rename two alice alicia", "release alice"]);
    assert_eq!(
        work(&h.disconnect(alice)),
        ["leave two alicia", "release alicia"]
    );
}

#[test]
fn an_entry_nobody_waits_for_is_undone() {
    let mut h = clustered();
    let alice = h.guest(1, "alice");
    let asked = entry(&h.join(alice, "lobby", ""));
    assert_eq!(work(&h.disconnect(alice)), ["release alice"]);
    let out = h.entered(
        &asked,
        EntryOutcome::Entered {
            record: record("lobby", 1, 1, &[]),
            member: bytes("alice"),
        },
    );
    assert_eq!(work(&out), ["leave lobby alice"]);
}

#[test]
fn members_who_may_have_missed_a_relay_are_disconnected_and_no_one_else() {
    let mut h = clustered();
    let (alice, carol, dave) = (h.guest(1, "alice"), h.guest(2, "carol"), h.guest(3, "dave"));
    h.in_room(alice, "with-b", record("with-b", 1, 1, &[("b", &["bob"])]));
    h.in_room(carol, "with-c", record("with-c", 1, 1, &[("c", &["cy"])]));
    let mut out = Vec::new();
    h.hub.relay_lost("b", h.now, &mut out);
    assert_eq!(closed(&out), [(alice, CloseReason::SlowConsumer)]);
    assert!(h.hub.is_connected(carol) && h.hub.is_connected(dave));
    h.hub.check_invariants().unwrap();
}

/// A record of the secure room `vault`, incarnation `incarnation`, owned
/// by `owner` at `epoch` after `changes` arrivals and departures, with
/// `here` members on this node and `elsewhere` on others, as (node, name,
/// introduction).
fn secure_record(
    incarnation: u64,
    revision: u64,
    (owner, epoch, changes): (&str, u32, u64),
    here: usize,
    elsewhere: &[(&str, &str, &Bytes)],
) -> RoomRecord {
    let mut names: Vec<(NodeId, Vec<Bytes>)> = Vec::new();
    for (node, name, _) in elsewhere {
        match names.iter_mut().find(|(known, _)| &**known == *node) {
            Some((_, list)) => list.push(bytes(name)),
            None => names.push((NodeId::from(*node), vec![bytes(name)])),
        }
    }
    RoomRecord {
        secure: true,
        incarnation,
        owner: Some(NodeId::from(owner)),
        epoch,
        changes,
        introductions: elsewhere
            .iter()
            .map(|(node, _, introduction)| (NodeId::from(*node), (*introduction).clone()))
            .collect(),
        members: here + elsewhere.len(),
        elsewhere: names,
        ..record("vault", revision, 0, &[])
    }
}

/// The `81` that introduces the user of [`identity`]`(id)` as `name`.
fn introduction(id: u64, name: &str) -> Bytes {
    SecureMessage::PeerKey {
        name: bytes(name),
        renamed_from: Bytes::new(),
        identity: identity(id).block(name.as_bytes()),
    }
    .encode()
}

/// The messages sent among `out`, whoever they are for.
fn messages(out: &[Action]) -> Vec<ServerMessage> {
    decoded(out)
        .into_iter()
        .map(|(_, message)| message)
        .collect()
}

/// The one action among `out` that `pick` picks, what it picks of it.
fn the_one<T>(out: &[Action], what: &str, pick: impl Fn(&Action) -> Option<T>) -> T {
    let mut picked: Vec<T> = out.iter().filter_map(pick).collect();
    assert_eq!(picked.len(), 1, "one {what} in {out:?}");
    picked.remove(0)
}

/// The one epoch commit among `out`.
fn commit(out: &[Action]) -> EpochCommit {
    the_one(out, "commit", |action| match action {
        Action::CommitEpoch(commit) => Some((**commit).clone()),
        _ => None,
    })
}

/// The frames relayed for members of other nodes among `out`.
fn for_members(out: &[Action]) -> Vec<MemberFrames> {
    out.iter()
        .filter_map(|action| match action {
            Action::RelayToMembers(frames) => Some((**frames).clone()),
            _ => None,
        })
        .collect()
}

impl Harness {
    /// Finishes the rotation started, which must ask for its epoch to be
    /// committed, and reports `outcome` for it; returns the epoch and
    /// what the hub did then.
    fn rotate_and_commit(&mut self, outcome: CommitOutcome) -> (u32, Vec<Action>) {
        let out = self.finish_rotations();
        assert!(
            room_keys(&out).is_empty(),
            "no key before its epoch is committed"
        );
        let asked = commit(&out);
        let mut out = Vec::new();
        self.hub
            .epoch_committed(asked.ticket, outcome, self.now, &mut out);
        self.settle(&mut out);
        self.hub.check_invariants().unwrap();
        (asked.epoch, out)
    }
}

#[test]
fn a_secure_room_spans_nodes_and_its_owner_keys_every_member() {
    let (mut a, mut b) = (clustered_as("a"), clustered_as("b"));
    let alice = a.secure_guest(1, "alice");
    let bob = b.secure_guest(2, "bob");
    let alice_intro = a.hub.introduction(alice).unwrap();
    let bob_intro = b.hub.introduction(bob).unwrap();

    // Alice creates the room on a, which then owns it; her first key
    // waits for its epoch to be in the room's record.
    let asked = entry(&a.join(alice, "vault", ""));
    let EntryTerms::Create {
        secure: true,
        incarnation,
        ..
    } = asked.terms
    else {
        panic!("{asked:?}")
    };
    assert_eq!(asked.introduction.as_ref(), Some(&alice_intro));
    let created = secure_record(incarnation, 1, ("a", 0, 1), 1, &[]);
    a.entered(
        &asked,
        EntryOutcome::Entered {
            record: created,
            member: bytes("alice"),
        },
    );
    let (epoch, out) = a.rotate_and_commit(CommitOutcome::Committed);
    assert_eq!(epoch, 1);
    assert_eq!(room_keys(&out), [(alice, "vault".to_owned(), 1)]);

    // Bob joins from b: his node introduces alice to him from the record
    // and relays his introduction to a, but makes him no key.
    let elsewhere_for_b = [("a", "alice", &alice_intro)];
    let seen = secure_record(incarnation, 2, ("a", 1, 1), 0, &elsewhere_for_b);
    b.hub.remote_room(seen, b.now, &mut Vec::new());
    let asked = entry(&b.join(bob, "vault", ""));
    assert_eq!(asked.terms, EntryTerms::Join { incarnation });
    let at_b = secure_record(incarnation, 3, ("a", 1, 2), 1, &elsewhere_for_b);
    let out = b.entered(
        &asked,
        EntryOutcome::Entered {
            record: at_b,
            member: bytes("bob"),
        },
    );
    let to_bob = messages(&out);
    assert!(matches!(
        &to_bob[..],
        [
            ServerMessage::Secure(SecureMessage::RoomJoined { secure: true, .. }),
            ServerMessage::Secure(SecureMessage::PeerKey { name, .. }),
            ServerMessage::Response { status: 0, .. },
        ] if &name[..] == b"alice"
    ));
    let relayed: Vec<_> = out
        .iter()
        .filter_map(|action| match action {
            Action::Relay { to, frame } => Some((to.nodes.clone(), frame.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(relayed, [(vec![NodeId::from("a")], bob_intro.clone())]);
    assert!(b.rotations.is_empty(), "only the owner makes keys");

    // Node a sees bob in the record: a key for both, bob's wrapped under
    // his own label, and his sent to his node.
    let mut out = Vec::new();
    let at_a = secure_record(incarnation, 3, ("a", 1, 2), 1, &[("b", "bob", &bob_intro)]);
    a.hub.remote_room(at_a, a.now, &mut out);
    a.settle(&mut out);
    assert!(sent(&out).is_empty(), "{out:?}");
    let labels: Vec<_> = a.rotations[0]
        .recipients
        .iter()
        .map(|recipient| recipient.label.clone())
        .collect();
    let label = |id: u64| room_key_label(b"vault", incarnation, 2, &identity(id).fingerprint());
    assert_eq!(labels, [label(1), label(2)]);
    let (_, out) = a.rotate_and_commit(CommitOutcome::Committed);
    assert_eq!(room_keys(&out), [(alice, "vault".to_owned(), 2)]);
    let [frames] = &for_members(&out)[..] else {
        panic!("one relay of keys in {out:?}")
    };
    assert_eq!((&*frames.node, &frames.room[..]), ("b", &b"vault"[..]));
    let mut out = Vec::new();
    b.hub
        .relayed_to_members(b"vault", frames.frames.clone(), &mut out);
    assert_eq!(room_keys(&out), [(bob, "vault".to_owned(), 2)]);

    // Bob leaves: his node only changes the record, and a, seeing him
    // gone, tells alice to hold, then makes a key for her alone.
    let out = b.send(bob, ClientMessage::Leave);
    assert!(rekeyings(&out).is_empty());
    assert_eq!(work(&out), ["leave vault bob"]);
    let mut out = Vec::new();
    let left = secure_record(incarnation, 5, ("a", 2, 3), 1, &[]);
    a.hub.remote_room(left, a.now, &mut out);
    assert_eq!(rekeyings(&out), [(alice, "vault".to_owned(), 3)]);
    a.settle(&mut out);
    assert_eq!(a.rotations[0].recipients.len(), 1);
    // A commit the store refuses delivers nothing, and is tried again.
    let (_, out) = a.rotate_and_commit(CommitOutcome::Superseded);
    assert!(room_keys(&out).is_empty() && for_members(&out).is_empty());
    a.now += a.hub.limits.rotation_retry;
    let mut out = Vec::new();
    a.hub.handle_timeout(a.now, &mut out);
    a.settle(&mut out);
    let (epoch, out) = a.rotate_and_commit(CommitOutcome::Committed);
    assert_eq!(room_keys(&out), [(alice, "vault".to_owned(), epoch)]);
    assert_eq!(epoch, 3);
    b.hub.check_invariants().unwrap();
}

#[test]
fn a_node_that_becomes_a_rooms_owner_warns_its_members_then_keys_past_every_committed_epoch() {
    let mut b = clustered_as("b");
    let (bob, carol) = (b.secure_guest(2, "bob"), b.secure_guest(3, "carol"));
    let alice_intro = introduction(1, "alice");
    let alice_only = secure_record(9, 1, ("a", 4, 1), 0, &[("a", "alice", &alice_intro)]);
    b.hub.remote_room(alice_only, b.now, &mut Vec::new());
    for (conn, name, revision) in [(bob, "bob", 2), (carol, "carol", 3)] {
        let asked = entry(&b.join(conn, "vault", ""));
        let here = revision as usize - 1;
        let record = secure_record(
            9,
            revision,
            ("a", 4, revision),
            here,
            &[("a", "alice", &alice_intro)],
        );
        let member = bytes(name);
        b.entered(&asked, EntryOutcome::Entered { record, member });
    }
    assert!(b.rotations.is_empty());

    // Node a dies. The sweep takes its members out and hands the room to
    // b, whose copy of the record shows epoch 6: a committed it, and may
    // never have delivered it.
    let mut out = Vec::new();
    let swept = secure_record(9, 7, ("b", 6, 4), 2, &[]);
    b.hub.remote_room(swept, b.now, &mut out);
    let holding = |epoch| {
        [
            (bob, "vault".to_owned(), epoch),
            (carol, "vault".to_owned(), epoch),
        ]
    };
    assert_eq!(rekeyings(&out), holding(7));
    b.settle(&mut out);
    let (epoch, out) = b.rotate_and_commit(CommitOutcome::Committed);
    assert_eq!(epoch, 7);
    assert_eq!(room_keys(&out), holding(7));
    assert!(for_members(&out).is_empty());

    // The room is b's to key from now on, its key's end of life included;
    // and b gives it up when the record names another owner.
    b.now += b.hub.limits.room_key_lifetime;
    let mut out = Vec::new();
    b.hub.handle_timeout(b.now, &mut out);
    b.settle(&mut out);
    assert_eq!(b.rotations.len(), 1);
    let mut out = Vec::new();
    b.hub
        .remote_room(secure_record(9, 8, ("c", 7, 5), 2, &[]), b.now, &mut out);
    // The key wrapped meanwhile is not committed, nor delivered.
    let out = b.finish_rotations();
    assert!(out.is_empty(), "{out:?}");
    b.hub.check_invariants().unwrap();
    b.now += b.hub.limits.room_key_lifetime * 2;
    let mut out = Vec::new();
    b.hub.handle_timeout(b.now, &mut out);
    b.settle(&mut out);
    assert!(b.rotations.is_empty(), "another node keys it now");
}

impl Harness {
    /// A guest named `name` by the cluster, over "TLS", registered by
    /// [`identity`]`(id)`.
    fn secure_guest(&mut self, id: u64, name: &str) -> ConnId {
        let conn = self.guest(id, name);
        self.hub.channel_bound(conn, binding(id));
        let register = identity(id).register(name.as_bytes(), &binding(id));
        assert_eq!(sent(&self.send(conn, register)), [(conn, ok())]);
        conn
    }
}

/// The one DM key request for another node among `out`.
fn dm_key_relay(out: &[Action]) -> DmKeyRelay {
    let [Action::RelayDmKey(relay)] = out else {
        panic!("one DM key relay in {out:?}")
    };
    (**relay).clone()
}

/// The answers to other nodes' DM key requests among `out`.
fn dm_key_answers(out: &[Action]) -> Vec<(u64, DmKeyAnswer)> {
    out.iter()
        .filter_map(|action| match action {
            Action::AnswerDmKey { ask, answer } => Some((*ask, answer.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_dm_key_for_a_user_of_another_node_is_issued_by_that_node() {
    let (mut a, mut b) = (clustered(), clustered());
    let alice = a.secure_guest(1, "alice");
    let bob = b.secure_guest(2, "bob");
    a.hub.remote_name_held(bytes("bob"), "b".into());
    let request = ClientMessage::DmKeyRequest {
        target: bytes("bob"),
    };
    let out = a.send(alice, request.clone());
    assert!(sent(&out).is_empty(), "the reply waits for bob's node");
    let relay = dm_key_relay(&out);
    assert_eq!((&*relay.node, &relay.target[..]), ("b", &b"bob"[..]));

    // Bob's node checks bob and makes the key: a wrap for each end, each
    // under a label naming both, the recipient first.
    let mut out = Vec::new();
    b.hub
        .relayed_dm_key_request(7, b"bob", relay.introduction.clone(), b.now, &mut out);
    b.settle(&mut out);
    assert!(out.is_empty(), "{out:?}");
    let job = &b.rotations[0];
    let (fa, fb) = (identity(1).fingerprint(), identity(2).fingerprint());
    let key_id = match &job.recipients[..] {
        [to_bob, to_alice] => {
            assert_eq!(to_bob.conn, bob);
            let key_id = u32::from_be_bytes(to_bob.label[16..20].try_into().unwrap());
            assert_eq!(to_bob.label, dm_key_label(key_id, &fb, &fa));
            assert_eq!(to_alice.label, dm_key_label(key_id, &fa, &fb));
            key_id
        }
        other => panic!("{other:?}"),
    };
    let out = b.finish_rotations();
    let to_bob = decoded(&out);
    assert_eq!(to_bob.len(), 2, "{to_bob:?}");
    assert_eq!(to_bob[0].0, bob);
    assert!(matches!(
        &to_bob[0].1,
        ServerMessage::Secure(SecureMessage::PeerKey { name, identity: block, .. })
            if &name[..] == b"alice" && *block == identity(1).block(b"alice")
    ));
    assert!(matches!(
        &to_bob[1].1,
        ServerMessage::Secure(SecureMessage::DmKey { peer, peer_fingerprint, key_id: id, .. })
            if &peer[..] == b"alice" && *peer_fingerprint == fa && *id == key_id
    ));
    let [(7, DmKeyAnswer::Issued(issued))] = &dm_key_answers(&out)[..] else {
        panic!("{out:?}")
    };

    // Alice's node passes the issued key on, and only then answers her.
    let mut out = Vec::new();
    a.hub.dm_key_relayed(
        alice,
        relay.ticket,
        b"bob",
        DmKeyAnswer::Issued(issued.clone()),
        &mut out,
    );
    assert_eq!(sent(&out), [(alice, issued.to_vec()), (alice, ok())]);
    let to_alice = decoded(&out);
    assert!(matches!(
        &to_alice[0].1,
        ServerMessage::Secure(SecureMessage::DmKeyIssued { target, identity: block, key_id: id, .. })
            if &target[..] == b"bob" && *block == identity(2).block(b"bob") && *id == key_id
    ));
    // An answer nobody waits for any more is dropped.
    let mut out = Vec::new();
    a.hub
        .dm_key_relayed(alice, relay.ticket, b"bob", DmKeyAnswer::Absent, &mut out);
    assert!(out.is_empty());
    a.hub.check_invariants().unwrap();
    b.hub.check_invariants().unwrap();
}

/// A `9a` whose text names something, as its parts.
fn naming(status: u8, parts: [&[u8]; 3]) -> Vec<u8> {
    parlor_proto::legacy::encode_response(status, parts.into_iter()).to_vec()
}

#[test]
fn a_dm_key_for_another_node_is_refused_with_the_texts_of_one_node() {
    let (mut a, mut b) = (clustered(), clustered());
    let alice = a.secure_guest(1, "alice");
    b.guest(2, "lee");
    a.hub.remote_name_held(bytes("lee"), "b".into());
    a.hub.remote_name_held(bytes("gone"), "b".into());
    let ask = |a: &mut Harness, target: &str| {
        // Past the message rate limit, which DM key requests count against.
        a.advance(Duration::from_secs(2));
        dm_key_relay(&a.send(
            alice,
            ClientMessage::DmKeyRequest {
                target: bytes(target),
            },
        ))
    };
    // Bob's node's side: a legacy target, an absent one, an unreadable
    // request.
    let relay = ask(&mut a, "lee");
    let mut out = Vec::new();
    b.hub
        .relayed_dm_key_request(1, b"lee", relay.introduction.clone(), b.now, &mut out);
    b.hub
        .relayed_dm_key_request(2, b"gone", relay.introduction.clone(), b.now, &mut out);
    b.hub
        .relayed_dm_key_request(3, b"lee", Bytes::from_static(b"junk"), b.now, &mut out);
    assert_eq!(
        dm_key_answers(&out),
        [
            (1, DmKeyAnswer::HasNoKey),
            (2, DmKeyAnswer::Absent),
            (3, DmKeyAnswer::Failed)
        ]
    );
    // Alice's node's side: each answer is the reply a request on one node
    // would have had.
    let cases = [
        (
            DmKeyAnswer::HasNoKey,
            vec![naming(1, text::has_no_key(b"lee"))],
        ),
        (
            DmKeyAnswer::TooMany,
            vec![naming(2, text::dm_keys_for_target(b"lee"))],
        ),
        (DmKeyAnswer::Busy, vec![response(2, text::KEYS_BUSY)]),
        (
            DmKeyAnswer::Failed,
            vec![response(1, text::KEY_WRAP_FAILED)],
        ),
        (
            DmKeyAnswer::Unavailable,
            vec![response(2, text::CLUSTER_UNAVAILABLE)],
        ),
        (
            DmKeyAnswer::Absent,
            vec![
                SecureMessage::NoSuchUser { name: bytes("lee") }
                    .encode()
                    .to_vec(),
                response(1, text::NICK_NOT_PRESENT),
            ],
        ),
    ];
    for (index, (answer, replies)) in cases.into_iter().enumerate() {
        let relay = if index == 0 {
            relay.clone()
        } else {
            ask(&mut a, "lee")
        };
        let mut out = Vec::new();
        a.hub
            .dm_key_relayed(alice, relay.ticket, b"lee", answer.clone(), &mut out);
        let expected: Vec<_> = replies.into_iter().map(|reply| (alice, reply)).collect();
        assert_eq!(sent(&out), expected, "{answer:?}");
        a.hub.check_invariants().unwrap();
    }
}

#[test]
fn dm_keys_for_another_node_are_bounded_per_target_there() {
    let (mut a, mut b) = (clustered(), clustered());
    let alice = a.secure_guest(1, "alice");
    b.secure_guest(2, "bob");
    a.hub.remote_name_held(bytes("bob"), "b".into());
    let relay = dm_key_relay(&a.send(
        alice,
        ClientMessage::DmKeyRequest {
            target: bytes("bob"),
        },
    ));
    let mut out = Vec::new();
    let bound = Limits::default().dm_keys_per_target.limit as u64;
    for ask in 0..=bound {
        b.hub
            .relayed_dm_key_request(ask, b"bob", relay.introduction.clone(), b.now, &mut out);
    }
    b.settle(&mut out);
    assert_eq!(
        b.rotations.len() as u64,
        bound,
        "one wrap per key within the bound"
    );
    assert_eq!(dm_key_answers(&out), [(bound, DmKeyAnswer::TooMany)]);
}

#[test]
fn keys_relayed_for_members_find_them_by_their_key_even_renamed_meanwhile() {
    let mut b = clustered_as("b");
    let bob = b.secure_guest(2, "bob");
    let alice_intro = introduction(1, "alice");
    let before = secure_record(9, 1, ("a", 3, 1), 0, &[("a", "alice", &alice_intro)]);
    b.hub.remote_room(before, b.now, &mut Vec::new());
    let asked = entry(&b.join(bob, "vault", ""));
    let record = secure_record(9, 2, ("a", 3, 2), 1, &[("a", "alice", &alice_intro)]);
    let member = bytes("bob");
    b.entered(&asked, EntryOutcome::Entered { record, member });
    // Bob becomes robert while a wraps his key under the name it knew.
    let out = b.send(bob, identity(2).signed_nick(b"robert"));
    let claim = out.iter().find_map(|action| match action {
        Action::ClaimName(claim) => Some(claim.clone()),
        _ => None,
    });
    let claim = claim.expect("the new name is claimed");
    let mut out = Vec::new();
    let won = crate::ClaimOutcome::Claimed(bytes("robert"));
    b.hub.name_claimed(bob, claim.ticket, won, b.now, &mut out);
    assert_eq!(b.hub.name_of(bob), Some(&b"robert"[..]));
    let key = |epoch| {
        SecureMessage::RoomKey {
            room: bytes("vault"),
            incarnation: 9,
            epoch,
            wrapped: Bytes::from_static(b"wrapped"),
        }
        .encode()
    };
    let frames = vec![
        (identity(2).fingerprint(), key(4)),
        (identity(7).fingerprint(), key(4)),
    ];
    let mut out = Vec::new();
    b.hub.relayed_to_members(b"vault", frames, &mut out);
    assert_eq!(room_keys(&out), [(bob, "vault".to_owned(), 4)]);
    b.hub.check_invariants().unwrap();
}

#[test]
fn a_node_restarted_with_its_id_takes_its_room_back_with_a_warning() {
    // The room's record names this node, whose last run reached epoch 5
    // with members elsewhere: the new run's first member is let in, then
    // everyone hears a key is coming, and gets epoch 6.
    let mut a = clustered_as("a");
    let alice = a.secure_guest(1, "alice");
    let bob_intro = introduction(2, "bob");
    let elsewhere = [("b", "bob", &bob_intro)];
    a.hub.remote_room(
        secure_record(9, 4, ("a", 5, 3), 0, &elsewhere),
        a.now,
        &mut Vec::new(),
    );
    let asked = entry(&a.join(alice, "vault", ""));
    let record = secure_record(9, 5, ("a", 5, 4), 1, &elsewhere);
    let member = bytes("alice");
    let out = a.entered(&asked, EntryOutcome::Entered { record, member });
    assert_eq!(rekeyings(&out), [(alice, "vault".to_owned(), 6)]);
    let (epoch, out) = a.rotate_and_commit(CommitOutcome::Committed);
    assert_eq!(epoch, 6);
    assert_eq!(room_keys(&out), [(alice, "vault".to_owned(), 6)]);
    assert_eq!(for_members(&out).len(), 1, "bob's key goes to his node");
}

#[test]
fn while_the_records_are_read_again_the_copy_still_relays_then_drops_what_is_gone() {
    let mut h = clustered();
    let alice = h.guest(1, "alice");
    h.in_room(alice, "lobby", record("lobby", 2, 1, &[("b", &["bob"])]));
    h.hub.remote_room(
        record("zoo", 3, 0, &[("c", &["zed"])]),
        h.now,
        &mut Vec::new(),
    );
    h.hub.remote_rooms_resyncing();
    // A message said meanwhile still reaches bob's node.
    let out = h.say(alice, "lobby", "still there?");
    assert_eq!(work(&out), ["relay lobby to [\"b\"]"]);
    // The store gives lobby again, as it was; zoo was deleted meanwhile.
    h.hub.remote_room(
        record("lobby", 2, 1, &[("b", &["bob"])]),
        h.now,
        &mut Vec::new(),
    );
    h.hub.remote_rooms_resynced();
    let out = h.send(alice, ClientMessage::ListRooms);
    let rooms = parlor_proto::legacy::encode_name_list([&b"lobby"[..]].into_iter());
    assert_eq!(sent(&out), [(alice, rooms.to_vec())]);
    let out = h.say(alice, "lobby", "and now?");
    assert_eq!(work(&out), ["relay lobby to [\"b\"]"]);
}

/// The frames relayed to users of other nodes among `out`, as (node, name,
/// decoded frame).
fn to_users(out: &[Action]) -> Vec<(String, String, ServerMessage)> {
    out.iter()
        .filter_map(|action| match action {
            Action::RelayToUser(relay) => {
                let frame = Frame::new(
                    relay.frame[HEADER_LEN - 1],
                    relay.frame[HEADER_LEN..].to_vec(),
                );
                let message = ServerMessage::parse(&frame).unwrap();
                let name = String::from_utf8(relay.name.to_vec()).unwrap();
                Some((relay.node.to_string(), name, message))
            }
            _ => None,
        })
        .collect()
}

/// The one file request relayed to another node among `out`.
fn file_relay(out: &[Action]) -> crate::FileRelay {
    the_one(out, "file request relayed", |action| match action {
        Action::RelayFileRequest(relay) => Some((**relay).clone()),
        _ => None,
    })
}

#[test]
fn a_file_runs_on_its_senders_node_for_recipients_of_another() {
    use parlor_proto::transfer::{FileNotice, FileRequest};
    let (mut a, mut b) = (clustered_as("a"), clustered_as("b"));
    let alice = a.secure_guest(1, "alice");
    let bob = b.secure_guest(2, "bob");
    let (alice_intro, bob_intro) = (introduction(1, "alice"), introduction(2, "bob"));
    // Alice made vault on a; bob joined it on b.
    let asked = entry(&a.join(alice, "vault", ""));
    let EntryTerms::Create { incarnation, .. } = asked.terms else {
        panic!("{asked:?}")
    };
    let created = secure_record(incarnation, 1, ("a", 0, 1), 1, &[]);
    let member = bytes("alice");
    a.entered(
        &asked,
        EntryOutcome::Entered {
            record: created,
            member,
        },
    );
    a.rotate_and_commit(CommitOutcome::Committed);
    let with_bob = secure_record(incarnation, 3, ("a", 1, 2), 1, &[("b", "bob", &bob_intro)]);
    let mut out = Vec::new();
    a.hub.remote_room(with_bob, a.now, &mut out);
    a.settle(&mut out);
    a.rotate_and_commit(CommitOutcome::Committed);
    let with_alice = secure_record(
        incarnation,
        3,
        ("a", 1, 2),
        1,
        &[("a", "alice", &alice_intro)],
    );
    b.hub
        .remote_room(with_alice.clone(), b.now, &mut Vec::new());
    let asked = entry(&b.join(bob, "vault", ""));
    let member = bytes("bob");
    b.entered(
        &asked,
        EntryOutcome::Entered {
            record: with_alice,
            member,
        },
    );

    // Alice offers a file to the room: bob's offer goes to his node.
    let offer = super::files::offer_of("", 150);
    let out = a.send(alice, ClientMessage::File(offer));
    let [(node, name, ServerMessage::File(FileNotice::Offered { id, .. }))] = &to_users(&out)[..]
    else {
        panic!("one offer for bob's node in {out:?}")
    };
    let id = *id;
    assert_eq!((node.as_str(), name.as_str()), ("b", "bob"));
    let Some(Action::RelayToUser(offered)) =
        out.iter().find(|a| matches!(a, Action::RelayToUser(_)))
    else {
        unreachable!()
    };

    // Bob's node hands it to him, and sends his acceptance to a, where
    // the transfer answers it; the answer comes back to bob.
    let mut out = Vec::new();
    let from_a = NodeId::from("a");
    assert_eq!(offered.fingerprint, identity(2).fingerprint());
    // Whoever holds the name by then gets it only with that key.
    let stranger = identity(9).fingerprint();
    b.hub
        .relayed_to_user(&from_a, b"bob", &stranger, offered.frame.clone(), &mut out);
    assert!(out.is_empty(), "{out:?}");
    b.hub.relayed_to_user(
        &from_a,
        b"bob",
        &offered.fingerprint,
        offered.frame.clone(),
        &mut out,
    );
    assert!(matches!(
        &decoded(&out)[..],
        [(to, ServerMessage::File(FileNotice::Offered { .. }))] if *to == bob
    ));
    let accept = FileRequest::Decision { id, accept: true };
    let out = b.send(bob, ClientMessage::File(accept));
    assert!(sent(&out).is_empty(), "the reply waits for a: {out:?}");
    let relay = file_relay(&out);
    assert_eq!((&*relay.node, relay.ticket.is_some()), ("a", true));
    let mut out = Vec::new();
    let from_b = NodeId::from("b");
    a.hub.relayed_file_request(
        Some(7),
        &from_b,
        b"bob",
        relay.frame.clone(),
        a.now,
        &mut out,
    );
    let answer = out.iter().find_map(|action| match action {
        Action::AnswerFileRequest { ask: 7, frames } => Some(frames.clone()),
        _ => None,
    });
    let answer = answer.expect("the answer for bob");
    assert!(decoded(&out).iter().any(|(to, message)| *to == alice
        && matches!(message, ServerMessage::File(FileNotice::Start { .. }))));
    let mut out = Vec::new();
    b.hub
        .file_request_relayed(bob, relay.ticket.unwrap(), Some(answer), &mut out);
    let to_bob = messages(&out);
    assert!(matches!(
        &to_bob[..],
        [
            ServerMessage::File(FileNotice::Accepted { .. }),
            ServerMessage::Response { status: 0, .. }
        ]
    ));

    // A chunk goes to bob's node; his acknowledgement comes back unanswered
    // and moves alice's window.
    let chunk = FileRequest::Chunk {
        id,
        index: 0,
        data: Bytes::from(vec![7; 100]),
    };
    let out = a.send(alice, ClientMessage::File(chunk));
    assert!(matches!(
        &to_users(&out)[..],
        [(_, name, ServerMessage::File(FileNotice::Chunk { index: 0, .. }))] if name == "bob"
    ));
    let out = b.send(bob, ClientMessage::File(FileRequest::Ack { id, index: 0 }));
    let relay = file_relay(&out);
    assert_eq!(relay.ticket, None);
    let mut out = Vec::new();
    a.hub
        .relayed_file_request(None, &from_b, b"bob", relay.frame, a.now, &mut out);
    assert!(decoded(&out).iter().any(|(to, message)| *to == alice
        && matches!(
            message,
            ServerMessage::File(FileNotice::Window { acked: 1, .. })
        )));

    // Bob leaves the room on b: a sees him gone from the record, and the
    // transfer, whose one recipient he was, ends for alice.
    let mut out = Vec::new();
    let without_bob = secure_record(incarnation, 9, ("a", 2, 3), 1, &[]);
    a.hub.remote_room(without_bob, a.now, &mut out);
    assert!(decoded(&out).iter().any(|(to, message)| *to == alice
        && matches!(message, ServerMessage::File(FileNotice::Ended { .. }))));
    a.hub.check_invariants().unwrap();
    b.hub.check_invariants().unwrap();

    // A file for one user of another node: that node is asked whose key
    // the user holds, and the offer is made (or refused) only then.
    a.hub.remote_name_held(bytes("zed"), "c".into());
    let to_zed = || super::files::offer_of("zed", 0);
    let ask_for = |out: &[Action]| match out {
        [Action::AskFileTarget(ask)] => (**ask).clone(),
        other => panic!("one question for zed's node in {other:?}"),
    };
    let ask = ask_for(&a.send(alice, ClientMessage::File(to_zed())));
    assert_eq!((&*ask.node, &ask.target[..]), ("c", &b"zed"[..]));
    let mut out = Vec::new();
    let no_key = crate::FileTarget::NoKey;
    a.hub
        .file_target_answered(alice, ask.ticket, no_key, a.now, &mut out);
    let refusal = naming(1, text::cannot_receive_files(b"zed"));
    assert_eq!(sent(&out), [(alice, refusal)]);
    let ask = ask_for(&a.send(alice, ClientMessage::File(to_zed())));
    let mut out = Vec::new();
    let zeds_key = crate::FileTarget::Key(identity(5).fingerprint());
    a.hub
        .file_target_answered(alice, ask.ticket, zeds_key, a.now, &mut out);
    assert!(matches!(
        &decoded(&out)[..],
        [
            (_, ServerMessage::File(FileNotice::Pending { .. })),
            (_, ServerMessage::Response { status: 0, .. })
        ]
    ));
    assert!(matches!(
        &to_users(&out)[..],
        [(node, name, ServerMessage::File(FileNotice::Offered { .. }))] if node == "c" && name == "zed"
    ));
    // Zed's node answers as one server would.
    let bobs_key = crate::FileTarget::Key(identity(2).fingerprint());
    assert_eq!(b.hub.relayed_file_target(b"bob"), bobs_key);
    let nobody = b.hub.relayed_file_target(b"nobody");
    assert_eq!(nobody, crate::FileTarget::Absent);
}
