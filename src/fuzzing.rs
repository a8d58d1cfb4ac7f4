//! Fuzzing entry points. Each target in `fuzz/fuzz_targets/` is one call to
//! a function here, and `tests/fuzz_bodies.rs` runs the same functions over
//! the seed corpus and thousands of proptest inputs on stable Rust, so a
//! regression is caught without nightly.
//!
//! Both bodies take raw bytes, as libFuzzer hands them out, and give them
//! structure themselves: any byte string is a valid input, and a mutation
//! changes one decision rather than making the input unreadable.
//! [`DecoderInput`] and [`SessionEvent`] build such bytes for seeds and
//! property tests. Each body panics, with the broken invariant in the
//! message, on anything wrong.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio_util::codec::Decoder;

use crate::config::Config;
use crate::hub::harness::{fake_wrap, Harness};
use crate::hub::{Action, CloseReason, ConnId, PasswordJob};
use crate::protocol::secure::opcode as secure_opcode;
use crate::protocol::transfer::is_transfer_news;
use crate::protocol::transfer::opcode::FILE_CHUNK;
use crate::protocol::{
    opcode, ClientMessage, Frame, FrameCodec, FrameError, ServerMessage, HEADER_LEN, MAGIC,
    MAX_CLIENT_PAYLOAD,
};
use crate::replay::capture::{Capture, End, Moment, SentKind};

/// The `frame_decoder` input: a byte stream, the codec's limit, whether it
/// admits larger file chunks, and how the stream is cut into reads.
///
/// As bytes: `limit`, then a byte holding the number of read sizes (low
/// four bits) and the chunk flag (bit 4), the sizes, and the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecoderInput {
    /// The codec's payload limit; 0 means the protocol's own maximum.
    pub limit: u8,
    /// Whether the codec admits file chunks (opcode `86`) of up to twice
    /// the limit, as for a connection that is sending a file.
    pub large_chunks: bool,
    /// Read sizes, used in turn: a byte `n` reads `n + 1` bytes. None means
    /// the whole stream in one read.
    pub chunks: Vec<u8>,
    pub stream: Vec<u8>,
}

