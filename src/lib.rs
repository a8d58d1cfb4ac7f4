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
//! - [`keywrap`]: the pool that makes room and DM keys and wraps them for
//!   their recipients off the event loop (secure extension).
//! - [`server`]: the thin tokio shell that connects sockets to the hub.
//! - [`config`]: every limit, with its default.
//! - [`metrics`]: counters of what the server refuses and relays.
//! - [`bench`](mod@bench): `parlor bench`, the load generator that measures a running
//!   server.
//! - [`replay`]: `parlor replay`, which plays a pcap capture's clients
//!   against a server and checks the replies.
//! - [`fuzzing`]: the bodies of the fuzz targets in `fuzz/`.

pub mod bench;
pub mod client;
pub mod config;
pub mod crypto;
pub mod fuzzing;
pub mod hub;
pub mod keywrap;
pub mod metrics;
pub mod password;
pub mod printable;
pub mod protocol;
pub mod replay;
pub mod server;

pub use config::Config;
