//! `peer get`: download one file, several, or folders, with a progress
//! display, print the summary (text, or JSON with `--json`), and seed on
//! request.
//!
//! Owns: what `peer get` prints, its JSON objects ([`FileJson`],
//! [`SummaryJson`]) and the text of a set's outcome (also used by the
//! prompt). The checks of the names and of the files' presence are the
//! download's own (its errors say what is wrong); this file only shows
//! them. One name that is not a folder goes the single-file way (its bar
//! and summary); anything else is a set run by `peer::download::batch`.
//! Calls `peer::node`, `peer::download` and the other `ui` modules.

use std::io::IsTerminal;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::args::{GetArgs, Usage};
use super::format::{already_complete, format_summary, human, plural, rate};
use super::progress::{StatusLine, batch_line};
use super::signals::StopSignals;
use super::{BoxError, Interrupted, Resumable, node_config, stopped_by_signal};
use crate::chunks::ContentId;
use crate::error_chain;
use crate::peer::PeerError;
use crate::peer::download::batch::{self, FileOutcome, Planned};
use crate::peer::download::{DownloadOptions, Summary};
use crate::peer::node::Node;

/// One file of a `--json` run: printed as the file ends, when several
/// files were asked. Every field is documented in README ("JSON output").
#[derive(Debug, Serialize)]
pub struct FileJson {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub name: String,
    /// The content id (40 hex digits), once the file was described.
    pub id: Option<String>,
    pub length: Option<u64>,
    /// "ok" (fetched, all or part, and in place), "skipped" (already
    /// complete in place, nothing fetched) or "failed".
    pub status: &'static str,
    pub error: Option<String>,
    pub path: Option<String>,
    pub bytes_downloaded: u64,
    /// Chunks received twice (endgame) and thrown away.
    pub duplicates: u32,
    pub seconds: f64,
    pub sources: Vec<SourceJson>,
}

/// What one source gave to one file.
#[derive(Debug, Serialize)]
pub struct SourceJson {
    pub endpoint: String,
    pub chunks: u32,
    pub bytes: u64,
    pub hash_failures: u32,
    pub dropped: Option<String>,
}

/// The last line of every `--json` run of `peer get` that got as far as
/// downloading.
#[derive(Debug, Serialize)]
pub struct SummaryJson {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub files: usize,
    pub ok: usize,
    pub skipped: usize,
    pub failed: usize,
    /// Bytes fetched over the network in this run.
    pub bytes: u64,
    /// The length of every file now complete in place.
    pub bytes_complete: u64,
    pub seconds: f64,
    pub rate_bytes_per_s: f64,
    /// Names of the files not in place, in the order asked.
    pub missing: Vec<String>,
}

/// Why `--id` with several names or a folder is refused (here and at the
/// prompt).
pub const ID_ONE_FILE: &str =
    "--id pins the content of one file: give exactly one name, not several names or a folder";

