//! The tracker's registry: which peer holds which chunks of which file.
//!
//! Owns: the in-memory tables (files by name, peers by connection id,
//! endpoints) and the rules for changing them (registration, conflicts,
//! chunk registers, removal of a peer with all its chunks). Pure data: no
//! sockets, no clock, no threads; the server wraps it in a Mutex and holds
//! the lock only for these calls.
//!
//! Calls `wire` (message types, name rule), `chunks` (geometry, bitmaps) and
//! `limits`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::chunks::{Bitmap, Digest, Geometry};
use crate::wire::{self, ErrorCode, FileEntry, FileOutcome, FileSummary, Have, NameError};

/// Identifies one control connection (and so one peer) for its lifetime.
pub type ConnId = u64;

pub use crate::limits::{MAX_CHUNKS_PER_PEER, MAX_FILES_PER_PEER, MAX_TOTAL_CHUNKS};

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
            RegistryError::NotRegistered => f.write_str("send Register before ChunkRegister"),
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

struct FileRecord {
    meta: FileMeta,
    holders: HashMap<ConnId, Bitmap>,
}

impl FileRecord {
    fn source_count(&self) -> usize {
        self.holders.values().filter(|b| is_source(b)).count()
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
    /// Sorted, so a file list needs no sort under the lock.
    files: BTreeMap<String, FileRecord>,
    /// Sum of the chunk counts of `files` (for [`MAX_TOTAL_CHUNKS`]).
    total_chunks: u64,
    peers: HashMap<ConnId, PeerRecord>,
    endpoints: HashMap<SocketAddr, ConnId>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
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
        if let Some(&other) = self.endpoints.get(&endpoint) {
            if other != conn {
                self.remove_peer(other);
                evicted = Some(other);
            }
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
            peer.endpoint = endpoint;
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
        let new_for_peer = !peer.files.contains(&f.name);
        if new_for_peer {
            if peer.files.len() >= MAX_FILES_PER_PEER {
                return Err(RegistryError::Full(format!(
                    "a peer may hold at most {MAX_FILES_PER_PEER} files"
                )));
            }
            if peer.chunks + count > MAX_CHUNKS_PER_PEER {
                return Err(RegistryError::Full(format!(
                    "a peer may hold at most {MAX_CHUNKS_PER_PEER} chunks in all"
                )));
            }
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
                // serve nothing, so the new content takes it over.
                self.forget_file(&f.name);
            }
        }
        if !self.files.contains_key(&f.name) {
            if self.total_chunks + count > MAX_TOTAL_CHUNKS {
                return Err(RegistryError::Full(format!(
                    "the tracker is full ({MAX_TOTAL_CHUNKS} chunks registered)"
                )));
            }
            self.total_chunks += count;
            self.files.insert(
                f.name.clone(),
                FileRecord {
                    meta: FileMeta {
                        geometry,
                        hashes: f.hashes.into(),
                    },
                    holders: HashMap::new(),
                },
            );
        }
        if let Some(record) = self.files.get_mut(&f.name) {
            // A re-register states what the peer holds now: replace, not merge.
            record.holders.insert(conn, have);
        }
        if let Some(p) = self.peers.get_mut(&conn) {
            if p.files.insert(f.name) {
                p.chunks += count;
            }
        }
        Ok(())
    }

    /// Drops a file and every holder's claim on it.
    fn forget_file(&mut self, name: &str) {
        let Some(r) = self.files.remove(name) else {
            return;
        };
        self.total_chunks -= u64::from(r.meta.geometry.count());
        for id in r.holders.keys() {
            if let Some(p) = self.peers.get_mut(id) {
                if p.files.remove(name) {
                    p.chunks -= u64::from(r.meta.geometry.count());
                }
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
        let peer = self
            .peers
            .get_mut(&conn)
            .ok_or(RegistryError::NotRegistered)?;
        let record = self
            .files
            .get_mut(name)
            .ok_or_else(|| RegistryError::UnknownFile(name.to_owned()))?;
        let g = record.meta.geometry;
        let i = g.index(index).ok_or_else(|| RegistryError::BadIndex {
            name: name.to_owned(),
            index,
            count: g.count(),
        })?;
        if !peer.files.contains(name) {
            if peer.files.len() >= MAX_FILES_PER_PEER
                || peer.chunks + u64::from(g.count()) > MAX_CHUNKS_PER_PEER
            {
                return Err(RegistryError::Full(
                    "this peer holds too many files or chunks".into(),
                ));
            }
            peer.files.insert(name.to_owned());
            peer.chunks += u64::from(g.count());
        }
        record
            .holders
            .entry(conn)
            .or_insert_with(|| Bitmap::new(g.count()))
            .set(i.get());
        Ok(())
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
        for name in peer.files {
            if let Some(r) = self.files.get_mut(&name) {
                r.holders.remove(&conn);
                if r.holders.is_empty() {
                    self.total_chunks -= u64::from(r.meta.geometry.count());
                    self.files.remove(&name);
                }
            }
        }
        true
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

    /// The file's meta and up to `max_sources` sources. When more peers hold
    /// it, a sample chosen with `seed` (so repeated queries see different
    /// peers and load spreads). Holders with no chunk are not sources.
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
        let reachable = |id: &ConnId| {
            local_requester
                || self
                    .peers
                    .get(id)
                    .is_some_and(|p| !p.endpoint.ip().to_canonical().is_loopback())
        };
        let mut ids: Vec<ConnId> = record
            .holders
            .iter()
            .filter(|(id, b)| is_source(b) && reachable(id))
            .map(|(&id, _)| id)
            .collect();
        if ids.is_empty() {
            return Err(RegistryError::UnknownFile(name.to_owned()));
        }
        ids.sort_unstable();
        if ids.len() > max_sources {
            // Partial Fisher-Yates with a xorshift stream.
            let mut x = seed | 1;
            for i in 0..max_sources {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let j = i + (x % (ids.len() - i) as u64) as usize;
                ids.swap(i, j);
            }
            ids.truncate(max_sources);
        }
        let sources = ids
            .iter()
            .filter_map(|id| {
                let ep = self.peers.get(id)?.endpoint;
                Some((ep, record.holders.get(id)?.as_bytes().to_vec()))
            })
            .collect();
        Ok(LocateSnapshot {
            meta: record.meta.clone(),
            sources,
        })
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
}
