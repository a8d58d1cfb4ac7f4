//! What the internet sends: broken frames, slowloris, floods and spam, each
//! against the real `parlor` binary over TCP.
//!
//! Every case checks three things: the offender gets a clear `9a 01` /
//! `9a 02` text or is closed; two well-behaved clients chatting alongside
//! (the [`Bystanders`]) keep getting every message, in order; and nothing
//! the server accepted before the attack is lost. Each case also prints the
//! server's resident memory after the attack (`--nocapture` shows it) and
//! checks the rejection counters on the metrics endpoint.
//!
//! The cases are grouped by the PROTOCOL.md section whose limit they push
//! (`s7_timers_and_limits` is §7), and each names its row of README's
//! "Hardening" table.

mod support;
use support::process::ServerProcess;
use support::*;

use std::time::Duration;

use parlor_proto::text;
use parlor_proto::MAX_CLIENT_PAYLOAD;
use parlor_server::config::Config;

/// Settings for a hostile case: the real argon2 parameters, limits that do
/// not get in the bystanders' way, and timers short enough for a test.
fn hostile_config() -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        rate_limit_messages: 10_000,
        max_connections_per_ip: 2_000,
        tls_listen: None,
        ..Config::default()
    }
}

/// Two clients in a room who only ever do the right thing.
struct Bystanders {
    alice: Client,
    bob: Client,
    sent: usize,
}

impl Bystanders {
    async fn join(server: &ServerProcess) -> Bystanders {
        let mut alice = Client::connect(server.addr).await;
        let mut bob = Client::connect(server.addr).await;
        for (client, name) in [(&mut alice, "alice"), (&mut bob, "bob")] {
            client.hello().await;
            client.request(&nick(name), &ok_bytes()).await;
            client.request(&join("calm", ""), &ok_bytes()).await;
        }
        Bystanders {
            alice,
            bob,
            sent: 0,
        }
    }

    /// Alice says `count` numbered things; each is acknowledged, and Bob
    /// hears every one, in order. Bob heartbeats, as the real client does
    /// when it has nothing to say, so short idle timeouts spare him.
    async fn chat(&mut self, count: usize) {
        self.bob.send_raw(&heartbeat()).await;
        for _ in 0..count {
            let line = format!("calm message {}", self.sent);
            self.sent += 1;
            self.alice
                .request(&room_msg("calm", &line), &ok_bytes())
                .await;
            self.bob.expect(&relay("calm", "alice", &line)).await;
        }
    }
}

/// Prints the server's memory after a case; see the module docs.
fn report_rss(server: &ServerProcess, case: &str) {
    eprintln!("RSS after {case}: {} KiB", server.rss_kib());
}

fn rejections(kind: &str) -> String {
    format!("parlor_rejections_total{{kind=\"{kind}\"}}")
}

// ===========================================================================

