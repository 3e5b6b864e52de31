//! The lock `peer share` holds on the folder it shares, so that a second
//! `peer share` on the same folder is refused with a clear message instead
//! of showing up as a second source of every file.
//!
//! The lock is the file `DIR/.p2pfs-lock` ([`LOCK_FILE_NAME`]; the share
//! scan never offers it), created exclusively, holding the owner's process
//! id and, once it serves, its port: `PID PORT`. It is removed when the
//! owner ends. A lock whose process is gone (a crash, `kill -9`) is stale
//! and taken over.
//!
//! Owns: the lock file. Calls std only (and `peer::share` for the name).

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::peer::share::LOCK_FILE_NAME;

/// Another live `peer share` holds the folder.
#[derive(Debug)]
pub struct FolderInUse(pub String);

impl std::fmt::Display for FolderInUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FolderInUse {}

/// The lock on a shared folder, released (the file removed) on drop.
pub struct FolderLock {
    path: PathBuf,
}

impl FolderLock {
    /// Takes the lock on `dir`, taking over a stale one. Fails with
    /// [`FolderInUse`] when a live process holds it, or with the I/O error
    /// when the lock cannot be written (a read-only folder is not locked:
    /// nothing can be downloaded into it anyway, and sharing it twice is
    /// only wasteful).
    pub fn acquire(dir: &Path) -> Result<Option<FolderLock>, Box<dyn std::error::Error>> {
        let path = dir.join(LOCK_FILE_NAME);
        for _ in 0..2 {
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    write!(f, "{}", std::process::id())?;
                    return Ok(Some(FolderLock { path }));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let text = fs::read_to_string(&path).unwrap_or_default();
                    let mut words = text.split_whitespace();
                    let pid = words.next().and_then(|w| w.parse::<u32>().ok());
                    let port = words.next().and_then(|w| w.parse::<u16>().ok());
                    match pid {
                        Some(pid) if alive(pid) => {
                            let serving = port
                                .map_or(String::new(), |p| format!(", serving chunks on port {p}"));
                            return Err(Box::new(FolderInUse(format!(
                                "{} is already shared by another peer (process {pid}{serving}); \
                                 stop that one first, or remove {} if it is not running",
                                dir.display(),
                                path.display()
                            ))));
                        }
                        // Stale (or half-written by a peer that died at
                        // once): take it over.
                        _ => {
                            let _ = fs::remove_file(&path);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::ReadOnlyFilesystem => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Ok(None),
                // A folder that does not exist: the scan says so better.
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(Box::new(e)),
            }
        }
        Err(Box::new(FolderInUse(format!(
            "{} is being locked by another peer starting at the same time",
            dir.display()
        ))))
    }

    /// Records the port this peer serves on, for the message another
    /// `peer share` on the folder gets.
    pub fn serving(&self, port: u16) {
        let text = format!("{} {port}\n", std::process::id());
        // Rewritten in place: the file stays ours throughout.
        if let Ok(mut f) = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&self.path)
        {
            let _ = f.write_all(text.as_bytes());
        }
    }
}

impl Drop for FolderLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Whether process `pid` exists. Linux: `/proc/PID`; where there is no
/// `/proc`, a lock is trusted as live (removing it is the way out, and the
/// message says so).
fn alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return false; // a lock left by an earlier process with our pid
    }
    if Path::new("/proc/self").exists() {
        Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}
