//! The fuzz targets' bodies on stable Rust: over the committed corpora
//! (`fuzz/corpus/<target>/seed-*`, made from the captures, and `crash-*`,
//! every crash input fuzzing found), and over a few thousand proptest inputs
//! shaped like real traffic. A regression the fuzzers once found fails here,
//! without nightly.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use parlor_core::fuzzing::{
    cluster_session, file_session_seed, secure_session_seed, session, EventKind, SessionEvent,
    SESSION_CLIENTS,
};
use parlor_proto::fuzzing::{frame_decoder, DecoderInput};
use parlor_proto::legacy::{HEARTBEAT_PAYLOAD, LEGACY_GREETING};
use parlor_proto::ClientMessage;
use parlor_proto::{opcode, HEADER_LEN};
use parlor_replay::capture::{End, Moment, SentKind};
use parlor_replay::Capture;
use proptest::prelude::*;

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn corpus_inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut inputs: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(corpus(target))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        // Only what is committed: libFuzzer's own discoveries stay local.
        .filter(|path| {
            let name = path.file_name().unwrap().to_string_lossy();
            name.starts_with("seed-") || name.starts_with("crash-")
        })
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    inputs.sort();
    inputs
}

/// The seeds derived from each capture are committed as
/// `fuzz/corpus/<target>/seed-<capture>`. After changing a capture or the
/// input formats, rewrite them with `PARLOR_WRITE_SEEDS=1 cargo test seeds`.
#[test]
fn seeds_match_the_captures() {
    let captures = Path::new(env!("CARGO_MANIFEST_DIR")).join("captures");
    let mut pcaps: Vec<PathBuf> = std::fs::read_dir(&captures)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "pcap"))
        .collect();
    pcaps.sort();
    assert!(!pcaps.is_empty());
    let mut seeds = vec![
        ("session", "secure".to_owned(), secure_session_seed()),
        ("session", "file".to_owned(), file_session_seed()),
    ];
    for pcap in pcaps {
        let capture = Capture::read(&pcap).unwrap();
        let name = pcap.file_stem().unwrap().to_string_lossy().into_owned();
        seeds.push(("frame_decoder", name.clone(), decoder_seed(&capture)));
        seeds.push(("session", name, session_seed(&capture)));
    }
    let write = std::env::var_os("PARLOR_WRITE_SEEDS").is_some();
    {
        for (target, name, seed) in seeds {
            let path = corpus(target).join(format!("seed-{name}"));
            if write {
                std::fs::write(&path, &seed).unwrap();
            }
            let committed = std::fs::read(&path).unwrap_or_default();
            assert!(
                committed == seed,
                "{} is not the seed of {name}; run PARLOR_WRITE_SEEDS=1 cargo test seeds",
                path.display()
            );
        }
    }
}

/// A `frame_decoder` seed: every client stream of a capture, one after the
/// other, read in a few awkward sizes.
pub fn decoder_seed(capture: &Capture) -> Vec<u8> {
    let stream = capture
        .clients
        .iter()
        .flat_map(|client| client.sent.iter().flat_map(|sent| sent.bytes.to_vec()))
        .collect();
    DecoderInput {
        limit: 0,
        large_chunks: false,
        chunks: vec![0, 6, 12, 200],
        stream,
    }
    .to_bytes()
}

