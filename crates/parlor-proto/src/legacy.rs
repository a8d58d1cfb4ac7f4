//! Typed messages of the legacy protocol, parsed from a [`Frame`]'s payload
//! with nom and encoded straight into shareable [`Bytes`].
//!
//! Inner fields are either a `u8` length and that many bytes (names, rooms,
//! passwords) or a big-endian `u16` length and that many bytes (message
//! text). A payload whose inner lengths do not add up exactly to the frame
//! length is malformed: the real client treats such frames as fatal, and so do
//! we.

use bytes::{BufMut, Bytes, BytesMut};
use nom::combinator::all_consuming;
use nom::multi::length_data;
use nom::number::complete::{be_u16, be_u8};
use nom::{IResult, Parser};

use super::frame::{put_header, Frame, HEADER_LEN};
use super::secure::{self, SecureMessage};
use super::transfer::{self, FileNotice, FileRequest};

/// Opcodes of the legacy protocol, as the real client's `MessageType` enum
/// names them.
pub mod opcode {
    /// JOIN (C→S): enter a room, creating it if needed.
    pub const JOIN: u8 = 0x03;
    /// LEAVE (C→S): leave the room, or the server when in none.
    pub const LEAVE: u8 = 0x06;
    /// LIST_ROOMS (C→S): every room's name.
    pub const LIST_ROOMS: u8 = 0x09;
    /// LIST_USERS (C→S): the room's members, or every user when in none.
    pub const LIST_USERS: u8 = 0x0c;
    /// NICK (C→S): change one's name.
    pub const NICK: u8 = 0x0f;
    /// DM: a direct message, sent (C→S) and relayed (S→C).
    pub const DIRECT_MESSAGE: u8 = 0x12;
    /// HEARTBEAT (C→S): keep-alive, never answered.
    pub const HEARTBEAT: u8 = 0x13;
    /// ROOM_MSG: a room message, sent (C→S) and relayed (S→C).
    pub const ROOM_MESSAGE: u8 = 0x15;
    /// RESPONSE (S→C): the one answer to each request.
    pub const RESPONSE: u8 = 0x9a;
    /// HELLO (C→S): the greeting after connecting, answered with the name.
    pub const HELLO: u8 = 0x9b;
}

/// The real client's heartbeat payload: a length byte and 31 characters.
/// The server ignores a heartbeat's payload; clients that want to look like
/// the real one send this.
pub const HEARTBEAT_PAYLOAD: &[u8] = b"\x1fstaying alive, staying alive...";

/// The real client's greeting (its HELLO payload), which the server never
/// looks at.
pub const LEGACY_GREETING: &[u8] = "Xin chào. Bonghjornu.".as_bytes();

/// A message from a client to the server.
///
/// Fields are slices of the frame's payload, so parsing copies nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientMessage {
    /// The greeting sent right after connecting. Its bytes differ between
    /// client builds, so they are carried but never interpreted.
    Hello {
        /// The whole payload, whatever the client build put there.
        greeting: Bytes,
    },
    /// Keep-alive; never answered.
    Heartbeat {
        /// The whole payload; ignored, and of any length.
        payload: Bytes,
    },
    /// `0f`: take a new name.
    Nick {
        /// The name asked for, as raw bytes (up to 255; UTF-8 passes
        /// through unchecked).
        name: Bytes,
    },
    /// `03`: enter a room, creating it if nobody is in it.
    Join {
        /// The room's name, as raw bytes.
        room: Bytes,
        /// The password; empty means none, and the client sends no password
        /// and an empty one alike.
        password: Bytes,
    },
    /// `06`: leave the current room; outside a room, leave the server.
    Leave,
    /// `0c`: the members of the current room, or every user outside one.
    ListUsers,
    /// `09`: every room, protected ones included.
    ListRooms,
    /// `12`: a direct message to one user, in a room or not.
    DirectMessage {
        /// The recipient's name.
        target: Bytes,
        /// The message, up to 65,535 bytes; may be empty.
        text: Bytes,
    },
    /// `15`: a message to the sender's room. `room` is the client's own
    /// idea of its current room, empty when it believes it is in none.
    RoomMessage {
        /// The room the client believes it is in; must match the real one.
        room: Bytes,
        /// The message, up to 65,535 bytes.
        text: Bytes,
    },
    /// Secure extension (`81`): the connection's identity and the proofs
    /// that it holds it. Makes the connection secure.
    RegisterKey(secure::Registration),
    /// Secure extension (`96`): a secure connection's NICK, with the name
    /// proof for the new name that peers will check.
    SignedNick {
        /// The name asked for, as raw bytes.
        name: Bytes,
        /// Over [`secure::name_proof_statement`] of `name`.
        name_proof: [u8; secure::SIGNATURE_LEN],
    },
    /// Secure extension (`82`): asks for a DM key shared with `target`.
    DmKeyRequest {
        /// The name of the user to share the key with.
        target: Bytes,
    },
    /// Secure extension (`83`–`8f`): file transfer.
    File(FileRequest),
}

