//! The hub driven directly, with a fake clock: every timer is exact and
//! instant. The secure extension's tests are in `tests/secure.rs`.

mod claims;
mod files;
mod nodes;
mod secure;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;

use super::harness::{fake_password_check, fake_wrap, Harness, TestIdentity};
use super::*;
use parlor_proto::secure::PLAIN_CHANNEL_BINDING;
use parlor_proto::{Frame, ServerMessage, HEADER_LEN};

/// Shorthands for the tests below.
impl Harness {
    fn with_defaults() -> Harness {
        Harness::new(Limits::default())
    }

    fn with(limits: Limits) -> Harness {
        Harness::new(limits)
    }

    /// Opens connection `id`, which must be accepted silently.
    fn connected(&mut self, id: u64) -> ConnId {
        let conn = ConnId(id);
        let out = self.connect(conn);
        assert!(out.is_empty(), "connect sends nothing: {out:?}");
        conn
    }

    /// Handles a message (running the jobs its reply waits for) and checks
    /// the hub's invariants afterwards.
    fn send(&mut self, conn: ConnId, message: ClientMessage) -> Vec<Action> {
        let out = self.handle(conn, message);
        self.hub.check_invariants().unwrap();
        out
    }

    fn nick(&mut self, conn: ConnId, name: &str) -> Vec<Action> {
        self.send(conn, ClientMessage::Nick { name: bytes(name) })
    }

    fn join(&mut self, conn: ConnId, room: &str, password: &str) -> Vec<Action> {
        let message = ClientMessage::Join {
            room: bytes(room),
            password: bytes(password),
        };
        self.send(conn, message)
    }

    fn say(&mut self, conn: ConnId, room: &str, text: &str) -> Vec<Action> {
        let message = ClientMessage::RoomMessage {
            room: bytes(room),
            text: bytes(text),
        };
        self.send(conn, message)
    }
}

/// The DER SubjectPublicKeyInfo of an RSA public key whose modulus has
/// `bits` bits and whose public exponent is `exponent`. The modulus is no
/// product of two primes, so nobody holds a private key for it; but the hub
/// only parses public keys, and any odd modulus will do for that, so keys
/// of any size cost nothing to make.
fn rsa_der(bits: usize, exponent: u32, seed: u8) -> Bytes {
    use rsa::pkcs8::EncodePublicKey;
    let len = bits.div_ceil(8);
    let mut modulus: Vec<u8> = (0..len).map(|i| seed ^ (i as u8)).collect();
    modulus[0] = 0xff >> (len * 8 - bits);
    modulus[len - 1] |= 1;
    let precision = (len as u32 * 8).next_multiple_of(64);
    let n = rsa::BoxedUint::from_be_slice(&modulus, precision).unwrap();
    let e = rsa::BoxedUint::from_be_slice(&exponent.to_be_bytes(), 64).unwrap();
    let key = rsa::PublicKey::new(n, e).unwrap();
    Bytes::from(key.to_public_key_der().unwrap().into_vec())
}

/// The test identity of the user first connected as `id`.
fn identity(id: u64) -> TestIdentity {
    TestIdentity::new(id as u8)
}

/// The channel binding of connection `id`, as if over TLS.
fn binding(id: u64) -> [u8; 32] {
    [0xb0 ^ id as u8; 32]
}

impl Harness {
    /// Connection `id` over "TLS" (its channel binding [`binding`]),
    /// renamed `name` with a legacy NICK, then registered by
    /// [`identity`]`(id)`.
    fn secure(&mut self, id: u64, name: &str) -> ConnId {
        let conn = self.connected(id);
        self.hub.channel_bound(conn, binding(id));
        assert_eq!(sent(&self.nick(conn, name)), [(conn, ok())]);
        let register = identity(id).register(name.as_bytes(), &binding(id));
        assert_eq!(sent(&self.send(conn, register)), [(conn, ok())]);
        conn
    }
}

fn bytes(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

/// The frames sent, as (recipient, bytes), in order. A buffer holding
/// several frames for one recipient is cut into its frames.
fn sent(actions: &[Action]) -> Vec<(ConnId, Vec<u8>)> {
    let mut frames = Vec::new();
    for (to, frame) in actions.iter().flat_map(Action::frames) {
        let mut rest = &frame[..];
        while !rest.is_empty() {
            let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            let (one, after) = rest.split_at(HEADER_LEN + len);
            frames.push((to, one.to_vec()));
            rest = after;
        }
    }
    frames
}

/// The frames sent, decoded, as (recipient, message), in order.
fn decoded(actions: &[Action]) -> Vec<(ConnId, ServerMessage)> {
    sent(actions)
        .into_iter()
        .map(|(to, frame)| {
            let frame = Frame::new(frame[HEADER_LEN - 1], frame[HEADER_LEN..].to_vec());
            (to, ServerMessage::parse(&frame).unwrap())
        })
        .collect()
}

fn closed(actions: &[Action]) -> Vec<(ConnId, CloseReason)> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Close { conn, reason } => Some((*conn, *reason)),
            _ => None,
        })
        .collect()
}

