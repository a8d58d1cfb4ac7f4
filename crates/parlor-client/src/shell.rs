//! The thin tokio shell around [`ClientSession`]: it waits for a typed line, a
//! server frame, a file hashed or the heartbeat timer, hands it to the
//! session with the current time, and carries out what the session asks
//! for: frames to write, events to show, file operations ([`FileOp`]) and
//! progress to draw.
//!
//! The connection itself is [`Transport`]'s: TLS unless the options say
//! otherwise. What it learned (TLS or not, the server's key) is shown before
//! the session hears that the connection is open.
//!
//! File operations are done in the order asked, right away, except hashing
//! a whole file, which runs on a blocking thread and reports back through
//! the event loop.
//!
//! At start it loads the identity (making it on first run, off the event
//! loop: RSA key generation is slow) and what the data directory remembers
//! ([`Memory`]); it appends what the session asks to remember
//! ([`Output::Remember`]).
//!
//! It keeps the driver contract stated on [`ClientSession`]: one output
//! buffer for every input, carried out in order and then cleared.

use std::collections::HashMap;
use std::io::{self, IsTerminal};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::command::UserCommand;
use super::disk;
use super::event::{Direction, UserEvent};
use super::session::{ClientSession, Output};
use super::terminal::{self, Printer};
use super::transfer::{FileOp, FileSettings, TransferProgress};
use super::transport::{self, Connected, ServerStream, Transport};
use super::Options;
use parlor_crypto::identity::display_fingerprint;
use parlor_crypto::Identity;
use parlor_proto::{Frame, FrameCodec, FrameError};

/// Server frames are not bound by the client limit of 65,793 bytes: a list
/// reply grows with the number of users. This only stops a broken server
/// from making the client reserve gigabytes.
const MAX_SERVER_PAYLOAD: usize = 16 << 20;

/// An open connection. Reading and writing never overlap (the shell writes
/// only between reads), so one stream serves both.
struct ServerLink {
    stream: Box<dyn ServerStream>,
    buffer: BytesMut,
    codec: FrameCodec,
}

impl ServerLink {
    fn new(stream: Box<dyn ServerStream>) -> ServerLink {
        ServerLink {
            stream,
            buffer: BytesMut::new(),
            codec: FrameCodec::new(MAX_SERVER_PAYLOAD),
        }
    }

    /// Writes a frame and pushes it out (TLS holds records back otherwise).
    async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
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
            match self.stream.read_buf(&mut self.buffer).await {
                Ok(0) => return self.codec.decode_eof(&mut self.buffer).transpose(),
                Ok(_) => {}
                Err(err) => return Some(Err(err.into())),
            }
        }
    }
}

pub(crate) async fn run(options: Options) -> anyhow::Result<()> {
    let transport = Transport::new(&options)?;
    let data_dir = options.data_dir()?;
    let (identity, created) = if options.legacy {
        (None, None)
    } else {
        let path = options
            .identity
            .clone()
            .unwrap_or_else(|| data_dir.join("identity"));
        let bits = options.rsa_bits;
        let shown = path.display().to_string();
        let (identity, created) =
            tokio::task::spawn_blocking(move || Identity::load_or_create(&path, bits))
                .await
                .context("key generation stopped")??;
        let created = created.then(|| UserEvent::IdentityCreated {
            path: shown,
            fingerprint: display_fingerprint(identity.fingerprint()),
        });
        (Some(identity), created)
    };
    let memory = disk::load_memory(&data_dir)?;
    let (mut lines, printer) = terminal::start(options.json);
    let settings = FileSettings {
        download_dir: options.download_dir.clone(),
        chunk_size: options.chunk_size,
        ..FileSettings::default()
    };
    let (hashed_tx, mut hashed) = mpsc::unbounded_channel();
    let bars = !options.json && std::io::stdout().is_terminal();
    let session = ClientSession::new(identity)
        .with_file_settings(settings)
        .with_memory(memory)
        .allow_plaintext(options.allow_plaintext);
    let mut shell = Shell {
        session,
        transport,
        link: None,
        printer,
        progress: ProgressView::new(bars),
        hashed: hashed_tx,
        data_dir,
    };
    if let Some(created) = created {
        shell.show(&created);
    }
    // The one buffer every input of the session appends to.
    let mut out = Vec::new();
    if let Some(address) = options.address {
        let connect = UserCommand::Connect(address);
        shell
            .session
            .handle_command(connect, Instant::now(), &mut out);
        if shell.apply(&mut out).await {
            return Ok(());
        }
    }
    let mut input_open = true;
    loop {
        let timeout = shell.session.poll_timeout();
        tokio::select! {
            line = lines.next(), if input_open => match line {
                Some(line) => shell.session.handle_line(&line, Instant::now(), &mut out),
                None => {
                    input_open = false;
                    shell.session.handle_end_of_input(Instant::now(), &mut out);
                }
            },
            frame = next_frame(&mut shell.link) => shell.received(frame, &mut out),
            Some((local, result)) = hashed.recv() => {
                shell.session.handle_file_hashed(local, result, Instant::now(), &mut out);
            }
            () = sleep_until(timeout), if timeout.is_some() => {
                shell.session.handle_timeout(Instant::now(), &mut out);
            }
        }
        if shell.apply(&mut out).await {
            return Ok(());
        }
    }
}

