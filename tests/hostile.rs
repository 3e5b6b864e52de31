//! Review 1's findings against the tracker's liveness probe and both
//! servers' request reading (docs/notes review1.md): a peer in the middle
//! of a long frame is alive; a flood of Registers for one endpoint costs
//! its holder about one probe per quiet period; a probe never waits behind
//! a reply being written; the chunk server refuses a frame larger than any
//! request on its header alone; the tracker's budget for large frames; a
//! file withdrawn because it changed on disk is withdrawn at the tracker.

mod util;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use p2pfs::net::budget::BudgetLimits;
use p2pfs::tracker::{TrackerConfig, server::PROBE_QUIET};
use p2pfs::wire::{self, ErrorCode, FileEntry, Have, Message};
use util::{
    Client, Scratch, connect_from, pattern, seed, tracker, tracker_with, wait_until, with_timeout,
};

fn code(m: &Message) -> Option<ErrorCode> {
    match m {
        Message::Error { code, .. } => Some(*code),
        _ => None,
    }
}

/// A file of `n` 1 KiB chunks, every chunk held (made-up hashes).
fn big_entry(name: &str, n: u32) -> FileEntry {
    FileEntry {
        name: name.into(),
        length: u64::from(n) * 1024,
        chunk_size: 1024,
        hashes: vec![[7; 20]; n as usize],
        have: Have::All,
    }
}

fn register(ep: SocketAddr, files: Vec<FileEntry>) -> Message {
    Message::Register {
        endpoint: ep,
        files,
    }
}

fn encoded(m: &Message) -> Vec<u8> {
    let mut b = Vec::new();
    m.encode(&mut b).unwrap();
    b
}

fn greet(s: &mut TcpStream) {
    let hello = Message::Hello {
        version: wire::PROTOCOL_VERSION,
    };
    wire::write_message(s, &hello).unwrap();
    assert_eq!(wire::read_message(s).unwrap(), Some(hello));
}

/// Review 1, finding 1: a registered peer whose next frame takes seconds
/// to arrive (a big Register over a slow link) is alive: another
/// connection on its IP announcing its port gets `Busy`, and the peer's
/// upload goes through.
#[test]
fn a_peer_sending_a_long_frame_keeps_its_endpoint() {
    with_timeout(90, || {
        let t = tracker();
        let ep = SocketAddr::from(([127, 0, 0, 1], 40_321));
        let mut victim = Client::connect(t.local_addr());
        assert!(matches!(
            victim.request(&register(ep, vec![])),
            Message::RegisterReply { .. }
        ));
        // Let the victim be quiet for longer than PROBE_QUIET first, so
        // that only the bytes of the frame in progress can speak for it.
        thread::sleep(PROBE_QUIET + Duration::from_millis(200));
        // 2^19 chunks (10 MiB of hashes) at 2 MiB/s: about 5 s.
        let bytes = encoded(&register(ep, vec![big_entry("big", 1 << 19)]));
        let mut w = victim.stream.try_clone().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = Arc::clone(&stop);
        let sender = thread::spawn(move || {
            for piece in bytes.chunks(200_000) {
                if s2.load(Ordering::SeqCst) || w.write_all(piece).is_err() {
                    return false;
                }
                thread::sleep(Duration::from_millis(100));
            }
            true
        });
        thread::sleep(Duration::from_secs(1));
        let mut intruder = Client::connect(t.local_addr());
        let reply = intruder.request(&register(ep, vec![]));
        let finished = sender.join().unwrap();
        stop.store(true, Ordering::SeqCst);
        assert_eq!(
            code(&reply),
            Some(ErrorCode::Busy),
            "the intruder took the endpoint of a peer that was sending: {reply:?} \
             (victim's upload finished: {finished})"
        );
        assert!(finished, "the victim's connection was closed mid-frame");
        match victim.recv() {
            Some(Message::RegisterReply { results }) => assert_eq!(results.len(), 1),
            other => panic!("{other:?}"),
        }
    });
}

