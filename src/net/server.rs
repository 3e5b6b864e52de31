//! The server skeleton shared by the tracker and the chunk server.
//!
//! Owns everything about a server's connections that is not what is said on
//! them:
//! - the listening socket ([`listen`]: a backlog deep enough for a
//!   reconnect storm);
//! - the "`name`-accept" thread: accept, admission against the caps
//!   ([`super::admission`]; refused connections get `Error{Busy}` from the
//!   refuser thread), one named thread "`name`-conn-`id`" per admitted
//!   connection (small stack: handlers keep their buffers on the heap), and
//!   reaping of finished threads on every accept;
//! - the set of live connections ([`Live`]), each a [`Link`] through which
//!   anyone may write to it (one write lock per connection) or close it;
//! - per connection: TCP_NODELAY, the write timeout and a deadline for each
//!   whole message written ([`super::deadline`]), the opening under one
//!   deadline (the Hello timeout): telling a keyed client from a clear one
//!   by its first byte, the Noise handshake when the server has a network
//!   key ([`super::secure`]; a clear client of a keyed server, a keyed
//!   client of a clear server and a wrong key are each refused with a clear
//!   `Error` and closed), then the Hello exchange; the
//!   request loop under the idle timeout, the handler's largest request
//!   ([`Handler::MAX_REQUEST_LEN`], checked on the header), the frame budget
//!   ([`super::budget`]) and a deadline for large request frames,
//!   `Error{Malformed}` for every frame that cannot be decoded (a whole
//!   frame is read first, so a payload that ends inside a field is told
//!   apart from a stream that ends inside a frame, which is closed quietly),
//!   and an orderly close (FIN, then a short drain so the last reply is not
//!   destroyed by a reset);
//! - what a liveness check needs to know of a connection: bytes received
//!   and when the last one arrived, whether a request of it is being
//!   handled, and a write that never waits for another writer
//!   ([`Link::try_send_within`]);
//! - shutdown: set a flag, wake the blocking `accept` by connecting to
//!   ourselves, shut down every live socket, join every thread.
//!
//! A server supplies only a [`Handler`]: what to do with one request, and
//! what to do when a connection ends. Calls `wire`, `sync`, `limits`,
//! [`super::admission`], [`super::budget`], [`super::deadline`],
//! [`super::secure`] and [`super::key`] only.

use std::collections::HashMap;
use std::io::{self, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use super::admission::{Admission, Limits, Refuser};
use super::budget::{BudgetLimits, FrameBudget, Reservation};
use super::deadline::{DeadlineWriter, chunk_allowance, frame_allowance};
use super::key::{self, NetworkKey};
use super::secure::{self, HandshakeError, Opener, Opening, Sealer, SecureRead};
use crate::wire::{self, ErrorCode, Message, WireError};

/// Stack of a connection thread (small: thousands may exist).
const CONN_STACK: usize = 256 * 1024;
/// Read buffer per connection: requests are small, this holds many.
const READ_BUF: usize = 16 * 1024;
/// When closing after a final reply, how long to drain what the client
/// already sent, so the close is a FIN (our reply arrives) and not a RST.
const LINGER: Duration = Duration::from_millis(200);
/// Most bytes drained while lingering.
const LINGER_BYTES: usize = 64 * 1024;
/// Pause after a failed accept (e.g. out of file descriptors) so the
/// accept thread does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// How long shutdown waits to connect to its own listener.
const WAKE_TIMEOUT: Duration = Duration::from_secs(1);

/// How a server runs its connections.
#[derive(Debug, Clone)]
pub struct Options {
    /// Prefix of the thread names ("`name`-accept", "`name`-conn-`id`",
    /// "`name`-refuser").
    pub name: &'static str,
    /// What this server calls itself in error messages ("tracker", "peer").
    pub role: &'static str,
    /// The whole Hello must arrive within this long after the accept
    /// (capped by `idle_timeout`).
    pub hello_timeout: Duration,
    /// After the Hello, a connection that sends nothing this long is closed.
    pub idle_timeout: Duration,
    /// A write that makes no progress this long fails (the reader is gone).
    pub write_timeout: Duration,
    /// Connections open at once, in total and per address.
    pub limits: Limits,
    /// Bytes of large request frames received and handled at once (`None`:
    /// no budget; the handler's [`Handler::MAX_REQUEST_LEN`] bounds them).
    pub frame_budget: Option<BudgetLimits>,
}

/// What to do after one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Read the next request.
    Continue,
    /// The last reply has been sent: close the connection (orderly).
    Close,
}

/// How a connection ended.
#[derive(Debug)]
pub enum End {
    /// The client closed the connection between two frames.
    Closed,
    /// The Hello did not arrive in time.
    HelloTimeout,
    /// Nothing arrived for the idle timeout.
    Idle,
    /// The client went away (reset, or the stream ended inside a frame).
    Gone(WireError),
    /// We answered an error that ends the connection (bad Hello, a frame
    /// that cannot be decoded) and closed it.
    Refused { code: ErrorCode, message: String },
    /// The handler asked to close after its reply.
    Done,
    /// The stream failed otherwise (e.g. a write timed out).
    Failed(WireError),
    /// The server is shutting down.
    Stopped,
}

