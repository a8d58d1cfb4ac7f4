//! The secure extension over real TCP (PROTOCOL.md §12): raw frames in,
//! exact frames out, and wrapped keys opened with the test identities'
//! private key under the label each recipient's wrap must carry. One module
//! per subsection (`s12_3_direct_messages` is §12.3); what §13's threat
//! model promises is checked where it shows on the wire.
//!
//! The clients speak the extension over plain TCP, which `test_config`
//! allows (their channel binding is all zeros); TLS is tested in
//! `tests/tls.rs`. Every frame a legacy client reads is checked against the
//! legacy client's rules (`support::check_legacy_frame`), so no test here
//! can hand a legacy client an opcode from `80` to `9f` unnoticed.

mod support;
use support::*;

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use parlor_core::harness::TestIdentity;
use parlor_proto::legacy::{encode_direct_message, encode_room_message};
use parlor_proto::secure::{dm_key_label, room_key_label, Fingerprint, PLAIN_CHANNEL_BINDING};
use parlor_proto::text;
use parlor_proto::{ClientMessage, SecureMessage, ServerMessage};
use rsa::pkcs8::DecodePrivateKey;
use rsa::{Oaep, PrivateKey};
use sha2::Sha256;

/// How long a test listens to be sure that nothing arrives.
const SILENCE: Duration = Duration::from_millis(300);

/// Test user `index`: its own Ed25519 key, and the RSA key every test
/// identity shares (`parlor_core::harness::TEST_RSA_DER`), whose private
/// half is the fixed key of parlor-crypto's known-answer tests.
fn identity(index: usize) -> TestIdentity {
    TestIdentity::new(index as u8 + 1)
}

fn fingerprint(index: usize) -> Fingerprint {
    identity(index).fingerprint()
}

/// The private half of every test identity's RSA key.
fn private_key() -> &'static PrivateKey {
    static KEY: OnceLock<PrivateKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let der = include_bytes!("../crates/parlor-crypto/src/testdata/kat-rsa-2048.der");
        PrivateKey::from_pkcs8_der(der).unwrap()
    })
}

/// Opens a wrapped key as a client does, under `label`.
fn unwrap_key(label: Vec<u8>, wrapped: &[u8]) -> rsa::Result<Vec<u8>> {
    private_key().decrypt(Oaep::<Sha256>::new_with_label(label), wrapped)
}

fn bytes(x: impl AsRef<[u8]>) -> Bytes {
    Bytes::copy_from_slice(x.as_ref())
}

fn nick(name: &str) -> ClientMessage {
    ClientMessage::Nick { name: bytes(name) }
}

fn join(room: &str, password: &str) -> ClientMessage {
    ClientMessage::Join {
        room: bytes(room),
        password: bytes(password),
    }
}

fn room_msg(room: &str, text: impl AsRef<[u8]>) -> ClientMessage {
    ClientMessage::RoomMessage {
        room: bytes(room),
        text: bytes(text),
    }
}

fn dm(target: &str, text: impl AsRef<[u8]>) -> ClientMessage {
    ClientMessage::DirectMessage {
        target: bytes(target),
        text: bytes(text),
    }
}

fn dm_key_request(target: &str) -> ClientMessage {
    ClientMessage::DmKeyRequest {
        target: bytes(target),
    }
}

fn error(text: impl AsRef<[u8]>) -> Vec<u8> {
    response_bytes(0x01, text.as_ref())
}

fn wire(message: SecureMessage) -> Vec<u8> {
    message.encode().to_vec()
}

/// PEER_KEY for user `index`, called `name`.
fn peer_key(name: &str, index: usize) -> Vec<u8> {
    renamed(name, "", index)
}

/// PEER_KEY saying that user `index` renamed from `from` to `name`.
fn renamed(name: &str, from: &str, index: usize) -> Vec<u8> {
    wire(SecureMessage::PeerKey {
        name: bytes(name),
        renamed_from: bytes(from),
        identity: identity(index).block(name.as_bytes()),
    })
}

fn rekeying(room: &str, incarnation: u64, next_epoch: u32) -> Vec<u8> {
    wire(SecureMessage::RoomRekeying {
        room: bytes(room),
        incarnation,
        next_epoch,
    })
}

