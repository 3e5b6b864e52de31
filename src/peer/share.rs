//! The share index: which files this peer offers, their chunk hashes and
//! have-bitmaps, and hashing a folder at start (`peer share`).
//!
//! Owns: [`SharedFile`] (one offered file: open handle, geometry, hashes,
//! which chunks are verified on disk), [`ShareIndex`] (name -> file, the
//! only way the chunk server finds a file: names from the wire are looked up
//! here, never joined onto a path), [`scan_dir`] (walk + parallel SHA-1)
//! and the hash cache file. Calls `wire` (names, FileEntry), `chunks`
//! (geometry, bitmaps, sha1) and, to leave a download's own files out of a
//! scan, [`partfile::is_artifact`] (the download's part-file module, which
//! depends on nothing of `share`, so there is no import cycle).
//!
//! Locks: the index's RwLock and each file's have-bitmap Mutex guard only
//! in-memory data; no I/O happens under either.
//!
//! # Hash cache (`.p2pfs-hashes` in the share folder)
//!
//! Restarting `share` on an unchanged folder must not re-hash it. A file's
//! digests are reused when its relative name, size, mtime (nanoseconds) and
//! the chunk size all match the cached entry. Files modified less than
//! [`RACY_WINDOW`] before the scan started are not cached: a write in the
//! same timestamp tick as the hashing could otherwise leave a stale entry
//! with a matching mtime ("racy git" problem).
//!
//! Layout, all integers big-endian:
//!
//! ```text
//! magic    8 bytes  "P2PFSHC\n"
//! version  u32      1
//! count    u32      number of entries
//! entry * count:
//!   name_len u16, name (UTF-8, passes wire::validate_name)
//!   size u64, mtime_ns i64, chunk_size u32,
//!   hash_count u32 (must equal the chunk count of size/chunk_size),
//!   hash_count * 20 bytes of SHA-1
//! checksum 20 bytes SHA-1 of everything before it
//! ```
//!
//! A cache that cannot be read or parsed is ignored with a warning and
//! rewritten. It is written to `.p2pfs-hashes.tmp-<pid>` and renamed over
//! the old one, so a crash never leaves a half-written cache. If the folder
//! is read-only the cache is not written (warning). The scan never
//! publishes the cache file or its temporary files.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, Metadata};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use byteorder::{BigEndian, ByteOrder, WriteBytesExt};

use super::download::partfile;
use super::{PeerError, Result};
use crate::chunks::{self, Bitmap, ChunkIndex, DIGEST_LEN, Digest, Geometry};
use crate::wire::{self, FileEntry, Have};

/// Name of the hash cache file in the root of the share folder.
pub const HASH_CACHE_NAME: &str = ".p2pfs-hashes";
/// The lock file `peer share` holds in the folder it shares (see
/// `ui::share`); never shared.
pub const LOCK_FILE_NAME: &str = ".p2pfs-lock";
/// Files modified this recently before a scan are hashed but not cached.
pub const RACY_WINDOW: Duration = Duration::from_secs(2);

const CACHE_MAGIC: &[u8; 8] = b"P2PFSHC\n";
const CACHE_VERSION: u32 = 1;
/// A cache larger than this is not read (it would describe ~50 PiB of files
/// at 1 MiB chunks); it is treated as corrupt and rewritten.
const MAX_CACHE_BYTES: u64 = 1 << 30;
/// Progress is reported at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

// ---- SharedFile ---------------------------------------------------------

/// One file this peer offers: complete (a sharer) or being downloaded.
#[derive(Debug)]
pub struct SharedFile {
    name: String,
    path: PathBuf,
    file: File,
    geometry: Geometry,
    hashes: Vec<Digest>,
    /// Chunks verified on disk. A Mutex rather than atomics: updates are
    /// rare (once per chunk) and a consistent snapshot is needed for
    /// Register.
    have: Mutex<Bitmap>,
}

impl SharedFile {
    /// A complete file on disk (a sharer): all chunks held.
    /// `hashes.len()` must equal `geometry.count()`.
    pub fn complete(
        name: String,
        path: PathBuf,
        file: File,
        geometry: Geometry,
        hashes: Vec<Digest>,
    ) -> SharedFile {
        let have = Bitmap::full(geometry.count());
        SharedFile::partial(name, path, file, geometry, hashes, have)
    }

    /// A file being downloaded: `file` is the open read+write .part file;
    /// `have` says which chunks are verified on disk.
    /// `hashes.len()` and `have.len()` must equal `geometry.count()`.
    pub fn partial(
        name: String,
        path: PathBuf,
        file: File,
        geometry: Geometry,
        hashes: Vec<Digest>,
        have: Bitmap,
    ) -> SharedFile {
        debug_assert_eq!(hashes.len(), geometry.count() as usize, "{name}");
        debug_assert_eq!(have.len(), geometry.count(), "{name}");
        SharedFile {
            name,
            path,
            file,
            geometry,
            hashes,
            have: Mutex::new(have),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the file is on disk (for information only: the server never
    /// opens by path, it uses [`SharedFile::file`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    pub fn hashes(&self) -> &[Digest] {
        &self.hashes
    }

    /// The shared handle; use positional reads/writes
    /// (`std::os::unix::fs::FileExt`) so threads never race on a cursor.
    pub fn file(&self) -> &File {
        &self.file
    }

    fn bits(&self) -> std::sync::MutexGuard<'_, Bitmap> {
        // A poisoned lock only means a panic elsewhere between bitmap
        // updates, each of which leaves the bitmap consistent.
        crate::sync::lock(&self.have)
    }

    pub fn has(&self, i: ChunkIndex) -> bool {
        self.bits().get(i.get())
    }

    /// Records that chunk `i` is verified on disk; true if newly set.
    pub fn mark_have(&self, i: ChunkIndex) -> bool {
        self.bits().set(i.get())
    }

    /// A snapshot of the have-bitmap.
    pub fn have(&self) -> Bitmap {
        self.bits().clone()
    }

    pub fn have_count(&self) -> u32 {
        self.bits().count_ones()
    }

    pub fn is_complete(&self) -> bool {
        self.bits().is_full()
    }

    /// Reads chunk `i` into `buf` (resized to the chunk length) with a
    /// positional read.
    pub fn read_chunk(&self, i: ChunkIndex, buf: &mut Vec<u8>) -> io::Result<()> {
        chunks::read_chunk(&self.file, &self.geometry, i, buf)
    }

    /// This file as announced in a Register.
    pub fn to_entry(&self) -> FileEntry {
        let have = {
            let bits = self.bits();
            if bits.is_full() {
                Have::All
            } else {
                Have::Some(bits.as_bytes().to_vec())
            }
        };
        FileEntry {
            name: self.name.clone(),
            length: self.geometry.length(),
            chunk_size: self.geometry.chunk_size(),
            hashes: self.hashes.clone(),
            have,
        }
    }
}

// ---- ShareIndex ---------------------------------------------------------

/// Name -> shared file. Shared as `Arc<ShareIndex>` by the chunk server,
/// the tracker session and downloads.
#[derive(Debug, Default)]
pub struct ShareIndex {
    files: RwLock<HashMap<String, Arc<SharedFile>>>,
}

impl ShareIndex {
    pub fn new() -> ShareIndex {
        ShareIndex::default()
    }

