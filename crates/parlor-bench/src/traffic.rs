//! The engine behind the message workloads (`fanout`, `dm`,
//! `secure-fanout`): a workload describes its connections as a [`Plan`] and
//! what its messages are as [`Messages`], and this module sets them up,
//! sends, receives, checks and measures.
//!
//! A run goes through four phases, each reported by the coordinator to
//! every connection task through one `watch` channel:
//!
//! 1. **Setup.** Every connection connects, says HELLO, takes its nick and
//!    joins its room, `--connect-concurrency` at a time (and does whatever
//!    else its [`Messages`] needs before it can send). Traffic starts only
//!    when all of them are ready, so that no message goes to a half-filled
//!    room; a connection that cannot be set up fails the run. Ready
//!    connections send heartbeats while they wait for the others.
//! 2. **Send.** All senders start at the same instant. In a closed loop each
//!    keeps `--window` messages unanswered: the server's `9a` reply to a
//!    message frees its slot, and all free slots go out in one write. At a
//!    fixed `--rate` the messages are spread evenly over the senders and
//!    over time (open loop); a sender that falls behind sends what is due in
//!    one write. Sending stops after `--messages` per sender or at the end
//!    of `--warmup` + `--duration`, whichever comes first.
//! 3. **Drain.** The coordinator waits, up to `--drain` seconds, until every
//!    expected delivery and every reply has arrived.
//! 4. **Stop.** Every connection closes its side and reads until the server
//!    closes, still counting what arrives.
//!
//! Each connection is one task that owns its socket, reads and writes it
//! without a lock, and keeps its counts to itself until the end. The only
//! shared writes on the hot path are one atomic add and one histogram lock
//! per read batch. Messages are written straight into a reused output
//! buffer (for [`Stamped`] messages: frame header and target from a
//! template, then the stamp), so sending allocates nothing.
//!
//! The throughput and latency figures cover what happens after `--warmup`:
//! deliveries/s counts deliveries received after it, latency covers
//! messages sent after it. Correctness (lost, duplicated, reordered,
//! unexpected) covers every message of the run.

use std::future::Future;
use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Args;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::sleep_until;

use super::body::{self, Stamp, MIN_MESSAGE_BYTES};
use super::latency::{round1, round3, BenchClock, LatencyHistogram, LatencySummary};
use super::process::{self, CpuMeter, CpuShare};
use super::relay_metrics::{self, MetricsUrl, NatsRelays, RelayCounters};
use super::sequence::{Arrival, SequenceTracker};
use super::server_sample::{ServerSample, ServerWatch};
use super::session::{BenchConnection, Setup};
use super::target::{seconds, TargetArgs};
use parlor_proto::{opcode, ClientMessage, Frame, SecureMessage, ServerMessage, Status};

/// How much a connection reads per `read` call. Large, so that a receiver
/// in a busy room takes hundreds of deliveries per system call.
const READ_CHUNK: usize = 64 * 1024;
/// Time between the start signal and the first message, so that every task
/// has seen the signal and all senders start together.
const START_LEAD: Duration = Duration::from_millis(50);
/// How long a connection waits for the server to close after the bench
/// closed its side.
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the coordinator looks at the progress counters.
const POLL: Duration = Duration::from_millis(5);
/// At or above this share of its core, the bench may have set the pace.
const SATURATED_PCT: f64 = 85.0;

/// How the senders pace their messages.
#[derive(Args, Clone, Debug, Serialize)]
pub struct LoadArgs {
    /// Closed loop: messages each sender may have unanswered. The server's
    /// `9a` reply to a message frees its slot.
    #[arg(long, value_name = "W", default_value_t = 4, conflicts_with = "rate")]
    pub window: u64,
    /// Fixed rate instead of a closed loop: messages per second over all
    /// senders together, spread evenly (open loop).
    #[arg(long, value_name = "N")]
    pub rate: Option<f64>,
    /// Messages per sender at most.
    #[arg(long, value_name = "K", default_value_t = 1_000_000)]
    pub messages: u64,
    /// Seconds of measured sending, after the warmup.
    #[arg(long, value_name = "S", default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of sending before measuring starts (checked, not measured).
    #[arg(long, value_name = "S", default_value_t = 0.0)]
    pub warmup: f64,
    /// Seconds to wait after sending for deliveries still on their way.
    #[arg(long, value_name = "S", default_value_t = 5.0)]
    pub drain: f64,
    /// Size of each message's text; it carries the sender, the sequence
    /// number and the send time, padded with `x`.
    #[arg(long, value_name = "B", default_value_t = 64)]
    pub message_bytes: usize,
}

impl LoadArgs {
    /// Refuses pacing the run cannot honour, before anything connects.
    pub fn validate(&self) -> Result<(), String> {
        if self.window == 0 {
            return Err("--window: at least 1".into());
        }
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0) {
                return Err("--rate: a positive number of messages per second".into());
            }
        }
        if self.messages == 0 {
            return Err("--messages: at least 1".into());
        }
        seconds("--duration", self.duration)?;
        for (option, value) in [("--warmup", self.warmup), ("--drain", self.drain)] {
            if !(value.is_finite() && (0.0..=86_400.0).contains(&value)) {
                return Err(format!(
                    "{option}: zero or a positive number of seconds, at most a day"
                ));
            }
        }
        if !(MIN_MESSAGE_BYTES..=usize::from(u16::MAX)).contains(&self.message_bytes) {
            return Err(format!(
                "--message-bytes: from {MIN_MESSAGE_BYTES} (the largest stamp) to 65535 (the protocol's limit)"
            ));
        }
        Ok(())
    }

    /// "closed loop (window 4)" or "rate 1000 msgs/s".
    fn pace(&self) -> String {
        match self.rate {
            Some(rate) => format!("rate {rate} msgs/s"),
            None => format!("closed loop (window {})", self.window),
        }
    }
}

