//! `peer keygen` and the `--key-file` option of every command: write a new
//! network key, or load the one a command was given (or that
//! P2PFS_KEY_FILE names) and make it this process's key before anything
//! connects.
//!
//! Owns: what keygen prints and where a command's key comes from. The key
//! file format and its checks are `net::key`'s. Calls `net::key`.

use std::path::{Path, PathBuf};

use super::BoxError;
use super::args::KeygenArgs;
use crate::net::key::{self, KEY_FILE_ENV, NetworkKey};

/// `peer keygen FILE`.
pub fn keygen(a: KeygenArgs) -> Result<(), BoxError> {
    NetworkKey::write_new(&a.file)?;
    let f = a.file.display();
    outln!("wrote a new network key to {f} (readable by you only)")?;
    outln!(
        "copy it to every machine of the network and start the tracker and every peer with \
         --key-file {f} (or {KEY_FILE_ENV}={f})"
    )?;
    Ok(())
}

/// Loads the key named by `option`, or else by P2PFS_KEY_FILE (unset or
/// empty: no key), and installs it for every connection of this process.
/// Returns the file used, if any.
pub fn install(option: Option<&Path>) -> Result<Option<PathBuf>, BoxError> {
    let path = match option {
        Some(p) => Some(p.to_path_buf()),
        None => std::env::var_os(KEY_FILE_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from),
    };
    let loaded = match &path {
        Some(p) => Some(NetworkKey::load(p)?),
        None => None,
    };
    key::install(loaded)?;
    Ok(path)
}

/// The line a server prints after its address when it is keyed.
pub fn private_line(path: &Path) -> String {
    format!(
        "private network: only holders of the key in {} can connect; every connection is encrypted",
        path.display()
    )
}
