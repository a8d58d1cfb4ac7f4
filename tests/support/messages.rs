//! Builders for client messages and for the exact server frames tests
//! expect, shared by the integration tests.

use bytes::Bytes;
use parlor_proto::ClientMessage;

use super::{frame_bytes, response_bytes};

// ---------------------------------------------------------------------------
// Client messages

pub(crate) fn bytes(x: impl AsRef<[u8]>) -> Bytes {
    Bytes::copy_from_slice(x.as_ref())
}

pub(crate) fn hello(greeting: impl AsRef<[u8]>) -> ClientMessage {
    ClientMessage::Hello {
        greeting: bytes(greeting),
    }
}

pub(crate) fn nick(name: impl AsRef<[u8]>) -> ClientMessage {
    ClientMessage::Nick { name: bytes(name) }
}

pub(crate) fn join(room: impl AsRef<[u8]>, password: impl AsRef<[u8]>) -> ClientMessage {
    ClientMessage::Join {
        room: bytes(room),
        password: bytes(password),
    }
}

pub(crate) fn leave() -> ClientMessage {
    ClientMessage::Leave
}

pub(crate) fn list_users() -> ClientMessage {
    ClientMessage::ListUsers
}

pub(crate) fn list_rooms() -> ClientMessage {
    ClientMessage::ListRooms
}

pub(crate) fn room_msg(room: impl AsRef<[u8]>, text: impl AsRef<[u8]>) -> ClientMessage {
    ClientMessage::RoomMessage {
        room: bytes(room),
        text: bytes(text),
    }
}

pub(crate) fn dm(target: impl AsRef<[u8]>, text: impl AsRef<[u8]>) -> ClientMessage {
    ClientMessage::DirectMessage {
        target: bytes(target),
        text: bytes(text),
    }
}

/// The real client's heartbeat.
pub(crate) fn heartbeat() -> Vec<u8> {
    frame_bytes(0x13, parlor_proto::legacy::HEARTBEAT_PAYLOAD)
}

/// A message as client wire bytes.
pub(crate) fn wire(message: &ClientMessage) -> Vec<u8> {
    message.to_frame().to_bytes().to_vec()
}

// ---------------------------------------------------------------------------
// Expected server frames

pub(crate) fn error(text: impl AsRef<[u8]>) -> Vec<u8> {
    response_bytes(0x01, text.as_ref())
}

pub(crate) fn try_later(text: impl AsRef<[u8]>) -> Vec<u8> {
    response_bytes(0x02, text.as_ref())
}

/// `9a 00 {u8 len, name}*`, in the order given.
pub(crate) fn names<T: AsRef<[u8]>>(list: &[T]) -> Vec<u8> {
    let mut data = Vec::new();
    for name in list {
        let name = name.as_ref();
        data.push(u8::try_from(name.len()).unwrap());
        data.extend_from_slice(name);
    }
    response_bytes(0x00, &data)
}

/// `15 <u8 room> <u8 sender> <u16 text>`.
pub(crate) fn relay(
    room: impl AsRef<[u8]>,
    sender: impl AsRef<[u8]>,
    text: impl AsRef<[u8]>,
) -> Vec<u8> {
    let (room, sender, text) = (room.as_ref(), sender.as_ref(), text.as_ref());
    let mut payload = vec![u8::try_from(room.len()).unwrap()];
    payload.extend_from_slice(room);
    payload.push(u8::try_from(sender.len()).unwrap());
    payload.extend_from_slice(sender);
    payload.extend_from_slice(&u16::try_from(text.len()).unwrap().to_be_bytes());
    payload.extend_from_slice(text);
    frame_bytes(0x15, &payload)
}

/// `12 <u8 sender> <u16 text>`.
pub(crate) fn dm_relay(sender: impl AsRef<[u8]>, text: impl AsRef<[u8]>) -> Vec<u8> {
    let (sender, text) = (sender.as_ref(), text.as_ref());
    let mut payload = vec![u8::try_from(sender.len()).unwrap()];
    payload.extend_from_slice(sender);
    payload.extend_from_slice(&u16::try_from(text.len()).unwrap().to_be_bytes());
    payload.extend_from_slice(text);
    frame_bytes(0x12, &payload)
}
