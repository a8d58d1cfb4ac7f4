//! The legacy client's rules (PROTOCOL.md §2), written once as code.
//!
//! The real C++ client aborts, freezes or drops the connection on several
//! frames a server could easily send. [`check`] says whether one server
//! frame is safe for a reader, and what it is; [`Conversation`] follows one
//! connection's requests and replies, for the rules about *when* a `9a` may
//! come. The fuzzer, the replay tool and the tests all judge the server's
//! output with these, so a rule changed here is changed for all of them.

use std::collections::VecDeque;
use std::fmt;

use bytes::Bytes;

use crate::legacy::opcode;
use crate::secure::is_secure_only;
use crate::transfer::opcode::{FILE_ACK, FILE_CHUNK};
use crate::{Frame, ServerMessage, Status, HEADER_LEN, MAGIC};

/// The status `9a 03`: the legacy client reads it as answering nothing, so
/// a server never sends it.
const ANSWERS_NOTHING: u8 = 0x03;

/// Who reads a frame: the legacy client knows only `9a`, `15` and `12`
/// (rule 5); a connection that registered a key also reads the secure
/// extension's frames (PROTOCOL.md §12).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reader {
    /// A legacy client.
    Legacy,
    /// A client that registered a key.
    Secure,
}

/// What a frame that keeps the rules is, to its reader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// A `9a` reply with this status.
    Response {
        /// The status byte: never `03` (rule 1).
        status: u8,
    },
    /// A room message relayed from another member of `room`.
    RoomMessage {
        /// The room it was said in.
        room: Bytes,
    },
    /// A DM.
    DirectMessage,
    /// A frame of the secure extension, file transfer among them.
    Secure,
}

/// A frame or a reply that breaks one of the rules.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuleBreak {
    /// Fewer than the 7 bytes of a header.
    #[error("a frame shorter than its 7-byte header")]
    ShortHeader,
    /// The length field does not give the bytes that follow it.
    #[error("a length field of {declared} for {actual} payload bytes")]
    LengthMismatch {
        /// What the length field says.
        declared: usize,
        /// The payload bytes there are.
        actual: usize,
    },
    /// Rule 3.
    #[error("a frame of length 0, which stalls the legacy client's reader for good")]
    Empty,
    /// The two bytes after the length are not `04 17`.
    #[error("a bad magic {0:02x?}")]
    BadMagic([u8; 2]),
    /// Rule 1: `9a 03` answers nothing.
    #[error("9a 03, which answers nothing and is never sent")]
    StatusAnswersNothing,
    /// Rule 5.
    #[error("opcode {0:02x}, which the legacy client drops the connection on")]
    UnknownOpcode(u8),
    /// Rule 5: a legacy client drops the connection on these too.
    #[error(
        "opcode {0:02x} of the secure extension, which the legacy client drops the connection on"
    )]
    SecureToLegacy(u8),
    /// A `15` or `12` whose inner lengths do not add up.
    #[error("inner lengths that do not add up: the legacy client drops the connection")]
    Unparsable,
    /// Rule 2.
    #[error("9a 00 with no request pending: the legacy client aborts on it")]
    UnsolicitedSuccess,
    /// Rules 1 and 4.
    #[error("9a {0:02x} with no request pending (a reply to a heartbeat?)")]
    UnsolicitedReply(u8),
}

/// Every rule one frame breaks, in the order they are checked; never
/// none. A report lists them all (an empty `12` is both too short for the
/// reader and unparsable); a test shows them joined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Breaks(pub Vec<RuleBreak>);

impl fmt::Display for Breaks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, broken) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{broken}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Breaks {}

impl From<RuleBreak> for Breaks {
    fn from(broken: RuleBreak) -> Breaks {
        Breaks(vec![broken])
    }
}

/// Checks one whole frame, as bytes on the wire, for `reader`.
pub fn check(wire: &[u8], reader: Reader) -> Result<Delivery, Breaks> {
    let header = wire.get(..HEADER_LEN).ok_or(RuleBreak::ShortHeader)?;
    let declared = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let actual = wire.len() - HEADER_LEN;
    if declared != actual {
        return Err(RuleBreak::LengthMismatch { declared, actual }.into());
    }
    if header[4..6] != MAGIC {
        return Err(RuleBreak::BadMagic([header[4], header[5]]).into());
    }
    let frame = Frame::new(header[6], Bytes::copy_from_slice(&wire[HEADER_LEN..]));
    check_frame(&frame, reader)
}

