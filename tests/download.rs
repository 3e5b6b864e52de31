//! Downloads that must finish, or fail clearly, against sources that
//! misbehave and a tracker that stalls: the downloader's retry rules
//! (docs/protocol.md §10) and the "Downloads" rows of docs/reliability.md.
//! Misbehaving sources are written by hand from the protocol
//! ([`FakeSource`]), so each one does exactly one wrong thing.

mod util;

use std::collections::HashMap;
use std::fs;
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use p2pfs::peer::download::DownloadOptions;
use p2pfs::wire::{self, ErrorCode, Message};
use util::{CHUNK, Client, Scratch, downloader, entry, opts, tracker, with_timeout};

/// How a [`FakeSource`] answers one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// The chunk, as registered.
    Good,
    /// The chunk with its first byte flipped.
    Corrupt,
    /// The right data, but of this other chunk (and its index).
    Index(u32),
    /// `Error{NotHeld}`.
    NotHeld,
    /// `Error{NotHeld}`, and the source closes its tracker connection
    /// first, so the tracker stops listing it.
    NotHeldThenLeave,
    /// The chunk, sent one byte every 500 ms (each byte well within any
    /// read timeout).
    Trickle,
    /// No answer at all (the request is read and left unanswered).
    Silent,
}

/// The rule: (chunk index, how many times it has been asked so far,
/// counting this request) -> the answer.
type Rule = dyn Fn(u32, u32) -> Answer + Send + Sync;

struct Shared {
    data: Vec<u8>,
    /// Other files it serves by name (one-chunk files of a set).
    files: HashMap<String, Vec<u8>>,
    /// Connections accepted.
    accepted: std::sync::atomic::AtomicUsize,
    rule: Box<Rule>,
    asked: Mutex<HashMap<u32, u32>>,
    control: Mutex<Option<Client>>,
    stop: AtomicBool,
}