/// A server's per-connection behaviour. Called on the connection's own
/// thread; may block (it holds nobody else up).
pub trait Handler: Send + Sync + 'static {
    /// Per-connection state kept between requests (e.g. a reusable buffer),
    /// created when the Hello has been answered.
    type Conn: Default;

    /// The largest request frame (`len`) this server reads. A header
    /// announcing more is answered `Error{Malformed}` and the connection is
    /// closed before any of the payload is read.
    const MAX_REQUEST_LEN: u32 = wire::MAX_FRAME_LEN;

    /// Answers one request received on `link` after the Hello, by writing
    /// through `link`. `live` reaches the server's other connections. An
    /// `Err` is a failed stream and ends the connection.
    fn request(
        &self,
        link: &Arc<Link>,
        live: &Live,
        conn: &mut Self::Conn,
        m: Message,
    ) -> Result<Flow, WireError>;

    /// Called once when a connection ends, however it ends (also when it
    /// never completed its Hello), before its socket is closed.
    fn ended(&self, _link: &Arc<Link>, _end: &End) {}
}

/// One live connection, as seen from any thread.
pub struct Link {
    id: u64,
    remote: SocketAddr,
    stream: TcpStream,
    /// Held for each whole message written, so writes from several threads
    /// never interleave inside a frame (or a record); holds the sending
    /// half of the session once a keyed handshake is done.
    write: Mutex<Option<Sealer>>,
    /// Frames received so far (Hello included).
    received: AtomicU64,
    /// Bytes of requests received so far (after the Hello), counted as they
    /// are read, so a frame still arriving counts.
    bytes_in: AtomicU64,
    /// When the last of them arrived: milliseconds after `born`.
    last_in_ms: AtomicU64,
    born: Instant,
    /// The socket's write timeout (each write call); a whole message gets
    /// more, see [`Link::write_all`].
    write_timeout: Duration,
    /// True while the handler is answering a request of this connection.
    busy: AtomicBool,
}

impl Link {
    /// This connection's id, unique for the server's life (from 1).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The client's address.
    pub fn remote(&self) -> SocketAddr {
        self.remote
    }

    /// How many frames have been received on this connection so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }

    /// Bytes received after the Hello so far, including those of a frame
    /// still arriving.
    pub fn bytes_received(&self) -> u64 {
        self.bytes_in.load(Ordering::SeqCst)
    }

    /// How long ago the last byte was received (since the connection was
    /// accepted, if none was).
    pub fn since_receipt(&self) -> Duration {
        let last = Duration::from_millis(self.last_in_ms.load(Ordering::SeqCst));
        self.born.elapsed().saturating_sub(last)
    }

    fn note_received(&self, n: usize) {
        self.bytes_in.fetch_add(n as u64, Ordering::SeqCst);
        let ms = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_in_ms.fetch_max(ms, Ordering::SeqCst);
    }