    // Poisoning is ignored: every critical section is a single map
    // operation that cannot leave the map half-updated.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<SharedFile>>> {
        crate::sync::read(&self.files)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<SharedFile>>> {
        crate::sync::write(&self.files)
    }

    /// Adds or replaces (e.g. a finished download replacing its partial
    /// entry) the file under its name; returns the previous entry.
    pub fn insert(&self, f: Arc<SharedFile>) -> Option<Arc<SharedFile>> {
        let name = f.name().to_owned();
        self.write().insert(name, f)
    }

    pub fn get(&self, name: &str) -> Option<Arc<SharedFile>> {
        self.read().get(name).cloned()
    }

    pub fn remove(&self, name: &str) -> Option<Arc<SharedFile>> {
        self.write().remove(name)
    }

    /// Every shared file, sorted by name.
    pub fn files(&self) -> Vec<Arc<SharedFile>> {
        let mut v: Vec<_> = self.read().values().cloned().collect();
        v.sort_by(|a, b| a.name().cmp(b.name()));
        v
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }
}

// ---- Scanning -----------------------------------------------------------

/// Result of scanning a folder for `peer share`.
#[derive(Debug)]
pub struct Scan {
    /// Every file that can be shared, sorted by name.
    pub files: Vec<SharedFile>,
    /// Paths not shared and why (one line each, for the user).
    pub skipped: Vec<(PathBuf, String)>,
}

/// A file found by the walk, before it is opened.
struct Candidate {
    name: String,
    /// Where to open it (may be a symlink that stays inside the folder).
    path: PathBuf,
}

/// An opened file waiting for its hashes.
struct Opened {
    name: String,
    path: PathBuf,
    file: File,
    geometry: Geometry,
    size: u64,
    mtime_ns: Option<i64>,
    /// From the cache, or filled in by hashing.
    hashes: Option<Vec<Digest>>,
}

/// How far the hashing of a scan is, for a progress display.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HashProgress {
    /// Bytes hashed so far, of `bytes_total` to hash (cached files do not
    /// count).
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Files whose hashes are known (from the cache, hashed, or failed), of
    /// `files_total` found.
    pub files_done: u64,
    pub files_total: u64,
}

/// Hashes every regular file under `dir` (recursively; names are paths
/// relative to `dir` with `/` separators), or only the paths in `only`
/// (relative to `dir`, or absolute but inside it; a folder in `only` shares
/// everything under it). See the module comment for the hash cache.
///
/// Skipped with a reason: anything resolving outside `dir`, symlinks that
/// leave `dir` (symlinks to files inside are followed; symlinks to folders
/// are not, their files are found under their real path), non-regular
/// files, names refused by [`wire::validate_name`] (including non-UTF-8),
/// files needing too many chunks at this chunk size, `*.part` files and
/// the hash cache, and anything that cannot be read.
///
/// Hashing runs on every core, parallel across the chunks of all files.
/// `progress(bytes hashed, bytes to hash)` is called from the hashing
/// threads at most every 100 ms, and once at the end; cached files do not
/// count as bytes to hash.
///
/// Fails only if `dir` is not a readable folder or `chunk_size` is invalid.
pub fn scan_dir(
    dir: &Path,
    only: &[PathBuf],
    chunk_size: u32,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<Scan> {
    scan_dir_cancellable(dir, only, chunk_size, progress, None)
}

/// [`scan_dir`] that stops hashing within one chunk per hashing thread
/// once `cancel` is set, and then fails with [`PeerError::Interrupted`]
/// (nothing is cached or shared): hashing a large folder takes minutes,
/// and Ctrl-C must not wait for it.
pub fn scan_dir_cancellable(
    dir: &Path,
    only: &[PathBuf],
    chunk_size: u32,
    progress: &(dyn Fn(u64, u64) + Sync),
    cancel: Option<&AtomicBool>,
) -> Result<Scan> {
    let bytes = |p: &HashProgress| progress(p.bytes_done, p.bytes_total);
    scan_dir_reporting(dir, only, chunk_size, &bytes, cancel)
}

/// [`scan_dir_cancellable`] reporting files as well as bytes.
pub fn scan_dir_reporting(
    dir: &Path,
    only: &[PathBuf],
    chunk_size: u32,
    progress: &(dyn Fn(&HashProgress) + Sync),
    cancel: Option<&AtomicBool>,
) -> Result<Scan> {
    let started = SystemTime::now();
    Geometry::new(0, chunk_size).map_err(|e| PeerError::Invalid(e.to_string()))?;
    let root = fs::canonicalize(dir).map_err(|e| PeerError::io("open share folder", dir, e))?;
    let meta = fs::metadata(&root).map_err(|e| PeerError::io("open share folder", dir, e))?;
    if !meta.is_dir() {
        return Err(PeerError::Invalid(format!(
            "{} is not a folder",
            dir.display()
        )));
    }

    let mut skipped = Vec::new();
    let mut found = BTreeMap::new();
    if only.is_empty() {
        walk(&root, &root, &mut found, &mut skipped)?;
    } else {
        for p in only {
            select(&root, dir, p, &mut found, &mut skipped)?;
        }
    }

    let cache_path = root.join(HASH_CACHE_NAME);
    let (old_cache, cache_corrupt) = load_cache(&cache_path);

    // Open each file and take its geometry; reuse cached hashes.
    let mut opened = Vec::with_capacity(found.len());
    for (name, c) in found {
        let file = match File::open(&c.path) {
            Ok(f) => f,
            Err(e) => {
                skipped.push((c.path, format!("cannot open: {e}")));
                continue;
            }
        };
        let meta = match file.metadata() {
            Ok(m) if m.is_file() => m,
            Ok(_) => {
                skipped.push((c.path, "not a regular file".into()));
                continue;
            }
            Err(e) => {
                skipped.push((c.path, format!("cannot stat: {e}")));
                continue;
            }
        };
        let size = meta.len();
        let geometry = match Geometry::new(size, chunk_size) {
            Ok(g) => g,
            Err(e) => {
                skipped.push((c.path, e.to_string()));
                continue;
            }
        };
        let mtime_ns = mtime_ns(&meta);
        let hashes = old_cache.get(&name).and_then(|e| {
            (Some(e.mtime_ns) == mtime_ns
                && e.size == size
                && e.chunk_size == chunk_size
                && e.hashes.len() == geometry.count() as usize)
                .then(|| e.hashes.clone())
        });
        opened.push(Opened {
            name,
            path: dir.join(c.name),
            file,
            geometry,
            size,
            mtime_ns,
            hashes,
        });
    }

    let failed = hash_missing(&mut opened, progress, cancel)?;
    if cancel.is_some_and(|c| c.load(Ordering::SeqCst)) {
        return Err(PeerError::Interrupted("hashing interrupted".into()));
    }

    // Build the result and the new cache.
    let racy_after = started
        .checked_sub(RACY_WINDOW)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_nanos()).ok())
        .unwrap_or(i64::MIN);
    let mut new_cache = if only.is_empty() {
        BTreeMap::new()
    } else {
        old_cache.clone() // a partial scan keeps the other entries
    };
    let mut files = Vec::with_capacity(opened.len());
    for (o, err) in opened.into_iter().zip(failed) {
        if let Some(e) = err {
            new_cache.remove(&o.name);
            skipped.push((o.path, e));
            continue;
        }
        let Some(hashes) = o.hashes else {
            // Unreachable: hash_missing fills or fails every file.
            skipped.push((o.path, "not hashed".into()));
            continue;
        };
        match o.mtime_ns {
            Some(m) if m < racy_after => {
                new_cache.insert(
                    o.name.clone(),
                    CacheEntry {
                        size: o.size,
                        mtime_ns: m,
                        chunk_size,
                        hashes: hashes.clone(),
                    },
                );
            }
            _ => {
                new_cache.remove(&o.name);
            }
        }
        files.push(SharedFile::complete(
            o.name, o.path, o.file, o.geometry, hashes,
        ));
    }

    let existed = cache_corrupt || !old_cache.is_empty();
    if cache_corrupt || new_cache != old_cache {
        if new_cache.is_empty() && !existed {
            // Nothing worth caching and no cache yet: leave the folder alone.
        } else {
            store_cache(&root, &cache_path, &new_cache);
        }
    }
    Ok(Scan { files, skipped })
}

