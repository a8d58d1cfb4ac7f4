//! What the client tells its user: each [`UserEvent`] is shown as a line of text
//! in the legacy client's words, or with `--json` as one JSON object per line
//! for scripts and tests.
//!
//! Names and texts are bytes on the wire; they are shown as UTF-8, with any
//! invalid sequence replaced by U+FFFD.

use serde::Serialize;

/// Where a message was said.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// In a room, to its members.
    Room,
    /// To one user.
    Dm,
}

/// Which way a file goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// A file we send.
    Send,
    /// A file we receive.
    Receive,
}

/// One line of `\file list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileStatus {
    /// The server's transfer id; 0 while the file is still being hashed
    /// and has none.
    pub id: u32,
    /// Which way the file goes.
    pub direction: Direction,
    /// The file's name, as offered.
    pub name: String,
    /// The sender of a file we receive; the room or user of a file we send.
    pub peer: String,
    /// `offered`, `answering`, `waiting` (for answers), `sending`, `receiving`,
    /// `paused` (disconnected, to resume), `resuming`, `finishing`.
    pub state: &'static str,
    /// Bytes received, or acknowledged by every recipient.
    pub bytes: u64,
    /// The file's size.
    pub total: u64,
}

/// Something to show the user: one line of text, or one JSON object with
/// its variant in `event`. Texts are already decoded for display ([`show`]),
/// so the shell only prints them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum UserEvent {
    /// The connection is open, before HELLO: over TLS, with the server's
    /// key and how it was trusted, or over plain TCP.
    Transport {
        /// The connection is TLS.
        tls: bool,
        /// The server's key (TLS only): `SHA256:<hex>` of its certificate's
        /// SubjectPublicKeyInfo, as the server logs it at start.
        #[serde(skip_serializing_if = "Option::is_none")]
        fingerprint: Option<String>,
        /// How the key was trusted (TLS only): `ca` (`--ca`), `system` (the
        /// system's roots), `known` (the key pinned in `known_servers`) or
        /// `first_use` (nothing was pinned: it is now).
        #[serde(skip_serializing_if = "Option::is_none")]
        trust: Option<&'static str>,
        /// The `known_servers` file, when the key is pinned there.
        #[serde(skip_serializing_if = "Option::is_none")]
        known_servers: Option<String>,
        /// Why the connection is plain (plain only): `legacy` or
        /// `insecure_transport`.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'static str>,
    },
    /// The server answered HELLO with our name.
    Connected {
        /// The name the server gave us (`rand0`, ...).
        name: String,
    },
    /// The identity file did not exist and was made, at `path`.
    IdentityCreated {
        /// Where it is kept.
        path: String,
        /// Its fingerprint, as people compare it.
        fingerprint: String,
    },
    /// The server accepted our keys: the connection is secure.
    KeyRegistered {
        /// The RSA key's size in bits.
        bits: usize,
        /// Our fingerprint, as people compare it.
        fingerprint: String,
    },
    /// A `\nick` succeeded.
    Nick {
        /// Our new name.
        name: String,
    },
    /// A `\join` succeeded.
    Joined {
        /// The room joined.
        room: String,
        /// A secure room: what is said there is sealed. A plaintext room
        /// is followed by a warning on a secure connection.
        secure: bool,
    },
    /// A `\leave` left the room.
    Left {
        /// The room left.
        room: String,
    },
    /// LEAVE outside a room: the server is about to hang up.
    LeftServer,
    /// `room` is set when the client believes it is in one, as the legacy
    /// client words its header.
    Users {
        /// The room we are in, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<String>,
        /// The users, in the server's order; the text form sorts them.
        names: Vec<String>,
    },
    /// The reply to `\list rooms`.
    Rooms {
        /// Every room on the server.
        names: Vec<String>,
    },
    /// A message from someone else.
    Message {
        /// Said in a room, or to us alone.
        kind: MessageKind,
        /// The room it was said in; absent for a DM.
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<String>,
        /// Who said it, as the server names them.
        from: String,
        /// What was said, opened if it was sealed.
        text: String,
        /// It was sealed and passed every check of the envelope; a
        /// plaintext line is marked as such.
        encrypted: bool,
        /// It was signed by the key last seen under `from`'s name (or
        /// trusted since): false for plaintext, and for a name whose key
        /// changed.
        verified: bool,
    },
    /// The server accepted our message (the legacy client's local echo).
    Sent {
        /// Said in a room, or to one user.
        kind: MessageKind,
        /// The room it was said in; absent for a DM.
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<String>,
        /// Our name when it was sent.
        from: String,
        /// Who a DM went to; absent in a room.
        #[serde(skip_serializing_if = "Option::is_none")]
        to: Option<String>,
        /// What we said, as typed (not as sealed).
        text: String,
        /// It went out sealed; a plaintext line is marked as such.
        encrypted: bool,
    },
    /// A sealed message that failed verification and was discarded.
    Rejected {
        /// Said in a room, or to us alone.
        kind: MessageKind,
        /// The room it was said in; absent for a DM.
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<String>,
        /// Who the server says sent it; not proven, since it did not
        /// verify.
        from: String,
    },
    /// A message waits for the room's key before it can be sent: the
    /// first one, or the one after a member left.
    Held {
        /// The room whose key it waits for.
        room: String,
    },
    /// A DM waits until the user trusts the recipient's changed key.
    DmHeld {
        /// The recipient.
        to: String,
    },
    /// A user's identity arrived, checked: under a name first seen, or a
    /// new name of someone known.
    PeerKey {
        /// The user's name now.
        name: String,
        /// The name the same key was known under before its `\nick`.
        #[serde(skip_serializing_if = "Option::is_none")]
        renamed_from: Option<String>,
        /// Its fingerprint, as people compare it.
        fingerprint: String,
        /// `new` (first sight, now recorded), `trusted` (the key seen
        /// under this name before) or `changed` (see [`UserEvent::KeyChanged`]).
        trust: &'static str,
    },
    /// The key under a name is not the one seen under it before: someone
    /// else may have the name. Its messages are marked unverified and DMs
    /// to it held until `\trust`.
    KeyChanged {
        /// The name.
        name: String,
        /// The key seen under it before, as people compare it.
        before: String,
        /// The key under it now.
        now: String,
    },
    /// The reply to `\whois`.
    Whois {
        /// The name asked about.
        name: String,
        /// Its key's fingerprint, as people compare it.
        fingerprint: String,
        /// The fingerprint in full, hex.
        sha256: String,
        /// `new`, `trusted` or `changed`, as in [`UserEvent::PeerKey`].
        trust: &'static str,
    },
    /// `\trust` took the key now under `name` as its key.
    Trusted {
        /// The name.
        name: String,
        /// The key now trusted under it.
        fingerprint: String,
    },
    /// A member left the room: what is said there waits for the key of
    /// `next_epoch`, which the member who left will not have.
    Rekeying {
        /// The room.
        room: String,
        /// The epoch awaited.
        next_epoch: u32,
    },
    /// A room key arrived, on joining or after the room's membership
    /// changed: what is said there from now on is sealed under its epoch.
    RoomKey {
        /// The room the key is for.
        room: String,
        /// The key's epoch, which envelopes name.
        epoch: u32,
    },
    /// A DM key arrived, shared with one user.
    DmKey {
        /// The user it is shared with.
        peer: String,
        /// The key's id, which envelopes name.
        key_id: u32,
    },
    /// Something the user should know before trusting the next message to it.
    Warning {
        /// The warning, without the `Warning: ` the text form adds.
        text: String,
    },
    /// The server refused a request (`9a 01`/`9a 02`) with this text.
    Failed {
        /// The server's reason, as it sent it.
        text: String,
    },
    /// A line was refused locally, or a local step failed.
    Error {
        /// The whole line shown, in the legacy client's words where it has
        /// them.
        text: String,
    },
    /// The connection is gone.
    Disconnected {
        /// Why, when it was not our `\disconnect` or `\quit`.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The server took our offer (`8a`); `skipped` members cannot receive
    /// files and were not asked. Files are always sealed.
    FileOffer {
        /// The transfer id the server gave the file.
        id: u32,
        /// The name it was offered under.
        name: String,
        /// Its size in bytes.
        size: u64,
        /// The room it was offered to; absent for a file to one user.
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<String>,
        /// The one user it was offered to; absent in a room.
        #[serde(skip_serializing_if = "Option::is_none")]
        to: Option<String>,
        /// Members without a key, named so the sender knows who will not
        /// get it.
        skipped: Vec<String>,
    },
    /// Someone offers us a file; its signature checked out, and it is
    /// sealed.
    FileOffered {
        /// The transfer id, for `\file accept` and `\file decline`.
        id: u32,
        /// Who offers it.
        from: String,
        /// The room it is offered in; absent for a file to us alone.
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<String>,
        /// The name it would be saved under, stripped of any directory.
        name: String,
        /// Its size in bytes, as signed by the sender.
        size: u64,
    },
    /// The server took our accept: the file goes to `part` until verified.
    FileAccepted {
        /// The transfer id.
        id: u32,
        /// The file's name.
        name: String,
        /// The partial file it is written to, renamed only once verified.
        part: String,
    },
    /// The server took our decline.
    FileDeclined {
        /// The transfer id.
        id: u32,
        /// The file's name.
        name: String,
    },
    /// Everyone answered: our file goes out to `recipients`.
    FileStarted {
        /// The transfer id.
        id: u32,
        /// The file's name.
        name: String,
        /// Who accepted it.
        recipients: Vec<String>,
    },
    /// How far a file has got; sparingly, when there is no progress bar.
    FileProgress {
        /// The transfer id.
        id: u32,
        /// Which way the file goes.
        direction: Direction,
        /// The file's name.
        name: String,
        /// Bytes received, or acknowledged by every recipient.
        bytes: u64,
        /// The file's size.
        total: u64,
        /// The mean rate since the transfer started.
        bytes_per_sec: u64,
        /// Seconds left at that rate; absent while nothing has moved.
        #[serde(skip_serializing_if = "Option::is_none")]
        eta_secs: Option<u64>,
    },
    /// Our file is delivered: `delivered` acknowledged every chunk.
    FileSent {
        /// The transfer id.
        id: u32,
        /// The file's name.
        name: String,
        /// The recipients that have all of it.
        delivered: Vec<String>,
        /// The SHA-256 we sealed in the offer, in hex, to compare with the recipients'.
        sha256: String,
    },
    /// A file arrived whole, its digest and signature verified, and was
    /// saved at `path`.
    FileReceived {
        /// The transfer id.
        id: u32,
        /// Who sent it.
        from: String,
        /// The name it was offered under, made safe.
        name: String,
        /// Where it was saved: `name`, or a numbered name not to overwrite
        /// a file.
        path: String,
        /// Its size in bytes.
        size: u64,
        /// Its SHA-256 in hex, the one its sender sealed in the offer.
        sha256: String,
    },
    /// A transfer ended for everyone (`who` absent) or for the recipient
    /// `who`; `reason` is the server's (`sender_left`, `too_slow`, ...) or
    /// ours (`cancelled` for a file we gave up).
    FileEnded {
        /// The transfer id.
        id: u32,
        /// Which way the file went.
        direction: Direction,
        /// The file's name.
        name: String,
        /// The one recipient that is out, while the file goes on to the
        /// others.
        #[serde(skip_serializing_if = "Option::is_none")]
        who: Option<String>,
        /// Why, as a stable word for scripts.
        reason: String,
        /// Why, in words for people.
        text: String,
    },
    /// A file failed verification (a chunk's MAC, the offer's signature, a
    /// decryption or the final digest): nothing of it was kept, and the
    /// transfer was refused or given up.
    FileFailed {
        /// The transfer id.
        id: u32,
        /// The file's name.
        name: String,
        /// Who sent it, as the server names them.
        from: String,
        /// What failed, and what became of the file.
        problem: String,
    },
    /// The connection dropped while receiving: the partial file is kept and
    /// resumed after the next `\connect`.
    FilePaused {
        /// The transfer id.
        id: u32,
        /// The file's name.
        name: String,
    },
    /// The server resends what we lack; `chunks` we already had.
    FileResumed {
        /// The transfer id.
        id: u32,
        /// The file's name.
        name: String,
        /// The chunks already written here; the rest follow.
        chunks: u32,
    },
    /// The server could not resume the file: the partial file was deleted.
    FileResumeFailed {
        /// The transfer id.
        id: u32,
        /// The file's name.
        name: String,
        /// Who sent it; they must send it again.
        from: String,
        /// The server's reason.
        text: String,
    },
    /// The reply to `\file list`.
    FileList {
        /// Every file on its way, each way: being hashed, sent, received.
        transfers: Vec<FileStatus>,
    },
}

