//! The fast path for the small files of a set: a file of one chunk (or
//! empty) fetched without the engine's threads.
//!
//! Owns: the connections a `batch-N` thread keeps open for its whole set
//! ([`Pool`], installed for the thread by [`PoolGuard`]): one to the first
//! tracker, asked one Locate with hashes per file, and one greeted
//! connection per source endpoint, asked one `ChunkRequest` per file (the
//! request names the file, so one connection serves every file that peer
//! holds); and [`try_fetch`], which fetches, verifies and writes one such
//! file through the same `partfile` rules as the engine (`open`, `finish`:
//! the lock, the `.part` and `.part.have`, no link followed, no file
//! replaced), registers its chunk (`on_chunk`) and shares it
//! (`SharedFile::finished`). The source asked first is the one this thread
//! asked least so far; a bad chunk, `NotHeld`, `Busy` or a lost connection
//! moves on to the next source. Anything it cannot finish (more than one
//! chunk, no tracker answer, every source failing, a file already in
//! place, `--id`) is left to the full engine, which then applies every
//! rule of its own (strikes, resume, limits, the check of a file in place).
//!
//! Calls `wire`, `chunks`, the peer's `client` and `share`, `net::client`
//! (the read gate) and the download's `partfile`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use log::debug;

use super::partfile::{self, Paths};
use super::{DownloadContext, DownloadOptions, Progress, SourceStats, Summary, put_in_place};
use crate::chunks::{self, Bitmap, Digest, Geometry};
use crate::net::client::ReadGate;
use crate::peer::client::{self, Conn};
use crate::peer::share::SharedFile;
use crate::peer::{PeerError, Result};
use crate::wire::{Locations, Message};

/// The connections one `batch-N` thread keeps for its set.
#[derive(Default)]
pub(super) struct Pool {
    tracker: Option<Conn>,
    /// Set once the tracker could not be reached: the rest of the set goes
    /// to the engine, which asks every tracker and can be cancelled while
    /// it waits.
    tracker_failed: bool,
    sources: HashMap<SocketAddr, Conn>,
    /// Requests sent to each source by this thread: the least asked goes
    /// first, so every source gets its share.
    asked: HashMap<SocketAddr, u64>,
}

thread_local! {
    static POOL: RefCell<Option<Pool>> = const { RefCell::new(None) };
}

/// Installs a [`Pool`] for the current thread while it lives; its
/// connections close when it is dropped (the end of the thread's files).
pub struct PoolGuard(());

impl PoolGuard {
    pub fn install() -> PoolGuard {
        POOL.with(|p| *p.borrow_mut() = Some(Pool::default()));
        PoolGuard(())
    }
}

impl Drop for PoolGuard {
    fn drop(&mut self) {
        POOL.with(|p| p.borrow_mut().take());
    }
}

/// One file of a set by the fast path, when this thread has a pool and the
/// file is one chunk or empty: `None` leaves it to the engine (nothing of
/// the file is on disk then, or a `.part` the engine resumes).
pub(super) fn try_fetch(
    ctx: &DownloadContext<'_>,
    name: &str,
    dir: &Path,
    opts: &DownloadOptions,
    on_progress: &mut dyn FnMut(&Progress),
) -> Option<Result<Summary>> {
    let cancelled = ctx.cancel.is_some_and(|c| c.load(Ordering::SeqCst));
    if opts.expect_id.is_some() || cancelled {
        return None;
    }
    let mut pool = POOL.with(|p| p.borrow_mut().take())?;
    let r = fetch_with(&mut pool, ctx, name, dir, opts, on_progress);
    POOL.with(|p| *p.borrow_mut() = Some(pool));
    r
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
    let (l, local) = pool.locate(ctx.trackers.first().copied()?, name, opts)?;
    let hashes = l.hashes.clone()?;
    let g = Geometry::with_hashes(l.length, l.chunk_size, hashes.len()).ok()?;
    if g.count() > 1 {
        return None;
    }
    let paths = Paths::new(dir, name);
    if paths.make_parent_dirs().is_err() || paths.final_path.exists() {
        // The engine says what is wrong, or checks the file in place.
        return None;
    }
    let me = ctx.self_port.map(|port| SocketAddr::new(local, port));
    let sources = candidates(&l, g, me);
    let (file, have, lock) = match partfile::open(&paths, g, &hashes, ctx.cancel) {
        Ok(v) => v,
        Err(_) => return None,
    };
    let report = |done: u64, on: &mut dyn FnMut(&Progress)| {
        on(&Progress {
            total_bytes: g.length(),
            done_bytes: done,
            chunks_done: u32::from(done == g.length() && g.count() > 0),
            chunks_total: g.count(),
            active_sources: 0,
            elapsed: started.elapsed(),
            rate: 0.0,
        })
    };
    let resumed = have.count_ones();
    report(if resumed > 0 { g.length() } else { 0 }, on_progress);
    let mut stats = Vec::new();
    let mut got = None;
    if g.count() == 1 && resumed == 0 {
        got = pool.fetch_chunk(name, g, &hashes[0], &sources, opts, &mut stats);
        got.as_ref()?;
    }
    let shared = Arc::new(SharedFile::partial(
        name.to_owned(),
        paths.part.clone(),
        file,
        g,
        hashes.clone(),
        have,
    ));
    ctx.share.insert(Arc::clone(&shared));
    let mut bytes = 0;
    if let Some((_, data)) = &got {
        if let Err(e) = shared.file().write_all_at(data, 0) {
            ctx.share.remove(name);
            return Some(Err(PeerError::io("write", &paths.part, e)));
        }
        bytes = data.len() as u64;
    }
    if let Some(i) = g.index(0) {
        shared.mark_have(i);
        if resumed == 0 {
            (ctx.on_chunk)(name, 0);
        }
    }
    report(g.length(), on_progress);
    if let Err(e) = put_in_place(ctx, name, &paths, &shared, hashes, opts.sync_folder) {
        return Some(Err(e));
    }
    drop(lock);
    if g.count() == 0 || resumed > 0 {
        (ctx.on_file)(name);
    }
    Some(Ok(summary(name, &paths, g, resumed, bytes, started, stats)))
}

