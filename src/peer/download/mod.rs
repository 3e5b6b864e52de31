//! One download: a worker thread per source, one assembler, one coordinator.
//!
//! Owns: the public entry point [`download`], its options, context, progress
//! and summary types, and the steps around the engine: ask the tracker what
//! the file is, accept a complete copy already in place, open or resume the
//! `.part`, run the engine, move the result into place and serve it.
//!
//! ```text
//!           locations (asked every ~1.5 s, and when a worker runs dry;
//!           a silent tracker costs its locator thread, never the rest;
//!           one locator per tracker, answers merged by the coordinator)
//!  tracker ◄──► locator ────────────────┐
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
//! One file per concern:
//! - `partfile`: the unfinished file and its saved bitmap in `.p2pfs/`
//!   (format, identity, resume verification, finishing into place) and
//!   [`partfile::is_artifact`].
//! - `engine`: the state the threads share, their messages, and starting
//!   and joining the threads.
//! - `coordinator`: sources, availability, workers, giving up.
//! - `locator`: location refreshes from the tracker, on their own thread.
//! - `worker`: one source's connection.
//! - `assembler`: writing, marking held, registering, saving, flushing.
//! - `rate`: the rate shown in progress displays.
//! - `small`: a set's files of up to 16 MiB without the engine, over
//!   connections each `batch-N` thread keeps for the whole set, into an
//!   unnamed file named only when complete.
//!
//! Memory stays bounded by sources × (pipeline depth in the socket + one
//! chunk in hand) + the channel's few chunks, whatever the file size: no
//! whole-file buffer exists anywhere.
//!
//! Calls `wire`, `chunks`, and the peer's `client`, `picker` and `share`.

mod assembler;
pub mod batch;
mod coordinator;
mod engine;
mod locator;
pub mod partfile;
mod rate;
mod small;
mod worker;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use log::{info, warn};

use super::client;
use super::ratelimit::RateLimiter;
use super::share::{ShareIndex, SharedFile};
use super::{PeerError, Result};
use crate::chunks::{ContentId, Digest, Geometry};
use crate::sync::lock;
use crate::wire::{self, ErrorCode, Locations};
use engine::Engine;
use partfile::Paths;

pub use crate::limits::{
    GIVE_UP_AFTER, MAX_ACTIVE_SOURCES, MAX_HASH_FAILURES, NEW_SOURCE_TIMEOUT, PIPELINE_DEPTH,
    REFRESH_INTERVAL,
};
pub use coordinator::list_indices;
pub use partfile::{
    HAVE_SUFFIX, PART_SUFFIX, WORK_DIR, have_path, is_artifact, part_path, unfinished,
};
pub use small::{
    Carried, Interrupt, PoolGuard, Unnamed, hold_until_named, stop_deferring, take_carried,
    take_unnamed,
};

/// Tunables; `Default` gives the documented values.
#[derive(Debug, Clone)]
pub struct DownloadOptions {
    pub pipeline_depth: usize,
    pub refresh_interval: Duration,
    /// A source that leaves a request unanswered this long is dropped.
    pub io_timeout: Duration,
    /// A source that has not delivered to this download yet must accept
    /// and answer Hello within this long.
    pub new_source_timeout: Duration,
    pub max_hash_failures: u32,
    pub give_up_after: Duration,
    /// Wait before reconnecting to a source whose connection failed.
    pub retry_after: Duration,
    /// Paces every chunk byte read from a source, by every download given
    /// (a clone of) these options: one limit for all files and sources of
    /// a process. Unlimited by default.
    pub download_limit: Arc<RateLimiter>,
    /// The content id the file must have (`peer get --id`): content with
    /// any other id is refused before anything is written, and with
    /// several trackers the one describing this content is believed.
    pub expect_id: Option<ContentId>,
    /// Fsync the folder of the final name once the file is linked there,
    /// so the new name survives a crash. A set of files turns it off and
    /// syncs each folder once at the end instead (`batch::sync_folders`).
    pub sync_folder: bool,
}

