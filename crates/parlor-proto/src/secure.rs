//! Typed messages of the secure extension, version 2 (PROTOCOL.md §12), parsed
//! with nom and encoded straight into shareable [`Bytes`]; and the bytes
//! every party signs or labels with, written once here so that the client
//! that signs and the server that checks build exactly the same statement.
//!
//! The extension keeps the legacy framing and field encodings: `short` is a
//! `u8` length and that many bytes, `long` a big-endian `u16` length and that
//! many bytes, `[n]` exactly n bytes, and integers are big-endian. As in
//! [`super::legacy`], inner lengths must add up exactly to the frame length.
//!
//! # Identities
//!
//! A user is an **Ed25519 signing key**; its SHA-256 is the user's
//! [`fingerprint`]. Beside it the user has an RSA key that only unwraps the
//! keys the server issues. What the user registers and peers receive is an
//! [`Identity`] block: both public keys, the **key binding** (the signing key
//! signed the RSA key, [`key_binding_statement`]) and the **name proof** (it
//! chose its current name, [`name_proof_statement`]). At REGISTER_KEY the
//! client also proves, for this connection only, that it holds the signing
//! key ([`possession_statement`], over the TLS channel binding).
//!
//! # Requests and frames
//!
//! Three client requests ([`ClientMessage::RegisterKey`],
//! [`ClientMessage::SignedNick`] and [`ClientMessage::DmKeyRequest`]) are
//! variants of the legacy [`ClientMessage`], so the codec and the hub handle
//! them like any other request. Everything the server sends only to secure
//! connections is a [`SecureMessage`], reachable from
//! [`ServerMessage::parse`] as [`ServerMessage::Secure`], so a client decodes
//! every frame it receives with one call.
//!
//! Opcode `81` means REGISTER_KEY from a client and PEER_KEY from the
//! server, as in the original design notes: the direction tells them apart.
//!
//! [`ClientMessage`]: super::ClientMessage
//! [`ClientMessage::RegisterKey`]: super::ClientMessage::RegisterKey
//! [`ClientMessage::SignedNick`]: super::ClientMessage::SignedNick
//! [`ClientMessage::DmKeyRequest`]: super::ClientMessage::DmKeyRequest
//! [`ServerMessage::parse`]: super::ServerMessage::parse
//! [`ServerMessage::Secure`]: super::ServerMessage::Secure

use bytes::{BufMut, Bytes, BytesMut};
use nom::bytes::complete::take;
use nom::combinator::all_consuming;
use nom::number::complete::{be_u32, be_u64, be_u8};
use nom::{IResult, Parser};
use sha2::{Digest, Sha256};

use super::frame::{put_header, Frame, HEADER_LEN};
use super::legacy::{long_field, put_long, put_short, short_field, ParseError};
use super::transfer::TOKEN_LEN;

/// Opcodes of the secure extension.
pub mod opcode {
    /// S→C: a DM key, wrapped for the target of a DM_KEY_REQUEST.
    pub const DM_KEY: u8 = 0x80;
    /// C→S: the connection's identity and its proofs; makes the connection
    /// secure.
    pub const REGISTER_KEY: u8 = 0x81;
    /// S→C: another user's name and identity.
    pub const PEER_KEY: u8 = 0x81;
    /// C→S: asks for a DM key shared with another secure user.
    pub const DM_KEY_REQUEST: u8 = 0x82;
    /// S→C: the room key of one epoch, wrapped for this member.
    pub const ROOM_KEY: u8 = 0x84;
    /// S→C: the requester's half of a DM key.
    pub const DM_KEY_ISSUED: u8 = 0x89;
    /// S→C: confirms a NICK or SIGNED_NICK.
    pub const NICK_SET: u8 = 0x90;
    /// S→C: confirms a JOIN that entered an existing room.
    pub const ROOM_JOINED: u8 = 0x91;
    /// S→C: confirms a LEAVE that left a room.
    pub const ROOM_LEFT: u8 = 0x92;
    /// S→C: confirms a JOIN that created the room.
    pub const ROOM_CREATED: u8 = 0x93;
    /// S→C: a DM or DM_KEY_REQUEST named nobody connected.
    pub const NO_SUCH_USER: u8 = 0x94;
    /// S→C: a member left a secure room; hold room sends until the key of
    /// the epoch named arrives.
    pub const ROOM_REKEYING: u8 = 0x95;
    /// C→S: a secure connection's rename, with a name proof for the new
    /// name.
    pub const SIGNED_NICK: u8 = 0x96;
}

/// Bytes of an Ed25519 public key.
pub const SIGNING_KEY_LEN: usize = 32;

/// Bytes of an Ed25519 signature: every proof and signature of the
/// extension.
pub const SIGNATURE_LEN: usize = 64;

/// Bytes of a [`Fingerprint`].
pub const FINGERPRINT_LEN: usize = 32;

/// Who a user is: the SHA-256 of its Ed25519 public key ([`fingerprint`]).
/// Names change and are recycled; the fingerprint is what peers pin.
pub type Fingerprint = [u8; FINGERPRINT_LEN];

