//! Cluster mode: several parlor nodes acting as one server, on NATS.
//!
//! Each node runs its own hub; what must be agreed between them lives in
//! JetStream key-value buckets, which a NATS cluster replicates with RAFT:
//!
//! | bucket | key | value | written by |
//! |---|---|---|---|
//! | `parlor_names` | `n.<name in hex>` | the owning run | the node that won the name, with *create* (compare-and-set on "no such key") |
//! | `parlor_names` | `guests` | the next guest number not handed out | any node taking a block of guest numbers (compare-and-set on its revision) |
//! | `parlor_nodes` | the node id | its current run | the node, every quarter lease; entries expire a lease after they were written |
//! | `parlor_rooms` | `r.<name in hex>` | the whole room: password hash, kind, incarnation, members by node and run; for a secure room also its owner, its last epoch committed and each member's introduction (`rooms.rs`) | any node changing it (compare-and-set on its revision); the last member out deletes it; only the owner commits epochs |
//!
//! A *run* is one node id with an incarnation drawn at random when the node
//! starts and again after it lost its lease. Only the store's
//! compare-and-set decides who holds a name; a node's copy of the buckets
//! (from watches) only lists and sweeps.
//!
//! **Names.** A hub made with `Hub::clustered` claims every name through
//! [`Cluster::claim`] and releases it through [`Cluster::release`]; both go
//! through the store's queue, in order for each name (its lane), so a name
//! released and claimed again on one node goes to its new holder. Lanes of
//! other names, of rooms and of the guest counter run side by side. A guest name is `randN` for a number from a
//! block of [`GUEST_BLOCK`] that the node takes from the `guests` counter:
//! unique across the cluster, and increasing on each node, but not one
//! sequence across nodes. A number whose name somebody took with NICK is
//! skipped, as on a single server.
//!
//! **Leases and the sweep.** `liveness.rs` says when a name is nobody's (its
//! run is over); `lease.rs` when a node must fence itself (close every
//! connection and claim nothing) because it could not renew its record.
//! Released names are purged with a marker set to expire after a minute
//! (a JetStream 2.11 per-entry TTL), meant to keep the bucket from holding
//! one tombstone per name ever used; no test waits for a marker to expire.
//!
//! The driver contract is the hub's; this crate adds the [`Node`] trait,
//! through which the cluster tells the server what it saw.

#![warn(missing_docs)]

mod driver;
mod keys;
mod lease;
mod liveness;
mod order;
mod relay;
mod rooms;

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use parlor_core::{CommitOutcome, FileTarget, NodeId, RoomRecord};
use parlor_proto::secure::Fingerprint;

pub use driver::{Cluster, ClusterStats};

/// How many guest numbers a node takes from the shared counter at a time.
pub const GUEST_BLOCK: u64 = 256;

/// The name of the bucket of names (and the guest counter).
pub const NAMES_BUCKET: &str = "parlor_names";
/// The name of the bucket of node records.
pub const NODES_BUCKET: &str = "parlor_nodes";
/// The name of the bucket of rooms.
pub const ROOMS_BUCKET: &str = "parlor_rooms";

/// How this node joins the cluster.
#[derive(Clone, Debug)]
pub struct Settings {
    /// NATS servers to connect to, `nats://HOST:PORT` (or `tls://`); the
    /// client moves between them as they come and go.
    pub servers: Vec<String>,
    /// This node's id: unique among the nodes, the same across restarts.
    pub node_id: String,
    /// How long a node's record outlives its last renewal; a killed node's
    /// names are free within about this long.
    pub lease: Duration,
    /// Copies JetStream keeps of each bucket: 1 for one NATS server, 3 for
    /// a cluster of three (which then survives the loss of one).
    pub replicas: usize,
    /// A NATS credentials file (`.creds`: a user JWT and its nkey seed).
    pub credentials_file: Option<PathBuf>,
    /// A PEM file of CA certificates to trust for `tls://` servers.
    pub tls_ca_file: Option<PathBuf>,
}