/// What a workload asks the engine to run.
pub(crate) struct Plan {
    pub workload: &'static str,
    /// Shown in the summary, e.g. "10 rooms x 10 members".
    pub title: String,
    pub endpoints: Vec<Endpoint>,
    /// Deliveries each accepted message must produce.
    pub deliveries_per_message: u64,
    /// The workload's own options, echoed in the JSON report.
    pub params: serde_json::Value,
    /// `--metrics`: the cluster nodes' metrics endpoints, whose relay
    /// counters are read before and after the run; empty for none.
    pub relay_metrics: Vec<MetricsUrl>,
}

/// One connection of a plan.
pub(crate) struct Endpoint {
    pub nick: String,
    /// The room to join during setup.
    pub room: Option<String>,
    /// Where this connection's messages go.
    pub sends_to: Target,
    /// The plan indices whose messages this connection should receive (its
    /// own index may be inside: it is never expected).
    pub hears_from: Range<u32>,
}

pub(crate) enum Target {
    Room(String),
    User(String),
}

impl Target {
    /// The frame bytes that precede a message text of `size` bytes: the
    /// header and the target, taken from the protocol's own encoder.
    fn frame_prefix(&self, size: usize) -> Vec<u8> {
        let text = Bytes::from(vec![0; size]);
        let message = match self {
            Target::Room(room) => ClientMessage::RoomMessage {
                room: Bytes::copy_from_slice(room.as_bytes()),
                text,
            },
            Target::User(nick) => ClientMessage::DirectMessage {
                target: Bytes::copy_from_slice(nick.as_bytes()),
                text,
            },
        };
        let frame = message.to_frame().to_bytes();
        frame[..frame.len() - size].to_vec()
    }
}

/// What a workload's messages are. The engine paces, counts and times
/// them; this says how a connection gets ready to send them, what goes on
/// the wire, and which message a delivered text is.
///
/// [`Stamped`] is the plain bench message of `fanout` and `dm`. A workload
/// whose messages are something else brings its own.
pub(crate) trait Messages: Send + Sync + 'static {
    /// What one connection keeps for its messages. The engine hands it
    /// back to the workload when the run is over.
    type Conn: Send + 'static;

    /// Connects connection `index`, described by `endpoint`, and makes it
    /// ready to send.
    fn open(
        &self,
        index: u32,
        endpoint: &Endpoint,
        setup: &Setup,
    ) -> impl Future<Output = anyhow::Result<(BenchConnection, Self::Conn)>> + Send;

    /// Appends the whole frame of the message `stamp` describes to `out`.
    /// Called at the moment of sending: `stamp.sent_ns` is now.
    fn write(&self, conn: &mut Self::Conn, stamp: Stamp, out: &mut Vec<u8>);

    /// Which message a delivered `text` from the user named `sender` is;
    /// `None` for a text this run never sent.
    fn read(&self, conn: &mut Self::Conn, sender: &[u8], text: &[u8])
        -> Option<RecognisedDelivery>;

    /// Whether a secure-extension frame (PROTOCOL.md §12.6) that is no
    /// reply to anything is part of this workload's traffic. None is for a
    /// legacy connection, which must never get one.
    fn expects(&self, _notice: &SecureMessage) -> bool {
        false
    }
}

/// A delivery recognised as one of the run's messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RecognisedDelivery {
    /// Plan index of the sender.
    pub sender: u32,
    pub seq: u64,
    /// When it was sent, on the bench's clock; `None` when that is no
    /// longer known, and so its latency is not measured.
    pub sent_ns: Option<u64>,
}

/// The plain bench message: a stamp that carries its sender, sequence
/// number and send time in its text (see `body.rs`).
pub(crate) struct Stamped {
    pub message_bytes: usize,
}

impl Messages for Stamped {
    /// The frame bytes before the text, the same for every message.
    type Conn = Vec<u8>;

    async fn open(
        &self,
        index: u32,
        endpoint: &Endpoint,
        setup: &Setup,
    ) -> anyhow::Result<(BenchConnection, Vec<u8>)> {
        let session = setup
            .open(index as usize, &endpoint.nick, endpoint.room.as_deref())
            .await?;
        Ok((session, endpoint.sends_to.frame_prefix(self.message_bytes)))
    }

    fn write(&self, prefix: &mut Vec<u8>, stamp: Stamp, out: &mut Vec<u8>) {
        out.extend_from_slice(prefix);
        body::write(out, stamp, self.message_bytes);
    }

    fn read(&self, _: &mut Vec<u8>, _sender: &[u8], text: &[u8]) -> Option<RecognisedDelivery> {
        let stamp = body::parse(text)?;
        Some(RecognisedDelivery {
            sender: stamp.sender,
            seq: stamp.seq,
            sent_ns: Some(stamp.sent_ns),
        })
    }
}

