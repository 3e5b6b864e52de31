//! The tracker's registry: which peer holds which chunks of which file.
//!
//! Owns: the in-memory tables (files by name, peers by connection id,
//! endpoints; per file, its sources grouped by address, which Locate
//! samples from) and the rules for changing them (registration, conflicts,
//! chunk registers, removal of a peer with all its chunks), and the copies
//! the dashboard reads (`files_view`, `file_detail`, `stats`; per holder,
//! when it started and its gains over the last seconds). Pure data: no
//! sockets, no clock of its own (the server tells it the current second),
//! no threads; the server wraps it in a Mutex and holds the lock only for
//! these calls.
//!
//! Why caps per address as well as per connection: one host may open many
//! control connections (up to `TRACKER_MAX_PER_IP`), so per-connection caps
//! alone would let it claim the whole registry-wide budget and have every
//! other peer's new files refused. The chunks of all connections from one
//! address (IPv4 address or IPv6 /64, the same grouping as connection
//! admission) are summed and capped at [`MAX_CHUNKS_PER_ADDRESS`].
//!
//! Calls `wire` (message types, name rule), `chunks` (geometry, bitmaps)
//! `limits` and `net::admission` (which addresses count as one host).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::chunks::{Bitmap, Digest, Geometry};
use crate::net::admission;
use crate::wire::{self, ErrorCode, FileEntry, FileOutcome, FileSummary, Have, NameError};

/// Identifies one control connection (and so one peer) for its lifetime.
pub type ConnId = u64;

pub use crate::limits::{
    MAX_CHUNKS_PER_ADDRESS, MAX_CHUNKS_PER_PEER, MAX_FILES_PER_PEER, MAX_REPLY_SOURCES_PER_ADDRESS,
    MAX_TOTAL_CHUNKS,
};

/// The registry's size caps; [`Caps::default`] is the limits of
/// `crate::limits` (tests use small ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Files one registration (connection) may hold.
    pub files_per_peer: usize,
    /// Chunks one registration may claim, summed over its files.
    pub chunks_per_peer: u64,
    /// Chunks all registrations from one address may claim together.
    pub chunks_per_address: u64,
    /// Chunks in the whole registry, each file counted once.
    pub total_chunks: u64,
    /// Endpoints of one address in a Locations reply, when other addresses
    /// hold the file too.
    pub reply_sources_per_address: usize,
}

impl Default for Caps {
    fn default() -> Caps {
        Caps {
            files_per_peer: MAX_FILES_PER_PEER,
            chunks_per_peer: MAX_CHUNKS_PER_PEER,
            chunks_per_address: MAX_CHUNKS_PER_ADDRESS,
            total_chunks: MAX_TOTAL_CHUNKS,
            reply_sources_per_address: MAX_REPLY_SOURCES_PER_ADDRESS,
        }
    }
}

/// Why the registry refused a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryError {
    /// ChunkRegister before Register on this connection.
    NotRegistered,
    /// No file of that name is known.
    UnknownFile(String),
    /// The chunk index is past the file's last chunk.
    BadIndex {
        name: String,
        index: u32,
        count: u32,
    },
    /// The name breaks [`wire::validate_name`].
    InvalidName(NameError),
    /// The name is known with other content.
    Conflict(String),
    /// Length, chunk size and hash count do not fit together.
    BadGeometry(String),
    /// A per-peer or registry-wide size cap would be exceeded.
    Full(String),
}

impl RegistryError {
    /// The wire error code for this refusal.
    pub fn code(&self) -> ErrorCode {
        match self {
            RegistryError::NotRegistered => ErrorCode::NotRegistered,
            RegistryError::UnknownFile(_) => ErrorCode::UnknownFile,
            RegistryError::BadIndex { .. } => ErrorCode::BadIndex,
            RegistryError::InvalidName(_) => ErrorCode::InvalidName,
            RegistryError::Conflict(_) => ErrorCode::Conflict,
            RegistryError::BadGeometry(_) => ErrorCode::BadGeometry,
            RegistryError::Full(_) => ErrorCode::Busy,
        }
    }
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryError::NotRegistered => {
                f.write_str("send Register before ChunkRegister or Withdraw")
            }
            RegistryError::UnknownFile(n) => write!(f, "no file named {n:?}"),
            RegistryError::BadIndex { name, index, count } => {
                write!(
                    f,
                    "chunk {index} of {name:?} is out of range (it has {count} chunks)"
                )
            }
            RegistryError::InvalidName(e) => e.fmt(f),
            RegistryError::Conflict(s) | RegistryError::BadGeometry(s) | RegistryError::Full(s) => {
                f.write_str(s)
            }
        }
    }
}

impl std::error::Error for RegistryError {}

/// What a file is: its geometry and chunk hashes. Two registrations are the
/// same file exactly when these are equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    pub geometry: Geometry,
    /// Shared so a Locations reply can be built outside the lock.
    pub hashes: Arc<[Digest]>,
}

/// A snapshot for one Locations reply, copied out under the lock.
#[derive(Debug, Clone)]
pub struct LocateSnapshot {
    pub meta: FileMeta,
    /// (endpoint, have-bitmap bytes) of each sampled source.
    pub sources: Vec<(SocketAddr, Vec<u8>)>,
}

/// One holder of a file: the chunks it holds, and the two facts the
/// dashboard shows about it (when it became a holder, how fast it gains
/// chunks), in a fixed 24 bytes beside the bitmap.
struct Holder {
    have: Bitmap,
    /// The registry's second ([`Registry::set_clock`]) it became a holder.
    since: u32,
    gains: Gains,
}

impl Holder {
    fn new(have: Bitmap, now: u32) -> Holder {
        Holder {
            have,
            since: now,
            gains: Gains::starting(now),
        }
    }
}

/// Seconds of chunk gains a holder remembers: a ring indexed by second, so
/// recording a gain is O(1) and the memory is fixed whatever the speed.
const GAIN_SLOTS: usize = 8;

/// Chunks gained in each of the last [`GAIN_SLOTS`] seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gains {
    /// The latest second a slot was cleared for.
    last: u32,
    per_second: [u16; GAIN_SLOTS],
}

impl Gains {
    /// No gains yet, at second `now`.
    pub fn starting(now: u32) -> Gains {
        Gains {
            last: now,
            per_second: [0; GAIN_SLOTS],
        }
    }

    /// Counts one chunk gained during second `now` (a `now` before the
    /// latest one counts in the latest one).
    pub fn add(&mut self, now: u32) {
        if now > self.last {
            if (now - self.last) as usize >= GAIN_SLOTS {
                self.per_second = [0; GAIN_SLOTS];
            } else {
                for s in self.last + 1..=now {
                    self.per_second[s as usize % GAIN_SLOTS] = 0;
                }
            }
            self.last = now;
        }
        let slot = &mut self.per_second[self.last as usize % GAIN_SLOTS];
        *slot = slot.saturating_add(1);
    }

    /// Chunks per second over the last `window` complete seconds before
    /// `now` (fewer if the holder started less than `window` seconds ago at
    /// `since`; 0 in its first second).
    pub fn rate(&self, now: u32, since: u32, window: u32) -> f64 {
        let window = window.clamp(1, GAIN_SLOTS as u32 - 1);
        let from = now.saturating_sub(window).max(since);
        if from >= now {
            return 0.0;
        }
        let sum: u32 = (from..now)
            .filter(|&s| s <= self.last && self.last - s < GAIN_SLOTS as u32)
            .map(|s| u32::from(self.per_second[s as usize % GAIN_SLOTS]))
            .sum();
        f64::from(sum) / f64::from(now - from)
    }
}

struct FileRecord {
    meta: FileMeta,
    holders: HashMap<ConnId, Holder>,
    /// The holders that are sources, grouped by address
    /// (`admission::key`), each group sorted by connection id: kept up to
    /// date with `holders` by [`FileRecord::sync`], so a Locate samples
    /// from it without walking every holder under the lock.
    sources: BTreeMap<IpAddr, Vec<(ConnId, SocketAddr)>>,
    /// Where each connection is in `sources` (its endpoint when indexed),
    /// and whether it holds every chunk.
    indexed: HashMap<ConnId, (SocketAddr, bool)>,
    /// How many of `indexed` hold every chunk.
    complete: usize,
}

impl FileRecord {
    fn new(meta: FileMeta) -> FileRecord {
        FileRecord {
            meta,
            holders: HashMap::new(),
            sources: BTreeMap::new(),
            indexed: HashMap::new(),
            complete: 0,
        }
    }

    fn source_count(&self) -> usize {
        self.indexed.len()
    }

