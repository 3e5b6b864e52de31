//! A fixed-seed slice of the wire-decoder fuzz run (`examples/fuzz`; the
//! same engine, `testkit::fuzz`): 20,000 generated, mutated and random
//! inputs through every decoder entry point. No panics, allocation within
//! what the bytes sent justify, every decoded message re-encodes to exactly
//! its bytes. The big run (a million cases and more, release build) is
//! recorded in docs/reliability.md.

use testkit::fuzz as engine;

#[global_allocator]
static GLOBAL: engine::PeakAlloc = engine::PeakAlloc;

/// The same seed as the example's default, so this slice is the first
/// 20,000 cases of the documented big run.
const SEED: u64 = 0x5032_5046;
const CASES: u64 = 20_000;

#[test]
fn a_fixed_seed_slice_of_the_fuzz_run_holds() {
    let (st, failure) = engine::run(SEED, 0, CASES, |_| {});
    if let Some(f) = failure {
        panic!(
            "case {} (seed {SEED:#x}): {}\nreplay: cargo run --release --example fuzz -- --seed {SEED:#x} --start {} --cases 1\n{}",
            f.case,
            f.what,
            f.case,
            engine::hex(&f.bytes)
        );
    }
    assert_eq!(st.cases, CASES);
    // The generator is doing its job: plenty decode, plenty are refused, and
    // the refusals cover the decoder's error kinds.
    assert!(st.decoded > CASES / 4, "{st:?}");
    for kind in [
        "FrameTooLarge",
        "EmptyFrame",
        "Truncated",
        "UnknownType",
        "TrailingBytes",
        "BadMagic",
        "InvalidUtf8",
        "LimitExceeded",
        "BadAddressFamily",
        "BadFlag",
        "BadBitmap",
    ] {
        assert!(
            st.errors.get(kind).copied().unwrap_or(0) > 0,
            "no {kind} in {:?}",
            st.errors
        );
    }
    println!(
        "{} cases, {} decoder calls, {} decoded, {:.2} s",
        st.cases,
        st.frames,
        st.decoded,
        st.elapsed.as_secs_f64()
    );
}

#[test]
fn case_seeds_are_stable() {
    // The documented replay command depends on these never changing.
    let mut r = engine::Rng::new(engine::case_seed(SEED, 0));
    let a = r.next_u64();
    let mut r = engine::Rng::new(engine::case_seed(SEED, 0));
    assert_eq!(a, r.next_u64());
    assert_ne!(engine::case_seed(SEED, 0), engine::case_seed(SEED, 1));
}