/// A source written by hand from the protocol: registered with the tracker
/// as holding all of `data` (in [`CHUNK`]s), serving it over real sockets,
/// answering each request as its rule says.
struct FakeSource {
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl FakeSource {
    fn start(
        t: SocketAddr,
        name: &str,
        data: &[u8],
        rule: impl Fn(u32, u32) -> Answer + Send + Sync + 'static,
    ) -> FakeSource {
        FakeSource::start_entry(t, entry(name, data), data, rule)
    }

    /// A source of several files (each served by name), registered at once.
    fn start_files(
        t: SocketAddr,
        files: &[(String, Vec<u8>)],
        rule: impl Fn(u32, u32) -> Answer + Send + Sync + 'static,
    ) -> FakeSource {
        let entries = files.iter().map(|(n, d)| entry(n, d)).collect();
        let map = files.iter().cloned().collect();
        FakeSource::start_with(t, entries, &[], map, rule)
    }

    /// [`FakeSource::start`] registering `e` as it is (any geometry and
    /// hashes); `data` is what `Answer::Good` serves, in [`CHUNK`]s.
    fn start_entry(
        t: SocketAddr,
        e: p2pfs::wire::FileEntry,
        data: &[u8],
        rule: impl Fn(u32, u32) -> Answer + Send + Sync + 'static,
    ) -> FakeSource {
        FakeSource::start_with(t, vec![e], data, HashMap::new(), rule)
    }

    fn start_with(
        t: SocketAddr,
        entries: Vec<p2pfs::wire::FileEntry>,
        data: &[u8],
        files: HashMap<String, Vec<u8>>,
        rule: impl Fn(u32, u32) -> Answer + Send + Sync + 'static,
    ) -> FakeSource {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let mut ctl = Client::connect(t);
        let reply = ctl.request(&Message::Register {
            endpoint: listener.local_addr().unwrap(),
            files: entries,
        });
        assert!(matches!(reply, Message::RegisterReply { .. }), "{reply:?}");
        let shared = Arc::new(Shared {
            data: data.to_vec(),
            files,
            accepted: std::sync::atomic::AtomicUsize::new(0),
            rule: Box::new(rule),
            asked: Mutex::new(HashMap::new()),
            control: Mutex::new(Some(ctl)),
            stop: AtomicBool::new(false),
        });
        let sh = Arc::clone(&shared);
        let accept = thread::spawn(move || {
            let mut conns = Vec::new();
            while !sh.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        sh.accepted.fetch_add(1, Ordering::SeqCst);
                        let sh = Arc::clone(&sh);
                        conns.push(thread::spawn(move || serve(s, &sh)));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        FakeSource {
            shared,
            accept: Some(accept),
        }
    }

    /// How many times chunk `index` was requested.
    fn asked(&self, index: u32) -> u32 {
        let a = self.shared.asked.lock().unwrap();
        a.get(&index).copied().unwrap_or(0)
    }
}

impl Drop for FakeSource {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

/// One downloader connection: Hello, then requests until it closes (or
/// the test ends).
fn serve(s: TcpStream, sh: &Shared) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let hello = Message::Hello {
        version: wire::PROTOCOL_VERSION,
    };
    let mut greeted = false;
    while !sh.stop.load(Ordering::SeqCst) {
        let m = match wire::read_message(&mut r) {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(wire::WireError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(_) => return,
        };
        let reply = match m {
            Message::Hello { .. } if !greeted => {
                greeted = true;
                hello.clone()
            }
            Message::ChunkRequest { index, name } if (sh.rule)(index, 0) == Answer::Trickle => {
                let _ = answer(sh, &name, index);
                let mut bytes = Vec::new();
                let data = chunk_of(sh, &name, index);
                Message::ChunkData { index, data }
                    .encode(&mut bytes)
                    .unwrap();
                for b in bytes {
                    if sh.stop.load(Ordering::SeqCst) || w.write_all(&[b]).is_err() {
                        return;
                    }
                    thread::sleep(Duration::from_millis(500));
                }
                continue;
            }
            Message::ChunkRequest { index, .. } if (sh.rule)(index, 0) == Answer::Silent => {
                continue;
            }
            Message::ChunkRequest { index, name } => answer(sh, &name, index),
            _ => return,
        };
        if wire::write_message(&mut w, &reply).is_err() {
            return;
        }
    }
}

fn answer(sh: &Shared, name: &str, index: u32) -> Message {
    let nth = {
        let mut a = sh.asked.lock().unwrap();
        let n = a.entry(index).or_insert(0);
        *n += 1;
        *n
    };
    let chunk = |i: u32| chunk_of(sh, name, i);
    let not_held = Message::Error {
        code: ErrorCode::NotHeld,
        message: "not now".into(),
    };
    match (sh.rule)(index, nth) {
        Answer::Good => Message::ChunkData {
            index,
            data: chunk(index),
        },
        Answer::Corrupt => {
            let mut data = chunk(index);
            data[0] ^= 1;
            Message::ChunkData { index, data }
        }
        Answer::Index(other) => Message::ChunkData {
            index: other,
            data: chunk(other),
        },
        Answer::NotHeld | Answer::Trickle | Answer::Silent => not_held,
        Answer::NotHeldThenLeave => {
            drop(sh.control.lock().unwrap().take());
            not_held
        }
    }
}

/// Chunk `i` of the source's data (of file `name` when it serves several).
fn chunk_of(sh: &Shared, name: &str, i: u32) -> Vec<u8> {
    let data = sh.files.get(name).unwrap_or(&sh.data);
    let start = (i as usize * CHUNK as usize).min(data.len());
    let end = (start + CHUNK as usize).min(data.len());
    data[start..end].to_vec()
}

/// Ten chunks of test data.
fn ten_chunks(seed: u64) -> Vec<u8> {
    util::pattern(10 * CHUNK as usize, seed)
}

#[test]
fn a_chunk_corrupted_once_by_the_only_source_is_asked_again() {
    with_timeout(60, || {
        let s = Scratch::new("corrupt-once");
        let data = ten_chunks(31);
        let t = tracker();
        let src = FakeSource::start(t.local_addr(), "f", &data, |i, nth| {
            if i == 1 && nth == 1 {
                Answer::Corrupt
            } else {
                Answer::Good
            }
        });
        let d = downloader(t.local_addr());
        let sum = d
            .download("f", &s.sub("d"), &opts(), &mut |_| {})
            .expect("download");
        assert_eq!(fs::read(s.path().join("d/f")).unwrap(), data);
        assert_eq!(src.asked(1), 2, "chunk 1 asked again of the same source");
        assert_eq!(sum.bytes_downloaded, data.len() as u64);
        assert_eq!(sum.sources.len(), 1, "{:?}", sum.sources);
        assert_eq!(sum.sources[0].hash_failures, 1);
        assert_eq!(sum.sources[0].dropped, None);
    });
}

#[test]
fn a_reply_for_another_chunk_is_a_strike_not_a_ban() {
    with_timeout(60, || {
        let s = Scratch::new("wrong-index");
        let data = ten_chunks(32);
        let t = tracker();
        let src = FakeSource::start(t.local_addr(), "f", &data, |i, nth| {
            if i == 2 && nth == 1 {
                Answer::Index(3)
            } else {
                Answer::Good
            }
        });
        let d = downloader(t.local_addr());
        let sum = d
            .download("f", &s.sub("d"), &opts(), &mut |_| {})
            .expect("download");
        assert_eq!(fs::read(s.path().join("d/f")).unwrap(), data);
        assert_eq!(src.asked(2), 2);
        // The stray copy of chunk 3 was not kept: every byte counted once.
        assert_eq!(sum.bytes_downloaded, data.len() as u64);
        assert_eq!(sum.sources[0].hash_failures, 1);
        assert_eq!(sum.sources[0].dropped, None);
    });
}

#[test]
fn a_source_that_keeps_corrupting_a_chunk_is_dropped_at_its_strike_limit() {
    with_timeout(60, || {
        let s = Scratch::new("corrupt-always");
        let data = ten_chunks(33);
        let t = tracker();
        let src = FakeSource::start(t.local_addr(), "f", &data, |i, _| {
            if i == 1 {
                Answer::Corrupt
            } else {
                Answer::Good
            }
        });
        let d = downloader(t.local_addr());
        let o = DownloadOptions {
            give_up_after: Duration::from_secs(2),
            ..opts()
        };
        let e = d
            .download("f", &s.sub("d"), &o, &mut |_| {})
            .expect_err("no honest source of chunk 1");
        assert!(e.to_string().contains("chunk(s) 1 "), "{e}");
        assert_eq!(src.asked(1), o.max_hash_failures);
        assert!(!s.path().join("d/f").exists());
    });
}

#[test]
fn not_held_from_a_source_that_advertised_the_chunk_is_asked_again_later() {
    with_timeout(60, || {
        let s = Scratch::new("not-held");
        let data = ten_chunks(34);
        let t = tracker();
        // The first asks of chunks 2 and 5 are turned away (as super-seeding
        // does), and at the first the source leaves the tracker, so no
        // refresh of the locations can bring the chunks back.
        let src = FakeSource::start(t.local_addr(), "f", &data, |i, nth| match (i, nth) {
            (2, 1) => Answer::NotHeldThenLeave,
            (5, 1) => Answer::NotHeld,
            _ => Answer::Good,
        });
        let d = downloader(t.local_addr());
        let started = std::time::Instant::now();
        let sum = d
            .download("f", &s.sub("d"), &opts(), &mut |_| {})
            .expect("download");
        assert_eq!(fs::read(s.path().join("d/f")).unwrap(), data);
        assert_eq!((src.asked(2), src.asked(5)), (2, 2));
        assert_eq!(sum.sources[0].hash_failures, 0);
        // Put off 3 s (super-seeding's window), asked again at once then.
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{:?}",
            started.elapsed()
        );
    });
}

/// Review 2, finding 1: a source that claims every chunk of a file of many
/// chunks and answers `NotHeld` to every request always had a request in
/// flight, so the download never gave up (and put-off chunks cost work per
/// step growing with their number).
#[test]
fn a_source_answering_not_held_to_everything_is_dropped_and_the_download_gives_up() {
    with_timeout(90, || {
        let s = Scratch::new("not-held-all");
        let t = tracker();
        let count = 1u32 << 16;
        let e = p2pfs::wire::FileEntry {
            name: "nh.bin".into(),
            length: u64::from(count) * 1024,
            chunk_size: 1024,
            hashes: vec![[9u8; 20]; count as usize],
            have: p2pfs::wire::Have::All,
        };
        let src = FakeSource::start_entry(t.local_addr(), e, &[], |_, _| Answer::NotHeld);
        let d = downloader(t.local_addr());
        let o = DownloadOptions {
            give_up_after: Duration::from_secs(5),
            ..opts()
        };
        let started = std::time::Instant::now();
        let err = d
            .download("nh.bin", &s.sub("d"), &o, &mut |_| {})
            .expect_err("nothing can be downloaded");
        let took = started.elapsed();
        let asked: u32 = src.shared.asked.lock().unwrap().values().sum();
        eprintln!("gave up after {took:?}, {asked} requests answered NotHeld: {err}");
        assert!(err.to_string().contains("no reachable source"), "{err}");
        assert!(took < Duration::from_secs(20), "{took:?}");
    });
}

/// Review 2, finding 2: the only source sends every reply one byte at a
/// time, each byte well within the read timeout. Each reply is cut off at
/// the client's deadline for a `ChunkData` (I/O timeout + 64 KiB at
/// 8 KiB/s = 11 s here), and the download gives up on progress, not on
/// what is in flight.
#[test]
fn a_source_that_trickles_its_replies_cannot_hold_the_download() {
    with_timeout(90, || {
        let s = Scratch::new("trickle");
        let t = tracker();
        let data = ten_chunks(40);
        let _src = FakeSource::start(t.local_addr(), "f", &data, |_, _| Answer::Trickle);
        let d = downloader(t.local_addr());
        let o = DownloadOptions {
            give_up_after: Duration::from_secs(5),
            ..opts()
        };
        let started = std::time::Instant::now();
        let err = d
            .download("f", &s.sub("d"), &o, &mut |_| {})
            .expect_err("nothing arrives whole");
        let took = started.elapsed();
        eprintln!("gave up after {took:?}: {err}");
        assert!(err.to_string().contains("no reachable source"), "{err}");
        assert!(took < Duration::from_secs(25), "{took:?}");
    });
}

/// Review 2, finding 3: a subfolder of the download folder that is a link
/// to somewhere else is refused; nothing is written through it.
#[test]
fn a_nested_name_is_never_written_through_a_linked_subfolder() {
    with_timeout(60, || {
        let s = Scratch::new("nested-link");
        let t = tracker();
        let data = ten_chunks(41);
        let _src = FakeSource::start(t.local_addr(), "docs/x.bin", &data, |_, _| Answer::Good);
        let outside = s.sub("outside");
        let g = s.sub("g");
        std::os::unix::fs::symlink(&outside, g.join("docs")).unwrap();
        let d = downloader(t.local_addr());
        let err = d
            .download("docs/x.bin", &g, &opts(), &mut |_| {})
            .expect_err("refused");
        assert!(err.to_string().contains("is a link"), "{err}");
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
        // A file where a folder should be is refused too.
        let h = s.sub("h");
        fs::write(h.join("docs"), b"x").unwrap();
        let err = d
            .download("docs/x.bin", &h, &opts(), &mut |_| {})
            .expect_err("refused");
        assert!(err.to_string().contains("is not a folder"), "{err}");
        // A download folder that does not exist yet is created.
        let fresh = s.path().join("fresh/dir");
        d.download("docs/x.bin", &fresh, &opts(), &mut |_| {})
            .expect("download");
        assert_eq!(fs::read(fresh.join("docs/x.bin")).unwrap(), data);
    });
}

/// Review 2, finding 5: cancelled while the tracker accepts the connection
/// and never answers the first query: stops at once.
#[test]
fn a_download_cancelled_while_the_tracker_does_not_answer_stops_at_once() {
    with_timeout(60, || {
        let s = Scratch::new("cancel-silent-tracker");
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let t = silent.local_addr().unwrap();
        // Not `downloader`: that waits until the node is registered.
        let mut cfg = p2pfs::peer::node::NodeConfig::new(t);
        cfg.listen = "127.0.0.1:0".parse().unwrap();
        let d = p2pfs::peer::node::Node::start(cfg, Vec::new(), None).expect("node");
        let cancel = Arc::new(AtomicBool::new(false));
        let c = Arc::clone(&cancel);
        let dir = s.sub("d");
        let h = thread::spawn(move || {
            let r = d.download_cancellable("f", &dir, &opts(), Some(&c), &mut |_| {});
            (r, d)
        });
        thread::sleep(Duration::from_millis(300));
        cancel.store(true, Ordering::SeqCst);
        let at = std::time::Instant::now();
        let (r, d) = h.join().unwrap();
        let e = r.expect_err("interrupted");
        let took = at.elapsed();
        eprintln!("stopped {took:?} after the cancel: {e}");
        assert!(e.to_string().contains("interrupted"), "{e}");
        assert!(took < Duration::from_secs(3), "{took:?}");
        let at = std::time::Instant::now();
        d.leave();
        eprintln!("left {:?} later", at.elapsed());
        drop(silent);
    });
}

#[test]
fn a_downloaded_empty_file_is_registered_and_served() {
    with_timeout(60, || {
        let s = Scratch::new("empty");
        util::write(&s.sub("a"), "empty.txt", b"");
        let t = tracker();
        let a = util::seed(t.local_addr(), &s.path().join("a"), None);
        let d = downloader(t.local_addr());
        let sum = d
            .download("empty.txt", &s.sub("d"), &opts(), &mut |_| {})
            .expect("download");
        assert_eq!(sum.length, 0);
        assert_eq!(fs::read(s.path().join("d/empty.txt")).unwrap(), b"");
        // The downloader is listed as a holder: it seeds the file once the
        // original sharer has left.
        util::wait_until(10, "the downloader listed", || {
            p2pfs::peer::client::locate(t.local_addr(), "empty.txt", false).is_ok_and(|l| {
                l.sources
                    .iter()
                    .any(|x| x.addr.port() == d.local_addr().port())
            })
        });
        a.leave();
        let l = p2pfs::peer::client::locate(t.local_addr(), "empty.txt", false)
            .expect("still on the network");
        assert_eq!(l.sources.len(), 1, "{l:?}");
        let again = downloader(t.local_addr());
        again
            .download("empty.txt", &s.sub("e"), &opts(), &mut |_| {})
            .expect("downloaded from the downloader");
        assert_eq!(fs::read(s.path().join("e/empty.txt")).unwrap(), b"");
    });
}

/// Runs the tracker binary on a free loopback port; its address.
fn tracker_process() -> (util::Proc, SocketAddr) {
    let mut p = util::Proc::spawn(
        "tracker",
        std::process::Command::new(env!("CARGO_BIN_EXE_tracker"))
            .env("RUST_LOG", "warn")
            .args(["--listen", "127.0.0.1:0"]),
    );
    let addr = util::addr_in(&p.wait_line("listening on"));
    (p, addr)
}

/// `peer share` of `dir` in 1 KiB chunks (many small chunks: many events
/// per second for the coordinator), unlimited; returns once registered.
fn share_in_1k_chunks(t: SocketAddr, dir: &std::path::Path) -> util::Proc {
    let mut p = util::Proc::spawn(
        "peer share",
        util::peer_bin()
            .args(["share", "--tracker", &t.to_string()])
            .args(["--listen", "127.0.0.1:0", "--chunk-size", "1K", "--dir"])
            .arg(dir),
    );
    p.wait_line("serving chunks on");
    p.wait_line("registered");
    p
}

#[test]
fn a_tracker_that_stops_answering_does_not_slow_the_download() {
    with_timeout(120, || {
        let s = Scratch::new("tracker-stop");
        let data = util::pattern(16 << 20, 35);
        util::write(&s.sub("a"), "f", &data);
        let (tracker, t) = tracker_process();
        let _seed = share_in_1k_chunks(t, &s.path().join("a"));
        let timed = |dir: &str, stop_tracker: bool| {
            let d = downloader(t);
            let started = std::time::Instant::now();
            let stopper = stop_tracker.then(|| {
                let pid = tracker.child.id();
                thread::spawn(move || {
                    thread::sleep(Duration::from_millis(300));
                    let ok = std::process::Command::new("kill")
                        .args(["-STOP", &pid.to_string()])
                        .status()
                        .is_ok_and(|s| s.success());
                    assert!(ok, "kill -STOP the tracker");
                })
            });
            let sum = d
                .download("f", &s.sub(dir), &opts(), &mut |_| {})
                .expect("download");
            let took = started.elapsed();
            if let Some(h) = stopper {
                h.join().unwrap();
            }
            assert_eq!(fs::read(s.path().join(dir).join("f")).unwrap(), data);
            assert_eq!(sum.chunks_total, 16 << 10);
            // Leaving talks to the tracker: not timed, and not waited for.
            thread::spawn(move || drop(d));
            took
        };
        let normal = timed("d1", false);
        let stalled = timed("d2", true);
        eprintln!("tracker answering: {normal:?}; stopped 0.3 s in: {stalled:?}");
        tracker.signal("CONT");
        assert!(
            stalled < normal * 2 + Duration::from_secs(1),
            "with the tracker stopped {stalled:?}, normally {normal:?}"
        );
    });
}

/// A connection to `to` from the loopback address `ip` (so the tracker sees
/// another host than 127.0.0.1).
fn connect_from(ip: [u8; 4], to: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from((ip, 0)).into()).unwrap();
    s.connect_timeout(&to.into(), Duration::from_secs(5))
        .unwrap();
    s.into()
}

/// Registers `endpoint` as a holder of all of `data` over a control
/// connection from `ip`; the connection is returned (keep it open).
fn register_from(ip: [u8; 4], t: SocketAddr, endpoint: SocketAddr, data: &[u8]) -> TcpStream {
    let mut s = connect_from(ip, t);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    for m in [
        Message::Hello {
            version: wire::PROTOCOL_VERSION,
        },
        Message::Register {
            endpoint,
            files: vec![entry("f", data)],
        },
    ] {
        wire::write_message(&mut s, &m).unwrap();
        let reply = wire::read_message(&mut r).unwrap().expect("reply");
        assert!(
            matches!(reply, Message::Hello { .. } | Message::RegisterReply { .. }),
            "{reply:?}"
        );
    }
    s
}

/// Sources on 127.0.0.2 that are no use: half accept and never greet, half
/// greet and never answer a request. (Refusing ones cost a downloader
/// nothing: a refused connect frees its slot at once.)
struct UselessSources {
    endpoints: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
    greeter: Option<JoinHandle<()>>,
    _silent: Vec<TcpListener>,
}

impl UselessSources {
    fn start(n: usize) -> UselessSources {
        let bind = || TcpListener::bind("127.0.0.2:0").unwrap();
        let mut endpoints = Vec::new();
        let mut silent = Vec::new();
        let mut greeting = Vec::new();
        for i in 0..n {
            let l = bind();
            endpoints.push(l.local_addr().unwrap());
            if i % 2 == 0 {
                silent.push(l);
            } else {
                greeting.push(l);
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let st = Arc::clone(&stop);
        let greeter = thread::spawn(move || {
            let mut held = Vec::new();
            for l in &greeting {
                l.set_nonblocking(true).unwrap();
            }
            while !st.load(Ordering::SeqCst) {
                for l in &greeting {
                    if let Ok((mut s, _)) = l.accept() {
                        let _ = s.set_nonblocking(false);
                        let hello = Message::Hello {
                            version: wire::PROTOCOL_VERSION,
                        };
                        let _ = wire::write_message(&mut s, &hello);
                        held.push(s); // and never a word more
                    }
                }
                thread::sleep(Duration::from_millis(5));
            }
        });
        UselessSources {
            endpoints,
            stop,
            greeter: Some(greeter),
            _silent: silent,
        }
    }
}

impl Drop for UselessSources {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.greeter.take() {
            let _ = h.join();
        }
    }
}

#[test]
fn useless_sources_on_another_host_do_not_hold_up_an_honest_one() {
    with_timeout(120, || {
        let s = Scratch::new("useless");
        let data = util::pattern(4 << 20, 36);
        util::write(&s.sub("a"), "f", &data);
        let t = tracker();
        let seed = || util::seed(t.local_addr(), &s.path().join("a"), Some(2 << 20));
        let honest = seed();
        let o = DownloadOptions {
            give_up_after: Duration::from_secs(60),
            ..DownloadOptions::default()
        };
        let timed = |dir: &str, honest: &p2pfs::peer::node::Node| {
            let d = downloader(t.local_addr());
            let started = std::time::Instant::now();
            let sum = d
                .download("f", &s.sub(dir), &o, &mut |_| {})
                .expect("download");
            let took = started.elapsed();
            assert_eq!(fs::read(s.path().join(dir).join("f")).unwrap(), data);
            assert_eq!(util::from(&sum, honest.local_addr()), data.len() as u64);
            took
        };
        let alone = timed("alone", &honest);
        // 200 useless sources on one other host (issue 10, item 4). The
        // tracker hands out at most 8 endpoints of one address per reply
        // (tracker side); the downloader starts at most 4 probes to one host
        // at a time, and backs off from sources that deliver nothing.
        let useless = UselessSources::start(200);
        let _claims: Vec<TcpStream> = useless
            .endpoints
            .iter()
            .map(|e| register_from([127, 0, 0, 2], t.local_addr(), *e, &data))
            .collect();
        // The honest source registers again after them, so the tracker
        // lists it last.
        honest.leave();
        let honest = seed();
        let l = p2pfs::peer::client::locate(t.local_addr(), "f", false).unwrap();
        assert!(l.sources.len() > 1, "{l:?}");
        let crowded = timed("crowded", &honest);
        eprintln!("honest source alone: {alone:?}; with 200 useless ones: {crowded:?}");
        assert!(
            crowded < alone * 2,
            "with useless sources {crowded:?}, alone {alone:?}"
        );
    });
}

#[test]
fn a_name_with_a_255_byte_component_is_downloaded() {
    with_timeout(60, || {
        let s = Scratch::new("long-name");
        // The longest names the tracker accepts: 255-byte components.
        let leaf = format!("{}.bin", "x".repeat(251));
        let name = format!("{}/{leaf}", "d".repeat(255));
        assert_eq!(leaf.len(), 255);
        let data = util::pattern(300_000, 37);
        util::write(&s.sub("a"), &name, &data);
        let t = tracker();
        let _a = util::seed(t.local_addr(), &s.path().join("a"), None);
        let d = downloader(t.local_addr());
        let dir = s.sub("d");
        let sum = d
            .download(&name, &dir, &opts(), &mut |_| {})
            .expect("download");
        assert_eq!(fs::read(dir.join(&name)).unwrap(), data);
        assert_eq!(sum.bytes_downloaded, data.len() as u64);
        // Nothing left: no .part, no work folder.
        let mut left: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, vec!["d".repeat(255)]);
    });
}

#[test]
fn the_share_scan_skips_the_work_folder_of_unfinished_downloads() {
    let s = Scratch::new("scan-work");
    util::write(s.path(), "f", b"shared");
    util::write(s.path(), ".p2pfs/0123.part", b"unfinished");
    util::write(s.path(), "sub/.p2pfs/4567.part.have", b"bitmap");
    util::write(s.path(), "sub/g", b"shared too");
    let scan = p2pfs::peer::share::scan_dir(s.path(), &[], CHUNK, &|_, _| {}).expect("scan");
    let mut names: Vec<&str> = scan.files.iter().map(|f| f.name()).collect();
    names.sort();
    assert_eq!(names, vec!["f", "sub/g"]);
    assert!(scan.skipped.is_empty(), "{:?}", scan.skipped);
}

#[test]
fn a_second_download_of_the_same_file_into_the_same_folder_is_refused() {
    with_timeout(60, || {
        let s = Scratch::new("twice");
        let data = util::pattern(2 << 20, 38);
        util::write(&s.sub("a"), "big.bin", &data);
        let t = tracker();
        // 2 MiB at 1 MiB/s: the first download runs for about 2 s.
        let _a = util::seed(t.local_addr(), &s.path().join("a"), Some(1 << 20));
        let dir = s.sub("d");
        let first = {
            let d = downloader(t.local_addr());
            let dir = dir.clone();
            thread::spawn(move || d.download("big.bin", &dir, &opts(), &mut |_| {}))
        };
        util::wait_until(10, "the first download under way", || {
            p2pfs::peer::download::have_path(&dir, "big.bin").exists()
        });
        let second = downloader(t.local_addr());
        let started = std::time::Instant::now();
        let e = second
            .download("big.bin", &dir, &opts(), &mut |_| {})
            .expect_err("refused while the first runs");
        assert!(started.elapsed() < Duration::from_secs(2), "said at once");
        assert!(e.to_string().contains("already being downloaded"), "{e}");
        let sum = first.join().unwrap().expect("the first download finishes");
        assert_eq!(sum.bytes_downloaded, data.len() as u64);
        assert_eq!(fs::read(dir.join("big.bin")).unwrap(), data);
        let left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec!["big.bin"], "nothing left behind");
    });
}

#[test]
fn a_huge_pipeline_with_long_names_and_small_chunks_does_not_deadlock() {
    with_timeout(90, || {
        let s = Scratch::new("pipeline");
        // A 1,019-byte name (four 254-byte components): each request is
        // over 1 KiB, as large as the chunk it asks for.
        let name = vec!["p".repeat(254); 4].join("/");
        let data = util::pattern(8 << 20, 39);
        util::write(&s.sub("a"), &name, &data);
        let t = tracker();
        let _seed = share_in_1k_chunks(t.local_addr(), &s.path().join("a"));
        let d = downloader(t.local_addr());
        // Every one of the 8,192 chunks asked at once: 8.5 MB of requests.
        let o = DownloadOptions {
            pipeline_depth: 1 << 20,
            ..opts()
        };
        let started = std::time::Instant::now();
        let sum = d
            .download(&name, &s.sub("d"), &o, &mut |_| {})
            .expect("download");
        eprintln!(
            "8 MiB in 1 KiB chunks, pipeline 2^20: {:?}",
            started.elapsed()
        );
        assert_eq!(fs::read(s.path().join("d").join(&name)).unwrap(), data);
        assert!(
            sum.sources.iter().all(|x| x.dropped.is_none()),
            "{:?}",
            sum.sources
        );
    });
}

/// Registers a file of `length` bytes in 16 MiB chunks (hashes that no
/// content matches) for a source that does not exist: enough for a
/// download to start checking what it finds on disk.
fn register_big(t: SocketAddr, name: &str, length: u64) -> (Client, Vec<[u8; 20]>) {
    let chunk_size = 16 << 20;
    let hashes = vec![[7u8; 20]; length.div_ceil(chunk_size) as usize];
    let mut c = Client::connect(t);
    let reply = c.request(&Message::Register {
        endpoint: "127.0.0.1:9".parse().unwrap(),
        files: vec![p2pfs::wire::FileEntry {
            name: name.into(),
            length,
            chunk_size: chunk_size as u32,
            hashes: hashes.clone(),
            have: p2pfs::wire::Have::All,
        }],
    });
    assert!(matches!(reply, Message::RegisterReply { .. }), "{reply:?}");
    (c, hashes)
}

/// Starts a cancellable download of `name` into `dir`, cancels it 300 ms
/// later, and returns its error and how long it took to stop after that.
fn cancel_during_check(t: SocketAddr, name: &str, dir: &std::path::Path) -> (String, Duration) {
    let d = downloader(t);
    let cancel = Arc::new(AtomicBool::new(false));
    let c = Arc::clone(&cancel);
    let dir = dir.to_path_buf();
    let name = name.to_owned();
    let h =
        thread::spawn(move || d.download_cancellable(&name, &dir, &opts(), Some(&c), &mut |_| {}));
    thread::sleep(Duration::from_millis(300));
    cancel.store(true, Ordering::SeqCst);
    let at = std::time::Instant::now();
    let e = h.join().unwrap().expect_err("interrupted");
    (e.to_string(), at.elapsed())
}

#[test]
fn checking_a_large_file_already_on_disk_stops_promptly_when_cancelled() {
    with_timeout(120, || {
        let s = Scratch::new("cancel-check");
        let t = tracker();
        let len = 8u64 << 30;
        let (_ctl, hashes) = register_big(t.local_addr(), "huge.img", len);
        let dir = s.sub("d");
        // A sparse file of the right length under the final name: the
        // download checks every chunk of it before anything else.
        fs::File::create(dir.join("huge.img"))
            .unwrap()
            .set_len(len)
            .unwrap();
        let (e, took) = cancel_during_check(t.local_addr(), "huge.img", &dir);
        eprintln!("final file: stopped {took:?} after the cancel: {e}");
        assert!(e.contains("interrupted"), "{e}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        assert_eq!(fs::metadata(dir.join("huge.img")).unwrap().len(), len);
        // The same for a resumed .part whose saved bitmap claims every chunk.
        fs::remove_file(dir.join("huge.img")).unwrap();
        let part = p2pfs::peer::download::part_path(&dir, "huge.img");
        fs::create_dir_all(part.parent().unwrap()).unwrap();
        fs::File::create(&part).unwrap().set_len(len).unwrap();
        let mut id = Vec::new();
        id.extend_from_slice(&len.to_be_bytes());
        id.extend_from_slice(&(16u32 << 20).to_be_bytes());
        for h in &hashes {
            id.extend_from_slice(h);
        }
        let bitmap = vec![0xffu8; hashes.len() / 8];
        let have = util::saved_bitmap(&p2pfs::chunks::sha1(&id), &bitmap, "huge.img");
        fs::write(p2pfs::peer::download::have_path(&dir, "huge.img"), &have).unwrap();
        let (e, took) = cancel_during_check(t.local_addr(), "huge.img", &dir);
        eprintln!("resume: stopped {took:?} after the cancel: {e}");
        assert!(e.contains("interrupted"), "{e}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        assert!(part.exists(), "kept for a resume");
    });
}

/// A download that gives up having verified no chunk leaves no `.part`
/// (a sparse file as long as the whole file, holding nothing) and no
/// saved bitmap, and its error says nothing was kept; one that verified a
/// chunk keeps both for a resume.
#[test]
fn a_download_giving_up_with_nothing_verified_keeps_no_part() {
    with_timeout(90, || {
        let s = Scratch::new("nothing-verified");
        let t = tracker();
        let data = ten_chunks(41);
        let o = DownloadOptions {
            give_up_after: Duration::from_secs(2),
            ..opts()
        };
        let work = |dir: &std::path::Path| -> Vec<String> {
            fs::read_dir(dir.join(".p2pfs")).map_or_else(
                |_| Vec::new(),
                |rd| {
                    rd.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                },
            )
        };
        let d = downloader(t.local_addr());
        {
            let _src = FakeSource::start(t.local_addr(), "f", &data, |_, _| Answer::NotHeld);
            let dir = s.sub("none");
            let err = d
                .download("f", &dir, &o, &mut |_| {})
                .expect_err("nothing is served");
            let text = err.to_string();
            assert!(text.contains(p2pfs::peer::download::NOTHING_KEPT), "{text}");
            assert_eq!(work(&dir), Vec::<String>::new());
            assert!(!dir.join("f").exists());
        }
        let _src = FakeSource::start(t.local_addr(), "g", &data, |i, _| {
            if i == 0 {
                Answer::Good
            } else {
                Answer::NotHeld
            }
        });
        let dir = s.sub("one");
        let err = d
            .download("g", &dir, &o, &mut |_| {})
            .expect_err("only chunk 0 is served");
        assert!(
            !err.to_string()
                .contains(p2pfs::peer::download::NOTHING_KEPT),
            "{err}"
        );
        let kept = work(&dir);
        assert_eq!(kept.len(), 2, "{kept:?}");
        assert!(p2pfs::peer::download::partfile::have_path(&dir, "g").exists());
    });
}

/// A downloaded file that its owner then edits in place (same length) is
/// not served with the edited bytes as if they were the content this peer
/// registered: the chunk server answers `NotHeld` (and withdraws the file),
/// as it does for a file from the share scan.
#[test]
fn a_downloaded_file_edited_afterwards_is_not_served_as_its_old_content() {
    with_timeout(60, || {
        let s = Scratch::new("edited-after");
        let data = ten_chunks(5);
        util::write(&s.sub("a"), "f", &data);
        let t = tracker();
        let _a = util::seed(t.local_addr(), &s.path().join("a"), None);
        let d = downloader(t.local_addr());
        d.download("f", &s.sub("d"), &opts(), &mut |_| {})
            .expect("download");
        // The user edits the downloaded file: same length, other bytes.
        let p = s.path().join("d/f");
        let mut edited = data.clone();
        edited[0] ^= 0xff;
        fs::write(&p, &edited).unwrap();
        let mut c = Client::connect(d.local_addr());
        let reply = c.request(&Message::ChunkRequest {
            name: "f".into(),
            index: 0,
        });
        match reply {
            Message::Error { code, .. } => assert_eq!(code, ErrorCode::NotHeld),
            Message::ChunkData { data: got, .. } => {
                panic!(
                    "served chunk 0 after the edit (edited bytes: {})",
                    got[0] == edited[0]
                )
            }
            other => panic!("{other:?}"),
        }
    });
}

/// A capped seed serving several downloads at once (of different files, so
/// no downloader can fetch from another) answers some requests `Busy`: it
/// is busy, not gone. A download turned away is waited for as a chunk in
/// flight is, and asked again without a growing back-off; none gives up
/// for want of a source while the seed is sending to the others.
#[test]
fn downloads_from_a_busy_capped_seed_wait_their_turn_rather_than_give_up() {
    with_timeout(120, || {
        let s = Scratch::new("busy-seed");
        const N: usize = 6;
        let files: Vec<Vec<u8>> = (0..N)
            .map(|k| util::pattern(4 * CHUNK as usize, k as u64))
            .collect();
        for (k, d) in files.iter().enumerate() {
            util::write(&s.sub("a"), &format!("f{k}"), d);
        }
        let t = tracker();
        // Half a second per chunk: 24 chunks take 12 s in all.
        let _a = util::seed(
            t.local_addr(),
            &s.path().join("a"),
            Some(2 * u64::from(CHUNK)),
        );
        // Without progress: 5 s with nothing in flight; a chunk in flight
        // (or a source that said Busy) gets 10 s + 64 KiB at 8 KiB/s = 18 s,
        // longer than all 24 chunks take.
        let mut o = opts();
        o.give_up_after = Duration::from_secs(5);
        o.io_timeout = Duration::from_secs(10);
        let runs: Vec<_> = (0..N)
            .map(|k| {
                let (dir, o, addr) = (s.sub(&format!("d{k}")), o.clone(), t.local_addr());
                thread::spawn(move || {
                    let d = downloader(addr);
                    d.download(&format!("f{k}"), &dir, &o, &mut |_| {})
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                })
            })
            .collect();
        let results: Vec<_> = runs.into_iter().map(|h| h.join().unwrap()).collect();
        let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        assert!(failed.is_empty(), "{failed:?}");
        for (k, d) in files.iter().enumerate() {
            assert_eq!(&fs::read(s.path().join(format!("d{k}/f{k}"))).unwrap(), d);
        }
    });
}

/// `n` one-chunk files of a set, named `set/fI`, each of its own bytes.
fn one_chunk_files(n: usize, seed: u64) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let len = 1000 + 97 * i;
            (format!("set/f{i}"), util::pattern(len, seed + i as u64))
        })
        .collect()
}

