//! `parlor client`: the reference client of the secure extension.
//!
//! It speaks the legacy client's commands and request discipline, and by
//! default the secure extension of PROTOCOL.md §12 on top: it makes an RSA
//! key at start, registers it after HELLO, and seals and opens messages with
//! [`parlor_crypto`]. `--legacy` turns all of that off.
//!
//! - [`command`]: typed lines, parsed as the legacy client parses them.
//! - [`request`]: one request on the wire at a time.
//! - [`session`]: the sans-IO client; lines, frames and time in, frames and
//!   events out.
//! - [`event`]: what the user sees, as text or JSON lines.
//! - [`transfer`]: what is kept of each file sent or received, and the file
//!   operations the session asks of the shell.
//! - `terminal.rs` and `shell.rs`: stdin, stdout and the socket, with tokio.

#![warn(missing_docs)]

pub mod command;
mod disk;
pub mod event;
pub mod request;
pub mod session;
mod shell;
mod terminal;
pub mod transfer;

use std::process::ExitCode;

pub use event::UserEvent;
pub use session::{ClientSession, Output};
pub use transfer::{FileOp, FileSettings, TransferProgress};

use std::path::PathBuf;

use parlor_crypto::file::DEFAULT_CHUNK_SIZE;
use parlor_crypto::identity::{DEFAULT_KEY_BITS, KEY_BITS};

/// `parlor client [ADDR]`.
#[derive(clap::Args, Clone, Debug)]
pub struct Options {
    /// Server to connect to at start, as HOST:PORT; without it, use \connect.
    #[arg(value_name = "ADDR")]
    pub address: Option<String>,
    /// Speak the plain legacy protocol: no key, nothing encrypted.
    #[arg(long, conflicts_with = "rsa_bits")]
    pub legacy: bool,
    /// Size of the RSA key made at start.
    #[arg(
        long,
        value_name = "BITS",
        default_value_t = DEFAULT_KEY_BITS,
        value_parser = parse_bits,
    )]
    pub rsa_bits: usize,
    /// Print events as JSON, one object per line, for scripts.
    #[arg(long)]
    pub json: bool,
    /// Where files received are saved.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub download_dir: PathBuf,
    /// Plaintext bytes per chunk of the files sent (the server may allow
    /// less: `max_chunk_bytes`).
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = DEFAULT_CHUNK_SIZE,
        value_parser = clap::value_parser!(u32).range(1..=MAX_CHUNK_SIZE),
    )]
    pub chunk_size: u32,
}

/// The largest `--chunk-size`: a sealed chunk must fit the 16 MiB frame
/// the client itself would accept.
const MAX_CHUNK_SIZE: i64 = 8 << 20;

fn parse_bits(value: &str) -> Result<usize, String> {
    let bits: usize = value
        .parse()
        .map_err(|_| format!("`{value}` is not a number"))?;
    if KEY_BITS.contains(&bits) {
        Ok(bits)
    } else {
        Err(format!(
            "the server accepts {} to {} bits",
            KEY_BITS.start(),
            KEY_BITS.end()
        ))
    }
}

/// Runs the client until `\quit` or the end of input.
pub fn main(options: Options) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("parlor client: cannot start: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(shell::run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("parlor client: {err:#}");
            ExitCode::FAILURE
        }
    }
}