/// Adds every file under `start` (a folder inside `root`) to `found`.
fn walk(
    root: &Path,
    start: &Path,
    found: &mut BTreeMap<String, Candidate>,
    skipped: &mut Vec<(PathBuf, String)>,
) -> Result<()> {
    // An explicit stack: no recursion depth limit to worry about. Folders
    // reached through symlinks are never entered, so there are no cycles.
    let mut stack = vec![start.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if d == root => return Err(PeerError::io("read share folder", root, e)),
            Err(e) => {
                skipped.push((d, format!("cannot read folder: {e}")));
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    skipped.push((d.clone(), format!("cannot read folder entry: {e}")));
                    continue;
                }
            };
            let path = entry.path();
            if let Some(sub) = classify(root, path, found, skipped) {
                stack.push(sub);
            }
        }
    }
    Ok(())
}

/// Adds one `only` path (a file, or a folder to walk).
fn select(
    root: &Path,
    dir: &Path,
    p: &Path,
    found: &mut BTreeMap<String, Candidate>,
    skipped: &mut Vec<(PathBuf, String)>,
) -> Result<()> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    };
    // Resolve the parent (so `dir` given through a symlink still matches)
    // but keep the last component as written, so a symlink is judged as a
    // symlink by `classify`.
    let last = match abs.components().next_back() {
        Some(Component::Normal(n)) => Some(n.to_os_string()),
        _ => None,
    };
    let resolved = match (last, abs.parent()) {
        (Some(last), Some(parent)) => fs::canonicalize(parent).map(|p| p.join(last)),
        _ => fs::canonicalize(&abs),
    };
    let candidate = match resolved {
        Ok(c) => c,
        Err(e) => {
            skipped.push((p.to_path_buf(), format!("cannot resolve: {e}")));
            return Ok(());
        }
    };
    // The folder itself, however it was spelled (even through a symlink).
    if candidate == root || fs::canonicalize(&candidate).is_ok_and(|c| c == root) {
        return walk(root, root, found, skipped);
    }
    if !candidate.starts_with(root) {
        skipped.push((
            p.to_path_buf(),
            format!("outside the shared folder {}", dir.display()),
        ));
        return Ok(());
    }
    if let Err(e) = fs::symlink_metadata(&candidate) {
        skipped.push((p.to_path_buf(), format!("cannot resolve: {e}")));
        return Ok(());
    }
    if let Some(sub) = classify(root, candidate, found, skipped) {
        walk(root, &sub, found, skipped)?;
    }
    Ok(())
}

/// Looks at one path inside `root` (not followed if a symlink): files are
/// added to `found`, folders are returned for walking, everything else is
/// skipped with a reason.
fn classify(
    root: &Path,
    path: PathBuf,
    found: &mut BTreeMap<String, Candidate>,
    skipped: &mut Vec<(PathBuf, String)>,
) -> Option<PathBuf> {
    let meta = match fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) => {
            skipped.push((path, format!("cannot stat: {e}")));
            return None;
        }
    };
    let ft = meta.file_type();
    if ft.is_dir() {
        return Some(path);
    }
    if ft.is_symlink() {
        let target = match fs::canonicalize(&path) {
            Ok(t) => t,
            Err(e) => {
                skipped.push((path, format!("broken symlink: {e}")));
                return None;
            }
        };
        if !target.starts_with(root) {
            skipped.push((path, "symlink leads outside the shared folder".into()));
            return None;
        }
        match fs::metadata(&target) {
            Ok(m) if m.is_file() => {}
            Ok(m) if m.is_dir() => {
                skipped.push((
                    path,
                    "symlink to a folder (not followed; its files are shared under their real path)"
                        .into(),
                ));
                return None;
            }
            Ok(_) => {
                skipped.push((
                    path,
                    "symlink to something that is not a regular file".into(),
                ));
                return None;
            }
            Err(e) => {
                skipped.push((path, format!("cannot stat symlink target: {e}")));
                return None;
            }
        }
    } else if !ft.is_file() {
        skipped.push((path, "not a regular file".into()));
        return None;
    }
    let name = match relative_name(root, &path) {
        Ok(n) => n,
        Err(why) => {
            skipped.push((path, why));
            return None;
        }
    };
    if partfile::is_artifact(&name) {
        skipped.push((path, "unfinished download (.part)".into()));
        return None;
    }
    if name.starts_with(HASH_CACHE_NAME) || name == LOCK_FILE_NAME {
        // Our own cache (or its temporary file) and the lock of the peer
        // sharing this folder: silently private.
        return None;
    }
    found.insert(name.clone(), Candidate { name, path });
    None
}

