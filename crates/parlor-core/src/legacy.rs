//! The legacy protocol's requests (PROTOCOL.md §4): NICK (and its signed
//! form for secure connections), JOIN with its password round trip, LEAVE,
//! the two lists, room messages and DMs. The secure side of a JOIN (keys,
//! rotation) is in `secure.rs`.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tracing::{info, warn};
use zeroize::Zeroizing;

use crate::claims::{NamePurpose, NameRequest};
use crate::secure::{Change, RoomKeyState};
use crate::{
    check_name, respond, respond_naming, send, Action, CloseReason, ConnId, Hub, PasswordJob,
    PasswordTask, Pending, PendingJoin, Rejection, Relayed,
};
use parlor_proto::legacy::{
    encode_direct_message, encode_name_list, encode_response, encode_room_message, OK_RESPONSE,
};
use parlor_proto::printable::Printable;
use parlor_proto::secure::SIGNATURE_LEN;
use parlor_proto::text;
use parlor_proto::{SecureMessage, Status};

impl Hub {
    /// NICK (`0f`). A secure connection must rename with SIGNED_NICK, whose
    /// proof its peers check; its legacy NICK changes nothing.
    pub(crate) fn nick(&mut self, conn: ConnId, name: &[u8], now: Instant, out: &mut Vec<Action>) {
        if self.is_secure(conn) {
            return respond(out, conn, Status::Error, text::SIGNED_NICK_NEEDED);
        }
        self.rename(conn, name, None, now, out);
    }

    /// SIGNED_NICK (`96`): NICK for a secure connection, with the name
    /// proof for the new name. A connection without a key has nothing to
    /// sign with.
    pub(crate) fn signed_nick(
        &mut self,
        conn: ConnId,
        name: &[u8],
        proof: &[u8; SIGNATURE_LEN],
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if !self.is_secure(conn) {
            return respond(out, conn, Status::Error, text::REGISTER_KEY_FIRST);
        }
        self.rename(conn, name, Some(proof), now, out);
    }

    /// The rules NICK and SIGNED_NICK share; `proof` is SIGNED_NICK's. A
    /// proof is checked after the rate limit (every attempt counts) and
    /// before the name is claimed, and kept only once it is, even for one's
    /// own name (which refreshes it).
    fn rename(
        &mut self,
        conn: ConnId,
        name: &[u8],
        proof: Option<&[u8; SIGNATURE_LEN]>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if let Err(problem) = check_name(name, text::NICK_EMPTY, text::NICK_INVALID) {
            return respond(out, conn, Status::Error, problem);
        }
        let user = self.users.get_mut(&conn).expect("caller checked");
        let renamed = user.name != name;
        // Every attempt counts, taken names too: probing for free names is
        // as cheap for a spammer as changing.
        if renamed && !user.rates().nick.try_acquire(now, self.limits.nick_rate) {
            warn!(peer = %user.peer, nick = %Printable(&user.name), "nick rate limit hit");
            self.stats.reject(Rejection::NickRateLimited);
            return respond(out, conn, Status::TryLater, &self.nick_rate_limit_text);
        }
        if let (Some(proof), Some(identity)) = (proof, &user.identity) {
            if !identity.proves_name(name, proof) {
                return respond(out, conn, Status::Error, text::KEY_PROOF_FAILED);
            }
        }
        if !renamed {
            let name = user.name.clone();
            return self.renamed(conn, name, proof, out);
        }
        // Held here: no need to ask the cluster.
        if self.directory.find_user(name).is_some() {
            return respond(out, conn, Status::Error, text::NICK_TAKEN);
        }
        let name = Bytes::copy_from_slice(name);
        if self.in_cluster() {
            let purpose = NamePurpose::Rename {
                proof: proof.map(|proof| Box::new(*proof)),
            };
            return self.claim_name(conn, NameRequest::Exactly(name), purpose, out);
        }
        self.directory.claim_name(&name, conn);
        self.renamed(conn, name, proof, out);
    }

    /// Gives the user `name`, which is now claimed for it (or is already
    /// its own), lets go of the old one, and answers the NICK.
    pub(crate) fn renamed(
        &mut self,
        conn: ConnId,
        name: Bytes,
        proof: Option<&[u8; SIGNATURE_LEN]>,
        out: &mut Vec<Action>,
    ) {
        let user = self.users.get_mut(&conn).expect("caller checked");
        let old = std::mem::replace(&mut user.name, name);
        let renamed = old != user.name;
        if renamed {
            info!(peer = %user.peer, old = %Printable(&old), new = %Printable(&user.name), "nick changed");
        }
        if let (Some(proof), Some(identity)) = (proof, &mut user.identity) {
            identity.set_name_proof(proof);
        }
        if user.identity.is_some() {
            let confirmation = SecureMessage::NickSet {
                name: user.name.clone(),
            };
            out.push(send(conn, confirmation.encode()));
        }
        out.push(send(conn, OK_RESPONSE));
        if renamed {
            self.renamed_in_shared_room(conn, &old, out);
            self.release_name(&old, out);
            self.announce_identity(conn, old, out);
        }
    }

