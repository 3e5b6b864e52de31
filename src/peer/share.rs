//! The share index: which files this peer offers, their chunk hashes and
//! have-bitmaps, and hashing a folder at start (`peer share`).
//!
//! Owns: [`SharedFile`] (one offered file: open handle, geometry, hashes,
//! which chunks are verified on disk, and for a scanned file the check that
//! a chunk still matches its hash before it is uploaded), [`ShareIndex`]
//! (name -> file, the only way the chunk server finds a file: names from
//! the wire are looked up here, never joined onto a path), [`scan_dir`]
//! (walk + parallel SHA-1; in two steps, `list_files` (stat only) and
//! `hash_found`, for the folder watcher, `peer::watch`), the index's
//! generation (moved on by every change; the tracker sessions follow it),
//! `open_regular` (how a file in a shared folder
//! is opened: no symlink followed, no FIFO waited on) and the hash cache
//! file. Calls `wire` (names, FileEntry), `chunks` (geometry, bitmaps,
//! sha1), the libc crate for open flags and, to leave a download's own
//! files out of a scan, [`partfile::is_artifact`] and
//! [`partfile::WORK_DIR`] (the download's part-file module, which depends
//! on nothing of `share`, so there is no import cycle).
//!
//! Locks: the index's RwLock, each file's have-bitmap Mutex and its upload
//! check Mutex guard only in-memory data; no I/O (and no hashing) happens
//! under any of them.
//!
//! # Hash cache (`.p2pfs-hashes` in the share folder)
//!
//! Restarting `share` on an unchanged folder must not re-hash it. A file's
//! digests are reused when its relative name, size, mtime and ctime
//! (nanoseconds), device and inode number, and the chunk size all match the
//! cached entry. The ctime is what catches content rewritten with the old
//! size and mtime put back (`cp -p`, `tar`, `rsync -t`, `touch -r`): no
//! program can set it, and every write or metadata change moves it on. The
//! device and inode catch a file replaced by another one. Files modified
//! less than [`RACY_WINDOW`] before the scan started are not cached: a
//! write in the same timestamp tick as the hashing could otherwise leave a
//! stale entry with a matching mtime ("racy git" problem).
//!
//! Layout, all integers big-endian:
//!
//! ```text
//! magic    8 bytes  "P2PFSHC\n"
//! version  u32      2
//! count    u32      number of entries
//! entry * count:
//!   name_len u16, name (UTF-8, passes wire::validate_name)
//!   size u64, mtime_ns i64, ctime_ns i64, dev u64, ino u64, chunk_size u32,
//!   hash_count u32 (must equal the chunk count of size/chunk_size),
//!   hash_count * 20 bytes of SHA-1
//! checksum 20 bytes SHA-1 of everything before it
//! ```
//!
//! A cache that cannot be read or parsed is ignored with a warning and
//! rewritten; so is anything at the cache name that is not a regular file
//! (it is opened like a shared file, never through a link or waiting on a
//! FIFO, and read no further than 1 GiB). It is written to
//! `.p2pfs-hashes.tmp-<pid>` (removed first, then created new: never
//! written through a link planted there) and renamed over the old one, so
//! a crash never leaves a half-written cache. If the folder
//! is read-only the cache is not written (warning). The scan never
//! publishes the cache file or its temporary files.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use byteorder::{BigEndian, ByteOrder, WriteBytesExt};

use super::download::partfile;
use super::{PeerError, Result};
use crate::chunks::{self, Bitmap, ChunkIndex, ContentId, DIGEST_LEN, Digest, Geometry};
use crate::wire::{self, FileEntry, Have};

/// Name of the hash cache file in the root of the share folder.
pub const HASH_CACHE_NAME: &str = ".p2pfs-hashes";
/// The lock file `peer share` holds in the folder it shares (see
/// `ui::share`); never shared.
pub const LOCK_FILE_NAME: &str = ".p2pfs-lock";
/// Files modified this recently before a scan are hashed but not cached.
pub const RACY_WINDOW: Duration = Duration::from_secs(2);

const CACHE_MAGIC: &[u8; 8] = b"P2PFSHC\n";
/// 2: ctime, device and inode added to the key (a version 1 cache is
/// ignored and rewritten).
const CACHE_VERSION: u32 = 2;
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
    /// What the name stands for (length, chunk size, hashes): how a
    /// tracker session tells new content under a known name from the
    /// content it registered.
    content: ContentId,
    /// Chunks verified on disk. A Mutex rather than atomics: updates are
    /// rare (once per chunk) and a consistent snapshot is needed for
    /// Register.
    have: Mutex<Bitmap>,
    /// For a file found by the scan: what [`SharedFile::read_for_upload`]
    /// checks. None for a download's file, which this peer writes itself
    /// and verifies chunk by chunk before marking it held.
    upload_check: Option<Mutex<UploadCheck>>,
    /// For a file from the scan: its metadata when it was opened to be
    /// hashed (or found in the cache), which the folder watcher compares
    /// with what it sees later.
    hashed_stamp: Option<Stamp>,
}

/// Which chunks of a scanned file were seen to match their hash while the
/// file's [`Stamp`] stayed as recorded. Any write or metadata change moves
/// the ctime on, so a changed stamp clears `verified`.
#[derive(Debug)]
struct UploadCheck {
    stamp: Option<Stamp>,
    verified: Bitmap,
}

