//! The on-disk state of an unfinished download and moving it into place.
//!
//! Owns: the work folder [`WORK_DIR`] (`.p2pfs/` in the download folder) and
//! in it, for each unfinished download, `KEY.part` (the preallocated file
//! being filled) and `KEY.part.have` (the saved have-bitmap that makes a
//! restart resume instead of starting over), where KEY is the hex SHA-1 of
//! the file's name: 55 bytes at most, so every name the tracker accepts
//! (components up to 255 bytes) can be downloaded on a file system with
//! 255-byte names. Also owns their suffixes and [`is_artifact`], which the
//! share scan asks so that it never offers one of them, and the rules that
//! keep a download from taking over a file that is not its own: a `.part`
//! without a matching `.part.have` is refused, never overwritten; a `.part`
//! another download is filling (it holds the file's lock) is refused; a
//! `.part` with another hard link is refused; the work folder must be a
//! real folder, checked before anything in it is opened, on a resume too
//! (a link swapped in after that check is a race that remains); and the
//! final name is never replaced (the finished file is hard-linked there,
//! from a copy in a work folder of the final name's own folder when that
//! is another file system).
//!
//! Also owns the other way into place, for a set's small files
//! ([`create_unnamed`], [`name_unnamed`]): an unnamed file in the final
//! name's folder, linked to its name once complete; no `.part`, no
//! `.part.have`, nothing to clean up after a kill. When such a download
//! is handed to the engine midway, its verified chunks become a `.part`
//! and `.part.have` like any other ([`park_unnamed`]).
//!
//! Calls `chunks` (geometry, bitmaps, SHA-1), the peer's error type, `log`
//! `wire` (the name rule), the libc crate's open flags and rustix's
//! `linkat` only; nothing else of the download and nothing
//! of `share`, so `share` can ask [`is_artifact`] without an import cycle.
//!
//! Files that already exist (the final name, `.part.have`, a `.part` being
//! resumed, and the `.part` again for its lock) are opened the way `share::open_regular` opens a shared file,
//! with `O_NOFOLLOW | O_NONBLOCK` (`open_existing_file`): a symlink there
//! is not followed and a FIFO is not waited on.
//!
//! # `KEY.part.have`
//!
//! `"P2PFHAVE"` | 20-byte identity (SHA-1 over the length, the chunk size and
//! every chunk hash, so a bitmap saved for other content is never trusted) |
//! the bitmap's bytes | the file's name (UTF-8) | `u16` name length, big-endian
//! (so [`unfinished`] can name the download a KEY belongs to). Written to `KEY.part.have.tmp` (never following a
//! link planted there) and renamed over the old one.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use log::warn;

use crate::chunks::{self, Bitmap, Digest, Geometry};
use crate::limits::{MAX_CHUNKS_PER_FILE, MAX_NAME_LEN};
use crate::peer::{PeerError, Result};

/// The folder, in the download folder, holding unfinished downloads.
pub const WORK_DIR: &str = ".p2pfs";
/// Suffix of a file still being downloaded.
pub const PART_SUFFIX: &str = ".part";
/// Suffix of the saved have-bitmap beside it.
pub const HAVE_SUFFIX: &str = ".part.have";
/// Suffix of the have-bitmap's temporary file while it is rewritten.
const HAVE_TMP_SUFFIX: &str = ".part.have.tmp";

const HAVE_MAGIC: &[u8; 8] = b"P2PFHAVE";

/// Whether the file at relative `name` ('/'-separated) is a download's own
/// state (anything in a [`WORK_DIR`], an unfinished `.part`, its saved
/// bitmap or that bitmap's temporary file): never shared.
pub fn is_artifact(name: &str) -> bool {
    name.split('/').any(|c| c == WORK_DIR)
        || [PART_SUFFIX, HAVE_SUFFIX, HAVE_TMP_SUFFIX]
            .iter()
            .any(|s| name.ends_with(s))
}

/// Where the download of `name` into `dir` keeps its unfinished file.
pub fn part_path(dir: &Path, name: &str) -> PathBuf {
    Paths::new(dir, name).part
}

/// Where the download of `name` into `dir` keeps its saved have-bitmap.
pub fn have_path(dir: &Path, name: &str) -> PathBuf {
    Paths::new(dir, name).have
}

/// The names of the downloads left unfinished in `dir` (a `KEY.part` in
/// its [`WORK_DIR`] with a saved bitmap that names it), sorted: what
/// `get NAME` would resume. Links are not followed; anything unreadable or
/// not matching its KEY is passed over.
pub fn unfinished(dir: &Path) -> Vec<String> {
    let work = dir.join(WORK_DIR);
    if !fs::symlink_metadata(&work).is_ok_and(|m| m.is_dir()) {
        return Vec::new();
    }
    let Ok(entries) = fs::read_dir(&work) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            let file_name = e.file_name().into_string().ok()?;
            let key = file_name.strip_suffix(HAVE_SUFFIX)?;
            let name = saved_name(&e.path())?;
            let paths = Paths::new(dir, &name);
            let matches = paths.have.file_name()? == e.file_name().as_os_str() && !key.is_empty();
            (matches && open_existing_file(&paths.part, false).is_ok()).then_some(name)
        })
        .collect();
    names.sort();
    names
}

/// The paths a download uses.
pub(super) struct Paths {
    /// The download folder.
    dir: PathBuf,
    pub(super) final_path: PathBuf,
    /// The [`WORK_DIR`] of the download folder.
    work: PathBuf,
    pub(super) part: PathBuf,
    pub(super) have: PathBuf,
    /// The file's name, recorded in the saved bitmap so that
    /// [`unfinished`] can say which download a KEY belongs to.
    name: String,
}

impl Paths {
    /// Removes the `.part` and its saved bitmap, and the work folder when
    /// no other download is using it: after the file is in place, or when
    /// the `.part` holds no verified chunk.
    pub(super) fn discard(&self) {
        let _ = fs::remove_file(&self.part);
        let _ = fs::remove_file(&self.have);
        let _ = fs::remove_dir(&self.work);
    }

