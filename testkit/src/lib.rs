//! Code shared by p2pfs's integration tests (`tests/`), the benchmark
//! (`examples/bench.rs`) and the fuzzer (`examples/fuzz/`), imported by all
//! of them as an ordinary crate: `testkit::alloc` (the allocation probe),
//! `testkit::fuzz` (the wire-decoder fuzz engine) and `testkit::bench` (the
//! benchmark harness, which `tests/bench_quick.rs` runs in `--quick` mode).
//!
//! A separate crate rather than a feature of the library because the
//! allocation probe is a `GlobalAlloc`, which needs `unsafe`, and the
//! library forbids it. Only [`alloc`] allows `unsafe`; everything else here
//! forbids it too.
//!
//! Depends on the `p2pfs` library only through its public API; nothing in
//! `p2pfs` (library or binaries) depends on this crate.

#![deny(unsafe_code)]

pub mod alloc;
pub mod bench;
pub mod fuzz;