impl DownloadOptions {
    /// Most sources one download takes chunks from at once: with a download
    /// limit, few enough that each still gets about twice
    /// `MIN_CHUNK_TRANSFER_RATE`, the slowest a source's `ChunkData` may be
    /// read before it gives up on us (and we on it).
    pub fn max_sources(&self) -> usize {
        match self.download_limit.rate() {
            None => MAX_ACTIVE_SOURCES,
            Some(r) => {
                let fit = r / (2 * crate::limits::MIN_CHUNK_TRANSFER_RATE);
                usize::try_from(fit)
                    .unwrap_or(usize::MAX)
                    .clamp(1, MAX_ACTIVE_SOURCES)
            }
        }
    }
}

impl Default for DownloadOptions {
    fn default() -> Self {
        DownloadOptions {
            pipeline_depth: PIPELINE_DEPTH,
            refresh_interval: REFRESH_INTERVAL,
            io_timeout: client::IO_TIMEOUT,
            new_source_timeout: NEW_SOURCE_TIMEOUT,
            max_hash_failures: MAX_HASH_FAILURES,
            give_up_after: GIVE_UP_AFTER,
            retry_after: Duration::from_secs(2),
            download_limit: Arc::new(RateLimiter::unlimited()),
            expect_id: None,
            sync_folder: true,
        }
    }
}

/// What the caller provides: where the trackers are, the share index to
/// serve verified chunks from, and how to tell the trackers about each chunk.
pub struct DownloadContext<'a> {
    /// Every tracker to ask (at least one). Each is asked at the start and
    /// by its own locator thread afterwards; their sources are merged.
    pub trackers: &'a [SocketAddr],
    pub share: &'a Arc<ShareIndex>,
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
    /// Strikes: chunks it sent that failed verification (hash, length, or
    /// not the chunk asked).
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

/// What the tracker says the file is.
struct Described {
    /// Its content id.
    id: ContentId,
    /// Trackers left out (silent, or describing other content).
    others: usize,
    locations: Locations,
    geometry: Geometry,
    hashes: Vec<Digest>,
}

/// Downloads `name` into `dir/name`. Returns only when the file is complete,
/// verified, flushed and renamed to its final name, or with the reason it
/// cannot be; except on a set's `batch-N` thread whose pool defers naming
/// (`small::PoolGuard::install`), where a file of the fast path comes back
/// `Ok` complete and verified but still to be named by the set's finisher
/// ([`take_unnamed`]). A failed download keeps its `.part` for a resume, except
/// one that gave up with no chunk verified: that `.part` is removed
/// ([`NOTHING_KEPT`]).
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
    // A small file of a set, over the set's kept connections.
    if let Some(r) = small::try_fetch(ctx, name, dir, opts, on_progress) {
        return r;
    }
    let mut r = by_engine(ctx, name, dir, opts, on_progress, started);
    // What the fast path fetched before it left the file to the engine
    // counts too: fetched now, not found on disk.
    if let (Some(c), Ok(s)) = (small::take_carried(name), r.as_mut()) {
        c.add_to(s);
    }
    r
}

