//! `parlor replay`: plays the client side of a pcap capture against a
//! server and shows, or checks, every reply.
//!
//! The captures in `captures/` are the only record of how the real legacy
//! client talks; replaying them is the closest thing to running it. The
//! replay has three parts:
//!
//! - [`capture`] reads the pcap and reassembles what each client sent, as
//!   frames with their capture times.
//! - [`player`] opens one connection per captured client and sends those
//!   frames with the captured timing (scaled by `--speed`), the way the
//!   legacy client would, recording every reply and every broken promise to
//!   the legacy client (a request left unanswered, an unsolicited `9a 00`,
//!   a reply to a heartbeat, a zero-length frame, ...).
//! - [`transcript`] turns replies into one line each and compares them with
//!   an expected transcript (`--check FILE`); its module documentation
//!   describes the format.
//!
//! Without `--server`, the replay starts an in-process parlor on a free
//! loopback port, whose clock runs at the replay's speed: a replay at
//! `--speed 10` sees the same idle cutoffs and rate-limit refusals as one in
//! real time, ten times sooner, with the same texts (the refusal names the
//! configured window). Scaling the settings instead would have changed those
//! texts. A server given with `--server` keeps its own clock, so timing
//! there is faithful only at speed 1.
//!
//! `--server` may name several servers, the nodes of one cluster: the
//! capture's clients are then spread over them, and since a cluster's guest
//! names are unique but not one sequence (PROTOCOL.md §15), the check
//! compares them up to their numbers ([`Expected::rename_guests`]).

#![warn(missing_docs)]

pub mod capture;
pub mod player;
pub mod transcript;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub use capture::{Capture, CaptureError};
use parlor_server::config::Config;
use parlor_server::{Clock, Server};
pub use player::{play, Pace, PlayError, Recording};
pub use transcript::{Difference, Expected};

/// Arguments of `parlor replay`.
#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    /// The capture to replay: a pcap file, as tcpdump writes it.
    #[arg(value_name = "FILE.pcap")]
    pub capture: PathBuf,
    /// Replay against this server instead of an in-process one; or
    /// against the nodes of a cluster, as ADDR,ADDR,..., with client i
    /// connected to the i-th node (round robin).
    #[arg(long, value_name = "ADDR", value_delimiter = ',')]
    pub server: Vec<SocketAddr>,
    /// Play this many times faster than captured (0.5 is half speed).
    /// The in-process server's clock runs at the same speed [default: 1].
    #[arg(long, value_name = "X", value_parser = parse_speed)]
    pub speed: Option<f64>,
    /// Send each frame as soon as the previous requests are answered.
    /// Timing-dependent replies (idle cutoff, rate limit) will differ.
    #[arg(long, conflicts_with = "speed")]
    pub as_fast_as_possible: bool,
    /// Compare the replies with this expected transcript; exit with 1 on
    /// the first difference or on any protocol violation.
    #[arg(long, value_name = "FILE.expected")]
    pub check: Option<PathBuf>,
}

fn parse_speed(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(speed) if speed.is_finite() && speed > 0.0 => Ok(speed),
        _ => Err(format!("`{text}` is not a positive number")),
    }
}

/// Exit code for input that cannot be replayed or checked, matching the
/// server's code for bad flags and settings.
const BAD_INPUT: u8 = 2;

