//! What one room message costs its sender: signing and sealing 64 bytes
//! (HKDF-derived keys held, AES-256-CTR, HMAC-SHA256, Ed25519). The target
//! is at most 0.1 ms, so that sealing never shows in a chat's latency.
//!
//! `cargo bench -p parlor-crypto --bench seal` (pin it, e.g. `taskset -c 1`).

use criterion::{criterion_group, criterion_main, Criterion};

use parlor_crypto::envelope::{self, Header, Kind, MessageKeys};
use parlor_crypto::Identity;

fn seal_room_message(c: &mut Criterion) {
    let identity = Identity::generate(2048).expect("a key");
    let keys = MessageKeys::derive(&[7; 32]);
    let plaintext = [b'x'; 64];
    let mut counter = 0;
    c.bench_function("sign and seal a 64-byte room message", |b| {
        b.iter(|| {
            counter += 1;
            let header = Header {
                kind: Kind::Room,
                context: b"vault",
                sender: b"alice",
                epoch: 3,
                counter,
            };
            envelope::seal(&header, &keys, &plaintext, &identity).expect("fits")
        })
    });
}

criterion_group!(benches, seal_room_message);
criterion_main!(benches);
