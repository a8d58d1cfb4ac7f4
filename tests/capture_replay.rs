//! Replays every capture in `captures/` against parlor and checks each reply
//! against the capture's expected transcript (`captures/NN_*.expected`),
//! exactly as `parlor replay --check` does; then the command itself, on good
//! and bad input.
//!
//! The captures span up to 43 s, and their timing matters (idle cutoffs,
//! the rate limit), so they are replayed at ten times the captured speed
//! against an in-process server whose clock runs ten times as fast, all at
//! once: the whole replay takes about a tenth of the longest capture.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use parlor_replay::{play_on_nodes, read_expected, Capture, Pace};
use parlor_server::config::{ClusterConfig, Config};
use support::nats::NatsServer;
use support::test_config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const SPEED: f64 = 10.0;

fn captures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("captures")
}

fn capture_path(name: &str) -> PathBuf {
    captures_dir().join(name)
}

/// Replays one capture against the nodes `configs` start, its clients
/// spread over them, and checks it, returning the number of replies
/// checked, or what went wrong with the transcript for context.
async fn replay_and_check(pcap: &Path, configs: Vec<Config>) -> Result<usize, String> {
    let expected = read_expected(&pcap.with_extension("expected"))
        .map_err(|err| format!("its .expected file: {err}"))?;
    let capture = Capture::read(pcap).map_err(|err| err.to_string())?;
    let mut transcript = Vec::new();
    let clustered = configs.len() > 1;
    let recording = play_on_nodes(&capture, configs, Pace::Speed(SPEED), &mut transcript)
        .await
        .map_err(|err| err.to_string())?;
    let shown = String::from_utf8_lossy(&transcript);
    let violations = recording.violations();
    if !violations.is_empty() {
        return Err(format!(
            "protocol violations:\n{}\n{shown}",
            violations.join("\n")
        ));
    }
    let mut received = recording.received();
    if clustered {
        received = expected.rename_guests(&received);
    }
    expected
        .compare(&received)
        .map_err(|difference| format!("{difference}\n{shown}"))?;
    Ok(expected.len())
}

fn pcaps() -> Vec<PathBuf> {
    let mut pcaps: Vec<PathBuf> = std::fs::read_dir(captures_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "pcap"))
        .collect();
    pcaps.sort();
    assert_eq!(pcaps.len(), 9, "captures/ holds nine captures: {pcaps:?}");
    pcaps
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_capture_gets_the_expected_replies_and_breaks_no_promise() {
    let mut replays = tokio::task::JoinSet::new();
    for pcap in pcaps() {
        replays.spawn(async move {
            let result = replay_and_check(&pcap, vec![test_config()]).await;
            (pcap, result)
        });
    }
    expect_all_to_match(replays).await;
}

/// The same, against two nodes of a cluster with the capture's clients
/// alternating between them: every legacy rule the captures exercise holds
/// byte for byte across nodes, guest names aside (unique in a cluster, not
/// one sequence, so compared up to their numbers). Each capture has a NATS
/// server of its own, since the captures use the same nicks and rooms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_capture_gets_the_expected_replies_from_two_clustered_nodes() {
    let mut replays = tokio::task::JoinSet::new();
    for pcap in pcaps() {
        let nats = NatsServer::start();
        let node = |node_id: &str| Config {
            cluster: Some(ClusterConfig::new(
                vec![nats.url.clone()],
                node_id.to_owned(),
            )),
            ..test_config()
        };
        let nodes = vec![node("a"), node("b")];
        replays.spawn(async move {
            let result = replay_and_check(&pcap, nodes).await;
            drop(nats);
            (pcap, result)
        });
    }
    expect_all_to_match(replays).await;
}

