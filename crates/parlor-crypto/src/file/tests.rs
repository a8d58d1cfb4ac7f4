use bytes::Bytes;
use sha2::Digest;

use super::*;
use crate::kat;
use parlor_proto::transfer::FILE_FLAG_ENCRYPTED;

// The constants of testdata/derive-file-kat.sh.
const NONCE: [u8; NONCE_LEN] = [
    0xb0, 0xb1, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xbb, 0xbc, 0xbd, 0xbe, 0xbf,
];
const MANIFEST_IV: [u8; IV_LEN] = [
    0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xcb, 0xcc, 0xcd, 0xce, 0xcf,
];
const FILE: &[u8] = b"AAAAAAAAAAAAAAAAhello file chunktail";
const CHUNK: &[u8] = b"hello file chunk";
const ENC_KEY: &str = "c07faa6321552e372695634541b0ad7806f3b290e3a3bbade6bf33761fac7863";
const MAC_KEY: &str = "a7504d09b0c58e9aba034a667fe70fc789ce6bf5301f0cfb5234f71dc8334684";
const MANIFEST_ENC_KEY: &str = "405440e2a36e920e027d2623b3d773b1630ded4ab7781c78ceb5766b368c5e45";
const MANIFEST_MAC_KEY: &str = "e0d60f94628cdd4042637e4e274fe441687f97613130882f069b7f1507866567";
const SEALED_CHUNK: &str = concat!(
    "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf", // iv
    "1f13d9fd28ab3907c61a14dbef18e4972a3d3301e2264020832a71293f16df27", // ciphertext
    "262cc73f7c102af2d103ac7f6de6563633ebd382b797acd05143a7486bab6942", // mac
);
const DIGEST: &str = "5a085dfc847bf4185fec9ffc411b85cfa67054523fff3d23fcc213c98c61d557";
const MANIFEST: &str = concat!(
    "c0c1c2c3c4c5c6c7c8c9cacbcccdcecf", // iv
    "7333716ca40c2c65ba6962971799e07b961677fffd89e4cbc00cd81c231cc213",
    "d6829fd42d45044474a9f190ecae41f1", // ciphertext of digest || size
    "d985e729c77d8954592b35b35f5b47dc13cfd75f4d2b5013b62d601dd92d9531", // mac
);
const SIGNED_OFFER: &str = concat!(
    "7061726c6f722076322066696c65",                   // "parlor v2 file"
    "01057661756c7405616c696365096e6f7465732e747874", // kind, room, sender, name
    "0000000000000024000000100000000301",             // size, chunk size, count, flags
    "00000003b0b1b2b3b4b5b6b7b8b9babbbcbdbebf",       // key id, nonce
    "0060",                                           // manifest length
    "c0c1c2c3c4c5c6c7c8c9cacbcccdcecf7333716ca40c2c65ba6962971799e07b",
    "961677fffd89e4cbc00cd81c231cc213d6829fd42d45044474a9f190ecae41f1",
    "d985e729c77d8954592b35b35f5b47dc13cfd75f4d2b5013b62d601dd92d9531",
    "0000000000000002", // counter
);
const SIGNATURE: &str = concat!(
    "9cedd21b72b8389a436eda59fd1254058f0724b94c8f0da740cae1d4da044391",
    "e16a4111f84b90b73264ab34e4be46415cff74bf30f36a2d8db14e64c56e5007",
);

fn keys() -> FileKeys {
    FileKeys::derive(&kat::issued_key(), &NONCE)
}

fn room_offer() -> OfferContext<'static> {
    OfferContext {
        kind: Kind::Room,
        context: kat::ROOM,
        sender: kat::SENDER,
    }
}

fn meta() -> FileMeta {
    FileMeta {
        name: Bytes::from_static(b"notes.txt"),
        size: FILE.len() as u64,
        chunk_size: 16,
        chunk_count: 3,
        flags: FILE_FLAG_ENCRYPTED,
        key_id: kat::EPOCH,
        nonce: NONCE,
        manifest: kat::hex(MANIFEST).into(),
        counter: 2,
        signature: kat::array(SIGNATURE),
    }
}

