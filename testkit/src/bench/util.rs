//! Harness plumbing: scratch folders, child processes that are always
//! killed, /proc sampling (CPU seconds, peak RSS), generated files, the
//! `ss` poller that measures each uploader's real send rate, and small
//! statistics helpers.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

pub type R<T> = Result<T, String>;

/// Set by Ctrl-C in the binary: every wait gives up, guards clean up.
pub static STOP: AtomicBool = AtomicBool::new(false);

pub fn check_stop() -> R<()> {
    if STOP.load(Ordering::Relaxed) {
        return Err("interrupted".into());
    }
    Ok(())
}

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---- Scratch folder -----------------------------------------------------

/// A folder under the system temp dir, removed (with everything in it)
/// when dropped, however the harness ends.
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    pub fn new(tag: &str) -> R<Scratch> {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "p2pfs-bench-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).map_err(|e| format!("create {}: {e}", path.display()))?;
        Ok(Scratch { path })
    }

    /// A sub-folder (created).
    pub fn sub(&self, name: &str) -> R<PathBuf> {
        let p = self.path.join(name);
        fs::create_dir_all(&p).map_err(|e| format!("create {}: {e}", p.display()))?;
        Ok(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Empties a folder (keeps the folder).
pub fn clear_dir(p: &Path) -> R<()> {
    let _ = fs::remove_dir_all(p);
    fs::create_dir_all(p).map_err(|e| format!("create {}: {e}", p.display()))
}

// ---- Generated files ----------------------------------------------------

/// xorshift64*: fast deterministic bytes, incompressible enough.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// Writes `len` pseudo-random bytes to `path` and dates it an hour back, so
/// the peer's hash cache may keep it (files younger than 2 s are never
/// cached).
pub fn write_file(path: &Path, len: u64, seed: u64) -> R<()> {
    if let Some(d) = path.parent() {
        fs::create_dir_all(d).map_err(|e| format!("create {}: {e}", d.display()))?;
    }
    let f = File::create(path).map_err(|e| format!("create {}: {e}", path.display()))?;
    let mut w = std::io::BufWriter::with_capacity(MIB as usize, &f);
    let mut rng = Rng::new(seed);
    let mut buf = vec![0u8; MIB as usize];
    let mut left = len;
    while left > 0 {
        let n = left.min(MIB) as usize;
        rng.fill(&mut buf[..n]);
        w.write_all(&buf[..n])
            .map_err(|e| format!("write {}: {e}", path.display()))?;
        left -= n as u64;
    }
    w.flush()
        .map_err(|e| format!("write {}: {e}", path.display()))?;
    drop(w);
    let old = SystemTime::now() - Duration::from_secs(3600);
    f.set_modified(old)
        .map_err(|e| format!("set mtime of {}: {e}", path.display()))?;
    Ok(())
}

/// Calls `f` with each `chunk`-sized piece of `path` (read with pread into
/// one reused buffer); returns the seconds spent inside `f` only.
pub fn for_each_chunk(path: &Path, chunk: usize, mut f: impl FnMut(&[u8])) -> R<f64> {
    let file = File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let len = file
        .metadata()
        .map_err(|e| format!("stat {}: {e}", path.display()))?
        .len();
    let mut buf = vec![0u8; chunk];
    let mut off = 0u64;
    let mut inside = Duration::ZERO;
    while off < len {
        let n = (len - off).min(chunk as u64) as usize;
        file.read_exact_at(&mut buf[..n], off)
            .map_err(|e| format!("read {}: {e}", path.display()))?;
        let t = Instant::now();
        f(&buf[..n]);
        inside += t.elapsed();
        off += n as u64;
    }
    Ok(inside.as_secs_f64())
}

// ---- /proc --------------------------------------------------------------

/// Clock ticks per second for /proc/<pid>/stat (`getconf CLK_TCK`; 100 on
/// Linux unless told otherwise).
pub fn clk_tck() -> f64 {
    static TCK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|&v| v > 0.0)
            .unwrap_or(100.0)
    })
}

