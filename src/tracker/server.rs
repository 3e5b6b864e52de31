//! The tracker's network side: a listener and one OS thread per connection.
//!
//! Owns: accepting connections (with caps in total and per source address,
//! see [`crate::admission`]), the per-connection protocol loop (Hello, then
//! request/reply), timeouts (greeting, idle, write), and shutdown. A
//! connection's peer is removed from the registry as soon as the connection
//! ends for any reason: Leave, close, error, or silence past the idle
//! timeout.
//!
//! Calls `wire` for framing, [`super::registry`] for state and
//! [`crate::admission`] for the connection caps. The registry
//! Mutex is held only around in-memory registry calls, never across a read
//! or write, so a slow client cannot stall anyone else.
//!
//! Shutdown follows tiny-http: set a flag, wake the blocking `accept` by
//! connecting to ourselves, shut down every open socket, join every thread.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use log::{debug, info, warn};

use super::registry::{ConnId, Registry};
use crate::admission::{Admission, DeadlineReader, Limits, Refuser};
use crate::wire::{self, ErrorCode, Locations, Message, Source, WireError};

/// How often a registered peer sends Keepalive (see the wire module).
pub const KEEPALIVE_INTERVAL: Duration = wire::KEEPALIVE_INTERVAL;
/// A connection silent for this long is dropped and its peer removed: three
/// missed keepalives.
pub const IDLE_TIMEOUT: Duration = wire::TRACKER_IDLE_TIMEOUT;
/// How long one write to a client may block before the client is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
pub use crate::limits::{
    HELLO_TIMEOUT, TRACKER_MAX_CONNECTIONS as MAX_CONNECTIONS, TRACKER_MAX_PER_IP as MAX_PER_IP,
};
/// Stack of a connection thread: the handler keeps buffers on the heap.
const CONN_STACK_SIZE: usize = 256 * 1024;

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

struct Shared {
    cfg: TrackerConfig,
    registry: Mutex<Registry>,
    /// A clone of every open connection's stream, to shut them down.
    conns: Mutex<HashMap<ConnId, TcpStream>>,
    admission: Arc<Admission>,
    shutting_down: AtomicBool,
    next_id: AtomicU64,
}

impl Shared {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        // A panic in another connection thread must not take the tracker down.
        crate::sync::lock(&self.registry)
    }

    fn conns(&self) -> MutexGuard<'_, HashMap<ConnId, TcpStream>> {
        crate::sync::lock(&self.conns)
    }
}

