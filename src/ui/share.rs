//! `peer share`: hash the folder, start the node and the folder watcher
//! (live sharing), then serve until a signal, with the prompt on a
//! terminal.
//!
//! Owns: what `peer share` prints, and when it gives up (none of the files
//! named can be shared; every tracker refused every file), and the lines
//! for what the folder watcher does (also for `peer get --seed`). Calls
//! `peer::{share, node, session, watch, download}` (the last for the
//! unfinished downloads in the folder) and the other `ui` modules,
//! [`super::lockfile`] among them.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, bounded, select};

use super::args::ShareArgs;
use super::format::{
    describe_event, describe_watch, download_limit_lines, human, plural, upload_limit_lines,
};
use super::lockfile::FolderLock;
use super::progress::{StatusLine, hashing_line};
use super::signals::StopSignals;
use super::{BoxError, NotShared, node_config, prompt, stopped_by_signal};
use crate::peer::download;
use crate::peer::node::Node;
use crate::peer::ratelimit::RateLimiter;
use crate::peer::session::SessionEvent;
use crate::peer::share::{self, HashProgress, SharedFile};
use crate::peer::watch::{FolderWatch, Scope, WatchConfig, WatchEvent};

/// Session events waiting to be printed.
const EVENT_QUEUE: usize = 16;

pub fn run(a: ShareArgs, signals: &StopSignals) -> Result<(), BoxError> {
    let cfg = node_config(a.tracker.as_deref(), a.listen, a.upload_limit)?;
    let lock = FolderLock::acquire(&a.dir)?;
    let scan = hash_folder(&a, signals)?;
    report_scan(&a, &scan)?;
    let (tx, rx) = bounded(EVENT_QUEUE);
    // Commands only from a person: a pipe or /dev/null means a script or a
    // service, which only wants the peer to serve.
    let prompt = !a.no_prompt && std::io::stdin().is_terminal();
    let left = download::unfinished(&a.dir);
    if !left.is_empty() {
        note!("{}", unfinished_hint(&left, prompt, &a))?;
    }
    say_upload_limit(a.upload_limit, a.chunk_size)?;
    if prompt {
        say_download_limit(a.download_limit)?;
    } else if a.download_limit.is_some() {
        // Without the prompt this peer downloads nothing: say so rather
        // than accept a limit that limits nothing.
        note!(
            "downloads: --download-limit has no effect without the prompt (this peer only serves)"
        )?;
    }
    let count = scan.files.len();
    let trackers = cfg.trackers.len();
    let (wtx, wrx) = FolderWatch::channel();
    if prompt {
        let node = Arc::new(Node::start(cfg, scan.files, Some(tx))?);
        if let Some(l) = &lock {
            l.serving(node.local_addr().port());
        }
        note!("{}", serving_line(&node))?;
        let watch = start_watch(&a, &node, wtx)?;
        let opts = download_options(a.download_limit);
        let r = prompt::run(node, a.dir, opts, rx, wrx, signals);
        watch.stop();
        drop(lock);
        return Ok(r?);
    }
    let (printer, ended) = print_session_events(rx, AllRefused::new(count, trackers))?;
    let node = Node::start(cfg, scan.files, Some(tx))?;
    if let Some(l) = &lock {
        l.serving(node.local_addr().port());
    }
    let served = note!("{}", serving_line(&node));
    let watch = start_watch(&a, &node, wtx)?;
    let watch_printer = print_watch_events(wrx, false)?;
    let refused = match served {
        Ok(()) => serve_until_stopped(signals, ended),
        Err(_) => None,
    };
    // The watcher first: it drops its event sender, which ends its printer.
    watch.stop();
    let _ = watch_printer.join();
    node.leave();
    drop(lock);
    let _ = printer.join();
    served?;
    if let Some(why) = refused {
        let who = if trackers == 1 {
            "the tracker"
        } else {
            "every tracker"
        };
        return Err(Box::new(NotShared(format!(
            "{who} refused every file; left the network: {why}"
        ))));
    }
    note!("left the network")?;
    Ok(())
}

