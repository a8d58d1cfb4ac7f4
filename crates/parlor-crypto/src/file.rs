//! The client's cryptography of file transfer: sealed chunks, the sealed
//! manifest and the sender's signature over an offer.
//!
//! A file is cut into chunks of `chunk_size` plaintext bytes (the last one
//! shorter, an empty file has none). Every chunk is sealed under keys that
//! belong to this one file:
//!
//! ```text
//! enc_key = HKDF-SHA256(ikm = K, salt = nonce, info = "parlor v2 file aes-256-cbc")
//! mac_key = HKDF-SHA256(ikm = K, salt = nonce, info = "parlor v2 file hmac-sha256")
//! chunk   = iv[16] || AES-256-CBC(enc_key, iv, PKCS#7(plaintext))
//!                  || HMAC-SHA256(mac_key, u32 index || u32 chunk_count || iv || ciphertext)
//! ```
//!
//! `K` is the issued room key of the offer's epoch, or the DM key of its id,
//! and `nonce` the offer's random 16 bytes, so two files never share chunk
//! keys even under one room key. As in the envelope the MAC is checked, in
//! constant time, before the ciphertext is decrypted; it covers the chunk's
//! index and the chunk count, so a chunk cannot be moved to another place
//! in the file, and the file cannot be cut short unnoticed (the count is
//! fixed by the signed offer).
//!
//! The file's SHA-256 never travels in clear: it would let anyone on the
//! path, and the server, confirm that a known document is being sent. It
//! travels in the **sealed manifest** (SHA-256 and size, sealed like a
//! chunk under keys of their own), which the recipient opens with the file
//! key and compares with what it assembled. The sender's Ed25519 signature
//! covers every field of the offer the server relays, manifest and counter
//! included ([`signed_offer`]): together with the manifest check it says who
//! sent these exact bytes. The counter is the sender's message counter
//! under the same key, so an offer played again fails like a message.
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::envelope::Kind;
use super::identity::{Identity, PeerIdentity, SIGNATURE_LEN};
use super::{VerificationFailed, ISSUED_KEY_LEN};
use parlor_proto::transfer::{FileMeta, DIGEST_LEN, NONCE_LEN};

/// Length of the random AES-CBC IV that starts a chunk and the manifest.
pub const IV_LEN: usize = 16;
/// Length of the whole HMAC-SHA256 tag that ends them. Unlike the
/// envelope's, it is not cut short: a chunk is up to hundreds of KiB, so
/// 16 more bytes cost nothing.
pub const MAC_LEN: usize = 32;

/// The plaintext bytes in every chunk but the last, unless the sender
/// chooses otherwise.
pub const DEFAULT_CHUNK_SIZE: u32 = 256 << 10;

/// How many chunks a sender asks to have in flight.
pub const DEFAULT_WINDOW: u8 = 8;

/// The sealed manifest's length: IV, the 48-byte ciphertext of `digest ||
/// u64 size` (40 bytes and their padding), MAC.
pub const MANIFEST_LEN: usize = IV_LEN + 48 + MAC_LEN;

const ENC_INFO: &[u8] = b"parlor v2 file aes-256-cbc";
const MAC_INFO: &[u8] = b"parlor v2 file hmac-sha256";
/// The manifest has keys of its own, so that no manifest can pass for a
/// chunk or the other way round.
const MANIFEST_ENC_INFO: &[u8] = b"parlor v2 file manifest aes-256-cbc";
const MANIFEST_MAC_INFO: &[u8] = b"parlor v2 file manifest hmac-sha256";
/// Prefixed to a signed offer, so that it can never pass for an envelope's
/// signature (`"parlor v2 signature"`) or the other way round.
const SIGNATURE_CONTEXT: &[u8] = b"parlor v2 file";

type Aes256CbcEnc = cbc::Encryptor<aes::Aes256>;
type Aes256CbcDec = cbc::Decryptor<aes::Aes256>;
type HmacSha256 = Hmac<Sha256>;

/// The number of chunks of a file: `ceil(size / chunk_size)`, 0 for an
/// empty file; `None` when the chunk size is 0 or the count would not fit
/// the offer's `u32`.
pub fn chunk_count(size: u64, chunk_size: u32) -> Option<u32> {
    if chunk_size == 0 {
        return None;
    }
    u32::try_from(size.div_ceil(u64::from(chunk_size))).ok()
}

/// Where chunk `index` lies in the file: its offset and length.
pub fn chunk_span(size: u64, chunk_size: u32, index: u32) -> (u64, usize) {
    let offset = u64::from(index) * u64::from(chunk_size);
    let len = size.saturating_sub(offset).min(u64::from(chunk_size));
    (offset, len as usize)
}

