//! Names claimed through the driver, for a hub that is one node of a
//! cluster.
//!
//! A hub on its own decides who holds a name from its directory: the first
//! to ask gets it. A hub made with [`Hub::clustered`] serves one node of
//! several, and a name must be unique across all of them; only the
//! cluster's shared store knows who asked first. So every name this hub
//! gives out, a new connection's guest name and every NICK's new name, is
//! first claimed through the driver ([`Action::ClaimName`]), and every name
//! it lets go is released through it ([`Action::ReleaseName`]).
//!
//! A claim owes its connection a reply, exactly as a password job does: the
//! driver reads nothing more from the connection until it has reported the
//! outcome with [`Hub::name_claimed`]. For a guest name that means the
//! HELLO is read only once the connection has its name.
//!
//! The old name of a rename is released only after the new one is won, so
//! a failed claim leaves the user as it was. A claim won for a connection
//! that is gone by then, or that the hub no longer waits for, is released
//! at once, so no name is ever held by nobody.
//!
//! Names held by users of the other nodes come in through
//! [`Hub::remote_name_held`] and [`Hub::remote_name_released`], from the
//! driver's copy of the store; LIST_USERS outside a room lists them too.

use std::time::Instant;

use bytes::Bytes;
use tracing::{error, info, warn};

use crate::{respond, Action, CloseReason, ConnId, Hub, NodeId, Pending};
use parlor_proto::printable::Printable;
use parlor_proto::secure::SIGNATURE_LEN;
use parlor_proto::text;
use parlor_proto::Status;

/// A name the hub needs claimed in the cluster's store before it gives it
/// to a connection.
#[derive(Debug, Clone)]
pub struct NameClaim {
    /// The connection that gets the name, whose reply waits for it.
    pub conn: ConnId,
    /// Echoed back in [`Hub::name_claimed`], so a late outcome for an
    /// earlier request is recognised.
    pub ticket: u64,
    /// Which name.
    pub name: NameRequest,
}

/// The name a [`NameClaim`] asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameRequest {
    /// A guest name for a new connection, chosen by the driver: any name of
    /// the form `randN` that nobody holds (unique, not sequential, across
    /// the cluster).
    Guest,
    /// This exact name, for a NICK.
    Exactly(Bytes),
}

/// The outcome of a [`NameClaim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The connection holds this name now, in the whole cluster.
    Claimed(Bytes),
    /// Somebody on some node holds the name.
    Taken,
    /// The cluster's store did not answer in time; nothing was claimed.
    Unavailable,
}

/// What a connection waits for while its name is claimed.
#[derive(Debug)]
pub(crate) struct PendingName {
    pub(crate) ticket: u64,
    pub(crate) purpose: NamePurpose,
}

#[derive(Debug)]
pub(crate) enum NamePurpose {
    /// The connection is new and has no name yet.
    Guest,
    /// A NICK (with SIGNED_NICK's proof), whose old name is kept until the
    /// new one is won.
    Rename {
        proof: Option<Box<[u8; SIGNATURE_LEN]>>,
    },
}

impl Hub {
    /// Whether names are claimed through the driver (see [`Hub::clustered`]).
    pub(crate) fn in_cluster(&self) -> bool {
        self.node.is_some()
    }

    /// Asks the driver to claim `name` for `conn`, which waits for it.
    pub(crate) fn claim_name(
        &mut self,
        conn: ConnId,
        name: NameRequest,
        purpose: NamePurpose,
        out: &mut Vec<Action>,
    ) {
        let ticket = self.new_ticket();
        let user = self.users.get_mut(&conn).expect("caller checked");
        user.pending = Some(Box::new(Pending::Name(PendingName { ticket, purpose })));
        out.push(Action::ClaimName(NameClaim { conn, ticket, name }));
    }

    /// A [`NameClaim`] finished at `now`.
    pub fn name_claimed(
        &mut self,
        conn: ConnId,
        ticket: u64,
        outcome: ClaimOutcome,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(Pending::Name(pending)) = self.take_pending(conn, ticket) else {
            // Nobody waits for this name any more.
            if let ClaimOutcome::Claimed(name) = outcome {
                out.push(Action::ReleaseName(name));
            }
            return;
        };
        let outcome = match outcome {
            ClaimOutcome::Claimed(name) if !self.directory.claim_name(&name, conn) => {
                // The store gave out a name a user here holds: the two
                // disagree, which is a bug; the user here keeps it.
                error!(%conn, nick = %Printable(&name), "the cluster gave out a name held here");
                ClaimOutcome::Taken
            }
            outcome => outcome,
        };
        match (pending.purpose, outcome) {
            (NamePurpose::Guest, ClaimOutcome::Claimed(name)) => {
                let user = self.users.get_mut(&conn).expect("pending was found");
                info!(peer = %user.peer, nick = %Printable(&name), %conn, "connected");
                user.name = name;
            }
            (NamePurpose::Guest, ClaimOutcome::Taken | ClaimOutcome::Unavailable) => {
                warn!(%conn, "no guest name: the cluster is unavailable");
                respond(out, conn, Status::TryLater, text::CLUSTER_UNAVAILABLE);
                self.close(conn, CloseReason::ClusterUnavailable, now, out);
            }
            (NamePurpose::Rename { proof }, ClaimOutcome::Claimed(name)) => {
                self.renamed(conn, name, proof.as_deref(), out)
            }
            (NamePurpose::Rename { .. }, ClaimOutcome::Taken) => {
                respond(out, conn, Status::Error, text::NICK_TAKEN)
            }
            (NamePurpose::Rename { .. }, ClaimOutcome::Unavailable) => {
                respond(out, conn, Status::TryLater, text::CLUSTER_UNAVAILABLE)
            }
        }
    }

    /// Lets go of a name this hub held, in the cluster too.
    pub(crate) fn release_name(&mut self, name: &Bytes, out: &mut Vec<Action>) {
        self.directory.release_name(name);
        if self.in_cluster() && !name.is_empty() {
            out.push(Action::ReleaseName(name.clone()));
        }
    }

    /// A user of `node`, another node, holds `name` (the driver's copy of
    /// the cluster's store says so).
    pub fn remote_name_held(&mut self, name: Bytes, node: NodeId) {
        self.directory.add_remote_name(name, node);
    }

    /// No user of another node holds `name` any more: it has also left
    /// the file transfers that run here.
    pub fn remote_name_released(&mut self, name: &[u8], now: Instant, out: &mut Vec<Action>) {
        self.directory.remove_remote_name(name);
        self.stand_ins_gone(name, now, out);
    }

    /// The driver lost its copy of the store and is reading it again:
    /// forgets every remote name until they are reported anew.
    pub fn remote_names_cleared(&mut self) {
        self.directory.clear_remote_names();
    }
}
