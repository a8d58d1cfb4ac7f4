//! The file's offer: made and signed once before the run, and checked by
//! every recipient as a real client checks one.
//!
//! The signature is the one `parlor_crypto::file` makes and checks as
//! `parlor client` does: over the kind (a room file), the room, the
//! sender's name and every relayed field of the file's description, so
//! the bench's offers verify as a real client verifies them and cost the
//! recipients what a real client's check costs. The bench's files travel
//! unsealed in a plaintext room, so their offers carry no manifest (a real
//! client sends no file unsealed).

use anyhow::Context;
use bytes::Bytes;

use super::{TransferArgs, TransferRun};
use crate::file_pattern::FilePattern;
use parlor_crypto::envelope::Kind;
use parlor_crypto::file::{sign_offer, verify_offer, OfferContext};
use parlor_crypto::identity::SIGNATURE_LEN;
use parlor_crypto::{Identity, PeerIdentity};
use parlor_proto::secure::Identity as IdentityBlock;
use parlor_proto::transfer::{FileMeta, NONCE_LEN};

/// Size of every bench key. The server does not use it for files, so the
/// smallest it accepts.
const RSA_BITS: usize = 2048;
/// The file's name in every offer.
const FILE_NAME: &str = "parlor-bench.bin";

/// Makes the identity and signs the offer, unsealed and with an empty
/// manifest, that `sender` makes to `args.room`.
pub(super) fn prepare(
    args: &TransferArgs,
    sender: &str,
) -> anyhow::Result<(Identity, FilePattern, FileMeta)> {
    let identity = Identity::generate(RSA_BITS).context("making the bench's RSA key")?;
    let chunk_bytes = u32::try_from(args.chunk_bytes).expect("checked by validate");
    let pattern = FilePattern::new(args.size, chunk_bytes);
    let mut nonce = [0; NONCE_LEN];
    rand::fill(&mut nonce);
    let mut meta = FileMeta {
        name: Bytes::from_static(FILE_NAME.as_bytes()),
        size: pattern.size,
        chunk_size: pattern.chunk_bytes,
        chunk_count: pattern.chunk_count,
        flags: 0,
        key_id: 0,
        nonce,
        manifest: Bytes::new(),
        counter: 0,
        signature: [0; SIGNATURE_LEN],
    };
    let place = room_offer(args.room.as_bytes(), sender.as_bytes());
    meta.signature = sign_offer(&identity, &place, &meta);
    Ok((identity, pattern, meta))
}

/// Where a file offered to a room is offered, and by whom: what the
/// signature binds besides the file.
fn room_offer<'a>(room: &'a [u8], sender: &'a [u8]) -> OfferContext<'a> {
    OfferContext {
        kind: Kind::Room,
        context: room,
        sender,
    }
}

/// What is wrong with an offer as it reached a recipient, if anything: it
/// must be the sender's offer, byte for byte, and its signature must
/// verify, as a real client verifies it, with the identity the server
/// relayed and the room and sender the server named.
pub(super) fn offer_problem(
    run: &TransferRun,
    sender: &[u8],
    sender_identity: &IdentityBlock,
    room: &[u8],
    meta: &FileMeta,
) -> Option<String> {
    if sender != run.sender_nick.as_bytes() || room != run.room.as_bytes() {
        return Some(format!(
            "from {} in {}, not from {} in {}",
            String::from_utf8_lossy(sender),
            String::from_utf8_lossy(room),
            run.sender_nick,
            run.room
        ));
    }
    if *sender_identity != run.identity.block(sender) || *meta != run.meta {
        return Some("the key or the file's description differs from what was sent".into());
    }
    let Ok(peer) = PeerIdentity::from_block(sender_identity, sender) else {
        return Some("the sender's identity does not check out".into());
    };
    verify_offer(&peer, &room_offer(room, sender), meta)
        .is_err()
        .then(|| "the signature does not verify".into())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::latency::BenchClock;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        args: TransferArgs,
    }

    /// The bench's offers carry PROTOCOL.md §14.6's signature: a real
    /// client's check (`verify_offer` over the room and the sender it was
    /// told) passes, and one that names another room or sender fails.
    #[test]
    fn offers_verify_as_a_real_client_verifies_them() {
        let args = Command::parse_from(["transfer", "--size", "1000", "--chunk-bytes", "300"]).args;
        let (identity, pattern, meta) = prepare(&args, "u00000").unwrap();
        let block = identity.block(b"u00000");
        let key = PeerIdentity::from_block(&block, b"u00000").unwrap();
        let client_check = |room: &[u8], sender: &[u8]| {
            let place = OfferContext {
                kind: Kind::Room,
                context: room,
                sender,
            };
            verify_offer(&key, &place, &meta)
        };
        assert!(client_check(b"files", b"u00000").is_ok());
        assert!(client_check(b"other", b"u00000").is_err());
        assert!(client_check(b"files", b"u00001").is_err());

        let run = TransferRun {
            pattern,
            meta: meta.clone(),
            offer: Bytes::new(),
            identity: std::sync::Arc::new(identity),
            sender_nick: "u00000".into(),
            room: "files".into(),
            files: 1,
            recipients: 1,
            verify_all: false,
            clock: BenchClock::start(),
        };
        assert_eq!(
            offer_problem(&run, b"u00000", &block, b"files", &meta),
            None
        );
        let problem = offer_problem(&run, b"u00001", &block, b"files", &meta).unwrap();
        assert!(problem.starts_with("from u00001 in files"), "{problem}");
        let mut forged = meta.clone();
        forged.signature = [0; SIGNATURE_LEN];
        let run = TransferRun {
            meta: forged.clone(),
            ..run
        };
        assert_eq!(
            offer_problem(&run, b"u00000", &block, b"files", &forged).as_deref(),
            Some("the signature does not verify")
        );
    }
}
