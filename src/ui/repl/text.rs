//! What the prompt prints: the numbered list, `status`, the line that
//! announces a background download and the one that ends it, and one-line
//! explanations of failed lookups. Pure functions from engine types to
//! text.
//!
//! Owns nothing. Calls [`crate::ui::format`], [`crate::ui::progress`] and
//! engine types.

use std::fmt::Write as _;
use std::net::SocketAddr;

use super::jobs::DownloadState;
use crate::error_chain;
use crate::peer::PeerError;
use crate::peer::download::Summary;
use crate::peer::share::SharedFile;
use crate::ui::format::{already_complete, human, plural, rate, transfer_phrase};
use crate::ui::progress::{batch_line, progress_line};
use crate::wire::{ErrorCode, FileSummary};

/// Width of the chunk maps in `status`: one character per chunk up to 32.
const STATUS_MAP_WIDTH: usize = 32;

/// How this peer stands to a listed file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mine {
    No,
    Complete,
    Downloading,
    Partial,
}

/// One line of the numbered `list`, `w` the width of the name column.
pub fn list_line(number: usize, f: &FileSummary, w: usize, mine: Mine) -> String {
    let mine = match mine {
        Mine::Complete => "  (you have it)",
        Mine::Downloading => "  (downloading)",
        Mine::Partial => "  (partly here; get it to resume)",
        Mine::No => "",
    };
    format!(
        "{number:>3}. {:<w$}  {:>10}{mine}",
        f.name,
        human(f.length as f64)
    )
}

/// The first line of `status`: where chunks are served, and each tracker
/// with whether its session is connected.
pub fn serving_line(
    local: SocketAddr,
    trackers: &[SocketAddr],
    connected: &[SocketAddr],
) -> String {
    let each: Vec<String> = trackers
        .iter()
        .map(|t| {
            let state = if connected.contains(t) {
                "connected"
            } else {
                "not connected, retrying"
            };
            format!("{t} ({state})")
        })
        .collect();
    let word = if trackers.len() == 1 {
        "tracker"
    } else {
        "trackers"
    };
    format!("serving chunks on {local}; {word} {}", each.join(", "))
}

/// The files part of `status`: a header, then one line per file with its
/// size, chunk count and have-map.
pub fn files_block(files: &[std::sync::Arc<SharedFile>]) -> String {
    let mut s = String::new();
    if files.is_empty() {
        s.push_str("files: none yet\n");
    } else {
        let _ = writeln!(s, "files ({}):", files.len());
    }
    let w = files
        .iter()
        .map(|f| f.name().chars().count())
        .max()
        .unwrap_or(0);
    for f in files {
        let g = f.geometry();
        let have = f.have();
        let _ = writeln!(
            s,
            "  {:<w$}  {:>10}  {:>15}  {}",
            f.name(),
            human(g.length() as f64),
            format!("{}/{} chunks", have.count_ones(), g.count()),
            have.render(STATUS_MAP_WIDTH)
        );
    }
    s
}

/// The downloads part of `status` (empty when none were started), each
/// line fitted to `columns`.
pub fn downloads_block(jobs: &[(String, DownloadState)], columns: usize) -> String {
    let mut s = String::new();
    if !jobs.is_empty() {
        s.push_str("downloads:\n");
    }
    let w = jobs
        .iter()
        .map(|(n, _)| n.chars().count())
        .max()
        .unwrap_or(0);
    for (name, st) in jobs {
        let text = match st {
            DownloadState::Starting => "starting".to_owned(),
            DownloadState::Running(p) => progress_line(p, columns.saturating_sub(w + 4)),
            DownloadState::Done(s) if already_complete(s) => {
                format!("done: {} already complete here", human(s.length as f64))
            }
            DownloadState::Done(s) => format!(
                "done: {} in {:.1} s from {}",
                human(s.length as f64),
                s.elapsed.as_secs_f64(),
                plural(
                    s.sources.iter().filter(|x| x.bytes > 0).count() as u64,
                    "peer"
                )
            ),
            DownloadState::Failed(why) => format!("failed: {why}"),
            DownloadState::RunningSet(p) => batch_line(p, columns.saturating_sub(w + 4)),
            DownloadState::SetDone(total) => total.clone(),
        };
        let _ = writeln!(s, "  {name:<w$}  {}", text.trim_end());
    }
    s
}

