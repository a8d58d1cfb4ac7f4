//! The keys a client holds on one connection, and the bookkeeping that turns
//! "the MAC matched" into "this is a new message from this person, under a
//! key still in force".
//!
//! - **Peers** are kept by fingerprint, the SHA-256 of their signing key;
//!   names are only a map to them, since a name is whatever its holder
//!   chose last. Each peer has a [`Trust`]: the caller says which key it
//!   last saw under that name (trust on first use), and a different one is
//!   [`Trust::Changed`] until the user says otherwise. A rename is believed
//!   only when the key under the new name is the one under the old.
//! - **The room key** is kept for the one room (and incarnation) the client
//!   is in; another room's key, or an epoch other than the next (or the
//!   one a ROOM_REKEYING announced), is refused, so nobody can install a
//!   key for a room we are not in or freeze us on a forged epoch. The key it replaced still opens messages
//!   for [`EPOCH_GRACE`], because members who sent just before the rotation
//!   could not know about it. After a member leaves, sealing waits for the
//!   next key ([`Keyring::rekeying`]).
//! - **DM keys** are kept by key id and bound to the peer's fingerprint:
//!   either end may use a key that either of them requested, a rename does
//!   not orphan it, and at most [`DM_KEYS_PER_PEER`] are kept per peer.
//! - Under each key, each signer's counter must go up. The highest counter
//!   accepted is remembered per signer (by fingerprint), so an envelope or
//!   a file offer played again fails.
//!
//! Every issued key is unwrapped here, with the label that names its exact
//! use (room, incarnation, epoch and recipient; or key id and both ends).
//!
//! Time is passed in; nothing here reads a clock.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::envelope::{self, Envelope, Header, Kind, MessageKeys, TooLong};
use super::identity::{Fingerprint, Identity, PeerIdentity};
use super::{IssuedKey, VerificationFailed};
use parlor_proto::secure;

/// How long a superseded room key still opens messages.
pub const EPOCH_GRACE: Duration = Duration::from_secs(10);

/// How many DM keys are kept per peer: the newest by key id. Each costs the
/// server's work and our memory, and one is all a conversation needs; a few
/// more cover both ends asking at once.
pub const DM_KEYS_PER_PEER: usize = 4;

/// How far a peer's key is trusted to be the one its name stood for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trust {
    /// First sight: nothing was known under this name before. Trust on
    /// first use takes it, and the caller records it.
    New,
    /// The key seen under this name before, or one the user trusted.
    Trusted,
    /// A different key than the one seen under this name before: someone
    /// else may have the name now. Its messages still verify against this
    /// key, but are not the old holder's.
    Changed {
        /// The key seen under the name before.
        before: Fingerprint,
    },
}

impl Trust {
    /// Whether its messages may be shown as from the person the name meant.
    pub fn verified(&self) -> bool {
        !matches!(self, Trust::Changed { .. })
    }
}

/// What announcing a peer under a name came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAdded {
    /// Who it is.
    pub fingerprint: Fingerprint,
    /// How far to trust it under this name.
    pub trust: Trust,
    /// What is new about it.
    pub sighting: Sighting,
}

/// What an announcement told that was not known already.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sighting {
    /// Already known under this name: nothing new.
    Again,
    /// Not known under this name before (on this connection).
    New,
    /// The same person, renamed from `from`: the key under the old name
    /// was this one.
    Renamed {
        /// The name it had.
        from: Vec<u8>,
    },
    /// Announced as renamed from `from`, but the key under that name was
    /// another (or none): not believed; taken as a new name.
    RenameRefused {
        /// The name it claimed to have had.
        from: Vec<u8>,
    },
}

/// Why a message could not be sealed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// No key for this room or peer has arrived yet.
    #[error("no key yet")]
    NoKey,
    /// A member left: the key now held is one they hold too, and the next
    /// one is on its way.
    #[error("the room's key is being replaced")]
    Rekeying,
    /// The plaintext would not fit a text field once sealed.
    #[error(transparent)]
    TooLong(#[from] TooLong),
}