    /// Whether the handler is answering one of this connection's requests
    /// right now (so the connection is alive, though it reads nothing
    /// meanwhile).
    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::SeqCst)
    }

    /// Writes `m` only if nobody is writing to this connection now, and
    /// gives up after `limit` however slowly the bytes leave. `None` when
    /// another write holds the connection (nothing was written); an `Err`
    /// may leave part of the frame written, so the caller must close the
    /// connection then.
    pub fn try_send_within(&self, m: &Message, limit: Duration) -> Option<Result<(), WireError>> {
        let mut buf = Vec::new();
        if let Err(e) = m.encode(&mut buf) {
            return Some(Err(e));
        }
        let mut sealer = match self.write.try_lock() {
            Ok(w) => w,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        let deadline = Instant::now() + limit;
        let mut out = DeadlineWriter::new(&self.stream, self.write_timeout, deadline);
        let written = match sealer.as_mut() {
            Some(s) => s.write_all(&mut out, &buf),
            None => out.write_all(&buf),
        };
        Some(written.map_err(WireError::Io))
    }

    /// Encodes and writes one message. A message that cannot be encoded is
    /// a bug (everything sent is built within the limits); the client is
    /// told `Error{Internal}` rather than nothing.
    pub fn send(&self, m: &Message) -> Result<(), WireError> {
        let mut buf = Vec::new();
        if let Err(e) = m.encode(&mut buf) {
            warn!("cannot encode {}: {e}", m.kind());
            buf.clear();
            Message::error(ErrorCode::Internal, e.to_string()).encode(&mut buf)?;
        }
        self.write_all(&buf)?;
        Ok(())
    }

    /// Writes bytes that are a whole number of frames (or one frame's
    /// pieces, when only this connection's thread writes). Besides the
    /// write timeout (each write call), the whole of `bytes` must be out
    /// within [`frame_allowance`]`(write timeout, bytes.len())`, so a
    /// reader that takes a little now and then cannot hold the reply's
    /// memory and this connection's write lock for longer.
    pub fn write_all(&self, bytes: &[u8]) -> io::Result<()> {
        self.write_by(bytes, frame_allowance)
    }

    /// [`Link::write_all`] for a `ChunkData` frame or a piece of one: the
    /// deadline is [`chunk_allowance`]`(write timeout, bytes.len())`.
    pub fn write_chunk_data(&self, bytes: &[u8]) -> io::Result<()> {
        self.write_by(bytes, chunk_allowance)
    }

    fn write_by(&self, bytes: &[u8], allowance: fn(Duration, u64) -> Duration) -> io::Result<()> {
        let mut sealer = crate::sync::lock(&self.write);
        let deadline = Instant::now() + allowance(self.write_timeout, bytes.len() as u64);
        let mut out = DeadlineWriter::new(&self.stream, self.write_timeout, deadline);
        match sealer.as_mut() {
            Some(s) => s.write_all(&mut out, bytes),
            None => out.write_all(bytes),
        }
    }

    /// Whether this connection is encrypted (a keyed handshake was done).
    pub fn is_keyed(&self) -> bool {
        crate::sync::lock(&self.write).is_some()
    }

    /// Shuts the socket down both ways: the connection's thread sees its
    /// read fail and ends.
    pub fn close(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// The live connections of one server.
#[derive(Default)]
pub struct Live {
    map: Mutex<HashMap<u64, Arc<Link>>>,
}

impl Live {
    fn map(&self) -> MutexGuard<'_, HashMap<u64, Arc<Link>>> {
        // Poisoning ignored: each critical section is one map operation.
        crate::sync::lock(&self.map)
    }

    /// The live connection `id`, if it is still open.
    pub fn get(&self, id: u64) -> Option<Arc<Link>> {
        self.map().get(&id).cloned()
    }

    /// Connections open now.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Shuts down every live socket (outside the lock: the map is emptied
    /// first), so blocked reads and writes return at once.
    fn close_all(&self) {
        let links: Vec<Arc<Link>> = self.map().drain().map(|(_, l)| l).collect();
        for l in links {
            l.close();
        }
    }
}

/// State shared by the accept thread, the connection threads and the handle.
struct Shared<H> {
    opts: Options,
    handler: Arc<H>,
    live: Arc<Live>,
    admission: Arc<Admission>,
    stopping: Arc<AtomicBool>,
    /// The network key; `None` serves clear connections only.
    key: Option<NetworkKey>,
    budget: Option<FrameBudget>,
}

/// A running server. Dropping it shuts it down.
pub struct Server {
    addr: SocketAddr,
    name: &'static str,
    live: Arc<Live>,
    admission: Arc<Admission>,
    stopping: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    /// Serves `listener` (already bound) with `handler`, starting the accept
    /// and refuser threads; keyed with this process's network key, if it
    /// has one ([`key::process`]).
    pub fn start<H: Handler>(
        listener: TcpListener,
        opts: Options,
        handler: Arc<H>,
    ) -> io::Result<Server> {
        Server::start_keyed(listener, opts, handler, key::process().cloned())
    }

    /// [`Server::start`] with an explicit network key (`None`: clear).
    pub fn start_keyed<H: Handler>(
        listener: TcpListener,
        opts: Options,
        handler: Arc<H>,
        key: Option<NetworkKey>,
    ) -> io::Result<Server> {
        let addr = listener.local_addr()?;
        let name = opts.name;
        let refuser = Refuser::start(name)?;
        let shared = Arc::new(Shared {
            admission: Admission::new(opts.limits),
            budget: opts.frame_budget.map(FrameBudget::new),
            opts,
            handler,
            live: Arc::new(Live::default()),
            stopping: Arc::new(AtomicBool::new(false)),
            key,
        });
        let (live, stopping) = (Arc::clone(&shared.live), Arc::clone(&shared.stopping));
        let admission = Arc::clone(&shared.admission);
        let accept = thread::Builder::new()
            .name(format!("{name}-accept"))
            .spawn(move || accept_loop(listener, shared, refuser))?;
        Ok(Server {
            addr,
            name,
            live,
            admission,
            stopping,
            accept: Some(accept),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The live connections.
    pub fn live(&self) -> &Live {
        &self.live
    }

    /// The live connections, shared (for a thread that outlives a borrow).
    pub fn live_shared(&self) -> Arc<Live> {
        Arc::clone(&self.live)
    }

    /// The server's connection caps and their counts.
    pub fn admission(&self) -> Arc<Admission> {
        Arc::clone(&self.admission)
    }

    /// Stops accepting, shuts down every open connection's socket and joins
    /// every thread. Idempotent; also called from Drop.
    pub fn shutdown(&mut self) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        self.stopping.store(true, Ordering::SeqCst);
        // Wake the blocking accept: it sees the flag and leaves its loop.
        let woke = TcpStream::connect_timeout(&wake_addr(self.addr), WAKE_TIMEOUT);
        // Close every connection from here too, so their threads end even
        // if the accept thread cannot be woken.
        self.live.close_all();
        match woke {
            Ok(_) => {
                if accept.join().is_err() {
                    warn!("{}: the accept thread panicked", self.name);
                }
            }
            // Joining would wait in accept() forever; the thread ends with
            // the process. Connections are closed.
            Err(e) => warn!(
                "{}: cannot wake the accept thread on {}: {e}",
                self.name, self.addr
            ),
        }
    }
}

impl Drop for Server {
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

/// Binds `addr` and listens with a backlog of [`LISTEN_BACKLOG`] (std's
/// `TcpListener::bind` always asks for 128). Like std, sets SO_REUSEADDR so
/// a restarted server can bind its port while old connections linger in
/// TIME_WAIT.
///
/// [`LISTEN_BACKLOG`]: crate::limits::LISTEN_BACKLOG
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(crate::limits::LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// The accept thread.
fn accept_loop<H: Handler>(listener: TcpListener, shared: Arc<Shared<H>>, refuser: Refuser) {
    let name = shared.opts.name;
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    let mut next_id: u64 = 0;
    loop {
        let accepted = listener.accept();
        if shared.stopping.load(Ordering::SeqCst) {
            break; // the wake-up connection (or one racing shutdown): dropped
        }
        reap(&mut threads, name);
        let (stream, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!("{name}: accept failed: {e}");
                thread::sleep(ACCEPT_BACKOFF);
                continue;
            }
        };
        // A ticket per connection, given back when its thread ends (or
        // when the thread cannot be started).
        let ticket = match shared.admission.admit(remote.ip()) {
            Ok(t) => t,
            Err(why) => {
                debug!("{name}: refusing {remote}: {}", why.message());
                refuser.refuse(stream, &why.message());
                continue;
            }
        };
        next_id += 1;
        // One descriptor per connection: the connection's thread reads
        // through the same socket everybody writes to (`&TcpStream` is
        // both Read and Write), so a tracker with N peers needs N
        // descriptors, not 2N.
        let link = Arc::new(Link {
            id: next_id,
            remote,
            stream,
            write: Mutex::new(None),
            received: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            last_in_ms: AtomicU64::new(0),
            born: Instant::now(),
            write_timeout: write_timeout(&shared.opts),
            busy: AtomicBool::new(false),
        });
        shared.live.map().insert(next_id, Arc::clone(&link));
        let s = Arc::clone(&shared);
        let spawned = thread::Builder::new()
            .name(format!("{name}-conn-{next_id}"))
            .stack_size(CONN_STACK)
            .spawn(move || {
                let _ticket = ticket;
                let _guard = LiveGuard {
                    live: &s.live,
                    id: link.id,
                };
                run_conn(&s, &link);
            });
        match spawned {
            Ok(h) => threads.push(h),
            Err(e) => {
                warn!("{name}: {remote}: cannot start a connection thread: {e}");
                if let Some(l) = shared.live.map().remove(&next_id) {
                    l.close();
                }
            }
        }
    }
    drop(listener);
    shared.live.close_all();
    for t in threads {
        if t.join().is_err() {
            warn!("{name}: a connection thread panicked");
        }
    }
}

/// Joins connection threads that have finished, so the Vec stays small.
fn reap(threads: &mut Vec<JoinHandle<()>>, name: &str) {
    let mut i = 0;
    while i < threads.len() {
        if threads[i].is_finished() {
            if threads.swap_remove(i).join().is_err() {
                warn!("{name}: a connection thread panicked");
            }
        } else {
            i += 1;
        }
    }
}

/// Removes a connection from the live set when its thread ends, however
/// it ends (a panicking handler included).
struct LiveGuard<'a> {
    live: &'a Live,
    id: u64,
}

impl Drop for LiveGuard<'_> {
    fn drop(&mut self) {
        self.live.map().remove(&self.id);
    }
}

/// One connection thread: serve, tell the handler how it ended, close.
fn run_conn<H: Handler>(shared: &Shared<H>, link: &Arc<Link>) {
    let name = shared.opts.name;
    let remote = link.remote;
    debug!("{name}: connection {} from {remote}", link.id);
    let end = serve(shared, link);
    match &end {
        End::Refused { code, message } => {
            info!("{name}: {remote}: answered {code} ({message}) and closed")
        }
        End::Failed(e) if !shared.stopping.load(Ordering::Relaxed) => {
            warn!("{name}: {remote}: closed: {e}")
        }
        other => debug!("{name}: {remote}: connection {} ended: {other:?}", link.id),
    }
    shared.handler.ended(link, &end);
    link.close();
}

/// The protocol of one connection: setup, Hello, then requests until the
/// connection ends.
fn serve<H: Handler>(shared: &Shared<H>, link: &Arc<Link>) -> End {
    let stream = &link.stream;
    let o = &shared.opts;
    // A zero Duration is refused by set_read_timeout; treat it as 1 ms.
    let idle = o.idle_timeout.max(Duration::from_millis(1));
    let hello = o.hello_timeout.max(Duration::from_millis(1)).min(idle);
    let setup = || -> io::Result<()> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(hello))?;
        stream.set_write_timeout(Some(write_timeout(o)))
    };
    if let Err(e) = setup() {
        return End::Failed(e.into());
    }
    let mut reader = BufReader::with_capacity(READ_BUF, stream);
    let mut opener = match greet(shared, link, &mut reader, hello) {
        Ok(opener) => opener,
        Err(end) => return end,
    };
    if let Err(e) = link.stream.set_read_timeout(Some(idle)) {
        return End::Failed(e.into());
    }
    let mut state = H::Conn::default();
    loop {
        if shared.stopping.load(Ordering::Relaxed) {
            return End::Stopped;
        }
        let mut input = SecureRead {
            opener: opener.as_mut(),
            inner: &mut reader,
        };
        let (m, charge) = match next_request::<H, _>(shared, link, &mut input, idle) {
            Ok(Some(m)) => m,
            Ok(None) => return End::Closed,
            Err(e) => return read_failed(link, e, End::Idle),
        };
        link.received.fetch_add(1, Ordering::SeqCst);
        link.busy.store(true, Ordering::SeqCst);
        let flow = shared.handler.request(link, &shared.live, &mut state, m);
        link.busy.store(false, Ordering::SeqCst);
        drop(charge);
        match flow {
            Ok(Flow::Continue) => {}
            Ok(Flow::Close) => {
                linger_close(&link.stream);
                return End::Done;
            }
            Err(e) if e.is_disconnect() => return End::Gone(e),
            Err(e) => return End::Failed(e),
        }
    }
}

