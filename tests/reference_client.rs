//! The reference client against the real server, over real TCP: secure
//! `parlor client` processes driven through stdin with `--json`, a legacy
//! client that reads raw frames, and a relay between the server and each
//! secure client that records what crosses it and can tamper with it.
//!
//! Every frame the legacy client reads goes through the support client's
//! `check_legacy_frame`, so it never receives a `8x`/`9x` frame unnoticed;
//! each test ends with a legacy request whose reply must come next, so that
//! nothing sent to it earlier goes unread.

mod support;
use support::*;

#[path = "reference_client/process.rs"]
mod process;
#[path = "reference_client/relay.rs"]
mod relay;

use bytes::Bytes;
use parlor_crypto::envelope::{Envelope, Kind};
use parlor_proto::legacy::{encode_direct_message, encode_room_message};
use parlor_proto::{ClientMessage, Frame, SecureMessage, ServerMessage};
use parlor_server::config::Config;
use process::ClientProcess;
use relay::{Relay, Tamper};
use serde_json::Value;

/// Small keys keep key generation and RSA operations fast.
const SECURE: &[&str] = &["--rsa-bits", "2048"];

/// The test config, with a rate limit no test comes near: each test says
/// more than 5 things in 5 seconds.
fn config() -> Config {
    Config {
        rate_limit_messages: 1_000,
        ..test_config()
    }
}

fn join(room: &str) -> ClientMessage {
    ClientMessage::Join {
        room: Bytes::copy_from_slice(room.as_bytes()),
        password: Bytes::new(),
    }
}

fn nick(name: &str) -> ClientMessage {
    ClientMessage::Nick {
        name: Bytes::copy_from_slice(name.as_bytes()),
    }
}

/// `9a 00 {u8 len, name}*`.
fn names(list: &[&str]) -> Vec<u8> {
    let mut data = Vec::new();
    for name in list {
        data.push(name.len() as u8);
        data.extend_from_slice(name.as_bytes());
    }
    response_bytes(0, &data)
}

/// Starts a secure client behind a relay and gives it a nick.
async fn secure_client(server: &TestServer, name: &'static str) -> (ClientProcess, Relay) {
    let relay = Relay::start(server.addr).await;
    let mut client = ClientProcess::start(name, relay.addr, SECURE).await;
    client.line(&format!("\\nick {name}")).await;
    client.expect(&[("event", "nick"), ("name", name)]).await;
    (client, relay)
}

/// A server with a legacy client named `legacy` and two secure client
/// processes, `alice` and `bob`, each behind its own relay.
struct Cast {
    server: TestServer,
    legacy: Client,
    alice: ClientProcess,
    alice_relay: Relay,
    bob: ClientProcess,
    bob_relay: Relay,
}

impl Cast {
    async fn start() -> Cast {
        let server = TestServer::start(config()).await;
        let (mut legacy, _) = server.greeted().await;
        legacy.request(&nick("legacy"), &ok_bytes()).await;
        let ((alice, alice_relay), (bob, bob_relay)) = tokio::join!(
            secure_client(&server, "alice"),
            secure_client(&server, "bob")
        );
        Cast {
            server,
            legacy,
            alice,
            alice_relay,
            bob,
            bob_relay,
        }
    }
}

fn epoch(event: &Value) -> u32 {
    event["epoch"].as_u64().expect("an epoch") as u32
}

fn secure(event: &Value) -> bool {
    event["secure"] == true
}

/// The secure messages among `frames`, in order.
fn secure_messages(frames: &[Frame]) -> Vec<SecureMessage> {
    frames
        .iter()
        .filter_map(|frame| match ServerMessage::parse(frame) {
            Ok(ServerMessage::Secure(message)) => Some(message),
            _ => None,
        })
        .collect()
}

