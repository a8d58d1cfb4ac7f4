//! Receiving a file (PROTOCOL.md §14), from its offer (`83`) to the file
//! saved under its name.
//!
//! An offer is checked before it is shown: the sender's identity and
//! signature, that the chunk count matches the size, and that it is
//! sealed (a file in clear is declined: nothing is received in clear).
//! Once the file's key is here (at once, or by the time it is accepted),
//! the offer's counter must be new under it, so a replayed offer fails,
//! and the sealed manifest must open: it holds the file's SHA-256, which
//! never travels in clear. Chunks must arrive in order; each is checked
//! (MAC, then decryption, then its length), hashed, written to `NAME.part`
//! and acknowledged. With the last chunk the SHA-256 of the whole must be
//! the manifest's; only then is the file moved into place. Any failure
//! deletes the partial file, says so loudly and gives the file up (`8f`).

use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::Bytes;
use sha2::Digest;
use subtle::ConstantTimeEq;

use super::{ClientSession, Output, Outputs, QueuedRequest};
use crate::event::{show, UserEvent};
use crate::transfer::{
    empty_digest, hex, safe_name, FileOp, InStage, InboundFile, KeySource, Unsealed,
};
use parlor_crypto::envelope::Kind;
use parlor_crypto::file::{chunk_count, chunk_span, verify_offer, FileKeys, OfferContext};
use parlor_crypto::keyring::KeyRef;
use parlor_crypto::PeerIdentity;
use parlor_proto::secure::Identity as IdentityBlock;
use parlor_proto::transfer::{FileMeta, FileRequest};

/// What looking up the key of a file we receive came to.
enum KeyLookup {
    Found(Unsealed),
    /// Not (yet) here: a room key may still be on its way.
    Missing,
    /// The key is here, and the offer fails with it: `problem`.
    Refused(&'static str),
}

/// A file offered to us (`83`), as its notice has it.
pub(super) struct Offer {
    pub(super) id: u32,
    pub(super) sender: Bytes,
    pub(super) sender_identity: IdentityBlock,
    /// Empty for a file to us alone.
    pub(super) room: Bytes,
    pub(super) meta: FileMeta,
}

impl ClientSession {
    pub(super) fn file_offered(&mut self, offer: Offer, now: Instant, out: &mut Vec<Output>) {
        let Offer {
            id,
            sender,
            sender_identity,
            room,
            meta,
        } = offer;
        let name = safe_name(&meta.name);
        let from = show(&sender);
        let room = (!room.is_empty()).then(|| room.to_vec());
        // The server never offers one id twice: a second offer under it is
        // a copy, and answering it would answer the first.
        let copy = self.files.incoming.contains_key(&id);
        let connection = self.connection.as_mut().expect("a frame arrived");
        let checked = check_offer(
            connection,
            &sender,
            &sender_identity,
            room.as_deref(),
            &meta,
        );
        let checked = checked.and_then(|(signer, source)| {
            match unseal(connection, &source, &signer, &meta, now) {
                KeyLookup::Refused(problem) => Err(problem),
                KeyLookup::Found(unsealed) => Ok((signer, source, Some(unsealed))),
                KeyLookup::Missing => Ok((signer, source, None)),
            }
        });
        let (sender_identity, source, unsealed) = match checked {
            Ok(checked) if !copy => checked,
            failed => {
                let problem = failed
                    .err()
                    .unwrap_or("it repeats an offer already made (a replay)");
                let answer = if copy { "ignored" } else { "declined" };
                out.event(UserEvent::FileFailed {
                    id,
                    name,
                    from,
                    problem: format!("{problem}; the offer was {answer}"),
                });
                if !copy {
                    let decline = QueuedRequest::FileDecision { id, accept: false };
                    self.queue_file_request(decline, now, out);
                }
                return;
            }
        };
        out.event(UserEvent::FileOffered {
            id,
            from,
            room: room.as_deref().map(show),
            name: name.clone(),
            size: meta.size,
        });
        self.files.incoming.insert(
            id,
            InboundFile {
                from: sender.to_vec(),
                name,
                meta,
                source,
                sender: sender_identity,
                unsealed,
                stage: InStage::Offered,
                token: None,
                part: None,
                next: 0,
                bytes: 0,
                hasher: sha2::Sha256::new(),
            },
        );
    }

    pub(super) fn decide_file(
        &mut self,
        id: u32,
        accept: bool,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        if !self.files_possible(out) {
            return;
        }
        let connection = self.connection.as_mut().expect("checked");
        let Some(file) = self
            .files
            .incoming
            .get_mut(&id)
            .filter(|file| file.stage == InStage::Offered)
        else {
            return out.error(&format!("No file {id} is waiting for your answer."));
        };
        if accept && file.unsealed.is_none() {
            match unseal(connection, &file.source, &file.sender, &file.meta, now) {
                KeyLookup::Found(unsealed) => file.unsealed = Some(unsealed),
                KeyLookup::Missing => {
                    let text = format!(
                        "Cannot open file {id} yet: the key it is sealed with has not arrived. Try again in a moment."
                    );
                    return out.error(&text);
                }
                KeyLookup::Refused(problem) => {
                    return self.integrity_failure(id, problem, now, out)
                }
            }
        }
        file.stage = InStage::Answering;
        self.queue_file_request(QueuedRequest::FileDecision { id, accept }, now, out);
    }

