//! The client without I/O: typed lines, server frames and the current time
//! go in; frames to send, events to show and connection changes come out.
//!
//! The [`ClientSession`] never touches a socket or a clock, so every
//! behaviour of the client, the secure parts included, is tested by feeding
//! it frames (see `tests.rs`). The tokio shell in `shell.rs` only moves
//! bytes and lines.
//!
//! Secure by default: with an [`Identity`], each connection registers the
//! public key right after HELLO, seals what it says in secure rooms and to
//! users with keys, and opens what it receives. Without one (`--legacy`) it
//! speaks the plain protocol, exactly like the legacy client.
//!
//! File transfer follows the same rule for disk: the session asks for file
//! reads and writes with [`Output::File`] and the shell reports back; see
//! [`super::transfer`] for why. Its code is in `files.rs` (both ways, and a
//! map of the rest), `send_file.rs`, `receive_file.rs` and
//! `file_requests.rs`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::command::{self, UserCommand};
use super::event::{show, MessageKind, UserEvent};
use super::request::{InFlight, QueuedRequest};
use super::transfer::{FileOp, Files, TransferProgress};
use parlor_crypto::keyring::SealError;
use parlor_crypto::{Identity, Keyring, PeerKey, WrapLabel};
use parlor_proto::{ClientMessage, Frame, SecureMessage, ServerMessage};

/// The legacy client heartbeats after about 6 s without socket traffic; the
/// server cuts a connection off after 30 s without a frame.
pub const HEARTBEAT_AFTER: Duration = Duration::from_secs(6);

/// What the client sends as HELLO. The server never looks at it.
const GREETING: &[u8] = b"parlor reference client";

/// The legacy client's heartbeat payload.
const HEARTBEAT: &[u8] = parlor_proto::legacy::HEARTBEAT_PAYLOAD;

/// Something for the shell to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    /// Write this frame.
    Send(Bytes),
    /// Show this to the user.
    Event(UserEvent),
    /// Open a connection to this address, then report with
    /// [`ClientSession::connected`] or [`ClientSession::connect_failed`].
    Connect(String),
    /// Close the connection.
    Close,
    /// Exit the program.
    Quit,
    /// Do this with a file on disk; see [`FileOp`] for how to report back.
    File(FileOp),
    /// Show how far a file transfer has got.
    Progress(TransferProgress),
}

/// The whole client but its I/O: feed it lines, frames, file outcomes and
/// the time, and carry out the [`Output`]s each call returns, in order.
/// Everything it must remember across connections (the identity, files
/// being received) lives here; the rest goes with each connection.
pub struct ClientSession {
    /// `None` in `--legacy` mode.
    identity: Option<Identity>,
    connection: Option<ConnectionState>,
    /// Files being sent and received; they outlive a connection, so that
    /// a file being received resumes on the next one.
    files: Files,
    out: Vec<Output>,
}

/// The state of one connection; a new connection starts from nothing, as
/// the server forgets a user who logs off.
struct ConnectionState {
    name: Vec<u8>,
    /// The server accepted our key.
    secure: bool,
    room: Option<CurrentRoom>,
    keyring: Keyring,
    queue: VecDeque<QueuedRequest>,
    pending: Option<InFlight>,
    /// What was said in a secure room before its key arrived.
    held: VecDeque<Vec<u8>>,
    last_traffic: Instant,
}

struct CurrentRoom {
    name: Vec<u8>,
    secure: bool,
}

impl ClientSession {
    /// A session not connected yet. `identity` is the key registered on
    /// every connection; `None` speaks the plain legacy protocol.
    pub fn new(identity: Option<Identity>) -> ClientSession {
        ClientSession {
            identity,
            connection: None,
            files: Files::default(),
            out: Vec::new(),
        }
    }

    /// Whether a connection is open (or being greeted), as far as the
    /// session knows.
    pub fn is_connected(&self) -> bool {
        self.connection.is_some()
    }

