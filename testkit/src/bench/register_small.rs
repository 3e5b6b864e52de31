//! Scenario 5 (registration), continued: many small files, and live sharing.
//!
//! Many small files: 10,000 files of 1 to 16 KiB in folders of 100 (500
//! with `--quick`). Measured: spawning `peer share` with no hash cache
//! until it prints "registered" (walk, open, hash, start serving, and every
//! file registered with the tracker, in Registers of up to 1,024 files),
//! then again on the unchanged folder (the hash cache). Baseline: this
//! process opening, reading and SHA-1 hashing every file on one thread.
//!
//! Then the CPU a `peer share` of those 10,000 files uses while idle: its
//! folder watcher looking at every file once a second.
//!
//! Live sharing: a running `peer share`; files of 1 MiB land in its folder
//! one after another (written in place, as `cp` does), each at a different
//! moment of the watcher's one-second tick. Measured: from the start of the
//! write until the tracker's `ListFiles` (what `peer list` shows) names
//! the file, polled every 20 ms; median and maximum.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::util::{MIB, R, Scratch, Stream, median, size, write_file};

const KIB: u64 = 1 << 10;
use super::{Ctx, Row, STARTUP, SeedProc, TrackerProc};
use crate::bench::register::SCENARIO;

struct Rep {
    ready_s: f64,
    registered_s: f64,
    restart_s: f64,
    base_s: f64,
}

/// The many-small-files rows.
pub fn many_small(ctx: &mut Ctx, rows: &mut Vec<Row>) -> R<()> {
    let n: u64 = if ctx.quick { 500 } else { 10_000 };
    let sc = Scratch::new("register-small")?;
    let dir = sc.sub("share")?;
    let mut files = Vec::new();
    let mut total = 0u64;
    for k in 0..n {
        let len = KIB + (k * 7919 % 16) * KIB;
        let p = dir.join(format!("d{:03}/s{k:05}.dat", k / 100));
        write_file(&p, len, 5000 + k)?;
        files.push(p);
        total += len;
    }
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let tracker = TrackerProc::start(ctx, &[])?;
    let mut reps = Vec::new();
    for r in 0..ctx.reps {
        let base_s = one_core(&files)?;
        let _ = std::fs::remove_file(dir.join(p2pfs::peer::share::HASH_CACHE_NAME));
        let (ready_s, registered_s) = share_until_registered(ctx, tracker.addr, &dir, n)?;
        let (_, restart_s) = share_until_registered(ctx, tracker.addr, &dir, n)?;
        eprintln!(
            "  rep {}: {n} small files, {}: serving after {ready_s:.2} s, all registered after {registered_s:.2} s; restart {restart_s:.2} s; one core open+read+SHA-1 {base_s:.2} s",
            r + 1,
            size(total)
        );
        reps.push(Rep {
            ready_s,
            registered_s,
            restart_s,
            base_s,
        });
    }
    let idle = idle_cpu(ctx, tracker.addr, &dir)?;
    drop(tracker);
    let m = |f: fn(&Rep) -> f64| median(&reps.iter().map(f).collect::<Vec<_>>());
    let nf = n as f64;
    let per_s = |s: f64| format!("{:.0} files/s", nf / s);
    let ratio = median(
        &reps
            .iter()
            .map(|r| (nf / r.registered_s) / (cores as f64 * nf / r.base_s))
            .collect::<Vec<_>>(),
    );
    rows.push(
        Row::new(
            SCENARIO,
            format!(
                "{n} small files ({}): share start until all are registered",
                size(total)
            ),
            format!(
                "{:.2} s, {} (serving after {:.2} s)",
                m(|r| r.registered_s),
                per_s(m(|r| r.registered_s)),
                m(|r| r.ready_s)
            ),
        )
        .baseline(format!(
            "{cores} x one core open+read+SHA-1 {}",
            per_s(m(|r| r.base_s) / cores as f64)
        ))
        .ratio(ratio),
    );
    let restart = m(|r| r.restart_s);
    let first = m(|r| r.registered_s);
    rows.push(
        Row::new(
            SCENARIO,
            format!("{n} small files: restart until registered (hash cache)"),
            format!("{:.2} s", restart),
        )
        .baseline(format!("first start {first:.2} s"))
        .ratio(restart / first),
    );
    rows.push(
        Row::new(
            SCENARIO,
            format!("{n} small files shared, idle: CPU of peer share (the folder watcher's looks)"),
            format!("{:.1} % of a core", idle * 100.0),
        )
        .baseline("one look (lstat of every file) a second")
        .target("<= 10 %", idle <= 0.10),
    );
    Ok(())
}

