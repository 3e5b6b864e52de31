//! Scenario 7: download time against the number of chunks.
//!
//! One seed shares files of 1,024 to 524,288 chunks of 1 KiB (the smallest
//! chunk size, so the chunk count is as large as the limit allows for a
//! file that still downloads in seconds); one `peer get` downloads each.
//! Per-chunk work (pick, request, verify, write, register) must not grow
//! with the file: the target is that the slowest time per chunk is within
//! 2x of the fastest.
//!
//! Time per chunk is the download's wall time (spawn to "downloaded")
//! minus the fixed cost, divided by the chunk count. The fixed cost
//! (process start, tracker query, connecting, fsync, rename) is the
//! baseline measured in the same run: the median time to download a file
//! of one chunk. Without the subtraction the smallest file, which is mostly
//! fixed cost, would look like the slowest per chunk. The raw time is shown
//! too, and the downloader's peak RSS (largest over the runs), for
//! information: what a download keeps per chunk (hashes, bitmaps, the
//! picker's lists).

use std::time::Duration;

use super::util::{MIB, Proc, R, Scratch, Stream, clear_dir, median, write_file};
use super::{Ctx, Row, SeedProc, TrackerProc, spawn_get};

pub const SCENARIO: &str = "7 chunk count";

/// 1 KiB: the smallest chunk size (`limits::MIN_CHUNK_SIZE`).
const CHUNK: u64 = 1024;

pub fn run(ctx: &mut Ctx, rows: &mut Vec<Row>) -> R<()> {
    let counts: &[u64] = if ctx.quick {
        &[1 << 10, 1 << 12]
    } else {
        &[1 << 10, 1 << 12, 1 << 14, 1 << 16, 1 << 18, 1 << 19]
    };
    let sc = Scratch::new("chunks")?;
    let share = sc.sub("share")?;
    let dl = sc.sub("dl")?;
    write_file(&share.join("c1.bin"), CHUNK, 69)?;
    for (k, &n) in counts.iter().enumerate() {
        write_file(&share.join(format!("c{n}.bin")), n * CHUNK, 70 + k as u64)?;
    }
    let tracker = TrackerProc::start(ctx, &[])?;
    let _seed = SeedProc::start(ctx, tracker.addr, &share, None, Some(CHUNK))?;
    let get = |n: u64, r: usize| -> R<(f64, f64)> {
        let mut p = spawn_get(
            ctx,
            tracker.addr,
            &format!("c{n}.bin"),
            &dl,
            None,
            &[],
            true,
        )?;
        let out = timed(&mut p, n);
        clear_dir(&dl)?;
        let (secs, rss) = out?;
        eprintln!(
            "  {n} chunk(s) rep {}: {secs:.3} s, peak RSS {rss:.1} MiB",
            r + 1
        );
        Ok((secs, rss))
    };
    // More runs of the one-chunk file: it is short and every figure
    // subtracts it.
    let fixed = median(
        &(0..ctx.reps * 3)
            .map(|r| get(1, r).map(|x| x.0))
            .collect::<R<Vec<f64>>>()?,
    );
    let mut per_chunk = Vec::new();
    for &n in counts {
        let runs = (0..ctx.reps).map(|r| get(n, r)).collect::<R<Vec<_>>>()?;
        let secs = median(&runs.iter().map(|x| x.0).collect::<Vec<_>>());
        let peak = runs.iter().map(|x| x.1).fold(0.0, f64::max);
        let us = (secs - fixed).max(0.0) / n as f64 * 1e6;
        per_chunk.push(us);
        rows.push(
            Row::new(
                SCENARIO,
                format!(
                    "{n} chunks of 1 KiB ({:.1} MiB): time per chunk",
                    (n * CHUNK) as f64 / MIB as f64
                ),
                format!(
                    "{us:.1} µs ({secs:.2} s in all, {:.1} µs per chunk raw; peak RSS {peak:.1} MiB)",
                    secs / n as f64 * 1e6
                ),
            )
            .baseline(format!("fixed cost {:.0} ms", fixed * 1e3)),
        );
    }
    let lo = per_chunk.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = per_chunk.iter().copied().fold(0.0, f64::max);
    let ratio = hi / lo;
    rows.push(
        Row::new(
            SCENARIO,
            format!(
                "flat: slowest / fastest time per chunk, {} to {} chunks",
                counts[0],
                counts[counts.len() - 1]
            ),
            format!("{hi:.1} / {lo:.1} µs"),
        )
        .ratio(ratio)
        .target("<= 2.00", ratio <= 2.0),
    );
    Ok(())
}

/// Waits for a `peer get` of `n` chunks: (seconds from spawn to
/// "downloaded", peak RSS in MiB).
fn timed(p: &mut Proc, n: u64) -> R<(f64, f64)> {
    // Generous: 2 ms per chunk (40x the time per chunk the target allows)
    // plus start-up, so a regression shows as a figure, not a timeout.
    let timeout = Duration::from_secs(60) + Duration::from_millis(2 * n);
    let (done, _) = p.wait_line(Stream::Out, "downloaded ", timeout)?;
    let exit = p.wait_exit(Duration::from_secs(30))?;
    if exit.code != Some(0) {
        return Err(format!("peer get exited with {:?}", exit.code));
    }
    Ok((
        done.duration_since(p.started).as_secs_f64(),
        exit.peak_rss_kib as f64 / 1024.0,
    ))
}
