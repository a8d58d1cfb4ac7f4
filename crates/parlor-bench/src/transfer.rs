//! `parlor bench transfer`: one sender streams files to N recipients
//! through the server's chunked file transfer (PROTOCOL.md §14), and the
//! bench measures what the relay delivers, what it costs the server in CPU,
//! and how much memory the server holds while it does.
//!
//! # Setup
//!
//! 1. One 2048-bit RSA key is made, and the file is prepared: its SHA-256
//!    digest (about a second per GiB) and the offer's RSA-PSS signature,
//!    over the offer's fields from the name to the digest as they are
//!    encoded on the wire. The server checks neither; the recipients check
//!    the signature, once per file. All of this happens before the timed
//!    phase, which spends nothing on cryptography.
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
//! Window`, with up to [`MAX_BATCH`] chunks per vectored write straight from
//! the pattern (see `file_pattern.rs`): nothing is copied or allocated per
//! chunk. After the last chunk it sends `88 Done`, and `8e Finished` ends
//! the file. Then the next file is offered, until `--files` have been sent.
//!
//! Recipients read into one fixed buffer each and check every chunk as its
//! pieces arrive (`frame_stream.rs`): the transfer id, the index (in order,
//! once: a [`SequenceTracker`] per file counts duplicated and reordered
//! chunks), the length, the marks, and with `--verify-all` every other
//! byte. Each chunk is acknowledged (`87`) once read, all the acks of one
//! read in one write.
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

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{BufMut, Bytes, BytesMut};
use clap::Args;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::sleep_until;

use super::file_pattern::{FilePattern, MAX_HEAD};
use super::frame_stream::{FrameStream, Piece};
use super::latency::{round1, round3, Clock};
use super::process::{self, CpuMeter};
use super::sequence::{Arrival, SequenceTracker};
use super::session::{Session, Setup};
use super::target::{seconds, TargetArgs};
use parlor_crypto::{Identity, PeerKey};
use parlor_proto::transfer::{
    opcode as file_opcode, EndReason, FileMeta, FileNotice, FileRequest, CHUNK_HEADER_LEN,
    NONCE_LEN,
};
use parlor_proto::{opcode, ClientMessage, Frame, Status, HEADER_LEN, MAGIC};

/// Size of every bench key. The server does not use it for files, so the
/// smallest it accepts.
const RSA_BITS: usize = 2048;
/// What the recipients read at once: many chunks per system call.
const RECIPIENT_READ: usize = 1 << 20;
/// The sender only reads short notices.
const SENDER_READ: usize = 64 * 1024;
/// Chunks gathered into one vectored write.
pub(crate) const MAX_BATCH: usize = 16;
/// How often the server's resident memory is read during the run.
pub(crate) const RSS_EVERY: Duration = Duration::from_millis(20);
/// How long the sender may take, once `--duration` is over, to finish the
/// chunk it is writing and cancel the file.
const CANCEL_GRACE: Duration = Duration::from_secs(5);
/// How long a connection waits for the server to close after the bench
/// closed its side.
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(3);
/// At or above this share of its core, the bench may have set the pace.
const SATURATED_PCT: f64 = 85.0;
/// The file's name in every offer.
const FILE_NAME: &str = "parlor-bench.bin";
/// A chunk frame's bytes before its data.
const CHUNK_HEAD: usize = HEADER_LEN + CHUNK_HEADER_LEN;
/// The most recipients: a room holds 1,000 members by default.
const MAX_RECIPIENTS: u32 = 999;
/// The largest chunk the server can be configured to take.
const MAX_CHUNK_BYTES: u64 = 16 << 20;

#[derive(Args, Clone, Debug, Serialize)]
pub struct TransferArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub target: TargetArgs,
    /// Members of the room who receive every file (N); connection 0 sends.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub recipients: u32,
    /// Size of the file: bytes, or a number with a unit (KiB, MiB, GiB;
    /// kB, MB, GB).
    #[arg(long, value_name = "SIZE", default_value = "1GiB", value_parser = parse_size)]
    pub size: u64,
    /// Bytes of file data in each chunk (the last may be shorter).
    #[arg(long, value_name = "SIZE", default_value = "256KiB", value_parser = parse_size)]
    pub chunk_bytes: u64,
    /// Chunks the sender asks to have in flight beyond what every recipient
    /// acknowledged; the server grants at most its `max_transfer_window`.
    #[arg(long, value_name = "W", default_value_t = 8)]
    pub window: u8,
    /// Files to send, one after another.
    #[arg(long, value_name = "K", default_value_t = 1)]
    pub files: u32,
    /// Seconds the timed phase may last: after it no file is offered and
    /// the one in flight is cancelled.
    #[arg(long, value_name = "S", default_value_t = 120.0)]
    pub duration: f64,
    /// The room the sender and the recipients join.
    #[arg(long, value_name = "ROOM", default_value = "files")]
    pub room: String,
    /// Compare every byte of every chunk with the pattern, not only its
    /// length and the marks in its first and last 8 bytes.
    #[arg(long)]
    pub verify_all: bool,
}

