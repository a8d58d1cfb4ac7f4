//! The transfer state machine on a fake clock: every transition, one test
//! each, driven through the same calls the hub makes.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use parlor_proto::transfer::{FileMeta, FileNotice, FILE_FLAG_ENCRYPTED, NONCE_LEN};
use parlor_proto::{Frame, ServerMessage};

const SENDER: ConnId = ConnId(1);
const BOB: ConnId = ConnId(2);
const CAROL: ConnId = ConnId(3);
const DAVE: ConnId = ConnId(4);
const CHUNK: u32 = 1000;

fn limits() -> TransferLimits {
    TransferLimits {
        max_file_bytes: 1 << 30,
        max_chunk_bytes: 256 << 10,
        max_window: 4,
        max_per_user: 2,
        max_total: 3,
        decision_timeout: Duration::from_secs(30),
        ack_timeout: Duration::from_secs(10),
    }
}

fn meta(size: u64) -> FileMeta {
    FileMeta {
        name: Bytes::from_static(b"notes.txt"),
        size,
        chunk_size: CHUNK,
        chunk_count: size.div_ceil(u64::from(CHUNK)) as u32,
        flags: FILE_FLAG_ENCRYPTED,
        key_id: 1,
        nonce: [7; NONCE_LEN],
        manifest: Bytes::from_static(&[9; 96]),
        counter: 1,
        signature: [3; 64],
    }
}

fn name(conn: ConnId) -> Bytes {
    Bytes::from(format!("user{}", conn.0))
}

/// The fingerprint of the user first connected as `conn`.
fn fingerprint(conn: ConnId) -> Fingerprint {
    [conn.0 as u8; 32]
}

fn invited(conn: ConnId) -> OfferRecipient {
    OfferRecipient {
        conn,
        name: name(conn),
        fingerprint: fingerprint(conn),
    }
}

/// A sender's identity block; the transfer relays it untouched.
fn sender_identity() -> Identity {
    Identity {
        signing_key: [1; 32],
        rsa_der: Bytes::from_static(b"DER"),
        key_binding: [2; 64],
        name_proof: [3; 64],
    }
}

/// What was sent, decoded: (recipient, message).
fn decoded(out: &[Action]) -> Vec<(ConnId, ServerMessage)> {
    let mut messages = Vec::new();
    for action in out {
        let Action::Send { to, frame } = action else {
            panic!("only sends expected, got {action:?}");
        };
        let mut rest = &frame[..];
        while !rest.is_empty() {
            let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            let frame = Frame::new(rest[6], rest[HEADER_LEN..HEADER_LEN + len].to_vec());
            messages.push((*to, ServerMessage::parse(&frame).unwrap()));
            rest = &rest[HEADER_LEN + len..];
        }
    }
    messages
}

fn ok() -> ServerMessage {
    ServerMessage::Response {
        status: 0,
        data: Bytes::new(),
    }
}

fn error(text: &str) -> ServerMessage {
    ServerMessage::Response {
        status: 1,
        data: Bytes::copy_from_slice(text.as_bytes()),
    }
}

fn file(notice: FileNotice) -> ServerMessage {
    ServerMessage::File(notice)
}

/// `8e` for transfer 1, to the sender, naming `delivered`.
fn finished(delivered: &[ConnId]) -> (ConnId, ServerMessage) {
    let delivered = delivered.iter().map(|&conn| name(conn)).collect();
    (SENDER, file(FileNotice::Finished { id: 1, delivered }))
}

/// The `8f` notices sent, as (to, who, reason).
fn endings(out: &[Action]) -> Vec<(ConnId, Bytes, EndReason)> {
    decoded(out)
        .into_iter()
        .filter_map(|(to, message)| match message {
            ServerMessage::File(FileNotice::Ended { who, reason, .. }) => Some((to, who, reason)),
            _ => None,
        })
        .collect()
}

/// The chunk indices relayed, as (to, index).
fn chunks(out: &[Action]) -> Vec<(ConnId, u32)> {
    decoded(out)
        .into_iter()
        .filter_map(|(to, message)| match message {
            ServerMessage::File(FileNotice::Chunk { index, .. }) => Some((to, index)),
            _ => None,
        })
        .collect()
}

fn windows(out: &[Action]) -> Vec<u32> {
    decoded(out)
        .into_iter()
        .filter_map(|(to, message)| match message {
            ServerMessage::File(FileNotice::Window { acked, .. }) => {
                assert_eq!(to, SENDER);
                Some(acked)
            }
            _ => None,
        })
        .collect()
}

