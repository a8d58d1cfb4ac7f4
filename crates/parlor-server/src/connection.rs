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
//! The same task serves the plain port and the TLS port: it is generic over
//! its [`Transport`], a `TcpStream` or a TLS session over one. A TLS
//! connection is registered with the hub as soon as it is accepted, so it
//! counts against the connection limits (and the hub's handshake timer)
//! from the start; its task then runs the TLS handshake, tells the hub the
//! connection's channel binding, and goes on as any other. A batch of
//! frames goes to TLS in one vectored write, which rustls seals into as few
//! records as the batch fits, and is then flushed.
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
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_rustls::server::TlsStream;
use tokio_util::io::poll_read_buf;
use tracing::{debug, warn};

use super::busy_pause;
use super::outbox::{OutboxEvent, Queued};
use super::state::{Backlogged, Fed, Shared};
use crate::tls::Tls;
use crate::{keywrap, password};
use bytes::Bytes;
use parlor_core::{
    ClaimOutcome, CloseReason, ConnId, DirectOutcome, DmKeyAnswer, EntryOutcome, FileTarget,
    KeyWrapOutcome, PasswordOutcome,
};
use parlor_proto::secure::{CHANNEL_BINDING_LABEL, CHANNEL_BINDING_LEN};

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
/// How much longer than `handshake_timeout` a TLS handshake may take before
/// its task gives up by itself. The hub's handshake timer, which runs from
/// the accept, closes a connection that stays silent first (and counts it);
/// this bounds the handshakes of connections the hub has already refused,
/// which wait for theirs to be told why.
const TLS_HANDSHAKE_GRACE: Duration = Duration::from_secs(1);

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
    set_nodelay(&stream, peer);
    let (conn, fed) = shared.register(peer);
    let mut connection = Connection::new(shared, stream, conn);
    connection.after_feed(fed);
    // An `async` block rather than an `async fn` taking the connection: a
    // by-value argument would be stored twice in the future.
    async move {
        let reason = connection.run().await;
        connection.finish(reason).await;
    }
}

/// [`serve`] for a connection to the TLS port: registers it at once, then
/// returns the task that runs its handshake and serves it.
pub(crate) fn serve_tls(
    shared: Arc<Shared>,
    tls: Tls,
    stream: TcpStream,
    peer: SocketAddr,
) -> impl Future<Output = ()> + Send {
    set_nodelay(&stream, peer);
    let (conn, fed) = shared.register(peer);
    async move {
        let Some((stream, binding)) = handshake(&shared, conn, tls, stream, peer).await else {
            return;
        };
        shared.channel_bound(conn, binding);
        let mut connection = Connection::new(shared, stream, conn);
        connection.after_feed(fed);
        let reason = connection.run().await;
        connection.finish(reason).await;
    }
}

