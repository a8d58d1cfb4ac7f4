use std::sync::OnceLock;

use super::*;
use crate::kat;

const INCARNATION: u64 = kat::INCARNATION;

/// Bob, who receives: one identity for every test (RSA keys are slow to
/// make).
fn bob() -> &'static Identity {
    static BOB: OnceLock<Identity> = OnceLock::new();
    BOB.get_or_init(|| Identity::generate(2048).unwrap())
}

fn mallory() -> &'static Identity {
    static MALLORY: OnceLock<Identity> = OnceLock::new();
    MALLORY.get_or_init(|| Identity::generate(2048).unwrap())
}

fn peer(identity: &Identity, name: &[u8]) -> PeerIdentity {
    PeerIdentity::from_block(&identity.block(name), name).unwrap()
}

fn other_key(seed: u8) -> IssuedKey {
    IssuedKey::new([seed; 32])
}

/// The server's `84` for `to`: `key` wrapped under the label of this
/// room, incarnation and epoch.
fn room_wrap(to: &Identity, room: &[u8], incarnation: u64, epoch: u32, key: &IssuedKey) -> Vec<u8> {
    let label = secure::room_key_label(room, incarnation, epoch, to.fingerprint());
    kat::wrap(to.rsa_der(), key, &label)
}

fn add_room_key(ring: &mut Keyring, to: &Identity, epoch: u32, key: &IssuedKey, now: Instant) {
    let wrapped = room_wrap(to, kat::ROOM, INCARNATION, epoch, key);
    ring.add_room_key(to, kat::ROOM, INCARNATION, epoch, &wrapped, now)
        .unwrap();
}

fn dm_wrap(to: &Identity, key_id: u32, other: &Fingerprint, key: &IssuedKey) -> Vec<u8> {
    let label = secure::dm_key_label(key_id, to.fingerprint(), other);
    kat::wrap(to.rsa_der(), key, &label)
}

/// Bob's keyring: he knows alice, is in vault and holds its epoch 3 key
/// since `now`.
fn bob_in_vault(now: Instant) -> Keyring {
    let mut ring = Keyring::default();
    ring.add_peer(kat::SENDER, None, kat::peer(), None);
    ring.enter_room(kat::ROOM, INCARNATION);
    add_room_key(&mut ring, bob(), kat::EPOCH, &kat::issued_key(), now);
    ring
}

