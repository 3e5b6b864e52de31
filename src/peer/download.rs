//! One download: a worker thread per source, one assembler, one coordinator.
//!
//! Owns: the download engine and its on-disk state (`NAME.part`, the
//! preallocated file being filled, and `NAME.part.have`, the saved
//! have-bitmap that makes a restart resume instead of starting over).
//!
//! ```text
//!             locations (every ~1.5 s, and when a worker runs dry)
//!  tracker ─────────────────────────────┐
//!                                       ▼
//!                              ┌─ coordinator (caller's thread) ─┐
//!                              │ sources, availability, progress │
//!                              └──┬──────────▲──────────────▲────┘
//!              spawns / wakes     │          │ events       │ events
//!            ┌────────────────────┼──────┐   │              │
//!            ▼                    ▼      ▼   │              │
//!   worker 127.0.0.1:4001   worker …   worker …             │
//!   (own TCP connection, ≤ depth requests in flight,        │
//!    picks rarest-first under the picker lock,              │
//!    checks SHA-1)                                          │
//!            │ verified chunks (bounded channel)            │
//!            └──────────────────────────────► assembler ────┘
//!                                  pwrite at offset, mark have (now served),
//!                                  register with the tracker, save bitmap
//! ```
//!
//! Memory stays bounded by sources × (pipeline depth in the socket + one
//! chunk in hand) + the channel's few chunks, whatever the file size: no
//! whole-file buffer exists anywhere.
//!
//! Calls `wire`, `chunks`, and the peer's `client`, `picker` and `share`.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, Scope, ScopedJoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, bounded};
use log::{debug, info, warn};

use super::client::{self, Conn};
use super::picker::Picker;
use super::share::{PART_SUFFIX, ShareIndex, SharedFile};
use super::{PeerError, Result};
use crate::chunks::{self, Bitmap, Digest, Geometry};
use crate::sync::lock;
use crate::wire::{self, ErrorCode, Locations, Message};

pub use crate::limits::{
    GIVE_UP_AFTER, MAX_ACTIVE_SOURCES, MAX_HASH_FAILURES, PIPELINE_DEPTH, REFRESH_INTERVAL,
};
/// Read/write timeout of the coordinator's tracker queries.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(3);
/// The assembler asks for a background `fdatasync` after this many bytes
/// written since the last request (see `Engine::flush_behind`).
const FLUSH_BEHIND_BYTES: u64 = 64 << 20;
/// Suffix of the saved have-bitmap beside it.
pub const HAVE_SUFFIX: &str = ".part.have";

/// Tunables; `Default` gives the documented values.
#[derive(Debug, Clone)]
pub struct DownloadOptions {
    pub pipeline_depth: usize,
    pub refresh_interval: Duration,
    /// A source that leaves a request unanswered this long is dropped.
    pub io_timeout: Duration,
    pub max_hash_failures: u32,
    pub give_up_after: Duration,
    /// Wait before reconnecting to a source whose connection failed.
    pub retry_after: Duration,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        DownloadOptions {
            pipeline_depth: PIPELINE_DEPTH,
            refresh_interval: REFRESH_INTERVAL,
            io_timeout: client::IO_TIMEOUT,
            max_hash_failures: MAX_HASH_FAILURES,
            give_up_after: GIVE_UP_AFTER,
            retry_after: Duration::from_secs(2),
        }
    }
}

/// What the caller provides: where the tracker is, the share index to serve
/// verified chunks from, and how to tell the tracker about each chunk.
pub struct DownloadContext<'a> {
    pub tracker: SocketAddr,
    pub share: &'a ShareIndex,
    /// This peer's chunk server port, so it never downloads from itself.
    pub self_port: Option<u16>,
    /// Called once per verified chunk written (name, index).
    pub on_chunk: &'a (dyn Fn(&str, u32) + Sync),
    /// Called when many chunks became available at once (a resume, or a
    /// complete file found in place): register the whole file, not each chunk.
    pub on_file: &'a (dyn Fn(&str) + Sync),
    /// Set from another thread (e.g. on Ctrl-C) to stop the download; the
    /// verified chunks are kept for a resume.
    pub cancel: Option<&'a AtomicBool>,
}

/// A snapshot for progress displays.
#[derive(Debug, Clone)]
pub struct Progress {
    pub total_bytes: u64,
    /// Verified bytes on disk, including resumed ones.
    pub done_bytes: u64,
    pub chunks_done: u32,
    pub chunks_total: u32,
    pub active_sources: usize,
    pub elapsed: Duration,
    /// Bytes per second over the last few seconds.
    pub rate: f64,
}

/// What one source contributed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceStats {
    pub addr: SocketAddr,
    pub bytes: u64,
    pub chunks: u32,
    pub hash_failures: u32,
    /// Why it was dropped, if it was.
    pub dropped: Option<String>,
}

/// The result of a finished download.
#[derive(Debug, Clone)]
pub struct Summary {
    pub name: String,
    pub path: PathBuf,
    pub length: u64,
    pub chunks_total: u32,
    /// Chunks found verified on disk at start (resume).
    pub chunks_resumed: u32,
    /// Chunk bytes received over the network and written.
    pub bytes_downloaded: u64,
    /// Copies received twice in endgame and thrown away.
    pub duplicates: u32,
    pub elapsed: Duration,
    /// Sources that sent at least one chunk or were dropped, most bytes first.
    pub sources: Vec<SourceStats>,
}

