//! `tracker`: the p2pfs tracker. The user interface is the library's `ui`
//! module; this only starts it.

use std::process::ExitCode;

use p2pfs::ui::{self, args::TrackerArgs};

fn main() -> ExitCode {
    ui::init_logging("info");
    let args: TrackerArgs = match ui::args::from_env() {
        Ok(a) => a,
        Err(status) => return status,
    };
    ui::exit_status("tracker", ui::run_tracker(args))
}
