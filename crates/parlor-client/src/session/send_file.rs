//! Sending a file (PROTOCOL.md §14), from `\file send` to `8e`.
//!
//! `\file send` asks the shell to hash the file; the hashed file waits its
//! turn as a request, and is sealed and signed when it goes out, under the
//! room key (or DM key) current then: its SHA-256 and size go in the
//! sealed manifest, and the offer takes the next counter under that key. Once everyone has answered (`85`),
//! the session asks the shell for chunks up to the window, seals each as it
//! is read and sends it, and asks for more as `8d` moves the window;
//! FILE_DONE goes after the last chunk. A chunk that cannot be read, or
//! that comes back the wrong length, withdraws the file.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::Bytes;

use super::{ClientSession, InFlight, Output, Outputs, QueuedRequest};
use crate::event::{show, Direction, UserEvent};
use crate::transfer::{
    hex, safe_name, FileOp, Offering, OutStage, OutboundFile, PreparedFile, Preparing,
};
use parlor_crypto::envelope::Kind;
use parlor_crypto::file::{chunk_count, chunk_span, sign_offer, FileKeys, OfferContext};
use parlor_crypto::identity::SIGNATURE_LEN;
use parlor_proto::transfer::{
    encode_chunk, opcode, FileMeta, FileRequest, FILE_FLAG_ENCRYPTED, NONCE_LEN,
};
use parlor_proto::ClientMessage;

/// The longest name a file can be offered under.
const MAX_FILE_NAME: usize = u8::MAX as usize;

