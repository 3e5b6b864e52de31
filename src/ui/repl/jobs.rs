//! The downloads started at the prompt: one named thread each, so the
//! prompt stays free while they run.
//!
//! Owns: the download threads (their join handles, cancel flags and latest
//! state) and the queue of finished-download notices. Calls `peer::node`
//! (to download) and [`super::text`] (the notice lines).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};

use super::text;
use crate::chunks::ContentId;
use crate::error_chain;
use crate::peer::download::batch::{self, BatchProgress, Planned};
use crate::peer::download::{DownloadOptions, Progress, Summary};
use crate::peer::node::Node;
use crate::sync::lock;
use crate::ui::Resumable;

/// Finished-download notices waiting for the UI. Far more than downloads
/// anyone starts by hand; when full, a notice is dropped (status still
/// shows the outcome) rather than blocking a download thread.
const NOTICE_QUEUE: usize = 64;

/// How long [`Jobs::finish`] waits for cancelled downloads to wind down
/// (they notice within a tenth of a second, then close their connections).
const STOP_WAIT: Duration = Duration::from_secs(10);

/// Where a download started at the prompt is.
#[derive(Debug, Clone)]
pub enum DownloadState {
    /// Asking the tracker, opening the part file.
    Starting,
    Running(Progress),
    Done(Summary),
    /// The error chain, one line.
    Failed(String),
    /// A set of files (`get photos/`, several names) on its way.
    RunningSet(BatchProgress),
    /// A set of files that ended: its total line.
    SetDone(String),
}

impl DownloadState {
    pub fn is_finished(&self) -> bool {
        matches!(
            self,
            DownloadState::Done(_) | DownloadState::Failed(_) | DownloadState::SetDone(_)
        )
    }
}

struct Job {
    name: String,
    state: Arc<Mutex<DownloadState>>,
    cancel: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

/// Every download started at the prompt, oldest first.
pub struct Jobs {
    node: Arc<Node>,
    dir: PathBuf,
    opts: DownloadOptions,
    jobs: Vec<Job>,
    notices: Sender<String>,
}

impl Jobs {
    /// Downloads through `node` into `dir`. The receiver yields one line
    /// per finished or failed download.
    pub fn new(node: Arc<Node>, dir: PathBuf, opts: DownloadOptions) -> (Jobs, Receiver<String>) {
        let (notices, rx) = bounded(NOTICE_QUEUE);
        let jobs = Jobs {
            node,
            dir,
            opts,
            jobs: Vec::new(),
            notices,
        };
        (jobs, rx)
    }

    /// Whether a download of `name` started here is still running.
    pub fn is_running(&self, name: &str) -> bool {
        self.jobs
            .iter()
            .any(|j| j.name == name && !lock(&j.state).is_finished())
    }

    /// Starts downloading `name` on a thread of its own, refusing content
    /// whose id is not `pin` if given. A finished or failed earlier attempt
    /// of the same name is replaced.
    pub fn start(&mut self, name: &str, pin: Option<ContentId>) -> std::io::Result<()> {
        let state = Arc::new(Mutex::new(DownloadState::Starting));
        let cancel = Arc::new(AtomicBool::new(false));
        let opts = DownloadOptions {
            expect_id: pin,
            ..self.opts.clone()
        };
        let (node, dir) = (Arc::clone(&self.node), self.dir.clone());
        let (st, notices, n) = (Arc::clone(&state), self.notices.clone(), name.to_owned());
        let c = Arc::clone(&cancel);
        let handle = thread::Builder::new()
            .name(format!("get {name}"))
            .spawn(move || {
                let mut started = false;
                let r = node.download_cancellable(&n, &dir, &opts, Some(&c), &mut |p| {
                    started = true;
                    *lock(&st) = DownloadState::Running(p.clone());
                });
                let (notice, end) = match r {
                    Ok(s) => (text::done_line(&s), DownloadState::Done(s)),
                    Err(e) => {
                        let why = if started {
                            Resumable::line(
                                &e,
                                &format!("type {} to resume", super::command::get_line(&n, pin)),
                            )
                        } else {
                            error_chain(&e)
                        };
                        (
                            format!("download of {n} failed: {why}"),
                            DownloadState::Failed(why),
                        )
                    }
                };
                *lock(&st) = end;
                // Full only if nobody reads notices; status still tells.
                let _ = notices.try_send(notice);
            })?;
        self.jobs.retain(|j| j.name != name || j.handle.is_some());
        self.jobs.push(Job {
            name: name.to_owned(),
            state,
            cancel,
            handle: Some(handle),
        });
        Ok(())
    }