fn response(status: u8, text: &str) -> Vec<u8> {
    let mut frame = vec![0, 0, 0, 1 + text.len() as u8, 0x04, 0x17, 0x9a, status];
    frame.extend_from_slice(text.as_bytes());
    frame
}

fn ok() -> Vec<u8> {
    response(0, "")
}

#[test]
fn guest_names_increase_and_skip_names_taken_as_nicks() {
    let mut h = Harness::with_defaults();
    let a = h.connected(1);
    assert_eq!(h.hub.name_of(a), Some(&b"rand0"[..]));
    assert_eq!(sent(&h.nick(a, "rand1")), [(a, ok())]);
    let b = h.connected(2);
    assert_eq!(h.hub.name_of(b), Some(&b"rand2"[..]), "rand1 is taken");
    h.disconnect(b);
    let c = h.connected(3);
    assert_eq!(
        h.hub.name_of(c),
        Some(&b"rand3"[..]),
        "numbers are not reused"
    );
}

#[test]
fn hello_replies_with_the_name_and_no_length_byte() {
    let mut h = Harness::with_defaults();
    let a = h.connected(1);
    let out = h.send(
        a,
        ClientMessage::Hello {
            greeting: Bytes::from_static(&[0xff; 70]),
        },
    );
    assert_eq!(sent(&out), [(a, response(0, "rand0"))]);
}

#[test]
fn nick_rules() {
    let mut h = Harness::with_defaults();
    let a = h.connected(1);
    let b = h.connected(2);
    assert_eq!(sent(&h.nick(a, "alice")), [(a, ok())]);
    assert_eq!(
        sent(&h.nick(b, "alice")),
        [(b, response(1, text::NICK_TAKEN))]
    );
    assert_eq!(sent(&h.nick(a, "alice")), [(a, ok())], "own name");
    assert_eq!(sent(&h.nick(b, "")), [(b, response(1, text::NICK_EMPTY))]);
    for bad in ["a b", "a\tb", "a\u{7f}", "\u{1}"] {
        assert_eq!(
            sent(&h.nick(b, bad)),
            [(b, response(1, text::NICK_INVALID))]
        );
    }
    assert_eq!(sent(&h.nick(b, "h\u{e9}llo")), [(b, ok())], "UTF-8 passes");
    assert_eq!(
        sent(&h.nick(a, "h\u{e9}llo")),
        [(a, response(1, text::NICK_TAKEN))]
    );
    assert_eq!(sent(&h.nick(a, "bob")), [(a, ok())]);
    assert_eq!(
        sent(&h.nick(b, "alice")),
        [(b, ok())],
        "old name was released"
    );
}

#[test]
fn join_creates_moves_and_deletes_rooms() {
    let mut h = Harness::with_defaults();
    let a = h.connected(1);
    let b = h.connected(2);
    assert_eq!(sent(&h.join(a, "lobby", "")), [(a, ok())]);
    assert_eq!(sent(&h.join(b, "lobby", "")), [(b, ok())]);
    assert_eq!(
        sent(&h.join(a, "lobby", "")),
        [(a, response(1, "You are already in room 'lobby'."))]
    );
    assert_eq!(
        sent(&h.join(a, "other", "")),
        [(a, ok())],
        "moved without LEAVE"
    );
    assert_eq!(h.hub.room_of(a), Some(&b"other"[..]));
    assert_eq!(h.hub.stats().rooms, 2);
    h.disconnect(b);
    assert_eq!(h.hub.stats().rooms, 1, "lobby deleted with its last member");
    assert_eq!(
        sent(&h.join(a, "", "")),
        [(a, response(1, text::ROOM_EMPTY))]
    );
    assert_eq!(
        sent(&h.join(a, "a b", "")),
        [(a, response(1, text::ROOM_INVALID))]
    );
}

#[test]
fn room_passwords_are_stored_hashed_and_checked() {
    let mut h = Harness::with_defaults();
    let a = h.connected(1);
    let b = h.connected(2);
    assert_eq!(sent(&h.join(a, "secret", "pw1")), [(a, ok())]);
    let hash = h
        .hub
        .directory
        .room(b"secret")
        .unwrap()
        .password_hash()
        .unwrap()
        .clone();
    // The string the hashing job made; the server's is argon2id.
    assert!(!hash.contains("pw1"), "{hash}");
    let wrong = response(1, text::WRONG_PASSWORD);
    assert_eq!(sent(&h.join(b, "secret", "")), [(b, wrong.clone())]);
    assert_eq!(sent(&h.join(b, "secret", "pw2")), [(b, wrong.clone())]);
    assert_eq!(sent(&h.join(b, "secret", "pw1")), [(b, ok())]);
    // A room created without a password takes only the empty one.
    assert_eq!(sent(&h.join(a, "open", "")), [(a, ok())]);
    assert_eq!(sent(&h.join(b, "open", "x")), [(b, wrong)]);
}

