//! File transfer through the hub: who may offer files to whom, and how
//! room membership and departures reach the transfer. The transfer's own
//! transitions are tested in `transfer/tests.rs`.

use super::*;
use parlor_proto::transfer::{EndReason, FileMeta, FileNotice, FileRequest};
use parlor_proto::{FrameCodec, MAX_CLIENT_PAYLOAD};

impl Harness {
    /// Connection `id`, secure (when `secure`), named `name`, in `room`.
    fn member(&mut self, id: u64, name: &str, room: &str, secure: bool) -> ConnId {
        let conn = if secure {
            self.secure(id, name)
        } else {
            let conn = self.connected(id);
            self.nick(conn, name);
            conn
        };
        self.join(conn, room, "");
        self.finish_rotations();
        conn
    }

    fn file(&mut self, conn: ConnId, request: FileRequest) -> Vec<Action> {
        self.send(conn, ClientMessage::File(request))
    }

    fn offer(&mut self, conn: ConnId, target: &str, size: u64) -> Vec<Action> {
        self.file(conn, offer_of(target, size))
    }
}

/// A sealed FILE_OFFER of `size` bytes in chunks of 100,000 to `target`
/// (empty: the room), as a client would make it.
pub(super) fn offer_of(target: &str, size: u64) -> FileRequest {
    let meta = FileMeta {
        name: bytes("photo.jpg"),
        size,
        chunk_size: 100_000,
        chunk_count: size.div_ceil(100_000) as u32,
        flags: 1,
        key_id: 1,
        nonce: [1; 16],
        manifest: bytes("sealed manifest"),
        counter: 1,
        signature: [3; 64],
    };
    FileRequest::Offer {
        target: bytes(target),
        meta,
        window: 8,
    }
}

fn error(text: &str) -> ServerMessage {
    ServerMessage::Response {
        status: 1,
        data: bytes(text),
    }
}

fn okay() -> ServerMessage {
    ServerMessage::Response {
        status: 0,
        data: Bytes::new(),
    }
}

#[test]
fn a_room_offer_goes_to_secure_members_and_names_the_legacy_ones_skipped() {
    let mut h = Harness::with_defaults();
    // Lee creates the room, so it is a plaintext room legacy clients enter.
    let lee = h.member(2, "lee", "open", false);
    let alice = h.member(1, "alice", "open", true);
    let bob = h.member(3, "bob", "open", true);
    let out = h.offer(alice, "", 250_000);
    let messages = decoded(&out);
    assert_eq!(
        messages[..2],
        [
            (
                alice,
                ServerMessage::File(FileNotice::Pending {
                    id: 1,
                    skipped: vec![bytes("lee")]
                })
            ),
            (alice, okay()),
        ]
    );
    assert_eq!(messages.len(), 3);
    let (
        to,
        ServerMessage::File(FileNotice::Offered {
            sender,
            sender_identity,
            room,
            meta,
            ..
        }),
    ) = &messages[2]
    else {
        panic!("expected the offer, got {:?}", messages[2]);
    };
    assert_eq!(
        (*to, &sender[..], &room[..]),
        (bob, &b"alice"[..], &b"open"[..])
    );
    assert_eq!(
        *sender_identity,
        identity(1).block(b"alice"),
        "the identity alice registered"
    );
    assert_eq!(
        (&meta.manifest[..], meta.counter, meta.signature),
        (&b"sealed manifest"[..], 1, [3; 64]),
        "relayed as sent"
    );
    assert!(
        sent(&out).iter().all(|(to, _)| *to != lee),
        "legacy lee is never offered a file"
    );
}

#[test]
fn only_secure_connections_may_send_files() {
    let mut h = Harness::with_defaults();
    let lee = h.member(1, "lee", "open", false);
    h.member(2, "bob", "open", true);
    assert_eq!(
        decoded(&h.offer(lee, "", 10)),
        [(lee, error(text::REGISTER_KEY_FIRST))]
    );
    let decision = FileRequest::Decision {
        id: 1,
        accept: true,
    };
    assert_eq!(
        decoded(&h.file(lee, decision)),
        [(lee, error(text::REGISTER_KEY_FIRST))]
    );
    let chunk = FileRequest::Chunk {
        id: 1,
        index: 0,
        data: bytes("x"),
    };
    assert!(h.file(lee, chunk).is_empty(), "chunks are never answered");
}

