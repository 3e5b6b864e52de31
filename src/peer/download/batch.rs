//! Several downloads as one: `peer get NAME...`, folders (`photos/`), and
//! the prompt's `get` of several names.
//!
//! Owns: what a set of wanted names means ([`plan`]: each folder name,
//! ending in `/`, becomes every file the trackers list under it, matched on
//! whole path components ([`is_under`]); a name or folder nobody lists is
//! an error before anything is written; each file once), and running the
//! set ([`run`]): at most `jobs` files at a time, each on a `batch-N`
//! thread, with the combined progress and the outcome of every file.
//!
//! Each file is fetched by the caller's function (a `Node`'s download,
//! with one options value for all of them), so the peer's chunk server,
//! its upload limiter and whatever limiter the options share hold for the
//! whole set, and every finished file is served at once. A file that
//! fails does not stop the others; its verified chunks stay for a resume,
//! and a file already complete in place is verified by its hashes and not
//! fetched again (the single download's own rules).
//!
//! Each `batch-N` thread installs a `small::PoolGuard`: the connections
//! its small files are fetched over (`small`, from inside the one-file
//! download), kept open for as long as the thread takes files; the set's
//! `small::Interrupt` shuts them all once the set is cancelled. A file of
//! that fast path comes back complete but not yet named
//! (`small::take_unnamed`): the set's `finish-N` threads make it durable,
//! name it and report it, while its `batch-N` thread fetches the next
//! (naming waits for the disk; fetching should not).
//!
//! Calls `wire` (the name rule), the peer's `client` (the file list) and
//! the download's `rate` and `small` (the pool); nothing of the engine.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, SendError, Sender, bounded};

use super::rate::RateMeter;
use super::{Progress, Summary};
use crate::limits::{FINISHERS_PER_JOB, MAX_BATCH_JOBS};
use crate::peer::client;
use crate::peer::{PeerError, Result};
use crate::sync::lock;
use crate::wire;

/// Trackers that did not answer a query, and why.
pub type Unanswered = Vec<(SocketAddr, PeerError)>;

/// Downloads one file by name, reporting its progress: what a set's
/// threads call for each file (a `Node`'s download, in the programs).
pub type Fetch<'a> = dyn Fn(&str, &mut dyn FnMut(&Progress)) -> Result<Summary> + Sync + 'a;

/// How often the combined progress is reported while files download.
const PROGRESS_TICK: Duration = Duration::from_millis(200);

/// Whether `name` means a folder: it ends with `/`.
pub fn is_folder(name: &str) -> bool {
    name.ends_with('/')
}

/// Whether the file `name` is `prefix` itself or lies under it, on whole
/// path components: `photos` and `photos/` both take in `photos/a.jpg` and
/// not `photosx/a.jpg`; `photos` (without the slash) also matches a file
/// named `photos`. An empty prefix (or `/`) takes in every name.
pub fn is_under(name: &str, prefix: &str) -> bool {
    let p = prefix.trim_end_matches('/');
    if p.is_empty() {
        return true;
    }
    let exact = !is_folder(prefix) && name == p;
    exact
        || name
            .strip_prefix(p)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Checks a wanted name: a file name by the network's rule, or a folder
/// (the same, followed by one `/`).
pub fn validate_wanted(name: &str) -> std::result::Result<(), String> {
    let base = name.strip_suffix('/').unwrap_or(name);
    wire::validate_name(base).map_err(|e| format!("invalid name {name:?}: {e}"))
}

/// One file of a set, as planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub name: String,
    /// Its length as the file list gave it (unknown for a single name,
    /// which is not looked up in the list, or one beyond a cut list).
    pub length: Option<u64>,
}