/// Starts live sharing: the folder watcher on the folder (or on the files
/// named), feeding the node's share index.
fn start_watch(
    a: &ShareArgs,
    node: &Node,
    events: Sender<WatchEvent>,
) -> Result<FolderWatch, BoxError> {
    let scope = if a.files.is_empty() {
        Scope::Folder
    } else {
        Scope::Paths(a.files.clone())
    };
    let w = FolderWatch::start(
        &a.dir,
        scope,
        a.chunk_size,
        Arc::clone(node.share()),
        WatchConfig::default(),
        Some(events),
    )?;
    Ok(w)
}

/// Live sharing for `peer get --seed`: the downloaded files (`names`, in
/// `dir`) are watched, so a file changed or removed there stops being
/// served (and a changed one is hashed again and shared with its new
/// content, in its chunk size). Stopping the handle returned stops the
/// watcher and joins its printer.
pub(super) fn watch_seeded(
    node: &Node,
    dir: &std::path::Path,
    names: &[String],
    to_stderr: bool,
) -> Result<SeedWatch, BoxError> {
    let chunk_size = names
        .iter()
        .find_map(|n| node.share().get(n))
        .map_or(crate::limits::DEFAULT_CHUNK_SIZE, |f| {
            f.geometry().chunk_size()
        });
    let (tx, rx) = FolderWatch::channel();
    let watch = FolderWatch::start(
        dir,
        Scope::Paths(names.iter().map(std::path::PathBuf::from).collect()),
        chunk_size,
        Arc::clone(node.share()),
        WatchConfig::default(),
        Some(tx),
    )?;
    let printer = print_watch_events(rx, to_stderr)?;
    Ok(SeedWatch { watch, printer })
}

/// The folder watcher of `peer get --seed` and its printer.
pub(super) struct SeedWatch {
    watch: FolderWatch,
    printer: std::thread::JoinHandle<()>,
}

impl SeedWatch {
    pub(super) fn stop(self) {
        self.watch.stop();
        let _ = self.printer.join();
    }
}

/// Prints what the folder watcher does, one line each, until it stops (it
/// drops its sender). Its own thread, so a slow terminal never holds the
/// watcher (it drops events instead).
pub(super) fn print_watch_events(
    rx: Receiver<WatchEvent>,
    to_stderr: bool,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("watch-events".into())
        .spawn(move || {
            for ev in rx {
                let line = describe_watch(&ev);
                if to_stderr {
                    // `--json`: stdout holds nothing but JSON lines.
                    if !crate::ui::out::is_quiet() {
                        use std::io::Write as _;
                        let _ = writeln!(std::io::stderr().lock(), "{line}");
                    }
                } else if note!("{line}").is_err() {
                    return;
                }
            }
        })
}

/// Hashes the folder (or the files named), showing progress on a terminal;
/// a signal stops it.
fn hash_folder(a: &ShareArgs, signals: &StopSignals) -> Result<share::Scan, BoxError> {
    let line = StatusLine::new(!a.quiet);
    let progress = |p: &HashProgress| {
        if p.bytes_total > 0 {
            line.draw(&hashing_line(p));
        }
    };
    let scanned = share::scan_dir_reporting(
        &a.dir,
        &a.files,
        a.chunk_size,
        &progress,
        Some(signals.flag()),
    );
    line.clear();
    scanned.map_err(|e| {
        let what = "stopped while hashing the folder; nothing was shared or registered";
        stopped_by_signal(e, signals, Some(what))
    })
}

/// Says what the scan found: what was skipped and why, the files (with
/// -v), a summary. Files named on the command line of which none can be
/// shared are an error; an empty folder is not (the prompt's use).
fn report_scan(a: &ShareArgs, scan: &share::Scan) -> Result<(), BoxError> {
    // A download's own files are not worth a line each: they are named
    // as downloads to resume.
    let skipped: Vec<String> = scan
        .skipped
        .iter()
        .filter(|(path, _)| {
            !path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(download::is_artifact)
        })
        .map(|(path, why)| format!("{}: {why}", path.display()))
        .collect();
    if !a.files.is_empty() && scan.files.is_empty() {
        return Err(Box::new(NotShared(format!(
            "none of the files named can be shared: {}",
            skipped.join("; ")
        ))));
    }
    for s in &skipped {
        note!("skipped {s}")?;
    }
    if scan.files.is_empty() {
        note!("nothing to share in {} (serving anyway)", a.dir.display())?;
        return Ok(());
    }
    if a.verbose {
        for f in &scan.files {
            note!("{}", sharing_line(f))?;
        }
    }
    note!("{}", summary_line(&scan.files))?;
    Ok(())
}