impl DecoderInput {
    pub fn from_bytes(data: &[u8]) -> DecoderInput {
        let limit = data.first().copied().unwrap_or(0);
        let count = data.get(1).map_or(0, |count| usize::from(count % 16));
        let large_chunks = data.get(1).is_some_and(|flags| flags & 0x10 != 0);
        let rest = data.get(2..).unwrap_or_default();
        let (chunks, stream) = rest.split_at(count.min(rest.len()));
        DecoderInput {
            limit,
            large_chunks,
            chunks: chunks.to_vec(),
            stream: stream.to_vec(),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        assert!(self.chunks.len() < 16, "at most 15 chunk sizes");
        let flags = self.chunks.len() as u8 | if self.large_chunks { 0x10 } else { 0 };
        let mut bytes = vec![self.limit, flags];
        bytes.extend_from_slice(&self.chunks);
        bytes.extend_from_slice(&self.stream);
        bytes
    }

    fn max_payload(&self) -> usize {
        match self.limit {
            0 => MAX_CLIENT_PAYLOAD,
            limit => usize::from(limit),
        }
    }

    /// The codec as this input configures it.
    fn codec(&self) -> FrameCodec {
        let mut codec = FrameCodec::new(self.max_payload());
        if self.large_chunks {
            codec.allow_chunks(2 * self.max_payload());
        }
        codec
    }
}

/// The limit for a frame whose opcode is `opcode` (`None`: not yet read).
fn limit_for(codec: &FrameCodec, opcode: Option<u8>) -> usize {
    match opcode {
        Some(FILE_CHUNK) | None => codec.max_chunk_payload(),
        Some(_) => codec.max_payload(),
    }
}

/// How a stream ended for the codec.
#[derive(Debug, PartialEq, Eq)]
enum StreamEnd {
    /// Every byte was part of a whole frame.
    Clean,
    /// A frame was started and not finished.
    Unfinished,
    TooLong(u64),
    BadMagic([u8; 2]),
}

/// Feeds arbitrary bytes to [`FrameCodec`] in arbitrary reads.
///
/// Invariants: no panic; the codec never holds room for more than one
/// maximal frame and one read; however the stream is cut into reads, the
/// same frames decode and it ends the same way; every frame re-encodes to
/// exactly the bytes it came from; and every error is true of the bytes.
pub fn frame_decoder(data: &[u8]) {
    let input = DecoderInput::from_bytes(data);
    let codec = input.codec();
    let stream = &input.stream;
    let (whole, whole_end) = decode_in_reads(stream, &[], codec);
    let (split, split_end) = decode_in_reads(stream, &input.chunks, codec);
    assert_eq!(whole, split, "the reads changed the frames");
    assert_eq!(
        whole_end, split_end,
        "the reads changed how the stream ends"
    );

    let mut consumed = 0;
    for frame in &whole {
        let max = limit_for(&codec, Some(frame.opcode));
        assert!(frame.payload.len() <= max, "a frame over the limit");
        let bytes = frame.to_bytes();
        assert_eq!(
            stream.get(consumed..consumed + bytes.len()),
            Some(&bytes[..]),
            "a frame does not re-encode to its bytes"
        );
        consumed += bytes.len();
    }
    let rest = &stream[consumed..];
    let declared = rest
        .first_chunk::<4>()
        .map(|len| u64::from(u32::from_be_bytes(*len)));
    let max = limit_for(&codec, rest.get(HEADER_LEN - 1).copied());
    match whole_end {
        StreamEnd::Clean => assert!(rest.is_empty(), "bytes left after a clean end"),
        StreamEnd::Unfinished => {
            assert!(!rest.is_empty(), "unfinished with nothing left");
            if let Some(len) = declared {
                assert!(len <= max as u64, "an unfinished frame over the limit");
                assert!(rest.len() < HEADER_LEN + len as usize, "a whole frame left");
            }
            // The codec judges the magic once both of its bytes are there.
            if let Some(magic) = rest.get(4..6) {
                assert_eq!(magic, MAGIC, "an unfinished frame with a bad magic");
            }
        }
        StreamEnd::TooLong(len) => {
            assert_eq!(
                declared,
                Some(len),
                "the refused length is not the declared one"
            );
            assert!(len > max as u64, "a length within the limit was refused");
            if len <= codec.max_chunk_payload() as u64 {
                assert!(
                    rest.len() >= HEADER_LEN,
                    "refused before its opcode was read"
                );
            }
        }
        StreamEnd::BadMagic(magic) => {
            assert_eq!(
                rest.get(4..6),
                Some(&magic[..]),
                "the wrong bytes were blamed"
            );
            assert_ne!(magic, MAGIC, "a good magic was refused");
        }
    }
}

/// Decodes `stream` read by read, as a connection does, checking after
/// every call that the buffer never grows past one maximal frame and one
/// read (twice over, for the allocator's doubling).
fn decode_in_reads(stream: &[u8], chunks: &[u8], codec: FrameCodec) -> (Vec<Frame>, StreamEnd) {
    let read_sizes: Vec<usize> = match chunks {
        [] => vec![stream.len().max(1)],
        sizes => sizes.iter().map(|size| usize::from(*size) + 1).collect(),
    };
    let largest_read = read_sizes.iter().copied().max().unwrap_or(1);
    let max = codec.max_chunk_payload();
    let bound = 2 * (HEADER_LEN + max + largest_read);
    let mut codec = codec;
    let mut buffer = BytesMut::new();
    let mut frames = Vec::new();
    let mut rest = stream;
    let mut sizes = read_sizes.iter().cycle();
    let end_of = |err: FrameError| match err {
        FrameError::TooLong { len, .. } => StreamEnd::TooLong(len),
        FrameError::BadMagic(magic) => StreamEnd::BadMagic(magic),
        FrameError::Truncated => StreamEnd::Unfinished,
        FrameError::Io(err) => panic!("the codec made up an I/O error: {err}"),
    };
    loop {
        let at_eof = rest.is_empty();
        let size = sizes.next().copied().unwrap_or(1).min(rest.len());
        buffer.extend_from_slice(&rest[..size]);
        rest = &rest[size..];
        loop {
            let decoded = if at_eof {
                codec.decode_eof(&mut buffer)
            } else {
                codec.decode(&mut buffer)
            };
            assert!(
                buffer.capacity() <= bound,
                "the codec holds {} bytes of room for a limit of {max}",
                buffer.capacity()
            );
            match decoded {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) if at_eof => return (frames, StreamEnd::Clean),
                Ok(None) => break,
                Err(err) => return (frames, end_of(err)),
            }
        }
    }
}

