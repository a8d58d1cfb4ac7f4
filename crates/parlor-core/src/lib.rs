//! The sans-IO chat core: users, rooms, rate limits, idle timers, file
//! transfers and key issuance.
//!
//! [`Hub`] owns no sockets, reads no clock and draws no randomness of its
//! own. A driver (the server, a test, the fuzzer) feeds it events, each with
//! the current time, and it appends what should happen to a `Vec<Action>`
//! that the driver owns and reuses. Because time is an argument, the idle
//! cutoff, the rate limits and the transfer timeouts are tested exactly,
//! with a fake clock; `examples/hub.rs` drives a hub by hand.
//!
//! # Driving the hub
//!
//! This is the whole contract between the hub and any driver.
//!
//! **Inputs.** Each takes `now` and `out`:
//!
//! | call | when |
//! |---|---|
//! | [`Hub::connect`] | a connection was accepted |
//! | [`Hub::channel_bound`] | right after `connect`, before any frame, for a connection over TLS: its channel binding |
//! | [`Hub::receive`] | bytes arrived: it decodes every whole frame and handles it |
//! | [`Hub::handle`] | one message arrived, already decoded (tests, tools) |
//! | [`Hub::disconnect`] | the connection ended on its side, or the driver cut it off |
//! | [`Hub::handle_timeout`] | the time from [`Hub::poll_timeout`] has come |
//! | [`Hub::password_checked`] | a [`PasswordJob`] finished |
//! | [`Hub::keys_wrapped`] | a [`KeyWrapJob`] finished |
//! | [`Hub::name_claimed`] | a [`NameClaim`] finished (cluster mode) |
//! | [`Hub::remote_name_held`], [`Hub::remote_name_released`], [`Hub::remote_names_cleared`] | the cluster's names changed on another node (cluster mode) |
//! | [`Hub::room_entered`], [`Hub::epoch_committed`], [`Hub::direct_relayed`], [`Hub::dm_key_relayed`] | an [`Action::EnterRoom`], [`Action::CommitEpoch`], [`Action::RelayDirect`] or [`Action::RelayDmKey`] finished (cluster mode) |
//! | [`Hub::remote_room`], [`Hub::remote_room_deleted`], [`Hub::remote_rooms_resyncing`], [`Hub::remote_rooms_resynced`] | a room's record changed in the cluster's store, or the driver reads them all again (cluster mode) |
//! | [`Hub::relayed_room_message`], [`Hub::relayed_to_members`], [`Hub::relayed_direct_message`], [`Hub::relayed_dm_key_request`], [`Hub::relay_lost`] | another node relayed something, or relays from it were lost (cluster mode) |
//!
//! **Outputs**, which the driver must carry out in the order given:
//!
//! - [`Action::Send`] and [`Action::Broadcast`]: queue the frame for the
//!   connection, or for every member listed but the sender. The member list
//!   is the room's at that moment; a later join does not receive it.
//! - [`Action::Close`]: flush what is queued for the connection, then close
//!   it. The hub has already forgotten the user, so a later
//!   [`Hub::disconnect`] for it does nothing.
//! - [`Action::Password`], [`Action::ClaimName`] and a
//!   [`Action::WrapKeys`] with a requester ([`Action::owes_reply`]): the
//!   connection's reply is owed. Run the job
//!   off the event loop and **read nothing more from that connection** until
//!   its outcome has been reported; its next requests wait behind the
//!   answer. One call owes at most one job, always for the calling
//!   connection; a driver that ever sees two must treat it as a bug, not
//!   keep one.
//! - A [`Action::WrapKeys`] without a requester is a room key rotation: run
//!   it and report it whenever it is done; nobody waits for it.
//! - [`Action::ReleaseName`] (cluster mode): release the name in the
//!   cluster's store, after every claim asked for before it.
//! - The rest of the cluster's work ([`Action::EnterRoom`],
//!   [`Action::RelayDirect`] and [`Action::RelayDmKey`] owe the
//!   connection its reply, as a claim does; the others owe nothing):
//!   carried out in the order given, a room's work after every entry of
//!   that room asked for before it, and relays to one node in order.
//!
//! A hub made with [`Hub::new`] is a whole server and never asks for a
//! claim or a release; one made with [`Hub::clustered`] is one node of a
//! cluster (`claims.rs` says how its names work).
//!
//! **Time.** After every call, ask [`Hub::poll_timeout`] for the next
//! deadline, and call [`Hub::handle_timeout`] once it has passed. A driver
//! may pass any `now` that never goes back. The hub's timers are the idle
//! and handshake cutoffs, the file transfers' timeouts, and the secure
//! rooms' key rotations (a retry after a failed wrap, a key's end of life).
//!
//! **Promises to the client.** Every request gets exactly one `9a`
//! response, a success (`9a 00`) is only ever a response, and a legacy
//! connection never gets a frame of the secure extension: the rules of
//! PROTOCOL.md §2, as `parlor_proto::rules` states them. The random-session
//! property test and the session fuzz body (`fuzzing.rs`, behind the
//! `fuzzing` feature) check them after every event.
//!
//! **State invariants**, checked by [`Hub::check_invariants`]: names are
//! unique, rooms are never empty, every room member is a connected user who
//! knows it is in that room, every member of a secure room is secure, and
//! every secure room has either a rotation in flight (exactly when it says
//! so) or one entry in the rotation timers, never both.
//!
//! The secure extension (registered keys, key rotation, DM keys) lives in
//! `secure.rs`, file transfer in `transfer.rs` and `files.rs` (and, across
//! the nodes of a cluster, `stand_ins.rs`); this file
//! calls into them where a legacy request has a secure side.

