//! The tokio shell: accepts connections and connects them to the [`Hub`].
//!
//! Everything with a rule in it lives in the hub (`parlor-core`); this crate
//! only moves bytes, and runs what the hub asks to have done off the event
//! loop: argon2id password hashing ([`password`]) and RSA key wrapping
//! ([`keywrap`]). [`config`] holds every setting, [`metrics`] renders what
//! the hub counted.
//!
//! Each connection is one task (`connection.rs`) that reads frames,
//! feeds them to the hub under a short lock, and writes what the hub queued
//! for it in batched, vectored writes. `state.rs` holds the hub together with
//! each connection's outbound queue, and applies the hub's actions.
//! [`Clock`] is the time the hub is given: real time, except in replays.
//!
//! [`Hub`]: parlor_core::Hub

#![warn(missing_docs)]

mod busy_pause;
mod clock;
pub mod config;
mod connection;
pub mod keywrap;
pub mod metrics;
mod metrics_endpoint;
mod outbox;
pub mod password;
mod state;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::keywrap::{KeyWrapPool, Rotated};
use crate::password::PasswordPool;
pub use busy_pause::BusyPause;
pub use clock::Clock;
pub use config::Config;
use state::Shared;

/// A bound, not yet running, server.
pub struct Server {
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shared: Arc<Shared>,
    rotations: mpsc::UnboundedReceiver<Rotated>,
}

impl Server {
    /// Binds the listening socket and starts the password hashing and key
    /// wrapping threads.
    pub async fn bind(config: Config) -> io::Result<Server> {
        Server::bind_with_clock(config, Clock::real()).await
    }

    /// Like [`Server::bind`], with the hub's time taken from `clock`.
    pub async fn bind_with_clock(config: Config, clock: Clock) -> io::Result<Server> {
        let params = config
            .argon2_params()
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err.to_string()))?;
        let passwords =
            PasswordPool::start(params, config.password_hash_threads, config.password_queue)
                .map_err(|err| context(err, "cannot start the password hashing threads"))?;
        let (key_wraps, rotations) =
            KeyWrapPool::start(config.key_wrap_threads, config.key_wrap_queue)
                .map_err(|err| context(err, "cannot start the key wrapping threads"))?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|err| context(err, &format!("cannot listen on {}", config.listen)))?;
        let metrics_listener =
            match config.metrics_listen {
                Some(addr) => Some(TcpListener::bind(addr).await.map_err(|err| {
                    context(err, &format!("cannot listen for metrics on {addr}"))
                })?),
                None => None,
            };
        Ok(Server {
            listener,
            metrics_listener,
            shared: Arc::new(Shared::new(config, passwords, key_wraps, clock)),
            rotations,
        })
    }

    /// The address the server listens on: with port 0 in the settings, the
    /// port the system picked.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Where the metrics endpoint listens, when it is on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref()?.local_addr().ok()
    }

    /// Serves until `shutdown` completes, then stops accepting, flushes what
    /// is queued for every client (for at most `flush_timeout_secs`), closes
    /// every connection and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let Server {
            listener,
            metrics_listener,
            shared,
            rotations,
        } = self;
        info!(addr = %listener.local_addr()?, "listening");
        let connections = TaskTracker::new();
        let timers = tokio::spawn(run_timers(Arc::clone(&shared)));
        let metrics = metrics_listener.map(|metrics_listener| {
            if let Ok(addr) = metrics_listener.local_addr() {
                info!(%addr, "serving metrics");
            }
            tokio::spawn(metrics_endpoint::serve(
                metrics_listener,
                Arc::clone(&shared),
            ))
        });
        let rotations = tokio::spawn(run_rotations(Arc::clone(&shared), rotations));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        connections.spawn(connection::serve(Arc::clone(&shared), stream, peer));
                    }
                    Err(err) => {
                        // Usually EMFILE: back off instead of spinning.
                        warn!(%err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop(listener);
        info!(connections = connections.len(), "shutting down");
        shared.close_all();
        connections.close();
        let grace = shared.config().flush_timeout() + Duration::from_secs(1);
        if tokio::time::timeout(grace, connections.wait())
            .await
            .is_err()
        {
            error!("connections still open after the flush timeout; exiting anyway");
        }
        timers.abort();
        if let Some(metrics) = metrics {
            metrics.abort();
        }
        rotations.abort();
        info!("stopped");
        Ok(())
    }
}

/// Prefixes an I/O error with what was being attempted.
fn context(err: io::Error, what: &str) -> io::Error {
    io::Error::new(err.kind(), format!("{what}: {err}"))
}

/// Hands finished room key rotations back to the hub, which sends the keys.
async fn run_rotations(shared: Arc<Shared>, mut rotations: mpsc::UnboundedReceiver<Rotated>) {
    while let Some(Rotated { ticket, outcome }) = rotations.recv().await {
        shared.keys_wrapped(ticket, outcome);
    }
}

/// Wakes the hub when its earliest timer is due.
async fn run_timers(shared: Arc<Shared>) {
    let config = shared.config();
    let shortest = [
        config.handshake_timeout(),
        config.idle_timeout(),
        config.file_decision_timeout(),
        config.file_ack_timeout(),
        // A failed rotation's retry is set when its wrap comes back, after
        // the check below: waking this often finds it in time.
        config.hub_limits().rotation_retry,
    ]
    .into_iter()
    .min()
    .expect("not empty");
    let clock = shared.clock();
    loop {
        // A connection made after this check is due no earlier than
        // `now + shortest`, so sleeping at most until then misses nothing.
        let horizon = clock.now() + shortest;
        let next = shared
            .next_timeout()
            .map_or(horizon, |next| next.min(horizon));
        tokio::time::sleep_until(clock.real_instant(next).into()).await;
        shared.handle_timeout(clock.now());
    }
}
