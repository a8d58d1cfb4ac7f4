//! Room messages and DMs between nodes, over core NATS.
//!
//! Each node subscribes, before it claims anything, to one subject of its
//! own, `parlor.node.<id>`, and to the replies to its DMs,
//! `parlor.reply.<id>.*`. Subscriptions made at JOIN would reach the other
//! NATS servers of a cluster a moment later than the JOIN, and could miss
//! the next message; these are made once, at start.
//!
//! **Room messages.** A node relays a room message once to each other node
//! that serves members of the room; that node queues it for its own
//! members. NATS keeps the order of the messages one connection publishes
//! to one subscriber, and each node publishes from one connection and one
//! task, so every member sees one node's messages in the order that node
//! accepted them: one sender's messages in its order.
//!
//! Core NATS delivers at most once, so each node numbers what it relays to
//! each other node and keeps the last [`RETAIN`] of them; a receiver that
//! sees a number skipped asks for it again (a RESEND, answered from what
//! was kept) and holds what follows until it comes, and only a gap that
//! stays open disconnects the members who may have missed a message, as
//! slow consumers ([`parlor_core::Hub::relay_lost`]): `order.rs` decides
//! it. A loss with nothing relayed after it would show no gap, so a node
//! that relayed to another since its last tick also tells it, every
//! [`TICK`], the last number it sent.
//!
//! When NATS takes relays more slowly than this node's clients send room
//! messages, the queue to it fills; before it is full, the node stops
//! reading from its clients until it has drained a little
//! ([`Relay::backlogged`]), as a single node stops reading from a sender
//! while its own writes wait. A gap is for what is lost on the way, not
//! for a burst.
//!
//! **Secure rooms.** An identity (`81`) or a ROOM_REKEYING (`95`) for a
//! secure room's members is relayed as a room message is. The keys its
//! owner wrapped for the members of a node go to that node in one relay,
//! each frame naming its member by fingerprint, numbered with the room
//! messages: a member gets its key before the messages sealed under it
//! that the owner's node relays after it.
//!
//! **Files.** A transfer runs on its sender's node. Its frames for a
//! recipient here go to the recipient's node numbered, as room messages
//! do, one relay per frame and recipient; the recipient's acknowledgements
//! come back numbered too, and its decisions and cancels as requests,
//! answered with the frames the transfer answered (as DMs are, below).
//! Before a file to one user of another node, that node is asked whose
//! key the user holds, a request it answers at once.
//!
//! **DMs.** A DM for a user of another node is sent to that node with a
//! reply subject; the node answers whether the user was there, and the
//! sender is answered `9a 00` or "Nick not present" only then. A node that
//! does not answer within the timeout leaves the sender told that the
//! network is unavailable. DMs go through the same queue as room messages,
//! so they keep their place among them.
//!
//! **DM keys.** A DM_KEY_REQUEST for a user of another node goes the same
//! way, carrying the requester's introduction (its `81`); the target's
//! node issues the key and answers, once it is wrapped, with the `89` for
//! the requester or the reason it was refused. A node owes at most
//! [`ASKS`] such answers at once; past that it answers "busy" at once.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::{Client, Subject, Subscriber};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use parlor_core::{DirectOutcome, DmKeyAnswer, FileTarget, MemberFrames, NodeId};
use parlor_proto::secure::Fingerprint;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::order::{Numbering, Order, Relayed, Steps, ASK_AGAIN, UNSEEN_RUN};
use crate::{lock, Node};

/// How many relayed messages may wait to be handed to the NATS client.
/// Past it, a message is dropped; its number is not reused, so the nodes
/// it was for see the gap.
const QUEUE: usize = 16 * 1024;

/// How many relays may wait in the queue for this node's connections to go
/// on reading: past it they wait ([`Relay::backlogged`]) while it drains,
/// so that a burst slows its senders down instead of overflowing the queue.
/// What is read between the check and the relay (a read's worth of frames
/// per connection) lands in the places above it. Small, since every relay
/// waiting is latency for its members: at 100,000 relays a second, 1,024
/// are 10 ms.
const BACKLOG: usize = 1024;

const ROOM: u8 = 1;
const DIRECT: u8 = 2;
const SYNC: u8 = 3;
const DM_KEY: u8 = 4;
const RESEND: u8 = 5;
const MEMBERS: u8 = 6;
const USER: u8 = 7;
const FILE_REQUEST: u8 = 8;
const FILE_ASK: u8 = 9;
const FILE_TARGET: u8 = 10;

/// How often a node tells each node it relayed to since the last time the
/// last number it sent: how late, at most, a lost message with none after
/// it is seen missing. One small message per node and tick, and none while
/// nothing is relayed.
pub(crate) const TICK: Duration = Duration::from_millis(250);

/// How many of the room messages last relayed to each node are kept to be
/// sent again: at 100,000 relays a second to one node, 10 ms, and at the
/// rates of a chat many seconds, against a loss that lasts while a
/// subscription moves between NATS servers. Kept small because what is
/// kept leaves the cache: three nodes saturating one core relay 9 % fewer
/// messages with 1,024 kept than with none, and 15 % fewer with 4,096
/// (BENCHMARKS.md, "Cluster mode").
const RETAIN: usize = 1024;

/// How many requests from other nodes (DM key requests, file requests)
/// may wait for their answers.
const ASKS: usize = 4096;

/// The subject a node receives relays on.
fn node_subject(node: &str) -> Subject {
    Subject::from(format!("parlor.node.{node}"))
}

/// The subjects the answers to a node's DMs come back on: one per DM.
fn reply_subject(node: &str, id: Option<u64>) -> String {
    match id {
        Some(id) => format!("parlor.reply.{node}.{id}"),
        None => format!("parlor.reply.{node}.*"),
    }
}

