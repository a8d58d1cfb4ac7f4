//! Typed messages of chunked file transfer (PROTOCOL.md §14), parsed with nom
//! and encoded straight into shareable [`Bytes`].
//!
//! File transfer is part of the secure extension: only secure connections
//! send or receive these frames. Client requests are a [`FileRequest`],
//! reachable as [`ClientMessage::File`]; frames the server sends are a
//! [`FileNotice`], reachable as [`ServerMessage::File`].
//!
//! As with `81`, an opcode may mean one thing from a client and another from
//! the server: `83` is an offer made (C→S) or an offer forwarded (S→C), `86`
//! a chunk sent or a chunk relayed, `88` the sender's "all sent" or its relay
//! to recipients.
//!
//! A chunk's data is the rest of its frame, so chunks carry no inner length
//! and may be larger than the 65,535 bytes a `long` field can hold. The codec
//! admits frames that large only for opcode `86` and only on a connection
//! that is sending a file ([`super::FrameCodec::allow_chunks`]).
//!
//! [`ClientMessage::File`]: super::ClientMessage::File
//! [`ServerMessage::File`]: super::ServerMessage::File

use bytes::{BufMut, Bytes, BytesMut};
use nom::combinator::{all_consuming, rest};
use nom::multi::length_count;
use nom::number::complete::{be_u16, be_u32, be_u64, be_u8};
use nom::{IResult, Parser};

use super::frame::{put_header, Frame, HEADER_LEN};
use super::legacy::{long_field, put_long, put_short, short_field, ParseError};
use super::secure::{array, identity_block, Identity, SIGNATURE_LEN};

/// Opcodes of file transfer.
pub mod opcode {
    /// C→S: offers a file to the room or one user. S→C: an offer forwarded.
    pub const FILE_OFFER: u8 = 0x83;
    /// C→S: a recipient accepts or declines an offer. S→C: the sender may
    /// start sending.
    pub const FILE_DECISION: u8 = 0x85;
    /// S→C: the transfer is starting (same opcode as FILE_DECISION).
    pub const FILE_START: u8 = 0x85;
    /// Both ways: one chunk of the file.
    pub const FILE_CHUNK: u8 = 0x86;
    /// C→S: a recipient received one chunk.
    pub const FILE_ACK: u8 = 0x87;
    /// C→S: the sender sent every chunk. S→C: the same, relayed to each
    /// recipient after its last chunk.
    pub const FILE_DONE: u8 = 0x88;
    /// S→C: confirms an offer and names members who were skipped.
    pub const FILE_PENDING: u8 = 0x8a;
    /// S→C: confirms an accept and hands out the resume token.
    pub const FILE_ACCEPTED: u8 = 0x8b;
    /// C→S: a reconnected recipient asks for the chunks it lacks.
    pub const FILE_RESUME: u8 = 0x8c;
    /// S→C: every remaining recipient has acknowledged this many chunks.
    pub const FILE_WINDOW: u8 = 0x8d;
    /// S→C: the transfer is over; names who received the whole file.
    pub const FILE_FINISHED: u8 = 0x8e;
    /// C→S: the sender withdraws the file, or a recipient gives up.
    pub const FILE_CANCEL: u8 = 0x8f;
    /// S→C: the transfer ended, for everyone or for one recipient.
    pub const FILE_ENDED: u8 = 0x8f;
}

/// Bit 0 of an offer's flags: chunks are sealed with the room or DM key
/// named by the offer's `key_id` (PROTOCOL.md §14.6). Other bits are sent as
/// zero and ignored.
pub const FILE_FLAG_ENCRYPTED: u8 = 0x01;

/// Length of the sender's per-file random nonce.
pub const NONCE_LEN: usize = 16;
/// Length of the SHA-256 digest of the whole file, which travels only
/// inside the sealed manifest.
pub const DIGEST_LEN: usize = 32;
/// Length of a resume token.
pub const TOKEN_LEN: usize = 16;
/// The bytes before a chunk's data: `u32 id`, `u32 index`.
pub const CHUNK_HEADER_LEN: usize = 8;
/// The widest window of chunks in flight that FILE_ACCEPTED's compressed
/// bitmap can track (a `u64`, one bit per chunk).
pub const MAX_WINDOW: u8 = 64;