/// Reads a JOIN's confirmation (`93` when `created`, else `91`) for
/// `room`, of the kind `secure`; returns the room's incarnation, which is
/// 0 exactly for a plaintext room.
async fn confirmed(client: &mut Client, room: &str, created: bool, secure: bool) -> u64 {
    let (got, flag, incarnation) = match (next(client).await, created) {
        (
            ServerMessage::Secure(SecureMessage::RoomCreated {
                room,
                secure,
                incarnation,
            }),
            true,
        )
        | (
            ServerMessage::Secure(SecureMessage::RoomJoined {
                room,
                secure,
                incarnation,
            }),
            false,
        ) => (room, secure, incarnation),
        (other, _) => panic!("expected the confirmation of {room}, got {other:?}"),
    };
    assert_eq!((&got[..], flag), (room.as_bytes(), secure));
    assert_eq!(incarnation == 0, !secure, "incarnation {incarnation}");
    incarnation
}

/// A greeted client named `name` (a legacy NICK first), then registered as
/// user `index`, its proofs over that name and a plain connection's
/// binding.
async fn secure_client(server: &TestServer, index: usize, name: &str) -> Client {
    let (mut client, _) = server.greeted().await;
    client.request(&nick(name), &ok_bytes()).await;
    let register = identity(index).register(name.as_bytes(), &PLAIN_CHANNEL_BINDING);
    client.request(&register, &ok_bytes()).await;
    client.secure = true;
    client
}

async fn next(client: &mut Client) -> ServerMessage {
    ServerMessage::parse(&client.recv().await).unwrap()
}

/// Reads a ROOM_KEY for `room` of `incarnation` and opens it as user
/// `index`; returns the epoch and the key.
async fn room_key(
    client: &mut Client,
    index: usize,
    room: &str,
    incarnation: u64,
) -> (u32, Vec<u8>) {
    match next(client).await {
        ServerMessage::Secure(SecureMessage::RoomKey {
            room: got,
            incarnation: got_incarnation,
            epoch,
            wrapped,
        }) => {
            assert_eq!((&got[..], got_incarnation), (room.as_bytes(), incarnation));
            assert_eq!(wrapped.len(), 256, "a 2048-bit modulus");
            let label = room_key_label(room.as_bytes(), incarnation, epoch, &fingerprint(index));
            let key = unwrap_key(label, &wrapped).expect("opens under its own label");
            assert_eq!(key.len(), 32);
            for other in [
                room_key_label(room.as_bytes(), incarnation, epoch + 1, &fingerprint(index)),
                room_key_label(room.as_bytes(), incarnation ^ 1, epoch, &fingerprint(index)),
                room_key_label(room.as_bytes(), incarnation, epoch, &fingerprint(index + 1)),
            ] {
                assert!(unwrap_key(other, &wrapped).is_err(), "only under its own");
            }
            (epoch, key)
        }
        other => panic!("expected a room key, got {other:?}"),
    }
}

/// Reads one ROOM_KEY for `room` on each client (`(client, user index)`)
/// and checks that all hold the same key of the same epoch; returns both.
async fn same_room_key(
    members: &mut [(&mut Client, usize)],
    room: &str,
    incarnation: u64,
) -> (u32, Vec<u8>) {
    let mut keys = Vec::new();
    for (client, index) in members.iter_mut() {
        keys.push(room_key(client, *index, room, incarnation).await);
    }
    assert!(
        keys.windows(2).all(|pair| pair[0] == pair[1]),
        "one key per epoch"
    );
    keys.pop().unwrap()
}

// ===========================================================================

/// PROTOCOL.md §12.1: a legacy connection is never sent a frame of the
/// extension; also §12.2's refusal of its JOIN to a secure room, and the
/// plain port's refusal of the extension unless the server allows it.
mod s12_1_secure_connections {
    use super::*;