/// What one node sends another, as decoded.
#[derive(Debug, PartialEq, Eq)]
enum Envelope {
    /// A room message or notice for the members of a room, or frames for
    /// some of them: number `seq` of `numbering` from node `from`.
    Room {
        from: Bytes,
        numbering: Numbering,
        seq: u64,
        relayed: Relayed,
    },
    /// A DM for `target`.
    Direct { target: Bytes, frame: Bytes },
    /// The last number of `numbering` that node `from` relayed here.
    Sync {
        from: Bytes,
        numbering: Numbering,
        seq: u64,
    },
    /// Node `from` asks for numbers `first` to `last` of `numbering` again.
    Resend {
        from: Bytes,
        numbering: Numbering,
        first: u64,
        last: u64,
    },
    /// A DM_KEY_REQUEST for `target` by the user `introduction` names.
    DmKey { target: Bytes, introduction: Bytes },
    /// Whose key `target`, the target of a file, holds.
    FileTarget { target: Bytes },
    /// A file request of `user`, served by node `from`, whose answer
    /// `from` waits for.
    FileAsk {
        from: Bytes,
        user: Bytes,
        frame: Bytes,
    },
}

impl Envelope {
    /// `01` (or `06` for frames for members), the sender's id (u8
    /// length), the numbering's two runs and the number (u64 BE), the room
    /// (u16 length), then the frame (or the members' frames, as
    /// [`member_frames`] writes them).
    fn room(
        kind: u8,
        from: &str,
        (numbering, seq): (Numbering, u64),
        room: &[u8],
        body: &[u8],
    ) -> Bytes {
        let mut out =
            BytesMut::with_capacity(1 + 1 + from.len() + NUMBERED + 2 + room.len() + body.len());
        put_numbered(&mut out, kind, from, numbering, seq);
        put_long(&mut out, room);
        out.put_slice(body);
        out.freeze()
    }

    /// `03`, the sender's id (u8 length), the numbering's two runs and the
    /// number (u64 BE).
    fn sync(from: &str, numbering: Numbering, seq: u64) -> Bytes {
        let mut out = BytesMut::with_capacity(1 + 1 + from.len() + NUMBERED);
        put_numbered(&mut out, SYNC, from, numbering, seq);
        out.freeze()
    }

    /// `05`, the asking node's id (u8 length), the numbering's two runs,
    /// the first and the last number (u64 BE).
    fn resend(from: &str, numbering: Numbering, first: u64, last: u64) -> Bytes {
        let mut out = BytesMut::with_capacity(1 + 1 + from.len() + NUMBERED + 8);
        put_numbered(&mut out, RESEND, from, numbering, first);
        out.put_u64(last);
        out.freeze()
    }

    /// `09`, the asking node's id (u8 length), the user (u16 length), then
    /// the user's file request.
    fn file_ask(from: &str, user: &[u8], frame: &[u8]) -> Bytes {
        let mut out = BytesMut::with_capacity(1 + 1 + from.len() + 2 + user.len() + frame.len());
        out.put_u8(FILE_ASK);
        put_short(&mut out, from.as_bytes());
        put_long(&mut out, user);
        out.put_slice(frame);
        out.freeze()
    }

    /// `02` (or `04` for a DM key request), the target (u16 length), then
    /// the frame (or the introduction).
    fn direct(kind: u8, target: &[u8], frame: &[u8]) -> Bytes {
        let mut out = BytesMut::with_capacity(1 + 2 + target.len() + frame.len());
        out.put_u8(kind);
        put_long(&mut out, target);
        out.put_slice(frame);
        out.freeze()
    }

    fn decode(mut payload: Bytes) -> Option<Envelope> {
        if !payload.has_remaining() {
            return None;
        }
        let kind = payload.get_u8();
        match kind {
            ROOM | MEMBERS | USER | FILE_REQUEST | SYNC | RESEND => {
                let from = take(&mut payload, 1)?;
                if payload.remaining() < NUMBERED {
                    return None;
                }
                let numbering = Numbering {
                    from_run: payload.get_u64(),
                    to_run: payload.get_u64(),
                };
                let seq = payload.get_u64();
                if kind == SYNC {
                    return payload.is_empty().then_some(Envelope::Sync {
                        from,
                        numbering,
                        seq,
                    });
                }
                if kind == RESEND {
                    return (payload.remaining() == 8).then(|| Envelope::Resend {
                        from,
                        numbering,
                        first: seq,
                        last: payload.get_u64(),
                    });
                }
                let room = take(&mut payload, 2)?;
                // The field after the number is a room, or a user.
                let relayed = match kind {
                    ROOM => Relayed::Room {
                        room,
                        frame: payload,
                    },
                    MEMBERS => Relayed::Members {
                        room,
                        frames: payload,
                    },
                    USER => Relayed::User {
                        name: room,
                        frame: payload,
                    },
                    _ => Relayed::FileRequest {
                        name: room,
                        frame: payload,
                    },
                };
                Some(Envelope::Room {
                    from,
                    numbering,
                    seq,
                    relayed,
                })
            }
            DIRECT => {
                let target = take(&mut payload, 2)?;
                Some(Envelope::Direct {
                    target,
                    frame: payload,
                })
            }
            DM_KEY => {
                let target = take(&mut payload, 2)?;
                Some(Envelope::DmKey {
                    target,
                    introduction: payload,
                })
            }
            FILE_TARGET => {
                let target = take(&mut payload, 2)?;
                payload
                    .is_empty()
                    .then_some(Envelope::FileTarget { target })
            }
            FILE_ASK => {
                let from = take(&mut payload, 1)?;
                let user = take(&mut payload, 2)?;
                Some(Envelope::FileAsk {
                    from,
                    user,
                    frame: payload,
                })
            }
            _ => None,
        }
    }
}

/// Frames for members, by fingerprint, as a relay carries them: for each,
/// the fingerprint (32 bytes) and the frame (u32 length).
fn member_frames(frames: &[(Fingerprint, Bytes)]) -> Bytes {
    let len = frames
        .iter()
        .map(|(_, frame)| FINGERPRINT + 4 + frame.len());
    let mut out = BytesMut::with_capacity(len.sum());
    for (fingerprint, frame) in frames {
        out.put_slice(fingerprint);
        out.put_u32(u32::try_from(frame.len()).expect("a frame's length fits its header"));
        out.put_slice(frame);
    }
    out.freeze()
}

/// The bytes of a fingerprint.
const FINGERPRINT: usize = std::mem::size_of::<Fingerprint>();

/// The frames [`member_frames`] wrote; `None` if they are cut short.
fn read_member_frames(mut body: Bytes) -> Option<Vec<(Fingerprint, Bytes)>> {
    let mut frames = Vec::new();
    while body.has_remaining() {
        if body.remaining() < FINGERPRINT + 4 {
            return None;
        }
        let mut fingerprint = Fingerprint::default();
        body.copy_to_slice(&mut fingerprint);
        let len = body.get_u32() as usize;
        if body.remaining() < len {
            return None;
        }
        frames.push((fingerprint, body.split_to(len)));
    }
    Some(frames)
}

