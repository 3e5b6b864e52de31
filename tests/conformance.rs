//! What docs/protocol.md promises about the servers, checked byte for byte
//! the way an outside client would see it: registrations that another
//! connection cannot take over, `Error{Malformed}` for every frame that
//! cannot be decoded, and the answers to the questions an outside client
//! asked (issue 10).

mod util;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use p2pfs::peer::ratelimit::RateLimiter;
use p2pfs::peer::server::{ChunkServer, ServerConfig};
use p2pfs::peer::share::ShareIndex;
use p2pfs::wire::{ErrorCode, FileOutcome, Locations, Message};
use util::{Client, Scratch, entry, pattern, seed, tracker, wait_until, with_timeout};

fn register_bytes(port: u16) -> Vec<u8> {
    // The intruder's Register from issue 10: endpoint 0.0.0.0:port, no files.
    let p = port.to_be_bytes();
    vec![0, 0, 0, 0x0a, 0x10, 4, 0, 0, 0, 0, p[0], p[1], 0, 0]
}

fn locate(c: &mut Client, name: &str) -> Option<Locations> {
    match c.request(&Message::Locate {
        name: name.into(),
        with_hashes: false,
    }) {
        Message::Locations(l) => Some(l),
        Message::Error {
            code: ErrorCode::UnknownFile,
            ..
        } => None,
        other => panic!("unexpected {other:?}"),
    }
}

fn listed(c: &mut Client) -> Vec<String> {
    match c.request(&Message::ListFiles) {
        Message::FileList { files, .. } => files.into_iter().map(|f| f.name).collect(),
        other => panic!("unexpected {other:?}"),
    }
}

fn code(m: &Message) -> Option<ErrorCode> {
    match m {
        Message::Error { code, .. } => Some(*code),
        _ => None,
    }
}

/// Issue 10, item 1: another process on the same IP announcing a sharing
/// peer's port changes nothing the peer or a downloader sees.
#[test]
fn an_intruder_cannot_replace_a_live_registration() {
    with_timeout(60, || {
        let t = tracker();
        let dir = Scratch::new("intruder");
        let data = pattern(300_000, 1);
        util::write(dir.path(), "victim.bin", &data);
        let victim = seed(t.local_addr(), dir.path(), None);
        let port = victim.local_addr().port();
        let mut q = Client::connect(t.local_addr());
        assert_eq!(listed(&mut q), vec!["victim.bin".to_string()]);

        let mut intruder = Client::connect(t.local_addr());
        intruder.stream.write_all(&register_bytes(port)).unwrap();
        let started = Instant::now();
        let reply = intruder.recv().expect("a reply to the Register");
        assert_eq!(code(&reply), Some(ErrorCode::Busy), "{reply:?}");
        eprintln!("intruder refused after {:?}", started.elapsed());
        // The victim answered the probe at once; the intruder waited less
        // than the probe timeout.
        assert!(started.elapsed() < Duration::from_secs(1));
        // The refused Register bound nothing: ChunkRegister is refused.
        let m = intruder.request(&Message::ChunkRegister {
            name: "victim.bin".into(),
            index: 0,
        });
        assert_eq!(code(&m), Some(ErrorCode::NotRegistered), "{m:?}");

        // Nothing changed, now and a while later, for the victim and for
        // anyone asking the tracker.
        for _ in 0..2 {
            assert_eq!(listed(&mut q), vec!["victim.bin".to_string()]);
            let l = locate(&mut q, "victim.bin").expect("still located");
            let addrs: Vec<SocketAddr> = l.sources.iter().map(|s| s.addr).collect();
            assert_eq!(addrs, vec![victim.local_addr()]);
            assert!(victim.is_connected());
            assert_eq!(t.peer_count(), 1);
            std::thread::sleep(Duration::from_millis(1500));
        }
        drop(intruder);
        // And a downloader still gets the file from the victim.
        let mut d = Client::connect(victim.local_addr());
        match d.request(&Message::ChunkRequest {
            name: "victim.bin".into(),
            index: 0,
        }) {
            Message::ChunkData {
                index: 0,
                data: got,
            } => {
                assert_eq!(got, data[..got.len()]);
            }
            other => panic!("{other:?}"),
        }
    });
}

