//! What the client tells its user: each [`Event`] is shown as a line of text
//! in the legacy client's words, or with `--json` as one JSON object per line
//! for scripts and tests.
//!
//! Names and texts are bytes on the wire; they are shown as UTF-8, with any
//! invalid sequence replaced by U+FFFD.

use serde::Serialize;

/// Where a message was said.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Room,
    Dm,
}

/// Which way a file goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Send,
    Receive,
}

/// One line of `\file list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileStatus {
    pub id: u32,
    pub direction: Direction,
    pub name: String,
    /// The sender of a file we receive; the room or user of a file we send.
    pub peer: String,
    /// `offered`, `answering`, `waiting` (for answers), `sending`, `receiving`,
    /// `paused` (disconnected, to resume), `resuming`, `finishing`.
    pub state: &'static str,
    /// Bytes received, or acknowledged by every recipient.
    pub bytes: u64,
    pub total: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The server answered HELLO with our name.
    Connected {
        name: String,
    },
    /// The server accepted our public key: the connection is secure.
    KeyRegistered {
        bits: usize,
    },
    Nick {
        name: String,
    },
    Joined {
        room: String,
        secure: bool,
    },
    Left {
        room: String,
    },
    /// LEAVE outside a room: the server is about to hang up.
    LeftServer,
    /// `room` is set when the client believes it is in one, as the legacy
    /// client words its header.
    Users {
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<String>,
        names: Vec<String>,
    },
    Rooms {
        names: Vec<String>,
    },
    /// A message from someone else. `secure`: it was sealed and passed every
    /// check of PROTOCOL.md §12.7.
    Message {
        kind: Kind,
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<String>,
        from: String,
        text: String,
        secure: bool,
    },
    /// The server accepted our message (the legacy client's local echo).
    Sent {
        kind: Kind,
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<String>,
        from: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        to: Option<String>,
        text: String,
        secure: bool,
    },
    /// A sealed message that failed verification and was discarded.
    Rejected {
        kind: Kind,
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<String>,
        from: String,
    },
    /// A message waits for the room key before it can be sent.
    Held {
        room: String,
    },
    /// A user's public key arrived, or arrived again under a new name.
    PeerKey {
        name: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        renamed_from: Option<String>,
    },
    RoomKey {
        room: String,
        epoch: u32,
    },
    DmKey {
        peer: String,
        key_id: u32,
    },
    /// Something the user should know before trusting the next message to it.
    Warning {
        text: String,
    },
    /// The server refused a request (`9a 01`/`9a 02`) with this text.
    Failed {
        text: String,
    },
    /// A line was refused locally, or a local step failed.
    Error {
        text: String,
    },
    Disconnected {
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The server took our offer (`8a`); `skipped` members cannot receive
    /// files and were not asked.
    FileOffer {
        id: u32,
        name: String,
        size: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        to: Option<String>,
        encrypted: bool,
        skipped: Vec<String>,
    },
    /// Someone offers us a file; its signature checked out.
    FileOffered {
        id: u32,
        from: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<String>,
        name: String,
        size: u64,
        encrypted: bool,
    },
    /// The server took our accept: the file goes to `part` until verified.
    FileAccepted {
        id: u32,
        name: String,
        part: String,
    },
    FileDeclined {
        id: u32,
        name: String,
    },
    /// Everyone answered: our file goes out to `recipients`.
    FileStarted {
        id: u32,
        name: String,
        recipients: Vec<String>,
    },
    /// How far a file has got; sparingly, when there is no progress bar.
    FileProgress {
        id: u32,
        direction: Direction,
        name: String,
        bytes: u64,
        total: u64,
        bytes_per_sec: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        eta_secs: Option<u64>,
    },
    /// Our file is delivered: `delivered` acknowledged every chunk.
    FileSent {
        id: u32,
        name: String,
        delivered: Vec<String>,
        sha256: String,
    },
    /// A file arrived whole, its digest and signature verified, and was
    /// saved at `path`.
    FileReceived {
        id: u32,
        from: String,
        name: String,
        path: String,
        size: u64,
        sha256: String,
    },
    /// A transfer ended for everyone (`who` absent) or for the recipient
    /// `who`; `reason` is the server's (`sender_left`, `too_slow`, ...) or
    /// ours (`cancelled` for a file we gave up).
    FileEnded {
        id: u32,
        direction: Direction,
        name: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        who: Option<String>,
        reason: String,
        text: String,
    },
    /// A file failed verification (a chunk's MAC, the offer's signature, a
    /// decryption or the final digest): nothing of it was kept, and the
    /// transfer was refused or given up.
    FileFailed {
        id: u32,
        name: String,
        from: String,
        problem: String,
    },
    /// The connection dropped while receiving: the partial file is kept and
    /// resumed after the next `\connect`.
    FilePaused {
        id: u32,
        name: String,
    },
    /// The server resends what we lack; `chunks` we already had.
    FileResumed {
        id: u32,
        name: String,
        chunks: u32,
    },
    /// The server could not resume the file: the partial file was deleted.
    FileResumeFailed {
        id: u32,
        name: String,
        from: String,
        text: String,
    },
    /// The reply to `\file list`.
    FileList {
        transfers: Vec<FileStatus>,
    },
}