struct Shell {
    session: ClientSession,
    transport: Transport,
    link: Option<ServerLink>,
    printer: Printer,
    progress: ProgressView,
    /// Where hashing threads report.
    hashed: mpsc::UnboundedSender<(u32, Hashed)>,
    /// Where [`Memory`] is kept.
    data_dir: PathBuf,
}

type Hashed = Result<(u64, [u8; 32]), String>;

impl Shell {
    fn received(&mut self, frame: Option<Result<Frame, FrameError>>, out: &mut Vec<Output>) {
        let now = Instant::now();
        let answered_in_tls = self
            .link
            .as_ref()
            .is_some_and(|link| transport::is_tls_record(&link.buffer));
        let reason = match frame {
            Some(Ok(frame)) => return self.session.handle_frame(&frame, now, out),
            Some(Err(_)) if answered_in_tls => "The server answered in TLS: this is its TLS port. \
                 Connect without --insecure-transport, or (for --legacy) to its plain port"
                .to_string(),
            None | Some(Err(FrameError::Truncated)) => "Server closed the connection".to_string(),
            Some(Err(FrameError::BadMagic(_))) => "Server sent an invalid magic number".to_string(),
            Some(Err(FrameError::Io(_))) => "Server hung up".to_string(),
            Some(Err(err)) => format!("Server sent an invalid message. ({err})"),
        };
        self.link = None;
        self.session.handle_closed(&reason, out);
    }

    /// Carries out the session's outputs in `out`, and those they lead to,
    /// then empties it. Returns true when the client should exit.
    ///
    /// What the session makes of a report (a connection opened, a file op
    /// done) is appended to `out`, and carried out after what was already
    /// there.
    async fn apply(&mut self, out: &mut Vec<Output>) -> bool {
        let mut next = 0;
        while let Some(output) = out.get(next) {
            next += 1;
            match output {
                Output::Send(bytes) => {
                    let Some(link) = &mut self.link else { continue };
                    if let Err(err) = link.send(bytes).await {
                        self.link = None;
                        self.session.handle_closed(&err.to_string(), out);
                    }
                }
                Output::Event(event) => self.show(event),
                Output::Remember(record) => {
                    if let Err(err) = disk::remember(&self.data_dir, record) {
                        let text = format!("Could not remember {}: {err}", record.line);
                        self.show(&UserEvent::Error { text });
                    }
                }
                Output::File(op) => {
                    let now = Instant::now();
                    if let Some(outcome) = self.file(op) {
                        outcome.report(&mut self.session, now, out);
                    }
                }
                Output::Progress(progress) => {
                    if let Some(event) = self.progress.update(progress) {
                        self.show(&event);
                    }
                }
                Output::Connect(address) => match self.transport.connect(address).await {
                    Ok(Connected {
                        stream,
                        channel_binding,
                        shown,
                    }) => {
                        self.show(&shown);
                        self.link = Some(ServerLink::new(stream));
                        let now = Instant::now();
                        self.session.handle_connected(channel_binding, now, out);
                    }
                    Err(reason) => self.session.handle_connect_failed(&reason, out),
                },
                Output::Close => {
                    if let Some(mut link) = self.link.take() {
                        let _ = link.stream.shutdown().await;
                    }
                }
                Output::Quit => {
                    self.progress.clear();
                    out.clear();
                    return true;
                }
            }
        }
        out.clear();
        false
    }

    fn show(&mut self, event: &UserEvent) {
        // While bars are drawn, lines go above them through indicatif, which
        // redraws the bars below; the line editor's printer knows nothing
        // of them and would leave stale copies behind.
        match self.progress.drawing() {
            Some(bars) => {
                if let Some(text) = event.to_text() {
                    let _ = bars.println(text);
                }
            }
            None => self.printer.show(event),
        }
    }

    /// Carries out one file operation; returns its outcome, if the session
    /// is to hear of it now.
    fn file(&mut self, op: &FileOp) -> Option<FileOutcome> {
        match op {
            FileOp::Hash { local, path } => {
                let (local, path) = (*local, path.clone());
                let hashed = self.hashed.clone();
                tokio::task::spawn_blocking(move || {
                    let result = disk::hash_file(&path).map_err(|err| err.to_string());
                    let _ = hashed.send((local, result));
                });
                None
            }
            FileOp::Read {
                id,
                index,
                path,
                offset,
                len,
            } => {
                let read = disk::read_chunk(path, *offset, *len).map(Into::into);
                Some(FileOutcome::Read {
                    id: *id,
                    index: *index,
                    read,
                })
            }
            FileOp::Create { id, path } => disk::create(path)
                .err()
                .map(|err| FileOutcome::Failed { id: *id, err }),
            FileOp::Write {
                id,
                path,
                offset,
                data,
            } => disk::write_at(path, *offset, data)
                .err()
                .map(|err| FileOutcome::Failed { id: *id, err }),
            FileOp::Save {
                id,
                part,
                dir,
                name,
            } => {
                let saved = disk::save(part, dir, name);
                Some(FileOutcome::Saved { id: *id, saved })
            }
            FileOp::Delete { path } => {
                if let Err(err) = disk::delete(path) {
                    let text = format!("Could not delete {}: {err}", path.display());
                    self.show(&UserEvent::Error { text });
                }
                None
            }
        }
    }
}