/// Runs the TLS handshake of a registered connection and derives its channel
/// binding. On failure the connection is closed and forgotten, the failure
/// logged, and `None` returned.
///
/// The handshake gives way when the server closes the connection (the
/// hub's handshake timer, shutdown); a connection the hub refused at once
/// keeps its handshake, so that its refusal (`9a 02 Server full, ...`) can
/// be sent over TLS, but never for longer than the handshake timeout and
/// [`TLS_HANDSHAKE_GRACE`].
async fn handshake(
    shared: &Shared,
    conn: ConnId,
    tls: Tls,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<(TlsStream<TcpStream>, [u8; CHANNEL_BINDING_LEN])> {
    let mut accept = tls.acceptor.accept(stream);
    let deadline = shared.config().handshake_timeout() + TLS_HANDSHAKE_GRACE;
    let handshake = poll_fn(|cx| {
        if let Poll::Ready(done) = Pin::new(&mut accept).poll(cx) {
            return Poll::Ready(Ok(done));
        }
        match shared.poll_wake(conn, cx) {
            Poll::Ready(OutboxEvent::Closing(reason)) if !is_refusal(reason) => {
                Poll::Ready(Err(reason))
            }
            _ => Poll::Pending,
        }
    });
    let failed = match tokio::time::timeout(deadline, handshake).await {
        Ok(Ok(Ok(stream))) => {
            let exported = stream.get_ref().1.export_keying_material(
                [0; CHANNEL_BINDING_LEN],
                CHANNEL_BINDING_LABEL,
                None,
            );
            match exported {
                Ok(binding) => return Some((stream, binding)),
                Err(err) => {
                    warn!(%peer, %conn, %err, "TLS: cannot derive the channel binding");
                    CloseReason::Internal
                }
            }
        }
        Ok(Ok(Err(err))) => {
            // Scanners, clients speaking plain TCP to the TLS port, and
            // clients that refuse our certificate all end here.
            warn!(%peer, %conn, %err, "TLS handshake failed");
            CloseReason::IoError
        }
        Ok(Err(reason)) => reason,
        Err(_) => {
            warn!(%peer, %conn, "TLS handshake timed out");
            CloseReason::HandshakeTimeout
        }
    };
    shared.disconnect(conn, failed);
    shared.forget(conn);
    None
}

/// The hub refused the connection when it was accepted (a connection
/// limit): it is told why, once it can be.
fn is_refusal(reason: CloseReason) -> bool {
    matches!(
        reason,
        CloseReason::ServerFull | CloseReason::TooManyFromAddress
    )
}

fn set_nodelay(stream: &TcpStream, peer: SocketAddr) {
    // Replies are small and must leave at once; batching is done here.
    if let Err(err) = stream.set_nodelay(true) {
        debug!(%peer, %err, "cannot set TCP_NODELAY");
    }
}

/// The byte stream under a connection: the plain port's [`TcpStream`], or
/// a TLS session over one. The connection's loop is the same for both; this
/// is what differs.
pub(crate) trait Transport: AsyncRead + Unpin + Send + 'static {
    /// Whether the stream may hold bytes already read from the socket
    /// (TLS records decrypted ahead) that the socket's readiness no longer
    /// shows. Without such a buffer, the task waits for the socket to be
    /// readable before it takes a read buffer, so an idle connection holds
    /// none; with one, it reads whenever it is woken.
    const BUFFERS_INPUT: bool;

    /// The TCP socket underneath, for write readiness.
    fn tcp(&self) -> &TcpStream;

    /// Writes as much of `slices` as can go now, without waiting: 0 when
    /// the socket takes nothing.
    fn write_now(&mut self, cx: &mut Context<'_>, slices: &[IoSlice<'_>]) -> io::Result<usize>;

    /// Pushes what the stream itself holds back (sealed TLS records) onto
    /// the socket; `false` when the socket is full before all of it went.
    fn flush_now(&mut self, cx: &mut Context<'_>) -> io::Result<bool>;

    /// Ends our side politely after what was written (see
    /// [`close_gracefully`]).
    fn close_gracefully(&mut self) -> impl Future<Output = ()> + Send + '_;
}

impl Transport for TcpStream {
    const BUFFERS_INPUT: bool = false;

    fn tcp(&self) -> &TcpStream {
        self
    }

    fn write_now(&mut self, _: &mut Context<'_>, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        match self.try_write_vectored(slices) {
            Ok(0) => Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => Ok(written),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(err) => Err(err),
        }
    }

    fn flush_now(&mut self, _: &mut Context<'_>) -> io::Result<bool> {
        Ok(true)
    }

    fn close_gracefully(&mut self) -> impl Future<Output = ()> + Send + '_ {
        close_gracefully(self)
    }
}

