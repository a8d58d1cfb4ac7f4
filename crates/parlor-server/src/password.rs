//! Room passwords: argon2id hashing on a small, fixed pool of threads.
//!
//! Argon2id is deliberately expensive (by default 19 MiB of memory and ~13 ms
//! of CPU per hash), so it must neither run on the event loop nor run
//! unboundedly in parallel. [`PasswordPool`] keeps a fixed number of threads,
//! each owning **one preallocated memory block that it reuses for every
//! hash**: allocating 19 MiB per hash makes glibc keep hundreds of MiB per
//! thread, and a join flood would grow the server into GiBs. With the pool,
//! memory stays at about `threads × 19 MiB` however many joins arrive.
//!
//! Jobs wait in a bounded queue; when it is full, [`PasswordPool::submit`]
//! refuses at once and the client is told to try later. Only the joining
//! client waits for its answer; nobody else's traffic does.

use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread;

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use rand::Rng;
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;
use tracing::error;
use zeroize::Zeroizing;

use parlor_core::{PasswordOutcome, PasswordTask};

/// Salt length in bytes (the PHC recommendation).
const SALT_LEN: usize = 16;
/// Hash output length in bytes (argon2's default).
const OUTPUT_LEN: usize = 32;

/// A job on its way to a hashing thread, with where its answer goes.
struct HashRequest {
    task: PasswordTask,
    reply: oneshot::Sender<PasswordOutcome>,
}

/// Returned by [`PasswordPool::submit`] when `password_queue` jobs are
/// already waiting: the joining client is told to try later. The refused
/// task comes back with it.
#[derive(Debug)]
pub struct QueueFull(pub PasswordTask);

/// A fixed set of hashing threads behind a bounded queue.
pub struct PasswordPool {
    queue: SyncSender<HashRequest>,
}

impl PasswordPool {
    /// Starts `threads` hashing threads, each allocating its memory block
    /// now. At most `queue` further jobs wait.
    pub fn start(params: Params, threads: usize, queue: usize) -> std::io::Result<PasswordPool> {
        let (sender, receiver) = mpsc::sync_channel(queue);
        let receiver = Arc::new(Mutex::new(receiver));
        for index in 0..threads {
            let hasher = Hasher::new(params.clone());
            let receiver = Arc::clone(&receiver);
            thread::Builder::new()
                .name(format!("parlor-argon2-{index}"))
                .spawn(move || hasher.serve(&receiver))?;
        }
        Ok(PasswordPool { queue: sender })
    }

    /// Queues a job; the answer arrives on the returned channel.
    pub fn submit(
        &self,
        task: PasswordTask,
    ) -> Result<oneshot::Receiver<PasswordOutcome>, QueueFull> {
        let (reply, answer) = oneshot::channel();
        match self.queue.try_send(HashRequest { task, reply }) {
            Ok(()) => Ok(answer),
            Err(TrySendError::Full(request) | TrySendError::Disconnected(request)) => {
                Err(QueueFull(request.task))
            }
        }
    }
}

/// One thread's argon2 context and its reusable memory.
pub struct Hasher {
    argon2: Argon2<'static>,
    params_string: ParamsString,
    memory: Vec<Block>,
}

impl Hasher {
    /// A context for `params`, with its memory block allocated now, once:
    /// every later hash and check reuses it.
    pub fn new(params: Params) -> Hasher {
        let params_string = ParamsString::try_from(&params).expect("valid params always encode");
        let memory = vec![Block::default(); params.block_count()];
        Hasher {
            argon2: Argon2::new(Algorithm::Argon2id, Version::V0x13, params),
            params_string,
            memory,
        }
    }

    fn serve(mut self, queue: &Mutex<Receiver<HashRequest>>) {
        loop {
            // Holding the lock while waiting is fine: an idle thread has
            // nothing else to do, and the lock is released before hashing.
            let request = match queue.lock().map(|receiver| receiver.recv()) {
                Ok(Ok(request)) => request,
                _ => return,
            };
            let outcome = self.run(request.task);
            // The connection may have gone away meanwhile; nothing to do then.
            let _ = request.reply.send(outcome);
        }
    }

    /// Runs one job to completion on this thread.
    pub fn run(&mut self, task: PasswordTask) -> PasswordOutcome {
        let result = match task {
            PasswordTask::Hash { password } => self.hash(&password).map(PasswordOutcome::Hashed),
            PasswordTask::Verify { password, phc } => {
                self.verify(&password, &phc).map(PasswordOutcome::Verified)
            }
        };
        result.unwrap_or_else(|err| {
            error!(%err, "password hashing failed");
            PasswordOutcome::Failed
        })
    }

    /// Hashes `password` with a fresh random salt into a PHC string.
    pub fn hash(&mut self, password: &[u8]) -> Result<Arc<str>, HashError> {
        let mut salt = [0u8; SALT_LEN];
        rand::rng().fill_bytes(&mut salt);
        let mut output = Zeroizing::new([0u8; OUTPUT_LEN]);
        self.argon2.hash_password_into_with_memory(
            password,
            &salt,
            &mut output[..],
            &mut self.memory[..],
        )?;
        let phc = PasswordHash {
            algorithm: Algorithm::Argon2id.ident(),
            version: Some(Version::V0x13.into()),
            params: self.params_string.clone(),
            salt: Some(Salt::new(&salt)?),
            hash: Some(Output::new(&output[..])?),
        };
        Ok(phc.to_string().into())
    }