/// What a file is, as the sender describes it and recipients see it. The
/// server checks the sizes and forwards the rest untouched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileMeta {
    /// The file's name, without any directory.
    pub name: Bytes,
    /// Bytes in the file.
    pub size: u64,
    /// Plaintext bytes in every chunk but the last.
    pub chunk_size: u32,
    /// `ceil(size / chunk_size)`; 0 for an empty file.
    pub chunk_count: u32,
    /// [`FILE_FLAG_ENCRYPTED`] or 0.
    pub flags: u8,
    /// The room key epoch or DM key id the chunks are sealed with; 0 when
    /// not encrypted.
    pub key_id: u32,
    /// Random per file; salts the chunk keys.
    pub nonce: [u8; NONCE_LEN],
    /// The file's SHA-256 and size, sealed under the file's keys: the
    /// server relays it unread, so neither it nor the network learns a
    /// digest of the plaintext.
    pub manifest: Bytes,
    /// The sender's counter under the room or DM key, shared with its
    /// messages, so a replayed offer fails the recipient's counter check.
    pub counter: u64,
    /// The sender's Ed25519 signature over every field of the offer the
    /// server relays (PROTOCOL.md §14.6).
    pub signature: [u8; SIGNATURE_LEN],
}

impl FileMeta {
    /// Whether the chunks are sealed ([`FILE_FLAG_ENCRYPTED`]).
    pub fn encrypted(&self) -> bool {
        self.flags & FILE_FLAG_ENCRYPTED != 0
    }

    fn wire_len(&self) -> usize {
        1 + self.name.len()
            + 8
            + 4
            + 4
            + 1
            + 4
            + NONCE_LEN
            + 2
            + self.manifest.len()
            + 8
            + SIGNATURE_LEN
    }

    fn put(&self, dst: &mut BytesMut) {
        put_short(dst, &self.name);
        dst.put_u64(self.size);
        dst.put_u32(self.chunk_size);
        dst.put_u32(self.chunk_count);
        dst.put_u8(self.flags);
        dst.put_u32(self.key_id);
        dst.put_slice(&self.nonce);
        put_long(dst, &self.manifest);
        dst.put_u64(self.counter);
        dst.put_slice(&self.signature);
    }
}

/// A file request from a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileRequest {
    /// `83 short target, meta, u8 window`: offer a file to `target`, or to
    /// the sender's room when `target` is empty; `window` is the number of
    /// chunks the sender would like in flight.
    Offer {
        /// A user's name, or empty for the sender's room.
        target: Bytes,
        /// The file's description, forwarded to recipients as sent.
        meta: FileMeta,
        /// Chunks the sender would like in flight; the server may grant
        /// fewer.
        window: u8,
    },
    /// `85 u32 id, u8 accept`: 1 accepts, 0 declines.
    Decision {
        /// The transfer decided on, from the forwarded offer.
        id: u32,
        /// Whether the recipient takes the file.
        accept: bool,
    },
    /// `86 u32 id, u32 index, data`: one chunk, never answered; the data is
    /// the rest of the frame, so it may exceed a `long` field.
    Chunk {
        /// The transfer the chunk belongs to.
        id: u32,
        /// The chunk's position, counted from 0.
        index: u32,
        /// The chunk, sealed when the offer said so.
        data: Bytes,
    },
    /// `87 u32 id, u32 index`: a recipient received one chunk; never
    /// answered, the sender's window (`8d`) moves instead.
    Ack {
        /// The transfer the chunk belongs to.
        id: u32,
        /// The chunk received.
        index: u32,
    },
    /// `88 u32 id`: the sender has sent every chunk.
    Done {
        /// The transfer finished sending.
        id: u32,
    },
    /// `8c u32 id, [16] token, [64] proof`: a recipient back on a new
    /// connection asks for the chunks it lacks.
    Resume {
        /// The transfer to rejoin.
        id: u32,
        /// The token of the recipient's FILE_ACCEPTED: which recipient is
        /// resuming.
        token: [u8; TOKEN_LEN],
        /// Over [`resume_statement`](crate::secure::resume_statement) of
        /// `id`, `token` and this connection's channel binding, by the
        /// recipient's key: only the recipient itself can resume.
        proof: [u8; SIGNATURE_LEN],
    },
    /// `8f u32 id`: the sender withdraws the file, or a recipient gives up.
    Cancel {
        /// The transfer to end or leave.
        id: u32,
    },
}

/// Why a transfer ended, for everyone or for one recipient (`8f`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum EndReason {
    /// Nobody accepted the offer before the decision timeout (the notes'
    /// "No Transmission").
    NobodyAccepted = 1,
    /// The sender disconnected or left the room.
    SenderLeft = 2,
    /// The sender cancelled the transfer.
    Cancelled = 3,
    /// The recipient gave up (it sent FILE_CANCEL).
    RecipientCancelled = 4,
    /// The recipient did not acknowledge a chunk within the ack timeout.
    TooSlow = 5,
    /// The recipient left the room.
    LeftRoom = 6,
    /// The recipient disconnected and did not resume in time, or resumed
    /// too late for the chunks it lacked.
    Disconnected = 7,
    /// The sender or the recipient broke the protocol; the text says how.
    ProtocolViolation = 8,
    /// Every recipient dropped out.
    NoRecipientsLeft = 9,
    /// The recipient did not accept or decline within the decision timeout.
    DecisionTimeout = 10,
    /// The sender owed a chunk or FILE_DONE for the decision timeout.
    SenderStalled = 11,
}

