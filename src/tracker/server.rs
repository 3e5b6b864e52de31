//! The tracker's network side: the tracker protocol on top of the shared
//! server skeleton ([`crate::net::server`]).
//!
//! Owns: the tracker's connection settings ([`TrackerConfig`]) and its
//! per-connection handler: what each request does to the registry and what
//! is answered, and the rule "one endpoint, one live connection" (a
//! Register for an endpoint held by another connection probes that one
//! first, see `register` below). Accepting, caps, the Hello, timeouts, closing
//! and shutdown are the skeleton's. A connection's peer is removed from the
//! registry as soon as the connection ends for any reason (Leave, close,
//! error, silence past the idle timeout, a failed probe), and the tracker
//! never ends a registration without closing its connection.
//!
//! Calls `net` (the skeleton), `wire` (messages) and [`super::registry`]
//! (state). The registry Mutex is held only around in-memory registry calls,
//! never across a read or write, so a slow client cannot stall anyone else.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, info, warn};

use super::registry::{ConnId, Registry};
use crate::net::admission::Limits;
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
    HELLO_TIMEOUT, PROBE_TIMEOUT, TRACKER_MAX_CONNECTIONS as MAX_CONNECTIONS,
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
}

impl fmt::Display for TrackerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrackerError::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            TrackerError::Spawn(e) => write!(f, "cannot start the accept thread: {e}"),
        }
    }
}

impl std::error::Error for TrackerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TrackerError::Bind { source, .. } => Some(source),
            TrackerError::Spawn(e) => Some(e),
        }
    }
}

/// The tracker's per-connection behaviour and its state: the registry.
struct State {
    registry: Mutex<Registry>,
}

impl State {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        // A panic in another connection thread must not take the tracker down.
        crate::sync::lock(&self.registry)
    }
}

/// A running tracker. Dropping it shuts it down.
pub struct Tracker {
    server: Server,
    state: Arc<State>,
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
        };
        let state = Arc::new(State {
            registry: Mutex::new(Registry::new()),
        });
        let server =
            Server::start(listener, opts, Arc::clone(&state)).map_err(TrackerError::Spawn)?;
        info!("tracker listening on {local_addr}");
        Ok(Tracker {
            server,
            state,
            running: true,
        })
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
    type Conn = ();

    fn request(
        &self,
        link: &Arc<Link>,
        live: &Live,
        _conn: &mut (),
        m: Message,
    ) -> Result<Flow, WireError> {
        let (reply, flow) = match handle(self, link, live, m) {
            Next::Reply(m) => (Some(m), Flow::Continue),
            Next::Silent => (None, Flow::Continue),
            Next::Close(m) => (Some(m), Flow::Close),
        };
        if let Some(m) = reply {
            link.send(&m)?;
        }
        Ok(flow)
    }

    /// A connection's peer is removed as soon as the connection ends.
    fn ended(&self, link: &Arc<Link>, end: &End) {
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
    /// Nothing to send (Keepalive).
    Silent,
    /// Send this, then close (Leave, fatal errors).
    Close(Message),
}

fn handle(shared: &State, link: &Link, live: &Live, m: Message) -> Next {
    let (id, remote) = (link.id(), link.remote());
    match m {
        Message::Keepalive => Next::Silent,
        Message::Register { endpoint, files } => register(shared, link, live, endpoint, files),
        Message::ChunkRegister { name, index } => {
            match shared.registry().chunk_register(id, &name, index) {
                Ok(()) => Next::Reply(Message::Ok),
                Err(e) => Next::Reply(Message::error(e.code(), e.to_string())),
            }
        }
        Message::ListFiles => {
            let (files, truncated) = shared.registry().list(wire::MAX_LIST_FILES);
            Next::Reply(Message::FileList { files, truncated })
        }
        Message::Locate { name, with_hashes } => locate(shared, id, remote, name, with_hashes),
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
/// that connection fails a liveness probe ([`probe`]): a live registration
/// can never be removed or replaced by somebody else (e.g. another process
/// on the same host announcing the same port), while a peer whose old
/// connection died half-open gets its endpoint back within
/// [`PROBE_TIMEOUT`]. A Register refused this way is answered
/// `Error{Busy}` as a whole (no file is added, the endpoint is not bound)
/// and the connection stays open.
fn register(
    shared: &State,
    link: &Link,
    live: &Live,
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
        if probe(live, other) {
            warn!(
                "connection {id} from {}: Register for {observed} refused: \
                 connection {other} holds it and answered the probe",
                link.remote()
            );
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

/// Is connection `id` alive? Sends it a Keepalive, which a registered peer
/// must answer (with a Keepalive, or any other frame) within
/// [`PROBE_TIMEOUT`]. Any frame received after the probe was sent counts,
/// and so does a request of its own being handled meanwhile (its thread
/// reads nothing while it handles one, e.g. while it probes somebody
/// else). A connection that is gone, cannot be written to, or stays silent
/// is not alive.
fn probe(live: &Live, id: ConnId) -> bool {
    let Some(link) = live.get(id) else {
        return false;
    };
    let before = link.received();
    if link.send(&Message::Keepalive).is_err() {
        return false;
    }
    let deadline = Instant::now() + PROBE_TIMEOUT;
    while Instant::now() < deadline {
        thread::sleep(PROBE_POLL);
        if link.received() > before || link.is_busy() {
            return true;
        }
        if live.get(id).is_none() {
            return false;
        }
    }
    false
}

/// Locate: a sample of the sources of `name`, with its hashes if asked.
fn locate(shared: &State, id: ConnId, remote: SocketAddr, name: String, with_hashes: bool) -> Next {
    let seed = id
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
    match snap {
        Err(e) => Next::Reply(Message::error(e.code(), e.to_string())),
        // Built after the lock is released: copying hashes is the
        // expensive part.
        Ok(s) => Next::Reply(Message::Locations(Locations {
            name,
            length: s.meta.geometry.length(),
            chunk_size: s.meta.geometry.chunk_size(),
            chunk_count: s.meta.geometry.count(),
            hashes: with_hashes.then(|| s.meta.hashes.to_vec()),
            sources: s
                .sources
                .into_iter()
                .map(|(addr, have)| Source { addr, have })
                .collect(),
        })),
    }
}
