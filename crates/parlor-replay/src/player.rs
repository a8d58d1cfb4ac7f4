//! Plays a capture's clients against a server and records what each one
//! receives, checking every reply against the rules the legacy client lives
//! by.
//!
//! The player behaves like the legacy client, whose discipline shapes the
//! captured traffic: it sends nothing while a request is unanswered, except
//! heartbeats, which bypass that queue. It also waits for every client's
//! answers, not only the sender's, before the next event. A room message
//! then reaches the other members before their own next request is even
//! sent, so each client's replies come in the same order however the
//! server's threads are scheduled. When the server is as fast as the
//! captured one, this changes nothing: the captured client waited too.
//!
//! Connections end as they did in the capture. Where the client closed
//! first, the player half-closes and reads until the server closes its side,
//! so replies still in flight are not lost. Where the captured server closed
//! first (a LEAVE outside a room, an idle cutoff, a crash), the player waits
//! for the server under test to do the same, for up to
//! [`SERVER_CLOSE_PATIENCE`] of capture time, and records whether it did.

use std::collections::VecDeque;
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;

use super::capture::{Capture, End, Moment, Sent, SentKind};
use super::transcript::{client_label, describe_sent, reply_line, Asked};
use parlor_proto::rules::{self, Delivery, Reader, RuleBreak};
use parlor_proto::{opcode, Frame, FrameCodec, Status};

/// How long the player waits, in real time, for the reply to a request or
/// for the server to finish a connection the player closed.
pub const REPLY_PATIENCE: Duration = Duration::from_secs(5);

/// How long, in capture time, the player waits for the server to close a
/// connection that the captured server closed: long enough for an idle
/// cutoff at 30 s.
pub const SERVER_CLOSE_PATIENCE: Duration = Duration::from_secs(40);

/// The largest server frame the player accepts. Server frames have no
/// protocol maximum (a list of 10,000 users is bigger than any client
/// frame); this only keeps a broken server from making the player reserve
/// gigabytes.
const MAX_SERVER_PAYLOAD: usize = 16 << 20;

/// How fast to play the capture.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pace {
    /// Keep the captured timing, this many times faster (1.0 = as captured).
    Speed(f64),
    /// Send each event as soon as the previous requests are answered. Timers
    /// in the server (idle cutoff, rate limit) then see another pace than
    /// the captured one, and a connection the captured server closed is
    /// waited for only briefly.
    AsFastAsPossible,
}

impl Pace {
    /// The time the player waits for a server-side close, in real time.
    fn server_close_patience(self) -> Duration {
        match self {
            Pace::Speed(speed) => SERVER_CLOSE_PATIENCE.div_f64(speed),
            Pace::AsFastAsPossible => Duration::from_secs(1),
        }
    }
}

/// What every client received.
#[derive(Debug)]
pub struct Recording {
    /// One record per client of the capture, in the order they connected.
    pub clients: Vec<ClientRecord>,
}

/// What one client received.
#[derive(Debug)]
pub struct ClientRecord {
    /// `A`, `B`, ...: clients in the order they connected in the capture.
    pub label: String,
    /// The client's address in the capture.
    pub peer: SocketAddr,
    /// Transcript lines (without the label), in the order received.
    pub replies: Vec<String>,
    /// Broken promises to the legacy client, each with the reply concerned.
    pub violations: Vec<String>,
}

impl Recording {
    /// Every violation, prefixed with its client.
    pub fn violations(&self) -> Vec<String> {
        self.clients
            .iter()
            .flat_map(|client| {
                client
                    .violations
                    .iter()
                    .map(move |violation| format!("{}: {violation}", client.label))
            })
            .collect()
    }

    /// Each client's label and transcript lines, as
    /// [`Expected::compare`](super::Expected::compare) takes them.
    pub fn received(&self) -> Vec<(String, Vec<String>)> {
        self.clients
            .iter()
            .map(|client| (client.label.clone(), client.replies.clone()))
            .collect()
    }

    /// Total number of transcript lines.
    pub fn reply_count(&self) -> usize {
        self.clients.iter().map(|client| client.replies.len()).sum()
    }
}