/// Modulus sizes a registered RSA key may have, in bits. Below 2048 bits RSA
/// is too weak; above 4096 every wrap gets slow for no gain.
pub const KEY_BITS: std::ops::RangeInclusive<usize> = 2048..=4096;

/// The one public exponent a registered RSA key may have. Small exponents
/// such as 3 invite the attacks that come with them; one fixed value leaves
/// nothing to choose.
pub const RSA_PUBLIC_EXPONENT: u32 = 65_537;

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

/// The channel binding of a plain TCP connection that the server lets speak
/// the secure extension (`allow_secure_on_plain`, for tests and
/// benchmarks): 32 zero bytes. Proofs over it bind to no session, so anyone
/// who relays such a connection can replay them.
pub const PLAIN_CHANNEL_BINDING: [u8; CHANNEL_BINDING_LEN] = [0; CHANNEL_BINDING_LEN];

/// What each signed statement and OAEP label starts with: a different text
/// for each, so that a signature or a wrap made for one purpose is never
/// good for another.
mod context {
    pub(super) const KEY_BINDING: &[u8] = b"parlor v2 key binding";
    pub(super) const NAME_PROOF: &[u8] = b"parlor v2 name";
    pub(super) const POSSESSION: &[u8] = b"parlor v2 register";
    pub(super) const RESUME: &[u8] = b"parlor v2 resume";
    pub(super) const ROOM_KEY: &[u8] = b"parlor v2 room key";
    pub(super) const DM_KEY: &[u8] = b"parlor v2 dm key";
}

/// The fingerprint of an Ed25519 public key: its SHA-256.
pub fn fingerprint(signing_key: &[u8; SIGNING_KEY_LEN]) -> Fingerprint {
    Sha256::digest(signing_key).into()
}

/// The bytes of `context` followed by `fields`, as the wire encodes them.
fn statement(context: &[u8], fields: &[Field<'_>]) -> Vec<u8> {
    let len = context.len() + fields.iter().map(Field::wire_len).sum::<usize>();
    let mut dst = BytesMut::with_capacity(len);
    dst.put_slice(context);
    for field in fields {
        field.put(&mut dst);
    }
    dst.into()
}

/// What the **key binding** signs: `"parlor v2 key binding" || long
/// rsa_der`. It ties the RSA key to the signing key, so nobody can pair
/// someone else's fingerprint with an RSA key of their own and receive the
/// keys meant for that person.
///
/// # Panics
/// If `rsa_der` is over 65,535 bytes (no such key fits a frame).
pub fn key_binding_statement(rsa_der: &[u8]) -> Vec<u8> {
    statement(context::KEY_BINDING, &[Field::Long(rsa_der)])
}

/// What a **name proof** signs: `"parlor v2 name" || short name`. It says
/// "the holder of this key chose this name"; peers check it on every
/// identity block they receive.
///
/// # Panics
/// If `name` is over 255 bytes.
pub fn name_proof_statement(name: &[u8]) -> Vec<u8> {
    statement(context::NAME_PROOF, &[Field::Short(name)])
}

/// What the **possession proof** of REGISTER_KEY signs: `"parlor v2
/// register" || [32] channel_binding || short nick`, with the connection's
/// channel binding (or [`PLAIN_CHANNEL_BINDING`]) and its current name. It
/// is good on this connection only, so a registration seen elsewhere cannot
/// be replayed; a client that holds only someone else's public key cannot
/// make it.
///
/// # Panics
/// If `nick` is over 255 bytes.
pub fn possession_statement(channel_binding: &[u8; CHANNEL_BINDING_LEN], nick: &[u8]) -> Vec<u8> {
    statement(
        context::POSSESSION,
        &[Field::Fixed(channel_binding), Field::Short(nick)],
    )
}

/// What the **resume proof** of FILE_RESUME signs: `"parlor v2 resume" ||
/// u32 transfer_id || [16] token || [32] channel_binding`, with the resuming
/// connection's channel binding. The token alone would be a bearer secret;
/// with the proof only the recipient's own key, on this connection, can
/// take its place in the transfer.
pub fn resume_statement(
    transfer_id: u32,
    token: &[u8; TOKEN_LEN],
    channel_binding: &[u8; CHANNEL_BINDING_LEN],
) -> Vec<u8> {
    statement(
        context::RESUME,
        &[
            Field::U32(transfer_id),
            Field::Fixed(token),
            Field::Fixed(channel_binding),
        ],
    )
}

/// The RSA-OAEP-SHA256 label of a room key wrapped for one member:
/// `"parlor v2 room key" || short room || u64 incarnation || u32 epoch ||
/// [32] recipient_fingerprint`. A wrap opens only as the key of that room,
/// incarnation and epoch, for that member: it cannot be moved to another.
///
/// # Panics
/// If `room` is over 255 bytes.
pub fn room_key_label(
    room: &[u8],
    incarnation: u64,
    epoch: u32,
    recipient: &Fingerprint,
) -> Vec<u8> {
    statement(
        context::ROOM_KEY,
        &[
            Field::Short(room),
            Field::U64(incarnation),
            Field::U32(epoch),
            Field::Fixed(recipient),
        ],
    )
}

/// The RSA-OAEP-SHA256 label of a DM key wrapped for one of its two users:
/// `"parlor v2 dm key" || u32 key_id || [32] recipient_fingerprint || [32]
/// other_party_fingerprint`. The requester's wrap and the target's differ
/// (the fingerprints swap places), and neither opens under another key id.
pub fn dm_key_label(key_id: u32, recipient: &Fingerprint, other_party: &Fingerprint) -> Vec<u8> {
    statement(
        context::DM_KEY,
        &[
            Field::U32(key_id),
            Field::Fixed(recipient),
            Field::Fixed(other_party),
        ],
    )
}

/// An **identity block**: `[32] signing_key, long rsa_der, [64] key_binding,
/// [64] name_proof`, exactly as its owner registered it (the name proof is
/// refreshed by each SIGNED_NICK). REGISTER_KEY sends one; PEER_KEY,
/// DM_KEY_ISSUED and a forwarded FILE_OFFER carry one.
///
/// Parsing checks lengths only: whether the keys are usable and the
/// signatures hold is for the server (at registration) and for each peer
/// (on receipt) to check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The Ed25519 public key: who this is.
    pub signing_key: [u8; SIGNING_KEY_LEN],
    /// The RSA public key as DER SubjectPublicKeyInfo, which unwraps the
    /// keys issued to this user.
    pub rsa_der: Bytes,
    /// The signing key's signature over [`key_binding_statement`] of
    /// `rsa_der`.
    pub key_binding: [u8; SIGNATURE_LEN],
    /// The signing key's signature over [`name_proof_statement`] of the
    /// name the block is announced under.
    pub name_proof: [u8; SIGNATURE_LEN],
}