/// A transfer machine, the fake clock, and the transfer under test.
struct Fixture {
    transfers: Transfers,
    now: Instant,
    id: u32,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            transfers: Transfers::new(limits(), [7; 32]),
            now: Instant::now(),
            id: 0,
        }
    }

    fn offer_to(&mut self, recipients: &[ConnId], size: u64, window: u8) -> Vec<Action> {
        let mut out = Vec::new();
        let offer = Offer {
            sender: SENDER,
            sender_name: name(SENDER),
            sender_identity: sender_identity(),
            room: Some(Bytes::from_static(b"lobby")),
            recipients: recipients.iter().map(|&conn| invited(conn)).collect(),
            skipped: vec![Bytes::from_static(b"lee")],
            meta: meta(size),
            window,
        };
        self.id = self.transfers.offer(offer, self.now, &mut out).unwrap();
        self.check();
        out
    }

    fn decide(&mut self, conn: ConnId, accept: bool) -> Vec<Action> {
        self.run(|t, now, out| t.decide(conn, 1, accept, now, out))
    }

    /// Offers a `size`-byte file to `recipients`, who all accept.
    fn started(recipients: &[ConnId], size: u64, window: u8) -> Fixture {
        let mut bench = Fixture::new();
        bench.offer_to(recipients, size, window);
        for &conn in recipients {
            bench.decide(conn, true);
        }
        bench
    }

    fn chunk(&mut self, index: u32) -> Vec<Action> {
        let data = vec![index as u8; CHUNK as usize];
        self.run(|t, now, out| t.chunk(SENDER, 1, index, &data, now, out))
    }

    fn ack(&mut self, conn: ConnId, index: u32) -> Vec<Action> {
        self.run(|t, now, out| t.ack(conn, 1, index, now, out))
    }

    fn done(&mut self) -> Vec<Action> {
        self.run(|t, now, out| t.done(SENDER, 1, now, out))
    }

    fn advance(&mut self, secs: u64) -> Vec<Action> {
        self.now += Duration::from_secs(secs);
        self.run(|t, now, out| t.handle_timeout(now, out))
    }

    fn run(
        &mut self,
        event: impl FnOnce(&mut Transfers, Instant, &mut Vec<Action>),
    ) -> Vec<Action> {
        let mut out = Vec::new();
        event(&mut self.transfers, self.now, &mut out);
        self.check();
        out
    }

    /// Connections 1 to 9 are connected unless the test says otherwise.
    fn check(&self) {
        self.transfers.check_invariants(|_| true).unwrap();
    }

    fn active(&self) -> bool {
        self.transfers.transfers.contains_key(&self.id)
    }
}

#[test]
fn an_offer_is_confirmed_to_the_sender_and_forwarded_once_to_each_recipient() {
    let mut bench = Fixture::new();
    let out = bench.offer_to(&[BOB, CAROL], 2500, 8);
    let messages = decoded(&out);
    assert_eq!(messages.len(), 4);
    assert_eq!(
        messages[0],
        (
            SENDER,
            file(FileNotice::Pending {
                id: 1,
                skipped: vec![Bytes::from_static(b"lee")]
            })
        )
    );
    assert_eq!(messages[1], (SENDER, ok()));
    for (at, conn) in [(2, BOB), (3, CAROL)] {
        let (
            to,
            ServerMessage::File(FileNotice::Offered {
                id,
                sender,
                room,
                meta: forwarded,
                ..
            }),
        ) = &messages[at]
        else {
            panic!("expected an offer, got {:?}", messages[at]);
        };
        assert_eq!((*to, *id), (conn, 1));
        assert_eq!((&sender[..], &room[..]), (&b"user1"[..], &b"lobby"[..]));
        assert_eq!(*forwarded, meta(2500));
    }
    let Action::Send { frame: to_bob, .. } = &out[1] else {
        panic!()
    };
    let Action::Send {
        frame: to_carol, ..
    } = &out[2]
    else {
        panic!()
    };
    assert_eq!(to_bob.as_ptr(), to_carol.as_ptr(), "encoded once, shared");
}

#[test]
fn when_all_accept_the_sender_starts_with_the_granted_window() {
    let mut bench = Fixture::new();
    bench.offer_to(&[BOB, CAROL], 2500, 8);
    let out = bench.decide(BOB, true);
    let messages = decoded(&out);
    assert!(matches!(
        messages[0],
        (BOB, ServerMessage::File(FileNotice::Accepted { id: 1, .. }))
    ));
    assert_eq!(messages[1], (BOB, ok()));
    assert_eq!(messages.len(), 2, "carol has not decided yet");
    let out = bench.decide(CAROL, true);
    assert_eq!(
        decoded(&out)[2],
        (
            SENDER,
            file(FileNotice::Start {
                id: 1,
                window: 4,
                recipients: vec![name(BOB), name(CAROL)]
            })
        ),
        "the window asked for (8) is capped at the server's (4)"
    );
}