/// The files `wanted` stands for, each once, in the order given (a
/// folder's files in name order), and the trackers that did not answer the
/// list query. A single file name is passed through without asking (its
/// download says if it does not exist); otherwise the trackers are asked
/// for their file list once, and any name or folder that matches nothing
/// is an error (`NotFound`) naming all of them, before any file is
/// fetched. A name that is missing from a list the tracker cut short is
/// kept (its own download decides); a folder that matches nothing in a cut
/// list is still an error.
pub fn plan(trackers: &[SocketAddr], wanted: &[String]) -> Result<(Vec<Planned>, Unanswered)> {
    for w in wanted {
        validate_wanted(w).map_err(PeerError::Invalid)?;
    }
    if let [one] = wanted
        && !is_folder(one)
    {
        let p = Planned {
            name: one.clone(),
            length: None,
        };
        return Ok((vec![p], Vec::new()));
    }
    let merged = client::list_files_all(trackers)?;
    let (files, truncated) = merged.value;
    let listed: Vec<(String, u64)> = files.into_iter().map(|f| (f.name, f.length)).collect();
    let plan = expand(&listed, truncated, wanted).map_err(PeerError::NotFound)?;
    Ok((plan, merged.failed))
}

/// [`plan`] on a file list already fetched (sorted by name, as the merged
/// list is): pure.
pub fn expand(
    listed: &[(String, u64)],
    truncated: bool,
    wanted: &[String],
) -> std::result::Result<Vec<Planned>, String> {
    let mut seen = HashSet::new();
    let mut plan = Vec::new();
    let mut unknown = Vec::new();
    for w in wanted {
        if is_folder(w) {
            let before = plan.len();
            for (name, length) in listed.iter().filter(|(n, _)| is_under(n, w)) {
                if seen.insert(name.clone()) {
                    plan.push(Planned {
                        name: name.clone(),
                        length: Some(*length),
                    });
                }
            }
            let matched = plan.len() > before || listed.iter().any(|(n, _)| is_under(n, w));
            if !matched {
                unknown.push(format!("no file under {w:?}"));
            }
            continue;
        }
        let length = listed.iter().find(|(n, _)| n == w).map(|(_, l)| *l);
        if length.is_none() && !truncated {
            unknown.push(format!("no file named {w:?}"));
        } else if seen.insert(w.clone()) {
            plan.push(Planned {
                name: w.clone(),
                length,
            });
        }
    }
    if unknown.is_empty() {
        return Ok(plan);
    }
    let cut = if truncated {
        " (the tracker cut its file list short)"
    } else {
        ""
    };
    Err(format!(
        "{} on the network{cut}; nothing was downloaded",
        unknown.join(", ")
    ))
}

/// How one file of the set ended.
#[derive(Debug)]
pub struct FileOutcome {
    pub name: String,
    pub result: Result<Summary>,
    /// Whether its download got as far as fetching (its verified chunks
    /// may be kept for a resume).
    pub started: bool,
    pub elapsed: Duration,
}

/// The combined progress of a set, for a display.
#[derive(Debug, Clone)]
pub struct BatchProgress {
    pub files_total: usize,
    /// Files verified and in place.
    pub files_done: usize,
    pub files_failed: usize,
    /// Every file's length, as far as known.
    pub total_bytes: u64,
    /// Verified bytes on disk, of the files done and those running.
    pub done_bytes: u64,
    /// Bytes per second fetched over the last few seconds.
    pub rate: f64,
    pub elapsed: Duration,
    /// The files downloading now: name, verified bytes, length.
    pub current: Vec<(String, u64, u64)>,
}

/// What is known of one file while the set runs.
#[derive(Default)]
struct FileState {
    name: String,
    running: bool,
    length: Option<u64>,
    done: u64,
    /// `done` at the file's previous report (its first one counts what
    /// was already on disk, which is not fetched now).
    reported: Option<u64>,
}

struct Shared {
    files: Vec<FileState>,
    rate: RateMeter,
    done_count: usize,
    failed_count: usize,
}

impl Shared {
    /// Nothing of `files` done yet.
    fn new(files: &[Planned]) -> Shared {
        Shared {
            files: files
                .iter()
                .map(|f| FileState {
                    name: f.name.clone(),
                    length: f.length,
                    ..FileState::default()
                })
                .collect(),
            rate: RateMeter::new(),
            done_count: 0,
            failed_count: 0,
        }
    }
}

