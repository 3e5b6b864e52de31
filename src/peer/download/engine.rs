//! The state one download's threads share, the messages between them, and
//! starting and stopping those threads.
//!
//! Owns: [`Engine`] (the file being filled, the picker, the stop flag, the
//! options), the chunk and event channels' item types ([`Verified`],
//! [`Event`]), the per-source record of bad chunks ([`Rejects`]) with the one
//! function that rejects a bad chunk ([`Engine::reject`]), the recycled chunk
//! buffers ([`ChunkPool`]), and [`Engine::run`], which starts the flusher,
//! the assembler and the coordinator (the caller's thread; it starts the
//! locator and the workers) and joins them.
//!
//! Calls `chunks`, `wire` (Locations), the peer's `picker` and `share`, and the
//! download's `partfile`,
//! `coordinator`, `worker` and `assembler`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, Scope, ScopedJoinHandle};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, bounded};
use log::warn;

use super::coordinator::Coordinator;
use super::partfile::Paths;
use super::{DownloadContext, DownloadOptions, Progress, Summary};
use crate::chunks::{Digest, Geometry};
use crate::peer::picker::Picker;
use crate::peer::share::SharedFile;
use crate::peer::{PeerError, Result};
use crate::sync::lock;
use crate::wire::Locations;

/// A chunk on its way to the assembler.
pub(super) struct Verified {
    pub(super) source: SocketAddr,
    pub(super) index: u32,
    pub(super) data: Vec<u8>,
    /// `None`: the worker verified it. `Some`: not hashed yet; the assembler
    /// checks it and reports a bad chunk to this worker's [`Rejects`] (see
    /// the worker's `verify_or_hand_off`).
    pub(super) check: Option<Arc<Rejects>>,
}

/// Chunks of one source that failed verification, recorded by its worker
/// or by the assembler (for chunks it checked), read back by the worker.
#[derive(Default)]
pub(super) struct Rejects {
    count: AtomicU32,
    pub(super) indices: Mutex<Vec<u32>>,
}

impl Rejects {
    /// A record that starts at `strikes` (bad chunks the source sent on
    /// earlier connections of this download).
    pub(super) fn starting_at(strikes: u32) -> Rejects {
        Rejects {
            count: AtomicU32::new(strikes),
            indices: Mutex::new(Vec::new()),
        }
    }

    /// Records a bad chunk; returns the number of bad chunks so far.
    fn record(&self, index: u32) -> u32 {
        lock(&self.indices).push(index);
        self.count.fetch_add(1, Ordering::SeqCst) + 1
    }

    pub(super) fn count(&self) -> u32 {
        self.count.load(Ordering::SeqCst)
    }
}

/// What workers and the assembler tell the coordinator.
pub(super) enum Event {
    Written {
        source: SocketAddr,
        bytes: u32,
    },
    Duplicate,
    HashFailure {
        source: SocketAddr,
    },
    Idle,
    /// A worker on probation got its first answer (or had nothing to ask).
    Settled,
    WorkerDone {
        source: SocketAddr,
        end: WorkerEnd,
    },
    Fatal(PeerError),
}

/// Why a worker stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum WorkerEnd {
    /// The download is over (complete, or stopping).
    Finished,
    /// Connection failed, closed or timed out: may be retried later.
    Lost(String),
    /// The source answered `Busy` again and again: its capped uploads are
    /// taken by others for now. It is there and holds the chunks, so it is
    /// asked again after the base delay (no growing back-off), and it
    /// keeps the download from giving up as a request in flight does.
    Busy(String),
    /// Misbehaved (bad hashes, wrong replies): never used again.
    Banned(String),
}

/// Idle chunk buffers, recycled from the assembler to the workers, so that
/// the allocator does not return each chunk's memory to the kernel and
/// fault it back in for the next one. Bounded: buffers beyond
/// [`POOL_BUFFERS`] are simply freed, so memory stays what the chunks in
/// flight need. One pool for the whole process, shared by every download:
/// the files of a folder, downloaded one after another (a few at once),
/// reuse the buffers of the files before them instead of each faulting in
/// and zeroing its own.
pub(super) struct ChunkPool {
    tx: Sender<Vec<u8>>,
    rx: Receiver<Vec<u8>>,
}

/// Idle buffers kept: the chunk channel's 4 plus one being written and one
/// being read.
const POOL_BUFFERS: usize = 6;

/// Both ends of the idle buffers' channel.
type PoolChannel = (Sender<Vec<u8>>, Receiver<Vec<u8>>);

/// The process's idle buffers.
static POOL: std::sync::OnceLock<PoolChannel> = std::sync::OnceLock::new();

impl ChunkPool {
    fn new() -> ChunkPool {
        let (tx, rx) = POOL.get_or_init(|| bounded(POOL_BUFFERS));
        ChunkPool {
            tx: tx.clone(),
            rx: rx.clone(),
        }
    }

    /// A buffer to read the next chunk into (empty if none is idle).
    pub(super) fn take(&self) -> Vec<u8> {
        self.rx.try_recv().unwrap_or_default()
    }