#[test]
fn a_decline_is_acknowledged_and_leaves_the_others() {
    let mut bench = Fixture::new();
    bench.offer_to(&[BOB, CAROL], 2500, 4);
    assert_eq!(decoded(&bench.decide(BOB, false)), [(BOB, ok())]);
    let out = bench.decide(CAROL, true);
    assert!(decoded(&out).contains(&(
        SENDER,
        file(FileNotice::Start {
            id: 1,
            window: 4,
            recipients: vec![name(CAROL)]
        })
    )));
}

#[test]
fn when_nobody_accepts_the_sender_is_told_no_transmission() {
    let mut bench = Fixture::new();
    bench.offer_to(&[BOB, CAROL], 2500, 4);
    bench.decide(BOB, false);
    let out = bench.decide(CAROL, false);
    assert_eq!(
        endings(&out),
        [(SENDER, Bytes::new(), EndReason::NobodyAccepted)]
    );
    assert!(!bench.active());
}

#[test]
fn an_offer_to_nobody_ends_at_once() {
    let mut bench = Fixture::new();
    let out = bench.offer_to(&[], 2500, 4);
    assert_eq!(
        endings(&out),
        [(SENDER, Bytes::new(), EndReason::NobodyAccepted)]
    );
    assert!(!bench.active());
}

#[test]
fn undecided_recipients_are_dropped_at_the_decision_timeout() {
    let mut bench = Fixture::new();
    bench.offer_to(&[BOB, CAROL, DAVE], 2500, 4);
    bench.decide(BOB, true);
    bench.decide(DAVE, false);
    assert_eq!(
        bench.transfers.next_deadline(),
        Some(bench.now + Duration::from_secs(30))
    );
    assert!(bench.advance(29).is_empty());
    let out = bench.advance(1);
    assert_eq!(
        endings(&out),
        [
            (CAROL, name(CAROL), EndReason::DecisionTimeout),
            (SENDER, name(CAROL), EndReason::DecisionTimeout),
        ]
    );
    assert!(decoded(&out).iter().any(|(to, message)| *to == SENDER
        && matches!(message, ServerMessage::File(FileNotice::Start { recipients, .. }) if recipients == &[name(BOB)])));
}

#[test]
fn at_the_decision_timeout_with_no_acceptance_there_is_no_transmission() {
    let mut bench = Fixture::new();
    bench.offer_to(&[BOB], 2500, 4);
    let out = bench.advance(30);
    assert_eq!(
        endings(&out),
        [
            (BOB, name(BOB), EndReason::DecisionTimeout),
            (SENDER, name(BOB), EndReason::DecisionTimeout),
            (SENDER, Bytes::new(), EndReason::NobodyAccepted),
        ]
    );
    assert!(!bench.active());
}

#[test]
fn chunks_flow_through_a_window_and_the_transfer_finishes() {
    // 2500 bytes in 1000-byte chunks: 3 chunks, the last one short.
    let mut bench = Fixture::started(&[BOB, CAROL], 2500, 2);
    let out = bench.chunk(0);
    assert_eq!(chunks(&out), [(BOB, 0), (CAROL, 0)]);
    let Action::Send { frame: to_bob, .. } = &out[0] else {
        panic!()
    };
    let Action::Send {
        frame: to_carol, ..
    } = &out[1]
    else {
        panic!()
    };
    assert_eq!(
        to_bob.as_ptr(),
        to_carol.as_ptr(),
        "a chunk is encoded once"
    );
    bench.chunk(1);
    assert_eq!(bench.transfers.transfers[&1].retained.len(), 2);
    assert!(
        windows(&bench.ack(BOB, 0)).is_empty(),
        "carol has not acked"
    );
    assert_eq!(windows(&bench.ack(CAROL, 0)), [1]);
    assert_eq!(
        bench.transfers.transfers[&1].retained.len(),
        1,
        "chunk 0 is dropped"
    );
    assert_eq!(chunks(&bench.chunk(2)), [(BOB, 2), (CAROL, 2)]);
    let out = bench.done();
    assert_eq!(
        decoded(&out),
        [
            (SENDER, ok()),
            (BOB, file(FileNotice::Done { id: 1 })),
            (CAROL, file(FileNotice::Done { id: 1 })),
        ]
    );
    for index in [1, 2] {
        bench.ack(BOB, index);
    }
    bench.ack(CAROL, 1);
    let out = bench.ack(CAROL, 2);
    assert_eq!(
        decoded(&out),
        [
            (SENDER, file(FileNotice::Window { id: 1, acked: 3 })),
            finished(&[BOB, CAROL]),
        ]
    );
    assert!(!bench.active());
}

