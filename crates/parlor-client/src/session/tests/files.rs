//! File transfer in the session: scripted server frames, and files kept in
//! memory in place of the shell's disk.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::*;
use crate::event::Direction;
use crate::transfer::{FileOp, FileSettings};
use parlor_crypto::file::{sign_offer, verify_offer, FileKeys, OfferContext};
use parlor_crypto::identity::SIGNATURE_LEN;
use parlor_crypto::Kind as EnvelopeKind;
use parlor_proto::transfer::{EndReason, FileMeta, FileNotice, FileRequest, FILE_FLAG_ENCRYPTED};

const ROOM_KEY: [u8; 32] = [7; 32];
const CHUNK: u32 = 16;

fn settings() -> FileSettings {
    FileSettings {
        download_dir: PathBuf::from("/downloads"),
        chunk_size: CHUNK,
        window: 2,
    }
}

/// Alice connected, in the secure room "vault" with its key at epoch 1,
/// knowing bob's key.
fn alice_in_vault(bob: &Peer) -> Alice {
    let mut alice = Alice::connected(true);
    alice.session = std::mem::replace(&mut alice.session, ClientSession::new(None))
        .with_file_settings(settings());
    alice.join("vault", true);
    alice.secure(room_key_for_alice("vault", 1, &ROOM_KEY));
    alice.peer_key(bob, "bob", "");
    alice
}

fn notice(alice: &mut Alice, notice: FileNotice) -> Vec<Output> {
    alice.receive(&notice.encode())
}

/// The shell's reports of file operations.
impl Alice {
    fn file_hashed(&mut self, local: u32, hashed: Result<(u64, [u8; 32]), String>) -> Vec<Output> {
        let mut out = Vec::new();
        self.session
            .handle_file_hashed(local, hashed, self.now, &mut out);
        out
    }

    fn chunk_read(&mut self, id: u32, index: u32, read: std::io::Result<Bytes>) -> Vec<Output> {
        let mut out = Vec::new();
        self.session
            .handle_chunk_read(id, index, read, self.now, &mut out);
        out
    }

    fn file_saved(&mut self, id: u32, saved: std::io::Result<PathBuf>) -> Vec<Output> {
        let mut out = Vec::new();
        self.session.handle_file_saved(id, saved, &mut out);
        out
    }
}

fn file_ops(outputs: &[Output]) -> Vec<FileOp> {
    outputs
        .iter()
        .filter_map(|output| match output {
            Output::File(op) => Some(op.clone()),
            _ => None,
        })
        .collect()
}

/// Parses every frame sent, chunk frames included (they may exceed the
/// client's usual payload limit).
fn sent_files(outputs: &[Output]) -> Vec<FileRequest> {
    outputs
        .iter()
        .filter_map(|output| match output {
            Output::Send(bytes) => {
                let mut buffer = BytesMut::from(&bytes[..]);
                let frame = FrameCodec::new(usize::MAX)
                    .decode(&mut buffer)
                    .unwrap()
                    .unwrap();
                match ClientMessage::parse(&frame).unwrap() {
                    ClientMessage::File(request) => Some(request),
                    _ => None,
                }
            }
            _ => None,
        })
        .collect()
}

/// The shell's part: carries out reads from `disk` until none is left,
/// and returns every other output.
fn with_reads(
    alice: &mut Alice,
    disk: &HashMap<PathBuf, Vec<u8>>,
    outputs: Vec<Output>,
) -> Vec<Output> {
    let mut queue = VecDeque::from(outputs);
    let mut rest = Vec::new();
    while let Some(output) = queue.pop_front() {
        match output {
            Output::File(FileOp::Read {
                id,
                index,
                path,
                offset,
                len,
            }) => {
                let data = &disk[&path][offset as usize..offset as usize + len];
                let read = Ok(Bytes::copy_from_slice(data));
                queue.extend(alice.chunk_read(id, index, read));
            }
            other => rest.push(other),
        }
    }
    rest
}