/// One event of a `session` input: after `wait * wait` milliseconds (up to
/// 65 s) on the fake clock, something happens to one client's connection.
///
/// As bytes, an event is a byte holding the client (low three bits) and the
/// kind (next two bits), the `wait` byte, then: for a frame, the opcode, a
/// big-endian `u16` length and the payload; for raw bytes, a `u8` length and
/// the bytes; for the other kinds, nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionEvent {
    /// Which of [`SESSION_CLIENTS`] clients.
    pub client: u8,
    pub wait: u8,
    pub what: Happening,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Happening {
    /// A whole frame arrives, framed correctly (its payload may still be
    /// nonsense). A client that is not connected connects first.
    Frame { opcode: u8, payload: Vec<u8> },
    /// Raw bytes arrive: part of a frame, several frames, or garbage.
    Bytes(Vec<u8>),
    /// The client closes its connection.
    Close,
    /// The client's pending password job finishes.
    FinishHash,
}

/// Clients a session can have at once.
pub const SESSION_CLIENTS: u8 = 8;

impl SessionEvent {
    /// Encodes a sequence of events as a `session` input.
    pub fn encode(events: &[SessionEvent]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for event in events {
            assert!(
                event.client < SESSION_CLIENTS,
                "client {} out of range",
                event.client
            );
            let kind = match event.what {
                Happening::Frame { .. } => 0,
                Happening::Bytes(_) => 1,
                Happening::Close => 2,
                Happening::FinishHash => 3,
            };
            bytes.push(kind << 3 | event.client);
            bytes.push(event.wait);
            match &event.what {
                Happening::Frame { opcode, payload } => {
                    bytes.push(*opcode);
                    let len = u16::try_from(payload.len()).expect("payload over 65,535 bytes");
                    bytes.put_u16(len);
                    bytes.extend_from_slice(payload);
                }
                Happening::Bytes(raw) => {
                    bytes.push(u8::try_from(raw.len()).expect("over 255 raw bytes"));
                    bytes.extend_from_slice(raw);
                }
                Happening::Close | Happening::FinishHash => {}
            }
        }
        bytes
    }

    /// Decodes a `session` input; a cut-short last event is shortened or
    /// dropped, never refused.
    pub fn decode(mut data: &[u8]) -> Vec<SessionEvent> {
        fn take(count: usize, data: &mut &[u8]) -> Vec<u8> {
            let (taken, rest) = data.split_at(count.min(data.len()));
            *data = rest;
            taken.to_vec()
        }
        let mut events = Vec::new();
        while let [header, wait, rest @ ..] = data {
            let (client, kind, wait) = (header & 7, (header >> 3) & 3, *wait);
            data = rest;
            let what = match kind {
                0 => {
                    let [opcode, high, low] = take(3, &mut data)[..] else {
                        break;
                    };
                    let len = usize::from(u16::from_be_bytes([high, low]));
                    let payload = take(len, &mut data);
                    Happening::Frame { opcode, payload }
                }
                1 => {
                    let [len] = take(1, &mut data)[..] else {
                        break;
                    };
                    Happening::Bytes(take(usize::from(len), &mut data))
                }
                2 => Happening::Close,
                _ => Happening::FinishHash,
            };
            events.push(SessionEvent { client, wait, what });
        }
        events
    }
}

/// The settings sessions run with: the defaults, with limits small enough
/// for a short input to reach them (a full server, the rate limit).
pub fn session_config() -> Config {
    Config {
        max_connections: 6,
        rate_limit_messages: 3,
        ..Config::default()
    }
}