/// Why an issued key or a ROOM_REKEYING was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyRefused {
    /// For a room (or an incarnation of it) we are not in.
    #[error("it is for a room this client is not in")]
    NotOurRoom,
    /// Not the epoch after the current one.
    #[error("epoch {offered} does not follow the current epoch {current}")]
    BadEpoch {
        /// The epoch held.
        current: u32,
        /// The epoch offered.
        offered: u32,
    },
    /// From or with a peer whose identity was never announced.
    #[error("it names a peer whose key was never announced")]
    UnknownPeer,
    /// A key id already held: accepting it again would reset its counters
    /// and let old messages be replayed.
    #[error("key id {0} is already held")]
    Duplicate(u32),
    /// The wrap did not open under its label: not for us, or not for this.
    #[error("it does not unwrap for this use")]
    Unwrap,
}

/// A message opened: what it says and who signed it.
#[derive(Debug)]
pub struct Opened {
    /// The plaintext, wiped when dropped.
    pub plaintext: Zeroizing<Vec<u8>>,
    /// The signer.
    pub signer: Fingerprint,
    /// How far the signer is trusted under the name it wrote under.
    pub trust: Trust,
}

/// The key to seal something under, with the counter it takes.
#[derive(Debug)]
pub struct SendKey {
    /// The room epoch or DM key id.
    pub key_id: u32,
    /// The issued key: files derive their keys from it.
    pub issued: IssuedKey,
    /// The next counter under this key, now taken.
    pub counter: u64,
}

/// Which issued key something names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyRef<'a> {
    /// The key of this room epoch.
    Room {
        /// The room.
        room: &'a [u8],
        /// Its epoch.
        epoch: u32,
    },
    /// The DM key of this id.
    Dm {
        /// The key id.
        key_id: u32,
    },
}

/// All the keys of one connection. A new connection starts an empty one:
/// the server forgets everything about a user who logs off.
#[derive(Debug, Default)]
pub struct Keyring {
    peers: HashMap<Fingerprint, Peer>,
    names: HashMap<Vec<u8>, Fingerprint>,
    room: Option<RoomKeys>,
    dms: BTreeMap<u32, DmKey>,
}

#[derive(Debug)]
struct Peer {
    identity: PeerIdentity,
    trust: Trust,
}

/// One issued key with its counters.
#[derive(Debug)]
struct KeyState {
    issued: IssuedKey,
    keys: MessageKeys,
    /// The counter of our last message or offer under this key.
    sent: u64,
    /// The highest counter accepted from each signer under this key.
    seen: HashMap<Fingerprint, u64>,
}

impl KeyState {
    fn new(issued: IssuedKey) -> KeyState {
        KeyState {
            keys: MessageKeys::derive(&issued),
            issued,
            sent: 0,
            seen: HashMap::new(),
        }
    }

    fn take_counter(&mut self) -> u64 {
        self.sent += 1;
        self.sent
    }

    /// Records `counter` from `signer` if it is above the last accepted.
    fn accept(&mut self, signer: &Fingerprint, counter: u64) -> Result<(), VerificationFailed> {
        let last = self.seen.entry(*signer).or_insert(0);
        if counter <= *last {
            return Err(VerificationFailed);
        }
        *last = counter;
        Ok(())
    }

    fn fresh(&self, signer: &Fingerprint, counter: u64) -> bool {
        counter > self.seen.get(signer).copied().unwrap_or(0)
    }
}

#[derive(Debug)]
struct RoomKeys {
    room: Vec<u8>,
    incarnation: u64,
    current: Option<(u32, KeyState)>,
    previous: Option<Superseded>,
    /// After a departure: sealing waits until the epoch is at least this.
    hold_until: Option<u32>,
}

#[derive(Debug)]
struct Superseded {
    epoch: u32,
    state: KeyState,
    /// When the key that replaced it arrived.
    since: Instant,
}

