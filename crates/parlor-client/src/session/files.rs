//! File transfer in the session (PROTOCOL.md §14): offers and answers, the
//! sender's window, sealed chunks, verification, and resume after a
//! reconnect. What is kept per file is in [`crate::transfer`].
//!
//! Sending: `\file send` asks the shell to hash the file; the hashed file
//! waits its turn as a request, and is sealed and signed when it goes out,
//! under the room key (or DM key) current then. Once everyone has answered
//! (`85`), the session asks the shell for chunks up to the window, seals
//! each as it is read and sends it, and asks for more as `8d` moves the
//! window; FILE_DONE goes after the last chunk.
//!
//! Receiving: an offer (`83`) is checked before it is shown: the sender's
//! signature, that the chunk count matches the size, and that a file in a
//! secure room or to us alone is encrypted. Chunks must arrive in order;
//! each is checked (MAC, then decryption, then its length), hashed, written
//! to `NAME.part` and acknowledged. With the last chunk the SHA-256 of the
//! whole must be the signed one; only then is the file moved into place.
//! Any failure deletes the partial file, says so loudly and gives the file
//! up (`8f`).
//!
//! Resume: when the connection drops, a file being received keeps its
//! partial file, running hash, keys and resume token. After the next
//! connection registers its key, the session sends FILE_RESUME for each;
//! the server resends what was not acknowledged (a chunk received whose
//! ack was lost comes again, and is acknowledged again, not rewritten).

use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::Bytes;
use sha2::Digest;
use subtle::ConstantTimeEq;

use super::{no_key_text, Output, Pending, Request, Session};
use crate::command::FileCommand;
use crate::event::{show, Direction, Event, FileStatus};
use crate::transfer::{
    empty_digest, hex, part_path, safe_name, FileOp, FileSettings, InStage, Incoming, KeySource,
    Offering, OutStage, Outgoing, PreparedFile, Preparing,
};
use parlor_crypto::envelope::Kind;
use parlor_crypto::file::{
    chunk_count, chunk_span, sign_offer, verify_offer, FileKeys, OfferContext,
};
use parlor_crypto::PeerKey;
use parlor_proto::transfer::{
    encode_chunk, opcode, EndReason, FileMeta, FileNotice, FileRequest, FILE_FLAG_ENCRYPTED,
    NONCE_LEN,
};
use parlor_proto::ClientMessage;

/// The longest name a file can be offered under.
const MAX_FILE_NAME: usize = u8::MAX as usize;

/// What looking up the key of a file we receive found.
enum KeyLookup {
    Found(Option<FileKeys>),
    /// Not (yet) here: a room key may still be on its way.
    Missing,
    /// The DM key of that id belongs to someone other than the sender.
    NotTheSenders,
}

impl Session {
    /// The same session, with these file settings.
    pub fn with_file_settings(mut self, settings: FileSettings) -> Session {
        self.files.settings = settings;
        self
    }

    pub(super) fn file_command(&mut self, command: FileCommand, now: Instant) {
        match command {
            FileCommand::List => {
                let transfers = self.file_statuses();
                self.event(Event::FileList { transfers });
            }
            FileCommand::Send { path, target } => self.prepare_file(path, target),
            FileCommand::Accept(id) => self.decide_file(id, true, now),
            FileCommand::Decline(id) => self.decide_file(id, false, now),
            FileCommand::Cancel(id) => self.cancel_file(id, now),
        }
    }

    /// Whether files can go over this connection, or why not.
    fn files_possible(&mut self) -> bool {
        let text = match &self.connection {
            None => "Not connected to a chat server.",
            Some(_) if self.identity.is_none() => {
                "File transfer is part of the secure extension; this client runs with --legacy."
            }
            Some(connection) if !connection.secure => {
                "File transfer needs a registered key, and this connection has none."
            }
            Some(_) => return true,
        };
        self.error(text);
        false
    }

    // ---------------------------------------------------------------
    // Sending

    fn prepare_file(&mut self, path: String, target: Option<Vec<u8>>) {
        if !self.files_possible() {
            return;
        }
        let Some(name) = Path::new(&path).file_name() else {
            return self.error(&format!("'{path}' does not name a file."));
        };
        let name = name.to_string_lossy().into_owned().into_bytes();
        if name.len() > MAX_FILE_NAME {
            return self.error("File name is longer than 255 bytes.");
        }
        if name.iter().any(|&b| b < b' ' || b == 0x7f) {
            return self.error("File name must not contain control characters.");
        }
        let local = self.files.next_local;
        self.files.next_local = local.wrapping_add(1);
        let path = PathBuf::from(path);
        self.files.preparing.insert(
            local,
            Preparing {
                path: path.clone(),
                name,
                target,
            },
        );
        self.out.push(Output::File(FileOp::Hash { local, path }));
    }

    /// The shell read the file asked for with [`FileOp::Hash`]: its size
    /// and SHA-256, or why it could not.
    pub fn file_hashed(
        &mut self,
        local: u32,
        hashed: Result<(u64, [u8; 32]), String>,
        now: Instant,
    ) -> Vec<Output> {
        if let Some(preparing) = self.files.preparing.remove(&local) {
            self.file_ready(preparing, hashed, now);
        }
        self.take_output()
    }

