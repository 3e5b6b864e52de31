//! Ctrl-C (SIGINT) and SIGTERM, set up once for both binaries.
//!
//! Owns: the signal registration and the one thread that waits for signals
//! (no work is done inside a signal handler). A signal sets a stop flag,
//! which long engine loops (downloads, hashing) poll, and is also sent on
//! a channel, so a thread waiting on other things too (the prompt) can
//! `select!` on it.
//!
//! Calls `signal-hook` only.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, bounded};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};

/// Signals waiting to be received; more are dropped (the flag is set).
const QUEUE: usize = 4;

/// SIGINT and SIGTERM caught from creation until drop. Create it before
/// any long work, so an early signal is not lost.
pub struct StopSignals {
    stop: Arc<AtomicBool>,
    /// The first signal received, 0 while none.
    first: Arc<AtomicI32>,
    rx: Receiver<i32>,
    handle: Handle,
    thread: Option<JoinHandle<()>>,
}

impl StopSignals {
    /// Catches SIGINT and SIGTERM from now on (their default action, ending
    /// the process, no longer applies).
    pub fn install() -> io::Result<StopSignals> {
        let mut signals = Signals::new([SIGINT, SIGTERM])?;
        let handle = signals.handle();
        let stop = Arc::new(AtomicBool::new(false));
        let first = Arc::new(AtomicI32::new(0));
        let (tx, rx) = bounded(QUEUE);
        let thread = {
            let (stop, first) = (Arc::clone(&stop), Arc::clone(&first));
            std::thread::Builder::new()
                .name("signals".into())
                .spawn(move || {
                    // Ends when the handle is closed (on drop).
                    for sig in signals.forever() {
                        log::info!("signal {sig}: stopping");
                        let _ = first.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
                        stop.store(true, Ordering::SeqCst);
                        let _ = tx.try_send(sig);
                    }
                })?
        };
        Ok(StopSignals {
            stop,
            first,
            rx,
            handle,
            thread: Some(thread),
        })
    }

    /// Set once a signal has arrived; hand it to loops that should stop.
    pub fn flag(&self) -> &Arc<AtomicBool> {
        &self.stop
    }

    /// One message per signal, to `select!` on.
    pub fn receiver(&self) -> &Receiver<i32> {
        &self.rx
    }

    /// The first signal received, if any.
    pub fn received(&self) -> Option<i32> {
        match self.first.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s),
        }
    }

    /// Blocks until a signal arrives (at once if one already has).
    pub fn wait(&self) -> i32 {
        if let Ok(sig) = self.rx.try_recv() {
            return sig;
        }
        if let Some(sig) = self.received() {
            return sig;
        }
        // The sender lives as long as the signal thread, which ends only
        // when this value is dropped.
        self.rx.recv().unwrap_or(SIGTERM)
    }
}

impl Drop for StopSignals {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The name people know a signal by, for messages.
pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        SIGINT => "Ctrl-C (SIGINT)",
        SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(signal_name(SIGINT), "Ctrl-C (SIGINT)");
        assert_eq!(signal_name(SIGTERM), "SIGTERM");
    }
}
