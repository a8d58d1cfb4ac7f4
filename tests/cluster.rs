//! Cluster mode against real nats-server processes on loopback ports:
//! parlor nodes in this process (or as child processes, where a node must
//! be killed), and clients alternating between them, asserting the exact
//! bytes on the wire as `legacy_rules.rs` does.

mod support;
use support::nats::NatsServer;
use support::process::ServerProcess;
use support::*;

use std::time::{Duration, Instant};

use parlor_proto::text;
use parlor_proto::ClientMessage;
use parlor_server::config::{ClusterConfig, Config};

/// The settings of node `node_id` of the cluster on `nats`. The tests
/// send NICK after NICK (races, and waiting for a name to come free),
/// password JOIN after password JOIN (the room race) and message after
/// message (relay order), and none of them is a test of a rate limit.
fn node_config(nats: &[&NatsServer], node_id: &str) -> Config {
    let servers = nats.iter().map(|server| server.url.clone()).collect();
    Config {
        cluster: Some(ClusterConfig::new(servers, node_id.to_owned())),
        nick_rate_limit: 1000,
        password_join_rate_limit: 1000,
        rate_limit_messages: 1000,
        ..test_config()
    }
}

async fn node(nats: &NatsServer, node_id: &str) -> TestServer {
    TestServer::start(node_config(&[nats], node_id)).await
}

async fn named(server: &TestServer, name: &str) -> Client {
    let (mut client, _) = server.greeted().await;
    client.request(&nick(name), &ok_bytes()).await;
    client
}

/// A greeted client with nick `name`, in `room` (joined without password).
async fn joined(server: &TestServer, name: &str, room: &str) -> Client {
    let mut client = named(server, name).await;
    client.request(&join(room, ""), &ok_bytes()).await;
    client
}