    /// Whether `password` matches the PHC string, compared in constant time.
    /// The string's own parameters are used, so hashes made under an earlier
    /// configuration still verify as long as they fit this thread's memory.
    pub fn verify(&mut self, password: &[u8], phc: &str) -> Result<bool, HashError> {
        let parsed = PasswordHash::new(phc)?;
        let params = Params::try_from(&parsed)?;
        if params.block_count() > self.memory.len() {
            return Err(HashError::TooMuchMemory);
        }
        let algorithm = Algorithm::try_from(parsed.algorithm.as_str())?;
        let version = parsed
            .version
            .map_or(Ok(Version::default()), Version::try_from)?;
        let expected = parsed.hash.ok_or(HashError::NoHash)?;
        let salt = parsed.salt.ok_or(HashError::NoHash)?;
        let mut output = Zeroizing::new(vec![0u8; expected.len()]);
        Argon2::new(algorithm, version, params).hash_password_into_with_memory(
            password,
            &salt,
            &mut output[..],
            &mut self.memory[..],
        )?;
        Ok(output.ct_eq(expected.as_bytes()).into())
    }
}

/// Why a hash or a check could not be done. The joining client is told only
/// that an internal error happened; the log gets this.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// argon2 refused its inputs (a salt or output of the wrong length, or
    /// unsupported parameters or version in a stored string).
    #[error("argon2: {0}")]
    Argon2(#[from] argon2::Error),
    /// A PHC string could not be parsed or built.
    #[error("PHC string: {0}")]
    Phc(#[from] argon2::password_hash::phc::Error),
    /// A stored PHC string names another algorithm or has parameters
    /// argon2 does not take.
    #[error("PHC string parameters: {0}")]
    PhcParams(#[from] argon2::password_hash::Error),
    /// A stored string's memory cost exceeds this thread's block, which is
    /// sized by the current settings; hashing it would need a new
    /// allocation, which is what the pool exists to avoid.
    #[error("stored hash needs more memory than the hashing threads have")]
    TooMuchMemory,
    /// A stored PHC string without a hash or a salt, so nothing to compare.
    #[error("stored PHC string has no hash or salt")]
    NoHash,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> Params {
        Params::new(64, 1, 1, None).unwrap()
    }

    #[test]
    fn hashes_verify_and_are_salted_phc_strings() {
        let mut hasher = Hasher::new(cheap());
        let first = hasher.hash(b"secret").unwrap();
        let second = hasher.hash(b"secret").unwrap();
        assert!(first.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{first}");
        assert_ne!(first, second, "each hash has its own salt");
        assert!(hasher.verify(b"secret", &first).unwrap());
        assert!(!hasher.verify(b"secreT", &first).unwrap());
        assert!(!hasher.verify(b"", &second).unwrap());
    }

    #[test]
    fn verifies_strings_made_by_the_argon2_crate_itself() {
        use argon2::password_hash::PasswordHasher;
        let reference = Argon2::new(Algorithm::Argon2id, Version::V0x13, cheap())
            .hash_password_with_salt(b"pw1", b"0123456789abcdef")
            .unwrap()
            .to_string();
        let mut hasher = Hasher::new(cheap());
        assert!(hasher.verify(b"pw1", &reference).unwrap());
        assert!(!hasher.verify(b"pw2", &reference).unwrap());
    }

    #[test]
    fn verifies_strings_made_by_argon2_0_5() {
        // What argon2 0.5.3 (parlor's hasher before 0.6) made of "pw1" under
        // m=64,t=1,p=1 with the salt "0123456789abcdef": the string format,
        // the salt's encoding and the hash itself must not have changed.
        let made_by_0_5 =
            "$argon2id$v=19$m=64,t=1,p=1$MDEyMzQ1Njc4OWFiY2RlZg$S/mv/aDQLtPReBOihmpb+/1wy1xlzTyjbYD2DcdxMdw";
        let mut hasher = Hasher::new(cheap());
        assert!(hasher.verify(b"pw1", made_by_0_5).unwrap());
        assert!(!hasher.verify(b"pw2", made_by_0_5).unwrap());
    }

    #[test]
    fn default_parameters_are_argon2id_19_mib() {
        let mut hasher = Hasher::new(Params::default());
        let phc = hasher.hash(b"pw").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(hasher.verify(b"pw", &phc).unwrap());
    }

    #[test]
    fn a_full_queue_refuses_at_once_and_queued_jobs_complete() {
        // One thread and room for one waiting job: of three jobs submitted
        // within microseconds, a 13 ms hash cannot have finished, so the
        // third at the latest is refused.
        let pool = PasswordPool::start(Params::default(), 1, 1).unwrap();
        let task = || PasswordTask::Hash {
            password: Zeroizing::new(b"pw".to_vec()),
        };
        let results: Vec<_> = (0..3).map(|_| pool.submit(task())).collect();
        assert!(results.iter().any(Result::is_err), "one job refused");
        for answer in results.into_iter().flatten() {
            let outcome = answer.blocking_recv().unwrap();
            assert!(matches!(outcome, PasswordOutcome::Hashed(_)), "{outcome:?}");
        }
    }
}
