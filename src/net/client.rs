//! The client side of every outgoing connection (to a tracker or a peer):
//! connect with a timeout, set TCP_NODELAY and the read/write timeouts,
//! run the handshake of a private network when this process has a network
//! key, exchange Hello; then send requests and read replies (encrypted when
//! keyed), each whole frame under a deadline.
//!
//! Owns: the connection setup policy of every client, and what a client
//! tells its user when the network keys do not match. Whatever must happen
//! on a connection before the first request (the handshake, the Hello) is
//! done in [`Conn::from_stream_keyed`] and nowhere else. A keyed client
//! never falls back to clear. Every frame read (the Hello reply included)
//! must arrive whole within the read timeout plus its length at
//! `limits::MIN_TRANSFER_RATE` (`MIN_CHUNK_TRANSFER_RATE` for a
//! `ChunkData`), and every frame written must leave within the write
//! timeout plus its length at `MIN_TRANSFER_RATE` ([`super::deadline`]), so
//! a server that trickles its bytes cannot hold a client for long; on a
//! keyed connection the deadlines count plaintext frames. A connection's
//! socket reads may go through a [`ReadGate`] (a download limit); the time
//! spent waiting at the gate is left out of the frame deadline. Calls `wire`,
//! `limits`, [`super::deadline`], [`super::key`] and [`super::secure`] only.
//! Also owns the address outgoing connections start from
//! ([`install_local_ip`]); every outgoing connection of the crate is made
//! by [`connect_timeout`].

use std::io::{self, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Type};

use super::NetError;
use super::deadline::{DeadlineWriter, FrameDeadline, frame_allowance};
use super::key::{self, KEY_FILE_ENV, NetworkKey};
use super::secure::{self, HandshakeError, Opener, Sealer, SecureRead};
use crate::wire::{self, ErrorCode, Message, WireError};

pub use crate::limits::{CONNECT_TIMEOUT, IO_TIMEOUT};

type Result<T> = std::result::Result<T, NetError>;

/// Read buffer of a client connection: big enough for many small replies
/// and for ChunkData headers without extra system calls.
const READ_BUF: usize = 64 * 1024;

/// Opens a TCP connection, giving up after [`CONNECT_TIMEOUT`]. Nothing is
/// sent: pass the stream to [`Conn::from_stream`] to greet.
pub fn connect_stream(addr: SocketAddr) -> Result<TcpStream> {
    connect_timeout(addr, CONNECT_TIMEOUT).map_err(|e| NetError::wire(addr, e))
}

/// The address every outgoing connection of this process starts from, when
/// the peer was told to serve chunks on one address (`--listen IP`).
static LOCAL_IP: OnceLock<IpAddr> = OnceLock::new();

/// Makes this process's outgoing connections start from `ip`, the address
/// its chunk server listens on: a tracker records the address a peer
/// connects from as where it serves chunks, so a peer on a host with
/// several addresses (or one of many on 127/8) is then handed out at the
/// address it listens on. Installed once at start by `ui`; a second call
/// changes nothing.
pub fn install_local_ip(ip: IpAddr) {
    let _ = LOCAL_IP.set(ip);
}

/// Connects to `addr` within `timeout`, from the installed local address
/// ([`install_local_ip`]) when there is one that can reach `addr` (the same
/// family, and a loopback address only to loopback, the others only to
/// the others); from the address the system picks otherwise.
///
/// The socket is bound to that address only when the system would start
/// the connection from another one ([`system_picks`]): a bind before
/// connect must choose its port alone, searching the ports not bound by
/// any socket, `TIME_WAIT` ones included, which with thousands of recent
/// connections costs more than the rest of the connection; a plain connect
/// chooses among the ports free towards that one destination.
pub fn connect_timeout(addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    match LOCAL_IP.get() {
        Some(&ip) if can_reach(ip, addr.ip()) && !system_picks(ip, addr) => {
            let s =
                socket2::Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
            s.bind(&SocketAddr::new(ip, 0).into())?;
            s.connect_timeout(&addr.into(), timeout)?;
            Ok(s.into())
        }
        _ => TcpStream::connect_timeout(&addr, timeout),
    }
}