    /// Gives a buffer back (dropped if enough are idle).
    pub(super) fn give(&self, buf: Vec<u8>) {
        if buf.capacity() > 0 {
            let _ = self.tx.try_send(buf);
        }
    }
}

/// Everything one download's threads share.
pub(super) struct Engine<'a> {
    pub(super) name: &'a str,
    pub(super) geometry: Geometry,
    pub(super) hashes: &'a [Digest],
    pub(super) file: &'a Arc<SharedFile>,
    pub(super) picker: Mutex<Picker>,
    pub(super) stop: AtomicBool,
    pub(super) opts: &'a DownloadOptions,
    identity: Digest,
    pub(super) paths: &'a Paths,
    /// Chunk buffers handed back by the assembler for the workers to read
    /// into again.
    pub(super) pool: ChunkPool,
    /// The first error of the background flush (see `flush_behind`).
    pub(super) flush_error: Mutex<Option<std::io::Error>>,
    /// Unchecked chunks queued for (or being hashed by) the assembler.
    pub(super) assembler_checks: AtomicUsize,
}

impl<'a> Engine<'a> {
    pub(super) fn new(
        name: &'a str,
        hashes: &'a [Digest],
        file: &'a Arc<SharedFile>,
        opts: &'a DownloadOptions,
        paths: &'a Paths,
    ) -> Engine<'a> {
        let geometry = *file.geometry();
        Engine {
            name,
            geometry,
            hashes,
            file,
            picker: Mutex::new(Picker::new(file.have(), seed())),
            stop: AtomicBool::new(false),
            opts,
            identity: super::partfile::identity(geometry, hashes),
            paths,
            pool: ChunkPool::new(),
            flush_error: Mutex::new(None),
            assembler_checks: AtomicUsize::new(0),
        }
    }
}

impl Engine<'_> {
    /// Saves which chunks are verified on disk, for a resume.
    pub(super) fn save_have(&self) {
        if let Err(e) = self.paths.save_have(&self.identity, &self.file.have()) {
            warn!("cannot save {}: {e}", self.paths.have.display());
        }
    }

    /// Rejects chunk `index` from `source`, which failed verification (`why`
    /// says how): frees it to be requested again, records the strike against
    /// the source, tells the coordinator (up to the limit; past it the worker
    /// is already dropping the source) and logs it. Returns the source's
    /// strikes so far. The chunk's data is never kept.
    pub(super) fn reject(
        &self,
        source: SocketAddr,
        index: u32,
        why: &str,
        rejects: &Rejects,
        ev: &Sender<Event>,
    ) -> u32 {
        lock(&self.picker).release(index);
        let n = rejects.record(index);
        if n <= self.opts.max_hash_failures {
            let _ = ev.send(Event::HashFailure { source });
        }
        warn!(
            "{source}: chunk {index} of {} {why} ({n} of {} allowed)",
            self.name, self.opts.max_hash_failures
        );
        n
    }

    /// Bytes already verified on disk (a resume).
    pub(super) fn done_bytes(&self) -> u64 {
        let p = lock(&self.picker);
        p.have()
            .iter_ones()
            .filter_map(|i| self.geometry.index(i))
            .map(|i| u64::from(self.geometry.chunk_len(i)))
            .sum()
    }

    /// Runs the download to completion: the flusher and the assembler on
    /// their own threads, the coordinator on this one (it starts a worker
    /// per source). Returns once every thread has been joined.
    pub(super) fn run(
        &self,
        ctx: &DownloadContext<'_>,
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
            let flusher = spawn(scope, "flusher", move || self.flush_behind(flush_rx))?;
            let asm_ev = ev_tx.clone();
            let assembler = spawn(scope, "assembler", move || {
                self.assemble(chunk_rx, asm_ev, flush_tx, ctx.on_chunk)
            })?;
            let mut co = Coordinator::new(self, scope, ctx, self_addr, chunk_tx, ev_tx)?;
            co.apply_locations(first);
            let result = co.drive(&ev_rx, on_progress);
            co.stop_all(&ev_rx);
            // The assembler ends when every chunk sender is gone; it sends at
            // most a few more events (the channel has room for them).
            co.close_chunks();
            join(assembler, "assembler");
            join(flusher, "flusher");
            // Everything reported before the threads stopped: the last
            // chunks' statistics, or a late write error.
            for ev in ev_rx.try_iter() {
                co.absorb(ev);
            }
            result?;
            co.late_error()?;
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
}

/// Starts a named scoped thread.
fn spawn<'scope, 'env>(
    scope: &'scope Scope<'scope, 'env>,
    name: &str,
    f: impl FnOnce() + Send + 'scope,
) -> Result<ScopedJoinHandle<'scope, ()>> {
    thread::Builder::new()
        .name(name.into())
        .spawn_scoped(scope, f)
        .map_err(|e| PeerError::Download(format!("cannot start the {name} thread: {e}")))
}

fn join(h: ScopedJoinHandle<'_, ()>, name: &str) {
    if h.join().is_err() {
        warn!("the {name} thread panicked");
    }
}

/// A seed for the picker's tie-breaking, different in every process.
fn seed() -> u64 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    t ^ (u64::from(std::process::id()) << 32)
}
