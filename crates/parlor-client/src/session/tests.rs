//! The session against scripted server frames: no sockets, and time is
//! whatever the test says.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rsa::pkcs8::DecodePublicKey;

use super::*;
use parlor_crypto::{kat, IssuedKey, Keyring};
use parlor_proto::legacy::{encode_direct_message, encode_response, encode_room_message};
use parlor_proto::{secure, FrameCodec};

const NO_KEY: &[u8] = b"User 'leg' has no key; messages to them are not encrypted.";

/// A session of "alice" (the known-answer key) and its clock.
struct Alice {
    session: ClientSession,
    now: Instant,
}

impl Alice {
    /// Connected and, when `secure`, with its key registered.
    fn connected(secure: bool) -> Alice {
        let identity = secure.then(kat::identity);
        let mut alice = Alice {
            session: ClientSession::new(identity),
            now: Instant::now(),
        };
        let connect = alice.line("\\connect 127.0.0.1:4170");
        assert_eq!(connect, [Output::Connect("127.0.0.1:4170".into())]);
        let hello = alice.opened();
        assert_eq!(
            sent(&hello),
            [ClientMessage::Hello {
                greeting: Bytes::from_static(GREETING)
            }]
        );
        let outputs = alice.reply(0, b"alice");
        assert_eq!(
            events(&outputs),
            [UserEvent::Connected {
                name: "alice".into()
            }]
        );
        if secure {
            let key = Bytes::copy_from_slice(kat::identity().public_key_der());
            assert_eq!(sent(&outputs), [ClientMessage::RegisterKey { key }]);
            let outputs = alice.reply(0, b"");
            assert_eq!(events(&outputs), [UserEvent::KeyRegistered { bits: 2048 }]);
        } else {
            assert_eq!(sent(&outputs), []);
        }
        alice
    }

    fn line(&mut self, line: &str) -> Vec<Output> {
        let mut out = Vec::new();
        self.session.handle_line(line, self.now, &mut out);
        out
    }

    /// The connection asked for is open.
    fn opened(&mut self) -> Vec<Output> {
        let mut out = Vec::new();
        self.session.handle_connected(None, self.now, &mut out);
        out
    }

    fn closed(&mut self, reason: &str) -> Vec<Output> {
        let mut out = Vec::new();
        self.session.handle_closed(reason, &mut out);
        out
    }

    fn receive(&mut self, wire: &[u8]) -> Vec<Output> {
        let mut buffer = BytesMut::from(wire);
        let frame = FrameCodec::new(usize::MAX)
            .decode(&mut buffer)
            .unwrap()
            .unwrap();
        assert!(buffer.is_empty(), "one frame at a time");
        let mut out = Vec::new();
        self.session.handle_frame(&frame, self.now, &mut out);
        out
    }

    fn reply(&mut self, status: u8, data: &[u8]) -> Vec<Output> {
        self.receive(&encode_response(status, std::iter::once(data)))
    }

    fn secure(&mut self, message: SecureMessage) -> Vec<Output> {
        self.receive(&message.encode())
    }

    /// Joins `room` as the server confirms it, with `secure` room flags.
    fn join(&mut self, room: &str, secure: bool) -> Vec<Output> {
        let outputs = self.line(&format!("\\join {room}"));
        assert!(matches!(&sent(&outputs)[..], [ClientMessage::Join { .. }]));
        let room = Bytes::copy_from_slice(room.as_bytes());
        if self.session.identity.is_some() {
            assert_eq!(self.secure(SecureMessage::RoomCreated { room, secure }), []);
        }
        self.reply(0, b"")
    }
}

/// Another secure user, holding the same keys as the server gave alice.
struct Peer {
    name: &'static [u8],
    identity: Identity,
    keyring: Keyring,
}

impl Peer {
    fn new(name: &'static [u8]) -> Peer {
        let mut keyring = Keyring::default();
        keyring.add_peer(b"alice", kat::peer_key());
        Peer {
            name,
            identity: Identity::generate(2048).unwrap(),
            keyring,
        }
    }

