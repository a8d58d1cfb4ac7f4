//! The sealed envelope (secure extension v2): what a secure client puts in
//! the text field of a ROOM_MSG or DM.
//!
//! ```text
//! u8 version (2) | u8 kind | short context | short sender | u32 epoch | u64 counter   (the header)
//! [16] iv | long ciphertext | [16] mac | [64] signature
//! ```
//!
//! Encrypt-then-MAC: AES-256 in counter mode hides the text, and an HMAC over
//! everything before it (header, IV, ciphertext with its length) proves that
//! none of it changed. The MAC is checked before the ciphertext is touched,
//! so nothing about a forged envelope's plaintext is ever computed. Both
//! keys come from the one issued key through HKDF with distinct labels, so
//! the cipher key never doubles as the MAC key.
//!
//! The envelope is the unit the server relays to every member, so it is
//! kept small: counter mode needs no padding (the ciphertext is as long as
//! the text), and the HMAC-SHA256 tag is cut to its first 16 bytes, as
//! IPsec's HMAC-SHA-256-128 (RFC 4868) is, which leaves a forger one
//! chance in 2^128 per try. Together that is 32 bytes off every envelope
//! of a short message, against CBC and the whole tag.
//!
//! The MAC proves only that a holder of the key wrote the envelope, and every
//! member of a room holds it; the sender's Ed25519 signature says *which*
//! member. It covers the header and a hash of IV and ciphertext, so a member
//! cannot lift someone else's signature onto a different message. The
//! `sender` name is for display: who signed is the key, looked up by the
//! keyring.
//!
//! The types enforce the order of checks: [`Envelope::parse`] gives an
//! envelope that can only be MAC-checked, and only the [`Authenticated`] it
//! returns can be decrypted.

use ctr::cipher::{KeyIvInit, StreamCipher};
use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use nom::bytes::complete::take;
use nom::combinator::all_consuming;
use nom::multi::length_data;
use nom::number::complete::{be_u16, be_u32, be_u64, be_u8};
use nom::Parser;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::identity::{Identity, PeerIdentity, SIGNATURE_LEN};
use super::{VerificationFailed, ISSUED_KEY_LEN};

/// The only envelope version.
pub const VERSION: u8 = 2;
/// Length of the random IV that starts the sealed part: the first
/// counter block. Random 128-bit starts under one key overlap with odds
/// far below any other risk, for as many messages as a room key ever seals.
pub const IV_LEN: usize = 16;
/// Length of the MAC after the ciphertext: HMAC-SHA256 cut to its first
/// 16 bytes.
pub const MAC_LEN: usize = 16;

const ENC_INFO: &[u8] = b"parlor v2 aes-256-ctr";
const MAC_INFO: &[u8] = b"parlor v2 hmac-sha256";
/// Prefixed to what is signed, so that a signature made for an envelope can
/// never pass for a signature over anything else made with the same key.
const SIGNATURE_CONTEXT: &[u8] = b"parlor v2 signature";

/// AES-256-CTR with the whole 16-byte block as a big-endian counter, as
/// `openssl enc -aes-256-ctr` counts.
type Aes256Ctr = ctr::Ctr128BE<aes::Aes256>;
type HmacSha256 = Hmac<Sha256>;

/// What the envelope is for; part of the MAC, so a room message cannot be
/// replayed as a DM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A ROOM_MSG, sealed with the room key of an epoch.
    Room = 1,
    /// A DM, sealed with a DM key.
    Direct = 2,
}

/// Who wrote the envelope, where to, and under which key. `context` is the
/// room, or for a DM the recipient's name; `epoch` is the room key's epoch or
/// the DM key's id; `counter` counts the sender's messages under that key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header<'a> {
    /// Room message or DM.
    pub kind: Kind,
    /// The room's name, or the DM recipient's: a message cannot be moved
    /// to another room or recipient.
    pub context: &'a [u8],
    /// The sender's name when it sealed the message, for display; the
    /// server's relay must name the same sender.
    pub sender: &'a [u8],
    /// The room key's epoch, or the DM key's id.
    pub epoch: u32,
    /// Counts the sender's messages under this key, so that a replay fails.
    pub counter: u64,
}