#[test]
fn derives_the_keys_openssl_derives() {
    let keys = keys();
    assert_eq!(keys.chunks.enc.as_slice(), kat::hex(ENC_KEY));
    assert_eq!(keys.chunks.mac.as_slice(), kat::hex(MAC_KEY));
    assert_eq!(keys.manifest.enc.as_slice(), kat::hex(MANIFEST_ENC_KEY));
    assert_eq!(keys.manifest.mac.as_slice(), kat::hex(MANIFEST_MAC_KEY));
    // The nonce salts them: another file under the same key differs.
    let other = FileKeys::derive(&kat::issued_key(), &[0; NONCE_LEN]);
    assert_ne!(other.chunks.enc.as_slice(), keys.chunks.enc.as_slice());
    assert_ne!(other.manifest.mac.as_slice(), keys.manifest.mac.as_slice());
}

#[test]
fn seals_the_known_answer_chunk_and_opens_it() {
    let keys = keys();
    let sealed = keys.seal_chunk_with_iv(1, 3, &kat::IV, CHUNK);
    assert_eq!(sealed, kat::hex(SEALED_CHUNK));
    assert_eq!(keys.open_chunk(1, 3, &sealed).unwrap().as_slice(), CHUNK);
    // A random IV: two seals differ, and both open.
    let (one, two) = (keys.seal_chunk(0, 1, b"x"), keys.seal_chunk(0, 1, b"x"));
    assert_ne!(one, two);
    assert_eq!(keys.open_chunk(0, 1, &two).unwrap().as_slice(), b"x");
    // An empty plaintext is one block of padding.
    let empty = keys.seal_chunk(0, 1, b"");
    assert_eq!(empty.len(), IV_LEN + 16 + MAC_LEN);
    assert!(keys.open_chunk(0, 1, &empty).unwrap().is_empty());
}

#[test]
fn any_changed_byte_or_another_place_in_the_file_fails() {
    let keys = keys();
    let sealed = kat::hex(SEALED_CHUNK);
    for offset in 0..sealed.len() {
        let mut changed = sealed.clone();
        changed[offset] ^= 0x01;
        assert_eq!(
            keys.open_chunk(1, 3, &changed),
            Err(VerificationFailed),
            "byte {offset}"
        );
    }
    assert!(keys.open_chunk(0, 3, &sealed).is_err(), "moved to chunk 0");
    assert!(keys.open_chunk(1, 2, &sealed).is_err(), "in a shorter file");
    assert!(keys.open_chunk(1, 3, &sealed[..sealed.len() - 1]).is_err());
    assert!(keys.open_chunk(1, 3, &sealed[..IV_LEN + MAC_LEN]).is_err());
    assert!(keys.open_chunk(1, 3, &[]).is_err());
    let mut other_key = *kat::issued_key();
    other_key[0] ^= 1;
    let wrong = FileKeys::derive(&other_key, &NONCE);
    assert!(wrong.open_chunk(1, 3, &sealed).is_err());
}

#[test]
fn seals_the_known_answer_manifest_and_only_the_file_key_opens_it() {
    let keys = keys();
    let digest: [u8; 32] = Sha256::digest(FILE).into();
    assert_eq!(digest[..], kat::hex(DIGEST));
    let sealed = keys.seal_manifest_with_iv(&MANIFEST_IV, &digest, FILE.len() as u64);
    assert_eq!(sealed[..], kat::hex(MANIFEST));
    assert_eq!(keys.open_manifest(&sealed), Ok((digest, 36)));
    // The digest is nowhere in the offer's bytes.
    assert!(!sealed.windows(32).any(|window| window == digest));
    for offset in 0..sealed.len() {
        let mut changed = sealed;
        changed[offset] ^= 0x01;
        assert!(keys.open_manifest(&changed).is_err(), "byte {offset}");
    }
    let other = FileKeys::derive(&kat::issued_key(), &[0; NONCE_LEN]);
    assert!(other.open_manifest(&sealed).is_err(), "another file's keys");
    // A chunk is no manifest, nor the other way round.
    let chunk = keys.seal_chunk(0, 1, &[&digest[..], &[0; 8]].concat());
    assert!(keys.open_manifest(&chunk).is_err());
    assert!(keys.open_chunk(0, 1, &sealed).is_err());
}

