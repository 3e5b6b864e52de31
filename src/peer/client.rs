//! The peer's client connections: [`Conn`] (a greeted connection to a
//! tracker or a peer, built on [`crate::net::client`], with errors as
//! [`PeerError`]) and the one-shot tracker queries used by `peer list`,
//! `peer where` and the downloader, to one tracker or to several at once
//! ([`list_files_all`], [`locate_all`]: asked in parallel, answers merged,
//! the trackers that did not answer named).
//!
//! Owns: the one-shot queries, merging several trackers' answers (pure:
//! [`merge_file_lists`], [`merge_locations`]) and address resolution. Connection setup
//! (timeouts, TCP_NODELAY, the Hello) belongs to `net::client`; this module
//! only forwards to it. Calls `net` and `wire`.

use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::{PeerError, Result};
use crate::net::{self, NetError};
use crate::wire::{ErrorCode, FileSummary, Locations, Message};

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

/// A question put to several trackers: the merged answer, and the trackers
/// that did not answer (or answered something unusable), with why.
#[derive(Debug)]
pub struct Merged<T> {
    pub value: T,
    pub failed: Vec<(SocketAddr, PeerError)>,
}

/// One tracker's answer to a question put to several, with the local IP
/// its connection left from (how that tracker sees this host).
type Answer<T> = Result<(T, IpAddr)>;

/// Asks every tracker in `trackers` the same question, all at once (a
/// thread each, "ask-ADDR", joined before returning), so a tracker that
/// does not answer costs its timeout once, not once per tracker after it.
/// Answers come back in the order of `trackers`.
pub fn ask_all<T: Send>(
    trackers: &[SocketAddr],
    question: impl Fn(&mut Conn) -> Result<T> + Sync,
) -> Vec<(SocketAddr, Answer<T>)> {
    let ask = |t: SocketAddr| -> Answer<T> {
        let mut c = Conn::connect(t, IO_TIMEOUT)?;
        let v = question(&mut c)?;
        let ip = c
            .stream()
            .local_addr()
            .map(|a| a.ip().to_canonical())
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        Ok((v, ip))
    };
    if trackers.len() == 1 {
        return vec![(trackers[0], ask(trackers[0]))];
    }
    std::thread::scope(|scope| {
        let pending: Vec<_> = trackers
            .iter()
            .map(|&t| {
                let h = std::thread::Builder::new()
                    .name(format!("ask-{t}"))
                    .spawn_scoped(scope, move || ask(t));
                (t, h)
            })
            .collect();
        pending
            .into_iter()
            .map(|(t, h)| {
                let r = match h {
                    Ok(h) => h.join().unwrap_or_else(|_| {
                        Err(PeerError::Invalid(format!("asking {t}: thread panicked")))
                    }),
                    // No thread to spare: ask on this one.
                    Err(_) => ask(t),
                };
                (t, r)
            })
            .collect()
    })
}

/// The error for a question no tracker answered: with one tracker, its own
/// error; with several, one line naming each and why.
pub fn none_answered(mut failed: Vec<(SocketAddr, PeerError)>) -> PeerError {
    if failed.len() == 1 {
        return failed.remove(0).1;
    }
    let why: Vec<String> = failed.iter().map(|(t, e)| format!("{t}: {e}")).collect();
    PeerError::NoTracker(why.join("; "))
}

/// Every file on the network as the trackers in `trackers` list it,
/// merged: each name once (the first tracker's entry wins if two disagree
/// on its length), sorted by name; cut short if any tracker cut its list
/// short. An error only when no tracker answers.
pub fn list_files_all(trackers: &[SocketAddr]) -> Result<Merged<(Vec<FileSummary>, bool)>> {
    let mut lists = Vec::new();
    let mut failed = Vec::new();
    for (t, r) in ask_all(trackers, |c| match c.request(&Message::ListFiles)? {
        Message::FileList { files, truncated } => Ok((files, truncated)),
        other => Err(unexpected(c.addr(), &other)),
    }) {
        match r {
            Ok((l, _)) => lists.push(l),
            Err(e) => failed.push((t, e)),
        }
    }
    if lists.is_empty() {
        return Err(none_answered(failed));
    }
    Ok(Merged {
        value: merge_file_lists(lists),
        failed,
    })
}

