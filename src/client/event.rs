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
