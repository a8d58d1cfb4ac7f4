//! A driver for the hub without a server: a fake clock and password jobs run
//! on the spot. The hub's unit tests and the fuzzing bodies share it.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::{Action, ConnId, Hub, PasswordJob};
use crate::config::Config;
use crate::password::Hasher;
use crate::protocol::ClientMessage;

/// A hub, the time it is told, and a synchronous stand-in for the hashing
/// pool.
pub struct Harness {
    pub hub: Hub,
    /// The fake clock: moved only by [`Harness::advance`] (or by hand).
    pub now: Instant,
    hasher: Hasher,
}

impl Harness {
    /// A hub with `config`, except that passwords are hashed with the
    /// cheapest argon2 parameters: the hub's logic does not depend on the
    /// cost, and tests and fuzzers hash thousands of times.
    pub fn new(config: &Config) -> Harness {
        let cheap = argon2::Params::new(8, 1, 1, None).expect("valid argon2 parameters");
        Harness {
            hub: Hub::new(config),
            now: Instant::now(),
            hasher: Hasher::new(cheap),
        }
    }

    /// Moves the clock forward and lets the hub's timers fire.
    pub fn advance(&mut self, by: Duration) -> Vec<Action> {
        self.now += by;
        let mut out = Vec::new();
        self.hub.handle_timeout(self.now, &mut out);
        out
    }

    /// Opens connection `conn`, from a loopback address derived from its id.
    pub fn connect(&mut self, conn: ConnId) -> Vec<Action> {
        let peer = SocketAddr::from((Ipv4Addr::LOCALHOST, conn.0 as u16));
        let mut out = Vec::new();
        self.hub.connect(conn, peer, self.now, &mut out);
        out
    }

    /// Handles a message and runs every password job it leads to, as the
    /// server does before reading the connection's next request.
    pub fn handle(&mut self, conn: ConnId, message: ClientMessage) -> Vec<Action> {
        let mut out = Vec::new();
        self.hub.handle(conn, message, self.now, &mut out);
        while let Some(index) = out.iter().position(|a| matches!(a, Action::Password(_))) {
            let Action::Password(job) = out.remove(index) else {
                unreachable!("position found a password job")
            };
            self.run_password_job(job, &mut out);
        }
        out
    }

    /// Runs one password job, as the pool would, and reports the outcome
    /// to the hub. What the hub does next (possibly another job) is
    /// appended to `out`.
    pub fn run_password_job(&mut self, job: PasswordJob, out: &mut Vec<Action>) {
        let outcome = self.hasher.run(job.task);
        self.hub
            .password_checked(job.conn, job.ticket, outcome, out);
    }
}
