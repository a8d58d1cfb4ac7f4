//! Options every workload shares: which server to load (loopback only), how
//! to watch it, and how connections are named and set up.
//!
//! A cluster of parlor nodes is loaded as one server: `--server` takes the
//! nodes' addresses, comma-separated, and connection i goes to the
//! (i mod n)-th of them ([`TargetArgs::server_for`]), whatever the
//! workload; `--server-pid` takes their process ids the same way.

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
    /// Server to load, as IP:PORT; the nodes of a cluster as a
    /// comma-separated list (IP:PORT,IP:PORT,…), connection i going to the
    /// (i mod n)-th. Only loopback addresses (127.0.0.0/8 and ::1) are
    /// accepted: the bench is a load generator, and load goes nowhere but
    /// this machine.
    #[arg(
        long,
        value_name = "ADDR[,ADDR…]",
        default_value = "127.0.0.1:4170",
        value_delimiter = ',',
        value_parser = loopback_address
    )]
    #[serde(serialize_with = "comma_list")]
    pub server: Vec<SocketAddr>,
    /// The server's process id, or the cluster nodes' ids comma-separated;
    /// their CPU share and memory are then read from /proc/PID and
    /// reported: with several, CPU and memory are the sums over them.
    #[arg(long, value_name = "PID[,PID…]", value_delimiter = ',')]
    #[serde(serialize_with = "one_or_list")]
    pub server_pid: Vec<u32>,
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

/// Writes the addresses as they are given, comma-separated: one address is
/// the string it always was.
fn comma_list<S: serde::Serializer>(
    servers: &[SocketAddr],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&addresses_text(servers))
}

/// Writes no value as `null`, one as itself, several as a list: one
/// `--server-pid` is the number it always was.
pub(crate) fn one_or_list<S: serde::Serializer, T: Serialize>(
    values: &[T],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match values {
        [] => serializer.serialize_none(),
        [one] => one.serialize(serializer),
        several => several.serialize(serializer),
    }
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
        if self.server.is_empty() {
            return Err("--server: at least one address".into());
        }
        for &pid in &self.server_pid {
            if !process::is_alive(pid) {
                return Err(format!("--server-pid: no running process {pid}"));
            }
        }
        Ok(())
    }

    /// The server connection `index` goes to: the (index mod n)-th of the
    /// n `--server` addresses, so that the connections of every workload
    /// are spread evenly over the nodes of a cluster, and a single address
    /// takes them all.
    pub fn server_for(&self, index: usize) -> SocketAddr {
        spread(&self.server, index)
    }

    /// The `--server` addresses as given, comma-separated: the report's
    /// `server`, which for one address is that address.
    pub fn servers_text(&self) -> String {
        addresses_text(&self.server)
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

/// The address connection `index` goes to: `servers[index mod n]`.
pub(crate) fn spread(servers: &[SocketAddr], index: usize) -> SocketAddr {
    assert!(!servers.is_empty(), "--server has at least one address");
    servers[index % servers.len()]
}

fn addresses_text(servers: &[SocketAddr]) -> String {
    let texts: Vec<String> = servers.iter().map(SocketAddr::to_string).collect();
    texts.join(",")
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

    /// `TargetArgs` as `parlor bench WORKLOAD` parses it.
    fn parse(args: &str) -> Result<TargetArgs, clap::Error> {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            target: TargetArgs,
        }
        let words = std::iter::once("bench").chain(args.split_whitespace());
        <Cli as clap::Parser>::try_parse_from(words).map(|cli| cli.target)
    }

    #[test]
    fn one_server_is_as_before() {
        let target = parse("--server-pid 42").unwrap();
        let default: SocketAddr = "127.0.0.1:4170".parse().unwrap();
        assert_eq!(target.server, [default]);
        assert_eq!(target.server_pid, [42]);
        assert!((0..5).all(|index| target.server_for(index) == default));
        assert_eq!(target.servers_text(), "127.0.0.1:4170");
        let json = serde_json::to_value(&target).unwrap();
        assert_eq!(json["server"], "127.0.0.1:4170");
        assert_eq!(json["server_pid"], 42);
        let none = serde_json::to_value(parse("").unwrap()).unwrap();
        assert!(none["server_pid"].is_null());
    }

    #[test]
    fn servers_are_a_comma_list_of_loopback_addresses() {
        let target =
            parse("--server 127.0.0.1:4370,127.0.0.1:4380,[::1]:4390 --server-pid 7,8,9").unwrap();
        let servers: Vec<SocketAddr> = ["127.0.0.1:4370", "127.0.0.1:4380", "[::1]:4390"]
            .iter()
            .map(|text| text.parse().unwrap())
            .collect();
        assert_eq!(target.server, servers);
        assert_eq!(target.server_pid, [7, 8, 9]);
        assert_eq!(
            target.servers_text(),
            "127.0.0.1:4370,127.0.0.1:4380,[::1]:4390"
        );
        let json = serde_json::to_value(&target).unwrap();
        assert_eq!(json["server"], "127.0.0.1:4370,127.0.0.1:4380,[::1]:4390");
        assert_eq!(json["server_pid"], serde_json::json!([7, 8, 9]));
        // Repeating the option adds to the list.
        let repeated = parse("--server 127.0.0.1:1 --server 127.0.0.2:2").unwrap();
        assert_eq!(repeated.server.len(), 2);
        for (args, why) in [
            ("--server 127.0.0.1:4370,10.0.0.1:4380", "not a loopback"),
            ("--server 127.0.0.1:4370,", "not an IP:PORT"),
            ("--server 127.0.0.1:4370,,127.0.0.1:4380", "not an IP:PORT"),
            ("--server-pid 7,x", "invalid digit"),
        ] {
            let err = parse(args).unwrap_err().to_string();
            assert!(err.contains(why), "{args}: {err}");
        }
        let dead = parse(&format!("--server-pid {},{}", std::process::id(), u32::MAX)).unwrap();
        let err = dead.validate().unwrap_err();
        assert!(
            err.contains(&format!("no running process {}", u32::MAX)),
            "{err}"
        );
    }

    /// Connection i goes to server i mod n: consecutive connections take
    /// the servers in turn, each the same share.
    #[test]
    fn connections_are_spread_in_turn() {
        let target = parse("--server 127.0.0.1:1,127.0.0.1:2,127.0.0.1:3").unwrap();
        let ports: Vec<u16> = (0..7).map(|i| target.server_for(i).port()).collect();
        assert_eq!(ports, [1, 2, 3, 1, 2, 3, 1]);
        let mut per_server = [0; 3];
        for index in 0..300 {
            per_server[usize::from(target.server_for(index).port()) - 1] += 1;
        }
        assert_eq!(per_server, [100, 100, 100]);
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
