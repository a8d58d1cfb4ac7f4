//! A `parlor client --json` process, driven through its stdin and read
//! through its JSON events.

#![allow(dead_code)] // each test binary uses its own subset of the helpers

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

/// How long to wait for an event that should come. Generous: it only
/// guards against a hang, and a debug build may be generating keys.
const PATIENCE: Duration = Duration::from_secs(20);

pub(crate) struct ClientProcess {
    name: &'static str,
    child: Child,
    /// `None` once [`ClientProcess::end_input`] closed it.
    stdin: Option<ChildStdin>,
    /// A `--data-dir` made for this client alone, removed with it.
    data_dir: Option<PathBuf>,
    events: mpsc::UnboundedReceiver<Value>,
    /// Every event read so far, in order.
    pub seen: Vec<Value>,
}

impl ClientProcess {
    /// Starts `parlor client ADDR --json` with `args` against a plain test
    /// server (so with `--insecure-transport`, unless `--legacy`), with a
    /// data directory of its own, and waits for it to be connected (and,
    /// unless `--legacy`, to have registered its key).
    pub(crate) async fn start(
        name: &'static str,
        addr: SocketAddr,
        args: &[&str],
    ) -> ClientProcess {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let data_dir = std::env::temp_dir().join(format!(
            "parlor-client-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let legacy = args.contains(&"--legacy");
        if !legacy {
            write_identity(&data_dir.join("identity"), name);
        }
        let mut all = vec!["--data-dir", data_dir.to_str().unwrap()];
        // Files received land in the data directory, not the tests' own.
        if !args.contains(&"--download-dir") {
            all.extend(["--download-dir", data_dir.to_str().unwrap()]);
        }
        if !legacy {
            all.push("--insecure-transport");
        }
        all.extend(args);
        let mut client = ClientProcess::spawn(name, &addr.to_string(), &all);
        client.data_dir = Some(data_dir);
        client.expect(&[("event", "connected")]).await;
        if !legacy {
            client.expect(&[("event", "key_registered")]).await;
        }
        client
    }

    /// Starts `parlor client ADDR --json` with exactly `args` more, and
    /// waits for nothing.
    pub(crate) fn spawn(name: &'static str, addr: &str, args: &[&str]) -> ClientProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_parlor"))
            .arg("client")
            .arg(addr)
            .arg("--json")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start parlor client");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let (sender, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stdout.next_line().await {
                let event = serde_json::from_str(&line)
                    .unwrap_or_else(|err| panic!("not a JSON event ({err}): {line}"));
                if sender.send(event).is_err() {
                    break;
                }
            }
        });
        ClientProcess {
            name,
            child,
            stdin: Some(stdin),
            data_dir: None,
            events,
            seen: Vec::new(),
        }
    }

    /// Types a line.
    pub(crate) async fn line(&mut self, line: &str) {
        let line = format!("{line}\n");
        let stdin = self.stdin.as_mut().expect("input still open");
        stdin.write_all(line.as_bytes()).await.unwrap();
    }

    /// Closes the client's input, as at the end of a script, and returns
    /// how it exited; every event it printed is in `seen` then.
    pub(crate) async fn end_input(&mut self) -> ExitStatus {
        self.stdin = None;
        let status = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{}: still running after its input ended", self.name))
            .unwrap();
        while let Ok(Some(event)) = tokio::time::timeout(PATIENCE, self.events.recv()).await {
            self.seen.push(event);
        }
        status
    }

    /// Waits for the next event whose string fields are as given, passing
    /// over others, and returns it.
    pub(crate) async fn expect(&mut self, fields: &[(&str, &str)]) -> Value {
        self.expect_where(fields, |_| true).await
    }

    /// [`ClientProcess::expect`] with a further condition on the event.
    pub(crate) async fn expect_where(
        &mut self,
        fields: &[(&str, &str)],
        also: impl Fn(&Value) -> bool,
    ) -> Value {
        let wanted =
            |event: &Value| fields.iter().all(|(key, value)| event[key] == *value) && also(event);
        let search = async {
            loop {
                let event = self.events.recv().await?;
                self.seen.push(event.clone());
                if wanted(&event) {
                    return Some(event);
                }
            }
        };
        match tokio::time::timeout(PATIENCE, search).await {
            Ok(Some(event)) => event,
            Ok(None) => panic!(
                "{}: exited while waiting for {fields:?}; saw {:#?}",
                self.name, self.seen
            ),
            Err(_) => panic!(
                "{}: no event {fields:?} in {PATIENCE:?}; saw {:#?}",
                self.name, self.seen
            ),
        }
    }

    /// Types `\quit` and checks that the client exits successfully.
    pub(crate) async fn quit(mut self) {
        self.line("\\quit").await;
        let status = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("client exits after \\quit")
            .unwrap();
        assert!(status.success(), "{}: {status}", self.name);
    }
}

/// Writes the identity of the client called `name` to `path` (mode 0600),
/// as the client would have made it on its first run. Each name's identity
/// is made once per test process and reused: making RSA keys is slow.
pub(crate) fn write_identity(path: &std::path::Path, name: &str) {
    use std::collections::HashMap;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    use std::sync::Mutex;
    static MADE: Mutex<Option<HashMap<String, String>>> = Mutex::new(None);
    let pem = MADE
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .entry(name.to_string())
        .or_insert_with(|| {
            let identity = parlor_crypto::Identity::generate(2048).expect("an identity");
            identity.to_pem().to_string()
        })
        .clone();
    let dir = path.parent().unwrap();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .unwrap();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    std::io::Write::write_all(&mut file, pem.as_bytes()).unwrap();
}

/// The identity [`write_identity`] writes for `name`.
pub(crate) fn identity_of(name: &str) -> parlor_crypto::Identity {
    let dir = std::env::temp_dir().join(format!(
        "parlor-identity-{}-{name}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let path = dir.join("identity");
    let _ = std::fs::remove_dir_all(&dir);
    write_identity(&path, name);
    let identity = parlor_crypto::Identity::load(&path).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    identity
}

impl Drop for ClientProcess {
    fn drop(&mut self) {
        if let Some(dir) = &self.data_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
