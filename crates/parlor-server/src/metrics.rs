//! Counters an operator scrapes to see what the server refuses and relays.
//!
//! The hub counts as it decides (every refusal has one place in the code
//! where it happens) into plain numbers of its own ([`Stats`]). At each
//! scrape the metrics endpoint takes a snapshot of them and renders it in
//! the Prometheus text format, so counting costs the hub an add and the
//! core knows nothing of Prometheus.

use std::fmt::Write;
use std::sync::atomic::AtomicU64;

use parlor_cluster::ClusterStats;
use parlor_core::{Rejection, Relayed, Stats};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// A [`Rejection`] as a Prometheus label value.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct RejectionKind(Rejection);

impl EncodeLabelValue for RejectionKind {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(self.0.label())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectionLabels {
    kind: RejectionKind,
}

/// A [`Relayed`] as a Prometheus label value.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct RelayedKind(Relayed);

impl EncodeLabelValue for RelayedKind {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(self.0.label())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RelayedLabels {
    kind: RelayedKind,
}

/// Renders the hub's counters and the workers' busy pauses in the
/// Prometheus text exposition format.
pub fn render(stats: &Stats, busy_pauses: u64, cluster: Option<&ClusterStats>) -> String {
    let counter = |total: u64| {
        let counter = Counter::<u64>::default();
        counter.inc_by(total);
        counter
    };
    let seconds = |duration: std::time::Duration| {
        let gauge = Gauge::<f64, AtomicU64>::default();
        gauge.set(duration.as_secs_f64());
        gauge
    };
    let gauge = |now: usize| {
        let gauge = Gauge::<i64>::default();
        gauge.set(now as i64);
        gauge
    };
    // A kind appears once it has happened, as with counters kept live.
    let rejections = Family::<RejectionLabels, Counter>::default();
    for kind in Rejection::ALL {
        let total = stats.rejections(kind);
        if total > 0 {
            let labels = RejectionLabels {
                kind: RejectionKind(kind),
            };
            rejections.get_or_create(&labels).inc_by(total);
        }
    }
    let messages = Family::<RelayedLabels, Counter>::default();
    for kind in Relayed::ALL {
        let labels = RelayedLabels {
            kind: RelayedKind(kind),
        };
        messages.get_or_create(&labels).inc_by(stats.messages(kind));
    }
    let mut registry = Registry::with_prefix("parlor");
    registry.register(
        "rejections",
        "Requests refused and connections dropped, by reason",
        rejections,
    );
    registry.register(
        "messages_relayed",
        "Room messages and DMs accepted and relayed",
        messages,
    );
    registry.register(
        "deliveries",
        "Relayed messages handed to recipients",
        counter(stats.deliveries),
    );
    registry.register(
        "connections",
        "Connections open now",
        gauge(stats.connections),
    );
    registry.register("rooms", "Rooms that exist now", gauge(stats.rooms));
    registry.register(
        "file_transfers",
        "File transfers in progress now",
        gauge(stats.file_transfers),
    );
    registry.register(
        "file_bytes_relayed",
        "Bytes of file chunks handed to recipients",
        counter(stats.file_bytes),
    );
    registry.register(
        "busy_pauses",
        "Pauses workers took before waiting, after a busy round",
        counter(busy_pauses),
    );
    if let Some(cluster) = cluster {
        let cluster_registry = registry.sub_registry_with_prefix("cluster");
        cluster_registry.register(
            "nodes",
            "Nodes whose lease this node saw renewed within its TTL, itself included",
            gauge(cluster.nodes),
        );
        cluster_registry.register(
            "nats_round_trip_seconds",
            "How long the last lease renewal took: a JetStream write, acknowledged",
            seconds(cluster.nats_round_trip),
        );
        cluster_registry.register(
            "lease_renewals_failed",
            "Lease renewals that failed or timed out",
            counter(cluster.renewals_failed),
        );
        cluster_registry.register(
            "fences",
            "Times this node lost its lease and closed every connection",
            counter(cluster.fences),
        );
        cluster_registry.register(
            "names_swept",
            "Names of nodes whose lease expired, freed by this node",
            counter(cluster.names_swept),
        );
        cluster_registry.register(
            "relays_sent",
            "Room messages and DMs handed to NATS for other nodes (one per node, not per member)",
            counter(cluster.relays_sent),
        );
        cluster_registry.register(
            "relays_dropped",
            "Relays dropped because the queue to NATS was full (the nodes they were for see a gap)",
            counter(cluster.relays_dropped),
        );
        cluster_registry.register(
            "relays_resent",
            "Room messages sent again because another node missed them",
            counter(cluster.relays_resent),
        );
        cluster_registry.register(
            "relay_backlogs",
            "Times a connection stopped reading until the queue of relays to NATS drained",
            counter(cluster.relay_backlogs),
        );
        cluster_registry.register(
            "relays_received",
            "Room messages and DMs received from other nodes",
            counter(cluster.relays_received),
        );
        cluster_registry.register(
            "relay_gaps",
            "Gaps in the room messages relayed from another node; those who missed one were disconnected",
            counter(cluster.relay_gaps),
        );
    }
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .expect("writing to a String cannot fail");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_snake_case_kinds() {
        let mut stats = Stats {
            deliveries: 9,
            file_bytes: 3000,
            connections: 10,
            rooms: 2,
            file_transfers: 1,
            ..Stats::default()
        };
        stats.rejections[Rejection::SlowConsumer as usize] = 2;
        stats.messages[Relayed::Room as usize] = 1;
        let text = render(&stats, 7, None);
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