impl Header<'_> {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.context.len() + self.sender.len());
        out.push(VERSION);
        out.push(self.kind as u8);
        put_short(&mut out, self.context);
        put_short(&mut out, self.sender);
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.counter.to_be_bytes());
        out
    }
}

/// The cipher and MAC keys derived from one issued key.
pub struct MessageKeys {
    enc: Zeroizing<[u8; 32]>,
    mac: Zeroizing<[u8; 32]>,
}

impl MessageKeys {
    /// HKDF-SHA256 without salt: the issued key is already uniformly random,
    /// so HKDF's job here is only to split it into independent keys.
    pub fn derive(issued: &[u8; ISSUED_KEY_LEN]) -> MessageKeys {
        let hkdf = Hkdf::<Sha256>::new(None, issued);
        let mut enc = Zeroizing::new([0; 32]);
        let mut mac = Zeroizing::new([0; 32]);
        hkdf.expand(ENC_INFO, enc.as_mut())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        hkdf.expand(MAC_INFO, mac.as_mut())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        MessageKeys { enc, mac }
    }

    fn hmac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(self.mac.as_ref()).expect("HMAC takes keys of any length")
    }

    /// Encrypts or decrypts in place: counter mode is its own inverse.
    fn apply_cipher(&self, iv: &[u8; IV_LEN], text: &mut [u8]) {
        Aes256Ctr::new((&*self.enc).into(), iv.into()).apply_keystream(text);
    }
}

/// The plaintext does not fit a text field once sealed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("message too long to encrypt: at most {max} bytes")]
pub struct TooLong {
    /// The longest plaintext that fits, in bytes.
    pub max: usize,
}

/// The longest plaintext whose envelope still fits a 65,535-byte text field,
/// for these name lengths.
pub fn max_plaintext(context_len: usize, sender_len: usize) -> usize {
    let header = 1 + 1 + 1 + context_len + 1 + sender_len + 4 + 8;
    let fixed = header + IV_LEN + 2 + MAC_LEN + SIGNATURE_LEN;
    // Counter mode adds nothing: the ciphertext is as long as the text.
    (u16::MAX as usize).saturating_sub(fixed)
}

/// Seals `plaintext` with a fresh random IV.
pub fn seal(
    header: &Header,
    keys: &MessageKeys,
    plaintext: &[u8],
    signer: &Identity,
) -> Result<Vec<u8>, TooLong> {
    let mut iv = [0; IV_LEN];
    rand::fill(&mut iv);
    seal_with_iv(header, keys, &iv, plaintext, signer)
}

/// [`seal`] with a chosen IV, so that the known-answer tests are exact. An IV
/// must never repeat under one key: only [`seal`] is for real messages.
fn seal_with_iv(
    header: &Header,
    keys: &MessageKeys,
    iv: &[u8; IV_LEN],
    plaintext: &[u8],
    signer: &Identity,
) -> Result<Vec<u8>, TooLong> {
    let max = max_plaintext(header.context.len(), header.sender.len());
    if plaintext.len() > max {
        return Err(TooLong { max });
    }
    let header_bytes = header.encode();
    let mut text = Vec::with_capacity(
        header_bytes.len() + IV_LEN + 2 + plaintext.len() + MAC_LEN + SIGNATURE_LEN,
    );
    text.extend_from_slice(&header_bytes);
    text.extend_from_slice(iv);
    put_long(&mut text, plaintext);
    let ciphertext = text.len() - plaintext.len();
    keys.apply_cipher(iv, &mut text[ciphertext..]);
    let signed = signed_message(&header_bytes, iv, &text[ciphertext..]);
    let mac = keys.hmac().chain_update(&text).finalize().into_bytes();
    text.extend_from_slice(&mac[..MAC_LEN]);
    text.extend_from_slice(&signer.sign(&signed));
    Ok(text)
}

/// `"parlor v2 signature" || header || SHA-256(iv || ciphertext)`: what the
/// sender signs.
fn signed_message(header: &[u8], iv: &[u8], ciphertext: &[u8]) -> Vec<u8> {
    let digest = Sha256::new()
        .chain_update(iv)
        .chain_update(ciphertext)
        .finalize();
    [SIGNATURE_CONTEXT, header, &digest].concat()
}

