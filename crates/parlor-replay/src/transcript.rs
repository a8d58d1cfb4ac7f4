//! The text form of what each client received: one line per reply, so that
//! an expected transcript can be read, written and diffed by hand.
//!
//! ```text
//! # comment (also after a line)     what the server did
//! A ok "rand0"                      9a 00 and data (here: the reply to HELLO)
//! A ok                              9a 00 with no data
//! A ok ["alice" "bob"]              9a 00 answering LIST_USERS or LIST_ROOMS
//! A error "Nick not present"        9a 01 and its text
//! A busy "Slow down: ..."           9a 02 (try later) and its text
//! A status 03 "..."                 9a with any other status
//! B room "lobby" "alice" "hello"    15: a room message (room, sender, text)
//! B dm "alice" "hello bob"          12: a direct message (sender, text)
//! A frame 77 "..."                  any other frame, or one that does not parse
//! A garbage                         bytes that are not frames (bad magic or length)
//! A closed                          the server closed the connection
//! A reset                           the server reset the connection
//! ```
//!
//! `A`, `B`, ... name the clients in the order they connected in the
//! capture. Quoted strings are the exact bytes: UTF-8 as itself, `\"` and
//! `\\` for quote and backslash, `\n`-style escapes for control characters
//! and `\xNN` for bytes that are not UTF-8, so two different replies never
//! print the same. Whitespace outside quotes is not significant.
//!
//! Only the order of each client's own lines matters: how the lines of
//! different clients interleave depends on scheduling, so the comparison
//! walks the expected lines in file order with one cursor per client.

use std::collections::HashMap;
use std::fmt;

use bytes::Bytes;

use parlor_proto::{opcode, ClientMessage, FileRequest, Frame, ServerMessage};

/// What a client had asked when a `9a` arrived, which decides how its data
/// is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Asked {
    /// HELLO: the data is the client's name.
    Hello,
    /// LIST_USERS or LIST_ROOMS: the data is a list of names.
    List,
    /// Anything else (or nothing): the data is shown as it is.
    Other,
}

impl Asked {
    /// What a request with this opcode asks for.
    pub fn of(opcode: u8) -> Asked {
        match opcode {
            opcode::HELLO => Asked::Hello,
            opcode::LIST_USERS | opcode::LIST_ROOMS => Asked::List,
            _ => Asked::Other,
        }
    }
}

/// The transcript line for a frame from the server (without the client).
pub fn reply_line(frame: &Frame, asked: Asked) -> String {
    let payload = &frame.payload[..];
    match (frame.opcode, payload.split_first()) {
        (opcode::RESPONSE, Some((&status, data))) => {
            let mut line = match status {
                0x00 => "ok".to_owned(),
                0x01 => "error".to_owned(),
                0x02 => "busy".to_owned(),
                other => format!("status {other:02x}"),
            };
            if status == 0x00 && asked == Asked::List {
                if let Some(names) = name_list(data) {
                    line.push_str(" [");
                    let quoted: Vec<String> = names.iter().map(|name| quote(name)).collect();
                    line.push_str(&quoted.join(" "));
                    line.push(']');
                    return line;
                }
            }
            if !data.is_empty() {
                line.push(' ');
                line.push_str(&quote(data));
            }
            line
        }
        (opcode::ROOM_MESSAGE | opcode::DIRECT_MESSAGE, _) => match ServerMessage::parse(frame) {
            Ok(ServerMessage::RoomMessage { room, sender, text }) => {
                format!("room {} {} {}", quote(&room), quote(&sender), quote(&text))
            }
            Ok(ServerMessage::DirectMessage { sender, text }) => {
                format!("dm {} {}", quote(&sender), quote(&text))
            }
            _ => raw_frame_line(frame),
        },
        _ => raw_frame_line(frame),
    }
}

fn raw_frame_line(frame: &Frame) -> String {
    format!("frame {:02x} {}", frame.opcode, quote(&frame.payload))
}

/// `{u8 len, name}*` exactly filling `data`, as the legacy client requires.
fn name_list(mut data: &[u8]) -> Option<Vec<&[u8]>> {
    let mut names = Vec::new();
    while let Some((&len, rest)) = data.split_first() {
        let name = rest.get(..usize::from(len))?;
        names.push(name);
        data = &rest[name.len()..];
    }
    Some(names)
}

