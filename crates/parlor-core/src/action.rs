//! What the hub asks its driver to do: the outputs of the contract stated
//! in the crate's documentation, and the jobs that are run off the event
//! loop.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use zeroize::Zeroizing;

use crate::{
    ConnId, DirectRelay, DmKeyAnswer, DmKeyRelay, EpochCommit, FileRelay, FileTargetAsk,
    KeyWrapJob, MemberFrames, MemberRename, NameClaim, RelayTarget, RoomEntry, UserFrame,
};

/// What the hub asks its driver to do.
#[derive(Debug)]
pub enum Action {
    /// Queue encoded frames for a connection: usually one frame; a secure
    /// JOIN's reply is several frames in one buffer. A notice for several
    /// connections (a peer's key, a file chunk) is encoded once, and the
    /// same `Bytes` goes in each of their `Send`s.
    Send {
        /// The connection.
        to: ConnId,
        /// Whole frames, header included.
        frame: Bytes,
    },
    /// Queue one frame for every connection in `to` except `except`: a room
    /// message, encoded once, for the members of the moment.
    Broadcast {
        /// The room's members when the message was accepted; shared with
        /// the room until its membership changes, so a shell can tell a run
        /// of broadcasts to the same members by pointer.
        to: Arc<Vec<ConnId>>,
        /// The sender, who gets no copy (PROTOCOL.md §2, rule 6); `None`
        /// for a message relayed from another node, whose sender is there.
        except: Option<ConnId>,
        /// The frame, encoded once for all of them.
        frame: Bytes,
    },
    /// Flush what is queued for the connection, then close it. The hub has
    /// already forgotten the user.
    Close {
        /// The connection.
        conn: ConnId,
        /// Why, for the log.
        reason: CloseReason,
    },
    /// Run an argon2id computation off the event loop and report back with
    /// [`Hub::password_checked`](crate::Hub::password_checked). Until then the connection's reply is owed,
    /// so the driver reads no further requests from it.
    Password(PasswordJob),
    /// Generate a key and wrap it for each recipient off the event loop,
    /// then report back with [`Hub::keys_wrapped`](crate::Hub::keys_wrapped). A job with a requester
    /// owes that connection its reply, as a password job does.
    WrapKeys(KeyWrapJob),
    /// Claim a name in the cluster's store and report back with
    /// [`Hub::name_claimed`](crate::Hub::name_claimed); the connection's
    /// reply waits for it, as for a password job. Only a
    /// [`Hub::clustered`](crate::Hub::clustered) hub asks for it.
    ClaimName(NameClaim),
    /// Release a name in the cluster's store: nobody here holds it any
    /// more. Carried out after every claim asked for before it, so a name
    /// released and claimed again goes to its new holder.
    ReleaseName(Bytes),
    /// Enter a room in the cluster's store (creating it, or joining it as
    /// the hub judged it), and report back with
    /// [`Hub::room_entered`](crate::Hub::room_entered); the connection's
    /// reply waits for it. Cluster mode only.
    EnterRoom(Box<RoomEntry>),
    /// Take `member` out of `room` in the cluster's store, deleting the
    /// room if it was the last member anywhere; after every entry asked for
    /// before. Cluster mode only.
    LeaveRoom {
        /// The room.
        room: Bytes,
        /// The member's name.
        member: Bytes,
    },
    /// A member of a room was renamed: change its name in the room's
    /// record, after every entry asked for before. Cluster mode only.
    RenameMember(Box<MemberRename>),
    /// Relay a room message to the other nodes serving members of its
    /// room: one copy per node, which queues it for its own members.
    /// Cluster mode only.
    Relay {
        /// The room and the nodes.
        to: Arc<RelayTarget>,
        /// The frame, as encoded for the members here.
        frame: Bytes,
    },
    /// Write a room key's epoch into its room's record, and report back
    /// with [`Hub::epoch_committed`](crate::Hub::epoch_committed); the key
    /// is delivered only then. Nobody's reply waits for it. Cluster mode
    /// only.
    CommitEpoch(Box<EpochCommit>),
    /// Relay frames for some members of a room to the node serving them,
    /// in the same order as [`Action::Relay`]s to it: a room's keys,
    /// wrapped for its members there. Cluster mode only.
    RelayToMembers(Box<MemberFrames>),
    /// Relay a frame of a file transfer that runs here to a recipient
    /// served by another node, in order with the other relays to that
    /// node. Cluster mode only.
    RelayToUser(Box<UserFrame>),
    /// Send a user's file request about a transfer that runs on another
    /// node there; with a ticket, the user's reply waits for the answer
    /// ([`Hub::file_request_relayed`](crate::Hub::file_request_relayed)).
    /// Cluster mode only.
    RelayFileRequest(Box<FileRelay>),
    /// Ask the node of a file's target whose key the target holds, and
    /// report back with
    /// [`Hub::file_target_answered`](crate::Hub::file_target_answered);
    /// the sender's reply waits for it. Cluster mode only.
    AskFileTarget(Box<FileTargetAsk>),
    /// Answer the file request that another node sent as `ask`
    /// ([`Hub::relayed_file_request`](crate::Hub::relayed_file_request))
    /// with `frames`, what the transfer answered. Cluster mode only.
    AnswerFileRequest {
        /// The request's number, as the driver gave it.
        ask: u64,
        /// The frames for the user who asked.
        frames: Bytes,
    },
    /// Hand a DM to the node serving its target, and report back with
    /// [`Hub::direct_relayed`](crate::Hub::direct_relayed); the sender's
    /// reply waits for it. Cluster mode only.
    RelayDirect(Box<DirectRelay>),
    /// Send a DM_KEY_REQUEST to the node serving its target, and report
    /// back with [`Hub::dm_key_relayed`](crate::Hub::dm_key_relayed); the
    /// requester's reply waits for it. Cluster mode only.
    RelayDmKey(Box<DmKeyRelay>),
    /// Answer the DM_KEY_REQUEST that another node sent as `ask`
    /// ([`Hub::relayed_dm_key_request`](crate::Hub::relayed_dm_key_request)).
    /// Cluster mode only.
    AnswerDmKey {
        /// The request's number, as the driver gave it.
        ask: u64,
        /// What its requester is to be told.
        answer: DmKeyAnswer,
    },
}

