//! `parlor bench secure-fanout`: `fanout` through the secure extension
//! (PROTOCOL.md §12). R secure rooms of M members, every member sending
//! sealed envelopes (§12.7) to its room, so that each is relayed to the
//! M − 1 others. The same rooms, names, pacing and report as `fanout`, so
//! that the two figures compare: what the server's relay costs when the
//! texts are envelopes instead of short plaintexts.
//!
//! # Setup
//!
//! 1. Every member's RSA key is made first, on every core the bench may
//!    use: at tens to hundreds of milliseconds a key, it is the slowest part
//!    of the run, and no connection should sit idle meanwhile.
//! 2. Each member connects, says HELLO, takes its nick, registers its key
//!    (`81`) and joins `room<r>`; the first member creates it, as a secure
//!    room. The `81` PEER_KEYs of the members already there come with the
//!    JOIN reply; those of later members, and the room keys (`84`), follow.
//! 3. Each member reads its keys until the room key stops changing. Every
//!    join rotates the key, and rotations run behind one another, so the
//!    final epoch is the one that *every* member of the room holds: a
//!    rotation's key goes only to the members of the moment it started, so
//!    a key that all M hold was made after the last join, and nothing
//!    rotates the key after it. The members of a room tell each other which
//!    epoch they hold through a `watch` channel.
//! 4. Each member seals its **pool**: `--pool` envelopes (or `--messages`,
//!    if fewer) under the final key, counters 1, 2, 3, …, each holding the
//!    plaintext stamp `L<sender>:<position>:0:` padded to
//!    `--message-bytes`. Sealing and signing (Ed25519) cost the bench some
//!    microseconds per envelope, more than the server spends relaying one,
//!    so it is all done here, on a blocking thread per core, and the timed
//!    phase only copies finished frames: what is measured is the server's
//!    relay, not the bench's cryptography.
//!
//! # Sequence numbers and latency
//!
//! Every byte of an envelope is covered by its MAC and its signature, so a
//! message signed in advance cannot carry its send time or its sequence
//! number, and nothing outside the envelope survives the relay. Sender *s*
//! therefore sends its pool in turn: message *n* is pool entry *n* mod P,
//! and its envelope counter is that position + 1.
//!
//! - **Which message.** A receiver compares each delivered text byte for
//!   byte with the pool entry its counter names, so every delivery is
//!   exactly an envelope its sender sealed. The position gives the
//!   sequence number within a cycle; which cycle follows from the order the
//!   server must keep ([`seq_from_position`]): a correct server delivers
//!   each sender's messages in order, so the position names the next
//!   expected number, and a gap of lost deliveries shorter than ¾ of a
//!   cycle, or a duplicated or late one up to ¼ of a cycle behind, is still
//!   told apart exactly. With `--messages` at most `--pool`, no envelope
//!   repeats and the position is the sequence number.
//! - **When it left.** The sender records the send time of each message
//!   in shared memory, at the moment it writes it out, exactly where `fanout`
//!   writes the time into the stamp; the receiver looks it up by sender
//!   and sequence number ([`SendTimes`]). Sender and receiver are one
//!   process on one clock, so the latency is the same interval `fanout`
//!   measures. A time is kept for the last [`SEND_TIMES_KEPT`] messages of
//!   each sender; a delivery older than that is not timed, and counted in
//!   `deliveries_untimed`.
//!
//! From the second cycle on, the envelopes repeat, and a real client would
//! discard them as replays (§12.7, counters). The server does not look
//! inside an envelope and relays a repeat exactly as it relays a fresh one,
//! so the measurement is the same.
//!
//! # Verification
//!
//! Besides the byte-for-byte comparison of every delivery, each envelope of
//! the first cycle is kept by one of its receivers (each receiver keeps
//! every (M − 1)-th, in turn) and, after the run, opened as the reference
//! client opens it ([`Keyring::open_room`]): with the receiver's own copy
//! of the room key, unwrapped from its own `84`, and the sender's key from
//! the `81` the server relayed: frame agreement, MAC, signature, counter,
//! decryption; and the plaintext must be the stamp that was sealed. So every
//! envelope a sender sealed is proven end to end once, and the timed phase
//! spends no CPU on cryptography: `bench_cpu_pct` is the cost of copying,
//! reading and comparing, and says whether the bench kept up.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use clap::Args;
use serde::Serialize;
use tokio::sync::{watch, Semaphore};

