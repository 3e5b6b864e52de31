//! The tracker's network side: the tracker protocol on top of the shared
//! server skeleton ([`crate::net::server`]).
//!
//! Owns: the tracker's connection settings ([`TrackerConfig`]) and its
//! per-connection handler: what each request does to the registry and what
//! is answered, and the rule "one endpoint, one live connection" (a
//! Register for an endpoint held by another connection probes that one
//! first, see `register` and `probe` below: at most one probe in flight per
//! holder, none when it was heard from within `PROBE_QUIET`). Accepting, caps, the Hello, timeouts, closing
//! and shutdown are the skeleton's. A connection's peer is removed from the
//! registry as soon as the connection ends for any reason (Leave, close,
//! error, silence past the idle timeout, a failed probe), and the tracker
//! never ends a registration without closing its connection. Each request
//! and each refusal is counted ([`super::metrics::Counters`]); with
//! `TrackerConfig::http`, the dashboard ([`super::http`]) is started beside
//! the server and stopped before it, reading through [`View`].
//!
//! Calls `net` (the skeleton), `wire` (messages), `limits`, `sync`,
//! [`super::registry`] (state), [`super::metrics`] and [`super::http`]. The registry Mutex is held only around in-memory registry calls,
//! never across a read or write, so a slow client cannot stall anyone else.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, info, warn};

use super::http::Http;
use super::metrics::{Counters, Gauges};
use super::registry::{ConnId, Registry, RegistryStats};
use crate::net::admission::{Admission, Limits};
use crate::net::budget::BudgetLimits;
use crate::net::server::{End, Flow, Handler, Link, Live, Options, Server};
use crate::wire::{self, ErrorCode, Locations, Message, Source, WireError};

/// How often a registered peer sends Keepalive (see the wire module).
pub const KEEPALIVE_INTERVAL: Duration = wire::KEEPALIVE_INTERVAL;
/// A connection silent for this long is dropped and its peer removed: three
/// missed keepalives.
pub const IDLE_TIMEOUT: Duration = wire::TRACKER_IDLE_TIMEOUT;
/// How long one write to a client may block before the client is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a probe looks for the probed connection's answer.
const PROBE_POLL: Duration = Duration::from_millis(10);
pub use crate::limits::{
    HELLO_TIMEOUT, PROBE_QUIET, PROBE_TIMEOUT, TRACKER_MAX_CONNECTIONS as MAX_CONNECTIONS,
    TRACKER_MAX_PER_IP as MAX_PER_IP,
};

/// Tracker settings; `Default` gives the documented production values.
#[derive(Debug, Clone)]
pub struct TrackerConfig {
    pub listen: SocketAddr,
    /// A connection silent this long after its greeting is dropped.
    pub idle_timeout: Duration,
    /// A connection that has not sent a complete Hello after this long (no
    /// bytes for this long, before the greeting) is dropped.
    pub hello_timeout: Duration,
    pub write_timeout: Duration,
    /// Connections open at once; more get Error{Busy} and are closed.
    pub max_connections: usize,
    /// Connections open at once from one IPv4 address or IPv6 /64.
    pub max_per_ip: usize,
    /// Bytes of large request frames received and handled at once, in
    /// total and per address.
    pub frame_budget: BudgetLimits,
    /// Where the web dashboard, /api and /metrics listen (`tracker --http`);
    /// None: not served.
    pub http: Option<SocketAddr>,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 7000)),
            idle_timeout: IDLE_TIMEOUT,
            hello_timeout: HELLO_TIMEOUT,
            write_timeout: WRITE_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
            max_per_ip: MAX_PER_IP,
            frame_budget: BudgetLimits {
                exempt_len: crate::limits::FRAME_BUDGET_EXEMPT_LEN,
                total: crate::limits::TRACKER_FRAME_BUDGET,
                per_address: crate::limits::TRACKER_FRAME_BUDGET_PER_ADDRESS,
            },
            http: None,
        }
    }
}

