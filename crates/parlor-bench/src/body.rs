//! The text of every bench message: who sent it, its sequence number and
//! when it left, readable by the receiver without any shared state.
//!
//! ```text
//! L<sender>:<seq>:<sent_ns>:xxxxxxxx…
//! ```
//!
//! The same layout as chatload's, so the two tools measure the same bytes:
//! decimal fields, then `x` padding up to the requested message size. The
//! receiver parses the text of each delivery back into a [`Stamp`]: the
//! sender and sequence number drive the lost/duplicated/reordered count,
//! and `sent_ns` (on the bench's own monotonic clock, which senders and
//! receivers share because they are one process) gives the latency.
//!
//! Writing goes straight into the caller's output buffer, so sending a
//! message allocates nothing.

/// What a message says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stamp {
    /// Index of the sending connection in the workload's plan.
    pub sender: u32,
    /// 0, 1, 2, … per sender.
    pub seq: u64,
    /// Send time, in nanoseconds on the bench's clock.
    pub sent_ns: u64,
}

/// The longest the decimal fields can be (`L`, three numbers, three colons),
/// and so the smallest message size every stamp fits in.
pub(crate) const MIN_MESSAGE_BYTES: usize = 1 + 10 + 1 + 20 + 1 + 20 + 1;

/// Appends exactly `size` bytes: the stamp, then `x` padding.
///
/// # Panics
/// If `size` is below [`MIN_MESSAGE_BYTES`]: the frame header announcing
/// `size` bytes is already written, so a longer text would corrupt the
/// stream. Options are validated long before this.
pub(crate) fn write(out: &mut Vec<u8>, stamp: Stamp, size: usize) {
    assert!(size >= MIN_MESSAGE_BYTES, "message size {size} too small");
    let start = out.len();
    out.push(b'L');
    put_decimal(out, u64::from(stamp.sender));
    out.push(b':');
    put_decimal(out, stamp.seq);
    out.push(b':');
    put_decimal(out, stamp.sent_ns);
    out.push(b':');
    let written = out.len() - start;
    out.resize(start + size, b'x');
    debug_assert!(written <= size);
}

/// Reads a stamp back; `None` for any text the bench did not write.
pub(crate) fn parse(text: &[u8]) -> Option<Stamp> {
    let rest = text.strip_prefix(b"L")?;
    let (sender, rest) = take_decimal(rest)?;
    let (seq, rest) = take_decimal(rest)?;
    let (sent_ns, rest) = take_decimal(rest)?;
    if !rest.iter().all(|&b| b == b'x') {
        return None;
    }
    Some(Stamp {
        sender: u32::try_from(sender).ok()?,
        seq,
        sent_ns,
    })
}

fn put_decimal(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut first = digits.len();
    loop {
        first -= 1;
        digits[first] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[first..]);
}

/// A decimal number terminated by `:`, and what follows the colon.
fn take_decimal(text: &[u8]) -> Option<(u64, &[u8])> {
    let end = text.iter().position(|&b| b == b':')?;
    let (digits, rest) = text.split_at(end);
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    let mut value = 0u64;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return None;
        }
        value = value
            .checked_mul(10)?
            .checked_add(u64::from(digit - b'0'))?;
    }
    Some((value, &rest[1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_chatload_layout_at_exactly_the_requested_size() {
        let mut out = b"prefix".to_vec();
        let stamp = Stamp {
            sender: 12,
            seq: 3,
            sent_ns: 456_789,
        };
        write(&mut out, stamp, 64);
        assert_eq!(out.len(), 6 + 64);
        let text = &out[6..];
        assert!(text.starts_with(b"L12:3:456789:xxx"), "{text:?}");
        assert_eq!(parse(text), Some(stamp));
    }

    #[test]
    fn the_largest_stamp_fits_the_minimum_size() {
        let stamp = Stamp {
            sender: u32::MAX,
            seq: u64::MAX,
            sent_ns: u64::MAX,
        };
        let mut out = Vec::new();
        write(&mut out, stamp, MIN_MESSAGE_BYTES);
        assert_eq!(out.len(), MIN_MESSAGE_BYTES);
        assert_eq!(parse(&out), Some(stamp));
    }

    #[test]
    fn foreign_texts_are_not_stamps() {
        for text in [
            &b""[..],
            b"hello",
            b"L1:2:3",
            b"L1:2:3:xxy",
            b"L:2:3:x",
            b"L1:-2:3:x",
            b"L4294967296:0:0:x",
            b"L1:99999999999999999999:0:x",
        ] {
            assert_eq!(parse(text), None, "{:?}", String::from_utf8_lossy(text));
        }
    }
}
