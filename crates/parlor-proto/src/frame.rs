//! Framing shared by both directions of the legacy protocol.
//!
//! ```text
//! offset 0  u32  length   big-endian, payload bytes after this 7-byte header
//! offset 4  u8   0x04     magic
//! offset 5  u8   0x17     magic
//! offset 6  u8   opcode
//! offset 7  ...  payload  exactly `length` bytes
//! ```
//!
//! [`FrameCodec`] follows the tokio-util codec contract: `Ok(None)` until a
//! whole frame is buffered, and the declared length is checked against the
//! limit *before* any memory is reserved for it, so a hostile `ff ff ff ff`
//! header costs nothing.

use bytes::{BufMut, Bytes, BytesMut};

/// The two bytes after the length in every frame.
pub const MAGIC: [u8; 2] = [0x04, 0x17];

/// Length field, magic and opcode.
pub const HEADER_LEN: usize = 7;

/// The largest legal client payload: a ROOM_MSG or DM naming a 255-byte room
/// or target and carrying a 65,535-byte message (`1 + 255 + 2 + 65535`).
pub const MAX_CLIENT_PAYLOAD: usize = 1 + 255 + 2 + u16::MAX as usize;

/// FILE_CHUNK, the one opcode whose frames may exceed the normal limit.
const CHUNK_OPCODE: u8 = super::transfer::opcode::FILE_CHUNK;

/// One frame: an opcode and its raw payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// What the payload is: one of [`opcode`](crate::opcode),
    /// [`secure::opcode`](crate::secure::opcode) or
    /// [`transfer::opcode`](crate::transfer::opcode). Unknown opcodes still
    /// frame; refusing them is the reader's business, not the codec's.
    pub opcode: u8,
    /// The payload, without the header; shared, so frames cut from a read
    /// buffer or encoded once for many recipients are never copied.
    pub payload: Bytes,
}

impl Frame {
    /// A frame of `opcode` carrying `payload`.
    pub fn new(opcode: u8, payload: impl Into<Bytes>) -> Frame {
        Frame {
            opcode,
            payload: payload.into(),
        }
    }

    /// The number of bytes this frame occupies on the wire.
    pub fn wire_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    /// Appends the frame, header included, to `dst`.
    pub fn encode_into(&self, dst: &mut BytesMut) {
        dst.reserve(self.wire_len());
        put_header(dst, self.opcode, self.payload.len());
        dst.extend_from_slice(&self.payload);
    }

    /// The frame as one contiguous buffer, ready to share between recipients.
    pub fn to_bytes(&self) -> Bytes {
        let mut dst = BytesMut::with_capacity(self.wire_len());
        self.encode_into(&mut dst);
        dst.freeze()
    }
}

/// Writes a 7-byte header announcing `payload_len` bytes of payload.
///
/// # Panics
/// If `payload_len` does not fit the u32 length field; callers build payloads
/// from bounded fields, so that would be a bug.
pub fn put_header(dst: &mut BytesMut, opcode: u8, payload_len: usize) {
    let len = u32::try_from(payload_len).expect("frame payload exceeds u32");
    dst.put_u32(len);
    dst.put_slice(&MAGIC);
    dst.put_u8(opcode);
}

/// Why a byte stream could not be cut into frames. Every variant ends the
/// connection: after it, frame boundaries can no longer be trusted.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The header declares more payload than the limit: refused before any
    /// of it is buffered.
    #[error("frame length {len} exceeds the limit of {max} bytes")]
    TooLong {
        /// The declared payload length.
        len: u64,
        /// The limit that applied to this frame's opcode.
        max: usize,
    },
    /// The two bytes after the length are not [`MAGIC`]: the peer does not
    /// speak this protocol, or lost its place in the stream.
    #[error("bad magic number {:02x} {:02x}", .0[0], .0[1])]
    BadMagic([u8; 2]),
    /// The stream ended with part of a frame buffered.
    #[error("connection closed in the middle of a frame")]
    Truncated,
    /// Reading or writing the socket failed (with the `codec` feature's
    /// `Framed`).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Cuts a byte stream into [`Frame`]s, refusing payloads over `max_payload`.
///
/// File chunks (opcode `86`) are the one exception: once a connection is
/// sending a file, [`FrameCodec::allow_chunks`] lets chunk frames be as large
/// as the transfer's chunks. Every other opcode keeps the normal limit, and
/// a connection that sends no file never gets a larger buffer.
#[derive(Clone, Copy, Debug)]
pub struct FrameCodec {
    max_payload: usize,
    /// The limit for chunk frames; never below `max_payload`.
    max_chunk_payload: usize,
}

impl FrameCodec {
    /// A codec refusing payloads over `max_payload`, chunk frames included
    /// until [`FrameCodec::allow_chunks`] raises their limit.
    pub fn new(max_payload: usize) -> FrameCodec {
        FrameCodec {
            max_payload,
            max_chunk_payload: max_payload,
        }
    }

    /// The payload limit for every frame but a chunk.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// The payload limit for chunk frames (opcode `86`).
    pub fn max_chunk_payload(&self) -> usize {
        self.max_chunk_payload
    }

    /// Admits chunk frames (opcode `86`) of up to `max_payload` bytes, or
    /// puts them back under the normal limit when that is smaller.
    pub fn allow_chunks(&mut self, max_payload: usize) {
        self.max_chunk_payload = max_payload.max(self.max_payload);
    }