#[test]
fn a_file_to_one_user_needs_a_secure_user_other_than_yourself() {
    let mut h = Harness::with_defaults();
    let alice = h.member(1, "alice", "a", true);
    h.member(2, "lee", "b", false);
    let bob = h.member(3, "bob", "c", true);
    assert_eq!(
        decoded(&h.offer(alice, "alice", 10)),
        [(alice, error(text::FILE_TO_YOURSELF))]
    );
    assert_eq!(
        decoded(&h.offer(alice, "lee", 10)),
        [(
            alice,
            error("User 'lee' cannot receive files: their client does not support them.")
        )]
    );
    let out = h.offer(alice, "nobody", 10);
    assert_eq!(decoded(&out)[1], (alice, error(text::NICK_NOT_PRESENT)));
    let out = h.offer(alice, "bob", 10);
    let messages = decoded(&out);
    assert!(
        matches!(&messages[2], (to, ServerMessage::File(FileNotice::Offered { room, .. })) if *to == bob && room.is_empty())
    );
}

#[test]
fn a_room_offer_outside_a_room_shouts_into_the_void_and_offers_are_rate_limited() {
    let defaults = Limits::default();
    let config = Limits {
        message_rate: Rate {
            limit: 2,
            ..defaults.message_rate
        },
        ..defaults
    };
    let mut h = Harness::with(config);
    let alice = h.secure(1, "alice");
    assert_eq!(
        decoded(&h.offer(alice, "", 10)),
        [(alice, error(text::VOID))]
    );
    h.join(alice, "r", "");
    h.finish_rotations();
    h.offer(alice, "", 10);
    let out = h.offer(alice, "", 10);
    assert!(
        matches!(
            &decoded(&out)[0],
            (_, ServerMessage::Response { status: 2, .. })
        ),
        "{:?}",
        decoded(&out)
    );
}

/// Alice offers a file in `vault`; bob and carol accept.
fn transfer_in_progress(h: &mut Harness) -> (ConnId, ConnId, ConnId) {
    let alice = h.member(1, "alice", "vault", true);
    let bob = h.member(2, "bob", "vault", true);
    let carol = h.member(3, "carol", "vault", true);
    h.offer(alice, "", 250_000);
    for conn in [bob, carol] {
        h.file(
            conn,
            FileRequest::Decision {
                id: 1,
                accept: true,
            },
        );
    }
    (alice, bob, carol)
}

