//! secure-fanout's `--join-every S`: while the members send, one more user
//! joins `room0` every S seconds, waits for its room key, and disconnects.
//!
//! A join into a secure room, and the departure after it, each rotate the
//! room key: the server wraps the new key once per member (PROTOCOL.md
//! §12.2), 1,000 RSA encryptions in a room of 1,000. The server does that
//! on its key-wrap threads, not on the event loop that relays the members'
//! messages, and this is how a run shows it: the members' latency with
//! joins against the same run without them.
//!
//! The joins run on a thread of their own at the lowest priority
//! (`SCHED_IDLE`), with a runtime of their own: a join checks every
//! member's identity block and unwraps its key with an RSA private-key
//! operation, milliseconds of CPU in a big room, and on the bench's one
//! thread, or at its priority, that would delay the members' reads and
//! show up in their latency as if the server had caused it.
//!
//! Each join is a new connection of a new name (`PREFIX` and the next index
//! after the members'), so that a join never waits for the server to free
//! the name of the one before; all share one identity. A join counts when
//! its own room key has arrived and opened (its OAEP label checked), and
//! its time runs from the connect to that key.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use serde::Serialize;
use tokio::sync::watch;

use super::latency::round3;
use super::secure_fanout::{join_securely, CheckedPeers};
use super::session::Setup;
use super::target::TargetArgs;
use parlor_crypto::Identity;
use parlor_proto::{SecureMessage, ServerMessage};

/// The room every join goes to: fanout's first.
const ROOM: &str = "room0";

/// What the joins need: when, as whom, and for how long.
pub(crate) struct Joins {
    /// Time between one join's end and the next one's start.
    pub every: Duration,
    /// How long joins go on once every member is ready: the run's warmup
    /// and duration.
    pub lasting: Duration,
    /// The plan index of the first join's name: one past the members'.
    pub first_index: usize,
    /// The identity every join registers.
    pub identity: Arc<Identity>,
}

/// How the joins went.
#[derive(Debug, Serialize)]
pub struct JoinReport {
    /// Joins that got their room key.
    pub joins: u64,
    /// From connecting to holding the room key, per join: the median.
    pub join_to_key_ms_p50: f64,
    /// The slowest join.
    pub join_to_key_ms_max: f64,
}

impl JoinReport {
    fn from_times(mut times: Vec<f64>) -> JoinReport {
        times.sort_by(f64::total_cmp);
        JoinReport {
            joins: times.len() as u64,
            join_to_key_ms_p50: times.get(times.len() / 2).copied().map_or(0.0, round3),
            join_to_key_ms_max: times.last().copied().map_or(0.0, round3),
        }
    }

    /// One line for a person.
    pub(crate) fn summary(&self) -> String {
        format!(
            "  joins       {} into room0 during the run, connect to room key: p50 {:.3} ms, max {:.3} ms\n",
            self.joins, self.join_to_key_ms_p50, self.join_to_key_ms_max
        )
    }
}

/// Starts the joins on their own thread; the handle ends with their report.
pub(crate) fn start(
    joins: Joins,
    target: TargetArgs,
    ready: watch::Receiver<usize>,
    members: usize,
) -> std::io::Result<std::thread::JoinHandle<anyhow::Result<JoinReport>>> {
    std::thread::Builder::new()
        .name("bench-joins".into())
        .spawn(move || {
            lowest_priority()?;
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(run(joins, &target, ready, members))
        })
}

/// Puts the calling thread in `SCHED_IDLE`: it runs only when the bench's
/// main thread has nothing to do.
fn lowest_priority() -> anyhow::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 names the calling thread; `param` is a valid
    // sched_param that outlives the call.
    let result = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if result != 0 {
        return Err(std::io::Error::last_os_error()).context("SCHED_IDLE for the joins");
    }
    Ok(())
}

/// Waits until `ready` counts `members` members with sealed pools, then
/// joins every `joins.every` for `joins.lasting`.
async fn run(
    joins: Joins,
    target: &TargetArgs,
    mut ready: watch::Receiver<usize>,
    members: usize,
) -> anyhow::Result<JoinReport> {
    ready
        .wait_for(|sealed| *sealed == members)
        .await
        .context("the members were never ready")?;
    let setup = Setup::new(target)?;
    let end = Instant::now() + joins.lasting;
    let mut times = Vec::new();
    loop {
        tokio::time::sleep(joins.every).await;
        if Instant::now() >= end {
            break;
        }
        let index = joins.first_index + times.len();
        let nick = target.nick(index);
        let started = Instant::now();
        setup
            .within_limits(join_once(&setup, index, &nick, &joins.identity))
            .await
            .with_context(|| format!("join {} ({nick})", times.len() + 1))?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    Ok(JoinReport::from_times(times))
}

/// Connects as connection `index`, named `nick`, joins [`ROOM`] and reads
/// until its room key arrives and opens; then the connection closes, which
/// is the departure.
async fn join_once(
    setup: &Setup,
    index: usize,
    nick: &str,
    identity: &Identity,
) -> anyhow::Result<()> {
    let mut session = setup.connect(index).await?;
    // A join checks every member's identity, as a real client would.
    let checked = CheckedPeers::default();
    let mut keyring = join_securely(&mut session, nick, ROOM, identity, &checked).await?;
    loop {
        let frame = session
            .read_frame()
            .await?
            .ok_or_else(|| anyhow!("the server closed the connection before the room key"))?;
        // The members' messages and the notices of the room go past.
        if let Ok(ServerMessage::Secure(SecureMessage::RoomKey {
            room,
            incarnation,
            epoch,
            wrapped,
        })) = ServerMessage::parse(&frame)
        {
            if room == ROOM.as_bytes() {
                keyring
                    .add_room_key(
                        identity,
                        &room,
                        incarnation,
                        epoch,
                        &wrapped,
                        Instant::now(),
                    )
                    .map_err(|refused| anyhow!("the key of {ROOM}, epoch {epoch}: {refused}"))?;
                return Ok(());
            }
        }
    }
}
