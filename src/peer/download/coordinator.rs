//! The coordinator: runs on the caller's thread and decides which sources a
//! download uses.
//!
//! Owns: the sources seen and what is known about them ([`Sources`]: the
//! chunks one holds, kept while it is listed, running or proven; at most
//! `limits::MAX_REMEMBERED_SOURCES` others remembered, banned ones always; when it may be tried again (backing off while it
//! delivers nothing), whether it is banned, its strikes, what it
//! contributed), the workers running ([`Active`]) and which sources get one
//! first (those that delivered; at most `limits::MAX_PROBES` on probation,
//! `MAX_PROBES_PER_HOST` to one host; never more workers than chunks
//! missing), the availability the picker ranks
//! by, asking the locators (one per tracker) for fresh locations (how
//! often: [`refresh_every`]) and merging their answers (each tracker's latest word, a tracker that fails
//! or knows nothing contributing nothing until it answers again),
//! progress reports, and giving up when nothing has progressed for
//! [`DownloadOptions::give_up_after`](super::DownloadOptions).
//!
//! Calls `wire` (Locations), `chunks` (bitmaps), the peer's `client`
//! (merging Locations) and `picker`, `net::deadline` (how long one chunk
//! may take), and the download's `engine`,
//! `locator`, `worker` and `rate`. Never talks to a tracker itself: the
//! locator threads do, so a silent tracker cannot stall the events that
//! workers and the assembler send here.

use std::collections::HashMap;
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, Scope, ScopedJoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded};
use log::{debug, info, warn};

use super::engine::{Engine, Event, Verified, WorkerEnd};
use super::locator::{Located, Locator};
use super::rate::RateMeter;
use super::worker::Slot;
use super::{DownloadContext, Progress, SourceStats};
use crate::chunks::Bitmap;
use crate::limits::{
    LOCATE_BYTES_PER_SEC, MAX_PROBES, MAX_PROBES_PER_HOST, MAX_REMEMBERED_SOURCES,
    MIN_REFRESH_INTERVAL, RETRY_AFTER_MAX,
};
use crate::peer::client;
use crate::peer::{PeerError, Result};
use crate::sync::lock;
use crate::wire::Locations;

/// What is remembered about one endpoint.
struct Known {
    /// What it holds, kept only while it is listed, running or proven
    /// (empty otherwise: a new listing brings it back).
    have: Bitmap,
    retry_at: Instant,
    banned: bool,
    /// Connections in a row that ended without delivering a chunk.
    failures: u32,
    /// `stats.chunks` when its current worker started.
    chunks_at_start: u32,
    stats: SourceStats,
}

/// Every source a download has seen. Pure bookkeeping: no I/O, the time is
/// passed in.
pub(super) struct Sources {
    known: HashMap<SocketAddr, Known>,
}

impl Sources {
    pub(super) fn new() -> Sources {
        Sources {
            known: HashMap::new(),
        }
    }

    /// The tracker lists `addr` as holding `have` (its latest word).
    pub(super) fn listed(&mut self, addr: SocketAddr, have: Bitmap, now: Instant) {
        let k = self.known.entry(addr).or_insert_with(|| Known {
            have: Bitmap::new(have.len()),
            retry_at: now,
            banned: false,
            failures: 0,
            chunks_at_start: 0,
            stats: SourceStats {
                addr,
                bytes: 0,
                chunks: 0,
                hash_failures: 0,
                dropped: None,
            },
        });
        k.have = have;
    }

    /// The chunks `addr` holds, if a worker may be started for it now: known,
    /// not banned, its retry time come, and holding something.
    pub(super) fn ready(&self, addr: SocketAddr, now: Instant) -> Option<&Bitmap> {
        self.known
            .get(&addr)
            .filter(|k| !k.banned && now >= k.retry_at && k.have.count_ones() > 0)
            .map(|k| &k.have)
    }

    /// Whether `addr` has delivered a chunk to this download.
    pub(super) fn proven(&self, addr: SocketAddr) -> bool {
        self.known.get(&addr).is_some_and(|k| k.stats.chunks > 0)
    }

    /// `addrs` in the order workers should be started for them: sources
    /// that delivered (most bytes first), then those never tried or that
    /// failed least often; ties keep the order of `addrs` (the tracker's,
    /// a random sample), so no address is favoured for its value.
    pub(super) fn by_preference(&self, addrs: &[SocketAddr]) -> Vec<SocketAddr> {
        let mut seen = std::collections::HashSet::new();
        let mut v: Vec<(&Known, SocketAddr)> = addrs
            .iter()
            .filter(|a| seen.insert(**a))
            .filter_map(|a| self.known.get(a).map(|k| (k, *a)))
            .collect();
        v.sort_by_key(|(k, _)| {
            (
                k.stats.chunks == 0,
                k.failures,
                std::cmp::Reverse(k.stats.bytes),
            )
        });
        v.into_iter().map(|(_, a)| a).collect()
    }

