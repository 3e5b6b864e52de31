//! `tracker`: the p2pfs tracker. The user interface is the library's `ui`
//! module; this only starts it.

use std::process::ExitCode;

use p2pfs::ui::{self, args::TrackerArgs};

fn main() -> ExitCode {
    let args: TrackerArgs = match ui::args::from_env() {
        Ok(a) => a,
        Err(status) => return status,
    };
    if let Err(e) = ui::log::init(args.verbose, None) {
        return ui::exit_status("tracker", Err(e.into()));
    }
    ui::exit_status("tracker", ui::run_tracker(args))
}
