//! Who a client is: the user's own long-term keys ([`Identity`]), kept in
//! an identity file across runs, and other users' keys ([`PeerIdentity`]),
//! checked when they arrive.
//!
//! An identity is two keys with one job each:
//! - an **Ed25519 signing key**. Its public half *is* the identity: the
//!   fingerprint people compare is the SHA-256 of it, and it signs
//!   everything the user says (envelopes, file offers) and every claim made
//!   to the server or to peers (the key binding, the name proof, possession
//!   at REGISTER_KEY, a file resume).
//! - an **RSA decryption key**, which only unwraps the room and DM keys the
//!   server issues (RSA-OAEP-SHA256). It never signs, so a decryption oracle
//!   on it (the Marvin family of timing attacks) cannot forge a signature.
//!
//! The two are tied by the **key binding**: the Ed25519 key signs the RSA
//! key's DER, so nobody can pair someone else's fingerprint with an RSA key
//! of their own and receive keys meant for that person.
//!
//! The identity file holds both private keys as two PKCS#8 PEM blocks
//! (Ed25519 first), is written atomically with mode 0600, and is refused
//! when group or others may read it ([`Identity::load`]).

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rsa::pkcs8::der::Decode;
use rsa::pkcs8::{EncodePublicKey, LineEnding, SubjectPublicKeyInfoRef};
use rsa::sha2::Sha256;
use rsa::traits::PublicKeyParts;
use rsa::{BoxedUint, Oaep, PrivateKey, PublicKey};
use zeroize::Zeroizing;

use super::{IssuedKey, VerificationFailed, ISSUED_KEY_LEN};
use parlor_proto::secure;

pub use parlor_proto::secure::{Fingerprint, KEY_BITS, RSA_PUBLIC_EXPONENT, SIGNATURE_LEN};

/// The RSA size a client generates unless told otherwise: about 128-bit
/// security.
pub const DEFAULT_KEY_BITS: usize = 3072;

/// The user's own keys, wiped from memory when dropped (both key types
/// zeroize themselves).
pub struct Identity {
    signing: SigningKey,
    rsa: PrivateKey,
    /// The RSA public key as DER SubjectPublicKeyInfo, as REGISTER_KEY
    /// sends it.
    rsa_der: Vec<u8>,
    fingerprint: Fingerprint,
}

/// Why an identity could not be made, loaded or stored.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Outside [`KEY_BITS`]: the server would refuse to register it.
    #[error("RSA keys must have {min} to {max} bits, not {0}", min = KEY_BITS.start(), max = KEY_BITS.end())]
    BadSize(usize),
    /// An RSA key with another public exponent than [`RSA_PUBLIC_EXPONENT`].
    #[error("the RSA key's public exponent must be 65537")]
    BadExponent,
    /// Key generation failed.
    #[error("cannot make an RSA key: {0}")]
    Rsa(#[from] rsa::Error),
    /// The public key could not be put in DER for REGISTER_KEY.
    #[error("cannot encode the public key: {0}")]
    Encoding(#[from] rsa::pkcs8::spki::Error),
    /// The identity file is not two PKCS#8 PEM blocks, Ed25519 then RSA.
    #[error("{path} is not a parlor identity file ({problem})")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// Group or others may read the identity file: its keys may have been
    /// seen, and they must not be used before the user looked into it.
    #[error(
        "{path} can be read by others (mode {mode:03o}); it holds your private keys. \
         Run `chmod 600 {path}` if nobody else could have read it, or delete it to make a new identity"
    )]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
}

impl Identity {
    /// Makes a new identity with an RSA key of `bits` bits. Takes from tens
    /// of milliseconds (2048) to seconds (4096), so callers run it off any
    /// event loop.
    pub fn generate(bits: usize) -> Result<Identity, IdentityError> {
        if !KEY_BITS.contains(&bits) {
            return Err(IdentityError::BadSize(bits));
        }
        let mut seed = Zeroizing::new([0; 32]);
        rand::fill(&mut *seed);
        let exponent = BoxedUint::from(u64::from(RSA_PUBLIC_EXPONENT));
        let rsa = PrivateKey::new_with_exp(&mut rand::rng(), bits, exponent)?;
        Identity::new(SigningKey::from_bytes(&seed), rsa)
    }

