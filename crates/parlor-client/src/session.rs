//! The client without I/O: typed lines, server frames and the current time
//! go in; frames to send, events to show and connection changes come out.
//!
//! The [`ClientSession`] never touches a socket or a clock, so every
//! behaviour of the client, the secure parts included, is tested by feeding
//! it frames (see `tests.rs`). The tokio shell in `shell.rs` only moves
//! bytes and lines; the contract between the two ("Driving the session")
//! is in the documentation of [`ClientSession`].
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

/// Something for the shell to do; what each obliges the shell to do is
/// stated in the [`ClientSession`] documentation.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    /// Write this frame.
    Send(Bytes),
    /// Show this to the user.
    Event(UserEvent),
    /// Open a connection to this address, then report with
    /// [`ClientSession::handle_connected`] or
    /// [`ClientSession::handle_connect_failed`].
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

/// The whole client but its I/O. Everything it must remember across
/// connections (the identity, files being received) lives here; the rest
/// goes with each connection.
///
/// # Driving the session
///
/// This is the whole contract between the session and any shell
/// (`shell.rs`, the tests). It has the shape of the hub's in `parlor-core`:
/// inputs named `handle_*`, time passed in, and outputs appended to a
/// `Vec<Output>` that the shell owns and reuses.
///
/// **Inputs.** Each appends to `out` and never clears it; each that
/// depends on time takes `now`:
///
/// | call | when |
/// |---|---|
/// | [`ClientSession::handle_line`] | the user typed a line |
/// | [`ClientSession::handle_command`] | a command, as if typed (`parlor client ADDR`: a `\connect`) |
/// | [`ClientSession::handle_end_of_input`] | the input ended; no line comes after |
/// | [`ClientSession::handle_connected`] | the connection asked for with [`Output::Connect`] is open |
/// | [`ClientSession::handle_connect_failed`] | that connection could not be opened |
/// | [`ClientSession::handle_frame`] | a whole frame arrived on the open connection |
/// | [`ClientSession::handle_closed`] | the server closed the connection, or reading or writing it failed |
/// | [`ClientSession::handle_timeout`] | the time from [`ClientSession::poll_timeout`] has come |
/// | [`ClientSession::handle_file_hashed`] | a [`FileOp::Hash`] finished |
/// | [`ClientSession::handle_chunk_read`] | a [`FileOp::Read`] finished |
/// | [`ClientSession::handle_file_io_failed`] | a [`FileOp::Create`] or [`FileOp::Write`] failed |
/// | [`ClientSession::handle_file_saved`] | a [`FileOp::Save`] finished |
///
/// A session starts unconnected ([`ClientSession::new`], then
/// [`ClientSession::with_file_settings`]) and opens a connection only when
/// told to (`\connect`). `handle_connected` and `handle_connect_failed`
/// only answer an [`Output::Connect`]; `handle_frame` and `handle_closed`
/// only concern the connection opened since, until it is closed either
/// way. The file reports may come at any time, connected or not.
///
/// **Outputs**, which the shell must carry out in the order appended. An
/// input called while carrying them out (a connection opened, a file op
/// done) appends to the same buffer, and what it appends is carried out
/// after what was already there; once all is done, the shell clears the
/// buffer for the next input.
///
/// - [`Output::Send`]: write the frame to the connection, after those
///   before it; without a connection, drop it. A failed write ends the
///   connection: drop it and report [`ClientSession::handle_closed`].
/// - [`Output::Event`] and [`Output::Progress`]: show the event; draw the
///   progress, or not. Neither is reported.
/// - [`Output::Connect`]: open a connection to the address, and report
///   [`ClientSession::handle_connected`] or
///   [`ClientSession::handle_connect_failed`].
/// - [`Output::Close`]: flush what was written, then close the connection.
///   The session has already forgotten it, so nothing is reported; a
///   later [`ClientSession::handle_closed`] would do nothing.
/// - [`Output::Quit`]: exit. What follows it is not carried out.
/// - [`Output::File`]: do the [`FileOp`] and report its outcome as it
///   says. A [`FileOp::Hash`] may take seconds: run it off the event loop
///   and report it whenever it is done. Every other op is done at once, in
///   the order asked, and reported before the next output is carried out,
///   so chunk reads are reported in the order they were asked for.
///
/// **Time.** After every call, ask [`ClientSession::poll_timeout`] for the
/// next deadline (the heartbeat due on a quiet connection), and call
/// [`ClientSession::handle_timeout`] once it has passed; an early call does
/// nothing. A shell may pass any `now` that never goes back.
pub struct ClientSession {
    /// `None` in `--legacy` mode.
    identity: Option<Identity>,
    connection: Option<ConnectionState>,
    /// Files being sent and received; they outlive a connection, so that
    /// a file being received resumes on the next one.
    files: Files,
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
    /// The TLS channel binding of this connection; `None` over plain TCP.
    channel_binding: Option<[u8; 32]>,
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
        }
    }

    /// The channel binding of the open connection, as given to
    /// [`ClientSession::handle_connected`]: `None` over plain TCP, or when
    /// not connected.
    pub fn channel_binding(&self) -> Option<[u8; 32]> {
        self.connection.as_ref()?.channel_binding
    }

    /// Whether a connection is open (or being greeted), as far as the
    /// session knows.
    pub fn is_connected(&self) -> bool {
        self.connection.is_some()
    }

    /// A line the user typed, without its line ending.
    pub fn handle_line(&mut self, line: &str, now: Instant, out: &mut Vec<Output>) {
        match command::parse(line) {
            Ok(Some(command)) => self.enqueue(command, now, out),
            Ok(None) => {}
            Err(err) => out.error(&err.to_string()),
        }
    }

    /// The input has ended: quit once what was typed before has gone out.
    pub fn handle_end_of_input(&mut self, now: Instant, out: &mut Vec<Output>) {
        self.handle_command(UserCommand::Quit, now, out);
    }

    /// A command, as if typed.
    pub fn handle_command(&mut self, command: UserCommand, now: Instant, out: &mut Vec<Output>) {
        self.enqueue(command, now, out);
    }

    fn enqueue(&mut self, command: UserCommand, now: Instant, out: &mut Vec<Output>) {
        if let UserCommand::File(command) = command {
            return self.file_command(command, now, out);
        }
        let Some(connection) = &mut self.connection else {
            match command {
                UserCommand::Connect(address) => self.connect(address, out),
                UserCommand::Quit => {
                    self.abandon_files(out);
                    out.push(Output::Quit);
                }
                _ => out.error("Not connected to a chat server."),
            }
            return;
        };
        let request = match command {
            UserCommand::Connect(_) => return out.error("Already connected to a chat server."),
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
        self.dispatch(now, out);
    }

    fn connect(&mut self, address: String, out: &mut Vec<Output>) {
        let port = address
            .rsplit_once(':')
            .map(|(_, port)| port.parse::<u16>());
        match port {
            Some(Ok(port)) if port != 0 => out.push(Output::Connect(address)),
            _ => out.error("Could not connect to the chat server. (Invalid port)"),
        }
    }

    /// The connection asked for with [`Output::Connect`] is open.
    /// `channel_binding` is its TLS exporter value
    /// ([`CHANNEL_BINDING_LABEL`](parlor_proto::secure::CHANNEL_BINDING_LABEL)),
    /// or `None` for a plain TCP connection.
    pub fn handle_connected(
        &mut self,
        channel_binding: Option<[u8; 32]>,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
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
            channel_binding,
        });
        self.dispatch(now, out);
    }

    /// The connection asked for with [`Output::Connect`] could not be
    /// opened, for `reason`; shown in the legacy client's words.
    pub fn handle_connect_failed(&mut self, reason: &str, out: &mut Vec<Output>) {
        out.error(&format!("Could not connect to the chat server. ({reason})"));
    }

    /// The server closed the connection, or it failed, for `reason`.
    pub fn handle_closed(&mut self, reason: &str, out: &mut Vec<Output>) {
        if let Some(connection) = self.connection.take() {
            out.event(UserEvent::Disconnected {
                reason: Some(reason.to_string()),
            });
            let quitting = connection.queue.contains(&QueuedRequest::Quit);
            self.files_connection_lost(quitting, out);
            if quitting {
                out.push(Output::Quit);
            }
        }
    }

    /// When [`ClientSession::handle_timeout`] has work to do: the heartbeat
    /// due after [`HEARTBEAT_AFTER`] without traffic. `None` while not
    /// connected.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let connection = self.connection.as_ref()?;
        Some(connection.last_traffic + HEARTBEAT_AFTER)
    }

    /// The time is `now`: sends a heartbeat if one is due. Call it at
    /// [`ClientSession::poll_timeout`], or at any time; early calls do
    /// nothing.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<Output>) {
        if self.poll_timeout().is_some_and(|due| now >= due) {
            // Heartbeats bypass the queue, as in the legacy client.
            let heartbeat = ClientMessage::Heartbeat {
                payload: Bytes::from_static(HEARTBEAT),
            };
            self.send(&heartbeat, now, out);
        }
    }

    /// A whole frame from the server.
    pub fn handle_frame(&mut self, frame: &Frame, now: Instant, out: &mut Vec<Output>) {
        let Some(connection) = &mut self.connection else {
            return;
        };
        connection.last_traffic = now;
        match ServerMessage::parse(frame) {
            Ok(ServerMessage::Response { status, data }) => self.response(status, &data, now, out),
            Ok(ServerMessage::RoomMessage { room, sender, text }) => {
                self.room_message(&room, &sender, &text, now, out)
            }
            Ok(ServerMessage::DirectMessage { sender, text }) => {
                self.direct_message(&sender, &text, now, out)
            }
            Ok(ServerMessage::Secure(message)) => self.secure_message(message, now, out),
            Ok(ServerMessage::File(notice)) => self.file_notice(notice, now, out),
            Err(err) => {
                // The legacy client drops a server that breaks the framing
                // rules; so does this one.
                out.push(Output::Close);
                self.connection = None;
                out.event(UserEvent::Disconnected {
                    reason: Some(format!("Server sent an invalid message. ({err})")),
                });
                self.files_connection_lost(false, out);
            }
        }
    }

    /// Sends queued requests until one is in flight.
    fn dispatch(&mut self, now: Instant, out: &mut Vec<Output>) {
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
            self.start(request, now, out);
        }
    }

    /// Puts one request on the wire (or handles it locally).
    fn start(&mut self, request: QueuedRequest, now: Instant, out: &mut Vec<Output>) {
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
            } => return self.start_dm(target, text, plaintext, now, out),
            QueuedRequest::Say(text) => return self.start_say(text, now, out),
            QueuedRequest::FileOffer(file) => return self.start_file_offer(*file, now, out),
            QueuedRequest::FileDecision { .. }
            | QueuedRequest::FileDone { .. }
            | QueuedRequest::FileResume { .. }
            | QueuedRequest::FileCancel { .. } => {
                return self.start_file_request(request, now, out)
            }
            QueuedRequest::Disconnect => return self.disconnect(false, out),
            QueuedRequest::Quit => return self.disconnect(true, out),
        };
        connection.pending = Some(pending);
        self.send(&message, now, out);
    }

    fn start_dm(
        &mut self,
        target: Vec<u8>,
        text: Vec<u8>,
        plaintext: bool,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        let connection = self.connection.as_mut().expect("dispatching");
        let sealer = match &self.identity {
            Some(identity) if connection.secure && !plaintext => Some(identity),
            _ => None,
        };
        let sealed = match sealer {
            None => None,
            Some(_) if target == connection.name => {
                out.push(Output::Event(UserEvent::Warning {
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
                return self.send(&request, now, out);
            }
            Some(identity) => {
                let name = connection.name.clone();
                match connection.keyring.seal_dm(&target, &name, identity, &text) {
                    Ok(sealed) => Some(sealed),
                    Err(err) => return self.seal_failed(err, out),
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
        self.send(&message, now, out);
    }

    fn start_say(&mut self, text: Vec<u8>, now: Instant, out: &mut Vec<Output>) {
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
                        return out.event(UserEvent::Held { room });
                    }
                    Err(err) => return self.seal_failed(err, out),
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
        self.send(&message, now, out);
    }

    fn seal_failed(&mut self, err: SealError, out: &mut Vec<Output>) {
        out.error(&format!("Not sent: {err}."));
    }

    fn disconnect(&mut self, quit: bool, out: &mut Vec<Output>) {
        self.connection = None;
        out.push(Output::Close);
        out.event(UserEvent::Disconnected { reason: None });
        self.files_connection_lost(quit, out);
        if quit {
            out.push(Output::Quit);
        }
    }

    /// The `9a` that ends the reply to the request in flight.
    fn response(&mut self, status: u8, data: &[u8], now: Instant, out: &mut Vec<Output>) {
        // Status 03 answers nothing (PROTOCOL.md §5.1).
        if status == 0x03 {
            return;
        }
        let connection = self.connection.as_mut().expect("a frame arrived");
        let Some(pending) = connection.pending.take() else {
            // Unasked for: the legacy client shows a failure and would abort
            // on a success; this one shows the failure and ignores the rest.
            if status != 0 {
                out.event(UserEvent::Failed { text: show(data) });
            }
            return;
        };
        if status == 0 {
            self.succeeded(pending, data, out);
        } else {
            self.failed(pending, data, out);
        }
        self.dispatch(now, out);
    }

    fn succeeded(&mut self, pending: InFlight, data: &[u8], out: &mut Vec<Output>) {
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
                out.event(UserEvent::KeyRegistered { bits });
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
                out.event(UserEvent::Joined {
                    room: shown.clone(),
                    secure,
                });
                if unprotected {
                    out.event(UserEvent::Warning {
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
                    return out.error(&format!(
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
            | InFlight::FileCancel { .. }) => return self.file_succeeded(file, out),
        };
        out.event(event);
    }

    fn failed(&mut self, pending: InFlight, data: &[u8], out: &mut Vec<Output>) {
        match pending {
            // A user without a key gets the DM in plaintext, after a warning.
            InFlight::DmKey { target, text } if data == no_key_text(&target) => {
                out.event(UserEvent::Warning {
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
                out.event(UserEvent::Failed { text: show(data) });
                out.event(UserEvent::Warning {
                    text: "the server refused the key; nothing on this connection is encrypted."
                        .to_string(),
                });
            }
            file @ (InFlight::FileOffer
            | InFlight::FileDmKey(_)
            | InFlight::FileDecision { .. }
            | InFlight::FileDone { .. }
            | InFlight::FileResume { .. }
            | InFlight::FileCancel { .. }) => self.file_failed(file, data, out),
            _ => out.event(UserEvent::Failed { text: show(data) }),
        }
    }

    fn secure_message(&mut self, message: SecureMessage, now: Instant, out: &mut Vec<Output>) {
        let connection = self.connection.as_mut().expect("a frame arrived");
        let Some(identity) = &self.identity else {
            // A server must never send these to a legacy connection.
            return out.event(UserEvent::Warning {
                text: "ignored a secure-extension frame on a legacy connection.".to_string(),
            });
        };
        match message {
            SecureMessage::PeerKey { name, key } => self.peer_key(&name, &key, out),
            SecureMessage::RoomKey {
                room,
                epoch,
                wrapped,
            } => {
                let Ok(key) = identity.unwrap_key(&wrapped, WrapLabel::Room) else {
                    return self.key_unusable(&format!("room '{}'", show(&room)), out);
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
                out.event(UserEvent::RoomKey {
                    room: show(&room),
                    epoch,
                });
                self.dispatch(now, out);
            }
            SecureMessage::DmKey {
                peer,
                key_id,
                wrapped,
            } => self.dm_key(&peer, key_id, &wrapped, out),
            SecureMessage::DmKeyIssued {
                target,
                key,
                key_id,
                wrapped,
            } => {
                self.peer_key(&target, &key, out);
                self.dm_key(&target, key_id, &wrapped, out);
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

    fn peer_key(&mut self, name: &[u8], der: &[u8], out: &mut Vec<Output>) {
        let connection = self.connection.as_mut().expect("a frame arrived");
        let Ok(key) = PeerKey::from_der(der) else {
            return self.key_unusable(&format!("the public key of '{}'", show(name)), out);
        };
        let renamed_from = connection.keyring.add_peer(name, key);
        out.event(UserEvent::PeerKey {
            name: show(name),
            renamed_from: renamed_from.as_deref().map(show),
        });
    }

    fn dm_key(&mut self, peer: &[u8], key_id: u32, wrapped: &[u8], out: &mut Vec<Output>) {
        let connection = self.connection.as_mut().expect("a frame arrived");
        let identity = self.identity.as_ref().expect("checked by the caller");
        let added = identity
            .unwrap_key(wrapped, WrapLabel::Direct)
            .and_then(|key| connection.keyring.add_dm_key(key_id, peer, &key));
        match added {
            Ok(()) => out.event(UserEvent::DmKey {
                peer: show(peer),
                key_id,
            }),
            Err(_) => self.key_unusable(&format!("the DM key for '{}'", show(peer)), out),
        }
    }

    fn key_unusable(&mut self, what: &str, out: &mut Vec<Output>) {
        out.event(UserEvent::Warning {
            text: format!("could not use {what} sent by the server; ignored."),
        });
    }

    fn room_message(
        &mut self,
        room: &[u8],
        sender: &[u8],
        text: &[u8],
        now: Instant,
        out: &mut Vec<Output>,
    ) {
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
        out.event(event);
    }

    fn direct_message(&mut self, sender: &[u8], text: &[u8], now: Instant, out: &mut Vec<Output>) {
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
        out.event(event);
    }

    fn send(&mut self, message: &ClientMessage, now: Instant, out: &mut Vec<Output>) {
        if let Some(connection) = &mut self.connection {
            connection.last_traffic = now;
        }
        out.push(Output::Send(message.to_frame().to_bytes()));
    }
}

/// Shorthands for what the session appends to the shell's buffer.
trait Outputs {
    /// Shows `event` to the user.
    fn event(&mut self, event: UserEvent);
    /// Tells the user what went wrong with what they asked for.
    fn error(&mut self, text: &str);
}

impl Outputs for Vec<Output> {
    fn event(&mut self, event: UserEvent) {
        self.push(Output::Event(event));
    }

    fn error(&mut self, text: &str) {
        self.event(UserEvent::Error {
            text: text.to_string(),
        });
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

/// The `9a 01` text for a DM_KEY_REQUEST to a user without a key (§12.3),
/// as the server words it.
fn no_key_text(target: &[u8]) -> Vec<u8> {
    parlor_proto::text::has_no_key(target).concat()
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
