//! Known-answer fixtures, derived with the openssl CLI by
//! `testdata/derive-kat.sh` (no code shared with the implementation): the
//! test identity, an envelope, and two key wraps. The envelope's bytes are
//! the worked example of PROTOCOL.md §12.7.

use super::envelope::{Header, Kind};
use super::identity::{Fingerprint, Identity, PeerIdentity};
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
/// That room's incarnation, in the room key wrap's label.
pub const INCARNATION: u64 = 0x0123_4567_89ab_cdef;
/// Who says it.
pub const SENDER: &[u8] = b"alice";
/// The room key's epoch.
pub const EPOCH: u32 = 3;
/// The DM key wrap's key id.
pub const DM_KEY_ID: u32 = 7;
/// The other party of the DM key wrap.
pub const DM_PEER: Fingerprint = [0xee; 32];

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
pub const ENC_KEY: &str = "27e4bd2ee632f3630938cec5c40c89c4a7fd1c6f36fceac252f1f43799670471";
/// The HMAC-SHA256 key HKDF derives from [`issued_key`], in hex.
pub const MAC_KEY: &str = "665e2561b9b3721263e1ce02f8c86999d7ffae85cb401e8da24021ebc20c372a";

/// The envelope from `version` through `mac`.
pub const SEALED_UNSIGNED: &str = concat!(
    "0201057661756c7405616c696365000000030000000000000001", // header
    "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf",                     // iv
    "0010",                                                 // ciphertext length
    "011f70fbf680c11222eade6784ff1fa4",                     // ciphertext
    "f7bac13e44c99c15e30b31b27a442a29",                     // mac
);

/// `"parlor v2 signature" || header || SHA-256(iv || ciphertext)`.
pub const SIGNED_MESSAGE: &str = concat!(
    "7061726c6f72207632207369676e6174757265",
    "0201057661756c7405616c696365000000030000000000000001",
    "eef303627b3a13a0e84493ef22a5b98083bfc4e40e1cd96cdc60b224c425de75",
);

/// The test identity's Ed25519 signature over [`SIGNED_MESSAGE`]; the
/// envelope's last 64 bytes.
pub const SIGNATURE: &str = concat!(
    "7a54745ae7bda806c38359d1ae0bd1715dbc51e60e41f6358bf7e49e6092e067",
    "e736a0c932a9146b931ddd994b617afe2bf242b5a6cff6ab3ea347fc5c9ec00e",
);

/// The test identity's Ed25519 public key.
pub const SIGNING_KEY: &str = "0d06a6d1434fb36adf58847f79a1865656e0ef0d6abf38a4425062d839f13d87";
/// Its fingerprint, SHA-256 of [`SIGNING_KEY`].
pub const FINGERPRINT: &str = "c6f79587f4823bf79f01c5c925ec0c98729c7fbcfc41a07d7820391e042bcf64";
/// [`FINGERPRINT`] as people read it.
pub const DISPLAY_FINGERPRINT: &str = "96628 32321 62988 87932 95512 21931";
/// The test identity's key binding of its RSA key.
pub const KEY_BINDING: &str = concat!(
    "80e8bb4da3a056cd71754144d26fccf1cb6f203285af2dd9d6a9948ff21bd3bf",
    "4a0e1a6bcf3806b27a64ec28db4754e34fb1df139836c5fa88ad261c78cc3b02",
);
/// The test identity's name proof for [`SENDER`].
pub const NAME_PROOF: &str = concat!(
    "01ba587ccda1c4877a6f247c04e84b0f3e9822808bfe36b4997115fff4ae4aa1",
    "0531b77e3b08e5a0b1553db1a96f54ea899830370f6b700809e3a056d20ca00d",
);

/// A fixed Ed25519 key from `openssl genpkey`, for tests only.
const ED25519_KEY: &[u8] = include_bytes!("testdata/kat-ed25519.der");
/// A fixed 2048-bit key from `openssl genpkey`, for tests only.
const RSA_KEY: &[u8] = include_bytes!("testdata/kat-rsa-2048.der");

/// The test identity, as the sender "alice".
pub fn identity() -> Identity {
    Identity::from_pkcs8_der(ED25519_KEY, RSA_KEY)
}

/// The identity block "alice" is announced with, from the fixed values
/// (the same as `identity().block(SENDER)`).
pub fn identity_block() -> parlor_proto::secure::Identity {
    parlor_proto::secure::Identity {
        signing_key: array(SIGNING_KEY),
        rsa_der: identity().rsa_der().to_vec().into(),
        key_binding: array(KEY_BINDING),
        name_proof: array(NAME_PROOF),
    }
}

/// The test identity as a peer sees it, announced as [`SENDER`].
pub fn peer() -> PeerIdentity {
    PeerIdentity::from_block(&identity_block(), SENDER).expect("the fixture verifies")
}

/// A room key wrap by openssl: [`issued_key`] for [`ROOM`],
/// [`INCARNATION`], [`EPOCH`], to the test identity.
pub const ROOM_KEY_WRAP: &[u8] = include_bytes!("testdata/kat-room-key-wrap.bin");
/// A DM key wrap by openssl: [`issued_key`] as key [`DM_KEY_ID`], to the
/// test identity, shared with [`DM_PEER`].
pub const DM_KEY_WRAP: &[u8] = include_bytes!("testdata/kat-dm-key-wrap.bin");

/// The whole envelope as openssl made it: [`SEALED_UNSIGNED`] and
/// [`SIGNATURE`].
pub fn openssl_envelope() -> Vec<u8> {
    [hex(SEALED_UNSIGNED), hex(SIGNATURE)].concat()
}

/// What the server does for a key it issues: RSA-OAEP-SHA256 under the
/// recipient's RSA key (`rsa_der`) with `label`.
pub fn wrap(rsa_der: &[u8], key: &[u8; 32], label: &[u8]) -> Vec<u8> {
    use rsa::pkcs8::DecodePublicKey;
    let public = rsa::PublicKey::from_public_key_der(rsa_der).expect("an RSA key");
    let padding = rsa::Oaep::<rsa::sha2::Sha256>::new_with_label(label.to_vec());
    public
        .encrypt(&mut rand::rng(), padding, key)
        .expect("32 bytes fit")
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

/// A hex constant of exactly `N` bytes.
///
/// # Panics
/// If it is not.
pub fn array<const N: usize>(digits: &str) -> [u8; N] {
    hex(digits)
        .try_into()
        .expect("a constant of the right length")
}
