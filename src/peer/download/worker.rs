//! One worker: the connection to one source.
//!
//! Owns: the worker thread's loop over its own TCP connection: fill the
//! pipeline (pick rarest-first under the picker lock, up to the pipeline
//! depth of requests in flight), read a reply, and either verify the chunk
//! here or hand it to the assembler to hash ([`Worker::verify_or_hand_off`]),
//! then pass it on through the bounded chunk channel. Also owns [`Slot`], the
//! coordinator's and the worker's shared view of the source.
//!
//! Calls `wire` (requests), `chunks` (SHA-1), the peer's `client` (the
//! connection) and `picker`, and the download's `engine`.

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use super::engine::{Engine, Event, Rejects, Verified, WorkerEnd};
use crate::chunks::{self, Bitmap};
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
    depth: usize,
    /// Requests sent and not answered yet, in order.
    inflight: VecDeque<u32>,
    /// Chunks this source sent wrong (found here or by the assembler).
    rejects: Arc<Rejects>,
    /// The chunks in `rejects`, never asked of this source again.
    avoid: Vec<u32>,
    /// Chunks verified here and queued for the assembler but not yet
    /// written: the picker still counts them in flight, so without this the
    /// endgame would ask this same source for them again.
    handed: Vec<u32>,
    /// The encoded requests of one pipeline fill.
    batch: Vec<u8>,
    /// The buffer the next chunk is read into.
    spare: Vec<u8>,
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
        let mut w = Worker {
            engine: self,
            slot,
            chunk_tx: &chunk_tx,
            ev,
            depth: self.opts.pipeline_depth.max(1),
            inflight: VecDeque::new(),
            rejects: Arc::new(Rejects::default()),
            avoid: Vec::new(),
            handed: Vec::new(),
            batch: Vec::new(),
            spare: Vec::new(),
        };
        let end = loop {
            if let Err(end) = w.step(&mut conn) {
                break end;
            }
        };
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
            conn.send_raw(&self.batch)
                .map_err(|e| WorkerEnd::Lost(e.to_string()))?;
        }
        if self.inflight.is_empty() {
            if lock(&e.picker).is_complete() {
                return Err(WorkerEnd::Finished);
            }
            let _ = self.ev.try_send(Event::Idle);
            let _ = self.slot.wake_rx.recv_timeout(Duration::from_millis(250));
            return Ok(());
        }
        if self.spare.capacity() == 0 {
            self.spare = e.pool.take();
        }
        let reply = conn
            .recv_into(&mut self.spare)
            .map_err(|e| WorkerEnd::Lost(e.to_string()))?;
        match self.inflight.pop_front() {
            Some(expected) => self.handle_reply(expected, reply),
            None => Ok(()),
        }
    }

    /// Picks chunks for this source until `depth` requests are in flight,
    /// encoding the new requests into `batch`.
    fn fill_pipeline(&mut self) -> Result<(), WorkerEnd> {
        let e = self.engine;
        self.batch.clear();
        if self.inflight.len() >= self.depth {
            return Ok(());
        }
        let mut has = lock(&self.slot.have).clone();
        self.handed
            .retain(|&i| e.geometry.index(i).is_some_and(|c| !e.file.has(c)));
        for &i in self.inflight.iter().chain(&self.avoid).chain(&self.handed) {
            has.clear(i);
        }
        let mut p = lock(&e.picker);
        while self.inflight.len() < self.depth {
            // Endgame: only once every missing chunk is requested
            // somewhere, and only one duplicate per idle worker.
            let endgame = self.inflight.is_empty() && all_requested(&p);
            let Some(pick) = p.pick(&has, endgame) else {
                break;
            };
            has.clear(pick.index);
            self.inflight.push_back(pick.index);
            let req = Message::ChunkRequest {
                name: e.name.to_owned(),
                index: pick.index,
            };
            if req.encode(&mut self.batch).is_err() {
                return Err(WorkerEnd::Banned("cannot encode a request".into()));
            }
        }
        Ok(())
    }

    /// The reply to the oldest request in flight, chunk `expected`.
    fn handle_reply(&mut self, expected: u32, reply: Message) -> Result<(), WorkerEnd> {
        let e = self.engine;
        match reply {
            Message::ChunkData { index, data } if index == expected => {
                self.verify_or_hand_off(index, data)
            }
            Message::ChunkData { index, .. } => {
                lock(&e.picker).release(expected);
                Err(WorkerEnd::Banned(format!(
                    "answered chunk {index} when chunk {expected} was next"
                )))
            }
            Message::Error {
                code: ErrorCode::NotHeld,
                ..
            } => {
                // Our view of the source was stale: forget that bit.
                lock(&e.picker).release(expected);
                lock(&self.slot.have).clear(expected);
                Ok(())
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
            let n = e.reject(self.slot.addr, index, &self.rejects, self.ev);
            if n >= e.opts.max_hash_failures {
                return Err(WorkerEnd::Banned(format!("{n} chunks failed verification")));
            }
            self.spare = data; // read the next chunk into it
            return Ok(());
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

/// True when no missing chunk is waiting to be requested: the endgame.
fn all_requested(p: &Picker) -> bool {
    let have = p.have();
    (0..have.len()).all(|i| have.get(i) || p.in_flight(i) > 0)
}
