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
//!   command each; [`json`]: the `--json` lines of `list` and `where`; [`keys`]: `peer keygen` and every command's
//!   `--key-file`.
//! - [`repl`]: the prompt's command language, background downloads and
//!   answers; [`prompt`] puts it on a terminal.
//! - [`format`](mod@format): sizes, rates, chunk maps, summaries; [`progress`]: the
//!   progress bar and hashing counter.
//! - [`completions`]: shell completions from the same definitions.
//! - [`log`]: log records, apart from what the commands say;
//!   [`lockfile`]: the lock `peer share` holds on its folder.
//! - [`signals`]: Ctrl-C and SIGTERM, set up in one place for both programs.
//! - [`out`]: stdout, which may be closed under us (`peer list | head -1`);
//!   nothing here uses `print!`.
//!
//! Depends on `peer`, `tracker`, `wire`, `chunks`, `limits` and `net::key`
//! (loading the key file). Nothing
//! outside `ui` depends on it: the engine never prints, parses a command
//! line or handles a signal.

#[macro_use]
pub mod out;

pub mod args;
pub mod completions;
pub mod format;
pub mod get;
pub mod help;
pub mod json;
pub mod keys;
pub mod lockfile;
pub mod log;
pub mod progress;
pub mod prompt;
pub mod query;
pub mod repl;
pub mod share;
pub mod signals;
pub mod tracker;

use std::net::SocketAddr;

pub use self::args::Usage;
use std::process::ExitCode;

use self::args::{PeerArgs, PeerCommand, TrackerArgs};
use self::signals::StopSignals;
use crate::error_chain;
use crate::peer::client;
use crate::peer::node::NodeConfig;

/// Any error a command ends with; printed as its chain of causes.
pub type BoxError = Box<dyn std::error::Error>;

/// Runs one `peer` command to its end.
pub fn run_peer(args: PeerArgs) -> Result<(), BoxError> {
    out::set_quiet(args.quiet());
    if !matches!(args.cmd, PeerCommand::Keygen(_)) {
        keys::install(args.key_file())?;
    }
    match args.cmd {
        PeerCommand::Share(a) => share::run(a, &StopSignals::install()?),
        PeerCommand::Get(a) => get::run(a, &StopSignals::install()?),
        PeerCommand::List(a) => query::list(a),
        PeerCommand::Where(a) => query::where_(a),
        PeerCommand::Keygen(a) => keys::keygen(a),
        PeerCommand::Completions(a) => completions::run(a),
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

/// A download that failed after it had started: its verified chunks are
/// kept on disk, and the message says how to go on from them (unless it
/// says there were none: see `peer::download::NOTHING_KEPT`).
#[derive(Debug)]
pub struct Resumable {
    error: crate::peer::PeerError,
    how: String,
}

impl Resumable {
    pub fn new(error: crate::peer::PeerError, how: &str) -> Resumable {
        Resumable {
            error,
            how: how.to_owned(),
        }
    }

    /// The line for an error that may already say how to resume (a
    /// download stopped on request does).
    pub fn line(error: &crate::peer::PeerError, how: &str) -> String {
        let text = error_chain(error);
        // Also not when the file is complete and kept somewhere: running
        // the command again would not help.
        // Nor when nothing was kept to resume from.
        if text.contains("to resume")
            || text.contains("is complete and kept as")
            || text.contains(crate::peer::download::NOTHING_KEPT)
        {
            text
        } else {
            format!("{text}; the verified chunks are kept: {how}")
        }
    }
}

impl std::fmt::Display for Resumable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&Resumable::line(&self.error, &self.how))
    }
}

impl std::error::Error for Resumable {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
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
            ExitCode::from(error_status(&*e))
        }
    }
}

/// A node's settings from the options every peer command shares.
fn node_config(
    tracker: Option<&str>,
    listen: SocketAddr,
    upload_limit: Option<u64>,
) -> Result<NodeConfig, BoxError> {
    let trackers = trackers(tracker)?;
    if !listen.ip().is_unspecified() {
        // Trackers record where a peer connects from as where it serves.
        crate::net::client::install_local_ip(listen.ip());
    }
    // A key mismatch is final: say so now, before hashing or creating any
    // file, instead of retrying in the background.
    check_keys(&trackers)?;
    let mut cfg = NodeConfig::with_trackers(trackers);
    cfg.listen = listen;
    cfg.upload_limit = upload_limit;
    Ok(cfg)
}

/// Fails if any of `trackers` refuses our network key (or our lack of
/// one); asks them all at once, each for at most `limits::TRACKER_GRACE`,
/// so a tracker that is down or hangs delays the start by no more.
fn check_keys(trackers: &[SocketAddr]) -> Result<(), BoxError> {
    let results: Vec<_> = std::thread::scope(|s| {
        let asks: Vec<_> = trackers
            .iter()
            .map(|&t| s.spawn(move || client::check_key(t)))
            .collect();
        asks.into_iter()
            .map(|h| h.join().unwrap_or(Ok(())))
            .collect()
    });
    for r in results {
        r?;
    }
    Ok(())
}