/// Downloads every file of `files`, at most `jobs` at once (at least one,
/// at most [`MAX_BATCH_JOBS`]), each with `fetch(name, on_progress)`
/// (whose options should have `sync_folder` off: the folders that received
/// files are synced here, once each, at the end).
/// `on_progress` gets the combined progress about every
/// [`PROGRESS_TICK`], `on_done` each file's outcome as it ends; both run on
/// the caller's thread. Once `cancel` is set no new file starts (the
/// running ones see the same flag through `fetch`), and the files never
/// started end with an error saying so. Returns every file's outcome, in
/// the order of `files`.
pub fn run(
    files: &[Planned],
    jobs: usize,
    cancel: Option<&AtomicBool>,
    fetch: &Fetch<'_>,
    on_progress: &mut dyn FnMut(&BatchProgress),
    on_done: &mut dyn FnMut(&FileOutcome),
) -> Vec<FileOutcome> {
    let started = Instant::now();
    let shared = Mutex::new(Shared::new(files));
    let next = AtomicUsize::new(0);
    let jobs = jobs.clamp(1, MAX_BATCH_JOBS).min(files.len().max(1));
    let mut outcomes: Vec<Option<FileOutcome>> = files.iter().map(|_| None).collect();
    let interrupt = Arc::new(super::Interrupt::default());
    let set = Set {
        files,
        next: &next,
        cancel,
        shared: &shared,
        fetch,
    };
    thread::scope(|scope| {
        let (tx, rx) = bounded::<(usize, FileOutcome)>(jobs);
        let (to_finish, finishing) = bounded::<Finishing>(jobs);
        let finishers = spawn_finishers(scope, &set, jobs * FINISHERS_PER_JOB, &finishing, &tx);
        drop(finishing);
        spawn_jobs(
            scope,
            &set,
            jobs,
            &interrupt,
            finishers > 0,
            &tx,
            &to_finish,
        );
        drop((tx, to_finish));
        let mut last_report: Option<Instant> = None;
        loop {
            match rx.recv_timeout(PROGRESS_TICK) {
                Ok((i, outcome)) => {
                    finished(&shared, i, &outcome);
                    on_done(&outcome);
                    outcomes[i] = Some(outcome);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if cancel.is_some_and(|c| c.load(Ordering::SeqCst)) {
                // No reply of the fast path is waited for any longer.
                interrupt.fire();
            }
            if last_report.is_none_or(|t| t.elapsed() >= PROGRESS_TICK) {
                on_progress(&snapshot(&shared, started));
                last_report = Some(Instant::now());
            }
        }
    });
    on_progress(&snapshot(&shared, started));
    sync_folders(&outcomes);
    let mut all = Vec::with_capacity(files.len());
    for (f, o) in files.iter().zip(outcomes) {
        let o = o.unwrap_or_else(|| {
            let o = not_started(&f.name, cancel);
            on_done(&o);
            o
        });
        all.push(o);
    }
    all
}

/// What every thread of a set shares.
struct Set<'a, 'f> {
    files: &'a [Planned],
    /// The index of the next file to take.
    next: &'a AtomicUsize,
    cancel: Option<&'a AtomicBool>,
    shared: &'a Mutex<Shared>,
    fetch: &'a Fetch<'f>,
}

/// Starts `n` `finish-N` threads naming what arrives on `finishing`;
/// returns how many started.
fn spawn_finishers<'s>(
    scope: &'s thread::Scope<'s, '_>,
    set: &'s Set<'_, '_>,
    n: usize,
    finishing: &Receiver<Finishing>,
    tx: &Sender<(usize, FileOutcome)>,
) -> usize {
    let mut started = 0;
    for k in 1..=n {
        let (tx, finishing) = (tx.clone(), finishing.clone());
        let spawned = thread::Builder::new()
            .name(format!("finish-{k}"))
            .spawn_scoped(scope, move || finish_files(set, &finishing, &tx));
        match spawned {
            Ok(_) => started += 1,
            Err(e) => log::warn!("cannot start a thread to name downloaded files: {e}"),
        }
    }
    started
}

/// Starts `jobs` `batch-N` threads, each with its pool of connections for
/// the set's small files (`small`, closed when it takes no more files),
/// which leaves their naming to the finishers when there are any (`defer`).
fn spawn_jobs<'s>(
    scope: &'s thread::Scope<'s, '_>,
    set: &'s Set<'_, '_>,
    jobs: usize,
    interrupt: &Arc<super::Interrupt>,
    defer: bool,
    tx: &Sender<(usize, FileOutcome)>,
    to_finish: &Sender<Finishing>,
) {
    for n in 1..=jobs {
        let (tx, to_finish) = (tx.clone(), to_finish.clone());
        let interrupt = Arc::clone(interrupt);
        let spawned = thread::Builder::new()
            .name(format!("batch-{n}"))
            .spawn_scoped(scope, move || {
                let _pool = super::PoolGuard::install(interrupt, defer);
                take_files(set, &tx, &to_finish);
            });
        if let Err(e) = spawned {
            log::warn!("cannot start a download thread: {e}");
        }
    }
}

