//! The real `parlor` binary as a child process, for tests that need to see
//! its memory, its logs and its metrics endpoint the way an operator does.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use parlor_server::config::Config;

pub(crate) struct ServerProcess {
    pub addr: SocketAddr,
    /// The TLS port, when the config has one.
    pub tls_addr: Option<SocketAddr>,
    pub metrics_addr: Option<SocketAddr>,
    child: Child,
    logs: Arc<Mutex<String>>,
    config_path: PathBuf,
}

impl ServerProcess {
    /// Starts `parlor serve` with `config` (written to a temporary TOML
    /// file) on a free loopback port, JSON logs, and the metrics endpoint on
    /// a free port when `metrics` is set. The TLS port is the config's
    /// (give `127.0.0.1:0` for a free one, and a `state_dir`).
    pub(crate) fn start(config: &Config, metrics: bool) -> ServerProcess {
        let config_path = std::env::temp_dir().join(format!(
            "parlor-test-{}-{}.toml",
            std::process::id(),
            NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::write(&config_path, toml::to_string(config).unwrap()).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_parlor"));
        command.args(["serve", "--log-format", "json", "--listen", "127.0.0.1:0"]);
        command.arg("--config").arg(&config_path);
        if metrics {
            command.args(["--metrics", "127.0.0.1:0"]);
        }
        let mut child = command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start parlor");
        // Drain stderr for the whole run, so logging never blocks the server.
        let logs = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut logs = sink.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        let mut server = ServerProcess {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls_addr: None,
            metrics_addr: None,
            child,
            logs,
            config_path,
        };
        server.addr = server.wait_for_addr("listening");
        if config.tls_listen.is_some() {
            server.tls_addr = Some(server.wait_for_addr("listening for TLS"));
        }
        if metrics {
            server.metrics_addr = Some(server.wait_for_addr("serving metrics"));
        }
        server
    }

    /// The `addr` field of the first log line with this message.
    fn wait_for_addr(&mut self, message: &str) -> SocketAddr {
        let needle = format!("\"message\":\"{message}\",\"addr\":\"");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(start) = self.logs().find(&needle) {
                let rest = &self.logs()[start + needle.len()..];
                let end = rest.find('"').unwrap();
                return rest[..end].parse().unwrap();
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("parlor exited with {status}:\n{}", self.logs());
            }
            assert!(Instant::now() < deadline, "parlor never said {message:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The TLS key fingerprint the server logged at start,
    /// `SHA256:<hex>`.
    pub(crate) fn tls_fingerprint(&self) -> String {
        let needle = "\"message\":\"TLS key fingerprint ";
        let logs = self.logs();
        let start = logs
            .find(needle)
            .expect("the server logs its TLS key fingerprint")
            + needle.len();
        let end = logs[start..].find('"').unwrap();
        logs[start..start + end].to_owned()
    }

    /// Everything logged so far.
    pub(crate) fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// The server's resident set size in KiB, from /proc.
    pub(crate) fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS line")
    }

    /// Kills the server outright (SIGKILL): it releases nothing.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM, as an operator or systemd does to stop the server,
    /// and waits for it to exit; panics if it takes longer than `within`.
    pub(crate) fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) with a pid this test started and has not reaped.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "parlor still running after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Asserts the process is still running.
    pub(crate) fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("parlor exited with {status}:\n{}", self.logs());
        }
    }

    /// Fetches the metrics endpoint's text.
    pub(crate) async fn scrape(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.metrics_addr.expect("started with metrics");
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: parlor\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        body.to_owned()
    }

    /// The value of one sample line of the metrics text, e.g.
    /// `parlor_rejections_total{kind="malformed"}`; 0 when absent.
    pub(crate) async fn metric(&self, sample: &str) -> u64 {
        let text = self.scrape().await;
        text.lines()
            .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
            .map_or(0, |value| value.parse().unwrap())
    }
}

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config_path);
    }
}