    pub(super) fn new(dir: &Path, name: &str) -> Paths {
        // `name` passed validate_name: relative, no `..`, so this stays in `dir`.
        let final_path = dir.join(name);
        let work = dir.join(WORK_DIR);
        let key: String = chunks::sha1(name.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Paths {
            part: work.join(format!("{key}{PART_SUFFIX}")),
            have: work.join(format!("{key}{HAVE_SUFFIX}")),
            work,
            final_path,
            dir: dir.to_path_buf(),
            name: name.to_owned(),
        }
    }

    /// Creates the download folder, and the folders the file's name runs
    /// through below it, refusing any that exists as a link (or as anything but a
    /// folder): a name is never written outside the download folder. Made
    /// with std only, so a link swapped in after this check and before the
    /// file is linked into place is a race that remains.
    pub(super) fn make_parent_dirs(&self) -> Result<()> {
        // The download folder itself is the user's to name, link or not.
        fs::create_dir_all(&self.dir).map_err(|e| PeerError::io("create folder", &self.dir, e))?;
        let mut at = self.dir.clone();
        let mut comps: Vec<&str> = self.name.split('/').collect();
        comps.pop();
        for c in comps {
            at.push(c);
            match fs::create_dir(&at) {
                Ok(()) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(PeerError::io("create folder", &at, e)),
            }
            match fs::symlink_metadata(&at) {
                Ok(m) if m.is_dir() => {}
                Ok(m) => {
                    let what = if m.file_type().is_symlink() {
                        "is a link"
                    } else {
                        "is not a folder"
                    };
                    return Err(PeerError::Download(format!(
                        "{} {what}; refusing to write {} outside {}",
                        at.display(),
                        self.name,
                        self.dir.display()
                    )));
                }
                Err(e) => return Err(PeerError::io("inspect", &at, e)),
            }
        }
        Ok(())
    }

    /// Makes sure the work folder exists and is a real folder (never a
    /// link to somewhere else).
    /// Another download of this folder finishing (several files at once)
    /// may remove it, empty, between the two steps: then it is made again.
    fn make_work_dir(&self) -> Result<()> {
        let mut attempts = 0;
        loop {
            match fs::create_dir(&self.work) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(PeerError::io("create folder", &self.work, e)),
            }
            return match fs::symlink_metadata(&self.work) {
                Ok(m) if m.is_dir() => Ok(()),
                Ok(_) => Err(PeerError::Download(format!(
                    "{} exists and is not a folder; move it away or use another --dir",
                    self.work.display()
                ))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempts < 3 => {
                    attempts += 1;
                    continue;
                }
                Err(e) => Err(PeerError::io("inspect", &self.work, e)),
            };
        }
    }

    /// Saves `have` as the verified chunks of the `.part`.
    pub(super) fn save_have(&self, id: &Digest, have: &Bitmap) -> std::io::Result<()> {
        save_have(&self.have, id, have, &self.name)
    }

    fn refuse(&self, why: &str) -> PeerError {
        PeerError::Download(format!(
            "{} {why}; move it away or use another --dir",
            self.part.display()
        ))
    }
}

/// What a `.part.have` must carry to be trusted for this content.
pub(super) fn identity(g: Geometry, hashes: &[Digest]) -> Digest {
    let mut bytes = Vec::with_capacity(12 + hashes.len() * 20);
    bytes.extend_from_slice(&g.length().to_be_bytes());
    bytes.extend_from_slice(&g.chunk_size().to_be_bytes());
    for h in hashes {
        bytes.extend_from_slice(h);
    }
    chunks::sha1(&bytes)
}

/// Opens an existing regular file (read-only, or read-write) without
/// following a symlink at its name and without waiting on a FIFO or device;
/// anything but a regular file is refused. The same rule as
/// `share::open_regular`, which this module cannot call (`share` depends on
/// it).
fn open_existing_file(path: &Path, write: bool) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(file)
}

/// The saved bitmap at `path`, if it is one for content `id` with `count`
/// chunks; `None` for anything else (missing, truncated, other content, not
/// a regular file).
fn load_have(path: &Path, id: &Digest, count: u32) -> Option<Bitmap> {
    let bitmap_len = usize::try_from(count.div_ceil(8)).ok()?;
    let bytes = read_have(path, bitmap_len)?;
    if bytes[8..28] != id[..] || bytes.len() < 28 + bitmap_len + 2 {
        return None;
    }
    let name_len = trailer_name_len(&bytes);
    if bytes.len() != 28 + bitmap_len + name_len + 2 {
        return None;
    }
    Bitmap::from_bytes(count, &bytes[28..28 + bitmap_len]).ok()
}

/// The start of the saved bitmap at `path` (magic checked), read no further
/// than a bitmap of `bitmap_len` bytes and the longest name allow (plus one
/// byte, so an overlong file is seen as such).
fn read_have(path: &Path, bitmap_len: usize) -> Option<Vec<u8>> {
    let limit = 28 + bitmap_len + MAX_NAME_LEN + 2 + 1;
    let mut bytes = Vec::new();
    open_existing_file(path, false)
        .ok()?
        .take(u64::try_from(limit).ok()?)
        .read_to_end(&mut bytes)
        .ok()?;
    (bytes.len() >= 30 && bytes.len() < limit && &bytes[..8] == HAVE_MAGIC).then_some(bytes)
}

/// The name length recorded in the last two bytes of a saved bitmap.
fn trailer_name_len(bytes: &[u8]) -> usize {
    usize::from(u16::from_be_bytes([
        bytes[bytes.len() - 2],
        bytes[bytes.len() - 1],
    ]))
}

/// The file name recorded in the saved bitmap at `path`, if it holds a valid
/// one.
fn saved_name(path: &Path) -> Option<String> {
    let max_bitmap = usize::try_from(MAX_CHUNKS_PER_FILE.div_ceil(8)).ok()?;
    let bytes = read_have(path, max_bitmap)?;
    let name_len = trailer_name_len(&bytes);
    let end = bytes.len() - 2;
    let start = end.checked_sub(name_len).filter(|&st| st >= 28)?;
    let name = std::str::from_utf8(&bytes[start..end]).ok()?;
    crate::wire::validate_name(name).ok()?;
    Some(name.to_owned())
}

