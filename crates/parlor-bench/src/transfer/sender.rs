//! The sender: offers each file, streams its chunks within the granted
//! window, and finishes or cancels it, on one socket driven without
//! waiting in between.
//!
//! [`SenderState`] is the state machine (what to write next, what the
//! server's frames mean); [`SenderConnection`] owns the socket and gives it
//! turns. Chunks go out through [`ChunkWriter`], up to [`MAX_BATCH`] in one
//! vectored write, straight from the pattern.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::sleep_until;

use super::{close, flush, notice, open, reply_text, start_signal};
use super::{TransferPhase, TransferRun, TEARDOWN_TIMEOUT};
use crate::file_pattern::{FilePattern, MARK_LEN, MAX_HEAD};
use crate::frame_stream::{FrameStream, Piece};
use crate::process;
use crate::session::Setup;
use parlor_proto::frame::put_header;
use parlor_proto::transfer::{opcode as file_opcode, FileNotice, FileRequest, CHUNK_HEADER_LEN};
use parlor_proto::{opcode, Status, HEADER_LEN};

/// The sender only reads short notices.
const SENDER_READ: usize = 64 * 1024;
/// Chunks gathered into one vectored write.
pub(super) const MAX_BATCH: usize = 16;
/// A chunk frame's bytes before its data.
const CHUNK_HEAD: usize = HEADER_LEN + CHUNK_HEADER_LEN;
/// How long the sender may take, once `--duration` is over, to finish the
/// chunk it is writing and cancel the file.
const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// What the sender counted, for the report.
#[derive(Debug, Default)]
pub(super) struct SenderTally {
    pub(super) files_offered: u32,
    pub(super) files_finished: u32,
    pub(super) files_cancelled: u32,
    pub(super) window_granted: Option<u8>,
    pub(super) chunks_sent: u64,
    pub(super) bytes_sent: u64,
    pub(super) expected_deliveries: u64,
    /// Seconds of each finished file.
    pub(super) file_s: Vec<f64>,
    pub(super) first_offer_ns: Option<u64>,
    /// When the last file finished or was cancelled.
    pub(super) end_ns: u64,
    /// CPU time of the sender's own work.
    pub(super) cpu_ns: u64,
    pub(super) refused: u64,
    pub(super) unexpected: u64,
    pub(super) disconnected: bool,
    pub(super) failures: Vec<String>,
}

/// A request of the sender's that awaits its `9a`: what a `9a` to the
/// sender answers.
#[derive(Clone, Copy, Debug)]
enum SenderRequest {
    Offer,
    Done,
    Cancel,
}

/// The file being sent.
#[derive(Debug)]
struct OutgoingFile {
    /// From `8a`.
    id: Option<u32>,
    offered_ns: u64,
    /// From `85`: the transfer has started.
    window: Option<u32>,
    recipients: u64,
    /// Every recipient has acknowledged chunks `0..acked` (`8d`).
    acked: u32,
    /// Chunks written completely.
    sent: u32,
    /// Bytes of chunk `sent` written so far.
    partial: usize,
    done_sent: bool,
}

/// What the sender knows and owes, apart from its socket.
struct SenderState {
    run: Arc<TransferRun>,
    /// Requests to write; `out[written..]` is still unwritten.
    out: BytesMut,
    written: usize,
    replies: VecDeque<SenderRequest>,
    file: Option<OutgoingFile>,
    /// `--duration` is over: cancel the file in flight and stop.
    cancelling: bool,
    /// The file cancelled: windows for it may still be on their way.
    cancelled: Option<u32>,
    /// Nothing more to send: every file is through, or the run cannot go on.
    over: bool,
    write_blocked: bool,
    chunks: ChunkWriter,
    tally: SenderTally,
}

