//! Live sharing: the folder watcher of a sharing peer.
//!
//! Owns: the "share-watch" thread, which looks at the shared folder every
//! [`WATCH_INTERVAL`] and keeps the share index in line with it: a file
//! added is hashed and shared once it is stable, a file changed stops
//! being shared at once and its new content is hashed and shared once it
//! is stable, a file removed stops being shared; a file a download has
//! just finished into the folder is in the index already, with its
//! metadata at the finish, and is taken as it is. It changes only the share
//! index; every tracker session follows the index by itself (Withdraw,
//! Register: see `peer::session`), so the watcher talks to no tracker.
//!
//! **Stable** means: two looks at least [`WATCH_STABLE`] apart saw the
//! same size, modification time, change time (nanoseconds), device and
//! inode (the hash cache's key, `share::Stamp`). A file still being
//! written moves at least one of them at every write, so it is not
//! offered until the writer has paused for a moment; a writer that pauses
//! longer and then writes again makes it "changed" (withdrawn, hashed
//! again once stable). Hashing reads the file from the handle it is then
//! served from, and a file whose metadata moved while it was hashed is not
//! shared (it is tried again once stable), so what is announced is what
//! was hashed; the chunk server's check before each upload
//! (`SharedFile::read_for_upload`) stays the last word.
//!
//! Cost: a look is one `lstat` per file (the walk of `share::list_files`,
//! with every check of the start-up scan: symlinks leaving the folder,
//! special files, names, `.p2pfs/` and `.part` artifacts, the cache and
//! lock files); only new and changed files are opened and hashed, on every
//! core. On a folder so large that looking takes more than a tenth of the
//! interval, the watcher looks less often ([`MAX_LOOK_SHARE`]), so it never
//! keeps a core busy.
//!
//! Locks: only the share index's, for one map operation at a time; none is
//! held while the folder is walked or a file is hashed.
//!
//! Calls `peer::share` only.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded, select};
use log::{debug, warn};

use super::download::partfile;
use super::share::{self, Candidate, HashProgress, Mode, ShareIndex, SharedFile, Stamp};
use super::{PeerError, Result};
pub use crate::limits::{WATCH_INTERVAL, WATCH_STABLE};

/// Timing of the watcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchConfig {
    /// Time between two looks at the folder.
    pub interval: Duration,
    /// How long a file's metadata must stay the same before it is shared.
    pub stable_for: Duration,
}

impl Default for WatchConfig {
    fn default() -> WatchConfig {
        WatchConfig {
            interval: WATCH_INTERVAL,
            stable_for: WATCH_STABLE,
        }
    }
}

/// What is watched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every file under the folder (`peer share`).
    Folder,
    /// Only these paths (relative to the folder, or absolute inside it; a
    /// folder stands for every file under it), as `share::scan_dir`'s
    /// `only`: `peer share DIR FILE...`, or `peer get --seed` (the files it
    /// downloaded, watched for changes and removal; nothing else in the
    /// folder is shared).
    Paths(Vec<PathBuf>),
}

/// What the watcher did, for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A new file is shared.
    Added { name: String, length: u64 },
    /// A file changed on disk: its old content is no longer shared.
    Changed { name: String },
    /// A changed file's new content is shared.
    Updated { name: String, length: u64 },
    /// A file was removed from the folder: no longer shared.
    Removed { name: String },
    /// A new or changed file cannot be shared (said once per reason).
    Skipped { path: PathBuf, why: String },
}

/// Events waiting for the user interface; more are dropped (logged).
const EVENT_QUEUE: usize = 256;

