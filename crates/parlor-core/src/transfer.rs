//! Chunked file transfer (PROTOCOL.md §14): the sans-IO state machine.
//!
//! [`Transfers`] holds every transfer in progress. Like the hub, it owns no
//! socket and reads no clock: each event comes with the current time, and
//! what should be sent is appended to a `Vec<Action>`. The hub decides who
//! may take part (secure members of the sender's room, or one secure user);
//! this module runs the transfer itself.
//!
//! A transfer goes through two phases:
//!
//! ```text
//!  offer ──► Deciding ──(everyone decided, or the decision timeout)──► Sending ──► finished
//!               │                                                       │
//!               └──► ended: nobody accepted                             └──► ended: sender left,
//!                                                                            cancelled, stalled,
//!                                                                            no recipients left
//! ```
//!
//! and each recipient through its own stages: undecided, then receiving
//! (after accepting), possibly detached (disconnected, resumable for the
//! decision timeout), and out (declined, too slow, left, gave up).
//!
//! The notes' stop-and-wait becomes a window: the sender may have up to W
//! chunks beyond the highest chunk every receiving recipient acknowledged,
//! and the server tells it that mark (`8d`) each time it moves. The server
//! keeps exactly the chunks inside the window (to resend them on resume),
//! never more, so its memory does not grow with the file.
//!
//! The notes' bitmap per recipient is kept compressed: a count of chunks
//! acknowledged from the start, plus one bit for each chunk of the window
//! beyond it. No chunk outside the window can be in flight, so this is the
//! whole bitmap in 12 bytes, whatever the file's size.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use subtle::ConstantTimeEq;
use tracing::{debug, info};

use super::{send, Action, ConnId};
use parlor_proto::legacy::OK_RESPONSE;
use parlor_proto::printable::Printable;
use parlor_proto::secure::{Fingerprint, Identity};
use parlor_proto::text;
use parlor_proto::transfer::opcode::FILE_CHUNK;
use parlor_proto::transfer::{
    encode_chunk, EndReason, FileMeta, FileNotice, CHUNK_HEADER_LEN, TOKEN_LEN,
};
use parlor_proto::{Status, HEADER_LEN};

/// The most a sealed chunk's data exceeds its plaintext: a 16-byte IV, up to
/// 16 bytes of padding and a 32-byte MAC (PROTOCOL.md §14.6).
pub const CHUNK_SEAL_OVERHEAD: usize = 64;

/// The limits of file transfer, part of the hub's [`Limits`](crate::Limits).
#[derive(Clone, Debug)]
pub struct TransferLimits {
    /// The largest file that may be offered (`max_file_bytes`).
    pub max_file_bytes: u64,
    /// The largest chunk a sender may choose (`max_chunk_bytes`).
    pub max_chunk_bytes: u32,
    /// The widest window a transfer gets (`max_transfer_window`).
    pub max_window: u8,
    /// Transfers one user may have going at once.
    pub max_per_user: usize,
    /// Transfers the whole server may have going at once.
    pub max_total: usize,
    /// How long a recipient has to accept or decline, or to resume.
    pub decision_timeout: Duration,
    /// How long a chunk may go unacknowledged before its recipient is
    /// dropped as a laggard.
    pub ack_timeout: Duration,
}

/// A file offer the hub has checked: who sends it, and who is asked.
#[derive(Debug)]
pub struct Offer {
    /// The sender's connection.
    pub sender: ConnId,
    /// The sender's nick, for the recipients' FILE_OFFERED.
    pub sender_name: Bytes,
    /// The sender's identity block, for checking the signature.
    pub sender_identity: Identity,
    /// The room it is offered in; `None` for a file to one user.
    pub room: Option<Bytes>,
    /// Secure connections asked to accept.
    pub recipients: Vec<OfferRecipient>,
    /// Members who cannot receive files (legacy connections).
    pub skipped: Vec<Bytes>,
    /// The file as the sender describes it.
    pub meta: FileMeta,
    /// The window the sender asked for.
    pub window: u8,
}

/// A secure connection asked to accept an offer.
#[derive(Debug)]
pub struct OfferRecipient {
    /// Its connection.
    pub conn: ConnId,
    /// Its name, in the notices about it.
    pub name: Bytes,
    /// Its identity: only a connection with this fingerprint may resume in
    /// its place.
    pub fingerprint: Fingerprint,
}

/// Why an offer was refused: the status and text of its `9a`.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    /// `01` or `02`.
    pub status: Status,
    /// The text after it.
    pub text: String,
}

fn refuse<T>(status: Status, text: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal {
        status,
        text: text.into(),
    })
}