/// The opening of a connection, all under one deadline (the Hello
/// timeout): the handshake if the client is keyed (or the refusal of a
/// client whose kind does not match the server's), then the Hello. `Ok`
/// with the receiving half of the session (if keyed) when the connection
/// may go on to requests.
fn greet<H: Handler>(
    shared: &Shared<H>,
    link: &Link,
    reader: &mut BufReader<&TcpStream>,
    limit: Duration,
) -> Result<Option<Opener>, End> {
    // The whole opening must arrive within the Hello timeout, not merely
    // some byte of it every so often.
    let mut timed = DeadlineReader::new(reader, &link.stream, limit);
    let mut first = [0u8; 1];
    loop {
        match timed.read(&mut first) {
            Ok(0) => return Err(End::Closed),
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                let e = ReadError::Stream(e.into());
                return Err(read_failed(link, e, End::HelloTimeout));
            }
        }
    }
    let role = shared.opts.role;
    let mut opener = match (secure::opening(first[0]), &shared.key) {
        (Opening::Clear, None) => None,
        (Opening::Clear, Some(_)) => {
            return Err(refuse(
                link,
                ErrorCode::KeyRequired,
                format!("this {role} requires a network key: pass --key-file"),
            ));
        }
        (Opening::Keyed, key) => Some(handshake(link, &mut timed, key.as_ref(), role)?),
    };
    let hello = match opener.as_mut() {
        None => read_request(&mut (&first[..]).chain(&mut timed), H::MAX_REQUEST_LEN),
        Some(o) => read_request(
            &mut SecureRead {
                opener: Some(o),
                inner: &mut timed,
            },
            H::MAX_REQUEST_LEN,
        ),
    };
    answer_hello(link, hello, role)?;
    Ok(opener)
}