fn save_have(path: &Path, id: &Digest, have: &Bitmap, name: &str) -> std::io::Result<()> {
    let mut tmp = path.to_path_buf().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    // Never follow a link planted at the temporary name.
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
    let mut bytes = Vec::with_capacity(28 + have.as_bytes().len());
    bytes.extend_from_slice(HAVE_MAGIC);
    bytes.extend_from_slice(id);
    bytes.extend_from_slice(have.as_bytes());
    bytes.extend_from_slice(name.as_bytes());
    // A valid name is at most MAX_NAME_LEN (1 KiB) bytes, so this fits.
    let name_len = u16::try_from(name.len()).unwrap_or(u16::MAX);
    bytes.extend_from_slice(&name_len.to_be_bytes());
    f.write_all(&bytes)?;
    fs::rename(&tmp, path)
}

/// Opens the `.part` file of an interrupted download of this very file, or
/// creates a new one, and works out which chunks in it are already good:
/// those the saved bitmap claims and whose hash checks out now. A `.part`
/// without a matching `.part.have` is refused, never overwritten, except an
/// empty one with no `.part.have` at all: a download cut off before its
/// first bitmap was saved, started afresh.
///
/// Checking the saved chunks reads them all; `cancel` set meanwhile stops it
/// within a chunk, with an error (the `.part` is kept for a resume).
///
/// Also returns the `.part`'s lock: the caller holds it for as long as it
/// fills the file.
pub(super) fn open(
    paths: &Paths,
    geometry: Geometry,
    hashes: &[Digest],
    cancel: Option<&AtomicBool>,
) -> Result<(File, Bitmap, PartLock)> {
    let id = identity(geometry, hashes);
    // Before anything in it is looked at: a resume never goes through a
    // link either.
    paths.make_work_dir()?;
    let (file, claimed, lock) = match fs::symlink_metadata(&paths.part) {
        Ok(m) if !m.file_type().is_file() => {
            return Err(paths.refuse("exists and is not a regular file"));
        }
        Ok(_) => {
            let (file, claimed, lock) = open_existing(paths, &id, geometry)?;
            (file, Some(claimed), lock)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (file, lock) = create(paths, &id, geometry)?;
            (file, None, lock)
        }
        Err(e) => return Err(PeerError::io("inspect", &paths.part, e)),
    };
    let len = file
        .metadata()
        .map_err(|e| PeerError::io("stat", &paths.part, e))?
        .len();
    if len != geometry.length() {
        file.set_len(geometry.length())
            .map_err(|e| PeerError::io("preallocate", &paths.part, e))?;
    }
    let have = match claimed {
        Some(c) => verify(&file, geometry, hashes, Some(&c), cancel)
            .ok_or_else(|| interrupted(&paths.final_path))?,
        None => Bitmap::new(geometry.count()),
    };
    Ok((file, have, lock))
}

/// An existing `.part`: ours only if its saved bitmap names this content.
fn open_existing(
    paths: &Paths,
    id: &Digest,
    geometry: Geometry,
) -> Result<(File, Bitmap, PartLock)> {
    let lock = lock(paths)?;
    // An empty `.part` with no `.part.have` at all: a download of this name
    // was stopped (killed) between creating the `.part` and saving its
    // first bitmap (the `.part` is sized only after that), so nothing in
    // it was ever written. We hold the lock: start it afresh rather than
    // refuse every later run. Anything else without a matching
    // `.part.have` (bytes of unknown origin, a bitmap of other content) is
    // still refused, never overwritten.
    let orphan = matches!(
        fs::symlink_metadata(&paths.have),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound
    ) && fs::symlink_metadata(&paths.part).is_ok_and(|m| m.is_file() && m.len() == 0);
    let claimed = if orphan {
        Bitmap::new(geometry.count())
    } else {
        load_have(&paths.have, id, geometry.count()).ok_or_else(|| {
            paths.refuse(
                "exists but is not an unfinished download of this file (no matching .part.have)",
            )
        })?
    };
    // Never through a link swapped in since it was looked at.
    let file =
        open_existing_file(&paths.part, true).map_err(|e| PeerError::io("open", &paths.part, e))?;
    // A hard link to some other file would be written into.
    let links = file
        .metadata()
        .map_err(|e| PeerError::io("stat", &paths.part, e))?
        .nlink();
    if links != 1 {
        return Err(paths.refuse(&format!(
            "has {links} hard links (another name for the same file)"
        )));
    }
    if orphan {
        paths
            .save_have(id, &claimed)
            .map_err(|e| PeerError::io("create", &paths.have, e))?;
    }
    Ok((file, claimed, lock))
}

/// The lock of a `.part`: while a download holds it, a second download of
/// the same file into the same folder, by another process or this one,
/// stops at once instead of writing into it too. Released when dropped.
///
/// It is taken on a handle of its own, never on the handle that reads and
/// writes chunks: that one is kept open to serve the verified chunks after
/// a failed download, which must not keep a retry out.
#[derive(Debug)]
pub(super) struct PartLock {
    _file: Option<File>,
}

/// Times a `.part`'s lock found taken is asked again, [`LOCK_RETRY_PAUSE`]
/// apart, before the download is refused (see [`lock`]).
const LOCK_RETRIES: u32 = 5;
const LOCK_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// Takes the `.part`'s lock.
fn lock(paths: &Paths) -> Result<PartLock> {
    let file = open_existing_file(&paths.part, false)
        .map_err(|e| PeerError::io("open", &paths.part, e))?;
    // A lock just let go can still be held for an instant by a child this
    // process is starting (a forked copy of the handle lives until the
    // child's exec): asked again a few times before it counts as taken.
    let mut result = file.try_lock();
    for _ in 0..LOCK_RETRIES {
        if !matches!(result, Err(TryLockError::WouldBlock)) {
            break;
        }
        std::thread::sleep(LOCK_RETRY_PAUSE);
        result = file.try_lock();
    }
    match result {
        Ok(()) => Ok(PartLock { _file: Some(file) }),
        Err(TryLockError::WouldBlock) => Err(PeerError::Download(format!(
            "{} is already being downloaded into this folder by another download \
             ({} is locked); wait for it to finish, or use another --dir",
            paths.final_path.display(),
            paths.part.display()
        ))),
        // A file system without locks: download anyway, unguarded.
        Err(TryLockError::Error(e)) => {
            warn!("cannot lock {}: {e}", paths.part.display());
            Ok(PartLock { _file: None })
        }
    }
}

