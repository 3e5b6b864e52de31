//! Connection setup and the server skeleton shared by the tracker and the
//! chunk server: everything about a TCP connection that is not what is said
//! on it.
//!
//! Owns (one file each):
//! - [`admission`]: connection caps (total and per address) and the polite
//!   `Error{Busy}` refusal of everything over them.
//! - [`server`]: the one server skeleton: accept with admission, the set of
//!   live connections, a named thread per connection, the Hello exchange
//!   under its deadline, the request loop with its idle timeout, orderly
//!   (lingering) close, and shutdown that wakes its own `accept` and joins
//!   every thread. A server supplies only its per-request [`server::Handler`].
//! - [`budget`]: the bytes of large request frames a server holds at once,
//!   in total and per address.
//! - [`deadline`]: deadlines for whole frames written and read, on top of
//!   the per-call socket timeouts.
//! - [`client`]: the client side of every outgoing connection (connect with a
//!   timeout, TCP_NODELAY, read and write timeouts, the handshake of a
//!   private network, the Hello exchange).
//! - [`key`]: the network key of a private network (key files, and the one
//!   key this process uses).
//! - [`secure`]: keyed connections: the Noise handshake and the encrypted
//!   record layer under the ordinary frames.
//!
//! So whatever every connection must do first (the handshake when keyed,
//! then the Hello) is written once on the server side, in [`server`], and
//! once on the client side, in [`client`].
//!
//! Depends on `wire` (framing, Hello), `limits` and `sync` (the lock helper)
//! only; `tracker` and `peer` build on it and never the other way round.

use std::fmt;

use crate::wire::{ErrorCode, WireError};

pub mod admission;
pub mod budget;
pub mod client;
pub mod deadline;
pub mod key;
pub mod secure;
pub mod server;

/// What can go wrong on a client connection, with the address it concerns.
#[derive(Debug)]
pub enum NetError {
    /// Talking to `who` failed (connect, read, write, or an undecodable reply).
    Wire { who: String, source: WireError },
    /// `who` answered with an Error message.
    Refused {
        who: String,
        code: ErrorCode,
        message: String,
    },
    /// `who` sent a valid message that makes no sense here.
    Protocol { who: String, what: String },
    /// The network keys do not match: `who` requires a key we do not have,
    /// rejected ours, or answered a keyed client in clear. `what` is the
    /// whole sentence shown to the user.
    Key { who: String, what: String },
}

impl NetError {
    /// Whether this is a network key mismatch (which retrying cannot cure).
    pub fn is_key_mismatch(&self) -> bool {
        matches!(self, NetError::Key { .. })
    }

    pub fn wire(who: impl fmt::Display, source: impl Into<WireError>) -> NetError {
        NetError::Wire {
            who: who.to_string(),
            source: source.into(),
        }
    }
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetError::Wire { who, source } => source.about(who, f),
            NetError::Refused { who, code, message } => {
                write!(f, "{who} refused: {code}: {message}")
            }
            NetError::Protocol { who, what } => write!(f, "{who}: protocol error: {what}"),
            NetError::Key { what, .. } => f.write_str(what),
        }
    }
}

impl std::error::Error for NetError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NetError::Wire { source, .. } => Some(source),
            _ => None,
        }
    }
}
