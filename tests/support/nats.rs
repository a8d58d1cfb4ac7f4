//! Real nats-server processes on loopback ports, for the cluster tests:
//! one server, or a cluster of three with JetStream replicated over them.
//! The binary comes from `scripts/nats-server`, which installs the pinned
//! release when the machine has none recent enough.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;

/// How long a nats-server may take to be ready.
const STARTUP: Duration = Duration::from_secs(20);

pub(crate) struct NatsServer {
    /// `nats://127.0.0.1:PORT`.
    pub url: String,
    child: Child,
    /// The JetStream store, removed on drop.
    store: PathBuf,
    /// How to start it again with the same port, name and store.
    args: Vec<String>,
}

/// The nats-server binary, found or installed once per test binary.
fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/nats-server");
        let output = Command::new(&script)
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|err| panic!("cannot run {}: {err}", script.display()));
        assert!(output.status.success(), "{} failed", script.display());
        PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
    })
}

/// A port nobody listens on now (for a cluster's routes, which must be
/// known before the servers start).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn fresh_store(name: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let serial = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "parlor-nats-{}-{serial}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl NatsServer {
    /// One JetStream server on a free loopback port.
    pub(crate) fn start() -> NatsServer {
        let port = free_port();
        let store = fresh_store("single");
        let args = vec![
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-js".into(),
            "-sd".into(),
            store.display().to_string(),
        ];
        NatsServer::spawn(port, store, args)
    }

    /// Three JetStream servers routed to each other, ready once they have
    /// elected a JetStream leader.
    pub(crate) fn cluster_of_three() -> Vec<NatsServer> {
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let routes = ports
            .iter()
            .map(|(_, route)| format!("nats://127.0.0.1:{route}"))
            .collect::<Vec<_>>()
            .join(",");
        ports
            .iter()
            .enumerate()
            .map(|(index, &(port, route))| {
                let name = format!("n{index}");
                let store = fresh_store(&name);
                let args = vec![
                    "-a".into(),
                    "127.0.0.1".into(),
                    "-p".into(),
                    port.to_string(),
                    "-js".into(),
                    "-sd".into(),
                    store.display().to_string(),
                    "--name".into(),
                    name,
                    "--cluster_name".into(),
                    "parlor-test".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{route}"),
                    "--routes".into(),
                    routes.clone(),
                ];
                NatsServer::spawn(port, store, args)
            })
            .collect()
    }

    fn spawn(port: u16, store: PathBuf, args: Vec<String>) -> NatsServer {
        let child = NatsServer::run(&args);
        NatsServer {
            url: format!("nats://127.0.0.1:{port}"),
            child,
            store,
            args,
        }
    }

    /// Starts the binary and waits until it says it is ready.
    fn run(args: &[String]) -> Child {
        let mut child = Command::new(binary())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start nats-server");
        let stderr = child.stderr.take().unwrap();
        let (ready, started) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("Server is ready") {
                    let _ = ready.send(());
                }
            }
        });
        started
            .recv_timeout(STARTUP)
            .expect("nats-server ready in time");
        child
    }

    /// Kills the server outright (SIGKILL).
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again after [`NatsServer::kill`], with the same
    /// port and store.
    pub(crate) fn restart(&mut self) {
        self.child = NatsServer::run(&self.args);
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}
