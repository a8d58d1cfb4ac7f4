//! The secure extension in the hub, on the fake clock: keys, confirmations,
//! rotations and DM keys. Key wraps are faked (see `fake_wrap`); real RSA
//! wraps are tested in `keywrap.rs` and over TCP in `tests/secure_server.rs`.

use super::*;
use parlor_proto::SecureMessage;

/// The 2048-bit key of the connection with id `id`.
fn key(id: u64) -> Bytes {
    public_key_der(2048, id as u8)
}

impl Harness {
    fn register(&mut self, conn: ConnId, key: Bytes) -> Vec<Action> {
        self.send(conn, ClientMessage::RegisterKey { key })
    }

    /// A connection that registered [`key`]`(id)` and is called `name`.
    fn secure(&mut self, id: u64, name: &str) -> ConnId {
        let conn = self.connected(id);
        assert_eq!(sent(&self.register(conn, key(id))), [(conn, ok())]);
        self.nick(conn, name);
        conn
    }

    fn dm_key(&mut self, conn: ConnId, target: &str) -> Vec<Action> {
        self.send(
            conn,
            ClientMessage::DmKeyRequest {
                target: bytes(target),
            },
        )
    }

    /// Feeds a message without running the job its reply waits for.
    fn start(&mut self, conn: ConnId, message: ClientMessage) -> Vec<Action> {
        let mut out = Vec::new();
        self.hub.handle(conn, message, self.now, &mut out);
        out
    }

    /// The members of the rotation in flight for `room`, if any.
    fn rotating_for(&self, room: &str) -> Option<Vec<ConnId>> {
        self.rotations.iter().find_map(|job| {
            let purpose = self.hub.wraps.get(&job.ticket)?;
            matches!(purpose, WrapPurpose::Room { room: r, .. } if r == room.as_bytes())
                .then(|| job.recipients.iter().map(|r| r.conn).collect())
        })
    }
}

/// The ROOM_KEY frames sent, as (recipient, room, epoch).
fn room_keys(actions: &[Action]) -> Vec<(ConnId, String, u32)> {
    decoded(actions)
        .into_iter()
        .filter_map(|(to, message)| match message {
            ServerMessage::Secure(SecureMessage::RoomKey { room, epoch, .. }) => {
                Some((to, String::from_utf8(room.to_vec()).unwrap(), epoch))
            }
            _ => None,
        })
        .collect()
}

fn reply(status: u8, text: &str) -> ServerMessage {
    ServerMessage::Response {
        status,
        data: bytes(text),
    }
}

fn done() -> ServerMessage {
    reply(0, "")
}

fn notice(message: SecureMessage) -> ServerMessage {
    ServerMessage::Secure(message)
}

fn nick_set(name: &str) -> ServerMessage {
    notice(SecureMessage::NickSet { name: bytes(name) })
}

fn peer_key(name: &str, id: u64) -> ServerMessage {
    notice(SecureMessage::PeerKey {
        name: bytes(name),
        key: key(id),
    })
}

fn joined(room: &str, secure: bool) -> ServerMessage {
    notice(SecureMessage::RoomJoined {
        room: bytes(room),
        secure,
    })
}

fn created(room: &str, secure: bool) -> ServerMessage {
    notice(SecureMessage::RoomCreated {
        room: bytes(room),
        secure,
    })
}

fn no_such_user(name: &str) -> ServerMessage {
    notice(SecureMessage::NoSuchUser { name: bytes(name) })
}

#[test]
fn a_key_is_registered_once_and_must_be_rsa_of_2048_to_4096_bits() {
    let mut h = Harness::with_defaults();
    let a = h.connected(1);
    let p256 = [
        &[
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01,
        ][..],
        &[
            0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00, 0x04,
        ],
        &[7; 64],
    ]
    .concat();
    let refused = [
        public_key_der(1024, 1),
        public_key_der(2047, 1),
        public_key_der(4097, 1),
        public_key_der(8192, 1),
        [&key(1)[..], b"\x00"].concat().into(),
        p256.into(),
        bytes("not a key"),
        Bytes::new(),
    ];
    for der in refused {
        assert_eq!(
            sent(&h.register(a, der)),
            [(a, response(1, text::BAD_PUBLIC_KEY))]
        );
    }
    assert_eq!(
        decoded(&h.nick(a, "alice")),
        [(a, done())],
        "still legacy: no 90"
    );
    assert_eq!(sent(&h.register(a, public_key_der(4096, 1))), [(a, ok())]);
    assert_eq!(
        decoded(&h.nick(a, "alice")),
        [(a, nick_set("alice")), (a, done())]
    );
    assert_eq!(
        sent(&h.register(a, key(1))),
        [(a, response(1, text::KEY_ALREADY_REGISTERED))]
    );
    let b = h.connected(2);
    assert_eq!(sent(&h.register(b, public_key_der(2048, 2))), [(b, ok())]);
}

