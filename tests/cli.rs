//! The `parlor` binary as an operator runs it: flags, config files, exit
//! codes, logs and signals.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn parlor() -> Command {
    Command::new(env!("CARGO_BIN_EXE_parlor"))
}

fn run(args: &[&str]) -> Output {
    parlor().args(args).output().expect("run parlor")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn temp_file(name: &str, contents: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("parlor-test-{}-{name}", std::process::id()));
    std::fs::write(&path, contents).unwrap();
    path
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the server and waits until it logs that it is listening.
fn start(args: &[&str]) -> (Child, BufReader<std::process::ChildStderr>) {
    let mut command = parlor();
    command.args(args);
    start_command(command)
}

/// [`start`] for a command set up by the caller. The TLS port goes on a
/// free loopback port, and the certificate the server makes for it into a
/// state directory of this test binary's, not the user's.
#[allow(
    clippy::zombie_processes,
    reason = "the caller waits for the returned child"
)]
fn start_command(mut command: Command) -> (Child, BufReader<std::process::ChildStderr>) {
    let state = std::env::temp_dir().join(format!("parlor-test-{}-state", std::process::id()));
    let mut child = command
        .args(["--tls-listen", "127.0.0.1:0"])
        .env("XDG_STATE_HOME", state)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn parlor");
    let mut logs = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            logs.read_line(&mut line).unwrap() > 0,
            "server exited before listening"
        );
        if line.contains("listening") {
            return (child, logs);
        }
    }
}

/// Stops the server with Ctrl-C (SIGINT), checks that it exits 0, and
/// returns what it logged after [`start`] returned.
fn interrupt(child: &mut Child, logs: &mut BufReader<std::process::ChildStderr>) -> String {
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(
        wait_with_timeout(child, Duration::from_secs(5)).code(),
        Some(0)
    );
    let mut rest = String::new();
    logs.read_to_string(&mut rest).unwrap();
    rest
}

fn wait_with_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "server did not exit in {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn hello(stream: &mut TcpStream) -> Vec<u8> {
    let greeting = "Xin chào. Bonghjornu.".as_bytes();
    let mut frame = (greeting.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&[0x04, 0x17, 0x9b]);
    frame.extend_from_slice(greeting);
    stream.write_all(&frame).unwrap();
    let mut header = [0u8; 7];
    stream.read_exact(&mut header).unwrap();
    let mut payload = vec![0u8; u32::from_be_bytes(header[..4].try_into().unwrap()) as usize];
    stream.read_exact(&mut payload).unwrap();
    [&header[..], &payload].concat()
}

#[test]
fn help_documents_every_flag() {
    let output = run(&["--help"]);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--port",
        "-p",
        "--listen",
        "--tls-listen",
        "--state-dir",
        "--config",
        "--log-format",
        "RUST_LOG",
        "serve",
        "max_connections = 10000",
        "idle_timeout_secs = 30.0",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}

#[test]
fn bad_flags_exit_2_with_a_message() {
    let output = run(&["--bogus"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("--bogus"), "{}", stderr(&output));

    let output = run(&["serve", "--port", "not-a-port"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("not-a-port"),
        "{}",
        stderr(&output)
    );

    let output = run(&["serve", "--tls-listen", "on"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("\"off\""), "{}", stderr(&output));
}

#[test]
fn bad_config_files_exit_2_naming_the_problem() {
    // (file contents, or None for a missing file; text stderr must name)
    let cases = [
        (None, "/nonexistent/parlor.toml"),
        (Some("idle_timout_secs = 10\n"), "idle_timout_secs"),
        (Some("max_frame_bytes = 70000\n"), "max_frame_bytes"),
        (Some("max_connections = \"many\"\n"), "max_connections"),
        (Some("argon2_iterations = 0\n"), "argon2_iterations"),
        (Some("tls_key = \"key.pem\"\n"), "tls_cert"),
    ];
    for (index, (contents, named)) in cases.into_iter().enumerate() {
        let path = match contents {
            Some(contents) => temp_file(&format!("bad-{index}.toml"), contents),
            None => named.into(),
        };
        let output = run(&["serve", "--config", path.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(2), "{named}");
        assert!(stderr(&output).contains(named), "{}", stderr(&output));
    }
}

#[test]
fn old_style_port_flag_serves_and_sigterm_exits_0() {
    let port = free_port();
    let (mut child, _logs) = start(&["-p", &port.to_string(), "--listen", "127.0.0.1:1"]);
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(hello(&mut client), b"\x00\x00\x00\x06\x04\x17\x9a\x00rand0");

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = wait_with_timeout(&mut child, Duration::from_secs(5));
    assert_eq!(status.code(), Some(0));
    // The client saw a clean close: end of stream, no stray frame.
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{rest:?}");
}

#[test]
fn config_file_settings_apply_and_logs_can_be_json() {
    let port = free_port();
    let config = temp_file(
        "serve.toml",
        &format!("listen = \"127.0.0.1:{port}\"\nmax_connections = 1\n"),
    );
    let (mut child, mut logs) = start(&[
        "serve",
        "--config",
        config.to_str().unwrap(),
        "--log-format",
        "json",
    ]);
    let mut first = TcpStream::connect(("127.0.0.1", port)).unwrap();
    first
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    hello(&mut first);
    // max_connections = 1: the second is told to try later and closed.
    let mut second = TcpStream::connect(("127.0.0.1", port)).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut refused = Vec::new();
    second.read_to_end(&mut refused).unwrap();
    let expected = [
        &b"\x00\x00\x00\x1e\x04\x17\x9a\x02"[..],
        b"Server full, try again later.",
    ]
    .concat();
    assert_eq!(refused, expected);

    let rest = interrupt(&mut child, &mut logs);
    let lines: Vec<&str> = rest.lines().collect();
    assert!(!lines.is_empty());
    for line in &lines {
        assert!(
            line.starts_with('{') && line.ends_with('}'),
            "not JSON: {line:?} in\n{rest}"
        );
    }
    assert!(
        rest.contains("\"message\":\"connection refused\""),
        "{rest}"
    );
    assert!(rest.contains("connection limit reached"), "{rest}");
    assert!(rest.contains("\"peer\":\"127.0.0.1:"), "{rest}");
}

#[test]
fn text_logs_written_to_a_pipe_carry_no_colour_codes() {
    let port = free_port();
    let mut command = parlor();
    command
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env_remove("NO_COLOR");
    let (mut child, mut logs) = start_command(command);
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    hello(&mut client);
    drop(client);

    let rest = interrupt(&mut child, &mut logs);
    assert!(rest.contains("connected"), "{rest}");
    assert!(rest.contains("peer=127.0.0.1:"), "{rest}");
    assert!(!rest.contains('\x1b'), "escape codes in {rest:?}");
}

#[test]
fn a_port_in_use_exits_1_naming_the_address() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = run(&["--listen", &addr]);
    assert_eq!(output.status.code(), Some(1));
    let expected = format!("cannot listen on {addr}");
    assert!(stderr(&output).contains(&expected), "{}", stderr(&output));
}
