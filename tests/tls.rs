//! The TLS transport against the real binary: `parlor serve` with its TLS
//! port, raw TLS clients made with rustls, `parlor client` processes, and a
//! relay that plays the man in the middle with a certificate of its own.
//!
//! Certificates come from the server itself (a self-signed one in its state
//! directory) or from rcgen, made here. Every server, client and relay runs
//! on loopback ports of its own, and every file lives in a scratch
//! directory of the test's.
//!
//! The secure extension's own messages are not checked here (they are
//! `secure_server.rs`'s and `reference_client.rs`'s): what a TLS connection
//! carries is checked with legacy frames, and what the client did with its
//! connection events and its `known_servers` file.

mod support;
use support::process::ServerProcess;
use support::*;

#[path = "reference_client/process.rs"]
mod process;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use parlor_proto::tls::TlsFingerprint;
use parlor_proto::{ClientMessage, HEADER_LEN};
use parlor_server::config::Config;
use process::ClientProcess;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Small keys keep the clients' key generation fast.
const RSA: [&str; 2] = ["--rsa-bits", "2048"];

/// A directory of the test's own, removed when it is dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "parlor-tls-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).to_str().unwrap().to_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server with a TLS port on a free loopback port, keeping what it makes
/// in `state_dir`.
fn tls_config(state_dir: &Path) -> Config {
    Config {
        tls_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        state_dir: Some(state_dir.to_owned()),
        allow_secure_on_plain: false,
        ..test_config()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn fingerprint_of(cert: &CertificateDer<'_>) -> String {
    let parsed = ParsedCertificate::try_from(cert).unwrap();
    TlsFingerprint::of_spki(&parsed.subject_public_key_info()).to_string()
}

/// The fingerprint of the first certificate of a PEM file.
fn fingerprint_of_file(path: &Path) -> String {
    fingerprint_of(&read_certs(path)[0])
}

/// A certificate authority, and a certificate it issued for the loopback
/// names, each written as PEM into `dir` as `NAME-ca.pem`, `NAME-cert.pem`
/// and `NAME-key.pem`.
fn issue(dir: &Scratch, name: &str) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.distinguished_name
        .push(DnType::CommonName, format!("{name} test authority"));
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    std::fs::write(dir.path(&format!("{name}-ca.pem")), ca_cert.pem()).unwrap();
    std::fs::write(dir.path(&format!("{name}-cert.pem")), leaf_cert.pem()).unwrap();
    std::fs::write(
        dir.path(&format!("{name}-key.pem")),
        leaf_key.serialize_pem(),
    )
    .unwrap();
}

/// A rustls client that trusts exactly the certificates in `roots` (a
/// self-signed certificate is its own root).
fn client_trusting(roots: &Path) -> TlsConnector {
    let mut store = RootCertStore::empty();
    for cert in read_certs(roots) {
        store.add(cert).unwrap();
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// A client that reads and writes raw frames over TLS, checking every frame
/// it reads against the legacy client's rules, as `support::Client` does
/// over plain TCP.
struct TlsClient {
    stream: TlsStream<TcpStream>,
    buffer: BytesMut,
}

impl TlsClient {
    async fn connect(addr: SocketAddr, roots: &Path, name: &str) -> TlsClient {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let server = ServerName::try_from(name.to_owned()).unwrap();
        let stream = client_trusting(roots).connect(server, tcp).await.unwrap();
        TlsClient {
            stream,
            buffer: BytesMut::new(),
        }
    }

    /// The certificate the server presented.
    fn server_fingerprint(&self) -> String {
        fingerprint_of(&self.stream.get_ref().1.peer_certificates().unwrap()[0])
    }

    async fn send(&mut self, message: &ClientMessage) {
        self.stream.write_all(&wire(message)).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    async fn recv_raw(&mut self) -> Vec<u8> {
        let frame = tokio::time::timeout(PATIENCE, async {
            loop {
                if self.buffer.len() >= HEADER_LEN {
                    let len = u32::from_be_bytes(self.buffer[..4].try_into().unwrap()) as usize;
                    if self.buffer.len() >= HEADER_LEN + len {
                        let frame = self.buffer[..HEADER_LEN + len].to_vec();
                        self.buffer.advance(HEADER_LEN + len);
                        return frame;
                    }
                }
                let read = self.stream.read_buf(&mut self.buffer).await.unwrap();
                assert!(read > 0, "the server closed the TLS connection");
            }
        })
        .await
        .expect("a frame in time");
        check_legacy_frame(&frame);
        frame
    }

    async fn expect(&mut self, expected: &[u8]) {
        let got = self.recv_raw().await;
        assert!(
            got == expected,
            "\n got: {}\nwant: {}",
            show_frame(&got),
            show_frame(expected)
        );
    }

    async fn hello(&mut self) -> Vec<u8> {
        self.stream
            .write_all(&frame_bytes(0x9b, GREETING))
            .await
            .unwrap();
        let reply = self.recv_raw().await;
        assert_eq!(&reply[4..8], &[0x04, 0x17, 0x9a, 0x00], "{}", hex(&reply));
        reply[8..].to_vec()
    }
}

#[tokio::test]
async fn the_server_makes_a_self_signed_certificate_once_logs_its_key_and_keeps_it() {
    let scratch = Scratch::new("self-signed");
    let state = scratch.path("state");
    let config = tls_config(&state);

    let server = ServerProcess::start(&config, false);
    let (cert, key) = (state.join("tls-cert.pem"), state.join("tls-key.pem"));
    let logged = server.tls_fingerprint();
    assert_eq!(logged, fingerprint_of_file(&cert), "the key of the file");
    assert!(
        logged.starts_with("SHA256:") && logged.len() == 7 + 64,
        "{logged}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the private key is the owner's alone");
    }
    // The certificate names the loopback addresses: a client that trusts
    // it verifies it for 127.0.0.1 and for localhost, and sees the logged key.
    let tls = server.tls_addr.unwrap();
    for name in ["127.0.0.1", "localhost"] {
        let client = TlsClient::connect(tls, &cert, name).await;
        assert_eq!(client.server_fingerprint(), logged, "{name}");
    }
    let files = |dir: &Path| -> Vec<(String, Vec<u8>)> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_str().unwrap().to_owned();
                (name, std::fs::read(&path).unwrap())
            })
            .collect();
        files.sort();
        files
    };
    let made = files(&state);
    assert_eq!(made.len(), 2, "a certificate and a key, nothing else");
    drop(server);

    let again = ServerProcess::start(&config, false);
    assert_eq!(
        again.tls_fingerprint(),
        logged,
        "the same key on the next start"
    );
    assert_eq!(files(&state), made, "the files are kept as they were");
    assert!(!again.logs().contains("made a self-signed TLS certificate"));
    let client = TlsClient::connect(again.tls_addr.unwrap(), &cert, "127.0.0.1").await;
    assert_eq!(client.server_fingerprint(), logged);
}