#[test]
fn confirmations_go_only_to_secure_connections_and_come_before_the_9a() {
    let mut h = Harness::with_defaults();
    let a = h.secure(1, "alice");
    let legacy = h.connected(2);
    assert_eq!(
        decoded(&h.nick(a, "alice")),
        [(a, nick_set("alice")), (a, done())],
        "also for the same name"
    );
    assert_eq!(
        decoded(&h.nick(a, "ann")),
        [(a, nick_set("ann")), (a, done())]
    );
    assert_eq!(
        sent(&h.nick(a, "a b")),
        [(a, response(1, text::NICK_INVALID))],
        "a failed NICK confirms nothing"
    );
    assert_eq!(sent(&h.nick(legacy, "lee")), [(legacy, ok())]);

    assert_eq!(
        decoded(&h.join(a, "vault", "")),
        [(a, created("vault", true)), (a, done())]
    );
    assert_eq!(sent(&h.join(legacy, "open", "")), [(legacy, ok())]);
    assert_eq!(
        decoded(&h.join(a, "open", "")),
        [(a, joined("open", false)), (a, done())],
        "no keys are exchanged in a plaintext room"
    );
    assert_eq!(
        decoded(&h.send(a, ClientMessage::Leave)),
        [
            (
                a,
                notice(SecureMessage::RoomLeft {
                    room: bytes("open")
                })
            ),
            (a, done())
        ]
    );
    assert_eq!(
        sent(&h.send(legacy, ClientMessage::Leave)),
        [(legacy, ok())]
    );
    assert_eq!(
        decoded(&h.join(a, "open", "")),
        [(a, created("open", true)), (a, done())],
        "recreated by a secure client, the room is secure"
    );

    let dm = |target: &str| ClientMessage::DirectMessage {
        target: bytes(target),
        text: bytes("hi"),
    };
    assert_eq!(
        decoded(&h.send(a, dm("nobody"))),
        [
            (a, no_such_user("nobody")),
            (a, reply(1, text::NICK_NOT_PRESENT))
        ]
    );
    assert_eq!(
        sent(&h.send(legacy, dm("nobody"))),
        [(legacy, response(1, text::NICK_NOT_PRESENT))]
    );
}

#[test]
fn legacy_clients_are_refused_from_secure_rooms_before_any_password_work() {
    let mut h = Harness::with_defaults();
    let a = h.secure(1, "alice");
    let legacy = h.connected(2);
    h.join(a, "vault", "pw");
    let refused = response(
        1,
        "Room 'vault' is end-to-end encrypted; your client cannot join it.",
    );
    for password in ["pw", "wrong", ""] {
        let join = ClientMessage::Join {
            room: bytes("vault"),
            password: bytes(password),
        };
        let out = h.start(legacy, join);
        assert!(
            !out.iter()
                .any(|action| matches!(action, Action::Password(_))),
            "no hash for a room it could never enter"
        );
        assert_eq!(sent(&out), [(legacy, refused.clone())]);
    }
    assert_eq!(h.hub.room_of(legacy), None);

    // A legacy JOIN whose password check finds the room recreated as a
    // secure room meanwhile is refused too.
    let b = h.connected(3);
    h.join(b, "r", "pw");
    let join = ClientMessage::Join {
        room: bytes("r"),
        password: bytes("pw"),
    };
    let mut out = h.start(legacy, join);
    let Some(Action::Password(job)) = out.pop() else {
        panic!("{out:?}")
    };
    h.disconnect(b);
    h.join(a, "r", "pw");
    let outcome = fake_password_check(job.task);
    h.hub
        .password_checked(legacy, job.ticket, outcome, h.now, &mut out);
    let refused = response(
        1,
        "Room 'r' is end-to-end encrypted; your client cannot join it.",
    );
    assert_eq!(sent(&out), [(legacy, refused)]);
}