#[test]
fn a_password_check_for_a_room_that_changed_meanwhile_is_judged_again() {
    let mut h = Harness::with_defaults();
    let (a, b) = (h.connected(1), h.connected(2));
    h.join(a, "r", "old");
    let mut out = Vec::new();
    let join = ClientMessage::Join {
        room: bytes("r"),
        password: bytes("old"),
    };
    h.hub.handle(b, join, h.now, &mut out);
    let Some(Action::Password(job)) = out.pop() else {
        panic!("{out:?}")
    };
    // While b's check runs, the room is deleted and recreated with another
    // password: the old verdict must not let b in.
    h.disconnect(a);
    let c = h.connected(3);
    h.join(c, "r", "new");
    let outcome = fake_password_check(job.task);
    h.hub
        .password_checked(b, job.ticket, outcome, h.now, &mut out);
    let Some(Action::Password(again)) = out.pop() else {
        panic!("judged again: {out:?}")
    };
    let outcome = fake_password_check(again.task);
    h.hub
        .password_checked(b, again.ticket, outcome, h.now, &mut out);
    assert_eq!(sent(&out), [(b, response(1, text::WRONG_PASSWORD))]);
    assert_eq!(h.hub.room_of(b), None);
}

#[test]
fn requests_while_a_password_is_checked_are_refused_and_stale_answers_ignored() {
    let mut h = Harness::with_defaults();
    let a = h.connected(1);
    let mut out = Vec::new();
    let join = ClientMessage::Join {
        room: bytes("r"),
        password: bytes("pw"),
    };
    h.hub.handle(a, join, h.now, &mut out);
    let Some(Action::Password(job)) = out.pop() else {
        panic!()
    };
    h.hub.handle(a, ClientMessage::ListRooms, h.now, &mut out);
    assert_eq!(sent(&out), [(a, response(2, text::REQUEST_PENDING))]);
    out.clear();
    h.hub.password_checked(
        a,
        job.ticket + 1,
        PasswordOutcome::Verified(true),
        h.now,
        &mut out,
    );
    assert!(out.is_empty(), "wrong ticket ignored");
    h.hub
        .password_checked(a, job.ticket, PasswordOutcome::Busy, h.now, &mut out);
    assert_eq!(sent(&out), [(a, response(2, text::PASSWORDS_BUSY))]);
    assert_eq!(h.hub.stats().rooms, 0);
}

#[test]
fn leave_in_a_room_stays_and_leave_outside_closes_after_the_reply() {
    let mut h = Harness::with_defaults();
    let a = h.connected(1);
    h.join(a, "r", "");
    let out = h.send(a, ClientMessage::Leave);
    assert_eq!(sent(&out), [(a, ok())]);
    assert!(closed(&out).is_empty());
    assert_eq!(h.hub.stats().rooms, 0);
    let out = h.send(a, ClientMessage::Leave);
    assert!(matches!(
        out.as_slice(),
        [
            Action::Send { .. },
            Action::Close {
                reason: CloseReason::LeftServer,
                ..
            }
        ]
    ));
    assert!(!h.hub.is_connected(a));
}

#[test]
fn lists_are_sorted_bytewise_without_a_count() {
    let mut h = Harness::with_defaults();
    let (a, b, c) = (h.connected(1), h.connected(2), h.connected(3));
    h.nick(a, "zelda");
    h.nick(b, "alice");
    h.nick(c, "bob");
    let everyone = h.send(a, ClientMessage::ListUsers);
    let expected = [
        &[0, 0, 0, 17, 4, 0x17, 0x9a, 0][..],
        b"\x05alice\x03bob\x05zelda",
    ]
    .concat();
    assert_eq!(sent(&everyone), [(a, expected)]);
    assert_eq!(
        sent(&h.send(a, ClientMessage::ListRooms)),
        [(a, ok())],
        "no rooms"
    );
    h.join(a, "r2", "");
    h.join(b, "r2", "");
    h.join(c, "r1", "");
    let members = h.send(a, ClientMessage::ListUsers);
    let expected = [&[0, 0, 0, 13, 4, 0x17, 0x9a, 0][..], b"\x05alice\x05zelda"].concat();
    assert_eq!(sent(&members), [(a, expected)]);
    let rooms = h.send(c, ClientMessage::ListRooms);
    let expected = [&[0, 0, 0, 7, 4, 0x17, 0x9a, 0][..], b"\x02r1\x02r2"].concat();
    assert_eq!(sent(&rooms), [(c, expected)]);
}

#[test]
fn room_messages_ack_first_then_one_shared_frame_to_the_others() {
    let mut h = Harness::with_defaults();
    let (a, b, c, outsider) = (
        h.connected(1),
        h.connected(2),
        h.connected(3),
        h.connected(4),
    );
    h.nick(a, "alice");
    for conn in [a, b, c] {
        h.join(conn, "lobby", "");
    }
    let out = h.say(a, "lobby", "hello from alice");
    let relay = [
        &[0, 0, 0, 0x1e, 4, 0x17, 0x15][..],
        b"\x05lobby\x05alice\x00\x10hello from alice",
    ]
    .concat();
    assert_eq!(sent(&out), [(a, ok()), (b, relay.clone()), (c, relay)]);
    // Encoded once: one action hands both recipients the same buffer.
    assert!(matches!(
        out.as_slice(),
        [Action::Send { .. }, Action::Broadcast { except, .. }] if *except == Some(a)
    ));
    assert_eq!(
        sent(&h.say(outsider, "", "hi")),
        [(outsider, response(1, text::VOID))]
    );
    assert_eq!(
        sent(&h.say(a, "elsewhere", "hi")),
        [(a, response(1, "You are not in room 'elsewhere'."))]
    );
}