impl EndReason {
    /// The reason with this byte; `None` for bytes no reason has, which a
    /// client shows by the text alone.
    pub fn from_u8(value: u8) -> Option<EndReason> {
        use EndReason::*;
        [
            NobodyAccepted,
            SenderLeft,
            Cancelled,
            RecipientCancelled,
            TooSlow,
            LeftRoom,
            Disconnected,
            ProtocolViolation,
            NoRecipientsLeft,
            DecisionTimeout,
            SenderStalled,
        ]
        .into_iter()
        .find(|reason| *reason as u8 == value)
    }
}

/// A file frame the server sends (to secure connections only).
// An offer carries the sender's identity and a signature inline (some 300
// bytes); boxing them would cost an allocation per offer to save a copy of
// that size when a notice is moved, which chunks, the frequent notice, are
// not (the server encodes them straight from the sender's frame).
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileNotice {
    /// `83 u32 id, short sender, identity, short room, meta`: an offer
    /// forwarded to a recipient; `room` is empty for a file sent to you alone.
    Offered {
        /// The transfer's id, which the recipient's replies name.
        id: u32,
        /// The sender's name when the offer was made.
        sender: Bytes,
        /// The sender's identity block, so that the signature can be checked
        /// by a recipient that has no `81` for the sender.
        sender_identity: Identity,
        /// The room the file was offered to; empty for a file to one user.
        room: Bytes,
        /// The description exactly as the sender sent it.
        meta: FileMeta,
    },
    /// `8a u32 id, u16 count, count × short name`: confirms an offer; the
    /// names are members who cannot receive files and were not asked.
    Pending {
        /// The id the server gave the transfer.
        id: u32,
        /// Members skipped because their client cannot receive files.
        skipped: Vec<Bytes>,
    },
    /// `8b u32 id, [16] token`: confirms an accept.
    Accepted {
        /// The transfer accepted.
        id: u32,
        /// This recipient's resume token, for FILE_RESUME after a
        /// disconnect.
        token: [u8; TOKEN_LEN],
    },
    /// `85 u32 id, u8 window, u16 count, count × short name`: start sending;
    /// the names are the recipients who accepted.
    Start {
        /// The transfer starting.
        id: u32,
        /// The window granted: at most this many chunks past `acked`.
        window: u8,
        /// The recipients who accepted.
        recipients: Vec<Bytes>,
    },
    /// `86 u32 id, u32 index, data`: a chunk relayed.
    Chunk {
        /// The transfer the chunk belongs to.
        id: u32,
        /// The chunk's position, counted from 0.
        index: u32,
        /// The chunk, byte for byte as the sender sent it.
        data: Bytes,
    },
    /// `88 u32 id`: the sender has sent every chunk.
    Done {
        /// The transfer whose chunks have all been sent.
        id: u32,
    },
    /// `8d u32 id, u32 acked`: every remaining recipient has acknowledged
    /// chunks `0..acked`; the sender may send chunks below `acked + window`.
    Window {
        /// The transfer whose window moved.
        id: u32,
        /// Chunks acknowledged by every receiving recipient, from 0 without
        /// gaps.
        acked: u32,
    },
    /// `8e u32 id, u16 count, count × short name`: the transfer is over and
    /// these recipients acknowledged every chunk.
    Finished {
        /// The transfer finished.
        id: u32,
        /// Who received the whole file.
        delivered: Vec<Bytes>,
    },
    /// `8f u32 id, short who, u8 reason, long text`: the transfer ended for
    /// `who`, or for everyone when `who` is empty.
    Ended {
        /// The transfer that ended.
        id: u32,
        /// The recipient it ended for; empty when it ended for everyone.
        who: Bytes,
        /// Why, for programs.
        reason: EndReason,
        /// Why, for people.
        text: Bytes,
    },
}

/// Whether a client→server opcode is a file request.
pub fn is_file_request(opcode: u8) -> bool {
    use opcode::*;
    matches!(
        opcode,
        FILE_OFFER | FILE_DECISION | FILE_CHUNK | FILE_ACK | FILE_DONE | FILE_RESUME | FILE_CANCEL
    )
}

/// Whether a server→client opcode is news of a transfer rather than part of
/// a reply: such frames may reach anyone taking part at any time (when
/// someone else acts, or a timer fires), and may follow a `9a`.
pub fn is_transfer_news(opcode: u8) -> bool {
    use opcode::*;
    matches!(
        opcode,
        FILE_START | FILE_CHUNK | FILE_DONE | FILE_WINDOW | FILE_FINISHED | FILE_ENDED
    )
}