/// PROTOCOL.md §7: the handshake and idle timers, and the limits on nick
/// changes, password joins, rooms and room members.
mod s7_timers_and_limits {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Hardening: "a connection that never completes a frame" and "a
    /// connection that goes quiet, or trickles a frame forever".
    #[tokio::test]
    async fn slowloris_trickling_a_byte_per_second_is_cut_off() {
        let config = Config {
            handshake_timeout_secs: 2.0,
            idle_timeout_secs: 3.0,
            ..hostile_config()
        };
        let server = ServerProcess::start(&config, true);
        let mut calm = Bystanders::join(&server).await;
        // One never completes a first frame; the other says HELLO, then trickles.
        let mut fresh = TcpStream::connect(server.addr).await.unwrap();
        let mut greeted = TcpStream::connect(server.addr).await.unwrap();
        greeted
            .write_all(&frame_bytes(0x9b, GREETING))
            .await
            .unwrap();
        let mut reply = [0u8; 13];
        greeted.read_exact(&mut reply).await.unwrap();
        let frame = wire(&room_msg("calm", "x".repeat(100)));
        let (mut fresh_closed, mut greeted_closed) = (false, false);
        for byte in &frame {
            calm.chat(1).await;
            for (stream, closed) in [
                (&mut fresh, &mut fresh_closed),
                (&mut greeted, &mut greeted_closed),
            ] {
                *closed = *closed || {
                    let _ = stream.write_all(&[*byte]).await;
                    closed_by_server(stream).await
                };
            }
            if fresh_closed && greeted_closed {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert!(fresh_closed, "the handshake timeout never fired");
        assert!(greeted_closed, "the idle timeout never fired");
        assert_eq!(server.metric(&rejections("handshake_timeout")).await, 1);
        assert_eq!(server.metric(&rejections("idle_timeout")).await, 1);
        report_rss(&server, "slowloris");
    }

    /// Whether the server has closed the stream; it must not have sent anything.
    async fn closed_by_server(stream: &mut TcpStream) -> bool {
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(20), stream.read(&mut buf)).await {
            Err(_) => false,
            Ok(Ok(0) | Err(_)) => true,
            Ok(Ok(n)) => panic!("unexpected bytes {}", hex(&buf[..n])),
        }
    }

    /// Hardening: "a connection that never completes a frame".
    #[tokio::test]
    async fn a_header_then_silence_is_cut_off() {
        let config = Config {
            handshake_timeout_secs: 1.0,
            ..hostile_config()
        };
        let server = ServerProcess::start(&config, false);
        let mut calm = Bystanders::join(&server).await;
        let mut silent = Client::connect(server.addr).await;
        silent.send_raw(&[0, 0, 0, 100, 0x04, 0x17, 0x15]).await;
        calm.chat(5).await;
        silent.expect_closed().await;
        calm.chat(5).await;
        report_rss(&server, "a header then silence");
    }

    /// Hardening: "a connection that never completes a frame" (scanners).
    #[tokio::test]
    async fn a_thousand_connections_without_hello_are_shed() {
        rlimit::increase_nofile_limit(4_096).unwrap();
        let config = Config {
            handshake_timeout_secs: 2.0,
            ..hostile_config()
        };
        let server = ServerProcess::start(&config, true);
        let mut calm = Bystanders::join(&server).await;
        let mut idle = Vec::new();
        for _ in 0..1_000 {
            idle.push(Client::connect(server.addr).await);
        }
        calm.chat(5).await;
        eprintln!(
            "RSS with 1,000 connections open without HELLO: {} KiB",
            server.rss_kib()
        );
        for client in &mut idle {
            client.expect_closed().await;
        }
        calm.chat(5).await;
        assert_eq!(server.metric(&rejections("handshake_timeout")).await, 1_000);
        report_rss(&server, "1,000 connections without HELLO");
    }

    /// Hardening: "argon2 time" and "argon2 memory and threads" (also §4.4,
    /// step 7).
    #[tokio::test]
    async fn a_wrong_password_join_flood_is_rate_limited_and_others_keep_chatting() {
        let server = ServerProcess::start(&hostile_config(), true);
        let mut calm = Bystanders::join(&server).await;
        let mut owner = Client::connect(server.addr).await;
        owner.hello().await;
        owner.request(&join("vault", "s3cret"), &ok_bytes()).await;
        let attackers: u64 = 20;
        let tries: u64 = 8;
        let mut floods = Vec::new();
        for attacker in 0..attackers {
            let addr = server.addr;
            floods.push(tokio::spawn(async move {
                let mut client = Client::connect(addr).await;
                client.hello().await;
                let (mut wrong, mut limited) = (0, 0);
                for guess in 0..tries {
                    client
                        .send(&join("vault", format!("guess-{attacker}-{guess}")))
                        .await;
                    let reply = client.recv_raw().await;
                    if reply == error(text::WRONG_PASSWORD) {
                        wrong += 1;
                    } else if reply
                        == try_later("Slow down: at most 5 password attempts per 60 seconds.")
                        || reply == try_later(text::PASSWORDS_BUSY)
                    {
                        limited += 1;
                    } else {
                        panic!("unexpected reply {}", show_frame(&reply));
                    }
                }
                (wrong, limited)
            }));
        }
        calm.chat(20).await;
        let mut wrong_total = 0;
        for flood in floods {
            let (wrong, limited) = flood.await.unwrap();
            assert!(wrong <= 5, "at most 5 hashes per attacker");
            assert_eq!(wrong + limited, tries, "one reply per JOIN");
            wrong_total += wrong;
        }
        calm.chat(5).await;
        assert_eq!(
            server.metric(&rejections("wrong_password")).await,
            wrong_total
        );
        assert_eq!(
            server.metric(&rejections("password_rate_limited")).await,
            attackers * (tries - 5)
        );
        report_rss(&server, "a wrong-password join flood");
    }

    /// Hardening: "nick churn".
    #[tokio::test]
    async fn nick_spam_is_rate_limited() {
        let server = ServerProcess::start(&hostile_config(), true);
        let mut calm = Bystanders::join(&server).await;
        let mut spammer = Client::connect(server.addr).await;
        spammer.hello().await;
        for round in 0..50 {
            let reply = if round < 5 {
                ok_bytes()
            } else {
                try_later("Slow down: at most 5 nick changes per 60 seconds.")
            };
            spammer.request(&nick(format!("spam{round}")), &reply).await;
            if round % 10 == 0 {
                calm.chat(1).await;
            }
        }
        calm.chat(5).await;
        assert_eq!(server.metric(&rejections("nick_rate_limited")).await, 45);
        report_rss(&server, "nick spam");
    }

    /// Hardening: "rooms" and "room size".
    #[tokio::test]
    async fn rooms_and_members_past_their_limits_are_refused_with_a_reason() {
        let config = Config {
            max_rooms: 2,
            max_room_members: 3,
            ..hostile_config()
        };
        let server = ServerProcess::start(&config, true);
        let mut calm = Bystanders::join(&server).await;
        let mut third = Client::connect(server.addr).await;
        third.hello().await;
        third.request(&join("calm", ""), &ok_bytes()).await;
        let mut fourth = Client::connect(server.addr).await;
        fourth.hello().await;
        fourth
            .request(
                &join("calm", ""),
                &try_later("Room 'calm' is full, try again later."),
            )
            .await;
        fourth.request(&join("side", ""), &ok_bytes()).await;
        let mut fifth = Client::connect(server.addr).await;
        fifth.hello().await;
        fifth
            .request(&join("third-room", ""), &try_later(text::TOO_MANY_ROOMS))
            .await;
        calm.chat(1).await;
        third
            .expect(&relay("calm", "alice", "calm message 0"))
            .await;
        assert_eq!(server.metric(&rejections("room_limit")).await, 2);
        assert_eq!(server.metric("parlor_rooms").await, 2);
        assert_eq!(server.metric("parlor_connections").await, 5);
        report_rss(&server, "room limits");
    }
}

// ===========================================================================

/// PROTOCOL.md §8, with the frame size limit of §1.
mod s8_malformed_input {
    use super::*;

