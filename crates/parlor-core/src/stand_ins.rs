//! File transfers whose sender and recipients are served by different
//! nodes of a cluster.
//!
//! A transfer runs where its sender is: this node's [`Transfers`] decides
//! everything about it, as on one server. A recipient served by another
//! node takes part as a **stand-in**: a connection id of its own, from a
//! range no connection reaches, which the transfer treats as any
//! recipient. What the transfer sends a stand-in goes to the user's node,
//! in order with the room messages relayed there
//! ([`Action::RelayToUser`]); what the user sends about the transfer comes
//! back from that node as the stand-in's ([`Hub::relayed_file_request`]).
//! A stand-in leaves a room when the room's record no longer lists its
//! user there, and disconnects when its name is released. A room's
//! record gives its members' keys; for a file to one user of another
//! node, that node is asked first whose key the user holds
//! ([`Hub::relayed_file_target`]). Each frame for a stand-in names that
//! key, and the user's node delivers it to the key's holder only.
//!
//! The user's node, for its part, keeps a **route** for each transfer
//! offered to a user of its own from another node (read from the offer it
//! passes on), and sends the user's decisions, acknowledgements and
//! cancels there ([`Action::RelayFileRequest`]). A decision or a cancel is
//! answered from the sender's node, with what the transfer answered the
//! stand-in; until then the user's reply is owed, as for a DM to another
//! node. A transfer is resumed only where it runs: a user who reconnects
//! has lost its routes, and its FILE_RESUME is refused as on one server
//! for a transfer it is not part of.
//!
//! [`Transfers`]: crate::transfer::Transfers

use std::collections::HashMap;
use std::time::Instant;

use bytes::{Buf, Bytes};
use tracing::warn;

use crate::transfer::{OfferRecipient, Transfers};
use crate::{respond, respond_naming, send, Action, ConnId, Hub, NodeId, Pending};
use parlor_proto::secure::Fingerprint;
use parlor_proto::text;
use parlor_proto::transfer::opcode::{FILE_ENDED, FILE_OFFER};
use parlor_proto::transfer::{FileMeta, FileRequest};
use parlor_proto::{ClientMessage, Frame, FrameCodec, Status, HEADER_LEN, MAX_CLIENT_PAYLOAD};

/// The first stand-in's connection id: connections count up from 0 and
/// never reach it, and the ids below [`u64::MAX`] that key wraps use
/// (`secure.rs`) are far above.
const FIRST_STAND_IN: u64 = 1 << 62;

/// Whether `conn` is a stand-in's id.
fn is_stand_in(conn: ConnId) -> bool {
    (FIRST_STAND_IN..FIRST_STAND_IN * 2).contains(&conn.0)
}

/// The most routes one user keeps: past it, the oldest goes (its transfer
/// is then refused to the user, as one it is not part of).
const ROUTES_PER_USER: usize = 64;

/// A frame for a user of another node, relayed to that node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserFrame {
    /// The node serving the user.
    pub node: NodeId,
    /// The user's name.
    pub name: Bytes,
    /// The fingerprint of the user's key: the frame is for that key's
    /// holder only, never for whoever holds the name by the time it
    /// arrives (perhaps a legacy client, which a file frame would crash).
    pub fingerprint: Fingerprint,
    /// The frame, as the user is to get it.
    pub frame: Bytes,
}

/// A file request of a user here about a transfer that runs on another
/// node, to be sent there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRelay {
    /// The user.
    pub conn: ConnId,
    /// `Some` for a request whose reply the user waits for (a decision,
    /// a cancel), echoed back in [`Hub::file_request_relayed`]; `None` for
    /// an acknowledgement, which nobody answers.
    pub ticket: Option<u64>,
    /// The node the transfer runs on.
    pub node: NodeId,
    /// The user's name.
    pub name: Bytes,
    /// The request, as the user sent it.
    pub frame: Bytes,
}

