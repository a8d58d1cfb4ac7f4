//! A driver for the hub without a server: a fake clock, stand-ins for the
//! password and key-wrap pools that answer on the spot, and test identities
//! that make valid v2 registrations cheaply. The hub's unit tests, the
//! session fuzz body and the server's tests share it.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ed25519_dalek::{Signer, SigningKey};

use super::{
    Action, CloseReason, ConnId, Hub, KeyWrapJob, KeyWrapOutcome, Limits, PasswordJob,
    PasswordOutcome, PasswordTask,
};
use parlor_proto::secure::{
    key_binding_statement, name_proof_statement, possession_statement, resume_statement,
    Fingerprint, Identity, Registration, CHANNEL_BINDING_LEN, SIGNATURE_LEN,
};
use parlor_proto::transfer::{FileRequest, TOKEN_LEN};
use parlor_proto::ClientMessage;

/// A hub, the time it is told, and synchronous stand-ins for the hashing and
/// key-wrapping pools.
pub struct Harness {
    /// The hub under test.
    pub hub: Hub,
    /// The fake clock: moved only by [`Harness::advance`] (or by hand).
    pub now: Instant,
    /// Room key rotations started and not finished yet, oldest first; see
    /// [`Harness::finish_rotations`].
    pub(super) rotations: Vec<KeyWrapJob>,
}

impl Harness {
    /// A hub with `limits`, its randomness seeded with a constant so that
    /// a test or a fuzz input always runs the same way.
    pub fn new(limits: Limits) -> Harness {
        Harness {
            hub: Hub::new(limits, [0x5e; 32]),
            now: Instant::now(),
            rotations: Vec::new(),
        }
    }

    /// Moves the clock forward and lets the hub's timers fire.
    pub fn advance(&mut self, by: Duration) -> Vec<Action> {
        self.now += by;
        let mut out = Vec::new();
        self.hub.handle_timeout(self.now, &mut out);
        self.settle(&mut out);
        out
    }

    /// Opens connection `conn`, from a loopback address derived from its id.
    pub fn connect(&mut self, conn: ConnId) -> Vec<Action> {
        let peer = SocketAddr::from((Ipv4Addr::LOCALHOST, conn.0 as u16));
        let mut out = Vec::new();
        self.hub.connect(conn, peer, self.now, &mut out);
        out
    }

    /// The client closed connection `conn`.
    pub fn disconnect(&mut self, conn: ConnId) -> Vec<Action> {
        let mut out = Vec::new();
        self.hub
            .disconnect(conn, CloseReason::ClientClosed, self.now, &mut out);
        self.settle(&mut out);
        out
    }

    /// Handles a message and runs every job its reply waits for, as the
    /// server does before reading the connection's next request.
    pub fn handle(&mut self, conn: ConnId, message: ClientMessage) -> Vec<Action> {
        let mut out = Vec::new();
        self.hub.handle(conn, message, self.now, &mut out);
        self.settle(&mut out);
        out
    }

    /// Runs one password job, as the pool would, and reports the outcome
    /// to the hub. What the hub does next (possibly another job) is
    /// appended to `out`.
    pub fn run_password_job(&mut self, job: PasswordJob, out: &mut Vec<Action>) {
        let outcome = fake_password_check(job.task);
        self.hub
            .password_checked(job.conn, job.ticket, outcome, self.now, out);
    }

    /// Runs the jobs in `out` that a reply waits for (password checks, DM
    /// keys) and moves room key rotations to [`Harness::finish_rotations`],
    /// so that `out` holds only frames and closes.
    pub fn settle(&mut self, out: &mut Vec<Action>) {
        let is_job = |action: &Action| matches!(action, Action::Password(_) | Action::WrapKeys(_));
        while let Some(index) = out.iter().position(is_job) {
            match out.remove(index) {
                Action::Password(job) => self.run_password_job(job, out),
                Action::WrapKeys(job) if job.requester.is_some() => {
                    self.hub
                        .keys_wrapped(job.ticket, fake_wrap(&job), self.now, out);
                }
                Action::WrapKeys(job) => self.rotations.push(job),
                _ => unreachable!("position found a job"),
            }
        }
    }

    /// Finishes the rotations started so far, in order; the ones they start
    /// in turn wait for the next call.
    pub fn finish_rotations(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        for job in std::mem::take(&mut self.rotations) {
            self.hub
                .keys_wrapped(job.ticket, fake_wrap(&job), self.now, &mut out);
        }
        self.settle(&mut out);
        out
    }
}

