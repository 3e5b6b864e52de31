//! The chunk server: answers pipelined ChunkRequest frames with ChunkData,
//! in order, on top of the shared server skeleton ([`crate::net::server`]).
//!
//! Owns: the server side of the peer-to-peer protocol after the Hello (any
//! number of ChunkRequest), its connection settings ([`ServerConfig`]), the
//! count of uploaded bytes, and super-seeding while uploads are capped
//! (`FirstSends`). Accepting, caps, the Hello, timeouts, closing and
//! shutdown are the skeleton's. Calls `net` (the skeleton), `wire`
//! (framing), `chunks`, `limits`, `peer::share` (the only way a requested name becomes a file: a
//! lookup in the [`ShareIndex`], never a path join) and `peer::ratelimit`
//! (pacing).
//!
//! Threads: "chunk-accept" accepts; each connection runs on
//! "chunk-conn-N" (see the skeleton). The chunk buffer is on the heap and
//! reused for the connection's whole life.
//!
//! Memory is bounded by (connections x largest chunk served): each
//! connection reads a chunk straight into `[ChunkData header | chunk]` and
//! writes that buffer with one `write_all` (or, when uploads are capped,
//! in pieces paced within the reply's booked slot: one chunk at a time at
//! the whole rate, the turns going round the addresses asking (in the
//! order asked within one); a request that cannot be booked
//! within `limits::UPLOAD_BACKLOG_MAX` after waiting
//! `limits::UPLOAD_QUEUE_WAIT` is answered `Busy`).
//!
//! A chunk is read with `SharedFile::read_for_upload`, which for a file
//! from the scan also checks it still matches the announced hash; one that
//! does not is answered `NotHeld` and the file is withdrawn from the share
//! index (`ShareIndex::withdraw_changed`; every tracker session then
//! withdraws it at its tracker), so bad bytes are never sent.
//!
//! Requests are read only up to `limits::PEER_MAX_REQUEST_LEN` (1,031
//! bytes, a `ChunkRequest` with a maximal name): a longer frame is refused
//! on its header by the skeleton, so a request never costs more memory.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::ratelimit::{Booking, RateLimiter};
use super::share::{ShareIndex, SharedFile, UploadError};
use super::{PeerError, Result};
use crate::chunks::ChunkIndex;
use crate::limits::{UPLOAD_BACKLOG_MAX, UPLOAD_QUEUE_WAIT};
use crate::net::admission::{self, Limits};
use crate::net::server::{Flow, Handler, Link, Live, Options, Server};
use crate::wire::{self, CHUNK_DATA_HEADER_LEN, ErrorCode, Message, WireError};

/// A write that makes no progress for this long means the reader is gone.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

pub use crate::limits::{
    HELLO_TIMEOUT, PEER_IDLE_TIMEOUT as IDLE_TIMEOUT, PEER_MAX_CONNECTIONS as MAX_CONNECTIONS,
    PEER_MAX_PER_IP as MAX_PER_IP,
};

/// Limits of the chunk server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// A connection with no request for this long is closed (quietly).
    pub idle_timeout: Duration,
    /// A connection that sends no bytes for this long before its Hello is
    /// complete is closed.
    pub hello_timeout: Duration,
    /// Connections beyond this get Error{Busy} and are closed.
    pub max_connections: usize,
    /// Connections from one IPv4 address (IPv6 /64) beyond this get
    /// Error{Busy} and are closed.
    pub max_per_ip: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            idle_timeout: IDLE_TIMEOUT,
            hello_timeout: HELLO_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
            max_per_ip: MAX_PER_IP,
        }
    }
}

/// State shared by the connection threads and the handle.
struct Shared {
    share: Arc<ShareIndex>,
    limiter: Arc<RateLimiter>,
    /// Set at shutdown: paced sends stop waiting for the limiter.
    stop: AtomicBool,
    uploaded: AtomicU64,
    /// Super-seeding state of the send path (see [`FirstSends`]).
    first_sends: FirstSends,
}

/// A running chunk server. Dropping it shuts it down.
pub struct ChunkServer {
    server: Server,
    shared: Arc<Shared>,
}

impl ChunkServer {
    /// Binds `listen` (port 0 picks a free port) and starts serving the
    /// files of `share`, paced by `limiter`.
    pub fn start(
        listen: SocketAddr,
        share: Arc<ShareIndex>,
        limiter: Arc<RateLimiter>,
        cfg: ServerConfig,
    ) -> Result<ChunkServer> {
        let who = || format!("chunk server on {listen}");
        let listener =
            crate::net::server::listen(listen).map_err(|e| PeerError::net(who(), e.into()))?;
        let opts = Options {
            name: "chunk",
            role: "peer",
            hello_timeout: cfg.hello_timeout,
            idle_timeout: cfg.idle_timeout,
            write_timeout: WRITE_TIMEOUT,
            limits: Limits {
                max_total: cfg.max_connections,
                max_per_ip: cfg.max_per_ip,
            },
            // Requests are at most PEER_MAX_REQUEST_LEN: no budget needed.
            frame_budget: None,
        };
        let shared = Arc::new(Shared {
            share,
            limiter,
            stop: AtomicBool::new(false),
            uploaded: AtomicU64::new(0),
            first_sends: FirstSends::default(),
        });
        let server = Server::start(listener, opts, Arc::clone(&shared))
            .map_err(|e| PeerError::Invalid(format!("cannot start the chunk server: {e}")))?;
        log::info!("chunk server listening on {}", server.local_addr());
        Ok(ChunkServer { server, shared })
    }

