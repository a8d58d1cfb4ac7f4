//! File transfer in the reference client: what the session remembers of
//! each file, and what it asks the shell to do with files on disk.
//!
//! ## Where file IO happens
//!
//! The [`ClientSession`](super::ClientSession) opens no file, as it opens no socket. It
//! asks for each read, write and rename with an [`Output::File`] holding a
//! [`FileOp`], and the shell carries it out and reports back
//! (`ClientSession::handle_file_hashed`, `handle_chunk_read`,
//! `handle_file_saved`, `handle_file_io_failed`). This is the same split
//! as for the network, for the same reasons and two more:
//!
//! - Every file behaviour, integrity failures and resume included, is
//!   tested by feeding the session frames and pretend file contents; the
//!   session's tests keep "files" in a map.
//! - Hashing a whole file before offering it may take seconds for a large
//!   one. Done inside the session it would stall the event loop, and with
//!   it heartbeats and every other transfer; the shell runs it on a
//!   blocking thread. Chunk reads and writes are at most a window's worth
//!   at a time, and the shell does them in order, as they are asked for.
//! - The session keeps paths, never open handles, so nothing about a file
//!   depends on the connection: a file being received survives a dropped
//!   connection with its partial file, its running hash and its keys, and
//!   is resumed on the next connection.
//!
//! Memory stays flat whatever the size: the sender reads one chunk per
//! read, the recipient hashes each chunk as it arrives and writes it out.
//!
//! [`Output::File`]: super::Output::File

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::event::{show, Direction, FileStatus};
use parlor_crypto::file::{FileKeys, DEFAULT_CHUNK_SIZE, DEFAULT_WINDOW};
use parlor_crypto::PeerIdentity;
use parlor_proto::transfer::{FileMeta, TOKEN_LEN};

/// How this client sends and where it keeps what it receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSettings {
    /// Where received files are written (`NAME.part` until verified).
    pub download_dir: PathBuf,
    /// Plaintext bytes per chunk of the files we send.
    pub chunk_size: u32,
    /// Chunks we ask to have in flight.
    pub window: u8,
}

impl Default for FileSettings {
    fn default() -> FileSettings {
        FileSettings {
            download_dir: PathBuf::from("."),
            chunk_size: DEFAULT_CHUNK_SIZE,
            window: DEFAULT_WINDOW,
        }
    }
}

/// Something to do with a file on disk. Each op names the transfer it is
/// for; the shell reports its outcome as the op says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileOp {
    /// Read the whole file once for its size and SHA-256, then report with
    /// `ClientSession::handle_file_hashed`. May be slow: run it off the
    /// event loop.
    Hash {
        /// The session's own number for the file: it has no transfer id
        /// until the server takes the offer.
        local: u32,
        /// The file to offer.
        path: PathBuf,
    },
    /// Read exactly `len` bytes at `offset`, then report with
    /// `ClientSession::handle_chunk_read`, in the order the reads were
    /// asked for.
    Read {
        /// The transfer id.
        id: u32,
        /// The chunk this read is for, to report it with.
        index: u32,
        /// The file being sent; reopened for each read, as no handle is
        /// kept.
        path: PathBuf,
        /// Where the chunk starts.
        offset: u64,
        /// The chunk's length: the shell reads exactly this much, or
        /// reports an error.
        len: usize,
    },
    /// Create (or empty) the partial file. Report only a failure, with
    /// `ClientSession::handle_file_io_failed`.
    Create {
        /// The transfer id, to report a failure with.
        id: u32,
        /// The partial file, `NAME.part` in the download directory.
        path: PathBuf,
    },
    /// Write `data` at `offset` of the partial file. Report only a failure.
    Write {
        /// The transfer id, to report a failure with.
        id: u32,
        /// The partial file.
        path: PathBuf,
        /// Where the chunk goes: chunks are written in order, but at their
        /// place, so that a write never depends on the one before.
        offset: u64,
        /// The chunk's plaintext, already checked.
        data: Bytes,
    },
    /// Move the verified partial file to `dir/name`, or, not to overwrite
    /// anything, to `name (1)`, `name (2)`, ... before the extension; then
    /// report the path with `ClientSession::handle_file_saved`.
    Save {
        /// The transfer id, to report with.
        id: u32,
        /// The partial file, verified.
        part: PathBuf,
        /// The download directory.
        dir: PathBuf,
        /// The name to save it under, already made safe ([`safe_name`]).
        name: String,
    },
    /// Delete the file, if it is there.
    Delete {
        /// A partial file given up.
        path: PathBuf,
    },
}

/// How far a transfer has got, for a progress bar. The shell draws it, or
/// turns it into a sparing [`super::UserEvent::FileProgress`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferProgress {
    /// The transfer id; with `direction`, which bar this is.
    pub id: u32,
    /// Which way the file goes.
    pub direction: Direction,
    /// The file's name, for the bar's label.
    pub name: String,
    /// Bytes received, or acknowledged by every recipient: what is safely
    /// across, not what was merely sent.
    pub bytes: u64,
    /// The file's size.
    pub total: u64,
    /// The transfer is over, whichever way it ended: remove the bar.
    pub ended: bool,
}

