//! `parlor bench dm`: P pairs of users, each sending direct messages to its
//! partner. One delivery per message: the server's lookup-and-forward path
//! with no fan-out.

use clap::Args;
use serde::Serialize;

use super::target::TargetArgs;
use super::traffic::{self, Endpoint, LoadArgs, Plan, Stamped, Target, TrafficReport};

/// `parlor bench dm`'s options; echoed, all of them, in the report's
/// `params`.
#[derive(Args, Clone, Debug, Serialize)]
pub struct DmArgs {
    /// The server and how to connect to it, as for every workload.
    #[command(flatten)]
    #[serde(flatten)]
    pub target: TargetArgs,
    /// Number of pairs (P); both users of a pair send.
    #[arg(long, value_name = "P", default_value_t = 50)]
    pub pairs: u32,
    /// How the senders pace their messages, as for every message workload.
    #[command(flatten)]
    #[serde(flatten)]
    pub load: LoadArgs,
}

impl DmArgs {
    /// Refuses options the run cannot honour, with the option's name and
    /// what it takes, before anything connects.
    pub fn validate(&self) -> Result<(), String> {
        self.target.validate()?;
        self.load.validate()?;
        if !(1..=500_000).contains(&self.pairs) {
            return Err("--pairs: from 1 to 500,000".into());
        }
        Ok(())
    }

    /// Connections 2p and 2p + 1 are partners (chatload's pairing).
    fn plan(&self) -> Plan {
        let endpoints = (0..self.pairs * 2)
            .map(|index| {
                let partner = index ^ 1;
                Endpoint {
                    nick: self.target.nick(index as usize),
                    room: None,
                    sends_to: Target::User(self.target.nick(partner as usize)),
                    hears_from: partner..partner + 1,
                }
            })
            .collect();
        Plan {
            workload: "dm",
            title: format!("{} pairs", self.pairs),
            endpoints,
            deliveries_per_message: 1,
            params: serde_json::to_value(self).expect("options serialize"),
            relay_metrics: Vec::new(),
        }
    }
}

pub(crate) async fn run(args: &DmArgs) -> anyhow::Result<TrafficReport> {
    let messages = Stamped {
        message_bytes: args.load.message_bytes,
    };
    let (report, _) = traffic::run(&args.target, &args.load, args.plan(), messages).await?;
    Ok(report)
}