/// Checks one decoded frame for `reader`: what it is, or every rule it
/// breaks.
pub fn check_frame(frame: &Frame, reader: Reader) -> Result<Delivery, Breaks> {
    let mut breaks = Vec::new();
    if frame.payload.is_empty() {
        breaks.push(RuleBreak::Empty);
    }
    let judged = match frame.opcode {
        opcode::RESPONSE => match frame.payload.first() {
            // Rule 3 alone: a `9a` with no status byte.
            None => None,
            Some(&ANSWERS_NOTHING) => Some(Err(RuleBreak::StatusAnswersNothing)),
            Some(&status) => Some(Ok(Delivery::Response { status })),
        },
        opcode::ROOM_MESSAGE | opcode::DIRECT_MESSAGE => Some(match ServerMessage::parse(frame) {
            Ok(ServerMessage::RoomMessage { room, .. }) => Ok(Delivery::RoomMessage { room }),
            Ok(_) => Ok(Delivery::DirectMessage),
            Err(_) => Err(RuleBreak::Unparsable),
        }),
        other if is_secure_only(other) => Some(match reader {
            Reader::Legacy => Err(RuleBreak::SecureToLegacy(other)),
            Reader::Secure => match ServerMessage::parse(frame) {
                Ok(_) => Ok(Delivery::Secure),
                Err(_) => Err(RuleBreak::Unparsable),
            },
        }),
        other => Some(Err(RuleBreak::UnknownOpcode(other))),
    };
    match judged {
        Some(Ok(delivery)) if breaks.is_empty() => Ok(delivery),
        Some(Err(broken)) => {
            breaks.push(broken);
            Err(Breaks(breaks))
        }
        _ => Err(Breaks(breaks)),
    }
}

/// Cuts a buffer the server hands one connection into its frames: one
/// buffer may hold several (a secure JOIN's reply), and each must stand on
/// its own.
pub fn split_frames(buffer: &Bytes) -> Result<Vec<Bytes>, RuleBreak> {
    let mut frames = Vec::new();
    let mut rest = buffer.clone();
    while !rest.is_empty() {
        if rest.len() < HEADER_LEN {
            return Err(RuleBreak::ShortHeader);
        }
        let declared = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if rest.len() < HEADER_LEN + declared {
            return Err(RuleBreak::LengthMismatch {
                declared,
                actual: rest.len() - HEADER_LEN,
            });
        }
        frames.push(rest.split_to(HEADER_LEN + declared));
    }
    Ok(frames)
}

/// Whether a client frame is a request, owed exactly one `9a`: everything
/// but a heartbeat (rule 4) and the well-formed file chunks and acks, which
/// stream without a reply (PROTOCOL.md §14.1).
pub fn is_request(frame: &Frame) -> bool {
    match frame.opcode {
        opcode::HEARTBEAT => false,
        FILE_CHUNK => frame.payload.len() < 8,
        FILE_ACK => frame.payload.len() != 8,
        _ => true,
    }
}

/// One connection's requests in flight, oldest first, to match each `9a`
/// to the request it answers (rules 1, 2 and 4).
///
/// A request is whatever the client sent that is owed a reply: a frame's
/// opcode, or `None` for bytes that are no frame (parlor answers them
/// before it closes the connection).
#[derive(Clone, Debug, Default)]
pub struct Conversation {
    unanswered: VecDeque<Option<u8>>,
}

impl Conversation {
    /// The client sent a request: a frame with `opcode`, or `None` for bytes
    /// that are no frame.
    pub fn asked(&mut self, opcode: Option<u8>) {
        self.unanswered.push_back(opcode);
    }

    /// A `9a` with `status` arrived: returns the request it answers.
    pub fn answered(&mut self, status: u8) -> Result<Option<u8>, RuleBreak> {
        match self.unanswered.pop_front() {
            Some(request) => Ok(request),
            None if status == Status::Ok as u8 => Err(RuleBreak::UnsolicitedSuccess),
            None => Err(RuleBreak::UnsolicitedReply(status)),
        }
    }

