//! The dashboard's HTTP server (`tracker --http ADDR`): a small, read-only
//! HTTP/1.1 server on its own threads, next to the tracker, answering GET
//! and HEAD only, one request per connection.
//!
//! Owns: its listening socket and threads, and every limit on what a
//! client may cost it. Threads (each named, each joined on shutdown):
//!
//! - `tracker-http-accept`: accepts and hands each connection to the
//!   workers through a bounded queue ([`HTTP_QUEUE`]); when the queue is
//!   full the connection is answered 503 at once and closed, so a flood of
//!   connections costs one accept each and never a thread.
//! - `tracker-http-N` ([`HTTP_WORKERS`] of them): read one request head of
//!   at most [`HTTP_MAX_HEAD`] bytes within [`HTTP_REQUEST_TIMEOUT`] of its
//!   connection being accepted, however slowly its bytes come (a client
//!   sending a byte a second is cut off there), write the whole answer
//!   within [`HTTP_WRITE_TIMEOUT`] (a client that reads slowly is cut off
//!   there), close.
//!
//! The request head is parsed by `httparse`; what each path answers is
//! [`super::dashboard`]'s. A dashboard bound to a loopback address answers
//! only requests whose `Host` is an IP address or `localhost` (or that have
//! none): a web page the user visits could otherwise point a name of its
//! own at 127.0.0.1 (DNS rebinding) and read the dashboard as its own site,
//! which would undo binding to loopback. A dashboard bound to another
//! address was offered to the network on purpose and takes any `Host`. Nothing here touches the registry. Shutdown: set
//! the stop flag, wake the accept by connecting to it, shut down the
//! sockets being served, join the accept thread (it drops the queue's
//! sender), then the workers (they see the queue closed).
//!
//! Calls [`super::dashboard`], `net::server::listen` (the same listening
//! socket setup as the tracker's), `limits` and `sync`.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError, bounded};
use log::{debug, warn};

use super::dashboard::{Dashboard, Reply};
use super::server::View;
pub use crate::limits::{
    HTTP_MAX_HEAD, HTTP_MAX_HEADERS, HTTP_QUEUE, HTTP_REQUEST_TIMEOUT, HTTP_WORKERS,
    HTTP_WRITE_TIMEOUT,
};

/// How long a closing connection's unread input is drained, so the client
/// reads our answer rather than a reset.
const LINGER: Duration = Duration::from_millis(100);
/// How often an idle worker looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(200);

/// A running dashboard server. Dropping it shuts it down.
pub struct Http {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// The sockets being served, one slot per worker, so shutdown can end
    /// a read that is waiting.
    serving: Arc<Vec<Mutex<Option<TcpStream>>>>,
    accept: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
}

/// An accepted connection and when it was accepted (its deadline starts
/// there, not when a worker takes it).
type Queued = (TcpStream, Instant);

