//! `parlor bench` checked against servers whose behaviour is known: the real
//! server (every delivery arrives once, in order), and a relay in front of
//! it that drops, duplicates and reorders chosen deliveries (the bench must
//! count exactly those, sealed envelopes sent in cycles included). Runs are
//! short and bounded by message counts; no test asserts anything about
//! speed.

mod support;
use support::*;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use clap::Parser;
use parlor_bench::{
    run, IdleReport, Report, SecureFanoutReport, TrafficReport, TransferReport, Workload,
};
use parlor_proto::tls::TlsFingerprint;
use parlor_proto::{opcode, ClientMessage, Frame, FrameCodec, ServerMessage};
use parlor_server::config::Config;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The bench's command line, parsed as `parlor bench` parses it.
#[derive(Parser)]
struct Bench {
    #[command(subcommand)]
    workload: Workload,
}

fn workload(command_line: &str) -> Workload {
    let words = std::iter::once("bench").chain(command_line.split_whitespace());
    match Bench::try_parse_from(words) {
        Ok(bench) => bench.workload,
        Err(err) => panic!("{command_line}: {err}"),
    }
}

/// A server whose rate limit does not get in the way: a million messages
/// per millisecond.
fn bench_config() -> Config {
    Config {
        rate_limit_messages: 1_000_000,
        rate_limit_window_secs: 0.001,
        ..test_config()
    }
}

/// Runs a workload, failing the test instead of hanging if it never ends.
async fn bench(command_line: &str) -> Report {
    let workload = workload(command_line);
    tokio::time::timeout(Duration::from_secs(60), run(&workload))
        .await
        .expect("the bench run ends")
        .unwrap_or_else(|err| panic!("{command_line}: {err}"))
}

async fn traffic(command_line: &str) -> TrafficReport {
    match bench(command_line).await {
        Report::Traffic(report) => report,
        other => panic!("not a traffic report: {other:?}"),
    }
}

async fn secure_fanout(command_line: &str) -> SecureFanoutReport {
    match bench(command_line).await {
        Report::SecureFanout(report) => report,
        other => panic!("not a secure-fanout report: {other:?}"),
    }
}

async fn idle(command_line: &str) -> IdleReport {
    match bench(command_line).await {
        Report::Idle(report) => report,
        other => panic!("not an idle report: {other:?}"),
    }
}

async fn transfer(command_line: &str) -> TransferReport {
    match bench(command_line).await {
        Report::Transfer(report) => report,
        other => panic!("not a transfer report: {other:?}"),
    }
}

fn assert_clean(report: &TrafficReport) {
    assert_eq!(
        (
            report.lost,
            report.duplicated,
            report.reordered,
            report.unexpected
        ),
        (0, 0, 0, 0),
        "{report:#?}"
    );
    assert_eq!(report.delivered, report.expected_deliveries);
    assert_eq!((report.refused, report.unanswered), (0, 0));
    assert_eq!(report.disconnects, 0);
    assert!(report.drained);
    assert!(report.failures.is_empty(), "{:?}", report.failures);
}

#[tokio::test]
async fn fanout_closed_loop_against_parlor_counts_every_delivery_once() {
    let server = TestServer::start(bench_config()).await;
    let report = traffic(&format!(
        "fanout --server {} --rooms 2 --members 4 --window 4 --messages 50 --duration 60",
        server.addr
    ))
    .await;
    assert_eq!(report.connections, 8);
    assert_eq!(report.sent, 8 * 50);
    assert_eq!(report.accepted, 8 * 50);
    assert_eq!(report.expected_deliveries, 8 * 50 * 3);
    assert_clean(&report);
    assert_eq!(report.latency_ms.as_ref().unwrap().count, 8 * 50 * 3);
    server.stop().await;
}

#[tokio::test]
async fn dm_at_a_fixed_rate_against_parlor_counts_every_delivery_once() {
    let server = TestServer::start(bench_config()).await;
    let report = traffic(&format!(
        "dm --server {} --pairs 3 --rate 1200 --messages 20 --duration 60",
        server.addr
    ))
    .await;
    assert_eq!(report.mode, "rate");
    assert_eq!(report.sent, 6 * 20);
    assert_eq!(report.expected_deliveries, 6 * 20);
    assert_clean(&report);
    server.stop().await;
}

