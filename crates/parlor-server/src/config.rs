//! Every limit and timer of the server, with its default.
//!
//! Settings come from three places, later ones winning: the defaults below,
//! an optional TOML file (`--config FILE`, same key names), and command-line
//! flags. Unknown keys in the file are an error, so a typo never silently
//! leaves a limit at its default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use parlor_core::transfer::TransferLimits;
use parlor_core::{Limits, Rate};
use parlor_proto::transfer::MAX_WINDOW;
use parlor_proto::MAX_CLIENT_PAYLOAD;

/// The largest chunk size a server may be configured to accept: a chunk is
/// held in memory a window at a time, so it must stay modest.
const MAX_CHUNK_BYTES: u32 = 16 << 20;
/// The longest pause a busy worker may be told to take before it waits.
const MAX_BUSY_PAUSE_MICROS: u64 = 1_000;

/// The server's settings. Field names are the TOML keys.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on: the plain TCP port, which the legacy client
    /// speaks to.
    pub listen: SocketAddr,
    /// Address of the TLS listener, which feeds the same hub: legacy frames
    /// and the secure extension over TLS. `"off"` in the file (and on the
    /// command line) for none.
    #[serde(with = "listen_or_off")]
    pub tls_listen: Option<SocketAddr>,
    /// PEM file of the TLS certificate chain, the server's own certificate
    /// first; set with `tls_key`, or neither.
    pub tls_cert: Option<PathBuf>,
    /// PEM file of the TLS certificate's private key (PKCS#8, PKCS#1 or
    /// SEC1). Without `tls_cert` and `tls_key`, the server makes a
    /// self-signed certificate in `state_dir` on first start and keeps
    /// using it.
    pub tls_key: Option<PathBuf>,
    /// Where the server keeps what it makes itself: the self-signed TLS
    /// certificate (`tls-cert.pem`) and its key (`tls-key.pem`, mode 0600).
    /// Unset: `$XDG_STATE_HOME/parlor`, else `$HOME/.local/state/parlor`.
    pub state_dir: Option<PathBuf>,
    /// Lets plain TCP connections register keys and speak the secure
    /// extension. Their key proofs bind to no TLS session and can be
    /// replayed by whoever relays the connection: for tests and benchmarks
    /// only.
    pub allow_secure_on_plain: bool,
    /// Largest client frame payload accepted, in bytes. The protocol's own
    /// maximum (65,793) is also the default; a smaller value refuses long
    /// messages.
    pub max_frame_bytes: usize,
    /// Connections served at once; further ones are told to try later.
    pub max_connections: usize,
    /// Connections served at once from one IP address.
    pub max_connections_per_ip: usize,
    /// Bytes queued for one client before it counts as too slow and is
    /// disconnected.
    pub send_queue_bytes: usize,
    /// Seconds without any complete frame (heartbeats count) before a
    /// connection is closed.
    pub idle_timeout_secs: f64,
    /// Seconds a new connection has to complete its first frame. Shorter than
    /// the idle timeout, so connections opened and left silent, or trickling
    /// a frame byte by byte, are shed quickly.
    pub handshake_timeout_secs: f64,
    /// Room and direct messages allowed per window; the next is refused.
    pub rate_limit_messages: usize,
    /// Length of the sliding rate-limit window, in seconds.
    pub rate_limit_window_secs: f64,
    /// Nick changes allowed per window.
    pub nick_rate_limit: usize,
    /// Length of the sliding nick-change window, in seconds.
    pub nick_rate_window_secs: f64,
    /// Joins that need a password hash (creating or entering a protected
    /// room) allowed per window; each costs argon2's memory and time.
    pub password_join_rate_limit: usize,
    /// Length of the sliding password-join window, in seconds.
    pub password_join_rate_window_secs: f64,
    /// Rooms that may exist at once.
    pub max_rooms: usize,
    /// Members one room may have.
    pub max_room_members: usize,
    /// Argon2id memory cost for room passwords, in KiB.
    pub argon2_memory_kib: u32,
    /// Argon2id iterations.
    pub argon2_iterations: u32,
    /// Argon2id lanes.
    pub argon2_parallelism: u32,
    /// Password hashes computed at once (each thread keeps one memory block).
    pub password_hash_threads: usize,
    /// Password checks waiting for a hashing thread before joins are told to
    /// try later; 0 means a join is only served when a thread is free.
    pub password_queue: usize,
    /// Threads that make room and DM keys and wrap them for their recipients
    /// (RSA-OAEP, 60–150 µs per recipient).
    pub key_wrap_threads: usize,
    /// DM key requests waiting for a key-wrapping thread before they are told
    /// to try later. Room key rotations are never refused.
    pub key_wrap_queue: usize,
    /// Seconds a secure room keeps one key when nobody joins or leaves;
    /// then the key is replaced anyway.
    pub room_key_lifetime_secs: f64,
    /// DM keys that may be issued naming one user as the target per window,
    /// whoever asks: each costs the target a private-key operation.
    pub dm_keys_per_target: usize,
    /// Length of the sliding window of `dm_keys_per_target`, in seconds.
    pub dm_keys_per_target_window_secs: f64,
    /// Seconds a closing connection (or the whole server, at shutdown) may
    /// spend flushing what is queued for it.
    pub flush_timeout_secs: f64,
    /// Largest file that may be offered, in bytes.
    pub max_file_bytes: u64,
    /// Largest chunk of a file, in plaintext bytes (a sealed chunk carries up
    /// to 64 more). The server holds at most a window of chunks per transfer.
    pub max_chunk_bytes: u32,
    /// Most chunks a file's sender may have in flight (1 to 64); a sender
    /// asking for more gets this many.
    pub max_transfer_window: u8,
    /// File transfers one user may be sending at once.
    pub max_transfers_per_user: usize,
    /// File transfers in progress on the server at once.
    pub max_transfers: usize,
    /// Seconds recipients have to accept or decline a file; also how long a
    /// recipient that disconnected mid-transfer may take to resume, and how
    /// long a sender may owe a chunk.
    pub file_decision_timeout_secs: f64,
    /// Seconds a recipient may go without acknowledging a chunk it was sent
    /// before it is taken out of the transfer.
    pub file_ack_timeout_secs: f64,
    /// Tokio worker threads; 0 means one per available core. With one, the
    /// server runs the current-thread scheduler.
    pub worker_threads: usize,
    /// Microseconds a worker that runs out of work after a busy round waits
    /// before sleeping in `epoll`, so that its next round reads and writes
    /// more at once; 0 turns the pause off. At most 1,000.
    pub busy_pause_micros: u64,
    /// Socket reads that make a round busy enough to pause after.
    pub busy_pause_min_reads: u32,
    /// Address of the Prometheus metrics endpoint; off when absent.
    pub metrics_listen: Option<SocketAddr>,
    /// Cluster mode: this server is one node of several, on NATS. Absent
    /// (the default), the server is whole by itself and needs nothing else.
    pub cluster: Option<ClusterConfig>,
}