/// A new `.part`, marked as ours at once so a restart right away resumes.
fn create(paths: &Paths, id: &Digest, geometry: Geometry) -> Result<(File, PartLock)> {
    let mut attempts = 0;
    let (file, lock) = loop {
        paths.make_work_dir()?;
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&paths.part);
        match opened {
            Ok(f) => match lock(paths) {
                Ok(l) => break (f, l),
                Err(e) => {
                    // Someone opened it in the instant since we created it.
                    let _ = fs::remove_file(&paths.part);
                    return Err(e);
                }
            },
            // Another download finishing removed the (then empty) folder.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempts < 3 => attempts += 1,
            Err(e) => return Err(PeerError::io("create", &paths.part, e)),
        }
    };
    if let Err(e) = paths.save_have(id, &Bitmap::new(geometry.count())) {
        // Without its .have a later run would refuse the .part.
        let _ = fs::remove_file(&paths.part);
        return Err(PeerError::io("create", &paths.have, e));
    }
    Ok((file, lock))
}

/// The error for a file that appeared under the final name: the complete
/// download is kept at `kept`.
fn appeared(paths: &Paths, kept: &Path) -> PeerError {
    PeerError::Download(format!(
        "{} appeared during the download; the downloaded file is complete and kept as {}",
        paths.final_path.display(),
        kept.display()
    ))
}

/// The final name's folder is on another file system than the `.part`:
/// copies it into a work folder in that folder (created new, never through
/// a link), flushes the copy and links it into place, never replacing a
/// file. The copy is removed either way.
fn copy_into_place(paths: &Paths) -> Result<()> {
    let parent = paths.final_path.parent().unwrap_or(&paths.dir);
    let there = Paths::new(parent, &paths.name);
    there.make_work_dir()?;
    let copy = there.part.with_extension("part.copy");
    let failed = |what: &str, e: std::io::Error| {
        let _ = fs::remove_file(&copy);
        PeerError::Download(format!(
            "cannot {what} {} (to put {} in place across file systems: {e}); the downloaded file is complete and kept as {}",
            copy.display(),
            paths.final_path.display(),
            paths.part.display()
        ))
    };
    let mut dst = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&copy)
        .map_err(|e| failed("create", e))?;
    let mut src = open_existing_file(&paths.part, false)
        .map_err(|e| PeerError::io("open", &paths.part, e))?;
    std::io::copy(&mut src, &mut dst).map_err(|e| failed("write", e))?;
    dst.sync_all().map_err(|e| failed("flush", e))?;
    let linked = fs::hard_link(&copy, &paths.final_path);
    let _ = fs::remove_file(&copy);
    let _ = fs::remove_dir(&there.work);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(appeared(paths, &paths.part))
        }
        Err(e) => Err(failed("link", e)),
    }
}

/// Hashes the chunks of `file` (only those set in `only`, if given) and
/// returns which match; `None` as soon as `cancel` is set.
pub(super) fn verify(
    file: &File,
    g: Geometry,
    hashes: &[Digest],
    only: Option<&Bitmap>,
    cancel: Option<&AtomicBool>,
) -> Option<Bitmap> {
    let mut good = Bitmap::new(g.count());
    let mut buf = Vec::new();
    for i in g.indices() {
        if only.is_some_and(|b| !b.get(i.get())) {
            continue;
        }
        if cancel.is_some_and(|c| c.load(Ordering::SeqCst)) {
            return None;
        }
        if chunks::read_chunk(file, &g, i, &mut buf).is_ok()
            && chunks::sha1(&buf) == hashes[i.get() as usize]
        {
            good.set(i.get());
        }
    }
    Some(good)
}

/// The error of a check of `path` stopped by the cancel flag.
fn interrupted(path: &Path) -> PeerError {
    PeerError::Download(format!(
        "interrupted while checking the chunks of {} already on disk; run the same command again to resume",
        path.display()
    ))
}

/// The file already under the final name, if it is exactly this content
/// (every chunk verifies); refused otherwise, and never overwritten. The
/// check stops within a chunk once `cancel` is set.
pub(super) fn open_finished(
    paths: &Paths,
    name: &str,
    geometry: Geometry,
    hashes: &[Digest],
    cancel: Option<&AtomicBool>,
) -> Result<File> {
    let p = &paths.final_path;
    // Like a shared file: no link followed, no FIFO waited on.
    let file = open_existing_file(p, false).map_err(|e| PeerError::io("open", p, e))?;
    let len = file
        .metadata()
        .map_err(|e| PeerError::io("stat", p, e))?
        .len();
    if len == geometry.length() {
        let good = verify(&file, geometry, hashes, None, cancel).ok_or_else(|| interrupted(p))?;
        if good.is_full() {
            return Ok(file);
        }
    }
    Err(PeerError::Download(format!(
        "{} already exists and is not the network's {name}; move it away or use another --dir",
        p.display()
    )))
}

/// Flush, fsync, move `.part` to the final name, drop the saved bitmap.
/// A hard link rather than a rename, so a file that appeared under the final
/// name meanwhile is never replaced. When the final name's folder is on
/// another file system (a mount below the download folder), the `.part` is
/// copied into a work folder there and linked from that copy. Errors say
/// where the complete file is kept: running the command again would not
/// help.
pub(super) fn finish(paths: &Paths, file: &File, sync_folder: bool) -> Result<()> {
    file.sync_all()
        .map_err(|e| PeerError::io("flush", &paths.part, e))?;
    // Again just before: a folder may have been swapped for a link meanwhile.
    paths.make_parent_dirs()?;
    match fs::hard_link(&paths.part, &paths.final_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(appeared(paths, &paths.part));
        }
        Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => copy_into_place(paths)?,
        // A file system without hard links (vfat, exFAT): a rename, only
        // while the name is free (std has no rename that never replaces,
        // so a file appearing in between is a race that remains).
        Err(link) => {
            if fs::symlink_metadata(&paths.final_path).is_ok() {
                return Err(appeared(paths, &paths.part));
            }
            fs::rename(&paths.part, &paths.final_path).map_err(|e| {
                PeerError::Download(format!(
                    "cannot put {} in place (link: {link}; rename: {e}); the downloaded file is complete and kept as {}",
                    paths.final_path.display(),
                    paths.part.display()
                ))
            })?;
        }
    }
    paths.discard();
    if sync_folder && let Some(dir) = paths.final_path.parent() {
        sync_dir(dir);
    }
    Ok(())
}

