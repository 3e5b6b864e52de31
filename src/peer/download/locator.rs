//! The locator: the download's conversation with one tracker after the
//! start, on its own thread, so that a slow or silent tracker never stalls
//! the data path. A download with several trackers runs one locator per
//! tracker; each backs off on its own, and the coordinator merges their
//! answers.
//!
//! Owns: the tracker connection used for location refreshes (opened by the
//! thread itself, at the first request), reconnecting it, and backing off
//! while the tracker does not answer. The hashes are asked for with the
//! first refresh and after any that found nothing, so the coordinator can
//! tell a tracker describing other content of the same size apart. The coordinator
//! asks ([`Locator::ask`]) and collects answers ([`Locator::answer`]); neither
//! call blocks, and between answers the coordinator goes on with the
//! sources it knows.
//!
//! Calls `wire` (Locations) and the peer's `client` (connection, Locate).

use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::{self, Scope, ScopedJoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded};
use log::warn;

use crate::peer::client::{self, Conn};
use crate::peer::{PeerError, Result};
use crate::sync::lock;
use crate::wire::{ErrorCode, Locations, WireError};

/// Read/write timeout of a refresh: a tracker silent this long has failed
/// this query.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(3);
/// Connect timeout of a refresh (short: it also bounds how long stopping a
/// download can wait for this thread).
const REFRESH_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The first wait after a failed query; doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// One answer of the tracker (or the lack of one).
pub(super) enum Located {
    Found(Locations),
    /// The tracker answered and lists no source right now.
    NoSources,
    /// No answer: unreachable, silent, or it said something unexpected.
    Failed(String),
}

/// The coordinator's handle on the locator thread.
pub(super) struct Locator<'scope> {
    ask_tx: Option<Sender<()>>,
    answer_rx: Receiver<Located>,
    /// A clone of the thread's tracker socket, so stopping can unblock it.
    stream: Arc<Mutex<Option<TcpStream>>>,
    handle: Option<ScopedJoinHandle<'scope, ()>>,
}

impl<'scope> Locator<'scope> {
    /// Starts the "locator-ADDR" thread for the tracker at `addr`; it
    /// connects when first asked.
    pub(super) fn start<'env>(
        scope: &'scope Scope<'scope, 'env>,
        addr: SocketAddr,
        name: &'env str,
    ) -> Result<Locator<'scope>> {
        let stream = Arc::new(Mutex::new(None));
        let (ask_tx, ask_rx) = bounded(1);
        let (answer_tx, answer_rx) = bounded(1);
        let thread = Thread {
            conn: None,
            check_content: true,
            addr,
            name,
            stream: Arc::clone(&stream),
        };
        let handle = thread::Builder::new()
            .name(format!("locator-{addr}"))
            .spawn_scoped(scope, move || thread.run(&ask_rx, &answer_tx))
            .map_err(|e| PeerError::Download(format!("cannot start the locator thread: {e}")))?;
        Ok(Locator {
            ask_tx: Some(ask_tx),
            answer_rx,
            stream,
            handle: Some(handle),
        })
    }

    /// Asks for fresh locations (a no-op while a request is pending).
    pub(super) fn ask(&self) {
        if let Some(tx) = &self.ask_tx {
            let _ = tx.try_send(());
        }
    }

    /// The latest answer, if one has arrived.
    pub(super) fn answer(&self) -> Option<Located> {
        self.answer_rx.try_recv().ok()
    }

    /// Tells the thread to end (no more requests, its socket shut) without
    /// waiting for it, so several locators end in parallel.
    pub(super) fn begin_stop(&mut self) {
        drop(self.ask_tx.take());
        if let Some(s) = lock(&self.stream).as_ref() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Ends the thread: no more requests, its socket shut, joined.
    pub(super) fn stop(&mut self) {
        self.begin_stop();
        let Some(h) = self.handle.take() else {
            return;
        };
        // It may be handing over a last answer, or connecting (at most
        // REFRESH_CONNECT_TIMEOUT); a socket it opens now is shut at once.
        // Usually it only has to wake from waiting for a request: the first
        // polls are short, so a download of a small file (one of a folder
        // of thousands) does not wait here longer than the thread takes to
        // end.
        let mut pause = Duration::from_micros(50);
        while !h.is_finished() {
            while self.answer_rx.try_recv().is_ok() {}
            if let Some(s) = lock(&self.stream).as_ref() {
                let _ = s.shutdown(Shutdown::Both);
            }
            thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(10));
        }
        if h.join().is_err() {
            warn!("the locator thread panicked");
        }
    }
}

/// The locator thread's own state.
struct Thread<'env> {
    conn: Option<Conn>,
    /// Ask for the hashes with the next Locate (see `query`).
    check_content: bool,
    addr: SocketAddr,
    name: &'env str,
    stream: Arc<Mutex<Option<TcpStream>>>,
}

impl Thread<'_> {
    /// Answers requests until the coordinator stops asking; after a failed
    /// query waits (250 ms doubling to 5 s) before the next one.
    fn run(mut self, ask_rx: &Receiver<()>, answer_tx: &Sender<Located>) {
        let mut backoff = Duration::ZERO;
        let mut pending = false;
        loop {
            if !pending && ask_rx.recv().is_err() {
                return;
            }
            let answer = self.query();
            let failed = matches!(answer, Located::Failed(_));
            if answer_tx.send(answer).is_err() {
                return;
            }
            pending = false;
            if failed {
                backoff = (backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
                match wait(ask_rx, backoff) {
                    Some(asked) => pending = asked,
                    None => return,
                }
            } else {
                backoff = Duration::ZERO;
            }
        }
    }

    fn query(&mut self) -> Located {
        if self.conn.is_none() {
            match self.connect() {
                Ok(c) => self.conn = Some(c),
                Err(e) => return Located::Failed(format!("tracker unreachable ({e})")),
            }
        }
        let Some(conn) = self.conn.as_mut() else {
            return Located::Failed("no tracker connection".into());
        };
        // A tracker's content for a name changes only after the name was
        // gone (every holder left): so the hashes, to tell content apart,
        // are asked for the first time and after any answer but Found.
        let with_hashes = std::mem::replace(&mut self.check_content, true);
        match client::locate_on(conn, self.name, with_hashes) {
            Ok(l) => {
                self.check_content = false;
                Located::Found(l)
            }
            Err(PeerError::Refused {
                code: ErrorCode::UnknownFile,
                ..
            }) => Located::NoSources,
            Err(e) => {
                self.conn = None;
                Located::Failed(format!("tracker query failed ({e})"))
            }
        }
    }

    fn connect(&self) -> Result<Conn> {
        let s = crate::net::client::connect_timeout(self.addr, REFRESH_CONNECT_TIMEOUT)
            .map_err(|e| PeerError::net(self.addr, WireError::Io(e)))?;
        *lock(&self.stream) = s.try_clone().ok();
        Conn::from_stream(s, REFRESH_TIMEOUT)
    }
}

/// Waits `d`, noting requests meanwhile: whether one came, or `None` once
/// the coordinator stopped asking.
fn wait(ask_rx: &Receiver<()>, d: Duration) -> Option<bool> {
    let until = Instant::now() + d;
    let mut asked = false;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match ask_rx.recv_timeout(left) {
            Err(RecvTimeoutError::Disconnected) => return None,
            Err(RecvTimeoutError::Timeout) => break,
            Ok(()) => asked = true,
        }
    }
    Some(asked)
}
