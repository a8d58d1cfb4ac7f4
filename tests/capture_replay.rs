//! Replays the client side of real legacy-client captures against parlor and
//! checks every reply byte for byte.
//!
//! The captures (`captures/*.frames.txt`) were taken against a buggy student
//! server, so its replies are the expectation only where the student server
//! was right; each deliberate difference is listed with the reason.

mod support;

use std::collections::HashMap;

use support::*;

#[derive(Debug, PartialEq)]
enum Direction {
    ToServer,
    ToClient,
}

#[derive(Debug)]
enum Event {
    Connect,
    Close,
    Frame(Vec<u8>),
}

#[derive(Debug)]
struct Line {
    port: u16,
    direction: Direction,
    event: Event,
}

fn opcode(name: &str) -> u8 {
    match name {
        "JOIN" => 0x03,
        "LEAVE" => 0x06,
        "LIST_ROOMS" => 0x09,
        "LIST_USERS" => 0x0c,
        "NICK" => 0x0f,
        "DM" => 0x12,
        "HEARTBEAT" => 0x13,
        "ROOM_MSG" => 0x15,
        "RESPONSE" => 0x9a,
        "HELLO" => 0x9b,
        other => panic!("unknown opcode name {other}"),
    }
}

/// Parses lines like
/// `3.372 c36844->srv  ROOM_MSG  len=24  05 6c 6f ...  b'...'`.
fn parse(text: &str) -> Vec<Line> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let mut words = line.split_whitespace().skip(1);
            let route = words.next().unwrap();
            let (direction, port) = match route.split_once("->").unwrap() {
                ("srv", client) => (Direction::ToClient, client),
                (client, "srv") => (Direction::ToServer, client),
                _ => panic!("bad route in {line}"),
            };
            let port = port.trim_start_matches('c').parse().unwrap();
            let event = match words.next().unwrap() {
                "[SYN]" => Event::Connect,
                "[FIN]" => Event::Close,
                name => {
                    let len: usize = words.next().unwrap()["len=".len()..].parse().unwrap();
                    let payload: Vec<u8> = words
                        .take(len)
                        .map(|hex| u8::from_str_radix(hex, 16).unwrap())
                        .collect();
                    assert_eq!(payload.len(), len, "{line}");
                    Event::Frame(frame_bytes(opcode(name), &payload))
                }
            };
            Line {
                port,
                direction,
                event,
            }
        })
        .collect()
}

/// A reply where parlor deliberately differs from the captured server:
/// the `nth` (0-based) frame the server sent to client `port` is instead
/// `expected`.
struct Deviation {
    port: u16,
    nth: usize,
    expected: Vec<u8>,
    why: &'static str,
}

async fn replay(capture: &str, deviations: &[Deviation]) {
    let path = format!("{}/captures/{capture}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    let server = TestServer::start(test_config()).await;
    let mut clients: HashMap<u16, Client> = HashMap::new();
    let mut received: HashMap<u16, usize> = HashMap::new();
    let mut checked = 0;
    for line in parse(&text) {
        match (line.direction, line.event) {
            (Direction::ToServer, Event::Connect) => {
                clients.insert(line.port, server.client().await);
            }
            (Direction::ToServer, Event::Frame(frame)) => {
                clients.get_mut(&line.port).unwrap().send_raw(&frame).await;
            }
            // Absent when the server already hung up on this client.
            (Direction::ToServer, Event::Close) => {
                if let Some(client) = clients.remove(&line.port) {
                    client.close().await;
                }
            }
            (Direction::ToClient, Event::Frame(captured)) => {
                let nth = received.entry(line.port).or_default();
                let deviation = deviations
                    .iter()
                    .find(|d| d.port == line.port && d.nth == *nth);
                let (expected, why) =
                    deviation.map_or((&captured, "as captured"), |d| (&d.expected, d.why));
                *nth += 1;
                let got = clients.get_mut(&line.port).unwrap().recv_raw().await;
                assert!(
                    got == *expected,
                    "{capture}, reply {} to client {} ({why}):\n got: {}\nwant: {}",
                    *nth - 1,
                    line.port,
                    show_frame(&got),
                    show_frame(expected)
                );
                checked += 1;
            }
            // The server hung up first (LEAVE outside a room): so must parlor.
            (Direction::ToClient, Event::Close) => {
                if let Some(mut client) = clients.remove(&line.port) {
                    client.expect_closed().await;
                }
            }
            (Direction::ToClient, Event::Connect) => {}
        }
    }
    assert!(checked >= 2, "{capture}: only {checked} replies checked");
    server.stop().await;
}

#[tokio::test]
async fn capture_01_connect_heartbeat_idle() {
    // Seven heartbeats, the last in the same instant as LIST_USERS: none is
    // answered, and the list reply is the next frame.
    replay("01_connect_heartbeat_idle.frames.txt", &[]).await;
}

#[tokio::test]
async fn capture_02_room_two_clients() {
    replay(
        "02_room_two_clients.frames.txt",
        &[Deviation {
            port: 36858,
            nth: 0,
            expected: response_bytes(0, b"rand1"),
            why: "guest numbers only increase: the student server handed out rand0 twice",
        }],
    )
    .await;
}

#[tokio::test]
async fn capture_03_dm_nick_collision() {
    replay(
        "03_dm_nick_collision.frames.txt",
        &[
            Deviation {
                port: 57802,
                nth: 0,
                expected: response_bytes(0, b"rand1"),
                why: "guest numbers only increase",
            },
            Deviation {
                port: 57792,
                nth: 5,
                expected: ok_bytes(),
                why: "NICK to your own current name succeeds (seed notes)",
            },
        ],
    )
    .await;
}

#[tokio::test]
async fn capture_04_room_password() {
    let sorted_rooms = response_bytes(0, b"\x04open\x06secret");
    replay(
        "04_room_password.frames.txt",
        &[
            Deviation {
                port: 43556,
                nth: 0,
                expected: response_bytes(0, b"rand1"),
                why: "guest numbers only increase",
            },
            Deviation {
                port: 43548,
                nth: 4,
                expected: sorted_rooms.clone(),
                why: "rooms are listed sorted bytewise",
            },
            Deviation {
                port: 43556,
                nth: 7,
                expected: sorted_rooms,
                why: "rooms are listed sorted bytewise",
            },
        ],
    )
    .await;
}

#[tokio::test]
async fn capture_05_lists_leave_void_disconnect() {
    replay(
        "05_lists_leave_void_disconnect.frames.txt",
        &[
            Deviation {
                port: 47248,
                nth: 1,
                expected: response_bytes(0, b"\x03bee\x05rand0\x05rand2"),
                why: "users are listed sorted bytewise",
            },
            Deviation {
                port: 47244,
                nth: 5,
                expected: response_bytes(0, b"\x02r1\x02r2"),
                why: "rooms are listed sorted bytewise",
            },
        ],
    )
    .await;
}
