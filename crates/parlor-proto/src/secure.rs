//! Typed messages of the secure extension (PROTOCOL.md §12), parsed with nom
//! and encoded straight into shareable [`Bytes`].
//!
//! The extension keeps the legacy framing and field encodings: `short` is a
//! `u8` length and that many bytes, `long` a big-endian `u16` length and that
//! many bytes, and integers are big-endian. As in [`super::legacy`], inner
//! lengths must add up exactly to the frame length.
//!
//! Two client requests ([`ClientMessage::RegisterKey`] and
//! [`ClientMessage::DmKeyRequest`]) are variants of the legacy
//! [`ClientMessage`], so the codec and the hub handle them like any other
//! request. Everything the server sends only to secure connections is a
//! [`SecureMessage`], reachable from [`ServerMessage::parse`] as
//! [`ServerMessage::Secure`], so a client decodes every frame it receives
//! with one call.
//!
//! Opcode `81` means REGISTER_KEY from a client and PEER_KEY from the
//! server, as in the original design notes: the direction tells them apart.
//!
//! [`ClientMessage`]: super::ClientMessage
//! [`ClientMessage::RegisterKey`]: super::ClientMessage::RegisterKey
//! [`ClientMessage::DmKeyRequest`]: super::ClientMessage::DmKeyRequest
//! [`ServerMessage::parse`]: super::ServerMessage::parse
//! [`ServerMessage::Secure`]: super::ServerMessage::Secure

use bytes::{BufMut, Bytes, BytesMut};
use nom::combinator::all_consuming;
use nom::number::complete::{be_u32, be_u8};
use nom::{IResult, Parser};

use super::frame::{put_header, Frame, HEADER_LEN};
use super::legacy::{long_field, put_long, put_short, short_field, ParseError};

/// Opcodes of the secure extension.
pub mod opcode {
    /// S→C: a DM key, wrapped for the target of a DM_KEY_REQUEST.
    pub const DM_KEY: u8 = 0x80;
    /// C→S: the connection's RSA public key; makes the connection secure.
    pub const REGISTER_KEY: u8 = 0x81;
    /// S→C: another user's name and RSA public key.
    pub const PEER_KEY: u8 = 0x81;
    /// C→S: asks for a DM key shared with another secure user.
    pub const DM_KEY_REQUEST: u8 = 0x82;
    /// S→C: the room key of one epoch, wrapped for this member.
    pub const ROOM_KEY: u8 = 0x84;
    /// S→C: the requester's half of a DM key.
    pub const DM_KEY_ISSUED: u8 = 0x89;
    /// S→C: confirms a NICK.
    pub const NICK_SET: u8 = 0x90;
    /// S→C: confirms a JOIN that entered an existing room.
    pub const ROOM_JOINED: u8 = 0x91;
    /// S→C: confirms a LEAVE that left a room.
    pub const ROOM_LEFT: u8 = 0x92;
    /// S→C: confirms a JOIN that created the room.
    pub const ROOM_CREATED: u8 = 0x93;
    /// S→C: a DM or DM_KEY_REQUEST named nobody connected.
    pub const NO_SUCH_USER: u8 = 0x94;
}

/// Modulus sizes a registered RSA key may have, in bits (PROTOCOL.md
/// §12.5). Below 2048 bits RSA is too weak; above 4096 every wrap and every
/// signature check by peers gets slow for no gain.
pub const KEY_BITS: std::ops::RangeInclusive<usize> = 2048..=4096;

/// The OAEP label of every wrapped room key (PROTOCOL.md §12.2).
pub const ROOM_KEY_OAEP_LABEL: &[u8] = b"parlor room key";

/// The OAEP label of every wrapped DM key (PROTOCOL.md §12.3). Distinct from
/// the room label, so that a wrapped key of one kind never opens as the other.
pub const DM_KEY_OAEP_LABEL: &[u8] = b"parlor dm key";

/// Bit 0 of the flags byte of ROOM_JOINED and ROOM_CREATED: the room is a
/// secure room. The other bits are sent as zero and ignored on receipt.
pub const ROOM_FLAG_SECURE: u8 = 0x01;