#[test]
fn direct_messages_reach_the_target_in_or_out_of_rooms() {
    let mut h = Harness::with_defaults();
    let (a, b) = (h.connected(1), h.connected(2));
    h.nick(a, "alice");
    h.nick(b, "bob");
    h.join(a, "r", "");
    let dm = ClientMessage::DirectMessage {
        target: bytes("bob"),
        text: bytes("hi"),
    };
    let out = h.send(a, dm);
    let relay = [&[0, 0, 0, 10, 4, 0x17, 0x12][..], b"\x05alice\x00\x02hi"].concat();
    assert_eq!(sent(&out), [(a, ok()), (b, relay)]);
    let dm = ClientMessage::DirectMessage {
        target: bytes("nobody"),
        text: bytes("hi"),
    };
    assert_eq!(
        sent(&h.send(a, dm)),
        [(a, response(1, text::NICK_NOT_PRESENT))]
    );
}

#[test]
fn rate_limit_counts_room_and_direct_messages_together_in_a_sliding_window() {
    let mut h = Harness::with_defaults();
    let (a, b) = (h.connected(1), h.connected(2));
    h.nick(b, "bob");
    let limited = response(2, "Slow down: at most 5 messages per 5 seconds.");
    // Failed ones count too: three shouts into the void, two DMs.
    for _ in 0..3 {
        h.say(a, "", "x");
        h.now += Duration::from_millis(500);
    }
    let dm = || ClientMessage::DirectMessage {
        target: bytes("bob"),
        text: bytes("x"),
    };
    for _ in 0..2 {
        assert_eq!(sent(&h.send(a, dm()))[0], (a, ok()));
        h.now += Duration::from_millis(500);
    }
    // t = 2.5 s: the sixth within the window is dropped, not delivered.
    assert_eq!(sent(&h.send(a, dm())), [(a, limited.clone())]);
    // t = 4.9 s: still five in the last 5 s.
    h.now += Duration::from_millis(2_400);
    assert_eq!(sent(&h.send(a, dm())), [(a, limited)]);
    // t = 5.0 s: the first message has slid out of the window.
    h.now += Duration::from_millis(100);
    assert_eq!(sent(&h.send(a, dm())).len(), 2, "ack and delivery");
}

#[test]
fn idle_connections_are_closed_at_the_timeout_and_heartbeats_count() {
    let mut h = Harness::with_defaults();
    let (quiet, chatty) = (h.connected(1), h.connected(2));
    let heartbeat = || ClientMessage::Heartbeat {
        payload: Bytes::new(),
    };
    // A first frame moves both from the handshake timeout to the idle one.
    h.send(quiet, heartbeat());
    h.send(chatty, heartbeat());
    for _ in 0..4 {
        assert!(h.advance(Duration::from_secs(6)).is_empty());
        assert!(
            h.send(chatty, heartbeat()).is_empty(),
            "heartbeats are never answered"
        );
    }
    // t = 30 s: the quiet one goes, without any frame.
    let out = h.advance(Duration::from_secs(6));
    assert!(sent(&out).is_empty());
    assert_eq!(closed(&out), [(quiet, CloseReason::IdleTimeout)]);
    assert!(h.hub.is_connected(chatty));
    // The chatty one's last heartbeat was at t = 24 s.
    assert!(h.advance(Duration::from_secs(23)).is_empty());
    assert_eq!(
        closed(&h.advance(Duration::from_secs(1))),
        [(chatty, CloseReason::IdleTimeout)]
    );
    assert_eq!(h.hub.poll_timeout(), None);
}

#[test]
fn connections_without_a_complete_frame_go_at_the_handshake_timeout() {
    let mut h = Harness::with(Limits {
        handshake_timeout: Duration::from_secs(10),
        ..Limits::default()
    });
    let (silent, greeted) = (h.connected(1), h.connected(2));
    assert_eq!(h.hub.poll_timeout(), Some(h.now + Duration::from_secs(10)));
    h.now += Duration::from_secs(9);
    h.send(
        greeted,
        ClientMessage::Hello {
            greeting: Bytes::from_static(b"hi"),
        },
    );
    let out = h.advance(Duration::from_secs(1));
    assert!(sent(&out).is_empty(), "closed without a frame");
    assert_eq!(closed(&out), [(silent, CloseReason::HandshakeTimeout)]);
    assert!(h.hub.is_connected(greeted), "now on the 30 s idle timeout");
    // Its frame came at t = 9 s, so it goes at t = 39 s.
    assert!(h.advance(Duration::from_secs(28)).is_empty());
    assert_eq!(
        closed(&h.advance(Duration::from_secs(1))),
        [(greeted, CloseReason::IdleTimeout)]
    );
    let metrics = h.hub.stats();
    assert_eq!(metrics.rejections(Rejection::HandshakeTimeout), 1);
    assert_eq!(metrics.rejections(Rejection::IdleTimeout), 1);
}

