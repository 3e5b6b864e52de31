//! Scenarios 2 and 3: capped uploads.
//!
//! 2 (multi): N = 1, 2, 4, 8 seeds, each `--upload-limit CAP`, one `peer
//! get`. Ideal time size / (N x CAP); each source's share of the bytes
//! (from the downloader's summary) against 1/N; and the limiter's honesty:
//! every seed's highest send rate over any ~1 s window, measured from
//! outside by polling the kernel's per-socket `bytes_acked` (`ss -tin`)
//! every 100 ms.
//!
//! 3 (flash): one seed and N = 4, 8, 50, 100 downloaders (`peer get
//! --seed`, which keep serving after they finish; `--quick`: 4 and 8)
//! started together, every upload capped at U. Bound max(F/U, N F / (U +
//! N U)); the figure is the time until the last downloader prints
//! "downloaded". Also the bytes the seed uploaded, in copies of the file
//! (summed from every downloader's summary), and the CPU all the swarm's
//! processes used meanwhile (to show the cores were not the limit). Every
//! peer has its own loopback address (`--listen 127.0.1.K`, from which it
//! also connects), so the per-address caps see a host per peer as on a
//! real network. `$P2PFS_FLASH_N` (e.g. `100` or `4,8`) runs only those
//! crowd sizes; `$P2PFS_BENCH_LOG_DIR` keeps every process's debug log.

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

/// The flash-crowd runs: (downloaders, file size, per-upload cap, chunk
/// size). The small crowds use the multi-source file; the large ones a
/// smaller file at a lower cap, so that 101 processes moving data at once
/// stay within what 2 shared cores can do (the aggregate rate is (N + 1)
/// times the cap) and the bound, not the machine, is what is measured.
fn flash_runs(ctx: &Ctx) -> Vec<(usize, u64, u64, u64)> {
    let (len, u, chunk) = params(ctx);
    let big = (32 * MIB, MIB, 128 * 1024);
    if let Some(sizes) = env_sizes() {
        return sizes
            .into_iter()
            .map(|n| {
                if n >= BIG_CROWD && !ctx.quick {
                    (n, big.0, big.1, big.2)
                } else {
                    (n, len, u, chunk)
                }
            })
            .collect();
    }
    if ctx.quick {
        vec![(4, len, u, chunk), (8, len, u, chunk)]
    } else {
        vec![
            (4, len, u, chunk),
            (8, len, u, chunk),
            (50, big.0, big.1, big.2),
            (100, big.0, big.1, big.2),
        ]
    }
}

/// The crowd sizes named by `$P2PFS_FLASH_N` ("50", or "4,8,100"), so
/// that one crowd can be measured alone; `None` when unset or unreadable.
fn env_sizes() -> Option<Vec<usize>> {
    let v = std::env::var("P2PFS_FLASH_N").ok()?;
    let sizes: Option<Vec<usize>> = v
        .split(',')
        .map(|s| s.trim().parse().ok().filter(|&n| n > 0))
        .collect();
    if sizes.is_none() {
        eprintln!("bench: ignoring P2PFS_FLASH_N={v:?} (want sizes like 50 or 4,8,100)");
    }
    sizes
}

/// The loopback address process `k` of a flash crowd listens on and
/// connects from (the seed 0, downloader k - 1 at k): 127.0.1.1, 127.0.1.2,
/// ... so that, as on a real network, every peer is its own host to the
/// per-address caps of the chunk servers and the tracker (the tracker on
/// 127.0.0.1).
fn own_address(k: usize) -> String {
    format!("127.0.{}.{}:0", 1 + k / 250, 1 + k % 250)
}

/// `--log-file` for one process of a flash crowd when
/// `$P2PFS_BENCH_LOG_DIR` names a folder: each process's debug records
/// (chunks sent, chunks received, sources) are kept there as
/// `flash-N-REP-WHO.log` for a look at what the swarm did.
fn log_args(n: usize, r: usize, who: &str) -> Vec<String> {
    match std::env::var_os("P2PFS_BENCH_LOG_DIR") {
        Some(d) => {
            let p = std::path::Path::new(&d).join(format!("flash-{n}-{r}-{who}.log"));
            vec!["--log-file".into(), p.display().to_string()]
        }
        None => Vec::new(),
    }
}

/// Downloaders in a crowd from which each `peer get` keeps one request
/// in flight per source (`--pipeline 1`) instead of the default four.
pub const BIG_CROWD: usize = 50;

/// `peer get` options of a crowd of `n`. In a big crowd every source is
/// a peer uploading at the cap to many others, so a chunk requested from
/// it waits behind the others' requests; four in flight per source leave
/// a quarter of the file reserved at slow sources (and asked of the seed
/// by many at once, on 1.5 s old maps) where one leaves it free for
/// whoever gets it first (docs/scaling.md has both figures).
fn get_args(n: usize) -> Vec<&'static str> {
    if n >= BIG_CROWD {
        vec!["--seed", "--pipeline", "1"]
    } else {
        vec!["--seed"]
    }
}

/// One flash-crowd run.
struct FlashRep {
    first_s: f64,
    last_s: f64,
    /// Bytes the seed uploaded, in copies of the file.
    copies: f64,
    /// CPU seconds of the tracker, the seed and every downloader, over the
    /// time to the last finisher: how busy the 2 cores were with the swarm.
    swarm_cpu_s: f64,
}

