//! `parlor bench idle`: what an idle connection costs the server, and
//! whether a server holding N of them still serves.
//!
//! 1. Open N connections (`--connect-concurrency` at a time), each saying
//!    HELLO and taking its nick, and read the server's RSS before and
//!    `--settle` seconds after the last one ("loaded"): the difference per
//!    connection is the figure of merit.
//! 2. Hold them for `--hold` seconds. Each sends the real client's
//!    heartbeat every `--keepalive` seconds, starting right after its own
//!    registration (a long setup must not trip the server's idle timeout)
//!    and staggered over the interval so the heartbeats do not come in
//!    bursts.
//! 3. Probe: a fresh connection says HELLO and must be answered within
//!    `--probe-timeout`. Then every held connection re-takes its own nick
//!    and must be answered too.
//! 4. Close everything.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;
use clap::Args;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::time::sleep_until;

use super::latency::{round1, round3};
use super::process::{self, CpuMeter};
use super::server_sample::{ServerSample, ServerWatch};
use super::session::{BenchConnection, Setup, GREETING, HEARTBEAT};
use super::target::{seconds, TargetArgs};
use parlor_proto::ClientMessage;

/// How long a connection waits for the server to close after the bench
/// closed its side.
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(3);
/// Bytes read at once from a held connection; the server should send none.
const READ_CHUNK: usize = 256;

/// `parlor bench idle`'s options; echoed, all of them, in the report's
/// `params`.
#[derive(Args, Clone, Debug, Serialize)]
pub struct IdleArgs {
    /// The server and how to connect to it, as for every workload.
    #[command(flatten)]
    #[serde(flatten)]
    pub target: TargetArgs,
    /// Connections to open and hold (N).
    #[arg(long, value_name = "N", default_value_t = 200)]
    pub connections: usize,
    /// Seconds to hold them once all are registered.
    #[arg(long, value_name = "S", default_value_t = 20.0)]
    pub hold: f64,
    /// Seconds between one connection's heartbeats; keep it below the
    /// server's idle timeout.
    #[arg(long, value_name = "S", default_value_t = 5.0)]
    pub keepalive: f64,
    /// Seconds after the last registration before the "loaded" memory
    /// reading.
    #[arg(long, value_name = "S", default_value_t = 1.0)]
    pub settle: f64,
    /// Seconds each probe may wait for its answer.
    #[arg(long, value_name = "S", default_value_t = 5.0)]
    pub probe_timeout: f64,
}

impl IdleArgs {
    /// Refuses options the run cannot honour, with the option's name and
    /// what it takes, before anything connects.
    pub fn validate(&self) -> Result<(), String> {
        self.target.validate()?;
        if !(1..=1_000_000).contains(&self.connections) {
            return Err("--connections: from 1 to 1,000,000".into());
        }
        let hold = seconds("--hold", self.hold)?;
        seconds("--keepalive", self.keepalive)?;
        seconds("--probe-timeout", self.probe_timeout)?;
        if seconds("--settle", self.settle)? > hold {
            return Err("--settle: at most --hold".into());
        }
        Ok(())
    }
}