/// CPU seconds per second of a `peer share` of `dir` doing nothing but
/// looking at its folder (over 5 s, after it registered; 1 s with
/// `--quick`).
fn idle_cpu(ctx: &Ctx, tracker: std::net::SocketAddr, dir: &std::path::Path) -> R<f64> {
    let (settle, span) = if ctx.quick { (500, 1000) } else { (2000, 5000) };
    let seed = SeedProc::start(ctx, tracker, dir, None, None)?;
    std::thread::sleep(Duration::from_millis(settle));
    let (c0, t0) = (seed.proc.cpu_s().unwrap_or(0.0), Instant::now());
    std::thread::sleep(Duration::from_millis(span));
    let c1 = seed.proc.cpu_s().unwrap_or(0.0);
    Ok((c1 - c0) / t0.elapsed().as_secs_f64())
}

/// Spawns `peer share` on `dir` and waits until it has registered every
/// file; (seconds until "serving chunks on", seconds until the tracker
/// accepted all `n`).
fn share_until_registered(
    ctx: &Ctx,
    tracker: std::net::SocketAddr,
    dir: &std::path::Path,
    n: u64,
) -> R<(f64, f64)> {
    let seed = SeedProc::start(ctx, tracker, dir, None, None)?;
    let (at, line) = seed
        .proc
        .wait_line(Stream::Out, "registered", STARTUP * 4)?;
    let count: String = line.chars().filter(char::is_ascii_digit).collect();
    if count.parse::<u64>().ok() != Some(n) {
        return Err(format!("expected {n} files registered at once: {line:?}"));
    }
    let ready = seed.ready.duration_since(seed.proc.started).as_secs_f64();
    Ok((ready, at.duration_since(seed.proc.started).as_secs_f64()))
}

/// One thread opens, reads whole and hashes every file: seconds.
fn one_core(files: &[PathBuf]) -> R<f64> {
    let t = Instant::now();
    for p in files {
        let b = std::fs::read(p).map_err(|e| format!("read {}: {e}", p.display()))?;
        std::hint::black_box(p2pfs::chunks::sha1(&b));
    }
    Ok(t.elapsed().as_secs_f64())
}

/// The live-sharing rows: file landing to listed.
pub fn live(ctx: &mut Ctx, rows: &mut Vec<Row>) -> R<()> {
    let n = if ctx.quick { 2 } else { 12 };
    let sc = Scratch::new("register-live")?;
    let dir = sc.sub("share")?;
    write_file(&dir.join("first"), KIB, 1)?;
    let tracker = TrackerProc::start(ctx, &[])?;
    let seed = SeedProc::start(ctx, tracker.addr, &dir, None, None)?;
    let mut lat = Vec::new();
    for i in 0..n {
        // Spread the landings over the watcher's tick.
        std::thread::sleep(Duration::from_millis(137 * (i % 7)));
        let name = format!("live/f{i:02}.bin");
        let t0 = Instant::now();
        write_file(&dir.join(&name), MIB, 7000 + i)?;
        loop {
            let listed = p2pfs::peer::client::list_files(tracker.addr)
                .map_err(|e| format!("list: {e}"))?
                .0
                .iter()
                .any(|f| f.name == name);
            if listed {
                break;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                return Err(format!("{name} not listed within 30 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        lat.push(t0.elapsed().as_secs_f64());
    }
    drop(seed);
    drop(tracker);
    eprintln!(
        "  live: landing to listed, s: {:?}",
        lat.iter()
            .map(|s| (s * 1000.0).round() / 1000.0)
            .collect::<Vec<_>>()
    );
    let max = lat.iter().copied().fold(0.0, f64::max);
    let med = median(&lat);
    rows.push(
        Row::new(
            SCENARIO,
            format!("live sharing: a 1 MiB file landing until listed (median of {n})"),
            format!("{:.2} s", med),
        )
        .baseline(format!(
            "max {max:.2} s; stable rule: unchanged over >= 1 s"
        ))
        .target("all <= 10 s (aim ~3 s)", max <= 10.0),
    );
    Ok(())
}
