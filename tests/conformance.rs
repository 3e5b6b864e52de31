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
        assert!(started.elapsed() < Duration::from_millis(900));
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
        // `old` now goes silent: it reads nothing and answers nothing.

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