use super::body::{self, Stamp};
use super::fanout::FanoutArgs;
use super::joiner::{self, JoinReport, Joins};
use super::latency::{round1, round3};
use super::process;
use super::sequence::seq_from_position;
use super::session::{BenchConnection, Setup, KEEPALIVE};
use super::target::{seconds, TargetArgs};
use super::traffic::{self, Endpoint, Messages, RecognisedDelivery, TrafficReport};
use parlor_crypto::envelope::{max_plaintext, Envelope};
use parlor_crypto::identity::KEY_BITS;
use parlor_crypto::{Identity, Keyring, PeerIdentity};
use parlor_proto::secure;
use parlor_proto::{ClientMessage, SecureMessage, ServerMessage};

/// Fewer envelopes than this would make the cycle too short to tell a
/// repeat from a reordered or lost delivery.
const MIN_POOL: u64 = 8;
/// More would take long to sign and hold a lot of memory, for nothing: the
/// server relays a repeat exactly like a fresh envelope.
const MAX_POOL: u64 = 4096;
/// Every member makes a key and signs a pool before the run; beyond this,
/// setup takes hours.
const MAX_CONNECTIONS: u64 = 10_000;

/// `parlor bench secure-fanout`'s options: fanout's, and the keys and pool
/// the envelopes need; echoed, all of them, in the report's `params`.
#[derive(Args, Clone, Debug, Serialize)]
pub struct SecureFanoutArgs {
    /// The rooms, members and pacing, as for `fanout`, so that the two
    /// compare.
    #[command(flatten)]
    #[serde(flatten)]
    pub fanout: FanoutArgs,
    /// Size of every member's RSA key, in bits: 2048 to 4096.
    #[arg(long, value_name = "BITS", default_value_t = 2048)]
    pub rsa_bits: usize,
    /// Envelopes each member seals before the run and then sends in turn.
    #[arg(long, value_name = "P", default_value_t = 64)]
    pub pool: u64,
    /// While the members send, one more user joins room0 every S seconds,
    /// waits for its room key and leaves: what joins into a big secure room
    /// cost the members already there.
    #[arg(long, value_name = "S")]
    pub join_every: Option<f64>,
}

impl SecureFanoutArgs {
    /// Refuses options the run cannot honour, with the option's name and
    /// what it takes, before anything connects.
    pub fn validate(&self) -> Result<(), String> {
        self.fanout.validate()?;
        let FanoutArgs {
            target,
            rooms,
            members,
            load,
            metrics,
        } = &self.fanout;
        if !metrics.is_empty() {
            // Key deliveries and joins are relayed too: what a message owes
            // would need counting them.
            return Err("--metrics: for fanout only, not secure-fanout".into());
        }
        if !KEY_BITS.contains(&self.rsa_bits) {
            return Err(format!(
                "--rsa-bits: from {} to {}, the sizes the server accepts",
                KEY_BITS.start(),
                KEY_BITS.end()
            ));
        }
        if !(MIN_POOL..=MAX_POOL).contains(&self.pool) {
            return Err(format!(
                "--pool: from {MIN_POOL} (a shorter cycle hides reordering) to {MAX_POOL}"
            ));
        }
        if let Some(every) = self.join_every {
            seconds("--join-every", every)?;
        }
        let connections = u64::from(*rooms) * u64::from(*members);
        if connections > MAX_CONNECTIONS {
            return Err(format!(
                "--rooms × --members: at most {MAX_CONNECTIONS} (each member makes an RSA key and signs --pool envelopes before the run)"
            ));
        }
        let longest_room = room_name(rooms - 1).len();
        let longest_nick = target.nick(connections as usize - 1).len();
        let max = max_plaintext(longest_room, longest_nick);
        if load.message_bytes > max {
            return Err(format!(
                "--message-bytes: at most {max} here, or the envelope does not fit a message"
            ));
        }
        Ok(())
    }

    fn target(&self) -> &TargetArgs {
        &self.fanout.target
    }
}

/// The room of fanout's room index `room`.
fn room_name(room: u32) -> String {
    format!("room{room}")
}

