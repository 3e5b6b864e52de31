//! p2pfs: peer-to-peer file sharing with a central tracker.
//!
//! Layout (each module's top comment says what it owns and may call):
//! - [`wire`]: frames, messages, name rules. Depends on `limits` only.
//! - [`chunks`]: chunk geometry, SHA-1, bitmaps. Depends on `limits` only.
//! - [`limits`]: every limit and default, stated once. Depends on nothing.
//! - [`sync`]: the one poison-ignoring lock helper. Depends on nothing.
//! - [`net`]: what every connection does whatever is said on it: the server
//!   skeleton shared by both servers (accept with caps, a thread per
//!   connection, Hello, timeouts, orderly close, shutdown), connection caps,
//!   and client connection setup. Depends on `wire`, `limits` and `sync`
//!   only.
//! - [`tracker`]: the registry (pure data), the tracker protocol handler,
//!   its counters and its optional read-only web dashboard (HTTP).
//!   Depends on `wire`, `chunks`, `net`, `limits` and `sync` only.
//! - [`peer`]: share index, chunk server handler, upload limiter, picker,
//!   tracker session, download engine, node. Depends on `wire`, `chunks`,
//!   `net`, `limits` and `sync` only, never on `tracker`.
//! - [`ui`]: the user interface of the `peer` and `tracker` programs
//!   (command lines, output, progress, signals, the prompt). Depends on the
//!   engine modules above; none of them depends on it.
//!
//! Everything is synchronous std::net with one OS thread per connection;
//! threads talk over bounded crossbeam channels. docs/architecture.md draws
//! the threads and channels of each process, the lock rules and the order
//! things stop in.

#![forbid(unsafe_code)]

pub mod chunks;
pub mod limits;
pub mod net;
pub mod peer;
pub mod sync;
pub mod tracker;
pub mod ui;
pub mod wire;

/// An error and its chain of causes on one line ("a: b: c"), skipping a
/// cause whose text the outer message already contains. What the binaries
/// print before exiting non-zero.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let cs = c.to_string();
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        cur = c.source();
    }
    s
}
