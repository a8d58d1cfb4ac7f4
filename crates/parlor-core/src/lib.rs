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
//! | [`Hub::receive`] | bytes arrived: it decodes every whole frame and handles it |
//! | [`Hub::handle`] | one message arrived, already decoded (tests, tools) |
//! | [`Hub::disconnect`] | the connection ended on its side, or the driver cut it off |
//! | [`Hub::handle_timeout`] | the time from [`Hub::poll_timeout`] has come |
//! | [`Hub::password_checked`] | a [`PasswordJob`] finished |
//! | [`Hub::keys_wrapped`] | a [`KeyWrapJob`] finished |
//!
//! **Outputs**, which the driver must carry out in the order given:
//!
//! - [`Action::Send`] and [`Action::Broadcast`]: queue the frame for the
//!   connection, or for every member listed but the sender. The member list
//!   is the room's at that moment; a later join does not receive it.
//! - [`Action::Close`]: flush what is queued for the connection, then close
//!   it. The hub has already forgotten the user, so a later
//!   [`Hub::disconnect`] for it does nothing.
//! - [`Action::Password`] and a [`Action::WrapKeys`] with a requester
//!   ([`Action::owes_reply`]): the connection's reply is owed. Run the job
//!   off the event loop and **read nothing more from that connection** until
//!   its outcome has been reported; its next requests wait behind the
//!   answer. One call owes at most one job, always for the calling
//!   connection; a driver that ever sees two must treat it as a bug, not
//!   keep one.
//! - A [`Action::WrapKeys`] without a requester is a room key rotation: run
//!   it and report it whenever it is done; nobody waits for it.
//!
//! **Time.** After every call, ask [`Hub::poll_timeout`] for the next
//! deadline, and call [`Hub::handle_timeout`] once it has passed. A driver
//! may pass any `now` that never goes back.
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
//! every secure room has a rotation in flight exactly when it says so.
//!
//! The secure extension (registered keys, key rotation, DM keys) lives in
//! `secure.rs`, file transfer in `transfer.rs` and `files.rs`; this file
//! calls into them where a legacy request has a secure side.

mod directory;
mod files;
#[cfg(any(fuzzing, feature = "fuzzing"))]
pub mod fuzzing;
#[cfg(any(test, fuzzing, feature = "fuzzing"))]
pub mod harness;
mod idle;
mod limits;
mod rate;
mod secure;
mod stats;
pub mod transfer;

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tracing::{info, warn};
use zeroize::Zeroizing;

use parlor_proto::legacy::{
    encode_direct_message, encode_name_list, encode_response, encode_room_message, OK_RESPONSE,
};
use parlor_proto::printable::Printable;
use parlor_proto::{ClientMessage, FrameCodec, SecureMessage, Status};

pub use directory::{Directory, Room};
pub use idle::IdleTimers;
pub use limits::Limits;
pub use rate::{Rate, SlidingWindow};
pub use secure::{KeyUse, KeyWrapJob, KeyWrapOutcome, Recipient, RoomKeys};
use secure::{PeerKey, WrapPurpose};
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