/// The sender's task: sets up its connection, waits for the start, then
/// sends every file. Returns what it counted.
pub(super) async fn sender_task(
    run: Arc<TransferRun>,
    setup: Setup,
    ready: mpsc::UnboundedSender<Result<(), String>>,
    mut phase: watch::Receiver<TransferPhase>,
) -> SenderTally {
    let nick = run.sender_nick.clone();
    let mut connection = match open(&setup, 0, &nick, &run.room, &run.identity).await {
        Ok(connection) => connection,
        Err(err) => {
            let _ = ready.send(Err(format!("{nick}: {err:#}")));
            return SenderTally::default();
        }
    };
    let _ = ready.send(Ok(()));
    drop(ready);
    let Some(deadline) = connection.keep_alive_while(start_signal(&mut phase)).await else {
        return SenderTally::default();
    };
    let (stream, leftover) = connection.into_parts();
    let mut sender = SenderConnection {
        input: FrameStream::new(SENDER_READ, &leftover),
        stream,
        state: SenderState {
            run,
            out: BytesMut::new(),
            written: 0,
            replies: VecDeque::new(),
            file: None,
            cancelling: false,
            cancelled: None,
            over: false,
            write_blocked: false,
            chunks: ChunkWriter::new(),
            tally: SenderTally::default(),
        },
    };
    sender.run(deadline).await;
    sender.state.tally
}

/// The sender's socket, what it read, and its state.
struct SenderConnection {
    stream: TcpStream,
    input: FrameStream,
    state: SenderState,
}

impl SenderConnection {
    async fn run(&mut self, deadline: Instant) {
        let give_up = sleep_until((deadline + CANCEL_GRACE).into());
        let cancel = sleep_until(deadline.into());
        tokio::pin!(give_up, cancel);
        loop {
            let started = process::thread_cpu_ns();
            let stepped = self.step();
            self.state.tally.cpu_ns += process::thread_cpu_ns() - started;
            if stepped.is_err() {
                self.state.tally.disconnected = true;
                break;
            }
            if self.state.over {
                break;
            }
            let cancelling = self.state.cancelling;
            let blocked = self.state.write_blocked;
            tokio::select! {
                biased;
                () = &mut cancel, if !cancelling => self.state.cancelling = true,
                () = &mut give_up => {
                    self.state.tally.failures.push(format!(
                        "the file in flight could not be cancelled within {CANCEL_GRACE:?} of the end of --duration"
                    ));
                    break;
                }
                ready = self.stream.readable() => {
                    let started = process::thread_cpu_ns();
                    let read = ready.and_then(|()| self.read_available());
                    self.state.tally.cpu_ns += process::thread_cpu_ns() - started;
                    if !matches!(read, Ok(true)) {
                        self.state.tally.disconnected = true;
                        break;
                    }
                }
                ready = self.stream.writable(), if blocked => {
                    if ready.is_err() {
                        self.state.tally.disconnected = true;
                        break;
                    }
                    self.state.write_blocked = false;
                }
            }
        }
        let state = &mut self.state;
        state.tally.end_ns = state.run.clock.now_ns();
        if let Some(file) = state.file.take() {
            // The run was cut short with a file in flight.
            state.count_expected(&file);
        }
        let closing = close(&mut self.stream, &mut self.input, |piece| {
            state.on_piece(piece);
        });
        let _ = tokio::time::timeout(TEARDOWN_TIMEOUT, closing).await;
    }

    /// Reads what the socket has and handles it; `Ok(false)` when the server
    /// closed the connection or garbled the stream.
    fn read_available(&mut self) -> io::Result<bool> {
        match self.input.read(&self.stream) {
            Ok(0) => return Ok(false),
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(err) => return Err(err),
        }
        let state = &mut self.state;
        if self.input.pieces(|piece| state.on_piece(piece)).is_err() {
            state.tally.unexpected += 1;
            return Ok(false);
        }
        Ok(true)
    }