/// The result of a run: fanout's report, and what the envelopes cost and
/// proved.
#[derive(Debug, Serialize)]
pub struct SecureFanoutReport {
    /// Fanout's report, under fanout's keys, so that the two compare.
    #[serde(flatten)]
    pub traffic: TrafficReport,
    /// Wall time to make every member's RSA key, before connecting.
    pub keygen_s: f64,
    /// Envelopes sealed before the run, over all members.
    pub envelopes_sealed: u64,
    /// CPU time spent sealing them (unwrapping the room key included).
    pub seal_cpu_s: f64,
    /// Size of one envelope: the text of every message on the wire.
    pub envelope_bytes: usize,
    /// Delivered envelopes opened after the run, as a real client opens
    /// them, that passed every check.
    pub envelopes_verified: u64,
    /// Delivered envelopes that failed any check.
    pub envelopes_rejected: u64,
    /// Deliveries whose send time was no longer kept: not in `latency_ms`.
    pub deliveries_untimed: u64,
    /// With `--join-every`: the joins made during the run.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub joins: Option<JoinReport>,
}

impl SecureFanoutReport {
    /// Fanout's lines for a person, and one for the envelopes.
    pub fn summary(&self) -> String {
        let mut text = self.traffic.summary();
        text += &format!(
            "  envelopes   {} sealed before the run ({} bytes each, {:.1} s of CPU; keys made in {:.1} s), \
             {} opened after it: {} verified, {} rejected\n",
            self.envelopes_sealed,
            self.envelope_bytes,
            self.seal_cpu_s,
            self.keygen_s,
            self.envelopes_verified + self.envelopes_rejected,
            self.envelopes_verified,
            self.envelopes_rejected,
        );
        if let Some(joins) = &self.joins {
            text += &joins.summary();
        }
        if self.deliveries_untimed > 0 {
            text += &format!(
                "  untimed     {} deliveries arrived after their send time was dropped: not in the latency\n",
                self.deliveries_untimed
            );
        }
        text
    }
}

/// Makes the keys, runs the traffic, then opens the kept envelopes.
pub(crate) async fn run(args: &SecureFanoutArgs) -> anyhow::Result<SecureFanoutReport> {
    let mut plan = args.fanout.plan();
    plan.workload = "secure-fanout";
    plan.params = serde_json::to_value(args).expect("options serialize");
    let connections = plan.endpoints.len();

    let keygen_started = Instant::now();
    let bits = args.rsa_bits;
    let joiners = usize::from(args.join_every.is_some());
    let made = tokio::task::spawn_blocking(move || make_identities(connections + joiners, bits))
        .await
        .context("key generation")??;
    let keygen_s = keygen_started.elapsed().as_secs_f64();
    let mut identities: Vec<_> = made.into_iter().map(Arc::new).collect();

    let load = &args.fanout.load;
    let (ready, ready_rx) = watch::channel(0);
    let joins = args.join_every.map(|every| {
        let joins = Joins {
            every: Duration::from_secs_f64(every),
            lasting: Duration::from_secs_f64(load.warmup + load.duration),
            first_index: connections,
            identity: identities.pop().expect("one identity more for the joins"),
        };
        joiner::start(joins, args.target().clone(), ready_rx, connections)
    });
    let joins = joins.transpose().context("cannot start the joins")?;
    let sealed = Sealed {
        identities,
        joining: joins.is_some(),
        ready,
        checked: CheckedPeers::default(),
        rooms: (0..args.fanout.rooms)
            .map(|_| watch::Sender::new(vec![0; args.fanout.members as usize]))
            .collect(),
        members: args.fanout.members,
        pool_len: args.pool.min(load.messages),
        messages: load.messages,
        message_bytes: load.message_bytes,
        nick_prefix: args.target().nick_prefix.clone(),
        settle_timeout: args.target().setup_timeout(),
        sealing: Semaphore::new(cores()),
        pools: (0..connections).map(|_| OnceLock::new()).collect(),
        send_times: (0..connections).map(|_| SendTimes::new()).collect(),
    };
    let (mut traffic, members) = traffic::run(args.target(), load, plan, sealed).await?;
    let joins = match joins {
        Some(thread) => match tokio::task::spawn_blocking(move || thread.join())
            .await
            .context("the joins")?
            .map_err(|_| anyhow!("the joins' thread panicked"))?
        {
            Ok(report) => Some(report),
            Err(err) => {
                traffic.failures.push(format!("joins: {err:#}"));
                None
            }
        },
        None => None,
    };

    let envelopes_sealed = members.iter().map(|m| m.sealed).sum();
    let seal_cpu_s = members.iter().map(|m| m.seal_cpu.as_secs_f64()).sum();
    let envelope_bytes = members.first().map_or(0, |m| m.envelope_bytes);
    let deliveries_untimed = members.iter().map(|m| m.untimed).sum();
    let target = args.target().clone();
    let message_bytes = load.message_bytes;
    let (verified, rejected) =
        tokio::task::spawn_blocking(move || open_kept(members, &target, message_bytes))
            .await
            .context("verification")?;

    let mut report = SecureFanoutReport {
        traffic,
        keygen_s: round3(keygen_s),
        envelopes_sealed,
        seal_cpu_s: round1(seal_cpu_s),
        envelope_bytes,
        envelopes_verified: verified,
        envelopes_rejected: rejected,
        deliveries_untimed,
        joins,
    };
    if rejected > 0 {
        report
            .traffic
            .failures
            .push(format!("envelopes that failed verification: {rejected}"));
    }
    Ok(report)
}

