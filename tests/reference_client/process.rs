//! A `parlor client --json` process, driven through its stdin and read
//! through its JSON events.

use std::net::SocketAddr;
use std::process::Stdio;
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
    stdin: ChildStdin,
    events: mpsc::UnboundedReceiver<Value>,
    /// Every event read so far, in order.
    pub seen: Vec<Value>,
}

impl ClientProcess {
    /// Starts `parlor client ADDR --json` with `args` and waits for it to
    /// be connected (and, unless `--legacy`, to have registered its key).
    pub(crate) async fn start(
        name: &'static str,
        addr: SocketAddr,
        args: &[&str],
    ) -> ClientProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_parlor"))
            .arg("client")
            .arg(addr.to_string())
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
        let mut client = ClientProcess {
            name,
            child,
            stdin,
            events,
            seen: Vec::new(),
        };
        client.expect(&[("event", "connected")]).await;
        if !args.contains(&"--legacy") {
            client.expect(&[("event", "key_registered")]).await;
        }
        client
    }

    /// Types a line.
    pub(crate) async fn line(&mut self, line: &str) {
        let line = format!("{line}\n");
        self.stdin.write_all(line.as_bytes()).await.unwrap();
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