pub fn run_flash(ctx: &mut Ctx, rows: &mut Vec<Row>) -> R<()> {
    let sc = Scratch::new("flash")?;
    let name = "flash.bin";
    let mut plot = Vec::new();
    let mut written: Option<(u64, std::path::PathBuf)> = None;
    for (n, len, u, chunk) in flash_runs(ctx) {
        let share = match &written {
            Some((l, p)) if *l == len => p.clone(),
            _ => {
                let p = sc.sub(&format!("share-{len}"))?;
                write_file(&p.join(name), len, 3)?;
                written = Some((len, p.clone()));
                p
            }
        };
        let (f, uf, nf) = (len as f64, u as f64, n as f64);
        let bound = (f / uf).max(nf * f / (uf + nf * uf));
        let mut reps = Vec::new();
        for r in 0..ctx.reps {
            super::util::check_stop()?;
            let rep = flash_once(ctx, &sc, &share, name, (n, r), (len, u, chunk), bound)?;
            eprintln!(
                "  N={n} rep {}: first done {:.2} s, last {:.2} s (bound {bound:.2} s), seed uploaded {:.2} copies, swarm CPU {:.1} s ({:.0}% of 2 cores)",
                r + 1,
                rep.first_s,
                rep.last_s,
                rep.copies,
                rep.swarm_cpu_s,
                rep.swarm_cpu_s / rep.last_s / 2.0 * 100.0
            );
            reps.push(rep);
        }
        let m = |g: fn(&FlashRep) -> f64| median(&reps.iter().map(g).collect::<Vec<_>>());
        let last = m(|r| r.last_s);
        let ratio = median(&reps.iter().map(|r| bound / r.last_s).collect::<Vec<_>>());
        let cpu_share = median(
            &reps
                .iter()
                .map(|r| r.swarm_cpu_s / r.last_s / 2.0)
                .collect::<Vec<_>>(),
        );
        plot.push((n, last, bound));
        let (target, goal) = if n >= BIG_CROWD {
            ("bound/actual >= 0.85", 0.85)
        } else {
            ("bound/actual >= 0.90", 0.9)
        };
        rows.push(
            Row::new(
                FLASH,
                format!(
                    "N={n} x {}/s, {} in {} chunks{}: last finisher",
                    size(u),
                    size(len),
                    size(chunk),
                    if n >= BIG_CROWD { ", --pipeline 1" } else { "" }
                ),
                format!("{last:.2} s"),
            )
            .baseline(format!("bound {bound:.2} s"))
            .ratio(ratio)
            .target(target, ratio >= goal),
        );
        rows.push(
            Row::new(
                FLASH,
                format!("N={n}: seed uploaded (copies of the file)"),
                format!("{:.2}", m(|r| r.copies)),
            )
            .baseline("ideal about 1"),
        );
        rows.push(Row::new(
            FLASH,
            format!("N={n}: CPU of the swarm (tracker, seed, downloaders)"),
            format!(
                "{:.1} s, {:.0}% of 2 cores",
                m(|r| r.swarm_cpu_s),
                cpu_share * 100.0
            ),
        ));
    }
    ctx.plot.flash = plot;
    Ok(())
}

/// One seed and `n` downloaders (`peer get --seed`) started together.
fn flash_once(
    ctx: &Ctx,
    sc: &Scratch,
    share: &std::path::Path,
    name: &str,
    (n, r): (usize, usize),
    (len, u, chunk): (u64, u64, u64),
    bound: f64,
) -> R<FlashRep> {
    let tracker = TrackerProc::start(ctx, &[])?;
    let mut seed_args = vec!["--listen".to_owned(), own_address(0)];
    seed_args.extend(log_args(n, r, "seed"));
    let seed_args: Vec<&str> = seed_args.iter().map(String::as_str).collect();
    let seed = SeedProc::start_with(ctx, tracker.addr, share, Some(u), Some(chunk), &seed_args)?;
    let dirs: Vec<_> = (0..n)
        .map(|k| sc.sub(&format!("dl-{n}-{r}-{k}")))
        .collect::<R<_>>()?;
    let cpu = |gets: &[Proc]| -> f64 {
        [&tracker.proc, &seed.proc]
            .into_iter()
            .chain(gets)
            .filter_map(|p| p.cpu_s())
            .sum()
    };
    let cpu0 = cpu(&[]);
    let t0 = Instant::now();
    let mut gets: Vec<Proc> = Vec::new();
    for (k, d) in dirs.iter().enumerate() {
        let mut own = vec!["--listen".to_owned(), own_address(k + 1)];
        own.extend(log_args(n, r, &format!("get{k}")));
        let mut args = get_args(n);
        args.extend(own.iter().map(String::as_str));
        gets.push(spawn_get(
            ctx,
            tracker.addr,
            name,
            d,
            Some(u),
            &args,
            false,
        )?);
    }
    let timeout = Duration::from_secs_f64(bound * 3.0 + 30.0);
    let mut times = Vec::new();
    for g in &gets {
        let (t, _) = g.wait_line(Stream::Out, "downloaded ", timeout)?;
        times.push(t.duration_since(t0).as_secs_f64());
    }
    let swarm_cpu_s = cpu(&gets) - cpu0;
    // The summary lines follow "downloaded"; "saved to" ends them.
    let mut from_seed = 0u64;
    for g in &gets {
        g.wait_line(Stream::Out, "saved to", Duration::from_secs(10))?;
        from_seed += source_bytes(g)
            .iter()
            .filter(|(a, _)| *a == seed.addr)
            .map(|(_, b)| b)
            .sum::<u64>();
    }
    drop(gets);
    drop(seed);
    drop(tracker);
    for d in dirs {
        let _ = std::fs::remove_dir_all(d);
    }
    Ok(FlashRep {
        first_s: times.iter().copied().fold(f64::INFINITY, f64::min),
        last_s: times.iter().copied().fold(0.0, f64::max),
        copies: from_seed as f64 / len as f64,
        swarm_cpu_s,
    })
}
