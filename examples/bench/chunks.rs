//! Scenario 7: download time against the number of chunks.
//!
//! One seed shares files of 1,024 to 524,288 chunks of 1 KiB (the smallest
//! chunk size, so the chunk count is as large as the limit allows for a
//! file that still downloads in seconds); one `peer get` downloads each.
//! The figure is the time per chunk, spawn to "downloaded" divided by the
//! chunk count. Per-chunk work (pick, request, verify, write, register)
//! must not grow with the file: the target is that the slowest time per
//! chunk is within 2x of the fastest. The smallest file carries the fixed
//! costs (process start, tracker query, fsync) over the fewest chunks, so
//! it is the slowest per chunk when the per-chunk work is flat.

use std::time::Duration;

use super::util::{MIB, R, Scratch, Stream, clear_dir, median, write_file};
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
    for (k, &n) in counts.iter().enumerate() {
        write_file(&share.join(format!("c{n}.bin")), n * CHUNK, 70 + k as u64)?;
    }
    let tracker = TrackerProc::start(ctx, &[])?;
    let _seed = SeedProc::start(ctx, tracker.addr, &share, None, Some(CHUNK))?;
    let mut per_chunk = Vec::new();
    for &n in counts {
        let name = format!("c{n}.bin");
        let mut v = Vec::new();
        for r in 0..ctx.reps {
            let mut get = spawn_get(ctx, tracker.addr, &name, &dl, None, &[], false)?;
            // Generous: 2 ms per chunk (40x the time per chunk the target
            // allows) plus start-up, so a regression shows as a figure.
            let timeout = Duration::from_secs(60) + Duration::from_millis(2 * n);
            let (done, _) = get.wait_line(Stream::Out, "downloaded ", timeout)?;
            let exit = get.wait_exit(Duration::from_secs(30))?;
            if exit.code != Some(0) {
                return Err(format!("peer get exited with {:?}", exit.code));
            }
            let secs = done.duration_since(get.started).as_secs_f64();
            eprintln!(
                "  {n} chunks rep {}: {secs:.2} s, {:.1} µs per chunk, CPU {:.2} s",
                r + 1,
                secs / n as f64 * 1e6,
                exit.cpu_s
            );
            v.push(secs);
            clear_dir(&dl)?;
        }
        let secs = median(&v);
        let us = secs / n as f64 * 1e6;
        per_chunk.push(us);
        rows.push(Row::new(
            SCENARIO,
            format!(
                "{n} chunks of 1 KiB ({:.1} MiB): time per chunk",
                (n * CHUNK) as f64 / MIB as f64
            ),
            format!("{us:.1} µs ({secs:.2} s)"),
        ));
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
