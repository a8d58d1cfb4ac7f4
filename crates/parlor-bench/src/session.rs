//! One bench connection: the socket, its input buffer, and the legacy
//! client's setup steps (HELLO, NICK, JOIN) with their replies checked.
//!
//! Setup goes one request at a time and waits for each `9a` reply, as the
//! real client does. Once traffic starts, the workloads drive the socket
//! themselves through [`BenchConnection::stream`], [`BenchConnection::try_read`] and
//! [`BenchConnection::next_frame`], so that reading and writing share one task
//! without a lock.
//!
//! A connection that waits (for the others to be set up, for keys, for the
//! start) sends the real client's heartbeat every [`KEEPALIVE`], so that a
//! long setup never runs into the server's idle timeout.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use super::target::{self, TargetArgs};
use super::tls::{self, TlsSession};
use parlor_proto::secure::{CHANNEL_BINDING_LEN, PLAIN_CHANNEL_BINDING};
use parlor_proto::{opcode, ClientMessage, Frame, FrameCodec, FrameError, Status};

/// The largest server frame the bench accepts. Deliveries top out at
/// 66,049 bytes; the slack covers long `9a` replies.
const MAX_SERVER_PAYLOAD: usize = 1 << 20;

/// The real client's greeting, so the server sees what it sees in service.
pub(crate) const GREETING: &[u8] = parlor_proto::legacy::LEGACY_GREETING;

/// The real client's heartbeat payload.
pub(crate) const HEARTBEAT: &[u8] = parlor_proto::legacy::HEARTBEAT_PAYLOAD;

/// How often a waiting connection sends a heartbeat: well inside parlor's
/// default idle timeout of 30 s, and about as often as the real client.
pub(crate) const KEEPALIVE: Duration = Duration::from_secs(5);

/// How connections are set up: where to, how many at once, and how long
/// each may take. Cheap to clone into every connection task.
#[derive(Clone)]
pub(crate) struct Setup {
    /// The `--server` addresses; connection i goes to the (i mod n)-th.
    servers: Arc<[SocketAddr]>,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
    permits: Arc<Semaphore>,
}

impl Setup {
    pub(crate) fn new(target: &TargetArgs) -> anyhow::Result<Setup> {
        let tls = target.tls_pin.map(tls::client_config).transpose()?;
        Ok(Setup {
            servers: target.server.as_slice().into(),
            tls,
            timeout: target.setup_timeout(),
            permits: Arc::new(Semaphore::new(target.connect_concurrency)),
        })
    }

    /// Connects connection `index`, registers as `nick` and joins `room`,
    /// as the legacy client does.
    pub(crate) async fn open(
        &self,
        index: usize,
        nick: &str,
        room: Option<&str>,
    ) -> anyhow::Result<BenchConnection> {
        self.within_limits(async {
            let mut session = self.connect(index).await?;
            session.register(nick).await?;
            if let Some(room) = room {
                session.join(room).await?;
            }
            Ok(session)
        })
        .await
    }

    /// Connects connection `index` to its server (see
    /// [`TargetArgs::server_for`]), over TLS when `--tls-pin` asks for it.
    pub(crate) async fn connect(&self, index: usize) -> anyhow::Result<BenchConnection> {
        BenchConnection::connect(target::spread(&self.servers, index), self.tls.as_ref()).await
    }

    /// Runs the setup `steps` of one connection once a permit is free, so
    /// that the server is not flooded with handshakes, and within the setup
    /// timeout. The steps start only when polled, so connecting waits for
    /// the permit too.
    pub(crate) async fn within_limits<T>(
        &self,
        steps: impl Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        let _permit = self.permits.acquire().await?;
        tokio::time::timeout(self.timeout, steps)
            .await
            .map_err(|_| anyhow!("setup took longer than {:?}", self.timeout))?
    }
}