/// Fetches `files` as one set (`jobs` at a time) with `d`, into `dir`.
fn fetch_set(
    d: &p2pfs::peer::node::Node,
    files: &[(String, Vec<u8>)],
    jobs: usize,
    dir: &std::path::Path,
) -> Vec<p2pfs::peer::download::batch::FileOutcome> {
    fetch_set_with(d, files, jobs, dir, opts(), None)
}

/// [`fetch_set`] with options `o` and a cancel flag.
fn fetch_set_with(
    d: &p2pfs::peer::node::Node,
    files: &[(String, Vec<u8>)],
    jobs: usize,
    dir: &std::path::Path,
    o: DownloadOptions,
    cancel: Option<&AtomicBool>,
) -> Vec<p2pfs::peer::download::batch::FileOutcome> {
    use p2pfs::peer::download::batch::{self, Planned};
    let plan: Vec<Planned> = files
        .iter()
        .map(|(n, d)| Planned {
            name: n.clone(),
            length: Some(d.len() as u64),
        })
        .collect();
    let o = DownloadOptions {
        sync_folder: false,
        ..o
    };
    let fetch = |name: &str, on: &mut dyn FnMut(&p2pfs::peer::download::Progress)| {
        d.download_cancellable(name, dir, &o, cancel, on)
    };
    batch::run(&plan, jobs, cancel, &fetch, &mut |_| {}, &mut |_| {})
}

