//! The wire, and nothing else: framing ([`frame`]), the typed legacy
//! messages carried inside frames ([`legacy`]) and the messages of the
//! secure extension ([`secure`]), file transfer among them ([`transfer`]);
//! and the one thing the TLS transport's two ends share beyond TLS itself,
//! the way a server's key is named ([`tls`]).
//!
//! Nothing here knows about users, rooms or sockets. Data flows one way:
//! bytes → [`FrameCodec`] → [`Frame`] → [`ClientMessage`] → the hub, and back
//! out as [`ServerMessage`]s encoded once into [`bytes::Bytes`].

#![warn(missing_docs)]

pub mod frame;
#[cfg(any(fuzzing, feature = "fuzzing"))]
pub mod fuzzing;
pub mod legacy;
pub mod printable;
pub mod rules;
pub mod secure;
pub mod text;
pub mod tls;
pub mod transfer;

pub use frame::{Frame, FrameCodec, FrameError, HEADER_LEN, MAGIC, MAX_CLIENT_PAYLOAD};
pub use legacy::{opcode, ClientMessage, ParseError, ServerMessage, Status};
pub use secure::SecureMessage;
pub use transfer::{FileNotice, FileRequest};
