#![warn(missing_docs)]
//! `parlor bench`: a load generator for a running parlor (or any server of
//! the legacy protocol) on this machine, measuring what operators and
//! developers need to know: throughput, latency, correctness, and what the
//! load costs the server in CPU and memory.
//!
//! It measures what the reference generator (chatload) measures, the same
//! way, so that results compare side by side with its baseline: 64-byte
//! messages stamped `L<sender>:<seq>:<send_ns>:`, a closed loop in which the
//! server's `9a` reply is the acknowledgement, or a fixed total rate;
//! latency from the stamp; CPU as percent of one core.
//!
//! Each workload is a small module that describes its connections and
//! options; the shared machinery does the rest:
//!
//! - `fanout.rs`, `dm.rs`, `secure_fanout.rs`: message workloads, run by
//!   `traffic.rs`; `joiner.rs`: secure-fanout's joins during the run;
//! - `idle.rs`: connections that only keep alive, then a probe;
//! - `transfer/`: chunked file transfer from one sender to N recipients
//!   (options, offer, sender, recipients and report, one file each), with
//!   the file's pattern in `file_pattern.rs` and the chunk-aware reader in
//!   `frame_stream.rs`;
//! - `session.rs`: one connection and the legacy setup steps;
//! - `body.rs`: the stamp in every message;
//! - `sequence.rs`: lost, duplicated and reordered deliveries;
//! - `latency.rs`: the clock and the HDR histogram;
//! - `process.rs`: CPU, memory and file limits from the OS;
//! - `server_sample.rs`: the server figures every report carries (summed
//!   over a cluster's nodes);
//! - `relay_metrics.rs`: `--metrics`, the cluster nodes' relay counters
//!   read before and after a fanout run (NATS messages per room message);
//! - `target.rs`: the options every workload shares (loopback only; a
//!   cluster's nodes as a list, the connections spread over them), and
//!   the parsers of option values;
//! - `tls.rs`: TLS under the same non-waiting reads and writes
//!   (`--tls-pin`).
//!
//! A new workload is one more module and one more [`Workload`] variant.
//!
//! The bench runs on a single-threaded runtime: the machine it is meant for
//! has two cores, one for the server and one for the bench, and every
//! result reports the bench's own CPU use so that a run in which the bench,
//! not the server, was the limit is recognised.

mod body;
mod dm;
mod fanout;
mod file_pattern;
mod frame_stream;
mod idle;
mod joiner;
mod latency;
mod process;
mod relay_metrics;
mod secure_fanout;
mod sequence;
mod server_sample;
mod session;
mod target;
mod tls;
mod traffic;
mod transfer;

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde::Serialize;

pub use dm::DmArgs;
pub use fanout::FanoutArgs;
pub use idle::{IdleArgs, IdleReport};
pub use joiner::JoinReport;
pub use latency::LatencySummary;
pub use relay_metrics::{MetricsUrl, NatsRelays};
pub use secure_fanout::{SecureFanoutArgs, SecureFanoutReport};
pub use server_sample::ServerSample;
pub use target::{parse_size, TargetArgs};
pub use traffic::{LoadArgs, TrafficReport};
pub use transfer::{FileTimes, TransferArgs, TransferReport};

/// `parlor bench`'s command line: the workload with its options, and how
/// the report is printed.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Print the result as one JSON line on stdout; the summary for people
    /// then goes to stderr.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to run, with the options of that workload.
    #[command(subcommand)]
    pub workload: Workload,
}

/// The load to put on the server: one variant per workload module, each
/// with its own options, so that `parlor bench WORKLOAD --help` lists only
/// what applies.
#[derive(Subcommand, Clone, Debug)]
pub enum Workload {
    /// R rooms x M members, every member sending to its room.
    Fanout(FanoutArgs),
    /// The same as fanout through the secure extension: every member
    /// registers an identity, and every message is an envelope sealed
    /// before the run. Over TLS with `--tls-pin`.
    SecureFanout(SecureFanoutArgs),
    /// P pairs of users sending each other direct messages.
    Dm(DmArgs),
    /// N connections kept alive with heartbeats: the server's memory per
    /// connection, then a probe that must be answered.
    Idle(IdleArgs),
    /// One sender streams files through the chunked file transfer to N
    /// recipients in a plaintext room: relay throughput, CPU, and the
    /// server's memory while it holds a window of chunks.
    Transfer(TransferArgs),
}

