//! What the user types, parsed the way the legacy client parses it: the same
//! commands, the same splitting rules and the same local error texts, so that
//! people who know that client find no surprises.

/// One line of input. Names, rooms and texts are kept as the bytes typed,
/// already checked against the wire's length limits, so that what goes out
/// is exactly what the legacy client would send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserCommand {
    /// `\connect HOST:PORT`; the port is checked when it is carried out,
    /// with the legacy client's error text.
    Connect(String),
    /// `\nick NAME`.
    Nick(Vec<u8>),
    /// `\join ROOM [PASSWORD]`.
    Join {
        /// The room, created by the server if it does not exist.
        room: Vec<u8>,
        /// Empty for a room without one, as on the wire.
        password: Vec<u8>,
    },
    /// `\leave`: the room, or outside one, the server.
    Leave,
    /// `\list users`.
    ListUsers,
    /// `\list rooms`.
    ListRooms,
    /// `\msg USER TEXT`.
    Dm {
        /// Who the message is for.
        target: Vec<u8>,
        /// Everything after the space that follows the target, spaces and
        /// all.
        text: Vec<u8>,
    },
    /// A line not starting with `\`: said in the current room.
    Say(Vec<u8>),
    /// `\plain TEXT`: one line said in clear in a room that has no key.
    /// Ordinary lines never go out in clear unasked (unless
    /// `--allow-plaintext`).
    Plain(Vec<u8>),
    /// `\plainmsg USER TEXT`: one DM in clear, to a user we share no key
    /// with.
    PlainDm {
        /// Who the message is for.
        target: Vec<u8>,
        /// What to say, spaces and all.
        text: Vec<u8>,
    },
    /// `\trust USER`: the key now under that name is theirs; record it, and
    /// send the DMs held for it.
    Trust(Vec<u8>),
    /// `\whois USER`: shows the key under that name and how far it is
    /// trusted.
    Whois(Vec<u8>),
    /// `\file ...`: file transfer.
    File(FileCommand),
    /// `\disconnect`: closes the connection once what was typed before has
    /// gone out.
    Disconnect,
    /// `\quit`, or the end of input: like `\disconnect`, then exits.
    Quit,
}

/// `\file send PATH [USER]`, `\file accept ID`, `\file decline ID`,
/// `\file cancel ID`, `\file list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileCommand {
    /// Offers the file at `path` to `target`, or to the room without one.
    Send {
        /// The file to send; the shell hashes it before anything is offered.
        path: String,
        /// The one user it goes to; `None` for the room we are in.
        target: Option<Vec<u8>>,
    },
    /// Accepts the file the server offered us under this id.
    Accept(u32),
    /// Declines the file the server offered us under this id.
    Decline(u32),
    /// Withdraws a file we send, or gives up one we receive.
    Cancel(u32),
    /// Shows every file on its way, each way.
    List,
}

/// A line refused before anything is sent, with the legacy client's text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// Not a command, or not one with these arguments.
    #[error("Invalid command.")]
    Invalid,
    /// `\list` of something other than users or rooms.
    #[error("Invalid list type. Please choose from \"rooms\" or \"users\".")]
    ListType,
    /// A nick (or a DM's target) longer than its one length byte allows.
    #[error("Nick is longer than 255 characters.")]
    NickTooLong,
    /// A room name longer than its one length byte allows.
    #[error("Room name is longer than 255 characters.")]
    RoomTooLong,
    /// A password longer than its one length byte allows.
    #[error("Room password is longer than 255 characters.")]
    PasswordTooLong,
    /// A text longer than its two length bytes allow.
    #[error("Message is longer than 65535 characters.")]
    MessageTooLong,
}

const MAX_NAME: usize = u8::MAX as usize;
const MAX_TEXT: usize = u16::MAX as usize;