    /// A line the user typed, without its line ending.
    pub fn line(&mut self, line: &str, now: Instant) -> Vec<Output> {
        match command::parse(line) {
            Ok(Some(command)) => self.enqueue(command, now),
            Ok(None) => {}
            Err(err) => self.event(UserEvent::Error {
                text: err.to_string(),
            }),
        }
        self.take_output()
    }

    /// The input has ended: quit once what was typed before has gone out.
    pub fn end_of_input(&mut self, now: Instant) -> Vec<Output> {
        self.command(UserCommand::Quit, now)
    }

    /// A command, as if typed.
    pub fn command(&mut self, command: UserCommand, now: Instant) -> Vec<Output> {
        self.enqueue(command, now);
        self.take_output()
    }

    fn enqueue(&mut self, command: UserCommand, now: Instant) {
        if let UserCommand::File(command) = command {
            return self.file_command(command, now);
        }
        let Some(connection) = &mut self.connection else {
            match command {
                UserCommand::Connect(address) => self.connect(address),
                UserCommand::Quit => {
                    self.abandon_files();
                    self.out.push(Output::Quit);
                }
                _ => self.error("Not connected to a chat server."),
            }
            return;
        };
        let request = match command {
            UserCommand::Connect(_) => return self.error("Already connected to a chat server."),
            UserCommand::Nick(name) => QueuedRequest::Nick(name),
            UserCommand::Join { room, password } => QueuedRequest::Join { room, password },
            UserCommand::Leave => QueuedRequest::Leave,
            UserCommand::ListUsers => QueuedRequest::ListUsers,
            UserCommand::ListRooms => QueuedRequest::ListRooms,
            UserCommand::Dm { target, text } => QueuedRequest::Dm {
                target,
                text,
                plaintext: false,
            },
            UserCommand::Say(text) => QueuedRequest::Say(text),
            UserCommand::File(_) => unreachable!("handled above"),
            UserCommand::Disconnect => QueuedRequest::Disconnect,
            UserCommand::Quit => QueuedRequest::Quit,
        };
        connection.queue.push_back(request);
        self.dispatch(now);
    }

    fn connect(&mut self, address: String) {
        let port = address
            .rsplit_once(':')
            .map(|(_, port)| port.parse::<u16>());
        match port {
            Some(Ok(port)) if port != 0 => self.out.push(Output::Connect(address)),
            _ => self.error("Could not connect to the chat server. (Invalid port)"),
        }
    }

    /// The connection asked for with [`Output::Connect`] is open.
    pub fn connected(&mut self, now: Instant) -> Vec<Output> {
        let mut queue = VecDeque::from([QueuedRequest::Hello]);
        if self.identity.is_some() {
            queue.push_back(QueuedRequest::RegisterKey);
        }
        self.connection = Some(ConnectionState {
            name: Vec::new(),
            secure: false,
            room: None,
            keyring: Keyring::default(),
            queue,
            pending: None,
            held: VecDeque::new(),
            last_traffic: now,
        });
        self.dispatch(now);
        self.take_output()
    }

    /// The connection asked for with [`Output::Connect`] could not be
    /// opened, for `reason`; shown in the legacy client's words.
    pub fn connect_failed(&mut self, reason: &str) -> Vec<Output> {
        self.error(&format!("Could not connect to the chat server. ({reason})"));
        self.take_output()
    }

    /// The server closed the connection, or it failed.
    pub fn closed(&mut self, reason: &str) -> Vec<Output> {
        if let Some(connection) = self.connection.take() {
            self.event(UserEvent::Disconnected {
                reason: Some(reason.to_string()),
            });
            let quitting = connection.queue.contains(&QueuedRequest::Quit);
            self.files_connection_lost(quitting);
            if quitting {
                self.out.push(Output::Quit);
            }
        }
        self.take_output()
    }