/// A fatal tracker error (a connection's own errors are logged, never
/// returned).
#[derive(Debug)]
pub enum TrackerError {
    /// The listening socket could not be bound.
    Bind { addr: SocketAddr, source: io::Error },
    /// The accept thread could not be started.
    Spawn(io::Error),
    /// The dashboard's listening socket could not be bound, or its threads
    /// started.
    Http { addr: SocketAddr, source: io::Error },
}

impl fmt::Display for TrackerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrackerError::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            TrackerError::Spawn(e) => write!(f, "cannot start the accept thread: {e}"),
            TrackerError::Http { addr, source } => {
                write!(f, "cannot serve the dashboard on {addr}: {source}")
            }
        }
    }
}

impl std::error::Error for TrackerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TrackerError::Bind { source, .. } => Some(source),
            TrackerError::Spawn(e) => Some(e),
            TrackerError::Http { source, .. } => Some(source),
        }
    }
}

/// The tracker's per-connection behaviour and its state: the registry,
/// the probes in flight, and the counters /metrics shows.
struct State {
    registry: Mutex<Registry>,
    /// Probes in flight, by probed connection: every Register that needs
    /// one while it runs waits for its outcome instead of sending another.
    probes: Mutex<HashMap<ConnId, Arc<ProbeSlot>>>,
    /// Bumped by every request (atomics: no lock on the hot path).
    counters: Counters,
    /// When the tracker started; the registry's clock counts seconds from
    /// here.
    epoch: Instant,
}

/// The outcome of one probe, for everyone waiting on it.
#[derive(Default)]
struct ProbeSlot {
    alive: Mutex<Option<bool>>,
    done: Condvar,
}

impl ProbeSlot {
    fn finish(&self, alive: bool) {
        *crate::sync::lock(&self.alive) = Some(alive);
        self.done.notify_all();
    }