/// The sources listed in `l` as holding its chunk (if it has one),
/// without this peer.
fn candidates(l: &Locations, g: Geometry, me: Option<SocketAddr>) -> Vec<SocketAddr> {
    l.sources
        .iter()
        .filter(|s| {
            g.count() == 0 || Bitmap::from_bytes(g.count(), &s.have).is_ok_and(|b| b.get(0))
        })
        .map(|s| SocketAddr::new(s.addr.ip().to_canonical(), s.addr.port()))
        .filter(|a| Some(*a) != me && !super::coordinator::is_self(*a, me))
        .collect()
}

fn summary(
    name: &str,
    paths: &Paths,
    g: Geometry,
    resumed: u32,
    bytes: u64,
    started: Instant,
    sources: Vec<SourceStats>,
) -> Summary {
    Summary {
        name: name.to_owned(),
        path: paths.final_path.clone(),
        length: g.length(),
        chunks_total: g.count(),
        chunks_resumed: resumed,
        bytes_downloaded: bytes,
        duplicates: 0,
        elapsed: started.elapsed(),
        sources,
    }
}

impl Pool {
    /// One Locate with hashes over the kept tracker connection (made again
    /// once if it was lost), and the local address it runs from.
    fn locate(
        &mut self,
        tracker: SocketAddr,
        name: &str,
        opts: &DownloadOptions,
    ) -> Option<(Locations, std::net::IpAddr)> {
        for _ in 0..2 {
            if self.tracker_failed {
                return None;
            }
            if self.tracker.is_none() {
                self.tracker = Conn::connect(tracker, opts.io_timeout).ok();
                self.tracker_failed = self.tracker.is_none();
            }
            let c = self.tracker.as_mut()?;
            let ip = c.stream().local_addr().ok()?.ip();
            match client::locate_on(c, name, true) {
                Ok(l) => return Some((l, ip)),
                // The engine reports a refusal (an unknown name) properly.
                Err(PeerError::Refused { .. }) => return None,
                Err(_) => self.tracker = None,
            }
        }
        None
    }

    /// The chunk of a one-chunk file from the first source that sends it
    /// right, least asked first; each source tried is in `stats`.
    fn fetch_chunk(
        &mut self,
        name: &str,
        g: Geometry,
        hash: &Digest,
        sources: &[SocketAddr],
        opts: &DownloadOptions,
        stats: &mut Vec<SourceStats>,
    ) -> Option<(SocketAddr, Vec<u8>)> {
        let mut order = sources.to_vec();
        order.sort_by_key(|a| self.asked.get(a).copied().unwrap_or(0));
        let want = usize::try_from(g.chunk_len(g.index(0)?)).ok()?;
        for addr in order {
            *self.asked.entry(addr).or_insert(0) += 1;
            match self.ask(addr, name, opts) {
                Ok(data) if data.len() == want && chunks::sha1(&data) == *hash => {
                    stats.push(source_stats(addr, data.len() as u64, 1, 0, None));
                    return Some((addr, data));
                }
                Ok(_) => {
                    debug!("{name}: chunk 0 from {addr} failed verification");
                    self.sources.remove(&addr);
                    let why = Some("sent a bad chunk".to_owned());
                    stats.push(source_stats(addr, 0, 0, 1, why));
                }
                Err(e) => {
                    debug!("{name}: {addr}: {e}");
                    self.sources.remove(&addr);
                }
            }
        }
        None
    }

    /// Asks `addr` for chunk 0 of `name` over the kept connection (made
    /// and greeted if there is none).
    fn ask(&mut self, addr: SocketAddr, name: &str, opts: &DownloadOptions) -> Result<Vec<u8>> {
        let c = match self.sources.entry(addr) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let mut c = Conn::connect(addr, opts.io_timeout)?;
                if opts.download_limit.rate().is_some() {
                    c.gate_reads(Arc::clone(&opts.download_limit) as Arc<dyn ReadGate>);
                }
                v.insert(c)
            }
        };
        c.send(&Message::ChunkRequest {
            name: name.to_owned(),
            index: 0,
        })?;
        let mut buf = Vec::new();
        match c.recv_into(&mut buf)? {
            Message::ChunkData { index: 0, data } => Ok(data),
            other => Err(client::unexpected(addr, &other)),
        }
    }
}

fn source_stats(
    addr: SocketAddr,
    bytes: u64,
    chunks: u32,
    hash_failures: u32,
    dropped: Option<String>,
) -> SourceStats {
    SourceStats {
        addr,
        bytes,
        chunks,
        hash_failures,
        dropped,
    }
}