/// The result of one run.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Report {
    /// `fanout` and `dm`: what the message engine sent, delivered and
    /// measured.
    Traffic(TrafficReport),
    /// `secure-fanout`: the same, and what the envelopes cost and proved.
    SecureFanout(SecureFanoutReport),
    /// `idle`: what an idle connection costs the server, and the probe.
    Idle(IdleReport),
    /// `transfer`: the relay's throughput, and the server's memory while
    /// it holds a window of chunks.
    Transfer(TransferReport),
}

impl Report {
    /// The problems the run found in the server's behaviour; empty when it
    /// passed every check.
    pub fn failures(&self) -> &[String] {
        match self {
            Report::Traffic(report) => &report.failures,
            Report::SecureFanout(report) => &report.traffic.failures,
            Report::Idle(report) => &report.failures,
            Report::Transfer(report) => &report.failures,
        }
    }

    /// A few lines for a person; with `--json` they go to stderr, so that
    /// stdout holds nothing but the JSON line.
    pub fn summary(&self) -> String {
        match self {
            Report::Traffic(report) => report.summary(),
            Report::SecureFanout(report) => report.summary(),
            Report::Idle(report) => report.summary(),
            Report::Transfer(report) => report.summary(),
        }
    }

    /// The report as one JSON line, its keys the field names, for scripts
    /// and for comparing runs (BENCHMARKS.md).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("reports serialize")
    }
}

/// Why a run produced no report; each kind has its own exit code, so that
/// a script tells a mistyped option from a server that was not there.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The options make no sense; nothing was sent.
    #[error("{0}")]
    Usage(String),
    /// The run could not be carried out (no server, setup refused, …).
    #[error("{0:#}")]
    Run(anyhow::Error),
}

/// Checks the options, then runs the workload.
pub async fn run(workload: &Workload) -> Result<Report, BenchError> {
    let report = match workload {
        Workload::Fanout(args) => {
            args.validate().map_err(BenchError::Usage)?;
            Report::Traffic(fanout::run(args).await.map_err(BenchError::Run)?)
        }
        Workload::SecureFanout(args) => {
            args.validate().map_err(BenchError::Usage)?;
            Report::SecureFanout(secure_fanout::run(args).await.map_err(BenchError::Run)?)
        }
        Workload::Dm(args) => {
            args.validate().map_err(BenchError::Usage)?;
            Report::Traffic(dm::run(args).await.map_err(BenchError::Run)?)
        }
        Workload::Idle(args) => {
            args.validate().map_err(BenchError::Usage)?;
            Report::Idle(idle::run(args).await.map_err(BenchError::Run)?)
        }
        Workload::Transfer(args) => {
            args.validate().map_err(BenchError::Usage)?;
            Report::Transfer(transfer::run(args).await.map_err(BenchError::Run)?)
        }
    };
    Ok(report)
}

/// Exit code for options that make no sense, as for clap's own errors.
const USAGE_ERROR: u8 = 2;
/// Exit code for a run that completed but found the server at fault.
const CHECKS_FAILED: u8 = 3;

/// Adds what went wrong in a run to `failures`: a line for each count that
/// is not zero, and one if the server process is gone.
fn note_failures(failures: &mut Vec<String>, counts: &[(&str, u64)], server: &ServerSample) {
    let counted = counts.iter().filter(|(_, n)| *n > 0);
    failures.extend(counted.map(|(what, n)| format!("{what}: {n}")));
    failures.extend(server.failure());
}

/// `parlor bench`: runs the workload on a single-threaded runtime, prints
/// the report, and says through the exit code how it went.
pub fn main(args: BenchArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("parlor bench: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let report = match runtime.block_on(run(&args.workload)) {
        Ok(report) => report,
        Err(err @ BenchError::Usage(_)) => {
            eprintln!("parlor bench: {err}");
            return ExitCode::from(USAGE_ERROR);
        }
        Err(err @ BenchError::Run(_)) => {
            eprintln!("parlor bench: {err}");
            return ExitCode::FAILURE;
        }
    };
    if args.json {
        println!("{}", report.to_json());
        eprint!("{}", report.summary());
    } else {
        print!("{}", report.summary());
    }
    if report.failures().is_empty() {
        return ExitCode::SUCCESS;
    }
    for failure in report.failures() {
        eprintln!("parlor bench: FAILED: {failure}");
    }
    ExitCode::from(CHECKS_FAILED)
}
