//! Showing raw protocol bytes (names, rooms) in logs without letting a
//! hostile name forge log lines.

use std::fmt;

/// Displays bytes as text: valid UTF-8 passes through with control
/// characters escaped, anything else as `\xNN`.
pub struct Printable<'a>(pub &'a [u8]);

impl fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            for c in chunk.valid().chars() {
                if c.is_control() {
                    write!(f, "{}", c.escape_default())?;
                } else {
                    f.write_fmt(format_args!("{c}"))?;
                }
            }
            for byte in chunk.invalid() {
                write!(f, "\\x{byte:02x}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::Printable;

    #[test]
    fn escapes_controls_and_invalid_bytes() {
        let shown = Printable(b"h\xc3\xa9llo\nworld\xff").to_string();
        assert_eq!(shown, "h\u{e9}llo\\nworld\\xff");
    }
}