#[test]
fn acks_out_of_order_fill_the_bitmap() {
    let mut bench = Fixture::started(&[BOB], 4000, 4);
    for index in 0..4 {
        bench.chunk(index);
    }
    assert!(windows(&bench.ack(BOB, 2)).is_empty());
    assert!(windows(&bench.ack(BOB, 1)).is_empty());
    assert_eq!(windows(&bench.ack(BOB, 0)), [3], "0, 1 and 2 acked at once");
    assert_eq!(windows(&bench.ack(BOB, 3)), [4]);
}

#[test]
fn a_duplicate_ack_is_ignored() {
    let mut bench = Fixture::started(&[BOB], 4000, 4);
    bench.chunk(0);
    bench.chunk(1);
    assert_eq!(windows(&bench.ack(BOB, 0)), [1]);
    assert!(bench.ack(BOB, 0).is_empty(), "acked before, below the mark");
    bench.chunk(2);
    assert!(bench.ack(BOB, 2).is_empty());
    assert!(bench.ack(BOB, 2).is_empty(), "acked before, above the mark");
    assert!(bench.active());
}

#[test]
fn an_ack_for_a_chunk_never_sent_takes_the_recipient_out() {
    let mut bench = Fixture::started(&[BOB, CAROL], 4000, 4);
    bench.chunk(0);
    let out = bench.ack(BOB, 1);
    assert_eq!(
        endings(&out),
        [
            (BOB, name(BOB), EndReason::ProtocolViolation),
            (SENDER, name(BOB), EndReason::ProtocolViolation),
        ]
    );
    assert_eq!(windows(&bench.ack(CAROL, 0)), [1], "carol goes on alone");
}

#[test]
fn the_sender_may_not_go_beyond_the_window() {
    let mut bench = Fixture::started(&[BOB], 10_000, 2);
    bench.chunk(0);
    bench.chunk(1);
    let out = bench.chunk(2);
    assert_eq!(
        endings(&out),
        [
            (SENDER, Bytes::new(), EndReason::ProtocolViolation),
            (BOB, Bytes::new(), EndReason::ProtocolViolation),
        ]
    );
    assert!(!bench.active());
}

#[test]
fn chunks_out_of_range_out_of_order_oversized_or_early_end_the_transfer() {
    type Violation = fn(&mut Fixture) -> Vec<Action>;
    let violations: [(&str, Violation); 4] = [
        ("out of range", |bench| {
            bench.chunk(0);
            bench.ack(BOB, 0);
            bench.chunk(1);
            bench.ack(BOB, 1);
            bench.chunk(2);
            bench.chunk(3)
        }),
        ("out of order", |bench| bench.chunk(1)),
        ("oversized", |bench| {
            let data = vec![0; CHUNK as usize + CHUNK_SEAL_OVERHEAD + 1];
            bench.run(|t, now, out| t.chunk(SENDER, 1, 0, &data, now, out))
        }),
        ("a chunk after done", |bench| {
            for index in 0..3 {
                bench.chunk(index);
                bench.ack(BOB, index);
            }
            let mut out = bench.done();
            out.retain(|_| false);
            bench.chunk(3)
        }),
    ];
    for (case, violate) in violations {
        let mut bench = Fixture::started(&[BOB], 2500, 4);
        let out = violate(&mut bench);
        if case == "a chunk after done" {
            // Bob acked everything: the transfer finished at FILE_DONE, and
            // a late chunk for a finished transfer is dropped quietly.
            assert!(out.is_empty(), "{case}");
            continue;
        }
        assert!(
            endings(&out).contains(&(SENDER, Bytes::new(), EndReason::ProtocolViolation)),
            "{case}: {:?}",
            decoded(&out)
        );
        assert!(!bench.active(), "{case}");
    }
    let mut early = Fixture::new();
    early.offer_to(&[BOB], 2500, 4);
    let out = early.chunk(0);
    assert!(
        endings(&out).contains(&(SENDER, Bytes::new(), EndReason::ProtocolViolation)),
        "before the start"
    );
}

#[test]
fn a_chunk_for_no_transfer_or_from_someone_else_is_dropped_quietly() {
    let mut bench = Fixture::started(&[BOB], 2500, 4);
    let data = [0; 10];
    assert!(bench
        .run(|t, now, out| t.chunk(BOB, 1, 0, &data, now, out))
        .is_empty());
    assert!(bench
        .run(|t, now, out| t.chunk(SENDER, 99, 0, &data, now, out))
        .is_empty());
    assert!(bench
        .run(|t, now, out| t.ack(BOB, 99, 0, now, out))
        .is_empty());
    assert!(bench.active());
}

