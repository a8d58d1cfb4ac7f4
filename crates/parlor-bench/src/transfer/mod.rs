//! `parlor bench transfer`: one sender streams files to N recipients
//! through the server's chunked file transfer (PROTOCOL.md §14), and the
//! bench measures what the relay delivers, what it costs the server in CPU,
//! and how much memory the server holds while it does.
//!
//! The module is cut along the run's seams: the options (`args.rs`), the
//! offer and its signature (`offer.rs`), the sender's state machine
//! (`sender.rs`), the recipients' (`recipient.rs`), and the report
//! (`report.rs`). This file sets the connections up and coordinates the
//! timed phase.
//!
//! # Setup
//!
//! 1. One identity (an Ed25519 key and a 2048-bit RSA key) is made, and
//!    the offer's Ed25519 signature, made as `parlor client` makes it
//!    (PROTOCOL.md §14.6: over the room, the sender's name and every field
//!    of the description). The file travels unsealed, with an empty
//!    manifest, so no digest is made. The server checks
//!    neither; the recipients check the signature, once per file, as a real
//!    client would. All of this happens before the timed phase, which
//!    spends nothing on cryptography.
//! 2. The sender and the N recipients connect, say HELLO, take their nicks,
//!    JOIN `--room`, and only then register the key (`81`; all of them
//!    register the same key, which the server allows). Joining before
//!    registering keeps the room a plaintext one, as a legacy client would
//!    have made it: the files are offered unencrypted (flags 0, key id 0),
//!    so no room key is ever rotated and the chunks are the file's bytes.
//!
//! # The timed phase
//!
//! The sender offers the file to the room (`83`, empty target) and every
//! recipient accepts (`85`). On `85 Start` the sender streams the chunks in
//! order, keeping at most the granted window beyond the mark of `8d
//! Window`, with up to [`MAX_BATCH`](sender::MAX_BATCH) chunks per vectored
//! write straight from the pattern (see `file_pattern.rs`): nothing is
//! copied or allocated per chunk. After the last chunk it sends `88 Done`,
//! and `8e Finished` ends the file. Then the next file is offered, until
//! `--files` have been sent.
//!
//! Recipients read into one fixed buffer each and check every chunk as its
//! pieces arrive (`frame_stream.rs`): the transfer id, the index (in order,
//! once: a [`SequenceTracker`](crate::sequence::SequenceTracker) per file
//! counts duplicated and reordered chunks), the length, the marks, and with
//! `--verify-all` every other byte. Each chunk is acknowledged (`87`) once
//! read, all the acks of one read in one write.
//!
//! The run is bounded by `--duration`: after it, no file is offered, and
//! the file in flight is cancelled (`8f`) once the chunk being written is
//! complete; the run then ends. What was sent before the cancel is still
//! expected at every recipient, since the server relays a chunk as soon as
//! it reads it.
//!
//! # What is measured
//!
//! - Delivered bytes and chunks, summed over recipients, per second of the
//!   timed phase: from the first offer to the last `8e` (or, for a
//!   cancelled file, the last delivery).
//! - The time of each file, from its offer to its `8e`.
//! - CPU, as percent of one core over the timed phase: the server's (with
//!   `--server-pid`), the whole bench's, and the sender's own work (its
//!   reads and writes, the kernel's part included), so that a run in which
//!   the bench set the pace is recognised.
//! - The server's resident memory: before setup, once set up, sampled every
//!   [`RSS_EVERY`] during the timed phase (the peak), and VmHWM before and
//!   after. The server keeps at most a window of chunks per transfer, so the
//!   peak should not grow with the file's size.
//! - Lost chunks: those the sender wrote, times the recipients the transfer
//!   started with, minus the distinct chunks that arrived.

mod args;
mod offer;
mod recipient;
mod report;
mod sender;

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use self::recipient::{recipient_task, RecipientTally};
use self::report::Readings;
use self::sender::{sender_task, SenderTally};
use crate::file_pattern::FilePattern;
use crate::frame_stream::{FrameStream, Piece};
use crate::latency::BenchClock;
use crate::process::{self, CpuMeter};
use crate::server_sample::ServerWatch;
use crate::session::{BenchConnection, Setup};
use crate::target::TargetArgs;
use parlor_crypto::Identity;
use parlor_proto::transfer::{FileMeta, FileNotice, FileRequest};
use parlor_proto::{ClientMessage, Frame};

