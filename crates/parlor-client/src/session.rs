//! The client without I/O: typed lines, server frames and the current time
//! go in; frames to send, events to show and connection changes come out.
//!
//! The [`ClientSession`] never touches a socket, a clock or a file, so every
//! behaviour of the client, the secure parts included, is tested by feeding
//! it frames (see `tests.rs`). The tokio shell in `shell.rs` only moves
//! bytes, lines and files; the contract between the two ("Driving the
//! session") is in the documentation of [`ClientSession`].
//!
//! Secure by default: with an [`Identity`], each connection registers its
//! keys right after HELLO, with proofs bound to the connection and the
//! current nick; it seals what it says in secure rooms and to users with
//! keys, and opens what it receives. Without one (`--legacy`) it speaks
//! the plain protocol, exactly like the legacy client.
//!
//! **Fail closed.** A secure client sends nothing in clear that the user did
//! not ask to send in clear: a line in a plaintext room, a DM to a user
//! without a key, anything on a connection whose key the server refused,
//! is not sent, and the user is told the explicit way (`\plain`,
//! `\plainmsg`, or `--allow-plaintext` for every such line). Every line
//! sent or received in clear is marked. Peers are trusted on first use
//! per server ([`crate::memory`]); a changed key is announced loudly, its
//! messages are marked unverified and DMs to it wait for `\trust`. A room
//! once seen end-to-end encrypted that comes back in plaintext is left.
//! The peer, key and trust handling is in `secure.rs`.
//!
//! File transfer follows the same rule for disk: the session asks for file
//! reads and writes with [`Output::File`] and the shell reports back; see
//! [`super::transfer`] for why. Its code is in `files.rs` (both ways, and a
//! map of the rest), `send_file.rs`, `receive_file.rs` and
//! `file_requests.rs`.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::command::{self, UserCommand};
use super::event::{show, MessageKind, UserEvent};
use super::memory::{Memory, Record};
use super::request::{InFlight, QueuedRequest};
use super::transfer::{FileOp, Files, TransferProgress};
use parlor_crypto::envelope::{Kind, VERSION};
use parlor_crypto::identity::display_fingerprint;
use parlor_crypto::keyring::SealError;
use parlor_crypto::{Identity, Keyring};
use parlor_proto::secure::PLAIN_CHANNEL_BINDING;
use parlor_proto::{ClientMessage, Frame, ServerMessage};

/// The legacy client heartbeats after about 6 s without socket traffic; the
/// server cuts a connection off after 30 s without a frame.
pub const HEARTBEAT_AFTER: Duration = Duration::from_secs(6);

/// How many room lines may wait for a key (the first, or the next after a
/// member left), and how many DMs for `\trust`: past it a line is refused
/// with a clear error rather than held without bound.
pub const MAX_HELD: usize = 64;

/// How long room lines may wait for a key before they are given up, with an
/// error that says so: a key that has not come by then is not coming soon
/// (the server wraps one for 1,000 members in well under a second, and
/// retries a failed rotation every second), and a script that ends its
/// input must not wait for ever to quit.
pub const HOLD_FOR: Duration = Duration::from_secs(15);

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
    /// Append this line to the data directory's file (see
    /// [`crate::memory`]).
    Remember(Record),
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
/// | [`ClientSession::handle_connected`] | the connection asked for with [`Output::Connect`] is open, with its TLS channel binding if it has one |
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
/// [`ClientSession::with_file_settings`], [`ClientSession::with_memory`]
/// and [`ClientSession::allow_plaintext`]) and opens a connection only when
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
/// - [`Output::Remember`]: append the line to its file in the data
///   directory. Not reported; a failure is the shell's to show.
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
    /// What the data directory remembers; kept up to date here, written by
    /// the shell ([`Output::Remember`]).
    memory: Memory,
    /// `--allow-plaintext`: lines that cannot be encrypted go in clear
    /// (marked) instead of not at all.
    allow_plaintext: bool,
    /// The address of the last [`Output::Connect`]: the server the next
    /// connection is to.
    connecting: String,
}