    /// The identity of two PKCS#8 DER private keys: the known-answer tests
    /// use fixed ones.
    #[cfg(any(test, feature = "kat"))]
    pub fn from_pkcs8_der(ed25519: &[u8], rsa: &[u8]) -> Identity {
        let signing = SigningKey::from_pkcs8_der(ed25519).expect("a PKCS#8 Ed25519 key");
        let rsa = <PrivateKey as rsa::pkcs8::DecodePrivateKey>::from_pkcs8_der(rsa)
            .expect("a PKCS#8 RSA key");
        Identity::new(signing, rsa).expect("a key the server accepts")
    }

    fn new(signing: SigningKey, rsa: PrivateKey) -> Result<Identity, IdentityError> {
        let rsa_der = rsa.to_public_key().to_public_key_der()?.into_vec();
        check_rsa(rsa.as_public_key())?;
        let fingerprint = secure::fingerprint(signing.verifying_key().as_bytes());
        Ok(Identity {
            signing,
            rsa,
            rsa_der,
            fingerprint,
        })
    }

    /// The identity in `path`, or a new one with an RSA key of `bits` bits
    /// stored there first if there is no file yet (then `true`). The
    /// directories above it are made (mode 0700) as needed.
    pub fn load_or_create(path: &Path, bits: usize) -> Result<(Identity, bool), IdentityError> {
        match Identity::load(path) {
            Err(IdentityError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            loaded => return loaded.map(|identity| (identity, false)),
        }
        let identity = Identity::generate(bits)?;
        match identity.create(path) {
            Ok(()) => Ok((identity, true)),
            // Another client made one meanwhile: that one is the identity.
            Err(IdentityError::Io { source, .. })
                if source.kind() == io::ErrorKind::AlreadyExists =>
            {
                Identity::load(path).map(|identity| (identity, false))
            }
            Err(err) => Err(err),
        }
    }

    /// Reads an identity file. Refused when group or others have any
    /// access to it ([`IdentityError::Exposed`]), or when a key in it is
    /// one the server would refuse.
    pub fn load(path: &Path) -> Result<Identity, IdentityError> {
        let io_error = |source| IdentityError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mode = fs::metadata(path).map_err(io_error)?.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(IdentityError::Exposed {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = Zeroizing::new(fs::read_to_string(path).map_err(io_error)?);
        Identity::from_pem(&text).map_err(|problem| match problem {
            PemProblem::Key(err) => err,
            PemProblem::Text(problem) => IdentityError::Malformed {
                path: path.to_path_buf(),
                problem,
            },
        })
    }

    /// Stores the identity in a new file at `path` with mode 0600, all or
    /// nothing: it is written and synced under a temporary name, then
    /// linked into place, which fails if `path` exists, so an identity is
    /// never overwritten.
    pub fn create(&self, path: &Path) -> Result<(), IdentityError> {
        let io_error = |source| IdentityError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_error)?;
        }
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(format!(".{}.tmp", std::process::id()));
        let temporary = PathBuf::from(temporary);
        let written = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temporary)?;
            file.write_all(self.to_pem().as_bytes())?;
            file.sync_all()?;
            fs::hard_link(&temporary, path)
        })();
        let _ = fs::remove_file(&temporary);
        written.map_err(io_error)?;
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            // The new name survives a crash only once its directory is synced.
            fs::File::open(dir)
                .and_then(|dir| dir.sync_all())
                .map_err(io_error)?;
        }
        Ok(())
    }

    /// Both private keys as the identity file holds them.
    pub fn to_pem(&self) -> Zeroizing<String> {
        let signing = self
            .signing
            .to_pkcs8_pem(LineEnding::LF)
            .expect("an Ed25519 key encodes");
        let rsa = rsa::pkcs8::EncodePrivateKey::to_pkcs8_pem(&self.rsa, LineEnding::LF)
            .expect("an RSA key encodes");
        Zeroizing::new([signing.as_str(), rsa.as_str()].concat())
    }

    /// Parses the two PEM blocks of an identity file.
    pub fn from_pem(text: &str) -> Result<Identity, PemProblem> {
        const END: &str = "-----END PRIVATE KEY-----";
        let blocks: Vec<&str> = text
            .split_inclusive(END)
            .filter(|block| !block.trim().is_empty())
            .collect();
        let [signing, rsa] = blocks[..] else {
            return Err(PemProblem::Text(format!(
                "{} PEM blocks, not 2",
                blocks.len()
            )));
        };
        let signing = SigningKey::from_pkcs8_pem(signing.trim())
            .map_err(|err| PemProblem::Text(format!("the first block, Ed25519: {err}")))?;
        let rsa = <PrivateKey as rsa::pkcs8::DecodePrivateKey>::from_pkcs8_pem(rsa.trim())
            .map_err(|err| PemProblem::Text(format!("the second block, RSA: {err}")))?;
        Identity::new(signing, rsa).map_err(PemProblem::Key)
    }

    /// The Ed25519 public key: the identity as others know it.
    pub fn signing_key(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    /// SHA-256 of [`Identity::signing_key`].
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    /// The RSA public key as DER SubjectPublicKeyInfo, as REGISTER_KEY
    /// sends it.
    pub fn rsa_der(&self) -> &[u8] {
        &self.rsa_der
    }

    /// The RSA modulus size in bits.
    pub fn rsa_bits(&self) -> usize {
        self.rsa.size() * 8
    }

    /// An Ed25519 signature over `message`. Ed25519 is deterministic: the
    /// same message always gets the same signature.
    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.signing.sign(message).to_bytes()
    }

    /// The key binding: this signing key vouches for this RSA key.
    pub fn key_binding(&self) -> [u8; SIGNATURE_LEN] {
        self.sign(&secure::key_binding_statement(&self.rsa_der))
    }

    /// The name proof: the holder of this key chose the name `name`.
    pub fn name_proof(&self, name: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.sign(&secure::name_proof_statement(name))
    }

    /// Possession at REGISTER_KEY: proves to the server that we hold the
    /// key we register, on this connection (`channel_binding`, the TLS
    /// exporter value; zeros on a plain one) and under this nick.
    pub fn possession_proof(&self, channel_binding: &[u8; 32], nick: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.sign(&secure::possession_statement(channel_binding, nick))
    }

    /// What the server announces to peers for us under the name `name`:
    /// exactly what REGISTER_KEY (or SIGNED_NICK, for the name proof) sent.
    pub fn block(&self, name: &[u8]) -> secure::Identity {
        secure::Identity {
            signing_key: self.signing_key(),
            rsa_der: self.rsa_der.clone().into(),
            key_binding: self.key_binding(),
            name_proof: self.name_proof(name),
        }
    }

    /// REGISTER_KEY for this identity, under the connection's current nick
    /// `nick`, on the connection whose channel binding this is
    /// ([`secure::PLAIN_CHANNEL_BINDING`] on plain TCP).
    pub fn registration(&self, channel_binding: &[u8; 32], nick: &[u8]) -> secure::Registration {
        let block = self.block(nick);
        secure::Registration {
            signing_key: block.signing_key,
            rsa_der: block.rsa_der,
            key_binding: block.key_binding,
            name_proof: block.name_proof,
            possession: self.possession_proof(channel_binding, nick),
        }
    }

    /// FILE_RESUME's proof that the original recipient of transfer `id`
    /// is the one resuming, on this connection.
    pub fn resume_proof(
        &self,
        id: u32,
        token: &[u8; 16],
        channel_binding: &[u8; 32],
    ) -> [u8; SIGNATURE_LEN] {
        self.sign(&secure::resume_statement(id, token, channel_binding))
    }

    /// Unwraps an issued key: RSA-OAEP-SHA256 with MGF1-SHA256 and `label`,
    /// which names what the key is for, down to the room, epoch and
    /// recipient (`parlor_proto::secure::room_key_label`, `dm_key_label`),
    /// so a wrap moved to any other use fails. The decryption is blinded.
    pub fn unwrap_key(
        &self,
        wrapped: &[u8],
        label: &[u8],
    ) -> Result<IssuedKey, VerificationFailed> {
        let padding = Oaep::<Sha256>::new_with_label(label.to_vec());
        let plain = Zeroizing::new(
            self.rsa
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

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", display_fingerprint(&self.fingerprint))
    }
}