/// Feeds an arbitrary sequence of events from up to eight clients into the
/// hub on a fake clock, through the same [`Hub::receive`] path as the
/// server, with password jobs finishing when the input says.
///
/// Invariants, after every event: no panic; every request is answered
/// exactly once (and only requests are: no unsolicited `9a`, no reply to a
/// heartbeat); no zero-length or unparsable frame goes out; a relayed room
/// message reaches only members of that room, and never its sender;
/// nothing is sent to a closed connection; and the hub's state is
/// consistent (every room member exists, no room is empty, names are
/// unique).
///
/// [`Hub::receive`]: crate::hub::Hub::receive
pub fn session(data: &[u8]) {
    let mut session = Session::new();
    for event in SessionEvent::decode(data) {
        session.step(event);
    }
}

/// A client's connection, and what the driver knows about it.
struct Connection {
    id: ConnId,
    codec: FrameCodec,
    /// Bytes received and not yet decoded by the hub.
    buffer: BytesMut,
    /// A password job the hub asked for, not finished yet; until it is, the
    /// server reads nothing more from this connection.
    job: Option<PasswordJob>,
    /// Everything the client sent, and how much of it the hub has taken.
    sent: Vec<u8>,
    taken: usize,
    /// An independent count of the requests in what the hub has taken.
    oracle: FrameCodec,
    oracle_buffer: BytesMut,
    oracle_dead: bool,
    requests: usize,
    answered: usize,
    /// The opcodes of the requests not answered yet, oldest first (`None`
    /// for bytes that are not a frame), so that each `9a` is matched to
    /// the request it answers.
    unanswered: VecDeque<Option<u8>>,
    /// A REGISTER_KEY was answered `9a 00`: from then on the connection is
    /// secure and may get frames of the secure extension.
    secure: bool,
}

struct Session {
    harness: Harness,
    /// Each client's connection, if it has one now.
    slots: [Option<Connection>; SESSION_CLIENTS as usize],
    next_conn: u64,
    max_payload: usize,
}

impl Session {
    fn new() -> Session {
        let config = session_config();
        Session {
            harness: Harness::new(&config),
            slots: Default::default(),
            next_conn: 0,
            max_payload: config.max_frame_bytes,
        }
    }

    fn step(&mut self, event: SessionEvent) {
        let waited = u64::from(event.wait);
        let timers = self.harness.advance(Duration::from_millis(waited * waited));
        let only_cutoffs_and_news = timers.iter().all(|action| match action {
            Action::Close { reason, .. } => matches!(
                reason,
                CloseReason::IdleTimeout | CloseReason::HandshakeTimeout
            ),
            Action::Send { frame, .. } => frames_in(frame)
                .iter()
                .all(|frame| is_transfer_news(frame[HEADER_LEN - 1])),
            _ => false,
        });
        assert!(
            only_cutoffs_and_news,
            "timers did more than cut idle or silent connections and end file transfers: {timers:?}"
        );
        self.apply(None, timers);
        let slot = usize::from(event.client % SESSION_CLIENTS);
        match event.what {
            Happening::Frame { opcode, payload } => {
                let wire = Frame::new(opcode, Bytes::from(payload)).to_bytes();
                self.arrive(slot, &wire);
            }
            Happening::Bytes(bytes) => self.arrive(slot, &bytes),
            Happening::Close => self.close(slot),
            Happening::FinishHash => self.finish_hash(slot),
        }
        if let Err(problem) = self.harness.hub.check_invariants() {
            panic!("inconsistent hub state: {problem}");
        }
    }

    /// Bytes from the client in `slot`, connecting it first if needed.
    fn arrive(&mut self, slot: usize, bytes: &[u8]) {
        if self.slots[slot].is_none() && !self.open(slot) {
            return;
        }
        let conn = self.slots[slot].as_mut().expect("just opened");
        conn.sent.extend_from_slice(bytes);
        conn.buffer.extend_from_slice(bytes);
        if conn.job.is_none() {
            self.receive(slot);
        }
    }