    /// The address actually bound (with the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Total chunk bytes sent (headers not counted).
    pub fn uploaded_bytes(&self) -> u64 {
        self.shared.uploaded.load(Ordering::Relaxed)
    }

    /// Connections currently open.
    pub fn active_connections(&self) -> usize {
        self.server.live().len()
    }

    /// Stops accepting, shuts down every open connection's socket and joins
    /// all threads. Idempotent; also called from Drop.
    pub fn shutdown(&mut self) {
        if !self.shared.stop.swap(true, Ordering::SeqCst) {
            // Replies waiting for a slot see `stop` now, not at their limit.
            self.shared.limiter.wake_all();
            self.server.shutdown();
            log::debug!("chunk server on {} stopped", self.local_addr());
        }
    }
}

impl Drop for ChunkServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Handler for Shared {
    /// The connection's chunk buffer, reused for its whole life.
    type Conn = Vec<u8>;

    /// A `ChunkRequest` with the longest name: nothing longer is read.
    const MAX_REQUEST_LEN: u32 = crate::limits::PEER_MAX_REQUEST_LEN;

    fn request(
        &self,
        link: &Arc<Link>,
        _live: &Live,
        buf: &mut Vec<u8>,
        m: Message,
    ) -> Result<Flow, WireError> {
        match m {
            Message::ChunkRequest { name, index } => serve_chunk(link, self, &name, index, buf)?,
            other => send_error(
                link,
                ErrorCode::Unexpected,
                format!("{} is not a chunk request", other.kind()),
            )?,
        }
        Ok(Flow::Continue)
    }
}

fn send_error(link: &Link, code: ErrorCode, message: String) -> Result<(), WireError> {
    log::debug!("{}: answered {code}: {message}", link.remote());
    link.send(&Message::error(code, message))
}

/// Why a request is refused: the code and message of the Error frame sent
/// in place of the chunk.
type Refusal = (ErrorCode, String);

/// Answers one ChunkRequest: ChunkData, or an Error in its place.
fn serve_chunk(
    w: &Link,
    shared: &Shared,
    name: &str,
    index: u32,
    buf: &mut Vec<u8>,
) -> Result<(), WireError> {
    let (f, i) = match held_chunk(shared, name, index) {
        Ok(x) => x,
        Err((code, message)) => return send_error(w, code, message),
    };
    let peer = match claim_first_send(w, shared, &f, name, index) {
        Ok(p) => p,
        Err((code, message)) => return send_error(w, code, message),
    };
    // Nothing sent: others must not be turned away for it.
    let unclaim = || {
        if let Some(p) = peer {
            shared.first_sends.unclaim(name, index, p);
        }
    };
    let len = f.geometry().chunk_len(i) as usize;
    let header = match wire::chunk_data_header(index, len) {
        Ok(h) => h,
        Err(e) => {
            unclaim();
            return send_error(w, ErrorCode::Internal, e.to_string());
        }
    };
    let total = CHUNK_DATA_HEADER_LEN + len;
    let booking = shared.limiter.book(
        total,
        UPLOAD_BACKLOG_MAX,
        UPLOAD_QUEUE_WAIT,
        &shared.stop,
        admission::key(w.remote().ip()),
    );
    let Some(booking) = booking else {
        unclaim();
        return send_error(
            w,
            ErrorCode::Busy,
            format!(
                "uploads are booked too far ahead; ask again in {} ms or elsewhere",
                crate::limits::BUSY_PAUSE.as_millis()
            ),
        );
    };
    // The buffer only grows (zero-filling the new tail once): chunks of
    // many lengths, as a folder of small files has, would otherwise have
    // it zeroed again for every longer one.
    if buf.len() < total {
        buf.resize(total, 0);
    }
    buf[..CHUNK_DATA_HEADER_LEN].copy_from_slice(&header);
    if let Err(e) = f.read_for_upload(i, &mut buf[CHUNK_DATA_HEADER_LEN..total]) {
        unclaim();
        let (code, message) = upload_refusal(shared, &f, name, index, e);
        return send_error(w, code, message);
    }
    drop(f);
    let waited = booking.starts_in();
    if let Err(e) = send_paced(w, &buf[..total], shared, &booking) {
        unclaim();
        return Err(e);
    }
    log::debug!(
        "{}: sent chunk {index} of {name:?} ({len} bytes, booked {} ms ahead)",
        w.remote(),
        waited.as_millis()
    );
    shared.uploaded.fetch_add(len as u64, Ordering::Relaxed);
    if let Some(p) = peer {
        shared.first_sends.sent(name, index, p);
    }
    Ok(())
}

