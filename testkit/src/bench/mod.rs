//! The p2pfs benchmark harness (see docs/benchmarks.md).
//!
//! Runs each scenario of issue 5 on loopback (127.0.0.1 only) with the
//! built `tracker` and `peer` binaries as child processes, on files it
//! generates in a scratch folder under the system temp dir, measures a
//! baseline in the same run, and prints one table: scenario, figure,
//! measured value, baseline, ratio, target, met. Every child is killed and
//! every file removed when the harness ends, on error too (drop guards).
//!
//! Used by `examples/bench.rs` (the command) and by `tests/bench_quick.rs`
//! (the same code in `--quick` mode, so it cannot rot).

pub mod chunks;
pub mod folder;
pub mod memory;
pub mod plot;
pub mod private;
pub mod register;
pub mod register_small;
pub mod single;
pub mod swarm;
pub mod tracker_load;
pub mod util;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use util::{Proc, R, Stream, addr_in, rate_arg};

/// Every scenario, in the order `all` runs them.
/// (name on the command line, label in the table's scenario column)
pub const SCENARIOS: &[(&str, &str)] = &[
    ("single", single::SCENARIO),
    ("multi", swarm::MULTI),
    ("flash", swarm::FLASH),
    ("memory", memory::SCENARIO),
    ("register", register::SCENARIO),
    ("tracker", tracker_load::SCENARIO),
    ("chunks", chunks::SCENARIO),
    ("private", private::SCENARIO),
    ("folder", folder::SCENARIO),
];

const USAGE: &str = "\
usage: bench [--quick] [--reps N] [--bin-dir DIR] [--plot FILE.svg] SCENARIO...

SCENARIO: all, or any of: single multi flash memory register tracker chunks private folder
  --quick      small files and short runs (what the test suite runs)
  --reps N     repetitions per measurement, the median is reported (default 3)
  --bin-dir D  folder holding the tracker and peer binaries
               (default: the release binaries next to this example, built
               first with `cargo build --release --bins` when run by cargo)
  --plot F     write the multi-source / flash-crowd plot as SVG to F
  --scale-plot F  write the cost-against-peers plot (tracker memory and
               CPU, flash crowd against its bound) as SVG to F
";

/// Options and shared state of one harness run.
pub struct Ctx {
    pub quick: bool,
    pub reps: usize,
    pub bin_dir: PathBuf,
    pub plot: plot::PlotData,
    /// The network key file every tracker and peer started now gets
    /// (`--key-file`); `None` runs them on an open network.
    pub key_file: Option<PathBuf>,
}

impl Ctx {
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }
}

/// Did a figure meet its target?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Met {
    Yes,
    No,
    /// Reported for information; no target.
    Info,
    /// The scenario failed to run.
    Error,
}

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: String,
    pub figure: String,
    pub value: String,
    pub baseline: String,
    pub ratio: String,
    pub target: String,
    pub met: Met,
}

impl Row {
    pub fn new(scenario: &str, figure: impl Into<String>, value: impl Into<String>) -> Row {
        Row {
            scenario: scenario.to_owned(),
            figure: figure.into(),
            value: value.into(),
            baseline: "-".into(),
            ratio: "-".into(),
            target: "-".into(),
            met: Met::Info,
        }
    }
    pub fn baseline(mut self, b: impl Into<String>) -> Row {
        self.baseline = b.into();
        self
    }
    pub fn ratio(mut self, r: f64) -> Row {
        self.ratio = format!("{r:.2}");
        self
    }
    pub fn target(mut self, t: impl Into<String>, met: bool) -> Row {
        self.target = t.into();
        self.met = if met { Met::Yes } else { Met::No };
        self
    }
}

