//! The fast path for the small files of a set: a file of at most
//! [`SMALL_FILE_MAX_BYTES`] fetched on its `batch-N` thread, without the
//! engine's threads and connections.
//!
//! Owns: the connections a `batch-N` thread keeps open for its whole set
//! ([`Pool`], installed for the thread by [`PoolGuard`]): one to each
//! tracker, asked one Locate with hashes per file, and one greeted
//! connection per source endpoint (a `ChunkRequest` names its file, so one
//! connection serves every file that peer holds); the set's [`Interrupt`],
//! which shuts every kept connection at once when the set is cancelled, so
//! a Ctrl-C never waits for a reply; [`try_fetch`]; and a file fetched but
//! not yet named ([`Unnamed`], left in the pool for [`take_unnamed`] when
//! the pool defers naming, and named on this thread otherwise).
//!
//! A file goes like this. The trackers' answers are merged (the first that
//! knows the name says what it is, as for the engine; with `--id`, only
//! answers of that content count; with several trackers each gets
//! `TRACKER_GRACE`). Its chunks are asked rarest first of up to
//! `SMALL_FILE_SOURCES` sources listed as holding them, `PIPELINE_DEPTH`
//! requests in flight per source, the replies read from each source in
//! turn, so several sources stream at the same time. A source gets chunks
//! in inverse proportion to the time it took per chunk so far on this
//! thread (faster peers are used more; one not tried yet goes first). Each
//! chunk is verified (length and SHA-1) and written into an unnamed file in
//! the final folder (`partfile::create_unnamed`), shared and registered at
//! once (a file of several chunks is served from that handle while it
//! fills); the file gets its name only when complete, by
//! [`Unnamed::finish`] (`partfile::name_unnamed`: fsync, then a hard link
//! that never replaces a file), which runs on the set's finisher (`batch`,
//! which takes the file through [`take_unnamed`]) when the pool defers
//! naming, and on this thread otherwise. So a small file needs one inode,
//! a kill leaves nothing to clean up (it is fetched again whole), and with
//! a finisher, fetching never waits for the disk.
//!
//! A source that sends a bad chunk is not asked again by this thread; one
//! that cannot be connected to is left alone for `SMALL_SOURCE_BACKOFF`;
//! one that answers `NotHeld`, `Busy` or fails, or takes longer than
//! `SMALL_FILE_PATIENCE` plus the chunk's length at `SMALL_FILE_MIN_RATE`
//! for one reply, is not asked again for this file; the file as a whole has
//! that patience for its length once per round (no limit under a download
//! limit), however its replies trickle in. Whatever this path cannot finish (a larger file, no
//! tracker answer, a chunk no source sent, the time up, a `.part` to
//! resume, a file already in place, a system without unnamed files) is
//! left to the engine, which then applies every rule of its own; the
//! chunks verified so far are kept as its `.part` (`partfile::park_unnamed`)
//! so it goes on from them. A file that appeared under the name meanwhile
//! is left to the engine's check of a file in place, with nothing kept.
//!
//! Calls `wire`, `chunks`, the peer's `client` and `share`, `net::client`
//! (the read gate) and the download's `partfile` and `coordinator`
//! (`is_self`).

use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::debug;

use super::partfile::{self, Paths};
use super::{DownloadContext, DownloadOptions, Progress, SourceStats, Summary};
use crate::chunks::{self, Bitmap, ChunkIndex, Digest, Geometry};
use crate::limits::{
    KEPT_IDLE, PIPELINE_DEPTH, SMALL_FILE_MAX_BYTES, SMALL_FILE_MIN_RATE, SMALL_FILE_PATIENCE,
    SMALL_FILE_ROUNDS, SMALL_FILE_SOURCES, SMALL_POOL_SOURCES, SMALL_SOURCE_BACKOFF, TRACKER_GRACE,
};
use crate::net::client::ReadGate;
use crate::peer::client::{self, Conn};
use crate::peer::ratelimit::RateLimiter;
use crate::peer::share::{ShareIndex, SharedFile};
use crate::peer::{PeerError, Result};
use crate::sync::lock;
use crate::wire::{Locations, Message};

/// The kept connections of every pool of one set, by (pool, address), so
/// that [`Interrupt::fire`] can shut them all from the thread that sees
/// the set cancelled.
#[derive(Default)]
pub struct Interrupt {
    streams: Mutex<HashMap<Key, TcpStream>>,
    fired: AtomicBool,
    pools: AtomicUsize,
}

impl Interrupt {
    /// Shuts every kept connection: a reply being waited for ends at once
    /// in an error, and no connection is kept after this.
    pub fn fire(&self) {
        self.fired.store(true, Ordering::SeqCst);
        for (_, s) in lock(&self.streams).drain() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn add(&self, key: Key, s: &TcpStream) {
        let Ok(clone) = s.try_clone() else { return };
        let mut streams = lock(&self.streams);
        // Checked under the lock, so a connection kept after `fire` is shut.
        if self.fired.load(Ordering::SeqCst) {
            let _ = clone.shutdown(Shutdown::Both);
        } else {
            streams.insert(key, clone);
        }
    }

    fn remove(&self, key: Key) {
        lock(&self.streams).remove(&key);
    }
}

/// A kept connection: (pool, tracker or source, address). A tracker and a
/// source may share an address (a tracker that lists itself).
type Key = (usize, Role, SocketAddr);

/// Whom a kept connection is to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Role {
    Tracker,
    Source,
}

/// A kept connection and when it was last used: one idle for
/// [`KEPT_IDLE`] is made again rather than reused, as the other side
/// closes idle connections (the tracker after `TRACKER_IDLE_TIMEOUT`, a
/// peer after `PEER_IDLE_TIMEOUT`).
struct Kept {
    conn: Conn,
    used: Instant,
    /// The read timeout last set on it (set again only when it would
    /// change by more than [`TIMEOUT_SLACK`]).
    timeout: Duration,
}