/// Issue 10, item 1: a peer whose old control connection died without the
/// tracker noticing (here: it stays open but never answers again) is
/// listed again within 2 s of reconnecting, and the tracker closes the
/// old connection.
#[test]
fn a_half_open_registration_gives_way_to_the_reconnecting_peer_within_2s() {
    with_timeout(60, || {
        let t = tracker();
        let data = pattern(200_000, 2);
        let port = 40_123;
        let mut old = Client::connect(t.local_addr());
        let ep = SocketAddr::from(([127, 0, 0, 1], port));
        match old.request(&Message::Register {
            endpoint: ep,
            files: vec![entry("mine.bin", &data)],
        }) {
            Message::RegisterReply { results } => assert_eq!(results, vec![FileOutcome::Accepted]),
            other => panic!("{other:?}"),
        }
        // `old` now goes silent: it reads nothing and answers nothing. A
        // connection heard from within PROBE_QUIET counts as alive without
        // a probe; a dead one has been silent longer than that by the time
        // its peer reconnects.
        std::thread::sleep(p2pfs::tracker::server::PROBE_QUIET);

        let started = Instant::now();
        let mut new = Client::connect(t.local_addr());
        match new.request(&Message::Register {
            endpoint: ep,
            files: vec![entry("mine.bin", &data)],
        }) {
            Message::RegisterReply { results } => assert_eq!(results, vec![FileOutcome::Accepted]),
            other => panic!("{other:?}"),
        }
        let mut q = Client::connect(t.local_addr());
        let l = locate(&mut q, "mine.bin").expect("listed again");
        assert_eq!(l.sources.len(), 1);
        assert_eq!(l.sources[0].addr, ep);
        eprintln!(
            "reconnected peer listed again after {:?}",
            started.elapsed()
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(t.peer_count(), 1);

        // The old connection got the probe, then was closed by the tracker.
        old.stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        assert_eq!(old.recv_result().unwrap(), Some(Message::Keepalive));
        match old.recv_result() {
            Ok(None) => {}
            Err(e) if e.is_disconnect() && !e.is_timeout() => {}
            other => panic!("the old connection is still open: {other:?}"),
        }
        // The new registration is the live one: it is served as usual.
        let m = new.request(&Message::ChunkRegister {
            name: "mine.bin".into(),
            index: 0,
        });
        assert_eq!(m, Message::Ok);
    });
}

/// The same endpoint registered twice by the same connection is simply a
/// re-registration (no probe, no wait).
#[test]
fn re_registering_ones_own_endpoint_needs_no_probe() {
    with_timeout(30, || {
        let t = tracker();
        let mut c = Client::connect(t.local_addr());
        let started = Instant::now();
        for _ in 0..3 {
            c.stream.write_all(&register_bytes(40_200)).unwrap();
            assert_eq!(
                c.recv().unwrap(),
                Message::RegisterReply { results: vec![] }
            );
        }
        assert!(started.elapsed() < Duration::from_millis(500));
        wait_until(5, "one peer", || t.peer_count() == 1);
    });
}

fn chunk_server() -> ChunkServer {
    ChunkServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(ShareIndex::new()),
        Arc::new(RateLimiter::unlimited()),
        ServerConfig::default(),
    )
    .expect("chunk server")
}

/// Sends `bytes` (after a Hello if `greet`) and expects `Error{code}` and
/// then the server closing the connection, within 5 s.
fn expect_error_then_close(addr: SocketAddr, greet: bool, bytes: &[u8], code_: ErrorCode) {
    let mut c = if greet {
        Client::connect(addr)
    } else {
        Client::raw(addr)
    };
    c.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    c.stream.write_all(bytes).unwrap();
    match c.recv_result() {
        Ok(Some(m)) => assert_eq!(code(&m), Some(code_), "{addr} after {bytes:02x?}: {m:?}"),
        other => panic!("{addr} after {bytes:02x?}: no error reply: {other:?}"),
    }
    match c.recv_result() {
        Ok(None) => {}
        Err(e) if e.is_disconnect() && !e.is_timeout() => {}
        other => panic!("{addr} after {bytes:02x?}: not closed: {other:?}"),
    }
}