    fn key_der(&self) -> Bytes {
        Bytes::copy_from_slice(self.identity.public_key_der())
    }
}

/// What the server does: an RSA-OAEP-SHA256 wrap for `der`'s owner.
fn wrap(der: &[u8], key: &[u8; 32], label: &'static [u8]) -> Bytes {
    let public = rsa::PublicKey::from_public_key_der(der).unwrap();
    let padding = rsa::Oaep::<rsa::sha2::Sha256>::new_with_label(label);
    public
        .encrypt(&mut rand::rng(), padding, key)
        .unwrap()
        .into()
}

fn room_key_for_alice(room: &str, epoch: u32, key: &[u8; 32]) -> SecureMessage {
    SecureMessage::RoomKey {
        room: Bytes::copy_from_slice(room.as_bytes()),
        epoch,
        wrapped: wrap(
            kat::identity().public_key_der(),
            key,
            secure::ROOM_KEY_OAEP_LABEL,
        ),
    }
}

fn sent(outputs: &[Output]) -> Vec<ClientMessage> {
    outputs
        .iter()
        .filter_map(|output| match output {
            Output::Send(bytes) => {
                let mut buffer = BytesMut::from(&bytes[..]);
                let frame = FrameCodec::default().decode(&mut buffer).unwrap().unwrap();
                Some(ClientMessage::parse(&frame).unwrap())
            }
            _ => None,
        })
        .collect()
}

fn events(outputs: &[Output]) -> Vec<UserEvent> {
    outputs
        .iter()
        .filter_map(|output| match output {
            Output::Event(event) => Some(event.clone()),
            _ => None,
        })
        .collect()
}

fn message(
    kind: MessageKind,
    room: Option<&str>,
    from: &str,
    text: &str,
    secure: bool,
) -> UserEvent {
    UserEvent::Message {
        kind,
        room: room.map(str::to_string),
        from: from.to_string(),
        text: text.to_string(),
        secure,
    }
}

#[test]
fn keeps_one_request_on_the_wire_like_the_legacy_client() {
    let mut alice = Alice::connected(false);
    assert_eq!(
        sent(&alice.line("\\nick bob")),
        [ClientMessage::Nick { name: "bob".into() }]
    );
    assert_eq!(sent(&alice.line("\\join r")), []);
    assert_eq!(sent(&alice.line("hello")), []);
    // Status 03 answers nothing.
    assert_eq!(alice.reply(3, b"still there?"), []);
    let outputs = alice.reply(0, b"");
    assert_eq!(events(&outputs), [UserEvent::Nick { name: "bob".into() }]);
    assert!(matches!(&sent(&outputs)[..], [ClientMessage::Join { .. }]));
    let outputs = alice.reply(0, b"");
    assert_eq!(
        sent(&outputs),
        [ClientMessage::RoomMessage {
            room: "r".into(),
            text: "hello".into()
        }]
    );
    let outputs = alice.reply(1, b"Slow down: at most 5 messages per 5 seconds.");
    assert_eq!(
        events(&outputs),
        [UserEvent::Failed {
            text: "Slow down: at most 5 messages per 5 seconds.".into()
        }]
    );
}

#[test]
fn quit_waits_its_turn_and_ends_the_input() {
    let mut alice = Alice::connected(false);
    alice.line("\\list rooms");
    assert_eq!(alice.line("\\quit"), []);
    let outputs = alice.reply(0, b"\x05lobby");
    assert_eq!(
        outputs,
        [
            Output::Event(UserEvent::Rooms {
                names: vec!["lobby".into()]
            }),
            Output::Close,
            Output::Event(UserEvent::Disconnected { reason: None }),
            Output::Quit,
        ]
    );
}