#[test]
fn a_joiner_and_the_members_exchange_keys_then_the_room_key_rotates() {
    let mut h = Harness::with_defaults();
    let (a, b, c) = (
        h.secure(1, "alice"),
        h.secure(2, "bob"),
        h.secure(3, "carol"),
    );
    h.join(a, "r", "");
    h.join(b, "r", "");
    h.finish_rotations();
    h.finish_rotations();
    let out = h.join(c, "r", "");
    let to_c = out
        .iter()
        .filter(|action| matches!(action, Action::Send { to, .. } if *to == c));
    assert_eq!(to_c.count(), 1, "the whole reply leaves in one buffer");
    assert_eq!(
        decoded(&out),
        [
            (c, joined("r", true)),
            (c, peer_key("alice", 1)),
            (c, peer_key("bob", 2)),
            (c, done()),
            (a, peer_key("carol", 3)),
            (b, peer_key("carol", 3)),
        ]
    );
    assert_eq!(h.rotating_for("r"), Some(vec![a, b, c]));
    assert_eq!(
        room_keys(&h.finish_rotations()),
        [(a, "r".into(), 3), (b, "r".into(), 3), (c, "r".into(), 3)]
    );
}

#[test]
fn rotations_are_coalesced_and_epochs_only_go_up() {
    let mut h = Harness::with_defaults();
    let (a, b, c) = (
        h.secure(1, "alice"),
        h.secure(2, "bob"),
        h.secure(3, "carol"),
    );
    h.join(a, "r", "");
    assert_eq!(h.rotating_for("r"), Some(vec![a]));
    h.join(b, "r", "");
    h.join(c, "r", "");
    assert_eq!(h.rotations.len(), 1, "at most one rotation in flight");
    // The first rotation ends: its key goes out, and one more rotation,
    // for both joins, starts.
    let out = h.finish_rotations();
    assert_eq!(room_keys(&out), [(a, "r".into(), 1)]);
    assert_eq!(h.rotating_for("r"), Some(vec![a, b, c]));
    let out = h.finish_rotations();
    assert_eq!(
        room_keys(&out),
        [(a, "r".into(), 2), (b, "r".into(), 2), (c, "r".into(), 2)]
    );
    assert!(h.rotations.is_empty(), "nothing changed meanwhile");
    // Each recipient gets the key wrapped for it alone.
    let wrapped: Vec<(ConnId, Bytes)> = decoded(&out)
        .into_iter()
        .filter_map(|(to, message)| match message {
            ServerMessage::Secure(SecureMessage::RoomKey { wrapped, .. }) => Some((to, wrapped)),
            _ => None,
        })
        .collect();
    for (to, wrapped) in wrapped {
        assert!(wrapped.ends_with(format!("for {to}").as_bytes()));
    }
    h.send(b, ClientMessage::Leave);
    assert_eq!(
        room_keys(&h.finish_rotations()),
        [(a, "r".into(), 3), (c, "r".into(), 3)]
    );
}

#[test]
fn wrapped_keys_go_only_to_recipients_still_in_the_room() {
    let mut h = Harness::with_defaults();
    let (a, b, c, d) = (
        h.secure(1, "alice"),
        h.secure(2, "bob"),
        h.secure(3, "carol"),
        h.secure(4, "dave"),
    );
    for conn in [a, b, c] {
        h.join(conn, "r", "");
        h.finish_rotations();
    }
    h.send(b, ClientMessage::Leave);
    assert_eq!(
        h.rotating_for("r"),
        Some(vec![a, c]),
        "the leaver is excluded"
    );
    // While that rotation runs, carol goes and dave comes.
    assert!(sent(&h.disconnect(c)).is_empty());
    h.join(d, "r", "");
    assert_eq!(
        room_keys(&h.finish_rotations()),
        [(a, "r".into(), 4)],
        "not to carol, who left; not to dave, who was no recipient"
    );
    assert_eq!(h.rotating_for("r"), Some(vec![a, d]));
    assert_eq!(
        room_keys(&h.finish_rotations()),
        [(a, "r".into(), 5), (d, "r".into(), 5)]
    );

    // A room deleted and created again while its rotation ran: the old
    // room's key goes to nobody, and the new room starts at epoch 1.
    let (x, y) = (h.secure(5, "xena"), h.secure(6, "yves"));
    h.join(x, "s", "");
    h.send(x, ClientMessage::Leave);
    h.join(y, "s", "");
    assert_eq!(h.rotations.len(), 2);
    assert_eq!(room_keys(&h.finish_rotations()), [(y, "s".into(), 1)]);
}