impl TransferArgs {
    pub fn validate(&self) -> Result<(), String> {
        self.target.validate()?;
        if !(1..=MAX_RECIPIENTS).contains(&self.recipients) {
            return Err(format!("--recipients: from 1 to {MAX_RECIPIENTS}"));
        }
        if self.size == 0 {
            return Err("--size: at least 1 byte".into());
        }
        if !(1..=MAX_CHUNK_BYTES).contains(&self.chunk_bytes) {
            return Err(format!(
                "--chunk-bytes: from 1 to {MAX_CHUNK_BYTES} (16 MiB, the most a server may allow)"
            ));
        }
        if self.size.div_ceil(self.chunk_bytes) > u64::from(u32::MAX) {
            return Err("--size / --chunk-bytes: at most 4,294,967,295 chunks".into());
        }
        if self.window == 0 || self.window > parlor_proto::transfer::MAX_WINDOW {
            return Err(format!(
                "--window: from 1 to {}",
                parlor_proto::transfer::MAX_WINDOW
            ));
        }
        if self.files == 0 {
            return Err("--files: at least 1".into());
        }
        seconds("--duration", self.duration)?;
        if self.room.is_empty()
            || self.room.len() > 255
            || self.room.bytes().any(|b| b <= b' ' || b == 0x7f)
        {
            return Err("--room: 1 to 255 bytes, no spaces or control characters".into());
        }
        Ok(())
    }
}

/// Parses a size: `1048576`, `1MiB`, `256KiB`, `1GiB`, `10MB`, `1.5GiB`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit_bytes: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "unknown unit `{other}`: use B, KiB, MiB, GiB, TiB, kB, MB, GB or TB"
            ))
        }
    };
    let bad = || format!("`{text}` is not a size (e.g. 1048576, 256KiB, 1GiB, 10MB)");
    if let Ok(whole) = number.parse::<u64>() {
        return whole.checked_mul(unit_bytes).ok_or_else(bad);
    }
    let value: f64 = number.parse().map_err(|_| bad())?;
    let bytes = (value * unit_bytes as f64).round();
    if !(bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64) {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// A size for people: whole binary units when it is one, else bytes.
fn size_text(bytes: u64) -> String {
    for (unit, name) in [(1u64 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")] {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{} {name}", bytes / unit);
        }
    }
    format!("{bytes} B")
}

/// Seconds of the files that finished.
#[derive(Clone, Debug, Serialize)]
pub struct FileTimes {
    pub min: f64,
    pub mean: f64,
    pub max: f64,
}

impl FileTimes {
    fn of(seconds: &[f64]) -> Option<FileTimes> {
        if seconds.is_empty() {
            return None;
        }
        Some(FileTimes {
            min: round3(seconds.iter().copied().fold(f64::INFINITY, f64::min)),
            mean: round3(seconds.iter().sum::<f64>() / seconds.len() as f64),
            max: round3(seconds.iter().copied().fold(0.0, f64::max)),
        })
    }
}

/// The result of a `transfer` run (one JSON line).
#[derive(Debug, Serialize)]
pub struct TransferReport {
    pub tool: &'static str,
    pub workload: &'static str,
    pub server: String,
    pub params: serde_json::Value,
    pub connections: usize,
    pub recipients: u32,
    pub file_bytes: u64,
    pub chunk_bytes: u64,
    pub chunks_per_file: u32,
    /// The window the server granted (`85`), at most `--window`.
    pub window_granted: Option<u8>,
    /// Key generation, digest and signature, before connecting.
    pub prepare_s: f64,
    pub setup_s: f64,
    pub files_offered: u32,
    pub files_finished: u32,
    /// Files cancelled when `--duration` ran out.
    pub files_cancelled: u32,
    /// The timed phase: from the first offer to the last `8e` or delivery.
    pub elapsed_s: f64,
    /// From each finished file's offer to its `8e`.
    pub file_s: Option<FileTimes>,
    /// Chunks the sender wrote, and their data bytes.
    pub chunks_sent: u64,
    pub bytes_sent: u64,
    pub sent_bytes_per_s: Option<f64>,
    /// Chunks owed to recipients: those sent, times the recipients each
    /// transfer started with.
    pub expected_deliveries: u64,
    /// Distinct chunks that arrived, summed over recipients.
    pub delivered: u64,
    /// Their data bytes.
    pub bytes_delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    /// Chunks whose length or content was not the pattern's.
    pub corrupt: u64,
    /// Frames nobody asked for, or that name another transfer.
    pub unexpected: u64,
    /// Requests answered `9a 01` or `9a 02`.
    pub refused: u64,
    /// Files that reached a recipient whole (`88` after every chunk),
    /// summed over recipients.
    pub files_complete: u64,
    pub delivered_bytes_per_s: Option<f64>,
    pub delivered_chunks_per_s: Option<f64>,
    /// "marks" (length and first and last 8 bytes) or "all" (every byte).
    pub verified: &'static str,
    /// Connections the server closed during the run.
    pub disconnects: u64,
    /// The whole bench's CPU use during the timed phase, in percent of one
    /// core.
    pub bench_cpu_pct: f64,
    /// The sender's share of it: its reads and writes.
    pub sender_cpu_pct: f64,
    pub bench_saturated: bool,
    pub bench_cpus: Option<String>,
    pub server_pid: Option<u32>,
    pub server_cpu_pct: Option<f64>,
    pub server_cpus: Option<String>,
    pub server_rss_kb_before: Option<u64>,
    /// Once every connection was set up.
    pub server_rss_kb_loaded: Option<u64>,
    /// The highest of the readings every `RSS_EVERY` during the run.
    pub server_rss_kb_peak: Option<u64>,
    pub server_rss_samples: u64,
    pub server_rss_kb_after: Option<u64>,
    /// The server's VmHWM before setup and after the run: the peak since it
    /// started, which catches what falls between samples.
    pub server_hwm_kb_before: Option<u64>,
    pub server_hwm_kb_after: Option<u64>,
    pub server_alive_after: Option<bool>,
    /// One line per problem found; empty for a clean run.
    pub failures: Vec<String>,
}