/// The bytes as a quoted string that maps back to exactly these bytes.
pub fn quote(bytes: &[u8]) -> String {
    let mut quoted = String::with_capacity(bytes.len() + 2);
    quoted.push('"');
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => quoted.push_str("\\\""),
                '\\' => quoted.push_str("\\\\"),
                c if c.is_control() => quoted.extend(c.escape_default()),
                c => quoted.push(c),
            }
        }
        for byte in chunk.invalid() {
            quoted.push_str(&format!("\\x{byte:02x}"));
        }
    }
    quoted.push('"');
    quoted
}

/// A short description of what a client sent, for the transcript's
/// comments. Long texts are cut: comments are not compared.
pub fn describe_sent(bytes: &[u8], frame: Option<&Frame>) -> String {
    let Some(frame) = frame else {
        return format!("{} bytes that are not a whole frame", bytes.len());
    };
    let short = |field: &Bytes| {
        const SHOWN: usize = 40;
        if field.len() <= SHOWN {
            quote(field)
        } else {
            format!("{}... ({} bytes)", quote(&field[..SHOWN]), field.len())
        }
    };
    match ClientMessage::parse(frame) {
        Ok(ClientMessage::Hello { greeting }) => format!("HELLO {}", short(&greeting)),
        Ok(ClientMessage::Heartbeat { .. }) => "HEARTBEAT".to_owned(),
        Ok(ClientMessage::Nick { name }) => format!("NICK {}", short(&name)),
        Ok(ClientMessage::Join { room, password }) => {
            format!("JOIN {} {}", short(&room), short(&password))
        }
        Ok(ClientMessage::Leave) => "LEAVE".to_owned(),
        Ok(ClientMessage::ListUsers) => "LIST_USERS".to_owned(),
        Ok(ClientMessage::ListRooms) => "LIST_ROOMS".to_owned(),
        Ok(ClientMessage::DirectMessage { target, text }) => {
            format!("DM {} {}", short(&target), short(&text))
        }
        Ok(ClientMessage::RoomMessage { room, text }) => {
            format!("ROOM_MSG {} {}", short(&room), short(&text))
        }
        Ok(ClientMessage::RegisterKey(registration)) => {
            format!("REGISTER_KEY {}", short(&registration.rsa_der))
        }
        Ok(ClientMessage::SignedNick { name, .. }) => format!("SIGNED_NICK {}", short(&name)),
        Ok(ClientMessage::DmKeyRequest { target }) => format!("DM_KEY_REQUEST {}", short(&target)),
        Ok(ClientMessage::File(request)) => describe_file_request(&request),
        Err(err) => format!("frame {:02x} ({err})", frame.opcode),
    }
}

/// A file request in one line; a chunk shows its size, not its bytes.
fn describe_file_request(request: &FileRequest) -> String {
    match request {
        FileRequest::Offer { target, meta, .. } => format!(
            "FILE_OFFER {} {} ({} bytes)",
            quote(target),
            quote(&meta.name),
            meta.size
        ),
        FileRequest::Decision { id, accept } => format!("FILE_DECISION {id} {accept}"),
        FileRequest::Chunk { id, index, data } => {
            format!("FILE_CHUNK {id} {index} ({} bytes)", data.len())
        }
        FileRequest::Ack { id, index } => format!("FILE_ACK {id} {index}"),
        FileRequest::Done { id } => format!("FILE_DONE {id}"),
        FileRequest::Resume { id, .. } => format!("FILE_RESUME {id}"),
        FileRequest::Cancel { id } => format!("FILE_CANCEL {id}"),
    }
}

/// The name of the `index`th client: A to Z, then AA, AB, ...
pub fn client_label(index: usize) -> String {
    let letter = |n: usize| char::from(b'A' + (n % 26) as u8);
    if index < 26 {
        letter(index).to_string()
    } else {
        format!("{}{}", client_label(index / 26 - 1), letter(index))
    }
}

/// The words a transcript line can start with, after the client.
const REPLY_WORDS: &[&str] = &[
    "ok", "error", "busy", "status", "room", "dm", "frame", "garbage", "closed", "reset",
];

/// An expected transcript, read from a file.
#[derive(Debug)]
pub struct Expected {
    lines: Vec<ExpectedLine>,
}