    /// Brings `conn`'s entry in `sources` in line with `holders`: indexed
    /// at `endpoint` if it holds the file and is a source, absent
    /// otherwise (`endpoint` None: the connection is going away).
    fn sync(&mut self, conn: ConnId, endpoint: Option<SocketAddr>) {
        let holder = self.holders.get(&conn).map(|h| &h.have);
        let want = endpoint.filter(|_| holder.is_some_and(is_source));
        let full = want.is_some() && holder.is_some_and(Bitmap::is_full);
        let current = self.indexed.get(&conn).copied();
        if current.map(|c| c.0) == want {
            // Same place in the index; only completeness may have changed.
            if let Some((ep, was_full)) = current
                && was_full != full
            {
                self.indexed.insert(conn, (ep, full));
                self.count_complete(was_full, full);
            }
            return;
        }
        if let Some((ep, was_full)) = current {
            self.count_complete(was_full, false);
            let key = admission::key(ep.ip());
            if let Some(g) = self.sources.get_mut(&key) {
                if let Ok(i) = g.binary_search(&(conn, ep)) {
                    g.remove(i);
                }
                if g.is_empty() {
                    self.sources.remove(&key);
                }
            }
            self.indexed.remove(&conn);
        }
        if let Some(ep) = want {
            let g = self.sources.entry(admission::key(ep.ip())).or_default();
            if let Err(i) = g.binary_search(&(conn, ep)) {
                g.insert(i, (conn, ep));
            }
            self.indexed.insert(conn, (ep, full));
            self.count_complete(false, full);
        }
    }

    /// Keeps `complete` in step with one entry of `indexed` changing from
    /// `was` to `is` complete.
    fn count_complete(&mut self, was: bool, is: bool) {
        match (was, is) {
            (false, true) => self.complete += 1,
            (true, false) => self.complete = self.complete.saturating_sub(1),
            _ => {}
        }
    }
}

/// A holder is a source if it has a chunk, or the file has no chunks at all.
fn is_source(b: &Bitmap) -> bool {
    b.count_ones() > 0 || b.is_empty()
}

struct PeerRecord {
    endpoint: SocketAddr,
    files: HashSet<String>,
    /// Sum of the chunk counts of `files` (for [`MAX_CHUNKS_PER_PEER`]).
    chunks: u64,
}

/// All tracker state.
#[derive(Default)]
pub struct Registry {
    caps: Caps,
    /// Sorted, so a file list needs no sort under the lock.
    files: BTreeMap<String, FileRecord>,
    /// Sum of the chunk counts of `files` (for [`MAX_TOTAL_CHUNKS`]).
    total_chunks: u64,
    peers: HashMap<ConnId, PeerRecord>,
    endpoints: HashMap<SocketAddr, ConnId>,
    /// Per address (`admission::key`), the sum of its peers' `chunks` (for
    /// [`MAX_CHUNKS_PER_ADDRESS`]); no entry at zero.
    per_address: HashMap<IpAddr, u64>,
    /// The current second, as the server last told it ([`Registry::set_clock`]):
    /// stamps when a holder started and when it gained chunks.
    now: u32,
    /// The sums [`Registry::stats`] reports, kept up to date by every change
    /// (each file's share is O(1) to compute: [`Totals::of`]), so /metrics
    /// holds the lock for O(1), not for a walk of every file.
    totals: Totals,
}

/// Holders, sources, address groups and estimated bytes of the files'
/// tables, summed over every file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Totals {
    holders: usize,
    sources: usize,
    groups: usize,
    /// The file entries, names, hash lists, and the holders' entries,
    /// bitmaps and copies of the name (sources and groups are counted
    /// above and priced in [`Registry::stats`]).
    bytes: u64,
}

impl Totals {
    /// One file's share.
    fn of(name: &str, r: &FileRecord) -> Totals {
        let holders = r.holders.len();
        let name_len = name.len() as u64;
        let bitmap = u64::from(r.meta.geometry.count()).div_ceil(8);
        let file = std::mem::size_of::<(String, FileRecord)>() as u64
            + name_len
            + std::mem::size_of_val(&*r.meta.hashes) as u64;
        // Each holder: its entry and bitmap, and the copy of the name in
        // the peer's set of names.
        let holder = map_entry::<(ConnId, Holder)>() + bitmap + map_entry::<String>() + name_len;
        Totals {
            holders,
            sources: r.indexed.len(),
            groups: r.sources.len(),
            bytes: file + holders as u64 * holder,
        }
    }

    /// Replaces a file's share `was` by `is` (`Totals::default()` for a
    /// file that did not or does not exist).
    fn replace(&mut self, was: Totals, is: Totals) {
        self.holders = (self.holders + is.holders).saturating_sub(was.holders);
        self.sources = (self.sources + is.sources).saturating_sub(was.sources);
        self.groups = (self.groups + is.groups).saturating_sub(was.groups);
        self.bytes = (self.bytes + is.bytes).saturating_sub(was.bytes);
    }
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// A registry with other caps than the defaults.
    pub fn with_caps(caps: Caps) -> Registry {
        Registry {
            caps,
            ..Registry::default()
        }
    }

    /// Chunks claimed by all registrations from `ip`'s address.
    pub fn address_chunks(&self, ip: IpAddr) -> u64 {
        self.per_address
            .get(&admission::key(ip))
            .copied()
            .unwrap_or(0)
    }

    /// Adds `delta` chunks to `conn`'s count and to its address's.
    fn charge(&mut self, conn: ConnId, delta: u64) {
        if let Some(p) = self.peers.get_mut(&conn) {
            p.chunks += delta;
            *self
                .per_address
                .entry(admission::key(p.endpoint.ip()))
                .or_insert(0) += delta;
        }
    }

    /// Takes `delta` chunks off `conn`'s count and its address's.
    fn refund(&mut self, conn: ConnId, delta: u64) {
        if let Some(p) = self.peers.get_mut(&conn) {
            p.chunks = p.chunks.saturating_sub(delta);
            refund_address(&mut self.per_address, p.endpoint.ip(), delta);
        }
    }

    /// Why `conn` may not claim `count` more chunks (a file it does not
    /// hold yet), if it may not.
    fn over_cap(&self, conn: ConnId, count: u64) -> Option<RegistryError> {
        let caps = self.caps;
        let peer = self.peers.get(&conn)?;
        if peer.files.len() >= caps.files_per_peer {
            return Some(RegistryError::Full(format!(
                "a peer may hold at most {} files",
                caps.files_per_peer
            )));
        }
        if peer.chunks + count > caps.chunks_per_peer {
            return Some(RegistryError::Full(format!(
                "a peer may hold at most {} chunks in all",
                caps.chunks_per_peer
            )));
        }
        let ip = admission::key(peer.endpoint.ip());
        let used = self.address_chunks(ip);
        if used + count > caps.chunks_per_address {
            return Some(RegistryError::Full(format!(
                "the connections from {ip} already hold {used} chunks; one address may hold at most {} (this file has {count})",
                caps.chunks_per_address
            )));
        }
        None
    }

    /// Binds `conn` to `endpoint` and adds its files; one outcome per file,
    /// in order. Another connection already bound to the same endpoint is a
    /// stale one (the peer reconnected before its old connection timed out)
    /// and is removed with its chunks; its id is returned so the server can
    /// log it.
    pub fn register(
        &mut self,
        conn: ConnId,
        endpoint: SocketAddr,
        files: Vec<FileEntry>,
    ) -> (Vec<FileOutcome>, Option<ConnId>) {
        let mut evicted = None;
        if let Some(&other) = self.endpoints.get(&endpoint)
            && other != conn
        {
            self.remove_peer(other);
            evicted = Some(other);
        }
        let peer = self.peers.entry(conn).or_insert_with(|| PeerRecord {
            endpoint,
            files: HashSet::new(),
            chunks: 0,
        });
        if peer.endpoint != endpoint {
            if self.endpoints.get(&peer.endpoint) == Some(&conn) {
                self.endpoints.remove(&peer.endpoint);
            }
            let old = std::mem::replace(&mut peer.endpoint, endpoint);
            let chunks = peer.chunks;
            let names: Vec<String> = peer.files.iter().cloned().collect();
            refund_address(&mut self.per_address, old.ip(), chunks);
            *self
                .per_address
                .entry(admission::key(endpoint.ip()))
                .or_insert(0) += chunks;
            for name in names {
                if let Some(r) = self.files.get_mut(&name) {
                    let was = Totals::of(&name, r);
                    r.sync(conn, Some(endpoint));
                    self.totals.replace(was, Totals::of(&name, r));
                }
            }
        }
        self.endpoints.insert(endpoint, conn);
        let outcomes = files
            .into_iter()
            .map(|f| match self.add_file(conn, f) {
                Ok(()) => FileOutcome::Accepted,
                Err(e) => FileOutcome::refused(e.code(), e.to_string()),
            })
            .collect();
        (outcomes, evicted)
    }