/// The answer to a file target's question, on the wire: `1` and the
/// fingerprint, `2` for no key, `3` for nobody of that name.
fn encode_file_target(answer: FileTarget) -> Bytes {
    match answer {
        FileTarget::Key(fingerprint) => Bytes::from([&[1u8][..], &fingerprint[..]].concat()),
        FileTarget::NoKey => Bytes::from_static(&[2]),
        // Never sent: it is what a node that does not answer means.
        FileTarget::Absent | FileTarget::Unavailable => Bytes::from_static(&[3]),
    }
}

fn decode_file_target(payload: Bytes) -> FileTarget {
    match &payload[..] {
        [1, fingerprint @ ..] => match Fingerprint::try_from(fingerprint) {
            Ok(fingerprint) => FileTarget::Key(fingerprint),
            Err(_) => FileTarget::Unavailable,
        },
        [2] => FileTarget::NoKey,
        [3] => FileTarget::Absent,
        _ => FileTarget::Unavailable,
    }
}

/// The answer to a DM key request, on the wire: one byte, then for an
/// issued key the `89` frame.
fn encode_dm_key_answer(answer: DmKeyAnswer) -> Bytes {
    let (tag, frame) = match answer {
        DmKeyAnswer::Issued(frame) => (1, frame),
        DmKeyAnswer::Absent => (2, Bytes::new()),
        DmKeyAnswer::HasNoKey => (3, Bytes::new()),
        DmKeyAnswer::TooMany => (4, Bytes::new()),
        DmKeyAnswer::Busy => (5, Bytes::new()),
        // Never sent: it is what a node that does not answer means.
        DmKeyAnswer::Failed | DmKeyAnswer::Unavailable => (6, Bytes::new()),
    };
    let mut out = BytesMut::with_capacity(1 + frame.len());
    out.put_u8(tag);
    out.put_slice(&frame);
    out.freeze()
}

fn decode_dm_key_answer(mut payload: Bytes) -> DmKeyAnswer {
    if !payload.has_remaining() {
        return DmKeyAnswer::Failed;
    }
    match payload.get_u8() {
        1 if !payload.is_empty() => DmKeyAnswer::Issued(payload),
        2 => DmKeyAnswer::Absent,
        3 => DmKeyAnswer::HasNoKey,
        4 => DmKeyAnswer::TooMany,
        5 => DmKeyAnswer::Busy,
        _ => DmKeyAnswer::Failed,
    }
}

/// The bytes of a numbering and a number.
const NUMBERED: usize = 3 * 8;

/// The head of a numbered envelope: its kind, the sender, the numbering and
/// the number.
fn put_numbered(out: &mut BytesMut, kind: u8, from: &str, numbering: Numbering, seq: u64) {
    out.put_u8(kind);
    put_short(out, from.as_bytes());
    out.put_u64(numbering.from_run);
    out.put_u64(numbering.to_run);
    out.put_u64(seq);
}

fn put_short(out: &mut BytesMut, field: &[u8]) {
    out.put_u8(u8::try_from(field.len()).expect("node ids are at most 64 bytes"));
    out.put_slice(field);
}

fn put_long(out: &mut BytesMut, field: &[u8]) {
    out.put_u16(u16::try_from(field.len()).expect("names fit a frame"));
    out.put_slice(field);
}

/// A field of `width` length bytes (1 or 2) and its contents.
fn take(payload: &mut Bytes, width: usize) -> Option<Bytes> {
    if payload.remaining() < width {
        return None;
    }
    let len = match width {
        1 => usize::from(payload.get_u8()),
        _ => usize::from(payload.get_u16()),
    };
    (payload.remaining() >= len).then(|| payload.split_to(len))
}

/// What waits to be handed to the NATS client, in order.
enum Outgoing {
    Publish {
        subject: Subject,
        payload: Bytes,
    },
    /// A room message, number `seq` of `numbering` for the node of
    /// `subject`: kept to be sent again.
    Numbered {
        subject: Subject,
        numbering: Numbering,
        seq: u64,
        payload: Bytes,
    },
    /// Numbers `first` to `last` of `numbering` to `node` again, as far as
    /// they are kept.
    Resend {
        node: Bytes,
        numbering: Numbering,
        first: u64,
        last: u64,
    },
    Request {
        subject: Subject,
        id: u64,
        payload: Bytes,
    },
}

/// Who waits for the answer to a request sent to another node.
enum Waiter {
    Direct(oneshot::Sender<DirectOutcome>),
    DmKey(oneshot::Sender<DmKeyAnswer>),
    /// The frames a file request was answered with.
    File(oneshot::Sender<Option<Bytes>>),
    FileTarget(oneshot::Sender<FileTarget>),
}

impl Waiter {
    /// Hands over the answer `payload`, or `None` for no answer in time.
    fn answer(self, payload: Option<Bytes>) {
        match self {
            Waiter::Direct(waiter) => {
                let outcome = match payload.as_deref() {
                    None => DirectOutcome::Unavailable,
                    Some(b"1") => DirectOutcome::Delivered,
                    Some(_) => DirectOutcome::Absent,
                };
                let _ = waiter.send(outcome);
            }
            Waiter::DmKey(waiter) => {
                let answer = payload.map_or(DmKeyAnswer::Unavailable, decode_dm_key_answer);
                let _ = waiter.send(answer);
            }
            // An empty answer is a node too busy to take the request.
            Waiter::File(waiter) => {
                let _ = waiter.send(payload.filter(|frames| !frames.is_empty()));
            }
            Waiter::FileTarget(waiter) => {
                let answer = payload.map_or(FileTarget::Unavailable, decode_file_target);
                let _ = waiter.send(answer);
            }
        }
    }
}

/// Requests sent to other nodes and not yet answered, by id.
type Waiting = Arc<Mutex<HashMap<u64, Waiter>>>;

/// Requests sent, by when they stop waiting, earliest first.
type Expiries = Arc<Mutex<VecDeque<(Instant, u64)>>>;

