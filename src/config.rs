//! Every limit and timer of the server, with its default.
//!
//! Settings come from three places, later ones winning: the defaults below,
//! an optional TOML file (`--config FILE`, same key names), and command-line
//! flags. Unknown keys in the file are an error, so a typo never silently
//! leaves a limit at its default.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::protocol::MAX_CLIENT_PAYLOAD;

/// The server's settings. Field names are the TOML keys.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Largest client frame payload accepted, in bytes. The protocol's own
    /// maximum (65,793) is also the default; a smaller value refuses long
    /// messages.
    pub max_frame_bytes: usize,
    /// Connections served at once; further ones are told to try later.
    pub max_connections: usize,
    /// Bytes queued for one client before it counts as too slow and is
    /// disconnected.
    pub send_queue_bytes: usize,
    /// Seconds without any complete frame (heartbeats count) before a
    /// connection is closed.
    pub idle_timeout_secs: f64,
    /// Room and direct messages allowed per window; the next is refused.
    pub rate_limit_messages: usize,
    /// Length of the sliding rate-limit window, in seconds.
    pub rate_limit_window_secs: f64,
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
    /// Seconds a closing connection (or the whole server, at shutdown) may
    /// spend flushing what is queued for it.
    pub flush_timeout_secs: f64,
    /// Tokio worker threads; 0 means one per available core.
    pub worker_threads: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 4170)),
            max_frame_bytes: MAX_CLIENT_PAYLOAD,
            max_connections: 10_000,
            send_queue_bytes: 1 << 20,
            idle_timeout_secs: 30.0,
            rate_limit_messages: 5,
            rate_limit_window_secs: 5.0,
            argon2_memory_kib: argon2::Params::DEFAULT_M_COST,
            argon2_iterations: argon2::Params::DEFAULT_T_COST,
            argon2_parallelism: argon2::Params::DEFAULT_P_COST,
            password_hash_threads: 2,
            password_queue: 32,
            key_wrap_threads: 2,
            key_wrap_queue: 64,
            flush_timeout_secs: 3.0,
            worker_threads: 0,
        }
    }
}

/// A problem with the settings, naming the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("invalid setting `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
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
            ("rate_limit_window_secs", self.rate_limit_window_secs),
            ("flush_timeout_secs", self.flush_timeout_secs),
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
            ("send_queue_bytes", self.send_queue_bytes),
            ("rate_limit_messages", self.rate_limit_messages),
            ("password_hash_threads", self.password_hash_threads),
            ("key_wrap_threads", self.key_wrap_threads),
        ];
        for (key, value) in at_least_one {
            if value == 0 {
                return invalid(key, "must be at least 1");
            }
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
        toml::to_string(&Config::default()).expect("settings always serialize")
    }

    pub fn argon2_params(&self) -> Result<argon2::Params, argon2::Error> {
        argon2::Params::new(
            self.argon2_memory_kib,
            self.argon2_iterations,
            self.argon2_parallelism,
            None,
        )
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.idle_timeout_secs)
    }

    pub fn rate_limit_window(&self) -> Duration {
        Duration::from_secs_f64(self.rate_limit_window_secs)
    }

    pub fn flush_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.flush_timeout_secs)
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
        ] {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
        assert!(Config::default().validate().is_ok());
    }
}
