//! The tracker: knows which peers hold which chunks of which files.
//!
//! - [`registry`]: the state and its rules (pure data).
//! - [`server`]: the tracker protocol: what each request does and answers,
//!   on top of the shared server skeleton (`net::server`).
//! - [`metrics`]: the counters the handler bumps, and /metrics' text.
//! - [`http`]: the optional web dashboard (`tracker --http`): a small,
//!   read-only HTTP/1.1 server on its own threads; [`dashboard`] is what
//!   each of its paths answers (the page, /api, /metrics).
//!
//! Depends on `wire`, `chunks`, `net`, `limits` and `sync` only; never on
//! `peer`.

pub mod dashboard;
pub mod http;
pub mod metrics;
pub mod registry;
pub mod server;

pub use registry::{Registry, RegistryError};
pub use server::{Tracker, TrackerConfig, TrackerError};
