//! The legacy protocol over real TCP against the in-process server,
//! asserting the exact bytes on the wire: one module per section of
//! PROTOCOL.md (`s4_3_nick` is §4.3), and one for README's "What is
//! logged".
//!
//! Every frame a test reads goes through `support::check_legacy_frame`
//! (in `Client::recv_raw`, and in [`raw_frame`] for raw sockets), which
//! also checks the rules that hold for *all* server frames (§2 rules 1, 3
//! and 5): length ≥ 1, the `04 17` magic, only opcodes the legacy client
//! knows (`9a`, `15`, `12`), and never status `03`.

mod support;
use support::*;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use parlor_proto::text;
use parlor_proto::ClientMessage;
use parlor_server::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a test listens to be sure that nothing arrives.
const SILENCE: Duration = Duration::from_millis(300);

/// LIST_ROOMS with no rooms (and any `9a 00` without data).
const NO_ROOMS: [u8; 8] = [0x00, 0x00, 0x00, 0x01, 0x04, 0x17, 0x9a, 0x00];

/// Deterministic pseudo-random bytes (xorshift64).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Receiving, with the rules that hold for every server frame

/// Asserts that none of the clients receives anything. The first waits the
/// full [`SILENCE`]; by then anything sent to the others has arrived too.
async fn all_silent(clients: &mut [&mut Client]) {
    let mut wait = SILENCE;
    for client in clients.iter_mut() {
        client.expect_silence(wait).await;
        wait = Duration::from_millis(20);
    }
}

/// A greeted client that took the nick `name`.
async fn named(server: &TestServer, name: &str) -> Client {
    let (mut client, _) = server.greeted().await;
    client.request(&nick(name), &ok_bytes()).await;
    client
}

/// A greeted client with nick `name`, in `room` (joined without password).
async fn joined(server: &TestServer, name: &str, room: &str) -> Client {
    let mut client = named(server, name).await;
    client.request(&join(room, ""), &ok_bytes()).await;
    client
}

/// Asks LIST_USERS until the answer is `expected` (the server processes a
/// disconnect asynchronously).
async fn wait_for_list(client: &mut Client, request: &ClientMessage, expected: &[u8]) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        client.send(request).await;
        let got = client.recv_raw().await;
        if got == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "list never became {}; last {}",
            show_frame(expected),
            show_frame(&got)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------
// Raw sockets, for tests that must watch a connection without the helpers

async fn raw_connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).unwrap();
    stream
}

/// Reads one whole frame from a raw socket.
async fn raw_frame(stream: &mut TcpStream) -> Vec<u8> {
    tokio::time::timeout(PATIENCE, async {
        let mut frame = vec![0u8; 7];
        stream.read_exact(&mut frame).await.expect("frame header");
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        frame.resize(7 + len, 0);
        stream
            .read_exact(&mut frame[7..])
            .await
            .expect("frame payload");
        check_legacy_frame(&frame);
        frame
    })
    .await
    .expect("timed out waiting for a frame")
}

async fn raw_ask(stream: &mut TcpStream, message: &ClientMessage, expected: &[u8]) {
    stream.write_all(&wire(message)).await.unwrap();
    let got = raw_frame(stream).await;
    assert!(
        got == expected,
        "\n got: {}\nwant: {}",
        show_frame(&got),
        show_frame(expected)
    );
}

/// Splits a byte stream into whole frames; a trailing partial frame is
/// ignored.
fn split_frames(mut data: &[u8]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    while data.len() >= 7 {
        let len = u32::from_be_bytes(data[..4].try_into().unwrap()) as usize;
        if data.len() < 7 + len {
            break;
        }
        frames.push(data[..7 + len].to_vec());
        data = &data[7 + len..];
    }
    frames
}

// ---------------------------------------------------------------------------
// Shared by several sections

const RATE_LIMITED: &[u8] = b"Slow down: at most 5 messages per 5 seconds.";

/// Asserts a `9a 01 Malformed frame: ...` reply and then the close.
async fn expect_malformed_then_close(client: &mut Client, case: &str) {
    let got = client.recv_raw().await;
    assert_eq!(
        &got[4..8],
        &[0x04, 0x17, 0x9a, 0x01],
        "{case}: {}",
        show_frame(&got)
    );
    let reason = String::from_utf8_lossy(&got[8..]).into_owned();
    assert!(reason.starts_with("Malformed frame:"), "{case}: {reason:?}");
    client.expect_closed().await;
}

// ===========================================================================

/// PROTOCOL.md §2, rules 1 and 4: exactly one `9a` per request, in request
/// order, and none to a HEARTBEAT (§4.2).
mod s2_rules_for_the_real_client {
    use super::*;

    #[tokio::test]
    async fn every_request_gets_exactly_one_response_in_order() {
        let server = TestServer::start(test_config()).await;
        let (mut alice, name) = server.greeted().await;
        assert_eq!(name, b"rand0");
        let mut bob = named(&server, "bob").await;

        // Every kind of request, succeeding and failing, pipelined in one write.
        // Replies come in request order, so if any request got two replies (or
        // none), the sequence below would not match.
        let exchange: Vec<(ClientMessage, Vec<u8>)> = vec![
            (hello(GREETING), response_bytes(0, b"rand0")),
            (nick("alice"), ok_bytes()),
            (nick("bob"), error(text::NICK_TAKEN)),
            (nick(""), error(text::NICK_EMPTY)),
            (join("lobby", ""), ok_bytes()),
            (join("lobby", ""), error("You are already in room 'lobby'.")),
            (list_users(), names(&["alice"])),
            (list_rooms(), names(&["lobby"])),
            (room_msg("lobby", "hi"), ok_bytes()),
            (
                room_msg("kitchen", "x"),
                error("You are not in room 'kitchen'."),
            ),
            (dm("bob", "yo"), ok_bytes()),
            (dm("nobody", "x"), error(text::NICK_NOT_PRESENT)),
            (leave(), ok_bytes()),
            (list_rooms(), NO_ROOMS.to_vec()),
        ];
        let burst: Vec<u8> = exchange.iter().flat_map(|(m, _)| wire(m)).collect();
        alice.send_raw(&burst).await;
        for (message, expected) in &exchange {
            let got = alice.recv_raw().await;
            assert!(
                got == *expected,
                "reply to {message:?}\n got: {}\nwant: {}",
                show_frame(&got),
                show_frame(expected)
            );
        }
        bob.expect(&dm_relay("alice", "yo")).await;
        all_silent(&mut [&mut alice, &mut bob]).await;
    }

    #[tokio::test]
    async fn heartbeat_gets_no_reply() {
        let server = TestServer::start(test_config()).await;
        // A heartbeat before HELLO is not answered either: the first frame is
        // HELLO's reply.
        let mut client = server.client().await;
        client.send_raw(&heartbeat()).await;
        client.send_raw(&frame_bytes(0x9b, GREETING)).await;
        client.expect(&response_bytes(0, b"rand0")).await;

        let mut other = joined(&server, "other", "lobby").await;
        client.request(&join("lobby", ""), &ok_bytes()).await;
        // The real heartbeat, an empty one and one with junk: payload ignored.
        client.send_raw(&heartbeat()).await;
        client.send_raw(&frame_bytes(0x13, b"")).await;
        client.send_raw(&frame_bytes(0x13, &noise(100, 3))).await;
        all_silent(&mut [&mut client, &mut other]).await;
        // The next frame is the reply to the next request.
        client.request(&list_rooms(), &names(&["lobby"])).await;
        other
            .request(&list_users(), &names(&["other", "rand0"]))
            .await;
    }
}

