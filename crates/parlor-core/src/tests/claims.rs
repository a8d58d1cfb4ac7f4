//! A clustered hub: every name it gives out is claimed through the driver
//! first. The driver here is the test, which plays the cluster's store.

use super::*;
use crate::{ClaimOutcome, NameClaim, NameRequest};

/// A harness whose hub is one node of a cluster.
pub(super) fn clustered() -> Harness {
    clustered_as("a")
}

/// A harness whose hub is node `node` of a cluster.
pub(super) fn clustered_as(node: &str) -> Harness {
    Harness {
        hub: Hub::clustered(Limits::default(), [0x5e; 32], node.into()),
        ..Harness::with_defaults()
    }
}

/// The one name claim among `out`.
fn claim(out: &[Action]) -> &NameClaim {
    let claims: Vec<_> = out
        .iter()
        .filter_map(|action| match action {
            Action::ClaimName(claim) => Some(claim),
            _ => None,
        })
        .collect();
    assert_eq!(claims.len(), 1, "one claim in {out:?}");
    assert!(out.iter().any(Action::owes_reply), "the reply waits for it");
    claims[0]
}

fn released(out: &[Action]) -> Vec<&[u8]> {
    out.iter()
        .filter_map(|action| match action {
            Action::ReleaseName(name) => Some(&name[..]),
            _ => None,
        })
        .collect()
}

impl Harness {
    /// Reports the outcome of `claim`, as the driver does.
    fn claimed(&mut self, claim: &NameClaim, outcome: ClaimOutcome) -> Vec<Action> {
        let mut out = Vec::new();
        let (conn, ticket) = (claim.conn, claim.ticket);
        self.hub
            .name_claimed(conn, ticket, outcome, self.now, &mut out);
        self.hub.check_invariants().unwrap();
        out
    }

    /// Connection `id`, which the cluster named `name`.
    pub(super) fn guest(&mut self, id: u64, name: &str) -> ConnId {
        let conn = ConnId(id);
        let out = self.connect(conn);
        let request = claim(&out);
        assert_eq!((request.conn, &request.name), (conn, &NameRequest::Guest));
        let request = request.clone();
        assert!(self
            .claimed(&request, ClaimOutcome::Claimed(bytes(name)))
            .is_empty());
        conn
    }
}

#[test]
fn a_new_connection_is_named_by_the_cluster_before_its_hello_is_answered() {
    let mut h = clustered();
    let conn = ConnId(1);
    let out = h.connect(conn);
    assert!(sent(&out).is_empty(), "nothing is said before the name");
    h.hub.check_invariants().unwrap();
    let request = claim(&out).clone();
    assert_eq!(h.hub.name_of(conn), Some(&b""[..]));
    h.claimed(&request, ClaimOutcome::Claimed(bytes("rand4096")));
    let hello = ClientMessage::Hello {
        greeting: bytes("hi"),
    };
    let reply = [&[0, 0, 0, 9, 4, 0x17, 0x9a, 0][..], b"rand4096"].concat();
    assert_eq!(sent(&h.send(conn, hello)), [(conn, reply)]);
}

#[test]
fn a_new_connection_the_cluster_cannot_name_is_told_and_closed() {
    let mut h = clustered();
    let conn = ConnId(1);
    let out = h.connect(conn);
    let request = claim(&out).clone();
    let out = h.claimed(&request, ClaimOutcome::Unavailable);
    assert_eq!(sent(&out), [(conn, response(2, text::CLUSTER_UNAVAILABLE))]);
    assert_eq!(closed(&out), [(conn, CloseReason::ClusterUnavailable)]);
    assert!(!h.hub.is_connected(conn));
}

#[test]
fn a_nick_won_in_the_cluster_releases_the_old_name_after_the_answer() {
    let mut h = clustered();
    let a = h.guest(1, "rand0");
    let out = h.nick(a, "alice");
    assert!(sent(&out).is_empty(), "the answer waits for the claim");
    let request = claim(&out);
    assert_eq!(request.name, NameRequest::Exactly(bytes("alice")));
    let request = request.clone();
    let out = h.claimed(&request, ClaimOutcome::Claimed(bytes("alice")));
    assert_eq!(sent(&out), [(a, ok())]);
    assert_eq!(released(&out), [b"rand0"]);
    assert_eq!(h.hub.name_of(a), Some(&b"alice"[..]));
}

#[test]
fn a_nick_the_cluster_refuses_leaves_the_user_as_it_was() {
    let mut h = clustered();
    let a = h.guest(1, "rand0");
    for (outcome, status, reply) in [
        (ClaimOutcome::Taken, 1, text::NICK_TAKEN),
        (ClaimOutcome::Unavailable, 2, text::CLUSTER_UNAVAILABLE),
    ] {
        let out = h.nick(a, "alice");
        let request = claim(&out).clone();
        let out = h.claimed(&request, outcome);
        assert_eq!(sent(&out), [(a, response(status, reply))]);
        assert!(released(&out).is_empty());
        assert_eq!(h.hub.name_of(a), Some(&b"rand0"[..]));
    }
}

#[test]
fn a_name_held_on_this_node_is_refused_without_asking_the_cluster() {
    let mut h = clustered();
    let (a, b) = (h.guest(1, "rand0"), h.guest(2, "rand1"));
    let out = h.nick(b, "rand0");
    assert_eq!(sent(&out), [(b, response(1, text::NICK_TAKEN))]);
    assert!(!out.iter().any(Action::owes_reply));
    assert_eq!(h.hub.name_of(a), Some(&b"rand0"[..]));
}

#[test]
fn a_name_won_for_a_connection_that_is_gone_is_released_at_once() {
    let mut h = clustered();
    let a = h.guest(1, "rand0");
    let out = h.nick(a, "alice");
    let request = claim(&out).clone();
    assert_eq!(released(&h.disconnect(a)), [b"rand0"]);
    let out = h.claimed(&request, ClaimOutcome::Claimed(bytes("alice")));
    assert_eq!(released(&out), [b"alice"]);
    assert!(sent(&out).is_empty());
}

#[test]
fn list_users_outside_a_room_lists_every_node_once_and_in_order() {
    let mut h = clustered();
    let a = h.guest(1, "mallory");
    h.hub.remote_name_held(bytes("bob"), "b".into());
    h.hub.remote_name_held(bytes("zed"), "b".into());
    // The copy of the store can lag behind a name that moved here.
    h.hub.remote_name_held(bytes("mallory"), "b".into());
    let expected = [
        &[0, 0, 0, 17, 4, 0x17, 0x9a, 0][..],
        b"\x03bob\x07mallory\x03zed",
    ]
    .concat();
    assert_eq!(sent(&h.send(a, ClientMessage::ListUsers)), [(a, expected)]);
    h.hub.remote_name_released(b"zed", h.now, &mut Vec::new());
    h.hub.remote_names_cleared();
    let expected = [&[0, 0, 0, 9, 4, 0x17, 0x9a, 0][..], b"\x07mallory"].concat();
    assert_eq!(sent(&h.send(a, ClientMessage::ListUsers)), [(a, expected)]);
}
