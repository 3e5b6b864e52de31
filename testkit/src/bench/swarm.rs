//! Scenarios 2 and 3: capped uploads.
//!
//! 2 (multi): N = 1, 2, 4, 8 seeds, each `--upload-limit CAP`, one `peer
//! get`. Ideal time size / (N x CAP); each source's share of the bytes
//! (from the downloader's summary) against 1/N; and the limiter's honesty:
//! every seed's highest send rate over any ~1 s window, measured from
//! outside by polling the kernel's per-socket `bytes_acked` (`ss -tin`)
//! every 100 ms.
//!
//! 3 (flash): one seed and N = 4, 8 downloaders (`peer get --seed`, which
//! keep serving after they finish) started together, every upload capped
//! at U. Bound max(F/U, N F / (U + N U)); the figure is the time until the
//! last downloader prints "downloaded". Also the bytes the seed uploaded,
//! in copies of the file (summed from every downloader's summary).

use std::time::{Duration, Instant};

use super::util::{MIB, Proc, R, Scratch, SendMonitor, Stream, median, size, write_file};
use super::{Ctx, Row, SeedProc, TrackerProc, own_folder, source_bytes, spawn_get};

pub const MULTI: &str = "2 multi-source capped";
pub const FLASH: &str = "3 flash crowd";

/// (file size, per-upload cap, chunk size)
fn params(ctx: &Ctx) -> (u64, u64, u64) {
    if ctx.quick {
        (4 * MIB, 4 * MIB, 64 * 1024)
    } else {
        (256 * MIB, 10 * MIB, MIB)
    }
}

struct MultiRep {
    actual_s: f64,
    /// Largest |share x N - 1| over the sources.
    share_dev: f64,
    /// Largest (highest 1 s send rate / cap) over the sources.
    honesty: f64,
}