/// A keyed client's handshake, its preamble's first byte already read: on
/// success the link seals what it sends from now on.
fn handshake<R: Read>(
    link: &Link,
    r: &mut R,
    key: Option<&NetworkKey>,
    role: &str,
) -> Result<Opener, End> {
    let done = secure::read_preamble_rest(r).and_then(|()| match key {
        Some(key) => secure::server_handshake(r, &mut &link.stream, key),
        None => Err(HandshakeError::Rejected),
    });
    let (opener, sealer) = match done {
        Ok(halves) => halves,
        Err(HandshakeError::Io(e)) => {
            let e = ReadError::Stream(e.into());
            return Err(read_failed(link, e, End::HelloTimeout));
        }
        Err(HandshakeError::Version(v)) => {
            return Err(refuse(
                link,
                ErrorCode::BadVersion,
                format!(
                    "this {role} speaks protocol version {}, you sent {v}",
                    wire::PROTOCOL_VERSION
                ),
            ));
        }
        Err(HandshakeError::Rejected) if key.is_none() => {
            let why = format!("this {role} uses no network key: run without --key-file");
            return Err(refuse(link, ErrorCode::KeyRejected, why));
        }
        Err(HandshakeError::Rejected) => {
            let why = format!("this {role} is in a private network with another key");
            return Err(refuse(link, ErrorCode::KeyRejected, why));
        }
        Err(e) => return Err(refuse(link, ErrorCode::Malformed, e.to_string())),
    };
    *crate::sync::lock(&link.write) = Some(sealer);
    Ok(opener)
}

/// Answers the first message, which must be a Hello of our version.
fn answer_hello(
    link: &Link,
    first: Result<Option<Message>, ReadError>,
    role: &str,
) -> Result<(), End> {
    if let Ok(Some(_)) = first {
        link.received.fetch_add(1, Ordering::SeqCst);
    }
    match first {
        Ok(Some(Message::Hello { version })) if version == wire::PROTOCOL_VERSION => {
            link.send(&Message::Hello { version }).map_err(End::Failed)
        }
        Ok(Some(Message::Hello { version })) => Err(refuse(
            link,
            ErrorCode::BadVersion,
            format!(
                "this {role} speaks protocol version {}, you sent {version}",
                wire::PROTOCOL_VERSION
            ),
        )),
        Ok(Some(other)) => Err(refuse(
            link,
            ErrorCode::Unexpected,
            format!("expected Hello first, got {}", other.kind()),
        )),
        Ok(None) => Err(End::Closed),
        Err(e) => Err(read_failed(link, e, End::HelloTimeout)),
    }
}