    fn file_ready(
        &mut self,
        preparing: Preparing,
        hashed: Result<(u64, [u8; 32]), String>,
        now: Instant,
    ) {
        let shown = preparing.path.display().to_string();
        let (size, digest) = match hashed {
            Ok(hashed) => hashed,
            Err(err) => return self.error(&format!("Cannot read '{shown}': {err}")),
        };
        if chunk_count(size, self.files.settings.chunk_size).is_none() {
            return self.error(&format!("'{shown}' is too large to send."));
        }
        let Some(connection) = &mut self.connection else {
            return self.error(&format!(
                "Not connected to a chat server; '{shown}' was not offered."
            ));
        };
        connection
            .queue
            .push_back(Request::FileOffer(Box::new(PreparedFile {
                path: preparing.path,
                name: preparing.name,
                target: preparing.target,
                size,
                digest,
            })));
        self.dispatch(now);
    }

    /// Seals and signs the offer under the key current now, and sends it;
    /// to a user we share no DM key with, asks for one first.
    pub(super) fn start_file_offer(&mut self, file: PreparedFile, now: Instant) {
        if !self.files_possible() {
            return;
        }
        let identity = self.identity.as_ref().expect("checked");
        let connection = self.connection.as_mut().expect("checked");
        let shown_name = show(&file.name);
        let (kind, context, issued, key_id, room) = match &file.target {
            None => {
                let Some(room) = &connection.room else {
                    return self.error(
                        "You are not in a room: \\file send PATH USER sends a file to one user.",
                    );
                };
                if room.secure {
                    let current = connection.keyring.room_epoch(&room.name).and_then(|epoch| {
                        let key = connection.keyring.room_key(&room.name, epoch)?;
                        Some((epoch, key.clone()))
                    });
                    let Some((epoch, key)) = current else {
                        let text = format!(
                            "The key of room '{}' has not arrived yet; '{shown_name}' was not offered. Try again in a moment.",
                            show(&room.name)
                        );
                        return self.error(&text);
                    };
                    let name = room.name.clone();
                    (Kind::Room, name.clone(), Some(key), epoch, Some(name))
                } else {
                    let name = room.name.clone();
                    self.out.push(Output::Event(Event::Warning {
                        text: format!(
                            "room '{}' is not end-to-end encrypted: '{shown_name}' is sent unencrypted, and the server and anyone on the path can read it.",
                            show(&name)
                        ),
                    }));
                    (Kind::Room, name.clone(), None, 0, Some(name))
                }
            }
            Some(target) => {
                if *target == connection.name {
                    return self.error("You cannot send a file to yourself.");
                }
                let Some(key_id) = connection.keyring.dm_key_id(target) else {
                    // Ask for a key first; the offer goes out after the reply.
                    let request = ClientMessage::DmKeyRequest {
                        target: Bytes::from(target.clone()),
                    };
                    connection.pending = Some(Pending::FileDmKey(Box::new(file)));
                    return self.send(&request, now);
                };
                let (_, key) = connection.keyring.dm_key(key_id).expect("held");
                (
                    Kind::Direct,
                    target.clone(),
                    Some(key.clone()),
                    key_id,
                    None,
                )
            }
        };
        let chunk_size = self.files.settings.chunk_size;
        let mut nonce = [0; NONCE_LEN];
        rand::fill(&mut nonce);
        let keys = issued.map(|issued| FileKeys::derive(&issued, &nonce));
        let mut meta = FileMeta {
            name: Bytes::from(file.name.clone()),
            size: file.size,
            chunk_size,
            chunk_count: chunk_count(file.size, chunk_size).expect("checked when hashed"),
            flags: if keys.is_some() {
                FILE_FLAG_ENCRYPTED
            } else {
                0
            },
            key_id,
            nonce,
            digest: file.digest,
            signature: Bytes::new(),
        };
        let place = OfferContext {
            kind,
            context: &context,
            sender: &connection.name,
        };
        meta.signature = sign_offer(identity, &place, &meta).into();
        let outgoing = Outgoing {
            name: safe_name(&file.name),
            path: file.path,
            room: room.as_deref().map(show),
            to: file.target.as_deref().map(show),
            size: meta.size,
            chunk_size,
            chunk_count: meta.chunk_count,
            digest: meta.digest,
            keys,
            stage: OutStage::Offered,
            recipients: Vec::new(),
        };
        let request = ClientMessage::File(FileRequest::Offer {
            target: Bytes::from(file.target.unwrap_or_default()),
            meta,
            window: self.files.settings.window,
        });
        self.files.offering = Some(Offering {
            id: None,
            skipped: Vec::new(),
            file: outgoing,
        });
        connection.pending = Some(Pending::FileOffer);
        self.send(&request, now);
    }

