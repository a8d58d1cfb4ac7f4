//! The client's cryptography of file transfer: sealed chunks and the
//! sender's signature over an offer.
//!
//! A file is cut into chunks of `chunk_size` plaintext bytes (the last one
//! shorter, an empty file has none). When the offer's flags say it is
//! encrypted, every chunk is sealed under keys that belong to this one file:
//!
//! ```text
//! enc_key = HKDF-SHA256(ikm = K, salt = nonce, info = "parlor v1 file aes-256-cbc")
//! mac_key = HKDF-SHA256(ikm = K, salt = nonce, info = "parlor v1 file hmac-sha256")
//! chunk   = iv[16] || AES-256-CBC(enc_key, iv, PKCS#7(plaintext))
//!                  || HMAC-SHA256(mac_key, u32 index || u32 chunk_count || iv || ciphertext)
//! ```
//!
//! `K` is the issued room key of the offer's epoch, or the DM key of its id,
//! and `nonce` the offer's random 16 bytes, so two files never share chunk
//! keys even under one room key. As in the envelope (§12.7) the MAC is
//! checked, in constant time, before the ciphertext is decrypted; it covers
//! the chunk's index and the chunk count, so a chunk cannot be moved to
//! another place in the file, and the file cannot be cut short unnoticed
//! (the count is fixed by the signed offer).
//!
//! The MAC proves only that some holder of `K` wrote the chunk. The sender's
//! RSA-PSS signature over the offer ([`signed_offer`]) binds the file's
//! SHA-256 digest to the sender, and the recipient checks the digest of
//! what it received before it keeps the file: together they say who sent
//! these exact bytes.

use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::envelope::{Kind, IV_LEN, MAC_LEN};
use super::identity::{Identity, PeerKey};
use super::{VerificationFailed, ISSUED_KEY_LEN};
use parlor_proto::transfer::{FileMeta, NONCE_LEN};

/// The plaintext bytes in every chunk but the last, unless the sender
/// chooses otherwise.
pub const DEFAULT_CHUNK_SIZE: u32 = 256 << 10;

/// How many chunks a sender asks to have in flight.
pub const DEFAULT_WINDOW: u8 = 8;

const ENC_INFO: &[u8] = b"parlor v1 file aes-256-cbc";
const MAC_INFO: &[u8] = b"parlor v1 file hmac-sha256";
/// Prefixed to a signed offer, so that it can never pass for an envelope's
/// signature (`"parlor v1 signature"`) or the other way round.
const SIGNATURE_CONTEXT: &[u8] = b"parlor v1 file";

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

/// The cipher and MAC keys of one file.
pub struct FileKeys {
    enc: Zeroizing<[u8; 32]>,
    mac: Zeroizing<[u8; 32]>,
}

impl FileKeys {
    /// Derives the keys of the file with this `nonce` from the issued key.
    pub fn derive(issued: &[u8; ISSUED_KEY_LEN], nonce: &[u8; NONCE_LEN]) -> FileKeys {
        let hkdf = Hkdf::<Sha256>::new(Some(nonce), issued);
        let mut enc = Zeroizing::new([0; 32]);
        let mut mac = Zeroizing::new([0; 32]);
        hkdf.expand(ENC_INFO, enc.as_mut())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        hkdf.expand(MAC_INFO, mac.as_mut())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        FileKeys { enc, mac }
    }

    fn hmac(&self, index: u32, chunk_count: u32) -> HmacSha256 {
        HmacSha256::new_from_slice(self.mac.as_ref())
            .expect("HMAC takes keys of any length")
            .chain_update(index.to_be_bytes())
            .chain_update(chunk_count.to_be_bytes())
    }

    /// Seals chunk `index` of `chunk_count` with a fresh random IV.
    pub fn seal_chunk(&self, index: u32, chunk_count: u32, plaintext: &[u8]) -> Vec<u8> {
        let mut iv = [0; IV_LEN];
        rand::fill(&mut iv);
        self.seal_chunk_with_iv(index, chunk_count, &iv, plaintext)
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
        let ciphertext = Aes256CbcEnc::new((&*self.enc).into(), iv.into())
            .encrypt_padded_vec::<Pkcs7>(plaintext);
        let mut data = Vec::with_capacity(IV_LEN + ciphertext.len() + MAC_LEN);
        data.extend_from_slice(iv);
        data.extend_from_slice(&ciphertext);
        let mac = self
            .hmac(index, chunk_count)
            .chain_update(&data)
            .finalize()
            .into_bytes();
        data.extend_from_slice(&mac);
        data
    }