    #[tokio::test]
    async fn a_legacy_client_is_refused_from_secure_rooms_and_never_sees_a_secure_frame() {
        let server = TestServer::start(test_config()).await;
        let (mut legacy, _) = server.greeted().await;
        legacy.request(&nick("lee"), &ok_bytes()).await;
        let mut alice = secure_client(&server, 0, "alice").await;
        alice.send(&join("vault", "pw")).await;
        let vault = confirmed(&mut alice, "vault", true, true).await;
        alice.expect(&ok_bytes()).await;
        room_key(&mut alice, 0, "vault", vault).await;

        let refused = error("Room 'vault' is end-to-end encrypted; your client cannot join it.");
        legacy.request(&join("vault", "pw"), &refused).await;
        legacy.request(&join("vault", ""), &refused).await;

        // A plaintext room that legacy and secure clients share.
        legacy.request(&join("open", ""), &ok_bytes()).await;
        let mut bob = secure_client(&server, 1, "bob").await;
        bob.send(&join("open", "")).await;
        confirmed(&mut bob, "open", false, false).await;
        bob.expect(&ok_bytes()).await;
        bob.request(&room_msg("open", "hello lee"), &ok_bytes())
            .await;
        legacy
            .expect(&encode_room_message(b"open", b"bob", b"hello lee"))
            .await;
        legacy
            .request(&room_msg("open", "hi bob"), &ok_bytes())
            .await;
        bob.expect(&encode_room_message(b"open", b"lee", b"hi bob"))
            .await;

        // Secure traffic all around: a DM key, a move into the secure room
        // with its key exchange and rotation, a rename there.
        alice.send(&dm_key_request("bob")).await;
        assert!(matches!(
            next(&mut alice).await,
            ServerMessage::Secure(SecureMessage::DmKeyIssued { .. })
        ));
        alice.expect(&ok_bytes()).await;
        bob.expect(&peer_key("alice", 0)).await;
        assert!(matches!(
            next(&mut bob).await,
            ServerMessage::Secure(SecureMessage::DmKey { .. })
        ));
        bob.send(&join("vault", "pw")).await;
        assert_eq!(confirmed(&mut bob, "vault", false, true).await, vault);
        bob.expect(&peer_key("alice", 0)).await;
        bob.expect(&ok_bytes()).await;
        alice.expect(&peer_key("bob", 1)).await;
        same_room_key(&mut [(&mut alice, 0), (&mut bob, 1)], "vault", vault).await;
        alice
            .request(&nick("ann"), &error(text::SIGNED_NICK_NEEDED))
            .await;
        alice
            .request(
                &identity(0).signed_nick(b"ann"),
                &wire(SecureMessage::NickSet { name: bytes("ann") }),
            )
            .await;
        alice.expect(&ok_bytes()).await;
        bob.expect(&renamed("ann", "alice", 0)).await;

        // The legacy client's own requests get legacy answers only.
        legacy
            .request(&dm("nobody", "x"), &error(text::NICK_NOT_PRESENT))
            .await;
        legacy.request(&nick("leo"), &ok_bytes()).await;
        legacy.request(&dm("ann", "plain"), &ok_bytes()).await;
        alice.expect(&encode_direct_message(b"leo", b"plain")).await;
        alice
            .request(
                &dm_key_request("leo"),
                &error("User 'leo' has no key; messages to them are not encrypted."),
            )
            .await;
        legacy.expect_silence(SILENCE).await;
        server.stop().await;
    }

    #[tokio::test]
    async fn a_plain_connection_cannot_register_unless_the_server_allows_it() {
        let config = parlor_server::config::Config {
            allow_secure_on_plain: false,
            ..test_config()
        };
        let server = TestServer::start(config).await;
        let (mut client, name) = server.greeted().await;
        let register = identity(0).register(&name, &PLAIN_CHANNEL_BINDING);
        client
            .request(&register, &error(text::SECURE_NEEDS_TLS_NO_PORT))
            .await;
        // Still a legacy connection: no confirmation for its NICK.
        client.request(&nick("lee"), &ok_bytes()).await;
        server.stop().await;
    }
}

// ===========================================================================

/// PROTOCOL.md §12.2: confirmations, PEER_KEYs and key rotation, with what
/// §13 promises of them: a leaver cannot read what follows, nor a joiner
/// what came before, and those who stay are told to hold at once.
mod s12_2_rooms {
    use super::*;