#[tokio::test]
async fn a_configured_certificate_and_key_are_used_and_nothing_is_made() {
    let scratch = Scratch::new("configured");
    issue(&scratch, "site");
    let config = Config {
        tls_cert: Some(scratch.path("site-cert.pem")),
        tls_key: Some(scratch.path("site-key.pem")),
        ..tls_config(&scratch.path("state"))
    };
    let server = ServerProcess::start(&config, false);
    let expected = fingerprint_of_file(&scratch.path("site-cert.pem"));
    assert_eq!(server.tls_fingerprint(), expected);
    let mut client = TlsClient::connect(
        server.tls_addr.unwrap(),
        &scratch.path("site-ca.pem"),
        "localhost",
    )
    .await;
    assert_eq!(client.server_fingerprint(), expected);
    assert_eq!(client.hello().await, b"rand0");
    assert!(!scratch.path("state").exists(), "no certificate made");
}

#[tokio::test]
async fn a_legacy_client_and_a_tls_client_share_a_room() {
    let scratch = Scratch::new("shared-room");
    let server = ServerProcess::start(&tls_config(&scratch.path("state")), false);
    let cert = scratch.path("state/tls-cert.pem");

    let mut legacy = Client::connect(server.addr).await;
    assert_eq!(legacy.hello().await, b"rand0");
    legacy.request(&nick("lee"), &ok_bytes()).await;
    legacy.request(&join("lobby", ""), &ok_bytes()).await;

    let mut tls = TlsClient::connect(server.tls_addr.unwrap(), &cert, "127.0.0.1").await;
    assert_eq!(tls.hello().await, b"rand1");
    tls.send(&nick("tia")).await;
    tls.expect(&ok_bytes()).await;
    tls.send(&join("lobby", "")).await;
    tls.expect(&ok_bytes()).await;

    // Exactly the frames of the legacy protocol, both ways.
    tls.send(&list_users()).await;
    tls.expect(&names(&["lee", "tia"])).await;
    tls.send(&room_msg("lobby", "hello over TLS")).await;
    tls.expect(&ok_bytes()).await;
    legacy
        .expect(&relay("lobby", "tia", "hello over TLS"))
        .await;
    legacy
        .request(&room_msg("lobby", "hello in plain"), &ok_bytes())
        .await;
    tls.expect(&relay("lobby", "lee", "hello in plain")).await;
    legacy.request(&dm("tia", "psst"), &ok_bytes()).await;
    tls.expect(&dm_relay("lee", "psst")).await;
    tls.send(&dm("lee", "psst back")).await;
    tls.expect(&ok_bytes()).await;
    legacy.expect(&dm_relay("tia", "psst back")).await;
    legacy.request(&list_users(), &names(&["lee", "tia"])).await;
}

