//! The file requests that wait their turn like any other (an offer, a
//! decision, FILE_DONE, a resume, a cancel; see [`crate::request`]), what
//! their `9a` means, and what becomes of files when a connection ends and
//! the next one begins.
//!
//! Resume: when the connection drops, a file being received keeps its
//! partial file, running hash, keys and resume token. After the next
//! connection registers its key, the session sends FILE_RESUME for each,
//! signed for this connection;
//! the server resends what was not acknowledged (a chunk received whose
//! ack was lost comes again, and is acknowledged again, not rewritten).

use std::time::Instant;

use super::{no_key_text, ClientSession, InFlight, Output, Outputs, QueuedRequest};
use crate::event::{show, Direction, UserEvent};
use crate::transfer::{part_path, FileOp, InStage};
use parlor_proto::secure::PLAIN_CHANNEL_BINDING;
use parlor_proto::transfer::FileRequest;
use parlor_proto::ClientMessage;

impl ClientSession {
    pub(super) fn queue_file_request(
        &mut self,
        request: QueuedRequest,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        if let Some(connection) = &mut self.connection {
            connection.queue.push_back(request);
            self.dispatch(now, out);
        }
    }

    pub(super) fn send_file(&mut self, request: FileRequest, now: Instant, out: &mut Vec<Output>) {
        self.send(&ClientMessage::File(request), now, out);
    }

    /// Puts a queued decision, FILE_DONE, resume or cancel on the wire,
    /// unless its file is gone meanwhile.
    pub(super) fn start_file_request(
        &mut self,
        request: QueuedRequest,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        let (message, pending) = match request {
            QueuedRequest::FileDecision { id, accept } => {
                // An automatic decline is for a file never listed.
                if accept && !self.files.incoming.contains_key(&id) {
                    return;
                }
                (
                    FileRequest::Decision { id, accept },
                    InFlight::FileDecision { id, accept },
                )
            }
            QueuedRequest::FileDone { id } => {
                if !self.files.outgoing.contains_key(&id) {
                    return;
                }
                (FileRequest::Done { id }, InFlight::FileDone { id })
            }
            QueuedRequest::FileResume { id } => {
                let Some(token) = self.files.incoming.get(&id).and_then(|file| file.token) else {
                    return;
                };
                // The token alone is a bearer secret; the proof says that
                // the original recipient holds it, on this connection.
                let identity = self.identity.as_ref().expect("files need an identity");
                let connection = self.connection.as_ref().expect("dispatching");
                let binding = connection.channel_binding.unwrap_or(PLAIN_CHANNEL_BINDING);
                let proof = identity.resume_proof(id, &token, &binding);
                (
                    FileRequest::Resume { id, token, proof },
                    InFlight::FileResume { id },
                )
            }
            QueuedRequest::FileCancel { id } => {
                (FileRequest::Cancel { id }, InFlight::FileCancel { id })
            }
            _ => unreachable!("only file requests"),
        };
        let connection = self.connection.as_mut().expect("dispatching");
        connection.pending = Some(pending);
        self.send_file(message, now, out);
    }