/// Runs `parlor replay`: the transcript goes to stdout, the verdict and
/// any error to stderr.
pub fn run(args: ReplayArgs) -> ExitCode {
    let bad_input = |path: &Path, err: &dyn std::fmt::Display| {
        eprintln!("parlor replay: {}: {err}", path.display());
        ExitCode::from(BAD_INPUT)
    };
    let capture = match Capture::read(&args.capture) {
        Ok(capture) => capture,
        Err(err) => return bad_input(&args.capture, &err),
    };
    let expected = match &args.check {
        Some(path) => match read_expected(path) {
            Ok(expected) => Some((path, expected)),
            Err(err) => return bad_input(path, &err),
        },
        None => None,
    };
    let pace = match (args.as_fast_as_possible, args.speed) {
        (true, _) => Pace::AsFastAsPossible,
        (false, speed) => Pace::Speed(speed.unwrap_or(1.0)),
    };
    let recording = match replay(&capture, &args.server, pace) {
        Ok(recording) => recording,
        Err(err) => {
            eprintln!("parlor replay: {err}");
            return ExitCode::FAILURE;
        }
    };
    let violations = recording.violations();
    for violation in &violations {
        eprintln!("parlor replay: protocol violation: {violation}");
    }
    let Some((path, expected)) = expected else {
        eprintln!(
            "parlor replay: {} replies to {} connections",
            recording.reply_count(),
            recording.clients.len()
        );
        return ExitCode::SUCCESS;
    };
    let mut received = recording.received();
    if args.server.len() > 1 {
        received = expected.rename_guests(&received);
    }
    match expected.compare(&received) {
        Err(difference) => {
            eprintln!(
                "parlor replay: the replies differ from {}, first at {difference}",
                path.display()
            );
            ExitCode::FAILURE
        }
        Ok(()) if !violations.is_empty() => {
            eprintln!(
                "parlor replay: the replies match {}, but break the protocol",
                path.display()
            );
            ExitCode::FAILURE
        }
        Ok(()) => {
            eprintln!(
                "parlor replay: all {} replies match {}",
                expected.len(),
                path.display()
            );
            ExitCode::SUCCESS
        }
    }
}

/// Reads and parses an expected transcript.
pub fn read_expected(path: &Path) -> Result<Expected, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(path)?;
    Ok(Expected::parse(&text)?)
}

fn replay(capture: &Capture, servers: &[SocketAddr], pace: Pace) -> Result<Recording, PlayError> {
    let runtime = tokio::runtime::Runtime::new().map_err(PlayError::Server)?;
    let mut stdout = std::io::stdout();
    runtime.block_on(async {
        match servers {
            [_, ..] => play(capture, servers, pace, &mut stdout).await,
            [] => {
                // Captures are of the plain protocol: no TLS port, and so no
                // certificate made in the state directory.
                let config = Config {
                    listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                    tls_listen: None,
                    ..Config::default()
                };
                play_in_process(capture, config, pace, &mut stdout).await
            }
        }
    })
}

/// Starts parlor with `config` and a clock running at the replay's pace,
/// replays the capture against it, and stops it again.
pub async fn play_in_process(
    capture: &Capture,
    config: Config,
    pace: Pace,
    out: &mut (dyn Write + Send),
) -> Result<Recording, PlayError> {
    play_on_nodes(capture, vec![config], pace, out).await
}

/// Starts one parlor per config (the nodes of a cluster, say), each with a
/// clock running at the replay's pace, replays the capture with its
/// clients spread over them, and stops them again.
pub async fn play_on_nodes(
    capture: &Capture,
    configs: Vec<Config>,
    pace: Pace,
    out: &mut (dyn Write + Send),
) -> Result<Recording, PlayError> {
    let clock = match pace {
        Pace::Speed(speed) => Clock::accelerated(speed),
        Pace::AsFastAsPossible => Clock::real(),
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut addrs = Vec::new();
    let mut running = Vec::new();
    for config in configs {
        let server = Server::bind_with_clock(config, clock)
            .await
            .map_err(PlayError::Server)?;
        addrs.push(server.local_addr().map_err(PlayError::Server)?);
        let mut stopped = stopped.clone();
        running.push(tokio::spawn(server.run(async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        })));
    }
    let recording = play(capture, &addrs, pace, out).await;
    let _ = stop.send(true);
    for node in running {
        match node.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => return Err(PlayError::Server(err)),
            Err(panic) => std::panic::resume_unwind(panic.into_panic()),
        }
    }
    recording
}