/// [`download`] by the engine (after the fast path, if it was tried),
/// from `started`.
fn by_engine(
    ctx: &DownloadContext<'_>,
    name: &str,
    dir: &Path,
    opts: &DownloadOptions,
    on_progress: &mut dyn FnMut(&Progress),
    started: Instant,
) -> Result<Summary> {
    if cancelled(ctx) {
        // Stopped before the engine started (the fast path may have been
        // cut short, its verified chunks kept as a `.part`): nothing more
        // is created.
        return Err(PeerError::Download(format!(
            "download of {name} interrupted; run the same command again to fetch it"
        )));
    }
    let (d, local_ip) = describe_cancellable(ctx.trackers, name, opts.expect_id, ctx.cancel)?;
    // Before anything is created on disk: not even the folders.
    if let Some(want) = opts.expect_id {
        check_pinned(name, want, d.id, d.others)?;
    }
    let self_addr = ctx.self_port.map(|port| SocketAddr::new(local_ip, port));
    let paths = Paths::new(dir, name);
    paths.make_parent_dirs()?;
    if paths.final_path.exists() {
        return already_there(ctx, name, &paths, d, started);
    }
    // Held until this function returns, whatever happens.
    let (file, have, _lock) = partfile::open(&paths, d.geometry, &d.hashes, ctx.cancel)?;
    let resumed = have.count_ones();
    if resumed > 0 {
        info!(
            "{name}: resuming, {resumed} of {} chunks already verified on disk",
            d.geometry.count()
        );
    }
    let shared = Arc::new(SharedFile::partial(
        name.to_owned(),
        paths.part.clone(),
        file,
        d.geometry,
        d.hashes.clone(),
        have,
    ));
    ctx.share.insert(Arc::clone(&shared));
    // Already verified chunks are announced at once: we are a source of them.
    if resumed > 0 {
        (ctx.on_file)(name);
    }
    let engine = Engine::new(name, &d.hashes, &shared, opts, &paths);
    let run = engine.run(ctx, d.locations, self_addr, resumed, on_progress);
    let mut summary = run.map_err(|e| match e {
        // Gave up with nothing verified: the (possibly large, sparse)
        // `.part` holds nothing worth resuming, so it goes, and the
        // message promises no resume. Not when stopped on request (that
        // message says how to resume) nor on a local I/O failure.
        PeerError::Download(why) if shared.have().count_ones() == 0 && !cancelled(ctx) => {
            ctx.share.remove(name);
            paths.discard();
            PeerError::Download(format!("{why}; {NOTHING_KEPT}"))
        }
        e => {
            // Keep the verified chunks for a later resume, and keep serving
            // them: they are on disk and the tracker lists us for them.
            engine.save_have();
            e
        }
    })?;
    if let Some(e) = lock(&engine.flush_error).take() {
        return Err(PeerError::io("write", &paths.part, e));
    }
    put_in_place(ctx, name, &paths, &shared, d.hashes, opts.sync_folder)?;
    if d.geometry.count() == 0 {
        // An empty file has no chunk to register one by one: register the
        // file, so this peer is listed (and seeds it) like any holder.
        (ctx.on_file)(name);
    }
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// What a download that gave up having verified no chunk adds to its
/// error: its `.part` was removed, there is nothing to resume.
pub const NOTHING_KEPT: &str = "no chunk was verified, so nothing was kept";

fn cancelled(ctx: &DownloadContext<'_>) -> bool {
    ctx.cancel.is_some_and(|c| c.load(Ordering::SeqCst))
}

/// Asks every tracker at once where `name` is and what it is (length,
/// chunk size, hashes): the first tracker (in the order given) that knows
/// the name says what the file is, and the sources of every tracker that
/// agrees are merged. Also returns the local IP this host reached that
/// tracker from. Only when no tracker answers is it an error.
/// [`describe`], given up at once when `cancel` is set: the query runs on a
/// thread of its own, so a tracker that accepts and never answers cannot
/// hold a stopped command for its I/O timeout. That thread is left to end
/// by its own timeouts (it holds nothing of the download).
fn describe_cancellable(
    trackers: &[SocketAddr],
    name: &str,
    pin: Option<ContentId>,
    cancel: Option<&AtomicBool>,
) -> Result<(Described, IpAddr)> {
    let Some(cancel) = cancel else {
        return describe(trackers, name, pin);
    };
    let (tx, rx) = crossbeam_channel::bounded(1);
    let (t, n) = (trackers.to_vec(), name.to_owned());
    std::thread::Builder::new()
        .name("describe".into())
        .spawn(move || {
            let _ = tx.send(describe(&t, &n, pin));
        })
        .map_err(|e| PeerError::Download(format!("cannot start a thread: {e}")))?;
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(r) => return r,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                if cancel.load(Ordering::SeqCst) {
                    return Err(PeerError::Download(format!(
                        "download of {name} interrupted while asking the tracker about it"
                    )));
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                return Err(PeerError::Download(
                    "internal: the tracker query ended".into(),
                ));
            }
        }
    }
}

