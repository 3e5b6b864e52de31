//! The set fast path (src/peer/download/small.rs) against sources and
//! trackers that are slow, trickling or silent, files of many small
//! chunks, and a file appearing under the final name meanwhile: it must
//! never take much longer than the engine would, nor leave anything behind
//! (found by two reviews: each of these failed on its first version). The
//! engine alone on the same setups is the yardstick.

mod util;

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use p2pfs::chunks;
use p2pfs::peer::download::DownloadOptions;
use p2pfs::peer::download::batch::{self, FileOutcome, Planned};
use p2pfs::peer::node::{Node, NodeConfig};
use p2pfs::peer::share;
use p2pfs::wire::{self, FileEntry, Have, Message};
use util::{CHUNK, Client, Scratch, opts, tracker, with_timeout};

/// A node sharing `dir` hashed in `chunk`-byte chunks, registered with
/// every tracker in `ts`.
fn seed_with(ts: Vec<SocketAddr>, dir: &Path, chunk: u32) -> Node {
    let scan = share::scan_dir(dir, &[], chunk, &|_, _| {}).expect("scan");
    let mut cfg = NodeConfig::with_trackers(ts);
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    let n = Node::start(cfg, scan.files, None).expect("node");
    util::wait_until(10, "seed registered", || n.is_connected());
    n
}

fn node(ts: Vec<SocketAddr>) -> Node {
    let mut cfg = NodeConfig::with_trackers(ts);
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    Node::start(cfg, Vec::new(), None).expect("node")
}

/// `names` fetched as one set (`peer get a b c`), one job: every file
/// goes through `small::try_fetch` first.
fn fetch_set(d: &Node, names: &[&str], dir: &Path, o: DownloadOptions) -> Vec<FileOutcome> {
    let plan: Vec<Planned> = names
        .iter()
        .map(|n| Planned {
            name: (*n).to_owned(),
            length: None,
        })
        .collect();
    let fetch = |name: &str, on: &mut dyn FnMut(&p2pfs::peer::download::Progress)| {
        d.download_cancellable(name, dir, &o, None, on)
    };
    batch::run(&plan, 1, None, &fetch, &mut |_| {}, &mut |_| {})
}

/// send_all writes every request of a source's queue before reading any
/// reply. With many small chunks the source's replies fill both socket
/// buffers, the source stops reading requests, and our writes block until
/// the write timeout: the fast path gives up after `io_timeout` and the
/// engine fetches the file again from scratch. (The engine does not
/// deadlock on the same file: see download.rs
/// a_huge_pipeline_with_long_names_and_small_chunks_does_not_deadlock.)
#[test]
fn a_many_chunk_small_file_does_not_deadlock_on_its_own_requests() {
    many_chunks(&vec!["p".repeat(254); 4].join("/"), 8 << 20);
}

fn many_chunks(name: &str, len: usize) {
    let name = name.to_owned();
    with_timeout(120, move || {
        let s = Scratch::new("rv-deadlock");
        let data = util::pattern(len, 39);
        util::write(&s.sub("a"), &name, &data);
        let t = tracker();
        let _seed = seed_with(vec![t.local_addr()], &s.path().join("a"), 1024);
        let d = node(vec![t.local_addr()]);
        let o = DownloadOptions {
            io_timeout: Duration::from_secs(20),
            sync_folder: false,
            ..opts()
        };
        let started = Instant::now();
        let out = fetch_set(&d, &[&name], &s.sub("d"), o);
        let took = started.elapsed();
        eprintln!("{len} bytes in 1 KiB chunks as a set: {took:?}");
        assert!(out[0].result.is_ok(), "{:?}", out[0].result);
        assert_eq!(std::fs::read(s.path().join("d").join(&name)).unwrap(), data);
        assert!(
            took < Duration::from_secs(15),
            "{took:?}: the fast path stalled for its write timeout"
        );
    });
}

/// How a fake source answers a ChunkRequest.
#[derive(Clone, Copy)]
enum Style {
    /// The whole reply after this pause.
    Delay(Duration),
    /// The reply at once, `n` bytes every `every`.
    Trickle(usize, Duration),
    /// `NotHeld` the first time this chunk is asked (on any connection),
    /// the chunk after that; others at once.
    NotHeldOnce(u32),
}

