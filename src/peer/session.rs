//! The peer's persistent control connection to one tracker. A peer given
//! several trackers runs one session per tracker (`peer::node` starts them
//! and sends every update to each); the sessions know nothing of each
//! other, and each tracker keeps its own soft state.
//!
//! Owns: the "session-ADDR" thread and everything sent on that
//! connection: Register (at connect, for files added later, and for a
//! download's first chunk), ChunkRegister for each newly verified chunk,
//! Keepalive when idle, Withdraw for files the share index no longer holds
//! (removed, or replaced by new content, which is then registered), and
//! Leave at shutdown. Also owns the reconnect policy (exponential backoff),
//! which content the tracker accepted on the current connection, and the
//! retries of files it refused with `Conflict` or `Busy`.
//!
//! The tracker is kept in line with the share index: whenever the index's
//! generation moves, the session compares what it registered (name and
//! content id) with the index and sends what differs (`reconcile`), within
//! `LIVENESS_POLL` (250 ms), and at most every `RECONCILE_INTERVAL`
//! (100 ms). So every session of a peer with several trackers
//! withdraws and registers the same files on its own, and after a
//! reconnect the registration is simply the index as it is then.
//!
//! Calls `peer::client` (connect + Hello), `peer::share` (what to announce,
//! read at the moment of sending so bitmaps are always current) and `wire`.
//! Other threads talk to it only through a bounded command channel and never
//! wait on the network: a full queue falls back to re-registering the file
//! later (see [`TrackerSession::chunk_registered`]). Such re-registers are
//! spaced out (at least [`OVERFLOW_INTERVAL`], longer for big files, see
//! [`OVERFLOW_RATE`]) and cover the queued updates of that file, which are
//! then skipped: a download that verifies chunks faster than the tracker
//! answers must not make the session resend a whole file's hash list (up
//! to 10 MiB) for every update it handles.
//!
//! Why one thread owns the connection: the tracker protocol is strictly
//! request/reply on one stream, so a single owner needs no locking around the
//! socket and cannot interleave two requests' replies.

use std::collections::{HashMap, HashSet};
use std::mem;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError, bounded, select};
use log::{debug, info, warn};

use super::client::{Conn, unexpected};
use super::share::{ShareIndex, SharedFile};
use super::{PeerError, Result};
use crate::chunks::ContentId;
pub use crate::limits::LEAVE_WAIT;
use crate::sync::lock;
use crate::wire::{self, ErrorCode, FileEntry, FileOutcome, Message};

/// Commands queued by other threads. Large enough that a burst of verified
/// chunks (a fast download) never fills it while the tracker is answering.
const COMMAND_QUEUE: usize = 4096;
/// How often an idle connection is checked for having been closed by the
/// tracker, or for the tracker's liveness probes (frames already in the
/// read buffer, then a non-blocking peek at the socket; nothing is sent
/// unless a probe is there to answer). Without it a peer
/// with nothing to say would notice a tracker restart only at its next
/// keepalive, up to 10 s later, and stay unregistered that long; and it
/// must answer a probe well within the tracker's 1 s probe timeout
/// (`limits::PROBE_TIMEOUT`), or lose its endpoint to whoever announced it.
const LIVENESS_POLL: Duration = Duration::from_millis(250);
/// The index is compared with what the tracker was told (a walk of every
/// file) at most this often: a set of many small files changes it a few
/// times per file, and each change need not cost a walk of the whole
/// index. Files a download announces itself (`chunk_registered`,
/// `register_files`) are sent at once regardless.
const RECONCILE_INTERVAL: Duration = Duration::from_millis(100);
/// Commands one wake-up handles at most (see `Worker::handle_queued`),
/// so a stop or a liveness probe is never kept waiting long.
const MAX_DRAIN: usize = 256;
/// Most frames one idle check reads before answering (a tracker sends at
/// most one probe at a time; this only bounds one check's work).
const MAX_PROBES_PER_CHECK: usize = 4096;
/// Shortest time between two re-registers of overflowed files.
const OVERFLOW_INTERVAL: Duration = Duration::from_secs(1);
/// Bytes per second of Register that re-registering overflowed files may
/// cost on average: after sending B bytes, the next such round waits
/// B / this (a file of 2^19 chunks, 10 MiB of hashes: about 10 s), if that
/// is longer than [`OVERFLOW_INTERVAL`]. Meanwhile the tracker lags behind
/// on that file's newest chunks; nothing is lost.
const OVERFLOW_RATE: u64 = 1 << 20;
/// First wait before registering again a file the tracker refused with
/// `Conflict` (another holder has other content under its name) or `Busy`
/// (a size cap); doubled after each further refusal of the same content.
const RETRY_MIN: Duration = Duration::from_secs(2);
/// Longest wait between two such retries.
const RETRY_MAX: Duration = Duration::from_secs(60);

/// Timing of the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// Idle time after which a Keepalive is sent (the tracker drops a
    /// connection silent for 30 s).
    pub keepalive: Duration,
    /// Read/write timeout on the connection: a tracker that does not answer
    /// within it is treated as gone.
    pub io_timeout: Duration,
    /// First wait before reconnecting; doubles after each failure.
    pub backoff_min: Duration,
    /// Longest wait between reconnect attempts.
    pub backoff_max: Duration,
}

impl Default for SessionConfig {
    fn default() -> SessionConfig {
        SessionConfig {
            keepalive: crate::wire::KEEPALIVE_INTERVAL,
            io_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// What happened on the control connection, for a UI or a test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// One registration round finished (at connect, or for files added or
    /// first downloaded later): which names the tracker accepted, and which
    /// were refused, with the reason.
    Registered {
        tracker: SocketAddr,
        accepted: Vec<String>,
        refused: Vec<(String, String)>,
    },
    /// The connection went down (or the first attempt failed): why.
    Disconnected { tracker: SocketAddr, why: String },
    /// The connection is up again after a [`SessionEvent::Disconnected`].
    Reconnected { tracker: SocketAddr },
}

impl SessionEvent {
    /// The tracker whose session this event comes from (a peer with
    /// several trackers has one session each).
    pub fn tracker(&self) -> SocketAddr {
        match self {
            SessionEvent::Registered { tracker, .. }
            | SessionEvent::Disconnected { tracker, .. }
            | SessionEvent::Reconnected { tracker } => *tracker,
        }
    }
}

enum Command {
    Chunk { name: String, index: u32 },
    Register(Vec<String>),
}

/// Handle to the session thread. Dropping it leaves the tracker
/// (best-effort), like [`TrackerSession::leave`].
pub struct TrackerSession {
    commands: Sender<Command>,
    stop: Sender<()>,
    /// Files whose update could not be queued (queue full): the session
    /// re-registers them with their current bitmap, which covers every
    /// dropped ChunkRegister.
    overflow: Arc<Mutex<HashSet<String>>>,
    connected: Arc<AtomicBool>,
    /// The thread's current tracker socket, so leaving can cut it.
    stream: Arc<Mutex<Option<TcpStream>>>,
    /// Set when leaving has cut the connection: a socket the thread opens
    /// afterwards is shut at once.
    cut: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl TrackerSession {
    /// Starts the "session-ADDR" thread, which connects, registers every
    /// file of `share` holding at least one chunk (or zero-length), with
    /// endpoint (local IP of the connection, `listen_port`), then keeps the
    /// connection alive and reconnects with backoff when it breaks.
    ///
    /// An unreachable tracker does not make this fail: the peer can still
    /// serve peers that already know it, and the session keeps retrying in
    /// the background. Only failing to start the thread is an error.
    pub fn start(
        tracker: SocketAddr,
        listen_port: u16,
        share: Arc<ShareIndex>,
        cfg: SessionConfig,
        events: Option<Sender<SessionEvent>>,
    ) -> Result<TrackerSession> {
        let limits = Limits {
            max_files: wire::MAX_FILES_PER_REGISTER,
            max_frame_len: wire::MAX_FRAME_LEN as usize,
        };
        TrackerSession::start_with(tracker, listen_port, share, cfg, events, limits)
    }

    /// [`TrackerSession::start`] with other Register limits (tests use small
    /// ones so that splitting needs only a few files).
    fn start_with(
        tracker: SocketAddr,
        listen_port: u16,
        share: Arc<ShareIndex>,
        cfg: SessionConfig,
        events: Option<Sender<SessionEvent>>,
        limits: Limits,
    ) -> Result<TrackerSession> {
        let (commands, command_rx) = bounded(COMMAND_QUEUE);
        let (stop, stop_rx) = bounded(1);
        let overflow = Arc::new(Mutex::new(HashSet::new()));
        let connected = Arc::new(AtomicBool::new(false));
        let stream = Arc::new(Mutex::new(None));
        let cut = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            stream: Arc::clone(&stream),
            cut: Arc::clone(&cut),
            tracker,
            listen_port,
            share,
            cfg,
            limits,
            events,
            commands: command_rx,
            stop: stop_rx,
            overflow: Arc::clone(&overflow),
            connected: Arc::clone(&connected),
        };
        let handle = thread::Builder::new()
            .name(format!("session-{tracker}"))
            .spawn(move || worker.run())
            .map_err(|e| PeerError::io("start thread", "session", e))?;
        Ok(TrackerSession {
            commands,
            stop,
            overflow,
            connected,
            stream,
            cut,
            handle: Some(handle),
        })
    }

    /// Queues "I now hold chunk `index` of `name`". Never waits: if the queue
    /// is full the name is noted instead and the session re-registers the
    /// whole file (current bitmap) when it gets to it.
    ///
    /// If the current connection has not registered `name` yet (a
    /// download's first chunk), the session sends a Register with the file's
    /// entry instead of a ChunkRegister, so the tracker learns the file even
    /// if every other holder has left. `name` must be in the share index by
    /// then.
    pub fn chunk_registered(&self, name: &str, index: u32) {
        let cmd = Command::Chunk {
            name: name.to_owned(),
            index,
        };
        match self.commands.try_send(cmd) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                lock(&self.overflow).insert(name.to_owned());
            }
            Err(TrySendError::Disconnected(_)) => {
                debug!("tracker session ended; chunk {index} of {name} not registered");
            }
        }
    }

