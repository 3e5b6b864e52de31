//! One worker: the connection to one source.
//!
//! Owns: the worker thread's loop over its own TCP connection: connect and
//! greet (a short deadline for a source on probation), fill the pipeline
//! (pick rarest-first under the picker lock, up to the pipeline depth and
//! never more than `limits::MAX_REQUEST_BYTES_IN_FLIGHT` of requests; an
//! endgame copy only after `limits::ENDGAME_GRACE` idle), read
//! a reply, and either verify the chunk here or hand it to the assembler to
//! hash ([`Worker::verify_or_hand_off`]), then pass it on through the
//! bounded chunk channel. Also owns the per-connection retry rules of
//! docs/protocol.md §10: a strike for a bad chunk or a reply for another
//! chunk (asked again, of this source only when nothing else is left), a
//! chunk put off after `NotHeld`, a pause after `Busy` (the source dropped
//! for now after two in a row), and dropping the source at its strike
//! limit. And [`Slot`], the coordinator's and the worker's shared view of
//! the source.
//!
//! Reads of the socket go through the download limit
//! ([`DownloadOptions::download_limit`](super::DownloadOptions), shared by
//! every worker of every download given the same options) when one is set.
//!
//! Calls `wire` (requests), `chunks` (SHA-1), `net::client` (the read
//! gate), the peer's `client` (the connection), `ratelimit` and `picker`,
//! and the download's `engine`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::engine::{Engine, Event, Rejects, Verified, WorkerEnd};
use crate::chunks::{self, Bitmap};
use crate::limits::{
    BUSY_PAUSE, ENDGAME_GRACE, MAX_BUSY_IN_A_ROW, MAX_NOT_HELD_IN_A_ROW,
    MAX_REQUEST_BYTES_IN_FLIGHT, NOT_HELD_RETRY, NOT_HELD_RETRY_MAX,
};
use crate::net::client::ReadGate;
use crate::peer::client::{self, Conn};
use crate::peer::picker::Picker;
use crate::sync::lock;
use crate::wire::{ErrorCode, Message};

/// The coordinator's and worker's shared view of one source.
pub(super) struct Slot {
    pub(super) addr: SocketAddr,
    /// The chunks the source holds (refreshed by the coordinator).
    pub(super) have: Mutex<Bitmap>,
    /// A clone of the worker's socket, so stopping can unblock its read.
    pub(super) stream: Mutex<Option<TcpStream>>,
    /// Chunks the source sent bad on earlier connections of this download:
    /// its strikes start there.
    pub(super) strikes: u32,
    /// Whether the source has delivered a chunk to this download: if not,
    /// it must connect and greet within the short
    /// [`DownloadOptions::new_source_timeout`](super::DownloadOptions).
    pub(super) proven: bool,
    /// Set once the source answered a request, or held nothing to ask it
    /// for: the worker is then no longer a probe (see `limits::MAX_PROBES`).
    pub(super) settled: AtomicBool,
    /// Set while the worker waits with nothing to ask its source (not
    /// while a request is out, nor while paused after `Busy`): only then
    /// do new locations wake it.
    pub(super) idle: AtomicBool,
    /// Wakes an idle worker (new locations, or stopping).
    pub(super) wake_tx: Sender<()>,
    pub(super) wake_rx: Receiver<()>,
}

/// One worker's state on its connection.
struct Worker<'a, 'e> {
    engine: &'a Engine<'e>,
    slot: &'a Slot,
    chunk_tx: &'a Sender<Verified>,
    ev: &'a Sender<Event>,
    /// Requests kept in flight: the pipeline depth, but never more than
    /// [`MAX_REQUEST_BYTES_IN_FLIGHT`] of them.
    depth: usize,
    /// Requests sent and not answered yet, in order.
    inflight: VecDeque<u32>,
    /// Chunks this source sent wrong (found here or by the assembler).
    rejects: Arc<Rejects>,
    /// The chunks in `rejects`, never asked of this source again.
    avoid: Vec<u32>,
    /// Chunks the source answered `NotHeld` for, not asked of it again yet.
    put_off: PutOff,
    /// Set after a `Busy` answer: no new request to this source before
    /// then ([`BUSY_PAUSE`]).
    paused_until: Option<Instant>,
    /// Whether the coordinator was told this worker ran dry since its
    /// last request.
    told_idle: bool,
    /// `Busy` answers in a row: at [`MAX_BUSY_IN_A_ROW`] the source is
    /// dropped for now.
    busy_run: u32,
    /// `NotHeld` and `Busy` answers since the source last delivered a chunk: at
    /// [`MAX_NOT_HELD_IN_A_ROW`] the source is dropped for now.
    not_held_run: u32,
    /// Chunks verified here and queued for the assembler but not yet
    /// written: the picker still counts them in flight, so without this the
    /// endgame would ask this same source for them again.
    handed: Vec<u32>,
    /// The encoded requests of one pipeline fill.
    batch: Vec<u8>,
    /// The buffer the next chunk is read into.
    spare: Vec<u8>,
    /// Since when this worker has had nothing to ask but endgame copies
    /// (they wait for [`ENDGAME_GRACE`]).
    endgame_from: Option<Instant>,
}