/// Handle to the watcher thread. Dropping it stops the thread.
pub struct FolderWatch {
    stop: Sender<()>,
    /// Stops a hashing in progress within a chunk per hashing thread.
    cancel: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl FolderWatch {
    /// Starts "share-watch" on `dir`. The files of `share` found in scope
    /// when it starts are taken as shared as they are (a file the start-up
    /// scan hashed is compared with the metadata it had then). What it
    /// cannot share at start is not reported (the start-up scan said so).
    pub fn start(
        dir: &Path,
        scope: Scope,
        chunk_size: u32,
        share: Arc<ShareIndex>,
        cfg: WatchConfig,
        events: Option<Sender<WatchEvent>>,
    ) -> Result<FolderWatch> {
        let root = share::share_root(dir)?;
        let (stop, stop_rx) = bounded(1);
        let cancel = Arc::new(AtomicBool::new(false));
        let mut w = Watcher {
            root,
            dir: dir.to_path_buf(),
            scope,
            chunk_size,
            share,
            cfg,
            events,
            cancel: Arc::clone(&cancel),
            known: HashMap::new(),
            reported: HashSet::new(),
        };
        w.adopt_index();
        w.note_skipped()?;
        let handle = thread::Builder::new()
            .name("share-watch".into())
            .spawn(move || w.run(stop_rx))
            .map_err(|e| PeerError::io("start thread", "share-watch", e))?;
        Ok(FolderWatch {
            stop,
            cancel,
            handle: Some(handle),
        })
    }

    /// A channel for [`FolderWatch::start`]'s events.
    pub fn channel() -> (Sender<WatchEvent>, Receiver<WatchEvent>) {
        bounded(EVENT_QUEUE)
    }

    /// Stops the thread (a hashing in progress stops within one chunk per
    /// hashing thread) and joins it.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.cancel.store(true, Ordering::SeqCst);
        let _ = self.stop.try_send(());
        if let Some(h) = self.handle.take()
            && h.join().is_err()
        {
            warn!("the folder watcher panicked");
        }
    }
}

impl Drop for FolderWatch {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Most of its time the watcher may spend looking at the folder: on a
/// folder so large that a look takes more than a tenth of the interval,
/// it looks less often (a look at 10,000 files takes about 40 ms).
const MAX_LOOK_SHARE: u32 = 10;

/// The wait before the next look, after one that took `took` (hashing
/// included, which only new and changed files cost).
fn next_wait(interval: Duration, took: Duration) -> Duration {
    interval.max(took.saturating_mul(MAX_LOOK_SHARE))
}

/// What the watcher knows of one name.
#[derive(Default)]
struct Tracked {
    /// The entry it put in (or found in) the index, and the metadata that
    /// entry was hashed with (None: unknown, so any look counts as a
    /// change).
    shared: Option<(Arc<SharedFile>, Option<Stamp>)>,
    /// Metadata seen that differs from the shared entry's, and since when
    /// it has stayed the same.
    pending: Option<(Option<Stamp>, Instant)>,
    /// The name was shared before with other content (for the event).
    was_shared: bool,
    /// Metadata with which the file could not be shared: not tried again
    /// until it changes.
    failed: Option<Option<Stamp>>,
}

struct Watcher {
    root: PathBuf,
    dir: PathBuf,
    scope: Scope,
    chunk_size: u32,
    share: Arc<ShareIndex>,
    cfg: WatchConfig,
    events: Option<Sender<WatchEvent>>,
    cancel: Arc<AtomicBool>,
    known: HashMap<String, Tracked>,
    /// Paths already reported as skipped, with the reason; only those the
    /// last look still found skipped (and hashing failures since).
    reported: HashSet<(PathBuf, String)>,
}

impl Watcher {
    fn run(mut self, stop: Receiver<()>) {
        let mut wait = self.cfg.interval;
        loop {
            select! {
                recv(stop) -> _ => return,
                default(wait) => {}
            }
            if self.cancel.load(Ordering::SeqCst) {
                return;
            }
            let t = Instant::now();
            if let Err(e) = self.look() {
                debug!("looking at {}: {e}", self.dir.display());
            }
            wait = next_wait(self.cfg.interval, t.elapsed());
        }
    }

    /// Notes, without reporting them, the paths that cannot be shared now.
    fn note_skipped(&mut self) -> Result<()> {
        let (_, skipped) = share::list_files(&self.root, &self.dir, self.scope_paths())?;
        self.report_skipped(skipped, true);
        Ok(())
    }

    fn scope_paths(&self) -> &[PathBuf] {
        match &self.scope {
            Scope::Folder => &[],
            Scope::Paths(p) => p,
        }
    }

    /// Takes the index's files as shared (they are the files in scope: the
    /// start-up scan's, or the downloads being seeded).
    fn adopt_index(&mut self) {
        for f in self.share.files() {
            let stamp = f.hashed_stamp();
            self.known.insert(
                f.name().to_owned(),
                Tracked {
                    shared: Some((f, stamp)),
                    ..Tracked::default()
                },
            );
        }
    }