#[derive(Debug)]
struct ExpectedLine {
    /// 1-based line number in the file.
    number: usize,
    client: String,
    reply: String,
}

/// A line of an expected transcript that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct SyntaxError {
    /// The line, counted from 1.
    pub line: usize,
    /// What is wrong with it.
    pub problem: String,
}

impl Expected {
    /// Reads a transcript: one `CLIENT REPLY...` line per reply, blank lines
    /// and `#` comments skipped, so that a transcript the player wrote can
    /// be checked against as it is.
    pub fn parse(text: &str) -> Result<Expected, SyntaxError> {
        let mut lines = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let syntax = |problem: &str| SyntaxError {
                line: number,
                problem: problem.to_owned(),
            };
            let words = split_words(line).map_err(syntax)?;
            let Some((client, reply)) = words.split_first() else {
                continue;
            };
            if client.is_empty() || !client.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(syntax(&format!(
                    "expected a client (A, B, ...) then a reply, found `{client}`"
                )));
            }
            match reply.first() {
                Some(word) if REPLY_WORDS.contains(&word.as_str()) => {}
                Some(word) => {
                    return Err(syntax(&format!(
                        "unknown reply `{word}`; expected one of {}",
                        REPLY_WORDS.join(", ")
                    )))
                }
                None => return Err(syntax(&format!("client {client} has no reply"))),
            }
            lines.push(ExpectedLine {
                number,
                client: client.clone(),
                reply: reply.join(" "),
            });
        }
        Ok(Expected { lines })
    }

    /// Number of reply lines.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// Whether the transcript expects no reply at all.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// `received` with its guest names (`randN`) renamed to the ones this
    /// transcript gives in their place, for a replay against several nodes
    /// of a cluster, whose guest names are unique but not one sequence.
    /// Each client's first reply, to its HELLO, says what it was called;
    /// that name is then renamed wherever it appears, and lists are sorted
    /// again, bytewise as the server sorts them. A name that no HELLO explains is left as it is, so a guest
    /// name the cluster gave twice, or one the transcript does not expect,
    /// still shows as a difference.
    pub fn rename_guests(&self, received: &[(String, Vec<String>)]) -> Vec<(String, Vec<String>)> {
        let hello_of = |client: &str| self.lines.iter().find(|line| line.client == client);
        let renames: HashMap<&str, &str> = received
            .iter()
            .filter_map(|(client, lines)| {
                let got = guest_in_hello(lines.first()?)?;
                let want = guest_in_hello(&hello_of(client)?.reply)?;
                Some((got, want))
            })
            .collect();
        let rename = |word: &str| -> String {
            let name = word
                .strip_prefix('"')
                .and_then(|word| word.strip_suffix('"'));
            match name.and_then(|name| renames.get(name)) {
                Some(renamed) => format!("\"{renamed}\""),
                None => word.to_owned(),
            }
        };
        let rename_line = |line: &String| -> String {
            if let Some(list) = line
                .strip_prefix("ok [")
                .and_then(|list| list.strip_suffix(']'))
            {
                let mut names: Vec<String> = split_words(list)
                    .unwrap_or_default()
                    .iter()
                    .map(|word| rename(word))
                    .collect();
                names.sort_by(|a, b| a.trim_matches('"').cmp(b.trim_matches('"')));
                return format!("ok [{}]", names.join(" "));
            }
            let words = split_words(line).unwrap_or_default();
            if words.iter().all(|word| rename(word) == *word) {
                // Nothing to rename: the line stays exactly as received.
                return line.clone();
            }
            words
                .iter()
                .map(|word| rename(word))
                .collect::<Vec<_>>()
                .join(" ")
        };
        received
            .iter()
            .map(|(client, lines)| (client.clone(), lines.iter().map(rename_line).collect()))
            .collect()
    }

    /// Compares with what each client received (its lines in order, without
    /// the client label), returning the first difference in file order.
    pub fn compare(&self, received: &[(String, Vec<String>)]) -> Result<(), Difference> {
        let mut next: HashMap<&str, usize> = HashMap::new();
        let lines_of = |client: &str| {
            received
                .iter()
                .find(|(label, _)| label == client)
                .map_or(&[][..], |(_, lines)| &lines[..])
        };
        for expected in &self.lines {
            let cursor = next.entry(&expected.client).or_default();
            let got = lines_of(&expected.client).get(*cursor);
            if got != Some(&expected.reply) {
                return Err(Difference {
                    line: Some(expected.number),
                    client: expected.client.clone(),
                    expected: Some(expected.reply.clone()),
                    got: got.cloned(),
                });
            }
            *cursor += 1;
        }
        for (client, lines) in received {
            let seen = next.get(client.as_str()).copied().unwrap_or(0);
            if let Some(extra) = lines.get(seen) {
                return Err(Difference {
                    line: None,
                    client: client.clone(),
                    expected: None,
                    got: Some(extra.clone()),
                });
            }
        }
        Ok(())
    }
}