/// The wire name of `path` (inside `root`): its components joined by '/'.
fn relative_name(root: &Path, path: &Path) -> std::result::Result<String, String> {
    let rel = path
        .strip_prefix(root)
        .map_err(|_| "outside the shared folder".to_string())?;
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(s) => match s.to_str() {
                Some(s) => parts.push(s),
                None => return Err("name is not valid UTF-8".into()),
            },
            _ => return Err("name has a '.', '..' or root component".into()),
        }
    }
    let name = parts.join("/");
    wire::validate_name(&name).map_err(|e| e.to_string())?;
    Ok(name)
}

fn mtime_ns(m: &Metadata) -> Option<i64> {
    m.mtime()
        .checked_mul(1_000_000_000)?
        .checked_add(m.mtime_nsec())
}

// ---- Parallel hashing -----------------------------------------------------

/// Hashes every chunk of every file in `opened` without cached hashes,
/// on all cores. Returns, per file, `Some(reason)` if it could not be read.
fn hash_missing(
    opened: &mut [Opened],
    progress: &(dyn Fn(&HashProgress) + Sync),
    cancel: Option<&AtomicBool>,
) -> Result<Vec<Option<String>>> {
    // Work list: (file slot, chunk) for every chunk still to hash. Small:
    // 8 bytes per chunk (4 MiB for a 512 GiB file at 1 MiB chunks).
    let mut jobs: Vec<(u32, u32)> = Vec::new();
    let mut total = 0u64;
    for (slot, o) in opened.iter().enumerate() {
        if o.hashes.is_none() {
            let slot = u32::try_from(slot)
                .map_err(|_| PeerError::Invalid("too many files to share".into()))?;
            total = total.saturating_add(o.geometry.length());
            jobs.extend((0..o.geometry.count()).map(|c| (slot, c)));
        }
    }
    let mut errors: Vec<Option<String>> = vec![None; opened.len()];
    let files_total = opened.len() as u64;
    // Files with nothing to hash (cached, or empty) are done already.
    let to_hash = opened
        .iter()
        .filter(|o| o.hashes.is_none() && o.geometry.count() > 0)
        .count() as u64;
    let files_known = files_total - to_hash;

    if !jobs.is_empty() {
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(jobs.len());
        let ctx = HashCtx {
            files: opened,
            jobs: &jobs,
            next: AtomicUsize::new(0),
            failed: (0..opened.len()).map(|_| AtomicBool::new(false)).collect(),
            remaining: opened
                .iter()
                .map(|o| {
                    AtomicU32::new(if o.hashes.is_none() {
                        o.geometry.count()
                    } else {
                        0
                    })
                })
                .collect(),
            files_done: AtomicU64::new(files_known),
            files_total,
            done: AtomicU64::new(0),
            total,
            begin: Instant::now(),
            last_report_ms: AtomicU64::new(0),
            progress,
            cancel,
        };
        let results = std::thread::scope(|s| {
            let mut handles = Vec::new();
            for t in 1..threads {
                let ctx = &ctx;
                match std::thread::Builder::new()
                    .name(format!("hasher-{t}"))
                    .spawn_scoped(s, move || ctx.work())
                {
                    Ok(h) => handles.push(h),
                    Err(e) => log::warn!("cannot start hashing thread: {e}; using fewer"),
                }
            }
            // This thread hashes too, so hashing works even if no helper
            // thread could be started.
            let mut all = vec![ctx.work()];
            for h in handles {
                match h.join() {
                    Ok(r) => all.push(r),
                    Err(_) => return Err(PeerError::Invalid("a hashing thread panicked".into())),
                }
            }
            Ok(all)
        })?;
        let hashed = ctx.done.load(Ordering::Relaxed);
        drop(ctx);

        // Merge: digests into per-file vectors, first error per file wins.
        let mut digests: Vec<Option<Vec<Digest>>> = opened
            .iter()
            .map(|o| {
                o.hashes
                    .is_none()
                    .then(|| vec![[0u8; DIGEST_LEN]; o.geometry.count() as usize])
            })
            .collect();
        let mut filled = vec![0u32; opened.len()];
        for r in results {
            for (slot, chunk, d) in r.digests {
                if let Some(v) = digests[slot as usize].as_mut() {
                    v[chunk as usize] = d;
                    filled[slot as usize] += 1;
                }
            }
            for (slot, e) in r.errors {
                errors[slot as usize].get_or_insert(e);
            }
        }
        for (slot, o) in opened.iter_mut().enumerate() {
            if let Some(v) = digests[slot].take() {
                if errors[slot].is_none() && filled[slot] == o.geometry.count() {
                    o.hashes = Some(v);
                } else {
                    errors[slot].get_or_insert_with(|| "not every chunk was hashed".into());
                }
            }
        }
        progress(&HashProgress {
            bytes_done: hashed,
            bytes_total: total,
            files_done: files_total,
            files_total,
        });
    } else {
        // Zero-length files need no hashing.
        for o in opened.iter_mut() {
            if o.hashes.is_none() {
                o.hashes = Some(Vec::new());
            }
        }
        progress(&HashProgress {
            files_done: files_total,
            files_total,
            ..HashProgress::default()
        });
    }
    Ok(errors)
}

