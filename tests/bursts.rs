//! Bursts against the real `parlor` binary. They make busy workers pause
//! before waiting (`busy_pause_micros`), while one request at a time never
//! does; and a client's queue can hold more frames than one vectored write
//! takes. Every message arrives, in order.

mod support;
use support::process::ServerProcess;
use support::*;

use parlor_server::config::Config;

const SENDERS: usize = 4;
const BURST: usize = 300;

fn config(worker_threads: usize, busy_pause_min_reads: u32) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        rate_limit_messages: 10_000,
        worker_threads,
        busy_pause_micros: 50,
        busy_pause_min_reads,
        tls_listen: None,
        ..Config::default()
    }
}

async fn joined(server: &ServerProcess, name: &str) -> Client {
    let mut client = Client::connect(server.addr).await;
    client.hello().await;
    client.request(&nick(name), &ok_bytes()).await;
    client.request(&join("busy", ""), &ok_bytes()).await;
    client
}

fn text(sender: usize, n: usize) -> String {
    format!("message {n} from sender {sender}")
}

#[tokio::test]
async fn bursts_make_workers_pause_and_every_message_arrives_in_order() {
    // One worker runs the current-thread scheduler, two the multi-thread one.
    for worker_threads in [1, 2] {
        let server = ServerProcess::start(&config(worker_threads, 2), true);
        let mut listeners = [joined(&server, "ears").await, joined(&server, "eyes").await];
        let mut senders = Vec::new();
        for sender in 0..SENDERS {
            senders.push(joined(&server, &format!("talker{sender}")).await);
        }
        // Each burst is one write of about 12 KB: the server needs several
        // reads of its 4 KiB buffer for it, all in one round.
        for (sender, client) in senders.iter_mut().enumerate() {
            let burst: Vec<u8> = (0..BURST)
                .flat_map(|n| wire(&room_msg("busy", text(sender, n))))
                .collect();
            client.send_raw(&burst).await;
        }
        for (sender, client) in senders.iter_mut().enumerate() {
            expect_bursts(client, Some(sender)).await;
        }
        for listener in &mut listeners {
            expect_bursts(listener, None).await;
        }
        let pauses = server.metric("parlor_busy_pauses_total").await;
        assert!(pauses > 0, "no pause with {worker_threads} worker(s)");
    }
}

/// Every sender's burst, each sender's messages in the order sent though
/// interleaved freely; a sender gets an acknowledgement for each of its own.
async fn expect_bursts(client: &mut Client, own: Option<usize>) {
    let mut next = [0; SENDERS];
    for _ in 0..SENDERS * BURST {
        let frame = client.recv_raw().await;
        let sender = (0..SENDERS)
            .find(|&sender| {
                next[sender] < BURST
                    && if Some(sender) == own {
                        frame == ok_bytes()
                    } else {
                        frame
                            == relay(
                                "busy",
                                format!("talker{sender}"),
                                text(sender, next[sender]),
                            )
                    }
            })
            .unwrap_or_else(|| panic!("out of order or unknown: {}", show_frame(&frame)));
        next[sender] += 1;
    }
}

#[tokio::test]
async fn one_request_at_a_time_never_makes_a_worker_pause() {
    let server = ServerProcess::start(&config(1, Config::default().busy_pause_min_reads), true);
    let mut listener = joined(&server, "ears").await;
    let mut talker = joined(&server, "talker").await;
    for n in 0..200 {
        talker
            .request(&room_msg("busy", text(0, n)), &ok_bytes())
            .await;
        listener.expect(&relay("busy", "talker", text(0, n))).await;
    }
    assert_eq!(server.metric("parlor_busy_pauses_total").await, 0);
}

#[tokio::test]
async fn a_queue_longer_than_one_vectored_write_arrives_whole_and_in_order() {
    // More frames than one write takes (1,024), sent in one burst; with one
    // worker the burst is read before the listener's task runs.
    const LONG: usize = 3_000;
    let server = ServerProcess::start(&config(1, Config::default().busy_pause_min_reads), false);
    let mut listener = joined(&server, "ears").await;
    let mut talker = joined(&server, "talker").await;
    let burst: Vec<u8> = (0..LONG)
        .flat_map(|n| wire(&room_msg("busy", text(0, n))))
        .collect();
    talker.send_raw(&burst).await;
    for n in 0..LONG {
        listener.expect(&relay("busy", "talker", text(0, n))).await;
    }
    for _ in 0..LONG {
        talker.expect(&ok_bytes()).await;
    }
}

#[tokio::test]
async fn each_recipient_keeps_its_order_around_direct_messages_and_rejoins() {
    // One write that the server reads and hands the hub at once: room
    // messages it may queue as one shared run, broken by a DM to one member
    // and by the sender leaving and rejoining the room.
    let server = ServerProcess::start(&config(1, Config::default().busy_pause_min_reads), false);
    let mut ears = joined(&server, "ears").await;
    let mut eyes = joined(&server, "eyes").await;
    let mut talker = joined(&server, "talker").await;
    let say = |n| wire(&room_msg("busy", text(0, n)));
    let mut burst = Vec::new();
    (0..5).for_each(|n| burst.extend(say(n)));
    burst.extend(wire(&dm("ears", "psst")));
    (5..10).for_each(|n| burst.extend(say(n)));
    burst.extend(wire(&leave()));
    burst.extend(wire(&join("busy", "")));
    (10..15).for_each(|n| burst.extend(say(n)));
    talker.send_raw(&burst).await;
    for n in 0..15 {
        if n == 5 {
            ears.expect(&dm_relay("talker", "psst")).await;
        }
        ears.expect(&relay("busy", "talker", text(0, n))).await;
        eyes.expect(&relay("busy", "talker", text(0, n))).await;
    }
    // 15 room messages, the DM, LEAVE and JOIN: every one answered.
    for _ in 0..18 {
        talker.expect(&ok_bytes()).await;
    }
    eyes.expect_silence(std::time::Duration::from_millis(100))
        .await;
}