/// A FILE_OFFER to one user of another node: that node is asked whose key
/// the user holds ([`Hub::relayed_file_target`]) before the transfer is
/// made, and the sender's reply waits ([`Hub::file_target_answered`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileTargetAsk {
    /// The sender.
    pub conn: ConnId,
    /// Echoed back in [`Hub::file_target_answered`].
    pub ticket: u64,
    /// The node serving the target.
    pub node: NodeId,
    /// The target's name.
    pub target: Bytes,
}

/// What the node of a file's target says of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileTarget {
    /// The user holds this key.
    Key(Fingerprint),
    /// The user has registered no key.
    NoKey,
    /// Nobody of that name is there.
    Absent,
    /// The node did not answer (given by the driver, never sent).
    Unavailable,
}

/// A FILE_OFFER waiting for [`FileTargetAsk`]'s answer.
#[derive(Debug)]
pub(crate) struct PendingOffer {
    pub(crate) ticket: u64,
    node: NodeId,
    target: Bytes,
    meta: FileMeta,
    window: u8,
}

/// Users of other nodes taking part in this node's transfers.
#[derive(Debug, Default)]
pub(crate) struct StandIns {
    users: HashMap<ConnId, (NodeId, Bytes)>,
    by_user: HashMap<(NodeId, Bytes), ConnId>,
    /// The key each stand-in was offered a file under.
    fingerprints: HashMap<ConnId, Fingerprint>,
    made: u64,
}

impl StandIns {
    /// The stand-in of `name` on `node`, made if it has none.
    pub(crate) fn of(&mut self, node: &NodeId, name: &Bytes) -> ConnId {
        let key = (node.clone(), name.clone());
        if let Some(conn) = self.by_user.get(&key) {
            return *conn;
        }
        let conn = ConnId(FIRST_STAND_IN + self.made);
        self.made += 1;
        self.users.insert(conn, key.clone());
        self.by_user.insert(key, conn);
        conn
    }

    /// The stand-in of the holder of `fingerprint`, called `name` on
    /// `node`, as an offer's recipient.
    pub(crate) fn recipient(
        &mut self,
        node: &NodeId,
        name: &Bytes,
        fingerprint: Fingerprint,
    ) -> ConnId {
        let conn = self.of(node, name);
        self.fingerprints.insert(conn, fingerprint);
        conn
    }

    fn user(&self, conn: ConnId) -> Option<&(NodeId, Bytes)> {
        self.users.get(&conn)
    }

    /// Forgets every stand-in of a user called `name`; returns them.
    fn forget_named(&mut self, name: &[u8]) -> Vec<ConnId> {
        let gone: Vec<ConnId> = self
            .users
            .iter()
            .filter(|(_, (_, user))| user == name)
            .map(|(conn, _)| *conn)
            .collect();
        for conn in &gone {
            if let Some(key) = self.users.remove(conn) {
                self.by_user.remove(&key);
            }
            self.fingerprints.remove(conn);
        }
        gone
    }
}

/// At a user's node: the node each transfer offered to a user here from
/// another node runs on, by user and transfer id.
#[derive(Debug, Default)]
pub(crate) struct Routes {
    routes: HashMap<ConnId, Vec<(u32, NodeId)>>,
}

impl Routes {
    fn add(&mut self, conn: ConnId, id: u32, node: NodeId) {
        let routes = self.routes.entry(conn).or_default();
        routes.retain(|(known, _)| *known != id);
        if routes.len() >= ROUTES_PER_USER {
            routes.remove(0);
        }
        routes.push((id, node));
    }

    fn remove(&mut self, conn: ConnId, id: u32) {
        if let Some(routes) = self.routes.get_mut(&conn) {
            routes.retain(|(known, _)| *known != id);
            if routes.is_empty() {
                self.routes.remove(&conn);
            }
        }
    }