    /// Offers, streams and finishes files for as long as the socket takes
    /// it and the window allows.
    fn step(&mut self) -> io::Result<()> {
        let state = &mut self.state;
        loop {
            if state.write_blocked {
                return Ok(());
            }
            if !flush(&self.stream, &mut state.out, &mut state.written)? {
                state.write_blocked = true;
                return Ok(());
            }
            let run = Arc::clone(&state.run);
            let Some(file) = &mut state.file else {
                if state.cancelling || state.tally.files_offered == run.files {
                    state.over = true;
                    return Ok(());
                }
                state.offer();
                continue;
            };
            let Some(window) = file.window else {
                // Waiting for the recipients' decisions.
                if let (true, Some(id)) = (state.cancelling, file.id) {
                    state.cancel(id);
                    continue;
                }
                return Ok(());
            };
            let count = run.pattern.chunk_count;
            let limit = if state.cancelling {
                file.sent + u32::from(file.partial > 0)
            } else {
                count.min(file.acked.saturating_add(window))
            };
            if file.sent < limit {
                let tally = &mut state.tally;
                if !state
                    .chunks
                    .write(&self.stream, &run.pattern, file, limit, tally)?
                {
                    state.write_blocked = true;
                    return Ok(());
                }
                continue;
            }
            let id = file.id.expect("a started transfer has an id");
            if state.cancelling && !file.done_sent {
                state.cancel(id);
                continue;
            }
            if file.sent == count && !file.done_sent {
                file.done_sent = true;
                state
                    .out
                    .extend_from_slice(&FileRequest::Done { id }.encode());
                state.replies.push_back(SenderRequest::Done);
                continue;
            }
            // Waiting for the window to move, or for `8e`.
            return Ok(());
        }
    }
}

/// Writes chunk frames with vectored writes: the frame and chunk headers
/// and the marks of a batch are encoded into one buffer, kept from batch to
/// batch, and the fill between the marks comes straight from the pattern,
/// so writing a chunk copies and allocates nothing.
struct ChunkWriter {
    /// Each chunk's head (frame header, `u32 id, u32 index`, first mark)
    /// then its tail (last mark), for the batch being written.
    heads: BytesMut,
}

impl ChunkWriter {
    fn new() -> ChunkWriter {
        ChunkWriter {
            heads: BytesMut::with_capacity(MAX_BATCH * (CHUNK_HEAD + MAX_HEAD + MARK_LEN)),
        }
    }

    /// Writes chunks `file.sent..limit` (the first possibly begun already),
    /// up to [`MAX_BATCH`] in one vectored write. `Ok(false)` when the
    /// socket would block.
    fn write(
        &mut self,
        stream: &TcpStream,
        pattern: &FilePattern,
        file: &mut OutgoingFile,
        limit: u32,
        tally: &mut SenderTally,
    ) -> io::Result<bool> {
        let id = file.id.expect("a started transfer has an id");
        let count = ((limit - file.sent) as usize).min(MAX_BATCH);
        let heads = &mut self.heads;
        heads.clear();
        // Where chunk k's head and tail lie in `heads`: start, end of the
        // head (start of the tail), end of the tail.
        let mut spans = [(0usize, 0usize, 0usize); MAX_BATCH];
        let mut middles: [&[u8]; MAX_BATCH] = [&[]; MAX_BATCH];
        for (k, (span, middle)) in spans.iter_mut().zip(&mut middles).take(count).enumerate() {
            let index = file.sent + k as u32;
            let pieces = pattern.pieces(index);
            let start = heads.len();
            put_header(
                heads,
                file_opcode::FILE_CHUNK,
                CHUNK_HEADER_LEN + pattern.chunk_len(index),
            );
            heads.put_u32(id);
            heads.put_u32(index);
            heads.put_slice(pieces.head());
            let head_end = heads.len();
            heads.put_slice(pieces.tail());
            *span = (start, head_end, heads.len());
            *middle = pieces.middle;
        }
        let heads = &self.heads[..];
        let mut slices = [IoSlice::new(&[]); 3 * MAX_BATCH];
        for (k, &(start, head_end, end)) in spans.iter().take(count).enumerate() {
            slices[3 * k] = IoSlice::new(&heads[start..head_end]);
            slices[3 * k + 1] = IoSlice::new(middles[k]);
            slices[3 * k + 2] = IoSlice::new(&heads[head_end..end]);
        }
        let mut view = &mut slices[..3 * count];
        IoSlice::advance_slices(&mut view, file.partial);
        let mut left = match stream.try_write_vectored(view) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => written,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(err) => return Err(err),
        };
        while left > 0 {
            let data_len = pattern.chunk_len(file.sent);
            let remaining = CHUNK_HEAD + data_len - file.partial;
            if left < remaining {
                file.partial += left;
                break;
            }
            left -= remaining;
            file.sent += 1;
            file.partial = 0;
            tally.chunks_sent += 1;
            tally.bytes_sent += data_len as u64;
        }
        Ok(true)
    }
}