/// Downloads `name` into `dir/name`. Returns only when the file is complete,
/// verified, flushed and renamed to its final name, or with the reason it
/// cannot be.
pub fn download(
    ctx: &DownloadContext<'_>,
    name: &str,
    dir: &Path,
    opts: &DownloadOptions,
    on_progress: &mut dyn FnMut(&Progress),
) -> Result<Summary> {
    let started = Instant::now();
    wire::validate_name(name)
        .map_err(|e| PeerError::Invalid(format!("invalid name {name:?}: {e}")))?;
    if ctx.share.get(name).is_some_and(|f| f.is_complete()) {
        return Err(PeerError::Invalid(format!(
            "{name} is already shared by this peer"
        )));
    }
    let mut tracker = Conn::connect(ctx.tracker, client::IO_TIMEOUT)?;
    let locs = match client::locate_on(&mut tracker, name, true) {
        Err(PeerError::Refused {
            code: ErrorCode::UnknownFile,
            ..
        }) => {
            return Err(PeerError::Download(format!(
                "no file named {name:?} on the network"
            )));
        }
        r => r?,
    };
    let hashes = locs.hashes.clone().unwrap_or_default();
    let geometry =
        Geometry::with_hashes(locs.length, locs.chunk_size, hashes.len()).map_err(|e| {
            PeerError::Protocol {
                who: ctx.tracker.to_string(),
                what: format!("bad file description: {e}"),
            }
        })?;
    // The same connection serves the refreshes, with shorter timeouts.
    let _ = tracker.stream().set_read_timeout(Some(REFRESH_TIMEOUT));
    let _ = tracker.stream().set_write_timeout(Some(REFRESH_TIMEOUT));
    let self_addr = ctx.self_port.and_then(|port| {
        let ip = tracker.stream().local_addr().ok()?.ip();
        Some(SocketAddr::new(ip.to_canonical(), port))
    });

    let paths = Paths::new(dir, name);
    if let Some(parent) = paths.final_path.parent() {
        fs::create_dir_all(parent).map_err(|e| PeerError::io("create folder", parent, e))?;
    }
    if paths.final_path.exists() {
        return already_there(ctx, name, &paths, geometry, hashes, started);
    }
    let (file, have) = open_part(&paths, geometry, &hashes)?;
    let resumed = have.count_ones();
    if resumed > 0 {
        info!(
            "{name}: resuming, {resumed} of {} chunks already verified on disk",
            geometry.count()
        );
    }
    let shared_file = Arc::new(SharedFile::partial(
        name.to_owned(),
        paths.part.clone(),
        file,
        geometry,
        hashes.clone(),
        have.clone(),
    ));
    ctx.share.insert(Arc::clone(&shared_file));
    // Already verified chunks are announced at once: we are a source of them.
    if resumed > 0 {
        (ctx.on_file)(name);
    }

    let engine = Engine {
        name,
        geometry,
        hashes: &hashes,
        file: &shared_file,
        picker: Mutex::new(Picker::new(have, seed())),
        stop: AtomicBool::new(false),
        opts,
        identity: identity(geometry, &hashes),
        paths: &paths,
        pool: ChunkPool::new(),
        flush_error: Mutex::new(None),
        assembler_checks: std::sync::atomic::AtomicUsize::new(0),
    };
    let outcome = engine.run(ctx, tracker, locs, self_addr, resumed, on_progress);
    let mut summary = match outcome {
        Ok(s) => s,
        Err(e) => {
            // Keep the verified chunks for a later resume, and keep serving
            // them: they are on disk and the tracker lists us for them.
            engine.save_have();
            return Err(e);
        }
    };
    if let Some(e) = lock(&engine.flush_error).take() {
        return Err(PeerError::io("write", &paths.part, e));
    }
    finish(&paths, &shared_file)?;
    // From now on it is served as a complete file under its final name.
    if let Ok(f) = shared_file.file().try_clone() {
        ctx.share.insert(Arc::new(SharedFile::complete(
            name.to_owned(),
            paths.final_path.clone(),
            f,
            geometry,
            hashes,
        )));
    }
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// The three paths a download uses.
struct Paths {
    final_path: PathBuf,
    part: PathBuf,
    have: PathBuf,
}

impl Paths {
    fn new(dir: &Path, name: &str) -> Paths {
        // `name` passed validate_name: relative, no `..`, so this stays in `dir`.
        let final_path = dir.join(name);
        let with = |suffix: &str| {
            let mut s = final_path.clone().into_os_string();
            s.push(suffix);
            PathBuf::from(s)
        };
        Paths {
            part: with(PART_SUFFIX),
            have: with(HAVE_SUFFIX),
            final_path,
        }
    }
}

/// The final file already exists: accept it if every chunk verifies (and
/// share it), refuse otherwise. Never overwrites a file.
fn already_there(
    ctx: &DownloadContext<'_>,
    name: &str,
    paths: &Paths,
    geometry: Geometry,
    hashes: Vec<Digest>,
    started: Instant,
) -> Result<Summary> {
    let p = &paths.final_path;
    // Like a shared file: no link followed, no FIFO waited on.
    let (file, _) = super::share::open_regular(p).map_err(|e| PeerError::io("open", p, e))?;
    let len = file
        .metadata()
        .map_err(|e| PeerError::io("stat", p, e))?
        .len();
    let good = len == geometry.length() && verify(&file, geometry, &hashes, None).is_full();
    if !good {
        return Err(PeerError::Download(format!(
            "{} already exists and is not the network's {name}; move it away or use another --dir",
            p.display()
        )));
    }
    ctx.share.insert(Arc::new(SharedFile::complete(
        name.to_owned(),
        p.clone(),
        file,
        geometry,
        hashes,
    )));
    (ctx.on_file)(name);
    Ok(Summary {
        name: name.to_owned(),
        path: p.clone(),
        length: geometry.length(),
        chunks_total: geometry.count(),
        chunks_resumed: geometry.count(),
        bytes_downloaded: 0,
        duplicates: 0,
        elapsed: started.elapsed(),
        sources: Vec::new(),
    })
}

/// Opens the `.part` file of an interrupted download of this very file, or
/// creates a new one, and works out which chunks in it are already good:
/// those the saved bitmap claims and whose hash checks out now. A `.part`
/// without a matching `.part.have` is somebody else's file: refused, never
/// overwritten.
fn open_part(paths: &Paths, geometry: Geometry, hashes: &[Digest]) -> Result<(File, Bitmap)> {
    let id = identity(geometry, hashes);
    let refuse = |why: &str| {
        PeerError::Download(format!(
            "{} {why}; move it away or use another --dir",
            paths.part.display()
        ))
    };
    let (file, claimed) = match fs::symlink_metadata(&paths.part) {
        Ok(m) if !m.file_type().is_file() => {
            return Err(refuse("exists and is not a regular file"));
        }
        Ok(_) => {
            let Some(claimed) = load_have(&paths.have, &id, geometry.count()) else {
                return Err(refuse(
                    "exists but is not an unfinished download of this file (no matching .part.have)",
                ));
            };
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                // Never through a link swapped in since the check above.
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(&paths.part)
                .map_err(|e| PeerError::io("open", &paths.part, e))?;
            (file, Some(claimed))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&paths.part)
                .map_err(|e| PeerError::io("create", &paths.part, e))?;
            // Mark the .part as ours at once, so a restart right away resumes.
            if let Err(e) = save_have(&paths.have, &id, &Bitmap::new(geometry.count())) {
                // Without its .have a later run would refuse the .part.
                let _ = fs::remove_file(&paths.part);
                return Err(PeerError::io("create", &paths.have, e));
            }
            (file, None)
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
        Some(c) => verify(&file, geometry, hashes, Some(&c)),
        None => Bitmap::new(geometry.count()),
    };
    Ok((file, have))
}

/// Hashes the chunks of `file` (only those set in `only`, if given) and
/// returns which match.
fn verify(file: &File, g: Geometry, hashes: &[Digest], only: Option<&Bitmap>) -> Bitmap {
    let mut good = Bitmap::new(g.count());
    let mut buf = Vec::new();
    for i in g.indices() {
        if only.is_some_and(|b| !b.get(i.get())) {
            continue;
        }
        if chunks::read_chunk(file, &g, i, &mut buf).is_ok()
            && chunks::sha1(&buf) == hashes[i.get() as usize]
        {
            good.set(i.get());
        }
    }
    good
}

/// Flush, fsync, move `.part` to the final name, drop the saved bitmap.
/// A hard link rather than a rename, so a file that appeared under the final
/// name meanwhile is never replaced.
fn finish(paths: &Paths, f: &SharedFile) -> Result<()> {
    f.file()
        .sync_all()
        .map_err(|e| PeerError::io("flush", &paths.part, e))?;
    match fs::hard_link(&paths.part, &paths.final_path) {
        Ok(()) => {
            fs::remove_file(&paths.part).map_err(|e| PeerError::io("remove", &paths.part, e))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(PeerError::Download(format!(
                "{} appeared during the download; the downloaded file is kept as {}",
                paths.final_path.display(),
                paths.part.display()
            )));
        }
        // File systems without hard links: the name was checked to be free.
        Err(_) => fs::rename(&paths.part, &paths.final_path)
            .map_err(|e| PeerError::io("rename", &paths.part, e))?,
    }
    let _ = fs::remove_file(&paths.have);
    if let Some(dir) = paths.final_path.parent() {
        // Make the new name durable; failure here loses nothing.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

// ---- The saved have-bitmap ------------------------------------------------
//
// `NAME.part.have`: "P2PFHAVE" | 20-byte identity (SHA-1 over length, chunk
// size and every chunk hash, so a bitmap for other content is never
// trusted) | bitmap bytes. Written to a temporary name and renamed.

const HAVE_MAGIC: &[u8; 8] = b"P2PFHAVE";

fn identity(g: Geometry, hashes: &[Digest]) -> Digest {
    let mut bytes = Vec::with_capacity(12 + hashes.len() * 20);
    bytes.extend_from_slice(&g.length().to_be_bytes());
    bytes.extend_from_slice(&g.chunk_size().to_be_bytes());
    for h in hashes {
        bytes.extend_from_slice(h);
    }
    chunks::sha1(&bytes)
}

fn load_have(path: &Path, id: &Digest, count: u32) -> Option<Bitmap> {
    let mut bytes = Vec::new();
    super::share::open_regular(path)
        .ok()?
        .0
        .take(8 + 20 + u64::from(count).div_ceil(8) + 1)
        .read_to_end(&mut bytes)
        .ok()?;
    if bytes.len() < 28 || &bytes[..8] != HAVE_MAGIC || bytes[8..28] != id[..] {
        return None;
    }
    Bitmap::from_bytes(count, &bytes[28..]).ok()
}

fn save_have(path: &Path, id: &Digest, have: &Bitmap) -> std::io::Result<()> {
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
    f.write_all(&bytes)?;
    fs::rename(&tmp, path)
}

fn seed() -> u64 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    t ^ (u64::from(std::process::id()) << 32)
}

// ---- The engine -------------------------------------------------------------

/// A chunk that passed its hash check, on its way to the assembler.
struct Verified {
    source: SocketAddr,
    index: u32,
    data: Vec<u8>,
    /// `Some`: not hashed yet; the assembler checks it and reports a bad
    /// chunk to this worker's [`Rejects`] (see `Engine::work_on`).
    check: Option<Arc<Rejects>>,
}

/// Decrements the assembler's pending-check count when dropped.
struct PendingCheck<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for PendingCheck<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Chunks of one source that failed verification, recorded by its worker
/// or by the assembler (for chunks it checked), read back by the worker.
#[derive(Default)]
struct Rejects {
    count: std::sync::atomic::AtomicU32,
    indices: Mutex<Vec<u32>>,
}

impl Rejects {
    /// Records a bad chunk; returns the number of bad chunks so far.
    fn record(&self, index: u32) -> u32 {
        lock(&self.indices).push(index);
        self.count.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn count(&self) -> u32 {
        self.count.load(Ordering::SeqCst)
    }
}

/// What workers and the assembler tell the coordinator.
enum Event {
    Written { source: SocketAddr, bytes: u32 },
    Duplicate,
    HashFailure { source: SocketAddr },
    Idle,
    WorkerDone { source: SocketAddr, end: WorkerEnd },
    Fatal(PeerError),
}

/// Why a worker stopped.
#[derive(Debug)]
enum WorkerEnd {
    /// The download is over (complete, or stopping).
    Finished,
    /// Connection failed, closed or timed out: may be retried later.
    Lost(String),
    /// Misbehaved (bad hashes, wrong replies): never used again.
    Banned(String),
}

/// The coordinator's and worker's shared view of one source.
struct Slot {
    addr: SocketAddr,
    have: Mutex<Bitmap>,
    /// A clone of the worker's socket, so stopping can unblock its read.
    stream: Mutex<Option<TcpStream>>,
    wake_tx: Sender<()>,
    wake_rx: Receiver<()>,
}

struct Active<'scope> {
    slot: Arc<Slot>,
    handle: ScopedJoinHandle<'scope, ()>,
}

/// What the coordinator remembers about every endpoint it has seen.
struct Known {
    have: Bitmap,
    retry_at: Instant,
    banned: bool,
    stats: SourceStats,
}

struct Engine<'a> {
    name: &'a str,
    geometry: Geometry,
    hashes: &'a [Digest],
    file: &'a Arc<SharedFile>,
    picker: Mutex<Picker>,
    stop: AtomicBool,
    opts: &'a DownloadOptions,
    identity: Digest,
    paths: &'a Paths,
    /// Chunk buffers handed back by the assembler for the workers to read
    /// into again.
    pool: ChunkPool,
    /// The first error of the background flush (see `flush_behind`).
    flush_error: Mutex<Option<std::io::Error>>,
    /// Unchecked chunks queued for (or being hashed by) the assembler.
    assembler_checks: std::sync::atomic::AtomicUsize,
}

/// Idle chunk buffers, recycled from the assembler to the workers. Without
/// it each chunk was read into a freshly allocated buffer and freed after
/// its write, so the allocator kept returning memory to the kernel and
/// faulting it back in (measured: ~44,000 minor page faults per GiB
/// downloaded, now a few hundred). Bounded: buffers beyond
/// [`POOL_BUFFERS`] are simply freed, so memory stays what the chunks in
/// flight need.
struct ChunkPool {
    tx: Sender<Vec<u8>>,
    rx: Receiver<Vec<u8>>,
}

/// Idle buffers kept: the chunk channel's 4 plus one being written and one
/// being read.
const POOL_BUFFERS: usize = 6;

impl ChunkPool {
    fn new() -> ChunkPool {
        let (tx, rx) = bounded(POOL_BUFFERS);
        ChunkPool { tx, rx }
    }

    /// A buffer to read the next chunk into (empty if none is idle).
    fn take(&self) -> Vec<u8> {
        self.rx.try_recv().unwrap_or_default()
    }

    /// Gives a buffer back (dropped if enough are idle).
    fn give(&self, buf: Vec<u8>) {
        if buf.capacity() > 0 {
            let _ = self.tx.try_send(buf);
        }
    }
}

impl Engine<'_> {
    fn save_have(&self) {
        if let Err(e) = save_have(&self.paths.have, &self.identity, &self.file.have()) {
            warn!("cannot save {}: {e}", self.paths.have.display());
        }
    }

    fn run(
        &self,
        ctx: &DownloadContext<'_>,
        tracker: Conn,
        first: Locations,
        self_addr: Option<SocketAddr>,
        resumed: u32,
        on_progress: &mut dyn FnMut(&Progress),
    ) -> Result<Summary> {
        let (chunk_tx, chunk_rx) = bounded::<Verified>(4);
        let (ev_tx, ev_rx) = bounded::<Event>(1024);
        // One flush request waiting at most; the flusher ends with the
        // assembler (its only sender).
        let (flush_tx, flush_rx) = bounded::<()>(1);
        thread::scope(|scope| {
            let flusher = thread::Builder::new()
                .name("flusher".into())
                .spawn_scoped(scope, move || self.flush_behind(flush_rx))
                .map_err(|e| {
                    PeerError::Download(format!("cannot start the flusher thread: {e}"))
                })?;
            let asm_ev = ev_tx.clone();
            let assembler = thread::Builder::new()
                .name("assembler".into())
                .spawn_scoped(scope, move || {
                    self.assemble(chunk_rx, asm_ev, flush_tx, ctx.on_chunk)
                })
                .map_err(|e| {
                    PeerError::Download(format!("cannot start the assembler thread: {e}"))
                })?;
            let mut co = Coordinator {
                engine: self,
                scope,
                tracker: Some(tracker),
                tracker_addr: ctx.tracker,
                self_addr,
                active: HashMap::new(),
                known: HashMap::new(),
                chunk_tx: Some(chunk_tx),
                ev_tx,
                bytes_downloaded: 0,
                duplicates: 0,
                rate: RateMeter::new(),
                started: Instant::now(),
                last_refresh: Instant::now(),
                refresh_wanted: false,
                last_progress: Instant::now(),
                warned_tracker: false,
                cancel: ctx.cancel,
                late_error: None,
                done_bytes: self.done_bytes(),
            };
            co.apply_locations(first);
            let result = co.drive(&ev_rx, on_progress);
            co.stop_all(&ev_rx);
            drop(co.chunk_tx.take());
            // The assembler ends when every chunk sender is gone; it sends at
            // most a few more events (the channel has room for them).
            if assembler.join().is_err() {
                warn!("the assembler thread panicked");
            }
            if flusher.join().is_err() {
                warn!("the flusher thread panicked");
            }
            // Everything reported before the threads stopped: the last
            // chunks' statistics, or a late write error.
            for ev in ev_rx.try_iter() {
                co.absorb(ev);
            }
            result?;
            if let Some(e) = co.late_error.take() {
                return Err(e);
            }
            if !lock(&self.picker).is_complete() {
                return Err(PeerError::Download(format!(
                    "{}: stopped before completion",
                    self.name
                )));
            }
            co.report(on_progress);
            let (bytes_downloaded, duplicates, sources) = co.outcome();
            Ok(Summary {
                name: self.name.to_owned(),
                path: self.paths.final_path.clone(),
                length: self.geometry.length(),
                chunks_total: self.geometry.count(),
                chunks_resumed: resumed,
                bytes_downloaded,
                duplicates,
                elapsed: Duration::ZERO,
                sources,
            })
        })
    }

    fn done_bytes(&self) -> u64 {
        let p = lock(&self.picker);
        p.have()
            .iter_ones()
            .filter_map(|i| self.geometry.index(i))
            .map(|i| u64::from(self.geometry.chunk_len(i)))
            .sum()
    }

    /// The "flusher" thread: on request, starts writing back what the
    /// assembler has written so far (`fdatasync`), so that the `fsync` at
    /// the end has little left to do: a download's disk writes overlap its
    /// transfer instead of following it (measured: 1 GiB, loopback, 0.30 s
    /// of the end-to-end time became ~0.05 s). Linux reports a writeback
    /// error to one `fsync` only, so the first error here is kept and fails
    /// the download: it must not be lost before the final `fsync`.
    fn flush_behind(&self, rx: Receiver<()>) {
        for () in rx {
            if let Err(e) = self.file.file().sync_data() {
                warn!("{}: flushing {}: {e}", self.name, self.paths.part.display());
                lock(&self.flush_error).get_or_insert(e);
                self.stop.store(true, Ordering::SeqCst);
            }
        }
    }

    /// The assembler: the only writer of the file.
    fn assemble(
        &self,
        rx: Receiver<Verified>,
        ev: Sender<Event>,
        flush: Sender<()>,
        on_chunk: &(dyn Fn(&str, u32) + Sync),
    ) {
        let mut last_save = Instant::now();
        let mut unflushed = 0u64;
        for v in rx {
            // An unchecked chunk counts as pending until it is written or
            // dropped: meanwhile the workers hash what they receive.
            let _pending = v
                .check
                .as_ref()
                .map(|_| PendingCheck(&self.assembler_checks));
            let Some(i) = self.geometry.index(v.index) else {
                self.pool.give(v.data);
                continue;
            };
            if self.file.has(i) {
                lock(&self.picker).complete(v.index);
                let _ = ev.send(Event::Duplicate);
                self.pool.give(v.data);
                continue;
            }
            if let Some(rejects) = &v.check {
                if chunks::sha1(&v.data) != self.hashes[v.index as usize] {
                    lock(&self.picker).release(v.index);
                    let n = rejects.record(v.index);
                    // Past the limit the worker is already banning the
                    // source; the count reported stays the limit.
                    if n <= self.opts.max_hash_failures {
                        let _ = ev.send(Event::HashFailure { source: v.source });
                    }
                    warn!(
                        "{}: chunk {} of {} failed verification ({n} of {} allowed)",
                        v.source, v.index, self.name, self.opts.max_hash_failures
                    );
                    self.pool.give(v.data);
                    continue;
                }
            }
            if let Err(e) = self
                .file
                .file()
                .write_all_at(&v.data, self.geometry.offset(i))
            {
                self.stop.store(true, Ordering::SeqCst);
                let _ = ev.send(Event::Fatal(PeerError::io("write", &self.paths.part, e)));
                // Drain so workers blocked on the channel can see `stop`.
                continue;
            }
            let len = v.data.len();
            self.pool.give(v.data);
            unflushed += len as u64;
            if unflushed >= FLUSH_BEHIND_BYTES {
                // Skipped while a flush is still queued: the next one
                // covers these bytes too.
                if flush.try_send(()).is_ok() {
                    unflushed = 0;
                }
            }
            self.file.mark_have(i);
            lock(&self.picker).complete(v.index);
            on_chunk(self.name, v.index);
            debug!(
                "chunk {} of {} from {} ({len} bytes)",
                v.index, self.name, v.source
            );
            let _ = ev.send(Event::Written {
                source: v.source,
                bytes: len as u32,
            });
            if last_save.elapsed() >= Duration::from_millis(500) {
                self.save_have();
                last_save = Instant::now();
            }
        }
    }

    /// One worker: a connection to one source, pipelined requests, hash
    /// checks.
    fn work(&self, slot: &Slot, chunk_tx: Sender<Verified>, ev: &Sender<Event>) -> WorkerEnd {
        let stream = match TcpStream::connect_timeout(&slot.addr, client::CONNECT_TIMEOUT) {
            Ok(s) => s,
            Err(e) => return WorkerEnd::Lost(format!("cannot connect: {e}")),
        };
        // Registered before the Hello, so stopping can interrupt a source
        // that accepts but never greets.
        *lock(&slot.stream) = stream.try_clone().ok();
        if self.stop.load(Ordering::SeqCst) {
            return WorkerEnd::Finished;
        }
        let mut conn = match Conn::from_stream(stream, self.opts.io_timeout) {
            Ok(c) => c,
            Err(e) => return WorkerEnd::Lost(e.to_string()),
        };
        let mut inflight: VecDeque<u32> = VecDeque::new();
        let end = self.work_on(&mut conn, slot, &chunk_tx, ev, &mut inflight);
        let mut p = lock(&self.picker);
        for i in inflight {
            p.release(i);
        }
        if self.stop.load(Ordering::SeqCst) {
            // Our socket was closed under us because the download is over.
            return WorkerEnd::Finished;
        }
        end
    }

    fn work_on(
        &self,
        conn: &mut Conn,
        slot: &Slot,
        chunk_tx: &Sender<Verified>,
        ev: &Sender<Event>,
        inflight: &mut VecDeque<u32>,
    ) -> WorkerEnd {
        let depth = self.opts.pipeline_depth.max(1);
        // Chunks this source sent wrong (found here or by the assembler):
        // ask another source for them.
        let rejects = Arc::new(Rejects::default());
        let mut avoid: Vec<u32> = Vec::new();
        // Chunks verified here and queued for the assembler but not yet
        // written: the picker still counts them in flight, so without this
        // the endgame would ask this same source for them again (measured:
        // ~5 needless chunks per single-source download).
        let mut handed: Vec<u32> = Vec::new();
        let mut batch = Vec::new();
        let mut spare = Vec::new();
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return WorkerEnd::Finished;
            }
            avoid.append(&mut lock(&rejects.indices));
            let failures = rejects.count();
            if failures >= self.opts.max_hash_failures {
                return WorkerEnd::Banned(format!("{failures} chunks failed verification"));
            }
            batch.clear();
            if inflight.len() < depth {
                let mut has = lock(&slot.have).clone();
                handed.retain(|&i| self.geometry.index(i).is_some_and(|c| !self.file.has(c)));
                for &i in inflight.iter().chain(avoid.iter()).chain(handed.iter()) {
                    has.clear(i);
                }
                let mut p = lock(&self.picker);
                while inflight.len() < depth {
                    // Endgame: only once every missing chunk is requested
                    // somewhere, and only one duplicate per idle worker.
                    let endgame = inflight.is_empty() && all_requested(&p);
                    let Some(pick) = p.pick(&has, endgame) else {
                        break;
                    };
                    has.clear(pick.index);
                    inflight.push_back(pick.index);
                    let req = Message::ChunkRequest {
                        name: self.name.to_owned(),
                        index: pick.index,
                    };
                    if req.encode(&mut batch).is_err() {
                        return WorkerEnd::Banned("cannot encode a request".into());
                    }
                }
            }
            if !batch.is_empty() {
                if let Err(e) = conn.send_raw(&batch) {
                    return WorkerEnd::Lost(e.to_string());
                }
            }
            if inflight.is_empty() {
                if lock(&self.picker).is_complete() {
                    return WorkerEnd::Finished;
                }
                let _ = ev.try_send(Event::Idle);
                let _ = slot.wake_rx.recv_timeout(Duration::from_millis(250));
                continue;
            }
            if spare.capacity() == 0 {
                spare = self.pool.take();
            }
            let reply = match conn.recv_into(&mut spare) {
                Ok(m) => m,
                Err(e) => return WorkerEnd::Lost(e.to_string()),
            };
            let Some(expected) = inflight.pop_front() else {
                continue;
            };
            match reply {
                Message::ChunkData { index, data } if index == expected => {
                    let Some(i) = self.geometry.index(index) else {
                        return WorkerEnd::Banned(format!(
                            "sent chunk {index}, which does not exist"
                        ));
                    };
                    // Hashing is the largest cost per chunk. When the
                    // assembler has no unchecked chunk pending it hashes
                    // this one, while this thread goes on receiving: one
                    // fast source then keeps two cores busy instead of one
                    // (measured: see docs/benchmarks.md, scenario 1). With
                    // several sources it rarely idles and workers hash.
                    // Never for a source that already sent a bad chunk.
                    let check = data.len() == self.geometry.chunk_len(i) as usize
                        && rejects.count() == 0
                        && self
                            .assembler_checks
                            .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
                            .is_ok();
                    let good = check
                        || (data.len() == self.geometry.chunk_len(i) as usize
                            && chunks::sha1(&data) == self.hashes[index as usize]);
                    if !good {
                        lock(&self.picker).release(index);
                        let n = rejects.record(index);
                        if n <= self.opts.max_hash_failures {
                            let _ = ev.send(Event::HashFailure { source: slot.addr });
                        }
                        warn!(
                            "{}: chunk {index} of {} failed verification ({n} of {} allowed)",
                            slot.addr, self.name, self.opts.max_hash_failures
                        );
                        if n >= self.opts.max_hash_failures {
                            return WorkerEnd::Banned(format!("{n} chunks failed verification"));
                        }
                        spare = data; // read the next chunk into it
                        continue;
                    }
                    if chunk_tx
                        .send(Verified {
                            source: slot.addr,
                            index,
                            data,
                            check: check.then(|| Arc::clone(&rejects)),
                        })
                        .is_err()
                    {
                        if check {
                            self.assembler_checks.fetch_sub(1, Ordering::SeqCst);
                        }
                        return WorkerEnd::Finished;
                    }
                    handed.push(index);
                }
                Message::ChunkData { index, .. } => {
                    lock(&self.picker).release(expected);
                    return WorkerEnd::Banned(format!(
                        "answered chunk {index} when chunk {expected} was next"
                    ));
                }
                Message::Error {
                    code: ErrorCode::NotHeld,
                    ..
                } => {
                    // Our view of the source was stale: forget that bit.
                    lock(&self.picker).release(expected);
                    lock(&slot.have).clear(expected);
                }
                Message::Error { code, message } => {
                    lock(&self.picker).release(expected);
                    return WorkerEnd::Lost(format!("refused: {code}: {message}"));
                }
                other => {
                    lock(&self.picker).release(expected);
                    return WorkerEnd::Banned(format!(
                        "sent {} instead of chunk data",
                        other.kind()
                    ));
                }
            }
        }
    }
}