    #[tokio::test]
    async fn members_share_each_epochs_key_and_whoever_left_gets_no_new_one() {
        let server = TestServer::start(test_config()).await;
        let mut alice = secure_client(&server, 0, "alice").await;
        alice.send(&join("vault", "")).await;
        let vault = confirmed(&mut alice, "vault", true, true).await;
        alice.expect(&ok_bytes()).await;
        let (epoch, first) = same_room_key(&mut [(&mut alice, 0)], "vault", vault).await;
        assert_eq!(epoch, 1);

        let mut bob = secure_client(&server, 1, "bob").await;
        bob.send(&join("vault", "")).await;
        confirmed(&mut bob, "vault", false, true).await;
        bob.expect(&peer_key("alice", 0)).await;
        bob.expect(&ok_bytes()).await;
        alice.expect(&peer_key("bob", 1)).await;
        let (epoch, second) =
            same_room_key(&mut [(&mut alice, 0), (&mut bob, 1)], "vault", vault).await;
        assert_eq!(epoch, 2);
        assert_ne!(second, first, "a joiner cannot read what came before");

        let mut carol = secure_client(&server, 2, "carol").await;
        carol.send(&join("vault", "")).await;
        confirmed(&mut carol, "vault", false, true).await;
        carol.expect(&peer_key("alice", 0)).await;
        carol.expect(&peer_key("bob", 1)).await;
        carol.expect(&ok_bytes()).await;
        alice.expect(&peer_key("carol", 2)).await;
        bob.expect(&peer_key("carol", 2)).await;
        let members = &mut [(&mut alice, 0), (&mut bob, 1), (&mut carol, 2)];
        let (epoch, third) = same_room_key(members, "vault", vault).await;
        assert_eq!(epoch, 3);

        // A rename tells the others the new name and the old one with the
        // identity; no rotation.
        bob.send(&identity(1).signed_nick(b"robert")).await;
        bob.expect(&wire(SecureMessage::NickSet {
            name: bytes("robert"),
        }))
        .await;
        bob.expect(&ok_bytes()).await;
        alice.expect(&renamed("robert", "bob", 1)).await;
        carol.expect(&renamed("robert", "bob", 1)).await;

        carol.send(&ClientMessage::Leave).await;
        carol
            .expect(&wire(SecureMessage::RoomLeft {
                room: bytes("vault"),
            }))
            .await;
        carol.expect(&ok_bytes()).await;
        // Those who stay hold before any new key arrives.
        alice.expect(&rekeying("vault", vault, 4)).await;
        bob.expect(&rekeying("vault", vault, 4)).await;
        let (epoch, fourth) =
            same_room_key(&mut [(&mut alice, 0), (&mut bob, 1)], "vault", vault).await;
        assert_eq!(epoch, 4);
        assert_ne!(fourth, third, "a leaver cannot read what follows");
        carol.expect_silence(SILENCE).await;

        bob.close().await;
        alice.expect(&rekeying("vault", vault, 5)).await;
        let (epoch, _) = same_room_key(&mut [(&mut alice, 0)], "vault", vault).await;
        assert_eq!(epoch, 5, "a disconnect rotates the key too");
        carol.expect_silence(SILENCE).await;

        // The room emptied and made again is another incarnation.
        alice.send(&ClientMessage::Leave).await;
        for _ in 0..2 {
            alice.recv().await;
        }
        alice.send(&join("vault", "")).await;
        let again = confirmed(&mut alice, "vault", true, true).await;
        assert_ne!(again, vault);
        alice.expect(&ok_bytes()).await;
        let (epoch, _) = same_room_key(&mut [(&mut alice, 0)], "vault", again).await;
        assert_eq!(epoch, 1);
        server.stop().await;
    }
}

// ===========================================================================

/// PROTOCOL.md §12.3
mod s12_3_direct_messages {
    use super::*;