#[tokio::test]
async fn messages_refused_by_the_rate_limit_are_not_expected_to_arrive() {
    // parlor's default limit, 5 messages per 5 s: each sender's sixth and
    // later messages are answered 9a 02 and delivered to nobody.
    let server = TestServer::start(test_config()).await;
    let report = traffic(&format!(
        "fanout --server {} --rooms 1 --members 3 --window 1 --messages 8 --duration 60",
        server.addr
    ))
    .await;
    assert_eq!((report.sent, report.accepted, report.refused), (24, 15, 9));
    assert_eq!(report.expected_deliveries, 15 * 2);
    assert_eq!(report.delivered, 15 * 2);
    assert_eq!(report.lost, 0);
    assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
    assert!(
        report.failures[0].starts_with("messages refused with 9a 01/02")
            && report.failures[0].ends_with(": 9"),
        "{:?}",
        report.failures
    );
    server.stop().await;
}

#[tokio::test]
async fn faults_injected_by_a_relay_are_counted_exactly() {
    let server = TestServer::start(bench_config()).await;
    // Rooms: room0 = u00000..u00002, room1 = u00003..u00005. Ordinals
    // count the deliveries from one sender to one receiver, from 0, which
    // is also the message's sequence number.
    let relay = FaultyRelay::start(
        server.addr,
        &[
            (("u00000", "u00001", 3), Fault::Drop),
            (("u00004", "u00003", 10), Fault::Drop),
            (("u00001", "u00002", 5), Fault::Duplicate),
            (("u00005", "u00004", 29), Fault::Duplicate),
            (("u00002", "u00000", 7), Fault::Delay),
        ],
    )
    .await;
    let report = traffic(&format!(
        "fanout --server {} --rooms 2 --members 3 --window 4 --messages 30 --duration 60 --drain 0.5",
        relay.addr
    ))
    .await;
    assert_eq!(report.sent, 6 * 30);
    assert_eq!(report.expected_deliveries, 6 * 30 * 2);
    assert_eq!(report.lost, 2);
    assert_eq!(report.duplicated, 2);
    assert_eq!(report.reordered, 1);
    assert_eq!(report.unexpected, 0);
    assert_eq!(report.delivered, 6 * 30 * 2 - 2);
    assert!(!report.drained, "two deliveries never arrive");
    assert_eq!(
        report.failures,
        [
            "lost deliveries: 2",
            "duplicated deliveries: 2",
            "reordered deliveries: 1"
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn secure_fanout_against_parlor_delivers_every_envelope_once_and_each_opens() {
    let server = TestServer::start(bench_config()).await;
    // 40 messages from a pool of 8: every envelope goes out five times.
    let report = secure_fanout(&format!(
        "secure-fanout --server {} --rooms 2 --members 3 --pool 8 --window 4 --messages 40 --duration 60",
        server.addr
    ))
    .await;
    let traffic = &report.traffic;
    assert_eq!(traffic.workload, "secure-fanout");
    assert_eq!(traffic.sent, 6 * 40);
    assert_eq!(traffic.expected_deliveries, 6 * 40 * 2);
    assert_clean(traffic);
    assert_eq!(traffic.latency_ms.as_ref().unwrap().count, 6 * 40 * 2);
    assert_eq!(report.deliveries_untimed, 0);
    assert_eq!(report.envelopes_sealed, 6 * 8);
    // Each envelope is opened once, by one of its two receivers.
    assert_eq!(
        (report.envelopes_verified, report.envelopes_rejected),
        (6 * 8, 0)
    );
    // Header, IV, the 64-byte stamp's ciphertext, MAC and a 64-byte
    // Ed25519 signature: more than the message, far less than the 415
    // bytes an RSA-2048 signature made.
    assert!(
        (64 + 64..256).contains(&report.envelope_bytes),
        "{report:#?}"
    );
    server.stop().await;
}

/// A server with a TLS port on a free loopback port, its certificate made
/// here and written into `dir`; returns the config and the key's pin.
fn tls_bench_config(dir: &std::path::Path) -> (Config, TlsFingerprint) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    let config = Config {
        tls_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        tls_cert: Some(dir.join("cert.pem")),
        tls_key: Some(dir.join("key.pem")),
        allow_secure_on_plain: false,
        ..bench_config()
    };
    (
        config,
        TlsFingerprint::of_spki(&rcgen::PublicKeyData::subject_public_key_info(&key)),
    )
}

#[tokio::test]
async fn secure_fanout_over_tls_proves_possession_on_that_session_and_every_envelope_opens() {
    let dir = std::env::temp_dir().join(format!("parlor-bench-tls-{}", std::process::id()));
    let (config, pin) = tls_bench_config(&dir);
    let server = TestServer::start(config).await;
    let tls = server.tls_addr.expect("a TLS port");
    // The plain port refuses the extension here: registrations succeed only
    // over TLS, with the proof signing that session's exporter value.
    let report = secure_fanout(&format!(
        "secure-fanout --server {tls} --tls-pin {pin} --rooms 2 --members 3 --pool 8 --window 4 --messages 40 --duration 60"
    ))
    .await;
    assert_clean(&report.traffic);
    assert_eq!(report.traffic.expected_deliveries, 6 * 40 * 2);
    assert_eq!(
        report.traffic.latency_ms.as_ref().unwrap().count,
        6 * 40 * 2
    );
    assert_eq!(
        (report.envelopes_verified, report.envelopes_rejected),
        (6 * 8, 0)
    );
    // Another key under the same address is refused at the handshake.
    let wrong = TlsFingerprint([0x5a; 32]);
    let refused = run(&workload(&format!(
        "secure-fanout --server {tls} --tls-pin {wrong} --rooms 1 --members 2 --messages 8 --pool 8"
    )))
    .await
    .expect_err("a key that is not the pinned one");
    assert!(format!("{refused}").contains("TLS handshake"), "{refused}");
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn joins_during_secure_fanout_each_get_a_key_that_opens_and_nothing_is_lost() {
    let server = TestServer::start(bench_config()).await;
    // Each join and each departure rotates room0's key: the members get the
    // joiner's identity, the rekeying notice and new keys among their
    // deliveries, and must count none of them as unexpected.
    let report = secure_fanout(&format!(
        "secure-fanout --server {} --rooms 2 --members 3 --pool 8 --rate 40 --messages 1000 --duration 2 --join-every 0.25",
        server.addr
    ))
    .await;
    assert_clean(&report.traffic);
    assert!(report.traffic.failures.is_empty(), "{report:#?}");
    let joins = report.joins.as_ref().expect("a join report");
    assert!(joins.joins >= 2, "{joins:?}");
    assert!(joins.join_to_key_ms_p50 > 0.0 && joins.join_to_key_ms_p50 <= joins.join_to_key_ms_max);
    assert_eq!(report.envelopes_rejected, 0);
    server.stop().await;
}

#[tokio::test]
async fn secure_fanout_counts_faults_exactly_across_pool_cycles() {
    let server = TestServer::start(bench_config()).await;
    // A pool of 8, so ordinal n is pool entry n % 8: the faults fall in the
    // first cycle and across the turn from the first to the second.
    let relay = FaultyRelay::start(
        server.addr,
        &[
            (("u00000", "u00001", 3), Fault::Drop),
            (("u00004", "u00003", 20), Fault::Drop),
            (("u00001", "u00002", 8), Fault::Duplicate),
            (("u00002", "u00000", 7), Fault::Delay),
        ],
    )
    .await;
    let report = secure_fanout(&format!(
        "secure-fanout --server {} --rooms 2 --members 3 --pool 8 --window 4 --messages 30 --duration 60 --drain 0.5",
        relay.addr
    ))
    .await;
    let traffic = &report.traffic;
    assert_eq!(traffic.expected_deliveries, 6 * 30 * 2);
    assert_eq!(
        (
            traffic.lost,
            traffic.duplicated,
            traffic.reordered,
            traffic.unexpected
        ),
        (2, 1, 1, 0),
        "{report:#?}"
    );
    assert_eq!(
        traffic.failures,
        [
            "lost deliveries: 2",
            "duplicated deliveries: 1",
            "reordered deliveries: 1"
        ]
    );
    // None of the faults hit a delivery kept for opening.
    assert_eq!(
        (report.envelopes_verified, report.envelopes_rejected),
        (6 * 8, 0)
    );
    server.stop().await;
}

#[tokio::test]
async fn secure_fanout_refuses_a_room_a_legacy_client_created() {
    let server = TestServer::start(bench_config()).await;
    let (mut legacy, _) = server.greeted().await;
    legacy.request(&join("room0", ""), &ok_bytes()).await;
    let workload = workload(&format!(
        "secure-fanout --server {} --rooms 1 --members 2 --messages 1",
        server.addr
    ));
    let err = run(&workload).await.unwrap_err().to_string();
    assert!(
        err.contains("room0 is a plaintext room (a legacy client created it)"),
        "{err}"
    );
    server.stop().await;
}

/// Every chunk of every file reaches every recipient once, in order and
/// intact, and the counts add up.
fn assert_transfer_clean(report: &TransferReport) {
    assert_eq!(
        (
            report.lost,
            report.duplicated,
            report.reordered,
            report.corrupt,
            report.unexpected,
            report.refused,
            report.disconnects
        ),
        (0, 0, 0, 0, 0, 0, 0),
        "{report:#?}"
    );
    assert!(report.failures.is_empty(), "{:?}", report.failures);
}

#[tokio::test]
async fn transfer_to_three_recipients_delivers_every_chunk_once() {
    let server = TestServer::start(bench_config()).await;
    // 15 chunks of 64 KiB and a last one of 16,960 bytes, twice, to three
    // recipients, with a window of 4 chunks.
    let report = transfer(&format!(
        "transfer --server {} --server-pid {} --recipients 3 --size 1000000 --chunk-bytes 64KiB --window 4 --files 2 --duration 60",
        server.addr,
        std::process::id()
    ))
    .await;
    assert_eq!(report.connections, 4);
    assert_eq!(report.chunks_per_file, 16);
    assert_eq!(report.window_granted, Some(4));
    assert_eq!(
        (
            report.files_offered,
            report.files_finished,
            report.files_cancelled
        ),
        (2, 2, 0)
    );
    assert_eq!(report.chunks_sent, 2 * 16);
    assert_eq!(report.bytes_sent, 2 * 1_000_000);
    assert_eq!(report.expected_deliveries, 2 * 16 * 3);
    assert_eq!(report.delivered, 2 * 16 * 3);
    assert_eq!(report.bytes_delivered, 2 * 3 * 1_000_000);
    assert_eq!(report.files_complete, 2 * 3);
    assert_eq!(report.file_s.as_ref().map(|_| ()), Some(()));
    assert!(report.server_rss_kb_peak.is_some());
    assert_transfer_clean(&report);
    server.stop().await;
}

#[tokio::test]
async fn transfer_checks_every_byte_and_a_last_chunk_shorter_than_its_marks() {
    // The server grants at most its own window; the last chunk is 5 bytes.
    let server = TestServer::start(Config {
        max_transfer_window: 2,
        ..bench_config()
    })
    .await;
    let report = transfer(&format!(
        "transfer --server {} --recipients 1 --size 30005 --chunk-bytes 1000 --window 8 --verify-all --duration 60",
        server.addr
    ))
    .await;
    assert_eq!(report.window_granted, Some(2));
    assert_eq!(report.verified, "all");
    assert_eq!((report.files_finished, report.chunks_per_file), (1, 31));
    assert_eq!(report.delivered, 31);
    assert_eq!(report.bytes_delivered, 30_005);
    assert_transfer_clean(&report);
    server.stop().await;
}

#[tokio::test]
async fn transfer_cut_off_by_its_duration_is_cancelled_and_what_was_sent_arrives() {
    let server = TestServer::start(bench_config()).await;
    // 102,400 chunks one at a time: far more than 0.3 s allows.
    let report = transfer(&format!(
        "transfer --server {} --recipients 2 --size 100MiB --chunk-bytes 1KiB --window 1 --duration 0.3",
        server.addr
    ))
    .await;
    assert_eq!(
        (
            report.files_offered,
            report.files_finished,
            report.files_cancelled
        ),
        (1, 0, 1)
    );
    assert!(report.chunks_sent > 0 && report.chunks_sent < 102_400);
    assert_eq!(report.expected_deliveries, 2 * report.chunks_sent);
    assert_eq!(report.delivered, report.expected_deliveries);
    assert_transfer_clean(&report);
    server.stop().await;
}

#[tokio::test]
async fn transfer_offers_refused_by_the_server_fail_the_run() {
    let server = TestServer::start(Config {
        max_file_bytes: 1000,
        ..bench_config()
    })
    .await;
    let report = transfer(&format!(
        "transfer --server {} --size 1001 --chunk-bytes 100",
        server.addr
    ))
    .await;
    assert_eq!((report.files_offered, report.delivered), (1, 0));
    assert_eq!(
        report.failures,
        [
            "the server refused the offer: 01 Files may be at most 1000 bytes.",
            "requests refused with 9a 01/02 (raise the server's rate limit for benchmarking): 1"
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn idle_connections_outlive_the_idle_timeout_and_the_probe_is_answered() {
    // Without heartbeats every connection would be cut after 1.5 s.
    let server = TestServer::start(Config {
        idle_timeout_secs: 1.5,
        ..bench_config()
    })
    .await;
    let report = idle(&format!(
        "idle --server {} --server-pid {} --connections 20 --hold 2 --settle 0.2 --keepalive 0.25",
        server.addr,
        std::process::id()
    ))
    .await;
    assert_eq!(report.registered, 20);
    assert_eq!(report.disconnects, 0, "{report:#?}");
    assert_eq!(report.alive_at_end, 20);
    assert!(report.probe_answered, "{report:#?}");
    assert!(report.server_rss_bytes_per_conn.is_some());
    assert_eq!(report.server_sample.alive_after, Some(true));
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    server.stop().await;
}

#[tokio::test]
async fn a_full_server_fails_the_idle_probe_and_the_command_exits_3() {
    let server = TestServer::start(Config {
        max_connections: 3,
        ..bench_config()
    })
    .await;
    let args = format!(
        "bench idle --server {} --connections 3 --hold 0.2 --settle 0.1 --json",
        server.addr
    );
    let output = tokio::task::spawn_blocking(move || parlor(&args))
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["registered"], 3);
    assert_eq!(report["probe_answered"], false);
    assert!(
        stderr(&output)
            .contains("FAILED: the probe was not answered: HELLO refused (02): Server full"),
        "{}",
        stderr(&output)
    );
    server.stop().await;
}

#[test]
fn only_loopback_servers_are_loaded() {
    let output = parlor("bench fanout --server 192.168.1.10:4170");
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("192.168.1.10:4170 is not a loopback address"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn nonsense_options_are_refused_before_connecting() {
    for (args, complaint) in [
        ("bench fanout --members 1", "--members: at least 2"),
        ("bench dm --message-bytes 20", "--message-bytes: from 54"),
        ("bench idle --settle 5 --hold 1", "--settle: at most --hold"),
        ("bench fanout --duration 0", "--duration: a positive number"),
        (
            "bench secure-fanout --rsa-bits 1024",
            "--rsa-bits: from 2048 to 4096",
        ),
        ("bench secure-fanout --pool 4", "--pool: from 8"),
        (
            "bench secure-fanout --rooms 200 --members 100",
            "--rooms × --members: at most 10000",
        ),
        (
            "bench secure-fanout --join-every 0",
            "--join-every: a positive number of seconds",
        ),
        (
            "bench secure-fanout --message-bytes 65420",
            "--message-bytes: at most 65410",
        ),
        (
            "bench transfer --recipients 0",
            "--recipients: from 1 to 999",
        ),
        ("bench transfer --chunk-bytes 0", "--chunk-bytes: from 1"),
        ("bench transfer --size 1G", "unknown unit `G`"),
        ("bench transfer --window 0", "--window: from 1 to 64"),
        (
            "bench transfer --tls-pin SHA256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "--tls-pin: transfer runs over plain TCP only",
        ),
    ] {
        let output = parlor(args);
        assert_eq!(output.status.code(), Some(2), "{args}");
        assert!(
            stderr(&output).contains(complaint),
            "{args}: {}",
            stderr(&output)
        );
    }
}

fn parlor(args: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_parlor"))
        .args(args.split_whitespace())
        .output()
        .expect("run parlor")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

// ---------------------------------------------------------------------------
// A relay that mistreats chosen deliveries

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Never forwarded.
    Drop,
    /// Forwarded twice.
    Duplicate,
    /// Held back until the sender's next delivery to the same receiver has
    /// been forwarded: the two swap places.
    Delay,
}

/// (sender, receiver, ordinal of the delivery from sender to receiver).
type FaultKey = (Bytes, Bytes, u64);

/// Sits between the bench and a server: forwards every byte, except that
/// it applies the faults to the deliveries it names. The receiver of a
/// connection is known from the NICK it sends.
struct FaultyRelay {
    addr: SocketAddr,
}

impl FaultyRelay {
    async fn start(server: SocketAddr, faults: &[((&str, &str, u64), Fault)]) -> FaultyRelay {
        let faults: HashMap<FaultKey, Fault> = faults
            .iter()
            .map(|&((sender, receiver, ordinal), fault)| {
                let key = (
                    Bytes::copy_from_slice(sender.as_bytes()),
                    Bytes::copy_from_slice(receiver.as_bytes()),
                    ordinal,
                );
                (key, fault)
            })
            .collect();
        let faults = Arc::new(faults);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let upstream = TcpStream::connect(server).await.unwrap();
                tokio::spawn(relay(client, upstream, Arc::clone(&faults)));
            }
        });
        FaultyRelay { addr }
    }
}

async fn relay(client: TcpStream, upstream: TcpStream, faults: Arc<HashMap<FaultKey, Fault>>) {
    client.set_nodelay(true).unwrap();
    upstream.set_nodelay(true).unwrap();
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = upstream.into_split();
    let receiver = Arc::new(Mutex::new(Bytes::new()));

    let requests = async {
        let mut input = BytesMut::new();
        while let Some(frame) = read_frame(&mut from_client, &mut input).await {
            if frame.opcode == opcode::NICK {
                if let Ok(ClientMessage::Nick { name }) = ClientMessage::parse(&frame) {
                    *receiver.lock().unwrap() = name;
                }
            }
            to_server.write_all(&frame.to_bytes()).await.unwrap();
        }
        let _ = to_server.shutdown().await;
    };
    let deliveries = async {
        let mut input = BytesMut::new();
        let mut ordinals: HashMap<Bytes, u64> = HashMap::new();
        let mut delayed: HashMap<Bytes, Bytes> = HashMap::new();
        while let Some(frame) = read_frame(&mut from_server, &mut input).await {
            let bytes = frame.to_bytes();
            let sender = match ServerMessage::parse(&frame) {
                Ok(ServerMessage::RoomMessage { sender, .. })
                | Ok(ServerMessage::DirectMessage { sender, .. }) => sender,
                _ => {
                    to_client.write_all(&bytes).await.unwrap();
                    continue;
                }
            };
            let ordinal = ordinals.entry(sender.clone()).or_insert(0);
            let key = (sender.clone(), receiver.lock().unwrap().clone(), *ordinal);
            *ordinal += 1;
            match faults.get(&key) {
                Some(Fault::Drop) => {}
                Some(Fault::Duplicate) => {
                    to_client.write_all(&bytes).await.unwrap();
                    to_client.write_all(&bytes).await.unwrap();
                }
                Some(Fault::Delay) => {
                    delayed.insert(sender, bytes);
                }
                None => {
                    to_client.write_all(&bytes).await.unwrap();
                    if let Some(held) = delayed.remove(&sender) {
                        to_client.write_all(&held).await.unwrap();
                    }
                }
            }
        }
        let _ = to_client.shutdown().await;
    };
    tokio::join!(requests, deliveries);
}

/// The next whole frame from `reader`; `None` at the end of the stream.
async fn read_frame(reader: &mut (impl AsyncRead + Unpin), input: &mut BytesMut) -> Option<Frame> {
    let mut codec = FrameCodec::new(1 << 20);
    loop {
        if let Some(frame) = codec.decode(input).expect("well-formed frames") {
            return Some(frame);
        }
        match reader.read_buf(input).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}
