//! One task per connection, reading and writing one socket.
//!
//! An idle chat connection is the common case, so the task is built to cost
//! little while it waits: it is a single loop that polls the socket's read
//! and write readiness and its [`Outbox`] directly, instead of running a read
//! future and a write future side by side. It takes a read buffer only once
//! the socket is readable and drops it again when it holds no partial frame;
//! frames queued for the client are taken all at once and written with one
//! vectored write, so a burst leaves in one syscall (and, with
//! `TCP_NODELAY`, at once). Rare work (a password check, a DM key, the final flush)
//! lives on the heap only while it happens.
//!
//! [`Outbox`]: super::outbox::Outbox

use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::net::{Shutdown, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_util::io::poll_read_buf;
use tracing::{debug, warn};

use super::busy_pause;
use super::outbox::{OutboxEvent, Queued};
use super::state::{Fed, Shared};
use crate::{keywrap, password};
use parlor_core::{CloseReason, ConnId, KeyWrapOutcome, PasswordOutcome};

/// Bytes read per `read` call; frames larger than this grow the buffer to
/// their exact size (bounded by the frame limit).
const READ_CHUNK: usize = 4096;
/// Frames gathered into one vectored write: as many as Linux takes in one
/// call (`IOV_MAX`). In a busy room a member's queue holds well over a
/// hundred frames per turn, and every write saved is kernel time saved.
const MAX_BATCH: usize = 1024;
/// How long a closing connection waits for the client to close its side, so
/// that unread input does not turn our FIN into a reset that could destroy
/// the final reply before the client reads it.
const LINGER: Duration = Duration::from_secs(1);

/// Registers a new client and returns the task that serves it until either
/// side ends the connection.
///
/// Not an `async fn`: the future owns only the [`Connection`], not a second
/// copy of the arguments it was built from, which keeps every idle
/// connection's task smaller.
pub(crate) fn serve(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
) -> impl Future<Output = ()> + Send {
    if let Err(err) = stream.set_nodelay(true) {
        debug!(%peer, %err, "cannot set TCP_NODELAY");
    }
    let conn = shared.register(peer);
    let mut connection = Connection {
        shared,
        stream,
        conn,
        buffer: BytesMut::new(),
        write_blocked: false,
        flush: Flush::Idle,
        owed: None,
    };
    // An `async` block rather than an `async fn` taking the connection: a
    // by-value argument would be stored twice in the future.
    async move {
        let reason = connection.run().await;
        connection.finish(reason).await;
    }
}

/// Everything an idle connection's task holds. Kept small on purpose: the
/// task's allocation is rounded up to a multiple of 128 bytes, and this is
/// most of it. Frames waiting to be written stay in the connection's
/// [`Outbox`](super::outbox::Outbox), in the shared state.
struct Connection {
    shared: Arc<Shared>,
    stream: TcpStream,
    conn: ConnId,
    /// Bytes read and not yet decoded; empty (no allocation) when idle.
    buffer: BytesMut,
    /// The socket took less than was queued; wait until it is writable.
    write_blocked: bool,
    /// Whether output queued by other connections is held back for now.
    flush: Flush,
    /// Work off the event loop that the reply to the last request waits
    /// for; no further request is read meanwhile, so replies stay in order.
    owed: Option<Box<OwedReply>>,
}

enum OwedReply {
    Password {
        ticket: u64,
        answer: oneshot::Receiver<PasswordOutcome>,
    },
    Keys {
        ticket: u64,
        answer: oneshot::Receiver<KeyWrapOutcome>,
    },
}

/// Output queued for the connection is written on the task's next turn,
/// not at once. The task wakes itself and goes to the back of the run queue,
/// so every connection already waiting to be read runs first, and what they
/// send this client leaves in the same write. Under load that makes fewer,
/// larger writes (the kernel's cost is mostly per write, not per byte); when
/// idle the queue is empty and the write waits for nothing.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flush {
    /// Nothing is held back.
    Idle,
    /// Output is waiting; the task has rescheduled itself.
    Deferred,
    /// The task has yielded since: write now.
    Due,
}

/// What the connection's task should do next.
enum Event {
    /// The socket was read: how many bytes, or why not.
    Read(io::Result<usize>),
    Writable,
    PasswordChecked(u64, PasswordOutcome),
    KeysWrapped(u64, KeyWrapOutcome),
    Closing(CloseReason),
}

