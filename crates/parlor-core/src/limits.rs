//! The limits the hub enforces, with their defaults.
//!
//! The server's settings (`parlor_server::Config`) take their defaults for
//! these from [`Limits::default`], so each default is written once, here,
//! beside the rules it bounds.

use std::time::Duration;

use crate::rate::Rate;
use crate::transfer::TransferLimits;

/// Everything the hub bounds. See README's configuration table for what
/// each limit means to an operator.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Connections served at once; further ones are told to try later.
    pub max_connections: usize,
    /// Connections served at once from one IP address.
    pub max_connections_per_ip: usize,
    /// How long a new connection has to complete its first frame; never
    /// longer than `idle_timeout`.
    pub handshake_timeout: Duration,
    /// How long a connection may send no complete frame before it is closed.
    pub idle_timeout: Duration,
    /// Room messages and DMs per user.
    pub message_rate: Rate,
    /// Nick changes per user.
    pub nick_rate: Rate,
    /// Joins that need a password hash, per user.
    pub password_join_rate: Rate,
    /// Rooms that may exist at once.
    pub max_rooms: usize,
    /// Members one room may have.
    pub max_room_members: usize,
    /// File transfer's limits.
    pub transfers: TransferLimits,
    /// Whether a plain TCP connection (one without a channel binding, see
    /// `Hub::channel_bound`) may register a key and speak the secure
    /// extension. Off by default: a key proof made without TLS binds to
    /// nothing and can be replayed by whoever relays the connection. For
    /// tests and benchmarks.
    pub allow_secure_on_plain: bool,
    /// The server's TLS port, named to a client that tries the secure
    /// extension on a plain connection; `None` when the server has none.
    pub tls_port: Option<u16>,
    /// How long a secure room keeps one key when nobody comes or goes;
    /// then it rotates anyway, so that a quiet room's key is not used
    /// without end.
    pub room_key_lifetime: Duration,
    /// How long after a failed room key rotation (its wrap job refused or
    /// broken) the hub tries again. Meanwhile the room fails closed: its
    /// members hold their sends.
    pub rotation_retry: Duration,
    /// DM keys issued naming one user as the target: each costs the target
    /// a private-key operation, so nobody may push them without end.
    pub dm_keys_per_target: Rate,
}

impl Default for Limits {
    fn default() -> Limits {
        let per = |limit, secs| Rate {
            limit,
            window: Duration::from_secs(secs),
        };
        Limits {
            max_connections: 10_000,
            max_connections_per_ip: 256,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            message_rate: per(5, 5),
            nick_rate: per(5, 60),
            password_join_rate: per(5, 60),
            max_rooms: 10_000,
            max_room_members: 1_000,
            transfers: TransferLimits {
                max_file_bytes: 4 << 30,
                max_chunk_bytes: 256 << 10,
                max_window: 16,
                max_per_user: 4,
                max_total: 64,
                decision_timeout: Duration::from_secs(30),
                ack_timeout: Duration::from_secs(10),
            },
            allow_secure_on_plain: false,
            tls_port: None,
            room_key_lifetime: Duration::from_secs(3600),
            rotation_retry: Duration::from_secs(1),
            dm_keys_per_target: per(10, 60),
        }
    }
}