/// The cores the bench may run on (its CPU affinity, as `taskset` sets it).
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

/// Makes `count` RSA keys of `bits` bits, one thread per core. Which member
/// gets which key does not matter, so the threads just take turns.
fn make_identities(count: usize, bits: usize) -> anyhow::Result<Vec<Identity>> {
    let made = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..cores().min(count))
            .map(|_| {
                scope.spawn(|| {
                    let mut identities = Vec::new();
                    while made.fetch_add(1, Relaxed) < count {
                        identities.push(Identity::generate(bits)?);
                    }
                    anyhow::Ok(identities)
                })
            })
            .collect();
        let mut identities = Vec::with_capacity(count);
        for worker in workers {
            identities.extend(worker.join().expect("key generation does not panic")?);
        }
        Ok(identities)
    })
}

/// Opens every envelope the members kept, with each member's own keyring,
/// in the order they arrived (so that counters go up, as §12.7 requires).
/// Returns how many passed and how many failed.
fn open_kept(members: Vec<Member>, target: &TargetArgs, message_bytes: usize) -> (u64, u64) {
    let (mut verified, mut rejected) = (0, 0);
    let now = Instant::now();
    for mut member in members {
        for kept in member.kept {
            let sender = target.nick(kept.sender as usize);
            let sealed = stamp_text(kept.sender, kept.position, message_bytes);
            let opened = member.keyring.open_room(
                member.room.as_bytes(),
                sender.as_bytes(),
                &kept.text,
                now,
            );
            match opened {
                Ok(opened) if *opened.plaintext == sealed => verified += 1,
                _ => rejected += 1,
            }
        }
    }
    (verified, rejected)
}

/// The plaintext sealed at `position` of `sender`'s pool: the bench stamp,
/// naming sender and position. It has no send time (0): it was written
/// before the run.
fn stamp_text(sender: u32, position: u64, message_bytes: usize) -> Vec<u8> {
    let mut text = Vec::with_capacity(message_bytes);
    let stamp = Stamp {
        sender,
        seq: position,
        sent_ns: 0,
    };
    body::write(&mut text, stamp, message_bytes);
    text
}

/// The sealed messages of a run: every member's key, the room keys as they
/// settle, the pools, and the send times.
struct Sealed {
    /// By plan index.
    identities: Vec<Arc<Identity>>,
    /// Whether `--join-every` joins come during the run, whose identities
    /// the members are then sent.
    joining: bool,
    /// How many members have sealed their pools: the joins wait for all.
    ready: watch::Sender<usize>,
    /// The peers' identity blocks, each checked once for all members.
    checked: CheckedPeers,
    /// Per room, the epoch each member holds (0: none yet).
    rooms: Vec<watch::Sender<Vec<u32>>>,
    /// Members per room (M).
    members: u32,
    /// Envelopes in each pool: `--pool`, or `--messages` if fewer.
    pool_len: u64,
    /// Messages per sender at most.
    messages: u64,
    message_bytes: usize,
    nick_prefix: String,
    /// How long a room's keys may go without any change before the run is
    /// given up.
    settle_timeout: Duration,
    /// One sealing job per core at a time.
    sealing: Semaphore,
    /// By plan index; each set once, before the start.
    pools: Vec<OnceLock<Pool>>,
    /// By plan index.
    send_times: Vec<SendTimes>,
}

/// What one member keeps: its keys, where it stands with each sender, and
/// the envelopes it opens after the run.
struct Member {
    index: u32,
    room: String,
    keyring: Keyring,
    /// Plan index of its room's first member.
    first: u32,
    /// Per member of the room: the sequence number expected next from it
    /// (one more than the highest seen).
    next: Vec<u64>,
    /// Envelopes to open after the run, in the order they arrived.
    kept: Vec<Kept>,
    /// Envelopes in its pool.
    sealed: u64,
    /// CPU time its sealing job took.
    seal_cpu: Duration,
    /// Size of each of its envelopes.
    envelope_bytes: usize,
    /// Deliveries whose send time was no longer kept.
    untimed: u64,
}