#[test]
fn every_departure_rotates_the_key_for_those_who_stay() {
    let mut h = Harness::with_defaults();
    let conns: Vec<ConnId> = (1..=5)
        .map(|id| h.secure(id, &format!("user{id}")))
        .collect();
    for conn in &conns {
        h.join(*conn, "r", "");
        h.finish_rotations();
    }
    let [a, b, c, d, e] = conns[..] else {
        unreachable!()
    };
    h.disconnect(e);
    assert_eq!(h.rotating_for("r"), Some(vec![a, b, c, d]), "disconnect");
    h.finish_rotations();
    h.join(d, "elsewhere", "");
    assert_eq!(h.rotating_for("r"), Some(vec![a, b, c]), "moved away");
    h.finish_rotations();
    h.send(c, ClientMessage::Leave);
    assert_eq!(h.rotating_for("r"), Some(vec![a, b]), "LEAVE");
    h.finish_rotations();
    // Everyone but bob keeps talking: bob is cut off when idle.
    h.now += Duration::from_secs(20);
    for conn in [a, c, d] {
        let heartbeat = ClientMessage::Heartbeat {
            payload: Bytes::new(),
        };
        h.send(conn, heartbeat);
    }
    let out = h.advance(Duration::from_secs(10));
    assert_eq!(closed(&out), [(b, CloseReason::IdleTimeout)]);
    assert_eq!(h.rotating_for("r"), Some(vec![a]), "idle cutoff");
    assert_eq!(room_keys(&h.finish_rotations()), [(a, "r".into(), 9)]);
}

#[test]
fn a_rename_sends_the_new_name_with_the_key_to_the_other_members_only() {
    let mut h = Harness::with_defaults();
    let (a, b) = (h.secure(1, "alice"), h.secure(2, "bob"));
    h.join(a, "r", "");
    h.join(b, "r", "");
    h.finish_rotations();
    h.finish_rotations();
    assert_eq!(
        decoded(&h.nick(b, "robert")),
        [
            (b, nick_set("robert")),
            (b, done()),
            (a, peer_key("robert", 2))
        ]
    );
    assert!(h.rotations.is_empty(), "a rename does not rotate the key");
    assert_eq!(
        decoded(&h.nick(b, "robert")),
        [(b, nick_set("robert")), (b, done())],
        "no new name, nothing to tell"
    );
    // In a plaintext room nobody is told.
    let (legacy, s) = (h.connected(3), h.secure(4, "sam"));
    h.join(legacy, "open", "");
    h.join(s, "open", "");
    assert_eq!(
        decoded(&h.nick(s, "samuel")),
        [(s, nick_set("samuel")), (s, done())]
    );
}

#[test]
fn a_dm_key_request_gives_both_ends_the_key_and_each_others_public_key() {
    let mut h = Harness::with_defaults();
    let (a, b) = (h.secure(1, "alice"), h.secure(2, "bob"));
    let out = h.dm_key(a, "bob");
    let frames = decoded(&out);
    assert_eq!(frames.len(), 4, "{frames:?}");
    let ServerMessage::Secure(SecureMessage::DmKeyIssued {
        target,
        key: target_key,
        key_id,
        wrapped,
    }) = &frames[0].1
    else {
        panic!("{frames:?}")
    };
    assert_eq!(frames[0].0, a);
    assert_eq!(
        (&target[..], target_key, *key_id),
        (&b"bob"[..], &key(2), 1)
    );
    assert!(wrapped.ends_with(format!("for {a}").as_bytes()));
    assert_eq!(frames[1], (a, done()));
    assert_eq!(frames[2], (b, peer_key("alice", 1)));
    let ServerMessage::Secure(SecureMessage::DmKey {
        peer,
        key_id,
        wrapped,
    }) = &frames[3].1
    else {
        panic!("{frames:?}")
    };
    assert_eq!(frames[3].0, b);
    assert_eq!((&peer[..], *key_id), (&b"alice"[..], 1));
    assert!(wrapped.ends_with(format!("for {b}").as_bytes()));
    let job = h.dm_key(b, "alice");
    assert!(
        matches!(
            &decoded(&job)[0].1,
            ServerMessage::Secure(SecureMessage::DmKeyIssued { key_id: 2, .. })
        ),
        "key ids count up"
    );
}

