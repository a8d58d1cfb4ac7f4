//! Real nats-server processes on loopback ports, for the cluster tests:
//! JetStream servers, alone or three in a NATS cluster, which a test may
//! kill and start again.
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
    /// The monitoring port, whose `/healthz` says when JetStream is ready.
    monitor: u16,
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl NatsServer {
    /// One JetStream server on a free loopback port.
    pub(crate) fn start() -> NatsServer {
        let server = NatsServer::spawn("single", Vec::new());
        server.wait_healthy();
        server
    }

    /// Three JetStream servers routed into one NATS cluster, whose
    /// JetStream has a leader: a bucket made with three replicas survives
    /// the loss of any one of them.
    pub(crate) fn cluster() -> Vec<NatsServer> {
        let routes = [(); 3].map(|()| free_port());
        let list = routes
            .map(|port| format!("nats://127.0.0.1:{port}"))
            .join(",");
        let servers: Vec<NatsServer> = routes
            .iter()
            .enumerate()
            .map(|(index, route)| {
                let name = format!("n{index}");
                let cluster = [
                    "--name",
                    &name,
                    "--cluster_name",
                    "parlor",
                    "--cluster",
                    &format!("nats://127.0.0.1:{route}"),
                    "--routes",
                    &list,
                ];
                NatsServer::spawn(&name, cluster.map(String::from).to_vec())
            })
            .collect();
        for server in &servers {
            server.wait_healthy();
        }
        servers
    }

    fn spawn(name: &str, extra: Vec<String>) -> NatsServer {
        let (port, monitor) = (free_port(), free_port());
        let store = fresh_store(name);
        let (port_arg, monitor_arg) = (port.to_string(), monitor.to_string());
        let args: Vec<String> = [
            "-a",
            "127.0.0.1",
            "-js",
            "-p",
            &port_arg,
            "-m",
            &monitor_arg,
            "-sd",
        ]
        .map(String::from)
        .into_iter()
        .chain([store.display().to_string()])
        .chain(extra)
        .collect();
        NatsServer {
            url: format!("nats://127.0.0.1:{port}"),
            monitor,
            child: NatsServer::run(&args),
            store,
            args,
        }
    }

    /// Waits until `/healthz` answers 200: JetStream is up and, in a
    /// cluster, has a meta leader, so buckets can be made.
    pub(crate) fn wait_healthy(&self) {
        let deadline = std::time::Instant::now() + STARTUP;
        while self.get("/healthz").is_none_or(|(status, _)| status != 200) {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server {} never healthy",
                self.url
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server name (`n0`, `n1`, ...) of the leader of the JetStream
    /// stream `stream`, as this server's monitoring endpoint says.
    pub(crate) fn stream_leader(&self, stream: &str) -> Option<String> {
        let (_, body) = self.get("/jsz?accounts=true&streams=true")?;
        let jsz: serde_json::Value = serde_json::from_str(&body).ok()?;
        let accounts = jsz["account_details"].as_array()?;
        let streams = accounts
            .iter()
            .filter_map(|account| account["stream_detail"].as_array());
        let found = streams.flatten().find(|detail| detail["name"] == stream)?;
        Some(found["cluster"]["leader"].as_str()?.to_owned())
    }

    /// An HTTP GET of the monitoring endpoint: the status and the body.
    fn get(&self, path: &str) -> Option<(u16, String)> {
        use std::io::{Read, Write};
        let mut http = std::net::TcpStream::connect(("127.0.0.1", self.monitor)).ok()?;
        write!(http, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
        let mut reply = String::new();
        http.read_to_string(&mut reply).ok()?;
        let (head, body) = reply.split_once("\r\n\r\n")?;
        let status = head.split(' ').nth(1)?.parse().ok()?;
        Some((status, body.to_owned()))
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
        self.wait_healthy();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}