/// How far a kept connection's read timeout may be from the one wanted
/// before it is set again: a system call per reply saved, a deadline
/// overrun by at most this.
const TIMEOUT_SLACK: Duration = Duration::from_millis(250);

/// The connections one `batch-N` thread keeps for its set, and what it
/// learnt of the sources.
pub(super) struct Pool {
    id: usize,
    interrupt: Arc<Interrupt>,
    trackers: HashMap<SocketAddr, Kept>,
    /// Trackers that could not be reached (or, with several, did not
    /// answer within `TRACKER_GRACE`): not asked again by this thread.
    unreachable: HashSet<SocketAddr>,
    /// At most [`SMALL_POOL_SOURCES`], the least recently used closed first.
    sources: HashMap<SocketAddr, Kept>,
    /// Seconds per chunk each source took, smoothed; how chunks are shared
    /// out.
    cost: HashMap<SocketAddr, f64>,
    /// Sources that sent a chunk that failed verification.
    liars: HashSet<SocketAddr>,
    /// Sources that could not be connected to (or greeted), and until
    /// when they are not asked ([`SMALL_SOURCE_BACKOFF`]).
    backoff: HashMap<SocketAddr, Instant>,
    /// The chunk buffer, reused from reply to reply.
    spare: Vec<u8>,
    /// The file last fetched, not named yet ([`take_unnamed`]).
    unnamed: Option<Unnamed>,
    /// Whether complete files are left unnamed for the set's finisher
    /// rather than named on this thread.
    defer: bool,
    /// What was fetched of the file last left to the engine
    /// ([`take_carried`]).
    carried: Option<Carried>,
}

thread_local! {
    static POOL: RefCell<Option<Pool>> = const { RefCell::new(None) };
}

/// Installs a [`Pool`] for the current thread while it lives; its
/// connections close when it is dropped (the end of the thread's files).
pub struct PoolGuard(());

impl PoolGuard {
    /// With `defer`, a file fetched on this thread is left to be named by
    /// the set's finisher ([`take_unnamed`]); without, it is named here
    /// before `download` returns.
    pub fn install(interrupt: Arc<Interrupt>, defer: bool) -> PoolGuard {
        let id = interrupt.pools.fetch_add(1, Ordering::SeqCst);
        let pool = Pool {
            id,
            interrupt,
            trackers: HashMap::new(),
            unreachable: HashSet::new(),
            sources: HashMap::new(),
            cost: HashMap::new(),
            liars: HashSet::new(),
            backoff: HashMap::new(),
            spare: Vec::new(),
            unnamed: None,
            defer,
            carried: None,
        };
        POOL.with(|p| *p.borrow_mut() = Some(pool));
        PoolGuard(())
    }
}

impl Drop for PoolGuard {
    fn drop(&mut self) {
        if let Some(mut pool) = POOL.with(|p| p.borrow_mut().take()) {
            if let Some(u) = pool.unnamed.take() {
                let _ = u.finish();
            }
            let trackers: Vec<SocketAddr> = pool.trackers.keys().copied().collect();
            let sources: Vec<SocketAddr> = pool.sources.keys().copied().collect();
            trackers
                .into_iter()
                .for_each(|a| pool.forget(Role::Tracker, a));
            sources
                .into_iter()
                .for_each(|a| pool.forget(Role::Source, a));
        }
    }
}

/// One file of a set by the fast path, when this thread has a pool and the
/// file is small: `None` leaves it to the engine (with the verified chunks
/// as its `.part` to resume, if any).
pub(super) fn try_fetch(
    ctx: &DownloadContext<'_>,
    name: &str,
    dir: &Path,
    opts: &DownloadOptions,
    on_progress: &mut dyn FnMut(&Progress),
) -> Option<Result<Summary>> {
    if cancelled(ctx) {
        return None;
    }
    let mut pool = POOL.with(|p| p.borrow_mut().take())?;
    let r = fetch_with(&mut pool, ctx, name, dir, opts, on_progress);
    POOL.with(|p| *p.borrow_mut() = Some(pool));
    r
}

fn cancelled(ctx: &DownloadContext<'_>) -> bool {
    ctx.cancel.is_some_and(|c| c.load(Ordering::SeqCst))
}

/// What a file is and who holds which of its chunks.
struct Plan {
    g: Geometry,
    hashes: Vec<Digest>,
    /// Sources (never this peer) with the chunks each is listed for.
    holders: Vec<(SocketAddr, Bitmap)>,
}

fn fetch_with(
    pool: &mut Pool,
    ctx: &DownloadContext<'_>,
    name: &str,
    dir: &Path,
    opts: &DownloadOptions,
    on_progress: &mut dyn FnMut(&Progress),
) -> Option<Result<Summary>> {
    let started = Instant::now();
    let plan = pool.locate(ctx, name, opts)?;
    let g = plan.g;
    let paths = Paths::new(dir, name);
    // The engine resumes a `.part`, or checks a file in place.
    let exists = |p: &Path| std::fs::symlink_metadata(p).is_ok();
    if exists(&paths.final_path) || exists(&paths.part) || exists(&paths.have) {
        return None;
    }
    let (file, folder) = partfile::create_unnamed(&paths)?;
    let shared = Arc::new(SharedFile::partial(
        name.to_owned(),
        paths.final_path.clone(),
        file,
        g,
        plan.hashes.clone(),
        Bitmap::new(g.count()),
    ));
    let mut fill = Fill {
        ctx,
        name,
        shared: &shared,
        plan: &plan,
        done: 0,
        started,
        stats: HashMap::new(),
        on_progress,
    };
    fill.report();
    let got = pool.fetch(&mut fill, opts);
    let stats = std::mem::take(&mut fill.stats);
    let unnamed = Unnamed {
        name: name.to_owned(),
        paths,
        shared,
        folder,
        share: Arc::clone(ctx.share),
        hashes: plan.hashes,
        sync_folder: opts.sync_folder,
        started,
        stats,
        hold: None,
        settled: false,
    };
    if got.is_none() {
        pool.carried = Some(unnamed.give_up());
        return None;
    }
    // Complete and verified: served and registered now (a file of several
    // chunks already is, chunk by chunk).
    if g.count() < 2 {
        ctx.share.insert(Arc::clone(&unnamed.shared));
        (ctx.on_file)(name);
    }
    if !pool.defer {
        return match unnamed.finish() {
            Ok(s) => Some(Ok(s)),
            Err(c) => {
                pool.carried = Some(c);
                None
            }
        };
    }
    // Made durable and named by the set's finisher while this thread goes
    // on to its next file.
    let provisional = unnamed.summary();
    if let Some(earlier) = pool.unnamed.replace(unnamed) {
        // Never taken by its caller (`take_unnamed`): named here instead.
        let _ = earlier.finish();
    }
    Some(Ok(provisional))
}

