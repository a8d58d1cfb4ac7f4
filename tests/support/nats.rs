//! Real nats-server processes on loopback ports, for the cluster tests:
//! JetStream servers, which a test may kill and start again.
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
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let store = fresh_store("single");
        let args = ["-a", "127.0.0.1", "-js", "-p", &port.to_string(), "-sd"]
            .map(String::from)
            .into_iter()
            .chain([store.display().to_string()])
            .collect();
        NatsServer::spawn(port, store, args)
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