    /// One look at the folder.
    fn look(&mut self) -> Result<()> {
        let (found, skipped) = share::list_files(&self.root, &self.dir, self.scope_paths())?;
        // Forget what is no longer there, so `reported` stays the size of
        // what the folder holds (a path back later is reported again).
        let now_skipped: HashSet<&PathBuf> = skipped.iter().map(|(p, _)| p).collect();
        self.reported.retain(|(p, _)| now_skipped.contains(p));
        self.report_skipped(skipped, false);
        self.removed(&found);
        let now = Instant::now();
        let mut ready = BTreeMap::new();
        for (name, c) in found {
            if self.is_ready(&name, c.stamp, now) {
                ready.insert(name, c);
            }
        }
        if !ready.is_empty() {
            self.share_ready(ready)?;
        }
        Ok(())
    }

    /// Withdraws what was shared and is gone from the folder.
    fn removed(&mut self, found: &BTreeMap<String, Candidate>) {
        let gone: Vec<String> = self
            .known
            .keys()
            .filter(|n| !found.contains_key(*n))
            .cloned()
            .collect();
        for name in gone {
            let Some(t) = self.known.remove(&name) else {
                continue;
            };
            if let Some((f, _)) = t.shared
                && self.share.remove_exact(&f)
            {
                self.emit(WatchEvent::Removed { name });
            } else if t.was_shared {
                self.emit(WatchEvent::Removed { name });
            }
        }
    }

    /// Brings one name found by the look up to date; true if it is stable
    /// and not shared as it is, so it is to be hashed now.
    fn is_ready(&mut self, name: &str, stamp: Option<Stamp>, now: Instant) -> bool {
        let in_index = self.share.get(name);
        let t = self.known.entry(name.to_owned()).or_default();
        // The chunk server withdrew it (its bytes no longer matched), or a
        // finished download replaced it: look at it afresh.
        if let Some((f, _)) = &t.shared
            && !in_index.as_ref().is_some_and(|g| Arc::ptr_eq(f, g))
        {
            t.shared = None;
            t.was_shared = true;
        }
        // Put in the index by someone else (a download finished into the
        // folder) with the metadata the file has now: what it vouches for
        // is what is there, so it is taken as shared, not hashed again.
        if t.shared.is_none()
            && let Some(g) = &in_index
            && g.hashed_stamp().is_some()
            && g.hashed_stamp() == stamp
        {
            t.shared = Some((Arc::clone(g), stamp));
            t.pending = None;
            return false;
        }
        if let Some((f, hashed)) = &mut t.shared {
            if hashed.is_none() {
                // Adopted without metadata (a download's file): as it is
                // now is as it was shared.
                *hashed = stamp;
            }
            if *hashed == stamp {
                t.pending = None;
                return false;
            }
            // Changed: its old content is not served a moment longer.
            let f = Arc::clone(f);
            t.shared = None;
            t.was_shared = true;
            if self.share.remove_exact(&f) {
                self.emit(WatchEvent::Changed {
                    name: name.to_owned(),
                });
            }
            let Some(t) = self.known.get_mut(name) else {
                return false;
            };
            t.pending = Some((stamp, now));
            return false;
        }
        if t.failed.is_some_and(|s| s == stamp && s.is_some()) {
            return false;
        }
        match t.pending {
            Some((seen, since)) if seen == stamp && seen.is_some() => {
                now.duration_since(since) >= self.cfg.stable_for
            }
            _ => {
                t.pending = Some((stamp, now));
                false
            }
        }
    }

    /// Hashes the stable files (on every core; a stop cancels it) and puts
    /// them in the index.
    fn share_ready(&mut self, ready: BTreeMap<String, Candidate>) -> Result<()> {
        let wanted: HashMap<String, Option<Stamp>> =
            ready.iter().map(|(n, c)| (n.clone(), c.stamp)).collect();
        let mut skipped = Vec::new();
        let none = |_: &HashProgress| {};
        let files = share::hash_found(
            &self.root,
            &self.dir,
            ready,
            self.chunk_size,
            Mode::Live,
            &none,
            Some(&self.cancel),
            &mut skipped,
        )?;
        let mut done = HashSet::new();
        for f in files {
            let name = f.name().to_owned();
            done.insert(name.clone());
            let stamp = f.hashed_stamp();
            if wanted.get(&name) != Some(&stamp) {
                // It moved between the look and the open: not stable.
                if let Some(t) = self.known.get_mut(&name) {
                    t.pending = Some((stamp, Instant::now()));
                }
                continue;
            }
            self.publish(f, stamp);
        }
        for (name, stamp) in wanted {
            if !done.contains(&name)
                && let Some(t) = self.known.get_mut(&name)
            {
                t.pending = None;
                t.failed = Some(stamp);
            }
        }
        self.report_skipped(skipped, false);
        Ok(())
    }