    /// Hardening: "memory for one frame".
    #[tokio::test]
    async fn malformed_frames_get_a_reason_and_close_only_the_offender() {
        let mut server = ServerProcess::start(&hostile_config(), true);
        let mut calm = Bystanders::join(&server).await;
        let over = (MAX_CLIENT_PAYLOAD as u32 + 1).to_be_bytes();
        let cases: Vec<(&str, Vec<u8>, String)> = vec![
            (
                "length ff ff ff ff",
                vec![0xff, 0xff, 0xff, 0xff],
                "frame length 4294967295 exceeds the limit of 65793 bytes".into(),
            ),
            (
                "length just over the max",
                [&over[..], &[0x04, 0x17, 0x15]].concat(),
                "frame length 65794 exceeds the limit of 65793 bytes".into(),
            ),
            (
                "bad magic",
                vec![0, 0, 0, 0, 0x17, 0x04, 0x06],
                "bad magic number 17 04".into(),
            ),
            (
                "unknown opcode",
                frame_bytes(0x77, b""),
                "unknown opcode 0x77".into(),
            ),
            (
                "u8 length overrunning the frame",
                frame_bytes(0x0f, b"\x09short"),
                bad_lengths("NICK"),
            ),
            (
                "u8 length underrunning the frame",
                frame_bytes(0x03, b"\x04calm\x00extra"),
                bad_lengths("JOIN"),
            ),
            (
                "u16 length overrunning the frame",
                frame_bytes(0x15, b"\x04calm\x01\x00hi"),
                bad_lengths("ROOM_MSG"),
            ),
            (
                "u16 length underrunning the frame",
                frame_bytes(0x12, b"\x03bob\x00\x01hi"),
                bad_lengths("DM"),
            ),
            (
                "trailing garbage",
                frame_bytes(0x0c, b"garbage"),
                bad_lengths("LIST_USERS"),
            ),
        ];
        for (case, bytes, reason) in &cases {
            let mut offender = Client::connect(server.addr).await;
            let name = offender.hello().await;
            // A valid DM in the same segment as the bad bytes: accepted, so it
            // must be delivered and answered before the offender is cut off.
            let before = wire(&dm("bob", case));
            offender.send_raw(&[&before[..], bytes].concat()).await;
            offender.expect(&ok_bytes()).await;
            calm.bob.expect(&dm_relay(&name, case)).await;
            offender
                .expect(&error(format!("Malformed frame: {reason}.")))
                .await;
            offender.expect_closed().await;
            calm.chat(3).await;
        }
        server.assert_alive();
        assert_eq!(
            server.metric(&rejections("malformed")).await,
            cases.len() as u64
        );
        assert!(server.logs().contains("\"message\":\"malformed input\""));
        report_rss(&server, "malformed frames");
    }

