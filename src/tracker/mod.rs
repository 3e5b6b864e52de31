//! The tracker: knows which peers hold which chunks of which files.
//!
//! - [`registry`]: the state and its rules (pure data).
//! - [`server`]: the tracker protocol: what each request does and answers,
//!   on top of the shared server skeleton (`net::server`).
//!
//! Depends on `wire`, `chunks`, `net`, `limits` and `sync` only; never on
//! `peer`.

pub mod registry;
pub mod server;

pub use registry::{Registry, RegistryError};
pub use server::{Tracker, TrackerConfig, TrackerError};
