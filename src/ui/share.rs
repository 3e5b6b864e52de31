//! `peer share`: hash the folder, start the node, then serve until a
//! signal, with the prompt on a terminal.
//!
//! Owns: what `peer share` prints. Calls `peer::{share, node, session}` and
//! the other `ui` modules.

use std::io::IsTerminal;
use std::sync::Arc;

use crossbeam_channel::{Receiver, bounded, select};

use super::args::ShareArgs;
use super::format::{describe_event, human, plural, upload_limit_lines};
use super::progress::{StatusLine, hashing_line};
use super::signals::StopSignals;
use super::{BoxError, node_config, prompt, stopped_by_signal};
use crate::peer::download;
use crate::peer::node::Node;
use crate::peer::session::SessionEvent;
use crate::peer::share::{self, HashProgress, SharedFile};

/// Session events waiting to be printed.
const EVENT_QUEUE: usize = 16;

pub fn run(a: ShareArgs, signals: &StopSignals) -> Result<(), BoxError> {
    let cfg = node_config(a.tracker.as_deref(), a.listen, a.upload_limit)?;
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
    let scan = scanned.map_err(|e| {
        let what = "stopped while hashing the folder; nothing was shared or registered";
        stopped_by_signal(e, signals, Some(what))
    })?;
    // A download's own files are not worth a line each: they are named
    // below as downloads to resume.
    for (path, why) in &scan.skipped {
        let artifact = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(download::is_artifact);
        if !artifact {
            note!("skipped {}: {why}", path.display())?;
        }
    }
    if scan.files.is_empty() {
        note!("nothing to share in {} (serving anyway)", a.dir.display())?;
    } else if a.verbose {
        for f in &scan.files {
            note!("{}", sharing_line(f))?;
        }
    }
    if !scan.files.is_empty() {
        note!("{}", summary_line(&scan.files))?;
    }
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
        let node = Arc::new(Node::start(cfg, scan.files, Some(tx))?);
        note!("{}", serving_line(&node))?;
        return Ok(prompt::run(node, a.dir, rx, signals)?);
    }
    let (printer, mut closed) = print_session_events(rx)?;
    let node = Node::start(cfg, scan.files, Some(tx))?;
    let served = note!("{}", serving_line(&node));
    if served.is_ok() {
        // Until a signal, or until nobody reads what we print.
        loop {
            select! {
                recv(signals.receiver()) -> _ => break,
                recv(closed) -> m => match m {
                    Ok(()) => break,
                    // The printer ended without finding stdout closed.
                    Err(_) => closed = crossbeam_channel::never(),
                },
            }
        }
    }
    node.leave();
    let _ = printer.join();
    served?;
    note!("left the network")?;
    Ok(())
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
    if let Some(w) = warning {
        if !super::out::is_quiet() {
            eprintln!("{w}");
        }
    }
    Ok(())
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
    format!(
        "serving chunks on {} (tracker {})",
        node.local_addr(),
        node.tracker()
    )
}

/// Prints registration outcomes as the session reports them, until the
/// session ends (it drops its sender when the node leaves). The receiver
/// returned gets a message if stdout is closed; the thread then ends.
fn print_session_events(
    rx: Receiver<SessionEvent>,
) -> std::io::Result<(std::thread::JoinHandle<()>, Receiver<()>)> {
    let (closed_tx, closed) = bounded(1);
    let printer = std::thread::Builder::new()
        .name("session-events".into())
        .spawn(move || {
            for ev in rx {
                for line in describe_event(&ev) {
                    if note!("{line}").is_err() {
                        let _ = closed_tx.send(());
                        return;
                    }
                }
            }
        })?;
    Ok((printer, closed))
}