    /// Starts downloading the files of `plan` (at most
    /// `limits::BATCH_JOBS` at once) on one thread, listed as `label`.
    pub fn start_set(&mut self, label: &str, plan: Vec<Planned>) -> std::io::Result<()> {
        let state = Arc::new(Mutex::new(DownloadState::Starting));
        let cancel = Arc::new(AtomicBool::new(false));
        let (node, dir) = (Arc::clone(&self.node), self.dir.clone());
        // The set syncs each folder once at the end (batch::run).
        let opts = DownloadOptions {
            sync_folder: false,
            ..self.opts.clone()
        };
        let (st, notices, l) = (Arc::clone(&state), self.notices.clone(), label.to_owned());
        let c = Arc::clone(&cancel);
        let handle = thread::Builder::new()
            .name(format!("get {label}"))
            .spawn(move || {
                let began = Instant::now();
                let fetch = |name: &str, on: &mut dyn FnMut(&Progress)| {
                    node.download_cancellable(name, &dir, &opts, Some(&c), on)
                };
                let outcomes = batch::run(
                    &plan,
                    crate::limits::BATCH_JOBS,
                    Some(&c),
                    &fetch,
                    &mut |p| *lock(&st) = DownloadState::RunningSet(p.clone()),
                    &mut |_| {},
                );
                let total = crate::ui::get::total_line(&outcomes, began.elapsed());
                let failed: Vec<String> = outcomes
                    .iter()
                    .filter(|o| o.result.is_err())
                    .map(crate::ui::get::file_line)
                    .map(|line| line.trim().trim_start_matches("FAILED").trim().to_owned())
                    .collect();
                let notice = if failed.is_empty() {
                    format!("{l}: {total}")
                } else {
                    format!(
                        "{l}: {total}: {}; type the same get again to fetch the rest",
                        failed.join("; ")
                    )
                };
                *lock(&st) = DownloadState::SetDone(total);
                let _ = notices.try_send(notice);
            })?;
        self.jobs.retain(|j| j.name != label || j.handle.is_some());
        self.jobs.push(Job {
            name: label.to_owned(),
            state,
            cancel,
            handle: Some(handle),
        });
        Ok(())
    }

    /// Every download started here, oldest first, with where it is.
    pub fn states(&self) -> Vec<(String, DownloadState)> {
        self.jobs
            .iter()
            .map(|j| (j.name.clone(), lock(&j.state).clone()))
            .collect()
    }

    /// Downloads still running.
    pub fn active(&self) -> usize {
        self.jobs
            .iter()
            .filter(|j| !lock(&j.state).is_finished())
            .count()
    }

    /// Joins the threads of finished downloads (their state stays listed).
    pub fn reap(&mut self) {
        for j in &mut self.jobs {
            if j.handle.as_ref().is_some_and(|h| h.is_finished())
                && let Some(h) = j.handle.take()
                && h.join().is_err()
            {
                *lock(&j.state) = DownloadState::Failed("the download thread panicked".into());
            }
        }
    }

    /// Stops the downloads still running (their verified chunks stay in
    /// the download folder's `.p2pfs/`, so a later `get` resumes), joins every download thread,
    /// and returns the names of the downloads it stopped. A thread that
    /// does not end within a few seconds is left to end with the process.
    pub fn finish(mut self) -> Vec<String> {
        self.reap();
        let stopped: Vec<String> = self
            .jobs
            .iter()
            .filter(|j| j.handle.is_some())
            .map(|j| j.name.clone())
            .collect();
        for j in &self.jobs {
            j.cancel.store(true, Ordering::SeqCst);
        }
        let deadline = Instant::now() + STOP_WAIT;
        while self.jobs.iter().any(|j| j.handle.is_some()) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
            self.reap();
        }
        stopped
    }
}