struct Kept {
    sender: u32,
    position: u64,
    text: Vec<u8>,
}

/// The envelopes one member sends in turn, as whole ROOM_MSG frames.
struct Pool {
    entries: Vec<PoolEntry>,
}

struct PoolEntry {
    frame: Vec<u8>,
    /// Where the envelope (the text field) starts in the frame.
    text_start: usize,
}

impl PoolEntry {
    fn new(room: &str, envelope: Vec<u8>) -> PoolEntry {
        let text_len = envelope.len();
        let message = ClientMessage::RoomMessage {
            room: Bytes::copy_from_slice(room.as_bytes()),
            text: Bytes::from(envelope),
        };
        let frame = message.to_frame().to_bytes().to_vec();
        PoolEntry {
            text_start: frame.len() - text_len,
            frame,
        }
    }

    fn text(&self) -> &[u8] {
        &self.frame[self.text_start..]
    }
}

impl Messages for Sealed {
    type Conn = Member;

    async fn open(
        &self,
        index: u32,
        endpoint: &Endpoint,
        setup: &Setup,
    ) -> anyhow::Result<(BenchConnection, Member)> {
        let room = endpoint
            .room
            .clone()
            .expect("every fanout member joins a room");
        let identity = Arc::clone(&self.identities[index as usize]);
        let (mut session, mut keyring) = setup
            .within_limits(async {
                let mut session = setup.connect(index as usize).await?;
                let keyring = join_securely(
                    &mut session,
                    &endpoint.nick,
                    &room,
                    &identity,
                    &self.checked,
                )
                .await?;
                Ok((session, keyring))
            })
            .await?;
        let (incarnation, epoch, wrapped) = self
            .final_room_key(&mut session, &mut keyring, index, &room)
            .await?;
        let job = SealJob {
            index,
            identity,
            keyring,
            nick: endpoint.nick.clone(),
            room: room.clone(),
            incarnation,
            epoch,
            wrapped,
            pool_len: self.pool_len,
            message_bytes: self.message_bytes,
        };
        let sealing = async {
            let _turn = self.sealing.acquire().await?;
            tokio::task::spawn_blocking(move || job.seal())
                .await
                .context("sealing")?
        };
        let (keyring, pool, seal_cpu) = session.keep_alive_while(sealing).await?;
        let envelope_bytes = pool.entries.first().map_or(0, |entry| entry.text().len());
        let sealed = pool.entries.len() as u64;
        if self.pools[index as usize].set(pool).is_err() {
            bail!("connection {index} was set up twice");
        }
        self.ready.send_modify(|sealed| *sealed += 1);
        let first = index - index % self.members;
        let member = Member {
            index,
            room,
            keyring,
            first,
            next: vec![0; self.members as usize],
            kept: Vec::new(),
            sealed,
            seal_cpu,
            envelope_bytes,
            untimed: 0,
        };
        Ok((session, member))
    }

    fn write(&self, _: &mut Member, stamp: Stamp, out: &mut Vec<u8>) {
        let sender = stamp.sender as usize;
        let pool = self.pools[sender]
            .get()
            .expect("every pool is sealed before the start");
        let position = stamp.seq % self.pool_len;
        out.extend_from_slice(&pool.entries[position as usize].frame);
        self.send_times[sender].record(stamp.seq, stamp.sent_ns);
    }

    fn read(&self, member: &mut Member, sender: &[u8], text: &[u8]) -> Option<RecognisedDelivery> {
        let from = self.index_of(sender)?;
        let offset = from.checked_sub(member.first)?;
        if offset >= self.members || from == member.index {
            return None;
        }
        // Counters start at 1: counter c is pool position c − 1.
        let position = Envelope::parse(text).ok()?.header.counter.checked_sub(1)?;
        let pool = self.pools[from as usize].get()?;
        if pool.entries.get(usize::try_from(position).ok()?)?.text() != text {
            return None;
        }
        let next = &mut member.next[offset as usize];
        let seq = if self.messages <= self.pool_len {
            position
        } else {
            seq_from_position(position, self.pool_len, *next)
        };
        let first_arrival = seq >= *next;
        *next = (*next).max(seq + 1);
        let receiver = member.index - member.first;
        if first_arrival && seq < self.pool_len && opens(self.members, receiver, offset, position) {
            member.kept.push(Kept {
                sender: from,
                position,
                text: text.to_vec(),
            });
        }
        let sent_ns = self.send_times[from as usize].get(seq);
        if sent_ns.is_none() {
            member.untimed += 1;
        }
        Some(RecognisedDelivery {
            sender: from,
            seq,
            sent_ns,
        })
    }

