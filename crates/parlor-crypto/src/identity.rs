//! RSA keys: the user's own pair ([`Identity`]) and other users' public keys
//! ([`PeerKey`]).
//!
//! One key pair does two jobs. The server wraps every issued key for us with
//! RSA-OAEP-SHA256 under our public key, and only our private key unwraps it;
//! and we sign each envelope with RSA-PSS-SHA256, so that other members can
//! tell which of them wrote it (the shared room key alone proves only that
//! *some* member did).

#[cfg(any(test, feature = "kat"))]
use rsa::pkcs8::DecodePrivateKey;
use rsa::pkcs8::{DecodePublicKey, EncodePublicKey};
use rsa::sha2::Sha256;
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, PrivateKey, PublicKey};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::{IssuedKey, VerificationFailed, ISSUED_KEY_LEN};
use parlor_proto::secure;

pub use parlor_proto::secure::KEY_BITS;

/// The size a client generates unless told otherwise: about 128-bit security.
pub const DEFAULT_KEY_BITS: usize = 3072;

/// What a wrapped key is for. The OAEP label binds each wrap to its purpose,
/// so a DM key can never be passed off as a room key or the other way round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WrapLabel {
    /// A room key (ROOM_KEY, `84`).
    Room,
    /// A DM key (DM_KEY, `80`, and DM_KEY_ISSUED, `89`).
    Direct,
}

impl WrapLabel {
    fn label(self) -> &'static [u8] {
        match self {
            WrapLabel::Room => secure::ROOM_KEY_OAEP_LABEL,
            WrapLabel::Direct => secure::DM_KEY_OAEP_LABEL,
        }
    }
}

/// The user's own RSA key pair, made fresh for each run of the client.
pub struct Identity {
    private: PrivateKey,
    public_der: Vec<u8>,
}

/// Why a key pair could not be made.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Outside [`KEY_BITS`]: the server would refuse to register it.
    #[error("RSA keys must have {min} to {max} bits, not {0}", min = KEY_BITS.start(), max = KEY_BITS.end())]
    BadSize(usize),
    /// Key generation failed.
    #[error("cannot make an RSA key: {0}")]
    Rsa(#[from] rsa::Error),
    /// The public key could not be put in DER for REGISTER_KEY.
    #[error("cannot encode the public key: {0}")]
    Encoding(#[from] rsa::pkcs8::spki::Error),
}

impl Identity {
    /// Generates a key pair of `bits` bits. Takes from tens of milliseconds
    /// (2048) to seconds (4096), so callers run it off any event loop.
    pub fn generate(bits: usize) -> Result<Identity, IdentityError> {
        if !KEY_BITS.contains(&bits) {
            return Err(IdentityError::BadSize(bits));
        }
        Identity::new(PrivateKey::new(&mut rand::rng(), bits)?)
    }

    /// Loads a PKCS#8 DER private key: the known-answer tests use a fixed one.
    #[cfg(any(test, feature = "kat"))]
    pub fn from_pkcs8_der(der: &[u8]) -> Identity {
        let private = PrivateKey::from_pkcs8_der(der).expect("a PKCS#8 RSA private key");
        Identity::new(private).expect("its public key encodes")
    }

    fn new(private: PrivateKey) -> Result<Identity, IdentityError> {
        let public_der = private.to_public_key().to_public_key_der()?.into_vec();
        Ok(Identity {
            private,
            public_der,
        })
    }

    /// The public key as DER SubjectPublicKeyInfo, as REGISTER_KEY sends it.
    pub fn public_key_der(&self) -> &[u8] {
        &self.public_der
    }

    /// The length of each signature: the modulus size in bytes.
    pub fn signature_len(&self) -> usize {
        self.private.size()
    }

    /// RSA-PSS-SHA256 with a 32-byte salt over `message`.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.private
            .pss_sign::<Sha256>(message)
            .expect("PSS signing with a key of at least 2048 bits fails only if the OS RNG does")
    }

    /// Unwraps an issued key (RSA-OAEP-SHA256 with MGF1-SHA256 and the
    /// purpose's label). The decryption is blinded; see README "Security"
    /// about the `rsa` crate's timing advisory.
    pub fn unwrap_key(
        &self,
        wrapped: &[u8],
        purpose: WrapLabel,
    ) -> Result<IssuedKey, VerificationFailed> {
        let padding = Oaep::<Sha256>::new_with_label(purpose.label());
        let plain = Zeroizing::new(
            self.private
                .decrypt(padding, wrapped)
                .map_err(|_| VerificationFailed)?,
        );
        let key: [u8; ISSUED_KEY_LEN] = plain
            .as_slice()
            .try_into()
            .map_err(|_| VerificationFailed)?;
        Ok(Zeroizing::new(key))
    }
}

/// Another user's public key, parsed once from the DER the server relays.
#[derive(Clone, Debug)]
pub struct PeerKey {
    key: PublicKey,
    der: Vec<u8>,
}

impl PeerKey {
    /// Parses the DER SubjectPublicKeyInfo of a PEER_KEY or DM_KEY_ISSUED,
    /// keeping the bytes to recognise the key under another name. A key
    /// that does not parse fails like any other untrusted input.
    pub fn from_der(der: &[u8]) -> Result<PeerKey, VerificationFailed> {
        let key = PublicKey::from_public_key_der(der).map_err(|_| VerificationFailed)?;
        Ok(PeerKey {
            key,
            der: der.to_vec(),
        })
    }

    /// Checks an RSA-PSS-SHA256 signature with a 32-byte salt.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), VerificationFailed> {
        self.key
            .pss_verify::<Sha256>(message, signature)
            .map_err(|_| VerificationFailed)
    }

    /// Whether both are the same key: how a renamed user is recognised.
    pub fn same_key(&self, other: &PeerKey) -> bool {
        self.der.ct_eq(&other.der).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::kat;

    #[test]
    fn unwraps_keys_that_openssl_wrapped_with_each_label() {
        let identity = kat::identity();
        let room = include_bytes!("testdata/kat-room-key-wrap.bin");
        let dm = include_bytes!("testdata/kat-dm-key-wrap.bin");
        let unwrap =
            |wrapped: &[u8], purpose| identity.unwrap_key(wrapped, purpose).map(|key| *key);
        assert_eq!(unwrap(room, WrapLabel::Room), Ok(*kat::issued_key()));
        assert_eq!(unwrap(dm, WrapLabel::Direct), Ok(*kat::issued_key()));
        // The label binds the purpose: a room key's wrap yields no DM key.
        assert_eq!(unwrap(room, WrapLabel::Direct), Err(VerificationFailed));
        assert_eq!(unwrap(dm, WrapLabel::Room), Err(VerificationFailed));
        assert_eq!(unwrap(&room[1..], WrapLabel::Room), Err(VerificationFailed));
    }

    #[test]
    fn signatures_verify_only_with_the_signers_key_and_message() {
        let alice = kat::identity();
        let mallory = Identity::generate(2048).unwrap();
        let alice_public = PeerKey::from_der(alice.public_key_der()).unwrap();
        let signature = alice.sign(b"message");
        assert_eq!(alice_public.verify(b"message", &signature), Ok(()));
        assert!(alice_public.verify(b"messagf", &signature).is_err());
        assert!(alice_public
            .verify(b"message", &mallory.sign(b"message"))
            .is_err());
    }

    #[test]
    fn refuses_key_sizes_the_server_would_refuse() {
        assert!(matches!(
            Identity::generate(1024),
            Err(IdentityError::BadSize(1024))
        ));
        assert!(matches!(
            Identity::generate(8192),
            Err(IdentityError::BadSize(8192))
        ));
    }
}
