//! Reliability and security: faults (killed sources, a killed and restarted
//! tracker, disk trouble, stalled peers), hostile input against a running
//! tracker and a running peer (floods of bad connections, connection caps,
//! greeting timeouts), hostile names, and claims a server must not trust.
//! docs/reliability.md is the table of what each test tries and what holds.
//!
//! Everything runs on loopback. Some tests need a second source address:
//! [`connect_from`] binds 127.0.0.2 (any 127/8 address is local on Linux)
//! before connecting, so per-address caps can be told apart. Tests that need
//! root (tmpfs mounts) print a notice and pass when they cannot run.

mod util;

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use p2pfs::chunks;
use p2pfs::peer::download::DownloadOptions;
use p2pfs::peer::ratelimit::RateLimiter;
use p2pfs::peer::server::{ChunkServer, ServerConfig};
use p2pfs::peer::share::ShareIndex;
use p2pfs::tracker::TrackerConfig;
use p2pfs::wire::{self, ErrorCode, FileEntry, FileOutcome, Message};
use util::{
    CHUNK, Client, Proc, Scratch, addr_in, connect_from, downloader, entry, from, opts, peer_bin,
    peer_get, seed, start_share, tracker, tracker_with, wait_until, with_timeout, write,
};

const OTHER_HOST: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

// ---- Helpers ----------------------------------------------------------------

fn code(m: &Message) -> Option<ErrorCode> {
    match m {
        Message::Error { code, .. } => Some(*code),
        _ => None,
    }
}

fn tracker_bin(args: &[&str]) -> Proc {
    Proc::spawn(
        "tracker",
        Command::new(env!("CARGO_BIN_EXE_tracker"))
            .env("RUST_LOG", "warn")
            .args(args),
    )
}

/// Hello over `s`; the reply.
fn try_greet(s: &mut TcpStream) -> Result<Message, String> {
    wire::write_message(
        s,
        &Message::Hello {
            version: wire::PROTOCOL_VERSION,
        },
    )
    .map_err(|e| e.to_string())?;
    match wire::read_message(s) {
        Ok(Some(m)) => Ok(m),
        Ok(None) => Err("closed instead of answering Hello".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn greet(s: &mut TcpStream) -> Message {
    try_greet(s).expect("a reply to Hello")
}

/// The one line of `peer`'s stderr that states the error (warnings may
/// come before it).
fn error_line(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .find(|l| l.starts_with("peer: error:"))
        .unwrap_or_default()
        .to_string()
}

/// A line of /proc/<pid>/status as a number ("VmRSS" in KiB, "Threads").
fn proc_status(pid: u32, key: &str) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(&format!("{key}:")))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn is_root() -> bool {
    proc_status(std::process::id(), "Uid") == Some(0)
}

/// A tmpfs mounted for one test, unmounted on drop (declare it after the
/// Scratch holding its mount point, so it is dropped first).
struct Mount(PathBuf);

impl Mount {
    /// None (after a notice) when not root or the mount fails.
    fn tmpfs(at: &Path, options: &str, test: &str) -> Option<Mount> {
        if !is_root() {
            println!("NOTICE: {test}: skipped the tmpfs part (needs root)");
            return None;
        }
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "p2pfs-test"])
            .arg(at)
            .status();
        match st {
            Ok(s) if s.success() => Some(Mount(at.to_path_buf())),
            other => {
                println!("NOTICE: {test}: skipped, cannot mount a tmpfs ({other:?})");
                None
            }
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Every path under `root` with its size and modification time.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (u64, Option<std::time::SystemTime>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = fs::symlink_metadata(&p) else {
                continue;
            };
            if m.is_dir() {
                stack.push(p.clone());
            }
            out.insert(p, (m.len(), m.modified().ok()));
        }
    }
    out
}

// ---- Faults -------------------------------------------------------------------

#[test]
fn a_source_killed_mid_download_one_of_three() {
    with_timeout(90, || {
        let s = Scratch::new("kill-one-of-three");
        let data = util::pattern(3 << 20, 31);
        let t = tracker();
        let mut shares = Vec::new();
        for i in 0..3 {
            let d = s.sub(&format!("s{i}"));
            write(&d, "f", &data);
            shares.push(start_share(t.local_addr(), &d, "1M"));
        }
        let d = Arc::new(downloader(t.local_addr()));
        let dir = s.sub("d");
        let h = {
            let d = Arc::clone(&d);
            thread::spawn(move || d.download("f", &dir, &opts(), &mut |_| {}))
        };
        // A fifth of the file in: every source has served by now.
        wait_until(30, "a fifth of the chunks", || {
            d.share().get("f").is_some_and(|f| f.have_count() >= 10)
        });
        let (victim, victim_addr) = &shares[0];
        victim.signal("KILL");
        let sum = h.join().unwrap().expect("download");
        assert_eq!(fs::read(s.path().join("d/f")).unwrap(), data);
        assert_eq!(sum.bytes_downloaded, data.len() as u64);
        let v = sum
            .sources
            .iter()
            .find(|x| x.addr == *victim_addr)
            .expect("victim in summary");
        assert!(v.bytes > 0, "the victim served before dying: {v:?}");
        assert!(v.dropped.is_some(), "the victim was dropped: {v:?}");
        for (_, a) in &shares[1..] {
            assert!(from(&sum, *a) > 0, "{a} served: {:?}", sum.sources);
        }
    });
}

#[test]
fn tracker_killed_and_restarted_mid_swarm() {
    with_timeout(90, || {
        let s = Scratch::new("tracker-restart");
        let data = util::pattern(2 << 20, 32);
        write(&s.sub("a"), "f", &data);
        write(&s.sub("b"), "f", &data);
        let mut tr = tracker_bin(&["--listen", "127.0.0.1:0"]);
        let taddr = addr_in(&tr.wait_line("listening on"));
        let (mut sa, a_addr) = start_share(taddr, &s.path().join("a"), "512K");
        let (mut sb, b_addr) = start_share(taddr, &s.path().join("b"), "512K");
        let d = Arc::new(downloader(taddr));
        let dir = s.sub("d");
        let h = {
            let d = Arc::clone(&d);
            thread::spawn(move || d.download("f", &dir, &opts(), &mut |_| {}))
        };
        wait_until(30, "the download to start", || {
            d.share().get("f").is_some_and(|f| f.have_count() >= 4)
        });

        assert!(!h.is_finished(), "the download is still in progress");
        tr.signal("KILL");
        tr.wait_exit(10);
        let down_at = Instant::now();
        drop(tr);
        thread::sleep(Duration::from_secs(1));
        // Restart on the same port. std's listener sets SO_REUSEADDR, so
        // the old connections' TIME_WAIT does not block the bind; only an
        // unlucky outgoing connection that picked this port as its source
        // could, so wait until the port is bindable.
        wait_until(10, "the tracker port to be free", || {
            TcpListener::bind(taddr).is_ok()
        });
        let finished_while_down = h.is_finished();
        let mut tr = tracker_bin(&["--listen", &taddr.to_string()]);
        assert_eq!(addr_in(&tr.wait_line("listening on")), taddr);
        let up_at = Instant::now();

        let sum = h
            .join()
            .unwrap()
            .expect("the download in progress finishes");
        assert_eq!(fs::read(s.path().join("d/f")).unwrap(), data);
        assert_eq!(sum.bytes_downloaded, data.len() as u64);

        // The sharers reconnect and register again on their own.
        sa.wait_line("reconnected");
        sb.wait_line("reconnected");
        let listed = || {
            let out = peer_bin()
                .args(["list", "--tracker", &taddr.to_string()])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l.starts_with("f "))
        };
        wait_until(20, "`peer list` shows f again", listed);
        let relisted = up_at.elapsed();
        // Every peer, the downloader included, with its full bitmap.
        let want = [a_addr, b_addr, d.local_addr()];
        wait_until(20, "`peer where` shows all three holders", || {
            let out = peer_bin()
                .args(["where", "f", "--tracker", &taddr.to_string()])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            want.iter().all(|a| {
                text.lines()
                    .any(|l| l.contains(&a.to_string()) && l.contains("32/32"))
            })
        });
        println!(
            "tracker down {:.2} s (download finished while it was down: {finished_while_down}); \
             f listed again {:.2} s after the restart; all three holders {:.2} s after it",
            (up_at - down_at).as_secs_f64(),
            relisted.as_secs_f64(),
            up_at.elapsed().as_secs_f64()
        );
        // Documented (docs/reliability.md): a dead control connection is
        // noticed within 1 s, and the next attempt comes at most one backoff
        // step (5 s) after the tracker is back.
        assert!(relisted < Duration::from_secs(10), "{relisted:?}");
        tr.signal("TERM");
        assert_eq!(tr.wait_exit(10), Some(0));
    });
}