/// Whether the system starts a connection to `addr` from `ip` by itself:
/// asked of a UDP socket connected there, which sends nothing and takes no
/// TCP port. Should the routes change between this and the connect, the
/// connection starts from wherever the system then picks, as without
/// `--listen IP`.
fn system_picks(ip: IpAddr, addr: SocketAddr) -> bool {
    let any: SocketAddr = match addr {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    std::net::UdpSocket::bind(any)
        .and_then(|u| {
            u.connect(addr)?;
            u.local_addr()
        })
        .is_ok_and(|local| local.ip() == ip)
}

/// Whether a connection from `local` to `remote` can work: the same
/// family, and loopback to loopback only.
fn can_reach(local: IpAddr, remote: IpAddr) -> bool {
    local.is_ipv4() == remote.is_ipv4() && local.is_loopback() == remote.is_loopback()
}

/// Decides when, and how much, a connection may take from its socket: a
/// download limit (`peer::ratelimit::RateLimiter` implements it). Installed
/// with [`Conn::gate_reads`]; every read of the socket under the
/// connection's buffer then goes through it.
pub trait ReadGate: Send + Sync {
    /// Reads at most `buf.len()` bytes from `stream`: first waits for bytes
    /// as a plain read would (under the socket's read timeout), then for
    /// the gate's own permission. Returns the bytes read (0 at the end of
    /// the stream) and the time spent waiting for permission, which does
    /// not count against the frame's deadline: it is this side's choice,
    /// not the other side being slow.
    fn read(&self, stream: &TcpStream, buf: &mut [u8]) -> io::Result<(usize, Duration)>;

    /// A connection now reads through this gate (so a gate can tell how
    /// many share it).
    fn attached(&self) {}

    /// A connection that read through this gate is gone (or has another
    /// gate).
    fn detached(&self) {}
}

/// The socket under a client's read buffer: read as is, or through a gate.
struct Socket {
    stream: TcpStream,
    gate: Option<Arc<dyn ReadGate>>,
    /// Nanoseconds spent waiting at the gate so far (read by the frame
    /// deadline, which leaves them out).
    held: Arc<AtomicU64>,
}

impl Drop for Socket {
    fn drop(&mut self) {
        if let Some(g) = self.gate.take() {
            g.detached();
        }
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &self.gate {
            None => self.stream.read(buf),
            Some(g) => {
                let (n, waited) = g.read(&self.stream, buf)?;
                let nanos = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
                self.held.fetch_add(nanos, Ordering::Relaxed);
                Ok(n)
            }
        }
    }
}

/// An open, greeted connection to a tracker or a peer.
pub struct Conn {
    reader: BufReader<Socket>,
    /// The receiving half of the session, when keyed.
    opener: Option<Opener>,
    writer: TcpStream,
    /// The sending half of the session, when keyed.
    sealer: Option<Sealer>,
    addr: SocketAddr,
}

impl Conn {
    /// Connects, sets timeouts and TCP_NODELAY, runs the handshake if this
    /// process has a network key ([`key::process`]), and exchanges Hello.
    pub fn connect(addr: SocketAddr, io_timeout: Duration) -> Result<Conn> {
        Conn::connect_keyed(addr, io_timeout, key::process())
    }

    /// [`Conn::connect`] with an explicit network key (`None`: clear).
    pub fn connect_keyed(
        addr: SocketAddr,
        io_timeout: Duration,
        key: Option<&NetworkKey>,
    ) -> Result<Conn> {
        Conn::from_stream_keyed(connect_stream(addr)?, io_timeout, key)
    }

    /// Greets over an already connected stream, with this process's
    /// network key if it has one (see [`Conn::from_stream_keyed`]).
    pub fn from_stream(stream: TcpStream, io_timeout: Duration) -> Result<Conn> {
        Conn::from_stream_keyed(stream, io_timeout, key::process())
    }

    /// Greets over an already connected stream: TCP_NODELAY, `io_timeout`
    /// on every read and write, the handshake when `key` is given, then
    /// the Hello exchange.
    pub fn from_stream_keyed(
        stream: TcpStream,
        io_timeout: Duration,
        key: Option<&NetworkKey>,
    ) -> Result<Conn> {
        let addr = stream
            .peer_addr()
            .map_err(|e| NetError::wire("connection", e))?;
        let setup = || -> std::io::Result<TcpStream> {
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(io_timeout))?;
            stream.set_write_timeout(Some(io_timeout))?;
            stream.try_clone()
        };
        let writer = setup().map_err(|e| NetError::wire(addr, e))?;
        let socket = Socket {
            stream,
            gate: None,
            held: Arc::new(AtomicU64::new(0)),
        };
        let mut conn = Conn {
            reader: BufReader::with_capacity(READ_BUF, socket),
            opener: None,
            writer,
            sealer: None,
            addr,
        };
        if let Some(key) = key {
            let (opener, sealer) =
                secure::client_handshake(&mut conn.reader, &mut conn.writer, key)
                    .map_err(|e| handshake_failed(addr, e, io_timeout))?;
            conn.opener = Some(opener);
            conn.sealer = Some(sealer);
        }
        let hello = conn.request(&Message::Hello {
            version: wire::PROTOCOL_VERSION,
        });
        match hello.map_err(|e| key_required(addr, e))? {
            Message::Hello { version } if version == wire::PROTOCOL_VERSION => Ok(conn),
            Message::Hello { version } => Err(NetError::Protocol {
                who: addr.to_string(),
                what: format!(
                    "speaks protocol version {version}, this build speaks {}",
                    wire::PROTOCOL_VERSION
                ),
            }),
            other => Err(unexpected(addr, &other)),
        }
    }

    /// The remote address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The underlying stream (for local_addr, shutdown, timeouts).
    pub fn stream(&self) -> &TcpStream {
        &self.writer
    }

    /// From now on every read of this connection's socket goes through
    /// `gate` (a download limit). Time spent waiting at the gate does not
    /// count against a frame's deadline.
    pub fn gate_reads(&mut self, gate: Arc<dyn ReadGate>) {
        gate.attached();
        if let Some(old) = self.reader.get_mut().gate.replace(gate) {
            old.detached();
        }
    }

    /// Writes one message.
    pub fn send(&mut self, m: &Message) -> Result<()> {
        let mut buf = Vec::new();
        m.encode(&mut buf)
            .map_err(|e| NetError::wire(self.addr, e))?;
        self.send_raw(&buf)
    }

    /// Whether this connection is encrypted.
    pub fn is_keyed(&self) -> bool {
        self.sealer.is_some()
    }

    /// Writes raw, already encoded frames (several pipelined requests in one
    /// write), sealed when the connection is keyed, within the write timeout
    /// plus their length at the minimum transfer rate.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        let written = match self.writer.write_timeout() {
            Ok(Some(per_write)) => {
                let deadline =
                    std::time::Instant::now() + frame_allowance(per_write, bytes.len() as u64);
                let mut w = DeadlineWriter::new(&self.writer, per_write, deadline);
                match self.sealer.as_mut() {
                    Some(s) => s.write_all(&mut w, bytes),
                    None => w.write_all(bytes),
                }
            }
            Ok(None) => match self.sealer.as_mut() {
                Some(s) => s.write_all(&mut self.writer, bytes),
                None => self.writer.write_all(bytes),
            },
            Err(e) => Err(e),
        };
        let timeout = self.writer.write_timeout().ok().flatten();
        written.map_err(|e| NetError::wire(self.addr, WireError::from(e).no_answer_within(timeout)))
    }

    /// Whether bytes already received are waiting in this connection's
    /// read buffer or, when keyed, in its session (a peek at the socket
    /// does not see them).
    pub fn has_buffered(&self) -> bool {
        !self.reader.buffer().is_empty() || self.opener.as_ref().is_some_and(Opener::has_buffered)
    }

    /// Reads one message; the other side closing is an error here because
    /// a reply was expected.
    pub fn recv(&mut self) -> Result<Message> {
        self.recv_into(&mut Vec::new())
    }

    /// [`Conn::recv`] that reads a ChunkData's bytes into `spare` (taken,
    /// its capacity reused; see [`wire::read_message_into`]), so a
    /// download can recycle its chunk buffers.
    ///
    /// The frame must arrive whole within the read timeout (as set on the
    /// stream now) plus its length at `limits::MIN_TRANSFER_RATE` (a
    /// `ChunkData`: `MIN_CHUNK_TRANSFER_RATE`), however its bytes trickle
    /// in.
    pub fn recv_into(&mut self, spare: &mut Vec<u8>) -> Result<Message> {
        self.recv_into_until(spare, None)
    }

    /// [`Conn::recv_into`] that also gives up at `cap`, however long the
    /// frame (see `FrameDeadline::capped_at`).
    pub fn recv_into_until(
        &mut self,
        spare: &mut Vec<u8>,
        cap: Option<Instant>,
    ) -> Result<Message> {
        let per_read = self
            .writer
            .read_timeout()
            .map_err(|e| NetError::wire(self.addr, e))?;
        let held = Arc::clone(&self.reader.get_ref().held);
        let mut input = SecureRead {
            opener: self.opener.as_mut(),
            inner: &mut self.reader,
        };
        let read = match per_read {
            Some(per_read) => wire::read_message_into(
                &mut FrameDeadline::new(&mut input, &self.writer, per_read)
                    .paused_by(&held)
                    .capped_at(cap),
                spare,
            ),
            None => wire::read_message_into(&mut input, spare),
        };
        match read {
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err(NetError::wire(
                self.addr,
                WireError::Truncated {
                    what: "connection (closed by the other side)",
                },
            )),
            Err(e) => Err(NetError::wire(self.addr, e.no_answer_within(per_read))),
        }
    }

    /// Sends `m` and reads the reply; an Error reply becomes
    /// [`NetError::Refused`].
    pub fn request(&mut self, m: &Message) -> Result<Message> {
        self.send(m)?;
        match self.recv()? {
            Message::Error { code, message } => Err(NetError::Refused {
                who: self.addr.to_string(),
                code,
                message,
            }),
            reply => Ok(reply),
        }
    }
}

