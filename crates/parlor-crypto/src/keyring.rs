//! The keys a client holds, and the bookkeeping that turns "the MAC matched"
//! into "this is a new message from who it says, under a key still in force".
//!
//! - Room keys are kept per room and epoch. A new epoch replaces the current
//!   one at once for sending; the one it replaced still opens messages for
//!   [`EPOCH_GRACE`], because members who sent just before the rotation could
//!   not know about it. After that, an old-epoch envelope is a replay.
//! - DM keys are kept by key id and bound to the peer's public key, not its
//!   name: either end may use a key that either of them requested, and a
//!   rename does not orphan it.
//! - Under each key, each sender's counter must go up. The highest counter
//!   accepted is remembered per sender, so an envelope played again fails.
//!
//! Time is passed in; nothing here reads a clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::envelope::{self, Envelope, Header, Kind, MessageKeys, TooLong};
use super::identity::{Identity, PeerKey};
use super::{IssuedKey, VerificationFailed};

/// How long a superseded room key still opens messages.
pub const EPOCH_GRACE: Duration = Duration::from_secs(10);

/// All the keys of one connection. A new connection starts an empty one:
/// the server forgets everything about a user who logs off.
#[derive(Debug, Default)]
pub struct Keyring {
    peers: HashMap<Vec<u8>, PeerKey>,
    rooms: HashMap<Vec<u8>, RoomKeys>,
    dms: HashMap<u32, DmKey>,
}

/// Why a message could not be sealed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// No key for this room or peer has arrived yet; the client holds the
    /// message until one does.
    #[error("no key yet")]
    NoKey,
    /// The plaintext would not fit a text field once sealed.
    #[error(transparent)]
    TooLong(#[from] TooLong),
}

/// One issued key with its counters.
#[derive(Debug)]
struct KeyState {
    /// The issued key itself: files derive their own keys from it
    /// ([`super::file::FileKeys`]).
    issued: IssuedKey,
    keys: MessageKeys,
    /// The counter of our last message under this key.
    sent: u64,
    /// The highest counter accepted from each sender under this key.
    seen: HashMap<Vec<u8>, u64>,
}

impl KeyState {
    fn new(issued: &IssuedKey) -> KeyState {
        KeyState {
            issued: issued.clone(),
            keys: MessageKeys::derive(issued),
            sent: 0,
            seen: HashMap::new(),
        }
    }
}

#[derive(Debug)]
struct RoomKeys {
    epoch: u32,
    current: KeyState,
    superseded: Vec<Superseded>,
}

#[derive(Debug)]
struct Superseded {
    epoch: u32,
    state: KeyState,
    /// When the key that replaced it arrived.
    since: Instant,
}

impl RoomKeys {
    fn forget_expired(&mut self, now: Instant) {
        self.superseded
            .retain(|old| now.saturating_duration_since(old.since) < EPOCH_GRACE);
    }
}

#[derive(Debug)]
struct DmKey {
    peer: PeerKey,
    state: KeyState,
}

impl Keyring {
    /// Records a user's public key. A known key under a new name is a rename,
    /// so the old name is dropped and returned.
    pub fn add_peer(&mut self, name: &[u8], key: PeerKey) -> Option<Vec<u8>> {
        let old_name = self
            .peers
            .iter()
            .find(|(known, known_key)| known.as_slice() != name && known_key.same_key(&key))
            .map(|(known, _)| known.clone());
        if let Some(old) = &old_name {
            self.peers.remove(old);
        }
        self.peers.insert(name.to_vec(), key);
        old_name
    }

    /// Whether a key for `name` was announced: a DM to a user without one
    /// goes out in plaintext.
    pub fn has_peer(&self, name: &[u8]) -> bool {
        self.peers.contains_key(name)
    }

    /// The public key of the user now called `name`, if it was announced.
    pub fn peer(&self, name: &[u8]) -> Option<&PeerKey> {
        self.peers.get(name)
    }