impl Action {
    /// The frames this action queues, as (recipient, frame), in order.
    pub fn frames(&self) -> impl Iterator<Item = (ConnId, &Bytes)> {
        let (one, many) = match self {
            Action::Send { to, frame } => (Some((*to, frame)), None),
            Action::Broadcast { to, except, frame } => {
                let others = to.iter().filter(move |member| Some(**member) != *except);
                (None, Some(others.map(move |member| (*member, frame))))
            }
            _ => (None, None),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    /// Whether this is work that the calling connection's reply waits for:
    /// the driver reads no further request from it until the work is done.
    pub fn owes_reply(&self) -> bool {
        match self {
            Action::Password(_)
            | Action::ClaimName(_)
            | Action::EnterRoom(_)
            | Action::RelayDirect(_)
            | Action::RelayDmKey(_)
            | Action::AskFileTarget(_) => true,
            Action::WrapKeys(job) => job.requester.is_some(),
            Action::RelayFileRequest(relay) => relay.ticket.is_some(),
            Action::Send { .. }
            | Action::Broadcast { .. }
            | Action::Close { .. }
            | Action::ReleaseName(_)
            | Action::LeaveRoom { .. }
            | Action::RenameMember(_)
            | Action::Relay { .. }
            | Action::CommitEpoch(_)
            | Action::RelayToMembers(_)
            | Action::RelayToUser(_)
            | Action::AnswerFileRequest { .. }
            | Action::AnswerDmKey { .. } => false,
        }
    }
}

/// Why a connection ended; shown in logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed the connection.
    ClientClosed,
    /// LEAVE while in no room: the client expects the server to hang up.
    LeftServer,
    /// The client sent something that is not a valid frame or message.
    Malformed,
    /// Nothing heard from the client within the idle timeout.
    IdleTimeout,
    /// The client did not read fast enough and its send queue overflowed.
    SlowConsumer,
    /// The connection limit was reached.
    ServerFull,
    /// The per-address connection limit was reached.
    TooManyFromAddress,
    /// No complete frame within the handshake timeout.
    HandshakeTimeout,
    /// The server is shutting down.
    Shutdown,
    /// Reading from or writing to the socket failed.
    IoError,
    /// The driver found the hub breaking its own contract (a bug); logged.
    Internal,
    /// Cluster mode: the cluster's store did not answer, so the connection
    /// could get no name, or the node lost its lease and let everyone go.
    ClusterUnavailable,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CloseReason::ClientClosed => "client closed the connection",
            CloseReason::LeftServer => "left the server",
            CloseReason::Malformed => "malformed input",
            CloseReason::IdleTimeout => "idle timeout",
            CloseReason::SlowConsumer => "send queue overflow (slow consumer)",
            CloseReason::ServerFull => "connection limit reached",
            CloseReason::TooManyFromAddress => "per-address connection limit reached",
            CloseReason::HandshakeTimeout => "no complete frame within the handshake timeout",
            CloseReason::Shutdown => "server shutdown",
            CloseReason::IoError => "socket error",
            CloseReason::Internal => "internal error",
            CloseReason::ClusterUnavailable => "the cluster is unavailable",
        })
    }
}

/// An argon2id computation the hub needs done.
#[derive(Debug)]
pub struct PasswordJob {
    /// The connection whose JOIN waits for it.
    pub conn: ConnId,
    /// Echoed back in [`Hub::password_checked`](crate::Hub::password_checked) so a late answer for an old
    /// request is recognised and dropped.
    pub ticket: u64,
    /// What to compute.
    pub task: PasswordTask,
}

/// The argon2id computation itself.
#[derive(Debug)]
pub enum PasswordTask {
    /// Hash a new room's password into a PHC string with a fresh salt.
    Hash {
        /// The password the JOIN gave, wiped when dropped.
        password: Zeroizing<Vec<u8>>,
    },
    /// Check a password against a room's PHC string, in constant time.
    Verify {
        /// The password the JOIN gave, wiped when dropped.
        password: Zeroizing<Vec<u8>>,
        /// The room's PHC string, made by an earlier `Hash`.
        phc: Arc<str>,
    },
}

/// The result of a [`PasswordJob`].
#[derive(Debug)]
pub enum PasswordOutcome {
    /// A `Hash` job's PHC string.
    Hashed(Arc<str>),
    /// Whether a `Verify` job's password matched.
    Verified(bool),
    /// The hashing queue was full; the client is told to try later.
    Busy,
    /// Hashing failed (a bug or a corrupt hash); logged by the driver.
    Failed,
}