    /// Registers (or re-registers, with current bitmaps) files added to the
    /// share index after start. Files holding no chunk yet are skipped; their
    /// first [`TrackerSession::chunk_registered`] registers them.
    pub fn register_files(&self, names: Vec<String>) {
        match self.commands.try_send(Command::Register(names)) {
            Ok(()) => {}
            Err(TrySendError::Full(Command::Register(names))) => {
                lock(&self.overflow).extend(names);
            }
            Err(_) => debug!("tracker session ended; files not registered"),
        }
    }

    /// Whether the control connection is currently up (connected and
    /// registered).
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    /// Sends Leave (waiting for the tracker's Ok at most [`LEAVE_WAIT`],
    /// then cutting the connection), closes the connection and joins the
    /// thread. During a reconnect backoff this returns at once.
    pub fn leave(mut self) {
        self.shutdown();
    }

    /// [`TrackerSession::leave`] for several sessions at once: every one is
    /// told to stop before any is joined, so the sessions' Leaves are sent
    /// and awaited in parallel (a tracker that does not answer costs its
    /// io timeout once, not once per session after it).
    pub fn leave_all(sessions: Vec<TrackerSession>) {
        for s in &sessions {
            s.request_stop();
        }
        let deadline = Instant::now() + LEAVE_WAIT;
        for mut s in sessions {
            s.finish(deadline);
        }
    }

    fn request_stop(&self) {
        // Full only if a stop is already pending; either way it is seen.
        let _ = self.stop.try_send(());
    }

    fn shutdown(&mut self) {
        self.request_stop();
        self.finish(Instant::now() + LEAVE_WAIT);
    }

    /// Joins the thread (already asked to stop), cutting its connection if
    /// it is still talking at `deadline`. A connect in progress still takes
    /// up to its own timeout.
    fn finish(&mut self, deadline: Instant) {
        let Some(handle) = self.handle.take() else {
            return;
        };
        while !handle.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        if !handle.is_finished() {
            self.cut.store(true, Ordering::SeqCst);
            if let Some(s) = lock(&self.stream).as_ref() {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        if handle.join().is_err() {
            warn!("tracker session thread panicked");
        }
        self.connected.store(false, Ordering::SeqCst);
    }
}

impl Drop for TrackerSession {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// How many files, and how many bytes, one Register may carry.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_files: usize,
    max_frame_len: usize,
}

/// Whether a file is worth announcing: someone can fetch something from us.
/// A zero-length file has no chunks but is complete, so it is announced.
fn worth_registering(f: &SharedFile) -> bool {
    f.have_count() > 0 || f.geometry().count() == 0
}

/// Error codes that refuse the files of one Register but leave the
/// connection usable. Anything else means the tracker and we disagree about
/// the connection itself, so it is re-established.
fn is_file_level(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::InvalidName
            | ErrorCode::Conflict
            | ErrorCode::BadGeometry
            | ErrorCode::UnknownFile
            | ErrorCode::BadIndex
    )
}

/// The result of one registration round.
#[derive(Debug, Default)]
struct Outcome {
    accepted: Vec<String>,
    refused: Vec<(String, String)>,
    /// The refused names worth another try later (`Conflict`, `Busy`).
    retry: HashSet<String>,
}

/// A file the tracker refused on this connection.
#[derive(Debug, Clone, Copy)]
struct Refusal {
    /// The content refused: other content under the name is new.
    content: ContentId,
    /// When to register it again (None: never by itself; an explicit
    /// `register_files` still does).
    due: Option<Instant>,
    /// The wait before `due`, doubled at each further refusal.
    wait: Duration,
}

/// Why the connection is being given up: a sentence for the log.
type Lost = String;

/// How the connected phase ended.
enum End {
    /// Leave was requested (and sent); the thread exits.
    Leave,
    /// The connection broke; reconnect.
    Lost(Lost),
}

/// An established control connection.
struct Link {
    conn: Conn,
    endpoint: SocketAddr,
    /// Files the tracker accepted on this connection, with their content.
    registered: HashMap<String, ContentId>,
    /// Files it refused on this connection; chunk updates for them are not
    /// sent. Retried when due; an explicit `register_files` retries at once.
    refused: HashMap<String, Refusal>,
    /// The share index generation the tracker was last brought in line
    /// with.
    generation: u64,
    /// When it was last brought in line (see [`RECONCILE_INTERVAL`]).
    reconciled: Instant,
    last_send: Instant,
    /// When overflowed files may be re-registered next.
    overflow_due: Instant,
}

impl Link {
    /// Sends a request and reads the reply, recording the send for the
    /// keepalive timer.
    ///
    /// A Keepalive arriving first is the tracker's liveness probe (sent
    /// when another connection registers our endpoint): it is answered
    /// once the read buffer holds no more frames (one Keepalive answers a
    /// batch of probes) and the reply is still awaited. Frames that arrive
    /// behind the reply are left for [`Worker::check_open`].
    fn request(&mut self, m: &Message) -> Result<Message> {
        self.last_send = Instant::now();
        self.conn.send(m)?;
        let mut owed = false;
        loop {
            let got = self.conn.recv()?;
            if got == Message::Keepalive {
                owed = true;
                if !self.conn.has_buffered() {
                    self.conn.send(&Message::Keepalive)?;
                    owed = false;
                }
                continue;
            }
            if owed {
                self.conn.send(&Message::Keepalive)?;
            }
            match got {
                Message::Error { code, message } => {
                    return Err(PeerError::Refused {
                        who: self.conn.addr().to_string(),
                        code,
                        message,
                    });
                }
                reply => return Ok(reply),
            }
        }
    }
}

/// The session thread's state.
struct Worker {
    tracker: SocketAddr,
    listen_port: u16,
    share: Arc<ShareIndex>,
    cfg: SessionConfig,
    limits: Limits,
    events: Option<Sender<SessionEvent>>,
    commands: Receiver<Command>,
    stop: Receiver<()>,
    overflow: Arc<Mutex<HashSet<String>>>,
    connected: Arc<AtomicBool>,
    stream: Arc<Mutex<Option<TcpStream>>>,
    cut: Arc<AtomicBool>,
}

impl Worker {
    fn run(self) {
        let mut backoff = self.cfg.backoff_min;
        let mut failures: u32 = 0;
        let mut down = false;
        loop {
            if self.stop_requested() {
                return;
            }
            match self.establish() {
                Ok((mut link, outcome)) => {
                    let up_since = Instant::now();
                    self.connected.store(true, Ordering::SeqCst);
                    if failures > 0 {
                        info!(
                            "connected to tracker {} after {} failed attempt(s)",
                            self.tracker, failures
                        );
                    } else {
                        info!("connected to tracker {}", self.tracker);
                    }
                    failures = 0;
                    if mem::replace(&mut down, false) {
                        self.emit(SessionEvent::Reconnected {
                            tracker: self.tracker,
                        });
                    }
                    self.report(outcome);
                    let end = self.serve(&mut link);
                    let _ = link.conn.stream().shutdown(Shutdown::Both);
                    self.forget_stream();
                    self.connected.store(false, Ordering::SeqCst);
                    match end {
                        End::Leave => return,
                        End::Lost(why) => {
                            warn!(
                                "lost connection to tracker {}: {why}; reconnecting",
                                self.tracker
                            );
                            down = true;
                            self.emit(SessionEvent::Disconnected {
                                tracker: self.tracker,
                                why,
                            });
                            // A connection that stayed up a while resets the
                            // backoff; one that breaks at once (a tracker in
                            // a crash loop) keeps growing it.
                            if up_since.elapsed() >= self.cfg.backoff_max {
                                backoff = self.cfg.backoff_min;
                            }
                        }
                    }
                }
                Err(why) => {
                    // The connection is dropped; so is the clone kept for
                    // leaving, or it would hold the socket open.
                    self.forget_stream();
                    failures = failures.saturating_add(1);
                    self.log_unreachable(failures, &why);
                    if !down {
                        down = true;
                        self.emit(SessionEvent::Disconnected {
                            tracker: self.tracker,
                            why,
                        });
                    }
                }
            }
            if self.wait_backoff(backoff) {
                return;
            }
            backoff = backoff
                .checked_mul(2)
                .unwrap_or(self.cfg.backoff_max)
                .min(self.cfg.backoff_max);
        }
    }