/// The `[cluster]` table: how this node joins its cluster.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS servers, `nats://HOST:PORT` (or `tls://`); at least one.
    pub servers: Vec<String>,
    /// This node's id: letters, digits, `-` and `_`, up to 64; unique among
    /// the nodes and the same across restarts.
    pub node_id: String,
    /// Seconds within which a node that dies has its names free on the
    /// others; a node that cannot reach NATS closes its connections before.
    #[serde(default = "ClusterConfig::default_lease_secs")]
    pub lease_secs: f64,
    /// Copies JetStream keeps of parlor's buckets: 1 for one NATS server,
    /// 3 for a cluster of three.
    #[serde(default = "ClusterConfig::default_replicas")]
    pub replicas: usize,
    /// A NATS credentials file (`.creds`).
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// PEM file of CA certificates for `tls://` NATS servers.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
}

/// The longest node id: it is a key in the nodes bucket and goes in logs.
const MAX_NODE_ID: usize = 64;

impl ClusterConfig {
    fn default_lease_secs() -> f64 {
        8.0
    }

    fn default_replicas() -> usize {
        1
    }

    /// A cluster of `servers`, this node being `node_id`, with the default
    /// lease and one copy of each bucket.
    pub fn new(servers: Vec<String>, node_id: String) -> ClusterConfig {
        ClusterConfig {
            servers,
            node_id,
            lease_secs: ClusterConfig::default_lease_secs(),
            replicas: ClusterConfig::default_replicas(),
            credentials_file: None,
            tls_ca_file: None,
        }
    }

