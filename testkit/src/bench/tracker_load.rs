//! Scenario 6: one tracker with 1,000, 4,000 and 10,000 peers connected at
//! once (`--quick`: 50).
//!
//! The peers are raw protocol clients in this process (like tests/util's
//! Client), one socket each, each bound to its own loopback source address
//! before connecting: [`PEERS_PER_ADDRESS`] peers per address 127.1.x.y, so
//! the tracker's per-address caps (connections, chunks, sources per reply)
//! see a network of many hosts at their defaults; only `--max-connections`
//! is raised. Each peer says Hello and registers four files from its own
//! announced port: the popular 1,000-chunk `load.bin` (holding half of its
//! chunks), held by every peer, and three 16-chunk files of a pool of
//! peers / 10, so each of those has about 30 holders. The peers connect
//! from [`CONNECTERS`] threads at once, a reconnect storm larger than the
//! listen backlog. Measured:
//!
//! * tracker RSS per idle connected peer: VmRSS after all registered minus
//!   VmRSS before the first connection, over the number of peers (so it
//!   includes each peer's registry entries, thread and socket buffers);
//!   the tracker's threads; the slowest connect + Hello + Register of the
//!   storm and how many took a second or more (a dropped SYN is resent
//!   after 1 s: the accept queue overflowed);
//! * chunk-register throughput: 4 load threads each own a quarter of the
//!   connections and send one ChunkRegister (of `load.bin`) on each of 16
//!   of them, then read the 16 Oks, slice after slice (each peer has at
//!   most one request outstanding, as a real peer's session does), paced
//!   at one register per peer per second, or as fast as the tracker
//!   answers (saturated: counted over a fixed window after a warm-up,
//!   with the tracker's CPU over that window);
//! * Locate (without hashes) latency, p50 and p99, from one more client
//!   while every peer registers one chunk a second (100 Locates of each
//!   file a second; the tracker's CPU is measured meanwhile) and while the
//!   tracker is saturated as above (back to back), for `load.bin` (every
//!   peer holds it: the worst case, the registry scans every holder under
//!   its lock) and for a pool file; the baseline is the same query with
//!   the peers connected but idle.
//!
//! Needs about peers + 100 file descriptors in this process and in the
//! tracker (`ulimit -n`; the scenario says so when the limit is lower) and
//! as many threads in the tracker. The tracker runs with a two-minute idle
//! timeout, since these clients send no keepalives while the others are
//! being connected. The load generator shares the 2 cores with the
//! tracker, so the throughput is what the tracker achieves while also
//! being loaded.