    #[tokio::test]
    async fn a_dm_key_reaches_both_ends_in_order_and_sealed_dms_pass_untouched() {
        let server = TestServer::start(test_config()).await;
        let mut alice = secure_client(&server, 0, "alice").await;
        let mut bob = secure_client(&server, 1, "bob").await;

        alice.send(&dm_key_request("bob")).await;
        let ServerMessage::Secure(SecureMessage::DmKeyIssued {
            target,
            identity: bobs,
            key_id,
            wrapped: for_alice,
        }) = next(&mut alice).await
        else {
            panic!("expected DM_KEY_ISSUED first")
        };
        assert_eq!(
            (&target[..], &bobs),
            (&b"bob"[..], &identity(1).block(b"bob"))
        );
        alice.expect(&ok_bytes()).await;
        bob.expect(&peer_key("alice", 0)).await;
        let ServerMessage::Secure(SecureMessage::DmKey {
            peer,
            peer_fingerprint,
            key_id: bobs_key_id,
            wrapped: for_bob,
        }) = next(&mut bob).await
        else {
            panic!("expected DM_KEY after PEER_KEY")
        };
        assert_eq!(
            (&peer[..], peer_fingerprint, bobs_key_id),
            (&b"alice"[..], fingerprint(0), key_id)
        );
        let (a, b) = (fingerprint(0), fingerprint(1));
        let shared = unwrap_key(dm_key_label(key_id, &a, &b), &for_alice).unwrap();
        assert_eq!(shared.len(), 32);
        assert_eq!(
            unwrap_key(dm_key_label(key_id, &b, &a), &for_bob).unwrap(),
            shared
        );
        for other in [
            dm_key_label(key_id, &b, &a),
            dm_key_label(key_id + 1, &a, &b),
            room_key_label(b"", 0, key_id, &a),
        ] {
            assert!(
                unwrap_key(other, &for_alice).is_err(),
                "a DM key opens under its own label only"
            );
        }

        // The server relays a sealed DM as it relays any text.
        let sealed: Vec<u8> = (0..=255u8).cycle().take(1_000).collect();
        alice.request(&dm("bob", &sealed), &ok_bytes()).await;
        bob.expect(&encode_direct_message(b"alice", &sealed)).await;

        bob.send(&dm_key_request("alice")).await;
        match next(&mut bob).await {
            ServerMessage::Secure(SecureMessage::DmKeyIssued { key_id: later, .. }) => {
                assert!(later > key_id, "key ids are not reused")
            }
            other => panic!("{other:?}"),
        }
        bob.expect(&ok_bytes()).await;
        alice.expect(&peer_key("bob", 1)).await;
        assert!(matches!(
            next(&mut alice).await,
            ServerMessage::Secure(SecureMessage::DmKey { .. })
        ));

        // Each error is one clear 9a 01, after 94 for an unknown name.
        alice.send(&dm_key_request("nobody")).await;
        alice
            .expect(&wire(SecureMessage::NoSuchUser {
                name: bytes("nobody"),
            }))
            .await;
        alice.expect(&error(text::NICK_NOT_PRESENT)).await;
        alice
            .request(&dm_key_request("alice"), &error(text::DM_KEY_WITH_YOURSELF))
            .await;
        let (mut keyless, _) = server.greeted().await;
        keyless
            .request(&dm_key_request("alice"), &error(text::REGISTER_KEY_FIRST))
            .await;
        alice.send(&dm("nobody", "x")).await;
        alice
            .expect(&wire(SecureMessage::NoSuchUser {
                name: bytes("nobody"),
            }))
            .await;
        alice.expect(&error(text::NICK_NOT_PRESENT)).await;
        server.stop().await;
    }

    #[tokio::test]
    async fn dm_keys_naming_one_user_are_bounded() {
        let config = parlor_server::config::Config {
            dm_keys_per_target: 2,
            rate_limit_messages: 1_000,
            ..test_config()
        };
        let server = TestServer::start(config).await;
        let mut alice = secure_client(&server, 0, "alice").await;
        let mut bob = secure_client(&server, 1, "bob").await;
        for _ in 0..2 {
            alice.send(&dm_key_request("bob")).await;
            next(&mut alice).await;
            alice.expect(&ok_bytes()).await;
            bob.recv().await;
            bob.recv().await;
        }
        let over = response_bytes(
            0x02,
            b"Too many DM keys were issued for 'bob' lately, try again later.",
        );
        alice.request(&dm_key_request("bob"), &over).await;
        bob.expect_silence(SILENCE).await;
        server.stop().await;
    }
}