/// The chunks put off after `NotHeld`, in the order they may be asked
/// again: each step costs the chunks whose time came (plus one pass over
/// the bitmap's words), not the number put off.
struct PutOff {
    /// Set while a chunk is put off.
    now: Bitmap,
    /// `(until, index)`, earliest first; one entry per chunk set in `now`
    /// (a chunk is put off only after a request, which it cannot get while
    /// put off).
    queue: BinaryHeap<Reverse<(Instant, u32)>>,
    /// The last wait per chunk, doubled with each further `NotHeld`.
    wait: HashMap<u32, Duration>,
}

impl PutOff {
    fn new(len: u32) -> PutOff {
        PutOff {
            now: Bitmap::new(len),
            queue: BinaryHeap::new(),
            wait: HashMap::new(),
        }
    }

    /// Puts chunk `index` off from `now`.
    fn defer(&mut self, index: u32, now: Instant) {
        let w = self.wait.entry(index).or_insert(NOT_HELD_RETRY / 2);
        *w = (*w * 2).min(NOT_HELD_RETRY_MAX);
        if self.now.set(index) {
            self.queue.push(Reverse((now + *w, index)));
        }
    }

    /// Frees the chunks whose time has come.
    fn expire(&mut self, now: Instant) {
        while let Some(&Reverse((until, index))) = self.queue.peek() {
            if until > now {
                break;
            }
            self.queue.pop();
            self.now.clear(index);
        }
    }
}

impl Engine<'_> {
    /// The worker thread for one source: connect, greet, download until
    /// done or the source fails; every request still in flight is released.
    pub(super) fn work(
        &self,
        slot: &Slot,
        chunk_tx: Sender<Verified>,
        ev: &Sender<Event>,
    ) -> WorkerEnd {
        let io_timeout = self.opts.io_timeout;
        let (connect_timeout, hello_timeout) = if slot.proven {
            (client::CONNECT_TIMEOUT, io_timeout)
        } else {
            let t = self.opts.new_source_timeout;
            (client::CONNECT_TIMEOUT.min(t), io_timeout.min(t))
        };
        let stream = match crate::net::client::connect_timeout(slot.addr, connect_timeout) {
            Ok(s) => s,
            Err(e) => return WorkerEnd::Lost(format!("cannot connect: {e}")),
        };
        // Registered before the Hello, so stopping can interrupt a source
        // that accepts but never greets.
        *lock(&slot.stream) = stream.try_clone().ok();
        if self.stop.load(Ordering::SeqCst) {
            return WorkerEnd::Finished;
        }
        let mut conn = match Conn::from_stream(stream, hello_timeout) {
            Ok(c) => c,
            Err(e) => return WorkerEnd::Lost(e.to_string()),
        };
        if hello_timeout != io_timeout {
            let s = conn.stream();
            if let Err(e) = s
                .set_read_timeout(Some(io_timeout))
                .and_then(|()| s.set_write_timeout(Some(io_timeout)))
            {
                return WorkerEnd::Lost(e.to_string());
            }
        }
        if self.opts.download_limit.rate().is_some() {
            conn.gate_reads(Arc::clone(&self.opts.download_limit) as Arc<dyn ReadGate>);
        }
        let mut w = Worker {
            engine: self,
            slot,
            chunk_tx: &chunk_tx,
            ev,
            depth: self.depth(),
            inflight: VecDeque::new(),
            rejects: Arc::new(Rejects::starting_at(slot.strikes)),
            avoid: Vec::new(),
            put_off: PutOff::new(self.geometry.count()),
            not_held_run: 0,
            paused_until: None,
            busy_run: 0,
            told_idle: false,
            handed: Vec::new(),
            batch: Vec::new(),
            spare: Vec::new(),
            endgame_from: None,
        };
        let end = loop {
            if let Err(end) = w.step(&mut conn) {
                break end;
            }
        };
        // The buffer in hand goes back to the (process-wide) pool for the
        // next worker, of this download or of the next file.
        self.pool.give(std::mem::take(&mut w.spare));
        let mut p = lock(&self.picker);
        for i in w.inflight {
            p.release(i);
        }
        if self.stop.load(Ordering::SeqCst) {
            // Our socket was closed under us because the download is over.
            return WorkerEnd::Finished;
        }
        end
    }
}

