//! The peer's client connections: [`Conn`] (a greeted connection to a
//! tracker or a peer, built on [`crate::net::client`], with errors as
//! [`PeerError`]) and the one-shot tracker queries used by `peer list`,
//! `peer where` and the downloader, to one tracker or to several at once
//! ([`list_files_all`], [`locate_all`], [`describe_all`]: asked in
//! parallel, answers merged, the trackers that did not answer, or answered
//! what cannot be shown, named).
//!
//! Owns: the one-shot queries, merging several trackers' answers (pure:
//! [`merge_file_lists`], [`merge_locations`], [`merge_descriptions`]), the
//! [`FileDescription`] of a file and address resolution. Connection setup
//! (timeouts, TCP_NODELAY, the Hello) belongs to `net::client`; this module
//! only forwards to it. Calls `net`, `wire` and `chunks`.

use std::io;
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crossbeam_channel::RecvTimeoutError;
use std::time::Duration;

use super::{PeerError, Result};
use crate::chunks::ContentId;
use crate::limits::TRACKER_GRACE;
use crate::net::{self, NetError};
use crate::sync::lock;
use crate::wire::{ErrorCode, FileSummary, Locations, Message, WireError};

pub use crate::net::client::{CONNECT_TIMEOUT, IO_TIMEOUT};

impl From<NetError> for PeerError {
    fn from(e: NetError) -> PeerError {
        match e {
            NetError::Wire { who, source } => PeerError::Net { who, source },
            NetError::Refused { who, code, message } => PeerError::Refused { who, code, message },
            NetError::Protocol { who, what } => PeerError::Protocol { who, what },
            NetError::Key { who, what } => PeerError::Key { who, what },
        }
    }
}