/// Parses a line without its line ending. An empty line is `Ok(None)`: the
/// legacy client sends nothing for it.
pub fn parse(line: &str) -> Result<Option<UserCommand>, InputError> {
    if line.is_empty() {
        return Ok(None);
    }
    let Some(command) = line.strip_prefix('\\') else {
        return text(line.as_bytes(), InputError::MessageTooLong)
            .map(|text| Some(UserCommand::Say(text)));
    };
    // `None` when the verb stands alone, as `\leave` must.
    let (verb, rest) = match command.split_once(' ') {
        Some((verb, rest)) => (verb, Some(rest)),
        None => (command, None),
    };
    let args: Vec<&str> = rest
        .map(|rest| rest.split(' ').collect())
        .unwrap_or_default();
    let parsed = match (verb, args.as_slice()) {
        ("leave", []) => UserCommand::Leave,
        ("disconnect", []) => UserCommand::Disconnect,
        ("quit", []) => UserCommand::Quit,
        ("connect", [address]) if word(address) => UserCommand::Connect(address.to_string()),
        ("nick", [name]) if word(name) => UserCommand::Nick(short(name, InputError::NickTooLong)?),
        // `\join room`, `\join room ` and `\join room password`: one space at most.
        ("join", [room] | [room, ""]) if word(room) => UserCommand::Join {
            room: short(room, InputError::RoomTooLong)?,
            password: Vec::new(),
        },
        ("join", [room, password]) if word(room) && word(password) => UserCommand::Join {
            room: short(room, InputError::RoomTooLong)?,
            password: short(password, InputError::PasswordTooLong)?,
        },
        ("file", args) => UserCommand::File(file(args)?),
        ("trust", [name]) if word(name) => {
            UserCommand::Trust(short(name, InputError::NickTooLong)?)
        }
        ("whois", [name]) if word(name) => {
            UserCommand::Whois(short(name, InputError::NickTooLong)?)
        }
        ("plain", _) => {
            let text = rest
                .filter(|text| !text.is_empty())
                .ok_or(InputError::Invalid)?;
            UserCommand::Plain(self::text(text.as_bytes(), InputError::MessageTooLong)?)
        }
        ("list", ["users"]) => UserCommand::ListUsers,
        ("list", ["rooms"]) => UserCommand::ListRooms,
        ("list", [kind]) if word(kind) => return Err(InputError::ListType),
        // Everything after the space that follows the target is the text,
        // spaces and all.
        ("msg" | "plainmsg", _) => {
            let (target, text) = rest
                .and_then(|rest| rest.split_once(' '))
                .ok_or(InputError::Invalid)?;
            if !word(target) || text.is_empty() {
                return Err(InputError::Invalid);
            }
            let target = short(target, InputError::NickTooLong)?;
            let text = self::text(text.as_bytes(), InputError::MessageTooLong)?;
            match verb {
                "msg" => UserCommand::Dm { target, text },
                _ => UserCommand::PlainDm { target, text },
            }
        }
        _ => return Err(InputError::Invalid),
    };
    Ok(Some(parsed))
}

fn file(args: &[&str]) -> Result<FileCommand, InputError> {
    let id = |arg: &str| arg.parse::<u32>().map_err(|_| InputError::Invalid);
    Ok(match args {
        ["send", path] if word(path) => FileCommand::Send {
            path: path.to_string(),
            target: None,
        },
        ["send", path, user] if word(path) && word(user) => FileCommand::Send {
            path: path.to_string(),
            target: Some(short(user, InputError::NickTooLong)?),
        },
        ["accept", arg] => FileCommand::Accept(id(arg)?),
        ["decline", arg] => FileCommand::Decline(id(arg)?),
        ["cancel", arg] => FileCommand::Cancel(id(arg)?),
        ["list"] => FileCommand::List,
        _ => return Err(InputError::Invalid),
    })
}

/// One non-empty word without whitespace, like the legacy client's `[^\s]+`.
fn word(arg: &str) -> bool {
    !arg.is_empty() && !arg.contains(char::is_whitespace)
}

fn short(arg: &str, too_long: InputError) -> Result<Vec<u8>, InputError> {
    if arg.len() > MAX_NAME {
        return Err(too_long);
    }
    Ok(arg.as_bytes().to_vec())
}