/// A reader that gives up once `deadline` passes, however the bytes
/// trickle in: before each read the socket's timeout is set to the time
/// left. Used for the Hello, so a client sending one byte now and then
/// cannot hold a connection slot past the Hello timeout.
struct DeadlineReader<'a, R> {
    inner: &'a mut R,
    stream: &'a TcpStream,
    deadline: Instant,
}

impl<'a, R: Read> DeadlineReader<'a, R> {
    /// `inner` reads from `stream` (e.g. a `BufReader` over it).
    fn new(inner: &'a mut R, stream: &'a TcpStream, limit: Duration) -> Self {
        DeadlineReader {
            inner,
            stream,
            deadline: Instant::now() + limit,
        }
    }
}

impl<R: Read> Read for DeadlineReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
        }
        self.stream.set_read_timeout(Some(left))?;
        self.inner.read(buf)
    }
}

/// The write timeout of every connection (a zero Duration is refused by
/// set_write_timeout; treat it as 1 ms).
fn write_timeout(o: &Options) -> Duration {
    o.write_timeout.max(Duration::from_millis(1))
}

/// Why a request could not be read.
enum ReadError {
    /// Reading the frame failed: the stream failed, timed out or ended
    /// inside the frame, or the length prefix is impossible.
    Stream(WireError),
    /// A whole frame arrived but its payload cannot be decoded (including
    /// a payload that ends inside a field), or its header announces more
    /// than this server reads.
    Undecodable(WireError),
    /// The frame is refused with this code (no room in the frame budget);
    /// the connection is closed.
    Refused(ErrorCode, String),
}

/// Reads one whole frame, then decodes it, so that a frame that arrived
/// complete but does not decode is never mistaken for a client that went
/// away. A header whose `len` exceeds `max_len` is refused before the
/// payload is read. `Ok(None)` on a clean end of stream between frames.
fn read_request<R: Read>(r: &mut R, max_len: u32) -> Result<Option<Message>, ReadError> {
    let Some((len, type_code)) = read_header(r, max_len)? else {
        return Ok(None);
    };
    let payload = wire::read_frame_payload(r, len as usize - 1).map_err(ReadError::Stream)?;
    decode(type_code, &payload).map(Some)
}

fn read_header<R: Read>(r: &mut R, max_len: u32) -> Result<Option<(u32, u8)>, ReadError> {
    match wire::read_frame_header(r) {
        Ok(Some((len, _))) if len > max_len => {
            Err(ReadError::Undecodable(WireError::FrameTooLarge {
                len: u64::from(len),
                max: max_len,
            }))
        }
        Ok(header) => Ok(header),
        Err(e @ (WireError::FrameTooLarge { .. } | WireError::EmptyFrame)) => {
            Err(ReadError::Undecodable(e))
        }
        Err(e) => Err(ReadError::Stream(e)),
    }
}

fn decode(type_code: u8, payload: &[u8]) -> Result<Message, ReadError> {
    Message::decode(type_code, payload).map_err(ReadError::Undecodable)
}

/// Reads the next request after the Hello from `reader` (the connection's
/// buffered stream, or a layer over it), counting its bytes as they
/// arrive ([`Link::bytes_received`]). A frame larger than the budget's
/// exempt size is charged to the frame budget (the charge is returned with
/// the message, to be dropped once it is answered) and must arrive whole
/// within [`frame_allowance`]`(idle, len)`.
fn next_request<'s, H: Handler, R: Read>(
    shared: &'s Shared<H>,
    link: &Link,
    reader: &mut R,
    idle: Duration,
) -> Result<Option<(Message, Option<Reservation<'s>>)>, ReadError> {
    let mut input = Counted {
        inner: reader,
        link,
        deadline: None,
    };
    let Some((len, type_code)) = read_header(&mut input, H::MAX_REQUEST_LEN)? else {
        return Ok(None);
    };
    let charge = match &shared.budget {
        None => None,
        Some(b) => b
            .reserve(link.remote.ip(), len)
            .map_err(|over| ReadError::Refused(ErrorCode::Busy, over.message(len)))?,
    };
    if charge.is_some() {
        input.deadline = Some((Instant::now() + frame_allowance(idle, u64::from(len)), idle));
    }
    let payload = wire::read_frame_payload(&mut input, len as usize - 1);
    if input.deadline.is_some() {
        link.stream
            .set_read_timeout(Some(idle))
            .map_err(|e| ReadError::Stream(e.into()))?;
    }
    let m = decode(type_code, &payload.map_err(ReadError::Stream)?)?;
    Ok(Some((m, charge)))
}

/// Reads through `inner`, recording each byte received on the link; with
/// a deadline `(when, per_read)`, each read waits at most the shorter of
/// `per_read` and the time left.
struct Counted<'a, R> {
    inner: &'a mut R,
    link: &'a Link,
    deadline: Option<(Instant, Duration)>,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some((when, per_read)) = self.deadline {
            let left = when.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "frame deadline passed",
                ));
            }
            self.link
                .stream
                .set_read_timeout(Some(left.min(per_read)))?;
        }
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.link.note_received(n);
        }
        Ok(n)
    }
}

