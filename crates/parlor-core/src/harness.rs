//! A driver for the hub without a server: a fake clock, and stand-ins for
//! the password and key-wrap pools that answer on the spot. The hub's unit
//! tests and the session fuzz body share it.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{
    Action, CloseReason, ConnId, Hub, KeyWrapJob, KeyWrapOutcome, Limits, PasswordJob,
    PasswordOutcome, PasswordTask,
};
use parlor_proto::ClientMessage;

/// A hub, the time it is told, and synchronous stand-ins for the hashing and
/// key-wrapping pools.
pub struct Harness {
    /// The hub under test.
    pub hub: Hub,
    /// The fake clock: moved only by [`Harness::advance`] (or by hand).
    pub now: Instant,
    /// Room key rotations started and not finished yet, oldest first; see
    /// [`Harness::finish_rotations`].
    pub(super) rotations: Vec<KeyWrapJob>,
}

impl Harness {
    /// A hub with `limits`, its randomness seeded with a constant so that
    /// a test or a fuzz input always runs the same way.
    pub fn new(limits: Limits) -> Harness {
        Harness {
            hub: Hub::new(limits, [0x5e; 32]),
            now: Instant::now(),
            rotations: Vec::new(),
        }
    }

    /// Moves the clock forward and lets the hub's timers fire.
    pub fn advance(&mut self, by: Duration) -> Vec<Action> {
        self.now += by;
        let mut out = Vec::new();
        self.hub.handle_timeout(self.now, &mut out);
        self.settle(&mut out);
        out
    }

    /// Opens connection `conn`, from a loopback address derived from its id.
    pub fn connect(&mut self, conn: ConnId) -> Vec<Action> {
        let peer = SocketAddr::from((Ipv4Addr::LOCALHOST, conn.0 as u16));
        let mut out = Vec::new();
        self.hub.connect(conn, peer, self.now, &mut out);
        out
    }

    /// The client closed connection `conn`.
    pub fn disconnect(&mut self, conn: ConnId) -> Vec<Action> {
        let mut out = Vec::new();
        self.hub
            .disconnect(conn, CloseReason::ClientClosed, self.now, &mut out);
        self.settle(&mut out);
        out
    }

    /// Handles a message and runs every job its reply waits for, as the
    /// server does before reading the connection's next request.
    pub fn handle(&mut self, conn: ConnId, message: ClientMessage) -> Vec<Action> {
        let mut out = Vec::new();
        self.hub.handle(conn, message, self.now, &mut out);
        self.settle(&mut out);
        out
    }

    /// Runs one password job, as the pool would, and reports the outcome
    /// to the hub. What the hub does next (possibly another job) is
    /// appended to `out`.
    pub fn run_password_job(&mut self, job: PasswordJob, out: &mut Vec<Action>) {
        let outcome = fake_password_check(job.task);
        self.hub
            .password_checked(job.conn, job.ticket, outcome, self.now, out);
    }

    /// Runs the jobs in `out` that a reply waits for (password checks, DM
    /// keys) and moves room key rotations to [`Harness::finish_rotations`],
    /// so that `out` holds only frames and closes.
    pub fn settle(&mut self, out: &mut Vec<Action>) {
        let is_job = |action: &Action| matches!(action, Action::Password(_) | Action::WrapKeys(_));
        while let Some(index) = out.iter().position(is_job) {
            match out.remove(index) {
                Action::Password(job) => self.run_password_job(job, out),
                Action::WrapKeys(job) if job.requester.is_some() => {
                    self.hub.keys_wrapped(job.ticket, fake_wrap(&job), out);
                }
                Action::WrapKeys(job) => self.rotations.push(job),
                _ => unreachable!("position found a job"),
            }
        }
    }

    /// Finishes the rotations started so far, in order; the ones they start
    /// in turn wait for the next call.
    pub fn finish_rotations(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        for job in std::mem::take(&mut self.rotations) {
            self.hub.keys_wrapped(job.ticket, fake_wrap(&job), &mut out);
        }
        self.settle(&mut out);
        out
    }
}

/// Stands in for the argon2 pool: the hub only stores and hands back the
/// string a hash makes, so any string that only the same password matches
/// will do. The real hashing is the server's, and is tested there.
pub fn fake_password_check(task: PasswordTask) -> PasswordOutcome {
    let stored = |password: &[u8]| {
        let hex: String = password.iter().map(|byte| format!("{byte:02x}")).collect();
        format!("$fake${hex}")
    };
    match task {
        PasswordTask::Hash { password } => PasswordOutcome::Hashed(stored(&password).into()),
        PasswordTask::Verify { password, phc } => {
            PasswordOutcome::Verified(*phc == *stored(&password))
        }
    }
}

/// Stands in for the key-wrapping pool: instead of a real RSA wrap, each
/// recipient gets bytes that say who it is and which job made them.
pub fn fake_wrap(job: &KeyWrapJob) -> KeyWrapOutcome {
    let wrapped = job
        .recipients
        .iter()
        .map(|recipient| {
            let text = format!("key of job {} for {}", job.ticket, recipient.conn);
            (recipient.conn, Bytes::from(text))
        })
        .collect();
    KeyWrapOutcome::Wrapped(wrapped)
}