impl Connection {
    /// Tells the hub the connection is gone, then flushes what is queued and
    /// closes politely, unless the socket is already broken.
    ///
    /// The work is boxed, and the box made outside any `async` body, so its
    /// state is not part of every idle connection's task.
    fn finish(&mut self, reason: CloseReason) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(self.flush_and_close(reason))
    }

    async fn flush_and_close(&mut self, reason: CloseReason) {
        self.shared.disconnect(self.conn, reason);
        if matches!(reason, CloseReason::SlowConsumer | CloseReason::IoError) {
            return;
        }
        // The client may have half-closed and still be reading: flush anyway.
        let deadline = self.shared.config().flush_timeout();
        let flushed = tokio::time::timeout(deadline, self.flush()).await;
        if reason != CloseReason::ClientClosed && matches!(flushed, Ok(Ok(()))) {
            close_gracefully(&self.stream).await;
        }
    }

    /// Serves until the client goes, the socket fails or the server closes
    /// the connection, and says which.
    async fn run(&mut self) -> CloseReason {
        loop {
            let outcome = match poll_fn(|cx| self.poll_event(cx)).await {
                Event::Closing(reason) => return reason,
                Event::Read(result) => self.read(result),
                Event::Writable => self.write().map_err(|err| {
                    warn_unless_reset(&err);
                    CloseReason::IoError
                }),
                Event::PasswordChecked(ticket, outcome) => {
                    let fed = self.shared.password_checked(self.conn, ticket, outcome);
                    self.resume(fed);
                    Ok(())
                }
                Event::KeysWrapped(ticket, outcome) => {
                    let fed = self.shared.keys_wrapped(ticket, outcome);
                    self.resume(fed);
                    Ok(())
                }
            };
            if let Err(reason) = outcome {
                return reason;
            }
        }
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        match self.shared.poll_wake(self.conn, cx) {
            Poll::Ready(OutboxEvent::Closing(reason)) => {
                return Poll::Ready(Event::Closing(reason))
            }
            Poll::Ready(OutboxEvent::Output) if !self.write_blocked => match self.flush {
                Flush::Due => {
                    self.flush = Flush::Idle;
                    return Poll::Ready(Event::Writable);
                }
                Flush::Idle => {
                    self.flush = Flush::Deferred;
                    cx.waker().wake_by_ref();
                }
                Flush::Deferred => {}
            },
            _ => {}
        }
        let event = self.poll_input(cx);
        if event.is_pending() && self.flush == Flush::Deferred {
            self.flush = Flush::Due;
        }
        event
    }

    /// Whether the socket, or work off the event loop, has something for
    /// the task.
    fn poll_input(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        if self.write_blocked && self.stream.poll_write_ready(cx).is_ready() {
            self.write_blocked = false;
            return Poll::Ready(Event::Writable);
        }
        if let Some(owed) = &mut self.owed {
            let event = match owed.as_mut() {
                OwedReply::Password { ticket, answer } => {
                    let ticket = *ticket;
                    Pin::new(answer).poll(cx).map(|outcome| {
                        Event::PasswordChecked(ticket, outcome.unwrap_or(PasswordOutcome::Failed))
                    })
                }
                OwedReply::Keys { ticket, answer } => {
                    let ticket = *ticket;
                    Pin::new(answer).poll(cx).map(|outcome| {
                        Event::KeysWrapped(ticket, outcome.unwrap_or(KeyWrapOutcome::Failed))
                    })
                }
            };
            if event.is_ready() {
                self.owed = None;
            }
            return event;
        }
        if self.stream.poll_read_ready(cx).is_pending() {
            return Poll::Pending;
        }
        // Read through `AsyncRead` rather than `try_read`: a read that does
        // not fill the buffer tells tokio the socket is drained, which saves
        // the read that would only find it empty.
        self.buffer.reserve(READ_CHUNK);
        let read = poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.buffer);
        if read.is_pending() && self.buffer.is_empty() {
            self.buffer = BytesMut::new();
        }
        read.map(Event::Read)
    }

    /// Takes what the socket gave and feeds every whole frame to the hub.
    fn read(&mut self, result: io::Result<usize>) -> Result<(), CloseReason> {
        match result {
            Ok(0) => {
                if !self.buffer.is_empty() {
                    debug!(conn = %self.conn, pending = self.buffer.len(),
                           "client closed in the middle of a frame");
                }
                return Err(CloseReason::ClientClosed);
            }
            Ok(_) => busy_pause::count_read(),
            Err(err) => {
                debug!(conn = %self.conn, %err, "read failed");
                return Err(CloseReason::IoError);
            }
        }
        let fed = self.shared.feed(self.conn, &mut self.buffer);
        self.after_feed(fed);
        Ok(())
    }

    /// Starts the work off the event loop that the hub asked for, if any,
    /// and gives the read buffer back while the connection is idle.
    fn after_feed(&mut self, mut fed: Fed) {
        loop {
            fed = match fed {
                Fed::More => break,
                Fed::Password(job) => match self.shared.passwords().submit(job.task) {
                    Ok(answer) => {
                        let ticket = job.ticket;
                        self.owed = Some(Box::new(OwedReply::Password { ticket, answer }));
                        return;
                    }
                    Err(password::QueueFull(_)) => {
                        let busy = PasswordOutcome::Busy;
                        let fed = self.shared.password_checked(self.conn, job.ticket, busy);
                        self.continue_after_reply(fed)
                    }
                },
                Fed::Keys(job) => {
                    let ticket = job.ticket;
                    match self.shared.key_wraps().submit(job) {
                        Ok(answer) => {
                            self.owed = Some(Box::new(OwedReply::Keys { ticket, answer }));
                            return;
                        }
                        Err(keywrap::QueueFull(_)) => {
                            let fed = self.shared.keys_wrapped(ticket, KeyWrapOutcome::Busy);
                            self.continue_after_reply(fed)
                        }
                    }
                }
            };
        }
        if self.buffer.is_empty() {
            self.buffer = BytesMut::new();
        }
    }

    /// An owed reply went out: carry on with what the hub said next.
    fn resume(&mut self, fed: Fed) {
        let fed = self.continue_after_reply(fed);
        self.after_feed(fed);
    }

    /// After an owed reply, feeds the requests that arrived meanwhile.
    fn continue_after_reply(&mut self, fed: Fed) -> Fed {
        match fed {
            Fed::More => self.shared.feed(self.conn, &mut self.buffer),
            job => job,
        }
    }

    /// Writes as much of what is queued as the socket takes now, in
    /// batches of up to [`MAX_BATCH`] frames per vectored write.
    fn write(&mut self) -> io::Result<()> {
        let mut batch = Vec::new();
        loop {
            let offset = self.shared.take_batch(self.conn, &mut batch, MAX_BATCH);
            if batch.is_empty() {
                return Ok(());
            }
            let slices = io_slices(&batch, offset);
            let written = match self.stream.try_write_vectored(&slices) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => written,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => 0,
                Err(err) => return Err(err),
            };
            // Frames written completely are dropped; the rest go back.
            let (mut done, mut offset, mut left) = (0, offset, written);
            while done < batch.len() && left >= batch[done].len() - offset {
                left -= batch[done].len() - offset;
                done += 1;
                offset = 0;
            }
            let all_written = done == batch.len();
            batch.drain(..done);
            self.shared
                .put_back(self.conn, &mut batch, offset + left, written);
            if !all_written {
                self.write_blocked = true;
                return Ok(());
            }
        }
    }

    /// Writes everything still queued, waiting for the socket as needed.
    async fn flush(&mut self) -> io::Result<()> {
        self.write()?;
        while self.write_blocked {
            self.stream.writable().await?;
            self.write_blocked = false;
            self.write()?;
        }
        Ok(())
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.shared.forget(self.conn);
    }
}