use std::io::{BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use p2pfs::wire::{self, FileEntry, Have, Message};

use super::util::{MIB, R, median, quantile, read_stat};
use super::{Ctx, Row, TrackerProc};

pub const SCENARIO: &str = "6 tracker";
const CHUNKS: u32 = 1000;
const NAME: &str = "load.bin";
/// Chunks of each pool file.
const POOL_CHUNKS: u32 = 16;
const T: Duration = Duration::from_secs(20);
/// Peers sharing one source address (the tracker's default per-address
/// connection cap is 256).
pub const PEERS_PER_ADDRESS: usize = 40;
/// Threads connecting the peers at once.
pub const CONNECTERS: usize = 256;

/// The source address of peer `k`: 127.1.x.y, [`PEERS_PER_ADDRESS`] each.
fn source_ip(k: usize) -> Ipv4Addr {
    let a = k / PEERS_PER_ADDRESS;
    Ipv4Addr::new(127, 1, (a / 200) as u8, (a % 200 + 1) as u8)
}

struct Conn {
    /// The one socket: read through the buffer, written through `get_ref`.
    r: BufReader<TcpStream>,
    buf: Vec<u8>,
}

impl Conn {
    fn connect(addr: SocketAddr, from: Ipv4Addr) -> R<Conn> {
        use socket2::{Domain, Socket, Type};
        let e = |x: std::io::Error| format!("tracker connection from {from}: {x}");
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(e)?;
        s.bind(&SocketAddr::V4(SocketAddrV4::new(from, 0)).into())
            .map_err(e)?;
        s.connect_timeout(&addr.into(), T).map_err(e)?;
        let w: TcpStream = s.into();
        w.set_nodelay(true).map_err(e)?;
        w.set_read_timeout(Some(T)).map_err(e)?;
        w.set_write_timeout(Some(T)).map_err(e)?;
        let mut c = Conn {
            r: BufReader::with_capacity(4096, w),
            buf: Vec::new(),
        };
        match c.request(&Message::Hello {
            version: wire::PROTOCOL_VERSION,
        })? {
            Message::Hello { .. } => Ok(c),
            other => Err(format!("tracker answered Hello with {}", other.kind())),
        }
    }

    fn send(&mut self, m: &Message) -> R<()> {
        self.buf.clear();
        m.encode(&mut self.buf).map_err(|e| e.to_string())?;
        self.r
            .get_ref()
            .write_all(&self.buf)
            .map_err(|e| format!("send: {e}"))
    }

    fn recv(&mut self) -> R<Message> {
        match wire::read_message(&mut self.r) {
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err("tracker closed the connection".into()),
            Err(e) => Err(format!("recv: {e}")),
        }
    }

    fn request(&mut self, m: &Message) -> R<Message> {
        self.send(m)?;
        self.recv()
    }
}

/// One measurement at one number of peers.
#[derive(Debug, Clone, Default)]
pub struct Rep {
    pub rss_per_peer_kib: f64,
    pub threads: u64,
    /// Slowest connect + Hello + Register of the storm, ms.
    pub slowest_join_ms: f64,
    /// Joins that took a second or more (a SYN was resent).
    pub slow_joins: usize,
    pub idle_p50_ms: f64,
    pub idle_p99_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Locate of a pool file (about 30 holders) under load.
    pub pool_p50_ms: f64,
    pub pool_p99_ms: f64,
    /// Tracker CPU while every peer registers a chunk a second, percent
    /// of one core.
    pub paced_cpu_pct: f64,
    /// Locate of the popular file while the tracker is saturated.
    pub sat_p50_ms: f64,
    pub sat_p99_ms: f64,
    /// Chunk registers answered per second when saturated.
    pub registers_per_s: f64,
    /// Tracker CPU when saturated, in percent of one core.
    pub cpu_pct: f64,
}

/// The peer counts measured.
fn sizes(ctx: &Ctx) -> Vec<usize> {
    if ctx.quick {
        vec![50]
    } else {
        vec![1000, 4000, 10_000]
    }
}

pub fn run(ctx: &mut Ctx, rows: &mut Vec<Row>) -> R<()> {
    let window = if ctx.quick {
        Duration::from_millis(300)
    } else {
        Duration::from_secs(5)
    };
    let files = Files::new();
    for peers in sizes(ctx) {
        check_fd_limit(peers)?;
        let extra = vec![
            "--max-connections".to_string(),
            (peers + 100).to_string(),
            "--idle-timeout".into(),
            "120".into(),
        ];
        let mut reps = Vec::new();
        for r in 0..ctx.reps {
            super::util::check_stop()?;
            let rep = once(ctx, &extra, peers, window, &files)?;
            eprintln!("  {peers} peers rep {}: {}", r + 1, describe(&rep));
            reps.push(rep);
        }
        let med = median_rep(&reps);
        push_rows(rows, peers, &med);
        ctx.plot.tracker.push((peers, med));
    }
    Ok(())
}

/// The median of each figure over the repetitions.
fn median_rep(reps: &[Rep]) -> Rep {
    let m = |f: fn(&Rep) -> f64| median(&reps.iter().map(f).collect::<Vec<_>>());
    Rep {
        rss_per_peer_kib: m(|r| r.rss_per_peer_kib),
        threads: m(|r| r.threads as f64) as u64,
        slowest_join_ms: m(|r| r.slowest_join_ms),
        slow_joins: m(|r| r.slow_joins as f64) as usize,
        idle_p50_ms: m(|r| r.idle_p50_ms),
        idle_p99_ms: m(|r| r.idle_p99_ms),
        p50_ms: m(|r| r.p50_ms),
        p99_ms: m(|r| r.p99_ms),
        pool_p50_ms: m(|r| r.pool_p50_ms),
        pool_p99_ms: m(|r| r.pool_p99_ms),
        paced_cpu_pct: m(|r| r.paced_cpu_pct),
        sat_p50_ms: m(|r| r.sat_p50_ms),
        sat_p99_ms: m(|r| r.sat_p99_ms),
        registers_per_s: m(|r| r.registers_per_s),
        cpu_pct: m(|r| r.cpu_pct),
    }
}

/// One line with every figure (the progress log).
fn describe(r: &Rep) -> String {
    format!(
        "{:.1} KiB RSS/peer, {} threads, slowest join {:.0} ms ({} >= 1 s); \
         a chunk a second per peer: Locate popular p50 {:.3} p99 {:.3} ms, pool p50 {:.3} p99 {:.3} ms, \
         tracker {:.0}% CPU (idle popular p50 {:.3} p99 {:.3}); saturated: {:.0} chunk registers/s \
         at {:.0}% CPU, Locate popular p50 {:.3} p99 {:.3} ms",
        r.rss_per_peer_kib,
        r.threads,
        r.slowest_join_ms,
        r.slow_joins,
        r.p50_ms,
        r.p99_ms,
        r.pool_p50_ms,
        r.pool_p99_ms,
        r.paced_cpu_pct,
        r.idle_p50_ms,
        r.idle_p99_ms,
        r.registers_per_s,
        r.cpu_pct,
        r.sat_p50_ms,
        r.sat_p99_ms
    )
}

fn push_rows(rows: &mut Vec<Row>, peers: usize, m: &Rep) {
    let p99 = Row::new(
        SCENARIO,
        format!("{peers} peers, a chunk register/s each: Locate p50 / p99"),
        format!("{:.2} / {:.2} ms", m.p50_ms, m.p99_ms),
    )
    .baseline(format!(
        "idle: {:.2} / {:.2} ms",
        m.idle_p50_ms, m.idle_p99_ms
    ));
    rows.push(p99.target("p99 < 5 ms", m.p99_ms < 5.0));
    rows.push(Row::new(
        SCENARIO,
        format!("{peers} peers, same load: Locate of a 30-holder file p50 / p99"),
        format!("{:.2} / {:.2} ms", m.pool_p50_ms, m.pool_p99_ms),
    ));
    rows.push(Row::new(
        SCENARIO,
        format!("{peers} peers, same load: tracker CPU"),
        format!("{:.0}% of a core", m.paced_cpu_pct),
    ));
    rows.push(
        Row::new(
            SCENARIO,
            format!("{peers} peers, saturated: chunk registers/s"),
            format!("{:.0} (tracker {:.0}% CPU)", m.registers_per_s, m.cpu_pct),
        )
        .target(">= 50,000", m.registers_per_s >= 50_000.0),
    );
    rows.push(Row::new(
        SCENARIO,
        format!("{peers} peers, saturated: Locate p50 / p99"),
        format!("{:.2} / {:.2} ms", m.sat_p50_ms, m.sat_p99_ms),
    ));
    rows.push(
        Row::new(
            SCENARIO,
            format!("{peers} peers: tracker RSS per idle peer"),
            format!("{:.1} KiB ({} threads)", m.rss_per_peer_kib, m.threads),
        )
        .target("< 64 KiB", m.rss_per_peer_kib < 64.0),
    );
    rows.push(
        Row::new(
            SCENARIO,
            format!("{peers} peers joining from {CONNECTERS} threads: slowest"),
            format!("{:.0} ms ({} took >= 1 s)", m.slowest_join_ms, m.slow_joins),
        )
        .target("none >= 1 s", m.slow_joins == 0),
    );
}

/// This process needs a descriptor per peer; the tracker inherits the limit.
fn check_fd_limit(peers: usize) -> R<()> {
    let Ok(s) = std::fs::read_to_string("/proc/self/limits") else {
        return Ok(());
    };
    let soft = s
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<usize>().ok());
    match soft {
        Some(n) if n < peers + 100 => Err(format!(
            "{peers} peers need {} file descriptors, `ulimit -n` is {n}: raise it (ulimit -n {}) and run again",
            peers + 100,
            peers + 1000
        )),
        _ => Ok(()),
    }
}

