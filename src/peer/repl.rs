//! The interactive side of `peer share`: one command per line (`list`,
//! `where`, `get`, `status`, `help`, `quit`) run against a running
//! [`Node`]. Downloads started here run on their own threads so the prompt
//! stays free, and `status` shows their progress. It also formats what the
//! one-shot commands print (sizes, chunk maps, progress bars, summaries), so
//! both read the same.
//!
//! Owns: the command language, the numbered list remembered between
//! commands, and the background download threads with their latest
//! progress. Terminal matters (whether stdin is a terminal, the prompt,
//! signals) stay in the binary, so everything here works on any
//! `BufRead`/`Write` and is tested without a terminal.
//!
//! Calls `peer::node`, `peer::client`, `peer::download` (types), `wire`
//! (types) and `chunks`.

use std::io::{self, BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};

use super::client::{self, Conn};
use super::download::{DownloadOptions, Progress, Summary};
use super::node::Node;
use super::{PeerError, Result};
use crate::chunks::Bitmap;
use crate::error_chain;
use crate::sync::lock;
use crate::wire::{self, ErrorCode, FileSummary, Locations};

/// What `help` prints.
pub const HELP: &str = "\
commands:
  list               the files on the network, numbered
  where NAME|NUMBER  which peers hold which chunks of a file
  get NAME|NUMBER    download a file into the shared folder, in the background
  status             this peer's files, downloads in progress, uploads
  help               this text
  quit               stop unfinished downloads (a later get resumes them),
                     leave the network and exit (Ctrl-C and Ctrl-D too)
NUMBER is a file's number in the last `list`.";

/// Width of the chunk maps `where` draws.
const MAP_WIDTH: usize = 64;
/// Width of the chunk maps in `status`: one character per chunk up to 32.
const STATUS_MAP_WIDTH: usize = 32;
/// Width of the progress bars in `status`.
const STATUS_BAR_WIDTH: usize = 24;
/// Finished-download notices waiting for the UI. Far more than downloads
/// anyone starts by hand; when full, a notice is dropped (status still
/// shows the outcome) rather than blocking a download thread.
const NOTICE_QUEUE: usize = 64;

/// How long [`Repl::finish`] waits for cancelled downloads to wind down
/// (they notice within a tenth of a second, then close their connections).
const STOP_WAIT: Duration = Duration::from_secs(10);

/// A file named on the command line, or its number in the last list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Name(String),
    Number(usize),
}

/// One parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    List,
    Where(Target),
    Get(Target),
    Status,
    Help,
    Quit,
}

/// Parses one line. `Ok(None)` for a blank line; `Err` carries the hint to
/// print. A file name is the rest of the line (names may contain spaces);
/// all digits means a number from the last list.
pub fn parse(line: &str) -> std::result::Result<Option<Command>, String> {
    let line = line.trim();
    if line.is_empty() {
        return Ok(None);
    }
    let (word, rest) = match line.split_once(char::is_whitespace) {
        Some((w, r)) => (w, r.trim()),
        None => (line, ""),
    };
    let word = word.to_ascii_lowercase();
    let target = || -> std::result::Result<Target, String> {
        if rest.is_empty() {
            return Err(format!(
                "{word} needs a file: {word} NAME, or {word} NUMBER from the last list"
            ));
        }
        if rest.bytes().all(|b| b.is_ascii_digit()) {
            return rest
                .parse()
                .map(Target::Number)
                .map_err(|_| format!("{rest} is too large to be a number from the list"));
        }
        Ok(Target::Name(rest.to_owned()))
    };
    let bare = |c: Command| {
        if rest.is_empty() {
            Ok(Some(c))
        } else {
            Err(format!("{word} takes nothing after it; type help"))
        }
    };
    match word.as_str() {
        "list" | "ls" => bare(Command::List),
        "where" => target().map(|t| Some(Command::Where(t))),
        "get" => target().map(|t| Some(Command::Get(t))),
        "status" => bare(Command::Status),
        "help" | "?" => bare(Command::Help),
        "quit" | "exit" | "leave" => bare(Command::Quit),
        _ => Err(format!(
            "unknown command {word:?}; the commands are list, where, get, status, help, quit"
        )),
    }
}

/// Whether the prompt goes on after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Quit,
}

/// Where a download started at the prompt is.
#[derive(Debug, Clone)]
pub enum DownloadState {
    /// Asking the tracker, opening the part file.
    Starting,
    Running(Progress),
    Done(Summary),
    /// The error chain, one line.
    Failed(String),
}