pub use self::args::TransferArgs;
pub use self::report::{FileTimes, TransferReport};

/// How often the server's resident memory is read during the run.
const RSS_EVERY: Duration = Duration::from_millis(20);
/// How long a connection waits for the server to close after the bench
/// closed its side.
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(3);

/// What every connection task of a run reads: the file, its offer, and who
/// sends it where.
struct TransferRun {
    pattern: FilePattern,
    /// The offer as the recipients must see it, signature included.
    meta: FileMeta,
    /// The whole `83` request.
    offer: Bytes,
    /// The identity every connection registers (one for all: the
    /// server does not care, and only the sender signs).
    identity: Arc<Identity>,
    sender_nick: String,
    room: String,
    files: u32,
    recipients: u32,
    verify_all: bool,
    clock: BenchClock,
}

/// What the coordinator tells the connection tasks.
#[derive(Clone, Copy, Debug)]
enum TransferPhase {
    Setup,
    /// Send until this deadline.
    Run(Instant),
    Stop,
}

pub(crate) async fn run(args: &TransferArgs) -> anyhow::Result<TransferReport> {
    let recipients = args.recipients;
    let connections = recipients as usize + 1;
    if let Err(err) = process::ensure_open_files(connections as u64 + 64) {
        bail!("cannot open {connections} connections: {err}");
    }
    let server = ServerWatch::new(&args.target.server_pid);
    let (rss_before, hwm_before) = (server.rss_kib(), server.hwm_kib());

    let prepare_started = Instant::now();
    let prepare_args = args.clone();
    let sender_nick = args.target.nick(0);
    let signer = sender_nick.clone();
    let (identity, pattern, meta) =
        tokio::task::spawn_blocking(move || offer::prepare(&prepare_args, &signer))
            .await
            .context("preparing the file")??;
    let prepare_s = prepare_started.elapsed().as_secs_f64();
    let offer = FileRequest::Offer {
        target: Bytes::new(),
        meta: meta.clone(),
        window: args.window,
    }
    .encode();
    let run = Arc::new(TransferRun {
        pattern,
        meta,
        offer,
        identity: Arc::new(identity),
        sender_nick,
        room: args.room.clone(),
        files: args.files,
        recipients,
        verify_all: args.verify_all,
        clock: BenchClock::start(),
    });

    let (phase, phase_rx) = watch::channel(TransferPhase::Setup);
    let setup_started = Instant::now();
    let (sender, receivers) = set_up(&run, &args.target, &phase, phase_rx).await?;
    let setup_s = setup_started.elapsed().as_secs_f64();
    let rss_loaded = server.rss_kib();

    let deadline = Instant::now() + Duration::from_secs_f64(args.duration);
    let cpu = CpuMeter::start(server.pids());
    let timed_started = Instant::now();
    let _ = phase.send(TransferPhase::Run(deadline));
    let mut peak = rss_loaded;
    let mut samples = 0;
    let mut sampling = tokio::time::interval(RSS_EVERY);
    tokio::pin!(sender);
    let sender = loop {
        tokio::select! {
            sender = &mut sender => break sender.context("the sender's task")?,
            _ = sampling.tick(), if !server.pids().is_empty() => {
                if let Some(now) = server.rss_kib() {
                    peak = peak.max(Some(now));
                    samples += 1;
                }
            }
        }
    };
    let cpu = cpu.stop();
    let timed_s = timed_started.elapsed().as_secs_f64();
    let (rss_after, hwm_after) = (server.rss_kib(), server.hwm_kib());
    let _ = phase.send(TransferPhase::Stop);
    let mut tally = RecipientTally::default();
    for receiver in receivers {
        tally.add(receiver.await.context("a recipient's task")?);
    }

    let readings = Readings {
        prepare_s,
        setup_s,
        timed_s,
        cpu,
        server_sample: server.sample(rss_before, rss_loaded),
        rss_peak: peak,
        rss_samples: samples,
        rss_after,
        hwm_before,
        hwm_after,
    };
    TransferReport::new(args, &run, readings, &sender, &tally)
}

type Tasks = (JoinHandle<SenderTally>, Vec<JoinHandle<RecipientTally>>);

