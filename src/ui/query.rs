//! `peer list` and `peer where`: one question to every tracker given, the
//! answers merged and printed; a tracker that did not answer is named on
//! stderr, and only when none answers is it an error. `list PREFIX` keeps
//! the files under PREFIX (whole path components).
//!
//! Owns nothing. Calls `peer::client` and [`super::format`].

use std::net::SocketAddr;

use super::BoxError;
use super::args::{ListArgs, WhereArgs};
use super::format::{format_file_list, format_locations};
use crate::peer::download::batch::is_under;
use crate::peer::{PeerError, client};

pub fn list(a: ListArgs) -> Result<(), BoxError> {
    let merged = client::list_files_all(&super::trackers(a.tracker.as_deref())?)?;
    warn_unanswered(&merged.failed);
    let (mut files, truncated) = merged.value;
    if let Some(prefix) = a.prefix.as_deref() {
        files.retain(|f| is_under(&f.name, prefix));
        if files.is_empty() {
            outln!("no files under {prefix:?} on the network")?;
            return Ok(());
        }
    }
    out!("{}", format_file_list(&files, truncated))?;
    Ok(())
}

pub fn where_(a: WhereArgs) -> Result<(), BoxError> {
    let merged = client::locate_all(&super::trackers(a.tracker.as_deref())?, &a.name, false)?;
    warn_unanswered(&merged.failed);
    let (l, _) = merged.value;
    out!("{}", format_locations(&l, a.width.max(1), None)?)?;
    Ok(())
}

/// One line on stderr per tracker that did not answer (the answer printed
/// comes from the others).
pub fn warn_unanswered(failed: &[(SocketAddr, PeerError)]) {
    for (t, e) in failed {
        eprintln!(
            "peer: warning: tracker left out ({}); showing what the others say",
            client::about(*t, e)
        );
    }
}