fn describe(
    trackers: &[SocketAddr],
    name: &str,
    pin: Option<ContentId>,
) -> Result<(Described, IpAddr)> {
    let merged = match client::locate_all_pinned(trackers, name, true, pin) {
        Err(PeerError::Refused {
            code: ErrorCode::UnknownFile,
            ..
        }) => {
            return Err(PeerError::NotFound(format!(
                "no file named {name:?} on the network"
            )));
        }
        r => r?,
    };
    for (t, e) in &merged.failed {
        warn!(
            "{name}: tracker left out ({}); going on with the others",
            client::about(*t, e)
        );
    }
    let (locations, ip) = merged.value;
    let hashes = locations.hashes.clone().unwrap_or_default();
    let geometry = Geometry::with_hashes(locations.length, locations.chunk_size, hashes.len())
        .map_err(|e| PeerError::Protocol {
            who: "the tracker".to_string(),
            what: format!("bad file description: {e}"),
        })?;
    let d = Described {
        id: ContentId::compute(geometry.length(), geometry.chunk_size(), &hashes),
        others: merged.failed.len(),
        locations,
        geometry,
        hashes,
    };
    Ok((d, ip))
}

/// Refuses content whose id (`got`) is not `want` (`--id`), naming both
/// ids; `others` trackers were left out (they may describe other content).
/// The prompt's `get --id` checks with it too, before starting a download.
pub fn check_pinned(name: &str, want: ContentId, got: ContentId, others: usize) -> Result<()> {
    if got == want {
        return Ok(());
    }
    let others = match others {
        0 => String::new(),
        _ => "; no tracker that answered has content of that id under the name".into(),
    };
    Err(PeerError::NotFound(format!(
        "{name:?} on the network has content id {}, not {want} as given with --id{others}; \
         refused, nothing was written",
        got
    )))
}

/// Moves the finished `.part` into place; from then on it is served as a
/// complete file under its final name.
fn put_in_place(
    ctx: &DownloadContext<'_>,
    name: &str,
    paths: &Paths,
    shared: &SharedFile,
    hashes: Vec<Digest>,
    sync_folder: bool,
) -> Result<()> {
    partfile::finish(paths, shared.file(), sync_folder)?;
    if let Ok(f) = shared.file().try_clone() {
        ctx.share.insert(Arc::new(SharedFile::finished(
            name.to_owned(),
            paths.final_path.clone(),
            f,
            *shared.geometry(),
            hashes,
        )));
    }
    Ok(())
}

/// The final file already exists: accept it if every chunk verifies (and
/// share it), refuse otherwise. Never overwrites a file.
fn already_there(
    ctx: &DownloadContext<'_>,
    name: &str,
    paths: &Paths,
    d: Described,
    started: Instant,
) -> Result<Summary> {
    let file = partfile::open_finished(paths, name, d.geometry, &d.hashes, ctx.cancel)?;
    let p = &paths.final_path;
    ctx.share.insert(Arc::new(SharedFile::finished(
        name.to_owned(),
        p.clone(),
        file,
        d.geometry,
        d.hashes,
    )));
    (ctx.on_file)(name);
    Ok(Summary {
        name: name.to_owned(),
        path: p.clone(),
        length: d.geometry.length(),
        chunks_total: d.geometry.count(),
        chunks_resumed: d.geometry.count(),
        bytes_downloaded: 0,
        duplicates: 0,
        elapsed: started.elapsed(),
        sources: Vec::new(),
    })
}