/// The set's fast path for one-chunk files: a source that sends bad bytes
/// is passed over for the other source, and every file arrives intact.
#[test]
fn a_one_chunk_file_of_a_set_whose_first_source_lies_comes_from_the_other() {
    with_timeout(60, || {
        let s = Scratch::new("small-liar");
        let files = one_chunk_files(4, 71);
        let t = tracker();
        let liar = FakeSource::start_files(t.local_addr(), &files, |_, _| Answer::Corrupt);
        let honest = FakeSource::start_files(t.local_addr(), &files, |_, _| Answer::Good);
        let d = downloader(t.local_addr());
        let dir = s.sub("d");
        let out = fetch_set(&d, &files, 1, &dir);
        for ((name, data), o) in files.iter().zip(&out) {
            let sum = o.result.as_ref().expect("downloaded");
            assert_eq!(&fs::read(dir.join(name)).unwrap(), data, "{name}");
            assert_eq!(sum.bytes_downloaded, data.len() as u64);
            assert!(d.share().get(name).is_some_and(|f| f.is_complete()));
        }
        // The least asked source goes first: the liar was asked, and its
        // bad chunk shows in that file's sources.
        assert!(liar.asked(0) >= 1, "the liar was never asked");
        let strikes: u32 = out
            .iter()
            .flat_map(|o| o.result.as_ref().unwrap().sources.iter())
            .map(|s| s.hash_failures)
            .sum();
        assert_eq!(strikes, liar.asked(0));
        assert_eq!(honest.asked(0), 4, "each file once from the honest source");
    });
}

