//! Reading a connection that carries file chunks: frames are cut from one
//! reused buffer, and a chunk's data is handed on in the pieces it arrives
//! in, never gathered in one place.
//!
//! A relayed chunk is up to 16 MiB; a recipient that only checks it needs
//! it neither whole nor contiguous. So a chunk costs the bench one copy,
//! the kernel's into the read buffer, and no allocation: [`FrameStream`]
//! reads into a buffer of fixed size and yields [`Piece`]s that borrow it.
//! Other frames (offers, replies, windows) are small and yielded whole; the
//! few bytes of one cut by the end of a read move to the front of the buffer
//! before the next.

use std::io;

use bytes::BytesMut;
use tokio::net::TcpStream;

use parlor_proto::transfer::opcode::FILE_CHUNK;
use parlor_proto::transfer::CHUNK_HEADER_LEN;
use parlor_proto::{HEADER_LEN, MAGIC};

/// Frame header, then the chunk's `u32 id, u32 index`.
const CHUNK_HEAD: usize = HEADER_LEN + CHUNK_HEADER_LEN;

/// What a read brought, in order.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Piece<'a> {
    /// A whole frame other than a chunk: its opcode and payload.
    Frame(u8, &'a [u8]),
    /// A chunk begins: `len` bytes of data follow, in [`Piece::ChunkData`]s.
    ChunkStart { id: u32, index: u32, len: usize },
    /// Data of the current chunk, starting at byte `offset` of it.
    ChunkData { offset: usize, data: &'a [u8] },
    /// The current chunk's data is complete.
    ChunkEnd,
}

/// The stream broke the framing: nothing after it can be trusted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Garbled {
    #[error("bad magic number {0:02x} {1:02x}")]
    BadMagic(u8, u8),
    #[error("frame 0x{opcode:02x} of {len} bytes does not fit the {max}-byte read buffer")]
    TooLong { opcode: u8, len: usize, max: usize },
    #[error("chunk frame of {0} bytes, shorter than its id and index")]
    ShortChunk(usize),
}

pub(crate) struct FrameStream {
    buffer: Box<[u8]>,
    /// `buffer[start..end]` is read and not yet yielded.
    start: usize,
    end: usize,
    /// The chunk whose data is still arriving: its length, and how much of
    /// it has been yielded.
    chunk: Option<(usize, usize)>,
}

impl FrameStream {
    /// A stream that reads up to `capacity` bytes at a time, starting with
    /// `leftover`, bytes already read from the socket.
    ///
    /// # Panics
    /// If `leftover` does not fit.
    pub(crate) fn new(capacity: usize, leftover: &BytesMut) -> FrameStream {
        let mut buffer = vec![0; capacity].into_boxed_slice();
        buffer[..leftover.len()].copy_from_slice(leftover);
        FrameStream {
            buffer,
            start: 0,
            end: leftover.len(),
            chunk: None,
        }
    }

    /// Reads what the socket has, without waiting. `Ok(0)` is the end of
    /// the stream.
    pub(crate) fn read(&mut self, stream: &TcpStream) -> io::Result<usize> {
        let read = stream.try_read(self.space())?;
        self.end += read;
        Ok(read)
    }

    /// The free end of the buffer, as large as it can be made.
    fn space(&mut self) -> &mut [u8] {
        self.make_room();
        &mut self.buffer[self.end..]
    }