    fn node_of(&self, conn: ConnId, id: u32) -> Option<&NodeId> {
        let routes = self.routes.get(&conn)?;
        routes
            .iter()
            .find(|(known, _)| *known == id)
            .map(|(_, node)| node)
    }

    pub(crate) fn forget(&mut self, conn: ConnId) {
        self.routes.remove(&conn);
    }
}

/// The transfer id at the start of a file notice's payload.
fn notice_id(frame: &[u8]) -> Option<u32> {
    let mut payload = frame.get(HEADER_LEN..)?;
    (payload.remaining() >= 4).then(|| payload.get_u32())
}

impl Hub {
    /// A FILE_OFFER from `conn` to `target`, a user of node `node`: asks
    /// that node first whose key the user holds.
    pub(crate) fn ask_file_target(
        &mut self,
        conn: ConnId,
        node: NodeId,
        target: Bytes,
        (meta, window): (FileMeta, u8),
        out: &mut Vec<Action>,
    ) {
        let ticket = self.new_ticket();
        out.push(Action::AskFileTarget(Box::new(FileTargetAsk {
            conn,
            ticket,
            node: node.clone(),
            target: target.clone(),
        })));
        let offer = PendingOffer {
            ticket,
            node,
            target,
            meta,
            window,
        };
        let user = self.users.get_mut(&conn).expect("caller checked");
        user.pending = Some(Box::new(Pending::FileTarget(Box::new(offer))));
    }

    /// The node of a file's target answered a [`FileTargetAsk`] (or did
    /// not): the offer is made, to the target's stand-in, or refused with
    /// the text one server would give.
    pub fn file_target_answered(
        &mut self,
        conn: ConnId,
        ticket: u64,
        answer: FileTarget,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(Pending::FileTarget(offer)) = self.take_pending(conn, ticket) else {
            return;
        };
        let PendingOffer {
            node,
            target,
            meta,
            window,
            ..
        } = *offer;
        match answer {
            FileTarget::Key(fingerprint) => {
                let recipient = OfferRecipient {
                    conn: self.stand_ins.recipient(&node, &target, fingerprint),
                    name: target,
                    fingerprint,
                };
                let invited = (vec![recipient], Vec::new());
                self.make_offer(conn, None, invited, (meta, window), now, out);
            }
            FileTarget::NoKey => {
                let reply = text::cannot_receive_files(&target);
                respond_naming(out, conn, Status::Error, reply);
            }
            FileTarget::Absent => self.no_such_user(conn, &target, out),
            FileTarget::Unavailable => {
                respond(out, conn, Status::TryLater, text::CLUSTER_UNAVAILABLE)
            }
        }
    }

    /// Another node asks whose key its user's file's target, `target`,
    /// holds here.
    pub fn relayed_file_target(&self, target: &[u8]) -> FileTarget {
        let Some(conn) = self.directory.find_user(target) else {
            return FileTarget::Absent;
        };
        match &self.users[&conn].identity {
            Some(identity) => FileTarget::Key(*identity.fingerprint()),
            None => FileTarget::NoKey,
        }
    }

    /// Whether `conn` is the stand-in of a user of another node.
    pub(crate) fn stands_in(&self, conn: ConnId) -> bool {
        self.stand_ins.user(conn).is_some()
    }

    /// Runs `work` on the transfers, then sends what it queued for
    /// stand-ins to their users' nodes.
    pub(crate) fn with_transfers<T>(
        &mut self,
        out: &mut Vec<Action>,
        work: impl FnOnce(&mut Transfers, &mut Vec<Action>) -> T,
    ) -> T {
        let from = out.len();
        let done = work(&mut self.transfers, out);
        self.route_to_stand_ins(out, from);
        done
    }