    /// New room keys and the rekeying notices before them: a member that
    /// leaves a secure room rotates its key (§12.2), so when the run ends
    /// and members close, the others get both. (Before that, a member leaves only when its connection fails,
    /// which the run counts as a disconnect.)
    ///
    /// With `--join-every`, every join also brings the joiner's identity.
    fn expects(&self, notice: &SecureMessage) -> bool {
        match notice {
            SecureMessage::RoomKey { .. } | SecureMessage::RoomRekeying { .. } => true,
            SecureMessage::PeerKey { .. } => self.joining,
            _ => false,
        }
    }
}

impl Sealed {
    /// The plan index in a member's nick (the prefix, then the index).
    fn index_of(&self, nick: &[u8]) -> Option<u32> {
        let digits = nick.strip_prefix(self.nick_prefix.as_bytes())?;
        std::str::from_utf8(digits).ok()?.parse().ok()
    }

    /// Reads a member's keys until the key of `room` stops changing: until
    /// every member of the room holds the same epoch (see the module
    /// documentation). Returns the room's incarnation, that epoch and its
    /// key, still wrapped.
    /// Gives up when nothing in the room changes for the setup timeout.
    async fn final_room_key(
        &self,
        session: &mut BenchConnection,
        keyring: &mut Keyring,
        index: u32,
        room: &str,
    ) -> anyhow::Result<(u64, u32, Bytes)> {
        let epochs = &self.rooms[(index / self.members) as usize];
        let me = (index % self.members) as usize;
        let mut changes = epochs.subscribe();
        let mut newest: Option<(u64, u32, Bytes)> = None;
        let mut heartbeat =
            tokio::time::interval_at((Instant::now() + KEEPALIVE).into(), KEEPALIVE);
        let stalled = tokio::time::sleep(self.settle_timeout);
        tokio::pin!(stalled);
        loop {
            if let Some(epoch) = settled(&changes.borrow_and_update()) {
                return newest
                    .filter(|(_, held, _)| *held == epoch)
                    .ok_or_else(|| anyhow!("settled on epoch {epoch} of {room} without its key"));
            }
            tokio::select! {
                frame = session.read_frame() => {
                    let frame = frame?.ok_or_else(|| {
                        anyhow!("server closed the connection while the key of {room} was settling")
                    })?;
                    match ServerMessage::parse(&frame) {
                        Ok(ServerMessage::Secure(SecureMessage::PeerKey { name, identity, .. })) => {
                            add_peer(keyring, &self.checked, &name, &identity)?;
                        }
                        Ok(ServerMessage::Secure(SecureMessage::RoomKey { room: of, incarnation, epoch, wrapped }))
                            if of == room.as_bytes() =>
                        {
                            if newest.as_ref().is_none_or(|(_, held, _)| epoch > *held) {
                                newest = Some((incarnation, epoch, wrapped));
                                epochs.send_modify(|held| held[me] = epoch);
                            }
                        }
                        _ => bail!(
                            "unexpected frame 0x{:02x} while waiting for the key of {room}",
                            frame.opcode
                        ),
                    }
                }
                changed = changes.changed() => {
                    changed.expect("the room's sender outlives its members");
                    stalled.as_mut().reset((Instant::now() + self.settle_timeout).into());
                }
                _ = heartbeat.tick() => session.heartbeat().await?,
                () = &mut stalled => bail!(
                    "the key of {room} did not settle: nothing changed for {:?} (epochs held: {:?})",
                    self.settle_timeout,
                    *changes.borrow()
                ),
            }
        }
    }
}

/// Whether the member at `receiver` in a room of `members` is the one that
/// opens the envelope at `position` of the member at `sender`. The M − 1
/// receivers take turns, starting after the sender, so each envelope is
/// opened by exactly one of them.
fn opens(members: u32, receiver: u32, sender: u32, position: u64) -> bool {
    let turn = (receiver + members - sender - 1) % members;
    position % u64::from(members - 1) == u64::from(turn)
}