impl TransferReport {
    /// A few lines for a person.
    pub fn summary(&self) -> String {
        let rate = |bytes: Option<f64>| {
            bytes.map_or("-".into(), |b| {
                format!(
                    "{:.3} GB/s ({:.3} GiB/s)",
                    b / 1e9,
                    b / f64::from(1u32 << 30)
                )
            })
        };
        let mut text = format!(
            "transfer {} ({} chunks of {}) x {} files to {} recipients, window {} (granted {})\n  \
             files       {} offered, {} finished, {} cancelled",
            size_text(self.file_bytes),
            self.chunks_per_file,
            size_text(self.chunk_bytes),
            self.files_offered,
            self.recipients,
            self.params["window"],
            self.window_granted
                .map_or("none".into(), |window| window.to_string()),
            self.files_offered,
            self.files_finished,
            self.files_cancelled,
        );
        if let Some(times) = &self.file_s {
            text += &format!(
                "; {:.3} s per file (min {:.3}, max {:.3})",
                times.mean, times.min, times.max
            );
        }
        text += &format!(
            "\n  delivered   {} of {} chunks ({}), {} whole files, in {:.3} s: {}, {} chunks/s\n  \
             checks      ({}) lost {}, duplicated {}, reordered {}, corrupt {}, unexpected {}, refused {}\n  \
             sent        {} chunks ({}): {}\n  \
             cpu         bench {} % of a core (sender {} %)",
            self.delivered,
            self.expected_deliveries,
            size_text(self.bytes_delivered),
            self.files_complete,
            self.elapsed_s,
            rate(self.delivered_bytes_per_s),
            self.delivered_chunks_per_s
                .map_or("-".into(), |rate| format!("{rate:.0}")),
            self.verified,
            self.lost,
            self.duplicated,
            self.reordered,
            self.corrupt,
            self.unexpected,
            self.refused,
            self.chunks_sent,
            size_text(self.bytes_sent),
            rate(self.sent_bytes_per_s),
            self.bench_cpu_pct,
            self.sender_cpu_pct,
        );
        if let Some(server) = self.server_cpu_pct {
            text += &format!(", server {server} %");
        }
        if self.bench_saturated {
            text += " (the bench was near its core's limit: the figures are a lower bound)";
        }
        text += "\n";
        if let (Some(before), Some(loaded), Some(peak), Some(after)) = (
            self.server_rss_kb_before,
            self.server_rss_kb_loaded,
            self.server_rss_kb_peak,
            self.server_rss_kb_after,
        ) {
            text += &format!(
                "  server RSS  {before} kB before, {loaded} kB set up, peak {peak} kB in {} samples, {after} kB after",
                self.server_rss_samples
            );
            if let (Some(hwm_before), Some(hwm_after)) =
                (self.server_hwm_kb_before, self.server_hwm_kb_after)
            {
                text += &format!(" (VmHWM {hwm_before} → {hwm_after} kB)");
            }
            text += "\n";
        }
        text
    }

    fn find_failures(&self, sender: &SenderTally, recipients: &RecipientTally) -> Vec<String> {
        let mut failures = sender.failures.clone();
        failures.extend(recipients.failures.iter().cloned());
        let whole = u64::from(self.files_finished) * u64::from(self.recipients);
        let counts = [
            ("lost chunks", self.lost),
            ("duplicated chunks", self.duplicated),
            ("reordered chunks", self.reordered),
            ("corrupt chunks", self.corrupt),
            ("unexpected frames", self.unexpected),
            (
                "chunks beyond those expected",
                self.delivered.saturating_sub(self.expected_deliveries),
            ),
            (
                "requests refused with 9a 01/02 (raise the server's rate limit for benchmarking)",
                self.refused,
            ),
            ("connections closed by the server", self.disconnects),
            (
                "files finished at the sender but not whole at a recipient",
                whole.saturating_sub(self.files_complete),
            ),
        ];
        super::note_failures(&mut failures, &counts, self.server_alive_after);
        failures
    }
}