impl SenderState {
    fn offer(&mut self) {
        let now = self.run.clock.now_ns();
        self.tally.first_offer_ns.get_or_insert(now);
        self.tally.files_offered += 1;
        self.out.extend_from_slice(&self.run.offer);
        self.replies.push_back(SenderRequest::Offer);
        self.file = Some(OutgoingFile {
            id: None,
            offered_ns: now,
            window: None,
            recipients: 0,
            acked: 0,
            sent: 0,
            partial: 0,
            done_sent: false,
        });
    }

    fn cancel(&mut self, id: u32) {
        self.out
            .extend_from_slice(&FileRequest::Cancel { id }.encode());
        self.replies.push_back(SenderRequest::Cancel);
        self.cancelled = Some(id);
        if let Some(file) = self.file.take() {
            self.tally.files_cancelled += 1;
            self.count_expected(&file);
        }
        self.tally.end_ns = self.run.clock.now_ns();
    }

    /// The chunks a file that is over owes its recipients.
    fn count_expected(&mut self, file: &OutgoingFile) {
        self.tally.expected_deliveries += u64::from(file.sent) * file.recipients;
    }

    fn fail(&mut self, failure: String) {
        self.tally.failures.push(failure);
        self.over = true;
    }

    fn on_piece(&mut self, piece: Piece<'_>) {
        match piece {
            Piece::Frame(opcode::RESPONSE, payload) => self.on_reply(payload),
            Piece::Frame(file_opcode::FILE_WINDOW, payload) if payload.len() == 8 => {
                let id = u32::from_be_bytes(payload[..4].try_into().expect("4 bytes"));
                let acked = u32::from_be_bytes(payload[4..].try_into().expect("4 bytes"));
                match &mut self.file {
                    Some(file) if file.id == Some(id) && file.window.is_some() => {
                        file.acked = file.acked.max(acked);
                    }
                    _ if self.cancelled == Some(id) => {}
                    _ => self.tally.unexpected += 1,
                }
            }
            Piece::Frame(opcode, payload) => match notice(opcode, payload) {
                Some(notice) => self.on_notice(notice),
                None => self.tally.unexpected += 1,
            },
            Piece::ChunkStart { .. } => self.tally.unexpected += 1,
            Piece::ChunkData { .. } | Piece::ChunkEnd => {}
        }
    }

    fn on_reply(&mut self, payload: &[u8]) {
        let Some(request) = self.replies.pop_front() else {
            self.tally.unexpected += 1;
            return;
        };
        if payload.first() == Some(&(Status::Ok as u8)) {
            return;
        }
        self.tally.refused += 1;
        let text = reply_text(payload);
        match request {
            SenderRequest::Offer => {
                // Nothing was sent of it.
                self.file = None;
                self.fail(format!("the server refused the offer: {text}"));
            }
            SenderRequest::Done | SenderRequest::Cancel => {
                self.fail(format!("the server refused {request:?}: {text}"));
            }
        }
    }