/// The epoch every member of a room holds, if they all hold the same one.
fn settled(held: &[u32]) -> Option<u32> {
    let (&first, rest) = held.split_first()?;
    (first != 0 && rest.iter().all(|&epoch| epoch == first)).then_some(first)
}

/// HELLO and NICK as the legacy client does, then REGISTER_KEY (the server
/// takes it at any time, §12.5) and JOIN, which for a secure connection
/// confirms the room and brings the keys of the members already in it.
/// Returns the keyring that holds those keys.
pub(crate) async fn join_securely(
    session: &mut BenchConnection,
    nick: &str,
    room: &str,
    identity: &Identity,
    checked: &CheckedPeers,
) -> anyhow::Result<Keyring> {
    session.register(nick).await?;
    // Over TLS the proof signs this session's exporter value; over plain
    // TCP, to a server that allows the extension there
    // (allow_secure_on_plain), the plain binding.
    let registration = identity.registration(&session.channel_binding()?, nick.as_bytes());
    let register = ClientMessage::RegisterKey(registration);
    session.expect_ok(&register, "REGISTER_KEY").await?;
    let join = ClientMessage::Join {
        room: Bytes::copy_from_slice(room.as_bytes()),
        password: Bytes::new(),
    };
    let reply = session.request(&join, "JOIN").await?;
    let mut reply = reply.iter().map(ServerMessage::parse);
    let mut keyring = Keyring::default();
    match reply.next() {
        Some(Ok(ServerMessage::Secure(
            SecureMessage::RoomCreated {
                secure,
                incarnation,
                ..
            }
            | SecureMessage::RoomJoined {
                secure,
                incarnation,
                ..
            },
        ))) => {
            if !secure {
                bail!("{room} is a plaintext room (a legacy client created it); secure-fanout needs secure rooms");
            }
            keyring.enter_room(room.as_bytes(), incarnation);
        }
        _ => bail!(
            "the JOIN reply does not confirm {room}: is this a server of the secure extension?"
        ),
    }
    for message in reply {
        match message {
            Ok(ServerMessage::Secure(SecureMessage::PeerKey { name, identity, .. })) => {
                add_peer(&mut keyring, checked, &name, &identity)?;
            }
            _ => bail!("unexpected frame in the JOIN reply to {room}"),
        }
    }
    Ok(keyring)
}

/// Identity blocks already checked, shared by the members of a run.
///
/// Every member is sent the same block for each peer. Checking it (two
/// Ed25519 signatures and the RSA key) once, rather than once per member,
/// keeps setup linear in the members instead of quadratic: a room of 1,000
/// brings 999,000 blocks, 100 s of checks on the bench's one thread, during
/// which the connections still to be set up would miss the server's
/// handshake timeout.
#[derive(Default)]
pub(crate) struct CheckedPeers(Mutex<HashMap<Vec<u8>, (secure::Identity, PeerIdentity)>>);

impl CheckedPeers {
    /// The peer `identity` names under `name`, checked unless this very
    /// block was checked under that name before.
    fn check(&self, name: &[u8], identity: &secure::Identity) -> anyhow::Result<PeerIdentity> {
        let checked = |peers: &HashMap<_, (secure::Identity, PeerIdentity)>| {
            peers
                .get(name)
                .filter(|(block, _)| block == identity)
                .map(|(_, peer)| peer.clone())
        };
        if let Some(peer) = checked(&self.0.lock().expect("never poisoned")) {
            return Ok(peer);
        }
        let peer = PeerIdentity::from_block(identity, name).map_err(|problem| {
            anyhow!(
                "the identity of {} does not check out: {problem}",
                String::from_utf8_lossy(name)
            )
        })?;
        self.0
            .lock()
            .expect("never poisoned")
            .insert(name.to_vec(), (identity.clone(), peer.clone()));
        Ok(peer)
    }
}

fn add_peer(
    keyring: &mut Keyring,
    checked: &CheckedPeers,
    name: &[u8],
    identity: &secure::Identity,
) -> anyhow::Result<()> {
    keyring.add_peer(name, None, checked.check(name, identity)?, None);
    Ok(())
}

/// What one member needs to seal its pool, off the event loop.
struct SealJob {
    index: u32,
    identity: Arc<Identity>,
    keyring: Keyring,
    nick: String,
    room: String,
    incarnation: u64,
    epoch: u32,
    wrapped: Bytes,
    pool_len: u64,
    message_bytes: usize,
}