/// DM key requests from other nodes that this node owes an answer, by the
/// number the hub was given: where the answer goes.
#[derive(Default)]
struct Asks {
    next: u64,
    reply_to: HashMap<u64, Subject>,
}

/// Connections waiting for the queue to NATS to drain, and how they are
/// woken.
#[derive(Default)]
struct Backlog {
    /// How many wait: the publishing task looks at it after each relay
    /// and wakes them only when someone waits.
    waiting: AtomicUsize,
    drained: Notify,
}

/// This node's side of the relay: what it sends, and the tasks that send
/// and receive.
pub(crate) struct Relay {
    node: String,
    queue: mpsc::Sender<Outgoing>,
    backlog: Arc<Backlog>,
    numbers: Mutex<Numbers>,
    /// This node's run: what its relays are numbered in, and what the
    /// receiving task checks numberings against. Changed only with
    /// `numbers` held, so a numbering never mixes two runs.
    run: Arc<AtomicU64>,
    waiting: Waiting,
    /// When each request sent stops waiting for its answer, in the order
    /// sent: every request waits as long, so the earliest is in front.
    expiries: Expiries,
    asks: Arc<Mutex<Asks>>,
    timeout: Duration,
    pub(crate) sent: AtomicU64,
    pub(crate) dropped: AtomicU64,
    /// How often this node's connections waited for the queue to drain.
    pub(crate) backlogs: AtomicU64,
    pub(crate) received: Arc<AtomicU64>,
    pub(crate) gaps: Arc<AtomicU64>,
    /// Room messages sent again because another node asked.
    pub(crate) resent: Arc<AtomicU64>,
}

/// The numbering of this run's relays.
struct Numbers {
    /// What this run relayed to each node.
    last: HashMap<NodeId, Sent>,
    /// Each other node's run, as last seen renewing its lease.
    runs: HashMap<String, u64>,
    next_request: u64,
}

/// What a run relayed to one node.
struct Sent {
    subject: Subject,
    /// The node's run the numbers count for.
    to_run: u64,
    /// The last number relayed.
    seq: u64,
    /// The last number the node was told of in a tick.
    synced: u64,
}

/// The tasks a [`Relay`] needs run.
pub(crate) struct RelayTasks {
    pub(crate) publish: BoxFuture<'static, ()>,
    pub(crate) receive: BoxFuture<'static, ()>,
    pub(crate) replies: BoxFuture<'static, ()>,
    pub(crate) expire: BoxFuture<'static, ()>,
}

impl Relay {
    /// Subscribes this node's subjects; the returned tasks must be run.
    pub(crate) async fn start(
        client: Client,
        node_id: &str,
        run: u64,
        timeout: Duration,
        node: Arc<dyn Node>,
    ) -> Result<(Relay, RelayTasks), async_nats::SubscribeError> {
        let relays = client.subscribe(node_subject(node_id)).await?;
        let replies = client.subscribe(reply_subject(node_id, None)).await?;
        let (queue, outgoing) = mpsc::channel(QUEUE);
        let relay = Relay {
            node: node_id.to_owned(),
            queue,
            backlog: Arc::default(),
            numbers: Mutex::new(Numbers {
                last: HashMap::new(),
                runs: HashMap::new(),
                next_request: rand::random(),
            }),
            run: Arc::new(AtomicU64::new(run)),
            waiting: Arc::default(),
            expiries: Arc::default(),
            asks: Arc::default(),
            timeout,
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            backlogs: AtomicU64::new(0),
            received: Arc::default(),
            gaps: Arc::default(),
            resent: Arc::default(),
        };
        let tasks = RelayTasks {
            publish: Box::pin(publish(
                client.clone(),
                node_id.to_owned(),
                outgoing,
                Arc::clone(&relay.backlog),
                Arc::clone(&relay.resent),
            )),
            receive: Box::pin(receive(
                client,
                relays,
                Receiving {
                    node,
                    me: node_id.to_owned(),
                    queue: relay.queue.clone(),
                    gaps: Arc::clone(&relay.gaps),
                },
                Arc::clone(&relay.run),
                Arc::clone(&relay.asks),
                Arc::clone(&relay.received),
            )),
            replies: Box::pin(answers(replies, Arc::clone(&relay.waiting))),
            expire: Box::pin(expire(
                Arc::clone(&relay.waiting),
                Arc::clone(&relay.expiries),
                timeout,
            )),
        };
        Ok((relay, tasks))
    }