    pub(crate) fn join(
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
            return respond_naming(out, conn, Status::Error, text::already_in_room(room));
        }
        let password = Zeroizing::new(password.to_vec());
        self.attempt_join(conn, Bytes::copy_from_slice(room), password, now, true, out);
    }

    /// Joins, creates, or starts the password work a join needs. A hash
    /// counts against the password-join rate limit when `charge` is set
    /// (not when a join is judged again after the room changed under it).
    pub(crate) fn attempt_join(
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
        let (task, room_generation) = match self.room_terms(&room) {
            // Before any password work: a legacy client could never enter.
            Some(terms) if terms.secure && !self.is_secure(conn) => {
                let reply = text::room_is_secure(&room);
                return respond_naming(out, conn, Status::Error, reply);
            }
            Some(terms) => match terms.password {
                // An empty password never matches a set one, and a room
                // without a password only takes an empty one: no hash needed.
                None if password.is_empty() => {
                    return self.enter_room(conn, room, password, terms.version, now, out)
                }
                Some(phc) if !password.is_empty() => (
                    PasswordTask::Verify {
                        password: password.clone(),
                        phc,
                    },
                    Some(terms.version),
                ),
                _ => return self.wrong_password(conn, &room, out),
            },
            None if password.is_empty() => {
                return self.found_room(conn, room, password, None, now, out);
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
    pub(crate) fn room_capacity_refusal(&self, room: &[u8]) -> Option<Vec<u8>> {
        match self.room_terms(room) {
            Some(terms) if terms.members >= self.limits.max_room_members => {
                Some(text::room_is_full(room).concat())
            }
            None if self.rooms_everywhere() >= self.limits.max_rooms => {
                Some(text::TOO_MANY_ROOMS.as_bytes().to_vec())
            }
            _ => None,
        }
    }

    pub(crate) fn wrong_password(&mut self, conn: ConnId, room: &[u8], out: &mut Vec<Action>) {
        let user = &self.users[&conn];
        self.stats.reject(Rejection::WrongPassword);
        warn!(peer = %user.peer, nick = %Printable(&user.name), room = %Printable(room), "wrong room password");
        respond(out, conn, Status::Error, text::WRONG_PASSWORD);
    }

    pub(crate) fn new_ticket(&mut self) -> u64 {
        self.next_ticket += 1;
        self.next_ticket
    }

    /// Ends `conn`'s wait for another node's answer that `ticket` numbers
    /// (a DM, a DM key, a file request); returns whether it was waiting.
    pub(crate) fn take_direct(&mut self, conn: ConnId, ticket: u64) -> bool {
        matches!(
            self.take_pending(conn, ticket),
            Some(Pending::Direct { .. })
        )
    }

    /// Ends `conn`'s wait that `ticket` numbers and returns it; `None` if
    /// the connection is gone or no longer waits for it.
    pub(crate) fn take_pending(&mut self, conn: ConnId, ticket: u64) -> Option<Pending> {
        let user = self.users.get_mut(&conn)?;
        let pending = user
            .pending
            .take_if(|pending| pending.ticket() == Some(ticket))?;
        Some(*pending)
    }

    /// Creates a room, secure when its creator is, with `incarnation` (a
    /// fresh random number, never 0) for a secure room: a room deleted and
    /// created again under the same name is another room, whose keys no
    /// label of the old one matches.
    pub(crate) fn create_room(
        &mut self,
        conn: ConnId,
        room: Bytes,
        password: Option<Arc<str>>,
        incarnation: u64,
    ) {
        let user = &self.users[&conn];
        let secure = user.identity.is_some();
        info!(peer = %user.peer, nick = %Printable(&user.name), room = %Printable(&room),
              protected = password.is_some(), secure, "room created");
        let keys = secure.then(|| RoomKeyState::new(incarnation));
        self.directory.create_room(room, password, keys);
    }

    /// Moves the user into `room` (which exists) and answers its JOIN. A
    /// secure joiner first gets the confirmation and, in a secure room, every
    /// other member's key; `9a 00` comes last, in the same buffer. Then the
    /// other members get the joiner's key, and the keys of the room left and
    /// the room entered rotate.
    pub(crate) fn admit(
        &mut self,
        conn: ConnId,
        room: Bytes,
        created: bool,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        // The legacy client sends no LEAVE before a JOIN.
        let left = self.leave_room(conn, out);
        if let Some(left) = &left {
            self.with_transfers(out, |transfers, out| {
                transfers.left_room(conn, left, now, out)
            });
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
        self.announce_identity(conn, Bytes::new(), out);
        if let Some(left) = left {
            self.membership_changed(&left, Change::Departure(conn), out);
        }
        self.membership_changed(&room, Change::Arrival, out);
    }

    /// Takes the user out of its room, if any, and returns that room. The
    /// caller rotates the room's key.
    pub(crate) fn leave_room(&mut self, conn: ConnId, out: &mut Vec<Action>) -> Option<Bytes> {
        let user = self.users.get_mut(&conn)?;
        let room = user.room.take()?;
        let member = user.name.clone();
        self.left_shared_room(&room, &member, out);
        let user = &self.users[&conn];
        if let Some(deleted) = self.directory.remove_member(&room, conn) {
            info!(peer = %user.peer, nick = %Printable(&user.name), room = %Printable(&room), "room deleted");
            self.room_deleted(&room, deleted);
        }
        Some(room)
    }

    pub(crate) fn leave(&mut self, conn: ConnId, now: Instant, out: &mut Vec<Action>) {
        let Some(room) = self.leave_room(conn, out) else {
            out.push(send(conn, OK_RESPONSE));
            return self.close(conn, CloseReason::LeftServer, now, out);
        };
        self.with_transfers(out, |transfers, out| {
            transfers.left_room(conn, &room, now, out)
        });
        if self.is_secure(conn) {
            let confirmation = SecureMessage::RoomLeft { room: room.clone() };
            out.push(send(conn, confirmation.encode()));
        }
        out.push(send(conn, OK_RESPONSE));
        self.membership_changed(&room, Change::Departure(conn), out);
    }

    pub(crate) fn list_users(&self, conn: ConnId, out: &mut Vec<Action>) {
        let mut names: Vec<&[u8]> = match &self.users[&conn].room {
            Some(name) => self.directory.room(name).map_or_else(Vec::new, |room| {
                room.members()
                    .iter()
                    .map(|member| &self.users[member].name)
                    .chain(self.members_elsewhere(name))
                    .map(|name| &name[..])
                    .collect()
            }),
            None => self.directory.all_names().map(|name| &name[..]).collect(),
        };
        names.sort_unstable();
        names.dedup();
        out.push(send(conn, encode_name_list(names.into_iter())));
    }

    pub(crate) fn list_rooms(&self, conn: ConnId, out: &mut Vec<Action>) {
        let mut rooms: Vec<&[u8]> = self.directory.room_names().map(|room| &room[..]).collect();
        rooms.extend(
            self.directory
                .records()
                .map(|shared| &shared.record.room[..]),
        );
        rooms.sort_unstable();
        rooms.dedup();
        out.push(send(conn, encode_name_list(rooms.into_iter())));
    }

    /// Counts a room or direct message against the sender's rate limit
    /// (failed ones too); `false` means it was refused and answered.
    pub(crate) fn admit_message(
        &mut self,
        conn: ConnId,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> bool {
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

    pub(crate) fn room_message(
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
            return respond_naming(out, conn, Status::Error, text::not_in_room(room));
        }
        out.push(send(conn, OK_RESPONSE));
        let frame = encode_room_message(current, &user.name, text);
        let Some(room) = self.directory.room(current) else {
            return;
        };
        self.stats
            .relayed(Relayed::Room, room.members().len().saturating_sub(1));
        let relay = self.relay_target(current).map(|to| Action::Relay {
            to: Arc::clone(to),
            frame: frame.clone(),
        });
        out.push(Action::Broadcast {
            to: room.members_now(),
            except: Some(conn),
            frame,
        });
        out.extend(relay);
    }

    pub(crate) fn direct_message(
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
        let frame = encode_direct_message(&self.users[&conn].name, text);
        let Some(recipient) = self.directory.find_user(target) else {
            if !self.relay_direct(conn, target, frame, out) {
                self.no_such_user(conn, target, out);
            }
            return;
        };
        out.push(send(conn, OK_RESPONSE));
        out.push(send(recipient, frame));
        self.stats.relayed(Relayed::Direct, 1);
    }
}