    /// Shares one freshly hashed file.
    fn publish(&mut self, f: SharedFile, stamp: Option<Stamp>) {
        let name = f.name().to_owned();
        let length = f.geometry().length();
        let f = Arc::new(f);
        self.share.insert(Arc::clone(&f));
        let t = self.known.entry(name.clone()).or_default();
        t.shared = Some((f, stamp));
        t.pending = None;
        t.failed = None;
        let e = if t.was_shared {
            WatchEvent::Updated { name, length }
        } else {
            WatchEvent::Added { name, length }
        };
        t.was_shared = true;
        self.emit(e);
    }

    /// Reports each path that cannot be shared once per reason (`quiet`:
    /// only notes it; a download's own files are never reported).
    fn report_skipped(&mut self, skipped: Vec<(PathBuf, String)>, quiet: bool) {
        for (path, why) in skipped {
            let artifact = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(partfile::is_artifact);
            if self.reported.insert((path.clone(), why.clone())) && !quiet && !artifact {
                self.emit(WatchEvent::Skipped { path, why });
            }
        }
    }

    /// Never blocks: a user interface that does not keep up loses lines.
    fn emit(&self, e: WatchEvent) {
        debug!("folder watcher: {e:?}");
        if let Some(tx) = &self.events
            && tx.try_send(e).is_err()
        {
            debug!("folder watcher event dropped (listener full or gone)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::testutil::TempDir;

    #[test]
    fn a_slow_look_spaces_the_next_one() {
        let s = Duration::from_secs(1);
        assert_eq!(next_wait(s, Duration::from_millis(40)), s);
        assert_eq!(
            next_wait(s, Duration::from_millis(400)),
            Duration::from_secs(4)
        );
    }

    /// Paths reported as not shareable are remembered only while they are
    /// there: a folder where such names come and go (a browser's `.part`
    /// downloads, temporary FIFOs) does not grow the watcher's memory
    /// without bound.
    #[test]
    fn skipped_paths_are_forgotten_once_gone() {
        let t = TempDir::new("watch-skipped");
        let share = Arc::new(ShareIndex::new());
        let mut w = Watcher {
            root: share::share_root(&t.0).unwrap(),
            dir: t.0.clone(),
            scope: Scope::Folder,
            chunk_size: 1024,
            share,
            cfg: fast(),
            events: None,
            cancel: Arc::new(AtomicBool::new(false)),
            known: HashMap::new(),
            reported: HashSet::new(),
        };
        for round in 0..3 {
            let names: Vec<String> = (0..50).map(|i| format!("r{round}-{i}.part")).collect();
            for n in &names {
                std::fs::write(t.0.join(n), b"x").unwrap();
            }
            w.look().unwrap();
            assert_eq!(w.reported.len(), 50);
            for n in &names {
                std::fs::remove_file(t.0.join(n)).unwrap();
            }
        }
        w.look().unwrap();
        assert!(w.reported.is_empty(), "{}", w.reported.len());
    }

    /// A download finished into the watched folder while the watcher runs
    /// (`get` at the prompt of `peer share`) is in the index already, with
    /// its metadata at the finish: the watcher takes it as it is rather
    /// than reading the whole file again.
    #[test]
    fn a_download_finished_in_the_folder_is_not_hashed_again() {
        let t = TempDir::new("watch-finished");
        let share = Arc::new(ShareIndex::new());
        let (tx, rx) = FolderWatch::channel();
        let w = FolderWatch::start(
            &t.0,
            Scope::Folder,
            1024,
            Arc::clone(&share),
            fast(),
            Some(tx),
        )
        .unwrap();
        let data = vec![5u8; 3000];
        let p = t.0.join("got");
        std::fs::write(&p, &data).unwrap();
        let g = crate::chunks::Geometry::new(3000, 1024).unwrap();
        let hashes = data.chunks(1024).map(crate::chunks::sha1).collect();
        let file = std::fs::File::open(&p).unwrap();
        let f = Arc::new(SharedFile::finished("got".into(), p, file, g, hashes));
        share.insert(Arc::clone(&f));
        // Well past the stable time: still the download's entry, no event.
        assert!(rx.recv_timeout(Duration::from_millis(800)).is_err());
        assert!(Arc::ptr_eq(&share.get("got").unwrap(), &f));
        // A later change is seen as usual.
        std::fs::write(t.0.join("got"), b"other").unwrap();
        assert_eq!(next(&rx), WatchEvent::Changed { name: "got".into() });
        w.stop();
    }

    fn fast() -> WatchConfig {
        WatchConfig {
            interval: Duration::from_millis(50),
            stable_for: Duration::from_millis(200),
        }
    }

    fn next(rx: &Receiver<WatchEvent>) -> WatchEvent {
        rx.recv_timeout(Duration::from_secs(5))
            .expect("a watch event within 5 s")
    }

    #[test]
    fn added_changed_removed_and_what_is_never_shared() {
        let t = TempDir::new("watch");
        let outside = TempDir::new("watch-outside");
        std::fs::write(t.0.join("a"), b"first").unwrap();
        let share = Arc::new(ShareIndex::new());
        for f in share::scan_dir(&t.0, &[], 1024, &|_, _| {}).unwrap().files {
            share.insert(Arc::new(f));
        }
        let (tx, rx) = FolderWatch::channel();
        let w = FolderWatch::start(
            &t.0,
            Scope::Folder,
            1024,
            Arc::clone(&share),
            fast(),
            Some(tx),
        )
        .unwrap();
        // Never shared: a link out of the folder, a download's work folder,
        // a .part, a FIFO.
        std::fs::write(outside.0.join("secret"), b"secret").unwrap();
        std::os::unix::fs::symlink(outside.0.join("secret"), t.0.join("link")).unwrap();
        std::fs::create_dir(t.0.join(partfile::WORK_DIR)).unwrap();
        std::fs::write(t.0.join(partfile::WORK_DIR).join("x"), b"x").unwrap();
        std::fs::write(t.0.join("y.part"), b"y").unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(t.0.join("fifo"))
            .status()
            .is_ok_and(|s| s.success());
        assert!(made, "mkfifo");
        std::fs::create_dir(t.0.join("sub")).unwrap();
        std::fs::write(t.0.join("sub/b"), vec![7u8; 3000]).unwrap();
        let mut skipped = Vec::new();
        let added = loop {
            match next(&rx) {
                WatchEvent::Skipped { path, .. } => skipped.push(path),
                e => break e,
            }
        };
        assert_eq!(
            added,
            WatchEvent::Added {
                name: "sub/b".into(),
                length: 3000
            }
        );
        assert!(skipped.iter().any(|p| p.ends_with("link")), "{skipped:?}");
        assert!(skipped.iter().any(|p| p.ends_with("fifo")), "{skipped:?}");
        let names: Vec<String> = share.files().iter().map(|f| f.name().to_owned()).collect();
        assert_eq!(names, ["a", "sub/b"]);
        // Changed: out of the index at once, then back with new hashes.
        let old = share.get("a").unwrap();
        std::fs::write(t.0.join("a"), b"second, longer").unwrap();
        assert_eq!(next(&rx), WatchEvent::Changed { name: "a".into() });
        assert_eq!(
            next(&rx),
            WatchEvent::Updated {
                name: "a".into(),
                length: 14
            }
        );
        let new = share.get("a").unwrap();
        assert!(!Arc::ptr_eq(&old, &new));
        assert_eq!(new.hashes(), &[crate::chunks::sha1(b"second, longer")]);
        // Removed.
        std::fs::remove_file(t.0.join("sub/b")).unwrap();
        assert_eq!(
            next(&rx),
            WatchEvent::Removed {
                name: "sub/b".into()
            }
        );
        assert!(share.get("sub/b").is_none());
        // Stopping is prompt.
        let t0 = Instant::now();
        w.stop();
        assert!(t0.elapsed() < Duration::from_secs(1));
    }
}