/// Fsyncs, once each, the folders that received a file: the set's
/// downloads leave that to the end (`DownloadOptions::sync_folder` off),
/// so a folder of a thousand files is synced once, not a thousand times.
fn sync_folders(outcomes: &[Option<FileOutcome>]) {
    let folders: std::collections::BTreeSet<&std::path::Path> = outcomes
        .iter()
        .flatten()
        .filter_map(|o| o.result.as_ref().ok())
        .filter_map(|s| s.path.parent())
        .collect();
    for dir in folders {
        super::partfile::sync_dir(dir);
    }
}

/// A file of the set fetched by the fast path and still to be named by a
/// `finish-N` thread: (its index, the file, when it began, whether it
/// progressed).
type Finishing = (usize, super::Unnamed, Instant, bool);

/// A `batch-N` thread: takes the next file until none is left or the set
/// is cancelled. A file the fast path fetched (`small`) goes to the
/// finishers to be made durable and named, which then report it; this
/// thread goes on to its next file meanwhile.
fn take_files(set: &Set<'_, '_>, tx: &Sender<(usize, FileOutcome)>, to_finish: &Sender<Finishing>) {
    loop {
        if set.cancel.is_some_and(|c| c.load(Ordering::SeqCst)) {
            return;
        }
        let i = set.next.fetch_add(1, Ordering::SeqCst);
        let Some(f) = set.files.get(i) else { return };
        lock(set.shared).files[i].running = true;
        let began = Instant::now();
        let mut progressed = false;
        let mut result = (set.fetch)(&f.name, &mut |p| {
            progressed = true;
            report(set.shared, i, p);
        });
        if let Some(u) = super::take_unnamed(&f.name) {
            match to_finish.send((i, u, began, progressed)) {
                Ok(()) => continue,
                // No finisher is left: this thread names its files itself
                // from now on, this one first.
                Err(SendError((_, u, _, _))) => {
                    super::stop_deferring();
                    result = finish(set, u, i);
                }
            }
        }
        let outcome = FileOutcome {
            name: f.name.clone(),
            result,
            started: progressed,
            elapsed: began.elapsed(),
        };
        if tx.send((i, outcome)).is_err() {
            return;
        }
    }
}

/// A `finish-N` thread: names the files the fast path fetched, each once
/// it is on disk, and reports them, until the set's threads are done.
fn finish_files(
    set: &Set<'_, '_>,
    finishing: &Receiver<Finishing>,
    tx: &Sender<(usize, FileOutcome)>,
) {
    for (i, u, began, progressed) in finishing {
        let name = u.name().to_owned();
        let result = finish(set, u, i);
        let outcome = FileOutcome {
            name,
            result,
            started: progressed,
            elapsed: began.elapsed(),
        };
        if tx.send((i, outcome)).is_err() {
            return;
        }
    }
}