/// A read failed: a timeout ends the connection as `on_timeout`, a client
/// that went away (the stream ended or failed inside a frame) ends it
/// quietly, and anything that arrived but cannot be decoded is answered
/// `Malformed`.
fn read_failed(link: &Link, e: ReadError, on_timeout: End) -> End {
    match e {
        ReadError::Stream(e) if e.is_timeout() => on_timeout,
        ReadError::Stream(e) if e.is_disconnect() => End::Gone(e),
        ReadError::Stream(e) | ReadError::Undecodable(e) => {
            refuse(link, ErrorCode::Malformed, e.to_string())
        }
        ReadError::Refused(code, message) => refuse(link, code, message),
    }
}

/// Answers an error that ends the connection, then closes it gently.
fn refuse(link: &Link, code: ErrorCode, message: String) -> End {
    if let Err(e) = link.send(&Message::error(code, message.clone())) {
        return End::Failed(e);
    }
    linger_close(&link.stream);
    End::Refused { code, message }
}

/// Sends FIN and drains briefly what the client already sent (its Hello,
/// its pipelined requests) so the kernel does not answer with a RST that
/// could destroy our last reply before the client reads it.
fn linger_close(stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + LINGER;
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained < LINGER_BYTES {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match (&mut &*stream).read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(5);

    /// Answers ListFiles with Ok and closes; records how connections end.
    #[derive(Default)]
    struct Recorder {
        ends: Mutex<Vec<String>>,
    }

    impl Handler for Recorder {
        type Conn = u32;

        fn request(
            &self,
            link: &Arc<Link>,
            _live: &Live,
            n: &mut u32,
            m: Message,
        ) -> Result<Flow, WireError> {
            *n += 1;
            link.send(&Message::Ok)?;
            Ok(if m == Message::ListFiles {
                Flow::Close
            } else {
                Flow::Continue
            })
        }

        fn ended(&self, _link: &Arc<Link>, end: &End) {
            let what = format!("{end:?}");
            let kind = what.split(['(', ' ', '{']).next().unwrap_or("").to_owned();
            crate::sync::lock(&self.ends).push(kind);
        }
    }

    fn start(hello: Duration, idle: Duration) -> (Server, Arc<Recorder>) {
        let rec = Arc::new(Recorder::default());
        let opts = Options {
            name: "test",
            role: "test server",
            hello_timeout: hello,
            idle_timeout: idle,
            write_timeout: T,
            limits: Limits {
                max_total: 8,
                max_per_ip: 8,
            },
            frame_budget: None,
        };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        (
            Server::start(listener, opts, Arc::clone(&rec)).unwrap(),
            rec,
        )
    }

    fn connect(s: &Server) -> (TcpStream, BufReader<TcpStream>) {
        let c = TcpStream::connect_timeout(&s.local_addr(), T).unwrap();
        c.set_read_timeout(Some(T)).unwrap();
        let r = BufReader::new(c.try_clone().unwrap());
        (c, r)
    }

    fn hello() -> Message {
        Message::Hello {
            version: wire::PROTOCOL_VERSION,
        }
    }

    fn ends_become(rec: &Recorder, want: &[&str]) {
        let t = Instant::now();
        loop {
            let mut got = crate::sync::lock(&rec.ends).clone();
            got.sort();
            let mut w: Vec<String> = want.iter().map(|s| s.to_string()).collect();
            w.sort();
            if got == w {
                return;
            }
            assert!(t.elapsed() < T, "ends {got:?}, want {w:?}");
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// A burst of connections larger than std's backlog of 128, none
    /// accepted yet, is held by the kernel: none has its SYN dropped (which
    /// would cost it a second).
    #[test]
    fn the_listen_backlog_holds_a_reconnect_storm() {
        let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if somaxconn < 512 {
            eprintln!("net.core.somaxconn is {somaxconn}: the kernel caps the backlog, skipped");
            return;
        }
        let l = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        let mut held = Vec::new();
        for i in 0..400 {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                Ok(c) => held.push(c),
                Err(e) => panic!("connection {i} not taken into the backlog: {e}"),
            }
        }
        drop(l);
    }

    #[test]
    fn each_connection_ends_once_with_its_reason() {
        let (mut s, rec) = start(Duration::from_millis(300), Duration::from_millis(400));
        // Hello, a request, then the handler closes.
        let (mut c, mut r) = connect(&s);
        wire::write_message(&mut c, &hello()).unwrap();
        assert_eq!(wire::read_message(&mut r).unwrap(), Some(hello()));
        wire::write_message(&mut c, &Message::Keepalive).unwrap();
        wire::write_message(&mut c, &Message::ListFiles).unwrap();
        assert_eq!(wire::read_message(&mut r).unwrap(), Some(Message::Ok));
        assert_eq!(wire::read_message(&mut r).unwrap(), Some(Message::Ok));
        assert_eq!(wire::read_message(&mut r).unwrap(), None);
        // A Hello trickled a byte at a time misses its deadline.
        let (mut c, mut r) = connect(&s);
        let mut bytes = Vec::new();
        hello().encode(&mut bytes).unwrap();
        let t = Instant::now();
        for b in &bytes[..8] {
            if c.write_all(&[*b]).is_err() {
                break;
            }
            thread::sleep(Duration::from_millis(60));
        }
        assert!(matches!(wire::read_message(&mut r), Ok(None) | Err(_)));
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        // Garbage: Malformed, then closed.
        let (mut c, mut r) = connect(&s);
        c.write_all(&[0, 0, 0, 1, 0x7f]).unwrap();
        match wire::read_message(&mut r).unwrap() {
            Some(Message::Error { code, .. }) => assert_eq!(code, ErrorCode::Malformed),
            other => panic!("{other:?}"),
        }
        // Silence after the Hello: the idle timeout.
        let (mut c, mut r) = connect(&s);
        wire::write_message(&mut c, &hello()).unwrap();
        assert_eq!(wire::read_message(&mut r).unwrap(), Some(hello()));
        assert_eq!(wire::read_message(&mut r).unwrap(), None);
        ends_become(&rec, &["Done", "HelloTimeout", "Refused", "Idle"]);
        let t = Instant::now();
        while !s.live().is_empty() {
            assert!(t.elapsed() < T, "connections left in the live set");
            thread::sleep(Duration::from_millis(10));
        }

        // Shutdown with a connection open ends it and joins promptly.
        let (mut c, mut r) = connect(&s);
        wire::write_message(&mut c, &hello()).unwrap();
        assert_eq!(wire::read_message(&mut r).unwrap(), Some(hello()));
        let t = Instant::now();
        s.shutdown();
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert_eq!(crate::sync::lock(&rec.ends).len(), 5);
        assert!(s.live().is_empty());
        assert!(TcpStream::connect_timeout(&s.local_addr(), T).is_err());
        s.shutdown(); // idempotent
    }
}

#[cfg(test)]
mod keyed_tests {
    use super::*;
    use crate::net::client::Conn;

    /// Answers ChunkData with the same ChunkData, anything else with Ok.
    struct Echo;

    impl Handler for Echo {
        type Conn = ();

        fn request(
            &self,
            link: &Arc<Link>,
            _live: &Live,
            _conn: &mut (),
            m: Message,
        ) -> Result<Flow, WireError> {
            match m {
                Message::ChunkData { index, data } => {
                    link.send(&Message::ChunkData { index, data })?
                }
                _ => link.send(&Message::Ok)?,
            }
            Ok(Flow::Continue)
        }
    }

    const T: Duration = Duration::from_secs(5);

    fn start(key: Option<NetworkKey>) -> Server {
        let opts = Options {
            name: "test",
            role: "tracker",
            hello_timeout: T,
            idle_timeout: T,
            write_timeout: T,
            limits: Limits {
                max_total: 16,
                max_per_ip: 16,
            },
            frame_budget: None,
        };
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        Server::start_keyed(l, opts, Arc::new(Echo), key).unwrap()
    }

    fn refusal(r: Result<Conn, super::super::NetError>) -> String {
        match r {
            Ok(_) => panic!("connection admitted"),
            Err(e) => {
                assert!(e.is_key_mismatch(), "{e}");
                e.to_string()
            }
        }
    }

    #[test]
    fn keyed_and_clear_sides_admit_or_refuse_each_other() {
        let (k1, k2) = (
            NetworkKey::from_bytes([1; 32]),
            NetworkKey::from_bytes([2; 32]),
        );
        let keyed = start(Some(k1.clone()));
        let clear = start(None);
        let (ka, ca) = (keyed.local_addr(), clear.local_addr());

        let mut c = Conn::connect_keyed(ka, T, Some(&k1)).unwrap();
        assert!(c.is_keyed());
        assert!(matches!(c.request(&Message::ListFiles), Ok(Message::Ok)));
        let mut c = Conn::connect_keyed(ca, T, None).unwrap();
        assert!(!c.is_keyed());
        assert!(matches!(c.request(&Message::ListFiles), Ok(Message::Ok)));

        let e = refusal(Conn::connect_keyed(ka, T, None));
        assert!(
            e.contains(&format!(
                "{ka}: this tracker requires a network key: pass --key-file"
            )),
            "{e}"
        );
        let e = refusal(Conn::connect_keyed(ka, T, Some(&k2)));
        assert!(
            e.contains(&format!("network key rejected by {ka}: this tracker is in a private network with another key")),
            "{e}"
        );
        let e = refusal(Conn::connect_keyed(ca, T, Some(&k1)));
        assert!(
            e.contains(&format!(
                "network key rejected by {ca}: this tracker uses no network key"
            )),
            "{e}"
        );
    }

    #[test]
    fn frames_larger_than_a_record_cross_a_keyed_connection_both_ways() {
        let k = NetworkKey::from_bytes([3; 32]);
        let s = start(Some(k.clone()));
        let mut c = Conn::connect_keyed(s.local_addr(), T, Some(&k)).unwrap();
        for len in [0usize, 1, 65_519, 65_520, (1 << 20) + 3] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let m = Message::ChunkData {
                index: len as u32,
                data,
            };
            // Two pipelined, to have records carry the end of one frame
            // and the start of the next.
            let mut both = Vec::new();
            m.encode(&mut both).unwrap();
            m.encode(&mut both).unwrap();
            c.send_raw(&both).unwrap();
            assert_eq!(c.recv().unwrap(), m);
            assert_eq!(c.recv().unwrap(), m);
        }
    }
}