/// The TLS exporter label of a connection's **channel binding** (RFC 8446
/// §7.5; RFC 5705 for TLS 1.2): both ends call
/// `export_keying_material(CHANNEL_BINDING_LEN bytes, CHANNEL_BINDING_LABEL,
/// no context)` once the handshake is done, and get the same bytes only if
/// they are the two ends of one TLS session. A client signs them when it
/// registers its key, so a proof of possession made on one connection is
/// worthless on any other, and a relay that terminates TLS itself (and so
/// holds two sessions) cannot pass it on.
pub const CHANNEL_BINDING_LABEL: &[u8] = b"EXPORTER-parlor-register";

/// Bytes of a channel binding (see [`CHANNEL_BINDING_LABEL`]).
pub const CHANNEL_BINDING_LEN: usize = 32;

/// A frame that the server sends only to secure connections.
///
/// `key` fields hold an RSA public key as DER SubjectPublicKeyInfo, exactly
/// as its owner registered it; `wrapped` fields hold RSA-OAEP-SHA256
/// ciphertext of a 32-byte key, as long as the recipient's modulus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecureMessage {
    /// `81 short name, long key`: another user's key, so that the client
    /// can check what that user signs and knows who a DM key is shared with.
    PeerKey {
        /// The user's current name.
        name: Bytes,
        /// The user's registered key.
        key: Bytes,
    },
    /// `84 short room, u32 epoch, long wrapped`: the room key of a new
    /// epoch, sent on every change of a secure room's membership.
    RoomKey {
        /// The room the key is for.
        room: Bytes,
        /// Counts up from 1 with each rotation of the room, with gaps
        /// possible; envelopes name the epoch whose key sealed them.
        epoch: u32,
        /// The room key, wrapped for this member under the room label.
        wrapped: Bytes,
    },
    /// `80 short peer, u32 key_id, long wrapped`: the target's half of a DM
    /// key that `peer` asked for.
    DmKey {
        /// The user who asked for the key.
        peer: Bytes,
        /// The key's server-wide id, never 0; DM envelopes name it.
        key_id: u32,
        /// The DM key, wrapped for this user under the DM label.
        wrapped: Bytes,
    },
    /// `89 short target, long key, u32 key_id, long wrapped`: the
    /// requester's half of a DM key, before its `9a 00`.
    DmKeyIssued {
        /// The target's name when the key was issued (a rename while the
        /// key was wrapped shows here).
        target: Bytes,
        /// The target's registered key, to check what it signs.
        key: Bytes,
        /// The key's server-wide id, never 0; the same in the target's `80`.
        key_id: u32,
        /// The DM key, wrapped for the requester under the DM label.
        wrapped: Bytes,
    },
    /// `90 short name`: confirms a NICK, before its `9a 00`.
    NickSet {
        /// The name the connection now has.
        name: Bytes,
    },
    /// `91 short room, u8 flags`: confirms a JOIN that entered an existing
    /// room, before the members' `81`s and the `9a 00`.
    RoomJoined {
        /// The room entered.
        room: Bytes,
        /// Whether it is a secure room ([`ROOM_FLAG_SECURE`]); a secure
        /// client in a plaintext room warns its user.
        secure: bool,
    },
    /// `93 short room, u8 flags`: confirms a JOIN that created the room,
    /// before its `9a 00`.
    RoomCreated {
        /// The room created.
        room: Bytes,
        /// Whether it is a secure room ([`ROOM_FLAG_SECURE`]): it is when a
        /// secure connection created it.
        secure: bool,
    },
    /// `92 short room`: confirms a LEAVE that left a room, before its
    /// `9a 00`.
    RoomLeft {
        /// The room left.
        room: Bytes,
    },
    /// `94 short name`: a DM or DM_KEY_REQUEST named nobody connected;
    /// comes before the `9a 01`, so that a client can tell it apart from
    /// other failures without reading the text.
    NoSuchUser {
        /// The name as the request gave it.
        name: Bytes,
    },
}

/// One field of a payload, for [`put_frame`].
enum Field<'a> {
    U8(u8),
    U32(u32),
    Short(&'a [u8]),
    Long(&'a [u8]),
}

impl Field<'_> {
    fn wire_len(&self) -> usize {
        match self {
            Field::U8(_) => 1,
            Field::U32(_) => 4,
            Field::Short(bytes) => 1 + bytes.len(),
            Field::Long(bytes) => 2 + bytes.len(),
        }
    }

    fn put(&self, dst: &mut BytesMut) {
        match self {
            Field::U8(value) => dst.put_u8(*value),
            Field::U32(value) => dst.put_u32(*value),
            Field::Short(bytes) => put_short(dst, bytes),
            Field::Long(bytes) => put_long(dst, bytes),
        }
    }
}