    /// Connects the slot's client; false if the server refused it.
    fn open(&mut self, slot: usize) -> bool {
        self.next_conn += 1;
        let id = ConnId(self.next_conn);
        let out = self.harness.connect(id);
        match out.as_slice() {
            [] => {}
            [Action::Send { to, frame }, Action::Close {
                conn,
                reason: CloseReason::ServerFull,
            }] if *to == id && *conn == id => {
                let refusal = check_frame(frame);
                assert!(
                    matches!(refusal, Sent::Response(0x02)),
                    "refused without 9a 02"
                );
                return false;
            }
            other => panic!("a connect did something but refuse: {other:?}"),
        }
        self.slots[slot] = Some(Connection {
            id,
            codec: FrameCodec::new(self.max_payload),
            buffer: BytesMut::new(),
            job: None,
            sent: Vec::new(),
            taken: 0,
            oracle: FrameCodec::new(self.max_payload),
            oracle_buffer: BytesMut::new(),
            oracle_dead: false,
            unanswered: VecDeque::new(),
            secure: false,
            requests: 0,
            answered: 0,
        });
        true
    }

    /// Lets the hub take what it can from the slot's buffer.
    fn receive(&mut self, slot: usize) {
        let Some(conn) = self.slots[slot].as_mut() else {
            return;
        };
        let mut out = Vec::new();
        let hub = &mut self.harness.hub;
        hub.receive(
            conn.id,
            &mut conn.codec,
            &mut conn.buffer,
            self.harness.now,
            &mut out,
        );
        conn.count_requests();
        self.apply(Some(slot), out);
    }

    /// Finishes the slot's pending password job, then lets the hub read on.
    fn finish_hash(&mut self, slot: usize) {
        let Some(job) = self.slots[slot].as_mut().and_then(|conn| conn.job.take()) else {
            return;
        };
        let mut out = Vec::new();
        self.harness.run_password_job(job, &mut out);
        self.apply(Some(slot), out);
        if self.slots[slot]
            .as_ref()
            .is_some_and(|conn| conn.job.is_none())
        {
            self.receive(slot);
        }
    }

    /// The client closes. The server notices only when it reads again, so a
    /// pending password job finishes first and what was buffered is handled.
    fn close(&mut self, slot: usize) {
        while self.slots[slot]
            .as_ref()
            .is_some_and(|conn| conn.job.is_some())
        {
            self.finish_hash(slot);
        }
        let Some(conn) = self.slots[slot].take() else {
            return;
        };
        conn.check_counts("closed by the client");
        let mut out = Vec::new();
        let now = self.harness.now;
        self.harness
            .hub
            .disconnect(conn.id, CloseReason::ClientClosed, now, &mut out);
        self.apply(None, out);
    }

    /// Checks one frame the hub sent `to`, as the actor's reply or as news.
    fn check_frame_to(&mut self, actor_id: Option<ConnId>, to: ConnId, frame: &Bytes) {
        // A closed connection has left its slot already.
        let slot = self
            .slot_of(to)
            .unwrap_or_else(|| panic!("a frame for {to}, which is closed"));
        // One buffer may hold several frames (a secure JOIN's
        // reply); each must stand on its own.
        for frame in frames_in(frame) {
            match check_frame(&frame) {
                Sent::Response(status) => {
                    assert_eq!(Some(to), actor_id, "a 9a to {to}, who asked nothing now");
                    let conn = self.slots[slot].as_mut().expect("slot found");
                    conn.answered += 1;
                    let request = conn.unanswered.pop_front().flatten();
                    if request == Some(secure_opcode::REGISTER_KEY) && status == 0 {
                        conn.secure = true;
                    }
                    assert!(
                        conn.answered <= conn.requests,
                        "{to} got more answers than it made requests"
                    );
                }
                Sent::RoomMessage(room) => {
                    assert_ne!(Some(to), actor_id, "a room message echoed to its sender");
                    let member = self.harness.hub.room_of(to);
                    assert_eq!(member, Some(&room[..]), "a room message to a non-member");
                }
                Sent::DirectMessage => {}
                Sent::Secure => assert!(
                    self.slots[slot].as_ref().expect("slot found").secure,
                    "a secure-extension frame to legacy connection {to}"
                ),
            }
        }
    }