/// What is wrong with the text of an identity file.
#[derive(Debug)]
pub enum PemProblem {
    /// Not two PKCS#8 PEM blocks of the right kinds.
    Text(String),
    /// The keys parse, but the RSA key is one the server would refuse.
    Key(IdentityError),
}

/// Checks an RSA public key against what every party accepts: 2048 to
/// 4096 bits, e = 65537.
fn check_rsa(key: &PublicKey) -> Result<(), IdentityError> {
    let bits = key.n().bit_width() as usize;
    if !KEY_BITS.contains(&bits) {
        return Err(IdentityError::BadSize(bits));
    }
    if *key.e() != BoxedUint::from(u64::from(RSA_PUBLIC_EXPONENT)) {
        return Err(IdentityError::BadExponent);
    }
    Ok(())
}

/// A fingerprint as people read it aloud: 6 groups of 5 decimal digits,
/// group `i` being the big-endian 40-bit number in bytes `5i..5i+5`, mod
/// 100,000. Two fingerprints that show alike differ in none of the ~100
/// bits shown.
pub fn display_fingerprint(fingerprint: &Fingerprint) -> String {
    let groups: Vec<String> = fingerprint
        .chunks_exact(5)
        .take(6)
        .map(|group| {
            let value = group
                .iter()
                .fold(0u64, |value, &byte| value << 8 | u64::from(byte));
            format!("{:05}", value % 100_000)
        })
        .collect();
    groups.join(" ")
}