/// A man in the middle: it terminates TLS with a certificate of its own and
/// forwards what it decrypts to the real server over TLS. It records what
/// the client sent it, and why each handshake with a client failed.
struct Mitm {
    from_clients: Arc<Mutex<Vec<u8>>>,
    refused: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Mitm {
    async fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        upstream_cert: &Path,
        own: &Scratch,
    ) -> Mitm {
        issue(own, "mitm");
        let chain = read_certs(&own.path("mitm-cert.pem"));
        let key = PrivateKeyDer::from_pem_file(own.path("mitm-key.pem")).unwrap();
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let connector = client_trusting(upstream_cert);
        let listener = TcpListener::bind(listen)
            .await
            .expect("take over the server's port");
        let from_clients = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(Mutex::new(Vec::new()));
        let (seen, failures) = (Arc::clone(&from_clients), Arc::clone(&refused));
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let client = match acceptor.accept(tcp).await {
                    Ok(client) => client,
                    Err(err) => {
                        failures.lock().unwrap().push(err.to_string());
                        continue;
                    }
                };
                let tcp = TcpStream::connect(upstream).await.unwrap();
                let name = ServerName::try_from("127.0.0.1").unwrap();
                let server = connector.connect(name, tcp).await.unwrap();
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    let (mut client_read, mut client_write) = tokio::io::split(client);
                    let (mut server_read, mut server_write) = tokio::io::split(server);
                    let up = async {
                        let mut chunk = [0u8; 4096];
                        while let Ok(read @ 1..) = client_read.read(&mut chunk).await {
                            seen.lock().unwrap().extend_from_slice(&chunk[..read]);
                            if server_write.write_all(&chunk[..read]).await.is_err() {
                                return;
                            }
                        }
                    };
                    let down = tokio::io::copy(&mut server_read, &mut client_write);
                    let _ = tokio::join!(up, down);
                });
            }
        });
        Mitm {
            from_clients,
            refused,
            task,
        }
    }
}

impl Drop for Mitm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn the_client_pins_the_server_key_on_first_use_and_refuses_a_man_in_the_middle() {
    let scratch = Scratch::new("pinning");
    let config = tls_config(&scratch.path("state"));
    let server = ServerProcess::start(&config, false);
    let tls = server.tls_addr.unwrap();
    let key = server.tls_fingerprint();
    let known_servers = scratch.path("data/known_servers");
    let data_dir = scratch.arg("data");
    let args = [&RSA[..], &["--data-dir", &data_dir]].concat();