/// Review 1, finding 3: many connections on the holder's IP registering
/// its endpoint over and over are all refused `Busy`, and the holder is
/// probed about once per quiet period, not once per Register.
#[test]
fn a_register_flood_costs_the_holder_about_one_probe_per_quiet_period() {
    with_timeout(60, || {
        let t = tracker();
        let ep = SocketAddr::from(([127, 0, 0, 1], 40_322));
        let mut victim = Client::connect(t.local_addr());
        assert!(matches!(
            victim.request(&register(ep, vec![])),
            Message::RegisterReply { .. }
        ));
        let probes = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let answering = {
            let (probes, stop) = (Arc::clone(&probes), Arc::clone(&stop));
            victim
                .stream
                .set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match victim.recv_result() {
                        Ok(Some(Message::Keepalive)) => {
                            probes.fetch_add(1, Ordering::SeqCst);
                            victim.send(&Message::Keepalive);
                        }
                        Ok(other) => panic!("victim got {other:?}"),
                        Err(e) if e.is_timeout() => {}
                        Err(e) => panic!("victim: {e}"),
                    }
                }
            })
        };
        let run = Duration::from_secs(3);
        let busy = Arc::new(AtomicUsize::new(0));
        let intruders: Vec<_> = (0..16)
            .map(|_| {
                let (busy, addr) = (Arc::clone(&busy), t.local_addr());
                thread::spawn(move || {
                    let mut c = Client::connect(addr);
                    let start = Instant::now();
                    while start.elapsed() < run {
                        let m = c.request(&register(ep, vec![]));
                        assert_eq!(code(&m), Some(ErrorCode::Busy), "{m:?}");
                        busy.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for i in intruders {
            i.join().unwrap();
        }
        // The holder is still registered (its connection is still open).
        assert_eq!(t.peer_count(), 1);
        stop.store(true, Ordering::SeqCst);
        answering.join().unwrap();
        let (n, b) = (probes.load(Ordering::SeqCst), busy.load(Ordering::SeqCst));
        eprintln!("{b} Busy replies in {run:?}; the holder was probed {n} times");
        assert!(b >= 16);
        // One probe per quiet period at most (plus the first), whatever
        // the number of Registers.
        let most = (run.as_millis() / PROBE_QUIET.as_millis()) as usize + 2;
        assert!(n <= most, "{n} probes for {b} Registers");
    });
}

/// Review 1, finding 5: a probe of a holder to which a long reply is being
/// written (it reads it slowly, or not at all) does not wait for that
/// write: the newcomer is answered at once.
#[test]
fn a_probe_does_not_wait_behind_a_reply_being_written() {
    with_timeout(90, || {
        let t = tracker();
        // A file of 2^19 chunks registered from 127.0.0.2, so a Locate
        // with hashes is answered with about 10 MiB.
        let mut owner = connect_from(Ipv4Addr::new(127, 0, 0, 2), t.local_addr(), None).unwrap();
        greet(&mut owner);
        let other_ep = SocketAddr::from(([127, 0, 0, 2], 40_330));
        wire::write_message(
            &mut owner,
            &register(other_ep, vec![big_entry("big", 1 << 19)]),
        )
        .unwrap();
        assert!(matches!(
            wire::read_message(&mut owner).unwrap(),
            Some(Message::RegisterReply { .. })
        ));
        // X holds 127.0.0.3:40331, asks for that reply and reads none of it.
        let ip = Ipv4Addr::new(127, 0, 0, 3);
        let ep = SocketAddr::from((ip, 40_331));
        let mut x = connect_from(ip, t.local_addr(), Some(4096)).unwrap();
        greet(&mut x);
        wire::write_message(&mut x, &register(ep, vec![])).unwrap();
        assert!(matches!(
            wire::read_message(&mut x).unwrap(),
            Some(Message::RegisterReply { .. })
        ));
        let locate = Message::Locate {
            name: "big".into(),
            with_hashes: true,
        };
        wire::write_message(&mut x, &locate).unwrap();
        thread::sleep(PROBE_QUIET + Duration::from_millis(300));
        let mut intruder = connect_from(ip, t.local_addr(), None).unwrap();
        greet(&mut intruder);
        let started = Instant::now();
        wire::write_message(&mut intruder, &register(ep, vec![])).unwrap();
        let reply = wire::read_message(&mut intruder).unwrap().unwrap();
        eprintln!("answered after {:?}: {reply:?}", started.elapsed());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(code(&reply), Some(ErrorCode::Busy));
        drop(x);
    });
}

/// Review 1, finding 4: the chunk server answers a header announcing a
/// frame larger than its largest request (a ChunkRequest with a maximal
/// name: 1,031) with `Malformed` and closes, without waiting for the
/// payload; a frame of exactly that size is read as usual.
#[test]
fn the_chunk_server_refuses_an_oversized_frame_on_its_header() {
    with_timeout(30, || {
        let p = p2pfs::peer::server::ChunkServer::start(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(p2pfs::peer::share::ShareIndex::new()),
            Arc::new(p2pfs::peer::ratelimit::RateLimiter::unlimited()),
            Default::default(),
        )
        .unwrap();
        let max = p2pfs::limits::PEER_MAX_REQUEST_LEN;
        assert_eq!(max, 1031);
        // At the limit: a ChunkRequest with a 1,024-byte name.
        let mut c = Client::connect(p.local_addr());
        let m = c.request(&Message::ChunkRequest {
            name: "a".repeat(1024),
            index: 0,
        });
        assert_eq!(code(&m), Some(ErrorCode::UnknownFile), "{m:?}");
        // One past it: only the header is sent.
        let mut c = Client::connect(p.local_addr());
        c.stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut header = (max + 1).to_be_bytes().to_vec();
        header.push(0x20);
        c.stream.write_all(&header).unwrap();
        match c.recv_result() {
            Ok(Some(m)) => assert_eq!(code(&m), Some(ErrorCode::Malformed), "{m:?}"),
            other => panic!("no Malformed on the header alone: {other:?}"),
        }
        assert!(c.closed_by_server());
    });
}

/// Review 1, finding 4: the tracker charges large request frames to a
/// budget, per address and in total, when their header arrives: a frame
/// that does not fit is refused `Busy` and the connection closed; one
/// from another address, or after the first is done, is read as usual.
#[test]
fn the_tracker_budgets_large_frames_per_address() {
    with_timeout(60, || {
        let t = tracker_with(TrackerConfig {
            frame_budget: BudgetLimits {
                exempt_len: 16 * 1024,
                total: 3 << 20,
                per_address: 2 << 20,
            },
            ..TrackerConfig::default()
        });
        // About 1.5 MB and 1 MB.
        let a_bytes = encoded(&register(
            SocketAddr::from(([127, 0, 0, 1], 40_341)),
            vec![big_entry("a", 75_000)],
        ));
        let b_msg = register(
            SocketAddr::from(([127, 0, 0, 1], 40_342)),
            vec![big_entry("b", 50_000)],
        );
        // A: header and part of the payload, then it waits.
        let mut a = Client::connect(t.local_addr());
        a.stream.write_all(&a_bytes[..100_000]).unwrap();
        thread::sleep(Duration::from_millis(300));
        // B from the same address: over the address's share.
        let mut b = Client::connect(t.local_addr());
        b.stream.write_all(&encoded(&b_msg)).unwrap();
        match b.recv_result() {
            Ok(Some(m)) => assert_eq!(code(&m), Some(ErrorCode::Busy), "{m:?}"),
            other => panic!("{other:?}"),
        }
        assert!(b.closed_by_server());
        // C from another address fits.
        let mut c = connect_from(Ipv4Addr::new(127, 0, 0, 2), t.local_addr(), None).unwrap();
        greet(&mut c);
        let c_msg = register(
            SocketAddr::from(([127, 0, 0, 2], 40_343)),
            vec![big_entry("c", 50_000)],
        );
        wire::write_message(&mut c, &c_msg).unwrap();
        assert!(matches!(
            wire::read_message(&mut c).unwrap(),
            Some(Message::RegisterReply { .. })
        ));
        // A finishes; then B fits again.
        a.stream.write_all(&a_bytes[100_000..]).unwrap();
        assert!(matches!(a.recv(), Some(Message::RegisterReply { .. })));
        // A's share is given back just after its reply is written, so the
        // test may read the reply first: B is asked again until it fits.
        wait_until(5, "B fits once A is answered", || {
            let mut b = Client::connect(t.local_addr());
            matches!(b.request(&b_msg), Message::RegisterReply { .. })
        });
    });
}

fn listed(c: &mut Client) -> Vec<String> {
    match c.request(&Message::ListFiles) {
        Message::FileList { files, .. } => files.into_iter().map(|f| f.name).collect(),
        other => panic!("unexpected {other:?}"),
    }
}

/// Review 1, finding 6: a sharer that finds a file changed on disk (its
/// bytes no longer match the hashes it announced) answers `NotHeld`, stops
/// serving it and withdraws it at the tracker, so it is neither listed nor
/// located from that peer any more; its other files stay.
#[test]
fn a_file_that_changed_on_disk_is_withdrawn_at_the_tracker() {
    with_timeout(60, || {
        let t = tracker();
        let dir = Scratch::new("changed");
        let data = pattern(100_000, 3);
        let path = util::write(dir.path(), "f.bin", &data);
        util::write(dir.path(), "g.bin", &pattern(1000, 4));
        let s = seed(t.local_addr(), dir.path(), None);
        let mut q = Client::connect(t.local_addr());
        assert_eq!(listed(&mut q), ["f.bin", "g.bin"]);
        // Same size, other bytes.
        let mut other = data.clone();
        other[10] ^= 0xff;
        std::fs::write(&path, &other).unwrap();
        let mut c = Client::connect(s.local_addr());
        let m = c.request(&Message::ChunkRequest {
            name: "f.bin".into(),
            index: 0,
        });
        assert_eq!(code(&m), Some(ErrorCode::NotHeld), "{m:?}");
        let started = Instant::now();
        wait_until(5, "f.bin withdrawn at the tracker", || {
            listed(&mut q) == ["g.bin"]
        });
        eprintln!("withdrawn after {:?}", started.elapsed());
        let m = q.request(&Message::Locate {
            name: "f.bin".into(),
            with_hashes: false,
        });
        assert_eq!(code(&m), Some(ErrorCode::UnknownFile), "{m:?}");
        assert!(s.is_connected());
    });
}

/// Review 1, finding 8a (docs/protocol.md §9): a connection bound to one
/// endpoint that is refused `Busy` for another keeps its own endpoint and
/// files: nothing about it changes.
#[test]
fn a_refused_rebind_leaves_the_connection_as_it_was() {
    with_timeout(30, || {
        let t = tracker();
        let ep = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let mut a = Client::connect(t.local_addr());
        assert!(matches!(
            a.request(&register(ep(40_351), vec![])),
            Message::RegisterReply { .. }
        ));
        let mut b = Client::connect(t.local_addr());
        let mine = util::entry("rb-b", &pattern(5000, 5));
        assert!(matches!(
            b.request(&register(ep(40_352), vec![mine])),
            Message::RegisterReply { .. }
        ));
        // A was heard from just now: alive without a probe.
        let m = b.request(&register(ep(40_351), vec![]));
        assert_eq!(code(&m), Some(ErrorCode::Busy), "{m:?}");
        let m = b.request(&Message::ChunkRegister {
            name: "rb-b".into(),
            index: 0,
        });
        assert_eq!(m, Message::Ok);
        match b.request(&Message::Locate {
            name: "rb-b".into(),
            with_hashes: false,
        }) {
            Message::Locations(l) => {
                let addrs: Vec<SocketAddr> = l.sources.iter().map(|s| s.addr).collect();
                assert_eq!(addrs, [ep(40_352)]);
            }
            other => panic!("{other:?}"),
        }
    });
}
