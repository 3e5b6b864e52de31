//! The interactive side of `peer share`: one command per line (`list
//! [FOLDER]`, `where`, `get FILE...`, `status`, `help`, `quit`) run against a running
//! [`Node`].
//!
//! Three pieces, one file each: [`command`] (the language: a line in, a
//! command out), [`jobs`] (downloads started here, each on its own thread
//! so the prompt stays free) and [`text`] (what the answers look like).
//! This file runs a command: it asks the engine and writes the answer.
//!
//! Owns: the numbered list remembered between commands and the upload
//! counter `status` compares against. Terminal matters (whether stdin is a
//! terminal, the prompt, signals) stay in [`crate::ui::prompt`], so
//! everything here works on any `BufRead`/`Write` and is tested without a
//! terminal.
//!
//! Calls `peer::node`, `peer::client`, `peer::download` (types, and
//! `check_pinned` for `get --id`), `wire` and the other `ui` text modules.

pub mod command;
pub mod jobs;
pub mod text;

use std::io::{self, BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Receiver;

pub use self::command::{Command, HELP, Target, parse};
pub use self::jobs::DownloadState;
use self::jobs::Jobs;
use self::text::{Mine, explain};
use crate::chunks::ContentId;
use crate::error_chain;
use crate::peer::client;
use crate::peer::download::batch::{Planned, is_folder, is_under, plan, validate_wanted};
use crate::peer::download::{DownloadOptions, check_pinned, unfinished};
use crate::peer::node::Node;
use crate::peer::{PeerError, Result};
use crate::ui::format::format_locations;
use crate::wire::{self, FileSummary, Locations};

/// Width of the chunk maps `where` draws.
const MAP_WIDTH: usize = crate::limits::WHERE_MAP_WIDTH;

/// Whether the prompt goes on after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Quit,
}

/// The command interpreter of one running peer.
pub struct Repl {
    node: Arc<Node>,
    /// The last `list`, which NUMBERs refer to.
    listed: Vec<FileSummary>,
    jobs: Jobs,
    /// Where downloads go (the shared folder).
    dir: PathBuf,
    /// Upload counter at the previous `status`, for its rate.
    upload_mark: (Instant, u64),
}

impl Repl {
    /// An interpreter for `node`, downloading into `dir` (the shared folder,
    /// so a finished file is shared again after a restart). The receiver
    /// yields one line per finished or failed background download, for the
    /// UI to print when it likes.
    pub fn new(node: Arc<Node>, dir: PathBuf, opts: DownloadOptions) -> (Repl, Receiver<String>) {
        let (jobs, notices) = Jobs::new(Arc::clone(&node), dir.clone(), opts);
        let mark = (Instant::now(), node.uploaded_bytes());
        let repl = Repl {
            node,
            listed: Vec::new(),
            jobs,
            dir,
            upload_mark: mark,
        };
        (repl, notices)
    }

    /// Runs one command line, writing its answer to `out`. Only a failed
    /// write to `out` is an error: network and file problems are answered
    /// with a line, and the prompt goes on.
    pub fn handle(&mut self, line: &str, out: &mut dyn Write) -> io::Result<Flow> {
        self.jobs.reap();
        let cmd = match parse(line) {
            Ok(Some(c)) => c,
            Ok(None) => return Ok(Flow::Continue),
            Err(hint) => {
                writeln!(out, "{hint}")?;
                return Ok(Flow::Continue);
            }
        };
        match cmd {
            Command::List(prefix) => self.list(prefix.as_deref(), out)?,
            Command::Where(t) => self.where_(&t, out)?,
            Command::Get { targets, id } => self.get_many(&targets, id, out)?,
            Command::Status => self.status(out)?,
            Command::Help => writeln!(out, "{HELP}")?,
            Command::Quit => return Ok(Flow::Quit),
        }
        out.flush()?;
        Ok(Flow::Continue)
    }

    /// Reads commands from `input` until `quit` or the end of input.
    pub fn run(&mut self, input: &mut dyn BufRead, out: &mut dyn Write) -> io::Result<()> {
        let mut line = String::new();
        loop {
            line.clear();
            if input.read_line(&mut line)? == 0 {
                return Ok(());
            }
            if self.handle(&line, out)? == Flow::Quit {
                return Ok(());
            }
        }
    }

    /// Every download started here, oldest first, with where it is.
    pub fn downloads(&self) -> Vec<(String, DownloadState)> {
        self.jobs.states()
    }