/// A source registered at `t` for `name` that answers every request
/// correctly, in `style`.
struct FakeSource {
    stop: Arc<AtomicBool>,
    h: Option<thread::JoinHandle<()>>,
    _ctl: Client,
}

impl FakeSource {
    fn start(t: SocketAddr, name: &str, data: Vec<u8>, style: Style) -> FakeSource {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let mut ctl = Client::connect(t);
        let e = FileEntry {
            name: name.into(),
            length: data.len() as u64,
            chunk_size: CHUNK,
            hashes: data.chunks(CHUNK as usize).map(chunks::sha1).collect(),
            have: Have::All,
        };
        let r = ctl.request(&Message::Register {
            endpoint: l.local_addr().unwrap(),
            files: vec![e],
        });
        assert!(matches!(r, Message::RegisterReply { .. }), "{r:?}");
        let stop = Arc::new(AtomicBool::new(false));
        let st = Arc::clone(&stop);
        let refused = Arc::new(AtomicBool::new(false));
        let h = thread::spawn(move || {
            let mut conns = Vec::new();
            while !st.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((c, _)) => {
                        let (st, data) = (Arc::clone(&st), data.clone());
                        let refused = Arc::clone(&refused);
                        conns.push(thread::spawn(move || {
                            serve(c, &st, &data, style, &refused);
                        }));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        FakeSource {
            stop,
            h: Some(h),
            _ctl: ctl,
        }
    }
}

impl Drop for FakeSource {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.h.take() {
            let _ = h.join();
        }
    }
}

fn serve(s: TcpStream, stop: &AtomicBool, data: &[u8], style: Style, refused: &AtomicBool) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    while !stop.load(Ordering::SeqCst) {
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
            Message::Hello { .. } => Message::Hello {
                version: wire::PROTOCOL_VERSION,
            },
            Message::ChunkRequest { index, .. }
                if matches!(style, Style::NotHeldOnce(i) if i == index)
                    && !refused.swap(true, Ordering::SeqCst) =>
            {
                Message::error(wire::ErrorCode::NotHeld, "not yet")
            }
            Message::ChunkRequest { index, .. } => {
                let a = (index as usize * CHUNK as usize).min(data.len());
                let b = (a + CHUNK as usize).min(data.len());
                Message::ChunkData {
                    index,
                    data: data[a..b].to_vec(),
                }
            }
            _ => return,
        };
        let mut bytes = Vec::new();
        reply.encode(&mut bytes).unwrap();
        let (n, every) = match (style, &reply) {
            (Style::Delay(d), Message::ChunkData { .. }) => {
                thread::sleep(d);
                (bytes.len(), Duration::ZERO)
            }
            (Style::Trickle(n, every), Message::ChunkData { .. }) => (n, every),
            _ => (bytes.len(), Duration::ZERO),
        };
        for piece in bytes.chunks(n) {
            if stop.load(Ordering::SeqCst) || w.write_all(piece).is_err() {
                return;
            }
            thread::sleep(every);
        }
    }
}

/// How long one file of `chunks` chunks takes beside a seed and a source
/// answering in `style`, fetched as a set (`as_set`, through the fast
/// path) or by the engine alone; it must arrive intact either way.
fn beside(style: Style, chunks: usize, seed: u64, as_set: bool) -> Duration {
    let s = Scratch::new("beside");
    let data = util::pattern(chunks * CHUNK as usize, seed);
    util::write(&s.sub("a"), "f", &data);
    let t = tracker();
    let _bad = FakeSource::start(t.local_addr(), "f", data.clone(), style);
    let _seed = seed_with(vec![t.local_addr()], &s.path().join("a"), CHUNK);
    let d = node(vec![t.local_addr()]);
    let dir = s.sub("d");
    let started = Instant::now();
    if as_set {
        let o = DownloadOptions {
            sync_folder: false,
            ..opts()
        };
        let out = fetch_set(&d, &["f"], &dir, o);
        let sum = out[0].result.as_ref().expect("fetched");
        // Nothing was on disk: whatever the fast path fetched before it
        // left the file to the engine counts as fetched, not as resumed.
        assert_eq!(sum.chunks_resumed, 0, "{sum:?}");
        assert!(sum.bytes_downloaded >= data.len() as u64, "{sum:?}");
    } else {
        d.download("f", &dir, &opts(), &mut |_| {})
            .expect("download");
    }
    let took = started.elapsed();
    assert_eq!(std::fs::read(dir.join("f")).unwrap(), data);
    took
}