    /// A worker for `addr` starts.
    pub(super) fn started(&mut self, addr: SocketAddr) {
        if let Some(k) = self.known.get_mut(&addr) {
            k.chunks_at_start = k.stats.chunks;
        }
    }

    /// Chunks `addr` sent bad so far (its strikes).
    pub(super) fn strikes(&self, addr: SocketAddr) -> u32 {
        self.known.get(&addr).map_or(0, |k| k.stats.hash_failures)
    }

    /// A chunk of `bytes` from `addr` was written.
    pub(super) fn written(&mut self, addr: SocketAddr, bytes: u32) {
        if let Some(k) = self.known.get_mut(&addr) {
            k.stats.bytes += u64::from(bytes);
            k.stats.chunks += 1;
        }
    }

    /// A chunk from `addr` failed verification.
    pub(super) fn hash_failure(&mut self, addr: SocketAddr) {
        if let Some(k) = self.known.get_mut(&addr) {
            k.stats.hash_failures += 1;
        }
    }

    /// The worker for `addr` ended at `now`: a lost source may be retried
    /// after `retry_after`, doubled for each connection in a row that
    /// delivered nothing (up to [`RETRY_AFTER_MAX`]); a banned one never.
    pub(super) fn ended(
        &mut self,
        addr: SocketAddr,
        end: &WorkerEnd,
        now: Instant,
        retry_after: Duration,
    ) {
        let Some(k) = self.known.get_mut(&addr) else {
            return;
        };
        match end {
            WorkerEnd::Finished => {}
            WorkerEnd::Lost(why) => {
                if k.stats.chunks > k.chunks_at_start {
                    k.failures = 0;
                } else {
                    k.failures = k.failures.saturating_add(1);
                }
                let doubled = 2u32.saturating_pow(k.failures.saturating_sub(1).min(16));
                k.retry_at = now + retry_after.saturating_mul(doubled).min(RETRY_AFTER_MAX);
                k.stats.dropped = Some(why.clone());
            }
            WorkerEnd::Busy(why) => {
                k.retry_at = now + retry_after;
                k.stats.dropped = Some(why.clone());
            }
            WorkerEnd::Banned(why) => {
                k.banned = true;
                k.stats.dropped = Some(why.clone());
            }
        }
    }

    /// The bitmaps of those of `listed` that are not banned: what the
    /// picker ranks rarity by.
    pub(super) fn availability<'a>(
        &'a self,
        listed: &'a [SocketAddr],
    ) -> impl Iterator<Item = &'a Bitmap> + 'a {
        listed
            .iter()
            .filter_map(|a| self.known.get(a))
            .filter(|k| !k.banned)
            .map(|k| &k.have)
    }

    /// After a new listing: forgets what the sources neither in `listed`
    /// nor `running` nor proven hold, and forgets the least promising of
    /// them (most failures first) beyond [`MAX_REMEMBERED_SOURCES`];
    /// banned ones are kept, without their bitmaps.
    pub(super) fn prune(&mut self, listed: &[SocketAddr], running: &dyn Fn(SocketAddr) -> bool) {
        let listed: std::collections::HashSet<SocketAddr> = listed.iter().copied().collect();
        let mut idle = Vec::new();
        for (a, k) in &mut self.known {
            if listed.contains(a) || running(*a) || k.stats.chunks > 0 {
                continue;
            }
            if !k.have.is_empty() {
                k.have = Bitmap::new(0);
            }
            if !k.banned {
                idle.push((k.failures, *a));
            }
        }
        if idle.len() > MAX_REMEMBERED_SOURCES {
            idle.sort_unstable_by(|x, y| y.cmp(x));
            for (_, a) in &idle[..idle.len() - MAX_REMEMBERED_SOURCES] {
                self.known.remove(a);
            }
        }
    }

    /// Bytes of the bitmaps held, and sources remembered.
    #[cfg(test)]
    fn footprint(&self) -> (usize, usize) {
        let bytes = self.known.values().map(|k| k.have.as_bytes().len()).sum();
        (bytes, self.known.len())
    }

    pub(super) fn addrs(&self) -> Vec<SocketAddr> {
        self.known.keys().copied().collect()
    }

    /// Sources that sent a chunk, failed a check or were dropped, most
    /// bytes first.
    pub(super) fn stats(&self) -> Vec<SourceStats> {
        let mut v: Vec<SourceStats> = self
            .known
            .values()
            .filter(|k| {
                k.stats.chunks > 0 || k.stats.dropped.is_some() || k.stats.hash_failures > 0
            })
            .map(|k| k.stats.clone())
            .collect();
        v.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.addr.cmp(&b.addr)));
        v
    }
}