/// Locks `mutex`, going on with its data if a holder panicked: the one
/// way this crate takes its locks.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What the cluster tells the server it runs in.
pub trait Node: Send + Sync + 'static {
    /// A user of `node`, another node, holds `name`.
    fn remote_name_held(&self, name: Bytes, node: NodeId);
    /// No user of another node holds `name` any more.
    fn remote_name_released(&self, name: &[u8]);
    /// The copy of the names bucket is being read again from the start.
    fn remote_names_cleared(&self);
    /// A room's record is now `record`.
    fn remote_room(&self, record: RoomRecord);
    /// A room's record was deleted at `revision`.
    fn remote_room_deleted(&self, room: &[u8], revision: u64);
    /// The copy of the rooms bucket is being read again from the start.
    fn remote_rooms_resyncing(&self);
    /// The rooms bucket has been read again up to its current values.
    fn remote_rooms_resynced(&self);
    /// Another node relayed a room message for the members of `room` here.
    fn relayed_room_message(&self, room: &[u8], frame: Bytes);
    /// Another node relayed frames for members of `room` here, each for
    /// one member by its key's fingerprint (a room's keys, from its owner).
    fn relayed_to_members(&self, room: &[u8], frames: Vec<(Fingerprint, Bytes)>);
    /// Node `node` relayed a frame of a file transfer that runs there for
    /// the user `name` here, the holder of `fingerprint`.
    fn relayed_to_user(&self, node: &str, name: &[u8], fingerprint: &Fingerprint, frame: Bytes);
    /// Another node asks whose key its user's file's target, `target`,
    /// holds here.
    fn relayed_file_target(&self, target: &[u8]) -> FileTarget;
    /// The user `name` of node `node` sent a file request about a transfer
    /// that runs here; with `ask`, the answer goes back with
    /// [`Cluster::answer_file_request`](crate::Cluster::answer_file_request).
    fn relayed_file_request(&self, ask: Option<u64>, node: &str, name: &[u8], frame: Bytes);
    /// An epoch commit asked for with
    /// [`Cluster::commit_epoch`](crate::Cluster::commit_epoch) finished.
    fn epoch_committed(&self, ticket: u64, outcome: CommitOutcome);
    /// Another node relayed a DM for `target`; returns whether `target` is
    /// a user here (and was sent it).
    fn relayed_direct_message(&self, target: &[u8], frame: Bytes) -> bool;
    /// Another node sent a DM_KEY_REQUEST for `target` by the user its
    /// `introduction` names; the answer goes back with
    /// [`Cluster::answer_dm_key`](crate::Cluster::answer_dm_key) and `ask`.
    fn relayed_dm_key_request(&self, ask: u64, target: &[u8], introduction: Bytes);
    /// Room messages relayed from `node` were lost on the way.
    fn relay_lost(&self, node: &str);
    /// The lease is lost: close every connection now, before other nodes
    /// can give their names away.
    fn fence(&self);
}

/// Why a node could not join its cluster.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// No NATS server answered.
    #[error("cannot connect to NATS at {servers}: {source}")]
    Connect {
        /// The servers tried, as given.
        servers: String,
        /// What the client said.
        source: async_nats::ConnectError,
    },
    /// The credentials or CA file could not be read.
    #[error("cannot read {path}: {source}")]
    File {
        /// The file, as given.
        path: String,
        /// Why not.
        source: std::io::Error,
    },
    /// JetStream refused to open or create a bucket (is JetStream on, and
    /// the server at least 2.11?).
    #[error("cannot open the key-value bucket {bucket}: {reason}")]
    Bucket {
        /// The bucket.
        bucket: &'static str,
        /// What JetStream said.
        reason: String,
    },
    /// This node's relay subjects could not be subscribed.
    #[error("cannot subscribe to this node's relay subjects: {0}")]
    Relay(String),
    /// The first lease could not be written.
    #[error("cannot write this node's lease record: {0}")]
    Lease(String),
}