/// What the hashing threads share.
struct HashCtx<'a> {
    files: &'a [Opened],
    jobs: &'a [(u32, u32)],
    next: AtomicUsize,
    /// A file with a read error: its remaining chunks are skipped.
    failed: Vec<AtomicBool>,
    /// Chunks of each file not hashed yet.
    remaining: Vec<AtomicU32>,
    /// Files whose hashes are known (or that failed).
    files_done: AtomicU64,
    files_total: u64,
    done: AtomicU64,
    total: u64,
    begin: Instant,
    last_report_ms: AtomicU64,
    progress: &'a (dyn Fn(&HashProgress) + Sync),
    /// Set: every thread stops at its next chunk.
    cancel: Option<&'a AtomicBool>,
}

#[derive(Default)]
struct HashResult {
    digests: Vec<(u32, u32, Digest)>,
    errors: Vec<(u32, String)>,
}

impl HashCtx<'_> {
    /// One hashing thread: claims chunks one at a time (a chunk is ~1 ms
    /// of work, so the atomic is not contended), one reusable buffer.
    fn work(&self) -> HashResult {
        let mut out = HashResult::default();
        let mut buf = Vec::new();
        loop {
            let j = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(&(slot, chunk)) = self.jobs.get(j) else {
                return out;
            };
            if self.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                return out;
            }
            let s = slot as usize;
            if self.failed[s].load(Ordering::Relaxed) {
                continue;
            }
            let f = &self.files[s];
            let Some(i) = f.geometry.index(chunk) else {
                continue; // cannot happen: jobs come from the geometry
            };
            // The buffer only ever grows: resizing it to each chunk's
            // length would zero-fill the difference every time a chunk is
            // longer than the one before (many small files of mixed sizes;
            // an estimated 0.05 CPU s per GiB, below the benchmark's noise).
            let n = f.geometry.chunk_len(i) as usize;
            if buf.len() < n {
                buf.resize(n, 0);
            }
            let data = &mut buf[..n];
            match f.file.read_exact_at(data, f.geometry.offset(i)) {
                Ok(()) => {
                    out.digests.push((slot, chunk, chunks::sha1(data)));
                    if self.remaining[s].fetch_sub(1, Ordering::Relaxed) == 1 {
                        self.files_done.fetch_add(1, Ordering::Relaxed);
                    }
                    let done = self.done.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
                    self.maybe_report(done);
                }
                Err(e) => {
                    if !self.failed[s].swap(true, Ordering::Relaxed) {
                        self.files_done.fetch_add(1, Ordering::Relaxed);
                    }
                    let why = if e.kind() == io::ErrorKind::UnexpectedEof {
                        "file shrank while being hashed".to_string()
                    } else {
                        format!("cannot read: {e}")
                    };
                    out.errors.push((slot, why));
                }
            }
        }
    }

    fn maybe_report(&self, done: u64) {
        let now = self.begin.elapsed().as_millis() as u64;
        let last = self.last_report_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= PROGRESS_EVERY.as_millis() as u64
            && self
                .last_report_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            (self.progress)(&HashProgress {
                bytes_done: done,
                bytes_total: self.total,
                files_done: self.files_done.load(Ordering::Relaxed),
                files_total: self.files_total,
            });
        }
    }
}

// ---- Hash cache -----------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
struct CacheEntry {
    size: u64,
    mtime_ns: i64,
    chunk_size: u32,
    hashes: Vec<Digest>,
}

type Cache = BTreeMap<String, CacheEntry>;

/// Reads the cache; returns (entries, true if a cache existed but was
/// unusable). Never fails: a bad cache only costs re-hashing.
fn load_cache(path: &Path) -> (Cache, bool) {
    match fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return (Cache::new(), false),
        Ok(m) if m.len() > MAX_CACHE_BYTES => {
            log::warn!(
                "ignoring hash cache {}: {} bytes is implausibly large",
                path.display(),
                m.len()
            );
            return (Cache::new(), true);
        }
        _ => {}
    }
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            log::warn!("ignoring unreadable hash cache {}: {e}", path.display());
            return (Cache::new(), true);
        }
    };
    match decode_cache(&bytes) {
        Ok(c) => (c, false),
        Err(why) => {
            log::warn!(
                "ignoring corrupt hash cache {}: {why}; it will be rewritten",
                path.display()
            );
            (Cache::new(), true)
        }
    }
}

fn encode_cache(cache: &Cache) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(CACHE_MAGIC);
    // Writes to a Vec cannot fail; the Results are only std's signature.
    let _ = out.write_u32::<BigEndian>(CACHE_VERSION);
    let _ = out.write_u32::<BigEndian>(cache.len() as u32);
    for (name, e) in cache {
        let _ = out.write_u16::<BigEndian>(name.len() as u16); // validated names are <= 1024 bytes
        out.extend_from_slice(name.as_bytes());
        let _ = out.write_u64::<BigEndian>(e.size);
        let _ = out.write_i64::<BigEndian>(e.mtime_ns);
        let _ = out.write_u32::<BigEndian>(e.chunk_size);
        let _ = out.write_u32::<BigEndian>(e.hashes.len() as u32);
        for h in &e.hashes {
            out.extend_from_slice(h);
        }
    }
    let sum = chunks::sha1(&out);
    out.extend_from_slice(&sum);
    out
}

fn decode_cache(bytes: &[u8]) -> std::result::Result<Cache, String> {
    if bytes.len() < CACHE_MAGIC.len() + 8 + DIGEST_LEN {
        return Err("too short".into());
    }
    let (body, sum) = bytes.split_at(bytes.len() - DIGEST_LEN);
    if chunks::sha1(body) != sum {
        return Err("checksum mismatch".into());
    }
    let mut r = Cursor { buf: body };
    if r.take(CACHE_MAGIC.len())? != CACHE_MAGIC {
        return Err("not a p2pfs hash cache".into());
    }
    let version = r.u32()?;
    if version != CACHE_VERSION {
        return Err(format!("unknown version {version}"));
    }
    let count = r.u32()?;
    let mut cache = Cache::new();
    for _ in 0..count {
        let n = r.u16()? as usize;
        let name = std::str::from_utf8(r.take(n)?)
            .map_err(|_| "name is not UTF-8".to_string())?
            .to_owned();
        wire::validate_name(&name).map_err(|e| format!("{name:?}: {e}"))?;
        let size = r.u64()?;
        let mtime_ns = r.u64()? as i64;
        let chunk_size = r.u32()?;
        let hash_count = r.u32()?;
        let g = Geometry::with_hashes(size, chunk_size, hash_count as usize)
            .map_err(|e| format!("{name:?}: {e}"))?;
        let raw = r.take((g.count() as usize).saturating_mul(DIGEST_LEN))?;
        let hashes = raw
            .chunks_exact(DIGEST_LEN)
            .map(|c| {
                let mut d = [0u8; DIGEST_LEN];
                d.copy_from_slice(c);
                d
            })
            .collect();
        cache.insert(
            name,
            CacheEntry {
                size,
                mtime_ns,
                chunk_size,
                hashes,
            },
        );
    }
    if !r.buf.is_empty() {
        return Err(format!("{} trailing bytes", r.buf.len()));
    }
    Ok(cache)
}

