//! The tracker over real loopback sockets: the whole request set, conflicts,
//! dead peers disappearing, hostile clients contained, many clients at once,
//! and the binary's start/stop.

mod util;

use std::io::Write;
use std::net::SocketAddr;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use p2pfs::chunks;
use p2pfs::tracker::{Tracker, TrackerConfig};
use p2pfs::wire::{self, ErrorCode, FileEntry, FileOutcome, FileSummary, Have, Locations, Message};
use util::{Client, Proc, addr_in, wait_until, with_timeout};

fn start(idle: Duration) -> Tracker {
    Tracker::start(TrackerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        idle_timeout: idle,
        ..TrackerConfig::default()
    })
    .expect("start tracker")
}

fn file(name: &str, data: &[u8], chunk_size: u32) -> FileEntry {
    FileEntry {
        name: name.into(),
        length: data.len() as u64,
        chunk_size,
        hashes: data.chunks(chunk_size as usize).map(chunks::sha1).collect(),
        have: Have::All,
    }
}

fn register(c: &mut Client, port: u16, files: Vec<FileEntry>) -> Vec<FileOutcome> {
    let endpoint = SocketAddr::from(([127, 0, 0, 1], port));
    match c.request(&Message::Register { endpoint, files }) {
        Message::RegisterReply { results } => results,
        other => panic!("expected RegisterReply, got {other:?}"),
    }
}

fn locate(c: &mut Client, name: &str, with_hashes: bool) -> Result<Locations, (ErrorCode, String)> {
    match c.request(&Message::Locate {
        name: name.into(),
        with_hashes,
    }) {
        Message::Locations(l) => Ok(l),
        Message::Error { code, message } => Err((code, message)),
        other => panic!("unexpected {other:?}"),
    }
}

