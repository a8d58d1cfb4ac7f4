//! The session against scripted server frames: no sockets, and time is
//! whatever the test says.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::*;
use crate::memory::MemoryFile;
use parlor_crypto::identity::{Fingerprint, PeerIdentity};
use parlor_crypto::{kat, Keyring};
use parlor_proto::legacy::{encode_direct_message, encode_response, encode_room_message};
use parlor_proto::secure::{self, SecureMessage};
use parlor_proto::FrameCodec;

const NO_KEY: &[u8] = b"User 'leg' has no key; messages to them are not encrypted.";
const SERVER: &str = "127.0.0.1:4170";
const INCARNATION: u64 = 77;

/// A session of "alice" (the known-answer identity) and its clock.
struct Alice {
    session: ClientSession,
    now: Instant,
}

impl Alice {
    /// Connected and, when `secure`, with its key registered.
    fn connected(secure: bool) -> Alice {
        Alice::connected_with(secure.then(kat::identity).map(ClientSession::new_secure))
    }

    /// Connected with `session` (`None`: a legacy one), registering its
    /// identity if it has one.
    fn connected_with(session: Option<ClientSession>) -> Alice {
        let secure = session.is_some();
        let mut alice = Alice {
            session: session.unwrap_or_else(|| ClientSession::new(None)),
            now: Instant::now(),
        };
        let connect = alice.line(&format!("\\connect {SERVER}"));
        assert_eq!(connect, [Output::Connect(SERVER.into())]);
        let hello = alice.opened(None);
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
            assert!(matches!(
                &sent(&outputs)[..],
                [ClientMessage::RegisterKey(_)]
            ));
            let outputs = alice.reply(0, b"");
            assert_eq!(
                events(&outputs),
                [UserEvent::KeyRegistered {
                    bits: 2048,
                    fingerprint: kat::DISPLAY_FINGERPRINT.into()
                }]
            );
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
    fn opened(&mut self, channel_binding: Option<[u8; 32]>) -> Vec<Output> {
        let mut out = Vec::new();
        self.session
            .handle_connected(channel_binding, self.now, &mut out);
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
        let incarnation = if secure { INCARNATION } else { 0 };
        if self.session.identity.is_some() {
            let created = SecureMessage::RoomCreated {
                room,
                secure,
                incarnation,
            };
            assert_eq!(self.secure(created), []);
        }
        self.reply(0, b"")
    }

    /// The server's `81` for `peer` under `name`.
    fn peer_key(&mut self, peer: &Peer, name: &str, renamed_from: &str) -> Vec<Output> {
        self.secure(SecureMessage::PeerKey {
            name: Bytes::copy_from_slice(name.as_bytes()),
            renamed_from: Bytes::copy_from_slice(renamed_from.as_bytes()),
            identity: peer.identity.block(name.as_bytes()),
        })
    }
}

impl ClientSession {
    fn new_secure(identity: Identity) -> ClientSession {
        ClientSession::new(Some(identity))
    }
}

/// Another secure user, with its own keyring holding the keys the server
/// gave it. Identities are made once per test process: RSA keys are slow.
struct Peer {
    name: &'static [u8],
    identity: &'static Identity,
    keyring: Keyring,
}

fn identity(which: usize) -> &'static Identity {
    static IDENTITIES: [OnceLock<Identity>; 3] =
        [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    IDENTITIES[which].get_or_init(|| Identity::generate(2048).unwrap())
}

impl Peer {
    fn new(name: &'static [u8]) -> Peer {
        Peer::with_identity(name, identity(0))
    }

    fn with_identity(name: &'static [u8], identity: &'static Identity) -> Peer {
        let mut keyring = Keyring::default();
        keyring.add_peer(b"alice", None, kat::peer(), None);
        Peer {
            name,
            identity,
            keyring,
        }
    }

    fn fingerprint(&self) -> Fingerprint {
        *self.identity.fingerprint()
    }

    /// Joins vault and takes its key of `epoch`.
    fn in_vault(&mut self, epoch: u32, key: &[u8; 32]) {
        self.keyring.enter_room(b"vault", INCARNATION);
        let label =
            secure::room_key_label(b"vault", INCARNATION, epoch, self.identity.fingerprint());
        let wrapped = kat::wrap(self.identity.rsa_der(), key, &label);
        self.keyring
            .add_room_key(
                self.identity,
                b"vault",
                INCARNATION,
                epoch,
                &wrapped,
                Instant::now(),
            )
            .unwrap();
    }

