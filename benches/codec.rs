//! The codec on the server's hot paths: cutting a stream of client frames
//! into messages, and encoding the room message every member receives.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use parlor_proto::legacy::encode_room_message;
use parlor_proto::{ClientMessage, FrameCodec};

/// A 64-byte text, the size the load benchmarks use.
const TEXT: &[u8; 64] = b"L12:3456:7890123456:xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
const FRAMES: usize = 1000;

fn decode_stream(c: &mut Criterion) {
    let message = ClientMessage::RoomMessage {
        room: Bytes::from_static(b"room0"),
        text: Bytes::from_static(TEXT),
    };
    let wire = message.to_frame().to_bytes().repeat(FRAMES);
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(FRAMES as u64));
    group.bench_function("decode and parse 1000 room messages", |b| {
        b.iter_batched(
            || BytesMut::from(&wire[..]),
            |mut input| {
                let mut codec = FrameCodec::default();
                while let Some(frame) = codec.decode(&mut input).expect("valid frames") {
                    black_box(ClientMessage::parse(&frame).expect("valid message"));
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn encode_delivery(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode room message", |b| {
        b.iter(|| encode_room_message(black_box(b"room0"), black_box(b"u00001"), black_box(TEXT)))
    });
    group.finish();
}

criterion_group!(benches, decode_stream, encode_delivery);
criterion_main!(benches);
