//! The tokio shell: accepts connections and connects them to the [`Hub`].
//!
//! Everything with a rule in it lives in the hub; this layer only moves
//! bytes. Each connection is one task (`connection.rs`) that reads frames,
//! feeds them to the hub under a short lock, and writes what the hub queued
//! for it in batched, vectored writes. `state.rs` holds the hub together with
//! each connection's outbound queue, and applies the hub's actions.
//! [`Clock`] is the time the hub is given: real time, except in replays.
//!
//! [`Hub`]: crate::hub::Hub

mod clock;
mod connection;
mod state;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::password::PasswordPool;
pub use clock::Clock;
use state::Shared;

/// A bound, not yet running, server.
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl Server {
    /// Binds the listening socket and starts the password hashing threads.
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
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|err| context(err, &format!("cannot listen on {}", config.listen)))?;
        Ok(Server {
            listener,
            shared: Arc::new(Shared::new(config, passwords, clock)),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then stops accepting, flushes what
    /// is queued for every client (for at most `flush_timeout_secs`), closes
    /// every connection and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let Server { listener, shared } = self;
        info!(addr = %listener.local_addr()?, "listening");
        let connections = TaskTracker::new();
        let timers = tokio::spawn(run_timers(Arc::clone(&shared)));
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
        info!("stopped");
        Ok(())
    }
}

/// Prefixes an I/O error with what was being attempted.
fn context(err: io::Error, what: &str) -> io::Error {
    io::Error::new(err.kind(), format!("{what}: {err}"))
}

/// Wakes the hub when its earliest timer is due.
async fn run_timers(shared: Arc<Shared>) {
    let idle_timeout = shared.config().idle_timeout();
    let clock = shared.clock();
    loop {
        // A connection made after this check is due no earlier than
        // `now + idle_timeout`, so sleeping until then misses nothing.
        let next = shared
            .next_timeout()
            .unwrap_or_else(|| clock.now() + idle_timeout);
        tokio::time::sleep_until(clock.real_instant(next).into()).await;
        shared.handle_timeout(clock.now());
    }
}
