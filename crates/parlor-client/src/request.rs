//! The legacy client's request discipline, which the reference client keeps:
//! one request on the wire at a time, everything else waiting in line.
//!
//! The server answers every request with exactly one `9a`, always the last
//! frame of its reply (PROTOCOL.md §2 and §12.1), so "the next `9a` answers
//! the request in flight" is all the bookkeeping a client needs, and the
//! frames that belong to the reply (`89`, `90`–`94`) are read before it.
//!
//! File requests keep the discipline too: an offer, a decision, FILE_DONE,
//! a resume or a cancel waits its turn like any request. Chunks and acks
//! are never answered with a `9a` (PROTOCOL.md §14), so they stream outside
//! the queue.

use super::transfer::PreparedFile;

/// A request waiting its turn. It becomes frames only when it is sent, so
/// that a room message is sealed under the key current at that moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Hello,
    RegisterKey,
    Nick(Vec<u8>),
    Join {
        room: Vec<u8>,
        password: Vec<u8>,
    },
    Leave,
    ListUsers,
    ListRooms,
    /// `plaintext`: the user was warned that `target` has no key.
    Dm {
        target: Vec<u8>,
        text: Vec<u8>,
        plaintext: bool,
    },
    Say(Vec<u8>),
    /// A file hashed and ready to offer; signed when it is sent, under the
    /// key current at that moment.
    FileOffer(Box<PreparedFile>),
    FileDecision {
        id: u32,
        accept: bool,
    },
    FileDone {
        id: u32,
    },
    /// Asks for the rest of a file after a reconnect.
    FileResume {
        id: u32,
    },
    /// Sent after the transfer was already given up locally: its answer is
    /// not shown.
    FileCancel {
        id: u32,
    },
    /// Waits its turn like a request, as in the legacy client, but sends
    /// nothing: it closes the connection.
    Disconnect,
    Quit,
}

/// The request on the wire, waiting for its `9a`: what the reply means
/// depends on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pending {
    Hello,
    RegisterKey,
    Nick(Vec<u8>),
    /// `secure` is learned from the `91`/`93` that precedes the `9a 00`.
    Join {
        room: Vec<u8>,
        secure: bool,
    },
    Leave,
    ListUsers,
    ListRooms,
    Dm {
        target: Vec<u8>,
        text: Vec<u8>,
        secure: bool,
    },
    /// A DM_KEY_REQUEST sent on behalf of a DM, which goes out once the key
    /// is here.
    DmKey {
        target: Vec<u8>,
        text: Vec<u8>,
    },
    Say {
        room: Vec<u8>,
        text: Vec<u8>,
        secure: bool,
    },
    /// The offer being made is kept by the session's file state; its id
    /// comes with the `8a` before the `9a 00`.
    FileOffer,
    /// A DM_KEY_REQUEST sent on behalf of a file to one user.
    FileDmKey(Box<PreparedFile>),
    FileDecision {
        id: u32,
        accept: bool,
    },
    FileDone {
        id: u32,
    },
    FileResume {
        id: u32,
    },
    FileCancel {
        id: u32,
    },
}
