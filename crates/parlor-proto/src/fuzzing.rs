//! The frame decoder's fuzz body. `fuzz/fuzz_targets/frame_decoder.rs` is
//! one call to [`frame_decoder`], and `tests/fuzz_bodies.rs` runs it over the
//! seed corpus and thousands of proptest inputs on stable Rust, so a
//! regression is caught without nightly.
//!
//! The body takes raw bytes, as libFuzzer hands them out, and gives them
//! structure itself: any byte string is a valid input, and a mutation
//! changes one decision rather than making the input unreadable.
//! [`DecoderInput`] builds such bytes for seeds and property tests. The body
//! panics, with the broken invariant in the message, on anything wrong.

use bytes::BytesMut;

use crate::transfer::opcode::FILE_CHUNK;
use crate::{Frame, FrameCodec, FrameError, HEADER_LEN, MAGIC, MAX_CLIENT_PAYLOAD};

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
    /// The bytes the client sends.
    pub stream: Vec<u8>,
}

impl DecoderInput {
    /// Reads an input from fuzzer bytes; any bytes will do.
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

    /// The fuzzer bytes that read back as this input.
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