    /// `85`: everyone answered; fill the window.
    fn file_start(&mut self, id: u32, window: u8, recipients: Vec<Bytes>, now: Instant) {
        let Some(file) = self.files.outgoing.get_mut(&id) else {
            return;
        };
        if file.stage != OutStage::Offered {
            return;
        }
        file.stage = OutStage::Sending {
            window: window.max(1),
            acked: 0,
            read: 0,
            sent: 0,
        };
        file.recipients = recipients.iter().map(|name| show(name)).collect();
        let event = Event::FileStarted {
            id,
            name: file.name.clone(),
            recipients: file.recipients.clone(),
        };
        let progress = file.progress(id, false);
        self.event(event);
        self.out.push(Output::Progress(progress));
        self.fill_window(id, now);
    }

    /// Asks for the chunks the window allows, or sends FILE_DONE for an
    /// empty file.
    fn fill_window(&mut self, id: u32, now: Instant) {
        let Some(file) = self.files.outgoing.get_mut(&id) else {
            return;
        };
        let OutStage::Sending {
            window,
            acked,
            read,
            ..
        } = &mut file.stage
        else {
            return;
        };
        if file.chunk_count == 0 {
            file.stage = OutStage::Done { acked: 0 };
            return self.queue_file_request(Request::FileDone { id }, now);
        }
        let limit = acked
            .saturating_add(u32::from(*window))
            .min(file.chunk_count);
        while *read < limit {
            let (offset, len) = chunk_span(file.size, file.chunk_size, *read);
            self.out.push(Output::File(FileOp::Read {
                id,
                index: *read,
                path: file.path.clone(),
                offset,
                len,
            }));
            *read += 1;
        }
    }

    /// The shell read chunk `index` of file `id` for [`FileOp::Read`].
    pub fn chunk_read(
        &mut self,
        id: u32,
        index: u32,
        read: Result<Bytes, String>,
        now: Instant,
    ) -> Vec<Output> {
        self.send_chunk(id, index, read, now);
        self.take_output()
    }

    fn send_chunk(&mut self, id: u32, index: u32, read: Result<Bytes, String>, now: Instant) {
        // A file withdrawn or ended meanwhile: the read is not needed.
        let Some(file) = self.files.outgoing.get_mut(&id) else {
            return;
        };
        let OutStage::Sending { acked, sent, .. } = &mut file.stage else {
            return;
        };
        let (_, len) = chunk_span(file.size, file.chunk_size, index);
        let data = match read {
            Err(err) => {
                let text = format!("cannot read '{}': {err}", file.path.display());
                return self.withdraw(id, &text, now);
            }
            Ok(data) if data.len() != len || index != *sent => {
                let text = format!("'{}' changed while it was sent", file.path.display());
                return self.withdraw(id, &text, now);
            }
            Ok(data) => data,
        };
        let sealed = match &file.keys {
            Some(keys) => &keys.seal_chunk(index, file.chunk_count, &data)[..],
            None => &data[..],
        };
        let frame = encode_chunk(opcode::FILE_CHUNK, id, index, sealed);
        *sent += 1;
        let last = *sent == file.chunk_count;
        if last {
            file.stage = OutStage::Done { acked: *acked };
        }
        if let Some(connection) = &mut self.connection {
            connection.last_traffic = now;
        }
        self.out.push(Output::Send(frame));
        if last {
            self.queue_file_request(Request::FileDone { id }, now);
        }
    }

    /// Gives up a file we send because of a local problem.
    fn withdraw(&mut self, id: u32, problem: &str, now: Instant) {
        let Some(file) = self.files.outgoing.remove(&id) else {
            return;
        };
        self.error(&format!(
            "File {id} '{}' is withdrawn: {problem}.",
            file.name
        ));
        self.file_over(Direction::Send, id, &file.name, "cancelled", problem);
        self.out.push(Output::Progress(file.progress(id, true)));
        self.queue_file_request(Request::FileCancel { id }, now);
    }

    /// `8d`: every recipient acknowledged chunks `0..acked`.
    fn file_window(&mut self, id: u32, acked: u32, now: Instant) {
        let Some(file) = self.files.outgoing.get_mut(&id) else {
            return;
        };
        match &mut file.stage {
            OutStage::Sending { acked: mark, .. } | OutStage::Done { acked: mark } => {
                *mark = (*mark).max(acked.min(file.chunk_count));
            }
            OutStage::Offered => return,
        }
        let progress = file.progress(id, false);
        self.out.push(Output::Progress(progress));
        self.fill_window(id, now);
    }

    /// `8e`: delivered.
    fn file_finished(&mut self, id: u32, delivered: Vec<Bytes>) {
        let Some(mut file) = self.files.outgoing.remove(&id) else {
            return;
        };
        file.stage = OutStage::Done {
            acked: file.chunk_count,
        };
        self.out.push(Output::Progress(file.progress(id, true)));
        self.event(Event::FileSent {
            id,
            name: file.name,
            delivered: delivered.iter().map(|name| show(name)).collect(),
            sha256: hex(&file.digest),
        });
    }

    // ---------------------------------------------------------------
    // Receiving