/// Names file `i` of the set; if that fails, the engine goes on from what
/// was kept (the verified chunks as a `.part`, or a file that took the
/// name meanwhile, which it checks). `fetch` leaves no file unnamed here:
/// a `finish-N` thread has no pool, and a `batch-N` thread that names a
/// file itself no longer defers.
fn finish(set: &Set<'_, '_>, u: super::Unnamed, i: usize) -> Result<Summary> {
    let name = u.name().to_owned();
    match u.finish() {
        Ok(summary) => Ok(summary),
        Err(carried) => {
            let mut r = (set.fetch)(&name, &mut |p| report(set.shared, i, p));
            if let Ok(s) = r.as_mut() {
                carried.add_to(s);
            }
            r
        }
    }
}

/// Takes in one file's progress report.
fn report(shared: &Mutex<Shared>, i: usize, p: &Progress) {
    let mut s = lock(shared);
    let f = &mut s.files[i];
    f.length = Some(p.total_bytes);
    f.done = p.done_bytes;
    let fetched = f.reported.map_or(0, |r| p.done_bytes.saturating_sub(r));
    f.reported = Some(p.done_bytes);
    if fetched > 0 {
        s.rate.add(fetched);
    }
}

/// Takes in the end of file `i`. Its fetched bytes were counted from its
/// reports (the last one comes after its last chunk).
fn finished(shared: &Mutex<Shared>, i: usize, o: &FileOutcome) {
    let mut s = lock(shared);
    let f = &mut s.files[i];
    f.running = false;
    match &o.result {
        Ok(summary) => {
            f.length = Some(summary.length);
            f.done = summary.length;
            s.done_count += 1;
        }
        Err(_) => s.failed_count += 1,
    }
}

fn snapshot(shared: &Mutex<Shared>, started: Instant) -> BatchProgress {
    let s = lock(shared);
    let elapsed = started.elapsed();
    BatchProgress {
        files_total: s.files.len(),
        files_done: s.done_count,
        files_failed: s.failed_count,
        total_bytes: s.files.iter().filter_map(|f| f.length).sum(),
        done_bytes: s.files.iter().map(|f| f.done).sum(),
        rate: s.rate.rate(elapsed),
        elapsed,
        current: s
            .files
            .iter()
            .filter(|f| f.running)
            .map(|f| (f.name.clone(), f.done, f.length.unwrap_or(0)))
            .collect(),
    }
}