impl RoomKeys {
    fn is(&self, room: &[u8], incarnation: u64) -> bool {
        self.room == room && self.incarnation == incarnation
    }

    /// The key of `epoch` if it still opens things at `now`.
    fn state(&mut self, epoch: u32, now: Instant) -> Option<&mut KeyState> {
        match (&mut self.current, &mut self.previous) {
            (Some((current, state)), _) if *current == epoch => Some(state),
            (_, Some(old)) if old.epoch == epoch && now.duration_since(old.since) < EPOCH_GRACE => {
                Some(&mut old.state)
            }
            _ => None,
        }
    }

    /// The epoch to seal under now, unless there is none or a rekeying
    /// holds it.
    fn sealing_epoch(&self) -> Result<u32, SealError> {
        let (epoch, _) = self.current.as_ref().ok_or(SealError::NoKey)?;
        if self.hold_until.is_some_and(|next| *epoch < next) {
            return Err(SealError::Rekeying);
        }
        Ok(*epoch)
    }

    /// The key to seal under now, with its epoch.
    fn sealing(&mut self) -> Result<(u32, &mut KeyState), SealError> {
        let epoch = self.sealing_epoch()?;
        let (_, state) = self.current.as_mut().expect("sealing_epoch found it");
        Ok((epoch, state))
    }
}

#[derive(Debug)]
struct DmKey {
    peer: Fingerprint,
    state: KeyState,
}

impl Keyring {
    // ---------------------------------------------------------------
    // Peers

    /// Records that `identity` is announced under `name`, `renamed_from`
    /// another name if the announcement says so. `pinned` is the
    /// fingerprint last seen under `name` (trust on first use: the caller
    /// keeps these across runs, and records a [`Trust::New`] one).
    pub fn add_peer(
        &mut self,
        name: &[u8],
        renamed_from: Option<&[u8]>,
        identity: PeerIdentity,
        pinned: Option<&Fingerprint>,
    ) -> PeerAdded {
        let fingerprint = *identity.fingerprint();
        let was = self.names.get(name).copied();
        let sighting = match renamed_from {
            Some(from) if self.names.get(from) == Some(&fingerprint) => {
                self.names.remove(from);
                Sighting::Renamed {
                    from: from.to_vec(),
                }
            }
            Some(from) => Sighting::RenameRefused {
                from: from.to_vec(),
            },
            None if was == Some(fingerprint) => Sighting::Again,
            None => Sighting::New,
        };
        let trust = match pinned {
            None => Trust::New,
            Some(pinned) if *pinned == fingerprint => Trust::Trusted,
            Some(&before) => Trust::Changed { before },
        };
        self.names.insert(name.to_vec(), fingerprint);
        self.peers
            .entry(fingerprint)
            .and_modify(|peer| peer.trust = trust)
            .or_insert(Peer { identity, trust });
        PeerAdded {
            fingerprint,
            trust,
            sighting,
        }
    }

    /// The peer now called `name`, and how far it is trusted.
    pub fn peer(&self, name: &[u8]) -> Option<(&PeerIdentity, Trust)> {
        let peer = self.peers.get(self.names.get(name)?)?;
        Some((&peer.identity, peer.trust))
    }

    /// The peer with this fingerprint, whatever its name.
    pub fn peer_by_fingerprint(&self, fingerprint: &Fingerprint) -> Option<&PeerIdentity> {
        self.peers.get(fingerprint).map(|peer| &peer.identity)
    }

    /// The name a peer was last announced under, if it still has it.
    pub fn name_of(&self, fingerprint: &Fingerprint) -> Option<&[u8]> {
        self.names
            .iter()
            .find(|(_, known)| *known == fingerprint)
            .map(|(name, _)| name.as_slice())
    }

    /// The user trusts the key now under `name`: returns it, to be
    /// recorded as the name's key.
    pub fn trust(&mut self, name: &[u8]) -> Option<Fingerprint> {
        let fingerprint = *self.names.get(name)?;
        self.peers.get_mut(&fingerprint)?.trust = Trust::Trusted;
        Some(fingerprint)
    }

