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
//! - per connection: TCP_NODELAY, the write timeout, the Hello exchange under
//!   its deadline (the whole Hello must arrive within the Hello timeout), the
//!   request loop under the idle timeout, `Error{Malformed}` for every frame
//!   that cannot be decoded (a whole frame is read first, so a payload that
//!   ends inside a field is told apart from a stream that ends inside a
//!   frame, which is closed quietly), and an orderly close (FIN, then a
//!   short drain so the last reply is not destroyed by a reset);
//! - shutdown: set a flag, wake the blocking `accept` by connecting to
//!   ourselves, shut down every live socket, join every thread.
//!
//! A server supplies only a [`Handler`]: what to do with one request, and
//! what to do when a connection ends. Calls `wire`, `sync`, `limits` and
//! [`super::admission`] only.

use std::collections::HashMap;
use std::io::{self, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use super::admission::{Admission, Limits, Refuser};
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
    /// never interleave inside a frame.
    write: Mutex<()>,
    /// Frames received so far (Hello included).
    received: AtomicU64,
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

    /// Whether the handler is answering one of this connection's requests
    /// right now (so the connection is alive, though it reads nothing
    /// meanwhile).
    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::SeqCst)
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
    /// pieces, when only this connection's thread writes).
    pub fn write_all(&self, bytes: &[u8]) -> io::Result<()> {
        let _w = crate::sync::lock(&self.write);
        (&self.stream).write_all(bytes)
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
}

/// A running server. Dropping it shuts it down.
pub struct Server {
    addr: SocketAddr,
    name: &'static str,
    live: Arc<Live>,
    stopping: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    /// Serves `listener` (already bound) with `handler`, starting the accept
    /// and refuser threads.
    pub fn start<H: Handler>(
        listener: TcpListener,
        opts: Options,
        handler: Arc<H>,
    ) -> io::Result<Server> {
        let addr = listener.local_addr()?;
        let name = opts.name;
        let refuser = Refuser::start(name)?;
        let shared = Arc::new(Shared {
            admission: Admission::new(opts.limits),
            opts,
            handler,
            live: Arc::new(Live::default()),
            stopping: Arc::new(AtomicBool::new(false)),
        });
        let (live, stopping) = (Arc::clone(&shared.live), Arc::clone(&shared.stopping));
        let accept = thread::Builder::new()
            .name(format!("{name}-accept"))
            .spawn(move || accept_loop(listener, shared, refuser))?;
        Ok(Server {
            addr,
            name,
            live,
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
            write: Mutex::new(()),
            received: AtomicU64::new(0),
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
        stream.set_write_timeout(Some(o.write_timeout.max(Duration::from_millis(1))))
    };
    if let Err(e) = setup() {
        return End::Failed(e.into());
    }
    let mut reader = BufReader::with_capacity(READ_BUF, stream);
    if let Some(end) = greet(shared, link, &mut reader, hello) {
        return end;
    }
    if let Err(e) = link.stream.set_read_timeout(Some(idle)) {
        return End::Failed(e.into());
    }
    let mut state = H::Conn::default();
    loop {
        if shared.stopping.load(Ordering::Relaxed) {
            return End::Stopped;
        }
        let m = match read_request(&mut reader) {
            Ok(Some(m)) => m,
            Ok(None) => return End::Closed,
            Err(e) => return read_failed(link, e, End::Idle),
        };
        link.received.fetch_add(1, Ordering::SeqCst);
        link.busy.store(true, Ordering::SeqCst);
        let flow = shared.handler.request(link, &shared.live, &mut state, m);
        link.busy.store(false, Ordering::SeqCst);
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

/// Reads the Hello under its deadline and answers it. `None` when the
/// connection may go on to requests.
fn greet<H: Handler>(
    shared: &Shared<H>,
    link: &Link,
    reader: &mut BufReader<&TcpStream>,
    limit: Duration,
) -> Option<End> {
    // The whole Hello must arrive within the Hello timeout, not merely
    // some byte of it every so often.
    let first = read_request(&mut DeadlineReader::new(reader, &link.stream, limit));
    if let Ok(Some(_)) = first {
        link.received.fetch_add(1, Ordering::SeqCst);
    }
    let role = shared.opts.role;
    match first {
        Ok(Some(Message::Hello { version })) if version == wire::PROTOCOL_VERSION => {
            match link.send(&Message::Hello { version }) {
                Ok(()) => None,
                Err(e) => Some(End::Failed(e)),
            }
        }
        Ok(Some(Message::Hello { version })) => Some(refuse(
            link,
            ErrorCode::BadVersion,
            format!(
                "this {role} speaks protocol version {}, you sent {version}",
                wire::PROTOCOL_VERSION
            ),
        )),
        Ok(Some(other)) => Some(refuse(
            link,
            ErrorCode::Unexpected,
            format!("expected Hello first, got {}", other.kind()),
        )),
        Ok(None) => Some(End::Closed),
        Err(e) => Some(read_failed(link, e, End::HelloTimeout)),
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

/// Why a request could not be read.
enum ReadError {
    /// Reading the frame failed: the stream failed, timed out or ended
    /// inside the frame, or the length prefix is impossible.
    Stream(WireError),
    /// A whole frame arrived but its payload cannot be decoded (including
    /// a payload that ends inside a field).
    Undecodable(WireError),
}

/// Reads one whole frame, then decodes it, so that a frame that arrived
/// complete but does not decode is never mistaken for a client that went
/// away. `Ok(None)` on a clean end of stream between frames.
fn read_request<R: Read>(r: &mut R) -> Result<Option<Message>, ReadError> {
    match wire::read_frame(r) {
        Ok(Some(f)) => Message::decode(f.type_code, &f.payload)
            .map(Some)
            .map_err(ReadError::Undecodable),
        Ok(None) => Ok(None),
        Err(e) => Err(ReadError::Stream(e)),
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
