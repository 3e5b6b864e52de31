//! The tracker's counters for `/metrics`: requests by kind, refusals by
//! reason, how connections ended, and the dashboard's own HTTP requests.
//!
//! Owns: [`Counters`], plain atomics that the tracker's handler bumps on
//! every request (one relaxed add, no lock on the hot path), and
//! [`render`], which writes them and the registry's sizes in the
//! Prometheus text exposition format (version 0.0.4).
//!
//! Calls `wire` (message and error names), `net` (how a connection ended)
//! and [`super::registry`] (its `RegistryStats`). Never takes a lock.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use super::registry::RegistryStats;
use crate::net::server::End;
use crate::wire::{ErrorCode, Message};

/// Error codes counted one by one (1 to 14); every other code is counted
/// as "Other".
const ERROR_CODES: usize = 16;

/// How a connection ended, as the `reason` label of
/// `p2pfs_tracker_connections_ended_total`.
const ENDS: [&str; 8] = [
    "closed",
    "hello_timeout",
    "idle",
    "gone",
    "refused",
    "done",
    "failed",
    "stopped",
];

/// The dashboard's routes, as the `route` label of `p2pfs_http_requests_total`.
pub const ROUTES: [&str; 8] = [
    "page",
    "api",
    "metrics",
    "not_found",
    "bad_request",
    "method_not_allowed",
    "too_large",
    "bad_host",
];

/// Why an HTTP connection was dropped without an answer of its own, as the
/// `reason` label of `p2pfs_http_dropped_total`.
pub const DROPS: [&str; 3] = ["busy", "timeout", "error"];

/// Counters shared by the tracker's connection threads and the dashboard.
pub struct Counters {
    /// Requests by wire type code; the name is kept the first time a code
    /// is seen (`Message::kind`).
    requests: [AtomicU64; 256],
    names: [OnceLock<&'static str>; 256],
    /// Errors answered, by code (index = code, 15 = any other).
    refusals: [AtomicU64; ERROR_CODES],
    ends: [AtomicU64; ENDS.len()],
    http: [AtomicU64; ROUTES.len()],
    http_dropped: [AtomicU64; DROPS.len()],
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            requests: std::array::from_fn(|_| AtomicU64::new(0)),
            names: std::array::from_fn(|_| OnceLock::new()),
            refusals: Default::default(),
            ends: Default::default(),
            http: Default::default(),
            http_dropped: Default::default(),
        }
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    /// One request received (after the Hello).
    pub fn request(&self, m: &Message) {
        let code = usize::from(m.type_code());
        self.names[code].get_or_init(|| m.kind());
        bump(&self.requests[code]);
    }

    /// One error answered, or one file of a Register refused, with `code`.
    pub fn refusal(&self, code: ErrorCode) {
        let i = usize::from(code.to_u16());
        bump(
            &self.refusals[if i < ERROR_CODES - 1 {
                i
            } else {
                ERROR_CODES - 1
            }],
        );
    }

    /// One connection ended.
    pub fn ended(&self, end: &End) {
        let i = match end {
            End::Closed => 0,
            End::HelloTimeout => 1,
            End::Idle => 2,
            End::Gone(_) => 3,
            End::Refused { .. } => 4,
            End::Done => 5,
            End::Failed(_) => 6,
            End::Stopped => 7,
        };
        bump(&self.ends[i]);
    }

    /// One HTTP request answered on `route` (an entry of [`ROUTES`]).
    pub fn http(&self, route: &str) {
        if let Some(i) = ROUTES.iter().position(|r| *r == route) {
            bump(&self.http[i]);
        }
    }

    /// One HTTP connection dropped for `reason` (an entry of [`DROPS`]).
    pub fn http_dropped(&self, reason: &str) {
        if let Some(i) = DROPS.iter().position(|r| *r == reason) {
            bump(&self.http_dropped[i]);
        }
    }

    /// Requests received of the kind named `kind` (e.g. "ChunkRegister").
    pub fn requests_of(&self, kind: &str) -> u64 {
        (0..256)
            .find(|&c| self.names[c].get() == Some(&kind))
            .map_or(0, |c| self.requests[c].load(Ordering::Relaxed))
    }
}

/// What /metrics shows besides the counters, read when it is asked for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    pub registry: RegistryStats,
    /// Open tracker connections (peers' control connections and one-shot
    /// queries).
    pub connections: usize,
    /// Connections refused over the tracker's total cap, and over its
    /// per-address cap.
    pub cap_total: u64,
    pub cap_per_ip: u64,
    /// Seconds since the tracker started.
    pub uptime_s: u64,
}

/// Writes one metric's `# HELP` and `# TYPE` lines.
fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    head(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {value}");
}

/// Writes a labelled counter: its head, then one line per (label value,
/// count).
fn labelled<'a>(
    out: &mut String,
    (name, label, help): (&str, &str, &str),
    values: impl Iterator<Item = (&'a str, u64)>,
) {
    head(out, name, "counter", help);
    for (v, n) in values {
        let _ = writeln!(out, "{name}{{{label}=\"{v}\"}} {n}");
    }
}