    // ---------------------------------------------------------------
    // The room

    /// We are in `room` now, this incarnation of it: the keys of any other
    /// room go, and only this room's are accepted from now on.
    pub fn enter_room(&mut self, room: &[u8], incarnation: u64) {
        self.room = Some(RoomKeys {
            room: room.to_vec(),
            incarnation,
            current: None,
            previous: None,
            hold_until: None,
        });
    }

    /// We left the room: its keys go.
    pub fn leave_room(&mut self) {
        self.room = None;
    }

    /// Installs a room key (ROOM_KEY, `84`): only for the room and
    /// incarnation we are in, and after the first one only for the epoch
    /// after the current one, or the one a ROOM_REKEYING announced. The superseded key keeps
    /// opening messages for [`EPOCH_GRACE`] from `now`.
    pub fn add_room_key(
        &mut self,
        identity: &Identity,
        room: &[u8],
        incarnation: u64,
        epoch: u32,
        wrapped: &[u8],
        now: Instant,
    ) -> Result<(), KeyRefused> {
        let keys = self
            .room
            .as_mut()
            .filter(|keys| keys.is(room, incarnation))
            .ok_or(KeyRefused::NotOurRoom)?;
        if let Some((current, _)) = &keys.current {
            // The epoch a ROOM_REKEYING announced is taken even past a gap:
            // in a cluster, a node taking a room over announces the epoch
            // after the last one committed, which its predecessor may not
            // have delivered.
            let announced = keys.hold_until == Some(epoch) && epoch > *current;
            if current.checked_add(1) != Some(epoch) && !announced {
                return Err(KeyRefused::BadEpoch {
                    current: *current,
                    offered: epoch,
                });
            }
        }
        let label = secure::room_key_label(room, incarnation, epoch, identity.fingerprint());
        let issued = identity
            .unwrap_key(wrapped, &label)
            .map_err(|_| KeyRefused::Unwrap)?;
        let new = (epoch, KeyState::new(issued));
        if let Some((old, state)) = keys.current.replace(new) {
            keys.previous = Some(Superseded {
                epoch: old,
                state,
                since: now,
            });
        }
        if keys.hold_until.is_some_and(|next| epoch >= next) {
            keys.hold_until = None;
        }
        Ok(())
    }

    /// ROOM_REKEYING (`95`): a member left, and the key of `next_epoch`
    /// will not be theirs. Until it arrives nothing is sealed under the
    /// current one ([`SealError::Rekeying`]), which they hold.
    pub fn rekeying(
        &mut self,
        room: &[u8],
        incarnation: u64,
        next_epoch: u32,
    ) -> Result<(), KeyRefused> {
        let keys = self
            .room
            .as_mut()
            .filter(|keys| keys.is(room, incarnation))
            .ok_or(KeyRefused::NotOurRoom)?;
        let current = keys.current.as_ref().map_or(0, |(epoch, _)| *epoch);
        if next_epoch > current {
            keys.hold_until = keys.hold_until.max(Some(next_epoch));
        }
        Ok(())
    }

    /// The epoch sealing uses now in `room`, unless there is none or a
    /// rekeying holds it.
    pub fn room_epoch(&self, room: &[u8]) -> Result<u32, SealError> {
        let keys = self.room.as_ref().filter(|keys| keys.room == room);
        keys.ok_or(SealError::NoKey)?.sealing_epoch()
    }

    /// The issued key of a room epoch while it opens things: the current
    /// one, or the one before it within [`EPOCH_GRACE`] of being replaced.
    pub fn room_key(&mut self, room: &[u8], epoch: u32, now: Instant) -> Option<&IssuedKey> {
        let state = self.our_room(room)?.state(epoch, now)?;
        Some(&state.issued)
    }

    fn our_room(&mut self, room: &[u8]) -> Option<&mut RoomKeys> {
        self.room.as_mut().filter(|keys| keys.room == room)
    }