// ===========================================================================

/// PROTOCOL.md §12.4
mod s12_4_relaying_sealed_messages {
    use super::*;

    #[tokio::test]
    async fn sealed_room_messages_are_relayed_byte_for_byte() {
        let server = TestServer::start(test_config()).await;
        let mut alice = secure_client(&server, 0, "alice").await;
        let mut bob = secure_client(&server, 1, "bob").await;
        alice.send(&join("vault", "")).await;
        let vault = confirmed(&mut alice, "vault", true, true).await;
        alice.expect(&ok_bytes()).await;
        room_key(&mut alice, 0, "vault", vault).await;
        bob.send(&join("vault", "")).await;
        for _ in 0..3 {
            bob.recv().await;
        }
        alice.expect(&peer_key("bob", 1)).await;
        same_room_key(&mut [(&mut alice, 0), (&mut bob, 1)], "vault", vault).await;

        let every_byte: Vec<u8> = (0..=255u8).collect();
        let longest: Vec<u8> = (0..=255u8).cycle().take(65_535).collect();
        for text in [every_byte, longest, Vec::new()] {
            alice.request(&room_msg("vault", &text), &ok_bytes()).await;
            bob.expect(&encode_room_message(b"vault", b"alice", &text))
                .await;
        }
        alice.expect_silence(SILENCE).await;
        server.stop().await;
    }
}

// ===========================================================================

/// PROTOCOL.md §12.5: REGISTER_KEY, SIGNED_NICK and DM_KEY_REQUEST, their
/// errors and their malformed forms (§8).
mod s12_5_client_to_server_messages {
    use super::*;

    #[tokio::test]
    async fn bad_keys_and_bad_proofs_get_a_clear_error_and_malformed_secure_requests_close() {
        let server = TestServer::start(test_config()).await;
        let (mut client, name) = server.greeted().await;
        let weak = rsa::PrivateKey::new(&mut rand::rng(), 1024).unwrap();
        let weak = {
            use rsa::pkcs8::EncodePublicKey;
            weak.to_public_key().to_public_key_der().unwrap().into_vec()
        };
        for der in [weak, b"not a key".to_vec(), Vec::new()] {
            let register =
                TestIdentity::with_rsa(1, der.into()).register(&name, &PLAIN_CHANNEL_BINDING);
            client
                .request(&register, &error(text::BAD_PUBLIC_KEY))
                .await;
        }
        // Proofs over another name: refused; over this one: registered.
        let elsewhere = identity(0).register(b"someone", &PLAIN_CHANNEL_BINDING);
        client
            .request(&elsewhere, &error(text::KEY_PROOF_FAILED))
            .await;
        let register = identity(0).register(&name, &PLAIN_CHANNEL_BINDING);
        client.request(&register, &ok_bytes()).await;
        client.secure = true;
        client
            .request(&register, &error(text::KEY_ALREADY_REGISTERED))
            .await;
        client
            .request(
                &identity(1).signed_nick(b"mallory"),
                &error(text::KEY_PROOF_FAILED),
            )
            .await;

        let malformed = [
            (
                frame_bytes(0x81, b"\x00\x05abc"),
                "malformed REGISTER_KEY payload: inner lengths do not match the frame length",
            ),
            (
                frame_bytes(0x96, b"\x03bob"),
                "malformed SIGNED_NICK payload: inner lengths do not match the frame length",
            ),
            (
                frame_bytes(0x82, b"\x03bo"),
                "malformed DM_KEY_REQUEST payload: inner lengths do not match the frame length",
            ),
            (frame_bytes(0x84, b""), "unknown opcode 0x84"),
            (frame_bytes(0x95, b""), "unknown opcode 0x95"),
        ];
        for (frame, reason) in malformed {
            let (mut client, _) = server.greeted().await;
            client.send_raw(&frame).await;
            client
                .expect(&error(format!("Malformed frame: {reason}.")))
                .await;
            client.expect_closed().await;
        }
        server.stop().await;
    }
}

// ===========================================================================

