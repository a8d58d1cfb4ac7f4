//! The `parlor` command: `parlor serve` (the default) runs the chat server,
//! `parlor client` the reference client, `parlor bench` loads a running
//! server and measures it, and `parlor replay` plays a capture against one.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use parlor_server::config::{parse_listen_or_off, ClusterConfig, Config};
use parlor_server::{BusyPause, Server};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "parlor",
    version,
    about = "A room-chat server that speaks the legacy Chat Replica protocol",
    long_about = "A room-chat server that speaks the legacy Chat Replica protocol byte for \
                  byte, so the old C++ client works against it unchanged.\n\n\
                  Without a subcommand, `parlor` runs `parlor serve`, so `parlor -p 4170` \
                  works like the old `server -p 4170`.",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the chat server (the default).
    Serve(ServeArgs),
    /// Chat from the terminal, end-to-end encrypted where the server allows.
    #[cfg(feature = "client")]
    Client(parlor_client::Options),
    /// Load a running server on this machine and measure it.
    #[cfg(feature = "bench")]
    Bench(parlor_bench::BenchArgs),
    /// Replay the clients of a pcap capture and print (or check) the replies.
    #[cfg(feature = "replay")]
    Replay(parlor_replay::ReplayArgs),
}

#[derive(Args, Clone)]
struct ServeArgs {
    /// Port to listen on, keeping the address of --listen or the config.
    #[arg(short, long)]
    port: Option<u16>,
    /// Address to listen on [default: 0.0.0.0:4170].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Address of the TLS port, or `off` [default: 0.0.0.0:4171].
    #[arg(long, value_name = "ADDR|off", value_parser = parse_listen_or_off)]
    tls_listen: Option<TlsListen>,
    /// Where the self-signed TLS certificate is kept
    /// [default: $XDG_STATE_HOME/parlor, else ~/.local/state/parlor].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics [default: off].
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Cluster mode: join the nodes on these NATS servers, comma-separated
    /// (nats://HOST:PORT,...) [default: off, one node by itself].
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    cluster: Option<Vec<String>>,
    /// This node's id in the cluster: unique among the nodes, the same
    /// across restarts.
    #[arg(long, value_name = "NAME")]
    node_id: Option<String>,
    /// TOML file with settings; see README.md for every key and default.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log line format. Verbosity follows RUST_LOG (default: info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// What `--tls-listen` gives: an address, or none for `off`. A name of its
/// own, because clap reads a literal `Option<Option<_>>` as a flag whose
/// value may be left out.
type TlsListen = Option<SocketAddr>;

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Exit code for bad flags or settings, matching clap's own usage errors.
const USAGE_ERROR: u8 = 2;

fn main() -> ExitCode {
    let settings = format!(
        "Settings for --config FILE (TOML), shown with their defaults:\n\n{}",
        Config::defaults_toml()
    );
    let matches = Cli::command().after_long_help(settings).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|err| err.exit());
    let args = match cli.command {
        Some(Command::Serve(args)) => args,
        #[cfg(feature = "client")]
        Some(Command::Client(options)) => return parlor_client::main(options),
        #[cfg(feature = "bench")]
        Some(Command::Bench(args)) => return parlor_bench::main(args),
        #[cfg(feature = "replay")]
        Some(Command::Replay(args)) => return parlor_replay::run(args),
        None => cli.serve,
    };
    let config = match load_config(&args) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("parlor: {err}");
            return ExitCode::from(USAGE_ERROR);
        }
    };
    init_logging(args.log_format);
    raise_fd_limit(config.max_connections);
    keep_freed_chunk_memory();
    match serve(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("parlor: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(args: &ServeArgs) -> Result<Config, Box<dyn std::error::Error>> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(port) = args.port {
        config.listen.set_port(port);
    }
    if let Some(tls_listen) = args.tls_listen {
        config.tls_listen = tls_listen;
    }
    if let Some(state_dir) = &args.state_dir {
        config.state_dir = Some(state_dir.clone());
    }
    if let Some(metrics) = args.metrics {
        config.metrics_listen = Some(metrics);
    }
    // Either flag makes a node of a cluster; validation names what is missing.
    if args.cluster.is_some() || args.node_id.is_some() {
        let cluster = config
            .cluster
            .get_or_insert_with(|| ClusterConfig::new(Vec::new(), String::new()));
        if let Some(servers) = &args.cluster {
            cluster.servers = servers.clone();
        }
        if let Some(node_id) = &args.node_id {
            cluster.node_id = node_id.clone();
        }
    }
    config.validate()?;
    Ok(config)
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour codes are for people at a terminal; in a file or the journal
    // they are noise. NO_COLOR (https://no-color.org) turns them off there too.
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Every connection is a file descriptor, and the usual soft limit of 1,024
/// would make `accept` fail long before `max_connections`; raise it towards
/// the hard limit, and say so when that is still too low.
fn raise_fd_limit(max_connections: usize) {
    let wanted = max_connections as u64 + 64;
    match rlimit::increase_nofile_limit(wanted) {
        Ok(limit) if limit < wanted => tracing::warn!(
            limit,
            max_connections,
            "the open-file limit is below max_connections; connections past it will fail"
        ),
        Ok(_) => {}
        Err(err) => tracing::warn!(%err, "cannot raise the open-file limit"),
    }
}

/// File chunks are relayed through buffers of up to a few hundred KiB that
/// live for a few microseconds. By default glibc hands freed memory of that
/// size back to the kernel at once (munmap, or madvise when a thread's heap
/// shrinks), so every chunk faulted its pages in again: about a fifth of
/// the server's CPU at 1 → 10 recipients (BENCHMARKS.md, "File transfer").
/// Fixed thresholds keep such blocks in the heap for reuse. Peak memory is
/// unchanged; what is freed after a burst may stay with the process.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_chunk_memory() {
    const MMAP_THRESHOLD: libc::c_int = 32 << 20;
    const TRIM_THRESHOLD: libc::c_int = 64 << 20;
    // SAFETY: mallopt only sets allocator parameters, before any thread but
    // this one exists; it returns 0 on failure, which leaves the defaults.
    let applied = unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    };
    if !applied {
        tracing::warn!("cannot set the allocator's thresholds; file relay will be slower");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_chunk_memory() {}

fn serve(config: Config) -> anyhow::Result<()> {
    let workers = match config.worker_threads {
        0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
        workers => workers,
    };
    // With one worker, tokio's current-thread scheduler does the same work
    // without the machinery for several: 6 % more deliveries per CPU-second
    // in room fan-out, up to 7 % in DMs (BENCHMARKS.md, "Fourth sitting").
    let mut runtime = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut runtime = tokio::runtime::Builder::new_multi_thread();
        runtime.worker_threads(workers);
        runtime
    };
    if let Some(pause) = BusyPause::from_config(&config) {
        runtime.on_thread_park(move || pause.before_park());
    }
    let runtime = runtime.enable_all().build()?;
    runtime.block_on(async {
        let shutdown = shutdown_signal()?;
        let server = Server::bind(config).await?;
        server.run(shutdown).await?;
        Ok(())
    })
}

/// Completes on Ctrl-C or SIGTERM. The handlers are installed here, before
/// the server binds, so a signal sent as soon as it is listening is not lost.
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