    fn on_notice(&mut self, notice: FileNotice) {
        let recipients = u64::from(self.run.recipients);
        let now = self.run.clock.now_ns();
        let ours =
            |id: u32, file: &Option<OutgoingFile>| file.as_ref().is_some_and(|f| f.id == Some(id));
        match notice {
            FileNotice::Pending { id, skipped } => match &mut self.file {
                Some(file) if file.id.is_none() => {
                    file.id = Some(id);
                    if !skipped.is_empty() {
                        self.fail(format!(
                            "{} members of the room were skipped as unable to receive files",
                            skipped.len()
                        ));
                    }
                }
                _ => self.tally.unexpected += 1,
            },
            FileNotice::Start {
                id,
                window,
                recipients: names,
            } if ours(id, &self.file) => {
                let file = self.file.as_mut().expect("checked");
                file.window = Some(u32::from(window));
                file.recipients = names.len() as u64;
                self.tally.window_granted = Some(window);
                if file.recipients != recipients || window == 0 {
                    self.fail(format!(
                        "file {id} started with {} of {recipients} recipients and a window of {window}",
                        names.len()
                    ));
                }
            }
            FileNotice::Finished { id, delivered } if ours(id, &self.file) => {
                let file = self.file.take().expect("checked");
                let count = self.run.pattern.chunk_count;
                if !file.done_sent || file.sent != count {
                    self.tally.unexpected += 1;
                }
                self.count_expected(&file);
                self.tally.files_finished += 1;
                self.tally
                    .file_s
                    .push(now.saturating_sub(file.offered_ns) as f64 / 1e9);
                self.tally.end_ns = now;
                if delivered.len() as u64 != file.recipients {
                    self.tally.failures.push(format!(
                        "file {id} was delivered to {} of its {} recipients",
                        delivered.len(),
                        file.recipients
                    ));
                }
            }
            FileNotice::Ended {
                id,
                who,
                reason,
                text,
            } if ours(id, &self.file) => {
                let text = String::from_utf8_lossy(&text).into_owned();
                if who.is_empty() {
                    let file = self.file.take().expect("checked");
                    self.count_expected(&file);
                    self.tally.end_ns = now;
                    self.fail(format!("the server ended file {id} ({reason:?}): {text}"));
                } else {
                    self.tally.failures.push(format!(
                        "the server took {} out of file {id} ({reason:?}): {text}",
                        String::from_utf8_lossy(&who)
                    ));
                }
            }
            _ => self.tally.unexpected += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunks written through a socket that takes little at a time arrive
    /// exactly as the protocol encodes them, however the writes were cut.
    #[tokio::test]
    async fn chunk_writes_resume_where_a_short_write_stopped() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        client.set_nodelay(true).unwrap();
        socket2::SockRef::from(&client)
            .set_send_buffer_size(4096)
            .unwrap();
        socket2::SockRef::from(&server)
            .set_recv_buffer_size(65536)
            .unwrap();
        // 20 chunks of 100,000 bytes and a short last one.
        let pattern = FilePattern::new(2_000_005, 100_000);
        let expected: Vec<u8> = (0..pattern.chunk_count)
            .flat_map(|index| {
                let pieces = pattern.pieces(index);
                let data = [pieces.head(), pieces.middle, pieces.tail()].concat();
                parlor_proto::transfer::encode_chunk(file_opcode::FILE_CHUNK, 9, index, &data)
            })
            .collect();
        let reading = tokio::spawn(async move {
            let mut received = vec![0; expected.len()];
            server.read_exact(&mut received).await.unwrap();
            assert!(received == expected, "the chunk frames differ");
        });
        let mut file = OutgoingFile {
            id: Some(9),
            offered_ns: 0,
            window: Some(3),
            recipients: 1,
            acked: 0,
            sent: 0,
            partial: 0,
            done_sent: false,
        };
        let mut writer = ChunkWriter::new();
        let capacity = writer.heads.capacity();
        let mut tally = SenderTally::default();
        let mut short_writes = 0;
        while file.sent < pattern.chunk_count {
            // A window of 3: as if each chunk were acknowledged at once.
            let limit = pattern.chunk_count.min(file.sent + 3);
            if !writer
                .write(&client, &pattern, &mut file, limit, &mut tally)
                .unwrap()
            {
                client.writable().await.unwrap();
            }
            short_writes += usize::from(file.partial > 0);
        }
        reading.await.unwrap();
        assert_eq!(tally.chunks_sent, 21);
        assert_eq!(tally.bytes_sent, 2_000_005);
        assert!(short_writes > 0, "the small send buffer cut no write");
        assert_eq!(writer.heads.capacity(), capacity, "the heads grew");
    }
}