/// Appends a whole frame, header included, to `dst`.
///
/// # Panics
/// If a short field is over 255 bytes or a long one over 65,535.
fn put_frame(dst: &mut BytesMut, opcode: u8, fields: &[Field<'_>]) {
    let payload_len: usize = fields.iter().map(Field::wire_len).sum();
    dst.reserve(HEADER_LEN + payload_len);
    put_header(dst, opcode, payload_len);
    for field in fields {
        field.put(dst);
    }
}

fn flags(secure: bool) -> u8 {
    if secure {
        ROOM_FLAG_SECURE
    } else {
        0
    }
}

impl SecureMessage {
    /// The message's opcode.
    pub fn opcode(&self) -> u8 {
        match self {
            SecureMessage::PeerKey { .. } => opcode::PEER_KEY,
            SecureMessage::RoomKey { .. } => opcode::ROOM_KEY,
            SecureMessage::DmKey { .. } => opcode::DM_KEY,
            SecureMessage::DmKeyIssued { .. } => opcode::DM_KEY_ISSUED,
            SecureMessage::NickSet { .. } => opcode::NICK_SET,
            SecureMessage::RoomJoined { .. } => opcode::ROOM_JOINED,
            SecureMessage::RoomCreated { .. } => opcode::ROOM_CREATED,
            SecureMessage::RoomLeft { .. } => opcode::ROOM_LEFT,
            SecureMessage::NoSuchUser { .. } => opcode::NO_SUCH_USER,
        }
    }

    /// Encodes the message into one frame, ready to be shared by every
    /// recipient.
    ///
    /// # Panics
    /// If a name is over 255 bytes, or a key or wrapped key over 65,535.
    pub fn encode(&self) -> Bytes {
        let mut dst = BytesMut::new();
        self.encode_into(&mut dst);
        dst.freeze()
    }

    /// Appends the message's frame to `dst`, so that several frames for one
    /// recipient can leave in one buffer.
    ///
    /// # Panics
    /// As [`SecureMessage::encode`].
    pub fn encode_into(&self, dst: &mut BytesMut) {
        use Field::{Long, Short, U32, U8};
        let opcode = self.opcode();
        match self {
            SecureMessage::PeerKey { name, key } => {
                put_frame(dst, opcode, &[Short(name), Long(key)])
            }
            SecureMessage::RoomKey {
                room,
                epoch,
                wrapped,
            } => put_frame(dst, opcode, &[Short(room), U32(*epoch), Long(wrapped)]),
            SecureMessage::DmKey {
                peer,
                key_id,
                wrapped,
            } => put_frame(dst, opcode, &[Short(peer), U32(*key_id), Long(wrapped)]),
            SecureMessage::DmKeyIssued {
                target,
                key,
                key_id,
                wrapped,
            } => put_frame(
                dst,
                opcode,
                &[Short(target), Long(key), U32(*key_id), Long(wrapped)],
            ),
            SecureMessage::RoomJoined { room, secure }
            | SecureMessage::RoomCreated { room, secure } => {
                put_frame(dst, opcode, &[Short(room), U8(flags(*secure))])
            }
            SecureMessage::NickSet { name: field }
            | SecureMessage::RoomLeft { room: field }
            | SecureMessage::NoSuchUser { name: field } => put_frame(dst, opcode, &[Short(field)]),
        }
    }

    /// Interprets a frame of the secure extension received from a server.
    /// Fields are slices of the frame's payload, so parsing copies nothing.
    pub fn parse(frame: &Frame) -> Result<SecureMessage, ParseError> {
        let payload = &frame.payload;
        let sub = |field: &[u8]| payload.slice_ref(field);
        let bad = |name| move |_| ParseError::BadLengths { name };
        let message = match frame.opcode {
            opcode::PEER_KEY => {
                let (_, (name, key)) = all_consuming((short_field, long_field))
                    .parse(payload)
                    .map_err(bad("PEER_KEY"))?;
                SecureMessage::PeerKey {
                    name: sub(name),
                    key: sub(key),
                }
            }
            opcode::ROOM_KEY => {
                let (_, (room, epoch, wrapped)) =
                    short_u32_long(payload).map_err(bad("ROOM_KEY"))?;
                SecureMessage::RoomKey {
                    room: sub(room),
                    epoch,
                    wrapped: sub(wrapped),
                }
            }
            opcode::DM_KEY => {
                let (_, (peer, key_id, wrapped)) =
                    short_u32_long(payload).map_err(bad("DM_KEY"))?;
                SecureMessage::DmKey {
                    peer: sub(peer),
                    key_id,
                    wrapped: sub(wrapped),
                }
            }
            opcode::DM_KEY_ISSUED => {
                let (_, (target, key, key_id, wrapped)) =
                    all_consuming((short_field, long_field, be_u32, long_field))
                        .parse(payload)
                        .map_err(bad("DM_KEY_ISSUED"))?;
                SecureMessage::DmKeyIssued {
                    target: sub(target),
                    key: sub(key),
                    key_id,
                    wrapped: sub(wrapped),
                }
            }
            opcode::NICK_SET => SecureMessage::NickSet {
                name: sub(only_short(payload).map_err(bad("NICK_SET"))?.1),
            },
            opcode::ROOM_JOINED => {
                let (_, (room, flags)) = short_then_u8(payload).map_err(bad("ROOM_JOINED"))?;
                SecureMessage::RoomJoined {
                    room: sub(room),
                    secure: flags & ROOM_FLAG_SECURE != 0,
                }
            }
            opcode::ROOM_CREATED => {
                let (_, (room, flags)) = short_then_u8(payload).map_err(bad("ROOM_CREATED"))?;
                SecureMessage::RoomCreated {
                    room: sub(room),
                    secure: flags & ROOM_FLAG_SECURE != 0,
                }
            }
            opcode::ROOM_LEFT => SecureMessage::RoomLeft {
                room: sub(only_short(payload).map_err(bad("ROOM_LEFT"))?.1),
            },
            opcode::NO_SUCH_USER => SecureMessage::NoSuchUser {
                name: sub(only_short(payload).map_err(bad("NO_SUCH_USER"))?.1),
            },
            other => return Err(ParseError::UnknownOpcode(other)),
        };
        Ok(message)
    }
}

/// Whether `opcode` is one that only secure connections may receive: every
/// opcode from `80` to `9f` except RESPONSE (`9a`) and HELLO (`9b`).
pub fn is_secure_only(opcode: u8) -> bool {
    (0x80..=0x9f).contains(&opcode) && !matches!(opcode, 0x9a | 0x9b)
}

fn only_short(input: &[u8]) -> IResult<&[u8], &[u8]> {
    all_consuming(short_field).parse(input)
}

fn short_then_u8(input: &[u8]) -> IResult<&[u8], (&[u8], u8)> {
    all_consuming((short_field, be_u8)).parse(input)
}

/// A name, a u32 (epoch or key id) and a wrapped key.
type KeyFields<'a> = (&'a [u8], u32, &'a [u8]);

fn short_u32_long(input: &[u8]) -> IResult<&[u8], KeyFields<'_>> {
    all_consuming((short_field, be_u32, long_field)).parse(input)
}