/// The result of a message workload's run (one JSON line).
#[derive(Debug, Serialize)]
pub struct TrafficReport {
    /// Always "parlor bench", for scripts that collect several tools' lines.
    pub tool: &'static str,
    /// "fanout", "dm" or "secure-fanout".
    pub workload: &'static str,
    /// The server's address.
    pub server: String,
    /// "closed" (a window per sender) or "rate" (a fixed total rate).
    pub mode: &'static str,
    /// Every option of the run, as given or defaulted.
    pub params: serde_json::Value,
    /// Connections of the plan, every one a sender.
    pub connections: usize,
    /// From the first connect until every connection was ready to send.
    pub setup_s: f64,
    /// Measured sending time: from the end of the warmup to the last send.
    pub send_phase_s: f64,
    /// Messages sent, warmup included.
    pub sent: u64,
    /// Messages sent after the warmup, per second of `send_phase_s`.
    pub sent_per_s: Option<f64>,
    /// Answered `9a 00`.
    pub accepted: u64,
    /// Answered `9a 01` or `9a 02` (refused, e.g. by the rate limit).
    pub refused: u64,
    /// Never answered.
    pub unanswered: u64,
    /// Deliveries owed for the messages accepted.
    pub expected_deliveries: u64,
    /// Distinct deliveries: each (sender, receiver, sequence) once.
    pub delivered: u64,
    /// Deliveries owed and never made.
    pub lost: u64,
    /// Deliveries made again.
    pub duplicated: u64,
    /// Deliveries that came after a later message of the same sender.
    pub reordered: u64,
    /// Frames the bench did not ask for: from an unexpected sender or room,
    /// misattributed, unstamped, malformed, or a reply to no request.
    pub unexpected: u64,
    /// Deliveries received after the warmup, per second until the last.
    pub deliveries_per_s: Option<f64>,
    /// Latency of the deliveries of messages sent after the warmup.
    pub latency_ms: Option<LatencySummary>,
    /// Whether every expected delivery and reply arrived before `--drain`
    /// ran out.
    pub drained: bool,
    /// Connections the server closed during the run.
    pub disconnects: u64,
    /// The bench's CPU use from the end of the warmup to the end of the
    /// drain, in percent of one core.
    pub bench_cpu_pct: f64,
    /// The bench was near its core's limit: the figures are a lower bound.
    pub bench_saturated: bool,
    /// The CPUs the bench may run on.
    pub bench_cpus: Option<String>,
    /// What every workload reports about the server process.
    #[serde(flatten)]
    pub server_sample: ServerSample,
    /// The server's CPU use over the same interval as `bench_cpu_pct`
    /// (with several `--server-pid`s, their sum).
    pub server_cpu_pct: Option<f64>,
    /// Resident memory after the drain, in KiB (summed over the pids).
    pub server_rss_kb_after: Option<u64>,
    /// (loaded − before) / connections.
    pub server_rss_bytes_per_conn: Option<u64>,
    /// With `--metrics`: what the cluster's nodes handed to NATS for the
    /// run's messages (keys `nats_*`; absent without `--metrics`).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub nats: Option<NatsRelays>,
    /// One line per problem found; empty for a clean run.
    pub failures: Vec<String>,
    #[serde(skip)]
    summary_title: String,
}

/// Runs a plan against the server. Returns the report, and what each
/// connection kept for its messages (in plan order).
pub(crate) async fn run<M: Messages>(
    target: &TargetArgs,
    load: &LoadArgs,
    plan: Plan,
    messages: M,
) -> anyhow::Result<(TrafficReport, Vec<M::Conn>)> {
    let connections = plan.endpoints.len();
    if let Err(err) = process::ensure_open_files(connections as u64 + 64) {
        bail!("cannot open {connections} connections: {err}");
    }
    let server = ServerWatch::new(&target.server_pid);
    // The relay counters before anything connects: setup relays nothing
    // (joins are no room messages), so this is the start of the run's
    // relays. A node that cannot be read fails the run before it begins.
    let relays_before = match plan.relay_metrics.as_slice() {
        [] => None,
        urls => Some(
            relay_metrics::scrape_all(urls)
                .await
                .context("--metrics, before the run")?,
        ),
    };
    let remote_nodes = remote_nodes(&plan, target);
    let rss_before = server.rss_kib();
    let shared = Arc::new(TrafficRun {
        clock: BenchClock::start(),
        window: load.window,
        rate: load.rate,
        messages: load.messages,
        latencies: LatencyHistogram::new(),
        progress: TrafficProgress::default(),
        plan,
        kind: messages,
    });
    let (phase, phase_rx) = watch::channel(TrafficPhase::Setup);
    let setup_started = Instant::now();
    let tasks = set_up(&shared, target, &phase, phase_rx).await?;
    let setup_s = setup_started.elapsed().as_secs_f64();
    let rss_loaded = server.rss_kib();
    let (schedule, cpu, drained) = send_and_drain(&shared, load, server.pids(), &phase).await;
    let rss_after = server.rss_kib();
    // Every message answered and delivered: every relay is counted.
    let relays = match &relays_before {
        None => None,
        Some(before) => Some(
            relay_metrics::scrape_all(&shared.plan.relay_metrics)
                .await
                .map(|after| total_growth(before, &after))
                .map_err(|err| format!("--metrics, after the run: {err:#}")),
        ),
    };
    let _ = phase.send(TrafficPhase::Stop);
    let mut tally = TrafficTally::default();
    let mut relays_owed = 0;
    let mut conns = Vec::with_capacity(connections);
    for (task, remote) in tasks.into_iter().zip(&remote_nodes) {
        let (connection_tally, conn) = task.await?;
        relays_owed += connection_tally.accepted * remote;
        tally.add(&connection_tally);
        conns.extend(conn);
    }
    let readings = Readings {
        setup_s,
        schedule,
        drained,
        cpu,
        server_sample: server.sample(rss_before, rss_loaded),
        rss_after,
        relays: relays.map(|growth| growth.map(|growth| (growth, relays_owed))),
    };
    let report = TrafficReport::new(&shared, target, load, &tally, readings);
    Ok((report, conns))
}