    // First sight: the key is recorded and shown.
    let mut first = ClientProcess::spawn("first", &tls.to_string(), &args);
    let shown = first.expect(&[("event", "transport")]).await;
    assert_eq!(shown["tls"], true);
    assert_eq!(shown["fingerprint"], key.as_str());
    assert_eq!(shown["trust"], "first_use");
    assert_eq!(shown["known_servers"], known_servers.to_str().unwrap());
    first.expect(&[("event", "connected")]).await;
    first.quit().await;
    let pinned = format!("{tls} {key}\n");
    assert_eq!(std::fs::read_to_string(&known_servers).unwrap(), pinned);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&scratch.path("data")), 0o700);
        assert_eq!(mode(&known_servers), 0o600);
    }

    // The same key again: known, and nothing is added.
    let mut second = ClientProcess::spawn("second", &tls.to_string(), &args);
    let shown = second.expect(&[("event", "transport")]).await;
    assert_eq!(shown["trust"], "known");
    second.expect(&[("event", "connected")]).await;
    second.quit().await;
    assert_eq!(std::fs::read_to_string(&known_servers).unwrap(), pinned);

    // Someone takes over the server's address and relays to the real
    // server (started again elsewhere, with its own key) under a key of
    // their own.
    drop(server);
    let real = ServerProcess::start(&config, false);
    assert_eq!(real.tls_fingerprint(), key);
    let relay_dir = Scratch::new("mitm");
    let mitm = Mitm::start(
        tls,
        real.tls_addr.unwrap(),
        &scratch.path("state/tls-cert.pem"),
        &relay_dir,
    )
    .await;
    let forged = fingerprint_of_file(&relay_dir.path("mitm-cert.pem"));

    let mut victim = ClientProcess::spawn("victim", &tls.to_string(), &args);
    let refusal = victim.expect(&[("event", "error")]).await;
    let text = refusal["text"].as_str().unwrap();
    assert!(
        text.starts_with("Could not connect to the chat server."),
        "{text}"
    );
    assert!(text.contains("has changed"), "{text}");
    assert!(text.contains(&key), "the pinned key is shown: {text}");
    assert!(text.contains(&forged), "the presented key is shown: {text}");
    assert!(
        text.contains(&format!("{} line 1", known_servers.display())),
        "the line to edit is named: {text}"
    );
    victim.line("\\join lobby").await;
    victim.line("my secret").await;
    victim.line("\\msg rand0 my secret").await;
    let status = victim.end_input().await;
    assert!(status.success(), "{status}");
    assert!(
        victim
            .seen
            .iter()
            .all(|event| event["event"] != "connected"),
        "{:#?}",
        victim.seen
    );
    assert!(
        mitm.from_clients.lock().unwrap().is_empty(),
        "nothing reached the relay in the clear"
    );
    let broken_off = async {
        while mitm.refused.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(PATIENCE, broken_off)
        .await
        .expect("the client broke off the handshake with the relay");
    assert!(
        !real.logs().contains("\"message\":\"connected\""),
        "nothing was relayed"
    );
    assert_eq!(
        std::fs::read_to_string(&known_servers).unwrap(),
        pinned,
        "the pin stays as it was"
    );
}

#[tokio::test]
async fn a_certificate_from_the_ca_given_verifies_without_a_pin_and_another_ca_is_refused() {
    let scratch = Scratch::new("ca");
    issue(&scratch, "site");
    issue(&scratch, "other");
    let config = Config {
        tls_cert: Some(scratch.path("site-cert.pem")),
        tls_key: Some(scratch.path("site-key.pem")),
        ..tls_config(&scratch.path("state"))
    };
    let server = ServerProcess::start(&config, false);
    // By name: a certificate from an authority is checked against it.
    let address = format!("localhost:{}", server.tls_addr.unwrap().port());
    let data_dir = scratch.arg("data");

    let site_ca = scratch.arg("site-ca.pem");
    let args = [&RSA[..], &["--data-dir", &data_dir, "--ca", &site_ca]].concat();
    let mut trusting = ClientProcess::spawn("trusting", &address, &args);
    let shown = trusting.expect(&[("event", "transport")]).await;
    assert_eq!(shown["trust"], "ca");
    assert_eq!(shown["fingerprint"], server.tls_fingerprint().as_str());
    assert!(shown.get("known_servers").is_none(), "{shown}");
    trusting.expect(&[("event", "connected")]).await;
    trusting.quit().await;
    assert!(
        !scratch.path("data/known_servers").exists(),
        "nothing pinned"
    );

    let other_ca = scratch.arg("other-ca.pem");
    let args = [&RSA[..], &["--data-dir", &data_dir, "--ca", &other_ca]].concat();
    let mut refusing = ClientProcess::spawn("refusing", &address, &args);
    let refusal = refusing.expect(&[("event", "error")]).await;
    let text = refusal["text"].as_str().unwrap();
    assert!(text.contains("certificate was refused"), "{text}");
    assert!(
        text.contains(&other_ca),
        "the authorities tried are named: {text}"
    );
    assert!(refusing.end_input().await.success());
    assert!(refusing
        .seen
        .iter()
        .all(|event| event["event"] != "connected"));
    assert!(
        !scratch.path("data/known_servers").exists(),
        "no pin as a way round"
    );
}