fn digest(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Bob's offer of `data` as `name` in vault, sealed under `key` of epoch
/// `key_id`, with his counter `counter`; with the keys to seal its chunks.
fn bob_offers_under(
    bob: &Peer,
    name: &str,
    data: &[u8],
    (key_id, key): (u32, &[u8; 32]),
    counter: u64,
) -> (FileMeta, FileKeys) {
    let nonce = [3; 16];
    let keys = FileKeys::derive(key, &nonce);
    let mut meta = FileMeta {
        name: Bytes::copy_from_slice(name.as_bytes()),
        size: data.len() as u64,
        chunk_size: CHUNK,
        chunk_count: data.len().div_ceil(CHUNK as usize) as u32,
        flags: FILE_FLAG_ENCRYPTED,
        key_id,
        nonce,
        manifest: Bytes::copy_from_slice(&keys.seal_manifest(&digest(data), data.len() as u64)),
        counter,
        signature: [0; SIGNATURE_LEN],
    };
    sign_in_vault(bob, &mut meta);
    (meta, keys)
}

/// [`bob_offers_under`] the room key of epoch 1, counter 1.
fn bob_offers(bob: &Peer, name: &str, data: &[u8]) -> (FileMeta, FileKeys) {
    bob_offers_under(bob, name, data, (1, &ROOM_KEY), 1)
}

fn sign_in_vault(bob: &Peer, meta: &mut FileMeta) {
    let place = OfferContext {
        kind: EnvelopeKind::Room,
        context: b"vault",
        sender: b"bob",
    };
    meta.signature = sign_offer(bob.identity, &place, meta);
}

fn offered(bob: &Peer, id: u32, room: &str, meta: FileMeta) -> FileNotice {
    FileNotice::Offered {
        id,
        sender: "bob".into(),
        sender_identity: bob.identity.block(b"bob"),
        room: Bytes::copy_from_slice(room.as_bytes()),
        meta,
    }
}

fn chunk_of(meta: &FileMeta, keys: &FileKeys, data: &[u8], id: u32, index: u32) -> FileNotice {
    let start = (index * CHUNK) as usize;
    let plain = &data[start..(start + CHUNK as usize).min(data.len())];
    let data = keys.seal_chunk(index, meta.chunk_count, plain).into();
    FileNotice::Chunk { id, index, data }
}

/// Alice accepts file `id` as the server confirms it; returns the path of
/// the partial file.
fn accept(alice: &mut Alice, id: u32) -> PathBuf {
    let outputs = alice.line(&format!("\\file accept {id}"));
    assert_eq!(
        sent_files(&outputs),
        [FileRequest::Decision { id, accept: true }]
    );
    notice(
        alice,
        FileNotice::Accepted {
            id,
            token: [0xaa; 16],
        },
    );
    let outputs = alice.reply(0, b"");
    let [FileOp::Create { path, .. }] = &file_ops(&outputs)[..] else {
        panic!("the partial file is created: {outputs:?}");
    };
    path.clone()
}

fn file_failed(outputs: &[Output]) -> Option<String> {
    events(outputs).into_iter().find_map(|event| match event {
        UserEvent::FileFailed { problem, .. } => Some(problem),
        _ => None,
    })
}

#[test]
fn a_file_to_the_room_is_offered_signed_and_sent_sealed_within_the_window() {
    let bob = Peer::new(b"bob");
    let mut alice = alice_in_vault(&bob);
    let data: Vec<u8> = (0..50u8).collect();
    let path = PathBuf::from("/home/alice/notes.txt");
    let disk = HashMap::from([(path.clone(), data.clone())]);

    let outputs = alice.line("\\file send /home/alice/notes.txt");
    assert_eq!(
        file_ops(&outputs),
        [FileOp::Hash {
            local: 0,
            path: path.clone()
        }]
    );
    let outputs = alice.file_hashed(0, Ok((50, digest(&data))));
    let [FileRequest::Offer {
        target,
        meta,
        window,
    }] = &sent_files(&outputs)[..]
    else {
        panic!("one offer: {outputs:?}");
    };
    assert_eq!((&target[..], *window), (&b""[..], 2));
    assert_eq!(&meta.name[..], b"notes.txt");
    assert_eq!(
        (meta.size, meta.chunk_size, meta.chunk_count),
        (50, CHUNK, 4)
    );
    assert_eq!((meta.flags, meta.key_id), (FILE_FLAG_ENCRYPTED, 1));
    let place = OfferContext {
        kind: EnvelopeKind::Room,
        context: b"vault",
        sender: b"alice",
    };
    assert_eq!(verify_offer(&kat::peer(), &place, meta), Ok(()));
    let keys = FileKeys::derive(&ROOM_KEY, &meta.nonce);
    // The digest travels only sealed, and the offer takes alice's first
    // counter under the room key.
    assert_eq!(keys.open_manifest(&meta.manifest), Ok((digest(&data), 50)));
    let offer_bytes = ClientMessage::File(sent_files(&outputs)[0].clone())
        .to_frame()
        .to_bytes();
    assert!(!offer_bytes
        .windows(32)
        .any(|window| window == digest(&data)));
    assert_eq!(meta.counter, 1);

    notice(
        &mut alice,
        FileNotice::Pending {
            id: 5,
            skipped: vec!["leg".into()],
        },
    );
    let outputs = alice.reply(0, b"");
    assert_eq!(
        events(&outputs),
        [UserEvent::FileOffer {
            id: 5,
            name: "notes.txt".into(),
            size: 50,
            room: Some("vault".into()),
            to: None,
            skipped: vec!["leg".into()],
        }]
    );

    // Two chunks fill the window; each goes out sealed as it is read.
    let start = FileNotice::Start {
        id: 5,
        window: 2,
        recipients: vec!["bob".into()],
    };
    let outputs = notice(&mut alice, start);
    let reads = file_ops(&outputs);
    assert_eq!(reads.len(), 2, "{reads:?}");
    let outputs = with_reads(&mut alice, &disk, outputs);
    let chunks = sent_files(&outputs);
    let opened: Vec<Vec<u8>> = chunks
        .iter()
        .enumerate()
        .map(|(i, request)| match request {
            FileRequest::Chunk { id: 5, index, data } if *index == i as u32 => {
                keys.open_chunk(*index, 4, data).unwrap().to_vec()
            }
            other => panic!("chunk {i}: {other:?}"),
        })
        .collect();
    assert_eq!(opened.concat(), &data[..32]);

    // The window moves one chunk: one more read.
    let outputs = notice(&mut alice, FileNotice::Window { id: 5, acked: 1 });
    let outputs = with_reads(&mut alice, &disk, outputs);
    assert!(matches!(
        &sent_files(&outputs)[..],
        [FileRequest::Chunk { index: 2, .. }]
    ));
    // The rest, then FILE_DONE.
    let outputs = notice(&mut alice, FileNotice::Window { id: 5, acked: 3 });
    let outputs = with_reads(&mut alice, &disk, outputs);
    let requests = sent_files(&outputs);
    let [FileRequest::Chunk {
        index: 3,
        data: sealed,
        ..
    }, FileRequest::Done { id: 5 }] = &requests[..]
    else {
        panic!("the last chunk and FILE_DONE: {requests:?}");
    };
    assert_eq!(
        keys.open_chunk(3, 4, sealed).unwrap().as_slice(),
        &data[48..]
    );
    assert_eq!(events(&alice.reply(0, b"")), []);

    let outputs = notice(
        &mut alice,
        FileNotice::Ended {
            id: 5,
            who: "carol".into(),
            reason: EndReason::TooSlow,
            text: "No acknowledgement within the chunk timeout.".into(),
        },
    );
    assert_eq!(
        events(&outputs),
        [UserEvent::FileEnded {
            id: 5,
            direction: Direction::Send,
            name: "notes.txt".into(),
            who: Some("carol".into()),
            reason: "too_slow".into(),
            text: "No acknowledgement within the chunk timeout.".into(),
        }]
    );
    let outputs = notice(
        &mut alice,
        FileNotice::Finished {
            id: 5,
            delivered: vec!["bob".into()],
        },
    );
    assert_eq!(
        events(&outputs),
        [UserEvent::FileSent {
            id: 5,
            name: "notes.txt".into(),
            delivered: vec!["bob".into()],
            sha256: crate::transfer::hex(&digest(&data)),
        }]
    );
    assert!(outputs.iter().any(|output| matches!(
        output,
        Output::Progress(progress) if progress.ended
    )));
    let outputs = alice.line("\\file list");
    assert_eq!(
        events(&outputs),
        [UserEvent::FileList {
            transfers: Vec::new()
        }]
    );
}

#[test]
fn a_file_to_one_user_gets_a_dm_key_first_and_an_empty_file_is_done_at_once() {
    let bob = Peer::new(b"bob");
    let mut alice = alice_in_vault(&bob);
    alice.line("\\file send empty bob");
    let outputs = alice.file_hashed(0, Ok((0, digest(b""))));
    assert_eq!(
        sent(&outputs),
        [ClientMessage::DmKeyRequest {
            target: "bob".into()
        }]
    );
    alice.secure(dm_key_issued(&bob, "bob", 42, &[5; 32]));
    let outputs = alice.reply(0, b"");
    let [FileRequest::Offer { target, meta, .. }] = &sent_files(&outputs)[..] else {
        panic!("the offer goes out once the key is here: {outputs:?}");
    };
    assert_eq!(&target[..], b"bob");
    assert_eq!((meta.size, meta.chunk_count, meta.key_id), (0, 0, 42));
    let place = OfferContext {
        kind: EnvelopeKind::Direct,
        context: b"bob",
        sender: b"alice",
    };
    assert_eq!(verify_offer(&kat::peer(), &place, meta), Ok(()));
    notice(
        &mut alice,
        FileNotice::Pending {
            id: 8,
            skipped: Vec::new(),
        },
    );
    alice.reply(0, b"");
    let outputs = notice(
        &mut alice,
        FileNotice::Start {
            id: 8,
            window: 8,
            recipients: vec!["bob".into()],
        },
    );
    assert_eq!(file_ops(&outputs), []);
    assert_eq!(sent_files(&outputs), [FileRequest::Done { id: 8 }]);
}

#[test]
fn files_need_a_key_a_room_and_a_name() {
    let mut legacy = Alice::connected(false);
    let outputs = legacy.line("\\file send a.txt");
    assert!(
        matches!(&events(&outputs)[..], [UserEvent::Error { text }] if text.contains("--legacy"))
    );

    let bob = Peer::new(b"bob");
    let mut alice = Alice::connected(true);
    alice.line("\\file send a.txt");
    let outputs = alice.file_hashed(0, Ok((1, digest(b"a"))));
    assert!(
        matches!(&events(&outputs)[..], [UserEvent::Error { text }] if text.contains("in no end-to-end encrypted room")),
        "{outputs:?}"
    );
    let outputs = alice.line("\\file send /");
    assert!(
        matches!(&events(&outputs)[..], [UserEvent::Error { text }] if text.contains("does not name a file"))
    );
    let outputs = alice.line("\\file accept 3");
    assert_eq!(
        events(&outputs),
        [UserEvent::Error {
            text: "No file 3 is waiting for your answer.".into()
        }]
    );
    // In a secure room whose key has not come, nothing is offered.
    alice.join("vault", true);
    alice.line("\\file send a.txt");
    let outputs = alice.file_hashed(1, Ok((1, digest(b"a"))));
    assert_eq!(sent(&outputs), []);
    assert!(
        matches!(&events(&outputs)[..], [UserEvent::Error { text }] if text.contains("no key yet")),
        "{outputs:?}"
    );
    // A file that cannot be read.
    let outputs = alice.line("\\file send nothing.txt");
    let [FileOp::Hash { local, .. }] = file_ops(&outputs)[..] else {
        panic!("{outputs:?}");
    };
    let outputs = alice.file_hashed(local, Err("No such file".into()));
    assert!(
        matches!(&events(&outputs)[..], [UserEvent::Error { text }] if text.contains("No such file"))
    );
    drop(bob);
}

#[test]
fn no_file_goes_in_clear() {
    let mut alice = Alice::connected(true);
    alice.session = std::mem::replace(&mut alice.session, ClientSession::new(None))
        .with_file_settings(settings());
    alice.join("lobby", false);
    alice.line("\\file send a.txt");
    let outputs = alice.file_hashed(0, Ok((3, digest(b"abc"))));
    assert_eq!(sent(&outputs), []);
    assert!(
        matches!(&events(&outputs)[..], [UserEvent::Error { text }] if text.contains("files go only sealed"))
    );
}

#[test]
fn an_offer_is_checked_then_received_verified_and_saved() {
    let bob = Peer::new(b"bob");
    let mut alice = alice_in_vault(&bob);
    let data: Vec<u8> = (0..40u8).rev().collect();
    let (meta, keys) = bob_offers(&bob, "../../etc/report.pdf", &data);
    let outputs = notice(&mut alice, offered(&bob, 9, "vault", meta.clone()));
    assert_eq!(
        events(&outputs),
        [UserEvent::FileOffered {
            id: 9,
            from: "bob".into(),
            room: Some("vault".into()),
            name: "report.pdf".into(),
            size: 40,
        }]
    );
    let part = accept(&mut alice, 9);
    assert_eq!(part, Path::new("/downloads/report.pdf.part"));

    let mut written = Vec::new();
    for index in 0..3 {
        let outputs = notice(&mut alice, chunk_of(&meta, &keys, &data, 9, index));
        assert_eq!(sent_files(&outputs), [FileRequest::Ack { id: 9, index }]);
        let ops = file_ops(&outputs);
        let FileOp::Write {
            path,
            offset,
            data: chunk,
            ..
        } = &ops[0]
        else {
            panic!("{ops:?}");
        };
        assert_eq!((path, *offset), (&part, u64::from(index * CHUNK)));
        written.extend_from_slice(chunk);
        if index == 2 {
            // Verified with the last chunk, then moved into place.
            assert_eq!(
                ops[1],
                FileOp::Save {
                    id: 9,
                    part: part.clone(),
                    dir: PathBuf::from("/downloads"),
                    name: "report.pdf".into(),
                }
            );
        }
    }
    assert_eq!(written, data);
    // FILE_DONE after the last chunk changes nothing.
    assert_eq!(notice(&mut alice, FileNotice::Done { id: 9 }), []);
    let saved = PathBuf::from("/downloads/report (1).pdf");
    let outputs = alice.file_saved(9, Ok(saved));
    assert!(events(&outputs).contains(&UserEvent::FileReceived {
        id: 9,
        from: "bob".into(),
        name: "report.pdf".into(),
        path: "/downloads/report (1).pdf".into(),
        size: 40,
        sha256: crate::transfer::hex(&digest(&data)),
    }));
}

#[test]
fn a_tampered_chunk_deletes_the_partial_file_and_gives_the_file_up() {
    let bob = Peer::new(b"bob");
    let mut alice = alice_in_vault(&bob);
    let data = vec![b'x'; 40];
    let (meta, keys) = bob_offers(&bob, "x.bin", &data);
    notice(&mut alice, offered(&bob, 2, "vault", meta.clone()));
    let part = accept(&mut alice, 2);
    notice(&mut alice, chunk_of(&meta, &keys, &data, 2, 0));
    let FileNotice::Chunk {
        id,
        index,
        data: sealed,
    } = chunk_of(&meta, &keys, &data, 2, 1)
    else {
        unreachable!()
    };
    let mut flipped = sealed.to_vec();
    flipped[20] ^= 1;
    let outputs = notice(
        &mut alice,
        FileNotice::Chunk {
            id,
            index,
            data: flipped.into(),
        },
    );
    let problem = file_failed(&outputs).expect("a loud failure");
    assert!(
        problem.contains("chunk 1") && problem.contains("deleted"),
        "{problem}"
    );
    assert_eq!(file_ops(&outputs), [FileOp::Delete { path: part }]);
    assert_eq!(sent_files(&outputs), [FileRequest::Cancel { id: 2 }]);
    // What follows for that file is ignored, and the cancel's answer is quiet.
    assert_eq!(notice(&mut alice, chunk_of(&meta, &keys, &data, 2, 2)), []);
    assert_eq!(events(&alice.reply(1, b"No file 2.")), []);
}

#[test]
fn a_wrong_digest_fails_at_the_end() {
    let bob = Peer::new(b"bob");
    let mut alice = alice_in_vault(&bob);
    let data = vec![b'y'; 20];
    // Sealed for other content: every chunk is fine, the whole is not.
    let (meta, keys) = bob_offers(&bob, "y.bin", &[b'z'; 20]);
    notice(&mut alice, offered(&bob, 3, "vault", meta.clone()));
    let part = accept(&mut alice, 3);
    notice(&mut alice, chunk_of(&meta, &keys, &data, 3, 0));
    let outputs = notice(&mut alice, chunk_of(&meta, &keys, &data, 3, 1));
    assert!(file_failed(&outputs).unwrap().contains("SHA-256"));
    assert!(file_ops(&outputs).contains(&FileOp::Delete { path: part }));
    assert!(!file_ops(&outputs)
        .iter()
        .any(|op| matches!(op, FileOp::Save { .. })));
}

#[test]
fn offers_that_fail_their_checks_are_declined() {
    let bob = Peer::new(b"bob");
    let mut alice = alice_in_vault(&bob);
    let data = b"secret".to_vec();
    let (meta, _) = bob_offers(&bob, "s.txt", &data);
    let mut forged = meta.clone();
    forged.size += 1;
    let mut plain = meta.clone();
    plain.flags = 0;
    sign_in_vault(&bob, &mut plain);
    let mut wrong_size = meta.clone();
    wrong_size.manifest = Bytes::copy_from_slice(
        &FileKeys::derive(&ROOM_KEY, &meta.nonce).seal_manifest(&digest(&data), 99),
    );
    sign_in_vault(&bob, &mut wrong_size);
    let mallory = Peer::with_identity(b"bob", identity(1));
    let cases = [
        (
            "a changed field",
            offered(&bob, 1, "vault", forged),
            "signature",
        ),
        (
            "in clear",
            offered(&bob, 2, "vault", plain),
            "not encrypted",
        ),
        (
            "another key than bob's",
            offered(&mallory, 3, "vault", meta.clone()),
            "not the one",
        ),
        (
            "another room",
            offered(&bob, 4, "lobby", meta.clone()),
            "signature",
        ),
        (
            "a manifest for another size",
            offered(&bob, 5, "vault", wrong_size),
            "size",
        ),
    ];
    for (case, offer, words) in cases {
        let id = match &offer {
            FileNotice::Offered { id, .. } => *id,
            _ => unreachable!(),
        };
        let outputs = notice(&mut alice, offer);
        let problem = file_failed(&outputs).unwrap_or_else(|| panic!("{case}: {outputs:?}"));
        assert!(problem.contains(words), "{case}: {problem}");
        assert_eq!(
            sent_files(&outputs),
            [FileRequest::Decision { id, accept: false }],
            "{case}"
        );
        assert_eq!(events(&alice.reply(0, b"")), [], "{case}");
    }
}

#[test]
fn a_replayed_offer_is_refused() {
    let bob = Peer::new(b"bob");
    let mut alice = alice_in_vault(&bob);
    let (meta, _) = bob_offers(&bob, "s.txt", b"secret");
    let outputs = notice(&mut alice, offered(&bob, 1, "vault", meta.clone()));
    assert!(matches!(
        &events(&outputs)[..],
        [UserEvent::FileOffered { .. }]
    ));
    // The same frame again: ignored, the first offer untouched.
    let outputs = notice(&mut alice, offered(&bob, 1, "vault", meta.clone()));
    assert!(file_failed(&outputs).unwrap().contains("replay"));
    assert_eq!(sent_files(&outputs), []);
    // Offered again under another id: its counter is spent.
    let outputs = notice(&mut alice, offered(&bob, 2, "vault", meta));
    assert!(file_failed(&outputs).unwrap().contains("replay"));
    assert_eq!(
        sent_files(&outputs),
        [FileRequest::Decision {
            id: 2,
            accept: false
        }]
    );
    alice.reply(0, b"");
    // And so is a message under that counter: offers and messages share it.
    let mut bobs = Peer::new(b"bob");
    bobs.in_vault(1, &ROOM_KEY);
    let sealed = bobs.seal_room(b"counter 1 again");
    let outputs = alice.receive(&encode_room_message(b"vault", b"bob", &sealed));
    assert!(matches!(
        &events(&outputs)[..],
        [UserEvent::Rejected { .. }]
    ));
    // The first offer is still there to accept.
    let outputs = alice.line("\\file accept 1");
    assert_eq!(
        sent_files(&outputs),
        [FileRequest::Decision {
            id: 1,
            accept: true
        }]
    );
}

#[test]
fn a_file_cut_off_by_a_dropped_connection_resumes_on_the_next() {
    let bob = Peer::new(b"bob");
    let mut alice = alice_in_vault(&bob);
    let data: Vec<u8> = (0..64u8).collect();
    let (meta, keys) = bob_offers(&bob, "big.bin", &data);
    notice(&mut alice, offered(&bob, 4, "vault", meta.clone()));
    let part = accept(&mut alice, 4);
    notice(&mut alice, chunk_of(&meta, &keys, &data, 4, 0));
    notice(&mut alice, chunk_of(&meta, &keys, &data, 4, 1));

    let outputs = alice.closed("Server hung up");
    assert!(events(&outputs).contains(&UserEvent::FilePaused {
        id: 4,
        name: "big.bin".into()
    }));
    assert_eq!(file_ops(&outputs), [], "the partial file stays");

    // A new connection: once the key is registered, the file resumes.
    alice.line("\\connect 127.0.0.1:4170");
    let binding = [0x3c; 32];
    alice.opened(Some(binding));
    alice.reply(0, b"alice2");
    let outputs = alice.reply(0, b"");
    let [FileRequest::Resume {
        id: 4,
        token,
        proof,
    }] = &sent_files(&outputs)[..]
    else {
        panic!("FILE_RESUME: {outputs:?}");
    };
    assert_eq!(token, &[0xaa; 16]);
    // Signed by alice's identity, for this connection.
    let statement = secure::resume_statement(4, token, &binding);
    assert_eq!(kat::peer().verify(&statement, proof), Ok(()));
    let outputs = alice.reply(0, b"");
    assert_eq!(
        events(&outputs),
        [UserEvent::FileResumed {
            id: 4,
            name: "big.bin".into(),
            chunks: 2
        }]
    );
    // Chunk 1's ack was lost: it comes again and is acknowledged again.
    let outputs = notice(&mut alice, chunk_of(&meta, &keys, &data, 4, 1));
    assert_eq!(sent_files(&outputs), [FileRequest::Ack { id: 4, index: 1 }]);
    assert_eq!(file_ops(&outputs), []);
    notice(&mut alice, chunk_of(&meta, &keys, &data, 4, 2));
    let outputs = notice(&mut alice, chunk_of(&meta, &keys, &data, 4, 3));
    assert!(file_ops(&outputs).contains(&FileOp::Save {
        id: 4,
        part,
        dir: PathBuf::from("/downloads"),
        name: "big.bin".into(),
    }));
}

#[test]
fn a_resume_refused_deletes_the_partial_file() {
    let bob = Peer::new(b"bob");
    let mut alice = alice_in_vault(&bob);
    let data = vec![1; 64];
    let (meta, keys) = bob_offers(&bob, "f", &data);
    notice(&mut alice, offered(&bob, 6, "vault", meta.clone()));
    let part = accept(&mut alice, 6);
    notice(&mut alice, chunk_of(&meta, &keys, &data, 6, 0));
    alice.line("\\disconnect");
    alice.line("\\connect 127.0.0.1:4170");
    alice.opened(None);
    alice.reply(0, b"alice");
    alice.reply(0, b"");
    let text = b"File 6 cannot be resumed: chunks you lack were already dropped. Ask the sender to send it again.";
    let outputs = alice.reply(1, text);
    assert_eq!(
        events(&outputs),
        [UserEvent::FileResumeFailed {
            id: 6,
            name: "f".into(),
            from: "bob".into(),
            text: show(text),
        }]
    );
    assert_eq!(file_ops(&outputs), [FileOp::Delete { path: part }]);
}

#[test]
fn an_ended_transfer_deletes_the_partial_file_and_quitting_drops_paused_ones() {
    let bob = Peer::new(b"bob");
    let mut alice = alice_in_vault(&bob);
    let data = vec![2; 64];
    let (meta, keys) = bob_offers(&bob, "g", &data);
    notice(&mut alice, offered(&bob, 7, "vault", meta.clone()));
    let part = accept(&mut alice, 7);
    notice(&mut alice, chunk_of(&meta, &keys, &data, 7, 0));
    let ended = FileNotice::Ended {
        id: 7,
        who: Bytes::new(),
        reason: EndReason::SenderLeft,
        text: "The sender disconnected.".into(),
    };
    let outputs = notice(&mut alice, ended);
    assert_eq!(file_ops(&outputs), [FileOp::Delete { path: part }]);
    assert_eq!(
        events(&outputs),
        [UserEvent::FileEnded {
            id: 7,
            direction: Direction::Receive,
            name: "g".into(),
            who: None,
            reason: "sender_left".into(),
            text: "The sender disconnected.".into(),
        }]
    );

    // Paused by a drop, then \quit while offline: the partial file goes.
    let (meta, _) = bob_offers_under(&bob, "g", &data, (1, &ROOM_KEY), 2);
    notice(&mut alice, offered(&bob, 8, "vault", meta));
    let part = accept(&mut alice, 8);
    alice.closed("Server hung up");
    let outputs = alice.line("\\quit");
    assert_eq!(file_ops(&outputs), [FileOp::Delete { path: part }]);
    assert_eq!(outputs.last(), Some(&Output::Quit));
}

#[test]
fn a_key_that_has_not_arrived_holds_the_accept_and_the_list_shows_it_all() {
    let bob = Peer::new(b"bob");
    let mut alice = alice_in_vault(&bob);
    let data = vec![3; 20];
    let (meta, _) = bob_offers_under(&bob, "h", &data, (2, &[8; 32]), 1);
    notice(&mut alice, offered(&bob, 1, "vault", meta));
    let outputs = alice.line("\\file accept 1");
    assert_eq!(sent(&outputs), []);
    assert!(
        matches!(&events(&outputs)[..], [UserEvent::Error { text }] if text.contains("has not arrived"))
    );
    alice.secure(room_key_for_alice("vault", 2, &[8; 32]));
    let outputs = alice.line("\\file accept 1");
    assert_eq!(
        sent_files(&outputs),
        [FileRequest::Decision {
            id: 1,
            accept: true
        }]
    );
    let outputs = alice.line("\\file list");
    let [UserEvent::FileList { transfers }] = &events(&outputs)[..] else {
        panic!("{outputs:?}");
    };
    assert_eq!(transfers.len(), 1);
    assert_eq!(
        (transfers[0].id, transfers[0].state, transfers[0].total),
        (1, "answering", 20)
    );
    // The decision times out on the server.
    let outputs = alice.reply(1, b"No file 1 is waiting for your answer.");
    assert_eq!(
        events(&outputs),
        [UserEvent::Failed {
            text: "No file 1 is waiting for your answer.".into()
        }]
    );
    let outputs = alice.line("\\file decline 1");
    assert!(matches!(&events(&outputs)[..], [UserEvent::Error { .. }]));
}