/// Why another user's identity block was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeerKeyError {
    /// The signing key is not a usable Ed25519 point (or one of small
    /// order, which would let anyone sign).
    #[error("its signing key is not a valid Ed25519 key")]
    BadSigningKey,
    /// The RSA key is not an rsaEncryption SubjectPublicKeyInfo of 2048 to
    /// 4096 bits with e = 65537 and nothing after it.
    #[error("its RSA key is not one of 2048 to 4096 bits with exponent 65537")]
    BadRsaKey,
    /// The signing key did not sign this RSA key.
    #[error("its key binding does not verify")]
    BadBinding,
    /// The signing key did not sign this name.
    #[error("its name proof does not verify for this name")]
    BadNameProof,
}

/// Another user's identity, every part checked: the Ed25519 key is valid,
/// it signed the RSA key (the binding) and the name it was announced
/// under, and the RSA key is one we would accept ourselves.
#[derive(Clone)]
pub struct PeerIdentity {
    verifying: VerifyingKey,
    fingerprint: Fingerprint,
    rsa_der: Vec<u8>,
}

impl PeerIdentity {
    /// Checks an identity block (`81`, `89`, `83`) announced under `name`.
    pub fn from_block(block: &secure::Identity, name: &[u8]) -> Result<PeerIdentity, PeerKeyError> {
        let verifying = VerifyingKey::from_bytes(&block.signing_key)
            .map_err(|_| PeerKeyError::BadSigningKey)?;
        if verifying.is_weak() {
            return Err(PeerKeyError::BadSigningKey);
        }
        let peer = PeerIdentity {
            verifying,
            fingerprint: secure::fingerprint(&block.signing_key),
            rsa_der: block.rsa_der.to_vec(),
        };
        check_rsa_der(&block.rsa_der)?;
        peer.verify(
            &secure::key_binding_statement(&block.rsa_der),
            &block.key_binding,
        )
        .map_err(|_| PeerKeyError::BadBinding)?;
        peer.check_name(name, &block.name_proof)?;
        Ok(peer)
    }

    /// Checks a name proof by this peer: it chose `name`.
    pub fn check_name(&self, name: &[u8], proof: &[u8; SIGNATURE_LEN]) -> Result<(), PeerKeyError> {
        self.verify(&secure::name_proof_statement(name), proof)
            .map_err(|_| PeerKeyError::BadNameProof)
    }

    /// SHA-256 of the signing key: who this is.
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    /// The RSA public key as registered.
    pub fn rsa_der(&self) -> &[u8] {
        &self.rsa_der
    }

    /// Checks an Ed25519 signature by this peer, strictly (no malleable
    /// encodings).
    pub fn verify(
        &self,
        message: &[u8],
        signature: &[u8; SIGNATURE_LEN],
    ) -> Result<(), VerificationFailed> {
        self.verifying
            .verify_strict(message, &Signature::from_bytes(signature))
            .map_err(|_| VerificationFailed)
    }
}

impl std::fmt::Debug for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PeerIdentity({})",
            display_fingerprint(&self.fingerprint)
        )
    }
}

/// The RSA key of an identity block: exactly one DER SubjectPublicKeyInfo
/// with the rsaEncryption algorithm (an RSASSA-PSS key must not be used to
/// encrypt, RFC 4055), of a size and exponent [`check_rsa`] accepts.
fn check_rsa_der(der: &[u8]) -> Result<(), PeerKeyError> {
    // `from_der` refuses bytes after the structure.
    let info = SubjectPublicKeyInfoRef::from_der(der).map_err(|_| PeerKeyError::BadRsaKey)?;
    if info.algorithm.oid != rsa::pkcs1::ALGORITHM_OID {
        return Err(PeerKeyError::BadRsaKey);
    }
    let key = PublicKey::try_from(info).map_err(|_| PeerKeyError::BadRsaKey)?;
    check_rsa(&key).map_err(|_| PeerKeyError::BadRsaKey)
}

#[cfg(test)]
mod tests;
