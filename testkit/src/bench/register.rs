//! Scenario 5: hashing a folder at `peer share` start.
//!
//! The folder: one large file plus many small ones (4 KiB to 1 MiB, in
//! sub-folders of 100) of about the same total, 2 GiB in all (dated an hour
//! back so the hash cache may keep them). Measured: spawning `peer share`
//! with no hash cache until it prints "serving chunks on" (walk, open,
//! hash, start serving), and its CPU seconds by then. Baseline: reading and
//! SHA-1 hashing the same bytes, in the same 1 MiB chunks, on one thread of
//! this process (pread into one buffer, then hash). Then `peer share` again
//! on the unchanged folder: it must not re-hash (the cache).
//!
//! The same scenario then measures 10,000 small files at share start and
//! live sharing (a file landing in a shared folder until it is listed):
//! see `register_small`.

use std::path::Path;

use super::util::{GIB, MIB, R, Scratch, for_each_chunk, median, rate, size, write_file};
use super::{Ctx, Row, SeedProc, TrackerProc};

pub const SCENARIO: &str = "5 registration";

struct Rep {
    scan_s: f64,
    scan_cpu_s: f64,
    restart_s: f64,
    base_s: f64,
    hash_only_s: f64,
    all_cores_s: f64,
}

pub fn run(ctx: &mut Ctx, rows: &mut Vec<Row>) -> R<()> {
    let half = if ctx.quick { 16 * MIB } else { GIB };
    let sc = Scratch::new("register")?;
    let dir = sc.sub("share")?;
    write_file(&dir.join("large.bin"), half, 20)?;
    let mut small = Vec::new();
    let mut total_small = 0u64;
    let mut k = 0u64;
    while total_small < half {
        let len = (4096 + (k * 7919 % 256) * 4096).min(half - total_small);
        let p = dir.join(format!("small/{:03}/f{k:05}.dat", k / 100));
        write_file(&p, len, 1000 + k)?;
        small.push(p);
        total_small += len;
        k += 1;
    }
    let total = half + total_small;
    let files: Vec<std::path::PathBuf> = std::iter::once(dir.join("large.bin"))
        .chain(small.iter().cloned())
        .collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let tracker = TrackerProc::start(ctx, &[])?;
    let mut reps = Vec::new();
    for r in 0..ctx.reps {
        let (base_s, hash_only_s) = one_core(&files)?;
        let all_cores_s = all_cores(&files, cores)?;
        let _ = std::fs::remove_file(dir.join(p2pfs::peer::share::HASH_CACHE_NAME));
        let seed = SeedProc::start(ctx, tracker.addr, &dir, None, None)?;
        let scan_s = seed.ready.duration_since(seed.proc.started).as_secs_f64();
        let scan_cpu_s = seed.proc.cpu_s().unwrap_or(0.0);
        drop(seed);
        if !dir.join(p2pfs::peer::share::HASH_CACHE_NAME).is_file() {
            return Err("peer share wrote no hash cache".into());
        }
        let again = SeedProc::start(ctx, tracker.addr, &dir, None, None)?;
        let restart_s = again.ready.duration_since(again.proc.started).as_secs_f64();
        drop(again);
        let rep = Rep {
            scan_s,
            scan_cpu_s,
            restart_s,
            base_s,
            hash_only_s,
            all_cores_s,
        };
        eprintln!(
            "  rep {}: {} files, {}: share ready in {:.2} s ({:.2} CPU s), restart {:.3} s; one core read+hash {:.2} s (hash only {:.2} s)",
            r + 1,
            files.len(),
            size(total),
            rep.scan_s,
            rep.scan_cpu_s,
            rep.restart_s,
            rep.base_s,
            rep.hash_only_s
        );
        reps.push(rep);
    }
    drop(tracker);
    drop(sc);
    scan_rows(&reps, total, files.len(), cores, rows);
    super::register_small::many_small(ctx, rows)?;
    super::register_small::live(ctx, rows)
}