#[test]
fn signs_what_openssl_signs() {
    let meta = meta();
    assert_eq!(signed_offer(&room_offer(), &meta), kat::hex(SIGNED_OFFER));
    assert_eq!(
        sign_offer(&kat::identity(), &room_offer(), &meta),
        meta.signature
    );
    assert_eq!(verify_offer(&kat::peer(), &room_offer(), &meta), Ok(()));
}

#[test]
fn the_signature_binds_every_relayed_field_and_the_place() {
    let meta = meta();
    let key = kat::peer();
    let offer = room_offer();
    let changes: [(&str, FileMeta); 10] = [
        (
            "name",
            FileMeta {
                name: Bytes::from_static(b"notes.exe"),
                ..meta.clone()
            },
        ),
        (
            "size",
            FileMeta {
                size: 35,
                ..meta.clone()
            },
        ),
        (
            "chunk size",
            FileMeta {
                chunk_size: 32,
                ..meta.clone()
            },
        ),
        (
            "chunk count",
            FileMeta {
                chunk_count: 2,
                ..meta.clone()
            },
        ),
        (
            "flags",
            FileMeta {
                flags: 0,
                ..meta.clone()
            },
        ),
        (
            "key id",
            FileMeta {
                key_id: 4,
                ..meta.clone()
            },
        ),
        (
            "nonce",
            FileMeta {
                nonce: [0; NONCE_LEN],
                ..meta.clone()
            },
        ),
        (
            "manifest",
            FileMeta {
                manifest: Bytes::from(vec![0; MANIFEST_LEN]),
                ..meta.clone()
            },
        ),
        (
            "counter",
            FileMeta {
                counter: 3,
                ..meta.clone()
            },
        ),
        (
            "signature",
            FileMeta {
                signature: [0; SIGNATURE_LEN],
                ..meta.clone()
            },
        ),
    ];
    for (field, changed) in changes {
        assert!(verify_offer(&key, &offer, &changed).is_err(), "{field}");
    }
    let places = [
        OfferContext {
            kind: Kind::Direct,
            ..offer
        },
        OfferContext {
            context: b"other",
            ..offer
        },
        OfferContext {
            sender: b"mallory",
            ..offer
        },
    ];
    for place in places {
        assert!(verify_offer(&key, &place, &meta).is_err(), "{place:?}");
    }
    let mallory = Identity::generate(2048).unwrap();
    let forged = FileMeta {
        signature: sign_offer(&mallory, &offer, &meta),
        ..meta
    };
    assert!(verify_offer(&key, &offer, &forged).is_err());
}

#[test]
fn counts_and_spans_chunks() {
    assert_eq!(chunk_count(0, 16), Some(0));
    assert_eq!(chunk_count(1, 16), Some(1));
    assert_eq!(chunk_count(16, 16), Some(1));
    assert_eq!(chunk_count(17, 16), Some(2));
    assert_eq!(chunk_count(36, 16), Some(3));
    assert_eq!(chunk_count(5, 0), None);
    assert_eq!(chunk_count(u64::MAX, 1), None);
    assert_eq!(chunk_span(36, 16, 0), (0, 16));
    assert_eq!(chunk_span(36, 16, 1), (16, 16));
    assert_eq!(chunk_span(36, 16, 2), (32, 4));
    assert_eq!(&FILE[16..32], CHUNK);
}