    /// Moves what is left (part of a small frame, or of a chunk's head) to
    /// the front, so the whole buffer is free for the next read.
    fn make_room(&mut self) {
        if self.start > 0 {
            self.buffer.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// Bytes read and not yet yielded.
    #[cfg(test)]
    fn pending(&self) -> usize {
        self.end - self.start
    }

    /// Yields everything read so far, in order, to `each`.
    pub(crate) fn pieces(&mut self, mut each: impl FnMut(Piece<'_>)) -> Result<(), Garbled> {
        loop {
            let available = &self.buffer[self.start..self.end];
            if let Some((len, done)) = &mut self.chunk {
                if available.is_empty() {
                    return Ok(());
                }
                let take = available.len().min(*len - *done);
                each(Piece::ChunkData {
                    offset: *done,
                    data: &available[..take],
                });
                *done += take;
                self.start += take;
                if done == len {
                    self.chunk = None;
                    each(Piece::ChunkEnd);
                }
                continue;
            }
            let Some(header) = available.first_chunk::<HEADER_LEN>() else {
                return Ok(());
            };
            let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
            if header[4..6] != MAGIC {
                return Err(Garbled::BadMagic(header[4], header[5]));
            }
            let opcode = header[6];
            if opcode == FILE_CHUNK {
                if len < CHUNK_HEAD - HEADER_LEN {
                    return Err(Garbled::ShortChunk(len));
                }
                let Some(head) = available.first_chunk::<CHUNK_HEAD>() else {
                    return Ok(());
                };
                let word = |at: usize| {
                    u32::from_be_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]])
                };
                let (id, index) = (word(HEADER_LEN), word(HEADER_LEN + 4));
                let data_len = len - (CHUNK_HEAD - HEADER_LEN);
                self.start += CHUNK_HEAD;
                each(Piece::ChunkStart {
                    id,
                    index,
                    len: data_len,
                });
                if data_len == 0 {
                    each(Piece::ChunkEnd);
                } else {
                    self.chunk = Some((data_len, 0));
                }
                continue;
            }
            if len > self.buffer.len() - HEADER_LEN {
                return Err(Garbled::TooLong {
                    opcode,
                    len,
                    max: self.buffer.len(),
                });
            }
            let Some(frame) = available.get(HEADER_LEN..HEADER_LEN + len) else {
                return Ok(());
            };
            each(Piece::Frame(opcode, frame));
            self.start += HEADER_LEN + len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parlor_proto::transfer::{encode_chunk, FileNotice};

    /// What the pieces say, with chunk data gathered back together.
    #[derive(Debug, PartialEq, Eq)]
    enum Seen {
        Frame(u8, Vec<u8>),
        Chunk(u32, u32, Vec<u8>),
    }

    /// Feeds `wire` to a stream in reads of `step` bytes, as a socket
    /// might deliver it, and collects what it yields.
    fn replay(wire: &[u8], step: usize, capacity: usize) -> Result<Vec<Seen>, Garbled> {
        let mut stream = FrameStream::new(capacity, &BytesMut::new());
        let mut seen = Vec::new();
        let mut current: Option<(u32, u32, usize, Vec<u8>)> = None;
        let mut fed = 0;
        while fed < wire.len() {
            let space = stream.space();
            let take = step.min(space.len()).min(wire.len() - fed);
            assert!(take > 0, "the buffer filled up");
            space[..take].copy_from_slice(&wire[fed..fed + take]);
            stream.end += take;
            fed += take;
            stream.pieces(|piece| match piece {
                Piece::Frame(opcode, payload) => seen.push(Seen::Frame(opcode, payload.to_vec())),
                Piece::ChunkStart { id, index, len } => {
                    current = Some((id, index, len, Vec::new()))
                }
                Piece::ChunkData { offset, data } => {
                    let chunk = current.as_mut().expect("data inside a chunk");
                    assert_eq!(offset, chunk.3.len());
                    chunk.3.extend_from_slice(data);
                }
                Piece::ChunkEnd => {
                    let (id, index, len, data) = current.take().expect("a chunk ends");
                    assert_eq!(len, data.len());
                    seen.push(Seen::Chunk(id, index, data));
                }
            })?;
        }
        assert_eq!(stream.pending(), 0, "a frame was left unfinished");
        Ok(seen)
    }

    #[test]
    fn frames_and_chunks_come_out_whole_however_the_reads_cut_them() {
        let big: Vec<u8> = (0..5000u32).map(|n| n as u8).collect();
        let window = FileNotice::Window { id: 3, acked: 9 }.encode();
        let done = FileNotice::Done { id: 3 }.encode();
        let wire = [
            &window[..],
            &encode_chunk(FILE_CHUNK, 3, 0, &big),
            &encode_chunk(FILE_CHUNK, 3, 1, b""),
            &done,
            &encode_chunk(FILE_CHUNK, 3, 2, b"tiny"),
            &window,
        ]
        .concat();
        let expected = vec![
            Seen::Frame(0x8d, window[HEADER_LEN..].to_vec()),
            Seen::Chunk(3, 0, big.clone()),
            Seen::Chunk(3, 1, Vec::new()),
            Seen::Frame(0x88, done[HEADER_LEN..].to_vec()),
            Seen::Chunk(3, 2, b"tiny".to_vec()),
            Seen::Frame(0x8d, window[HEADER_LEN..].to_vec()),
        ];
        for step in [1, 2, 7, 15, 16, 100, 4096, 100_000] {
            assert_eq!(
                replay(&wire, step, 64).unwrap(),
                expected,
                "reads of {step}"
            );
        }
    }

    #[test]
    fn garbled_streams_are_refused() {
        let mut bad_magic = FileNotice::Done { id: 1 }.encode().to_vec();
        bad_magic[5] = 0x18;
        assert!(matches!(
            replay(&bad_magic, 100, 64),
            Err(Garbled::BadMagic(0x04, 0x18))
        ));
        let long = FileNotice::Ended {
            id: 1,
            who: bytes::Bytes::new(),
            reason: parlor_proto::transfer::EndReason::Cancelled,
            text: bytes::Bytes::from(vec![b'x'; 100]),
        }
        .encode();
        assert!(matches!(
            replay(&long, 100, 64),
            Err(Garbled::TooLong { opcode: 0x8f, .. })
        ));
        let short_chunk = [0, 0, 0, 4, 4, 0x17, 0x86, 0, 0, 0, 1];
        assert!(matches!(
            replay(&short_chunk, 100, 64),
            Err(Garbled::ShortChunk(4))
        ));
    }
}