/// The shared file and chunk a request names, if that chunk exists and is
/// held here. Checked before anything is claimed or read, so a request for
/// a file, index or chunk this peer cannot serve costs no disk I/O.
fn held_chunk(
    shared: &Shared,
    name: &str,
    index: u32,
) -> Result<(Arc<SharedFile>, ChunkIndex), Refusal> {
    let Some(f) = shared.share.get(name) else {
        return Err((
            ErrorCode::UnknownFile,
            format!("{name:?} is not shared here"),
        ));
    };
    let g = *f.geometry();
    let Some(i) = g.index(index) else {
        return Err((
            ErrorCode::BadIndex,
            format!(
                "{name:?} has {} chunks; there is no chunk {index}",
                g.count()
            ),
        ));
    };
    if !f.has(i) {
        return Err((
            ErrorCode::NotHeld,
            format!("chunk {index} of {name:?} is not here yet"),
        ));
    }
    Ok((f, i))
}

/// Super-seeding: a capped seed sends each chunk of a complete file to one
/// peer first, so that its scarce upload spreads distinct chunks the
/// others can then trade among themselves. Returns the peer the send is
/// claimed for (None when super-seeding does not apply: no upload cap, or
/// the file is incomplete here), or a refusal if the chunk was just sent to
/// another peer.
fn claim_first_send(
    w: &Link,
    shared: &Shared,
    f: &SharedFile,
    name: &str,
    index: u32,
) -> Result<Option<SocketAddr>, Refusal> {
    let peer = if shared.limiter.rate().is_some() && f.is_complete() {
        Some(w.remote())
    } else {
        None
    };
    if let Some(p) = peer
        && !shared.first_sends.claim(name, index, p)
    {
        return Err((
            ErrorCode::NotHeld,
            format!("chunk {index} of {name:?} was just sent to another peer; fetch it there"),
        ));
    }
    Ok(peer)
}

/// The refusal for a chunk that could not be read for upload. A file whose
/// bytes no longer match its hashes is withdrawn from the share, so this
/// peer stops announcing and serving data it cannot vouch for.
fn upload_refusal(
    shared: &Shared,
    f: &Arc<SharedFile>,
    name: &str,
    index: u32,
    e: UploadError,
) -> Refusal {
    match e {
        UploadError::Io(e) => {
            log::warn!(
                "cannot read chunk {index} of {name:?} from {}: {e}",
                f.path().display()
            );
            (
                ErrorCode::Internal,
                format!("cannot read chunk {index} of {name:?}: {e}"),
            )
        }
        UploadError::Changed => {
            shared.share.withdraw_changed(f);
            (
                ErrorCode::NotHeld,
                format!("{name:?} changed here after it was hashed; no longer shared"),
            )
        }
    }
}

/// How long after a capped seed sent a chunk to one peer it answers
/// `NotHeld` to others asking for it. Long enough for the recipient to
/// register the chunk and for the others' next location refresh to show
/// it; short enough that a recipient that vanished costs little.
const RESEND_AFTER: Duration = Duration::from_secs(3);
/// A send still recorded as under way after this long is forgotten (every
/// send ends in `sent` or `unclaim`; this only bounds a thread that
/// panicked in between).
const SEND_FORGOTTEN_AFTER: Duration = Duration::from_secs(600);
/// Most chunks remembered; beyond it (only at absurd rates with tiny
/// chunks) new sends are not remembered and duplicates are served.
const FIRST_SENDS_MAX: usize = 1 << 16;

/// Super-seeding while uploads are capped. A peer that holds the whole file
/// and whose uploads are rate limited is what a crowd of downloaders waits
/// for: every byte it sends twice delays all of them. Downloaders cannot
/// see each other's requests in flight, nor chunks finished since their last
/// location refresh, so several ask it for the same chunk. So: a chunk
/// being sent to one peer (booked, or on the wire) is answered `NotHeld`
/// to the others, and so it is for [`RESEND_AFTER`] after that send ended;
/// they fetch it from the recipient (which registers it as soon as it is
/// verified) and the seed's upload goes to chunks nobody has yet. The same
/// peer, or anyone after the window, is served as usual.
///
/// Measured (docs/benchmarks.md, flash crowd): with a seed and 4 or 8
/// downloaders the seed uploads about one copy of the file (1.23 and 1.32
/// without super-seeding).
#[derive(Default)]
struct FirstSends {
    recent: Mutex<HashMap<(String, u32), FirstSend>>,
    last_prune: Mutex<Option<Instant>>,
}