#[test]
fn a_channel_binding_is_kept_for_its_connection_only_and_ignored_for_unknown_ones() {
    let mut h = Harness::with(Limits {
        max_connections: 2,
        ..Limits::default()
    });
    let (tls, plain) = (h.connected(1), h.connected(2));
    h.hub.channel_bound(tls, [7; 32]);
    assert_eq!(h.hub.channel_binding(tls), Some(&[7; 32]));
    assert_eq!(h.hub.channel_binding(plain), None, "never bound: plain");
    // Refused for being one too many: the hub forgot it at once.
    let refused = ConnId(3);
    assert!(!h.connect(refused).is_empty());
    h.hub.channel_bound(refused, [9; 32]);
    assert_eq!(h.hub.channel_binding(refused), None);
    h.disconnect(tls);
    assert_eq!(h.hub.channel_binding(tls), None);
    h.hub.check_invariants().unwrap();
}

#[test]
fn the_per_address_limit_refuses_with_try_later_and_frees_on_disconnect() {
    let mut h = Harness::with(Limits {
        max_connections_per_ip: 2,
        ..Limits::default()
    });
    h.connected(1);
    h.connected(2);
    let refused = |h: &mut Harness, id: u64, ip: [u8; 4]| {
        let mut out = Vec::new();
        let peer = SocketAddr::from((ip, 50_000));
        h.hub.connect(ConnId(id), peer, h.now, &mut out);
        !out.is_empty()
    };
    assert!(refused(&mut h, 3, [127, 0, 0, 1]));
    assert!(
        !refused(&mut h, 4, [10, 0, 0, 7]),
        "another address is fine"
    );
    let mut out = Vec::new();
    h.hub.connect(
        ConnId(5),
        SocketAddr::from(([127, 0, 0, 1], 1)),
        h.now,
        &mut out,
    );
    assert_eq!(
        sent(&out),
        [(ConnId(5), response(2, text::TOO_MANY_FROM_ADDRESS))]
    );
    assert_eq!(closed(&out), [(ConnId(5), CloseReason::TooManyFromAddress)]);
    h.hub
        .disconnect(ConnId(1), CloseReason::ClientClosed, h.now, &mut Vec::new());
    assert!(!refused(&mut h, 6, [127, 0, 0, 1]), "a slot was freed");
    assert_eq!(h.hub.stats().rejections(Rejection::PerIpLimit), 2);
}

#[test]
fn nick_changes_are_rate_limited_taken_names_included() {
    let mut h = Harness::with(Limits {
        nick_rate: Rate {
            limit: 2,
            window: Duration::from_secs(60),
        },
        ..Limits::default()
    });
    let (a, b) = (h.connected(1), h.connected(2));
    h.nick(b, "taken");
    assert_eq!(sent(&h.nick(a, "one")), [(a, ok())]);
    assert_eq!(
        sent(&h.nick(a, "taken")),
        [(a, response(1, text::NICK_TAKEN))]
    );
    let limited = response(2, "Slow down: at most 2 nick changes per 60 seconds.");
    assert_eq!(sent(&h.nick(a, "two")), [(a, limited.clone())]);
    assert_eq!(sent(&h.nick(a, "one")), [(a, ok())], "no change, no charge");
    h.now += Duration::from_secs(60);
    assert_eq!(sent(&h.nick(a, "two")), [(a, ok())]);
    assert_eq!(h.hub.name_of(a), Some(&b"two"[..]));
}

#[test]
fn password_joins_are_rate_limited_but_open_rooms_are_not() {
    let mut h = Harness::with(Limits {
        password_join_rate: Rate {
            limit: 2,
            window: Duration::from_secs(60),
        },
        ..Limits::default()
    });
    let (owner, guesser) = (h.connected(1), h.connected(2));
    h.join(owner, "vault", "secret");
    let wrong = response(1, text::WRONG_PASSWORD);
    assert_eq!(
        sent(&h.join(guesser, "vault", "guess1")),
        [(guesser, wrong.clone())]
    );
    assert_eq!(
        sent(&h.join(guesser, "vault", "guess2")),
        [(guesser, wrong)]
    );
    let limited = response(2, "Slow down: at most 2 password attempts per 60 seconds.");
    assert_eq!(
        sent(&h.join(guesser, "vault", "secret")),
        [(guesser, limited)],
        "refused before any hash, even with the right password"
    );
    assert_eq!(sent(&h.join(guesser, "lobby", "")), [(guesser, ok())]);
    h.now += Duration::from_secs(60);
    assert_eq!(sent(&h.join(guesser, "vault", "secret")), [(guesser, ok())]);
    let metrics = h.hub.stats();
    assert_eq!(metrics.rejections(Rejection::WrongPassword), 2);
    assert_eq!(metrics.rejections(Rejection::PasswordRateLimited), 1);
}

#[test]
fn rooms_and_room_members_are_capped() {
    let mut h = Harness::with(Limits {
        max_rooms: 1,
        max_room_members: 2,
        ..Limits::default()
    });
    let (a, b, c) = (h.connected(1), h.connected(2), h.connected(3));
    h.join(a, "only", "");
    assert_eq!(
        sent(&h.join(b, "second", "")),
        [(b, response(2, text::TOO_MANY_ROOMS))]
    );
    assert_eq!(sent(&h.join(b, "only", "")), [(b, ok())]);
    assert_eq!(
        sent(&h.join(c, "only", "")),
        [(c, response(2, "Room 'only' is full, try again later."))]
    );
    h.send(a, ClientMessage::Leave);
    assert_eq!(sent(&h.join(c, "only", "")), [(c, ok())]);
    assert_eq!(h.hub.stats().rejections(Rejection::RoomLimit), 2);
    h.hub.check_invariants().unwrap();
}