/// Sends `request` until the reply is exactly `expected` (another node's
/// change arrives a moment later, through a key-value watch); panics after
/// [`PATIENCE`]. Returns how long that took.
async fn reply_becomes(client: &mut Client, request: &ClientMessage, expected: &[u8]) -> Duration {
    let start = Instant::now();
    loop {
        client.send(request).await;
        let got = client.recv_raw().await;
        if got == expected {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < PATIENCE,
            "\nstayed: {}\n  want: {}",
            show_frame(&got),
            show_frame(expected)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asks LIST_USERS until the answer is `expected` (the other nodes' names
/// arrive a moment after they are won): everyone outside a room, the room's
/// members inside one.
async fn users_become(client: &mut Client, expected: &[&str]) -> Duration {
    reply_becomes(client, &list_users(), &names(expected)).await
}

/// Asks LIST_ROOMS until the answer is `expected`.
async fn rooms_become(client: &mut Client, expected: &[&str]) -> Duration {
    reply_becomes(client, &list_rooms(), &names(expected)).await
}

/// Sends NICK until it is answered `9a 00`: a name released on one node is
/// free on the others a moment later. Returns how long that took.
async fn nick_until_won(client: &mut Client, name: &str) -> Duration {
    let start = Instant::now();
    let taken = error(text::NICK_TAKEN);
    loop {
        client.send(&nick(name)).await;
        let reply = client.recv_raw().await;
        if reply == ok_bytes() {
            return start.elapsed();
        }
        assert_eq!(reply, taken, "{}", hex(&reply));
        assert!(start.elapsed() < PATIENCE, "{name} never came free");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_nick_held_on_one_node_is_refused_on_the_other_with_the_legacy_text() {
    let nats = NatsServer::start();
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);
    let mut alice = named(&a, "alice").await;
    let (mut other, _) = b.greeted().await;
    other
        .request(&nick("alice"), &error(text::NICK_TAKEN))
        .await;
    other.request(&nick("bob"), &ok_bytes()).await;
    users_become(&mut alice, &["alice", "bob"]).await;
    users_become(&mut other, &["alice", "bob"]).await;
    alice.close().await;
    nick_until_won(&mut other, "alice").await;
    users_become(&mut other, &["alice"]).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn guest_names_are_unique_across_nodes() {
    let nats = NatsServer::start();
    let nodes = [node(&nats, "a").await, node(&nats, "b").await];
    let mut seen = std::collections::BTreeSet::new();
    let mut clients = Vec::new();
    for round in 0..20 {
        let (client, name) = nodes[round % 2].greeted().await;
        assert!(name.starts_with(b"rand"), "{}", hex(&name));
        assert!(seen.insert(name.clone()), "{} given twice", hex(&name));
        clients.push(client);
    }
    // A guest name taken with NICK on one node is skipped on the other.
    let next = nodes[0].greeted().await.1;
    let number: u64 = std::str::from_utf8(&next[4..]).unwrap().parse().unwrap();
    let taken = format!("rand{}", number + 1);
    let holder = named(&nodes[1], &taken).await;
    let (_, after) = nodes[0].greeted().await;
    assert_ne!(after, taken.as_bytes());
    drop(holder);
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test]
async fn two_nodes_racing_for_one_nick_give_it_to_exactly_one() {
    let nats = NatsServer::start();
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);
    let (mut left, _) = a.greeted().await;
    let (mut right, _) = b.greeted().await;
    let taken = error(text::NICK_TAKEN);
    for round in 0..50 {
        let name = format!("racer{}", round % 5);
        let wire = wire(&nick(&name));
        // Both NICKs leave before either reply is read.
        tokio::join!(left.send_raw(&wire), right.send_raw(&wire));
        let (l, r) = tokio::join!(left.recv_raw(), right.recv_raw());
        let won = [&l, &r]
            .iter()
            .filter(|reply| ***reply == ok_bytes())
            .count();
        assert_eq!(won, 1, "round {round}: {} / {}", hex(&l), hex(&r));
        assert!(
            l == taken || r == taken,
            "round {round}: the loser gets the legacy text: {} / {}",
            hex(&l),
            hex(&r)
        );
        // The winner moves on, freeing the name for a later round.
        let winner = if l == ok_bytes() {
            &mut left
        } else {
            &mut right
        };
        winner
            .request(&nick(format!("parked{round}")), &ok_bytes())
            .await;
    }
    a.stop().await;
    b.stop().await;
}

/// The lease of the failure tests: short, so that they are quick.
const LEASE: Duration = Duration::from_secs(3);

fn short_lease(nats: &NatsServer, node_id: &str) -> Config {
    let mut config = node_config(&[nats], node_id);
    config.cluster.as_mut().unwrap().lease_secs = LEASE.as_secs_f64();
    config
}

#[tokio::test]
async fn a_killed_node_has_its_names_free_on_the_others_within_the_lease() {
    let nats = NatsServer::start();
    let survivor = TestServer::start(short_lease(&nats, "survivor")).await;
    let mut doomed = ServerProcess::start(&short_lease(&nats, "doomed"), false);
    let mut victim = Client::connect(doomed.addr).await;
    victim.hello().await;
    victim.request(&nick("victim"), &ok_bytes()).await;
    let (mut heir, _) = survivor.greeted().await;
    heir.request(&nick("victim"), &error(text::NICK_TAKEN))
        .await;
    doomed.kill();
    let took = nick_until_won(&mut heir, "victim").await;
    println!("nick claimable {took:?} after SIGKILL (lease {LEASE:?})");
    assert!(took < LEASE, "{took:?}");
    survivor.stop().await;
}

#[tokio::test]
async fn a_node_restarted_with_its_id_frees_the_names_of_its_last_run_at_once() {
    let nats = NatsServer::start();
    let config = short_lease(&nats, "phoenix");
    let mut first = ServerProcess::start(&config, false);
    let mut client = Client::connect(first.addr).await;
    client.hello().await;
    client.request(&nick("carol"), &ok_bytes()).await;
    first.kill();
    let second = ServerProcess::start(&config, false);
    let mut again = Client::connect(second.addr).await;
    again.hello().await;
    let took = nick_until_won(&mut again, "carol").await;
    println!("nick of the last run claimable {took:?} after the restart");
    assert!(took < LEASE / 2, "{took:?}: not waiting for the lease");
}

#[tokio::test]
async fn sigterm_releases_a_nodes_names_before_it_exits() {
    let nats = NatsServer::start();
    // The default lease: what is measured is that no lease is waited for.
    let other = node(&nats, "other").await;
    let mut leaving = ServerProcess::start(&node_config(&[&nats], "leaving"), false);
    let mut client = Client::connect(leaving.addr).await;
    client.hello().await;
    client.request(&nick("dave"), &ok_bytes()).await;
    let status = leaving.terminate(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    let (mut heir, _) = other.greeted().await;
    // Released before the exit: the very first try wins.
    heir.request(&nick("dave"), &ok_bytes()).await;
    other.stop().await;
}

#[tokio::test]
async fn a_node_that_loses_nats_fences_itself_and_rejoins_when_it_returns() {
    let mut nats = NatsServer::start();
    let node = TestServer::start(short_lease(&nats, "island")).await;
    let mut inside = named(&node, "erin").await;
    let lost = Instant::now();
    nats.kill();
    inside.expect_closed_within(LEASE).await;
    println!("connections closed {:?} after NATS died", lost.elapsed());
    let mut refused = node.client().await;
    refused.expect(&try_later(text::CLUSTER_UNAVAILABLE)).await;
    refused.expect_closed().await;
    nats.restart();
    let deadline = Instant::now() + PATIENCE;
    let name = loop {
        let mut client = node.client().await;
        client.send_raw(&frame_bytes(0x9b, GREETING)).await;
        let reply = client.recv_raw().await;
        if reply[6..8] == [0x9a, 0x00] {
            break reply[8..].to_vec();
        }
        assert_eq!(reply, try_later(text::CLUSTER_UNAVAILABLE));
        assert!(Instant::now() < deadline, "never rejoined");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(name.starts_with(b"rand"), "{}", hex(&name));
    let mut back = node.client().await;
    back.hello().await;
    nick_until_won(&mut back, "erin").await;
    node.stop().await;
}

#[test]
fn a_node_that_cannot_reach_nats_does_not_start_and_says_why() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_parlor"))
        .args(["serve", "--listen", "127.0.0.1:0", "--tls-listen", "off"])
        .args(["--cluster", "nats://127.0.0.1:1", "--node-id", "alone"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "parlor: cannot join the cluster: cannot connect to NATS at nats://127.0.0.1:1"
        ),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------
// Rooms, room messages and DMs across nodes

/// A room made on one node is the same room on the other: its password
/// lets a client of the other node in, and a wrong or empty one gets the
/// legacy text; an open room's (empty) password holds there too.
#[tokio::test]
async fn a_room_made_on_one_node_is_joined_from_the_other_with_its_password() {
    let nats = NatsServer::start();
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);
    let wrong = error(text::WRONG_PASSWORD);
    let mut alice = named(&a, "alice").await;
    alice.request(&join("vault", "sesame"), &ok_bytes()).await;
    let mut bob = named(&b, "bob").await;
    bob.request(&join("vault", "sesam"), &wrong).await;
    bob.request(&join("vault", ""), &wrong).await;
    bob.request(&join("vault", "sesame"), &ok_bytes()).await;
    users_become(&mut alice, &["alice", "bob"]).await;
    users_become(&mut bob, &["alice", "bob"]).await;
    // An open room made on b: a password is wrong for it on a.
    let mut carol = joined(&b, "carol", "lobby").await;
    let mut dave = named(&a, "dave").await;
    dave.request(&join("lobby", "pw"), &wrong).await;
    dave.request(&join("lobby", ""), &ok_bytes()).await;
    users_become(&mut carol, &["carol", "dave"]).await;
    a.stop().await;
    b.stop().await;
}

/// LIST_ROOMS lists every node's rooms, LIST_USERS in a room its members
/// on every node, and LIST_USERS outside a room every node's users; all
/// sorted bytewise, on either node.
#[tokio::test]
async fn lists_show_the_rooms_and_members_of_every_node_sorted() {
    let nats = NatsServer::start();
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);
    let mut zoe = joined(&a, "zoe", "zoo").await;
    let mut amy = joined(&b, "amy", "attic").await;
    let mut max = joined(&b, "max", "zoo").await;
    let mut kim = named(&a, "kim").await;
    let mut bea = named(&b, "bea").await;
    rooms_become(&mut kim, &["attic", "zoo"]).await;
    rooms_become(&mut bea, &["attic", "zoo"]).await;
    users_become(&mut zoe, &["max", "zoe"]).await;
    users_become(&mut max, &["max", "zoe"]).await;
    users_become(&mut amy, &["amy"]).await;
    let everyone = ["amy", "bea", "kim", "max", "zoe"];
    users_become(&mut kim, &everyone).await;
    users_become(&mut bea, &everyone).await;
    a.stop().await;
    b.stop().await;
}

/// A room goes when its last member on any node leaves, moves to another
/// room or disconnects, and a mover is out of the first room everywhere.
/// A room made again gets its new creator's password.
#[tokio::test]
async fn a_room_goes_when_its_last_member_anywhere_leaves_moves_or_disconnects() {
    let nats = NatsServer::start();
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);
    let mut watch_a = named(&a, "watch-a").await;
    let mut watch_b = named(&b, "watch-b").await;
    let mut anna = named(&a, "anna").await;
    let mut bert = named(&b, "bert").await;

    // LEAVE.
    anna.request(&join("vault", "one"), &ok_bytes()).await;
    bert.request(&join("vault", "one"), &ok_bytes()).await;
    anna.request(&leave(), &ok_bytes()).await;
    users_become(&mut bert, &["bert"]).await;
    rooms_become(&mut watch_a, &["vault"]).await;
    bert.request(&leave(), &ok_bytes()).await;
    rooms_become(&mut watch_a, &[]).await;
    rooms_become(&mut watch_b, &[]).await;
    anna.request(&join("vault", "two"), &ok_bytes()).await;
    bert.request(&join("vault", "one"), &error(text::WRONG_PASSWORD))
        .await;
    bert.request(&join("vault", "two"), &ok_bytes()).await;

    // Moving: JOIN of another room, with no LEAVE first.
    anna.request(&join("attic", ""), &ok_bytes()).await;
    users_become(&mut bert, &["bert"]).await;
    rooms_become(&mut watch_b, &["attic", "vault"]).await;
    bert.request(&join("attic", ""), &ok_bytes()).await;
    rooms_become(&mut watch_a, &["attic"]).await;
    users_become(&mut anna, &["anna", "bert"]).await;

    // Disconnecting.
    anna.close().await;
    users_become(&mut bert, &["bert"]).await;
    bert.close().await;
    rooms_become(&mut watch_a, &[]).await;
    rooms_become(&mut watch_b, &[]).await;
    a.stop().await;
    b.stop().await;
}

/// `max_room_members` counts the members of every node: a room full on one
/// node is full to a JOIN on the other, with the exact legacy reply, until
/// a member leaves.
#[tokio::test]
async fn the_member_limit_counts_every_nodes_members() {
    let nats = NatsServer::start();
    let limited = |node_id| Config {
        max_room_members: 2,
        ..node_config(&[&nats], node_id)
    };
    let a = TestServer::start(limited("a")).await;
    let b = TestServer::start(limited("b")).await;
    let full = try_later(text::room_is_full(b"duo").concat());
    let mut anna = joined(&a, "anna", "duo").await;
    let _bert = joined(&a, "bert", "duo").await;
    let mut cleo = named(&b, "cleo").await;
    cleo.request(&join("duo", ""), &full).await;
    cleo.request(&list_rooms(), &names(&["duo"])).await;
    anna.request(&leave(), &ok_bytes()).await;
    reply_becomes(&mut cleo, &join("duo", ""), &ok_bytes()).await;
    users_become(&mut cleo, &["bert", "cleo"]).await;
    // Full again, now to a JOIN on a.
    anna.request(&join("duo", ""), &full).await;
    a.stop().await;
    b.stop().await;
}

/// Two JOINs making one new room on two nodes at once, with different
/// passwords: exactly one makes it, and the other is judged against the
/// room as made, so it gets the wrong-password text.
#[tokio::test]
async fn two_nodes_racing_to_make_one_room_give_it_to_exactly_one() {
    let nats = NatsServer::start();
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);
    let (mut left, _) = a.greeted().await;
    let (mut right, _) = b.greeted().await;
    let wrong = error(text::WRONG_PASSWORD);
    for round in 0..30 {
        let room = format!("race{round}");
        let (to_left, to_right) = (wire(&join(&room, "left")), wire(&join(&room, "right")));
        // Both JOINs leave before either reply is read.
        tokio::join!(left.send_raw(&to_left), right.send_raw(&to_right));
        let (l, r) = tokio::join!(left.recv_raw(), right.recv_raw());
        let outcome = (l == ok_bytes(), r == ok_bytes());
        assert!(
            outcome == (true, false) && r == wrong || outcome == (false, true) && l == wrong,
            "round {round}: {} / {}",
            show_frame(&l),
            show_frame(&r)
        );
        // The winner leaves, so the room goes (the loser is in no room).
        let winner = if outcome.0 { &mut left } else { &mut right };
        winner.request(&leave(), &ok_bytes()).await;
    }
    rooms_become(&mut left, &[]).await;
    rooms_become(&mut right, &[]).await;
    a.stop().await;
    b.stop().await;
}

/// A room message reaches the members on both nodes exactly, the sender
/// gets `9a 00` and no copy, and one sender's messages arrive on the other
/// node in the order they were sent.
#[tokio::test]
async fn room_messages_reach_every_node_exactly_and_in_the_senders_order() {
    let nats = NatsServer::start();
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);
    let mut alice = joined(&a, "alice", "den").await;
    let mut bob = joined(&b, "bob", "den").await;
    let mut carol = joined(&a, "carol", "den").await;
    let members = ["alice", "bob", "carol"];
    users_become(&mut alice, &members).await;
    users_become(&mut bob, &members).await;

    alice
        .request(&room_msg("den", "hello, both nodes"), &ok_bytes())
        .await;
    bob.expect(&relay("den", "alice", "hello, both nodes"))
        .await;
    carol
        .expect(&relay("den", "alice", "hello, both nodes"))
        .await;
    alice.expect_silence(Duration::from_millis(300)).await;

    let numbered = |i: usize| format!("message {i:03}");
    for i in 0..100 {
        alice
            .request(&room_msg("den", numbered(i)), &ok_bytes())
            .await;
    }
    for i in 0..100 {
        bob.expect(&relay("den", "alice", numbered(i))).await;
        carol.expect(&relay("den", "alice", numbered(i))).await;
    }
    alice.expect_silence(Duration::from_millis(300)).await;
    bob.expect_silence(Duration::from_millis(20)).await;
    a.stop().await;
    b.stop().await;
}

/// A DM reaches its target on the other node, in both directions, with
/// the exact frame; a DM to a nick nobody holds gets the legacy text.
#[tokio::test]
async fn dms_cross_nodes_both_ways_and_unknown_nicks_are_not_present() {
    let nats = NatsServer::start();
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);
    let mut alice = named(&a, "alice").await;
    let mut bob = named(&b, "bob").await;
    users_become(&mut alice, &["alice", "bob"]).await;
    users_become(&mut bob, &["alice", "bob"]).await;
    alice
        .request(&dm("bob", "hello bob, this is a DM"), &ok_bytes())
        .await;
    bob.expect(&dm_relay("alice", "hello bob, this is a DM"))
        .await;
    alice
        .request(
            &dm("nobody", "are you there?"),
            &error(text::NICK_NOT_PRESENT),
        )
        .await;
    bob.request(&dm("alice", "hi back"), &ok_bytes()).await;
    alice.expect(&dm_relay("bob", "hi back")).await;
    bob.request(&dm("nobody", "x"), &error(text::NICK_NOT_PRESENT))
        .await;
    a.stop().await;
    b.stop().await;
}

/// A NICK while in a room renames the member in that room on every node:
/// the other node's LIST_USERS shows the new name, not the old, and relays
/// carry it.
#[tokio::test]
async fn a_nick_in_a_room_renames_the_member_on_every_node() {
    let nats = NatsServer::start();
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);
    let mut alice = joined(&a, "alice", "den").await;
    let mut bob = joined(&b, "bob", "den").await;
    users_become(&mut alice, &["alice", "bob"]).await;
    bob.request(&nick("bobby"), &ok_bytes()).await;
    users_become(&mut alice, &["alice", "bobby"]).await;
    users_become(&mut bob, &["alice", "bobby"]).await;
    bob.request(&room_msg("den", "new name"), &ok_bytes()).await;
    alice.expect(&relay("den", "bobby", "new name")).await;
    a.stop().await;
    b.stop().await;
}

/// After a SIGKILL, the killed node's members leave their rooms on the
/// other nodes within the lease, and a room that had only them goes.
#[tokio::test]
async fn a_killed_node_leaves_its_rooms_within_the_lease() {
    let nats = NatsServer::start();
    let survivor = TestServer::start(short_lease(&nats, "survivor")).await;
    let mut doomed = ServerProcess::start(&short_lease(&nats, "doomed"), false);
    let mut victim = Client::connect(doomed.addr).await;
    victim.hello().await;
    victim.request(&nick("victim"), &ok_bytes()).await;
    victim.request(&join("shared", ""), &ok_bytes()).await;
    let mut hermit = Client::connect(doomed.addr).await;
    hermit.hello().await;
    hermit.request(&join("solo", ""), &ok_bytes()).await;
    let mut heir = joined(&survivor, "heir", "shared").await;
    let mut watcher = named(&survivor, "watcher").await;
    users_become(&mut heir, &["heir", "victim"]).await;
    rooms_become(&mut watcher, &["shared", "solo"]).await;

    let killed = Instant::now();
    doomed.kill();
    users_become(&mut heir, &["heir"]).await;
    let left = killed.elapsed();
    rooms_become(&mut watcher, &["shared"]).await;
    let gone = killed.elapsed();
    eprintln!("member gone {left:?}, room gone {gone:?} after SIGKILL (lease {LEASE:?})");
    assert!(left < LEASE, "{left:?}");
    assert!(gone < LEASE, "{gone:?}");
    survivor.stop().await;
}

/// The delivery promise with members on three nodes: every member that
/// reads gets every message, in the sender's order; a member that never
/// reads is disconnected as a slow consumer once its queue is full, after
/// a prefix of the messages in order, never with one skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_on_every_node_gets_every_message_or_is_cut_off_as_slow() {
    let nats = NatsServer::start();
    let start = |node_id| {
        let config = Config {
            rate_limit_messages: 100_000,
            ..node_config(&[&nats], node_id)
        };
        TestServer::start(config)
    };
    let nodes = [start("a").await, start("b").await, start("c").await];
    let mut sender = joined(&nodes[0], "m0", "flood").await;
    let mut readers = Vec::new();
    for (index, node) in nodes.iter().cycle().skip(1).take(5).enumerate() {
        readers.push(joined(node, &format!("m{}", index + 1), "flood").await);
    }
    let mut slow = joined(&nodes[2], "slow", "flood").await;
    let everyone = ["m0", "m1", "m2", "m3", "m4", "m5", "slow"];
    reply_becomes(&mut sender, &list_users(), &names(&everyone)).await;
    // 12 MB in all: far more than the slow member's queue (1 MiB) and
    // socket buffers. Sent in rounds that the readers keep up with on
    // this 2-core machine, so that only the member that never reads falls
    // behind.
    let body = "x".repeat(2000);
    let texts: Vec<String> = (0..6000).map(|n| format!("{n:05} {body}")).collect();
    for round in texts.chunks(100) {
        for text in round {
            sender.send(&room_msg("flood", text)).await;
        }
        for _ in round {
            sender.expect(&ok_bytes()).await;
        }
        for reader in &mut readers {
            for text in round {
                reader.expect(&relay("flood", "m0", text)).await;
            }
        }
    }
    let got = slow.frames_until_closed().await;
    eprintln!(
        "the slow member got {} of {} before it was cut off",
        got.len(),
        texts.len()
    );
    assert!(got.len() < texts.len());
    for (frame, text) in got.iter().zip(&texts) {
        assert_eq!(*frame, relay("flood", "m0", text));
    }
    for node in nodes {
        node.stop().await;
    }
}