/// The guest name in a reply to HELLO, `ok "randN"`.
fn guest_in_hello(reply: &str) -> Option<&str> {
    let name = reply.strip_prefix("ok \"")?.strip_suffix('"')?;
    let number = name.strip_prefix("rand")?;
    (!number.is_empty() && number.bytes().all(|b| b.is_ascii_digit())).then_some(name)
}

/// Splits a line into words at whitespace outside quotes, dropping a `#`
/// comment that starts outside quotes.
fn split_words(line: &str) -> Result<Vec<String>, &'static str> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_quotes = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if in_quotes => {
                word.push(c);
                word.extend(chars.next());
            }
            '"' => {
                in_quotes = !in_quotes;
                word.push(c);
            }
            '#' if !in_quotes => break,
            c if c.is_whitespace() && !in_quotes => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if in_quotes {
        return Err("a quoted string is not closed");
    }
    if !word.is_empty() {
        words.push(word);
    }
    Ok(words)
}

/// Where a replay first differs from the expected transcript.
#[derive(Debug, PartialEq, Eq)]
pub struct Difference {
    /// The expected line, or `None` when the client received more than the
    /// transcript expects.
    pub line: Option<usize>,
    /// The client whose replies differ.
    pub client: String,
    /// The reply the transcript expects, or `None` past its end.
    pub expected: Option<String>,
    /// The reply received, or `None` when the client received nothing more.
    pub got: Option<String>,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let client = &self.client;
        match (self.line, &self.expected, &self.got) {
            (Some(line), Some(expected), Some(got)) => write!(
                f,
                "line {line}, client {client}:\n  expected: {client} {expected}\n  got:      {client} {got}"
            ),
            (Some(line), Some(expected), None) => write!(
                f,
                "line {line}, client {client}:\n  expected: {client} {expected}\n  got:      nothing more"
            ),
            (_, _, got) => write!(
                f,
                "client {client} received more than expected:\n  got: {client} {}",
                got.as_deref().unwrap_or_default()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: u8, payload: &[u8]) -> Frame {
        Frame::new(opcode, Bytes::copy_from_slice(payload))
    }

    #[test]
    fn guest_names_of_a_cluster_are_renamed_as_the_transcript_names_them() {
        let expected = Expected::parse(
            r#"
            A ok "rand0"
            B ok "rand1"
            A ok ["bee" "rand0" "rand1"]
            B room "lobby" "rand0" "hi"
            "#,
        )
        .unwrap();
        let lines = |lines: &[&str]| lines.iter().map(|line| line.to_string()).collect();
        let received = vec![
            (
                "A".to_owned(),
                lines(&[r#"ok "rand256""#, r#"ok ["bee" "rand256" "rand3"]"#]),
            ),
            (
                "B".to_owned(),
                lines(&[r#"ok "rand3""#, r#"room "lobby" "rand256" "hi""#]),
            ),
        ];
        assert!(expected.compare(&received).is_err());
        assert_eq!(expected.compare(&expected.rename_guests(&received)), Ok(()));
        // A guest name given twice stays a difference.
        let twice = vec![
            ("A".to_owned(), lines(&[r#"ok "rand7""#])),
            ("B".to_owned(), lines(&[r#"ok "rand7""#])),
        ];
        assert!(expected.compare(&expected.rename_guests(&twice)).is_err());
    }

    #[test]
    fn replies_read_as_the_legacy_client_would_show_them() {
        let hello = frame(0x9a, b"\x00rand0");
        assert_eq!(reply_line(&hello, Asked::Hello), r#"ok "rand0""#);
        let list = frame(0x9a, b"\x00\x05alice\x03bob");
        assert_eq!(reply_line(&list, Asked::List), r#"ok ["alice" "bob"]"#);
        assert_eq!(reply_line(&frame(0x9a, b"\x00"), Asked::List), "ok []");
        assert_eq!(
            reply_line(&frame(0x9a, b"\x00\x09short"), Asked::List),
            r#"ok "\tshort""#,
            "a list that does not add up is shown as raw data"
        );
        assert_eq!(
            reply_line(&frame(0x9a, b"\x01Nick not present"), Asked::Other),
            r#"error "Nick not present""#
        );
        assert_eq!(reply_line(&frame(0x9a, b"\x07"), Asked::Other), "status 07");
        let relay = frame(0x15, b"\x05lobby\x05alice\x00\x02hi");
        assert_eq!(
            reply_line(&relay, Asked::Other),
            r#"room "lobby" "alice" "hi""#
        );
        let dm = frame(0x12, b"\x05alice\x00\x02hi");
        assert_eq!(reply_line(&dm, Asked::Other), r#"dm "alice" "hi""#);
        assert_eq!(
            reply_line(&frame(0x12, b"\x05al"), Asked::Other),
            r#"frame 12 "\u{5}al""#
        );
        assert_eq!(
            reply_line(&frame(0x9a, b""), Asked::Other),
            r#"frame 9a """#
        );
    }

    #[test]
    fn quoting_is_reversible() {
        assert_eq!(quote("h\u{e9} \"q\" \\".as_bytes()), r#""hé \"q\" \\""#);
        assert_eq!(quote(b"\n\x00\xff"), r#""\n\u{0}\xff""#);
        assert_ne!(quote(b"\xff"), quote(br"\xff"));
    }

    #[test]
    fn labels_go_past_z() {
        let labels: Vec<String> = [0, 1, 25, 26, 27, 701, 702].map(client_label).to_vec();
        assert_eq!(labels, ["A", "B", "Z", "AA", "AB", "ZZ", "AAA"]);
    }

    #[test]
    fn expected_files_ignore_comments_and_spacing() {
        let text = "# heading\n\nA   ok \"rand0\"   # the name\nB room \"a  #b\" \"x\" \"y\"\n";
        let expected = Expected::parse(text).unwrap();
        assert_eq!(expected.len(), 2);
        let received = vec![
            ("A".to_owned(), vec![r#"ok "rand0""#.to_owned()]),
            ("B".to_owned(), vec![r#"room "a  #b" "x" "y""#.to_owned()]),
        ];
        assert_eq!(expected.compare(&received), Ok(()));
    }

    #[test]
    fn the_first_difference_in_file_order_is_reported() {
        let expected = Expected::parse("A ok\nB ok\nA closed\n").unwrap();
        let mut received = vec![
            ("A".to_owned(), vec!["ok".to_owned(), "reset".to_owned()]),
            ("B".to_owned(), vec!["error \"no\"".to_owned()]),
        ];
        let difference = expected.compare(&received).unwrap_err();
        assert_eq!(difference.line, Some(2));
        assert_eq!(
            difference.to_string(),
            "line 2, client B:\n  expected: B ok\n  got:      B error \"no\""
        );
        received[1].1 = vec!["ok".to_owned()];
        received[0].1.pop();
        let difference = expected.compare(&received).unwrap_err();
        assert_eq!(difference.got, None, "{difference}");
        received[0].1.push("closed".to_owned());
        received[0].1.push("ok".to_owned());
        let difference = expected.compare(&received).unwrap_err();
        assert_eq!(
            (difference.line, difference.got.as_deref()),
            (None, Some("ok"))
        );
    }

    #[test]
    fn malformed_expected_lines_name_the_line() {
        for (text, problem) in [
            ("A ok\nA fine", "line 2: unknown reply `fine`"),
            ("a ok", "line 1: expected a client"),
            ("A ok \"open", "line 1: a quoted string is not closed"),
            ("A  # nothing", "line 1: client A has no reply"),
        ] {
            let err = Expected::parse(text).unwrap_err().to_string();
            assert!(err.starts_with(problem), "{text:?}: {err}");
        }
    }
}