/// A bounds-checked reader over the cache bytes.
struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        if self.buf.len() < n {
            return Err("truncated".into());
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u16(&mut self) -> std::result::Result<u16, String> {
        Ok(BigEndian::read_u16(self.take(2)?))
    }

    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(BigEndian::read_u32(self.take(4)?))
    }

    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(BigEndian::read_u64(self.take(8)?))
    }
}

/// Writes the cache atomically (temp file + rename); failures only warn.
fn store_cache(root: &Path, path: &Path, cache: &Cache) {
    let tmp = root.join(format!("{HASH_CACHE_NAME}.tmp-{}", std::process::id()));
    let write = || -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(&encode_cache(cache))?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        log::warn!(
            "cannot write hash cache {} ({e}); the next start will hash again",
            path.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use std::sync::Mutex;

    use crate::peer::testutil::TempDir;

    /// Writes `data` to `dir/rel` with an mtime an hour ago (outside the
    /// racy window, so it is cacheable).
    fn put(dir: &Path, rel: &str, data: &[u8]) -> PathBuf {
        let p = dir.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, data).unwrap();
        age(&p);
        p
    }

    fn age(p: &Path) {
        let f = File::options().write(true).open(p).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u32).wrapping_mul(2654435761).to_be_bytes()[0] ^ seed)
            .collect()
    }

    fn expected_hashes(data: &[u8], cs: usize) -> Vec<Digest> {
        data.chunks(cs).map(chunks::sha1).collect()
    }

    fn no_progress() -> impl Fn(u64, u64) + Sync {
        |_, _| {}
    }

    fn names(s: &Scan) -> Vec<&str> {
        s.files.iter().map(|f| f.name()).collect()
    }

    /// Issue 14: hashing showed bytes only; a large folder of small files
    /// wants files done too. The lock file of the sharing peer is private.
    #[test]
    fn hashing_reports_files_and_the_lock_file_is_private() {
        let t = TempDir::new("scan-files");
        put(&t.0, "a", &pattern(5000, 1));
        put(&t.0, "b/c", &pattern(100, 2));
        put(&t.0, "empty", b"");
        put(&t.0, LOCK_FILE_NAME, b"123 4567\n");
        let seen = Mutex::new(Vec::new());
        let record = |p: &HashProgress| seen.lock().unwrap().push(*p);
        let s = scan_dir_reporting(&t.0, &[], 1024, &record, None).unwrap();
        assert_eq!(names(&s), ["a", "b/c", "empty"]);
        assert!(s.skipped.is_empty(), "{:?}", s.skipped);
        let seen = seen.into_inner().unwrap();
        let last = *seen.last().unwrap();
        assert_eq!(
            last,
            HashProgress {
                bytes_done: 5100,
                bytes_total: 5100,
                files_done: 3,
                files_total: 3
            }
        );
        assert!(seen.windows(2).all(|w| w[0].files_done <= w[1].files_done));
        // From the cache the second time: every file is known at once.
        let seen = Mutex::new(Vec::new());
        let record = |p: &HashProgress| seen.lock().unwrap().push(*p);
        scan_dir_reporting(&t.0, &[], 1024, &record, None).unwrap();
        let last = *seen.into_inner().unwrap().last().unwrap();
        assert_eq!(
            (last.files_done, last.files_total, last.bytes_total),
            (3, 3, 0)
        );
    }

    #[test]
    fn scan_hashes_nested_folders() {
        let t = TempDir::new("nested");
        let a = pattern(5000, 1);
        let b = pattern(1024, 2);
        let c = pattern(3 * 1024 + 1, 3);
        put(&t.0, "a.bin", &a);
        put(&t.0, "sub/b.bin", &b);
        put(&t.0, "sub/deeper/c.bin", &c);
        put(&t.0, "empty", &[]);
        put(&t.0, "sub/x.part", b"half");
        let calls = AtomicU64::new(0);
        let last = Mutex::new((0, 0));
        let prog = |d: u64, tot: u64| {
            calls.fetch_add(1, Ordering::Relaxed);
            *last.lock().unwrap() = (d, tot);
        };
        let s = scan_dir(&t.0, &[], 1024, &prog).unwrap();
        assert_eq!(
            names(&s),
            ["a.bin", "empty", "sub/b.bin", "sub/deeper/c.bin"]
        );
        let total = (a.len() + b.len() + c.len()) as u64;
        assert!(calls.load(Ordering::Relaxed) >= 1);
        assert_eq!(*last.lock().unwrap(), (total, total));
        for (f, data) in s.files.iter().zip([&a[..], &[], &b, &c]) {
            assert_eq!(f.hashes(), &expected_hashes(data, 1024)[..], "{}", f.name());
            assert_eq!(f.geometry().length(), data.len() as u64);
            assert!(f.is_complete());
            assert_eq!(f.to_entry().have, Have::All);
            assert!(f.path().ends_with(f.name()));
            // The handle serves positional reads of any chunk.
            if let Some(last) = f.geometry().indices().last() {
                let mut buf = Vec::new();
                f.read_chunk(last, &mut buf).unwrap();
                let off = f.geometry().offset(last) as usize;
                assert_eq!(buf, data[off..]);
            }
        }
        assert!(
            s.skipped
                .iter()
                .any(|(p, why)| p.ends_with("sub/x.part") && why.contains(".part"))
        );
        // The cache was written but is never published.
        assert!(t.0.join(HASH_CACHE_NAME).exists());
        let s2 = scan_dir(&t.0, &[], 1024, &no_progress()).unwrap();
        assert!(!names(&s2).contains(&HASH_CACHE_NAME));
        assert!(
            s2.skipped
                .iter()
                .all(|(p, _)| !p.ends_with(HASH_CACHE_NAME))
        );
    }

    #[test]
    fn one_large_file_is_hashed_correctly_in_parallel() {
        let t = TempDir::new("large");
        let data = pattern(300 * 1024 + 77, 9);
        put(&t.0, "big", &data);
        let s = scan_dir(&t.0, &[], 1024, &no_progress()).unwrap();
        assert_eq!(s.files[0].hashes(), &expected_hashes(&data, 1024)[..]);
        assert_eq!(s.files[0].geometry().count(), 301);
    }

    #[test]
    fn second_scan_uses_the_cache() {
        let t = TempDir::new("cache");
        let old = pattern(4096, 1);
        let p = put(&t.0, "d/f", &old);
        let s1 = scan_dir(&t.0, &[], 1024, &no_progress()).unwrap();
        assert_eq!(s1.files[0].hashes(), &expected_hashes(&old, 1024)[..]);

        // Same size, same mtime, new content: the cache is believed.
        let mtime = fs::metadata(&p).unwrap().modified().unwrap();
        let new = pattern(4096, 2);
        fs::write(&p, &new).unwrap();
        File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let hashed = AtomicU64::new(0);
        let prog = |d: u64, _t: u64| {
            hashed.fetch_max(d, Ordering::Relaxed);
        };
        let s2 = scan_dir(&t.0, &[], 1024, &prog).unwrap();
        assert_eq!(s2.files[0].hashes(), &expected_hashes(&old, 1024)[..]);
        assert_eq!(hashed.load(Ordering::Relaxed), 0, "nothing re-hashed");

        // Another chunk size is another key: re-hashed.
        let s3 = scan_dir(&t.0, &[], 2048, &no_progress()).unwrap();
        assert_eq!(s3.files[0].hashes(), &expected_hashes(&new, 2048)[..]);

        // A changed mtime invalidates the entry.
        age(&p);
        let s4 = scan_dir(&t.0, &[], 1024, &no_progress()).unwrap();
        assert_eq!(s4.files[0].hashes(), &expected_hashes(&new, 1024)[..]);
    }

    #[test]
    fn recently_modified_files_are_not_cached() {
        let t = TempDir::new("racy");
        let p = t.0.join("fresh");
        fs::write(&p, pattern(2048, 1)).unwrap(); // mtime = now
        scan_dir(&t.0, &[], 1024, &no_progress()).unwrap();
        let (cache, corrupt) = load_cache(&t.0.join(HASH_CACHE_NAME));
        assert!(!corrupt);
        assert!(!cache.contains_key("fresh"));
    }

    #[test]
    fn corrupt_cache_is_ignored_and_rewritten() {
        let t = TempDir::new("corrupt");
        let data = pattern(3000, 5);
        put(&t.0, "f", &data);
        let cp = t.0.join(HASH_CACHE_NAME);
        fs::write(&cp, b"garbage that is long enough to be checked").unwrap();
        let s = scan_dir(&t.0, &[], 1024, &no_progress()).unwrap();
        assert_eq!(s.files[0].hashes(), &expected_hashes(&data, 1024)[..]);
        let (cache, corrupt) = load_cache(&cp);
        assert!(!corrupt);
        assert_eq!(cache["f"].hashes, expected_hashes(&data, 1024));

        // A flipped bit anywhere is caught by the checksum.
        let mut b = fs::read(&cp).unwrap();
        b[20] ^= 1;
        assert!(decode_cache(&b).is_err());
        // Every truncation is refused, never a panic.
        let good = fs::read(&cp).unwrap();
        for cut in 0..good.len() {
            assert!(decode_cache(&good[..cut]).is_err());
        }
    }

    #[test]
    fn cache_round_trips() {
        let mut c = Cache::new();
        c.insert(
            "a/b".into(),
            CacheEntry {
                size: 2049,
                mtime_ns: -5,
                chunk_size: 1024,
                hashes: vec![[1; 20], [2; 20], [3; 20]],
            },
        );
        c.insert(
            "empty".into(),
            CacheEntry {
                size: 0,
                mtime_ns: 1_700_000_000_123_456_789,
                chunk_size: 1 << 20,
                hashes: vec![],
            },
        );
        assert_eq!(decode_cache(&encode_cache(&c)).unwrap(), c);
    }

    #[test]
    fn only_selects_inside_and_skips_outside() {
        let t = TempDir::new("only");
        let outside = TempDir::new("only-outside");
        put(&t.0, "keep/a", &pattern(100, 1));
        put(&t.0, "keep/b", &pattern(200, 2));
        put(&t.0, "other", &pattern(300, 3));
        let out = put(&outside.0, "secret", b"secret");
        let only = vec![
            PathBuf::from("keep/a"),
            t.0.join("other"),        // absolute inside
            out.clone(),              // absolute outside
            PathBuf::from("../x"),    // relative outside
            PathBuf::from("missing"), // does not exist
        ];
        let s = scan_dir(&t.0, &only, 1024, &no_progress()).unwrap();
        assert_eq!(names(&s), ["keep/a", "other"]);
        let why = |p: &Path| {
            s.skipped
                .iter()
                .find(|(q, _)| q == p)
                .map(|(_, w)| w.clone())
                .unwrap_or_default()
        };
        assert!(why(&out).contains("outside"), "{:?}", s.skipped);
        assert!(!why(Path::new("../x")).is_empty(), "{:?}", s.skipped);
        assert!(why(Path::new("missing")).contains("resolve"));
        // A folder in `only` shares everything under it.
        let s = scan_dir(&t.0, &[PathBuf::from("keep")], 1024, &no_progress()).unwrap();
        assert_eq!(names(&s), ["keep/a", "keep/b"]);
        // The partial scans kept the cache entry of "other" and added "keep/b".
        let (cache, _) = load_cache(&t.0.join(HASH_CACHE_NAME));
        assert!(cache.contains_key("other") && cache.contains_key("keep/b"));
    }

    #[test]
    fn symlinks_and_special_files() {
        let t = TempDir::new("links");
        let outside = TempDir::new("links-outside");
        put(&t.0, "real", &pattern(1500, 1));
        let secret = put(&outside.0, "secret", b"secret");
        std::os::unix::fs::symlink(&secret, t.0.join("leak")).unwrap();
        std::os::unix::fs::symlink(t.0.join("real"), t.0.join("alias")).unwrap();
        std::os::unix::fs::symlink(&outside.0, t.0.join("leakdir")).unwrap();
        fs::create_dir(t.0.join("d")).unwrap();
        std::os::unix::fs::symlink(t.0.join("d"), t.0.join("d/loop")).unwrap();
        std::os::unix::fs::symlink(t.0.join("nowhere"), t.0.join("dangling")).unwrap();
        let bad = format!("bad{}name", '\u{7}');
        put(&t.0, &bad, b"x");
        let s = scan_dir(&t.0, &[], 1024, &no_progress()).unwrap();
        assert_eq!(names(&s), ["alias", "real"]);
        assert_eq!(s.files[0].hashes(), s.files[1].hashes());
        let skipped: Vec<String> = s
            .skipped
            .iter()
            .map(|(p, w)| format!("{}: {w}", p.display()))
            .collect();
        for what in [
            "leak:",
            "leakdir:",
            "loop:",
            "dangling:",
            "control character",
        ] {
            assert!(
                skipped.iter().any(|s| s.contains(what)),
                "{what}: {skipped:?}"
            );
        }
        // The leaking symlink is refused through `only` too.
        let s = scan_dir(&t.0, &[PathBuf::from("leak")], 1024, &no_progress()).unwrap();
        assert!(s.files.is_empty());
        assert!(s.skipped[0].1.contains("outside"));
    }

    #[test]
    fn geometry_limits_and_bad_arguments() {
        let t = TempDir::new("geom");
        // 1 KiB chunks allow 512 MiB; a sparse 513 MiB file needs too many.
        let f = File::create(t.0.join("huge")).unwrap();
        f.set_len(513 << 20).unwrap();
        drop(f);
        age(&t.0.join("huge"));
        put(&t.0, "small", b"ok");
        let s = scan_dir(&t.0, &[], 1024, &no_progress()).unwrap();
        assert_eq!(names(&s), ["small"]);
        assert!(s.skipped.iter().any(|(_, w)| w.contains("chunks")));
        assert!(matches!(
            scan_dir(&t.0, &[], 10, &no_progress()),
            Err(PeerError::Invalid(_))
        ));
        assert!(scan_dir(&t.0.join("nope"), &[], 1024, &no_progress()).is_err());
        assert!(scan_dir(&t.0.join("small"), &[], 1024, &no_progress()).is_err());
    }

    #[test]
    fn unwritable_cache_only_warns() {
        let t = TempDir::new("nocache");
        let data = pattern(2000, 6);
        put(&t.0, "f", &data);
        // A folder where the cache file should be: unreadable as a cache and
        // impossible to rename over (works even when tests run as root).
        fs::create_dir(t.0.join(HASH_CACHE_NAME)).unwrap();
        for _ in 0..2 {
            let s = scan_dir(&t.0, &[], 1024, &no_progress()).unwrap();
            assert_eq!(names(&s), ["f"]);
            assert_eq!(s.files[0].hashes(), &expected_hashes(&data, 1024)[..]);
        }
        assert!(t.0.join(HASH_CACHE_NAME).is_dir());
        let leftovers = fs::read_dir(&t.0)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains(".tmp-")
            })
            .count();
        assert_eq!(leftovers, 0);
    }

    #[test]
    fn only_naming_the_folder_itself_shares_everything() {
        let t = TempDir::new("onlyroot");
        put(&t.0, "a", b"1");
        put(&t.0, "s/b", b"2");
        let holder = TempDir::new("onlyroot-link"); // cleaned up even on panic
        let link = holder.0.join("root");
        std::os::unix::fs::symlink(&t.0, &link).unwrap();
        for only in [PathBuf::from("."), t.0.clone(), link.clone()] {
            let s = scan_dir(&t.0, std::slice::from_ref(&only), 1024, &no_progress()).unwrap();
            assert_eq!(names(&s), ["a", "s/b"], "{}", only.display());
        }
    }

    #[test]
    fn read_only_folder_still_scans() {
        let t = TempDir::new("ro");
        let data = pattern(2000, 4);
        put(&t.0, "f", &data);
        let mut perm = fs::metadata(&t.0).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o555);
        fs::set_permissions(&t.0, perm.clone()).unwrap();
        let s = scan_dir(&t.0, &[], 1024, &no_progress());
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        fs::set_permissions(&t.0, perm).unwrap();
        let s = s.unwrap();
        assert_eq!(s.files[0].hashes(), &expected_hashes(&data, 1024)[..]);
        // (As root the folder is writable anyway; then the cache exists.)
        let leftovers: Vec<_> = fs::read_dir(&t.0)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn partial_file_bitmap_and_entry() {
        let t = TempDir::new("partial");
        let p = t.0.join("x.part");
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        file.set_len(2500).unwrap();
        let g = Geometry::new(2500, 1024).unwrap();
        let f = SharedFile::partial("x".into(), p, file, g, vec![[0; 20]; 3], Bitmap::new(3));
        let i1 = g.index(1).unwrap();
        assert!(!f.has(i1));
        assert!(f.mark_have(i1));
        assert!(!f.mark_have(i1));
        assert!(f.has(i1));
        assert_eq!(f.have_count(), 1);
        assert!(!f.is_complete());
        assert_eq!(f.to_entry().have, Have::Some(vec![0x40]));
        f.file().write_all_at(b"hello", 1024).unwrap();
        let mut buf = Vec::new();
        f.read_chunk(i1, &mut buf).unwrap();
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(buf.len(), 1024);
        for i in g.indices() {
            f.mark_have(i);
        }
        assert!(f.is_complete());
        assert_eq!(f.to_entry().have, Have::All);
        assert_eq!(f.have(), Bitmap::full(3));
    }

    #[test]
    fn index_insert_get_remove_sorted() {
        let t = TempDir::new("index");
        let idx = ShareIndex::new();
        assert!(idx.is_empty());
        let mk = |name: &str| {
            let p = put(&t.0, name, b"abc");
            Arc::new(SharedFile::complete(
                name.into(),
                p.clone(),
                File::open(&p).unwrap(),
                Geometry::new(3, 1024).unwrap(),
                vec![chunks::sha1(b"abc")],
            ))
        };
        assert!(idx.insert(mk("b")).is_none());
        assert!(idx.insert(mk("a")).is_none());
        assert!(idx.insert(mk("c/d")).is_none());
        assert!(idx.insert(mk("a")).is_some());
        assert_eq!(
            idx.files()
                .iter()
                .map(|f| f.name().to_owned())
                .collect::<Vec<_>>(),
            ["a", "b", "c/d"]
        );
        assert_eq!(idx.get("c/d").unwrap().name(), "c/d");
        assert!(idx.get("../a").is_none());
        assert!(idx.remove("b").is_some());
        assert!(idx.remove("b").is_none());
        assert_eq!(idx.len(), 2);
    }
}