fn not_started(name: &str, cancel: Option<&AtomicBool>) -> FileOutcome {
    let why = if cancel.is_some_and(|c| c.load(Ordering::SeqCst)) {
        format!("{name} was not started: interrupted; run the same command again to fetch it")
    } else {
        format!("{name} was not started: no download thread could run")
    };
    FileOutcome {
        name: name.to_owned(),
        result: Err(PeerError::Download(why)),
        started: false,
        elapsed: Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn listed() -> Vec<(String, u64)> {
        [
            "other/b",
            "photos",
            "photos/2024/bear.jpg",
            "photos/a.jpg",
            "photosx/a",
        ]
        .iter()
        .enumerate()
        .map(|(i, n)| (n.to_string(), i as u64))
        .collect()
    }

    fn names(v: &[Planned]) -> Vec<&str> {
        v.iter().map(|p| p.name.as_str()).collect()
    }

    #[test]
    fn prefixes_match_whole_components() {
        assert!(is_under("photos/a.jpg", "photos/"));
        assert!(is_under("photos/2024/bear.jpg", "photos"));
        assert!(is_under("photos/2024/bear.jpg", "photos/2024/"));
        assert!(!is_under("photosx/a", "photos/"));
        assert!(!is_under("photosx/a", "photos"));
        assert!(is_under("photos", "photos"), "a file of that name");
        assert!(!is_under("photos", "photos/"), "a folder, not the file");
        assert!(!is_under("photo", "photos/"));
        assert!(is_under("anything", "") && is_under("a/b", "/"));
        assert!(validate_wanted("photos/").is_ok());
        assert!(validate_wanted("photos//").is_err());
        assert!(validate_wanted("../").is_err());
        assert!(validate_wanted("/").is_err());
    }

    #[test]
    fn a_set_is_expanded_once_and_unknown_names_are_all_named() {
        let l = listed();
        let w = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let p = expand(&l, false, &w(&["photos/", "photos/a.jpg", "other/b"])).unwrap();
        assert_eq!(
            names(&p),
            ["photos/2024/bear.jpg", "photos/a.jpg", "other/b"],
            "each once, folders in name order, not photosx"
        );
        assert_eq!(p[0].length, Some(2));
        let e = expand(&l, false, &w(&["photos/", "nope/", "x.bin"])).unwrap_err();
        assert!(e.contains("no file under \"nope/\""), "{e}");
        assert!(e.contains("no file named \"x.bin\""), "{e}");
        assert!(e.contains("nothing was downloaded"), "{e}");
        // Beyond a cut list a name may exist; a folder must show up.
        let p = expand(&l, true, &w(&["x.bin"])).unwrap();
        assert_eq!(p[0].length, None);
        assert!(expand(&l, true, &w(&["nope/"])).is_err());
    }

    fn summary(name: &str, len: u64) -> Summary {
        Summary {
            name: name.into(),
            path: PathBuf::from(name),
            length: len,
            chunks_total: 1,
            chunks_resumed: 0,
            bytes_downloaded: len,
            duplicates: 0,
            elapsed: Duration::ZERO,
            sources: Vec::new(),
        }
    }

    /// At most `jobs` files at once, every file's outcome in order, a
    /// failure does not stop the others, and the combined progress adds up.
    #[test]
    fn files_run_concurrently_within_the_bound() {
        let plan: Vec<Planned> = (0..20)
            .map(|i| Planned {
                name: format!("f{i}"),
                length: Some(100),
            })
            .collect();
        let running = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        let fetch = |name: &str, on: &mut dyn FnMut(&Progress)| -> Result<Summary> {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            let mut p = Progress {
                total_bytes: 100,
                done_bytes: 0,
                chunks_done: 0,
                chunks_total: 1,
                active_sources: 1,
                elapsed: Duration::ZERO,
                rate: 0.0,
            };
            on(&p);
            thread::sleep(Duration::from_millis(5));
            p.done_bytes = 100;
            on(&p);
            running.fetch_sub(1, Ordering::SeqCst);
            if name == "f7" {
                return Err(PeerError::Download("no source".into()));
            }
            Ok(summary(name, 100))
        };
        let mut last = None;
        let mut ended = Vec::new();
        let out = run(
            &plan,
            3,
            None,
            &fetch,
            &mut |p| last = Some(p.clone()),
            &mut |o| ended.push(o.name.clone()),
        );
        assert!(most.load(Ordering::SeqCst) <= 3);
        assert_eq!(out.len(), 20);
        assert_eq!(ended.len(), 20);
        assert!(
            out.iter()
                .enumerate()
                .all(|(i, o)| o.name == format!("f{i}"))
        );
        assert!(out[7].result.is_err() && out[8].result.is_ok());
        let last = last.unwrap();
        assert_eq!((last.files_done, last.files_failed), (19, 1));
        assert_eq!(last.total_bytes, 2000);
        assert!(last.current.is_empty());
    }

    #[test]
    fn a_cancelled_set_starts_no_more_files() {
        let plan: Vec<Planned> = (0..5)
            .map(|i| Planned {
                name: format!("f{i}"),
                length: None,
            })
            .collect();
        let cancel = AtomicBool::new(false);
        let fetch = |name: &str, _: &mut dyn FnMut(&Progress)| -> Result<Summary> {
            cancel.store(true, Ordering::SeqCst);
            Ok(summary(name, 1))
        };
        let out = run(&plan, 1, Some(&cancel), &fetch, &mut |_| {}, &mut |_| {});
        assert!(out[0].result.is_ok());
        for o in &out[1..] {
            let e = o.result.as_ref().unwrap_err().to_string();
            assert!(e.contains("not started: interrupted"), "{e}");
        }
    }
}