/// Issue 10, item 3: a whole frame whose payload cannot be decoded gets
/// `Error{Malformed}` and a close from both servers, as docs/protocol.md
/// §2 and §8 say; only a stream that ends inside a frame is closed without
/// a word.
#[test]
fn undecodable_frames_get_malformed_then_close_on_both_servers() {
    with_timeout(60, || {
        let t = tracker();
        let p = chunk_server();
        let after_hello: &[(&str, &[u8])] = &[
            (
                "Locate whose name claims 500 bytes, 3 present",
                &[0, 0, 0, 6, 0x14, 0x01, 0xf4, 0x61, 0x62, 0x63],
            ),
            (
                "ChunkRequest whose name claims 500 bytes, 3 present",
                &[0, 0, 0, 6, 0x20, 0x01, 0xf4, 0x61, 0x62, 0x63],
            ),
            (
                "Register claiming 5 files, carrying none",
                &[0, 0, 0, 0x0a, 0x10, 4, 0, 0, 0, 0, 0x9c, 0x40, 0, 5],
            ),
            (
                "ChunkRequest with a 2-byte index",
                &[0, 0, 0, 6, 0x20, 0, 1, 0x61, 0, 0],
            ),
            (
                "Locate without its flag",
                &[0, 0, 0, 6, 0x14, 0, 3, 0x61, 0x62, 0x63],
            ),
            ("a 4 GiB - 1 length prefix", &[0xff, 0xff, 0xff, 0xff, 0x12]),
        ];
        for addr in [t.local_addr(), p.local_addr()] {
            for (what, bytes) in after_hello {
                eprintln!("{addr}: {what}");
                expect_error_then_close(addr, true, bytes, ErrorCode::Malformed);
            }
            // A first Hello of 3 bytes: type and 2 bytes of its magic.
            expect_error_then_close(
                addr,
                false,
                &[0, 0, 0, 3, 0x01, 0x50, 0x32],
                ErrorCode::Malformed,
            );
        }
        // Both still serve.
        let mut c = Client::connect(t.local_addr());
        assert!(matches!(
            c.request(&Message::ListFiles),
            Message::FileList { .. }
        ));
        let mut c = Client::connect(p.local_addr());
        let m = c.request(&Message::ChunkRequest {
            name: "x".into(),
            index: 0,
        });
        assert_eq!(code(&m), Some(ErrorCode::UnknownFile));
    });
}

/// A stream that ends inside a frame is the client going away: closed
/// without a reply (docs/protocol.md §2).
#[test]
fn a_stream_that_ends_inside_a_frame_is_closed_without_a_reply() {
    with_timeout(30, || {
        let t = tracker();
        let p = chunk_server();
        for addr in [t.local_addr(), p.local_addr()] {
            let mut c = Client::connect(addr);
            c.stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            // Claims 9 bytes, sends 4, then closes its side.
            c.stream.write_all(&[0, 0, 0, 9, 0x14, 0, 3, 0x61]).unwrap();
            c.stream.shutdown(std::net::Shutdown::Write).unwrap();
            match c.recv_result() {
                Ok(None) => {}
                Err(e) if e.is_disconnect() && !e.is_timeout() => {}
                other => panic!("{addr}: {other:?}"),
            }
        }
    });
}

// ---- Issue 10, item 5: the questions docs/protocol.md must answer ---------

fn register_at(c: &mut Client, port: u16, files: Vec<p2pfs::wire::FileEntry>) -> Message {
    c.request(&Message::Register {
        endpoint: SocketAddr::from(([0, 0, 0, 0], port)),
        files,
    })
}

fn expect_closed(c: &mut Client) {
    c.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    match c.recv_result() {
        Ok(None) => {}
        Err(e) if e.is_disconnect() && !e.is_timeout() => {}
        other => panic!("not closed: {other:?}"),
    }
}

/// Registering another port rebinds: the old endpoint is released at once
/// (another connection takes it without a probe) and nothing is closed.
#[test]
fn rebinding_an_endpoint_releases_the_old_one_and_closes_nothing() {
    with_timeout(30, || {
        let t = tracker();
        let data = pattern(5000, 3);
        let mut a = Client::connect(t.local_addr());
        assert!(matches!(
            register_at(&mut a, 40_301, vec![entry("r.bin", &data)]),
            Message::RegisterReply { .. }
        ));
        assert!(matches!(
            register_at(&mut a, 40_302, vec![]),
            Message::RegisterReply { .. }
        ));
        let mut q = Client::connect(t.local_addr());
        let l = locate(&mut q, "r.bin").expect("still held");
        let ports: Vec<u16> = l.sources.iter().map(|s| s.addr.port()).collect();
        assert_eq!(ports, vec![40_302]);
        // The released port is free: no probe, so a is not asked anything.
        let mut b = Client::connect(t.local_addr());
        let started = Instant::now();
        assert!(matches!(
            register_at(&mut b, 40_301, vec![]),
            Message::RegisterReply { .. }
        ));
        assert!(started.elapsed() < Duration::from_millis(500));
        // a's connection is still open and registered.
        let m = a.request(&Message::ChunkRegister {
            name: "r.bin".into(),
            index: 0,
        });
        assert_eq!(m, Message::Ok);
    });
}