/// Whether a server→client opcode is a file notice.
pub fn is_file_notice(opcode: u8) -> bool {
    use opcode::*;
    matches!(
        opcode,
        FILE_OFFER
            | FILE_START
            | FILE_CHUNK
            | FILE_DONE
            | FILE_PENDING
            | FILE_ACCEPTED
            | FILE_WINDOW
            | FILE_FINISHED
            | FILE_ENDED
    )
}

type Parsed<'a, T> = IResult<&'a [u8], T>;

fn meta(input: &[u8]) -> Parsed<'_, FileMetaFields<'_>> {
    let (input, (name, size, chunk_size, chunk_count, flags, key_id)) =
        (short_field, be_u64, be_u32, be_u32, be_u8, be_u32).parse(input)?;
    let (input, (nonce, manifest, counter, signature)) =
        (array, long_field, be_u64, array).parse(input)?;
    Ok((
        input,
        FileMetaFields {
            name,
            size,
            chunk_size,
            chunk_count,
            flags,
            key_id,
            nonce,
            manifest,
            counter,
            signature,
        },
    ))
}

/// [`FileMeta`] as slices of the payload, before they become [`Bytes`].
struct FileMetaFields<'a> {
    name: &'a [u8],
    size: u64,
    chunk_size: u32,
    chunk_count: u32,
    flags: u8,
    key_id: u32,
    nonce: [u8; NONCE_LEN],
    manifest: &'a [u8],
    counter: u64,
    signature: [u8; SIGNATURE_LEN],
}

impl FileMetaFields<'_> {
    fn to_meta(&self, payload: &Bytes) -> FileMeta {
        FileMeta {
            name: payload.slice_ref(self.name),
            size: self.size,
            chunk_size: self.chunk_size,
            chunk_count: self.chunk_count,
            flags: self.flags,
            key_id: self.key_id,
            nonce: self.nonce,
            manifest: payload.slice_ref(self.manifest),
            counter: self.counter,
            signature: self.signature,
        }
    }
}

fn names(input: &[u8]) -> Parsed<'_, Vec<&[u8]>> {
    length_count(be_u16, short_field).parse(input)
}

fn put_names(dst: &mut BytesMut, names: &[Bytes]) {
    let count = u16::try_from(names.len()).expect("more than 65,535 names");
    dst.put_u16(count);
    for name in names {
        put_short(dst, name);
    }
}

fn names_len(names: &[Bytes]) -> usize {
    2 + names.iter().map(|name| 1 + name.len()).sum::<usize>()
}

/// `u32 id, u32 index, data`: the shared layout of a chunk both ways.
fn chunk(input: &[u8]) -> Parsed<'_, (u32, u32, &[u8])> {
    (be_u32, be_u32, rest).parse(input)
}

/// Encodes a chunk frame (the same layout both ways) in one buffer.
pub fn encode_chunk(opcode: u8, id: u32, index: u32, data: &[u8]) -> Bytes {
    let mut dst = BytesMut::with_capacity(HEADER_LEN + CHUNK_HEADER_LEN + data.len());
    put_header(&mut dst, opcode, CHUNK_HEADER_LEN + data.len());
    dst.put_u32(id);
    dst.put_u32(index);
    dst.put_slice(data);
    dst.freeze()
}

impl FileRequest {
    /// Whether the request is answered with a `9a`. Chunks and acks stream
    /// without one: the window (`8d`) is their acknowledgement.
    pub fn expects_response(&self) -> bool {
        !matches!(self, FileRequest::Chunk { .. } | FileRequest::Ack { .. })
    }

    /// The request's opcode, for the frame header.
    pub fn opcode(&self) -> u8 {
        use opcode::*;
        match self {
            FileRequest::Offer { .. } => FILE_OFFER,
            FileRequest::Decision { .. } => FILE_DECISION,
            FileRequest::Chunk { .. } => FILE_CHUNK,
            FileRequest::Ack { .. } => FILE_ACK,
            FileRequest::Done { .. } => FILE_DONE,
            FileRequest::Resume { .. } => FILE_RESUME,
            FileRequest::Cancel { .. } => FILE_CANCEL,
        }
    }