#![warn(missing_docs)]

mod action;
mod claims;
mod directory;
mod files;
#[cfg(any(fuzzing, feature = "fuzzing"))]
pub mod fuzzing;
#[cfg(any(test, fuzzing, feature = "fuzzing"))]
pub mod harness;
mod idle;
mod invariants;
mod legacy;
mod limits;
mod nodes;
mod rate;
mod secure;
mod stand_ins;
mod stats;
pub mod transfer;

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tracing::{info, warn};
use zeroize::Zeroizing;

use parlor_proto::legacy::encode_response;
use parlor_proto::printable::Printable;
use parlor_proto::secure::CHANNEL_BINDING_LEN;
use parlor_proto::text;
use parlor_proto::{ClientMessage, FrameCodec, Status};

pub use action::{Action, CloseReason, PasswordJob, PasswordOutcome, PasswordTask};
pub use claims::{ClaimOutcome, NameClaim, NameRequest};
use claims::{NamePurpose, PendingName};
use directory::{Directory, Room};
use idle::IdleTimers;
pub use limits::Limits;
pub use nodes::{
    CommitOutcome, DirectOutcome, DirectRelay, DmKeyAnswer, DmKeyRelay, EntryOutcome, EntryTerms,
    EpochCommit, MemberFrames, MemberRename, NodeId, RelayTarget, RoomEntry, RoomRecord,
};
pub use rate::Rate;
use rate::SlidingWindow;
use secure::{Change, RegisteredIdentity, RoomTimers, WrapPurpose, WrappedRoomKey};
pub use secure::{KeyRecipient, KeyWrapJob, KeyWrapOutcome};
pub use stand_ins::{FileRelay, FileTarget, FileTargetAsk, UserFrame};
use stand_ins::{Routes, StandIns};
pub use stats::{Rejection, Relayed, Stats};
use transfer::Transfers;

/// Identifies one connection for its whole life; never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

#[derive(Debug)]
struct User {
    name: Bytes,
    room: Option<Bytes>,
    peer: SocketAddr,
    /// When the last complete frame arrived (at first: when it connected).
    last_heard: Instant,
    /// Whether any complete frame has arrived; until then the shorter
    /// handshake timeout applies.
    heard_frame: bool,
    /// Allocated by the first rate-limited request: an idle connection
    /// that only heartbeats never needs them.
    rates: Option<Box<RateWindows>>,
    /// Boxed because it is rare, and users are many.
    pending: Option<Box<Pending>>,
    /// The registered identity; `Some` makes the connection secure.
    identity: Option<Box<RegisteredIdentity>>,
    /// The TLS exporter value of the connection ([`Hub::channel_bound`]);
    /// `None` for a plain TCP connection.
    channel_binding: Option<[u8; CHANNEL_BINDING_LEN]>,
}

