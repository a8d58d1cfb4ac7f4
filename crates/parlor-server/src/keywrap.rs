//! Room and DM keys: generated, wrapped for each recipient and forgotten, on
//! a small, fixed pool of threads.
//!
//! Wrapping a key with RSA-OAEP-SHA256 costs 60–150 µs per recipient, so a
//! rotation for a 1,000-member room is 60–150 ms of CPU: on the event loop it
//! would stall every other connection for that long. [`KeyWrapPool`] runs
//! [`KeyWrapJob`]s on `key_wrap_threads` threads instead, and members'
//! messages keep flowing meanwhile.
//!
//! Each job makes one fresh 32-byte key in a zeroizing buffer, wraps it for
//! every recipient and drops it: the key exists nowhere else, and only while
//! the job runs. The server holds no private key and never decrypts.
//!
//! Two kinds of job share the threads, and are queued differently:
//! - A DM key request has a client waiting for its reply. At most
//!   `key_wrap_queue` of them wait; past that the client is told to try
//!   later, as with password checks.
//! - A room key rotation is never refused: refusing it would leave a member
//!   who left holding the key of the room. It needs no bound of its own,
//!   because the hub keeps at most one rotation per room in flight.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;

use bytes::Bytes;
use rand::Rng;
use rsa::Oaep;
use sha2::Sha256;
use tokio::sync::{mpsc as async_mpsc, oneshot};
use tracing::error;
use zeroize::Zeroizing;

use parlor_core::{KeyWrapJob, KeyWrapOutcome};

/// Length of every room and DM key, in bytes (AES-256 and HMAC-SHA256 keys
/// are derived from it, PROTOCOL.md §12.7).
pub const KEY_LEN: usize = 32;

/// A finished rotation, for [`Hub::keys_wrapped`](parlor_core::Hub::keys_wrapped).
#[derive(Debug)]
pub struct Rotated {
    /// The rotation's ticket, from its [`KeyWrapJob`], by which the hub
    /// knows which room and epoch the keys are for.
    pub ticket: u64,
    /// The wrapped keys, one per recipient, or the failure.
    pub outcome: KeyWrapOutcome,
}

/// Where a job's outcome goes.
enum Reply {
    /// To the connection waiting for its DM key.
    Requester(oneshot::Sender<KeyWrapOutcome>),
    /// To the server's one task that hands rotations back to the hub.
    Rotation(async_mpsc::UnboundedSender<Rotated>),
}

/// A job on its way to a key-wrapping thread, with where its outcome goes.
struct WrapRequest {
    job: KeyWrapJob,
    reply: Reply,
}

/// Returned by [`KeyWrapPool::submit`] when `key_wrap_queue` DM key
/// requests are already waiting: the client is told to try later. The
/// refused job comes back with it.
#[derive(Debug)]
pub struct QueueFull(pub KeyWrapJob);

/// A fixed set of key-wrapping threads.
pub struct KeyWrapPool {
    queue: Sender<WrapRequest>,
    /// DM key requests queued and not yet taken by a thread.
    waiting_requests: Arc<AtomicUsize>,
    request_limit: usize,
    rotated: async_mpsc::UnboundedSender<Rotated>,
}

impl KeyWrapPool {
    /// Starts `threads` threads. At most `queue` DM key requests wait for
    /// one. Finished rotations arrive on the returned receiver.
    pub fn start(
        threads: usize,
        queue: usize,
    ) -> std::io::Result<(KeyWrapPool, async_mpsc::UnboundedReceiver<Rotated>)> {
        let (sender, receiver) = mpsc::channel();
        let receiver = Arc::new(Mutex::new(receiver));
        let waiting_requests = Arc::new(AtomicUsize::new(0));
        for index in 0..threads {
            let receiver = Arc::clone(&receiver);
            let waiting_requests = Arc::clone(&waiting_requests);
            thread::Builder::new()
                .name(format!("parlor-keywrap-{index}"))
                .spawn(move || serve(&receiver, &waiting_requests))?;
        }
        let (rotated, rotations) = async_mpsc::unbounded_channel();
        let pool = KeyWrapPool {
            queue: sender,
            waiting_requests,
            request_limit: queue,
            rotated,
        };
        Ok((pool, rotations))
    }

    /// Queues a DM key request's job; the outcome arrives on the returned
    /// channel.
    pub fn submit(&self, job: KeyWrapJob) -> Result<oneshot::Receiver<KeyWrapOutcome>, QueueFull> {
        if self.waiting_requests.fetch_add(1, Ordering::AcqRel) >= self.request_limit {
            self.waiting_requests.fetch_sub(1, Ordering::AcqRel);
            return Err(QueueFull(job));
        }
        let (reply, answer) = oneshot::channel();
        let request = WrapRequest {
            job,
            reply: Reply::Requester(reply),
        };
        if self.queue.send(request).is_err() {
            // No thread is left to run it; the dropped reply reads as a failure.
            self.waiting_requests.fetch_sub(1, Ordering::AcqRel);
        }
        Ok(answer)
    }

    /// Queues a rotation; its outcome arrives on the receiver that
    /// [`KeyWrapPool::start`] returned.
    pub fn rotate(&self, job: KeyWrapJob) {
        let ticket = job.ticket;
        let request = WrapRequest {
            job,
            reply: Reply::Rotation(self.rotated.clone()),
        };
        if self.queue.send(request).is_err() {
            let failed = Rotated {
                ticket,
                outcome: KeyWrapOutcome::Failed,
            };
            let _ = self.rotated.send(failed);
        }
    }
}