    /// When [`ClientSession::tick`] has a heartbeat to send.
    pub fn next_heartbeat(&self) -> Option<Instant> {
        let connection = self.connection.as_ref()?;
        Some(connection.last_traffic + HEARTBEAT_AFTER)
    }

    /// The time is `now`: sends a heartbeat if one is due. Call it at
    /// [`ClientSession::next_heartbeat`], or at any time; early calls do
    /// nothing.
    pub fn tick(&mut self, now: Instant) -> Vec<Output> {
        if self.next_heartbeat().is_some_and(|due| now >= due) {
            // Heartbeats bypass the queue, as in the legacy client.
            let heartbeat = ClientMessage::Heartbeat {
                payload: Bytes::from_static(HEARTBEAT),
            };
            self.send(&heartbeat, now);
        }
        self.take_output()
    }

    /// A whole frame from the server.
    pub fn frame(&mut self, frame: &Frame, now: Instant) -> Vec<Output> {
        let Some(connection) = &mut self.connection else {
            return self.take_output();
        };
        connection.last_traffic = now;
        match ServerMessage::parse(frame) {
            Ok(ServerMessage::Response { status, data }) => self.response(status, &data, now),
            Ok(ServerMessage::RoomMessage { room, sender, text }) => {
                self.room_message(&room, &sender, &text, now)
            }
            Ok(ServerMessage::DirectMessage { sender, text }) => {
                self.direct_message(&sender, &text, now)
            }
            Ok(ServerMessage::Secure(message)) => self.secure_message(message, now),
            Ok(ServerMessage::File(notice)) => self.file_notice(notice, now),
            Err(err) => {
                // The legacy client drops a server that breaks the framing
                // rules; so does this one.
                self.out.push(Output::Close);
                self.connection = None;
                self.event(UserEvent::Disconnected {
                    reason: Some(format!("Server sent an invalid message. ({err})")),
                });
                self.files_connection_lost(false);
            }
        }
        self.take_output()
    }

    /// Sends queued requests until one is in flight.
    fn dispatch(&mut self, now: Instant) {
        loop {
            let Some(connection) = &mut self.connection else {
                return;
            };
            if connection.pending.is_some() {
                return;
            }
            // Closing waits for messages held for a room key, so that a
            // script that types a line and ends its input is heard.
            let closing = matches!(
                connection.queue.front(),
                Some(QueuedRequest::Disconnect | QueuedRequest::Quit)
            );
            if closing && !connection.held.is_empty() {
                return;
            }
            let Some(request) = connection.queue.pop_front() else {
                return;
            };
            self.start(request, now);
        }
    }

    /// Puts one request on the wire (or handles it locally).
    fn start(&mut self, request: QueuedRequest, now: Instant) {
        let Some(connection) = &mut self.connection else {
            return;
        };
        let (message, pending) = match request {
            QueuedRequest::Hello => (
                ClientMessage::Hello {
                    greeting: Bytes::from_static(GREETING),
                },
                InFlight::Hello,
            ),
            QueuedRequest::RegisterKey => {
                let identity = self
                    .identity
                    .as_ref()
                    .expect("queued only with an identity");
                let key = Bytes::copy_from_slice(identity.public_key_der());
                (ClientMessage::RegisterKey { key }, InFlight::RegisterKey)
            }
            QueuedRequest::Nick(name) => (
                ClientMessage::Nick {
                    name: Bytes::from(name.clone()),
                },
                InFlight::Nick(name),
            ),
            QueuedRequest::Join { room, password } => (
                ClientMessage::Join {
                    room: Bytes::from(room.clone()),
                    password: Bytes::from(password),
                },
                InFlight::Join {
                    room,
                    secure: false,
                },
            ),
            QueuedRequest::Leave => (ClientMessage::Leave, InFlight::Leave),
            QueuedRequest::ListUsers => (ClientMessage::ListUsers, InFlight::ListUsers),
            QueuedRequest::ListRooms => (ClientMessage::ListRooms, InFlight::ListRooms),
            QueuedRequest::Dm {
                target,
                text,
                plaintext,
            } => return self.start_dm(target, text, plaintext, now),
            QueuedRequest::Say(text) => return self.start_say(text, now),
            QueuedRequest::FileOffer(file) => return self.start_file_offer(*file, now),
            QueuedRequest::FileDecision { .. }
            | QueuedRequest::FileDone { .. }
            | QueuedRequest::FileResume { .. }
            | QueuedRequest::FileCancel { .. } => return self.start_file_request(request, now),
            QueuedRequest::Disconnect => return self.disconnect(false),
            QueuedRequest::Quit => return self.disconnect(true),
        };
        connection.pending = Some(pending);
        self.send(&message, now);
    }