fn text(bytes: &[u8], too_long: InputError) -> Result<Vec<u8>, InputError> {
    if bytes.len() > MAX_TEXT {
        return Err(too_long);
    }
    Ok(bytes.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(line: &str) -> UserCommand {
        parse(line).unwrap().unwrap()
    }

    #[test]
    fn parses_every_command() {
        assert_eq!(
            ok("\\connect 127.0.0.1:4170"),
            UserCommand::Connect("127.0.0.1:4170".into())
        );
        assert_eq!(ok("\\nick héllo"), UserCommand::Nick("héllo".into()));
        assert_eq!(
            ok("\\join room2 secret"),
            UserCommand::Join {
                room: b"room2".to_vec(),
                password: b"secret".to_vec()
            }
        );
        for line in ["\\join room1", "\\join room1 "] {
            assert_eq!(
                ok(line),
                UserCommand::Join {
                    room: b"room1".to_vec(),
                    password: Vec::new()
                }
            );
        }
        assert_eq!(ok("\\leave"), UserCommand::Leave);
        assert_eq!(ok("\\list users"), UserCommand::ListUsers);
        assert_eq!(ok("\\list rooms"), UserCommand::ListRooms);
        assert_eq!(
            ok("\\msg bob  two  spaces "),
            UserCommand::Dm {
                target: b"bob".to_vec(),
                text: b" two  spaces ".to_vec()
            }
        );
        assert_eq!(
            ok("  hello room"),
            UserCommand::Say(b"  hello room".to_vec())
        );
        assert_eq!(
            ok("\\file send ./notes.txt"),
            UserCommand::File(FileCommand::Send {
                path: "./notes.txt".into(),
                target: None
            })
        );
        assert_eq!(
            ok("\\file send /tmp/a.bin bob"),
            UserCommand::File(FileCommand::Send {
                path: "/tmp/a.bin".into(),
                target: Some(b"bob".to_vec())
            })
        );
        assert_eq!(
            ok("\\file accept 7"),
            UserCommand::File(FileCommand::Accept(7))
        );
        assert_eq!(
            ok("\\file decline 7"),
            UserCommand::File(FileCommand::Decline(7))
        );
        assert_eq!(
            ok("\\file cancel 7"),
            UserCommand::File(FileCommand::Cancel(7))
        );
        assert_eq!(ok("\\file list"), UserCommand::File(FileCommand::List));
        assert_eq!(ok("\\trust bob"), UserCommand::Trust(b"bob".to_vec()));
        assert_eq!(ok("\\whois bob"), UserCommand::Whois(b"bob".to_vec()));
        assert_eq!(
            ok("\\plain  in the clear "),
            UserCommand::Plain(b" in the clear ".to_vec())
        );
        assert_eq!(
            ok("\\plainmsg leg hi there"),
            UserCommand::PlainDm {
                target: b"leg".to_vec(),
                text: b"hi there".to_vec()
            }
        );
        assert_eq!(ok("\\disconnect"), UserCommand::Disconnect);
        assert_eq!(ok("\\quit"), UserCommand::Quit);
        assert_eq!(parse(""), Ok(None));
    }

    #[test]
    fn refuses_what_the_legacy_client_refuses() {
        for line in [
            "\\",
            "\\leave now",
            "\\leave ",
            "\\join",
            "\\join a  b",
            "\\join a b c",
            "\\msg bob",
            "\\msg bob ",
            "\\nick",
            "\\nick a b",
            "\\list",
            "\\connect",
            "\\quit now",
            "\\frobnicate",
            "\\file",
            "\\file send",
            "\\file send a b c",
            "\\file send  a",
            "\\file accept",
            "\\file accept x",
            "\\file accept -1",
            "\\file list all",
            "\\file open 1",
            "\\trust",
            "\\trust a b",
            "\\whois",
            "\\plain",
            "\\plain ",
            "\\plainmsg bob",
        ] {
            assert_eq!(parse(line), Err(InputError::Invalid), "{line:?}");
        }
        assert_eq!(parse("\\list everything"), Err(InputError::ListType));
        let long = "x".repeat(256);
        assert_eq!(
            parse(&format!("\\nick {long}")),
            Err(InputError::NickTooLong)
        );
        assert_eq!(
            parse(&format!("\\join {long}")),
            Err(InputError::RoomTooLong)
        );
        assert_eq!(
            parse(&format!("\\join r {long}")),
            Err(InputError::PasswordTooLong)
        );
        assert_eq!(
            parse(&format!("\\msg {long} hi")),
            Err(InputError::NickTooLong)
        );
        assert!(parse(&format!("\\nick {}", "x".repeat(255))).is_ok());
        let text = "y".repeat(65_536);
        assert_eq!(parse(&text), Err(InputError::MessageTooLong));
        assert_eq!(
            parse(&format!("\\msg bob {text}")),
            Err(InputError::MessageTooLong)
        );
        assert!(parse(&text[1..]).is_ok());
    }
}
