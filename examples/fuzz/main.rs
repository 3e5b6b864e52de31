//! The big wire-decoder fuzz run (see testkit/src/fuzz.rs for what is
//! generated and what must hold):
//!
//! ```text
//! cargo run --release --example fuzz -- --cases 1000000 [--seed N] [--start N] [--threads N]
//! ```
//!
//! Prints progress every 100,000 cases per thread and a summary; exits 1
//! with the failing case's number, seed and bytes if any property fails
//! (replay it alone with `--start <case> --cases 1`). CI runs a fixed-seed
//! slice of the same engine as `tests/fuzz_wire.rs`.

use testkit::fuzz as engine;

use std::process::ExitCode;
use std::time::Instant;

#[global_allocator]
static GLOBAL: engine::PeakAlloc = engine::PeakAlloc;

struct Args {
    cases: u64,
    seed: u64,
    start: u64,
    threads: u64,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        cases: 1_000_000,
        seed: 0x5032_5046, // "P2PF"
        start: 0,
        threads: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || -> Result<u64, String> {
            let v = it.next().ok_or(format!("{flag} needs a value"))?;
            let v = v.replace('_', "");
            match v.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16),
                None => v.parse(),
            }
            .map_err(|e| format!("{flag}: {e}"))
        };
        match flag.as_str() {
            "--cases" => a.cases = value()?,
            "--seed" => a.seed = value()?,
            "--start" => a.start = value()?,
            "--threads" => a.threads = value()?.max(1),
            "--help" | "-h" => {
                return Err("usage: fuzz [--cases N] [--seed N] [--start N] [--threads N]".into());
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "fuzzing the wire decoder: cases {}..{} of seed {:#x} on {} thread(s)",
        a.start,
        a.start + a.cases,
        a.seed,
        a.threads
    );
    let t0 = Instant::now();
    // Split the case range into one contiguous slice per thread: the set of
    // cases (and so the result) does not depend on the thread count.
    let per = a.cases.div_ceil(a.threads);
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..a.threads)
            .map(|k| {
                let start = a.start + k * per;
                let n = per.min((a.start + a.cases).saturating_sub(start));
                s.spawn(move || {
                    engine::run(a.seed, start, n, |st| {
                        println!(
                            "  thread {k}: {} cases, {} decoded, {:.1} s",
                            st.cases,
                            st.decoded,
                            st.elapsed.as_secs_f64()
                        );
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("fuzz thread"))
            .collect()
    });
    let elapsed = t0.elapsed();
    let mut total = engine::Stats::default();
    let mut failure = None;
    for (st, f) in results {
        total.cases += st.cases;
        total.frames += st.frames;
        total.bytes += st.bytes;
        total.decoded += st.decoded;
        total.max_alloc = total.max_alloc.max(st.max_alloc);
        total.max_alloc_ratio = total.max_alloc_ratio.max(st.max_alloc_ratio);
        for (k, v) in st.errors {
            *total.errors.entry(k).or_insert(0) += v;
        }
        for (k, v) in st.kinds {
            *total.kinds.entry(k).or_insert(0) += v;
        }
        if failure.is_none() {
            failure = f;
        }
    }
    println!(
        "{} cases ({} MiB of input), {} decoder calls, {} messages decoded and re-encoded identically, in {:.1} s ({:.0} cases/s)",
        total.cases,
        total.bytes >> 20,
        total.frames,
        total.decoded,
        elapsed.as_secs_f64(),
        total.cases as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    println!("cases by kind: {:?}", total.kinds);
    println!("first error of each stream, by kind: {:?}", total.errors);
    println!(
        "largest single allocation in a decoder: {} bytes; worst ratio to input size (inputs >= 64 B): {:.1}",
        total.max_alloc, total.max_alloc_ratio
    );
    match failure {
        None => {
            println!("no panics, no property violations");
            ExitCode::SUCCESS
        }
        Some(f) => {
            println!(
                "FAILED at case {} (seed {:#x}): {}\nreplay: cargo run --release --example fuzz -- --seed {:#x} --start {} --cases 1\nbytes ({}):\n{}",
                f.case,
                a.seed,
                f.what,
                a.seed,
                f.case,
                f.bytes.len(),
                engine::hex(&f.bytes)
            );
            ExitCode::FAILURE
        }
    }
}