impl User {
    fn rates(&mut self) -> &mut RateWindows {
        self.rates.get_or_insert_with(Box::default)
    }
}

/// A user's rate-limit windows.
#[derive(Debug, Default)]
struct RateWindows {
    message: SlidingWindow,
    nick: SlidingWindow,
    password_join: SlidingWindow,
    /// DM keys issued naming this user as the target.
    dm_keys: SlidingWindow,
}

/// A request whose reply waits for work done off the event loop.
#[derive(Debug)]
enum Pending {
    Join(PendingJoin),
    /// A DM_KEY_REQUEST waiting for its key to be wrapped.
    DmKey,
    /// A guest name or a NICK waiting for the cluster's store.
    Name(PendingName),
    /// A JOIN waiting for the cluster's store to enter the room
    /// (`room_generation` is the incarnation judged; `None` to create it).
    Entry(PendingJoin),
    /// A DM, or a DM_KEY_REQUEST, waiting for the node of its target.
    Direct {
        ticket: u64,
    },
    /// A FILE_OFFER to a user of another node, waiting for that node to
    /// say whose key the user holds.
    FileTarget(Box<stand_ins::PendingOffer>),
}

impl Pending {
    /// The ticket the driver answers this wait with; every ticket is new
    /// ([`Hub::new_ticket`]), so it names the wait and its kind.
    fn ticket(&self) -> Option<u64> {
        match self {
            Pending::Join(PendingJoin { ticket, .. })
            | Pending::Entry(PendingJoin { ticket, .. })
            | Pending::Name(PendingName { ticket, .. })
            | Pending::Direct { ticket } => Some(*ticket),
            Pending::FileTarget(offer) => Some(offer.ticket),
            Pending::DmKey => None,
        }
    }
}

/// A JOIN waiting for its password to be hashed or checked.
#[derive(Debug)]
struct PendingJoin {
    ticket: u64,
    room: Bytes,
    password: Zeroizing<Vec<u8>>,
    /// The room being verified against; `None` when creating it.
    room_generation: Option<u64>,
}

/// The chat core. See the module documentation.
#[derive(Debug)]
pub struct Hub {
    limits: Limits,
    rate_limit_text: Bytes,
    nick_rate_limit_text: Bytes,
    password_join_rate_limit_text: Bytes,
    /// Boxed: a table's free slots then cost a pointer each rather than a
    /// whole user, which matters with 10,000 mostly idle connections.
    users: HashMap<ConnId, Box<User>>,
    connections_per_ip: HashMap<IpAddr, usize>,
    directory: Directory,
    idle: IdleTimers,
    next_guest_number: u64,
    next_ticket: u64,
    stats: Stats,
    /// Key wrap jobs in flight, by ticket.
    wraps: HashMap<u64, WrapPurpose>,
    /// The last DM key id handed out.
    last_key_id: u32,
    /// When each secure room that is not rotating must rotate.
    room_timers: RoomTimers,
    /// The hub's one source of randomness (room incarnations), seeded by
    /// the driver.
    rng: StdRng,
    /// File transfers in progress.
    transfers: Transfers,
    /// Cluster mode: room keys wrapped and waiting for their epoch to be
    /// committed ([`Action::CommitEpoch`]), by ticket.
    commits: HashMap<u64, WrappedRoomKey>,
    /// Cluster mode: users of other nodes in this node's file transfers.
    stand_ins: StandIns,
    /// Cluster mode: where the transfers offered to users here from other
    /// nodes run.
    routes: Routes,
    /// This node's id in its cluster ([`Hub::clustered`]); `None` for a
    /// whole server. Names are claimed through the driver when it is set.
    node: Option<NodeId>,
}

