//! Counters an operator scrapes to see what the server refuses and relays.
//!
//! The hub counts as it decides (every refusal has one place in the code
//! where it happens), and the metrics endpoint renders the counters in the
//! Prometheus text format. Counters are atomics shared by clone, so counting
//! costs one relaxed increment and never takes a lock of its own.

use std::fmt::Write;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Why the server refused something or dropped a connection.
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
    /// The `kind` label value.
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

impl EncodeLabelValue for Rejection {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(self.label())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectionLabels {
    kind: Rejection,
}

/// What a relayed message was.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Relayed {
    Room,
    Direct,
}

impl EncodeLabelValue for Relayed {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(match self {
            Relayed::Room => "room",
            Relayed::Direct => "direct",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RelayedLabels {
    kind: Relayed,
}

/// The server's counters. Cloning shares them.
#[derive(Clone, Debug)]
pub struct Metrics {
    rejections: Family<RejectionLabels, Counter>,
    messages: Family<RelayedLabels, Counter>,
    /// The two members of `messages`, looked up once: a family lookup takes
    /// a lock and hashes the labels, too much for every relayed message.
    room_messages: Counter,
    direct_messages: Counter,
    deliveries: Counter,
    connections: Gauge,
    rooms: Gauge,
    file_transfers: Gauge,
    file_bytes: Counter,
    busy_pauses: Counter,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let messages = Family::<RelayedLabels, Counter>::default();
        let member = |kind| messages.get_or_create(&RelayedLabels { kind }).clone();
        let (room_messages, direct_messages) = (member(Relayed::Room), member(Relayed::Direct));
        Metrics {
            rejections: Family::default(),
            messages,
            room_messages,
            direct_messages,
            deliveries: Counter::default(),
            connections: Gauge::default(),
            rooms: Gauge::default(),
            file_transfers: Gauge::default(),
            file_bytes: Counter::default(),
            busy_pauses: Counter::default(),
        }
    }
}

impl Metrics {
    pub fn reject(&self, kind: Rejection) {
        self.rejections
            .get_or_create(&RejectionLabels { kind })
            .inc();
    }

    /// A message was accepted and handed to `recipients` connections.
    pub fn relayed(&self, kind: Relayed, recipients: usize) {
        match kind {
            Relayed::Room => self.room_messages.inc(),
            Relayed::Direct => self.direct_messages.inc(),
        };
        self.deliveries.inc_by(recipients as u64);
    }

    /// A file chunk of `bytes` bytes was handed to `recipients` connections.
    pub fn relayed_file_bytes(&self, bytes: usize, recipients: usize) {
        self.file_bytes.inc_by((bytes * recipients) as u64);
    }

    /// How many times `kind` was counted; for tests.
    pub fn rejections(&self, kind: Rejection) -> u64 {
        self.rejections
            .get_or_create(&RejectionLabels { kind })
            .get()
    }

    /// Sets the gauges that are read from the hub at scrape time rather than
    /// kept up to date on every connect and join.
    pub fn set_population(&self, connections: usize, rooms: usize, file_transfers: usize) {
        self.connections.set(connections as i64);
        self.rooms.set(rooms as i64);
        self.file_transfers.set(file_transfers as i64);
    }

    /// Brings the count of busy pauses up to `total`: the workers count
    /// them outside the hub, and the count is read at scrape time.
    pub fn set_busy_pauses(&self, total: u64) {
        self.busy_pauses
            .inc_by(total.saturating_sub(self.busy_pauses.get()));
    }

    /// Renders every metric in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut registry = Registry::with_prefix("parlor");
        registry.register(
            "rejections",
            "Requests refused and connections dropped, by reason",
            self.rejections.clone(),
        );
        registry.register(
            "messages_relayed",
            "Room messages and DMs accepted and relayed",
            self.messages.clone(),
        );
        registry.register(
            "deliveries",
            "Relayed messages handed to recipients",
            self.deliveries.clone(),
        );
        registry.register(
            "connections",
            "Connections open now",
            self.connections.clone(),
        );
        registry.register("rooms", "Rooms that exist now", self.rooms.clone());
        registry.register(
            "file_transfers",
            "File transfers in progress now",
            self.file_transfers.clone(),
        );
        registry.register(
            "file_bytes_relayed",
            "Bytes of file chunks handed to recipients",
            self.file_bytes.clone(),
        );
        registry.register(
            "busy_pauses",
            "Pauses workers took before waiting, after a busy round",
            self.busy_pauses.clone(),
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .expect("writing to a String cannot fail");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_snake_case_kinds() {
        let metrics = Metrics::default();
        metrics.reject(Rejection::SlowConsumer);
        metrics.reject(Rejection::SlowConsumer);
        metrics.relayed(Relayed::Room, 9);
        metrics.set_population(10, 2, 1);
        metrics.relayed_file_bytes(1000, 3);
        metrics.set_busy_pauses(4);
        metrics.set_busy_pauses(7);
        let text = metrics.render();
        for line in [
            "parlor_rejections_total{kind=\"slow_consumer\"} 2",
            "parlor_messages_relayed_total{kind=\"room\"} 1",
            "parlor_deliveries_total 9",
            "parlor_connections 10",
            "parlor_rooms 2",
            "parlor_file_transfers 1",
            "parlor_file_bytes_relayed_total 3000",
            "parlor_busy_pauses_total 7",
        ] {
            assert!(
                text.lines().any(|got| got == line),
                "{line} missing in\n{text}"
            );
        }
    }
}