    /// What the cluster crate takes.
    pub fn settings(&self) -> parlor_cluster::Settings {
        parlor_cluster::Settings {
            servers: self.servers.clone(),
            node_id: self.node_id.clone(),
            lease: Duration::from_secs_f64(self.lease_secs),
            replicas: self.replicas,
            credentials_file: self.credentials_file.clone(),
            tls_ca_file: self.tls_ca_file.clone(),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| {
            Err(ConfigError::Invalid {
                key,
                reason: reason.to_owned(),
            })
        };
        if self.servers.is_empty() || self.servers.iter().any(|server| server.trim().is_empty()) {
            return invalid(
                "cluster.servers",
                "name at least one NATS server, nats://HOST:PORT",
            );
        }
        let id_ok = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if self.node_id.is_empty()
            || self.node_id.len() > MAX_NODE_ID
            || !self.node_id.chars().all(id_ok)
        {
            return invalid(
                "cluster.node_id",
                &format!("1 to {MAX_NODE_ID} letters, digits, `-` or `_`"),
            );
        }
        // Below a second, one slow NATS round trip would fence the node.
        if !(self.lease_secs.is_finite() && (1.0..=3600.0).contains(&self.lease_secs)) {
            return invalid("cluster.lease_secs", "must be 1 to 3600 seconds");
        }
        if !(1..=5).contains(&self.replicas) {
            return invalid("cluster.replicas", "must be 1 to 5 (JetStream's limit)");
        }
        Ok(())
    }
}

impl Default for Config {
    /// The hub's limits default to [`Limits::default`], where the rules
    /// they bound are; the rest are the server's own.
    fn default() -> Config {
        let hub = Limits::default();
        let secs = |duration: Duration| duration.as_secs_f64();
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 4170)),
            tls_listen: Some(SocketAddr::from(([0, 0, 0, 0], 4171))),
            tls_cert: None,
            tls_key: None,
            state_dir: None,
            allow_secure_on_plain: hub.allow_secure_on_plain,
            max_frame_bytes: MAX_CLIENT_PAYLOAD,
            max_connections: hub.max_connections,
            max_connections_per_ip: hub.max_connections_per_ip,
            send_queue_bytes: 1 << 20,
            idle_timeout_secs: secs(hub.idle_timeout),
            handshake_timeout_secs: secs(hub.handshake_timeout),
            rate_limit_messages: hub.message_rate.limit,
            rate_limit_window_secs: secs(hub.message_rate.window),
            nick_rate_limit: hub.nick_rate.limit,
            nick_rate_window_secs: secs(hub.nick_rate.window),
            password_join_rate_limit: hub.password_join_rate.limit,
            password_join_rate_window_secs: secs(hub.password_join_rate.window),
            max_rooms: hub.max_rooms,
            max_room_members: hub.max_room_members,
            argon2_memory_kib: argon2::Params::DEFAULT_M_COST,
            argon2_iterations: argon2::Params::DEFAULT_T_COST,
            argon2_parallelism: argon2::Params::DEFAULT_P_COST,
            password_hash_threads: 2,
            password_queue: 32,
            key_wrap_threads: 2,
            key_wrap_queue: 64,
            room_key_lifetime_secs: secs(hub.room_key_lifetime),
            dm_keys_per_target: hub.dm_keys_per_target.limit,
            dm_keys_per_target_window_secs: secs(hub.dm_keys_per_target.window),
            flush_timeout_secs: 3.0,
            max_file_bytes: hub.transfers.max_file_bytes,
            max_chunk_bytes: hub.transfers.max_chunk_bytes,
            max_transfer_window: hub.transfers.max_window,
            max_transfers_per_user: hub.transfers.max_per_user,
            max_transfers: hub.transfers.max_total,
            file_decision_timeout_secs: secs(hub.transfers.decision_timeout),
            file_ack_timeout_secs: secs(hub.transfers.ack_timeout),
            worker_threads: 0,
            busy_pause_micros: 50,
            busy_pause_min_reads: 8,
            metrics_listen: None,
            cluster: None,
        }
    }
}

/// A problem with the settings, naming the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The `--config` file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file, as given.
        path: String,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The file is not TOML, has a value of the wrong type, or names a key
    /// that is no setting.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file, as given.
        path: String,
        /// What toml said, with the line; boxed, as it is large.
        source: Box<toml::de::Error>,
    },
    /// A setting has a value the server cannot run with.
    #[error("invalid setting `{key}`: {reason}")]
    Invalid {
        /// The setting's name, as in the file and on the command line.
        key: &'static str,
        /// What values it takes.
        reason: String,
    },
}