#[test]
fn dm_key_requests_that_cannot_be_served_get_one_clear_error() {
    let mut h = Harness::with(Limits {
        message_rate: Rate {
            limit: 5,
            ..Limits::default().message_rate
        },
        ..Limits::default()
    });
    let a = h.secure(1, "alice");
    let legacy = h.connected(2);
    h.nick(legacy, "lee");
    assert_eq!(
        decoded(&h.dm_key(a, "nobody")),
        [
            (a, no_such_user("nobody")),
            (a, reply(1, text::NICK_NOT_PRESENT))
        ]
    );
    assert_eq!(
        sent(&h.dm_key(a, "lee")),
        [(
            a,
            response(
                1,
                "User 'lee' has no key; messages to them are not encrypted."
            )
        )]
    );
    assert_eq!(
        sent(&h.dm_key(a, "alice")),
        [(a, response(1, text::DM_KEY_WITH_YOURSELF))]
    );
    assert_eq!(
        sent(&h.dm_key(legacy, "alice")),
        [(legacy, response(1, text::REGISTER_KEY_FIRST))]
    );
    // Requests count against the message rate limit, failed ones too.
    h.dm_key(a, "nobody");
    h.dm_key(a, "nobody");
    assert_eq!(
        sent(&h.dm_key(a, "nobody")),
        [(
            a,
            response(2, "Slow down: at most 5 messages per 5 seconds.")
        )]
    );
    assert!(h.hub.wraps.is_empty(), "no job for any of them");
}

#[test]
fn a_dm_key_reply_waits_for_its_job_and_copes_with_what_happened_meanwhile() {
    let mut h = Harness::with_defaults();
    let (a, b) = (h.secure(1, "alice"), h.secure(2, "bob"));
    let request = || ClientMessage::DmKeyRequest {
        target: bytes("bob"),
    };
    let job = |out: &mut Vec<Action>| match out.pop() {
        Some(Action::WrapKeys(job)) => {
            assert_eq!(job.requester, Some(a));
            assert_eq!(job.key_use, KeyUse::Dm);
            job
        }
        other => panic!("{other:?}"),
    };

    let mut out = h.start(a, request());
    let first = job(&mut out);
    assert!(out.is_empty(), "nothing is sent before the key is ready");
    assert_eq!(
        sent(&h.start(a, ClientMessage::ListUsers)),
        [(a, response(2, text::REQUEST_PENDING))]
    );
    h.hub
        .keys_wrapped(first.ticket + 100, KeyWrapOutcome::Busy, &mut out);
    assert!(out.is_empty(), "an unknown ticket is ignored");
    h.hub
        .keys_wrapped(first.ticket, KeyWrapOutcome::Busy, &mut out);
    assert_eq!(sent(&out), [(a, response(2, text::KEYS_BUSY))]);

    let mut out = h.start(a, request());
    let failed = job(&mut out);
    h.hub
        .keys_wrapped(failed.ticket, KeyWrapOutcome::Failed, &mut out);
    assert_eq!(sent(&out), [(a, response(1, text::KEY_WRAP_FAILED))]);

    // The target leaves while the key is wrapped.
    let mut out = h.start(a, request());
    let orphaned = job(&mut out);
    h.disconnect(b);
    h.hub
        .keys_wrapped(orphaned.ticket, fake_wrap(&orphaned), &mut out);
    assert_eq!(
        decoded(&out),
        [
            (a, no_such_user("bob")),
            (a, reply(1, text::NICK_NOT_PRESENT))
        ]
    );

    // The requester leaves while the key is wrapped: nobody hears of it.
    let b = h.secure(3, "bob");
    let mut out = h.start(a, request());
    let abandoned = job(&mut out);
    h.disconnect(a);
    h.hub
        .keys_wrapped(abandoned.ticket, fake_wrap(&abandoned), &mut out);
    assert!(out.is_empty(), "{out:?}");
    assert!(h.hub.is_connected(b));
    h.hub.check_invariants().unwrap();
}