    fn start_dm(&mut self, target: Vec<u8>, text: Vec<u8>, plaintext: bool, now: Instant) {
        let connection = self.connection.as_mut().expect("dispatching");
        let sealer = match &self.identity {
            Some(identity) if connection.secure && !plaintext => Some(identity),
            _ => None,
        };
        let sealed = match sealer {
            None => None,
            Some(_) if target == connection.name => {
                self.out.push(Output::Event(UserEvent::Warning {
                    text: "DMs to yourself are not encrypted.".to_string(),
                }));
                None
            }
            Some(_) if connection.keyring.dm_key_id(&target).is_none() => {
                // Ask for a key first; the DM goes out after the reply.
                let request = ClientMessage::DmKeyRequest {
                    target: Bytes::from(target.clone()),
                };
                connection.pending = Some(InFlight::DmKey { target, text });
                return self.send(&request, now);
            }
            Some(identity) => {
                let name = connection.name.clone();
                match connection.keyring.seal_dm(&target, &name, identity, &text) {
                    Ok(sealed) => Some(sealed),
                    Err(err) => return self.seal_failed(err),
                }
            }
        };
        let secure = sealed.is_some();
        let message = ClientMessage::DirectMessage {
            target: Bytes::from(target.clone()),
            text: Bytes::from(sealed.unwrap_or_else(|| text.clone())),
        };
        connection.pending = Some(InFlight::Dm {
            target,
            text,
            secure,
        });
        self.send(&message, now);
    }

    fn start_say(&mut self, text: Vec<u8>, now: Instant) {
        let connection = self.connection.as_mut().expect("dispatching");
        // Outside a room the legacy client still sends, with an empty room,
        // and lets the server say why not.
        let (room, secure_room) = match &connection.room {
            Some(room) => (room.name.clone(), room.secure && connection.secure),
            None => (Vec::new(), false),
        };
        let sealed = match &self.identity {
            Some(identity) if secure_room => {
                let name = connection.name.clone();
                match connection.keyring.seal_room(&room, &name, identity, &text) {
                    Ok(sealed) => Some(sealed),
                    Err(SealError::NoKey) => {
                        connection.held.push_back(text);
                        let room = show(&room);
                        return self.event(UserEvent::Held { room });
                    }
                    Err(err) => return self.seal_failed(err),
                }
            }
            _ => None,
        };
        let message = ClientMessage::RoomMessage {
            room: Bytes::from(room.clone()),
            text: Bytes::from(sealed.unwrap_or_else(|| text.clone())),
        };
        connection.pending = Some(InFlight::Say {
            room,
            text,
            secure: secure_room,
        });
        self.send(&message, now);
    }

    fn seal_failed(&mut self, err: SealError) {
        self.error(&format!("Not sent: {err}."));
    }

    fn disconnect(&mut self, quit: bool) {
        self.connection = None;
        self.out.push(Output::Close);
        self.event(UserEvent::Disconnected { reason: None });
        self.files_connection_lost(quit);
        if quit {
            self.out.push(Output::Quit);
        }
    }

