//! Private networks (issue 12): a network key file, the Noise handshake on
//! every connection, and encryption of everything after it.
//!
//! The tracker and the peers run as the real binaries (a key is a
//! process-wide setting), on loopback, on free ports. Raw connections and
//! key holders in the test process use the library's keyed client with an
//! explicit key. Recording relays (threads in this process) sit on the
//! paths to observe and to damage the bytes on the wire.

mod util;

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use p2pfs::limits::HELLO_TIMEOUT;
use p2pfs::net::client::Conn;
use p2pfs::net::key::NetworkKey;
use p2pfs::net::secure::{self, PREAMBLE};
use p2pfs::wire::{self, ErrorCode, Message};
use util::{Proc, Scratch, addr_in, get_command, pattern, peer_bin, with_timeout};

const T: Duration = Duration::from_secs(5);

// ---- Processes --------------------------------------------------------------

/// A tracker binary on a free loopback port, keyed with `key` if given.
fn start_tracker(key: Option<&Path>, extra: &[&str]) -> (Proc, SocketAddr) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tracker"));
    c.env("RUST_LOG", "warn").env_remove("P2PFS_KEY_FILE");
    c.args(["--listen", "127.0.0.1:0"]).args(extra);
    if let Some(k) = key {
        c.arg("--key-file").arg(k);
    }
    let mut p = Proc::spawn("tracker", &mut c);
    let addr = addr_in(&p.wait_line("listening on"));
    if key.is_some() {
        p.wait_line("private network");
    }
    (p, addr)
}

/// `peer ARGS [DIR]` with `--key-file key` when given, never inheriting a
/// key from the environment.
fn peer(key: Option<&Path>, args: &[&str], dir: Option<&Path>) -> Command {
    let mut c = peer_bin();
    c.env_remove("P2PFS_KEY_FILE").args(args);
    if let Some(d) = dir {
        c.arg(d);
    }
    if let Some(k) = key {
        c.arg("--key-file").arg(k);
    }
    c
}

/// `peer share` of `dir` (64 KiB chunks) against `tracker`; returns once it
/// is registered, with the address it serves on.
fn start_share(tracker: SocketAddr, dir: &Path, key: Option<&Path>) -> (Proc, SocketAddr) {
    let mut c = peer_bin();
    c.env_remove("P2PFS_KEY_FILE");
    c.args(["share", "--tracker", &tracker.to_string()])
        .args([
            "--listen",
            "127.0.0.1:0",
            "--chunk-size",
            "64K",
            "--no-prompt",
            "--dir",
        ])
        .arg(dir);
    if let Some(k) = key {
        c.arg("--key-file").arg(k);
    }
    let mut p = Proc::spawn("peer share", &mut c);
    let addr = addr_in(&p.wait_line("serving chunks on"));
    p.wait_line("registered");
    (p, addr)
}

fn get(tracker: SocketAddr, name: &str, dir: &Path, key: Option<&Path>) -> Command {
    let mut c = get_command(tracker, name, dir);
    c.env_remove("P2PFS_KEY_FILE");
    if let Some(k) = key {
        c.arg("--key-file").arg(k);
    }
    c
}

fn new_key(dir: &Path, name: &str) -> (PathBuf, NetworkKey) {
    let p = dir.join(name);
    let k = NetworkKey::write_new(&p).expect("key");
    (p, k)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

// ---- A recording, damaging relay --------------------------------------------

/// Forwards every connection accepted on `addr` to `target` (from
/// `source` when given), recording both directions; optionally flips one
/// byte of the target-to-client direction at a global offset.
struct Relay {
    addr: SocketAddr,
    /// Every byte that crossed, both directions, in arrival order.
    log: Arc<Mutex<Vec<u8>>>,
    conns: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    accept: Option<thread::JoinHandle<()>>,
}

impl Relay {
    fn start(
        listen: SocketAddr,
        target: SocketAddr,
        source: Option<Ipv4Addr>,
        flip_at: Option<u64>,
    ) -> Relay {
        let listener = TcpListener::bind(listen).expect("relay bind");
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let conns = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let down = Arc::new(AtomicU64::new(0));
        let (l, c, s) = (Arc::clone(&log), Arc::clone(&conns), Arc::clone(&stop));
        let accept = thread::spawn(move || {
            for client in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = connect_from(source, target) else {
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                pump(&client, &server, &l, None, &down);
                pump(&server, &client, &l, flip_at, &down);
            }
        });
        Relay {
            addr,
            log,
            conns,
            stop,
            accept: Some(accept),
        }
    }

    fn recorded(&self) -> Vec<u8> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, T);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn connect_from(source: Option<Ipv4Addr>, dst: SocketAddr) -> io::Result<TcpStream> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    if let Some(src) = source {
        sock.bind(&SockAddr::from(SocketAddr::from((src, 0))))?;
    }
    sock.connect_timeout(&SockAddr::from(dst), T)?;
    Ok(TcpStream::from(sock))
}

