//! `peer share`: hash the folder, start the node, then serve until a
//! signal, with the prompt on a terminal.
//!
//! Owns: what `peer share` prints. Calls `peer::{share, node, client}` and
//! the other `ui` modules.

use std::io::IsTerminal;
use std::sync::Arc;

use crossbeam_channel::{Receiver, bounded, select};

use super::args::ShareArgs;
use super::format::{describe_event, human};
use super::progress::{StatusLine, hashing_line};
use super::signals::StopSignals;
use super::{BoxError, node_config, prompt, stopped_by_signal};
use crate::peer::node::Node;
use crate::peer::session::SessionEvent;
use crate::peer::share::{self, SharedFile};

/// Session events waiting to be printed.
const EVENT_QUEUE: usize = 16;

pub fn run(a: ShareArgs, signals: &StopSignals) -> Result<(), BoxError> {
    let cfg = node_config(&a.tracker, a.listen, a.upload_limit)?;
    let line = StatusLine::new(true);
    let progress = |done: u64, total: u64| {
        if total > 0 {
            line.draw(&hashing_line(done, total));
        }
    };
    let scanned = share::scan_dir_cancellable(
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
    for (path, why) in &scan.skipped {
        outln!("skipped {}: {why}", path.display())?;
    }
    if scan.files.is_empty() {
        outln!("nothing to share in {} (serving anyway)", a.dir.display())?;
    }
    for f in &scan.files {
        outln!("{}", sharing_line(f))?;
    }
    let (tx, rx) = bounded(EVENT_QUEUE);
    // Commands only from a person: a pipe or /dev/null means a script or a
    // service, which only wants the peer to serve.
    if !a.no_prompt && std::io::stdin().is_terminal() {
        let node = Arc::new(Node::start(cfg, scan.files, Some(tx))?);
        outln!("{}", serving_line(&node))?;
        return Ok(prompt::run(node, a.dir, rx, signals)?);
    }
    let (printer, mut closed) = print_session_events(rx)?;
    let node = Node::start(cfg, scan.files, Some(tx))?;
    let served = outln!("{}", serving_line(&node));
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
    outln!("left the network")?;
    Ok(())
}

fn sharing_line(f: &SharedFile) -> String {
    let g = f.geometry();
    format!(
        "sharing {}  {} bytes ({}), {} chunks",
        f.name(),
        g.length(),
        human(g.length() as f64),
        g.count()
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
                    if outln!("{line}").is_err() {
                        let _ = closed_tx.send(());
                        return;
                    }
                }
            }
        })?;
    Ok((printer, closed))
}