/// One of the bench's connections to the server: the socket, and what was
/// read from it but not yet taken as frames. (Not the reference client's
/// `Session`: this one only sets up and then hands the socket over.)
pub(crate) struct BenchConnection {
    stream: TcpStream,
    /// The TLS session over `stream`, with `--tls-pin`.
    tls: Option<Box<TlsSession>>,
    input: BytesMut,
    codec: FrameCodec,
}

impl BenchConnection {
    /// Connects with `TCP_NODELAY`, as the real client's small writes need,
    /// and runs the TLS handshake when `tls` is given.
    pub(crate) async fn connect(
        server: SocketAddr,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) -> anyhow::Result<BenchConnection> {
        let stream = TcpStream::connect(server)
            .await
            .with_context(|| format!("cannot connect to {server}"))?;
        stream.set_nodelay(true)?;
        let tls = match tls {
            Some(config) => {
                let mut session = TlsSession::new(config, server)?;
                session
                    .handshake(&stream)
                    .await
                    .with_context(|| format!("TLS handshake with {server}"))?;
                Some(Box::new(session))
            }
            None => None,
        };
        Ok(BenchConnection {
            stream,
            tls,
            input: BytesMut::new(),
            codec: FrameCodec::new(MAX_SERVER_PAYLOAD),
        })
    }

    /// What a registration's possession proof signs: the TLS exporter
    /// value, or the plain connection's zeros.
    pub(crate) fn channel_binding(&self) -> io::Result<[u8; CHANNEL_BINDING_LEN]> {
        match &self.tls {
            Some(tls) => tls.channel_binding(),
            None => Ok(PLAIN_CHANNEL_BINDING),
        }
    }

    /// HELLO, then NICK `nick`; both must be answered `9a 00`.
    pub(crate) async fn register(&mut self, nick: &str) -> anyhow::Result<()> {
        self.expect_ok(
            &ClientMessage::Hello {
                greeting: Bytes::from_static(GREETING),
            },
            "HELLO",
        )
        .await?;
        self.expect_ok(
            &ClientMessage::Nick {
                name: Bytes::copy_from_slice(nick.as_bytes()),
            },
            "NICK",
        )
        .await
    }

    /// JOIN `room` without a password; must be answered `9a 00`.
    pub(crate) async fn join(&mut self, room: &str) -> anyhow::Result<()> {
        let join = ClientMessage::Join {
            room: Bytes::copy_from_slice(room.as_bytes()),
            password: Bytes::new(),
        };
        self.expect_ok(&join, "JOIN").await
    }

    /// Sends a request and waits for its reply, which must be a bare
    /// `9a 00`; anything else is an error that quotes the server's text.
    pub(crate) async fn expect_ok(
        &mut self,
        request: &ClientMessage,
        name: &str,
    ) -> anyhow::Result<()> {
        match self.request(request, name).await?.first() {
            // Deliveries cannot arrive before the bench sends traffic; one
            // that does means another client is using the server.
            Some(frame) => bail!(
                "unexpected frame 0x{:02x} while waiting for the {name} reply",
                frame.opcode
            ),
            None => Ok(()),
        }
    }

    /// Sends a request and reads its reply up to the `9a`, which must be
    /// `9a 00`. Returns the frames that came before it: a secure
    /// connection's confirmations and keys (PROTOCOL.md §12.1), which the
    /// caller checks.
    pub(crate) async fn request(
        &mut self,
        request: &ClientMessage,
        name: &str,
    ) -> anyhow::Result<Vec<Frame>> {
        self.send(&request.to_frame().to_bytes()).await?;
        let mut before = Vec::new();
        let reply = loop {
            let frame = self
                .read_frame()
                .await?
                .ok_or_else(|| anyhow!("server closed the connection before answering {name}"))?;
            if frame.opcode == opcode::RESPONSE {
                break frame;
            }
            before.push(frame);
        };
        match reply.payload.split_first() {
            Some((&status, _)) if status == Status::Ok as u8 => Ok(before),
            Some((status, text)) => bail!(
                "{name} refused ({status:02x}): {}",
                String::from_utf8_lossy(text)
            ),
            None => bail!("empty reply to {name}"),
        }
    }