/// Entry point shared by the binary and the test: parses `args` (without
/// the program name), runs the scenarios, writes the table to `out`.
/// Progress goes to stderr. Returns the rows; Err only for bad arguments or
/// missing binaries (a failing scenario becomes an ERROR row).
pub fn run(args: &[String], out: &mut dyn Write) -> R<Vec<Row>> {
    let mut quick = false;
    let mut reps = 3usize;
    let mut bin_dir: Option<PathBuf> = None;
    let mut plot_path: Option<PathBuf> = None;
    let mut scale_plot: Option<PathBuf> = None;
    let mut names: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--reps" => {
                reps = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("--reps needs a positive number\n{USAGE}"))?
            }
            "--bin-dir" => {
                bin_dir = Some(PathBuf::from(
                    it.next()
                        .ok_or(format!("--bin-dir needs a folder\n{USAGE}"))?,
                ))
            }
            "--plot" => {
                plot_path = Some(PathBuf::from(
                    it.next().ok_or(format!("--plot needs a file\n{USAGE}"))?,
                ))
            }
            "--scale-plot" => {
                scale_plot = Some(PathBuf::from(
                    it.next()
                        .ok_or(format!("--scale-plot needs a file\n{USAGE}"))?,
                ))
            }
            "-h" | "--help" | "help" => return Err(USAGE.into()),
            "all" => names.extend(SCENARIOS.iter().map(|(n, _)| n.to_string())),
            s if SCENARIOS.iter().any(|(n, _)| *n == s) => names.push(s.to_owned()),
            s => return Err(format!("unknown argument {s:?}\n{USAGE}")),
        }
    }
    if names.is_empty() {
        return Err(USAGE.into());
    }
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    let bin_dir = match bin_dir {
        Some(d) => d,
        None => default_bins()?,
    };
    for b in ["tracker", "peer"] {
        if !bin_dir.join(b).is_file() {
            return Err(format!(
                "{} not found; build with `cargo build --release` or pass --bin-dir",
                bin_dir.join(b).display()
            ));
        }
    }
    if cfg!(debug_assertions) && !quick {
        eprintln!(
            "bench: warning: this harness is a debug build; in-process baselines will be slow (use --release)"
        );
    }
    let mut ctx = Ctx {
        quick,
        reps,
        bin_dir,
        plot: plot::PlotData::default(),
        key_file: None,
    };
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut noise = Vec::new();
    for name in &names {
        util::check_stop()?;
        let t = Instant::now();
        let (busy0, tree0) = (util::machine_busy_s(), util::tree_cpu_s());
        eprintln!("== {name}");
        let r = match name.as_str() {
            "single" => single::run(&mut ctx, &mut rows),
            "multi" => swarm::run_multi(&mut ctx, &mut rows),
            "flash" => swarm::run_flash(&mut ctx, &mut rows),
            "memory" => memory::run(&mut ctx, &mut rows),
            "register" => register::run(&mut ctx, &mut rows),
            "tracker" => tracker_load::run(&mut ctx, &mut rows),
            "chunks" => chunks::run(&mut ctx, &mut rows),
            "private" => private::run(&mut ctx, &mut rows),
            "folder" => folder::run(&mut ctx, &mut rows),
            _ => Ok(()),
        };
        if let Err(e) = r {
            eprintln!("bench: {name} failed: {e}");
            let label = SCENARIOS
                .iter()
                .find(|(n, _)| n == name)
                .map_or(name.as_str(), |(_, l)| l);
            let mut row = Row::new(label, "scenario failed", first_line(&e));
            row.met = Met::Error;
            rows.push(row);
        }
        // CPU the machine spent on anything but this harness and the
        // programs it ran (other users' builds and tests): the noise.
        let secs = t.elapsed().as_secs_f64();
        let other = (util::machine_busy_s() - busy0) - (util::tree_cpu_s() - tree0);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        noise.push(format!(
            "{name}: {secs:.1} s, other load {:.0}% of the machine",
            (other.max(0.0) / (secs * cores) * 100.0)
        ));
        eprintln!("== {name} took {secs:.1} s");
    }
    write_table(out, &rows, ctx.quick, ctx.reps, started.elapsed())
        .map_err(|e| format!("write table: {e}"))?;
    writeln!(
        out,
        "\nCPU used by other programs while each scenario ran (noise): {}",
        noise.join("; ")
    )
    .map_err(|e| format!("write table: {e}"))?;
    if let Some(p) = plot_path {
        plot::write_svg(&p, &ctx.plot, ctx.quick)?;
        eprintln!("bench: wrote {}", p.display());
    }
    if let Some(p) = scale_plot {
        plot::write_scaling_svg(&p, &ctx.plot, ctx.quick)?;
        eprintln!("bench: wrote {}", p.display());
    }
    Ok(rows)
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").chars().take(120).collect()
}