/// One reading of /proc/<pid>/stat: state letter and user+system CPU seconds
/// (the whole thread group, including threads that already ended).
#[derive(Debug, Clone, Copy)]
pub struct Stat {
    pub state: char,
    pub cpu_s: f64,
}

pub fn read_stat(pid: u32) -> Option<Stat> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&s)
}

fn parse_stat(s: &str) -> Option<Stat> {
    // "pid (comm) S ppid ..." and comm may hold spaces or parentheses.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let state = f.first()?.chars().next()?;
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some(Stat {
        state,
        cpu_s: (utime + stime) / clk_tck(),
    })
}

/// CPU seconds of this process so far (for in-process baselines).
pub fn self_cpu_s() -> f64 {
    read_stat(std::process::id()).map_or(0.0, |s| s.cpu_s)
}

/// CPU seconds of this process plus its reaped children (every program
/// under test is reaped when its scenario ends).
pub fn tree_cpu_s() -> f64 {
    let Ok(s) = fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let Some(close) = s.rfind(')') else {
        return 0.0;
    };
    let f: Vec<f64> = s[close + 2..]
        .split_whitespace()
        .skip(11)
        .take(4)
        .filter_map(|v| v.parse().ok())
        .collect();
    f.iter().sum::<f64>() / clk_tck()
}

/// Busy CPU seconds of the whole machine so far (/proc/stat: all but idle
/// and iowait).
pub fn machine_busy_s() -> f64 {
    let Ok(s) = fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(cpu) = s.lines().next() else {
        return 0.0;
    };
    let v: Vec<f64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy: f64 = v
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4 && *i < 8)
        .map(|(_, x)| x)
        .sum();
    busy / clk_tck()
}

