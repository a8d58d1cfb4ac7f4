//! `parlor client`: the reference client of the secure extension.
//!
//! It speaks the legacy client's commands and request discipline, and by
//! default the secure extension of PROTOCOL.md §12 on top: it loads the
//! user's identity (made on first run) from its data directory, registers
//! it after HELLO, and seals and opens messages with [`parlor_crypto`].
//! It fails closed: nothing goes out in clear unless the user asks for it
//! line by line (`\plain`, `\plainmsg`) or with `--allow-plaintext`.
//! `--legacy` turns all of that off.
//!
//! - [`command`]: typed lines, parsed as the legacy client parses them.
//! - [`request`]: one request on the wire at a time.
//! - [`session`]: the sans-IO client; lines, frames and time in, frames and
//!   events out.
//! - [`event`]: what the user sees, as text or JSON lines.
//! - [`transfer`]: what is kept of each file sent or received, and the file
//!   operations the session asks of the shell.
//! - [`memory`]: what is remembered across runs, per server: the key seen
//!   under each nick, and the rooms seen end-to-end encrypted.
//! - [`transport`]: the connection itself, TLS by default, with the
//!   server's key checked against `--ca`, the system's roots or the key
//!   pinned in `known_servers`.
//! - `terminal.rs` and `shell.rs`: stdin, stdout and the socket, with tokio.

#![warn(missing_docs)]

pub mod command;
mod disk;
pub mod event;
pub mod memory;
pub mod request;
pub mod session;
mod shell;
mod terminal;
pub mod transfer;
pub mod transport;

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
    /// Speak the plain legacy protocol over plain TCP: no key, nothing
    /// encrypted.
    #[arg(long, conflicts_with_all = ["rsa_bits", "ca", "identity", "allow_plaintext"])]
    pub legacy: bool,
    /// Verify the server's TLS certificate against the certificate
    /// authorities in this PEM file (and nothing else), instead of the
    /// system's roots and trust on first use.
    #[arg(long, value_name = "FILE", conflicts_with = "insecure_transport")]
    pub ca: Option<PathBuf>,
    /// Connect over plain TCP, without TLS, and speak the secure extension
    /// there anyway: for test servers and benchmarks that allow it. Nothing
    /// protects the connection itself.
    #[arg(long)]
    pub insecure_transport: bool,
    /// Where the client keeps what it remembers between runs: the
    /// identity, known_servers, known_peers and secure_rooms [default:
    /// $XDG_DATA_HOME/parlor, else ~/.local/share/parlor].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The identity file (two private keys, mode 0600); made on first run.
    /// Default: DATA_DIR/identity.
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// Size of the RSA key of an identity made on first run.
    #[arg(
        long,
        value_name = "BITS",
        default_value_t = DEFAULT_KEY_BITS,
        value_parser = parse_bits,
    )]
    pub rsa_bits: usize,
    /// Send ordinary lines in clear where they cannot be encrypted (a
    /// plaintext room, a user without a key, a key the server refused),
    /// each marked; without it such lines are not sent.
    #[arg(long)]
    pub allow_plaintext: bool,
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

impl Options {
    /// The data directory: `--data-dir`, else `$XDG_DATA_HOME/parlor`,
    /// else `$HOME/.local/share/parlor` (the XDG base directory rules: a
    /// relative `XDG_DATA_HOME` is ignored). It is made, mode 0700, when
    /// something is first written to it.
    pub fn data_dir(&self) -> anyhow::Result<PathBuf> {
        if let Some(dir) = &self.data_dir {
            return Ok(dir.clone());
        }
        let absolute = |name| {
            std::env::var_os(name)
                .map(PathBuf::from)
                .filter(|dir| dir.is_absolute())
        };
        absolute("XDG_DATA_HOME")
            .or_else(|| Some(absolute("HOME")?.join(".local/share")))
            .map(|dir| dir.join("parlor"))
            .ok_or_else(|| anyhow::anyhow!("set --data-dir, XDG_DATA_HOME or HOME"))
    }
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