// ===========================================================================

/// PROTOCOL.md §4.1: HELLO, and the guest names it reports.
mod s4_1_hello {
    use super::*;

    #[tokio::test]
    async fn hello_accepts_any_payload_and_names_rand_n_increasing() {
        let server = TestServer::start(test_config()).await;
        let payloads: Vec<Vec<u8>> = vec![
            Vec::new(),
            GREETING.to_vec(),
            noise(300, 1),
            // The largest frame there is: HELLO is not looked at, whatever its size.
            noise(65_793, 2),
        ];
        let mut clients = Vec::new();
        for (number, payload) in payloads.iter().enumerate() {
            let mut client = server.client().await;
            client.send_raw(&frame_bytes(0x9b, payload)).await;
            // `9a 00` + the name as the rest of the payload, no length byte.
            client
                .expect(&response_bytes(0, format!("rand{number}").as_bytes()))
                .await;
            clients.push(client);
        }
        // The first reply, byte for byte as in §4.1.
        let mut fifth = server.client().await;
        fifth.send_raw(&frame_bytes(0x9b, GREETING)).await;
        fifth
            .expect(&[
                0, 0, 0, 6, 0x04, 0x17, 0x9a, 0x00, b'r', b'a', b'n', b'd', b'4',
            ])
            .await;
        fifth
            .request(
                &list_users(),
                &names(&["rand0", "rand1", "rand2", "rand3", "rand4"]),
            )
            .await;
    }

    #[tokio::test]
    async fn guest_number_taken_as_a_nick_is_skipped() {
        let server = TestServer::start(test_config()).await;
        let (mut first, name) = server.greeted().await;
        assert_eq!(name, b"rand0");
        let (_second, name) = server.greeted().await;
        assert_eq!(name, b"rand1");
        first.request(&nick("rand2"), &ok_bytes()).await;
        let (mut third, name) = server.greeted().await;
        assert_eq!(name, b"rand3", "rand2 is taken by a nick, so it is skipped");
        // Never two live users with one name.
        third
            .request(&list_users(), &names(&["rand1", "rand2", "rand3"]))
            .await;
        // A nick far ahead is skipped when the counter gets there.
        third.request(&nick("rand5"), &ok_bytes()).await;
        let (_fourth, name) = server.greeted().await;
        assert_eq!(name, b"rand4");
        let (mut fifth, name) = server.greeted().await;
        assert_eq!(name, b"rand6");
        fifth
            .request(
                &list_users(),
                &names(&["rand1", "rand2", "rand4", "rand5", "rand6"]),
            )
            .await;
    }

    #[tokio::test]
    async fn guest_numbers_are_never_reused_after_a_disconnect() {
        let server = TestServer::start(test_config()).await;
        let (mut first, name) = server.greeted().await;
        assert_eq!(name, b"rand0");
        let (second, name) = server.greeted().await;
        assert_eq!(name, b"rand1");
        second.close().await;
        // Once the server has forgotten rand1 ...
        wait_for_list(&mut first, &list_users(), &names(&["rand0"])).await;
        // ... its number still is not handed out again.
        let (_third, name) = server.greeted().await;
        assert_eq!(name, b"rand2");
        // Nor is a number freed by a nick change.
        first.request(&nick("alice"), &ok_bytes()).await;
        let (mut fourth, name) = server.greeted().await;
        assert_eq!(name, b"rand3");
        fourth
            .request(&list_users(), &names(&["alice", "rand2", "rand3"]))
            .await;
    }
}

// ===========================================================================

/// PROTOCOL.md §4.3
mod s4_3_nick {
    use super::*;

    #[tokio::test]
    async fn nick_taken_by_someone_else_is_refused() {
        let server = TestServer::start(test_config()).await;
        let mut alice = named(&server, "alice").await;
        let (mut other, _) = server.greeted().await;
        other
            .request(
                &nick("alice"),
                b"\x00\x00\x00\x2b\x04\x17\x9a\x01This nick has been nicked by someone else.",
            )
            .await;
        // A guest name in use is taken too.
        let (mut third, _) = server.greeted().await;
        third
            .request(&nick("rand1"), &error(text::NICK_TAKEN))
            .await;
        // Names compare bytewise: another case is another name.
        other.request(&nick("Alice"), &ok_bytes()).await;
        alice
            .request(&list_users(), &names(&["Alice", "alice", "rand2"]))
            .await;
    }

    #[tokio::test]
    async fn nick_to_own_current_name_is_ok() {
        let server = TestServer::start(test_config()).await;
        let (mut client, name) = server.greeted().await;
        client.request(&nick(&name), &ok_bytes()).await;
        client.request(&nick("alice"), &ok_bytes()).await;
        client.request(&nick("alice"), &ok_bytes()).await;
        client.request(&list_users(), &names(&["alice"])).await;
    }

    #[tokio::test]
    async fn nick_empty_or_with_whitespace_or_control_bytes_is_refused() {
        let server = TestServer::start(test_config()).await;
        let (mut client, _) = server.greeted().await;
        client
            .request(&nick(""), &error("Nick must not be empty."))
            .await;
        assert_eq!(text::NICK_EMPTY, "Nick must not be empty.");
        let invalid: [&[u8]; 9] = [
            b"al ice",
            b" alice",
            b"alice ",
            b"al\tice",
            b"al\nice",
            b"al\rice",
            b"al\x01ice",
            b"\x00",
            b"al\x7fice",
        ];
        for name in invalid {
            client.send(&nick(name)).await;
            let got = client.recv_raw().await;
            assert!(
                got == error(text::NICK_INVALID),
                "nick {name:?}: {}",
                show_frame(&got)
            );
        }
        // Nothing changed.
        client.request(&list_users(), &names(&["rand0"])).await;
    }

    #[tokio::test]
    async fn utf8_nick_passes_through_as_raw_bytes() {
        let server = TestServer::start(test_config()).await;
        let mut accented = named(&server, "héllo").await;
        let mut symbols = named(&server, "ünïcødé✓").await;
        // The longest name there is: 255 bytes of UTF-8.
        let longest = format!("{}x", "é".repeat(127));
        assert_eq!(longest.len(), 255);
        let (mut long, _) = server.greeted().await;
        long.request(&nick(&longest), &ok_bytes()).await;
        let mut expected = vec![
            "h\u{e9}llo".as_bytes().to_vec(),
            longest.as_bytes().to_vec(),
            "ünïcødé✓".as_bytes().to_vec(),
        ];
        expected.sort();
        accented.request(&list_users(), &names(&expected)).await;
        // The raw bytes, as §1's field encodings show them.
        assert_eq!(&names(&["héllo"])[8..], b"\x06\x68\xc3\xa9\x6c\x6c\x6f");
        // And they are the sender name of a DM.
        accented
            .request(&dm("ünïcødé✓", "salut"), &ok_bytes())
            .await;
        symbols.expect(&dm_relay("héllo", "salut")).await;
        // Different bytes are different names, even if they look alike (NFD).
        symbols.request(&nick("he\u{301}llo"), &ok_bytes()).await;
    }
}

// ===========================================================================

/// PROTOCOL.md §4.4: room names, moving, empty rooms, and the room
/// passwords of steps 4 and 7.
mod s4_4_join {
    use super::*;

    #[tokio::test]
    async fn join_creates_a_missing_room() {
        let server = TestServer::start(test_config()).await;
        let (mut client, _) = server.greeted().await;
        client.request(&list_rooms(), &NO_ROOMS).await;
        client.request(&join("lobby", ""), &ok_bytes()).await;
        client.request(&list_rooms(), &names(&["lobby"])).await;
        client.request(&list_users(), &names(&["rand0"])).await;
        // Room names are raw bytes too.
        let (mut other, _) = server.greeted().await;
        other.request(&join("salle-é", ""), &ok_bytes()).await;
        other
            .request(&list_rooms(), &names(&["lobby", "salle-é"]))
            .await;
    }