    fn file_offered(
        &mut self,
        id: u32,
        sender: Bytes,
        sender_key: Bytes,
        room: Bytes,
        meta: FileMeta,
        now: Instant,
    ) {
        let connection = self.connection.as_ref().expect("a frame arrived");
        let name = safe_name(&meta.name);
        let from = show(&sender);
        let room = (!room.is_empty()).then(|| room.to_vec());
        let checked = check_offer(connection, &sender, &sender_key, room.as_deref(), &meta);
        let (key, source) = match checked {
            Ok(checked) => checked,
            Err(problem) => {
                self.event(Event::FileFailed {
                    id,
                    name,
                    from,
                    problem: format!("{problem}; the offer was declined"),
                });
                let decline = Request::FileDecision { id, accept: false };
                return self.queue_file_request(decline, now);
            }
        };
        let keys = match lookup_keys(connection, &source, &key, &meta) {
            KeyLookup::Found(keys) => keys,
            KeyLookup::Missing => None,
            KeyLookup::NotTheSenders => {
                self.event(Event::FileFailed {
                    id,
                    name,
                    from,
                    problem: "it is sealed with a DM key not shared with its sender; the offer was declined".into(),
                });
                let decline = Request::FileDecision { id, accept: false };
                return self.queue_file_request(decline, now);
            }
        };
        let encrypted = meta.encrypted();
        if !encrypted {
            self.event(Event::Warning {
                text: format!(
                    "file {id} '{name}' from {from} is not encrypted: the server and anyone on the path can read it."
                ),
            });
        }
        self.event(Event::FileOffered {
            id,
            from,
            room: room.as_deref().map(show),
            name: name.clone(),
            size: meta.size,
            encrypted,
        });
        self.files.incoming.insert(
            id,
            Incoming {
                from: sender.to_vec(),
                name,
                meta,
                source,
                sender_key: key,
                keys,
                stage: InStage::Offered,
                token: None,
                part: None,
                next: 0,
                bytes: 0,
                hasher: sha2::Sha256::new(),
            },
        );
    }

    fn decide_file(&mut self, id: u32, accept: bool, now: Instant) {
        if !self.files_possible() {
            return;
        }
        let connection = self.connection.as_ref().expect("checked");
        let Some(file) = self
            .files
            .incoming
            .get_mut(&id)
            .filter(|file| file.stage == InStage::Offered)
        else {
            return self.error(&format!("No file {id} is waiting for your answer."));
        };
        if accept && file.keys.is_none() && file.source != KeySource::Plaintext {
            match lookup_keys(connection, &file.source, &file.sender_key, &file.meta) {
                KeyLookup::Found(keys) => file.keys = keys,
                KeyLookup::Missing => {
                    let text = format!(
                        "Cannot open file {id} yet: the key it is sealed with has not arrived. Try again in a moment."
                    );
                    return self.error(&text);
                }
                KeyLookup::NotTheSenders => {
                    let text = "it is sealed with a DM key not shared with its sender";
                    return self.integrity_failure(id, text, now);
                }
            }
        }
        file.stage = InStage::Answering;
        self.queue_file_request(Request::FileDecision { id, accept }, now);
    }

    /// A chunk relayed to us.
    fn file_chunk(&mut self, id: u32, index: u32, data: Bytes, now: Instant) {
        let Some(file) = self.files.incoming.get_mut(&id) else {
            // Late: for a file we gave up.
            return;
        };
        if file.stage != InStage::Receiving {
            return;
        }
        if index < file.next {
            // Received before, its ack lost with a connection: say so again.
            return self.send_file(FileRequest::Ack { id, index }, now);
        }
        if index > file.next {
            let text = format!("chunk {index} came before chunk {}", file.next);
            return self.integrity_failure(id, &text, now);
        }
        let meta = &file.meta;
        let plaintext = match &file.keys {
            Some(keys) => match keys.open_chunk(index, meta.chunk_count, &data) {
                Ok(plaintext) => Bytes::copy_from_slice(&plaintext),
                Err(_) => {
                    let text = format!("chunk {index} failed its integrity check (MAC)");
                    return self.integrity_failure(id, &text, now);
                }
            },
            None if file.source == KeySource::Plaintext => data,
            None => unreachable!("accepted only with its keys"),
        };
        let (offset, len) = chunk_span(meta.size, meta.chunk_size, index);
        if plaintext.len() != len {
            let text = format!("chunk {index} holds {} bytes, not {len}", plaintext.len());
            return self.integrity_failure(id, &text, now);
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
        self.out.push(Output::File(FileOp::Write {
            id,
            path,
            offset,
            data: plaintext,
        }));
        self.send_file(FileRequest::Ack { id, index }, now);
        self.out.push(Output::Progress(progress));
        if complete {
            self.verify_file(id, now);
        }
    }

    /// `88` relayed: the sender sent everything. A non-empty file was
    /// verified with its last chunk already.
    fn file_done(&mut self, id: u32, now: Instant) {
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
            return self.integrity_failure(id, &text, now);
        }
        self.verify_file(id, now);
    }

