//! The secure extension's frames in the session, and who is who: peers'
//! identities checked and trusted on first use per server, room and DM
//! keys installed (or refused, with a warning), the hold after a member
//! leaves, and `\trust` and `\whois`.
//!
//! Trust is kept per server and nick in [`Memory`](crate::memory::Memory):
//! the first key seen under a nick is recorded; a different one later is
//! announced loudly ([`UserEvent::KeyChanged`]), its messages are shown
//! unverified, and DMs to it wait until the user has compared fingerprints
//! and typed `\trust NICK`, which records the new key.

use std::time::Instant;

use super::{ClientSession, InFlight, Output, Outputs, QueuedRequest, HOLD_FOR};
use crate::event::{show, UserEvent};
use parlor_crypto::identity::{display_fingerprint, Fingerprint, PeerIdentity};
use parlor_crypto::keyring::{Sighting, Trust};
use parlor_proto::secure::{Identity as IdentityBlock, SecureMessage};

impl ClientSession {
    pub(super) fn secure_message(
        &mut self,
        message: SecureMessage,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        let Some(identity) = &self.identity else {
            // A server must never send these to a legacy connection.
            return out.event(UserEvent::Warning {
                text: "ignored a secure-extension frame on a legacy connection.".to_string(),
            });
        };
        let connection = self.connection.as_mut().expect("a frame arrived");
        match message {
            SecureMessage::PeerKey {
                name,
                renamed_from,
                identity: block,
            } => {
                let renamed_from = (!renamed_from.is_empty()).then_some(&renamed_from[..]);
                self.peer_key(&name, renamed_from, &block, out);
            }
            SecureMessage::RoomKey {
                room,
                incarnation,
                epoch,
                wrapped,
            } => {
                let added = connection.keyring.add_room_key(
                    identity,
                    &room,
                    incarnation,
                    epoch,
                    &wrapped,
                    now,
                );
                if let Err(refused) = added {
                    return out.event(UserEvent::Warning {
                        text: format!(
                            "refused a key for room '{}' (epoch {epoch}): {refused}.",
                            show(&room)
                        ),
                    });
                }
                out.event(UserEvent::RoomKey {
                    room: show(&room),
                    epoch,
                });
                self.release_held(now, out);
            }
            SecureMessage::RoomRekeying {
                room,
                incarnation,
                next_epoch,
            } => match connection.keyring.rekeying(&room, incarnation, next_epoch) {
                Ok(()) => out.event(UserEvent::Rekeying {
                    room: show(&room),
                    next_epoch,
                }),
                Err(refused) => out.event(UserEvent::Warning {
                    text: format!("ignored a rekeying of room '{}': {refused}.", show(&room)),
                }),
            },
            SecureMessage::DmKey {
                peer,
                peer_fingerprint,
                key_id,
                wrapped,
            } => self.dm_key(&peer, &peer_fingerprint, key_id, &wrapped, out),
            SecureMessage::DmKeyIssued {
                target,
                identity: block,
                key_id,
                wrapped,
            } => {
                if let Some(fingerprint) = self.peer_key(&target, None, &block, out) {
                    self.dm_key(&target, &fingerprint, key_id, &wrapped, out);
                }
            }
            SecureMessage::RoomJoined {
                room,
                secure,
                incarnation,
            }
            | SecureMessage::RoomCreated {
                room,
                secure,
                incarnation,
            } => {
                if let Some(InFlight::Join {
                    room: joining,
                    secure: joined_secure,
                    incarnation: joined_incarnation,
                }) = &mut connection.pending
                {
                    if *joining == room {
                        *joined_secure = secure;
                        *joined_incarnation = incarnation;
                    }
                }
            }
            // The `9a` that follows says all the user needs.
            SecureMessage::NickSet { .. }
            | SecureMessage::RoomLeft { .. }
            | SecureMessage::NoSuchUser { .. } => {}
        }
    }

    /// An identity announced under `name` (`81`, `89`): checked, then
    /// trusted on first use, or announced as changed. Returns its
    /// fingerprint if it checked out.
    fn peer_key(
        &mut self,
        name: &[u8],
        renamed_from: Option<&[u8]>,
        block: &IdentityBlock,
        out: &mut Vec<Output>,
    ) -> Option<Fingerprint> {
        let peer = match PeerIdentity::from_block(block, name) {
            Ok(peer) => peer,
            Err(problem) => {
                out.event(UserEvent::Warning {
                    text: format!(
                        "refused the identity the server sent for '{}': {problem}.",
                        show(name)
                    ),
                });
                return None;
            }
        };
        let fingerprint = *peer.fingerprint();
        self.learn(name, renamed_from, peer, out);
        Some(fingerprint)
    }

    /// Records that `peer` goes by `name` now, and tells the user what is
    /// new about it; returns how far it is trusted under that name.
    fn learn(
        &mut self,
        name: &[u8],
        renamed_from: Option<&[u8]>,
        peer: PeerIdentity,
        out: &mut Vec<Output>,
    ) -> Trust {
        let connection = self.connection.as_mut().expect("a frame arrived");
        let pinned = self.memory.pinned(&connection.server, name).copied();
        let added = connection
            .keyring
            .add_peer(name, renamed_from, peer, pinned.as_ref());
        let shown = display_fingerprint(&added.fingerprint);
        if added.trust == Trust::New {
            let record = self
                .memory
                .pin(&connection.server, name, &added.fingerprint);
            out.push(Output::Remember(record));
        }
        if let Sighting::RenameRefused { from } = &added.sighting {
            out.event(UserEvent::Warning {
                text: format!(
                    "'{}' was announced as '{}' renamed, but its key is not theirs: taken as someone else.",
                    show(name),
                    show(from)
                ),
            });
        }
        match (&added.sighting, added.trust) {
            (Sighting::Again, _) => {}
            (_, Trust::Changed { before }) => out.event(UserEvent::KeyChanged {
                name: show(name),
                before: display_fingerprint(&before),
                now: shown,
            }),
            (sighting, trust) => out.event(UserEvent::PeerKey {
                name: show(name),
                renamed_from: match sighting {
                    Sighting::Renamed { from } => Some(show(from)),
                    _ => None,
                },
                fingerprint: shown,
                trust: trust_word(trust),
            }),
        }
        added.trust
    }

