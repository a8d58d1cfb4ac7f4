//! Room and DM keys: generated, wrapped for each recipient and forgotten, on
//! a small, fixed pool of threads.
//!
//! Wrapping a key with RSA-OAEP-SHA256 costs 60–150 µs per recipient, so a
//! rotation for a 1,000-member room is 60–150 ms of CPU: on the event loop it
//! would stall every other connection for that long. [`KeyWrapPool`] runs
//! [`KeyWrapJob`]s on `key_wrap_threads` threads instead, and members'
//! messages keep flowing meanwhile. Those threads run at the lowest normal
//! priority (nice 19), so that where the server is confined to one core
//! the event loop preempts a rotation in progress instead of taking turns
//! with it; under full load they still get a share of the core (a weight
//! of 15 against the loop's 1,024), so rotations finish.
//!
//! Each job makes one fresh 32-byte key in a zeroizing buffer, wraps it for
//! every recipient under the OAEP label the hub gave that recipient (which
//! names the room, incarnation and epoch, or the DM key id, and the
//! recipient: `parlor_proto::secure::room_key_label` and `dm_key_label`),
//! and drops it: the key exists nowhere else, and only while the job runs.
//! The server holds no private key and never decrypts.
//!
//! Two kinds of job share the threads, and are queued differently:
//! - A DM key request has a client waiting for its reply. At most
//!   `key_wrap_queue` of them wait; past that the client is told to try
//!   later, as with password checks.
//! - A room key rotation is never refused: the hub would have to retry it,
//!   and meanwhile the room's members hold their sends. It needs no bound
//!   of its own, because the hub keeps at most one rotation per room in
//!   flight.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;

use bytes::Bytes;
use rand::Rng;
use rsa::Oaep;
use sha2::Sha256;
use tokio::sync::{mpsc as async_mpsc, oneshot};
use tracing::{error, warn};
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
                .spawn(move || {
                    yield_to_the_event_loop();
                    serve(&receiver, &waiting_requests)
                })?;
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