/// A `session` seed: a capture's clients, each in its own slot, sending
/// what they sent, with the captured pauses (rounded to the wait steps).
pub fn session_seed(capture: &Capture) -> Vec<u8> {
    let mut timed: Vec<(Moment, SessionEvent)> = Vec::new();
    for (index, client) in capture.clients.iter().enumerate() {
        let event = |what| SessionEvent {
            client: index as u8 % SESSION_CLIENTS,
            wait: 0,
            what,
        };
        for sent in &client.sent {
            let what = match sent.kind {
                SentKind::Frame(opcode) => EventKind::Frame {
                    opcode,
                    payload: sent.bytes[HEADER_LEN..].to_vec(),
                },
                SentKind::Garbage | SentKind::Unfinished => {
                    EventKind::Bytes(sent.bytes.iter().copied().take(255).collect())
                }
            };
            let joined = sent.kind == SentKind::Frame(opcode::JOIN);
            timed.push((sent.when, event(what)));
            if joined {
                // The hash of a room password takes milliseconds.
                timed.push((sent.when, event(EventKind::FinishHash)));
            }
        }
        if let End::ClientClosed(when) | End::ServerClosed(when) = client.end {
            timed.push((when, event(EventKind::Close)));
        }
    }
    timed.sort_by_key(|(when, _)| when.packet);
    let mut previous = Duration::ZERO;
    let events: Vec<SessionEvent> = timed
        .into_iter()
        .map(|(when, mut event)| {
            let millis = when.at.saturating_sub(previous).as_secs_f64() * 1000.0;
            previous = when.at.max(previous);
            event.wait = millis.sqrt().round().min(255.0) as u8;
            event
        })
        .collect();
    SessionEvent::encode(&events)
}

/// The secure seed is only worth its place if the hub accepts its
/// registrations, so that fuzzing starts from inside the secure extension:
/// its first client's frames, up to its REGISTER_KEY, make a connection
/// secure.
#[test]
fn the_secure_seed_registers_an_identity_the_hub_accepts() {
    let limits = parlor_core::fuzzing::session_limits();
    let mut harness = parlor_core::harness::Harness::new(limits);
    let conn = parlor_core::ConnId(1);
    harness.connect(conn);
    let first_client = SessionEvent::decode(&secure_session_seed())
        .into_iter()
        .filter(|event| event.client == 0);
    for event in first_client {
        let EventKind::Frame { opcode, payload } = event.what else {
            continue;
        };
        let frame = parlor_proto::Frame::new(opcode, payload);
        let message = ClientMessage::parse(&frame).unwrap();
        let registered = matches!(message, ClientMessage::RegisterKey(_));
        harness.handle(conn, message);
        if registered {
            break;
        }
    }
    assert!(harness.hub.is_secure(conn));
}

#[test]
fn frame_decoder_holds_on_its_corpus() {
    let inputs = corpus_inputs("frame_decoder");
    assert!(inputs.len() >= 9, "the seeds are missing");
    for (path, bytes) in inputs {
        eprintln!("{}", path.display());
        frame_decoder(&bytes);
    }
}

#[test]
fn session_holds_on_its_corpus() {
    let inputs = corpus_inputs("session");
    assert!(inputs.len() >= 9, "the seeds are missing");
    for (path, bytes) in inputs {
        eprintln!("{}", path.display());
        session(&bytes);
    }
}

/// The session corpus, against one node of a cluster: the seeds' JOINs,
/// NICKs and guest names go through the store.
#[test]
fn cluster_session_holds_on_the_session_corpus() {
    for (path, bytes) in corpus_inputs("session") {
        eprintln!("{}", path.display());
        cluster_session(&bytes);
    }
}

fn wire(message: &ClientMessage) -> Vec<u8> {
    message.to_frame().to_bytes().to_vec()
}

/// A stream that looks like traffic: whole frames, with now and then a
/// changed byte or a hostile header.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        6 => client_message().prop_map(|message| wire(&message)),
        1 => proptest::collection::vec(any::<u8>(), 0..40),
        1 => (any::<u32>(), any::<[u8; 3]>()).prop_map(|(len, tail)| {
            let mut header = len.to_be_bytes().to_vec();
            header.extend_from_slice(&tail);
            header
        }),
        // A file chunk's header, its length around the limits.
        1 => (0..300_000u32, 0..3usize).prop_map(|(len, cut)| {
            let header = [&len.to_be_bytes()[..], &[0x04, 0x17, 0x86]].concat();
            header[..header.len() - cut].to_vec()
        }),
    ];
    (
        proptest::collection::vec(piece, 0..8),
        any::<usize>(),
        any::<u8>(),
    )
        .prop_map(|(pieces, at, value)| {
            let mut bytes = pieces.concat();
            if !bytes.is_empty() && value % 4 == 0 {
                let at = at % bytes.len();
                bytes[at] = value;
            }
            bytes
        })
}