/// The state of one connection; a new connection starts from nothing, as
/// the server forgets a user who logs off.
struct ConnectionState {
    /// The address connected to, as given to `\connect`: what the memory
    /// of peers and secure rooms is kept under.
    server: String,
    /// The TLS exporter value of the connection, which our proofs sign;
    /// `None` on plain TCP.
    channel_binding: Option<[u8; 32]>,
    name: Vec<u8>,
    /// The server accepted our keys.
    secure: bool,
    room: Option<CurrentRoom>,
    keyring: Keyring,
    queue: VecDeque<QueuedRequest>,
    pending: Option<InFlight>,
    /// What was said in the secure room while no key could seal it: before
    /// the first, or after a member left and before the next.
    held: VecDeque<Vec<u8>>,
    /// When the oldest of `held` was said.
    held_since: Option<Instant>,
    /// DMs to peers whose key changed, until `\trust`.
    held_dms: HashMap<Vec<u8>, Vec<Vec<u8>>>,
    last_traffic: Instant,
}

struct CurrentRoom {
    name: Vec<u8>,
    secure: bool,
}

/// Why a line cannot go out sealed, for the error that says how to send
/// it in clear.
enum Unsealable<'a> {
    /// A room without a key.
    PlaintextRoom(&'a [u8]),
    /// Outside any room.
    NoRoom,
    /// The server refused our keys.
    NoKey,
}

impl ClientSession {
    /// A session not connected yet. `identity` is the key registered on
    /// every connection; `None` speaks the plain legacy protocol.
    pub fn new(identity: Option<Identity>) -> ClientSession {
        ClientSession {
            identity,
            connection: None,
            files: Files::default(),
            memory: Memory::default(),
            allow_plaintext: false,
            connecting: String::new(),
        }
    }

    /// The same session, remembering what `memory` holds (read by the
    /// shell from the data directory).
    pub fn with_memory(mut self, memory: Memory) -> ClientSession {
        self.memory = memory;
        self
    }

