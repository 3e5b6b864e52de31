//! Scenario 9: a folder of many files against the same bytes as one file
//! (issue 13). Two seeds (the second shares hard links to the first's
//! files) hold 1 GiB twice: as one file, and as 1,000 files of mixed sizes
//! (log-uniform from 1 KiB to 8 MiB, in 10 subfolders). Each run downloads
//! the single file (`peer get one.bin`) and the folder (`peer get set/`)
//! into an empty folder, each timed from spawning `peer get` until it
//! prints its "downloaded" line (after every file is verified, fsynced and
//! in place). The ratio is the folder's rate over the single file's, per
//! run, then the median. `--quick`: 16 MiB as 100 files.

use std::path::Path;
use std::time::Duration;

use super::single::prime;
use super::util::{GIB, MIB, R, Scratch, Stream, clear_dir, median, rate, size, write_file};
use super::{Ctx, Row, SeedProc, TrackerProc, own_folder, spawn_get};

pub const SCENARIO: &str = "9 folder of files";

/// The lengths of `n` files summing to exactly `total`: log-uniform from
/// 1 KiB to 8 MiB (deterministic), scaled to the total.
fn lengths(n: usize, total: u64) -> Vec<u64> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let raw: Vec<f64> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let u = (x >> 11) as f64 / (1u64 << 53) as f64;
            (1024f64.ln() + u * ((8 << 20) as f64 / 1024.0).ln()).exp()
        })
        .collect();
    let sum: f64 = raw.iter().sum();
    let mut v: Vec<u64> = raw
        .iter()
        .map(|r| (r / sum * total as f64) as u64)
        .collect();
    let short = total - v.iter().sum::<u64>();
    if let Some(last) = v.last_mut() {
        *last += short;
    }
    v
}

fn write_set(dir: &Path, lens: &[u64]) -> R<()> {
    for (i, len) in lens.iter().enumerate() {
        let sub = dir.join(format!("set/d{}", i % 10));
        std::fs::create_dir_all(&sub).map_err(|e| format!("{}: {e}", sub.display()))?;
        write_file(&sub.join(format!("f{i:04}.bin")), *len, i as u64 + 7)?;
    }
    Ok(())
}

/// Seconds from spawning `peer get ARGS` into `dl` to its "downloaded"
/// line; fails unless it exits 0.
fn timed_get(ctx: &Ctx, tracker: std::net::SocketAddr, name: &str, dl: &Path, len: u64) -> R<f64> {
    let mut get = spawn_get(ctx, tracker, name, dl, None, &[], false)?;
    let timeout = Duration::from_secs(60) + Duration::from_secs(len / (10 * MIB));
    let (done, _) = get.wait_line(Stream::Out, "downloaded ", timeout)?;
    let exit = get.wait_exit(Duration::from_secs(30))?;
    if exit.code != Some(0) {
        return Err(format!(
            "peer get {name} exited with {:?}: {}",
            exit.code,
            get.tail(Stream::Err, 5)
        ));
    }
    Ok(done.duration_since(get.started).as_secs_f64())
}

pub fn run(ctx: &mut Ctx, rows: &mut Vec<Row>) -> R<()> {
    let (total, n) = if ctx.quick {
        (16 * MIB, 100)
    } else {
        (GIB, 1000)
    };
    let sc = Scratch::new("folder")?;
    let share = sc.sub("share")?;
    let dl = sc.sub("dl")?;
    write_file(&share.join("one.bin"), total, 3)?;
    let lens = lengths(n, total);
    write_set(&share, &lens)?;
    let second = own_folder(&share)?;
    let tracker = TrackerProc::start(ctx, &[])?;
    let _a = SeedProc::start(ctx, tracker.addr, &share, None, None)?;
    let _b = SeedProc::start(ctx, tracker.addr, &second, None, None)?;
    let primer = sc.path.join("primer");
    let mut ratios = Vec::new();
    let (mut one_s, mut set_s) = (Vec::new(), Vec::new());
    for r in 0..ctx.reps {
        // Each download goes into a folder of its own, made just before and
        // removed only at the end: on this VM's ext4 (no journal), creating
        // a file scans the inodes freed in the last minutes of its block
        // group, so 1,000 files created where 1,000 were just deleted pay
        // that scan a million times (about 1 s of kernel time) before
        // p2pfs does anything.
        let (one_dir, set_dir) = (dl.join(format!("one{r}")), dl.join(format!("set{r}")));
        prime(&primer, total)?;
        let one = timed_get(ctx, tracker.addr, "one.bin", &one_dir, total)?;
        prime(&primer, total)?;
        let set = timed_get(ctx, tracker.addr, "set/", &set_dir, total)?;
        eprintln!(
            "  rep {}: one file {one:.2} s ({}), {n} files {set:.2} s ({})",
            r + 1,
            rate(total as f64 / one),
            rate(total as f64 / set)
        );
        ratios.push(one / set);
        one_s.push(one);
        set_s.push(set);
    }
    clear_dir(&dl)?;
    let ratio = median(&ratios);
    rows.push(
        Row::new(
            SCENARIO,
            format!("{n} files, {} in all, 2 sources: rate", size(total)),
            rate(total as f64 / median(&set_s)),
        )
        .baseline(format!(
            "one file of {}: {}",
            size(total),
            rate(total as f64 / median(&one_s))
        ))
        .ratio(ratio)
        .target(">= 0.80", ratio >= 0.8),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn lengths_sum_to_the_total_and_are_mixed() {
        let v = super::lengths(1000, 1 << 30);
        assert_eq!(v.iter().sum::<u64>(), 1 << 30);
        assert!(v.iter().any(|&l| l < 16 << 10) && v.iter().any(|&l| l > 4 << 20));
    }
}