/// REGISTER_KEY's payload: `long key`.
pub(super) fn parse_register_key(payload: &Bytes) -> Result<Bytes, ParseError> {
    let (_, key) = all_consuming(long_field).parse(payload).map_err(
        |_: nom::Err<nom::error::Error<&[u8]>>| ParseError::BadLengths {
            name: "REGISTER_KEY",
        },
    )?;
    Ok(payload.slice_ref(key))
}

/// DM_KEY_REQUEST's payload: `short target`.
pub(super) fn parse_dm_key_request(payload: &Bytes) -> Result<Bytes, ParseError> {
    let (_, target) = only_short(payload).map_err(|_| ParseError::BadLengths {
        name: "DM_KEY_REQUEST",
    })?;
    Ok(payload.slice_ref(target))
}

#[cfg(test)]
mod tests {
    use super::super::{ClientMessage, ServerMessage};
    use super::*;

    fn bytes(text: &[u8]) -> Bytes {
        Bytes::copy_from_slice(text)
    }

    /// A stand-in for a DER key or a wrapped key: `len` bytes counting up.
    fn blob(len: usize) -> Bytes {
        (0..len).map(|i| i as u8).collect::<Vec<u8>>().into()
    }

    fn every_message() -> Vec<SecureMessage> {
        vec![
            SecureMessage::PeerKey {
                name: bytes(b"bob"),
                key: blob(294),
            },
            SecureMessage::RoomKey {
                room: bytes(b"lobby"),
                epoch: 7,
                wrapped: blob(256),
            },
            SecureMessage::DmKey {
                peer: bytes(b"alice"),
                key_id: 1,
                wrapped: blob(384),
            },
            SecureMessage::DmKeyIssued {
                target: bytes(b"bob"),
                key: blob(422),
                key_id: u32::MAX,
                wrapped: blob(512),
            },
            SecureMessage::NickSet {
                name: bytes(b"alice"),
            },
            SecureMessage::RoomJoined {
                room: bytes(b"lobby"),
                secure: true,
            },
            SecureMessage::RoomCreated {
                room: bytes(b"open"),
                secure: false,
            },
            SecureMessage::RoomLeft {
                room: bytes(b"lobby"),
            },
            SecureMessage::NoSuchUser {
                name: bytes(b"nobody"),
            },
        ]
    }

