//! Which names and room memberships are nobody's any more: the sweep,
//! decided without I/O.
//!
//! Every node renews a record of its run in the nodes bucket; every node
//! watches that bucket, the names bucket and the rooms bucket, and feeds
//! what it sees here with the time it saw it. A name whose owner's run is
//! over is swept: its key is purged, on the condition that it still holds
//! the revision seen, so a sweep can never take a name that someone won
//! since. A room's members of a run that is over are taken out of it, by
//! compare-and-set too. Every node sweeps; the condition makes it harmless
//! when two do.
//!
//! A run is over when
//! - its node has started another run since (this node, too, after a
//!   restart or a lost lease): certain, so its names go at once;
//! - nothing was heard of it for a whole lease: likely, so the driver
//!   first reads the node's record itself, since this copy may lag (after
//!   a reconnect, say), and sweeps only once the store has let the record
//!   expire, or it names another run. A record still there is not a sign
//!   of life (the store expires entries a little late); it is read again
//!   at the next sweep.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::keys::Run;

#[derive(Debug)]
pub(crate) struct Liveness {
    me: Run,
    lease: Duration,
    /// Each node's latest run, and when this node last heard it renew.
    nodes: HashMap<String, Heard>,
    /// Every name held by a run other than this node's current one.
    names: HashMap<Bytes, Held>,
    /// Every room with members of a run other than this node's current
    /// one: those runs, and when each was first seen there.
    rooms: HashMap<Bytes, Vec<(Run, Instant)>>,
}

#[derive(Debug)]
struct Heard {
    incarnation: u64,
    at: Instant,
}

#[derive(Debug)]
struct Held {
    owner: Run,
    revision: u64,
    /// When this node first saw the name held by `owner`: a run is given a
    /// whole lease from then to be heard of.
    seen: Instant,
}

/// What the driver should sweep now.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Sweep {
    /// Names whose owner's run is certainly over, with the revision to
    /// purge at.
    pub(crate) names: Vec<(Bytes, u64)>,
    /// Rooms with members of a run that is certainly over: take them out.
    pub(crate) rooms: Vec<(Bytes, Run)>,
    /// Runs not heard of for a lease: read their node's record, and call
    /// [`Liveness::run_over`] if it is gone or names another run.
    pub(crate) suspects: Vec<Run>,
}

/// What a run that is over leaves to sweep.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Leftovers {
    /// Its names, with the revision to purge at.
    pub(crate) names: Vec<(Bytes, u64)>,
    /// The rooms it has members in.
    pub(crate) rooms: Vec<Bytes>,
}

/// What the copy says of a run.
enum Verdict {
    Live,
    /// Certainly over: its node started another run.
    Over,
    /// Not heard of for a lease.
    Suspect,
}

impl Liveness {
    pub(crate) fn new(me: Run, lease: Duration) -> Liveness {
        Liveness {
            me,
            lease,
            nodes: HashMap::new(),
            names: HashMap::new(),
            rooms: HashMap::new(),
        }
    }

    /// This node starts a new run (after it lost its lease): names of the
    /// one before are now swept like anybody's.
    pub(crate) fn restarted(&mut self, me: Run) {
        self.me = me;
    }

    /// A node's record was written (a renewal, or a new run).
    pub(crate) fn node_renewed(&mut self, node: &str, incarnation: u64, now: Instant) {
        let heard = Heard {
            incarnation,
            at: now,
        };
        match self.nodes.get_mut(node) {
            Some(known) => *known = heard,
            None => {
                self.nodes.insert(node.to_owned(), heard);
            }
        }
    }

    /// A name is held by `owner` at `revision`.
    pub(crate) fn name_held(&mut self, name: Bytes, owner: Run, revision: u64, now: Instant) {
        if owner == self.me {
            self.names.remove(&name);
            return;
        }
        let seen = match self.names.get(&name) {
            Some(held) if held.owner == owner => held.seen,
            _ => now,
        };
        self.names.insert(
            name,
            Held {
                owner,
                revision,
                seen,
            },
        );
    }