    /// The whole frame a client sends.
    ///
    /// # Panics
    /// If a name is over 255 bytes or the signature over 65,535.
    pub fn encode(&self) -> Bytes {
        let opcode = self.opcode();
        if let FileRequest::Chunk { id, index, data } = self {
            return encode_chunk(opcode, *id, *index, data);
        }
        let mut dst = BytesMut::new();
        let payload_len = match self {
            FileRequest::Offer { target, meta, .. } => 1 + target.len() + meta.wire_len() + 1,
            FileRequest::Decision { .. } => 5,
            FileRequest::Ack { .. } => 8,
            FileRequest::Done { .. } | FileRequest::Cancel { .. } => 4,
            FileRequest::Resume { .. } => 4 + TOKEN_LEN + SIGNATURE_LEN,
            FileRequest::Chunk { .. } => unreachable!("encoded above"),
        };
        dst.reserve(HEADER_LEN + payload_len);
        put_header(&mut dst, opcode, payload_len);
        match self {
            FileRequest::Offer {
                target,
                meta,
                window,
            } => {
                put_short(&mut dst, target);
                meta.put(&mut dst);
                dst.put_u8(*window);
            }
            FileRequest::Decision { id, accept } => {
                dst.put_u32(*id);
                dst.put_u8(u8::from(*accept));
            }
            FileRequest::Ack { id, index } => {
                dst.put_u32(*id);
                dst.put_u32(*index);
            }
            FileRequest::Done { id } | FileRequest::Cancel { id } => dst.put_u32(*id),
            FileRequest::Resume { id, token, proof } => {
                dst.put_u32(*id);
                dst.put_slice(token);
                dst.put_slice(proof);
            }
            FileRequest::Chunk { .. } => unreachable!("encoded above"),
        }
        dst.freeze()
    }

    /// Interprets a file request frame; fields are slices of its payload.
    pub fn parse(frame: &Frame) -> Result<FileRequest, ParseError> {
        use opcode::*;
        let payload = &frame.payload;
        let bad = |name| move |_| ParseError::BadLengths { name };
        let request = match frame.opcode {
            FILE_OFFER => {
                let (_, (target, fields, window)) = all_consuming((short_field, meta, be_u8))
                    .parse(&payload[..])
                    .map_err(bad("FILE_OFFER"))?;
                FileRequest::Offer {
                    target: payload.slice_ref(target),
                    meta: fields.to_meta(payload),
                    window,
                }
            }
            FILE_DECISION => {
                let (_, (id, accept)) = all_consuming((be_u32, be_u8))
                    .parse(&payload[..])
                    .map_err(bad("FILE_DECISION"))?;
                let accept = match accept {
                    0 => false,
                    1 => true,
                    _ => {
                        return Err(ParseError::BadLengths {
                            name: "FILE_DECISION",
                        })
                    }
                };
                FileRequest::Decision { id, accept }
            }
            FILE_CHUNK => {
                let (_, (id, index, data)) = chunk(&payload[..]).map_err(bad("FILE_CHUNK"))?;
                FileRequest::Chunk {
                    id,
                    index,
                    data: payload.slice_ref(data),
                }
            }
            FILE_ACK => {
                let (_, (id, index)) = all_consuming((be_u32, be_u32))
                    .parse(&payload[..])
                    .map_err(bad("FILE_ACK"))?;
                FileRequest::Ack { id, index }
            }
            FILE_DONE => FileRequest::Done {
                id: only_id(&payload[..]).map_err(bad("FILE_DONE"))?.1,
            },
            FILE_RESUME => {
                let (_, (id, token, proof)) = all_consuming((be_u32, array, array))
                    .parse(&payload[..])
                    .map_err(bad("FILE_RESUME"))?;
                FileRequest::Resume { id, token, proof }
            }
            FILE_CANCEL => FileRequest::Cancel {
                id: only_id(&payload[..]).map_err(bad("FILE_CANCEL"))?.1,
            },
            other => return Err(ParseError::UnknownOpcode(other)),
        };
        Ok(request)
    }
}

fn only_id(input: &[u8]) -> Parsed<'_, u32> {
    all_consuming(be_u32).parse(input)
}

impl FileNotice {
    /// The notice's opcode, for the frame header.
    pub fn opcode(&self) -> u8 {
        use opcode::*;
        match self {
            FileNotice::Offered { .. } => FILE_OFFER,
            FileNotice::Pending { .. } => FILE_PENDING,
            FileNotice::Accepted { .. } => FILE_ACCEPTED,
            FileNotice::Start { .. } => FILE_START,
            FileNotice::Chunk { .. } => FILE_CHUNK,
            FileNotice::Done { .. } => FILE_DONE,
            FileNotice::Window { .. } => FILE_WINDOW,
            FileNotice::Finished { .. } => FILE_FINISHED,
            FileNotice::Ended { .. } => FILE_ENDED,
        }
    }