/// Takes the file `name` if the fast path fetched it last on this thread
/// and left it complete and verified but not yet named. A `batch-N` thread
/// calls it after each download and hands what it gets to the set's
/// finisher ([`Unnamed::finish`]) before it reports the file: on a thread
/// whose pool defers naming ([`PoolGuard::install`]), `download` returns
/// `Ok` for such a file before it is in place.
pub fn take_unnamed(name: &str) -> Option<Unnamed> {
    POOL.with(|p| {
        p.borrow_mut()
            .as_mut()
            .and_then(|pool| pool.unnamed.take_if(|u| u.name == name))
    })
}

/// Gives the file `name`, if it waits unnamed on this thread, `hold` to
/// keep until it is named or given up (then dropped); otherwise drops
/// `hold` now. The caller's claim on the name (`Node`'s downloads in
/// progress) so lasts until the file is in place.
pub fn hold_until_named(name: &str, hold: Box<dyn Send>) {
    POOL.with(|p| {
        if let Some(u) = p
            .borrow_mut()
            .as_mut()
            .and_then(|pool| pool.unnamed.as_mut())
            && u.name == name
        {
            u.hold = Some(hold);
        }
    });
}

/// From now on this thread names the files it fetches itself (the set's
/// finishers are gone).
pub fn stop_deferring() {
    POOL.with(|p| {
        if let Some(pool) = p.borrow_mut().as_mut() {
            pool.defer = false;
        }
    });
}

/// A file of the fast path, complete, verified, served and registered,
/// still without its name: an unnamed file in its final folder. Naming it
/// waits for the disk (an fsync), so it is done apart from fetching, by
/// the set's `finish-N` threads, and several files are made durable at
/// once. One dropped without [`Unnamed::finish`] (a finisher gone, a
/// panic) is given up: no longer served, its chunks kept as the engine's
/// `.part`.
pub struct Unnamed {
    name: String,
    paths: Paths,
    shared: Arc<SharedFile>,
    folder: partfile::Folder,
    share: Arc<ShareIndex>,
    hashes: Vec<Digest>,
    sync_folder: bool,
    started: Instant,
    stats: HashMap<SocketAddr, SourceStats>,
    /// What the caller keeps until the file is named or given up
    /// ([`hold_until_named`]).
    hold: Option<Box<dyn Send>>,
    /// Named or given up: nothing left for `drop`.
    settled: bool,
}

/// What the fast path fetched of a file it then left to the engine.
pub struct Carried {
    name: String,
    sources: Vec<SourceStats>,
    /// Chunks kept as the engine's `.part`, which the engine then finds
    /// on disk.
    kept_chunks: u32,
}

impl Carried {
    /// Adds this to the engine's summary of the same file, so the file's
    /// figures count every byte fetched for it, from every source: the
    /// chunks kept for the engine were fetched now, not found on disk.
    pub fn add_to(&self, s: &mut Summary) {
        s.chunks_resumed = s.chunks_resumed.saturating_sub(self.kept_chunks);
        for c in &self.sources {
            s.bytes_downloaded = s.bytes_downloaded.saturating_add(c.bytes);
            match s.sources.iter_mut().find(|x| x.addr == c.addr) {
                Some(x) => {
                    x.bytes = x.bytes.saturating_add(c.bytes);
                    x.chunks = x.chunks.saturating_add(c.chunks);
                    x.hash_failures = x.hash_failures.saturating_add(c.hash_failures);
                    if x.dropped.is_none() {
                        x.dropped.clone_from(&c.dropped);
                    }
                }
                None => s.sources.push(c.clone()),
            }
        }
        s.sources
            .sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.addr.cmp(&b.addr)));
    }
}

/// Takes what the fast path fetched of `name` on this thread before it
/// left the file to the engine, if anything (and forgets any other).
pub fn take_carried(name: &str) -> Option<Carried> {
    POOL.with(|p| {
        p.borrow_mut()
            .as_mut()
            .and_then(|pool| pool.carried.take())
            .filter(|c| c.name == name)
    })
}

impl Drop for Unnamed {
    fn drop(&mut self) {
        if !self.settled {
            self.park();
        }
    }
}