/// Starts the sender's and every recipient's task and waits until all are
/// set up; if any cannot be, stops them all and fails the run.
async fn set_up(
    run: &Arc<TransferRun>,
    target: &TargetArgs,
    phase: &watch::Sender<TransferPhase>,
    phase_rx: watch::Receiver<TransferPhase>,
) -> anyhow::Result<Tasks> {
    let setup = Setup::new(target)?;
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let sender = tokio::spawn(sender_task(
        Arc::clone(run),
        setup.clone(),
        ready_tx.clone(),
        phase_rx.clone(),
    ));
    let receivers: Vec<_> = (1..=run.recipients)
        .map(|index| {
            tokio::spawn(recipient_task(
                Arc::clone(run),
                index as usize,
                target.nick(index as usize),
                setup.clone(),
                ready_tx.clone(),
                phase_rx.clone(),
            ))
        })
        .collect();
    drop(ready_tx);
    let mut errors = Vec::new();
    while let Some(result) = ready_rx.recv().await {
        if let Err(err) = result {
            errors.push(err);
        }
    }
    let Some(first) = errors.first() else {
        return Ok((sender, receivers));
    };
    let _ = phase.send(TransferPhase::Stop);
    let _ = sender.await;
    for receiver in receivers {
        let _ = receiver.await;
    }
    bail!(
        "{} of {} connections could not be set up; the first: {first}",
        errors.len(),
        run.recipients + 1
    )
}

/// HELLO, NICK and JOIN as a legacy client on connection `index` (the
/// sender is 0, recipient i is i), then REGISTER_KEY: the room is created
/// (or entered) by a connection that is not secure yet, so it is a
/// plaintext room.
async fn open(
    setup: &Setup,
    index: usize,
    nick: &str,
    room: &str,
    identity: &Identity,
) -> anyhow::Result<BenchConnection> {
    setup
        .within_limits(async {
            let mut connection = setup.connect(index).await?;
            connection.register(nick).await?;
            connection.join(room).await?;
            // Plain TCP, to a server that allows the extension there.
            let registration =
                identity.registration(&connection.channel_binding()?, nick.as_bytes());
            let register = ClientMessage::RegisterKey(registration);
            connection.expect_ok(&register, "REGISTER_KEY").await?;
            Ok(connection)
        })
        .await
}

/// The deadline, once the coordinator says to start; `None` if it says to
/// stop instead.
async fn start_signal(phase: &mut watch::Receiver<TransferPhase>) -> Option<Instant> {
    loop {
        match *phase.borrow_and_update() {
            TransferPhase::Run(deadline) => return Some(deadline),
            TransferPhase::Stop => return None,
            TransferPhase::Setup => {}
        }
        phase.changed().await.ok()?;
    }
}

/// Reads until the server closes, handing what arrives to `each`, after
/// closing our side.
async fn close(
    stream: &mut TcpStream,
    input: &mut FrameStream,
    mut each: impl FnMut(Piece<'_>),
) -> io::Result<()> {
    use tokio::io::AsyncWriteExt;
    stream.shutdown().await?;
    loop {
        stream.readable().await?;
        match input.read(stream) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            Err(err) => return Err(err),
        }
        if input.pieces(&mut each).is_err() {
            return Ok(());
        }
    }
}

/// Writes what the socket takes of `out[*written..]`; `Ok(false)` when it
/// would block with bytes left.
fn flush(stream: &TcpStream, out: &mut BytesMut, written: &mut usize) -> io::Result<bool> {
    while *written < out.len() {
        match stream.try_write(&out[*written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => *written += n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(err) => return Err(err),
        }
    }
    out.clear();
    *written = 0;
    Ok(true)
}

/// A notice other than a chunk, parsed from its frame.
fn notice(opcode: u8, payload: &[u8]) -> Option<FileNotice> {
    FileNotice::parse(&Frame::new(opcode, Bytes::copy_from_slice(payload))).ok()
}

/// The text of a `9a` reply, for a failure line.
fn reply_text(payload: &[u8]) -> String {
    let status = payload.first().copied().unwrap_or(0xff);
    let text = payload.get(1..).unwrap_or_default();
    format!("{status:02x} {}", String::from_utf8_lossy(text))
}