/// What every connection task reads.
struct Shared {
    pattern: FilePattern,
    /// The offer as the recipients must see it.
    meta: FileMeta,
    /// The whole `83` request.
    offer: Bytes,
    /// What the offer's signature covers.
    signed: Vec<u8>,
    /// The key every connection registered, as DER.
    key: Bytes,
    sender_nick: String,
    room: String,
    files: u32,
    recipients: u32,
    verify_all: bool,
    clock: Clock,
}

/// What the coordinator tells the connection tasks.
#[derive(Clone, Copy, Debug)]
enum Phase {
    Setup,
    /// Send until this deadline.
    Run(Instant),
    Stop,
}

/// Makes the key, digests the file and signs the offer.
fn prepare(args: &TransferArgs) -> anyhow::Result<(Identity, FilePattern, FileMeta, Vec<u8>)> {
    let identity = Identity::generate(RSA_BITS).context("making the bench's RSA key")?;
    let chunk_bytes = u32::try_from(args.chunk_bytes).expect("checked by validate");
    let pattern = FilePattern::new(args.size, chunk_bytes);
    let mut nonce = [0; NONCE_LEN];
    rand::fill(&mut nonce);
    let mut meta = FileMeta {
        name: Bytes::from_static(FILE_NAME.as_bytes()),
        size: pattern.size,
        chunk_size: pattern.chunk_bytes,
        chunk_count: pattern.chunk_count,
        flags: 0,
        key_id: 0,
        nonce,
        digest: pattern.digest(),
        signature: Bytes::new(),
    };
    let signed = signed_fields(&meta);
    meta.signature = Bytes::from(identity.sign(&signed));
    Ok((identity, pattern, meta, signed))
}

/// The offer's fields from the name to the digest, as on the wire: what the
/// bench signs.
fn signed_fields(meta: &FileMeta) -> Vec<u8> {
    let mut fields = BytesMut::new();
    fields.put_u8(u8::try_from(meta.name.len()).expect("a short name"));
    fields.put_slice(&meta.name);
    fields.put_u64(meta.size);
    fields.put_u32(meta.chunk_size);
    fields.put_u32(meta.chunk_count);
    fields.put_u8(meta.flags);
    fields.put_u32(meta.key_id);
    fields.put_slice(&meta.nonce);
    fields.put_slice(&meta.digest);
    fields.to_vec()
}