    /// Connects, binds the endpoint and registers every announceable file.
    fn establish(&self) -> Result<(Link, Outcome), Lost> {
        let stream = crate::net::client::connect_stream(self.tracker)
            .map_err(|e| PeerError::from(e).to_string())?;
        *lock(&self.stream) = stream.try_clone().ok();
        if self.cut.load(Ordering::SeqCst) {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let conn = Conn::from_stream(stream, self.cfg.io_timeout).map_err(|e| e.to_string())?;
        let local = conn
            .stream()
            .local_addr()
            .map_err(|e| format!("local address of the tracker connection: {e}"))?;
        let mut link = Link {
            conn,
            endpoint: SocketAddr::new(local.ip(), self.listen_port),
            registered: HashMap::new(),
            refused: HashMap::new(),
            // Read before the index: a change made while registering moves
            // it on, and is reconciled next.
            generation: self.share.generation(),
            reconciled: Instant::now(),
            last_send: Instant::now(),
            overflow_due: Instant::now(),
        };
        // Updates that could not be queued are covered by the full
        // registration below, which reads every bitmap now; files removed
        // from the index so far are simply not in it.
        drop(mem::take(&mut *lock(&self.overflow)));
        let files: Vec<Arc<SharedFile>> = self
            .share
            .files()
            .into_iter()
            .filter(|f| worth_registering(f))
            .collect();
        let outcome = self.register(&mut link, files, true)?;
        Ok((link, outcome))
    }

    /// The connected phase: commands, keepalives, until Leave or a failure.
    fn serve(&self, link: &mut Link) -> End {
        loop {
            if self.stop_requested() {
                self.leave(link);
                return End::Leave;
            }
            if let Err(why) = self.flush_overflow(link) {
                return End::Lost(why);
            }
            if let Err(why) = self.reconcile(link) {
                return End::Lost(why);
            }
            if let Err(why) = self.retry_refused(link) {
                return End::Lost(why);
            }
            let idle = link
                .last_send
                .checked_add(self.cfg.keepalive)
                .map_or(self.cfg.keepalive, |t| {
                    t.saturating_duration_since(Instant::now())
                });
            // Also wake up for overflowed files when they are due.
            let overflow_wait = if lock(&self.overflow).is_empty() {
                Duration::MAX
            } else {
                link.overflow_due.saturating_duration_since(Instant::now())
            };
            let retry_wait = link
                .refused
                .values()
                .filter_map(|r| r.due)
                .min()
                .map_or(Duration::MAX, |t| {
                    t.saturating_duration_since(Instant::now())
                });
            // A change of the index not reconciled yet (too soon after the
            // last): wake up when it is due.
            let reconcile_wait = if self.share.generation() == link.generation {
                Duration::MAX
            } else {
                RECONCILE_INTERVAL.saturating_sub(link.reconciled.elapsed())
            };
            let wait = idle
                .min(LIVENESS_POLL)
                .min(overflow_wait)
                .min(retry_wait)
                .min(reconcile_wait);
            let step = select! {
                recv(self.stop) -> _ => {
                    self.leave(link);
                    return End::Leave;
                }
                recv(self.commands) -> cmd => match cmd {
                    Ok(cmd) => self.handle_queued(link, cmd),
                    // Every handle is gone without a leave (cannot happen
                    // while Drop sends one, but it means nobody is left).
                    Err(_) => {
                        self.leave(link);
                        return End::Leave;
                    }
                },
                default(wait) => {
                    if idle <= wait {
                        self.keepalive(link)
                    } else {
                        self.check_open(link)
                    }
                }
            };
            if let Err(why) = step {
                return End::Lost(why);
            }
        }
    }

    /// Handles `first` and the commands queued behind it (at most
    /// [`MAX_DRAIN`]), in order, except that Registers in a row go as one:
    /// a set of many small files asks for one file at a time, and each
    /// Register is a round trip to the tracker.
    fn handle_queued(&self, link: &mut Link, first: Command) -> Result<(), Lost> {
        let mut names = Vec::new();
        let mut next = Some(first);
        let mut drained = 0;
        while let Some(cmd) = next.take() {
            match cmd {
                Command::Register(n) => names.extend(n),
                chunk => {
                    if !names.is_empty() {
                        self.handle(link, Command::Register(mem::take(&mut names)))?;
                    }
                    self.handle(link, chunk)?;
                }
            }
            if drained < MAX_DRAIN {
                drained += 1;
                next = self.commands.try_recv().ok();
            }
        }
        let mut seen = HashSet::new();
        names.retain(|n| seen.insert(n.clone()));
        if names.is_empty() {
            return Ok(());
        }
        self.handle(link, Command::Register(names))
    }

    fn handle(&self, link: &mut Link, cmd: Command) -> Result<(), Lost> {
        match cmd {
            Command::Chunk { name, index } => self.chunk(link, name, index),
            Command::Register(names) => {
                for n in &names {
                    link.refused.remove(n);
                }
                self.register_names(link, names)
            }
        }
    }

    fn chunk(&self, link: &mut Link, name: String, index: u32) -> Result<(), Lost> {
        if link.refused.contains_key(&name) {
            debug!("not registering chunk {index} of {name}: the tracker refused the file");
            return Ok(());
        }
        if !link.registered.contains_key(&name) {
            return self.register_names(link, vec![name]);
        }
        if lock(&self.overflow).contains(&name) {
            // A re-register of the whole file is pending; it reads the
            // bitmap when sent, and this chunk was marked held before it
            // was queued, so it is covered.
            return Ok(());
        }
        let reply = link.request(&Message::ChunkRegister {
            name: name.clone(),
            index,
        });
        match reply {
            Ok(Message::Ok) => Ok(()),
            Ok(other) => Err(unexpected(self.tracker, &other).to_string()),
            // The tracker lost track of the file or of us: announce the whole
            // file again, which also carries this chunk.
            Err(PeerError::Refused {
                code: ErrorCode::UnknownFile | ErrorCode::NotRegistered,
                ..
            }) => {
                link.registered.remove(&name);
                self.register_names(link, vec![name])
            }
            Err(PeerError::Refused { code, message, .. }) => {
                warn!("tracker refused chunk {index} of {name}: {code}: {message}");
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Registers the named files that are in the share index and hold
    /// something, and reports the outcome.
    fn register_names(&self, link: &mut Link, names: Vec<String>) -> Result<(), Lost> {
        let files: Vec<Arc<SharedFile>> = names
            .iter()
            .filter_map(|n| {
                let f = self.share.get(n);
                if f.is_none() {
                    debug!("not registering {n}: not in the share index");
                }
                f
            })
            .filter(|f| worth_registering(f))
            .collect();
        if files.is_empty() {
            return Ok(());
        }
        let outcome = self.register(link, files, false)?;
        self.report(outcome);
        Ok(())
    }

    /// Sends `files` in as many Register messages as the limits require
    /// (at least one if `always`, so the endpoint gets bound) and records
    /// the outcomes on the link.
    fn register(
        &self,
        link: &mut Link,
        files: Vec<Arc<SharedFile>>,
        always: bool,
    ) -> Result<Outcome, Lost> {
        let mut out = Outcome::default();
        let mut batcher = Batcher::new(
            link.endpoint,
            self.limits.max_files,
            self.limits.max_frame_len,
        );
        let mut sent = false;
        let contents: HashMap<String, ContentId> = files
            .iter()
            .map(|f| (f.name().to_owned(), f.content_id()))
            .collect();
        for f in files {
            match batcher.push(f.to_entry()) {
                Ok(None) => {}
                Ok(Some(full)) => {
                    self.send_register(link, full, &mut out)?;
                    sent = true;
                }
                Err((name, why)) => out.refused.push((name, why)),
            }
        }
        let last = batcher.finish();
        if !last.is_empty() || (always && !sent) {
            self.send_register(link, last, &mut out)?;
        }
        for n in &out.accepted {
            link.refused.remove(n);
            if let Some(&c) = contents.get(n) {
                link.registered.insert(n.clone(), c);
            }
        }
        let now = Instant::now();
        let mut fresh = Vec::with_capacity(out.refused.len());
        for (n, why) in mem::take(&mut out.refused) {
            link.registered.remove(&n);
            let Some(&content) = contents.get(&n) else {
                continue;
            };
            let before = link.refused.get(&n).filter(|r| r.content == content);
            let wait = before.map_or(RETRY_MIN, |r| (r.wait * 2).min(RETRY_MAX));
            let due = out.retry.contains(&n).then(|| now + wait);
            if before.is_none() {
                fresh.push((n.clone(), why));
            } else {
                debug!("tracker {} still refuses {n}: {why}", self.tracker);
            }
            link.refused.insert(n, Refusal { content, due, wait });
        }
        // A refusal is reported once per content, not at every retry.
        out.refused = fresh;
        Ok(out)
    }

    fn send_register(
        &self,
        link: &mut Link,
        files: Vec<FileEntry>,
        out: &mut Outcome,
    ) -> Result<(), Lost> {
        let names: Vec<String> = files.iter().map(|f| f.name.clone()).collect();
        let reply = link.request(&Message::Register {
            endpoint: link.endpoint,
            files,
        });
        match reply {
            Ok(Message::RegisterReply { results }) if results.len() == names.len() => {
                for (name, r) in names.into_iter().zip(results) {
                    match r {
                        FileOutcome::Accepted => out.accepted.push(name),
                        FileOutcome::Refused { code, reason } => {
                            if matches!(code, ErrorCode::Conflict | ErrorCode::Busy) {
                                out.retry.insert(name.clone());
                            }
                            // The reason is the tracker's sentence; the code's
                            // own words only when it gave none.
                            let why = if reason.is_empty() {
                                code.to_string()
                            } else {
                                reason
                            };
                            out.refused.push((name, why));
                        }
                    }
                }
                Ok(())
            }
            Ok(Message::RegisterReply { results }) => Err(format!(
                "tracker answered {} outcomes to a Register of {} files",
                results.len(),
                names.len()
            )),
            Ok(other) => Err(unexpected(self.tracker, &other).to_string()),
            Err(PeerError::Refused { code, message, .. }) if is_file_level(code) => {
                let why = format!("{code}: {message}");
                out.refused
                    .extend(names.into_iter().map(|n| (n, why.clone())));
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Re-registers files whose updates did not fit in the queue, when
    /// `link.overflow_due` has come; then sets the next due time from the
    /// size of what was sent ([`OVERFLOW_RATE`], [`OVERFLOW_INTERVAL`]).
    fn flush_overflow(&self, link: &mut Link) -> Result<(), Lost> {
        let now = Instant::now();
        if now < link.overflow_due {
            return Ok(());
        }
        let names: Vec<String> = lock(&self.overflow).drain().collect();
        if names.is_empty() {
            return Ok(());
        }
        // About what the Register carries: a hash and a bitmap bit per chunk.
        let bytes: u64 = names
            .iter()
            .filter_map(|n| self.share.get(n))
            .map(|f| u64::from(f.geometry().count()) * 21 + 64)
            .sum();
        let pause = Duration::from_millis(bytes.saturating_mul(1000) / OVERFLOW_RATE);
        link.overflow_due = now + pause.max(OVERFLOW_INTERVAL);
        self.register_names(link, names)
    }

    /// Brings the tracker in line with the share index when the index has
    /// changed since the last time: withdraws what this connection
    /// registered and the index no longer holds, withdraws then registers
    /// again what the index now holds with other content, and registers
    /// what it holds and this connection has not registered yet (a file
    /// that holds nothing yet waits for its first chunk). A refused file is
    /// left to its retry unless its content changed. Reads the index
    /// through snapshots: no index lock is held while talking.
    fn reconcile(&self, link: &mut Link) -> Result<(), Lost> {
        let generation = self.share.generation();
        if generation == link.generation || link.reconciled.elapsed() < RECONCILE_INTERVAL {
            return Ok(());
        }
        link.generation = generation;
        link.reconciled = Instant::now();
        let mut withdraw = Vec::new();
        for (name, &content) in &link.registered {
            match self.share.get(name) {
                Some(f) if f.content_id() == content => {}
                _ => withdraw.push(name.clone()),
            }
        }
        withdraw.sort();
        for name in withdraw {
            self.withdraw(link, name)?;
        }
        link.refused.retain(|n, _| self.share.get(n).is_some());
        let mut register = Vec::new();
        for f in self.share.files() {
            if link.registered.contains_key(f.name()) || !worth_registering(&f) {
                continue;
            }
            match link.refused.get(f.name()) {
                Some(r) if r.content == f.content_id() => continue,
                Some(_) => {
                    link.refused.remove(f.name());
                }
                None => {}
            }
            register.push(f);
        }
        if register.is_empty() {
            return Ok(());
        }
        let outcome = self.register(link, register, false)?;
        self.report(outcome);
        Ok(())
    }

    /// Sends Withdraw for `name`, which this connection registered.
    /// `NotRegistered` means the tracker lost this connection's
    /// registration: the connection is re-established, which registers the
    /// index afresh. A tracker that does not know Withdraw (an older one)
    /// answers `Malformed` and closes: the reconnect then registers
    /// without the file, which withdraws it all the same.
    fn withdraw(&self, link: &mut Link, name: String) -> Result<(), Lost> {
        let reply = link.request(&Message::Withdraw { name: name.clone() });
        link.registered.remove(&name);
        match reply {
            Ok(Message::Ok) => {
                info!("withdrew {name} at tracker {}", self.tracker);
                Ok(())
            }
            Ok(other) => Err(unexpected(self.tracker, &other).to_string()),
            Err(e) => Err(format!("withdrawing {name}: {e}")),
        }
    }

    /// Registers again the refused files whose retry is due and that the
    /// index still holds with the refused content (one with new content is
    /// registered by [`Worker::reconcile`]).
    fn retry_refused(&self, link: &mut Link) -> Result<(), Lost> {
        let now = Instant::now();
        let names: Vec<String> = link
            .refused
            .iter()
            .filter(|(_, r)| r.due.is_some_and(|t| t <= now))
            .map(|(n, _)| n.clone())
            .collect();
        let mut due = Vec::new();
        for n in names {
            let Some(r) = link.refused.get_mut(&n) else {
                continue;
            };
            match self.share.get(&n) {
                Some(f) if f.content_id() == r.content && worth_registering(&f) => {
                    r.due = None; // set again if refused again
                    due.push(f);
                }
                // Gone, or other content: no longer this refusal's business.
                _ => {
                    link.refused.remove(&n);
                }
            }
        }
        if due.is_empty() {
            return Ok(());
        }
        let outcome = self.register(link, due, false)?;
        for n in &outcome.accepted {
            info!("tracker {} accepted {n} after refusing it", self.tracker);
        }
        if !outcome.accepted.is_empty() || !outcome.refused.is_empty() {
            self.report(outcome);
        }
        Ok(())
    }

    /// Checks that the tracker has not closed the connection, then sends a
    /// Keepalive. The check matters because a write to a closed socket can
    /// still succeed once; without it a tracker restart would go unnoticed
    /// for two keepalive periods.
    fn keepalive(&self, link: &mut Link) -> Result<(), Lost> {
        self.check_open(link)?;
        link.last_send = Instant::now();
        link.conn
            .send(&Message::Keepalive)
            .map_err(|e| e.to_string())
    }

    /// Reads every frame that has arrived: those already in the
    /// connection's read buffer (a peek at the socket does not see them)
    /// and those the socket has, without waiting for more. The tracker
    /// speaks unasked only to probe (a Keepalive) or to say why it closes
    /// (an Error), so anything else means the connection is over. However
    /// many probes were read, one Keepalive answers them all.
    fn check_open(&self, link: &mut Link) -> Result<(), Lost> {
        let mut probes = 0usize;
        while probes < MAX_PROBES_PER_CHECK
            && (link.conn.has_buffered() || readable(link.conn.stream())?)
        {
            match link.conn.recv() {
                Ok(Message::Keepalive) => probes += 1,
                Ok(Message::Error { code, message }) => {
                    return Err(format!("the tracker said: {code}: {message}"));
                }
                Ok(other) => return Err(format!("the tracker sent an unasked {}", other.kind())),
                Err(e) => return Err(e.to_string()),
            }
        }
        if probes > 0 {
            link.conn
                .send(&Message::Keepalive)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn leave(&self, link: &mut Link) {
        match link.request(&Message::Leave) {
            Ok(Message::Ok) => info!("left tracker {}", self.tracker),
            Ok(other) => warn!(
                "tracker {} answered Leave with {}",
                self.tracker,
                other.kind()
            ),
            Err(e) => warn!("tracker {} did not confirm Leave: {e}", self.tracker),
        }
    }

    /// Waits `d` before the next connection attempt, dropping queued
    /// updates (the next connection re-registers everything). Returns true
    /// when a leave was requested meanwhile.
    fn wait_backoff(&self, d: Duration) -> bool {
        let start = Instant::now();
        loop {
            let left = d.saturating_sub(start.elapsed());
            select! {
                recv(self.stop) -> _ => return true,
                recv(self.commands) -> cmd => {
                    if cmd.is_err() {
                        return true;
                    }
                }
                default(left) => return false,
            }
        }
    }

    fn log_unreachable(&self, failures: u32, why: &str) {
        if failures == 1 {
            warn!(
                "cannot reach tracker {}: {why}; retrying in the background \
                 (this peer keeps serving, but new downloaders cannot find it \
                 until the tracker answers)",
                self.tracker
            );
        } else {
            debug!(
                "tracker {} still unreachable (attempt {failures}): {why}",
                self.tracker
            );
        }
    }

    fn forget_stream(&self) {
        *lock(&self.stream) = None;
    }

    fn stop_requested(&self) -> bool {
        !matches!(self.stop.try_recv(), Err(TryRecvError::Empty))
    }

    fn report(&self, outcome: Outcome) {
        for (name, why) in &outcome.refused {
            warn!("tracker {} refused {name}: {why}", self.tracker);
        }
        if !outcome.accepted.is_empty() {
            debug!(
                "tracker {} accepted {} file(s)",
                self.tracker,
                outcome.accepted.len()
            );
        }
        self.emit(SessionEvent::Registered {
            tracker: self.tracker,
            accepted: outcome.accepted,
            refused: outcome.refused,
        });
    }

    /// Never blocks: a slow or absent listener loses events, not the
    /// session.
    fn emit(&self, e: SessionEvent) {
        if let Some(tx) = &self.events
            && tx.try_send(e).is_err()
        {
            debug!("session event dropped (listener full or gone)");
        }
    }
}

/// Whether the socket has bytes to read (or has been closed: an error),
/// without waiting.
fn readable(stream: &std::net::TcpStream) -> Result<bool, Lost> {
    let mut byte = [0u8; 1];
    stream
        .set_nonblocking(true)
        .map_err(|e| format!("cannot poll the tracker connection: {e}"))?;
    let peeked = stream.peek(&mut byte);
    stream
        .set_nonblocking(false)
        .map_err(|e| format!("cannot poll the tracker connection: {e}"))?;
    match peeked {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(e.to_string()),
        Ok(0) => Err("the tracker closed the connection".into()),
        Ok(_) => Ok(true),
    }
}

/// Groups file entries into Register messages that stay within the limits
/// on files per message and frame size, measuring each entry by encoding it.
struct Batcher {
    endpoint: SocketAddr,
    max_files: usize,
    max_frame_len: usize,
    /// Encoded size of a Register with no files, length prefix included.
    base: usize,
    /// Sum of the encoded sizes of `files`.
    size: usize,
    files: Vec<FileEntry>,
    scratch: Vec<u8>,
}

impl Batcher {
    fn new(endpoint: SocketAddr, max_files: usize, max_frame_len: usize) -> Batcher {
        let mut scratch = Vec::new();
        let empty = Message::Register {
            endpoint,
            files: Vec::new(),
        };
        // An empty Register always encodes; if it somehow did not, a base of
        // 0 only makes the size checks below slightly generous, and the
        // final encode still enforces the real limit.
        let base = match empty.encode(&mut scratch) {
            Ok(()) => scratch.len(),
            Err(_) => 0,
        };
        Batcher {
            endpoint,
            max_files,
            max_frame_len,
            base,
            size: 0,
            files: Vec::new(),
            scratch,
        }
    }

    /// Adds an entry. Returns the previous batch when the entry does not fit
    /// beside it (send that first), or the name and reason when the entry
    /// cannot be sent at all (too large alone, or a field over its limit).
    fn push(&mut self, e: FileEntry) -> Result<Option<Vec<FileEntry>>, (String, String)> {
        let name = e.name.clone();
        self.scratch.clear();
        let alone = Message::Register {
            endpoint: self.endpoint,
            files: vec![e],
        };
        let encoded = alone.encode(&mut self.scratch);
        let Message::Register { files, .. } = alone else {
            return Err((name, "internal error measuring the entry".into()));
        };
        let Some(e) = files.into_iter().next() else {
            return Err((name, "internal error measuring the entry".into()));
        };
        if let Err(err) = encoded {
            return Err((name, format!("cannot be announced: {err}")));
        }
        let entry = self.scratch.len().saturating_sub(self.base);
        let frame_len = |entries: usize| (self.base + entries).saturating_sub(4);
        if frame_len(entry) > self.max_frame_len {
            return Err((
                name,
                format!(
                    "cannot be announced: its entry alone is {} bytes, over the {}-byte frame limit",
                    frame_len(entry),
                    self.max_frame_len
                ),
            ));
        }
        let mut full = None;
        if !self.files.is_empty()
            && (self.files.len() >= self.max_files
                || frame_len(self.size + entry) > self.max_frame_len)
        {
            full = Some(mem::take(&mut self.files));
            self.size = 0;
        }
        self.files.push(e);
        self.size += entry;
        Ok(full)
    }

    /// The last, possibly empty, batch.
    fn finish(self) -> Vec<FileEntry> {
        self.files
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunks::{self, Bitmap, Geometry};
    use crate::wire::Have;
    use std::net::{TcpListener, TcpStream};

    const WAIT: Duration = Duration::from_secs(5);

    // ---- A tiny fake tracker ------------------------------------------

    /// Accepts connections, answers Hello, records every later message as
    /// (connection number, message) and answers like the tracker: Register
    /// -> RegisterReply (names starting with "bad/" refused), ChunkRegister
    /// -> Ok, Leave -> Ok then close, Keepalive -> nothing.
    struct FakeTracker {
        addr: SocketAddr,
        messages: Receiver<(usize, Message)>,
        /// Clones of open connections, so a test can drop them.
        open: Arc<Mutex<Vec<TcpStream>>>,
        /// When set, connections are closed right after accept.
        refuse: Arc<AtomicBool>,
        stop: Arc<AtomicBool>,
        acceptor: Option<JoinHandle<()>>,
        handlers: Arc<Mutex<Vec<JoinHandle<()>>>>,
    }

    impl FakeTracker {
        fn start(refusing: bool) -> FakeTracker {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let (tx, messages) = bounded(100_000);
            let open = Arc::new(Mutex::new(Vec::new()));
            let refuse = Arc::new(AtomicBool::new(refusing));
            let stop = Arc::new(AtomicBool::new(false));
            let handlers = Arc::new(Mutex::new(Vec::new()));
            let acceptor = {
                let (open, refuse, stop, handlers) = (
                    Arc::clone(&open),
                    Arc::clone(&refuse),
                    Arc::clone(&stop),
                    Arc::clone(&handlers),
                );
                thread::Builder::new()
                    .name("fake-tracker".into())
                    .spawn(move || {
                        for (n, stream) in listener.incoming().enumerate() {
                            if stop.load(Ordering::SeqCst) {
                                break;
                            }
                            let Ok(stream) = stream else { continue };
                            if refuse.load(Ordering::SeqCst) {
                                continue; // dropped: closed at once
                            }
                            open.lock().unwrap().push(stream.try_clone().unwrap());
                            let tx = tx.clone();
                            let h = thread::Builder::new()
                                .name(format!("fake-tracker-{n}"))
                                .spawn(move || serve_fake(n, stream, tx))
                                .unwrap();
                            handlers.lock().unwrap().push(h);
                        }
                    })
                    .unwrap()
            };
            FakeTracker {
                addr,
                messages,
                open,
                refuse,
                stop,
                acceptor: Some(acceptor),
                handlers,
            }
        }

        /// Drops every open connection, as a crashed tracker would.
        fn kick(&self) {
            for s in self.open.lock().unwrap().drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }

        /// The next message, or panics after `WAIT`.
        fn next(&self) -> (usize, Message) {
            self.messages
                .recv_timeout(WAIT)
                .expect("fake tracker got no message in time")
        }

        /// The next message that is not a Keepalive.
        fn next_request(&self) -> (usize, Message) {
            loop {
                let m = self.next();
                if m.1 != Message::Keepalive {
                    return m;
                }
            }
        }
    }

    impl Drop for FakeTracker {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            self.kick();
            let _ = TcpStream::connect_timeout(&self.addr, WAIT); // wakes accept
            if let Some(a) = self.acceptor.take() {
                a.join().unwrap();
            }
            for h in self.handlers.lock().unwrap().drain(..) {
                h.join().unwrap();
            }
        }
    }

    fn serve_fake(n: usize, stream: TcpStream, tx: Sender<(usize, Message)>) {
        stream.set_read_timeout(Some(WAIT * 4)).unwrap();
        let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
        let mut w = stream;
        match wire::read_message(&mut reader) {
            Ok(Some(Message::Hello { .. })) => {}
            _ => return,
        }
        let hello = Message::Hello {
            version: wire::PROTOCOL_VERSION,
        };
        if wire::write_message(&mut w, &hello).is_err() {
            return;
        }
        while let Ok(Some(m)) = wire::read_message(&mut reader) {
            let reply = match &m {
                Message::Register { files, .. } => Some(Message::RegisterReply {
                    results: files
                        .iter()
                        .map(|f| {
                            if f.name.starts_with("bad/") {
                                FileOutcome::Refused {
                                    code: ErrorCode::Conflict,
                                    reason: "other content".into(),
                                }
                            } else {
                                FileOutcome::Accepted
                            }
                        })
                        .collect(),
                }),
                Message::ChunkRegister { .. } | Message::Leave | Message::Withdraw { .. } => {
                    Some(Message::Ok)
                }
                Message::Keepalive => None,
                _ => Some(Message::error(ErrorCode::Unexpected, "fake")),
            };
            let leaving = m == Message::Leave;
            let _ = tx.send_timeout((n, m), WAIT);
            if let Some(r) = reply
                && wire::write_message(&mut w, &r).is_err()
            {
                return;
            }
            if leaving {
                return;
            }
        }
    }

    // ---- Share helpers ------------------------------------------------

    fn hashes(g: &Geometry) -> Vec<chunks::Digest> {
        g.indices()
            .map(|i| chunks::sha1(&i.get().to_be_bytes()))
            .collect()
    }

    /// The session never reads file contents, so any open handle will do.
    fn dev_null() -> (std::path::PathBuf, std::fs::File) {
        let p = std::path::PathBuf::from("/dev/null");
        let f = std::fs::File::open(&p).unwrap();
        (p, f)
    }

    fn complete(name: &str, len: u64) -> Arc<SharedFile> {
        let g = Geometry::new(len, 1024).unwrap();
        let (path, file) = dev_null();
        Arc::new(SharedFile::complete(name.into(), path, file, g, hashes(&g)))
    }

    fn partial(name: &str, len: u64, held: &[u32]) -> Arc<SharedFile> {
        let g = Geometry::new(len, 1024).unwrap();
        let mut have = Bitmap::new(g.count());
        for &i in held {
            have.set(i);
        }
        let (path, file) = dev_null();
        Arc::new(SharedFile::partial(
            name.into(),
            path,
            file,
            g,
            hashes(&g),
            have,
        ))
    }

    fn index(files: &[Arc<SharedFile>]) -> Arc<ShareIndex> {
        let s = ShareIndex::new();
        for f in files {
            s.insert(Arc::clone(f));
        }
        Arc::new(s)
    }

    fn fast() -> SessionConfig {
        SessionConfig {
            keepalive: Duration::from_secs(10),
            io_timeout: Duration::from_secs(2),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_millis(200),
        }
    }

    fn names(files: &[FileEntry]) -> Vec<&str> {
        let mut v: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        v.sort();
        v
    }

    fn expect_register(m: (usize, Message)) -> (usize, SocketAddr, Vec<FileEntry>) {
        match m {
            (n, Message::Register { endpoint, files }) => (n, endpoint, files),
            other => panic!("expected Register, got {other:?}"),
        }
    }

    fn wait_until(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn next_event(rx: &Receiver<SessionEvent>) -> SessionEvent {
        rx.recv_timeout(WAIT).expect("no session event in time")
    }

    // ---- Tests ----------------------------------------------------------

    /// The tracker's liveness probe (an unasked Keepalive) is answered
    /// with a Keepalive: before the reply to a request, and on an idle
    /// connection well within the tracker's 1 s probe timeout.
    #[test]
    fn answers_the_trackers_probe_before_a_reply_and_when_idle() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let share = index(&[complete("full.bin", 3000)]);
        let (etx, erx) = bounded(64);
        let s = TrackerSession::start(
            listener.local_addr().unwrap(),
            4321,
            Arc::clone(&share),
            fast(),
            Some(etx),
        )
        .unwrap();
        let (stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut r = std::io::BufReader::new(stream.try_clone().unwrap());
        let mut w = stream;
        let mut read = move || wire::read_message(&mut r).unwrap().unwrap();
        assert!(matches!(read(), Message::Hello { .. }));
        let hello = Message::Hello {
            version: wire::PROTOCOL_VERSION,
        };
        wire::write_message(&mut w, &hello).unwrap();
        assert!(matches!(read(), Message::Register { .. }));
        // The probe arrives before the reply.
        wire::write_message(&mut w, &Message::Keepalive).unwrap();
        assert_eq!(read(), Message::Keepalive);
        let reply = Message::RegisterReply {
            results: vec![FileOutcome::Accepted],
        };
        wire::write_message(&mut w, &reply).unwrap();
        assert!(matches!(
            next_event(&erx),
            SessionEvent::Registered { accepted, .. } if accepted == ["full.bin"]
        ));
        wait_until("connected", || s.is_connected());
        // Idle now: a probe is answered within the probe timeout.
        thread::sleep(Duration::from_millis(300));
        let t = Instant::now();
        wire::write_message(&mut w, &Message::Keepalive).unwrap();
        assert_eq!(read(), Message::Keepalive);
        assert!(
            t.elapsed() < crate::limits::PROBE_TIMEOUT,
            "{:?}",
            t.elapsed()
        );
        assert!(s.is_connected());
        assert!(erx.try_recv().is_err(), "the session reconnected");
        let leaving = thread::spawn(move || s.leave());
        assert_eq!(read(), Message::Leave);
        wire::write_message(&mut w, &Message::Ok).unwrap();
        leaving.join().unwrap();
    }

    /// Accepts the session's connection on `listener`, answers its Hello
    /// and reads its first Register: (reader, writer).
    fn fake_greeted(listener: &TcpListener) -> (std::io::BufReader<TcpStream>, TcpStream) {
        let (stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut r = std::io::BufReader::new(stream.try_clone().unwrap());
        let mut w = stream;
        assert!(matches!(
            wire::read_message(&mut r).unwrap().unwrap(),
            Message::Hello { .. }
        ));
        let hello = Message::Hello {
            version: wire::PROTOCOL_VERSION,
        };
        wire::write_message(&mut w, &hello).unwrap();
        assert!(matches!(
            wire::read_message(&mut r).unwrap().unwrap(),
            Message::Register { .. }
        ));
        (r, w)
    }

    /// Review 1, finding 2: a probe that arrives in the same segment as a
    /// reply lands in the connection's read buffer with it; the idle check
    /// must find it there (a peek at the socket does not) and answer it
    /// within the probe timeout.
    #[test]
    fn answers_a_probe_that_arrives_right_after_a_reply() {
        use std::io::Write;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let share = index(&[complete("full.bin", 3000)]);
        let addr = listener.local_addr().unwrap();
        let s = TrackerSession::start(addr, 4321, Arc::clone(&share), fast(), None).unwrap();
        let (mut r, mut w) = fake_greeted(&listener);
        // The reply and, right behind it, a probe: one write, one segment.
        let mut both = Vec::new();
        Message::RegisterReply {
            results: vec![FileOutcome::Accepted],
        }
        .encode(&mut both)
        .unwrap();
        Message::Keepalive.encode(&mut both).unwrap();
        let t = Instant::now();
        w.write_all(&both).unwrap();
        w.set_read_timeout(Some(crate::limits::PROBE_TIMEOUT))
            .unwrap();
        let got = wire::read_message(&mut r);
        assert!(
            matches!(got, Ok(Some(Message::Keepalive))),
            "probe not answered within {:?}: {got:?} after {:?}",
            crate::limits::PROBE_TIMEOUT,
            t.elapsed()
        );
        drop(s);
    }

    /// Review 1, finding 3: a batch of probes that arrived together is read
    /// at once and answered with one Keepalive, so no backlog builds up.
    #[test]
    fn a_batch_of_probes_is_answered_with_one_keepalive() {
        use std::io::Write;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let share = index(&[complete("full.bin", 3000)]);
        let addr = listener.local_addr().unwrap();
        let s = TrackerSession::start(addr, 4321, Arc::clone(&share), fast(), None).unwrap();
        let (mut r, mut w) = fake_greeted(&listener);
        let reply = Message::RegisterReply {
            results: vec![FileOutcome::Accepted],
        };
        wire::write_message(&mut w, &reply).unwrap();
        wait_until("connected", || s.is_connected());
        let mut probes = Vec::new();
        for _ in 0..500 {
            Message::Keepalive.encode(&mut probes).unwrap();
        }
        w.write_all(&probes).unwrap();
        w.set_read_timeout(Some(crate::limits::PROBE_TIMEOUT))
            .unwrap();
        assert_eq!(
            wire::read_message(&mut r).unwrap(),
            Some(Message::Keepalive)
        );
        // Nothing more: the session's own keepalive comes only after
        // `fast().keepalive` of silence.
        w.set_read_timeout(Some(Duration::from_millis(600)))
            .unwrap();
        match wire::read_message(&mut r) {
            Err(e) if e.is_timeout() => {}
            other => panic!("more than one answer: {other:?}"),
        }
        // No backlog is left to be answered at the next request either.
        s.chunk_registered("full.bin", 0);
        w.set_read_timeout(Some(WAIT)).unwrap();
        assert!(matches!(
            wire::read_message(&mut r).unwrap(),
            Some(Message::ChunkRegister { .. })
        ));
        wire::write_message(&mut w, &Message::Ok).unwrap();
        w.set_read_timeout(Some(Duration::from_millis(600)))
            .unwrap();
        match wire::read_message(&mut r) {
            Err(e) if e.is_timeout() => {}
            other => panic!("a backlog of probes was answered: {other:?}"),
        }
        drop(s);
    }

    #[test]
    fn registers_share_then_chunks_then_leaves() {
        let fake = FakeTracker::start(false);
        let share = index(&[
            complete("full.bin", 3000),
            partial("part.bin", 5000, &[1, 3]),
            partial("nothing.bin", 5000, &[]),
            complete("zero", 0),
        ]);
        let (etx, erx) = bounded(64);
        let s =
            TrackerSession::start(fake.addr, 4321, Arc::clone(&share), fast(), Some(etx)).unwrap();

        let (conn, endpoint, files) = expect_register(fake.next());
        assert_eq!(endpoint, "127.0.0.1:4321".parse().unwrap());
        assert_eq!(names(&files), vec!["full.bin", "part.bin", "zero"]);
        let full = files.iter().find(|f| f.name == "full.bin").unwrap();
        assert_eq!((full.length, full.chunk_size), (3000, 1024));
        assert_eq!(full.hashes.len(), 3);
        assert_eq!(full.have, Have::All);
        let part = files.iter().find(|f| f.name == "part.bin").unwrap();
        assert_eq!(part.have, Have::Some(vec![0b0101_0000]));
        let zero = files.iter().find(|f| f.name == "zero").unwrap();
        assert!(zero.hashes.is_empty());
        match next_event(&erx) {
            SessionEvent::Registered {
                accepted, refused, ..
            } => {
                assert_eq!(accepted.len(), 3);
                assert!(refused.is_empty());
            }
            e => panic!("unexpected event {e:?}"),
        }
        wait_until("connected", || s.is_connected());

        // A download's first chunk: Register with its current bitmap.
        share.insert(partial("dl.bin", 4000, &[0, 2]));
        s.chunk_registered("dl.bin", 2);
        let (c, ep, files) = expect_register(fake.next_request());
        assert_eq!((c, ep), (conn, endpoint));
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].name, "dl.bin");
        assert_eq!(files[0].have, Have::Some(vec![0b1010_0000]));
        // Then ChunkRegister.
        s.chunk_registered("dl.bin", 0);
        assert_eq!(
            fake.next_request(),
            (
                conn,
                Message::ChunkRegister {
                    name: "dl.bin".into(),
                    index: 0
                }
            )
        );
        // A name not in the index is skipped without a message.
        s.chunk_registered("missing", 0);
        s.chunk_registered("part.bin", 4);
        assert_eq!(
            fake.next_request(),
            (
                conn,
                Message::ChunkRegister {
                    name: "part.bin".into(),
                    index: 4
                }
            )
        );

        let t = Instant::now();
        s.leave();
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "leave took {:?}",
            t.elapsed()
        );
        assert_eq!(fake.next_request(), (conn, Message::Leave));
    }

    #[test]
    fn empty_share_still_binds_the_endpoint() {
        let fake = FakeTracker::start(false);
        let s = TrackerSession::start(fake.addr, 7, index(&[]), fast(), None).unwrap();
        let (_, endpoint, files) = expect_register(fake.next());
        assert_eq!(endpoint.port(), 7);
        assert!(files.is_empty());
        drop(s); // Drop leaves too.
        assert_eq!(fake.next_request().1, Message::Leave);
    }

    #[test]
    fn keepalives_are_sent_when_idle() {
        let fake = FakeTracker::start(false);
        let cfg = SessionConfig {
            keepalive: Duration::from_millis(100),
            ..fast()
        };
        let s = TrackerSession::start(fake.addr, 1, index(&[]), cfg, None).unwrap();
        expect_register(fake.next());
        let t = Instant::now();
        for _ in 0..3 {
            assert_eq!(fake.next().1, Message::Keepalive);
        }
        // About 300 ms; generous bound for a loaded machine.
        assert!(t.elapsed() < Duration::from_secs(2));
        assert!(t.elapsed() >= Duration::from_millis(250));
        s.leave();
        assert_eq!(fake.next_request().1, Message::Leave);
    }

    #[test]
    fn reconnects_and_reregisters_after_tracker_drops() {
        let fake = FakeTracker::start(false);
        let share = index(&[complete("a", 2048)]);
        let (etx, erx) = bounded(64);
        let cfg = SessionConfig {
            keepalive: Duration::from_millis(100),
            ..fast()
        };
        let s = TrackerSession::start(fake.addr, 9, Arc::clone(&share), cfg, Some(etx)).unwrap();
        let (first, _, files) = expect_register(fake.next());
        assert_eq!(names(&files), vec!["a"]);
        assert!(matches!(next_event(&erx), SessionEvent::Registered { .. }));
        wait_until("connected", || s.is_connected());

        // Added without register_files: the re-registration covers it.
        share.insert(partial("b", 4096, &[3]));
        fake.kick();
        assert!(matches!(
            next_event(&erx),
            SessionEvent::Disconnected { .. }
        ));
        assert!(matches!(next_event(&erx), SessionEvent::Reconnected { .. }));
        match next_event(&erx) {
            SessionEvent::Registered { mut accepted, .. } => {
                accepted.sort();
                assert_eq!(accepted, vec!["a", "b"]);
            }
            e => panic!("unexpected event {e:?}"),
        }
        let (second, endpoint, files) = expect_register(fake.next_request());
        assert_ne!(first, second);
        assert_eq!(endpoint.port(), 9);
        assert_eq!(names(&files), vec!["a", "b"]);
        wait_until("reconnected", || s.is_connected());
        s.chunk_registered("b", 3);
        let (c, m) = fake.next_request();
        assert_eq!(c, second);
        assert_eq!(
            m,
            Message::ChunkRegister {
                name: "b".into(),
                index: 3
            }
        );
        s.leave();
        assert_eq!(fake.next_request(), (second, Message::Leave));
    }

    #[test]
    fn unreachable_tracker_does_not_fail_start() {
        let fake = FakeTracker::start(true);
        let (etx, erx) = bounded(64);
        let s = TrackerSession::start(fake.addr, 5, index(&[complete("a", 10)]), fast(), Some(etx))
            .unwrap();
        assert!(matches!(
            next_event(&erx),
            SessionEvent::Disconnected { .. }
        ));
        assert!(!s.is_connected());
        // Updates while down are dropped, not queued forever.
        s.chunk_registered("a", 0);
        fake.refuse.store(false, Ordering::SeqCst);
        let (_, _, files) = expect_register(fake.next());
        assert_eq!(names(&files), vec!["a"]);
        assert!(matches!(next_event(&erx), SessionEvent::Reconnected { .. }));
        assert!(matches!(next_event(&erx), SessionEvent::Registered { .. }));
        wait_until("connected", || s.is_connected());
        s.leave();
        assert_eq!(fake.next_request().1, Message::Leave);
    }

    /// A tracker that accepts connections and never answers (stopped, or
    /// its accept backlog full) held leaving for the whole io timeout, and
    /// so held a peer's exit; with several trackers, any one of them did.
    #[test]
    fn leave_cuts_a_tracker_that_never_answers() {
        // Listening (the kernel completes the handshake) but never reading.
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let cfg = SessionConfig {
            io_timeout: Duration::from_secs(30),
            ..fast()
        };
        let s =
            TrackerSession::start(silent.local_addr().unwrap(), 5, index(&[]), cfg, None).unwrap();
        // Let it connect and block on the Hello.
        thread::sleep(Duration::from_millis(200));
        let t = Instant::now();
        s.leave();
        assert!(
            t.elapsed() < LEAVE_WAIT + Duration::from_secs(1),
            "leave took {:?}",
            t.elapsed()
        );
    }

    #[test]
    fn leave_during_backoff_is_prompt() {
        // A port nobody listens on: connection refused at once.
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let (etx, erx) = bounded(64);
        let cfg = SessionConfig {
            backoff_min: Duration::from_secs(30),
            backoff_max: Duration::from_secs(30),
            ..fast()
        };
        let s = TrackerSession::start(port, 5, index(&[]), cfg, Some(etx)).unwrap();
        assert!(matches!(
            next_event(&erx),
            SessionEvent::Disconnected { .. }
        ));
        let t = Instant::now();
        s.leave();
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "leave took {:?}",
            t.elapsed()
        );
    }

    #[test]
    fn refused_files_do_not_stop_the_session() {
        let fake = FakeTracker::start(false);
        let share = index(&[complete("good", 100), complete("bad/x", 100)]);
        let (etx, erx) = bounded(64);
        let s = TrackerSession::start(fake.addr, 5, Arc::clone(&share), fast(), Some(etx)).unwrap();
        let (conn, _, files) = expect_register(fake.next());
        assert_eq!(names(&files), vec!["bad/x", "good"]);
        match next_event(&erx) {
            SessionEvent::Registered {
                accepted, refused, ..
            } => {
                assert_eq!(accepted, vec!["good"]);
                assert_eq!(refused.len(), 1);
                assert_eq!(refused[0].0, "bad/x");
                assert!(refused[0].1.contains("other content"), "{}", refused[0].1);
            }
            e => panic!("unexpected event {e:?}"),
        }
        // Chunk updates for a refused file are not retried...
        s.chunk_registered("bad/x", 0);
        s.chunk_registered("good", 0);
        assert_eq!(
            fake.next_request(),
            (
                conn,
                Message::ChunkRegister {
                    name: "good".into(),
                    index: 0
                }
            )
        );
        // ...but an explicit register_files is.
        s.register_files(vec!["bad/x".into(), "absent".into()]);
        let (c, _, files) = expect_register(fake.next_request());
        assert_eq!(c, conn);
        assert_eq!(names(&files), vec!["bad/x"]);
        // A file added to the index is registered without being named.
        share.insert(complete("new", 5000));
        let (c, _, files) = expect_register(fake.next_request());
        assert_eq!(c, conn);
        assert_eq!(names(&files), vec!["new"]);
        assert!(s.is_connected());
        s.leave();
        assert_eq!(fake.next_request(), (conn, Message::Leave));
    }

    #[test]
    fn many_files_are_split_into_several_registers() {
        let fake = FakeTracker::start(false);
        // Four files per Register, and a frame size that fits two 10-chunk
        // entries (plus room for the small ones): 1-chunk "s" files and
        // 10-chunk "t" files. The real limits are checked by the Batcher
        // test; here the session must send every batch and merge replies.
        let two_big = {
            let e = |n: &str| FileEntry {
                name: n.into(),
                length: 10_000,
                chunk_size: 1024,
                hashes: vec![[0; 20]; 10],
                have: Have::All,
            };
            let mut b = Vec::new();
            Message::Register {
                endpoint: "127.0.0.1:5".parse().unwrap(),
                files: vec![e("t0"), e("t1")],
            }
            .encode(&mut b)
            .unwrap();
            b.len() - 4
        };
        let limits = Limits {
            max_files: 4,
            max_frame_len: two_big,
        };
        let mut files: Vec<_> = (0..5).map(|i| complete(&format!("s{i}"), 10)).collect();
        files.extend((0..3).map(|i| complete(&format!("t{i}"), 10_000)));
        let (etx, erx) = bounded(64);
        let s = TrackerSession::start_with(fake.addr, 5, index(&files), fast(), Some(etx), limits)
            .unwrap();
        let mut got = Vec::new();
        let mut sizes = Vec::new();
        while got.len() < files.len() {
            let (c, _, batch) = expect_register(fake.next());
            assert_eq!(c, 0);
            assert!(!batch.is_empty() && batch.len() <= 4, "{}", batch.len());
            let mut b = Vec::new();
            Message::Register {
                endpoint: "127.0.0.1:5".parse().unwrap(),
                files: batch.clone(),
            }
            .encode(&mut b)
            .unwrap();
            assert!(b.len() - 4 <= two_big);
            sizes.push(batch.len());
            got.extend(batch);
        }
        // s0..s3 (file count) | s4 t0 (bytes) | t1 t2
        assert_eq!(sizes, vec![4, 2, 2]);
        assert_eq!(
            names(&got),
            vec!["s0", "s1", "s2", "s3", "s4", "t0", "t1", "t2"]
        );
        match next_event(&erx) {
            SessionEvent::Registered {
                accepted, refused, ..
            } => {
                assert_eq!(accepted.len(), 8);
                assert!(refused.is_empty());
            }
            e => panic!("unexpected event {e:?}"),
        }
        s.leave();
        assert_eq!(fake.next_request().1, Message::Leave);
    }

    #[test]
    fn callers_never_block_on_a_full_queue() {
        // No tracker answers while the queue fills: the session is in
        // backoff, and overflowed names are remembered, not blocked on.
        let fake = FakeTracker::start(true);
        let share = index(&[complete("a", 10)]);
        let cfg = SessionConfig {
            backoff_min: Duration::from_secs(30),
            backoff_max: Duration::from_secs(30),
            ..fast()
        };
        let s = TrackerSession::start(fake.addr, 5, share, cfg, None).unwrap();
        let t = Instant::now();
        for _ in 0..COMMAND_QUEUE + 100 {
            s.chunk_registered("a", 0);
        }
        s.register_files(vec!["a".into()]);
        assert!(t.elapsed() < Duration::from_secs(2), "callers blocked");
        let t = Instant::now();
        s.leave();
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "leave took {:?}",
            t.elapsed()
        );
    }

    #[test]
    fn overflowed_names_are_reregistered() {
        let fake = FakeTracker::start(false);
        let share = index(&[complete("a", 10), partial("b", 3000, &[1])]);
        let s = TrackerSession::start(fake.addr, 5, share, fast(), None).unwrap();
        let (conn, _, _) = expect_register(fake.next());
        // As if chunk_registered("b", ..) had found the queue full.
        lock(&s.overflow).insert("b".into());
        s.chunk_registered("a", 0); // wakes the session
        let mut got = [fake.next_request(), fake.next_request()];
        got.sort_by_key(|(_, m)| m.kind());
        assert_eq!(
            got[0],
            (
                conn,
                Message::ChunkRegister {
                    name: "a".into(),
                    index: 0
                }
            )
        );
        let (_, _, files) = expect_register(got[1].clone());
        assert_eq!(names(&files), vec!["b"]);
        assert_eq!(files[0].have, Have::Some(vec![0b0100_0000]));
        assert!(lock(&s.overflow).is_empty());
        s.leave();
        assert_eq!(fake.next_request().1, Message::Leave);
    }

    /// Issue 11 (suspected, confirmed): while chunks are verified faster
    /// than the tracker answers ChunkRegisters, the queue stays full, the
    /// file stays in the overflow set, and every turn of the session loop
    /// re-sent the whole file's Register (10 MiB of hashes at 2^19 chunks)
    /// to handle one queued ChunkRegister. Re-registers of overflowed files
    /// are now spaced out, and queued updates they cover are skipped.
    #[test]
    fn a_full_queue_does_not_resend_the_register_every_turn() {
        let fake = FakeTracker::start(false);
        let n = 1u32 << 14; // 16,384 chunks: 320 KiB of hashes per Register
        let big = partial("big", u64::from(n) * 1024, &[]);
        let share = index(&[Arc::clone(&big), complete("small", 10)]);
        let s = TrackerSession::start(fake.addr, 5, share, fast(), None).unwrap();
        let (conn, _, files) = expect_register(fake.next());
        assert_eq!(names(&files), vec!["small"]);
        // A download verifying chunks as fast as it can for 1.5 s.
        let t = Instant::now();
        let mut i = 0u32;
        while t.elapsed() < Duration::from_millis(1500) {
            if let Some(c) = big.geometry().index(i % n) {
                big.mark_have(c);
            }
            s.chunk_registered("big", i % n);
            i += 1;
        }
        assert!(i as usize > 4 * COMMAND_QUEUE, "only {i} chunks queued");
        assert_eq!(big.have_count(), n);
        // Everything is announced in the end: the last Register and the
        // ChunkRegisters after it cover every chunk.
        wait_until("the overflow is flushed", || lock(&s.overflow).is_empty());
        s.leave();
        let mut registers = 0;
        let mut announced = Bitmap::new(n);
        loop {
            match fake.next() {
                (c, Message::Register { files, .. }) => {
                    assert_eq!((c, files[0].name.as_str()), (conn, "big"));
                    registers += 1;
                    announced = match &files[0].have {
                        Have::All => Bitmap::full(n),
                        Have::Some(b) => Bitmap::from_bytes(n, b).unwrap(),
                    };
                }
                (_, Message::ChunkRegister { index, .. }) => {
                    announced.set(index);
                }
                (_, Message::Leave) => break,
                _ => {}
            }
        }
        assert!(
            (1..=4).contains(&registers),
            "{registers} Registers of the whole file in 1.5 s"
        );
        assert!(
            announced.is_full(),
            "{} of {n} chunks announced",
            announced.count_ones()
        );
    }

    fn withdrawn(m: (usize, Message)) -> (usize, String) {
        match m {
            (c, Message::Withdraw { name }) => (c, name),
            other => panic!("expected Withdraw, got {other:?}"),
        }
    }

    #[test]
    fn files_leaving_or_changing_in_the_index_are_withdrawn() {
        let fake = FakeTracker::start(false);
        let share = index(&[complete("a", 3000), complete("b", 10), complete("empty", 0)]);
        let s = TrackerSession::start(fake.addr, 5, Arc::clone(&share), fast(), None).unwrap();
        let (conn, _, files) = expect_register(fake.next());
        assert_eq!(names(&files), vec!["a", "b", "empty"]);
        // Removed: withdrawn; a 0-byte file too.
        share.remove("b");
        assert_eq!(withdrawn(fake.next_request()), (conn, "b".into()));
        share.remove("empty");
        assert_eq!(withdrawn(fake.next_request()), (conn, "empty".into()));
        // Replaced by other content: withdrawn, then the new content
        // registered (the tracker would refuse it while we held the old).
        share.insert(complete("a", 5000));
        assert_eq!(withdrawn(fake.next_request()), (conn, "a".into()));
        let (c, _, files) = expect_register(fake.next_request());
        assert_eq!((c, names(&files)), (conn, vec!["a"]));
        assert_eq!(files[0].length, 5000);
        // Replaced by the same content (a finished download): nothing.
        share.insert(complete("a", 5000));
        s.chunk_registered("a", 0);
        assert!(matches!(
            fake.next_request(),
            (_, Message::ChunkRegister { .. })
        ));
        // Withdrawn while the tracker was away: the new connection simply
        // registers what the index holds.
        fake.kick();
        share.remove("a");
        share.insert(complete("c", 10));
        let (c, _, files) = expect_register(fake.next_request());
        assert_ne!(c, conn);
        assert_eq!(names(&files), vec!["c"]);
        s.leave();
        assert_eq!(fake.next_request().1, Message::Leave);
    }

    /// Before Withdraw, the files the chunk server found changed went into
    /// one queue in the share index that the first session to look emptied:
    /// with two trackers, only one of them heard of the withdrawal, and the
    /// other kept sending downloaders to this peer for bytes it no longer
    /// had. Now every session withdraws it at its own tracker.
    #[test]
    fn every_tracker_hears_of_a_withdrawal() {
        let fakes = [FakeTracker::start(false), FakeTracker::start(false)];
        let f = complete("f", 3000);
        let share = index(&[Arc::clone(&f), complete("g", 10)]);
        let sessions: Vec<_> = fakes
            .iter()
            .map(|t| TrackerSession::start(t.addr, 5, Arc::clone(&share), fast(), None).unwrap())
            .collect();
        for t in &fakes {
            expect_register(t.next());
        }
        assert!(share.withdraw_changed(&f));
        for t in &fakes {
            assert_eq!(withdrawn(t.next_request()).1, "f");
        }
        TrackerSession::leave_all(sessions);
        for t in &fakes {
            assert_eq!(t.next_request().1, Message::Leave);
        }
    }

    #[test]
    fn a_conflicting_file_is_retried_and_reported_once() {
        let fake = FakeTracker::start(false);
        let share = index(&[complete("ok", 10), complete("bad/x", 10)]);
        let (etx, erx) = bounded(64);
        let s = TrackerSession::start(fake.addr, 5, Arc::clone(&share), fast(), Some(etx)).unwrap();
        expect_register(fake.next());
        match next_event(&erx) {
            SessionEvent::Registered { refused, .. } => assert_eq!(refused.len(), 1),
            e => panic!("unexpected event {e:?}"),
        }
        // Registered again after RETRY_MIN, and again after twice that.
        let t = Instant::now();
        let (_, _, files) = expect_register(fake.next_request());
        assert_eq!(names(&files), vec!["bad/x"]);
        assert!(t.elapsed() >= RETRY_MIN - Duration::from_millis(300));
        // The same refusal is not reported again.
        assert!(erx.recv_timeout(Duration::from_millis(300)).is_err());
        assert!(s.is_connected());
        s.leave();
        assert_eq!(fake.next_request().1, Message::Leave);
    }

    // ---- Batcher --------------------------------------------------------

    fn entry(name: &str, chunks: usize) -> FileEntry {
        FileEntry {
            name: name.into(),
            length: chunks as u64 * 1024,
            chunk_size: 1024,
            hashes: vec![[0; 20]; chunks],
            have: Have::All,
        }
    }

    fn encoded_len(endpoint: SocketAddr, files: Vec<FileEntry>) -> usize {
        let mut b = Vec::new();
        Message::Register { endpoint, files }
            .encode(&mut b)
            .unwrap();
        b.len() - 4
    }

    #[test]
    fn batcher_splits_by_count_and_by_size() {
        let ep: SocketAddr = "10.0.0.1:1".parse().unwrap();
        // By count.
        let mut b = Batcher::new(ep, 2, wire::MAX_FRAME_LEN as usize);
        assert!(b.push(entry("a", 1)).unwrap().is_none());
        assert!(b.push(entry("b", 1)).unwrap().is_none());
        let full = b.push(entry("c", 1)).unwrap().unwrap();
        assert_eq!(names(&full), vec!["a", "b"]);
        assert_eq!(names(&b.finish()), vec!["c"]);

        // By size: room for exactly two 10-chunk entries.
        let two = encoded_len(ep, vec![entry("a", 10), entry("b", 10)]);
        let mut b = Batcher::new(ep, 100, two);
        assert!(b.push(entry("a", 10)).unwrap().is_none());
        assert!(b.push(entry("b", 10)).unwrap().is_none());
        let full = b.push(entry("c", 10)).unwrap().unwrap();
        assert_eq!(encoded_len(ep, full.clone()), two);
        assert_eq!(names(&full), vec!["a", "b"]);
        // Too large alone: refused, batch unchanged.
        let (name, why) = b.push(entry("huge", 1000)).unwrap_err();
        assert_eq!(name, "huge");
        assert!(why.contains("frame limit"), "{why}");
        // A field over its limit: refused with the wire error.
        let (name, _) = b
            .push(entry(&"n".repeat(wire::MAX_NAME_LEN + 1), 1))
            .unwrap_err();
        assert_eq!(name.len(), wire::MAX_NAME_LEN + 1);
        assert_eq!(names(&b.finish()), vec!["c"]);
    }
}
