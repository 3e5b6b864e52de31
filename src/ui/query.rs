//! `peer list` and `peer where`: one question to every tracker given, the
//! answers merged and printed; a tracker that did not answer is named on
//! stderr, and only when none answers is it an error. With `--json` only
//! JSON lines go to stdout ([`super::json`]); warnings stay on stderr.
//!
//! Owns nothing. Calls `peer::client`, [`super::format`] and
//! [`super::json`].

use std::net::SocketAddr;

use super::BoxError;
use super::args::{ListArgs, WhereArgs};
use super::format::{format_file_list, format_locations, format_long_list};
use super::json;
use crate::peer::{PeerError, client};

pub fn list(a: ListArgs) -> Result<(), BoxError> {
    let trackers = super::trackers(a.tracker.as_deref())?;
    if !a.long && !a.json {
        let merged = client::list_files_all(&trackers)?;
        warn_unanswered(&merged.failed);
        let (files, truncated) = merged.value;
        out!("{}", format_file_list(&files, truncated))?;
        return Ok(());
    }
    // The content id needs each file's hashes: a Locate per file.
    let merged = client::describe_all(&trackers)?;
    warn_unanswered(&merged.failed);
    let (files, truncated) = merged.value;
    if !a.json {
        out!("{}", format_long_list(&files, truncated))?;
        return Ok(());
    }
    let mut lines = String::new();
    for f in &files {
        lines.push_str(&json::line(&json::file(f))?);
    }
    out!("{lines}")?;
    if truncated {
        eprintln!("peer: warning: the list was cut short by the tracker");
    }
    Ok(())
}

pub fn where_(a: WhereArgs) -> Result<(), BoxError> {
    // The content id in the JSON needs the hashes.
    let merged = client::locate_all(&super::trackers(a.tracker.as_deref())?, &a.name, a.json)?;
    warn_unanswered(&merged.failed);
    let (l, _) = merged.value;
    if !a.json {
        out!("{}", format_locations(&l, a.width.max(1), None)?)?;
        return Ok(());
    }
    let mut lines = String::new();
    for s in json::sources(&l).map_err(from_tracker)? {
        lines.push_str(&json::line(&s)?);
    }
    out!("{lines}")?;
    Ok(())
}

/// A description from the trackers that cannot be shown (no hashes, a bad
/// bitmap): a protocol error.
fn from_tracker(what: String) -> PeerError {
    PeerError::Protocol {
        who: "the tracker".into(),
        what,
    }
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