    pub(super) fn file_succeeded(&mut self, pending: InFlight, out: &mut Vec<Output>) {
        match pending {
            InFlight::FileOffer => {
                let Some(offering) = self.files.offering.take() else {
                    return;
                };
                let Some(id) = offering.id else {
                    return out.error("The server took the file offer without naming it.");
                };
                let file = offering.file;
                out.event(UserEvent::FileOffer {
                    id,
                    name: file.name.clone(),
                    size: file.size,
                    room: file.room.clone(),
                    to: file.to.clone(),
                    skipped: offering.skipped.iter().map(|name| show(name)).collect(),
                });
                self.files.outgoing.insert(id, file);
            }
            InFlight::FileDmKey(file) => {
                let connection = self.connection.as_mut().expect("a frame arrived");
                let target = file.target.as_deref().expect("a file to one user");
                if connection.keyring.dm_key_id(target).is_none() {
                    return out.error(&format!(
                        "No DM key for '{}' arrived; the file was not offered.",
                        show(target)
                    ));
                }
                connection.queue.push_front(QueuedRequest::FileOffer(file));
            }
            InFlight::FileDecision { id, accept } => {
                let Some(file) = self.files.incoming.get(&id) else {
                    return;
                };
                if !accept {
                    let file = self.files.incoming.remove(&id).expect("found above");
                    return out.event(UserEvent::FileDeclined {
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
                let event = UserEvent::FileAccepted {
                    id,
                    name: file.name.clone(),
                    part: part.display().to_string(),
                };
                let progress = file.progress(id, false);
                out.push(Output::File(FileOp::Create { id, path: part }));
                out.event(event);
                out.push(Output::Progress(progress));
            }
            InFlight::FileResume { id } => {
                if let Some(file) = self.files.incoming.get_mut(&id) {
                    file.stage = InStage::Receiving;
                    let event = UserEvent::FileResumed {
                        id,
                        name: file.name.clone(),
                        chunks: file.next,
                    };
                    out.event(event);
                }
            }
            // Its news is the `8e` or `8f` that follows.
            InFlight::FileDone { .. } | InFlight::FileCancel { .. } => {}
            _ => unreachable!("only file requests"),
        }
    }

    pub(super) fn file_failed(&mut self, pending: InFlight, data: &[u8], out: &mut Vec<Output>) {
        match pending {
            InFlight::FileOffer => {
                self.files.offering = None;
                out.event(UserEvent::Failed { text: show(data) });
            }
            InFlight::FileDmKey(file) => {
                let target = file.target.as_deref().expect("a file to one user");
                if data == no_key_text(target) {
                    return out.error(&format!(
                        "'{}' has no key, so their client cannot receive files; '{}' was not offered.",
                        show(target),
                        show(&file.name)
                    ));
                }
                out.event(UserEvent::Failed { text: show(data) });
            }
            InFlight::FileDecision { id, .. } => {
                if let Some(file) = self.files.incoming.remove(&id) {
                    out.push(Output::Progress(file.progress(id, true)));
                    out.event(UserEvent::Failed { text: show(data) });
                }
            }
            InFlight::FileResume { id } => {
                if let Some(file) = self.files.incoming.remove(&id) {
                    if let Some(part) = file.part.clone() {
                        out.push(Output::File(FileOp::Delete { path: part }));
                    }
                    out.push(Output::Progress(file.progress(id, true)));
                    out.event(UserEvent::FileResumeFailed {
                        id,
                        name: file.name,
                        from: show(&file.from),
                        text: show(data),
                    });
                }
            }
            InFlight::FileDone { id } => {
                if self.files.outgoing.contains_key(&id) {
                    out.event(UserEvent::Failed { text: show(data) });
                }
            }
            // The file was already given up here; the server may have
            // ended it first.
            InFlight::FileCancel { .. } => {}
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
                connection
                    .queue
                    .push_front(QueuedRequest::FileResume { id });
            }
        }
    }

    /// The connection is gone. The server ended the files we sent and
    /// forgot the offers we had not answered; a file we were receiving is
    /// kept to resume, unless we are quitting.
    pub(super) fn files_connection_lost(&mut self, quitting: bool, out: &mut Vec<Output>) {
        self.files.offering = None;
        for (id, file) in std::mem::take(&mut self.files.outgoing) {
            out.push(Output::Progress(file.progress(id, true)));
            let text = "The connection closed; the file was withdrawn.";
            self.file_over(Direction::Send, id, &file.name, "sender_left", text, out);
        }
        let incoming = std::mem::take(&mut self.files.incoming);
        for (id, mut file) in incoming {
            let resumable = file.token.is_some() && !quitting;
            match file.stage {
                InStage::Saving => {}
                InStage::Receiving | InStage::Resuming | InStage::Detached if resumable => {
                    if file.stage != InStage::Detached {
                        out.event(UserEvent::FilePaused {
                            id,
                            name: file.name.clone(),
                        });
                    }
                    file.stage = InStage::Detached;
                }
                _ => {
                    if let Some(part) = file.part.clone() {
                        out.push(Output::File(FileOp::Delete { path: part }));
                    }
                    out.push(Output::Progress(file.progress(id, true)));
                    let text = if quitting {
                        "You quit before it was complete."
                    } else {
                        "The connection closed before the file started."
                    };
                    self.file_over(
                        Direction::Receive,
                        id,
                        &file.name,
                        "disconnected",
                        text,
                        out,
                    );
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
    pub(super) fn abandon_files(&mut self, out: &mut Vec<Output>) {
        self.files_connection_lost(true, out);
    }
}