/// Every transfer in progress. See the module documentation.
#[derive(Debug)]
pub struct Transfers {
    limits: TransferLimits,
    /// Makes resume tokens; seeded by the driver, so the core stays
    /// deterministic.
    rng: StdRng,
    /// Bytes of chunks handed to recipients, for [`Stats`](crate::Stats).
    relayed_bytes: u64,
    /// Senders whose transfer ended lately: their chunk limit, and until
    /// when it lasts (see [`Transfers::linger`]).
    ended_senders: HashMap<ConnId, (usize, Instant)>,
    transfers: HashMap<u32, Transfer>,
    /// The last transfer id handed out; ids count up from 1.
    last_id: u32,
}

#[derive(Debug)]
struct Transfer {
    sender: ConnId,
    room: Option<Bytes>,
    chunk_count: u32,
    /// The largest chunk data the sender may send.
    max_chunk_data: usize,
    window: u8,
    phase: Phase,
    recipients: Vec<Recipient>,
    /// The relayed frames of chunks `base..next_index`: the window, kept to
    /// resend on resume.
    retained: VecDeque<Bytes>,
    /// The number of chunks every receiving recipient has acknowledged.
    base: u32,
    /// The number of chunks the sender has sent.
    next_index: u32,
    /// The sender said it sent every chunk.
    done: bool,
    /// The last time the sender sent something; a sender that owes a chunk
    /// or FILE_DONE for the decision timeout has stalled.
    sender_heard: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Deciding { deadline: Instant },
    Sending,
}

#[derive(Debug)]
struct Recipient {
    name: Bytes,
    /// `None` while detached.
    conn: Option<ConnId>,
    /// Whose key may resume for it.
    fingerprint: Fingerprint,
    token: [u8; TOKEN_LEN],
    stage: Stage,
}

#[derive(Debug)]
enum Stage {
    Undecided,
    Receiving(Progress),
    /// Disconnected after accepting; may resume until `since` plus the
    /// decision timeout.
    Detached {
        progress: Progress,
        since: Instant,
    },
}

/// One recipient's bitmap, compressed (see the module documentation), and
/// how far its stream has got.
#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    /// Chunks `0..acked` are all acknowledged.
    acked: u32,
    /// Bit `i`: chunk `acked + 1 + i` is acknowledged.
    beyond: u64,
    /// Chunks `0..sent` have been relayed to it.
    sent: u32,
    /// Since when it has owed an acknowledgement without making progress.
    waiting_since: Option<Instant>,
}

enum Ack {
    New,
    Duplicate,
    NeverSent,
}

impl Progress {
    fn ack(&mut self, index: u32) -> Ack {
        if index >= self.sent {
            return Ack::NeverSent;
        }
        if index < self.acked {
            return Ack::Duplicate;
        }
        if index > self.acked {
            let bit = 1u64 << (index - self.acked - 1);
            if self.beyond & bit != 0 {
                return Ack::Duplicate;
            }
            self.beyond |= bit;
            return Ack::New;
        }
        self.acked += 1;
        loop {
            let next_acked = self.beyond & 1 == 1;
            self.beyond >>= 1;
            if !next_acked {
                break;
            }
            self.acked += 1;
        }
        Ack::New
    }

    fn owes(&self) -> bool {
        self.acked < self.sent
    }
}

impl Transfer {
    fn receiving(&self) -> impl Iterator<Item = (ConnId, &Progress)> {
        self.recipients
            .iter()
            .filter_map(|recipient| match (&recipient.stage, recipient.conn) {
                (Stage::Receiving(progress), Some(conn)) => Some((conn, progress)),
                _ => None,
            })
    }

    fn position_of(&self, conn: ConnId) -> Option<usize> {
        self.recipients
            .iter()
            .position(|recipient| recipient.conn == Some(conn))
    }

    /// Whether the sender owes the next move: a chunk the window allows, or
    /// FILE_DONE after the last chunk.
    fn sender_owes(&self) -> bool {
        self.phase == Phase::Sending
            && !self.done
            && (self.next_index == self.chunk_count
                || self.next_index < self.base + u32::from(self.window))
    }

    /// The largest frame of this transfer a recipient's queue may hold.
    fn chunk_frame_len(&self) -> usize {
        HEADER_LEN + CHUNK_HEADER_LEN + self.max_chunk_data
    }