/// Merges file lists (pure): each name once, the first list's entry
/// winning, sorted by name; truncated if any was.
pub fn merge_file_lists(lists: Vec<(Vec<FileSummary>, bool)>) -> (Vec<FileSummary>, bool) {
    let mut by_name = std::collections::BTreeMap::new();
    let mut truncated = false;
    for (files, cut) in lists {
        truncated |= cut;
        for f in files {
            by_name.entry(f.name.clone()).or_insert(f);
        }
    }
    (by_name.into_values().collect(), truncated)
}

/// Where `name` is held according to every tracker in `trackers`, merged
/// (see [`merge_locations`]), and the local IP this host reached the first
/// answering tracker from. Trackers that do not know the name are not
/// failures; if none knows it, the first one's UnknownFile is the error.
/// Trackers describing other content under the name are left out and
/// listed in `failed`.
pub fn locate_all(
    trackers: &[SocketAddr],
    name: &str,
    with_hashes: bool,
) -> Result<Merged<(Locations, IpAddr)>> {
    let mut found = Vec::new();
    let mut unknown = None;
    let mut failed = Vec::new();
    for (t, r) in ask_all(trackers, |c| locate_on(c, name, with_hashes)) {
        match r {
            Ok((l, ip)) => found.push((t, l, ip)),
            Err(
                e @ PeerError::Refused {
                    code: ErrorCode::UnknownFile,
                    ..
                },
            ) => {
                unknown.get_or_insert(e);
            }
            Err(e) => failed.push((t, e)),
        }
    }
    let Some(&(_, _, ip)) = found.first() else {
        return Err(match unknown {
            Some(e) => e,
            None => none_answered(failed),
        });
    };
    let (merged, others) = merge_locations(found.into_iter().map(|(t, l, _)| (t, l)).collect());
    for t in others {
        failed.push((
            t,
            PeerError::Protocol {
                who: t.to_string(),
                what: format!("describes other content under the name {name:?}; left out"),
            },
        ));
    }
    Ok(Merged {
        value: (merged, ip),
        failed,
    })
}

/// Merges several trackers' Locations of one name (pure). The first
/// answer says what the file is; an answer describing other content (its
/// length, chunk size, chunk count, or hashes where both carry them,
/// differ) is left out, and its tracker returned. Sources are merged by
/// address, in order of first appearance; a source listed by several
/// trackers holds what any of them says it holds (trackers lag
/// differently behind its ChunkRegisters).
///
/// With no answer at all, an empty Locations.
pub fn merge_locations(answers: Vec<(SocketAddr, Locations)>) -> (Locations, Vec<SocketAddr>) {
    let mut it = answers.into_iter();
    let Some((_, mut merged)) = it.next() else {
        return (
            Locations {
                name: String::new(),
                length: 0,
                chunk_size: 0,
                chunk_count: 0,
                hashes: None,
                sources: Vec::new(),
            },
            Vec::new(),
        );
    };
    let mut others = Vec::new();
    let mut index: std::collections::HashMap<SocketAddr, usize> = merged
        .sources
        .iter()
        .enumerate()
        .map(|(i, s)| (s.addr, i))
        .collect();
    for (t, l) in it {
        let same = l.length == merged.length
            && l.chunk_size == merged.chunk_size
            && l.chunk_count == merged.chunk_count
            && match (&l.hashes, &merged.hashes) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            };
        if !same {
            others.push(t);
            continue;
        }
        if merged.hashes.is_none() {
            merged.hashes = l.hashes;
        }
        for s in l.sources {
            match index.get(&s.addr) {
                Some(&i) => {
                    let have = &mut merged.sources[i].have;
                    if have.len() == s.have.len() {
                        for (a, b) in have.iter_mut().zip(&s.have) {
                            *a |= b;
                        }
                    }
                }
                None => {
                    index.insert(s.addr, merged.sources.len());
                    merged.sources.push(s);
                }
            }
        }
    }
    (merged, others)
}