    /// Turns every frame in `out[from..]` for a stand-in into a relay to
    /// its user's node; a frame for a stand-in forgotten meanwhile (its
    /// user left), or never offered a file, is dropped.
    fn route_to_stand_ins(&self, out: &mut Vec<Action>, from: usize) {
        let for_stand_in =
            |action: &Action| matches!(action, Action::Send { to, .. } if is_stand_in(*to));
        if !out[from..].iter().any(for_stand_in) {
            return;
        }
        let queued: Vec<Action> = out.drain(from..).collect();
        for action in queued {
            match action {
                Action::Send { to, frame } if is_stand_in(to) => {
                    let user = self.stand_ins.user(to);
                    let fingerprint = self.stand_ins.fingerprints.get(&to);
                    if let (Some((node, name)), Some(fingerprint)) = (user, fingerprint) {
                        out.push(Action::RelayToUser(Box::new(UserFrame {
                            node: node.clone(),
                            name: name.clone(),
                            fingerprint: *fingerprint,
                            frame,
                        })));
                    }
                }
                other => out.push(other),
            }
        }
    }

    /// A frame another node relayed for the user `name` here, the holder
    /// of `fingerprint`, from a transfer that runs there: queued for the
    /// user if it is still that key's. An offer starts a route to that
    /// node for the transfer, and its end for this user ends it.
    pub fn relayed_to_user(
        &mut self,
        node: &NodeId,
        name: &[u8],
        fingerprint: &Fingerprint,
        frame: Bytes,
        out: &mut Vec<Action>,
    ) {
        let Some(conn) = self.directory.find_user(name) else {
            return;
        };
        let identity = self.users[&conn].identity.as_deref();
        if identity.is_none_or(|identity| identity.fingerprint() != fingerprint) {
            return;
        }
        let opcode = frame.get(HEADER_LEN - 1).copied();
        match (opcode, notice_id(&frame)) {
            (Some(FILE_OFFER), Some(id)) => self.routes.add(conn, id, node.clone()),
            (Some(FILE_ENDED), Some(id)) if ended_for(&frame, name) => self.routes.remove(conn, id),
            _ => {}
        }
        out.push(send(conn, frame));
    }

    /// A file request from `conn` about transfer `id`: if the transfer
    /// runs on another node (and this node's transfers do not have the
    /// user in one of that id), it is sent there. Returns whether it was.
    pub(crate) fn forward_file_request(
        &mut self,
        conn: ConnId,
        id: u32,
        request: &FileRequest,
        out: &mut Vec<Action>,
    ) -> bool {
        if self.transfers.involves(conn, id) {
            return false;
        }
        let Some(node) = self.routes.node_of(conn, id).cloned() else {
            return false;
        };
        let owes_reply = request.expects_response();
        let ticket = owes_reply.then(|| self.new_ticket());
        let user = self.users.get_mut(&conn).expect("caller checked");
        if let Some(ticket) = ticket {
            user.pending = Some(Box::new(Pending::Direct { ticket }));
        }
        let frame = ClientMessage::File(request.clone()).to_frame().to_bytes();
        out.push(Action::RelayFileRequest(Box::new(FileRelay {
            conn,
            ticket,
            node,
            name: user.name.clone(),
            frame,
        })));
        true
    }

    /// A [`FileRelay`] that owed a reply was answered by the transfer's
    /// node with `answer` (the frames for the user), or not at all.
    pub fn file_request_relayed(
        &mut self,
        conn: ConnId,
        ticket: u64,
        answer: Option<Bytes>,
        out: &mut Vec<Action>,
    ) {
        if !self.take_direct(conn, ticket) {
            return;
        }
        match answer {
            Some(frames) if !frames.is_empty() => out.push(send(conn, frames)),
            _ => respond(out, conn, Status::TryLater, text::CLUSTER_UNAVAILABLE),
        }
    }