/// Why a replay could not run to the end.
#[derive(Debug, thiserror::Error)]
pub enum PlayError {
    /// A client could not connect: with no connection, nothing it sent can
    /// be replayed, so the replay stops rather than report a partial run.
    #[error("cannot connect to the server at {addr}: {source}")]
    Connect {
        /// The server's address.
        addr: SocketAddr,
        /// Why the connection failed.
        source: std::io::Error,
    },
    /// The server started in-process (when no address is given) could not
    /// start or stopped with an error.
    #[error("cannot start the in-process server: {0}")]
    Server(std::io::Error),
}

/// Plays every client of `capture` against the server at `servers`,
/// writing the transcript (replies, with what was sent as comments) to
/// `out` as it happens. With several servers (the nodes of a cluster),
/// client *i* connects to server *i* mod their number, so the clients of a
/// capture are spread over all of them.
pub async fn play(
    capture: &Capture,
    servers: &[SocketAddr],
    pace: Pace,
    out: &mut (dyn Write + Send),
) -> Result<Recording, PlayError> {
    assert!(!servers.is_empty(), "a replay needs a server");
    let mut player = Player::new(capture, servers, pace, out);
    for event in schedule(capture) {
        if !event.is_heartbeat() {
            player.wait_for_answers().await;
        }
        player.wait_until(event.when).await;
        player.perform(event).await?;
    }
    player.finish().await;
    Ok(player.into_recording())
}

/// One thing a captured client did.
struct Event<'a> {
    when: Moment,
    client: usize,
    action: Action<'a>,
}

enum Action<'a> {
    Connect,
    Send(&'a Sent),
    Close,
    /// The captured server closed the connection here.
    ServerClosed,
}

impl Event<'_> {
    fn is_heartbeat(&self) -> bool {
        matches!(self.action, Action::Send(sent) if sent.kind == SentKind::Frame(opcode::HEARTBEAT))
    }
}

/// Every client's events in capture order.
fn schedule(capture: &Capture) -> Vec<Event<'_>> {
    let mut events = Vec::new();
    for (client, flow) in capture.clients.iter().enumerate() {
        let event = |when, action| Event {
            when,
            client,
            action,
        };
        events.push(event(flow.connected, Action::Connect));
        events.extend(
            flow.sent
                .iter()
                .map(|sent| event(sent.when, Action::Send(sent))),
        );
        match flow.end {
            End::ClientClosed(when) => events.push(event(when, Action::Close)),
            End::ServerClosed(when) => events.push(event(when, Action::ServerClosed)),
            End::StillOpen => {}
        }
    }
    // Stable: frames completed by one packet keep their stream order.
    events.sort_by_key(|event| event.when.packet);
    events
}

/// What a reader task reports about its connection.
enum Incoming {
    Frame(Frame),
    Closed,
    Reset,
    /// Bytes that are not frames: the legacy client would drop the connection.
    Garbage(String),
}

enum Link {
    NotYetConnected,
    Open,
    /// The player sent its FIN and reads until the server closes.
    ClosingOurSide,
    /// The captured server closed here; the player waits until `deadline`
    /// for this one to do the same.
    AwaitingServerClose {
        deadline: Instant,
    },
    Ended,
}

struct Client {
    record: ClientRecord,
    link: Link,
    writer: Option<OwnedWriteHalf>,
    /// Stops reading when the replay is over, whatever the server does.
    reader: Option<AbortOnDropHandle<()>>,
    /// Requests sent and not answered yet, oldest first, with a description.
    unanswered: VecDeque<(Asked, String)>,
}

struct Player<'a> {
    servers: &'a [SocketAddr],
    pace: Pace,
    origin: Instant,
    out: &'a mut (dyn Write + Send),
    clients: Vec<Client>,
    incoming_sender: mpsc::UnboundedSender<(usize, Incoming)>,
    incoming: mpsc::UnboundedReceiver<(usize, Incoming)>,
}