#[test]
fn a_recipient_that_does_not_ack_in_time_is_removed_and_the_others_go_on() {
    let mut bench = Fixture::started(&[BOB, CAROL], 4000, 4);
    bench.chunk(0);
    bench.chunk(1);
    bench.ack(BOB, 0);
    bench.advance(5);
    bench.ack(BOB, 1);
    bench.chunk(2);
    assert_eq!(
        bench.transfers.next_deadline(),
        Some(bench.now + Duration::from_secs(5)),
        "carol's clock started at chunk 0"
    );
    let out = bench.advance(5);
    assert_eq!(
        endings(&out),
        [
            (CAROL, name(CAROL), EndReason::TooSlow),
            (SENDER, name(CAROL), EndReason::TooSlow),
        ]
    );
    assert_eq!(windows(&out), [2], "the window jumps to bob's mark at once");
    bench.ack(BOB, 2);
    bench.chunk(3);
    bench.ack(BOB, 3);
    let out = bench.done();
    assert!(decoded(&out).contains(&finished(&[BOB])));
}

#[test]
fn a_recipient_making_progress_is_never_too_slow() {
    let mut bench = Fixture::started(&[BOB], 20_000, 1);
    for index in 0..20 {
        bench.chunk(index);
        bench.advance(9);
        bench.ack(BOB, index);
    }
    assert!(bench.active());
}

#[test]
fn when_the_sender_disconnects_everyone_is_told() {
    let mut bench = Fixture::started(&[BOB, CAROL], 4000, 4);
    bench.chunk(0);
    let out = bench.run(|t, now, out| t.disconnected(SENDER, now, out));
    assert_eq!(
        endings(&out),
        [
            (BOB, Bytes::new(), EndReason::SenderLeft),
            (CAROL, Bytes::new(), EndReason::SenderLeft),
        ],
        "and not the sender, which is gone"
    );
    assert!(!bench.active());
}

#[test]
fn when_the_sender_leaves_the_room_everyone_is_told() {
    let mut bench = Fixture::started(&[BOB], 4000, 4);
    let out = bench.run(|t, now, out| t.left_room(SENDER, b"lobby", now, out));
    assert_eq!(
        endings(&out),
        [
            (SENDER, Bytes::new(), EndReason::SenderLeft),
            (BOB, Bytes::new(), EndReason::SenderLeft),
        ]
    );
    let mut other_room = Fixture::started(&[BOB], 4000, 4);
    let out = other_room.run(|t, now, out| t.left_room(SENDER, b"elsewhere", now, out));
    assert!(out.is_empty() && other_room.active());
}

#[test]
fn a_recipient_leaving_the_room_is_out_and_the_last_one_ends_it() {
    let mut bench = Fixture::started(&[BOB, CAROL], 4000, 4);
    bench.chunk(0);
    let out = bench.run(|t, now, out| t.left_room(BOB, b"lobby", now, out));
    assert_eq!(
        endings(&out),
        [
            (BOB, name(BOB), EndReason::LeftRoom),
            (SENDER, name(BOB), EndReason::LeftRoom),
        ]
    );
    let out = bench.run(|t, now, out| t.left_room(CAROL, b"lobby", now, out));
    assert_eq!(
        endings(&out),
        [
            (CAROL, name(CAROL), EndReason::LeftRoom),
            (SENDER, name(CAROL), EndReason::LeftRoom),
            (SENDER, Bytes::new(), EndReason::NoRecipientsLeft),
        ]
    );
    assert!(!bench.active());
}

#[test]
fn an_undecided_recipient_that_disconnects_counts_as_a_decline() {
    let mut bench = Fixture::new();
    bench.offer_to(&[BOB, CAROL], 2500, 4);
    bench.decide(BOB, true);
    let out = bench.run(|t, now, out| t.disconnected(CAROL, now, out));
    let messages = decoded(&out);
    assert_eq!(
        endings(&out),
        [(SENDER, name(CAROL), EndReason::Disconnected)]
    );
    assert!(matches!(
        &messages[1],
        (SENDER, ServerMessage::File(FileNotice::Start { .. }))
    ));
}