/// One cipher key and one MAC key.
struct KeyPair {
    enc: Zeroizing<[u8; 32]>,
    mac: Zeroizing<[u8; 32]>,
}

impl KeyPair {
    fn expand(hkdf: &Hkdf<Sha256>, enc_info: &[u8], mac_info: &[u8]) -> KeyPair {
        let mut enc = Zeroizing::new([0; 32]);
        let mut mac = Zeroizing::new([0; 32]);
        hkdf.expand(enc_info, enc.as_mut())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        hkdf.expand(mac_info, mac.as_mut())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        KeyPair { enc, mac }
    }

    fn hmac(&self, prefix: &[u8]) -> HmacSha256 {
        HmacSha256::new_from_slice(self.mac.as_ref())
            .expect("HMAC takes keys of any length")
            .chain_update(prefix)
    }

    /// `iv || AES-256-CBC(plaintext) || HMAC(prefix || iv || ciphertext)`.
    fn seal(&self, prefix: &[u8], iv: &[u8; IV_LEN], plaintext: &[u8]) -> Vec<u8> {
        let ciphertext = Aes256CbcEnc::new((&*self.enc).into(), iv.into())
            .encrypt_padded_vec::<Pkcs7>(plaintext);
        let mut data = Vec::with_capacity(IV_LEN + ciphertext.len() + MAC_LEN);
        data.extend_from_slice(iv);
        data.extend_from_slice(&ciphertext);
        let mac = self
            .hmac(prefix)
            .chain_update(&data)
            .finalize()
            .into_bytes();
        data.extend_from_slice(&mac);
        data
    }

    /// Checks the MAC (in constant time), and only then decrypts.
    fn open(&self, prefix: &[u8], data: &[u8]) -> Result<Zeroizing<Vec<u8>>, VerificationFailed> {
        // At least an IV, one block and a MAC, in whole blocks.
        let ciphertext_len = data
            .len()
            .checked_sub(IV_LEN + MAC_LEN)
            .filter(|len| *len > 0 && len % 16 == 0)
            .ok_or(VerificationFailed)?;
        let (authenticated, mac) = data.split_at(IV_LEN + ciphertext_len);
        self.hmac(prefix)
            .chain_update(authenticated)
            .verify_slice(mac)
            .map_err(|_| VerificationFailed)?;
        let (iv, ciphertext) = authenticated.split_at(IV_LEN);
        let iv: &[u8; IV_LEN] = iv.try_into().expect("split at IV_LEN");
        Aes256CbcDec::new((&*self.enc).into(), iv.into())
            .decrypt_padded_vec::<Pkcs7>(ciphertext)
            .map(Zeroizing::new)
            .map_err(|_| VerificationFailed)
    }
}

/// The keys of one file: for its chunks, and for its manifest.
pub struct FileKeys {
    chunks: KeyPair,
    manifest: KeyPair,
}

impl FileKeys {
    /// Derives the keys of the file with this `nonce` from the issued key.
    pub fn derive(issued: &[u8; ISSUED_KEY_LEN], nonce: &[u8; NONCE_LEN]) -> FileKeys {
        let hkdf = Hkdf::<Sha256>::new(Some(nonce), issued);
        FileKeys {
            chunks: KeyPair::expand(&hkdf, ENC_INFO, MAC_INFO),
            manifest: KeyPair::expand(&hkdf, MANIFEST_ENC_INFO, MANIFEST_MAC_INFO),
        }
    }

    /// Seals chunk `index` of `chunk_count` with a fresh random IV.
    pub fn seal_chunk(&self, index: u32, chunk_count: u32, plaintext: &[u8]) -> Vec<u8> {
        self.seal_chunk_with_iv(index, chunk_count, &random_iv(), plaintext)
    }

    /// [`FileKeys::seal_chunk`] with a chosen IV, for the known-answer
    /// tests. An IV must never repeat under one key.
    fn seal_chunk_with_iv(
        &self,
        index: u32,
        chunk_count: u32,
        iv: &[u8; IV_LEN],
        plaintext: &[u8],
    ) -> Vec<u8> {
        self.chunks
            .seal(&chunk_prefix(index, chunk_count), iv, plaintext)
    }

