//! The client side of the secure extension: everything a client does with
//! keys, and nothing the server does.
//!
//! - [`identity`]: the user's own long-term keys (Ed25519 to sign, RSA to
//!   unwrap issued keys) kept in an identity file, and other users'
//!   identities, checked as they arrive.
//! - [`envelope`]: the sealed envelope, bytes in and bytes out.
//! - [`keyring`]: the peers and issued room and DM keys a client holds,
//!   whom it trusts (first sight, or a key that changed), which epoch is
//!   current, and the counters that make replays fail.
//! - [`file`](mod@file): sealed file chunks, the sealed manifest and the
//!   signed file offer of file transfer.
//!
//! Every way a received message can fail to open is the same
//! [`VerificationFailed`], on purpose: an error that said *which* check
//! failed (say, a file chunk's padding after its MAC) would tell an
//! attacker what to try next.

#![warn(missing_docs)]

pub mod envelope;
pub mod file;
pub mod identity;
pub mod keyring;

#[cfg(any(test, feature = "kat"))]
pub mod kat;

pub use envelope::{Header, Kind, MessageKeys};
pub use identity::{Identity, PeerIdentity};
pub use keyring::Keyring;

/// The one error for a message that cannot be trusted, whatever the reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("message failed verification")]
pub struct VerificationFailed;

/// The 32-byte key the server issues for a room epoch or a DM, wiped from
/// memory when dropped.
pub type IssuedKey = zeroize::Zeroizing<[u8; ISSUED_KEY_LEN]>;

/// Length of an issued room or DM key.
pub const ISSUED_KEY_LEN: usize = 32;