    /// The outcome, waiting at most `limit`; alive if it does not come
    /// (a registration is never ended on a guess).
    fn wait(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut alive = crate::sync::lock(&self.alive);
        loop {
            if let Some(a) = *alive {
                return a;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            alive = match self.done.wait_timeout(alive, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

/// Per-connection state of the tracker protocol.
#[derive(Default)]
struct ConnState {
    /// The endpoint this connection was last refused `Busy` for, and when:
    /// asking again within [`PROBE_QUIET`] is refused without a new probe.
    refused: Option<(SocketAddr, Instant)>,
}

impl State {
    /// The registry, locked, its clock set to the current second.
    fn registry(&self) -> MutexGuard<'_, Registry> {
        // A panic in another connection thread must not take the tracker down.
        let mut r = crate::sync::lock(&self.registry);
        r.set_clock(u32::try_from(self.epoch.elapsed().as_secs()).unwrap_or(u32::MAX));
        r
    }

    /// Counts the refusals in a reply about to be sent.
    fn count_refusals(&self, m: &Message) {
        match m {
            Message::Error { code, .. } => self.counters.refusal(*code),
            Message::RegisterReply { results } => {
                for r in results {
                    if let wire::FileOutcome::Refused { code, .. } = r {
                        self.counters.refusal(*code);
                    }
                }
            }
            _ => {}
        }
    }
}

/// What the dashboard ([`super::http`]) reads from a running tracker: its
/// registry (through the same lock helper as the handlers), its counters,
/// its connections and caps. Read-only.
#[derive(Clone)]
pub(super) struct View {
    state: Arc<State>,
    live: Arc<Live>,
    admission: Arc<Admission>,
}

impl View {
    /// The registry, locked: for one copy, never across I/O.
    pub(super) fn registry(&self) -> MutexGuard<'_, Registry> {
        self.state.registry()
    }

    pub(super) fn counters(&self) -> &Counters {
        &self.state.counters
    }

    /// The gauges of /metrics, with the registry's `stats` taken by the
    /// caller.
    pub(super) fn gauges(&self, registry: RegistryStats) -> Gauges {
        let (cap_total, cap_per_ip) = self.admission.cap_hits();
        Gauges {
            registry,
            connections: self.live.len(),
            cap_total,
            cap_per_ip,
            uptime_s: self.state.epoch.elapsed().as_secs(),
        }
    }
}

/// A running tracker. Dropping it shuts it down.
pub struct Tracker {
    server: Server,
    state: Arc<State>,
    /// The dashboard, when `TrackerConfig::http` asked for it.
    http: Option<Http>,
    running: bool,
}

impl Tracker {
    /// Binds `cfg.listen` (port 0 picks a free port) and starts accepting.
    pub fn start(cfg: TrackerConfig) -> Result<Tracker, TrackerError> {
        let listener =
            crate::net::server::listen(cfg.listen).map_err(|source| TrackerError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| TrackerError::Bind {
            addr: cfg.listen,
            source,
        })?;
        let opts = Options {
            name: "tracker",
            role: "tracker",
            hello_timeout: cfg.hello_timeout,
            idle_timeout: cfg.idle_timeout,
            write_timeout: cfg.write_timeout,
            limits: Limits {
                max_total: cfg.max_connections,
                max_per_ip: cfg.max_per_ip,
            },
            frame_budget: Some(cfg.frame_budget),
        };
        let state = Arc::new(State {
            registry: Mutex::new(Registry::new()),
            probes: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            epoch: Instant::now(),
        });
        let server =
            Server::start(listener, opts, Arc::clone(&state)).map_err(TrackerError::Spawn)?;
        info!("tracker listening on {local_addr}");
        let mut tracker = Tracker {
            server,
            state,
            http: None,
            running: true,
        };
        if let Some(addr) = cfg.http {
            let view = View {
                state: Arc::clone(&tracker.state),
                live: tracker.server.live_shared(),
                admission: tracker.server.admission(),
            };
            // On failure, dropping `tracker` shuts the tracker down again.
            let http =
                Http::start(addr, view).map_err(|source| TrackerError::Http { addr, source })?;
            info!("dashboard on http://{}/", http.local_addr());
            tracker.http = Some(http);
        }
        Ok(tracker)
    }

    /// Where the dashboard listens, if it was asked for.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(Http::local_addr)
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Number of currently registered peers.
    pub fn peer_count(&self) -> usize {
        self.state.registry().peer_count()
    }

    /// Number of open connections.
    pub fn connection_count(&self) -> usize {
        self.server.live().len()
    }

    /// Stops accepting, closes every connection, joins every thread.
    pub fn shutdown(&mut self) {
        if std::mem::take(&mut self.running) {
            if let Some(mut http) = self.http.take() {
                http.shutdown();
            }
            self.server.shutdown();
            info!("tracker stopped");
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Handler for State {
    type Conn = ConnState;

    fn request(
        &self,
        link: &Arc<Link>,
        live: &Live,
        conn: &mut ConnState,
        m: Message,
    ) -> Result<Flow, WireError> {
        self.counters.request(&m);
        let (reply, flow) = match handle(self, link, live, conn, m) {
            Next::Raw(bytes) => {
                link.write_all(&bytes)?;
                return Ok(Flow::Continue);
            }
            Next::Reply(m) => (Some(m), Flow::Continue),
            Next::Silent => (None, Flow::Continue),
            Next::Close(m) => (Some(m), Flow::Close),
        };
        if let Some(m) = reply {
            self.count_refusals(&m);
            link.send(&m)?;
        }
        Ok(flow)
    }

    /// A connection's peer is removed as soon as the connection ends.
    fn ended(&self, link: &Arc<Link>, end: &End) {
        self.counters.ended(end);
        let (id, remote) = (link.id(), link.remote());
        if let End::Idle = end {
            info!("connection {id} from {remote}: silent too long, dropping it");
        }
        let mut registry = self.registry();
        let ep = registry.endpoint(id);
        registry.remove_peer(id);
        drop(registry);
        if let Some(ep) = ep {
            info!("peer {ep} (connection {id}) gone; its chunks are forgotten");
        }
    }
}

/// What to do after handling one request.
enum Next {
    Reply(Message),
    /// An already encoded reply.
    Raw(Vec<u8>),
    /// Nothing to send (Keepalive).
    Silent,
    /// Send this, then close (Leave, fatal errors).
    Close(Message),
}

fn handle(shared: &State, link: &Link, live: &Live, conn: &mut ConnState, m: Message) -> Next {
    let (id, remote) = (link.id(), link.remote());
    match m {
        Message::Keepalive => Next::Silent,
        Message::Register { endpoint, files } => {
            register(shared, link, live, conn, endpoint, files)
        }
        Message::ChunkRegister { name, index } => {
            match shared.registry().chunk_register(id, &name, index) {
                Ok(()) => Next::Reply(Message::Ok),
                Err(e) => Next::Reply(Message::error(e.code(), e.to_string())),
            }
        }
        Message::Withdraw { name } => match shared.registry().withdraw(id, &name) {
            Ok(held) => {
                if held {
                    debug!("connection {id} withdrew {name:?}");
                }
                Next::Reply(Message::Ok)
            }
            Err(e) => Next::Reply(Message::error(e.code(), e.to_string())),
        },
        Message::ListFiles => {
            let (files, truncated) = shared.registry().list(wire::MAX_LIST_FILES);
            Next::Reply(Message::FileList { files, truncated })
        }
        Message::Locate { name, with_hashes } => locate(shared, link, remote, name, with_hashes),
        Message::Leave => {
            let ep = shared.registry().endpoint(id);
            shared.registry().remove_peer(id);
            if let Some(ep) = ep {
                info!("peer {ep} left");
            }
            Next::Close(Message::Ok)
        }
        other => Next::Reply(Message::error(
            ErrorCode::Unexpected,
            format!("a tracker does not accept {}", other.kind()),
        )),
    }
}

/// Register: binds the connection to its endpoint and adds its files.
///
/// An endpoint already bound to another connection is taken over only if
/// that connection is found dead ([`probe`]): a live registration can
/// never be removed or replaced by somebody else (e.g. another process on
/// the same host announcing the same port), while a peer whose old
/// connection died half-open gets its endpoint back within
/// [`PROBE_TIMEOUT`]. A Register refused this way is answered
/// `Error{Busy}` as a whole (nothing of it is registered, nothing about
/// this connection changes) and the connection stays open; the same
/// connection asking for the same endpoint again within [`PROBE_QUIET`]
/// is refused without a new probe.
fn register(
    shared: &State,
    link: &Link,
    live: &Live,
    conn: &mut ConnState,
    endpoint: SocketAddr,
    files: Vec<wire::FileEntry>,
) -> Next {
    let id = link.id();
    if endpoint.port() == 0 {
        return Next::Reply(Message::error(
            ErrorCode::Malformed,
            "the endpoint port must not be 0",
        ));
    }
    // Trust the address the connection comes from, not the announced
    // one: a peer must not point the swarm at somebody else's host.
    let observed = SocketAddr::new(link.remote().ip().to_canonical(), endpoint.port());
    if endpoint.ip() != observed.ip() && !endpoint.ip().is_unspecified() {
        debug!(
            "connection {id}: announced {endpoint}, recording {observed} (the address it connects from)"
        );
    }
    let holder = shared.registry().holder(observed).filter(|&h| h != id);
    if let Some(other) = holder {
        let recently_refused = conn
            .refused
            .is_some_and(|(ep, at)| ep == observed && at.elapsed() < PROBE_QUIET);
        if recently_refused || probe(shared, live, other) {
            debug!(
                "connection {id} from {}: Register for {observed} refused: \
                 connection {other} holds it and is alive",
                link.remote()
            );
            if !recently_refused {
                conn.refused = Some((observed, Instant::now()));
            }
            return Next::Reply(endpoint_in_use(observed));
        }
        info!("peer {observed}: connection {other} did not answer the probe; closing it");
        if let Some(l) = live.get(other) {
            l.close();
        }
    }
    let n = files.len();
    let mut registry = shared.registry();
    match registry.holder(observed) {
        // Found dead above (its own thread may not have removed it yet).
        Some(h) if Some(h) == holder => {
            registry.remove_peer(h);
        }
        // Somebody else bound it while we probed.
        Some(h) if h != id => return Next::Reply(endpoint_in_use(observed)),
        _ => {}
    }
    let (results, _) = registry.register(id, observed, files);
    drop(registry);
    conn.refused = None;
    let refused = results
        .iter()
        .filter(|r| !matches!(r, wire::FileOutcome::Accepted))
        .count();
    info!(
        "peer {observed} registered {} file(s){}",
        n - refused,
        if refused > 0 {
            format!(", refused {refused}")
        } else {
            String::new()
        }
    );
    Next::Reply(Message::RegisterReply { results })
}

fn endpoint_in_use(endpoint: SocketAddr) -> Message {
    Message::error(
        ErrorCode::Busy,
        format!("endpoint {endpoint} is registered by another connection that is still alive"),
    )
}

/// Is connection `id` alive? It is, without a probe, while a request of
/// its own is being handled, or when any byte arrived from it within
/// [`PROBE_QUIET`]. Otherwise it is probed: sent a Keepalive, which a
/// registered peer must answer (with a Keepalive, or anything else) within
/// [`PROBE_TIMEOUT`]; any byte received after the probe was sent counts.
/// At most one probe per connection is in flight: a Register that needs
/// one while another runs waits for that one's outcome. The probe never
/// waits for the connection's write lock: if a reply is being written to
/// it, it is being served, so it is alive. A connection that is gone,
/// cannot be written to within the probe timeout, or stays silent is not
/// alive.
fn probe(shared: &State, live: &Live, id: ConnId) -> bool {
    let Some(link) = live.get(id) else {
        return false;
    };
    if link.is_busy() || link.since_receipt() < PROBE_QUIET {
        return true;
    }
    let (slot, mine) = {
        let mut probes = crate::sync::lock(&shared.probes);
        match probes.get(&id) {
            Some(s) => (Arc::clone(s), false),
            None => {
                let s = Arc::new(ProbeSlot::default());
                probes.insert(id, Arc::clone(&s));
                (s, true)
            }
        }
    };
    if !mine {
        return slot.wait(PROBE_TIMEOUT * 2);
    }
    let alive = run_probe(live, &link, id);
    crate::sync::lock(&shared.probes).remove(&id);
    slot.finish(alive);
    alive
}

/// Sends the probe and watches for an answer (see [`probe`]).
fn run_probe(live: &Live, link: &Link, id: ConnId) -> bool {
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let before = link.bytes_received();
    match link.try_send_within(&Message::Keepalive, PROBE_TIMEOUT) {
        // A reply is being written to it: it is being served.
        None => return true,
        Some(Err(e)) => {
            debug!("connection {id}: cannot send the probe: {e}");
            return false;
        }
        Some(Ok(())) => {}
    }
    loop {
        if link.bytes_received() > before || link.is_busy() {
            return true;
        }
        if live.get(id).is_none() || Instant::now() >= deadline {
            return false;
        }
        thread::sleep(PROBE_POLL);
    }
}

/// Locate: a sample of the sources of `name`, with its hashes if asked.
/// The reply is encoded straight from the registry's shared hash list (no
/// copy of it is made first) and written here.
fn locate(
    shared: &State,
    link: &Link,
    remote: SocketAddr,
    name: String,
    with_hashes: bool,
) -> Next {
    let seed = link.id()
        ^ SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
    let snap = shared.registry().locate(
        &name,
        wire::MAX_SOURCES_PER_REPLY,
        seed,
        remote.ip().to_canonical().is_loopback(),
    );
    let s = match snap {
        Err(e) => return Next::Reply(Message::error(e.code(), e.to_string())),
        Ok(s) => s,
    };
    // Built after the lock is released.
    let l = Locations {
        name,
        length: s.meta.geometry.length(),
        chunk_size: s.meta.geometry.chunk_size(),
        chunk_count: s.meta.geometry.count(),
        hashes: None,
        sources: s
            .sources
            .into_iter()
            .map(|(addr, have)| Source { addr, have })
            .collect(),
    };
    let mut buf = Vec::new();
    let hashes = with_hashes.then_some(&s.meta.hashes[..]);
    match wire::encode_locations(&l, hashes, &mut buf) {
        Ok(()) => Next::Raw(buf),
        Err(e) => {
            warn!("cannot encode Locations: {e}");
            Next::Reply(Message::error(ErrorCode::Internal, e.to_string()))
        }
    }
}