impl Identity {
    /// The owner's [`fingerprint`].
    pub fn fingerprint(&self) -> Fingerprint {
        fingerprint(&self.signing_key)
    }

    pub(crate) fn wire_len(&self) -> usize {
        SIGNING_KEY_LEN + 2 + self.rsa_der.len() + 2 * SIGNATURE_LEN
    }

    pub(crate) fn put(&self, dst: &mut BytesMut) {
        dst.put_slice(&self.signing_key);
        put_long(dst, &self.rsa_der);
        dst.put_slice(&self.key_binding);
        dst.put_slice(&self.name_proof);
    }
}

/// An [`Identity`] as parsed: `rsa_der` still a slice of the payload.
pub(crate) struct IdentityFields<'a> {
    signing_key: [u8; SIGNING_KEY_LEN],
    rsa_der: &'a [u8],
    key_binding: [u8; SIGNATURE_LEN],
    name_proof: [u8; SIGNATURE_LEN],
}

impl IdentityFields<'_> {
    /// The identity, its DER a slice of `payload` (which the fields were
    /// parsed from), so nothing is copied.
    pub(crate) fn to_identity(&self, payload: &Bytes) -> Identity {
        Identity {
            signing_key: self.signing_key,
            rsa_der: payload.slice_ref(self.rsa_der),
            key_binding: self.key_binding,
            name_proof: self.name_proof,
        }
    }
}

/// Parses an identity block.
pub(crate) fn identity_block(input: &[u8]) -> IResult<&[u8], IdentityFields<'_>> {
    let (input, (signing_key, rsa_der, key_binding, name_proof)) =
        (array, long_field, array, array).parse(input)?;
    let fields = IdentityFields {
        signing_key,
        rsa_der,
        key_binding,
        name_proof,
    };
    Ok((input, fields))
}

/// Parses exactly `N` bytes.
pub(crate) fn array<const N: usize>(input: &[u8]) -> IResult<&[u8], [u8; N]> {
    let (input, bytes) = take(N).parse(input)?;
    Ok((input, bytes.try_into().expect("took N bytes")))
}

/// REGISTER_KEY (`81`): `[32] signing_key, long rsa_der, [64] key_binding,
/// [64] name_proof, [64] possession`. The first four fields are the
/// [`Identity`] block peers will receive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// The Ed25519 public key.
    pub signing_key: [u8; SIGNING_KEY_LEN],
    /// The RSA public key as DER SubjectPublicKeyInfo, kept as sent: peers
    /// receive exactly these bytes.
    pub rsa_der: Bytes,
    /// Over [`key_binding_statement`] of `rsa_der`.
    pub key_binding: [u8; SIGNATURE_LEN],
    /// Over [`name_proof_statement`] of the connection's current name.
    pub name_proof: [u8; SIGNATURE_LEN],
    /// Over [`possession_statement`] of the connection's channel binding and
    /// current name.
    pub possession: [u8; SIGNATURE_LEN],
}