/// Why a whole frame does not hold a valid client message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// No message of this direction has this opcode.
    #[error("unknown opcode 0x{0:02x}")]
    UnknownOpcode(u8),
    /// The payload's fields run past its end or leave bytes over: the real
    /// client treats such a frame as fatal, and so does the server.
    #[error("malformed {name} payload: inner lengths do not match the frame length")]
    BadLengths {
        /// The message's name as PROTOCOL.md spells it (`JOIN`, `ROOM_MSG`),
        /// for the log line.
        name: &'static str,
    },
}

type Fields<'a> = IResult<&'a [u8], (&'a [u8], &'a [u8])>;

pub(super) fn short_field(input: &[u8]) -> IResult<&[u8], &[u8]> {
    length_data(be_u8).parse(input)
}

pub(super) fn long_field(input: &[u8]) -> IResult<&[u8], &[u8]> {
    length_data(be_u16).parse(input)
}

fn short_then_short(input: &[u8]) -> Fields<'_> {
    all_consuming((short_field, short_field)).parse(input)
}

fn short_then_long(input: &[u8]) -> Fields<'_> {
    all_consuming((short_field, long_field)).parse(input)
}

fn only_short(input: &[u8]) -> IResult<&[u8], &[u8]> {
    all_consuming(short_field).parse(input)
}

/// LEAVE and the LIST requests carry no payload; any byte is trailing garbage.
fn empty(payload: &[u8], name: &'static str) -> Result<(), ParseError> {
    if payload.is_empty() {
        Ok(())
    } else {
        Err(ParseError::BadLengths { name })
    }
}

impl ClientMessage {
    /// Interprets a frame received from a client.
    pub fn parse(frame: &Frame) -> Result<ClientMessage, ParseError> {
        let payload = &frame.payload;
        let sub = |field: &[u8]| payload.slice_ref(field);
        let bad = |name| move |_| ParseError::BadLengths { name };
        let message = match frame.opcode {
            opcode::HELLO => ClientMessage::Hello {
                greeting: payload.clone(),
            },
            opcode::HEARTBEAT => ClientMessage::Heartbeat {
                payload: payload.clone(),
            },
            opcode::NICK => {
                let (_, name) = only_short(payload).map_err(bad("NICK"))?;
                ClientMessage::Nick { name: sub(name) }
            }
            opcode::JOIN => {
                let (_, (room, password)) = short_then_short(payload).map_err(bad("JOIN"))?;
                ClientMessage::Join {
                    room: sub(room),
                    password: sub(password),
                }
            }
            opcode::LEAVE => {
                empty(payload, "LEAVE")?;
                ClientMessage::Leave
            }
            opcode::LIST_USERS => {
                empty(payload, "LIST_USERS")?;
                ClientMessage::ListUsers
            }
            opcode::LIST_ROOMS => {
                empty(payload, "LIST_ROOMS")?;
                ClientMessage::ListRooms
            }
            opcode::DIRECT_MESSAGE => {
                let (_, (target, text)) = short_then_long(payload).map_err(bad("DM"))?;
                ClientMessage::DirectMessage {
                    target: sub(target),
                    text: sub(text),
                }
            }
            opcode::ROOM_MESSAGE => {
                let (_, (room, text)) = short_then_long(payload).map_err(bad("ROOM_MSG"))?;
                ClientMessage::RoomMessage {
                    room: sub(room),
                    text: sub(text),
                }
            }
            secure::opcode::REGISTER_KEY => {
                ClientMessage::RegisterKey(secure::parse_register_key(payload)?)
            }
            secure::opcode::SIGNED_NICK => {
                let (name, name_proof) = secure::parse_signed_nick(payload)?;
                ClientMessage::SignedNick { name, name_proof }
            }
            secure::opcode::DM_KEY_REQUEST => ClientMessage::DmKeyRequest {
                target: secure::parse_dm_key_request(payload)?,
            },
            other if transfer::is_file_request(other) => {
                ClientMessage::File(FileRequest::parse(frame)?)
            }
            other => return Err(ParseError::UnknownOpcode(other)),
        };
        Ok(message)
    }