impl Transport for TlsStream<TcpStream> {
    const BUFFERS_INPUT: bool = true;

    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }

    /// rustls takes the slices into its send buffer (up to its limit) as
    /// one run of plaintext, and seals it in records of up to 16 KiB, not
    /// one record per slice; what it took counts as written.
    fn write_now(&mut self, cx: &mut Context<'_>, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        match Pin::new(self).poll_write_vectored(cx, slices) {
            Poll::Ready(Ok(0)) => Err(io::ErrorKind::WriteZero.into()),
            Poll::Ready(result) => result,
            Poll::Pending => Ok(0),
        }
    }

    fn flush_now(&mut self, cx: &mut Context<'_>) -> io::Result<bool> {
        match Pin::new(self).poll_flush(cx) {
            Poll::Ready(result) => result.map(|()| true),
            Poll::Pending => Ok(false),
        }
    }

    /// Sends TLS's close_notify and the FIN after it, then waits briefly for
    /// the client to close too, as [`close_gracefully`] does.
    async fn close_gracefully(&mut self) {
        // One deadline for both: close_notify waits for room on the socket
        // like any write, and a client that reads nothing must not hold
        // the task.
        let close = async {
            if self.shutdown().await.is_ok() {
                let mut sink = vec![0u8; 1024];
                while matches!(self.read(&mut sink).await, Ok(read) if read > 0) {}
            }
        };
        let _ = tokio::time::timeout(LINGER, close).await;
    }
}

/// Everything an idle connection's task holds. Kept small on purpose: the
/// task's allocation is rounded up to a multiple of 128 bytes, and this is
/// most of it. Frames waiting to be written stay in the connection's
/// [`Outbox`](super::outbox::Outbox), in the shared state.
struct Connection<S> {
    shared: Arc<Shared>,
    stream: S,
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
    /// Cluster mode: the queue of relays to NATS is short of room, and no
    /// request is read until it has drained.
    backlogged: Option<Backlogged>,
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
    Name {
        ticket: u64,
        answer: oneshot::Receiver<ClaimOutcome>,
    },
    Room {
        ticket: u64,
        answer: oneshot::Receiver<EntryOutcome>,
    },
    Direct {
        ticket: u64,
        target: Bytes,
        answer: oneshot::Receiver<DirectOutcome>,
    },
    DmKey {
        ticket: u64,
        target: Bytes,
        answer: oneshot::Receiver<DmKeyAnswer>,
    },
    File {
        ticket: u64,
        answer: oneshot::Receiver<Option<Bytes>>,
    },
    FileTarget {
        ticket: u64,
        answer: oneshot::Receiver<FileTarget>,
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
    NameClaimed(u64, ClaimOutcome),
    RoomEntered(u64, EntryOutcome),
    DirectRelayed(u64, Bytes, DirectOutcome),
    DmKeyRelayed(u64, Bytes, DmKeyAnswer),
    FileRelayed(u64, Option<Bytes>),
    FileTargetAnswered(u64, FileTarget),
    Closing(CloseReason),
}

impl<S: Transport> Connection<S> {
    fn new(shared: Arc<Shared>, stream: S, conn: ConnId) -> Connection<S> {
        Connection {
            shared,
            stream,
            conn,
            buffer: BytesMut::new(),
            write_blocked: false,
            flush: Flush::Idle,
            owed: None,
            backlogged: None,
        }
    }

    /// Tells the hub the connection is gone, then flushes what is queued and
    /// closes politely, unless the socket is already broken.
    ///
    /// The work is boxed, and the box made outside any `async` body, so its
    /// state is not part of every idle connection's task.
    fn finish(&mut self, reason: CloseReason) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(self.flush_and_close(reason))
    }

    async fn flush_and_close(&mut self, reason: CloseReason) {
        // A name won or a room entered just now is the user's, so that
        // leaving releases it.
        if let Some(owed) = self.owed.take() {
            match *owed {
                OwedReply::Name { ticket, mut answer } => {
                    if let Ok(outcome) = answer.try_recv() {
                        self.shared.name_claimed(self.conn, ticket, outcome);
                    }
                }
                OwedReply::Room { ticket, mut answer } => {
                    if let Ok(outcome) = answer.try_recv() {
                        self.shared.room_entered(self.conn, ticket, outcome);
                    }
                }
                _ => {}
            }
        }
        self.shared.disconnect(self.conn, reason);
        if matches!(reason, CloseReason::SlowConsumer | CloseReason::IoError) {
            return;
        }
        // The client may have half-closed and still be reading: flush anyway.
        let deadline = self.shared.config().flush_timeout();
        let flushed = tokio::time::timeout(deadline, self.flush()).await;
        if reason != CloseReason::ClientClosed && matches!(flushed, Ok(Ok(()))) {
            self.stream.close_gracefully().await;
        }
    }