impl SealJob {
    /// Unwraps the room key and seals the pool under it. Returns the
    /// keyring (which now holds the key, to open envelopes with after the
    /// run), the pool, and the CPU time it took.
    fn seal(mut self) -> anyhow::Result<(Keyring, Pool, Duration)> {
        let started = process::thread_cpu_time();
        let room = self.room.as_bytes();
        let (incarnation, epoch) = (self.incarnation, self.epoch);
        self.keyring
            .add_room_key(
                &self.identity,
                room,
                incarnation,
                epoch,
                &self.wrapped,
                Instant::now(),
            )
            .map_err(|refused| anyhow!("the key of {}, epoch {epoch}: {refused}", self.room))?;
        let entries = (0..self.pool_len)
            .map(|position| {
                let plaintext = stamp_text(self.index, position, self.message_bytes);
                let envelope = self.keyring.seal_room(
                    room,
                    self.nick.as_bytes(),
                    &self.identity,
                    &plaintext,
                )?;
                Ok(PoolEntry::new(&self.room, envelope))
            })
            .collect::<anyhow::Result<_>>()?;
        let cpu = process::thread_cpu_time().saturating_sub(started);
        Ok((self.keyring, Pool { entries }, cpu))
    }
}

/// How many of each sender's most recent send times are kept.
const SEND_TIMES_KEPT: u64 = 1024;

/// When each of one sender's last [`SEND_TIMES_KEPT`] messages left.
///
/// Slot `seq % KEPT` holds the send time of `seq` in its low 48 bits (78
/// hours of nanoseconds, more than any run) and `seq / KEPT`, the lap, in
/// its high 16, so that one atomic word says both when and for which
/// message: a slot that a later message has taken answers `None` instead of
/// the wrong time.
struct SendTimes {
    slots: Box<[AtomicU64]>,
}

const NS_BITS: u32 = 48;
const NS_MASK: u64 = (1 << NS_BITS) - 1;
/// A slot that holds no time: never a packed value, since no time is
/// recorded at or above `NS_MASK`.
const EMPTY: u64 = u64::MAX;

impl SendTimes {
    fn new() -> SendTimes {
        SendTimes {
            slots: (0..SEND_TIMES_KEPT)
                .map(|_| AtomicU64::new(EMPTY))
                .collect(),
        }
    }

    fn record(&self, seq: u64, sent_ns: u64) {
        let packed = if sent_ns < NS_MASK {
            (seq / SEND_TIMES_KEPT) << NS_BITS | sent_ns
        } else {
            EMPTY
        };
        self.slots[(seq % SEND_TIMES_KEPT) as usize].store(packed, Relaxed);
    }

    fn get(&self, seq: u64) -> Option<u64> {
        let packed = self.slots[(seq % SEND_TIMES_KEPT) as usize].load(Relaxed);
        let lap = (seq / SEND_TIMES_KEPT) & (u64::MAX >> NS_BITS);
        (packed != EMPTY && packed >> NS_BITS == lap).then_some(packed & NS_MASK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_times_answer_for_their_own_message_only() {
        let times = SendTimes::new();
        assert_eq!(times.get(0), None, "nothing sent yet");
        times.record(5, 1_000);
        assert_eq!(times.get(5), Some(1_000));
        times.record(5 + SEND_TIMES_KEPT, 2_000);
        assert_eq!(times.get(5), None, "its slot was taken");
        assert_eq!(times.get(5 + SEND_TIMES_KEPT), Some(2_000));
        times.record(6, 1 << NS_BITS);
        assert_eq!(times.get(6), None, "too late to pack is not kept");
    }

    #[test]
    fn a_room_settles_when_every_member_holds_the_same_epoch() {
        assert_eq!(settled(&[3, 3, 3]), Some(3));
        assert_eq!(settled(&[3, 4, 4]), None);
        assert_eq!(settled(&[0, 0]), None);
        assert_eq!(settled(&[2, 2, 0]), None);
    }

    #[test]
    fn every_envelope_is_opened_by_exactly_one_receiver() {
        let members = 4;
        for sender in 0..members {
            for position in 0..64 {
                let openers = (0..members)
                    .filter(|&receiver| receiver != sender)
                    .filter(|&receiver| opens(members, receiver, sender, position))
                    .count();
                assert_eq!(openers, 1, "sender {sender}, position {position}");
            }
        }
    }
}