    /// Downloads still running.
    pub fn active_downloads(&self) -> usize {
        self.jobs.active()
    }

    /// Stops the downloads still running (their verified chunks stay in
    /// the download folder's `.p2pfs/`, so a later `get` resumes), joins every download thread,
    /// and returns the names of the downloads it stopped. A thread that
    /// does not end within a few seconds is left to end with the process.
    pub fn finish(self) -> Vec<String> {
        self.jobs.finish()
    }

    /// A #NUMBER from the last list, or the name (or folder, ending in
    /// `/`) as given if it is valid.
    fn resolve(&self, t: &Target) -> std::result::Result<String, String> {
        match t {
            Target::Name(n) => match validate_wanted(n) {
                Ok(()) => Ok(n.clone()),
                Err(_) if is_folder(n) => Err(format!("{n:?} is not a valid folder")),
                Err(_) => match wire::validate_name(n) {
                    Ok(()) => Ok(n.clone()),
                    Err(e) => Err(format!("{n:?} is not a valid name: {e}")),
                },
            },
            Target::Number(_) if self.listed.is_empty() => {
                Err("no numbered list yet: type list first, then use #NUMBER from it".into())
            }
            Target::Number(n) => match n.checked_sub(1).and_then(|i| self.listed.get(i)) {
                Some(f) => Ok(f.name.clone()),
                None => Err(format!(
                    "there is no file #{n} in the last list (#1 to #{}); type list to refresh it",
                    self.listed.len()
                )),
            },
        }
    }

    fn list(&mut self, prefix: Option<&str>, out: &mut dyn Write) -> io::Result<()> {
        let (mut files, truncated) = match client::list_files_all(self.node.trackers()) {
            Ok(m) => {
                for (t, e) in &m.failed {
                    writeln!(out, "(tracker left out: {})", client::about(*t, e))?;
                }
                m.value
            }
            Err(e) => return writeln!(out, "cannot list the files: {}", error_chain(&e)),
        };
        if let Some(p) = prefix {
            files.retain(|f| is_under(&f.name, p));
        }
        match prefix {
            Some(p) if files.is_empty() => writeln!(out, "no files under {p:?} on the network")?,
            None if files.is_empty() => writeln!(out, "no files on the network")?,
            _ => {}
        }
        let w = files
            .iter()
            .map(|f| f.name.chars().count())
            .max()
            .unwrap_or(0);
        for (i, f) in files.iter().enumerate() {
            let mine = match self.node.share().get(&f.name) {
                Some(s) if s.is_complete() => Mine::Complete,
                Some(_) if self.node.is_downloading(&f.name) => Mine::Downloading,
                Some(_) => Mine::Partial,
                None => Mine::No,
            };
            writeln!(out, "{}", text::list_line(i + 1, f, w, mine))?;
        }
        if truncated {
            writeln!(out, "(the tracker cut the list short)")?;
        }
        self.listed = files;
        Ok(())
    }

    fn where_(&mut self, t: &Target, out: &mut dyn Write) -> io::Result<()> {
        let name = match self.resolve(t) {
            Ok(n) => n,
            Err(hint) => return writeln!(out, "{hint}"),
        };
        match self.locate(&name) {
            Ok((l, me)) => match format_locations(&l, MAP_WIDTH, Some(me)) {
                Ok(text) => write!(out, "{text}"),
                Err(e) => writeln!(out, "{e}"),
            },
            Err(e) => writeln!(out, "{}", explain(&name, &e)),
        }
    }

    /// Locations of `name` from every tracker, merged, and this peer's
    /// address as the trackers know it (the local IP of a tracker
    /// connection and the serving port), so it can be marked.
    fn locate(&self, name: &str) -> Result<(Locations, SocketAddr), PeerError> {
        let m = client::locate_all(self.node.trackers(), name, false)?;
        let (l, ip) = m.value;
        Ok((l, SocketAddr::new(ip, self.node.local_addr().port())))
    }

