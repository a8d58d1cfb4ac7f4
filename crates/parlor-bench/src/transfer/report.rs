//! What a `transfer` run reports: the JSON line, the summary for people,
//! and the problems that fail the run.

use serde::Serialize;

use super::recipient::RecipientTally;
use super::sender::SenderTally;
use super::{TransferArgs, TransferRun};
use crate::latency::{round1, round3};
use crate::process::{self, CpuShare};
use crate::server_sample::ServerSample;
use crate::target::size_text;

/// At or above this share of its core, the bench may have set the pace.
const SATURATED_PCT: f64 = 85.0;

/// Seconds of the files that finished.
#[derive(Clone, Debug, Serialize)]
pub struct FileTimes {
    /// The quickest file.
    pub min: f64,
    /// The files' mean.
    pub mean: f64,
    /// The slowest file.
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
    /// Always "parlor bench", for scripts that collect several tools' lines.
    pub tool: &'static str,
    /// Always "transfer".
    pub workload: &'static str,
    /// The server's address.
    pub server: String,
    /// Every option of the run, as given or defaulted.
    pub params: serde_json::Value,
    /// The sender and the recipients.
    pub connections: usize,
    /// Members of the room who received every file.
    pub recipients: u32,
    /// Size of the file, in bytes.
    pub file_bytes: u64,
    /// Data bytes in every chunk but the last.
    pub chunk_bytes: u64,
    /// Chunks of one file.
    pub chunks_per_file: u32,
    /// The window the server granted (`85`), at most `--window`.
    pub window_granted: Option<u8>,
    /// Key generation and the offer's signature, before connecting.
    pub prepare_s: f64,
    /// Connecting, registering, joining and registering the key, for every
    /// connection.
    pub setup_s: f64,
    /// Files the sender offered.
    pub files_offered: u32,
    /// Files that ended with `8e Finished`.
    pub files_finished: u32,
    /// Files cancelled when `--duration` ran out.
    pub files_cancelled: u32,
    /// The timed phase: from the first offer to the last `8e` or delivery.
    pub elapsed_s: f64,
    /// From each finished file's offer to its `8e`.
    pub file_s: Option<FileTimes>,
    /// Chunks the sender wrote.
    pub chunks_sent: u64,
    /// Their data bytes.
    pub bytes_sent: u64,
    /// `bytes_sent` per second of `elapsed_s`.
    pub sent_bytes_per_s: Option<f64>,
    /// Chunks owed to recipients: those sent, times the recipients each
    /// transfer started with.
    pub expected_deliveries: u64,
    /// Distinct chunks that arrived, summed over recipients.
    pub delivered: u64,
    /// Their data bytes.
    pub bytes_delivered: u64,
    /// Chunks owed and never delivered.
    pub lost: u64,
    /// Chunks that arrived again at the same recipient.
    pub duplicated: u64,
    /// Chunks that arrived after a higher index.
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
    /// `bytes_delivered` per second of `elapsed_s`.
    pub delivered_bytes_per_s: Option<f64>,
    /// `delivered` per second of `elapsed_s`.
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
    /// The bench was near its core's limit: the figures are a lower bound.
    pub bench_saturated: bool,
    /// The CPUs the bench may run on.
    pub bench_cpus: Option<String>,
    /// What every workload reports about the server process.
    #[serde(flatten)]
    pub server_sample: ServerSample,
    /// The server's CPU use during the timed phase, in percent of one core.
    pub server_cpu_pct: Option<f64>,
    /// The highest of the readings every `RSS_EVERY` during the run.
    pub server_rss_kb_peak: Option<u64>,
    /// How many readings that was.
    pub server_rss_samples: u64,
    /// Resident memory once the timed phase was over, in KiB.
    pub server_rss_kb_after: Option<u64>,
    /// The server's VmHWM before setup: the peak since it started, which
    /// catches what falls between samples.
    pub server_hwm_kb_before: Option<u64>,
    /// The server's VmHWM after the run.
    pub server_hwm_kb_after: Option<u64>,
    /// One line per problem found; empty for a clean run.
    pub failures: Vec<String>,
}