    /// The `9a` that ends the reply to the request in flight.
    fn response(&mut self, status: u8, data: &[u8], now: Instant) {
        // Status 03 answers nothing (PROTOCOL.md §5.1).
        if status == 0x03 {
            return;
        }
        let connection = self.connection.as_mut().expect("a frame arrived");
        let Some(pending) = connection.pending.take() else {
            // Unasked for: the legacy client shows a failure and would abort
            // on a success; this one shows the failure and ignores the rest.
            if status != 0 {
                self.event(UserEvent::Failed { text: show(data) });
            }
            return;
        };
        if status == 0 {
            self.succeeded(pending, data);
        } else {
            self.failed(pending, data);
        }
        self.dispatch(now);
    }

    fn succeeded(&mut self, pending: InFlight, data: &[u8]) {
        let connection = self.connection.as_mut().expect("a frame arrived");
        let event = match pending {
            InFlight::Hello => {
                connection.name = data.to_vec();
                UserEvent::Connected { name: show(data) }
            }
            InFlight::RegisterKey => {
                connection.secure = true;
                let bits = self
                    .identity
                    .as_ref()
                    .map_or(0, |id| id.signature_len() * 8);
                self.event(UserEvent::KeyRegistered { bits });
                // Files cut off with the last connection go on.
                return self.resume_files();
            }
            InFlight::Nick(name) => {
                connection.name = name;
                UserEvent::Nick {
                    name: show(&connection.name),
                }
            }
            InFlight::Join { room, secure } => {
                connection.leave_room();
                let shown = show(&room);
                let unprotected = connection.secure && !secure;
                connection.room = Some(CurrentRoom { name: room, secure });
                self.event(UserEvent::Joined {
                    room: shown.clone(),
                    secure,
                });
                if unprotected {
                    self.event(UserEvent::Warning {
                        text: format!(
                            "room '{shown}' is not end-to-end encrypted: the server and anyone on the path can read what is said here."
                        ),
                    });
                }
                return;
            }
            InFlight::Leave => match connection.leave_room() {
                Some(room) => UserEvent::Left { room: show(&room) },
                None => UserEvent::LeftServer,
            },
            InFlight::ListUsers => UserEvent::Users {
                room: connection.room.as_ref().map(|room| show(&room.name)),
                names: names(data),
            },
            InFlight::ListRooms => UserEvent::Rooms { names: names(data) },
            InFlight::Dm {
                target,
                text,
                secure,
            } => UserEvent::Sent {
                kind: MessageKind::Dm,
                room: None,
                from: show(&connection.name),
                to: Some(show(&target)),
                text: show(&text),
                secure,
            },
            InFlight::DmKey { target, text } => {
                if connection.keyring.dm_key_id(&target).is_none() {
                    return self.error(&format!(
                        "No DM key for '{}' arrived; the message was not sent.",
                        show(&target)
                    ));
                }
                let dm = QueuedRequest::Dm {
                    target,
                    text,
                    plaintext: false,
                };
                connection.queue.push_front(dm);
                return;
            }
            InFlight::Say { room, text, secure } => UserEvent::Sent {
                kind: MessageKind::Room,
                room: Some(show(&room)),
                from: show(&connection.name),
                to: None,
                text: show(&text),
                secure,
            },
            file @ (InFlight::FileOffer
            | InFlight::FileDmKey(_)
            | InFlight::FileDecision { .. }
            | InFlight::FileDone { .. }
            | InFlight::FileResume { .. }
            | InFlight::FileCancel { .. }) => return self.file_succeeded(file),
        };
        self.event(event);
    }