/// Error and status texts sent after `9a 01` / `9a 02`.
pub mod text {
    pub const NICK_TAKEN: &str = "This nick has been nicked by someone else.";
    pub const NICK_EMPTY: &str = "Nick must not be empty.";
    pub const NICK_INVALID: &str = "Nick must not contain spaces or control characters.";
    pub const ROOM_EMPTY: &str = "Room name must not be empty.";
    pub const ROOM_INVALID: &str = "Room name must not contain spaces or control characters.";
    pub const WRONG_PASSWORD: &str = "Invalid password. I'm afraid I can't let you do that.";
    pub const VOID: &str = "You shout into the void and hear nothing.";
    pub const NICK_NOT_PRESENT: &str = "Nick not present";
    pub const SERVER_FULL: &str = "Server full, try again later.";
    pub const TOO_MANY_FROM_ADDRESS: &str =
        "Too many connections from your address, try again later.";
    pub const TOO_MANY_ROOMS: &str = "The server has too many rooms, try again later.";
    pub const PASSWORDS_BUSY: &str = "Server busy checking passwords, try again later.";
    pub const PASSWORD_FAILED: &str = "Internal error while checking the password.";
    pub const REQUEST_PENDING: &str = "Previous request still in progress.";
    pub const BAD_PUBLIC_KEY: &str =
        "Public key must be an RSA SubjectPublicKeyInfo (DER) of 2048 to 4096 bits.";
    pub const KEY_ALREADY_REGISTERED: &str = "A key is already registered on this connection.";
    pub const REGISTER_KEY_FIRST: &str = "Register a key (81) first.";
    pub const DM_KEY_WITH_YOURSELF: &str = "You cannot open an encrypted DM with yourself.";
    pub const KEYS_BUSY: &str = "Server busy issuing keys, try again later.";
    pub const KEY_WRAP_FAILED: &str = "Internal error while issuing keys.";
    pub const FILE_TO_YOURSELF: &str = "You cannot send a file to yourself.";
    pub const FILE_NOT_SEALED: &str =
        "Files in an end-to-end encrypted room must be sealed with the room key.";
}

/// What the hub asks its driver to do.
#[derive(Debug)]
pub enum Action {
    /// Queue encoded frames for a connection: usually one frame; a secure
    /// JOIN's reply is several frames in one buffer. A notice for several
    /// connections (a peer's key, a file chunk) is encoded once, and the
    /// same `Bytes` goes in each of their `Send`s.
    Send { to: ConnId, frame: Bytes },
    /// Queue one frame for every connection in `to` except `except`: a room
    /// message, encoded once, for the members of the moment.
    Broadcast {
        to: Arc<Vec<ConnId>>,
        except: ConnId,
        frame: Bytes,
    },
    /// Flush what is queued for the connection, then close it. The hub has
    /// already forgotten the user.
    Close { conn: ConnId, reason: CloseReason },
    /// Run an argon2id computation off the event loop and report back with
    /// [`Hub::password_checked`]. Until then the connection's reply is owed,
    /// so the driver reads no further requests from it.
    Password(PasswordJob),
    /// Generate a key and wrap it for each recipient off the event loop,
    /// then report back with [`Hub::keys_wrapped`]. A job with a requester
    /// owes that connection its reply, as a password job does.
    WrapKeys(KeyWrapJob),
}

impl Action {
    /// The frames this action queues, as (recipient, frame), in order.
    pub fn frames(&self) -> impl Iterator<Item = (ConnId, &Bytes)> {
        let (one, many) = match self {
            Action::Send { to, frame } => (Some((*to, frame)), None),
            Action::Broadcast { to, except, frame } => {
                let others = to.iter().filter(move |member| *member != except);
                (None, Some(others.map(move |member| (*member, frame))))
            }
            _ => (None, None),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    /// Whether this is work that the calling connection's reply waits for:
    /// the driver reads no further request from it until the work is done.
    pub fn owes_reply(&self) -> bool {
        match self {
            Action::Password(_) => true,
            Action::WrapKeys(job) => job.requester.is_some(),
            Action::Send { .. } | Action::Broadcast { .. } | Action::Close { .. } => false,
        }
    }
}

/// Why a connection ended; shown in logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed the connection.
    ClientClosed,
    /// LEAVE while in no room: the client expects the server to hang up.
    LeftServer,
    /// The client sent something that is not a valid frame or message.
    Malformed,
    /// Nothing heard from the client within the idle timeout.
    IdleTimeout,
    /// The client did not read fast enough and its send queue overflowed.
    SlowConsumer,
    /// The connection limit was reached.
    ServerFull,
    /// The per-address connection limit was reached.
    TooManyFromAddress,
    /// No complete frame within the handshake timeout.
    HandshakeTimeout,
    /// The server is shutting down.
    Shutdown,
    /// Reading from or writing to the socket failed.
    IoError,
    /// The driver found the hub breaking its own contract (a bug); logged.
    Internal,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CloseReason::ClientClosed => "client closed the connection",
            CloseReason::LeftServer => "left the server",
            CloseReason::Malformed => "malformed input",
            CloseReason::IdleTimeout => "idle timeout",
            CloseReason::SlowConsumer => "send queue overflow (slow consumer)",
            CloseReason::ServerFull => "connection limit reached",
            CloseReason::TooManyFromAddress => "per-address connection limit reached",
            CloseReason::HandshakeTimeout => "no complete frame within the handshake timeout",
            CloseReason::Shutdown => "server shutdown",
            CloseReason::IoError => "socket error",
            CloseReason::Internal => "internal error",
        })
    }
}