pub fn run(a: GetArgs, signals: &StopSignals) -> Result<(), BoxError> {
    if a.names.is_empty() {
        return Err(Box::new(Usage(
            "peer get needs at least one NAME (a file, or a folder ending in /)".into(),
        )));
    }
    let several = a.names.len() > 1 || a.names.iter().any(|n| batch::is_folder(n));
    if several && a.id.is_some() {
        return Err(Box::new(Usage(ID_ONE_FILE.into())));
    }
    let cfg = node_config(a.tracker.as_deref(), a.listen, a.upload_limit)?;
    // Before the node starts: a name or folder nobody has writes nothing.
    let (plan, unanswered) = batch::plan(&cfg.trackers, &a.names)?;
    super::query::warn_unanswered(&unanswered);
    let node = Node::start(cfg, Vec::new(), None)?;
    let what = match plan.as_slice() {
        [one] if !several => one.name.clone(),
        _ => plural(plan.len() as u64, "file"),
    };
    if !a.json {
        note!(
            "serving chunks on {} while downloading {what}",
            node.local_addr()
        )?;
    }
    if !a.json {
        // The files' chunk size is not known yet: warn for the default one.
        if a.upload_limit.is_some_and(|l| l > 0) {
            super::share::say_upload_limit(a.upload_limit, crate::limits::DEFAULT_CHUNK_SIZE)?;
        }
        super::share::say_download_limit(a.download_limit)?;
    }
    // One value for every file: its download limiter (an Arc) paces all
    // of them together.
    let opts = DownloadOptions {
        pipeline_depth: a.pipeline.max(1),
        expect_id: a.id,
        // A set syncs each folder once at the end (batch::run).
        sync_folder: !several,
        ..super::share::download_options(a.download_limit)
    };
    let result = if several {
        many(&a, &node, &plan, &opts, signals)
    } else {
        single(&a, &node, &plan[0].name, &opts, signals)
    };
    if let Err(e) = result {
        node.leave();
        return Err(e);
    }
    if a.seed {
        if !a.json {
            note!("seeding {what} on {} until Ctrl-C", node.local_addr())?;
        }
        let names: Vec<String> = plan.iter().map(|p| p.name.clone()).collect();
        let watch = super::share::watch_seeded(&node, &a.dir, &names, a.json)?;
        signals.wait();
        watch.stop();
    }
    node.leave();
    Ok(())
}

/// Whether the progress display may be drawn: not with `-q`, `--json` or
/// `-v` on the terminal (its log lines on the same stream would break the
/// bar up; with --log-file they go elsewhere).
fn bar_allowed(a: &GetArgs) -> bool {
    !a.quiet && !a.json && (!a.verbose || a.log_file.is_some())
}

/// One file, the way `peer get NAME` always did: its bar and its summary.
fn single(
    a: &GetArgs,
    node: &Node,
    name: &str,
    opts: &DownloadOptions,
    signals: &StopSignals,
) -> Result<(), BoxError> {
    let bar = StatusLine::new(bar_allowed(a));
    // Ctrl-C / SIGTERM stop the download cleanly (verified chunks kept for
    // a resume, Leave sent) rather than killing it mid-write.
    let mut started = false;
    let began = Instant::now();
    let result = node.download_cancellable(name, &a.dir, opts, Some(signals.flag()), &mut |p| {
        started = true;
        bar.draw_progress(p)
    });
    bar.clear();
    let outcome = FileOutcome {
        name: name.to_owned(),
        result,
        started,
        elapsed: began.elapsed(),
    };
    if a.json {
        // Printed for a failure too, before the error, so a script always
        // gets its last line.
        let records = [file_json(node, &outcome)];
        outln!("{}", to_json(&summary_json(&records, began.elapsed()))?)?;
    }
    let summary = match outcome.result {
        Ok(s) => s,
        Err(e) if signals.received().is_some() => {
            return Err(stopped_by_signal(e, signals, None));
        }
        Err(e) if started => {
            return Err(Box::new(Resumable::new(
                e,
                "run the same command again to resume",
            )));
        }
        Err(e) => return Err(Box::new(e)),
    };
    if !a.json {
        note!("{}", format_summary(&summary).trim_end())?;
    }
    Ok(())
}