    fn failed(&mut self, pending: InFlight, data: &[u8]) {
        match pending {
            // A user without a key gets the DM in plaintext, after a warning.
            InFlight::DmKey { target, text } if data == no_key_text(&target) => {
                self.event(UserEvent::Warning {
                    text: format!(
                        "'{}' has no key; the message is sent unencrypted.",
                        show(&target)
                    ),
                });
                let dm = QueuedRequest::Dm {
                    target,
                    text,
                    plaintext: true,
                };
                let connection = self.connection.as_mut().expect("a frame arrived");
                connection.queue.push_front(dm);
            }
            InFlight::RegisterKey => {
                self.event(UserEvent::Failed { text: show(data) });
                self.event(UserEvent::Warning {
                    text: "the server refused the key; nothing on this connection is encrypted."
                        .to_string(),
                });
            }
            file @ (InFlight::FileOffer
            | InFlight::FileDmKey(_)
            | InFlight::FileDecision { .. }
            | InFlight::FileDone { .. }
            | InFlight::FileResume { .. }
            | InFlight::FileCancel { .. }) => self.file_failed(file, data),
            _ => self.event(UserEvent::Failed { text: show(data) }),
        }
    }

    fn secure_message(&mut self, message: SecureMessage, now: Instant) {
        let connection = self.connection.as_mut().expect("a frame arrived");
        let Some(identity) = &self.identity else {
            // A server must never send these to a legacy connection.
            return self.event(UserEvent::Warning {
                text: "ignored a secure-extension frame on a legacy connection.".to_string(),
            });
        };
        match message {
            SecureMessage::PeerKey { name, key } => self.peer_key(&name, &key),
            SecureMessage::RoomKey {
                room,
                epoch,
                wrapped,
            } => {
                let Ok(key) = identity.unwrap_key(&wrapped, WrapLabel::Room) else {
                    return self.key_unusable(&format!("room '{}'", show(&room)));
                };
                if !connection.keyring.add_room_key(&room, epoch, &key, now) {
                    return;
                }
                // Messages said before the key came go out now, first.
                if connection
                    .room
                    .as_ref()
                    .is_some_and(|current| current.name == room)
                {
                    for text in connection.held.drain(..).rev() {
                        connection.queue.push_front(QueuedRequest::Say(text));
                    }
                }
                self.event(UserEvent::RoomKey {
                    room: show(&room),
                    epoch,
                });
                self.dispatch(now);
            }
            SecureMessage::DmKey {
                peer,
                key_id,
                wrapped,
            } => self.dm_key(&peer, key_id, &wrapped),
            SecureMessage::DmKeyIssued {
                target,
                key,
                key_id,
                wrapped,
            } => {
                self.peer_key(&target, &key);
                self.dm_key(&target, key_id, &wrapped);
            }
            SecureMessage::RoomJoined { room, secure }
            | SecureMessage::RoomCreated { room, secure } => {
                if let Some(InFlight::Join {
                    room: joining,
                    secure: joined_secure,
                }) = &mut connection.pending
                {
                    if *joining == room {
                        *joined_secure = secure;
                    }
                }
            }
            // The `9a` that follows says all the user needs.
            SecureMessage::NickSet { .. }
            | SecureMessage::RoomLeft { .. }
            | SecureMessage::NoSuchUser { .. } => {}
        }
    }

    fn peer_key(&mut self, name: &[u8], der: &[u8]) {
        let connection = self.connection.as_mut().expect("a frame arrived");
        let Ok(key) = PeerKey::from_der(der) else {
            return self.key_unusable(&format!("the public key of '{}'", show(name)));
        };
        let renamed_from = connection.keyring.add_peer(name, key);
        self.event(UserEvent::PeerKey {
            name: show(name),
            renamed_from: renamed_from.as_deref().map(show),
        });
    }

    fn dm_key(&mut self, peer: &[u8], key_id: u32, wrapped: &[u8]) {
        let connection = self.connection.as_mut().expect("a frame arrived");
        let identity = self.identity.as_ref().expect("checked by the caller");
        let added = identity
            .unwrap_key(wrapped, WrapLabel::Direct)
            .and_then(|key| connection.keyring.add_dm_key(key_id, peer, &key));
        match added {
            Ok(()) => self.event(UserEvent::DmKey {
                peer: show(peer),
                key_id,
            }),
            Err(_) => self.key_unusable(&format!("the DM key for '{}'", show(peer))),
        }
    }