/// The requests among `frames` that a client sent, in order.
fn requests(frames: &[Frame]) -> Vec<ClientMessage> {
    frames
        .iter()
        .map(|frame| ClientMessage::parse(frame).expect("a well-formed request"))
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[tokio::test]
async fn secure_room_round_trip_tampering_replay_and_key_rotation() {
    let Cast {
        server,
        mut legacy,
        mut alice,
        alice_relay,
        mut bob,
        bob_relay,
    } = Cast::start().await;

    // A room created by a secure client is a secure room.
    alice.line("\\join vault").await;
    let joined = alice
        .expect(&[("event", "joined"), ("room", "vault")])
        .await;
    assert!(secure(&joined));
    let first = epoch(
        &alice
            .expect(&[("event", "room_key"), ("room", "vault")])
            .await,
    );

    let refusal = b"Room 'vault' is end-to-end encrypted; your client cannot join it.";
    legacy
        .request(&join("vault"), &response_bytes(1, refusal))
        .await;

    // Bob's join rotates the key; both hold the new epoch.
    bob.line("\\join vault").await;
    assert!(secure(
        &bob.expect(&[("event", "joined"), ("room", "vault")]).await
    ));
    let second = epoch(
        &bob.expect(&[("event", "room_key"), ("room", "vault")])
            .await,
    );
    assert!(second > first);
    alice
        .expect_where(&[("event", "room_key")], |event| epoch(event) == second)
        .await;

    // Round trip: sealed, relayed as ciphertext, opened and verified.
    alice.line("hello bob").await;
    let echo = alice
        .expect(&[("event", "sent"), ("text", "hello bob")])
        .await;
    assert!(secure(&echo));
    let got = bob
        .expect(&[
            ("event", "message"),
            ("from", "alice"),
            ("text", "hello bob"),
        ])
        .await;
    assert!(secure(&got));
    let relayed = bob_relay.to_client();
    let last = relayed
        .iter()
        .rev()
        .find(|frame| frame.opcode == 0x15)
        .unwrap();
    assert!(!contains(&last.payload, b"hello bob"));
    bob.line("hi alice").await;
    let got = alice
        .expect(&[("event", "message"), ("from", "bob"), ("text", "hi alice")])
        .await;
    assert!(secure(&got));

    // A byte flipped on the way to bob fails verification.
    bob_relay.tamper_next_room_message(Tamper::FlipCiphertextByte);
    alice.line("tampered").await;
    bob.expect(&[("event", "rejected"), ("from", "alice"), ("room", "vault")])
        .await;

    // A frame delivered twice: the copy is a replay.
    bob_relay.tamper_next_room_message(Tamper::Duplicate);
    alice.line("only once").await;
    bob.expect(&[("event", "message"), ("text", "only once")])
        .await;
    bob.expect(&[("event", "rejected"), ("from", "alice")])
        .await;

    // Bob leaves: the key rotates, and what alice says next is sealed
    // under an epoch whose key the server never sends to bob.
    bob.line("\\leave").await;
    bob.expect(&[("event", "left"), ("room", "vault")]).await;
    let third = epoch(
        &alice
            .expect(&[("event", "room_key"), ("room", "vault")])
            .await,
    );
    assert!(third > second);
    alice.line("after bob left").await;
    alice
        .expect(&[("event", "sent"), ("text", "after bob left")])
        .await;
    let Some(ClientMessage::RoomMessage { text: sealed, .. }) = requests(&alice_relay.to_server())
        .into_iter()
        .rev()
        .find(|request| matches!(request, ClientMessage::RoomMessage { .. }))
    else {
        panic!("alice sent no room message");
    };
    let header = Envelope::parse(&sealed).unwrap().header;
    assert_eq!((header.kind, header.epoch), (Kind::Room, third));

    // Back in the room, bob holds the newest key, but the message of the
    // epoch he missed still does not open: its key never reached him.
    bob.line("\\join vault").await;
    bob.expect(&[("event", "joined"), ("room", "vault")]).await;
    let fourth = epoch(
        &bob.expect(&[("event", "room_key"), ("room", "vault")])
            .await,
    );
    assert!(fourth > third);
    let bob_epochs: Vec<u32> = secure_messages(&bob_relay.to_client())
        .into_iter()
        .filter_map(|message| match message {
            SecureMessage::RoomKey { epoch, .. } => Some(epoch),
            _ => None,
        })
        .collect();
    assert_eq!(bob_epochs, [second, fourth]);
    bob_relay.inject(encode_room_message(b"vault", b"alice", &sealed).to_vec());
    bob.expect(&[("event", "rejected"), ("from", "alice")])
        .await;
    alice
        .expect_where(&[("event", "room_key")], |event| epoch(event) == fourth)
        .await;
    alice.line("welcome back").await;
    let got = bob
        .expect(&[("event", "message"), ("text", "welcome back")])
        .await;
    assert!(secure(&got));

    // What failed verification was never shown as said.
    for event in &bob.seen {
        if event["event"] == "message" {
            assert!(!["tampered", "after bob left"].contains(&event["text"].as_str().unwrap()));
        }
    }
    legacy
        .request(&ClientMessage::ListRooms, &names(&["vault"]))
        .await;
    alice.quit().await;
    bob.quit().await;
    server.stop().await;
}

#[tokio::test]
async fn dm_key_setup_and_round_trips_with_secure_and_legacy_users() {
    let Cast {
        server,
        mut legacy,
        mut alice,
        alice_relay,
        mut bob,
        bob_relay,
    } = Cast::start().await;

    // The first DM to a secure user asks for a key, then goes out sealed.
    alice.line("\\msg bob psst").await;
    let echo = alice.expect(&[("event", "sent"), ("to", "bob")]).await;
    assert!(secure(&echo));
    let got = bob
        .expect(&[("event", "message"), ("kind", "dm"), ("from", "alice")])
        .await;
    assert_eq!((got["text"].as_str(), secure(&got)), (Some("psst"), true));

    // On the wire: alice's 82 was answered with 89; bob got 81, then 80.
    let alice_sent = requests(&alice_relay.to_server());
    assert!(alice_sent.contains(&ClientMessage::DmKeyRequest {
        target: Bytes::from_static(b"bob"),
    }));
    let bob_key = requests(&bob_relay.to_server())
        .into_iter()
        .find_map(|request| match request {
            ClientMessage::RegisterKey { key } => Some(key),
            _ => None,
        })
        .unwrap();
    let alice_key = alice_sent
        .iter()
        .find_map(|request| match request {
            ClientMessage::RegisterKey { key } => Some(key.clone()),
            _ => None,
        })
        .unwrap();
    let issued = secure_messages(&alice_relay.to_client())
        .into_iter()
        .find_map(|message| match message {
            SecureMessage::DmKeyIssued {
                target,
                key,
                key_id,
                wrapped,
            } => Some((target, key, key_id, wrapped)),
            _ => None,
        })
        .expect("alice received DM_KEY_ISSUED");
    let (target, key, key_id, wrapped) = issued;
    assert_eq!((&target[..], &key), (&b"bob"[..], &bob_key));
    assert_eq!(wrapped.len(), 256, "OAEP under a 2048-bit key");
    let to_bob = secure_messages(&bob_relay.to_client());
    let peer_key = to_bob.iter().position(|message| {
        *message
            == SecureMessage::PeerKey {
                name: Bytes::from_static(b"alice"),
                key: alice_key.clone(),
            }
    });
    let dm_key = to_bob.iter().position(|message| {
        matches!(message, SecureMessage::DmKey { peer, key_id: id, .. }
            if &peer[..] == b"alice" && *id == key_id)
    });
    assert!(peer_key.unwrap() < dm_key.unwrap(), "{to_bob:#?}");
    let dm = alice_sent
        .iter()
        .rev()
        .find_map(|request| match request {
            ClientMessage::DirectMessage { target, text } if &target[..] == b"bob" => Some(text),
            _ => None,
        })
        .unwrap();
    let header = Envelope::parse(dm).unwrap().header;
    assert_eq!((header.kind, header.epoch), (Kind::Direct, key_id));
    assert!(!contains(dm, b"psst"));

    // Bob answers under the same key, without asking for one.
    bob.line("\\msg alice got it").await;
    let got = alice
        .expect(&[("event", "message"), ("kind", "dm"), ("from", "bob")])
        .await;
    assert_eq!((got["text"].as_str(), secure(&got)), (Some("got it"), true));
    // Renamed where alice cannot see it, bob still writes under that key.
    bob.line("\\nick robert").await;
    bob.expect(&[("event", "nick"), ("name", "robert")]).await;
    bob.line("\\msg alice new name").await;
    let got = alice
        .expect(&[("event", "message"), ("kind", "dm"), ("from", "robert")])
        .await;
    assert_eq!(
        (got["text"].as_str(), secure(&got)),
        (Some("new name"), true)
    );
    assert!(!requests(&bob_relay.to_server())
        .iter()
        .any(|request| matches!(request, ClientMessage::DmKeyRequest { .. })));

    // A user without a key: a warning, then plaintext.
    alice.line("\\msg legacy hello legacy").await;
    alice.expect(&[("event", "warning")]).await;
    let echo = alice.expect(&[("event", "sent"), ("to", "legacy")]).await;
    assert!(!secure(&echo));
    legacy
        .expect(&encode_direct_message(b"alice", b"hello legacy"))
        .await;
    let answer = ClientMessage::DirectMessage {
        target: Bytes::from_static(b"alice"),
        text: Bytes::from_static(b"hi alice"),
    };
    legacy.request(&answer, &ok_bytes()).await;
    let got = alice
        .expect(&[
            ("event", "message"),
            ("from", "legacy"),
            ("text", "hi alice"),
        ])
        .await;
    assert!(!secure(&got));

    alice.line("\\msg nobody hello?").await;
    alice
        .expect(&[("event", "failed"), ("text", "Nick not present")])
        .await;

    legacy
        .request(
            &ClientMessage::ListUsers,
            &names(&["alice", "legacy", "robert"]),
        )
        .await;
    alice.quit().await;
    bob.quit().await;
    server.stop().await;
}

#[tokio::test]
async fn legacy_mode_speaks_only_the_plain_protocol() {
    let server = TestServer::start(config()).await;
    let (mut legacy, legacy_name) = server.greeted().await;
    legacy.request(&join("lobby"), &ok_bytes()).await;
    let relay = Relay::start(server.addr).await;
    let mut plain = ClientProcess::start("plain", relay.addr, &["--legacy"]).await;

    plain.line("\\join lobby").await;
    let joined = plain
        .expect(&[("event", "joined"), ("room", "lobby")])
        .await;
    assert!(!secure(&joined));
    plain.line("hello lobby").await;
    plain
        .expect(&[("event", "sent"), ("text", "hello lobby")])
        .await;
    let connected = plain
        .seen
        .iter()
        .find(|event| event["event"] == "connected");
    let name = connected.unwrap()["name"].as_str().unwrap().to_string();
    legacy
        .expect(&encode_room_message(
            b"lobby",
            name.as_bytes(),
            b"hello lobby",
        ))
        .await;
    let said = ClientMessage::RoomMessage {
        room: Bytes::from_static(b"lobby"),
        text: Bytes::from_static(b"hello yourself"),
    };
    legacy.request(&said, &ok_bytes()).await;
    let sender = String::from_utf8(legacy_name).unwrap();
    plain
        .expect(&[
            ("event", "message"),
            ("from", &sender),
            ("text", "hello yourself"),
        ])
        .await;

    // It never registers a key, and the server treats it as legacy.
    for request in requests(&relay.to_server()) {
        assert!(!matches!(
            request,
            ClientMessage::RegisterKey { .. } | ClientMessage::DmKeyRequest { .. }
        ));
    }
    for frame in relay.to_client() {
        check_legacy_frame(&frame.to_bytes());
    }
    plain.quit().await;
    server.stop().await;
}

#[test]
fn bad_flags_exit_with_status_2() {
    for args in [
        &["client", "--rsa-bits", "1024"][..],
        &["client", "--rsa-bits", "lots"],
        &["client", "--legacy", "--rsa-bits", "2048"],
        &["client", "--legacy", "--ca", "ca.pem"],
        &["client", "--insecure-transport", "--ca", "ca.pem"],
        &["client", "--frobnicate"],
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_parlor"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(!output.stderr.is_empty(), "{args:?}");
    }
}
