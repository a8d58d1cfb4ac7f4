//! A recipient: accepts every offer (once its signature checks out), checks
//! each chunk as its pieces arrive, and acknowledges it.
//!
//! A recipient reads into one fixed buffer and never gathers a chunk:
//! [`RecipientState`] takes the pieces `frame_stream.rs` yields, feeds the
//! pattern's check, and queues the acks of one read for one write.

use std::io;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use tokio::sync::{mpsc, watch};

use super::offer::offer_problem;
use super::{close, flush, notice, open, reply_text, start_signal};
use super::{TransferPhase, TransferRun, TEARDOWN_TIMEOUT};
use crate::file_pattern::ChunkCheck;
use crate::frame_stream::{FrameStream, Piece};
use crate::sequence::{Arrival, SequenceTracker};
use crate::session::Setup;
use parlor_proto::frame::put_header;
use parlor_proto::transfer::{opcode as file_opcode, EndReason, FileNotice, FileRequest};
use parlor_proto::{opcode, Status};

/// What the recipients read at once: many chunks per system call.
const RECIPIENT_READ: usize = 1 << 20;
/// An ack's payload: `u32 id, u32 index`.
const ACK_PAYLOAD_LEN: usize = 8;

/// What one recipient counted, and then all of them together.
#[derive(Debug, Default)]
pub(super) struct RecipientTally {
    pub(super) delivered: u64,
    pub(super) bytes_delivered: u64,
    pub(super) duplicated: u64,
    pub(super) reordered: u64,
    pub(super) corrupt: u64,
    pub(super) unexpected: u64,
    pub(super) refused: u64,
    pub(super) files_complete: u64,
    pub(super) disconnects: u64,
    pub(super) last_delivery_ns: u64,
    pub(super) failures: Vec<String>,
}

impl RecipientTally {
    pub(super) fn add(&mut self, other: RecipientTally) {
        self.delivered += other.delivered;
        self.bytes_delivered += other.bytes_delivered;
        self.duplicated += other.duplicated;
        self.reordered += other.reordered;
        self.corrupt += other.corrupt;
        self.unexpected += other.unexpected;
        self.refused += other.refused;
        self.files_complete += other.files_complete;
        self.disconnects += other.disconnects;
        self.last_delivery_ns = self.last_delivery_ns.max(other.last_delivery_ns);
        self.failures.extend(other.failures);
    }
}

/// The file a recipient accepted.
struct IncomingFile {
    id: u32,
    /// Distinct chunks of it that arrived.
    chunks: u32,
    tracker: SequenceTracker,
}

/// What a recipient knows and owes, apart from its socket.
struct RecipientState {
    run: Arc<TransferRun>,
    nick: String,
    /// Acks and decisions to write.
    out: BytesMut,
    written: usize,
    replies_owed: u64,
    file: Option<IncomingFile>,
    /// The chunk whose data is arriving, when it belongs to `file`.
    chunk: Option<ChunkCheck>,
    /// Its index.
    chunk_index: u32,
    /// A chunk ended in the last read.
    delivered_now: bool,
    tally: RecipientTally,
}

/// One recipient's task: sets up its connection (connection number
/// `index`, from 1), waits for the start, then receives until the
/// coordinator says to stop. Returns what it counted.
pub(super) async fn recipient_task(
    run: Arc<TransferRun>,
    index: usize,
    nick: String,
    setup: Setup,
    ready: mpsc::UnboundedSender<Result<(), String>>,
    mut phase: watch::Receiver<TransferPhase>,
) -> RecipientTally {
    let mut connection = match open(&setup, index, &nick, &run.room, &run.identity).await {
        Ok(connection) => connection,
        Err(err) => {
            let _ = ready.send(Err(format!("{nick}: {err:#}")));
            return RecipientTally::default();
        }
    };
    let _ = ready.send(Ok(()));
    drop(ready);
    if connection
        .keep_alive_while(start_signal(&mut phase))
        .await
        .is_none()
    {
        return RecipientTally::default();
    }
    let (mut stream, leftover) = connection.into_parts();
    let mut input = FrameStream::new(RECIPIENT_READ, &leftover);
    let mut state = RecipientState {
        run,
        nick,
        out: BytesMut::new(),
        written: 0,
        replies_owed: 0,
        file: None,
        chunk: None,
        chunk_index: 0,
        delivered_now: false,
        tally: RecipientTally::default(),
    };
    let ended = loop {
        let blocked = match flush(&stream, &mut state.out, &mut state.written) {
            Ok(flushed) => !flushed,
            Err(_) => break true,
        };
        tokio::select! {
            biased;
            changed = phase.changed() => {
                if changed.is_err() || matches!(*phase.borrow(), TransferPhase::Stop) {
                    break false;
                }
            }
            ready = stream.readable() => {
                if ready.is_err() {
                    break true;
                }
                match input.read(&stream) {
                    Ok(0) => break true,
                    Ok(_) => {}
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(_) => break true,
                }
                if input.pieces(|piece| state.on_piece(piece)).is_err() {
                    state.tally.unexpected += 1;
                    break true;
                }
                state.after_read();
            }
            ready = stream.writable(), if blocked => {
                if ready.is_err() {
                    break true;
                }
            }
        }
    };
    if ended {
        state.tally.disconnects += 1;
    } else {
        // What the server still sends counts; acks no longer matter.
        let closing = close(&mut stream, &mut input, |piece| state.on_piece(piece));
        let _ = tokio::time::timeout(TEARDOWN_TIMEOUT, closing).await;
        state.after_read();
    }
    state.tally
}