#[test]
fn a_read_only_download_folder_fails_cleanly() {
    with_timeout(60, || {
        let s = Scratch::new("read-only");
        let data = util::pattern(300_000, 33);
        write(&s.sub("a"), "f", &data);
        let t = tracker();
        let _a = seed(t.local_addr(), &s.path().join("a"), None);
        let ro = s.sub("ro");
        let _mount;
        if is_root() {
            // Root ignores permission bits: only a read-only file system
            // really refuses it.
            match Mount::tmpfs(&ro, "ro,size=64k", "read-only folder") {
                Some(m) => _mount = m,
                None => return,
            }
        } else {
            let mut p = fs::metadata(&ro).unwrap().permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut p, 0o555);
            fs::set_permissions(&ro, p).unwrap();
        }
        let out = peer_get(t.local_addr(), "f", &ro);
        let err = error_line(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(
            err.contains("Read-only file system") || err.contains("Permission denied"),
            "{err}"
        );
        println!("read-only folder: {err}");
        assert_eq!(fs::read_dir(&ro).unwrap().count(), 0, "nothing written");
    });
}

#[test]
fn a_full_file_system_fails_cleanly_without_a_final_file() {
    with_timeout(60, || {
        let s = Scratch::new("full");
        let data = util::pattern(2 << 20, 34);
        write(&s.sub("a"), "f", &data);
        let t = tracker();
        let _a = seed(t.local_addr(), &s.path().join("a"), None);
        let small = s.sub("small");
        let Some(_mount) = Mount::tmpfs(&small, "size=512k", "full file system") else {
            return;
        };
        let started = Instant::now();
        let out = peer_get(t.local_addr(), "f", &small);
        let err = error_line(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains("No space left on device"), "{err}");
        assert!(!small.join("f").exists(), "no final file");
        println!(
            "2 MiB into a 512 KiB tmpfs: failed after {:.2} s with: {}",
            started.elapsed().as_secs_f64(),
            err.trim()
        );
    });
}