    #[tokio::test]
    async fn wrong_password_is_refused_with_the_exact_text() {
        let server = TestServer::start(test_config()).await;
        let mut owner = named(&server, "owner").await;
        owner.request(&join("vault", "sesame"), &ok_bytes()).await;
        let (mut guest, _) = server.greeted().await;
        let wrong =
            b"\x00\x00\x00\x36\x04\x17\x9a\x01Invalid password. I'm afraid I can't let you do that.";
        assert_eq!(*wrong, error(text::WRONG_PASSWORD)[..]);
        guest.request(&join("vault", "sesam"), wrong).await;
        guest.request(&join("vault", "SESAME"), wrong).await;
        guest.request(&join("vault", ""), wrong).await;
        // Still outside: LIST_USERS lists everyone, and the room has one member.
        guest
            .request(&list_users(), &names(&["owner", "rand1"]))
            .await;
        owner.request(&list_users(), &names(&["owner"])).await;
    }

    #[tokio::test]
    async fn join_of_the_current_room_is_refused() {
        let server = TestServer::start(test_config()).await;
        let mut client = joined(&server, "alice", "lobby").await;
        client
            .request(
                &join("lobby", ""),
                b"\x00\x00\x00\x21\x04\x17\x9a\x01You are already in room 'lobby'.",
            )
            .await;
        // Also with a password, right or not: the answer does not depend on it.
        let mut owner = named(&server, "owner").await;
        owner.request(&join("vault", "pw"), &ok_bytes()).await;
        owner
            .request(
                &join("vault", "pw"),
                &error("You are already in room 'vault'."),
            )
            .await;
        owner
            .request(
                &join("vault", "nope"),
                &error("You are already in room 'vault'."),
            )
            .await;
        // Still a member of each.
        client.request(&list_users(), &names(&["alice"])).await;
        owner.request(&list_users(), &names(&["owner"])).await;
        owner
            .request(&list_rooms(), &names(&["lobby", "vault"]))
            .await;
    }

    #[tokio::test]
    async fn join_while_in_another_room_moves_the_user() {
        let server = TestServer::start(test_config()).await;
        let mut anna = joined(&server, "anna", "red").await;
        let mut bert = joined(&server, "bert", "red").await;
        let mut cleo = joined(&server, "cleo", "blue").await;
        anna.request(&list_users(), &names(&["anna", "bert"])).await;

        // No LEAVE first, as the legacy client does.
        bert.request(&join("blue", ""), &ok_bytes()).await;
        anna.request(&list_users(), &names(&["anna"])).await;
        cleo.request(&list_users(), &names(&["bert", "cleo"])).await;
        bert.request(&list_rooms(), &names(&["blue", "red"])).await;
        // Bert now hears blue, not red.
        cleo.request(&room_msg("blue", "hi blue"), &ok_bytes())
            .await;
        bert.expect(&relay("blue", "cleo", "hi blue")).await;
        anna.request(&room_msg("red", "hi red"), &ok_bytes()).await;
        bert.request(&room_msg("red", "x"), &error("You are not in room 'red'."))
            .await;

        // Moving the last member out deletes the old room.
        anna.request(&join("blue", ""), &ok_bytes()).await;
        anna.request(&list_rooms(), &names(&["blue"])).await;
        cleo.request(&list_users(), &names(&["anna", "bert", "cleo"]))
            .await;
        all_silent(&mut [&mut bert, &mut anna, &mut cleo]).await;
    }

    #[tokio::test]
    async fn empty_password_is_the_same_as_none() {
        let server = TestServer::start(test_config()).await;
        let mut owner = named(&server, "owner").await;
        // The legacy client sends `00` for "no password".
        owner.send_raw(&frame_bytes(0x03, b"\x05lobby\x00")).await;
        owner.expect(&ok_bytes()).await;
        let (mut guest, _) = server.greeted().await;
        guest.request(&join("lobby", ""), &ok_bytes()).await;
        guest
            .request(&list_users(), &names(&["owner", "rand1"]))
            .await;
        // The creator's (empty) password is the room's: a non-empty one is wrong.
        let (mut third, _) = server.greeted().await;
        third
            .request(&join("lobby", "secret"), &error(text::WRONG_PASSWORD))
            .await;
    }

    #[tokio::test]
    async fn room_is_deleted_when_its_last_member_leaves() {
        let server = TestServer::start(test_config()).await;
        let mut anna = named(&server, "anna").await;
        let mut bert = named(&server, "bert").await;
        let (mut watcher, _) = server.greeted().await;
        anna.request(&join("vault", "one"), &ok_bytes()).await;
        bert.request(&join("vault", "one"), &ok_bytes()).await;

        anna.request(&leave(), &ok_bytes()).await;
        watcher.request(&list_rooms(), &names(&["vault"])).await;
        bert.request(&leave(), &ok_bytes()).await;
        watcher.request(&list_rooms(), &NO_ROOMS).await;
        watcher
            .request(
                &list_rooms(),
                &[0x00, 0x00, 0x00, 0x01, 0x04, 0x17, 0x9a, 0x00],
            )
            .await;

        // The room is gone with its password: the next creator sets a new one.
        anna.request(&join("vault", "two"), &ok_bytes()).await;
        bert.request(&join("vault", "one"), &error(text::WRONG_PASSWORD))
            .await;
        bert.request(&join("vault", "two"), &ok_bytes()).await;

        // A member disconnecting counts as leaving.
        anna.close().await;
        wait_for_list(&mut bert, &list_users(), &names(&["bert"])).await;
        bert.close().await;
        wait_for_list(&mut watcher, &list_rooms(), &NO_ROOMS).await;
    }

    #[tokio::test]
    async fn room_name_must_be_non_empty_without_whitespace_or_control_bytes() {
        let server = TestServer::start(test_config()).await;
        let (mut client, _) = server.greeted().await;
        client
            .request(&join("", ""), &error(text::ROOM_EMPTY))
            .await;
        for room in [&b"my room"[..], b"tab\there", b"bell\x07", b"\x7f"] {
            client.send(&join(room, "")).await;
            let got = client.recv_raw().await;
            assert!(
                got == error(text::ROOM_INVALID),
                "room {room:?}: {}",
                show_frame(&got)
            );
        }
        client.request(&list_rooms(), &NO_ROOMS).await;
    }

    // Room passwords: step 4, and the hashing queue of step 7.

    #[tokio::test]
    async fn protected_room_accepts_the_right_password_and_refuses_a_wrong_one() {
        let server = TestServer::start(test_config()).await;
        let mut owner = named(&server, "owner").await;
        owner
            .request(&join("vault", "correct horse"), &ok_bytes())
            .await;
        let mut friend = named(&server, "friend").await;
        let mut stranger = named(&server, "stranger").await;
        stranger
            .request(&join("vault", "correct hors"), &error(text::WRONG_PASSWORD))
            .await;
        friend
            .request(&join("vault", "correct horse"), &ok_bytes())
            .await;
        stranger
            .request(
                &join("vault", "correct horse "),
                &error(text::WRONG_PASSWORD),
            )
            .await;
        owner
            .request(&list_users(), &names(&["friend", "owner"]))
            .await;
        // Raw bytes, UTF-8 or not, are the password.
        stranger
            .request(&join("binary", b"\xff\x00\xfe"), &ok_bytes())
            .await;
        friend
            .request(
                &join("binary", b"\xff\x00\xff"),
                &error(text::WRONG_PASSWORD),
            )
            .await;
        friend
            .request(&join("binary", b"\xff\x00\xfe"), &ok_bytes())
            .await;
    }

