//! The peer: shares a folder, serves chunks, downloads from many peers.
//!
//! Owns (one file each):
//! - [`share`]: the share index: which files this peer offers, their hashes
//!   and have-bitmaps, hashing a folder at start.
//! - [`server`]: the chunk server: answers ChunkRequest with ChunkData, on
//!   the shared server skeleton (`net::server`).
//! - [`ratelimit`]: the upload limiter shared by all of a peer's uploads.
//! - [`picker`]: rarest-first chunk choice (pure data, no I/O).
//! - [`download`]: one download: worker thread per source, the assembler.
//! - [`session`]: the persistent control connection to the tracker.
//! - [`node`]: a running peer (share index + server + session) and its downloads.
//! - [`watch`]: live sharing: the folder watcher that keeps the share index
//!   in line with the shared folder.
//! - [`client`]: a greeted connection to a tracker or peer (built on
//!   `net::client`) and the one-shot tracker queries.
//!
//! Depends on `wire`, `chunks`, `net` (server skeleton, connection caps,
//! client setup), `limits` and `sync` only; never on `tracker`.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::wire::{ErrorCode, WireError};

pub mod client;
pub mod download;
pub mod node;
pub mod picker;
pub mod ratelimit;
pub mod server;
pub mod session;
pub mod share;
pub mod watch;

/// Everything that can go wrong in the peer, with enough context to print
/// one clear line.
#[derive(Debug)]
pub enum PeerError {
    /// A file-system operation failed on `path`.
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// Talking to `who` (a tracker or peer address) failed.
    Net { who: String, source: WireError },
    /// `who` answered with an Error message.
    Refused {
        who: String,
        code: ErrorCode,
        message: String,
    },
    /// `who` sent a valid message that makes no sense here.
    Protocol { who: String, what: String },
    /// The network keys do not match (see `net::NetError::Key`); `what` is
    /// the whole sentence.
    Key { who: String, what: String },
    /// A user-supplied name or option is not acceptable.
    Invalid(String),
    /// A download could not finish.
    Download(String),
    /// What was asked for is not on the network (no file of that name).
    NotFound(String),
    /// Stopped on request (a cancel flag was set) before the work was done.
    Interrupted(String),
    /// None of several trackers answered: each one and why.
    NoTracker(String),
}

impl PeerError {
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> PeerError {
        PeerError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub fn net(who: impl fmt::Display, source: WireError) -> PeerError {
        PeerError::Net {
            who: who.to_string(),
            source,
        }
    }
}

impl fmt::Display for PeerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerError::Io { op, path, source } => {
                write!(f, "cannot {op} {}: {source}", path.display())
            }
            PeerError::Net { who, source } => source.about(who, f),
            PeerError::Refused { who, code, message } => {
                write!(f, "{who} refused: {code}: {message}")
            }
            PeerError::Protocol { who, what } => write!(f, "{who}: protocol error: {what}"),
            PeerError::Key { what, .. } => f.write_str(what),
            PeerError::Invalid(s) => f.write_str(s),
            PeerError::Download(s) => f.write_str(s),
            PeerError::NotFound(s) => f.write_str(s),
            PeerError::Interrupted(s) => f.write_str(s),
            PeerError::NoTracker(s) => write!(f, "no tracker answers ({s})"),
        }
    }
}

impl std::error::Error for PeerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PeerError::Io { source, .. } => Some(source),
            PeerError::Net { source, .. } => Some(source),
            _ => None,
        }
    }
}

pub type Result<T, E = PeerError> = std::result::Result<T, E>;

/// Helpers shared by the peer modules' unit tests.
#[cfg(test)]
pub(crate) mod testutil {
    use std::fs;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A unique temporary folder, removed on drop.
    pub struct TempDir(pub PathBuf);

    impl TempDir {
        pub fn new(tag: &str) -> TempDir {
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "p2pfs-unit-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}