fn list(c: &mut Client) -> Vec<FileSummary> {
    match c.request(&Message::ListFiles) {
        Message::FileList {
            files,
            truncated: false,
        } => files,
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn register_list_locate_chunk_register_leave() {
    with_timeout(30, || {
        let t = start(Duration::from_secs(30));
        let data = util::pattern(5000, 1);
        let mut seed = Client::connect(t.local_addr());
        assert_eq!(
            register(&mut seed, 4001, vec![file("dir/a.bin", &data, 1024)]),
            vec![FileOutcome::Accepted]
        );

        let mut q = Client::connect(t.local_addr());
        assert_eq!(
            list(&mut q),
            vec![FileSummary {
                name: "dir/a.bin".into(),
                length: 5000
            }]
        );
        let l = locate(&mut q, "dir/a.bin", true).unwrap();
        assert_eq!((l.length, l.chunk_size, l.chunk_count), (5000, 1024, 5));
        let expected: Vec<_> = data.chunks(1024).map(chunks::sha1).collect();
        assert_eq!(l.hashes.as_deref(), Some(&expected[..]));
        assert_eq!(l.sources.len(), 1);
        assert_eq!(l.sources[0].addr, "127.0.0.1:4001".parse().unwrap());
        assert_eq!(l.sources[0].have, vec![0xf8]);
        assert_eq!(locate(&mut q, "dir/a.bin", false).unwrap().hashes, None);

        // A downloader binds its endpoint with no files, then registers chunks.
        let mut dl = Client::connect(t.local_addr());
        assert!(register(&mut dl, 4002, vec![]).is_empty());
        assert_eq!(
            dl.request(&Message::ChunkRegister {
                name: "dir/a.bin".into(),
                index: 3
            }),
            Message::Ok
        );
        assert_eq!(
            dl.request(&Message::ChunkRegister {
                name: "dir/a.bin".into(),
                index: 3
            }),
            Message::Ok
        );
        let l = locate(&mut q, "dir/a.bin", false).unwrap();
        let d = l
            .sources
            .iter()
            .find(|s| s.addr.port() == 4002)
            .expect("downloader is a source");
        assert_eq!(d.have, vec![0x10]);

        // Out of range, unknown file: refused, connection stays usable.
        assert!(matches!(
            dl.request(&Message::ChunkRegister {
                name: "dir/a.bin".into(),
                index: 5
            }),
            Message::Error {
                code: ErrorCode::BadIndex,
                ..
            }
        ));
        assert!(matches!(
            dl.request(&Message::ChunkRegister {
                name: "nope".into(),
                index: 0
            }),
            Message::Error {
                code: ErrorCode::UnknownFile,
                ..
            }
        ));
        assert_eq!(
            locate(&mut q, "nope", false).unwrap_err().0,
            ErrorCode::UnknownFile
        );

        // Leave: Ok, then the tracker closes, and the peer is gone.
        assert_eq!(seed.request(&Message::Leave), Message::Ok);
        assert!(seed.closed_by_server());
        let l = locate(&mut q, "dir/a.bin", false).unwrap();
        assert_eq!(l.sources.len(), 1);
        assert_eq!(l.sources[0].addr.port(), 4002);
        assert_eq!(dl.request(&Message::Leave), Message::Ok);
        assert!(list(&mut q).is_empty());
    });
}

#[test]
fn chunk_register_or_leave_before_register_is_refused() {
    with_timeout(30, || {
        let t = start(Duration::from_secs(30));
        let mut c = Client::connect(t.local_addr());
        assert!(matches!(
            c.request(&Message::ChunkRegister {
                name: "a".into(),
                index: 0
            }),
            Message::Error {
                code: ErrorCode::NotRegistered,
                ..
            }
        ));
        // A peer-protocol message sent to the tracker is refused, not fatal.
        assert!(matches!(
            c.request(&Message::ChunkRequest {
                name: "a".into(),
                index: 0
            }),
            Message::Error {
                code: ErrorCode::Unexpected,
                ..
            }
        ));
        assert_eq!(c.request(&Message::Leave), Message::Ok);
    });
}

#[test]
fn conflicting_and_invalid_registrations_are_refused_per_file() {
    with_timeout(30, || {
        let t = start(Duration::from_secs(30));
        let a = util::pattern(3000, 1);
        let b = util::pattern(3000, 2);
        let mut p1 = Client::connect(t.local_addr());
        assert_eq!(
            register(&mut p1, 4001, vec![file("a", &a, 1024)]),
            vec![FileOutcome::Accepted]
        );
        let mut p2 = Client::connect(t.local_addr());
        let names = ["../x", "/etc/passwd", "a/../../b", "a\\b", "a\0b", ""];
        let mut files = vec![
            file("a", &b, 1024),
            file("a", &a, 1024),
            file("ok", &b, 1024),
        ];
        files.extend(names.iter().map(|n| file(n, &b, 1024)));
        let mut bad_geometry = file("geo", &b, 1024);
        bad_geometry.hashes.pop();
        files.push(bad_geometry);
        let r = register(&mut p2, 4002, files);
        assert!(
            matches!(
                &r[0],
                FileOutcome::Refused {
                    code: ErrorCode::Conflict,
                    ..
                }
            ),
            "{:?}",
            r[0]
        );
        assert_eq!(
            r[1],
            FileOutcome::Accepted,
            "identical content is another source"
        );
        assert_eq!(r[2], FileOutcome::Accepted);
        for (i, n) in names.iter().enumerate() {
            assert!(
                matches!(
                    &r[3 + i],
                    FileOutcome::Refused {
                        code: ErrorCode::InvalidName,
                        ..
                    }
                ),
                "{n:?}: {:?}",
                r[3 + i]
            );
        }
        assert!(matches!(
            r.last().unwrap(),
            FileOutcome::Refused {
                code: ErrorCode::BadGeometry,
                ..
            }
        ));
        let mut q = Client::connect(t.local_addr());
        let names: Vec<_> = list(&mut q).into_iter().map(|f| f.name).collect();
        assert_eq!(names, vec!["a", "ok"]);
        assert_eq!(locate(&mut q, "a", false).unwrap().sources.len(), 2);
    });
}

#[test]
fn the_observed_address_is_recorded_not_the_announced_one() {
    with_timeout(30, || {
        let t = start(Duration::from_secs(30));
        let mut p = Client::connect(t.local_addr());
        let data = util::pattern(100, 1);
        let endpoint: SocketAddr = "10.9.9.9:4444".parse().unwrap();
        let reply = p.request(&Message::Register {
            endpoint,
            files: vec![file("f", &data, 1024)],
        });
        assert!(matches!(reply, Message::RegisterReply { .. }));
        let mut q = Client::connect(t.local_addr());
        let l = locate(&mut q, "f", false).unwrap();
        assert_eq!(l.sources[0].addr, "127.0.0.1:4444".parse().unwrap());
    });
}

#[test]
fn a_dropped_connection_removes_the_peer_and_its_chunks() {
    with_timeout(30, || {
        let t = start(Duration::from_secs(30));
        let data = util::pattern(3000, 3);
        let mut p1 = Client::connect(t.local_addr());
        register(&mut p1, 4001, vec![file("a", &data, 1024)]);
        let mut p2 = Client::connect(t.local_addr());
        register(&mut p2, 4002, vec![]);
        assert_eq!(
            p2.request(&Message::ChunkRegister {
                name: "a".into(),
                index: 0
            }),
            Message::Ok
        );
        let mut q = Client::connect(t.local_addr());
        assert_eq!(locate(&mut q, "a", false).unwrap().sources.len(), 2);
        drop(p1);
        wait_until(10, "p1 removed", || {
            locate(&mut q, "a", false).map(|l| l.sources.len()) == Ok(1)
        });
        drop(p2);
        wait_until(10, "file forgotten", || list(&mut q).is_empty());
        assert_eq!(
            locate(&mut q, "a", false).unwrap_err().0,
            ErrorCode::UnknownFile
        );
    });
}

#[test]
fn a_silent_peer_is_dropped_after_the_idle_timeout_and_keepalives_keep_it() {
    with_timeout(30, || {
        let t = start(Duration::from_millis(400));
        let data = util::pattern(3000, 4);
        let mut silent = Client::connect(t.local_addr());
        register(&mut silent, 4001, vec![file("s", &data, 1024)]);
        let mut alive = Client::connect(t.local_addr());
        register(&mut alive, 4002, vec![file("k", &data, 1024)]);
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(1500) {
            alive.send(&Message::Keepalive);
            thread::sleep(Duration::from_millis(100));
        }
        assert!(
            silent.closed_by_server(),
            "the silent connection was closed"
        );
        let names: Vec<_> = list(&mut alive).into_iter().map(|f| f.name).collect();
        assert_eq!(names, vec!["k"]);
    });
}

#[test]
fn hostile_clients_get_an_error_and_others_keep_being_served() {
    with_timeout(60, || {
        let t = start(Duration::from_secs(2));
        let data = util::pattern(3000, 5);
        let mut good = Client::connect(t.local_addr());
        register(&mut good, 4001, vec![file("g", &data, 1024)]);

        // Random bytes as the first frame.
        let mut junk = Client::raw(t.local_addr());
        junk.stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        assert!(matches!(
            junk.recv_result(),
            Ok(Some(Message::Error {
                code: ErrorCode::Malformed,
                ..
            }))
        ));
        assert!(junk.closed_by_server());

        // A 4 GiB length prefix after a proper Hello.
        let mut huge = Client::connect(t.local_addr());
        huge.stream
            .write_all(&[0xff, 0xff, 0xff, 0xff, 0x12])
            .unwrap();
        assert!(matches!(
            huge.recv_result(),
            Ok(Some(Message::Error {
                code: ErrorCode::Malformed,
                ..
            }))
        ));

        // Wrong version: a clear error, then closed.
        let mut old = Client::raw(t.local_addr());
        assert!(matches!(
            old.request(&Message::Hello { version: 99 }),
            Message::Error {
                code: ErrorCode::BadVersion,
                ..
            }
        ));
        assert!(old.closed_by_server());

        // Not starting with Hello.
        let mut rude = Client::raw(t.local_addr());
        assert!(matches!(
            rude.request(&Message::ListFiles),
            Message::Error {
                code: ErrorCode::Unexpected,
                ..
            }
        ));

        // Half a frame, then nothing; and idle connections. Meanwhile the
        // good client is answered promptly.
        let mut half = Vec::new();
        for _ in 0..20 {
            let mut c = Client::connect(t.local_addr());
            c.stream.write_all(&[0, 0, 0, 100, 0x12, 1, 2]).unwrap();
            half.push(c);
        }
        let idle: Vec<_> = (0..20).map(|_| Client::raw(t.local_addr())).collect();
        for _ in 0..20 {
            let start = Instant::now();
            assert_eq!(list(&mut good).len(), 1);
            assert!(start.elapsed() < Duration::from_secs(1));
        }
        // The half-open and idle ones are closed after the idle timeout.
        for c in half.iter_mut() {
            assert!(c.closed_by_server());
        }
        drop(idle);
        drop(good);
        // Every hostile connection is reaped too (they hold no registration).
        wait_until(10, "connections reaped", || t.connection_count() == 0);
    });
}

#[test]
fn two_hundred_concurrent_clients_register_and_query() {
    with_timeout(120, || {
        let t = start(Duration::from_secs(30));
        let addr = t.local_addr();
        let shared = util::pattern(20 * 1024, 9);
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(200));
        let handles: Vec<_> = (0..200u16)
            .map(|i| {
                let shared = shared.clone();
                let barrier = barrier.clone();
                thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn(move || {
                        let mut c = Client::connect(addr);
                        barrier.wait();
                        let own = util::pattern(4096, 100 + u64::from(i));
                        let r = register(
                            &mut c,
                            5000 + i,
                            vec![
                                file("common", &shared, 1024),
                                file(&format!("own/{i}"), &own, 1024),
                            ],
                        );
                        assert_eq!(r, vec![FileOutcome::Accepted, FileOutcome::Accepted]);
                        for _ in 0..5 {
                            let l = locate(&mut c, "common", false).unwrap();
                            assert!(
                                !l.sources.is_empty()
                                    && l.sources.len() <= wire::MAX_SOURCES_PER_REPLY
                            );
                            let l = locate(&mut c, &format!("own/{i}"), true).unwrap();
                            assert_eq!(l.sources.len(), 1);
                            assert_eq!(l.sources[0].addr.port(), 5000 + i);
                        }
                        c
                    })
                    .unwrap()
            })
            .collect();
        let clients: Vec<Client> = handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect();
        assert_eq!(t.peer_count(), 200);
        let mut q = Client::connect(addr);
        assert_eq!(list(&mut q).len(), 201);
        assert_eq!(
            locate(&mut q, "common", false).unwrap().sources.len(),
            wire::MAX_SOURCES_PER_REPLY
        );
        drop(clients);
        wait_until(20, "all peers gone", || t.peer_count() == 0);
    });
}

#[test]
fn shutdown_closes_connections_and_joins() {
    with_timeout(30, || {
        let mut t = start(Duration::from_secs(30));
        let mut c = Client::connect(t.local_addr());
        register(&mut c, 4001, vec![]);
        let started = Instant::now();
        t.shutdown();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(c.closed_by_server());
    });
}

#[test]
fn binary_starts_serves_and_stops_on_sigterm() {
    with_timeout(60, || {
        let mut p = Proc::spawn(
            "tracker",
            Command::new(env!("CARGO_BIN_EXE_tracker")).args(["--listen", "127.0.0.1:0"]),
        );
        let addr = addr_in(&p.wait_line("listening on"));
        let mut c = Client::connect(addr);
        assert!(list(&mut c).is_empty());
        p.signal("TERM");
        assert_eq!(p.wait_exit(10), Some(0));

        let bad = Command::new(env!("CARGO_BIN_EXE_tracker"))
            .args(["--listen", "not-an-address"])
            .output()
            .unwrap();
        assert!(!bad.status.success());
        let help = Command::new(env!("CARGO_BIN_EXE_tracker"))
            .arg("--help")
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&help.stdout).contains("--listen"));
    });
}

/// Open descriptors of process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// A connection costs the tracker one file descriptor, not two: with the
/// usual limit of 20,000 that is the difference between about 10,000 and
/// about 20,000 peers (docs/scaling.md).
#[test]
fn each_connection_holds_one_file_descriptor() {
    with_timeout(60, || {
        let mut p = Proc::spawn(
            "tracker",
            Command::new(env!("CARGO_BIN_EXE_tracker")).args(["--listen", "127.0.0.1:0"]),
        );
        let addr = addr_in(&p.wait_line("listening on"));
        let pid = p.child.id();
        let mut first = Client::connect(addr);
        assert!(list(&mut first).is_empty());
        let before = open_fds(pid);
        let n = 40;
        let mut clients: Vec<Client> = (0..n).map(|_| Client::connect(addr)).collect();
        for c in &mut clients {
            assert!(list(c).is_empty()); // served: its thread is running
        }
        let added = open_fds(pid) - before;
        assert!(
            (n..n + 4).contains(&added),
            "{n} connections added {added} descriptors"
        );
        drop(clients);
        p.signal("TERM");
        assert_eq!(p.wait_exit(10), Some(0));
    });
}