#[test]
fn offline_commands_and_bad_lines_say_why() {
    let mut session = ClientSession::new(None);
    let now = Instant::now();
    let mut line = |line: &str| {
        let mut out = Vec::new();
        session.handle_line(line, now, &mut out);
        out
    };
    let error = |text: &str| vec![Output::Event(UserEvent::Error { text: text.into() })];
    assert_eq!(line("\\join r"), error("Not connected to a chat server."));
    assert_eq!(
        line("\\connect localhost"),
        error("Could not connect to the chat server. (Invalid port)")
    );
    assert_eq!(line("\\join"), error("Invalid command."));
    assert_eq!(line("\\quit"), [Output::Quit]);
}

#[test]
fn inputs_append_to_the_callers_buffer() {
    let mut session = ClientSession::new(None);
    let now = Instant::now();
    let mut out = vec![Output::Close];
    session.handle_line("\\join r", now, &mut out);
    session.handle_timeout(now, &mut out);
    session.handle_line("\\quit", now, &mut out);
    assert_eq!(
        out,
        [
            Output::Close,
            Output::Event(UserEvent::Error {
                text: "Not connected to a chat server.".into()
            }),
            Output::Quit,
        ]
    );
}

#[test]
fn heartbeats_after_six_quiet_seconds() {
    let mut alice = Alice::connected(false);
    let start = alice.now;
    assert_eq!(alice.session.poll_timeout(), Some(start + HEARTBEAT_AFTER));
    let mut out = Vec::new();
    alice
        .session
        .handle_timeout(start + Duration::from_secs(5), &mut out);
    assert_eq!(out, []);
    alice
        .session
        .handle_timeout(start + HEARTBEAT_AFTER, &mut out);
    assert_eq!(
        sent(&out),
        [ClientMessage::Heartbeat {
            payload: Bytes::from_static(HEARTBEAT)
        }]
    );
    assert_eq!(
        alice.session.poll_timeout(),
        Some(start + HEARTBEAT_AFTER + HEARTBEAT_AFTER)
    );
}

#[test]
fn a_frame_the_protocol_does_not_allow_ends_the_connection() {
    let mut alice = Alice::connected(false);
    let outputs = alice.receive(&[0, 0, 0, 0, 0x04, 0x17, 0x77]);
    assert_eq!(outputs[0], Output::Close);
    assert!(matches!(
        &outputs[1],
        Output::Event(UserEvent::Disconnected { reason: Some(reason) }) if reason.contains("0x77")
    ));
    assert!(!alice.session.is_connected());
}

#[test]
fn legacy_mode_speaks_plaintext_and_ignores_secure_frames() {
    let mut alice = Alice::connected(false);
    let outputs = alice.line("\\join vault");
    assert!(matches!(&sent(&outputs)[..], [ClientMessage::Join { .. }]));
    assert_eq!(
        events(&alice.reply(0, b"")),
        [UserEvent::Joined {
            room: "vault".into(),
            secure: false
        }]
    );
    alice.line("hi");
    let wire = encode_room_message(b"vault", b"bob", b"\x01\x01 looks sealed");
    let outputs = alice.receive(&wire);
    assert_eq!(
        events(&outputs),
        [message(
            MessageKind::Room,
            Some("vault"),
            "bob",
            "\u{1}\u{1} looks sealed",
            false
        )]
    );
    let stray = alice.secure(SecureMessage::NickSet { name: "x".into() });
    assert!(matches!(&events(&stray)[..], [UserEvent::Warning { .. }]));
}