/// A parsed envelope; nothing in it is trusted yet.
#[derive(Debug)]
pub struct Envelope<'a> {
    /// Who it claims to be from and which key it claims to be under, to
    /// pick the key to check it with; trusted only once the MAC matches.
    pub header: Header<'a>,
    header_bytes: &'a [u8],
    iv: &'a [u8],
    ciphertext: &'a [u8],
    /// Header through ciphertext: what the MAC covers.
    authenticated: &'a [u8],
    mac: &'a [u8],
    signature: &'a [u8; SIGNATURE_LEN],
}

impl<'a> Envelope<'a> {
    /// Splits a text field into its parts. The lengths must fill it exactly
    /// and the version must be [`VERSION`].
    pub fn parse(text: &'a [u8]) -> Result<Envelope<'a>, VerificationFailed> {
        let consumed = |rest: &[u8]| &text[..text.len() - rest.len()];
        let (rest, (version, kind, context, sender, epoch, counter)) = (
            be_u8,
            be_u8,
            length_data(be_u8),
            length_data(be_u8),
            be_u32,
            be_u64,
        )
            .parse(text)
            .map_err(|_: nom::Err<nom::error::Error<&[u8]>>| VerificationFailed)?;
        let header_bytes = consumed(rest);
        let (rest, (iv, ciphertext)) = (take(IV_LEN), length_data(be_u16))
            .parse(rest)
            .map_err(|_: nom::Err<nom::error::Error<&[u8]>>| VerificationFailed)?;
        let authenticated = consumed(rest);
        let (_, (mac, signature)) = all_consuming((take(MAC_LEN), take(SIGNATURE_LEN)))
            .parse(rest)
            .map_err(|_: nom::Err<nom::error::Error<&[u8]>>| VerificationFailed)?;
        let signature: &[u8; SIGNATURE_LEN] = signature.try_into().expect("took SIGNATURE_LEN");
        let kind = match kind {
            1 => Kind::Room,
            2 => Kind::Direct,
            _ => return Err(VerificationFailed),
        };
        if version != VERSION {
            return Err(VerificationFailed);
        }
        Ok(Envelope {
            header: Header {
                kind,
                context,
                sender,
                epoch,
                counter,
            },
            header_bytes,
            iv,
            ciphertext,
            authenticated,
            mac,
            signature,
        })
    }

    /// Checks the MAC in constant time (`verify_truncated_left` compares
    /// the tag's first [`MAC_LEN`] bytes with `subtle`). This is the only
    /// way to an [`Authenticated`] envelope.
    pub fn check_mac<'k>(
        self,
        keys: &'k MessageKeys,
    ) -> Result<Authenticated<'a, 'k>, VerificationFailed> {
        keys.hmac()
            .chain_update(self.authenticated)
            .verify_truncated_left(self.mac)
            .map_err(|_| VerificationFailed)?;
        Ok(Authenticated {
            envelope: self,
            keys,
        })
    }
}

/// An envelope whose MAC matched `keys`: it was written by a holder of the
/// issued key and has not changed since.
#[derive(Debug)]
pub struct Authenticated<'a, 'k> {
    envelope: Envelope<'a>,
    keys: &'k MessageKeys,
}

impl<'a> Authenticated<'a, '_> {
    /// The header, now known to be what a holder of the key wrote; whether
    /// it is new (its counter) is for the [`Keyring`](crate::Keyring).
    pub fn header(&self) -> &Header<'a> {
        &self.envelope.header
    }

    /// Checks that the holder of `sender`'s signing key signed this envelope.
    pub fn check_signature(&self, sender: &PeerIdentity) -> Result<(), VerificationFailed> {
        let envelope = &self.envelope;
        let message = signed_message(envelope.header_bytes, envelope.iv, envelope.ciphertext);
        sender.verify(&message, envelope.signature)
    }

    /// Decrypts. Once the MAC has matched nothing can fail here: counter
    /// mode has no padding to check.
    pub fn decrypt(self) -> Zeroizing<Vec<u8>> {
        let envelope = &self.envelope;
        let iv: &[u8; IV_LEN] = envelope.iv.try_into().expect("parse took IV_LEN bytes");
        let mut plaintext = Zeroizing::new(envelope.ciphertext.to_vec());
        self.keys.apply_cipher(iv, &mut plaintext);
        plaintext
    }
}