    /// Nobody holds the name any more.
    pub(crate) fn name_released(&mut self, name: &[u8]) {
        self.names.remove(name);
    }

    /// The runs with members in `room` are now `runs`.
    pub(crate) fn room_members(
        &mut self,
        room: Bytes,
        runs: impl Iterator<Item = Run>,
        now: Instant,
    ) {
        let known = self.rooms.remove(&room).unwrap_or_default();
        let runs: Vec<(Run, Instant)> = runs
            .filter(|run| *run != self.me)
            .map(|run| {
                let seen = known
                    .iter()
                    .find(|(old, _)| *old == run)
                    .map_or(now, |(_, seen)| *seen);
                (run, seen)
            })
            .collect();
        if !runs.is_empty() {
            self.rooms.insert(room, runs);
        }
    }

    /// The room is gone.
    pub(crate) fn room_deleted(&mut self, room: &[u8]) {
        self.rooms.remove(room);
    }

    /// The driver read `run`'s node record and found it gone, or naming
    /// another run: the run is over.
    pub(crate) fn run_over(&mut self, run: &Run) -> Leftovers {
        let names = self
            .names
            .iter()
            .filter(|(_, held)| held.owner == *run)
            .map(|(name, held)| (name.clone(), held.revision));
        let rooms = self
            .rooms
            .iter()
            .filter(|(_, runs)| runs.iter().any(|(member, _)| member == run))
            .map(|(room, _)| room.clone());
        Leftovers {
            names: names.collect(),
            rooms: rooms.collect(),
        }
    }

    /// How many nodes were heard renewing within the last TTL.
    pub(crate) fn nodes_heard(&self, now: Instant) -> usize {
        let recent = |heard: &&Heard| now.saturating_duration_since(heard.at) < self.lease;
        self.nodes.values().filter(recent).count()
    }

    /// What to sweep at `now`.
    pub(crate) fn sweep(&self, now: Instant) -> Sweep {
        let mut sweep = Sweep::default();
        let suspect = |run: &Run, sweep: &mut Sweep| {
            if !sweep.suspects.contains(run) {
                sweep.suspects.push(run.clone());
            }
        };
        for (name, held) in &self.names {
            match self.verdict(&held.owner, held.seen, now) {
                Verdict::Live => {}
                Verdict::Over => sweep.names.push((name.clone(), held.revision)),
                Verdict::Suspect => suspect(&held.owner, &mut sweep),
            }
        }
        for (room, runs) in &self.rooms {
            for (run, seen) in runs {
                match self.verdict(run, *seen, now) {
                    Verdict::Live => {}
                    Verdict::Over => sweep.rooms.push((room.clone(), run.clone())),
                    Verdict::Suspect => suspect(run, &mut sweep),
                }
            }
        }
        sweep
    }

