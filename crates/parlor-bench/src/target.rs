//! Options every workload shares: which server to load (loopback only), how
//! to watch it, and how connections are named and set up.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use serde::Serialize;

use super::process;
use parlor_proto::tls::TlsFingerprint;

/// The options every workload shares: which server, how to watch it, and
/// how its connections are named and set up.
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
    /// Connect over TLS (to parlor's TLS port, 4171 by default) and accept
    /// only the server key with this fingerprint, the `SHA256:…` that
    /// `parlor serve` logs at every start.
    #[arg(long, value_name = "SHA256:HEX")]
    #[serde(serialize_with = "display")]
    pub tls_pin: Option<TlsFingerprint>,
}

/// Writes an option as it is shown, the fingerprint as `SHA256:…`.
fn display<S: serde::Serializer, T: std::fmt::Display>(
    value: &Option<T>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => serializer.collect_str(value),
        None => serializer.serialize_none(),
    }
}

impl TargetArgs {
    /// Refuses names the server would refuse and a `--server-pid` that is
    /// not running, before anything connects.
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

    /// How long one connection may take to be set up.
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

/// Parses a size option: `1048576`, `1MiB`, `256KiB`, `1GiB`, `10MB`,
/// `1.5GiB`. Binary and decimal units both, since people say both.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit_bytes: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "unknown unit `{other}`: use B, KiB, MiB, GiB, TiB, kB, MB, GB or TB"
            ))
        }
    };
    let bad = || format!("`{text}` is not a size (e.g. 1048576, 256KiB, 1GiB, 10MB)");
    if let Ok(whole) = number.parse::<u64>() {
        return whole.checked_mul(unit_bytes).ok_or_else(bad);
    }
    let value: f64 = number.parse().map_err(|_| bad())?;
    let bytes = (value * unit_bytes as f64).round();
    if !(bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64) {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// A size for people, the way [`parse_size`] reads it back: whole binary
/// units when it is one, else bytes.
pub(crate) fn size_text(bytes: u64) -> String {
    for (unit, name) in [(1u64 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")] {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{} {name}", bytes / unit);
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_and_decimal_units() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("256KiB"), Ok(256 << 10));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("10 MiB"), Ok(10 << 20));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert!(parse_size("1G").unwrap_err().contains("unknown unit `G`"));
        assert!(parse_size("GiB").is_err());
        assert!(parse_size("99999999999TiB").is_err());
        assert_eq!(size_text(1 << 30), "1 GiB");
        assert_eq!(size_text(256 << 10), "256 KiB");
        assert_eq!(size_text(1000), "1000 B");
    }

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