impl Unnamed {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Makes the file durable and gives it its name (fsync, then a link
    /// that never replaces a file); from then on it is served as the
    /// user's file (checked against its hashes after any change). `Err`
    /// when it could not be named: it is no longer served, and its chunks
    /// are kept as the engine's `.part` where that can be done (nothing is
    /// kept when a file took the name meanwhile): the caller lets the
    /// engine go on, and adds what was fetched here to the engine's
    /// summary ([`Carried::add_to`]). Either way the `hold` is dropped on
    /// return.
    pub fn finish(mut self) -> std::result::Result<Summary, Carried> {
        self.settled = true;
        let named = partfile::name_unnamed(
            &self.paths,
            self.shared.file(),
            &self.folder,
            self.sync_folder,
        );
        match named {
            Ok(true) => {}
            // A file appeared under the name: the engine checks it (and
            // takes it if it is this content); nothing of ours is kept.
            Ok(false) => {
                self.share.remove_exact(&self.shared);
                return Err(self.carried(false));
            }
            Err(e) => {
                debug!("{}: {e}", self.name);
                let kept = self.park();
                return Err(self.carried(kept));
            }
        }
        let g = *self.shared.geometry();
        match self.shared.file().try_clone() {
            Ok(f) => {
                self.share.insert(Arc::new(SharedFile::finished(
                    self.name.clone(),
                    self.paths.final_path.clone(),
                    f,
                    g,
                    self.hashes.clone(),
                )));
            }
            // Not served rather than served unchecked.
            Err(_) => {
                self.share.remove_exact(&self.shared);
            }
        }
        Ok(self.summary())
    }

    /// Gives the file up to the engine ([`Unnamed::park`]); what was
    /// fetched of it.
    fn give_up(mut self) -> Carried {
        self.settled = true;
        let kept = self.park();
        self.carried(kept)
    }

    /// Stops serving the file and keeps its verified chunks as the
    /// engine's `.part`, for it to go on from; whether any were kept.
    fn park(&self) -> bool {
        self.share.remove_exact(&self.shared);
        let g = *self.shared.geometry();
        partfile::park_unnamed(
            &self.paths,
            self.shared.file(),
            g,
            &self.hashes,
            &self.shared.have(),
        )
    }

    /// What was fetched of the file, its chunks `kept` for the engine or
    /// not.
    fn carried(&self, kept: bool) -> Carried {
        let mut sources: Vec<SourceStats> = self.stats.values().cloned().collect();
        sources.sort_by_key(|s| s.addr);
        Carried {
            name: self.name.clone(),
            sources,
            kept_chunks: if kept {
                self.shared.have().count_ones()
            } else {
                0
            },
        }
    }

    fn summary(&self) -> Summary {
        summary(
            &self.name,
            &self.paths,
            *self.shared.geometry(),
            self.started,
            self.stats.clone(),
        )
    }
}

/// A file being filled: where verified chunks go, and what is reported.
struct Fill<'a, 'b> {
    ctx: &'a DownloadContext<'b>,
    name: &'a str,
    shared: &'a Arc<SharedFile>,
    plan: &'a Plan,
    done: u64,
    started: Instant,
    stats: HashMap<SocketAddr, SourceStats>,
    on_progress: &'a mut dyn FnMut(&Progress),
}

impl Fill<'_, '_> {
    fn report(&mut self) {
        let g = self.plan.g;
        (self.on_progress)(&Progress {
            total_bytes: g.length(),
            done_bytes: self.done,
            chunks_done: self.shared.have().count_ones(),
            chunks_total: g.count(),
            active_sources: 0,
            elapsed: self.started.elapsed(),
            rate: 0.0,
        });
    }

    fn stats(&mut self, addr: SocketAddr) -> &mut SourceStats {
        self.stats.entry(addr).or_insert(SourceStats {
            addr,
            bytes: 0,
            chunks: 0,
            hash_failures: 0,
            dropped: None,
        })
    }