    fn deadline(&self, limits: &TransferLimits) -> Option<Instant> {
        let recipients = self
            .recipients
            .iter()
            .filter_map(|recipient| match &recipient.stage {
                Stage::Receiving(progress) => {
                    progress.waiting_since.map(|at| at + limits.ack_timeout)
                }
                Stage::Detached { since, .. } => Some(*since + limits.decision_timeout),
                Stage::Undecided => None,
            });
        match self.phase {
            Phase::Deciding { deadline } => Some(deadline),
            Phase::Sending => recipients
                .chain(
                    self.sender_owes()
                        .then(|| self.sender_heard + limits.decision_timeout),
                )
                .min(),
        }
    }
}

/// `8f` for `who` (empty: everyone), encoded once for all its recipients.
fn ended(id: u32, who: &[u8], reason: EndReason, text: &str) -> Bytes {
    FileNotice::Ended {
        id,
        who: Bytes::copy_from_slice(who),
        reason,
        text: Bytes::copy_from_slice(text.as_bytes()),
    }
    .encode()
}

fn reply_error(out: &mut Vec<Action>, conn: ConnId, text: &str) {
    super::respond(out, conn, Status::Error, text);
}

impl Transfers {
    /// No transfers yet; `rng_seed` seeds the resume tokens.
    pub fn new(limits: TransferLimits, rng_seed: [u8; 32]) -> Transfers {
        Transfers {
            limits,
            rng: StdRng::from_seed(rng_seed),
            relayed_bytes: 0,
            ended_senders: HashMap::new(),
            transfers: HashMap::new(),
            last_id: 0,
        }
    }

    /// Bytes of chunks handed to recipients so far.
    pub fn relayed_bytes(&self) -> u64 {
        self.relayed_bytes
    }

    /// Number of transfers in progress.
    pub fn len(&self) -> usize {
        self.transfers.len()
    }

    /// Whether no transfer is in progress.
    pub fn is_empty(&self) -> bool {
        self.transfers.is_empty()
    }

