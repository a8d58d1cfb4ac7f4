//! File transfer in the session (PROTOCOL.md §14), the parts that go both
//! ways: the `\file` commands, the file frames from the server handed to
//! the side their file is on, the end of a file (`8f`, or given up here)
//! and `\file list`. What is kept per file is in [`crate::transfer`].
//!
//! The rest is split along the life of a file:
//! - `send_file.rs`: preparing, hashing and offering a file, the window,
//!   and sealing and sending its chunks.
//! - `receive_file.rs`: checking an offer, the answer, each chunk checked
//!   and written, the final verification and the save.
//! - `file_requests.rs`: the file requests that wait their turn in the
//!   queue, what their answers mean, and resume across connections.

use std::time::Instant;

use super::receive_file::Offer;
use super::{ClientSession, InFlight, Output, Outputs, QueuedRequest};
use crate::command::FileCommand;
use crate::event::{show, Direction, FileStatus, UserEvent};
use crate::transfer::{FileOp, FileSettings, InStage};
use parlor_proto::transfer::{EndReason, FileNotice};

impl ClientSession {
    /// The same session, with these file settings.
    pub fn with_file_settings(mut self, settings: FileSettings) -> ClientSession {
        self.files.settings = settings;
        self
    }

    pub(super) fn file_command(
        &mut self,
        command: FileCommand,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        match command {
            FileCommand::List => {
                let transfers = self.file_statuses();
                out.event(UserEvent::FileList { transfers });
            }
            FileCommand::Send { path, target } => self.prepare_file(path, target, out),
            FileCommand::Accept(id) => self.decide_file(id, true, now, out),
            FileCommand::Decline(id) => self.decide_file(id, false, now, out),
            FileCommand::Cancel(id) => self.cancel_file(id, now, out),
        }
    }

    /// Whether files can go over this connection, or why not.
    pub(super) fn files_possible(&mut self, out: &mut Vec<Output>) -> bool {
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
        out.error(text);
        false
    }

    pub(super) fn file_notice(&mut self, notice: FileNotice, now: Instant, out: &mut Vec<Output>) {
        if self.identity.is_none() {
            return out.event(UserEvent::Warning {
                text: "ignored a file-transfer frame on a legacy connection.".to_string(),
            });
        }
        let connection = self.connection.as_ref().expect("a frame arrived");
        match notice {
            FileNotice::Pending { id, skipped } => {
                if let (Some(InFlight::FileOffer), Some(offering)) =
                    (&connection.pending, &mut self.files.offering)
                {
                    offering.id = Some(id);
                    offering.skipped = skipped;
                }
            }
            FileNotice::Accepted { id, token } => {
                if connection.pending == Some(InFlight::FileDecision { id, accept: true }) {
                    if let Some(file) = self.files.incoming.get_mut(&id) {
                        file.token = Some(token);
                    }
                }
            }
            FileNotice::Offered {
                id,
                sender,
                sender_identity,
                room,
                meta,
            } => {
                let offer = Offer {
                    id,
                    sender,
                    sender_identity,
                    room,
                    meta,
                };
                self.file_offered(offer, now, out);
            }
            FileNotice::Start {
                id,
                window,
                recipients,
            } => self.file_start(id, window, recipients, now, out),
            FileNotice::Chunk { id, index, data } => self.file_chunk(id, index, data, now, out),
            FileNotice::Done { id } => self.file_done(id, now, out),
            FileNotice::Window { id, acked } => self.file_window(id, acked, now, out),
            FileNotice::Finished { id, delivered } => self.file_finished(id, delivered, out),
            FileNotice::Ended {
                id,
                who,
                reason,
                text,
            } => self.file_ended(id, &who, reason, &text, out),
        }
    }

    /// `8f`: over for everyone, or for the recipient `who`.
    fn file_ended(
        &mut self,
        id: u32,
        who: &[u8],
        reason: EndReason,
        text: &[u8],
        out: &mut Vec<Output>,
    ) {
        let reason = reason_name(reason);
        let who_shown = (!who.is_empty()).then(|| show(who));
        if let Some(file) = self.files.outgoing.get_mut(&id) {
            if let Some(recipient) = &who_shown {
                file.recipients.retain(|name| name != recipient);
                let name = file.name.clone();
                return out.event(UserEvent::FileEnded {
                    id,
                    direction: Direction::Send,
                    name,
                    who: who_shown,
                    reason: reason.into(),
                    text: show(text),
                });
            }
            let file = self.files.outgoing.remove(&id).expect("found above");
            out.push(Output::Progress(file.progress(id, true)));
            return self.file_over(Direction::Send, id, &file.name, reason, &show(text), out);
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
            out.push(Output::File(FileOp::Delete { path: part }));
        }
        out.push(Output::Progress(file.progress(id, true)));
        out.event(UserEvent::FileEnded {
            id,
            direction: Direction::Receive,
            name: file.name,
            who: who_shown,
            reason: reason.into(),
            text: show(text),
        });
    }

    pub(super) fn file_over(
        &mut self,
        direction: Direction,
        id: u32,
        name: &str,
        reason: &str,
        text: &str,
        out: &mut Vec<Output>,
    ) {
        out.event(UserEvent::FileEnded {
            id,
            direction,
            name: name.to_string(),
            who: None,
            reason: reason.to_string(),
            text: text.to_string(),
        });
    }

    fn cancel_file(&mut self, id: u32, now: Instant, out: &mut Vec<Output>) {
        if !self.files_possible(out) {
            return;
        }
        if let Some(file) = self.files.outgoing.remove(&id) {
            out.push(Output::Progress(file.progress(id, true)));
            self.file_over(
                Direction::Send,
                id,
                &file.name,
                "cancelled",
                "You withdrew the file.",
                out,
            );
            return self.queue_file_request(QueuedRequest::FileCancel { id }, now, out);
        }
        let Some(file) = self.files.incoming.get(&id) else {
            return out.error(&format!("No file {id}."));
        };
        match file.stage {
            InStage::Offered => self.decide_file(id, false, now, out),
            InStage::Answering => out.error(&format!(
                "Your answer about file {id} is on its way; cancel it after."
            )),
            InStage::Saving => out.error(&format!("File {id} is complete.")),
            InStage::Receiving | InStage::Resuming | InStage::Detached => {
                let file = self.files.incoming.remove(&id).expect("found above");
                if let Some(part) = file.part.clone() {
                    out.push(Output::File(FileOp::Delete { path: part }));
                }
                out.push(Output::Progress(file.progress(id, true)));
                self.file_over(
                    Direction::Receive,
                    id,
                    &file.name,
                    "cancelled",
                    "You gave up the file.",
                    out,
                );
                self.give_up_on_server(id, file.stage, now, out);
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