/// A running worker.
struct Active<'scope> {
    slot: Arc<Slot>,
    handle: ScopedJoinHandle<'scope, ()>,
}

/// One tracker as the download sees it.
struct Tracked<'scope> {
    addr: SocketAddr,
    locator: Locator<'scope>,
    /// Its latest usable Locations (None: not asked yet, failed, knows no
    /// source, or describes other content).
    latest: Option<Locations>,
    /// Its last query failed (warned once, until it answers).
    down: bool,
    /// Its last answer with hashes described other content under the
    /// name: its sources are not used.
    other: bool,
}

pub(super) struct Coordinator<'scope, 'env: 'scope> {
    engine: &'env Engine<'env>,
    scope: &'scope Scope<'scope, 'env>,
    /// One per tracker, in the order given.
    trackers: Vec<Tracked<'scope>>,
    self_addr: Option<SocketAddr>,
    active: HashMap<SocketAddr, Active<'scope>>,
    sources: Sources,
    /// The sources of the latest locations, in the tracker's order.
    listed: Vec<SocketAddr>,
    chunk_tx: Option<Sender<Verified>>,
    ev_tx: Sender<Event>,
    bytes_downloaded: u64,
    duplicates: u32,
    rate: RateMeter,
    started: Instant,
    last_refresh: Instant,
    refresh_wanted: bool,
    last_progress: Instant,
    /// When a source last turned this download away with `Busy` (its
    /// capped uploads taken by others): a source that is there and will
    /// serve, which counts as a request in flight in [`Coordinator::check_stuck`].
    last_busy: Option<Instant>,
    /// The most connections read through the download limit at once
    /// since `last_progress` (by every download sharing it): how slowly
    /// a chunk may have come in meanwhile.
    peak_readers: usize,
    done_bytes: u64,
    cancel: Option<&'env AtomicBool>,
    late_error: Option<PeerError>,
}

/// Bytes downloaded, duplicates, and per-source statistics.
type Outcome = (u64, u32, Vec<SourceStats>);

impl<'scope, 'env> Coordinator<'scope, 'env> {
    pub(super) fn new(
        engine: &'env Engine<'env>,
        scope: &'scope Scope<'scope, 'env>,
        ctx: &DownloadContext<'env>,
        self_addr: Option<SocketAddr>,
        chunk_tx: Sender<Verified>,
        ev_tx: Sender<Event>,
    ) -> Result<Self> {
        let mut trackers: Vec<Tracked<'scope>> = Vec::with_capacity(ctx.trackers.len());
        for &addr in ctx.trackers {
            match Locator::start(scope, addr, engine.name) {
                Ok(locator) => trackers.push(Tracked {
                    addr,
                    locator,
                    latest: None,
                    down: false,
                    other: false,
                }),
                Err(e) => {
                    trackers.iter_mut().for_each(|t| t.locator.begin_stop());
                    trackers.iter_mut().for_each(|t| t.locator.stop());
                    return Err(e);
                }
            }
        }
        Ok(Coordinator {
            engine,
            scope,
            trackers,
            self_addr,
            active: HashMap::new(),
            sources: Sources::new(),
            listed: Vec::new(),
            chunk_tx: Some(chunk_tx),
            ev_tx,
            bytes_downloaded: 0,
            duplicates: 0,
            rate: RateMeter::new(),
            started: Instant::now(),
            last_refresh: Instant::now(),
            refresh_wanted: false,
            last_progress: Instant::now(),
            last_busy: None,
            peak_readers: 0,
            cancel: ctx.cancel,
            late_error: None,
            done_bytes: engine.done_bytes(),
        })
    }

