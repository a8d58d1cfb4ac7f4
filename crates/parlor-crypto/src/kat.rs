//! Known-answer fixtures for the envelope, derived with the openssl CLI by
//! `testdata/derive-kat.sh` (no code shared with the implementation). The
//! same bytes are the worked example in PROTOCOL.md §12.7.

use super::envelope::{Header, Kind};
use super::identity::{Identity, PeerKey};
use super::IssuedKey;

/// The issued key: `00 01 02 .. 1f`.
pub fn issued_key() -> IssuedKey {
    IssuedKey::new(std::array::from_fn(|i| i as u8))
}

/// The envelope's IV (random in real use): `a0 a1 .. af`.
pub const IV: [u8; 16] = [
    0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xab, 0xac, 0xad, 0xae, 0xaf,
];

/// The message sealed.
pub const PLAINTEXT: &[u8] = b"hello from alice";

/// The room it is said in.
pub const ROOM: &[u8] = b"vault";
/// Who says it.
pub const SENDER: &[u8] = b"alice";
/// The room key's epoch.
pub const EPOCH: u32 = 3;

/// The header of the known-answer envelope: [`ROOM`], [`SENDER`],
/// [`EPOCH`], counter 1.
pub fn header() -> Header<'static> {
    Header {
        kind: Kind::Room,
        context: ROOM,
        sender: SENDER,
        epoch: EPOCH,
        counter: 1,
    }
}

/// The AES-256 key HKDF derives from [`issued_key`], in hex.
pub const ENC_KEY: &str = "005987741499f925e00559ecae9ef913054546184c511d07f272955c92e75c4c";
/// The HMAC-SHA256 key HKDF derives from [`issued_key`], in hex.
pub const MAC_KEY: &str = "a8b60289a9b9cc32524442bad466a01518e84f7cc407802b76ec0cf126b96eb7";

/// The envelope from `version` through `mac`; only the signature after it
/// is random.
pub const SEALED_UNSIGNED: &str = concat!(
    "0101057661756c7405616c696365000000030000000000000001", // header
    "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf",                     // iv
    "0020",                                                 // ciphertext length
    "6eb75fec8ddb7c214281594d4804ec01d5cd75d404129d60200e463fb7bacc48",
    "0459ed0f60b01baa78458306b1a7c34f41d4d39cab7b890d086d5f27b8a7011b", // mac
);

/// `"parlor v1 signature" || header || SHA-256(iv || ciphertext)`.
pub const SIGNED_MESSAGE: &str = concat!(
    "7061726c6f72207631207369676e6174757265",
    "0101057661756c7405616c696365000000030000000000000001",
    "0913d00b1fe5e1454c06a73933f403e10798068e29b80b4c5369d814f5c72481",
);

/// A fixed 2048-bit key from `openssl genpkey`, for tests only.
const RSA_KEY: &[u8] = include_bytes!("testdata/kat-rsa-2048.der");

/// The KAT key as the sender "alice".
pub fn identity() -> Identity {
    Identity::from_pkcs8_der(RSA_KEY)
}

/// The public half of [`identity`], as a peer sees it.
pub fn peer_key() -> PeerKey {
    PeerKey::from_der(identity().public_key_der()).unwrap()
}

/// The whole envelope as openssl made it: [`SEALED_UNSIGNED`] and a PSS
/// signature by [`identity`] over [`SIGNED_MESSAGE`].
pub fn openssl_envelope() -> Vec<u8> {
    let signature = include_bytes!("testdata/kat-signature.bin");
    let mut text = hex(SEALED_UNSIGNED);
    text.extend_from_slice(&(signature.len() as u16).to_be_bytes());
    text.extend_from_slice(signature);
    text
}

/// Decodes the hex of the constants above.
///
/// # Panics
/// On anything but pairs of hex digits: the fixtures are fixed.
pub fn hex(digits: &str) -> Vec<u8> {
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).expect("hex digits"))
        .collect()
}
