//! The sans-IO chat core: users, rooms, rate limits and idle timers.
//!
//! [`Hub`] owns no sockets and reads no clock. The server (or a test, or a
//! fuzzer) feeds it events — a connection opened, a message arrived, a
//! password check finished, time passed — each with the current time, and
//! it appends what should happen to a `Vec<Action>`: frames to send to
//! connections, connections to close, and password hashing to run off the
//! event loop. Because time is an argument, the idle cutoff and the rate
//! limit are tested exactly with a fake clock.
//!
//! Promises to the client: every request gets exactly one `9a` response and
//! a success (`9a 00`) is only ever a response (checked, with the invariants
//! below, by the [`session`](crate::fuzzing::session) fuzz body). State invariants, checked by [`Hub::check_invariants`]:
//! names are unique, rooms are never empty, and every room member is a
//! connected user who knows it is in that room.

mod directory;
pub mod harness;
mod idle;
mod rate;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio_util::codec::Decoder;
use tracing::{info, warn};
use zeroize::Zeroizing;

use crate::config::Config;
use crate::printable::Printable;
use crate::protocol::legacy::{
    encode_direct_message, encode_name_list, encode_response, encode_room_message, OK_RESPONSE,
};
use crate::protocol::{ClientMessage, FrameCodec, Status};

pub use directory::{Directory, Room};
pub use idle::IdleTimers;
pub use rate::SlidingWindow;

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
    pub const PASSWORDS_BUSY: &str = "Server busy checking passwords, try again later.";
    pub const PASSWORD_FAILED: &str = "Internal error while checking the password.";
    pub const REQUEST_PENDING: &str = "Previous request still in progress.";
}

/// What the hub asks its driver to do.
#[derive(Debug)]
pub enum Action {
    /// Queue an encoded frame for a connection. One room message is encoded
    /// once and the same `Bytes` is handed to every member.
    Send { to: ConnId, frame: Bytes },
    /// Flush what is queued for the connection, then close it. The hub has
    /// already forgotten the user.
    Close { conn: ConnId, reason: CloseReason },
    /// Run an argon2id computation off the event loop and report back with
    /// [`Hub::password_checked`]. Until then the connection's reply is owed,
    /// so the driver reads no further requests from it.
    Password(PasswordJob),
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
    /// The server is shutting down.
    Shutdown,
    /// Reading from or writing to the socket failed.
    IoError,
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
            CloseReason::Shutdown => "server shutdown",
            CloseReason::IoError => "socket error",
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

/// The limits the hub enforces.
#[derive(Clone, Debug)]
struct Limits {
    max_connections: usize,
    idle_timeout: Duration,
    rate_limit_messages: usize,
    rate_limit_window: Duration,
}

#[derive(Debug)]
struct User {
    name: Bytes,
    room: Option<Bytes>,
    peer: SocketAddr,
    last_heard: Instant,
    message_rate: SlidingWindow,
    pending_join: Option<PendingJoin>,
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
    users: HashMap<ConnId, User>,
    directory: Directory,
    idle: IdleTimers,
    next_guest_number: u64,
    next_ticket: u64,
}

impl Hub {
    pub fn new(config: &Config) -> Hub {
        let limits = Limits {
            max_connections: config.max_connections,
            idle_timeout: config.idle_timeout(),
            rate_limit_messages: config.rate_limit_messages,
            rate_limit_window: config.rate_limit_window(),
        };
        let rate_limit_text = Bytes::from(format!(
            "Slow down: at most {} messages per {} seconds.",
            limits.rate_limit_messages, config.rate_limit_window_secs
        ));
        Hub {
            limits,
            rate_limit_text,
            users: HashMap::new(),
            directory: Directory::default(),
            idle: IdleTimers::default(),
            next_guest_number: 0,
            next_ticket: 0,
        }
    }