    /// A file request that the user `name` of node `node` sent about a
    /// transfer that runs here, carried out as its stand-in's. With `ask`,
    /// what the transfer answers the stand-in goes back as the answer
    /// ([`Action::AnswerFileRequest`]) instead of being relayed.
    pub fn relayed_file_request(
        &mut self,
        ask: Option<u64>,
        node: &NodeId,
        name: &[u8],
        frame: Bytes,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let request = read_file_request(frame);
        let conn = self.stand_ins.of(node, &Bytes::copy_from_slice(name));
        let from = out.len();
        match (request, ask) {
            (Some(FileRequest::Decision { id, accept }), Some(_)) => {
                self.transfers.decide(conn, id, accept, now, out)
            }
            (Some(FileRequest::Cancel { id }), Some(_)) => {
                self.transfers.cancel(conn, id, now, out)
            }
            (Some(FileRequest::Ack { id, index }), None) => {
                self.transfers.ack(conn, id, index, now, out)
            }
            // Only a request waited for may be answered: anything else is
            // dropped, as a stray acknowledgement is.
            (_, None) => {
                warn!(%node, "a file request from another node that is no acknowledgement")
            }
            (_, Some(_)) => {
                warn!(%node, "a file request from another node that cannot be carried out here");
                respond(out, conn, Status::Error, text::CLUSTER_UNAVAILABLE);
            }
        }
        if let Some(ask) = ask {
            let mut answer = Vec::new();
            let mut rest = Vec::with_capacity(out.len() - from);
            for action in out.drain(from..) {
                match action {
                    Action::Send { to, frame } if to == conn => answer.extend_from_slice(&frame),
                    other => rest.push(other),
                }
            }
            out.extend(rest);
            out.push(Action::AnswerFileRequest {
                ask,
                frames: Bytes::from(answer),
            });
        }
        self.route_to_stand_ins(out, from);
    }

    /// The record of `room` changed: stand-ins whose users are no longer
    /// in it, on their node, leave it.
    pub(crate) fn stand_ins_follow_room(
        &mut self,
        room: &[u8],
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let shared = self.directory.record(room);
        let listed = |node: &NodeId, name: &Bytes| {
            shared.is_some_and(|shared| {
                shared
                    .record
                    .elsewhere
                    .iter()
                    .any(|(at, names)| at == node && names.contains(name))
            })
        };
        let gone: Vec<ConnId> = self
            .stand_ins
            .users
            .iter()
            .filter(|(_, (node, name))| !listed(node, name))
            .map(|(conn, _)| *conn)
            .collect();
        for conn in gone {
            self.with_transfers(out, |transfers, out| {
                transfers.left_room(conn, room, now, out)
            });
        }
    }

    /// No user of another node holds `name` any more: its stand-ins are
    /// gone from every transfer, as a connection that closed.
    pub(crate) fn stand_ins_gone(&mut self, name: &[u8], now: Instant, out: &mut Vec<Action>) {
        let gone = self.stand_ins.forget_named(name);
        for conn in gone {
            // Forgotten first: what the transfers tell the others is
            // relayed, and nothing to the user who left.
            self.with_transfers(out, |transfers, out| transfers.disconnected(conn, now, out));
        }
    }
}

/// Whether a FILE_ENDED frame ends the transfer for `name` (or for
/// everyone).
fn ended_for(frame: &Bytes, name: &[u8]) -> bool {
    let mut payload = &frame[HEADER_LEN.min(frame.len())..];
    if payload.remaining() < 5 {
        return false;
    }
    payload.advance(4);
    let len = usize::from(payload.get_u8());
    payload.len() >= len && (len == 0 || &payload[..len] == name)
}

/// The file request in a frame another node relayed; `None` if it is not
/// one.
fn read_file_request(frame: Bytes) -> Option<FileRequest> {
    let mut wire = bytes::BytesMut::from(&frame[..]);
    let frame: Frame = FrameCodec::new(MAX_CLIENT_PAYLOAD)
        .decode(&mut wire)
        .ok()??;
    match ClientMessage::parse(&frame).ok()? {
        ClientMessage::File(request) => Some(request),
        _ => None,
    }
}