/// What a line's text form says about it: nothing for a sealed line from
/// the key known under its name.
fn mark(encrypted: bool, verified: bool) -> &'static str {
    match (encrypted, verified) {
        (false, _) => " (plaintext)",
        (true, false) => " (unverified)",
        (true, true) => "",
    }
}

/// Bytes from the wire as display text.
pub fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl UserEvent {
    /// The event as one JSON object on one line.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("events serialise to JSON")
    }

    /// The line shown to a person, or `None` for bookkeeping that only
    /// scripts want to see.
    pub fn to_text(&self) -> Option<String> {
        let text = match self {
            UserEvent::Transport {
                tls: true,
                fingerprint,
                trust,
                known_servers,
                ..
            } => {
                let key = fingerprint.as_deref().unwrap_or_default();
                let file = known_servers.as_deref().unwrap_or_default();
                match trust.unwrap_or_default() {
                    "ca" => format!("TLS: the server's certificate is signed by the --ca authority (key {key})."),
                    "system" => format!("TLS: the server's certificate is signed by an authority this system trusts (key {key})."),
                    "known" => format!("TLS: the server's key {key} is the one recorded in {file}."),
                    _ => format!(
                        "TLS: first connection to this server; its key {key} is now recorded in {file}. \
                         Compare it with the fingerprint the server logs at start."
                    ),
                }
            }
            UserEvent::Transport {
                reason: Some("legacy"),
                ..
            } => "Plain TCP (--legacy): nothing is encrypted, not even the connection.".to_string(),
            UserEvent::Transport { .. } => "Warning: plain TCP (--insecure-transport): the connection is \
                 neither encrypted nor authenticated, and a key registered over it can be replayed by \
                 whoever relays it."
                .to_string(),
            UserEvent::Connected { name } => {
                format!("Connected to the chat server. Your name is '{name}'.")
            }
            UserEvent::IdentityCreated { path, fingerprint } => format!(
                "Made a new identity in {path}. Your fingerprint is {fingerprint}: others can compare it with what their client shows for you."
            ),
            UserEvent::KeyRegistered { bits, fingerprint } => format!(
                "Registered your keys (RSA {bits} bits, fingerprint {fingerprint}): rooms you create and DMs to users with keys are end-to-end encrypted."
            ),
            UserEvent::Nick { name } => format!("Changed nick to '{name}'."),
            UserEvent::Joined { room, secure: true } => {
                format!("Joined room '{room}'. Messages here are end-to-end encrypted.")
            }
            UserEvent::Joined { room, secure: false } => format!("Joined room '{room}'."),
            UserEvent::Left { room } => format!("Left room '{room}'."),
            UserEvent::LeftServer => "Left the chat server.".to_string(),
            UserEvent::Users { room, names } => {
                let mut names = names.clone();
                names.sort();
                match room {
                    Some(room) => format!("List of users in room '{room}': {}", names.join(" ")),
                    None => format!("List of all users: {}", names.join(" ")),
                }
            }
            UserEvent::Rooms { names } => format!("List of rooms: {}", names.join(" ")),
            UserEvent::Message {
                kind,
                room,
                from,
                text,
                encrypted,
                verified,
            } => {
                let mark = mark(*encrypted, *verified);
                match (kind, room) {
                    (MessageKind::Room, room) => {
                        format!("[{}] {from}{mark}: {text}", room.as_deref().unwrap_or_default())
                    }
                    (MessageKind::Dm, _) => format!("< {from}{mark}: {text}"),
                }
            }
            UserEvent::Sent {
                kind,
                room,
                from,
                to,
                text,
                encrypted,
            } => {
                let mark = mark(*encrypted, true);
                match kind {
                    MessageKind::Room => {
                        format!("[{}] {from}{mark}: {text}", room.as_deref().unwrap_or_default())
                    }
                    MessageKind::Dm => format!("> {}{mark}: {text}", to.as_deref().unwrap_or_default()),
                }
            }
            UserEvent::Rejected {
                kind: MessageKind::Room,
                room,
                from,
            } => format!(
                "[{}] {from}: !! message failed verification; discarded",
                room.as_deref().unwrap_or_default()
            ),
            UserEvent::Rejected {
                kind: MessageKind::Dm,
                from,
                ..
            } => format!("< {from}: !! message failed verification; discarded"),
            UserEvent::Held { room } => {
                format!("Waiting for the key of room '{room}'; the message goes out when it arrives.")
            }
            UserEvent::DmHeld { to } => format!(
                "Not sent yet: '{to}' has a different key than before. Compare fingerprints (\\whois {to}) and type \\trust {to} to send what waits."
            ),
            UserEvent::PeerKey {
                name,
                renamed_from: Some(old),
                ..
            } => format!("'{old}' is now '{name}' (same key)."),
            UserEvent::PeerKey {
                name,
                fingerprint,
                trust: "new",
                ..
            } => format!("First sight of '{name}' on this server; key fingerprint {fingerprint} (recorded)."),
            UserEvent::KeyChanged { name, before, now } => format!(
                "!! WARNING: '{name}' HAS A DIFFERENT KEY THAN BEFORE. Before: {before}. Now: {now}. \
                 Someone else may be using the name: their messages are marked unverified, and DMs to '{name}' are held. \
                 Compare the fingerprint with {name} in person, then type \\trust {name} if it is theirs."
            ),
            UserEvent::Whois {
                name,
                fingerprint,
                trust,
                ..
            } => format!("'{name}': key fingerprint {fingerprint} ({trust})."),
            UserEvent::Trusted { name, fingerprint } => {
                format!("Trusting {fingerprint} as the key of '{name}'.")
            }
            UserEvent::PeerKey { .. }
            | UserEvent::RoomKey { .. }
            | UserEvent::DmKey { .. }
            | UserEvent::Rekeying { .. } => return None,
            UserEvent::Warning { text } => format!("Warning: {text}"),
            UserEvent::Failed { text } => format!("Command failed. ({text})"),
            UserEvent::Error { text } => text.clone(),
            UserEvent::Disconnected { reason: None } => {
                "Disconnected from the chat server.".to_string()
            }
            UserEvent::Disconnected {
                reason: Some(reason),
            } => format!("Disconnected from the chat server (Reason: {reason})"),
            UserEvent::FileOffer {
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
            UserEvent::FileOffered {
                id,
                from,
                room,
                name,
                size,
            } => {
                let place = room
                    .as_ref()
                    .map_or(String::new(), |room| format!(" in room '{room}'"));
                format!(
                    "{from} offers file {id}{place}: '{name}' ({size} bytes). Type \\file accept {id} or \\file decline {id}."
                )
            }
            UserEvent::FileAccepted { id, name, part } => {
                format!("Accepted file {id} '{name}'; receiving into {part}.")
            }
            UserEvent::FileDeclined { id, name } => format!("Declined file {id} '{name}'."),
            UserEvent::FileStarted {
                id,
                name,
                recipients,
            } => format!("Sending file {id} '{name}' to {}.", recipients.join(", ")),
            UserEvent::FileProgress {
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
            UserEvent::FileSent {
                id,
                name,
                delivered,
                sha256,
            } => format!(
                "Sent file {id} '{name}' to {} (SHA-256 {sha256}).",
                delivered.join(", ")
            ),
            UserEvent::FileReceived {
                id,
                from,
                name,
                path,
                sha256,
                ..
            } => format!(
                "Received file {id} '{name}' from {from}, verified: saved as {path} (SHA-256 {sha256})."
            ),
            UserEvent::FileEnded {
                id,
                name,
                who: Some(who),
                text,
                ..
            } => format!("File {id} '{name}': {who} is out. ({text})"),
            UserEvent::FileEnded {
                id, name, text, ..
            } => format!("File {id} '{name}' ended. ({text})"),
            UserEvent::FileFailed {
                id,
                name,
                from,
                problem,
            } => format!(
                "!! FILE {id} '{name}' FROM {from} FAILED VERIFICATION: {problem}. Nothing of it was kept."
            ),
            UserEvent::FilePaused { id, name } => format!(
                "File {id} '{name}' paused: the partial file is kept and resumes after \\connect."
            ),
            UserEvent::FileResumed { id, name, chunks } => {
                format!("Resuming file {id} '{name}' after chunk {chunks}.")
            }
            UserEvent::FileResumeFailed {
                id,
                name,
                from,
                text,
            } => format!(
                "File {id} '{name}' cannot be resumed ({text}); the partial file was deleted. Ask {from} to send it again."
            ),
            UserEvent::FileList { transfers } if transfers.is_empty() => {
                "No file transfers.".to_string()
            }
            UserEvent::FileList { transfers } => {
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
        let message = UserEvent::Message {
            kind: MessageKind::Dm,
            room: None,
            from: "bob".into(),
            text: "hi \"there\"".into(),
            encrypted: true,
            verified: false,
        };
        assert_eq!(
            message.to_json(),
            r#"{"event":"message","kind":"dm","from":"bob","text":"hi \"there\"","encrypted":true,"verified":false}"#
        );
        assert_eq!(
            message.to_text().unwrap(),
            "< bob (unverified): hi \"there\""
        );
        assert_eq!(
            UserEvent::LeftServer.to_json(),
            r#"{"event":"left_server"}"#
        );
    }

    #[test]
    fn text_follows_the_legacy_client() {
        let users = UserEvent::Users {
            room: None,
            names: vec!["zelda".into(), "bob".into(), "alice".into()],
        };
        assert_eq!(
            users.to_text().unwrap(),
            "List of all users: alice bob zelda"
        );
        let failed = UserEvent::Failed {
            text: "Nick not present".into(),
        };
        assert_eq!(
            failed.to_text().unwrap(),
            "Command failed. (Nick not present)"
        );
        let rejected = UserEvent::Rejected {
            kind: MessageKind::Room,
            room: Some("vault".into()),
            from: "bob".into(),
        };
        assert!(rejected.to_text().unwrap().contains("failed verification"));
        assert_eq!(show(b"h\xffi"), "h\u{fffd}i");
    }
}