    // ---------------------------------------------------------------
    // DMs

    /// Installs a DM key shared with the peer `peer` (DM_KEY, `80`, or
    /// DM_KEY_ISSUED, `89`), whose identity must be known. A key id
    /// already held is refused; past [`DM_KEYS_PER_PEER`] keys with one
    /// peer, the oldest go.
    pub fn add_dm_key(
        &mut self,
        identity: &Identity,
        key_id: u32,
        peer: &Fingerprint,
        wrapped: &[u8],
    ) -> Result<(), KeyRefused> {
        if !self.peers.contains_key(peer) {
            return Err(KeyRefused::UnknownPeer);
        }
        if self.dms.contains_key(&key_id) {
            return Err(KeyRefused::Duplicate(key_id));
        }
        let label = secure::dm_key_label(key_id, identity.fingerprint(), peer);
        let issued = identity
            .unwrap_key(wrapped, &label)
            .map_err(|_| KeyRefused::Unwrap)?;
        self.dms.insert(
            key_id,
            DmKey {
                peer: *peer,
                state: KeyState::new(issued),
            },
        );
        let held: Vec<u32> = self.dm_key_ids(peer).collect();
        for old in &held[..held.len().saturating_sub(DM_KEYS_PER_PEER)] {
            self.dms.remove(old);
        }
        Ok(())
    }

    /// The ids of the DM keys shared with `peer`, oldest first.
    fn dm_key_ids<'a>(&'a self, peer: &'a Fingerprint) -> impl Iterator<Item = u32> + 'a {
        self.dms
            .iter()
            .filter(move |(_, dm)| dm.peer == *peer)
            .map(|(&id, _)| id)
    }

    /// The newest DM key shared with the peer now called `name`.
    pub fn dm_key_id(&self, name: &[u8]) -> Option<u32> {
        self.dm_key_ids(self.names.get(name)?).last()
    }

    /// The issued DM key with this id and the peer it is shared with.
    pub fn dm_key(&self, key_id: u32) -> Option<(&PeerIdentity, &IssuedKey)> {
        let dm = self.dms.get(&key_id)?;
        Some((&self.peers.get(&dm.peer)?.identity, &dm.state.issued))
    }

    // ---------------------------------------------------------------
    // Sealing and opening

    /// Seals a message to `room` under its current epoch.
    pub fn seal_room(
        &mut self,
        room: &[u8],
        me: &[u8],
        identity: &Identity,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        let keys = self.our_room(room).ok_or(SealError::NoKey)?;
        let (epoch, state) = keys.sealing()?;
        seal(Kind::Room, room, me, epoch, state, identity, plaintext)
    }

    /// Seals a DM to the peer now called `peer` under the newest key
    /// shared with it.
    pub fn seal_dm(
        &mut self,
        peer: &[u8],
        me: &[u8],
        identity: &Identity,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        let key_id = self.dm_key_id(peer).ok_or(SealError::NoKey)?;
        let dm = self
            .dms
            .get_mut(&key_id)
            .expect("dm_key_id returns held keys");
        seal(
            Kind::Direct,
            peer,
            me,
            key_id,
            &mut dm.state,
            identity,
            plaintext,
        )
    }

    /// The current room key and the next counter under it, for a file
    /// offer: offers and messages share one counter, so a replayed offer
    /// fails like a replayed message.
    pub fn room_send_key(&mut self, room: &[u8]) -> Result<SendKey, SealError> {
        let keys = self.our_room(room).ok_or(SealError::NoKey)?;
        let (epoch, state) = keys.sealing()?;
        Ok(send_key(epoch, state))
    }

    /// [`Keyring::room_send_key`] for the newest DM key shared with `peer`.
    pub fn dm_send_key(&mut self, peer: &[u8]) -> Result<SendKey, SealError> {
        let key_id = self.dm_key_id(peer).ok_or(SealError::NoKey)?;
        let dm = self
            .dms
            .get_mut(&key_id)
            .expect("dm_key_id returns held keys");
        Ok(send_key(key_id, &mut dm.state))
    }

