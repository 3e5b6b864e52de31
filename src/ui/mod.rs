//! The user interface of the two programs: command lines, what they print,
//! progress bars, signals and the interactive prompt. The binaries in
//! `src/bin/` only parse their arguments with [`args`], call [`run_peer`]
//! or [`run_tracker`], and turn the result into an exit status with
//! [`exit_status`].
//!
//! One file per concern:
//! - [`args`]: the argh types of both programs and `--help` output;
//!   [`help`] fills the `{LIMIT}` placeholders of the help texts from
//!   [`crate::limits`].
//! - [`share`], [`get`], [`query`] (`list`, `where`), [`tracker`]: one
//!   command each.
//! - [`repl`]: the prompt's command language, background downloads and
//!   answers; [`prompt`] puts it on a terminal.
//! - [`format`](mod@format): sizes, rates, chunk maps, summaries; [`progress`]: the
//!   progress bar and hashing counter.
//! - [`signals`]: Ctrl-C and SIGTERM, set up in one place for both programs.
//! - [`out`]: stdout, which may be closed under us (`peer list | head -1`);
//!   nothing here uses `print!`.
//!
//! Depends on `peer`, `tracker`, `wire`, `chunks` and `limits`. Nothing
//! outside `ui` depends on it: the engine never prints, parses a command
//! line or handles a signal.

#[macro_use]
pub mod out;

pub mod args;
pub mod format;
pub mod get;
pub mod help;
pub mod progress;
pub mod prompt;
pub mod query;
pub mod repl;
pub mod share;
pub mod signals;
pub mod tracker;

use std::net::SocketAddr;
use std::process::ExitCode;

use self::args::{PeerArgs, PeerCommand, TrackerArgs};
use self::signals::StopSignals;
use crate::error_chain;
use crate::peer::client;
use crate::peer::node::NodeConfig;

/// Any error a command ends with; printed as its chain of causes.
pub type BoxError = Box<dyn std::error::Error>;

/// Logs to stderr with millisecond timestamps; `default` unless RUST_LOG
/// says otherwise.
pub fn init_logging(default: &str) {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format_timestamp_millis()
        .init();
}

/// Runs one `peer` command to its end.
pub fn run_peer(args: PeerArgs) -> Result<(), BoxError> {
    match args.cmd {
        PeerCommand::Share(a) => share::run(a, &StopSignals::install()?),
        PeerCommand::Get(a) => get::run(a, &StopSignals::install()?),
        PeerCommand::List(a) => query::list(a),
        PeerCommand::Where(a) => query::where_(a),
    }
}

/// Runs the tracker until Ctrl-C or SIGTERM.
pub fn run_tracker(args: TrackerArgs) -> Result<(), BoxError> {
    tracker::run(args)
}

/// A command stopped by Ctrl-C or SIGTERM before its work was done (a
/// signal once the work is done, e.g. while serving, is the normal way to
/// end and exits 0).
#[derive(Debug)]
pub struct Interrupted {
    pub signal: i32,
    /// What was stopped and what state it left.
    pub message: String,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", signals::signal_name(self.signal), self.message)
    }
}

impl std::error::Error for Interrupted {}

impl Interrupted {
    /// 128 + the signal number, what a shell shows for a program the
    /// signal ended.
    pub fn status(&self) -> u8 {
        u8::try_from(128 + self.signal.clamp(0, 127)).unwrap_or(u8::MAX)
    }
}

/// `e` as [`Interrupted`] if a stop signal has arrived (the engine stopped
/// because of it), with `message`, or the engine's own message if none is
/// given; otherwise `e` itself.
fn stopped_by_signal(
    e: impl std::error::Error + 'static,
    signals: &StopSignals,
    message: Option<&str>,
) -> BoxError {
    match signals.received() {
        Some(signal) => Box::new(Interrupted {
            signal,
            message: message.map_or_else(|| e.to_string(), str::to_owned),
        }),
        None => Box::new(e),
    }
}

/// The exit status for a command's result; an error is printed first, as
/// "`program`: error: cause: cause". A closed stdout ends the program
/// quietly (see [`out`]); an interrupted command says so and exits with
/// 128 + the signal number.
pub fn exit_status(program: &str, r: Result<(), BoxError>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if out::is_stdout_closed(&*e) => ExitCode::from(out::CLOSED_STATUS),
        Err(e) if e.is::<Interrupted>() => {
            eprintln!("{program}: {e}");
            e.downcast_ref::<Interrupted>()
                .map_or(ExitCode::FAILURE, |i| ExitCode::from(i.status()))
        }
        Err(e) => {
            eprintln!("{program}: error: {}", error_chain(&*e));
            ExitCode::FAILURE
        }
    }
}

/// A node's settings from the options every peer command shares.
fn node_config(
    tracker: &str,
    listen: SocketAddr,
    upload_limit: Option<u64>,
) -> Result<NodeConfig, BoxError> {
    let mut cfg = NodeConfig::with_trackers(trackers(tracker)?);
    cfg.listen = listen;
    cfg.upload_limit = upload_limit;
    Ok(cfg)
}

/// The trackers of `--tracker A,B,C` (see [`args::tracker_list`]), each
/// resolved. One whose name does not resolve is left out with a warning on
/// stderr, as long as another one resolves: with several trackers, any one
/// is enough.
fn trackers(given: &str) -> Result<Vec<SocketAddr>, BoxError> {
    let list = args::tracker_list(given)?;
    let mut addrs = Vec::new();
    let mut failed = Vec::new();
    for t in &list {
        match client::resolve(t) {
            Ok(a) if !addrs.contains(&a) => addrs.push(a),
            Ok(_) => {}
            Err(e) => failed.push(e),
        }
    }
    if addrs.is_empty() {
        let why: Vec<String> = failed.iter().map(|e| e.to_string()).collect();
        return Err(why.join("; ").into());
    }
    for e in failed {
        eprintln!("peer: warning: {e}; going on with the other trackers");
    }
    Ok(addrs)
}
