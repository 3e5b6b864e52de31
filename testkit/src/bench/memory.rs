//! Scenario 4: peak RSS of a downloader (`peer get`, one unlimited seed)
//! for three file sizes. Peak RSS is the largest VmHWM read from
//! /proc/<pid>/status every 5 ms while the process runs.

use std::time::Duration;

use super::util::{GIB, MIB, R, Scratch, Stream, clear_dir, median, size, write_file};
use super::{Ctx, Row, SeedProc, TrackerProc, spawn_get};

pub const SCENARIO: &str = "4 memory";

pub fn run(ctx: &mut Ctx, rows: &mut Vec<Row>) -> R<()> {
    let sizes: [u64; 3] = if ctx.quick {
        [4 * MIB, 16 * MIB, 64 * MIB]
    } else {
        [256 * MIB, GIB, 4 * GIB]
    };
    let sc = Scratch::new("memory")?;
    let share = sc.sub("share")?;
    let dl = sc.sub("dl")?;
    for (k, &len) in sizes.iter().enumerate() {
        write_file(&share.join(format!("mem-{k}.bin")), len, 10 + k as u64)?;
    }
    let tracker = TrackerProc::start(ctx, &[])?;
    let _seed = SeedProc::start(ctx, tracker.addr, &share, None, None)?;
    let mut peaks = Vec::new();
    for (k, &len) in sizes.iter().enumerate() {
        let name = format!("mem-{k}.bin");
        let mut v = Vec::new();
        for r in 0..ctx.reps {
            let mut get = spawn_get(ctx, tracker.addr, &name, &dl, None, &[], true)?;
            let timeout = Duration::from_secs(60) + Duration::from_secs(len / (20 * MIB));
            get.wait_line(Stream::Out, "downloaded ", timeout)?;
            let exit = get.wait_exit(Duration::from_secs(30))?;
            if exit.code != Some(0) {
                return Err(format!("peer get exited with {:?}", exit.code));
            }
            let mib = exit.peak_rss_kib as f64 / 1024.0;
            eprintln!("  {} rep {}: peak RSS {mib:.1} MiB", size(len), r + 1);
            v.push(mib);
            clear_dir(&dl)?;
        }
        let peak = median(&v);
        peaks.push(peak);
        rows.push(
            Row::new(
                SCENARIO,
                format!("peak RSS of downloader, {}", size(len)),
                format!("{peak:.1} MiB"),
            )
            .target("<= 16 MiB", peak <= 16.0),
        );
    }
    let lo = peaks.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = peaks.iter().copied().fold(0.0, f64::max);
    let growth = hi / lo;
    rows.push(
        Row::new(
            SCENARIO,
            format!(
                "flat: largest / smallest peak ({} vs {})",
                size(sizes[2]),
                size(sizes[0])
            ),
            format!("{hi:.1} / {lo:.1} MiB"),
        )
        .ratio(growth)
        .target("<= 1.10", growth <= 1.10),
    );
    Ok(())
}