/// target/release next to the running example (target/release/examples/bench),
/// after making sure the binaries are built from the current source.
fn default_bins() -> R<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("cannot find the target folder")?
        .to_path_buf();
    if let Some(cargo) = std::env::var_os("CARGO") {
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--bins", "--quiet"]);
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        let ok = cmd.status().is_ok_and(|s| s.success());
        if !ok {
            return Err("building the binaries failed".into());
        }
    }
    Ok(dir)
}

fn write_table(
    out: &mut dyn Write,
    rows: &[Row],
    quick: bool,
    reps: usize,
    took: Duration,
) -> std::io::Result<()> {
    let head = [
        "scenario",
        "figure",
        "measured",
        "baseline (same run)",
        "ratio",
        "target",
        "met?",
    ];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.scenario.clone(),
                r.figure.clone(),
                r.value.clone(),
                r.baseline.clone(),
                r.ratio.clone(),
                r.target.clone(),
                match r.met {
                    Met::Yes => "yes".into(),
                    Met::No => "NO".into(),
                    Met::Info => "-".into(),
                    Met::Error => "ERROR".into(),
                },
            ]
        })
        .collect();
    let mut w = [0usize; 7];
    for (i, h) in head.iter().enumerate() {
        w[i] = h.chars().count();
    }
    for c in &cells {
        for i in 0..7 {
            w[i] = w[i].max(c[i].chars().count());
        }
    }
    let line = |out: &mut dyn Write, c: &[String]| -> std::io::Result<()> {
        let mut s = String::from("|");
        for i in 0..7 {
            s.push(' ');
            s.push_str(&c[i]);
            s.push_str(&" ".repeat(w[i] - c[i].chars().count()));
            s.push_str(" |");
        }
        writeln!(out, "{s}")
    };
    writeln!(
        out,
        "p2pfs benchmark ({}, median of {reps} run(s) per figure, {:.0} s)",
        if quick { "--quick" } else { "full" },
        took.as_secs_f64()
    )?;
    writeln!(out)?;
    line(out, &head.map(String::from))?;
    let sep: Vec<String> = w.iter().map(|&n| "-".repeat(n)).collect();
    line(out, &sep)?;
    for c in &cells {
        line(out, c)?;
    }
    out.flush()
}

// ---- Starting the programs under test ---------------------------------------

/// Upper bound for any single wait that has no better estimate.
pub const STARTUP: Duration = Duration::from_secs(30);

/// A tracker child on 127.0.0.1 with a free port.
pub struct TrackerProc {
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl TrackerProc {
    pub fn start(ctx: &Ctx, extra: &[String]) -> R<TrackerProc> {
        let mut cmd = Command::new(ctx.bin("tracker"));
        cmd.args(["--listen", "127.0.0.1:0"]).args(extra);
        add_key(ctx, &mut cmd);
        let proc = Proc::spawn("tracker", &mut cmd, false)?;
        let (_, line) = proc.wait_line(Stream::Out, "listening on", STARTUP)?;
        let addr = addr_in(&line)?;
        Ok(TrackerProc { proc, addr })
    }
}

/// A `peer share` child: serving and registered with the tracker.
pub struct SeedProc {
    pub proc: Proc,
    pub addr: SocketAddr,
    /// When its scan finished ("serving chunks on" was printed).
    pub ready: Instant,
}

impl SeedProc {
    pub fn start(
        ctx: &Ctx,
        tracker: SocketAddr,
        dir: &Path,
        upload_limit: Option<u64>,
        chunk_size: Option<u64>,
    ) -> R<SeedProc> {
        SeedProc::start_with(ctx, tracker, dir, upload_limit, chunk_size, &[])
    }