impl<'a> Player<'a> {
    fn new(
        capture: &Capture,
        servers: &'a [SocketAddr],
        pace: Pace,
        out: &'a mut (dyn Write + Send),
    ) -> Player<'a> {
        let clients: Vec<Client> = capture
            .clients
            .iter()
            .enumerate()
            .map(|(index, flow)| Client {
                record: ClientRecord {
                    label: client_label(index),
                    peer: flow.peer,
                    replies: Vec::new(),
                    violations: Vec::new(),
                },
                link: Link::NotYetConnected,
                writer: None,
                reader: None,
                unanswered: VecDeque::new(),
            })
            .collect();
        let (incoming_sender, incoming) = mpsc::unbounded_channel();
        let mut player = Player {
            servers,
            pace,
            origin: Instant::now(),
            out,
            clients,
            incoming_sender,
            incoming,
        };
        let count = capture.clients.len();
        let mut header = vec![format!(
            "{count} {} of the captured server {}",
            if count == 1 { "client" } else { "clients" },
            capture.clients[0].server
        )];
        header.extend(
            player
                .clients
                .iter()
                .map(|client| format!("{} = {}", client.record.label, client.record.peer)),
        );
        header.extend(
            capture
                .skipped
                .iter()
                .map(|note| format!("left out: {note}")),
        );
        for line in header {
            player.note(format_args!("{line}"));
        }
        player
    }

    /// Writes a comment line to the transcript.
    fn note(&mut self, text: std::fmt::Arguments<'_>) {
        // The transcript is for reading; a closed stdout must not stop the
        // replay, whose verdict is still wanted.
        let _ = writeln!(self.out, "# {text}");
    }

    fn record(&mut self, client: usize, line: String, comment: Option<String>) {
        let label = &self.clients[client].record.label;
        let _ = match comment {
            Some(comment) => writeln!(self.out, "{label} {line}  # {comment}"),
            None => writeln!(self.out, "{label} {line}"),
        };
        self.clients[client].record.replies.push(line);
    }

    fn violation(&mut self, client: usize, problem: String) {
        let _ = writeln!(self.out, "# ^ protocol violation: {problem}");
        self.clients[client].record.violations.push(problem);
    }

    /// The real time at which a captured moment is due.
    fn due(&self, at: Duration) -> Instant {
        match self.pace {
            Pace::Speed(speed) => self.origin + at.div_f64(speed),
            Pace::AsFastAsPossible => Instant::now(),
        }
    }

    /// How far into the capture the replay is now, in capture time.
    fn capture_time(&self) -> Option<Duration> {
        match self.pace {
            Pace::Speed(speed) => Some(self.origin.elapsed().mul_f64(speed)),
            Pace::AsFastAsPossible => None,
        }
    }

    async fn wait_until(&mut self, when: Moment) {
        let due = self.due(when.at);
        self.pump_until(due, |_| false).await;
    }

    /// Waits until every request sent so far is answered; after
    /// [`REPLY_PATIENCE`], records each one still unanswered and moves on.
    async fn wait_for_answers(&mut self) {
        let all_answered = |player: &Player<'_>| {
            player
                .clients
                .iter()
                .all(|client| client.unanswered.is_empty())
        };
        if self
            .pump_until(Instant::now() + REPLY_PATIENCE, all_answered)
            .await
        {
            return;
        }
        for index in 0..self.clients.len() {
            let unanswered = std::mem::take(&mut self.clients[index].unanswered);
            for (_, request) in unanswered {
                self.violation(
                    index,
                    format!("no reply to {request} within {REPLY_PATIENCE:?}"),
                );
            }
        }
    }

    /// Handles what the connections report until `done` holds or `deadline`
    /// passes; returns whether `done` holds.
    async fn pump_until(&mut self, deadline: Instant, done: impl Fn(&Player<'_>) -> bool) -> bool {
        loop {
            if done(self) {
                return true;
            }
            tokio::select! {
                report = self.incoming.recv() => {
                    if let Some((client, incoming)) = report {
                        self.receive(client, incoming);
                    }
                }
                () = tokio::time::sleep_until(deadline.into()) => return done(self),
            }
        }
    }

    async fn perform(&mut self, event: Event<'_>) -> Result<(), PlayError> {
        let index = event.client;
        let at = event.when.at.as_secs_f64();
        let label = self.clients[index].record.label.clone();
        match event.action {
            Action::Connect => {
                self.note(format_args!("{at:8.3} {label} connects"));
                self.connect(index).await?;
            }
            Action::Send(sent) => {
                let frame = match sent.kind {
                    SentKind::Frame(opcode) => Some(Frame::new(
                        opcode,
                        sent.bytes.slice(parlor_proto::HEADER_LEN..),
                    )),
                    SentKind::Garbage | SentKind::Unfinished => None,
                };
                let what = describe_sent(&sent.bytes, frame.as_ref());
                self.note(format_args!("{at:8.3} {label} > {what}"));
                self.send(index, sent, what).await;
            }
            Action::Close => {
                self.note(format_args!("{at:8.3} {label} closes the connection"));
                self.close_our_side(index).await;
            }
            Action::ServerClosed => {
                self.note(format_args!(
                    "{at:8.3} the captured server closed {label}'s connection here"
                ));
                let client = &mut self.clients[index];
                if matches!(client.link, Link::Open) {
                    client.link = Link::AwaitingServerClose {
                        deadline: Instant::now() + self.pace.server_close_patience(),
                    };
                }
            }
        }
        Ok(())
    }

    async fn connect(&mut self, index: usize) -> Result<(), PlayError> {
        let addr = self.servers[index % self.servers.len()];
        let connecting = tokio::time::timeout(REPLY_PATIENCE, TcpStream::connect(addr));
        let stream = match connecting.await {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => return Err(PlayError::Connect { addr, source }),
            Err(_) => {
                let source = std::io::Error::from(std::io::ErrorKind::TimedOut);
                return Err(PlayError::Connect { addr, source });
            }
        };
        // Frames leave when the capture says, not when Nagle allows.
        let _ = stream.set_nodelay(true);
        let (reader, writer) = stream.into_split();
        let reports = self.incoming_sender.clone();
        let client = &mut self.clients[index];
        let reading = tokio::spawn(read_replies(index, reader, reports));
        client.reader = Some(AbortOnDropHandle::new(reading));
        client.writer = Some(writer);
        client.link = Link::Open;
        Ok(())
    }

    async fn send(&mut self, index: usize, sent: &Sent, what: String) {
        let client = &mut self.clients[index];
        let writer = match (&client.link, client.writer.as_mut()) {
            (Link::Open | Link::AwaitingServerClose { .. }, Some(writer)) => writer,
            _ => {
                self.note(format_args!("  (not sent: the connection is closed)"));
                return;
            }
        };
        if let Err(err) = writer.write_all(&sent.bytes).await {
            self.note(format_args!("  (not sent: {err})"));
            return;
        }
        // Everything but a heartbeat or a half-sent frame is owed one reply;
        // parlor answers bytes that are not frames too, before closing.
        let asked = match sent.kind {
            SentKind::Frame(opcode::HEARTBEAT) | SentKind::Unfinished => return,
            SentKind::Frame(opcode) => Asked::of(opcode),
            SentKind::Garbage => Asked::Other,
        };
        client.unanswered.push_back((asked, what));
    }

    async fn close_our_side(&mut self, index: usize) {
        let client = &mut self.clients[index];
        if !matches!(client.link, Link::Open | Link::AwaitingServerClose { .. }) {
            return;
        }
        if let Some(writer) = client.writer.as_mut() {
            let _ = writer.shutdown().await;
        }
        client.link = Link::ClosingOurSide;
    }

    fn receive(&mut self, index: usize, incoming: Incoming) {
        match incoming {
            Incoming::Frame(frame) => self.receive_frame(index, &frame),
            Incoming::Closed | Incoming::Reset => {
                let client = &mut self.clients[index];
                let ours = matches!(client.link, Link::ClosingOurSide);
                client.link = Link::Ended;
                client.writer = None;
                if !ours {
                    let line = match incoming {
                        Incoming::Reset => "reset",
                        _ => "closed",
                    };
                    let when = self
                        .capture_time()
                        .map(|at| format!("at about {:.1} s of capture time", at.as_secs_f64()));
                    self.record(index, line.to_owned(), when);
                }
                self.connection_ended(index);
            }
            Incoming::Garbage(problem) => {
                self.record(index, "garbage".to_owned(), None);
                self.violation(
                    index,
                    format!("{problem}: the legacy client drops the connection"),
                );
                let client = &mut self.clients[index];
                client.link = Link::Ended;
                client.writer = None;
                self.connection_ended(index);
            }
        }
    }

    /// Requests still unanswered when a connection ends never will be.
    fn connection_ended(&mut self, index: usize) {
        let unanswered = std::mem::take(&mut self.clients[index].unanswered);
        for (_, request) in unanswered {
            self.violation(
                index,
                format!("the connection ended with no reply to {request}"),
            );
        }
    }

    fn receive_frame(&mut self, index: usize, frame: &Frame) {
        let client = &mut self.clients[index];
        let mut problems = Vec::new();
        let mut answers = None;
        match rules::check_frame(frame, Reader::Legacy) {
            Ok(Delivery::Response { status }) => match client.unanswered.pop_front() {
                Some(answered) => answers = Some(answered),
                None if status == Status::Ok as u8 => {
                    problems.push(RuleBreak::UnsolicitedSuccess.to_string())
                }
                None => problems.push(RuleBreak::UnsolicitedReply(status).to_string()),
            },
            Ok(_) => {}
            // parlor never sends 9a 03 (rule 1), but the legacy client
            // ignores it, so a replay against another server is not faulted
            // for one.
            Err(breaks) => problems.extend(
                (breaks.0.iter())
                    .filter(|broken| **broken != RuleBreak::StatusAnswersNothing)
                    .map(RuleBreak::to_string),
            ),
        }
        let asked = answers.as_ref().map_or(Asked::Other, |(asked, _)| *asked);
        let line = reply_line(frame, asked);
        self.record(index, line, None);
        for problem in problems {
            self.violation(index, problem);
        }
    }

    /// Ends every connection as the capture did, then waits for them all.
    async fn finish(&mut self) {
        self.wait_for_answers().await;
        for index in 0..self.clients.len() {
            if matches!(self.clients[index].link, Link::Open) {
                let label = self.clients[index].record.label.clone();
                self.note(format_args!(
                    "{label}: the capture ends with the connection open; closing it"
                ));
                self.close_our_side(index).await;
            }
        }
        let mut awaiting: Vec<(Instant, usize)> = self
            .clients
            .iter()
            .enumerate()
            .filter_map(|(index, client)| match client.link {
                Link::AwaitingServerClose { deadline } => Some((deadline, index)),
                _ => None,
            })
            .collect();
        awaiting.sort();
        for (deadline, index) in awaiting {
            let ended =
                move |player: &Player<'_>| matches!(player.clients[index].link, Link::Ended);
            if !self.pump_until(deadline, ended).await {
                let label = self.clients[index].record.label.clone();
                let patience = self.pace.server_close_patience().as_secs_f64();
                self.note(format_args!(
                    "{label}: the server kept the connection open {patience:.1} s after \
                     the captured server closed it; closing it"
                ));
                self.close_our_side(index).await;
            }
        }
        for index in 0..self.clients.len() {
            let ended =
                move |player: &Player<'_>| matches!(player.clients[index].link, Link::Ended);
            if !self
                .pump_until(Instant::now() + REPLY_PATIENCE, ended)
                .await
            {
                let label = self.clients[index].record.label.clone();
                self.note(format_args!(
                    "{label}: the server did not close its side within {REPLY_PATIENCE:?}"
                ));
            }
        }
    }

    fn into_recording(self) -> Recording {
        let clients = self
            .clients
            .into_iter()
            .map(|client| client.record)
            .collect();
        Recording { clients }
    }
}

/// Cuts one connection's bytes into frames and reports them, then how the
/// connection ended.
async fn read_replies(
    index: usize,
    mut stream: OwnedReadHalf,
    reports: mpsc::UnboundedSender<(usize, Incoming)>,
) {
    let mut codec = FrameCodec::new(MAX_SERVER_PAYLOAD);
    let mut buffer = BytesMut::new();
    let report = |incoming| {
        // The player may have finished; nobody listens then.
        let _ = reports.send((index, incoming));
    };
    loop {
        match codec.decode(&mut buffer) {
            Ok(Some(frame)) => {
                report(Incoming::Frame(frame));
                continue;
            }
            Ok(None) => {}
            Err(err) => return report(Incoming::Garbage(err.to_string())),
        }
        match stream.read_buf(&mut buffer).await {
            Ok(0) if buffer.is_empty() => return report(Incoming::Closed),
            Ok(0) => {
                let problem = "the server closed the connection in the middle of a frame";
                return report(Incoming::Garbage(problem.to_owned()));
            }
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => {
                return report(Incoming::Reset)
            }
            Err(err) => return report(Incoming::Garbage(format!("reading failed: {err}"))),
        }
    }
}