pub(crate) async fn run(args: &TransferArgs) -> anyhow::Result<TransferReport> {
    let recipients = args.recipients;
    let connections = recipients as usize + 1;
    if let Err(err) = process::ensure_open_files(connections as u64 + 64) {
        bail!("cannot open {connections} connections: {err}");
    }
    let pid = args.target.server_pid;
    let rss = || pid.and_then(|pid| process::rss_kib(pid).ok());
    let hwm = || pid.and_then(|pid| process::hwm_kib(pid).ok());
    let (rss_before, hwm_before) = (rss(), hwm());

    let prepare_started = Instant::now();
    let prepare_args = args.clone();
    let (identity, pattern, meta, signed) =
        tokio::task::spawn_blocking(move || prepare(&prepare_args))
            .await
            .context("preparing the file")??;
    let prepare_s = prepare_started.elapsed().as_secs_f64();
    let offer = FileRequest::Offer {
        target: Bytes::new(),
        meta: meta.clone(),
        window: args.window,
    }
    .encode();
    let shared = Arc::new(Shared {
        pattern,
        meta,
        offer,
        signed,
        key: Bytes::copy_from_slice(identity.public_key_der()),
        sender_nick: args.target.nick(0),
        room: args.room.clone(),
        files: args.files,
        recipients,
        verify_all: args.verify_all,
        clock: Clock::start(),
    });

    let (phase, phase_rx) = watch::channel(Phase::Setup);
    let setup_started = Instant::now();
    let (sender, receivers) = set_up(&shared, &args.target, &phase, phase_rx).await?;
    let setup_s = setup_started.elapsed().as_secs_f64();
    let rss_loaded = rss();

    let deadline = Instant::now() + Duration::from_secs_f64(args.duration);
    let cpu = CpuMeter::start(pid);
    let timed_started = Instant::now();
    let _ = phase.send(Phase::Run(deadline));
    let mut peak = rss_loaded;
    let mut samples = 0;
    let mut sampling = tokio::time::interval(RSS_EVERY);
    tokio::pin!(sender);
    let sender = loop {
        tokio::select! {
            sender = &mut sender => break sender.context("the sender's task")?,
            _ = sampling.tick(), if pid.is_some() => {
                if let Some(now) = rss() {
                    peak = peak.max(Some(now));
                    samples += 1;
                }
            }
        }
    };
    let cpu = cpu.stop();
    let timed_s = timed_started.elapsed().as_secs_f64();
    let (rss_after, hwm_after) = (rss(), hwm());
    let _ = phase.send(Phase::Stop);
    let mut tally = RecipientTally::default();
    for receiver in receivers {
        tally.add(receiver.await.context("a recipient's task")?);
    }

    let end_ns = sender.end_ns.max(tally.last_delivery_ns);
    let elapsed_s = sender
        .first_offer_ns
        .map_or(0.0, |first| end_ns.saturating_sub(first) as f64 / 1e9);
    let per_second = |count: u64| (elapsed_s > 0.0).then(|| round1(count as f64 / elapsed_s));
    // Nanoseconds per second of the timed phase, as percent.
    let sender_cpu_pct = sender.cpu_ns as f64 / 1e7 / timed_s.max(1e-9);
    let mut report = TransferReport {
        tool: "parlor bench",
        workload: "transfer",
        server: args.target.server.to_string(),
        params: serde_json::to_value(args)?,
        connections,
        recipients,
        file_bytes: args.size,
        chunk_bytes: args.chunk_bytes,
        chunks_per_file: shared.pattern.chunk_count,
        window_granted: sender.window_granted,
        prepare_s: round3(prepare_s),
        setup_s: round3(setup_s),
        files_offered: sender.files_offered,
        files_finished: sender.files_finished,
        files_cancelled: sender.files_cancelled,
        elapsed_s: round3(elapsed_s),
        file_s: FileTimes::of(&sender.file_s),
        chunks_sent: sender.chunks_sent,
        bytes_sent: sender.bytes_sent,
        sent_bytes_per_s: per_second(sender.bytes_sent),
        expected_deliveries: sender.expected_deliveries,
        delivered: tally.delivered,
        bytes_delivered: tally.bytes_delivered,
        lost: sender.expected_deliveries.saturating_sub(tally.delivered),
        duplicated: tally.duplicated,
        reordered: tally.reordered,
        corrupt: tally.corrupt,
        unexpected: sender.unexpected + tally.unexpected,
        refused: sender.refused + tally.refused,
        files_complete: tally.files_complete,
        delivered_bytes_per_s: per_second(tally.bytes_delivered),
        delivered_chunks_per_s: per_second(tally.delivered),
        verified: if args.verify_all { "all" } else { "marks" },
        disconnects: u64::from(sender.disconnected) + tally.disconnects,
        bench_cpu_pct: round1(cpu.bench_pct),
        sender_cpu_pct: round1(sender_cpu_pct),
        bench_saturated: cpu.bench_pct >= SATURATED_PCT,
        bench_cpus: process::allowed_cpus(std::process::id()),
        server_pid: pid,
        server_cpu_pct: cpu.server_pct.map(round1),
        server_cpus: pid.and_then(process::allowed_cpus),
        server_rss_kb_before: rss_before,
        server_rss_kb_loaded: rss_loaded,
        server_rss_kb_peak: peak,
        server_rss_samples: samples,
        server_rss_kb_after: rss_after,
        server_hwm_kb_before: hwm_before,
        server_hwm_kb_after: hwm_after,
        server_alive_after: pid.map(process::is_alive),
        failures: Vec::new(),
    };
    report.failures = report.find_failures(&sender, &tally);
    Ok(report)
}

type Tasks = (JoinHandle<SenderTally>, Vec<JoinHandle<RecipientTally>>);

