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
//! for it in batched, vectored writes. Connections come from two listeners
//! into the one hub: the plain port that the legacy client speaks to, and
//! the TLS port (`tls_listen`, certificate from [`tls`]), whose connections
//! also give the hub their channel binding. `state.rs` holds the hub together with
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
pub mod tls;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parlor_proto::tls::TlsFingerprint;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::keywrap::{KeyWrapPool, Rotated};
use crate::password::PasswordPool;
use crate::tls::Tls;
pub use busy_pause::BusyPause;
pub use clock::Clock;
pub use config::Config;
use parlor_cluster::Cluster;
use state::{ServerNode, Shared};

/// A bound, not yet running, server.
pub struct Server {
    listener: TcpListener,
    /// The TLS port and what its connections share; `None` when
    /// `tls_listen` is off.
    tls: Option<(TcpListener, Tls)>,
    metrics_listener: Option<TcpListener>,
    shared: Arc<Shared>,
    rotations: mpsc::UnboundedReceiver<Rotated>,
}

impl Server {
    /// Binds the listening sockets, loads (or makes) the TLS certificate and
    /// starts the password hashing and key wrapping threads.
    pub async fn bind(config: Config) -> io::Result<Server> {
        Server::bind_with_clock(config, Clock::real()).await
    }

    /// Like [`Server::bind`], with the hub's time taken from `clock`.
    pub async fn bind_with_clock(mut config: Config, clock: Clock) -> io::Result<Server> {
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
        let tls = match config.tls_listen {
            Some(addr) => {
                let tls = Tls::load(&config)?;
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|err| context(err, &format!("cannot listen for TLS on {addr}")))?;
                // The port the system picked, for port 0: the hub names it
                // to clients that try the secure extension on the plain port.
                config.tls_listen = Some(listener.local_addr()?);
                Some((listener, tls))
            }
            None => None,
        };
        let metrics_listener =
            match config.metrics_listen {
                Some(addr) => Some(TcpListener::bind(addr).await.map_err(|err| {
                    context(err, &format!("cannot listen for metrics on {addr}"))
                })?),
                None => None,
            };
        Ok(Server {
            listener,
            tls,
            metrics_listener,
            shared: Server::join_cluster(Shared::new(config, passwords, key_wraps, clock)).await?,
            rotations,
        })
    }

    /// In cluster mode, joins the cluster: a node that cannot reach NATS
    /// does not start.
    async fn join_cluster(shared: Shared) -> io::Result<Arc<Shared>> {
        let shared = Arc::new(shared);
        if let Some(cluster) = &shared.config().cluster {
            let node = Arc::new(ServerNode(Arc::downgrade(&shared)));
            let cluster = Cluster::join(cluster.settings(), node)
                .await
                .map_err(|err| io::Error::other(format!("cannot join the cluster: {err}")))?;
            shared.set_cluster(cluster);
        }
        Ok(shared)
    }

    /// The address the server listens on: with port 0 in the settings, the
    /// port the system picked.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Where the TLS port listens, when it is on.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref()?.0.local_addr().ok()
    }

    /// The fingerprint of the TLS certificate's key, when the TLS port is on.
    pub fn tls_fingerprint(&self) -> Option<TlsFingerprint> {
        Some(self.tls.as_ref()?.1.fingerprint)
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
            tls,
            metrics_listener,
            shared,
            rotations,
        } = self;
        info!(addr = %listener.local_addr()?, "listening");
        if let Some((tls_listener, tls)) = &tls {
            info!(addr = %tls_listener.local_addr()?, "listening for TLS");
            info!("TLS key fingerprint {}", tls.fingerprint);
        }
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
                    Err(err) => back_off(err).await,
                },
                accepted = accept_tls(&tls) => match accepted {
                    // The handshake runs in the connection's task, never here.
                    Ok((stream, peer, tls)) => {
                        let shared = Arc::clone(&shared);
                        connections.spawn(connection::serve_tls(shared, tls, stream, peer));
                    }
                    Err(err) => back_off(err).await,
                },
            }
        }
        drop(listener);
        drop(tls);
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
        // After the connections: their names are released first.
        if let Some(cluster) = shared.cluster() {
            cluster.leave(shared.config().flush_timeout()).await;
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

/// The next connection to the TLS port, with what its handshake needs;
/// never, when the port is off.
async fn accept_tls(tls: &Option<(TcpListener, Tls)>) -> io::Result<(TcpStream, SocketAddr, Tls)> {
    match tls {
        Some((listener, tls)) => {
            let (stream, peer) = listener.accept().await?;
            Ok((stream, peer, tls.clone()))
        }
        None => std::future::pending().await,
    }
}

/// After a failed accept, usually EMFILE: backs off instead of spinning.
async fn back_off(err: io::Error) {
    warn!(%err, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use parlor_core::ConnId;
    use parlor_proto::secure::{CHANNEL_BINDING_LABEL, CHANNEL_BINDING_LEN};
    use parlor_proto::ClientMessage;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    use tokio::sync::oneshot;

    use super::*;

    /// Says HELLO and reads the reply's header: once it is back, the
    /// server has read the connection's first frame.
    async fn greet(stream: &mut (impl AsyncRead + AsyncWrite + Unpin)) {
        let hello = ClientMessage::Hello {
            greeting: Bytes::from_static(b"hi"),
        };
        stream
            .write_all(&hello.to_frame().to_bytes())
            .await
            .unwrap();
        let mut header = [0u8; 8];
        stream.read_exact(&mut header).await.unwrap();
        assert_eq!(&header[4..], &[0x04, 0x17, 0x9a, 0x00]);
    }

    #[tokio::test]
    async fn the_hub_holds_the_channel_binding_that_the_tls_client_derives() {
        let state = std::env::temp_dir().join(format!("parlor-binding-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state);
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let config = Config {
            listen: loopback,
            tls_listen: Some(loopback),
            state_dir: Some(state.clone()),
            password_hash_threads: 1,
            key_wrap_threads: 1,
            ..Config::default()
        };
        let server = Server::bind(config).await.unwrap();
        let (plain_addr, tls_addr) = (server.local_addr().unwrap(), server.tls_addr().unwrap());
        let shared = Arc::clone(&server.shared);
        let (stop, stopped) = oneshot::channel::<()>();
        let running = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));

        let mut roots = rustls::RootCertStore::empty();
        let cert = CertificateDer::from_pem_file(state.join(tls::CERT_FILE)).unwrap();
        roots.add(cert).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = TcpStream::connect(tls_addr).await.unwrap();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect(name, tcp)
            .await
            .unwrap();
        let derived = tls
            .get_ref()
            .1
            .export_keying_material([0; CHANNEL_BINDING_LEN], CHANNEL_BINDING_LABEL, None)
            .unwrap();
        greet(&mut tls).await;
        assert_ne!(derived, [0; CHANNEL_BINDING_LEN]);
        assert_eq!(shared.channel_binding(ConnId(1)), Some(derived));

        let mut plain = TcpStream::connect(plain_addr).await.unwrap();
        greet(&mut plain).await;
        assert_eq!(shared.channel_binding(ConnId(2)), None, "plain: no binding");

        stop.send(()).unwrap();
        running.await.unwrap().unwrap();
        std::fs::remove_dir_all(&state).unwrap();
    }
}