#[test]
fn the_connection_limit_refuses_with_try_later() {
    let mut h = Harness::with(Limits {
        max_connections: 1,
        ..Limits::default()
    });
    h.connected(1);
    let mut out = Vec::new();
    h.hub.connect(
        ConnId(2),
        SocketAddr::from(([127, 0, 0, 1], 1)),
        h.now,
        &mut out,
    );
    assert_eq!(sent(&out), [(ConnId(2), response(2, text::SERVER_FULL))]);
    assert_eq!(closed(&out), [(ConnId(2), CloseReason::ServerFull)]);
    assert_eq!(h.hub.stats().connections, 1);
}

#[test]
fn malformed_input_is_answered_then_closed() {
    let mut h = Harness::with_defaults();
    let a = h.connected(1);
    h.join(a, "r", "");
    let mut out = Vec::new();
    h.hub.reject_malformed(
        a,
        &parlor_proto::ParseError::UnknownOpcode(0x77),
        h.now,
        &mut out,
    );
    assert_eq!(
        sent(&out),
        [(a, response(1, "Malformed frame: unknown opcode 0x77."))]
    );
    assert_eq!(closed(&out), [(a, CloseReason::Malformed)]);
    assert_eq!(h.hub.stats().rooms, 0);
    h.hub.check_invariants().unwrap();
}

/// Random sessions of up to six clients, legacy and secure: whatever they
/// do, the hub keeps its invariants and the protocol's promises, and a
/// legacy connection never receives a frame of the secure extension.
mod random_sessions {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;
    use parlor_proto::secure::{is_secure_only, opcode as secure_opcode};
    use parlor_proto::transfer::{is_transfer_news, FileMeta, FileRequest};

    // A test's ops are few; their size does not matter.
    #[allow(clippy::large_enum_variant)]
    #[derive(Clone, Debug)]
    enum Op {
        /// A new connection, secure from the start when it comes with an
        /// identity seed, over "TLS" (a channel binding) when the flag says.
        Connect(Option<u8>, bool),
        Disconnect(usize),
        Send(usize, ClientMessage),
        /// REGISTER_KEY by the identity of a seed, its proofs over the
        /// connection's name and binding; seed 0 signs another name, so
        /// its proof fails.
        Register(usize, u8),
        /// SIGNED_NICK by the identity of a seed, which may not be the
        /// connection's.
        SignedNick(usize, u8, Bytes),
        Wait(u64),
        FinishRotations,
    }

    /// What a departure or a timer may send: news of a file transfer, and a
    /// secure room's ROOM_REKEYING.
    fn is_news(opcode: u8) -> bool {
        is_transfer_news(opcode) || opcode == secure_opcode::ROOM_REKEYING
    }

    fn name() -> impl Strategy<Value = Bytes> {
        prop_oneof![
            Just("alice"),
            Just("bob"),
            Just("rand0"),
            Just("rand3"),
            Just(""),
            Just("a b"),
            Just("h\u{e9}")
        ]
        .prop_map(bytes)
    }

    fn room() -> impl Strategy<Value = Bytes> {
        prop_oneof![3 => Just("lobby"), 3 => Just("r2"), 1 => Just(""), 1 => Just("x\ty")]
            .prop_map(bytes)
    }

    fn password() -> impl Strategy<Value = Bytes> {
        prop_oneof![3 => Just(""), 1 => Just("pw"), 1 => Just("other")].prop_map(bytes)
    }

    /// Weighted towards joining and talking, so that rooms fill up; a LEAVE
    /// outside a room ends the connection, so it comes less often.
    fn message() -> impl Strategy<Value = ClientMessage> {
        prop_oneof![
            1 => Just(ClientMessage::Hello {
                greeting: Bytes::new()
            }),
            1 => Just(ClientMessage::Heartbeat {
                payload: Bytes::new()
            }),
            2 => name().prop_map(|name| ClientMessage::Nick { name }),
            4 => (room(), password())
                .prop_map(|(room, password)| ClientMessage::Join { room, password }),
            1 => Just(ClientMessage::Leave),
            1 => Just(ClientMessage::ListUsers),
            1 => Just(ClientMessage::ListRooms),
            2 => name().prop_map(|target| ClientMessage::DirectMessage {
                target,
                text: bytes("hi")
            }),
            2 => room().prop_map(|room| ClientMessage::RoomMessage {
                room,
                text: bytes("hi")
            }),
            2 => name().prop_map(|target| ClientMessage::DmKeyRequest { target }),
            4 => file_request().prop_map(ClientMessage::File),
        ]
    }

