//! The hub's fan-out step: a room message from one member of a 100-member
//! room becomes the sender's `9a 00` and one broadcast of one encoded frame
//! to the 99 others; then, as the server's shell does when it queues the
//! broadcast, a handle on that frame for each of them.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use parlor_core::{Action, ConnId, Hub, Limits, Rate};
use parlor_proto::ClientMessage;

const MEMBERS: u64 = 100;

fn room_message_to_100_members(c: &mut Criterion) {
    // One message per millisecond of fake time, the rate limit's window:
    // its bookkeeping costs what it costs a client within its limit.
    let limits = Limits {
        message_rate: Rate {
            limit: 1,
            window: Duration::from_millis(1),
        },
        ..Limits::default()
    };
    let mut hub = Hub::new(limits, [0; 32]);
    let mut now = Instant::now();
    let mut out = Vec::new();
    let peer = SocketAddr::from(([127, 0, 0, 1], 40_000));
    let join = ClientMessage::Join {
        room: Bytes::from_static(b"lobby"),
        password: Bytes::new(),
    };
    for id in 0..MEMBERS {
        hub.connect(ConnId(id), peer, now, &mut out);
        hub.handle(ConnId(id), join.clone(), now, &mut out);
    }
    let message = ClientMessage::RoomMessage {
        room: Bytes::from_static(b"lobby"),
        text: Bytes::from_static(&[b'x'; 64]),
    };
    let mut send = |out: &mut Vec<_>| {
        now += Duration::from_millis(1);
        out.clear();
        hub.handle(ConnId(0), message.clone(), now, out);
    };
    send(&mut out);
    let frames = out.iter().flat_map(Action::frames).count();
    assert_eq!(frames as u64, MEMBERS, "one reply and 99 deliveries");

    let mut group = c.benchmark_group("hub");
    group.throughput(Throughput::Elements(MEMBERS - 1));
    group.bench_function("room message to 100 members", |b| {
        b.iter(|| {
            send(&mut out);
            for (to, frame) in out.iter().flat_map(Action::frames) {
                black_box((to, frame.clone()));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, room_message_to_100_members);
criterion_main!(benches);
