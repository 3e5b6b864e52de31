//! `peer get`: download one file with a progress bar, print the summary,
//! and seed it on request.
//!
//! Owns: what `peer get` prints. The checks of the name and of the file's
//! presence are the download's own (its errors say what is wrong); this
//! file only shows them. Calls `peer::node`, `peer::download` and the other
//! `ui` modules.

use super::args::GetArgs;
use super::format::format_summary;
use super::progress::StatusLine;
use super::signals::StopSignals;
use super::{BoxError, Resumable, node_config, stopped_by_signal};
use crate::peer::download::DownloadOptions;
use crate::peer::node::Node;

pub fn run(a: GetArgs, signals: &StopSignals) -> Result<(), BoxError> {
    let cfg = node_config(a.tracker.as_deref(), a.listen, a.upload_limit)?;
    let node = Node::start(cfg, Vec::new(), None)?;
    note!(
        "serving chunks on {} while downloading {}",
        node.local_addr(),
        a.name
    )?;
    // The file's chunk size is not known yet: warn for the default one.
    if a.upload_limit.is_some_and(|l| l > 0) {
        super::share::say_upload_limit(a.upload_limit, crate::limits::DEFAULT_CHUNK_SIZE)?;
    }
    super::share::say_download_limit(a.download_limit)?;
    let opts = DownloadOptions {
        pipeline_depth: a.pipeline.max(1),
        expect_id: a.id,
        ..super::share::download_options(a.download_limit)
    };
    // Not with -v on the terminal: its log lines on the same stream would
    // break the bar up. With --log-file they go elsewhere.
    let bar = StatusLine::new(!a.quiet && (!a.verbose || a.log_file.is_some()));
    // Ctrl-C / SIGTERM stop the download cleanly (verified chunks kept for
    // a resume, Leave sent) rather than killing it mid-write.
    let mut started = false;
    let result =
        node.download_cancellable(&a.name, &a.dir, &opts, Some(signals.flag()), &mut |p| {
            started = true;
            bar.draw_progress(p)
        });
    bar.clear();
    let summary = match result {
        Ok(s) => s,
        Err(e) if signals.received().is_some() => {
            node.leave();
            return Err(stopped_by_signal(e, signals, None));
        }
        Err(e) => {
            node.leave();
            return Err(if started {
                Box::new(Resumable::new(e, "run the same command again to resume"))
            } else {
                Box::new(e)
            });
        }
    };
    note!("{}", format_summary(&summary).trim_end())?;
    if a.seed {
        note!("seeding {} on {} until Ctrl-C", a.name, node.local_addr())?;
        let watch = super::share::watch_seeded(&node, &a.dir, std::slice::from_ref(&a.name))?;
        signals.wait();
        watch.stop();
    }
    node.leave();
    Ok(())
}