/// An argon2id computation the hub needs done.
#[derive(Debug)]
pub struct PasswordJob {
    pub conn: ConnId,
    /// Echoed back in [`Hub::password_checked`] so a late answer for an old
    /// request is recognised and dropped.
    pub ticket: u64,
    pub task: PasswordTask,
}

#[derive(Debug)]
pub enum PasswordTask {
    /// Hash a new room's password into a PHC string with a fresh salt.
    Hash { password: Zeroizing<Vec<u8>> },
    /// Check a password against a room's PHC string, in constant time.
    Verify {
        password: Zeroizing<Vec<u8>>,
        phc: Arc<str>,
    },
}

/// The result of a [`PasswordJob`].
#[derive(Debug)]
pub enum PasswordOutcome {
    Hashed(Arc<str>),
    Verified(bool),
    /// The hashing queue was full; the client is told to try later.
    Busy,
    /// Hashing failed (a bug or a corrupt hash); logged by the driver.
    Failed,
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
    /// The registered RSA key; `Some` makes the connection secure.
    key: Option<Box<PeerKey>>,
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
}

/// A request whose reply waits for work done off the event loop.
#[derive(Debug)]
enum Pending {
    Join(PendingJoin),
    /// A DM_KEY_REQUEST waiting for its key to be wrapped.
    DmKey,
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
    /// File transfers in progress.
    transfers: Transfers,
}

impl Hub {
    /// A hub enforcing `limits`. `rng_seed` seeds the one source of
    /// randomness the hub has (file-transfer resume tokens): the same seed
    /// and the same inputs give the same outputs.
    pub fn new(mut limits: Limits, rng_seed: [u8; 32]) -> Hub {
        // A handshake never gets longer than the idle timeout.
        limits.handshake_timeout = limits.handshake_timeout.min(limits.idle_timeout);
        let slow_down = |rate: Rate, what| {
            let (limit, secs) = (rate.limit, rate.window.as_secs_f64());
            Bytes::from(format!(
                "Slow down: at most {limit} {what} per {secs} seconds."
            ))
        };
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
            transfers: Transfers::new(limits.transfers.clone(), rng_seed),
            limits,
        }
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

