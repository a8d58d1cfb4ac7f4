//! `parlor bench fanout`: R rooms of M members, every member sending to its
//! room, so each message is delivered to the M − 1 others. The workload
//! that stresses the server's relay path: one encode, many writes.

use clap::Args;
use serde::Serialize;

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
