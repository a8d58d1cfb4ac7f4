//! The reference client against the real server, over real TCP: secure
//! `parlor client` processes driven through stdin with `--json` (each with
//! an identity file and a data directory of its own, over plain TCP, which
//! the test server allows the secure extension on), a legacy client that
//! reads raw frames, and a relay between the server and each secure client
//! that records what crosses it and can tamper with it, as someone on the
//! path could.
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

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parlor_crypto::envelope::{Envelope, Kind};
use parlor_proto::legacy::{encode_direct_message, encode_room_message};
use parlor_proto::{ClientMessage, Frame, SecureMessage, ServerMessage};
use parlor_server::config::{ClusterConfig, Config};
use process::ClientProcess;
use relay::{Relay, Tamper};
use serde_json::Value;
use sha2::Digest;
use support::nats::NatsServer;
use support::process::ServerProcess;

/// The clients' identities are made with 2048-bit RSA keys
/// (`process::write_identity`): RSA operations stay fast.
const SECURE: &[&str] = &[];

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

/// Starts a secure client behind a relay to the server at `server` and
/// gives it a nick.
async fn secure_client(server: SocketAddr, name: &'static str) -> (ClientProcess, Relay) {
    let relay = Relay::start(server).await;
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
            secure_client(server.addr, "alice"),
            secure_client(server.addr, "bob")
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

/// The end of every test with a legacy bystander: it still sees exactly
/// `rooms` (the secure traffic left the server's state straight), every
/// client quits cleanly, and the server stops.
async fn curtain<const N: usize>(
    server: TestServer,
    legacy: &mut Client,
    rooms: &[&str],
    clients: [ClientProcess; N],
) {
    legacy
        .request(&ClientMessage::ListRooms, &names(rooms))
        .await;
    for client in clients {
        client.quit().await;
    }
    server.stop().await;
}

fn epoch(event: &Value) -> u32 {
    event["epoch"].as_u64().expect("an epoch") as u32
}

fn secure(event: &Value) -> bool {
    event["secure"] == true
}

/// A `message` or `sent` event that was sealed (and, received, opened).
fn encrypted(event: &Value) -> bool {
    event["encrypted"] == true
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
    assert!(encrypted(&echo));
    let got = bob
        .expect(&[
            ("event", "message"),
            ("from", "alice"),
            ("text", "hello bob"),
        ])
        .await;
    assert!(encrypted(&got) && got["verified"] == true);
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
    assert!(encrypted(&got));

    // A byte flipped on the way to bob fails verification.
    bob_relay.tamper_next(0x15, Tamper::FlipCiphertextByte);
    alice.line("tampered").await;
    bob.expect(&[("event", "rejected"), ("from", "alice"), ("room", "vault")])
        .await;

    // A frame delivered twice: the copy is a replay.
    bob_relay.tamper_next(0x15, Tamper::Duplicate);
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
    assert!(encrypted(&got));

    // What failed verification was never shown as said.
    for event in &bob.seen {
        if event["event"] == "message" {
            assert!(!["tampered", "after bob left"].contains(&event["text"].as_str().unwrap()));
        }
    }
    curtain(server, &mut legacy, &["vault"], [alice, bob]).await;
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
    assert!(encrypted(&echo));
    let got = bob
        .expect(&[("event", "message"), ("kind", "dm"), ("from", "alice")])
        .await;
    assert_eq!(
        (got["text"].as_str(), encrypted(&got)),
        (Some("psst"), true)
    );

    // On the wire: alice's 82 was answered with 89; bob got 81, then 80.
    let alice_sent = requests(&alice_relay.to_server());
    assert!(alice_sent.contains(&ClientMessage::DmKeyRequest {
        target: Bytes::from_static(b"bob"),
    }));
    let registered = |frames: &[Frame]| {
        requests(frames)
            .into_iter()
            .find_map(|request| match request {
                ClientMessage::RegisterKey(registration) => Some(registration),
                _ => None,
            })
            .unwrap()
    };
    let bob_key = registered(&bob_relay.to_server());
    let alice_key = registered(&alice_relay.to_server());
    let issued = secure_messages(&alice_relay.to_client())
        .into_iter()
        .find_map(|message| match message {
            SecureMessage::DmKeyIssued {
                target,
                identity,
                key_id,
                wrapped,
            } => Some((target, identity, key_id, wrapped)),
            _ => None,
        })
        .expect("alice received DM_KEY_ISSUED");
    let (target, identity, key_id, wrapped) = issued;
    assert_eq!(&target[..], b"bob");
    assert_eq!(
        (identity.signing_key, &identity.rsa_der),
        (bob_key.signing_key, &bob_key.rsa_der)
    );
    assert_eq!(wrapped.len(), 256, "OAEP under a 2048-bit key");
    let to_bob = secure_messages(&bob_relay.to_client());
    let peer_key = to_bob.iter().position(|message| {
        matches!(message, SecureMessage::PeerKey { name, identity, .. }
            if &name[..] == b"alice" && identity.signing_key == alice_key.signing_key)
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
    assert_eq!(
        (got["text"].as_str(), encrypted(&got)),
        (Some("got it"), true)
    );
    // Renamed where alice cannot see it, bob still writes under that key.
    bob.line("\\nick robert").await;
    bob.expect(&[("event", "nick"), ("name", "robert")]).await;
    bob.line("\\msg alice new name").await;
    let got = alice
        .expect(&[("event", "message"), ("kind", "dm"), ("from", "robert")])
        .await;
    assert_eq!(
        (got["text"].as_str(), encrypted(&got)),
        (Some("new name"), true)
    );
    assert!(!requests(&bob_relay.to_server())
        .iter()
        .any(|request| matches!(request, ClientMessage::DmKeyRequest { .. })));

    // A user without a key: nothing is sent, and alice is told how to
    // send it in clear; then she does, and it is marked.
    alice.line("\\msg legacy hello legacy").await;
    let refused = alice.expect(&[("event", "error")]).await;
    assert!(refused["text"]
        .as_str()
        .unwrap()
        .contains("\\plainmsg legacy TEXT"));
    alice.line("\\plainmsg legacy in clear, as asked").await;
    let echo = alice.expect(&[("event", "sent"), ("to", "legacy")]).await;
    assert!(!encrypted(&echo));
    legacy
        .expect(&encode_direct_message(b"alice", b"in clear, as asked"))
        .await;
    let in_clear: Vec<ClientMessage> = requests(&alice_relay.to_server())
        .into_iter()
        .filter(|request| matches!(request, ClientMessage::DirectMessage { .. }))
        .collect();
    assert!(
        !in_clear.iter().any(|request| matches!(request,
            ClientMessage::DirectMessage { text, .. } if contains(text, b"hello legacy"))),
        "the line alice did not ask to send in clear never left: {in_clear:?}"
    );
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
    assert!(!encrypted(&got));

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

/// Asks LIST_USERS on `client` until the answer is `expected` (another
/// node's names arrive a moment after they are won).
async fn users_become(client: &mut Client, expected: &[&str]) {
    let start = std::time::Instant::now();
    let expected = names(expected);
    loop {
        client.send(&ClientMessage::ListUsers).await;
        if client.recv_raw().await == expected {
            return;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "users never became {expected:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn encrypted_dms_between_users_of_two_nodes_of_a_cluster() {
    let nats = support::nats::NatsServer::start();
    let node = |id: &str| Config {
        cluster: Some(ClusterConfig::new(vec![nats.url.clone()], id.to_owned())),
        ..config()
    };
    let (a, b) = (
        TestServer::start(node("a")).await,
        TestServer::start(node("b")).await,
    );
    let (mut legacy, _) = a.greeted().await;
    legacy.request(&nick("legacy"), &ok_bytes()).await;
    let (mut alice, alice_relay) = secure_client(a.addr, "alice").await;
    let (mut bob, bob_relay) = secure_client(b.addr, "bob").await;
    users_become(&mut legacy, &["alice", "bob", "legacy"]).await;

    // Alice's node asks bob's, which issues the key: bob gets alice's
    // identity and his half, alice bob's identity and hers.
    alice.line("\\msg bob psst").await;
    let echo = alice.expect(&[("event", "sent"), ("to", "bob")]).await;
    assert!(encrypted(&echo));
    let got = bob
        .expect(&[("event", "message"), ("kind", "dm"), ("from", "alice")])
        .await;
    assert_eq!(
        (got["text"].as_str(), encrypted(&got)),
        (Some("psst"), true)
    );
    let issued = secure_messages(&alice_relay.to_client())
        .into_iter()
        .find_map(|message| match message {
            SecureMessage::DmKeyIssued { target, key_id, .. } => Some((target, key_id)),
            _ => None,
        });
    let (target, key_id) = issued.expect("alice received DM_KEY_ISSUED");
    assert_eq!(&target[..], b"bob");
    let to_bob = secure_messages(&bob_relay.to_client());
    assert!(to_bob.iter().any(|message| matches!(message,
        SecureMessage::DmKey { peer, key_id: id, .. } if &peer[..] == b"alice" && *id == key_id)));
    // What crossed the nodes is sealed: bob's node relayed no plaintext.
    assert!(!bob_relay
        .to_client()
        .iter()
        .any(|frame| contains(&frame.payload, b"psst")));

    // Bob answers under the same key, across the nodes again.
    bob.line("\\msg alice got it").await;
    let got = alice
        .expect(&[("event", "message"), ("kind", "dm"), ("from", "bob")])
        .await;
    assert_eq!(
        (got["text"].as_str(), encrypted(&got)),
        (Some("got it"), true)
    );
    // A user of the other node without a key: refused as on one node
    // (nothing sent), and sent in clear only when alice asks for that.
    let (mut lee, _) = b.greeted().await;
    lee.request(&nick("lee"), &ok_bytes()).await;
    users_become(&mut legacy, &["alice", "bob", "lee", "legacy"]).await;
    alice.line("\\msg lee hello lee").await;
    let refused = alice.expect(&[("event", "error")]).await;
    assert!(refused["text"]
        .as_str()
        .unwrap()
        .contains("\\plainmsg lee TEXT"));
    alice.line("\\plainmsg lee in clear, as asked").await;
    lee.expect(&encode_direct_message(b"alice", b"in clear, as asked"))
        .await;
    lee.request(&ClientMessage::ListRooms, &names(&[])).await;
    curtain(a, &mut legacy, &[], [alice, bob]).await;
    b.stop().await;
}

/// `from`, called `sender`, says `text` in its room, sealed, and `to`
/// gets it opened and verified.
async fn sealed_reaches(
    from: &mut ClientProcess,
    sender: &str,
    to: &mut ClientProcess,
    text: &str,
) {
    from.line(text).await;
    let got = to
        .expect(&[("event", "message"), ("from", sender), ("text", text)])
        .await;
    assert!(encrypted(&got) && got["verified"] == true);
}

/// How long a node's lease lasts in the test of a secure room outliving
/// its owner: short, so that the takeover is quick to see.
const LEASE: Duration = Duration::from_secs(3);

/// A secure room across two nodes. Its owner, alice's node, keys the
/// members of both; sealed messages cross; a leave on the other node
/// rotates the key. When the owner is killed, the other node takes the
/// room over within the lease: its members are told a key is coming and
/// get one past every epoch the dead node reached, and go on talking.
#[tokio::test]
async fn a_secure_room_spans_two_nodes_and_outlives_its_owner() {
    let nats = NatsServer::start();
    let node = |id: &str| {
        let mut cluster = ClusterConfig::new(vec![nats.url.clone()], id.to_owned());
        cluster.lease_secs = LEASE.as_secs_f64();
        Config {
            cluster: Some(cluster),
            ..config()
        }
    };
    let mut a = ServerProcess::start(&node("a"), false);
    let b = TestServer::start(node("b")).await;
    let (mut alice, _alice_relay) = secure_client(a.addr, "alice").await;
    let (mut bob, bob_relay) = secure_client(b.addr, "bob").await;
    let (mut carol, _carol_relay) = secure_client(b.addr, "carol").await;

    alice.line("\\join vault").await;
    assert!(secure(
        &alice
            .expect(&[("event", "joined"), ("room", "vault")])
            .await
    ));
    let first = epoch(
        &alice
            .expect(&[("event", "room_key"), ("room", "vault")])
            .await,
    );

    // Bob joins from b: alice's node makes his key, and each learns the
    // other's identity across the nodes.
    bob.line("\\join vault").await;
    bob.expect(&[("event", "peer_key"), ("name", "alice")])
        .await;
    assert!(secure(
        &bob.expect(&[("event", "joined"), ("room", "vault")]).await
    ));
    let second = epoch(
        &bob.expect(&[("event", "room_key"), ("room", "vault")])
            .await,
    );
    assert!(second > first);
    alice
        .expect(&[("event", "peer_key"), ("name", "bob")])
        .await;
    alice
        .expect_where(&[("event", "room_key")], |event| epoch(event) == second)
        .await;
    sealed_reaches(&mut alice, "alice", &mut bob, "hello from a").await;
    sealed_reaches(&mut bob, "bob", &mut alice, "hello from b").await;
    // The key crossed the nodes wrapped: bob's node relayed no plaintext.
    assert!(!bob_relay
        .to_client()
        .iter()
        .any(|frame| contains(&frame.payload, b"hello from a")));

    // Alice renames on a: bob hears of it across the nodes, and carol,
    // joining on b afterwards, is introduced to her under her new name
    // (the record's introduction was renewed). Then carol leaves again:
    // the owner on a tells the others to hold, and keys them without her.
    alice.line("\\nick alicia").await;
    alice.expect(&[("event", "nick"), ("name", "alicia")]).await;
    bob.expect(&[
        ("event", "peer_key"),
        ("name", "alicia"),
        ("renamed_from", "alice"),
    ])
    .await;
    carol.line("\\join vault").await;
    carol
        .expect(&[("event", "peer_key"), ("name", "alicia")])
        .await;
    let third = epoch(
        &carol
            .expect(&[("event", "room_key"), ("room", "vault")])
            .await,
    );
    carol.line("\\leave").await;
    carol.expect(&[("event", "left"), ("room", "vault")]).await;
    bob.expect(&[("event", "rekeying"), ("room", "vault")])
        .await;
    let fourth = epoch(
        &bob.expect_where(&[("event", "room_key")], |event| epoch(event) > third)
            .await,
    );
    alice
        .expect_where(&[("event", "room_key")], |event| epoch(event) == fourth)
        .await;

    // The owner dies. Within the lease, b takes the room over: bob hears
    // a key is coming, then gets one, and what he says opens for carol,
    // back in the room on his node.
    let killed = Instant::now();
    a.kill();
    bob.expect(&[("event", "rekeying"), ("room", "vault")])
        .await;
    let fifth = epoch(
        &bob.expect_where(&[("event", "room_key")], |event| epoch(event) > fourth)
            .await,
    );
    let took = killed.elapsed();
    println!("secure room's new epoch {took:?} after SIGKILL of its owner (lease {LEASE:?})");
    assert!(took < LEASE, "{took:?}");
    carol.line("\\join vault").await;
    let sixth = epoch(
        &carol
            .expect(&[("event", "room_key"), ("room", "vault")])
            .await,
    );
    assert!(sixth > fifth);
    bob.expect_where(&[("event", "room_key")], |event| epoch(event) == sixth)
        .await;
    sealed_reaches(&mut bob, "bob", &mut carol, "after the owner").await;
    for client in [bob, carol] {
        client.quit().await;
    }
    alice.expect(&[("event", "disconnected")]).await;
    b.stop().await;
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

/// The frames among `frames` of one opcode.
fn of_opcode(frames: &[Frame], opcode: u8) -> Vec<Frame> {
    frames
        .iter()
        .filter(|frame| frame.opcode == opcode)
        .cloned()
        .collect()
}

/// The epochs of the room messages among `requests`, as their envelopes
/// name them.
fn sealed_epochs(requests: &[ClientMessage]) -> Vec<u32> {
    requests
        .iter()
        .filter_map(|request| match request {
            ClientMessage::RoomMessage { text, .. } => {
                Some(Envelope::parse(text).expect("an envelope").header.epoch)
            }
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_changed_key_for_a_known_nick_is_loud_unverified_and_dms_wait_for_trust() {
    let Cast {
        server,
        mut legacy,
        mut alice,
        alice_relay,
        mut bob,
        bob_relay,
    } = Cast::start().await;
    alice.line("\\join vault").await;
    alice.expect(&[("event", "room_key")]).await;
    bob.line("\\join vault").await;
    let first = alice
        .expect(&[("event", "peer_key"), ("name", "bob")])
        .await;
    assert_eq!(first["trust"], "new", "first sight, recorded");
    let bobs_fingerprint = first["fingerprint"].as_str().unwrap().to_string();
    bob.expect(&[("event", "room_key")]).await;
    bob.quit().await;
    drop(bob_relay);

    // Mallory, with a key of her own, takes the name bob left and joins.
    let (mut mallory, mallory_relay) = secure_client(server.addr, "mallory").await;
    mallory.line("\\nick bob").await;
    mallory.expect(&[("event", "nick"), ("name", "bob")]).await;
    mallory.line("\\join vault").await;
    let changed = alice
        .expect(&[("event", "key_changed"), ("name", "bob")])
        .await;
    assert_eq!(changed["before"], bobs_fingerprint.as_str());
    assert_ne!(changed["now"], bobs_fingerprint.as_str());
    let joined = epoch(&mallory.expect(&[("event", "room_key")]).await);
    alice
        .expect_where(&[("event", "room_key")], |event| epoch(event) == joined)
        .await;

    // What she says under the name is marked unverified.
    mallory.line("it's me, bob").await;
    let heard = alice
        .expect(&[("event", "message"), ("text", "it's me, bob")])
        .await;
    assert_eq!(
        (encrypted(&heard), heard["verified"].clone()),
        (true, Value::Bool(false))
    );
    let whois = {
        alice.line("\\whois bob").await;
        alice.expect(&[("event", "whois")]).await
    };
    assert_eq!(whois["trust"], "changed");

    // A DM to "bob" waits for \trust; nothing of it goes out.
    alice.line("\\msg bob the launch codes").await;
    alice.expect(&[("event", "dm_held"), ("to", "bob")]).await;
    alice.line("\\list users").await;
    alice.expect(&[("event", "users")]).await;
    assert!(!requests(&alice_relay.to_server())
        .iter()
        .any(|request| matches!(
            request,
            ClientMessage::DmKeyRequest { .. } | ClientMessage::DirectMessage { .. }
        )));
    alice.line("\\trust bob").await;
    alice.expect(&[("event", "trusted"), ("name", "bob")]).await;
    let got = mallory
        .expect(&[("event", "message"), ("kind", "dm"), ("from", "alice")])
        .await;
    assert_eq!(
        (got["text"].as_str(), encrypted(&got)),
        (Some("the launch codes"), true)
    );
    drop(mallory_relay);
    curtain(server, &mut legacy, &["vault"], [alice, mallory]).await;
}

#[tokio::test]
async fn registering_someone_elses_public_key_is_refused() {
    let Cast {
        server,
        mut legacy,
        alice,
        alice_relay,
        bob,
        bob_relay: _bob_relay,
    } = Cast::start().await;
    let Some(ClientMessage::RegisterKey(alices)) = requests(&alice_relay.to_server())
        .into_iter()
        .find(|request| matches!(request, ClientMessage::RegisterKey(_)))
    else {
        panic!("alice registered");
    };
    // Mallory has everything public of alice's, but not her private key:
    // she replays alice's possession proof, or makes one with her own key.
    let mallory = process::identity_of("mallory");
    let (mut raw, name) = server.greeted().await;
    let own_proof = mallory.possession_proof(&[0; 32], &name);
    for possession in [alices.possession, own_proof] {
        let stolen = parlor_proto::secure::Registration {
            possession,
            ..alices.clone()
        };
        let refusal = parlor_proto::text::KEY_PROOF_FAILED.as_bytes();
        raw.request(
            &ClientMessage::RegisterKey(stolen),
            &response_bytes(1, refusal),
        )
        .await;
    }
    // Nor can she pair alice's signing key with her own RSA key.
    let swapped = parlor_proto::secure::Registration {
        rsa_der: Bytes::copy_from_slice(mallory.rsa_der()),
        possession: mallory.possession_proof(&[0; 32], &name),
        ..alices
    };
    let refusal = parlor_proto::text::KEY_PROOF_FAILED.as_bytes();
    raw.request(
        &ClientMessage::RegisterKey(swapped),
        &response_bytes(1, refusal),
    )
    .await;
    curtain(server, &mut legacy, &[], [alice, bob]).await;
}

#[tokio::test]
async fn a_room_known_secure_that_comes_back_plaintext_is_left() {
    let Cast {
        server,
        mut legacy,
        mut alice,
        alice_relay,
        bob,
        bob_relay: _bob_relay,
    } = Cast::start().await;
    alice.line("\\join vault").await;
    assert!(secure(&alice.expect(&[("event", "joined")]).await));
    alice.line("\\leave").await;
    alice.expect(&[("event", "left")]).await;
    // The room emptied and went; a legacy user makes one of that name.
    legacy.request(&join("vault"), &ok_bytes()).await;
    alice.line("\\join vault").await;
    let joined = alice
        .expect(&[("event", "joined"), ("room", "vault")])
        .await;
    assert!(!secure(&joined));
    let warning = alice.expect(&[("event", "warning")]).await;
    assert!(warning["text"]
        .as_str()
        .unwrap()
        .contains("was end-to-end encrypted"));
    alice.expect(&[("event", "left"), ("room", "vault")]).await;
    alice.line("the plan is in the safe").await;
    alice.expect(&[("event", "error")]).await;
    assert!(!requests(&alice_relay.to_server())
        .iter()
        .any(|request| matches!(
            request,
            ClientMessage::RoomMessage { text, .. } if contains(text, b"the plan")
        )));
    // The legacy member heard nothing: its next reply is its own.
    legacy
        .request(&ClientMessage::ListUsers, &names(&["legacy"]))
        .await;
    alice.quit().await;
    bob.quit().await;
    server.stop().await;
}

#[tokio::test]
async fn a_wrap_moved_to_another_epoch_or_room_does_not_open() {
    let Cast {
        server,
        mut legacy,
        mut alice,
        alice_relay,
        mut bob,
        bob_relay,
    } = Cast::start().await;
    alice.line("\\join vault").await;
    alice.expect(&[("event", "room_key")]).await;
    let first = of_opcode(&alice_relay.to_client(), 0x84).pop().unwrap();

    // Bob's join rotates the key; alice's wrap of it is replaced by her
    // genuine wrap of the epoch before, relabelled as the new epoch.
    alice_relay.tamper_next(0x84, Tamper::WrapOf(first.clone()));
    bob.line("\\join vault").await;
    bob.expect(&[("event", "room_key")]).await;
    let refused = alice
        .expect_where(&[("event", "warning")], |event| {
            event["text"]
                .as_str()
                .unwrap()
                .contains("refused a key for room 'vault'")
        })
        .await;
    assert!(refused["text"]
        .as_str()
        .unwrap()
        .contains("does not unwrap"));

    // And moved to another room: alice's vault wrap as the first key of
    // a room she makes.
    alice_relay.tamper_next(0x84, Tamper::WrapOf(first));
    alice.line("\\join annex").await;
    alice
        .expect(&[("event", "joined"), ("room", "annex")])
        .await;
    let refused = alice
        .expect_where(&[("event", "warning")], |event| {
            event["text"]
                .as_str()
                .unwrap()
                .contains("refused a key for room 'annex'")
        })
        .await;
    assert!(refused["text"]
        .as_str()
        .unwrap()
        .contains("does not unwrap"));
    alice.line("waits for a real key").await;
    alice.expect(&[("event", "held"), ("room", "annex")]).await;
    // \quit would wait for the held line; leaving drops it.
    alice.line("\\leave").await;
    alice.expect(&[("event", "left"), ("room", "annex")]).await;
    drop(bob_relay);
    curtain(server, &mut legacy, &["vault"], [alice, bob]).await;
}

#[tokio::test]
async fn a_file_offer_shows_no_digest_and_a_replayed_offer_is_refused() {
    let Cast {
        server,
        mut legacy,
        mut alice,
        alice_relay,
        mut bob,
        bob_relay,
    } = Cast::start().await;
    alice.line("\\join vault").await;
    alice.expect(&[("event", "room_key")]).await;
    bob.line("\\join vault").await;
    let epoch = epoch(&bob.expect(&[("event", "room_key")]).await);
    alice
        .expect_where(&[("event", "room_key")], |event| {
            self::epoch(event) == epoch
        })
        .await;

    let dir = std::env::temp_dir().join(format!("parlor-offer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("plans.txt");
    let content: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&path, &content).unwrap();
    let digest: [u8; 32] = sha2::Sha256::digest(&content).into();

    // The offer reaches bob twice: the copy is a replay.
    bob_relay.tamper_next(0x83, Tamper::Duplicate);
    alice.line(&format!("\\file send {}", path.display())).await;
    let offered = bob.expect(&[("event", "file_offered")]).await;
    let failed = bob.expect(&[("event", "file_failed")]).await;
    assert!(
        failed["problem"].as_str().unwrap().contains("replay"),
        "{failed}"
    );
    assert_eq!(failed["id"], offered["id"]);
    bob.line(&format!("\\file accept {}", offered["id"])).await;
    let received = bob.expect(&[("event", "file_received")]).await;
    assert_eq!(
        received["sha256"],
        parlor_client::transfer::hex(&digest).as_str()
    );
    alice.expect(&[("event", "file_sent")]).await;

    // The file's SHA-256 crossed neither relay, either way.
    for frames in [
        alice_relay.to_server(),
        alice_relay.to_client(),
        bob_relay.to_server(),
        bob_relay.to_client(),
    ] {
        for frame in frames {
            assert!(!contains(&frame.to_bytes(), &digest), "{frame:?}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    curtain(server, &mut legacy, &["vault"], [alice, bob]).await;
}

#[tokio::test]
async fn after_a_departure_nothing_is_sealed_under_the_epoch_the_leaver_holds() {
    let Cast {
        server,
        mut legacy,
        mut alice,
        alice_relay,
        mut bob,
        bob_relay: _bob_relay,
    } = Cast::start().await;
    let (mut carol, _carol_relay) = secure_client(server.addr, "carol").await;
    alice.line("\\join vault").await;
    alice.expect(&[("event", "room_key")]).await;
    bob.line("\\join vault").await;
    bob.expect(&[("event", "room_key")]).await;
    carol.line("\\join vault").await;
    let held_by_carol = epoch(&carol.expect(&[("event", "room_key")]).await);
    alice
        .expect_where(&[("event", "room_key")], |event| {
            epoch(event) == held_by_carol
        })
        .await;

    carol.line("\\leave").await;
    let rekeying = alice
        .expect(&[("event", "rekeying"), ("room", "vault")])
        .await;
    let next = rekeying["next_epoch"].as_u64().unwrap() as u32;
    assert!(next > held_by_carol);
    let sent_before = alice_relay.to_server().len();
    for line in ["right after carol left", "and again", "and once more"] {
        alice.line(line).await;
    }
    for line in ["right after carol left", "and again", "and once more"] {
        let got = bob.expect(&[("event", "message"), ("text", line)]).await;
        assert!(encrypted(&got));
    }
    let after = requests(&alice_relay.to_server()[sent_before..]);
    let epochs = sealed_epochs(&after);
    assert_eq!(epochs.len(), 3, "{after:?}");
    assert!(
        epochs.iter().all(|epoch| *epoch >= next),
        "{epochs:?} after {held_by_carol}"
    );
    curtain(server, &mut legacy, &["vault"], [alice, bob, carol]).await;
}

#[tokio::test]
async fn a_peer_identity_with_exponent_3_is_refused() {
    let Cast {
        server,
        mut legacy,
        mut alice,
        alice_relay,
        bob,
        bob_relay: _bob_relay,
    } = Cast::start().await;
    // Eve's RSA key has e = 3, properly bound by her own signing key.
    use rsa::pkcs8::{DecodePublicKey, EncodePublicKey};
    use rsa::traits::PublicKeyParts;
    let eve = process::identity_of("eve");
    let public = rsa::PublicKey::from_public_key_der(eve.rsa_der()).unwrap();
    let three =
        rsa::PublicKey::new_unchecked(public.n().as_ref().clone(), rsa::BoxedUint::from(3u64));
    let der = three.to_public_key_der().unwrap().into_vec();
    let identity = parlor_proto::secure::Identity {
        key_binding: eve.sign(&parlor_proto::secure::key_binding_statement(&der)),
        rsa_der: der.into(),
        ..eve.block(b"eve")
    };
    let announced = SecureMessage::PeerKey {
        name: Bytes::from_static(b"eve"),
        renamed_from: Bytes::new(),
        identity,
    };
    alice_relay.inject(announced.encode().to_vec());
    let refused = alice.expect(&[("event", "warning")]).await;
    let text = refused["text"].as_str().unwrap();
    assert!(
        text.contains("refused the identity") && text.contains("'eve'"),
        "{text}"
    );
    alice.line("\\whois eve").await;
    alice.expect(&[("event", "error")]).await;
    curtain(server, &mut legacy, &[], [alice, bob]).await;
}

/// Runs `parlor client` with `args` and no server, its input closed at
/// once: for what it says at start.
fn client_at_start(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_parlor"))
        .arg("client")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn identity_files_others_can_read_or_with_small_rsa_keys_are_refused_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("parlor-start-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("identity");
    process::write_identity(&path, "alice");
    let shown = path.display().to_string();
    let data_dir = ["--data-dir", dir.to_str().unwrap(), "--identity", &shown];
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = client_at_start(&data_dir);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("chmod 600 {shown}")), "{stderr}");

    // An identity whose RSA key has 1024 bits: the Ed25519 block of a good
    // one, and a small RSA key after it.
    use rsa::pkcs8::{EncodePrivateKey, LineEnding};
    let small = rsa::PrivateKey::new(&mut rand::rng(), 1024).unwrap();
    let pem = std::fs::read_to_string(&path).unwrap();
    let end = "-----END PRIVATE KEY-----\n";
    let ed25519 = &pem[..pem.find(end).unwrap() + end.len()];
    let small = small.to_pkcs8_pem(LineEnding::LF).unwrap();
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, [ed25519, small.as_str()].concat()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let output = client_at_start(&data_dir);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("2048 to 4096 bits, not 1024"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
