use rsa::pkcs8::der::Encode;
use rsa::pkcs8::spki::AlgorithmIdentifierRef;

use super::*;
use crate::kat;

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("parlor-identity-{test}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// The test identity's block with its RSA key replaced by `rsa_der`,
/// properly bound, so that only the RSA checks can refuse it.
fn block_with_rsa(rsa_der: Vec<u8>) -> secure::Identity {
    let alice = kat::identity();
    let key_binding = alice.sign(&secure::key_binding_statement(&rsa_der));
    secure::Identity {
        rsa_der: rsa_der.into(),
        key_binding,
        ..kat::identity_block()
    }
}

fn kat_rsa_modulus() -> BoxedUint {
    kat::identity().rsa.n().as_ref().clone()
}

#[test]
fn signs_what_openssl_signs_and_shows_the_fingerprint() {
    let alice = kat::identity();
    assert_eq!(alice.signing_key(), kat::array::<32>(kat::SIGNING_KEY));
    assert_eq!(alice.fingerprint(), &kat::array::<32>(kat::FINGERPRINT));
    assert_eq!(
        display_fingerprint(alice.fingerprint()),
        kat::DISPLAY_FINGERPRINT
    );
    assert_eq!(
        alice.sign(&kat::hex(kat::SIGNED_MESSAGE)),
        kat::array::<64>(kat::SIGNATURE)
    );
    assert_eq!(alice.key_binding(), kat::array::<64>(kat::KEY_BINDING));
    assert_eq!(
        alice.name_proof(kat::SENDER),
        kat::array::<64>(kat::NAME_PROOF)
    );
    assert_eq!(alice.rsa_bits(), 2048);
}

#[test]
fn display_fingerprints_are_six_groups_of_five_digits_mod_100000() {
    assert_eq!(
        display_fingerprint(&[0; 32]),
        "00000 00000 00000 00000 00000 00000"
    );
    // ff ff ff ff ff = 1099511627775, whose last five digits are 27775.
    let mut fingerprint = [0; 32];
    fingerprint[..5].copy_from_slice(&[0xff; 5]);
    fingerprint[5..10].copy_from_slice(&[0, 0, 0, 0x01, 0x00]);
    assert_eq!(
        display_fingerprint(&fingerprint),
        "27775 00256 00000 00000 00000 00000"
    );
}

#[test]
fn unwraps_keys_that_openssl_wrapped_only_under_their_own_label() {
    let alice = kat::identity();
    let me = *alice.fingerprint();
    let room = |room: &[u8], incarnation, epoch, recipient: &Fingerprint| {
        secure::room_key_label(room, incarnation, epoch, recipient)
    };
    let unwrap = |wrapped: &[u8], label: Vec<u8>| alice.unwrap_key(wrapped, &label).map(|key| *key);
    let good = room(kat::ROOM, kat::INCARNATION, kat::EPOCH, &me);
    assert_eq!(
        unwrap(kat::ROOM_KEY_WRAP, good.clone()),
        Ok(*kat::issued_key())
    );
    let dm = secure::dm_key_label(kat::DM_KEY_ID, &me, &kat::DM_PEER);
    assert_eq!(unwrap(kat::DM_KEY_WRAP, dm.clone()), Ok(*kat::issued_key()));
    // The label binds every part of the context: moved anywhere, it fails.
    for moved in [
        room(b"other", kat::INCARNATION, kat::EPOCH, &me),
        room(kat::ROOM, kat::INCARNATION + 1, kat::EPOCH, &me),
        room(kat::ROOM, kat::INCARNATION, kat::EPOCH + 1, &me),
        room(kat::ROOM, kat::INCARNATION, kat::EPOCH, &kat::DM_PEER),
        dm.clone(),
    ] {
        assert_eq!(unwrap(kat::ROOM_KEY_WRAP, moved), Err(VerificationFailed));
    }
    for moved in [
        secure::dm_key_label(kat::DM_KEY_ID + 1, &me, &kat::DM_PEER),
        secure::dm_key_label(kat::DM_KEY_ID, &kat::DM_PEER, &me),
        good.clone(),
    ] {
        assert_eq!(unwrap(kat::DM_KEY_WRAP, moved), Err(VerificationFailed));
    }
    assert_eq!(
        unwrap(&kat::ROOM_KEY_WRAP[1..], good),
        Err(VerificationFailed)
    );
}

#[test]
fn peer_identities_verify_only_with_their_binding_and_name() {
    let block = kat::identity_block();
    let alice = PeerIdentity::from_block(&block, kat::SENDER).unwrap();
    assert_eq!(alice.fingerprint(), kat::identity().fingerprint());
    assert_eq!(
        PeerIdentity::from_block(&block, b"mallory").unwrap_err(),
        PeerKeyError::BadNameProof
    );
    // Mallory pairs alice's fingerprint with her own RSA key: the binding
    // was made for alice's RSA key only.
    let mallory = Identity::generate(2048).unwrap();
    let stolen = secure::Identity {
        rsa_der: mallory.rsa_der().to_vec().into(),
        ..block.clone()
    };
    assert_eq!(
        PeerIdentity::from_block(&stolen, kat::SENDER).unwrap_err(),
        PeerKeyError::BadBinding
    );
    // And her signing key with alice's proofs.
    let borrowed = secure::Identity {
        signing_key: mallory.signing_key(),
        ..block.clone()
    };
    assert_eq!(
        PeerIdentity::from_block(&borrowed, kat::SENDER).unwrap_err(),
        PeerKeyError::BadBinding
    );
    let signature = alice.verify(b"x", &kat::identity().sign(b"x"));
    assert_eq!(signature, Ok(()));
    assert!(alice.verify(b"y", &kat::identity().sign(b"x")).is_err());
    assert!(alice.verify(b"x", &mallory.sign(b"x")).is_err());
}

#[test]
fn refuses_rsa_keys_with_another_exponent_size_algorithm_or_trailing_bytes() {
    let three = PublicKey::new_unchecked(kat_rsa_modulus(), BoxedUint::from(3u64));
    let e3 = three.to_public_key_der().unwrap().into_vec();
    // Any 1024-bit odd number will do as a modulus that is only parsed.
    let small = BoxedUint::from_be_slice(&[0xc5; 128], 1024).unwrap();
    let small = PublicKey::new_unchecked(small, BoxedUint::from(65_537u64));
    let short = small.to_public_key_der().unwrap().into_vec();
    let good = kat::identity().rsa_der().to_vec();
    let info = SubjectPublicKeyInfoRef::from_der(&good).unwrap();
    let pss = SubjectPublicKeyInfoRef {
        algorithm: AlgorithmIdentifierRef {
            oid: rsa::pkcs8::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10"),
            parameters: None,
        },
        subject_public_key: info.subject_public_key,
    }
    .to_der()
    .unwrap();
    let trailing = [&good[..], &[0]].concat();
    for (what, der) in [
        ("e = 3", e3),
        ("1024 bits", short),
        ("RSASSA-PSS", pss),
        ("trailing", trailing),
    ] {
        assert_eq!(
            PeerIdentity::from_block(&block_with_rsa(der), kat::SENDER).unwrap_err(),
            PeerKeyError::BadRsaKey,
            "{what}"
        );
    }
    assert!(PeerIdentity::from_block(&block_with_rsa(good), kat::SENDER).is_ok());
}

#[test]
fn refuses_weak_and_invalid_signing_keys() {
    // The identity point (small order: anyone could "sign" for it).
    let mut identity_point = [0; 32];
    identity_point[0] = 1;
    let weak = secure::Identity {
        signing_key: identity_point,
        ..kat::identity_block()
    };
    assert_eq!(
        PeerIdentity::from_block(&weak, kat::SENDER).unwrap_err(),
        PeerKeyError::BadSigningKey
    );
}

#[test]
fn refuses_key_sizes_the_server_would_refuse() {
    assert!(matches!(
        Identity::generate(1024),
        Err(IdentityError::BadSize(1024))
    ));
    assert!(matches!(
        Identity::generate(8192),
        Err(IdentityError::BadSize(8192))
    ));
}

#[test]
fn an_identity_file_round_trips_with_mode_0600_and_is_never_overwritten() {
    let dir = scratch("file");
    let path = dir.join("deep/identity");
    let alice = kat::identity();
    alice.create(&path).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    assert_eq!(
        fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777,
        0o700
    );
    let text = fs::read_to_string(&path).unwrap();
    assert_eq!(text.matches("-----BEGIN PRIVATE KEY-----").count(), 2);
    let loaded = Identity::load(&path).unwrap();
    assert_eq!(loaded.fingerprint(), alice.fingerprint());
    assert_eq!(loaded.rsa_der(), alice.rsa_der());
    // The file is there: creating again fails and changes nothing, and
    // load_or_create loads it.
    let other = Identity::from_pem(&Identity::generate(2048).unwrap().to_pem()).unwrap();
    assert!(matches!(other.create(&path), Err(IdentityError::Io { .. })));
    let (again, created) = Identity::load_or_create(&path, 2048).unwrap();
    assert!(!created);
    assert_eq!(again.fingerprint(), alice.fingerprint());
    assert_eq!(
        fs::read_dir(path.parent().unwrap()).unwrap().count(),
        1,
        "no temporary file left"
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn load_or_create_makes_one_when_there_is_none() {
    let dir = scratch("create");
    let path = dir.join("identity");
    let (made, created) = Identity::load_or_create(&path, 2048).unwrap();
    assert!(created);
    assert_eq!(
        Identity::load(&path).unwrap().fingerprint(),
        made.fingerprint()
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_identity_file_others_can_read_is_refused_with_the_fix() {
    let dir = scratch("exposed");
    let path = dir.join("identity");
    kat::identity().create(&path).unwrap();
    for mode in [0o640, 0o604, 0o660] {
        set_mode(&path, mode);
        let err = Identity::load(&path).unwrap_err();
        assert!(matches!(err, IdentityError::Exposed { mode: m, .. } if m == mode));
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(
            text.contains(&format!("chmod 600 {}", path.display())),
            "{text}"
        );
    }
    set_mode(&path, 0o400);
    assert!(Identity::load(&path).is_ok());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn malformed_identity_files_are_refused_naming_the_file() {
    let dir = scratch("malformed");
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join("identity");
    let pem = kat::identity().to_pem();
    let (first, second) = pem.split_at(pem.find("-----END PRIVATE KEY-----").unwrap() + 26);
    let swapped = [second, first].concat();
    for text in ["", first, &swapped, "not a key"] {
        let _ = fs::remove_file(&path);
        fs::write(&path, text).unwrap();
        set_mode(&path, 0o600);
        let err = Identity::load(&path).unwrap_err();
        assert!(matches!(err, IdentityError::Malformed { .. }), "{err}");
        assert!(err.to_string().contains(&path.display().to_string()));
    }
    fs::remove_dir_all(&dir).unwrap();
}
