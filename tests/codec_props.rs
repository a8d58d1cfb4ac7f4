//! Property tests of the wire codec: every message round-trips, however the
//! frames are split. Arbitrary bytes are the `frame_decoder` fuzz body's job
//! (`tests/fuzz_bodies.rs`).

use bytes::{Bytes, BytesMut};
use parlor_proto::secure::{
    Identity, Registration, FINGERPRINT_LEN, SIGNATURE_LEN, SIGNING_KEY_LEN,
};
use parlor_proto::{
    ClientMessage, Frame, FrameCodec, SecureMessage, ServerMessage, MAX_CLIENT_PAYLOAD,
};
use proptest::prelude::*;

fn short() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..=255).prop_map(Bytes::from)
}

fn long() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        8 => proptest::collection::vec(any::<u8>(), 0..300),
        1 => proptest::collection::vec(any::<u8>(), 65_535..=65_535),
    ]
    .prop_map(Bytes::from)
}

fn client_message() -> impl Strategy<Value = ClientMessage> {
    prop_oneof![
        long().prop_map(|greeting| ClientMessage::Hello { greeting }),
        long().prop_map(|payload| ClientMessage::Heartbeat { payload }),
        short().prop_map(|name| ClientMessage::Nick { name }),
        (short(), short()).prop_map(|(room, password)| ClientMessage::Join { room, password }),
        Just(ClientMessage::Leave),
        Just(ClientMessage::ListUsers),
        Just(ClientMessage::ListRooms),
        (short(), long()).prop_map(|(target, text)| ClientMessage::DirectMessage { target, text }),
        (short(), long()).prop_map(|(room, text)| ClientMessage::RoomMessage { room, text }),
        (any::<[u8; SIGNING_KEY_LEN]>(), long(), signatures::<3>()).prop_map(
            |(signing_key, rsa_der, [key_binding, name_proof, possession])| {
                ClientMessage::RegisterKey(Registration {
                    signing_key,
                    rsa_der,
                    key_binding,
                    name_proof,
                    possession,
                })
            }
        ),
        (short(), signatures::<1>())
            .prop_map(|(name, [name_proof])| ClientMessage::SignedNick { name, name_proof }),
        short().prop_map(|target| ClientMessage::DmKeyRequest { target }),
    ]
}

/// `N` arbitrary Ed25519-sized signatures: the codec carries them opaquely.
fn signatures<const N: usize>() -> impl Strategy<Value = [[u8; SIGNATURE_LEN]; N]> {
    proptest::collection::vec(proptest::collection::vec(any::<u8>(), SIGNATURE_LEN), N).prop_map(
        |all| std::array::from_fn(|i| all[i].as_slice().try_into().expect("SIGNATURE_LEN bytes")),
    )
}

fn identity() -> impl Strategy<Value = Identity> {
    (any::<[u8; SIGNING_KEY_LEN]>(), long(), signatures::<2>()).prop_map(
        |(signing_key, rsa_der, [key_binding, name_proof])| Identity {
            signing_key,
            rsa_der,
            key_binding,
            name_proof,
        },
    )
}