fn endings(out: &[Action]) -> Vec<(ConnId, String, EndReason)> {
    decoded(out)
        .into_iter()
        .filter_map(|(to, message)| match message {
            ServerMessage::File(FileNotice::Ended { who, reason, .. }) => {
                Some((to, String::from_utf8(who.to_vec()).unwrap(), reason))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn leaving_or_moving_out_of_the_room_takes_a_recipient_out() {
    let mut h = Harness::with_defaults();
    let (alice, bob, carol) = transfer_in_progress(&mut h);
    let out = h.send(bob, ClientMessage::Leave);
    assert_eq!(
        endings(&out),
        [
            (bob, "bob".into(), EndReason::LeftRoom),
            (alice, "bob".into(), EndReason::LeftRoom)
        ]
    );
    let out = h.join(carol, "elsewhere", "");
    assert_eq!(
        endings(&out),
        [
            (carol, "carol".into(), EndReason::LeftRoom),
            (alice, "carol".into(), EndReason::LeftRoom),
            (alice, String::new(), EndReason::NoRecipientsLeft),
        ]
    );
    assert_eq!(h.hub.stats().file_transfers, 0);
}

#[test]
fn a_sender_that_disconnects_ends_its_transfers() {
    let mut h = Harness::with_defaults();
    let (alice, bob, carol) = transfer_in_progress(&mut h);
    let out = h.disconnect(alice);
    assert_eq!(
        endings(&out),
        [
            (bob, String::new(), EndReason::SenderLeft),
            (carol, String::new(), EndReason::SenderLeft)
        ]
    );
    assert_eq!(h.hub.stats().file_transfers, 0);
}

#[test]
fn only_a_sender_whose_transfer_started_may_send_large_chunk_frames() {
    let mut h = Harness::with_defaults();
    let (alice, bob, _carol) = transfer_in_progress(&mut h);
    let chunk = FileRequest::Chunk {
        id: 1,
        index: 0,
        data: Bytes::from(vec![5; 100_064]),
    };
    let wire = chunk.encode();
    assert!(wire.len() > MAX_CLIENT_PAYLOAD);
    let feed = |h: &mut Harness, conn| {
        let mut codec = FrameCodec::default();
        let mut buffer = BytesMut::from(&wire[..]);
        let mut out = Vec::new();
        h.hub
            .receive(conn, &mut codec, &mut buffer, h.now, &mut out);
        out
    };
    let relayed = feed(&mut h, alice);
    assert_eq!(decoded(&relayed).len(), 2, "relayed to bob and carol");
    let refused = feed(&mut h, bob);
    assert_eq!(
        closed(&refused),
        [(bob, CloseReason::Malformed)],
        "too long from anyone else"
    );
    h.file(alice, FileRequest::Cancel { id: 1 });
    // Chunks still on the wire when it ended are dropped quietly...
    let late = feed(&mut h, alice);
    assert!(late.is_empty(), "{late:?}");
    // ...and once they can no longer be in flight, the limit is lowered.
    h.advance(Duration::from_secs(10));
    let mut codec = FrameCodec::default();
    codec.allow_chunks(200_000);
    let mut out = Vec::new();
    h.hub
        .receive(alice, &mut codec, &mut BytesMut::new(), h.now, &mut out);
    assert_eq!(
        codec.max_chunk_payload(),
        MAX_CLIENT_PAYLOAD,
        "lowered once the transfer is over and the ack timeout passed"
    );
}

#[test]
fn files_in_a_secure_room_must_be_sealed() {
    let mut h = Harness::with_defaults();
    let (alice, _bob, _carol) = transfer_in_progress(&mut h);
    let unsealed = FileMeta {
        name: bytes("clear.txt"),
        size: 1,
        chunk_size: 1,
        chunk_count: 1,
        flags: 0,
        key_id: 0,
        nonce: [0; 16],
        manifest: Bytes::new(),
        counter: 1,
        signature: [0; 64],
    };
    let offer = FileRequest::Offer {
        target: Bytes::new(),
        meta: unsealed,
        window: 1,
    };
    assert_eq!(
        decoded(&h.file(alice, offer)),
        [(alice, error(text::FILE_NOT_SEALED))]
    );
}

/// The token `conn` got when it accepted transfer 1.
fn token_of(out: &[Action], conn: ConnId) -> [u8; 16] {
    decoded(out)
        .into_iter()
        .find_map(|(to, message)| match message {
            ServerMessage::File(FileNotice::Accepted { token, .. }) if to == conn => Some(token),
            _ => None,
        })
        .expect("an accept answered with a token")
}

#[test]
fn only_the_recipients_own_key_on_this_connection_resumes_its_file() {
    let mut h = Harness::with_defaults();
    let alice = h.member(1, "alice", "vault", true);
    let bob = h.member(2, "bob", "vault", true);
    let carol = h.member(3, "carol", "vault", true);
    // Mallory takes no part in the transfer.
    let mallory = h.member(5, "mallory", "lobby", true);
    h.offer(alice, "", 250_000);
    let accept = FileRequest::Decision {
        id: 1,
        accept: true,
    };
    let token = token_of(&h.file(bob, accept.clone()), bob);
    h.file(carol, accept);
    h.disconnect(bob);
    // Bob is back on a new TLS connection, under a new name.
    let new_bob = h.connected(12);
    h.hub.channel_bound(new_bob, binding(12));
    h.nick(new_bob, "bobby");
    let register = identity(2).register(b"bobby", &binding(12));
    assert_eq!(sent(&h.send(new_bob, register)), [(new_bob, ok())]);
    let refused = |h: &mut Harness, conn, resume| {
        assert_eq!(
            decoded(&h.send(conn, resume)),
            [(conn, error(text::RESUME_PROOF_FAILED))]
        );
    };
    // The token alone, with a proof by another key (mallory saw the token
    // go by): refused, however well mallory signs.
    refused(&mut h, mallory, identity(5).resume(1, token, &binding(5)));
    // Bob's key, but over another connection's binding (a proof replayed
    // from elsewhere), or over another transfer or token.
    refused(&mut h, new_bob, identity(2).resume(1, token, &binding(2)));
    let mut other_token = token;
    other_token[0] ^= 1;
    let forged = match identity(2).resume(1, other_token, &binding(12)) {
        ClientMessage::File(FileRequest::Resume { proof, .. }) => proof,
        other => unreachable!("{other:?}"),
    };
    let mismatched = FileRequest::Resume {
        id: 1,
        token,
        proof: forged,
    };
    refused(&mut h, new_bob, ClientMessage::File(mismatched));
    // Bob's key over this connection: resumed.
    let out = h.send(new_bob, identity(2).resume(1, token, &binding(12)));
    assert_eq!(decoded(&out)[0], (new_bob, okay()));
}
