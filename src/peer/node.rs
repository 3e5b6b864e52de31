//! A running peer: share index + chunk server + one tracker session per
//! tracker, and the downloads it runs. What `peer share` and `peer get` are
//! made of, and what the tests start in-process.
//!
//! Owns: the start and stop order (serve first so the registered port is
//! live; leave the trackers before closing the server), and fanning every
//! registration out to each tracker's session. Several trackers are
//! independent: each gets the same Register and ChunkRegisters on its own
//! control connection, and one that is down is retried by its own session
//! while the others carry on. Calls the other peer modules only.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use crossbeam_channel::Sender;

use super::download::{self, DownloadContext, DownloadOptions, Progress, Summary};
use super::ratelimit::RateLimiter;
use super::server::{ChunkServer, ServerConfig};
use super::session::{SessionConfig, SessionEvent, TrackerSession};
use super::share::{ShareIndex, SharedFile};
use super::{PeerError, Result};
use crate::sync::lock;

/// How to start a peer.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Every tracker to register with and ask (at least one; duplicates are
    /// ignored).
    pub trackers: Vec<SocketAddr>,
    /// Where the chunk server listens; port 0 picks a free one, and the port
    /// actually bound is the one registered.
    pub listen: SocketAddr,
    /// Bytes per second shared by all uploads; None = unlimited.
    pub upload_limit: Option<u64>,
    pub server: ServerConfig,
    pub session: SessionConfig,
}

impl NodeConfig {
    pub fn new(tracker: SocketAddr) -> NodeConfig {
        NodeConfig::with_trackers(vec![tracker])
    }

    /// A peer that registers with, and asks, each of `trackers`.
    pub fn with_trackers(trackers: Vec<SocketAddr>) -> NodeConfig {
        NodeConfig {
            trackers,
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            upload_limit: None,
            server: ServerConfig::default(),
            session: SessionConfig::default(),
        }
    }
}

/// A running peer. Dropping it leaves the trackers and stops serving.
pub struct Node {
    trackers: Vec<SocketAddr>,
    share: Arc<ShareIndex>,
    server: ChunkServer,
    /// One per tracker, in the order of `trackers`.
    sessions: Vec<TrackerSession>,
    /// Names with a download running (or a set's file fetched and not yet
    /// named), so one name is never fetched twice at once into the same
    /// `.part` and a file is not taken as there before it is.
    downloading: Arc<Mutex<HashSet<String>>>,
}

/// A name in a [`Node`]'s downloads in progress, taken out when dropped.
struct Downloading {
    names: Arc<Mutex<HashSet<String>>>,
    name: String,
}

impl Downloading {
    /// Claims `name`; `None` if a download of it is in progress already.
    fn claim(names: &Arc<Mutex<HashSet<String>>>, name: &str) -> Option<Downloading> {
        lock(names).insert(name.to_owned()).then(|| Downloading {
            names: Arc::clone(names),
            name: name.to_owned(),
        })
    }
}

impl Drop for Downloading {
    fn drop(&mut self) {
        lock(&self.names).remove(&self.name);
    }
}

impl Node {
    /// Shares `files`, starts serving, then connects to every tracker (in
    /// the background: an unreachable tracker is retried, not fatal). Events
    /// of every session go to `events`; each names its tracker.
    pub fn start(
        cfg: NodeConfig,
        files: Vec<SharedFile>,
        events: Option<Sender<SessionEvent>>,
    ) -> Result<Node> {
        let share = Arc::new(ShareIndex::new());
        for f in files {
            share.insert(Arc::new(f));
        }
        let limiter = Arc::new(RateLimiter::new(cfg.upload_limit));
        let trackers = dedup(cfg.trackers);
        if trackers.is_empty() {
            return Err(PeerError::Invalid("no tracker given".into()));
        }
        let server = ChunkServer::start(cfg.listen, Arc::clone(&share), limiter, cfg.server)?;
        let mut sessions = Vec::with_capacity(trackers.len());
        for &t in &trackers {
            let started = TrackerSession::start(
                t,
                server.local_addr().port(),
                Arc::clone(&share),
                cfg.session,
                events.clone(),
            );
            match started {
                Ok(s) => sessions.push(s),
                Err(e) => {
                    TrackerSession::leave_all(sessions);
                    return Err(e);
                }
            }
        }
        Ok(Node {
            trackers,
            share,
            server,
            sessions,
            downloading: Arc::new(Mutex::new(HashSet::new())),
        })
    }