/// PROTOCOL.md §12.2, key rotation: wrapping for every member runs on the
/// key-wrapping pool, off the event loop.
///
/// A measurement, not a test: how long a key rotation for a 1,000-member
/// room with 3072-bit keys takes on the key-wrapping pool, and how much it
/// delays the room messages that keep flowing meanwhile. Run it by hand, in
/// release mode, and read what it prints:
///
/// ```text
/// cargo test --release --test secure_server -- --ignored --nocapture
/// ```
mod rotation_measurement {
    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use bytes::BytesMut;
    use parlor_proto::FrameCodec;
    use parlor_server::config::Config;
    use rand::Rng;
    use rsa::pkcs8::EncodePublicKey;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::tcp::OwnedWriteHalf;
    use tokio::net::TcpStream;
    use tokio::sync::oneshot;

    use super::*;

    const MEMBERS: usize = 1_000;
    const ROOM: &str = "big";
    /// One room message every this often, all through the measurement.
    const MESSAGE_EVERY: Duration = Duration::from_millis(20);

    /// What the members saw, with when they saw it.
    #[derive(Default)]
    struct Seen {
        /// For each epoch, when each member received its key.
        keys: HashMap<u32, Vec<Instant>>,
        /// For each room message any member received: when it was sent,
        /// and how long it took to arrive.
        delays: Vec<(Instant, Duration)>,
    }

    /// A 3072-bit RSA public key with a random odd modulus. Nobody holds
    /// its private key, but wrapping for it costs the same as for a real
    /// one, and making a thousand real 3072-bit keys would take minutes.
    fn fake_3072_bit_key() -> Bytes {
        let mut modulus = vec![0u8; 384];
        rand::rng().fill_bytes(&mut modulus);
        modulus[0] |= 0x80;
        modulus[383] |= 1;
        let n = rsa::BoxedUint::from_be_slice(&modulus, 3072).unwrap();
        let e = rsa::BoxedUint::from_be_slice(&[1, 0, 1], 64).unwrap();
        der_of_public(&rsa::PublicKey::new(n, e).unwrap())
    }

    fn der_of_public(key: &rsa::PublicKey) -> Bytes {
        Bytes::from(key.to_public_key_der().unwrap().into_vec())
    }

    /// Connects as member `number`, takes a name, registers an identity
    /// with `key` for its RSA key and joins the room; a task then reads
    /// everything the member receives and notes keys and messages in
    /// `seen`. Returns the writing half once the JOIN is answered.
    async fn member(
        addr: SocketAddr,
        number: usize,
        key: Bytes,
        seen: Arc<Mutex<Seen>>,
        base: Instant,
    ) -> OwnedWriteHalf {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (mut reader, mut writer) = stream.into_split();
        let name = format!("m{number}");
        let nick = nick(&name).to_frame().to_bytes();
        let register = TestIdentity::with_rsa(number as u8, key)
            .register(name.as_bytes(), &PLAIN_CHANNEL_BINDING)
            .to_frame()
            .to_bytes();
        let join = join(ROOM, "").to_frame().to_bytes();
        writer
            .write_all(&[nick, register, join].concat())
            .await
            .unwrap();
        let (joined, answered) = oneshot::channel();
        tokio::spawn(async move {
            let mut joined = Some(joined);
            let mut replies = 0;
            let mut codec = FrameCodec::new(usize::MAX);
            let mut buffer = BytesMut::new();
            while reader
                .read_buf(&mut buffer)
                .await
                .is_ok_and(|read| read > 0)
            {
                while let Some(frame) = codec.decode(&mut buffer).unwrap() {
                    let now = Instant::now();
                    match ServerMessage::parse(&frame).unwrap() {
                        ServerMessage::Response { status: 0, .. } => {
                            replies += 1;
                            if replies == 3 {
                                let _ = joined.take().map(|joined| joined.send(()));
                            }
                        }
                        ServerMessage::Secure(SecureMessage::RoomKey { epoch, .. }) => {
                            seen.lock()
                                .unwrap()
                                .keys
                                .entry(epoch)
                                .or_default()
                                .push(now);
                        }
                        ServerMessage::RoomMessage { text, .. } => {
                            let nanos = u64::from_be_bytes(text[..8].try_into().unwrap());
                            let sent = base + Duration::from_nanos(nanos);
                            seen.lock().unwrap().delays.push((sent, now - sent));
                        }
                        _ => {}
                    }
                }
            }
        });
        answered.await.expect("joined");
        writer
    }