impl Registration {
    /// The identity block this registration announces.
    pub fn identity(&self) -> Identity {
        Identity {
            signing_key: self.signing_key,
            rsa_der: self.rsa_der.clone(),
            key_binding: self.key_binding,
            name_proof: self.name_proof,
        }
    }

    pub(crate) fn put(&self, dst: &mut BytesMut) {
        dst.put_slice(&self.signing_key);
        put_long(dst, &self.rsa_der);
        dst.put_slice(&self.key_binding);
        dst.put_slice(&self.name_proof);
        dst.put_slice(&self.possession);
    }
}

/// A frame that the server sends only to secure connections.
///
/// `wrapped` fields hold RSA-OAEP-SHA256 ciphertext of a 32-byte key, as long
/// as the recipient's modulus, made with the label of [`room_key_label`] or
/// [`dm_key_label`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecureMessage {
    /// `81 short name, short renamed_from, identity`: another user's
    /// identity, so that the client can check what that user signs and
    /// knows who a DM key is shared with.
    PeerKey {
        /// The user's current name; `identity.name_proof` is over it.
        name: Bytes,
        /// The user's previous name when this notice announces a rename;
        /// empty otherwise. A client believes the rename only if the
        /// fingerprint is the one it knew under that name.
        renamed_from: Bytes,
        /// The user's identity block, as registered.
        identity: Identity,
    },
    /// `84 short room, u64 incarnation, u32 epoch, long wrapped`: the room
    /// key of a new epoch.
    RoomKey {
        /// The room the key is for.
        room: Bytes,
        /// Which room of that name: drawn at random when the room was
        /// created, never 0.
        incarnation: u64,
        /// Goes up by exactly 1 with each rotation a continuing member
        /// receives; envelopes name the epoch whose key sealed them.
        epoch: u32,
        /// The room key, wrapped for this member under [`room_key_label`].
        wrapped: Bytes,
    },
    /// `95 short room, u64 incarnation, u32 next_epoch`: a member left; a
    /// client holds its room sends until it holds the key of `next_epoch`
    /// or a later one, so nothing more is sealed under a key the departed
    /// member holds.
    RoomRekeying {
        /// The room a member left.
        room: Bytes,
        /// Its incarnation.
        incarnation: u64,
        /// The epoch whose key is on its way.
        next_epoch: u32,
    },
    /// `80 short peer, [32] peer_fingerprint, u32 key_id, long wrapped`:
    /// the target's half of a DM key that `peer` asked for.
    DmKey {
        /// The user who asked for the key.
        peer: Bytes,
        /// Its fingerprint, which the key's label names: the key is shared
        /// with that identity, whatever it is called.
        peer_fingerprint: Fingerprint,
        /// The key's server-wide id, never 0; DM envelopes name it.
        key_id: u32,
        /// The DM key, wrapped for this user under [`dm_key_label`].
        wrapped: Bytes,
    },
    /// `89 short target, identity, u32 key_id, long wrapped`: the
    /// requester's half of a DM key, before its `9a 00`.
    DmKeyIssued {
        /// The target's name when the key was issued (a rename while the
        /// key was wrapped shows here).
        target: Bytes,
        /// The target's identity block.
        identity: Identity,
        /// The key's server-wide id, never 0; the same in the target's `80`.
        key_id: u32,
        /// The DM key, wrapped for the requester under [`dm_key_label`].
        wrapped: Bytes,
    },
    /// `90 short name`: confirms a NICK or SIGNED_NICK, before its `9a 00`.
    NickSet {
        /// The name the connection now has.
        name: Bytes,
    },
    /// `91 short room, u8 flags, u64 incarnation`: confirms a JOIN that
    /// entered an existing room, before the members' `81`s and the `9a 00`.
    RoomJoined {
        /// The room entered.
        room: Bytes,
        /// Whether it is a secure room ([`ROOM_FLAG_SECURE`]).
        secure: bool,
        /// The room's incarnation; 0 for a plaintext room.
        incarnation: u64,
    },
    /// `93 short room, u8 flags, u64 incarnation`: confirms a JOIN that
    /// created the room, before its `9a 00`.
    RoomCreated {
        /// The room created.
        room: Bytes,
        /// Whether it is a secure room ([`ROOM_FLAG_SECURE`]): it is when a
        /// secure connection created it.
        secure: bool,
        /// The room's incarnation; 0 for a plaintext room.
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

/// One field of a payload, for [`put_frame`] and [`statement`].
enum Field<'a> {
    U8(u8),
    U32(u32),
    U64(u64),
    Short(&'a [u8]),
    Long(&'a [u8]),
    /// Bytes of a length both ends know: no length prefix.
    Fixed(&'a [u8]),
    Identity(&'a Identity),
}

impl Field<'_> {
    fn wire_len(&self) -> usize {
        match self {
            Field::U8(_) => 1,
            Field::U32(_) => 4,
            Field::U64(_) => 8,
            Field::Short(bytes) => 1 + bytes.len(),
            Field::Long(bytes) => 2 + bytes.len(),
            Field::Fixed(bytes) => bytes.len(),
            Field::Identity(identity) => identity.wire_len(),
        }
    }

    fn put(&self, dst: &mut BytesMut) {
        match self {
            Field::U8(value) => dst.put_u8(*value),
            Field::U32(value) => dst.put_u32(*value),
            Field::U64(value) => dst.put_u64(*value),
            Field::Short(bytes) => put_short(dst, bytes),
            Field::Long(bytes) => put_long(dst, bytes),
            Field::Fixed(bytes) => dst.put_slice(bytes),
            Field::Identity(identity) => identity.put(dst),
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
            SecureMessage::RoomRekeying { .. } => opcode::ROOM_REKEYING,
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
        use Field::{Fixed, Identity, Long, Short, U32, U64, U8};
        let opcode = self.opcode();
        match self {
            SecureMessage::PeerKey {
                name,
                renamed_from,
                identity,
            } => put_frame(
                dst,
                opcode,
                &[Short(name), Short(renamed_from), Identity(identity)],
            ),
            SecureMessage::RoomKey {
                room,
                incarnation,
                epoch,
                wrapped,
            } => put_frame(
                dst,
                opcode,
                &[Short(room), U64(*incarnation), U32(*epoch), Long(wrapped)],
            ),
            SecureMessage::RoomRekeying {
                room,
                incarnation,
                next_epoch,
            } => put_frame(
                dst,
                opcode,
                &[Short(room), U64(*incarnation), U32(*next_epoch)],
            ),
            SecureMessage::DmKey {
                peer,
                peer_fingerprint,
                key_id,
                wrapped,
            } => put_frame(
                dst,
                opcode,
                &[
                    Short(peer),
                    Fixed(peer_fingerprint),
                    U32(*key_id),
                    Long(wrapped),
                ],
            ),
            SecureMessage::DmKeyIssued {
                target,
                identity,
                key_id,
                wrapped,
            } => put_frame(
                dst,
                opcode,
                &[
                    Short(target),
                    Identity(identity),
                    U32(*key_id),
                    Long(wrapped),
                ],
            ),
            SecureMessage::RoomJoined {
                room,
                secure,
                incarnation,
            }
            | SecureMessage::RoomCreated {
                room,
                secure,
                incarnation,
            } => put_frame(
                dst,
                opcode,
                &[Short(room), U8(flags(*secure)), U64(*incarnation)],
            ),
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
                let (_, (name, renamed_from, identity)) =
                    all_consuming((short_field, short_field, identity_block))
                        .parse(payload)
                        .map_err(bad("PEER_KEY"))?;
                SecureMessage::PeerKey {
                    name: sub(name),
                    renamed_from: sub(renamed_from),
                    identity: identity.to_identity(payload),
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
            opcode::DM_KEY => {
                let (_, (peer, peer_fingerprint, key_id, wrapped)) =
                    all_consuming((short_field, array, be_u32, long_field))
                        .parse(payload)
                        .map_err(bad("DM_KEY"))?;
                SecureMessage::DmKey {
                    peer: sub(peer),
                    peer_fingerprint,
                    key_id,
                    wrapped: sub(wrapped),
                }
            }
            opcode::DM_KEY_ISSUED => {
                let (_, (target, identity, key_id, wrapped)) =
                    all_consuming((short_field, identity_block, be_u32, long_field))
                        .parse(payload)
                        .map_err(bad("DM_KEY_ISSUED"))?;
                SecureMessage::DmKeyIssued {
                    target: sub(target),
                    identity: identity.to_identity(payload),
                    key_id,
                    wrapped: sub(wrapped),
                }
            }
            opcode::NICK_SET => SecureMessage::NickSet {
                name: sub(only_short(payload).map_err(bad("NICK_SET"))?.1),
            },
            opcode::ROOM_JOINED => {
                let (_, (room, secure, incarnation)) =
                    room_confirmation(payload).map_err(bad("ROOM_JOINED"))?;
                SecureMessage::RoomJoined {
                    room: sub(room),
                    secure,
                    incarnation,
                }
            }
            opcode::ROOM_CREATED => {
                let (_, (room, secure, incarnation)) =
                    room_confirmation(payload).map_err(bad("ROOM_CREATED"))?;
                SecureMessage::RoomCreated {
                    room: sub(room),
                    secure,
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

/// ROOM_JOINED's and ROOM_CREATED's `short room, u8 flags, u64
/// incarnation`, the flags read as the secure bit alone.
fn room_confirmation(input: &[u8]) -> IResult<&[u8], (&[u8], bool, u64)> {
    let (rest, (room, flags, incarnation)) =
        all_consuming((short_field, be_u8, be_u64)).parse(input)?;
    Ok((rest, (room, flags & ROOM_FLAG_SECURE != 0, incarnation)))
}

/// REGISTER_KEY's payload.
pub(super) fn parse_register_key(payload: &Bytes) -> Result<Registration, ParseError> {
    let bad = |_| ParseError::BadLengths {
        name: "REGISTER_KEY",
    };
    let (_, (identity, possession)) = all_consuming((identity_block, array))
        .parse(payload)
        .map_err(bad)?;
    let identity = identity.to_identity(payload);
    Ok(Registration {
        signing_key: identity.signing_key,
        rsa_der: identity.rsa_der,
        key_binding: identity.key_binding,
        name_proof: identity.name_proof,
        possession,
    })
}

/// SIGNED_NICK's payload: `short name, [64] name_proof`.
pub(super) fn parse_signed_nick(
    payload: &Bytes,
) -> Result<(Bytes, [u8; SIGNATURE_LEN]), ParseError> {
    let (_, (name, proof)) = all_consuming((short_field, array)).parse(payload).map_err(
        |_: nom::Err<nom::error::Error<&[u8]>>| ParseError::BadLengths {
            name: "SIGNED_NICK",
        },
    )?;
    Ok((payload.slice_ref(name), proof))
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

    fn hex(text: &str) -> Vec<u8> {
        text.split_whitespace()
            .map(|byte| u8::from_str_radix(byte, 16).unwrap())
            .collect()
    }

    /// An identity block whose every byte says which field it is: the
    /// signing key `0x5c`, the binding `0xb1`, the name proof `0xa9`.
    fn identity(der_len: usize) -> Identity {
        Identity {
            signing_key: [0x5c; SIGNING_KEY_LEN],
            rsa_der: blob(der_len),
            key_binding: [0xb1; SIGNATURE_LEN],
            name_proof: [0xa9; SIGNATURE_LEN],
        }
    }

    /// The identity block's bytes on the wire.
    fn identity_wire(der_len: usize) -> Vec<u8> {
        let len = u16::try_from(der_len).unwrap().to_be_bytes();
        [
            vec![0x5c; 32],
            len.to_vec(),
            blob(der_len).to_vec(),
            vec![0xb1; 64],
            vec![0xa9; 64],
        ]
        .concat()
    }

    const INCARNATION: u64 = 0x0102_0304_0506_0708;

    fn every_message() -> Vec<SecureMessage> {
        vec![
            SecureMessage::PeerKey {
                name: bytes(b"bob"),
                renamed_from: Bytes::new(),
                identity: identity(294),
            },
            SecureMessage::PeerKey {
                name: bytes(b"robert"),
                renamed_from: bytes(b"bob"),
                identity: identity(550),
            },
            SecureMessage::RoomKey {
                room: bytes(b"lobby"),
                incarnation: INCARNATION,
                epoch: 7,
                wrapped: blob(256),
            },
            SecureMessage::RoomRekeying {
                room: bytes(b"lobby"),
                incarnation: u64::MAX,
                next_epoch: 8,
            },
            SecureMessage::DmKey {
                peer: bytes(b"alice"),
                peer_fingerprint: [0xf1; FINGERPRINT_LEN],
                key_id: 1,
                wrapped: blob(384),
            },
            SecureMessage::DmKeyIssued {
                target: bytes(b"bob"),
                identity: identity(422),
                key_id: u32::MAX,
                wrapped: blob(512),
            },
            SecureMessage::NickSet {
                name: bytes(b"alice"),
            },
            SecureMessage::RoomJoined {
                room: bytes(b"lobby"),
                secure: true,
                incarnation: INCARNATION,
            },
            SecureMessage::RoomCreated {
                room: bytes(b"open"),
                secure: false,
                incarnation: 0,
            },
            SecureMessage::RoomLeft {
                room: bytes(b"lobby"),
            },
            SecureMessage::NoSuchUser {
                name: bytes(b"nobody"),
            },
        ]
    }

    fn registration() -> Registration {
        Registration {
            signing_key: [0x5c; SIGNING_KEY_LEN],
            rsa_der: blob(294),
            key_binding: [0xb1; SIGNATURE_LEN],
            name_proof: [0xa9; SIGNATURE_LEN],
            possession: [0x90; SIGNATURE_LEN],
        }
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
        for client_only in [0x9a, opcode::SIGNED_NICK, opcode::DM_KEY_REQUEST] {
            assert_eq!(
                SecureMessage::parse(&Frame::new(client_only, Bytes::from_static(b"\x00"))),
                Err(ParseError::UnknownOpcode(client_only))
            );
        }
    }

    #[test]
    fn client_requests_round_trip_and_refuse_bad_lengths() {
        let requests = [
            ClientMessage::RegisterKey(registration()),
            ClientMessage::SignedNick {
                name: bytes(b"robert"),
                name_proof: [0xa9; SIGNATURE_LEN],
            },
            ClientMessage::DmKeyRequest {
                target: bytes(b"bob"),
            },
        ];
        for request in requests {
            let frame = request.to_frame();
            assert_eq!(ClientMessage::parse(&frame).unwrap(), request);
            assert!(request.expects_response());
            let mut long = frame.payload.to_vec();
            long.push(0);
            let cut = frame.payload.slice(..frame.payload.len() - 1);
            for bad in [
                Frame::new(frame.opcode, long),
                Frame::new(frame.opcode, cut),
            ] {
                assert!(
                    matches!(
                        ClientMessage::parse(&bad),
                        Err(ParseError::BadLengths { .. })
                    ),
                    "{bad:?}"
                );
            }
        }
        let bad = [
            (opcode::REGISTER_KEY, &b""[..], "REGISTER_KEY"),
            (opcode::REGISTER_KEY, &[0; 32 + 2 + 191][..], "REGISTER_KEY"),
            (opcode::SIGNED_NICK, b"", "SIGNED_NICK"),
            (opcode::SIGNED_NICK, b"\x03bob", "SIGNED_NICK"),
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
        for server_only in [0x80, 0x84, 0x89, 0x90, 0x91, 0x92, 0x93, 0x94, 0x95] {
            assert_eq!(
                ClientMessage::parse(&Frame::new(server_only, Bytes::new())),
                Err(ParseError::UnknownOpcode(server_only))
            );
        }
    }

    #[test]
    fn a_registration_announces_its_first_four_fields_as_the_identity() {
        let registration = registration();
        assert_eq!(registration.identity(), identity(294));
        assert_eq!(
            registration.identity().fingerprint(),
            fingerprint(&[0x5c; 32])
        );
    }

    /// Every frame of the extension, byte for byte.
    #[test]
    fn encodes_the_documented_examples() {
        let with = |head: &str, middle: Vec<u8>, tail: &str| -> Vec<u8> {
            [hex(head), middle, hex(tail)].concat()
        };
        let register = ClientMessage::RegisterKey(registration());
        assert_eq!(
            register.to_frame().to_bytes().to_vec(),
            with(
                "00 00 02 08 04 17 81",
                [identity_wire(294), vec![0x90; 64]].concat(),
                ""
            )
        );
        let signed_nick = ClientMessage::SignedNick {
            name: bytes(b"bob"),
            name_proof: [0xa9; SIGNATURE_LEN],
        };
        assert_eq!(
            signed_nick.to_frame().to_bytes().to_vec(),
            with("00 00 00 44 04 17 96 03 62 6f 62", vec![0xa9; 64], "")
        );
        let request = ClientMessage::DmKeyRequest {
            target: bytes(b"bob"),
        };
        assert_eq!(
            request.to_frame().to_bytes().to_vec(),
            hex("00 00 00 04 04 17 82 03 62 6f 62")
        );
        let examples: [(SecureMessage, Vec<u8>); 10] = [
            (
                SecureMessage::PeerKey {
                    name: bytes(b"bob"),
                    renamed_from: Bytes::new(),
                    identity: identity(294),
                },
                with(
                    "00 00 01 cd 04 17 81 03 62 6f 62 00",
                    identity_wire(294),
                    "",
                ),
            ),
            (
                SecureMessage::PeerKey {
                    name: bytes(b"rob"),
                    renamed_from: bytes(b"bob"),
                    identity: identity(294),
                },
                with(
                    "00 00 01 d0 04 17 81 03 72 6f 62 03 62 6f 62",
                    identity_wire(294),
                    "",
                ),
            ),
            (
                SecureMessage::RoomKey {
                    room: bytes(b"lobby"),
                    incarnation: INCARNATION,
                    epoch: 2,
                    wrapped: blob(256),
                },
                with(
                    "00 00 01 14 04 17 84 05 6c 6f 62 62 79 01 02 03 04 05 06 07 08 \
                     00 00 00 02 01 00",
                    blob(256).to_vec(),
                    "",
                ),
            ),
            (
                SecureMessage::RoomRekeying {
                    room: bytes(b"lobby"),
                    incarnation: INCARNATION,
                    next_epoch: 3,
                },
                hex("00 00 00 12 04 17 95 05 6c 6f 62 62 79 01 02 03 04 05 06 07 08 00 00 00 03"),
            ),
            (
                SecureMessage::DmKey {
                    peer: bytes(b"alice"),
                    peer_fingerprint: [0xf1; FINGERPRINT_LEN],
                    key_id: 1,
                    wrapped: blob(256),
                },
                with(
                    "00 00 01 2c 04 17 80 05 61 6c 69 63 65",
                    [vec![0xf1; 32], hex("00 00 00 01 01 00"), blob(256).to_vec()].concat(),
                    "",
                ),
            ),
            (
                SecureMessage::DmKeyIssued {
                    target: bytes(b"bob"),
                    identity: identity(294),
                    key_id: 1,
                    wrapped: blob(256),
                },
                with(
                    "00 00 02 d2 04 17 89 03 62 6f 62",
                    [
                        identity_wire(294),
                        hex("00 00 00 01 01 00"),
                        blob(256).to_vec(),
                    ]
                    .concat(),
                    "",
                ),
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
                    incarnation: INCARNATION,
                },
                hex("00 00 00 0f 04 17 91 05 6c 6f 62 62 79 01 01 02 03 04 05 06 07 08"),
            ),
            (
                SecureMessage::RoomCreated {
                    room: bytes(b"lobby"),
                    secure: false,
                    incarnation: 0,
                },
                hex("00 00 00 0f 04 17 93 05 6c 6f 62 62 79 00 00 00 00 00 00 00 00 00"),
            ),
            (
                SecureMessage::RoomLeft {
                    room: bytes(b"lobby"),
                },
                hex("00 00 00 06 04 17 92 05 6c 6f 62 62 79"),
            ),
        ];
        for (message, wire) in examples {
            assert_eq!(message.encode().to_vec(), wire, "{message:?}");
        }
        assert_eq!(
            SecureMessage::NoSuchUser {
                name: bytes(b"nobody"),
            }
            .encode()
            .to_vec(),
            hex("00 00 00 07 04 17 94 06 6e 6f 62 6f 64 79")
        );
    }

    /// The signed statements and OAEP labels, byte for byte.
    #[test]
    fn statements_and_labels_are_exactly_the_documented_bytes() {
        let text = |prefix: &str, rest: Vec<u8>| [prefix.as_bytes().to_vec(), rest].concat();
        assert_eq!(
            key_binding_statement(&hex("30 82 01 22")),
            text("parlor v2 key binding", hex("00 04 30 82 01 22"))
        );
        assert_eq!(
            name_proof_statement(b"alice"),
            text("parlor v2 name", hex("05 61 6c 69 63 65"))
        );
        assert_eq!(
            possession_statement(&[7; 32], b"bob"),
            text(
                "parlor v2 register",
                [vec![7; 32], hex("03 62 6f 62")].concat()
            )
        );
        assert_eq!(
            possession_statement(&PLAIN_CHANNEL_BINDING, b""),
            text("parlor v2 register", [vec![0; 32], vec![0]].concat())
        );
        assert_eq!(
            resume_statement(0x0102_0304, &[5; 16], &[7; 32]),
            text(
                "parlor v2 resume",
                [hex("01 02 03 04"), vec![5; 16], vec![7; 32]].concat()
            )
        );
        assert_eq!(
            room_key_label(b"vault", INCARNATION, 3, &[9; 32]),
            text(
                "parlor v2 room key",
                [
                    hex("05 76 61 75 6c 74 01 02 03 04 05 06 07 08 00 00 00 03"),
                    vec![9; 32]
                ]
                .concat()
            )
        );
        assert_eq!(
            dm_key_label(1, &[0xaa; 32], &[0xbb; 32]),
            text(
                "parlor v2 dm key",
                [hex("00 00 00 01"), vec![0xaa; 32], vec![0xbb; 32]].concat()
            )
        );
    }

    #[test]
    fn a_fingerprint_is_the_sha256_of_the_signing_key() {
        assert_eq!(
            fingerprint(&[0; 32]).to_vec(),
            hex("66 68 7a ad f8 62 bd 77 6c 8f c1 8b 8e 9f 8e 20 \
                 08 97 14 85 6e e2 33 b3 90 2a 59 1d 0d 5f 29 25")
        );
    }

    /// A wrap made for one room, incarnation, epoch or member has a label
    /// no other has; likewise for DM keys, whose two halves differ.
    #[test]
    fn labels_differ_in_every_field_they_bind() {
        let (me, you) = (&[1; 32], &[2; 32]);
        let rooms = [
            room_key_label(b"vault", 1, 1, me),
            room_key_label(b"vaulu", 1, 1, me),
            room_key_label(b"vault", 2, 1, me),
            room_key_label(b"vault", 1, 2, me),
            room_key_label(b"vault", 1, 1, you),
            // A room name cannot run into the incarnation: it is a short.
            room_key_label(b"vault\x00", 1 << 56, 1, me),
        ];
        let dms = [
            dm_key_label(1, me, you),
            dm_key_label(1, you, me),
            dm_key_label(2, me, you),
        ];
        let all: std::collections::HashSet<&Vec<u8>> = rooms.iter().chain(&dms).collect();
        assert_eq!(all.len(), rooms.len() + dms.len());
    }

    #[test]
    fn unknown_flag_bits_are_ignored() {
        let frame = Frame::new(
            opcode::ROOM_JOINED,
            Bytes::from_static(b"\x01r\xff\0\0\0\0\0\0\0\x09"),
        );
        assert_eq!(
            SecureMessage::parse(&frame).unwrap(),
            SecureMessage::RoomJoined {
                room: bytes(b"r"),
                secure: true,
                incarnation: 9,
            }
        );
    }

    #[test]
    fn only_the_secure_range_minus_response_and_hello_is_secure_only() {
        let secure: Vec<u8> = (0..=255).filter(|op| is_secure_only(*op)).collect();
        assert_eq!(secure.len(), 30);
        assert!(is_secure_only(opcode::ROOM_REKEYING) && is_secure_only(opcode::SIGNED_NICK));
        for legacy in [0x03, 0x06, 0x09, 0x0c, 0x0f, 0x12, 0x13, 0x15, 0x9a, 0x9b] {
            assert!(!is_secure_only(legacy));
        }
    }
}