/// Bytes from the wire as display text.
pub fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl Event {
    /// The event as one JSON object on one line.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("events serialise to JSON")
    }

    /// The line shown to a person, or `None` for bookkeeping that only
    /// scripts want to see.
    pub fn to_text(&self) -> Option<String> {
        let text = match self {
            Event::Connected { name } => {
                format!("Connected to the chat server. Your name is '{name}'.")
            }
            Event::KeyRegistered { bits } => format!(
                "Registered a {bits}-bit RSA key: rooms you create and DMs to users with keys are end-to-end encrypted."
            ),
            Event::Nick { name } => format!("Changed nick to '{name}'."),
            Event::Joined { room, secure: true } => {
                format!("Joined room '{room}'. Messages here are end-to-end encrypted.")
            }
            Event::Joined { room, secure: false } => format!("Joined room '{room}'."),
            Event::Left { room } => format!("Left room '{room}'."),
            Event::LeftServer => "Left the chat server.".to_string(),
            Event::Users { room, names } => {
                let mut names = names.clone();
                names.sort();
                match room {
                    Some(room) => format!("List of users in room '{room}': {}", names.join(" ")),
                    None => format!("List of all users: {}", names.join(" ")),
                }
            }
            Event::Rooms { names } => format!("List of rooms: {}", names.join(" ")),
            Event::Message {
                kind: Kind::Room,
                room,
                from,
                text,
                ..
            } => format!("[{}] {from}: {text}", room.as_deref().unwrap_or_default()),
            Event::Message {
                kind: Kind::Dm,
                from,
                text,
                secure,
                ..
            } => {
                let mark = if *secure { "" } else { " (not encrypted)" };
                format!("< {from}{mark}: {text}")
            }
            Event::Sent {
                kind: Kind::Room,
                room,
                from,
                text,
                ..
            } => format!("[{}] {from}: {text}", room.as_deref().unwrap_or_default()),
            Event::Sent {
                kind: Kind::Dm,
                to,
                text,
                ..
            } => format!("> {}: {text}", to.as_deref().unwrap_or_default()),
            Event::Rejected {
                kind: Kind::Room,
                room,
                from,
            } => format!(
                "[{}] {from}: !! message failed verification; discarded",
                room.as_deref().unwrap_or_default()
            ),
            Event::Rejected {
                kind: Kind::Dm,
                from,
                ..
            } => format!("< {from}: !! message failed verification; discarded"),
            Event::Held { room } => {
                format!("Waiting for the key of room '{room}'; the message goes out when it arrives.")
            }
            Event::PeerKey {
                name,
                renamed_from: Some(old),
            } => format!("'{old}' is now '{name}' (same key)."),
            Event::PeerKey { .. } | Event::RoomKey { .. } | Event::DmKey { .. } => return None,
            Event::Warning { text } => format!("Warning: {text}"),
            Event::Failed { text } => format!("Command failed. ({text})"),
            Event::Error { text } => text.clone(),
            Event::Disconnected { reason: None } => "Disconnected from the chat server.".to_string(),
            Event::Disconnected {
                reason: Some(reason),
            } => format!("Disconnected from the chat server (Reason: {reason})"),
            Event::FileOffer {
                id,
                name,
                size,
                room,
                to,
                skipped,
                ..
            } => {
                let place = match (room, to) {
                    (Some(room), _) => format!("room '{room}'"),
                    (None, to) => format!("'{}'", to.as_deref().unwrap_or_default()),
                };
                let mut line = format!(
                    "Offered '{name}' ({size} bytes) to {place} as file {id}; waiting for answers."
                );
                if !skipped.is_empty() {
                    line.push_str(&format!(
                        " Not offered to {} (their clients cannot receive files).",
                        skipped.join(", ")
                    ));
                }
                line
            }
            Event::FileOffered {
                id,
                from,
                room,
                name,
                size,
                encrypted,
            } => {
                let place = room
                    .as_ref()
                    .map_or(String::new(), |room| format!(" in room '{room}'"));
                let mark = if *encrypted { "" } else { ", not encrypted" };
                format!(
                    "{from} offers file {id}{place}: '{name}' ({size} bytes{mark}). Type \\file accept {id} or \\file decline {id}."
                )
            }
            Event::FileAccepted { id, name, part } => {
                format!("Accepted file {id} '{name}'; receiving into {part}.")
            }
            Event::FileDeclined { id, name } => format!("Declined file {id} '{name}'."),
            Event::FileStarted {
                id,
                name,
                recipients,
            } => format!("Sending file {id} '{name}' to {}.", recipients.join(", ")),
            Event::FileProgress {
                id,
                direction,
                name,
                bytes,
                total,
                bytes_per_sec,
                eta_secs,
            } => {
                let verb = match direction {
                    Direction::Send => "Sending",
                    Direction::Receive => "Receiving",
                };
                let eta = eta_secs.map_or(String::new(), |eta| format!(", {eta} s left"));
                format!("{verb} file {id} '{name}': {bytes}/{total} bytes, {bytes_per_sec} B/s{eta}")
            }
            Event::FileSent {
                id,
                name,
                delivered,
                sha256,
            } => format!(
                "Sent file {id} '{name}' to {} (SHA-256 {sha256}).",
                delivered.join(", ")
            ),
            Event::FileReceived {
                id,
                from,
                name,
                path,
                sha256,
                ..
            } => format!(
                "Received file {id} '{name}' from {from}, verified: saved as {path} (SHA-256 {sha256})."
            ),
            Event::FileEnded {
                id,
                name,
                who: Some(who),
                text,
                ..
            } => format!("File {id} '{name}': {who} is out. ({text})"),
            Event::FileEnded {
                id, name, text, ..
            } => format!("File {id} '{name}' ended. ({text})"),
            Event::FileFailed {
                id,
                name,
                from,
                problem,
            } => format!(
                "!! FILE {id} '{name}' FROM {from} FAILED VERIFICATION: {problem}. Nothing of it was kept."
            ),
            Event::FilePaused { id, name } => format!(
                "File {id} '{name}' paused: the partial file is kept and resumes after \\connect."
            ),
            Event::FileResumed { id, name, chunks } => {
                format!("Resuming file {id} '{name}' after chunk {chunks}.")
            }
            Event::FileResumeFailed {
                id,
                name,
                from,
                text,
            } => format!(
                "File {id} '{name}' cannot be resumed ({text}); the partial file was deleted. Ask {from} to send it again."
            ),
            Event::FileList { transfers } if transfers.is_empty() => {
                "No file transfers.".to_string()
            }
            Event::FileList { transfers } => {
                let mut text = String::from("File transfers:");
                for file in transfers {
                    let arrow = match file.direction {
                        Direction::Send => "to",
                        Direction::Receive => "from",
                    };
                    let percent = (file.bytes * 100).checked_div(file.total).unwrap_or(100);
                    text.push_str(&format!(
                        "\n  {} '{}' {arrow} {}: {}, {}/{} bytes ({percent}%)",
                        file.id, file.name, file.peer, file.state, file.bytes, file.total
                    ));
                }
                text
            }
        };
        Some(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_one_tag_and_leaves_out_absent_fields() {
        let message = Event::Message {
            kind: Kind::Dm,
            room: None,
            from: "bob".into(),
            text: "hi \"there\"".into(),
            secure: true,
        };
        assert_eq!(
            message.to_json(),
            r#"{"event":"message","kind":"dm","from":"bob","text":"hi \"there\"","secure":true}"#
        );
        assert_eq!(Event::LeftServer.to_json(), r#"{"event":"left_server"}"#);
    }

    #[test]
    fn text_follows_the_legacy_client() {
        let users = Event::Users {
            room: None,
            names: vec!["zelda".into(), "bob".into(), "alice".into()],
        };
        assert_eq!(
            users.to_text().unwrap(),
            "List of all users: alice bob zelda"
        );
        let failed = Event::Failed {
            text: "Nick not present".into(),
        };
        assert_eq!(
            failed.to_text().unwrap(),
            "Command failed. (Nick not present)"
        );
        let rejected = Event::Rejected {
            kind: Kind::Room,
            room: Some("vault".into()),
            from: "bob".into(),
        };
        assert!(rejected.to_text().unwrap().contains("failed verification"));
        assert_eq!(show(b"h\xffi"), "h\u{fffd}i");
    }
}