/// Fails only if `addr` refuses our network key or our lack of one (see
/// [`net::client::check_key`]); gives up asking after
/// `limits::TRACKER_GRACE` (a tracker that does not answer by then is
/// left to the command's normal handling).
pub fn check_key(addr: SocketAddr) -> Result<()> {
    Ok(net::client::check_key(addr, crate::limits::TRACKER_GRACE)?)
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

    /// Reads the socket through `gate` from now on (see
    /// [`net::client::Conn::gate_reads`]).
    pub fn gate_reads(&mut self, gate: std::sync::Arc<dyn net::client::ReadGate>) {
        self.0.gate_reads(gate);
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

    /// [`Conn::recv_into`] that gives up at `cap` at the latest.
    pub fn recv_into_until(
        &mut self,
        spare: &mut Vec<u8>,
        cap: Option<std::time::Instant>,
    ) -> Result<Message> {
        Ok(self.0.recv_into_until(spare, cap)?)
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
/// Once one tracker has answered, the others get [`TRACKER_GRACE`] more;
/// those still silent then have their connection shut and are reported as
/// not answering in time. Answers come back in the order of `trackers`.
pub fn ask_all<T: Send>(
    trackers: &[SocketAddr],
    question: impl Fn(&mut Conn) -> Result<T> + Sync,
) -> Vec<(SocketAddr, Answer<T>)> {
    ask_all_heard(trackers, |c, _| question(c))
}

/// [`ask_all`] for a question of several requests: the question sets its
/// tracker's flag (`heard`) once the tracker has answered one of them. A
/// tracker heard from is not cut at the grace (it is answering, only its
/// answer takes longer than another tracker's); it still ends under each
/// request's own deadline.
fn ask_all_heard<T: Send>(
    trackers: &[SocketAddr],
    question: impl Fn(&mut Conn, &AtomicBool) -> Result<T> + Sync,
) -> Vec<(SocketAddr, Answer<T>)> {
    let streams: Vec<Mutex<Option<TcpStream>>> =
        trackers.iter().map(|_| Mutex::new(None)).collect();
    let heard: Vec<AtomicBool> = trackers.iter().map(|_| AtomicBool::new(false)).collect();
    let cut = AtomicBool::new(false);
    let ask = |i: usize| -> Answer<T> {
        let t = trackers[i];
        let s = net::client::connect_stream(t)?;
        *lock(&streams[i]) = s.try_clone().ok();
        if cut.load(Ordering::SeqCst) {
            let _ = s.shutdown(Shutdown::Both);
        }
        let mut c = Conn::from_stream(s, IO_TIMEOUT)?;
        let v = question(&mut c, &heard[i])?;
        let ip = c
            .stream()
            .local_addr()
            .map(|a| a.ip().to_canonical())
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        Ok((v, ip))
    };
    if trackers.len() == 1 {
        return vec![(trackers[0], ask(0))];
    }
    let mut answers: Vec<Option<Answer<T>>> = trackers.iter().map(|_| None).collect();
    std::thread::scope(|scope| {
        let (tx, rx) = crossbeam_channel::bounded(trackers.len());
        for (i, t) in trackers.iter().enumerate() {
            let tx = tx.clone();
            let ask = &ask;
            let spawned = std::thread::Builder::new()
                .name(format!("ask-{t}"))
                .spawn_scoped(scope, move || {
                    let _ = tx.send((i, ask(i)));
                });
            if spawned.is_err() {
                // No thread to spare: ask on this one.
                answers[i] = Some(ask(i));
            }
        }
        drop(tx);
        let spared = |i: usize| heard[i].load(Ordering::SeqCst);
        let late = wait_answers(&rx, &mut answers, spared, |i| {
            cut.store(true, Ordering::SeqCst);
            if let Some(s) = lock(&streams[i]).as_ref() {
                let _ = s.shutdown(Shutdown::Both);
            }
        });
        for i in late {
            if matches!(answers[i], Some(Ok(_))) {
                continue;
            }
            answers[i] = Some(Err(PeerError::net(
                trackers[i],
                WireError::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no answer within {} ms of another tracker's",
                        TRACKER_GRACE.as_millis()
                    ),
                )),
            )));
        }
    });
    trackers
        .iter()
        .zip(answers)
        .map(|(&t, a)| {
            let a = a.unwrap_or_else(|| Err(PeerError::Invalid(format!("asking {t}: no answer"))));
            (t, a)
        })
        .collect()
}

/// Collects the answers of [`ask_all`]'s threads into `answers` until every
/// thread has ended; once one answer is good, waits at most
/// [`TRACKER_GRACE`] for the rest, then calls `cut_off` for each tracker
/// still silent and not `spared` (which makes its thread end) and returns
/// them.
fn wait_answers<T>(
    rx: &crossbeam_channel::Receiver<(usize, Answer<T>)>,
    answers: &mut [Option<Answer<T>>],
    spared: impl Fn(usize) -> bool,
    cut_off: impl Fn(usize),
) -> Vec<usize> {
    let mut deadline = None;
    let mut grace_over = false;
    let mut late = Vec::new();
    loop {
        let got = match deadline {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(d) => rx.recv_deadline(d),
        };
        match got {
            Ok((i, a)) => {
                if a.is_ok() && deadline.is_none() && !grace_over {
                    deadline = Some(Instant::now() + TRACKER_GRACE);
                }
                answers[i] = Some(a);
            }
            Err(RecvTimeoutError::Timeout) => {
                deadline = None;
                grace_over = true;
                for (i, a) in answers.iter().enumerate() {
                    if a.is_none() && !spared(i) {
                        late.push(i);
                        cut_off(i);
                    }
                }
            }
            Err(RecvTimeoutError::Disconnected) => return late,
        }
    }
}

/// The error for a question no tracker answered: with one tracker, its own
/// error; with several, one line naming each and why.
pub fn none_answered(mut failed: Vec<(SocketAddr, PeerError)>) -> PeerError {
    if failed.len() == 1 {
        return failed.remove(0).1;
    }
    let why: Vec<String> = failed.iter().map(|(t, e)| about(*t, e)).collect();
    PeerError::NoTracker(why.join("; "))
}