    /// Runs until the file is complete, cancelled, failed or given up.
    pub(super) fn drive(
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
            // Fresh locations are worth asking for often only while a worker
            // has nothing to fetch from its source: with every worker busy,
            // the download asks at its ordinary pace, so a swarm that is not
            // starved costs its trackers a Locate per 1.5 s per download.
            let fast = refresh_every(
                e.opts.refresh_interval,
                self.listed.len(),
                e.geometry.count(),
            );
            let starved = self.refresh_wanted || self.any_worker_idle();
            if since
                >= if starved {
                    fast
                } else {
                    e.opts.refresh_interval
                }
            {
                self.refresh();
            }
            for i in 0..self.trackers.len() {
                while let Some(answer) = self.trackers[i].locator.answer() {
                    self.located(i, answer);
                }
            }
            if last_report.is_none_or(|t| now.duration_since(t) >= Duration::from_millis(200)) {
                self.report(on_progress);
                last_report = Some(now);
            }
            self.check_stuck()?;
            match ev_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(ev) => self.handle(ev)?,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
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
                self.peak_readers = 0;
                self.sources.written(source, bytes);
            }
            Event::Duplicate => self.duplicates += 1,
            Event::HashFailure { source } => self.sources.hash_failure(source),
            Event::Idle => self.refresh_wanted = true,
            // A probe's place is free: the next listed source may start.
            Event::Settled => self.spawn_listed(),
            Event::WorkerDone { source, end } => self.worker_done(source, end),
            Event::Fatal(e) => return Err(e),
        }
        Ok(())
    }

    fn worker_done(&mut self, source: SocketAddr, end: WorkerEnd) {
        if let Some(a) = self.active.remove(&source) {
            let _ = a.handle.join();
        }
        let name = self.engine.name;
        match &end {
            WorkerEnd::Finished => {}
            WorkerEnd::Lost(why) => info!("{name}: source {source} lost: {why}"),
            WorkerEnd::Busy(why) => {
                info!("{name}: source {source} busy, asked again later: {why}");
                self.last_busy = Some(Instant::now());
            }
            WorkerEnd::Banned(why) => warn!("{name}: dropping source {source}: {why}"),
        }
        let retry_after = self.engine.opts.retry_after;
        self.sources
            .ended(source, &end, Instant::now(), retry_after);
        self.refresh_wanted = true;
    }

    /// Gives up when no chunk was written for `give_up_after` with nothing
    /// in flight and no source answering `Busy` within that time, or,
    /// whatever is in flight, for the longer of that and the
    /// time one chunk may take (the I/O timeout plus a chunk at
    /// `MIN_CHUNK_TRANSFER_RATE`, the client's deadline for a `ChunkData`;
    /// under a download limit, at least the I/O timeout plus the time a
    /// chunk takes when the limit is shared by every source reading
    /// through it, twice over): requests kept open without delivering (`NotHeld` to everything,
    /// replies trickled and cut off one after another) are no progress.
    fn check_stuck(&mut self) -> Result<()> {
        let e = self.engine;
        self.peak_readers = self.peak_readers.max(e.opts.download_limit.readers());
        let stalled = self.last_progress.elapsed();
        if stalled < e.opts.give_up_after {
            return Ok(());
        }
        let p = lock(&e.picker);
        let missing: Vec<u32> = (0..p.have().len()).filter(|&i| !p.have().get(i)).collect();
        if missing.is_empty() {
            // Every chunk is in: its `Written` is on its way (the picker
            // learns first). A last chunk that took longer than
            // `give_up_after` is no reason to fail.
            return Ok(());
        }
        let chunk = u64::from(e.geometry.chunk_size());
        let one_chunk = crate::net::deadline::chunk_allowance(e.opts.io_timeout, chunk);
        // Under a download limit shared by many sources (several downloads
        // at once), a chunk may take longer still: waiting for our own
        // limit is not the sources stalling. Counted with the most sources
        // that shared it since the last progress (a chunk that came slowly
        // while they did is not late once some have finished).
        let one_chunk = match e.opts.download_limit.shared_time(chunk, self.peak_readers) {
            Some(t) => one_chunk.max(e.opts.io_timeout.saturating_add(t)),
            None => one_chunk,
        };
        // A source busy with others' uploads is waited for like one
        // sending slowly: within the same bound, so one that answers only
        // `Busy` cannot keep the download waiting for longer.
        let busy = self
            .last_busy
            .is_some_and(|t| t.elapsed() < e.opts.give_up_after);
        if stalled < e.opts.give_up_after.max(one_chunk)
            && (busy || missing.iter().any(|&i| p.in_flight(i) > 0))
        {
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
            stalled.as_secs()
        )))
    }

    /// Whether a worker is waiting with nothing to ask its source for (not
    /// one paused after `Busy`), or there is no worker at all.
    fn any_worker_idle(&self) -> bool {
        self.active.is_empty()
            || self
                .active
                .values()
                .any(|a| a.slot.idle.load(Ordering::SeqCst))
    }

    /// Asks every locator for fresh locations (answered later, in
    /// [`Coordinator::located`]). While no tracker answers, known sources
    /// whose retry time has come are connected to again.
    fn refresh(&mut self) {
        self.last_refresh = Instant::now();
        self.refresh_wanted = false;
        for t in &self.trackers {
            t.locator.ask();
        }
        if self.trackers.iter().all(|t| t.down) {
            self.spawn_ready();
        }
    }

    /// Takes in the answer of tracker `i`'s locator.
    fn located(&mut self, i: usize, answer: Located) {
        let name = self.engine.name;
        let several = self.trackers.len() > 1;
        let g = self.engine.geometry;
        let hashes = self.engine.hashes;
        let t = &mut self.trackers[i];
        let addr = t.addr;
        if t.down && !matches!(answer, Located::Failed(_)) {
            info!("{name}: tracker {addr} answers again");
            t.down = false;
        }
        match answer {
            Located::Found(l) => {
                // Without hashes, as its last answer with them said.
                let other =
                    !describes(g, &l) || l.hashes.as_deref().map_or(t.other, |h| h != hashes);
                if other && !t.other {
                    warn!(
                        "{name}: tracker {addr} describes other content under this name; \
                         not using its sources"
                    );
                }
                t.other = other;
                t.latest = (!other).then_some(l);
            }
            Located::NoSources => {
                debug!("{name}: tracker {addr} lists no source right now");
                t.latest = None;
            }
            Located::Failed(why) => {
                t.latest = None;
                if !t.down {
                    t.down = true;
                    let others = if several && self.trackers.iter().any(|o| !o.down) {
                        "the other trackers"
                    } else {
                        "known sources"
                    };
                    warn!("{name}: tracker {addr}: {why}; continuing with {others}");
                }
            }
        }
        let answers: Vec<(SocketAddr, Locations)> = self
            .trackers
            .iter()
            .filter_map(|t| t.latest.clone().map(|l| (t.addr, l)))
            .collect();
        if answers.is_empty() {
            self.spawn_ready();
        } else {
            let (merged, _) = client::merge_locations(answers);
            self.apply_locations(merged);
        }
    }

    /// Takes in a Locations reply: every source's chunks, the availability,
    /// and workers for the sources that have none yet.
    pub(super) fn apply_locations(&mut self, l: Locations) {
        let g = self.engine.geometry;
        if !describes(g, &l) {
            warn!(
                "{}: the network now describes other content under this name; ignoring it",
                self.engine.name
            );
            return;
        }
        let now = Instant::now();
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
                let changed = {
                    let mut h = lock(&a.slot.have);
                    let changed = *h != have;
                    if changed {
                        h.clone_from(&have);
                    }
                    changed
                };
                // A worker with a request out or paused after `Busy` looks
                // at the new bitmap when it next picks; waking it would
                // cost a turn of its loop for nothing.
                if changed && a.slot.idle.load(Ordering::SeqCst) {
                    let _ = a.slot.wake_tx.try_send(());
                }
            }
            self.sources.listed(addr, have, now);
            listed.push(addr);
        }
        // Rarest first across the latest locations (a source just dropped
        // for lying does not count).
        lock(&self.engine.picker).set_availability(self.sources.availability(&listed));
        let active = &self.active;
        self.sources
            .prune(&listed, &|a: SocketAddr| active.contains_key(&a));
        self.listed = listed;
        self.spawn_listed();
    }

    /// Starts workers for the sources of the latest locations that have
    /// none, best first, as far as the caps allow.
    fn spawn_listed(&mut self) {
        for addr in self.sources.by_preference(&self.listed) {
            self.spawn_if_ready(addr);
        }
    }

    /// Restarts workers for known sources whose retry time has come.
    fn spawn_ready(&mut self) {
        for a in self.sources.by_preference(&self.sources.addrs()) {
            self.spawn_if_ready(a);
        }
    }

    fn spawn_if_ready(&mut self, addr: SocketAddr) {
        if self.active.contains_key(&addr)
            || self.active.len()
                >= self
                    .engine
                    .opts
                    .max_sources()
                    .min(self.missing_chunks().max(1))
            || self.engine.stop.load(Ordering::SeqCst)
        {
            return;
        }
        let proven = self.sources.proven(addr);
        if !proven
            && (self.probes(None) >= MAX_PROBES
                || self.probes(Some(host(addr.ip()))) >= MAX_PROBES_PER_HOST)
        {
            return;
        }
        let Some(have) = self.sources.ready(addr, Instant::now()) else {
            return;
        };
        let strikes = self.sources.strikes(addr);
        let Some(chunk_tx) = self.chunk_tx.clone() else {
            return;
        };
        let (wake_tx, wake_rx) = bounded(1);
        let slot = Arc::new(Slot {
            addr,
            have: Mutex::new(have.clone()),
            stream: Mutex::new(None),
            strikes,
            proven,
            settled: AtomicBool::new(false),
            idle: AtomicBool::new(false),
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
                self.sources.started(addr);
                self.active.insert(addr, Active { slot, handle });
            }
            Err(e) => warn!("cannot start a worker for {addr}: {e}"),
        }
    }

    /// Chunks not verified yet: no more workers than that are started
    /// (another would only ask for copies of chunks already requested, and
    /// cost a connection: for a file of one chunk, one source is asked).
    fn missing_chunks(&self) -> usize {
        let p = lock(&self.engine.picker);
        let have = p.have();
        usize::try_from(have.len() - have.count_ones()).unwrap_or(usize::MAX)
    }

    /// Workers on probation (to host `on`, if given): their source has not
    /// delivered to this download and has not answered yet.
    fn probes(&self, on: Option<IpAddr>) -> usize {
        self.active
            .iter()
            .filter(|(a, _)| on.is_none_or(|h| host(a.ip()) == h))
            .filter(|(a, w)| !w.slot.settled.load(Ordering::SeqCst) && !self.sources.proven(**a))
            .count()
    }

    /// Stops every worker: flag, close its socket, wake it, and join it,
    /// while still draining events so a worker or the assembler blocked on
    /// a full channel can finish.
    pub(super) fn stop_all(&mut self, ev_rx: &Receiver<Event>) {
        self.engine.stop.store(true, Ordering::SeqCst);
        self.trackers
            .iter_mut()
            .for_each(|t| t.locator.begin_stop());
        self.trackers.iter_mut().for_each(|t| t.locator.stop());
        for a in self.active.values() {
            if let Some(s) = lock(&a.slot.stream).as_ref() {
                let _ = s.shutdown(Shutdown::Both);
            }
            let _ = a.slot.wake_tx.try_send(());
        }
        while !self.active.is_empty() {
            match ev_rx.recv_timeout(Duration::from_millis(50)) {
                Ok(ev) => self.absorb(ev),
                Err(RecvTimeoutError::Timeout) => self.reap(),
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
    }

    /// Joins the workers that have ended.
    fn reap(&mut self) {
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

    /// Drops the coordinator's chunk sender: once the workers' are gone too,
    /// the assembler ends.
    pub(super) fn close_chunks(&mut self) {
        drop(self.chunk_tx.take());
    }

    /// Handles an event after the main loop ended, keeping the first error.
    pub(super) fn absorb(&mut self, ev: Event) {
        if let Err(e) = self.handle(ev) {
            self.late_error.get_or_insert(e);
        }
    }

    /// The first error reported after the main loop ended, if any.
    pub(super) fn late_error(&mut self) -> Result<()> {
        self.late_error.take().map_or(Ok(()), Err)
    }

    pub(super) fn report(&self, on_progress: &mut dyn FnMut(&Progress)) {
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

    pub(super) fn outcome(&self) -> Outcome {
        (self.bytes_downloaded, self.duplicates, self.sources.stats())
    }
}

/// How often to ask the trackers for fresh locations: as often as every
/// `limits::MIN_REFRESH_INTERVAL` while a reply (`sources` bitmaps of
/// `count` chunks) is small, so that a chunk a peer has just got is known
/// to the others within a fraction of a second and they fetch it there;
/// less often as replies grow, so that this download asks for at most
/// `limits::LOCATE_BYTES_PER_SEC` of them; never less often than `longest`
/// (`DownloadOptions::refresh_interval`).
pub(super) fn refresh_every(longest: Duration, sources: usize, count: u32) -> Duration {
    let reply = sources.max(1) as u64 * (u64::from(count).div_ceil(8) + 32);
    let by_size = Duration::from_secs_f64(reply as f64 / LOCATE_BYTES_PER_SEC as f64);
    by_size.clamp(MIN_REFRESH_INTERVAL.min(longest), longest)
}

/// Whether `l` describes the file of geometry `g` (same length, chunk size
/// and count).
fn describes(g: crate::chunks::Geometry, l: &Locations) -> bool {
    l.length == g.length() && l.chunk_size == g.chunk_size() && l.chunk_count == g.count()
}

/// Whether `addr` is this peer: same port, and the same host as seen by the
/// tracker, or both loopback with one of them the usual loopback address
/// (127.0.0.1 or ::1: a peer listening on every address is seen there).
/// Peers given distinct addresses in 127/8 (`--listen 127.0.0.7`) may
/// share a port number, so two such addresses are told apart.
pub(super) fn is_self(addr: SocketAddr, me: Option<SocketAddr>) -> bool {
    let Some(me) = me else { return false };
    let (a, m) = (addr.ip().to_canonical(), me.ip().to_canonical());
    let usual = |ip: IpAddr| {
        ip == IpAddr::from([127, 0, 0, 1]) || ip == IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
    };
    addr.port() == me.port()
        && (a == m || (is_loopback(a) && is_loopback(m) && (usual(a) || usual(m))))
}

/// The host an address belongs to: the IPv4 address, or the IPv6 /64 (one
/// host is usually given a whole /64).
fn host(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
        }
        v4 => v4,
    }
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
    use crate::chunks::bitmap_bytes;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn bits(n: u32, set: &[u32]) -> Bitmap {
        let mut b = Bitmap::new(n);
        for &i in set {
            b.set(i);
        }
        b
    }

    #[test]
    fn small_replies_are_refreshed_often_and_large_ones_less() {
        let most = Duration::from_millis(1500);
        // 64 sources of a 256-chunk file: a few KiB, as often as allowed.
        assert_eq!(refresh_every(most, 64, 256), MIN_REFRESH_INTERVAL);
        // The largest file refreshed as often as allowed (protocol.md §10:
        // "about 8,000 chunks"), and the next size up.
        assert_eq!(refresh_every(most, 64, 7936), MIN_REFRESH_INTERVAL);
        assert!(refresh_every(most, 64, 7944) > MIN_REFRESH_INTERVAL);
        // 64 sources of 2^19 chunks (4 MiB a reply): the longest interval.
        assert_eq!(refresh_every(most, 64, 1 << 19), most);
        // In between, in proportion to the reply.
        let mid = refresh_every(most, 64, 32_768);
        assert!(mid > MIN_REFRESH_INTERVAL && mid < most, "{mid:?}");
        // A shorter longest interval (tests) is kept.
        let short = Duration::from_millis(100);
        assert_eq!(refresh_every(short, 64, 1 << 19), short);
        assert_eq!(refresh_every(short, 0, 8), short);
    }

    #[test]
    fn index_lists_are_compact() {
        assert_eq!(list_indices(&[3, 7, 9, 10, 11, 12]), "3, 7, 9-12");
        assert_eq!(list_indices(&[]), "");
        let many: Vec<u32> = (0..100).map(|i| i * 2).collect();
        assert!(list_indices(&many).ends_with(", …"));
    }

    #[test]
    fn hosts_are_ipv4_addresses_or_ipv6_64s() {
        let h = |s: &str| host(s.parse().unwrap());
        assert_eq!(h("10.0.0.1"), h("10.0.0.1"));
        assert_ne!(h("10.0.0.1"), h("10.0.0.2"));
        assert_eq!(h("2001:db8:1:2::1"), h("2001:db8:1:2:ffff::9"));
        assert_ne!(h("2001:db8:1:2::1"), h("2001:db8:1:3::1"));
        assert_eq!(h("::ffff:10.0.0.1"), h("10.0.0.1"));
    }

    #[test]
    fn self_is_recognised() {
        let me: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert!(is_self("127.0.0.1:5000".parse().unwrap(), Some(me)));
        assert!(is_self("127.0.0.2:5000".parse().unwrap(), Some(me)));
        // Two peers on their own loopback addresses, same port: not self.
        let own: SocketAddr = "127.0.0.7:5000".parse().unwrap();
        assert!(is_self("127.0.0.7:5000".parse().unwrap(), Some(own)));
        assert!(is_self("127.0.0.1:5000".parse().unwrap(), Some(own)));
        assert!(!is_self("127.0.0.8:5000".parse().unwrap(), Some(own)));
        assert!(!is_self("127.0.0.1:5001".parse().unwrap(), Some(me)));
        assert!(!is_self("10.0.0.1:5000".parse().unwrap(), Some(me)));
        assert!(!is_self("127.0.0.1:5000".parse().unwrap(), None));
    }

    #[test]
    fn a_listed_source_is_ready_only_when_it_holds_something() {
        let now = Instant::now();
        let mut s = Sources::new();
        assert!(s.ready(addr(1), now).is_none(), "unknown");
        s.listed(addr(1), bits(8, &[]), now);
        assert!(s.ready(addr(1), now).is_none(), "holds nothing");
        s.listed(addr(1), bits(8, &[2, 5]), now);
        assert_eq!(s.ready(addr(1), now), Some(&bits(8, &[2, 5])));
    }

    #[test]
    fn a_lost_source_waits_for_its_retry_time_and_a_banned_one_never_returns() {
        let now = Instant::now();
        let later = now + Duration::from_secs(2);
        let mut s = Sources::new();
        s.listed(addr(1), bits(4, &[0]), now);
        s.listed(addr(2), bits(4, &[1]), now);
        let two = Duration::from_secs(2);
        s.ended(addr(1), &WorkerEnd::Lost("reset".into()), now, two);
        s.ended(addr(2), &WorkerEnd::Banned("lied".into()), now, two);
        assert!(s.ready(addr(1), now).is_none());
        assert!(s.ready(addr(1), later).is_some());
        // Listed again by the tracker: still banned.
        s.listed(addr(2), bits(4, &[1, 2]), later);
        assert!(s.ready(addr(2), later + Duration::from_secs(60)).is_none());
        let listed = [addr(1), addr(2), addr(3)];
        let avail: Vec<&Bitmap> = s.availability(&listed).collect();
        assert_eq!(avail, vec![&bits(4, &[0])], "banned and unknown left out");
        // A finished worker changes nothing.
        s.ended(addr(1), &WorkerEnd::Finished, later, two);
        assert!(s.ready(addr(1), later).is_some());
    }

    #[test]
    fn strikes_are_counted_per_source_across_its_connections() {
        let now = Instant::now();
        let mut s = Sources::new();
        s.listed(addr(1), bits(4, &[0]), now);
        assert_eq!(s.strikes(addr(1)), 0);
        s.hash_failure(addr(1));
        s.ended(
            addr(1),
            &WorkerEnd::Lost("closed".into()),
            now,
            Duration::ZERO,
        );
        s.hash_failure(addr(1));
        assert_eq!(s.strikes(addr(1)), 2);
        assert_eq!(s.strikes(addr(2)), 0, "unknown");
    }

    #[test]
    fn sources_that_fail_without_delivering_back_off_and_come_last() {
        let now = Instant::now();
        let base = Duration::from_secs(2);
        let lost = WorkerEnd::Lost("Hello timed out".into());
        let mut s = Sources::new();
        for p in 1..=4 {
            s.listed(addr(p), bits(4, &[0]), now);
        }
        // 1 never answers: 2 s, 4 s, 8 s, ... up to the cap.
        let mut waits = Vec::new();
        for _ in 0..8 {
            s.started(addr(1));
            s.ended(addr(1), &lost, now, base);
            let wait = (1..=120u64)
                .map(Duration::from_secs)
                .find(|d| s.ready(addr(1), now + *d).is_some())
                .unwrap();
            waits.push(wait.as_secs());
        }
        assert_eq!(waits, vec![2, 4, 8, 16, 32, 60, 60, 60]);
        // 2 delivered, then lost its connection: back after the base delay.
        s.started(addr(2));
        s.written(addr(2), 1000);
        s.ended(addr(2), &lost, now, base);
        assert!(s.ready(addr(2), now + base).is_some());
        assert!(s.proven(addr(2)) && !s.proven(addr(3)));
        // 3 failed once; 4 was never tried.
        s.started(addr(3));
        s.ended(addr(3), &lost, now, base);
        let all = [addr(1), addr(3), addr(4), addr(2), addr(9)];
        assert_eq!(
            s.by_preference(&all),
            vec![addr(2), addr(4), addr(3), addr(1)],
            "delivered first, then by failures; unknown left out"
        );
    }

    /// Review 2, finding 6: a swarm sampled 64 sources at a time keeps
    /// only the latest sample's bitmaps (plus running and proven sources)
    /// and a bounded number of records.
    #[test]
    fn sources_seen_once_do_not_keep_their_bitmaps_or_grow_without_bound() {
        let now = Instant::now();
        let n = 1u32 << 19;
        let mut s = Sources::new();
        let a = |i: u32| SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 7000));
        s.listed(a(0), bits(n, &[1]), now);
        s.started(a(0));
        s.written(a(0), 1000); // proven
        for round in 0..40u32 {
            let listed: Vec<SocketAddr> = (0..64).map(|j| a(1 + round * 64 + j)).collect();
            for &x in &listed {
                s.listed(x, Bitmap::full(n), now);
            }
            let running = |x: SocketAddr| x == listed[0];
            s.prune(&listed, &running);
        }
        let (bytes, remembered) = s.footprint();
        eprintln!("{bytes} bytes of bitmaps, {remembered} sources remembered");
        let one = bitmap_bytes(n);
        assert!(bytes <= (64 + 1) * one, "{bytes} bytes of bitmaps");
        assert!(
            remembered <= MAX_REMEMBERED_SOURCES + 64 + 1,
            "{remembered}"
        );
        assert!(s.proven(a(0)) && s.ready(a(0), now).is_some());
        // A source forgotten and listed again is usable at once.
        s.listed(a(1), bits(n, &[3]), now);
        assert!(s.ready(a(1), now).is_some());
    }

    #[test]
    fn stats_list_contributors_and_dropped_sources_most_bytes_first() {
        let now = Instant::now();
        let mut s = Sources::new();
        for p in 1..=4 {
            s.listed(addr(p), bits(4, &[0]), now);
        }
        s.written(addr(1), 100);
        s.written(addr(2), 300);
        s.written(addr(2), 300);
        s.hash_failure(addr(3));
        s.written(addr(9), 1); // unknown: ignored
        let v = s.stats();
        let order: Vec<u16> = v.iter().map(|x| x.addr.port()).collect();
        assert_eq!(order, vec![2, 1, 3], "source 4 contributed nothing");
        assert_eq!((v[0].bytes, v[0].chunks), (600, 2));
        assert_eq!(v[2].hash_failures, 1);
        s.ended(
            addr(4),
            &WorkerEnd::Lost("timed out".into()),
            now,
            Duration::ZERO,
        );
        assert_eq!(s.stats().len(), 4);
        assert_eq!(s.stats()[3].dropped.as_deref(), Some("timed out"));
    }
}
