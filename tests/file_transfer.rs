//! File transfer end to end, over real TCP: the `parlor` binary as the
//! server, `parlor client --json` processes as senders and recipients, and
//! raw secure clients (`file_transfer/raw.rs`) for the parts of the
//! protocol a reference client would never get wrong: a recipient that
//! never acknowledges, a corrupted chunk, a sender that vanishes.
//!
//! Every test checks the bytes on disk, and that nothing else is left in
//! the download directories (no `.part` file after a failure). Waits are
//! generous and nothing asserts a duration: timeouts that a test waits
//! for are set short in the server's config, so they happen soon, but the
//! test only waits for their effect.
//!
//! The tests are grouped by the subsection of PROTOCOL.md §14 they are
//! about (`s14_5_endings_departures_and_resume` is §14.5).

mod support;
use support::process::ServerProcess;
use support::*;

#[path = "reference_client/process.rs"]
mod process;
#[path = "file_transfer/raw.rs"]
mod raw;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use parlor_proto::transfer::{EndReason, FileNotice, FileRequest};
use parlor_proto::ClientMessage;
use parlor_server::config::Config;
use process::ClientProcess;
use raw::{Raw, RawFile};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Small keys keep key generation and RSA operations fast.
const RSA: &[&str] = &["--rsa-bits", "2048"];

fn config() -> Config {
    Config {
        // Each test says more than 5 things in 5 seconds.
        rate_limit_messages: 1_000,
        ..test_config()
    }
}