/// The first send of one chunk within the window.
struct FirstSend {
    to: SocketAddr,
    /// When the send was claimed, then (once `done`) when it ended.
    at: Instant,
    done: bool,
}

impl FirstSend {
    /// Whether others are still turned away for this send at `now`: while
    /// it is under way, and for [`RESEND_AFTER`] after it ended.
    fn holds(&self, now: Instant) -> bool {
        let age = now.duration_since(self.at);
        if self.done {
            age < RESEND_AFTER
        } else {
            age < SEND_FORGOTTEN_AFTER
        }
    }
}

impl FirstSends {
    fn recent(&self) -> MutexGuard<'_, HashMap<(String, u32), FirstSend>> {
        // Poisoning ignored: each critical section is one map operation.
        crate::sync::lock(&self.recent)
    }

    /// May chunk `index` of `name` be sent to `peer` now? Records the send
    /// if so. The window is not restarted by the recipient asking again, so
    /// no peer can keep a chunk from everyone else.
    fn claim(&self, name: &str, index: u32, peer: SocketAddr) -> bool {
        let now = Instant::now();
        self.prune(now);
        let mut recent = self.recent();
        let key = (name.to_owned(), index);
        if let Some(s) = recent.get(&key)
            && s.holds(now)
        {
            return s.to == peer;
        }
        if recent.len() < FIRST_SENDS_MAX || recent.contains_key(&key) {
            recent.insert(
                key,
                FirstSend {
                    to: peer,
                    at: now,
                    done: false,
                },
            );
        }
        true
    }

    /// The first send to `peer` ended: the window starts now.
    fn sent(&self, name: &str, index: u32, peer: SocketAddr) {
        if let Some(s) = self.recent().get_mut(&(name.to_owned(), index))
            && s.to == peer
            && !s.done
        {
            s.at = Instant::now();
            s.done = true;
        }
    }

    /// The claimed send to `peer` did not happen (e.g. a read error).
    fn unclaim(&self, name: &str, index: u32, peer: SocketAddr) {
        let mut recent = self.recent();
        let key = (name.to_owned(), index);
        if recent.get(&key).is_some_and(|s| s.to == peer && !s.done) {
            recent.remove(&key);
        }
    }

    /// Forgets sends older than the window, at most once a second.
    fn prune(&self, now: Instant) {
        {
            let mut last = crate::sync::lock(&self.last_prune);
            if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
                return;
            }
            *last = Some(now);
        }
        self.recent().retain(|_, s| s.holds(now));
    }
}