/// Appends `87 u32 id, u32 index` to `out`, with the protocol's own frame
/// header: one ack per chunk, so no buffer of its own.
fn put_ack(out: &mut BytesMut, id: u32, index: u32) {
    put_header(out, file_opcode::FILE_ACK, ACK_PAYLOAD_LEN);
    out.put_u32(id);
    out.put_u32(index);
}

impl RecipientState {
    fn after_read(&mut self) {
        if std::mem::take(&mut self.delivered_now) {
            self.tally.last_delivery_ns = self.run.clock.now_ns();
        }
    }

    fn on_piece(&mut self, piece: Piece<'_>) {
        let run = &*self.run;
        match piece {
            Piece::ChunkStart { id, index, len } => match &self.file {
                Some(file) if file.id == id => {
                    self.chunk = Some(run.pattern.check(index, len));
                    self.chunk_index = index;
                }
                _ => {
                    self.tally.unexpected += 1;
                    self.chunk = None;
                }
            },
            Piece::ChunkData { offset, data } => {
                if let Some(check) = &mut self.chunk {
                    check.data(&run.pattern, offset, data, run.verify_all);
                }
            }
            Piece::ChunkEnd => {
                let (Some(check), Some(file)) = (self.chunk.take(), &mut self.file) else {
                    return;
                };
                let index = self.chunk_index;
                put_ack(&mut self.out, file.id, index);
                match file.tracker.record(u64::from(index)) {
                    Arrival::Duplicate => {
                        self.tally.duplicated += 1;
                        return;
                    }
                    Arrival::Reordered => self.tally.reordered += 1,
                    Arrival::InOrder => {}
                }
                if !check.is_intact(&run.pattern) {
                    self.tally.corrupt += 1;
                }
                file.chunks += 1;
                self.tally.delivered += 1;
                if index < run.pattern.chunk_count {
                    self.tally.bytes_delivered += run.pattern.chunk_len(index) as u64;
                }
                self.delivered_now = true;
            }
            Piece::Frame(opcode::RESPONSE, payload) => {
                if self.replies_owed == 0 {
                    self.tally.unexpected += 1;
                    return;
                }
                self.replies_owed -= 1;
                if payload.first() != Some(&(Status::Ok as u8)) {
                    self.tally.refused += 1;
                    self.tally.failures.push(format!(
                        "{}: the server refused the decision: {}",
                        self.nick,
                        reply_text(payload)
                    ));
                }
            }
            Piece::Frame(opcode, payload) => match notice(opcode, payload) {
                Some(notice) => self.on_notice(notice),
                None => self.tally.unexpected += 1,
            },
        }
    }

    fn on_notice(&mut self, notice: FileNotice) {
        let run = Arc::clone(&self.run);
        let ours = |id: u32, file: &Option<IncomingFile>| file.as_ref().is_some_and(|f| f.id == id);
        match notice {
            FileNotice::Offered {
                id,
                sender,
                sender_identity,
                room,
                meta,
            } => {
                if let Some(problem) = offer_problem(&run, &sender, &sender_identity, &room, &meta)
                {
                    self.tally
                        .failures
                        .push(format!("{}: offer {id}: {problem}", self.nick));
                }
                let decision = FileRequest::Decision { id, accept: true };
                self.out.extend_from_slice(&decision.encode());
                self.replies_owed += 1;
                self.file = Some(IncomingFile {
                    id,
                    chunks: 0,
                    tracker: SequenceTracker::default(),
                });
            }
            FileNotice::Accepted { id, .. } if ours(id, &self.file) => {}
            FileNotice::Done { id } if ours(id, &self.file) => {
                let file = self.file.as_ref().expect("checked");
                if file.chunks == run.pattern.chunk_count {
                    self.tally.files_complete += 1;
                }
            }
            FileNotice::Ended {
                id, who, reason, ..
            } if ours(id, &self.file) && who.is_empty() && reason == EndReason::Cancelled => {}
            FileNotice::Ended {
                id,
                who,
                reason,
                text,
            } if ours(id, &self.file) => {
                self.tally.failures.push(format!(
                    "{}: file {id} ended{} ({reason:?}): {}",
                    self.nick,
                    if who.is_empty() {
                        ""
                    } else {
                        " for this recipient"
                    },
                    String::from_utf8_lossy(&text)
                ));
            }
            _ => self.tally.unexpected += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_are_encoded_as_the_protocol_does() {
        let mut out = BytesMut::new();
        put_ack(&mut out, 7, 300);
        assert_eq!(out, FileRequest::Ack { id: 7, index: 300 }.encode());
    }
}
