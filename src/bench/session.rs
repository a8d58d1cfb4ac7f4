//! One bench connection: the socket, its input buffer, and the legacy
//! client's setup steps (HELLO, NICK, JOIN) with their replies checked.
//!
//! Setup goes one request at a time and waits for each `9a` reply, as the
//! real client does. Once traffic starts, the workloads drive the socket
//! themselves through [`Session::stream`], [`Session::try_read`] and
//! [`Session::next_frame`], so that reading and writing share one task
//! without a lock.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_util::codec::Decoder;

use super::target::TargetArgs;
use crate::protocol::{opcode, ClientMessage, Frame, FrameCodec, FrameError, Status};

/// The largest server frame the bench accepts. Deliveries top out at
/// 66,049 bytes; the slack covers long `9a` replies.
const MAX_SERVER_PAYLOAD: usize = 1 << 20;

/// The real client's greeting, so the server sees what it sees in service.
pub const GREETING: &[u8] = "Xin chào. Bonghjornu.".as_bytes();

/// The real client's heartbeat payload: a length byte and 31 characters.
pub const HEARTBEAT: &[u8] = b"\x1fstaying alive, staying alive...";

/// How connections are set up: where to, how many at once, and how long
/// each may take. Cheap to clone into every connection task.
#[derive(Clone)]
pub struct Setup {
    server: SocketAddr,
    timeout: Duration,
    permits: Arc<Semaphore>,
}

impl Setup {
    pub fn new(target: &TargetArgs) -> Setup {
        Setup {
            server: target.server,
            timeout: target.setup_timeout(),
            permits: Arc::new(Semaphore::new(target.connect_concurrency)),
        }
    }

    /// Connects, registers as `nick` and joins `room`, waiting for a
    /// permit first so that the server is not flooded with handshakes.
    pub async fn open(&self, nick: &str, room: Option<&str>) -> anyhow::Result<Session> {
        let _permit = self.permits.acquire().await?;
        let steps = async {
            let mut session = Session::connect(self.server).await?;
            session.register(nick).await?;
            if let Some(room) = room {
                session.join(room).await?;
            }
            anyhow::Ok(session)
        };
        tokio::time::timeout(self.timeout, steps)
            .await
            .map_err(|_| anyhow!("setup took longer than {:?}", self.timeout))?
    }
}

pub struct Session {
    stream: TcpStream,
    input: BytesMut,
    codec: FrameCodec,
}

impl Session {
    /// Connects with `TCP_NODELAY`, as the real client's small writes need.
    pub async fn connect(server: SocketAddr) -> anyhow::Result<Session> {
        let stream = TcpStream::connect(server)
            .await
            .with_context(|| format!("cannot connect to {server}"))?;
        stream.set_nodelay(true)?;
        Ok(Session {
            stream,
            input: BytesMut::new(),
            codec: FrameCodec::new(MAX_SERVER_PAYLOAD),
        })
    }

    /// HELLO, then NICK `nick`; both must be answered `9a 00`.
    pub async fn register(&mut self, nick: &str) -> anyhow::Result<()> {
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
    pub async fn join(&mut self, room: &str) -> anyhow::Result<()> {
        let join = ClientMessage::Join {
            room: Bytes::copy_from_slice(room.as_bytes()),
            password: Bytes::new(),
        };
        self.expect_ok(&join, "JOIN").await
    }

    /// Sends a request and waits for its reply; anything but `9a 00` is an
    /// error that quotes the server's text.
    pub async fn expect_ok(&mut self, request: &ClientMessage, name: &str) -> anyhow::Result<()> {
        self.send(&request.to_frame().to_bytes()).await?;
        let frame = self
            .read_frame()
            .await?
            .ok_or_else(|| anyhow!("server closed the connection before answering {name}"))?;
        if frame.opcode != opcode::RESPONSE {
            // Deliveries cannot arrive before the bench sends traffic; one
            // that does means another client is using the server.
            bail!(
                "unexpected frame 0x{:02x} while waiting for the {name} reply",
                frame.opcode
            );
        }
        match frame.payload.split_first() {
            Some((&status, _)) if status == Status::Ok as u8 => Ok(()),
            Some((status, text)) => bail!(
                "{name} refused ({status:02x}): {}",
                String::from_utf8_lossy(text)
            ),
            None => bail!("empty reply to {name}"),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// The next whole frame; `None` when the server closed the connection.
    pub async fn read_frame(&mut self) -> anyhow::Result<Option<Frame>> {
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
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Reads what the socket has, up to `chunk` bytes, without waiting.
    /// `Ok(0)` is the end of the stream.
    pub fn try_read(&mut self, chunk: usize) -> io::Result<usize> {
        self.input.reserve(chunk);
        self.stream.try_read_buf(&mut self.input)
    }

    /// Writes what the socket takes of `bytes`, without waiting.
    pub fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
        self.stream.try_write(bytes)
    }

    /// The next whole frame already read, if any.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        self.codec.decode(&mut self.input)
    }

    /// Closes our side of the connection (FIN); reading goes on.
    pub async fn shutdown_write(&mut self) -> io::Result<()> {
        self.stream.shutdown().await
    }
}
