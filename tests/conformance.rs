//! What docs/protocol.md promises about the servers, checked byte for byte
//! the way an outside client would see it: registrations that another
//! connection cannot take over, `Error{Malformed}` for every frame that
//! cannot be decoded, and the answers to the questions an outside client
//! asked (issue 10).

mod util;

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

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