    /// What the copy says of `run`, first seen owning something at `seen`.
    fn verdict(&self, run: &Run, seen: Instant, now: Instant) -> Verdict {
        let heard = self.nodes.get(&run.node);
        let restarted = if run.node == self.me.node {
            run.incarnation != self.me.incarnation
        } else {
            heard.is_some_and(|heard| heard.incarnation != run.incarnation)
        };
        if restarted {
            return Verdict::Over;
        }
        let last_heard = heard.map_or(seen, |heard| heard.at.max(seen));
        if now.saturating_duration_since(last_heard) >= self.lease {
            Verdict::Suspect
        } else {
            Verdict::Live
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(6);

    fn run(node: &str, incarnation: u64) -> Run {
        Run {
            node: node.into(),
            incarnation,
        }
    }

    fn name(text: &'static str) -> Bytes {
        Bytes::from_static(text.as_bytes())
    }

    #[test]
    fn names_of_a_run_that_keeps_renewing_are_never_swept() {
        let start = Instant::now();
        let mut live = Liveness::new(run("a", 1), LEASE);
        live.node_renewed("b", 7, start);
        live.name_held(name("bob"), run("b", 7), 3, start);
        for step in 1..20 {
            let now = start + LEASE / 4 * step;
            live.node_renewed("b", 7, now);
            assert_eq!(live.sweep(now), Sweep::default());
        }
    }

    #[test]
    fn a_run_silent_for_a_lease_is_a_suspect_and_its_names_go_once_confirmed() {
        let start = Instant::now();
        let mut live = Liveness::new(run("a", 1), LEASE);
        live.node_renewed("b", 7, start);
        live.name_held(name("bob"), run("b", 7), 3, start);
        live.name_held(name("bea"), run("b", 7), 4, start);
        assert_eq!(live.sweep(start + LEASE / 2), Sweep::default());
        let sweep = live.sweep(start + LEASE);
        assert!(sweep.names.is_empty());
        assert_eq!(sweep.suspects, [run("b", 7)], "one entry per run");
        let mut over = live.run_over(&run("b", 7)).names;
        over.sort();
        assert_eq!(over, [(name("bea"), 4), (name("bob"), 3)]);
    }

    #[test]
    fn a_name_seen_before_its_owners_record_gets_a_whole_lease() {
        let start = Instant::now();
        let mut live = Liveness::new(run("a", 1), LEASE);
        let later = start + LEASE * 10;
        live.name_held(name("new"), run("c", 2), 1, later);
        assert_eq!(live.sweep(later + LEASE / 2), Sweep::default());
        assert_eq!(live.sweep(later + LEASE).suspects, [run("c", 2)]);
    }

    #[test]
    fn names_of_an_earlier_run_go_at_once_and_ours_never() {
        let start = Instant::now();
        let mut live = Liveness::new(run("a", 2), LEASE);
        live.name_held(name("mine"), run("a", 2), 5, start);
        live.name_held(name("before"), run("a", 1), 6, start);
        live.node_renewed("b", 9, start);
        live.name_held(name("theirs"), run("b", 8), 7, start);
        let mut sweep = live.sweep(start);
        sweep.names.sort();
        assert_eq!(sweep.names, [(name("before"), 6), (name("theirs"), 7)]);
        live.restarted(run("a", 3));
        live.name_held(name("mine"), run("a", 2), 5, start);
        assert!(live.sweep(start).names.contains(&(name("mine"), 5)));
    }

    #[test]
    fn a_released_or_retaken_name_is_not_swept_with_its_old_owner() {
        let start = Instant::now();
        let mut live = Liveness::new(run("a", 1), LEASE);
        live.name_held(name("bob"), run("b", 7), 3, start);
        live.name_held(name("bea"), run("b", 7), 4, start);
        live.name_released(b"bob");
        live.name_held(name("bea"), run("a", 1), 9, start);
        assert_eq!(live.run_over(&run("b", 7)), Leftovers::default());
    }

    #[test]
    fn room_members_of_a_run_that_is_over_are_swept_like_its_names() {
        let start = Instant::now();
        let mut live = Liveness::new(run("a", 2), LEASE);
        live.node_renewed("b", 7, start);
        let members = [run("a", 2), run("a", 1), run("b", 7)];
        live.room_members(name("lobby"), members.into_iter(), start);
        live.room_members(name("den"), [run("b", 7)].into_iter(), start);
        let sweep = live.sweep(start);
        assert_eq!(
            sweep.rooms,
            [(name("lobby"), run("a", 1))],
            "an earlier run of ours"
        );
        let sweep = live.sweep(start + LEASE);
        assert_eq!(sweep.suspects, [run("b", 7)]);
        let mut rooms = live.run_over(&run("b", 7)).rooms;
        rooms.sort();
        assert_eq!(rooms, [name("den"), name("lobby")]);
        live.room_deleted(b"den");
        live.room_members(name("lobby"), [run("a", 2)].into_iter(), start);
        assert_eq!(live.run_over(&run("b", 7)), Leftovers::default());
    }
}
