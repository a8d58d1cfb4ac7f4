//! The thin tokio shell around [`Session`]: it waits for a typed line, a
//! server frame or the heartbeat timer, hands it to the session with the
//! current time, and carries out what the session asks for.

use std::collections::VecDeque;
use std::time::Instant;

use anyhow::Context;
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

use super::command::Command;
use super::session::{Output, Session};
use super::terminal::{self, Printer};
use super::Options;
use crate::crypto::Identity;
use crate::protocol::{Frame, FrameCodec, FrameError};

/// Server frames are not bound by the client limit of 65,793 bytes: a list
/// reply grows with the number of users. This only stops a broken server
/// from making the client reserve gigabytes.
const MAX_SERVER_PAYLOAD: usize = 16 << 20;

/// An open connection.
struct Link {
    reader: OwnedReadHalf,
    buffer: BytesMut,
    codec: FrameCodec,
    writer: OwnedWriteHalf,
}

impl Link {
    fn new(stream: TcpStream) -> Link {
        let (reader, writer) = stream.into_split();
        Link {
            reader,
            buffer: BytesMut::new(),
            codec: FrameCodec::new(MAX_SERVER_PAYLOAD),
            writer,
        }
    }

    /// The next whole frame; `None` when the server closed cleanly.
    /// Cancel-safe: what was read stays in the buffer.
    async fn next_frame(&mut self) -> Option<Result<Frame, FrameError>> {
        loop {
            match self.codec.decode(&mut self.buffer) {
                Ok(Some(frame)) => return Some(Ok(frame)),
                Ok(None) => {}
                Err(err) => return Some(Err(err)),
            }
            match self.reader.read_buf(&mut self.buffer).await {
                Ok(0) => return self.codec.decode_eof(&mut self.buffer).transpose(),
                Ok(_) => {}
                Err(err) => return Some(Err(err.into())),
            }
        }
    }
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    let identity = if options.legacy {
        None
    } else {
        let bits = options.rsa_bits;
        let identity = tokio::task::spawn_blocking(move || Identity::generate(bits))
            .await
            .context("key generation stopped")?;
        Some(identity?)
    };
    let (mut lines, printer) = terminal::start(options.json);
    let mut shell = Shell {
        session: Session::new(identity),
        link: None,
        printer,
    };
    if let Some(address) = options.address {
        let outputs = shell
            .session
            .command(Command::Connect(address), Instant::now());
        if shell.apply(outputs).await {
            return Ok(());
        }
    }
    let mut input_open = true;
    loop {
        let heartbeat = shell.session.next_heartbeat();
        let outputs = tokio::select! {
            line = lines.next(), if input_open => match line {
                Some(line) => shell.session.line(&line, Instant::now()),
                None => {
                    input_open = false;
                    shell.session.end_of_input(Instant::now())
                }
            },
            frame = next_frame(&mut shell.link) => shell.received(frame),
            () = sleep_until(heartbeat), if heartbeat.is_some() => {
                shell.session.tick(Instant::now())
            }
        };
        if shell.apply(outputs).await {
            return Ok(());
        }
    }
}

struct Shell {
    session: Session,
    link: Option<Link>,
    printer: Printer,
}

impl Shell {
    fn received(&mut self, frame: Option<Result<Frame, FrameError>>) -> Vec<Output> {
        let now = Instant::now();
        let reason = match frame {
            Some(Ok(frame)) => return self.session.frame(&frame, now),
            None | Some(Err(FrameError::Truncated)) => "Server closed the connection".to_string(),
            Some(Err(FrameError::BadMagic(_))) => "Server sent an invalid magic number".to_string(),
            Some(Err(FrameError::Io(_))) => "Server hung up".to_string(),
            Some(Err(err)) => format!("Server sent an invalid message. ({err})"),
        };
        self.link = None;
        self.session.closed(&reason)
    }

    /// Carries out the session's outputs, and those they lead to. Returns
    /// true when the client should exit.
    async fn apply(&mut self, outputs: Vec<Output>) -> bool {
        let mut outputs = VecDeque::from(outputs);
        while let Some(output) = outputs.pop_front() {
            match output {
                Output::Send(bytes) => {
                    let Some(link) = &mut self.link else { continue };
                    if let Err(err) = link.writer.write_all(&bytes).await {
                        self.link = None;
                        outputs.extend(self.session.closed(&err.to_string()));
                    }
                }
                Output::Event(event) => self.printer.show(&event),
                Output::Connect(address) => match TcpStream::connect(&address).await {
                    Ok(stream) => {
                        // Requests are small and interactive.
                        let _ = stream.set_nodelay(true);
                        self.link = Some(Link::new(stream));
                        outputs.extend(self.session.connected(Instant::now()));
                    }
                    Err(err) => outputs.extend(self.session.connect_failed(&err.to_string())),
                },
                Output::Close => {
                    if let Some(mut link) = self.link.take() {
                        let _ = link.writer.shutdown().await;
                    }
                }
                Output::Quit => return true,
            }
        }
        false
    }
}

async fn next_frame(link: &mut Option<Link>) -> Option<Result<Frame, FrameError>> {
    match link {
        Some(link) => link.next_frame().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}