impl Hub {
    /// A hub enforcing `limits`. `rng_seed` seeds the one source of
    /// randomness the hub has (room incarnations, and file-transfer resume
    /// tokens from a seed of its own): the same seed and the same inputs
    /// give the same outputs.
    pub fn new(mut limits: Limits, rng_seed: [u8; 32]) -> Hub {
        // A handshake never gets longer than the idle timeout.
        limits.handshake_timeout = limits.handshake_timeout.min(limits.idle_timeout);
        let slow_down =
            |rate: Rate, what| Bytes::from(text::slow_down(rate.limit, what, rate.window));
        let mut rng = StdRng::from_seed(rng_seed);
        // Tokens come from a stream of their own, which the incarnations
        // that every member sees say nothing about.
        let mut transfer_seed = [0; 32];
        rng.fill_bytes(&mut transfer_seed);
        Hub {
            rate_limit_text: slow_down(limits.message_rate, "messages"),
            nick_rate_limit_text: slow_down(limits.nick_rate, "nick changes"),
            password_join_rate_limit_text: slow_down(
                limits.password_join_rate,
                "password attempts",
            ),
            users: HashMap::new(),
            connections_per_ip: HashMap::new(),
            directory: Directory::default(),
            idle: IdleTimers::default(),
            next_guest_number: 0,
            next_ticket: 0,
            stats: Stats::default(),
            wraps: HashMap::new(),
            last_key_id: 0,
            room_timers: RoomTimers::default(),
            rng,
            transfers: Transfers::new(limits.transfers.clone(), transfer_seed),
            commits: HashMap::new(),
            stand_ins: StandIns::default(),
            routes: Routes::default(),
            limits,
            node: None,
        }
    }

    /// A hub that is node `node` of a cluster: like [`Hub::new`], but every
    /// name it gives out is claimed through the driver, so that it is
    /// unique across the cluster (see [`NameClaim`]), and its rooms are
    /// the cluster's (`nodes.rs`).
    ///
    /// Its DM key ids count up from a random start rather than from 1:
    /// every node issues them, and a client may hold keys from two nodes
    /// for one peer, so two nodes' ids must seldom meet.
    pub fn clustered(limits: Limits, rng_seed: [u8; 32], node: NodeId) -> Hub {
        let mut hub = Hub::new(limits, rng_seed);
        hub.node = Some(node);
        hub.last_key_id = hub.rng.next_u32();
        // Transfer ids too: a user's node tells its own transfers from
        // those of other nodes by id.
        let first_transfer = hub.rng.next_u32();
        hub.transfers.start_ids_after(first_transfer);
        hub
    }

    /// What the hub has counted, and how many users, rooms and transfers
    /// it has now.
    pub fn stats(&self) -> Stats {
        Stats {
            connections: self.users.len(),
            rooms: self.directory.room_count(),
            file_transfers: self.transfers.len(),
            file_bytes: self.transfers.relayed_bytes(),
            ..self.stats
        }
    }

    /// A connection was accepted. It is named `randN` at once (in cluster
    /// mode, once the driver has claimed a guest name); the name is sent as
    /// the reply to its HELLO.
    pub fn connect(&mut self, conn: ConnId, peer: SocketAddr, now: Instant, out: &mut Vec<Action>) {
        let from_address = self.connections_per_ip.entry(peer.ip()).or_default();
        let refusal = if self.users.len() >= self.limits.max_connections {
            Some((
                CloseReason::ServerFull,
                Rejection::ServerFull,
                text::SERVER_FULL,
            ))
        } else if *from_address >= self.limits.max_connections_per_ip {
            Some((
                CloseReason::TooManyFromAddress,
                Rejection::PerIpLimit,
                text::TOO_MANY_FROM_ADDRESS,
            ))
        } else {
            None
        };
        if let Some((reason, rejection, reply)) = refusal {
            if *from_address == 0 {
                self.connections_per_ip.remove(&peer.ip());
            }
            warn!(%peer, %reason, "connection refused");
            self.stats.reject(rejection);
            respond(out, conn, Status::TryLater, reply);
            out.push(Action::Close { conn, reason });
            return;
        }
        *from_address += 1;
        let name = if self.in_cluster() {
            Bytes::new()
        } else {
            let name = self.fresh_guest_name(conn);
            info!(%peer, nick = %Printable(&name), %conn, "connected");
            name
        };
        self.users.insert(
            conn,
            Box::new(User {
                name,
                room: None,
                peer,
                last_heard: now,
                heard_frame: false,
                rates: None,
                pending: None,
                identity: None,
                channel_binding: None,
            }),
        );
        self.idle
            .schedule(conn, now + self.limits.handshake_timeout);
        if self.in_cluster() {
            self.claim_name(conn, NameRequest::Guest, NamePurpose::Guest, out);
        }
    }