/// A fake source that accepts connections and then never answers: not even
/// the Hello (`greet` false), or only the Hello.
struct StalledPeer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    handle: Option<thread::JoinHandle<()>>,
}

impl StalledPeer {
    fn start(greet: bool) -> StalledPeer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let (st, acc) = (Arc::clone(&stop), Arc::clone(&accepted));
        let handle = thread::spawn(move || {
            let mut held = Vec::new();
            while !st.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        acc.fetch_add(1, Ordering::SeqCst);
                        c.set_nonblocking(false).unwrap();
                        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                        if greet && matches!(wire::read_message(&mut c), Ok(Some(_))) {
                            let _ = wire::write_message(
                                &mut c,
                                &Message::Hello {
                                    version: wire::PROTOCOL_VERSION,
                                },
                            );
                        }
                        // Never read or answer anything else.
                        held.push(c);
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        StalledPeer {
            addr,
            stop,
            accepted,
            handle: Some(handle),
        }
    }
}

impl Drop for StalledPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[test]
fn stalled_sources_are_timed_out_and_the_download_finishes_from_others() {
    with_timeout(90, || {
        let s = Scratch::new("stalled");
        let data = util::pattern(2 << 20, 35);
        write(&s.sub("a"), "f", &data);
        let t = tracker();
        let mute = StalledPeer::start(false);
        let deaf = StalledPeer::start(true);
        // Both claim the whole file (correct hashes) on live control
        // connections, so the tracker hands them out as sources.
        let mut claims = Vec::new();
        for p in [&mute, &deaf] {
            let mut c = Client::connect(t.local_addr());
            let reply = c.request(&Message::Register {
                endpoint: p.addr,
                files: vec![entry("f", &data)],
            });
            assert!(
                matches!(&reply, Message::RegisterReply { results } if results == &[FileOutcome::Accepted]),
                "{reply:?}"
            );
            claims.push(c);
        }
        let good = seed(t.local_addr(), &s.path().join("a"), Some(1 << 20));
        let d = downloader(t.local_addr());
        let o = DownloadOptions {
            io_timeout: Duration::from_secs(1),
            ..opts()
        };
        let started = Instant::now();
        let sum = d
            .download("f", &s.sub("d"), &o, &mut |_| {})
            .expect("download");
        let took = started.elapsed();
        assert_eq!(fs::read(s.path().join("d/f")).unwrap(), data);
        assert_eq!(from(&sum, good.local_addr()), data.len() as u64);
        for p in [&mute, &deaf] {
            assert!(
                p.accepted.load(Ordering::SeqCst) > 0,
                "{} was tried",
                p.addr
            );
            let x = sum
                .sources
                .iter()
                .find(|x| x.addr == p.addr)
                .unwrap_or_else(|| panic!("{} in the summary: {:?}", p.addr, sum.sources));
            assert_eq!(x.bytes, 0);
            assert!(x.dropped.is_some(), "{x:?}");
        }
        println!(
            "2 MiB past two stalled sources in {:.2} s",
            took.as_secs_f64()
        );
        assert!(took < Duration::from_secs(30), "{took:?}");
    });
}

// ---- Connection caps and greeting timeouts ----------------------------------------

/// Reads the one reply a refused connection gets, then expects the close.
fn expect_busy(mut s: TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Like a real client: Hello first, then read.
    let _ = wire::write_message(
        &mut s,
        &Message::Hello {
            version: wire::PROTOCOL_VERSION,
        },
    );
    let m = wire::read_message(&mut s).unwrap().expect("a reply");
    assert_eq!(code(&m), Some(ErrorCode::Busy), "{m:?}");
    let mut b = [0u8; 1];
    assert!(
        matches!(s.read(&mut b), Ok(0) | Err(_)),
        "closed after Busy"
    );
}

#[test]
fn tracker_caps_connections_per_address_and_in_total() {
    with_timeout(30, || {
        let t = tracker_with(TrackerConfig {
            max_connections: 5,
            max_per_ip: 3,
            ..TrackerConfig::default()
        });
        let a = t.local_addr();
        let mut mine: Vec<Client> = (0..3).map(|_| Client::connect(a)).collect();
        // A fourth from the same address: Busy, then closed.
        expect_busy(TcpStream::connect(a).unwrap());
        // Another address is still served...
        let mut other = connect_from(OTHER_HOST, a, None).unwrap();
        assert!(matches!(greet(&mut other), Message::Hello { .. }));
        let mut other2 = connect_from(OTHER_HOST, a, None).unwrap();
        assert!(matches!(greet(&mut other2), Message::Hello { .. }));
        // ...until the total cap (5) is reached.
        expect_busy(connect_from(Ipv4Addr::new(127, 0, 0, 3), a, None).unwrap());
        // A slot comes back when its connection ends.
        drop(mine.pop());
        wait_until(10, "the slot to be freed", || t.connection_count() == 4);
        let mut again = Client::connect(a);
        assert_eq!(
            again.request(&Message::ListFiles),
            Message::FileList {
                files: vec![],
                truncated: false
            }
        );
    });
}

#[test]
fn chunk_server_caps_connections_per_address_and_in_total() {
    with_timeout(30, || {
        let idx = Arc::new(ShareIndex::new());
        let srv = ChunkServer::start(
            "127.0.0.1:0".parse().unwrap(),
            idx,
            Arc::new(RateLimiter::unlimited()),
            ServerConfig {
                max_connections: 3,
                max_per_ip: 2,
                ..ServerConfig::default()
            },
        )
        .unwrap();
        let a = srv.local_addr();
        let mut mine: Vec<Client> = (0..2).map(|_| Client::connect(a)).collect();
        expect_busy(TcpStream::connect(a).unwrap());
        let mut other = connect_from(OTHER_HOST, a, None).unwrap();
        assert!(matches!(greet(&mut other), Message::Hello { .. }));
        expect_busy(connect_from(Ipv4Addr::new(127, 0, 0, 3), a, None).unwrap());
        drop(mine.pop());
        wait_until(10, "the slot to be freed", || srv.active_connections() == 2);
        let mut again = Client::connect(a);
        let m = again.request(&Message::ChunkRequest {
            name: "x".into(),
            index: 0,
        });
        assert_eq!(code(&m), Some(ErrorCode::UnknownFile));
    });
}

/// Opens connections that stay silent, or send half a Hello, and checks
/// each is closed within `bound` of opening; a greeted connection is not.
fn check_hello_timeout(addr: SocketAddr, bound: Duration) {
    let started = Instant::now();
    let mut silent = Client::raw(addr);
    let mut half = Client::raw(addr);
    half.stream.write_all(&[0, 0, 0, 7, 1, b'P']).unwrap();
    // A Hello that claims 100 bytes and trickles in one byte every 50 ms:
    // each read is quick, but the whole Hello is late. It must be closed
    // too (the Hello timeout is a deadline, not a per-read timeout).
    let mut trickle = Client::raw(addr);
    let mut w = trickle.stream.try_clone().unwrap();
    let trickler = std::thread::spawn(move || {
        let _ = w.write_all(&[0, 0, 0, 100, 1]);
        for _ in 0..100 {
            if w.write_all(b"P").is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let mut greeted = Client::connect(addr);
    assert!(silent.closed_by_server());
    assert!(half.closed_by_server());
    assert!(trickle.closed_by_server());
    let took = started.elapsed();
    assert!(took < bound, "closed after {took:?}");
    trickler.join().unwrap();
    // The greeted one is still open (its idle timeout is long).
    greeted
        .stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut b = [0u8; 1];
    let r = greeted.stream.read(&mut b);
    assert!(
        matches!(&r, Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut),
        "{r:?}"
    );
}

#[test]
fn connections_that_never_greet_are_closed_after_the_hello_timeout() {
    with_timeout(30, || {
        let t = tracker_with(TrackerConfig {
            hello_timeout: Duration::from_millis(300),
            ..TrackerConfig::default()
        });
        check_hello_timeout(t.local_addr(), Duration::from_secs(5));
        wait_until(10, "tracker connections reaped", || {
            t.connection_count() == 0
        });
        let srv = ChunkServer::start(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(ShareIndex::new()),
            Arc::new(RateLimiter::unlimited()),
            ServerConfig {
                hello_timeout: Duration::from_millis(300),
                ..ServerConfig::default()
            },
        )
        .unwrap();
        check_hello_timeout(srv.local_addr(), Duration::from_secs(5));
    });
}

// ---- Floods of hostile connections --------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Hostile {
    /// Random bytes (as the first frame, or after a Hello).
    Random,
    /// A 4 GiB length prefix (with or without a Hello before it).
    Huge,
    /// Hello and half of the next frame, then nothing.
    Half,
    /// Connect and say nothing.
    Idle,
}

fn hostile_bytes(kind: Hostile, n: u64) -> Vec<u8> {
    let mut b = Vec::new();
    let with_hello = n.is_multiple_of(2);
    if with_hello || matches!(kind, Hostile::Half) {
        Message::Hello {
            version: wire::PROTOCOL_VERSION,
        }
        .encode(&mut b)
        .unwrap();
    }
    match kind {
        Hostile::Random => b.extend(util::pattern(1 + (n as usize * 37) % 500, n)),
        Hostile::Huge => b.extend([0xff, 0xff, 0xff, 0xff, 0x20, 0, 0]),
        Hostile::Half => b.extend([0, 0, 0, 100, 0x14, 0, 40, b'a', b'b']),
        Hostile::Idle => b.clear(),
    }
    b
}

/// What a hostile connection had received when it was closed: the
/// messages that arrived (e.g. "Hello, Error Malformed") and whether the
/// server had closed it.
fn classify(mut s: TcpStream) -> String {
    let _ = s.set_nonblocking(true);
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let eof = loop {
        match s.read(&mut tmp) {
            Ok(0) => break true,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
            Err(_) => break true,
        }
    };
    let mut got = Vec::new();
    let mut rest = &buf[..];
    while let Ok(Some(m)) = wire::read_message(&mut rest) {
        got.push(match m {
            Message::Error { code, .. } => format!("Error {code:?}"),
            m => m.kind().to_string(),
        });
    }
    if got.is_empty() {
        got.push("nothing".into());
    }
    if eof {
        got.push("closed".into());
    }
    got.join(", ")
}

struct FloodReport {
    connections: u64,
    connect_failures: u64,
    outcomes: BTreeMap<String, u64>,
}

/// `workers` threads each open `per_worker` hostile connections to
/// `target` from 127.0.0.1, one every `every`, keeping their last `ring`
/// open (so hundreds are open at once), then close everything.
///
/// Paced because the flood runs on the same two cores as the servers: an
/// unpaced loop of connects overruns the kernel's accept queue (std listens
/// with a backlog of 128), and the SYN retransmits that follow (1 s) would
/// measure the test's own CPU starvation rather than the servers.
fn flood(
    target: SocketAddr,
    workers: u64,
    per_worker: u64,
    ring: usize,
    every: Duration,
) -> FloodReport {
    let outcomes = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let failures = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            let outcomes = Arc::clone(&outcomes);
            let failures = Arc::clone(&failures);
            thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let mut open = std::collections::VecDeque::new();
                    let start = Instant::now();
                    let note = |s: TcpStream| {
                        *outcomes.lock().unwrap().entry(classify(s)).or_insert(0) += 1;
                    };
                    for i in 0..per_worker {
                        let due = start + every * i as u32;
                        thread::sleep(due.saturating_duration_since(Instant::now()));
                        let n = w * per_worker + i;
                        let kind = [Hostile::Random, Hostile::Huge, Hostile::Half, Hostile::Idle]
                            [(n % 4) as usize];
                        match TcpStream::connect_timeout(&target, Duration::from_secs(5)) {
                            Ok(mut s) => {
                                let b = hostile_bytes(kind, n);
                                let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
                                if !b.is_empty() {
                                    let _ = s.write_all(&b);
                                }
                                open.push_back(s);
                            }
                            Err(_) => {
                                failures.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        if open.len() > ring
                            && let Some(s) = open.pop_front()
                        {
                            note(s);
                        }
                    }
                    for s in open {
                        note(s);
                    }
                })
                .unwrap()
        })
        .collect();
    for h in handles {
        h.join().expect("flood worker");
    }
    let outcomes = outcomes.lock().unwrap().clone();
    FloodReport {
        connections: outcomes.values().sum(),
        connect_failures: failures.load(Ordering::Relaxed),
        outcomes,
    }
}

/// Samples VmRSS (KiB) and thread count of `pid` until stopped; returns the
/// peaks.
struct Sampler {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<(u64, u64)>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let st = Arc::clone(&stop);
        let handle = thread::spawn(move || {
            let (mut rss, mut threads) = (0, 0);
            while !st.load(Ordering::SeqCst) {
                rss = rss.max(proc_status(pid, "VmRSS").unwrap_or(0));
                threads = threads.max(proc_status(pid, "Threads").unwrap_or(0));
                thread::sleep(Duration::from_millis(20));
            }
            (rss, threads)
        });
        Sampler { stop, handle }
    }

    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().unwrap()
    }
}

