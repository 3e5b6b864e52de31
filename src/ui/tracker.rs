//! `tracker`: check the options, run the library's tracker until Ctrl-C or
//! SIGTERM, shut it down.
//!
//! Owns: the option checks that need more than one option's value. Calls
//! `tracker`, [`super::keys`] and [`super::signals`].

use std::time::Duration;

use super::BoxError;
use super::args::TrackerArgs;
use super::signals::StopSignals;
use crate::limits;
use crate::tracker::{Tracker, TrackerConfig};

pub fn run(args: TrackerArgs) -> Result<(), BoxError> {
    let keepalive = limits::KEEPALIVE_INTERVAL.as_secs();
    if args.idle_timeout <= keepalive {
        return Err(format!(
            "--idle-timeout must be more than the peers' {keepalive} s keepalive interval \
             (default {})",
            limits::TRACKER_IDLE_TIMEOUT.as_secs()
        )
        .into());
    }
    let key_file = super::keys::install(args.key_file.as_deref())?;
    // Catch signals before starting, so an early one is not lost.
    let signals = StopSignals::install()?;
    let mut tracker = Tracker::start(TrackerConfig {
        listen: args.listen,
        idle_timeout: Duration::from_secs(args.idle_timeout),
        max_connections: args.max_connections.max(1),
        max_per_ip: args.max_per_ip.max(1),
        http: args.http,
        ..TrackerConfig::default()
    })?;
    outln!("tracker listening on {}", tracker.local_addr())?;
    if let Some(a) = tracker.http_addr() {
        outln!("dashboard on http://{a}/ (also /api/files and /metrics)")?;
    }
    if let Some(p) = &key_file {
        outln!("{}", super::keys::private_line(p))?;
    }
    signals.wait();
    tracker.shutdown();
    Ok(())
}