/// A set of files: one display for all of them, a line per file and a
/// total at the end (or JSON), and an error naming the files missing.
fn many(
    a: &GetArgs,
    node: &Node,
    plan: &[Planned],
    opts: &DownloadOptions,
    signals: &StopSignals,
) -> Result<(), BoxError> {
    let bar = StatusLine::new(bar_allowed(a) && std::io::stdout().is_terminal());
    let began = Instant::now();
    let cancel: &AtomicBool = signals.flag();
    let fetch = |name: &str, on: &mut dyn FnMut(&crate::peer::download::Progress)| {
        node.download_cancellable(name, &a.dir, opts, Some(cancel), on)
    };
    let mut records = Vec::with_capacity(plan.len());
    let mut json_error = None;
    let outcomes = batch::run(
        plan,
        a.jobs,
        Some(cancel),
        &fetch,
        &mut |p| {
            if bar.is_on() {
                bar.draw(&batch_line(p, super::progress::stderr_columns()));
            }
        },
        &mut |o| {
            let r = file_json(node, o);
            if a.json && json_error.is_none() {
                bar.clear();
                if let Err(e) = to_json(&r).and_then(|t| Ok(outln!("{t}")?)) {
                    json_error = Some(e);
                }
            }
            records.push(r);
        },
    );
    bar.clear();
    if let Some(e) = json_error {
        return Err(e);
    }
    let elapsed = began.elapsed();
    if a.json {
        outln!("{}", to_json(&summary_json(&records, elapsed))?)?;
    } else {
        for o in &outcomes {
            note!("{}", file_line(o))?;
        }
        note!("{}", total_line(&outcomes, elapsed))?;
    }
    let failed: Vec<FileOutcome> = outcomes.into_iter().filter(|o| o.result.is_err()).collect();
    if failed.is_empty() {
        return Ok(());
    }
    let total = plan.len();
    if let Some(signal) = signals.received() {
        return Err(Box::new(Interrupted {
            signal,
            message: format!(
                "stopped with {} of {total} files in place; run the same command again to \
                 resume the rest",
                total - failed.len()
            ),
        }));
    }
    Err(Box::new(SetFailed::new(failed, total)))
}

/// Some files of a set are not in place: which, and why. Its exit status
/// is that of the first failure (see `ui::error_status`, which follows
/// `source`).
#[derive(Debug)]
pub struct SetFailed {
    text: String,
    first: PeerError,
}

impl SetFailed {
    fn new(failed: Vec<FileOutcome>, total: usize) -> SetFailed {
        let n = failed.len();
        let mut reasons = Vec::new();
        let mut first = None;
        for o in failed {
            if let Err(e) = o.result {
                if reasons.len() < 5 {
                    reasons.push(format!("{}: {}", o.name, error_chain(&e)));
                }
                first.get_or_insert(e);
            }
        }
        if n > reasons.len() {
            reasons.push(format!("and {} more (listed above)", n - reasons.len()));
        }
        let text = format!(
            "{n} of {total} files not downloaded: {}; the files in place are kept and \
             verified chunks too: run the same command again to fetch the rest",
            reasons.join("; ")
        );
        let first = first.unwrap_or_else(|| PeerError::Download("no file failed".into()));
        SetFailed { text, first }
    }
}

impl std::fmt::Display for SetFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for SetFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.first)
    }
}

fn to_json<T: Serialize>(v: &T) -> Result<String, BoxError> {
    serde_json::to_string(v).map_err(|e| Box::new(e) as BoxError)
}

/// Whether the file was complete in place before this run (verified, not
/// fetched): its download never got as far as the engine, which reports
/// progress at once (an empty file fetched now does).
fn was_complete(o: &FileOutcome) -> bool {
    o.result
        .as_ref()
        .is_ok_and(|s| already_complete(s) && !o.started)
}

/// "ok", "skipped" or "failed".
fn status(o: &FileOutcome) -> &'static str {
    match &o.result {
        Ok(_) if was_complete(o) => "skipped",
        Ok(_) => "ok",
        Err(_) => "failed",
    }
}