/// Starts the sender's and every recipient's task and waits until all are
/// set up; if any cannot be, stops them all and fails the run.
async fn set_up(
    shared: &Arc<Shared>,
    target: &TargetArgs,
    phase: &watch::Sender<Phase>,
    phase_rx: watch::Receiver<Phase>,
) -> anyhow::Result<Tasks> {
    let setup = Setup::new(target);
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let sender = tokio::spawn(sender_task(
        Arc::clone(shared),
        setup.clone(),
        ready_tx.clone(),
        phase_rx.clone(),
    ));
    let receivers: Vec<_> = (1..=shared.recipients)
        .map(|index| {
            tokio::spawn(recipient_task(
                Arc::clone(shared),
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
    let _ = phase.send(Phase::Stop);
    let _ = sender.await;
    for receiver in receivers {
        let _ = receiver.await;
    }
    bail!(
        "{} of {} connections could not be set up; the first: {first}",
        errors.len(),
        shared.recipients + 1
    )
}

/// HELLO, NICK and JOIN as a legacy client, then REGISTER_KEY: the room is
/// created (or entered) by a connection that is not secure yet, so it is a
/// plaintext room.
async fn open(setup: &Setup, nick: &str, room: &str, key: &Bytes) -> anyhow::Result<Session> {
    setup
        .within_limits(async {
            let mut session = Session::connect(setup.server()).await?;
            session.register(nick).await?;
            session.join(room).await?;
            let register = ClientMessage::RegisterKey { key: key.clone() };
            session.expect_ok(&register, "REGISTER_KEY").await?;
            Ok(session)
        })
        .await
}

/// The deadline, once the coordinator says to start; `None` if it says to
/// stop instead.
async fn start_signal(phase: &mut watch::Receiver<Phase>) -> Option<Instant> {
    loop {
        match *phase.borrow_and_update() {
            Phase::Run(deadline) => return Some(deadline),
            Phase::Stop => return None,
            Phase::Setup => {}
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
fn flush(stream: &TcpStream, out: &mut Vec<u8>, written: &mut usize) -> io::Result<bool> {
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

// The sender.

#[derive(Debug, Default)]
struct SenderTally {
    files_offered: u32,
    files_finished: u32,
    files_cancelled: u32,
    window_granted: Option<u8>,
    chunks_sent: u64,
    bytes_sent: u64,
    expected_deliveries: u64,
    /// Seconds of each finished file.
    file_s: Vec<f64>,
    first_offer_ns: Option<u64>,
    /// When the last file finished or was cancelled.
    end_ns: u64,
    /// CPU time of the sender's own work.
    cpu_ns: u64,
    refused: u64,
    unexpected: u64,
    disconnected: bool,
    failures: Vec<String>,
}

/// What a `9a` to the sender answers.
#[derive(Clone, Copy, Debug)]
enum Request {
    Offer,
    Done,
    Cancel,
}

/// The file being sent.
#[derive(Debug)]
struct Sending {
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

struct SenderState {
    shared: Arc<Shared>,
    out: Vec<u8>,
    written: usize,
    replies: VecDeque<Request>,
    file: Option<Sending>,
    /// `--duration` is over: cancel the file in flight and stop.
    cancelling: bool,
    /// The file cancelled: windows for it may still be on their way.
    cancelled: Option<u32>,
    /// Nothing more to send: every file is through, or the run cannot go on.
    over: bool,
    write_blocked: bool,
    tally: SenderTally,
}

async fn sender_task(
    shared: Arc<Shared>,
    setup: Setup,
    ready: mpsc::UnboundedSender<Result<(), String>>,
    mut phase: watch::Receiver<Phase>,
) -> SenderTally {
    let nick = shared.sender_nick.clone();
    let mut session = match open(&setup, &nick, &shared.room, &shared.key).await {
        Ok(session) => session,
        Err(err) => {
            let _ = ready.send(Err(format!("{nick}: {err:#}")));
            return SenderTally::default();
        }
    };
    let _ = ready.send(Ok(()));
    drop(ready);
    let Some(deadline) = session.keep_alive_while(start_signal(&mut phase)).await else {
        return SenderTally::default();
    };
    let (stream, leftover) = session.into_parts();
    let mut sender = Sender {
        input: FrameStream::new(SENDER_READ, &leftover),
        stream,
        state: SenderState {
            shared,
            out: Vec::new(),
            written: 0,
            replies: VecDeque::new(),
            file: None,
            cancelling: false,
            cancelled: None,
            over: false,
            write_blocked: false,
            tally: SenderTally::default(),
        },
    };
    sender.run(deadline).await;
    sender.state.tally
}

struct Sender {
    stream: TcpStream,
    input: FrameStream,
    state: SenderState,
}

impl Sender {
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
        state.tally.end_ns = state.shared.clock.now_ns();
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
            let shared = Arc::clone(&state.shared);
            let Some(file) = &mut state.file else {
                if state.cancelling || state.tally.files_offered == shared.files {
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
            let count = shared.pattern.chunk_count;
            let limit = if state.cancelling {
                file.sent + u32::from(file.partial > 0)
            } else {
                count.min(file.acked.saturating_add(window))
            };
            if file.sent < limit {
                let tally = &mut state.tally;
                if !write_chunks(&self.stream, &shared.pattern, file, limit, tally)? {
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
                state.replies.push_back(Request::Done);
                continue;
            }
            // Waiting for the window to move, or for `8e`.
            return Ok(());
        }
    }
}

/// Writes chunks `file.sent..limit` (the first possibly begun already), up
/// to [`MAX_BATCH`] in one vectored write. `Ok(false)` when the socket
/// would block.
fn write_chunks(
    stream: &TcpStream,
    pattern: &FilePattern,
    file: &mut Sending,
    limit: u32,
    tally: &mut SenderTally,
) -> io::Result<bool> {
    let id = file.id.expect("a started transfer has an id");
    let count = ((limit - file.sent) as usize).min(MAX_BATCH);
    let mut heads = [[0u8; CHUNK_HEAD + MAX_HEAD]; MAX_BATCH];
    let mut tails = [[0u8; 8]; MAX_BATCH];
    let mut lens = [(0usize, 0usize); MAX_BATCH];
    let mut middles: [&[u8]; MAX_BATCH] = [&[]; MAX_BATCH];
    for k in 0..count {
        let index = file.sent + k as u32;
        let pieces = pattern.pieces(index);
        let data_len = pattern.chunk_len(index);
        let head = &mut heads[k];
        head[..4].copy_from_slice(&((CHUNK_HEADER_LEN + data_len) as u32).to_be_bytes());
        head[4..6].copy_from_slice(&MAGIC);
        head[6] = file_opcode::FILE_CHUNK;
        head[7..11].copy_from_slice(&id.to_be_bytes());
        head[11..15].copy_from_slice(&index.to_be_bytes());
        head[CHUNK_HEAD..CHUNK_HEAD + pieces.head().len()].copy_from_slice(pieces.head());
        tails[k][..pieces.tail().len()].copy_from_slice(pieces.tail());
        lens[k] = (CHUNK_HEAD + pieces.head().len(), pieces.tail().len());
        middles[k] = pieces.middle;
    }
    let mut slices = [IoSlice::new(&[]); 3 * MAX_BATCH];
    for k in 0..count {
        slices[3 * k] = IoSlice::new(&heads[k][..lens[k].0]);
        slices[3 * k + 1] = IoSlice::new(middles[k]);
        slices[3 * k + 2] = IoSlice::new(&tails[k][..lens[k].1]);
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

impl SenderState {
    fn offer(&mut self) {
        let now = self.shared.clock.now_ns();
        self.tally.first_offer_ns.get_or_insert(now);
        self.tally.files_offered += 1;
        self.out.extend_from_slice(&self.shared.offer);
        self.replies.push_back(Request::Offer);
        self.file = Some(Sending {
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
        self.replies.push_back(Request::Cancel);
        self.cancelled = Some(id);
        if let Some(file) = self.file.take() {
            self.tally.files_cancelled += 1;
            self.count_expected(&file);
        }
        self.tally.end_ns = self.shared.clock.now_ns();
    }

    /// The chunks a file that is over owes its recipients.
    fn count_expected(&mut self, file: &Sending) {
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
            Request::Offer => {
                // Nothing was sent of it.
                self.file = None;
                self.fail(format!("the server refused the offer: {text}"));
            }
            Request::Done | Request::Cancel => {
                self.fail(format!("the server refused {request:?}: {text}"));
            }
        }
    }

    fn on_notice(&mut self, notice: FileNotice) {
        let recipients = u64::from(self.shared.recipients);
        let now = self.shared.clock.now_ns();
        let ours =
            |id: u32, file: &Option<Sending>| file.as_ref().is_some_and(|f| f.id == Some(id));
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
                let count = self.shared.pattern.chunk_count;
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

// The recipients.

#[derive(Debug, Default)]
struct RecipientTally {
    delivered: u64,
    bytes_delivered: u64,
    duplicated: u64,
    reordered: u64,
    corrupt: u64,
    unexpected: u64,
    refused: u64,
    files_complete: u64,
    disconnects: u64,
    last_delivery_ns: u64,
    failures: Vec<String>,
}

impl RecipientTally {
    fn add(&mut self, other: RecipientTally) {
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
struct Receiving {
    id: u32,
    /// Distinct chunks of it that arrived.
    chunks: u32,
    tracker: SequenceTracker,
}

struct RecipientState {
    shared: Arc<Shared>,
    nick: String,
    /// Acks and decisions to write.
    out: Vec<u8>,
    written: usize,
    replies_owed: u64,
    file: Option<Receiving>,
    /// The chunk whose data is arriving, when it belongs to `file`.
    chunk: Option<super::file_pattern::ChunkCheck>,
    /// Its index.
    chunk_index: u32,
    /// A chunk ended in the last read.
    delivered_now: bool,
    tally: RecipientTally,
}

async fn recipient_task(
    shared: Arc<Shared>,
    nick: String,
    setup: Setup,
    ready: mpsc::UnboundedSender<Result<(), String>>,
    mut phase: watch::Receiver<Phase>,
) -> RecipientTally {
    let mut session = match open(&setup, &nick, &shared.room, &shared.key).await {
        Ok(session) => session,
        Err(err) => {
            let _ = ready.send(Err(format!("{nick}: {err:#}")));
            return RecipientTally::default();
        }
    };
    let _ = ready.send(Ok(()));
    drop(ready);
    if session
        .keep_alive_while(start_signal(&mut phase))
        .await
        .is_none()
    {
        return RecipientTally::default();
    }
    let (mut stream, leftover) = session.into_parts();
    let mut input = FrameStream::new(RECIPIENT_READ, &leftover);
    let mut state = RecipientState {
        shared,
        nick,
        out: Vec::new(),
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
                if changed.is_err() || matches!(*phase.borrow(), Phase::Stop) {
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

/// `87 u32 id, u32 index`, written without a buffer of its own.
fn put_ack(out: &mut Vec<u8>, id: u32, index: u32) {
    out.extend_from_slice(&8u32.to_be_bytes());
    out.extend_from_slice(&MAGIC);
    out.push(file_opcode::FILE_ACK);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&index.to_be_bytes());
}

impl RecipientState {
    fn after_read(&mut self) {
        if std::mem::take(&mut self.delivered_now) {
            self.tally.last_delivery_ns = self.shared.clock.now_ns();
        }
    }

    fn on_piece(&mut self, piece: Piece<'_>) {
        let shared = &*self.shared;
        match piece {
            Piece::ChunkStart { id, index, len } => match &self.file {
                Some(file) if file.id == id => {
                    self.chunk = Some(shared.pattern.check(index, len));
                    self.chunk_index = index;
                }
                _ => {
                    self.tally.unexpected += 1;
                    self.chunk = None;
                }
            },
            Piece::ChunkData { offset, data } => {
                if let Some(check) = &mut self.chunk {
                    check.data(&shared.pattern, offset, data, shared.verify_all);
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
                if !check.is_intact(&shared.pattern) {
                    self.tally.corrupt += 1;
                }
                file.chunks += 1;
                self.tally.delivered += 1;
                if index < shared.pattern.chunk_count {
                    self.tally.bytes_delivered += shared.pattern.chunk_len(index) as u64;
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
        let shared = Arc::clone(&self.shared);
        let ours = |id: u32, file: &Option<Receiving>| file.as_ref().is_some_and(|f| f.id == id);
        match notice {
            FileNotice::Offered {
                id,
                sender,
                sender_key,
                room,
                meta,
            } => {
                if let Some(problem) = offer_problem(&shared, &sender, &sender_key, &room, &meta) {
                    self.tally
                        .failures
                        .push(format!("{}: offer {id}: {problem}", self.nick));
                }
                let decision = FileRequest::Decision { id, accept: true };
                self.out.extend_from_slice(&decision.encode());
                self.replies_owed += 1;
                self.file = Some(Receiving {
                    id,
                    chunks: 0,
                    tracker: SequenceTracker::default(),
                });
            }
            FileNotice::Accepted { id, .. } if ours(id, &self.file) => {}
            FileNotice::Done { id } if ours(id, &self.file) => {
                let file = self.file.as_ref().expect("checked");
                if file.chunks == shared.pattern.chunk_count {
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

/// What is wrong with an offer as it reached a recipient, if anything: it
/// must be the sender's offer, byte for byte, and its signature must verify
/// with the key the server relayed.
fn offer_problem(
    shared: &Shared,
    sender: &[u8],
    sender_key: &[u8],
    room: &[u8],
    meta: &FileMeta,
) -> Option<String> {
    if sender != shared.sender_nick.as_bytes() || room != shared.room.as_bytes() {
        return Some(format!(
            "from {} in {}, not from {} in {}",
            String::from_utf8_lossy(sender),
            String::from_utf8_lossy(room),
            shared.sender_nick,
            shared.room
        ));
    }
    if sender_key != shared.key || *meta != shared.meta {
        return Some("the key or the file's description differs from what was sent".into());
    }
    let verified =
        PeerKey::from_der(sender_key).and_then(|key| key.verify(&shared.signed, &meta.signature));
    verified
        .is_err()
        .then(|| "the signature does not verify".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_and_decimal_units() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("256KiB"), Ok(256 << 10));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("10 MiB"), Ok(10 << 20));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert!(parse_size("1G").unwrap_err().contains("unknown unit `G`"));
        assert!(parse_size("GiB").is_err());
        assert!(parse_size("99999999999TiB").is_err());
        assert_eq!(size_text(1 << 30), "1 GiB");
        assert_eq!(size_text(256 << 10), "256 KiB");
        assert_eq!(size_text(1000), "1000 B");
    }

    #[test]
    fn acks_are_encoded_as_the_protocol_does() {
        let mut out = Vec::new();
        put_ack(&mut out, 7, 300);
        assert_eq!(out, FileRequest::Ack { id: 7, index: 300 }.encode());
    }

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
        let mut file = Sending {
            id: Some(9),
            offered_ns: 0,
            window: Some(3),
            recipients: 1,
            acked: 0,
            sent: 0,
            partial: 0,
            done_sent: false,
        };
        let mut tally = SenderTally::default();
        let mut short_writes = 0;
        while file.sent < pattern.chunk_count {
            // A window of 3: as if each chunk were acknowledged at once.
            let limit = pattern.chunk_count.min(file.sent + 3);
            if !write_chunks(&client, &pattern, &mut file, limit, &mut tally).unwrap() {
                client.writable().await.unwrap();
            }
            short_writes += usize::from(file.partial > 0);
        }
        reading.await.unwrap();
        assert_eq!(tally.chunks_sent, 21);
        assert_eq!(tally.bytes_sent, 2_000_005);
        assert!(short_writes > 0, "the small send buffer cut no write");
    }
}
