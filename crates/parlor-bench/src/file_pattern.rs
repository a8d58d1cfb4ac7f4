//! The file `parlor bench transfer` sends: a deterministic pattern, so that
//! the sender builds each chunk without reading or allocating anything, and
//! a recipient checks each chunk without the sender's help.
//!
//! Chunk `i` of length `L` (every chunk is `chunk_bytes` long but the last)
//! holds:
//!
//! - when `L ≥ 16`: the **mark** of `i` (`i` as a big-endian u64) in its
//!   first 8 and its last 8 bytes, and between them bytes `8..L − 8` of the
//!   **fill**, one fixed pseudo-random sequence shared by every chunk;
//! - when `L < 16` (only ever a short last chunk): the mark repeated,
//!   `mark[j % 8]` at byte `j`.
//!
//! So a chunk's length and its marks say which chunk it is and that it is
//! whole (a chunk relayed under the wrong index, cut short, or shifted in
//! the stream fails them), and with `--verify-all` the fill is compared too,
//! which makes every byte checked.

/// Bytes of a mark: the chunk index as a big-endian u64.
pub(crate) const MARK_LEN: usize = 8;
/// Chunks shorter than this hold only their repeated mark.
const SHORT: usize = 2 * MARK_LEN;
/// The most bytes [`Pieces::head`] holds: a short chunk's whole data.
pub(crate) const MAX_HEAD: usize = SHORT - 1;

/// The bench file: its size, its chunking, and the fill.
pub(crate) struct FilePattern {
    pub size: u64,
    pub chunk_bytes: u32,
    pub chunk_count: u32,
    /// `chunk_bytes` bytes of the pseudo-random fill.
    fill: Box<[u8]>,
}

/// One chunk's data as three slices: what is specific to the chunk (its
/// marks) and the shared fill between them, so that it can be written with
/// one vectored write and no copy.
pub(crate) struct Pieces<'a> {
    head: [u8; MAX_HEAD],
    head_len: usize,
    pub middle: &'a [u8],
    tail: [u8; MARK_LEN],
    tail_len: usize,
}

impl Pieces<'_> {
    pub(crate) fn head(&self) -> &[u8] {
        &self.head[..self.head_len]
    }

    pub(crate) fn tail(&self) -> &[u8] {
        &self.tail[..self.tail_len]
    }
}

pub(crate) fn mark(index: u32) -> [u8; MARK_LEN] {
    u64::from(index).to_be_bytes()
}

impl FilePattern {
    /// # Panics
    /// If `size` is 0, `chunk_bytes` is 0, or there would be more than
    /// `u32::MAX` chunks; the options are checked before.
    pub(crate) fn new(size: u64, chunk_bytes: u32) -> FilePattern {
        assert!(size > 0 && chunk_bytes > 0, "an empty file or chunk");
        let chunk_count =
            u32::try_from(size.div_ceil(u64::from(chunk_bytes))).expect("at most u32::MAX chunks");
        let fill = (0..u64::from(chunk_bytes))
            .map(|j| (j.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8)
            .collect();
        FilePattern {
            size,
            chunk_bytes,
            chunk_count,
            fill,
        }
    }

    /// Bytes of data in chunk `index`.
    pub(crate) fn chunk_len(&self, index: u32) -> usize {
        let start = u64::from(index) * u64::from(self.chunk_bytes);
        (self.size - start).min(u64::from(self.chunk_bytes)) as usize
    }

    pub(crate) fn pieces(&self, index: u32) -> Pieces<'_> {
        let len = self.chunk_len(index);
        let mark = mark(index);
        let mut head = [0; MAX_HEAD];
        if len < SHORT {
            for (j, byte) in head[..len].iter_mut().enumerate() {
                *byte = mark[j % MARK_LEN];
            }
            return Pieces {
                head,
                head_len: len,
                middle: &[],
                tail: [0; MARK_LEN],
                tail_len: 0,
            };
        }
        head[..MARK_LEN].copy_from_slice(&mark);
        Pieces {
            head,
            head_len: MARK_LEN,
            middle: &self.fill[MARK_LEN..len - MARK_LEN],
            tail: mark,
            tail_len: MARK_LEN,
        }
    }

    /// A check of chunk `index`, fed its data as it arrives.
    pub(crate) fn check(&self, index: u32, len: usize) -> ChunkCheck {
        ChunkCheck {
            index,
            len,
            head: [0; MARK_LEN],
            tail: [0; MARK_LEN],
            fill_ok: true,
        }
    }
}

/// What a recipient has seen of one chunk: its marks, gathered from the
/// pieces of data as they arrive, and whether the fill matched.
pub(crate) struct ChunkCheck {
    index: u32,
    len: usize,
    head: [u8; MARK_LEN],
    tail: [u8; MARK_LEN],
    fill_ok: bool,
}