/// Serves until a signal, until nobody reads what we print, or until the
/// tracker has refused every file (then its reasons).
fn serve_until_stopped(signals: &StopSignals, mut ended: Receiver<PrinterEnd>) -> Option<String> {
    loop {
        select! {
            recv(signals.receiver()) -> _ => return None,
            recv(ended) -> m => match m {
                Ok(PrinterEnd::Closed) => return None,
                Ok(PrinterEnd::AllRefused(why)) => return Some(why),
                // The printer ended without news.
                Err(_) => ended = crossbeam_channel::never(),
            },
        }
    }
}

fn sharing_line(f: &SharedFile) -> String {
    let g = f.geometry();
    format!(
        "  {}  {} bytes ({}), {}",
        f.name(),
        g.length(),
        human(g.length() as f64),
        plural(u64::from(g.count()), "chunk")
    )
}

/// Echoes the upload limit, and warns on stderr when it is so low that a
/// chunk takes more than a few seconds to send.
pub(super) fn say_upload_limit(limit: Option<u64>, chunk_size: u32) -> std::io::Result<()> {
    let (line, warning) = upload_limit_lines(limit, chunk_size);
    note!("{line}")?;
    if let Some(w) = warning
        && !super::out::is_quiet()
    {
        eprintln!("{w}");
    }
    Ok(())
}

/// Echoes the download limit when there is one, and warns on stderr when
/// it is very low.
pub(super) fn say_download_limit(limit: Option<u64>) -> std::io::Result<()> {
    let Some((line, warning)) = download_limit_lines(limit) else {
        return Ok(());
    };
    note!("{line}")?;
    if let Some(w) = warning
        && !super::out::is_quiet()
    {
        eprintln!("{w}");
    }
    Ok(())
}

/// Download options with the limit `limit` (bytes per second; `None` or 0:
/// unlimited), one limiter for every download made with them.
pub(super) fn download_options(limit: Option<u64>) -> download::DownloadOptions {
    download::DownloadOptions {
        download_limit: Arc::new(RateLimiter::new(limit)),
        ..download::DownloadOptions::default()
    }
}

/// The downloads an earlier run left unfinished in the folder, and how to
/// resume them: at the prompt or with `peer get`.
fn unfinished_hint(names: &[String], prompt: bool, a: &ShareArgs) -> String {
    if prompt {
        return super::repl::text::unfinished_line(names);
    }
    format!(
        "unfinished {} in {}: {}; `peer get NAME{} --dir {}` resumes one",
        if names.len() == 1 {
            "download"
        } else {
            "downloads"
        },
        a.dir.display(),
        names.join(", "),
        a.tracker
            .as_ref()
            .map(|t| format!(" --tracker {t}"))
            .unwrap_or_default(),
        a.dir.display()
    )
}

/// "sharing 2,001 files, 1.2 GiB": what the scan found, in one line.
fn summary_line(files: &[SharedFile]) -> String {
    let bytes: u64 = files.iter().map(|f| f.geometry().length()).sum();
    format!(
        "sharing {}, {}",
        plural(files.len() as u64, "file"),
        human(bytes as f64)
    )
}

fn serving_line(node: &Node) -> String {
    let trackers: Vec<String> = node.trackers().iter().map(|t| t.to_string()).collect();
    let word = if trackers.len() == 1 {
        "tracker"
    } else {
        "trackers"
    };
    format!(
        "serving chunks on {} ({word} {})",
        node.local_addr(),
        trackers.join(", ")
    )
}

/// Why the session-event printer stopped before the session ended.
enum PrinterEnd {
    /// Stdout is closed.
    Closed,
    /// The tracker refused every one of the files shared, for these
    /// reasons.
    AllRefused(String),
}