/// Alice's keyring in vault at epoch 3 (her own key is the KAT one).
fn alice_in_vault(now: Instant) -> Keyring {
    let mut ring = Keyring::default();
    ring.enter_room(kat::ROOM, INCARNATION);
    add_room_key(
        &mut ring,
        &kat::identity(),
        kat::EPOCH,
        &kat::issued_key(),
        now,
    );
    ring
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

fn text(opened: Result<Opened, VerificationFailed>) -> Vec<u8> {
    opened.unwrap().plaintext.to_vec()
}

#[test]
fn opens_the_known_answer_envelope_once() {
    let now = Instant::now();
    let mut bob = bob_in_vault(now);
    let envelope = kat::openssl_envelope();
    let opened = bob
        .open_room(kat::ROOM, kat::SENDER, &envelope, now)
        .unwrap();
    assert_eq!(opened.plaintext.as_slice(), kat::PLAINTEXT);
    assert_eq!(&opened.signer, kat::identity().fingerprint());
    assert_eq!(opened.trust, Trust::New);
    assert!(
        bob.open_room(kat::ROOM, kat::SENDER, &envelope, now)
            .is_err(),
        "a replay"
    );
}

#[test]
fn any_changed_byte_in_any_field_fails() {
    let now = Instant::now();
    let mut bob = bob_in_vault(now);
    let envelope = kat::openssl_envelope();
    for offset in 0..envelope.len() {
        for flip in [0x01, 0x80] {
            let mut changed = envelope.clone();
            changed[offset] ^= flip;
            assert!(
                bob.open_room(kat::ROOM, kat::SENDER, &changed, now)
                    .is_err(),
                "{} byte {offset} ^ {flip:02x}",
                field_at(offset)
            );
        }
    }
    // The failures left no trace: the genuine envelope still opens.
    assert!(bob
        .open_room(kat::ROOM, kat::SENDER, &envelope, now)
        .is_ok());
}

#[test]
fn the_envelope_must_agree_with_its_frame() {
    let now = Instant::now();
    let mut bob = bob_in_vault(now);
    bob.add_peer(b"carol", None, peer(mallory(), b"carol"), None);
    let envelope = kat::openssl_envelope();
    assert!(
        bob.open_room(kat::ROOM, b"carol", &envelope, now).is_err(),
        "relayed as carol's"
    );
    assert!(
        bob.open_room(b"other", kat::SENDER, &envelope, now)
            .is_err(),
        "in another room"
    );
    assert!(
        bob.open_dm(kat::ROOM, kat::SENDER, &envelope, now).is_err(),
        "as a DM"
    );
    assert!(bob
        .open_room(kat::ROOM, kat::SENDER, &envelope, now)
        .is_ok());
}

#[test]
fn a_member_cannot_write_in_another_members_name() {
    let now = Instant::now();
    let mut bob = bob_in_vault(now);
    // Mallory holds the room key, so her MAC is good; her signature is not alice's.
    let header = Header {
        counter: 2,
        ..kat::header()
    };
    let keys = MessageKeys::derive(&kat::issued_key());
    let forged = envelope::seal(&header, &keys, b"send the codes", mallory()).unwrap();
    assert!(bob.open_room(kat::ROOM, kat::SENDER, &forged, now).is_err());
}

#[test]
fn counters_must_go_up_per_signer_whatever_name_it_signs_under() {
    let now = Instant::now();
    let alice_id = kat::identity();
    let mut alice = alice_in_vault(now);
    let mut bob = bob_in_vault(now);
    let mut seal = |text: &[u8]| {
        alice
            .seal_room(kat::ROOM, kat::SENDER, &alice_id, text)
            .unwrap()
    };
    let (first, second, third) = (seal(b"one"), seal(b"two"), seal(b"three"));
    assert_eq!(Envelope::parse(&third).unwrap().header.counter, 3);
    let mut open = |text: &[u8]| bob.open_room(kat::ROOM, kat::SENDER, text, now);
    assert_eq!(text(open(&second)), b"two");
    assert!(open(&first).is_err(), "below the last counter accepted");
    assert!(open(&second).is_err(), "equal to it");
    assert_eq!(text(open(&third)), b"three");

    // Mallory now has the name "alice" (alice left): her counter starts
    // at 1 and is her own, not alice's 3.
    bob.add_peer(kat::SENDER, None, peer(mallory(), kat::SENDER), None);
    let keys = MessageKeys::derive(&kat::issued_key());
    let hers = envelope::seal(&kat::header(), &keys, b"mine", mallory()).unwrap();
    let opened = bob.open_room(kat::ROOM, kat::SENDER, &hers, now).unwrap();
    assert_eq!(&opened.signer, mallory().fingerprint());
}

#[test]
fn a_superseded_epoch_opens_only_within_the_grace_period_for_files_too() {
    let start = Instant::now();
    let alice_id = kat::identity();
    let mut alice = alice_in_vault(start);
    let late = alice
        .seal_room(kat::ROOM, kat::SENDER, &alice_id, b"late")
        .unwrap();
    let too_late = alice
        .seal_room(kat::ROOM, kat::SENDER, &alice_id, b"too late")
        .unwrap();

    let mut bob = bob_in_vault(start);
    let rotated = start + Duration::from_secs(60);
    add_room_key(
        &mut bob,
        self::bob(),
        kat::EPOCH + 1,
        &other_key(4),
        rotated,
    );
    assert_eq!(bob.room_epoch(kat::ROOM), Ok(kat::EPOCH + 1));
    let just_in = rotated + EPOCH_GRACE - Duration::from_millis(1);
    assert_eq!(
        text(bob.open_room(kat::ROOM, kat::SENDER, &late, just_in)),
        b"late"
    );
    assert_eq!(
        bob.room_key(kat::ROOM, kat::EPOCH, just_in),
        Some(&kat::issued_key())
    );
    let expired = rotated + EPOCH_GRACE;
    assert!(bob
        .open_room(kat::ROOM, kat::SENDER, &too_late, expired)
        .is_err());
    assert_eq!(
        bob.room_key(kat::ROOM, kat::EPOCH, expired),
        None,
        "files too"
    );
    assert_eq!(
        bob.room_key(kat::ROOM, kat::EPOCH + 1, expired),
        Some(&other_key(4))
    );
    assert_eq!(bob.room_key(kat::ROOM, kat::EPOCH + 2, expired), None);
}

#[test]
fn room_keys_are_taken_only_for_our_room_and_the_next_or_announced_epoch() {
    let now = Instant::now();
    let mut ring = Keyring::default();
    let key = other_key(1);
    let offer = |ring: &mut Keyring, room: &[u8], incarnation, epoch| {
        let wrapped = room_wrap(bob(), room, incarnation, epoch, &key);
        ring.add_room_key(bob(), room, incarnation, epoch, &wrapped, now)
    };
    assert_eq!(
        offer(&mut ring, kat::ROOM, INCARNATION, 5),
        Err(KeyRefused::NotOurRoom),
        "in no room"
    );
    ring.enter_room(kat::ROOM, INCARNATION);
    assert_eq!(
        offer(&mut ring, b"other", INCARNATION, 5),
        Err(KeyRefused::NotOurRoom)
    );
    assert_eq!(
        offer(&mut ring, kat::ROOM, INCARNATION + 1, 5),
        Err(KeyRefused::NotOurRoom),
        "the room of that name before it was deleted and made anew"
    );
    // The first key may have any epoch; each after it only the next.
    assert_eq!(offer(&mut ring, kat::ROOM, INCARNATION, 5), Ok(()));
    for epoch in [4, 5, 7, u32::MAX] {
        assert_eq!(
            offer(&mut ring, kat::ROOM, INCARNATION, epoch),
            Err(KeyRefused::BadEpoch {
                current: 5,
                offered: epoch
            })
        );
    }
    assert_eq!(offer(&mut ring, kat::ROOM, INCARNATION, 6), Ok(()));
    assert_eq!(ring.room_epoch(kat::ROOM), Ok(6));
    // Past a gap, only the epoch a ROOM_REKEYING announced (a cluster node
    // taking the room over), and never one before the current.
    ring.rekeying(kat::ROOM, INCARNATION, 9).unwrap();
    let past = |offered| KeyRefused::BadEpoch {
        current: 6,
        offered,
    };
    assert_eq!(offer(&mut ring, kat::ROOM, INCARNATION, 8), Err(past(8)));
    assert_eq!(offer(&mut ring, kat::ROOM, INCARNATION, 10), Err(past(10)));
    assert_eq!(offer(&mut ring, kat::ROOM, INCARNATION, 9), Ok(()));
    assert_eq!(ring.room_epoch(kat::ROOM), Ok(9));
    ring.leave_room();
    assert_eq!(ring.room_epoch(kat::ROOM), Err(SealError::NoKey));
}

#[test]
fn a_wrap_moved_to_another_room_incarnation_or_epoch_does_not_unwrap() {
    let now = Instant::now();
    let mut ring = Keyring::default();
    ring.enter_room(b"other", 9);
    // The genuine wrap for vault, incarnation 1, epoch 3, replayed as other's.
    let wrapped = room_wrap(bob(), kat::ROOM, 1, 3, &other_key(1));
    assert_eq!(
        ring.add_room_key(bob(), b"other", 9, 3, &wrapped, now),
        Err(KeyRefused::Unwrap)
    );
    ring.enter_room(kat::ROOM, 1);
    assert_eq!(
        ring.add_room_key(bob(), kat::ROOM, 1, 4, &wrapped, now),
        Err(KeyRefused::Unwrap),
        "another epoch"
    );
    // Mallory's wrap does not open for bob.
    let hers = room_wrap(mallory(), kat::ROOM, 1, 3, &other_key(1));
    assert_eq!(
        ring.add_room_key(bob(), kat::ROOM, 1, 3, &hers, now),
        Err(KeyRefused::Unwrap)
    );
    assert_eq!(
        ring.add_room_key(bob(), kat::ROOM, 1, 3, &wrapped, now),
        Ok(())
    );
}

#[test]
fn after_a_departure_nothing_is_sealed_until_the_next_key() {
    let now = Instant::now();
    let alice_id = kat::identity();
    let mut alice = alice_in_vault(now);
    assert_eq!(
        alice.rekeying(b"other", INCARNATION, kat::EPOCH + 1),
        Err(KeyRefused::NotOurRoom)
    );
    alice
        .rekeying(kat::ROOM, INCARNATION, kat::EPOCH + 1)
        .unwrap();
    assert_eq!(
        alice.seal_room(kat::ROOM, kat::SENDER, &alice_id, b"x"),
        Err(SealError::Rekeying)
    );
    assert_eq!(alice.room_epoch(kat::ROOM), Err(SealError::Rekeying));
    assert!(
        alice.room_send_key(kat::ROOM).is_err(),
        "nor a file offered"
    );
    add_room_key(&mut alice, &alice_id, kat::EPOCH + 1, &other_key(4), now);
    let sealed = alice
        .seal_room(kat::ROOM, kat::SENDER, &alice_id, b"x")
        .unwrap();
    assert_eq!(
        Envelope::parse(&sealed).unwrap().header.epoch,
        kat::EPOCH + 1
    );
}

#[test]
fn two_departures_during_one_rotation_hold_until_the_later_epoch() {
    let now = Instant::now();
    let alice_id = kat::identity();
    let mut alice = alice_in_vault(now);
    alice
        .rekeying(kat::ROOM, INCARNATION, kat::EPOCH + 1)
        .unwrap();
    alice
        .rekeying(kat::ROOM, INCARNATION, kat::EPOCH + 2)
        .unwrap();
    alice
        .rekeying(kat::ROOM, INCARNATION, kat::EPOCH + 1)
        .unwrap();
    add_room_key(&mut alice, &alice_id, kat::EPOCH + 1, &other_key(4), now);
    assert_eq!(alice.room_epoch(kat::ROOM), Err(SealError::Rekeying));
    add_room_key(&mut alice, &alice_id, kat::EPOCH + 2, &other_key(5), now);
    assert_eq!(alice.room_epoch(kat::ROOM), Ok(kat::EPOCH + 2));
    // A stale notice (for an epoch already held) holds nothing.
    alice
        .rekeying(kat::ROOM, INCARNATION, kat::EPOCH + 2)
        .unwrap();
    assert_eq!(alice.room_epoch(kat::ROOM), Ok(kat::EPOCH + 2));
}

#[test]
fn offers_share_the_message_counter() {
    let now = Instant::now();
    let alice_id = kat::identity();
    let mut alice = alice_in_vault(now);
    let mut bob = bob_in_vault(now);
    let message = alice
        .seal_room(kat::ROOM, kat::SENDER, &alice_id, b"one")
        .unwrap();
    let offer = alice.room_send_key(kat::ROOM).unwrap();
    assert_eq!((offer.key_id, offer.counter), (kat::EPOCH, 2));
    assert_eq!(offer.issued, kat::issued_key());
    let later = alice
        .seal_room(kat::ROOM, kat::SENDER, &alice_id, b"three")
        .unwrap();
    assert_eq!(Envelope::parse(&later).unwrap().header.counter, 3);

    let alice_fp = *alice_id.fingerprint();
    let key = KeyRef::Room {
        room: kat::ROOM,
        epoch: kat::EPOCH,
    };
    assert!(bob.open_room(kat::ROOM, kat::SENDER, &message, now).is_ok());
    assert_eq!(bob.accept_counter(key, &alice_fp, 2, now), Ok(()));
    assert!(
        bob.accept_counter(key, &alice_fp, 2, now).is_err(),
        "the offer replayed"
    );
    assert!(bob.accept_counter(key, &alice_fp, 1, now).is_err());
    let epoch_not_held = KeyRef::Room {
        room: kat::ROOM,
        epoch: 9,
    };
    assert!(bob
        .accept_counter(epoch_not_held, &alice_fp, 5, now)
        .is_err());
    assert!(bob.open_room(kat::ROOM, kat::SENDER, &later, now).is_ok());
}

/// Alice and bob share DM key `key_id`, each having seen the other's
/// identity.
fn dm_pair(key_id: u32, key: &IssuedKey) -> (Keyring, Keyring) {
    let alice_id = kat::identity();
    let mut alice = Keyring::default();
    alice.add_peer(b"bob", None, peer(bob(), b"bob"), None);
    let wrapped = dm_wrap(&alice_id, key_id, bob().fingerprint(), key);
    alice
        .add_dm_key(&alice_id, key_id, bob().fingerprint(), &wrapped)
        .unwrap();
    let mut bobs = Keyring::default();
    bobs.add_peer(kat::SENDER, None, kat::peer(), None);
    let wrapped = dm_wrap(bob(), key_id, alice_id.fingerprint(), key);
    bobs.add_dm_key(bob(), key_id, alice_id.fingerprint(), &wrapped)
        .unwrap();
    (alice, bobs)
}

#[test]
fn both_ends_of_a_dm_key_use_it_and_only_they_can() {
    let now = Instant::now();
    let alice_id = kat::identity();
    let dm_key = other_key(9);
    let (mut alice, mut bobs) = dm_pair(7, &dm_key);
    let hello = alice
        .seal_dm(b"bob", kat::SENDER, &alice_id, b"hi bob")
        .unwrap();
    assert_eq!(
        text(bobs.open_dm(b"bob", kat::SENDER, &hello, now)),
        b"hi bob"
    );
    assert!(
        bobs.open_dm(b"bob", kat::SENDER, &hello, now).is_err(),
        "a replay"
    );
    let reply = bobs
        .seal_dm(kat::SENDER, b"bob", bob(), b"hi alice")
        .unwrap();
    assert!(
        alice.open_dm(b"carol", b"bob", &reply, now).is_err(),
        "addressed to alice"
    );
    assert_eq!(
        text(alice.open_dm(kat::SENDER, b"bob", &reply, now)),
        b"hi alice"
    );

    // Were the key to leak to mallory, her DMs under it would still fail:
    // key 7 belongs to alice and bob.
    bobs.add_peer(b"mallory", None, peer(mallory(), b"mallory"), None);
    let header = Header {
        kind: Kind::Direct,
        context: b"bob",
        sender: b"mallory",
        epoch: 7,
        counter: 1,
    };
    let forged = envelope::seal(&header, &MessageKeys::derive(&dm_key), b"hi", mallory()).unwrap();
    assert!(bobs.open_dm(b"bob", b"mallory", &forged, now).is_err());
}

#[test]
fn a_dm_from_a_peer_renamed_out_of_sight_opens_under_its_new_name() {
    let now = Instant::now();
    let (mut alice, mut bobs) = dm_pair(3, &other_key(3));
    // Alice is "alicia" now, and nothing told bob: the key says who it is.
    let sealed = alice
        .seal_dm(b"bob", b"alicia", &kat::identity(), b"new name")
        .unwrap();
    let opened = bobs.open_dm(b"bob", b"alicia", &sealed, now).unwrap();
    assert_eq!(opened.plaintext.as_slice(), b"new name");
    assert_eq!(&opened.signer, kat::identity().fingerprint());
    assert_eq!(bobs.name_of(&opened.signer), Some(kat::SENDER));
}

#[test]
fn dm_keys_need_a_known_peer_a_new_id_and_their_own_label() {
    let alice_id = kat::identity();
    let mut alice = Keyring::default();
    let bob_fp = *bob().fingerprint();
    let key = other_key(1);
    let wrapped = dm_wrap(&alice_id, 1, &bob_fp, &key);
    assert_eq!(
        alice.add_dm_key(&alice_id, 1, &bob_fp, &wrapped),
        Err(KeyRefused::UnknownPeer)
    );
    alice.add_peer(b"bob", None, peer(bob(), b"bob"), None);
    alice.add_peer(b"mallory", None, peer(mallory(), b"mallory"), None);
    // Moved to another key id, or to another peer: the label differs.
    assert_eq!(
        alice.add_dm_key(&alice_id, 2, &bob_fp, &wrapped),
        Err(KeyRefused::Unwrap)
    );
    let mallory_fp = *mallory().fingerprint();
    assert_eq!(
        alice.add_dm_key(&alice_id, 1, &mallory_fp, &wrapped),
        Err(KeyRefused::Unwrap)
    );
    assert_eq!(alice.add_dm_key(&alice_id, 1, &bob_fp, &wrapped), Ok(()));
    // The same id again would reset its counters: refused.
    assert_eq!(
        alice.add_dm_key(&alice_id, 1, &bob_fp, &wrapped),
        Err(KeyRefused::Duplicate(1))
    );
}

#[test]
fn at_most_four_dm_keys_per_peer_the_newest() {
    let alice_id = kat::identity();
    let bob_fp = *bob().fingerprint();
    let mut alice = Keyring::default();
    alice.add_peer(b"bob", None, peer(bob(), b"bob"), None);
    for key_id in [3, 9, 1, 12, 5, 7] {
        let wrapped = dm_wrap(&alice_id, key_id, &bob_fp, &other_key(key_id as u8));
        alice
            .add_dm_key(&alice_id, key_id, &bob_fp, &wrapped)
            .unwrap();
    }
    let held: Vec<u32> = alice.dm_key_ids(&bob_fp).collect();
    assert_eq!(held, [5, 7, 9, 12]);
    assert_eq!(alice.dm_key_id(b"bob"), Some(12), "seals with the newest");
    assert!(alice.dm_key(1).is_none());
}

#[test]
fn trust_on_first_use_then_a_changed_key_until_trusted() {
    let mut ring = Keyring::default();
    let bob_fp = *bob().fingerprint();
    let first = ring.add_peer(b"bob", None, peer(bob(), b"bob"), None);
    assert_eq!(
        first,
        PeerAdded {
            fingerprint: bob_fp,
            trust: Trust::New,
            sighting: Sighting::New
        }
    );
    let again = ring.add_peer(b"bob", None, peer(bob(), b"bob"), Some(&bob_fp));
    assert_eq!(
        (again.trust, again.sighting),
        (Trust::Trusted, Sighting::Again)
    );
    // Bob left and mallory took his name.
    let taken = ring.add_peer(b"bob", None, peer(mallory(), b"bob"), Some(&bob_fp));
    assert_eq!(taken.trust, Trust::Changed { before: bob_fp });
    assert_eq!(taken.sighting, Sighting::New);
    let (signer, trust) = ring.peer(b"bob").unwrap();
    assert_eq!(
        (signer.fingerprint(), trust.verified()),
        (mallory().fingerprint(), false)
    );
    // The user checked and trusts the new key.
    assert_eq!(ring.trust(b"bob"), Some(*mallory().fingerprint()));
    assert_eq!(ring.peer(b"bob").unwrap().1, Trust::Trusted);
    assert_eq!(ring.trust(b"nobody"), None);
}

#[test]
fn a_rename_is_believed_only_when_the_key_is_the_old_names() {
    let mut ring = Keyring::default();
    ring.add_peer(b"bob", None, peer(bob(), b"bob"), None);
    ring.add_peer(b"carol", None, peer(mallory(), b"carol"), None);
    let renamed = ring.add_peer(b"robert", Some(b"bob"), peer(bob(), b"robert"), None);
    assert_eq!(
        renamed.sighting,
        Sighting::Renamed {
            from: b"bob".to_vec()
        }
    );
    assert!(ring.peer(b"bob").is_none());
    assert_eq!(
        ring.peer(b"robert").unwrap().0.fingerprint(),
        bob().fingerprint()
    );
    // Carol (mallory's key) claims to be the renamed robert: she is not.
    let claimed = ring.add_peer(b"bobby", Some(b"robert"), peer(mallory(), b"bobby"), None);
    assert_eq!(
        claimed.sighting,
        Sighting::RenameRefused {
            from: b"robert".to_vec()
        }
    );
    assert_eq!(
        ring.peer(b"robert").unwrap().0.fingerprint(),
        bob().fingerprint()
    );
}