/// A well-behaved client on another address: `ask` over a fresh
/// connection every 20 ms until stopped; returns (requests, worst latency).
fn prober(
    stop: Arc<AtomicBool>,
    ask: impl Fn() -> Result<(), String> + Send + 'static,
) -> thread::JoinHandle<(u64, Duration, Vec<String>)> {
    thread::spawn(move || {
        let (mut n, mut worst, mut errors) = (0u64, Duration::ZERO, Vec::new());
        while !stop.load(Ordering::SeqCst) {
            let t = Instant::now();
            if let Err(e) = ask() {
                errors.push(e);
            }
            worst = worst.max(t.elapsed());
            n += 1;
            thread::sleep(Duration::from_millis(20));
        }
        (n, worst, errors)
    })
}

#[test]
fn floods_of_hostile_connections_leave_tracker_and_peer_serving() {
    with_timeout(120, || {
        let s = Scratch::new("flood");
        let data = util::pattern(1 << 20, 36);
        write(&s.sub("a"), "f", &data);
        // The tracker's per-address cap is lowered from 256 to 64 so that the
        // flood reaches it with fewer sockets; the peer runs its defaults
        // (256 in total, 64 per address).
        let mut tr = tracker_bin(&["--listen", "127.0.0.1:0", "--max-per-ip", "64"]);
        let taddr = addr_in(&tr.wait_line("listening on"));
        let (mut peer, paddr) = start_share(taddr, &s.path().join("a"), "0");
        let (tpid, ppid) = (tr.child.id(), peer.child.id());
        thread::sleep(Duration::from_millis(200));
        let base = |pid| {
            (
                proc_status(pid, "VmRSS").unwrap(),
                proc_status(pid, "Threads").unwrap(),
            )
        };
        let (t_rss0, t_thr0) = base(tpid);
        let (p_rss0, p_thr0) = base(ppid);
        let (ts, ps) = (Sampler::start(tpid), Sampler::start(ppid));

        let stop = Arc::new(AtomicBool::new(false));
        let hashes: Vec<_> = data.chunks(CHUNK as usize).map(chunks::sha1).collect();
        let t_probe = prober(Arc::clone(&stop), move || {
            let mut c = connect_from(OTHER_HOST, taddr, None).map_err(|e| e.to_string())?;
            try_greet(&mut c)?;
            wire::write_message(
                &mut c,
                &Message::Locate {
                    name: "f".into(),
                    with_hashes: false,
                },
            )
            .map_err(|e| e.to_string())?;
            match wire::read_message(&mut c) {
                Ok(Some(Message::Locations(l))) if l.sources.len() == 1 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });
        let n = AtomicU64::new(0);
        let p_probe = prober(Arc::clone(&stop), move || {
            let mut c = connect_from(OTHER_HOST, paddr, None).map_err(|e| e.to_string())?;
            try_greet(&mut c)?;
            let i = (n.fetch_add(1, Ordering::Relaxed) % 16) as u32;
            wire::write_message(
                &mut c,
                &Message::ChunkRequest {
                    name: "f".into(),
                    index: i,
                },
            )
            .map_err(|e| e.to_string())?;
            match wire::read_message(&mut c) {
                Ok(Some(Message::ChunkData { index, data }))
                    if index == i && chunks::sha1(&data) == hashes[i as usize] =>
                {
                    Ok(())
                }
                other => Err(format!("{:?}", other.map(|m| m.map(|m| m.kind())))),
            }
        });

        let started = Instant::now();
        let (ft, fp) = thread::scope(|sc| {
            let every = Duration::from_millis(12);
            let a = sc.spawn(move || flood(taddr, 8, 250, 40, every));
            let b = sc.spawn(move || flood(paddr, 8, 250, 40, every));
            (a.join().unwrap(), b.join().unwrap())
        });
        let flood_time = started.elapsed();
        // Keep probing while the servers clean up after the flood.
        thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::SeqCst);
        let (tn, tworst, terr) = t_probe.join().unwrap();
        let (pn, pworst, perr) = p_probe.join().unwrap();
        // Every hostile socket is closed now: the servers' threads go back
        // to where they were.
        wait_until(15, "tracker threads back to normal", || {
            proc_status(tpid, "Threads").unwrap_or(u64::MAX) <= t_thr0 + 1
        });
        wait_until(15, "peer threads back to normal", || {
            proc_status(ppid, "Threads").unwrap_or(u64::MAX) <= p_thr0 + 1
        });
        let (t_rss, t_thr) = ts.finish();
        let (p_rss, p_thr) = ps.finish();
        println!(
            "tracker: {} hostile connections ({} failed to connect) in {:.2} s: {:?}",
            ft.connections,
            ft.connect_failures,
            flood_time.as_secs_f64(),
            ft.outcomes
        );
        println!(
            "peer:    {} hostile connections ({} failed to connect): {:?}",
            fp.connections, fp.connect_failures, fp.outcomes
        );
        println!(
            "tracker: RSS {t_rss0} -> peak {t_rss} KiB, threads {t_thr0} -> peak {t_thr}; \
             {tn} probes, worst {:.0} ms",
            tworst.as_secs_f64() * 1e3
        );
        println!(
            "peer:    RSS {p_rss0} -> peak {p_rss} KiB, threads {p_thr0} -> peak {p_thr}; \
             {pn} probes, worst {:.0} ms",
            pworst.as_secs_f64() * 1e3
        );

        // Both stay up.
        assert!(tr.child.try_wait().unwrap().is_none(), "tracker alive");
        assert!(peer.child.try_wait().unwrap().is_none(), "peer alive");
        // Thousands of connections were made and refused or contained.
        assert!(ft.connections + fp.connections >= 3900);
        let busy = |r: &FloodReport| {
            r.outcomes
                .iter()
                .filter(|(k, _)| k.contains("Busy"))
                .map(|(_, v)| v)
                .sum::<u64>()
        };
        assert!(busy(&ft) > 0, "tracker per-address cap reached");
        assert!(busy(&fp) > 0, "peer per-address cap reached");
        // The well-behaved client on another address was always served,
        // promptly (generous bound: a loaded 2-core machine).
        assert!(terr.is_empty(), "tracker probe errors: {terr:?}");
        assert!(perr.is_empty(), "peer probe errors: {perr:?}");
        assert!(tn >= 5 && pn >= 5, "{tn} / {pn} probes");
        assert!(tworst < Duration::from_secs(2), "tracker worst {tworst:?}");
        assert!(pworst < Duration::from_secs(2), "peer worst {pworst:?}");
        // Memory and threads bounded by the caps, not by the flood.
        // (A few threads above the cap: a connection's slot is freed just
        // before its thread has fully exited.)
        assert!(t_rss < t_rss0 + 64 * 1024, "tracker RSS {t_rss} KiB");
        assert!(p_rss < p_rss0 + 64 * 1024, "peer RSS {p_rss} KiB");
        assert!(t_thr <= t_thr0 + 64 + 8, "tracker threads {t_thr}");
        assert!(p_thr <= p_thr0 + 64 + 8, "peer threads {p_thr}");
        peer.signal("TERM");
        assert_eq!(peer.wait_exit(10), Some(0));
        tr.signal("TERM");
        assert_eq!(tr.wait_exit(10), Some(0));
    });
}

