//! What the client remembers across runs, per server, in its data
//! directory: the key last seen under each nick (`known_peers`, for trust
//! on first use) and the rooms it has seen end-to-end encrypted
//! (`secure_rooms`, so that such a room coming back in plaintext is
//! noticed).
//!
//! Both files are logs of lines, appended to and never rewritten: the
//! shell reads them at start ([`Memory::parse`]) and appends each
//! [`Record`] the session hands it, so the session itself touches no file.
//! A later line for the same server and nick overrides an earlier one,
//! which is how `\trust` changes a pin.
//!
//! ```text
//! known_peers:   SERVER NICK SHA256:<64 hex digits>
//! secure_rooms:  SERVER ROOM
//! ```
//!
//! `SERVER` is the address as given to `\connect`. Names are bytes on the
//! wire; any byte outside `!`..`~`, and `%` itself, is written `%XX`, so
//! every field is one word.

use std::collections::{HashMap, HashSet};

use parlor_crypto::identity::Fingerprint;

/// The file a [`Record`] goes to, in the data directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryFile {
    /// `known_peers`.
    KnownPeers,
    /// `secure_rooms`.
    SecureRooms,
}

impl MemoryFile {
    /// The file's name in the data directory.
    pub fn file_name(self) -> &'static str {
        match self {
            MemoryFile::KnownPeers => "known_peers",
            MemoryFile::SecureRooms => "secure_rooms",
        }
    }
}

/// One line for the shell to append to one of the files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Which file.
    pub file: MemoryFile,
    /// The line, without its newline.
    pub line: String,
}

/// Everything remembered, for every server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    peers: HashMap<(String, Vec<u8>), Fingerprint>,
    secure_rooms: HashSet<(String, Vec<u8>)>,
}

impl Memory {
    /// Reads the two files' contents; lines that do not parse (a file
    /// edited by hand, a line cut short by a crash) are skipped.
    pub fn parse(known_peers: &str, secure_rooms: &str) -> Memory {
        let mut memory = Memory::default();
        for line in known_peers.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let [server, nick, fingerprint] = fields[..] else {
                continue;
            };
            let (Some(nick), Some(fingerprint)) = (unescape(nick), parse_fingerprint(fingerprint))
            else {
                continue;
            };
            memory.peers.insert((server.to_string(), nick), fingerprint);
        }
        for line in secure_rooms.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            if let [server, room] = fields[..] {
                if let Some(room) = unescape(room) {
                    memory.secure_rooms.insert((server.to_string(), room));
                }
            }
        }
        memory
    }

    /// The key last seen (or trusted) under `nick` on `server`.
    pub fn pinned(&self, server: &str, nick: &[u8]) -> Option<&Fingerprint> {
        self.peers.get(&(server.to_string(), nick.to_vec()))
    }

    /// Remembers `fingerprint` as the key of `nick` on `server`.
    pub fn pin(&mut self, server: &str, nick: &[u8], fingerprint: &Fingerprint) -> Record {
        self.peers
            .insert((server.to_string(), nick.to_vec()), *fingerprint);
        Record {
            file: MemoryFile::KnownPeers,
            line: format!(
                "{server} {} SHA256:{}",
                escape(nick),
                crate::transfer::hex(fingerprint)
            ),
        }
    }

    /// Whether `room` on `server` was seen end-to-end encrypted.
    pub fn was_secure(&self, server: &str, room: &[u8]) -> bool {
        self.secure_rooms
            .contains(&(server.to_string(), room.to_vec()))
    }

    /// Remembers that `room` on `server` is end-to-end encrypted; `None`
    /// if that was known.
    pub fn mark_secure(&mut self, server: &str, room: &[u8]) -> Option<Record> {
        let new = self
            .secure_rooms
            .insert((server.to_string(), room.to_vec()));
        new.then(|| Record {
            file: MemoryFile::SecureRooms,
            line: format!("{server} {}", escape(room)),
        })
    }
}

fn escape(name: &[u8]) -> String {
    let mut out = String::with_capacity(name.len());
    for &byte in name {
        if (b'!'..=b'~').contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn unescape(field: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(field.len());
    let mut bytes = field.bytes();
    while let Some(byte) = bytes.next() {
        if byte == b'%' {
            let digits = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&digits).ok()?, 16).ok()?);
        } else {
            out.push(byte);
        }
    }
    Some(out)
}

fn parse_fingerprint(field: &str) -> Option<Fingerprint> {
    let digits = field.strip_prefix("SHA256:")?;
    if digits.len() != 64 {
        return None;
    }
    let mut fingerprint = [0; 32];
    for (i, byte) in fingerprint.iter_mut().enumerate() {
        *byte = u8::from_str_radix(digits.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(fingerprint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_back_and_later_lines_win() {
        let mut memory = Memory::default();
        let bob = [0xab; 32];
        let first = memory.pin("h:1", b"bob", &bob);
        assert_eq!(first.file, MemoryFile::KnownPeers);
        assert_eq!(first.line, format!("h:1 bob SHA256:{}", "ab".repeat(32)));
        let odd = memory.pin("h:1", b"b o%\xff", &[1; 32]);
        assert_eq!(odd.line.split(' ').count(), 3, "{}", odd.line);
        let trusted = memory.pin("h:1", b"bob", &[2; 32]);
        let room = memory.mark_secure("h:1", b"vault").unwrap();
        assert_eq!(memory.mark_secure("h:1", b"vault"), None);
        let peers = [first.line, odd.line, trusted.line, "garbage".into()].join("\n");
        let parsed = Memory::parse(&peers, &format!("{}\nh:1\n", room.line));
        assert_eq!(parsed, memory);
        assert_eq!(parsed.pinned("h:1", b"bob"), Some(&[2; 32]));
        assert_eq!(parsed.pinned("h:1", b"b o%\xff"), Some(&[1; 32]));
        assert_eq!(parsed.pinned("h:2", b"bob"), None, "per server");
        assert!(parsed.was_secure("h:1", b"vault"));
        assert!(!parsed.was_secure("h:2", b"vault"));
    }
}
