//! The secure extension in the hub, on the fake clock: identities and their
//! proofs, confirmations, rotations and their timers, labels and DM keys.
//! Key wraps are faked (see `fake_wrap`); real RSA wraps are tested in
//! `keywrap.rs` and over TCP in `tests/secure_server.rs`.

use super::*;
use crate::secure::RoomKeyState;
use parlor_proto::secure::{
    dm_key_label, room_key_label, Identity, Registration, SecureMessage, SIGNING_KEY_LEN,
};

impl Harness {
    fn dm_key(&mut self, conn: ConnId, target: &str) -> Vec<Action> {
        self.send(
            conn,
            ClientMessage::DmKeyRequest {
                target: bytes(target),
            },
        )
    }

    /// SIGNED_NICK to `name` by the identity of `id`.
    fn rename(&mut self, conn: ConnId, id: u64, name: &str) -> Vec<Action> {
        self.send(conn, identity(id).signed_nick(name.as_bytes()))
    }

    /// Feeds a message without running the job its reply waits for.
    fn start(&mut self, conn: ConnId, message: ClientMessage) -> Vec<Action> {
        let mut out = Vec::new();
        self.hub.handle(conn, message, self.now, &mut out);
        out
    }

    /// The rotation in flight for `room`, if any.
    fn rotation_for(&self, room: &str) -> Option<&KeyWrapJob> {
        self.rotations.iter().find(|job| {
            let purpose = self.hub.wraps.get(&job.ticket);
            matches!(purpose, Some(WrapPurpose::Room { room: r, .. }) if r == room.as_bytes())
        })
    }

    /// The members of the rotation in flight for `room`, if any.
    fn rotating_for(&self, room: &str) -> Option<Vec<ConnId>> {
        let job = self.rotation_for(room)?;
        Some(job.recipients.iter().map(|r| r.conn).collect())
    }

    fn incarnation(&self, room: &str) -> u64 {
        self.hub
            .directory
            .room(room.as_bytes())
            .and_then(Room::keys)
            .map(RoomKeyState::incarnation)
            .expect("a secure room")
    }
}