    /// File requests about the first few transfer ids, so that decisions,
    /// chunks and acks often meet a transfer that exists.
    fn file_request() -> impl Strategy<Value = FileRequest> {
        let id = 1..=2u32;
        let index = 0..3u32;
        prop_oneof![
            2 => (prop_oneof![3 => Just(Bytes::new()), 1 => name()], 0..3_500u64, 1..=8u8).prop_map(
                |(target, size, window)| FileRequest::Offer {
                    target,
                    meta: FileMeta {
                        name: bytes("f.txt"),
                        size,
                        chunk_size: 1_000,
                        chunk_count: size.div_ceil(1_000) as u32,
                        flags: 1,
                        key_id: 1,
                        nonce: [0; 16],
                        manifest: bytes("sealed manifest"),
                        counter: 1,
                        signature: [0; 64],
                    },
                    window,
                }
            ),
            6 => (id.clone(), prop::bool::weighted(0.8)).prop_map(|(id, accept)| FileRequest::Decision { id, accept }),
            3 => (id.clone(), index.clone(), 0..1_100usize)
                .prop_map(|(id, index, len)| FileRequest::Chunk { id, index, data: Bytes::from(vec![7; len]) }),
            3 => (id.clone(), index).prop_map(|(id, index)| FileRequest::Ack { id, index }),
            1 => id.clone().prop_map(|id| FileRequest::Done { id }),
            1 => id.clone().prop_map(|id| FileRequest::Resume { id, token: [0; 16], proof: [0; 64] }),
            1 => id.prop_map(|id| FileRequest::Cancel { id }),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            2 => (prop::option::of(1..=2u8), any::<bool>()).prop_map(|(seed, tls)| Op::Connect(seed, tls)),
            1 => (0..6usize).prop_map(Op::Disconnect),
            12 => (0..6usize, message()).prop_map(|(client, message)| Op::Send(client, message)),
            2 => (0..6usize, 0..=2u8).prop_map(|(client, seed)| Op::Register(client, seed)),
            2 => (0..6usize, 1..=2u8, name()).prop_map(|(client, seed, name)| Op::SignedNick(client, seed, name)),
            // Mostly short waits, so that sessions live long enough to fill
            // rooms; sometimes past the idle timeout.
            2 => prop_oneof![4 => 0..5_000u64, 1 => 0..40_000u64].prop_map(Op::Wait),
            2 => Just(Op::FinishRotations),
        ]
    }