/// A file hashed and ready to be offered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedFile {
    /// Where the chunks are read from when the file goes out.
    pub path: PathBuf,
    /// The name offered: the path's last component.
    pub name: Vec<u8>,
    /// `None`: the room we are in.
    pub target: Option<Vec<u8>>,
    /// The size when it was hashed, which the offer promises.
    pub size: u64,
    /// The SHA-256 of the whole, signed in the offer.
    pub digest: [u8; 32],
}

/// The file state of a session: it outlives connections.
#[derive(Debug, Default)]
pub(super) struct Files {
    pub settings: FileSettings,
    /// Files being hashed before their offer, by local id.
    pub preparing: BTreeMap<u32, Preparing>,
    pub next_local: u32,
    /// The offer on the wire (one request at a time): sealed, waiting for
    /// its `8a` (which gives `id`) and `9a`.
    pub offering: Option<Offering>,
    pub outgoing: BTreeMap<u32, OutboundFile>,
    pub incoming: BTreeMap<u32, InboundFile>,
}

#[derive(Debug)]
pub(super) struct Preparing {
    pub path: PathBuf,
    pub name: Vec<u8>,
    pub target: Option<Vec<u8>>,
}

#[derive(Debug)]
pub(super) struct Offering {
    pub id: Option<u32>,
    pub skipped: Vec<Bytes>,
    pub file: OutboundFile,
}

/// A file we send.
#[derive(Debug)]
pub(super) struct OutboundFile {
    pub name: String,
    pub path: PathBuf,
    /// The room, or the user it goes to.
    pub room: Option<String>,
    pub to: Option<String>,
    pub size: u64,
    pub chunk_size: u32,
    pub chunk_count: u32,
    pub digest: [u8; 32],
    pub keys: FileKeys,
    pub stage: OutStage,
    /// Who accepted and has not dropped out.
    pub recipients: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OutStage {
    /// Waiting for everyone to answer.
    Offered,
    /// Chunks `0..acked` are acknowledged by everyone, `0..read` asked of
    /// the shell, `0..sent` sent.
    Sending {
        window: u8,
        acked: u32,
        read: u32,
        sent: u32,
    },
    /// FILE_DONE is out; waiting for `8e`.
    Done { acked: u32 },
}

impl OutboundFile {
    pub(crate) fn acked(&self) -> u32 {
        match self.stage {
            OutStage::Offered => 0,
            OutStage::Sending { acked, .. } | OutStage::Done { acked } => acked,
        }
    }

    pub(crate) fn acked_bytes(&self) -> u64 {
        (u64::from(self.acked()) * u64::from(self.chunk_size)).min(self.size)
    }

    pub(crate) fn place(&self) -> String {
        match (&self.room, &self.to) {
            (Some(room), _) => format!("room '{room}'"),
            (None, to) => to.clone().unwrap_or_default(),
        }
    }

    pub(crate) fn progress(&self, id: u32, ended: bool) -> TransferProgress {
        TransferProgress {
            id,
            direction: Direction::Send,
            name: self.name.clone(),
            bytes: self.acked_bytes(),
            total: self.size,
            ended,
        }
    }

    pub(crate) fn status(&self, id: u32) -> FileStatus {
        FileStatus {
            id,
            direction: Direction::Send,
            name: self.name.clone(),
            peer: self.place(),
            state: match self.stage {
                OutStage::Offered => "waiting",
                OutStage::Sending { .. } => "sending",
                OutStage::Done { .. } => "finishing",
            },
            bytes: self.acked_bytes(),
            total: self.size,
        }
    }
}

/// Where the key of a file we receive comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum KeySource {
    Room { room: Vec<u8>, epoch: u32 },
    Dm { key_id: u32 },
}

/// What the file's key opened: its chunk keys, and the SHA-256 its sealed
/// manifest holds.
#[derive(Debug)]
pub(super) struct Unsealed {
    pub keys: FileKeys,
    pub digest: [u8; 32],
}

/// A file offered to us.
#[derive(Debug)]
pub(super) struct InboundFile {
    pub from: Vec<u8>,
    /// The name to save it under: [`safe_name`] of the offered one.
    pub name: String,
    pub meta: FileMeta,
    pub source: KeySource,
    /// Who signed the offer: a DM key found later must be shared with
    /// them, and the offer's counter is theirs.
    pub sender: PeerIdentity,
    /// Opened as soon as the issued key is at hand, and kept: the keyring
    /// goes with the connection, the file may outlive it.
    pub unsealed: Option<Unsealed>,
    pub stage: InStage,
    pub token: Option<[u8; TOKEN_LEN]>,
    pub part: Option<PathBuf>,
    /// Chunks `0..next` are written and hashed.
    pub next: u32,
    pub bytes: u64,
    pub hasher: Sha256,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum InStage {
    /// Waiting for `\file accept` or `\file decline`.
    Offered,
    /// Our answer is queued or on the wire.
    Answering,
    Receiving,
    /// The connection dropped after we accepted; resumed after the next
    /// key registration.
    Detached,
    /// FILE_RESUME is queued or on the wire.
    Resuming,
    /// Verified; the shell is moving it into place.
    Saving,
}

impl InboundFile {
    pub(crate) fn progress(&self, id: u32, ended: bool) -> TransferProgress {
        TransferProgress {
            id,
            direction: Direction::Receive,
            name: self.name.clone(),
            bytes: self.bytes,
            total: self.meta.size,
            ended,
        }
    }