    /// Checks a sealed chunk's MAC for its place in the file (in constant
    /// time), and only then decrypts it.
    pub fn open_chunk(
        &self,
        index: u32,
        chunk_count: u32,
        data: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, VerificationFailed> {
        self.chunks.open(&chunk_prefix(index, chunk_count), data)
    }

    /// Seals the file's SHA-256 and size, for the offer.
    pub fn seal_manifest(&self, digest: &[u8; DIGEST_LEN], size: u64) -> [u8; MANIFEST_LEN] {
        self.seal_manifest_with_iv(&random_iv(), digest, size)
    }

    fn seal_manifest_with_iv(
        &self,
        iv: &[u8; IV_LEN],
        digest: &[u8; DIGEST_LEN],
        size: u64,
    ) -> [u8; MANIFEST_LEN] {
        let plaintext = [&digest[..], &size.to_be_bytes()].concat();
        let sealed = self.manifest.seal(&[], iv, &plaintext);
        sealed.try_into().expect("40 bytes seal to MANIFEST_LEN")
    }

    /// Opens a sealed manifest: the file's SHA-256 and size, as the sender
    /// sealed them.
    pub fn open_manifest(
        &self,
        manifest: &[u8],
    ) -> Result<([u8; DIGEST_LEN], u64), VerificationFailed> {
        let plaintext = self.manifest.open(&[], manifest)?;
        let (digest, size) = plaintext
            .split_first_chunk::<DIGEST_LEN>()
            .ok_or(VerificationFailed)?;
        let size: [u8; 8] = size.try_into().map_err(|_| VerificationFailed)?;
        Ok((*digest, u64::from_be_bytes(size)))
    }
}

impl std::fmt::Debug for FileKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileKeys(..)")
    }
}

/// What a chunk's MAC covers before its IV: `u32 index || u32 chunk_count`.
fn chunk_prefix(index: u32, chunk_count: u32) -> [u8; 8] {
    let mut prefix = [0; 8];
    prefix[..4].copy_from_slice(&index.to_be_bytes());
    prefix[4..].copy_from_slice(&chunk_count.to_be_bytes());
    prefix
}

fn random_iv() -> [u8; IV_LEN] {
    let mut iv = [0; IV_LEN];
    rand::fill(&mut iv);
    iv
}

/// Where a file is offered and by whom: what the signature binds besides
/// the file's own description. `context` is the room, or for a file to one
/// user that user's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OfferContext<'a> {
    /// A room file or a file to one user.
    pub kind: Kind,
    /// The room's name, or the recipient's, so that an offer cannot be
    /// forwarded elsewhere under the same signature.
    pub context: &'a [u8],
    /// The sender's name when it made the offer.
    pub sender: &'a [u8],
}

/// What the sender signs: every field of the offer that the server relays.
///
/// ```text
/// "parlor v2 file" || u8 kind || short context || short sender || short name
///   || u64 size || u32 chunk_size || u32 chunk_count || u8 flags || u32 key_id
///   || nonce[16] || long manifest || u64 counter
/// ```
///
/// # Panics
/// If a name is over 255 bytes or the manifest over 65,535 (the wire
/// cannot carry them).
pub fn signed_offer(offer: &OfferContext, meta: &FileMeta) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        SIGNATURE_CONTEXT.len()
            + 64
            + offer.context.len()
            + offer.sender.len()
            + meta.name.len()
            + meta.manifest.len(),
    );
    out.extend_from_slice(SIGNATURE_CONTEXT);
    out.push(offer.kind as u8);
    put_short(&mut out, offer.context);
    put_short(&mut out, offer.sender);
    put_short(&mut out, &meta.name);
    out.extend_from_slice(&meta.size.to_be_bytes());
    out.extend_from_slice(&meta.chunk_size.to_be_bytes());
    out.extend_from_slice(&meta.chunk_count.to_be_bytes());
    out.push(meta.flags);
    out.extend_from_slice(&meta.key_id.to_be_bytes());
    out.extend_from_slice(&meta.nonce);
    let manifest_len = u16::try_from(meta.manifest.len()).expect("a manifest fits a long field");
    out.extend_from_slice(&manifest_len.to_be_bytes());
    out.extend_from_slice(&meta.manifest);
    out.extend_from_slice(&meta.counter.to_be_bytes());
    out
}

/// The sender's Ed25519 signature over [`signed_offer`]; the signature
/// already in `meta` is not part of it.
pub fn sign_offer(
    identity: &Identity,
    offer: &OfferContext,
    meta: &FileMeta,
) -> [u8; SIGNATURE_LEN] {
    identity.sign(&signed_offer(offer, meta))
}

/// Checks `meta.signature` against the sender's key.
pub fn verify_offer(
    sender: &PeerIdentity,
    offer: &OfferContext,
    meta: &FileMeta,
) -> Result<(), VerificationFailed> {
    sender.verify(&signed_offer(offer, meta), &meta.signature)
}

fn put_short(out: &mut Vec<u8>, field: &[u8]) {
    out.push(u8::try_from(field.len()).expect("names are at most 255 bytes"));
    out.extend_from_slice(field);
}

#[cfg(test)]
mod tests;
