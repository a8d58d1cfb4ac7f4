//! How the TLS transport names a server's key to people, and what the
//! server logs and the client pins agree on.
//!
//! A [`TlsFingerprint`] is the SHA-256 of the server certificate's
//! SubjectPublicKeyInfo, written `SHA256:<64 lowercase hex digits>`. The
//! server logs it at every start (`TLS key fingerprint SHA256:...`), and the
//! reference client shows it on connecting and keeps it, per `host:port`, in
//! its `known_servers` file (trust on first use, as SSH does with host
//! keys). It names the key rather than the certificate, so a certificate
//! renewed for the same key keeps its fingerprint and its pins.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// The SHA-256 of a certificate's DER SubjectPublicKeyInfo. See the module
/// documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TlsFingerprint(pub [u8; 32]);

/// What every written fingerprint starts with: the hash it is, as in SSH's
/// `SHA256:` fingerprints.
const PREFIX: &str = "SHA256:";

impl TlsFingerprint {
    /// The fingerprint of a key, given as the DER SubjectPublicKeyInfo that
    /// the certificate carries.
    pub fn of_spki(spki_der: &[u8]) -> TlsFingerprint {
        TlsFingerprint(Sha256::digest(spki_der).into())
    }
}

impl fmt::Display for TlsFingerprint {
    /// `SHA256:` and the digest in lowercase hex.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(PREFIX)?;
        self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

/// A text that is not `SHA256:` and 64 hex digits.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("a TLS key fingerprint is written SHA256: and 64 hex digits")]
pub struct BadFingerprint;

impl FromStr for TlsFingerprint {
    type Err = BadFingerprint;

    /// Reads what [`Display`](fmt::Display) wrote; hex digits of either case.
    fn from_str(text: &str) -> Result<TlsFingerprint, BadFingerprint> {
        let hex = text.strip_prefix(PREFIX).ok_or(BadFingerprint)?.as_bytes();
        if hex.len() != 64 {
            return Err(BadFingerprint);
        }
        let digit = |byte: u8| (byte as char).to_digit(16).ok_or(BadFingerprint);
        let mut digest = [0; 32];
        for (out, pair) in digest.iter_mut().zip(hex.chunks_exact(2)) {
            *out = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
        }
        Ok(TlsFingerprint(digest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_is_sha256_of_the_spki_in_lowercase_hex_and_reads_back() {
        // SHA-256 of no bytes at all, a value anyone can check.
        let empty = TlsFingerprint::of_spki(b"");
        let shown = empty.to_string();
        assert_eq!(
            shown,
            "SHA256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(shown.parse(), Ok(empty));
        assert_eq!(shown.to_uppercase().parse(), Ok(empty));
        let not_hex = format!("SHA256:zz{}", &shown[9..]);
        let too_long = format!("{shown}0");
        for bad in ["", "SHA256:", "MD5:e3b0", &shown[..70], &too_long, &not_hex] {
            assert_eq!(
                bad.parse::<TlsFingerprint>(),
                Err(BadFingerprint),
                "{bad:?}"
            );
        }
    }
}