/// The gauges of /metrics: name, help, value.
fn gauge_values(g: &Gauges) -> [(&'static str, &'static str, u64); 8] {
    let r = &g.registry;
    [
        (
            "p2pfs_tracker_peers",
            "Registered peers (control connections with a Register).",
            r.peers as u64,
        ),
        (
            "p2pfs_tracker_connections",
            "Open tracker connections.",
            g.connections as u64,
        ),
        (
            "p2pfs_tracker_files",
            "Files known to the tracker.",
            r.files as u64,
        ),
        (
            "p2pfs_tracker_chunks",
            "Chunks registered: the chunk counts of all files, each file once.",
            r.chunks,
        ),
        (
            "p2pfs_tracker_holders",
            "(file, peer) pairs: a peer holding three files counts three times.",
            r.holders as u64,
        ),
        (
            "p2pfs_tracker_sources",
            "Holders with at least one chunk.",
            r.sources as u64,
        ),
        (
            "p2pfs_tracker_registry_bytes",
            "Estimated heap bytes of the registry's tables.",
            r.memory_bytes,
        ),
        (
            "p2pfs_tracker_uptime_seconds",
            "Seconds since the tracker started.",
            g.uptime_s,
        ),
    ]
}

/// The Prometheus text exposition of `c` and `g`. Label values are fixed
/// words (message kinds, error names, route names), never peer data.
pub fn render(c: &Counters, g: &Gauges) -> String {
    let mut out = String::with_capacity(4096);
    for (name, help, value) in gauge_values(g) {
        gauge(&mut out, name, help, value);
    }
    write_counters(&mut out, c, g);
    out
}

/// The counters of /metrics.
fn write_counters(out: &mut String, c: &Counters, g: &Gauges) {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let kinds = (0..256).filter_map(|code| Some((*c.names[code].get()?, load(&c.requests[code]))));
    labelled(
        out,
        (
            "p2pfs_tracker_requests_total",
            "kind",
            "Requests received, by message kind.",
        ),
        kinds,
    );
    let reasons: Vec<(String, u64)> = (1..ERROR_CODES)
        .map(|i| {
            let reason = if i < ERROR_CODES - 1 {
                format!("{:?}", ErrorCode::from_u16(i as u16))
            } else {
                "Other".to_owned()
            };
            (reason, load(&c.refusals[i]))
        })
        .collect();
    labelled(
        out,
        (
            "p2pfs_tracker_refusals_total",
            "reason",
            "Errors answered and files refused, by reason (the wire error code's name).",
        ),
        reasons.iter().map(|(r, n)| (r.as_str(), *n)),
    );
    labelled(
        out,
        (
            "p2pfs_tracker_connections_ended_total",
            "reason",
            "Tracker connections ended, by how they ended.",
        ),
        ENDS.iter().zip(&c.ends).map(|(r, n)| (*r, load(n))),
    );
    labelled(
        out,
        (
            "p2pfs_tracker_connection_cap_hits_total",
            "cap",
            "Connections refused Busy over a connection cap, by cap.",
        ),
        [("total", g.cap_total), ("per_ip", g.cap_per_ip)].into_iter(),
    );
    labelled(
        out,
        (
            "p2pfs_http_requests_total",
            "route",
            "Dashboard HTTP requests answered, by route.",
        ),
        ROUTES.iter().zip(&c.http).map(|(r, n)| (*r, load(n))),
    );
    labelled(
        out,
        (
            "p2pfs_http_dropped_total",
            "reason",
            "Dashboard HTTP connections dropped unanswered (busy: answered 503), by reason.",
        ),
        DROPS
            .iter()
            .zip(&c.http_dropped)
            .map(|(r, n)| (*r, load(n))),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_is_a_comment_or_a_sample() {
        let c = Counters::default();
        c.request(&Message::ListFiles);
        c.request(&Message::ListFiles);
        c.refusal(ErrorCode::Busy);
        c.refusal(ErrorCode::Other(999));
        c.ended(&End::Idle);
        c.http("api");
        let text = render(&c, &Gauges::default());
        for line in text.lines() {
            assert!(
                line.starts_with("# HELP p2pfs_") || line.starts_with("# TYPE p2pfs_") || {
                    let (series, value) = line.rsplit_once(' ').unwrap();
                    series.starts_with("p2pfs_") && value.parse::<f64>().is_ok()
                },
                "{line}"
            );
        }
        for want in [
            "p2pfs_tracker_requests_total{kind=\"ListFiles\"} 2",
            "p2pfs_tracker_refusals_total{reason=\"Busy\"} 1",
            "p2pfs_tracker_refusals_total{reason=\"Other\"} 1",
            "p2pfs_tracker_connections_ended_total{reason=\"idle\"} 1",
            "p2pfs_http_requests_total{route=\"api\"} 1",
            "# TYPE p2pfs_tracker_peers gauge",
        ] {
            assert!(
                text.lines().any(|l| l == want),
                "{want} missing from\n{text}"
            );
        }
        assert_eq!(c.requests_of("ListFiles"), 2);
    }
}