    fn numbers(&self) -> MutexGuard<'_, Numbers> {
        lock(&self.numbers)
    }

    /// This node starts a new run: its relays are numbered afresh.
    pub(crate) fn restarted(&self, run: u64) {
        let mut numbers = self.numbers();
        numbers.last.clear();
        self.run.store(run, Ordering::Relaxed);
    }

    /// `node` renewed its lease as run `run`: from its first renewal on,
    /// what is relayed to it is numbered from 1 for that run.
    pub(crate) fn node_renewed(&self, node: &str, run: u64) {
        let mut numbers = self.numbers();
        if numbers.runs.get(node) != Some(&run) {
            numbers.runs.insert(node.to_owned(), run);
        }
    }

    /// Relays a room message to `nodes`, one copy each.
    pub(crate) fn room(&self, nodes: &[NodeId], room: &[u8], frame: &[u8]) {
        self.numbered(nodes, ROOM, room, frame);
    }

    /// Relays a frame of a file transfer to the user `name` of `node`, the
    /// holder of `fingerprint`, in order with everything else relayed
    /// there: after the user's name, the fingerprint (32 bytes), then the
    /// frame.
    pub(crate) fn to_user(
        &self,
        node: &NodeId,
        name: &[u8],
        fingerprint: &Fingerprint,
        frame: &[u8],
    ) {
        let body = [&fingerprint[..], frame].concat();
        self.numbered(std::slice::from_ref(node), USER, name, &body);
    }

    /// Asks `node` whose key its user `target` holds; the answer comes on
    /// the receiver.
    pub(crate) fn file_target(&self, node: &str, target: &[u8]) -> oneshot::Receiver<FileTarget> {
        let (answer, outcome) = oneshot::channel();
        let payload = Envelope::direct(FILE_TARGET, target, &[]);
        self.request(node, payload, Waiter::FileTarget(answer));
        outcome
    }

    /// Sends the file request of the user `name` here to `node`, where its
    /// transfer runs: an acknowledgement in order with the relays there,
    /// and nothing comes back; with `answered`, a request whose answer
    /// comes on the receiver.
    pub(crate) fn file_request(
        &self,
        node: &NodeId,
        name: &[u8],
        frame: &[u8],
        answered: bool,
    ) -> Option<oneshot::Receiver<Option<Bytes>>> {
        if !answered {
            self.numbered(std::slice::from_ref(node), FILE_REQUEST, name, frame);
            return None;
        }
        let (answer, outcome) = oneshot::channel();
        let payload = Envelope::file_ask(&self.node, name, frame);
        self.request(node, payload, Waiter::File(answer));
        Some(outcome)
    }

    /// Relays frames for members of a room to their node, numbered with
    /// the room messages relayed to it so that they keep their order.
    pub(crate) fn members(&self, frames: &MemberFrames) {
        let body = member_frames(&frames.frames);
        self.numbered(
            std::slice::from_ref(&frames.node),
            MEMBERS,
            &frames.room,
            &body,
        );
    }

    /// Relays a numbered envelope of `kind` to `nodes`, one copy each.
    fn numbered(&self, nodes: &[NodeId], kind: u8, room: &[u8], body: &[u8]) {
        let mut numbers = self.numbers();
        let run = self.run.load(Ordering::Relaxed);
        let Numbers { last, runs, .. } = &mut *numbers;
        for node in nodes {
            let to_run = runs.get(&**node).copied().unwrap_or(UNSEEN_RUN);
            let sent = last.entry(node.clone()).or_insert_with(|| Sent {
                subject: node_subject(node),
                to_run,
                seq: 0,
                synced: 0,
            });
            if sent.to_run != to_run {
                (sent.to_run, sent.seq, sent.synced) = (to_run, 0, 0);
            }
            sent.seq += 1;
            let numbering = Numbering {
                from_run: run,
                to_run,
            };
            let payload = Envelope::room(kind, &self.node, (numbering, sent.seq), room, body);
            self.hand_over(Outgoing::Numbered {
                subject: sent.subject.clone(),
                numbering,
                seq: sent.seq,
                payload,
            });
        }
    }

    /// Tells each node relayed to since the last tick the last number it
    /// was sent.
    pub(crate) fn tick(&self) {
        let mut numbers = self.numbers();
        let run = self.run.load(Ordering::Relaxed);
        for sent in numbers.last.values_mut() {
            if sent.synced == sent.seq {
                continue;
            }
            sent.synced = sent.seq;
            let numbering = Numbering {
                from_run: run,
                to_run: sent.to_run,
            };
            let payload = Envelope::sync(&self.node, numbering, sent.seq);
            let subject = sent.subject.clone();
            // Not counted as a relay: it carries no message. If the queue
            // is full, the next tick tells the same.
            if self
                .queue
                .try_send(Outgoing::Publish { subject, payload })
                .is_err()
            {
                sent.synced = 0;
            }
        }
    }

    /// Sends a DM for `target` to `node`; the outcome comes on the receiver.
    pub(crate) fn direct(
        &self,
        node: &str,
        target: &[u8],
        frame: &[u8],
    ) -> oneshot::Receiver<DirectOutcome> {
        let (answer, outcome) = oneshot::channel();
        let payload = Envelope::direct(DIRECT, target, frame);
        self.request(node, payload, Waiter::Direct(answer));
        outcome
    }

    /// Sends a DM key request for `target` to `node`; the answer comes on
    /// the receiver.
    pub(crate) fn dm_key(
        &self,
        node: &str,
        target: &[u8],
        introduction: &[u8],
    ) -> oneshot::Receiver<DmKeyAnswer> {
        let (answer, outcome) = oneshot::channel();
        let payload = Envelope::direct(DM_KEY, target, introduction);
        self.request(node, payload, Waiter::DmKey(answer));
        outcome
    }

    /// Sends a request to `node`; `waiter` gets its answer, or is told
    /// there was none once the timeout has passed.
    fn request(&self, node: &str, payload: Bytes, waiter: Waiter) {
        let id = {
            let mut numbers = self.numbers();
            numbers.next_request = numbers.next_request.wrapping_add(1);
            numbers.next_request
        };
        lock(&self.waiting).insert(id, waiter);
        let request = Outgoing::Request {
            subject: node_subject(node),
            id,
            payload,
        };
        if !self.hand_over(request) {
            return answer_once(&self.waiting, id, None);
        }
        lock(&self.expiries).push_back((Instant::now() + self.timeout, id));
    }

    /// Answers the DM key request `ask` of another node.
    pub(crate) fn answer_dm_key(&self, ask: u64, answer: DmKeyAnswer) {
        self.answer(ask, encode_dm_key_answer(answer));
    }

    /// Answers the file request `ask` of another node with `frames`.
    pub(crate) fn answer_file_request(&self, ask: u64, frames: Bytes) {
        self.answer(ask, frames);
    }

    fn answer(&self, ask: u64, payload: Bytes) {
        let Some(subject) = lock(&self.asks).reply_to.remove(&ask) else {
            return warn!(
                ask,
                "an answer to a request of another node that nobody asked"
            );
        };
        self.hand_over(Outgoing::Publish { subject, payload });
    }

    /// `None` while at most [`BACKLOG`] relays wait for NATS; else what a
    /// connection awaits before it reads again: the queue having drained
    /// back to it.
    pub(crate) fn backlogged(&self) -> Option<BoxFuture<'static, ()>> {
        if queued(&self.queue) <= BACKLOG {
            return None;
        }
        self.backlogs.fetch_add(1, Ordering::Relaxed);
        let (queue, backlog) = (self.queue.clone(), Arc::clone(&self.backlog));
        Some(Box::pin(async move {
            backlog.waiting.fetch_add(1, Ordering::SeqCst);
            loop {
                let drained = backlog.drained.notified();
                tokio::pin!(drained);
                // Registered before the capacity is read again, so that a
                // wake-up between the two is not missed.
                drained.as_mut().enable();
                if queued(&queue) <= BACKLOG {
                    break;
                }
                drained.await;
            }
            backlog.waiting.fetch_sub(1, Ordering::SeqCst);
        }))
    }

    fn hand_over(&self, outgoing: Outgoing) -> bool {
        match self.queue.try_send(outgoing) {
            Ok(()) => {
                self.sent.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                warn!("relay queue full: a message for another node was dropped");
                false
            }
        }
    }
}