fn serve(queue: &Mutex<Receiver<WrapRequest>>, waiting_requests: &AtomicUsize) {
    loop {
        // Holding the lock while waiting is fine: an idle thread has nothing
        // else to do, and the lock is released before wrapping.
        let WrapRequest { job, reply } = match queue.lock().map(|receiver| receiver.recv()) {
            Ok(Ok(request)) => request,
            _ => return,
        };
        if matches!(reply, Reply::Requester(_)) {
            waiting_requests.fetch_sub(1, Ordering::AcqRel);
        }
        let outcome = wrap_keys(&job);
        // The receiver may be gone (connection closed, server stopping);
        // nothing to do then.
        match reply {
            Reply::Requester(reply) => {
                let _ = reply.send(outcome);
            }
            Reply::Rotation(rotated) => {
                let _ = rotated.send(Rotated {
                    ticket: job.ticket,
                    outcome,
                });
            }
        }
    }
}

/// Runs one job on this thread: a fresh key, wrapped with RSA-OAEP-SHA256
/// and the job's label for every recipient, then zeroized.
pub fn wrap_keys(job: &KeyWrapJob) -> KeyWrapOutcome {
    let mut rng = rand::rng();
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    rng.fill_bytes(&mut key[..]);
    let wrapped = job
        .recipients
        .iter()
        .filter_map(|recipient| {
            let padding = Oaep::<Sha256>::new_with_label(recipient.label.clone());
            match recipient.key.encrypt(&mut rng, padding, &key[..]) {
                Ok(wrapped) => Some((recipient.conn, Bytes::from(wrapped))),
                Err(err) => {
                    error!(conn = %recipient.conn, %err, "wrapping a key failed");
                    None
                }
            }
        })
        .collect();
    KeyWrapOutcome::Wrapped(wrapped)
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use rsa::traits::PublicKeyParts;

    use super::*;
    use parlor_core::{ConnId, KeyRecipient, KeyUse};

    /// Two 2048-bit keys, made once for all the tests here.
    fn private_keys() -> &'static [rsa::PrivateKey; 2] {
        static KEYS: OnceLock<[rsa::PrivateKey; 2]> = OnceLock::new();
        KEYS.get_or_init(|| {
            let mut rng = rand::rng();
            [(); 2].map(|()| rsa::PrivateKey::new(&mut rng, 2048).unwrap())
        })
    }

    fn job(key_use: KeyUse, ticket: u64) -> KeyWrapJob {
        let recipients = private_keys()
            .iter()
            .enumerate()
            .map(|(index, key)| KeyRecipient {
                conn: ConnId(index as u64 + 1),
                key: Arc::new(key.to_public_key()),
            })
            .collect();
        KeyWrapJob {
            ticket,
            key_use,
            recipients,
            requester: None,
        }
    }

    fn unwrap(key_use: KeyUse, index: usize, wrapped: &[u8]) -> rsa::Result<Vec<u8>> {
        let padding = Oaep::<Sha256>::new_with_label(key_use.oaep_label());
        private_keys()[index].decrypt(padding, wrapped)
    }

    #[test]
    fn every_recipient_unwraps_the_same_fresh_key_under_the_right_label() {
        let KeyWrapOutcome::Wrapped(first) = wrap_keys(&job(KeyUse::Room, 1)) else {
            panic!("wrapping failed")
        };
        assert_eq!(first.len(), 2);
        let size = private_keys()[0].size();
        assert!(first.iter().all(|(_, wrapped)| wrapped.len() == size));
        let key = unwrap(KeyUse::Room, 0, &first[0].1).unwrap();
        assert_eq!(key.len(), KEY_LEN);
        assert_eq!(unwrap(KeyUse::Room, 1, &first[1].1).unwrap(), key);
        assert!(
            unwrap(KeyUse::Dm, 0, &first[0].1).is_err(),
            "a room key does not pass as a DM key"
        );
        let KeyWrapOutcome::Wrapped(second) = wrap_keys(&job(KeyUse::Room, 2)) else {
            panic!("wrapping failed")
        };
        assert_ne!(unwrap(KeyUse::Room, 0, &second[0].1).unwrap(), key);
    }

    #[test]
    fn the_pool_answers_requests_and_rotations_and_refuses_requests_past_the_queue() {
        let (pool, mut rotations) = KeyWrapPool::start(1, 1).unwrap();
        pool.rotate(job(KeyUse::Room, 7));
        // One thread and room for one waiting request: of three requests
        // submitted within microseconds, at least one finds the queue full.
        let answers: Vec<_> = (0..3).map(|_| pool.submit(job(KeyUse::Dm, 8))).collect();
        assert!(answers.iter().any(Result::is_err), "one request refused");
        for answer in answers.into_iter().flatten() {
            let outcome = answer.blocking_recv().unwrap();
            assert!(matches!(outcome, KeyWrapOutcome::Wrapped(ref w) if w.len() == 2));
        }
        let rotated = rotations.blocking_recv().unwrap();
        assert_eq!(rotated.ticket, 7);
        let KeyWrapOutcome::Wrapped(wrapped) = rotated.outcome else {
            panic!("rotation failed")
        };
        assert_eq!(
            unwrap(KeyUse::Room, 1, &wrapped[1].1).unwrap().len(),
            KEY_LEN
        );
        assert!(
            pool.submit(job(KeyUse::Dm, 9)).is_ok(),
            "the queue empties again"
        );
    }
}
