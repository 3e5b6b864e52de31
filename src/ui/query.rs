//! `peer list` and `peer where`: one question to the tracker, one answer
//! printed.
//!
//! Owns nothing. Calls `peer::client` and [`super::format`].

use super::BoxError;
use super::args::{ListArgs, WhereArgs};
use super::format::{format_file_list, format_locations};
use crate::peer::client;

pub fn list(a: ListArgs) -> Result<(), BoxError> {
    let (files, truncated) = client::list_files(super::tracker_addr(a.tracker.as_deref())?)?;
    out!("{}", format_file_list(&files, truncated))?;
    Ok(())
}

pub fn where_(a: WhereArgs) -> Result<(), BoxError> {
    let l = client::locate(super::tracker_addr(a.tracker.as_deref())?, &a.name, false)?;
    out!("{}", format_locations(&l, a.width.max(1), None)?)?;
    Ok(())
}