/// The files the peers register.
struct Files {
    hashes: Vec<wire::Digest>,
}

impl Files {
    fn new() -> Files {
        Files {
            hashes: (0..CHUNKS)
                .map(|i| p2pfs::chunks::sha1(&i.to_be_bytes()))
                .collect(),
        }
    }

    fn pool_name(j: usize) -> String {
        format!("pool-{j}.bin")
    }

    /// Peer `k`'s Register among `peers`.
    fn register(&self, k: usize, peers: usize) -> Message {
        let mut have = p2pfs::chunks::Bitmap::new(CHUNKS);
        for i in (k as u32 % 2..CHUNKS).step_by(2) {
            have.set(i);
        }
        let mut files = vec![FileEntry {
            name: NAME.into(),
            length: u64::from(CHUNKS) * MIB,
            chunk_size: MIB as u32,
            hashes: self.hashes.clone(),
            have: Have::Some(have.as_bytes().to_vec()),
        }];
        let pool = (peers / 10).max(3);
        for i in 0..3 {
            let j = (3 * k + i) % pool;
            files.push(FileEntry {
                name: Self::pool_name(j),
                length: u64::from(POOL_CHUNKS) * MIB,
                chunk_size: MIB as u32,
                hashes: (0..POOL_CHUNKS)
                    .map(|c| p2pfs::chunks::sha1(format!("{j}/{c}").as_bytes()))
                    .collect(),
                have: Have::All,
            });
        }
        Message::Register {
            endpoint: SocketAddr::from(([127, 0, 0, 1], 20_000 + (k % PEERS_PER_ADDRESS) as u16)),
            files,
        }
    }
}