    /// Encodes the notice into one frame, ready to be shared by every
    /// recipient.
    ///
    /// # Panics
    /// If a name is over 255 bytes, a key, signature or text over 65,535, or
    /// a list over 65,535 names.
    pub fn encode(&self) -> Bytes {
        let opcode = self.opcode();
        if let FileNotice::Chunk { id, index, data } = self {
            return encode_chunk(opcode, *id, *index, data);
        }
        let payload_len = match self {
            FileNotice::Offered {
                sender,
                sender_identity,
                room,
                meta,
                ..
            } => {
                4 + 1 + sender.len() + sender_identity.wire_len() + 1 + room.len() + meta.wire_len()
            }
            FileNotice::Pending { skipped: names, .. }
            | FileNotice::Finished {
                delivered: names, ..
            } => 4 + names_len(names),
            FileNotice::Accepted { .. } => 4 + TOKEN_LEN,
            FileNotice::Start { recipients, .. } => 4 + 1 + names_len(recipients),
            FileNotice::Done { .. } => 4,
            FileNotice::Window { .. } => 8,
            FileNotice::Ended { who, text, .. } => 4 + 1 + who.len() + 1 + 2 + text.len(),
            FileNotice::Chunk { .. } => unreachable!("encoded above"),
        };
        let mut dst = BytesMut::with_capacity(HEADER_LEN + payload_len);
        put_header(&mut dst, opcode, payload_len);
        match self {
            FileNotice::Offered {
                id,
                sender,
                sender_identity,
                room,
                meta,
            } => {
                dst.put_u32(*id);
                put_short(&mut dst, sender);
                sender_identity.put(&mut dst);
                put_short(&mut dst, room);
                meta.put(&mut dst);
            }
            FileNotice::Pending { id, skipped: names }
            | FileNotice::Finished {
                id,
                delivered: names,
            } => {
                dst.put_u32(*id);
                put_names(&mut dst, names);
            }
            FileNotice::Accepted { id, token } => {
                dst.put_u32(*id);
                dst.put_slice(token);
            }
            FileNotice::Start {
                id,
                window,
                recipients,
            } => {
                dst.put_u32(*id);
                dst.put_u8(*window);
                put_names(&mut dst, recipients);
            }
            FileNotice::Done { id } => dst.put_u32(*id),
            FileNotice::Window { id, acked } => {
                dst.put_u32(*id);
                dst.put_u32(*acked);
            }
            FileNotice::Ended {
                id,
                who,
                reason,
                text,
            } => {
                dst.put_u32(*id);
                put_short(&mut dst, who);
                dst.put_u8(*reason as u8);
                put_long(&mut dst, text);
            }
            FileNotice::Chunk { .. } => unreachable!("encoded above"),
        }
        debug_assert_eq!(dst.len(), HEADER_LEN + payload_len);
        dst.freeze()
    }