async fn expect_all_to_match(mut replays: tokio::task::JoinSet<(PathBuf, Result<usize, String>)>) {
    let mut failures = Vec::new();
    while let Some(joined) = replays.join_next().await {
        let (pcap, result) = joined.unwrap();
        match result {
            Ok(checked) => assert!(checked >= 2, "{pcap:?}: only {checked} replies"),
            Err(failure) => failures.push(format!("{}: {failure}", pcap.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// A server that breaks every promise it can: it answers a heartbeat, sends
/// a zero-length frame, and hangs up on a request without answering it.
async fn misbehaving_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut header = [0u8; 7];
        while stream.read_exact(&mut header).await.is_ok() {
            let len = u32::from_be_bytes(header[..4].try_into().unwrap()) as usize;
            let mut payload = vec![0; len];
            stream.read_exact(&mut payload).await.unwrap();
            let reply: &[u8] = match header[6] {
                0x9b => b"\x00\x00\x00\x06\x04\x17\x9a\x00rand0",
                0x13 => b"\x00\x00\x00\x01\x04\x17\x9a\x00",
                _ => {
                    stream
                        .write_all(b"\x00\x00\x00\x00\x04\x17\x12")
                        .await
                        .unwrap();
                    // Hang up, but read on so that closing sends no reset.
                    stream.shutdown().await.unwrap();
                    let mut sink = Vec::new();
                    let _ = stream.read_to_end(&mut sink).await;
                    return;
                }
            };
            stream.write_all(reply).await.unwrap();
        }
    });
    addr
}

#[tokio::test]
async fn broken_promises_are_reported() {
    let capture = Capture::read(&capture_path("01_connect_heartbeat_idle.pcap")).unwrap();
    let server = misbehaving_server().await;
    // Paced, not as fast as possible: the misbehaving server answers
    // heartbeats, and a late answer to the heartbeat sent just before
    // LIST_USERS would be taken for LIST_USERS' reply. At this speed the
    // 6 s between them are 60 ms, ample on loopback.
    let recording = parlor_replay::play(
        &capture,
        &[server],
        Pace::Speed(100.0),
        &mut std::io::sink(),
    )
    .await
    .unwrap();
    let violations = recording.violations().join("\n");
    for problem in [
        "A: 9a 00 with no request pending: the legacy client aborts on it",
        "A: a frame of length 0",
        "A: inner lengths that do not add up",
        "A: the connection ended with no reply to LIST_USERS",
    ] {
        assert!(violations.contains(problem), "{problem}\nin:\n{violations}");
    }
    let replies = &recording.clients[0].replies;
    assert_eq!(replies.first().map(String::as_str), Some(r#"ok "rand0""#));
    assert_eq!(replies.last().map(String::as_str), Some("closed"));
}

fn parlor_replay(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_parlor"))
        .arg("replay")
        .args(args)
        .output()
        .expect("run parlor replay")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn temp_file(name: &str, contents: &[u8]) -> PathBuf {
    let path = std::env::temp_dir().join(format!("parlor-replay-{}-{name}", std::process::id()));
    std::fs::write(&path, contents).unwrap();
    path
}

#[test]
fn the_command_prints_the_transcript_and_checks_it() {
    let pcap = capture_path("03_dm_nick_collision.pcap");
    let expected = pcap.with_extension("expected");
    let pcap = pcap.to_str().unwrap();
    let output = parlor_replay(&[pcap, "--as-fast-as-possible"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout.contains("\nB dm \"alice\" \"hello bob, this is a DM\"\n"),
        "{stdout}"
    );

    let output = parlor_replay(&[
        pcap,
        "--as-fast-as-possible",
        "--check",
        expected.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("all 11 replies match"),
        "{}",
        stderr(&output)
    );

    let text = std::fs::read_to_string(&expected).unwrap();
    let wrong = text.replace("A error \"Nick not present\"", "A error \"Nobody here\"");
    let wrong = temp_file("03.expected", wrong.as_bytes());
    let output = parlor_replay(&[
        pcap,
        "--as-fast-as-possible",
        "--check",
        wrong.to_str().unwrap(),
    ]);
    std::fs::remove_file(&wrong).unwrap();
    assert_eq!(output.status.code(), Some(1));
    let line = text
        .lines()
        .position(|line| line == "A error \"Nick not present\"")
        .unwrap()
        + 1;
    let message = stderr(&output);
    assert!(
        message.contains(&format!(
            "first at line {line}, client A:\n  expected: A error \"Nobody here\"\n  got:      A error \"Nick not present\""
        )),
        "{message}"
    );
}

#[test]
fn bad_input_gets_a_clear_message_and_exit_code_2() {
    let header_only = {
        let writer = pcap_file::pcap::PcapWriter::new(Vec::new()).unwrap();
        writer.into_writer()
    };
    let empty = temp_file("empty.pcap", &header_only);
    let text = temp_file("text.pcap", b"not a capture\n");
    let pcap = capture_path("01_connect_heartbeat_idle.pcap");
    let bad_expected = temp_file("bad.expected", b"A ok\nA maybe\n");
    let cases: [(Vec<&str>, &str); 4] = [
        (vec!["/nonexistent/x.pcap"], "cannot read it"),
        (vec![text.to_str().unwrap()], "not a pcap file"),
        (vec![empty.to_str().unwrap()], "no TCP connection"),
        (
            vec![
                pcap.to_str().unwrap(),
                "--check",
                bad_expected.to_str().unwrap(),
            ],
            "line 2: unknown reply `maybe`",
        ),
    ];
    for (args, problem) in cases {
        let output = parlor_replay(&args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let message = stderr(&output);
        assert!(
            message.starts_with("parlor replay: ") && message.contains(problem),
            "{args:?}: {message}"
        );
    }
    for path in [empty, text, bad_expected] {
        std::fs::remove_file(path).unwrap();
    }
}