/// Connects and registers peer `k`.
fn join(addr: SocketAddr, k: usize, peers: usize, files: &Files) -> R<Conn> {
    let mut c = Conn::connect(addr, source_ip(k))?;
    match c.request(&files.register(k, peers))? {
        Message::RegisterReply { results }
            if results
                .iter()
                .all(|r| matches!(r, wire::FileOutcome::Accepted)) =>
        {
            Ok(c)
        }
        other => Err(format!("peer {k}: Register answered with {other:?}")),
    }
}

/// Connects every peer from [`CONNECTERS`] threads at once. Returns the
/// connections, the slowest join in ms and how many took 1 s or more.
fn storm(addr: SocketAddr, peers: usize, files: &Files) -> R<(Vec<Conn>, f64, usize)> {
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<Option<Conn>>> = Mutex::new((0..peers).map(|_| None).collect());
    let slow = AtomicUsize::new(0);
    let slowest_us = AtomicU64::new(0);
    std::thread::scope(|s| -> R<()> {
        let mut hs = Vec::new();
        for t in 0..CONNECTERS.min(peers) {
            let (next, out, slow, slowest_us) = (&next, &out, &slow, &slowest_us);
            let h = std::thread::Builder::new()
                .name(format!("join-{t}"))
                .stack_size(128 * 1024)
                .spawn_scoped(s, move || -> R<()> {
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        if k >= peers {
                            return Ok(());
                        }
                        let t0 = Instant::now();
                        let c = join(addr, k, peers, files)?;
                        let us = t0.elapsed().as_micros() as u64;
                        slowest_us.fetch_max(us, Ordering::Relaxed);
                        if us >= 1_000_000 {
                            slow.fetch_add(1, Ordering::Relaxed);
                        }
                        p2pfs::sync::lock(out)[k] = Some(c);
                    }
                })
                .map_err(|e| format!("spawn join thread: {e}"))?;
            hs.push(h);
        }
        for h in hs {
            h.join().map_err(|_| "join thread panicked".to_string())??;
        }
        Ok(())
    })?;
    let conns = out
        .into_inner()
        .map_err(|_| "join results poisoned".to_string())?
        .into_iter()
        .collect::<Option<Vec<Conn>>>()
        .ok_or("a peer did not join")?;
    Ok((
        conns,
        slowest_us.load(Ordering::Relaxed) as f64 / 1e3,
        slow.load(Ordering::Relaxed),
    ))
}