/// A burst of room messages larger than the queue to NATS (16,384
/// relays): the sender's node stops reading from its clients while the
/// queue drains instead of dropping relays, so every member on the other
/// node gets every message and nobody is cut off.
#[tokio::test]
async fn a_burst_larger_than_the_relay_queue_reaches_the_other_node_whole() {
    const BURST: usize = 40_000;
    let nats = NatsServer::start();
    let start = |node_id| {
        let config = Config {
            rate_limit_messages: 1_000_000,
            ..node_config(&[&nats], node_id)
        };
        TestServer::start(config)
    };
    let (a, b) = (start("a").await, start("b").await);
    let mut sender = joined(&a, "sender", "burst").await;
    let mut reader = joined(&b, "reader", "burst").await;
    reply_becomes(&mut sender, &list_users(), &names(&["reader", "sender"])).await;
    let texts: Vec<String> = (0..BURST).map(|n| format!("{n:06}")).collect();
    let burst: Vec<u8> = texts
        .iter()
        .flat_map(|text| room_msg("burst", text).to_frame().to_bytes())
        .collect();
    let send = async {
        sender.send_raw(&burst).await;
        for _ in &texts {
            sender.expect(&ok_bytes()).await;
        }
    };
    let read = async {
        for text in &texts {
            reader.expect(&relay("burst", "sender", text)).await;
        }
    };
    tokio::join!(send, read);
    a.stop().await;
    b.stop().await;
}