/// The trackers of `--tracker A,B,C` or `$P2PFS_TRACKER` (see
/// [`args::tracker_addresses`]), each resolved. One whose name does not
/// resolve is left out with a warning on stderr, as long as another one
/// resolves: with several trackers, any one is enough.
fn trackers(given: Option<&str>) -> Result<Vec<SocketAddr>, BoxError> {
    let list = args::tracker_addresses(given)?;
    let mut addrs = Vec::new();
    let mut failed = Vec::new();
    for t in &list {
        match client::resolve(t) {
            Ok(a) if !addrs.contains(&a) => addrs.push(a),
            Ok(_) => {}
            Err(e) => failed.push(e.to_string()),
        }
    }
    if addrs.is_empty() {
        return Err(Box::new(Unreachable(failed.join("; "))));
    }
    for e in failed {
        eprintln!("peer: warning: {e}; going on with the other trackers");
    }
    Ok(addrs)
}
/// The network could not be reached (a host name that does not resolve).
#[derive(Debug)]
pub struct Unreachable(pub String);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unreachable {}

/// Exit status of a command line that cannot be used.
pub const USAGE_STATUS: u8 = 2;
/// Exit status when the network said no: no such file, a name or every
/// file refused by the tracker, a network key missing or rejected.
pub const REFUSED_STATUS: u8 = 3;
/// Exit status of a local I/O failure: a folder or file that cannot be
/// read or written, a full disk, an address already in use.
pub const IO_STATUS: u8 = 4;
/// Exit status when the network could not be used: the tracker or every
/// source unreachable, a download that could not finish.
pub const NETWORK_STATUS: u8 = 5;

/// The exit status an error stands for (see README, "Exit status"): the
/// first error in its chain whose kind is known decides; anything else
/// is 1.
pub fn error_status(e: &(dyn std::error::Error + 'static)) -> u8 {
    use crate::peer::PeerError;
    use crate::tracker::TrackerError;
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<args::Usage>() {
            return USAGE_STATUS;
        }
        if err.is::<NotShared>() {
            return REFUSED_STATUS;
        }
        if err.is::<Unreachable>() {
            return NETWORK_STATUS;
        }
        if let Some(p) = err.downcast_ref::<PeerError>() {
            return match p {
                PeerError::NotFound(_) | PeerError::Refused { .. } | PeerError::Key { .. } => {
                    REFUSED_STATUS
                }
                PeerError::Io { .. } => IO_STATUS,
                PeerError::Net { .. }
                | PeerError::Protocol { .. }
                | PeerError::Download(_)
                | PeerError::NoTracker(_) => NETWORK_STATUS,
                _ => 1,
            };
        }
        if let Some(TrackerError::Bind { .. }) = err.downcast_ref::<TrackerError>() {
            return IO_STATUS;
        }
        if err.is::<std::io::Error>() {
            return IO_STATUS;
        }
        cur = err.source();
    }
    1
}

/// `peer share` was given files, or found some, and none of them can be
/// shared: the reasons, one per file.
#[derive(Debug)]
pub struct NotShared(pub String);

impl std::fmt::Display for NotShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotShared {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::PeerError;

    /// Issue 14: a download that gave up ("no reachable source … after
    /// 30 s") gave no hint that running it again resumes.
    #[test]
    fn a_failed_download_says_how_to_resume_once() {
        let gave_up = PeerError::Download("cannot finish f: no reachable source".into());
        assert_eq!(
            Resumable::line(&gave_up, "run the same command again to resume"),
            "cannot finish f: no reachable source; the verified chunks are kept: run the same \
             command again to resume"
        );
        let stopped = PeerError::Download(
            "download of f interrupted; run the same command again to resume".into(),
        );
        assert!(!Resumable::line(&stopped, "x").contains("kept"));
        // Nothing verified: the `.part` is gone, so no resume is promised.
        let nothing = PeerError::Download(format!(
            "cannot finish f: no reachable source; {}",
            crate::peer::download::NOTHING_KEPT
        ));
        assert_eq!(
            Resumable::line(&nothing, "run the same command again to resume"),
            "cannot finish f: no reachable source; no chunk was verified, so nothing was kept"
        );
        let e: BoxError = Box::new(Resumable::new(gave_up, "y"));
        assert_eq!(error_status(&*e), NETWORK_STATUS);
    }

    #[test]
    fn exit_statuses_follow_the_kind_of_error() {
        let status = |e: BoxError| error_status(&*e);
        assert_eq!(status(Box::new(Usage("x".into()))), USAGE_STATUS);
        assert_eq!(
            status(Box::new(PeerError::NotFound("x".into()))),
            REFUSED_STATUS
        );
        assert_eq!(status(Box::new(NotShared("x".into()))), REFUSED_STATUS);
        let io = std::io::Error::from(std::io::ErrorKind::StorageFull);
        assert_eq!(
            status(Box::new(PeerError::io("write", "/f", io))),
            IO_STATUS
        );
        assert_eq!(status(Box::new(Unreachable("x".into()))), NETWORK_STATUS);
        assert_eq!(
            status(Box::new(PeerError::NoTracker("a: x; b: y".into()))),
            NETWORK_STATUS
        );
        assert_eq!(status(Box::new(PeerError::Invalid("x".into()))), 1);
        assert_eq!(status("plain".into()), 1);
    }
}