    /// Where the chunk server listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    pub fn share(&self) -> &Arc<ShareIndex> {
        &self.share
    }

    /// The first tracker given.
    pub fn tracker(&self) -> SocketAddr {
        self.trackers[0]
    }

    /// Every tracker, in the order given.
    pub fn trackers(&self) -> &[SocketAddr] {
        &self.trackers
    }

    /// Chunk bytes this peer has uploaded.
    pub fn uploaded_bytes(&self) -> u64 {
        self.server.uploaded_bytes()
    }

    /// Connections open to this peer's chunk server right now (peers
    /// downloading from it), for a status display.
    pub fn upload_connections(&self) -> usize {
        self.server.active_connections()
    }

    /// Whether at least one tracker session is connected and registered.
    pub fn is_connected(&self) -> bool {
        self.sessions.iter().any(|s| s.is_connected())
    }

    /// The trackers whose session is connected and registered right now.
    pub fn connected_trackers(&self) -> Vec<SocketAddr> {
        self.trackers
            .iter()
            .zip(&self.sessions)
            .filter(|(_, s)| s.is_connected())
            .map(|(t, _)| *t)
            .collect()
    }

    /// Whether a download of `name` is running in this peer right now, or
    /// a set's file of that name is fetched and waits to be named.
    pub fn is_downloading(&self, name: &str) -> bool {
        lock(&self.downloading).contains(name)
    }

    /// Downloads `name` into `dir`, serving and registering each verified
    /// chunk as it lands. See [`download::download`].
    pub fn download(
        &self,
        name: &str,
        dir: &Path,
        opts: &DownloadOptions,
        on_progress: &mut dyn FnMut(&Progress),
    ) -> Result<Summary> {
        self.download_cancellable(name, dir, opts, None, on_progress)
    }

    /// [`Node::download`] that stops (keeping verified chunks for a resume)
    /// once `cancel` is set. One download per name at a time; on a set's
    /// `batch-N` thread the name stays claimed after an `Ok` until the
    /// set's finisher has named the file.
    pub fn download_cancellable(
        &self,
        name: &str,
        dir: &Path,
        opts: &DownloadOptions,
        cancel: Option<&AtomicBool>,
        on_progress: &mut dyn FnMut(&Progress),
    ) -> Result<Summary> {
        let Some(claim) = Downloading::claim(&self.downloading, name) else {
            return Err(PeerError::Invalid(format!(
                "{name} is already being downloaded"
            )));
        };
        let sessions = &self.sessions;
        let on_chunk = |n: &str, i: u32| {
            for s in sessions {
                s.chunk_registered(n, i);
            }
        };
        let on_file = |n: &str| {
            for s in sessions {
                s.register_files(vec![n.to_owned()]);
            }
        };
        let ctx = DownloadContext {
            trackers: &self.trackers,
            share: &self.share,
            self_port: Some(self.local_addr().port()),
            on_chunk: &on_chunk,
            on_file: &on_file,
            cancel,
        };
        let r = download::download(&ctx, name, dir, opts, on_progress);
        // A set's file can come back fetched but not yet named (see
        // `download::take_unnamed`): it stays claimed until it is.
        download::hold_until_named(name, Box::new(claim));
        r
    }

    /// Leaves every tracker, then stops serving and joins every thread.
    pub fn leave(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        TrackerSession::leave_all(std::mem::take(&mut self.sessions));
        self.server.shutdown();
    }
}

/// `v` without repeats, in its order.
fn dedup(v: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let mut seen = HashSet::new();
    v.into_iter().filter(|a| seen.insert(*a)).collect()
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}