/// "ADDR: why", for what went wrong with tracker `t` (without saying the
/// address twice when the error already starts with it).
pub fn about(t: SocketAddr, e: &PeerError) -> String {
    let text = e.to_string();
    if text.starts_with(&t.to_string()) {
        text
    } else {
        format!("{t}: {text}")
    }
}

/// Every file on the network as the trackers in `trackers` list it,
/// merged: each name once (the first tracker's entry wins if two disagree
/// on its length), sorted by name; cut short if any tracker cut its list
/// short. An error only when no tracker answers.
pub fn list_files_all(trackers: &[SocketAddr]) -> Result<Merged<(Vec<FileSummary>, bool)>> {
    let mut lists = Vec::new();
    let mut failed = Vec::new();
    for (t, r) in ask_all(trackers, list_on) {
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

/// The tracker's list over `c`. A name that no tracker accepts from a peer
/// (`wire::validate_name`: control characters, such as a terminal's escape
/// sequences, `..`, …) is an error: that tracker is not believed.
fn list_on(c: &mut Conn) -> Result<(Vec<FileSummary>, bool)> {
    let (files, truncated) = match c.request(&Message::ListFiles)? {
        Message::FileList { files, truncated } => (files, truncated),
        other => return Err(unexpected(c.addr(), &other)),
    };
    if let Some((f, e)) = files
        .iter()
        .find_map(|f| crate::wire::validate_name(&f.name).err().map(|e| (f, e)))
    {
        return Err(PeerError::Protocol {
            who: c.addr().to_string(),
            what: format!("listed the invalid name {:?} ({e})", f.name),
        });
    }
    Ok((files, truncated))
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

/// Every file the trackers in `trackers` list, each described in full (a
/// `Locate` with hashes per file, over the one connection to each tracker,
/// every tracker at once): what `peer list --long` and `--json` show, with
/// each file's content id. Merged name by name as [`merge_descriptions`]
/// says, sorted by name; cut short if any tracker cut its list short. A
/// file that vanishes between the list and its `Locate` is left out. The
/// grace of [`ask_all`] cuts only a tracker that has not sent its list: one
/// that has is given the time to describe every file (each `Locate` under
/// its own deadline), as many as it lists. An error only when no tracker
/// answers; the trackers that did not, those whose description of a file
/// cannot be shown (no hashes, another name, a bad geometry: the whole
/// tracker is left out) and those describing other content under a name
/// (named in the error) are in `failed`.
pub fn describe_all(trackers: &[SocketAddr]) -> Result<Merged<(Vec<FileDescription>, bool)>> {
    let mut answers = Vec::new();
    let mut failed = Vec::new();
    for (t, r) in ask_all_heard(trackers, describe_every_file) {
        match r {
            Ok((a, _)) => answers.push((t, a)),
            Err(e) => failed.push((t, e)),
        }
    }
    if answers.is_empty() {
        return Err(none_answered(failed));
    }
    let truncated = answers.iter().any(|(_, (_, cut))| *cut);
    let (files, others) =
        merge_descriptions(answers.into_iter().map(|(t, (l, _))| (t, l)).collect());
    for (t, name) in others {
        failed.push((
            t,
            PeerError::Protocol {
                who: t.to_string(),
                what: format!("describes other content under the name {name:?}; left out"),
            },
        ));
    }
    Ok(Merged {
        value: (files, truncated),
        failed,
    })
}

/// One tracker's list, each file located with its hashes, in turn over
/// `c`. `heard` is set once the list has come: from then on the tracker is
/// answering, however many files it describes.
fn describe_every_file(c: &mut Conn, heard: &AtomicBool) -> Result<(Vec<FileDescription>, bool)> {
    let (files, truncated) = list_on(c)?;
    heard.store(true, Ordering::SeqCst);
    let mut described = Vec::with_capacity(files.len());
    for f in files {
        match locate_on(c, &f.name, true) {
            Ok(l) => described.push(usable_description(c.addr(), &f.name, l)?),
            Err(PeerError::Refused {
                code: ErrorCode::UnknownFile,
                ..
            }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok((described, truncated))
}

/// A file as [`describe_all`] gives it: its `Locations` with the hashes
/// folded into the content id and each source's bitmap into a count, so
/// describing every file of a large network keeps a few bytes per file and
/// source, not every hash and bitmap (up to 10 MiB and 4 MiB per file, for
/// up to 10,000 files per tracker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDescription {
    pub name: String,
    pub length: u64,
    pub chunk_size: u32,
    pub chunk_count: u32,
    /// The content id (protocol.md §4.1).
    pub id: ContentId,
    /// Each endpoint listed, and how many chunks it holds.
    pub sources: Vec<(SocketAddr, u32)>,
}

/// `l`, the answer to a `Locate` of `name` with hashes, if it can be shown
/// with a content id: of that name, with the hashes, of a valid geometry,
/// its bitmaps of the chunk count. Otherwise the tracker's whole
/// description is not used (it is named as left out), rather than one file
/// of one tracker failing the command.
fn usable_description(t: SocketAddr, name: &str, l: Locations) -> Result<FileDescription> {
    let why = if l.name != name {
        format!("answered a Locate of {name:?} about {:?}", l.name)
    } else if l.hashes.is_none() {
        format!("sent no chunk hashes for {name:?}")
    } else {
        match crate::chunks::Geometry::new(l.length, l.chunk_size) {
            Ok(g) if g.count() == l.chunk_count => match summarize(l) {
                Some(d) => return Ok(d),
                None => format!("sent a bad bitmap for {name:?}"),
            },
            Ok(_) => format!("described {name:?} with a wrong chunk count"),
            Err(e) => format!("described {name:?} with a bad geometry: {e}"),
        }
    };
    Err(PeerError::Protocol {
        who: t.to_string(),
        what: why,
    })
}

/// The [`FileDescription`] of a `Locations` with hashes; `None` without
/// hashes or with a bitmap that does not fit the chunk count.
fn summarize(l: Locations) -> Option<FileDescription> {
    let id = content_id(&l)?;
    let sources = l
        .sources
        .iter()
        .map(|s| {
            crate::chunks::Bitmap::from_bytes(l.chunk_count, &s.have)
                .ok()
                .map(|b| (s.addr, b.count_ones()))
        })
        .collect::<Option<Vec<_>>>()?;
    Some(FileDescription {
        name: l.name,
        length: l.length,
        chunk_size: l.chunk_size,
        chunk_count: l.chunk_count,
        id,
        sources,
    })
}

/// Merges several trackers' full descriptions (pure): name by name, in the
/// order of `answers`; the first tracker that describes a name says what it
/// is (a tracker with another content id is left out of that name), the
/// sources of the others are added, and an endpoint listed by several
/// counts the most chunks any of them lists for it. Returns the files
/// sorted by name and, for each tracker left out of a name,
/// `(tracker, name)`.
pub fn merge_descriptions(
    answers: Vec<(SocketAddr, Vec<FileDescription>)>,
) -> (Vec<FileDescription>, Vec<(SocketAddr, String)>) {
    let mut by_name: std::collections::BTreeMap<String, FileDescription> =
        std::collections::BTreeMap::new();
    let mut left_out = Vec::new();
    for (t, files) in answers {
        for d in files {
            let Some(m) = by_name.get_mut(&d.name) else {
                by_name.insert(d.name.clone(), d);
                continue;
            };
            let same = (m.length, m.chunk_size, m.chunk_count, m.id)
                == (d.length, d.chunk_size, d.chunk_count, d.id);
            if !same {
                left_out.push((t, d.name));
                continue;
            }
            for (addr, n) in d.sources {
                match m.sources.iter_mut().find(|(a, _)| *a == addr) {
                    Some((_, held)) => *held = (*held).max(n),
                    None => m.sources.push((addr, n)),
                }
            }
        }
    }
    (by_name.into_values().collect(), left_out)
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
    locate_all_pinned(trackers, name, with_hashes, None)
}

/// [`locate_all`] where, when `pin` is given (and hashes are asked for),
/// the first tracker whose answer has content id `pin` says what the file
/// is, wherever it is in `trackers`: the sources of trackers that describe
/// other content under the name are then left out. With no answer of that
/// id, as [`locate_all`] (the caller sees the id differ and refuses).
pub fn locate_all_pinned(
    trackers: &[SocketAddr],
    name: &str,
    with_hashes: bool,
    pin: Option<ContentId>,
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
    if let Some(pin) = pin
        && let Some(i) = found
            .iter()
            .position(|(_, l, _)| content_id(l) == Some(pin))
    {
        let chosen = found.remove(i);
        found.insert(0, chosen);
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

/// The content id of a file described with its hashes (`None` without).
pub fn content_id(l: &Locations) -> Option<ContentId> {
    l.hashes
        .as_deref()
        .map(|h| ContentId::compute(l.length, l.chunk_size, h))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{self, Source};
    use std::net::TcpListener;
    use std::thread;
    use std::time::Duration;

    fn file(name: &str, length: u64) -> FileSummary {
        FileSummary {
            name: name.into(),
            length,
        }
    }

    fn locs(length: u64, sources: &[(&str, &[u8])]) -> Locations {
        Locations {
            name: "f".into(),
            length,
            chunk_size: 1024,
            chunk_count: length.div_ceil(1024) as u32,
            hashes: None,
            sources: sources
                .iter()
                .map(|(a, have)| Source {
                    addr: a.parse().unwrap(),
                    have: have.to_vec(),
                })
                .collect(),
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn file_lists_merge_by_name_first_tracker_winning() {
        let (files, cut) = merge_file_lists(vec![
            (vec![file("b", 2), file("c", 3)], false),
            (vec![file("a", 1), file("b", 99)], true),
            (vec![], false),
        ]);
        assert_eq!(files, vec![file("a", 1), file("b", 2), file("c", 3)]);
        assert!(cut, "one list was cut short");
        assert_eq!(merge_file_lists(vec![]), (vec![], false));
    }

    #[test]
    fn descriptions_merge_name_by_name_and_name_who_was_left_out() {
        let (t1, t2) = (addr("10.0.0.1:7000"), addr("10.0.0.2:7000"));
        let named = |n: &str, l: Locations| {
            let hashes = Some(vec![[n.len() as u8; 20]; l.chunk_count as usize]);
            summarize(Locations {
                name: n.into(),
                hashes,
                ..l
            })
            .unwrap()
        };
        let (files, left_out) = merge_descriptions(vec![
            (
                t1,
                vec![
                    named("b", locs(2048, &[("1.1.1.1:1", &[0b1000_0000])])),
                    named("c", locs(1024, &[("1.1.1.1:1", &[0x80])])),
                    named("dd", locs(2048, &[("1.1.1.1:1", &[0b1000_0000])])),
                ],
            ),
            (
                t2,
                vec![
                    named("a", locs(1024, &[("2.2.2.2:2", &[0x80])])),
                    named("b", locs(2048, &[("2.2.2.2:2", &[0b0100_0000])])),
                    // Other content under c: left out of c only.
                    named("c", locs(4096, &[("2.2.2.2:2", &[0xf0])])),
                    // The same endpoint through both: the larger count.
                    named("dd", locs(2048, &[("1.1.1.1:1", &[0b1100_0000])])),
                ],
            ),
        ]);
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c", "dd"]);
        assert_eq!(files[1].sources.len(), 2, "b is held through both trackers");
        assert_eq!(files[2].length, 1024, "the first tracker says what c is");
        assert_eq!(files[2].sources, vec![(addr("1.1.1.1:1"), 1)]);
        assert_eq!(files[3].sources, vec![(addr("1.1.1.1:1"), 2)]);
        assert_eq!(left_out, vec![(t2, "c".to_string())]);
        // The same geometry with other hashes: other content.
        let f = named("f", locs(1024, &[("1.1.1.1:1", &[0x80])]));
        let g = FileDescription {
            id: ContentId([9; 20]),
            ..f.clone()
        };
        let (files, left_out) = merge_descriptions(vec![(t1, vec![f.clone()]), (t2, vec![g])]);
        assert_eq!(files, vec![f]);
        assert_eq!(left_out, vec![(t2, "f".to_string())]);
    }

    #[test]
    fn locations_merge_sources_and_or_their_bitmaps() {
        let t1 = addr("10.0.0.1:7000");
        let t2 = addr("10.0.0.2:7000");
        let t3 = addr("10.0.0.3:7000");
        let (m, others) = merge_locations(vec![
            (
                t1,
                locs(
                    8192,
                    &[("1.1.1.1:1", &[0b1000_0000]), ("2.2.2.2:2", &[0xff])],
                ),
            ),
            // Lags behind on 1.1.1.1, knows 3.3.3.3 too.
            (
                t2,
                locs(
                    8192,
                    &[("3.3.3.3:3", &[0x0f]), ("1.1.1.1:1", &[0b0100_0000])],
                ),
            ),
            // Other content under the name: left out.
            (t3, locs(4096, &[("4.4.4.4:4", &[0xf0])])),
        ]);
        assert_eq!(others, vec![t3]);
        assert_eq!(m.length, 8192);
        let got: Vec<(String, Vec<u8>)> = m
            .sources
            .iter()
            .map(|s| (s.addr.to_string(), s.have.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("1.1.1.1:1".into(), vec![0b1100_0000]),
                ("2.2.2.2:2".into(), vec![0xff]),
                ("3.3.3.3:3".into(), vec![0x0f]),
            ]
        );
    }

    #[test]
    fn locations_with_other_hashes_are_other_content() {
        let mut a = locs(1024, &[("1.1.1.1:1", &[0x80])]);
        let mut b = locs(1024, &[("2.2.2.2:2", &[0x80])]);
        a.hashes = Some(vec![crate::chunks::sha1(b"a")]);
        b.hashes = Some(vec![crate::chunks::sha1(b"b")]);
        let t2 = addr("10.0.0.2:7000");
        let (m, others) = merge_locations(vec![(addr("10.0.0.1:7000"), a.clone()), (t2, b)]);
        assert_eq!(others, vec![t2]);
        assert_eq!(m, a);
        // Hashes only in a later answer are taken.
        let mut c = a.clone();
        a.hashes = None;
        c.sources.clear();
        let (m, others) = merge_locations(vec![(addr("10.0.0.1:7000"), a), (t2, c.clone())]);
        assert!(others.is_empty());
        assert_eq!(m.hashes, c.hashes);
    }

    /// A tracker that answers one ListFiles with `names`.
    fn answering(names: &'static [&'static str]) -> (SocketAddr, thread::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        let h = thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut r = std::io::BufReader::new(s.try_clone().unwrap());
            assert!(matches!(
                wire::read_message(&mut r),
                Ok(Some(Message::Hello { .. }))
            ));
            wire::write_message(
                &mut s,
                &Message::Hello {
                    version: wire::PROTOCOL_VERSION,
                },
            )
            .unwrap();
            assert_eq!(
                wire::read_message(&mut r).unwrap(),
                Some(Message::ListFiles)
            );
            let files = names.iter().map(|n| file(n, 1)).collect();
            let reply = Message::FileList {
                files,
                truncated: false,
            };
            wire::write_message(&mut s, &reply).unwrap();
        });
        (a, h)
    }

    /// A tracker that lists `names` and describes each (with hashes when
    /// asked, or never when `hashless`) after `delay`: one connection.
    fn describing(
        names: &'static [&'static str],
        delay: Duration,
        hashless: bool,
    ) -> (SocketAddr, thread::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        let h = thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut r = std::io::BufReader::new(s.try_clone().unwrap());
            let hello = Message::Hello {
                version: wire::PROTOCOL_VERSION,
            };
            while let Ok(Some(m)) = wire::read_message(&mut r) {
                let reply = match m {
                    Message::Hello { .. } => hello.clone(),
                    Message::ListFiles => Message::FileList {
                        files: names.iter().map(|n| file(n, 1)).collect(),
                        truncated: false,
                    },
                    Message::Locate { name, with_hashes } => {
                        thread::sleep(delay);
                        let h = crate::chunks::sha1(name.as_bytes());
                        Message::Locations(Locations {
                            name,
                            hashes: (with_hashes && !hashless).then(|| vec![h]),
                            ..locs(1, &[("10.0.0.9:1", &[0x80])])
                        })
                    }
                    _ => return,
                };
                if wire::write_message(&mut s, &reply).is_err() {
                    return;
                }
            }
        });
        (a, h)
    }

    /// Review: describing takes a Locate per file, so a tracker with many
    /// files (or far away) answers its last one long after a tracker with
    /// few has finished. It has answered, and keeps answering: the grace
    /// meant for trackers that say nothing must not cut it.
    #[test]
    fn a_tracker_describing_many_files_is_not_cut_by_the_grace() {
        const MANY: &[&str] = &["m0", "m1", "m2", "m3", "m4", "m5", "m6", "m7"];
        let (few, h1) = describing(&["a"], Duration::ZERO, false);
        let step = TRACKER_GRACE / 4;
        let (many, h2) = describing(MANY, step, false);
        let m = describe_all(&[few, many]).unwrap();
        h1.join().unwrap();
        h2.join().unwrap();
        let failed: Vec<String> = m.failed.iter().map(|(t, e)| about(*t, e)).collect();
        assert!(failed.is_empty(), "{failed:?}");
        let names: Vec<&str> = m.value.0.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names.len(), 1 + MANY.len(), "{names:?}");
    }

    /// Review: a tracker that describes a file without the hashes asked
    /// for gives no content id; `list --json` then failed as a whole,
    /// though the other trackers answered well. That tracker is left out
    /// (named), like one that does not answer.
    #[test]
    fn a_tracker_describing_a_file_without_hashes_is_left_out() {
        let (good, h1) = describing(&["a"], Duration::ZERO, false);
        let (bad, h2) = describing(&["z"], Duration::ZERO, true);
        let m = describe_all(&[good, bad]).unwrap();
        h1.join().unwrap();
        h2.join().unwrap();
        let names: Vec<&str> = m.value.0.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["a"]);
        let failed: Vec<SocketAddr> = m.failed.iter().map(|(t, _)| *t).collect();
        assert_eq!(failed, vec![bad]);
        assert!(
            m.failed[0].1.to_string().contains("no chunk hashes"),
            "{}",
            m.failed[0].1
        );
        // Alone, it is the error.
        let (bad, h3) = describing(&["z"], Duration::ZERO, true);
        let e = describe_all(&[bad]).unwrap_err();
        h3.join().unwrap();
        assert!(matches!(e, PeerError::Protocol { .. }), "{e}");
    }

    /// Review: names come from the tracker; one that no tracker would
    /// accept from a peer (here a terminal escape) is printed as is by
    /// `peer list` and `list --long`. Such a tracker is left out, named.
    #[test]
    fn a_tracker_listing_a_name_no_peer_could_register_is_left_out() {
        const BAD: &[&str] = &["ok", "clear\u{1b}[2J"];
        let (good, h1) = answering(&["x"]);
        let (bad, h2) = answering(BAD);
        let m = list_files_all(&[good, bad]).unwrap();
        h1.join().unwrap();
        h2.join().unwrap();
        assert_eq!(m.value.0, vec![file("x", 1)]);
        let failed: Vec<SocketAddr> = m.failed.iter().map(|(t, _)| *t).collect();
        assert_eq!(failed, vec![bad]);
        let (good, h1) = describing(&["x"], Duration::ZERO, false);
        let (bad, h2) = describing(BAD, Duration::ZERO, false);
        let m = describe_all(&[good, bad]).unwrap();
        h1.join().unwrap();
        h2.join().unwrap();
        let names: Vec<&str> = m.value.0.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["x"]);
        let failed: Vec<SocketAddr> = m.failed.iter().map(|(t, _)| *t).collect();
        assert_eq!(failed, vec![bad]);
    }

    /// An address nothing listens on.
    fn dead() -> SocketAddr {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    }

    #[test]
    fn a_silent_tracker_costs_the_grace_not_the_timeout_and_a_dead_one_is_named() {
        // Accepts (the kernel does) and never answers.
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let s = silent.local_addr().unwrap();
        let (good, h) = answering(&["x", "y"]);
        let d = dead();
        let t0 = Instant::now();
        let m = list_files_all(&[s, good, d]).unwrap();
        let took = t0.elapsed();
        h.join().unwrap();
        assert_eq!(m.value.0, vec![file("x", 1), file("y", 1)]);
        let failed: Vec<SocketAddr> = m.failed.iter().map(|(t, _)| *t).collect();
        assert_eq!(failed, vec![s, d]);
        assert!(
            m.failed[0].1.to_string().contains("no answer within"),
            "{}",
            m.failed[0].1
        );
        assert!(took < TRACKER_GRACE + Duration::from_secs(2), "{took:?}");
    }

    #[test]
    fn no_tracker_answering_is_one_clear_error() {
        let (a, b) = (dead(), dead());
        let e = list_files_all(&[a, b]).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, PeerError::NoTracker(_)), "{text}");
        assert!(text.starts_with("no tracker answers"), "{text}");
        assert!(
            text.contains(&a.to_string()) && text.contains(&b.to_string()),
            "{text}"
        );
        // One tracker: its own error, as before.
        let e = list_files_all(&[a]).unwrap_err();
        assert!(matches!(e, PeerError::Net { .. }), "{e}");
    }

    /// A tracker (or peer) that accepts and then says nothing is named in
    /// one plain sentence, not "Resource temporarily unavailable": in the
    /// Hello, and in a request on a connection that was greeted.
    #[test]
    fn a_silent_server_did_not_answer_within_the_timeout() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = thread::spawn(move || {
            // The first connection: never answered.
            let (silent, _) = l.accept().unwrap();
            // The second: greeted, then silent.
            let (s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut r = std::io::BufReader::new(s.try_clone().unwrap());
            let _ = wire::read_message(&mut r);
            let mut w = s.try_clone().unwrap();
            wire::write_message(
                &mut w,
                &Message::Hello {
                    version: wire::PROTOCOL_VERSION,
                },
            )
            .unwrap();
            let _ = wire::read_message(&mut r);
            // Keep both sockets open until the client has given up.
            let _ = wire::read_message(&mut r);
            drop(silent);
        });
        let timeout = Duration::from_millis(300);
        let want = format!("{addr} did not answer within 0.3 s");
        let e = Conn::connect(addr, timeout).err().expect("no Hello came");
        assert!(matches!(e, PeerError::Net { .. }), "{e}");
        assert_eq!(e.to_string(), want);
        // As the command line prints it (with its causes): once.
        assert_eq!(crate::error_chain(&e), want);
        let mut c = Conn::connect(addr, timeout).unwrap();
        let e = c.request(&Message::ListFiles).unwrap_err();
        assert_eq!(e.to_string(), want);
        c.stream().shutdown(std::net::Shutdown::Both).unwrap();
        server.join().unwrap();
    }
}