/// One of three NATS servers is killed, the one that leads the names
/// bucket: the nodes move to the others and nobody is disconnected; room
/// messages keep flowing, and name claims, refused with the unavailable
/// text while the bucket elects a new leader, work again. The lease is long
/// enough to ride out that election (README, "Cluster").
#[tokio::test]
async fn the_cluster_goes_on_when_one_of_three_nats_servers_dies() {
    let mut nats = NatsServer::cluster();
    let servers: Vec<&NatsServer> = nats.iter().collect();
    let config = |node_id| {
        let mut config = node_config(&servers, node_id);
        let cluster = config.cluster.as_mut().unwrap();
        (cluster.replicas, cluster.lease_secs) = (3, 20.0);
        config
    };
    let (a, b) = (
        TestServer::start(config("a")).await,
        TestServer::start(config("b")).await,
    );
    let mut alice = joined(&a, "alice", "lobby").await;
    let mut bob = joined(&b, "bob", "lobby").await;
    users_become(&mut alice, &["alice", "bob"]).await;
    let leader = nats[1]
        .stream_leader("KV_parlor_names")
        .expect("the names bucket has a leader");
    let leader: usize = leader.strip_prefix('n').unwrap().parse().unwrap();
    nats[leader].kill();
    let killed = Instant::now();
    let unavailable = try_later(text::CLUSTER_UNAVAILABLE);
    let mut claimed = None;
    for round in 0.. {
        let text = format!("after the kill {round}");
        bob.request(&room_msg("lobby", &text), &ok_bytes()).await;
        alice.expect(&relay("lobby", "bob", &text)).await;
        alice.send(&nick(format!("alice{round}"))).await;
        // A claim sent mid-election waits up to a quarter of the lease for
        // the store before it is answered as unavailable.
        let reply = alice.recv_raw_within(Duration::from_secs(10)).await;
        if reply == ok_bytes() {
            claimed = Some(killed.elapsed());
            break;
        }
        assert_eq!(reply, unavailable, "{}", hex(&reply));
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "claims never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("after a NATS server was killed, a nick was claimed again after {claimed:?}");
    a.stop().await;
    b.stop().await;
}