    /// Checks what the hub asked for, and carries it out. `actor` is the
    /// slot whose event this is, if any.
    fn apply(&mut self, actor: Option<usize>, out: Vec<Action>) {
        let actor_id = actor.and_then(|slot| self.slots[slot].as_ref().map(|conn| conn.id));
        let mut wraps = Vec::new();
        for action in out {
            match action {
                Action::Send { .. } | Action::Broadcast { .. } => {
                    for (to, frame) in action.frames() {
                        self.check_frame_to(actor_id, to, frame);
                    }
                }
                Action::Close { conn, .. } => {
                    let slot = self
                        .slot_of(conn)
                        .expect("a close for an unknown connection");
                    let gone = self.slots[slot].take().expect("slot found");
                    gone.check_counts("closed by the server");
                }
                Action::Password(job) => {
                    let slot = self
                        .slot_of(job.conn)
                        .expect("a job for an unknown connection");
                    assert_eq!(
                        Some(slot),
                        actor,
                        "a job for a connection that is not reading"
                    );
                    let conn = self.slots[slot].as_mut().expect("slot found");
                    assert!(conn.job.is_none(), "two password jobs at once");
                    conn.job = Some(job);
                }
                // Key wraps (for connections that registered a valid key)
                // finish once this batch is applied, with stand-in keys.
                Action::WrapKeys(job) => wraps.push(job),
            }
        }
        for job in wraps {
            let mut more = Vec::new();
            let outcome = fake_wrap(&job);
            self.harness
                .hub
                .keys_wrapped(job.ticket, outcome, &mut more);
            let requester = job.requester.and_then(|conn| self.slot_of(conn));
            self.apply(requester, more);
            // As the server does once an owed reply is out: read on.
            if let Some(slot) = requester {
                self.receive(slot);
            }
        }
        for conn in self.slots.iter().filter_map(Option::as_ref) {
            conn.check_counts("open");
        }
    }

    fn slot_of(&self, id: ConnId) -> Option<usize> {
        self.slots
            .iter()
            .position(|conn| conn.as_ref().is_some_and(|conn| conn.id == id))
    }
}

impl Connection {
    /// Counts the requests in the bytes the hub took since the last call,
    /// with a codec of its own: every frame but a heartbeat, a file chunk
    /// and an ack is one, and so are bytes that are not frames (parlor
    /// answers them before closing).
    fn count_requests(&mut self) {
        // The hub admits large chunk frames from a file's sender alone; the
        // oracle follows the limit the hub set.
        self.oracle.allow_chunks(self.codec.max_chunk_payload());
        let taken = self.sent.len() - self.buffer.len();
        self.oracle_buffer
            .extend_from_slice(&self.sent[self.taken..taken]);
        self.taken = taken;
        while !self.oracle_dead {
            match self.oracle.decode(&mut self.oracle_buffer) {
                Ok(Some(frame)) if streams_unanswered(&frame) => {}
                Ok(Some(frame)) => {
                    self.requests += 1;
                    self.unanswered.push_back(Some(frame.opcode));
                }
                Ok(None) => break,
                Err(_) => {
                    self.requests += 1;
                    self.unanswered.push_back(None);
                    self.oracle_dead = true;
                }
            }
        }
    }

    /// Every request taken is answered, but for one awaiting its password.
    fn check_counts(&self, state: &str) {
        let owed = usize::from(self.job.is_some());
        assert_eq!(
            self.answered + owed,
            self.requests,
            "{state} connection {}: {} requests, {} answered, {owed} awaiting a password",
            self.id,
            self.requests,
            self.answered
        );
    }
}

/// Frames that are not requests: heartbeats, and well-formed file chunks
/// and acks, which stream without a reply (PROTOCOL.md §14.1).
fn streams_unanswered(frame: &Frame) -> bool {
    use crate::protocol::transfer::opcode::{FILE_ACK, FILE_CHUNK};
    match frame.opcode {
        opcode::HEARTBEAT => true,
        FILE_CHUNK => frame.payload.len() >= 8,
        FILE_ACK => frame.payload.len() == 8,
        _ => false,
    }
}

/// What a server frame is, once checked.
enum Sent {
    Response(u8),
    RoomMessage(Bytes),
    DirectMessage,
    /// A frame of the secure extension (opcodes `80`–`9f` but `9a`).
    Secure,
}