    /// A connection was accepted. It is named `randN` at once; the name is
    /// sent as the reply to its HELLO.
    pub fn connect(&mut self, conn: ConnId, peer: SocketAddr, now: Instant, out: &mut Vec<Action>) {
        if self.users.len() >= self.limits.max_connections {
            warn!(%peer, limit = self.limits.max_connections, "connection refused: server full");
            respond(out, conn, Status::TryLater, text::SERVER_FULL);
            out.push(Action::Close {
                conn,
                reason: CloseReason::ServerFull,
            });
            return;
        }
        let name = self.fresh_guest_name(conn);
        info!(%peer, nick = %Printable(&name), %conn, "connected");
        self.users.insert(
            conn,
            User {
                name,
                room: None,
                peer,
                last_heard: now,
                message_rate: SlidingWindow::new(
                    self.limits.rate_limit_messages,
                    self.limits.rate_limit_window,
                ),
                pending_join: None,
            },
        );
        self.idle.schedule(conn, now + self.limits.idle_timeout);
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
        if user.pending_join.is_some() && message.expects_response() {
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
            ClientMessage::Nick { name } => self.nick(conn, &name, out),
            ClientMessage::Join { room, password } => self.join(conn, &room, &password, out),
            ClientMessage::Leave => self.leave(conn, out),
            ClientMessage::ListUsers => self.list_users(conn, out),
            ClientMessage::ListRooms => self.list_rooms(conn, out),
            ClientMessage::DirectMessage { target, text } => {
                self.direct_message(conn, &target, &text, now, out)
            }
            ClientMessage::RoomMessage { room, text } => {
                self.room_message(conn, &room, &text, now, out)
            }
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
        while self.users.contains_key(&conn) {
            let already = out.len();
            match codec.decode(buffer) {
                Ok(Some(frame)) => match ClientMessage::parse(&frame) {
                    Ok(message) => self.handle(conn, message, now, out),
                    Err(err) => self.reject_malformed(conn, &err, out),
                },
                Ok(None) => return,
                Err(err) => {
                    // Frame boundaries are lost; nothing after this is read.
                    buffer.clear();
                    return self.reject_malformed(conn, &err, out);
                }
            }
            if out[already..]
                .iter()
                .any(|action| matches!(action, Action::Password(_)))
            {
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
        out: &mut Vec<Action>,
    ) {
        if let Some(user) = self.users.get(&conn) {
            warn!(peer = %user.peer, nick = %Printable(&user.name), %reason, "malformed input");
        }
        let reply = format!("Malformed frame: {reason}.");
        respond(out, conn, Status::Error, reply);
        self.close(conn, CloseReason::Malformed, out);
    }

    /// The connection is gone (closed by the client, a socket error, or its
    /// send queue overflowed). Idempotent.
    pub fn disconnect(&mut self, conn: ConnId, reason: CloseReason) {
        self.forget(conn, reason);
    }

    /// The earliest time at which [`Hub::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.idle.next()
    }

    /// Closes connections that have been silent for the idle timeout.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<Action>) {
        while let Some(conn) = self.idle.pop_due(now) {
            let Some(user) = self.users.get(&conn) else {
                continue;
            };
            let deadline = user.last_heard + self.limits.idle_timeout;
            if deadline <= now {
                self.close(conn, CloseReason::IdleTimeout, out);
            } else {
                self.idle.schedule(conn, deadline);
            }
        }
    }

    /// A [`PasswordJob`] finished.
    pub fn password_checked(
        &mut self,
        conn: ConnId,
        ticket: u64,
        outcome: PasswordOutcome,
        out: &mut Vec<Action>,
    ) {
        let Some(user) = self.users.get_mut(&conn) else {
            return;
        };
        let Some(pending) = user
            .pending_join
            .take_if(|pending| pending.ticket == ticket)
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
            PasswordOutcome::Verified(matches)
                if room_now.map(Room::generation) == pending.room_generation =>
            {
                if matches {
                    self.enter_room(conn, pending.room);
                    out.push(send(conn, OK_RESPONSE));
                } else {
                    self.wrong_password(conn, &pending.room, out);
                }
            }
            PasswordOutcome::Hashed(phc) if room_now.is_none() => {
                self.create_room(conn, pending.room.clone(), Some(phc));
                self.enter_room(conn, pending.room);
                out.push(send(conn, OK_RESPONSE));
            }
            // The room was created, deleted or recreated while the hash ran:
            // judge the join again against the room as it is now.
            PasswordOutcome::Verified(_) | PasswordOutcome::Hashed(_) => {
                self.attempt_join(conn, pending.room, pending.password, out)
            }
        }
    }

    fn nick(&mut self, conn: ConnId, name: &[u8], out: &mut Vec<Action>) {
        if let Err(problem) = check_name(name, text::NICK_EMPTY, text::NICK_INVALID) {
            return respond(out, conn, Status::Error, problem);
        }
        let user = self.users.get_mut(&conn).expect("caller checked");
        if user.name == name {
            return out.push(send(conn, OK_RESPONSE));
        }
        let name = Bytes::copy_from_slice(name);
        if !self.directory.claim_name(&name, conn) {
            return respond(out, conn, Status::Error, text::NICK_TAKEN);
        }
        self.directory.release_name(&user.name);
        info!(peer = %user.peer, old = %Printable(&user.name), new = %Printable(&name), "nick changed");
        user.name = name;
        out.push(send(conn, OK_RESPONSE));
    }

    fn join(&mut self, conn: ConnId, room: &[u8], password: &[u8], out: &mut Vec<Action>) {
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
        self.attempt_join(conn, Bytes::copy_from_slice(room), password, out);
    }