/// A fresh, empty download directory for `who` in `test`.
fn download_dir(test: &str, who: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "parlor-file-transfer-{}-{test}-{who}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The names of the files in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Bytes that are not all alike, so that a misplaced chunk shows.
fn content(len: usize, seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn id_of(event: &Value) -> u32 {
    event["id"].as_u64().expect("an id") as u32
}

fn names(value: &Value) -> BTreeSet<String> {
    value
        .as_array()
        .expect("a list of names")
        .iter()
        .map(|name| name.as_str().unwrap().to_string())
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|name| name.to_string()).collect()
}

/// A reference client named `name`, saving to `dir`, with any more flags.
async fn client(name: &'static str, addr: SocketAddr, dir: &Path, more: &[&str]) -> ClientProcess {
    let dir = dir.to_str().unwrap();
    let mut args = RSA.to_vec();
    args.extend(["--download-dir", dir]);
    args.extend(more);
    let mut client = ClientProcess::start(name, addr, &args).await;
    client.line(&format!("\\nick {name}")).await;
    client.expect(&[("event", "nick"), ("name", name)]).await;
    client
}

/// Joins `room` and returns the epoch of the first room key that follows,
/// for a secure room.
async fn join_room(client: &mut ClientProcess, room: &str) -> u32 {
    client.line(&format!("\\join {room}")).await;
    client.expect(&[("event", "joined"), ("room", room)]).await;
    let key = client
        .expect(&[("event", "room_key"), ("room", room)])
        .await;
    key["epoch"].as_u64().unwrap() as u32
}

/// `raw` receives the offer of transfer `id` and accepts it.
async fn raw_accepts(raw: &mut Raw, id: u32) {
    raw.notice("83", |notice| {
        matches!(notice, FileNotice::Offered { id: of, .. } if *of == id).then_some(())
    })
    .await;
    raw.send_file(FileRequest::Decision { id, accept: true })
        .await;
    raw.notice("8b", |notice| {
        matches!(notice, FileNotice::Accepted { id: of, .. } if *of == id).then_some(())
    })
    .await;
    assert_eq!(raw.response().await.0, 0);
}

/// Waits until `client` holds the key of `room` at `epoch`.
async fn has_epoch(client: &mut ClientProcess, room: &str, epoch: u32) {
    let seen = client.seen.iter().any(|event| {
        event["event"] == "room_key" && event["room"] == room && event["epoch"] == epoch
    });
    if !seen {
        client
            .expect_where(&[("event", "room_key"), ("room", room)], |event| {
                event["epoch"] == epoch
            })
            .await;
    }
}

// ===========================================================================

/// PROTOCOL.md §14.2
mod s14_2_offering_a_file {
    use super::*;

    /// §14.2: legacy members are skipped and named in `8a`; §14.1: no file
    /// frame ever reaches them; §14.6: the reference client sends files only
    /// sealed, so in a plaintext room it offers none.
    #[tokio::test]
    async fn in_a_plaintext_room_no_file_is_offered() {
        let server = ServerProcess::start(&config(), false);
        let (alice_dir, bob_dir) = (
            download_dir("legacy", "alice"),
            download_dir("legacy", "bob"),
        );
        // A legacy client makes the room, so it is a plaintext room.
        let mut legacy = Client::connect(server.addr).await;
        legacy.hello().await;
        legacy.request(&nick("oldtimer"), &ok_bytes()).await;
        legacy.request(&join("lobby", ""), &ok_bytes()).await;
        let (mut alice, mut bob) = tokio::join!(
            client("alice", server.addr, &alice_dir, &[]),
            client("bob", server.addr, &bob_dir, &[]),
        );
        for member in [&mut alice, &mut bob] {
            member.line("\\join lobby").await;
            let joined = member
                .expect(&[("event", "joined"), ("room", "lobby")])
                .await;
            assert_eq!(joined["secure"], false);
        }

        // Files go only sealed: there is no key here, so nothing is offered.
        let data = content(3 * 1024 + 1, 8);
        let path = alice_dir.join("open.txt");
        std::fs::write(&path, &data).unwrap();
        alice.line(&format!("\\file send {}", path.display())).await;
        let refused = alice.expect(&[("event", "error")]).await;
        assert!(
            refused["text"]
                .as_str()
                .is_some_and(|text| text.contains("files go only sealed")),
            "{refused}"
        );
        alice.line("\\file list").await;
        let listed = alice.expect(&[("event", "file_list")]).await;
        assert_eq!(listed["transfers"], serde_json::json!([]));

        // The legacy client was never sent a file frame: the next frame it
        // reads (each is checked against what the legacy client accepts) is
        // the answer to its request.
        legacy.send(&ClientMessage::ListRooms).await;
        legacy.expect(&response_bytes(0, b"\x05lobby")).await;

        alice.quit().await;
        bob.quit().await;
        std::fs::remove_dir_all(alice_dir).unwrap();
        std::fs::remove_dir_all(bob_dir).unwrap();
    }
}

// ===========================================================================

/// PROTOCOL.md §14.4
mod s14_4_chunks_acknowledgements_and_the_window {
    use super::*;

    /// §14.4: a recipient that never acknowledges is taken out (reason 5)
    /// and the others go on; with §14.3: one recipient declines.
    #[tokio::test]
    async fn one_sender_four_recipients_one_declines_one_never_acks_two_complete() {
        let server = ServerProcess::start(
            &Config {
                // The recipient that never acknowledges is dropped after this;
                // the others acknowledge each chunk well within it.
                file_ack_timeout_secs: 3.0,
                ..config()
            },
            false,
        );
        let dirs: Vec<PathBuf> = ["alice", "bob", "carol", "dave"]
            .iter()
            .map(|who| download_dir("fanout", who))
            .collect();
        let (mut alice, mut bob, mut carol, mut dave) = tokio::join!(
            client("alice", server.addr, &dirs[0], &[]),
            client("bob", server.addr, &dirs[1], &[]),
            client("carol", server.addr, &dirs[2], &[]),
            client("dave", server.addr, &dirs[3], &[]),
        );
        let mut slow = Raw::connect(server.addr, "slowpoke").await;

        join_room(&mut alice, "vault").await;
        join_room(&mut bob, "vault").await;
        join_room(&mut carol, "vault").await;
        slow.join("vault").await;
        let epoch = join_room(&mut dave, "vault").await;
        for member in [&mut alice, &mut bob, &mut carol] {
            has_epoch(member, "vault", epoch).await;
        }

        // 11 chunks of the default 256 KiB: more than the window of 8, so the
        // recipient that never acknowledges holds the window until it is out.
        let data = content(10 * 262_144 + 7, 1);
        let path = dirs[0].join("payload.bin");
        std::fs::write(&path, &data).unwrap();
        alice.line(&format!("\\file send {}", path.display())).await;
        let offer = alice.expect(&[("event", "file_offer")]).await;
        let id = id_of(&offer);
        assert_eq!(offer["room"], "vault");
        assert_eq!(offer["skipped"], serde_json::json!([]));

        for recipient in [&mut bob, &mut carol, &mut dave] {
            let offered = recipient.expect(&[("event", "file_offered")]).await;
            assert_eq!(id_of(&offered), id);
            assert_eq!(
                (&offered["from"], &offered["name"], &offered["size"]),
                (&"alice".into(), &"payload.bin".into(), &data.len().into())
            );
        }
        bob.line(&format!("\\file decline {id}")).await;
        bob.expect(&[("event", "file_declined")]).await;
        raw_accepts(&mut slow, id).await;
        for recipient in [&mut carol, &mut dave] {
            recipient.line(&format!("\\file accept {id}")).await;
            recipient.expect(&[("event", "file_accepted")]).await;
        }

        let started = alice.expect(&[("event", "file_started")]).await;
        assert_eq!(
            names(&started["recipients"]),
            set(&["carol", "dave", "slowpoke"])
        );

        // slowpoke never acknowledges: it is out, and both ends hear why.
        let (who, text) = slow
            .notice("8f", |notice| match notice {
                FileNotice::Ended {
                    id: of,
                    who,
                    reason: EndReason::TooSlow,
                    text,
                } if *of == id => Some((who.clone(), text.clone())),
                _ => None,
            })
            .await;
        assert_eq!(&who[..], b"slowpoke");
        assert!(!text.is_empty());
        let ended = alice
            .expect(&[("event", "file_ended"), ("who", "slowpoke")])
            .await;
        assert_eq!(ended["reason"], "too_slow");

        let sent = alice.expect(&[("event", "file_sent")]).await;
        assert_eq!(id_of(&sent), id);
        assert_eq!(names(&sent["delivered"]), set(&["carol", "dave"]));
        assert_eq!(sent["sha256"], sha256_hex(&data));
        for (recipient, dir) in [(&mut carol, &dirs[2]), (&mut dave, &dirs[3])] {
            let received = recipient.expect(&[("event", "file_received")]).await;
            assert_eq!(id_of(&received), id);
            assert_eq!(received["sha256"], sha256_hex(&data));
            let saved = dir.join("payload.bin");
            assert_eq!(received["path"], saved.display().to_string());
            assert!(std::fs::read(&saved).unwrap() == data, "the same bytes");
            assert_eq!(listing(dir), ["payload.bin"]);
        }
        assert_eq!(listing(&dirs[1]), Vec::<String>::new(), "bob declined");
        for event in alice.seen.iter().chain(&carol.seen).chain(&dave.seen) {
            assert_ne!(event["event"], "file_failed", "{event}");
        }

        for client in [alice, bob, carol, dave] {
            client.quit().await;
        }
        slow.close().await;
        for dir in dirs {
            std::fs::remove_dir_all(dir).unwrap();
        }
    }

    /// §14.4: an empty file (no chunks), one of exactly one chunk, and one a
    /// byte longer; §14.6: a file to one user is sealed with a DM key.
    #[tokio::test]
    async fn empty_one_chunk_and_one_chunk_plus_one_byte_files_arrive_exactly() {
        let server = ServerProcess::start(&config(), false);
        let (alice_dir, bob_dir) = (download_dir("edges", "alice"), download_dir("edges", "bob"));
        let small = ["--chunk-size", "1024"];
        let (mut alice, mut bob) = tokio::join!(
            client("alice", server.addr, &alice_dir, &small),
            client("bob", server.addr, &bob_dir, &small),
        );
        join_room(&mut alice, "vault").await;
        let epoch = join_room(&mut bob, "vault").await;
        has_epoch(&mut alice, "vault", epoch).await;

        // (file, its bytes, to bob alone rather than the room, saved as)
        let cases = [
            ("empty.txt", Vec::new(), false, "empty.txt"),
            ("one.bin", content(1024, 4), false, "one.bin"),
            ("two.bin", content(1025, 5), true, "two.bin"),
            // The same name again is saved beside the first, not over it.
            ("one.bin", content(1024, 6), true, "one (1).bin"),
        ];
        for (name, data, direct, saved) in &cases {
            let path = alice_dir.join(name);
            std::fs::write(&path, data).unwrap();
            let target = if *direct { " bob" } else { "" };
            alice
                .line(&format!("\\file send {}{target}", path.display()))
                .await;
            let offer = alice.expect(&[("event", "file_offer")]).await;
            let id = id_of(&offer);
            let offered = bob.expect(&[("event", "file_offered")]).await;
            assert_eq!(id_of(&offered), id);
            let room = if *direct { Value::Null } else { "vault".into() };
            assert_eq!(offered["room"], room, "{name}");
            bob.line(&format!("\\file accept {id}")).await;

            let received = bob.expect(&[("event", "file_received")]).await;
            assert_eq!(
                (id_of(&received), &received["size"]),
                (id, &data.len().into())
            );
            assert_eq!(received["sha256"], sha256_hex(data));
            let sent = alice.expect(&[("event", "file_sent")]).await;
            assert_eq!(names(&sent["delivered"]), set(&["bob"]));
            let on_disk = std::fs::read(bob_dir.join(saved)).unwrap();
            assert!(on_disk == *data, "{name}: {} bytes", on_disk.len());
        }
        assert_eq!(
            listing(&bob_dir),
            ["empty.txt", "one (1).bin", "one.bin", "two.bin"]
        );
        // The file to bob alone went under a DM key, asked for first.
        assert!(alice.seen.iter().any(|event| event["event"] == "dm_key"));

        alice.quit().await;
        bob.quit().await;
        std::fs::remove_dir_all(alice_dir).unwrap();
        std::fs::remove_dir_all(bob_dir).unwrap();
    }
}

// ===========================================================================

/// PROTOCOL.md §14.5
mod s14_5_endings_departures_and_resume {
    use super::*;
    use tokio::net::{TcpListener, TcpStream};

    /// §14.5: a sender that disconnects ends the transfer (reason 2).
    #[tokio::test]
    async fn a_sender_that_leaves_mid_way_ends_the_file_and_partial_files_go() {
        let server = ServerProcess::start(&config(), false);
        let dirs = [download_dir("left", "bob"), download_dir("left", "carol")];
        let mut sender = Raw::connect(server.addr, "quitter").await;
        sender.join("vault").await;
        let (mut bob, mut carol) = tokio::join!(
            client("bob", server.addr, &dirs[0], &[]),
            client("carol", server.addr, &dirs[1], &[]),
        );
        join_room(&mut bob, "vault").await;
        let epoch = join_room(&mut carol, "vault").await;
        has_epoch(&mut bob, "vault", epoch).await;
        let (_, key) = sender.room_key("vault", epoch).await;

        let file = sender.room_offer(
            "vault",
            "half.bin",
            content(5 * 1024, 3),
            1024,
            Some((epoch, &key)),
        );
        let (id, _) = sender.offer(&file, 8).await;
        for recipient in [&mut bob, &mut carol] {
            recipient.expect(&[("event", "file_offered")]).await;
            recipient.line(&format!("\\file accept {id}")).await;
            recipient.expect(&[("event", "file_accepted")]).await;
        }
        sender
            .notice("85", |notice| {
                matches!(notice, FileNotice::Start { id: of, .. } if *of == id).then_some(())
            })
            .await;
        for index in 0..2 {
            let data = file.chunk(index);
            sender
                .send_file(FileRequest::Chunk { id, index, data })
                .await;
        }
        sender.window(id, 2).await;
        for dir in &dirs {
            assert_eq!(listing(dir), ["half.bin.part"], "2 chunks written");
        }

        sender.close().await;
        for (recipient, dir) in [(&mut bob, &dirs[0]), (&mut carol, &dirs[1])] {
            let ended = recipient.expect(&[("event", "file_ended")]).await;
            assert_eq!(id_of(&ended), id);
            assert_eq!(ended["reason"], "sender_left");
            assert_eq!(ended["direction"], "receive");
            assert!(ended.get("who").is_none(), "{ended}");
            // Deletions are done in order, before the next line is read.
            recipient.line("\\file list").await;
            recipient.expect(&[("event", "file_list")]).await;
            assert_eq!(listing(dir), Vec::<String>::new());
        }

        bob.quit().await;
        carol.quit().await;
        for dir in dirs {
            std::fs::remove_dir_all(dir).unwrap();
        }
    }

    /// A TCP proxy for one connection that a test can cut, as a network
    /// failure would: both sides see the connection close.
    struct Cuttable {
        addr: SocketAddr,
        task: tokio::task::JoinHandle<()>,
    }

    impl Cuttable {
        async fn start(server: SocketAddr) -> Cuttable {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let task = tokio::spawn(async move {
                let (mut client, _) = listener.accept().await.unwrap();
                let mut upstream = TcpStream::connect(server).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
            Cuttable { addr, task }
        }

        /// Drops both sockets.
        async fn cut(self) {
            self.task.abort();
            let _ = self.task.await;
        }
    }

    /// Waits until the server has logged `message`.
    async fn wait_for_log(server: &ServerProcess, message: &str) {
        let needle = format!("\"message\":\"{message}\"");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !server.logs().contains(&needle) {
            assert!(
                std::time::Instant::now() < deadline,
                "the server never logged {message:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Sends chunks `*next..end` of `file` and moves `next` on.
    async fn send_chunks(sender: &mut Raw, file: &RawFile, id: u32, next: &mut u32, end: u32) {
        for index in *next..end {
            let data = file.chunk(index);
            sender
                .send_file(FileRequest::Chunk { id, index, data })
                .await;
        }
        *next = end;
    }

    /// §14.5: resume, from a new connection, with the token of `8b`.
    #[tokio::test]
    async fn a_recipient_cut_off_mid_file_resumes_after_reconnecting() {
        let server = ServerProcess::start(
            &Config {
                // How long a cut-off recipient may take to resume, and a
                // waiting sender to send: far more than the test needs.
                file_decision_timeout_secs: 120.0,
                ..config()
            },
            false,
        );
        let dir = download_dir("resume", "bob");
        let mut sender = Raw::connect(server.addr, "sender").await;
        sender.join("vault").await;
        let proxy = Cuttable::start(server.addr).await;
        let mut bob = client("bob", proxy.addr, &dir, &[]).await;
        let epoch = join_room(&mut bob, "vault").await;
        let (_, key) = sender.room_key("vault", epoch).await;

        let data = content(20 * 1024 - 100, 7);
        let file = sender.room_offer("vault", "big.bin", data.clone(), 1024, Some((epoch, &key)));
        let (id, _) = sender.offer(&file, 8).await;
        bob.expect(&[("event", "file_offered")]).await;
        bob.line(&format!("\\file accept {id}")).await;
        bob.expect(&[("event", "file_accepted")]).await;
        let window = sender
            .notice("85", |notice| match notice {
                FileNotice::Start { id: of, window, .. } if *of == id => Some(*window),
                _ => None,
            })
            .await;
        assert_eq!(window, 8);
        let mut next = 0;
        // Five chunks arrive and are acknowledged; then the line is cut, and
        // three more are sent that bob never sees.
        send_chunks(&mut sender, &file, id, &mut next, 5).await;
        sender.window(id, 5).await;
        proxy.cut().await;
        send_chunks(&mut sender, &file, id, &mut next, 8).await;
        bob.expect(&[("event", "disconnected")]).await;
        let paused = bob.expect(&[("event", "file_paused")]).await;
        assert_eq!(id_of(&paused), id);
        assert_eq!(listing(&dir), ["big.bin.part"], "the partial file is kept");
        // A resume from a new connection is refused while the server still
        // counts the old one as receiving; wait until it has seen it close.
        wait_for_log(&server, "file recipient detached").await;

        // Reconnected and registered, bob resumes by himself; the server
        // resends what he lacks and the window moves on.
        bob.line(&format!("\\connect {}", server.addr)).await;
        bob.expect(&[("event", "key_registered")]).await;
        let resumed = bob.expect(&[("event", "file_resumed")]).await;
        assert_eq!((id_of(&resumed), &resumed["chunks"]), (id, &5.into()));
        sender.window(id, 8).await;
        let count = file.meta.chunk_count;
        while next < count {
            let end = (next + 4).min(count);
            send_chunks(&mut sender, &file, id, &mut next, end).await;
            sender.window(id, end).await;
        }
        sender.send_file(FileRequest::Done { id }).await;
        assert_eq!(sender.response().await.0, 0);
        let delivered = sender
            .notice("8e", |notice| match notice {
                FileNotice::Finished { id: of, delivered } if *of == id => Some(delivered.clone()),
                _ => None,
            })
            .await;
        // The server knows the recipient by the name it accepted under.
        assert_eq!(delivered, [Bytes::from_static(b"bob")]);

        let received = bob.expect(&[("event", "file_received")]).await;
        assert_eq!(id_of(&received), id);
        assert_eq!(received["sha256"], sha256_hex(&data));
        assert!(
            std::fs::read(dir.join("big.bin")).unwrap() == data,
            "the same bytes"
        );
        assert_eq!(listing(&dir), ["big.bin"]);

        bob.quit().await;
        sender.close().await;
        std::fs::remove_dir_all(dir).unwrap();
    }
}

// ===========================================================================

/// PROTOCOL.md §14.6
mod s14_6_sealing_and_signing {
    use super::*;

    /// §14.6: a chunk that fails its MAC; the recipient deletes what it has
    /// and cancels (§14.5: reason 4, then 9).
    #[tokio::test]
    async fn a_corrupted_chunk_is_detected_and_the_partial_file_deleted() {
        let server = ServerProcess::start(&config(), false);
        let dir = download_dir("corrupt", "bob");
        let mut mallory = Raw::connect(server.addr, "mallory").await;
        mallory.join("vault").await;
        let mut bob = client("bob", server.addr, &dir, &[]).await;
        let epoch = join_room(&mut bob, "vault").await;
        let (_, key) = mallory.room_key("vault", epoch).await;

        let file = mallory.room_offer(
            "vault",
            "notes.txt",
            content(3000, 2),
            1024,
            Some((epoch, &key)),
        );
        let (id, skipped) = mallory.offer(&file, 8).await;
        assert!(skipped.is_empty());
        let offered = bob.expect(&[("event", "file_offered")]).await;
        assert_eq!((id_of(&offered), &offered["from"]), (id, &"mallory".into()));
        bob.line(&format!("\\file accept {id}")).await;
        let accepted = bob.expect(&[("event", "file_accepted")]).await;
        let part = PathBuf::from(accepted["part"].as_str().unwrap());
        assert_eq!(part, dir.join("notes.txt.part"));
        mallory
            .notice("85", |notice| {
                matches!(notice, FileNotice::Start { id: of, .. } if *of == id).then_some(())
            })
            .await;

        // Chunk 0 is fine; chunk 1 has one byte flipped on the way.
        mallory
            .send_file(FileRequest::Chunk {
                id,
                index: 0,
                data: file.chunk(0),
            })
            .await;
        mallory.window(id, 1).await;
        assert!(part.exists(), "chunk 0 was written");
        let mut corrupted = file.chunk(1).to_vec();
        corrupted[100] ^= 0x01;
        mallory
            .send_file(FileRequest::Chunk {
                id,
                index: 1,
                data: Bytes::from(corrupted),
            })
            .await;

        let failed = bob.expect(&[("event", "file_failed")]).await;
        assert_eq!(id_of(&failed), id);
        assert_eq!(
            (&failed["name"], &failed["from"]),
            (&"notes.txt".into(), &"mallory".into())
        );
        let problem = failed["problem"].as_str().unwrap();
        assert!(problem.contains("chunk 1"), "{problem}");
        // Bob gave the file up: mallory hears it, and with nobody left the
        // transfer is over.
        let who = mallory
            .notice("8f for bob", |notice| match notice {
                FileNotice::Ended {
                    who,
                    reason: EndReason::RecipientCancelled,
                    ..
                } => Some(who.clone()),
                _ => None,
            })
            .await;
        assert_eq!(&who[..], b"bob");
        mallory
            .notice("8f for everyone", |notice| match notice {
                FileNotice::Ended {
                    who,
                    reason: EndReason::NoRecipientsLeft,
                    ..
                } if who.is_empty() => Some(()),
                _ => None,
            })
            .await;
        // The partial file is gone, and nothing else was kept.
        bob.line("\\file list").await;
        let list = bob.expect(&[("event", "file_list")]).await;
        assert_eq!(list["transfers"], serde_json::json!([]));
        assert_eq!(listing(&dir), Vec::<String>::new());
        assert!(!bob
            .seen
            .iter()
            .any(|event| event["event"] == "file_received"));

        bob.quit().await;
        mallory.close().await;
        std::fs::remove_dir_all(dir).unwrap();
    }
}

// ===========================================================================

/// PROTOCOL.md §15 (cluster mode)
mod s15_cluster_mode {
    use super::*;
    use parlor_server::config::ClusterConfig;
    use support::nats::NatsServer;

    /// §15: a file offered in a secure room runs on its sender's node and
    /// reaches the members of another node: one declines, one accepts and
    /// gets it whole (four chunks, each relayed to its node, each
    /// acknowledgement relayed back), one accepts and never acknowledges
    /// and is taken out as too slow, and the sender sees the file
    /// delivered. Then a file to one user of the other node.
    #[tokio::test]
    async fn files_reach_their_recipients_on_another_node() {
        let nats = NatsServer::start();
        let node = |id: &str| Config {
            cluster: Some(ClusterConfig::new(vec![nats.url.clone()], id.to_owned())),
            // The recipient that never acknowledges is dropped after this.
            file_ack_timeout_secs: 3.0,
            ..config()
        };
        let (a, b) = (
            ServerProcess::start(&node("a"), false),
            ServerProcess::start(&node("b"), false),
        );
        let dirs: Vec<PathBuf> = ["alice", "bob", "carol"]
            .iter()
            .map(|who| download_dir("nodes", who))
            .collect();
        let (mut alice, mut bob, mut carol) = tokio::join!(
            client("alice", a.addr, &dirs[0], &[]),
            client("bob", b.addr, &dirs[1], &[]),
            client("carol", b.addr, &dirs[2], &[]),
        );
        let mut slow = Raw::connect(b.addr, "slowpoke").await;
        join_room(&mut alice, "vault").await;
        join_room(&mut bob, "vault").await;
        slow.join("vault").await;
        let epoch = join_room(&mut carol, "vault").await;
        for member in [&mut alice, &mut bob] {
            has_epoch(member, "vault", epoch).await;
        }

        let data = content(3 * 262_144 + 5, 4);
        let path = dirs[0].join("across.bin");
        std::fs::write(&path, &data).unwrap();
        alice.line(&format!("\\file send {}", path.display())).await;
        let offer = alice.expect(&[("event", "file_offer")]).await;
        let id = id_of(&offer);
        assert_eq!(offer["skipped"], serde_json::json!([]));
        for recipient in [&mut bob, &mut carol] {
            let offered = recipient.expect(&[("event", "file_offered")]).await;
            assert_eq!((id_of(&offered), &offered["from"]), (id, &"alice".into()));
        }
        carol.line(&format!("\\file decline {id}")).await;
        carol.expect(&[("event", "file_declined")]).await;
        raw_accepts(&mut slow, id).await;
        bob.line(&format!("\\file accept {id}")).await;
        bob.expect(&[("event", "file_accepted")]).await;

        let started = alice.expect(&[("event", "file_started")]).await;
        assert_eq!(names(&started["recipients"]), set(&["bob", "slowpoke"]));
        let who = slow
            .notice("8f", |notice| match notice {
                FileNotice::Ended {
                    id: of,
                    who,
                    reason: EndReason::TooSlow,
                    ..
                } if *of == id => Some(who.clone()),
                _ => None,
            })
            .await;
        assert_eq!(&who[..], b"slowpoke");
        alice
            .expect(&[("event", "file_ended"), ("who", "slowpoke")])
            .await;
        let received = bob.expect(&[("event", "file_received")]).await;
        assert_eq!(id_of(&received), id);
        assert_eq!(received["sha256"], sha256_hex(&data));
        assert!(std::fs::read(dirs[1].join("across.bin")).unwrap() == data);
        let sent = alice.expect(&[("event", "file_sent")]).await;
        assert_eq!(names(&sent["delivered"]), set(&["bob"]));
        assert_eq!(listing(&dirs[2]), Vec::<String>::new(), "carol declined");

        // A file to bob alone: alice's node asks bob's whose key he holds,
        // and the file goes under a DM key made across the nodes.
        let direct = content(2 * 262_144, 5);
        let path = dirs[0].join("direct.bin");
        std::fs::write(&path, &direct).unwrap();
        alice
            .line(&format!("\\file send {} bob", path.display()))
            .await;
        let offer = alice.expect(&[("event", "file_offer")]).await;
        let id = id_of(&offer);
        let offered = bob.expect(&[("event", "file_offered")]).await;
        assert_eq!((id_of(&offered), &offered["room"]), (id, &Value::Null));
        bob.line(&format!("\\file accept {id}")).await;
        let received = bob.expect(&[("event", "file_received")]).await;
        assert_eq!(received["sha256"], sha256_hex(&direct));
        assert!(std::fs::read(dirs[1].join("direct.bin")).unwrap() == direct);
        let sent = alice.expect(&[("event", "file_sent")]).await;
        assert_eq!(names(&sent["delivered"]), set(&["bob"]));

        for client in [alice, bob, carol] {
            client.quit().await;
        }
        slow.close().await;
        for dir in dirs {
            std::fs::remove_dir_all(dir).unwrap();
        }
    }
}