/// Bob accepts, receives chunks 0 and 1, acks 0, and disconnects.
fn detached_after_two_chunks(recipients: &[ConnId]) -> (Fixture, [u8; TOKEN_LEN]) {
    let mut bench = Fixture::new();
    bench.offer_to(recipients, 4000, 4);
    let out = bench.decide(BOB, true);
    let token = match &decoded(&out)[0] {
        (_, ServerMessage::File(FileNotice::Accepted { token, .. })) => *token,
        other => panic!("expected a token, got {other:?}"),
    };
    for &conn in &recipients[1..] {
        bench.decide(conn, true);
    }
    bench.chunk(0);
    bench.chunk(1);
    bench.ack(BOB, 0);
    bench.run(|t, now, out| t.disconnected(BOB, now, out));
    (bench, token)
}

#[test]
fn a_reconnected_recipient_resumes_with_the_chunks_it_lacks() {
    let (mut bench, token) = detached_after_two_chunks(&[BOB]);
    // Alone and detached, bob holds the window: the sender may send up to
    // it, and nothing is dropped.
    bench.chunk(2);
    let new_bob = ConnId(12);
    let out = bench.run(|t, now, out| t.resume(new_bob, 1, &token, &fingerprint(BOB), now, out));
    assert_eq!(decoded(&out)[0], (new_bob, ok()));
    assert_eq!(
        chunks(&out),
        [(new_bob, 1), (new_bob, 2)],
        "chunk 0 was acked"
    );
    bench.ack(new_bob, 1);
    bench.ack(new_bob, 2);
    bench.chunk(3);
    bench.ack(new_bob, 3);
    let out = bench.done();
    assert!(decoded(&out).contains(&finished(&[BOB])));
}

#[test]
fn resume_needs_the_right_token_and_a_detached_recipient() {
    let (mut bench, token) = detached_after_two_chunks(&[BOB]);
    let mut wrong = token;
    wrong[0] ^= 1;
    let intruder = ConnId(13);
    let out = bench.run(|t, now, out| t.resume(intruder, 1, &wrong, &fingerprint(BOB), now, out));
    assert_eq!(decoded(&out), [(intruder, error("No file 1 to resume."))]);
    let out = bench.run(|t, now, out| t.resume(intruder, 2, &token, &fingerprint(BOB), now, out));
    assert_eq!(decoded(&out), [(intruder, error("No file 2 to resume."))]);
    let out = bench.run(|t, now, out| t.resume(SENDER, 1, &token, &fingerprint(BOB), now, out));
    assert_eq!(decoded(&out), [(SENDER, error("No file 1 to resume."))]);
    // The right token from someone else's key: the token alone proves
    // nothing.
    let out = bench.run(|t, now, out| t.resume(intruder, 1, &token, &fingerprint(CAROL), now, out));
    assert_eq!(
        decoded(&out),
        [(intruder, error(parlor_proto::text::RESUME_PROOF_FAILED))]
    );
    assert!(bench.active());
    let out = bench.run(|t, now, out| t.resume(intruder, 1, &token, &fingerprint(BOB), now, out));
    assert_eq!(decoded(&out)[0], (intruder, ok()), "bob's own key resumes");
}

#[test]
fn resume_after_the_window_moved_on_is_refused_cleanly() {
    let (mut bench, token) = detached_after_two_chunks(&[BOB, CAROL]);
    bench.ack(CAROL, 0);
    bench.ack(CAROL, 1);
    bench.chunk(2);
    bench.ack(CAROL, 2);
    let new_bob = ConnId(12);
    let out = bench.run(|t, now, out| t.resume(new_bob, 1, &token, &fingerprint(BOB), now, out));
    assert_eq!(
        decoded(&out),
        [(new_bob, error("File 1 cannot be resumed: chunks you lack were already dropped. Ask the sender to send it again."))]
    );
    let out = bench.run(|t, now, out| t.resume(new_bob, 1, &token, &fingerprint(BOB), now, out));
    assert_eq!(
        decoded(&out),
        [(new_bob, error("No file 1 to resume."))],
        "bob is out"
    );
}

#[test]
fn a_detached_recipient_that_does_not_return_is_dropped() {
    let (mut bench, _token) = detached_after_two_chunks(&[BOB]);
    // The sender sends everything and waits on bob.
    bench.chunk(2);
    bench.chunk(3);
    assert_eq!(decoded(&bench.done()), [(SENDER, ok())]);
    let out = bench.advance(30);
    assert_eq!(
        endings(&out),
        [
            (SENDER, name(BOB), EndReason::Disconnected),
            (SENDER, Bytes::new(), EndReason::NoRecipientsLeft),
        ]
    );
    assert!(!bench.active());
}