    fn to_frame(wire: &Bytes) -> Frame {
        let len = u32::from_be_bytes(wire[..4].try_into().unwrap()) as usize;
        assert_eq!(len + HEADER_LEN, wire.len(), "length field");
        assert_eq!(&wire[4..6], &[0x04, 0x17]);
        Frame::new(wire[6], wire.slice(HEADER_LEN..))
    }

    #[test]
    fn every_server_message_round_trips_through_server_message_parse() {
        for message in every_message() {
            let wire = message.encode();
            let frame = to_frame(&wire);
            assert_eq!(frame.opcode, message.opcode());
            assert!(is_secure_only(frame.opcode));
            assert_eq!(SecureMessage::parse(&frame).unwrap(), message);
            assert_eq!(
                ServerMessage::parse(&frame).unwrap(),
                ServerMessage::Secure(message.clone())
            );
            assert_eq!(ServerMessage::Secure(message).encode(), wire);
        }
    }

    #[test]
    fn server_messages_refuse_lengths_that_do_not_fill_the_frame() {
        for message in every_message() {
            let wire = message.encode();
            let frame = to_frame(&wire);
            let short = Frame::new(frame.opcode, frame.payload.slice(..frame.payload.len() - 1));
            let mut long = frame.payload.to_vec();
            long.push(0);
            let long = Frame::new(frame.opcode, long);
            for bad in [short, long, Frame::new(frame.opcode, Bytes::new())] {
                assert!(
                    matches!(
                        SecureMessage::parse(&bad),
                        Err(ParseError::BadLengths { .. })
                    ),
                    "{bad:?}"
                );
            }
        }
        assert_eq!(
            SecureMessage::parse(&Frame::new(0x9a, Bytes::from_static(b"\x00"))),
            Err(ParseError::UnknownOpcode(0x9a))
        );
    }

    #[test]
    fn client_requests_round_trip_and_refuse_bad_lengths() {
        let requests = [
            ClientMessage::RegisterKey { key: blob(294) },
            ClientMessage::DmKeyRequest {
                target: bytes(b"bob"),
            },
        ];
        for request in requests {
            let frame = request.to_frame();
            assert_eq!(ClientMessage::parse(&frame).unwrap(), request);
            assert!(request.expects_response());
        }
        let bad = [
            (opcode::REGISTER_KEY, &b""[..], "REGISTER_KEY"),
            (opcode::REGISTER_KEY, b"\x00\x02a", "REGISTER_KEY"),
            (opcode::REGISTER_KEY, b"\x00\x01ab", "REGISTER_KEY"),
            (opcode::DM_KEY_REQUEST, b"", "DM_KEY_REQUEST"),
            (opcode::DM_KEY_REQUEST, b"\x03bo", "DM_KEY_REQUEST"),
            (opcode::DM_KEY_REQUEST, b"\x03bobs", "DM_KEY_REQUEST"),
        ];
        for (opcode, payload, name) in bad {
            assert_eq!(
                ClientMessage::parse(&Frame::new(opcode, Bytes::copy_from_slice(payload))),
                Err(ParseError::BadLengths { name }),
                "{payload:?}"
            );
        }
        for server_only in [0x80, 0x84, 0x89, 0x90, 0x91, 0x92, 0x93, 0x94] {
            assert_eq!(
                ClientMessage::parse(&Frame::new(server_only, Bytes::new())),
                Err(ParseError::UnknownOpcode(server_only))
            );
        }
    }