/// An unnamed file (`O_TMPFILE`) in the final name's folder, for content
/// that gets its name only once complete ([`name_unnamed`]): nothing of it
/// is ever under a name while incomplete, and a download killed midway
/// leaves nothing behind (the kernel frees it). Used by a set's small
/// files (`small`). The folders are made and checked first, and the final
/// folder is then held open ([`Folder`]): the file is made in it and named in
/// it through that handle, so a folder swapped for a link afterwards
/// changes nothing. `None` where the system or the file system has no
/// unnamed files (the caller then leaves the file to the engine), or when a
/// folder below the download folder is not a real folder (never followed:
/// the download folder itself may be a link, as for
/// [`Paths::make_parent_dirs`]).
/// The final folder of an unnamed file, held open until the file is named.
pub(crate) struct Folder(File);

pub(super) fn create_unnamed(paths: &Paths) -> Option<(File, Folder)> {
    use rustix::fs::{Mode, OFlags, openat};
    paths.make_parent_dirs().ok()?;
    let folder_path = paths.final_path.parent()?;
    let mut flags = libc::O_DIRECTORY;
    if folder_path != paths.dir {
        flags |= libc::O_NOFOLLOW;
    }
    let folder = OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(folder_path)
        .ok()?;
    let how = OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC;
    let fd = openat(&folder, ".", how, Mode::from_bits_truncate(0o666)).ok()?;
    Some((File::from(fd), Folder(folder)))
}

/// Gives the unnamed `file` of [`create_unnamed`] (made in `folder`), now
/// complete and verified, its final name: fsync, then a hard link into
/// that same folder, which never replaces a file. The link is made from
/// `/proc/self/fd/N` with `AT_SYMLINK_FOLLOW` (what any user may do;
/// `AT_EMPTY_PATH` on the handle itself is tried only when /proc is
/// missing, as it needs a privilege). `Ok(false)`: a file appeared under
/// the final name meanwhile (left as it is; the caller decides what it
/// is). An error: the content could not be named.
pub(super) fn name_unnamed(
    paths: &Paths,
    file: &File,
    folder: &Folder,
    sync_folder: bool,
) -> Result<bool> {
    file.sync_all()
        .map_err(|e| PeerError::io("flush", &paths.final_path, e))?;
    let to = &paths.final_path;
    let Some(base) = to.file_name() else {
        return Err(PeerError::Invalid(format!(
            "{} has no file name",
            to.display()
        )));
    };
    match link_unnamed(file, &folder.0, Path::new(base)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(PeerError::io("name", to, e)),
    }
    if sync_folder {
        let _ = folder.0.sync_all();
    }
    Ok(true)
}

/// Links the unnamed `file` at `to` in the folder `at` (a handle on it,
/// or the current directory's when `to` is a whole path; see
/// [`name_unnamed`]); fails if `to` exists.
fn link_unnamed(file: &File, at: &impl std::os::fd::AsFd, to: &Path) -> std::io::Result<()> {
    use rustix::fs::{AtFlags, CWD, linkat};
    use std::os::fd::AsRawFd;
    let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
    match linkat(CWD, proc_path.as_str(), at, to, AtFlags::SYMLINK_FOLLOW) {
        Err(e) if e == rustix::io::Errno::NOENT && !Path::new("/proc/self/fd").exists() => {
            linkat(file, "", at, to, AtFlags::EMPTY_PATH)
        }
        other => other,
    }
    .map_err(std::io::Error::from)
}

/// Keeps what the unnamed `file` of [`create_unnamed`] holds so far (the
/// verified chunks in `have`) as this name's `.part`, so that the engine
/// resumes it rather than fetching it all again: the `.part.have` is saved
/// first (a `.part` without one would be refused), then the file is linked
/// as the `.part`, never over one. False when nothing was kept (no chunk,
/// a `.part` or `.part.have` already there, or an error).
pub(super) fn park_unnamed(
    paths: &Paths,
    file: &File,
    geometry: Geometry,
    hashes: &[Digest],
    have: &Bitmap,
) -> bool {
    let taken = |p: &Path| fs::symlink_metadata(p).is_ok();
    if have.count_ones() == 0 || paths.make_work_dir().is_err() {
        return false;
    }
    if taken(&paths.part) || taken(&paths.have) {
        return false;
    }
    if paths.save_have(&identity(geometry, hashes), have).is_err() {
        return false;
    }
    if link_unnamed(file, &rustix::fs::CWD, &paths.part).is_err() {
        let _ = fs::remove_file(&paths.have);
        return false;
    }
    true
}