impl DownloadState {
    pub fn is_finished(&self) -> bool {
        matches!(self, DownloadState::Done(_) | DownloadState::Failed(_))
    }
}

struct Job {
    name: String,
    state: Arc<Mutex<DownloadState>>,
    cancel: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

/// The command interpreter of one running peer.
pub struct Repl {
    node: Arc<Node>,
    dir: PathBuf,
    opts: DownloadOptions,
    /// The last `list`, which NUMBERs refer to.
    listed: Vec<FileSummary>,
    jobs: Vec<Job>,
    notices: Sender<String>,
    /// Upload counter at the previous `status`, for its rate.
    upload_mark: (Instant, u64),
}

impl Repl {
    /// An interpreter for `node`, downloading into `dir` (the shared folder,
    /// so a finished file is shared again after a restart). The receiver
    /// yields one line per finished or failed background download, for the
    /// UI to print when it likes.
    pub fn new(node: Arc<Node>, dir: PathBuf, opts: DownloadOptions) -> (Repl, Receiver<String>) {
        let (notices, rx) = bounded(NOTICE_QUEUE);
        let mark = (Instant::now(), node.uploaded_bytes());
        let repl = Repl {
            node,
            dir,
            opts,
            listed: Vec::new(),
            jobs: Vec::new(),
            notices,
            upload_mark: mark,
        };
        (repl, rx)
    }