    /// Requests not answered yet.
    pub fn pending(&self) -> usize {
        self.unanswered.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::encode_response;
    use crate::secure::SecureMessage;

    #[test]
    fn each_rule_is_told_apart() {
        let legacy = Reader::Legacy;
        let ok = encode_response(Status::Ok as u8, std::iter::empty::<&[u8]>());
        assert_eq!(check(&ok, legacy), Ok(Delivery::Response { status: 0 }));
        assert_eq!(check(&ok[..6], legacy), Err(RuleBreak::ShortHeader.into()));
        let empty = [0, 0, 0, 0, 0x04, 0x17, 0x9a];
        assert_eq!(check(&empty, legacy), Err(RuleBreak::Empty.into()));
        let pending = [0, 0, 0, 1, 0x04, 0x17, 0x9a, 0x03];
        assert_eq!(
            check(&pending, legacy),
            Err(RuleBreak::StatusAnswersNothing.into())
        );
        let bad_magic = [0, 0, 0, 1, 0x04, 0x18, 0x9a, 0x00];
        assert_eq!(
            check(&bad_magic, legacy),
            Err(RuleBreak::BadMagic([0x04, 0x18]).into())
        );
        let lying = [0, 0, 0, 2, 0x04, 0x17, 0x9a, 0x00];
        assert_eq!(
            check(&lying, legacy),
            Err(RuleBreak::LengthMismatch {
                declared: 2,
                actual: 1
            }
            .into())
        );
        let hello = [0, 0, 0, 1, 0x04, 0x17, 0x9b, 0x00];
        assert_eq!(
            check(&hello, legacy),
            Err(RuleBreak::UnknownOpcode(0x9b).into())
        );
        let room_key = SecureMessage::RoomKey {
            room: Bytes::from_static(b"vault"),
            incarnation: 1,
            epoch: 1,
            wrapped: Bytes::from_static(b"key"),
        }
        .encode();
        assert_eq!(
            check(&room_key, legacy),
            Err(RuleBreak::SecureToLegacy(0x84).into())
        );
        assert_eq!(check(&room_key, Reader::Secure), Ok(Delivery::Secure));
        let empty_dm = [0, 0, 0, 0, 0x04, 0x17, 0x12];
        let both = Breaks(vec![RuleBreak::Empty, RuleBreak::Unparsable]);
        assert_eq!(check(&empty_dm, legacy), Err(both));
        let cut_room_message = [0, 0, 0, 2, 0x04, 0x17, 0x15, 0x05, 0x61];
        assert_eq!(
            check(&cut_room_message, legacy),
            Err(RuleBreak::Unparsable.into())
        );
    }

    #[test]
    fn a_reply_needs_a_request() {
        let mut conversation = Conversation::default();
        assert_eq!(conversation.answered(0), Err(RuleBreak::UnsolicitedSuccess));
        assert_eq!(
            conversation.answered(1),
            Err(RuleBreak::UnsolicitedReply(1))
        );
        conversation.asked(Some(opcode::NICK));
        conversation.asked(None);
        assert_eq!(conversation.pending(), 2);
        assert_eq!(conversation.answered(0), Ok(Some(opcode::NICK)));
        assert_eq!(conversation.answered(2), Ok(None));
    }

    /// ROOM_REKEYING is a frame of the extension like ROOM_KEY: fine for a
    /// secure reader, fatal to a legacy one.
    #[test]
    fn room_rekeying_is_for_secure_readers_only() {
        let rekeying = SecureMessage::RoomRekeying {
            room: Bytes::from_static(b"vault"),
            incarnation: 1,
            next_epoch: 2,
        }
        .encode();
        assert_eq!(check(&rekeying, Reader::Secure), Ok(Delivery::Secure));
        assert_eq!(
            check(&rekeying, Reader::Legacy),
            Err(RuleBreak::SecureToLegacy(0x95).into())
        );
        let cut = &rekeying[..rekeying.len() - 1];
        let mut cut = cut.to_vec();
        cut[3] -= 1;
        assert_eq!(
            check(&cut, Reader::Secure),
            Err(RuleBreak::Unparsable.into())
        );
    }

    /// SIGNED_NICK is a request like NICK: it is owed exactly one `9a`.
    #[test]
    fn a_signed_nick_is_a_request() {
        let signed_nick = crate::ClientMessage::SignedNick {
            name: Bytes::from_static(b"bob"),
            name_proof: [0; 64],
        }
        .to_frame();
        assert!(is_request(&signed_nick));
        let mut conversation = Conversation::default();
        conversation.asked(Some(signed_nick.opcode));
        assert_eq!(
            conversation.answered(0),
            Ok(Some(crate::secure::opcode::SIGNED_NICK))
        );
        assert_eq!(conversation.answered(0), Err(RuleBreak::UnsolicitedSuccess));
    }

    #[test]
    fn heartbeats_chunks_and_acks_are_not_requests() {
        let frame = |opcode, len| Frame::new(opcode, Bytes::from(vec![0; len]));
        assert!(!is_request(&frame(opcode::HEARTBEAT, 32)));
        assert!(!is_request(&frame(FILE_CHUNK, 8)));
        assert!(is_request(&frame(FILE_CHUNK, 7)));
        assert!(!is_request(&frame(FILE_ACK, 8)));
        assert!(is_request(&frame(FILE_ACK, 9)));
        assert!(is_request(&frame(opcode::NICK, 4)));
    }
}