/// Makes the names in folder `dir` durable; failure here loses nothing.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::testutil::TempDir;

    /// A 10,000-byte file in 1 KiB chunks and its hashes.
    fn content() -> (Vec<u8>, Geometry, Vec<Digest>) {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let g = Geometry::new(10_000, 1024).unwrap();
        let hashes = data.chunks(1024).map(chunks::sha1).collect();
        (data, g, hashes)
    }

    #[test]
    fn unfinished_downloads_are_found_by_their_part_and_bitmap() {
        let dir = TempDir::new("unfinished");
        let (_, g, hashes) = content();
        let long = format!("sub/{}", "x".repeat(255));
        for name in ["a.bin", long.as_str()] {
            let paths = Paths::new(&dir.0, name);
            let (file, _, lock) = open(&paths, g, &hashes, None).unwrap();
            drop((file, lock));
        }
        // A .part without its bitmap, a bitmap whose name does not match
        // its KEY, and a plain file are not unfinished downloads.
        let stray = Paths::new(&dir.0, "stray");
        fs::write(&stray.part, b"x").unwrap();
        let liar = Paths::new(&dir.0, "liar");
        fs::write(&liar.part, b"x").unwrap();
        save_have(&liar.have, &[0; 20], &Bitmap::new(1), "a.bin").unwrap();
        fs::write(dir.0.join("c.txt"), b"x").unwrap();
        assert_eq!(unfinished(&dir.0), ["a.bin".to_owned(), long.clone()]);
        assert!(unfinished(&dir.0.join("missing")).is_empty());
        // Once finished, it is no longer listed.
        let paths = Paths::new(&dir.0, "a.bin");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&paths.part)
            .unwrap();
        finish(&paths, &file, true).unwrap();
        assert_eq!(unfinished(&dir.0), [long]);
    }

    #[test]
    fn have_file_round_trips_and_rejects_other_content() {
        let dir = TempDir::new("have");
        let p = dir.0.join("x.part.have");
        let g = Geometry::new(10_000, 1024).unwrap();
        let hashes = vec![[1u8; 20]; 10];
        let id = identity(g, &hashes);
        let mut b = Bitmap::new(10);
        b.set(3);
        b.set(9);
        save_have(&p, &id, &b, "f").unwrap();
        assert_eq!(load_have(&p, &id, 10), Some(b));
        let other = identity(g, &[[2u8; 20]; 10]);
        assert_eq!(load_have(&p, &other, 10), None);
        assert_eq!(load_have(&p, &id, 17), None);
        fs::write(&p, b"garbage").unwrap();
        assert_eq!(load_have(&p, &id, 10), None);
    }

    #[test]
    fn a_truncated_have_file_is_not_trusted() {
        let dir = TempDir::new("have-trunc");
        let p = dir.0.join("x.part.have");
        let (_, g, hashes) = content();
        let id = identity(g, &hashes);
        let mut b = Bitmap::new(10);
        b.set(0);
        save_have(&p, &id, &b, "f").unwrap();
        let full = fs::read(&p).unwrap();
        for cut in [0, 7, 8, 27, 28, full.len() - 1] {
            fs::write(&p, &full[..cut]).unwrap();
            assert_eq!(load_have(&p, &id, 10), None, "cut at {cut}");
        }
    }

    #[test]
    fn save_have_never_follows_a_link_at_its_temporary_name() {
        let dir = TempDir::new("have-link");
        let victim = dir.0.join("victim");
        fs::write(&victim, b"precious").unwrap();
        let p = dir.0.join("x.part.have");
        std::os::unix::fs::symlink(&victim, dir.0.join("x.part.have.tmp")).unwrap();
        save_have(&p, &[0; 20], &Bitmap::new(3), "f").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
    }

    #[test]
    fn a_part_resumes_with_only_the_chunks_that_verify() {
        let dir = TempDir::new("part-resume");
        let (data, g, hashes) = content();
        let paths = Paths::new(&dir.0, "f");
        let (file, have, lock) = open(&paths, g, &hashes, None).unwrap();
        assert_eq!(have.count_ones(), 0);
        assert_eq!(fs::metadata(&paths.part).unwrap().len(), 10_000);
        assert_eq!(
            load_have(&paths.have, &identity(g, &hashes), 10),
            Some(have)
        );
        // Chunks 2 and 9 written and claimed; chunk 5 claimed but never written.
        use std::os::unix::fs::FileExt;
        file.write_all_at(&data[2048..3072], 2048).unwrap();
        file.write_all_at(&data[9216..], 9216).unwrap();
        let mut claimed = Bitmap::new(10);
        for i in [2, 5, 9] {
            claimed.set(i);
        }
        paths.save_have(&identity(g, &hashes), &claimed).unwrap();
        drop((file, lock));
        let (_, have, _) = open(&paths, g, &hashes, None).unwrap();
        assert_eq!(have.iter_ones().collect::<Vec<_>>(), vec![2, 9]);
    }

    #[test]
    fn a_part_being_filled_is_refused_to_a_second_download() {
        let dir = TempDir::new("part-lock");
        let (_, g, hashes) = content();
        let paths = Paths::new(&dir.0, "f");
        let (file, _, lock) = open(&paths, g, &hashes, None).unwrap();
        let e = open(&paths, g, &hashes, None).unwrap_err();
        assert!(e.to_string().contains("already being downloaded"), "{e}");
        assert!(paths.part.exists() && paths.have.exists());
        drop(lock);
        // The handle that serves the chunks stays open: no matter.
        assert!(open(&paths, g, &hashes, None).is_ok(), "free again");
        drop(file);
    }

    #[test]
    fn checking_stops_when_cancelled() {
        let dir = TempDir::new("part-cancel");
        let (data, g, hashes) = content();
        let paths = Paths::new(&dir.0, "f");
        fs::write(&paths.final_path, &data).unwrap();
        let stop = AtomicBool::new(true);
        let e = open_finished(&paths, "f", g, &hashes, Some(&stop)).unwrap_err();
        assert!(e.to_string().contains("interrupted"), "{e}");
        let (file, _, lock) = open(&paths, g, &hashes, None).unwrap();
        paths
            .save_have(&identity(g, &hashes), &Bitmap::full(10))
            .unwrap();
        drop((file, lock));
        let e = open(&paths, g, &hashes, Some(&stop)).unwrap_err();
        assert!(e.to_string().contains("interrupted"), "{e}");
        assert!(
            paths.part.exists() && paths.have.exists(),
            "kept for a resume"
        );
        stop.store(false, Ordering::SeqCst);
        assert!(open_finished(&paths, "f", g, &hashes, Some(&stop)).is_ok());
    }

    #[test]
    fn a_foreign_part_is_refused_and_left_alone() {
        let dir = TempDir::new("part-foreign");
        let (_, g, hashes) = content();
        let paths = Paths::new(&dir.0, "f");
        // No .part.have at all.
        fs::create_dir(dir.0.join(WORK_DIR)).unwrap();
        fs::write(&paths.part, b"not yours").unwrap();
        let e = open(&paths, g, &hashes, None).unwrap_err();
        assert!(e.to_string().contains(".part"), "{e}");
        // A .part.have for other content.
        let other = identity(g, &[[9u8; 20]; 10]);
        save_have(&paths.have, &other, &Bitmap::new(10), "f").unwrap();
        assert!(open(&paths, g, &hashes, None).is_err());
        assert_eq!(fs::read(&paths.part).unwrap(), b"not yours");
        // Not a regular file.
        fs::remove_file(&paths.part).unwrap();
        fs::create_dir(&paths.part).unwrap();
        let e = open(&paths, g, &hashes, None).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }

    #[test]
    fn finish_moves_the_part_into_place_and_never_replaces_a_file() {
        let dir = TempDir::new("part-finish");
        let (data, g, hashes) = content();
        let paths = Paths::new(&dir.0, "f");
        let (file, _, _lock) = open(&paths, g, &hashes, None).unwrap();
        use std::os::unix::fs::FileExt;
        file.write_all_at(&data, 0).unwrap();
        finish(&paths, &file, true).unwrap();
        assert_eq!(fs::read(&paths.final_path).unwrap(), data);
        assert!(!paths.part.exists() && !paths.have.exists());
        assert!(open_finished(&paths, "f", g, &hashes, None).is_ok());
        // A second download whose final name is taken meanwhile keeps its .part.
        let (file, _, _) = open(&Paths::new(&dir.0, "f"), g, &hashes, None).unwrap();
        let e = finish(&paths, &file, true).unwrap_err();
        assert!(
            e.to_string().contains("appeared during the download"),
            "{e}"
        );
        assert!(paths.part.exists());
        assert_eq!(fs::read(&paths.final_path).unwrap(), data);
    }

    #[test]
    fn an_unnamed_file_gets_its_name_only_when_complete_and_never_replaces_one() {
        use std::os::unix::fs::FileExt;
        let dir = TempDir::new("part-unnamed");
        let (data, _, _) = content();
        let paths = Paths::new(&dir.0, "a/b/f");
        let (file, folder) = create_unnamed(&paths).expect("O_TMPFILE on this file system");
        file.write_all_at(&data, 0).unwrap();
        // Filled, not named: nothing in the folder, no work folder.
        let listed = |p: &Path| fs::read_dir(p).unwrap().count();
        assert_eq!(listed(&dir.0.join("a/b")), 0);
        assert!(!paths.work.exists());
        assert!(name_unnamed(&paths, &file, &folder, true).unwrap());
        assert_eq!(fs::read(&paths.final_path).unwrap(), data);
        assert_eq!(file.metadata().unwrap().nlink(), 1);
        // A second one under a taken name: refused, the first left as it is.
        let (other, folder) = create_unnamed(&paths).unwrap();
        other.write_all_at(b"other", 0).unwrap();
        assert!(!name_unnamed(&paths, &other, &folder, true).unwrap());
        assert_eq!(fs::read(&paths.final_path).unwrap(), data);
        // Dropped unnamed: gone without a trace.
        let dropped = create_unnamed(&Paths::new(&dir.0, "a/b/g")).unwrap();
        drop(dropped);
        assert_eq!(listed(&dir.0.join("a/b")), 1);
    }

    #[test]
    fn a_parked_unnamed_file_is_resumed_as_a_part_with_its_chunks() {
        use std::os::unix::fs::FileExt;
        let dir = TempDir::new("part-park");
        let (data, g, hashes) = content();
        let paths = Paths::new(&dir.0, "sub/f");
        let (file, _folder) = create_unnamed(&paths).unwrap();
        // Chunks 0 and 3 verified and written, the rest not.
        let mut have = Bitmap::new(g.count());
        for i in [0u32, 3] {
            let i = g.index(i).unwrap();
            let (at, len) = (g.offset(i) as usize, g.chunk_len(i) as usize);
            file.write_all_at(&data[at..at + len], at as u64).unwrap();
            have.set(i.get());
        }
        assert!(!park_unnamed(
            &paths,
            &file,
            g,
            &hashes,
            &Bitmap::new(g.count())
        ));
        assert!(park_unnamed(&paths, &file, g, &hashes, &have));
        assert!(
            !park_unnamed(&paths, &file, g, &hashes, &have),
            "never over a .part"
        );
        drop(file);
        assert_eq!(unfinished(&dir.0), ["sub/f"]);
        let (_, resumed, _lock) = open(&paths, g, &hashes, None).unwrap();
        assert_eq!(resumed, have);
    }

    #[test]
    fn an_unnamed_file_is_never_made_through_a_linked_folder() {
        let dir = TempDir::new("part-unnamed-link");
        let outside = TempDir::new("part-unnamed-outside");
        std::os::unix::fs::symlink(&outside.0, dir.0.join("sub")).unwrap();
        assert!(create_unnamed(&Paths::new(&dir.0, "sub/f")).is_none());
        // The download folder itself may be a link (the user's to name).
        let linked = dir.0.join("linked");
        std::os::unix::fs::symlink(&outside.0, &linked).unwrap();
        let paths = Paths::new(&linked, "f");
        let (file, folder) = create_unnamed(&paths).expect("through the user's own link");
        assert!(name_unnamed(&paths, &file, &folder, false).unwrap());
        assert!(outside.0.join("f").exists());
        // A folder swapped for a link between making the file and naming
        // it: the name still lands in the folder that was checked.
        let paths = Paths::new(&dir.0, "real/g");
        let (file, folder) = create_unnamed(&paths).unwrap();
        fs::rename(dir.0.join("real"), dir.0.join("moved")).unwrap();
        std::os::unix::fs::symlink(&outside.0, dir.0.join("real")).unwrap();
        assert!(name_unnamed(&paths, &file, &folder, false).unwrap());
        assert!(dir.0.join("moved/g").exists());
        assert!(!outside.0.join("g").exists(), "named through the link");
    }

    #[test]
    fn a_different_file_under_the_final_name_is_refused() {
        let dir = TempDir::new("part-final");
        let (mut data, g, hashes) = content();
        let paths = Paths::new(&dir.0, "f");
        data[5000] ^= 1;
        fs::write(&paths.final_path, &data).unwrap();
        assert!(open_finished(&paths, "f", g, &hashes, None).is_err());
        fs::write(&paths.final_path, &data[..100]).unwrap();
        assert!(open_finished(&paths, "f", g, &hashes, None).is_err());
    }

    #[test]
    fn every_accepted_name_gets_short_work_file_names() {
        let dir = Path::new("/d");
        let long = format!("{}/{}", "a".repeat(255), "b".repeat(255));
        for name in ["f", "sub/f.bin", long.as_str()] {
            let p = Paths::new(dir, name);
            assert_eq!(p.final_path, dir.join(name));
            for f in [&p.part, &p.have] {
                assert_eq!(f.parent(), Some(dir.join(WORK_DIR).as_path()));
                let n = f.file_name().unwrap().len();
                assert!(n + ".tmp".len() <= 60, "{}", f.display());
            }
            assert_eq!(part_path(dir, name), p.part);
            assert_eq!(have_path(dir, name), p.have);
        }
        assert_ne!(part_path(dir, "a"), part_path(dir, "b"));
    }

    #[test]
    fn the_work_folder_must_be_a_real_folder() {
        let dir = TempDir::new("workdir");
        let (_, g, hashes) = content();
        let elsewhere = dir.0.join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.0.join(WORK_DIR)).unwrap();
        let e = open(&Paths::new(&dir.0, "f"), g, &hashes, None).unwrap_err();
        assert!(e.to_string().contains("is not a folder"), "{e}");
        assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
    }

    /// Review 2, finding 7: an unfinished download's work folder moved
    /// elsewhere and linked back is refused on resume too, and not listed.
    #[test]
    fn a_resume_never_goes_through_a_linked_work_folder() {
        let dir = TempDir::new("workdir-resume");
        let (_, g, hashes) = content();
        let d = dir.0.join("d");
        fs::create_dir(&d).unwrap();
        let paths = Paths::new(&d, "f");
        drop(open(&paths, g, &hashes, None).unwrap());
        assert_eq!(unfinished(&d), vec!["f".to_string()]);
        let elsewhere = dir.0.join("elsewhere");
        fs::rename(d.join(WORK_DIR), &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, d.join(WORK_DIR)).unwrap();
        let part = elsewhere.join(paths.part.file_name().unwrap());
        let before = fs::metadata(&part).unwrap().modified().unwrap();
        let e = open(&paths, g, &hashes, None).unwrap_err();
        assert!(e.to_string().contains("is not a folder"), "{e}");
        assert_eq!(fs::metadata(&part).unwrap().modified().unwrap(), before);
        assert!(unfinished(&d).is_empty());
    }

    /// Review 2, finding 7: a `.part` that is also another file's name
    /// (a hard link) is refused, not written into.
    #[test]
    fn a_part_with_another_hard_link_is_refused() {
        let dir = TempDir::new("part-nlink");
        let (_, g, hashes) = content();
        let paths = Paths::new(&dir.0, "f");
        drop(open(&paths, g, &hashes, None).unwrap());
        let other = dir.0.join("precious");
        fs::write(&other, b"keep me").unwrap();
        fs::remove_file(&paths.part).unwrap();
        fs::hard_link(&other, &paths.part).unwrap();
        let e = open(&paths, g, &hashes, None).unwrap_err();
        assert!(e.to_string().contains("hard links"), "{e}");
        assert_eq!(fs::read(&other).unwrap(), b"keep me");
    }

    /// Review 2, finding 4: the final name's folder is another file system
    /// (a tmpfs mounted there; skipped where mounting is not allowed). The
    /// file is copied across and linked into place; a file that appears
    /// under the final name is never replaced.
    #[test]
    fn a_final_name_on_another_file_system_is_put_in_place() {
        let dir = TempDir::new("part-xdev");
        let (data, g, hashes) = content();
        let docs = dir.0.join("docs");
        fs::create_dir(&docs).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "none"])
            .arg(&docs)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("skipped: cannot mount a tmpfs here");
            return;
        }
        let umount = || {
            let _ = std::process::Command::new("umount").arg(&docs).status();
        };
        let result = std::panic::catch_unwind(|| {
            use std::os::unix::fs::FileExt;
            let paths = Paths::new(&dir.0, "docs/f");
            let (file, _, _lock) = open(&paths, g, &hashes, None).unwrap();
            file.write_all_at(&data, 0).unwrap();
            finish(&paths, &file, true).unwrap();
            assert_eq!(fs::read(&paths.final_path).unwrap(), data);
            assert!(!paths.part.exists() && !paths.have.exists());
            assert!(!docs.join(WORK_DIR).exists());
            // Again, with the final name taken meanwhile: refused, kept.
            fs::remove_file(&paths.final_path).unwrap();
            let (file, _, _lock) = open(&paths, g, &hashes, None).unwrap();
            file.write_all_at(&data, 0).unwrap();
            fs::write(&paths.final_path, b"theirs").unwrap();
            let e = finish(&paths, &file, true).unwrap_err().to_string();
            assert!(e.contains("is complete and kept as"), "{e}");
            assert_eq!(fs::read(&paths.final_path).unwrap(), b"theirs");
            assert!(paths.part.exists());
            assert!(!docs.join(WORK_DIR).exists());
        });
        umount();
        if let Err(p) = result {
            std::panic::resume_unwind(p);
        }
    }

    #[test]
    fn artifacts_are_recognised() {
        for n in [
            ".p2pfs/x",
            "d/.p2pfs/y",
            "a.part",
            "d/a.bin.part",
            "a.part.have",
            "a.part.have.tmp",
        ] {
            assert!(is_artifact(n), "{n}");
        }
        for n in [
            "a",
            "part",
            "a.partial",
            "a.have",
            "a.part.x",
            ".p2pfsx/a",
            "x.p2pfs",
        ] {
            assert!(!is_artifact(n), "{n}");
        }
    }
}