/// True when no missing chunk is waiting to be requested: the endgame.
fn all_requested(p: &Picker) -> bool {
    let have = p.have();
    (0..have.len()).all(|i| have.get(i) || p.in_flight(i) > 0)
}

/// Bytes per second over a sliding window of a few seconds.
struct RateMeter {
    samples: VecDeque<(Instant, u64)>,
}

impl RateMeter {
    fn new() -> RateMeter {
        RateMeter {
            samples: VecDeque::new(),
        }
    }

    fn add(&mut self, bytes: u64) {
        let now = Instant::now();
        self.samples.push_back((now, bytes));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > Duration::from_secs(3))
        {
            self.samples.pop_front();
        }
    }

    fn rate(&self, elapsed: Duration) -> f64 {
        let window = elapsed.min(Duration::from_secs(3)).as_secs_f64().max(0.05);
        self.samples.iter().map(|(_, b)| *b).sum::<u64>() as f64 / window
    }
}

struct Coordinator<'scope, 'env: 'scope> {
    engine: &'env Engine<'env>,
    scope: &'scope Scope<'scope, 'env>,
    tracker: Option<Conn>,
    tracker_addr: SocketAddr,
    self_addr: Option<SocketAddr>,
    active: HashMap<SocketAddr, Active<'scope>>,
    known: HashMap<SocketAddr, Known>,
    chunk_tx: Option<Sender<Verified>>,
    ev_tx: Sender<Event>,
    bytes_downloaded: u64,
    duplicates: u32,
    rate: RateMeter,
    started: Instant,
    last_refresh: Instant,
    refresh_wanted: bool,
    last_progress: Instant,
    warned_tracker: bool,
    done_bytes: u64,
    cancel: Option<&'env AtomicBool>,
    late_error: Option<PeerError>,
}