/// Copies `from` to `to` on a thread, recording; flips the byte at global
/// offset `flip_at` of this direction (counted in `seen`) once.
fn pump(
    from: &TcpStream,
    to: &TcpStream,
    log: &Arc<Mutex<Vec<u8>>>,
    flip_at: Option<u64>,
    seen: &Arc<AtomicU64>,
) {
    let (mut from, mut to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
    let (log, seen) = (Arc::clone(log), Arc::clone(seen));
    thread::spawn(move || {
        from.set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Some(at) = flip_at {
                let start = seen.fetch_add(n as u64, Ordering::SeqCst);
                if (start..start + n as u64).contains(&at) {
                    buf[(at - start) as usize] ^= 0x01;
                }
            }
            log.lock().unwrap().extend_from_slice(&buf[..n]);
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
        let _ = from.shutdown(Shutdown::Read);
    });
}

/// Whether any 32-byte run of `content` appears in `haystack`.
fn shares_a_32_byte_run(haystack: &[u8], content: &[u8]) -> bool {
    let mut starts: HashMap<u64, Vec<usize>> = HashMap::new();
    for i in 0..=content.len().saturating_sub(32) {
        let k = u64::from_le_bytes(content[i..i + 8].try_into().unwrap());
        starts.entry(k).or_default().push(i);
    }
    (0..=haystack.len().saturating_sub(32)).any(|j| {
        let k = u64::from_le_bytes(haystack[j..j + 8].try_into().unwrap());
        starts
            .get(&k)
            .is_some_and(|v| v.iter().any(|&i| haystack[j..j + 32] == content[i..i + 32]))
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

// ---- Tests --------------------------------------------------------------------

#[test]
fn a_keyed_swarm_of_two_sharers_and_two_concurrent_downloaders_is_byte_identical() {
    with_timeout(120, || {
        let s = Scratch::new("private-swarm");
        // The key made by the command a user runs.
        let key = s.path().join("net.key");
        let out = peer(None, &["keygen"], Some(&key)).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let data = pattern(3 * 1024 * 1024 + 12_345, 12);
        let (a, b) = (s.sub("a"), s.sub("b"));
        fs::write(a.join("dataset.bin"), &data).unwrap();
        fs::write(b.join("dataset.bin"), &data).unwrap();
        let (_tr, t) = start_tracker(Some(&key), &[]);
        let (_sa, _) = start_share(t, &a, Some(&key));
        let (_sb, _) = start_share(t, &b, Some(&key));
        let (d1, d2) = (s.sub("d1"), s.sub("d2"));
        let mut g1 = Proc::spawn("get 1", &mut get(t, "dataset.bin", &d1, Some(&key)));
        // One through the download limit, which paces the encrypted bytes.
        let begin = std::time::Instant::now();
        let mut g2 = Proc::spawn(
            "get 2",
            get(t, "dataset.bin", &d2, Some(&key)).args(["--download-limit", "2M"]),
        );
        assert_eq!(g1.wait_exit(60), Some(0));
        assert_eq!(g2.wait_exit(60), Some(0));
        let least = Duration::from_secs_f64(data.len() as f64 / (2.1 * 1024.0 * 1024.0));
        assert!(begin.elapsed() >= least, "{:?}", begin.elapsed());
        assert_eq!(fs::read(d1.join("dataset.bin")).unwrap(), data);
        assert_eq!(fs::read(d2.join("dataset.bin")).unwrap(), data);
        // The key from the environment works as well as the option.
        let out = peer_bin()
            .env("P2PFS_KEY_FILE", &key)
            .args(["list", "--tracker", &t.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("dataset.bin"));
    });
}

#[test]
fn without_the_key_or_with_another_every_command_fails_clearly_and_writes_nothing() {
    with_timeout(120, || {
        let s = Scratch::new("private-refuse");
        let (key, _) = new_key(s.path(), "net.key");
        let (wrong, _) = new_key(s.path(), "other.key");
        let shared = s.sub("shared");
        fs::write(shared.join("plans.txt"), pattern(200_000, 3)).unwrap();
        let (_tr, t) = start_tracker(Some(&key), &[]);
        let (_sh, _) = start_share(t, &shared, Some(&key));
        let ts = t.to_string();
        for (label, k, needle) in [
            (
                "no key",
                None,
                format!("{t}: this tracker requires a network key: pass --key-file"),
            ),
            (
                "wrong key",
                Some(wrong.as_path()),
                format!("network key rejected by {t}"),
            ),
        ] {
            let dl = s.sub(&format!("dl-{}", label.replace(' ', "-")));
            let share_dir = s.sub(&format!("share-{}", label.replace(' ', "-")));
            fs::write(share_dir.join("mine.txt"), b"hello").unwrap();
            let runs: Vec<(&str, Output)> = vec![
                (
                    "list",
                    peer(k, &["list", "--tracker", &ts], None).output().unwrap(),
                ),
                (
                    "where",
                    peer(k, &["where", "plans.txt", "--tracker", &ts], None)
                        .output()
                        .unwrap(),
                ),
                ("get", get(t, "plans.txt", &dl, k).output().unwrap()),
                (
                    "share",
                    peer(
                        k,
                        &[
                            "share",
                            "--tracker",
                            &ts,
                            "--no-prompt",
                            "--listen",
                            "127.0.0.1:0",
                            "--dir",
                        ],
                        Some(&share_dir),
                    )
                    .output()
                    .unwrap(),
                ),
            ];
            for (cmd, out) in runs {
                let err = stderr(&out);
                assert_eq!(out.status.code(), Some(3), "{label} {cmd}: {err}");
                assert!(err.contains(&needle), "{label} {cmd}: {err}");
                assert!(
                    !String::from_utf8_lossy(&out.stdout).contains("plans.txt"),
                    "{label} {cmd}"
                );
            }
            assert!(files_in(&dl).is_empty(), "{label}: {:?}", files_in(&dl));
            assert_eq!(files_in(&share_dir), vec!["mine.txt"], "{label}");
        }
        // A keyed client refuses a clear tracker: no silent downgrade.
        let (_clear, ct) = start_tracker(None, &[]);
        let out = peer(Some(&key), &["list", "--tracker", &ct.to_string()], None)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert!(
            stderr(&out).contains(&format!(
                "network key rejected by {ct}: this tracker uses no network key"
            )),
            "{}",
            stderr(&out)
        );
        // Key files readable by others, and malformed ones, are refused.
        let open = s.path().join("open.key");
        fs::copy(&key, &open).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&open, fs::Permissions::from_mode(0o644)).unwrap();
        }
        let out = peer(Some(&open), &["list", "--tracker", &ts], None)
            .output()
            .unwrap();
        assert!(
            stderr(&out).contains("permissions 0644 are too open"),
            "{}",
            stderr(&out)
        );
        let out = peer(None, &["keygen"], Some(&key)).output().unwrap();
        assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    });
}

/// A raw connection that sends `bytes` and then waits: how long until the
/// server closes it, and what it answered (decoded as clear frames).
fn closed_after(addr: SocketAddr, bytes: &[u8]) -> (Duration, Vec<u8>) {
    let mut c = TcpStream::connect_timeout(&addr, T).unwrap();
    c.set_read_timeout(Some(HELLO_TIMEOUT + Duration::from_secs(10)))
        .unwrap();
    let start = Instant::now();
    c.write_all(bytes).unwrap();
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    (start.elapsed(), got)
}

/// What a key holder sends first, recorded: the preamble and handshake
/// message, then the encrypted Hello (so it can be replayed).
fn record_a_real_opening(addr: SocketAddr, key: &NetworkKey) -> (Vec<u8>, Vec<u8>) {
    struct Tee(TcpStream, Vec<u8>);
    impl Write for Tee {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.1.extend_from_slice(b);
            self.0.write_all(b).map(|()| b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let s = TcpStream::connect_timeout(&addr, T).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let mut tee = Tee(s.try_clone().unwrap(), Vec::new());
    let mut r = io::BufReader::new(s);
    let (mut open, mut seal) = secure::client_handshake(&mut r, &mut tee, key).expect("handshake");
    let first_flight = std::mem::take(&mut tee.1);
    let mut hello = Vec::new();
    wire::write_message(
        &mut hello,
        &Message::Hello {
            version: wire::PROTOCOL_VERSION,
        },
    )
    .unwrap();
    seal.write_all(&mut tee, &hello).unwrap();
    let mut reply = secure::SecureRead {
        opener: Some(&mut open),
        inner: &mut r,
    };
    assert!(matches!(
        wire::read_message(&mut reply),
        Ok(Some(Message::Hello { .. }))
    ));
    (first_flight, std::mem::take(&mut tee.1))
}

#[test]
fn raw_openings_are_closed_within_the_hello_timeout_while_key_holders_are_served_and_caps_hold() {
    with_timeout(120, || {
        let s = Scratch::new("private-raw");
        let (kp, key) = new_key(s.path(), "net.key");
        let (_tr, t) = start_tracker(Some(&kp), &["--max-per-ip", "8"]);
        let (flight, hello_record) = record_a_real_opening(t, &key);
        assert_eq!(&flight[..8], &PREAMBLE);

        let mut clear_hello = Vec::new();
        wire::write_message(
            &mut clear_hello,
            &Message::Hello {
                version: wire::PROTOCOL_VERSION,
            },
        )
        .unwrap();
        let mut replay_all = flight.clone();
        replay_all.extend_from_slice(&hello_record);
        // Answered and closed at once: a clear Hello or garbage (Error in
        // clear), a replayed opening with its Hello (the replayed record
        // does not open under the new session's keys).
        let quick: Vec<(&str, Vec<u8>)> = vec![
            ("clear Hello", clear_hello),
            ("garbage", b"\x00\x17GET / HTTP/1.1\r\n\r\n".to_vec()),
            (
                "garbage after the preamble's first byte",
                b"PUT / HTTP/1.1\r\n\r\n".to_vec(),
            ),
            ("replayed handshake and Hello", replay_all),
        ];
        // Left waiting by the server until the Hello timeout: a truncated
        // handshake, a replayed one with nothing after it, and six openings
        // that stop after the preamble; eight in all, 127.0.0.1's cap.
        let mut stalling: Vec<(&str, Vec<u8>)> = vec![
            ("truncated handshake", flight[..30].to_vec()),
            ("replayed handshake, then silence", flight.clone()),
        ];
        stalling.extend(vec![("preamble only", PREAMBLE.to_vec()); 6]);
        let run = |cases: Vec<(&'static str, Vec<u8>)>| -> Vec<_> {
            cases
                .into_iter()
                .map(|(what, bytes)| (what, thread::spawn(move || closed_after(t, &bytes))))
                .collect()
        };
        let mut results: Vec<(&str, (Duration, Vec<u8>))> = run(quick)
            .into_iter()
            .map(|(what, h)| (what, h.join().unwrap()))
            .collect();
        for (what, (took, _)) in &results {
            assert!(
                *took < Duration::from_secs(2),
                "{what}: refused at once, not at the timeout"
            );
        }
        // Their slots are free once their lingering close is over.
        thread::sleep(Duration::from_millis(500));
        let stalls = run(stalling);
        // Meanwhile a key holder from another address is served, and the
        // per-address cap holds against the stalled openings.
        thread::sleep(Duration::from_secs(1));
        let from2 = connect_from(Some(Ipv4Addr::new(127, 0, 0, 2)), t).unwrap();
        let mut holder = Conn::from_stream_keyed(from2, T, Some(&key)).expect("key holder");
        assert!(holder.is_keyed());
        assert!(matches!(
            holder.request(&Message::ListFiles),
            Ok(Message::FileList { .. })
        ));
        let extra = connect_from(Some(Ipv4Addr::LOCALHOST), t).unwrap();
        match Conn::from_stream_keyed(extra, T, Some(&key)) {
            Err(e) => assert!(
                e.to_string()
                    .contains("too many connections from your address"),
                "{e}"
            ),
            Ok(_) => panic!("a 9th connection from one address was admitted"),
        }
        let limit = HELLO_TIMEOUT + Duration::from_secs(3);
        results.extend(
            stalls
                .into_iter()
                .map(|(what, h)| (what, h.join().unwrap())),
        );
        for (what, (took, answer)) in results {
            assert!(took < limit, "{what}: open for {took:?}");
            // Whatever was answered is a clear Error, or encrypted bytes
            // that carry no Hello; never a clear Hello.
            let mut r = &answer[..];
            if answer.first() == Some(&0) {
                match wire::read_message(&mut r) {
                    Ok(Some(Message::Error { code, .. })) => assert!(
                        matches!(code, ErrorCode::KeyRequired | ErrorCode::Malformed),
                        "{what}: {code:?}"
                    ),
                    other => panic!("{what}: {other:?}"),
                }
            } else {
                assert!(
                    answer.is_empty() || answer.starts_with(&PREAMBLE),
                    "{what}: {answer:?}"
                );
            }
        }
        // The stalled slots are free again, and the key holder still works.
        let again = connect_from(Some(Ipv4Addr::LOCALHOST), t).unwrap();
        let mut c = Conn::from_stream_keyed(again, T, Some(&key)).expect("slot freed");
        assert!(matches!(
            c.request(&Message::ListFiles),
            Ok(Message::FileList { .. })
        ));
        assert!(matches!(
            holder.request(&Message::ListFiles),
            Ok(Message::FileList { .. })
        ));
        // A clear client hears why.
        match Conn::connect_keyed(t, T, None) {
            Err(e) => assert!(e.to_string().contains("requires a network key"), "{e}"),
            Ok(_) => panic!("clear client admitted"),
        }
    });
}

/// A tracker, one sharer reached through relays, and the relays: the
/// sharer talks to the tracker through `to_tracker` (which connects from
/// 127.0.0.3, so the tracker hands out 127.0.0.3:PORT for it), and
/// `to_sharer` on 127.0.0.3:PORT forwards to the sharer. Everything a
/// downloader using `to_tracker` says and receives crosses a relay.
struct Observed {
    _tracker: Proc,
    _sharer: Proc,
    to_tracker: Relay,
    to_sharer: Relay,
}

fn observed_swarm(dir: &Path, key: Option<&Path>, flip_at: Option<u64>) -> Observed {
    let (tracker, t) = start_tracker(key, &[]);
    let to_tracker = Relay::start(
        "127.0.0.1:0".parse().unwrap(),
        t,
        Some(Ipv4Addr::new(127, 0, 0, 3)),
        None,
    );
    let (sharer, at) = start_share(to_tracker.addr, dir, key);
    let to_sharer = Relay::start(
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)), at.port()),
        at,
        None,
        flip_at,
    );
    Observed {
        _tracker: tracker,
        _sharer: sharer,
        to_tracker,
        to_sharer,
    }
}

#[test]
fn a_keyed_download_shows_no_name_and_no_content_on_the_wire_and_a_clear_one_shows_both() {
    with_timeout(120, || {
        let s = Scratch::new("private-wire");
        let (kp, _) = new_key(s.path(), "net.key");
        let name = "quarterly-results-confidential.xlsx";
        let data = pattern(256 * 1024 + 77, 99);
        for keyed in [true, false] {
            let shared = s.sub(&format!("shared-{keyed}"));
            fs::write(shared.join(name), &data).unwrap();
            let key = keyed.then_some(kp.as_path());
            let o = observed_swarm(&shared, key, None);
            let dl = s.sub(&format!("dl-{keyed}"));
            let out = get(o.to_tracker.addr, name, &dl, key).output().unwrap();
            assert!(out.status.success(), "{}", stderr(&out));
            assert_eq!(fs::read(dl.join(name)).unwrap(), data);
            let mut wire_bytes = o.to_tracker.recorded();
            let chunk_bytes = o.to_sharer.recorded();
            assert!(
                chunk_bytes.len() > data.len(),
                "the chunks did not cross the relay"
            );
            wire_bytes.extend_from_slice(&chunk_bytes);
            let name_seen = contains(&wire_bytes, name.as_bytes());
            let content_seen = shares_a_32_byte_run(&wire_bytes, &data);
            assert_eq!(
                (name_seen, content_seen),
                (!keyed, !keyed),
                "keyed = {keyed}"
            );
        }
    });
}

#[test]
fn a_flipped_byte_in_flight_closes_that_connection_and_the_download_still_completes() {
    with_timeout(120, || {
        let s = Scratch::new("private-flip");
        let (kp, _) = new_key(s.path(), "net.key");
        let shared = s.sub("shared");
        let data = pattern(1024 * 1024 + 5, 7);
        fs::write(shared.join("image.iso"), &data).unwrap();
        // Byte 200,000 of what the sharer sends: inside a chunk's records.
        let o = observed_swarm(&shared, Some(&kp), Some(200_000));
        let dl = s.sub("dl");
        let out = get(o.to_tracker.addr, "image.iso", &dl, Some(&kp))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(fs::read(dl.join("image.iso")).unwrap(), data);
        assert!(
            o.to_sharer.conns.load(Ordering::SeqCst) >= 2,
            "the damaged connection was not replaced"
        );
        assert_eq!(files_in(&dl), vec!["image.iso"]);
    });
}