/// What a clear client tells its user when a keyed server refuses it.
fn key_required(addr: SocketAddr, e: NetError) -> NetError {
    match e {
        NetError::Refused {
            code: ErrorCode::KeyRequired,
            message,
            ..
        } => {
            let how = if message.ends_with("--key-file") {
                format!(" FILE (or set {KEY_FILE_ENV}=FILE)")
            } else {
                format!(" (pass --key-file FILE or set {KEY_FILE_ENV}=FILE)")
            };
            NetError::Key {
                who: addr.to_string(),
                what: format!("{addr}: {message}{how}"),
            }
        }
        other => other,
    }
}

/// What a keyed client tells its user when the handshake fails. Nothing
/// here ever continues in clear.
fn handshake_failed(addr: SocketAddr, e: HandshakeError, io_timeout: Duration) -> NetError {
    let who = addr.to_string();
    let key = |what: String| NetError::Key {
        who: who.clone(),
        what,
    };
    match e {
        HandshakeError::Io(e) => {
            NetError::wire(addr, WireError::from(e).no_answer_within(Some(io_timeout)))
        }
        HandshakeError::ClearAnswer(Ok(Some(Message::Error { code, message }))) => match code {
            ErrorCode::KeyRejected => key(format!("network key rejected by {addr}: {message}")),
            ErrorCode::Busy | ErrorCode::BadVersion => NetError::Refused {
                who: who.clone(),
                code,
                message,
            },
            _ => key(format!(
                "{addr} answered the key exchange in clear ({code}: {message}); it is not in \
                 a private network; not continuing without encryption"
            )),
        },
        HandshakeError::ClearAnswer(Ok(None)) => NetError::Protocol {
            who,
            what: "closed the connection during the key exchange".into(),
        },
        HandshakeError::ClearAnswer(answer) => key(format!(
            "{addr} answered the key exchange in clear ({}); it is not in a private network \
             or not a p2pfs server; not continuing without encryption",
            match answer {
                Ok(Some(m)) => m.kind().to_string(),
                Ok(None) => "nothing".to_string(),
                Err(e) => e.to_string(),
            }
        )),
        HandshakeError::Rejected => key(format!(
            "network key rejected by {addr}: its handshake answer does not verify with our key"
        )),
        e @ (HandshakeError::Version(_) | HandshakeError::Malformed(_)) => NetError::Protocol {
            who,
            what: format!("key exchange: {e}"),
        },
    }
}