// ---- Names ------------------------------------------------------------------------------

/// Names that must never reach the file system. (`peer get` cannot be given
/// a NUL in an argument; the in-process checks cover it.)
fn hostile_names(secret: &Path) -> Vec<String> {
    vec![
        "../x".into(),
        "../secret.txt".into(),
        "/etc/passwd".into(),
        secret.display().to_string(),
        "a/../../b".into(),
        "a/../../secret.txt".into(),
        "share/../../secret.txt".into(),
        "a\\b".into(),
        "..\\secret.txt".into(),
        "./f".into(),
        "f/".into(),
        "a//b".into(),
        String::new(),
        "x".repeat(256),
        format!("{}/f", "d".repeat(255)).repeat(5),
        "a\nb".into(),
    ]
}

#[test]
fn hostile_names_are_refused_and_nothing_outside_the_folder_is_touched() {
    with_timeout(90, || {
        let s = Scratch::new("names");
        let secret = write(s.path(), "secret.txt", b"top secret");
        let share_dir = s.sub("share");
        let data = util::pattern(100_000, 37);
        write(&share_dir, "f", &data);
        // A symlink inside the share pointing outside it is not shared.
        std::os::unix::fs::symlink(&secret, share_dir.join("link")).unwrap();
        let t = tracker();
        let node = seed(t.local_addr(), &share_dir, None);
        assert!(
            node.share().get("link").is_none(),
            "the outward symlink is skipped"
        );
        let mut names = hostile_names(&secret);
        names.extend(["a\0b".to_string(), "link".into(), "secret.txt".into()]);

        // 1. Asked of the chunk server: never data, always a refusal.
        let mut c = Client::connect(node.local_addr());
        for n in &names {
            let req = Message::ChunkRequest {
                name: n.clone(),
                index: 0,
            };
            if req.encode(&mut Vec::new()).is_err() {
                // Over the wire limit: the client cannot even send it.
                continue;
            }
            let m = c.request(&req);
            assert!(
                matches!(
                    code(&m),
                    Some(ErrorCode::UnknownFile | ErrorCode::InvalidName)
                ),
                "{n:?}: {m:?}"
            );
        }
        // 2. Registered with the tracker: refused per file, with a reason.
        let mut reg = Client::connect(t.local_addr());
        let files: Vec<FileEntry> = names
            .iter()
            .filter(|n| n.len() <= wire::MAX_NAME_LEN && *n != "link" && *n != "secret.txt")
            .map(|n| entry(n, &data))
            .collect();
        let count = files.len();
        match reg.request(&Message::Register {
            endpoint: "127.0.0.1:4444".parse().unwrap(),
            files,
        }) {
            Message::RegisterReply { results } => {
                assert_eq!(results.len(), count);
                for r in results {
                    match r {
                        FileOutcome::Refused {
                            code: ErrorCode::InvalidName,
                            reason,
                        } => assert!(reason.contains("name"), "{reason}"),
                        other => panic!("{other:?}"),
                    }
                }
            }
            other => panic!("{other:?}"),
        }
        // An over-long name (more than 1024 bytes) cannot be encoded; sent
        // raw, it is a malformed frame: refused, and the connection closed.
        let mut raw = Client::connect(t.local_addr());
        let long = vec![b'a'; 2000];
        let mut frame = ((1 + 2 + long.len() + 1) as u32).to_be_bytes().to_vec();
        frame.push(wire::ty::LOCATE);
        frame.extend((long.len() as u16).to_be_bytes());
        frame.extend(&long);
        frame.push(0);
        raw.stream.write_all(&frame).unwrap();
        let m = raw.recv_result().unwrap().expect("a reply");
        assert_eq!(code(&m), Some(ErrorCode::Malformed), "{m:?}");
        assert!(raw.closed_by_server());
        // Located: unknown (the tracker never holds such a name).
        let mut q = Client::connect(t.local_addr());
        for n in names.iter().filter(|n| n.len() <= wire::MAX_NAME_LEN) {
            let m = q.request(&Message::Locate {
                name: n.clone(),
                with_hashes: false,
            });
            assert!(
                matches!(
                    code(&m),
                    Some(ErrorCode::UnknownFile | ErrorCode::InvalidName)
                ),
                "{n:?}: {m:?}"
            );
        }

        // 3. Downloaded in-process and through `peer get`: refused before
        // anything is created; the tree outside the share is unchanged.
        let before = snapshot(s.path());
        let dl = s.path().join("dl");
        for n in &names {
            if n == "link" || n == "secret.txt" {
                continue;
            }
            let e = node.download(n, &dl, &opts(), &mut |_| {}).expect_err(n);
            assert!(e.to_string().contains("invalid name"), "{n:?}: {e}");
            if n.contains('\0') {
                continue;
            }
            let out = peer_get(t.local_addr(), n, &dl);
            let err = error_line(&out.stderr);
            assert!(!out.status.success(), "{n:?}");
            // Issue 13: `NAME/` asks for a folder; one nobody has is
            // refused the same way, before anything is created.
            let folder = p2pfs::peer::download::batch::validate_wanted(n).is_ok();
            assert!(
                err.contains("invalid name") || folder && err.contains("no file under"),
                "{n:?}: {err}"
            );
        }
        // The symlink's name is not on the network.
        let out = peer_get(t.local_addr(), "link", &dl);
        assert!(!out.status.success());
        let after = snapshot(s.path());
        assert_eq!(before, after, "nothing created or changed");
        assert_eq!(fs::read(&secret).unwrap(), b"top secret");
        assert!(!dl.exists());
    });
}

