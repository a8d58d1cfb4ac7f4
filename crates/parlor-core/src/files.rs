//! The hub's side of file transfer: who may send a file, and to whom.
//!
//! The transfer itself runs in [`super::transfer`]; this file checks the
//! requests against users and rooms. Files are part of the secure
//! extension: only a connection with a registered key may send or receive
//! one, so a legacy client is never offered a file (it would abort on the
//! unknown opcode). In a room, its legacy members are skipped and named to
//! the sender.
//!
//! The offer's description (the sealed manifest, the sender's counter and
//! its signature among it) is relayed as sent: checking it is for the
//! recipients. A resume is checked here, against the resuming connection's
//! own key, before the transfer hears of it.

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;

use super::secure::{binding_of, RemotePeer};
use super::transfer::{Offer, OfferRecipient};
use super::{respond, respond_naming, Action, ConnId, Hub, NodeId, Room};
use parlor_proto::secure::{resume_statement, SIGNATURE_LEN};
use parlor_proto::text;
use parlor_proto::transfer::{FileMeta, FileRequest};
use parlor_proto::Status;

impl Hub {
    pub(super) fn file_request(
        &mut self,
        conn: ConnId,
        request: FileRequest,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if !self.is_secure(conn) {
            // Chunks and acks are never answered, so a stray one from a
            // legacy connection is dropped like any late chunk.
            if request.expects_response() {
                respond(out, conn, Status::Error, text::REGISTER_KEY_FIRST);
            }
            return;
        }
        // A recipient's request about a transfer another node runs goes
        // there (`stand_ins.rs`).
        if let FileRequest::Decision { id, .. }
        | FileRequest::Ack { id, .. }
        | FileRequest::Cancel { id } = request
        {
            if self.forward_file_request(conn, id, &request, out) {
                return;
            }
        }
        match request {
            FileRequest::Offer {
                target,
                meta,
                window,
            } => self.offer_file(conn, target, meta, window, now, out),
            FileRequest::Resume { id, token, proof } => {
                self.resume_file(conn, id, &token, &proof, now, out)
            }
            request => self.with_transfers(out, |transfers, out| match request {
                FileRequest::Decision { id, accept } => {
                    transfers.decide(conn, id, accept, now, out)
                }
                FileRequest::Chunk { id, index, data } => {
                    transfers.chunk(conn, id, index, &data, now, out)
                }
                FileRequest::Ack { id, index } => transfers.ack(conn, id, index, now, out),
                FileRequest::Done { id } => transfers.done(conn, id, now, out),
                FileRequest::Cancel { id } => transfers.cancel(conn, id, now, out),
                FileRequest::Offer { .. } | FileRequest::Resume { .. } => {
                    unreachable!("matched above")
                }
            }),
        }
    }

    /// FILE_OFFER: to the sender's room when `target` is empty (its secure
    /// members are asked, the others skipped), or to one secure user.
    fn offer_file(
        &mut self,
        conn: ConnId,
        target: Bytes,
        meta: FileMeta,
        window: u8,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        // An offer is a message to many: it counts against the rate limit.
        if !self.admit_message(conn, now, out) {
            return;
        }
        let user = &self.users[&conn];
        let (room, recipients, skipped) = if target.is_empty() {
            let Some(room) = user.room.clone() else {
                return respond(out, conn, Status::Error, text::VOID);
            };
            let secure_room = self.directory.room(&room).is_some_and(Room::is_secure);
            if secure_room && !meta.encrypted() {
                // Everyone there expects sealed content; a buggy client must
                // not leak a file in the clear.
                return respond(out, conn, Status::Error, text::FILE_NOT_SEALED);
            }
            let members = self.directory.room(&room).map_or(&[][..], Room::members);
            let (mut recipients, mut skipped) = (Vec::new(), Vec::new());
            for &member in members.iter().filter(|member| **member != conn) {
                match self.offer_recipient(member) {
                    Some(recipient) => recipients.push(recipient),
                    None => skipped.push(self.users[&member].name.clone()),
                }
            }
            self.offer_recipients_elsewhere(&room, &mut recipients, &mut skipped);
            (Some(room), recipients, skipped)
        } else {
            let Some(recipient) = self.directory.find_user(&target) else {
                if let Some(node) = self.directory.remote_node_of(&target).cloned() {
                    return self.ask_file_target(conn, node, target, (meta, window), out);
                }
                return self.no_such_user(conn, &target, out);
            };
            if recipient == conn {
                return respond(out, conn, Status::Error, text::FILE_TO_YOURSELF);
            }
            let Some(recipient) = self.offer_recipient(recipient) else {
                let reply = text::cannot_receive_files(&target);
                return respond_naming(out, conn, Status::Error, reply);
            };
            (None, vec![recipient], Vec::new())
        };
        self.make_offer(conn, room, (recipients, skipped), (meta, window), now, out);
    }

