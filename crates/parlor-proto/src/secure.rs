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
use nom::bytes::complete::take;
use nom::combinator::all_consuming;
use nom::number::complete::{be_u32, be_u64, be_u8};
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
    /// S→C: a member left; hold room sends until the next key.
    pub const ROOM_REKEYING: u8 = 0x95;
    /// C→S: a rename with a name proof.
    pub const SIGNED_NICK: u8 = 0x96;
}

// TEMPORARY (parlor-client's branch): the v2 wire as the spec words it,
// until parlor-proto's own lands and replaces this file.

/// SHA-256 of an Ed25519 public key.
pub type Fingerprint = [u8; 32];
/// An Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// SHA-256 of the signing key.
pub fn fingerprint(signing_key: &[u8; 32]) -> Fingerprint {
    use sha2::Digest;
    sha2::Sha256::digest(signing_key).into()
}

fn statement(prefix: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut out = prefix.to_vec();
    for part in parts {
        out.extend_from_slice(part);
    }
    out
}

/// `"parlor v2 key binding" || long rsa_der`.
pub fn key_binding_statement(rsa_der: &[u8]) -> Vec<u8> {
    statement(
        b"parlor v2 key binding",
        &[&(rsa_der.len() as u16).to_be_bytes(), rsa_der],
    )
}

/// `"parlor v2 name" || short name`.
pub fn name_proof_statement(name: &[u8]) -> Vec<u8> {
    statement(b"parlor v2 name", &[&[name.len() as u8], name])
}

/// `"parlor v2 register" || [32] channel_binding || short nick`.
pub fn possession_statement(channel_binding: &[u8; 32], nick: &[u8]) -> Vec<u8> {
    statement(
        b"parlor v2 register",
        &[channel_binding, &[nick.len() as u8], nick],
    )
}

/// `"parlor v2 resume" || u32 id || [16] token || [32] channel_binding`.
pub fn resume_statement(id: u32, token: &[u8; 16], channel_binding: &[u8; 32]) -> Vec<u8> {
    statement(
        b"parlor v2 resume",
        &[&id.to_be_bytes(), token, channel_binding],
    )
}

/// The OAEP label of a room key wrap.
pub fn room_key_label(
    room: &[u8],
    incarnation: u64,
    epoch: u32,
    recipient: &Fingerprint,
) -> Vec<u8> {
    statement(
        b"parlor v2 room key",
        &[
            &[room.len() as u8],
            room,
            &incarnation.to_be_bytes(),
            &epoch.to_be_bytes(),
            recipient,
        ],
    )
}

/// The OAEP label of a DM key wrap.
pub fn dm_key_label(key_id: u32, recipient: &Fingerprint, other: &Fingerprint) -> Vec<u8> {
    statement(
        b"parlor v2 dm key",
        &[&key_id.to_be_bytes(), recipient, other],
    )
}

/// An identity block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Ed25519 public key.
    pub signing_key: [u8; 32],
    /// RSA SPKI DER.
    pub rsa_der: Bytes,
    /// Key binding.
    pub key_binding: [u8; 64],
    /// Name proof.
    pub name_proof: [u8; 64],
}

impl Identity {
    pub(super) fn put(&self, dst: &mut BytesMut) {
        dst.put_slice(&self.signing_key);
        put_long(dst, &self.rsa_der);
        dst.put_slice(&self.key_binding);
        dst.put_slice(&self.name_proof);
    }
    pub(super) fn wire_len(&self) -> usize {
        32 + 2 + self.rsa_der.len() + 128
    }
}

pub(super) fn identity(input: &[u8]) -> IResult<&[u8], (&[u8], &[u8], &[u8], &[u8])> {
    (take(32usize), long_field, take(64usize), take(64usize)).parse(input)
}

pub(super) fn to_identity(
    payload: &Bytes,
    (key, der, binding, proof): (&[u8], &[u8], &[u8], &[u8]),
) -> Identity {
    Identity {
        signing_key: key.try_into().unwrap(),
        rsa_der: payload.slice_ref(der),
        key_binding: binding.try_into().unwrap(),
        name_proof: proof.try_into().unwrap(),
    }
}

