//! The peer's client connections: [`Conn`] (a greeted connection to a
//! tracker or a peer, built on [`crate::net::client`], with errors as
//! [`PeerError`]) and the one-shot tracker queries used by `peer list`,
//! `peer where` and the downloader.
//!
//! Owns: the one-shot queries and address resolution. Connection setup
//! (timeouts, TCP_NODELAY, the Hello) belongs to `net::client`; this module
//! only forwards to it. Calls `net` and `wire`.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::{PeerError, Result};
use crate::net::{self, NetError};
use crate::wire::{FileSummary, Locations, Message};

pub use crate::net::client::{CONNECT_TIMEOUT, IO_TIMEOUT};

impl From<NetError> for PeerError {
    fn from(e: NetError) -> PeerError {
        match e {
            NetError::Wire { who, source } => PeerError::Net { who, source },
            NetError::Refused { who, code, message } => PeerError::Refused { who, code, message },
            NetError::Protocol { who, what } => PeerError::Protocol { who, what },
        }
    }
}

/// Resolves `addr` ("host:port") to its first socket address.
pub fn resolve(addr: &str) -> Result<SocketAddr> {
    addr.to_socket_addrs()
        .map_err(|e| PeerError::Invalid(format!("cannot resolve {addr}: {e}")))?
        .next()
        .ok_or_else(|| PeerError::Invalid(format!("{addr} resolves to no address")))
}

/// An open, greeted connection to a tracker or a peer (see
/// [`net::client::Conn`]; this wrapper only turns its errors into
/// [`PeerError`]).
pub struct Conn(net::client::Conn);

impl Conn {
    /// Connects, sets timeouts and TCP_NODELAY, and exchanges Hello.
    pub fn connect(addr: SocketAddr, io_timeout: Duration) -> Result<Conn> {
        Ok(Conn(net::client::Conn::connect(addr, io_timeout)?))
    }

    /// Greets over an already connected stream.
    pub fn from_stream(stream: TcpStream, io_timeout: Duration) -> Result<Conn> {
        Ok(Conn(net::client::Conn::from_stream(stream, io_timeout)?))
    }

    /// The remote address.
    pub fn addr(&self) -> SocketAddr {
        self.0.addr()
    }

    /// Whether received bytes wait in the read buffer (see
    /// [`net::client::Conn::has_buffered`]).
    pub fn has_buffered(&self) -> bool {
        self.0.has_buffered()
    }

    /// The underlying stream (for local_addr, shutdown, timeouts).
    pub fn stream(&self) -> &TcpStream {
        self.0.stream()
    }

    /// Writes one message.
    pub fn send(&mut self, m: &Message) -> Result<()> {
        Ok(self.0.send(m)?)
    }

    /// Writes raw, already encoded frames (several pipelined requests in one
    /// write).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        Ok(self.0.send_raw(bytes)?)
    }

    /// Reads one message; the other side closing is an error here because
    /// a reply was expected.
    pub fn recv(&mut self) -> Result<Message> {
        Ok(self.0.recv()?)
    }

    /// [`Conn::recv`] that reads a ChunkData's bytes into `spare` (see
    /// [`net::client::Conn::recv_into`]).
    pub fn recv_into(&mut self, spare: &mut Vec<u8>) -> Result<Message> {
        Ok(self.0.recv_into(spare)?)
    }

    /// Sends `m` and reads the reply; an Error reply becomes
    /// [`PeerError::Refused`].
    pub fn request(&mut self, m: &Message) -> Result<Message> {
        Ok(self.0.request(m)?)
    }
}

/// The error for a reply of the wrong kind.
pub fn unexpected(who: SocketAddr, m: &Message) -> PeerError {
    net::client::unexpected(who, m).into()
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