/// The result of an `idle` run (one JSON line).
#[derive(Debug, Serialize)]
pub struct IdleReport {
    /// Always "parlor bench", for scripts that collect several tools' lines.
    pub tool: &'static str,
    /// Always "idle".
    pub workload: &'static str,
    /// The server's address.
    pub server: String,
    /// Every option of the run, as given or defaulted.
    pub params: serde_json::Value,
    /// Connections the run meant to hold (`--connections`).
    pub connections: usize,
    /// Connections that said HELLO and took their nick.
    pub registered: usize,
    /// Why connections could not be set up, with how many failed that way.
    pub setup_failures: BTreeMap<String, usize>,
    /// From the first connect to the last registration.
    pub connect_s: f64,
    /// `registered` per second of `connect_s`.
    pub registrations_per_s: f64,
    /// Heartbeats the held connections sent.
    pub heartbeats_sent: u64,
    /// Held connections the server closed.
    pub disconnects: u64,
    /// Frames the server sent to a held connection unasked.
    pub unexpected_frames: u64,
    /// Whether a fresh connection's HELLO was answered while the server held
    /// the others.
    pub probe_answered: bool,
    /// From connecting to the HELLO reply.
    pub probe_ms: Option<f64>,
    /// Why the probe failed, when it did.
    pub probe_error: Option<String>,
    /// Held connections that answered the final check.
    pub alive_at_end: u64,
    /// The bench's CPU use while the connections were set up, in percent
    /// of one core.
    pub bench_cpu_pct_setup: f64,
    /// From the "loaded" reading to the end of the hold.
    pub bench_cpu_pct_hold: f64,
    /// The CPUs the bench may run on.
    pub bench_cpus: Option<String>,
    /// What every workload reports about the server process; "loaded" is
    /// `--settle` seconds after the last registration.
    #[serde(flatten)]
    pub server_sample: ServerSample,
    /// The server's CPU use while the connections were set up.
    pub server_cpu_pct_setup: Option<f64>,
    /// The server's CPU use from the "loaded" reading to the end of the
    /// hold.
    pub server_cpu_pct_hold: Option<f64>,
    /// Resident memory at the end of the hold, before the probe, in KiB.
    pub server_rss_kb_end_of_hold: Option<u64>,
    /// (loaded − before) / registered.
    pub server_rss_bytes_per_conn: Option<u64>,
    /// One line per problem found; empty for a clean run.
    pub failures: Vec<String>,
}

/// What the coordinator tells the held connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HoldPhase {
    Hold,
    /// Re-take your nick and report.
    Check,
    Stop,
}

#[derive(Default)]
struct Counters {
    heartbeats: AtomicU64,
    disconnects: AtomicU64,
    unexpected_frames: AtomicU64,
    alive: AtomicU64,
    checked: AtomicU64,
}

struct IdleRun {
    connections: usize,
    keepalive: Duration,
    probe_timeout: Duration,
    heartbeat: Bytes,
    counters: Counters,
}