/// Stands in for the argon2 pool: the hub only stores and hands back the
/// string a hash makes, so any string that only the same password matches
/// will do. The real hashing is the server's, and is tested there.
pub fn fake_password_check(task: PasswordTask) -> PasswordOutcome {
    let stored = |password: &[u8]| {
        let hex: String = password.iter().map(|byte| format!("{byte:02x}")).collect();
        format!("$fake${hex}")
    };
    match task {
        PasswordTask::Hash { password } => PasswordOutcome::Hashed(stored(&password).into()),
        PasswordTask::Verify { password, phc } => {
            PasswordOutcome::Verified(*phc == *stored(&password))
        }
    }
}

/// Stands in for the key-wrapping pool: instead of a real RSA wrap, each
/// recipient gets bytes that say who it is and which job made them.
pub fn fake_wrap(job: &KeyWrapJob) -> KeyWrapOutcome {
    let wrapped = job
        .recipients
        .iter()
        .map(|recipient| {
            let text = format!("key of job {} for {}", job.ticket, recipient.conn);
            (recipient.conn, Bytes::from(text))
        })
        .collect();
    KeyWrapOutcome::Wrapped(wrapped)
}

/// The RSA public key of every [`TestIdentity`] unless it is given another:
/// the public half of the fixed 2048-bit key of parlor-crypto's
/// known-answer tests (`kat-rsa-2048.der` there), so a test that must
/// unwrap can. RSA key generation takes a second or more; a fixed key
/// takes nothing.
pub const TEST_RSA_DER: &[u8] = include_bytes!("testdata/rsa-2048-public.der");

/// An identity for tests: an Ed25519 key made from a seed (so it is
/// cheap, and the same in every run) and an RSA key, [`TEST_RSA_DER`]
/// unless said otherwise. It signs what a real client signs, with the
/// statements of `parlor_proto::secure`.
#[derive(Clone, Debug)]
pub struct TestIdentity {
    signing: SigningKey,
    rsa_der: Bytes,
}

impl TestIdentity {
    /// The identity of `seed`, with [`TEST_RSA_DER`].
    pub fn new(seed: u8) -> TestIdentity {
        TestIdentity::with_rsa(seed, Bytes::from_static(TEST_RSA_DER))
    }

    /// The identity of `seed` with another RSA key (DER
    /// SubjectPublicKeyInfo), which it binds as it would its own.
    pub fn with_rsa(seed: u8, rsa_der: Bytes) -> TestIdentity {
        TestIdentity {
            signing: SigningKey::from_bytes(&[seed; 32]),
            rsa_der,
        }
    }

    /// The Ed25519 public key.
    pub fn signing_key(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    /// Who this is.
    pub fn fingerprint(&self) -> Fingerprint {
        parlor_proto::secure::fingerprint(&self.signing_key())
    }

    /// This identity's signature over `statement`.
    pub fn sign(&self, statement: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.signing.sign(statement).to_bytes()
    }

    /// The identity block, announced under `name`.
    pub fn block(&self, name: &[u8]) -> Identity {
        Identity {
            signing_key: self.signing_key(),
            rsa_der: self.rsa_der.clone(),
            key_binding: self.sign(&key_binding_statement(&self.rsa_der)),
            name_proof: self.sign(&name_proof_statement(name)),
        }
    }

    /// REGISTER_KEY for a connection called `nick` whose channel binding is
    /// `binding` (`PLAIN_CHANNEL_BINDING` on a plain connection).
    pub fn register(&self, nick: &[u8], binding: &[u8; CHANNEL_BINDING_LEN]) -> ClientMessage {
        let block = self.block(nick);
        ClientMessage::RegisterKey(Registration {
            signing_key: block.signing_key,
            rsa_der: block.rsa_der,
            key_binding: block.key_binding,
            name_proof: block.name_proof,
            possession: self.sign(&possession_statement(binding, nick)),
        })
    }

    /// SIGNED_NICK to `name`.
    pub fn signed_nick(&self, name: &[u8]) -> ClientMessage {
        ClientMessage::SignedNick {
            name: Bytes::copy_from_slice(name),
            name_proof: self.sign(&name_proof_statement(name)),
        }
    }

    /// FILE_RESUME of transfer `id` with `token`, from a connection whose
    /// channel binding is `binding`.
    pub fn resume(
        &self,
        id: u32,
        token: [u8; TOKEN_LEN],
        binding: &[u8; CHANNEL_BINDING_LEN],
    ) -> ClientMessage {
        let proof = self.sign(&resume_statement(id, &token, binding));
        ClientMessage::File(FileRequest::Resume { id, token, proof })
    }
}