type Outcome = (u64, u32, Vec<SourceStats>);

impl<'scope, 'env> Coordinator<'scope, 'env> {
    fn drive(
        &mut self,
        ev_rx: &Receiver<Event>,
        on_progress: &mut dyn FnMut(&Progress),
    ) -> Result<()> {
        let e = self.engine;
        let mut last_report: Option<Instant> = None;
        loop {
            if lock(&e.picker).is_complete() {
                return Ok(());
            }
            if let Some(err) = lock(&e.flush_error).take() {
                return Err(PeerError::io("write", &e.paths.part, err));
            }
            if self.cancel.is_some_and(|c| c.load(Ordering::SeqCst)) {
                return Err(PeerError::Download(format!(
                    "download of {} interrupted; run the same command again to resume",
                    e.name
                )));
            }
            let now = Instant::now();
            let since = now.duration_since(self.last_refresh);
            if since >= e.opts.refresh_interval
                || (self.refresh_wanted && since >= Duration::from_millis(250))
            {
                self.refresh();
            }
            if last_report.is_none_or(|t| now.duration_since(t) >= Duration::from_millis(200)) {
                self.report(on_progress);
                last_report = Some(now);
            }
            self.check_stuck()?;
            match ev_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(ev) => self.handle(ev)?,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    return Err(PeerError::Download("internal: event channel closed".into()));
                }
            }
            // Handle whatever else is queued without waiting.
            while let Ok(ev) = ev_rx.try_recv() {
                self.handle(ev)?;
            }
        }
    }

    fn handle(&mut self, ev: Event) -> Result<()> {
        match ev {
            Event::Written { source, bytes } => {
                self.bytes_downloaded += u64::from(bytes);
                self.done_bytes += u64::from(bytes);
                self.rate.add(u64::from(bytes));
                self.last_progress = Instant::now();
                if let Some(k) = self.known.get_mut(&source) {
                    k.stats.bytes += u64::from(bytes);
                    k.stats.chunks += 1;
                }
            }
            Event::Duplicate => self.duplicates += 1,
            Event::HashFailure { source } => {
                if let Some(k) = self.known.get_mut(&source) {
                    k.stats.hash_failures += 1;
                }
            }
            Event::Idle => self.refresh_wanted = true,
            Event::WorkerDone { source, end } => {
                if let Some(a) = self.active.remove(&source) {
                    let _ = a.handle.join();
                }
                let retry = Instant::now() + self.engine.opts.retry_after;
                if let Some(k) = self.known.get_mut(&source) {
                    match &end {
                        WorkerEnd::Finished => {}
                        WorkerEnd::Lost(why) => {
                            info!("{}: source {source} lost: {why}", self.engine.name);
                            k.retry_at = retry;
                            k.stats.dropped = Some(why.clone());
                        }
                        WorkerEnd::Banned(why) => {
                            warn!("{}: dropping source {source}: {why}", self.engine.name);
                            k.banned = true;
                            k.stats.dropped = Some(why.clone());
                        }
                    }
                }
                self.refresh_wanted = true;
            }
            Event::Fatal(e) => return Err(e),
        }
        Ok(())
    }

    fn check_stuck(&self) -> Result<()> {
        let e = self.engine;
        if self.last_progress.elapsed() < e.opts.give_up_after {
            return Ok(());
        }
        let p = lock(&e.picker);
        let missing: Vec<u32> = (0..p.have().len()).filter(|&i| !p.have().get(i)).collect();
        if missing.iter().any(|&i| p.in_flight(i) > 0) {
            return Ok(());
        }
        let unavailable = p.unavailable();
        let listed = if unavailable.is_empty() {
            &missing
        } else {
            &unavailable
        };
        Err(PeerError::Download(format!(
            "cannot finish {}: no reachable source for chunk(s) {} ({} of {} missing) after {} s without progress",
            e.name,
            list_indices(listed),
            missing.len(),
            e.geometry.count(),
            e.opts.give_up_after.as_secs()
        )))
    }

    /// Asks the tracker for fresh locations; keeps going without them if it
    /// is unreachable.
    fn refresh(&mut self) {
        self.last_refresh = Instant::now();
        self.refresh_wanted = false;
        if self.tracker.is_none() {
            // Short timeouts: the coordinator must not stall for long on an
            // unresponsive tracker; it simply tries again next refresh.
            match Conn::connect(self.tracker_addr, REFRESH_TIMEOUT) {
                Ok(c) => {
                    if self.warned_tracker {
                        info!("tracker {} reachable again", self.tracker_addr);
                        self.warned_tracker = false;
                    }
                    self.tracker = Some(c);
                }
                Err(err) => {
                    if !self.warned_tracker {
                        warn!("tracker unreachable ({err}); continuing with known sources");
                        self.warned_tracker = true;
                    }
                    self.spawn_ready();
                    return;
                }
            }
        }
        let Some(conn) = self.tracker.as_mut() else {
            return;
        };
        match client::locate_on(conn, self.engine.name, false) {
            Ok(l) => self.apply_locations(l),
            Err(PeerError::Refused {
                code: ErrorCode::UnknownFile,
                ..
            }) => {
                debug!(
                    "{}: the tracker lists no source right now",
                    self.engine.name
                );
                self.spawn_ready();
            }
            Err(err) => {
                warn!("tracker query failed ({err}); continuing with known sources");
                self.warned_tracker = true;
                self.tracker = None;
                self.spawn_ready();
            }
        }
    }

    fn apply_locations(&mut self, l: Locations) {
        let g = self.engine.geometry;
        if l.length != g.length() || l.chunk_size != g.chunk_size() || l.chunk_count != g.count() {
            warn!(
                "{}: the network now describes other content under this name; ignoring it",
                self.engine.name
            );
            return;
        }
        let mut listed = Vec::new();
        for s in l.sources {
            let addr = SocketAddr::new(s.addr.ip().to_canonical(), s.addr.port());
            if Some(addr) == self.self_addr || is_self(addr, self.self_addr) {
                continue;
            }
            let Ok(have) = Bitmap::from_bytes(g.count(), &s.have) else {
                continue;
            };
            if let Some(a) = self.active.get(&addr) {
                *lock(&a.slot.have) = have.clone();
                let _ = a.slot.wake_tx.try_send(());
            }
            let k = self.known.entry(addr).or_insert_with(|| Known {
                have: have.clone(),
                retry_at: Instant::now(),
                banned: false,
                stats: SourceStats {
                    addr,
                    bytes: 0,
                    chunks: 0,
                    hash_failures: 0,
                    dropped: None,
                },
            });
            k.have = have;
            listed.push(addr);
        }
        // Rarest first across the latest locations (a source just dropped
        // for lying does not count).
        {
            let mut p = lock(&self.engine.picker);
            p.set_availability(
                listed
                    .iter()
                    .filter_map(|a| self.known.get(a))
                    .filter(|k| !k.banned)
                    .map(|k| &k.have),
            );
        }
        for addr in listed {
            self.spawn_if_ready(addr);
        }
    }

    /// Restarts workers for known sources whose retry time has come.
    fn spawn_ready(&mut self) {
        let addrs: Vec<SocketAddr> = self.known.keys().copied().collect();
        for a in addrs {
            self.spawn_if_ready(a);
        }
    }

    fn spawn_if_ready(&mut self, addr: SocketAddr) {
        if self.active.contains_key(&addr)
            || self.active.len() >= MAX_ACTIVE_SOURCES
            || self.engine.stop.load(Ordering::SeqCst)
        {
            return;
        }
        let Some(k) = self.known.get(&addr) else {
            return;
        };
        if k.banned || Instant::now() < k.retry_at || k.have.count_ones() == 0 {
            return;
        }
        let Some(chunk_tx) = self.chunk_tx.clone() else {
            return;
        };
        let (wake_tx, wake_rx) = bounded(1);
        let slot = Arc::new(Slot {
            addr,
            have: Mutex::new(k.have.clone()),
            stream: Mutex::new(None),
            wake_tx,
            wake_rx,
        });
        let engine = self.engine;
        let ev = self.ev_tx.clone();
        let s = Arc::clone(&slot);
        let spawned = thread::Builder::new()
            .name(format!("worker-{addr}"))
            .spawn_scoped(self.scope, move || {
                let end = engine.work(&s, chunk_tx, &ev);
                let _ = ev.send(Event::WorkerDone {
                    source: s.addr,
                    end,
                });
            });
        match spawned {
            Ok(handle) => {
                debug!("{}: downloading from {addr}", engine.name);
                self.active.insert(addr, Active { slot, handle });
            }
            Err(e) => warn!("cannot start a worker for {addr}: {e}"),
        }
    }

    /// Stops every worker: flag, close its socket, wake it, join it.
    /// Stops every worker: flag, close its socket, wake it, and join it,
    /// while still draining events so a worker or the assembler blocked on
    /// a full channel can finish.
    fn stop_all(&mut self, ev_rx: &Receiver<Event>) {
        self.engine.stop.store(true, Ordering::SeqCst);
        for a in self.active.values() {
            if let Some(s) = lock(&a.slot.stream).as_ref() {
                let _ = s.shutdown(Shutdown::Both);
            }
            let _ = a.slot.wake_tx.try_send(());
        }
        while !self.active.is_empty() {
            match ev_rx.recv_timeout(Duration::from_millis(50)) {
                Ok(ev) => self.absorb(ev),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    let done: Vec<SocketAddr> = self
                        .active
                        .iter()
                        .filter(|(_, a)| a.handle.is_finished())
                        .map(|(k, _)| *k)
                        .collect();
                    for k in done {
                        if let Some(a) = self.active.remove(&k) {
                            let _ = a.handle.join();
                        }
                    }
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            }
        }
    }

    /// Handles an event after the main loop ended, keeping the first error.
    fn absorb(&mut self, ev: Event) {
        if let Err(e) = self.handle(ev) {
            self.late_error.get_or_insert(e);
        }
    }

    fn report(&self, on_progress: &mut dyn FnMut(&Progress)) {
        let chunks_done = lock(&self.engine.picker).have().count_ones();
        let elapsed = self.started.elapsed();
        // The picker lock is released: the callback may write to a terminal.
        on_progress(&Progress {
            total_bytes: self.engine.geometry.length(),
            done_bytes: self.done_bytes,
            chunks_done,
            chunks_total: self.engine.geometry.count(),
            active_sources: self.active.len(),
            elapsed,
            rate: self.rate.rate(elapsed),
        });
    }

    fn outcome(&self) -> Outcome {
        let mut sources: Vec<SourceStats> = self
            .known
            .values()
            .filter(|k| {
                k.stats.chunks > 0 || k.stats.dropped.is_some() || k.stats.hash_failures > 0
            })
            .map(|k| k.stats.clone())
            .collect();
        sources.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.addr.cmp(&b.addr)));
        (self.bytes_downloaded, self.duplicates, sources)
    }
}