/// One slice per frame of `batch`, less the `offset` bytes already
/// written, and at most [`MAX_BATCH`]: what one vectored write can take.
fn io_slices(batch: &[Queued], offset: usize) -> Vec<IoSlice<'_>> {
    let frames: usize = batch.iter().map(|entry| entry.frames().len()).sum();
    let mut slices = Vec::with_capacity(frames.min(MAX_BATCH));
    let mut skip = offset;
    for frame in batch.iter().flat_map(Queued::frames) {
        if slices.len() == MAX_BATCH {
            break;
        }
        if skip >= frame.len() {
            skip -= frame.len();
            continue;
        }
        slices.push(IoSlice::new(&frame[skip..]));
        skip = 0;
    }
    slices
}

fn warn_unless_reset(err: &io::Error) {
    if !matches!(
        err.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    ) {
        warn!(%err, "write failed");
    }
}

/// Sends FIN after the queued data, then waits briefly for the client to
/// close its side, discarding anything it still sends.
async fn close_gracefully(stream: &TcpStream) {
    if SockRef::from(stream).shutdown(Shutdown::Write).is_err() {
        return;
    }
    let drain = async {
        let mut sink = vec![0u8; 1024];
        loop {
            if stream.readable().await.is_err() {
                return;
            }
            match stream.try_read(&mut sink) {
                Ok(0) => return,
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn frames(lens: &[usize]) -> Vec<Bytes> {
        lens.iter().map(|len| Bytes::from(vec![1; *len])).collect()
    }

    #[test]
    fn slices_skip_what_was_written_even_inside_a_run_and_stop_at_the_limit() {
        let batch = [
            Queued::run(frames(&[10, 10, 10])),
            Queued::Frame(Bytes::from(vec![2; 5])),
        ];
        let lens = |offset| -> Vec<usize> {
            io_slices(&batch, offset)
                .iter()
                .map(|slice| slice.len())
                .collect()
        };
        assert_eq!(lens(0), [10, 10, 10, 5]);
        assert_eq!(
            lens(15),
            [5, 10, 5],
            "the first frame and half the second were written"
        );
        assert_eq!(lens(30), [5]);
        let long = [Queued::run(frames(&[1; MAX_BATCH + 10]))];
        assert_eq!(io_slices(&long, 0).len(), MAX_BATCH);
    }
}