/// The content type of each TLS record in `bytes`, which must be TLS
/// records and nothing else.
fn tls_record_types(bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        assert!(
            rest.len() >= 5 && (0x14..=0x17).contains(&rest[0]) && rest[1] == 0x03,
            "not a TLS record: {}",
            show_frame(rest)
        );
        let end = 5 + u16::from_be_bytes([rest[3], rest[4]]) as usize;
        assert!(rest.len() >= end, "a cut record: {}", show_frame(rest));
        types.push(rest[0]);
        rest = &rest[end..];
    }
    types
}

/// What a [`recording_relay`] saw pass, each way.
#[derive(Clone, Default)]
struct Recorded {
    to_server: Arc<Mutex<Vec<u8>>>,
    to_client: Arc<Mutex<Vec<u8>>>,
}

/// Copies `from` to `to`, recording it, until either end closes.
async fn copy_recording(
    mut from: impl AsyncReadExt + Unpin,
    mut to: impl AsyncWriteExt + Unpin,
    record: &Mutex<Vec<u8>>,
) {
    let mut chunk = [0u8; 4096];
    while let Ok(read @ 1..) = from.read(&mut chunk).await {
        record.lock().unwrap().extend_from_slice(&chunk[..read]);
        if to.write_all(&chunk[..read]).await.is_err() {
            return;
        }
    }
}

/// Relays bytes between clients and `upstream` unchanged, recording what
/// passes each way.
async fn recording_relay(upstream: SocketAddr) -> (SocketAddr, Recorded) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let recorded = Recorded::default();
    let seen = recorded.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = TcpStream::connect(upstream).await.unwrap();
            let seen = seen.clone();
            tokio::spawn(async move {
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                let up = copy_recording(client_read, server_write, &seen.to_server);
                let down = copy_recording(server_read, client_write, &seen.to_client);
                tokio::join!(up, down);
            });
        }
    });
    (addr, recorded)
}

#[tokio::test]
async fn the_client_speaks_the_secure_extension_on_plain_tcp_only_when_told_to() {
    let scratch = Scratch::new("plain");
    // A test server that lets plain connections be secure.
    let config = Config {
        allow_secure_on_plain: true,
        ..test_config()
    };
    let server = ServerProcess::start(&config, false);
    let (relay, recorded) = recording_relay(server.addr).await;
    let data_dir = scratch.arg("data");

    let args = [&RSA[..], &["--data-dir", &data_dir]].concat();
    let mut default = ClientProcess::spawn("default", &relay.to_string(), &args);
    let refusal = default.expect(&[("event", "error")]).await;
    let text = refusal["text"].as_str().unwrap();
    assert!(text.contains("does not speak TLS"), "{text}");
    assert!(text.contains("--insecure-transport"), "{text}");
    default.line("hello").await;
    assert!(default.end_input().await.success());
    assert!(default
        .seen
        .iter()
        .all(|event| event["event"] != "connected"));
    {
        // A ClientHello (and perhaps the alert that gave up) and nothing
        // else: no parlor frame, and so no REGISTER_KEY, left the client.
        let sent = recorded.to_server.lock().unwrap();
        let types = tls_record_types(&sent);
        assert_eq!(
            types.first(),
            Some(&0x16),
            "a handshake first: {}",
            show_frame(&sent)
        );
        assert!(
            types.iter().all(|kind| [0x15, 0x16].contains(kind)),
            "{types:?}"
        );
    }
    assert!(!server.logs().contains("key registered"));

    recorded.to_server.lock().unwrap().clear();
    let args = [&RSA[..], &["--data-dir", &data_dir, "--insecure-transport"]].concat();
    let mut insecure = ClientProcess::spawn("insecure", &relay.to_string(), &args);
    let shown = insecure.expect(&[("event", "transport")]).await;
    assert_eq!(shown["tls"], false);
    assert_eq!(shown["reason"], "insecure_transport");
    insecure.expect(&[("event", "connected")]).await;
    insecure.expect(&[("event", "key_registered")]).await;
    insecure.quit().await;
    let sent = recorded.to_server.lock().unwrap().clone();
    assert_eq!(&sent[4..7], &[0x04, 0x17, 0x9b], "a parlor HELLO first");
    assert!(!scratch.path("data/known_servers").exists());
}

