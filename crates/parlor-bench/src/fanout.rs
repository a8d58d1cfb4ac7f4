//! `parlor bench fanout`: R rooms of M members, every member sending to its
//! room, so each message is delivered to the M − 1 others. The workload
//! that stresses the server's relay path: one encode, many writes.

use std::collections::BTreeSet;

use clap::Args;
use serde::Serialize;

use super::relay_metrics::{metrics_url, MetricsUrl};
use super::target::TargetArgs;
use super::traffic::{self, Endpoint, LoadArgs, Plan, Stamped, Target, TrafficReport};

/// `parlor bench fanout`'s options; echoed, all of them, in the report's
/// `params`.
#[derive(Args, Clone, Debug, Serialize)]
pub struct FanoutArgs {
    /// The server and how to connect to it, as for every workload.
    #[command(flatten)]
    #[serde(flatten)]
    pub target: TargetArgs,
    /// Number of rooms (R).
    #[arg(long, value_name = "R", default_value_t = 10)]
    pub rooms: u32,
    /// Members per room (M); every member sends.
    #[arg(long, value_name = "M", default_value_t = 10)]
    pub members: u32,
    /// How the senders pace their messages, as for every message workload.
    #[command(flatten)]
    #[serde(flatten)]
    pub load: LoadArgs,
    /// Cluster mode: every node's metrics endpoint, comma-separated
    /// (http://127.0.0.1:PORT/metrics, as `parlor serve --metrics ADDR`
    /// serves it), at least one for each --server address. Their relay
    /// counters are read before and after the run, and the report says how
    /// many NATS messages a room message cost (`nats_relays_per_room_message`),
    /// which must be the number of other nodes with members of the room.
    #[arg(long, value_name = "URL[,URL…]", value_delimiter = ',', value_parser = metrics_url)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<MetricsUrl>,
}

impl FanoutArgs {
    /// Refuses options the run cannot honour, with the option's name and
    /// what it takes, before anything connects.
    pub fn validate(&self) -> Result<(), String> {
        self.target.validate()?;
        self.load.validate()?;
        if self.rooms == 0 {
            return Err("--rooms: at least 1".into());
        }
        if self.members < 2 {
            return Err("--members: at least 2, or no message has a recipient".into());
        }
        if u64::from(self.rooms) * u64::from(self.members) > 1_000_000 {
            return Err("--rooms × --members: at most 1,000,000 connections".into());
        }
        let nodes: BTreeSet<_> = self.target.server.iter().collect();
        if !self.metrics.is_empty() && self.metrics.len() < nodes.len() {
            return Err(format!(
                "--metrics: one URL for each of the {} --server nodes at least, or the relays \
                 of some go uncounted",
                nodes.len()
            ));
        }
        Ok(())
    }

    /// Member m of room r is connection r·M + m, named after that number, in
    /// room `room<r>` (chatload's names).
    pub(super) fn plan(&self) -> Plan {
        let members = self.members;
        let endpoints = (0..self.rooms)
            .flat_map(|room| (0..members).map(move |member| (room, member)))
            .map(|(room, member)| {
                let name = format!("room{room}");
                let first = room * members;
                Endpoint {
                    nick: self.target.nick((first + member) as usize),
                    room: Some(name.clone()),
                    sends_to: Target::Room(name),
                    hears_from: first..first + members,
                }
            })
            .collect();
        Plan {
            workload: "fanout",
            title: format!("{} rooms x {} members", self.rooms, self.members),
            endpoints,
            deliveries_per_message: u64::from(members - 1),
            params: serde_json::to_value(self).expect("options serialize"),
            relay_metrics: self.metrics.clone(),
        }
    }
}

pub(crate) async fn run(args: &FanoutArgs) -> anyhow::Result<TrafficReport> {
    let messages = Stamped {
        message_bytes: args.load.message_bytes,
    };
    let (report, _) = traffic::run(&args.target, &args.load, args.plan(), messages).await?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic::remote_nodes;

    fn parse(args: &str) -> Result<FanoutArgs, String> {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            fanout: FanoutArgs,
        }
        let words = std::iter::once("fanout").chain(args.split_whitespace());
        let cli = <Cli as clap::Parser>::try_parse_from(words).map_err(|err| err.to_string())?;
        cli.fanout.validate()?;
        Ok(cli.fanout)
    }

    const THREE: &str = "--server 127.0.0.1:4370,127.0.0.1:4380,127.0.0.1:4390";

    /// 10 members in a row cover all three nodes: every message owes a
    /// relay to each of the two others.
    #[test]
    fn rooms_span_the_nodes_they_are_spread_over() {
        let args = parse(&format!("{THREE} --rooms 10 --members 10")).unwrap();
        let plan = args.plan();
        assert!(remote_nodes(&plan, &args.target).iter().all(|&n| n == 2));

        // Rooms of 2 over 3 nodes: room r has members 2r and 2r + 1, on
        // two different nodes, so one relay each.
        let pairs = parse(&format!("{THREE} --rooms 6 --members 2")).unwrap();
        let owed = remote_nodes(&pairs.plan(), &pairs.target);
        assert!(owed.iter().all(|&n| n == 1), "{owed:?}");

        // Two servers, rooms of 3 members: every room spans both.
        let two = parse("--server 127.0.0.1:1,127.0.0.1:2 --rooms 2 --members 3").unwrap();
        assert_eq!(remote_nodes(&two.plan(), &two.target), [1; 6]);

        // One server: nothing goes to NATS.
        let one = parse("--rooms 2 --members 3").unwrap();
        assert_eq!(remote_nodes(&one.plan(), &one.target), [0; 6]);

        // The same address twice is one node.
        let same = parse("--server 127.0.0.1:1,127.0.0.1:1 --rooms 1 --members 4").unwrap();
        assert_eq!(remote_nodes(&same.plan(), &same.target), [0; 4]);
    }

    #[test]
    fn metrics_urls_cover_every_node() {
        let urls = "http://127.0.0.1:8370/metrics,http://127.0.0.1:8380/metrics";
        let err = parse(&format!("{THREE} --metrics {urls}")).unwrap_err();
        assert!(err.contains("each of the 3 --server nodes"), "{err}");
        let args = parse(&format!("{THREE} --metrics {urls},http://127.0.0.1:8390")).unwrap();
        assert_eq!(args.metrics.len(), 3);
        assert_eq!(args.plan().relay_metrics, args.metrics);
        let params = &args.plan().params;
        assert_eq!(
            params["metrics"][2],
            serde_json::json!("http://127.0.0.1:8390/metrics")
        );
        let err = parse("--metrics http://10.0.0.1:1/metrics").unwrap_err();
        assert!(err.contains("not a loopback"), "{err}");
        // Without --metrics, the params are what they were.
        let plain = parse("").unwrap();
        assert!(plain.plan().params.get("metrics").is_none());
    }
}
