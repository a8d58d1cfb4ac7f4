//! Shared helpers for the integration tests: an in-process server on a free
//! loopback port, and a raw client that sees every byte the server sends.

#![allow(dead_code, unused_imports)] // each test binary uses its own subset of the helpers

pub(crate) mod messages;
pub(crate) mod nats;
pub(crate) mod process;

pub(crate) use messages::*;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use parlor_proto::rules::{self, Reader};
use parlor_proto::{ClientMessage, Frame, HEADER_LEN};
use parlor_server::config::Config;
use parlor_server::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long a test waits for something that should happen.
pub(crate) const PATIENCE: Duration = Duration::from_secs(5);

/// Settings for tests: loopback, any free port, and argon2 parameters cheap
/// enough that a debug build hashes in microseconds. Tests that need the
/// real defaults set them explicitly.
///
/// No TLS port (tests that want one say so, with a state directory of their
/// own), and the secure extension allowed on the plain port, which is where
/// the tests of the extension itself speak it (their channel binding is then
/// `PLAIN_CHANNEL_BINDING`).
pub(crate) fn test_config() -> Config {
    Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        tls_listen: None,
        allow_secure_on_plain: true,
        argon2_memory_kib: 64,
        argon2_iterations: 1,
        ..Config::default()
    }
}

pub(crate) struct TestServer {
    pub addr: SocketAddr,
    /// The TLS port, when the config has one.
    pub tls_addr: Option<SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    pub(crate) async fn start(config: Config) -> TestServer {
        let server = Server::bind(config).await.expect("bind test server");
        let addr = server.local_addr().unwrap();
        let tls_addr = server.tls_addr();
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stop.await;
        }));
        TestServer {
            addr,
            tls_addr,
            shutdown: Some(shutdown),
            task,
        }
    }

    pub(crate) async fn client(&self) -> Client {
        Client::connect(self.addr).await
    }

    /// A client that has said HELLO; returns it with its name.
    pub(crate) async fn greeted(&self) -> (Client, Vec<u8>) {
        let mut client = self.client().await;
        let name = client.hello().await;
        (client, name)
    }

    /// Asks the server to shut down and waits until it has.
    pub(crate) async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("server stops in time")
            .expect("server task")
            .expect("server run");
    }
}

/// Builds the wire bytes of a frame.
pub(crate) fn frame_bytes(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut bytes = (payload.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&[0x04, 0x17, opcode]);
    bytes.extend_from_slice(payload);
    bytes
}

/// `9a <status> <data>` as wire bytes.
pub(crate) fn response_bytes(status: u8, data: &[u8]) -> Vec<u8> {
    let mut payload = vec![status];
    payload.extend_from_slice(data);
    frame_bytes(0x9a, &payload)
}

/// `9a 00` with no data.
pub(crate) fn ok_bytes() -> Vec<u8> {
    response_bytes(0, b"")
}

/// The real client's greeting.
pub(crate) const GREETING: &[u8] = "Xin chào. Bonghjornu.".as_bytes();

pub(crate) struct Client {
    stream: TcpStream,
    buffer: BytesMut,
    /// Set once the client registered a key: from then on it may receive
    /// the secure extension's opcodes. Until then every frame must be one
    /// the legacy client accepts.
    pub secure: bool,
}