impl Config {
    /// Reads a TOML file; keys it does not mention keep their defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: shown,
            source: Box::new(source),
        })?;
        Ok(config)
    }

    /// Checks that every setting makes sense, naming the first that does not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| {
            Err(ConfigError::Invalid {
                key,
                reason: reason.to_owned(),
            })
        };
        let positive_secs = [
            ("idle_timeout_secs", self.idle_timeout_secs),
            ("handshake_timeout_secs", self.handshake_timeout_secs),
            ("nick_rate_window_secs", self.nick_rate_window_secs),
            (
                "password_join_rate_window_secs",
                self.password_join_rate_window_secs,
            ),
            ("rate_limit_window_secs", self.rate_limit_window_secs),
            ("flush_timeout_secs", self.flush_timeout_secs),
            (
                "file_decision_timeout_secs",
                self.file_decision_timeout_secs,
            ),
            ("file_ack_timeout_secs", self.file_ack_timeout_secs),
            ("room_key_lifetime_secs", self.room_key_lifetime_secs),
            (
                "dm_keys_per_target_window_secs",
                self.dm_keys_per_target_window_secs,
            ),
        ];
        for (key, secs) in positive_secs {
            if !(secs.is_finite() && secs > 0.0 && secs < 1e9) {
                return invalid(key, "must be a positive number of seconds");
            }
        }
        if self.max_frame_bytes > MAX_CLIENT_PAYLOAD {
            return invalid(
                "max_frame_bytes",
                &format!("at most {MAX_CLIENT_PAYLOAD}, the protocol's largest frame"),
            );
        }
        let at_least_one = [
            ("max_frame_bytes", self.max_frame_bytes),
            ("max_connections", self.max_connections),
            ("max_connections_per_ip", self.max_connections_per_ip),
            ("nick_rate_limit", self.nick_rate_limit),
            ("password_join_rate_limit", self.password_join_rate_limit),
            ("max_rooms", self.max_rooms),
            ("max_room_members", self.max_room_members),
            ("send_queue_bytes", self.send_queue_bytes),
            ("rate_limit_messages", self.rate_limit_messages),
            ("password_hash_threads", self.password_hash_threads),
            ("key_wrap_threads", self.key_wrap_threads),
            ("dm_keys_per_target", self.dm_keys_per_target),
            ("max_chunk_bytes", self.max_chunk_bytes as usize),
            ("max_transfers_per_user", self.max_transfers_per_user),
            ("max_transfers", self.max_transfers),
            ("busy_pause_min_reads", self.busy_pause_min_reads as usize),
        ];
        for (key, value) in at_least_one {
            if value == 0 {
                return invalid(key, "must be at least 1");
            }
        }
        if !(1..=MAX_WINDOW).contains(&self.max_transfer_window) {
            return invalid(
                "max_transfer_window",
                &format!("must be 1 to {MAX_WINDOW} chunks"),
            );
        }
        if self.busy_pause_micros > MAX_BUSY_PAUSE_MICROS {
            return invalid(
                "busy_pause_micros",
                &format!("at most {MAX_BUSY_PAUSE_MICROS}: a longer pause only adds latency"),
            );
        }
        if self.max_chunk_bytes > MAX_CHUNK_BYTES {
            return invalid(
                "max_chunk_bytes",
                &format!("at most {MAX_CHUNK_BYTES} (16 MiB)"),
            );
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            let key = if self.tls_cert.is_some() {
                "tls_key"
            } else {
                "tls_cert"
            };
            return invalid(
                key,
                "`tls_cert` and `tls_key` go together: set both, or neither for a \
                 self-signed certificate kept in `state_dir`",
            );
        }
        if self.tls_listen == Some(self.listen) && self.listen.port() != 0 {
            return invalid("tls_listen", "must not be the address of `listen`");
        }
        if let Some(cluster) = &self.cluster {
            cluster.validate()?;
        }
        if let Err(err) = self.argon2_params() {
            use argon2::Error;
            let key = match err {
                Error::TimeTooSmall => "argon2_iterations",
                Error::ThreadsTooFew | Error::ThreadsTooMany => "argon2_parallelism",
                _ => "argon2_memory_kib",
            };
            return invalid(key, &err.to_string());
        }
        Ok(())
    }

    /// The default settings as a TOML file, for `--help`.
    pub fn defaults_toml() -> String {
        let mut shown = toml::to_string(&Config::default()).expect("settings always serialize");
        shown.push_str("# metrics_listen = \"127.0.0.1:9464\"  (unset by default: no endpoint)\n");
        shown.push_str(
            "# tls_cert = \"/etc/parlor/cert.pem\"  (unset by default: a self-signed certificate)\n\
             # tls_key = \"/etc/parlor/key.pem\"\n\
             # state_dir = \"/var/lib/parlor\"  (unset by default: $XDG_STATE_HOME/parlor, \
             else $HOME/.local/state/parlor)\n",
        );
        shown.push_str(
            "# cluster.servers = [\"nats://127.0.0.1:4222\"]  (unset by default: one node, no NATS)\n\
             # cluster.node_id = \"node-a\"\n\
             # cluster.lease_secs = 8\n\
             # cluster.replicas = 1\n\
             # cluster.credentials_file = \"/etc/parlor/nats.creds\"\n\
             # cluster.tls_ca_file = \"/etc/parlor/nats-ca.pem\"\n",
        );
        shown
    }

    /// The directory of [`Config::state_dir`]: as set, else
    /// `$XDG_STATE_HOME/parlor`, else `$HOME/.local/state/parlor` (the XDG
    /// base directory rules: a relative `XDG_STATE_HOME` is ignored).
    /// `None` when it is unset and neither variable helps.
    pub fn state_dir(&self) -> Option<PathBuf> {
        if let Some(dir) = &self.state_dir {
            return Some(dir.clone());
        }
        let absolute = |name| {
            std::env::var_os(name)
                .map(PathBuf::from)
                .filter(|dir| dir.is_absolute())
        };
        absolute("XDG_STATE_HOME")
            .or_else(|| Some(absolute("HOME")?.join(".local/state")))
            .map(|dir| dir.join("parlor"))
    }

    /// The argon2id parameters of the three `argon2_*` settings; an error
    /// names what argon2 refuses (say, memory below 8 KiB per lane).
    pub fn argon2_params(&self) -> Result<argon2::Params, argon2::Error> {
        argon2::Params::new(
            self.argon2_memory_kib,
            self.argon2_iterations,
            self.argon2_parallelism,
            None,
        )
    }

    /// What the hub enforces, from these settings.
    pub fn hub_limits(&self) -> Limits {
        let rate = |limit, secs| Rate {
            limit,
            window: Duration::from_secs_f64(secs),
        };
        Limits {
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            handshake_timeout: self.handshake_timeout(),
            idle_timeout: self.idle_timeout(),
            message_rate: rate(self.rate_limit_messages, self.rate_limit_window_secs),
            nick_rate: rate(self.nick_rate_limit, self.nick_rate_window_secs),
            password_join_rate: rate(
                self.password_join_rate_limit,
                self.password_join_rate_window_secs,
            ),
            max_rooms: self.max_rooms,
            max_room_members: self.max_room_members,
            transfers: TransferLimits {
                max_file_bytes: self.max_file_bytes,
                max_chunk_bytes: self.max_chunk_bytes,
                max_window: self.max_transfer_window,
                max_per_user: self.max_transfers_per_user,
                max_total: self.max_transfers,
                decision_timeout: self.file_decision_timeout(),
                ack_timeout: self.file_ack_timeout(),
            },
            allow_secure_on_plain: self.allow_secure_on_plain,
            tls_port: self.tls_listen.map(|addr| addr.port()),
            room_key_lifetime: Duration::from_secs_f64(self.room_key_lifetime_secs),
            // Not a setting: a retry soon after a failure, never a storm.
            rotation_retry: Limits::default().rotation_retry,
            dm_keys_per_target: rate(self.dm_keys_per_target, self.dm_keys_per_target_window_secs),
        }
    }

    /// [`Config::idle_timeout_secs`] as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.idle_timeout_secs)
    }

    /// [`Config::handshake_timeout_secs`] as a duration.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.handshake_timeout_secs)
    }

    /// [`Config::flush_timeout_secs`] as a duration.
    pub fn flush_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.flush_timeout_secs)
    }

    /// [`Config::file_decision_timeout_secs`] as a duration.
    pub fn file_decision_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.file_decision_timeout_secs)
    }

    /// [`Config::file_ack_timeout_secs`] as a duration.
    pub fn file_ack_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.file_ack_timeout_secs)
    }
}