    /// Sends the real client's heartbeat, which the server does not answer.
    pub(crate) async fn heartbeat(&mut self) -> io::Result<()> {
        let heartbeat = ClientMessage::Heartbeat {
            payload: Bytes::from_static(HEARTBEAT),
        };
        self.send(&heartbeat.to_frame().to_bytes()).await
    }

    /// Waits for `until`, sending a heartbeat every [`KEEPALIVE`] meanwhile.
    /// Nothing is read: what the server sends waits in the socket. A
    /// heartbeat that cannot be written means the connection is gone, which
    /// the next read finds out; the wait goes on without heartbeats.
    pub(crate) async fn keep_alive_while<T>(&mut self, until: impl Future<Output = T>) -> T {
        tokio::pin!(until);
        let mut alive = true;
        loop {
            tokio::select! {
                value = &mut until => return value,
                () = tokio::time::sleep(KEEPALIVE), if alive => {
                    alive = self.heartbeat().await.is_ok();
                }
            }
        }
    }

    pub(crate) async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let Some(tls) = &mut self.tls else {
            return self.stream.write_all(bytes).await;
        };
        let mut rest = bytes;
        while !rest.is_empty() {
            match tls.write(&self.stream, rest) {
                Ok(taken) => rest = &rest[taken..],
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    self.stream.writable().await?;
                }
                Err(err) => return Err(err),
            }
        }
        tls.flush_all(&self.stream).await
    }

    /// The next whole frame; `None` when the server closed the connection.
    pub(crate) async fn read_frame(&mut self) -> anyhow::Result<Option<Frame>> {
        loop {
            if let Some(frame) = self.next_frame()? {
                return Ok(Some(frame));
            }
            self.stream.readable().await?;
            match self.try_read(4096) {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// The socket, to wait for readiness on.
    pub(crate) fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Reads what the socket has, up to `chunk` bytes, without waiting.
    /// `Ok(0)` is the end of the stream.
    pub(crate) fn try_read(&mut self, chunk: usize) -> io::Result<usize> {
        if let Some(tls) = &mut self.tls {
            return tls.read(&self.stream, &mut self.input, chunk);
        }
        self.input.reserve(chunk);
        self.stream.try_read_buf(&mut self.input)
    }

    /// Writes what the socket takes of `bytes`, without waiting. Over TLS,
    /// records the socket did not take wait inside the session:
    /// [`BenchConnection::has_unsent`] says so, and [`BenchConnection::flush`]
    /// writes them once the socket is writable.
    pub(crate) fn try_write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match &mut self.tls {
            Some(tls) => tls.write(&self.stream, bytes),
            None => self.stream.try_write(bytes),
        }
    }

    /// Writes TLS records that wait, without waiting; `Ok` also when the
    /// socket takes none now.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        match &mut self.tls {
            Some(tls) => tls.flush(&self.stream).map(drop),
            None => Ok(()),
        }
    }

    /// Whether TLS records wait for the socket to become writable.
    pub(crate) fn has_unsent(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| tls.has_unsent())
    }

    /// The next whole frame already read, if any.
    pub(crate) fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        self.codec.decode(&mut self.input)
    }

    /// The socket and the bytes already read from it but not yet taken as
    /// frames, for a workload that reads the stream its own way; plain TCP
    /// only (`transfer` refuses `--tls-pin`).
    pub(crate) fn into_parts(self) -> (TcpStream, BytesMut) {
        assert!(self.tls.is_none(), "into_parts is for plain connections");
        (self.stream, self.input)
    }

    /// Closes our side of the connection (`close_notify`, then FIN);
    /// reading goes on.
    pub(crate) async fn shutdown_write(&mut self) -> io::Result<()> {
        if let Some(tls) = &mut self.tls {
            tls.close(&self.stream).await?;
        }
        self.stream.shutdown().await
    }
}