/// Writes `data` in one `write_all`, or, when uploads are rate limited, in
/// limiter-sized pieces paced within the reply's `booking`.
fn send_paced(w: &Link, data: &[u8], shared: &Shared, booking: &Booking) -> Result<(), WireError> {
    match shared.limiter.piece_size() {
        None => w.write_chunk_data(data)?,
        Some(piece) => {
            let piece = piece.max(1);
            for (k, part) in data.chunks(piece).enumerate() {
                if !booking.wait(k.saturating_mul(piece), &shared.stop) {
                    return Err(WireError::Io(std::io::Error::new(
                        std::io::ErrorKind::ConnectionAborted,
                        "chunk server shutting down",
                    )));
                }
                w.write_chunk_data(part)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunks::{self, Bitmap, Geometry};
    use crate::peer::client::Conn;
    use crate::peer::share::SharedFile;
    use std::fs::{self, File};
    use std::io::{BufReader, Read, Write};
    use std::net::TcpStream;

    const T: Duration = Duration::from_secs(5);

    use crate::peer::testutil::TempDir;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// Shares `data` as `name` (complete, or with only `have` chunks).
    fn add(
        idx: &ShareIndex,
        dir: &TempDir,
        name: &str,
        data: &[u8],
        cs: u32,
        have: Option<&[u32]>,
    ) -> Geometry {
        let p = dir.0.join(name.replace('/', "_"));
        fs::write(&p, data).unwrap();
        let g = Geometry::new(data.len() as u64, cs).unwrap();
        let hashes = data.chunks(cs as usize).map(chunks::sha1).collect();
        let file = File::open(&p).unwrap();
        let f = match have {
            None => SharedFile::complete(name.into(), p, file, g, hashes),
            Some(idx) => {
                let mut b = Bitmap::new(g.count());
                for &i in idx {
                    b.set(i);
                }
                SharedFile::partial(name.into(), p, file, g, hashes, b)
            }
        };
        idx.insert(Arc::new(f));
        g
    }

    fn start(idx: &Arc<ShareIndex>, cfg: ServerConfig) -> ChunkServer {
        start_limited(idx, cfg, RateLimiter::unlimited())
    }

    fn start_limited(idx: &Arc<ShareIndex>, cfg: ServerConfig, l: RateLimiter) -> ChunkServer {
        ChunkServer::start(
            "127.0.0.1:0".parse().unwrap(),
            Arc::clone(idx),
            Arc::new(l),
            cfg,
        )
        .unwrap()
    }

    fn frames(ms: &[Message]) -> Vec<u8> {
        let mut b = Vec::new();
        for m in ms {
            m.encode(&mut b).unwrap();
        }
        b
    }

    fn req(name: &str, index: u32) -> Message {
        Message::ChunkRequest {
            name: name.into(),
            index,
        }
    }

    fn code(m: &Message) -> Option<ErrorCode> {
        match m {
            Message::Error { code, .. } => Some(*code),
            _ => None,
        }
    }

    fn wait_until(what: &str, f: impl Fn() -> bool) {
        let t = Instant::now();
        while !f() {
            assert!(t.elapsed() < T, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A raw connection: to send bytes that are not a valid Hello.
    fn raw(s: &ChunkServer) -> (TcpStream, BufReader<TcpStream>) {
        let st = TcpStream::connect_timeout(&s.local_addr(), T).unwrap();
        st.set_read_timeout(Some(T)).unwrap();
        let r = BufReader::new(st.try_clone().unwrap());
        (st, r)
    }

    /// The server closed: the next read is EOF (or a reset).
    fn closed(r: &mut impl Read) -> bool {
        let mut b = [0u8; 1];
        matches!(r.read(&mut b), Ok(0) | Err(_))
    }

    fn serves_well(s: &ChunkServer, name: &str, data: &[u8], cs: usize) {
        let mut c = Conn::connect(s.local_addr(), T).unwrap();
        c.send(&req(name, 0)).unwrap();
        match c.recv().unwrap() {
            Message::ChunkData { index: 0, data: d } => assert_eq!(d, data[..cs.min(data.len())]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn serves_pipelined_requests_in_order() {
        let dir = TempDir::new("pipe");
        let idx = Arc::new(ShareIndex::new());
        let data = pattern(5000);
        add(&idx, &dir, "d/f.bin", &data, 1024, None);
        let s = start(&idx, ServerConfig::default());
        let mut c = Conn::connect(s.local_addr(), T).unwrap();
        let order = [0u32, 4, 2, 1, 3, 2, 0];
        let reqs: Vec<_> = order.iter().map(|&i| req("d/f.bin", i)).collect();
        c.send_raw(&frames(&reqs)).unwrap();
        let mut sent = 0;
        for &i in &order {
            match c.recv().unwrap() {
                Message::ChunkData { index, data: d } => {
                    assert_eq!(index, i);
                    let lo = i as usize * 1024;
                    let hi = (lo + 1024).min(data.len());
                    assert_eq!(d, data[lo..hi], "chunk {i}");
                    sent += d.len() as u64;
                }
                other => panic!("chunk {i}: {other:?}"),
            }
        }
        // Counted after each write returns, so possibly just after we read it.
        wait_until("the upload count", || s.uploaded_bytes() == sent);
        assert_eq!(s.active_connections(), 1);
    }

    #[test]
    fn request_errors_are_answered_in_place_and_the_connection_lives_on() {
        let dir = TempDir::new("errors");
        let idx = Arc::new(ShareIndex::new());
        let data = pattern(3000);
        add(&idx, &dir, "f", &data, 1024, None);
        add(&idx, &dir, "part", &data, 1024, Some(&[1]));
        // A file shorter on disk than its geometry says: the read fails.
        let p = dir.0.join("short");
        fs::write(&p, b"tiny").unwrap();
        let g = Geometry::new(4096, 1024).unwrap();
        idx.insert(Arc::new(SharedFile::complete(
            "short".into(),
            p.clone(),
            File::open(&p).unwrap(),
            g,
            vec![[0; 20]; 4],
        )));
        let s = start(&idx, ServerConfig::default());
        let mut c = Conn::connect(s.local_addr(), T).unwrap();
        c.send_raw(&frames(&[
            req("nope", 0),
            req("../f", 0),
            req("f", 3),
            req("f", u32::MAX),
            req("part", 0),
            req("part", 1),
            req("short", 2),
            Message::Keepalive,
            Message::Hello { version: 1 },
            req("f", 2),
        ]))
        .unwrap();
        let want = [
            Some(ErrorCode::UnknownFile),
            Some(ErrorCode::UnknownFile),
            Some(ErrorCode::BadIndex),
            Some(ErrorCode::BadIndex),
            Some(ErrorCode::NotHeld),
            None,
            Some(ErrorCode::Internal),
            Some(ErrorCode::Unexpected),
            Some(ErrorCode::Unexpected),
        ];
        for (k, w) in want.iter().enumerate() {
            let m = c.recv().unwrap();
            assert_eq!(code(&m), *w, "reply {k}: {m:?}");
        }
        match c.recv().unwrap() {
            Message::ChunkData { index: 2, data: d } => assert_eq!(d, data[2048..]),
            other => panic!("{other:?}"),
        }
        wait_until("the upload count", || s.uploaded_bytes() == 1024 + 952);
    }

    #[test]
    fn garbage_and_huge_frames_are_malformed_and_closed() {
        let dir = TempDir::new("garbage");
        let idx = Arc::new(ShareIndex::new());
        let data = pattern(2000);
        add(&idx, &dir, "f", &data, 1024, None);
        let s = start(&idx, ServerConfig::default());

        // Not our protocol at all.
        let (mut st, mut r) = raw(&s);
        st.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let m = wire::read_message(&mut r).unwrap().unwrap();
        assert_eq!(code(&m), Some(ErrorCode::Malformed), "{m:?}");
        assert!(closed(&mut r));

        // A 4 GiB length prefix after a good Hello.
        let mut c = Conn::connect(s.local_addr(), T).unwrap();
        c.send_raw(&[0xff, 0xff, 0xff, 0xff, 0x20, 1, 2, 3])
            .unwrap();
        let m = c.recv().unwrap();
        assert_eq!(code(&m), Some(ErrorCode::Malformed), "{m:?}");
        assert!(c.recv().is_err());

        // A frame that reads fine but does not decode.
        let mut c = Conn::connect(s.local_addr(), T).unwrap();
        c.send_raw(&[0, 0, 0, 1, 0x7f]).unwrap();
        assert_eq!(code(&c.recv().unwrap()), Some(ErrorCode::Malformed));
        assert!(c.recv().is_err());

        // Bad version, and a request before Hello.
        let (mut st, mut r) = raw(&s);
        wire::write_message(&mut st, &Message::Hello { version: 99 }).unwrap();
        let m = wire::read_message(&mut r).unwrap().unwrap();
        assert_eq!(code(&m), Some(ErrorCode::BadVersion));
        assert!(closed(&mut r));
        let (mut st, mut r) = raw(&s);
        wire::write_message(&mut st, &req("f", 0)).unwrap();
        let m = wire::read_message(&mut r).unwrap().unwrap();
        assert_eq!(code(&m), Some(ErrorCode::Unexpected));
        assert!(closed(&mut r));

        // Still serving well-behaved peers.
        serves_well(&s, "f", &data, 1024);
        wait_until("connections to end", || s.active_connections() == 0);
    }

    #[test]
    fn busy_when_over_the_connection_limit() {
        let dir = TempDir::new("busy");
        let idx = Arc::new(ShareIndex::new());
        let data = pattern(1500);
        add(&idx, &dir, "f", &data, 1024, None);
        let s = start(
            &idx,
            ServerConfig {
                max_connections: 1,
                ..ServerConfig::default()
            },
        );
        let first = Conn::connect(s.local_addr(), T).unwrap();
        match Conn::connect(s.local_addr(), T) {
            Err(PeerError::Refused { code, .. }) => assert_eq!(code, ErrorCode::Busy),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("second connection accepted"),
        }
        drop(first);
        wait_until("the first connection to end", || {
            s.active_connections() == 0
        });
        serves_well(&s, "f", &data, 1024);
    }

    #[test]
    fn idle_connections_are_closed() {
        let idx = Arc::new(ShareIndex::new());
        let s = start(
            &idx,
            ServerConfig {
                idle_timeout: Duration::from_millis(150),
                ..ServerConfig::default()
            },
        );
        let mut c = Conn::connect(s.local_addr(), T).unwrap();
        let t = Instant::now();
        assert!(c.recv().is_err());
        assert!(t.elapsed() < Duration::from_secs(3));
        wait_until("the connection to end", || s.active_connections() == 0);
    }

    #[test]
    fn shutdown_closes_connections_and_joins_promptly() {
        let dir = TempDir::new("shutdown");
        let idx = Arc::new(ShareIndex::new());
        let data = pattern(4000);
        add(&idx, &dir, "f", &data, 1024, None);
        // A slow limiter so a transfer is in progress during shutdown.
        let mut s = start_limited(&idx, ServerConfig::default(), RateLimiter::new(Some(2048)));
        let addr = s.local_addr();
        let mut idle = Conn::connect(addr, T).unwrap();
        let mut busy = Conn::connect(addr, T).unwrap();
        busy.send_raw(&frames(&[req("f", 0), req("f", 1), req("f", 2)]))
            .unwrap();
        wait_until("both connections", || s.active_connections() == 2);
        std::thread::sleep(Duration::from_millis(50));
        let t = Instant::now();
        s.shutdown();
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert_eq!(s.active_connections(), 0);
        assert!(idle.recv().is_err());
        assert!(busy.recv().is_err());
        assert!(TcpStream::connect_timeout(&addr, T).is_err());
        s.shutdown(); // idempotent
    }

    #[test]
    fn rate_limited_uploads_are_paced_and_intact() {
        let dir = TempDir::new("paced");
        let idx = Arc::new(ShareIndex::new());
        let cs = 64 * 1024;
        let data = pattern(6 * cs);
        add(&idx, &dir, "f", &data, cs as u32, None);
        let rate = 512 * 1024;
        let s = start_limited(&idx, ServerConfig::default(), RateLimiter::new(Some(rate)));
        let mut c = Conn::connect(s.local_addr(), T).unwrap();
        let t = Instant::now();
        let reqs: Vec<_> = (0..6).map(|i| req("f", i)).collect();
        c.send_raw(&frames(&reqs)).unwrap();
        let mut got = Vec::new();
        for i in 0..6 {
            match c.recv().unwrap() {
                Message::ChunkData { index, data: d } => {
                    assert_eq!(index, i);
                    got.extend_from_slice(&d);
                }
                other => panic!("{other:?}"),
            }
        }
        let el = t.elapsed();
        assert_eq!(got, data);
        // 384 KiB at 512 KiB/s is 0.75 s; allow the small initial burst.
        assert!(el >= Duration::from_millis(650), "{el:?}");
        assert!(el < Duration::from_secs(4), "{el:?}");
    }

    #[test]
    fn a_capped_seed_sends_each_chunk_to_one_peer_at_a_time() {
        let dir = TempDir::new("superseed");
        let idx = Arc::new(ShareIndex::new());
        let data = pattern(4096);
        add(&idx, &dir, "f", &data, 1024, None);
        add(&idx, &dir, "part", &data, 1024, Some(&[0, 1]));
        let chunk0 = |c: &mut Conn, name: &str| {
            c.send(&req(name, 0)).unwrap();
            c.recv().unwrap()
        };
        let s = start_limited(
            &idx,
            ServerConfig::default(),
            RateLimiter::new(Some(64 << 20)),
        );
        let mut a = Conn::connect(s.local_addr(), T).unwrap();
        let mut b = Conn::connect(s.local_addr(), T).unwrap();
        assert!(matches!(
            chunk0(&mut a, "f"),
            Message::ChunkData { index: 0, .. }
        ));
        // Just sent to a: b is told to fetch it elsewhere, gets the others.
        assert_eq!(code(&chunk0(&mut b, "f")), Some(ErrorCode::NotHeld));
        b.send(&req("f", 1)).unwrap();
        assert!(matches!(
            b.recv().unwrap(),
            Message::ChunkData { index: 1, .. }
        ));
        // The same peer is served again, without restarting the window...
        assert!(matches!(
            chunk0(&mut a, "f"),
            Message::ChunkData { index: 0, .. }
        ));
        // ...and the others are turned away for the whole window, however
        // often they ask.
        assert_eq!(code(&chunk0(&mut b, "f")), Some(ErrorCode::NotHeld));
        let mut c = Conn::connect(s.local_addr(), T).unwrap();
        assert_eq!(code(&chunk0(&mut c, "f")), Some(ErrorCode::NotHeld));
        assert_eq!(code(&chunk0(&mut c, "f")), Some(ErrorCode::NotHeld));
        // A file still being downloaded here is served to everyone.
        assert!(matches!(chunk0(&mut a, "part"), Message::ChunkData { .. }));
        assert!(matches!(chunk0(&mut b, "part"), Message::ChunkData { .. }));

        // Without an upload cap, every request is served.
        let s = start(&idx, ServerConfig::default());
        let mut a = Conn::connect(s.local_addr(), T).unwrap();
        let mut b = Conn::connect(s.local_addr(), T).unwrap();
        assert!(matches!(chunk0(&mut a, "f"), Message::ChunkData { .. }));
        assert!(matches!(chunk0(&mut b, "f"), Message::ChunkData { .. }));
    }

    /// A send still under way keeps the chunk from the others however long
    /// it takes (a capped seed sending to 100 peers at once took longer
    /// than the window, and the others were served a second copy); once
    /// it ended, for `RESEND_AFTER`.
    #[test]
    fn a_chunk_being_sent_is_held_until_the_send_ends_and_the_window_after() {
        let t0 = Instant::now();
        let peer = SocketAddr::from(([127, 0, 0, 1], 9));
        let under_way = FirstSend {
            to: peer,
            at: t0,
            done: false,
        };
        assert!(under_way.holds(t0 + RESEND_AFTER * 10));
        assert!(!under_way.holds(t0 + SEND_FORGOTTEN_AFTER));
        let ended = FirstSend {
            to: peer,
            at: t0,
            done: true,
        };
        assert!(ended.holds(t0 + RESEND_AFTER - Duration::from_millis(1)));
        assert!(!ended.holds(t0 + RESEND_AFTER));
        // Through the claims: the recipient only, until it ended.
        let f = FirstSends::default();
        let other = SocketAddr::from(([127, 0, 0, 2], 9));
        assert!(f.claim("f", 3, peer));
        assert!(!f.claim("f", 3, other));
        f.unclaim("f", 3, peer); // the send failed: free again
        assert!(f.claim("f", 3, other));
        f.sent("f", 3, other);
        assert!(!f.claim("f", 3, peer));
    }

    /// A capped peer books each reply whole, one after another: a request
    /// that would wait longer than its backlog and queue allow is answered
    /// `Busy` (and the connection lives on), while the one before it is
    /// sent whole.
    #[test]
    fn a_capped_peer_answers_busy_when_its_uploads_are_booked_too_far_ahead() {
        let dir = TempDir::new("busy-uploads");
        let idx = Arc::new(ShareIndex::new());
        let cs = 64 * 1024;
        let data = pattern(4 * cs);
        // Part of the file only: no super-seeding, just the bookings.
        add(&idx, &dir, "f", &data, cs as u32, Some(&[0, 1, 2, 3]));
        // 2 s per chunk: the second request would start 2 s ahead.
        let s = start_limited(
            &idx,
            ServerConfig::default(),
            RateLimiter::new(Some(cs as u64 / 2)),
        );
        let mut a = Conn::connect(s.local_addr(), T).unwrap();
        let mut b = Conn::connect(s.local_addr(), T).unwrap();
        a.send(&req("f", 0)).unwrap();
        wait_until("a's booking", || s.active_connections() == 2);
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        b.send(&req("f", 1)).unwrap();
        assert_eq!(code(&b.recv().unwrap()), Some(ErrorCode::Busy));
        let waited = t.elapsed();
        assert!(waited >= UPLOAD_QUEUE_WAIT / 2, "{waited:?}");
        assert!(waited < Duration::from_secs(2), "{waited:?}");
        match a.recv().unwrap() {
            Message::ChunkData { index: 0, data: d } => assert_eq!(d, data[..cs]),
            other => panic!("{other:?}"),
        }
        // Still open, and served once there is room.
        b.send(&req("f", 1)).unwrap();
        match b.recv().unwrap() {
            Message::ChunkData { index: 1, data: d } => assert_eq!(d, data[cs..2 * cs]),
            other => panic!("{other:?}"),
        }
    }

    /// A greeted connection to `s` from the loopback address `ip`.
    fn conn_from(s: &ChunkServer, ip: [u8; 4]) -> Conn {
        use socket2::{Domain, Socket, Type};
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        sock.bind(&SocketAddr::from((ip, 0)).into()).unwrap();
        sock.connect_timeout(&s.local_addr().into(), T).unwrap();
        Conn::from_stream(sock.into(), T).unwrap()
    }

    /// The turns of a capped peer's uploads go round the addresses asking,
    /// not first come first served: one address with many connections
    /// (one per request in line) cannot keep another address's request
    /// waiting until it is answered `Busy`.
    #[test]
    fn a_capped_peer_gives_the_next_turn_to_an_address_not_served_yet() {
        let dir = TempDir::new("fair-uploads");
        let idx = Arc::new(ShareIndex::new());
        let cs = 64 * 1024;
        let data = pattern(8 * cs);
        // Part of the file only: no super-seeding, just the bookings.
        add(
            &idx,
            &dir,
            "f",
            &data,
            cs as u32,
            Some(&[0, 1, 2, 3, 4, 5, 6, 7]),
        );
        // 400 ms per chunk: two booked at once, the others wait in line.
        let s = start_limited(
            &idx,
            ServerConfig::default(),
            RateLimiter::new(Some(cs as u64 * 5 / 2)),
        );
        let mut hog: Vec<Conn> = (0..6).map(|_| conn_from(&s, [127, 0, 0, 1])).collect();
        let mut other = conn_from(&s, [127, 0, 0, 2]);
        for (k, c) in hog.iter_mut().enumerate() {
            c.send(&req("f", k as u32)).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        other.send(&req("f", 7)).unwrap();
        match other.recv().unwrap() {
            Message::ChunkData { index: 7, data: d } => assert_eq!(d, data[7 * cs..]),
            m => panic!("the other address was not served: {m:?}"),
        }
    }

    #[test]
    fn files_added_later_are_served_and_removed_ones_are_not() {
        let dir = TempDir::new("dynamic");
        let idx = Arc::new(ShareIndex::new());
        let s = start(&idx, ServerConfig::default());
        let mut c = Conn::connect(s.local_addr(), T).unwrap();
        c.send(&req("late", 0)).unwrap();
        assert_eq!(code(&c.recv().unwrap()), Some(ErrorCode::UnknownFile));
        let data = pattern(100);
        add(&idx, &dir, "late", &data, 1024, None);
        c.send(&req("late", 0)).unwrap();
        assert_eq!(
            c.recv().unwrap(),
            Message::ChunkData {
                index: 0,
                data: data.clone()
            }
        );
        idx.remove("late");
        c.send(&req("late", 0)).unwrap();
        assert_eq!(code(&c.recv().unwrap()), Some(ErrorCode::UnknownFile));
    }
}