/// Lowers the calling thread to nice 19 (see the module documentation). A
/// server that may not do so keeps wrapping at normal priority, and says
/// so once per thread.
fn yield_to_the_event_loop() {
    // SAFETY: gettid has no preconditions; setpriority with PRIO_PROCESS
    // and a thread id changes that thread alone on Linux.
    let lowered = unsafe {
        let thread = libc::gettid() as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, thread, 19)
    };
    if lowered != 0 {
        warn!(
            error = %std::io::Error::last_os_error(),
            "key-wrap thread keeps normal priority"
        );
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
/// and each recipient's own label, then zeroized. A recipient whose wrap
/// fails is left out (and logged); the hub then treats a rotation as failed.
pub fn wrap_keys(job: &KeyWrapJob) -> KeyWrapOutcome {
    let mut rng = rand::rng();
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    rng.fill_bytes(&mut key[..]);
    let wrapped = job
        .recipients
        .iter()
        .filter_map(|recipient| {
            let padding = Oaep::<Sha256>::new_with_label(recipient.label.as_slice());
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
    use parlor_core::{ConnId, KeyRecipient};
    use parlor_proto::secure::{dm_key_label, room_key_label};

    /// Two 2048-bit keys, made once for all the tests here.
    fn private_keys() -> &'static [rsa::PrivateKey; 2] {
        static KEYS: OnceLock<[rsa::PrivateKey; 2]> = OnceLock::new();
        KEYS.get_or_init(|| {
            let mut rng = rand::rng();
            [(); 2].map(|()| rsa::PrivateKey::new(&mut rng, 2048).unwrap())
        })
    }

    /// The fingerprint standing for recipient `index`.
    fn fingerprint(index: usize) -> [u8; 32] {
        [index as u8 + 1; 32]
    }

    /// The label of recipient `index`'s wrap of room "r", incarnation 9,
    /// `epoch`.
    fn room_label(index: usize, epoch: u32) -> Vec<u8> {
        room_key_label(b"r", 9, epoch, &fingerprint(index))
    }

    /// A job for both keys, each recipient labelled by `label`.
    fn job(ticket: u64, label: impl Fn(usize) -> Vec<u8>) -> KeyWrapJob {
        let recipients = private_keys()
            .iter()
            .enumerate()
            .map(|(index, key)| KeyRecipient {
                conn: ConnId(index as u64 + 1),
                key: Arc::new(key.to_public_key()),
                label: label(index),
            })
            .collect();
        KeyWrapJob {
            ticket,
            recipients,
            requester: None,
        }
    }

    fn unwrap(index: usize, label: Vec<u8>, wrapped: &[u8]) -> rsa::Result<Vec<u8>> {
        let padding = Oaep::<Sha256>::new_with_label(label);
        private_keys()[index].decrypt(padding, wrapped)
    }

    #[test]
    fn every_recipient_unwraps_the_same_fresh_key_under_its_own_label_only() {
        let KeyWrapOutcome::Wrapped(first) = wrap_keys(&job(1, |index| room_label(index, 3)))
        else {
            panic!("wrapping failed")
        };
        assert_eq!(first.len(), 2);
        let size = private_keys()[0].size();
        assert!(first.iter().all(|(_, wrapped)| wrapped.len() == size));
        let key = unwrap(0, room_label(0, 3), &first[0].1).unwrap();
        assert_eq!(key.len(), KEY_LEN);
        assert_eq!(unwrap(1, room_label(1, 3), &first[1].1).unwrap(), key);
        let elsewhere = [
            room_label(0, 4),
            room_key_label(b"s", 9, 3, &fingerprint(0)),
            room_key_label(b"r", 8, 3, &fingerprint(0)),
            room_label(1, 3),
            dm_key_label(3, &fingerprint(0), &fingerprint(1)),
        ];
        for label in elsewhere {
            assert!(
                unwrap(0, label.clone(), &first[0].1).is_err(),
                "the wrap opens under no other room, incarnation, epoch, recipient or use: {label:?}"
            );
        }
        let KeyWrapOutcome::Wrapped(second) = wrap_keys(&job(2, |index| room_label(index, 4)))
        else {
            panic!("wrapping failed")
        };
        assert_ne!(unwrap(0, room_label(0, 4), &second[0].1).unwrap(), key);
    }

    #[test]
    fn the_pool_answers_requests_and_rotations_and_refuses_requests_past_the_queue() {
        let dm_label = |index: usize| dm_key_label(8, &fingerprint(index), &fingerprint(1 - index));
        let (pool, mut rotations) = KeyWrapPool::start(1, 1).unwrap();
        pool.rotate(job(7, |index| room_label(index, 1)));
        // One thread and room for one waiting request: of three requests
        // submitted within microseconds, at least one finds the queue full.
        let answers: Vec<_> = (0..3).map(|_| pool.submit(job(8, dm_label))).collect();
        assert!(answers.iter().any(Result::is_err), "one request refused");
        for answer in answers.into_iter().flatten() {
            let outcome = answer.blocking_recv().unwrap();
            let KeyWrapOutcome::Wrapped(wrapped) = outcome else {
                panic!("{outcome:?}")
            };
            assert_eq!(
                unwrap(1, dm_label(1), &wrapped[1].1).unwrap().len(),
                KEY_LEN
            );
        }
        let rotated = rotations.blocking_recv().unwrap();
        assert_eq!(rotated.ticket, 7);
        let KeyWrapOutcome::Wrapped(wrapped) = rotated.outcome else {
            panic!("rotation failed")
        };
        assert_eq!(
            unwrap(1, room_label(1, 1), &wrapped[1].1).unwrap().len(),
            KEY_LEN
        );
        assert!(
            pool.submit(job(9, dm_label)).is_ok(),
            "the queue empties again"
        );
    }
}