    /// Checks an offer against the limits, then forwards it: the sender
    /// gets `8a` (naming skipped members) and `9a 00` in one buffer, every
    /// recipient `83`. An offer nobody can receive ends at once.
    pub fn offer(
        &mut self,
        offer: Offer,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> Result<u32, Refusal> {
        self.check_offer(&offer)?;
        let id = self.new_id();
        let window = offer.window.min(self.limits.max_window);
        let meta = &offer.meta;
        info!(id, sender = %Printable(&offer.sender_name), file = %Printable(&meta.name),
              size = meta.size, chunks = meta.chunk_count, recipients = offer.recipients.len(),
              skipped = offer.skipped.len(), "file offered");
        let mut reply = BytesMut::from(
            &FileNotice::Pending {
                id,
                skipped: offer.skipped,
            }
            .encode()[..],
        );
        reply.extend_from_slice(&OK_RESPONSE);
        out.push(send(offer.sender, reply.freeze()));
        let forwarded = FileNotice::Offered {
            id,
            sender: offer.sender_name.clone(),
            sender_identity: offer.sender_identity,
            room: offer.room.clone().unwrap_or_default(),
            meta: offer.meta.clone(),
        }
        .encode();
        let mut recipients = Vec::with_capacity(offer.recipients.len());
        for invited in offer.recipients {
            out.push(send(invited.conn, forwarded.clone()));
            let mut token = [0; TOKEN_LEN];
            self.rng.fill_bytes(&mut token);
            recipients.push(Recipient {
                name: invited.name,
                conn: Some(invited.conn),
                fingerprint: invited.fingerprint,
                token,
                stage: Stage::Undecided,
            });
        }
        let seal_overhead = if offer.meta.encrypted() {
            CHUNK_SEAL_OVERHEAD
        } else {
            0
        };
        self.transfers.insert(
            id,
            Transfer {
                sender: offer.sender,
                room: offer.room,
                chunk_count: offer.meta.chunk_count,
                max_chunk_data: offer.meta.chunk_size as usize + seal_overhead,
                window,
                phase: Phase::Deciding {
                    deadline: now + self.limits.decision_timeout,
                },
                recipients,
                retained: VecDeque::new(),
                base: 0,
                next_index: 0,
                done: false,
                sender_heard: now,
            },
        );
        self.maybe_start(id, now, out);
        Ok(id)
    }

    fn check_offer(&self, offer: &Offer) -> Result<(), Refusal> {
        let meta = &offer.meta;
        let limits = &self.limits;
        let name = &meta.name[..];
        if name.is_empty()
            || name == b"."
            || name == b".."
            || name
                .iter()
                .any(|&b| b == b'/' || b == b'\\' || b < b' ' || b == 0x7f)
        {
            return refuse(
                Status::Error,
                "File name must be a plain name: no directories or control characters.",
            );
        }
        if meta.chunk_size == 0 || meta.chunk_size > limits.max_chunk_bytes {
            return refuse(
                Status::Error,
                format!("Chunk size must be 1 to {} bytes.", limits.max_chunk_bytes),
            );
        }
        if meta.size > limits.max_file_bytes {
            return refuse(
                Status::Error,
                format!("Files may be at most {} bytes.", limits.max_file_bytes),
            );
        }
        let expected = meta.size.div_ceil(u64::from(meta.chunk_size));
        if u64::from(meta.chunk_count) != expected {
            return refuse(
                Status::Error,
                format!("Chunk count must be the size divided by the chunk size, rounded up: {expected}."),
            );
        }
        if offer.window == 0 {
            return refuse(Status::Error, "Window must be at least 1 chunk.");
        }
        let own = self
            .transfers
            .values()
            .filter(|transfer| transfer.sender == offer.sender)
            .count();
        if own >= limits.max_per_user {
            return refuse(
                Status::TryLater,
                format!(
                    "You already have {own} file transfers in progress; try again when one ends."
                ),
            );
        }
        if self.transfers.len() >= limits.max_total {
            return refuse(
                Status::TryLater,
                "The server has too many file transfers in progress, try again later.",
            );
        }
        Ok(())
    }

    /// Ids from now on count up from after `id`: a node of a cluster
    /// starts somewhere at random, so that two nodes' transfers seldom
    /// share an id.
    pub fn start_ids_after(&mut self, id: u32) {
        self.last_id = id;
    }

    /// Whether `conn` takes part in transfer `id`, as its sender or as a
    /// recipient connected now.
    pub fn involves(&self, conn: ConnId, id: u32) -> bool {
        self.transfers
            .get(&id)
            .is_some_and(|transfer| transfer.sender == conn || transfer.position_of(conn).is_some())
    }

    fn new_id(&mut self) -> u32 {
        loop {
            self.last_id = self.last_id.checked_add(1).unwrap_or(1);
            if !self.transfers.contains_key(&self.last_id) {
                return self.last_id;
            }
        }
    }

    /// FILE_DECISION from a recipient still asked: accept (`8b` with its
    /// resume token, then `9a 00`) or decline (`9a 00`).
    pub fn decide(
        &mut self,
        conn: ConnId,
        id: u32,
        accept: bool,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(transfer) = self.transfers.get_mut(&id) else {
            return reply_error(
                out,
                conn,
                &format!("No file {id} is waiting for your answer."),
            );
        };
        let position = transfer.position_of(conn);
        let Some(at) =
            position.filter(|&at| matches!(transfer.recipients[at].stage, Stage::Undecided))
        else {
            return reply_error(
                out,
                conn,
                &format!("No file {id} is waiting for your answer."),
            );
        };
        if accept {
            let recipient = &mut transfer.recipients[at];
            recipient.stage = Stage::Receiving(Progress::default());
            let mut reply = BytesMut::from(
                &FileNotice::Accepted {
                    id,
                    token: recipient.token,
                }
                .encode()[..],
            );
            reply.extend_from_slice(&OK_RESPONSE);
            out.push(send(conn, reply.freeze()));
        } else {
            transfer.recipients.remove(at);
            out.push(send(conn, OK_RESPONSE));
        }
        self.maybe_start(id, now, out);
    }

    /// Starts the transfer once nobody is left undecided: `85` to the
    /// sender, or the end if nobody accepted.
    fn maybe_start(&mut self, id: u32, now: Instant, out: &mut Vec<Action>) {
        let Some(transfer) = self.transfers.get_mut(&id) else {
            return;
        };
        if !matches!(transfer.phase, Phase::Deciding { .. })
            || transfer
                .recipients
                .iter()
                .any(|recipient| matches!(recipient.stage, Stage::Undecided))
        {
            return;
        }
        if transfer.recipients.is_empty() {
            return self.end(
                id,
                EndReason::NobodyAccepted,
                "Nobody accepted the file.",
                true,
                now,
                out,
            );
        }
        transfer.phase = Phase::Sending;
        transfer.sender_heard = now;
        let recipients = transfer.recipients.iter().map(|r| r.name.clone()).collect();
        info!(
            id,
            recipients = transfer.recipients.len(),
            "file transfer started"
        );
        out.push(send(
            transfer.sender,
            FileNotice::Start {
                id,
                window: transfer.window,
                recipients,
            }
            .encode(),
        ));
        self.settle(id, now, out);
    }

    /// A chunk from the sender: checked, encoded once and relayed to every
    /// receiving recipient, and kept while it is inside the window. A chunk
    /// for a transfer that already ended is dropped quietly: it was in
    /// flight when the transfer ended.
    pub fn chunk(
        &mut self,
        conn: ConnId,
        id: u32,
        index: u32,
        data: &[u8],
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(transfer) = self.transfers.get_mut(&id).filter(|t| t.sender == conn) else {
            return debug!(%conn, id, index, "chunk for no transfer of this sender; dropped");
        };
        let violation = if transfer.phase != Phase::Sending {
            Some(format!("chunk {index} sent before the transfer started"))
        } else if transfer.done || index >= transfer.chunk_count {
            Some(format!(
                "chunk {index} is out of range: the file has {} chunks",
                transfer.chunk_count
            ))
        } else if index != transfer.next_index {
            Some(format!(
                "chunk {index} sent out of order: expected chunk {}",
                transfer.next_index
            ))
        } else if index >= transfer.base + u32::from(transfer.window) {
            Some(format!(
                "chunk {index} is beyond the window (acknowledged {}, window {})",
                transfer.base, transfer.window
            ))
        } else if data.len() > transfer.max_chunk_data {
            Some(format!(
                "chunk {index} holds {} bytes, more than the {} a chunk may",
                data.len(),
                transfer.max_chunk_data
            ))
        } else {
            None
        };
        if let Some(violation) = violation {
            let text = format!("The sender broke the protocol: {violation}.");
            return self.end(id, EndReason::ProtocolViolation, &text, true, now, out);
        }
        transfer.sender_heard = now;
        // Encoded straight from the sender's data: one copy, shared by all.
        let frame = encode_chunk(FILE_CHUNK, id, index, data);
        let mut recipients = 0;
        for recipient in &mut transfer.recipients {
            if let (Stage::Receiving(progress), Some(to)) = (&mut recipient.stage, recipient.conn) {
                out.push(send(to, frame.clone()));
                progress.sent = index + 1;
                progress.waiting_since.get_or_insert(now);
                recipients += 1;
            }
        }
        self.relayed_bytes += (data.len() * recipients) as u64;
        transfer.retained.push_back(frame);
        transfer.next_index += 1;
    }

    /// A recipient acknowledged a chunk. A duplicate is ignored; an ack for
    /// a chunk never sent to it takes it out of the transfer.
    pub fn ack(&mut self, conn: ConnId, id: u32, index: u32, now: Instant, out: &mut Vec<Action>) {
        let Some(transfer) = self.transfers.get_mut(&id) else {
            return debug!(%conn, id, index, "ack for no transfer; dropped");
        };
        let Some(at) = transfer.position_of(conn) else {
            return debug!(%conn, id, index, "ack from a connection not receiving; dropped");
        };
        let Stage::Receiving(progress) = &mut transfer.recipients[at].stage else {
            return;
        };
        match progress.ack(index) {
            Ack::Duplicate => return,
            Ack::NeverSent => {
                let text = format!("Acknowledged chunk {index}, which was never sent to it.");
                return self.drop_recipient(id, at, EndReason::ProtocolViolation, &text, now, out);
            }
            Ack::New => {
                progress.waiting_since = progress.owes().then_some(now);
            }
        }
        self.settle(id, now, out);
    }

    /// FILE_DONE from the sender, after its last chunk: relayed to every
    /// receiving recipient (`88`), then `9a 00`.
    pub fn done(&mut self, conn: ConnId, id: u32, now: Instant, out: &mut Vec<Action>) {
        let Some(transfer) = self.transfers.get_mut(&id).filter(|t| t.sender == conn) else {
            return reply_error(out, conn, &format!("You are sending no file {id}."));
        };
        if transfer.phase != Phase::Sending
            || transfer.done
            || transfer.next_index < transfer.chunk_count
        {
            let text = format!(
                "File {id} is not ready to be done: {} of {} chunks sent.",
                transfer.next_index, transfer.chunk_count
            );
            return reply_error(out, conn, &text);
        }
        transfer.done = true;
        transfer.sender_heard = now;
        out.push(send(conn, OK_RESPONSE));
        let frame = FileNotice::Done { id }.encode();
        out.extend(transfer.receiving().map(|(to, _)| send(to, frame.clone())));
        self.settle(id, now, out);
    }

    /// FILE_RESUME from a reconnected recipient whose key has the
    /// `fingerprint` given (the hub checked the proof): `9a 00`, then the
    /// chunks it lacks, if the window still holds them; otherwise it is out
    /// and told to have the file sent again. The token says which recipient
    /// is resuming; a key other than that recipient's is refused.
    pub fn resume(
        &mut self,
        conn: ConnId,
        id: u32,
        token: &[u8; TOKEN_LEN],
        fingerprint: &Fingerprint,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let unknown = format!("No file {id} to resume.");
        let Some(transfer) = self
            .transfers
            .get_mut(&id)
            .filter(|t| t.sender != conn && t.position_of(conn).is_none())
        else {
            return reply_error(out, conn, &unknown);
        };
        let found = transfer.recipients.iter().position(|recipient| {
            !matches!(recipient.stage, Stage::Undecided) && bool::from(recipient.token.ct_eq(token))
        });
        let Some(at) = found else {
            return reply_error(out, conn, &unknown);
        };
        if transfer.recipients[at].fingerprint != *fingerprint {
            return reply_error(out, conn, text::RESUME_PROOF_FAILED);
        }
        // The token and the key prove who this is. If its old connection
        // still looks alive (the server has not noticed it drop yet), the
        // new one takes over: nothing more goes to the old one.
        let (Stage::Detached { progress, .. } | Stage::Receiving(progress)) =
            transfer.recipients[at].stage
        else {
            unreachable!("matched above");
        };
        if progress.acked < transfer.base {
            transfer.recipients.remove(at);
            let text = format!(
                "File {id} cannot be resumed: chunks you lack were already dropped. Ask the sender to send it again."
            );
            reply_error(out, conn, &text);
            return self.settle(id, now, out);
        }
        out.push(send(conn, OK_RESPONSE));
        let mut resumed = progress;
        for (offset, frame) in transfer.retained.iter().enumerate() {
            let index = transfer.base + offset as u32;
            let acked = index < resumed.acked
                || (index > resumed.acked
                    && resumed.beyond & (1 << (index - resumed.acked - 1)) != 0);
            if !acked {
                out.push(send(conn, frame.clone()));
            }
        }
        if transfer.done {
            out.push(send(conn, FileNotice::Done { id }.encode()));
        }
        resumed.sent = transfer.next_index;
        resumed.waiting_since = resumed.owes().then_some(now);
        let recipient = &mut transfer.recipients[at];
        recipient.conn = Some(conn);
        recipient.stage = Stage::Receiving(resumed);
        info!(id, recipient = %Printable(&recipient.name), %conn, from = resumed.acked, "file transfer resumed");
        self.settle(id, now, out);
    }

    /// FILE_CANCEL: the sender withdraws the file (everyone is told), or a
    /// recipient gives up (the sender is told).
    pub fn cancel(&mut self, conn: ConnId, id: u32, now: Instant, out: &mut Vec<Action>) {
        let Some(transfer) = self.transfers.get(&id) else {
            return reply_error(out, conn, &format!("No file {id}."));
        };
        out.push(send(conn, OK_RESPONSE));
        if transfer.sender == conn {
            return self.end(
                id,
                EndReason::Cancelled,
                "The sender cancelled the file.",
                false,
                now,
                out,
            );
        }
        match transfer.position_of(conn) {
            Some(at) => self.drop_recipient(
                id,
                at,
                EndReason::RecipientCancelled,
                "Gave up on the file.",
                now,
                out,
            ),
            None => {
                out.pop();
                reply_error(out, conn, &format!("No file {id}."));
            }
        }
    }

    /// The connection left `room` (LEAVE, or JOIN elsewhere): files it sends
    /// there end, files it receives from there stop.
    pub fn left_room(&mut self, conn: ConnId, room: &[u8], now: Instant, out: &mut Vec<Action>) {
        for id in self.ids() {
            let transfer = &self.transfers[&id];
            if transfer.room.as_deref() != Some(room) {
                continue;
            }
            if transfer.sender == conn {
                self.end(
                    id,
                    EndReason::SenderLeft,
                    "The sender left the room.",
                    true,
                    now,
                    out,
                );
            } else if let Some(at) = transfer.position_of(conn) {
                self.drop_recipient(id, at, EndReason::LeftRoom, "Left the room.", now, out);
            }
        }
    }

    /// The connection is gone: files it sends end; as a recipient it is
    /// out if it had not decided, and detached (resumable) if it had
    /// accepted.
    pub fn disconnected(&mut self, conn: ConnId, now: Instant, out: &mut Vec<Action>) {
        self.ended_senders.remove(&conn);
        for id in self.ids() {
            let transfer = self.transfers.get_mut(&id).expect("listed");
            if transfer.sender == conn {
                self.end(
                    id,
                    EndReason::SenderLeft,
                    "The sender disconnected.",
                    false,
                    now,
                    out,
                );
                continue;
            }
            let Some(at) = transfer.position_of(conn) else {
                continue;
            };
            let recipient = &mut transfer.recipients[at];
            recipient.conn = None;
            match recipient.stage {
                Stage::Receiving(progress) => {
                    recipient.stage = Stage::Detached {
                        progress,
                        since: now,
                    };
                    info!(id, recipient = %Printable(&recipient.name), "file recipient detached");
                    self.settle(id, now, out);
                }
                _ => {
                    let text = "Disconnected before answering.";
                    self.drop_recipient(id, at, EndReason::Disconnected, text, now, out);
                }
            }
        }
    }

    /// Deadlines: undecided recipients at the decision timeout, receiving
    /// ones that made no progress for the ack timeout, detached ones that
    /// did not resume within the decision timeout, and a sender that owed
    /// a chunk for the decision timeout.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.ended_senders.retain(|_, (_, until)| *until > now);
        let limits = self.limits.clone();
        for id in self.ids() {
            let transfer = &self.transfers[&id];
            if transfer
                .deadline(&limits)
                .is_none_or(|deadline| deadline > now)
            {
                continue;
            }
            if let Phase::Deciding { .. } = transfer.phase {
                while let Some(at) = self.transfers.get(&id).and_then(|transfer| {
                    transfer
                        .recipients
                        .iter()
                        .position(|recipient| matches!(recipient.stage, Stage::Undecided))
                }) {
                    let text = "No answer within the decision timeout.";
                    self.drop_recipient(id, at, EndReason::DecisionTimeout, text, now, out);
                }
                self.maybe_start(id, now, out);
                continue;
            }
            if transfer.sender_owes() && transfer.sender_heard + limits.decision_timeout <= now {
                self.end(
                    id,
                    EndReason::SenderStalled,
                    "The sender stopped sending.",
                    true,
                    now,
                    out,
                );
                continue;
            }
            let overdue = |recipient: &Recipient| match &recipient.stage {
                Stage::Receiving(progress) => progress
                    .waiting_since
                    .is_some_and(|since| since + limits.ack_timeout <= now),
                Stage::Detached { since, .. } => *since + limits.decision_timeout <= now,
                Stage::Undecided => false,
            };
            while let Some(transfer) = self.transfers.get(&id) {
                let Some(at) = transfer.recipients.iter().position(overdue) else {
                    break;
                };
                let (reason, text) = match transfer.recipients[at].stage {
                    Stage::Detached { .. } => (
                        EndReason::Disconnected,
                        "Did not reconnect and resume within the decision timeout.",
                    ),
                    _ => (
                        EndReason::TooSlow,
                        "No acknowledgement within the chunk timeout.",
                    ),
                };
                self.drop_recipient(id, at, reason, text, now, out);
            }
        }
    }