    /// Joins, creates, or starts the password work a join needs.
    fn attempt_join(
        &mut self,
        conn: ConnId,
        room: Bytes,
        password: Zeroizing<Vec<u8>>,
        out: &mut Vec<Action>,
    ) {
        let (task, room_generation) = match self.directory.room(&room) {
            Some(existing) => match existing.password_hash() {
                // An empty password never matches a set one, and a room
                // without a password only takes an empty one: no hash needed.
                None if password.is_empty() => {
                    self.enter_room(conn, room);
                    return out.push(send(conn, OK_RESPONSE));
                }
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
                self.enter_room(conn, room);
                return out.push(send(conn, OK_RESPONSE));
            }
            None => (
                PasswordTask::Hash {
                    password: password.clone(),
                },
                None,
            ),
        };
        self.next_ticket += 1;
        let ticket = self.next_ticket;
        let user = self.users.get_mut(&conn).expect("caller checked");
        user.pending_join = Some(PendingJoin {
            ticket,
            room,
            password,
            room_generation,
        });
        out.push(Action::Password(PasswordJob { conn, ticket, task }));
    }

    fn wrong_password(&self, conn: ConnId, room: &[u8], out: &mut Vec<Action>) {
        let user = &self.users[&conn];
        warn!(peer = %user.peer, nick = %Printable(&user.name), room = %Printable(room), "wrong room password");
        respond(out, conn, Status::Error, text::WRONG_PASSWORD);
    }

    fn create_room(&mut self, conn: ConnId, room: Bytes, password: Option<Arc<str>>) {
        let user = &self.users[&conn];
        info!(peer = %user.peer, nick = %Printable(&user.name), room = %Printable(&room),
              protected = password.is_some(), "room created");
        self.directory.create_room(room, password);
    }

    /// Moves the user into `room` (which exists), leaving its current room:
    /// the legacy client sends no LEAVE before a JOIN.
    fn enter_room(&mut self, conn: ConnId, room: Bytes) {
        self.leave_room(conn);
        self.directory.add_member(&room, conn);
        self.users.get_mut(&conn).expect("caller checked").room = Some(room);
    }

    /// Takes the user out of its room, if any. Returns whether it was in one.
    fn leave_room(&mut self, conn: ConnId) -> bool {
        let Some(user) = self.users.get_mut(&conn) else {
            return false;
        };
        let Some(room) = user.room.take() else {
            return false;
        };
        if self.directory.remove_member(&room, conn) {
            info!(peer = %user.peer, nick = %Printable(&user.name), room = %Printable(&room), "room deleted");
        }
        true
    }

    fn leave(&mut self, conn: ConnId, out: &mut Vec<Action>) {
        out.push(send(conn, OK_RESPONSE));
        if !self.leave_room(conn) {
            self.close(conn, CloseReason::LeftServer, out);
        }
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
        if user.message_rate.try_acquire(now) {
            return true;
        }
        warn!(peer = %user.peer, nick = %Printable(&user.name), "rate limit hit");
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
        let members = self.directory.room(current).map_or(&[][..], Room::members);
        out.extend(
            members
                .iter()
                .filter(|member| **member != conn)
                .map(|member| send(*member, frame.clone())),
        );
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
            return respond(out, conn, Status::Error, text::NICK_NOT_PRESENT);
        };
        out.push(send(conn, OK_RESPONSE));
        let sender = &self.users[&conn].name;
        out.push(send(recipient, encode_direct_message(sender, text)));
    }

    /// Forgets the user and asks the driver to flush and close.
    fn close(&mut self, conn: ConnId, reason: CloseReason, out: &mut Vec<Action>) {
        if self.forget(conn, reason) {
            out.push(Action::Close { conn, reason });
        }
    }

    /// Removes every trace of the user. Returns whether it was known.
    fn forget(&mut self, conn: ConnId, reason: CloseReason) -> bool {
        self.leave_room(conn);
        let Some(user) = self.users.remove(&conn) else {
            return false;
        };
        self.directory.release_name(&user.name);
        let (peer, nick) = (user.peer, Printable(&user.name));
        match reason {
            CloseReason::ClientClosed | CloseReason::LeftServer | CloseReason::Shutdown => {
                info!(%peer, %nick, %conn, %reason, "disconnected")
            }
            _ => warn!(%peer, %nick, %conn, %reason, "disconnected"),
        }
        true
    }

    /// Number of connected users.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// Number of rooms.
    pub fn room_count(&self) -> usize {
        self.directory.room_count()
    }

    /// The user's current name.
    pub fn name_of(&self, conn: ConnId) -> Option<&[u8]> {
        self.users.get(&conn).map(|user| &user.name[..])
    }

    /// The user's current room.
    pub fn room_of(&self, conn: ConnId) -> Option<&[u8]> {
        self.users.get(&conn)?.room.as_deref()
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
        Ok(())
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