impl Engine<'_> {
    /// The pipeline depth, bounded so the requests in flight never exceed
    /// [`MAX_REQUEST_BYTES_IN_FLIGHT`] (all of one worker's requests have
    /// the same length: only the index differs).
    fn depth(&self) -> usize {
        let mut one = Vec::new();
        let req = Message::ChunkRequest {
            name: self.name.to_owned(),
            index: 0,
        };
        let len = req.encode(&mut one).map_or(usize::MAX, |()| one.len());
        (MAX_REQUEST_BYTES_IN_FLIGHT / len.max(1)).clamp(1, self.opts.pipeline_depth.max(1))
    }
}

impl Worker<'_, '_> {
    /// One turn: top up the pipeline, then wait for one reply (or, with
    /// nothing to ask, for new locations). `Err` ends the worker.
    fn step(&mut self, conn: &mut Conn) -> Result<(), WorkerEnd> {
        let e = self.engine;
        if e.stop.load(Ordering::SeqCst) {
            return Err(WorkerEnd::Finished);
        }
        self.avoid.append(&mut lock(&self.rejects.indices));
        let failures = self.rejects.count();
        if failures >= e.opts.max_hash_failures {
            return Err(WorkerEnd::Banned(format!(
                "{failures} chunks failed verification"
            )));
        }
        self.fill_pipeline()?;
        if !self.batch.is_empty() {
            self.told_idle = false;
            conn.send_raw(&self.batch)
                .map_err(|e| WorkerEnd::Lost(e.to_string()))?;
        }
        if self.inflight.is_empty() {
            self.settle();
            if lock(&e.picker).is_complete() {
                return Err(WorkerEnd::Finished);
            }
            let wait = match self.paused_until {
                Some(t) => t.saturating_duration_since(Instant::now()),
                None => {
                    // Once per stretch of idleness: the coordinator only
                    // needs to know that fresh locations are wanted.
                    if !self.told_idle {
                        self.told_idle = self.ev.try_send(Event::Idle).is_ok();
                    }
                    // Waiting for the endgame's grace: back when it is over.
                    self.endgame_from.map_or(IDLE_WAIT, |t| {
                        (t + ENDGAME_GRACE)
                            .saturating_duration_since(Instant::now())
                            .clamp(Duration::from_millis(1), IDLE_WAIT)
                    })
                }
            };
            self.slot
                .idle
                .store(self.paused_until.is_none(), Ordering::SeqCst);
            let _ = self.slot.wake_rx.recv_timeout(wait);
            self.slot.idle.store(false, Ordering::SeqCst);
            return Ok(());
        }
        if self.spare.capacity() == 0 {
            self.spare = e.pool.take();
        }
        let reply = conn
            .recv_into(&mut self.spare)
            .map_err(|e| WorkerEnd::Lost(e.to_string()))?;
        self.settle();
        match self.inflight.pop_front() {
            Some(expected) => self.handle_reply(expected, reply),
            None => Ok(()),
        }
    }

    /// Marks the worker no longer a probe, telling the coordinator the first
    /// time.
    fn settle(&self) {
        if !self.slot.settled.swap(true, Ordering::SeqCst) {
            let _ = self.ev.try_send(Event::Settled);
        }
    }