#[test]
fn a_sender_that_stops_sending_is_ended() {
    let mut bench = Fixture::started(&[BOB], 4000, 4);
    bench.chunk(0);
    bench.advance(5);
    bench.ack(BOB, 0);
    assert!(bench.advance(24).is_empty());
    let out = bench.advance(1);
    assert_eq!(
        endings(&out),
        [
            (SENDER, Bytes::new(), EndReason::SenderStalled),
            (BOB, Bytes::new(), EndReason::SenderStalled),
        ]
    );
}

#[test]
fn a_sender_waiting_on_a_full_window_has_not_stalled() {
    let mut bench = Fixture::started(&[BOB], 4000, 1);
    bench.chunk(0);
    bench.advance(9);
    let out = bench.advance(1);
    // Bob is too slow, not the sender.
    assert_eq!(endings(&out)[0], (BOB, name(BOB), EndReason::TooSlow));
}

#[test]
fn an_empty_file_finishes_when_the_sender_says_done() {
    let mut bench = Fixture::started(&[BOB], 0, 4);
    let out = bench.done();
    assert_eq!(
        decoded(&out),
        [
            (SENDER, ok()),
            (BOB, file(FileNotice::Done { id: 1 })),
            finished(&[BOB]),
        ]
    );
}

#[test]
fn done_before_every_chunk_is_sent_is_refused() {
    let mut bench = Fixture::started(&[BOB], 2500, 4);
    bench.chunk(0);
    assert_eq!(
        decoded(&bench.done()),
        [(
            SENDER,
            error("File 1 is not ready to be done: 1 of 3 chunks sent.")
        )]
    );
    assert!(bench.active());
}

#[test]
fn cancel_by_the_sender_tells_the_recipients_and_by_a_recipient_tells_the_sender() {
    let mut bench = Fixture::started(&[BOB, CAROL], 4000, 4);
    let out = bench.run(|t, now, out| t.cancel(BOB, 1, now, out));
    assert_eq!(decoded(&out)[0], (BOB, ok()));
    assert_eq!(
        endings(&out),
        [
            (BOB, name(BOB), EndReason::RecipientCancelled),
            (SENDER, name(BOB), EndReason::RecipientCancelled),
        ]
    );
    let out = bench.run(|t, now, out| t.cancel(SENDER, 1, now, out));
    assert_eq!(decoded(&out)[0], (SENDER, ok()));
    assert_eq!(endings(&out), [(CAROL, Bytes::new(), EndReason::Cancelled)]);
    let out = bench.run(|t, now, out| t.cancel(SENDER, 1, now, out));
    assert_eq!(decoded(&out), [(SENDER, error("No file 1."))]);
}

#[test]
fn decisions_are_taken_once_and_only_from_recipients() {
    let mut bench = Fixture::new();
    bench.offer_to(&[BOB, CAROL], 2500, 4);
    bench.decide(BOB, true);
    let again = "No file 1 is waiting for your answer.";
    assert_eq!(decoded(&bench.decide(BOB, false)), [(BOB, error(again))]);
    assert_eq!(decoded(&bench.decide(DAVE, true)), [(DAVE, error(again))]);
}

#[test]
fn offers_are_checked_against_the_limits() {
    type Spoil = fn(&mut Offer);
    let cases: [(&str, Spoil, Status, &str); 6] = [
        (
            "empty name",
            |o| o.meta.name = Bytes::new(),
            Status::Error,
            "File name must be a plain name: no directories or control characters.",
        ),
        (
            "a path",
            |o| o.meta.name = Bytes::from_static(b"../etc/passwd"),
            Status::Error,
            "File name must be a plain name: no directories or control characters.",
        ),
        (
            "chunk size",
            |o| o.meta.chunk_size = 300 << 10,
            Status::Error,
            "Chunk size must be 1 to 262144 bytes.",
        ),
        (
            "file size",
            |o| {
                o.meta.size = (1 << 30) + 1;
                o.meta.chunk_count = o.meta.size.div_ceil(1000) as u32
            },
            Status::Error,
            "Files may be at most 1073741824 bytes.",
        ),
        (
            "chunk count",
            |o| o.meta.chunk_count = 2,
            Status::Error,
            "Chunk count must be the size divided by the chunk size, rounded up: 3.",
        ),
        (
            "window",
            |o| o.window = 0,
            Status::Error,
            "Window must be at least 1 chunk.",
        ),
    ];
    for (case, spoil, status, text) in cases {
        let mut transfers = Transfers::new(limits(), [7; 32]);
        let mut offer = offer_to_bob(SENDER);
        spoil(&mut offer);
        let refusal = transfers
            .offer(offer, Instant::now(), &mut Vec::new())
            .unwrap_err();
        assert_eq!(
            (refusal.status, refusal.text.as_str()),
            (status, text),
            "{case}"
        );
    }
}