    fn add_file(&mut self, conn: ConnId, f: FileEntry) -> Result<(), RegistryError> {
        wire::validate_name(&f.name).map_err(RegistryError::InvalidName)?;
        let geometry = Geometry::with_hashes(f.length, f.chunk_size, f.hashes.len())
            .map_err(|e| RegistryError::BadGeometry(e.to_string()))?;
        let have = match &f.have {
            Have::All => Bitmap::full(geometry.count()),
            Have::Some(bits) => Bitmap::from_bytes(geometry.count(), bits)
                .map_err(|e| RegistryError::BadGeometry(e.to_string()))?,
        };
        let count = u64::from(geometry.count());
        let Some(peer) = self.peers.get(&conn) else {
            return Err(RegistryError::NotRegistered);
        };
        if !peer.files.contains(&f.name)
            && let Some(e) = self.over_cap(conn, count)
        {
            return Err(e);
        }
        if let Some(r) = self.files.get(&f.name) {
            let same = r.meta.geometry == geometry && *r.meta.hashes == *f.hashes;
            if !same && r.source_count() > 0 {
                return Err(RegistryError::Conflict(format!(
                    "the name is already registered with other content ({} bytes in {}-byte chunks)",
                    r.meta.geometry.length(),
                    r.meta.geometry.chunk_size()
                )));
            }
            if !same {
                // Only holders without a single chunk claim the name: they
                // serve nothing, so the new content takes it over. This
                // connection may have been one of them: the new content is
                // new to it, so the caps apply now.
                self.forget_file(&f.name);
                if let Some(e) = self.over_cap(conn, count) {
                    return Err(e);
                }
            }
        }
        if !self.files.contains_key(&f.name) {
            if self.total_chunks + count > self.caps.total_chunks {
                return Err(RegistryError::Full(format!(
                    "the tracker is full ({} chunks registered)",
                    self.total_chunks
                )));
            }
            self.total_chunks += count;
            let record = FileRecord::new(FileMeta {
                geometry,
                hashes: f.hashes.into(),
            });
            let is = Totals::of(&f.name, &record);
            self.totals.replace(Totals::default(), is);
            self.files.insert(f.name.clone(), record);
        }
        let endpoint = self.peers.get(&conn).map(|p| p.endpoint);
        if let Some(record) = self.files.get_mut(&f.name) {
            let was = Totals::of(&f.name, record);
            // A re-register states what the peer holds now: replace, not
            // merge (when it became a holder and its recent gains stay).
            let now = self.now;
            match record.holders.get_mut(&conn) {
                Some(h) => h.have = have,
                None => {
                    record.holders.insert(conn, Holder::new(have, now));
                }
            }
            record.sync(conn, endpoint);
            self.totals.replace(was, Totals::of(&f.name, record));
        }
        if self
            .peers
            .get_mut(&conn)
            .is_some_and(|p| p.files.insert(f.name))
        {
            self.charge(conn, count);
        }
        Ok(())
    }

    /// Drops a file and every holder's claim on it.
    fn forget_file(&mut self, name: &str) {
        let Some(r) = self.files.remove(name) else {
            return;
        };
        self.totals.replace(Totals::of(name, &r), Totals::default());
        let count = u64::from(r.meta.geometry.count());
        self.total_chunks -= count;
        for id in r.holders.keys() {
            if self.peers.get_mut(id).is_some_and(|p| p.files.remove(name)) {
                self.refund(*id, count);
            }
        }
    }

    /// Records that `conn` now holds chunk `index` of `name`. Idempotent.
    pub fn chunk_register(
        &mut self,
        conn: ConnId,
        name: &str,
        index: u32,
    ) -> Result<(), RegistryError> {
        let peer = self.peers.get(&conn).ok_or(RegistryError::NotRegistered)?;
        let g = self
            .files
            .get(name)
            .ok_or_else(|| RegistryError::UnknownFile(name.to_owned()))?
            .meta
            .geometry;
        let i = g.index(index).ok_or_else(|| RegistryError::BadIndex {
            name: name.to_owned(),
            index,
            count: g.count(),
        })?;
        if !peer.files.contains(name) {
            let count = u64::from(g.count());
            if let Some(e) = self.over_cap(conn, count) {
                return Err(e);
            }
            if let Some(p) = self.peers.get_mut(&conn) {
                p.files.insert(name.to_owned());
            }
            self.charge(conn, count);
        }
        let endpoint = self.peers.get(&conn).map(|p| p.endpoint);
        let now = self.now;
        let Some(record) = self.files.get_mut(name) else {
            return Err(RegistryError::UnknownFile(name.to_owned()));
        };
        let was = Totals::of(name, record);
        let holder = record
            .holders
            .entry(conn)
            .or_insert_with(|| Holder::new(Bitmap::new(g.count()), now));
        if holder.have.set(i.get()) {
            holder.gains.add(now);
        }
        record.sync(conn, endpoint);
        self.totals.replace(was, Totals::of(name, record));
        Ok(())
    }

    /// Withdraw: `conn` no longer holds any chunk of `name`. It stops being
    /// a holder (and a source) of the file, and its chunks of it are
    /// refunded to its caps; the file is forgotten when it was the last
    /// holder, so the name may then be registered with other content. A
    /// name `conn` does not hold (never registered, already withdrawn, not
    /// even a valid name) changes nothing: `Ok(false)`, so a withdrawal
    /// repeated after a lost reply is harmless. `NotRegistered` before the
    /// connection's first Register.
    pub fn withdraw(&mut self, conn: ConnId, name: &str) -> Result<bool, RegistryError> {
        let peer = self
            .peers
            .get_mut(&conn)
            .ok_or(RegistryError::NotRegistered)?;
        if !peer.files.remove(name) {
            return Ok(false);
        }
        let Some(r) = self.files.get_mut(name) else {
            return Ok(true); // cannot happen: a peer's files are all recorded
        };
        let count = u64::from(r.meta.geometry.count());
        let was = Totals::of(name, r);
        r.holders.remove(&conn);
        r.sync(conn, None);
        if r.holders.is_empty() {
            self.total_chunks -= count;
            self.files.remove(name);
            self.totals.replace(was, Totals::default());
        } else {
            self.totals.replace(was, Totals::of(name, r));
        }
        self.refund(conn, count);
        Ok(true)
    }

    /// Removes a peer and every chunk it held; files left with no holder
    /// are forgotten (so the name can later be registered with other
    /// content). Returns false if the connection never registered.
    pub fn remove_peer(&mut self, conn: ConnId) -> bool {
        let Some(peer) = self.peers.remove(&conn) else {
            return false;
        };
        if self.endpoints.get(&peer.endpoint) == Some(&conn) {
            self.endpoints.remove(&peer.endpoint);
        }
        refund_address(&mut self.per_address, peer.endpoint.ip(), peer.chunks);
        for name in peer.files {
            if let Some(r) = self.files.get_mut(&name) {
                let was = Totals::of(&name, r);
                r.holders.remove(&conn);
                r.sync(conn, None);
                if r.holders.is_empty() {
                    self.total_chunks -= u64::from(r.meta.geometry.count());
                    self.files.remove(&name);
                    self.totals.replace(was, Totals::default());
                } else {
                    self.totals.replace(was, Totals::of(&name, r));
                }
            }
        }
        true
    }

    /// The connection bound to `endpoint`, if any.
    pub fn holder(&self, endpoint: SocketAddr) -> Option<ConnId> {
        self.endpoints.get(&endpoint).copied()
    }

    /// The endpoint `conn` registered, if any.
    pub fn endpoint(&self, conn: ConnId) -> Option<SocketAddr> {
        self.peers.get(&conn).map(|p| p.endpoint)
    }

    /// Number of registered peers.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Files with at least one source, sorted by name; at most `max`, and
    /// whether the list was cut short.
    pub fn list(&self, max: usize) -> (Vec<FileSummary>, bool) {
        let mut files: Vec<FileSummary> = self
            .files
            .iter()
            .filter(|(_, r)| r.source_count() > 0)
            .map(|(name, r)| FileSummary {
                name: name.clone(),
                length: r.meta.geometry.length(),
            })
            .take(max.saturating_add(1))
            .collect();
        let truncated = files.len() > max;
        files.truncate(max);
        (files, truncated)
    }