/// What a file operation came to, for the session to hear.
enum FileOutcome {
    Read {
        id: u32,
        index: u32,
        read: io::Result<Bytes>,
    },
    /// Creating or writing the partial file failed.
    Failed {
        id: u32,
        err: io::Error,
    },
    Saved {
        id: u32,
        saved: io::Result<PathBuf>,
    },
}

impl FileOutcome {
    fn report(self, session: &mut ClientSession, now: Instant, out: &mut Vec<Output>) {
        match self {
            FileOutcome::Read { id, index, read } => {
                session.handle_chunk_read(id, index, read, now, out)
            }
            FileOutcome::Failed { id, err } => session.handle_file_io_failed(id, &err, now, out),
            FileOutcome::Saved { id, saved } => session.handle_file_saved(id, saved, out),
        }
    }
}

/// How often a progress event is printed when there is no bar to draw.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Progress bars on a terminal (with `indicatif`), or a sparing
/// [`UserEvent::FileProgress`] for `--json` and pipes.
struct ProgressView {
    bars: Option<indicatif::MultiProgress>,
    live: HashMap<(Direction, u32), Live>,
}

struct Live {
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
    reported: Instant,
}

impl ProgressView {
    fn new(bars: bool) -> ProgressView {
        ProgressView {
            bars: bars.then(indicatif::MultiProgress::new),
            live: HashMap::new(),
        }
    }

    /// The bars, while any is drawn.
    fn drawing(&self) -> Option<&indicatif::MultiProgress> {
        self.bars.as_ref().filter(|_| !self.live.is_empty())
    }

    /// Draws `progress`; returns an event to print instead, now and then.
    fn update(&mut self, progress: &TransferProgress) -> Option<UserEvent> {
        let key = (progress.direction, progress.id);
        let now = Instant::now();
        if progress.ended {
            if let Some(bar) = self.live.remove(&key).and_then(|live| live.bar) {
                bar.finish_and_clear();
            }
            return None;
        }
        if progress.bytes == 0 && !self.live.contains_key(&key) {
            // Nothing to show yet; what the line editor is still printing
            // (the accept, the start) is out of the way when bytes move.
            return None;
        }
        let bars = &self.bars;
        if let (Some(bars), true) = (bars, self.live.is_empty()) {
            // The cursor may be after the prompt: start the bars on a line
            // of their own, or the first one wraps and is drawn twice.
            let _ = bars.println("\r");
        }
        let live = self.live.entry(key).or_insert_with(|| Live {
            bar: bars.as_ref().map(|bars| bars.add(new_bar(progress))),
            started: now,
            reported: now,
        });
        if let Some(bar) = &live.bar {
            bar.set_position(progress.bytes);
            return None;
        }
        if now.duration_since(live.reported) < PROGRESS_EVERY {
            return None;
        }
        live.reported = now;
        let elapsed = now.duration_since(live.started).as_secs_f64();
        let rate = (progress.bytes as f64 / elapsed.max(0.001)) as u64;
        let left = progress.total.saturating_sub(progress.bytes);
        Some(UserEvent::FileProgress {
            id: progress.id,
            direction: progress.direction,
            name: progress.name.clone(),
            bytes: progress.bytes,
            total: progress.total,
            bytes_per_sec: rate,
            eta_secs: (rate > 0).then(|| left / rate),
        })
    }

    fn clear(&mut self) {
        for (_, live) in self.live.drain() {
            if let Some(bar) = live.bar {
                bar.finish_and_clear();
            }
        }
    }
}

fn new_bar(progress: &TransferProgress) -> indicatif::ProgressBar {
    let arrow = match progress.direction {
        Direction::Send => "→",
        Direction::Receive => "←",
    };
    let style = indicatif::ProgressStyle::with_template(
        "{prefix} {wide_msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
    )
    .expect("a valid template")
    .progress_chars("=> ");
    // Hidden until added to the bars, so that it is never drawn alone.
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(progress.total),
        indicatif::ProgressDrawTarget::hidden(),
    )
    .with_style(style);
    bar.set_prefix(format!("{arrow} {}", progress.id));
    bar.set_message(progress.name.clone());
    bar
}

async fn next_frame(link: &mut Option<ServerLink>) -> Option<Result<Frame, FrameError>> {
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
