//! `scripts/cluster` the way a person runs it: three nats-server processes
//! and three real `parlor` binaries on free loopback ports, a legacy client
//! on each node showing that they are one chat server, then `stop`, after
//! which nothing of it runs. And the examples in `contrib/`, read by the
//! real loaders: parlor's config, nats-server's, and the stop timeout of
//! the systemd unit against parlor's drain.

mod support;
use support::*;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use parlor_proto::text;
use parlor_server::config::Config;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Every port the script uses, as an offset from its base port (the
/// layout in its header): the nodes' plain, TLS and metrics ports, then
/// the NATS servers' client, route and monitoring ports.
const OFFSETS: [u16; 18] = [
    0, 1, 2, 10, 11, 12, 20, 21, 22, 52, 53, 54, 62, 63, 64, 72, 73, 74,
];

/// The nodes' plain (legacy) ports, as offsets.
const NODE_OFFSETS: [u16; 3] = [0, 10, 20];

/// The pid files the script writes, relative to its directory.
const PID_FILES: [&str; 6] = [
    "nats-1/nats-server.pid",
    "nats-2/nats-server.pid",
    "nats-3/nats-server.pid",
    "node-a/parlor.pid",
    "node-b/parlor.pid",
    "node-c/parlor.pid",
];

/// A base port whose whole layout is free now. Below Linux's ephemeral
/// range (32768 on), where the free ports other tests ask the system for
/// come from, so that none of them takes one of these meanwhile.
fn free_base() -> u16 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    let seed = std::process::id() as usize ^ now.unwrap().subsec_nanos() as usize;
    for attempt in 0..200 {
        let base = 10_000 + ((seed + attempt * 37) % 280) as u16 * 80;
        let free = OFFSETS
            .iter()
            .all(|offset| TcpListener::bind(("127.0.0.1", base + offset)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no free range of 75 ports between 10000 and 32400");
}

/// A cluster started by the script in a directory of its own; dropped,
/// it is stopped (with the script, then with SIGKILL for anything left),
/// so a failing test leaves nothing running.
struct ScriptCluster {
    dir: PathBuf,
    base: u16,
    pids: Vec<i32>,
}

impl ScriptCluster {
    fn new() -> ScriptCluster {
        let dir =
            std::env::temp_dir().join(format!("parlor-cluster-script-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        ScriptCluster {
            dir,
            base: free_base(),
            pids: Vec::new(),
        }
    }

    /// `scripts/cluster COMMAND DIR`, with the test's binary and ports.
    fn run(&self, command: &str, dir: &Path) -> Output {
        let started = Instant::now();
        let output = Command::new(Path::new(ROOT).join("scripts/cluster"))
            .arg(command)
            .arg(dir)
            .env("PARLOR_BIN", env!("CARGO_BIN_EXE_parlor"))
            .env("PARLOR_CLUSTER_BASE_PORT", self.base.to_string())
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run scripts/cluster");
        eprintln!(
            "scripts/cluster {command}: {} after {:?}\n{}{}",
            output.status,
            started.elapsed(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    fn addr(&self, offset: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.base + offset))
    }

    /// The pids the script wrote, once it started everything.
    fn read_pids(&mut self) {
        self.pids = PID_FILES
            .iter()
            .map(|file| {
                let path = self.dir.join(file);
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|err| panic!("{}: {err}", path.display()));
                text.trim().parse().unwrap()
            })
            .collect();
    }

    fn log(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file)).unwrap_or_default()
    }
}

impl Drop for ScriptCluster {
    fn drop(&mut self) {
        if self.pids.iter().any(|&pid| alive(pid)) {
            self.run("stop", &self.dir.clone());
            for &pid in &self.pids {
                if alive(pid) {
                    // SAFETY: kill(2) of a pid the script started for this
                    // test and that is still running.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether `pid` runs: it exists and is no zombie (a process the script
/// started is reaped by whoever inherited it, maybe later).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
            !matches!(state, Some(Some('Z' | 'X')) | None)
        }
        Err(_) => false,
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A client on `addr` that said HELLO and got the nick `name`.
async fn named(addr: SocketAddr, name: &str) -> Client {
    let mut client = Client::connect(addr).await;
    client.hello().await;
    client.request(&nick(name), &ok_bytes()).await;
    client
}

/// Asks LIST_USERS until the answer is `expected`: what another node did
/// arrives a moment later, through a key-value watch.
async fn users_become(client: &mut Client, expected: &[&str]) {
    let want = names(expected);
    let start = Instant::now();
    loop {
        client.send(&list_users()).await;
        let got = client.recv_raw().await;
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "\nstayed: {}\n  want: {}",
            show_frame(&got),
            show_frame(&want)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_script_starts_three_nodes_on_three_nats_servers_that_act_as_one_and_stops_them() {
    let mut cluster = ScriptCluster::new();
    let dir = cluster.dir.clone();
    let started = cluster.run("start", &dir);
    assert!(started.status.success(), "start failed");
    cluster.read_pids();
    assert!(
        cluster.pids.iter().all(|&pid| alive(pid)),
        "{:?}",
        cluster.pids
    );
    let shown = stdout(&started);
    for node in ["a", "b", "c"] {
        assert!(shown.contains(&format!("node {node} ")), "{shown}");
    }
    assert!(shown.contains(&cluster.addr(0).to_string()), "{shown}");

    // A second start is refused, in the same directory or, for the ports,
    // in another one; neither starts anything.
    let again = cluster.run("start", &dir);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already running"),
        "{}",
        stderr(&again)
    );
    let elsewhere = dir.with_extension("other");
    let clash = cluster.run("start", &elsewhere);
    assert!(!clash.status.success());
    assert!(stderr(&clash).contains("is in use"), "{}", stderr(&clash));
    let _ = std::fs::remove_dir_all(&elsewhere);

    // Every node sees all three (parlor_cluster_nodes, which status shows).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = cluster.run("status", &dir);
        assert!(status.status.success(), "status: {}", status.status);
        if stdout(&status).matches("sees 3 node(s)").count() == 3 {
            assert_eq!(stdout(&status).matches("healthy").count(), 3);
            break;
        }
        assert!(Instant::now() < deadline, "the nodes never saw each other");
        std::thread::sleep(Duration::from_millis(200));
    }

    // One chat server: a nick held on node a is refused on node b with the
    // legacy text, everyone is listed everywhere, and a room message and a
    // DM cross nodes.
    let [a, b, c] = NODE_OFFSETS.map(|offset| cluster.addr(offset));
    let mut alice = named(a, "alice").await;
    let mut bob = Client::connect(b).await;
    bob.hello().await;
    bob.request(&nick("alice"), &error(text::NICK_TAKEN)).await;
    bob.request(&nick("bob"), &ok_bytes()).await;
    let mut carol = named(c, "carol").await;
    for client in [&mut alice, &mut bob, &mut carol] {
        client.request(&join("lobby", ""), &ok_bytes()).await;
    }
    for client in [&mut alice, &mut bob, &mut carol] {
        users_become(client, &["alice", "bob", "carol"]).await;
    }
    bob.request(&room_msg("lobby", "hello from b"), &ok_bytes())
        .await;
    alice.expect(&relay("lobby", "bob", "hello from b")).await;
    carol.expect(&relay("lobby", "bob", "hello from b")).await;
    carol
        .request(&dm("alice", "psst, from c"), &ok_bytes())
        .await;
    alice.expect(&dm_relay("carol", "psst, from c")).await;

    // stop: the nodes drain (their clients are closed) and leave the
    // cluster through NATS, then NATS stops; nothing is left.
    let stopped = cluster.run("stop", &dir);
    assert!(stopped.status.success(), "stop failed");
    for client in [&mut alice, &mut bob, &mut carol] {
        client.expect_closed().await;
    }
    let gone = Instant::now() + Duration::from_secs(2);
    while cluster.pids.iter().any(|&pid| alive(pid)) {
        assert!(Instant::now() < gone, "still running after stop: {:?}", {
            let left: Vec<i32> = cluster.pids.iter().copied().filter(|&p| alive(p)).collect();
            left
        });
        std::thread::sleep(Duration::from_millis(20));
    }
    for offset in OFFSETS {
        assert!(
            TcpStream::connect(cluster.addr(offset)).is_err(),
            "port {} still answers",
            cluster.base + offset
        );
    }
    for node in ["a", "b", "c"] {
        let log = cluster.log(&format!("node-{node}/parlor.log"));
        assert!(
            log.contains("left the cluster"),
            "node {node} did not drain:\n{log}"
        );
    }
    let status = cluster.run("status", &dir);
    assert_eq!(status.status.code(), Some(3), "status after stop");
    let twice = cluster.run("stop", &dir);
    assert!(twice.status.success());
    assert!(
        stdout(&twice).contains("nothing running"),
        "{}",
        stdout(&twice)
    );
}

#[test]
fn the_script_refuses_a_bad_port_base_or_command() {
    let dir = std::env::temp_dir().join(format!("parlor-cluster-refusals-{}", std::process::id()));
    let script = Path::new(ROOT).join("scripts/cluster");
    let run = |args: &[&str], base: &str| {
        Command::new(&script)
            .args(args)
            .arg(&dir)
            .env("PARLOR_CLUSTER_BASE_PORT", base)
            .output()
            .expect("run scripts/cluster")
    };
    for base in ["80", "65500", "port"] {
        let output = run(&["start"], base);
        assert_eq!(output.status.code(), Some(1), "base {base}");
        assert!(
            stderr(&output).contains("PARLOR_CLUSTER_BASE_PORT"),
            "{}",
            stderr(&output)
        );
    }
    let output = run(&["restart"], "4170");
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("usage"), "{}", stderr(&output));
    assert!(!dir.exists(), "a refusal made {}", dir.display());
}

#[test]
fn the_example_node_config_is_accepted_by_the_server_s_loader() {
    let path = Path::new(ROOT).join("contrib/cluster/parlor-node.toml");
    let config = Config::from_file(&path).unwrap_or_else(|err| panic!("{err}"));
    config.validate().unwrap_or_else(|err| panic!("{err}"));
    let cluster = config.cluster.as_ref().expect("a [cluster] table");
    assert_eq!(cluster.servers.len(), 3, "{:?}", cluster.servers);
    assert_eq!(cluster.replicas, 3);
    // README, "Cluster": with three NATS servers, at least 15 s.
    assert!(cluster.lease_secs >= 15.0, "{}", cluster.lease_secs);
    assert_eq!(config.listen.port(), 4170);
    assert!(config.metrics_listen.is_some());
}

#[test]
fn the_example_nats_config_is_accepted_by_nats_server() {
    let script = Path::new(ROOT).join("scripts/nats-server");
    let found = Command::new(&script)
        .output()
        .expect("run scripts/nats-server");
    assert!(found.status.success(), "{}", stderr(&found));
    let binary = String::from_utf8(found.stdout).unwrap();
    let conf = Path::new(ROOT).join("contrib/cluster/nats-server.conf");
    let checked = Command::new(binary.trim())
        .arg("-t")
        .arg("-c")
        .arg(&conf)
        .output()
        .expect("run nats-server -t");
    let said = format!("{}{}", stdout(&checked), stderr(&checked));
    assert!(checked.status.success(), "{said}");
    assert!(said.contains("is valid"), "{said}");
}

/// systemd waits `TimeoutStopSec` after SIGTERM before it kills: longer
/// than parlor's drain, the flush of every client and then the release of
/// its names, each at most `flush_timeout_secs`, plus a second.
#[test]
fn the_systemd_unit_waits_longer_than_parlor_drains() {
    let unit =
        std::fs::read_to_string(Path::new(ROOT).join("contrib/systemd/parlor.service")).unwrap();
    let setting = |key: &str| {
        unit.lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("parlor.service has no {key}"))
            .trim()
            .to_owned()
    };
    assert_eq!(setting("KillSignal"), "SIGTERM");
    let timeout: f64 = setting("TimeoutStopSec").parse().unwrap();
    let drain = 2.0 * Config::default().flush_timeout_secs + 1.0;
    assert!(
        timeout > 2.0 * drain,
        "TimeoutStopSec={timeout}, drain {drain} s"
    );
    assert!(setting("ExecStart").contains("--config /etc/parlor/parlor.toml"));
}