    /// A chunk relayed to us.
    pub(super) fn file_chunk(
        &mut self,
        id: u32,
        index: u32,
        data: Bytes,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        let Some(file) = self.files.incoming.get_mut(&id) else {
            // Late: for a file we gave up.
            return;
        };
        if file.stage != InStage::Receiving {
            return;
        }
        if index < file.next {
            // Received before, its ack lost with a connection: say so again.
            return self.send_file(FileRequest::Ack { id, index }, now, out);
        }
        if index > file.next {
            let text = format!("chunk {index} came before chunk {}", file.next);
            return self.integrity_failure(id, &text, now, out);
        }
        let meta = &file.meta;
        let keys = &file
            .unsealed
            .as_ref()
            .expect("accepted only with its keys")
            .keys;
        let plaintext = match keys.open_chunk(index, meta.chunk_count, &data) {
            Ok(plaintext) => Bytes::copy_from_slice(&plaintext),
            Err(_) => {
                let text = format!("chunk {index} failed its integrity check (MAC)");
                return self.integrity_failure(id, &text, now, out);
            }
        };
        let (offset, len) = chunk_span(meta.size, meta.chunk_size, index);
        if plaintext.len() != len {
            let text = format!("chunk {index} holds {} bytes, not {len}", plaintext.len());
            return self.integrity_failure(id, &text, now, out);
        }
        let path = file
            .part
            .clone()
            .expect("a receiving file has a partial file");
        file.hasher.update(&plaintext);
        file.next += 1;
        file.bytes += len as u64;
        let complete = file.next == meta.chunk_count;
        let progress = file.progress(id, false);
        out.push(Output::File(FileOp::Write {
            id,
            path,
            offset,
            data: plaintext,
        }));
        self.send_file(FileRequest::Ack { id, index }, now, out);
        out.push(Output::Progress(progress));
        if complete {
            self.verify_file(id, now, out);
        }
    }

    /// `88` relayed: the sender sent everything. A non-empty file was
    /// verified with its last chunk already.
    pub(super) fn file_done(&mut self, id: u32, now: Instant, out: &mut Vec<Output>) {
        let Some(file) = self.files.incoming.get(&id) else {
            return;
        };
        if file.stage != InStage::Receiving {
            return;
        }
        if file.next < file.meta.chunk_count {
            let text = format!(
                "the sender finished after {} of {} chunks",
                file.next, file.meta.chunk_count
            );
            return self.integrity_failure(id, &text, now, out);
        }
        self.verify_file(id, now, out);
    }

    /// Every chunk is in: the whole must hash to the signed digest.
    fn verify_file(&mut self, id: u32, now: Instant, out: &mut Vec<Output>) {
        let file = self.files.incoming.get_mut(&id).expect("caller checked");
        let digest: [u8; 32] = file.hasher.clone().finalize().into();
        debug_assert!(file.meta.size != 0 || digest == empty_digest());
        let sealed = &file
            .unsealed
            .as_ref()
            .expect("received only with its keys")
            .digest;
        if !bool::from(digest.ct_eq(sealed)) {
            let text = "the file's SHA-256 is not the one its sender sealed in the offer";
            return self.integrity_failure(id, text, now, out);
        }
        file.stage = InStage::Saving;
        out.push(Output::File(FileOp::Save {
            id,
            part: file
                .part
                .clone()
                .expect("a receiving file has a partial file"),
            dir: self.files.settings.download_dir.clone(),
            name: file.name.clone(),
        }));
    }

    /// The shell moved a verified file into place for [`FileOp::Save`]:
    /// where it is now, or the error that kept it from there.
    pub fn handle_file_saved(
        &mut self,
        id: u32,
        saved: io::Result<PathBuf>,
        out: &mut Vec<Output>,
    ) {
        if let Some(file) = self.files.incoming.remove(&id) {
            out.push(Output::Progress(file.progress(id, true)));
            match saved {
                Ok(path) => out.event(UserEvent::FileReceived {
                    id,
                    from: show(&file.from),
                    name: file.name,
                    path: path.display().to_string(),
                    size: file.meta.size,
                    sha256: hex(&file.unsealed.as_ref().expect("saved only verified").digest),
                }),
                Err(err) => {
                    if let Some(part) = file.part {
                        out.push(Output::File(FileOp::Delete { path: part }));
                    }
                    out.error(&format!(
                        "File {id} '{}' was verified but could not be saved: {err}",
                        file.name
                    ));
                }
            }
        }
    }