    /// The connection runs over TLS, and `binding` is its channel binding:
    /// the exporter value of
    /// [`CHANNEL_BINDING_LABEL`](parlor_proto::secure::CHANNEL_BINDING_LABEL)
    /// that both ends of its TLS session compute. Call it once, right after
    /// [`Hub::connect`] and before the connection's first frame; a
    /// connection the hub refused, or has already closed, is ignored. A
    /// connection never told this is a plain TCP connection.
    ///
    /// The hub never sees TLS itself: the binding is how it knows a
    /// connection is encrypted, and what a client's proof of key
    /// possession must be made over, so that it is good for this one
    /// connection only.
    pub fn channel_bound(&mut self, conn: ConnId, binding: [u8; CHANNEL_BINDING_LEN]) {
        if let Some(user) = self.users.get_mut(&conn) {
            user.channel_binding = Some(binding);
        }
    }

    /// `rand0`, `rand1`, ...: numbers only go up, and a number whose name
    /// somebody took with NICK is skipped.
    fn fresh_guest_name(&mut self, conn: ConnId) -> Bytes {
        loop {
            let name = Bytes::from(format!("rand{}", self.next_guest_number));
            self.next_guest_number += 1;
            if self.directory.claim_name(&name, conn) {
                return name;
            }
        }
    }

    /// A whole message arrived from a connection.
    pub fn handle(
        &mut self,
        conn: ConnId,
        message: ClientMessage,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(user) = self.users.get_mut(&conn) else {
            return;
        };
        user.last_heard = now;
        user.heard_frame = true;
        if user.pending.is_some() && message.expects_response() {
            respond(out, conn, Status::TryLater, text::REQUEST_PENDING);
            return;
        }
        match message {
            ClientMessage::Hello { .. } => {
                let name = user.name.clone();
                out.push(send(
                    conn,
                    encode_response(Status::Ok as u8, std::iter::once(&name[..])),
                ));
            }
            ClientMessage::Heartbeat { .. } => {}
            ClientMessage::Nick { name } => self.nick(conn, &name, now, out),
            ClientMessage::SignedNick { name, name_proof } => {
                self.signed_nick(conn, &name, &name_proof, now, out)
            }
            ClientMessage::Join { room, password } => self.join(conn, &room, &password, now, out),
            ClientMessage::Leave => self.leave(conn, now, out),
            ClientMessage::ListUsers => self.list_users(conn, out),
            ClientMessage::ListRooms => self.list_rooms(conn, out),
            ClientMessage::DirectMessage { target, text } => {
                self.direct_message(conn, &target, &text, now, out)
            }
            ClientMessage::RoomMessage { room, text } => {
                self.room_message(conn, &room, &text, now, out)
            }
            ClientMessage::RegisterKey(registration) => self.register_key(conn, &registration, out),
            ClientMessage::DmKeyRequest { target } => self.dm_key_request(conn, &target, now, out),
            ClientMessage::File(request) => self.file_request(conn, request, now, out),
        }
    }

    /// Bytes arrived from a connection: decodes every whole frame in
    /// `buffer` and handles it, until the buffer holds no whole frame, the
    /// connection is closed, or a request needs a password job. In that last
    /// case the driver runs the job before calling again, so the
    /// connection's next requests wait behind the answer it is owed.
    ///
    /// This is the path from bytes to actions that the server and the
    /// fuzzer share.
    pub fn receive(
        &mut self,
        conn: ConnId,
        codec: &mut FrameCodec,
        buffer: &mut BytesMut,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        // A file's sender hears its transfer start before it sends chunks,
        // so checking once per read is enough; chat never pays for it. A
        // raised limit is lowered again once the transfer is over.
        if self.transfers.admits_chunks() || codec.max_chunk_payload() > codec.max_payload() {
            let normal = codec.max_payload();
            let limit = self.transfers.chunk_payload_limit(conn, now);
            codec.allow_chunks(limit.unwrap_or(normal));
        }
        while self.users.contains_key(&conn) {
            let already = out.len();
            match codec.decode(buffer) {
                Ok(Some(frame)) => match ClientMessage::parse(&frame) {
                    Ok(message) => self.handle(conn, message, now, out),
                    Err(err) => self.reject_malformed(conn, &err, now, out),
                },
                Ok(None) => return,
                Err(err) => {
                    // Frame boundaries are lost; nothing after this is read.
                    buffer.clear();
                    return self.reject_malformed(conn, &err, now, out);
                }
            }
            if out[already..].iter().any(Action::owes_reply) {
                return;
            }
        }
    }

