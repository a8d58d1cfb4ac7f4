//! What the hub counts: plain numbers, read with [`Hub::stats`].
//!
//! The core exports nothing itself. A shell reads a [`Stats`] snapshot when
//! it wants one (the server, at every scrape of its metrics endpoint) and
//! publishes it however it likes. Counting is an add to a field the hub
//! owns: no atomics, no lock, no exporter in the core.
//!
//! [`Hub::stats`]: crate::Hub::stats

/// Why the hub refused something or dropped a connection.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Rejection {
    /// A frame or message that breaks the protocol; the connection is closed.
    Malformed,
    /// A room message or DM over the message rate limit.
    RateLimited,
    /// A NICK over the nick-change rate limit.
    NickRateLimited,
    /// A password join over the password-join rate limit.
    PasswordRateLimited,
    /// A client that read too slowly and overflowed its send queue.
    SlowConsumer,
    /// A connection silent for the idle timeout.
    IdleTimeout,
    /// A connection that did not complete a frame within the handshake timeout.
    HandshakeTimeout,
    /// A connection refused by the per-address limit.
    PerIpLimit,
    /// A connection refused by the server-wide limit.
    ServerFull,
    /// A JOIN with a wrong room password.
    WrongPassword,
    /// A JOIN refused because the room or the server's room list is full.
    RoomLimit,
}

impl Rejection {
    /// Every kind, in the order of the declaration.
    pub const ALL: [Rejection; 11] = [
        Rejection::Malformed,
        Rejection::RateLimited,
        Rejection::NickRateLimited,
        Rejection::PasswordRateLimited,
        Rejection::SlowConsumer,
        Rejection::IdleTimeout,
        Rejection::HandshakeTimeout,
        Rejection::PerIpLimit,
        Rejection::ServerFull,
        Rejection::WrongPassword,
        Rejection::RoomLimit,
    ];

    /// A short snake_case name, for metric labels and logs.
    pub fn label(self) -> &'static str {
        match self {
            Rejection::Malformed => "malformed",
            Rejection::RateLimited => "rate_limited",
            Rejection::NickRateLimited => "nick_rate_limited",
            Rejection::PasswordRateLimited => "password_rate_limited",
            Rejection::SlowConsumer => "slow_consumer",
            Rejection::IdleTimeout => "idle_timeout",
            Rejection::HandshakeTimeout => "handshake_timeout",
            Rejection::PerIpLimit => "per_ip_limit",
            Rejection::ServerFull => "server_full",
            Rejection::WrongPassword => "wrong_password",
            Rejection::RoomLimit => "room_limit",
        }
    }
}

/// What a relayed message was.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Relayed {
    /// A room message, for every other member of the room.
    Room,
    /// A direct message, for one user.
    Direct,
}

impl Relayed {
    /// Both kinds.
    pub const ALL: [Relayed; 2] = [Relayed::Room, Relayed::Direct];

    /// A short snake_case name, for metric labels and logs.
    pub fn label(self) -> &'static str {
        match self {
            Relayed::Room => "room",
            Relayed::Direct => "direct",
        }
    }
}

/// The hub's counters since it was made, and its population now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Refusals and drops, indexed by `Rejection as usize`; see
    /// [`Stats::rejections`].
    pub rejections: [u64; Rejection::ALL.len()],
    /// Messages relayed, indexed by `Relayed as usize`; see
    /// [`Stats::messages`].
    pub messages: [u64; Relayed::ALL.len()],
    /// Relayed messages handed to recipients: a room message to nine other
    /// members counts nine.
    pub deliveries: u64,
    /// Bytes of file chunks handed to recipients.
    pub file_bytes: u64,
    /// Connections open now.
    pub connections: usize,
    /// Rooms that exist now.
    pub rooms: usize,
    /// File transfers in progress now.
    pub file_transfers: usize,
}

impl Stats {
    /// How many times `kind` was refused or dropped.
    pub fn rejections(&self, kind: Rejection) -> u64 {
        self.rejections[kind as usize]
    }

    /// Messages of `kind` accepted and relayed.
    pub fn messages(&self, kind: Relayed) -> u64 {
        self.messages[kind as usize]
    }

    pub(crate) fn reject(&mut self, kind: Rejection) {
        self.rejections[kind as usize] += 1;
    }

    /// A message was accepted and handed to `recipients` connections.
    pub(crate) fn relayed(&mut self, kind: Relayed, recipients: usize) {
        self.messages[kind as usize] += 1;
        self.deliveries += recipients as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_counts_in_its_own_slot() {
        let mut stats = Stats::default();
        stats.reject(Rejection::SlowConsumer);
        stats.reject(Rejection::SlowConsumer);
        stats.reject(Rejection::RoomLimit);
        stats.relayed(Relayed::Room, 9);
        stats.relayed(Relayed::Direct, 1);
        assert_eq!(stats.rejections(Rejection::SlowConsumer), 2);
        assert_eq!(stats.rejections(Rejection::RoomLimit), 1);
        assert_eq!(stats.rejections(Rejection::Malformed), 0);
        assert_eq!(stats.messages(Relayed::Room), 1);
        assert_eq!(stats.messages(Relayed::Direct), 1);
        assert_eq!(stats.deliveries, 10);
        for (index, kind) in Rejection::ALL.into_iter().enumerate() {
            assert_eq!(kind as usize, index, "ALL follows the declaration");
        }
    }
}