    /// The byte examples of PROTOCOL.md §12.5 and §12.6, exactly.
    #[test]
    fn encodes_the_documented_examples() {
        let hex = |text: &str| -> Vec<u8> {
            text.split_whitespace()
                .map(|byte| u8::from_str_radix(byte, 16).unwrap())
                .collect()
        };
        let with_blob = |head: &str, blob_len: usize, tail: &str| -> Vec<u8> {
            [hex(head), blob(blob_len).to_vec(), hex(tail)].concat()
        };
        let register = ClientMessage::RegisterKey { key: blob(294) };
        assert_eq!(
            register.to_frame().to_bytes().to_vec(),
            with_blob("00 00 01 28 04 17 81 01 26", 294, "")
        );
        let request = ClientMessage::DmKeyRequest {
            target: bytes(b"bob"),
        };
        assert_eq!(
            request.to_frame().to_bytes().to_vec(),
            hex("00 00 00 04 04 17 82 03 62 6f 62")
        );
        let examples: [(SecureMessage, Vec<u8>); 9] = [
            (
                SecureMessage::PeerKey {
                    name: bytes(b"bob"),
                    key: blob(294),
                },
                with_blob("00 00 01 2c 04 17 81 03 62 6f 62 01 26", 294, ""),
            ),
            (
                SecureMessage::RoomKey {
                    room: bytes(b"lobby"),
                    epoch: 2,
                    wrapped: blob(256),
                },
                with_blob(
                    "00 00 01 0c 04 17 84 05 6c 6f 62 62 79 00 00 00 02 01 00",
                    256,
                    "",
                ),
            ),
            (
                SecureMessage::DmKey {
                    peer: bytes(b"alice"),
                    key_id: 1,
                    wrapped: blob(256),
                },
                with_blob(
                    "00 00 01 0c 04 17 80 05 61 6c 69 63 65 00 00 00 01 01 00",
                    256,
                    "",
                ),
            ),
            (
                SecureMessage::DmKeyIssued {
                    target: bytes(b"bob"),
                    key: blob(294),
                    key_id: 1,
                    wrapped: blob(256),
                },
                [
                    hex("00 00 02 32 04 17 89 03 62 6f 62 01 26"),
                    blob(294).to_vec(),
                    hex("00 00 00 01 01 00"),
                    blob(256).to_vec(),
                ]
                .concat(),
            ),
            (
                SecureMessage::NickSet {
                    name: bytes(b"alice"),
                },
                hex("00 00 00 06 04 17 90 05 61 6c 69 63 65"),
            ),
            (
                SecureMessage::RoomJoined {
                    room: bytes(b"lobby"),
                    secure: true,
                },
                hex("00 00 00 07 04 17 91 05 6c 6f 62 62 79 01"),
            ),
            (
                SecureMessage::RoomCreated {
                    room: bytes(b"lobby"),
                    secure: false,
                },
                hex("00 00 00 07 04 17 93 05 6c 6f 62 62 79 00"),
            ),
            (
                SecureMessage::RoomLeft {
                    room: bytes(b"lobby"),
                },
                hex("00 00 00 06 04 17 92 05 6c 6f 62 62 79"),
            ),
            (
                SecureMessage::NoSuchUser {
                    name: bytes(b"nobody"),
                },
                hex("00 00 00 07 04 17 94 06 6e 6f 62 6f 64 79"),
            ),
        ];
        for (message, wire) in examples {
            assert_eq!(message.encode().to_vec(), wire, "{message:?}");
        }
    }

    #[test]
    fn unknown_flag_bits_are_ignored() {
        let frame = Frame::new(opcode::ROOM_JOINED, Bytes::from_static(b"\x01r\xff"));
        assert_eq!(
            SecureMessage::parse(&frame).unwrap(),
            SecureMessage::RoomJoined {
                room: bytes(b"r"),
                secure: true
            }
        );
    }

    #[test]
    fn only_the_secure_range_minus_response_and_hello_is_secure_only() {
        let secure: Vec<u8> = (0..=255).filter(|op| is_secure_only(*op)).collect();
        assert_eq!(secure.len(), 30);
        for legacy in [0x03, 0x06, 0x09, 0x0c, 0x0f, 0x12, 0x13, 0x15, 0x9a, 0x9b] {
            assert!(!is_secure_only(legacy));
        }
    }
}