    /// Whether `data` is chunk `i`; if so it is written, shared and
    /// (for a file of several chunks) registered. A write error ends the
    /// file (`Err`).
    fn take(&mut self, addr: SocketAddr, i: ChunkIndex, data: &[u8]) -> std::io::Result<bool> {
        let g = self.plan.g;
        let good = data.len() as u64 == u64::from(g.chunk_len(i))
            && chunks::sha1(data) == self.plan.hashes[i.get() as usize];
        if !good {
            let s = self.stats(addr);
            s.hash_failures += 1;
            s.dropped = Some("sent a bad chunk".to_owned());
            return Ok(false);
        }
        self.shared.file().write_all_at(data, g.offset(i))?;
        if self.shared.mark_have(i) {
            self.done += data.len() as u64;
            if g.count() > 1 {
                if self.shared.have().count_ones() == 1 {
                    // Served from now on (the handle is the file's own).
                    self.ctx.share.insert(Arc::clone(self.shared));
                }
                (self.ctx.on_chunk)(self.name, i.get());
            }
        }
        let s = self.stats(addr);
        s.bytes += data.len() as u64;
        s.chunks += 1;
        self.report();
        Ok(true)
    }
}

fn summary(
    name: &str,
    paths: &Paths,
    g: Geometry,
    started: Instant,
    stats: HashMap<SocketAddr, SourceStats>,
) -> Summary {
    let mut sources: Vec<SourceStats> = stats.into_values().collect();
    sources.sort_by_key(|s| s.addr);
    Summary {
        name: name.to_owned(),
        path: paths.final_path.clone(),
        length: g.length(),
        chunks_total: g.count(),
        chunks_resumed: 0,
        bytes_downloaded: sources.iter().map(|s| s.bytes).sum(),
        duplicates: 0,
        elapsed: started.elapsed(),
        sources,
    }
}

/// The chunks of `g` in the order to ask them: rarest first (fewest
/// holders), then by index.
fn rarest_first(g: Geometry, holders: &[(SocketAddr, Bitmap)]) -> Vec<ChunkIndex> {
    let mut order: Vec<(usize, ChunkIndex)> = g
        .indices()
        .map(|i| (holders.iter().filter(|(_, b)| b.get(i.get())).count(), i))
        .collect();
    order.sort_by_key(|&(n, i)| (n, i.get()));
    order.into_iter().map(|(_, i)| i).collect()
}

/// Shares `chunks` out among the holders not in `skip`: each to the holder
/// whose queue would be done soonest at its cost per chunk (a holder not
/// tried yet first). A chunk no one may be asked for is left out.
fn share_out(
    chunks: &[ChunkIndex],
    holders: &[(SocketAddr, Bitmap)],
    skip: &HashSet<SocketAddr>,
    cost: &HashMap<SocketAddr, f64>,
) -> Vec<(SocketAddr, VecDeque<ChunkIndex>)> {
    let mut queues: Vec<(SocketAddr, VecDeque<ChunkIndex>)> = Vec::new();
    for &i in chunks {
        let best = holders
            .iter()
            .filter(|(a, b)| b.get(i.get()) && !skip.contains(a))
            .map(|(a, _)| {
                let queued = queues
                    .iter()
                    .find(|(q, _)| q == a)
                    .map_or(0, |(_, v)| v.len());
                // A source not tried yet goes first: its cost is learnt.
                let c = cost.get(a).copied().unwrap_or(0.0).max(1e-6);
                (*a, (queued + 1) as f64 * c)
            })
            .min_by(|x, y| x.1.total_cmp(&y.1));
        let Some((addr, _)) = best else { continue };
        match queues.iter_mut().find(|(q, _)| *q == addr) {
            Some((_, v)) => v.push_back(i),
            None => queues.push((addr, VecDeque::from([i]))),
        }
    }
    queues
}

impl Pool {
    /// Every reachable tracker's answer for `name`, merged (see the module
    /// comment), as a [`Plan`]; `None` when no answer can be used here.
    /// With one tracker it is waited for as long as the engine would
    /// (`io_timeout`); with several, each gets `TRACKER_GRACE`, as the
    /// engine waits no longer for the others once one has answered.
    fn locate(
        &mut self,
        ctx: &DownloadContext<'_>,
        name: &str,
        opts: &DownloadOptions,
    ) -> Option<Plan> {
        let patience = if ctx.trackers.len() > 1 {
            TRACKER_GRACE.min(opts.io_timeout)
        } else {
            opts.io_timeout
        };
        let mut answers = Vec::new();
        let mut local = None;
        for &t in ctx.trackers {
            if self.unreachable.contains(&t) {
                continue;
            }
            match self.locate_on(t, name, patience) {
                Ok((l, ip)) => {
                    local.get_or_insert(ip);
                    answers.push((t, l));
                }
                // This tracker does not know the name.
                Err(PeerError::Refused { .. }) => {}
                Err(e) => {
                    debug!("{name}: tracker {t}: {e}");
                    self.unreachable.insert(t);
                }
            }
        }
        if let Some(want) = opts.expect_id {
            answers.retain(|(_, l)| client::content_id(l) == Some(want));
        }
        if answers.is_empty() {
            return None;
        }
        let (l, _) = client::merge_locations(answers);
        let hashes = l.hashes.clone()?;
        let g = Geometry::with_hashes(l.length, l.chunk_size, hashes.len()).ok()?;
        if g.length() > SMALL_FILE_MAX_BYTES {
            return None;
        }
        let me = ctx
            .self_port
            .zip(local)
            .map(|(port, ip)| SocketAddr::new(ip, port));
        let holders = self.holders(&l, g, me);
        Some(Plan { g, hashes, holders })
    }

