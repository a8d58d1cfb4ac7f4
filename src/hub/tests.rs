//! The hub driven directly, with a fake clock: every timer is exact and
//! instant.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;

use super::harness::Harness;
use super::*;

/// Shorthands for the tests below.
impl Harness {
    fn with_defaults() -> Harness {
        Harness::new(&Config::default())
    }

    /// Opens connection `id`, which must be accepted silently.
    fn connected(&mut self, id: u64) -> ConnId {
        let conn = ConnId(id);
        let out = self.connect(conn);
        assert!(out.is_empty(), "connect sends nothing: {out:?}");
        conn
    }

    /// Handles a message (running its password jobs) and checks the
    /// hub's invariants afterwards.
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

fn bytes(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

/// The frames sent, as (recipient, bytes), in order.
fn sent(actions: &[Action]) -> Vec<(ConnId, Vec<u8>)> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Send { to, frame } => Some((*to, frame.to_vec())),
            _ => None,
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
    h.hub.disconnect(b, CloseReason::ClientClosed);
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
    assert_eq!(h.hub.room_count(), 2);
    h.hub.disconnect(b, CloseReason::ClientClosed);
    assert_eq!(h.hub.room_count(), 1, "lobby deleted with its last member");
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
fn room_passwords_are_argon2id_and_checked() {
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
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains("pw1"));
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
    h.hub.disconnect(a, CloseReason::ClientClosed);
    let c = h.connected(3);
    h.join(c, "r", "new");
    h.run_password_job(job, &mut out);
    let Some(Action::Password(again)) = out.pop() else {
        panic!("judged again: {out:?}")
    };
    h.run_password_job(again, &mut out);
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
    h.hub
        .password_checked(a, job.ticket + 1, PasswordOutcome::Verified(true), &mut out);
    assert!(out.is_empty(), "wrong ticket ignored");
    h.hub
        .password_checked(a, job.ticket, PasswordOutcome::Busy, &mut out);
    assert_eq!(sent(&out), [(a, response(2, text::PASSWORDS_BUSY))]);
    assert_eq!(h.hub.room_count(), 0);
}

#[test]
fn leave_in_a_room_stays_and_leave_outside_closes_after_the_reply() {
    let mut h = Harness::with_defaults();
    let a = h.connected(1);
    h.join(a, "r", "");
    let out = h.send(a, ClientMessage::Leave);
    assert_eq!(sent(&out), [(a, ok())]);
    assert!(closed(&out).is_empty());
    assert_eq!(h.hub.room_count(), 0);
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
    // Encoded once: both recipients share one buffer.
    let frames: Vec<&Bytes> = out
        .iter()
        .filter_map(|action| match action {
            Action::Send { to, frame } if *to != a => Some(frame),
            _ => None,
        })
        .collect();
    assert_eq!(frames[0].as_ptr(), frames[1].as_ptr());
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
    assert_eq!(h.hub.poll_timeout(), Some(h.now + Duration::from_secs(30)));
    let heartbeat = || ClientMessage::Heartbeat {
        payload: Bytes::new(),
    };
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
fn the_connection_limit_refuses_with_try_later() {
    let mut h = Harness::new(&Config {
        max_connections: 1,
        ..Config::default()
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
    assert_eq!(h.hub.user_count(), 1);
}

#[test]
fn malformed_input_is_answered_then_closed() {
    let mut h = Harness::with_defaults();
    let a = h.connected(1);
    h.join(a, "r", "");
    let mut out = Vec::new();
    h.hub.reject_malformed(
        a,
        &crate::protocol::ParseError::UnknownOpcode(0x77),
        &mut out,
    );
    assert_eq!(
        sent(&out),
        [(a, response(1, "Malformed frame: unknown opcode 0x77."))]
    );
    assert_eq!(closed(&out), [(a, CloseReason::Malformed)]);
    assert_eq!(h.hub.room_count(), 0);
    h.hub.check_invariants().unwrap();
}