    #[tokio::test]
    async fn default_argon2_parameters_work_end_to_end() {
        let config = Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls_listen: None,
            ..Config::default()
        };
        assert_eq!(
            (config.argon2_memory_kib, config.argon2_iterations),
            (19_456, 2)
        );
        let server = TestServer::start(config).await;
        let mut owner = named(&server, "owner").await;
        owner
            .request(&join("vault", "correct horse"), &ok_bytes())
            .await;
        let mut friend = named(&server, "friend").await;
        friend
            .request(&join("vault", "correct horse"), &ok_bytes())
            .await;
        let mut stranger = named(&server, "stranger").await;
        stranger
            .request(&join("vault", "wrong horse"), &error(text::WRONG_PASSWORD))
            .await;
        stranger
            .request(&join("vault", ""), &error(text::WRONG_PASSWORD))
            .await;
        friend
            .request(&list_users(), &names(&["friend", "owner"]))
            .await;
        stranger.request(&list_rooms(), &names(&["vault"])).await;
    }

    #[tokio::test]
    async fn join_flood_on_a_full_hash_queue_gets_one_reply_each_and_busy() {
        let config = Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls_listen: None,
            password_hash_threads: 1,
            password_queue: 1,
            ..Config::default()
        };
        let server = TestServer::start(config).await;
        let mut owner = named(&server, "owner").await;
        owner.request(&join("vault", "pw"), &ok_bytes()).await;
        let mut observer = named(&server, "observer").await;
        let mut joiners = Vec::new();
        for _ in 0..20 {
            joiners.push(server.greeted().await.0);
        }

        // Every joiner sends its JOIN at nearly the same time; each check takes
        // ~13 ms on the single hashing thread, and one more may wait.
        let password = |index: usize| {
            if index.is_multiple_of(2) {
                "pw"
            } else {
                "wrong"
            }
        };
        for (index, joiner) in joiners.iter_mut().enumerate() {
            joiner.send(&join("vault", password(index))).await;
        }
        // Someone who needs no hash is answered meanwhile.
        observer.request(&list_rooms(), &names(&["vault"])).await;

        let busy = try_later(text::PASSWORDS_BUSY);
        let (mut admitted, mut refused, mut busy_count) = (0, 0, 0);
        for (index, joiner) in joiners.iter_mut().enumerate() {
            let got = joiner.recv_raw().await;
            if got == busy {
                busy_count += 1;
            } else if index % 2 == 0 {
                assert!(got == ok_bytes(), "right password: {}", show_frame(&got));
                admitted += 1;
            } else {
                assert!(
                    got == error(text::WRONG_PASSWORD),
                    "wrong password: {}",
                    show_frame(&got)
                );
                refused += 1;
            }
            // Exactly one reply: the next frame answers the next request.
            joiner.request(&list_rooms(), &names(&["vault"])).await;
        }
        assert!(busy_count >= 1, "a full queue answers 9a 02");
        assert_eq!(admitted + refused + busy_count, 20);
        // The room holds exactly the owner and the admitted joiners.
        owner.send(&list_users()).await;
        let members = owner.recv_raw().await;
        assert_eq!(split_names(&members).len(), 1 + admitted);
        assert_eq!(
            text::PASSWORDS_BUSY,
            "Server busy checking passwords, try again later."
        );
    }

    /// The names in a `9a 00 {u8 len, name}*` reply.
    fn split_names(reply: &[u8]) -> Vec<Vec<u8>> {
        assert_eq!(&reply[6..8], &[0x9a, 0x00], "{}", show_frame(reply));
        let mut rest = &reply[8..];
        let mut list = Vec::new();
        while let Some((&len, tail)) = rest.split_first() {
            list.push(tail[..len as usize].to_vec());
            rest = &tail[len as usize..];
        }
        list
    }

    #[tokio::test]
    async fn only_the_joining_client_waits_for_its_password_hash() {
        // A deliberately slow hash (default memory, many passes) so that the
        // order of replies shows who waits.
        let config = Config {
            argon2_memory_kib: 19_456,
            argon2_iterations: 60,
            password_hash_threads: 1,
            ..test_config()
        };
        let server = TestServer::start(config).await;
        let mut joiner = named(&server, "joiner").await;
        let mut observer = named(&server, "observer").await;
        // The joiner's LIST_ROOMS is pipelined behind its JOIN.
        let mut burst = wire(&join("vault", "pw"));
        burst.extend(wire(&list_rooms()));
        joiner.send_raw(&burst).await;
        // The observer is served while the hash runs: the room is not made yet.
        observer.request(&list_rooms(), &NO_ROOMS).await;
        observer
            .request(&list_users(), &names(&["joiner", "observer"]))
            .await;
        joiner.expect_silence(Duration::ZERO).await;
        // The joiner gets its replies in order once the hash is done.
        joiner.expect(&ok_bytes()).await;
        joiner.expect(&names(&["vault"])).await;
        observer.request(&list_rooms(), &names(&["vault"])).await;
    }
}

// ===========================================================================

/// PROTOCOL.md §4.5
mod s4_5_leave {
    use super::*;

    #[tokio::test]
    async fn leave_in_a_room_answers_ok_and_keeps_the_connection() {
        let server = TestServer::start(test_config()).await;
        let mut client = joined(&server, "alice", "lobby").await;
        client
            .request(&leave(), &[0, 0, 0, 1, 0x04, 0x17, 0x9a, 0x00])
            .await;
        client.expect_silence(SILENCE).await;
        client.request(&list_rooms(), &NO_ROOMS).await;
        client
            .request(&room_msg("lobby", "x"), &error(text::VOID))
            .await;
    }

    #[tokio::test]
    async fn leave_outside_a_room_answers_ok_then_closes() {
        let server = TestServer::start(test_config()).await;
        let (mut client, _) = server.greeted().await;
        client.request(&leave(), &ok_bytes()).await;
        client.expect_closed().await;

        // After leaving a room, a second LEAVE leaves the server; requests
        // pipelined behind it are not answered.
        let mut other = joined(&server, "bob", "lobby").await;
        other.request(&leave(), &ok_bytes()).await;
        let mut burst = wire(&leave());
        burst.extend(wire(&list_rooms()));
        other.send_raw(&burst).await;
        other.expect(&ok_bytes()).await;
        other.expect_closed().await;

        let (mut last, name) = server.greeted().await;
        last.request(&list_users(), &names(&[name])).await;
    }
}

// ===========================================================================

/// PROTOCOL.md §4.6
mod s4_6_list_users_and_list_rooms {
    use super::*;

    #[tokio::test]
    async fn list_users_in_a_room_lists_its_members_sorted_bytewise() {
        let server = TestServer::start(test_config()).await;
        let mut zelda = joined(&server, "zelda", "den").await;
        let _bob = joined(&server, "Bob", "den").await;
        let mut alice = joined(&server, "alice", "den").await;
        let _elan = joined(&server, "élan", "den").await;
        let mut mallory = joined(&server, "mallory", "attic").await;
        let _nobody = named(&server, "nobody").await;
        // 'B' < 'a' < 'z' < 0xc3: bytewise, not case-folded or by code point.
        let expected = names(&["Bob", "alice", "zelda", "élan"]);
        alice.request(&list_users(), &expected).await;
        zelda.request(&list_users(), &expected).await;
        mallory.request(&list_users(), &names(&["mallory"])).await;
    }