    /// Checks a sealed chunk's MAC for its place in the file (in constant
    /// time), and only then decrypts it.
    pub fn open_chunk(
        &self,
        index: u32,
        chunk_count: u32,
        data: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, VerificationFailed> {
        // At least an IV, one block and a MAC, in whole blocks.
        let ciphertext_len = data
            .len()
            .checked_sub(IV_LEN + MAC_LEN)
            .filter(|len| *len > 0 && len % 16 == 0)
            .ok_or(VerificationFailed)?;
        let (authenticated, mac) = data.split_at(IV_LEN + ciphertext_len);
        self.hmac(index, chunk_count)
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

impl std::fmt::Debug for FileKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileKeys(..)")
    }
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

/// What the sender signs:
///
/// ```text
/// "parlor v1 file" || u8 kind || short context || short sender || short name
///   || u64 size || u32 chunk_size || u32 chunk_count || u8 flags || u32 key_id
///   || nonce[16] || digest[32]
/// ```
///
/// # Panics
/// If a name is over 255 bytes (the wire cannot carry one).
pub fn signed_offer(offer: &OfferContext, meta: &FileMeta) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        SIGNATURE_CONTEXT.len() + 1 + 3 + offer.context.len() + offer.sender.len() + 100,
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
    out.extend_from_slice(&meta.digest);
    out
}

/// The sender's RSA-PSS-SHA256 signature over [`signed_offer`]; the
/// signature already in `meta` is not part of it.
pub fn sign_offer(identity: &Identity, offer: &OfferContext, meta: &FileMeta) -> Vec<u8> {
    identity.sign(&signed_offer(offer, meta))
}

/// Checks `meta.signature` against the sender's key.
pub fn verify_offer(
    sender: &PeerKey,
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
mod tests {
    use bytes::Bytes;
    use sha2::Digest;

    use super::*;
    use crate::kat;
    use parlor_proto::transfer::FILE_FLAG_ENCRYPTED;

    // The constants of testdata/derive-file-kat.sh.
    const NONCE: [u8; NONCE_LEN] = [
        0xb0, 0xb1, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xbb, 0xbc, 0xbd, 0xbe,
        0xbf,
    ];
    const FILE: &[u8] = b"AAAAAAAAAAAAAAAAhello file chunktail";
    const CHUNK: &[u8] = b"hello file chunk";
    const ENC_KEY: &str = "892e86cef8fbd379f3d7351c1c6b7caab96e795de8d15bb9370651836445599f";
    const MAC_KEY: &str = "3aad95c71906e273ee70b2a99023ff011cc8a86d0325a2c40e3e4392ee574724";
    const SEALED_CHUNK: &str = concat!(
        "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf", // iv
        "a85ed8871b810996903433a5a1a82d007750535fade5ab69c921a78d9da08f6d", // ciphertext
        "156707f76720b275b0ade3eb6615fc36ea4dcad54c0b1402e18cde7ed5aee72a", // mac
    );
    const DIGEST: &str = "5a085dfc847bf4185fec9ffc411b85cfa67054523fff3d23fcc213c98c61d557";
    const SIGNED_OFFER: &str = concat!(
        "7061726c6f722076312066696c65",                   // "parlor v1 file"
        "01057661756c7405616c696365096e6f7465732e747874", // kind, room, sender, name
        "0000000000000024000000100000000301",             // size, chunk size, count, flags
        "00000003b0b1b2b3b4b5b6b7b8b9babbbcbdbebf",       // key id, nonce
        "5a085dfc847bf4185fec9ffc411b85cfa67054523fff3d23fcc213c98c61d557",
    );

    fn keys() -> FileKeys {
        FileKeys::derive(&kat::issued_key(), &NONCE)
    }

    fn room_offer() -> OfferContext<'static> {
        OfferContext {
            kind: Kind::Room,
            context: kat::ROOM,
            sender: kat::SENDER,
        }
    }

    fn meta() -> FileMeta {
        FileMeta {
            name: Bytes::from_static(b"notes.txt"),
            size: FILE.len() as u64,
            chunk_size: 16,
            chunk_count: 3,
            flags: FILE_FLAG_ENCRYPTED,
            key_id: kat::EPOCH,
            nonce: NONCE,
            digest: Sha256::digest(FILE).into(),
            signature: Bytes::from_static(include_bytes!("testdata/kat-file-signature.bin")),
        }
    }

    #[test]
    fn derives_the_keys_openssl_derives() {
        let keys = keys();
        assert_eq!(keys.enc.as_slice(), kat::hex(ENC_KEY));
        assert_eq!(keys.mac.as_slice(), kat::hex(MAC_KEY));
        // The nonce salts them: another file under the same key differs.
        let other = FileKeys::derive(&kat::issued_key(), &[0; NONCE_LEN]);
        assert_ne!(other.enc.as_slice(), keys.enc.as_slice());
        assert_ne!(other.mac.as_slice(), keys.mac.as_slice());
    }

    #[test]
    fn seals_the_known_answer_chunk_and_opens_it() {
        let keys = keys();
        let sealed = keys.seal_chunk_with_iv(1, 3, &kat::IV, CHUNK);
        assert_eq!(sealed, kat::hex(SEALED_CHUNK));
        assert_eq!(keys.open_chunk(1, 3, &sealed).unwrap().as_slice(), CHUNK);
        // A random IV: two seals differ, and both open.
        let (one, two) = (keys.seal_chunk(0, 1, b"x"), keys.seal_chunk(0, 1, b"x"));
        assert_ne!(one, two);
        assert_eq!(keys.open_chunk(0, 1, &two).unwrap().as_slice(), b"x");
        // An empty plaintext is one block of padding.
        let empty = keys.seal_chunk(0, 1, b"");
        assert_eq!(empty.len(), IV_LEN + 16 + MAC_LEN);
        assert!(keys.open_chunk(0, 1, &empty).unwrap().is_empty());
    }

    #[test]
    fn any_changed_byte_or_another_place_in_the_file_fails() {
        let keys = keys();
        let sealed = kat::hex(SEALED_CHUNK);
        for offset in 0..sealed.len() {
            let mut changed = sealed.clone();
            changed[offset] ^= 0x01;
            assert_eq!(
                keys.open_chunk(1, 3, &changed),
                Err(VerificationFailed),
                "byte {offset}"
            );
        }
        assert!(keys.open_chunk(0, 3, &sealed).is_err(), "moved to chunk 0");
        assert!(keys.open_chunk(1, 2, &sealed).is_err(), "in a shorter file");
        assert!(keys.open_chunk(1, 3, &sealed[..sealed.len() - 1]).is_err());
        assert!(keys.open_chunk(1, 3, &sealed[..IV_LEN + MAC_LEN]).is_err());
        assert!(keys.open_chunk(1, 3, &[]).is_err());
        let mut other_key = *kat::issued_key();
        other_key[0] ^= 1;
        let wrong = FileKeys::derive(&other_key, &NONCE);
        assert!(wrong.open_chunk(1, 3, &sealed).is_err());
    }

    #[test]
    fn signs_what_openssl_signs() {
        let meta = meta();
        assert_eq!(hex_of(&meta.digest), DIGEST);
        assert_eq!(signed_offer(&room_offer(), &meta), kat::hex(SIGNED_OFFER));
        // openssl's signature verifies...
        assert_eq!(verify_offer(&kat::peer_key(), &room_offer(), &meta), Ok(()));
        // ...and so does ours (PSS is randomised: check it verifies).
        let ours = FileMeta {
            signature: sign_offer(&kat::identity(), &room_offer(), &meta).into(),
            ..meta.clone()
        };
        assert_eq!(verify_offer(&kat::peer_key(), &room_offer(), &ours), Ok(()));
    }

    #[test]
    fn the_signature_binds_every_field_and_the_place() {
        let meta = meta();
        let key = kat::peer_key();
        let offer = room_offer();
        let changes: [(&str, FileMeta); 8] = [
            (
                "name",
                FileMeta {
                    name: Bytes::from_static(b"notes.exe"),
                    ..meta.clone()
                },
            ),
            (
                "size",
                FileMeta {
                    size: 35,
                    ..meta.clone()
                },
            ),
            (
                "chunk size",
                FileMeta {
                    chunk_size: 32,
                    ..meta.clone()
                },
            ),
            (
                "chunk count",
                FileMeta {
                    chunk_count: 2,
                    ..meta.clone()
                },
            ),
            (
                "flags",
                FileMeta {
                    flags: 0,
                    ..meta.clone()
                },
            ),
            (
                "key id",
                FileMeta {
                    key_id: 4,
                    ..meta.clone()
                },
            ),
            (
                "nonce",
                FileMeta {
                    nonce: [0; NONCE_LEN],
                    ..meta.clone()
                },
            ),
            (
                "digest",
                FileMeta {
                    digest: [0; 32],
                    ..meta.clone()
                },
            ),
        ];
        for (field, changed) in changes {
            assert!(verify_offer(&key, &offer, &changed).is_err(), "{field}");
        }
        let places = [
            OfferContext {
                kind: Kind::Direct,
                ..offer
            },
            OfferContext {
                context: b"other",
                ..offer
            },
            OfferContext {
                sender: b"mallory",
                ..offer
            },
        ];
        for place in places {
            assert!(verify_offer(&key, &place, &meta).is_err(), "{place:?}");
        }
        let mallory = Identity::generate(2048).unwrap();
        let forged = FileMeta {
            signature: sign_offer(&mallory, &offer, &meta).into(),
            ..meta
        };
        assert!(verify_offer(&key, &offer, &forged).is_err());
    }

    #[test]
    fn counts_and_spans_chunks() {
        assert_eq!(chunk_count(0, 16), Some(0));
        assert_eq!(chunk_count(1, 16), Some(1));
        assert_eq!(chunk_count(16, 16), Some(1));
        assert_eq!(chunk_count(17, 16), Some(2));
        assert_eq!(chunk_count(36, 16), Some(3));
        assert_eq!(chunk_count(5, 0), None);
        assert_eq!(chunk_count(u64::MAX, 1), None);
        assert_eq!(chunk_span(36, 16, 0), (0, 16));
        assert_eq!(chunk_span(36, 16, 1), (16, 16));
        assert_eq!(chunk_span(36, 16, 2), (32, 4));
        assert_eq!(&FILE[16..32], CHUNK);
    }

    fn hex_of(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