/// Reads an address, or `off` for none: the form of `tls_listen`, in the
/// file and on the command line.
pub fn parse_listen_or_off(text: &str) -> Result<Option<SocketAddr>, String> {
    if text == "off" {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| format!("`{text}` is neither an address (IP:PORT) nor \"off\""))
}

/// `tls_listen` in TOML: an address as a string, or `"off"`.
mod listen_or_off {
    use std::net::SocketAddr;

    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        listen: &Option<SocketAddr>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match listen {
            Some(addr) => serializer.collect_str(addr),
            None => serializer.serialize_str("off"),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<SocketAddr>, D::Error> {
        let text = String::deserialize(deserializer)?;
        super::parse_listen_or_off(&text).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_keys_override_defaults_and_typos_are_refused() {
        let config: Config = toml::from_str("idle_timeout_secs = 10\nmax_connections = 5").unwrap();
        assert_eq!(config.idle_timeout(), Duration::from_secs(10));
        assert_eq!(config.max_connections, 5);
        assert_eq!(config.send_queue_bytes, 1 << 20);

        let err = toml::from_str::<Config>("idle_timout_secs = 10").unwrap_err();
        assert!(err.to_string().contains("idle_timout_secs"), "{err}");
    }

    #[test]
    fn the_defaults_shown_in_help_read_back_as_the_defaults() {
        let shown = Config::defaults_toml();
        assert_eq!(toml::from_str::<Config>(&shown).unwrap(), Config::default());
    }

    #[test]
    fn tls_listen_is_an_address_or_off_and_the_tls_port_reaches_the_hub() {
        let config: Config = toml::from_str("tls_listen = \"off\"").unwrap();
        assert_eq!(config.tls_listen, None);
        assert_eq!(config.hub_limits().tls_port, None);
        let config: Config = toml::from_str("tls_listen = \"127.0.0.1:5000\"").unwrap();
        assert_eq!(config.hub_limits().tls_port, Some(5000));
        assert!(!config.hub_limits().allow_secure_on_plain);
        let err = toml::from_str::<Config>("tls_listen = \"on\"").unwrap_err();
        assert!(err.to_string().contains("neither an address"), "{err}");
        let shown = toml::to_string(&Config {
            tls_listen: None,
            ..Config::default()
        })
        .unwrap();
        assert!(shown.contains("tls_listen = \"off\""), "{shown}");
    }

    #[test]
    fn the_state_dir_is_the_setting_when_set() {
        let config = Config {
            state_dir: Some(PathBuf::from("/srv/parlor")),
            ..Config::default()
        };
        assert_eq!(config.state_dir(), Some(PathBuf::from("/srv/parlor")));
    }

    #[test]
    fn validation_names_the_bad_setting() {
        let config = Config {
            max_frame_bytes: 70_000,
            ..Config::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("max_frame_bytes"), "{err}");
        for (config, key) in [
            (
                Config {
                    argon2_iterations: 0,
                    ..Config::default()
                },
                "argon2_iterations",
            ),
            (
                Config {
                    argon2_parallelism: 0,
                    ..Config::default()
                },
                "argon2_parallelism",
            ),
            (
                Config {
                    argon2_memory_kib: 1,
                    ..Config::default()
                },
                "argon2_memory_kib",
            ),
            (
                Config {
                    key_wrap_threads: 0,
                    ..Config::default()
                },
                "key_wrap_threads",
            ),
            (
                Config {
                    busy_pause_micros: 5_000,
                    ..Config::default()
                },
                "busy_pause_micros",
            ),
            (
                Config {
                    busy_pause_min_reads: 0,
                    ..Config::default()
                },
                "busy_pause_min_reads",
            ),
            (
                Config {
                    tls_cert: Some(PathBuf::from("cert.pem")),
                    ..Config::default()
                },
                "tls_key",
            ),
            (
                Config {
                    tls_listen: Some(Config::default().listen),
                    ..Config::default()
                },
                "tls_listen",
            ),
        ] {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
        assert!(Config::default().validate().is_ok());
    }
}
