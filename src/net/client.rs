//! The client side of every outgoing connection (to a tracker or a peer):
//! connect with a timeout, set TCP_NODELAY and the read/write timeouts,
//! exchange Hello; then send requests and read replies.
//!
//! Owns: the connection setup policy of every client. Whatever must happen
//! on a connection before the first request (today the Hello) is done in
//! [`Conn::from_stream`] and nowhere else. Calls `wire` and `limits` only.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::NetError;
use crate::wire::{self, Message, WireError};

pub use crate::limits::{CONNECT_TIMEOUT, IO_TIMEOUT};

type Result<T> = std::result::Result<T, NetError>;

/// Read buffer of a client connection: big enough for many small replies
/// and for ChunkData headers without extra system calls.
const READ_BUF: usize = 64 * 1024;

/// Opens a TCP connection, giving up after [`CONNECT_TIMEOUT`]. Nothing is
/// sent: pass the stream to [`Conn::from_stream`] to greet.
pub fn connect_stream(addr: SocketAddr) -> Result<TcpStream> {
    TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(|e| NetError::wire(addr, e))
}

/// An open, greeted connection to a tracker or a peer.
pub struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    addr: SocketAddr,
}

impl Conn {
    /// Connects, sets timeouts and TCP_NODELAY, and exchanges Hello.
    pub fn connect(addr: SocketAddr, io_timeout: Duration) -> Result<Conn> {
        Conn::from_stream(connect_stream(addr)?, io_timeout)
    }

    /// Greets over an already connected stream: TCP_NODELAY, `io_timeout`
    /// on every read and write, then the Hello exchange.
    pub fn from_stream(stream: TcpStream, io_timeout: Duration) -> Result<Conn> {
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
        let mut conn = Conn {
            reader: BufReader::with_capacity(READ_BUF, stream),
            writer,
            addr,
        };
        match conn.request(&Message::Hello {
            version: wire::PROTOCOL_VERSION,
        })? {
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

    /// Writes one message.
    pub fn send(&mut self, m: &Message) -> Result<()> {
        wire::write_message(&mut self.writer, m).map_err(|e| NetError::wire(self.addr, e))
    }

    /// Writes raw, already encoded frames (several pipelined requests in one
    /// write).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.writer
            .write_all(bytes)
            .map_err(|e| NetError::wire(self.addr, e))
    }

    /// Reads one message; the other side closing is an error here because
    /// a reply was expected.
    pub fn recv(&mut self) -> Result<Message> {
        self.recv_into(&mut Vec::new())
    }

    /// [`Conn::recv`] that reads a ChunkData's bytes into `spare` (taken,
    /// its capacity reused; see [`wire::read_message_into`]), so a
    /// download can recycle its chunk buffers.
    pub fn recv_into(&mut self, spare: &mut Vec<u8>) -> Result<Message> {
        match wire::read_message_into(&mut self.reader, spare) {
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err(NetError::wire(
                self.addr,
                WireError::Truncated {
                    what: "connection (closed by the other side)",
                },
            )),
            Err(e) => Err(NetError::wire(self.addr, e)),
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

/// The error for a reply of the wrong kind.
pub fn unexpected(who: SocketAddr, m: &Message) -> NetError {
    NetError::Protocol {
        who: who.to_string(),
        what: format!("unexpected {} reply", m.kind()),
    }
}