/// `a..b ∩ c..d`, relative to `a`, if not empty.
fn overlap(at: usize, len: usize, from: usize, to: usize) -> Option<(usize, usize)> {
    let start = at.max(from);
    let end = (at + len).min(to);
    (start < end).then(|| (start - at, end - at))
}

impl ChunkCheck {
    /// Data of the chunk at byte `offset`. With `all`, the fill between the
    /// marks is compared with the pattern too.
    pub(crate) fn data(&mut self, pattern: &FilePattern, offset: usize, data: &[u8], all: bool) {
        let len = self.len;
        if let Some((from, to)) = overlap(offset, data.len(), 0, MARK_LEN.min(len)) {
            self.head[offset + from..offset + to].copy_from_slice(&data[from..to]);
        }
        let (tail_from, fill_to) = if len < SHORT {
            (MARK_LEN, MARK_LEN)
        } else {
            (len - MARK_LEN, len - MARK_LEN)
        };
        if let Some((from, to)) = overlap(offset, data.len(), tail_from, len) {
            let at = offset + from - tail_from;
            self.tail[at..at + to - from].copy_from_slice(&data[from..to]);
        }
        if all {
            if let Some((from, to)) = overlap(offset, data.len(), MARK_LEN, fill_to) {
                let at = offset + from;
                self.fill_ok &= data[from..to] == pattern.fill[at..at + to - from];
            }
        }
    }

    /// Whether the chunk was what the pattern says, once all its data came.
    pub(crate) fn is_intact(&self, pattern: &FilePattern) -> bool {
        if self.index >= pattern.chunk_count || self.len != pattern.chunk_len(self.index) {
            return false;
        }
        let mark = mark(self.index);
        let head_len = MARK_LEN.min(self.len);
        let tail_len = if self.len < SHORT {
            self.len.saturating_sub(MARK_LEN)
        } else {
            MARK_LEN
        };
        self.fill_ok
            && self.head[..head_len] == mark[..head_len]
            && self.tail[..tail_len] == mark[..tail_len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(pattern: &FilePattern, index: u32) -> Vec<u8> {
        let pieces = pattern.pieces(index);
        [pieces.head(), pieces.middle, pieces.tail()].concat()
    }

    /// Feeds `data` to a check in pieces of `step` bytes.
    fn checked(pattern: &FilePattern, index: u32, data: &[u8], step: usize, all: bool) -> bool {
        let mut check = pattern.check(index, data.len());
        for (n, piece) in data.chunks(step).enumerate() {
            check.data(pattern, n * step, piece, all);
        }
        check.is_intact(pattern)
    }

    #[test]
    fn chunks_have_their_lengths_and_marks() {
        // 3 chunks of 100 and a short last one of 5.
        let pattern = FilePattern::new(305, 100);
        assert_eq!(pattern.chunk_count, 4);
        let lens: Vec<usize> = (0..4).map(|i| pattern.chunk_len(i)).collect();
        assert_eq!(lens, [100, 100, 100, 5]);
        let second = chunk(&pattern, 1);
        assert_eq!(second[..8], mark(1));
        assert_eq!(second[92..], mark(1));
        assert_eq!(chunk(&pattern, 3), &mark(3)[..5]);
        let short = FilePattern::new(12, 12);
        assert_eq!(chunk(&short, 0), [&mark(0)[..], &mark(0)[..4]].concat());
    }

    #[test]
    fn checks_accept_the_pattern_however_it_is_cut() {
        for (size, chunk_bytes) in [(305, 100), (12, 12), (7, 7), (16, 16), (40, 17)] {
            let pattern = FilePattern::new(size, chunk_bytes);
            for index in 0..pattern.chunk_count {
                let data = chunk(&pattern, index);
                for step in [1, 3, 8, 1000] {
                    for all in [false, true] {
                        assert!(
                            checked(&pattern, index, &data, step, all),
                            "{size}/{chunk_bytes} chunk {index} step {step}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn checks_catch_wrong_marks_lengths_and_fill() {
        let pattern = FilePattern::new(305, 100);
        let data = chunk(&pattern, 1);
        assert!(!checked(&pattern, 2, &data, 7, false), "another index");
        assert!(!checked(&pattern, 1, &data[..99], 7, false), "cut short");
        let mut tail_hit = data.clone();
        tail_hit[99] ^= 1;
        assert!(!checked(&pattern, 1, &tail_hit, 7, false));
        let mut fill_hit = data.clone();
        fill_hit[50] ^= 1;
        assert!(
            checked(&pattern, 1, &fill_hit, 7, false),
            "only --verify-all reads the fill"
        );
        assert!(!checked(&pattern, 1, &fill_hit, 7, true));
        let mut short = chunk(&pattern, 3);
        short[4] ^= 1;
        assert!(
            !checked(&pattern, 3, &short, 1, false),
            "a short chunk is all marks"
        );
    }
}