/// The ROOM_KEY frames sent, as (recipient, room, epoch).
pub(super) fn room_keys(actions: &[Action]) -> Vec<(ConnId, String, u32)> {
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

/// The ROOM_REKEYING frames sent, as (recipient, room, next epoch).
pub(super) fn rekeyings(actions: &[Action]) -> Vec<(ConnId, String, u32)> {
    decoded(actions)
        .into_iter()
        .filter_map(|(to, message)| match message {
            ServerMessage::Secure(SecureMessage::RoomRekeying {
                room, next_epoch, ..
            }) => Some((to, String::from_utf8(room.to_vec()).unwrap(), next_epoch)),
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

/// PEER_KEY for the user of identity `id`, called `name`.
fn peer_key(name: &str, id: u64) -> ServerMessage {
    renamed(name, "", id)
}

/// PEER_KEY announcing that `from` is now `name`.
fn renamed(name: &str, from: &str, id: u64) -> ServerMessage {
    notice(SecureMessage::PeerKey {
        name: bytes(name),
        renamed_from: bytes(from),
        identity: identity(id).block(name.as_bytes()),
    })
}

fn joined(room: &str, secure: bool, incarnation: u64) -> ServerMessage {
    notice(SecureMessage::RoomJoined {
        room: bytes(room),
        secure,
        incarnation,
    })
}

fn created(room: &str, secure: bool, incarnation: u64) -> ServerMessage {
    notice(SecureMessage::RoomCreated {
        room: bytes(room),
        secure,
        incarnation,
    })
}

fn no_such_user(name: &str) -> ServerMessage {
    notice(SecureMessage::NoSuchUser { name: bytes(name) })
}

/// A registration by the identity of `id` for a connection called `nick`
/// over `binding`, as a struct to tamper with.
fn registration(id: u64, nick: &str, binding: &[u8; 32]) -> Registration {
    match identity(id).register(nick.as_bytes(), binding) {
        ClientMessage::RegisterKey(registration) => registration,
        other => unreachable!("{other:?}"),
    }
}

fn with_block(mut registration: Registration, block: &Identity) -> Registration {
    registration.signing_key = block.signing_key;
    registration.rsa_der = block.rsa_der.clone();
    registration.key_binding = block.key_binding;
    registration.name_proof = block.name_proof;
    registration
}

#[test]
fn a_registration_needs_usable_keys_rsa_2048_to_4096_bits_with_e_65537() {
    let mut h = Harness::with_defaults();
    let a = h.connected(1);
    h.hub.channel_bound(a, binding(1));
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
    // The fixed key under the RSASSA-PSS algorithm (1.2.840.113549.1.1.10)
    // instead of rsaEncryption (…1.1.1): not to be used for encryption.
    let rsa_encryption = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    let mut pss = harness::TEST_RSA_DER.to_vec();
    let at = pss
        .windows(rsa_encryption.len())
        .position(|window| window == rsa_encryption)
        .unwrap();
    pss[at + rsa_encryption.len() - 1] = 0x0a;
    let refused_rsa = [
        rsa_der(1024, 65_537, 1),
        rsa_der(2047, 65_537, 1),
        rsa_der(4097, 65_537, 1),
        rsa_der(8192, 65_537, 1),
        rsa_der(2048, 3, 1),
        rsa_der(2048, 65_539, 1),
        [harness::TEST_RSA_DER, b"\x00"].concat().into(),
        pss.into(),
        p256.into(),
        bytes("not a key"),
        Bytes::new(),
    ];
    for der in refused_rsa {
        // Properly signed for these keys: it is the keys that are refused.
        let register = TestIdentity::with_rsa(1, der).register(b"rand0", &binding(1));
        assert_eq!(
            sent(&h.send(a, register)),
            [(a, response(1, text::BAD_PUBLIC_KEY))]
        );
    }
    // A signing key that is no point of the curve, and one of small order.
    let not_a_point = (0..=255u8)
        .map(|byte| [byte; SIGNING_KEY_LEN])
        .find(|key| ed25519_dalek::VerifyingKey::from_bytes(key).is_err())
        .unwrap();
    let mut small_order = [0; SIGNING_KEY_LEN];
    small_order[0] = 1;
    for signing_key in [not_a_point, small_order] {
        let mut registration = registration(1, "rand0", &binding(1));
        registration.signing_key = signing_key;
        assert_eq!(
            sent(&h.send(a, ClientMessage::RegisterKey(registration))),
            [(a, response(1, text::BAD_PUBLIC_KEY))]
        );
    }
    assert!(!h.hub.is_secure(a));
    let largest = TestIdentity::with_rsa(1, rsa_der(4096, 65_537, 1));
    assert_eq!(
        sent(&h.send(a, largest.register(b"rand0", &binding(1)))),
        [(a, ok())]
    );
    assert!(h.hub.is_secure(a));
    assert_eq!(
        sent(&h.send(a, identity(1).register(b"rand0", &binding(1)))),
        [(a, response(1, text::KEY_ALREADY_REGISTERED))]
    );
}

#[test]
fn a_registration_proves_possession_of_the_key_for_this_name_and_this_connection() {
    let mut h = Harness::with_defaults();
    let bob = h.secure(2, "bob");
    let bobs_block = identity(2).block(b"bob");
    let m = h.connected(3);
    h.hub.channel_bound(m, binding(3));
    h.nick(m, "mallory");
    let refused = |h: &mut Harness, registration: Registration| {
        assert_eq!(
            sent(&h.send(m, ClientMessage::RegisterKey(registration))),
            [(m, response(1, text::KEY_PROOF_FAILED))]
        );
    };
    // Someone else's public keys, with everything mallory can sign herself:
    // bob's binding and name proof are bob's, the rest mallory's.
    refused(
        &mut h,
        with_block(registration(3, "mallory", &binding(3)), &bobs_block),
    );
    // The same once bob is gone and mallory has his name.
    h.disconnect(bob);
    h.nick(m, "bob");
    refused(
        &mut h,
        with_block(registration(3, "bob", &binding(3)), &bobs_block),
    );
    h.nick(m, "mallory");
    // Her own key, but a key binding by another key.
    let mut other_binding = registration(3, "mallory", &binding(3));
    other_binding.key_binding = bobs_block.key_binding;
    refused(&mut h, other_binding);
    // A name proof or a possession proof over another nick.
    let mut other_name = registration(3, "mallory", &binding(3));
    other_name.name_proof = identity(3).block(b"bob").name_proof;
    refused(&mut h, other_name);
    let mut other_nick = registration(3, "mallory", &binding(3));
    other_nick.possession = registration(3, "bob", &binding(3)).possession;
    refused(&mut h, other_nick);
    // Possession over another connection's channel binding: a registration
    // replayed from elsewhere.
    refused(&mut h, registration(3, "mallory", &binding(4)));
    refused(&mut h, registration(3, "mallory", &PLAIN_CHANNEL_BINDING));
    assert!(!h.hub.is_secure(m));
    assert_eq!(
        sent(&h.send(m, identity(3).register(b"mallory", &binding(3)))),
        [(m, ok())]
    );
}

#[test]
fn a_plain_connection_registers_only_where_the_server_allows_it() {
    let register = || identity(1).register(b"rand0", &PLAIN_CHANNEL_BINDING);
    let mut h = Harness::with_defaults();
    let a = h.connected(1);
    assert_eq!(
        sent(&h.send(a, register())),
        [(a, response(1, text::SECURE_NEEDS_TLS_NO_PORT))]
    );
    let mut h = Harness::with(Limits {
        tls_port: Some(4171),
        ..Limits::default()
    });
    let a = h.connected(1);
    assert_eq!(
        sent(&h.send(a, register())),
        [(
            a,
            response(1, "Secure connections need TLS: connect to port 4171.")
        )]
    );
    assert!(!h.hub.is_secure(a));
    let mut h = Harness::with(Limits {
        allow_secure_on_plain: true,
        ..Limits::default()
    });
    let a = h.connected(1);
    // A plain connection's binding is all zeros, nothing else.
    assert_eq!(
        sent(&h.send(a, identity(1).register(b"rand0", &binding(1)))),
        [(a, response(1, text::KEY_PROOF_FAILED))]
    );
    assert_eq!(sent(&h.send(a, register())), [(a, ok())]);
    assert!(h.hub.is_secure(a));
}

#[test]
fn a_secure_connection_renames_with_a_signed_nick_only() {
    let mut h = Harness::with_defaults();
    let a = h.secure(1, "alice");
    let legacy = h.connected(2);
    assert_eq!(
        sent(&h.nick(a, "ann")),
        [(a, response(1, text::SIGNED_NICK_NEEDED))]
    );
    assert_eq!(h.hub.name_of(a), Some(&b"alice"[..]), "nothing changed");
    assert_eq!(
        sent(&h.send(legacy, identity(2).signed_nick(b"lee"))),
        [(legacy, response(1, text::REGISTER_KEY_FIRST))]
    );
    assert_eq!(
        decoded(&h.rename(a, 2, "ann")),
        [(a, reply(1, text::KEY_PROOF_FAILED))],
        "signed by another key"
    );
    let proof_for_bob = match identity(1).signed_nick(b"bob") {
        ClientMessage::SignedNick { name_proof, .. } => name_proof,
        other => unreachable!("{other:?}"),
    };
    let mismatched = ClientMessage::SignedNick {
        name: bytes("ann"),
        name_proof: proof_for_bob,
    };
    assert_eq!(
        decoded(&h.send(a, mismatched)),
        [(a, reply(1, text::KEY_PROOF_FAILED))],
        "a proof for another name"
    );
    assert_eq!(h.hub.name_of(a), Some(&b"alice"[..]));
    h.nick(legacy, "lee");
    assert_eq!(
        decoded(&h.rename(a, 1, "lee")),
        [(a, reply(1, text::NICK_TAKEN))],
        "the NICK errors still apply"
    );
    assert_eq!(
        decoded(&h.rename(a, 1, "ann")),
        [(a, nick_set("ann")), (a, done())]
    );
    assert_eq!(
        h.hub.users[&a].identity.as_ref().unwrap().block(),
        &identity(1).block(b"ann"),
        "peers now get the proof for the new name"
    );
}

#[test]
fn confirmations_go_only_to_secure_connections_and_come_before_the_9a() {
    let mut h = Harness::with_defaults();
    let a = h.secure(1, "alice");
    let legacy = h.connected(2);
    assert_eq!(
        decoded(&h.rename(a, 1, "alice")),
        [(a, nick_set("alice")), (a, done())],
        "also for the same name"
    );
    assert_eq!(
        decoded(&h.rename(a, 1, "ann")),
        [(a, nick_set("ann")), (a, done())]
    );
    assert_eq!(
        sent(&h.rename(a, 1, "a b")),
        [(a, response(1, text::NICK_INVALID))],
        "a failed NICK confirms nothing"
    );
    assert_eq!(sent(&h.nick(legacy, "lee")), [(legacy, ok())]);

    let out = h.join(a, "vault", "");
    let vault = h.incarnation("vault");
    assert_ne!(vault, 0);
    assert_eq!(
        decoded(&out),
        [(a, created("vault", true, vault)), (a, done())]
    );
    assert_eq!(sent(&h.join(legacy, "open", "")), [(legacy, ok())]);
    assert_eq!(
        decoded(&h.join(a, "open", "")),
        [(a, joined("open", false, 0)), (a, done())],
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
    let out = h.join(a, "open", "");
    assert_eq!(
        decoded(&out),
        [
            (a, created("open", true, h.incarnation("open"))),
            (a, done())
        ],
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
fn a_joiner_and_the_members_exchange_identities_then_the_room_key_rotates() {
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
            (c, joined("r", true, h.incarnation("r"))),
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
fn rotations_are_coalesced_and_epochs_go_up_by_one() {
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
    assert_eq!(rekeyings(&h.disconnect(c)), [(a, "r".into(), 4)]);
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
    // room's key goes to nobody, and the new room, another incarnation,
    // starts at epoch 1.
    let (x, y) = (h.secure(5, "xena"), h.secure(6, "yves"));
    h.join(x, "s", "");
    let first = h.incarnation("s");
    h.send(x, ClientMessage::Leave);
    h.join(y, "s", "");
    assert_ne!(h.incarnation("s"), first);
    assert_eq!(h.rotations.len(), 2);
    assert_eq!(room_keys(&h.finish_rotations()), [(y, "s".into(), 1)]);
}

/// Every way out of a room tells those who stay, in the event of the
/// departure itself, which epoch to wait for; the key of that epoch comes
/// later and only to them.
#[test]
fn every_departure_tells_the_others_to_hold_then_rotates_the_key() {
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
    let departure = |h: &mut Harness, out: Vec<Action>, stay: &[ConnId], epoch: u32, how| {
        let told: Vec<_> = stay.iter().map(|conn| (*conn, "r".into(), epoch)).collect();
        assert_eq!(rekeyings(&out), told, "{how}");
        assert!(room_keys(&out).is_empty(), "{how}: no key before the hold");
        assert_eq!(h.rotating_for("r").as_deref(), Some(stay), "{how}");
        let keys = room_keys(&h.finish_rotations());
        let in_r = keys.iter().filter(|(_, room, _)| room == "r").count();
        assert_eq!(in_r, stay.len(), "{how}");
    };
    let out = h.disconnect(e);
    departure(&mut h, out, &[a, b, c, d], 6, "disconnect");
    let out = h.join(d, "elsewhere", "");
    departure(&mut h, out, &[a, b, c], 7, "moved away");
    let out = h.send(c, ClientMessage::Leave);
    departure(&mut h, out, &[a, b], 8, "LEAVE");
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
    departure(&mut h, out, &[a], 9, "idle cutoff");
    // A slow consumer is disconnected by the driver: the same path.
    let f = h.secure(6, "fay");
    h.join(f, "r", "");
    h.finish_rotations();
    let mut out = Vec::new();
    h.hub
        .disconnect(f, CloseReason::SlowConsumer, h.now, &mut out);
    h.settle(&mut out);
    departure(&mut h, out, &[a], 11, "slow consumer");
}

#[test]
fn a_rename_sends_the_new_name_and_the_old_one_to_the_other_members_only() {
    let mut h = Harness::with_defaults();
    let (a, b) = (h.secure(1, "alice"), h.secure(2, "bob"));
    h.join(a, "r", "");
    h.join(b, "r", "");
    h.finish_rotations();
    h.finish_rotations();
    assert_eq!(
        decoded(&h.rename(b, 2, "robert")),
        [
            (b, nick_set("robert")),
            (b, done()),
            (a, renamed("robert", "bob", 2))
        ]
    );
    assert!(h.rotations.is_empty(), "a rename does not rotate the key");
    assert_eq!(
        decoded(&h.rename(b, 2, "robert")),
        [(b, nick_set("robert")), (b, done())],
        "no new name, nothing to tell"
    );
    // In a plaintext room nobody is told.
    let legacy = h.connected(3);
    let s = h.secure(4, "sam");
    h.join(legacy, "open", "");
    h.join(s, "open", "");
    assert_eq!(
        decoded(&h.rename(s, 4, "samuel")),
        [(s, nick_set("samuel")), (s, done())]
    );
}

#[test]
fn a_failed_wrap_delivers_nothing_and_is_retried_a_second_later_under_the_same_epoch() {
    let mut h = Harness::with_defaults();
    let (a, b, c) = (
        h.secure(1, "alice"),
        h.secure(2, "bob"),
        h.secure(3, "carol"),
    );
    for conn in [a, b, c] {
        h.join(conn, "r", "");
        h.finish_rotations();
    }
    let rekeying = h.send(c, ClientMessage::Leave);
    assert_eq!(
        rekeyings(&rekeying),
        [(a, "r".into(), 4), (b, "r".into(), 4)]
    );
    let job = h.rotations.pop().unwrap();
    let mut out = Vec::new();
    h.hub
        .keys_wrapped(job.ticket, KeyWrapOutcome::Failed, h.now, &mut out);
    assert!(out.is_empty(), "no key, and members keep holding: {out:?}");
    h.hub.check_invariants().unwrap();
    assert_eq!(h.hub.poll_timeout(), Some(h.now + Duration::from_secs(1)));
    // Bob leaves meanwhile: the retry is for who is there then.
    h.send(b, ClientMessage::Leave);
    let job = h.rotations.pop().unwrap();
    h.hub
        .keys_wrapped(job.ticket, KeyWrapOutcome::Busy, h.now, &mut out);
    assert!(out.is_empty(), "{out:?}");
    assert!(h.advance(Duration::from_millis(999)).is_empty());
    assert!(h.rotations.is_empty(), "not yet");
    h.advance(Duration::from_millis(1));
    assert_eq!(h.rotating_for("r"), Some(vec![a]));
    // A wrap that misses a member fails as a whole: a rotation reaches
    // every member or none.
    let job = h.rotations.pop().unwrap();
    let KeyWrapOutcome::Wrapped(mut partial) = fake_wrap(&job) else {
        unreachable!()
    };
    partial.clear();
    h.hub.keys_wrapped(
        job.ticket,
        KeyWrapOutcome::Wrapped(partial),
        h.now,
        &mut out,
    );
    assert!(out.is_empty(), "{out:?}");
    h.advance(Duration::from_secs(1));
    assert_eq!(
        room_keys(&h.finish_rotations()),
        [(a, "r".into(), 4)],
        "the epoch nobody received, at last"
    );
    h.join(b, "r", "");
    assert_eq!(
        room_keys(&h.finish_rotations()),
        [(a, "r".into(), 5), (b, "r".into(), 5)],
        "then one more, as ever"
    );
}

#[test]
fn a_key_is_replaced_at_the_end_of_its_lifetime_even_if_nobody_comes_or_goes() {
    let lifetime = Duration::from_secs(3600);
    assert_eq!(Limits::default().room_key_lifetime, lifetime);
    let mut h = Harness::with_defaults();
    let (a, b) = (h.secure(1, "alice"), h.secure(2, "bob"));
    h.join(a, "r", "");
    h.join(b, "r", "");
    h.finish_rotations();
    h.now += Duration::from_secs(100);
    h.finish_rotations();
    let born = h.now;
    assert_eq!(h.hub.room_timers.next(), Some(born + lifetime));
    // Stay connected meanwhile.
    let step = Duration::from_secs(20);
    while h.now + step < born + lifetime {
        h.now += step;
        for conn in [a, b] {
            h.send(
                conn,
                ClientMessage::Heartbeat {
                    payload: Bytes::new(),
                },
            );
        }
        assert!(h.advance(Duration::ZERO).is_empty());
        assert!(h.rotations.is_empty(), "too early");
    }
    let out = h.advance(born + lifetime - h.now);
    assert!(rekeyings(&out).is_empty(), "nobody left: nothing to hold");
    assert_eq!(h.rotating_for("r"), Some(vec![a, b]));
    assert_eq!(
        room_keys(&h.finish_rotations()),
        [(a, "r".into(), 3), (b, "r".into(), 3)]
    );
    assert_eq!(h.hub.room_timers.next(), Some(h.now + lifetime));
}

#[test]
fn every_wrap_is_labelled_with_its_room_incarnation_epoch_and_recipient() {
    let mut h = Harness::with_defaults();
    let (a, b) = (h.secure(1, "alice"), h.secure(2, "bob"));
    h.join(a, "r", "");
    h.finish_rotations();
    h.join(b, "r", "");
    let incarnation = h.incarnation("r");
    let labels = |h: &Harness, room| -> Vec<Vec<u8>> {
        let job = h.rotation_for(room).unwrap();
        job.recipients.iter().map(|r| r.label.clone()).collect()
    };
    let expected = |epoch| {
        [1, 2]
            .map(|id| room_key_label(b"r", incarnation, epoch, &identity(id).fingerprint()))
            .to_vec()
    };
    let second = labels(&h, "r");
    assert_eq!(second, expected(2));
    assert_ne!(second[0], second[1], "each member's own");
    h.finish_rotations();
    h.send(b, ClientMessage::Leave);
    assert_eq!(labels(&h, "r"), expected(3)[..1], "another epoch");
    h.finish_rotations();
    // Another room of the same name is another incarnation.
    h.send(a, ClientMessage::Leave);
    h.join(a, "r", "");
    let again = h.incarnation("r");
    assert_ne!(again, incarnation);
    let first = room_key_label(b"r", again, 1, &identity(1).fingerprint());
    assert_eq!(labels(&h, "r"), [first]);
    // A DM key's halves each name both ends, the recipient first.
    let mut out = h.start(
        a,
        ClientMessage::DmKeyRequest {
            target: bytes("bob"),
        },
    );
    let Some(Action::WrapKeys(job)) = out.pop() else {
        panic!("{out:?}")
    };
    let (fa, fb) = (identity(1).fingerprint(), identity(2).fingerprint());
    let dm: Vec<_> = job
        .recipients
        .iter()
        .map(|r| (r.conn, r.label.clone()))
        .collect();
    assert_eq!(
        dm,
        [
            (a, dm_key_label(1, &fa, &fb)),
            (b, dm_key_label(1, &fb, &fa))
        ]
    );
}

#[test]
fn a_dm_key_request_gives_both_ends_the_key_and_each_others_identity() {
    let mut h = Harness::with_defaults();
    let (a, b) = (h.secure(1, "alice"), h.secure(2, "bob"));
    let out = h.dm_key(a, "bob");
    let frames = decoded(&out);
    assert_eq!(frames.len(), 4, "{frames:?}");
    let ServerMessage::Secure(SecureMessage::DmKeyIssued {
        target,
        identity: target_identity,
        key_id,
        wrapped,
    }) = &frames[0].1
    else {
        panic!("{frames:?}")
    };
    assert_eq!(frames[0].0, a);
    assert_eq!(
        (&target[..], target_identity, *key_id),
        (&b"bob"[..], &identity(2).block(b"bob"), 1)
    );
    assert!(wrapped.ends_with(format!("for {a}").as_bytes()));
    assert_eq!(frames[1], (a, done()));
    assert_eq!(frames[2], (b, peer_key("alice", 1)));
    let ServerMessage::Secure(SecureMessage::DmKey {
        peer,
        peer_fingerprint,
        key_id,
        wrapped,
    }) = &frames[3].1
    else {
        panic!("{frames:?}")
    };
    assert_eq!(frames[3].0, b);
    assert_eq!(
        (&peer[..], *peer_fingerprint, *key_id),
        (&b"alice"[..], identity(1).fingerprint(), 1)
    );
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
    let mut h = Harness::with_defaults();
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
fn dm_keys_naming_one_target_are_bounded_whoever_asks() {
    let per_target = Rate {
        limit: 3,
        window: Duration::from_secs(60),
    };
    assert_eq!(Limits::default().dm_keys_per_target.limit, 10);
    assert_eq!(
        Limits::default().dm_keys_per_target.window,
        Duration::from_secs(60)
    );
    let mut h = Harness::with(Limits {
        dm_keys_per_target: per_target,
        ..Limits::default()
    });
    let bob = h.secure(1, "bob");
    let askers: Vec<ConnId> = (2..=4)
        .map(|id| h.secure(id, &format!("asker{id}")))
        .collect();
    for (index, asker) in askers.iter().enumerate() {
        assert_eq!(
            decoded(&h.dm_key(*asker, "bob"))[1],
            (*asker, done()),
            "{index}"
        );
    }
    let over = h.dm_key(askers[0], "bob");
    assert_eq!(
        sent(&over),
        [(
            askers[0],
            response(
                2,
                "Too many DM keys were issued for 'bob' lately, try again later."
            )
        )]
    );
    assert!(
        sent(&over).iter().all(|(to, _)| *to != bob),
        "nothing reaches bob"
    );
    // Others are served meanwhile, and bob himself again once the window
    // has slid.
    assert_eq!(decoded(&h.dm_key(bob, "asker2"))[1], (bob, done()));
    h.now += Duration::from_secs(60);
    assert_eq!(decoded(&h.dm_key(askers[1], "bob"))[1], (askers[1], done()));
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
        .keys_wrapped(first.ticket + 100, KeyWrapOutcome::Busy, h.now, &mut out);
    assert!(out.is_empty(), "an unknown ticket is ignored");
    h.hub
        .keys_wrapped(first.ticket, KeyWrapOutcome::Busy, h.now, &mut out);
    assert_eq!(sent(&out), [(a, response(2, text::KEYS_BUSY))]);

    let mut out = h.start(a, request());
    let failed = job(&mut out);
    h.hub
        .keys_wrapped(failed.ticket, KeyWrapOutcome::Failed, h.now, &mut out);
    assert_eq!(sent(&out), [(a, response(1, text::KEY_WRAP_FAILED))]);

    // The target leaves while the key is wrapped.
    h.now += Duration::from_secs(5);
    let mut out = h.start(a, request());
    let orphaned = job(&mut out);
    h.disconnect(b);
    h.hub
        .keys_wrapped(orphaned.ticket, fake_wrap(&orphaned), h.now, &mut out);
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
        .keys_wrapped(abandoned.ticket, fake_wrap(&abandoned), h.now, &mut out);
    assert!(out.is_empty(), "{out:?}");
    assert!(h.hub.is_connected(b));
    h.hub.check_invariants().unwrap();
}