    pub(crate) fn status(&self, id: u32) -> FileStatus {
        FileStatus {
            id,
            direction: Direction::Receive,
            name: self.name.clone(),
            peer: show(&self.from),
            state: match self.stage {
                InStage::Offered => "offered",
                InStage::Answering => "answering",
                InStage::Receiving => "receiving",
                InStage::Detached => "paused",
                InStage::Resuming => "resuming",
                InStage::Saving => "finishing",
            },
            bytes: self.bytes,
            total: self.meta.size,
        }
    }
}

/// The longest name we save a file under, in bytes: room for `.part` or a
/// ` (n)` within the usual 255-byte limit of a file name.
pub const MAX_SAVED_NAME: usize = 200;

/// A file name from the wire made safe to create in the download
/// directory: no directories (only what follows the last `/` or `\`), no
/// control characters, never `.` or `..` or empty, at most
/// [`MAX_SAVED_NAME`] bytes. The server refuses such names already; this
/// does not rely on it.
pub fn safe_name(raw: &[u8]) -> String {
    let shown = show(raw);
    let last = shown.rsplit(['/', '\\']).next().unwrap_or_default();
    let mut name: String = last.chars().filter(|c| !c.is_control()).collect();
    let trimmed = name.trim();
    if trimmed.is_empty() || trimmed.chars().all(|c| c == '.') {
        return "file".to_string();
    }
    name = trimmed.to_string();
    if name.len() > MAX_SAVED_NAME {
        let mut end = MAX_SAVED_NAME;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
    }
    name
}

/// The `n`th alternative to `name`, for not overwriting a file: `a.txt`
/// becomes `a (1).txt`; a name without an extension (or a dotfile) gets the
/// number at its end.
pub fn numbered_name(name: &str, n: u32) -> String {
    match name.rfind('.') {
        Some(dot) if dot > 0 => format!("{} ({n}){}", &name[..dot], &name[dot..]),
        _ => format!("{name} ({n})"),
    }
}

/// The partial file of `name` in `dir`: `NAME.part`, or `NAME.ID.part`
/// when another file of that name is already arriving.
pub(super) fn part_path<'a>(
    dir: &Path,
    name: &str,
    id: u32,
    taken: impl IntoIterator<Item = &'a Path>,
) -> PathBuf {
    let plain = dir.join(format!("{name}.part"));
    if taken.into_iter().any(|path| path == plain) {
        dir.join(format!("{name}.{id}.part"))
    } else {
        plain
    }
}

/// SHA-256 as lowercase hex.
pub fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of nothing; what a 0-byte file must hash to.
pub(super) fn empty_digest() -> [u8; 32] {
    Sha256::digest([]).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_the_wire_lose_directories_and_control_characters() {
        assert_eq!(safe_name(b"notes.txt"), "notes.txt");
        assert_eq!(safe_name(b"../../etc/passwd"), "passwd");
        assert_eq!(safe_name(b"C:\\Windows\\evil.dll"), "evil.dll");
        assert_eq!(safe_name(b"a\x00b\x1b[2Jc\x7f"), "ab[2Jc");
        assert_eq!(safe_name(b"dir/"), "file");
        for bad in [&b""[..], b".", b"..", b"...", b"  ", b"x/..", b"\x01"] {
            assert_eq!(safe_name(bad), "file", "{bad:?}");
        }
        assert_eq!(safe_name(b"caf\xc3\xa9\xff"), "café\u{fffd}");
        let long = "é".repeat(200);
        let safe = safe_name(long.as_bytes());
        assert!(safe.len() <= MAX_SAVED_NAME && safe.chars().all(|c| c == 'é'));
    }

    #[test]
    fn numbered_names_keep_the_extension() {
        assert_eq!(numbered_name("a.txt", 1), "a (1).txt");
        assert_eq!(numbered_name("a.tar.gz", 2), "a.tar (2).gz");
        assert_eq!(numbered_name("README", 3), "README (3)");
        assert_eq!(numbered_name(".bashrc", 1), ".bashrc (1)");
    }

    #[test]
    fn part_files_do_not_collide() {
        let dir = Path::new("/downloads");
        let first = part_path(dir, "a.txt", 1, []);
        assert_eq!(first, Path::new("/downloads/a.txt.part"));
        let second = part_path(dir, "a.txt", 2, [first.as_path()]);
        assert_eq!(second, Path::new("/downloads/a.txt.2.part"));
    }
}