/// The JSON record of one file. Its content id comes from the share
/// index, which holds the file (complete, or partial for a resume) once it
/// was described.
pub fn file_json(node: &Node, o: &FileOutcome) -> FileJson {
    let shared = node.share().get(&o.name);
    let id = shared.as_ref().map(|f| {
        let g = f.geometry();
        ContentId::compute(g.length(), g.chunk_size(), f.hashes()).to_string()
    });
    let length = shared.as_ref().map(|f| f.geometry().length());
    let (summary, error): (Option<&Summary>, Option<String>) = match &o.result {
        Ok(s) => (Some(s), None),
        Err(e) => (None, Some(error_chain(e))),
    };
    FileJson {
        kind: "file",
        name: o.name.clone(),
        id,
        length: summary.map(|s| s.length).or(length),
        status: status(o),
        error,
        path: summary.map(|s| s.path.display().to_string()),
        bytes_downloaded: summary.map_or(0, |s| s.bytes_downloaded),
        duplicates: summary.map_or(0, |s| s.duplicates),
        seconds: o.elapsed.as_secs_f64(),
        sources: summary.map_or_else(Vec::new, |s| {
            s.sources
                .iter()
                .map(|x| SourceJson {
                    endpoint: x.addr.to_string(),
                    chunks: x.chunks,
                    bytes: x.bytes,
                    hash_failures: x.hash_failures,
                    dropped: x.dropped.clone(),
                })
                .collect()
        }),
    }
}

/// The summary object of a run.
pub fn summary_json(records: &[FileJson], elapsed: Duration) -> SummaryJson {
    let count = |s: &str| records.iter().filter(|r| r.status == s).count();
    let bytes: u64 = records.iter().map(|r| r.bytes_downloaded).sum();
    let seconds = elapsed.as_secs_f64();
    SummaryJson {
        kind: "summary",
        files: records.len(),
        ok: count("ok"),
        skipped: count("skipped"),
        failed: count("failed"),
        bytes,
        bytes_complete: records
            .iter()
            .filter(|r| r.status != "failed")
            .filter_map(|r| r.length)
            .sum(),
        seconds,
        rate_bytes_per_s: bytes as f64 / seconds.max(1e-3),
        missing: records
            .iter()
            .filter(|r| r.status == "failed")
            .map(|r| r.name.clone())
            .collect(),
    }
}

/// One file of a set, for the summary printed at the end:
/// "ok       photos/a.jpg  1.2 MiB in 0.31 s", "skipped  photos/b.jpg  …
/// already complete", "FAILED   photos/c.jpg: why".
pub fn file_line(o: &FileOutcome) -> String {
    match &o.result {
        Ok(s) if was_complete(o) => format!(
            "  skipped  {}  {}, already complete (every chunk verified)",
            s.name,
            human(s.length as f64)
        ),
        Ok(s) if s.chunks_resumed > 0 => format!(
            "  ok       {}  {}, {} fetched in {:.2} s, the rest already on disk",
            s.name,
            human(s.length as f64),
            human(s.bytes_downloaded as f64),
            o.elapsed.as_secs_f64()
        ),
        Ok(s) => format!(
            "  ok       {}  {} in {:.2} s",
            s.name,
            human(s.length as f64),
            o.elapsed.as_secs_f64()
        ),
        Err(e) => format!("  FAILED   {}: {}", o.name, error_chain(e)),
    }
}

/// The total of a set: "downloaded 298 of 300 files: 12.3 MiB fetched in
/// 3.20 s, 3.8 MiB/s; 1 already complete; 2 failed".
pub fn total_line(outcomes: &[FileOutcome], elapsed: Duration) -> String {
    let ok: Vec<&Summary> = outcomes
        .iter()
        .filter_map(|o| o.result.as_ref().ok())
        .collect();
    let skipped = outcomes.iter().filter(|o| was_complete(o)).count();
    let failed = outcomes.len() - ok.len();
    let fetched: u64 = ok.iter().map(|s| s.bytes_downloaded).sum();
    let secs = elapsed.as_secs_f64();
    let mut line = format!(
        "downloaded {} of {}: {} fetched in {secs:.2} s, {}",
        ok.len(),
        plural(outcomes.len() as u64, "file"),
        human(fetched as f64),
        rate(fetched, secs)
    );
    if skipped > 0 {
        line.push_str(&format!("; {skipped} already complete"));
    }
    if failed > 0 {
        line.push_str(&format!("; {failed} failed"));
    }
    line
}