    /// [`SeedProc::start`] with `extra` arguments for `peer share`.
    pub fn start_with(
        ctx: &Ctx,
        tracker: SocketAddr,
        dir: &Path,
        upload_limit: Option<u64>,
        chunk_size: Option<u64>,
        extra: &[&str],
    ) -> R<SeedProc> {
        let mut cmd = Command::new(ctx.bin("peer"));
        cmd.arg("share")
            .args(["--tracker", &tracker.to_string()])
            .arg("--dir")
            .arg(dir);
        if !extra.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        if let Some(l) = upload_limit {
            cmd.args(["--upload-limit", &rate_arg(l)]);
        }
        if let Some(c) = chunk_size {
            cmd.args(["--chunk-size", &rate_arg(c)]);
        }
        cmd.args(extra);
        add_key(ctx, &mut cmd);
        let proc = Proc::spawn("seed", &mut cmd, false)?;
        let (ready, line) = proc.wait_line(Stream::Out, "serving chunks on", STARTUP * 4)?;
        let addr = addr_in(&line)?;
        proc.wait_line(Stream::Out, "registered", STARTUP)?;
        Ok(SeedProc { proc, addr, ready })
    }
}

/// A fresh folder beside `dir` holding hard links to everything in it
/// (copies where linking fails), for one more seed of the same files:
/// `peer share` refuses a folder that another one shares.
pub fn own_folder(dir: &Path) -> R<std::path::PathBuf> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("share");
    let n = N.fetch_add(1, Ordering::Relaxed);
    let own = dir.with_file_name(format!("{name}-seed{n}"));
    let _ = std::fs::remove_dir_all(&own);
    link_tree(dir, &own)?;
    Ok(own)
}

fn link_tree(from: &Path, to: &Path) -> R<()> {
    link_tree_io(from, to)
        .map_err(|e| format!("linking {} to {}: {e}", from.display(), to.display()))
}

fn link_tree_io(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if e.file_name() == p2pfs::peer::share::LOCK_FILE_NAME {
            continue; // the other seed's lock: not ours
        }
        if e.file_type()?.is_dir() {
            link_tree_io(&src, &dst)?;
        } else if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

/// Starts `peer get NAME` into `dir`.
pub fn spawn_get(
    ctx: &Ctx,
    tracker: SocketAddr,
    name: &str,
    dir: &Path,
    upload_limit: Option<u64>,
    extra: &[&str],
    sample: bool,
) -> R<Proc> {
    let mut cmd = Command::new(ctx.bin("peer"));
    cmd.args(["get", name])
        .args(["--tracker", &tracker.to_string()])
        .arg("--dir")
        .arg(dir);
    if !extra.contains(&"--listen") {
        cmd.args(["--listen", "127.0.0.1:0"]);
    }
    cmd.args(extra);
    if let Some(l) = upload_limit {
        cmd.args(["--upload-limit", &rate_arg(l)]);
    }
    add_key(ctx, &mut cmd);
    Proc::spawn("get", &mut cmd, sample)
}

/// The environment and key option every child gets: no RUST_LOG, no
/// inherited P2PFS_KEY_FILE, and `--key-file` when the run is keyed.
fn add_key(ctx: &Ctx, cmd: &mut Command) {
    cmd.env_remove("RUST_LOG").env_remove("P2PFS_KEY_FILE");
    if let Some(k) = &ctx.key_file {
        cmd.arg("--key-file").arg(k);
    }
}

/// Per-source bytes from the summary `peer get` prints:
/// "  from 127.0.0.1:4001: 12.0 MiB (12582912 bytes), 12 chunk(s)".
pub fn source_bytes(p: &Proc) -> Vec<(SocketAddr, u64)> {
    p.all_lines(Stream::Out)
        .iter()
        .filter_map(|(_, l)| {
            let rest = l.trim_start().strip_prefix("from ")?;
            let (addr, rest) = rest.split_once(": ")?;
            let bytes = rest.split_once('(')?.1.split_once(" bytes)")?.0;
            Some((addr.parse().ok()?, bytes.parse().ok()?))
        })
        .collect()
}