    /// Installs a room key. A newer epoch becomes current and the one it
    /// replaces starts its grace period; an epoch not above the current one
    /// changes nothing and returns false.
    pub fn add_room_key(
        &mut self,
        room: &[u8],
        epoch: u32,
        issued: &IssuedKey,
        now: Instant,
    ) -> bool {
        let Some(keys) = self.rooms.get_mut(room) else {
            self.rooms.insert(
                room.to_vec(),
                RoomKeys {
                    epoch,
                    current: KeyState::new(issued),
                    superseded: Vec::new(),
                },
            );
            return true;
        };
        if epoch <= keys.epoch {
            return false;
        }
        let old = std::mem::replace(&mut keys.current, KeyState::new(issued));
        keys.superseded.push(Superseded {
            epoch: keys.epoch,
            state: old,
            since: now,
        });
        keys.epoch = epoch;
        keys.forget_expired(now);
        true
    }

    /// The current epoch of a room, if we hold a key for it.
    pub fn room_epoch(&self, room: &[u8]) -> Option<u32> {
        self.rooms.get(room).map(|keys| keys.epoch)
    }

    /// The issued key of a room epoch, current or superseded, while we
    /// hold it: a file offered under it derives its chunk keys from it.
    pub fn room_key(&self, room: &[u8], epoch: u32) -> Option<&IssuedKey> {
        let keys = self.rooms.get(room)?;
        if keys.epoch == epoch {
            return Some(&keys.current.issued);
        }
        keys.superseded
            .iter()
            .find(|old| old.epoch == epoch)
            .map(|old| &old.state.issued)
    }

    /// Drops every key of a room we left.
    pub fn forget_room(&mut self, room: &[u8]) {
        self.rooms.remove(room);
    }

    /// Installs a DM key shared with `peer`, whose public key must already be
    /// known (the server sends it first, in `81` or `89`).
    pub fn add_dm_key(
        &mut self,
        key_id: u32,
        peer: &[u8],
        issued: &IssuedKey,
    ) -> Result<(), VerificationFailed> {
        let peer = self.peers.get(peer).ok_or(VerificationFailed)?.clone();
        let state = KeyState::new(issued);
        self.dms.insert(key_id, DmKey { peer, state });
        Ok(())
    }

    /// The newest DM key shared with the user now called `peer`.
    pub fn dm_key_id(&self, peer: &[u8]) -> Option<u32> {
        let peer = self.peers.get(peer)?;
        self.dms
            .iter()
            .filter(|(_, dm)| dm.peer.same_key(peer))
            .map(|(&id, _)| id)
            .max()
    }

    /// The issued DM key with this id and the public key of the peer it is
    /// shared with.
    pub fn dm_key(&self, key_id: u32) -> Option<(&PeerKey, &IssuedKey)> {
        self.dms.get(&key_id).map(|dm| (&dm.peer, &dm.state.issued))
    }

    /// Seals a message to `room` under its current epoch.
    pub fn seal_room(
        &mut self,
        room: &[u8],
        me: &[u8],
        identity: &Identity,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        let keys = self.rooms.get_mut(room).ok_or(SealError::NoKey)?;
        seal(
            Kind::Room,
            room,
            me,
            keys.epoch,
            &mut keys.current,
            identity,
            plaintext,
        )
    }

    /// Seals a DM to `peer` under the newest key shared with it.
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

    /// Opens a ROOM_MSG relayed in `room` from `sender`.
    pub fn open_room(
        &mut self,
        room: &[u8],
        sender: &[u8],
        text: &[u8],
        now: Instant,
    ) -> Result<Zeroizing<Vec<u8>>, VerificationFailed> {
        self.open(Kind::Room, room, sender, text, now)
    }

    /// Opens a DM relayed from `sender` to us, currently called `me`.
    pub fn open_dm(
        &mut self,
        me: &[u8],
        sender: &[u8],
        text: &[u8],
        now: Instant,
    ) -> Result<Zeroizing<Vec<u8>>, VerificationFailed> {
        self.open(Kind::Direct, me, sender, text, now)
    }