/// A 2,500-byte file from `sender` to bob alone.
fn offer_to_bob(sender: ConnId) -> Offer {
    Offer {
        sender,
        sender_name: name(sender),
        sender_identity: sender_identity(),
        room: None,
        recipients: vec![invited(BOB)],
        skipped: Vec::new(),
        meta: meta(2500),
        window: 4,
    }
}

#[test]
fn transfers_per_user_and_in_total_are_capped() {
    let mut bench = Fixture::new();
    let mut offer = |sender| {
        bench
            .transfers
            .offer(offer_to_bob(sender), bench.now, &mut Vec::new())
    };
    offer(SENDER).unwrap();
    offer(SENDER).unwrap();
    let refusal = offer(SENDER).unwrap_err();
    assert_eq!(refusal.status, Status::TryLater);
    assert_eq!(
        refusal.text,
        "You already have 2 file transfers in progress; try again when one ends."
    );
    offer(CAROL).unwrap();
    let refusal = offer(DAVE).unwrap_err();
    assert_eq!(refusal.status, Status::TryLater);
    assert_eq!(
        refusal.text,
        "The server has too many file transfers in progress, try again later."
    );
}

#[test]
fn only_a_sending_connection_may_send_large_chunk_frames_and_recipients_get_an_allowance() {
    let mut bench = Fixture::new();
    bench.offer_to(&[BOB], 2500, 4);
    assert_eq!(
        bench.transfers.chunk_payload_limit(SENDER, bench.now),
        None,
        "not started"
    );
    bench.decide(BOB, true);
    let limit = CHUNK_HEADER_LEN + CHUNK as usize + CHUNK_SEAL_OVERHEAD;
    assert_eq!(
        bench.transfers.chunk_payload_limit(SENDER, bench.now),
        Some(limit)
    );
    assert_eq!(bench.transfers.chunk_payload_limit(BOB, bench.now), None);
    assert_eq!(
        bench.transfers.queue_allowance(BOB),
        4 * (HEADER_LEN + limit)
    );
    assert_eq!(bench.transfers.queue_allowance(SENDER), 0);
}

#[test]
fn a_sender_keeps_its_chunk_limit_for_the_ack_timeout_after_its_transfer_ends() {
    let mut bench = Fixture::started(&[BOB], 4000, 4);
    bench.chunk(0);
    bench.run(|t, now, out| t.cancel(BOB, 1, now, out));
    assert!(!bench.active());
    let limit = CHUNK_HEADER_LEN + CHUNK as usize + CHUNK_SEAL_OVERHEAD;
    assert_eq!(
        bench.transfers.chunk_payload_limit(SENDER, bench.now),
        Some(limit),
        "chunks still on the wire are dropped, not refused as too long"
    );
    assert!(bench.chunk(1).is_empty(), "a late chunk is dropped quietly");
    bench.advance(10);
    assert_eq!(bench.transfers.chunk_payload_limit(SENDER, bench.now), None);
    assert!(!bench.transfers.admits_chunks());
}

#[test]
fn a_resume_from_a_new_connection_takes_over_before_the_old_one_is_noticed_gone() {
    let mut bench = Fixture::new();
    bench.offer_to(&[BOB], 4000, 4);
    let out = bench.decide(BOB, true);
    let (_, ServerMessage::File(FileNotice::Accepted { token, .. })) = decoded(&out)[0] else {
        panic!("expected a token");
    };
    bench.chunk(0);
    bench.chunk(1);
    bench.ack(BOB, 0);
    let new_bob = ConnId(12);
    let out = bench.run(|t, now, out| t.resume(new_bob, 1, &token, &fingerprint(BOB), now, out));
    assert_eq!(decoded(&out)[0], (new_bob, ok()));
    assert_eq!(chunks(&out), [(new_bob, 1)]);
    assert_eq!(
        chunks(&bench.chunk(2)),
        [(new_bob, 2)],
        "nothing more to the old one"
    );
    assert!(bench.ack(BOB, 1).is_empty(), "the old connection is out");
    assert!(bench
        .run(|t, now, out| t.disconnected(BOB, now, out))
        .is_empty());
}

#[test]
fn memory_held_is_one_window_whatever_the_file_size() {
    let mut bench = Fixture::started(&[BOB], 1 << 30, 4);
    for index in 0..10_000 {
        bench.chunk(index);
        assert!(bench.transfers.transfers[&1].retained.len() <= 4);
        bench.ack(BOB, index);
    }
    assert!(bench.transfers.transfers[&1].retained.is_empty());
}