/// Replies are read in lock step, one from each source in turn, from
/// queues fixed before any reply: a source that answers each chunk just
/// within the timeout holds the file (and the fast source, whose replies
/// wait in its socket) for (chunks / sources) x its delay. Nothing bounds
/// the whole: the engine's give-up / slow-source rules do not apply here.
/// 16 chunks, a slow source at 1.5 s per chunk beside a fast seed: about
/// 12 s on the fast path; the engine takes well under 2 s.
#[test]
fn a_slow_source_does_not_hold_the_fast_one() {
    with_timeout(120, || {
        let took = beside(Style::Delay(Duration::from_millis(1500)), 16, 5, true);
        eprintln!("16 chunks beside a 1.5 s/chunk source, as a set: {took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    });
}

/// A tracker that accepts connections and never answers costs a set's
/// job thread its grace once (then it is not asked again by that thread),
/// not every file: 8 one-chunk files with one job, against a silent
/// tracker beside the real one, take well under what one grace per file
/// would (8 s). With only the real tracker, the same set takes a moment.
#[test]
fn a_silent_tracker_does_not_hold_a_set() {
    with_timeout(120, || {
        let s = Scratch::new("rv-silent");
        let names: Vec<String> = (0..8).map(|i| format!("f{i}")).collect();
        for (i, n) in names.iter().enumerate() {
            util::write(&s.sub("a"), n, &util::pattern(3000 + i, 8 + i as u64));
        }
        let t = tracker();
        // Accepts (in the kernel's backlog) and never answers.
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let hung = silent.local_addr().unwrap();
        let _seed = seed_with(vec![t.local_addr()], &s.path().join("a"), CHUNK);
        let d = node(vec![t.local_addr(), hung]);
        let o = DownloadOptions {
            sync_folder: false,
            ..opts()
        };
        let started = Instant::now();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let out = fetch_set(&d, &refs, &s.sub("d"), o);
        let took = started.elapsed();
        eprintln!("8 one-chunk files, one silent tracker, as a set: {took:?}");
        for (n, o) in names.iter().zip(&out) {
            assert!(o.result.is_ok(), "{n}: {:?}", o.result);
            let want = std::fs::read(s.path().join("a").join(n)).unwrap();
            assert_eq!(std::fs::read(s.path().join("d").join(n)).unwrap(), want);
        }
        assert!(took < Duration::from_secs(4), "{took:?}");
        drop(silent);
    });
}

/// The engine (a single download, no set) on the same setups as the two
/// tests above, to show their bounds are fair.
#[test]
fn the_engine_alone_with_a_silent_tracker() {
    with_timeout(120, || {
        let s = Scratch::new("rv-ctl-silent");
        let data = util::pattern(3000, 8);
        util::write(&s.sub("a"), "f", &data);
        let t = tracker();
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let _seed = seed_with(vec![t.local_addr()], &s.path().join("a"), CHUNK);
        let d = node(vec![t.local_addr(), silent.local_addr().unwrap()]);
        let started = Instant::now();
        d.download("f", &s.sub("d"), &opts(), &mut |_| {})
            .expect("download");
        let took = started.elapsed();
        eprintln!("engine, one silent tracker: {took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    });
}

#[test]
fn the_engine_alone_beside_a_slow_source() {
    with_timeout(120, || {
        let took = beside(Style::Delay(Duration::from_millis(1500)), 16, 5, false);
        eprintln!("engine beside a 1.5 s/chunk source: {took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    });
}

/// The fast path's per-file deadline (SMALL_FILE_PATIENCE + length at
/// SMALL_FILE_MIN_RATE: about 1.1 s here) is checked only between replies.
/// A source that starts its reply at once and trickles it (4 KiB/s) keeps
/// the read going for the frame's own allowance (io_timeout + 64 KiB at
/// MIN_CHUNK_TRANSFER_RATE = 3 + 8 s), while the fast seed's chunk waits:
/// the file is held about 11 s, ten times its deadline.
#[test]
fn a_trickling_source_does_not_hold_a_file_past_its_deadline() {
    with_timeout(120, || {
        let took = beside(Style::Trickle(512, Duration::from_millis(125)), 2, 17, true);
        eprintln!("2 chunks beside a trickling source, as a set: {took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    });
}

/// Control: the engine alone beside the same trickling source.
#[test]
fn the_engine_alone_beside_a_trickling_source() {
    with_timeout(120, || {
        let took = beside(
            Style::Trickle(512, Duration::from_millis(125)),
            2,
            17,
            false,
        );
        eprintln!("engine beside a trickling source: {took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    });
}

/// The final name appears (the same content, e.g. a second `peer get` of
/// the same file into the same folder) while the fast path waits for the
/// chunk: `name_unnamed` answers Ok(false), `park_unnamed` links the
/// complete content as a `.part` with its `.part.have`, and the engine
/// finds the file in place (`already_there`), which never discards them:
/// a complete `.part` is left in `.p2pfs/` for good, listed as unfinished.
#[test]
fn a_name_taken_meanwhile_leaves_no_part_behind() {
    with_timeout(60, || {
        let s = Scratch::new("rv2-taken");
        let data = util::pattern(3000, 23);
        let t = tracker();
        let _src = FakeSource::start(
            t.local_addr(),
            "f",
            data.clone(),
            Style::Delay(Duration::from_millis(600)),
        );
        let d = node(vec![t.local_addr()]);
        let o = DownloadOptions {
            sync_folder: false,
            ..opts()
        };
        let dir = s.sub("d");
        let (dir2, data2) = (dir.clone(), data.clone());
        let other = thread::spawn(move || {
            thread::sleep(Duration::from_millis(250));
            util::write(&dir2, "f", &data2);
        });
        let out = fetch_set(&d, &["f"], &dir, o);
        other.join().unwrap();
        eprintln!("{:?}", out[0].result);
        assert_eq!(std::fs::read(dir.join("f")).unwrap(), data);
        assert_eq!(
            p2pfs::peer::download::partfile::unfinished(&dir),
            Vec::<String>::new(),
            "left behind: {:?}",
            util::tree(&dir)
        );
    });
}

/// A source that accepts connections (the kernel's backlog) and never
/// answers, listed for every file of a set beside a good seed. Its failed
/// greeting is never recorded (no cost, not a liar), so for every file it
/// is "a source not tried yet", ranked cheapest by `share_out`, given the
/// file's chunk, and `top_up` waits the whole `io_timeout` (3 s) on its
/// greeting, past the file's deadline: 4 one-chunk files take about
/// 4 x 3 s instead of one timeout at most.
#[test]
fn a_silent_source_costs_a_set_one_timeout_not_one_per_file() {
    with_timeout(120, || {
        let s = Scratch::new("rv2-silent-src");
        let names: Vec<String> = (0..4).map(|i| format!("f{i}")).collect();
        let mut entries = Vec::new();
        for (i, n) in names.iter().enumerate() {
            let data = util::pattern(3000 + i, 40 + i as u64);
            util::write(&s.sub("a"), n, &data);
            entries.push(util::entry(n, &data));
        }
        let t = tracker();
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut ctl = Client::connect(t.local_addr());
        let r = ctl.request(&Message::Register {
            endpoint: silent.local_addr().unwrap(),
            files: entries,
        });
        assert!(matches!(r, Message::RegisterReply { .. }), "{r:?}");
        let _seed = seed_with(vec![t.local_addr()], &s.path().join("a"), CHUNK);
        let d = node(vec![t.local_addr()]);
        let o = DownloadOptions {
            sync_folder: false,
            ..opts()
        };
        let started = Instant::now();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let out = fetch_set(&d, &refs, &s.sub("d"), o);
        let took = started.elapsed();
        eprintln!("4 one-chunk files beside a silent source, as a set: {took:?}");
        for (n, o) in names.iter().zip(&out) {
            assert!(o.result.is_ok(), "{n}: {:?}", o.result);
        }
        assert!(took < Duration::from_secs(3), "{took:?}");
        drop(silent);
    });
}

/// `Node::download_cancellable` (and `download::download`) promise to
/// return only once the file is verified, flushed and in place, and the
/// node answers `is_downloading(name)` while it is not. On a `batch-N`
/// thread the fast path now returns a provisional `Ok` before the file is
/// named (a `finish-N` thread fsyncs and links it later): in that window
/// the name is out of `Node::downloading`, the share index already holds
/// it complete, and the file is not on disk. A second `get` of the same
/// name at the prompt (`Repl::get`) then answers "you already have f: it
/// is in the shared folder", and `Node::download` refuses it as "already
/// shared by this peer", for a file that is not there and may never be
/// (naming can still fail: a name taken meanwhile, an fsync error).
/// A tracker, a seed of `s`'s folder `a`, a node to download with, and the
/// options of a set (folders synced once at its end).
fn one_seed(s: &Scratch) -> (p2pfs::tracker::Tracker, Node, Node, DownloadOptions) {
    let t = tracker();
    let seed = seed_with(vec![t.local_addr()], &s.path().join("a"), CHUNK);
    let d = node(vec![t.local_addr()]);
    let o = DownloadOptions {
        sync_folder: false,
        ..opts()
    };
    (t, seed, d, o)
}

#[test]
fn a_set_file_not_yet_named_still_counts_as_downloading() {
    with_timeout(60, || {
        let s = Scratch::new("rv3-window");
        let data = util::pattern(3000, 61);
        util::write(&s.sub("a"), "f", &data);
        let (_t, _seed, d, o) = one_seed(&s);
        let dir = s.sub("d");
        let seen = std::sync::Mutex::new(Vec::new());
        let fetch = |name: &str, on: &mut dyn FnMut(&p2pfs::peer::download::Progress)| {
            let r = d.download_cancellable(name, &dir, &o, None, on);
            if r.is_ok() {
                let complete = d.share().get(name).is_some_and(|f| f.is_complete());
                seen.lock().unwrap().push((
                    dir.join(name).exists(),
                    d.is_downloading(name),
                    complete,
                ));
            }
            r
        };
        let plan = vec![Planned {
            name: "f".into(),
            length: None,
        }];
        let out = batch::run(&plan, 1, None, &fetch, &mut |_| {}, &mut |_| {});
        assert!(out[0].result.is_ok(), "{:?}", out[0].result);
        assert_eq!(std::fs::read(dir.join("f")).unwrap(), data);
        let seen = seen.into_inner().unwrap();
        let (in_place, downloading, complete) = seen[0];
        assert!(
            in_place || downloading,
            "download returned Ok with f not in place (in the share index as \
             complete: {complete}) and no longer counted as downloading"
        );
    });
}

/// On a thread whose pool does not defer naming (a set without finishers),
/// the fast path names the file before `download` returns, and leaves
/// nothing for `take_unnamed`; with deferral, the file comes back unnamed
/// and is taken, named and served as the user's file by `finish`.
#[test]
fn a_pool_that_does_not_defer_names_the_file_before_returning() {
    use p2pfs::peer::download::{Interrupt, PoolGuard, take_unnamed};
    with_timeout(60, || {
        let s = Scratch::new("nodefer");
        let data = util::pattern(3000, 67);
        util::write(&s.sub("a"), "f", &data);
        util::write(&s.sub("a"), "g", &data[..1000]);
        util::write(&s.sub("a"), "h", &data[..2000]);
        let (_t, _seed, d, o) = one_seed(&s);
        let dir = s.sub("d");
        thread::scope(|scope| {
            scope.spawn(|| {
                let _pool = PoolGuard::install(Arc::new(Interrupt::default()), false);
                let r = d.download_cancellable("f", &dir, &o, None, &mut |_| {});
                assert!(r.is_ok(), "{r:?}");
                assert_eq!(
                    std::fs::read(dir.join("f")).unwrap(),
                    data,
                    "named on return"
                );
                assert!(take_unnamed("f").is_none());
                assert!(!d.is_downloading("f"));
            });
            scope.spawn(|| {
                let _pool = PoolGuard::install(Arc::new(Interrupt::default()), true);
                let r = d.download_cancellable("g", &dir, &o, None, &mut |_| {});
                assert!(r.is_ok(), "{r:?}");
                assert!(!dir.join("g").exists(), "named by the finisher, not here");
                assert!(d.is_downloading("g"), "claimed until named");
                let u = take_unnamed("g").expect("left unnamed");
                assert!(u.finish().is_ok());
                assert_eq!(std::fs::read(dir.join("g")).unwrap(), &data[..1000]);
                assert!(!d.is_downloading("g"), "released once named");
                assert!(d.share().get("g").is_some_and(|f| f.is_complete()));
                // Dropped without being named: withdrawn, kept for the engine.
                let r = d.download_cancellable("h", &dir, &o, None, &mut |_| {});
                assert!(r.is_ok(), "{r:?}");
                drop(take_unnamed("h").expect("left unnamed"));
                assert!(!dir.join("h").exists());
                assert!(d.share().get("h").is_none(), "no longer served");
                assert!(!d.is_downloading("h"));
                assert_eq!(p2pfs::peer::download::unfinished(&dir), ["h".to_owned()]);
            });
        });
    });
}

/// A file whose only source turns one chunk away once: the fast path
/// gives the file up (no other holder) with the rest verified, and the
/// engine resumes it and fetches that chunk. The file's summary counts
/// every chunk as fetched now, from that source, none as found on disk.
#[test]
fn a_file_left_to_the_engine_counts_what_the_fast_path_fetched() {
    with_timeout(60, || {
        let s = Scratch::new("carried");
        let data = util::pattern(6 * CHUNK as usize, 71);
        let t = tracker();
        let _only = FakeSource::start(t.local_addr(), "f", data.clone(), Style::NotHeldOnce(5));
        let d = node(vec![t.local_addr()]);
        let dir = s.sub("d");
        let o = DownloadOptions {
            sync_folder: false,
            ..opts()
        };
        let out = fetch_set(&d, &["f"], &dir, o);
        let sum = out[0].result.as_ref().expect("fetched");
        assert_eq!(std::fs::read(dir.join("f")).unwrap(), data);
        assert_eq!(sum.chunks_resumed, 0, "{sum:?}");
        assert_eq!(sum.bytes_downloaded, data.len() as u64, "{sum:?}");
        assert_eq!(sum.sources.len(), 1, "{sum:?}");
        assert_eq!(sum.sources[0].chunks, 6, "{sum:?}");
    });
}

/// A set stopped (Ctrl-C) after its first file, with files waiting to be
/// named: every file reported fetched is in place with its bytes, none is
/// under its name otherwise, and no name stays claimed once the set ends.
#[test]
fn a_set_cancelled_while_files_wait_to_be_named_leaves_each_whole_or_absent() {
    with_timeout(60, || {
        let s = Scratch::new("cancel-finish");
        let names: Vec<String> = (0..40).map(|i| format!("f{i:02}")).collect();
        let datas: Vec<Vec<u8>> = (0..40)
            .map(|i| util::pattern(500 + 97 * i, 80 + i as u64))
            .collect();
        for (n, d) in names.iter().zip(&datas) {
            util::write(&s.sub("a"), n, d);
        }
        let (_t, _seed, d, o) = one_seed(&s);
        let dir = s.sub("d");
        let cancel = AtomicBool::new(false);
        let fetch = |name: &str, on: &mut dyn FnMut(&p2pfs::peer::download::Progress)| {
            d.download_cancellable(name, &dir, &o, Some(&cancel), on)
        };
        let plan: Vec<Planned> = names
            .iter()
            .map(|n| Planned {
                name: n.clone(),
                length: None,
            })
            .collect();
        let out = batch::run(&plan, 4, Some(&cancel), &fetch, &mut |_| {}, &mut |_| {
            cancel.store(true, Ordering::SeqCst);
        });
        let fetched = out.iter().filter(|o| o.result.is_ok()).count();
        eprintln!("{fetched} of 40 fetched before the set stopped");
        assert!(fetched > 0, "the first file at least");
        for ((o, n), data) in out.iter().zip(&names).zip(&datas) {
            let on_disk = std::fs::read(dir.join(n)).ok();
            match &o.result {
                Ok(_) => assert_eq!(on_disk.as_ref(), Some(data), "{n} reported fetched"),
                Err(e) => assert!(
                    on_disk.is_none() || on_disk.as_ref() == Some(data),
                    "{n} ({e}) under its name with other bytes"
                ),
            }
            assert!(!d.is_downloading(n), "{n} still claimed");
        }
    });
}