/// (VmRSS, VmHWM) in KiB from /proc/<pid>/status.
pub fn read_rss(pid: u32) -> Option<(u64, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let l = s.lines().find(|l| l.starts_with(name))?;
        l[name.len()..].split_whitespace().next()?.parse().ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

// ---- Child processes ----------------------------------------------------

#[derive(Default)]
struct LinesInner {
    lines: Vec<(Instant, String)>,
    eof: bool,
}

/// Lines of one output stream, each stamped when the harness read it.
#[derive(Default)]
struct Lines {
    inner: Mutex<LinesInner>,
    cv: Condvar,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Stream {
    Out,
    Err,
}

/// What a child left behind when it exited.
#[derive(Debug, Clone, Copy)]
pub struct Exit {
    pub code: Option<i32>,
    pub cpu_s: f64,
    /// Peak RSS seen by the sampler, KiB (0 without a sampler).
    pub peak_rss_kib: u64,
}

/// A child process with its stdout and stderr read into memory by two
/// threads (so it never blocks on a full pipe), optionally sampled for peak
/// RSS, and killed and reaped when dropped.
pub struct Proc {
    pub name: String,
    pub pid: u32,
    pub started: Instant,
    child: Child,
    reaped: bool,
    out: Arc<Lines>,
    err: Arc<Lines>,
    readers: Vec<JoinHandle<()>>,
    peak_rss: Arc<AtomicU64>,
    sampler_stop: Arc<AtomicBool>,
    sampler: Option<JoinHandle<()>>,
}

impl Proc {
    /// Spawns `cmd`. With `sample`, a thread reads VmHWM every 5 ms and keeps
    /// the largest value (VmHWM is gone once the process has exited).
    pub fn spawn(name: &str, cmd: &mut Command, sample: bool) -> R<Proc> {
        let started = Instant::now();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn {name}: {e}"))?;
        let pid = child.id();
        let out = Arc::new(Lines::default());
        let err = Arc::new(Lines::default());
        let mut readers = Vec::new();
        if let Some(s) = child.stdout.take() {
            readers.push(reader(name, "out", s, Arc::clone(&out))?);
        }
        if let Some(s) = child.stderr.take() {
            readers.push(reader(name, "err", s, Arc::clone(&err))?);
        }
        let peak_rss = Arc::new(AtomicU64::new(0));
        let sampler_stop = Arc::new(AtomicBool::new(false));
        let mut p = Proc {
            name: name.to_owned(),
            pid,
            started,
            child,
            reaped: false,
            out,
            err,
            readers,
            peak_rss: Arc::clone(&peak_rss),
            sampler_stop: Arc::clone(&sampler_stop),
            sampler: None,
        };
        if sample {
            let h = thread::Builder::new()
                .name(format!("sample-{name}"))
                .stack_size(64 * 1024)
                .spawn(move || {
                    while !sampler_stop.load(Ordering::Relaxed) {
                        match read_rss(pid) {
                            Some((_, hwm)) => {
                                peak_rss.fetch_max(hwm, Ordering::Relaxed);
                            }
                            None => {
                                // Exited (no mm any more) or reaped.
                                if read_stat(pid).is_none_or(|s| s.state == 'Z') {
                                    return;
                                }
                            }
                        }
                        thread::sleep(Duration::from_millis(5));
                    }
                })
                .map_err(|e| format!("spawn sampler: {e}"))?;
            p.sampler = Some(h);
        }
        Ok(p)
    }

    fn lines(&self, s: Stream) -> &Lines {
        match s {
            Stream::Out => &self.out,
            Stream::Err => &self.err,
        }
    }

    /// Waits for the first line of `s` containing `needle`; returns when it
    /// was read and the line.
    pub fn wait_line(&self, s: Stream, needle: &str, timeout: Duration) -> R<(Instant, String)> {
        self.wait_match(s, timeout, needle, |l| l.contains(needle))
    }

    /// Waits for the first line of `s` for which `pred` is true.
    pub fn wait_match(
        &self,
        s: Stream,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> R<(Instant, String)> {
        let end = Instant::now() + timeout;
        let lines = self.lines(s);
        let mut g = lock(&lines.inner);
        let mut seen = 0;
        loop {
            if let Some((t, l)) = g.lines[seen..].iter().find(|(_, l)| pred(l)) {
                return Ok((*t, l.clone()));
            }
            seen = g.lines.len();
            if g.eof {
                drop(g);
                return Err(format!(
                    "{} ended before printing {what:?}; stderr:\n{}",
                    self.name,
                    self.tail(Stream::Err, 20)
                ));
            }
            let now = Instant::now();
            if now >= end || STOP.load(Ordering::Relaxed) {
                drop(g);
                return Err(format!(
                    "{} did not print {what:?} within {:?}; stderr:\n{}",
                    self.name,
                    timeout,
                    self.tail(Stream::Err, 20)
                ));
            }
            let wait = (end - now).min(Duration::from_millis(200));
            g = lines
                .cv
                .wait_timeout(g, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// A copy of every line of `s` read so far.
    pub fn all_lines(&self, s: Stream) -> Vec<(Instant, String)> {
        lock(&self.lines(s).inner).lines.clone()
    }

    /// The last `n` lines of `s` (for error messages).
    pub fn tail(&self, s: Stream, n: usize) -> String {
        let g = lock(&self.lines(s).inner);
        let start = g.lines.len().saturating_sub(n);
        let v: Vec<&str> = g.lines[start..].iter().map(|(_, l)| l.as_str()).collect();
        v.join("\n")
    }

    /// CPU seconds used so far (None once reaped).
    pub fn cpu_s(&self) -> Option<f64> {
        read_stat(self.pid).map(|s| s.cpu_s)
    }

    /// Current (VmRSS, VmHWM), KiB.
    pub fn rss(&self) -> Option<(u64, u64)> {
        read_rss(self.pid)
    }

    /// Waits for the child to exit on its own. Reads its CPU time while it
    /// is a zombie (before reaping it), so the figure covers every thread.
    pub fn wait_exit(&mut self, timeout: Duration) -> R<Exit> {
        let end = Instant::now() + timeout;
        let cpu_s = loop {
            match read_stat(self.pid) {
                Some(s) if s.state == 'Z' || s.state == 'X' => break s.cpu_s,
                Some(_) => {}
                None => break 0.0,
            }
            if Instant::now() >= end || STOP.load(Ordering::Relaxed) {
                return Err(format!(
                    "{} did not exit within {timeout:?}; stderr:\n{}",
                    self.name,
                    self.tail(Stream::Err, 20)
                ));
            }
            thread::sleep(Duration::from_millis(2));
        };
        let st = self
            .child
            .wait()
            .map_err(|e| format!("wait {}: {e}", self.name))?;
        self.reaped = true;
        self.sampler_stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.sampler.take() {
            let _ = h.join();
        }
        Ok(Exit {
            code: st.code(),
            cpu_s,
            peak_rss_kib: self.peak_rss.load(Ordering::Relaxed),
        })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        self.sampler_stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.sampler.take() {
            let _ = h.join();
        }
        for h in self.readers.drain(..) {
            let _ = h.join();
        }
    }
}

fn reader(
    name: &str,
    which: &str,
    s: impl Read + Send + 'static,
    lines: Arc<Lines>,
) -> R<JoinHandle<()>> {
    thread::Builder::new()
        .name(format!("{which}-{name}"))
        .stack_size(64 * 1024)
        .spawn(move || {
            let mut r = BufReader::new(s);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let t = Instant::now();
                        let l = String::from_utf8_lossy(&buf).trim_end().to_owned();
                        lock(&lines.inner).lines.push((t, l));
                        lines.cv.notify_all();
                    }
                }
            }
            lock(&lines.inner).eof = true;
            lines.cv.notify_all();
        })
        .map_err(|e| format!("spawn reader: {e}"))
}

/// The socket address in a line like "... listening on 127.0.0.1:1234 ...".
pub fn addr_in(line: &str) -> R<SocketAddr> {
    line.split_whitespace()
        .find_map(|w| {
            w.trim_matches(|c| c == ',' || c == ')' || c == '(')
                .parse()
                .ok()
        })
        .ok_or_else(|| format!("no address in {line:?}"))
}

// ---- Upload rates from the kernel (ss) ------------------------------------

/// Polls `ss -tin` every `every` for the established sockets whose local
/// port is one of `ports` (chunk servers: their accepted connections) and
/// records, per port, the cumulative bytes the kernel saw acknowledged. It
/// measures what each uploader really sent, from outside the program.
pub struct SendMonitor {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    samples: Arc<Mutex<Vec<Sample>>>,
}

/// When `ss` ran, and the cumulative bytes acknowledged per local port.
type Sample = (Instant, HashMap<u16, u64>);

impl SendMonitor {
    pub fn start(ports: &[u16], every: Duration) -> SendMonitor {
        let available = Command::new("ss")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let mut m = SendMonitor {
            stop: Arc::clone(&stop),
            handle: None,
            samples: Arc::clone(&samples),
        };
        if !available || ports.is_empty() {
            return m;
        }
        let mut filter = vec!["(".to_string()];
        for (i, p) in ports.iter().enumerate() {
            if i > 0 {
                filter.push("or".into());
            }
            filter.extend(["sport".into(), "=".into(), format!(":{p}")]);
        }
        filter.push(")".into());
        let ports: Vec<u16> = ports.to_vec();
        m.handle = thread::Builder::new()
            .name("ss-monitor".into())
            .spawn(move || {
                // Per socket (local, remote) the largest count seen, so a
                // connection that closes keeps its bytes in the total.
                let mut per_sock: HashMap<String, (u16, u64)> = HashMap::new();
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let out = Command::new("ss")
                        .args(["-tinH", "state", "established"])
                        .args(&filter)
                        .stderr(Stdio::null())
                        .output();
                    let t = Instant::now();
                    if let Ok(o) = out {
                        parse_ss(&String::from_utf8_lossy(&o.stdout), &ports, &mut per_sock);
                        let mut tot: HashMap<u16, u64> = ports.iter().map(|&p| (p, 0)).collect();
                        for (port, b) in per_sock.values() {
                            *tot.entry(*port).or_default() += b;
                        }
                        lock(&samples).push((t, tot));
                    }
                    next += every;
                    let now = Instant::now();
                    if next > now {
                        thread::sleep(next - now);
                    } else {
                        next = now;
                    }
                }
            })
            .ok();
        m
    }

    /// Stops polling; returns per port the highest rate over any window of
    /// about one second (0.9 to 1.1 s between samples), bytes/s.
    pub fn finish(mut self) -> HashMap<u16, f64> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        let s = lock(&self.samples);
        let mut best: HashMap<u16, f64> = HashMap::new();
        for i in 0..s.len() {
            for j in i + 1..s.len() {
                let dt = s[j].0.duration_since(s[i].0).as_secs_f64();
                if dt < 0.9 {
                    continue;
                }
                if dt > 1.1 {
                    break;
                }
                for (port, &b) in &s[j].1 {
                    let a = s[i].1.get(port).copied().unwrap_or(0);
                    let r = b.saturating_sub(a) as f64 / dt;
                    let e = best.entry(*port).or_insert(0.0);
                    if r > *e {
                        *e = r;
                    }
                }
            }
        }
        best
    }
}

impl Drop for SendMonitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn parse_ss(out: &str, ports: &[u16], per_sock: &mut HashMap<String, (u16, u64)>) {
    let mut current: Option<(String, u16)> = None;
    for line in out.lines() {
        if !line.starts_with(char::is_whitespace) {
            // "0 0 127.0.0.1:4001 127.0.0.1:53122"
            let f: Vec<&str> = line.split_whitespace().collect();
            current = None;
            if f.len() >= 4 {
                let port = f[2].rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
                if let Some(port) = port.filter(|p| ports.contains(p)) {
                    current = Some((format!("{} {}", f[2], f[3]), port));
                }
            }
        } else if let Some((key, port)) = &current {
            if let Some(v) = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("bytes_acked:"))
                .and_then(|v| v.parse::<u64>().ok())
            {
                let e = per_sock.entry(key.clone()).or_insert((*port, 0));
                e.1 = e.1.max(v);
            }
        }
    }
}

