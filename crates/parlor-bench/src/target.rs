//! Options every workload shares: which server to load (loopback only), how
//! to watch it, and how connections are named and set up.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use serde::Serialize;

use super::process;

#[derive(Args, Clone, Debug, Serialize)]
pub struct TargetArgs {
    /// Server to load, as IP:PORT. Only loopback addresses (127.0.0.0/8 and
    /// ::1) are accepted: the bench is a load generator, and load goes
    /// nowhere but this machine.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:4170", value_parser = loopback_address)]
    pub server: SocketAddr,
    /// The server's process id; its CPU share and memory are then read from
    /// /proc/PID and reported.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Connection i is named PREFIX followed by i in five or more digits.
    #[arg(long, value_name = "PREFIX", default_value = "u")]
    pub nick_prefix: String,
    /// Connections being set up (connect, HELLO, NICK, JOIN) at once.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Seconds one connection may take to be set up.
    #[arg(long, value_name = "S", default_value_t = 10.0)]
    pub setup_timeout: f64,
}

impl TargetArgs {
    pub fn validate(&self) -> Result<(), String> {
        if self.nick_prefix.len() > 64 {
            return Err("--nick-prefix: at most 64 bytes".into());
        }
        if self.nick_prefix.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(
                "--nick-prefix: no spaces or control characters (the server refuses such nicks)"
                    .into(),
            );
        }
        if self.connect_concurrency == 0 {
            return Err("--connect-concurrency: at least 1".into());
        }
        seconds("--setup-timeout", self.setup_timeout)?;
        if let Some(pid) = self.server_pid {
            if !process::is_alive(pid) {
                return Err(format!("--server-pid: no running process {pid}"));
            }
        }
        Ok(())
    }

    /// The name of connection `index`.
    pub fn nick(&self, index: usize) -> String {
        format!("{}{index:05}", self.nick_prefix)
    }

    pub fn setup_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.setup_timeout)
    }
}

/// Parses `IP:PORT` and refuses anything that is not on this machine.
pub(crate) fn loopback_address(text: &str) -> Result<SocketAddr, String> {
    let address: SocketAddr = text
        .parse()
        .map_err(|_| format!("`{text}` is not an IP:PORT address"))?;
    if !address.ip().is_loopback() {
        return Err(format!(
            "{address} is not a loopback address; parlor bench only sends to 127.0.0.0/8 or [::1]"
        ));
    }
    if address.port() == 0 {
        return Err("port 0 cannot be connected to".into());
    }
    Ok(address)
}

/// Checks a duration option: a positive, finite number of seconds.
pub(crate) fn seconds(option: &str, value: f64) -> Result<Duration, String> {
    if value.is_finite() && value > 0.0 && value <= 86_400.0 {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(format!(
            "{option}: a positive number of seconds, at most a day"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_addresses_are_targets() {
        assert!(loopback_address("127.0.0.1:4170").is_ok());
        assert!(loopback_address("127.3.2.1:1").is_ok());
        assert!(loopback_address("[::1]:4170").is_ok());
        for (text, why) in [
            ("10.0.0.1:4170", "not a loopback"),
            ("0.0.0.0:4170", "not a loopback"),
            ("[::]:4170", "not a loopback"),
            ("localhost:4170", "not an IP:PORT"),
            ("127.0.0.1", "not an IP:PORT"),
            ("127.0.0.1:0", "port 0"),
        ] {
            let err = loopback_address(text).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
    }
}