    /// The sources of `l` to ask, with what each holds: never this peer nor
    /// a source that sent this thread a bad chunk; those already connected
    /// and cheapest first, [`SMALL_FILE_SOURCES`] of them, and beyond that
    /// only sources holding a chunk none of those holds.
    fn holders(
        &self,
        l: &Locations,
        g: Geometry,
        me: Option<SocketAddr>,
    ) -> Vec<(SocketAddr, Bitmap)> {
        let mut all: Vec<(SocketAddr, Bitmap)> = l
            .sources
            .iter()
            .filter_map(|s| {
                let addr = SocketAddr::new(s.addr.ip().to_canonical(), s.addr.port());
                let have = Bitmap::from_bytes(g.count(), &s.have).ok()?;
                let resting = self.backoff.get(&addr).is_some_and(|t| Instant::now() < *t);
                let usable = Some(addr) != me
                    && !super::coordinator::is_self(addr, me)
                    && !self.liars.contains(&addr)
                    && !resting;
                usable.then_some((addr, have))
            })
            .collect();
        let rank = |a: &SocketAddr| {
            let cost = self.cost.get(a).copied().unwrap_or(f64::MAX);
            (!self.sources.contains_key(a), cost)
        };
        all.sort_by(|x, y| {
            rank(&x.0)
                .partial_cmp(&rank(&y.0))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        let mut covered = Bitmap::new(g.count());
        let mut chosen = Vec::new();
        for (addr, have) in all {
            let adds = have.iter_ones().any(|i| !covered.get(i));
            // Never more than the pool keeps: it would close a lane's
            // connection while its replies are due.
            if chosen.len() < SMALL_FILE_SOURCES || (adds && chosen.len() < SMALL_POOL_SOURCES) {
                have.iter_ones().for_each(|i| {
                    covered.set(i);
                });
                chosen.push((addr, have));
            }
        }
        chosen
    }

    /// One Locate with hashes over the kept connection to `tracker`,
    /// made again once if a kept one turned out lost, and the local
    /// address it runs from.
    fn locate_on(
        &mut self,
        tracker: SocketAddr,
        name: &str,
        patience: Duration,
    ) -> Result<(Locations, IpAddr)> {
        loop {
            let reused = self.trackers.contains_key(&tracker);
            let c = self.conn(Role::Tracker, tracker, patience, None)?;
            let ip = c
                .stream()
                .local_addr()
                .map_err(|e| PeerError::io("local address", Path::new("socket"), e))?
                .ip();
            match client::locate_on(c, name, true) {
                Ok(l) => return Ok((l, ip)),
                Err(e @ PeerError::Refused { .. }) => return Err(e),
                Err(e) => {
                    self.forget(Role::Tracker, tracker);
                    if !reused {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// The kept connection to `addr`, made (and greeted) with `timeout` if
    /// there is none or it was idle too long; reads through `gate`.
    fn conn(
        &mut self,
        role: Role,
        addr: SocketAddr,
        timeout: Duration,
        gate: Option<&Arc<RateLimiter>>,
    ) -> Result<&mut Conn> {
        let idle = |m: &HashMap<SocketAddr, Kept>| {
            m.get(&addr).is_some_and(|k| k.used.elapsed() >= KEPT_IDLE)
        };
        let stale = match role {
            Role::Tracker => idle(&self.trackers),
            Role::Source => idle(&self.sources),
        };
        if stale {
            self.forget(role, addr);
        }
        if role == Role::Source
            && !self.sources.contains_key(&addr)
            && self.sources.len() >= SMALL_POOL_SOURCES
        {
            let oldest = self
                .sources
                .iter()
                .min_by_key(|(_, k)| k.used)
                .map(|(a, _)| *a);
            if let Some(a) = oldest {
                self.forget(Role::Source, a);
            }
        }
        let key = (self.id, role, addr);
        let map = match role {
            Role::Tracker => &mut self.trackers,
            Role::Source => &mut self.sources,
        };
        let kept = match map.entry(addr) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => {
                let mut conn = Conn::connect(addr, timeout)?;
                if let Some(g) = gate {
                    conn.gate_reads(Arc::clone(g) as Arc<dyn ReadGate>);
                }
                self.interrupt.add(key, conn.stream());
                v.insert(Kept {
                    conn,
                    used: Instant::now(),
                    timeout,
                })
            }
        };
        kept.used = Instant::now();
        Ok(&mut kept.conn)
    }

    /// Closes the kept connection to `addr` in `role`, if any.
    fn forget(&mut self, role: Role, addr: SocketAddr) {
        self.interrupt.remove((self.id, role, addr));
        match role {
            Role::Tracker => self.trackers.remove(&addr),
            Role::Source => self.sources.remove(&addr),
        };
    }

    /// Fetches every chunk of the file into `fill`, in at most
    /// [`SMALL_FILE_ROUNDS`] rounds; `None` if some chunk could not be had
    /// in time, the set was cancelled, or a chunk could not be written.
    fn fetch(&mut self, fill: &mut Fill<'_, '_>, opts: &DownloadOptions) -> Option<()> {
        let mut missing = rarest_first(fill.plan.g, &fill.plan.holders);
        let mut skip = HashSet::new();
        let deadline = deadline(fill, opts);
        for _ in 0..SMALL_FILE_ROUNDS {
            if missing.is_empty() {
                return Some(());
            }
            let queues = share_out(&missing, &fill.plan.holders, &skip, &self.cost);
            if queues.is_empty() {
                return None;
            }
            // A source passed over looks a little cheaper each time, so one
            // that was slow once is tried again some day.
            for (a, _) in &fill.plan.holders {
                if !queues.iter().any(|(q, _)| q == a) {
                    self.cost.entry(*a).and_modify(|c| *c *= 0.9);
                }
            }
            self.round(fill, queues, &mut skip, opts, deadline)?;
            let have = fill.shared.have();
            missing.retain(|i| !have.get(i.get()));
        }
        missing.is_empty().then_some(())
    }

    /// Asks each queue's chunks of its source, [`PIPELINE_DEPTH`] requests
    /// in flight per source, reading the replies from each source in
    /// turn, each within a [`patience`] for its length from when it is
    /// read. A source that fails, refuses or is that slow goes into
    /// `skip`. Gives up
    /// (`None`) at `deadline`, on cancel or on a write error, closing every
    /// connection that still owes a reply (a reply names only the chunk
    /// index, so such a connection is out of step for the next file).
    fn round(
        &mut self,
        fill: &mut Fill<'_, '_>,
        queues: Vec<(SocketAddr, VecDeque<ChunkIndex>)>,
        skip: &mut HashSet<SocketAddr>,
        opts: &DownloadOptions,
        deadline: Option<Instant>,
    ) -> Option<()> {
        let mut lanes: Vec<Lane> = queues
            .into_iter()
            .map(|(addr, todo)| Lane {
                addr,
                todo,
                due: VecDeque::new(),
            })
            .collect();
        for lane in &mut lanes {
            self.top_up(lane, fill.name, opts, skip, deadline);
        }
        while lanes.iter().any(|l| !l.due.is_empty()) {
            for at in 0..lanes.len() {
                let Some(&i) = lanes[at].due.front() else {
                    continue;
                };
                let addr = lanes[at].addr;
                let now = Instant::now();
                let late = deadline.is_some_and(|d| now >= d);
                // A source slower than that for one chunk is skipped for
                // this file; the others go on with its chunks.
                let cap =
                    deadline.map(|d| d.min(now + patience(u64::from(fill.plan.g.chunk_len(i)))));
                let reply = if cancelled(fill.ctx) || late {
                    Reply::GiveUp
                } else {
                    self.receive(fill, addr, i, opts.io_timeout, cap)
                };
                let lane = &mut lanes[at];
                lane.due.pop_front();
                match reply {
                    Reply::Good => self.top_up(lane, fill.name, opts, skip, deadline),
                    Reply::Refused => {
                        skip.insert(addr);
                        lane.todo.clear();
                    }
                    Reply::Broken => {
                        skip.insert(addr);
                        lane.todo.clear();
                        lane.due.clear();
                    }
                    Reply::GiveUp => {
                        self.forget(Role::Source, addr);
                        for l in lanes.iter().filter(|l| !l.due.is_empty()) {
                            self.forget(Role::Source, l.addr);
                        }
                        return None;
                    }
                }
            }
        }
        Some(())
    }

    /// Sends requests from `lane.todo` until [`PIPELINE_DEPTH`] are due;
    /// on failure the source is closed and skipped, its lane emptied. A
    /// source that cannot be connected to (or greeted) within the time
    /// left before `deadline` is not asked again for
    /// [`SMALL_SOURCE_BACKOFF`]: a silent peer the tracker still lists
    /// must not cost every file of the set a timeout.
    fn top_up(
        &mut self,
        lane: &mut Lane,
        name: &str,
        opts: &DownloadOptions,
        skip: &mut HashSet<SocketAddr>,
        deadline: Option<Instant>,
    ) {
        let gate = opts
            .download_limit
            .rate()
            .is_some()
            .then_some(&opts.download_limit);
        while lane.due.len() < PIPELINE_DEPTH {
            let Some(i) = lane.todo.pop_front() else {
                return;
            };
            let fresh = !self.sources.contains_key(&lane.addr);
            // A peer that does not greet within the patience of a reply
            // would not answer in time either.
            let connect = deadline.map_or(opts.io_timeout, |d| {
                d.saturating_duration_since(Instant::now())
                    .min(SMALL_FILE_PATIENCE)
                    .clamp(Duration::from_millis(1), opts.io_timeout)
            });
            let sent = self
                .conn(Role::Source, lane.addr, connect, gate)
                .and_then(|c| {
                    if fresh {
                        // Requests are small: the usual write timeout.
                        let _ = c.stream().set_write_timeout(Some(opts.io_timeout));
                    }
                    c.send(&Message::ChunkRequest {
                        name: name.to_owned(),
                        index: i.get(),
                    })
                });
            match sent {
                Ok(()) => lane.due.push_back(i),
                Err(e) => {
                    debug!("{name}: {}: {e}", lane.addr);
                    if fresh {
                        let until = Instant::now() + SMALL_SOURCE_BACKOFF;
                        self.backoff.insert(lane.addr, until);
                    }
                    // Replies already due on it are lost with it.
                    self.forget(Role::Source, lane.addr);
                    skip.insert(lane.addr);
                    lane.todo.clear();
                    lane.due.clear();
                    return;
                }
            }
        }
    }

    /// Reads the reply to the request for chunk `i` from `addr`, waiting
    /// no longer than `io_timeout` nor past `deadline`, and takes it in;
    /// the time it took goes into the source's cost.
    fn receive(
        &mut self,
        fill: &mut Fill<'_, '_>,
        addr: SocketAddr,
        i: ChunkIndex,
        io_timeout: Duration,
        deadline: Option<Instant>,
    ) -> Reply {
        let began = Instant::now();
        let wait = deadline.map_or(io_timeout, |d| {
            d.saturating_duration_since(began)
                .clamp(Duration::from_millis(1), io_timeout)
        });
        let mut buf = std::mem::take(&mut self.spare);
        let reply = match self.sources.get_mut(&addr) {
            Some(k) => {
                if k.timeout < wait || k.timeout > wait + TIMEOUT_SLACK {
                    let _ = k.conn.stream().set_read_timeout(Some(wait));
                    k.timeout = wait;
                }
                // A reply trickling in ends at the file's deadline too.
                k.conn.recv_into_until(&mut buf, deadline)
            }
            None => return Reply::Broken,
        };
        let secs = began.elapsed().as_secs_f64();
        let (reply, refused) = match reply {
            Ok(Message::ChunkData { index, data }) if index == i.get() => {
                match fill.take(addr, i, &data) {
                    Ok(true) => {
                        self.spare = data;
                        (Reply::Good, false)
                    }
                    Ok(false) => {
                        debug!(
                            "{}: chunk {index} from {addr} failed verification",
                            fill.name
                        );
                        self.liars.insert(addr);
                        (Reply::Broken, false)
                    }
                    Err(e) => {
                        debug!("{}: cannot write chunk {index}: {e}", fill.name);
                        (Reply::GiveUp, false)
                    }
                }
            }
            Ok(Message::Error { code, .. }) => {
                debug!("{}: chunk {} from {addr}: {code:?}", fill.name, i.get());
                (Reply::Refused, true)
            }
            Ok(other) => {
                debug!("{}: {addr} answered {}", fill.name, other.kind());
                (Reply::Broken, false)
            }
            Err(e) => {
                debug!("{}: {addr}: {e}", fill.name);
                (Reply::Broken, false)
            }
        };
        // A refusal costs its source as much as a slow chunk would.
        let took = if refused {
            secs.max(self.slowest())
        } else {
            secs
        };
        let c = self.cost.entry(addr).or_insert(took);
        *c = 0.75 * *c + 0.25 * took;
        if matches!(reply, Reply::Broken) {
            self.forget(Role::Source, addr);
        }
        reply
    }

    /// The highest cost per chunk known (a default when none is).
    fn slowest(&self) -> f64 {
        self.cost.values().copied().fold(1e-3, f64::max)
    }
}

/// How long `bytes` may take to arrive whole on the fast path:
/// [`SMALL_FILE_PATIENCE`] plus `bytes` at [`SMALL_FILE_MIN_RATE`].
fn patience(bytes: u64) -> Duration {
    SMALL_FILE_PATIENCE + Duration::from_secs_f64(bytes as f64 / SMALL_FILE_MIN_RATE as f64)
}

/// When the fast path gives a file up to the engine (which goes on from
/// its verified chunks): one [`patience`] for its length per round, so
/// sources that are slow one after another cannot hold it for long. None
/// under a download limit, whose slowness is this peer's own. (Each reply
/// also has a patience of its own: see [`Pool::round`].)
fn deadline(fill: &Fill<'_, '_>, opts: &DownloadOptions) -> Option<Instant> {
    if opts.download_limit.rate().is_some() {
        return None;
    }
    let rounds = u32::try_from(SMALL_FILE_ROUNDS).unwrap_or(u32::MAX);
    Some(fill.started + patience(fill.plan.g.length()) * rounds)
}

/// One source's requests for a file: those not sent yet, and those sent
/// whose replies are due, in order.
struct Lane {
    addr: SocketAddr,
    todo: VecDeque<ChunkIndex>,
    due: VecDeque<ChunkIndex>,
}

/// How one reply went.
enum Reply {
    /// The chunk, verified and written.
    Good,
    /// An error reply (`NotHeld`, `Busy`, ...): the connection stays.
    Refused,
    /// A bad chunk, an unexpected message or a lost connection: the
    /// connection is closed, the source's other requests are lost.
    Broken,
    /// Past the deadline, cancelled, or the chunk could not be written:
    /// the file is given up.
    GiveUp,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn bits(len: u32, ones: &[u32]) -> Bitmap {
        let mut b = Bitmap::new(len);
        for &i in ones {
            b.set(i);
        }
        b
    }

    fn raw(v: &[ChunkIndex]) -> Vec<u32> {
        v.iter().map(|i| i.get()).collect()
    }

    fn stats(port: u16, chunks: u32, dropped: Option<&str>) -> SourceStats {
        SourceStats {
            addr: addr(port),
            bytes: u64::from(chunks) * 1024,
            chunks,
            hash_failures: 0,
            dropped: dropped.map(str::to_owned),
        }
    }

    /// The engine resumed 3 of 8 chunks kept by the fast path and fetched
    /// 5: the file's summary counts all 8 as fetched now, from both
    /// sources, the one both used once, most bytes first.
    #[test]
    fn what_the_fast_path_fetched_counts_in_the_engines_summary() {
        let mut s = Summary {
            name: "f".into(),
            path: "d/f".into(),
            length: 8 * 1024,
            chunks_total: 8,
            chunks_resumed: 3,
            bytes_downloaded: 5 * 1024,
            duplicates: 0,
            elapsed: Duration::from_secs(1),
            sources: vec![stats(2, 5, None)],
        };
        let c = Carried {
            name: "f".into(),
            sources: vec![stats(1, 1, Some("sent a bad chunk")), stats(2, 2, None)],
            kept_chunks: 3,
        };
        c.add_to(&mut s);
        assert_eq!(s.chunks_resumed, 0);
        assert_eq!(s.bytes_downloaded, 8 * 1024);
        assert_eq!(
            s.sources,
            [stats(2, 7, None), stats(1, 1, Some("sent a bad chunk"))]
        );
        // Nothing kept (the name was taken): only the bytes count.
        let mut t = Summary {
            chunks_resumed: 8,
            bytes_downloaded: 0,
            sources: Vec::new(),
            ..s
        };
        let c = Carried {
            kept_chunks: 0,
            ..c
        };
        c.add_to(&mut t);
        assert_eq!((t.chunks_resumed, t.bytes_downloaded), (8, 3 * 1024));
    }

    #[test]
    fn chunks_are_asked_rarest_first_then_by_index() {
        let g = Geometry::new(5 * 1024, 1024).unwrap();
        let holders = vec![
            (addr(1), bits(5, &[0, 1, 2, 3, 4])),
            (addr(2), bits(5, &[0, 1, 3])),
            (addr(3), bits(5, &[1, 3])),
        ];
        // Held by: 0 -> 2, 1 -> 3, 2 -> 1, 3 -> 3, 4 -> 1.
        assert_eq!(raw(&rarest_first(g, &holders)), [2, 4, 0, 1, 3]);
    }

    #[test]
    fn a_faster_source_gets_more_chunks_and_only_what_it_holds() {
        let g = Geometry::new(8 * 1024, 1024).unwrap();
        let all: Vec<ChunkIndex> = g.indices().collect();
        let holders = vec![(addr(1), Bitmap::full(8)), (addr(2), Bitmap::full(8))];
        let cost = HashMap::from([(addr(1), 0.001), (addr(2), 0.003)]);
        let q = share_out(&all, &holders, &HashSet::new(), &cost);
        let len = |a| q.iter().find(|(x, _)| *x == a).map_or(0, |(_, v)| v.len());
        assert_eq!((len(addr(1)), len(addr(2))), (6, 2), "{q:?}");
        // A source holding only some chunks is given only those.
        let holders = vec![(addr(1), bits(8, &[0, 1])), (addr(2), Bitmap::full(8))];
        let q = share_out(&all, &holders, &HashSet::new(), &cost);
        let of = |a| {
            q.iter()
                .find(|(x, _)| *x == a)
                .map(|(_, v)| raw(&Vec::from(v.clone())))
        };
        assert_eq!(of(addr(1)), Some(vec![0, 1]));
        assert_eq!(of(addr(2)), Some(vec![2, 3, 4, 5, 6, 7]));
    }

    #[test]
    fn skipped_sources_are_not_given_chunks_and_unheld_chunks_are_left_out() {
        let g = Geometry::new(3 * 1024, 1024).unwrap();
        let all: Vec<ChunkIndex> = g.indices().collect();
        let holders = vec![(addr(1), Bitmap::full(3)), (addr(2), bits(3, &[0]))];
        let skip = HashSet::from([addr(1)]);
        let q = share_out(&all, &holders, &skip, &HashMap::new());
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].0, addr(2));
        assert_eq!(raw(&Vec::from(q[0].1.clone())), [0]);
        assert!(
            share_out(
                &all,
                &holders,
                &HashSet::from([addr(1), addr(2)]),
                &HashMap::new()
            )
            .is_empty()
        );
    }

    #[test]
    fn an_interrupt_shuts_kept_connections_and_any_kept_after_it() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let b = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let i = Interrupt::default();
        i.add((0, Role::Source, addr(1)), &a);
        i.fire();
        i.add((0, Role::Source, addr(2)), &b);
        assert!(lock(&i.streams).is_empty());
        use std::io::Read;
        for mut s in [a, b] {
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            assert_eq!(s.read(&mut [0u8; 8]).unwrap(), 0, "not shut");
        }
    }
}
