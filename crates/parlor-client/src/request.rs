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
pub enum QueuedRequest {
    /// HELLO, first on every connection: its reply names us.
    Hello,
    /// REGISTER_KEY (`81`), right after HELLO unless `--legacy`.
    RegisterKey,
    /// NICK, or SIGNED_NICK (`96`) once the connection is secure.
    Nick(Vec<u8>),
    /// JOIN.
    Join {
        /// The room to join or create.
        room: Vec<u8>,
        /// Empty for a room without one.
        password: Vec<u8>,
    },
    /// LEAVE: the room, or outside one, the server.
    Leave,
    /// LIST_USERS.
    ListUsers,
    /// LIST_ROOMS.
    ListRooms,
    /// A DM, sealed when it is sent.
    Dm {
        /// Who it is for.
        target: Vec<u8>,
        /// What to say.
        text: Vec<u8>,
        /// The user asked for it in clear (`\plainmsg`).
        plaintext: bool,
    },
    /// A room message, sealed when it is sent in a secure room.
    Say {
        /// What to say.
        text: Vec<u8>,
        /// The user asked for it in clear (`\plain`).
        plaintext: bool,
    },
    /// A file hashed and ready to offer; signed when it is sent, under the
    /// key current at that moment.
    FileOffer(Box<PreparedFile>),
    /// Our answer to an offer; a decline also goes out unasked for an offer
    /// that failed its checks.
    FileDecision {
        /// The transfer id.
        id: u32,
        /// Accept, or decline.
        accept: bool,
    },
    /// FILE_DONE, after the last chunk of a file we send.
    FileDone {
        /// The transfer id.
        id: u32,
    },
    /// Asks for the rest of a file after a reconnect.
    FileResume {
        /// The transfer id; the token is taken from the file when it is
        /// sent.
        id: u32,
    },
    /// Sent after the transfer was already given up locally: its answer is
    /// not shown.
    FileCancel {
        /// The transfer id.
        id: u32,
    },
    /// Waits its turn like a request, as in the legacy client, but sends
    /// nothing: it closes the connection.
    Disconnect,
    /// Like [`QueuedRequest::Disconnect`], then exits.
    Quit,
}

/// The request on the wire, waiting for its `9a`: what the reply means
/// depends on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InFlight {
    /// Its success carries our name.
    Hello,
    /// Its success makes the connection secure, and resumes files.
    RegisterKey,
    /// The name asked for, ours once the server agrees.
    Nick(Vec<u8>),
    /// `secure` and `incarnation` are learned from the `91`/`93` that
    /// precedes the `9a 00`.
    Join {
        /// The room asked for.
        room: Vec<u8>,
        /// The room is a secure one, as far as the server has said yet.
        secure: bool,
        /// Which room of that name it is (0 for a plaintext room).
        incarnation: u64,
    },
    /// Its success says whether we left a room or the server.
    Leave,
    /// Its success carries the names.
    ListUsers,
    /// Its success carries the names.
    ListRooms,
    /// A DM, echoed once the server takes it.
    Dm {
        /// Who it is for.
        target: Vec<u8>,
        /// What was said, as typed, for the echo.
        text: Vec<u8>,
        /// It went out sealed.
        encrypted: bool,
    },
    /// A DM_KEY_REQUEST sent on behalf of a DM, which goes out once the key
    /// is here.
    DmKey {
        /// Who the key is asked for.
        target: Vec<u8>,
        /// The DM waiting for it.
        text: Vec<u8>,
    },
    /// A room message, echoed once the server takes it.
    Say {
        /// The room it was said in (empty outside one).
        room: Vec<u8>,
        /// What was said, as typed, for the echo.
        text: Vec<u8>,
        /// It went out sealed.
        encrypted: bool,
    },
    /// The offer being made is kept by the session's file state; its id
    /// comes with the `8a` before the `9a 00`.
    FileOffer,
    /// A DM_KEY_REQUEST sent on behalf of a file to one user.
    FileDmKey(Box<PreparedFile>),
    /// Our answer to an offer. The `8b` before the `9a 00` to an accept
    /// carries the file's resume token.
    FileDecision {
        /// The transfer id.
        id: u32,
        /// Accept, or decline.
        accept: bool,
    },
    /// FILE_DONE; its news is the `8e` or `8f` that follows.
    FileDone {
        /// The transfer id.
        id: u32,
    },
    /// FILE_RESUME; a refusal deletes the partial file.
    FileResume {
        /// The transfer id.
        id: u32,
    },
    /// FILE_CANCEL, for a file already given up here.
    FileCancel {
        /// The transfer id.
        id: u32,
    },
}
