//! Scenario 6: the tracker with 1,000 peers connected at once.
//!
//! The peers are raw protocol clients in this process (like tests/util's
//! Client): each connects, says Hello and registers the same 1,000-chunk
//! file holding half of its chunks, from its own announced port. Measured:
//!
//! * tracker RSS per idle connected peer: VmRSS after all registered minus
//!   VmRSS before the first connection, over the number of peers;
//! * chunk-register throughput: 4 load threads each own a quarter of the
//!   connections and, in rounds, send one ChunkRegister on each of them and
//!   then read every Ok (each peer has one request outstanding, as a real
//!   peer's session does); counted over a fixed window after a warm-up;
//! * Locate (without hashes) latency, p50 and p99, from one more client
//!   querying back to back while that load runs; the baseline is the same
//!   query with the peers connected but idle.
//!
//! The load generator shares the 2 cores with the tracker, so the
//! throughput is what the tracker achieves while also being loaded.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use p2pfs::wire::{self, FileEntry, Have, Message};

use super::util::{MIB, R, median, quantile};
use super::{Ctx, Row, TrackerProc};

pub const SCENARIO: &str = "6 tracker";
const CHUNKS: u32 = 1000;
const NAME: &str = "load.bin";
const T: Duration = Duration::from_secs(20);

struct Conn {
    w: TcpStream,
    r: BufReader<TcpStream>,
    buf: Vec<u8>,
}