pub(crate) async fn run(args: &IdleArgs) -> anyhow::Result<IdleReport> {
    let connections = args.connections;
    if let Err(err) = process::ensure_open_files(connections as u64 + 64) {
        bail!("cannot open {connections} connections: {err}");
    }
    let server = ServerWatch::new(&args.target.server_pid);
    let rss_before = server.rss_kib();
    let probe_timeout = Duration::from_secs_f64(args.probe_timeout);
    let shared = Arc::new(IdleRun {
        connections,
        keepalive: Duration::from_secs_f64(args.keepalive),
        probe_timeout,
        heartbeat: ClientMessage::Heartbeat {
            payload: Bytes::from_static(HEARTBEAT),
        }
        .to_frame()
        .to_bytes(),
        counters: Counters::default(),
    });
    let setup = Setup::new(&args.target)?;
    let (phase_tx, phase_rx) = watch::channel(HoldPhase::Hold);
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let setup_cpu = CpuMeter::start(server.pids());
    let setup_started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|index| {
            tokio::spawn(hold_connection(
                index,
                args.target.nick(index),
                Arc::clone(&shared),
                setup.clone(),
                ready_tx.clone(),
                phase_rx.clone(),
            ))
        })
        .collect();
    drop(ready_tx);
    let mut registered = 0;
    let mut setup_failures = BTreeMap::new();
    while let Some(result) = ready_rx.recv().await {
        match result {
            Ok(()) => registered += 1,
            Err(err) => *setup_failures.entry(err).or_insert(0) += 1,
        }
    }
    let connect_s = setup_started.elapsed().as_secs_f64();
    let setup_cpu = setup_cpu.stop();

    let hold_started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let rss_loaded = server.rss_kib();
    let hold_cpu = CpuMeter::start(server.pids());
    sleep_until((hold_started + Duration::from_secs_f64(args.hold)).into()).await;
    let hold_cpu = hold_cpu.stop();
    let rss_end_of_hold = server.rss_kib();

    let probe_started = Instant::now();
    let probe = tokio::time::timeout(probe_timeout, probe(args)).await;
    let probe_ms = round3(probe_started.elapsed().as_secs_f64() * 1000.0);
    let probe_error = match probe {
        Ok(Ok(())) => None,
        Ok(Err(err)) => Some(format!("{err:#}")),
        Err(_) => Some(format!("no answer within {probe_timeout:?}")),
    };

    let counters = &shared.counters;
    let _ = phase_tx.send(HoldPhase::Check);
    let checks_due = Instant::now() + probe_timeout + Duration::from_secs(1);
    while counters.checked.load(Relaxed) + counters.disconnects.load(Relaxed) < registered as u64
        && Instant::now() < checks_due
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = phase_tx.send(HoldPhase::Stop);
    for task in tasks {
        task.await?;
    }

    let server_sample = server.sample(rss_before, rss_loaded);
    let mut report = IdleReport {
        tool: "parlor bench",
        workload: "idle",
        server: args.target.servers_text(),
        params: serde_json::to_value(args)?,
        connections,
        registered,
        setup_failures,
        connect_s: round3(connect_s),
        registrations_per_s: round1(registered as f64 / connect_s.max(1e-9)),
        heartbeats_sent: counters.heartbeats.load(Relaxed),
        disconnects: counters.disconnects.load(Relaxed),
        unexpected_frames: counters.unexpected_frames.load(Relaxed),
        probe_answered: probe_error.is_none(),
        probe_ms: probe_error.is_none().then_some(probe_ms),
        probe_error,
        alive_at_end: counters.alive.load(Relaxed),
        bench_cpu_pct_setup: round1(setup_cpu.bench_pct),
        bench_cpu_pct_hold: round1(hold_cpu.bench_pct),
        bench_cpus: process::allowed_cpus(std::process::id()),
        server_rss_bytes_per_conn: server_sample.rss_bytes_per_conn(registered),
        server_sample,
        server_cpu_pct_setup: setup_cpu.server_pct.map(round1),
        server_cpu_pct_hold: hold_cpu.server_pct.map(round1),
        server_rss_kb_end_of_hold: rss_end_of_hold,
        failures: Vec::new(),
    };
    report.failures = report.find_failures();
    Ok(report)
}

/// A fresh connection's HELLO, which must be answered `9a 00`. It is
/// connection number `--connections` (the one after the held ones), so
/// with several `--server` addresses it goes where the next one would.
async fn probe(args: &IdleArgs) -> anyhow::Result<()> {
    let mut session = Setup::new(&args.target)?.connect(args.connections).await?;
    let hello = ClientMessage::Hello {
        greeting: Bytes::from_static(GREETING),
    };
    session.expect_ok(&hello, "HELLO").await
}