/// Why [`SharedFile::read_for_upload`] gave no chunk.
#[derive(Debug)]
pub enum UploadError {
    /// The chunk could not be read.
    Io(io::Error),
    /// The bytes on disk no longer match the hash this peer announced: the
    /// file changed after it was hashed.
    Changed,
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
        let content = ContentId::compute(geometry.length(), geometry.chunk_size(), &hashes);
        SharedFile {
            name,
            path,
            file,
            geometry,
            content,
            hashes,
            have: Mutex::new(have),
            upload_check: None,
            hashed_stamp: None,
        }
    }

    /// A complete file this peer downloaded and verified chunk by chunk,
    /// now in its final place: from here on it is the user's file, which
    /// may be edited like any file of a shared folder, so it is served as
    /// a scanned file is (each chunk checked again after its metadata
    /// moved, `read_for_upload`), with every chunk verified at its
    /// metadata now. The folder watcher compares later looks with that
    /// metadata too, rather than with whatever it first sees.
    pub fn finished(
        name: String,
        path: PathBuf,
        file: File,
        geometry: Geometry,
        hashes: Vec<Digest>,
    ) -> SharedFile {
        let stamp = file.metadata().ok().and_then(|m| Stamp::of(&m));
        SharedFile::scanned(name, path, file, geometry, hashes, stamp, true)
    }

    /// A complete file from the scan, whose chunks are checked against
    /// their hashes before they are sent (see `read_for_upload`). `stamp` is
    /// the file's metadata when it was opened; `hashed_now` says its hashes
    /// were computed from this handle rather than taken from the cache, so
    /// every chunk starts verified.
    fn scanned(
        name: String,
        path: PathBuf,
        file: File,
        geometry: Geometry,
        hashes: Vec<Digest>,
        stamp: Option<Stamp>,
        hashed_now: bool,
    ) -> SharedFile {
        let count = geometry.count();
        let mut f = SharedFile::complete(name, path, file, geometry, hashes);
        let verified = if hashed_now {
            Bitmap::full(count)
        } else {
            Bitmap::new(count)
        };
        f.upload_check = Some(Mutex::new(UploadCheck { stamp, verified }));
        f.hashed_stamp = stamp;
        f
    }

    /// For a file from the scan, its metadata when it was hashed.
    pub(super) fn hashed_stamp(&self) -> Option<Stamp> {
        self.hashed_stamp
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

    /// The content id (protocol.md §4.1) of what this file is.
    pub fn content_id(&self) -> ContentId {
        self.content
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

    /// Reads chunk `i` into `out` (exactly the chunk's length) to send it,
    /// and for a file from the scan makes sure the bytes are still the ones
    /// this peer announced: after every read the file's metadata is looked
    /// at (one `fstat`), and a chunk is hashed when it has not been seen to
    /// match since the file was hashed or last changed. So a chunk costs a
    /// SHA-1 once per change of the file, not once per upload.
    /// `Err(Changed)`: do not send it; the file no longer matches its hashes.
    pub fn read_for_upload(&self, i: ChunkIndex, out: &mut [u8]) -> Result<(), UploadError> {
        self.file
            .read_exact_at(out, self.geometry.offset(i))
            .map_err(UploadError::Io)?;
        let Some(check) = &self.upload_check else {
            return Ok(());
        };
        // After the read: a write that the read may have seen has moved the
        // ctime on by now.
        let now = self.file.metadata().ok().and_then(|m| Stamp::of(&m));
        let verified = {
            let mut c = crate::sync::lock(check);
            if c.stamp != now || now.is_none() {
                c.stamp = now;
                c.verified = Bitmap::new(self.geometry.count());
            }
            c.verified.get(i.get())
        };
        if verified {
            return Ok(());
        }
        // Hashed outside the lock: other uploads of this file go on.
        if chunks::sha1(out) != self.hashes[i.get() as usize] {
            return Err(UploadError::Changed);
        }
        let mut c = crate::sync::lock(check);
        if c.stamp == now {
            c.verified.set(i.get());
        }
        Ok(())
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
/// the tracker sessions, downloads and the folder watcher.
///
/// The index is what this peer holds; every tracker session makes its
/// tracker's view follow it (registering what was added or replaced,
/// withdrawing what was removed or replaced), woken by
/// [`ShareIndex::generation`]. So whoever changes the index (a download,
/// the folder watcher, the chunk server finding a file changed) tells no
/// session anything, and a session that reconnects simply registers the
/// index as it is then.
#[derive(Debug, Default)]
pub struct ShareIndex {
    files: RwLock<HashMap<String, Arc<SharedFile>>>,
    /// Bumped on every change of `files` (after it is made).
    generation: AtomicU64,
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
        let old = self.write().insert(name, f);
        self.changed();
        old
    }

    pub fn get(&self, name: &str) -> Option<Arc<SharedFile>> {
        self.read().get(name).cloned()
    }

    pub fn remove(&self, name: &str) -> Option<Arc<SharedFile>> {
        let old = self.write().remove(name);
        self.changed();
        old
    }

    /// Removes `f` if it is still the entry under its name (not a newer
    /// one); true if it was removed.
    pub fn remove_exact(&self, f: &Arc<SharedFile>) -> bool {
        let mut files = self.write();
        if !files.get(f.name()).is_some_and(|g| Arc::ptr_eq(g, f)) {
            return false;
        }
        files.remove(f.name());
        drop(files);
        self.changed();
        true
    }

    /// A number that changes whenever the index does: a tracker session
    /// compares it with the one it last brought its tracker in line with.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Stops sharing `f` because its bytes no longer match its hashes
    /// ([`UploadError::Changed`]); true if this call removed it (and not a
    /// newer entry under the same name). The peer serves it no more, and
    /// every tracker session withdraws it at its tracker. A folder watcher
    /// (`peer::watch`) hashes it again once it is stable and shares its new
    /// content; without one, that takes a restart of `share`.
    pub fn withdraw_changed(&self, f: &Arc<SharedFile>) -> bool {
        if !self.remove_exact(f) {
            return false;
        }
        log::warn!(
            "{} changed on disk after it was hashed: its bytes no longer match the hashes this \
             peer announced, so its old content is no longer shared",
            f.path().display()
        );
        true
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

/// Paths not shared and why (one line each, for the user).
pub type Skipped = Vec<(PathBuf, String)>;

/// Result of scanning a folder for `peer share`.
#[derive(Debug)]
pub struct Scan {
    /// Every file that can be shared, sorted by name.
    pub files: Vec<SharedFile>,
    /// Paths not shared and why (one line each, for the user).
    pub skipped: Vec<(PathBuf, String)>,
}

/// A file found by the walk, before it is opened.
pub(super) struct Candidate {
    pub(super) name: String,
    /// Where it was found (may be a symlink that stays inside the folder);
    /// shown to the user.
    path: PathBuf,
    /// What to open: `path` itself, or a symlink's resolved target. Opened
    /// without following a link ([`open_regular`]).
    real: PathBuf,
    /// What the walk saw of it (the target's, for a symlink): how the
    /// folder watcher tells a file still being written from a stable one
    /// without opening it.
    pub(super) stamp: Option<Stamp>,
}

/// An opened file waiting for its hashes.
struct Opened {
    name: String,
    path: PathBuf,
    file: File,
    geometry: Geometry,
    /// The cache key; None if the timestamps are out of range (not cached).
    stamp: Option<Stamp>,
    /// From the cache, or filled in by hashing.
    hashes: Option<Vec<Digest>>,
    /// The hashes came from the cache (not computed from this handle).
    cached: bool,
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
/// the hash cache, and anything that cannot be read. What is opened is
/// judged on the open handle: a file changed after the walk into a symlink,
/// FIFO or device, or reached through a folder that became a symlink out of
/// `dir`, is skipped (see `open_candidate`).
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
    Geometry::new(0, chunk_size).map_err(|e| PeerError::Invalid(e.to_string()))?;
    let root = share_root(dir)?;
    let (found, mut skipped) = list_files(&root, dir, only)?;
    let mode = if only.is_empty() {
        Mode::Whole
    } else {
        Mode::Part
    };
    let files = hash_found(
        &root,
        dir,
        found,
        chunk_size,
        mode,
        progress,
        cancel,
        &mut skipped,
    )?;
    Ok(Scan { files, skipped })
}

/// Which files a scan stands for, for the hash cache and the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// The whole folder: the cache keeps only what was found.
    Whole,
    /// Some files of it: the cache keeps its other entries.
    Part,
    /// Some files, hashed by the folder watcher while the peer runs: as
    /// `Part`, and a file whose metadata moved while it was hashed is
    /// skipped (it is being written; the watcher tries again once it is
    /// stable) rather than shared with hashes that may not match.
    Live,
}

/// The files under `root` (or only the paths in `only`), found with one
/// `lstat` each (and a `stat` of a symlink's target) and never opened,
/// with what was skipped and why.
pub(super) fn list_files(
    root: &Path,
    dir: &Path,
    only: &[PathBuf],
) -> Result<(BTreeMap<String, Candidate>, Skipped)> {
    let mut skipped = Vec::new();
    let mut found = BTreeMap::new();
    if only.is_empty() {
        walk(root, root, &mut found, &mut skipped)?;
    } else {
        for p in only {
            select(root, dir, p, &mut found, &mut skipped)?;
        }
    }
    Ok((found, skipped))
}

/// Opens, hashes (reusing the hash cache) and turns into [`SharedFile`]s
/// the files `found`, and updates the cache. Nothing is locked meanwhile.
#[allow(clippy::too_many_arguments)]
pub(super) fn hash_found(
    root: &Path,
    dir: &Path,
    found: BTreeMap<String, Candidate>,
    chunk_size: u32,
    mode: Mode,
    progress: &(dyn Fn(&HashProgress) + Sync),
    cancel: Option<&AtomicBool>,
    skipped: &mut Vec<(PathBuf, String)>,
) -> Result<Vec<SharedFile>> {
    let started = SystemTime::now();
    let cache_path = root.join(HASH_CACHE_NAME);
    let (old_cache, cache_corrupt) = load_cache(&cache_path);
    // A live file is new or has just changed: hashed from the handle it is
    // served from, never taken from the cache (which would also leave each
    // chunk to be checked again at its first upload).
    let lookup = if mode == Mode::Live {
        &Cache::new()
    } else {
        &old_cache
    };
    let mut opened = open_found(root, dir, found, chunk_size, lookup, skipped);

    let mut failed = hash_missing(&mut opened, progress, cancel)?;
    if cancel.is_some_and(|c| c.load(Ordering::SeqCst)) {
        return Err(PeerError::Interrupted("hashing interrupted".into()));
    }
    if mode == Mode::Live {
        for (o, err) in opened.iter().zip(failed.iter_mut()) {
            let now = o.file.metadata().ok().and_then(|m| Stamp::of(&m));
            if err.is_none() && (now != o.stamp || now.is_none()) {
                *err = Some("changed while it was being hashed".into());
            }
        }
    }

    let mut new_cache = if mode == Mode::Whole {
        BTreeMap::new()
    } else {
        old_cache.clone() // a partial scan keeps the other entries
    };
    let racy_after = racy_after(started);
    let files = collect_scanned(
        opened,
        failed,
        chunk_size,
        racy_after,
        &mut new_cache,
        skipped,
    );
    save_cache_if_changed(root, &cache_path, &old_cache, cache_corrupt, &new_cache);
    Ok(files)
}

/// The share folder's canonical path: every file is checked against it to
/// stay inside the folder, so symlinks in `dir` itself must be resolved
/// first. Fails if it is missing or not a folder.
pub(super) fn share_root(dir: &Path) -> Result<PathBuf> {
    let root = fs::canonicalize(dir).map_err(|e| PeerError::io("open share folder", dir, e))?;
    let meta = fs::metadata(&root).map_err(|e| PeerError::io("open share folder", dir, e))?;
    if !meta.is_dir() {
        return Err(PeerError::Invalid(format!(
            "{} is not a folder",
            dir.display()
        )));
    }
    Ok(root)
}

/// Opens each found file and takes its geometry, reusing cached hashes
/// where the file's stamp and the chunk size still match. Files are opened
/// once here and hashed and served from that same handle, so what is
/// hashed is what is served. A file that cannot be opened is skipped, not
/// fatal: one unreadable file must not stop the whole share.
fn open_found(
    root: &Path,
    dir: &Path,
    found: BTreeMap<String, Candidate>,
    chunk_size: u32,
    old_cache: &Cache,
    skipped: &mut Vec<(PathBuf, String)>,
) -> Vec<Opened> {
    let mut opened = Vec::with_capacity(found.len());
    for (name, c) in found {
        let (file, meta) = match open_candidate(root, &c.real) {
            Ok(x) => x,
            Err(why) => {
                skipped.push((c.path, why));
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
        let stamp = Stamp::of(&meta);
        let hashes = old_cache.get(&name).and_then(|e| {
            (Some(e.stamp) == stamp
                && e.chunk_size == chunk_size
                && e.hashes.len() == geometry.count() as usize)
                .then(|| e.hashes.clone())
        });
        opened.push(Opened {
            name,
            path: dir.join(c.name),
            file,
            geometry,
            stamp,
            cached: hashes.is_some(),
            hashes,
        });
    }
    opened
}

/// Files modified less than [`RACY_WINDOW`] before the scan started are not
/// cached (nanoseconds since the epoch; `i64::MIN` caches nothing): a write
/// within the file system's timestamp granularity could leave the stamp
/// unchanged while the content changes, and the cache would then vouch for
/// stale hashes.
fn racy_after(started: SystemTime) -> i64 {
    started
        .checked_sub(RACY_WINDOW)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_nanos()).ok())
        .unwrap_or(i64::MIN)
}

/// Turns hashed files into [`SharedFile`]s and records their hashes in
/// `new_cache`. A file that failed to hash is skipped and dropped from the
/// cache, so its stale entry cannot be reused next time; a racily recent
/// one (see [`racy_after`]) is shared but not cached.
fn collect_scanned(
    opened: Vec<Opened>,
    failed: Vec<Option<String>>,
    chunk_size: u32,
    racy_after: i64,
    new_cache: &mut Cache,
    skipped: &mut Vec<(PathBuf, String)>,
) -> Vec<SharedFile> {
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
        match o.stamp {
            Some(stamp) if stamp.mtime_ns < racy_after => {
                new_cache.insert(
                    o.name.clone(),
                    CacheEntry {
                        stamp,
                        chunk_size,
                        hashes: hashes.clone(),
                    },
                );
            }
            _ => {
                new_cache.remove(&o.name);
            }
        }
        files.push(SharedFile::scanned(
            o.name, o.path, o.file, o.geometry, hashes, o.stamp, !o.cached,
        ));
    }
    files
}

/// Writes the cache only when it changed (or the old one was unusable):
/// an unchanged share leaves the folder untouched, and a folder with
/// nothing worth caching and no cache yet gets no cache file at all.
fn save_cache_if_changed(
    root: &Path,
    cache_path: &Path,
    old_cache: &Cache,
    cache_corrupt: bool,
    new_cache: &Cache,
) {
    let existed = cache_corrupt || !old_cache.is_empty();
    if cache_corrupt || new_cache != old_cache {
        if new_cache.is_empty() && !existed {
            // Nothing worth caching and no cache yet: leave the folder alone.
        } else {
            store_cache(root, cache_path, new_cache);
        }
    }
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
        // A download folder's unfinished downloads: private, not reported.
        if path.file_name().is_some_and(|n| n == partfile::WORK_DIR) {
            return None;
        }
        return Some(path);
    }
    let mut real = path.clone();
    let mut stamp = Stamp::of(&meta);
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
            Ok(m) if m.is_file() => {
                real = target;
                stamp = Stamp::of(&m);
            }
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
    if is_own_file(&name) {
        // Our own cache (or its temporary file) and the lock of the peer
        // sharing this folder: silently private.
        return None;
    }
    // A link is shared under its own name, but what it leads to must not be
    // one of those either.
    if real != path
        && let Some(why) = private_target(root, &real)
    {
        skipped.push((path, why));
        return None;
    }
    found.insert(
        name.clone(),
        Candidate {
            name,
            path,
            real,
            stamp,
        },
    );
    None
}

/// Opens `path` for reading the way p2pfs opens every file it reads out of
/// a shared folder: never through a symlink at the last component
/// (`O_NOFOLLOW`), never waiting on a FIFO or device (`O_NONBLOCK`; it has
/// no effect on reads of a regular file), and then only if what was opened
/// is a regular file (checked on the open handle, not on the path, so a
/// swap between a check and the open cannot slip through).
pub(crate) fn open_regular(path: &Path) -> io::Result<(File, Metadata)> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                io::Error::new(e.kind(), "is a symbolic link (not followed)")
            } else {
                e
            }
        })?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok((file, meta))
}