impl ClientSession {
    pub(super) fn prepare_file(
        &mut self,
        path: String,
        target: Option<Vec<u8>>,
        out: &mut Vec<Output>,
    ) {
        if !self.files_possible(out) {
            return;
        }
        let Some(name) = Path::new(&path).file_name() else {
            return out.error(&format!("'{path}' does not name a file."));
        };
        let name = name.to_string_lossy().into_owned().into_bytes();
        if name.len() > MAX_FILE_NAME {
            return out.error("File name is longer than 255 bytes.");
        }
        if name.iter().any(|&b| b < b' ' || b == 0x7f) {
            return out.error("File name must not contain control characters.");
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
        out.push(Output::File(FileOp::Hash { local, path }));
    }

    /// The shell read the file asked for with [`FileOp::Hash`]: its size
    /// and SHA-256, or why it could not.
    pub fn handle_file_hashed(
        &mut self,
        local: u32,
        hashed: Result<(u64, [u8; 32]), String>,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        if let Some(preparing) = self.files.preparing.remove(&local) {
            self.file_ready(preparing, hashed, now, out);
        }
    }

    fn file_ready(
        &mut self,
        preparing: Preparing,
        hashed: Result<(u64, [u8; 32]), String>,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        let shown = preparing.path.display().to_string();
        let (size, digest) = match hashed {
            Ok(hashed) => hashed,
            Err(err) => return out.error(&format!("Cannot read '{shown}': {err}")),
        };
        if chunk_count(size, self.files.settings.chunk_size).is_none() {
            return out.error(&format!("'{shown}' is too large to send."));
        }
        let Some(connection) = &mut self.connection else {
            return out.error(&format!(
                "Not connected to a chat server; '{shown}' was not offered."
            ));
        };
        connection
            .queue
            .push_back(QueuedRequest::FileOffer(Box::new(PreparedFile {
                path: preparing.path,
                name: preparing.name,
                target: preparing.target,
                size,
                digest,
            })));
        self.dispatch(now, out);
    }

    /// Seals and signs the offer under the key current now, and sends it;
    /// to a user we share no DM key with, asks for one first. Files go
    /// only sealed: there is no file in clear.
    pub(super) fn start_file_offer(
        &mut self,
        file: PreparedFile,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        if !self.files_possible(out) {
            return;
        }
        let identity = self.identity.as_ref().expect("checked");
        let connection = self.connection.as_mut().expect("checked");
        let shown_name = show(&file.name);
        let (kind, context, send_key, room) = match &file.target {
            None => {
                let Some(room) = connection.room.as_ref().filter(|room| room.secure) else {
                    return out.error(&format!(
                        "'{shown_name}' was not offered: files go only sealed, and you are in no end-to-end encrypted room (\\file send PATH USER sends a file to one user)."
                    ));
                };
                let name = room.name.clone();
                match connection.keyring.room_send_key(&name) {
                    Ok(key) => (Kind::Room, name.clone(), key, Some(name)),
                    Err(err) => {
                        return out.error(&format!(
                            "'{shown_name}' was not offered: {err} for room '{}'. Try again in a moment.",
                            show(&name)
                        ));
                    }
                }
            }
            Some(target) => {
                if *target == connection.name {
                    return out.error("You cannot send a file to yourself.");
                }
                if connection
                    .keyring
                    .peer(target)
                    .is_some_and(|(_, trust)| !trust.verified())
                {
                    return out.error(&format!(
                        "'{shown_name}' was not offered: '{}' has a different key than before; compare fingerprints (\\whois) and \\trust them first.",
                        show(target)
                    ));
                }
                let Ok(key) = connection.keyring.dm_send_key(target) else {
                    // Ask for a key first; the offer goes out after the reply.
                    let request = ClientMessage::DmKeyRequest {
                        target: Bytes::from(target.clone()),
                    };
                    connection.pending = Some(InFlight::FileDmKey(Box::new(file)));
                    return self.send(&request, now, out);
                };
                (Kind::Direct, target.clone(), key, None)
            }
        };
        let chunk_size = self.files.settings.chunk_size;
        let mut nonce = [0; NONCE_LEN];
        rand::fill(&mut nonce);
        let keys = FileKeys::derive(&send_key.issued, &nonce);
        let mut meta = FileMeta {
            name: Bytes::from(file.name.clone()),
            size: file.size,
            chunk_size,
            chunk_count: chunk_count(file.size, chunk_size).expect("checked when hashed"),
            flags: FILE_FLAG_ENCRYPTED,
            key_id: send_key.key_id,
            nonce,
            manifest: Bytes::copy_from_slice(&keys.seal_manifest(&file.digest, file.size)),
            counter: send_key.counter,
            signature: [0; SIGNATURE_LEN],
        };
        let place = OfferContext {
            kind,
            context: &context,
            sender: &connection.name,
        };
        meta.signature = sign_offer(identity, &place, &meta);
        let outgoing = OutboundFile {
            name: safe_name(&file.name),
            path: file.path,
            room: room.as_deref().map(show),
            to: file.target.as_deref().map(show),
            size: meta.size,
            chunk_size,
            chunk_count: meta.chunk_count,
            digest: file.digest,
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
        connection.pending = Some(InFlight::FileOffer);
        self.send(&request, now, out);
    }

    /// `85`: everyone answered; fill the window.
    pub(super) fn file_start(
        &mut self,
        id: u32,
        window: u8,
        recipients: Vec<Bytes>,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
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
        let event = UserEvent::FileStarted {
            id,
            name: file.name.clone(),
            recipients: file.recipients.clone(),
        };
        let progress = file.progress(id, false);
        out.event(event);
        out.push(Output::Progress(progress));
        self.fill_window(id, now, out);
    }

    /// Asks for the chunks the window allows, or sends FILE_DONE for an
    /// empty file.
    fn fill_window(&mut self, id: u32, now: Instant, out: &mut Vec<Output>) {
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
            return self.queue_file_request(QueuedRequest::FileDone { id }, now, out);
        }
        let limit = acked
            .saturating_add(u32::from(*window))
            .min(file.chunk_count);
        while *read < limit {
            let (offset, len) = chunk_span(file.size, file.chunk_size, *read);
            out.push(Output::File(FileOp::Read {
                id,
                index: *read,
                path: file.path.clone(),
                offset,
                len,
            }));
            *read += 1;
        }
    }

    /// The shell read chunk `index` of file `id` for [`FileOp::Read`], or
    /// the error that stopped it.
    pub fn handle_chunk_read(
        &mut self,
        id: u32,
        index: u32,
        read: io::Result<Bytes>,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        self.send_chunk(id, index, read, now, out);
    }

    fn send_chunk(
        &mut self,
        id: u32,
        index: u32,
        read: io::Result<Bytes>,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
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
                return self.withdraw(id, &text, now, out);
            }
            Ok(data) if data.len() != len || index != *sent => {
                let text = format!("'{}' changed while it was sent", file.path.display());
                return self.withdraw(id, &text, now, out);
            }
            Ok(data) => data,
        };
        let sealed = file.keys.seal_chunk(index, file.chunk_count, &data);
        let frame = encode_chunk(opcode::FILE_CHUNK, id, index, &sealed);
        *sent += 1;
        let last = *sent == file.chunk_count;
        if last {
            file.stage = OutStage::Done { acked: *acked };
        }
        if let Some(connection) = &mut self.connection {
            connection.last_traffic = now;
        }
        out.push(Output::Send(frame));
        if last {
            self.queue_file_request(QueuedRequest::FileDone { id }, now, out);
        }
    }

    /// Gives up a file we send because of a local problem.
    fn withdraw(&mut self, id: u32, problem: &str, now: Instant, out: &mut Vec<Output>) {
        let Some(file) = self.files.outgoing.remove(&id) else {
            return;
        };
        out.error(&format!(
            "File {id} '{}' is withdrawn: {problem}.",
            file.name
        ));
        self.file_over(Direction::Send, id, &file.name, "cancelled", problem, out);
        out.push(Output::Progress(file.progress(id, true)));
        self.queue_file_request(QueuedRequest::FileCancel { id }, now, out);
    }

    /// `8d`: every recipient acknowledged chunks `0..acked`.
    pub(super) fn file_window(&mut self, id: u32, acked: u32, now: Instant, out: &mut Vec<Output>) {
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
        out.push(Output::Progress(progress));
        self.fill_window(id, now, out);
    }

    /// `8e`: delivered.
    pub(super) fn file_finished(&mut self, id: u32, delivered: Vec<Bytes>, out: &mut Vec<Output>) {
        let Some(mut file) = self.files.outgoing.remove(&id) else {
            return;
        };
        file.stage = OutStage::Done {
            acked: file.chunk_count,
        };
        out.push(Output::Progress(file.progress(id, true)));
        out.event(UserEvent::FileSent {
            id,
            name: file.name,
            delivered: delivered.iter().map(|name| show(name)).collect(),
            sha256: hex(&file.digest),
        });
    }
}