/// Whether `addr` is this peer: same port, and the same host as seen by the
/// tracker (or both loopback, when everything runs on one machine).
fn is_self(addr: SocketAddr, me: Option<SocketAddr>) -> bool {
    let Some(me) = me else { return false };
    addr.port() == me.port()
        && (addr.ip() == me.ip() || (is_loopback(addr.ip()) && is_loopback(me.ip())))
}

fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// "3, 7, 9-12" for a sorted list of indices (at most a few dozen shown).
pub fn list_indices(v: &[u32]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < v.len() && parts.len() < 20 {
        let start = v[i];
        let mut end = start;
        while i + 1 < v.len() && v[i + 1] == end + 1 {
            i += 1;
            end = v[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    let mut s = parts.join(", ");
    if i < v.len() {
        s.push_str(", …");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_lists_are_compact() {
        assert_eq!(list_indices(&[3, 7, 9, 10, 11, 12]), "3, 7, 9-12");
        assert_eq!(list_indices(&[]), "");
        let many: Vec<u32> = (0..100).map(|i| i * 2).collect();
        assert!(list_indices(&many).ends_with(", …"));
    }

    #[test]
    fn have_file_round_trips_and_rejects_other_content() {
        let dir = std::env::temp_dir().join(format!("p2pfs-have-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.part.have");
        let g = Geometry::new(10_000, 1024).unwrap();
        let hashes = vec![[1u8; 20]; 10];
        let id = identity(g, &hashes);
        let mut b = Bitmap::new(10);
        b.set(3);
        b.set(9);
        save_have(&p, &id, &b).unwrap();
        assert_eq!(load_have(&p, &id, 10), Some(b));
        let other = identity(g, &[[2u8; 20]; 10]);
        assert_eq!(load_have(&p, &other, 10), None);
        assert_eq!(load_have(&p, &id, 17), None);
        fs::write(&p, b"garbage").unwrap();
        assert_eq!(load_have(&p, &id, 10), None);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn self_is_recognised() {
        let me: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert!(is_self("127.0.0.1:5000".parse().unwrap(), Some(me)));
        assert!(is_self("127.0.0.2:5000".parse().unwrap(), Some(me)));
        assert!(!is_self("127.0.0.1:5001".parse().unwrap(), Some(me)));
        assert!(!is_self("10.0.0.1:5000".parse().unwrap(), Some(me)));
        assert!(!is_self("127.0.0.1:5000".parse().unwrap(), None));
    }
}