/// The set's fast path keeps one connection per source per job thread,
/// not one per file.
#[test]
fn a_set_of_one_chunk_files_reuses_its_connections_to_a_source() {
    with_timeout(60, || {
        let s = Scratch::new("small-reuse");
        let files = one_chunk_files(12, 91);
        let t = tracker();
        let src = FakeSource::start_files(t.local_addr(), &files, |_, _| Answer::Good);
        let d = downloader(t.local_addr());
        let dir = s.sub("d");
        let out = fetch_set(&d, &files, 2, &dir);
        for ((name, data), o) in files.iter().zip(&out) {
            assert!(o.result.is_ok(), "{name}: {:?}", o.result);
            assert_eq!(&fs::read(dir.join(name)).unwrap(), data, "{name}");
        }
        assert_eq!(src.asked(0), 12, "each file asked once");
        let conns = src.shared.accepted.load(Ordering::SeqCst);
        assert!(conns <= 2, "{conns} connections for 12 files and 2 jobs");
    });
}

/// `n` files of a set of `chunks` chunks each (the last one short), named
/// `multi/fI`.
fn multi_chunk_files(n: usize, chunks: usize, seed: u64) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let len = chunks * CHUNK as usize - 1000 - 7 * i;
            (format!("multi/f{i}"), util::pattern(len, seed + i as u64))
        })
        .collect()
}