    /// A DM opened, signed by `signer` under the name `sender`: if the
    /// name is new for that key (a rename we were not told of, since only
    /// the members of a shared secure room are), it is learned like any
    /// announcement. Returns how far the signer is trusted under it.
    pub(super) fn dm_sender(
        &mut self,
        sender: &[u8],
        signer: &Fingerprint,
        trust: Trust,
        out: &mut Vec<Output>,
    ) -> Trust {
        let connection = self.connection.as_ref().expect("a frame arrived");
        let known = connection.keyring.peer(sender);
        if known.is_some_and(|(peer, _)| peer.fingerprint() == signer) {
            return trust;
        }
        let peer = connection
            .keyring
            .peer_by_fingerprint(signer)
            .expect("the keyring opened it with this peer's key")
            .clone();
        self.learn(sender, None, peer, out)
    }

    fn dm_key(
        &mut self,
        peer: &[u8],
        fingerprint: &Fingerprint,
        key_id: u32,
        wrapped: &[u8],
        out: &mut Vec<Output>,
    ) {
        let connection = self.connection.as_mut().expect("a frame arrived");
        let identity = self.identity.as_ref().expect("checked by the caller");
        match connection
            .keyring
            .add_dm_key(identity, key_id, fingerprint, wrapped)
        {
            Ok(()) => out.event(UserEvent::DmKey {
                peer: show(peer),
                key_id,
            }),
            Err(refused) => out.event(UserEvent::Warning {
                text: format!(
                    "refused a DM key for '{}' (key id {key_id}): {refused}.",
                    show(peer)
                ),
            }),
        }
    }

    /// Room lines held for [`HOLD_FOR`] without a key are not sent, and
    /// the user is told; a `\quit` or `\disconnect` waiting behind them
    /// goes ahead.
    pub(super) fn give_up_held(&mut self, now: Instant, out: &mut Vec<Output>) {
        let Some(connection) = self.connection.as_mut() else {
            return;
        };
        if connection
            .held_since
            .is_none_or(|since| now < since + HOLD_FOR)
        {
            return;
        }
        let room = connection
            .room
            .as_ref()
            .map_or_else(String::new, |room| show(&room.name));
        let count = connection.held.len();
        connection.held.clear();
        connection.held_since = None;
        let messages = if count == 1 { "message" } else { "messages" };
        out.error(&format!(
            "Not sent: {count} {messages} to room '{room}': no key came within {} s.",
            HOLD_FOR.as_secs()
        ));
        self.dispatch(now, out);
    }

    /// A room key arrived: what was held for it goes out now, first.
    fn release_held(&mut self, now: Instant, out: &mut Vec<Output>) {
        let connection = self.connection.as_mut().expect("a frame arrived");
        let Some(room) = &connection.room else {
            return;
        };
        if connection.keyring.room_epoch(&room.name).is_err() {
            return;
        }
        connection.held_since = None;
        for text in connection.held.drain(..).rev() {
            connection.queue.push_front(QueuedRequest::Say {
                text,
                plaintext: false,
            });
        }
        self.dispatch(now, out);
    }

    /// `\trust NAME`: the key now under `name` is theirs. It is recorded
    /// for the name, and the DMs held for it go out.
    pub(super) fn trust(&mut self, name: &[u8], now: Instant, out: &mut Vec<Output>) {
        let connection = self.connection.as_mut().expect("connected");
        let Some(fingerprint) = connection.keyring.trust(name) else {
            return out.error(&format!(
                "No key is known for '{}' on this connection.",
                show(name)
            ));
        };
        let record = self.memory.pin(&connection.server, name, &fingerprint);
        out.push(Output::Remember(record));
        out.event(UserEvent::Trusted {
            name: show(name),
            fingerprint: display_fingerprint(&fingerprint),
        });
        for text in connection.held_dms.remove(name).unwrap_or_default() {
            connection.queue.push_back(QueuedRequest::Dm {
                target: name.to_vec(),
                text,
                plaintext: false,
            });
        }
        self.dispatch(now, out);
    }

    /// `\whois NAME`.
    pub(super) fn whois(&mut self, name: &[u8], out: &mut Vec<Output>) {
        let connection = self.connection.as_ref().expect("connected");
        let Some((peer, trust)) = connection.keyring.peer(name) else {
            return out.error(&format!(
                "No key is known for '{}' on this connection.",
                show(name)
            ));
        };
        out.event(UserEvent::Whois {
            name: show(name),
            fingerprint: display_fingerprint(peer.fingerprint()),
            sha256: crate::transfer::hex(peer.fingerprint()),
            trust: trust_word(trust),
        });
    }
}

/// How the events name a [`Trust`].
fn trust_word(trust: Trust) -> &'static str {
    match trust {
        Trust::New => "new",
        Trust::Trusted => "trusted",
        Trust::Changed { .. } => "changed",
    }
}