impl Client {
    pub(crate) async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buffer: BytesMut::new(),
            secure: false,
        }
    }

    pub(crate) async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send");
    }

    pub(crate) async fn send(&mut self, message: &ClientMessage) {
        let bytes = message.to_frame().to_bytes();
        self.send_raw(&bytes).await;
    }

    /// The exact wire bytes of the next frame, checked against the rules
    /// for every server frame (a legacy client's, unless `secure`); panics
    /// on close or timeout.
    pub(crate) async fn recv_raw(&mut self) -> Vec<u8> {
        self.recv_raw_within(PATIENCE).await
    }

    /// [`Client::recv_raw`], for a reply that may take longer than
    /// [`PATIENCE`]: one waiting on a cluster's store mid-election, say.
    pub(crate) async fn recv_raw_within(&mut self, within: Duration) -> Vec<u8> {
        let frame = tokio::time::timeout(within, self.next_frame())
            .await
            .expect("timed out waiting for a frame")
            .expect("connection closed while waiting for a frame");
        if self.secure {
            check_secure_frame(&frame);
        } else {
            check_legacy_frame(&frame);
        }
        frame
    }

    pub(crate) async fn recv(&mut self) -> Frame {
        let raw = self.recv_raw().await;
        Frame::new(raw[HEADER_LEN - 1], raw[HEADER_LEN..].to_vec())
    }

    /// Asserts that the next frame is exactly `expected`.
    pub(crate) async fn expect(&mut self, expected: &[u8]) {
        let got = self.recv_raw().await;
        assert!(
            got == expected,
            "\n got: {}\nwant: {}",
            show_frame(&got),
            show_frame(expected)
        );
    }

    /// Sends a message and asserts the exact reply.
    pub(crate) async fn request(&mut self, message: &ClientMessage, expected: &[u8]) {
        self.send(message).await;
        self.expect(expected).await;
    }

    /// Sends the real client's HELLO and returns the name it was given.
    pub(crate) async fn hello(&mut self) -> Vec<u8> {
        self.send_raw(&frame_bytes(0x9b, GREETING)).await;
        let reply = self.recv_raw().await;
        assert_eq!(&reply[4..8], &[0x04, 0x17, 0x9a, 0x00], "{}", hex(&reply));
        reply[8..].to_vec()
    }

    /// Asserts that no frame arrives within `wait`.
    pub(crate) async fn expect_silence(&mut self, wait: Duration) {
        if let Ok(frame) = tokio::time::timeout(wait, self.next_frame()).await {
            panic!("expected silence, got {:?}", frame.map(|f| hex(&f)));
        }
    }

    /// Asserts that the server closes the connection (after any frames
    /// already read) within `wait`, without sending anything more.
    pub(crate) async fn expect_closed_within(&mut self, wait: Duration) {
        match tokio::time::timeout(wait, self.next_frame()).await {
            Ok(None) => {}
            Ok(Some(frame)) => panic!("expected close, got frame {}", hex(&frame)),
            Err(_) => panic!("connection still open after {wait:?}"),
        }
    }

    pub(crate) async fn expect_closed(&mut self) {
        self.expect_closed_within(PATIENCE).await;
    }

    /// Reads every frame until the server closes the connection; panics if
    /// it is still open after [`PATIENCE`].
    pub(crate) async fn frames_until_closed(&mut self) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while let Some(frame) = tokio::time::timeout_at(deadline, self.next_frame())
            .await
            .expect("the server never closed the connection")
        {
            frames.push(frame);
        }
        frames
    }

    /// Reads one whole frame; `None` when the server closes (or resets) the
    /// connection first.
    async fn next_frame(&mut self) -> Option<Vec<u8>> {
        loop {
            if self.buffer.len() >= HEADER_LEN {
                let len = u32::from_be_bytes(self.buffer[..4].try_into().unwrap()) as usize;
                if self.buffer.len() >= HEADER_LEN + len {
                    let frame = self.buffer[..HEADER_LEN + len].to_vec();
                    self.buffer.advance(HEADER_LEN + len);
                    return Some(frame);
                }
            }
            match self.stream.read_buf(&mut self.buffer).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Closes the connection from the client side.
    pub(crate) async fn close(mut self) {
        let _ = self.stream.shutdown().await;
    }
}

/// Asserts the legacy client's rules (PROTOCOL.md §2) of a frame to a legacy
/// connection.
pub(crate) fn check_legacy_frame(frame: &[u8]) {
    if let Err(broken) = rules::check(frame, Reader::Legacy) {
        panic!("{broken}: {}", hex(frame));
    }
}

/// Asserts the same of a frame to a secure client, for which the secure
/// extension's opcodes (PROTOCOL.md §12.6) are allowed too.
pub(crate) fn check_secure_frame(frame: &[u8]) {
    if let Err(broken) = rules::check(frame, Reader::Secure) {
        panic!("{broken}: {}", hex(frame));
    }
}

/// A frame in hex, cut short after 48 bytes so a 64 KiB frame stays readable.
pub(crate) fn show_frame(bytes: &[u8]) -> String {
    if bytes.len() <= 48 {
        hex(bytes)
    } else {
        format!("{} ... ({} bytes)", hex(&bytes[..48]), bytes.len())
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}