    /// Picks chunks for this source until `depth` requests are in flight,
    /// encoding the new requests into `batch`.
    fn fill_pipeline(&mut self) -> Result<(), WorkerEnd> {
        let e = self.engine;
        self.batch.clear();
        if self.paused_until.is_some_and(|t| Instant::now() < t) {
            return Ok(());
        }
        self.paused_until = None;
        if self.inflight.len() >= self.depth {
            return Ok(());
        }
        let source_has = lock(&self.slot.have).clone();
        let missing = |i: &u32| e.geometry.index(*i).is_some_and(|c| !e.file.has(c));
        self.handed.retain(missing);
        self.avoid.retain(missing);
        self.put_off.expire(Instant::now());
        let mut has = source_has.clone();
        for &i in self.inflight.iter().chain(&self.avoid).chain(&self.handed) {
            has.clear(i);
        }
        has.clear_all(&self.put_off.now);
        let mut p = lock(&e.picker);
        while self.inflight.len() < self.depth {
            // Endgame: only once every missing chunk is requested
            // somewhere, this worker has had nothing else to do for
            // ENDGAME_GRACE, and only one duplicate per idle worker.
            let idle_at_the_end = self.inflight.is_empty() && all_requested(&p);
            if !idle_at_the_end {
                self.endgame_from = None;
            }
            let endgame = idle_at_the_end && {
                let since = *self.endgame_from.get_or_insert_with(Instant::now);
                since.elapsed() >= ENDGAME_GRACE
            };
            let Some(pick) = p.pick(&has, endgame) else {
                break;
            };
            has.clear(pick.index);
            self.request(pick.index)?;
        }
        if self.inflight.is_empty() && !self.avoid.is_empty() {
            // Nothing else to ask of this source: the chunks it sent bad are
            // asked of it again, unless a request for them is in flight
            // elsewhere (never an endgame duplicate).
            let mut retry = Bitmap::new(source_has.len());
            for &i in self.avoid.iter().filter(|&&i| source_has.get(i)) {
                retry.set(i);
            }
            while let Some(pick) = p.pick(&retry, false) {
                retry.clear(pick.index);
                self.avoid.retain(|&i| i != pick.index);
                self.request(pick.index)?;
            }
        }
        Ok(())
    }

    /// Adds a request for chunk `index` to the batch.
    fn request(&mut self, index: u32) -> Result<(), WorkerEnd> {
        self.inflight.push_back(index);
        let req = Message::ChunkRequest {
            name: self.engine.name.to_owned(),
            index,
        };
        req.encode(&mut self.batch)
            .map_err(|_| WorkerEnd::Banned("cannot encode a request".into()))
    }

    /// Puts chunk `index` off after a `NotHeld`; a source that answers
    /// nothing else [`MAX_NOT_HELD_IN_A_ROW`] times is dropped for now.
    fn defer(&mut self, index: u32) -> Result<(), WorkerEnd> {
        self.put_off.defer(index, Instant::now());
        self.count_refusal()
    }

    /// One more `NotHeld` or `Busy` since the source last delivered.
    fn count_refusal(&mut self) -> Result<(), WorkerEnd> {
        self.not_held_run += 1;
        if self.not_held_run >= MAX_NOT_HELD_IN_A_ROW {
            return Err(WorkerEnd::Lost(format!(
                "answered NotHeld or Busy to {} requests in a row",
                self.not_held_run
            )));
        }
        Ok(())
    }

    /// A strike against the source for chunk `index` (bad data, or a reply
    /// for another chunk): the data is dropped and the chunk asked again;
    /// at the strike limit the source is dropped for good.
    fn strike(&mut self, index: u32, why: &str) -> Result<(), WorkerEnd> {
        let e = self.engine;
        let n = e.reject(self.slot.addr, index, why, &self.rejects, self.ev);
        if n >= e.opts.max_hash_failures {
            return Err(WorkerEnd::Banned(format!("{n} chunks failed verification")));
        }
        Ok(())
    }

    /// The reply to the oldest request in flight, chunk `expected`.
    fn handle_reply(&mut self, expected: u32, reply: Message) -> Result<(), WorkerEnd> {
        let e = self.engine;
        match reply {
            Message::ChunkData { index, data } if index == expected => {
                self.not_held_run = 0;
                self.busy_run = 0;
                self.verify_or_hand_off(index, data)
            }
            Message::ChunkData { index, .. } => {
                let why = format!("was answered with chunk {index}");
                self.strike(expected, &why)
            }
            Message::Error {
                code: ErrorCode::NotHeld,
                ..
            } => {
                // Not now (super-seeding, or our view of the source is
                // stale): free the chunk for other sources and ask this one
                // again later, never dropping it from what the source holds.
                lock(&e.picker).release(expected);
                self.defer(expected)
            }
            Message::Error {
                code: ErrorCode::Busy,
                ..
            } => {
                // The source's uploads are booked: the chunk goes to the
                // other sources, and this one is asked nothing new for a
                // while (a source that only ever says so is dropped like
                // one that only says NotHeld).
                lock(&e.picker).release(expected);
                self.busy_run += 1;
                if self.busy_run >= MAX_BUSY_IN_A_ROW {
                    // Saturated by others: its place goes to another source.
                    return Err(WorkerEnd::Busy(format!(
                        "answered Busy to {} requests in a row",
                        self.busy_run
                    )));
                }
                self.paused_until = Some(Instant::now() + busy_pause(jitter()));
                self.count_refusal()
            }
            Message::Error { code, message } => {
                lock(&e.picker).release(expected);
                Err(WorkerEnd::Lost(format!("refused: {code}: {message}")))
            }
            other => {
                lock(&e.picker).release(expected);
                Err(WorkerEnd::Banned(format!(
                    "sent {} instead of chunk data",
                    other.kind()
                )))
            }
        }
    }