// ---- Claims that must not be trusted ------------------------------------------------------

#[test]
fn tracker_refuses_or_corrects_untrusted_claims() {
    with_timeout(30, || {
        let t = tracker();
        let a = t.local_addr();
        let data = util::pattern(200_000, 38); // 4 chunks
        let mut honest = Client::connect(a);
        let r = honest.request(&Message::Register {
            endpoint: "127.0.0.1:5001".parse().unwrap(),
            files: vec![entry("f", &data)],
        });
        assert!(matches!(r, Message::RegisterReply { .. }));

        // Before Register: ChunkRegister refused, Leave harmless.
        let mut early = Client::connect(a);
        let m = early.request(&Message::ChunkRegister {
            name: "f".into(),
            index: 0,
        });
        assert_eq!(code(&m), Some(ErrorCode::NotRegistered));
        assert_eq!(early.request(&Message::Leave), Message::Ok);
        assert!(early.closed_by_server());

        // Another host (127.0.0.2) claims to be the honest peer's endpoint:
        // it is recorded at its own address, and the honest peer stays.
        let mut liar = connect_from(OTHER_HOST, a, None).unwrap();
        greet(&mut liar);
        wire::write_message(
            &mut liar,
            &Message::Register {
                endpoint: "127.0.0.1:5001".parse().unwrap(),
                files: vec![entry("f", &data)],
            },
        )
        .unwrap();
        assert!(matches!(
            wire::read_message(&mut liar).unwrap(),
            Some(Message::RegisterReply { .. })
        ));
        let mut q = Client::connect(a);
        let l = match q.request(&Message::Locate {
            name: "f".into(),
            with_hashes: false,
        }) {
            Message::Locations(l) => l,
            other => panic!("{other:?}"),
        };
        let mut addrs: Vec<SocketAddr> = l.sources.iter().map(|s| s.addr).collect();
        addrs.sort();
        assert_eq!(
            addrs,
            vec![
                "127.0.0.1:5001".parse::<SocketAddr>().unwrap(),
                "127.0.0.2:5001".parse().unwrap()
            ]
        );

        // Out of range and unknown chunks, from a registered peer.
        let mut p = Client::connect(a);
        let r = p.request(&Message::Register {
            endpoint: "0.0.0.0:5002".parse().unwrap(),
            files: vec![],
        });
        assert!(matches!(r, Message::RegisterReply { .. }));
        for (name, index, want) in [
            ("f", 4, ErrorCode::BadIndex),
            ("f", u32::MAX, ErrorCode::BadIndex),
            ("nope", 0, ErrorCode::UnknownFile),
            ("../f", 0, ErrorCode::UnknownFile),
        ] {
            let m = p.request(&Message::ChunkRegister {
                name: name.into(),
                index,
            });
            assert_eq!(code(&m), Some(want), "{name} {index}: {m:?}");
        }
        // Port 0 is refused; the connection lives on.
        let m = p.request(&Message::Register {
            endpoint: "127.0.0.1:0".parse().unwrap(),
            files: vec![],
        });
        assert_eq!(code(&m), Some(ErrorCode::Malformed));
        assert!(matches!(
            p.request(&Message::ListFiles),
            Message::FileList { .. }
        ));
        // A peer-protocol request to the tracker, and a reply sent as a
        // request: refused, connection lives on.
        for m in [
            Message::ChunkRequest {
                name: "f".into(),
                index: 0,
            },
            Message::Ok,
            Message::Hello { version: 1 },
        ] {
            assert_eq!(code(&p.request(&m)), Some(ErrorCode::Unexpected), "{m:?}");
        }
        drop(liar);
        drop(honest);
        wait_until(10, "the file forgotten", || t.peer_count() == 1);
    });
}