impl std::fmt::Debug for MessageKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MessageKeys(..)")
    }
}

fn put_short(out: &mut Vec<u8>, field: &[u8]) {
    out.push(u8::try_from(field.len()).expect("names are at most 255 bytes"));
    out.extend_from_slice(field);
}

fn put_long(out: &mut Vec<u8>, field: &[u8]) {
    let len = u16::try_from(field.len()).expect("checked against max_plaintext");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(field);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kat;

    #[test]
    fn derives_the_keys_openssl_derives() {
        let keys = MessageKeys::derive(&kat::issued_key());
        assert_eq!(keys.enc.as_slice(), kat::hex(kat::ENC_KEY));
        assert_eq!(keys.mac.as_slice(), kat::hex(kat::MAC_KEY));
    }

    #[test]
    fn seals_the_known_answer_bytes_signature_and_all() {
        let keys = MessageKeys::derive(&kat::issued_key());
        let identity = kat::identity();
        let text =
            seal_with_iv(&kat::header(), &keys, &kat::IV, kat::PLAINTEXT, &identity).unwrap();
        // Ed25519 is deterministic, so the whole envelope is known.
        assert_eq!(text, kat::openssl_envelope());
        assert_eq!(
            text.len(),
            140,
            "the worked example's length, for PROTOCOL.md"
        );
    }

    #[test]
    fn opens_the_envelope_openssl_made() {
        let keys = MessageKeys::derive(&kat::issued_key());
        let text = kat::openssl_envelope();
        let envelope = Envelope::parse(&text).unwrap();
        assert_eq!(envelope.header, kat::header());
        let authenticated = envelope.check_mac(&keys).unwrap();
        assert_eq!(authenticated.check_signature(&kat::peer()), Ok(()));
        assert_eq!(authenticated.decrypt().as_slice(), kat::PLAINTEXT);
    }

    #[test]
    fn a_different_key_fails_the_mac() {
        let mut other = *kat::issued_key();
        other[31] ^= 1;
        let text = kat::openssl_envelope();
        let envelope = Envelope::parse(&text).unwrap();
        let wrong = MessageKeys::derive(&other);
        assert_eq!(envelope.check_mac(&wrong).unwrap_err(), VerificationFailed);
    }

    #[test]
    fn only_whole_version_2_envelopes_parse() {
        let text = kat::openssl_envelope();
        assert!(Envelope::parse(&text[..text.len() - 1]).is_err());
        assert!(Envelope::parse(&[&text[..], &[0]].concat()).is_err());
        assert!(Envelope::parse(&[]).is_err());
        for (offset, value) in [(0, 1), (0, 3), (1, 0), (1, 3)] {
            let mut changed = text.clone();
            changed[offset] = value;
            assert!(
                Envelope::parse(&changed).is_err(),
                "byte {offset} = {value}"
            );
        }
    }

    #[test]
    fn the_longest_plaintext_fits_a_text_field_and_one_more_byte_does_not() {
        let keys = MessageKeys::derive(&kat::issued_key());
        let identity = kat::identity();
        let header = kat::header();
        let max = max_plaintext(ROOM_LEN, SENDER_LEN);
        assert_eq!(max, 65_411, "the longest plaintext, for PROTOCOL.md");
        assert_eq!(max_plaintext(255, 255), 64_911, "likewise");
        let text = seal(&header, &keys, &vec![b'x'; max], &identity).unwrap();
        assert_eq!(text.len(), u16::MAX as usize, "no padding: every byte used");
        assert_eq!(
            seal(&header, &keys, &vec![b'x'; max + 1], &identity),
            Err(TooLong { max })
        );
    }

    const ROOM_LEN: usize = kat::ROOM.len();
    const SENDER_LEN: usize = kat::SENDER.len();
}