fn secure_message() -> impl Strategy<Value = SecureMessage> {
    prop_oneof![
        (short(), short(), identity()).prop_map(|(name, renamed_from, identity)| {
            SecureMessage::PeerKey {
                name,
                renamed_from,
                identity,
            }
        }),
        (short(), any::<u64>(), any::<u32>(), long()).prop_map(
            |(room, incarnation, epoch, wrapped)| SecureMessage::RoomKey {
                room,
                incarnation,
                epoch,
                wrapped,
            }
        ),
        (short(), any::<u64>(), any::<u32>()).prop_map(|(room, incarnation, next_epoch)| {
            SecureMessage::RoomRekeying {
                room,
                incarnation,
                next_epoch,
            }
        }),
        (
            short(),
            any::<[u8; FINGERPRINT_LEN]>(),
            any::<u32>(),
            long()
        )
            .prop_map(
                |(peer, peer_fingerprint, key_id, wrapped)| SecureMessage::DmKey {
                    peer,
                    peer_fingerprint,
                    key_id,
                    wrapped,
                }
            ),
        (short(), identity(), any::<u32>(), long()).prop_map(
            |(target, identity, key_id, wrapped)| SecureMessage::DmKeyIssued {
                target,
                identity,
                key_id,
                wrapped,
            }
        ),
        short().prop_map(|name| SecureMessage::NickSet { name }),
        (short(), any::<bool>(), any::<u64>()).prop_map(|(room, secure, incarnation)| {
            SecureMessage::RoomJoined {
                room,
                secure,
                incarnation,
            }
        }),
        (short(), any::<bool>(), any::<u64>()).prop_map(|(room, secure, incarnation)| {
            SecureMessage::RoomCreated {
                room,
                secure,
                incarnation,
            }
        }),
        short().prop_map(|room| SecureMessage::RoomLeft { room }),
        short().prop_map(|name| SecureMessage::NoSuchUser { name }),
    ]
}

fn server_message() -> impl Strategy<Value = ServerMessage> {
    prop_oneof![
        (any::<u8>(), long()).prop_map(|(status, data)| ServerMessage::Response { status, data }),
        (short(), short(), long()).prop_map(|(room, sender, text)| ServerMessage::RoomMessage {
            room,
            sender,
            text
        }),
        (short(), long()).prop_map(|(sender, text)| ServerMessage::DirectMessage { sender, text }),
        secure_message().prop_map(ServerMessage::Secure),
    ]
}

/// Feeds `bytes` to a fresh codec in the given chunk sizes, collecting
/// frames until the end or the first error.
fn decode_in_chunks(bytes: &[u8], chunks: &[usize]) -> (Vec<Frame>, bool) {
    let mut codec = FrameCodec::default();
    let mut buffer = BytesMut::new();
    let mut frames = Vec::new();
    let mut rest = bytes;
    let mut sizes = chunks.iter().cycle();
    while !rest.is_empty() {
        let size = (*sizes.next().unwrap()).clamp(1, rest.len());
        buffer.extend_from_slice(&rest[..size]);
        rest = &rest[size..];
        loop {
            match codec.decode(&mut buffer) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(_) => return (frames, true),
            }
        }
        // Whatever is reserved must be for at most one maximal frame.
        assert!(buffer.capacity() <= 2 * (MAX_CLIENT_PAYLOAD + 7) + 4096);
    }
    (frames, false)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn client_messages_round_trip(message in client_message()) {
        let wire = message.to_frame().to_bytes();
        let (frames, failed) = decode_in_chunks(&wire, &[wire.len()]);
        prop_assert!(!failed);
        prop_assert_eq!(frames.len(), 1);
        prop_assert_eq!(ClientMessage::parse(&frames[0]).unwrap(), message);
    }

    #[test]
    fn server_messages_round_trip(message in server_message()) {
        let wire = message.encode();
        let mut buffer = BytesMut::from(&wire[..]);
        let frame = FrameCodec::new(usize::MAX).decode(&mut buffer).unwrap().unwrap();
        prop_assert!(buffer.is_empty());
        prop_assert_eq!(ServerMessage::parse(&frame).unwrap(), message);
    }

    #[test]
    fn any_split_of_valid_frames_decodes_the_same(
        messages in proptest::collection::vec(client_message(), 1..6),
        chunks in proptest::collection::vec(1usize..200, 1..20),
    ) {
        let wire: Vec<u8> = messages.iter().flat_map(|m| m.to_frame().to_bytes().to_vec()).collect();
        let (frames, failed) = decode_in_chunks(&wire, &chunks);
        prop_assert!(!failed);
        let decoded: Vec<ClientMessage> = frames.iter().map(|f| ClientMessage::parse(f).unwrap()).collect();
        prop_assert_eq!(decoded, messages);
    }
}