/// Opens a file found by the walk ([`open_regular`]) and checks that the
/// opened file really is inside `root`: a folder on the way swapped for a
/// symlink after the walk would otherwise lead outside. Linux says where an
/// open file is through `/proc/self/fd`; without `/proc` only the last
/// component is protected. Err is the reason to skip it.
fn open_candidate(root: &Path, real: &Path) -> std::result::Result<(File, Metadata), String> {
    let (file, meta) = open_regular(real).map_err(|e| match e.kind() {
        io::ErrorKind::InvalidInput => e.to_string(),
        _ => format!("cannot open: {e}"),
    })?;
    if let Ok(at) = fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())) {
        if !at.starts_with(root) {
            return Err(format!(
                "opened {} instead, outside the shared folder (changed during the scan)",
                at.display()
            ));
        }
        if let Some(why) = private_target(root, &at) {
            return Err(format!("opened {} instead: {why}", at.display()));
        }
    }
    Ok((file, meta))
}

/// The hash cache (or its temporary file) and the lock file, by their name
/// relative to the share root.
fn is_own_file(name: &str) -> bool {
    name.starts_with(HASH_CACHE_NAME) || name == LOCK_FILE_NAME
}

/// Why `target` (an absolute path inside `root`: a link's target, or what
/// was actually opened) must not be shared, if it is one of p2pfs's own
/// files: an unfinished download's, the hash cache, the lock.
fn private_target(root: &Path, target: &Path) -> Option<String> {
    let rel = target.strip_prefix(root).ok()?;
    let name = rel.to_str()?;
    if partfile::is_artifact(name) {
        Some("leads to an unfinished download (.part)".into())
    } else if is_own_file(name) {
        Some("leads to p2pfs's own hash cache or lock file".into())
    } else {
        None
    }
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

/// What says a file on disk is still the one that was hashed: the hash
/// cache's key (with the chunk size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    dev: u64,
    ino: u64,
}

