//! The options of `parlor bench transfer`, and the checks that refuse a
//! run before anything is sent.

use clap::Args;
use serde::Serialize;

use crate::target::{parse_size, seconds, TargetArgs};
use parlor_proto::transfer::MAX_WINDOW;

/// The most recipients: a room holds 1,000 members by default.
const MAX_RECIPIENTS: u32 = 999;
/// The largest chunk the server can be configured to take.
const MAX_CHUNK_BYTES: u64 = 16 << 20;

/// `parlor bench transfer`'s options; echoed, all of them, in the report's
/// `params`.
#[derive(Args, Clone, Debug, Serialize)]
pub struct TransferArgs {
    /// The server and how to connect to it, as for every workload.
    #[command(flatten)]
    #[serde(flatten)]
    pub target: TargetArgs,
    /// Members of the room who receive every file (N); connection 0 sends.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub recipients: u32,
    /// Size of the file: bytes, or a number with a unit (KiB, MiB, GiB;
    /// kB, MB, GB).
    #[arg(long, value_name = "SIZE", default_value = "1GiB", value_parser = parse_size)]
    pub size: u64,
    /// Bytes of file data in each chunk (the last may be shorter).
    #[arg(long, value_name = "SIZE", default_value = "256KiB", value_parser = parse_size)]
    pub chunk_bytes: u64,
    /// Chunks the sender asks to have in flight beyond what every recipient
    /// acknowledged; the server grants at most its `max_transfer_window`.
    #[arg(long, value_name = "W", default_value_t = 8)]
    pub window: u8,
    /// Files to send, one after another.
    #[arg(long, value_name = "K", default_value_t = 1)]
    pub files: u32,
    /// Seconds the timed phase may last: after it no file is offered and
    /// the one in flight is cancelled.
    #[arg(long, value_name = "S", default_value_t = 120.0)]
    pub duration: f64,
    /// The room the sender and the recipients join.
    #[arg(long, value_name = "ROOM", default_value = "files")]
    pub room: String,
    /// Compare every byte of every chunk with the pattern, not only its
    /// length and the marks in its first and last 8 bytes.
    #[arg(long)]
    pub verify_all: bool,
}

impl TransferArgs {
    /// Refuses options the run cannot honour, with the option's name and
    /// what it takes, before anything connects.
    pub fn validate(&self) -> Result<(), String> {
        self.target.validate()?;
        if self.target.tls_pin.is_some() {
            return Err("--tls-pin: transfer runs over plain TCP only".into());
        }
        if !(1..=MAX_RECIPIENTS).contains(&self.recipients) {
            return Err(format!("--recipients: from 1 to {MAX_RECIPIENTS}"));
        }
        if self.size == 0 {
            return Err("--size: at least 1 byte".into());
        }
        if !(1..=MAX_CHUNK_BYTES).contains(&self.chunk_bytes) {
            return Err(format!(
                "--chunk-bytes: from 1 to {MAX_CHUNK_BYTES} (16 MiB, the most a server may allow)"
            ));
        }
        if self.size.div_ceil(self.chunk_bytes) > u64::from(u32::MAX) {
            return Err("--size / --chunk-bytes: at most 4,294,967,295 chunks".into());
        }
        if self.window == 0 || self.window > MAX_WINDOW {
            return Err(format!("--window: from 1 to {MAX_WINDOW}"));
        }
        if self.files == 0 {
            return Err("--files: at least 1".into());
        }
        seconds("--duration", self.duration)?;
        if self.room.is_empty()
            || self.room.len() > 255
            || self.room.bytes().any(|b| b <= b' ' || b == 0x7f)
        {
            return Err("--room: 1 to 255 bytes, no spaces or control characters".into());
        }
        Ok(())
    }
}