/// Cuts a buffer handed to a connection into its frames.
fn frames_in(buffer: &Bytes) -> Vec<Bytes> {
    let mut frames = Vec::new();
    let mut rest = buffer.clone();
    assert!(!rest.is_empty(), "an empty buffer sent");
    while !rest.is_empty() {
        assert!(rest.len() >= HEADER_LEN, "a frame shorter than its header");
        let len = u32::from_be_bytes(rest[..4].try_into().expect("four bytes")) as usize;
        assert!(
            rest.len() >= HEADER_LEN + len,
            "a length field that runs past the buffer"
        );
        frames.push(rest.split_to(HEADER_LEN + len));
    }
    frames
}

/// Checks a frame against everything the legacy client requires of it.
fn check_frame(wire: &Bytes) -> Sent {
    let header: [u8; HEADER_LEN] = wire
        .get(..HEADER_LEN)
        .and_then(|header| header.try_into().ok())
        .expect("a frame shorter than its header");
    let len = u32::from_be_bytes(header[..4].try_into().expect("four bytes")) as usize;
    assert_eq!(HEADER_LEN + len, wire.len(), "a length field that lies");
    assert!(
        len >= 1,
        "a zero-length frame, which stalls the legacy client"
    );
    assert_eq!(header[4..6], MAGIC, "a bad magic");
    let frame = Frame::new(header[6], wire.slice(HEADER_LEN..));
    match ServerMessage::parse(&frame) {
        Ok(ServerMessage::Response { status, .. }) => {
            assert_ne!(status, 0x03, "9a 03 answers nothing and is never sent");
            Sent::Response(status)
        }
        Ok(ServerMessage::RoomMessage { room, .. }) => Sent::RoomMessage(room),
        Ok(ServerMessage::DirectMessage { .. }) => Sent::DirectMessage,
        Ok(ServerMessage::Secure(_) | ServerMessage::File(_)) => Sent::Secure,
        Err(err) => panic!("a frame no client can read: {err}"),
    }
}

/// A `frame_decoder` seed: every client stream of a capture, one after the
/// other, read in a few awkward sizes.
pub fn decoder_seed(capture: &Capture) -> Vec<u8> {
    let stream = capture
        .clients
        .iter()
        .flat_map(|client| client.sent.iter().flat_map(|sent| sent.bytes.to_vec()))
        .collect();
    DecoderInput {
        limit: 0,
        large_chunks: false,
        chunks: vec![0, 6, 12, 200],
        stream,
    }
    .to_bytes()
}

/// A `session` seed that reaches the secure extension, which random bytes
/// almost never do (they would have to be a valid RSA key): two clients
/// register `public_key` (DER SubjectPublicKeyInfo) and share a secure room,
/// a legacy client is refused from it, a DM key is asked for, and members
/// leave, which rotates the room key.
pub fn secure_session_seed(public_key: &[u8]) -> Vec<u8> {
    let text = |text: &str| Bytes::copy_from_slice(text.as_bytes());
    let key = Bytes::copy_from_slice(public_key);
    let join = || ClientMessage::Join {
        room: text("vault"),
        password: Bytes::new(),
    };
    let script = [
        (0, ClientMessage::RegisterKey { key: key.clone() }),
        (
            0,
            ClientMessage::Nick {
                name: text("alice"),
            },
        ),
        (0, join()),
        (1, ClientMessage::RegisterKey { key }),
        (1, ClientMessage::Nick { name: text("bob") }),
        (1, join()),
        (2, join()),
        (
            0,
            ClientMessage::RoomMessage {
                room: text("vault"),
                text: text("sealed elsewhere"),
            },
        ),
        (
            0,
            ClientMessage::DmKeyRequest {
                target: text("bob"),
            },
        ),
        (1, ClientMessage::Leave),
    ];
    scripted_seed(script)
}