impl Stamp {
    /// None if a timestamp does not fit in i64 nanoseconds.
    fn of(m: &Metadata) -> Option<Stamp> {
        let ns = |s: i64, n: i64| s.checked_mul(1_000_000_000)?.checked_add(n);
        Some(Stamp {
            size: m.len(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec())?,
            ctime_ns: ns(m.ctime(), m.ctime_nsec())?,
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

// ---- Parallel hashing -----------------------------------------------------

/// Hashes every chunk of every file in `opened` without cached hashes,
/// on all cores. Returns, per file, `Some(reason)` if it could not be read.
fn hash_missing(
    opened: &mut [Opened],
    progress: &(dyn Fn(&HashProgress) + Sync),
    cancel: Option<&AtomicBool>,
) -> Result<Vec<Option<String>>> {
    let (jobs, total) = hash_jobs(opened)?;
    let files_total = opened.len() as u64;
    if jobs.is_empty() {
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
        return Ok(vec![None; opened.len()]);
    }
    let ctx = HashCtx::new(opened, &jobs, total, progress, cancel);
    let results = run_hashers(&ctx)?;
    let hashed = ctx.done.load(Ordering::Relaxed);
    drop(ctx);
    let errors = merge_hashes(opened, results);
    progress(&HashProgress {
        bytes_done: hashed,
        bytes_total: total,
        files_done: files_total,
        files_total,
    });
    Ok(errors)
}

/// The work list, (file slot, chunk) for every chunk still to hash, and
/// the bytes to hash in all. One flat list of chunks rather than one job
/// per file, so that one large file is spread over every core. Small: 8
/// bytes per chunk (4 MiB for a 512 GiB file at 1 MiB chunks).
fn hash_jobs(opened: &[Opened]) -> Result<(Vec<(u32, u32)>, u64)> {
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
    Ok((jobs, total))
}

/// Runs [`HashCtx::work`] on up to one thread per core (never more threads
/// than chunks), and returns what each thread hashed.
fn run_hashers(ctx: &HashCtx<'_>) -> Result<Vec<HashResult>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(ctx.jobs.len());
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        for t in 1..threads {
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
    })
}

/// Merges the threads' results: digests into per-file vectors, first error
/// per file wins. A file gets its hashes only if every one of its chunks
/// was hashed (a read error or a cancel leaves gaps that must not pass for
/// digests); otherwise it gets a reason. Returns, per file, that reason.
fn merge_hashes(opened: &mut [Opened], results: Vec<HashResult>) -> Vec<Option<String>> {
    let mut errors: Vec<Option<String>> = vec![None; opened.len()];
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
    errors
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

impl<'a> HashCtx<'a> {
    /// The shared state for hashing `jobs` of `files`. Files with nothing
    /// to hash (cached, or empty) count as done from the start, so the
    /// file count in the progress display reaches its total.
    fn new(
        files: &'a [Opened],
        jobs: &'a [(u32, u32)],
        total: u64,
        progress: &'a (dyn Fn(&HashProgress) + Sync),
        cancel: Option<&'a AtomicBool>,
    ) -> HashCtx<'a> {
        let files_total = files.len() as u64;
        let to_hash = files
            .iter()
            .filter(|o| o.hashes.is_none() && o.geometry.count() > 0)
            .count() as u64;
        HashCtx {
            files,
            jobs,
            next: AtomicUsize::new(0),
            failed: (0..files.len()).map(|_| AtomicBool::new(false)).collect(),
            remaining: files
                .iter()
                .map(|o| {
                    AtomicU32::new(if o.hashes.is_none() {
                        o.geometry.count()
                    } else {
                        0
                    })
                })
                .collect(),
            files_done: AtomicU64::new(files_total - to_hash),
            files_total,
            done: AtomicU64::new(0),
            total,
            begin: Instant::now(),
            last_report_ms: AtomicU64::new(0),
            progress,
            cancel,
        }
    }
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
    stamp: Stamp,
    chunk_size: u32,
    hashes: Vec<Digest>,
}

type Cache = BTreeMap<String, CacheEntry>;

/// Reads the cache; returns (entries, true if a cache existed but was
/// unusable). Never fails: a bad cache only costs re-hashing. Opened like a
/// shared file (`open_regular`: a FIFO, device or symlink there is refused,
/// not waited on or followed) and read no further than
/// [`MAX_CACHE_BYTES`], whatever its metadata claims.
fn load_cache(path: &Path) -> (Cache, bool) {
    let (file, meta) = match open_regular(path) {
        Ok(x) => x,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return (Cache::new(), false),
        Err(e) => {
            log::warn!(
                "ignoring hash cache {}: {e}; it will be rewritten",
                path.display()
            );
            return (Cache::new(), true);
        }
    };
    let too_large = || {
        log::warn!(
            "ignoring hash cache {}: more than {MAX_CACHE_BYTES} bytes is implausibly large",
            path.display()
        );
        (Cache::new(), true)
    };
    if meta.len() > MAX_CACHE_BYTES {
        return too_large();
    }
    let mut bytes = Vec::new();
    let read = (&file).take(MAX_CACHE_BYTES + 1).read_to_end(&mut bytes);
    if let Err(e) = read {
        log::warn!("ignoring unreadable hash cache {}: {e}", path.display());
        return (Cache::new(), true);
    }
    if bytes.len() as u64 > MAX_CACHE_BYTES {
        return too_large(); // it grew while being read
    }
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
        let _ = out.write_u64::<BigEndian>(e.stamp.size);
        let _ = out.write_i64::<BigEndian>(e.stamp.mtime_ns);
        let _ = out.write_i64::<BigEndian>(e.stamp.ctime_ns);
        let _ = out.write_u64::<BigEndian>(e.stamp.dev);
        let _ = out.write_u64::<BigEndian>(e.stamp.ino);
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
        let stamp = Stamp {
            size: r.u64()?,
            mtime_ns: r.u64()? as i64,
            ctime_ns: r.u64()? as i64,
            dev: r.u64()?,
            ino: r.u64()?,
        };
        let size = stamp.size;
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
                stamp,
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
        // Never through a link planted at the temporary name: remove
        // whatever is there, then create a new file (O_EXCL: fails rather
        // than follow a link that reappears in between).
        let _ = fs::remove_file(&tmp);
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
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

        // Unchanged: the cache is used, nothing is read.
        let hashed = AtomicU64::new(0);
        let prog = |d: u64, _t: u64| {
            hashed.fetch_max(d, Ordering::Relaxed);
        };
        let s2 = scan_dir(&t.0, &[], 1024, &prog).unwrap();
        assert_eq!(s2.files[0].hashes(), &expected_hashes(&old, 1024)[..]);
        assert_eq!(hashed.load(Ordering::Relaxed), 0, "nothing re-hashed");

        let new = pattern(4096, 2);
        fs::write(&p, &new).unwrap();
        age(&p);

        // Another chunk size is another key: re-hashed.
        let s3 = scan_dir(&t.0, &[], 2048, &no_progress()).unwrap();
        assert_eq!(s3.files[0].hashes(), &expected_hashes(&new, 2048)[..]);

        // A changed mtime invalidates the entry.
        age(&p);
        let s4 = scan_dir(&t.0, &[], 1024, &no_progress()).unwrap();
        assert_eq!(s4.files[0].hashes(), &expected_hashes(&new, 1024)[..]);
    }

    /// Rewrites `p` with `data` and puts its old mtime back, as `cp -p`,
    /// `tar`, `rsync -t` and `touch -r` do.
    fn rewrite_keeping_mtime(p: &Path, data: &[u8]) {
        let mtime = fs::metadata(p).unwrap().modified().unwrap();
        // Past the coarse timestamp tick of the first write, so the ctime
        // moves on (it always does on a real machine: hashing took longer).
        std::thread::sleep(Duration::from_millis(20));
        fs::write(p, data).unwrap();
        File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert_eq!(fs::metadata(p).unwrap().modified().unwrap(), mtime);
    }

    #[test]
    fn same_size_and_mtime_with_new_content_is_hashed_again() {
        // issue 11, item 6: the stale cache announced the old hashes.
        let t = TempDir::new("stale");
        let old = pattern(3000, 1);
        let p = put(&t.0, "f", &old);
        let s1 = scan_dir(&t.0, &[], 1024, &no_progress()).unwrap();
        assert_eq!(s1.files[0].hashes(), &expected_hashes(&old, 1024)[..]);
        assert!(fs::metadata(t.0.join(HASH_CACHE_NAME)).is_ok(), "cached");

        // Rewritten in place (same inode): the ctime tells.
        let new = pattern(3000, 2);
        rewrite_keeping_mtime(&p, &new);
        let s2 = scan_dir(&t.0, &[], 1024, &no_progress()).unwrap();
        assert_eq!(s2.files[0].hashes(), &expected_hashes(&new, 1024)[..]);

        // Replaced by another file (new inode) with the same size and mtime.
        let newer = pattern(3000, 3);
        let other = put(&t.0, "other", &newer);
        File::options()
            .write(true)
            .open(&other)
            .unwrap()
            .set_modified(fs::metadata(&p).unwrap().modified().unwrap())
            .unwrap();
        drop(s2);
        fs::rename(&other, &p).unwrap();
        let s3 = scan_dir(&t.0, &[PathBuf::from("f")], 1024, &no_progress()).unwrap();
        assert_eq!(s3.files[0].hashes(), &expected_hashes(&newer, 1024)[..]);
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
                stamp: Stamp {
                    size: 2049,
                    mtime_ns: -5,
                    ctime_ns: 7,
                    dev: u64::MAX,
                    ino: 12345,
                },
                chunk_size: 1024,
                hashes: vec![[1; 20], [2; 20], [3; 20]],
            },
        );
        c.insert(
            "empty".into(),
            CacheEntry {
                stamp: Stamp {
                    size: 0,
                    mtime_ns: 1_700_000_000_123_456_789,
                    ctime_ns: 1_700_000_001_000_000_001,
                    dev: 2049,
                    ino: 1,
                },
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

    /// A symlink inside the folder that leads to one of p2pfs's own files
    /// (an unfinished download's `.part` or `.have`, the hash cache, the
    /// lock) shares nothing: what the name leads to is checked, not only
    /// the name of the link.
    #[test]
    fn a_symlink_to_a_part_the_cache_or_the_lock_is_not_shared() {
        let t = TempDir::new("link-private");
        put(&t.0, "real", b"real");
        let part = partfile::part_path(&t.0, "secret.bin");
        fs::create_dir_all(part.parent().unwrap()).unwrap();
        fs::write(&part, b"half of a private download").unwrap();
        fs::write(t.0.join("x.part"), b"another unfinished one").unwrap();
        put(&t.0, LOCK_FILE_NAME, b"123 4567\n");
        std::os::unix::fs::symlink(&part, t.0.join("leak1")).unwrap();
        std::os::unix::fs::symlink(t.0.join("x.part"), t.0.join("leak2")).unwrap();
        std::os::unix::fs::symlink(t.0.join(LOCK_FILE_NAME), t.0.join("leak3")).unwrap();
        // A first scan writes the cache; a link to it is then refused too.
        scan_dir(&t.0, &[], 1024, &no_progress()).unwrap();
        assert!(t.0.join(HASH_CACHE_NAME).exists());
        std::os::unix::fs::symlink(t.0.join(HASH_CACHE_NAME), t.0.join("leak4")).unwrap();
        let s = scan_dir(&t.0, &[], 1024, &no_progress()).unwrap();
        assert_eq!(names(&s), ["real"]);
        for l in ["leak1", "leak2", "leak4"] {
            let s = scan_dir(&t.0, &[PathBuf::from(l)], 1024, &no_progress()).unwrap();
            assert!(s.files.is_empty(), "{l}");
        }
    }

    /// `mkfifo` through the command (std has no safe way to make one).
    fn mkfifo(p: &Path) {
        let ok = std::process::Command::new("mkfifo")
            .arg(p)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mkfifo {}", p.display());
    }

    /// `f` on its own thread; None if it has not returned within 3 s (the
    /// thread is then left blocked: the test fails anyway).
    fn within_3s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(Duration::from_secs(3)).ok()
    }

    #[test]
    fn a_file_swapped_after_the_walk_for_a_link_a_fifo_or_a_linked_folder_is_refused() {
        // What the walk saw (a regular file inside the folder) is replaced
        // before the open, as a racing attacker would (issue 11, item 1).
        let t = TempDir::new("swap");
        let outside = TempDir::new("swap-outside");
        let root = fs::canonicalize(&t.0).unwrap();
        let secret = put(&outside.0, "secret", b"the secret, outside the folder");
        put(&outside.0, "sub/f", b"another secret");

        // The last component became a symlink to a file outside.
        let zzz = put(&root, "zzz", b"honest");
        fs::remove_file(&zzz).unwrap();
        std::os::unix::fs::symlink(&secret, &zzz).unwrap();
        let why = open_candidate(&root, &zzz).err();
        assert!(
            why.as_ref().is_some_and(|w| w.contains("symbolic link")),
            "{why:?}"
        );

        // A folder on the way became a symlink to a folder outside.
        let f = put(&root, "sub/f", b"honest");
        fs::remove_dir_all(root.join("sub")).unwrap();
        std::os::unix::fs::symlink(outside.0.join("sub"), root.join("sub")).unwrap();
        let why = open_candidate(&root, &f).err();
        assert!(
            why.as_ref().is_some_and(|w| w.contains("outside")),
            "{why:?}"
        );

        // A FIFO: refused at once, not waited on.
        let fifo = root.join("fifo");
        mkfifo(&fifo);
        let r = within_3s({
            let (root, fifo) = (root.clone(), fifo.clone());
            move || open_candidate(&root, &fifo).err()
        });
        let Some(why) = r else {
            // Unblock the stuck open so the thread can end.
            let _ = fs::OpenOptions::new().write(true).open(&fifo);
            panic!("opening a FIFO blocked");
        };
        assert!(
            why.as_ref()
                .is_some_and(|w| w.contains("not a regular file")),
            "{why:?}"
        );
    }

    #[test]
    fn a_symlink_swapped_in_during_scans_never_shares_the_target() {
        // A thread keeps exchanging `zzz` with a symlink to a secret outside
        // the folder while the folder is scanned over and over.
        let t = TempDir::new("swaprace");
        let outside = TempDir::new("swaprace-outside");
        let secret = put(&outside.0, "secret", b"30 bytes of secret, not shared");
        for i in 0..100 {
            put(&t.0, &format!("f{i:03}"), &pattern(100, i as u8));
        }
        put(&t.0, "zzz", b"honest");
        let link = outside.0.join("link");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let swapper = {
            let (stop, zzz, link, hold) = (
                Arc::clone(&stop),
                t.0.join("zzz"),
                link.clone(),
                outside.0.join("hold"),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = fs::rename(&zzz, &hold);
                    let _ = fs::rename(&link, &zzz);
                    std::thread::yield_now();
                    let _ = fs::rename(&zzz, &link);
                    let _ = fs::rename(&hold, &zzz);
                }
            })
        };
        let secret_hash = chunks::sha1(&fs::read(&secret).unwrap());
        let mut leaked = 0;
        for _ in 0..40 {
            let s = scan_dir(&t.0, &[], 1024, &no_progress()).unwrap();
            leaked += s
                .files
                .iter()
                .filter(|f| f.hashes().first() == Some(&secret_hash))
                .count();
        }
        stop.store(true, Ordering::Relaxed);
        swapper.join().unwrap();
        assert_eq!(leaked, 0, "the secret was shared {leaked} time(s)");
    }