    /// The earliest time at which [`Transfers::handle_timeout`] has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.transfers
            .values()
            .filter_map(|transfer| transfer.deadline(&self.limits))
            .min()
    }

    /// The payload limit for chunk frames from this connection, if it is
    /// sending a file, or its transfer ended within the ack timeout: the
    /// codec admits chunks that large from it alone.
    pub fn chunk_payload_limit(&self, conn: ConnId, now: Instant) -> Option<usize> {
        let lingering = self
            .ended_senders
            .get(&conn)
            .filter(|(_, until)| *until > now)
            .map(|(limit, _)| *limit);
        self.transfers
            .values()
            .filter(|transfer| transfer.sender == conn && transfer.phase == Phase::Sending)
            .map(|transfer| CHUNK_HEADER_LEN + transfer.max_chunk_data)
            .chain(lingering)
            .max()
    }

    /// Whether some connection may still send large chunk frames.
    pub fn admits_chunks(&self) -> bool {
        !self.transfers.is_empty() || !self.ended_senders.is_empty()
    }

    /// Keeps a sending transfer's chunk limit for its sender for the ack
    /// timeout after it ends: chunks it sent before hearing the end are on
    /// the wire, and must be dropped quietly rather than refused as too long
    /// (which would close the connection).
    fn linger(&mut self, transfer: &Transfer, now: Instant) {
        if transfer.phase == Phase::Sending {
            let limit = CHUNK_HEADER_LEN + transfer.max_chunk_data;
            self.ended_senders
                .insert(transfer.sender, (limit, now + self.limits.ack_timeout));
        }
    }

    /// How many bytes of chunks the connection's send queue may hold beyond
    /// its normal limit: a window's worth for each file it receives. The
    /// window already bounds them; the normal limit is for chat.
    pub fn queue_allowance(&self, conn: ConnId) -> usize {
        self.transfers
            .values()
            .filter(|transfer| transfer.receiving().any(|(to, _)| to == conn))
            .map(|transfer| usize::from(transfer.window) * transfer.chunk_frame_len())
            .sum()
    }

    fn ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.transfers.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Takes one recipient out of a transfer and tells it (if connected)
    /// and the sender why, with one shared frame.
    fn drop_recipient(
        &mut self,
        id: u32,
        at: usize,
        reason: EndReason,
        text: &str,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let transfer = self.transfers.get_mut(&id).expect("caller checked");
        let recipient = transfer.recipients.remove(at);
        info!(id, recipient = %Printable(&recipient.name), ?reason, "file recipient out");
        let frame = ended(id, &recipient.name, reason, text);
        if let Some(conn) = recipient.conn {
            out.push(send(conn, frame.clone()));
        }
        out.push(send(transfer.sender, frame));
        match transfer.phase {
            Phase::Deciding { .. } => self.maybe_start(id, now, out),
            Phase::Sending => self.settle(id, now, out),
        }
    }

    /// Ends a transfer for everyone: recipients still connected are told,
    /// and the sender too unless it is the one who ended it or is gone.
    fn end(
        &mut self,
        id: u32,
        reason: EndReason,
        text: &str,
        tell_sender: bool,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(transfer) = self.transfers.remove(&id) else {
            return;
        };
        info!(id, ?reason, "file transfer ended");
        self.linger(&transfer, now);
        let frame = ended(id, b"", reason, text);
        if tell_sender {
            out.push(send(transfer.sender, frame.clone()));
        }
        out.extend(
            transfer
                .recipients
                .iter()
                .filter_map(|recipient| recipient.conn)
                .map(|conn| send(conn, frame.clone())),
        );
    }

    /// After acks or departures: slides the window and tells the sender
    /// (`8d`), finishes the transfer when every receiving recipient has the
    /// whole file and the sender is done, and ends it when nobody is left.
    fn settle(&mut self, id: u32, now: Instant, out: &mut Vec<Action>) {
        let Some(transfer) = self.transfers.get_mut(&id) else {
            return;
        };
        if transfer.phase != Phase::Sending {
            return;
        }
        if transfer.recipients.is_empty() {
            return self.end(
                id,
                EndReason::NoRecipientsLeft,
                "Every recipient dropped out.",
                true,
                now,
                out,
            );
        }
        let Some(acked_by_all) = transfer
            .receiving()
            .map(|(_, progress)| progress.acked)
            .min()
        else {
            // Only detached recipients: hold the window for them.
            return;
        };
        if acked_by_all > transfer.base {
            let dropped = (acked_by_all - transfer.base) as usize;
            transfer.retained.drain(..dropped);
            transfer.base = acked_by_all;
            out.push(send(
                transfer.sender,
                FileNotice::Window {
                    id,
                    acked: acked_by_all,
                }
                .encode(),
            ));
        }
        if transfer.done && acked_by_all == transfer.chunk_count {
            let transfer = self.transfers.remove(&id).expect("looked up above");
            self.linger(&transfer, now);
            let delivered: Vec<Bytes> = transfer
                .recipients
                .iter()
                .filter(|recipient| matches!(recipient.stage, Stage::Receiving(_)))
                .map(|recipient| recipient.name.clone())
                .collect();
            info!(id, delivered = delivered.len(), "file transfer finished");
            out.push(send(
                transfer.sender,
                FileNotice::Finished { id, delivered }.encode(),
            ));
        }
    }

    /// Checks the transfers' internal consistency; used by tests and fuzzing.
    pub fn check_invariants(&self, is_connected: impl Fn(ConnId) -> bool) -> Result<(), String> {
        for (id, transfer) in &self.transfers {
            let held = transfer.next_index - transfer.base;
            if transfer.retained.len() != held as usize || held > u32::from(transfer.window) {
                return Err(format!(
                    "transfer {id} holds {} chunks for a window of {}",
                    transfer.retained.len(),
                    transfer.window
                ));
            }
            if !is_connected(transfer.sender) {
                return Err(format!("transfer {id} has a departed sender"));
            }
            for recipient in &transfer.recipients {
                let attached = recipient.conn.is_some_and(&is_connected);
                match &recipient.stage {
                    Stage::Detached { .. } if recipient.conn.is_some() => {
                        return Err(format!(
                            "transfer {id}: a detached recipient has a connection"
                        ))
                    }
                    Stage::Undecided | Stage::Receiving(_) if !attached => {
                        return Err(format!("transfer {id}: a recipient's connection is gone"))
                    }
                    Stage::Receiving(progress)
                        if progress.acked < transfer.base
                            || progress.sent != transfer.next_index =>
                    {
                        return Err(format!(
                            "transfer {id}: a receiving recipient is outside the window"
                        ))
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