#[tokio::test]
async fn a_silent_tls_handshake_blocks_nobody_counts_as_a_connection_and_is_cut_off() {
    let scratch = Scratch::new("silent");
    let config = Config {
        handshake_timeout_secs: 2.0,
        max_connections_per_ip: 3,
        ..tls_config(&scratch.path("state"))
    };
    let server = ServerProcess::start(&config, false);
    let (tls, cert) = (server.tls_addr.unwrap(), scratch.path("state/tls-cert.pem"));
    let started = std::time::Instant::now();

    // Connects to the TLS port and never says a word.
    let mut silent = TcpStream::connect(tls).await.unwrap();
    // Meanwhile two others connect, over TLS and in plain, and chat.
    let mut talker = TlsClient::connect(tls, &cert, "127.0.0.1").await;
    talker.hello().await;
    talker.send(&join("lobby", "")).await;
    talker.expect(&ok_bytes()).await;
    let mut legacy = Client::connect(server.addr).await;
    legacy.hello().await;
    legacy.request(&join("lobby", ""), &ok_bytes()).await;
    talker.send(&room_msg("lobby", "anyone?")).await;
    talker.expect(&ok_bytes()).await;
    legacy.expect(&relay("lobby", "rand1", "anyone?")).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "all that before the silent handshake timed out"
    );

    // The silent one holds the third place from this address.
    let mut fourth = Client::connect(server.addr).await;
    fourth
        .expect(&try_later(parlor_proto::text::TOO_MANY_FROM_ADDRESS))
        .await;
    fourth.expect_closed().await;

    // It is cut off at the handshake timeout...
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut byte)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1900), "{waited:?}");
    // ...which frees its place, and the others chat on.
    let mut fifth = Client::connect(server.addr).await;
    fifth.hello().await;
    legacy
        .request(&room_msg("lobby", "still here"), &ok_bytes())
        .await;
    talker.expect(&relay("lobby", "rand2", "still here")).await;
    assert!(
        server
            .logs()
            .contains("no complete frame within the handshake timeout"),
        "{}",
        server.logs()
    );
}

#[tokio::test]
async fn a_tls_connection_over_the_limit_is_told_why_over_tls() {
    let scratch = Scratch::new("full");
    let config = Config {
        max_connections: 1,
        ..tls_config(&scratch.path("state"))
    };
    let server = ServerProcess::start(&config, false);
    let cert = scratch.path("state/tls-cert.pem");
    let mut first = Client::connect(server.addr).await;
    first.hello().await;
    let mut refused = TlsClient::connect(server.tls_addr.unwrap(), &cert, "127.0.0.1").await;
    refused
        .expect(&try_later(parlor_proto::text::SERVER_FULL))
        .await;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(PATIENCE, refused.stream.read_to_end(&mut rest)).await;
    assert!(
        matches!(read, Ok(Ok(0))),
        "closed after the refusal: {read:?}"
    );
    first.request(&list_users(), &names(&["rand0"])).await;
}

#[tokio::test]
async fn a_burst_reaches_a_tls_member_in_a_few_records_not_one_per_frame() {
    const BURST: usize = 50;
    let scratch = Scratch::new("burst");
    let config = Config {
        rate_limit_messages: 10_000,
        ..tls_config(&scratch.path("state"))
    };
    let server = ServerProcess::start(&config, false);
    let (watched, recorded) = recording_relay(server.tls_addr.unwrap()).await;
    let cert = scratch.path("state/tls-cert.pem");
    let mut member = TlsClient::connect(watched, &cert, "127.0.0.1").await;
    member.hello().await;
    member.send(&join("lobby", "")).await;
    member.expect(&ok_bytes()).await;
    let mut sender = Client::connect(server.addr).await;
    let sender_name = sender.hello().await;
    sender.request(&join("lobby", ""), &ok_bytes()).await;
    let before = tls_record_types(&recorded.to_client.lock().unwrap()).len();

    // The whole burst in one write, as a busy sender's messages arrive.
    let burst: Vec<u8> = (0..BURST)
        .flat_map(|n| wire(&room_msg("lobby", format!("message {n:02}"))))
        .collect();
    sender.send_raw(&burst).await;
    for n in 0..BURST {
        let text = format!("message {n:02}");
        member.expect(&relay("lobby", &sender_name, &text)).await;
        sender.expect(&ok_bytes()).await;
    }
    let records = tls_record_types(&recorded.to_client.lock().unwrap()).len() - before;
    assert!(
        records <= BURST / 10,
        "{BURST} frames came in {records} TLS records"
    );
}