/// The rows of the large folder.
fn scan_rows(reps: &[Rep], total: u64, files: usize, cores: usize, rows: &mut Vec<Row>) {
    let t = total as f64;
    let m = |f: fn(&Rep) -> f64| median(&reps.iter().map(f).collect::<Vec<_>>());
    let ratio = median(
        &reps
            .iter()
            .map(|r| (t / r.scan_s) / (cores as f64 * t / r.base_s))
            .collect::<Vec<_>>(),
    );
    rows.push(
        Row::new(
            SCENARIO,
            format!(
                "hash rate at share start, {} in {} files",
                size(total),
                files
            ),
            rate(t / m(|r| r.scan_s)),
        )
        .baseline(format!(
            "{cores} x one core read+SHA-1 {} (hash only {})",
            rate(t / m(|r| r.base_s)),
            rate(t / m(|r| r.hash_only_s))
        ))
        .ratio(ratio)
        .target(">= 0.90 of cores x 1 core", ratio >= 0.9),
    );
    let ceiling = median(
        &reps
            .iter()
            .map(|r| (t / r.scan_s) / (t / r.all_cores_s))
            .collect::<Vec<_>>(),
    );
    rows.push(
        Row::new(
            SCENARIO,
            "same, against all cores reading+hashing in the harness",
            rate(t / m(|r| r.scan_s)),
        )
        .baseline(format!(
            "{cores} threads read+SHA-1 {} (files read before)",
            rate(t / m(|r| r.all_cores_s))
        ))
        .ratio(ceiling),
    );
    let used = median(
        &reps
            .iter()
            .map(|r| r.scan_cpu_s / r.scan_s)
            .collect::<Vec<_>>(),
    );
    rows.push(
        Row::new(
            SCENARIO,
            "cores busy during the scan (CPU s / s)",
            format!("{used:.2}"),
        )
        .target(format!("all {cores}"), used >= 0.9 * cores as f64),
    );
    let restart = m(|r| r.restart_s);
    let first = m(|r| r.scan_s);
    let rr = restart / first;
    rows.push(
        Row::new(
            SCENARIO,
            "restart on unchanged folder (hash cache)",
            format!("{:.0} ms", restart * 1e3),
        )
        .baseline(format!("first start {:.0} ms", first * 1e3))
        .ratio(rr)
        .target("no re-hash: <= 0.10", rr <= 0.10),
    );
}

/// `threads` threads of this process read and hash every chunk (1 MiB
/// pieces of every file, claimed one at a time), the way `peer share` does
/// minus everything else it does: what this machine allows. Seconds.
fn all_cores(files: &[std::path::PathBuf], threads: usize) -> R<f64> {
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let mut opened = Vec::new();
    let mut jobs = Vec::new();
    for p in files {
        let f = std::fs::File::open(p).map_err(|e| format!("open {}: {e}", p.display()))?;
        let len = f
            .metadata()
            .map_err(|e| format!("stat {}: {e}", p.display()))?
            .len();
        let k = opened.len();
        jobs.extend((0..len.div_ceil(MIB)).map(|c| (k, c * MIB, (len - c * MIB).min(MIB))));
        opened.push(f);
    }
    let next = AtomicUsize::new(0);
    let t = std::time::Instant::now();
    std::thread::scope(|s| -> R<()> {
        let mut hs = Vec::new();
        for _ in 0..threads {
            let (opened, jobs, next) = (&opened, &jobs, &next);
            hs.push(s.spawn(move || -> R<()> {
                let mut buf = vec![0u8; MIB as usize];
                while let Some(&(k, off, n)) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let b = &mut buf[..n as usize];
                    opened[k]
                        .read_exact_at(b, off)
                        .map_err(|e| format!("read: {e}"))?;
                    std::hint::black_box(p2pfs::chunks::sha1(b));
                }
                Ok(())
            }));
        }
        for h in hs {
            h.join()
                .map_err(|_| "hashing thread panicked".to_string())??;
        }
        Ok(())
    })?;
    Ok(t.elapsed().as_secs_f64())
}

/// One thread reads and hashes every file in 1 MiB chunks: (total seconds,
/// seconds inside SHA-1 only).
fn one_core(files: &[std::path::PathBuf]) -> R<(f64, f64)> {
    let t = std::time::Instant::now();
    let mut hash_s = 0.0;
    for f in files {
        hash_s += hash_file(f)?;
    }
    Ok((t.elapsed().as_secs_f64(), hash_s))
}

fn hash_file(p: &Path) -> R<f64> {
    for_each_chunk(p, MIB as usize, |b| {
        std::hint::black_box(p2pfs::chunks::sha1(b));
    })
}