    fn bad_lengths(name: &str) -> String {
        format!("malformed {name} payload: inner lengths do not match the frame length")
    }

    /// A client that closes in the middle of a frame gets no reply, and
    /// what it sent before is served.
    #[tokio::test]
    async fn a_frame_cut_off_then_a_close_loses_nothing_that_came_before() {
        let server = ServerProcess::start(&hostile_config(), false);
        let mut calm = Bystanders::join(&server).await;
        let mut quitter = Client::connect(server.addr).await;
        let name = quitter.hello().await;
        let whole = wire(&dm("bob", "last words"));
        let cut = &wire(&room_msg("calm", "never finished"))[..10];
        quitter.send_raw(&[&whole[..], cut].concat()).await;
        quitter.expect(&ok_bytes()).await;
        quitter.close().await;
        calm.bob.expect(&dm_relay(&name, "last words")).await;
        calm.chat(3).await;
        report_rss(&server, "a cut-off frame");
    }
}

// ===========================================================================

/// PROTOCOL.md §9: slow consumers and the per-address cap.
mod s9_connections_slow_consumers_and_shutdown {
    use super::*;

    /// Hardening: "bytes queued for a slow reader".
    #[tokio::test]
    async fn a_client_that_never_reads_is_dropped_and_the_room_gets_everything() {
        let config = Config {
            send_queue_bytes: 256 * 1024,
            // One worker: the server runs the current-thread scheduler, as on a
            // one-core machine, and this case covers it too.
            worker_threads: 1,
            ..hostile_config()
        };
        let server = ServerProcess::start(&config, true);
        let mut calm = Bystanders::join(&server).await;
        let mut sleeper = Client::connect(server.addr).await;
        sleeper.hello().await;
        sleeper.request(&join("calm", ""), &ok_bytes()).await;
        // 600 messages of 60 KB: far more than the socket buffers and the
        // sleeper's send queue can hold.
        let text = "y".repeat(60_000);
        for _ in 0..600 {
            calm.alice
                .request(&room_msg("calm", &text), &ok_bytes())
                .await;
            calm.bob.expect(&relay("calm", "alice", &text)).await;
        }
        calm.chat(5).await;
        assert_eq!(server.metric(&rejections("slow_consumer")).await, 1);
        assert!(server.logs().contains("send queue overflow"));
        report_rss(&server, "a room flood with a client that never reads");
        drop(sleeper);
    }

    /// Hardening: "connections from one address".
    #[tokio::test]
    async fn connections_past_the_per_address_limit_are_refused_with_a_reason() {
        let config = Config {
            max_connections_per_ip: 4,
            ..hostile_config()
        };
        let server = ServerProcess::start(&config, true);
        let mut calm = Bystanders::join(&server).await;
        let mut third = Client::connect(server.addr).await;
        third.hello().await;
        let mut fourth = Client::connect(server.addr).await;
        fourth.hello().await;
        for _ in 0..3 {
            let mut refused = Client::connect(server.addr).await;
            refused
                .expect(&try_later(text::TOO_MANY_FROM_ADDRESS))
                .await;
            refused.expect_closed().await;
        }
        calm.chat(5).await;
        fourth.close().await;
        // The freed slot is usable once the server has seen the close.
        let mut again = loop {
            let mut client = Client::connect(server.addr).await;
            client.send(&hello(GREETING)).await;
            let reply = client.recv_raw().await;
            if reply[7] == 0x00 {
                break client;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        again.request(&list_rooms(), &names(&["calm"])).await;
        assert!(server.metric(&rejections("per_ip_limit")).await >= 3);
        report_rss(&server, "the per-address limit");
    }
}
