//! `tracker`: the p2pfs tracker. Parses arguments, runs the library's
//! tracker until Ctrl-C or SIGTERM, prints any fatal error chain.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use argh::FromArgs;
use p2pfs::error_chain;
use p2pfs::tracker::{Tracker, TrackerConfig};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// The p2pfs tracker: keeps track of which peers hold which chunks of which
/// files. Peers register their files and chunks over one persistent
/// connection each; a peer that leaves, disconnects or stays silent for 30 s
/// (peers send a keepalive every 10 s) is forgotten with all its chunks.
/// A new connection must send its Hello within 10 s. At most
/// --max-connections connections are open at once, and at most --max-per-ip
/// from one IPv4 address (or IPv6 /64); others get Error{Busy} and are
/// closed. Stop it with Ctrl-C or SIGTERM. Set RUST_LOG=debug for
/// per-request logs.
#[derive(FromArgs)]
struct Args {
    /// address to listen on (default 0.0.0.0:7000; port 0 picks a free port)
    #[argh(option, default = "SocketAddr::from(([0, 0, 0, 0], 7000))")]
    listen: SocketAddr,
    /// seconds of silence after which a connection is dropped (default 30)
    #[argh(option, default = "30")]
    idle_timeout: u64,
    /// most connections open at once (default 4096)
    #[argh(option, default = "p2pfs::tracker::server::MAX_CONNECTIONS")]
    max_connections: usize,
    /// most connections open at once from one IP address (default 256)
    #[argh(option, default = "p2pfs::tracker::server::MAX_PER_IP")]
    max_per_ip: usize,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args: Args = argh::from_env();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tracker: error: {}", error_chain(&*e));
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let keepalive = p2pfs::wire::KEEPALIVE_INTERVAL.as_secs();
    if args.idle_timeout <= keepalive {
        return Err(format!(
            "--idle-timeout must be more than the peers' {keepalive} s keepalive interval (default 30)"
        )
        .into());
    }
    // Register the handlers before starting, so an early signal is not lost.
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    let mut tracker = Tracker::start(TrackerConfig {
        listen: args.listen,
        idle_timeout: Duration::from_secs(args.idle_timeout),
        max_connections: args.max_connections.max(1),
        max_per_ip: args.max_per_ip.max(1),
        ..TrackerConfig::default()
    })?;
    println!("tracker listening on {}", tracker.local_addr());
    if let Some(sig) = signals.forever().next() {
        log::info!("signal {sig}: shutting down");
    }
    tracker.shutdown();
    Ok(())
}