    /// The connection sent bytes that are not a valid frame or message: tell
    /// it why, then close it.
    pub fn reject_malformed(
        &mut self,
        conn: ConnId,
        reason: &dyn fmt::Display,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if let Some(user) = self.users.get(&conn) {
            warn!(peer = %user.peer, nick = %Printable(&user.name), %reason, "malformed input");
        }
        self.stats.reject(Rejection::Malformed);
        respond(out, conn, Status::Error, text::malformed(reason));
        self.close(conn, CloseReason::Malformed, now, out);
    }

    /// The connection is gone (closed by the client, a socket error, its
    /// send queue overflowed, or shutdown). Idempotent. The actions are
    /// ROOM_REKEYING and a key rotation for the secure room it was in, and
    /// news of the file transfers it took part in.
    pub fn disconnect(
        &mut self,
        conn: ConnId,
        reason: CloseReason,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        self.forget(conn, reason, now, out);
    }

    /// The earliest time at which [`Hub::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.idle.next(),
            self.transfers.next_deadline(),
            self.room_timers.next(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Closes connections that have been silent for the idle timeout, or
    /// that have not completed a first frame within the handshake timeout,
    /// runs the file transfers' timers, and starts the room key rotations
    /// that are due.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<Action>) {
        while let Some(conn) = self.idle.pop_due(now) {
            let Some(user) = self.users.get(&conn) else {
                continue;
            };
            let (timeout, reason, rejection) = if user.heard_frame {
                let idle = self.limits.idle_timeout;
                (idle, CloseReason::IdleTimeout, Rejection::IdleTimeout)
            } else {
                let handshake = self.limits.handshake_timeout;
                (
                    handshake,
                    CloseReason::HandshakeTimeout,
                    Rejection::HandshakeTimeout,
                )
            };
            let deadline = user.last_heard + timeout;
            if deadline <= now {
                self.stats.reject(rejection);
                self.close(conn, reason, now, out);
            } else {
                self.idle.schedule(conn, deadline);
            }
        }
        self.with_transfers(out, |transfers, out| transfers.handle_timeout(now, out));
        self.rotate_due_rooms(now, out);
    }

    /// A [`PasswordJob`] finished at `now`.
    pub fn password_checked(
        &mut self,
        conn: ConnId,
        ticket: u64,
        outcome: PasswordOutcome,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(Pending::Join(pending)) = self.take_pending(conn, ticket) else {
            return;
        };
        if matches!(outcome, PasswordOutcome::Busy) {
            let user = &self.users[&conn];
            warn!(peer = %user.peer, nick = %Printable(&user.name), "password queue full");
        }
        let version_now = self.room_terms(&pending.room).map(|terms| terms.version);
        match outcome {
            PasswordOutcome::Busy => {
                respond(out, conn, Status::TryLater, text::PASSWORDS_BUSY);
            }
            PasswordOutcome::Failed => respond(out, conn, Status::Error, text::PASSWORD_FAILED),
            // The room filled up while the hash ran: judge again, which
            // refuses with the capacity text.
            PasswordOutcome::Verified(true) | PasswordOutcome::Hashed(_)
                if self.room_capacity_refusal(&pending.room).is_some() =>
            {
                self.attempt_join(conn, pending.room, pending.password, now, false, out)
            }
            PasswordOutcome::Verified(matches) if version_now == pending.room_generation => {
                match (matches, version_now) {
                    (true, Some(version)) => {
                        let PendingJoin { room, password, .. } = pending;
                        self.enter_room(conn, room, password, version, now, out)
                    }
                    _ => self.wrong_password(conn, &pending.room, out),
                }
            }
            PasswordOutcome::Hashed(phc) if version_now.is_none() => {
                let PendingJoin { room, password, .. } = pending;
                self.found_room(conn, room, password, Some(phc), now, out);
            }
            // The room was created, deleted or recreated while the hash ran:
            // judge the join again against the room as it is now.
            PasswordOutcome::Verified(_) | PasswordOutcome::Hashed(_) => {
                self.attempt_join(conn, pending.room, pending.password, now, false, out)
            }
        }
    }