impl Http {
    /// Binds `listen` and starts the accept thread and the workers.
    pub(super) fn start(listen: SocketAddr, view: View) -> io::Result<Http> {
        let listener = crate::net::server::listen(listen)?;
        let addr = listener.local_addr()?;
        let app = Arc::new(Dashboard::new(view));
        let stop = Arc::new(AtomicBool::new(false));
        let serving: Arc<Vec<Mutex<Option<TcpStream>>>> =
            Arc::new((0..HTTP_WORKERS).map(|_| Mutex::new(None)).collect());
        let (tx, rx) = bounded::<Queued>(HTTP_QUEUE);
        let mut http = Http {
            addr,
            stop: Arc::clone(&stop),
            serving: Arc::clone(&serving),
            accept: None,
            workers: Vec::new(),
        };
        for i in 0..HTTP_WORKERS {
            let (rx, app, serving) = (rx.clone(), Arc::clone(&app), Arc::clone(&serving));
            let stop = Arc::clone(&stop);
            let spawned = thread::Builder::new()
                .name(format!("tracker-http-{}", i + 1))
                .spawn(move || worker(&rx, &app, &serving[i], &stop, addr));
            match spawned {
                Ok(h) => http.workers.push(h),
                Err(e) => {
                    drop(tx); // so the workers started end when `http` is dropped
                    return Err(e);
                }
            }
        }
        drop(rx);
        let accept = thread::Builder::new()
            .name("tracker-http-accept".into())
            .spawn(move || accept_loop(&listener, &tx, &stop, &app))?;
        http.accept = Some(accept);
        Ok(http)
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, ends the requests being served, joins every
    /// thread. Idempotent; also called from Drop.
    pub fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(accept) = self.accept.take() {
            match TcpStream::connect_timeout(&wake_addr(self.addr), Duration::from_secs(1)) {
                Ok(_) => {
                    if accept.join().is_err() {
                        warn!("dashboard: the accept thread panicked");
                    }
                }
                // Joining would wait in accept() forever: leave it to end
                // with the process (it holds no registry lock, ever).
                Err(e) => warn!("dashboard: cannot wake the accept thread: {e}"),
            }
        }
        for slot in self.serving.iter() {
            if let Some(s) = crate::sync::lock(slot).as_ref() {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        for w in self.workers.drain(..) {
            if w.join().is_err() {
                warn!("dashboard: a worker thread panicked");
            }
        }
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Where to connect to reach a listener bound to `addr`.
fn wake_addr(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

/// The accept thread: queue each connection for a worker, or answer 503
/// when the queue is full.
fn accept_loop(listener: &TcpListener, tx: &Sender<Queued>, stop: &AtomicBool, app: &Dashboard) {
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                debug!("dashboard: accept failed: {e}");
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        match tx.try_send((stream, Instant::now())) {
            Ok(()) => {}
            Err(TrySendError::Full((s, _))) => {
                app.counters().http_dropped("busy");
                refuse_busy(s);
            }
            Err(TrySendError::Disconnected(_)) => return,
        }
    }
}

/// Answers 503 without waiting: the response is small enough for any
/// socket buffer, and a client that does not read it loses it.
fn refuse_busy(s: TcpStream) {
    let _ = s.set_nonblocking(true);
    let reply = Reply::text(503, "too many requests at once; try again\n");
    let _ = (&s).write_all(&reply.head());
    let _ = (&s).write_all(&reply.body);
    let _ = s.shutdown(Shutdown::Write);
}

/// A worker: serve queued connections until the queue is closed, or the
/// stop flag is set (should the accept thread not have been woken).
fn worker(
    rx: &Receiver<Queued>,
    app: &Dashboard,
    slot: &Mutex<Option<TcpStream>>,
    stop: &AtomicBool,
    bound: SocketAddr,
) {
    loop {
        let (stream, accepted) = match rx.recv_timeout(STOP_POLL) {
            Ok(q) => q,
            Err(RecvTimeoutError::Timeout) if !stop.load(Ordering::SeqCst) => continue,
            Err(_) => return,
        };
        // The slot is filled before the stop flag is read: shutdown sets the
        // flag before it looks at the slots, so either it sees this socket
        // and shuts it down, or this worker sees the flag and serves nothing.
        *crate::sync::lock(slot) = stream.try_clone().ok();
        if !stop.load(Ordering::SeqCst) {
            serve(&stream, accepted, app, bound);
        }
        *crate::sync::lock(slot) = None;
        if stop.load(Ordering::SeqCst) {
            return;
        }
    }
}

/// What reading a request head gave.
enum Head {
    /// Method, request target and `Host` (None: the request has none).
    Request(String, String, Option<Vec<u8>>),
    /// Answer this and close (a malformed or oversized head).
    Reject(u16, &'static str),
    /// The client went away, failed or was too slow: close without a word.
    Drop(&'static str),
}

/// One connection: read the head, answer, close.
fn serve(stream: &TcpStream, accepted: Instant, app: &Dashboard, bound: SocketAddr) {
    let deadline = accepted + HTTP_REQUEST_TIMEOUT;
    let (reply, head_only) = match read_head(stream, deadline) {
        Head::Request(method, _, Some(host)) if !host_allowed(&host, bound) => {
            app.counters().http("bad_host");
            let why = "this dashboard answers only to an IP address or localhost \
                       in Host (it is bound to loopback)\n";
            (Reply::text(403, why), method == "HEAD")
        }
        Head::Request(method, target, _) => (app.answer(&method, &target), method == "HEAD"),
        Head::Reject(status, route) => {
            app.counters().http(route);
            let why = if status == 431 {
                "request head too large\n"
            } else {
                "bad request\n"
            };
            (Reply::text(status, why), false)
        }
        Head::Drop(why) => {
            app.counters().http_dropped(why);
            return;
        }
    };
    let deadline = Instant::now() + HTTP_WRITE_TIMEOUT;
    let mut written = write_before(stream, &reply.head(), deadline);
    if written.is_ok() && !head_only {
        written = write_before(stream, &reply.body, deadline);
    }
    if let Err(e) = written {
        debug!("dashboard: cannot write a response: {e}");
        app.counters().http_dropped("error");
        return;
    }
    linger(stream);
}

/// Writes all of `bytes` before `deadline`, however slowly the client
/// reads: a client that trickles its reads is cut off there, not after a
/// time-out per write.
fn write_before(stream: &TcpStream, bytes: &[u8], deadline: Instant) -> io::Result<()> {
    let mut rest = bytes;
    while !rest.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_write_timeout(Some(left))?;
        match (&mut &*stream).write(&rest[..rest.len().min(64 << 10)]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads one request head, at most [`HTTP_MAX_HEAD`] bytes, before
/// `deadline`.
fn read_head(stream: &TcpStream, deadline: Instant) -> Head {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut piece = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Head::Drop("timeout");
        }
        if stream.set_read_timeout(Some(left)).is_err() {
            return Head::Drop("error");
        }
        let room = (HTTP_MAX_HEAD - buf.len()).min(piece.len());
        let n = match (&mut &*stream).read(&mut piece[..room]) {
            Ok(0) => return Head::Drop("error"),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Head::Drop("timeout");
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Head::Drop("error"),
        };
        buf.extend_from_slice(&piece[..n]);
        let mut headers = [httparse::EMPTY_HEADER; HTTP_MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                let method = req.method.unwrap_or_default().to_owned();
                let target = req.path.unwrap_or_default().to_owned();
                let mut hosts = req
                    .headers
                    .iter()
                    .filter(|h| h.name.eq_ignore_ascii_case("host"));
                let host = hosts.next().map(|h| h.value.to_vec());
                if hosts.next().is_some() {
                    // RFC 9112 §3.2: more than one Host is a bad request.
                    return Head::Reject(400, "bad_request");
                }
                return Head::Request(method, target, host);
            }
            Ok(httparse::Status::Partial) if buf.len() >= HTTP_MAX_HEAD => {
                return Head::Reject(431, "too_large");
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => return Head::Reject(431, "too_large"),
            Err(_) => return Head::Reject(400, "bad_request"),
        }
    }
}

/// Whether a request with this `Host` is answered by a dashboard bound to
/// `bound`: on loopback, only an IP address or `localhost` (any port), so
/// that no other site's name can be pointed at it (DNS rebinding); bound
/// elsewhere, any.
fn host_allowed(host: &[u8], bound: SocketAddr) -> bool {
    if !bound.ip().is_loopback() {
        return true;
    }
    let Ok(host) = std::str::from_utf8(host) else {
        return false;
    };
    let host = host.trim();
    let name = match host.strip_prefix('[') {
        // "[v6]" or "[v6]:port"
        Some(rest) => match rest.split_once(']') {
            Some((ip, port)) if port.is_empty() || is_port(port) => {
                return ip.parse::<Ipv6Addr>().is_ok();
            }
            _ => return false,
        },
        None => match host.rsplit_once(':') {
            Some((name, port)) if is_port(port) => name,
            Some(_) => return false,
            None => host,
        },
    };
    name.parse::<Ipv4Addr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || name.eq_ignore_ascii_case("localhost.")
}

/// ":PORT" of a Host: one to five digits.
fn is_port(s: &str) -> bool {
    let digits = s.strip_prefix(':').unwrap_or(s);
    (1..=5).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Closes politely: no more writes, then whatever the client still sends
/// is read and dropped for a moment, so our answer is not cut by a reset.
fn linger(stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let end = Instant::now() + LINGER;
    let mut sink = [0u8; 1024];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match (&mut &*stream).read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracker::{Tracker, TrackerConfig};
    use std::net::TcpListener;

    fn tracker() -> Tracker {
        Tracker::start(TrackerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            http: Some("127.0.0.1:0".parse().unwrap()),
            ..TrackerConfig::default()
        })
        .unwrap()
    }

    /// A request being read does not hold up the tracker's shutdown: its
    /// socket is shut down, not waited for until its deadline.
    #[test]
    fn shutdown_ends_requests_being_read() {
        let mut t = tracker();
        let mut c = TcpStream::connect(t.http_addr().unwrap()).unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: x").unwrap();
        thread::sleep(Duration::from_millis(200));
        let started = Instant::now();
        t.shutdown();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        let mut b = [0u8; 64];
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        assert!(matches!(c.read(&mut b), Ok(0) | Err(_)));
    }

    /// A client that does not read cannot hold a worker past the write
    /// deadline, however the answer is cut into writes.
    #[test]
    fn a_client_that_does_not_read_is_cut_off_at_the_deadline() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        let big = vec![0u8; 64 << 20];
        let started = Instant::now();
        let r = write_before(&server, &big, Instant::now() + Duration::from_millis(300));
        assert!(r.is_err());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    /// DNS rebinding: a site that points a name of its own at 127.0.0.1
    /// sends that name as Host; a loopback dashboard refuses it, and
    /// answers IP addresses, localhost and requests without a Host.
    #[test]
    fn a_loopback_dashboard_refuses_host_names_it_does_not_know() {
        let t = tracker();
        let a = t.http_addr().unwrap();
        let status = |host: Option<&str>| {
            let mut c = TcpStream::connect(a).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let host = host.map_or(String::new(), |h| format!("Host: {h}\r\n"));
            write!(c, "GET /api/files HTTP/1.1\r\n{host}\r\n").unwrap();
            let mut s = String::new();
            let _ = c.read_to_string(&mut s);
            s.get(9..12).unwrap_or_default().to_owned()
        };
        let port = a.port();
        for evil in [
            format!("attacker.example:{port}"),
            "attacker.example".to_owned(),
            format!("127.0.0.1.attacker.example:{port}"),
            format!("localhost.attacker.example:{port}"),
            format!("127.0.0.1:{port}x"),
        ] {
            assert_eq!(status(Some(&evil)), "403", "{evil}");
        }
        for fine in [
            format!("127.0.0.1:{port}"),
            "127.0.0.1".to_owned(),
            format!("localhost:{port}"),
            format!("LocalHost:{port}"),
            format!("[::1]:{port}"),
        ] {
            assert_eq!(status(Some(&fine)), "200", "{fine}");
        }
        assert_eq!(status(None), "200");
        let mut c = TcpStream::connect(a).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nHost: evil\r\n\r\n")
            .unwrap();
        let mut s = String::new();
        let _ = c.read_to_string(&mut s);
        assert!(s.starts_with("HTTP/1.1 400 "), "{s}");
    }

    #[test]
    fn a_dashboard_offered_to_the_network_takes_any_host() {
        let lan: SocketAddr = "192.0.2.1:7080".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:7080".parse().unwrap();
        for bound in [lan, any] {
            assert!(host_allowed(b"tracker.lan:7080", bound));
        }
        let lo: SocketAddr = "127.0.0.1:7080".parse().unwrap();
        assert!(!host_allowed(b"tracker.lan:7080", lo));
        assert!(!host_allowed(b"\xff", lo));
        assert!(!host_allowed(b"[::1", lo));
        assert!(host_allowed(b"[::1]", lo));
    }

    #[test]
    fn one_request_per_connection_and_only_get_and_head() {
        let t = tracker();
        let a = t.http_addr().unwrap();
        let ask = |raw: &[u8]| {
            let mut c = TcpStream::connect(a).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            c.write_all(raw).unwrap();
            let mut s = String::new();
            let _ = c.read_to_string(&mut s);
            s
        };
        let r = ask(b"GET /api/files HTTP/1.1\r\nHost: localhost\r\n\r\nGET / HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert_eq!(r.matches("HTTP/1.1 ").count(), 1, "{r}");
        assert!(r.ends_with("{\"files\":[],\"truncated\":false}\n"), "{r}");
        let r = ask(b"DELETE /api/files HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 405 "), "{r}");
        let r = ask(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 400 "), "{r}");
    }
}