    #[tokio::test]
    async fn list_users_outside_a_room_lists_everyone_sorted_bytewise() {
        let server = TestServer::start(test_config()).await;
        let _zelda = joined(&server, "zelda", "den").await;
        let _bob = joined(&server, "Bob", "attic").await;
        let mut alice = named(&server, "alice").await;
        let (_guest, _) = server.greeted().await;
        alice
            .request(
                &list_users(),
                b"\x00\x00\x00\x17\x04\x17\x9a\x00\x03Bob\x05alice\x05rand3\x05zelda",
            )
            .await;
    }

    #[tokio::test]
    async fn list_rooms_is_sorted_bytewise_without_a_count() {
        let server = TestServer::start(test_config()).await;
        let (mut client, _) = server.greeted().await;
        client
            .request(&list_rooms(), &[0, 0, 0, 1, 0x04, 0x17, 0x9a, 0x00])
            .await;
        let _secret = joined(&server, "a", "secret").await;
        let _open = joined(&server, "b", "open").await;
        client
            .request(
                &list_rooms(),
                b"\x00\x00\x00\x0d\x04\x17\x9a\x00\x04open\x06secret",
            )
            .await;
        let _r2 = joined(&server, "c", "r2").await;
        let _r1 = joined(&server, "d", "R1").await;
        let _r10 = joined(&server, "e", "r10").await;
        let _n = joined(&server, "f", "ñ").await;
        client
            .request(
                &list_rooms(),
                &names(&["R1", "open", "r10", "r2", "secret", "ñ"]),
            )
            .await;
    }
}

// ===========================================================================

/// PROTOCOL.md §4.7
mod s4_7_dm {
    use super::*;

    #[tokio::test]
    async fn dm_to_an_unknown_nick_is_refused() {
        let server = TestServer::start(test_config()).await;
        let mut alice = named(&server, "alice").await;
        let mut bob = named(&server, "bob").await;
        alice
            .request(
                &dm("carol", "hi"),
                b"\x00\x00\x00\x11\x04\x17\x9a\x01Nick not present",
            )
            .await;
        // Bytewise: "Bob" is not "bob"; an empty target is nobody.
        alice
            .request(&dm("Bob", "hi"), &error(text::NICK_NOT_PRESENT))
            .await;
        alice
            .request(&dm("", "hi"), &error(text::NICK_NOT_PRESENT))
            .await;
        // A name given up with NICK is gone.
        bob.request(&nick("robert"), &ok_bytes()).await;
        alice
            .request(&dm("bob", "hi"), &error(text::NICK_NOT_PRESENT))
            .await;
        bob.expect_silence(SILENCE).await;
    }

    #[tokio::test]
    async fn dm_reaches_its_target_in_or_out_of_rooms() {
        let server = TestServer::start(test_config()).await;
        let mut alice = named(&server, "alice").await;
        let mut bob = named(&server, "bob").await;
        let mut cleo = named(&server, "cleo").await;

        // Both outside rooms; byte for byte as in capture 03.
        alice
            .request(&dm("bob", "hello bob, this is a DM"), &ok_bytes())
            .await;
        bob.expect(b"\x00\x00\x00\x1f\x04\x17\x12\x05alice\x00\x17hello bob, this is a DM")
            .await;
        // Sender in a room, target outside.
        alice.request(&join("lobby", ""), &ok_bytes()).await;
        alice
            .request(&dm("bob", "from the lobby"), &ok_bytes())
            .await;
        bob.expect(&dm_relay("alice", "from the lobby")).await;
        // Sender outside, target in a room.
        bob.request(&dm("alice", "into the lobby"), &ok_bytes())
            .await;
        alice.expect(&dm_relay("bob", "into the lobby")).await;
        // Different rooms.
        bob.request(&join("kitchen", ""), &ok_bytes()).await;
        bob.request(&dm("alice", "across rooms"), &ok_bytes()).await;
        alice.expect(&dm_relay("bob", "across rooms")).await;
        // Same room: only the target gets it, as a DM.
        cleo.request(&join("lobby", ""), &ok_bytes()).await;
        cleo.request(&dm("alice", "just you"), &ok_bytes()).await;
        alice.expect(&dm_relay("cleo", "just you")).await;
        all_silent(&mut [&mut alice, &mut bob, &mut cleo]).await;
    }
}

// ===========================================================================

/// PROTOCOL.md §4.8
mod s4_8_room_msg {
    use super::*;

    #[tokio::test]
    async fn room_message_in_no_room_shouts_into_the_void() {
        let server = TestServer::start(test_config()).await;
        let (mut client, _) = server.greeted().await;
        let mut bystander = joined(&server, "bob", "lobby").await;
        client
            .request(
                &room_msg("", "hello?"),
                b"\x00\x00\x00\x2a\x04\x17\x9a\x01You shout into the void and hear nothing.",
            )
            .await;
        // Naming a room one is not in changes nothing.
        client
            .request(&room_msg("lobby", "hello?"), &error(text::VOID))
            .await;
        bystander.expect_silence(SILENCE).await;
    }

    #[tokio::test]
    async fn room_message_naming_another_room_is_refused() {
        let server = TestServer::start(test_config()).await;
        let mut alice = joined(&server, "alice", "lobby").await;
        let mut bob = joined(&server, "bob", "lobby").await;
        let mut cleo = joined(&server, "cleo", "kitchen").await;
        alice
            .request(
                &room_msg("kitchen", "psst"),
                b"\x00\x00\x00\x1f\x04\x17\x9a\x01You are not in room 'kitchen'.",
            )
            .await;
        alice
            .request(&room_msg("", "psst"), &error("You are not in room ''."))
            .await;
        alice
            .request(
                &room_msg("Lobby", "psst"),
                &error("You are not in room 'Lobby'."),
            )
            .await;
        all_silent(&mut [&mut bob, &mut cleo, &mut alice]).await;
    }

    #[tokio::test]
    async fn room_message_goes_to_every_other_member_exactly() {
        let server = TestServer::start(test_config()).await;
        let mut alice = joined(&server, "alice", "lobby").await;
        let mut bob = joined(&server, "bob", "lobby").await;
        let mut cleo = joined(&server, "cleo", "lobby").await;
        let mut dave = joined(&server, "dave", "kitchen").await;
        let mut erin = named(&server, "erin").await;

        alice
            .request(&room_msg("lobby", "hello from alice"), &ok_bytes())
            .await;
        // Byte for byte as in capture 02.
        let expected: &[u8] =
            b"\x00\x00\x00\x1e\x04\x17\x15\x05lobby\x05alice\x00\x10hello from alice";
        bob.expect(expected).await;
        cleo.expect(expected).await;
        // No copy to the sender, nothing to other rooms or to users in none.
        all_silent(&mut [&mut alice, &mut dave, &mut erin]).await;

        // UTF-8 and bytes that look like frames pass through untouched.
        let tricky = [
            "héllo wörld ✓".as_bytes(),
            &[0, 0, 0, 1, 0x04, 0x17, 0x9a, 0x00],
        ]
        .concat();
        bob.request(&room_msg("lobby", &tricky), &ok_bytes()).await;
        alice.expect(&relay("lobby", "bob", &tricky)).await;
        cleo.expect(&relay("lobby", "bob", &tricky)).await;
        all_silent(&mut [&mut bob, &mut dave, &mut erin]).await;
    }