/// How many relays wait in `queue`.
fn queued(queue: &mpsc::Sender<Outgoing>) -> usize {
    queue.max_capacity() - queue.capacity()
}

fn answer_once(waiting: &Mutex<HashMap<u64, Waiter>>, id: u64, payload: Option<Bytes>) {
    if let Some(waiter) = lock(waiting).remove(&id) {
        waiter.answer(payload);
    }
}

/// Hands what is queued to the NATS client, in order, keeps the room
/// messages to be sent again, and wakes the connections waiting for the
/// queue to drain once it has.
async fn publish(
    client: Client,
    node: String,
    mut outgoing: mpsc::Receiver<Outgoing>,
    backlog: Arc<Backlog>,
    resent: Arc<AtomicU64>,
) {
    // By the subject of the node they were relayed to.
    let mut kept: HashMap<Box<str>, Kept> = HashMap::new();
    while let Some(next) = outgoing.recv().await {
        if backlog.waiting.load(Ordering::SeqCst) > 0 && outgoing.len() <= BACKLOG {
            backlog.drained.notify_waiters();
        }
        let sent = match next {
            Outgoing::Publish { subject, payload } => client.publish(subject, payload).await,
            Outgoing::Numbered {
                subject,
                numbering,
                seq,
                payload,
            } => {
                match kept.get_mut(subject.as_str()) {
                    Some(kept) => kept.keep(numbering, seq, payload.clone()),
                    None => {
                        let mut fresh = Kept::new(subject.clone(), numbering, seq);
                        fresh.keep(numbering, seq, payload.clone());
                        kept.insert(subject.as_str().into(), fresh);
                    }
                }
                client.publish(subject, payload).await
            }
            Outgoing::Resend {
                node,
                numbering,
                first,
                last,
            } => {
                let kept = std::str::from_utf8(&node)
                    .ok()
                    .and_then(|node| kept.get(node_subject(node).as_str()))
                    .filter(|kept| kept.numbering == numbering);
                let mut sent = Ok(());
                if let Some(kept) = kept {
                    for payload in kept.range(first, last) {
                        resent.fetch_add(1, Ordering::Relaxed);
                        sent = client.publish(kept.subject.clone(), payload.clone()).await;
                    }
                }
                sent
            }
            Outgoing::Request {
                subject,
                id,
                payload,
            } => {
                let reply = reply_subject(&node, Some(id));
                client.publish_with_reply(subject, reply, payload).await
            }
        };
        if let Err(err) = sent {
            warn!(%err, "cannot relay to another node");
        }
    }
}

/// The room messages last relayed to one node, to be sent again when it
/// asks: at most [`RETAIN`] of them and [`RETAIN_BYTES`] in all.
struct Kept {
    subject: Subject,
    numbering: Numbering,
    /// The number of the first one kept.
    first: u64,
    payloads: VecDeque<Bytes>,
    bytes: usize,
}

/// The most bytes of room messages kept for one node.
const RETAIN_BYTES: usize = 1024 * 1024;

impl Kept {
    fn new(subject: Subject, numbering: Numbering, first: u64) -> Kept {
        Kept {
            subject,
            numbering,
            first,
            payloads: VecDeque::new(),
            bytes: 0,
        }
    }

    /// Keeps number `seq` of `numbering`. A new numbering, or a number
    /// that does not follow the last (one dropped by a full queue, which
    /// nobody can have), starts the keeping afresh.
    fn keep(&mut self, numbering: Numbering, seq: u64, payload: Bytes) {
        let next = self.first + self.payloads.len() as u64;
        if numbering != self.numbering || seq != next {
            (self.numbering, self.first) = (numbering, seq);
            self.payloads.clear();
            self.bytes = 0;
        }
        self.bytes += payload.len();
        self.payloads.push_back(payload);
        while self.payloads.len() > RETAIN || self.bytes > RETAIN_BYTES {
            let dropped = self.payloads.pop_front().expect("more than none kept");
            self.bytes -= dropped.len();
            self.first += 1;
        }
    }

    /// Numbers `first` to `last`, as far as they are kept.
    fn range(&self, first: u64, last: u64) -> impl Iterator<Item = &Bytes> + '_ {
        let len = self.payloads.len() as u64;
        let from = first.saturating_sub(self.first).min(len);
        let to = last
            .saturating_add(1)
            .saturating_sub(self.first)
            .clamp(from, len);
        self.payloads.range(from as usize..to as usize)
    }
}

/// What the receiving task tells the server and asks of other nodes.
struct Receiving {
    node: Arc<dyn Node>,
    /// This node's id, which its RESENDs carry.
    me: String,
    queue: mpsc::Sender<Outgoing>,
    gaps: Arc<AtomicU64>,
}

impl Receiving {
    /// Carries out what [`Order`] decided about the relays from `from`,
    /// leaving `steps` empty.
    fn carry_out(&self, from: &Bytes, steps: &mut Steps) {
        if std::mem::take(&mut steps.lost) {
            lost(&*self.node, from, &self.gaps);
        }
        for relayed in steps.deliver.drain(..) {
            match relayed {
                Relayed::Room { room, frame } => self.node.relayed_room_message(&room, frame),
                Relayed::Members { room, frames } => match read_member_frames(frames) {
                    Some(frames) => self.node.relayed_to_members(&room, frames),
                    None => warn!("frames for members that cannot be read; dropped"),
                },
                Relayed::User { name, mut frame } if frame.len() >= FINGERPRINT => {
                    let mut fingerprint = Fingerprint::default();
                    frame.copy_to_slice(&mut fingerprint);
                    let from = String::from_utf8_lossy(from);
                    self.node.relayed_to_user(&from, &name, &fingerprint, frame)
                }
                Relayed::User { .. } => warn!("a file's frame for a user, cut short; dropped"),
                Relayed::FileRequest { name, frame } => {
                    let from = String::from_utf8_lossy(from);
                    self.node.relayed_file_request(None, &from, &name, frame)
                }
            }
        }
        if let Some((numbering, first, last)) = steps.ask.take() {
            let from = String::from_utf8_lossy(from);
            info!(node = %from, first, last, "asking a node again for room messages it relayed");
            let subject = node_subject(&from);
            let payload = Envelope::resend(&self.me, numbering, first, last);
            // Not a relay: nothing counted. If the queue is full, the gap
            // is asked for again a moment later.
            let _ = self.queue.try_send(Outgoing::Publish { subject, payload });
        }
    }
}