/// REGISTER_KEY v2.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// Ed25519 public key.
    pub signing_key: [u8; 32],
    /// RSA SPKI DER.
    pub rsa_der: Bytes,
    /// Key binding.
    pub key_binding: [u8; 64],
    /// Name proof over the current nick.
    pub name_proof: [u8; 64],
    /// Possession proof.
    pub possession: [u8; 64],
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
        /// Empty unless a rename.
        renamed_from: Bytes,
        /// The identity block.
        identity: Identity,
    },
    /// `95`.
    RoomRekeying {
        /// The room.
        room: Bytes,
        /// Its incarnation.
        incarnation: u64,
        /// The epoch awaited.
        next_epoch: u32,
    },
    /// `84 short room, u32 epoch, long wrapped`: the room key of a new
    /// epoch, sent on every change of a secure room's membership.
    RoomKey {
        /// The room the key is for.
        room: Bytes,
        /// Its incarnation.
        incarnation: u64,
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
        /// Their fingerprint.
        peer_fingerprint: [u8; 32],
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
        /// The target's identity.
        identity: Identity,
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
        /// 0 for a plaintext room.
        incarnation: u64,
    },
    /// `93 short room, u8 flags`: confirms a JOIN that created the room,
    /// before its `9a 00`.
    RoomCreated {
        /// The room created.
        room: Bytes,
        /// Whether it is a secure room ([`ROOM_FLAG_SECURE`]): it is when a
        /// secure connection created it.
        secure: bool,
        /// 0 for a plaintext room.
        incarnation: u64,
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
            SecureMessage::RoomRekeying { .. } => opcode::ROOM_REKEYING,
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
        let mut p = BytesMut::new();
        match self {
            SecureMessage::PeerKey {
                name,
                renamed_from,
                identity,
            } => {
                put_short(&mut p, name);
                put_short(&mut p, renamed_from);
                identity.put(&mut p);
            }
            SecureMessage::RoomRekeying {
                room,
                incarnation,
                next_epoch,
            } => {
                put_short(&mut p, room);
                p.put_u64(*incarnation);
                p.put_u32(*next_epoch);
            }
            SecureMessage::RoomKey {
                room,
                incarnation,
                epoch,
                wrapped,
            } => {
                put_short(&mut p, room);
                p.put_u64(*incarnation);
                p.put_u32(*epoch);
                put_long(&mut p, wrapped);
            }
            SecureMessage::DmKey {
                peer,
                peer_fingerprint,
                key_id,
                wrapped,
            } => {
                put_short(&mut p, peer);
                p.put_slice(peer_fingerprint);
                p.put_u32(*key_id);
                put_long(&mut p, wrapped);
            }
            SecureMessage::DmKeyIssued {
                target,
                identity,
                key_id,
                wrapped,
            } => {
                put_short(&mut p, target);
                identity.put(&mut p);
                p.put_u32(*key_id);
                put_long(&mut p, wrapped);
            }
            SecureMessage::RoomJoined {
                room,
                secure,
                incarnation,
            }
            | SecureMessage::RoomCreated {
                room,
                secure,
                incarnation,
            } => {
                put_short(&mut p, room);
                p.put_u8(flags(*secure));
                p.put_u64(*incarnation);
            }
            SecureMessage::NickSet { name: field }
            | SecureMessage::RoomLeft { room: field }
            | SecureMessage::NoSuchUser { name: field } => put_short(&mut p, field),
        }
        put_header(dst, self.opcode(), p.len());
        dst.put_slice(&p);
    }

    /// Interprets a frame of the secure extension received from a server.
    /// Fields are slices of the frame's payload, so parsing copies nothing.
    pub fn parse(frame: &Frame) -> Result<SecureMessage, ParseError> {
        let payload = &frame.payload;
        let sub = |field: &[u8]| payload.slice_ref(field);
        let bad = |name| move |_| ParseError::BadLengths { name };
        let message = match frame.opcode {
            opcode::PEER_KEY => {
                let (_, (name, from, id)) = all_consuming((short_field, short_field, identity))
                    .parse(payload)
                    .map_err(bad("PEER_KEY"))?;
                SecureMessage::PeerKey {
                    name: sub(name),
                    renamed_from: sub(from),
                    identity: to_identity(payload, id),
                }
            }
            opcode::ROOM_REKEYING => {
                let (_, (room, incarnation, next_epoch)) =
                    all_consuming((short_field, be_u64, be_u32))
                        .parse(payload)
                        .map_err(bad("ROOM_REKEYING"))?;
                SecureMessage::RoomRekeying {
                    room: sub(room),
                    incarnation,
                    next_epoch,
                }
            }
            opcode::ROOM_KEY => {
                let (_, (room, incarnation, epoch, wrapped)) =
                    all_consuming((short_field, be_u64, be_u32, long_field))
                        .parse(payload)
                        .map_err(bad("ROOM_KEY"))?;
                SecureMessage::RoomKey {
                    room: sub(room),
                    incarnation,
                    epoch,
                    wrapped: sub(wrapped),
                }
            }
            opcode::DM_KEY => {
                let (_, (peer, fp, key_id, wrapped)) =
                    all_consuming((short_field, take(32usize), be_u32, long_field))
                        .parse(payload)
                        .map_err(bad("DM_KEY"))?;
                SecureMessage::DmKey {
                    peer: sub(peer),
                    peer_fingerprint: fp.try_into().unwrap(),
                    key_id,
                    wrapped: sub(wrapped),
                }
            }
            opcode::DM_KEY_ISSUED => {
                let (_, (target, id, key_id, wrapped)) =
                    all_consuming((short_field, identity, be_u32, long_field))
                        .parse(payload)
                        .map_err(bad("DM_KEY_ISSUED"))?;
                SecureMessage::DmKeyIssued {
                    target: sub(target),
                    identity: to_identity(payload, id),
                    key_id,
                    wrapped: sub(wrapped),
                }
            }
            opcode::NICK_SET => SecureMessage::NickSet {
                name: sub(only_short(payload).map_err(bad("NICK_SET"))?.1),
            },
            opcode::ROOM_JOINED => {
                let (_, (room, flags, incarnation)) = all_consuming((short_field, be_u8, be_u64))
                    .parse(payload)
                    .map_err(bad("ROOM_JOINED"))?;
                SecureMessage::RoomJoined {
                    room: sub(room),
                    secure: flags & ROOM_FLAG_SECURE != 0,
                    incarnation,
                }
            }
            opcode::ROOM_CREATED => {
                let (_, (room, flags, incarnation)) = all_consuming((short_field, be_u8, be_u64))
                    .parse(payload)
                    .map_err(bad("ROOM_CREATED"))?;
                SecureMessage::RoomCreated {
                    room: sub(room),
                    secure: flags & ROOM_FLAG_SECURE != 0,
                    incarnation,
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

/// REGISTER_KEY's payload.
pub(super) fn parse_register_key(payload: &Bytes) -> Result<Registration, ParseError> {
    let (_, (key, der, binding, proof, possession)) = all_consuming((
        take(32usize),
        long_field,
        take(64usize),
        take(64usize),
        take(64usize),
    ))
    .parse(payload)
    .map_err(
        |_: nom::Err<nom::error::Error<&[u8]>>| ParseError::BadLengths {
            name: "REGISTER_KEY",
        },
    )?;
    Ok(Registration {
        signing_key: key.try_into().unwrap(),
        rsa_der: payload.slice_ref(der),
        key_binding: binding.try_into().unwrap(),
        name_proof: proof.try_into().unwrap(),
        possession: possession.try_into().unwrap(),
    })
}

impl Registration {
    pub(super) fn put(&self, dst: &mut BytesMut) {
        dst.put_slice(&self.signing_key);
        put_long(dst, &self.rsa_der);
        dst.put_slice(&self.key_binding);
        dst.put_slice(&self.name_proof);
        dst.put_slice(&self.possession);
    }
}

/// DM_KEY_REQUEST's payload: `short target`.
pub(super) fn parse_dm_key_request(payload: &Bytes) -> Result<Bytes, ParseError> {
    let (_, target) = only_short(payload).map_err(|_| ParseError::BadLengths {
        name: "DM_KEY_REQUEST",
    })?;
    Ok(payload.slice_ref(target))
}