/// The downloads left unfinished in the folder (an earlier run stopped
/// them), and how to go on with one.
pub fn unfinished_line(names: &[String]) -> String {
    let typed: Vec<String> = names.iter().map(|n| super::command::as_typed(n)).collect();
    format!(
        "unfinished {}: {}; type get NAME to resume one",
        if names.len() == 1 {
            "download"
        } else {
            "downloads"
        },
        typed.join(", ")
    )
}

/// The last line of `status`: uploads, in all and over `secs` seconds.
pub fn uploads_line(connections: usize, total: u64, recent: u64, secs: f64) -> String {
    format!(
        "uploads: {} open; {} sent in all, {} over the last {:.1} s",
        plural(connections as u64, "peer connection"),
        human(total as f64),
        rate(recent, secs),
        secs.max(1e-3)
    )
}

/// The answer to a `get` that started a background download.
pub fn started_line(name: &str, length: u64, sources: usize) -> String {
    format!(
        "downloading {name} ({}) from {sources} source{} in the background; type status to follow it",
        human(length as f64),
        if sources == 1 { "" } else { "s" }
    )
}

/// The answer to a `get` of several files or a folder.
pub fn set_started_line(count: usize, bytes: u64, already: usize, busy: usize) -> String {
    let mut out = Vec::new();
    if already > 0 {
        out.push(format!("{already} you already have"));
    }
    if busy > 0 {
        out.push(format!("{busy} being downloaded already"));
    }
    let have = if out.is_empty() {
        String::new()
    } else {
        format!(" ({} left out)", out.join(", "))
    };
    format!(
        "downloading {} ({}){have} in the background; type status to follow them",
        plural(count as u64, "file"),
        human(bytes as f64)
    )
}

/// The line announcing a finished background download.
pub fn done_line(s: &Summary) -> String {
    if already_complete(s) {
        return format!(
            "{} ({}) is already complete here, every chunk verified: {}",
            s.name,
            human(s.length as f64),
            s.path.display()
        );
    }
    let from: Vec<String> = s
        .sources
        .iter()
        .filter(|x| x.bytes > 0)
        .map(|x| format!("{} from {}", human(x.bytes as f64), x.addr))
        .collect();
    format!(
        "download finished: {} ({}) {}{}{}; saved to {}",
        s.name,
        human(s.length as f64),
        transfer_phrase(s),
        if from.is_empty() { "" } else { "; " },
        from.join(", "),
        s.path.display()
    )
}

/// One line for a failed lookup, with a hint where one helps.
pub fn explain(name: &str, e: &PeerError) -> String {
    match e {
        PeerError::Refused {
            code: ErrorCode::UnknownFile,
            ..
        } => format!("no file named {name:?} on the network; type list to see the names"),
        PeerError::Refused {
            code: ErrorCode::InvalidName,
            message,
            ..
        } => format!("{name:?} is not a valid name: {message}"),
        e => format!("cannot ask the tracker: {}", error_chain(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::set_started_line;

    #[test]
    fn a_set_says_which_files_it_left_out_and_why() {
        let l = set_started_line(3, 3 << 20, 0, 0);
        assert!(!l.contains("left out"), "{l}");
        let l = set_started_line(3, 3 << 20, 2, 1);
        assert!(
            l.contains("(2 you already have, 1 being downloaded already left out)"),
            "{l}"
        );
        let l = set_started_line(3, 3 << 20, 0, 4);
        assert!(l.contains("(4 being downloaded already left out)"), "{l}");
    }
}