/// For each endpoint, the relays to NATS one accepted message of it costs
/// the cluster: one per node, other than the sender's, with a member of
/// the room it sends to (or one when the user it writes to is on another
/// node). The nodes are the `--server` addresses the connections are
/// spread over, each distinct address a node.
pub(crate) fn remote_nodes(plan: &Plan, target: &TargetArgs) -> Vec<u64> {
    use std::collections::{BTreeSet, HashMap};
    let mut room_nodes: HashMap<&str, BTreeSet<std::net::SocketAddr>> = HashMap::new();
    let mut nick_node = HashMap::new();
    for (index, endpoint) in plan.endpoints.iter().enumerate() {
        let node = target.server_for(index);
        if let Some(room) = &endpoint.room {
            room_nodes.entry(room).or_default().insert(node);
        }
        nick_node.insert(endpoint.nick.as_str(), node);
    }
    plan.endpoints
        .iter()
        .enumerate()
        .map(|(index, endpoint)| {
            let own = target.server_for(index);
            match &endpoint.sends_to {
                Target::Room(room) => room_nodes
                    .get(room.as_str())
                    .map_or(0, |nodes| nodes.iter().filter(|&&node| node != own).count())
                    as u64,
                Target::User(nick) => u64::from(
                    nick_node
                        .get(nick.as_str())
                        .is_some_and(|&node| node != own),
                ),
            }
        })
        .collect()
}

/// The growth of the relay counters, summed over the nodes.
fn total_growth(before: &[RelayCounters], after: &[RelayCounters]) -> RelayCounters {
    let mut total = RelayCounters::default();
    for (before, after) in before.iter().zip(after) {
        total.add(&after.since(before));
    }
    total
}