    /// Whether the server owes exactly one `9a` response to this message.
    /// Everything but a heartbeat, a file chunk and a chunk's ack is a
    /// request.
    pub fn expects_response(&self) -> bool {
        match self {
            ClientMessage::Heartbeat { .. } => false,
            ClientMessage::File(request) => request.expects_response(),
            _ => true,
        }
    }

    /// The frame a client sends for this message.
    ///
    /// # Panics
    /// If a name is over 255 bytes or a text over 65,535 bytes: such a
    /// message cannot be put on the wire.
    pub fn to_frame(&self) -> Frame {
        let mut payload = BytesMut::new();
        let opcode = match self {
            ClientMessage::Hello { greeting } => {
                payload.extend_from_slice(greeting);
                opcode::HELLO
            }
            ClientMessage::Heartbeat { payload: bytes } => {
                payload.extend_from_slice(bytes);
                opcode::HEARTBEAT
            }
            ClientMessage::Nick { name } => {
                put_short(&mut payload, name);
                opcode::NICK
            }
            ClientMessage::Join { room, password } => {
                put_short(&mut payload, room);
                put_short(&mut payload, password);
                opcode::JOIN
            }
            ClientMessage::Leave => opcode::LEAVE,
            ClientMessage::ListUsers => opcode::LIST_USERS,
            ClientMessage::ListRooms => opcode::LIST_ROOMS,
            ClientMessage::DirectMessage { target, text } => {
                put_short(&mut payload, target);
                put_long(&mut payload, text);
                opcode::DIRECT_MESSAGE
            }
            ClientMessage::RoomMessage { room, text } => {
                put_short(&mut payload, room);
                put_long(&mut payload, text);
                opcode::ROOM_MESSAGE
            }
            ClientMessage::RegisterKey(registration) => {
                registration.put(&mut payload);
                secure::opcode::REGISTER_KEY
            }
            ClientMessage::SignedNick { name, name_proof } => {
                put_short(&mut payload, name);
                payload.extend_from_slice(name_proof);
                secure::opcode::SIGNED_NICK
            }
            ClientMessage::DmKeyRequest { target } => {
                put_short(&mut payload, target);
                secure::opcode::DM_KEY_REQUEST
            }
            ClientMessage::File(request) => {
                return Frame::new(request.opcode(), request.encode().slice(HEADER_LEN..))
            }
        };
        Frame::new(opcode, payload.freeze())
    }
}

/// The status byte that follows `9a`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// Success. Never sent unless a request is pending: the real client
    /// aborts on an unsolicited `9a 00`.
    Ok = 0x00,
    /// The request failed; the text says why.
    Error = 0x01,
    /// The request was refused for now (rate limit, busy); try again later.
    TryLater = 0x02,
}

/// A message from the server to a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerMessage {
    /// `9a <status> <data>`: the one answer to one request.
    Response {
        /// A [`Status`] as its byte; kept raw so that a client can show a
        /// status it does not know instead of failing to parse.
        status: u8,
        /// What follows the status: a name, a name list, or a text saying
        /// why the request failed.
        data: Bytes,
    },
    /// A message relayed from a room member.
    RoomMessage {
        /// The room it was said in.
        room: Bytes,
        /// Who said it.
        sender: Bytes,
        /// What was said.
        text: Bytes,
    },
    /// A direct message relayed from another user.
    DirectMessage {
        /// Who sent it.
        sender: Bytes,
        /// What was sent.
        text: Bytes,
    },
    /// A frame of the secure extension; sent to secure connections only.
    Secure(SecureMessage),
    /// A file transfer frame; sent to secure connections only.
    File(FileNotice),
}