/// A running tracker. Dropping it shuts it down.
pub struct Tracker {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Tracker {
    /// Binds `cfg.listen` (port 0 picks a free port) and starts accepting.
    pub fn start(cfg: TrackerConfig) -> Result<Tracker, TrackerError> {
        let listener = TcpListener::bind(cfg.listen).map_err(|source| TrackerError::Bind {
            addr: cfg.listen,
            source,
        })?;
        let local_addr = listener.local_addr().map_err(|source| TrackerError::Bind {
            addr: cfg.listen,
            source,
        })?;
        let admission = Admission::new(Limits {
            max_total: cfg.max_connections,
            max_per_ip: cfg.max_per_ip,
        });
        let refuser = Refuser::start("tracker").map_err(TrackerError::Spawn)?;
        let shared = Arc::new(Shared {
            cfg,
            registry: Mutex::new(Registry::new()),
            conns: Mutex::new(HashMap::new()),
            admission,
            shutting_down: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
        });
        let s = Arc::clone(&shared);
        let accept = thread::Builder::new()
            .name("tracker-accept".into())
            .spawn(move || accept_loop(listener, s, refuser))
            .map_err(TrackerError::Spawn)?;
        info!("tracker listening on {local_addr}");
        Ok(Tracker {
            local_addr,
            shared,
            accept: Some(accept),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Number of currently registered peers.
    pub fn peer_count(&self) -> usize {
        self.shared.registry().peer_count()
    }

    /// Number of open connections.
    pub fn connection_count(&self) -> usize {
        self.shared.conns().len()
    }

    /// Stops accepting, closes every connection, joins every thread.
    pub fn shutdown(&mut self) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        // Wake the blocking accept() with a connection to ourselves.
        let woke = TcpStream::connect_timeout(&wake_addr(self.local_addr), Duration::from_secs(1));
        // Close every connection from here too, so their threads end even
        // if the accept thread cannot be woken.
        for (_, s) in self.shared.conns().drain() {
            let _ = s.shutdown(Shutdown::Both);
        }
        match woke {
            Ok(_) => {
                if accept.join().is_err() {
                    warn!("the accept thread panicked");
                }
            }
            // Joining would wait in accept() forever; the thread ends with
            // the process.
            Err(e) => warn!("cannot wake the accept thread on {}: {e}", self.local_addr),
        }
        info!("tracker stopped");
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Where to connect to reach a listener bound to `addr` (an unspecified
/// address is reached through loopback).
fn wake_addr(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>, refuser: Refuser) {
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    for incoming in listener.incoming() {
        if shared.shutting_down.load(Ordering::SeqCst) {
            break;
        }
        let stream = match incoming {
            Ok(s) => s,
            Err(e) => {
                // E.g. EMFILE: back off briefly instead of spinning.
                warn!("accept failed: {e}");
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        threads.retain(|t| !t.is_finished());
        // Admission: a ticket per connection, given back when its thread
        // ends (or when the thread cannot be started).
        let ticket = match stream.peer_addr() {
            Ok(remote) => match shared.admission.admit(remote.ip()) {
                Ok(t) => t,
                Err(why) => {
                    debug!("refusing a connection from {remote}: {}", why.message());
                    refuser.refuse(stream, &why.message());
                    continue;
                }
            },
            // Already reset by the client.
            Err(_) => continue,
        };
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        match stream.try_clone() {
            Ok(clone) => {
                shared.conns().insert(id, clone);
            }
            Err(e) => {
                warn!("connection {id}: cannot clone socket: {e}");
                continue;
            }
        }
        let s = Arc::clone(&shared);
        let spawned = thread::Builder::new()
            .name(format!("tracker-conn-{id}"))
            .stack_size(CONN_STACK_SIZE)
            .spawn(move || {
                let _ticket = ticket;
                serve_connection(&s, id, stream);
                s.registry().remove_peer(id);
                s.conns().remove(&id);
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                warn!("connection {id}: cannot start a thread: {e}");
                if let Some(s) = shared.conns().remove(&id) {
                    let _ = s.shutdown(Shutdown::Both);
                }
            }
        }
    }
    // Shutting down: close every connection so its thread's read returns.
    for (_, s) in shared.conns().drain() {
        let _ = s.shutdown(Shutdown::Both);
    }
    for t in threads {
        let _ = t.join();
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

fn serve_connection(shared: &Shared, id: ConnId, stream: TcpStream) {
    let remote = match stream.peer_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    let setup = || -> io::Result<TcpStream> {
        stream.set_nodelay(true)?;
        // (A zero Duration is refused by set_read_timeout.)
        let hello = shared.cfg.hello_timeout.min(shared.cfg.idle_timeout);
        stream.set_read_timeout(Some(hello.max(Duration::from_millis(1))))?;
        stream.set_write_timeout(Some(shared.cfg.write_timeout))?;
        stream.try_clone()
    };
    let mut writer = match setup() {
        Ok(w) => w,
        Err(e) => {
            debug!("connection {id} from {remote}: setup failed: {e}");
            return;
        }
    };
    let mut reader = BufReader::with_capacity(16 * 1024, stream);
    debug!("connection {id} from {remote}");

    let mut greeted = false;
    loop {
        let read = if greeted {
            wire::read_message(&mut reader)
        } else {
            // The whole Hello must arrive within the Hello timeout, not
            // merely some byte of it every so often.
            let limit = shared.cfg.hello_timeout.min(shared.cfg.idle_timeout);
            wire::read_message(&mut DeadlineReader::new(&mut reader, &writer, limit))
        };
        let next = match read {
            Ok(None) => break,
            Ok(Some(m)) if !greeted => match m {
                Message::Hello { version } if version == wire::PROTOCOL_VERSION => {
                    greeted = true;
                    if let Err(e) = writer.set_read_timeout(Some(shared.cfg.idle_timeout)) {
                        debug!("connection {id} from {remote}: {e}");
                        break;
                    }
                    Next::Reply(Message::Hello {
                        version: wire::PROTOCOL_VERSION,
                    })
                }
                Message::Hello { version } => Next::Close(Message::error(
                    ErrorCode::BadVersion,
                    format!(
                        "this tracker speaks protocol version {}, you sent {version}",
                        wire::PROTOCOL_VERSION
                    ),
                )),
                other => Next::Close(Message::error(
                    ErrorCode::Unexpected,
                    format!("expected Hello first, got {}", other.kind()),
                )),
            },
            Ok(Some(m)) => handle(shared, id, remote, m),
            Err(e) if e.is_timeout() && !greeted => {
                debug!(
                    "connection {id} from {remote}: no Hello within {:?}, dropping it",
                    shared.cfg.hello_timeout
                );
                break;
            }
            Err(e) if e.is_timeout() => {
                info!(
                    "connection {id} from {remote}: silent for {:?}, dropping it",
                    shared.cfg.idle_timeout
                );
                break;
            }
            Err(e) if e.is_disconnect() => {
                debug!("connection {id} from {remote}: {e}");
                break;
            }
            Err(e) => {
                warn!("connection {id} from {remote}: {e}; closing");
                Next::Close(Message::error(ErrorCode::Malformed, e.to_string()))
            }
        };
        let (reply, close) = match next {
            Next::Reply(m) => (Some(m), false),
            Next::Silent => (None, false),
            Next::Close(m) => (Some(m), true),
        };
        if let Some(m) = reply
            && let Err(e) = send(&mut writer, &m)
        {
            debug!("connection {id} from {remote}: write failed: {e}");
            break;
        }
        if close {
            break;
        }
    }
    let ep = shared.registry().endpoint(id);
    if let Some(ep) = ep {
        info!("peer {ep} (connection {id}) gone; its chunks are forgotten");
    }
    let _ = writer.shutdown(Shutdown::Both);
}

fn send(w: &mut TcpStream, m: &Message) -> Result<(), WireError> {
    let mut buf = Vec::new();
    if let Err(e) = m.encode(&mut buf) {
        // Only a bug can get here (the registry keeps everything in limits);
        // tell the client rather than sending nothing.
        warn!("cannot encode {}: {e}", m.kind());
        buf.clear();
        Message::error(ErrorCode::Internal, e.to_string()).encode(&mut buf)?;
    }
    w.write_all(&buf)?;
    Ok(())
}

fn handle(shared: &Shared, id: ConnId, remote: SocketAddr, m: Message) -> Next {
    match m {
        Message::Keepalive => Next::Silent,
        Message::Register { endpoint, files } => {
            if endpoint.port() == 0 {
                return Next::Reply(Message::error(
                    ErrorCode::Malformed,
                    "the endpoint port must not be 0",
                ));
            }
            // Trust the address the connection comes from, not the announced
            // one: a peer must not point the swarm at somebody else's host.
            let observed = SocketAddr::new(remote.ip().to_canonical(), endpoint.port());
            if endpoint.ip() != observed.ip() && !endpoint.ip().is_unspecified() {
                debug!(
                    "connection {id}: announced {endpoint}, recording {observed} (the address it connects from)"
                );
            }
            let n = files.len();
            let (results, evicted) = shared.registry().register(id, observed, files);
            if let Some(old) = evicted {
                info!("peer {observed} reconnected; dropped its stale connection {old}");
            }
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
        Message::Locate { name, with_hashes } => {
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
