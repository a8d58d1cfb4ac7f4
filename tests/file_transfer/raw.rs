//! A raw secure client for the file-transfer tests: it registers a real
//! key, unwraps its room keys, and says exactly what a test tells it to
//! (chunks with a flipped byte, acks never sent, a connection dropped
//! half-way), which the reference client never would.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parlor_crypto::envelope::Kind;
use parlor_crypto::file::{chunk_count, chunk_span, sign_offer, FileKeys, OfferContext};
use parlor_crypto::identity::SIGNATURE_LEN;
use parlor_crypto::{Identity, IssuedKey};
use parlor_proto::secure::{room_key_label, PLAIN_CHANNEL_BINDING};
use parlor_proto::transfer::{FileMeta, FileNotice, FileRequest, FILE_FLAG_ENCRYPTED};
use parlor_proto::{ClientMessage, FrameCodec, SecureMessage, ServerMessage};
use sha2::{Digest, Sha256};
use std::cell::Cell;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long to wait for a frame that should come: generous, it only
/// guards against a hang.
const PATIENCE: Duration = Duration::from_secs(30);

pub(crate) struct Raw {
    pub name: Vec<u8>,
    identity: Identity,
    stream: TcpStream,
    buffer: BytesMut,
    codec: FrameCodec,
    /// Frames read but not asked for yet, in order.
    backlog: VecDeque<ServerMessage>,
    room_keys: HashMap<(Vec<u8>, u32), IssuedKey>,
    /// The counter of the last offer: offers count like messages.
    counter: Cell<u64>,
}

/// A file as a raw sender offers it.
pub(crate) struct RawFile {
    pub meta: FileMeta,
    pub keys: Option<FileKeys>,
    pub data: Vec<u8>,
}

impl RawFile {
    /// Chunk `index` as it goes on the wire, sealed if the file is.
    pub(crate) fn chunk(&self, index: u32) -> Bytes {
        let (offset, len) = chunk_span(self.meta.size, self.meta.chunk_size, index);
        let plain = &self.data[offset as usize..offset as usize + len];
        match &self.keys {
            Some(keys) => keys.seal_chunk(index, self.meta.chunk_count, plain).into(),
            None => Bytes::copy_from_slice(plain),
        }
    }
}

impl Raw {
    /// Connects, says HELLO, takes `nick` and registers a fresh identity
    /// (over plain TCP, which the test server allows).
    pub(crate) async fn connect(addr: SocketAddr, nick: &str) -> Raw {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        let identity = tokio::task::spawn_blocking(|| Identity::generate(2048).unwrap())
            .await
            .unwrap();
        let mut raw = Raw {
            name: Vec::new(),
            identity,
            stream,
            buffer: BytesMut::new(),
            codec: FrameCodec::new(16 << 20),
            backlog: VecDeque::new(),
            room_keys: HashMap::new(),
            counter: Cell::new(0),
        };
        let hello = ClientMessage::Hello {
            greeting: Bytes::from_static(b"raw test client"),
        };
        assert_eq!(raw.request(&hello).await.0, 0);
        let nick_request = ClientMessage::Nick {
            name: Bytes::copy_from_slice(nick.as_bytes()),
        };
        assert_eq!(raw.request(&nick_request).await.0, 0);
        raw.name = nick.as_bytes().to_vec();
        let registration = raw
            .identity
            .registration(&PLAIN_CHANNEL_BINDING, nick.as_bytes());
        let (status, text) = raw.request(&ClientMessage::RegisterKey(registration)).await;
        assert_eq!(status, 0, "{text:?}");
        raw
    }

    pub(crate) async fn send(&mut self, message: &ClientMessage) {
        let bytes = message.to_frame().to_bytes();
        self.stream.write_all(&bytes).await.expect("send");
    }

    pub(crate) async fn send_file(&mut self, request: FileRequest) {
        let bytes = request.encode();
        self.stream.write_all(&bytes).await.expect("send");
    }

    /// Sends a request and returns its `9a`.
    pub(crate) async fn request(&mut self, message: &ClientMessage) -> (u8, Bytes) {
        self.send(message).await;
        self.response().await
    }

    /// The next `9a`, leaving other frames for later.
    pub(crate) async fn response(&mut self) -> (u8, Bytes) {
        self.next_where("a 9a", |message| match message {
            ServerMessage::Response { status, data } => Some((*status, data.clone())),
            _ => None,
        })
        .await
    }

    /// Joins `room`; panics unless the server agrees.
    pub(crate) async fn join(&mut self, room: &str) {
        let join = ClientMessage::Join {
            room: Bytes::copy_from_slice(room.as_bytes()),
            password: Bytes::new(),
        };
        let (status, text) = self.request(&join).await;
        assert_eq!(status, 0, "join {room}: {text:?}");
    }