    /// The file's meta and up to `max_sources` sources. Holders with no
    /// chunk are not sources.
    ///
    /// Which sources, when more hold the file: a sample chosen with `seed`
    /// (so repeated queries see different peers and load spreads) that
    /// prefers variety of addresses (IPv4 address or IPv6 /64). The sources
    /// are grouped by address; the addresses and each address's endpoints
    /// are shuffled; then one endpoint is taken from each address in turn,
    /// round after round, until the reply is full. When the file has sources
    /// on more than one address, at most `reply_sources_per_address` rounds
    /// are taken, so one host with many connections cannot crowd the others
    /// out (its endpoints are not more likely to be listed than another
    /// host's single one); a file held from one address only (a swarm on
    /// one host) gets its full sample.
    ///
    /// Cost: the groups come from the file's source index (kept up to date
    /// as holders change) and only the endpoints taken are drawn, each
    /// group's as the prefix of a shuffle, so a Locate costs the number of
    /// the file's addresses plus the sample, not the number of its holders:
    /// it runs under the registry lock.
    ///
    /// A peer that registered from the tracker's own host over loopback is
    /// recorded as 127.0.0.1:PORT; that address means "yourself" to anyone
    /// else, so such sources are given only to requesters that are on
    /// loopback too (`local_requester`).
    pub fn locate(
        &self,
        name: &str,
        max_sources: usize,
        seed: u64,
        local_requester: bool,
    ) -> Result<LocateSnapshot, RegistryError> {
        let record = self
            .files
            .get(name)
            .ok_or_else(|| RegistryError::UnknownFile(name.to_owned()))?;
        // Reachable sources grouped by address, in a fixed order (the
        // index is sorted) so that the seed alone decides the sample. A
        // loopback endpoint is in a loopback group (IPv4) or in the ::/64
        // group (IPv6 ::1): only those groups are filtered one by one.
        let mut groups: Vec<std::borrow::Cow<'_, [(ConnId, SocketAddr)]>> = Vec::new();
        for (key, g) in &record.sources {
            let mixed = key.is_loopback() || *key == IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED);
            if local_requester || !mixed {
                groups.push(std::borrow::Cow::Borrowed(g));
                continue;
            }
            let reachable: Vec<_> = g
                .iter()
                .copied()
                .filter(|(_, ep)| !ep.ip().to_canonical().is_loopback())
                .collect();
            if !reachable.is_empty() {
                groups.push(std::borrow::Cow::Owned(reachable));
            }
        }
        if groups.is_empty() {
            return Err(RegistryError::UnknownFile(name.to_owned()));
        }
        // Spread the seed over the state's bits (consecutive seeds must not
        // give the same stream) and keep it non-zero.
        let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        shuffle(&mut groups, &mut rng);
        let rounds = if groups.len() == 1 {
            usize::MAX
        } else {
            self.caps.reply_sources_per_address.max(1)
        };
        let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        let take = round_robin(&lens, rounds, max_sources);
        // Each group's first endpoints in a random order: the prefix of a
        // shuffle of the group, drawn without shuffling all of it.
        let picks: Vec<Vec<usize>> = lens
            .iter()
            .zip(&take)
            .map(|(&len, &k)| sample_prefix(len, k, &mut rng))
            .collect();
        let mut sources = Vec::new();
        let most = take.iter().copied().max().unwrap_or(0);
        for round in 0..most {
            for (g, p) in groups.iter().zip(&picks) {
                let Some(&(id, ep)) = p.get(round).and_then(|&i| g.get(i)) else {
                    continue;
                };
                if let Some(h) = record.holders.get(&id) {
                    sources.push((ep, h.have.as_bytes().to_vec()));
                }
            }
        }
        Ok(LocateSnapshot {
            meta: record.meta.clone(),
            sources,
        })
    }
}

/// One file as the dashboard lists it, copied out under the lock.
#[derive(Debug, Clone)]
pub struct FileView {
    pub name: String,
    pub geometry: Geometry,
    /// Shared, not copied: the content id is computed from it outside the
    /// lock.
    pub hashes: Arc<[Digest]>,
    /// Endpoints holding at least one chunk (what `where` lists).
    pub sources: usize,
    /// Endpoints holding every chunk.
    pub complete_sources: usize,
}

/// One holder of a file as the dashboard shows it.
#[derive(Debug, Clone)]
pub struct HolderView {
    pub endpoint: SocketAddr,
    /// The bitmap as on the wire.
    pub have: Vec<u8>,
    pub chunks: u32,
    /// Seconds since it became a holder of the file.
    pub registered_for: u32,
    /// Chunks gained per second over the last [`DASHBOARD_RATE_WINDOW`]
    /// complete seconds.
    ///
    /// [`DASHBOARD_RATE_WINDOW`]: crate::limits::DASHBOARD_RATE_WINDOW
    pub chunks_per_s: f64,
}

/// A file and some of its holders, copied out under the lock.
#[derive(Debug, Clone)]
pub struct FileDetail {
    pub file: FileView,
    /// At most the number asked for, ordered by address and then by
    /// connection (the order they connected in, for one address).
    pub holders: Vec<HolderView>,
}

/// Sizes of the registry, for /metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegistryStats {
    pub peers: usize,
    pub files: usize,
    /// Chunks of all files, each file counted once.
    pub chunks: u64,
    /// (file, peer) pairs: a peer holding three files counts three times.
    pub holders: usize,
    /// Holders with at least one chunk.
    pub sources: usize,
    /// An estimate of the heap bytes the tables take (see [`Registry::stats`]).
    pub memory_bytes: u64,
}

/// Heap bytes of one hash-map entry of `T`: the entry, its control byte,
/// and the eighth left free by the load factor.
fn map_entry<T>() -> u64 {
    (std::mem::size_of::<T>() as u64 + 1) * 8 / 7
}

/// What the dashboard reads (`tracker::http`): copies, taken under the
/// lock like every other registry call, costing the number of files or the
/// number of holders shown, never more.
impl Registry {
    /// Tells the registry the current second (any monotonic count of
    /// seconds); it stamps holders' start and gains with it. The registry
    /// keeps no clock of its own.
    pub fn set_clock(&mut self, secs: u32) {
        self.now = secs;
    }

    fn file_view(name: &str, r: &FileRecord) -> FileView {
        FileView {
            name: name.to_owned(),
            geometry: r.meta.geometry,
            hashes: Arc::clone(&r.meta.hashes),
            sources: r.source_count(),
            complete_sources: r.complete,
        }
    }

    /// The files `list` lists (at least one source), sorted by name; at
    /// most `max`, and whether there were more.
    pub fn files_view(&self, max: usize) -> (Vec<FileView>, bool) {
        let mut files: Vec<FileView> = self
            .files
            .iter()
            .filter(|(_, r)| r.source_count() > 0)
            .take(max.saturating_add(1))
            .map(|(name, r)| Registry::file_view(name, r))
            .collect();
        let truncated = files.len() > max;
        files.truncate(max);
        (files, truncated)
    }

    /// `name` and up to `max_holders` of its sources (the holders `where`
    /// samples from), with their bitmaps; None if it has no source.
    pub fn file_detail(&self, name: &str, max_holders: usize) -> Option<FileDetail> {
        let r = self.files.get(name).filter(|r| r.source_count() > 0)?;
        let window = crate::limits::DASHBOARD_RATE_WINDOW;
        let holders = r
            .sources
            .values()
            .flatten()
            .take(max_holders)
            .filter_map(|&(id, endpoint)| {
                let h = r.holders.get(&id)?;
                Some(HolderView {
                    endpoint,
                    have: h.have.as_bytes().to_vec(),
                    chunks: h.have.count_ones(),
                    registered_for: self.now.saturating_sub(h.since),
                    chunks_per_s: h.gains.rate(self.now, h.since, window),
                })
            })
            .collect();
        Some(FileDetail {
            file: Registry::file_view(name, r),
            holders,
        })
    }

    /// Counts and a memory estimate, from sums kept up to date by every
    /// change: O(1) under the lock whatever the number of files (a walk
    /// of the files would hold it for as long as they are many, as often
    /// as /metrics is asked). The estimate adds up the tables' entries at
    /// their in-memory sizes, the names, the hash lists and the bitmaps; it
    /// leaves out the allocator's own overhead, so it is below the
    /// process's resident memory.
    pub fn stats(&self) -> RegistryStats {
        Registry::stats_of(self.totals, self)
    }

    fn stats_of(t: Totals, r: &Registry) -> RegistryStats {
        let per_source = map_entry::<(ConnId, (SocketAddr, bool))>()
            + std::mem::size_of::<(ConnId, SocketAddr)>() as u64;
        let per_group = std::mem::size_of::<(IpAddr, Vec<(ConnId, SocketAddr)>)>() as u64;
        let per_peer = map_entry::<(ConnId, PeerRecord)>() + map_entry::<(SocketAddr, ConnId)>();
        let memory_bytes = t.bytes
            + t.sources as u64 * per_source
            + t.groups as u64 * per_group
            + r.peers.len() as u64 * per_peer
            + r.per_address.len() as u64 * map_entry::<(IpAddr, u64)>();
        RegistryStats {
            peers: r.peers.len(),
            files: r.files.len(),
            chunks: r.total_chunks,
            holders: t.holders,
            sources: t.sources,
            memory_bytes,
        }
    }