#[test]
fn room_text_waits_for_the_key_and_goes_out_sealed() {
    let mut alice = Alice::connected(true);
    let outputs = alice.join("vault", true);
    assert_eq!(
        events(&outputs),
        [UserEvent::Joined {
            room: "vault".into(),
            secure: true
        }]
    );
    let outputs = alice.line("said early");
    assert_eq!(
        events(&outputs),
        [UserEvent::Held {
            room: "vault".into()
        }]
    );
    assert_eq!(sent(&outputs), []);
    // Closing waits for the held message.
    assert_eq!(alice.line("\\disconnect"), []);

    let key = [7; 32];
    let outputs = alice.secure(room_key_for_alice("vault", 1, &key));
    assert_eq!(
        events(&outputs),
        [UserEvent::RoomKey {
            room: "vault".into(),
            epoch: 1
        }]
    );
    let [ClientMessage::RoomMessage { room, text }] = &sent(&outputs)[..] else {
        panic!("one sealed room message: {outputs:?}");
    };
    assert_eq!(&room[..], b"vault");
    let mut bob = Peer::new(b"bob");
    bob.keyring
        .add_room_key(b"vault", 1, &IssuedKey::new(key), alice.now);
    let opened = bob
        .keyring
        .open_room(b"vault", b"alice", text, alice.now)
        .unwrap();
    assert_eq!(opened.as_slice(), b"said early");

    let outputs = alice.reply(0, b"");
    assert_eq!(
        events(&outputs)[0],
        UserEvent::Sent {
            kind: MessageKind::Room,
            room: Some("vault".into()),
            from: "alice".into(),
            to: None,
            text: "said early".into(),
            secure: true,
        }
    );
    assert!(outputs.contains(&Output::Close));
}

#[test]
fn plaintext_rooms_are_announced_with_a_warning() {
    let mut alice = Alice::connected(true);
    let outputs = alice.join("lobby", false);
    let events = events(&outputs);
    assert_eq!(
        events[0],
        UserEvent::Joined {
            room: "lobby".into(),
            secure: false
        }
    );
    assert!(
        matches!(&events[1], UserEvent::Warning { text } if text.contains("not end-to-end encrypted"))
    );
    assert_eq!(
        sent(&alice.line("hi all")),
        [ClientMessage::RoomMessage {
            room: "lobby".into(),
            text: "hi all".into()
        }]
    );
}

#[test]
fn received_room_messages_are_opened_once_and_checked() {
    let mut alice = Alice::connected(true);
    alice.join("vault", true);
    let key = [9; 32];
    let mut bob = Peer::new(b"bob");
    bob.keyring
        .add_room_key(b"vault", 1, &IssuedKey::new(key), alice.now);
    alice.secure(SecureMessage::PeerKey {
        name: "bob".into(),
        key: bob.key_der(),
    });
    alice.secure(room_key_for_alice("vault", 1, &key));

    let sealed = bob
        .keyring
        .seal_room(b"vault", bob.name, &bob.identity, b"hi alice")
        .unwrap();
    let wire = encode_room_message(b"vault", b"bob", &sealed);
    assert_eq!(
        events(&alice.receive(&wire)),
        [message(
            MessageKind::Room,
            Some("vault"),
            "bob",
            "hi alice",
            true
        )]
    );
    let rejected = UserEvent::Rejected {
        kind: MessageKind::Room,
        room: Some("vault".into()),
        from: "bob".into(),
    };
    assert_eq!(
        events(&alice.receive(&wire)),
        std::slice::from_ref(&rejected),
        "a replay"
    );
    let mut flipped = wire.to_vec();
    *flipped.last_mut().unwrap() ^= 1;
    assert_eq!(
        events(&alice.receive(&flipped)),
        std::slice::from_ref(&rejected),
        "a bad signature"
    );
    let plain = encode_room_message(b"vault", b"bob", b"trust me");
    assert_eq!(
        events(&alice.receive(&plain)),
        [rejected],
        "plaintext in a secure room"
    );
}

