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
use parlor_server::config::{ClusterConfig, Config};

/// The settings of node `node_id` of the cluster on `nats`. The tests
/// send NICK after NICK (races, and waiting for a name to come free), and
/// none of them is a test of the nick rate limit.
fn node_config(nats: &[&NatsServer], node_id: &str) -> Config {
    let servers = nats.iter().map(|server| server.url.clone()).collect();
    Config {
        cluster: Some(ClusterConfig::new(servers, node_id.to_owned())),
        nick_rate_limit: 1000,
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

/// Asks LIST_USERS until the answer is `expected` (the other nodes' names
/// arrive a moment after they are won); panics after [`PATIENCE`].
async fn users_become(client: &mut Client, expected: &[&str]) {
    let deadline = Instant::now() + PATIENCE;
    let want = names(expected);
    loop {
        client.send(&list_users()).await;
        let got = client.recv_raw().await;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "LIST_USERS stayed {}", hex(&got));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
