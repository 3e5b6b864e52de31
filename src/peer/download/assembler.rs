//! The assembler, the only writer of the `.part` file, and the flusher
//! behind it.
//!
//! Owns: taking each chunk from the workers' bounded channel, checking the
//! ones a worker left unhashed, writing it at its offset, marking it held
//! (so the chunk server serves it at once), registering it with the tracker
//! (the caller's `on_chunk`), saving the have-bitmap twice a second, and
//! asking the flusher thread to write back what is on disk
//! ([`Engine::flush_behind`]) so the final `fsync` has little left to do.
//!
//! Calls `chunks` (SHA-1), the peer's `picker` and `share` (through the
//! engine), and the download's `engine` (state, [`Engine::reject`]).

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use log::{debug, warn};

use super::engine::{Engine, Event, Verified};
use crate::chunks::{self, ChunkIndex};
use crate::peer::PeerError;
use crate::sync::lock;

/// The assembler asks for a background `fdatasync` after this many bytes
/// written since the last request.
const FLUSH_BEHIND_BYTES: u64 = 64 << 20;
/// How often the have-bitmap is saved while chunks arrive.
const SAVE_EVERY: Duration = Duration::from_millis(500);

/// Decrements the assembler's pending-check count when dropped.
struct PendingCheck<'a>(&'a AtomicUsize);

impl Drop for PendingCheck<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The assembler thread's state.
struct Assembler<'a, 'e> {
    engine: &'a Engine<'e>,
    ev: Sender<Event>,
    flush: Sender<()>,
    on_chunk: &'a (dyn Fn(&str, u32) + Sync),
    last_save: Instant,
    /// Bytes written since the last flush request.
    unflushed: u64,
}

impl Engine<'_> {
    /// The "assembler" thread: runs until every chunk sender is gone.
    pub(super) fn assemble(
        &self,
        rx: Receiver<Verified>,
        ev: Sender<Event>,
        flush: Sender<()>,
        on_chunk: &(dyn Fn(&str, u32) + Sync),
    ) {
        let mut a = Assembler {
            engine: self,
            ev,
            flush,
            on_chunk,
            last_save: Instant::now(),
            unflushed: 0,
        };
        for v in rx {
            a.take(v);
        }
    }

    /// The "flusher" thread: on request, starts writing back what the
    /// assembler has written so far (`fdatasync`), so that a download's disk
    /// writes overlap its transfer instead of following it. Linux reports a
    /// writeback error to one `fsync` only, so the first error here is kept
    /// and fails the download: it must not be lost before the final `fsync`.
    pub(super) fn flush_behind(&self, rx: Receiver<()>) {
        for () in rx {
            if let Err(e) = self.file.file().sync_data() {
                warn!("{}: flushing {}: {e}", self.name, self.paths.part.display());
                lock(&self.flush_error).get_or_insert(e);
                self.stop.store(true, Ordering::SeqCst);
            }
        }
    }
}

impl Assembler<'_, '_> {
    /// One chunk from a worker: dropped if already held or bad, else written.
    fn take(&mut self, v: Verified) {
        let e = self.engine;
        // An unchecked chunk counts as pending until it is written or
        // dropped: meanwhile the workers hash what they receive.
        let _pending = v.check.as_ref().map(|_| PendingCheck(&e.assembler_checks));
        let Some(i) = e.geometry.index(v.index) else {
            e.pool.give(v.data);
            return;
        };
        if e.file.has(i) {
            lock(&e.picker).complete(v.index);
            let _ = self.ev.send(Event::Duplicate);
            e.pool.give(v.data);
            return;
        }
        if let Some(rejects) = &v.check
            && chunks::sha1(&v.data) != e.hashes[v.index as usize]
        {
            e.reject(v.source, v.index, "failed verification", rejects, &self.ev);
            e.pool.give(v.data);
            return;
        }
        self.write(v, i);
    }

    /// Writes a verified chunk and makes it known: held, registered, saved.
    fn write(&mut self, v: Verified, i: ChunkIndex) {
        let e = self.engine;
        if let Err(err) = e.file.file().write_all_at(&v.data, e.geometry.offset(i)) {
            e.stop.store(true, Ordering::SeqCst);
            let _ = self
                .ev
                .send(Event::Fatal(PeerError::io("write", &e.paths.part, err)));
            // The caller keeps draining so workers blocked on the channel
            // can see `stop`.
            return;
        }
        let len = v.data.len();
        e.pool.give(v.data);
        self.unflushed += len as u64;
        if self.unflushed >= FLUSH_BEHIND_BYTES {
            // Skipped while a flush is still queued: the next one covers
            // these bytes too.
            if self.flush.try_send(()).is_ok() {
                self.unflushed = 0;
            }
        }
        e.file.mark_have(i);
        lock(&e.picker).complete(v.index);
        (self.on_chunk)(e.name, v.index);
        debug!(
            "chunk {} of {} from {} ({len} bytes)",
            v.index, e.name, v.source
        );
        let _ = self.ev.send(Event::Written {
            source: v.source,
            bytes: len as u32,
        });
        if self.last_save.elapsed() >= SAVE_EVERY {
            e.save_have();
            self.last_save = Instant::now();
        }
    }
}