/// Prints registration outcomes as the sessions report them, until they
/// end (they drop their sender when the node leaves). The receiver
/// returned gets a message if stdout is closed (the thread then ends) or
/// once `refusals` says every tracker refused every file.
fn print_session_events(
    rx: Receiver<SessionEvent>,
    mut refusals: AllRefused,
) -> std::io::Result<(std::thread::JoinHandle<()>, Receiver<PrinterEnd>)> {
    let (end_tx, ended) = bounded(1);
    let printer = std::thread::Builder::new()
        .name("session-events".into())
        .spawn(move || {
            let several = refusals.trackers > 1;
            for ev in rx {
                for line in describe_event(&ev, several) {
                    if note!("{line}").is_err() {
                        let _ = end_tx.send(PrinterEnd::Closed);
                        return;
                    }
                }
                if let Some(why) = refusals.add(&ev) {
                    let _ = end_tx.send(PrinterEnd::AllRefused(why));
                }
            }
        })?;
    Ok((printer, ended))
}

/// Whether every tracker has refused every file shared (pure). Each
/// tracker keeps its own state, so one refusing (a name another peer holds
/// there with other content) while another accepts is no reason to stop;
/// nor is a tracker that has not answered yet (it may accept when it
/// comes back).
struct AllRefused {
    files: usize,
    trackers: usize,
    /// Per tracker: files answered for, files accepted, at its first
    /// registration round(s).
    seen: HashMap<SocketAddr, (usize, usize)>,
    reasons: Vec<String>,
    said: bool,
}

impl AllRefused {
    fn new(files: usize, trackers: usize) -> AllRefused {
        AllRefused {
            files,
            trackers,
            seen: HashMap::new(),
            reasons: Vec::new(),
            said: false,
        }
    }

    /// Takes in one event; the reasons, once, when every tracker has
    /// answered for every file and accepted none.
    fn add(&mut self, ev: &SessionEvent) -> Option<String> {
        let SessionEvent::Registered {
            tracker,
            accepted,
            refused,
        } = ev
        else {
            return None;
        };
        let (answered, ok) = self.seen.entry(*tracker).or_default();
        if self.files == 0 || *answered >= self.files {
            return None;
        }
        *answered += accepted.len() + refused.len();
        *ok += accepted.len();
        let several = self.trackers > 1;
        self.reasons.extend(refused.iter().map(|(n, why)| {
            if several {
                format!("{tracker}: {n}: {why}")
            } else {
                format!("{n}: {why}")
            }
        }));
        let all = self.seen.len() >= self.trackers
            && self
                .seen
                .values()
                .all(|&(a, ok)| a >= self.files && ok == 0);
        if all && !self.said {
            self.said = true;
            return Some(self.reasons.join("; "));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(t: &str, accepted: &[&str], refused: &[&str]) -> SessionEvent {
        SessionEvent::Registered {
            tracker: t.parse().unwrap(),
            accepted: accepted.iter().map(|s| s.to_string()).collect(),
            refused: refused
                .iter()
                .map(|s| (s.to_string(), "conflict".to_string()))
                .collect(),
        }
    }

    #[test]
    fn one_tracker_refusing_everything_ends_the_share() {
        let mut r = AllRefused::new(2, 1);
        assert_eq!(r.add(&reg("10.0.0.1:7000", &[], &["a"])), None);
        assert_eq!(
            r.add(&reg("10.0.0.1:7000", &[], &["b"])).as_deref(),
            Some("a: conflict; b: conflict")
        );
        assert_eq!(
            r.add(&reg("10.0.0.1:7000", &[], &["a", "b"])),
            None,
            "said once"
        );
    }

    #[test]
    fn with_several_trackers_only_all_of_them_refusing_ends_it() {
        let mut r = AllRefused::new(1, 2);
        assert_eq!(
            r.add(&reg("10.0.0.1:7000", &[], &["a"])),
            None,
            "the other may accept"
        );
        assert_eq!(r.add(&reg("10.0.0.2:7000", &["a"], &[])), None);
        let mut r = AllRefused::new(1, 2);
        r.add(&reg("10.0.0.1:7000", &[], &["a"]));
        let why = r.add(&reg("10.0.0.2:7000", &[], &["a"])).unwrap();
        assert!(why.contains("10.0.0.1:7000: a: conflict"), "{why}");
        assert!(why.contains("10.0.0.2:7000: a: conflict"), "{why}");
    }
}