/// A name over 1,024 bytes cannot be encoded in a valid frame: the whole
/// Register is `Malformed`, the connection is closed, and none of its
/// files is registered (§5).
#[test]
fn a_name_over_the_limit_makes_the_whole_register_malformed() {
    with_timeout(30, || {
        let t = tracker();
        let data = pattern(3000, 4);
        // Encode a valid Register, then lengthen the second name by hand.
        let mut frame = Vec::new();
        Message::Register {
            endpoint: SocketAddr::from(([0, 0, 0, 0], 40_400)),
            files: vec![entry("good.bin", &data), entry(&"n".repeat(1024), &data)],
        }
        .encode(&mut frame)
        .unwrap();
        let at = frame
            .windows(3)
            .position(|w| w == [0x04, 0x00, b'n'])
            .expect("the long name's length field");
        frame[at] = 0x04;
        frame[at + 1] = 0x01; // 1,025
        frame.insert(at + 2, b'n');
        let len = (frame.len() - 4) as u32;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        let mut c = Client::connect(t.local_addr());
        c.stream.write_all(&frame).unwrap();
        let m = c.recv().expect("a reply");
        assert_eq!(code(&m), Some(ErrorCode::Malformed), "{m:?}");
        expect_closed(&mut c);
        let mut q = Client::connect(t.local_addr());
        assert!(listed(&mut q).is_empty());
        assert_eq!(t.peer_count(), 0);
    });
}

/// Leave before any Register: `Ok`, then the tracker closes.
#[test]
fn leave_before_register_is_ok_then_closed() {
    with_timeout(30, || {
        let t = tracker();
        let mut c = Client::connect(t.local_addr());
        assert_eq!(c.request(&Message::Leave), Message::Ok);
        expect_closed(&mut c);
    });
}

/// Keepalive, Error and Ok sent to a server: `Error{Unexpected}`, and the
/// connection stays open; except that the tracker answers nothing to a
/// Keepalive.
#[test]
fn keepalive_error_and_ok_sent_to_the_servers() {
    with_timeout(30, || {
        let t = tracker();
        let p = chunk_server();
        let err = Message::Error {
            code: ErrorCode::Internal,
            message: "x".into(),
        };
        let mut c = Client::connect(t.local_addr());
        c.send(&Message::Keepalive);
        for m in [err.clone(), Message::Ok] {
            let r = c.request(&m);
            assert_eq!(code(&r), Some(ErrorCode::Unexpected), "{m:?}: {r:?}");
        }
        // Nothing was answered to the Keepalive: the next reply is the
        // ListFiles reply.
        assert!(matches!(
            c.request(&Message::ListFiles),
            Message::FileList { .. }
        ));
        let mut c = Client::connect(p.local_addr());
        for m in [Message::Keepalive, err, Message::Ok] {
            let r = c.request(&m);
            assert_eq!(code(&r), Some(ErrorCode::Unexpected), "{m:?}: {r:?}");
        }
        let r = c.request(&Message::ChunkRequest {
            name: "x".into(),
            index: 0,
        });
        assert_eq!(code(&r), Some(ErrorCode::UnknownFile));
    });
}