pub fn run_multi(ctx: &mut Ctx, rows: &mut Vec<Row>) -> R<()> {
    let (len, cap, chunk) = params(ctx);
    let sc = Scratch::new("multi")?;
    let share = sc.sub("share")?;
    let name = "multi.bin";
    write_file(&share.join(name), len, 2)?;
    let mut speedups = Vec::new();
    let mut t1 = f64::NAN;
    for n in [1usize, 2, 4, 8] {
        let ideal = len as f64 / (n as f64 * cap as f64);
        let mut reps = Vec::new();
        for r in 0..ctx.reps {
            let dl = sc.sub(&format!("dl-{n}-{r}"))?;
            let rep = multi_once(ctx, &share, &dl, name, n, len, cap, chunk)?;
            eprintln!(
                "  N={n} rep {}: {:.2} s (ideal {:.2} s), share deviation {:.3}, max 1 s rate / cap {:.3}",
                r + 1,
                rep.actual_s,
                ideal,
                rep.share_dev,
                rep.honesty
            );
            reps.push(rep);
            let _ = std::fs::remove_dir_all(&dl);
        }
        let actual = median(&reps.iter().map(|r| r.actual_s).collect::<Vec<_>>());
        let ratio = median(&reps.iter().map(|r| ideal / r.actual_s).collect::<Vec<_>>());
        let dev = median(&reps.iter().map(|r| r.share_dev).collect::<Vec<_>>());
        // Honesty: the worst run, not the median (a cap must always hold).
        let honesty = reps.iter().map(|r| r.honesty).fold(f64::NAN, f64::max);
        if n == 1 {
            t1 = actual;
        }
        speedups.push((n, t1 / actual, ratio));
        rows.push(
            Row::new(
                MULTI,
                format!("N={n} x {} MiB/s, {}: time", cap / MIB, size(len)),
                format!("{actual:.2} s"),
            )
            .baseline(format!("ideal {ideal:.2} s"))
            .ratio(ratio)
            .target("ideal/actual >= 0.95", ratio >= 0.95),
        );
        rows.push(
            Row::new(
                MULTI,
                format!("N={n}: max |share x N - 1|"),
                format!("{dev:.3}"),
            )
            .target("<= 0.10", dev <= 0.10),
        );
        if honesty.is_nan() {
            rows.push(Row::new(
                MULTI,
                format!("N={n}: max 1 s send rate / cap"),
                "n/a (no ss)",
            ));
        } else {
            rows.push(
                Row::new(
                    MULTI,
                    format!("N={n}: max 1 s send rate / cap (worst run)"),
                    format!("{honesty:.3}"),
                )
                .target("<= 1.05", honesty <= 1.05),
            );
        }
    }
    ctx.plot.multi = speedups;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn multi_once(
    ctx: &Ctx,
    share: &std::path::Path,
    dl: &std::path::Path,
    name: &str,
    n: usize,
    len: u64,
    cap: u64,
    chunk: u64,
) -> R<MultiRep> {
    let tracker = TrackerProc::start(ctx, &[])?;
    let mut seeds = Vec::new();
    for k in 0..n {
        // `peer share` refuses a folder another one shares: the seeds
        // after the first share hard links to the same files.
        let dir = if k == 0 {
            share.to_path_buf()
        } else {
            own_folder(share)?
        };
        seeds.push(SeedProc::start(
            ctx,
            tracker.addr,
            &dir,
            Some(cap),
            Some(chunk),
        )?);
    }
    let ports: Vec<u16> = seeds.iter().map(|s| s.addr.port()).collect();
    let mon = SendMonitor::start(&ports, Duration::from_millis(100));
    let ideal = len as f64 / (n as f64 * cap as f64);
    let timeout = Duration::from_secs_f64(ideal * 3.0 + 30.0);
    let mut get = spawn_get(ctx, tracker.addr, name, dl, None, &[], false)?;
    let (done, _) = get.wait_line(Stream::Out, "downloaded ", timeout)?;
    let exit = get.wait_exit(Duration::from_secs(30))?;
    let max_rates = mon.finish();
    if exit.code != Some(0) {
        return Err(format!("peer get exited with {:?}", exit.code));
    }
    let by_source = source_bytes(&get);
    let total: u64 = by_source.iter().map(|(_, b)| b).sum();
    let mut share_dev: f64 = 0.0;
    for s in &seeds {
        let b: u64 = by_source
            .iter()
            .filter(|(a, _)| a.port() == s.addr.port())
            .map(|(_, b)| b)
            .sum();
        let share = b as f64 / total.max(1) as f64;
        share_dev = share_dev.max((share * n as f64 - 1.0).abs());
    }
    let honesty = if max_rates.is_empty() {
        f64::NAN
    } else {
        max_rates.values().fold(0.0, |a: f64, &r| a.max(r)) / cap as f64
    };
    Ok(MultiRep {
        actual_s: done.duration_since(get.started).as_secs_f64(),
        share_dev,
        honesty,
    })
}

pub fn run_flash(ctx: &mut Ctx, rows: &mut Vec<Row>) -> R<()> {
    let (len, u, chunk) = params(ctx);
    let sc = Scratch::new("flash")?;
    let share = sc.sub("share")?;
    let name = "flash.bin";
    write_file(&share.join(name), len, 3)?;
    let f = len as f64;
    let uf = u as f64;
    let mut plot = Vec::new();
    for n in [4usize, 8] {
        let nf = n as f64;
        let bound = (f / uf).max(nf * f / (uf + nf * uf));
        let mut lasts = Vec::new();
        let mut copies = Vec::new();
        for r in 0..ctx.reps {
            let tracker = TrackerProc::start(ctx, &[])?;
            let seed = SeedProc::start(ctx, tracker.addr, &share, Some(u), Some(chunk))?;
            let dirs: Vec<_> = (0..n)
                .map(|k| sc.sub(&format!("dl-{n}-{r}-{k}")))
                .collect::<R<_>>()?;
            let t0 = Instant::now();
            let mut gets: Vec<Proc> = Vec::new();
            for d in &dirs {
                gets.push(spawn_get(
                    ctx,
                    tracker.addr,
                    name,
                    d,
                    Some(u),
                    &["--seed"],
                    false,
                )?);
            }
            let timeout = Duration::from_secs_f64(bound * 3.0 + 30.0);
            let mut times = Vec::new();
            for g in &gets {
                let (t, _) = g.wait_line(Stream::Out, "downloaded ", timeout)?;
                times.push(t.duration_since(t0).as_secs_f64());
            }
            // The summary lines follow "downloaded"; "saved to" ends them.
            let mut from_seed = 0u64;
            for g in &gets {
                g.wait_line(Stream::Out, "saved to", Duration::from_secs(10))?;
                from_seed += source_bytes(g)
                    .iter()
                    .filter(|(a, _)| a.port() == seed.addr.port())
                    .map(|(_, b)| b)
                    .sum::<u64>();
            }
            let last = times.iter().copied().fold(0.0, f64::max);
            let first = times.iter().copied().fold(f64::INFINITY, f64::min);
            eprintln!(
                "  N={n} rep {}: first done {first:.2} s, last {last:.2} s (bound {bound:.2} s), seed uploaded {:.2} copies",
                r + 1,
                from_seed as f64 / f
            );
            lasts.push(last);
            copies.push(from_seed as f64 / f);
            drop(gets);
            drop(seed);
            drop(tracker);
            for d in dirs {
                let _ = std::fs::remove_dir_all(d);
            }
        }
        let last = median(&lasts);
        let ratio = median(&lasts.iter().map(|a| bound / a).collect::<Vec<_>>());
        plot.push((n, last, bound));
        rows.push(
            Row::new(
                FLASH,
                format!("N={n} x {} MiB/s, {}: last finisher", u / MIB, size(len)),
                format!("{last:.2} s"),
            )
            .baseline(format!("bound {bound:.2} s"))
            .ratio(ratio)
            .target("bound/actual >= 0.90", ratio >= 0.9),
        );
        rows.push(
            Row::new(
                FLASH,
                format!("N={n}: seed uploaded (copies of the file)"),
                format!("{:.2}", median(&copies)),
            )
            .baseline("ideal about 1"),
        );
    }
    ctx.plot.flash = plot;
    Ok(())
}