/// Threads of process `pid` (/proc/PID/status).
fn threads_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

fn locate_ms(q: &mut Conn, name: &str) -> R<f64> {
    let t = Instant::now();
    match q.request(&Message::Locate {
        name: name.into(),
        with_hashes: false,
    })? {
        Message::Locations(l) if !l.sources.is_empty() => Ok(t.elapsed().as_secs_f64() * 1e3),
        other => Err(format!("Locate answered with {}", other.kind())),
    }
}

fn once(ctx: &Ctx, extra: &[String], peers: usize, window: Duration, files: &Files) -> R<Rep> {
    let tracker = TrackerProc::start(ctx, extra)?;
    std::thread::sleep(Duration::from_millis(200));
    let rss0 = tracker.proc.rss().ok_or("tracker RSS")?.0;
    let (mut conns, slowest_join_ms, slow_joins) = storm(tracker.addr, peers, files)?;
    std::thread::sleep(Duration::from_millis(500));
    let rss1 = tracker.proc.rss().ok_or("tracker RSS")?.0;
    let mut rep = Rep {
        rss_per_peer_kib: rss1.saturating_sub(rss0) as f64 / peers as f64,
        threads: threads_of(tracker.proc.pid),
        slowest_join_ms,
        slow_joins,
        ..Rep::default()
    };
    let mut q = Conn::connect(tracker.addr, Ipv4Addr::new(127, 0, 0, 1))?;
    let mut idle = Vec::new();
    for _ in 0..if ctx.quick { 100 } else { 2000 } {
        idle.push(locate_ms(&mut q, NAME)?);
    }
    idle.sort_by(f64::total_cmp);
    rep.idle_p50_ms = quantile(&idle, 0.5);
    rep.idle_p99_ms = quantile(&idle, 0.99);

    // Paced: every peer registers one chunk a second (a download at one
    // chunk a second), the Locate latencies against the target.
    let paced = phase(&tracker, &mut conns, &mut q, window, Some(1.0))?;
    rep.p50_ms = quantile(&paced.popular, 0.5);
    rep.p99_ms = quantile(&paced.popular, 0.99);
    rep.pool_p50_ms = quantile(&paced.pool, 0.5);
    rep.pool_p99_ms = quantile(&paced.pool, 0.99);
    rep.paced_cpu_pct = paced.cpu_pct;
    // Saturated: as many as the tracker takes.
    let sat = phase(&tracker, &mut conns, &mut q, window, None)?;
    rep.sat_p50_ms = quantile(&sat.popular, 0.5);
    rep.sat_p99_ms = quantile(&sat.popular, 0.99);
    rep.registers_per_s = sat.registers_per_s;
    rep.cpu_pct = sat.cpu_pct;
    drop(conns);
    drop(tracker);
    Ok(rep)
}

/// What one load phase measured.
struct Phase {
    /// Sorted Locate latencies (ms) of the popular file and of a pool file.
    popular: Vec<f64>,
    pool: Vec<f64>,
    registers_per_s: f64,
    /// Tracker CPU, percent of one core.
    cpu_pct: f64,
}