    /// `get` of one file (its own job, as always; pinned to content id
    /// `id` if given, which the parser allows for one file only) or of
    /// several files or folders: one job for the set, the files this peer
    /// already has left out.
    fn get_many(
        &mut self,
        targets: &[Target],
        id: Option<ContentId>,
        out: &mut dyn Write,
    ) -> io::Result<()> {
        let mut names = Vec::new();
        for t in targets {
            match self.resolve(t) {
                Ok(n) => names.push(n),
                Err(hint) => return writeln!(out, "{hint}"),
            }
        }
        match names.as_slice() {
            [one] if !is_folder(one) => return self.get(one.clone(), id, out),
            _ => {}
        }
        let label = names.join(" ");
        if self.jobs.is_running(&label) {
            return writeln!(out, "already downloading {label}; type status to follow it");
        }
        let plan = match plan(self.node.trackers(), &names) {
            Ok((plan, _)) => plan,
            Err(e) => return writeln!(out, "{}", explain(&label, &e)),
        };
        let total = plan.len();
        let share = self.node.share();
        // A file another download has (a set's file is complete before it
        // is named) is left to it; only files in place count as had.
        let (busy, plan): (Vec<Planned>, Vec<Planned>) = plan
            .into_iter()
            .partition(|p| self.node.is_downloading(&p.name));
        let (have, plan): (Vec<Planned>, Vec<Planned>) = plan
            .into_iter()
            .partition(|p| share.get(&p.name).is_some_and(|f| f.is_complete()));
        if plan.is_empty() && busy.is_empty() {
            return writeln!(
                out,
                "you already have all {total} files: they are in the shared folder"
            );
        }
        if plan.is_empty() {
            return writeln!(
                out,
                "{} of these {total} files are being downloaded already, the rest you have; \
                 type status to follow them",
                busy.len()
            );
        }
        let (count, bytes) = (
            plan.len(),
            plan.iter().filter_map(|p| p.length).sum::<u64>(),
        );
        if let Err(e) = self.jobs.start_set(&label, plan) {
            return writeln!(out, "cannot start the download: {e}");
        }
        let line = text::set_started_line(count, bytes, have.len(), busy.len());
        writeln!(out, "{line}")
    }

    fn get(&mut self, name: String, pin: Option<ContentId>, out: &mut dyn Write) -> io::Result<()> {
        if self.jobs.is_running(&name) || self.node.is_downloading(&name) {
            return writeln!(out, "already downloading {name}; type status to follow it");
        }
        if let Some(f) = self.node.share().get(&name).filter(|f| f.is_complete()) {
            let g = f.geometry();
            if let Some(want) = pin
                && let mine = ContentId::compute(g.length(), g.chunk_size(), f.hashes())
                && mine != want
            {
                return writeln!(
                    out,
                    "you already have {name}, with content id {mine}, not {want} as given with \
                     --id; nothing was downloaded"
                );
            }
            return writeln!(out, "you already have {name}: it is in the shared folder");
        }
        // A partial file left by a failed or stopped download is resumed.
        // Ask first, so a wrong name (or content other than the pinned one)
        // is answered here and not later; the download checks the id again.
        let m = match client::locate_all_pinned(self.node.trackers(), &name, pin.is_some(), pin) {
            Ok(m) => m,
            Err(e) => return writeln!(out, "{}", explain(&name, &e)),
        };
        let (l, _) = &m.value;
        if let (Some(want), Some(got)) = (pin, client::content_id(l))
            && let Err(e) = check_pinned(&name, want, got, m.failed.len())
        {
            return writeln!(out, "{}", error_chain(&e));
        }
        if let Err(e) = self.jobs.start(&name, pin) {
            return writeln!(out, "cannot start the download: {e}");
        }
        writeln!(
            out,
            "{}",
            text::started_line(&name, l.length, l.sources.len())
        )
    }

    fn status(&mut self, out: &mut dyn Write) -> io::Result<()> {
        let node = &self.node;
        writeln!(
            out,
            "{}",
            text::serving_line(
                node.local_addr(),
                node.trackers(),
                &node.connected_trackers()
            )
        )?;
        write!(out, "{}", text::files_block(&node.share().files()))?;
        let columns = crate::ui::progress::stdout_columns();
        write!(
            out,
            "{}",
            text::downloads_block(&self.jobs.states(), columns)
        )?;
        let waiting: Vec<String> = unfinished(&self.dir)
            .into_iter()
            .filter(|n| !self.jobs.is_running(n) && !node.is_downloading(n))
            .collect();
        if !waiting.is_empty() {
            writeln!(out, "{}", text::unfinished_line(&waiting))?;
        }
        let (then, before) = self.upload_mark;
        let now = (Instant::now(), node.uploaded_bytes());
        let secs = now.0.duration_since(then).as_secs_f64().max(1e-3);
        writeln!(
            out,
            "{}",
            text::uploads_line(
                node.upload_connections(),
                now.1,
                now.1.saturating_sub(before),
                secs
            )
        )?;
        self.upload_mark = now;
        Ok(())
    }
}
