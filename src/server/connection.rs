//! One task per connection: a read loop and a write loop over one socket.
//!
//! The read loop waits for the socket to become readable *before* taking a
//! buffer, and drops the buffer again once it holds no partial frame, so an
//! idle connection costs almost no memory. The write loop drains everything
//! queued for the connection and writes it with one vectored write, so a
//! burst of frames leaves in one syscall (and, with `TCP_NODELAY`, at once).

use std::io::{self, IoSlice};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::state::{Fed, Link, Shared};
use crate::hub::{CloseReason, ConnId, KeyWrapOutcome, PasswordOutcome};
use crate::keywrap::QueueFull;
use crate::password::Busy;
use crate::protocol::FrameCodec;

/// Bytes read per `read` call; frames larger than this grow the buffer to
/// their exact size (bounded by the frame limit).
const READ_CHUNK: usize = 4096;
/// Frames gathered into one vectored write.
const MAX_BATCH: usize = 64;
/// How long a closing connection waits for the client to close its side, so
/// that unread input does not turn our FIN into a reset that could destroy
/// the final reply before the client reads it.
const LINGER: Duration = Duration::from_secs(1);

/// Serves one client until either side ends the connection.
pub async fn serve(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    if let Err(err) = stream.set_nodelay(true) {
        debug!(%peer, %err, "cannot set TCP_NODELAY");
    }
    let (outbox, queue) = mpsc::unbounded_channel();
    let link = Arc::new(Link::default());
    let conn = shared.register(peer, outbox, Arc::clone(&link));

    let reader = read_loop(&shared, conn, &stream, &link);
    let writer = write_loop(&stream, queue, &link);
    tokio::pin!(reader, writer);
    let (reason, written) = tokio::select! {
        reason = &mut reader => (reason, None),
        written = &mut writer => {
            // The queue closed: the server ended the connection and
            // everything queued has been written (or writing failed).
            let reason = match written {
                Ok(()) => link.closing().unwrap_or(CloseReason::ClientClosed),
                Err(_) => CloseReason::IoError,
            };
            (reason, Some(written))
        }
    };
    shared.disconnect(conn, reason);
    if reason == CloseReason::SlowConsumer {
        return;
    }
    let flushed = match written {
        Some(written) => written.is_ok(),
        // The queue is closed now; let the writer finish what is in it.
        None => matches!(
            tokio::time::timeout(shared.config().flush_timeout(), &mut writer).await,
            Ok(Ok(()))
        ),
    };
    if server_initiated(reason) && flushed {
        close_gracefully(&stream).await;
    }
}

fn server_initiated(reason: CloseReason) -> bool {
    !matches!(reason, CloseReason::ClientClosed | CloseReason::IoError)
}

/// Sends FIN after the queued data, then waits briefly for the client to
/// close its side, discarding anything it still sends.
async fn close_gracefully(stream: &TcpStream) {
    if SockRef::from(stream).shutdown(Shutdown::Write).is_err() {
        return;
    }
    let drain = async {
        // On the heap: only closing connections need it.
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

/// Reads frames and feeds them to the hub until the client closes, the
/// socket fails, or the server closes the connection.
async fn read_loop(shared: &Shared, conn: ConnId, stream: &TcpStream, link: &Link) -> CloseReason {
    let mut codec = FrameCodec::new(shared.config().max_frame_bytes);
    let mut buffer = BytesMut::new();
    loop {
        if let Some(reason) = link.closing() {
            return reason;
        }
        tokio::select! {
            biased;
            () = link.wake.notified() => continue,
            ready = stream.readable() => if ready.is_err() {
                return CloseReason::IoError;
            },
        }
        buffer.reserve(READ_CHUNK);
        match stream.try_read_buf(&mut buffer) {
            Ok(0) => {
                if !buffer.is_empty() {
                    debug!(%conn, pending = buffer.len(), "client closed in the middle of a frame");
                }
                return CloseReason::ClientClosed;
            }
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            Err(err) => {
                debug!(%conn, %err, "read failed");
                return CloseReason::IoError;
            }
        }
        // A request whose reply waits for a job off the event loop holds up
        // the requests behind it, so that replies stay in order.
        let mut fed = shared.feed(conn, &mut codec, &mut buffer);
        loop {
            fed = match fed {
                Fed::More => break,
                Fed::Password(job) => {
                    let outcome = match shared.passwords().submit(job.task) {
                        Ok(answer) => tokio::select! {
                            outcome = answer => outcome.unwrap_or(PasswordOutcome::Failed),
                            () = link.wake.notified() => return link.closing().unwrap_or(CloseReason::Shutdown),
                        },
                        Err(Busy(_)) => PasswordOutcome::Busy,
                    };
                    shared.password_checked(conn, job.ticket, outcome)
                }
                Fed::Keys(job) => {
                    let ticket = job.ticket;
                    let outcome = match shared.key_wraps().request(job) {
                        Ok(answer) => tokio::select! {
                            outcome = answer => outcome.unwrap_or(KeyWrapOutcome::Failed),
                            () = link.wake.notified() => return link.closing().unwrap_or(CloseReason::Shutdown),
                        },
                        Err(QueueFull) => KeyWrapOutcome::Busy,
                    };
                    shared.keys_wrapped(ticket, outcome)
                }
            };
            if matches!(fed, Fed::More) {
                // Requests that arrived while the reply was owed.
                fed = shared.feed(conn, &mut codec, &mut buffer);
            }
        }
        if buffer.is_empty() {
            // Give the memory back while the connection is idle.
            buffer = BytesMut::new();
        }
    }
}

/// Writes queued frames until the queue closes or the socket fails.
async fn write_loop(
    stream: &TcpStream,
    mut queue: mpsc::UnboundedReceiver<Bytes>,
    link: &Link,
) -> io::Result<()> {
    let mut batch = Vec::new();
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let written = write_all(stream, &batch).await;
        let bytes: usize = batch.iter().map(Bytes::len).sum();
        link.queued.fetch_sub(bytes, Ordering::AcqRel);
        batch.clear();
        if queue.is_empty() {
            // Give the memory back while the connection is quiet.
            batch = Vec::new();
        }
        if let Err(err) = written {
            warn_unless_reset(&err);
            return Err(err);
        }
    }
    Ok(())
}

fn warn_unless_reset(err: &io::Error) {
    if !matches!(
        err.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    ) {
        warn!(%err, "write failed");
    }
}

/// Writes every frame, in order, with as few syscalls as the kernel allows.
async fn write_all(stream: &TcpStream, frames: &[Bytes]) -> io::Result<()> {
    let mut next = 0; // first frame not completely written
    let mut offset = 0; // bytes of `frames[next]` already written
    while next < frames.len() {
        stream.writable().await?;
        // Built after the await, so the slices are not part of the task's
        // state while it waits.
        let mut slices = [IoSlice::new(&[]); MAX_BATCH];
        let mut count = 0;
        for (index, frame) in frames[next..].iter().take(MAX_BATCH).enumerate() {
            let start = if index == 0 { offset } else { 0 };
            slices[index] = IoSlice::new(&frame[start..]);
            count += 1;
        }
        let mut written = match stream.try_write_vectored(&slices[..count]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => written,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            Err(err) => return Err(err),
        };
        while written > 0 {
            let remaining = frames[next].len() - offset;
            if written >= remaining {
                written -= remaining;
                next += 1;
                offset = 0;
            } else {
                offset += written;
                written = 0;
            }
        }
    }
    Ok(())
}
