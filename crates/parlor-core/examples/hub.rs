//! A hub driven by hand: two users connect, join a room and one speaks; then
//! the clock moves past the idle timeout. No sockets, no runtime: every
//! input is a call with the time, every output an [`Action`] to carry out.
//!
//! `cargo run -p parlor-core --example hub`

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parlor_core::{Action, ConnId, Hub, Limits};
use parlor_proto::ClientMessage;

fn main() {
    // The seed makes resume tokens; a server takes it from the OS.
    let mut hub = Hub::new(Limits::default(), [0; 32]);
    let mut now = Instant::now();
    let mut out = Vec::new();
    let peer = SocketAddr::from(([127, 0, 0, 1], 40_000));
    let (alice, bob) = (ConnId(1), ConnId(2));

    for conn in [alice, bob] {
        hub.connect(conn, peer, now, &mut out);
        let join = ClientMessage::Join {
            room: Bytes::from_static(b"lobby"),
            password: Bytes::new(),
        };
        hub.handle(conn, join, now, &mut out);
    }
    show("two joins", &mut out);

    now += Duration::from_millis(10);
    let message = ClientMessage::RoomMessage {
        room: Bytes::from_static(b"lobby"),
        text: Bytes::from_static(b"hello"),
    };
    hub.handle(alice, message, now, &mut out);
    show("alice speaks", &mut out);

    // Nothing is heard from either again. The driver asks when to come back
    // and comes back then, until the hub has no deadline left: first the
    // handshake deadline passes (both sent a frame, so the hub re-arms),
    // then the idle timeout closes both connections.
    let started = now;
    while let Some(deadline) = hub.poll_timeout() {
        now = deadline;
        hub.handle_timeout(now, &mut out);
        show(&format!("{:?} later", now - started), &mut out);
    }
    assert!(!hub.is_connected(alice) && !hub.is_connected(bob));
}

/// Prints what the hub asked for, as a driver would carry it out, in order.
fn show(what: &str, out: &mut Vec<Action>) {
    println!("{what}:");
    for action in out.drain(..) {
        match &action {
            Action::Send { .. } | Action::Broadcast { .. } => {
                for (to, frame) in action.frames() {
                    println!("  send {to} {:02x?}", &frame[..]);
                }
            }
            Action::Close { conn, reason } => println!("  close {conn}: {reason}"),
            Action::Password(_) | Action::WrapKeys(_) => {
                println!("  a job to run off the event loop")
            }
            // Only a hub made with Hub::clustered asks for these.
            Action::ClaimName(_)
            | Action::ReleaseName(_)
            | Action::EnterRoom(_)
            | Action::LeaveRoom { .. }
            | Action::RenameMember(_)
            | Action::Relay { .. }
            | Action::RelayDirect(_)
            | Action::RelayDmKey(_)
            | Action::CommitEpoch(_)
            | Action::RelayToMembers(_)
            | Action::RelayToUser(_)
            | Action::RelayFileRequest(_)
            | Action::AskFileTarget(_)
            | Action::AnswerFileRequest { .. }
            | Action::AnswerDmKey { .. } => println!("  work for the cluster's driver"),
        }
    }
}