/// Starts one task per endpoint and waits until every one is set up; if
/// any cannot be, stops them all and fails the run.
async fn set_up<M: Messages>(
    shared: &Arc<TrafficRun<M>>,
    target: &TargetArgs,
    phase: &watch::Sender<TrafficPhase>,
    phase_rx: watch::Receiver<TrafficPhase>,
) -> anyhow::Result<Vec<JoinHandle<(TrafficTally, Option<M::Conn>)>>> {
    let connections = shared.plan.endpoints.len();
    let setup = Setup::new(target)?;
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let tasks: Vec<_> = (0..connections as u32)
        .map(|index| {
            tokio::spawn(run_connection(
                index,
                Arc::clone(shared),
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
        return Ok(tasks);
    };
    let _ = phase.send(TrafficPhase::Stop);
    for task in tasks {
        let _ = task.await;
    }
    bail!(
        "{} of {connections} connections could not be set up; the first: {first}",
        errors.len()
    )
}

/// Starts the senders, waits until they are done and the deliveries are
/// in (or `--drain` runs out). Returns the schedule, the CPU use from the
/// end of the warmup on, and whether everything arrived.
async fn send_and_drain<M: Messages>(
    shared: &TrafficRun<M>,
    load: &LoadArgs,
    pids: &[u32],
    phase: &watch::Sender<TrafficPhase>,
) -> (Schedule, CpuShare, bool) {
    let start = Instant::now() + START_LEAD;
    let measure_from = start + Duration::from_secs_f64(load.warmup);
    let schedule = Schedule {
        start,
        measure_from_ns: shared.clock.ns_at(measure_from),
        stop_sending: measure_from + Duration::from_secs_f64(load.duration),
    };
    let _ = phase.send(TrafficPhase::Send(schedule));
    sleep_until(measure_from.into()).await;
    let cpu = CpuMeter::start(pids);

    let progress = &shared.progress;
    let senders = shared.plan.endpoints.len() as u64;
    let senders_late = schedule.stop_sending + Duration::from_secs(1);
    while progress.senders_done.load(Relaxed) < senders && Instant::now() < senders_late {
        tokio::time::sleep(POLL).await;
    }
    let drain_end = Instant::now() + Duration::from_secs_f64(load.drain);
    let mut drained = progress.is_complete();
    while !drained && Instant::now() < drain_end {
        tokio::time::sleep(POLL).await;
        drained = progress.is_complete();
    }
    (schedule, cpu.stop(), drained)
}

/// What the coordinator measured around the run.
struct Readings {
    setup_s: f64,
    schedule: Schedule,
    drained: bool,
    cpu: CpuShare,
    server_sample: ServerSample,
    rss_after: Option<u64>,
    /// With `--metrics`: the growth of the relay counters over the run and
    /// the relays owed for the accepted messages, or why the counters could
    /// not be read after the run.
    relays: Option<Result<(RelayCounters, u64), String>>,
}

impl TrafficReport {
    fn new<M: Messages>(
        shared: &TrafficRun<M>,
        target: &TargetArgs,
        load: &LoadArgs,
        tally: &TrafficTally,
        readings: Readings,
    ) -> TrafficReport {
        let plan = &shared.plan;
        let connections = plan.endpoints.len();
        let expected = shared.progress.expected.load(Relaxed);
        let measure_from_ns = readings.schedule.measure_from_ns;
        let since_measuring = |ns: u64| ns.saturating_sub(measure_from_ns) as f64 / 1e9;
        let per_second =
            |count: u64, seconds: f64| (seconds > 0.0).then(|| round1(count as f64 / seconds));
        let send_phase_s = since_measuring(tally.last_send_ns);
        let cpu = readings.cpu;
        let rss_bytes_per_conn = readings.server_sample.rss_bytes_per_conn(connections);
        let (nats, nats_error) = match readings.relays {
            None => (None, None),
            Some(Ok((growth, owed))) => (Some(NatsRelays::new(growth, owed, tally.accepted)), None),
            Some(Err(err)) => (None, Some(err)),
        };
        let mut report = TrafficReport {
            tool: "parlor bench",
            workload: plan.workload,
            server: target.servers_text(),
            mode: if load.rate.is_some() {
                "rate"
            } else {
                "closed"
            },
            params: plan.params.clone(),
            connections,
            setup_s: round3(readings.setup_s),
            send_phase_s: round3(send_phase_s),
            sent: tally.sent,
            sent_per_s: per_second(tally.sent_measured, send_phase_s),
            accepted: tally.accepted,
            refused: tally.refused,
            unanswered: tally.sent - tally.accepted - tally.refused,
            expected_deliveries: expected,
            delivered: tally.delivered,
            lost: expected.saturating_sub(tally.delivered),
            duplicated: tally.duplicated,
            reordered: tally.reordered,
            unexpected: tally.unexpected,
            deliveries_per_s: per_second(
                tally.delivered_measured,
                since_measuring(tally.last_delivery_ns),
            ),
            latency_ms: shared.latencies.summary(),
            drained: readings.drained,
            disconnects: tally.disconnects,
            bench_cpu_pct: round1(cpu.bench_pct),
            bench_saturated: cpu.bench_pct >= SATURATED_PCT,
            bench_cpus: process::allowed_cpus(std::process::id()),
            server_sample: readings.server_sample,
            server_cpu_pct: cpu.server_pct.map(round1),
            server_rss_kb_after: readings.rss_after,
            server_rss_bytes_per_conn: rss_bytes_per_conn,
            nats,
            failures: Vec::new(),
            summary_title: format!(
                "{}, {}, {}-byte messages, {} s (+{} s warmup)",
                plan.title,
                load.pace(),
                load.message_bytes,
                load.duration,
                load.warmup
            ),
        };
        report.failures = report.find_failures();
        report.failures.extend(nats_error);
        report
    }

    fn find_failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        let counts = [
            ("lost deliveries", self.lost),
            ("duplicated deliveries", self.duplicated),
            ("reordered deliveries", self.reordered),
            ("unexpected frames", self.unexpected),
            (
                "deliveries beyond those expected",
                self.delivered.saturating_sub(self.expected_deliveries),
            ),
            (
                "messages refused with 9a 01/02 (raise the server's rate limit for benchmarking)",
                self.refused,
            ),
            ("messages never answered", self.unanswered),
            ("connections closed by the server", self.disconnects),
        ];
        super::note_failures(&mut failures, &counts, &self.server_sample);
        if let Some(nats) = &self.nats {
            failures.extend(nats.failures());
        }
        failures
    }

    /// A few lines for a person.
    pub fn summary(&self) -> String {
        let rate = |value: Option<f64>| value.map_or("-".into(), |v| format!("{v:.0}/s"));
        let mut text = format!(
            "{} {}\n  sent        {} ({}), accepted {}, refused {}, unanswered {}\n  \
             deliveries  {} of {} expected ({}): lost {}, duplicated {}, reordered {}, unexpected {}\n",
            self.workload,
            self.summary_title,
            self.sent,
            rate(self.sent_per_s),
            self.accepted,
            self.refused,
            self.unanswered,
            self.delivered,
            self.expected_deliveries,
            rate(self.deliveries_per_s),
            self.lost,
            self.duplicated,
            self.reordered,
            self.unexpected,
        );
        if let Some(latency) = &self.latency_ms {
            text += &format!(
                "  latency ms  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}\n",
                latency.p50, latency.p90, latency.p99, latency.p999, latency.max
            );
        }
        text += &format!("  cpu         bench {} % of a core", self.bench_cpu_pct);
        if let Some(server) = self.server_cpu_pct {
            text += &format!(", server {server} %");
        }
        if self.bench_saturated {
            text += " (the bench was near its core's limit: the figures are a lower bound)";
        }
        text += "\n";
        if let (Some(before), Some(loaded), Some(per_conn)) = (
            self.server_sample.rss_kb_before,
            self.server_sample.rss_kb_loaded,
            self.server_rss_bytes_per_conn,
        ) {
            text += &format!(
                "  server RSS  {before} kB before, {loaded} kB with {} connections ({per_conn} B each)\n",
                self.connections
            );
        }
        if let Some(nats) = &self.nats {
            text += &nats.summary(self.accepted);
        }
        text
    }
}

/// What the coordinator tells the connection tasks.
#[derive(Clone, Copy, Debug)]
enum TrafficPhase {
    Setup,
    Send(Schedule),
    Stop,
}

#[derive(Clone, Copy, Debug)]
struct Schedule {
    start: Instant,
    measure_from_ns: u64,
    stop_sending: Instant,
}

/// What every connection task reads, plus the few counters the coordinator
/// needs while the run goes on.
struct TrafficRun<M> {
    plan: Plan,
    /// What the messages are.
    kind: M,
    clock: BenchClock,
    window: u64,
    rate: Option<f64>,
    /// Messages per sender at most.
    messages: u64,
    latencies: LatencyHistogram,
    progress: TrafficProgress,
}

/// Running totals, updated once per write or read batch.
#[derive(Default)]
struct TrafficProgress {
    sent: AtomicU64,
    answered: AtomicU64,
    /// Deliveries owed for the messages sent and not refused.
    expected: AtomicU64,
    /// Distinct deliveries so far.
    delivered: AtomicU64,
    senders_done: AtomicU64,
}

impl TrafficProgress {
    /// Every message answered and every expected delivery in.
    fn is_complete(&self) -> bool {
        self.answered.load(Relaxed) >= self.sent.load(Relaxed)
            && self.delivered.load(Relaxed) >= self.expected.load(Relaxed)
    }
}

/// One connection's counts, summed over all connections at the end.
#[derive(Debug, Default)]
struct TrafficTally {
    sent: u64,
    sent_measured: u64,
    last_send_ns: u64,
    accepted: u64,
    refused: u64,
    delivered: u64,
    delivered_measured: u64,
    last_delivery_ns: u64,
    duplicated: u64,
    reordered: u64,
    unexpected: u64,
    disconnects: u64,
}

impl TrafficTally {
    fn add(&mut self, other: &TrafficTally) {
        self.sent += other.sent;
        self.sent_measured += other.sent_measured;
        self.last_send_ns = self.last_send_ns.max(other.last_send_ns);
        self.accepted += other.accepted;
        self.refused += other.refused;
        self.delivered += other.delivered;
        self.delivered_measured += other.delivered_measured;
        self.last_delivery_ns = self.last_delivery_ns.max(other.last_delivery_ns);
        self.duplicated += other.duplicated;
        self.reordered += other.reordered;
        self.unexpected += other.unexpected;
        self.disconnects += other.disconnects;
    }
}

/// One connection task: set up, wait for the start, then drive traffic.
/// Returns its counts, and what it kept for its messages if it was set up.
async fn run_connection<M: Messages>(
    index: u32,
    shared: Arc<TrafficRun<M>>,
    setup: Setup,
    ready: mpsc::UnboundedSender<Result<(), String>>,
    mut phase: watch::Receiver<TrafficPhase>,
) -> (TrafficTally, Option<M::Conn>) {
    let endpoint = &shared.plan.endpoints[index as usize];
    let (mut session, conn) = match shared.kind.open(index, endpoint, &setup).await {
        Ok(opened) => {
            let _ = ready.send(Ok(()));
            opened
        }
        Err(err) => {
            let _ = ready.send(Err(format!("{}: {err:#}", endpoint.nick)));
            return (TrafficTally::default(), None);
        }
    };
    drop(ready);
    let Some(schedule) = session.keep_alive_while(start_signal(&mut phase)).await else {
        return (TrafficTally::default(), Some(conn));
    };
    let (tally, conn) = Driver::new(index, shared, session, conn, schedule)
        .run(phase)
        .await;
    (tally, Some(conn))
}

/// The schedule, once the coordinator says to send; `None` if it says to
/// stop instead.
async fn start_signal(phase: &mut watch::Receiver<TrafficPhase>) -> Option<Schedule> {
    loop {
        match *phase.borrow_and_update() {
            TrafficPhase::Send(schedule) => return Some(schedule),
            TrafficPhase::Stop => return None,
            TrafficPhase::Setup => {}
        }
        phase.changed().await.ok()?;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SendingState {
    /// Before the schedule's start.
    NotYet,
    Active,
    /// Count reached, time up, or the connection ended.
    Done,
}

/// Why a connection stopped reading before the bench closed it.
enum Ended {
    /// The server closed the connection (or the socket failed).
    ByServer,
    /// The server sent bytes that are not legacy frames; nothing after them
    /// can be trusted.
    Garbled,
}

/// A connection during the run: sends its messages and checks what it
/// receives.
struct Driver<M: Messages> {
    index: u32,
    shared: Arc<TrafficRun<M>>,
    schedule: Schedule,
    session: BenchConnection,
    /// What the connection keeps for its messages.
    conn: M::Conn,
    /// Frames waiting to be written; `out[written..]` is still unwritten.
    out: Vec<u8>,
    written: usize,
    sending: SendingState,
    next_seq: u64,
    unanswered: u64,
    /// One per plan index in the endpoint's `hears_from`.
    trackers: Vec<SequenceTracker>,
    /// Latencies of the current read batch, in ns.
    latencies: Vec<u64>,
    tally: TrafficTally,
}

impl<M: Messages> Driver<M> {
    fn new(
        index: u32,
        shared: Arc<TrafficRun<M>>,
        session: BenchConnection,
        conn: M::Conn,
        schedule: Schedule,
    ) -> Driver<M> {
        let endpoint = &shared.plan.endpoints[index as usize];
        let trackers = vec![SequenceTracker::default(); endpoint.hears_from.len()];
        Driver {
            index,
            schedule,
            session,
            conn,
            out: Vec::new(),
            written: 0,
            sending: SendingState::NotYet,
            next_seq: 0,
            unanswered: 0,
            trackers,
            latencies: Vec::new(),
            tally: TrafficTally::default(),
            shared,
        }
    }

    async fn run(mut self, mut phase: watch::Receiver<TrafficPhase>) -> (TrafficTally, M::Conn) {
        let stop_sending = sleep_until(self.schedule.stop_sending.into());
        let next_due = sleep_until(self.schedule.start.into());
        tokio::pin!(stop_sending, next_due);
        let mut timer_armed = true;
        let ended = loop {
            if self.flush().is_err() {
                break Some(Ended::ByServer);
            }
            let sending = self.sending != SendingState::Done;
            tokio::select! {
                biased;
                _ = phase.changed() => break None,
                () = &mut stop_sending, if sending => self.stop_sending(),
                () = &mut next_due, if sending && timer_armed => {
                    self.sending = SendingState::Active;
                    self.send_due();
                    // A closed loop needs the timer only to start; after
                    // that, replies pace it.
                    match self.next_rate_due() {
                        Some(due) => next_due.as_mut().reset(due.into()),
                        None => timer_armed = false,
                    }
                }
                ready = self.session.stream().readable() => {
                    if ready.is_err() {
                        break Some(Ended::ByServer);
                    }
                    if let Err(ended) = self.read_available() {
                        break Some(ended);
                    }
                    if self.shared.rate.is_none() && self.sending == SendingState::Active {
                        self.send_due();
                    }
                }
                ready = self.session.stream().writable(),
                    if self.written < self.out.len() || self.session.has_unsent() => {
                    if ready.is_err() {
                        break Some(Ended::ByServer);
                    }
                }
            }
        };
        self.stop_sending();
        match ended {
            Some(Ended::ByServer) => self.tally.disconnects += 1,
            Some(Ended::Garbled) => {}
            None => {
                let _ = tokio::time::timeout(TEARDOWN_TIMEOUT, self.finish()).await;
            }
        }
        (self.tally, self.conn)
    }

    /// Sends what is due now: every free window slot in a closed loop,
    /// every message whose time has come at a fixed rate.
    fn send_due(&mut self) {
        let remaining = self.shared.messages - self.next_seq;
        let count = match self.shared.rate {
            None => self
                .shared
                .window
                .saturating_sub(self.unanswered)
                .min(remaining),
            Some(_) => {
                let now = Instant::now();
                let mut count = 0;
                while count < remaining
                    && self
                        .rate_due(self.next_seq + count)
                        .is_some_and(|due| due <= now)
                {
                    count += 1;
                }
                count
            }
        };
        if count > 0 {
            self.queue(count);
        }
        if self.next_seq == self.shared.messages {
            self.stop_sending();
        }
    }

    /// When message `seq` is due at a fixed rate: each sender sends every
    /// `senders / rate` seconds, the senders' turns spread evenly over that
    /// interval. `None` in a closed loop, or past the end of sending.
    fn rate_due(&self, seq: u64) -> Option<Instant> {
        let rate = self.shared.rate?;
        let senders = self.shared.plan.endpoints.len() as f64;
        let interval = senders / rate;
        let turn = interval * f64::from(self.index) / senders;
        let due = self.schedule.start + Duration::from_secs_f64(turn + interval * seq as f64);
        (due < self.schedule.stop_sending).then_some(due)
    }

    fn next_rate_due(&self) -> Option<Instant> {
        if self.sending == SendingState::Done {
            return None;
        }
        self.rate_due(self.next_seq)
    }

    /// Appends `count` messages to the output, stamped with the time now.
    fn queue(&mut self, count: u64) {
        let shared = &*self.shared;
        let now_ns = shared.clock.now_ns();
        for _ in 0..count {
            let stamp = Stamp {
                sender: self.index,
                seq: self.next_seq,
                sent_ns: now_ns,
            };
            shared.kind.write(&mut self.conn, stamp, &mut self.out);
            self.next_seq += 1;
        }
        self.unanswered += count;
        self.tally.sent += count;
        if now_ns >= self.schedule.measure_from_ns {
            self.tally.sent_measured += count;
            self.tally.last_send_ns = now_ns;
        }
        shared.progress.sent.fetch_add(count, Relaxed);
        shared
            .progress
            .expected
            .fetch_add(count * shared.plan.deliveries_per_message, Relaxed);
    }

    fn stop_sending(&mut self) {
        if self.sending != SendingState::Done {
            self.sending = SendingState::Done;
            self.shared.progress.senders_done.fetch_add(1, Relaxed);
        }
    }

    /// Writes what the socket takes without waiting; the rest waits for
    /// the socket to become writable.
    fn flush(&mut self) -> io::Result<()> {
        self.session.flush()?;
        while self.written < self.out.len() {
            match self.session.try_write(&self.out[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(err) => return Err(err),
            }
        }
        self.out.clear();
        self.written = 0;
        Ok(())
    }

    /// Reads what the socket has and handles every whole frame in it.
    fn read_available(&mut self) -> Result<(), Ended> {
        match self.session.try_read(READ_CHUNK) {
            Ok(0) => return Err(Ended::ByServer),
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(_) => return Err(Ended::ByServer),
        }
        // One clock reading per batch: the frames of one read arrived
        // together.
        let now_ns = self.shared.clock.now_ns();
        let delivered_before = self.tally.delivered;
        let answered_before = self.tally.accepted + self.tally.refused;
        let mut result = Ok(());
        loop {
            match self.session.next_frame() {
                Ok(Some(frame)) => self.handle(&frame, now_ns),
                Ok(None) => break,
                Err(_) => {
                    self.tally.unexpected += 1;
                    result = Err(Ended::Garbled);
                    break;
                }
            }
        }
        let progress = &self.shared.progress;
        let delivered = self.tally.delivered - delivered_before;
        if delivered > 0 {
            progress.delivered.fetch_add(delivered, Relaxed);
        }
        let answered = self.tally.accepted + self.tally.refused - answered_before;
        if answered > 0 {
            progress.answered.fetch_add(answered, Relaxed);
        }
        self.shared.latencies.record_batch(&mut self.latencies);
        result
    }

    fn handle(&mut self, frame: &Frame, now_ns: u64) {
        if frame.opcode == opcode::RESPONSE {
            return self.handle_reply(frame);
        }
        let message = ServerMessage::parse(frame);
        if let Ok(ServerMessage::Secure(notice)) = &message {
            if !self.shared.kind.expects(notice) {
                self.tally.unexpected += 1;
            }
            return;
        }
        match message
            .ok()
            .and_then(|message| self.check_delivery(message))
        {
            Some(delivery) => self.count_delivery(delivery, now_ns),
            None => self.tally.unexpected += 1,
        }
    }

    /// The server answers requests in order, so a reply answers the oldest
    /// unanswered message.
    fn handle_reply(&mut self, frame: &Frame) {
        if self.unanswered == 0 {
            self.tally.unexpected += 1;
            return;
        }
        self.unanswered -= 1;
        if frame.payload.first() == Some(&(Status::Ok as u8)) {
            self.tally.accepted += 1;
        } else {
            self.tally.refused += 1;
            self.shared
                .progress
                .expected
                .fetch_sub(self.shared.plan.deliveries_per_message, Relaxed);
        }
    }

    /// A delivery this connection should get: one of the run's messages,
    /// from a sender it hears from, attributed to that sender's nick, in the
    /// room (or as the direct message) that sender addressed.
    fn check_delivery(&mut self, message: ServerMessage) -> Option<RecognisedDelivery> {
        let (room, sender, text) = match message {
            ServerMessage::RoomMessage { room, sender, text } => (Some(room), sender, text),
            ServerMessage::DirectMessage { sender, text } => (None, sender, text),
            ServerMessage::Response { .. } | ServerMessage::Secure(_) | ServerMessage::File(_) => {
                return None
            }
        };
        let delivery = self.shared.kind.read(&mut self.conn, &sender, &text)?;
        let endpoints = &self.shared.plan.endpoints;
        let me = &endpoints[self.index as usize];
        if delivery.sender == self.index || !me.hears_from.contains(&delivery.sender) {
            return None;
        }
        let from = endpoints.get(delivery.sender as usize)?;
        if from.nick.as_bytes() != sender {
            return None;
        }
        let addressed = match (&from.sends_to, room) {
            (Target::Room(to), Some(room)) => to.as_bytes() == room,
            (Target::User(to), None) => *to == me.nick,
            _ => false,
        };
        addressed.then_some(delivery)
    }

    fn count_delivery(&mut self, delivery: RecognisedDelivery, now_ns: u64) {
        let first_sender = self.shared.plan.endpoints[self.index as usize]
            .hears_from
            .start;
        let tracker = &mut self.trackers[(delivery.sender - first_sender) as usize];
        let arrival = tracker.record(delivery.seq);
        if arrival == Arrival::Duplicate {
            self.tally.duplicated += 1;
            return;
        }
        if arrival == Arrival::Reordered {
            self.tally.reordered += 1;
        }
        self.tally.delivered += 1;
        let measure_from_ns = self.schedule.measure_from_ns;
        if let Some(sent_ns) = delivery.sent_ns.filter(|&ns| ns >= measure_from_ns) {
            self.latencies.push(now_ns.saturating_sub(sent_ns));
        }
        if now_ns >= measure_from_ns {
            self.tally.delivered_measured += 1;
            self.tally.last_delivery_ns = now_ns;
        }
    }

    /// Closes our side, then counts what still arrives until the server
    /// closes its side.
    async fn finish(&mut self) {
        if self.session.shutdown_write().await.is_err() {
            return;
        }
        while self.session.stream().readable().await.is_ok() {
            if self.read_available().is_err() {
                return;
            }
        }
    }
}
