//! p2pfs: peer-to-peer file sharing with a central tracker.
//!
//! Layout (each module's top comment says what it owns and may call):
//! - [`wire`]: frames, messages, limits, name rules. Depends on nothing else here.
//! - [`chunks`]: chunk geometry, SHA-1, bitmaps. Depends on nothing else here.
//! - [`tracker`]: the registry (pure data) and the server (sockets, one thread
//!   per connection). Depends on `wire`, `chunks` and `admission` only.
//! - [`admission`]: connection caps (total and per address) and the Busy
//!   refusal, used by both servers. Depends on `wire` only.
//! - [`peer`]: share index, chunk server, picker, download workers, assembler,
//!   tracker session. Depends on `wire`, `chunks` and `admission` only, never
//!   on `tracker`.
//! - [`limits`]: every limit and default, stated once.
//! - [`ui`]: the user interface of the `peer` and `tracker` programs
//!   (command lines, output, progress, signals, the prompt). Depends on the
//!   engine modules above; none of them depends on it.
//!
//! Everything is synchronous std::net with one OS thread per connection;
//! threads talk over bounded crossbeam channels.

#![forbid(unsafe_code)]

pub mod admission;
pub mod chunks;
pub mod limits;
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