    /// The first frame, from the backlog or the wire, for which `pick`
    /// says something; the frames passed over stay in the backlog.
    pub(crate) async fn next_where<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&ServerMessage) -> Option<T>,
    ) -> T {
        if let Some(at) = self.backlog.iter().position(|m| pick(m).is_some()) {
            let message = self.backlog.remove(at).unwrap();
            return pick(&message).unwrap();
        }
        let search = async {
            loop {
                let message = self.read().await?;
                if let Some(found) = pick(&message) {
                    return Some(found);
                }
                self.backlog.push_back(message);
            }
        };
        match tokio::time::timeout(PATIENCE, search).await {
            Ok(Some(found)) => found,
            Ok(None) => panic!("{}: closed while waiting for {what}", self.shown()),
            Err(_) => panic!(
                "{}: no {what} in {PATIENCE:?}; read {:#?}",
                self.shown(),
                self.backlog
            ),
        }
    }

    /// The next file notice matching `pick`.
    pub(crate) async fn notice<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&FileNotice) -> Option<T>,
    ) -> T {
        self.next_where(what, |message| match message {
            ServerMessage::File(notice) => pick(notice),
            _ => None,
        })
        .await
    }

    /// Waits for the key of `room` at an epoch of at least `epoch`.
    pub(crate) async fn room_key(&mut self, room: &str, epoch: u32) -> (u32, IssuedKey) {
        loop {
            let held = self
                .room_keys
                .iter()
                .filter(|((name, at), _)| name == room.as_bytes() && *at >= epoch)
                .max_by_key(|((_, at), _)| *at);
            if let Some(((_, at), key)) = held {
                return (*at, key.clone());
            }
            // Reading stores room keys as they come.
            let message = tokio::time::timeout(PATIENCE, self.read())
                .await
                .expect("a room key in time")
                .expect("open while waiting for a room key");
            self.backlog.push_back(message);
        }
    }

    /// A file offer of `data` in `room`, signed, and sealed under the room
    /// key `key` when there is one.
    pub(crate) fn room_offer(
        &self,
        room: &str,
        name: &str,
        data: Vec<u8>,
        chunk_size: u32,
        key: Option<(u32, &IssuedKey)>,
    ) -> RawFile {
        let mut nonce = [0; 16];
        rand::fill(&mut nonce);
        let keys = key.map(|(_, key)| FileKeys::derive(key, &nonce));
        let digest: [u8; 32] = Sha256::digest(&data).into();
        let manifest = keys.as_ref().map_or(Bytes::new(), |keys| {
            Bytes::copy_from_slice(&keys.seal_manifest(&digest, data.len() as u64))
        });
        self.counter.set(self.counter.get() + 1);
        let mut meta = FileMeta {
            name: Bytes::copy_from_slice(name.as_bytes()),
            size: data.len() as u64,
            chunk_size,
            chunk_count: chunk_count(data.len() as u64, chunk_size).unwrap(),
            flags: if key.is_some() {
                FILE_FLAG_ENCRYPTED
            } else {
                0
            },
            key_id: key.map_or(0, |(epoch, _)| epoch),
            nonce,
            manifest,
            counter: self.counter.get(),
            signature: [0; SIGNATURE_LEN],
        };
        let place = OfferContext {
            kind: Kind::Room,
            context: room.as_bytes(),
            sender: &self.name,
        };
        meta.signature = sign_offer(&self.identity, &place, &meta);
        RawFile { meta, keys, data }
    }

    /// Offers `file` to the room; returns its id once the server confirms.
    pub(crate) async fn offer(&mut self, file: &RawFile, window: u8) -> (u32, Vec<Bytes>) {
        self.send_file(FileRequest::Offer {
            target: Bytes::new(),
            meta: file.meta.clone(),
            window,
        })
        .await;
        let pending = self
            .notice("8a", |notice| match notice {
                FileNotice::Pending { id, skipped } => Some((*id, skipped.clone())),
                _ => None,
            })
            .await;
        let (status, text) = self.response().await;
        assert_eq!(status, 0, "offer: {text:?}");
        pending
    }

    /// Waits until everyone acknowledged at least `acked` chunks of `id`.
    pub(crate) async fn window(&mut self, id: u32, acked: u32) {
        self.notice(&format!("8d for {acked} chunks"), |notice| match notice {
            FileNotice::Window { id: of, acked: got } if *of == id && *got >= acked => Some(()),
            _ => None,
        })
        .await;
    }

    fn shown(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }

    /// Reads one frame; `None` when the server closed.
    async fn read(&mut self) -> Option<ServerMessage> {
        loop {
            if let Some(frame) = self.codec.decode(&mut self.buffer).expect("a valid frame") {
                let message = ServerMessage::parse(&frame).expect("a known server message");
                if let ServerMessage::Secure(SecureMessage::RoomKey {
                    room,
                    incarnation,
                    epoch,
                    wrapped,
                }) = &message
                {
                    let label =
                        room_key_label(room, *incarnation, *epoch, self.identity.fingerprint());
                    let key = self.identity.unwrap_key(wrapped, &label).unwrap();
                    self.room_keys.insert((room.to_vec(), *epoch), key);
                }
                return Some(message);
            }
            match self.stream.read_buf(&mut self.buffer).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Drops the connection at once.
    pub(crate) async fn close(mut self) {
        let _ = self.stream.shutdown().await;
    }
}