/// `9a 00` with no data: the reply to every successful request that returns
/// nothing. Static, so acknowledging costs no allocation.
pub const OK_RESPONSE: Bytes = Bytes::from_static(&[0, 0, 0, 1, 0x04, 0x17, opcode::RESPONSE, 0]);

impl ServerMessage {
    /// Encodes the message into one frame, ready to be shared by every
    /// recipient.
    pub fn encode(&self) -> Bytes {
        match self {
            ServerMessage::Response { status, data } => {
                encode_response(*status, std::iter::once(data.as_ref()))
            }
            ServerMessage::RoomMessage { room, sender, text } => {
                encode_room_message(room, sender, text)
            }
            ServerMessage::DirectMessage { sender, text } => encode_direct_message(sender, text),
            ServerMessage::Secure(message) => message.encode(),
            ServerMessage::File(notice) => notice.encode(),
        }
    }

    /// Interprets a frame received from a server (used by clients and tests).
    pub fn parse(frame: &Frame) -> Result<ServerMessage, ParseError> {
        let payload = &frame.payload;
        let sub = |field: &[u8]| payload.slice_ref(field);
        match frame.opcode {
            opcode::RESPONSE => {
                let (&status, data) = payload
                    .split_first()
                    .ok_or(ParseError::BadLengths { name: "RESPONSE" })?;
                Ok(ServerMessage::Response {
                    status,
                    data: sub(data),
                })
            }
            opcode::ROOM_MESSAGE => {
                let (_, (room, sender, text)) =
                    all_consuming((short_field, short_field, long_field))
                        .parse(payload)
                        .map_err(|_: nom::Err<nom::error::Error<&[u8]>>| {
                            ParseError::BadLengths { name: "ROOM_MSG" }
                        })?;
                Ok(ServerMessage::RoomMessage {
                    room: sub(room),
                    sender: sub(sender),
                    text: sub(text),
                })
            }
            opcode::DIRECT_MESSAGE => {
                let (_, (sender, text)) =
                    short_then_long(payload).map_err(|_| ParseError::BadLengths { name: "DM" })?;
                Ok(ServerMessage::DirectMessage {
                    sender: sub(sender),
                    text: sub(text),
                })
            }
            other if transfer::is_file_notice(other) => {
                FileNotice::parse(frame).map(ServerMessage::File)
            }
            other if secure::is_secure_only(other) => {
                SecureMessage::parse(frame).map(ServerMessage::Secure)
            }
            other => Err(ParseError::UnknownOpcode(other)),
        }
    }
}

/// `9a <status>` followed by the concatenation of `parts`.
pub fn encode_response<'a>(status: u8, parts: impl Iterator<Item = &'a [u8]> + Clone) -> Bytes {
    let data_len: usize = parts.clone().map(<[u8]>::len).sum();
    let mut dst = BytesMut::with_capacity(HEADER_LEN + 1 + data_len);
    put_header(&mut dst, opcode::RESPONSE, 1 + data_len);
    dst.put_u8(status);
    for part in parts {
        dst.extend_from_slice(part);
    }
    dst.freeze()
}

/// `9a 00 {u8 len, name}*`: the list reply, with no count field.
pub fn encode_name_list<'a>(names: impl Iterator<Item = &'a [u8]> + Clone) -> Bytes {
    let data_len: usize = names.clone().map(|name| 1 + name.len()).sum();
    let mut dst = BytesMut::with_capacity(HEADER_LEN + 1 + data_len);
    put_header(&mut dst, opcode::RESPONSE, 1 + data_len);
    dst.put_u8(Status::Ok as u8);
    for name in names {
        put_short(&mut dst, name);
    }
    dst.freeze()
}

/// `15 <u8 room> <u8 sender> <u16 text>`.
pub fn encode_room_message(room: &[u8], sender: &[u8], text: &[u8]) -> Bytes {
    let payload_len = 1 + room.len() + 1 + sender.len() + 2 + text.len();
    let mut dst = BytesMut::with_capacity(HEADER_LEN + payload_len);
    put_header(&mut dst, opcode::ROOM_MESSAGE, payload_len);
    put_short(&mut dst, room);
    put_short(&mut dst, sender);
    put_long(&mut dst, text);
    dst.freeze()
}