    /// Interprets a file frame received from a server.
    pub fn parse(frame: &Frame) -> Result<FileNotice, ParseError> {
        use opcode::*;
        let payload = &frame.payload;
        let sub = |field: &[u8]| payload.slice_ref(field);
        let subs = |fields: Vec<&[u8]>| fields.into_iter().map(sub).collect::<Vec<_>>();
        let bad = |name| move |_| ParseError::BadLengths { name };
        let notice = match frame.opcode {
            FILE_OFFER => {
                let (_, (id, sender, identity, room, fields)) =
                    all_consuming((be_u32, short_field, identity_block, short_field, meta))
                        .parse(&payload[..])
                        .map_err(bad("FILE_OFFER"))?;
                FileNotice::Offered {
                    id,
                    sender: sub(sender),
                    sender_identity: identity.to_identity(payload),
                    room: sub(room),
                    meta: fields.to_meta(payload),
                }
            }
            FILE_PENDING => {
                let (_, (id, skipped)) = all_consuming((be_u32, names))
                    .parse(&payload[..])
                    .map_err(bad("FILE_PENDING"))?;
                FileNotice::Pending {
                    id,
                    skipped: subs(skipped),
                }
            }
            FILE_ACCEPTED => {
                let (_, (id, token)) = all_consuming((be_u32, array))
                    .parse(&payload[..])
                    .map_err(bad("FILE_ACCEPTED"))?;
                FileNotice::Accepted { id, token }
            }
            FILE_START => {
                let (_, (id, window, recipients)) = all_consuming((be_u32, be_u8, names))
                    .parse(&payload[..])
                    .map_err(bad("FILE_START"))?;
                FileNotice::Start {
                    id,
                    window,
                    recipients: subs(recipients),
                }
            }
            FILE_CHUNK => {
                let (_, (id, index, data)) = chunk(&payload[..]).map_err(bad("FILE_CHUNK"))?;
                FileNotice::Chunk {
                    id,
                    index,
                    data: sub(data),
                }
            }
            FILE_DONE => FileNotice::Done {
                id: only_id(&payload[..]).map_err(bad("FILE_DONE"))?.1,
            },
            FILE_WINDOW => {
                let (_, (id, acked)) = all_consuming((be_u32, be_u32))
                    .parse(&payload[..])
                    .map_err(bad("FILE_WINDOW"))?;
                FileNotice::Window { id, acked }
            }
            FILE_FINISHED => {
                let (_, (id, delivered)) = all_consuming((be_u32, names))
                    .parse(&payload[..])
                    .map_err(bad("FILE_FINISHED"))?;
                FileNotice::Finished {
                    id,
                    delivered: subs(delivered),
                }
            }
            FILE_ENDED => {
                let (_, (id, who, reason, text)) =
                    all_consuming((be_u32, short_field, be_u8, long_field))
                        .parse(&payload[..])
                        .map_err(bad("FILE_ENDED"))?;
                FileNotice::Ended {
                    id,
                    who: sub(who),
                    reason: EndReason::from_u8(reason)
                        .ok_or(ParseError::BadLengths { name: "FILE_ENDED" })?,
                    text: sub(text),
                }
            }
            other => return Err(ParseError::UnknownOpcode(other)),
        };
        Ok(notice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FrameCodec;

    fn decode(wire: &[u8]) -> Frame {
        let mut buffer = BytesMut::from(wire);
        let mut codec = FrameCodec::default();
        codec.allow_chunks(1 << 20);
        let frame = codec.decode(&mut buffer).unwrap().unwrap();
        assert!(buffer.is_empty());
        frame
    }

    fn sample_meta() -> FileMeta {
        FileMeta {
            name: Bytes::from_static(b"a.txt"),
            size: 5,
            chunk_size: 262_144,
            chunk_count: 1,
            flags: FILE_FLAG_ENCRYPTED,
            key_id: 2,
            nonce: [0x11; NONCE_LEN],
            manifest: Bytes::from_static(&[0x22; 96]),
            counter: 3,
            signature: [0x33; SIGNATURE_LEN],
        }
    }

    #[test]
    fn requests_round_trip() {
        let requests = [
            FileRequest::Offer {
                target: Bytes::new(),
                meta: sample_meta(),
                window: 8,
            },
            FileRequest::Decision {
                id: 7,
                accept: true,
            },
            FileRequest::Decision {
                id: 7,
                accept: false,
            },
            FileRequest::Chunk {
                id: 7,
                index: 3,
                data: Bytes::from(vec![9; 100_000]),
            },
            FileRequest::Ack { id: 7, index: 3 },
            FileRequest::Done { id: 7 },
            FileRequest::Resume {
                id: 7,
                token: [5; TOKEN_LEN],
                proof: [6; SIGNATURE_LEN],
            },
            FileRequest::Cancel { id: 7 },
        ];
        for request in requests {
            let frame = decode(&request.encode());
            assert_eq!(FileRequest::parse(&frame).unwrap(), request);
        }
    }

    #[test]
    fn notices_round_trip() {
        let names = vec![Bytes::from_static(b"bob"), Bytes::from_static(b"carol")];
        let notices = [
            FileNotice::Offered {
                id: 1,
                sender: Bytes::from_static(b"alice"),
                sender_identity: Identity {
                    signing_key: [1; 32],
                    rsa_der: Bytes::from_static(b"DER"),
                    key_binding: [2; SIGNATURE_LEN],
                    name_proof: [3; SIGNATURE_LEN],
                },
                room: Bytes::from_static(b"vault"),
                meta: sample_meta(),
            },
            FileNotice::Pending {
                id: 1,
                skipped: names.clone(),
            },
            FileNotice::Accepted {
                id: 1,
                token: [0xab; TOKEN_LEN],
            },
            FileNotice::Start {
                id: 1,
                window: 8,
                recipients: names.clone(),
            },
            FileNotice::Chunk {
                id: 1,
                index: 0,
                data: Bytes::new(),
            },
            FileNotice::Done { id: 1 },
            FileNotice::Window { id: 1, acked: 4 },
            FileNotice::Finished {
                id: 1,
                delivered: names,
            },
            FileNotice::Ended {
                id: 1,
                who: Bytes::new(),
                reason: EndReason::SenderLeft,
                text: Bytes::from_static(b"alice left."),
            },
        ];
        for notice in notices {
            let frame = decode(&notice.encode());
            assert_eq!(FileNotice::parse(&frame).unwrap(), notice);
        }
    }

    /// The byte examples of PROTOCOL.md §14.
    #[test]
    fn matches_the_documented_bytes() {
        assert_eq!(
            &FileRequest::Decision {
                id: 1,
                accept: true
            }
            .encode()[..],
            [0, 0, 0, 5, 4, 0x17, 0x85, 0, 0, 0, 1, 1]
        );
        assert_eq!(
            &FileRequest::Ack { id: 1, index: 2 }.encode()[..],
            [0, 0, 0, 8, 4, 0x17, 0x87, 0, 0, 0, 1, 0, 0, 0, 2]
        );
        assert_eq!(
            &FileNotice::Window { id: 1, acked: 3 }.encode()[..],
            [0, 0, 0, 8, 4, 0x17, 0x8d, 0, 0, 0, 1, 0, 0, 0, 3]
        );
        assert_eq!(
            &FileRequest::Chunk {
                id: 1,
                index: 0,
                data: Bytes::from_static(b"hi")
            }
            .encode()[..],
            [0, 0, 0, 10, 4, 0x17, 0x86, 0, 0, 0, 1, 0, 0, 0, 0, b'h', b'i']
        );
        assert_eq!(
            &FileNotice::Pending {
                id: 1,
                skipped: vec![Bytes::from_static(b"lee")]
            }
            .encode()[..],
            [0, 0, 0, 10, 4, 0x17, 0x8a, 0, 0, 0, 1, 0, 1, 3, b'l', b'e', b'e']
        );
    }

    #[test]
    fn matches_the_documented_notices() {
        let names = || vec![Bytes::from_static(b"bob"), Bytes::from_static(b"carol")];
        let start = FileNotice::Start {
            id: 1,
            window: 8,
            recipients: names(),
        };
        assert_eq!(
            &start.encode()[..],
            b"\0\0\0\x11\x04\x17\x85\0\0\0\x01\x08\0\x02\x03bob\x05carol"
        );
        let finished = FileNotice::Finished {
            id: 1,
            delivered: names(),
        };
        assert_eq!(
            &finished.encode()[..],
            b"\0\0\0\x10\x04\x17\x8e\0\0\0\x01\0\x02\x03bob\x05carol"
        );
        let ended = FileNotice::Ended {
            id: 1,
            who: Bytes::from_static(b"carol"),
            reason: EndReason::TooSlow,
            text: Bytes::from_static(b"No acknowledgement within the chunk timeout."),
        };
        assert_eq!(
            &ended.encode()[..20],
            b"\0\0\0\x39\x04\x17\x8f\0\0\0\x01\x05carol\x05\0\x2c"
        );
        let offer = FileRequest::Offer {
            target: Bytes::new(),
            meta: FileMeta {
                name: Bytes::from_static(b"a.txt"),
                size: 5,
                chunk_size: 262_144,
                chunk_count: 1,
                flags: FILE_FLAG_ENCRYPTED,
                key_id: 2,
                nonce: [0x11; NONCE_LEN],
                manifest: Bytes::from(vec![0x22; 96]),
                counter: 0x0102_0304_0506_0708,
                signature: [0x33; SIGNATURE_LEN],
            },
            window: 8,
        };
        // 1 + 6 + 8 + 4 + 4 + 1 + 4 + 16 + (2 + 96) + 8 + 64 + 1 = 215 = 0xd7.
        let expected = [
            &b"\0\0\0\xd7\x04\x17\x83\0\x05a.txt\0\0\0\0\0\0\0\x05\0\x04\0\0\0\0\0\x01\x01\0\0\0\x02"[..],
            &[0x11; 16],
            b"\0\x60",
            &[0x22; 96],
            b"\x01\x02\x03\x04\x05\x06\x07\x08",
            &[0x33; 64],
            b"\x08",
        ]
        .concat();
        assert_eq!(offer.encode().to_vec(), expected);
        let resume = FileRequest::Resume {
            id: 1,
            token: [0xab; TOKEN_LEN],
            proof: [0xcd; SIGNATURE_LEN],
        };
        let expected = [
            &b"\0\0\0\x54\x04\x17\x8c\0\0\0\x01"[..],
            &[0xab; 16],
            &[0xcd; 64],
        ]
        .concat();
        assert_eq!(resume.encode().to_vec(), expected);
    }

    #[test]
    fn refuses_bad_decisions_and_short_frames() {
        let decision = Frame::new(opcode::FILE_DECISION, &[0, 0, 0, 1, 2][..]);
        assert!(FileRequest::parse(&decision).is_err());
        let ack = Frame::new(opcode::FILE_ACK, &[0, 0, 0, 1][..]);
        assert!(FileRequest::parse(&ack).is_err());
        let chunk = Frame::new(opcode::FILE_CHUNK, &[0, 0, 0, 1, 0, 0][..]);
        assert!(FileRequest::parse(&chunk).is_err());
        let ended = Frame::new(opcode::FILE_ENDED, &[0, 0, 0, 1, 0, 99, 0, 0][..]);
        assert!(FileNotice::parse(&ended).is_err());
    }
}