/// Total requests a source received, over every chunk index.
fn total_asked(src: &FakeSource) -> u32 {
    src.shared.asked.lock().unwrap().values().sum()
}

/// The set's fast path for files of several chunks: both sources serve,
/// every file is byte-identical, nothing is left in the download folder
/// but the files, and the downloader is listed by the tracker as holding
/// every chunk of every file (each chunk registered as it came).
#[test]
fn a_set_of_several_chunk_files_uses_both_sources_and_registers_every_chunk() {
    with_timeout(60, || {
        let s = Scratch::new("small-multi");
        let files = multi_chunk_files(6, 5, 31);
        let t = tracker();
        let a = FakeSource::start_files(t.local_addr(), &files, |_, _| Answer::Good);
        let b = FakeSource::start_files(t.local_addr(), &files, |_, _| Answer::Good);
        let d = downloader(t.local_addr());
        let dir = s.sub("d");
        let out = fetch_set(&d, &files, 2, &dir);
        for ((name, data), o) in files.iter().zip(&out) {
            let sum = o.result.as_ref().expect("downloaded");
            assert_eq!(&fs::read(dir.join(name)).unwrap(), data, "{name}");
            assert_eq!(sum.bytes_downloaded, data.len() as u64, "{name}");
            assert_eq!(sum.chunks_total, 5);
            let from: u32 = sum.sources.iter().map(|s| s.chunks).sum();
            assert_eq!(from, 5, "{name}: every chunk from exactly one source");
        }
        let (na, nb) = (total_asked(&a), total_asked(&b));
        assert_eq!(na + nb, 30, "each chunk asked once: {na} + {nb}");
        assert!(na > 0 && nb > 0, "one source idle: {na} + {nb}");
        // Only the files: no work folder, no temporary name.
        let mut entries: Vec<String> = fs::read_dir(dir.join("multi"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        entries.sort();
        let want: Vec<String> = (0..6).map(|i| format!("f{i}")).collect();
        assert_eq!(entries, want);
        assert!(!dir.join(p2pfs::peer::download::WORK_DIR).exists());
        // The tracker lists the downloader for every chunk of every file.
        let me = d.local_addr().port();
        util::wait_until(10, "the downloader listed for every chunk", || {
            files.iter().all(|(name, _)| {
                let mut c = Client::connect(t.local_addr());
                match c.request(&Message::Locate {
                    name: name.clone(),
                    with_hashes: false,
                }) {
                    Message::Locations(l) => l
                        .sources
                        .iter()
                        .any(|s| s.addr.port() == me && s.have == vec![0xF8]),
                    _ => false,
                }
            })
        });
    });
}

/// A source that sends bad chunks of a several-chunk file is not asked
/// again by that job thread: its chunks come from the other source, its
/// strikes are in the summaries, and every file is intact.
#[test]
fn a_lying_source_of_a_set_is_not_asked_again() {
    with_timeout(60, || {
        let s = Scratch::new("small-multi-liar");
        let files = multi_chunk_files(4, 4, 57);
        let t = tracker();
        let liar = FakeSource::start_files(t.local_addr(), &files, |_, _| Answer::Corrupt);
        let honest = FakeSource::start_files(t.local_addr(), &files, |_, _| Answer::Good);
        let d = downloader(t.local_addr());
        let dir = s.sub("d");
        let out = fetch_set(&d, &files, 1, &dir);
        for ((name, data), o) in files.iter().zip(&out) {
            assert!(o.result.is_ok(), "{name}: {:?}", o.result);
            assert_eq!(&fs::read(dir.join(name)).unwrap(), data, "{name}");
        }
        // Asked only in the first file's first round (its requests are
        // sent together), then never again.
        let lies = total_asked(&liar);
        assert!((1..=4).contains(&lies), "the liar was asked {lies} times");
        let struck: Vec<u32> = out
            .iter()
            .map(|o| {
                o.result
                    .as_ref()
                    .unwrap()
                    .sources
                    .iter()
                    .map(|s| s.hash_failures)
                    .sum()
            })
            .collect();
        assert_eq!(struck, [1, 0, 0, 0], "one strike, in the first file");
        assert_eq!(
            total_asked(&honest),
            16,
            "every chunk from the honest source"
        );
    });
}

/// A source that answers `NotHeld` for one chunk keeps its connection and
/// serves the rest; the refused chunk comes from the other source.
#[test]
fn a_refused_chunk_of_a_set_comes_from_the_other_source_over_the_same_connections() {
    with_timeout(60, || {
        let s = Scratch::new("small-multi-notheld");
        let files = multi_chunk_files(5, 3, 77);
        let t = tracker();
        let rule = |i: u32, _| {
            if i == 1 {
                Answer::NotHeld
            } else {
                Answer::Good
            }
        };
        let picky = FakeSource::start_files(t.local_addr(), &files, rule);
        let other = FakeSource::start_files(t.local_addr(), &files, |_, _| Answer::Good);
        let d = downloader(t.local_addr());
        let dir = s.sub("d");
        let out = fetch_set(&d, &files, 1, &dir);
        for ((name, data), o) in files.iter().zip(&out) {
            assert!(o.result.is_ok(), "{name}: {:?}", o.result);
            assert_eq!(&fs::read(dir.join(name)).unwrap(), data, "{name}");
        }
        assert!(total_asked(&picky) > 0);
        assert_eq!(
            other.asked(1),
            5,
            "chunk 1 of every file from the other source"
        );
        for src in [&picky, &other] {
            let conns = src.shared.accepted.load(Ordering::SeqCst);
            assert_eq!(conns, 1, "one kept connection per source, not {conns}");
        }
    });
}

/// Cancelling a set whose only source never answers ends it at once, not
/// after the I/O timeout, and leaves nothing in the download folder.
#[test]
fn a_cancelled_set_does_not_wait_for_a_silent_source() {
    with_timeout(60, || {
        let s = Scratch::new("small-cancel");
        let files = multi_chunk_files(3, 2, 13);
        let t = tracker();
        let _mute = FakeSource::start_files(t.local_addr(), &files, |_, _| Answer::Silent);
        let d = downloader(t.local_addr());
        let dir = s.sub("d");
        let cancel = AtomicBool::new(false);
        let o = DownloadOptions {
            io_timeout: Duration::from_secs(40),
            ..opts()
        };
        let started = std::time::Instant::now();
        let out = thread::scope(|sc| {
            sc.spawn(|| {
                thread::sleep(Duration::from_millis(500));
                cancel.store(true, Ordering::SeqCst);
            });
            fetch_set_with(&d, &files, 2, &dir, o, Some(&cancel))
        });
        let took = started.elapsed();
        assert!(took < Duration::from_secs(10), "took {took:?}");
        assert!(out.iter().all(|o| o.result.is_err()), "{out:?}");
        let left: Vec<_> = walk(&dir);
        assert!(left.iter().all(|p| p.is_dir()), "left behind: {left:?}");
    });
}

/// Every path under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            out.push(e.path());
            out.extend(walk(&e.path()));
        }
    }
    out
}

/// A source of a set that answers with another chunk than the one asked
/// (right bytes, wrong index) is taken for a broken source: its
/// connection is closed, the chunk comes from the other source, and
/// every file is intact.
#[test]
fn a_set_source_answering_the_wrong_index_is_passed_over() {
    with_timeout(60, || {
        let s = Scratch::new("small-multi-index");
        let files = multi_chunk_files(3, 3, 91);
        let t = tracker();
        let wrong =
            FakeSource::start_files(t.local_addr(), &files, |i, _| Answer::Index((i + 1) % 3));
        let _good = FakeSource::start_files(t.local_addr(), &files, |_, _| Answer::Good);
        let d = downloader(t.local_addr());
        let dir = s.sub("d");
        let out = fetch_set(&d, &files, 1, &dir);
        for ((name, data), o) in files.iter().zip(&out) {
            assert!(o.result.is_ok(), "{name}: {:?}", o.result);
            assert_eq!(&fs::read(dir.join(name)).unwrap(), data, "{name}");
        }
        assert!(total_asked(&wrong) > 0, "the wrong source was never asked");
    });
}