/// Runs 4 load threads over `conns` (each connection registering `pace`
/// chunks a second, or as fast as answered when `None`) and measures Locate
/// latency from `q` and the tracker's throughput and CPU over `window`
/// after a warm-up.
fn phase(
    tracker: &TrackerProc,
    conns: &mut [Conn],
    q: &mut Conn,
    window: Duration,
    pace: Option<f64>,
) -> R<Phase> {
    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    let per = conns.len().div_ceil(4);
    let pool = Files::pool_name(0);
    std::thread::scope(|s| -> R<Phase> {
        let mut hs = Vec::new();
        for (g, group) in conns.chunks_mut(per).enumerate() {
            let (stop, done) = (&stop, &done);
            let h = std::thread::Builder::new()
                .name(format!("load-{g}"))
                .stack_size(256 * 1024)
                .spawn_scoped(s, move || load(group, stop, done, pace))
                .map_err(|e| format!("spawn load thread: {e}"))?;
            hs.push(h);
        }
        let result = (|| -> R<Phase> {
            let warm = Instant::now() + window.min(Duration::from_millis(500));
            while Instant::now() < warm {
                locate_ms(q, NAME)?;
            }
            let n0 = done.load(Ordering::Relaxed);
            let cpu0 = read_stat(tracker.proc.pid).map_or(0.0, |s| s.cpu_s);
            let t0 = Instant::now();
            let (mut popular, mut pool_lat) = (Vec::new(), Vec::new());
            let mut pairs = 0u32;
            while t0.elapsed() < window {
                if pace.is_some() {
                    // Paced too, so the CPU figure is the peers' load and
                    // not this client's.
                    let due = t0 + LOCATE_EVERY * pairs;
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    pairs += 1;
                }
                popular.push(locate_ms(q, NAME)?);
                pool_lat.push(locate_ms(q, &pool)?);
            }
            let secs = t0.elapsed().as_secs_f64();
            let n1 = done.load(Ordering::Relaxed);
            let cpu1 = read_stat(tracker.proc.pid).map_or(0.0, |s| s.cpu_s);
            popular.sort_by(f64::total_cmp);
            pool_lat.sort_by(f64::total_cmp);
            Ok(Phase {
                popular,
                pool: pool_lat,
                registers_per_s: (n1 - n0) as f64 / secs,
                cpu_pct: (cpu1 - cpu0) / secs * 100.0,
            })
        })();
        stop.store(true, Ordering::Relaxed);
        for h in hs {
            h.join().map_err(|_| "load thread panicked".to_string())??;
        }
        result
    })
}

/// While paced, one Locate of each file this often (100 of each a second).
const LOCATE_EVERY: Duration = Duration::from_millis(10);

/// Connections a load thread sends to before reading their answers.
const SLICE: usize = 16;

/// One load thread: one ChunkRegister on each of a slice of its
/// connections, then every Ok, slice after slice, until `stop`. With
/// `pace`, each connection sends that many a second (the slices are spread
/// evenly over time); without, as fast as the tracker answers.
fn load(group: &mut [Conn], stop: &AtomicBool, done: &AtomicU64, pace: Option<f64>) -> R<()> {
    let per_s = pace.map(|p| p * group.len() as f64);
    let t0 = Instant::now();
    let mut sent = 0u64;
    let mut round = 0u32;
    while !stop.load(Ordering::Relaxed) {
        for (n, slice) in group.chunks_mut(SLICE).enumerate() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            if let Some(per_s) = per_s {
                let due = t0 + Duration::from_secs_f64(sent as f64 / per_s);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
            }
            for (k, c) in slice.iter_mut().enumerate() {
                let index = (round.wrapping_mul(7) + (n * SLICE + k) as u32 * 13) % CHUNKS;
                c.send(&Message::ChunkRegister {
                    name: NAME.into(),
                    index,
                })?;
            }
            for c in slice.iter_mut() {
                match c.recv()? {
                    Message::Ok => {}
                    other => return Err(format!("ChunkRegister answered with {other:?}")),
                }
            }
            sent += slice.len() as u64;
            done.fetch_add(slice.len() as u64, Ordering::Relaxed);
        }
        round = round.wrapping_add(1);
    }
    Ok(())
}