    fn key_unusable(&mut self, what: &str) {
        self.event(UserEvent::Warning {
            text: format!("could not use {what} sent by the server; ignored."),
        });
    }

    fn room_message(&mut self, room: &[u8], sender: &[u8], text: &[u8], now: Instant) {
        let connection = self.connection.as_mut().expect("a frame arrived");
        let in_secure_room = connection
            .room
            .as_ref()
            .is_some_and(|current| current.name == room && current.secure);
        // Everything said in a secure room is sealed; elsewhere, an envelope
        // is recognised by its version and kind bytes.
        let sealed = connection.secure && (in_secure_room || text.starts_with(&[1, 1]));
        let shown_room = Some(show(room));
        let event = if !sealed {
            plain_message(MessageKind::Room, shown_room, sender, text)
        } else {
            match connection.keyring.open_room(room, sender, text, now) {
                Ok(plaintext) => UserEvent::Message {
                    kind: MessageKind::Room,
                    room: shown_room,
                    from: show(sender),
                    text: show(&plaintext),
                    secure: true,
                },
                Err(_) => UserEvent::Rejected {
                    kind: MessageKind::Room,
                    room: shown_room,
                    from: show(sender),
                },
            }
        };
        self.event(event);
    }

    fn direct_message(&mut self, sender: &[u8], text: &[u8], now: Instant) {
        let connection = self.connection.as_mut().expect("a frame arrived");
        let sealed = connection.secure && text.starts_with(&[1, 2]);
        let event = if !sealed {
            plain_message(MessageKind::Dm, None, sender, text)
        } else {
            match connection
                .keyring
                .open_dm(&connection.name, sender, text, now)
            {
                Ok(plaintext) => UserEvent::Message {
                    kind: MessageKind::Dm,
                    room: None,
                    from: show(sender),
                    text: show(&plaintext),
                    secure: true,
                },
                Err(_) => UserEvent::Rejected {
                    kind: MessageKind::Dm,
                    room: None,
                    from: show(sender),
                },
            }
        };
        self.event(event);
    }

    fn send(&mut self, message: &ClientMessage, now: Instant) {
        if let Some(connection) = &mut self.connection {
            connection.last_traffic = now;
        }
        self.out.push(Output::Send(message.to_frame().to_bytes()));
    }

    fn event(&mut self, event: UserEvent) {
        self.out.push(Output::Event(event));
    }

    fn error(&mut self, text: &str) {
        self.event(UserEvent::Error {
            text: text.to_string(),
        });
    }

    fn take_output(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.out)
    }
}

impl ConnectionState {
    /// Leaves the current room locally: its keys and held messages go.
    fn leave_room(&mut self) -> Option<Vec<u8>> {
        let room = self.room.take()?;
        self.keyring.forget_room(&room.name);
        self.held.clear();
        Some(room.name)
    }
}

fn plain_message(kind: MessageKind, room: Option<String>, sender: &[u8], text: &[u8]) -> UserEvent {
    UserEvent::Message {
        kind,
        room,
        from: show(sender),
        text: show(text),
        secure: false,
    }
}

/// The `9a 01` text for a DM_KEY_REQUEST to a user without a key (§12.3).
fn no_key_text(target: &[u8]) -> Vec<u8> {
    [
        b"User '",
        target,
        b"' has no key; messages to them are not encrypted.",
    ]
    .concat()
}

/// The `{u8 len, name}*` items of a list reply, as far as they are whole.
fn names(mut data: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    while let Some((&len, rest)) = data.split_first() {
        let Some(name) = rest.get(..len as usize) else {
            break;
        };
        names.push(show(name));
        data = &rest[len as usize..];
    }
    names
}

mod file_requests;
mod files;
mod receive_file;
mod send_file;

#[cfg(test)]
mod tests;