    /// Every chunk is in: the whole must hash to the signed digest.
    fn verify_file(&mut self, id: u32, now: Instant) {
        let file = self.files.incoming.get_mut(&id).expect("caller checked");
        let digest: [u8; 32] = file.hasher.clone().finalize().into();
        debug_assert!(file.meta.size != 0 || digest == empty_digest());
        if !bool::from(digest.ct_eq(&file.meta.digest)) {
            let text = "the file's SHA-256 is not the one its sender signed";
            return self.integrity_failure(id, text, now);
        }
        file.stage = InStage::Saving;
        self.out.push(Output::File(FileOp::Save {
            id,
            part: file
                .part
                .clone()
                .expect("a receiving file has a partial file"),
            dir: self.files.settings.download_dir.clone(),
            name: file.name.clone(),
        }));
    }

    /// The shell moved a verified file into place for [`FileOp::Save`].
    pub fn file_saved(&mut self, id: u32, saved: Result<PathBuf, String>) -> Vec<Output> {
        if let Some(file) = self.files.incoming.remove(&id) {
            self.out.push(Output::Progress(file.progress(id, true)));
            match saved {
                Ok(path) => self.event(Event::FileReceived {
                    id,
                    from: show(&file.from),
                    name: file.name,
                    path: path.display().to_string(),
                    size: file.meta.size,
                    sha256: hex(&file.meta.digest),
                }),
                Err(err) => {
                    if let Some(part) = file.part {
                        self.out.push(Output::File(FileOp::Delete { path: part }));
                    }
                    self.error(&format!(
                        "File {id} '{}' was verified but could not be saved: {err}",
                        file.name
                    ));
                }
            }
        }
        self.take_output()
    }

    /// The shell could not create or write the partial file of `id`.
    pub fn file_io_failed(&mut self, id: u32, err: &str, now: Instant) -> Vec<Output> {
        if let Some(file) = self.files.incoming.remove(&id) {
            if let Some(part) = &file.part {
                self.out
                    .push(Output::File(FileOp::Delete { path: part.clone() }));
            }
            self.out.push(Output::Progress(file.progress(id, true)));
            self.error(&format!(
                "File {id} '{}' is given up: cannot write {}: {err}",
                file.name,
                file.part.as_deref().unwrap_or(Path::new("?")).display()
            ));
            self.give_up_on_server(id, file.stage, now);
        }
        self.take_output()
    }

    /// Something about a file we receive cannot be trusted: delete what we
    /// have, say so loudly, and give the file up.
    fn integrity_failure(&mut self, id: u32, problem: &str, now: Instant) {
        let Some(file) = self.files.incoming.remove(&id) else {
            return;
        };
        if let Some(part) = file.part.clone() {
            self.out.push(Output::File(FileOp::Delete { path: part }));
        }
        self.out.push(Output::Progress(file.progress(id, true)));
        let deleted = if file.part.is_some() {
            "; the partial file was deleted and the file given up"
        } else {
            "; the file was given up"
        };
        self.event(Event::FileFailed {
            id,
            name: file.name,
            from: show(&file.from),
            problem: format!("{problem}{deleted}"),
        });
        self.give_up_on_server(id, file.stage, now);
    }

    /// Tells the server we are out of a file we were offered or receive.
    fn give_up_on_server(&mut self, id: u32, stage: InStage, now: Instant) {
        let request = match stage {
            InStage::Offered => Request::FileDecision { id, accept: false },
            InStage::Receiving | InStage::Resuming | InStage::Saving | InStage::Answering => {
                Request::FileCancel { id }
            }
            // Not attached to any connection of ours.
            InStage::Detached => return,
        };
        self.queue_file_request(request, now);
    }

    // ---------------------------------------------------------------
    // Both ways

    pub(super) fn file_notice(&mut self, notice: FileNotice, now: Instant) {
        if self.identity.is_none() {
            return self.event(Event::Warning {
                text: "ignored a file-transfer frame on a legacy connection.".to_string(),
            });
        }
        let connection = self.connection.as_ref().expect("a frame arrived");
        match notice {
            FileNotice::Pending { id, skipped } => {
                if let (Some(Pending::FileOffer), Some(offering)) =
                    (&connection.pending, &mut self.files.offering)
                {
                    offering.id = Some(id);
                    offering.skipped = skipped;
                }
            }
            FileNotice::Accepted { id, token } => {
                if connection.pending == Some(Pending::FileDecision { id, accept: true }) {
                    if let Some(file) = self.files.incoming.get_mut(&id) {
                        file.token = Some(token);
                    }
                }
            }
            FileNotice::Offered {
                id,
                sender,
                sender_key,
                room,
                meta,
            } => self.file_offered(id, sender, sender_key, room, meta, now),
            FileNotice::Start {
                id,
                window,
                recipients,
            } => self.file_start(id, window, recipients, now),
            FileNotice::Chunk { id, index, data } => self.file_chunk(id, index, data, now),
            FileNotice::Done { id } => self.file_done(id, now),
            FileNotice::Window { id, acked } => self.file_window(id, acked, now),
            FileNotice::Finished { id, delivered } => self.file_finished(id, delivered),
            FileNotice::Ended {
                id,
                who,
                reason,
                text,
            } => self.file_ended(id, &who, reason, &text),
        }
    }