    /// The shell could not create or write the partial file of `id`.
    pub fn handle_file_io_failed(
        &mut self,
        id: u32,
        err: &io::Error,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        if let Some(file) = self.files.incoming.remove(&id) {
            if let Some(part) = &file.part {
                out.push(Output::File(FileOp::Delete { path: part.clone() }));
            }
            out.push(Output::Progress(file.progress(id, true)));
            out.error(&format!(
                "File {id} '{}' is given up: cannot write {}: {err}",
                file.name,
                file.part.as_deref().unwrap_or(Path::new("?")).display()
            ));
            self.give_up_on_server(id, file.stage, now, out);
        }
    }

    /// Something about a file we receive cannot be trusted: delete what we
    /// have, say so loudly, and give the file up.
    fn integrity_failure(&mut self, id: u32, problem: &str, now: Instant, out: &mut Vec<Output>) {
        let Some(file) = self.files.incoming.remove(&id) else {
            return;
        };
        if let Some(part) = file.part.clone() {
            out.push(Output::File(FileOp::Delete { path: part }));
        }
        out.push(Output::Progress(file.progress(id, true)));
        let deleted = if file.part.is_some() {
            "; the partial file was deleted and the file given up"
        } else {
            "; the file was given up"
        };
        out.event(UserEvent::FileFailed {
            id,
            name: file.name,
            from: show(&file.from),
            problem: format!("{problem}{deleted}"),
        });
        self.give_up_on_server(id, file.stage, now, out);
    }

    /// Tells the server we are out of a file we were offered or receive.
    pub(super) fn give_up_on_server(
        &mut self,
        id: u32,
        stage: InStage,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        let request = match stage {
            InStage::Offered => QueuedRequest::FileDecision { id, accept: false },
            InStage::Receiving | InStage::Resuming | InStage::Saving | InStage::Answering => {
                QueuedRequest::FileCancel { id }
            }
            // Not attached to any connection of ours.
            InStage::Detached => return,
        };
        self.queue_file_request(request, now, out);
    }
}

/// Checks an offer before it is shown: who signed it, that its numbers add
/// up, and that it is sealed (nothing is received in clear). Returns the
/// signer and where the file's key comes from.
fn check_offer(
    connection: &super::ConnectionState,
    sender: &[u8],
    identity: &IdentityBlock,
    room: Option<&[u8]>,
    meta: &FileMeta,
) -> Result<(PeerIdentity, KeySource), &'static str> {
    let signer = PeerIdentity::from_block(identity, sender)
        .map_err(|_| "the sender's identity does not check out")?;
    if let Some((known, _)) = connection.keyring.peer(sender) {
        if known.fingerprint() != signer.fingerprint() {
            return Err("it is signed with a key that is not the one the sender registered");
        }
    }
    let place = match room {
        Some(room) => OfferContext {
            kind: Kind::Room,
            context: room,
            sender,
        },
        None => OfferContext {
            kind: Kind::Direct,
            context: &connection.name,
            sender,
        },
    };
    verify_offer(&signer, &place, meta).map_err(|_| "its signature does not verify")?;
    if chunk_count(meta.size, meta.chunk_size) != Some(meta.chunk_count) {
        return Err("its chunk count does not match its size");
    }
    if !meta.encrypted() {
        return Err("it is not encrypted");
    }
    let source = match room {
        Some(room) => KeySource::Room {
            room: room.to_vec(),
            epoch: meta.key_id,
        },
        None => KeySource::Dm {
            key_id: meta.key_id,
        },
    };
    Ok((signer, source))
}

/// With the file's issued key, if it is here: the offer's counter must be
/// new under it (a replayed offer fails here, as a replayed message
/// would), and the manifest must open and name the offered size.
fn unseal(
    connection: &mut super::ConnectionState,
    source: &KeySource,
    signer: &PeerIdentity,
    meta: &FileMeta,
    now: Instant,
) -> KeyLookup {
    let (key, issued) = match source {
        KeySource::Room { room, epoch } => {
            let key = KeyRef::Room {
                room,
                epoch: *epoch,
            };
            (key, connection.keyring.room_key(room, *epoch, now).cloned())
        }
        KeySource::Dm { key_id } => match connection.keyring.dm_key(*key_id) {
            Some((peer, _)) if peer.fingerprint() != signer.fingerprint() => {
                return KeyLookup::Refused("it is sealed with a DM key not shared with its sender")
            }
            found => (
                KeyRef::Dm { key_id: *key_id },
                found.map(|(_, key)| key.clone()),
            ),
        },
    };
    let Some(issued) = issued else {
        return KeyLookup::Missing;
    };
    let keys = FileKeys::derive(&issued, &meta.nonce);
    let Ok((digest, size)) = keys.open_manifest(&meta.manifest) else {
        return KeyLookup::Refused("its manifest does not open with the file's key");
    };
    if size != meta.size {
        return KeyLookup::Refused("its manifest names another size than its offer");
    }
    let signer = signer.fingerprint();
    if connection
        .keyring
        .accept_counter(key, signer, meta.counter, now)
        .is_err()
    {
        return KeyLookup::Refused("it repeats an offer already made (a replay)");
    }
    KeyLookup::Found(Unsealed { keys, digest })
}