    /// The same session, sending lines that cannot be encrypted in clear
    /// (marked) instead of refusing them: `--allow-plaintext`.
    pub fn allow_plaintext(mut self, allow: bool) -> ClientSession {
        self.allow_plaintext = allow;
        self
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
            UserCommand::Trust(name) => return self.trust(&name, now, out),
            UserCommand::Whois(name) => return self.whois(&name, out),
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
            UserCommand::PlainDm { target, text } => QueuedRequest::Dm {
                target,
                text,
                plaintext: true,
            },
            UserCommand::Say(text) => QueuedRequest::Say {
                text,
                plaintext: false,
            },
            UserCommand::Plain(text) => QueuedRequest::Say {
                text,
                plaintext: true,
            },
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
            Some(Ok(port)) if port != 0 => {
                self.connecting.clone_from(&address);
                out.push(Output::Connect(address));
            }
            _ => out.error("Could not connect to the chat server. (Invalid port)"),
        }
    }

    /// The connection asked for with [`Output::Connect`] is open.
    /// `channel_binding` is its TLS exporter value
    /// ([`CHANNEL_BINDING_LABEL`](parlor_proto::secure::CHANNEL_BINDING_LABEL)),
    /// or `None` for a plain TCP connection; the proofs of REGISTER_KEY and
    /// FILE_RESUME sign it.
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
            server: self.connecting.clone(),
            channel_binding,
            name: Vec::new(),
            secure: false,
            room: None,
            keyring: Keyring::default(),
            queue,
            pending: None,
            held: VecDeque::new(),
            held_since: None,
            held_dms: HashMap::new(),
            last_traffic: now,
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
    /// due after [`HEARTBEAT_AFTER`] without traffic, or room lines held
    /// for [`HOLD_FOR`]. `None` while not connected.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let connection = self.connection.as_ref()?;
        let heartbeat = connection.last_traffic + HEARTBEAT_AFTER;
        let given_up = connection.held_since.map(|since| since + HOLD_FOR);
        Some(given_up.map_or(heartbeat, |given_up| given_up.min(heartbeat)))
    }

    /// The time is `now`: gives up room lines held too long and sends a
    /// heartbeat if one is due. Call it at [`ClientSession::poll_timeout`],
    /// or at any time; early calls do nothing.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<Output>) {
        self.give_up_held(now, out);
        let heartbeat_due = self
            .connection
            .as_ref()
            .is_some_and(|connection| now >= connection.last_traffic + HEARTBEAT_AFTER);
        if heartbeat_due {
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
                let binding = connection.channel_binding.unwrap_or(PLAIN_CHANNEL_BINDING);
                let registration = identity.registration(&binding, &connection.name);
                let message = ClientMessage::RegisterKey(registration);
                (message, InFlight::RegisterKey)
            }
            QueuedRequest::Nick(name) => {
                // A secure connection renames with a signed name, which
                // peers check; the server refuses a plain NICK from it.
                let message = match &self.identity {
                    Some(identity) if connection.secure => ClientMessage::SignedNick {
                        name: Bytes::from(name.clone()),
                        name_proof: identity.name_proof(&name),
                    },
                    _ => ClientMessage::Nick {
                        name: Bytes::from(name.clone()),
                    },
                };
                (message, InFlight::Nick(name))
            }
            QueuedRequest::Join { room, password } => (
                ClientMessage::Join {
                    room: Bytes::from(room.clone()),
                    password: Bytes::from(password),
                },
                InFlight::Join {
                    room,
                    secure: false,
                    incarnation: 0,
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
            QueuedRequest::Say { text, plaintext } => {
                return self.start_say(text, plaintext, now, out)
            }
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

    /// Whether a line that cannot be sealed may go in clear: the user
    /// asked for this one (`explicit`), or for all (`--allow-plaintext`),
    /// or this is a legacy client, which has no other way.
    fn plaintext_allowed(&self, explicit: bool) -> bool {
        explicit || self.allow_plaintext || self.identity.is_none()
    }

    fn start_dm(
        &mut self,
        target: Vec<u8>,
        text: Vec<u8>,
        plaintext: bool,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        let allowed = self.plaintext_allowed(plaintext);
        let connection = self.connection.as_mut().expect("dispatching");
        let sealer = match &self.identity {
            Some(identity) if connection.secure && !plaintext => identity,
            _ if allowed => return self.send_dm(target, text, None, now, out),
            _ => {
                let why = format!(
                    "this connection has no key, so nothing to '{}' can be encrypted",
                    show(&target)
                );
                return not_sent(&why, &format!("\\plainmsg {} TEXT", show(&target)), out);
            }
        };
        if target == connection.name {
            if allowed {
                return self.send_dm(target, text, None, now, out);
            }
            let why = "DMs to yourself cannot be encrypted";
            return not_sent(why, &format!("\\plainmsg {} TEXT", show(&target)), out);
        }
        if connection
            .keyring
            .peer(&target)
            .is_some_and(|(_, trust)| !trust.verified())
        {
            let held = connection.held_dms.entry(target.clone()).or_default();
            if held.len() >= MAX_HELD {
                return out.error(&format!(
                    "Not sent: {MAX_HELD} DMs to '{}' already wait for \\trust.",
                    show(&target)
                ));
            }
            held.push(text);
            return out.event(UserEvent::DmHeld { to: show(&target) });
        }
        if connection.keyring.dm_key_id(&target).is_none() {
            // Ask for a key first; the DM goes out after the reply.
            let request = ClientMessage::DmKeyRequest {
                target: Bytes::from(target.clone()),
            };
            connection.pending = Some(InFlight::DmKey { target, text });
            return self.send(&request, now, out);
        }
        let name = connection.name.clone();
        match connection.keyring.seal_dm(&target, &name, sealer, &text) {
            Ok(sealed) => self.send_dm(target, text, Some(sealed), now, out),
            Err(err) => out.error(&format!("Not sent: {err}.")),
        }
    }

    /// Sends a DM, `sealed` or in clear.
    fn send_dm(
        &mut self,
        target: Vec<u8>,
        text: Vec<u8>,
        sealed: Option<Vec<u8>>,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        let connection = self.connection.as_mut().expect("dispatching");
        let encrypted = sealed.is_some();
        let message = ClientMessage::DirectMessage {
            target: Bytes::from(target.clone()),
            text: Bytes::from(sealed.unwrap_or_else(|| text.clone())),
        };
        connection.pending = Some(InFlight::Dm {
            target,
            text,
            encrypted,
        });
        self.send(&message, now, out);
    }

    fn start_say(&mut self, text: Vec<u8>, plaintext: bool, now: Instant, out: &mut Vec<Output>) {
        let allowed = self.plaintext_allowed(plaintext);
        let connection = self.connection.as_mut().expect("dispatching");
        let (room, secure_room) = match &connection.room {
            Some(room) => (room.name.clone(), room.secure && connection.secure),
            None => (Vec::new(), false),
        };
        let unsealable = match (&self.identity, secure_room) {
            (Some(_), true) if plaintext => {
                return out.error(&format!(
                    "Not sent: room '{}' is end-to-end encrypted; \\plain is for rooms that are not.",
                    show(&room)
                ));
            }
            (Some(identity), true) => {
                let name = connection.name.clone();
                match connection.keyring.seal_room(&room, &name, identity, &text) {
                    Ok(sealed) => return self.send_say(room, text, Some(sealed), now, out),
                    Err(SealError::NoKey | SealError::Rekeying) => {
                        if connection.held.len() >= MAX_HELD {
                            return out.error(&format!(
                                "Not sent: {MAX_HELD} messages already wait for the key of room '{}'.",
                                show(&room)
                            ));
                        }
                        connection.held.push_back(text);
                        connection.held_since.get_or_insert(now);
                        return out.event(UserEvent::Held { room: show(&room) });
                    }
                    Err(err) => return out.error(&format!("Not sent: {err}.")),
                }
            }
            _ if allowed => return self.send_say(room, text, None, now, out),
            _ if !connection.secure => Unsealable::NoKey,
            _ if connection.room.is_none() => Unsealable::NoRoom,
            _ => Unsealable::PlaintextRoom(&room),
        };
        let why = match unsealable {
            Unsealable::PlaintextRoom(room) => {
                format!("room '{}' is not end-to-end encrypted", show(room))
            }
            Unsealable::NoRoom => "you are in no room".to_string(),
            Unsealable::NoKey => {
                "this connection has no key, so nothing said here can be encrypted".to_string()
            }
        };
        not_sent(&why, "\\plain TEXT", out);
    }

    /// Sends a room message, `sealed` or in clear. Outside a room the
    /// legacy client still sends, with an empty room, and lets the server
    /// say why not.
    fn send_say(
        &mut self,
        room: Vec<u8>,
        text: Vec<u8>,
        sealed: Option<Vec<u8>>,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        let connection = self.connection.as_mut().expect("dispatching");
        let encrypted = sealed.is_some();
        let message = ClientMessage::RoomMessage {
            room: Bytes::from(room.clone()),
            text: Bytes::from(sealed.unwrap_or_else(|| text.clone())),
        };
        connection.pending = Some(InFlight::Say {
            room,
            text,
            encrypted,
        });
        self.send(&message, now, out);
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
            self.failed(pending, data, now, out);
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
                let identity = self.identity.as_ref().expect("registered");
                out.event(UserEvent::KeyRegistered {
                    bits: identity.rsa_bits(),
                    fingerprint: display_fingerprint(identity.fingerprint()),
                });
                // Files cut off with the last connection go on.
                return self.resume_files();
            }
            InFlight::Nick(name) => {
                connection.name = name;
                UserEvent::Nick {
                    name: show(&connection.name),
                }
            }
            InFlight::Join {
                room,
                secure,
                incarnation,
            } => return self.joined(room, secure, incarnation, out),
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
                encrypted,
            } => UserEvent::Sent {
                kind: MessageKind::Dm,
                room: None,
                from: show(&connection.name),
                to: Some(show(&target)),
                text: show(&text),
                encrypted,
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
            InFlight::Say {
                room,
                text,
                encrypted,
            } => UserEvent::Sent {
                kind: MessageKind::Room,
                room: Some(show(&room)),
                from: show(&connection.name),
                to: None,
                text: show(&text),
                encrypted,
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

    /// A JOIN succeeded: we are in `room` now.
    fn joined(&mut self, room: Vec<u8>, secure: bool, incarnation: u64, out: &mut Vec<Output>) {
        let connection = self.connection.as_mut().expect("a frame arrived");
        connection.leave_room();
        let shown = show(&room);
        let server = connection.server.clone();
        out.event(UserEvent::Joined {
            room: shown.clone(),
            secure,
        });
        if secure {
            connection.keyring.enter_room(&room, incarnation);
            if let Some(record) = self.memory.mark_secure(&server, &room) {
                out.push(Output::Remember(record));
            }
        } else if connection.secure && self.memory.was_secure(&server, &room) {
            // Someone may have taken the name after the secure room
            // emptied: what we say here would go to them in clear.
            out.event(UserEvent::Warning {
                text: format!(
                    "room '{shown}' was end-to-end encrypted when you were last in it, and is plaintext now: someone else may have made a room of that name. Leaving it."
                ),
            });
            connection.queue.push_front(QueuedRequest::Leave);
        } else if connection.secure {
            out.event(UserEvent::Warning {
                text: format!(
                    "room '{shown}' is not end-to-end encrypted: the server and anyone on the path can read what is said here. Your lines are not sent here unless you ask: \\plain TEXT (or --allow-plaintext)."
                ),
            });
        }
        connection.room = Some(CurrentRoom { name: room, secure });
    }

    fn failed(&mut self, pending: InFlight, data: &[u8], now: Instant, out: &mut Vec<Output>) {
        match pending {
            // A user without a key: the DM goes in clear only if asked.
            InFlight::DmKey { target, text } if data == no_key_text(&target) => {
                if !self.allow_plaintext {
                    let why = format!(
                        "'{}' has no key, so DMs to them cannot be encrypted",
                        show(&target)
                    );
                    return not_sent(&why, &format!("\\plainmsg {} TEXT", show(&target)), out);
                }
                out.event(UserEvent::Warning {
                    text: format!(
                        "'{}' has no key; the message is sent in clear (--allow-plaintext).",
                        show(&target)
                    ),
                });
                self.send_dm(target, text, None, now, out);
            }
            InFlight::RegisterKey => {
                out.event(UserEvent::Failed { text: show(data) });
                out.event(UserEvent::Warning {
                    text: "the server refused your keys: nothing on this connection can be encrypted, so nothing is sent unless you ask (\\plain, \\plainmsg, or --allow-plaintext).".to_string(),
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

    fn room_message(
        &mut self,
        room: &[u8],
        sender: &[u8],
        text: &[u8],
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        let connection = self.connection.as_mut().expect("a frame arrived");
        // Everything said in a secure room is sealed, and only there.
        let sealed = connection.secure
            && connection
                .room
                .as_ref()
                .is_some_and(|current| current.name == room && current.secure);
        let shown_room = Some(show(room));
        let event = if !sealed {
            plain_message(MessageKind::Room, shown_room, sender, text)
        } else {
            match connection.keyring.open_room(room, sender, text, now) {
                Ok(opened) => UserEvent::Message {
                    kind: MessageKind::Room,
                    room: shown_room,
                    from: show(sender),
                    text: show(&opened.plaintext),
                    encrypted: true,
                    verified: opened.trust.verified(),
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
        let sealed = connection.secure && text.starts_with(&[VERSION, Kind::Direct as u8]);
        if !sealed {
            if connection.keyring.peer(sender).is_some() {
                out.event(UserEvent::Warning {
                    text: format!(
                        "'{}' has a key, but this DM came in clear: it may not be from them.",
                        show(sender)
                    ),
                });
            }
            return out.event(plain_message(MessageKind::Dm, None, sender, text));
        }
        let opened = connection
            .keyring
            .open_dm(&connection.name, sender, text, now);
        let event = match opened {
            Ok(opened) => {
                // A DM key belongs to the peer's key, not its name: the
                // signature just proved who wrote under this name.
                let trust = self.dm_sender(sender, &opened.signer, opened.trust, out);
                UserEvent::Message {
                    kind: MessageKind::Dm,
                    room: None,
                    from: show(sender),
                    text: show(&opened.plaintext),
                    encrypted: true,
                    verified: trust.verified(),
                }
            }
            Err(_) => UserEvent::Rejected {
                kind: MessageKind::Dm,
                room: None,
                from: show(sender),
            },
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

/// Tells the user a line was not sent, why, and the command that would
/// send it in clear.
fn not_sent(why: &str, command: &str, out: &mut Vec<Output>) {
    out.error(&format!(
        "Not sent: {why}. To send it in clear anyway: {command} (or start with --allow-plaintext)."
    ));
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
        self.keyring.leave_room();
        self.held.clear();
        self.held_since = None;
        Some(room.name)
    }
}

fn plain_message(kind: MessageKind, room: Option<String>, sender: &[u8], text: &[u8]) -> UserEvent {
    UserEvent::Message {
        kind,
        room,
        from: show(sender),
        text: show(text),
        encrypted: false,
        verified: false,
    }
}

/// The `9a 01` text for a DM_KEY_REQUEST to a user without a key,
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
mod secure;
mod send_file;

#[cfg(test)]
mod tests;