    /// Checks what of the header is buffered so far, so that a bad length or
    /// magic is refused as soon as its bytes arrive, without waiting for more.
    fn check_header(&self, src: &[u8]) -> Result<Option<usize>, FrameError> {
        let Some(len_bytes) = src.first_chunk::<4>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*len_bytes) as usize;
        let too_long = |max| {
            Err(FrameError::TooLong {
                len: len as u64,
                max,
            })
        };
        if len > self.max_chunk_payload {
            return too_long(self.max_payload);
        }
        if let Some(magic) = src.get(4..6) {
            if magic != MAGIC {
                return Err(FrameError::BadMagic([magic[0], magic[1]]));
            }
        }
        if len > self.max_payload {
            // Only a chunk may be this long; wait for the opcode to know.
            match src.get(HEADER_LEN - 1) {
                None => return Ok(None),
                Some(&CHUNK_OPCODE) => {}
                Some(_) => return too_long(self.max_payload),
            }
        }
        Ok(Some(len))
    }
}

impl Default for FrameCodec {
    fn default() -> FrameCodec {
        FrameCodec::new(MAX_CLIENT_PAYLOAD)
    }
}

impl FrameCodec {
    /// The next whole frame in `src`, or `Ok(None)` until one is buffered
    /// (tokio-util's `Decoder::decode` contract, without the trait, so the
    /// sans-IO core needs no tokio crate).
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some(payload_len) = self.check_header(src)? else {
            return Ok(None);
        };
        let frame_len = HEADER_LEN + payload_len;
        if src.len() < frame_len {
            // The length is already known to be within the limit.
            src.reserve(frame_len - src.len());
            return Ok(None);
        }
        let mut frame = src.split_to(frame_len);
        let opcode = frame[HEADER_LEN - 1];
        let payload = frame.split_off(HEADER_LEN).freeze();
        Ok(Some(Frame { opcode, payload }))
    }

    /// As [`FrameCodec::decode`], at the end of the stream: bytes of an
    /// unfinished frame are [`FrameError::Truncated`].
    pub fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(FrameError::Truncated),
        }
    }
}

/// For `tokio_util::codec::FramedRead` and friends, in the shells.
#[cfg(feature = "codec")]
impl tokio_util::codec::Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        FrameCodec::decode(self, src)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        FrameCodec::decode_eof(self, src)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(codec: &mut FrameCodec, bytes: &[u8]) -> Result<Vec<Frame>, FrameError> {
        let mut buf = BytesMut::from(bytes);
        let mut frames = Vec::new();
        while let Some(frame) = codec.decode(&mut buf)? {
            frames.push(frame);
        }
        Ok(frames)
    }

    #[test]
    fn decodes_a_heartbeat_and_a_zero_length_frame() {
        let mut wire = vec![0, 0, 0, 0x20, 4, 0x17, 0x13, 0x1f];
        wire.extend_from_slice(b"staying alive, staying alive...");
        wire.extend_from_slice(&[0, 0, 0, 0, 4, 0x17, 0x06]);
        let frames = decode_all(&mut FrameCodec::default(), &wire).unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].opcode, 0x13);
        assert_eq!(frames[0].payload.len(), 32);
        assert_eq!(frames[1], Frame::new(0x06, Bytes::new()));
    }

    #[test]
    fn refuses_a_huge_length_before_reserving() {
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        let err = FrameCodec::default().decode(&mut buf).unwrap_err();
        assert!(matches!(
            err,
            FrameError::TooLong {
                len: 0xffff_ffff,
                ..
            }
        ));
        assert!(buf.capacity() < 1024);
    }

    #[test]
    fn accepts_the_largest_legal_frame_and_refuses_one_more_byte() {
        let codec = FrameCodec::default();
        let max = MAX_CLIENT_PAYLOAD as u32;
        let ok = [max.to_be_bytes().as_slice(), &MAGIC, &[0x15]].concat();
        assert_eq!(codec.check_header(&ok).unwrap(), Some(65_793));
        let over = [(max + 1).to_be_bytes().as_slice(), &MAGIC, &[0x15]].concat();
        assert!(matches!(
            codec.check_header(&over),
            Err(FrameError::TooLong { len: 65_794, .. })
        ));
    }

    #[test]
    fn refuses_bad_magic_as_soon_as_it_arrives() {
        let mut buf = BytesMut::from(&[0, 0, 0, 5, 0x04, 0x18][..]);
        let err = FrameCodec::default().decode(&mut buf).unwrap_err();
        assert!(matches!(err, FrameError::BadMagic([0x04, 0x18])));
    }

    #[test]
    fn waits_for_the_whole_frame() {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::from(&[0, 0, 0, 2, 4, 0x17, 0x0f, 1][..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"a");
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Frame::new(0x0f, &b"\x01a"[..]))
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn admits_large_chunks_only_when_allowed_and_only_for_chunks() {
        let big = 200_000u32.to_be_bytes();
        let chunk_header = [big.as_slice(), &MAGIC, &[0x86]].concat();
        let other_header = [big.as_slice(), &MAGIC, &[0x15]].concat();
        let mut codec = FrameCodec::default();
        assert!(codec.check_header(&chunk_header).is_err());
        codec.allow_chunks(300_000);
        assert_eq!(codec.check_header(&chunk_header[..6]).unwrap(), None);
        assert_eq!(codec.check_header(&chunk_header).unwrap(), Some(200_000));
        assert!(codec.check_header(&other_header).is_err());
        let huge = [400_000u32.to_be_bytes().as_slice(), &MAGIC, &[0x86]].concat();
        assert!(codec.check_header(&huge[..4]).is_err());
        codec.allow_chunks(0);
        assert!(codec.check_header(&chunk_header).is_err());
    }

    #[test]
    fn eof_inside_a_frame_is_an_error() {
        let mut buf = BytesMut::from(&[0, 0, 0, 2, 4][..]);
        let err = FrameCodec::default().decode_eof(&mut buf).unwrap_err();
        assert!(matches!(err, FrameError::Truncated));
    }
}