/// A `session` seed in which a file moves: three clients register
/// `public_key` and share a secure room; alice offers a three-chunk file
/// with a window of two, bob accepts, carol declines, and the chunks,
/// acknowledgements and FILE_DONE follow, until bob has the whole file.
pub fn file_session_seed(public_key: &[u8]) -> Vec<u8> {
    use crate::protocol::transfer::{FileMeta, FileRequest, FILE_FLAG_ENCRYPTED};
    let text = |text: &str| Bytes::copy_from_slice(text.as_bytes());
    let file = |request| ClientMessage::File(request);
    let chunk = |index| {
        file(FileRequest::Chunk {
            id: 1,
            index,
            data: Bytes::from(vec![index as u8; 100]),
        })
    };
    let ack = |index| file(FileRequest::Ack { id: 1, index });
    let mut script = Vec::new();
    for (client, name) in [(0, "alice"), (1, "bob"), (2, "carol")] {
        let key = Bytes::copy_from_slice(public_key);
        script.push((client, ClientMessage::RegisterKey { key }));
        script.push((client, ClientMessage::Nick { name: text(name) }));
        let join = ClientMessage::Join {
            room: text("vault"),
            password: Bytes::new(),
        };
        script.push((client, join));
    }
    let meta = FileMeta {
        name: text("notes.txt"),
        size: 250,
        chunk_size: 100,
        chunk_count: 3,
        flags: FILE_FLAG_ENCRYPTED,
        key_id: 3,
        nonce: [1; 16],
        digest: [2; 32],
        signature: Bytes::from(vec![3; 256]),
    };
    let offer = FileRequest::Offer {
        target: Bytes::new(),
        meta,
        window: 2,
    };
    script.extend([
        (0, file(offer)),
        (
            1,
            file(FileRequest::Decision {
                id: 1,
                accept: true,
            }),
        ),
        (
            2,
            file(FileRequest::Decision {
                id: 1,
                accept: false,
            }),
        ),
        (0, chunk(0)),
        (0, chunk(1)),
        (1, ack(0)),
        (0, chunk(2)),
        (1, ack(1)),
        (0, file(FileRequest::Done { id: 1 })),
        (1, ack(2)),
    ]);
    scripted_seed(script)
}

/// The events of a script of (client, message), ending with client 0
/// closing its connection.
fn scripted_seed(script: impl IntoIterator<Item = (u8, ClientMessage)>) -> Vec<u8> {
    let mut events: Vec<SessionEvent> = script
        .into_iter()
        .map(|(client, message)| {
            let frame = message.to_frame();
            SessionEvent {
                client,
                wait: 0,
                what: Happening::Frame {
                    opcode: frame.opcode,
                    payload: frame.payload.to_vec(),
                },
            }
        })
        .collect();
    events.push(SessionEvent {
        client: 0,
        wait: 0,
        what: Happening::Close,
    });
    SessionEvent::encode(&events)
}

/// A `session` seed: a capture's clients, each in its own slot, sending
/// what they sent, with the captured pauses (rounded to the wait steps).
pub fn session_seed(capture: &Capture) -> Vec<u8> {
    let mut timed: Vec<(Moment, SessionEvent)> = Vec::new();
    for (index, client) in capture.clients.iter().enumerate() {
        let event = |what| SessionEvent {
            client: index as u8 % SESSION_CLIENTS,
            wait: 0,
            what,
        };
        for sent in &client.sent {
            let what = match sent.kind {
                SentKind::Frame(opcode) => Happening::Frame {
                    opcode,
                    payload: sent.bytes[HEADER_LEN..].to_vec(),
                },
                SentKind::Garbage | SentKind::Unfinished => {
                    Happening::Bytes(sent.bytes.iter().copied().take(255).collect())
                }
            };
            let joined = sent.kind == SentKind::Frame(opcode::JOIN);
            timed.push((sent.when, event(what)));
            if joined {
                // The hash of a room password takes milliseconds.
                timed.push((sent.when, event(Happening::FinishHash)));
            }
        }
        if let End::ClientClosed(when) | End::ServerClosed(when) = client.end {
            timed.push((when, event(Happening::Close)));
        }
    }
    timed.sort_by_key(|(when, _)| when.packet);
    let mut previous = Duration::ZERO;
    let events: Vec<SessionEvent> = timed
        .into_iter()
        .map(|(when, mut event)| {
            let millis = when.at.saturating_sub(previous).as_secs_f64() * 1000.0;
            previous = when.at.max(previous);
            event.wait = millis.sqrt().round().min(255.0) as u8;
            event
        })
        .collect();
    SessionEvent::encode(&events)
}