    /// `8f`: over for everyone, or for the recipient `who`.
    fn file_ended(&mut self, id: u32, who: &[u8], reason: EndReason, text: &[u8]) {
        let reason = reason_name(reason);
        let who_shown = (!who.is_empty()).then(|| show(who));
        if let Some(file) = self.files.outgoing.get_mut(&id) {
            if let Some(recipient) = &who_shown {
                file.recipients.retain(|name| name != recipient);
                let name = file.name.clone();
                return self.event(Event::FileEnded {
                    id,
                    direction: Direction::Send,
                    name,
                    who: who_shown,
                    reason: reason.into(),
                    text: show(text),
                });
            }
            let file = self.files.outgoing.remove(&id).expect("found above");
            self.out.push(Output::Progress(file.progress(id, true)));
            return self.file_over(Direction::Send, id, &file.name, reason, &show(text));
        }
        let Some(file) = self.files.incoming.get(&id) else {
            return;
        };
        if file.stage == InStage::Saving {
            // We have it all, verified: the end of the others' transfer
            // does not take it away.
            return;
        }
        let file = self.files.incoming.remove(&id).expect("found above");
        if let Some(part) = file.part.clone() {
            self.out.push(Output::File(FileOp::Delete { path: part }));
        }
        self.out.push(Output::Progress(file.progress(id, true)));
        self.event(Event::FileEnded {
            id,
            direction: Direction::Receive,
            name: file.name,
            who: who_shown,
            reason: reason.into(),
            text: show(text),
        });
    }

    fn file_over(&mut self, direction: Direction, id: u32, name: &str, reason: &str, text: &str) {
        self.event(Event::FileEnded {
            id,
            direction,
            name: name.to_string(),
            who: None,
            reason: reason.to_string(),
            text: text.to_string(),
        });
    }

    fn cancel_file(&mut self, id: u32, now: Instant) {
        if !self.files_possible() {
            return;
        }
        if let Some(file) = self.files.outgoing.remove(&id) {
            self.out.push(Output::Progress(file.progress(id, true)));
            self.file_over(
                Direction::Send,
                id,
                &file.name,
                "cancelled",
                "You withdrew the file.",
            );
            return self.queue_file_request(Request::FileCancel { id }, now);
        }
        let Some(file) = self.files.incoming.get(&id) else {
            return self.error(&format!("No file {id}."));
        };
        match file.stage {
            InStage::Offered => self.decide_file(id, false, now),
            InStage::Answering => self.error(&format!(
                "Your answer about file {id} is on its way; cancel it after."
            )),
            InStage::Saving => self.error(&format!("File {id} is complete.")),
            InStage::Receiving | InStage::Resuming | InStage::Detached => {
                let file = self.files.incoming.remove(&id).expect("found above");
                if let Some(part) = file.part.clone() {
                    self.out.push(Output::File(FileOp::Delete { path: part }));
                }
                self.out.push(Output::Progress(file.progress(id, true)));
                self.file_over(
                    Direction::Receive,
                    id,
                    &file.name,
                    "cancelled",
                    "You gave up the file.",
                );
                self.give_up_on_server(id, file.stage, now);
            }
        }
    }

    fn file_statuses(&self) -> Vec<FileStatus> {
        let preparing = self.files.preparing.values().map(|file| FileStatus {
            id: 0,
            direction: Direction::Send,
            name: show(&file.name),
            peer: file.target.as_deref().map_or("your room".into(), show),
            state: "preparing",
            bytes: 0,
            total: 0,
        });
        let outgoing = self
            .files
            .outgoing
            .iter()
            .map(|(&id, file)| file.status(id));
        let incoming = self
            .files
            .incoming
            .iter()
            .map(|(&id, file)| file.status(id));
        preparing.chain(outgoing).chain(incoming).collect()
    }

    // ---------------------------------------------------------------
    // Requests and their answers

    fn queue_file_request(&mut self, request: Request, now: Instant) {
        if let Some(connection) = &mut self.connection {
            connection.queue.push_back(request);
            self.dispatch(now);
        }
    }

    fn send_file(&mut self, request: FileRequest, now: Instant) {
        self.send(&ClientMessage::File(request), now);
    }