/// One held connection, from setup to close.
async fn hold_connection(
    index: usize,
    nick: String,
    shared: Arc<IdleRun>,
    setup: Setup,
    ready: mpsc::UnboundedSender<Result<(), String>>,
    mut phase: watch::Receiver<HoldPhase>,
) {
    let mut session = match setup.open(index, &nick, None).await {
        Ok(session) => session,
        Err(err) => {
            let _ = ready.send(Err(format!("{err:#}")));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    drop(ready);
    let counters = &shared.counters;
    let stagger = shared
        .keepalive
        .mul_f64(index as f64 / shared.connections as f64);
    let mut next_heartbeat = Instant::now() + stagger;
    loop {
        tokio::select! {
            biased;
            changed = phase.changed() => {
                if changed.is_err() || *phase.borrow() != HoldPhase::Hold {
                    break;
                }
            }
            () = sleep_until(next_heartbeat.into()) => {
                if session.send(&shared.heartbeat).await.is_err() {
                    counters.disconnects.fetch_add(1, Relaxed);
                    return;
                }
                counters.heartbeats.fetch_add(1, Relaxed);
                next_heartbeat += shared.keepalive;
            }
            ready = session.stream().readable() => {
                if ready.is_err() || !read_unasked(&mut session, counters) {
                    counters.disconnects.fetch_add(1, Relaxed);
                    return;
                }
            }
        }
    }
    if *phase.borrow() == HoldPhase::Check {
        let nick = ClientMessage::Nick {
            name: Bytes::from(nick),
        };
        let check = tokio::time::timeout(shared.probe_timeout, session.expect_ok(&nick, "NICK"));
        if matches!(check.await, Ok(Ok(()))) {
            counters.alive.fetch_add(1, Relaxed);
        }
        counters.checked.fetch_add(1, Relaxed);
        let _ = phase.wait_for(|phase| *phase == HoldPhase::Stop).await;
    }
    let close = async {
        session.shutdown_write().await?;
        while session.read_frame().await?.is_some() {}
        anyhow::Ok(())
    };
    let _ = tokio::time::timeout(TEARDOWN_TIMEOUT, close).await;
}

/// Reads what the server sent unasked and counts its frames; `false` once
/// the connection is closed.
fn read_unasked(session: &mut BenchConnection, counters: &Counters) -> bool {
    match session.try_read(READ_CHUNK) {
        Ok(0) => return false,
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return true,
        Err(_) => return false,
    }
    loop {
        match session.next_frame() {
            Ok(Some(_)) => counters.unexpected_frames.fetch_add(1, Relaxed),
            Ok(None) => return true,
            Err(_) => return false,
        };
    }
}

impl IdleReport {
    fn find_failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        for (reason, count) in &self.setup_failures {
            failures.push(format!("connections not set up: {count} ({reason})"));
        }
        if self.disconnects > 0 {
            failures.push(format!(
                "{} held connections closed by the server",
                self.disconnects
            ));
        }
        if self.unexpected_frames > 0 {
            failures.push(format!("frames sent unasked: {}", self.unexpected_frames));
        }
        if let Some(err) = &self.probe_error {
            failures.push(format!("the probe was not answered: {err}"));
        }
        let silent = (self.registered as u64).saturating_sub(self.disconnects + self.alive_at_end);
        if silent > 0 {
            failures.push(format!(
                "{silent} held connections did not answer at the end"
            ));
        }
        super::note_failures(&mut failures, &[], &self.server_sample);
        failures
    }

    /// A few lines for a person.
    pub fn summary(&self) -> String {
        let mut text = format!(
            "idle {} connections: {} registered in {:.2} s, held, {} heartbeats sent, {} closed by the server\n  \
             probe       {}; {} held connections answered at the end\n  \
             cpu (hold)  bench {} % of a core",
            self.connections,
            self.registered,
            self.connect_s,
            self.heartbeats_sent,
            self.disconnects,
            match (&self.probe_ms, &self.probe_error) {
                (Some(ms), _) => format!("answered in {ms} ms"),
                (None, Some(err)) => format!("NOT answered: {err}"),
                (None, None) => "not run".into(),
            },
            self.alive_at_end,
            self.bench_cpu_pct_hold,
        );
        if let Some(server) = self.server_cpu_pct_hold {
            text += &format!(", server {server} %");
        }
        text += "\n";
        if let (Some(before), Some(loaded), Some(per_conn)) = (
            self.server_sample.rss_kb_before,
            self.server_sample.rss_kb_loaded,
            self.server_rss_bytes_per_conn,
        ) {
            text += &format!(
                "  server RSS  {before} kB before, {loaded} kB loaded ({per_conn} B per connection)\n"
            );
        }
        text
    }
}