    fn seal_room(&mut self, text: &[u8]) -> Vec<u8> {
        self.keyring
            .seal_room(b"vault", self.name, self.identity, text)
            .unwrap()
    }
}

fn room_key_for_alice(room: &str, epoch: u32, key: &[u8; 32]) -> SecureMessage {
    let me = kat::identity();
    let label = secure::room_key_label(room.as_bytes(), INCARNATION, epoch, me.fingerprint());
    SecureMessage::RoomKey {
        room: Bytes::copy_from_slice(room.as_bytes()),
        incarnation: INCARNATION,
        epoch,
        wrapped: kat::wrap(me.rsa_der(), key, &label).into(),
    }
}

fn dm_key_issued(peer: &Peer, name: &str, key_id: u32, key: &[u8; 32]) -> SecureMessage {
    let me = kat::identity();
    let label = secure::dm_key_label(key_id, me.fingerprint(), &peer.fingerprint());
    SecureMessage::DmKeyIssued {
        target: Bytes::copy_from_slice(name.as_bytes()),
        identity: peer.identity.block(name.as_bytes()),
        key_id,
        wrapped: kat::wrap(me.rsa_der(), key, &label).into(),
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

fn records(outputs: &[Output]) -> Vec<Record> {
    outputs
        .iter()
        .filter_map(|output| match output {
            Output::Remember(record) => Some(record.clone()),
            _ => None,
        })
        .collect()
}

fn error_text(outputs: &[Output]) -> String {
    match &events(outputs)[..] {
        [UserEvent::Error { text }] => text.clone(),
        other => panic!("one error: {other:?}"),
    }
}

fn message(
    kind: MessageKind,
    room: Option<&str>,
    from: &str,
    text: &str,
    sealed: bool,
) -> UserEvent {
    UserEvent::Message {
        kind,
        room: room.map(str::to_string),
        from: from.to_string(),
        text: text.to_string(),
        encrypted: sealed,
        verified: sealed,
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
        line("\\trust bob"),
        error("Not connected to a chat server.")
    );
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
fn legacy_mode_speaks_plaintext_marked_and_ignores_secure_frames() {
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
    assert_eq!(
        sent(&alice.line("hi")).len(),
        1,
        "a legacy client has no other way"
    );
    let sent_event = &events(&alice.reply(0, b""))[0];
    assert!(matches!(
        sent_event,
        UserEvent::Sent {
            encrypted: false,
            ..
        }
    ));
    assert_eq!(
        sent_event.to_text().unwrap(),
        "[vault] alice (plaintext): hi"
    );
    let wire = encode_room_message(b"vault", b"bob", b"\x02\x01 looks sealed");
    assert_eq!(
        events(&alice.receive(&wire)),
        [message(
            MessageKind::Room,
            Some("vault"),
            "bob",
            "\u{2}\u{1} looks sealed",
            false
        )]
    );
    let stray = alice.secure(SecureMessage::NickSet { name: "x".into() });
    assert!(matches!(&events(&stray)[..], [UserEvent::Warning { .. }]));
}

#[test]
fn registration_proves_possession_over_the_channel_binding_and_the_nick() {
    let mut alice = Alice {
        session: ClientSession::new_secure(kat::identity()),
        now: Instant::now(),
    };
    alice.line(&format!("\\connect {SERVER}"));
    let binding = [0x5a; 32];
    alice.opened(Some(binding));
    let outputs = alice.reply(0, b"alice");
    let [ClientMessage::RegisterKey(registration)] = &sent(&outputs)[..] else {
        panic!("REGISTER_KEY: {outputs:?}");
    };
    let block = registration.identity();
    assert_eq!(block, kat::identity_block(), "what peers will receive");
    let me = PeerIdentity::from_block(&block, b"alice").unwrap();
    let possession = secure::possession_statement(&binding, b"alice");
    assert_eq!(me.verify(&possession, &registration.possession), Ok(()));
    let on_plain = secure::possession_statement(&[0; 32], b"alice");
    assert!(me.verify(&on_plain, &registration.possession).is_err());

    // Once registered, a rename is signed.
    alice.reply(0, b"");
    let outputs = alice.line("\\nick alicia");
    let [ClientMessage::SignedNick { name, name_proof }] = &sent(&outputs)[..] else {
        panic!("SIGNED_NICK: {outputs:?}");
    };
    assert_eq!(&name[..], b"alicia");
    assert_eq!(me.check_name(b"alicia", name_proof), Ok(()));
}

#[test]
fn a_refused_key_sends_nothing_in_clear_unasked() {
    let mut alice = Alice {
        session: ClientSession::new_secure(kat::identity()),
        now: Instant::now(),
    };
    alice.line(&format!("\\connect {SERVER}"));
    alice.opened(None);
    alice.reply(0, b"alice");
    let outputs = alice.reply(1, b"Plain connections cannot register keys.");
    assert!(matches!(
        &events(&outputs)[..],
        [UserEvent::Failed { .. }, UserEvent::Warning { .. }]
    ));
    alice.line("\\join lobby");
    alice.secure(SecureMessage::RoomJoined {
        room: "lobby".into(),
        secure: false,
        incarnation: 0,
    });
    alice.reply(0, b"");
    let outputs = alice.line("my secret");
    assert_eq!(sent(&outputs), []);
    assert!(error_text(&outputs).contains("\\plain TEXT"));
    let outputs = alice.line("\\msg bob my secret");
    assert_eq!(sent(&outputs), []);
    assert!(error_text(&outputs).contains("\\plainmsg bob TEXT"));
    assert_eq!(sent(&alice.line("\\plain not secret")).len(), 1);
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
    assert_eq!(
        records(&outputs),
        [Record {
            file: MemoryFile::SecureRooms,
            line: format!("{SERVER} vault"),
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
    bob.in_vault(1, &key);
    let opened = bob
        .keyring
        .open_room(b"vault", b"alice", text, alice.now)
        .unwrap();
    assert_eq!(opened.plaintext.as_slice(), b"said early");

    let outputs = alice.reply(0, b"");
    assert_eq!(
        events(&outputs)[0],
        UserEvent::Sent {
            kind: MessageKind::Room,
            room: Some("vault".into()),
            from: "alice".into(),
            to: None,
            text: "said early".into(),
            encrypted: true,
        }
    );
    assert!(outputs.contains(&Output::Close));
}

#[test]
fn room_text_held_without_a_key_is_given_up_after_a_while_and_quitting_goes_ahead() {
    let mut alice = Alice::connected(true);
    alice.join("vault", true);
    let said = alice.now;
    alice.line("said into the void");
    alice.line("and again");
    assert_eq!(
        alice.line("\\quit"),
        [],
        "quitting waits for the held lines"
    );
    let mut outputs = Vec::new();
    alice
        .session
        .handle_timeout(said + HOLD_FOR - Duration::from_millis(1), &mut outputs);
    // Only the heartbeat due by then.
    assert_eq!(events(&outputs), []);
    assert!(!outputs.contains(&Output::Quit));
    outputs.clear();
    alice.session.handle_timeout(said + HOLD_FOR, &mut outputs);
    assert_eq!(
        events(&outputs),
        [
            UserEvent::Error {
                text: "Not sent: 2 messages to room 'vault': no key came within 15 s.".into()
            },
            UserEvent::Disconnected { reason: None }
        ]
    );
    assert_eq!(sent(&outputs), [], "nothing goes out in clear or at all");
    assert!(outputs.contains(&Output::Quit), "{outputs:?}");
}

#[test]
fn keys_for_another_room_or_a_forged_epoch_are_refused() {
    let mut alice = Alice::connected(true);
    alice.join("vault", true);
    let refused = |outputs: &[Output]| matches!(&events(outputs)[..], [UserEvent::Warning { text }] if text.starts_with("refused a key"));
    assert!(refused(
        &alice.secure(room_key_for_alice("other", 1, &[1; 32]))
    ));
    alice.secure(room_key_for_alice("vault", 4, &[4; 32]));
    // An attacker's epoch u32::MAX would freeze every later rotation.
    assert!(refused(&alice.secure(room_key_for_alice(
        "vault",
        u32::MAX,
        &[9; 32]
    ))));
    assert!(refused(
        &alice.secure(room_key_for_alice("vault", 3, &[3; 32]))
    ));
    let outputs = alice.secure(room_key_for_alice("vault", 5, &[5; 32]));
    assert_eq!(
        events(&outputs),
        [UserEvent::RoomKey {
            room: "vault".into(),
            epoch: 5
        }]
    );
}

#[test]
fn after_a_departure_lines_wait_for_the_next_key() {
    let mut alice = Alice::connected(true);
    alice.join("vault", true);
    alice.secure(room_key_for_alice("vault", 2, &[2; 32]));
    let outputs = alice.secure(SecureMessage::RoomRekeying {
        room: "vault".into(),
        incarnation: INCARNATION,
        next_epoch: 3,
    });
    assert_eq!(
        events(&outputs),
        [UserEvent::Rekeying {
            room: "vault".into(),
            next_epoch: 3
        }]
    );
    let outputs = alice.line("after carol left");
    assert_eq!(sent(&outputs), []);
    assert_eq!(
        events(&outputs),
        [UserEvent::Held {
            room: "vault".into()
        }]
    );
    let outputs = alice.secure(room_key_for_alice("vault", 3, &[3; 32]));
    let [ClientMessage::RoomMessage { text, .. }] = &sent(&outputs)[..] else {
        panic!("the held line: {outputs:?}");
    };
    let header = parlor_crypto::envelope::Envelope::parse(text)
        .unwrap()
        .header;
    assert_eq!(header.epoch, 3);
}

#[test]
fn plaintext_rooms_send_only_what_is_asked_for_in_clear() {
    let mut alice = Alice::connected(true);
    let outputs = alice.join("lobby", false);
    let events_now = events(&outputs);
    assert_eq!(
        events_now[0],
        UserEvent::Joined {
            room: "lobby".into(),
            secure: false
        }
    );
    assert!(
        matches!(&events_now[1], UserEvent::Warning { text } if text.contains("not end-to-end encrypted"))
    );
    let outputs = alice.line("hi all");
    assert_eq!(sent(&outputs), [], "nothing in clear unasked");
    assert!(error_text(&outputs).contains("\\plain TEXT"));
    assert_eq!(
        sent(&alice.line("\\plain hi all")),
        [ClientMessage::RoomMessage {
            room: "lobby".into(),
            text: "hi all".into()
        }]
    );
    let echo = &events(&alice.reply(0, b""))[0];
    assert_eq!(echo.to_text().unwrap(), "[lobby] alice (plaintext): hi all");
    let heard = events(&alice.receive(&encode_room_message(b"lobby", b"leg", b"yo")));
    assert_eq!(
        heard,
        [message(
            MessageKind::Room,
            Some("lobby"),
            "leg",
            "yo",
            false
        )]
    );
    assert!(heard[0].to_json().contains(r#""encrypted":false"#));
}

#[test]
fn allow_plaintext_sends_ordinary_lines_in_clear_marked() {
    let session = ClientSession::new_secure(kat::identity()).allow_plaintext(true);
    let mut alice = Alice::connected_with(Some(session));
    alice.join("lobby", false);
    assert_eq!(sent(&alice.line("hi all")).len(), 1);
    assert!(matches!(
        &events(&alice.reply(0, b""))[..],
        [UserEvent::Sent {
            encrypted: false,
            ..
        }]
    ));
    alice.line("\\msg leg hello");
    let outputs = alice.reply(1, NO_KEY);
    assert!(matches!(&events(&outputs)[..], [UserEvent::Warning { .. }]));
    assert_eq!(
        sent(&outputs),
        [ClientMessage::DirectMessage {
            target: "leg".into(),
            text: "hello".into()
        }]
    );
}

#[test]
fn a_room_seen_secure_that_comes_back_plaintext_is_left() {
    let memory = Memory::parse("", &format!("{SERVER} vault\n"));
    let session = ClientSession::new_secure(kat::identity()).with_memory(memory);
    let mut alice = Alice::connected_with(Some(session));
    let outputs = alice.join("vault", false);
    assert!(events(&outputs).iter().any(
        |event| matches!(event, UserEvent::Warning { text } if text.contains("was end-to-end encrypted"))
    ));
    assert_eq!(sent(&outputs), [ClientMessage::Leave]);
    assert_eq!(sent(&alice.line("secret plans")), [], "nothing said there");
    assert_eq!(
        events(&alice.reply(0, b""))[0],
        UserEvent::Left {
            room: "vault".into()
        }
    );
}

#[test]
fn received_room_messages_are_opened_once_and_checked() {
    let mut alice = Alice::connected(true);
    alice.join("vault", true);
    let key = [9; 32];
    let mut bob = Peer::new(b"bob");
    bob.in_vault(1, &key);
    alice.peer_key(&bob, "bob", "");
    alice.secure(room_key_for_alice("vault", 1, &key));

    let sealed = bob.seal_room(b"hi alice");
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
fn first_sight_is_recorded_and_a_changed_key_is_loud_unverified_and_holds_dms() {
    let mut alice = Alice::connected(true);
    alice.join("vault", true);
    let key = [9; 32];
    alice.secure(room_key_for_alice("vault", 1, &key));
    let bob = Peer::new(b"bob");
    let outputs = alice.peer_key(&bob, "bob", "");
    let shown = parlor_crypto::identity::display_fingerprint(&bob.fingerprint());
    assert_eq!(
        events(&outputs),
        [UserEvent::PeerKey {
            name: "bob".into(),
            renamed_from: None,
            fingerprint: shown.clone(),
            trust: "new"
        }]
    );
    assert!(events(&outputs)[0].to_text().unwrap().contains(&shown));
    let [record] = &records(&outputs)[..] else {
        panic!("one record: {outputs:?}");
    };
    assert_eq!(record.file, MemoryFile::KnownPeers);
    assert!(record.line.starts_with(&format!("{SERVER} bob SHA256:")));

    // Bob left; mallory has his name now.
    let mut mallory = Peer::with_identity(b"bob", identity(1));
    mallory.in_vault(1, &key);
    let outputs = alice.peer_key(&mallory, "bob", "");
    let [UserEvent::KeyChanged { name, before, now }] = &events(&outputs)[..] else {
        panic!("a key change: {outputs:?}");
    };
    assert_eq!((name.as_str(), before), ("bob", &shown));
    assert_ne!(now, &shown);
    assert!(events(&outputs)[0].to_text().unwrap().contains("WARNING"));
    assert_eq!(records(&outputs), [], "the old key stays recorded");

    let sealed = mallory.seal_room(b"it's me, bob");
    let heard = events(&alice.receive(&encode_room_message(b"vault", b"bob", &sealed)));
    let [UserEvent::Message {
        verified: false,
        encrypted: true,
        ..
    }] = &heard[..]
    else {
        panic!("an unverified message: {heard:?}");
    };
    assert_eq!(
        heard[0].to_text().unwrap(),
        "[vault] bob (unverified): it's me, bob"
    );

    let outputs = alice.line("\\msg bob the codes");
    assert_eq!(sent(&outputs), []);
    assert_eq!(events(&outputs), [UserEvent::DmHeld { to: "bob".into() }]);
    let outputs = alice.line("\\whois bob");
    assert!(matches!(
        &events(&outputs)[..],
        [UserEvent::Whois {
            trust: "changed",
            ..
        }]
    ));

    let outputs = alice.line("\\trust bob");
    assert!(matches!(&events(&outputs)[..], [UserEvent::Trusted { .. }]));
    let [record] = &records(&outputs)[..] else {
        panic!("the new key recorded: {outputs:?}");
    };
    assert!(record
        .line
        .ends_with(&crate::transfer::hex(&mallory.fingerprint())));
    assert_eq!(
        sent(&outputs),
        [ClientMessage::DmKeyRequest {
            target: "bob".into()
        }],
        "the held DM goes out now"
    );
    let outputs = alice.line("\\whois bob");
    assert!(matches!(
        &events(&outputs)[..],
        [UserEvent::Whois {
            trust: "trusted",
            ..
        }]
    ));
}

#[test]
fn a_known_key_is_trusted_again_on_the_next_run() {
    let bob = Peer::new(b"bob");
    let mut memory = Memory::default();
    memory.pin(SERVER, b"bob", &bob.fingerprint());
    let session = ClientSession::new_secure(kat::identity()).with_memory(memory);
    let mut alice = Alice::connected_with(Some(session));
    let outputs = alice.peer_key(&bob, "bob", "");
    assert!(matches!(
        &events(&outputs)[..],
        [UserEvent::PeerKey {
            trust: "trusted",
            ..
        }]
    ));
    assert_eq!(records(&outputs), []);
    let text = events(&outputs)[0].to_text();
    assert_eq!(text, None, "nothing to say");
}

#[test]
fn a_rename_is_believed_only_with_the_old_names_key() {
    let mut alice = Alice::connected(true);
    let bob = Peer::new(b"bob");
    let carol = Peer::with_identity(b"carol", identity(1));
    alice.peer_key(&bob, "bob", "");
    alice.peer_key(&carol, "carol", "");
    let outputs = alice.peer_key(&bob, "robert", "bob");
    assert!(matches!(
        &events(&outputs)[..],
        [UserEvent::PeerKey { renamed_from: Some(from), .. }] if from == "bob"
    ));
    let outputs = alice.peer_key(&carol, "bobby", "robert");
    let events_now = events(&outputs);
    assert!(matches!(&events_now[0], UserEvent::Warning { text } if text.contains("not theirs")));
    assert!(matches!(
        &events_now[1],
        UserEvent::PeerKey {
            renamed_from: None,
            ..
        }
    ));
}

#[test]
fn a_peer_identity_with_a_bad_rsa_key_is_refused() {
    let mut alice = Alice::connected(true);
    let bob = Peer::new(b"bob");
    // e = 3 on bob's modulus, bound by bob's own signing key.
    use rsa::pkcs8::{DecodePublicKey, EncodePublicKey};
    use rsa::traits::PublicKeyParts;
    let public = rsa::PublicKey::from_public_key_der(bob.identity.rsa_der()).unwrap();
    let three =
        rsa::PublicKey::new_unchecked(public.n().as_ref().clone(), rsa::BoxedUint::from(3u64));
    let der = three.to_public_key_der().unwrap().into_vec();
    let block = secure::Identity {
        key_binding: bob.identity.sign(&secure::key_binding_statement(&der)),
        rsa_der: der.into(),
        ..bob.identity.block(b"bob")
    };
    let outputs = alice.secure(SecureMessage::PeerKey {
        name: "bob".into(),
        renamed_from: Bytes::new(),
        identity: block,
    });
    assert!(matches!(
        &events(&outputs)[..],
        [UserEvent::Warning { text }] if text.contains("refused the identity") && text.contains("65537")
    ));
    assert_eq!(records(&outputs), []);
    assert!(alice
        .line("\\whois bob")
        .iter()
        .any(|output| matches!(output, Output::Event(UserEvent::Error { .. }))));
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
    let outputs = alice.secure(dm_key_issued(&bob, "bob", 42, &key));
    assert!(matches!(
        &events(&outputs)[..],
        [
            UserEvent::PeerKey { trust: "new", .. },
            UserEvent::DmKey { key_id: 42, .. }
        ]
    ));
    let outputs = alice.reply(0, b"");
    let [ClientMessage::DirectMessage { target, text }] = &sent(&outputs)[..] else {
        panic!("one sealed DM: {outputs:?}");
    };
    assert_eq!(&target[..], b"bob");
    let label = secure::dm_key_label(42, &bob.fingerprint(), kat::identity().fingerprint());
    let wrapped = kat::wrap(bob.identity.rsa_der(), &key, &label);
    bob.keyring
        .add_dm_key(bob.identity, 42, kat::identity().fingerprint(), &wrapped)
        .unwrap();
    let opened = bob
        .keyring
        .open_dm(b"bob", b"alice", text, alice.now)
        .unwrap();
    assert_eq!(opened.plaintext.as_slice(), b"meet at noon");

    // The answer, under the same key.
    let answer = bob
        .keyring
        .seal_dm(b"alice", b"bob", bob.identity, b"ok")
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
    // A plaintext DM "from bob" is marked, and warned about.
    alice.reply(0, b"");
    let outputs = alice.receive(&encode_direct_message(b"bob", b"send me your password"));
    let events_now = events(&outputs);
    assert!(
        matches!(&events_now[0], UserEvent::Warning { text } if text.contains("came in clear"))
    );
    assert_eq!(
        events_now[1].to_text().unwrap(),
        "< bob (plaintext): send me your password"
    );
}

#[test]
fn a_dm_to_a_user_without_a_key_is_not_sent_unless_asked() {
    let mut alice = Alice::connected(true);
    alice.line("\\msg leg hello");
    let outputs = alice.reply(1, NO_KEY);
    assert_eq!(sent(&outputs), [], "nothing in clear unasked");
    assert!(error_text(&outputs).contains("\\plainmsg leg TEXT"));
    let outputs = alice.line("\\plainmsg leg hello");
    assert_eq!(
        sent(&outputs),
        [ClientMessage::DirectMessage {
            target: "leg".into(),
            text: "hello".into()
        }]
    );
    let outputs = alice.reply(0, b"");
    assert_eq!(
        events(&outputs)[0].to_text().unwrap(),
        "> leg (plaintext): hello"
    );
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