    /// Puts a queued decision, FILE_DONE, resume or cancel on the wire,
    /// unless its file is gone meanwhile.
    pub(super) fn start_file_request(&mut self, request: Request, now: Instant) {
        let (message, pending) = match request {
            Request::FileDecision { id, accept } => {
                // An automatic decline is for a file never listed.
                if accept && !self.files.incoming.contains_key(&id) {
                    return;
                }
                (
                    FileRequest::Decision { id, accept },
                    Pending::FileDecision { id, accept },
                )
            }
            Request::FileDone { id } => {
                if !self.files.outgoing.contains_key(&id) {
                    return;
                }
                (FileRequest::Done { id }, Pending::FileDone { id })
            }
            Request::FileResume { id } => {
                let Some(token) = self.files.incoming.get(&id).and_then(|file| file.token) else {
                    return;
                };
                (
                    FileRequest::Resume { id, token },
                    Pending::FileResume { id },
                )
            }
            Request::FileCancel { id } => (FileRequest::Cancel { id }, Pending::FileCancel { id }),
            _ => unreachable!("only file requests"),
        };
        let connection = self.connection.as_mut().expect("dispatching");
        connection.pending = Some(pending);
        self.send_file(message, now);
    }

    pub(super) fn file_succeeded(&mut self, pending: Pending) {
        match pending {
            Pending::FileOffer => {
                let Some(offering) = self.files.offering.take() else {
                    return;
                };
                let Some(id) = offering.id else {
                    return self.error("The server took the file offer without naming it.");
                };
                let file = offering.file;
                self.event(Event::FileOffer {
                    id,
                    name: file.name.clone(),
                    size: file.size,
                    room: file.room.clone(),
                    to: file.to.clone(),
                    encrypted: file.keys.is_some(),
                    skipped: offering.skipped.iter().map(|name| show(name)).collect(),
                });
                self.files.outgoing.insert(id, file);
            }
            Pending::FileDmKey(file) => {
                let connection = self.connection.as_mut().expect("a frame arrived");
                let target = file.target.as_deref().expect("a file to one user");
                if connection.keyring.dm_key_id(target).is_none() {
                    return self.error(&format!(
                        "No DM key for '{}' arrived; the file was not offered.",
                        show(target)
                    ));
                }
                connection.queue.push_front(Request::FileOffer(file));
            }
            Pending::FileDecision { id, accept } => {
                let Some(file) = self.files.incoming.get(&id) else {
                    return;
                };
                if !accept {
                    let file = self.files.incoming.remove(&id).expect("found above");
                    return self.event(Event::FileDeclined {
                        id,
                        name: file.name,
                    });
                }
                let settings = &self.files.settings;
                let taken = self
                    .files
                    .incoming
                    .values()
                    .filter_map(|other| other.part.as_deref());
                let part = part_path(&settings.download_dir, &file.name, id, taken);
                let file = self.files.incoming.get_mut(&id).expect("found above");
                file.stage = InStage::Receiving;
                file.part = Some(part.clone());
                let event = Event::FileAccepted {
                    id,
                    name: file.name.clone(),
                    part: part.display().to_string(),
                };
                let progress = file.progress(id, false);
                self.out
                    .push(Output::File(FileOp::Create { id, path: part }));
                self.event(event);
                self.out.push(Output::Progress(progress));
            }
            Pending::FileResume { id } => {
                if let Some(file) = self.files.incoming.get_mut(&id) {
                    file.stage = InStage::Receiving;
                    let event = Event::FileResumed {
                        id,
                        name: file.name.clone(),
                        chunks: file.next,
                    };
                    self.event(event);
                }
            }
            // Its news is the `8e` or `8f` that follows.
            Pending::FileDone { .. } | Pending::FileCancel { .. } => {}
            _ => unreachable!("only file requests"),
        }
    }

    pub(super) fn file_failed(&mut self, pending: Pending, data: &[u8]) {
        match pending {
            Pending::FileOffer => {
                self.files.offering = None;
                self.event(Event::Failed { text: show(data) });
            }
            Pending::FileDmKey(file) => {
                let target = file.target.as_deref().expect("a file to one user");
                if data == no_key_text(target) {
                    return self.error(&format!(
                        "'{}' has no key, so their client cannot receive files; '{}' was not offered.",
                        show(target),
                        show(&file.name)
                    ));
                }
                self.event(Event::Failed { text: show(data) });
            }
            Pending::FileDecision { id, .. } => {
                if let Some(file) = self.files.incoming.remove(&id) {
                    self.out.push(Output::Progress(file.progress(id, true)));
                    self.event(Event::Failed { text: show(data) });
                }
            }
            Pending::FileResume { id } => {
                if let Some(file) = self.files.incoming.remove(&id) {
                    if let Some(part) = file.part.clone() {
                        self.out.push(Output::File(FileOp::Delete { path: part }));
                    }
                    self.out.push(Output::Progress(file.progress(id, true)));
                    self.event(Event::FileResumeFailed {
                        id,
                        name: file.name,
                        from: show(&file.from),
                        text: show(data),
                    });
                }
            }
            Pending::FileDone { id } => {
                if self.files.outgoing.contains_key(&id) {
                    self.event(Event::Failed { text: show(data) });
                }
            }
            // The file was already given up here; the server may have
            // ended it first.
            Pending::FileCancel { .. } => {}
            _ => unreachable!("only file requests"),
        }
    }

    // ---------------------------------------------------------------
    // Connections

