//! How names, rooms and owners are written in the key-value buckets.
//!
//! A nick or a room name is any bytes `21`–`7e` and `80`–`ff`, but a key
//! may only hold `[-/_=.a-zA-Z0-9]`, so a name's key is `n.` and the name
//! in lowercase hex (a room's, `r.` and its name): one key per name,
//! whatever its bytes, and the `n.>` prefix selects every name and nothing
//! else in the bucket.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The prefix of every name's key; watching `n.>` sees every name.
pub(crate) const NAME_PREFIX: &str = "n.";
/// The prefix of every room's key in the rooms bucket.
pub(crate) const ROOM_PREFIX: &str = "r.";
/// The key whose value is the next guest number not yet handed to a node.
pub(crate) const GUEST_COUNTER: &str = "guests";

/// The key of `name` in the names bucket.
pub(crate) fn name_key(name: &[u8]) -> String {
    prefixed_hex(NAME_PREFIX, name)
}

/// The name whose key is `key`; `None` for any other key.
pub(crate) fn name_of_key(key: &str) -> Option<Bytes> {
    from_hex(key.strip_prefix(NAME_PREFIX)?)
}

/// The key of `room` in the rooms bucket.
pub(crate) fn room_key(room: &[u8]) -> String {
    prefixed_hex(ROOM_PREFIX, room)
}

/// The room whose key is `key`; `None` for any other key.
pub(crate) fn room_of_key(key: &str) -> Option<Bytes> {
    from_hex(key.strip_prefix(ROOM_PREFIX)?)
}

/// `bytes` in lowercase hex.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    prefixed_hex("", bytes)
}

/// `prefix` and then `bytes` in lowercase hex.
fn prefixed_hex(prefix: &str, bytes: &[u8]) -> String {
    let mut text = String::with_capacity(prefix.len() + 2 * bytes.len());
    text.push_str(prefix);
    for byte in bytes {
        text.push(char::from(HEX[usize::from(byte >> 4)]));
        text.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    text
}

/// The bytes that `hex` (lowercase, at least one byte) spells.
pub(crate) fn from_hex(hex: &str) -> Option<Bytes> {
    let hex = hex.as_bytes();
    if hex.is_empty() || !hex.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).filter(|_| !c.is_ascii_uppercase());
    hex.chunks(2)
        .map(|pair| Some((digit(pair[0])? << 4 | digit(pair[1])?) as u8))
        .collect::<Option<Vec<u8>>>()
        .map(Bytes::from)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Who holds a name: the node, and which run of it (its incarnation, drawn
/// at random at every start and after every lost lease). A name whose
/// owner's run is over is nobody's, and is swept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct Owner<'a> {
    pub(crate) node: &'a str,
    pub(crate) incarnation: u64,
}

/// One run of a node, owning its copy of the node id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Run {
    pub(crate) node: String,
    pub(crate) incarnation: u64,
}

impl Run {
    /// A new run of `node`: its incarnation drawn at random, and never 0,
    /// which the relay keeps for a run it has not seen.
    pub(crate) fn fresh(node: String) -> Run {
        Run {
            node,
            incarnation: rand::random::<u64>().max(1),
        }
    }

    pub(crate) fn owner(&self) -> Owner<'_> {
        Owner {
            node: &self.node,
            incarnation: self.incarnation,
        }
    }

    /// The value stored with a name this run holds, and in its node record.
    pub(crate) fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(&self.owner()).expect("plain fields serialize"))
    }

    /// The run a stored value names; `None` for a value no node wrote.
    pub(crate) fn decode(value: &[u8]) -> Option<Run> {
        let owner: Owner<'_> = serde_json::from_slice(value).ok()?;
        Some(Run {
            node: owner.node.to_owned(),
            incarnation: owner.incarnation,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_has_a_key_of_allowed_characters_that_gives_it_back() {
        for name in [&b"alice"[..], b"rand0", b"\x80\xff.*>", b"A"] {
            let key = name_key(name);
            assert!(key
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.'));
            assert_eq!(name_of_key(&key).as_deref(), Some(name));
        }
        assert_eq!(name_key(b"Ab"), "n.4162");
        assert_eq!(room_key(b"Ab"), "r.4162");
        assert_eq!(room_of_key("r.4162").as_deref(), Some(&b"Ab"[..]));
        assert_eq!(room_of_key("n.4162"), None);
        for other in [GUEST_COUNTER, "n.", "n.4", "n.4G", "n.4A", "x.41"] {
            assert_eq!(name_of_key(other), None, "{other}");
        }
    }

    #[test]
    fn a_run_reads_back_what_it_writes() {
        let run = Run {
            node: "node-a".into(),
            incarnation: u64::MAX,
        };
        assert_eq!(Run::decode(&run.encode()), Some(run));
        assert_eq!(Run::decode(b"not json"), None);
    }
}