/// `12 <u8 sender> <u16 text>`.
pub fn encode_direct_message(sender: &[u8], text: &[u8]) -> Bytes {
    let payload_len = 1 + sender.len() + 2 + text.len();
    let mut dst = BytesMut::with_capacity(HEADER_LEN + payload_len);
    put_header(&mut dst, opcode::DIRECT_MESSAGE, payload_len);
    put_short(&mut dst, sender);
    put_long(&mut dst, text);
    dst.freeze()
}

pub(super) fn put_short(dst: &mut BytesMut, field: &[u8]) {
    let len = u8::try_from(field.len()).expect("name longer than 255 bytes");
    dst.put_u8(len);
    dst.extend_from_slice(field);
}

pub(super) fn put_long(dst: &mut BytesMut, field: &[u8]) {
    let len = u16::try_from(field.len()).expect("text longer than 65535 bytes");
    dst.put_u16(len);
    dst.extend_from_slice(field);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: u8, payload: &[u8]) -> Frame {
        Frame::new(opcode, Bytes::copy_from_slice(payload))
    }

    #[test]
    fn parses_the_captured_client_frames() {
        let join = frame(opcode::JOIN, b"\x05room2\x06secret");
        assert_eq!(
            ClientMessage::parse(&join).unwrap(),
            ClientMessage::Join {
                room: Bytes::from_static(b"room2"),
                password: Bytes::from_static(b"secret"),
            }
        );
        let dm = frame(opcode::DIRECT_MESSAGE, b"\x03bob\x00\x0chi there bob");
        assert_eq!(
            ClientMessage::parse(&dm).unwrap(),
            ClientMessage::DirectMessage {
                target: Bytes::from_static(b"bob"),
                text: Bytes::from_static(b"hi there bob"),
            }
        );
        let void = frame(opcode::ROOM_MESSAGE, b"\x00\x00\x03abc");
        assert_eq!(
            ClientMessage::parse(&void).unwrap(),
            ClientMessage::RoomMessage {
                room: Bytes::new(),
                text: Bytes::from_static(b"abc"),
            }
        );
    }

    #[test]
    fn inner_lengths_must_fill_the_frame_exactly() {
        for payload in [&b"\x05alic"[..], b"\x05alicee", b"", b"\x00\x00"] {
            assert_eq!(
                ClientMessage::parse(&frame(opcode::NICK, payload)),
                Err(ParseError::BadLengths { name: "NICK" }),
                "{payload:?}"
            );
        }
        assert!(ClientMessage::parse(&frame(opcode::LEAVE, b"x")).is_err());
        assert!(ClientMessage::parse(&frame(opcode::ROOM_MESSAGE, b"\x01r\x00\x02a")).is_err());
        assert_eq!(
            ClientMessage::parse(&frame(0x77, b"")),
            Err(ParseError::UnknownOpcode(0x77))
        );
    }

    #[test]
    fn hello_payload_is_never_interpreted() {
        for payload in [&b""[..], b"Xin ch\xc3\xa0o. Bonghjornu.", &[0xff; 300]] {
            assert!(matches!(
                ClientMessage::parse(&frame(opcode::HELLO, payload)),
                Ok(ClientMessage::Hello { .. })
            ));
        }
    }

    #[test]
    fn encodes_the_captured_server_frames() {
        let relay = encode_room_message(b"lobby", b"alice", b"hello from alice");
        let mut expected = vec![0, 0, 0, 0x1e, 4, 0x17, 0x15, 5];
        expected.extend_from_slice(b"lobby\x05alice\x00\x10hello from alice");
        assert_eq!(relay.as_ref(), expected.as_slice());

        let empty_list = encode_name_list(std::iter::empty());
        assert_eq!(empty_list.as_ref(), &[0, 0, 0, 1, 4, 0x17, 0x9a, 0]);
        assert_eq!(OK_RESPONSE, empty_list);

        let hello = ServerMessage::Response {
            status: Status::Ok as u8,
            data: Bytes::from_static(b"rand0"),
        }
        .encode();
        assert_eq!(hello.as_ref(), b"\x00\x00\x00\x06\x04\x17\x9a\x00rand0");
    }
}