    /// Runs one command line, writing its answer to `out`. Only a failed
    /// write to `out` is an error: network and file problems are answered
    /// with a line, and the prompt goes on.
    pub fn handle(&mut self, line: &str, out: &mut dyn Write) -> io::Result<Flow> {
        self.reap();
        let cmd = match parse(line) {
            Ok(Some(c)) => c,
            Ok(None) => return Ok(Flow::Continue),
            Err(hint) => {
                writeln!(out, "{hint}")?;
                return Ok(Flow::Continue);
            }
        };
        match cmd {
            Command::List => self.list(out)?,
            Command::Where(t) => self.where_(&t, out)?,
            Command::Get(t) => self.get(&t, out)?,
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
        self.jobs
            .iter()
            .map(|j| (j.name.clone(), lock(&j.state).clone()))
            .collect()
    }

    /// Downloads still running.
    pub fn active_downloads(&self) -> usize {
        self.jobs
            .iter()
            .filter(|j| !lock(&j.state).is_finished())
            .count()
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

    /// Joins the threads of finished downloads (their state stays listed).
    fn reap(&mut self) {
        for j in &mut self.jobs {
            if j.handle.as_ref().is_some_and(|h| h.is_finished())
                && let Some(h) = j.handle.take()
                && h.join().is_err()
            {
                *lock(&j.state) = DownloadState::Failed("the download thread panicked".into());
            }
        }
    }

    /// A NUMBER from the last list, or the name as given if it is valid.
    fn resolve(&self, t: &Target) -> std::result::Result<String, String> {
        match t {
            Target::Name(n) => match wire::validate_name(n) {
                Ok(()) => Ok(n.clone()),
                Err(e) => Err(format!("{n:?} is not a valid name: {e}")),
            },
            Target::Number(_) if self.listed.is_empty() => {
                Err("no numbered list yet: type list first, then use a number from it".into())
            }
            Target::Number(n) => match n.checked_sub(1).and_then(|i| self.listed.get(i)) {
                Some(f) => Ok(f.name.clone()),
                None => Err(format!(
                    "there is no file {n} in the last list (1 to {}); type list to refresh it",
                    self.listed.len()
                )),
            },
        }
    }

    fn list(&mut self, out: &mut dyn Write) -> io::Result<()> {
        let (files, truncated) = match client::list_files(self.node.tracker()) {
            Ok(x) => x,
            Err(e) => return writeln!(out, "cannot list the files: {}", error_chain(&e)),
        };
        if files.is_empty() {
            writeln!(out, "no files on the network")?;
        }
        let w = files
            .iter()
            .map(|f| f.name.chars().count())
            .max()
            .unwrap_or(0);
        for (i, f) in files.iter().enumerate() {
            let mine = match self.node.share().get(&f.name) {
                Some(s) if s.is_complete() => "  (you have it)",
                Some(_) if self.node.is_downloading(&f.name) => "  (downloading)",
                Some(_) => "  (partly here; get it to resume)",
                None => "",
            };
            writeln!(
                out,
                "{:>3}. {:<w$}  {:>10}{mine}",
                i + 1,
                f.name,
                human(f.length as f64)
            )?;
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

    /// Locations of `name`, and this peer's address as the tracker knows it
    /// (the local IP of a tracker connection and the serving port), so it
    /// can be marked.
    fn locate(&self, name: &str) -> Result<(Locations, SocketAddr)> {
        let mut c = Conn::connect(self.node.tracker(), client::IO_TIMEOUT)?;
        let l = client::locate_on(&mut c, name, false)?;
        let ip = c
            .stream()
            .local_addr()
            .map(|a| a.ip().to_canonical())
            .unwrap_or_else(|_| self.node.local_addr().ip());
        Ok((l, SocketAddr::new(ip, self.node.local_addr().port())))
    }

    fn get(&mut self, t: &Target, out: &mut dyn Write) -> io::Result<()> {
        let name = match self.resolve(t) {
            Ok(n) => n,
            Err(hint) => return writeln!(out, "{hint}"),
        };
        if self
            .jobs
            .iter()
            .any(|j| j.name == name && !lock(&j.state).is_finished())
        {
            return writeln!(out, "already downloading {name}; type status to follow it");
        }
        if self.node.is_downloading(&name) {
            return writeln!(out, "already downloading {name}; type status to follow it");
        }
        if self
            .node
            .share()
            .get(&name)
            .is_some_and(|f| f.is_complete())
        {
            return writeln!(out, "you already have {name}: it is in the shared folder");
        }
        // A partial file left by a failed or stopped download is resumed.
        // Ask first, so a wrong name is answered here and not later.
        let l = match self.locate(&name) {
            Ok((l, _)) => l,
            Err(e) => return writeln!(out, "{}", explain(&name, &e)),
        };
        let state = Arc::new(Mutex::new(DownloadState::Starting));
        let cancel = Arc::new(AtomicBool::new(false));
        let handle = {
            let (node, dir, opts) = (Arc::clone(&self.node), self.dir.clone(), self.opts.clone());
            let (state, notices, name) = (Arc::clone(&state), self.notices.clone(), name.clone());
            let cancel = Arc::clone(&cancel);
            thread::Builder::new()
                .name(format!("get {name}"))
                .spawn(move || {
                    let r =
                        node.download_cancellable(&name, &dir, &opts, Some(&cancel), &mut |p| {
                            *lock(&state) = DownloadState::Running(p.clone());
                        });
                    let (notice, end) = match r {
                        Ok(s) => (done_line(&s), DownloadState::Done(s)),
                        Err(e) => {
                            let why = error_chain(&e);
                            (
                                format!("download of {name} failed: {why}"),
                                DownloadState::Failed(why),
                            )
                        }
                    };
                    *lock(&state) = end;
                    // Full only if nobody reads notices; status still tells.
                    let _ = notices.try_send(notice);
                })
        };
        let handle = match handle {
            Ok(h) => h,
            Err(e) => return writeln!(out, "cannot start the download: {e}"),
        };
        // A finished or failed earlier attempt of the same name is replaced.
        self.jobs.retain(|j| j.name != name || j.handle.is_some());
        self.jobs.push(Job {
            name: name.clone(),
            state,
            cancel,
            handle: Some(handle),
        });
        writeln!(
            out,
            "downloading {name} ({}) from {} source{} in the background; type status to follow it",
            human(l.length as f64),
            l.sources.len(),
            if l.sources.len() == 1 { "" } else { "s" }
        )
    }

    fn status(&mut self, out: &mut dyn Write) -> io::Result<()> {
        let node = &self.node;
        writeln!(
            out,
            "serving chunks on {}; tracker {} ({})",
            node.local_addr(),
            node.tracker(),
            if node.is_connected() {
                "connected"
            } else {
                "not connected, retrying"
            }
        )?;
        let files = node.share().files();
        if files.is_empty() {
            writeln!(out, "files: none yet")?;
        } else {
            writeln!(out, "files ({}):", files.len())?;
        }
        let w = files
            .iter()
            .map(|f| f.name().chars().count())
            .max()
            .unwrap_or(0);
        for f in &files {
            let g = f.geometry();
            let have = f.have();
            writeln!(
                out,
                "  {:<w$}  {:>10}  {:>15}  {}",
                f.name(),
                human(g.length() as f64),
                format!("{}/{} chunks", have.count_ones(), g.count()),
                have.render(STATUS_MAP_WIDTH)
            )?;
        }
        let jobs = self.downloads();
        if !jobs.is_empty() {
            writeln!(out, "downloads:")?;
        }
        let w = jobs
            .iter()
            .map(|(n, _)| n.chars().count())
            .max()
            .unwrap_or(0);
        for (name, st) in &jobs {
            let text = match st {
                DownloadState::Starting => "starting".to_owned(),
                DownloadState::Running(p) => progress_line(p, STATUS_BAR_WIDTH),
                DownloadState::Done(s) => format!(
                    "done: {} in {:.1} s from {} peer(s)",
                    human(s.length as f64),
                    s.elapsed.as_secs_f64(),
                    s.sources.iter().filter(|x| x.bytes > 0).count()
                ),
                DownloadState::Failed(why) => format!("failed: {why}"),
            };
            writeln!(out, "  {name:<w$}  {}", text.trim_end())?;
        }
        let (then, before) = self.upload_mark;
        let now = (Instant::now(), node.uploaded_bytes());
        let secs = now.0.duration_since(then).as_secs_f64().max(1e-3);
        writeln!(
            out,
            "uploads: {} peer connection(s) open; {} sent in all, {}/s over the last {:.1} s",
            node.upload_connections(),
            human(now.1 as f64),
            human(now.1.saturating_sub(before) as f64 / secs),
            secs
        )?;
        self.upload_mark = now;
        Ok(())
    }
}

/// The line announcing a finished background download.
fn done_line(s: &Summary) -> String {
    let secs = s.elapsed.as_secs_f64().max(1e-3);
    let from: Vec<String> = s
        .sources
        .iter()
        .filter(|x| x.bytes > 0)
        .map(|x| format!("{} from {}", human(x.bytes as f64), x.addr))
        .collect();
    format!(
        "download finished: {} ({}) in {:.1} s, {}/s{}{}; saved to {}",
        s.name,
        human(s.length as f64),
        secs,
        human(s.bytes_downloaded as f64 / secs),
        if from.is_empty() { "" } else { ": " },
        from.join(", "),
        s.path.display()
    )
}

/// One line for a failed lookup, with a hint where one helps.
fn explain(name: &str, e: &PeerError) -> String {
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

// ---- Text shared with the one-shot commands -------------------------------

/// "12.3 MiB" style sizes (powers of 1024).
pub fn human(bytes: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} {}", units[u])
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// `[#####.....]  42.0%   13.4 MiB / 32.0 MiB    5.1 MiB/s  2 sources` with
/// a bar `width` characters wide. Fixed-width numbers, so a line redrawn in
/// place does not jitter.
pub fn progress_line(p: &Progress, width: usize) -> String {
    let frac = if p.total_bytes == 0 {
        1.0
    } else {
        (p.done_bytes as f64 / p.total_bytes as f64).clamp(0.0, 1.0)
    };
    let filled = ((frac * width as f64).floor() as usize).min(width);
    format!(
        "[{}{}] {:5.1}%  {:>9} / {}  {:>11}  {} source{}",
        "#".repeat(filled),
        ".".repeat(width - filled),
        frac * 100.0,
        human(p.done_bytes as f64),
        human(p.total_bytes as f64),
        format!("{}/s", human(p.rate)),
        p.active_sources,
        if p.active_sources == 1 { "" } else { "s" }
    )
}

/// What `where` prints: a header line, then one line per source with its
/// chunk count and map (`#` all held, `+` some, `.` none). `me`, if given,
/// is marked "(this peer)".
pub fn format_locations(
    l: &Locations,
    width: usize,
    me: Option<SocketAddr>,
) -> std::result::Result<String, String> {
    let mut s = format!(
        "{}: {} bytes ({}), {} chunks of {}, {} source(s)\n",
        l.name,
        l.length,
        human(l.length as f64),
        l.chunk_count,
        human(f64::from(l.chunk_size)),
        l.sources.len()
    );
    for src in &l.sources {
        let b = Bitmap::from_bytes(l.chunk_count, &src.have)
            .map_err(|e| format!("bad bitmap from the tracker: {e}"))?;
        s.push_str(&format!(
            "  {:<22} {:>6}/{:<6} {}{}\n",
            src.addr.to_string(),
            b.count_ones(),
            l.chunk_count,
            b.render(width.max(1)),
            if Some(src.addr) == me {
                "  (this peer)"
            } else {
                ""
            }
        ));
    }
    Ok(s)
}

/// What `peer get` prints when done: totals, then what each source gave.
pub fn format_summary(s: &Summary) -> String {
    let secs = s.elapsed.as_secs_f64().max(1e-3);
    let mut text = format!(
        "downloaded {}: {} ({} bytes) in {:.2} s, {}/s; {} chunks, {} resumed from disk, \
         {} duplicate(s)\n",
        s.name,
        human(s.length as f64),
        s.length,
        secs,
        human(s.bytes_downloaded as f64 / secs),
        s.chunks_total,
        s.chunks_resumed,
        s.duplicates
    );
    for src in &s.sources {
        text.push_str(&format!(
            "  from {}: {} ({} bytes), {} chunk(s)",
            src.addr,
            human(src.bytes as f64),
            src.bytes,
            src.chunks
        ));
        if src.hash_failures > 0 {
            text.push_str(&format!(", {} failed verification", src.hash_failures));
        }
        if let Some(why) = &src.dropped {
            text.push_str(&format!(", dropped: {why}"));
        }
        text.push('\n');
    }
    text.push_str(&format!("saved to {}\n", s.path.display()));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Target {
        Target::Name(s.into())
    }

    #[test]
    fn commands_parse() {
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("   \n"), Ok(None));
        assert_eq!(parse("list\n"), Ok(Some(Command::List)));
        assert_eq!(parse("  LS "), Ok(Some(Command::List)));
        assert_eq!(parse("status"), Ok(Some(Command::Status)));
        assert_eq!(parse("?"), Ok(Some(Command::Help)));
        assert_eq!(parse("quit"), Ok(Some(Command::Quit)));
        assert_eq!(parse("exit"), Ok(Some(Command::Quit)));
        assert_eq!(
            parse("get climbing.jpg"),
            Ok(Some(Command::Get(name("climbing.jpg"))))
        );
        assert_eq!(parse("get 2"), Ok(Some(Command::Get(Target::Number(2)))));
        assert_eq!(
            parse("where  my photos/bear 1.jpg \r\n"),
            Ok(Some(Command::Where(name("my photos/bear 1.jpg"))))
        );
        assert_eq!(
            parse("where 2a"),
            Ok(Some(Command::Where(name("2a")))),
            "not all digits: a name"
        );
    }

    #[test]
    fn bad_input_gets_a_hint() {
        for (line, hint) in [
            ("frobnicate", "unknown command"),
            ("get", "get needs a file"),
            ("where   ", "where needs a file"),
            ("list everything", "takes nothing"),
            ("get 99999999999999999999999", "too large"),
        ] {
            let e = parse(line).expect_err(line);
            assert!(e.contains(hint), "{line:?}: {e}");
        }
    }

    #[test]
    fn sizes_and_bars_read_well() {
        assert_eq!(human(0.0), "0 B");
        assert_eq!(human(1023.0), "1023 B");
        assert_eq!(human(1536.0), "1.5 KiB");
        assert_eq!(human(32.0 * 1024.0 * 1024.0), "32.0 MiB");
        let p = |done: u64| Progress {
            total_bytes: 1000,
            done_bytes: done,
            chunks_done: 0,
            chunks_total: 10,
            active_sources: 2,
            elapsed: Duration::ZERO,
            rate: 2048.0,
        };
        let (a, b) = (progress_line(&p(0), 10), progress_line(&p(999), 10));
        assert!(a.starts_with("[..........]   0.0%"), "{a}");
        // Not full until it is: 99.9% does not round up to a full bar.
        assert!(b.starts_with("[#########.]  99.9%"), "{b}");
        assert_eq!(a.len(), b.len(), "the line keeps its width");
        assert!(progress_line(&p(1000), 10).starts_with("[##########] 100.0%"));
        assert!(a.ends_with("2.0 KiB/s  2 sources"), "{a}");
    }

    #[test]
    fn chunk_maps_mark_this_peer() {
        let me: SocketAddr = "127.0.0.1:4002".parse().unwrap();
        let mut half = Bitmap::new(10);
        for i in 0..5 {
            half.set(i);
        }
        let l = Locations {
            name: "f".into(),
            length: 10 * 1024,
            chunk_size: 1024,
            chunk_count: 10,
            hashes: None,
            sources: vec![
                crate::wire::Source {
                    addr: "127.0.0.1:4001".parse().unwrap(),
                    have: Bitmap::full(10).as_bytes().to_vec(),
                },
                crate::wire::Source {
                    addr: me,
                    have: half.as_bytes().to_vec(),
                },
            ],
        };
        let text = format_locations(&l, 64, Some(me)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "f: 10240 bytes (10.0 KiB), 10 chunks of 1.0 KiB, 2 source(s)"
        );
        assert!(lines[1].ends_with("10/10     ##########"), "{text}");
        assert!(
            lines[2].ends_with("5/10     #####.....  (this peer)"),
            "{text}"
        );
        let bad = Locations {
            sources: vec![crate::wire::Source {
                addr: me,
                have: vec![0; 7],
            }],
            ..l
        };
        assert!(format_locations(&bad, 64, None).is_err());
    }
}