impl Conn {
    fn connect(addr: SocketAddr) -> R<Conn> {
        let e = |x: std::io::Error| format!("tracker connection: {x}");
        let w = TcpStream::connect_timeout(&addr, T).map_err(e)?;
        w.set_nodelay(true).map_err(e)?;
        w.set_read_timeout(Some(T)).map_err(e)?;
        w.set_write_timeout(Some(T)).map_err(e)?;
        let r = BufReader::with_capacity(16 * 1024, w.try_clone().map_err(e)?);
        let mut c = Conn {
            w,
            r,
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
        self.w
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

struct Rep {
    rss_per_peer_kib: f64,
    idle_p50_ms: f64,
    idle_p99_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
    registers_per_s: f64,
}

pub fn run(ctx: &mut Ctx, rows: &mut Vec<Row>) -> R<()> {
    let peers = if ctx.quick { 50 } else { 1000 };
    let window = if ctx.quick {
        Duration::from_millis(700)
    } else {
        Duration::from_secs(5)
    };
    let hashes: Vec<wire::Digest> = (0..CHUNKS)
        .map(|i| p2pfs::chunks::sha1(&i.to_be_bytes()))
        .collect();
    let mut extra = vec!["--max-connections".to_string(), "4096".to_string()];
    if let Some(f) = &ctx.per_ip_flag {
        extra.push(f.clone());
        extra.push("100000".into());
    }
    let mut reps = Vec::new();
    for r in 0..ctx.reps {
        let rep = once(ctx, &extra, peers, window, &hashes)?;
        eprintln!(
            "  rep {}: {peers} peers, {:.1} KiB RSS per idle peer; Locate p50 {:.3} ms p99 {:.3} ms under load (idle p50 {:.3} p99 {:.3}); {:.0} chunk registers/s",
            r + 1,
            rep.rss_per_peer_kib,
            rep.p50_ms,
            rep.p99_ms,
            rep.idle_p50_ms,
            rep.idle_p99_ms,
            rep.registers_per_s
        );
        reps.push(rep);
    }
    let m = |f: fn(&Rep) -> f64| median(&reps.iter().map(f).collect::<Vec<_>>());
    let p99 = m(|r| r.p99_ms);
    rows.push(
        Row::new(
            SCENARIO,
            format!("Locate p50 / p99, {peers} peers registering"),
            format!("{:.2} / {p99:.2} ms", m(|r| r.p50_ms)),
        )
        .baseline(format!(
            "idle: {:.2} / {:.2} ms",
            m(|r| r.idle_p50_ms),
            m(|r| r.idle_p99_ms)
        ))
        .target("p99 < 5 ms", p99 < 5.0),
    );
    let tput = m(|r| r.registers_per_s);
    rows.push(
        Row::new(
            SCENARIO,
            format!("chunk registers/s, {peers} peers"),
            format!("{tput:.0}"),
        )
        .target(">= 50,000", tput >= 50_000.0),
    );
    let rss = m(|r| r.rss_per_peer_kib);
    rows.push(
        Row::new(
            SCENARIO,
            "tracker RSS per idle connected peer",
            format!("{rss:.1} KiB"),
        )
        .target("< 64 KiB", rss < 64.0),
    );
    Ok(())
}

fn once(
    ctx: &Ctx,
    extra: &[String],
    peers: usize,
    window: Duration,
    hashes: &[wire::Digest],
) -> R<Rep> {
    let tracker = TrackerProc::start(ctx, extra)?;
    std::thread::sleep(Duration::from_millis(200));
    let rss0 = tracker.proc.rss().ok_or("tracker RSS")?.0;
    let mut conns = Vec::with_capacity(peers);
    for k in 0..peers {
        let mut c = Conn::connect(tracker.addr)?;
        let mut have = p2pfs::chunks::Bitmap::new(CHUNKS);
        for i in (k as u32 % 2..CHUNKS).step_by(2) {
            have.set(i);
        }
        let reply = c.request(&Message::Register {
            endpoint: SocketAddr::from(([127, 0, 0, 1], 20_000 + k as u16)),
            files: vec![FileEntry {
                name: NAME.into(),
                length: u64::from(CHUNKS) * MIB,
                chunk_size: MIB as u32,
                hashes: hashes.to_vec(),
                have: Have::Some(have.as_bytes().to_vec()),
            }],
        })?;
        match reply {
            Message::RegisterReply { results }
                if matches!(results.as_slice(), [wire::FileOutcome::Accepted]) => {}
            other => return Err(format!("peer {k}: Register answered with {other:?}")),
        }
        conns.push(c);
    }
    std::thread::sleep(Duration::from_millis(500));
    let rss1 = tracker.proc.rss().ok_or("tracker RSS")?.0;
    let rss_per_peer_kib = rss1.saturating_sub(rss0) as f64 / peers as f64;

    let mut q = Conn::connect(tracker.addr)?;
    let locate = Message::Locate {
        name: NAME.into(),
        with_hashes: false,
    };
    let lat = |q: &mut Conn| -> R<f64> {
        let t = Instant::now();
        match q.request(&locate)? {
            Message::Locations(l) if !l.sources.is_empty() => Ok(t.elapsed().as_secs_f64() * 1e3),
            other => Err(format!("Locate answered with {}", other.kind())),
        }
    };
    let mut idle = Vec::new();
    for _ in 0..if ctx.quick { 100 } else { 2000 } {
        idle.push(lat(&mut q)?);
    }
    idle.sort_by(f64::total_cmp);

    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    let per = peers.div_ceil(4);
    let (busy, registers_per_s) = std::thread::scope(|s| -> R<(Vec<f64>, f64)> {
        let mut hs = Vec::new();
        for (g, group) in conns.chunks_mut(per).enumerate() {
            let (stop, done) = (&stop, &done);
            let h = std::thread::Builder::new()
                .name(format!("load-{g}"))
                .stack_size(256 * 1024)
                .spawn_scoped(s, move || -> R<()> {
                    let mut round = 0u32;
                    while !stop.load(Ordering::Relaxed) {
                        for (k, c) in group.iter_mut().enumerate() {
                            let index = (round.wrapping_mul(7) + k as u32 * 13) % CHUNKS;
                            c.send(&Message::ChunkRegister {
                                name: NAME.into(),
                                index,
                            })?;
                        }
                        for c in group.iter_mut() {
                            match c.recv()? {
                                Message::Ok => {}
                                other => {
                                    return Err(format!("ChunkRegister answered with {other:?}"));
                                }
                            }
                        }
                        done.fetch_add(group.len() as u64, Ordering::Relaxed);
                        round += 1;
                    }
                    Ok(())
                })
                .map_err(|e| format!("spawn load thread: {e}"))?;
            hs.push(h);
        }
        // Warm up, then measure over the window.
        let result = (|| -> R<(Vec<f64>, f64)> {
            let warm = Instant::now() + Duration::from_millis(300);
            while Instant::now() < warm {
                lat(&mut q)?;
            }
            let n0 = done.load(Ordering::Relaxed);
            let t0 = Instant::now();
            let mut v = Vec::new();
            while t0.elapsed() < window {
                v.push(lat(&mut q)?);
            }
            let n1 = done.load(Ordering::Relaxed);
            Ok((v, (n1 - n0) as f64 / t0.elapsed().as_secs_f64()))
        })();
        stop.store(true, Ordering::Relaxed);
        for h in hs {
            h.join().map_err(|_| "load thread panicked".to_string())??;
        }
        result
    })?;
    let mut busy = busy;
    busy.sort_by(f64::total_cmp);
    drop(conns);
    drop(tracker);
    Ok(Rep {
        rss_per_peer_kib,
        idle_p50_ms: quantile(&idle, 0.5),
        idle_p99_ms: quantile(&idle, 0.99),
        p50_ms: quantile(&busy, 0.5),
        p99_ms: quantile(&busy, 0.99),
        registers_per_s,
    })
}