    /// A connection was accepted. It is named `randN` at once; the name is
    /// sent as the reply to its HELLO.
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
        let name = self.fresh_guest_name(conn);
        info!(%peer, nick = %Printable(&name), %conn, "connected");
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
                key: None,
            }),
        );
        self.idle
            .schedule(conn, now + self.limits.handshake_timeout);
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
            ClientMessage::RegisterKey { key } => self.register_key(conn, &key, out),
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
        let reply = format!("Malformed frame: {reason}.");
        respond(out, conn, Status::Error, reply);
        self.close(conn, CloseReason::Malformed, now, out);
    }

    /// The connection is gone (closed by the client, a socket error, its
    /// send queue overflowed, or shutdown). Idempotent. The actions are key
    /// rotations for the secure room it was in, and news of the file
    /// transfers it took part in.
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
        match (self.idle.next(), self.transfers.next_deadline()) {
            (Some(idle), Some(transfer)) => Some(idle.min(transfer)),
            (idle, transfer) => idle.or(transfer),
        }
    }

    /// Closes connections that have been silent for the idle timeout, or
    /// that have not completed a first frame within the handshake timeout,
    /// and runs the file transfers' timers.
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
        self.transfers.handle_timeout(now, out);
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
        let Some(user) = self.users.get_mut(&conn) else {
            return;
        };
        let Some(Pending::Join(pending)) = user
            .pending
            .take_if(
                |pending| matches!(pending.as_ref(), Pending::Join(join) if join.ticket == ticket),
            )
            .map(|pending| *pending)
        else {
            return;
        };
        let room_now = self.directory.room(&pending.room);
        match outcome {
            PasswordOutcome::Busy => {
                warn!(peer = %user.peer, nick = %Printable(&user.name), "password queue full");
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
            PasswordOutcome::Verified(matches)
                if room_now.map(Room::generation) == pending.room_generation =>
            {
                if matches {
                    self.admit(conn, pending.room, false, now, out);
                } else {
                    self.wrong_password(conn, &pending.room, out);
                }
            }
            PasswordOutcome::Hashed(phc) if room_now.is_none() => {
                self.create_room(conn, pending.room.clone(), Some(phc));
                self.admit(conn, pending.room, true, now, out);
            }
            // The room was created, deleted or recreated while the hash ran:
            // judge the join again against the room as it is now.
            PasswordOutcome::Verified(_) | PasswordOutcome::Hashed(_) => {
                self.attempt_join(conn, pending.room, pending.password, now, false, out)
            }
        }
    }

    fn nick(&mut self, conn: ConnId, name: &[u8], now: Instant, out: &mut Vec<Action>) {
        if let Err(problem) = check_name(name, text::NICK_EMPTY, text::NICK_INVALID) {
            return respond(out, conn, Status::Error, problem);
        }
        let user = self.users.get_mut(&conn).expect("caller checked");
        let renamed = user.name != name;
        if renamed {
            // Every attempt counts, taken names too: probing for free names
            // is as cheap for a spammer as changing.
            if !user.rates().nick.try_acquire(now, self.limits.nick_rate) {
                warn!(peer = %user.peer, nick = %Printable(&user.name), "nick rate limit hit");
                self.stats.reject(Rejection::NickRateLimited);
                return respond(out, conn, Status::TryLater, &self.nick_rate_limit_text);
            }
            let name = Bytes::copy_from_slice(name);
            if !self.directory.claim_name(&name, conn) {
                return respond(out, conn, Status::Error, text::NICK_TAKEN);
            }
            self.directory.release_name(&user.name);
            info!(peer = %user.peer, old = %Printable(&user.name), new = %Printable(&name), "nick changed");
            user.name = name;
        }
        if user.key.is_some() {
            let confirmation = SecureMessage::NickSet {
                name: user.name.clone(),
            };
            out.push(send(conn, confirmation.encode()));
        }
        out.push(send(conn, OK_RESPONSE));
        if renamed {
            self.announce_key(conn, out);
        }
    }

    fn join(
        &mut self,
        conn: ConnId,
        room: &[u8],
        password: &[u8],
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if let Err(problem) = check_name(room, text::ROOM_EMPTY, text::ROOM_INVALID) {
            return respond(out, conn, Status::Error, problem);
        }
        let user = &self.users[&conn];
        if user.room.as_deref() == Some(room) {
            let reply = [b"You are already in room '", room, b"'."];
            return out.push(send(
                conn,
                encode_response(Status::Error as u8, reply.into_iter()),
            ));
        }
        let password = Zeroizing::new(password.to_vec());
        self.attempt_join(conn, Bytes::copy_from_slice(room), password, now, true, out);
    }

    /// Joins, creates, or starts the password work a join needs. A hash
    /// counts against the password-join rate limit when `charge` is set
    /// (not when a join is judged again after the room changed under it).
    fn attempt_join(
        &mut self,
        conn: ConnId,
        room: Bytes,
        password: Zeroizing<Vec<u8>>,
        now: Instant,
        charge: bool,
        out: &mut Vec<Action>,
    ) {
        if let Some(refusal) = self.room_capacity_refusal(&room) {
            self.stats.reject(Rejection::RoomLimit);
            return respond(out, conn, Status::TryLater, refusal);
        }
        let (task, room_generation) = match self.directory.room(&room) {
            // Before any password work: a legacy client could never enter.
            Some(existing) if existing.is_secure() && !self.is_secure(conn) => {
                let reply = [
                    b"Room '",
                    &room[..],
                    b"' is end-to-end encrypted; your client cannot join it.",
                ];
                return out.push(send(
                    conn,
                    encode_response(Status::Error as u8, reply.into_iter()),
                ));
            }
            Some(existing) => match existing.password_hash() {
                // An empty password never matches a set one, and a room
                // without a password only takes an empty one: no hash needed.
                None if password.is_empty() => return self.admit(conn, room, false, now, out),
                Some(phc) if !password.is_empty() => (
                    PasswordTask::Verify {
                        password: password.clone(),
                        phc: phc.clone(),
                    },
                    Some(existing.generation()),
                ),
                _ => return self.wrong_password(conn, &room, out),
            },
            None if password.is_empty() => {
                self.create_room(conn, room.clone(), None);
                return self.admit(conn, room, true, now, out);
            }
            None => (
                PasswordTask::Hash {
                    password: password.clone(),
                },
                None,
            ),
        };
        let ticket = self.new_ticket();
        let user = self.users.get_mut(&conn).expect("caller checked");
        if charge
            && !user
                .rates()
                .password_join
                .try_acquire(now, self.limits.password_join_rate)
        {
            warn!(peer = %user.peer, nick = %Printable(&user.name), "password join rate limit hit");
            self.stats.reject(Rejection::PasswordRateLimited);
            return respond(
                out,
                conn,
                Status::TryLater,
                &self.password_join_rate_limit_text,
            );
        }
        user.pending = Some(Box::new(Pending::Join(PendingJoin {
            ticket,
            room,
            password,
            room_generation,
        })));
        out.push(Action::Password(PasswordJob { conn, ticket, task }));
    }

    /// Why joining `room` would break a capacity limit, if it would.
    fn room_capacity_refusal(&self, room: &[u8]) -> Option<Vec<u8>> {
        match self.directory.room(room) {
            Some(existing) if existing.members().len() >= self.limits.max_room_members => {
                Some([b"Room '", room, b"' is full, try again later."].concat())
            }
            None if self.directory.room_count() >= self.limits.max_rooms => {
                Some(text::TOO_MANY_ROOMS.as_bytes().to_vec())
            }
            _ => None,
        }
    }

    fn wrong_password(&mut self, conn: ConnId, room: &[u8], out: &mut Vec<Action>) {
        let user = &self.users[&conn];
        self.stats.reject(Rejection::WrongPassword);
        warn!(peer = %user.peer, nick = %Printable(&user.name), room = %Printable(room), "wrong room password");
        respond(out, conn, Status::Error, text::WRONG_PASSWORD);
    }

    fn new_ticket(&mut self) -> u64 {
        self.next_ticket += 1;
        self.next_ticket
    }

    /// Creates a room, secure when its creator is.
    fn create_room(&mut self, conn: ConnId, room: Bytes, password: Option<Arc<str>>) {
        let user = &self.users[&conn];
        let secure = user.key.is_some();
        info!(peer = %user.peer, nick = %Printable(&user.name), room = %Printable(&room),
              protected = password.is_some(), secure, "room created");
        self.directory.create_room(room, password, secure);
    }

    /// Moves the user into `room` (which exists) and answers its JOIN. A
    /// secure joiner first gets the confirmation and, in a secure room, every
    /// other member's key; `9a 00` comes last, in the same buffer. Then the
    /// other members get the joiner's key, and the keys of the room left and
    /// the room entered rotate.
    fn admit(
        &mut self,
        conn: ConnId,
        room: Bytes,
        created: bool,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        // The legacy client sends no LEAVE before a JOIN.
        let left = self.leave_room(conn);
        if let Some(left) = &left {
            self.transfers.left_room(conn, left, now, out);
        }
        self.directory.add_member(&room, conn);
        self.users.get_mut(&conn).expect("caller checked").room = Some(room.clone());
        let mut reply = BytesMut::new();
        self.join_notices(conn, &room, created, &mut reply);
        if reply.is_empty() {
            out.push(send(conn, OK_RESPONSE));
        } else {
            reply.extend_from_slice(&OK_RESPONSE);
            out.push(send(conn, reply.freeze()));
        }
        self.announce_key(conn, out);
        if let Some(left) = left {
            self.membership_changed(&left, out);
        }
        self.membership_changed(&room, out);
    }

    /// Takes the user out of its room, if any, and returns that room. The
    /// caller rotates the room's key.
    fn leave_room(&mut self, conn: ConnId) -> Option<Bytes> {
        let user = self.users.get_mut(&conn)?;
        let room = user.room.take()?;
        if self.directory.remove_member(&room, conn) {
            info!(peer = %user.peer, nick = %Printable(&user.name), room = %Printable(&room), "room deleted");
        }
        Some(room)
    }

    fn leave(&mut self, conn: ConnId, now: Instant, out: &mut Vec<Action>) {
        let Some(room) = self.leave_room(conn) else {
            out.push(send(conn, OK_RESPONSE));
            return self.close(conn, CloseReason::LeftServer, now, out);
        };
        self.transfers.left_room(conn, &room, now, out);
        if self.is_secure(conn) {
            let confirmation = SecureMessage::RoomLeft { room: room.clone() };
            out.push(send(conn, confirmation.encode()));
        }
        out.push(send(conn, OK_RESPONSE));
        self.membership_changed(&room, out);
    }

    fn list_users(&self, conn: ConnId, out: &mut Vec<Action>) {
        let mut names: Vec<&[u8]> = match &self.users[&conn].room {
            Some(room) => self.directory.room(room).map_or_else(Vec::new, |room| {
                room.members()
                    .iter()
                    .map(|member| &self.users[member].name[..])
                    .collect()
            }),
            None => self
                .directory
                .user_names()
                .map(|(name, _)| &name[..])
                .collect(),
        };
        names.sort_unstable();
        out.push(send(conn, encode_name_list(names.into_iter())));
    }

    fn list_rooms(&self, conn: ConnId, out: &mut Vec<Action>) {
        let mut rooms: Vec<&[u8]> = self.directory.room_names().map(|room| &room[..]).collect();
        rooms.sort_unstable();
        out.push(send(conn, encode_name_list(rooms.into_iter())));
    }

    /// Counts a room or direct message against the sender's rate limit
    /// (failed ones too); `false` means it was refused and answered.
    fn admit_message(&mut self, conn: ConnId, now: Instant, out: &mut Vec<Action>) -> bool {
        let user = self.users.get_mut(&conn).expect("caller checked");
        if user
            .rates()
            .message
            .try_acquire(now, self.limits.message_rate)
        {
            return true;
        }
        warn!(peer = %user.peer, nick = %Printable(&user.name), "rate limit hit");
        self.stats.reject(Rejection::RateLimited);
        out.push(send(
            conn,
            encode_response(
                Status::TryLater as u8,
                std::iter::once(&self.rate_limit_text[..]),
            ),
        ));
        false
    }

    fn room_message(
        &mut self,
        conn: ConnId,
        room: &[u8],
        text: &[u8],
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if !self.admit_message(conn, now, out) {
            return;
        }
        let user = &self.users[&conn];
        let Some(current) = &user.room else {
            return respond(out, conn, Status::Error, text::VOID);
        };
        if current != room {
            let reply = [b"You are not in room '", room, b"'."];
            return out.push(send(
                conn,
                encode_response(Status::Error as u8, reply.into_iter()),
            ));
        }
        out.push(send(conn, OK_RESPONSE));
        let frame = encode_room_message(current, &user.name, text);
        let Some(room) = self.directory.room(current) else {
            return;
        };
        self.stats
            .relayed(Relayed::Room, room.members().len().saturating_sub(1));
        out.push(Action::Broadcast {
            to: room.members_now(),
            except: conn,
            frame,
        });
    }

    fn direct_message(
        &mut self,
        conn: ConnId,
        target: &[u8],
        text: &[u8],
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if !self.admit_message(conn, now, out) {
            return;
        }
        let Some(recipient) = self.directory.find_user(target) else {
            return self.no_such_user(conn, target, out);
        };
        out.push(send(conn, OK_RESPONSE));
        let sender = &self.users[&conn].name;
        out.push(send(recipient, encode_direct_message(sender, text)));
        self.stats.relayed(Relayed::Direct, 1);
    }

    /// Forgets the user and asks the driver to flush and close.
    fn close(&mut self, conn: ConnId, reason: CloseReason, now: Instant, out: &mut Vec<Action>) {
        if self.forget(conn, reason, now, out) {
            out.push(Action::Close { conn, reason });
        }
    }

    /// Removes every trace of the user, its key included, and rotates the
    /// key of the secure room it was in. Returns whether it was known.
    fn forget(
        &mut self,
        conn: ConnId,
        reason: CloseReason,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> bool {
        let left = self.leave_room(conn);
        let Some(user) = self.users.remove(&conn) else {
            return false;
        };
        self.transfers.disconnected(conn, now, out);
        if let Some(left) = left {
            self.membership_changed(&left, out);
        }
        self.directory.release_name(&user.name);
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
        self.users.get(&conn).is_some_and(|user| user.key.is_some())
    }

    /// Whether the connection is known to the hub.
    pub fn is_connected(&self, conn: ConnId) -> bool {
        self.users.contains_key(&conn)
    }

    /// Checks the hub's internal consistency; used by tests and fuzzing.
    pub fn check_invariants(&self) -> Result<(), String> {
        for (name, conn) in self.directory.user_names() {
            match self.users.get(&conn) {
                Some(user) if user.name == name => {}
                _ => {
                    return Err(format!(
                        "name {} held by unknown or renamed {conn}",
                        Printable(name)
                    ))
                }
            }
        }
        for (conn, user) in &self.users {
            if self.directory.find_user(&user.name) != Some(*conn) {
                return Err(format!(
                    "{conn} does not hold its name {}",
                    Printable(&user.name)
                ));
            }
            if let Some(room) = &user.room {
                let members = self.directory.room(room).map_or(&[][..], Room::members);
                if members.iter().filter(|member| *member == conn).count() != 1 {
                    return Err(format!("{conn} is not exactly once in its room"));
                }
            }
        }
        for (name, room) in self.directory.rooms() {
            if room.members().is_empty() {
                return Err(format!("room {} is empty", Printable(name)));
            }
            for member in room.members() {
                let in_room = self.users.get(member).and_then(|user| user.room.as_ref());
                if in_room != Some(name) {
                    return Err(format!(
                        "{member} listed in room {} it is not in",
                        Printable(name)
                    ));
                }
            }
        }
        self.check_secure_invariants()?;
        self.transfers
            .check_invariants(|conn| self.users.contains_key(&conn))
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

#[cfg(test)]
mod tests;