#[test]
fn chunk_server_refuses_out_of_range_and_unknown_requests_and_keeps_serving() {
    with_timeout(30, || {
        let s = Scratch::new("claims-peer");
        let data = util::pattern(200_000, 39); // 4 chunks, the last short
        write(&s.sub("a"), "f", &data);
        let t = tracker();
        let node = seed(t.local_addr(), &s.path().join("a"), None);
        let mut c = Client::connect(node.local_addr());
        for (name, index, want) in [
            ("f", 4, Some(ErrorCode::BadIndex)),
            ("f", u32::MAX, Some(ErrorCode::BadIndex)),
            ("g", 0, Some(ErrorCode::UnknownFile)),
            ("f", 3, None),
        ] {
            let m = c.request(&Message::ChunkRequest {
                name: name.into(),
                index,
            });
            assert_eq!(code(&m), want, "{name} {index}: {m:?}");
            if let Message::ChunkData { index, data: d } = m {
                assert_eq!(index, 3);
                assert_eq!(d, data[3 * CHUNK as usize..]);
            }
        }
        // Tracker-protocol requests sent to a peer: refused, not obeyed.
        for m in [
            Message::Register {
                endpoint: "127.0.0.1:1".parse().unwrap(),
                files: vec![],
            },
            Message::Leave,
            Message::ListFiles,
        ] {
            assert_eq!(code(&c.request(&m)), Some(ErrorCode::Unexpected), "{m:?}");
        }
        let m = c.request(&Message::ChunkRequest {
            name: "f".into(),
            index: 0,
        });
        assert!(matches!(m, Message::ChunkData { index: 0, .. }));
        // Stats: only the good chunks count as uploaded.
        let want = data.len() as u64 - 3 * u64::from(CHUNK) + u64::from(CHUNK);
        wait_until(5, "upload count", || node.uploaded_bytes() == want);
    });
}