    /// Accepts `counter` from `signer` under `key` (a file offer's, once
    /// its signature checked out): it must be above every counter accepted
    /// from that signer under that key, messages included.
    pub fn accept_counter(
        &mut self,
        key: KeyRef,
        signer: &Fingerprint,
        counter: u64,
        now: Instant,
    ) -> Result<(), VerificationFailed> {
        let state = match key {
            KeyRef::Room { room, epoch } => {
                self.our_room(room).and_then(|keys| keys.state(epoch, now))
            }
            KeyRef::Dm { key_id } => self
                .dms
                .get_mut(&key_id)
                .filter(|dm| dm.peer == *signer)
                .map(|dm| &mut dm.state),
        };
        state.ok_or(VerificationFailed)?.accept(signer, counter)
    }

    /// Opens a ROOM_MSG relayed in `room` from `sender`.
    pub fn open_room(
        &mut self,
        room: &[u8],
        sender: &[u8],
        text: &[u8],
        now: Instant,
    ) -> Result<Opened, VerificationFailed> {
        self.open(Kind::Room, room, sender, text, now)
    }

    /// Opens a DM relayed from `sender` to us, currently called `me`.
    pub fn open_dm(
        &mut self,
        me: &[u8],
        sender: &[u8],
        text: &[u8],
        now: Instant,
    ) -> Result<Opened, VerificationFailed> {
        self.open(Kind::Direct, me, sender, text, now)
    }

    /// The checks of the envelope, in order: parse; the envelope agrees
    /// with its frame; the key is held (and an older room epoch is within
    /// its grace); the MAC; the signature; the counter; decrypt.
    fn open(
        &mut self,
        kind: Kind,
        context: &[u8],
        sender: &[u8],
        text: &[u8],
        now: Instant,
    ) -> Result<Opened, VerificationFailed> {
        let envelope = Envelope::parse(text)?;
        let header = envelope.header;
        if header.kind != kind || header.context != context || header.sender != sender {
            return Err(VerificationFailed);
        }
        // A room message is signed by whoever the sender's name belongs to
        // now; a DM only by the other end of its key, whatever its name.
        let (state, signer) = match kind {
            Kind::Room => {
                let signer = *self.names.get(sender).ok_or(VerificationFailed)?;
                let keys = self.room.as_mut().filter(|keys| keys.room == context);
                let state = keys
                    .and_then(|keys| keys.state(header.epoch, now))
                    .ok_or(VerificationFailed)?;
                (state, signer)
            }
            Kind::Direct => {
                let dm = self.dms.get_mut(&header.epoch).ok_or(VerificationFailed)?;
                (&mut dm.state, dm.peer)
            }
        };
        let peer = self.peers.get(&signer).ok_or(VerificationFailed)?;
        let authenticated = envelope.check_mac(&state.keys)?;
        authenticated.check_signature(&peer.identity)?;
        if !state.fresh(&signer, header.counter) {
            return Err(VerificationFailed);
        }
        let plaintext = authenticated.decrypt();
        state.accept(&signer, header.counter)?;
        Ok(Opened {
            plaintext,
            signer,
            trust: peer.trust,
        })
    }
}

fn send_key(key_id: u32, state: &mut KeyState) -> SendKey {
    SendKey {
        key_id,
        issued: state.issued.clone(),
        counter: state.take_counter(),
    }
}

fn seal(
    kind: Kind,
    context: &[u8],
    me: &[u8],
    epoch: u32,
    state: &mut KeyState,
    identity: &Identity,
    plaintext: &[u8],
) -> Result<Vec<u8>, SealError> {
    let header = Header {
        kind,
        context,
        sender: me,
        epoch,
        counter: state.sent + 1,
    };
    let text = envelope::seal(&header, &state.keys, plaintext, identity)?;
    state.sent += 1;
    Ok(text)
}

#[cfg(test)]
mod tests;
