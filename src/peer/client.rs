//! Client side of a connection: connect with a timeout, exchange Hello, then
//! send requests and read replies; plus the one-shot tracker queries used by
//! `peer list`, `peer where` and the downloader.
//!
//! Owns: connection setup policy (timeouts, TCP_NODELAY) for every outgoing
//! connection of a peer. Calls `wire` only.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::{PeerError, Result};
use crate::wire::{self, FileSummary, Locations, Message, WireError};

pub use crate::limits::{CONNECT_TIMEOUT, IO_TIMEOUT};

/// Resolves `addr` ("host:port") to its first socket address.
pub fn resolve(addr: &str) -> Result<SocketAddr> {
    addr.to_socket_addrs()
        .map_err(|e| PeerError::Invalid(format!("cannot resolve {addr}: {e}")))?
        .next()
        .ok_or_else(|| PeerError::Invalid(format!("{addr} resolves to no address")))
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
        let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
            .map_err(|e| PeerError::net(addr, WireError::Io(e)))?;
        Conn::from_stream(stream, io_timeout)
    }

    /// Greets over an already connected stream.
    pub fn from_stream(stream: TcpStream, io_timeout: Duration) -> Result<Conn> {
        let addr = stream.peer_addr().map_err(|e| PeerError::Net {
            who: "connection".into(),
            source: WireError::Io(e),
        })?;
        let setup = || -> std::io::Result<TcpStream> {
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(io_timeout))?;
            stream.set_write_timeout(Some(io_timeout))?;
            stream.try_clone()
        };
        let writer = setup().map_err(|e| PeerError::net(addr, WireError::Io(e)))?;
        let mut conn = Conn {
            reader: BufReader::with_capacity(64 * 1024, stream),
            writer,
            addr,
        };
        match conn.request(&Message::Hello {
            version: wire::PROTOCOL_VERSION,
        })? {
            Message::Hello { version } if version == wire::PROTOCOL_VERSION => Ok(conn),
            Message::Hello { version } => Err(PeerError::Protocol {
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
        wire::write_message(&mut self.writer, m).map_err(|e| PeerError::net(self.addr, e))
    }

    /// Writes raw, already encoded frames (several pipelined requests in one
    /// write).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.writer
            .write_all(bytes)
            .map_err(|e| PeerError::net(self.addr, WireError::Io(e)))
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
            Ok(None) => Err(PeerError::net(
                self.addr,
                WireError::Truncated {
                    what: "connection (closed by the other side)",
                },
            )),
            Err(e) => Err(PeerError::net(self.addr, e)),
        }
    }

    /// Sends `m` and reads the reply; an Error reply becomes
    /// [`PeerError::Refused`].
    pub fn request(&mut self, m: &Message) -> Result<Message> {
        self.send(m)?;
        match self.recv()? {
            Message::Error { code, message } => Err(PeerError::Refused {
                who: self.addr.to_string(),
                code,
                message,
            }),
            reply => Ok(reply),
        }
    }
}

/// The error for a reply of the wrong kind.
pub fn unexpected(who: SocketAddr, m: &Message) -> PeerError {
    PeerError::Protocol {
        who: who.to_string(),
        what: format!("unexpected {} reply", m.kind()),
    }
}

/// Every file on the network, and whether the tracker cut the list short.
pub fn list_files(tracker: SocketAddr) -> Result<(Vec<FileSummary>, bool)> {
    let mut c = Conn::connect(tracker, IO_TIMEOUT)?;
    match c.request(&Message::ListFiles)? {
        Message::FileList { files, truncated } => Ok((files, truncated)),
        other => Err(unexpected(tracker, &other)),
    }
}

/// Where `name` is held, with its chunk hashes if asked.
pub fn locate(tracker: SocketAddr, name: &str, with_hashes: bool) -> Result<Locations> {
    let mut c = Conn::connect(tracker, IO_TIMEOUT)?;
    locate_on(&mut c, name, with_hashes)
}

/// [`locate`] over an open connection.
pub fn locate_on(c: &mut Conn, name: &str, with_hashes: bool) -> Result<Locations> {
    match c.request(&Message::Locate {
        name: name.to_owned(),
        with_hashes,
    })? {
        Message::Locations(l) => Ok(l),
        other => Err(unexpected(c.addr(), &other)),
    }
}
