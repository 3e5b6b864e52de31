//! A running peer: share index + chunk server + tracker session, and the
//! downloads it runs. What `peer share` and `peer get` are made of, and what
//! the tests start in-process.
//!
//! Owns: the start and stop order (serve first so the registered port is
//! live; leave the tracker before closing the server). Calls the other peer
//! modules only.

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
    pub tracker: SocketAddr,
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
        NodeConfig {
            tracker,
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            upload_limit: None,
            server: ServerConfig::default(),
            session: SessionConfig::default(),
        }
    }
}

/// A running peer. Dropping it leaves the tracker and stops serving.
pub struct Node {
    tracker: SocketAddr,
    share: Arc<ShareIndex>,
    server: ChunkServer,
    session: Option<TrackerSession>,
    /// Names with a download running, so one name is never fetched twice
    /// at once into the same `.part`.
    downloading: Mutex<HashSet<String>>,
}

impl Node {
    /// Shares `files`, starts serving, then connects to the tracker (in the
    /// background: an unreachable tracker is retried, not fatal).
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
        let server = ChunkServer::start(cfg.listen, Arc::clone(&share), limiter, cfg.server)?;
        let session = TrackerSession::start(
            cfg.tracker,
            server.local_addr().port(),
            Arc::clone(&share),
            cfg.session,
            events,
        )?;
        Ok(Node {
            tracker: cfg.tracker,
            share,
            server,
            session: Some(session),
            downloading: Mutex::new(HashSet::new()),
        })
    }

    /// Where the chunk server listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    pub fn share(&self) -> &Arc<ShareIndex> {
        &self.share
    }

    pub fn tracker(&self) -> SocketAddr {
        self.tracker
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

    /// Whether the tracker session is connected and registered.
    pub fn is_connected(&self) -> bool {
        self.session.as_ref().is_some_and(|s| s.is_connected())
    }

    /// Whether a download of `name` is running in this peer right now.
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
    /// once `cancel` is set. One download per name at a time.
    pub fn download_cancellable(
        &self,
        name: &str,
        dir: &Path,
        opts: &DownloadOptions,
        cancel: Option<&AtomicBool>,
        on_progress: &mut dyn FnMut(&Progress),
    ) -> Result<Summary> {
        if !lock(&self.downloading).insert(name.to_owned()) {
            return Err(PeerError::Invalid(format!(
                "{name} is already being downloaded"
            )));
        }
        let session = self.session.as_ref();
        let on_chunk = |n: &str, i: u32| {
            if let Some(s) = session {
                s.chunk_registered(n, i);
            }
        };
        let on_file = |n: &str| {
            if let Some(s) = session {
                s.register_files(vec![n.to_owned()]);
            }
        };
        let ctx = DownloadContext {
            tracker: self.tracker,
            share: &self.share,
            self_port: Some(self.local_addr().port()),
            on_chunk: &on_chunk,
            on_file: &on_file,
            cancel,
        };
        let r = download::download(&ctx, name, dir, opts, on_progress);
        lock(&self.downloading).remove(name);
        r
    }

    /// Leaves the tracker, then stops serving and joins every thread.
    pub fn leave(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(s) = self.session.take() {
            s.leave();
        }
        self.server.shutdown();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}