    #[tokio::test]
    async fn a_65535_byte_room_message_relays_intact() {
        let server = TestServer::start(test_config()).await;
        let mut alice = joined(&server, "alice", "lobby").await;
        let mut bob = joined(&server, "bob", "lobby").await;
        let text = noise(65_535, 8);
        alice.request(&room_msg("lobby", &text), &ok_bytes()).await;
        let got = bob.recv_raw().await;
        assert_eq!(got.len(), 7 + 1 + 5 + 1 + 5 + 2 + 65_535);
        assert_eq!(
            &got[..21],
            b"\x00\x01\x00\x0d\x04\x17\x15\x05lobby\x05alice\xff\xff"
        );
        assert!(got == relay("lobby", "alice", &text), "relay differs");
        alice.expect_silence(SILENCE).await;
    }
}

// ===========================================================================

/// PROTOCOL.md §7: the rate limit and the idle cutoff.
mod s7_timers_and_limits {
    use super::*;

    // Rate limit

    #[tokio::test]
    async fn sixth_message_within_the_window_is_refused_and_dropped() {
        let server = TestServer::start(test_config()).await;
        let mut alice = joined(&server, "alice", "lobby").await;
        let mut bob = joined(&server, "bob", "lobby").await;
        // Five, room messages and DMs together, are fine.
        for index in 0..3 {
            let text = format!("room {index}");
            alice.request(&room_msg("lobby", &text), &ok_bytes()).await;
            bob.expect(&relay("lobby", "alice", &text)).await;
        }
        for index in 0..2 {
            let text = format!("dm {index}");
            alice.request(&dm("bob", &text), &ok_bytes()).await;
            bob.expect(&dm_relay("alice", &text)).await;
        }
        // The sixth is refused with 9a 02, whichever kind it is, and dropped.
        alice
            .request(
                &dm("bob", "sixth"),
                b"\x00\x00\x00\x2d\x04\x17\x9a\x02Slow down: at most 5 messages per 5 seconds.",
            )
            .await;
        alice
            .request(&room_msg("lobby", "seventh"), &try_later(RATE_LIMITED))
            .await;
        bob.expect_silence(SILENCE).await;
        // Other requests are not limited, and the limit is per user.
        alice.request(&list_rooms(), &names(&["lobby"])).await;
        bob.request(&dm("alice", "my own budget"), &ok_bytes())
            .await;
        alice.expect(&dm_relay("bob", "my own budget")).await;
    }

    #[tokio::test]
    async fn failed_messages_count_too() {
        let server = TestServer::start(test_config()).await;
        let mut alice = named(&server, "alice").await;
        let mut bob = named(&server, "bob").await;
        for _ in 0..3 {
            alice
                .request(&room_msg("", "anyone?"), &error(text::VOID))
                .await;
        }
        for _ in 0..2 {
            alice
                .request(&dm("nobody", "hi"), &error(text::NICK_NOT_PRESENT))
                .await;
        }
        alice
            .request(&dm("bob", "hi bob"), &try_later(RATE_LIMITED))
            .await;
        bob.expect_silence(SILENCE).await;
    }

    #[tokio::test]
    async fn the_window_slides_and_the_client_can_send_again() {
        let config = Config {
            rate_limit_window_secs: 0.5,
            ..test_config()
        };
        let server = TestServer::start(config).await;
        let mut alice = named(&server, "alice").await;
        let mut bob = named(&server, "bob").await;
        for index in 0..5 {
            alice
                .request(&dm("bob", format!("{index}")), &ok_bytes())
                .await;
        }
        alice
            .request(
                &dm("bob", "too soon"),
                &try_later("Slow down: at most 5 messages per 0.5 seconds."),
            )
            .await;
        for index in 0..5 {
            bob.expect(&dm_relay("alice", format!("{index}"))).await;
        }
        tokio::time::sleep(Duration::from_millis(600)).await;
        alice.request(&dm("bob", "again"), &ok_bytes()).await;
        bob.expect(&dm_relay("alice", "again")).await;
        bob.expect_silence(SILENCE).await;
    }

    // Idle cutoff

    fn idle_config() -> Config {
        Config {
            idle_timeout_secs: 0.3,
            ..test_config()
        }
    }

    #[tokio::test]
    async fn a_silent_client_is_closed_without_a_message() {
        let server = TestServer::start(idle_config()).await;
        let (mut greeted, _) = server.greeted().await;
        let mut mute = server.client().await; // never even says HELLO
                                              // `expect_closed_within` fails on any frame before the close.
        greeted.expect_closed_within(Duration::from_secs(3)).await;
        mute.expect_closed_within(Duration::from_secs(3)).await;
    }

    #[tokio::test]
    async fn heartbeats_keep_a_client_connected() {
        let server = TestServer::start(idle_config()).await;
        let (mut client, name) = server.greeted().await;
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(1_200) {
            client.send_raw(&heartbeat()).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Still there, and nothing was sent in between.
        client.request(&list_users(), &names(&[name])).await;
    }

    #[tokio::test]
    async fn a_partial_frame_does_not_count_as_activity() {
        let server = TestServer::start(idle_config()).await;
        let mut stream = raw_connect(server.addr).await;
        stream
            .write_all(&frame_bytes(0x9b, GREETING))
            .await
            .unwrap();
        assert_eq!(raw_frame(&mut stream).await, response_bytes(0, b"rand0"));
        // A NICK frame announcing 200 payload bytes, trickled a byte every
        // 100 ms: bytes keep arriving, but no frame is ever complete.
        stream
            .write_all(&[0, 0, 0, 200, 0x04, 0x17, 0x0f, 199])
            .await
            .unwrap();
        let started = Instant::now();
        let mut received = Vec::new();
        let closed = loop {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "still connected after 5 s of partial frame"
            );
            let mut chunk = [0u8; 256];
            match tokio::time::timeout(Duration::from_millis(100), stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break true,
                Ok(Ok(n)) => received.extend_from_slice(&chunk[..n]),
                Err(_) => {
                    stream.write_all(b"a").await.unwrap();
                }
            }
        };
        assert!(closed);
        assert!(
            received.is_empty(),
            "idle cutoff sends nothing: {}",
            show_frame(&received)
        );
    }
}

// ===========================================================================

/// PROTOCOL.md §8, with the framing and limits of §1 that say what is
/// well formed.
mod s8_malformed_input {
    use super::*;

