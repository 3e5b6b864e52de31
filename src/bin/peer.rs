//! `peer`: share a folder, download files, look at the network. The user
//! interface is the library's `ui` module; this only starts it.

use std::process::ExitCode;

use p2pfs::ui::{self, args::PeerArgs};

fn main() -> ExitCode {
    let args: PeerArgs = match ui::args::from_env() {
        Ok(a) => a,
        Err(status) => return status,
    };
    if let Err(e) = ui::log::init(args.verbose(), args.log_file()) {
        return ui::exit_status("peer", Err(e.into()));
    }
    ui::exit_status("peer", ui::run_peer(args))
}