fn decoder_input() -> impl Strategy<Value = DecoderInput> {
    let limit = prop_oneof![3 => Just(0u8), 1 => any::<u8>()];
    let chunks = proptest::collection::vec(any::<u8>(), 0..16);
    (limit, any::<bool>(), chunks, stream()).prop_map(|(limit, large_chunks, chunks, stream)| {
        DecoderInput {
            limit,
            large_chunks,
            chunks,
            stream,
        }
    })
}

fn bytes(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
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
    prop_oneof![Just("lobby"), Just("r2"), Just(""), Just("x\ty")].prop_map(bytes)
}

fn password() -> impl Strategy<Value = Bytes> {
    prop_oneof![Just(""), Just("pw"), Just("other")].prop_map(bytes)
}

fn client_message() -> impl Strategy<Value = ClientMessage> {
    prop_oneof![
        Just(ClientMessage::Hello {
            greeting: Bytes::from_static(LEGACY_GREETING)
        }),
        Just(ClientMessage::Heartbeat {
            payload: Bytes::from_static(HEARTBEAT_PAYLOAD)
        }),
        name().prop_map(|name| ClientMessage::Nick { name }),
        (room(), password()).prop_map(|(room, password)| ClientMessage::Join { room, password }),
        Just(ClientMessage::Leave),
        Just(ClientMessage::ListUsers),
        Just(ClientMessage::ListRooms),
        name().prop_map(|target| ClientMessage::DirectMessage {
            target,
            text: bytes("hi")
        }),
        room().prop_map(|room| ClientMessage::RoomMessage {
            room,
            text: bytes("hi")
        }),
    ]
}

/// Mostly short pauses; sometimes long enough (22 s and more) for idle
/// cutoffs and for the rate-limit window to slide.
fn wait() -> impl Strategy<Value = u8> {
    prop_oneof![8 => 0u8..40, 1 => 150u8..=255]
}

fn happening() -> impl Strategy<Value = EventKind> {
    prop_oneof![
        12 => client_message().prop_map(|message| {
            let frame = message.to_frame();
            EventKind::Frame { opcode: frame.opcode, payload: frame.payload.to_vec() }
        }),
        // A frame cut in two reads, or a few bytes of anything.
        1 => (client_message(), any::<usize>()).prop_map(|(message, cut)| {
            let wire = wire(&message);
            EventKind::Bytes(wire[..cut % wire.len()].to_vec())
        }),
        1 => proptest::collection::vec(any::<u8>(), 0..12).prop_map(EventKind::Bytes),
        2 => Just(EventKind::Close),
        3 => Just(EventKind::FinishHash),
    ]
}

fn session_events() -> impl Strategy<Value = Vec<SessionEvent>> {
    let event = (0..SESSION_CLIENTS, wait(), happening())
        .prop_map(|(client, wait, what)| SessionEvent { client, wait, what });
    proptest::collection::vec(event, 1..60)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn frame_decoder_holds_on_generated_input(input in decoder_input()) {
        let bytes = input.to_bytes();
        prop_assert_eq!(DecoderInput::from_bytes(&bytes), input);
        frame_decoder(&bytes);
    }

    #[test]
    fn session_holds_on_generated_sessions(events in session_events()) {
        let bytes = SessionEvent::encode(&events);
        prop_assert_eq!(SessionEvent::decode(&bytes), events);
        session(&bytes);
    }

    #[test]
    fn cluster_session_holds_on_generated_sessions(events in session_events()) {
        cluster_session(&SessionEvent::encode(&events));
    }
}