/// What the coordinator measured around the run, besides the tallies.
pub(super) struct Readings {
    pub(super) prepare_s: f64,
    pub(super) setup_s: f64,
    /// Wall time of the timed phase, over which the CPU shares are taken.
    pub(super) timed_s: f64,
    pub(super) cpu: CpuShare,
    pub(super) server_sample: ServerSample,
    pub(super) rss_peak: Option<u64>,
    pub(super) rss_samples: u64,
    pub(super) rss_after: Option<u64>,
    pub(super) hwm_before: Option<u64>,
    pub(super) hwm_after: Option<u64>,
}

impl TransferReport {
    pub(super) fn new(
        args: &TransferArgs,
        run: &TransferRun,
        readings: Readings,
        sender: &SenderTally,
        recipients: &RecipientTally,
    ) -> anyhow::Result<TransferReport> {
        let end_ns = sender.end_ns.max(recipients.last_delivery_ns);
        let elapsed_s = sender
            .first_offer_ns
            .map_or(0.0, |first| end_ns.saturating_sub(first) as f64 / 1e9);
        let per_second = |count: u64| (elapsed_s > 0.0).then(|| round1(count as f64 / elapsed_s));
        // Nanoseconds per second of the timed phase, as percent.
        let sender_cpu_pct = sender.cpu_ns as f64 / 1e7 / readings.timed_s.max(1e-9);
        let cpu = readings.cpu;
        let mut report = TransferReport {
            tool: "parlor bench",
            workload: "transfer",
            server: args.target.servers_text(),
            params: serde_json::to_value(args)?,
            connections: run.recipients as usize + 1,
            recipients: run.recipients,
            file_bytes: args.size,
            chunk_bytes: args.chunk_bytes,
            chunks_per_file: run.pattern.chunk_count,
            window_granted: sender.window_granted,
            prepare_s: round3(readings.prepare_s),
            setup_s: round3(readings.setup_s),
            files_offered: sender.files_offered,
            files_finished: sender.files_finished,
            files_cancelled: sender.files_cancelled,
            elapsed_s: round3(elapsed_s),
            file_s: FileTimes::of(&sender.file_s),
            chunks_sent: sender.chunks_sent,
            bytes_sent: sender.bytes_sent,
            sent_bytes_per_s: per_second(sender.bytes_sent),
            expected_deliveries: sender.expected_deliveries,
            delivered: recipients.delivered,
            bytes_delivered: recipients.bytes_delivered,
            lost: sender
                .expected_deliveries
                .saturating_sub(recipients.delivered),
            duplicated: recipients.duplicated,
            reordered: recipients.reordered,
            corrupt: recipients.corrupt,
            unexpected: sender.unexpected + recipients.unexpected,
            refused: sender.refused + recipients.refused,
            files_complete: recipients.files_complete,
            delivered_bytes_per_s: per_second(recipients.bytes_delivered),
            delivered_chunks_per_s: per_second(recipients.delivered),
            verified: if run.verify_all { "all" } else { "marks" },
            disconnects: u64::from(sender.disconnected) + recipients.disconnects,
            bench_cpu_pct: round1(cpu.bench_pct),
            sender_cpu_pct: round1(sender_cpu_pct),
            bench_saturated: cpu.bench_pct >= SATURATED_PCT,
            bench_cpus: process::allowed_cpus(std::process::id()),
            server_sample: readings.server_sample,
            server_cpu_pct: cpu.server_pct.map(round1),
            server_rss_kb_peak: readings.rss_peak,
            server_rss_samples: readings.rss_samples,
            server_rss_kb_after: readings.rss_after,
            server_hwm_kb_before: readings.hwm_before,
            server_hwm_kb_after: readings.hwm_after,
            failures: Vec::new(),
        };
        report.failures = report.find_failures(sender, recipients);
        Ok(report)
    }

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
            self.server_sample.rss_kb_before,
            self.server_sample.rss_kb_loaded,
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
        crate::note_failures(&mut failures, &counts, &self.server_sample);
        failures
    }
}