/// The sole holder of a file re-registering it with other content gets
/// `Conflict` for that file; the old content stays registered.
#[test]
fn a_sole_holder_re_registering_new_content_gets_conflict() {
    with_timeout(30, || {
        let t = tracker();
        let old = pattern(3000, 5);
        let new = pattern(4000, 6);
        let mut c = Client::connect(t.local_addr());
        register_at(&mut c, 40_500, vec![entry("s.bin", &old)]);
        match register_at(&mut c, 40_500, vec![entry("s.bin", &new)]) {
            Message::RegisterReply { results } => match &results[..] {
                [FileOutcome::Refused { code, .. }] => assert_eq!(*code, ErrorCode::Conflict),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
        let mut q = Client::connect(t.local_addr());
        assert_eq!(locate(&mut q, "s.bin").expect("kept").length, 3000);
        // Once it has left, the name is free for the new content.
        assert_eq!(c.request(&Message::Leave), Message::Ok);
        let mut c = Client::connect(t.local_addr());
        match register_at(&mut c, 40_500, vec![entry("s.bin", &new)]) {
            Message::RegisterReply { results } => assert_eq!(results, vec![FileOutcome::Accepted]),
            other => panic!("{other:?}"),
        }
    });
}

/// Tracker requests may be pipelined: written in one go, answered one by
/// one in order (a Keepalive gets nothing).
#[test]
fn tracker_requests_may_be_pipelined() {
    with_timeout(30, || {
        let t = tracker();
        let data = pattern(3000, 7);
        let reqs = [
            Message::Register {
                endpoint: SocketAddr::from(([0, 0, 0, 0], 40_600)),
                files: vec![entry("p.bin", &data)],
            },
            Message::ChunkRegister {
                name: "p.bin".into(),
                index: 0,
            },
            Message::Keepalive,
            Message::ListFiles,
            Message::Locate {
                name: "p.bin".into(),
                with_hashes: false,
            },
            Message::Locate {
                name: "nope".into(),
                with_hashes: false,
            },
            Message::Leave,
        ];
        let mut bytes = Vec::new();
        for m in &reqs {
            m.encode(&mut bytes).unwrap();
        }
        let mut c = Client::connect(t.local_addr());
        c.stream.write_all(&bytes).unwrap();
        assert!(matches!(c.recv(), Some(Message::RegisterReply { .. })));
        assert_eq!(c.recv(), Some(Message::Ok));
        assert!(matches!(c.recv(), Some(Message::FileList { files, .. }) if files.len() == 1));
        assert!(matches!(c.recv(), Some(Message::Locations(_))));
        assert_eq!(
            c.recv().as_ref().and_then(code),
            Some(ErrorCode::UnknownFile)
        );
        assert_eq!(c.recv(), Some(Message::Ok));
        expect_closed(&mut c);
    });
}

/// Withdraw (protocol.md §9): `NotRegistered` before any Register; then
/// `Ok`, whether the name was held or not; a file leaves the list with its
/// last holder, after which other content under its name is accepted; the
/// connection stays open and registered throughout.
#[test]
fn withdraw_answers_and_frees_the_name() {
    with_timeout(30, || {
        let t = tracker();
        let old = pattern(3000, 5);
        let new = pattern(4000, 6);
        let w = |name: &str| Message::Withdraw { name: name.into() };
        let mut a = Client::connect(t.local_addr());
        assert_eq!(
            code(&a.request(&w("s.bin"))),
            Some(ErrorCode::NotRegistered)
        );
        register_at(&mut a, 40_700, vec![entry("s.bin", &old), entry("e", &[])]);
        let mut b = Client::connect(t.local_addr());
        register_at(&mut b, 40_701, vec![entry("s.bin", &old)]);
        let mut q = Client::connect(t.local_addr());
        assert_eq!(locate(&mut q, "s.bin").unwrap().sources.len(), 2);
        assert_eq!(a.request(&w("s.bin")), Message::Ok);
        let l = locate(&mut q, "s.bin").expect("b still holds it");
        assert_eq!(l.sources.len(), 1);
        assert_eq!(l.sources[0].addr.port(), 40_701);
        // Again, a name never held, a name that breaks the rules: all Ok.
        for n in ["s.bin", "nope", "../x"] {
            assert_eq!(a.request(&w(n)), Message::Ok, "{n}");
        }
        // While b holds the old content, new content is a Conflict.
        match register_at(&mut a, 40_700, vec![entry("s.bin", &new)]) {
            Message::RegisterReply { results } => match &results[..] {
                [FileOutcome::Refused { code, .. }] => assert_eq!(*code, ErrorCode::Conflict),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
        // The last holder withdraws: unlisted, and the new content is taken.
        assert_eq!(b.request(&w("s.bin")), Message::Ok);
        assert_eq!(listed(&mut q), vec!["e".to_string()]);
        assert!(locate(&mut q, "s.bin").is_none());
        match register_at(&mut a, 40_700, vec![entry("s.bin", &new)]) {
            Message::RegisterReply { results } => assert_eq!(results, vec![FileOutcome::Accepted]),
            other => panic!("{other:?}"),
        }
        assert_eq!(locate(&mut q, "s.bin").unwrap().length, 4000);
        // A 0-byte file is withdrawn the same way.
        assert_eq!(a.request(&w("e")), Message::Ok);
        assert_eq!(listed(&mut q), vec!["s.bin".to_string()]);
        assert_eq!(t.peer_count(), 2);
        assert_eq!(a.request(&Message::Leave), Message::Ok);
    });
}