    /// Forgets the user and asks the driver to flush and close.
    fn close(&mut self, conn: ConnId, reason: CloseReason, now: Instant, out: &mut Vec<Action>) {
        if self.forget(conn, reason, now, out) {
            out.push(Action::Close { conn, reason });
        }
    }

    /// Removes every trace of the user, its key included, and rotates the
    /// key of the secure room it was in (telling those who stay first).
    /// Returns whether it was known.
    fn forget(
        &mut self,
        conn: ConnId,
        reason: CloseReason,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> bool {
        let left = self.leave_room(conn, out);
        let Some(user) = self.users.remove(&conn) else {
            return false;
        };
        self.with_transfers(out, |transfers, out| transfers.disconnected(conn, now, out));
        self.routes.forget(conn);
        if let Some(left) = left {
            self.membership_changed(&left, Change::Departure(conn), out);
        }
        self.release_name(&user.name, out);
        if let Some(count) = self.connections_per_ip.get_mut(&user.peer.ip()) {
            *count -= 1;
            if *count == 0 {
                self.connections_per_ip.remove(&user.peer.ip());
            }
        }
        if reason == CloseReason::SlowConsumer {
            self.stats.reject(Rejection::SlowConsumer);
        }
        let (peer, nick) = (user.peer, Printable(&user.name));
        match reason {
            CloseReason::ClientClosed | CloseReason::LeftServer | CloseReason::Shutdown => {
                info!(%peer, %nick, %conn, %reason, "disconnected")
            }
            _ => warn!(%peer, %nick, %conn, %reason, "disconnected"),
        }
        true
    }

    /// The user's current name.
    pub fn name_of(&self, conn: ConnId) -> Option<&[u8]> {
        self.users.get(&conn).map(|user| &user.name[..])
    }

    /// The user's current room.
    pub fn room_of(&self, conn: ConnId) -> Option<&[u8]> {
        self.users.get(&conn)?.room.as_deref()
    }

    /// Whether the connection registered a key (speaks the secure extension).
    pub fn is_secure(&self, conn: ConnId) -> bool {
        self.users
            .get(&conn)
            .is_some_and(|user| user.identity.is_some())
    }

    /// The connection's channel binding, given by [`Hub::channel_bound`];
    /// `None` for a plain connection (or one the hub does not know).
    pub fn channel_binding(&self, conn: ConnId) -> Option<&[u8; CHANNEL_BINDING_LEN]> {
        self.users.get(&conn)?.channel_binding.as_ref()
    }

    /// Whether the connection is known to the hub.
    pub fn is_connected(&self, conn: ConnId) -> bool {
        self.users.contains_key(&conn)
    }

    /// How many bytes of file chunks the connection's send queue may hold
    /// beyond `send_queue_bytes`; see [`Transfers::queue_allowance`].
    pub fn queue_allowance(&self, conn: ConnId) -> usize {
        self.transfers.queue_allowance(conn)
    }
}

/// Checks a nick or room name: non-empty, no ASCII whitespace or control
/// bytes (the legacy client cannot send them, and they would garble lists).
fn check_name(name: &[u8], empty: &'static str, invalid: &'static str) -> Result<(), &'static str> {
    if name.is_empty() {
        Err(empty)
    } else if name.iter().any(|&b| b <= b' ' || b == 0x7f) {
        Err(invalid)
    } else {
        Ok(())
    }
}

fn send(to: ConnId, frame: Bytes) -> Action {
    Action::Send { to, frame }
}

fn respond(out: &mut Vec<Action>, conn: ConnId, status: Status, text: impl AsRef<[u8]>) {
    let frame = encode_response(status as u8, std::iter::once(text.as_ref()));
    out.push(send(conn, frame));
}

/// Answers with a text that names something, given as its parts (see
/// [`text`]).
fn respond_naming(out: &mut Vec<Action>, conn: ConnId, status: Status, parts: [&[u8]; 3]) {
    out.push(send(conn, encode_response(status as u8, parts.into_iter())));
}

#[cfg(test)]
mod tests;