    #[tokio::test]
    async fn malformed_frames_get_a_reason_and_close_only_that_connection() {
        let server = TestServer::start(test_config()).await;
        let mut bystander = joined(&server, "bystander", "lobby").await;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("bad magic", vec![0, 0, 0, 0, 0x04, 0x18, 0x06]),
            (
                "bad magic with payload",
                b"\x00\x00\x00\x02\x17\x04\x0f\x01a".to_vec(),
            ),
            ("unknown opcode 0x77", vec![0, 0, 0, 0, 0x04, 0x17, 0x77]),
            ("unknown opcode with payload", frame_bytes(0x77, b"abc")),
            (
                "server opcode 0x9a from a client",
                frame_bytes(0x9a, b"\x00"),
            ),
            (
                "server opcode 0x99 from a client",
                frame_bytes(0x99, &[0; 9]),
            ),
            ("NICK length overruns", frame_bytes(0x0f, b"\x05alic")),
            ("NICK length underruns", frame_bytes(0x0f, b"\x05alicee")),
            ("NICK without a length", frame_bytes(0x0f, b"")),
            (
                "JOIN without password field",
                frame_bytes(0x03, b"\x05lobby"),
            ),
            (
                "JOIN with a trailing byte",
                frame_bytes(0x03, b"\x05lobby\x00x"),
            ),
            (
                "JOIN password overruns",
                frame_bytes(0x03, b"\x05lobby\x03pw"),
            ),
            (
                "ROOM_MSG text overruns",
                frame_bytes(0x15, b"\x05lobby\x00\x05abc"),
            ),
            (
                "ROOM_MSG text underruns",
                frame_bytes(0x15, b"\x05lobby\x00\x01abc"),
            ),
            ("ROOM_MSG half a u16", frame_bytes(0x15, b"\x05lobby\x00")),
            ("DM text overruns", frame_bytes(0x12, b"\x03bob\x00\x09hi")),
            (
                "DM with a trailing byte",
                frame_bytes(0x12, b"\x03bob\x00\x02hi!"),
            ),
            ("LEAVE with a trailing byte", frame_bytes(0x06, b"\x00")),
            ("LIST_USERS with a payload", frame_bytes(0x0c, b"x")),
            ("LIST_ROOMS with a payload", frame_bytes(0x09, b"x")),
            (
                "frame of 65,794 bytes (header only)",
                b"\x00\x01\x01\x02\x04\x17\x15".to_vec(),
            ),
            (
                "frame of 4 GiB (header only)",
                b"\xff\xff\xff\xff\x04\x17\x15".to_vec(),
            ),
            ("over-long length alone", b"\x00\x01\x01\x02".to_vec()),
        ];
        for (case, bytes) in &cases {
            let (mut victim, _) = server.greeted().await;
            victim.send_raw(bytes).await;
            expect_malformed_then_close(&mut victim, case).await;
        }
        // Before HELLO, and for a member of a room.
        let mut early = server.client().await;
        early.send_raw(&[0, 0, 0, 0, 0x04, 0x18, 0x9b]).await;
        expect_malformed_then_close(&mut early, "bad magic first").await;
        let mut member = joined(&server, "member", "lobby").await;
        member.send_raw(&frame_bytes(0x77, b"")).await;
        expect_malformed_then_close(&mut member, "room member").await;

        // The bystander saw nothing, is still served, and the victims are gone.
        bystander.expect_silence(SILENCE).await;
        bystander
            .request(&list_users(), &names(&["bystander"]))
            .await;
        bystander.request(&leave(), &ok_bytes()).await;
        bystander
            .request(&list_users(), &names(&["bystander"]))
            .await;
        bystander.request(&list_rooms(), &NO_ROOMS).await;
    }

    #[tokio::test]
    async fn requests_before_a_malformed_frame_are_answered_and_after_it_not() {
        let server = TestServer::start(test_config()).await;
        let (mut client, _) = server.greeted().await;
        let mut burst = wire(&list_rooms());
        burst.extend(wire(&nick("alice")));
        burst.extend([0, 0, 0, 0, 0x04, 0x18, 0x09]);
        burst.extend(wire(&list_users()));
        client.send_raw(&burst).await;
        client.expect(&NO_ROOMS).await;
        client.expect(&ok_bytes()).await;
        expect_malformed_then_close(&mut client, "pipelined").await;
    }

    #[tokio::test]
    async fn zero_length_client_frames_are_legal() {
        let server = TestServer::start(test_config()).await;
        let (mut client, name) = server.greeted().await;
        client.send_raw(&[0, 0, 0, 0, 0x04, 0x17, 0x09]).await; // LIST_ROOMS
        client.expect(&NO_ROOMS).await;
        client.send_raw(&[0, 0, 0, 0, 0x04, 0x17, 0x0c]).await; // LIST_USERS
        client.expect(&names(&[&name])).await;
        client.request(&join("lobby", ""), &ok_bytes()).await;
        client.send_raw(&[0, 0, 0, 0, 0x04, 0x17, 0x06]).await; // LEAVE
        client.expect(&ok_bytes()).await;
        client.send_raw(&[0, 0, 0, 0, 0x04, 0x17, 0x13]).await; // empty HEARTBEAT
        client.send_raw(&[0, 0, 0, 0, 0x04, 0x17, 0x9b]).await; // empty HELLO
        client.expect(&response_bytes(0, &name)).await;
        client.request(&list_rooms(), &NO_ROOMS).await;
    }

    #[tokio::test]
    async fn the_largest_legal_frame_is_accepted() {
        let server = TestServer::start(test_config()).await;
        let mut client = joined(&server, "alice", "lobby").await;
        let mut bob = joined(&server, "bob", "lobby").await;
        let long_room = "x".repeat(255);
        let text = noise(65_535, 12);

        let frame = wire(&room_msg(&long_room, &text));
        assert_eq!(frame.len(), 7 + 65_793);
        assert_eq!(&frame[..4], &65_793u32.to_be_bytes());
        client.send_raw(&frame).await;
        client
            .expect(&error(format!("You are not in room '{long_room}'.")))
            .await;

        let frame = wire(&dm("y".repeat(255), &text));
        assert_eq!(frame.len(), 7 + 65_793);
        client.send_raw(&frame).await;
        client.expect(&error(text::NICK_NOT_PRESENT)).await;

        // Still connected and served.
        client.request(&room_msg("lobby", &text), &ok_bytes()).await;
        bob.expect(&relay("lobby", "alice", &text)).await;
        client.request(&list_rooms(), &names(&["lobby"])).await;
    }

    #[tokio::test]
    async fn frames_split_anywhere_or_batched_are_decoded() {
        let server = TestServer::start(test_config()).await;
        let mut client = server.client().await;
        // HELLO one byte at a time.
        for byte in frame_bytes(0x9b, GREETING) {
            client.send_raw(&[byte]).await;
            tokio::task::yield_now().await;
        }
        client.expect(&response_bytes(0, b"rand0")).await;
        // Three frames in one write, the last one split in the middle of its header.
        let mut burst = wire(&nick("alice"));
        burst.extend(wire(&join("lobby", "")));
        let tail = wire(&list_users());
        burst.extend(&tail[..3]);
        client.send_raw(&burst).await;
        client.expect(&ok_bytes()).await;
        client.expect(&ok_bytes()).await;
        client.expect_silence(Duration::from_millis(100)).await;
        client.send_raw(&tail[3..]).await;
        client.expect(&names(&["alice"])).await;
    }
}

// ===========================================================================

/// PROTOCOL.md §9: slow consumers, the connection cap and shutdown.
mod s9_connections_slow_consumers_and_shutdown {
    use super::*;