/// Hands what other nodes relay to the server, in each sender's order, and
/// answers their DMs and RESENDs.
async fn receive(
    client: Client,
    mut relays: Subscriber,
    receiving: Receiving,
    run: Arc<AtomicU64>,
    asks: Arc<Mutex<Asks>>,
    received: Arc<AtomicU64>,
) {
    let mut order = Order::default();
    let mut ticks = tokio::time::interval(ASK_AGAIN);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // The timer only while a gap is open: arming it for every message
        // would cost more than the message.
        let message = if order.gaps_open() {
            tokio::select! {
                message = relays.next() => message,
                _ = ticks.tick() => {
                    for (from, mut due) in order.poll(std::time::Instant::now()) {
                        receiving.carry_out(&from, &mut due);
                    }
                    continue;
                }
            }
        } else {
            relays.next().await
        };
        let Some(message) = message else {
            return;
        };
        let envelope = Envelope::decode(message.payload);
        // Ticks and RESENDs carry no message: only what was relayed is
        // counted.
        if !matches!(
            envelope,
            Some(Envelope::Sync { .. } | Envelope::Resend { .. }) | None
        ) {
            received.fetch_add(1, Ordering::Relaxed);
        }
        let (mine, now) = (run.load(Ordering::Relaxed), std::time::Instant::now());
        match envelope {
            Some(Envelope::Room {
                from,
                numbering,
                seq,
                relayed,
            }) => {
                let steps = order.room(&from, numbering, seq, relayed, mine, now);
                receiving.carry_out(&from, steps);
            }
            Some(Envelope::Sync {
                from,
                numbering,
                seq,
            }) => {
                let steps = order.sync(&from, numbering, seq, mine, now);
                receiving.carry_out(&from, steps);
            }
            Some(Envelope::Resend {
                from,
                numbering,
                first,
                last,
            }) => {
                let resend = Outgoing::Resend {
                    node: from,
                    numbering,
                    first,
                    last,
                };
                // If the queue is full, the asking node asks again.
                let _ = receiving.queue.try_send(resend);
            }
            Some(Envelope::Direct { target, frame }) => {
                let delivered = receiving.node.relayed_direct_message(&target, frame);
                if let Some(reply) = message.reply {
                    let answer = Bytes::from_static(if delivered { b"1" } else { b"0" });
                    if let Err(err) = client.publish(reply, answer).await {
                        warn!(%err, "cannot answer a relayed DM");
                    }
                }
            }
            Some(Envelope::DmKey {
                target,
                introduction,
            }) => {
                let Some(reply) = message.reply else {
                    warn!("a DM key request with nowhere to answer");
                    continue;
                };
                match owe(&asks, &reply) {
                    Some(ask) => receiving
                        .node
                        .relayed_dm_key_request(ask, &target, introduction),
                    None => {
                        let busy = encode_dm_key_answer(DmKeyAnswer::Busy);
                        if let Err(err) = client.publish(reply, busy).await {
                            warn!(%err, "cannot answer a DM key request");
                        }
                    }
                }
            }
            Some(Envelope::FileTarget { target }) => {
                let answer = encode_file_target(receiving.node.relayed_file_target(&target));
                if let Some(reply) = message.reply {
                    if let Err(err) = client.publish(reply, answer).await {
                        warn!(%err, "cannot answer whose key a file's target holds");
                    }
                }
            }
            Some(Envelope::FileAsk { from, user, frame }) => {
                let Some(reply) = message.reply else {
                    warn!("a file request with nowhere to answer");
                    continue;
                };
                match owe(&asks, &reply) {
                    Some(ask) => {
                        let from = String::from_utf8_lossy(&from);
                        let node = &receiving.node;
                        node.relayed_file_request(Some(ask), &from, &user, frame)
                    }
                    // Empty: too busy, which the asking node takes as no
                    // answer.
                    None => {
                        if let Err(err) = client.publish(reply, Bytes::new()).await {
                            warn!(%err, "cannot answer a file request");
                        }
                    }
                }
            }
            None => warn!(subject = %message.subject, "a relay that no node of parlor sent"),
        }
    }
}

/// Numbers a request of another node that this one owes an answer to,
/// kept until answered; `None` when [`ASKS`] are owed already.
fn owe(asks: &Mutex<Asks>, reply: &Subject) -> Option<u64> {
    let mut asks = lock(asks);
    if asks.reply_to.len() >= ASKS {
        return None;
    }
    asks.next = asks.next.wrapping_add(1);
    let ask = asks.next;
    asks.reply_to.insert(ask, reply.clone());
    Some(ask)
}

/// Relayed room messages from `from` were lost: counted, logged, and the
/// server told.
fn lost(node: &dyn Node, from: &[u8], gaps: &AtomicU64) {
    gaps.fetch_add(1, Ordering::Relaxed);
    let from = String::from_utf8_lossy(from);
    warn!(node = %from, "room messages relayed from a node were lost");
    node.relay_lost(&from);
}

/// Tells the requests that waited their time that no answer came, a
/// quarter of the timeout late at most.
async fn expire(waiting: Waiting, expiries: Expiries, timeout: Duration) {
    let mut ticks = tokio::time::interval(timeout / 4);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let now = ticks.tick().await;
        loop {
            let expired = {
                let mut expiries = lock(&expiries);
                match expiries.front() {
                    Some(&(deadline, id)) if deadline <= now => {
                        expiries.pop_front();
                        id
                    }
                    _ => break,
                }
            };
            // An answered request is no longer waiting: nothing happens.
            answer_once(&waiting, expired, None);
        }
    }
}