    /// A chunk as asked: verified here, or handed unhashed to an idle
    /// assembler, and passed on; a bad one is rejected.
    fn verify_or_hand_off(&mut self, index: u32, data: Vec<u8>) -> Result<(), WorkerEnd> {
        let e = self.engine;
        let Some(i) = e.geometry.index(index) else {
            return Err(WorkerEnd::Banned(format!(
                "sent chunk {index}, which does not exist"
            )));
        };
        // Hashing is the largest cost per chunk. When the assembler has no
        // unchecked chunk pending it hashes this one, while this thread goes
        // on receiving: one fast source then keeps two cores busy instead of
        // one. With several sources it rarely idles and workers hash. Never
        // for a source that already sent a bad chunk.
        let right_size = data.len() == e.geometry.chunk_len(i) as usize;
        let check = right_size
            && self.rejects.count() == 0
            && e.assembler_checks
                .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok();
        let good = check || (right_size && chunks::sha1(&data) == e.hashes[index as usize]);
        if !good {
            self.spare = data; // read the next chunk into it
            return self.strike(index, "failed verification");
        }
        let v = Verified {
            source: self.slot.addr,
            index,
            data,
            check: check.then(|| Arc::clone(&self.rejects)),
        };
        if self.chunk_tx.send(v).is_err() {
            if check {
                e.assembler_checks.fetch_sub(1, Ordering::SeqCst);
            }
            return Err(WorkerEnd::Finished);
        }
        self.handed.push(index);
        Ok(())
    }
}

/// How long an idle worker waits for news (new locations, stopping)
/// before it looks for work again.
const IDLE_WAIT: Duration = Duration::from_millis(250);

/// How long a worker asks nothing new of a source after a `Busy`:
/// [`BUSY_PAUSE`], spread over 0.75 to 1.25 times that by `jitter` (any
/// number), so the askers turned away together do not all come back
/// together.
fn busy_pause(jitter: u32) -> Duration {
    BUSY_PAUSE * (750 + jitter % 501) / 1000
}

/// A number that differs from call to call, for [`busy_pause`].
fn jitter() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_micros())
}

/// True when no missing chunk is waiting to be requested: the endgame.
fn all_requested(p: &Picker) -> bool {
    let have = p.have();
    (0..have.len()).all(|i| have.get(i) || p.in_flight(i) > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_pauses_are_spread() {
        let ms = |j| busy_pause(j).as_millis();
        let base = BUSY_PAUSE.as_millis();
        assert_eq!(ms(0), base * 3 / 4);
        assert_eq!(ms(500), base * 5 / 4);
        assert_eq!(ms(250), base);
        assert_eq!(ms(751), base, "wraps");
    }

    #[test]
    fn put_off_chunks_come_back_in_time_order_at_a_cost_of_their_own() {
        let t0 = Instant::now();
        let mut p = PutOff::new(1 << 19);
        for i in 0..(1u32 << 19) {
            p.defer(i, t0);
        }
        p.defer(7, t0); // already put off: no second entry
        assert_eq!(p.queue.len(), 1 << 19);
        // Nothing due yet: one look at the earliest entry.
        p.expire(t0 + Duration::from_secs(1));
        assert_eq!(p.now.count_ones(), 1 << 19);
        p.expire(t0 + NOT_HELD_RETRY);
        assert_eq!(p.now.count_ones(), 0);
        // A further NotHeld doubles the wait (up to the maximum).
        p.defer(5, t0);
        p.expire(t0 + NOT_HELD_RETRY);
        assert!(p.now.get(5));
        p.expire(t0 + NOT_HELD_RETRY * 2);
        assert!(!p.now.get(5));
    }
}