    /// The checks of PROTOCOL.md §12.7, in its order.
    fn open(
        &mut self,
        kind: Kind,
        context: &[u8],
        sender: &[u8],
        text: &[u8],
        now: Instant,
    ) -> Result<Zeroizing<Vec<u8>>, VerificationFailed> {
        // 1. parse; 2. version, and the envelope agrees with its frame.
        let envelope = Envelope::parse(text)?;
        let header = envelope.header;
        if header.kind != kind || header.context != context || header.sender != sender {
            return Err(VerificationFailed);
        }
        // 3. the key, and for an older room epoch, its grace period. A room
        // message is signed by whoever the sender's name belongs to; a DM
        // only by the other end of its key, under whatever name it has now.
        let (state, signer) = match kind {
            Kind::Room => {
                let signer = self.peers.get(sender).ok_or(VerificationFailed)?;
                let keys = self.rooms.get_mut(context).ok_or(VerificationFailed)?;
                keys.forget_expired(now);
                let state = if header.epoch == keys.epoch {
                    &mut keys.current
                } else {
                    let old = keys
                        .superseded
                        .iter_mut()
                        .find(|old| old.epoch == header.epoch);
                    &mut old.ok_or(VerificationFailed)?.state
                };
                (state, signer)
            }
            Kind::Direct => {
                let DmKey { peer, state } =
                    self.dms.get_mut(&header.epoch).ok_or(VerificationFailed)?;
                (state, &*peer)
            }
        };
        // 4. the MAC, before anything touches the ciphertext.
        let authenticated = envelope.check_mac(&state.keys)?;
        // 5. the signature.
        authenticated.check_signature(signer)?;
        // 6. the counter.
        let last = state.seen.get(sender).copied().unwrap_or(0);
        if header.counter <= last {
            return Err(VerificationFailed);
        }
        // 7. decrypt and unpad.
        let plaintext = authenticated.decrypt()?;
        state.seen.insert(sender.to_vec(), header.counter);
        // A DM peer who renamed outside any shared secure room is announced
        // to nobody (PROTOCOL.md §12.2); its signature just proved the new
        // name, so replies find the key under it.
        if kind == Kind::Direct
            && !self
                .peers
                .get(sender)
                .is_some_and(|key| key.same_key(signer))
        {
            let signer = signer.clone();
            self.add_peer(sender, signer);
        }
        Ok(plaintext)
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
mod tests {
    use super::*;
    use crate::kat;

    /// Bob's keyring: he knows alice's key and holds vault's epoch 3 key
    /// since `now`.
    fn bob_in_vault(now: Instant) -> Keyring {
        let mut keyring = Keyring::default();
        keyring.add_peer(kat::SENDER, kat::peer_key());
        assert!(keyring.add_room_key(kat::ROOM, kat::EPOCH, &kat::issued_key(), now));
        keyring
    }

    fn alice_in_vault(now: Instant) -> Keyring {
        let mut keyring = Keyring::default();
        keyring.add_room_key(kat::ROOM, kat::EPOCH, &kat::issued_key(), now);
        keyring
    }

    fn other_key(seed: u8) -> IssuedKey {
        IssuedKey::new([seed; 32])
    }

    /// The envelope field that holds byte `offset` of the KAT envelope.
    fn field_at(offset: usize) -> &'static str {
        match offset {
            0 => "version",
            1 => "kind",
            2..=7 => "context",
            8..=13 => "sender",
            14..=17 => "epoch",
            18..=25 => "counter",
            26..=41 => "iv",
            42..=75 => "ciphertext",
            76..=107 => "mac",
            _ => "signature",
        }
    }

    #[test]
    fn opens_the_known_answer_envelope_once() {
        let now = Instant::now();
        let mut bob = bob_in_vault(now);
        let text = kat::openssl_envelope();
        let plaintext = bob.open_room(kat::ROOM, kat::SENDER, &text, now).unwrap();
        assert_eq!(plaintext.as_slice(), kat::PLAINTEXT);
        assert_eq!(
            bob.open_room(kat::ROOM, kat::SENDER, &text, now),
            Err(VerificationFailed),
            "a replay"
        );
    }

    #[test]
    fn any_changed_byte_in_any_field_fails() {
        let now = Instant::now();
        let mut bob = bob_in_vault(now);
        let text = kat::openssl_envelope();
        for offset in 0..text.len() {
            for flip in [0x01, 0x80] {
                let mut changed = text.clone();
                changed[offset] ^= flip;
                assert_eq!(
                    bob.open_room(kat::ROOM, kat::SENDER, &changed, now),
                    Err(VerificationFailed),
                    "{} byte {offset} ^ {flip:02x}",
                    field_at(offset)
                );
            }
        }
        // The failures left no trace: the genuine envelope still opens.
        assert!(bob.open_room(kat::ROOM, kat::SENDER, &text, now).is_ok());
    }

    #[test]
    fn the_envelope_must_agree_with_its_frame() {
        let now = Instant::now();
        let mut bob = bob_in_vault(now);
        bob.add_peer(
            b"carol",
            PeerKey::from_der(Identity::generate(2048).unwrap().public_key_der()).unwrap(),
        );
        bob.add_room_key(b"other", kat::EPOCH, &kat::issued_key(), now);
        let text = kat::openssl_envelope();
        assert!(
            bob.open_room(kat::ROOM, b"carol", &text, now).is_err(),
            "relayed as carol's"
        );
        assert!(
            bob.open_room(b"other", kat::SENDER, &text, now).is_err(),
            "relayed in another room"
        );
        assert!(
            bob.open_dm(kat::ROOM, kat::SENDER, &text, now).is_err(),
            "relayed as a DM"
        );
        assert!(bob.open_room(kat::ROOM, kat::SENDER, &text, now).is_ok());
    }

    #[test]
    fn a_different_key_under_the_same_epoch_fails() {
        let now = Instant::now();
        let mut eve = Keyring::default();
        eve.add_peer(kat::SENDER, kat::peer_key());
        eve.add_room_key(kat::ROOM, kat::EPOCH, &other_key(7), now);
        let text = kat::openssl_envelope();
        assert!(eve.open_room(kat::ROOM, kat::SENDER, &text, now).is_err());
    }

    #[test]
    fn a_member_cannot_write_in_another_members_name() {
        let now = Instant::now();
        let mut bob = bob_in_vault(now);
        // Mallory holds the room key, so her MAC is good; her signature is not alice's.
        let mallory = Identity::generate(2048).unwrap();
        let header = Header {
            counter: 2,
            ..kat::header()
        };
        let keys = MessageKeys::derive(&kat::issued_key());
        let forged = envelope::seal(&header, &keys, b"send the codes", &mallory).unwrap();
        assert!(bob.open_room(kat::ROOM, kat::SENDER, &forged, now).is_err());
    }

    #[test]
    fn counters_must_go_up_per_sender() {
        let now = Instant::now();
        let identity = kat::identity();
        let mut alice = alice_in_vault(now);
        let mut bob = bob_in_vault(now);
        let seal = |alice: &mut Keyring, text: &[u8]| {
            alice
                .seal_room(kat::ROOM, kat::SENDER, &identity, text)
                .unwrap()
        };
        let first = seal(&mut alice, b"one");
        let second = seal(&mut alice, b"two");
        let third = seal(&mut alice, b"three");
        assert_eq!(Envelope::parse(&third).unwrap().header.counter, 3);
        let open =
            |bob: &mut Keyring, text: &[u8]| bob.open_room(kat::ROOM, kat::SENDER, text, now);
        assert_eq!(open(&mut bob, &second).unwrap().as_slice(), b"two");
        assert!(
            open(&mut bob, &first).is_err(),
            "below the last counter accepted"
        );
        assert!(open(&mut bob, &second).is_err(), "equal to it");
        assert_eq!(open(&mut bob, &third).unwrap().as_slice(), b"three");
    }

    #[test]
    fn a_superseded_epoch_opens_only_within_the_grace_period() {
        let start = Instant::now();
        let identity = kat::identity();
        let mut alice = alice_in_vault(start);
        let late = alice
            .seal_room(kat::ROOM, kat::SENDER, &identity, b"late")
            .unwrap();
        let too_late = alice
            .seal_room(kat::ROOM, kat::SENDER, &identity, b"too late")
            .unwrap();

        let mut bob = bob_in_vault(start);
        let rotated = start + Duration::from_secs(60);
        assert!(bob.add_room_key(kat::ROOM, kat::EPOCH + 1, &other_key(4), rotated));
        assert_eq!(bob.room_epoch(kat::ROOM), Some(kat::EPOCH + 1));
        let just_in = rotated + EPOCH_GRACE - Duration::from_millis(1);
        let open =
            |bob: &mut Keyring, text: &[u8], now| bob.open_room(kat::ROOM, kat::SENDER, text, now);
        assert_eq!(open(&mut bob, &late, just_in).unwrap().as_slice(), b"late");
        assert!(open(&mut bob, &too_late, rotated + EPOCH_GRACE).is_err());
    }

    #[test]
    fn epochs_never_held_do_not_open_even_between_held_ones() {
        let now = Instant::now();
        let identity = kat::identity();
        // Alice was in the room at epochs 3, 4 and 5; bob left after 3 and
        // came back at 5, so he never received the key of epoch 4.
        let mut alice = alice_in_vault(now);
        alice.add_room_key(kat::ROOM, 4, &other_key(4), now);
        let while_away = alice
            .seal_room(kat::ROOM, kat::SENDER, &identity, b"while away")
            .unwrap();
        alice.add_room_key(kat::ROOM, 5, &other_key(5), now);
        let mut bob = bob_in_vault(now);
        bob.add_room_key(kat::ROOM, 5, &other_key(5), now);
        assert!(bob
            .open_room(kat::ROOM, kat::SENDER, &while_away, now)
            .is_err());
        // And sealing uses the current epoch.
        let back = alice
            .seal_room(kat::ROOM, kat::SENDER, &identity, b"back")
            .unwrap();
        assert_eq!(
            bob.open_room(kat::ROOM, kat::SENDER, &back, now)
                .unwrap()
                .as_slice(),
            b"back"
        );
    }

    #[test]
    fn stale_room_keys_change_nothing_and_leaving_forgets_them() {
        let now = Instant::now();
        let mut bob = bob_in_vault(now);
        assert!(!bob.add_room_key(kat::ROOM, kat::EPOCH, &other_key(1), now));
        assert!(!bob.add_room_key(kat::ROOM, kat::EPOCH - 1, &other_key(1), now));
        let text = kat::openssl_envelope();
        assert!(bob.open_room(kat::ROOM, kat::SENDER, &text, now).is_ok());
        bob.forget_room(kat::ROOM);
        assert_eq!(bob.room_epoch(kat::ROOM), None);
        let identity = kat::identity();
        assert_eq!(
            bob.seal_room(kat::ROOM, b"bob", &identity, b"x"),
            Err(SealError::NoKey)
        );
    }

    #[test]
    fn both_ends_of_a_dm_key_use_it_and_only_they_can() {
        let now = Instant::now();
        let (alice_id, bob_id) = (kat::identity(), Identity::generate(2048).unwrap());
        let bob_key = PeerKey::from_der(bob_id.public_key_der()).unwrap();
        let dm_key = other_key(9);
        let mut alice = Keyring::default();
        alice.add_peer(b"bob", bob_key.clone());
        alice.add_dm_key(7, b"bob", &dm_key).unwrap();
        let mut bob = Keyring::default();
        bob.add_peer(b"alice", kat::peer_key());
        bob.add_dm_key(7, b"alice", &dm_key).unwrap();

        let hello = alice
            .seal_dm(b"bob", b"alice", &alice_id, b"hi bob")
            .unwrap();
        assert_eq!(
            bob.open_dm(b"bob", b"alice", &hello, now)
                .unwrap()
                .as_slice(),
            b"hi bob"
        );
        assert!(
            bob.open_dm(b"bob", b"alice", &hello, now).is_err(),
            "a replay"
        );
        let reply = bob.seal_dm(b"alice", b"bob", &bob_id, b"hi alice").unwrap();
        assert!(
            alice.open_dm(b"carol", b"bob", &reply, now).is_err(),
            "addressed to alice"
        );
        assert_eq!(
            alice
                .open_dm(b"alice", b"bob", &reply, now)
                .unwrap()
                .as_slice(),
            b"hi alice"
        );

        // Were the key to leak to mallory, her DMs under it would still fail:
        // key 7 belongs to alice and bob.
        let mallory = Identity::generate(2048).unwrap();
        bob.add_peer(
            b"mallory",
            PeerKey::from_der(mallory.public_key_der()).unwrap(),
        );
        let header = Header {
            kind: Kind::Direct,
            context: b"bob",
            sender: b"mallory",
            epoch: 7,
            counter: 1,
        };
        let forged =
            envelope::seal(&header, &MessageKeys::derive(&dm_key), b"hi", &mallory).unwrap();
        assert!(bob.open_dm(b"bob", b"mallory", &forged, now).is_err());
    }

    #[test]
    fn a_dm_from_a_peer_renamed_out_of_sight_opens_and_teaches_the_name() {
        let now = Instant::now();
        let bob_key =
            PeerKey::from_der(Identity::generate(2048).unwrap().public_key_der()).unwrap();
        let mut alice = Keyring::default();
        alice.add_peer(b"bob", bob_key);
        alice.add_dm_key(3, b"bob", &other_key(3)).unwrap();
        let mut bob = Keyring::default();
        bob.add_peer(b"alice", kat::peer_key());
        bob.add_dm_key(3, b"alice", &other_key(3)).unwrap();

        // Alice is "alicia" now, and nothing told bob.
        let text = alice
            .seal_dm(b"bob", b"alicia", &kat::identity(), b"new name")
            .unwrap();
        let opened = bob.open_dm(b"bob", b"alicia", &text, now).unwrap();
        assert_eq!(opened.as_slice(), b"new name");
        assert!(bob.has_peer(b"alicia") && !bob.has_peer(b"alice"));
        assert_eq!(bob.dm_key_id(b"alicia"), Some(3));
    }

    #[test]
    fn issued_keys_are_there_for_files_while_held() {
        let now = Instant::now();
        let mut bob = bob_in_vault(now);
        assert_eq!(
            bob.room_key(kat::ROOM, kat::EPOCH),
            Some(&kat::issued_key())
        );
        bob.add_room_key(kat::ROOM, kat::EPOCH + 1, &other_key(4), now);
        assert_eq!(bob.room_key(kat::ROOM, kat::EPOCH + 1), Some(&other_key(4)));
        assert_eq!(
            bob.room_key(kat::ROOM, kat::EPOCH),
            Some(&kat::issued_key())
        );
        assert_eq!(bob.room_key(kat::ROOM, kat::EPOCH + 2), None);
        assert_eq!(bob.room_key(b"other", kat::EPOCH), None);
        assert!(bob.dm_key(1).is_none());
        bob.add_dm_key(1, kat::SENDER, &other_key(1)).unwrap();
        let (peer, key) = bob.dm_key(1).unwrap();
        assert!(peer.same_key(bob.peer(kat::SENDER).unwrap()));
        assert_eq!(key, &other_key(1));
    }

    #[test]
    fn dm_keys_need_the_peers_public_key_and_survive_a_rename() {
        let mut alice = Keyring::default();
        assert_eq!(
            alice.add_dm_key(1, b"bob", &other_key(1)),
            Err(VerificationFailed)
        );
        alice.add_peer(b"bob", kat::peer_key());
        alice.add_dm_key(1, b"bob", &other_key(1)).unwrap();
        alice.add_dm_key(4, b"bob", &other_key(4)).unwrap();
        assert_eq!(alice.dm_key_id(b"bob"), Some(4), "the newest key");
        assert_eq!(
            alice.add_peer(b"robert", kat::peer_key()),
            Some(b"bob".to_vec())
        );
        assert!(!alice.has_peer(b"bob"));
        assert_eq!(alice.dm_key_id(b"bob"), None);
        assert_eq!(alice.dm_key_id(b"robert"), Some(4));
    }
}