    /// [`Registry::stats`] by a walk of every file: what the kept sums
    /// must always equal.
    #[cfg(test)]
    fn stats_by_walk(&self) -> RegistryStats {
        let mut t = Totals::default();
        for (name, r) in &self.files {
            t.replace(Totals::default(), Totals::of(name, r));
        }
        Registry::stats_of(t, self)
    }
}

/// The next number of a xorshift stream (`state` must not be 0).
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Fisher-Yates with a xorshift stream (`state` must not be 0).
fn shuffle<T>(v: &mut [T], state: &mut u64) {
    for i in (1..v.len()).rev() {
        let j = (next_random(state) % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

/// How many to take from each group of sizes `lens`, taking one from each
/// group in turn, round after round (at most `rounds`), until `max` are
/// taken or the groups are exhausted.
fn round_robin(lens: &[usize], rounds: usize, max: usize) -> Vec<usize> {
    let mut take = vec![0usize; lens.len()];
    let mut n = 0;
    let mut round = 0;
    while round < rounds && n < max {
        let mut any = false;
        for (t, &len) in take.iter_mut().zip(lens) {
            if len > round {
                any = true;
                if n >= max {
                    break;
                }
                *t += 1;
                n += 1;
            }
        }
        if !any {
            break;
        }
        round += 1;
    }
    take
}

/// The first `k` indices of a uniformly random permutation of `0..len`:
/// Fisher-Yates run for `k` steps over a virtual array whose moved
/// entries are kept in a map, so the cost is O(k) whatever `len`.
fn sample_prefix(len: usize, k: usize, state: &mut u64) -> Vec<usize> {
    let k = k.min(len);
    let mut moved: HashMap<usize, usize> = HashMap::with_capacity(k * 2);
    let mut out = Vec::with_capacity(k);
    for i in 0..k {
        let j = i + (next_random(state) % (len - i) as u64) as usize;
        let at_j = moved.get(&j).copied().unwrap_or(j);
        let at_i = moved.get(&i).copied().unwrap_or(i);
        moved.insert(j, at_i);
        out.push(at_j);
    }
    out
}

/// Takes `delta` chunks off the count of `ip`'s address, dropping the entry
/// at zero so the map only holds addresses with registrations.
fn refund_address(per_address: &mut HashMap<IpAddr, u64>, ip: IpAddr, delta: u64) {
    let key = admission::key(ip);
    if let Some(n) = per_address.get_mut(&key) {
        *n = n.saturating_sub(delta);
        if *n == 0 {
            per_address.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunks;

    fn entry(name: &str, length: u64, seed: u8) -> FileEntry {
        let count = length.div_ceil(1024) as usize;
        FileEntry {
            name: name.into(),
            length,
            chunk_size: 1024,
            hashes: (0..count)
                .map(|i| [seed.wrapping_add(i as u8); 20])
                .collect(),
            have: Have::All,
        }
    }

    fn ep(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// The source index of every file is what a walk of its holders gives.
    fn assert_index_consistent(r: &Registry) {
        for (name, rec) in &r.files {
            let mut want: Vec<(ConnId, SocketAddr)> = rec
                .holders
                .iter()
                .filter(|(_, h)| is_source(&h.have))
                .filter_map(|(&id, _)| r.peers.get(&id).map(|p| (id, p.endpoint)))
                .collect();
            want.sort_unstable();
            let mut got: Vec<(ConnId, SocketAddr)> = Vec::new();
            for (key, g) in &rec.sources {
                assert!(!g.is_empty(), "{name}: empty group {key}");
                assert!(g.windows(2).all(|w| w[0] < w[1]), "{name}: unsorted");
                assert!(g.iter().all(|(_, e)| admission::key(e.ip()) == *key));
                got.extend(g);
            }
            got.sort_unstable();
            assert_eq!(got, want, "{name}");
            assert_eq!(rec.indexed.len(), want.len(), "{name}");
            for (id, &(_, full)) in &rec.indexed {
                assert_eq!(full, rec.holders[id].have.is_full(), "{name}: {id}");
            }
            let full = rec.indexed.values().filter(|&&(_, f)| f).count();
            assert_eq!(rec.complete, full, "{name}: complete sources");
        }
        assert_eq!(r.stats(), r.stats_by_walk(), "the kept sums drifted");
    }

    /// Registers, chunk registers, re-registers (also from another
    /// endpoint, also with fewer chunks), evictions, withdrawals and removals, in a
    /// pseudo-random order: the index Locate samples from never drifts
    /// from the holders.
    #[test]
    fn the_source_index_follows_every_change() {
        let mut r = Registry::new();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let addr = |k: u64| SocketAddr::from(([10, 0, (k % 3) as u8, 1], 1000 + (k % 5) as u16));
        for step in 0..3000u32 {
            let k = next_random(&mut x);
            let conn = k % 12 + 1;
            let name = ["a", "b", "c"][(k / 12 % 3) as usize];
            match k / 36 % 7 {
                0 | 1 => {
                    // Now and then other content under the name: refused, or
                    // taking the name over from holders without a chunk.
                    let seed = if k.is_multiple_of(11) { 2 } else { 1 };
                    let mut e = entry(name, 8 * 1024, seed);
                    let mut bits = Bitmap::new(8);
                    if !k.is_multiple_of(4) {
                        bits.set((k % 8) as u32);
                    }
                    if !k.is_multiple_of(7) {
                        e.have = Have::Some(bits.as_bytes().to_vec());
                    }
                    r.set_clock(step / 10);
                    r.register(conn, addr(k / 216), vec![e]);
                }
                2 | 3 => {
                    let _ = r.chunk_register(conn, name, (k % 8) as u32);
                }
                4 => {
                    r.remove_peer(conn);
                }
                5 => {
                    let _ = r.withdraw(conn, name);
                }
                _ => {
                    let local = k.is_multiple_of(2);
                    if let Ok(s) = r.locate(name, 5, k, local) {
                        assert!(!s.sources.is_empty() && s.sources.len() <= 5, "step {step}");
                    }
                }
            }
            assert_index_consistent(&r);
        }
    }

    #[test]
    fn register_same_content_adds_a_source_and_conflict_is_refused() {
        let mut r = Registry::new();
        let (o, _) = r.register(1, ep(1), vec![entry("a", 3000, 1)]);
        assert_eq!(o, vec![FileOutcome::Accepted]);
        let (o, _) = r.register(2, ep(2), vec![entry("a", 3000, 1), entry("b", 10, 1)]);
        assert_eq!(o, vec![FileOutcome::Accepted, FileOutcome::Accepted]);
        let (o, _) = r.register(3, ep(3), vec![entry("a", 3000, 2), entry("../x", 10, 1)]);
        assert!(matches!(
            o[0],
            FileOutcome::Refused {
                code: ErrorCode::Conflict,
                ..
            }
        ));
        assert!(matches!(
            o[1],
            FileOutcome::Refused {
                code: ErrorCode::InvalidName,
                ..
            }
        ));
        let l = r.locate("a", 64, 1, true).unwrap();
        let mut eps: Vec<_> = l.sources.iter().map(|s| s.0).collect();
        eps.sort();
        assert_eq!(eps, vec![ep(1), ep(2)]);
        assert_eq!(r.list(100).0.len(), 2);
    }

    #[test]
    fn bad_geometry_is_refused_per_file() {
        let mut r = Registry::new();
        let mut e = entry("a", 3000, 1);
        e.hashes.pop();
        let mut z = entry("z", 3000, 1);
        z.chunk_size = 0;
        let (o, _) = r.register(1, ep(1), vec![e, z, entry("ok", 5, 1)]);
        assert!(matches!(
            o[0],
            FileOutcome::Refused {
                code: ErrorCode::BadGeometry,
                ..
            }
        ));
        assert!(matches!(
            o[1],
            FileOutcome::Refused {
                code: ErrorCode::BadGeometry,
                ..
            }
        ));
        assert_eq!(o[2], FileOutcome::Accepted);
    }

    #[test]
    fn chunk_register_validates_and_is_idempotent() {
        let mut r = Registry::new();
        assert_eq!(
            r.chunk_register(9, "a", 0),
            Err(RegistryError::NotRegistered)
        );
        r.register(1, ep(1), vec![entry("a", 3000, 1)]);
        r.register(2, ep(2), vec![]);
        assert!(matches!(
            r.chunk_register(2, "nope", 0),
            Err(RegistryError::UnknownFile(_))
        ));
        assert!(matches!(
            r.chunk_register(2, "a", 3),
            Err(RegistryError::BadIndex { count: 3, .. })
        ));
        r.chunk_register(2, "a", 1).unwrap();
        r.chunk_register(2, "a", 1).unwrap();
        let l = r.locate("a", 64, 1, true).unwrap();
        let two = l.sources.iter().find(|s| s.0 == ep(2)).unwrap();
        assert_eq!(two.1, vec![0x40]);
    }

    #[test]
    fn removing_a_peer_removes_its_chunks_and_orphan_files() {
        let mut r = Registry::new();
        r.register(1, ep(1), vec![entry("a", 3000, 1)]);
        r.register(2, ep(2), vec![]);
        r.chunk_register(2, "a", 0).unwrap();
        assert!(r.remove_peer(1));
        let l = r.locate("a", 64, 1, true).unwrap();
        assert_eq!(l.sources.len(), 1);
        assert!(r.remove_peer(2));
        assert!(r.locate("a", 64, 1, true).is_err());
        assert!(r.list(10).0.is_empty());
        // The name is free again for other content.
        let (o, _) = r.register(3, ep(3), vec![entry("a", 10, 7)]);
        assert_eq!(o, vec![FileOutcome::Accepted]);
    }

    #[test]
    fn same_endpoint_evicts_the_stale_connection() {
        let mut r = Registry::new();
        r.register(1, ep(1), vec![entry("a", 3000, 1)]);
        let (_, evicted) = r.register(2, ep(1), vec![]);
        assert_eq!(evicted, Some(1));
        assert!(r.locate("a", 64, 1, true).is_err());
        assert_eq!(r.peer_count(), 1);
    }

    #[test]
    fn withdraw_drops_one_holder_and_the_file_with_its_last() {
        let mut r = Registry::new();
        assert_eq!(r.withdraw(1, "a"), Err(RegistryError::NotRegistered));
        r.register(1, ep(1), vec![entry("a", 3000, 1), entry("b", 10, 1)]);
        r.register(2, ep(2), vec![entry("a", 3000, 1)]);
        assert_eq!(r.address_chunks(ep(1).ip()), 3 + 1 + 3);
        // One of two holders: the file stays, served by the other only.
        assert_eq!(r.withdraw(1, "a"), Ok(true));
        assert_index_consistent(&r);
        let l = r.locate("a", 64, 1, true).unwrap();
        assert_eq!(l.sources.len(), 1);
        assert_eq!(l.sources[0].0, ep(2));
        assert_eq!(r.address_chunks(ep(1).ip()), 1 + 3);
        // Idempotent, and a name never held or invalid is the same no-op.
        assert_eq!(r.withdraw(1, "a"), Ok(false));
        assert_eq!(r.withdraw(1, "nope"), Ok(false));
        assert_eq!(r.withdraw(1, "../x"), Ok(false));
        // A ChunkRegister for it is refused no more: it holds again.
        r.chunk_register(1, "a", 0).unwrap();
        assert_eq!(r.locate("a", 64, 1, true).unwrap().sources.len(), 2);
        assert_eq!(r.withdraw(1, "a"), Ok(true));
        // The last holder withdraws: gone from the list and from Locate.
        assert_eq!(r.withdraw(2, "a"), Ok(true));
        assert_index_consistent(&r);
        let names: Vec<String> = r.list(10).0.into_iter().map(|f| f.name).collect();
        assert_eq!(names, ["b"]);
        assert!(matches!(
            r.locate("a", 64, 1, true),
            Err(RegistryError::UnknownFile(_))
        ));
        assert_eq!(r.address_chunks(ep(1).ip()), 1);
        assert_eq!(r.total_chunks, 1);
        // Other content under the name is now accepted, no Conflict.
        let (o, _) = r.register(2, ep(2), vec![entry("a", 5000, 9)]);
        assert_eq!(o, vec![FileOutcome::Accepted]);
        assert_eq!(
            r.locate("a", 64, 1, true).unwrap().meta.geometry.length(),
            5000
        );
        // The peers stay registered; a 0-byte file withdraws like any other.
        assert_eq!(r.peer_count(), 2);
        r.register(3, ep(3), vec![entry("empty", 0, 1)]);
        assert_eq!(r.withdraw(3, "empty"), Ok(true));
        assert!(r.list(10).0.iter().all(|f| f.name != "empty"));
    }

    #[test]
    fn withdrawing_the_last_source_frees_the_name_for_other_content() {
        // A holder without a chunk (a download that has not verified any)
        // keeps the record but is no source: after the only source
        // withdraws, the name is unlisted and other content takes it.
        let mut r = Registry::new();
        r.register(1, ep(1), vec![entry("a", 3000, 1)]);
        let mut none = entry("a", 3000, 1);
        none.have = Have::Some(vec![0]);
        r.register(2, ep(2), vec![none]);
        assert_eq!(r.withdraw(1, "a"), Ok(true));
        assert!(r.list(10).0.is_empty());
        let (o, _) = r.register(3, ep(3), vec![entry("a", 3000, 7)]);
        assert_eq!(o, vec![FileOutcome::Accepted]);
        assert_index_consistent(&r);
        // While another source holds the old content, new content conflicts.
        let (o, _) = r.register(1, ep(1), vec![entry("a", 3000, 8)]);
        assert!(matches!(
            o[0],
            FileOutcome::Refused {
                code: ErrorCode::Conflict,
                ..
            }
        ));
    }

    #[test]
    fn holders_without_chunks_are_not_sources() {
        let mut r = Registry::new();
        let mut e = entry("a", 3000, 1);
        e.have = Have::Some(vec![0]);
        r.register(1, ep(1), vec![e]);
        assert!(r.list(10).0.is_empty());
        assert!(r.locate("a", 64, 1, true).is_err());
        // An empty file has no chunks; its holder is a source.
        r.register(2, ep(2), vec![entry("empty", 0, 1)]);
        assert_eq!(r.list(10).0.len(), 1);
    }

    #[test]
    fn long_names_never_make_a_reply_unencodable() {
        let mut r = Registry::new();
        let long = vec!["d".repeat(250); 4].join("/"); // 1003 bytes, valid
        r.register(1, ep(1), vec![entry(&long, 3000, 1)]);
        let (o, _) = r.register(2, ep(2), vec![entry(&long, 3000, 2)]);
        assert!(matches!(
            o[0],
            FileOutcome::Refused {
                code: ErrorCode::Conflict,
                ..
            }
        ));
        let reply = wire::Message::RegisterReply { results: o };
        assert!(reply.encode(&mut Vec::new()).is_ok());
    }

    #[test]
    fn holders_without_chunks_do_not_reserve_a_name() {
        let mut r = Registry::new();
        let mut e = entry("a", 3000, 1);
        e.have = Have::Some(vec![0]);
        r.register(1, ep(1), vec![e]);
        let (o, _) = r.register(2, ep(2), vec![entry("a", 3000, 2)]);
        assert_eq!(o, vec![FileOutcome::Accepted]);
        let l = r.locate("a", 64, 1, true).unwrap();
        assert_eq!(l.sources.len(), 1);
        assert_eq!(*l.meta.hashes, entry("a", 3000, 2).hashes[..]);
        // Peer 1 no longer claims it; its ChunkRegister now applies to the new content.
        assert!(r.remove_peer(1));
        assert_eq!(r.locate("a", 64, 1, true).unwrap().sources.len(), 1);
    }

    #[test]
    fn per_peer_caps_refuse_files_not_connections() {
        let mut r = Registry::new();
        // One file of 2^19 chunks at the smallest chunk size, many times.
        let big = |i: usize| FileEntry {
            name: format!("big{i}"),
            length: u64::from(chunks::MAX_CHUNKS_PER_FILE) * 1024,
            chunk_size: 1024,
            hashes: vec![[i as u8; 20]; chunks::MAX_CHUNKS_PER_FILE as usize],
            have: Have::All,
        };
        let n = (MAX_CHUNKS_PER_PEER / u64::from(chunks::MAX_CHUNKS_PER_FILE)) as usize;
        let (o, _) = r.register(1, ep(1), (0..=n).map(big).collect());
        assert!(o[..n].iter().all(|x| *x == FileOutcome::Accepted));
        assert!(matches!(
            o[n],
            FileOutcome::Refused {
                code: ErrorCode::Busy,
                ..
            }
        ));
        let (o, _) = r.register(1, ep(1), vec![entry("small", 10, 1)]);
        assert!(matches!(
            o[0],
            FileOutcome::Refused {
                code: ErrorCode::Busy,
                ..
            }
        ));
        // Leaving frees it all.
        r.remove_peer(1);
        let (o, _) = r.register(2, ep(2), vec![entry("small", 10, 1)]);
        assert_eq!(o, vec![FileOutcome::Accepted]);
    }

    #[test]
    fn loopback_sources_go_only_to_loopback_requesters() {
        let mut r = Registry::new();
        r.register(1, ep(1), vec![entry("a", 3000, 1)]);
        r.register(
            2,
            SocketAddr::from(([10, 0, 0, 2], 9)),
            vec![entry("a", 3000, 1)],
        );
        assert_eq!(r.locate("a", 64, 1, true).unwrap().sources.len(), 2);
        let remote = r.locate("a", 64, 1, false).unwrap();
        assert_eq!(remote.sources.len(), 1);
        assert_eq!(remote.sources[0].0, SocketAddr::from(([10, 0, 0, 2], 9)));
        r.remove_peer(2);
        assert!(r.locate("a", 64, 1, false).is_err());
    }

    #[test]
    fn locate_samples_at_most_max_sources_and_list_truncates() {
        let mut r = Registry::new();
        for i in 0..100u16 {
            r.register(u64::from(i), ep(1000 + i), vec![entry("a", 3000, 1)]);
        }
        let a = r.locate("a", 10, 1, true).unwrap();
        let b = r.locate("a", 10, 2, true).unwrap();
        assert_eq!(a.sources.len(), 10);
        let distinct: HashSet<_> = a.sources.iter().map(|s| s.0).collect();
        assert_eq!(distinct.len(), 10);
        assert_ne!(
            a.sources.iter().map(|s| s.0).collect::<Vec<_>>(),
            b.sources.iter().map(|s| s.0).collect::<Vec<_>>()
        );
        for i in 0..5 {
            r.register(500, ep(9), vec![entry(&format!("f{i}"), 1, 1)]);
        }
        let (l, t) = r.list(3);
        assert_eq!(l.len(), 3);
        assert!(t);
    }

    fn busy_text(o: &FileOutcome) -> Option<&str> {
        match o {
            FileOutcome::Refused {
                code: ErrorCode::Busy,
                reason,
            } => Some(reason),
            _ => None,
        }
    }

    /// Issue 11 item 4: many connections from one host each stayed within
    /// the per-connection caps and together filled the registry, so every
    /// other peer's new file was refused.
    #[test]
    fn one_address_cannot_fill_the_registry() {
        let caps = Caps {
            files_per_peer: 100,
            chunks_per_peer: 100,
            chunks_per_address: 300,
            total_chunks: 1000,
            ..Caps::default()
        };
        let mut r = Registry::with_caps(caps);
        let host = |last: u8, port: u16| SocketAddr::from(([10, 0, 0, last], port));
        let file = |i: u32| entry(&format!("f{i}"), 100 * 1024, i as u8);
        // Twelve connections from one host, 100 chunks each.
        let mut accepted = 0;
        for c in 0..12u32 {
            let (o, _) = r.register(u64::from(c), host(1, 1000 + c as u16), vec![file(c)]);
            match busy_text(&o[0]) {
                None => accepted += 1,
                Some(m) => {
                    assert!(m.contains("10.0.0.1"), "{m}");
                    assert!(m.contains("one address may hold at most 300"), "{m}");
                }
            }
        }
        assert_eq!(accepted, 3);
        assert_eq!(r.address_chunks(host(1, 0).ip()), 300);
        // Another host still registers, and fills its own share only.
        for c in 20..24u32 {
            let (o, _) = r.register(u64::from(c), host(2, c as u16), vec![file(c)]);
            assert_eq!(o[0] == FileOutcome::Accepted, c < 23, "{o:?}");
        }
        // Holding a file through ChunkRegister counts too.
        r.register(50, host(1, 50), vec![]);
        let e = r.chunk_register(50, "f20", 0).unwrap_err();
        assert_eq!(e.code(), ErrorCode::Busy);
        // A connection that leaves gives its share back.
        assert!(r.remove_peer(0));
        assert_eq!(r.address_chunks(host(1, 0).ip()), 200);
        r.chunk_register(50, "f20", 0).unwrap();
        assert_eq!(r.address_chunks(host(1, 0).ip()), 300);
        // A file forgotten (taken over by new content) is refunded to all
        // of its holders' addresses.
        let mut empty = entry("g", 50 * 1024, 1);
        empty.have = Have::Some(vec![0; 7]);
        r.register(60, host(3, 1), vec![empty]);
        assert_eq!(r.address_chunks(host(3, 0).ip()), 50);
        r.register(61, host(4, 1), vec![entry("g", 50 * 1024, 2)]);
        assert_eq!(r.address_chunks(host(3, 0).ip()), 0);
        assert_eq!(r.address_chunks(host(4, 0).ip()), 50);
    }

    #[test]
    fn taking_over_a_name_one_holds_without_chunks_is_capped_too() {
        let caps = Caps {
            chunks_per_peer: 100,
            ..Caps::default()
        };
        let mut r = Registry::with_caps(caps);
        let mut empty = entry("a", 50 * 1024, 1);
        empty.have = Have::Some(vec![0; 7]);
        assert_eq!(
            r.register(1, ep(1), vec![empty]).0,
            vec![FileOutcome::Accepted]
        );
        // Other content under the same name, larger than the cap allows.
        let (o, _) = r.register(1, ep(1), vec![entry("a", 150 * 1024, 2)]);
        assert!(busy_text(&o[0]).is_some(), "{o:?}");
        assert_eq!(r.address_chunks(ep(1).ip()), 0);
        let (o, _) = r.register(1, ep(1), vec![entry("a", 100 * 1024, 2)]);
        assert_eq!(o, vec![FileOutcome::Accepted]);
        assert_eq!(r.address_chunks(ep(1).ip()), 100);
    }

    #[test]
    fn ipv6_addresses_share_per_64() {
        let caps = Caps {
            chunks_per_address: 150,
            ..Caps::default()
        };
        let mut r = Registry::with_caps(caps);
        let v6 = |s: &str| SocketAddr::new(s.parse().unwrap(), 7);
        let file = |i: u8| entry(&format!("f{i}"), 100 * 1024, i);
        let (o, _) = r.register(1, v6("2001:db8:0:1::1"), vec![file(1)]);
        assert_eq!(o[0], FileOutcome::Accepted);
        let (o, _) = r.register(2, v6("2001:db8:0:1::2"), vec![file(2)]);
        assert!(busy_text(&o[0]).is_some(), "{o:?}");
        let (o, _) = r.register(3, v6("2001:db8:0:2::1"), vec![file(3)]);
        assert_eq!(o[0], FileOutcome::Accepted);
    }

    /// Issue 10 item 4: one host registering many endpoints must not take
    /// over a file's Locations: at most `reply_sources_per_address` of its
    /// endpoints in a reply once another address holds the file.
    #[test]
    fn one_address_cannot_take_over_a_reply() {
        let mut r = Registry::new();
        let crowd = |port: u16| SocketAddr::from(([10, 0, 0, 9], port));
        let honest = SocketAddr::from(([10, 0, 0, 1], 4000));
        for i in 0..200u16 {
            r.register(u64::from(i), crowd(5000 + i), vec![entry("a", 3000, 1)]);
        }
        r.register(1000, honest, vec![entry("a", 3000, 1)]);
        let mut seen = HashSet::new();
        for seed in 0..50 {
            let l = r.locate("a", 64, seed, false).unwrap();
            let eps: Vec<SocketAddr> = l.sources.iter().map(|s| s.0).collect();
            let from_crowd = eps.iter().filter(|e| e.ip() == crowd(0).ip()).count();
            assert_eq!(from_crowd, MAX_REPLY_SOURCES_PER_ADDRESS, "seed {seed}");
            assert!(eps.contains(&honest), "seed {seed}: {eps:?}");
            assert_eq!(eps.len(), MAX_REPLY_SOURCES_PER_ADDRESS + 1);
            seen.extend(eps);
        }
        // Still a fair sample of the crowd over many replies.
        assert!(
            seen.len() > 150,
            "only {} endpoints ever listed",
            seen.len()
        );
    }

    #[test]
    fn replies_prefer_variety_and_keep_a_one_host_swarm_whole() {
        // One host only (a swarm on 127.0.0.1): the full sample.
        let mut r = Registry::new();
        for i in 0..100u16 {
            r.register(u64::from(i), ep(1000 + i), vec![entry("a", 3000, 1)]);
        }
        assert_eq!(r.locate("a", 64, 3, true).unwrap().sources.len(), 64);
        // A second loopback address joins: the first is capped, the swarm
        // still gets every address.
        r.register(
            500,
            SocketAddr::from(([127, 0, 0, 2], 9)),
            vec![entry("a", 3000, 1)],
        );
        let l = r.locate("a", 64, 3, true).unwrap();
        assert_eq!(l.sources.len(), MAX_REPLY_SOURCES_PER_ADDRESS + 1);
        // Many addresses: one endpoint each before any gets a second.
        let mut r = Registry::new();
        for h in 0..100u16 {
            for k in 0..3u16 {
                let ep = SocketAddr::from(([10, 1, (h >> 8) as u8, h as u8], 7000 + k));
                r.register(u64::from(h * 3 + k), ep, vec![entry("a", 3000, 1)]);
            }
        }
        let l = r.locate("a", 64, 5, false).unwrap();
        let ips: HashSet<_> = l.sources.iter().map(|s| s.0.ip()).collect();
        assert_eq!((l.sources.len(), ips.len()), (64, 64));
        // Few addresses with a few endpoints each: rounds fill the reply.
        let mut r = Registry::new();
        for (h, n) in [(1u8, 20u16), (2, 3), (3, 1)] {
            for k in 0..n {
                let ep = SocketAddr::from(([10, 2, 0, h], 7000 + k));
                r.register(
                    u64::from(h) * 100 + u64::from(k),
                    ep,
                    vec![entry("a", 3000, 1)],
                );
            }
        }
        let l = r.locate("a", 64, 5, false).unwrap();
        let count = |h: u8| {
            l.sources
                .iter()
                .filter(|s| s.0.ip() == IpAddr::from([10, 2, 0, h]))
                .count()
        };
        assert_eq!(
            (count(1), count(2), count(3)),
            (MAX_REPLY_SOURCES_PER_ADDRESS, 3, 1)
        );
    }

    #[test]
    fn gains_average_the_last_complete_seconds() {
        let mut g = Gains::starting(100);
        for _ in 0..10 {
            g.add(101);
        }
        for _ in 0..5 {
            g.add(103);
        }
        // Seconds 101..=105 complete at 106: 15 chunks in 5 s.
        assert_eq!(g.rate(106, 100, 5), 3.0);
        // Started at 102: only its 4 seconds count (103's 5 chunks).
        assert_eq!(g.rate(106, 102, 5), 1.25);
        // The second in progress does not count yet.
        assert_eq!(g.rate(101, 100, 5), 0.0);
        // Old seconds fall out of the window and out of the ring.
        assert_eq!(g.rate(108, 100, 5), 1.0);
        assert_eq!(g.rate(200, 100, 5), 0.0);
        g.add(200);
        assert_eq!(g.rate(201, 100, 5), 0.2);
        // A burst saturates, never wraps.
        let mut g = Gains::starting(0);
        for _ in 0..70_000 {
            g.add(1);
        }
        assert_eq!(g.rate(2, 0, 1), f64::from(u16::MAX));
    }

    #[test]
    fn the_dashboard_sees_holders_their_age_speed_and_completeness() {
        let mut r = Registry::new();
        r.set_clock(10);
        r.register(1, ep(1), vec![entry("a", 8 * 1024, 1)]);
        r.register(2, ep(2), vec![]);
        r.set_clock(12);
        for i in 0..4 {
            r.chunk_register(2, "a", i).unwrap();
        }
        r.set_clock(15);
        let d = r.file_detail("a", 10).unwrap();
        assert_eq!((d.file.sources, d.file.complete_sources), (2, 1));
        assert_eq!(d.file.geometry.count(), 8);
        let h: Vec<_> = d
            .holders
            .iter()
            .map(|h| (h.endpoint, h.chunks, h.registered_for, h.chunks_per_s))
            .collect();
        // 4 chunks in its first second, averaged over the 3 complete
        // seconds since it became a holder.
        assert_eq!(h, vec![(ep(1), 8, 5, 0.0), (ep(2), 4, 3, 4.0 / 3.0)]);
        assert_eq!(d.holders[1].have, vec![0xf0]);
        for i in 4..8 {
            r.chunk_register(2, "a", i).unwrap();
        }
        let (files, truncated) = r.files_view(10);
        assert!(!truncated);
        assert_eq!((files[0].sources, files[0].complete_sources), (2, 2));
        assert_eq!(r.file_detail("a", 1).unwrap().holders.len(), 1);
        assert!(r.file_detail("b", 10).is_none());
        // A re-register keeps when it became a holder.
        r.set_clock(30);
        r.register(2, ep(2), vec![entry("a", 8 * 1024, 1)]);
        assert_eq!(
            r.file_detail("a", 10).unwrap().holders[1].registered_for,
            18
        );
        let s = r.stats();
        assert_eq!(
            (s.peers, s.files, s.chunks, s.holders, s.sources),
            (2, 1, 8, 2, 2)
        );
        assert!(s.memory_bytes > 8 * 20, "{s:?}");
        r.remove_peer(1);
        assert_eq!(r.files_view(10).0[0].complete_sources, 1);
    }

    /// /metrics asks for `stats` with the registry lock held, as often as
    /// it is scraped (up to 4 times a second): its cost must not grow with
    /// the number of files, which one address alone can make millions.
    #[test]
    fn stats_cost_does_not_grow_with_the_files() {
        use std::time::{Duration, Instant};
        let mut r = Registry::new();
        for p in 0..2u64 {
            let ep = SocketAddr::from(([10, 9, p as u8, 1], 7000));
            for batch in 0..50 {
                let files = (0..1000)
                    .map(|i| entry(&format!("f{p}/{batch}/{i}"), 100, 1))
                    .collect();
                let (o, _) = r.register(p, ep, files);
                assert!(o.iter().all(|o| *o == FileOutcome::Accepted));
            }
        }
        let s = r.stats();
        assert_eq!((s.files, s.holders, s.sources), (100_000, 100_000, 100_000));
        assert_eq!(s, r.stats_by_walk());
        let started = Instant::now();
        for _ in 0..100 {
            std::hint::black_box(r.stats());
        }
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(50),
            "100 stats() of 100,000 files took {took:?}: it walks the files"
        );
    }

    /// docs/architecture.md states what the dashboard's facts cost per
    /// holder: the holder entry beside its bitmap, and the flag in the
    /// source index.
    #[test]
    fn a_holders_dashboard_facts_take_24_bytes() {
        use std::mem::size_of;
        assert_eq!(size_of::<Holder>() - size_of::<Bitmap>(), 24);
        assert_eq!(size_of::<Gains>(), 20);
    }

    /// Resident memory of a full registry, by hand (release build; it
    /// allocates about 1.1 GiB):
    /// `cargo test --release --lib memory_of_a_full_registry -- --ignored --nocapture`.
    /// Fills the registry-wide budget with files of 2^19 chunks from as few
    /// addresses as the caps allow and prints the bytes per chunk.
    #[test]
    #[ignore = "allocates about 1.1 GiB; a measurement, run by hand"]
    fn memory_of_a_full_registry() {
        fn rss_kib() -> u64 {
            let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        }
        let n = chunks::MAX_CHUNKS_PER_FILE;
        let file = |i: u64| FileEntry {
            name: format!("big{i}"),
            length: u64::from(n) * 1024,
            chunk_size: 1024,
            hashes: (0..n)
                .map(|k| {
                    let mut d = [0u8; 20];
                    d[..8].copy_from_slice(&(i << 32 | u64::from(k)).to_be_bytes());
                    d
                })
                .collect(),
            have: Have::All,
        };
        let per_peer = MAX_CHUNKS_PER_PEER / u64::from(n);
        let peers_per_address = MAX_CHUNKS_PER_ADDRESS / MAX_CHUNKS_PER_PEER;
        let files = MAX_TOTAL_CHUNKS / u64::from(n);
        let before = rss_kib();
        let mut r = Registry::new();
        for i in 0..files {
            let conn = i / per_peer;
            let host = (conn / peers_per_address) as u8;
            let ep = SocketAddr::from(([10, 1, host, 1], 7000 + conn as u16));
            let (o, _) = r.register(conn, ep, vec![file(i)]);
            assert_eq!(o[0], FileOutcome::Accepted, "file {i}");
        }
        let full = rss_kib();
        let (o, _) = r.register(10_000, ep(1), vec![file(files)]);
        assert!(busy_text(&o[0]).is_some_and(|m| m.contains("is full")));
        let chunks = files * u64::from(n);
        println!(
            "full registry: {chunks} chunks in {files} files, RSS {before} KiB -> {full} KiB: {:.2} bytes per chunk",
            (full - before) as f64 * 1024.0 / chunks as f64,
        );
    }
}