    #[test]
    fn a_symlink_planted_at_the_cache_temporary_name_is_not_followed() {
        // issue 11, item 2: `.p2pfs-hashes.tmp-<pid>` pointing at a file
        // outside the folder must not be written through.
        let t = TempDir::new("tmplink");
        let outside = TempDir::new("tmplink-outside");
        put(&t.0, "a", &pattern(5000, 3));
        let victim = outside.0.join("victim");
        fs::write(&victim, b"precious\n").unwrap();
        let root = fs::canonicalize(&t.0).unwrap();
        let tmp = root.join(format!("{HASH_CACHE_NAME}.tmp-{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        let s = scan_dir(&t.0, &[], 1024, &no_progress()).unwrap();
        assert_eq!(names(&s), ["a"]);
        assert_eq!(fs::read(&victim).unwrap(), b"precious\n");
        // The cache was still written, as a regular file, and nothing is
        // left at the temporary name.
        let cache = fs::symlink_metadata(root.join(HASH_CACHE_NAME)).unwrap();
        assert!(cache.file_type().is_file());
        assert!(fs::symlink_metadata(&tmp).is_err());
    }

    #[test]
    fn a_fifo_or_a_link_to_dev_zero_at_the_cache_name_neither_hangs_nor_reads_forever() {
        // issue 11, item 3. The FIFO first: before the fix it blocks (and
        // the link to /dev/zero would read until memory runs out).
        let t = TempDir::new("cachefifo");
        put(&t.0, "a", &pattern(3000, 4));
        let cache = t.0.join(HASH_CACHE_NAME);
        mkfifo(&cache);
        let dir = t.0.clone();
        let Some(s) = within_3s(move || scan_dir(&dir, &[], 1024, &no_progress()).unwrap()) else {
            let _ = fs::OpenOptions::new().write(true).open(&cache); // unblock it
            panic!("a FIFO at the cache name blocked the scan");
        };
        assert_eq!(names(&s), ["a"]);
        // Treated as a bad cache: replaced by a real one.
        assert!(fs::symlink_metadata(&cache).unwrap().file_type().is_file());

        fs::remove_file(&cache).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &cache).unwrap();
        let dir = t.0.clone();
        let s = within_3s(move || scan_dir(&dir, &[], 1024, &no_progress()).unwrap())
            .expect("a link to /dev/zero at the cache name is not read");
        assert_eq!(names(&s), ["a"]);
        assert!(fs::symlink_metadata(&cache).unwrap().file_type().is_file());
        assert_eq!(
            s.files[0].hashes(),
            expected_hashes(&pattern(3000, 4), 1024)
        );
    }

    #[test]
    fn a_scanned_file_that_no_longer_matches_its_hashes_is_never_uploaded() {
        // issue 11, item 6, second half.
        let t = TempDir::new("upload");
        let data = pattern(3000, 5);
        let p = put(&t.0, "f", &data);
        let s = scan_dir(&t.0, &[], 1024, &no_progress()).unwrap();
        let f = &s.files[0];
        let i = |n| f.geometry().index(n).unwrap();
        let mut out = vec![0u8; 1024];
        f.read_for_upload(i(0), &mut out).unwrap();
        assert_eq!(out, data[..1024]);

        // Changed in place after it was hashed, same size.
        std::thread::sleep(Duration::from_millis(20));
        fs::write(&p, pattern(3000, 6)).unwrap();
        assert!(matches!(
            f.read_for_upload(i(1), &mut out),
            Err(UploadError::Changed)
        ));
        // Also a chunk that had already been sent once.
        assert!(matches!(
            f.read_for_upload(i(0), &mut out),
            Err(UploadError::Changed)
        ));
        drop(s);

        // A stale cache entry (the right key, the wrong hashes): the scan
        // believes it, the first upload of each chunk does not.
        let meta = fs::metadata(&p).unwrap();
        let mut cache = Cache::new();
        cache.insert(
            "f".into(),
            CacheEntry {
                stamp: Stamp::of(&meta).unwrap(),
                chunk_size: 1024,
                hashes: expected_hashes(&data, 1024),
            },
        );
        let root = fs::canonicalize(&t.0).unwrap();
        store_cache(&root, &root.join(HASH_CACHE_NAME), &cache);
        let s = scan_dir(&t.0, &[], 1024, &no_progress()).unwrap();
        let f = &s.files[0];
        assert_eq!(f.hashes(), &expected_hashes(&data, 1024)[..], "stale");
        let mut last = vec![0u8; 3000 - 2048];
        assert!(matches!(
            f.read_for_upload(f.geometry().index(2).unwrap(), &mut last),
            Err(UploadError::Changed)
        ));

        // A file that matches is uploaded, from the cache too.
        fs::write(&p, &data).unwrap();
        age(&p);
        scan_dir(&t.0, &[], 1024, &no_progress()).unwrap(); // caches it
        let s = scan_dir(&t.0, &[], 1024, &no_progress()).unwrap();
        let f = &s.files[0];
        for n in 0..3 {
            let idx = f.geometry().index(n).unwrap();
            let mut out = vec![0u8; f.geometry().chunk_len(idx) as usize];
            f.read_for_upload(idx, &mut out).unwrap();
            f.read_for_upload(idx, &mut out).unwrap();
        }
    }

    #[test]
    fn withdrawing_a_changed_file_removes_only_that_entry() {
        let t = TempDir::new("withdraw");
        put(&t.0, "f", &pattern(100, 1));
        let idx = ShareIndex::new();
        let old = Arc::new(
            scan_dir(&t.0, &[], 1024, &no_progress())
                .unwrap()
                .files
                .remove(0),
        );
        idx.insert(Arc::clone(&old));
        let newer = Arc::new(
            scan_dir(&t.0, &[], 1024, &no_progress())
                .unwrap()
                .files
                .remove(0),
        );
        idx.insert(Arc::clone(&newer));
        assert!(!idx.withdraw_changed(&old), "a newer entry stays");
        assert!(idx.get("f").is_some());
        assert!(idx.withdraw_changed(&newer));
        assert!(idx.get("f").is_none());
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