// ---- Statistics and formatting ----------------------------------------------

/// Median (mean of the two middle values for an even count); NaN if empty.
pub fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The `q` quantile (0..=1) by nearest rank.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let k = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[k - 1]
}

/// "1.23 GB/s" style (decimal units for rates: MB/s = 10^6 bytes/s).
pub fn rate(bytes_per_s: f64) -> String {
    if bytes_per_s >= 1e9 {
        format!("{:.2} GB/s", bytes_per_s / 1e9)
    } else {
        format!("{:.0} MB/s", bytes_per_s / 1e6)
    }
}

/// Size in binary units: "256 MiB", "4 GiB".
pub fn size(bytes: u64) -> String {
    if bytes >= GIB && bytes % GIB == 0 {
        format!("{} GiB", bytes / GIB)
    } else if bytes >= MIB {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{} KiB", bytes / 1024)
    }
}

/// Rate option as the peer CLI reads it ("10M" = 10 MiB/s).
pub fn rate_arg(bytes_per_s: u64) -> String {
    if bytes_per_s % MIB == 0 {
        format!("{}M", bytes_per_s / MIB)
    } else if bytes_per_s % 1024 == 0 {
        format!("{}K", bytes_per_s / 1024)
    } else {
        bytes_per_s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing() {
        let s = "123 (my (odd) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0";
        let st = parse_stat(s).unwrap();
        assert_eq!(st.state, 'S');
        assert!((st.cpu_s - 300.0 / clk_tck()).abs() < 1e-9);
    }
}