    /// After a key registration: resume every file cut off with the last
    /// connection, before anything else waiting.
    pub(super) fn resume_files(&mut self) {
        let Some(connection) = &mut self.connection else {
            return;
        };
        for (&id, file) in self.files.incoming.iter_mut().rev() {
            if file.stage == InStage::Detached {
                file.stage = InStage::Resuming;
                connection.queue.push_front(Request::FileResume { id });
            }
        }
    }

    /// The connection is gone. The server ended the files we sent and
    /// forgot the offers we had not answered; a file we were receiving is
    /// kept to resume, unless we are quitting.
    pub(super) fn files_connection_lost(&mut self, quitting: bool) {
        self.files.offering = None;
        for (id, file) in std::mem::take(&mut self.files.outgoing) {
            self.out.push(Output::Progress(file.progress(id, true)));
            let text = "The connection closed; the file was withdrawn.";
            self.file_over(Direction::Send, id, &file.name, "sender_left", text);
        }
        let incoming = std::mem::take(&mut self.files.incoming);
        for (id, mut file) in incoming {
            let resumable = file.token.is_some() && !quitting;
            match file.stage {
                InStage::Saving => {}
                InStage::Receiving | InStage::Resuming | InStage::Detached if resumable => {
                    if file.stage != InStage::Detached {
                        self.event(Event::FilePaused {
                            id,
                            name: file.name.clone(),
                        });
                    }
                    file.stage = InStage::Detached;
                }
                _ => {
                    if let Some(part) = file.part.clone() {
                        self.out.push(Output::File(FileOp::Delete { path: part }));
                    }
                    self.out.push(Output::Progress(file.progress(id, true)));
                    let text = if quitting {
                        "You quit before it was complete."
                    } else {
                        "The connection closed before the file started."
                    };
                    self.file_over(Direction::Receive, id, &file.name, "disconnected", text);
                    continue;
                }
            }
            self.files.incoming.insert(id, file);
        }
        if quitting {
            self.files.preparing.clear();
        }
    }

    /// Quitting while not connected: partial files waiting to resume go.
    pub(super) fn abandon_files(&mut self) {
        self.files_connection_lost(true);
    }
}

/// Checks an offer before it is shown: who signed it, that its numbers add
/// up, and that it is encrypted where it must be. Returns the sender's key
/// and where the file's key comes from.
fn check_offer(
    connection: &super::Connection,
    sender: &[u8],
    sender_key: &[u8],
    room: Option<&[u8]>,
    meta: &FileMeta,
) -> Result<(PeerKey, KeySource), &'static str> {
    let key = PeerKey::from_der(sender_key).map_err(|_| "the sender's key is unusable")?;
    if let Some(known) = connection.keyring.peer(sender) {
        if !known.same_key(&key) {
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
    verify_offer(&key, &place, meta).map_err(|_| "its signature does not verify")?;
    if chunk_count(meta.size, meta.chunk_size) != Some(meta.chunk_count) {
        return Err("its chunk count does not match its size");
    }
    let source = match room {
        _ if meta.encrypted() => match room {
            Some(room) => KeySource::Room {
                room: room.to_vec(),
                epoch: meta.key_id,
            },
            None => KeySource::Dm {
                key_id: meta.key_id,
            },
        },
        None => return Err("it is sent to you alone, unencrypted"),
        Some(room) => {
            let secure_room = connection
                .room
                .as_ref()
                .is_some_and(|current| current.name == room && current.secure);
            if secure_room {
                return Err("it is sent unencrypted in an encrypted room");
            }
            KeySource::Plaintext
        }
    };
    Ok((key, source))
}

/// The chunk keys of a file we receive, if its issued key is here.
fn lookup_keys(
    connection: &super::Connection,
    source: &KeySource,
    sender: &PeerKey,
    meta: &FileMeta,
) -> KeyLookup {
    let issued = match source {
        KeySource::Plaintext => return KeyLookup::Found(None),
        KeySource::Room { room, epoch } => connection.keyring.room_key(room, *epoch),
        KeySource::Dm { key_id } => match connection.keyring.dm_key(*key_id) {
            Some((peer, _)) if !peer.same_key(sender) => return KeyLookup::NotTheSenders,
            Some((_, key)) => Some(key),
            None => None,
        },
    };
    match issued {
        Some(issued) => KeyLookup::Found(Some(FileKeys::derive(issued, &meta.nonce))),
        None => KeyLookup::Missing,
    }
}

/// The server's reason, as the events name it.
fn reason_name(reason: EndReason) -> &'static str {
    match reason {
        EndReason::NobodyAccepted => "nobody_accepted",
        EndReason::SenderLeft => "sender_left",
        EndReason::Cancelled => "cancelled",
        EndReason::RecipientCancelled => "recipient_cancelled",
        EndReason::TooSlow => "too_slow",
        EndReason::LeftRoom => "left_room",
        EndReason::Disconnected => "disconnected",
        EndReason::ProtocolViolation => "protocol_violation",
        EndReason::NoRecipientsLeft => "no_recipients_left",
        EndReason::DecisionTimeout => "decision_timeout",
        EndReason::SenderStalled => "sender_stalled",
    }
}