/// Connects to `addr` once to find out whether our network key (or lack
/// of one) is accepted there: `Err` only for a key mismatch, so a command
/// can fail at once with the reason instead of retrying in the
/// background. Any other failure (unreachable, busy, no answer within
/// `timeout`, which bounds the connect and each read and write) is left to
/// the caller's normal handling: a server answers a key mismatch at once,
/// so a short `timeout` only ever skips the check, never fails it.
pub fn check_key(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let Ok(stream) = connect_timeout(addr, timeout) else {
        return Ok(());
    };
    match Conn::from_stream(stream, timeout) {
        Err(e) if e.is_key_mismatch() => Err(e),
        _ => Ok(()),
    }
}

/// The error for a reply of the wrong kind.
pub fn unexpected(who: SocketAddr, m: &Message) -> NetError {
    NetError::Protocol {
        who: who.to_string(),
        what: format!("unexpected {} reply", m.kind()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;
    use std::time::Instant;

    /// A connection to loopback starts from 127.0.0.1 by itself (no bind,
    /// so no search for a free port); another loopback address must be
    /// bound to.
    #[test]
    fn the_system_pick_is_asked_before_binding() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(system_picks(lo, addr));
        assert!(!system_picks("127.0.3.7".parse().unwrap(), addr));
    }

    /// Review 1, finding 7: a server that answers the Hello one byte at a
    /// time, each byte well within the read timeout, does not hold the
    /// client past the Hello's deadline (the read timeout plus its length
    /// at the minimum rate); nor does one that trickles a reply.
    #[test]
    fn a_trickling_server_does_not_hold_the_client() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = thread::spawn(move || {
            for round in 0..2 {
                let (mut s, _) = l.accept().unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                let _ = wire::read_message(&mut r);
                let mut hello = Vec::new();
                Message::Hello {
                    version: wire::PROTOCOL_VERSION,
                }
                .encode(&mut hello)
                .unwrap();
                if round == 1 {
                    // A quick Hello, then a FileList trickled.
                    s.write_all(&hello).unwrap();
                    let _ = wire::read_message(&mut r);
                    Message::FileList {
                        files: vec![],
                        truncated: false,
                    }
                    .encode(&mut hello)
                    .unwrap();
                    hello.drain(..11);
                }
                for b in hello {
                    if s.write_all(&[b]).is_err() {
                        break;
                    }
                    thread::sleep(Duration::from_millis(300));
                }
            }
        });
        let per_read = Duration::from_millis(800);
        let t = Instant::now();
        assert!(Conn::connect(addr, per_read).is_err());
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "{:?}",
            t.elapsed()
        );
        let mut c = Conn::connect(addr, per_read).unwrap();
        let t = Instant::now();
        assert!(c.request(&Message::ListFiles).is_err());
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "{:?}",
            t.elapsed()
        );
        server.join().unwrap();
    }
}
