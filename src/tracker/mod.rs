//! The tracker: knows which peers hold which chunks of which files.
//!
//! - [`registry`]: the state and its rules (pure data).
//! - [`server`]: sockets, one thread per connection, timeouts, shutdown.
//!
//! Depends on `wire` and `chunks` only; never on `peer`.

pub mod registry;
pub mod server;

pub use registry::{Registry, RegistryError};
pub use server::{Tracker, TrackerConfig, TrackerError};