#[test]
fn a_dm_to_a_secure_user_gets_a_key_first_and_goes_out_sealed() {
    let mut alice = Alice::connected(true);
    let mut bob = Peer::new(b"bob");
    let outputs = alice.line("\\msg bob meet at noon");
    assert_eq!(
        sent(&outputs),
        [ClientMessage::DmKeyRequest {
            target: "bob".into()
        }]
    );

    let key = [5; 32];
    let issued = SecureMessage::DmKeyIssued {
        target: "bob".into(),
        key: bob.key_der(),
        key_id: 42,
        wrapped: wrap(
            kat::identity().public_key_der(),
            &key,
            secure::DM_KEY_OAEP_LABEL,
        ),
    };
    assert_eq!(
        events(&alice.secure(issued)),
        [
            UserEvent::PeerKey {
                name: "bob".into(),
                renamed_from: None
            },
            UserEvent::DmKey {
                peer: "bob".into(),
                key_id: 42
            },
        ]
    );
    let outputs = alice.reply(0, b"");
    let [ClientMessage::DirectMessage { target, text }] = &sent(&outputs)[..] else {
        panic!("one sealed DM: {outputs:?}");
    };
    assert_eq!(&target[..], b"bob");
    bob.keyring
        .add_dm_key(42, b"alice", &IssuedKey::new(key))
        .unwrap();
    let opened = bob
        .keyring
        .open_dm(b"bob", b"alice", text, alice.now)
        .unwrap();
    assert_eq!(opened.as_slice(), b"meet at noon");

    // The answer, under the same key.
    let answer = bob
        .keyring
        .seal_dm(b"alice", b"bob", &bob.identity, b"ok")
        .unwrap();
    let outputs = alice.receive(&encode_direct_message(b"bob", &answer));
    assert_eq!(
        events(&outputs),
        [message(MessageKind::Dm, None, "bob", "ok", true)]
    );
    // A later DM needs no new key.
    alice.reply(0, b"");
    let outputs = alice.line("\\msg bob again");
    assert!(matches!(
        &sent(&outputs)[..],
        [ClientMessage::DirectMessage { .. }]
    ));
}

#[test]
fn a_dm_to_a_user_without_a_key_is_sent_plaintext_after_a_warning() {
    let mut alice = Alice::connected(true);
    alice.line("\\msg leg hello");
    let outputs = alice.reply(1, NO_KEY);
    assert!(
        matches!(&events(&outputs)[..], [UserEvent::Warning { text }] if text.contains("unencrypted"))
    );
    assert_eq!(
        sent(&outputs),
        [ClientMessage::DirectMessage {
            target: "leg".into(),
            text: "hello".into()
        }]
    );
    let outputs = alice.reply(0, b"");
    assert!(matches!(
        &events(&outputs)[..],
        [UserEvent::Sent { secure: false, .. }]
    ));
    // Plaintext DMs arrive marked as such.
    let outputs = alice.receive(&encode_direct_message(b"leg", b"hi"));
    assert_eq!(
        events(&outputs),
        [message(MessageKind::Dm, None, "leg", "hi", false)]
    );
}

#[test]
fn a_dm_to_nobody_fails_without_sending_anything() {
    let mut alice = Alice::connected(true);
    alice.line("\\msg nobody hello");
    assert_eq!(
        alice.secure(SecureMessage::NoSuchUser {
            name: "nobody".into()
        }),
        []
    );
    let outputs = alice.reply(1, b"Nick not present");
    assert_eq!(
        events(&outputs),
        [UserEvent::Failed {
            text: "Nick not present".into()
        }]
    );
    assert_eq!(sent(&outputs), []);
}

#[test]
fn leaving_a_room_forgets_its_keys() {
    let mut alice = Alice::connected(true);
    alice.join("vault", true);
    alice.secure(room_key_for_alice("vault", 1, &[1; 32]));
    alice.line("\\leave");
    assert_eq!(
        alice.secure(SecureMessage::RoomLeft {
            room: "vault".into()
        }),
        []
    );
    assert_eq!(
        events(&alice.reply(0, b"")),
        [UserEvent::Left {
            room: "vault".into()
        }]
    );
    // Back in: nothing is sealed with the old key.
    alice.join("vault", true);
    assert_eq!(
        events(&alice.line("hi")),
        [UserEvent::Held {
            room: "vault".into()
        }]
    );
}

mod files;
