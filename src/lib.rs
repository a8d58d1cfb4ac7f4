//! parlor: a room-chat server that speaks the legacy "Chat Replica" protocol
//! byte for byte.
//!
//! The crate is layered so that each part can be tested on its own:
//!
//! - [`protocol`]: framing and typed messages; bytes in, bytes out.
//! - [`hub`]: the sans-IO chat core; events and the current time in, actions
//!   out. No sockets, no clock.
//! - [`password`]: the bounded argon2id pool that hashes room passwords off
//!   the event loop.
//! - [`server`]: the thin tokio shell that connects sockets to the hub.
//! - [`config`]: every limit, with its default.
//! - [`replay`]: `parlor replay`, which plays a pcap capture's clients
//!   against a server and checks the replies.
//! - [`fuzzing`]: the bodies of the fuzz targets in `fuzz/`.

pub mod config;
pub mod fuzzing;
pub mod hub;
pub mod password;
pub mod printable;
pub mod protocol;
pub mod replay;
pub mod server;

pub use config::Config;