    /// Ops for a session that is mostly file transfer: the clients are
    /// those of [`file_prelude`], and most of what they send is about files.
    fn file_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            1 => Just(Op::Connect(Some(1), false)),
            1 => (0..6usize).prop_map(Op::Disconnect),
            12 => (0..5usize, file_request()).prop_map(|(client, request)| Op::Send(client, ClientMessage::File(request))),
            1 => (0..6usize).prop_map(|client| Op::Send(client, ClientMessage::Leave)),
            2 => prop_oneof![4 => 0..5_000u64, 1 => 0..40_000u64].prop_map(Op::Wait),
        ]
    }

    /// Three secure clients and one legacy client in one room.
    fn file_prelude(h: &mut Harness) -> Vec<ConnId> {
        (1..=4)
            .map(|id| {
                let conn = h.connected(id);
                if id < 4 {
                    let name = h.hub.name_of(conn).unwrap().to_vec();
                    let register =
                        TestIdentity::new(id as u8).register(&name, &PLAIN_CHANNEL_BINDING);
                    assert_eq!(sent(&h.send(conn, register)), [(conn, ok())]);
                }
                h.join(conn, "lobby", "");
                conn
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn promises_hold_in_any_session(ops in proptest::collection::vec(op(), 1..60)) {
            check_session(ops, false)?;
        }

        #[test]
        fn promises_hold_in_any_file_transfer(ops in proptest::collection::vec(file_op(), 1..80)) {
            check_session(ops, true)?;
        }
    }

    /// Runs the ops and checks the promises of the module documentation
    /// after each, starting from [`file_prelude`] when `files` is set.
    fn check_session(ops: Vec<Op>, files: bool) -> Result<(), TestCaseError> {
        {
            let defaults = Limits::default();
            let config = Limits {
                message_rate: Rate {
                    limit: 3,
                    ..defaults.message_rate
                },
                idle_timeout: Duration::from_secs(30),
                allow_secure_on_plain: true,
                room_key_lifetime: Duration::from_secs(50),
                ..defaults
            };
            let mut h = Harness::with(config);
            let mut conns: Vec<ConnId> = if files {
                file_prelude(&mut h)
            } else {
                Vec::new()
            };
            h.finish_rotations();
            // Connections that registered a key; a key is never taken back.
            let mut secure: HashSet<ConnId> = conns
                .iter()
                .copied()
                .filter(|conn| h.hub.is_secure(*conn))
                .collect();
            for op in ops {
                // Registrations and signed renames are signed for the
                // connection as it is when they are sent.
                let op = match op {
                    Op::Register(index, seed) => {
                        let Some(&conn) = conns.get(index) else {
                            continue;
                        };
                        let name = h.hub.name_of(conn).map_or_else(Vec::new, <[u8]>::to_vec);
                        let binding = h
                            .hub
                            .channel_binding(conn)
                            .copied()
                            .unwrap_or(PLAIN_CHANNEL_BINDING);
                        let signed_for = if seed == 0 {
                            b"someone else".to_vec()
                        } else {
                            name.clone()
                        };
                        let mut register =
                            TestIdentity::new(seed.max(1)).register(&signed_for, &binding);
                        if let ClientMessage::RegisterKey(registration) = &mut register {
                            // The name proof over the right name; possession
                            // over the wrong one when seed is 0.
                            registration.name_proof =
                                TestIdentity::new(seed.max(1)).block(&name).name_proof;
                        }
                        Op::Send(index, register)
                    }
                    Op::SignedNick(index, seed, name) => {
                        Op::Send(index, TestIdentity::new(seed).signed_nick(&name))
                    }
                    op => op,
                };
                let out = match op {
                    Op::Register(..) | Op::SignedNick(..) => unreachable!("made a Send above"),
                    Op::Connect(key_seed, tls) => {
                        let conn = h.connected(conns.len() as u64 + 1);
                        conns.push(conn);
                        let binding = if tls {
                            [conn.0 as u8; 32]
                        } else {
                            PLAIN_CHANNEL_BINDING
                        };
                        if tls {
                            h.hub.channel_bound(conn, binding);
                        }
                        let Some(seed) = key_seed else { continue };
                        let name = h.hub.name_of(conn).unwrap().to_vec();
                        let out = h.send(conn, TestIdentity::new(seed).register(&name, &binding));
                        prop_assert_eq!(sent(&out), [(conn, ok())]);
                        out
                    }
                    Op::Disconnect(index) => {
                        let Some(&conn) = conns.get(index) else {
                            continue;
                        };
                        let out = h.disconnect(conn);
                        let news_only = sent(&out).iter().all(|(_, frame)| is_news(frame[6]));
                        prop_assert!(news_only, "a departure sends only news");
                        out
                    }
                    Op::Wait(ms) => {
                        let out = h.advance(Duration::from_millis(ms));
                        let news_only = sent(&out).iter().all(|(_, frame)| is_news(frame[6]));
                        prop_assert!(news_only, "timers send only news");
                        out
                    }
                    Op::FinishRotations => {
                        let out = h.finish_rotations();
                        for (to, frame) in sent(&out) {
                            prop_assert_eq!(frame[6], 0x84, "a rotation sends only room keys");
                            let room = &frame[8..8 + usize::from(frame[7])];
                            prop_assert_eq!(
                                h.hub.room_of(to),
                                Some(room),
                                "a room key to a non-member"
                            );
                        }
                        out
                    }
                    Op::Send(index, message) => {
                        let Some(&conn) = conns.get(index) else {
                            continue;
                        };
                        let was_connected = h.hub.is_connected(conn);
                        let room_before = h.hub.room_of(conn).map(Bytes::copy_from_slice);
                        let members_before: Vec<ConnId> = room_before
                            .as_ref()
                            .and_then(|room| h.hub.directory.room(room))
                            .map_or_else(Vec::new, |room| room.members().to_vec());
                        let is_request = message.expects_response();
                        let is_room_message = matches!(message, ClientMessage::RoomMessage { .. });
                        let out = h.send(conn, message);
                        let own: Vec<Vec<u8>> = sent(&out)
                            .into_iter()
                            .filter(|(to, _)| *to == conn)
                            .map(|(_, frame)| frame)
                            .collect();
                        let responses: Vec<u8> = own
                            .iter()
                            .filter(|frame| frame[6] == 0x9a)
                            .map(|frame| frame[7])
                            .collect();
                        let expected = usize::from(was_connected && is_request);
                        prop_assert_eq!(
                            responses.len(),
                            expected,
                            "one response per request: {:?}",
                            out
                        );
                        prop_assert!(responses.iter().all(|status| *status != 3));
                        if let Some(reply) = own.iter().position(|frame| frame[6] == 0x9a) {
                            let after = &own[reply + 1..];
                            let part_of_reply = |frame: &Vec<u8>| {
                                is_secure_only(frame[6]) && !is_transfer_news(frame[6])
                            };
                            prop_assert!(!after.iter().any(part_of_reply), "the 9a comes last");
                        }
                        let unsolicited = sent(&out)
                            .iter()
                            .any(|(to, frame)| *to != conn && frame[6] == 0x9a);
                        prop_assert!(!unsolicited, "a 9a to someone who asked nothing");
                        if is_room_message {
                            for (to, _) in sent(&out).iter().filter(|(to, _)| *to != conn) {
                                prop_assert!(members_before.contains(to), "relay to a non-member");
                            }
                        }
                        out
                    }
                };
                secure.extend(conns.iter().copied().filter(|conn| h.hub.is_secure(*conn)));
                for (to, frame) in sent(&out) {
                    prop_assert!(frame.len() > 7, "zero-length frame");
                    if is_secure_only(frame[6]) {
                        prop_assert!(
                            secure.contains(&to),
                            "opcode {:02x} to legacy {}",
                            frame[6],
                            to
                        );
                    } else {
                        prop_assert!(matches!(frame[6], 0x9a | 0x15 | 0x12), "unknown opcode");
                    }
                    let closing = closed(&out).iter().any(|(conn, _)| *conn == to);
                    prop_assert!(
                        h.hub.is_connected(to) || closing,
                        "frame to a gone connection"
                    );
                }
                h.hub.check_invariants().unwrap();
            }
        }
        Ok(())
    }
}