    /// Serves until the client goes, the socket fails or the server closes
    /// the connection, and says which.
    async fn run(&mut self) -> CloseReason {
        loop {
            let outcome = match poll_fn(|cx| self.poll_event(cx)).await {
                Event::Closing(reason) => return reason,
                Event::Read(result) => self.read(result),
                Event::Writable => poll_fn(|cx| Poll::Ready(self.write(cx)))
                    .await
                    .map_err(|err| {
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
                Event::NameClaimed(ticket, outcome) => {
                    let fed = self.shared.name_claimed(self.conn, ticket, outcome);
                    self.resume(fed);
                    Ok(())
                }
                Event::RoomEntered(ticket, outcome) => {
                    let fed = self.shared.room_entered(self.conn, ticket, outcome);
                    self.resume(fed);
                    Ok(())
                }
                Event::DirectRelayed(ticket, target, outcome) => {
                    let fed = self
                        .shared
                        .direct_relayed(self.conn, ticket, &target, outcome);
                    self.resume(fed);
                    Ok(())
                }
                Event::DmKeyRelayed(ticket, target, answer) => {
                    let fed = self
                        .shared
                        .dm_key_relayed(self.conn, ticket, &target, answer);
                    self.resume(fed);
                    Ok(())
                }
                Event::FileRelayed(ticket, answer) => {
                    let fed = self.shared.file_request_relayed(self.conn, ticket, answer);
                    self.resume(fed);
                    Ok(())
                }
                Event::FileTargetAnswered(ticket, answer) => {
                    let fed = self.shared.file_target_answered(self.conn, ticket, answer);
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
        if self.write_blocked && self.stream.tcp().poll_write_ready(cx).is_ready() {
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
                OwedReply::Name { ticket, answer } => {
                    let ticket = *ticket;
                    Pin::new(answer).poll(cx).map(|outcome| {
                        Event::NameClaimed(ticket, outcome.unwrap_or(ClaimOutcome::Unavailable))
                    })
                }
                OwedReply::Room { ticket, answer } => {
                    let ticket = *ticket;
                    Pin::new(answer).poll(cx).map(|outcome| {
                        Event::RoomEntered(ticket, outcome.unwrap_or(EntryOutcome::Unavailable))
                    })
                }
                OwedReply::Direct {
                    ticket,
                    target,
                    answer,
                } => {
                    let ticket = *ticket;
                    Pin::new(answer).poll(cx).map(|outcome| {
                        let outcome = outcome.unwrap_or(DirectOutcome::Unavailable);
                        Event::DirectRelayed(ticket, target.clone(), outcome)
                    })
                }
                OwedReply::DmKey {
                    ticket,
                    target,
                    answer,
                } => {
                    let ticket = *ticket;
                    Pin::new(answer).poll(cx).map(|answer| {
                        let answer = answer.unwrap_or(DmKeyAnswer::Unavailable);
                        Event::DmKeyRelayed(ticket, target.clone(), answer)
                    })
                }
                OwedReply::File { ticket, answer } => {
                    let ticket = *ticket;
                    Pin::new(answer)
                        .poll(cx)
                        .map(|answer| Event::FileRelayed(ticket, answer.ok().flatten()))
                }
                OwedReply::FileTarget { ticket, answer } => {
                    let ticket = *ticket;
                    Pin::new(answer).poll(cx).map(|answer| {
                        let answer = answer.unwrap_or(FileTarget::Unavailable);
                        Event::FileTargetAnswered(ticket, answer)
                    })
                }
            };
            if event.is_ready() {
                self.owed = None;
            }
            return event;
        }
        if self.backlogged.is_none() {
            self.backlogged = self.shared.relay_backlogged();
        }
        if let Some(drained) = &mut self.backlogged {
            if drained.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.backlogged = None;
        }
        if !S::BUFFERS_INPUT && self.stream.tcp().poll_read_ready(cx).is_pending() {
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
                Fed::Name(claim) => match self.shared.claim_name(claim.name) {
                    Some(answer) => {
                        let ticket = claim.ticket;
                        self.owed = Some(Box::new(OwedReply::Name { ticket, answer }));
                        return;
                    }
                    None => {
                        let unavailable = ClaimOutcome::Unavailable;
                        let fed = self
                            .shared
                            .name_claimed(self.conn, claim.ticket, unavailable);
                        self.continue_after_reply(fed)
                    }
                },
                Fed::Room(entry) => {
                    let ticket = entry.ticket;
                    match self.shared.enter_room(*entry) {
                        Some(answer) => {
                            self.owed = Some(Box::new(OwedReply::Room { ticket, answer }));
                            return;
                        }
                        None => {
                            let unavailable = EntryOutcome::Unavailable;
                            let fed = self.shared.room_entered(self.conn, ticket, unavailable);
                            self.continue_after_reply(fed)
                        }
                    }
                }
                Fed::Direct(relay) => match self.shared.relay_direct(&relay) {
                    Some(answer) => {
                        let (ticket, target) = (relay.ticket, relay.target);
                        let owed = OwedReply::Direct {
                            ticket,
                            target,
                            answer,
                        };
                        self.owed = Some(Box::new(owed));
                        return;
                    }
                    None => {
                        let unavailable = DirectOutcome::Unavailable;
                        let fed = self.shared.direct_relayed(
                            self.conn,
                            relay.ticket,
                            &relay.target,
                            unavailable,
                        );
                        self.continue_after_reply(fed)
                    }
                },
                Fed::DmKey(relay) => match self.shared.relay_dm_key(&relay) {
                    Some(answer) => {
                        let (ticket, target) = (relay.ticket, relay.target);
                        let owed = OwedReply::DmKey {
                            ticket,
                            target,
                            answer,
                        };
                        self.owed = Some(Box::new(owed));
                        return;
                    }
                    None => {
                        let unavailable = DmKeyAnswer::Unavailable;
                        let fed = self.shared.dm_key_relayed(
                            self.conn,
                            relay.ticket,
                            &relay.target,
                            unavailable,
                        );
                        self.continue_after_reply(fed)
                    }
                },
                Fed::FileTarget(ask) => match self.shared.ask_file_target(&ask) {
                    Some(answer) => {
                        let ticket = ask.ticket;
                        self.owed = Some(Box::new(OwedReply::FileTarget { ticket, answer }));
                        return;
                    }
                    None => {
                        let unavailable = FileTarget::Unavailable;
                        let fed =
                            self.shared
                                .file_target_answered(self.conn, ask.ticket, unavailable);
                        self.continue_after_reply(fed)
                    }
                },
                Fed::File(relay) => {
                    let ticket = relay.ticket.expect("only owed requests are fed");
                    match self.shared.relay_file_request(&relay) {
                        Some(answer) => {
                            self.owed = Some(Box::new(OwedReply::File { ticket, answer }));
                            return;
                        }
                        None => {
                            let fed = self.shared.file_request_relayed(self.conn, ticket, None);
                            self.continue_after_reply(fed)
                        }
                    }
                }
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
    /// batches of up to [`MAX_BATCH`] frames per vectored write, then
    /// flushes what the transport held back.
    fn write(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let mut batch = Vec::new();
        loop {
            let offset = self.shared.take_batch(self.conn, &mut batch, MAX_BATCH);
            if batch.is_empty() {
                if !self.stream.flush_now(cx)? {
                    self.write_blocked = true;
                }
                return Ok(());
            }
            let slices = io_slices(&batch, offset);
            let written = self.stream.write_now(cx, &slices)?;
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
        poll_fn(|cx| Poll::Ready(self.write(cx))).await?;
        while self.write_blocked {
            self.stream.tcp().writable().await?;
            self.write_blocked = false;
            poll_fn(|cx| Poll::Ready(self.write(cx))).await?;
        }
        Ok(())
    }
}

impl<S> Drop for Connection<S> {
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