    /// The text of flood message `index`: its number, then filler.
    fn flood_text(index: usize) -> Vec<u8> {
        let mut text = (index as u64).to_be_bytes().to_vec();
        text.extend((0..16_000 - 8).map(|k| (k + index * 7) as u8));
        text
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_consumer_is_disconnected_and_others_get_everything_in_order() {
        let config = Config {
            send_queue_bytes: 64 * 1024,
            rate_limit_messages: 1_000_000,
            ..test_config()
        };
        let server = TestServer::start(config).await;
        let mut flooder = joined(&server, "flooder", "lobby").await;
        let mut watcher = joined(&server, "watcher", "lobby").await;
        // The sleeper joins, then never reads again.
        let mut sleeper = raw_connect(server.addr).await;
        sleeper
            .write_all(&frame_bytes(0x9b, GREETING))
            .await
            .unwrap();
        raw_frame(&mut sleeper).await;
        raw_ask(&mut sleeper, &nick("sleeper"), &ok_bytes()).await;
        raw_ask(&mut sleeper, &join("lobby", ""), &ok_bytes()).await;
        let everyone = names(&["flooder", "sleeper", "watcher"]);
        flooder.request(&list_users(), &everyone).await;

        // The watcher reads everything, checking order, and reports progress.
        let (progress, mut watched) = tokio::sync::watch::channel(0usize);
        let reader = tokio::spawn(async move {
            let end = relay("lobby", "flooder", "end");
            let mut count = 0;
            loop {
                let frame = watcher.recv_raw().await;
                if frame == end {
                    return (watcher, count);
                }
                assert!(
                    frame == relay("lobby", "flooder", flood_text(count)),
                    "watcher: message {count} out of order: {}",
                    show_frame(&frame)
                );
                count += 1;
                progress.send_replace(count);
            }
        });

        let mut sent = 0;
        loop {
            assert!(sent < 4_000, "the sleeper was never cut off");
            // Keep the watcher at most one message behind, so only the sleeper's
            // queue can grow.
            tokio::time::timeout(PATIENCE, watched.wait_for(|&count| count + 1 >= sent))
                .await
                .expect("watcher keeps up")
                .expect("watcher alive");
            flooder
                .request(&room_msg("lobby", flood_text(sent)), &ok_bytes())
                .await;
            sent += 1;
            if sent % 8 == 0 {
                flooder.send(&list_users()).await;
                let members = flooder.recv_raw().await;
                if members == names(&["flooder", "watcher"]) {
                    break;
                }
                assert!(members == everyone, "members: {}", show_frame(&members));
            }
        }
        flooder
            .request(&room_msg("lobby", "end"), &ok_bytes())
            .await;
        let (mut watcher, count) = tokio::time::timeout(PATIENCE, reader)
            .await
            .expect("watcher finishes")
            .expect("watcher task");
        assert_eq!(count, sent, "the watcher got every message");
        watcher
            .request(&list_users(), &names(&["flooder", "watcher"]))
            .await;

        // The sleeper finds what the kernel buffered, in order, then the end.
        let mut drained = Vec::new();
        let ended = tokio::time::timeout(PATIENCE, async {
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                match sleeper.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => drained.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "the sleeper's connection was closed");
        let frames = split_frames(&drained);
        assert!(
            frames.len() < sent,
            "the sleeper was cut off before the end"
        );
        for (index, frame) in frames.iter().enumerate() {
            assert!(
                *frame == relay("lobby", "flooder", flood_text(index)),
                "sleeper frame {index}: {}",
                show_frame(frame)
            );
        }
    }

    #[tokio::test]
    async fn connections_over_the_cap_are_told_the_server_is_full() {
        let config = Config {
            max_connections: 2,
            ..test_config()
        };
        let server = TestServer::start(config).await;
        let (first, _) = server.greeted().await;
        let (mut second, _) = server.greeted().await;
        let mut third = server.client().await;
        third
            .expect(b"\x00\x00\x00\x1e\x04\x17\x9a\x02Server full, try again later.")
            .await;
        third.expect_closed().await;
        assert_eq!(
            try_later(text::SERVER_FULL)[..],
            b"\x00\x00\x00\x1e\x04\x17\x9a\x02Server full, try again later."[..]
        );
        second
            .request(&list_users(), &names(&["rand0", "rand1"]))
            .await;

        // Once someone leaves, a new connection is served again.
        first.close().await;
        let deadline = Instant::now() + PATIENCE;
        loop {
            let mut next = server.client().await;
            next.send_raw(&frame_bytes(0x9b, GREETING)).await;
            let reply = next.recv_raw().await;
            if reply[7] == 0x00 {
                assert!(reply[8..].starts_with(b"rand"), "{}", show_frame(&reply));
                break;
            }
            assert!(
                reply == try_later(text::SERVER_FULL),
                "{}",
                show_frame(&reply)
            );
            assert!(Instant::now() < deadline, "the freed slot is never reused");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn shutdown_delivers_queued_replies_then_closes_every_client() {
        let config = Config {
            rate_limit_messages: 1_000,
            ..test_config()
        };
        let server = TestServer::start(config).await;
        let addr = server.addr;
        let mut alice = joined(&server, "alice", "lobby").await;
        let mut bob = joined(&server, "bob", "lobby").await;

        // Alice pipelines requests and reads nothing; her DM reaching Bob shows
        // the server has handled them all.
        let mut burst = Vec::new();
        for _ in 0..20 {
            burst.extend(wire(&list_rooms()));
        }
        burst.extend(wire(&dm("bob", "sync")));
        alice.send_raw(&burst).await;
        bob.expect(&dm_relay("alice", "sync")).await;
        // Then Bob's room messages queue up for her behind her own replies.
        for index in 0..30 {
            bob.request(&room_msg("lobby", format!("message {index}")), &ok_bytes())
                .await;
        }

        server.stop().await;

        for _ in 0..20 {
            alice.expect(&names(&["lobby"])).await;
        }
        alice.expect(&ok_bytes()).await;
        for index in 0..30 {
            alice
                .expect(&relay("lobby", "bob", format!("message {index}")))
                .await;
        }
        alice.expect_closed().await;
        bob.expect_closed().await;
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "no longer accepting"
        );
    }
}

// ===========================================================================

/// README.md, "What is logged": events with peer and nick, never message
/// contents or passwords.
mod readme_what_is_logged {
    use super::*;

    use std::sync::{Arc, Mutex};

    /// Collects everything the server logs while the guard is alive.
    #[derive(Clone, Default)]
    struct LogSink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for LogSink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    // The default current-thread runtime runs the server's tasks on this test's
    // thread, so a thread-local subscriber sees all of their events.
    #[tokio::test]
    async fn events_are_logged_but_never_message_contents_or_passwords() {
        let sink = LogSink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::TRACE)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);

        let config = Config {
            idle_timeout_secs: 1.0,
            ..test_config()
        };
        let server = TestServer::start(config).await;
        let mut alice = named(&server, "alice").await;
        let mut bob = named(&server, "bob").await;
        alice
            .request(&join("vault", "hunter2-pw"), &ok_bytes())
            .await;
        bob.request(&join("vault", "swordfish-pw"), &error(text::WRONG_PASSWORD))
            .await;
        bob.request(&join("vault", "hunter2-pw"), &ok_bytes()).await;
        for _ in 0..3 {
            alice
                .request(&room_msg("vault", "room-secret-text"), &ok_bytes())
                .await;
            bob.expect(&relay("vault", "alice", "room-secret-text"))
                .await;
        }
        for _ in 0..2 {
            alice
                .request(&dm("bob", "dm-secret-text"), &ok_bytes())
                .await;
            bob.expect(&dm_relay("alice", "dm-secret-text")).await;
        }
        alice
            .request(&dm("bob", "limited-secret-text"), &try_later(RATE_LIMITED))
            .await;
        bob.send_raw(&frame_bytes(
            0x15,
            b"\x05vault\x00\xffmalformed-secret-text",
        ))
        .await;
        expect_malformed_then_close(&mut bob, "malformed").await;
        alice.request(&leave(), &ok_bytes()).await;
        // An idle cutoff.
        alice.expect_closed_within(Duration::from_secs(5)).await;
        server.stop().await;

        let logs = String::from_utf8_lossy(&sink.0.lock().unwrap()).into_owned();
        for secret in [
            "room-secret-text",
            "dm-secret-text",
            "limited-secret-text",
            "malformed-secret-text",
            "hunter2-pw",
            "swordfish-pw",
        ] {
            assert!(!logs.contains(secret), "the log shows {secret:?}:\n{logs}");
        }
        let lower = logs.to_lowercase();
        for event in [
            "alice",
            "bob",
            "vault",
            "127.0.0.1",
            "rate limit",
            "malformed",
            "password",
            "idle",
        ] {
            assert!(
                lower.contains(event),
                "the log never mentions {event:?}:\n{logs}"
            );
        }
    }
}