    /// Hands an offer the hub has checked to the transfers: to the
    /// recipients invited, naming those skipped.
    pub(crate) fn make_offer(
        &mut self,
        conn: ConnId,
        room: Option<Bytes>,
        (recipients, skipped): (Vec<OfferRecipient>, Vec<Bytes>),
        (meta, window): (FileMeta, u8),
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let sender = &self.users[&conn];
        let offer = Offer {
            sender: conn,
            sender_name: sender.name.clone(),
            sender_identity: sender
                .identity
                .as_ref()
                .expect("checked secure")
                .block()
                .clone(),
            room,
            recipients,
            skipped,
            meta,
            window,
        };
        let offered = self.with_transfers(out, |transfers, out| transfers.offer(offer, now, out));
        if let Err(refusal) = offered {
            respond(out, conn, refusal.status, refusal.text);
        }
    }

    /// Cluster mode: the members of `room` on other nodes, as an offer's
    /// recipients (by their stand-ins, `stand_ins.rs`) when the room's
    /// record has their identities (a secure room), else as skipped.
    fn offer_recipients_elsewhere(
        &mut self,
        room: &[u8],
        recipients: &mut Vec<OfferRecipient>,
        skipped: &mut Vec<Bytes>,
    ) {
        let Some(shared) = self.directory.record(room) else {
            return;
        };
        let peers: HashMap<(&NodeId, &Bytes), &RemotePeer> = shared
            .peers
            .iter()
            .map(|peer| ((&peer.node, &peer.name), peer))
            .collect();
        for (node, names) in &shared.record.elsewhere {
            for name in names {
                match peers.get(&(node, name)) {
                    Some(peer) => recipients.push(OfferRecipient {
                        conn: self.stand_ins.recipient(node, name, peer.fingerprint),
                        name: name.clone(),
                        fingerprint: peer.fingerprint,
                    }),
                    None => skipped.push(name.clone()),
                }
            }
        }
    }

    /// `conn` as the recipient of an offer, if it is secure.
    fn offer_recipient(&self, conn: ConnId) -> Option<OfferRecipient> {
        let user = &self.users[&conn];
        let identity = user.identity.as_ref()?;
        Some(OfferRecipient {
            conn,
            name: user.name.clone(),
            fingerprint: *identity.fingerprint(),
        })
    }

    /// FILE_RESUME: the proof must be this connection's key's, over the
    /// transfer, the token and this connection's channel binding; the
    /// transfer then checks that the key is the original recipient's.
    fn resume_file(
        &mut self,
        conn: ConnId,
        id: u32,
        token: &[u8; parlor_proto::transfer::TOKEN_LEN],
        proof: &[u8; SIGNATURE_LEN],
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let user = &self.users[&conn];
        let identity = user.identity.as_ref().expect("checked secure");
        let statement = resume_statement(id, token, &binding_of(user));
        if !identity.verifies(&statement, proof) {
            return respond(out, conn, Status::Error, text::RESUME_PROOF_FAILED);
        }
        let fingerprint = *identity.fingerprint();
        self.with_transfers(out, |transfers, out| {
            transfers.resume(conn, id, token, &fingerprint, now, out)
        });
    }
}