/// Passes the answers to this node's requests on.
async fn answers(mut replies: Subscriber, waiting: Waiting) {
    while let Some(message) = replies.next().await {
        let id = message
            .subject
            .rsplit('.')
            .next()
            .and_then(|id| id.parse::<u64>().ok());
        if let Some(id) = id {
            answer_once(&waiting, id, Some(message.payload));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_read_back_and_truncated_ones_are_refused() {
        let numbering = Numbering {
            from_run: 7,
            to_run: 9,
        };
        let room = Envelope::room(
            ROOM,
            "node-a",
            (numbering, 42),
            b"lobby",
            b"\x00\x00\x00\x01frame",
        );
        let direct = Envelope::direct(DIRECT, b"bob", b"dm");
        let dm_key = Envelope::direct(DM_KEY, b"bob", b"intro");
        assert_eq!(
            Envelope::decode(room.clone()),
            Some(Envelope::Room {
                from: Bytes::from_static(b"node-a"),
                numbering,
                seq: 42,
                relayed: Relayed::Room {
                    room: Bytes::from_static(b"lobby"),
                    frame: Bytes::from_static(b"\x00\x00\x00\x01frame"),
                },
            })
        );
        assert_eq!(
            Envelope::decode(direct.clone()),
            Some(Envelope::Direct {
                target: Bytes::from_static(b"bob"),
                frame: Bytes::from_static(b"dm"),
            })
        );
        assert_eq!(
            Envelope::decode(dm_key.clone()),
            Some(Envelope::DmKey {
                target: Bytes::from_static(b"bob"),
                introduction: Bytes::from_static(b"intro"),
            })
        );
        // Cut anywhere before its frame starts: refused, never a panic.
        for (whole, frame_len) in [(room, 9), (direct, 2), (dm_key, 5)] {
            for end in 0..whole.len() - frame_len {
                assert_eq!(Envelope::decode(whole.slice(..end)), None, "cut at {end}");
            }
        }
        assert_eq!(Envelope::decode(Bytes::from_static(b"\x09")), None);
        let sync = Envelope::sync("b", numbering, 10);
        assert_eq!(
            Envelope::decode(sync.clone()),
            Some(Envelope::Sync {
                from: Bytes::from_static(b"b"),
                numbering,
                seq: 10
            })
        );
        assert_eq!(Envelope::decode(sync.slice(..sync.len() - 1)), None);
        let resend = Envelope::resend("a", numbering, 3, 9);
        assert_eq!(
            Envelope::decode(resend.clone()),
            Some(Envelope::Resend {
                from: Bytes::from_static(b"a"),
                numbering,
                first: 3,
                last: 9
            })
        );
        assert_eq!(Envelope::decode(resend.slice(..resend.len() - 1)), None);
    }

    #[test]
    fn frames_for_members_read_back_and_cut_ones_are_refused() {
        let frames = vec![
            (
                [7; FINGERPRINT],
                Bytes::from_static(b"\x00\x00\x00\x02\x04\x17\x84k"),
            ),
            ([9; FINGERPRINT], Bytes::new()),
        ];
        let numbering = Numbering {
            from_run: 1,
            to_run: 2,
        };
        let body = member_frames(&frames);
        let wire = Envelope::room(MEMBERS, "a", (numbering, 3), b"vault", &body);
        let Some(Envelope::Room {
            relayed: Relayed::Members { room, frames: read },
            ..
        }) = Envelope::decode(wire)
        else {
            panic!("not read back as frames for members")
        };
        assert_eq!(&room[..], b"vault");
        assert_eq!(read_member_frames(read), Some(frames));
        let first = FINGERPRINT + 4 + 8;
        for end in 1..body.len() {
            let cut = read_member_frames(body.slice(..end));
            assert!(cut.is_none() || end == first, "cut at {end}: {cut:?}");
        }
    }

    #[tokio::test]
    async fn a_request_unanswered_in_time_is_told_so_and_an_answered_one_is_left_alone() {
        let (waiting, expiries): (Waiting, Expiries) = Default::default();
        let (unanswered, no_answer) = oneshot::channel();
        let (answered, answer) = oneshot::channel();
        lock(&waiting).insert(1, Waiter::Direct(unanswered));
        lock(&waiting).insert(2, Waiter::Direct(answered));
        let timeout = Duration::from_millis(40);
        let deadline = Instant::now() + timeout;
        lock(&expiries).extend([(deadline, 1), (deadline, 2)]);
        tokio::spawn(expire(Arc::clone(&waiting), Arc::clone(&expiries), timeout));
        answer_once(&waiting, 2, Some(Bytes::from_static(b"1")));
        assert_eq!(answer.await, Ok(DirectOutcome::Delivered));
        assert_eq!(no_answer.await, Ok(DirectOutcome::Unavailable));
        assert!(Instant::now() >= deadline, "not before its time");
        assert!(lock(&waiting).is_empty());
    }

    #[test]
    fn dm_key_answers_read_back() {
        let issued = Bytes::from_static(b"\x00\x00\x00\x01\x04\x17\x89x");
        for answer in [
            DmKeyAnswer::Issued(issued),
            DmKeyAnswer::Absent,
            DmKeyAnswer::HasNoKey,
            DmKeyAnswer::TooMany,
            DmKeyAnswer::Busy,
            DmKeyAnswer::Failed,
        ] {
            let wire = encode_dm_key_answer(answer.clone());
            assert_eq!(decode_dm_key_answer(wire), answer);
        }
        // Nothing readable is a failure, never a key.
        for junk in [&b""[..], b"\x01", b"\x09"] {
            let junk = Bytes::copy_from_slice(junk);
            assert_eq!(decode_dm_key_answer(junk), DmKeyAnswer::Failed);
        }
    }

    #[test]
    fn the_last_relays_are_kept_in_order_and_a_skip_starts_afresh() {
        let numbering = Numbering {
            from_run: 1,
            to_run: 2,
        };
        let payload = |seq: u64| Bytes::from(seq.to_string());
        let mut kept = Kept::new(node_subject("b"), numbering, 1);
        for seq in 1..=(RETAIN as u64 + 10) {
            kept.keep(numbering, seq, payload(seq));
        }
        assert_eq!(kept.first, 11, "only the last RETAIN");
        let range: Vec<_> = kept.range(5, 13).cloned().collect();
        assert_eq!(range, [payload(11), payload(12), payload(13)]);
        assert_eq!(kept.range(RETAIN as u64 + 10, u64::MAX).count(), 1);
        assert_eq!(kept.range(9, 3).count(), 0);
        kept.keep(numbering, RETAIN as u64 + 12, payload(0));
        assert_eq!(kept.range(0, u64::MAX).count(), 1, "11 was never kept");
    }
}
