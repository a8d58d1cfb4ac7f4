//! A TCP relay between one client and the server: it records every frame in
//! both directions, and can change what the server sends the client, the
//! way someone on the path could.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use parlor_proto::secure::SecureMessage;
use parlor_proto::{Frame, FrameCodec, FrameError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// What to do to the next frame of one opcode from the server.
#[derive(Clone, Debug)]
pub(crate) enum Tamper {
    /// A ROOM_MSG (`15`): flip one bit of the envelope's first ciphertext
    /// byte.
    FlipCiphertextByte,
    /// Deliver it twice.
    Duplicate,
    /// A ROOM_KEY (`84`): keep its room, incarnation and epoch, but carry
    /// the wrapped key of this earlier `84` instead: a genuine wrap, moved.
    WrapOf(Frame),
}

pub(crate) struct Relay {
    pub addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    inject: mpsc::UnboundedSender<Vec<u8>>,
}

#[derive(Default)]
struct Log {
    to_client: Vec<Frame>,
    to_server: Vec<Frame>,
    /// The opcode whose next frame to tamper with, and how.
    tamper: Option<(u8, Tamper)>,
}

impl Relay {
    /// Listens on a free loopback port and relays the first connection to
    /// `server`.
    pub(crate) async fn start(server: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Log::default()));
        let (inject, injected) = mpsc::unbounded_channel();
        tokio::spawn(relay(listener, server, Arc::clone(&log), injected));
        Relay { addr, log, inject }
    }

    /// Tampers with the next frame of `opcode` the server sends.
    pub(crate) fn tamper_next(&self, opcode: u8, tamper: Tamper) {
        self.log.lock().unwrap().tamper = Some((opcode, tamper));
    }

    /// Sends `bytes` to the client as if the server had.
    pub(crate) fn inject(&self, bytes: Vec<u8>) {
        self.inject.send(bytes).unwrap();
    }

    /// Every frame delivered to the client so far.
    pub(crate) fn to_client(&self) -> Vec<Frame> {
        self.log.lock().unwrap().to_client.clone()
    }

    /// Every frame the client sent so far.
    pub(crate) fn to_server(&self) -> Vec<Frame> {
        self.log.lock().unwrap().to_server.clone()
    }
}

async fn relay(
    listener: TcpListener,
    server: SocketAddr,
    log: Arc<Mutex<Log>>,
    injected: mpsc::UnboundedReceiver<Vec<u8>>,
) {
    let (client, _) = listener.accept().await.unwrap();
    let upstream = TcpStream::connect(server).await.unwrap();
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = upstream.into_split();
    tokio::join!(
        client_to_server(client_read, server_write, Arc::clone(&log)),
        server_to_client(server_read, client_write, log, injected),
    );
}

async fn client_to_server(from: OwnedReadHalf, mut to: OwnedWriteHalf, log: Arc<Mutex<Log>>) {
    let mut frames = FrameReader::new(from);
    while let Some(frame) = frames.next().await {
        log.lock().unwrap().to_server.push(frame.clone());
        if to.write_all(&frame.to_bytes()).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

async fn server_to_client(
    from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    log: Arc<Mutex<Log>>,
    mut injected: mpsc::UnboundedReceiver<Vec<u8>>,
) {
    let mut frames = FrameReader::new(from);
    loop {
        let deliveries = tokio::select! {
            frame = frames.next() => match frame {
                Some(frame) => tampered(frame, &log),
                None => break,
            },
            Some(bytes) = injected.recv() => {
                let mut buffer = BytesMut::from(&bytes[..]);
                vec![FrameCodec::new(usize::MAX).decode(&mut buffer).unwrap().unwrap()]
            }
        };
        for frame in deliveries {
            log.lock().unwrap().to_client.push(frame.clone());
            if to.write_all(&frame.to_bytes()).await.is_err() {
                return;
            }
        }
    }
    let _ = to.shutdown().await;
}

/// The frames to deliver for one from the server.
fn tampered(mut frame: Frame, log: &Mutex<Log>) -> Vec<Frame> {
    let tamper = {
        let mut log = log.lock().unwrap();
        match &log.tamper {
            Some((opcode, _)) if *opcode == frame.opcode => log.tamper.take().map(|(_, t)| t),
            _ => None,
        }
    };
    match tamper {
        None => vec![frame],
        Some(Tamper::Duplicate) => vec![frame.clone(), frame],
        Some(Tamper::FlipCiphertextByte) => {
            let mut payload = frame.payload.to_vec();
            let offset = first_ciphertext_byte(&payload);
            payload[offset] ^= 0x01;
            frame.payload = payload.into();
            vec![frame]
        }
        Some(Tamper::WrapOf(earlier)) => {
            let Ok(SecureMessage::RoomKey { wrapped, .. }) = SecureMessage::parse(&earlier) else {
                panic!("relay: not a ROOM_KEY: {earlier:?}");
            };
            let Ok(SecureMessage::RoomKey {
                room,
                incarnation,
                epoch,
                ..
            }) = SecureMessage::parse(&frame)
            else {
                panic!("relay: not a ROOM_KEY: {frame:?}");
            };
            let moved = SecureMessage::RoomKey {
                room,
                incarnation,
                epoch,
                wrapped,
            };
            let bytes = moved.encode();
            let mut buffer = BytesMut::from(&bytes[..]);
            vec![FrameCodec::new(usize::MAX)
                .decode(&mut buffer)
                .unwrap()
                .unwrap()]
        }
    }
}

/// Where the ciphertext starts in a relayed ROOM_MSG payload carrying an
/// envelope (PROTOCOL.md §12.7).
fn first_ciphertext_byte(payload: &[u8]) -> usize {
    let room_len = payload[0] as usize;
    let sender_len = payload[1 + room_len] as usize;
    let text = 1 + room_len + 1 + sender_len + 2;
    // version, kind, context, sender (the same names), epoch, counter
    let header = 2 + (1 + room_len) + (1 + sender_len) + 4 + 8;
    text + header + 16 + 2
}

struct FrameReader {
    read: OwnedReadHalf,
    buffer: BytesMut,
    codec: FrameCodec,
}

impl FrameReader {
    fn new(read: OwnedReadHalf) -> FrameReader {
        FrameReader {
            read,
            buffer: BytesMut::new(),
            codec: FrameCodec::new(usize::MAX),
        }
    }

    /// The next frame; `None` once the peer closes. Cancel-safe.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            match self.codec.decode(&mut self.buffer) {
                Ok(Some(frame)) => return Some(frame),
                Ok(None) => {}
                Err(FrameError::Io(_) | FrameError::Truncated) => return None,
                Err(err) => panic!("relay: {err}"),
            }
            match self.read.read_buf(&mut self.buffer).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }
}