    /// Sends a room message stamped with its sending time every
    /// [`MESSAGE_EVERY`], for `total`.
    async fn talk(writer: &mut OwnedWriteHalf, base: Instant, total: Duration) {
        let end = Instant::now() + total;
        while Instant::now() < end {
            let stamp = (Instant::now() - base).as_nanos() as u64;
            let message = room_msg(ROOM, stamp.to_be_bytes()).to_frame().to_bytes();
            writer.write_all(&message).await.unwrap();
            tokio::time::sleep(MESSAGE_EVERY).await;
        }
    }

    /// Waits until every one of `count` members holds the key of the
    /// newest epoch; returns that epoch and when the last one arrived.
    async fn settled(seen: &Mutex<Seen>, count: usize) -> (u32, Instant) {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let seen = seen.lock().unwrap();
            let Some((&epoch, times)) = seen.keys.iter().max_by_key(|(epoch, _)| **epoch) else {
                continue;
            };
            if times.len() == count {
                return (epoch, *times.iter().max().unwrap());
            }
        }
    }

    fn summary(delays: &mut [Duration]) -> String {
        delays.sort();
        let at = |fraction: f64| delays[((delays.len() - 1) as f64 * fraction) as usize];
        format!(
            "{} deliveries, median {:?}, p99 {:?}, max {:?}",
            delays.len(),
            at(0.5),
            at(0.99),
            at(1.0)
        )
    }

    fn delays_sent_within(seen: &Mutex<Seen>, from: Instant, to: Instant) -> Vec<Duration> {
        let seen = seen.lock().unwrap();
        let sent_within = |sent: &Instant| (from..=to).contains(sent);
        seen.delays
            .iter()
            .filter(|(sent, _)| sent_within(sent))
            .map(|(_, delay)| *delay)
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement; run by hand in release mode"]
    async fn rotation_of_a_1000_member_room_with_3072_bit_keys() {
        let config = Config {
            rate_limit_messages: 1_000_000,
            idle_timeout_secs: 3_600.0,
            send_queue_bytes: 64 << 20,
            ..test_config()
        };
        let threads = config.key_wrap_threads;
        let server = TestServer::start(config).await;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let base = Instant::now();

        let started = Instant::now();
        let mut joining = tokio::task::JoinSet::new();
        for number in 0..MEMBERS - 1 {
            let seen = Arc::clone(&seen);
            joining.spawn(member(server.addr, number, fake_3072_bit_key(), seen, base));
        }
        let mut writers = joining.join_all().await;
        let (epoch, _) = settled(&seen, MEMBERS - 1).await;
        println!(
            "{} members joined and settled on epoch {epoch} in {:?}",
            MEMBERS - 1,
            started.elapsed()
        );

        // One member talks throughout: first alone, then while the
        // thousandth member joins and the key of the room rotates.
        let mut talker = writers.pop().unwrap();
        let quiet_from = Instant::now();
        talk(&mut talker, base, Duration::from_secs(2)).await;
        let quiet_to = Instant::now();
        let talking = tokio::spawn(async move {
            talk(&mut talker, base, Duration::from_secs(4)).await;
            talker
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        let join_sent = Instant::now();
        let _joiner = member(
            server.addr,
            MEMBERS - 1,
            fake_3072_bit_key(),
            Arc::clone(&seen),
            base,
        )
        .await;
        let (rotated, last_key) = settled(&seen, MEMBERS).await;
        assert_eq!(rotated, epoch + 1, "one rotation for one join");
        let _talker = talking.await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;

        println!(
            "rotation for {MEMBERS} members, {threads} key-wrapping threads: {:?} from the JOIN \
             to the last member's key",
            last_key - join_sent
        );
        let mut quiet = delays_sent_within(&seen, quiet_from, quiet_to);
        println!("room messages before:  {}", summary(&mut quiet));
        let mut during = delays_sent_within(&seen, join_sent, last_key);
        println!("room messages during:  {}", summary(&mut during));
        drop(writers);
        server.stop().await;
    }
}
